//! Raw SPI for udm's hot paths: plans prepared once and kept, parameters bound as text (the SQL
//! casts them, `$1::numeric`), and the single result datum copied out to the caller without a
//! detour through serde.

use crate::error::{Result, UdmError};
use pgrx::prelude::*;
use std::ffi::CString;

/// A prepared, kept SPI plan; freed when dropped.
pub struct Plan {
    ptr: pg_sys::SPIPlanPtr,
    pub nargs: usize,
    /// A query that may run in parallel: it always runs to completion (PostgreSQL runs a plan
    /// with a row limit without its parallel workers).
    parallel: bool,
}

impl Plan {
    /// Memory the kept plan holds (its contexts).
    pub fn bytes(&self) -> usize {
        crate::cache::plan_bytes(self.ptr)
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            pg_sys::SPI_freeplan(self.ptr);
        }
    }
}

struct Connection;

impl Connection {
    fn open() -> Connection {
        unsafe {
            pg_sys::SPI_connect();
        }
        Connection
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // On an ERROR the (sub)transaction abort closes the connection.
        if !std::thread::panicking() {
            unsafe {
                pg_sys::SPI_finish();
            }
        }
    }
}

/// Prepares `sql` with `nargs` text parameters and keeps the plan.
pub fn prepare(sql: &str, nargs: usize) -> Result<Plan> {
    prepare_typed(sql, &vec![pg_sys::TEXTOID; nargs])
}

/// Prepares `sql` with parameters of the given types and keeps the plan.
pub fn prepare_typed(sql: &str, types: &[pg_sys::Oid]) -> Result<Plan> {
    prepare_with(sql, types, 0)
}

/// Prepares a read-only query with `nargs` text parameters and keeps the plan; the planner may
/// choose a parallel plan for it, as it would for the same query sent by a client.
pub fn prepare_query(sql: &str, nargs: usize) -> Result<Plan> {
    prepare_with(
        sql,
        &vec![pg_sys::TEXTOID; nargs],
        pg_sys::CURSOR_OPT_PARALLEL_OK as i32,
    )
}

/// Like `prepare_query`, planned for the values of each call (`CURSOR_OPT_CUSTOM_PLAN`).
pub fn prepare_query_per_call(sql: &str, nargs: usize) -> Result<Plan> {
    prepare_with(
        sql,
        &vec![pg_sys::TEXTOID; nargs],
        (pg_sys::CURSOR_OPT_PARALLEL_OK | pg_sys::CURSOR_OPT_CUSTOM_PLAN) as i32,
    )
}

pub fn prepare_with(sql: &str, types: &[pg_sys::Oid], options: i32) -> Result<Plan> {
    let parallel = options & pg_sys::CURSOR_OPT_PARALLEL_OK as i32 != 0;
    let nargs = types.len();
    let c = CString::new(sql).map_err(|_| UdmError::internal("SQL with a NUL byte"))?;
    let _conn = Connection::open();
    let mut types = types.to_vec();
    unsafe {
        let p = pg_sys::SPI_prepare_cursor(c.as_ptr(), nargs as i32, types.as_mut_ptr(), options);
        if p.is_null() {
            return Err(UdmError::internal(format!(
                "udm: SPI_prepare failed ({})",
                std::ptr::addr_of!(pg_sys::SPI_result).read()
            )));
        }
        if pg_sys::SPI_keepplan(p) != 0 {
            return Err(UdmError::internal("udm: SPI_keepplan failed"));
        }
        Ok(Plan {
            ptr: p,
            nargs,
            parallel,
        })
    }
}

fn text_datums(args: &[Option<String>]) -> (Vec<pg_sys::Datum>, Vec<std::os::raw::c_char>) {
    let mut values = Vec::with_capacity(args.len());
    let mut nulls = Vec::with_capacity(args.len());
    for a in args {
        match a {
            Some(s) => {
                values.push(s.as_str().into_datum().expect("text"));
                nulls.push(b' ' as std::os::raw::c_char);
            }
            None => {
                values.push(pg_sys::Datum::from(0usize));
                nulls.push(b'n' as std::os::raw::c_char);
            }
        }
    }
    (values, nulls)
}

/// Reads stop after the first row, unless they may run in parallel; writes run to completion (a
/// row limit would stop a data-modifying statement before its AFTER STATEMENT triggers, e.g. the
/// audit flush).
fn row_limit(plan: &Plan, read_only: bool) -> i64 {
    if read_only && !plan.parallel {
        1
    } else {
        0
    }
}

