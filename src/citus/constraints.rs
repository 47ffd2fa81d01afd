//! `SET CONSTRAINTS` on the workers of Citus.
//!
//! udm's rules over related records are constraint triggers, `DEFERRABLE INITIALLY IMMEDIATE`
//! (`udm.rule_trigger`), and on Citus they fire on the tenant's worker, against its shards.
//! Citus does not pass `SET CONSTRAINTS` on: a transaction that defers the rules on the
//! coordinator (to rename a phase and move its products, say) would still have them checked
//! after each statement on the worker, and be refused there. So after the coordinator has
//! applied a `SET CONSTRAINTS` in a transaction block, udm sends it on as a `SET LOCAL` of
//! `udm.citus_constraints` (internal), which Citus gives every worker connection of the
//! transaction, open now or opened later, in order with its other `SET LOCAL`s; a worker's
//! backend serving Citus applies it as its own `SET CONSTRAINTS` when that `SET LOCAL` arrives.
//! Constraints named in it are sent qualified with the schema the coordinator found them in,
//! and on the worker they name the shards' triggers too (Citus adds the shard id to those names).
//!
//! Citus forgets the `SET LOCAL`s of a subtransaction when it ends, also when it is released,
//! while PostgreSQL keeps a released subtransaction's `SET CONSTRAINTS`: those are sent again
//! before the transaction's next statement. At commit, what was deferred is checked on the
//! workers before Citus prepares their transactions (`on_xact`).

use super::selection::{serves_citus, set_on_workers, use_coordinated_transaction};
use crate::error::{spi_err, Result, UdmError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use udm_core::error::SqlState;
use udm_core::ident::{quote_ident, quote_literal};

/// The setting that carries a `SET CONSTRAINTS` to the workers.
pub const SETTING: &str = "udm.citus_constraints";

/// A `SET CONSTRAINTS` sent on: in which transaction and subtransaction, what, and whether it
/// must be sent again (its subtransaction was released since).
struct Sent {
    lxid: u32,
    subxact: pg_sys::SubTransactionId,
    value: String,
    again: bool,
}

thread_local! {
    static SENT: RefCell<Vec<Sent>> = const { RefCell::new(Vec::new()) };
}

/// What is sent: `{"deferred": bool}` for ALL, with `"names": [[schema, name], ...]` for named
/// constraints.
fn value_of(stmt: *mut pg_sys::ConstraintsSetStmt) -> Result<String> {
    let deferred = unsafe { (*stmt).deferred };
    let list = unsafe { (*stmt).constraints };
    if list.is_null() {
        return Ok(serde_json::json!({ "deferred": deferred }).to_string());
    }
    let mut names = Vec::new();
    for i in 0..unsafe { (*list).length } as usize {
        let rv = unsafe { (*(*list).elements.add(i)).ptr_value as *mut pg_sys::RangeVar };
        let (schema, name) = unsafe {
            (
                super::owned_str((*rv).schemaname),
                super::owned_str((*rv).relname),
            )
        };
        let name = name.unwrap_or_default();
        // where PostgreSQL found it: the schema given, or the first schema of the search path
        // holding a constraint trigger of that name
        let found = crate::spi::select_one::<String>(
            "SELECT n.nspname::text \
             FROM pg_catalog.unnest(CASE WHEN $1::text IS NULL \
                    THEN pg_catalog.current_schemas(true) ELSE ARRAY[$1::name] END) \
                    WITH ORDINALITY AS s(nsp, i) \
               JOIN pg_catalog.pg_namespace n ON n.nspname = s.nsp \
             WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
                           WHERE c.connamespace = n.oid AND c.conname = $2 AND c.contype = 't') \
             ORDER BY s.i LIMIT 1",
            &[schema.as_deref().into(), name.as_str().into()],
        )?;
        if let Some(schema) = found {
            names.push(serde_json::json!([schema, name]));
        }
    }
    Ok(serde_json::json!({ "deferred": deferred, "names": names }).to_string())
}

/// On the coordinator, after it applied `stmt`: sends it to the workers of the transaction.
/// (Typed outside a transaction block it does nothing, there as here; run by a function it holds
/// for the rest of the statement's transaction.)
pub fn propagate(stmt: *mut pg_sys::ConstraintsSetStmt, top_level: bool) {
    if !super::loaded()
        || (top_level && !unsafe { pg_sys::IsTransactionBlock() })
        || !super::installed()
        || super::on_worker()
        || serves_citus()
    {
        return;
    }
    let value = value_of(stmt).unwrap_or_else(|e| crate::error::raise(e));
    // IMMEDIATE after something was deferred: the tenants written apply it first by a query (a
    // rule failing there keeps its SQLSTATE; failing in the SET sent on, Citus reports it as its
    // own XX000, "failure on connection marked as essential")
    if unsafe { !(*stmt).deferred } {
        let lxid = crate::guc::local_xact();
        if SENT.with(|s| s.borrow().iter().any(|x| x.lxid == lxid)) {
            let written = WRITTEN.with(|w| {
                let w = w.borrow();
                if w.0 == lxid {
                    w.1.clone()
                } else {
                    Vec::new()
                }
            });
            check_deferred(&written, &value).unwrap_or_else(|e| crate::error::raise(e));
        }
    }
    send(&value);
    let lxid = crate::guc::local_xact();
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    SENT.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|x| x.lxid == lxid);
        s.push(Sent {
            lxid,
            subxact,
            value,
            again: false,
        });
    });
}

