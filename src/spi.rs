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

/// Runs SQL for its effect (several statements when it takes no arguments).
pub fn run(sql: &str, args: &[DatumWithOid]) -> Result<()> {
    if args.is_empty() {
        Spi::run(sql).map_err(spi_err)
    } else {
        Spi::run_with_args(sql, args).map_err(spi_err)
    }
}

/// Creates tables a tenant gets on first use (`ddl`: `CREATE TABLE IF NOT EXISTS ...`), as the
/// extension owner, one creator at a time per tenant and kind (`what`): the others wait and find
/// the tables made.
pub fn create_on_first_use(schema: &str, what: &str, ddl: &str) -> Result<()> {
    crate::security::as_owner(|| {
        run(
            "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1))",
            &[format!("udm {what} {schema}").into()],
        )?;
        run(ddl, &[])
    })
}
