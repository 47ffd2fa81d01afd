//! Write locks on any entity: exclusive editing of a record, or of every record in a parent's
//! scope (a product's scope is its roadmap).
//!
//! A lock is a row of the tenant's `_udm_lock` table (made on first use), keyed by the scope
//! record. Acquire takes the row's lock (`SELECT ... FOR UPDATE`, or an `INSERT ... ON CONFLICT DO
//! NOTHING` when there is none), so it is atomic and first-wins under any concurrency; what it
//! may do with the row is decided in `udm_core::locks`. A stale lock (no heartbeat for
//! `udm.lock_stale_after`) is taken over by the next acquirer, an expired one
//! (`udm.lock_expire_after`) protects nothing: no background job is needed.
//!
//! The guard trigger `udm.lock_guard` on entities with a lock scope refuses UPDATE and DELETE
//! by anyone but the holder (plain SQL included) with 55P03. Every lock event is written to the
//! tenant's audit log as `<scope entity>#lock`, chained like any record's changes.

use crate::access::security::{actor, as_owner, caller, role_name};
use crate::catalog::{self, Entity, Tenant};
use crate::error::{spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::rc::Rc;
use udm_core::ident::{quote_ident, sql_call};
use udm_core::locks::{
    decide_acquire, lock_required_error, locked_error, not_holder_error, scope_words,
    write_allowed, Acquire, LockDef, LockRow, LockScope, WriteRefusal,
};

finfo_v1!(pg_finfo_udm_lock_guard);

pub const LOCK_TABLE: &str = "_udm_lock";

/// The tenant's lock table, created on first use (most tenants never lock anything; on Citus it
/// comes with the tenant: `citus::make_first_use_tables`).
fn ensure_table(t: &Tenant) -> Result<()> {
    if t.relation(LOCK_TABLE).is_some() {
        return Ok(());
    }
    crate::spi::create_on_first_use(&t.schema, "lock table", &table_sql(&t.schema, &t.role))
}

/// The DDL of a tenant's lock table.
pub fn table_sql(schema: &str, role: &str) -> String {
    let s = quote_ident(schema);
    let r = quote_ident(role);
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.\"{LOCK_TABLE}\" (\
           entity text NOT NULL, \
           record_id uuid NOT NULL, \
           holder text NOT NULL, \
           holder_role text NOT NULL, \
           acquired_at timestamp with time zone NOT NULL, \
           heartbeat_at timestamp with time zone NOT NULL, \
           stale_at timestamp with time zone NOT NULL, \
           expires_at timestamp with time zone NOT NULL, \
           PRIMARY KEY (entity, record_id)); \
         GRANT SELECT ON {s}.\"{LOCK_TABLE}\" TO {r}; \
         COMMENT ON TABLE {s}.\"{LOCK_TABLE}\" IS 'udm write locks (one row per locked scope record; written only by udm_lock_*)';"
    )
}

// ------------------------------------------------------------------ scopes

/// The record a lock is taken on: the scope record of the entity's record.
struct Scope {
    entity: String,
    id: pgrx::Uuid,
    /// The record asked about, for messages.
    of_entity: String,
    of_id: pgrx::Uuid,
}

impl Scope {
    fn words(&self) -> String {
        scope_words(
            &self.entity,
            &self.id.to_string(),
            &self.of_entity,
            &self.of_id.to_string(),
        )
    }

    fn json(&self) -> Value {
        json!({"entity": self.entity, "id": self.id.to_string()})
    }
}

/// The lock definition of an entity: its own, or `self` when another entity's lock scope goes
/// through a relation to it (a roadmap is the scope of its products).
fn lock_of(t: &Tenant, e: &Entity) -> Result<LockDef> {
    if let Some(l) = &e.def.lock {
        return Ok(l.clone());
    }
    let is_scope = crate::query::definitions(t)?.entities.values().any(|o| {
        o.def
            .lock
            .as_ref()
            .and_then(|l| l.scope_field())
            .and_then(|f| o.def.field(f))
            .and_then(|f| f.target.as_deref())
            == Some(e.def.slug.as_str())
    });
    if is_scope {
        return Ok(LockDef {
            scope: LockScope::Record,
            required: false,
        });
    }
    Err(UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!(
            "entity \"{}\" of tenant \"{}\" has no lock scope",
            e.def.slug, t.slug
        ),
    )
    .hint(format!(
        "declare one with {} (or a relation field instead of 'self')",
        sql_call("udm_set_lock_scope", &[&e.def.slug, "self"])
    )))
}

