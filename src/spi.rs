//! Small helpers over pgrx's SPI for the shapes udm needs, and a per-backend cache of prepared
//! plans: udm's own statements are planned once per backend and reused.

use crate::error::{spi_err, Result};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::rc::Rc;

thread_local! {
    /// Plans kept per backend. Each tenant has its own catalog tables, so statements naming them
    /// are per tenant: the budget of `crate::cache` bounds them.
    static PLANS: crate::cache::Cache<String, Rc<OwnedPreparedStatement>> = crate::cache::Lru::new("statements");
}

/// The kept plan for `sql` with argument types `types`, prepared on first use. PostgreSQL's plan
/// cache re-plans it by itself when a table it uses changes.
pub fn prepared(
    sql: &str,
    types: &[pg_sys::Oid],
    mutating: bool,
) -> Result<Rc<OwnedPreparedStatement>> {
    if let Some(p) = crate::cache::get(&PLANS, sql) {
        return Ok(p);
    }
    let oids: Vec<PgOid> = types.iter().map(|t| PgOid::from(*t)).collect();
    let stmt = Spi::connect(|c| {
        let p = if mutating {
            c.prepare_mut(sql, &oids)?
        } else {
            c.prepare(sql, &oids)?
        };
        Ok::<_, pgrx::spi::Error>(p.keep())
    })
    .map_err(spi_err)?;
    let stmt = Rc::new(stmt);
    crate::cache::put(
        &PLANS,
        sql.to_string(),
        stmt.clone(),
        crate::cache::plan_estimate(sql),
    );
    Ok(stmt)
}

/// The first column of the first row, or None when there is no row (or it is NULL).
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Option<T>> {
    Spi::connect(|c| {
        let mut rows = c.select(sql, Some(1), args)?;
        match rows.next() {
            Some(row) => row.get::<T>(1),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// The first column of every row, NULLs left out.
pub fn select_column<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Vec<T>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(sql, None, args)? {
            out.extend(row.get::<T>(1)?);
        }
        Ok(out)
    })
    .map_err(spi_err)
}

/// PostgreSQL's refusal of a write in a read-only transaction (`25006`, as `BEGIN READ ONLY` and
/// every transaction of a hot standby are): "cannot execute `what` in a read-only transaction".
/// Needed before pgrx's mutating SPI calls, which ask for a transaction id first: on a standby
/// that is an internal error ("cannot assign TransactionIds during recovery") instead.
pub fn require_writable(what: &str) {
    if unsafe { pg_sys::XactReadOnly } {
        let what = std::ffi::CString::new(what).unwrap_or_else(|_| c"udm".into());
        unsafe { pg_sys::PreventCommandIfReadOnly(what.as_ptr()) };
    }
}

/// pgrx's mutating SPI connection, after `require_writable(what)`. Reads use `Spi::connect`
/// (or `select_one`): they never need a transaction id, and so serve on a standby.
pub fn connect_mut<R>(what: &str, f: impl FnOnce(&mut pgrx::spi::SpiClient<'_>) -> R) -> R {
    require_writable(what);
    Spi::connect_mut(f)
}

/// The command a statement runs, as PostgreSQL names it in its read-only error.
pub fn command(sql: &str) -> String {
    let sql = sql.trim_start();
    let end = sql
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(sql.len());
    let word = sql[..end].to_ascii_uppercase();
    if word == "SELECT" && sql.contains(" FOR UPDATE") {
        return "SELECT FOR UPDATE".into();
    }
    if word.is_empty() {
        return "udm".into();
    }
    word
}

/// Runs SQL for its effect (several statements when it takes no arguments).
pub fn run(sql: &str, args: &[DatumWithOid]) -> Result<()> {
    require_writable(&command(sql));
    if args.is_empty() && crate::citus::installed() {
        crate::citus::run_batch(sql)
    } else if args.is_empty() {
        Spi::run(sql).map_err(spi_err)
    } else {
        Spi::run_with_args(sql, args).map_err(spi_err)
    }
}

/// Creates tables a tenant gets on first use (`ddl`: `CREATE TABLE IF NOT EXISTS ...`), as the
/// extension owner, one creator at a time per tenant and kind (`what`): the others wait and find
/// the tables made.
pub fn create_on_first_use(schema: &str, what: &str, ddl: &str) -> Result<()> {
    crate::access::security::as_owner(|| {
        run(
            "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1))",
            &[format!("udm {what} {schema}").into()],
        )?;
        run(ddl, &[])
    })
}