/// Runs a kept plan with text parameters in a new SPI connection, which stays open (with the
/// results) as long as the returned guard lives.
fn run_with_text(
    plan: &Plan,
    args: &[Option<String>],
    read_only: bool,
    limit: i64,
) -> Result<Connection> {
    if args.len() != plan.nargs {
        return Err(UdmError::internal(format!(
            "udm: plan takes {} arguments, got {}",
            plan.nargs,
            args.len()
        )));
    }
    let conn = Connection::open();
    let (mut values, nulls) = text_datums(args);
    execute(plan, &mut values, &nulls, read_only, limit)?;
    Ok(conn)
}

/// Runs a kept plan and returns the first column of the first row, copied into the caller's
/// memory context (None when there is no row or it is NULL). `read_only` for statements that
/// do not write (they then see the calling statement's snapshot).
pub fn first_datum(
    plan: &Plan,
    args: &[Option<String>],
    read_only: bool,
) -> Result<Option<pg_sys::Datum>> {
    let _conn = run_with_text(plan, args, read_only, row_limit(plan, read_only))?;
    unsafe { first_of_result() }
}

/// The first column of a statement's first row.
pub enum First {
    /// A `jsonb` value as the datum's bytes.
    Raw(crate::json::RawJsonb),
    Json(serde_json::Value),
}

/// Runs a kept plan with text parameters and returns the first column of its first row as JSON
/// (None: no row or NULL): jsonb as it is, json parsed, booleans and numbers as such, any other
/// type as its text.
pub fn first_json(
    plan: &Plan,
    args: &[Option<String>],
    read_only: bool,
) -> Result<Option<serde_json::Value>> {
    Ok(match first(plan, args, read_only, false)? {
        Some(First::Json(v)) => Some(v),
        Some(First::Raw(_)) | None => None,
    })
}

/// Runs a kept plan and gives the first column of its first row (None for no row or SQL
/// NULL): as JSON, or with `keep_jsonb` a `jsonb` column as its bytes, never converted to JSON
/// and back (responses built around it are written in the binary format too).
pub fn first(
    plan: &Plan,
    args: &[Option<String>],
    read_only: bool,
    keep_jsonb: bool,
) -> Result<Option<First>> {
    let _conn = run_with_text(plan, args, read_only, row_limit(plan, read_only))?;
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() || (*table).numvals == 0 {
            return Ok(None);
        }
        let desc = (*table).tupdesc;
        let tup = *(*table).vals;
        let mut null = false;
        let d = pg_sys::SPI_getbinval(tup, desc, 1, &mut null);
        if null {
            return Ok(None);
        }
        let typ = pg_sys::SPI_gettypeid(desc, 1);
        use serde_json::Value;
        Ok(Some(First::Json(match typ {
            pg_sys::JSONBOID if keep_jsonb => {
                use pgrx::FromDatum;
                return Ok(crate::json::RawJsonb::from_datum(d, false).map(First::Raw));
            }
            pg_sys::JSONBOID => crate::json::read(d)?,
            pg_sys::BOOLOID => Value::Bool(d.value() != 0),
            pg_sys::INT2OID => Value::from(d.value() as i16),
            pg_sys::INT4OID => Value::from(d.value() as i32),
            pg_sys::INT8OID => Value::from(d.value() as i64),
            _ => {
                let p = pg_sys::SPI_getvalue(tup, desc, 1);
                let text = if p.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                };
                match typ {
                    pg_sys::JSONOID
                    | pg_sys::NUMERICOID
                    | pg_sys::FLOAT4OID
                    | pg_sys::FLOAT8OID => {
                        serde_json::from_str(&text).unwrap_or(Value::String(text))
                    }
                    _ => Value::String(text),
                }
            }
        })))
    }
}

/// Runs a kept read-only plan to completion and gives its rows to `f` while they are still in
/// SPI's memory (what `f` allocates in the current context is freed with them; it returns what
/// must outlive the call as Rust values).
pub fn rows<R>(
    plan: &Plan,
    args: &[Option<String>],
    f: impl FnOnce(pg_sys::TupleDesc, &[pg_sys::HeapTuple]) -> Result<R>,
) -> Result<R> {
    let _conn = run_with_text(plan, args, true, 0)?;
    with_result(f)
}