/// The scope record of `id`: the record itself, or the one its scope field points to. The
/// record is read with the caller's privileges.
fn resolve(t: &Tenant, e: &Entity, lock: &LockDef, id: pgrx::Uuid) -> Result<Scope> {
    let table = t.catalog(&e.def.slug);
    let (col, target) = match &lock.scope {
        LockScope::Record => ("id".to_string(), e.def.slug.clone()),
        LockScope::Field(name) => {
            let f = e.def.field_or_err(name)?;
            (f.column.clone(), f.target.clone().unwrap_or_default())
        }
    };
    let sql = format!(
        "SELECT ARRAY[{}::text] FROM {table} WHERE id = $1",
        quote_ident(&col)
    );
    let stmt = crate::spi::prepared(&sql, &[pg_sys::UUIDOID], false)?;
    let found = Spi::connect(|c| {
        let mut rows = c.select(&*stmt, Some(1), &[id.into()])?;
        match rows.next() {
            Some(r) => Ok(Some(r.get::<Vec<Option<String>>>(1)?.unwrap_or_default())),
            None => Ok::<_, pgrx::spi::Error>(None),
        }
    })
    .map_err(spi_err)?;
    let Some(value) = found else {
        return Err(UdmError::new(
            SqlState::NoDataFound,
            format!("entity \"{}\" has no record {id}", e.def.slug),
        )
        .hint("check the id; locks are taken on records that exist"));
    };
    let scope_id = match value.into_iter().next().flatten() {
        Some(s) => s,
        None => {
            return Err(UdmError::new(
                SqlState::ObjectNotInPrerequisiteState,
                format!(
                    "{} {id} has no \"{}\": its lock scope is empty",
                    e.def.slug,
                    lock.scope_field().unwrap_or("id")
                ),
            )
            .hint("set the relation first; the lock is taken on the record it points to"))
        }
    };
    let scope_id = pgrx::Uuid::from_bytes(
        *uuid::Uuid::parse_str(&scope_id)
            .map_err(|e| UdmError::internal(format!("udm: bad uuid in scope: {e}")))?
            .as_bytes(),
    );
    Ok(Scope {
        entity: target,
        id: scope_id,
        of_entity: e.def.slug.clone(),
        of_id: id,
    })
}