fn send(value: &str) {
    set_on_workers(&[(SETTING, value)]);
    use_coordinated_transaction();
}

pub fn init() {
    unsafe { pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut()) };
}

thread_local! {
    /// The namespaces the current transaction wrote relations of (`selection::statement_of`).
    static WRITTEN: RefCell<(u32, Vec<pg_sys::Oid>)> = const { RefCell::new((0, Vec::new())) };
    /// In the current transaction: the role that last wrote each namespace written.
    static WRITERS: RefCell<(u32, Vec<(pg_sys::Oid, pg_sys::Oid)>)> =
        const { RefCell::new((0, Vec::new())) };
}

/// The role that last wrote a relation of namespace `ns` in the current transaction, if any did.
pub fn writer_of(ns: pg_sys::Oid) -> Option<pg_sys::Oid> {
    let lxid = crate::guc::local_xact();
    WRITERS.with(|w| {
        let w = w.borrow();
        (w.0 == lxid)
            .then(|| w.1.iter().find(|(n, _)| *n == ns).map(|(_, r)| *r))
            .flatten()
    })
}

/// The current transaction writes a relation of namespace `ns` (a statement, or a `COPY ... FROM`).
pub(super) fn written(ns: pg_sys::Oid) {
    let lxid = crate::guc::local_xact();
    WRITTEN.with(|w| {
        let mut w = w.borrow_mut();
        if w.0 != lxid {
            *w = (lxid, Vec::new());
        }
        if !w.1.contains(&ns) && w.1.len() < 256 {
            w.1.push(ns);
        }
    });
    let role = unsafe { pg_sys::GetUserId() };
    WRITERS.with(|w| {
        let mut w = w.borrow_mut();
        if w.0 != lxid {
            *w = (lxid, Vec::new());
        }
        match w.1.iter().position(|(n, _)| *n == ns) {
            Some(i) => w.1[i].1 = role,
            None if w.1.len() < 256 => w.1.push((ns, role)),
            None => {}
        }
    });
}

/// At the coordinator's commit, before Citus prepares the workers' transactions (its callback
/// was registered before udm's, so it runs after it): a transaction that sent a `SET
/// CONSTRAINTS` has what it deferred checked now on the node of each tenant it wrote, by
/// `udm.citus_check_deferred` as a query of the tenant's catalog (on the connection that wrote).
/// A rule that fails then fails in a statement there, and its error reaches the client at
/// `COMMIT` with the rule's SQLSTATE and message, as on a single node; left to the workers' own
/// commit, Citus reported it as `XX000`, the rule's message in a warning.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT || !super::loaded() {
        return;
    }
    let lxid = crate::guc::local_xact();
    let deferred = SENT.with(|s| {
        let mut s = s.borrow_mut();
        let any = s.iter().any(|x| x.lxid == lxid);
        s.clear();
        any
    });
    let written = WRITTEN.with(|w| std::mem::take(&mut *w.borrow_mut()));
    if !deferred || written.0 != lxid || !super::installed() || super::on_worker() || serves_citus()
    {
        return;
    }
    // statements need a snapshot; at commit there is no portal to give one (an error unwinds
    // the stack with the transaction)
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let all = serde_json::json!({ "deferred": false }).to_string();
    check_deferred(&written.1, &all).unwrap_or_else(|e| crate::error::raise(e));
    unsafe { pg_sys::PopActiveSnapshot() };
}

/// Applies `value` (what `value_of` makes: a `SET CONSTRAINTS ... IMMEDIATE`) on the node of each
/// tenant of `namespaces` on another node, by `udm.citus_check_deferred` as a query of the
/// tenant's catalog: what was deferred is checked there now.
fn check_deferred(namespaces: &[pg_sys::Oid], value: &str) -> Result<()> {
    for &ns in namespaces {
        let Some(t) = crate::catalog::tenant_of_namespace(ns)? else {
            continue;
        };
        if !super::log_elsewhere(&t) {
            continue;
        }
        crate::spi::select_one::<bool>(
            &super::on_node_sql(&t.schema, "udm.citus_check_deferred($1)"),
            &[value.into()],
        )?;
    }
    Ok(())
}

finfo_v1!(pg_finfo_udm_citus_check_deferred);