/// Like `rows`, reading with `snapshot` (read-only, whatever the transaction's isolation level):
/// for readers whose correctness depends on seeing everything committed before a moment they
/// chose, such as the event stream after computing its horizon.
pub fn rows_at<R>(
    plan: &Plan,
    args: &[Option<String>],
    snapshot: pg_sys::Snapshot,
    f: impl FnOnce(pg_sys::TupleDesc, &[pg_sys::HeapTuple]) -> Result<R>,
) -> Result<R> {
    if args.len() != plan.nargs {
        return Err(UdmError::internal(format!(
            "udm: plan takes {} arguments, got {}",
            plan.nargs,
            args.len()
        )));
    }
    let _conn = Connection::open();
    let (mut values, nulls) = text_datums(args);
    let rc = unsafe {
        pg_sys::SPI_execute_snapshot(
            plan.ptr,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            snapshot,
            std::ptr::null_mut(),
            true,
            false,
            0,
        )
    };
    if rc < 0 {
        return Err(UdmError::internal(format!(
            "udm: SPI_execute_snapshot failed ({rc})"
        )));
    }
    with_result(f)
}

/// Hands the last SPI statement's rows to `f` (while the SPI connection is open).
fn with_result<R>(
    f: impl FnOnce(pg_sys::TupleDesc, &[pg_sys::HeapTuple]) -> Result<R>,
) -> Result<R> {
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() {
            return Err(UdmError::internal("udm: the query returned no result"));
        }
        let rows = if (*table).numvals == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts((*table).vals, (*table).numvals as usize)
        };
        f((*table).tupdesc, rows)
    }
}

/// Runs a kept plan with datums (for plans prepared with `prepare_typed`).
pub fn first_datum_of(
    plan: &Plan,
    values: &mut [pg_sys::Datum],
    nulls: &[std::os::raw::c_char],
    read_only: bool,
) -> Result<Option<pg_sys::Datum>> {
    let _conn = Connection::open();
    execute(plan, values, nulls, read_only, row_limit(plan, read_only))?;
    unsafe { first_of_result() }
}

/// Runs a kept plan inside an open SPI connection.
fn execute(
    plan: &Plan,
    values: &mut [pg_sys::Datum],
    nulls: &[std::os::raw::c_char],
    read_only: bool,
    limit: i64,
) -> Result<()> {
    let rc = unsafe {
        pg_sys::SPI_execute_plan(
            plan.ptr,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            read_only,
            limit,
        )
    };
    if rc < 0 {
        return Err(UdmError::internal(format!(
            "udm: SPI_execute_plan failed ({rc})"
        )));
    }
    Ok(())
}

unsafe fn first_of_result() -> Result<Option<pg_sys::Datum>> {
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() || (*table).numvals == 0 {
            return Ok(None);
        }
        let tuple = *(*table).vals;
        let desc = (*table).tupdesc;
        let mut isnull = false;
        let d = pg_sys::SPI_getbinval(tuple, desc, 1, &mut isnull);
        if isnull {
            return Ok(None);
        }
        let att = (*desc).attrs.as_slice((*desc).natts as usize)[0];
        Ok(Some(pg_sys::SPI_datumTransfer(
            d,
            att.attbyval,
            att.attlen as i32,
        )))
    }
}

/// Runs SQL once (not kept) with text parameters; returns the first datum like `first_datum`.
pub fn once(sql: &str, args: &[Option<String>], read_only: bool) -> Result<Option<pg_sys::Datum>> {
    let c = CString::new(sql).map_err(|_| UdmError::internal("SQL with a NUL byte"))?;
    let _conn = Connection::open();
    let (mut values, nulls) = text_datums(args);
    let mut types = vec![pg_sys::TEXTOID; args.len()];
    unsafe {
        let rc = pg_sys::SPI_execute_with_args(
            c.as_ptr(),
            args.len() as i32,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            read_only,
            if read_only { 1 } else { 0 },
        );
        if rc < 0 {
            return Err(UdmError::internal(format!(
                "udm: SPI_execute failed ({rc})"
            )));
        }
        first_of_result()
    }
}

/// A jsonb datum as serde JSON.
pub fn jsonb_value(d: pg_sys::Datum) -> serde_json::Value {
    unsafe { crate::json::read(d) }.unwrap_or_else(|e| crate::error::raise(e))
}

/// A json (text) datum as serde JSON.
pub fn json_value(d: pg_sys::Datum) -> serde_json::Value {
    unsafe {
        String::from_datum(d, false)
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// A bigint datum.
pub fn int8(d: pg_sys::Datum) -> i64 {
    d.value() as i64
}