/// Acquire, heartbeat and release need the right to change the entity's records.
fn require_write(t: &Tenant, e: &Entity, verb: &str) -> Result<()> {
    let me = caller();
    let ok = unsafe {
        pg_sys::pg_class_aclcheck(e.table_oid, me, pg_sys::ACL_UPDATE as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    if ok {
        return Ok(());
    }
    Err(UdmError::new(
        SqlState::InsufficientPrivilege,
        format!(
            "permission denied to {verb} a write lock on entity \"{}\" of tenant \"{}\": role \"{}\" may not change its records",
            e.def.slug,
            t.slug,
            role_name(me)
        ),
    )
    .hint(format!("a member of \"{}\" may", t.role)))
}

// ------------------------------------------------------------------ reading and writing rows

/// A lock row with its times for people, and the statement's "now".
struct Found {
    row: LockRow,
    info: Value,
    now: i64,
}

/// The start of the statement: the "now" of every statement on the lock table. It is passed as
/// a parameter, not written as `statement_timestamp()`: on Citus those statements run on the
/// tenant's worker, where each of the coordinator's commands is a statement of its own, and
/// Citus refuses `statement_timestamp()` in a `CASE` of a distributed table's `UPDATE`.
fn statement_now() -> pgrx::datum::TimestampWithTimeZone {
    unsafe {
        pgrx::datum::TimestampWithTimeZone::from_datum(
            pg_sys::Datum::from(pg_sys::GetCurrentStatementStartTimestamp()),
            false,
        )
    }
    .expect("a timestamp is not null")
}

/// PostgreSQL counts time from 2000-01-01, 946,684,800 seconds after the Unix epoch.
const SINCE_UNIX_EPOCH: i64 = 946_684_800_000_000;

/// `statement_now` in epoch microseconds, as `read_row` gives the stored times.
fn statement_now_micros() -> i64 {
    let since_2000 = unsafe { pg_sys::GetCurrentStatementStartTimestamp() };
    since_2000 + SINCE_UNIX_EPOCH
}

/// What every statement on the lock table returns: the row as it is stored. Its times for
/// people are made here, not in SQL: Citus refuses functions that are not immutable (a
/// timestamp's `extract` or its text) in the `RETURNING` of a distributed table's statements.
const ROW_COLUMNS: &str = "holder, acquired_at, heartbeat_at, stale_at, expires_at, holder_role";

type Fetched = Option<(Found, String)>;

fn read_row(
    r: pgrx::spi::SpiHeapTupleData,
) -> std::result::Result<(Found, String), pgrx::spi::Error> {
    let holder = r.get::<String>(1)?.unwrap_or_default();
    let role = r.get::<String>(6)?.unwrap_or_default();
    let mut times = [0i64; 4];
    for (i, t) in times.iter_mut().enumerate() {
        let d = r.get::<pgrx::datum::TimestampWithTimeZone>(i + 2)?;
        *t = d
            .and_then(|d| d.into_datum())
            .map_or(0, |d| d.value() as i64);
    }
    let [acquired, heartbeat, stale, expires] = times;
    let info = json!({
        "holder": holder,
        "holder_role": role,
        "acquired_at": json_time(acquired),
        "heartbeat_at": json_time(heartbeat),
        "stale_at": json_time(stale),
        "expires_at": json_time(expires),
    });
    Ok((
        Found {
            row: LockRow {
                holder,
                acquired_at: acquired + SINCE_UNIX_EPOCH,
                heartbeat_at: heartbeat + SINCE_UNIX_EPOCH,
                stale_at: stale + SINCE_UNIX_EPOCH,
                expires_at: expires + SINCE_UNIX_EPOCH,
            },
            now: statement_now_micros(),
            info,
        },
        text_time(expires),
    ))
}

/// A stored time as `jsonb_build_object` writes it (PostgreSQL's own JSON form of a timestamp).
fn json_time(since_2000: i64) -> Value {
    unsafe {
        let p = pg_sys::JsonEncodeDateTime(
            std::ptr::null_mut(),
            pg_sys::Datum::from(since_2000),
            pg_sys::TIMESTAMPTZOID,
            std::ptr::null(),
        );
        Value::String(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// A stored time as its `::text` (the session's DateStyle and TimeZone), for messages.
fn text_time(since_2000: i64) -> String {
    unsafe {
        let (mut out, mut varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(pg_sys::TIMESTAMPTZOID, &mut out, &mut varlena);
        let p = pg_sys::OidOutputFunctionCall(out, pg_sys::Datum::from(since_2000));
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Runs a statement on the lock table and reads the row it returns, if any.
fn one_row(
    sql: &str,
    types: &[pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid],
    writes: bool,
) -> Result<Fetched> {
    let stmt = crate::spi::prepared(sql, types, writes)?;
    if writes {
        crate::spi::connect_mut(&crate::spi::command(sql), |c| {
            let mut rows = c.update(&*stmt, None, args)?;
            rows.next().map(read_row).transpose()
        })
    } else {
        Spi::connect(|c| {
            let mut rows = c.select(&*stmt, Some(1), args)?;
            rows.next().map(read_row).transpose()
        })
    }
    .map_err(spi_err)
}

/// The lock row of a scope (with its row lock when `for_update`), if any.
fn fetch(t: &Tenant, entity: &str, id: pgrx::Uuid, for_update: bool) -> Result<Fetched> {
    if t.relation(LOCK_TABLE).is_none() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE entity = $1 AND record_id = $2{}",
        ROW_COLUMNS,
        t.catalog(LOCK_TABLE),
        if for_update { " FOR UPDATE" } else { "" }
    );
    one_row(
        &sql,
        &[pg_sys::TEXTOID, pg_sys::UUIDOID],
        &[entity.into(), id.into()],
        for_update,
    )
}

fn settings_sql() -> (String, String) {
    let (stale, expire) = crate::guc::lock_times_s();
    (format!("{stale} seconds"), format!("{expire} seconds"))
}

const WRITE_TYPES: [pg_sys::Oid; 8] = [
    pg_sys::TEXTOID,
    pg_sys::UUIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::BOOLOID,
    pg_sys::TIMESTAMPTZOID,
];

/// Gives the lock to `me` with fresh times: a new row (`None` when another session inserted
/// one first), or the row-locked existing one (a new holder gets a new `acquired_at`).
fn write(t: &Tenant, s: &Scope, me: &str, existing: bool, new_holder: bool) -> Result<Fetched> {
    let (stale, expire) = settings_sql();
    let sql = if existing {
        format!(
            "UPDATE {} SET holder = $3, holder_role = $4, \
               acquired_at = CASE WHEN $7 THEN $8::timestamptz ELSE acquired_at END, \
               heartbeat_at = $8::timestamptz, \
               stale_at = $8::timestamptz + $5::interval, \
               expires_at = $8::timestamptz + $6::interval \
             WHERE entity = $1 AND record_id = $2 RETURNING {}",
            t.catalog(LOCK_TABLE),
            ROW_COLUMNS
        )
    } else {
        format!(
            "INSERT INTO {} (entity, record_id, holder, holder_role, acquired_at, heartbeat_at, stale_at, expires_at) \
             VALUES ($1, $2, $3, $4, $8::timestamptz, $8::timestamptz, \
                    $8::timestamptz + $5::interval, $8::timestamptz + $6::interval) \
             ON CONFLICT (entity, record_id) DO NOTHING RETURNING {}",
            t.catalog(LOCK_TABLE),
            ROW_COLUMNS
        )
    };
    let role = role_name(caller());
    one_row(
        &sql,
        &WRITE_TYPES,
        &[
            s.entity.as_str().into(),
            s.id.into(),
            me.into(),
            role.as_str().into(),
            stale.as_str().into(),
            expire.as_str().into(),
            (new_holder || !existing).into(),
            statement_now().into(),
        ],
        true,
    )
}

fn delete(t: &Tenant, s: &Scope) -> Result<()> {
    let sql = format!(
        "DELETE FROM {} WHERE entity = $1 AND record_id = $2",
        t.catalog(LOCK_TABLE)
    );
    let stmt = crate::spi::prepared(&sql, &[pg_sys::TEXTOID, pg_sys::UUIDOID], true)?;
    crate::spi::connect_mut("DELETE", |c| {
        c.update(&*stmt, None, &[s.entity.as_str().into(), s.id.into()])
            .map(|_| ())
    })
    .map_err(spi_err)
}

// ------------------------------------------------------------------ the SQL surface's work

/// A row-locked lock row cannot disappear before the statement that holds its lock ends.
fn vanished() -> UdmError {
    UdmError::internal("udm: a row-locked write lock row vanished")
}

/// Resolves what a `udm_lock_*` call is about: the tenant, the scope, and (for writes) checks.
fn prepare(
    t: &Tenant,
    entity: &str,
    id: pgrx::Uuid,
    write_verb: Option<&str>,
) -> Result<(Scope, i32)> {
    let e = catalog::entity(t, entity)?;
    let lock = lock_of(t, &e)?;
    if let Some(verb) = write_verb {
        require_write(t, &e, verb)?;
    }
    let scope = resolve(t, &e, &lock, id)?;
    if let Some(verb) = write_verb {
        crate::access::require_lock_level(t, &scope.entity, scope.id, verb)?;
    }
    let scope_version = catalog::entity(t, &scope.entity).map_or(0, |s| s.version);
    Ok((scope, scope_version))
}

fn status_json(scope: &Scope, found: Option<&Found>, me: &str) -> Value {
    let mut out = json!({"scope": scope.json(), "locked": false, "mine": false});
    if let Some(f) = found {
        if let (Some(o), Some(info)) = (out.as_object_mut(), f.info.as_object()) {
            for (k, v) in info {
                o.insert(k.clone(), v.clone());
            }
        }
        let expired = f.row.is_expired(f.now);
        out["locked"] = json!(!expired);
        out["stale"] = json!(f.row.is_stale(f.now));
        out["expired"] = json!(expired);
        out["mine"] = json!(f.row.holder == me && !expired);
    }
    out
}

fn audit(t: &Tenant, s: &Scope, version: i32, action: &'static str, data: Value) -> Result<()> {
    let entity = udm_core::access::lock_events(&s.entity);
    let mut data = data;
    data["record"] = json!({"entity": s.of_entity, "id": s.of_id.to_string()});
    crate::audit::record_event(t, &entity, version, *s.id.as_bytes(), action, &data)
}

fn acquire(t: &Tenant, entity: &str, id: pgrx::Uuid) -> Result<Value> {
    let (scope, version) = prepare(t, entity, id, Some("acquire"))?;
    ensure_table(t)?;
    let me = actor();
    as_owner(|| {
        // a conflicting insert means another session won the row: read it again
        for _ in 0..3 {
            let found = fetch(t, &scope.entity, scope.id, true)?;
            let decision = decide_acquire(
                found.as_ref().map(|(f, _)| &f.row),
                &me,
                found.as_ref().map_or(0, |(f, _)| f.now),
            );
            let (written, action, previous) = match decision {
                Acquire::New => match write(t, &scope, &me, false, true)? {
                    Some(w) => (w, "LOCK_ACQUIRE", None),
                    None => continue,
                },
                Acquire::Renew => (
                    write(t, &scope, &me, true, false)?.ok_or_else(vanished)?,
                    "LOCK_HEARTBEAT",
                    None,
                ),
                Acquire::TakeOver { previous } => (
                    write(t, &scope, &me, true, true)?.ok_or_else(vanished)?,
                    "LOCK_TAKEOVER",
                    Some(previous),
                ),
                Acquire::Refused => {
                    let mut out = status_json(&scope, found.as_ref().map(|(f, _)| f), &me);
                    out["acquired"] = json!(false);
                    return shown(t, out);
                }
            };
            let mut out = status_json(&scope, Some(&written.0), &me);
            out["acquired"] = json!(true);
            out["taken_over_from"] = json!(previous);
            let mut event = written.0.info;
            if let Some(p) = &previous {
                event["previous_holder"] = json!(p);
            }
            audit(t, &scope, version, action, event)?;
            return shown(t, out);
        }
        Err(UdmError::new(
            SqlState::LockNotAvailable,
            format!(
                "could not acquire the lock on {}: it kept changing hands",
                scope.words()
            ),
        )
        .hint("try again"))
    })
}

fn heartbeat(t: &Tenant, entity: &str, id: pgrx::Uuid) -> Result<Value> {
    let (scope, version) = prepare(t, entity, id, Some("renew"))?;
    let me = actor();
    as_owner(|| {
        let Some((f, expires)) = fetch(t, &scope.entity, scope.id, true)? else {
            return Err(UdmError::new(
                SqlState::NoDataFound,
                format!(
                    "there is no lock on {} to send a heartbeat for",
                    scope.words()
                ),
            )
            .hint(format!(
                "acquire it with {}",
                sql_call("udm_lock_acquire", &[entity, &id.to_string()])
            )));
        };
        if f.row.holder != me {
            return Err(not_holder_error(
                "send a heartbeat for",
                &scope.words(),
                &holder_name(t, &f.row.holder),
                &expires,
            ));
        }
        let (written, _) = write(t, &scope, &me, true, false)?.ok_or_else(vanished)?;
        let out = status_json(&scope, Some(&written), &me);
        audit(t, &scope, version, "LOCK_HEARTBEAT", written.info)?;
        shown(t, out)
    })
}

fn release(t: &Tenant, entity: &str, id: pgrx::Uuid) -> Result<Value> {
    let (scope, version) = prepare(t, entity, id, Some("release"))?;
    let me = actor();
    as_owner(|| {
        let Some((f, expires)) = fetch(t, &scope.entity, scope.id, true)? else {
            return Ok(json!({"scope": scope.json(), "released": false, "locked": false}));
        };
        if f.row.holder != me {
            return Err(not_holder_error(
                "release",
                &scope.words(),
                &holder_name(t, &f.row.holder),
                &expires,
            ));
        }
        delete(t, &scope)?;
        audit(t, &scope, version, "LOCK_RELEASE", f.info)?;
        Ok(json!({"scope": scope.json(), "released": true, "locked": false}))
    })
}

/// Releases every lock `holder` holds in the tenant (the user is being deleted or erased), each
/// audited as a release.
pub fn release_all_of(t: &Tenant, holder: &str) -> Result<usize> {
    if t.relation(LOCK_TABLE).is_none() {
        return Ok(0);
    }
    // the released rows' JSON is built outside RETURNING: Citus refuses functions that are not
    // immutable there
    let sql = format!(
        "WITH released AS (DELETE FROM {} WHERE holder = $1 RETURNING *) \
         SELECT entity, record_id, \
           jsonb_build_object('holder', holder, 'holder_role', holder_role, 'acquired_at', acquired_at, \
             'heartbeat_at', heartbeat_at, 'stale_at', stale_at, 'expires_at', expires_at) \
         FROM released",
        t.catalog(LOCK_TABLE)
    );
    let released = as_owner(|| {
        crate::spi::connect_mut("DELETE", |c| {
            let mut out = Vec::new();
            for r in c.update(&sql, None, &[holder.into()])? {
                out.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<pgrx::Uuid>(2)?
                        .unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16])),
                    r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)
    })?;
    for (entity, id, mut data) in released.iter().cloned() {
        let version = catalog::entity_any(t, &entity)?.map_or(0, |e| e.version);
        data["released_because"] = json!("the holder's user was deleted or erased");
        crate::audit::record_event(
            t,
            &udm_core::access::lock_events(&entity),
            version,
            *id.as_bytes(),
            "LOCK_RELEASE",
            &data,
        )?;
    }
    Ok(released.len())
}

fn status(t: &Tenant, entity: &str, id: pgrx::Uuid) -> Result<Value> {
    let (scope, _) = prepare(t, entity, id, None)?;
    let found = fetch(t, &scope.entity, scope.id, false)?;
    shown(
        t,
        status_json(&scope, found.as_ref().map(|(f, _)| f), &actor()),
    )
}

/// A lock's status with its holders as people know them (registered users are recorded by id).
fn shown(t: &Tenant, mut v: Value) -> Result<Value> {
    let mut names = crate::access::users::Names::new(t);
    for key in ["holder", "taken_over_from", "previous_holder"] {
        if let Some(h) = v.get(key).and_then(Value::as_str).map(str::to_string) {
            v[key] = json!(names.show(&h)?);
        }
    }
    Ok(v)
}

/// A holder as people know them.
fn holder_name(t: &Tenant, holder: &str) -> String {
    crate::access::users::Names::new(t)
        .show(holder)
        .unwrap_or_else(|_| holder.to_string())
}

// ------------------------------------------------------------------ the guard trigger

/// What the guard of one table needs, cached until a definition changes.
struct Guard {
    tenant: Rc<Tenant>,
    entity: String,
    required: bool,
    /// The scope entity and the attribute (0-based) holding the scope id.
    scope_entity: String,
    scope_attr: usize,
    /// The attribute (0-based) of the record's id.
    id_attr: usize,
}

const LOCK_GUARD: &str = "udm.lock_guard";

thread_local! {
    /// Guard by table (`None` for a table without a lock scope), for one definition generation.
    static GUARDS: crate::cache::Cache<pg_sys::Oid, Option<Rc<Guard>>> = crate::cache::Lru::new("lock guards");
}

unsafe fn guard_of(td: *mut pg_sys::TriggerData) -> Result<Option<Rc<Guard>>> {
    let rel = unsafe { (*td).tg_relation };
    let g = catalog::generation();
    let oid = unsafe { (*rel).rd_id };
    crate::cache::sync(&GUARDS, g);
    if let Some(found) = crate::cache::get(&GUARDS, &oid) {
        return Ok(found);
    }
    let tt = crate::trust::trigger_table(td, LOCK_GUARD);
    let (t, relname) = (tt.tenant.clone(), tt.name.clone());
    let e = crate::trust::entity_table(&tt, LOCK_GUARD);
    let desc = unsafe { (*rel).rd_att };
    let id_attr = crate::trust::required_column(desc, &relname, "id", pg_sys::UUIDOID, LOCK_GUARD)
        as usize
        - 1;
    let guard = match &e.def.lock {
        None => None,
        Some(l) => {
            let (col, scope_entity) = match &l.scope {
                LockScope::Record => ("id".to_string(), e.def.slug.clone()),
                LockScope::Field(name) => {
                    let f = e.def.field_or_err(name)?;
                    (f.column.clone(), f.target.clone().unwrap_or_default())
                }
            };
            let scope_attr =
                crate::trust::required_column(desc, &relname, &col, pg_sys::UUIDOID, LOCK_GUARD)
                    as usize
                    - 1;
            Some(Rc::new(Guard {
                tenant: t.clone(),
                entity: e.def.slug.clone(),
                required: l.required,
                scope_entity,
                scope_attr,
                id_attr,
            }))
        }
    };
    crate::cache::put_scoped(&GUARDS, t.scope(), oid, guard.clone(), 256);
    Ok(guard)
}

unsafe fn scope_id_of(
    tup: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attr: usize,
) -> Option<pgrx::Uuid> {
    unsafe {
        let mut null = false;
        let d = pg_sys::heap_getattr(tup, attr as i32 + 1, desc, &mut null);
        if null {
            None
        } else {
            Some(pgrx::Uuid::from_bytes(crate::triggers::uuid_bytes(d)))
        }
    }
}

unsafe fn record_id_of(tup: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, id_attr: usize) -> String {
    unsafe {
        scope_id_of(tup, desc, id_attr)
            .map(|u| u.to_string())
            .unwrap_or_default()
    }
}

fn check_scope(g: &Guard, scope_id: pgrx::Uuid, me: &str, what: &str, record: &str) -> Result<()> {
    let found = fetch(&g.tenant, &g.scope_entity, scope_id, false)?;
    let (row, expires, now) = match &found {
        Some((f, e)) => (Some(&f.row), e.as_str(), f.now),
        None => (None, "", 0),
    };
    match write_allowed(row, me, g.required, now) {
        Ok(()) => Ok(()),
        Err(refusal) => {
            let scope = scope_words(&g.scope_entity, &scope_id.to_string(), &g.entity, record);
            Err(match refusal {
                WriteRefusal::HeldBy(l) => {
                    locked_error(&scope, &holder_name(&g.tenant, &l.holder), expires, what)
                }
                WriteRefusal::NotHeld => lock_required_error(
                    &scope,
                    what,
                    &sql_call("udm_lock_acquire", &[&g.entity, record]),
                ),
            }
            .detail(format!(
                "tenant \"{}\", entity \"{}\"",
                g.tenant.slug, g.entity
            )))
        }
    }
}

/// `BEFORE UPDATE OR DELETE FOR EACH ROW` on entities with a lock scope: refuses the write when
/// someone else holds the scope's lock (or, for a required lock, when the writer does not).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_lock_guard(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = crate::triggers::row_trigger_data(fcinfo, LOCK_GUARD, true);
        let op = ev & pg_sys::TRIGGER_EVENT_OPMASK;
        let rel = (*td).tg_relation;
        let old = (*td).tg_trigtuple;
        let result = if op == pg_sys::TRIGGER_EVENT_UPDATE {
            (*td).tg_newtuple
        } else {
            old
        };
        let Some(g) = guard_of(td).or_raise() else {
            return pg_sys::Datum::from(result);
        };
        let desc = (*rel).rd_att;
        let me = actor();
        let record = record_id_of(old, desc, g.id_attr);
        let verb = if op == pg_sys::TRIGGER_EVENT_DELETE {
            "delete"
        } else {
            "update"
        };
        let what = format!("{verb} {} {record}", g.entity);
        let old_scope = scope_id_of(old, desc, g.scope_attr);
        if let Some(s) = old_scope {
            check_scope(&g, s, &me, &what, &record).or_raise();
        }
        if op == pg_sys::TRIGGER_EVENT_UPDATE {
            // moving a record into another scope needs that scope too
            let new_scope = scope_id_of(result, desc, g.scope_attr);
            if let Some(s) = new_scope.filter(|n| Some(*n) != old_scope) {
                check_scope(&g, s, &me, &format!("move {} {record}", g.entity), &record).or_raise();
            }
        }
        pg_sys::Datum::from(result)
    }
}

// ------------------------------------------------------------------ on Citus

/// What a `udm_lock_*` call does.
#[derive(Clone, Copy)]
enum Op {
    Acquire,
    Heartbeat,
    Release,
    Status,
}

impl Op {
    const ALL: [Op; 4] = [Op::Acquire, Op::Heartbeat, Op::Release, Op::Status];

    fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Heartbeat => "heartbeat",
            Op::Release => "release",
            Op::Status => "status",
        }
    }

    fn run(self, t: &Tenant, entity: &str, id: pgrx::Uuid) -> Result<Value> {
        match self {
            Op::Acquire => acquire(t, entity, id),
            Op::Heartbeat => heartbeat(t, entity, id),
            Op::Release => release(t, entity, id),
            Op::Status => status(t, entity, id),
        }
    }
}

/// A `udm_lock_*` call in the session's tenant. On a Citus coordinator, for a tenant on a
/// worker, the whole call runs on the tenant's node (`udm.citus_lock`), sent by Citus as a query
/// of the tenant's catalog on the caller's own connection there. Done here, its writes (the lock
/// row, the audit event) would go over a connection of udm's owner, and Citus refuses the
/// caller's next statement on the tenant's tables in that transaction ("modified in this
/// transaction by a different user"). On the node it does what it does here, as the caller,
/// checked the same way; the lock row and the event are written there as udm's owner, in the
/// caller's backend.
fn call(op: Op, entity: &str, id: pgrx::Uuid) -> Result<Value> {
    let t = catalog::current_tenant()?;
    if !crate::citus::log_elsewhere(&t) {
        return op.run(&t, entity, id);
    }
    // the node reads the selected user (the holder), which a statement that only reads would
    // not send it
    crate::citus::selection::send_now();
    let sql = crate::citus::on_node_sql(&t.schema, "udm.citus_lock($1, $2, $3, $4)");
    crate::spi::select_one::<JsonB>(
        &sql,
        &[
            op.name().into(),
            t.slug.as_str().into(),
            entity.into(),
            id.into(),
        ],
    )?
    .map(|j| j.0)
    .ok_or_else(|| {
        UdmError::internal(format!(
            "udm on Citus: udm_lock_{} came back empty from the node of tenant \"{}\"",
            op.name(),
            t.slug
        ))
    })
}

finfo_v1!(pg_finfo_udm_citus_lock);

/// `udm.citus_lock(op, tenant, entity, id)`: on the tenant's Citus worker, the `udm_lock_<op>`
/// call the coordinator sent there (see `call`), for the caller, who must be a member of the
/// tenant, with every check `udm_lock_<op>` makes. Refused anywhere but on a worker (0A000), with
/// a NULL argument (22004), and for an operation that is not one of `Op` (22023).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_citus_lock(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let args = unsafe {
        (
            pg_getarg::<String>(fcinfo, 0),
            pg_getarg::<String>(fcinfo, 1),
            pg_getarg::<String>(fcinfo, 2),
            pg_getarg::<pgrx::Uuid>(fcinfo, 3),
        )
    };
    let (Some(op), Some(slug), Some(entity), Some(id)) = args else {
        crate::error::raise(UdmError::new(
            SqlState::NullValueNotAllowed,
            "udm.citus_lock: no argument may be NULL",
        ))
    };
    let out = (|| -> Result<Value> {
        if !crate::citus::on_worker() {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                "udm.citus_lock runs on a Citus worker only, where udm_lock_* send it",
            )
            .hint(
                "call udm_lock_acquire, udm_lock_heartbeat, udm_lock_release or udm_lock_status",
            ));
        }
        let op = Op::ALL
            .into_iter()
            .find(|o| o.name() == op)
            .ok_or_else(|| {
                UdmError::invalid(format!(
                    "udm.citus_lock: \"{}\" is not a lock operation",
                    udm_core::ident::printable(&op)
                ))
                .hint("acquire, heartbeat, release or status")
            })?;
        // the tenant's tables and the registry (a reference table) are read here, inside the
        // query Citus sent to this node
        crate::citus::nested(|| {
            let t = catalog::usable_tenant(&slug)?;
            op.run(&t, &entity, id)
        })
    })()
    .or_raise();
    JsonB(out).into_datum().expect("jsonb is not null")
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
fn udm_lock_acquire(entity: &str, id: pgrx::Uuid) -> JsonB {
    JsonB(call(Op::Acquire, entity, id).or_raise())
}

#[pg_extern(volatile)]
fn udm_lock_heartbeat(entity: &str, id: pgrx::Uuid) -> JsonB {
    JsonB(call(Op::Heartbeat, entity, id).or_raise())
}

#[pg_extern(volatile)]
fn udm_lock_release(entity: &str, id: pgrx::Uuid) -> JsonB {
    JsonB(call(Op::Release, entity, id).or_raise())
}

#[pg_extern(stable)]
fn udm_lock_status(entity: &str, id: pgrx::Uuid) -> JsonB {
    JsonB(call(Op::Status, entity, id).or_raise())
}