/// `udm.citus_check_deferred(constraints)`: on a Citus worker, the `SET CONSTRAINTS ...
/// IMMEDIATE` the coordinator sent (as `udm.citus_constraints` carries one), for the rest of
/// this transaction, which checks what it deferred now (see `on_xact`, `propagate`). Refused
/// anywhere but on a worker (0A000), for NULL (22004), for a value udm does not make (22023),
/// and for one that defers (22023: it checks, it does not defer).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_citus_check_deferred(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    (|| -> Result<()> {
        let value = unsafe {
            super::node_call_arg(
                fcinfo,
                "udm.citus_check_deferred",
                "constraints",
                "udm sends it",
            )
        }?;
        let defers = serde_json::from_str::<serde_json::Value>(&value)
            .ok()
            .and_then(|v| v.get("deferred").and_then(|d| d.as_bool()));
        if defers == Some(true) {
            return Err(UdmError::invalid(format!(
                "udm.citus_check_deferred({}): it checks (IMMEDIATE), it does not defer",
                quote_literal(&value)
            )));
        }
        super::nested(|| apply(&value))
    })()
    .unwrap_or_else(|e| crate::error::raise(e));
    pg_sys::Datum::from(true)
}

/// Before a statement on the coordinator: sends again what released subtransactions set.
pub fn send_again() {
    if !super::loaded() || unsafe { pg_sys::IsInParallelMode() } {
        return;
    }
    let lxid = crate::guc::local_xact();
    let again: Vec<String> = SENT.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|x| x.lxid == lxid);
        s.iter_mut()
            .filter(|x| x.again)
            .map(|x| {
                x.again = false;
                x.value.clone()
            })
            .collect()
    });
    for value in again {
        send(&value);
    }
}

/// A subtransaction ended: a released one's `SET CONSTRAINTS` hold on in its parent (and are
/// sent again, Citus having forgotten them); an aborted one's are gone, on the workers too.
pub fn subxact_ended(commit: bool, my: pg_sys::SubTransactionId, parent: pg_sys::SubTransactionId) {
    SENT.with(|s| {
        let mut s = s.borrow_mut();
        if commit {
            for x in s.iter_mut().filter(|x| x.subxact == my) {
                x.subxact = parent;
                x.again = true;
            }
        } else {
            s.retain(|x| x.subxact != my);
        }
    });
}

/// On a worker, after a `SET LOCAL udm.citus_constraints` arrived over a connection of Citus:
/// applies it as this transaction's `SET CONSTRAINTS`. Anywhere else it does nothing.
pub fn apply_on_worker() {
    if !super::loaded() || !(serves_citus() || super::on_worker()) {
        return;
    }
    let value = crate::guc::citus_constraints().unwrap_or_default();
    if value.is_empty() {
        return;
    }
    apply(&value).unwrap_or_else(|e| crate::error::raise(e));
}

fn apply(value: &str) -> Result<()> {
    let bad = || {
        UdmError::new(
            SqlState::InvalidParameterValue,
            format!(
                "{SETTING} = {}: not a SET CONSTRAINTS udm sent",
                quote_literal(value)
            ),
        )
        .detail(
            "udm's coordinator sets it on Citus's worker connections; it is not to be set by hand",
        )
    };
    let v: serde_json::Value = serde_json::from_str(value).map_err(|_| bad())?;
    let mode = match v
        .get("deferred")
        .and_then(|d| d.as_bool())
        .ok_or_else(bad)?
    {
        true => "DEFERRED",
        false => "IMMEDIATE",
    };
    let Some(names) = v.get("names") else {
        return Spi::run(&format!("SET CONSTRAINTS ALL {mode}")).map_err(spi_err);
    };
    let names = names.as_array().ok_or_else(bad)?;
    let mut targets = Vec::new();
    for n in names {
        let (Some(schema), Some(name)) = (
            n.get(0).and_then(|s| s.as_str()),
            n.get(1).and_then(|s| s.as_str()),
        ) else {
            return Err(bad());
        };
        // the constraint itself (the worker's copy of the table) and its shards' (`name_<shard id>`)
        let found: Vec<String> = crate::spi::select_column(
            "SELECT DISTINCT c.conname::text FROM pg_catalog.pg_constraint c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace \
             WHERE n.nspname = $1 AND c.contype = 't' \
               AND (c.conname = $2 OR (pg_catalog.starts_with(c.conname, $2 || '_') \
                    AND pg_catalog.substr(c.conname, pg_catalog.length($2) + 2) ~ '^[0-9]+$')) \
             ORDER BY 1",
            &[schema.into(), name.into()],
        )?;
        targets.extend(
            found
                .iter()
                .map(|c| format!("{}.{}", quote_ident(schema), quote_ident(c))),
        );
    }
    if targets.is_empty() {
        return Ok(());
    }
    Spi::run(&format!("SET CONSTRAINTS {} {mode}", targets.join(", "))).map_err(spi_err)
}
