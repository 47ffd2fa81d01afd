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
    /// Its parameters' types (for the plan choice).
    types: Vec<pg_sys::Oid>,
    /// How far the choice between a generic plan and one per call has got (`choice`).
    choice: std::cell::Cell<Choice>,
}

/// The plan choice of a kept statement left to PostgreSQL. PostgreSQL keeps planning such a
/// statement for each call's values when its generic plan's estimated cost is higher, even when
/// the generic plan is the very plan it makes every time (its estimates for a parameter are
/// worse than for a value; udm's queries filter on `$n` throughout). So udm watches the first
/// calls: when each call's plan has the generic plan's shape (the same nodes over the same
/// relations and indexes, joined and aggregated the same way), the statement keeps the generic
/// plan and is not planned again; as soon as one differs, PostgreSQL's choice stands. Watching a
/// call costs two plannings (one for its values, and the generic plan, built once and kept).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Choice {
    /// The first call is not watched (a statement run once in a backend costs no more planning);
    /// later calls count those whose plan had the generic plan's shape.
    Watching { calls: u8, alike: u8 },
    /// Settled: generic, or PostgreSQL's choice.
    Settled,
}

/// Calls whose plan must have the generic plan's shape before the statement keeps it.
const ALIKE_CALLS: u8 = 2;

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
        // a statement whose options already choose its plans is not watched
        let chosen = options
            & (pg_sys::CURSOR_OPT_GENERIC_PLAN | pg_sys::CURSOR_OPT_CUSTOM_PLAN) as i32
            != 0;
        Ok(Plan {
            ptr: p,
            nargs,
            parallel,
            choice: std::cell::Cell::new(if chosen || nargs == 0 {
                Choice::Settled
            } else {
                Choice::Watching { calls: 0, alike: 0 }
            }),
            types,
        })
    }
}

/// A cache of kept plans by SQL text, counted against udm's cache budget.
pub type PlanCache = crate::cache::Cache<String, std::rc::Rc<Plan>>;

/// The kept plan of `sql` from `cache`, prepared (`prepare_with`: parameter `types`, cursor
/// `options`) and put there on a miss. The text names what it reads, so a changed definition is
/// a new key; PostgreSQL plans a kept plan again when a table it reads changes.
pub fn kept_plan(
    cache: &'static std::thread::LocalKey<PlanCache>,
    sql: &str,
    types: &[pg_sys::Oid],
    options: i32,
) -> Result<std::rc::Rc<Plan>> {
    if let Some(p) = crate::cache::get(cache, sql) {
        return Ok(p);
    }
    let p = std::rc::Rc::new(prepare_with(sql, types, options)?);
    let bytes = p.bytes() + sql.len() * 2;
    crate::cache::put(cache, sql.to_string(), p.clone(), bytes);
    Ok(p)
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
    rows_with(plan, args, true, f)
}

/// `rows`, run read-only or not.
pub fn rows_with<R>(
    plan: &Plan,
    args: &[Option<String>],
    read_only: bool,
    f: impl FnOnce(pg_sys::TupleDesc, &[pg_sys::HeapTuple]) -> Result<R>,
) -> Result<R> {
    let _conn = run_with_text(plan, args, read_only, 0)?;
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

/// Runs a kept read-only plan with datums (for plans prepared with `prepare_typed` or
/// `prepare_with`) and gives its rows to `f` while they are still in SPI's memory.
pub fn rows_of<R>(
    plan: &Plan,
    values: &mut [pg_sys::Datum],
    nulls: &[std::os::raw::c_char],
    f: impl FnOnce(pg_sys::TupleDesc, &[pg_sys::HeapTuple]) -> Result<R>,
) -> Result<R> {
    if values.len() != plan.nargs || nulls.len() != plan.nargs {
        return Err(UdmError::internal(format!(
            "udm: plan takes {} arguments, got {}",
            plan.nargs,
            values.len()
        )));
    }
    let _conn = Connection::open();
    execute(plan, values, nulls, true, 0)?;
    with_result(f)
}

/// Runs a kept plan inside an open SPI connection.
fn execute(
    plan: &Plan,
    values: &mut [pg_sys::Datum],
    nulls: &[std::os::raw::c_char],
    read_only: bool,
    limit: i64,
) -> Result<()> {
    match plan.choice.get() {
        Choice::Watching { calls: 0, alike } => {
            plan.choice.set(Choice::Watching { calls: 1, alike })
        }
        Choice::Watching { calls, alike } => {
            plan.choice
                .set(match unsafe { same_shape(plan, values, nulls) } {
                    Some(true) if alike + 1 >= ALIKE_CALLS => {
                        unsafe { keep_generic(plan) };
                        Choice::Settled
                    }
                    Some(true) => Choice::Watching {
                        calls: calls + 1,
                        alike: alike + 1,
                    },
                    _ => Choice::Settled,
                })
        }
        Choice::Settled => {}
    }
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

/// The plan source of a kept single-statement plan.
unsafe fn plan_source(plan: &Plan) -> Option<*mut pg_sys::CachedPlanSource> {
    unsafe {
        let list = pg_sys::SPI_plan_get_plan_sources(plan.ptr);
        if list.is_null() || (*list).length != 1 {
            return None;
        }
        let ps = (*(*list).elements).ptr_value as *mut pg_sys::CachedPlanSource;
        (!ps.is_null()).then_some(ps)
    }
}

/// Whether the plan PostgreSQL makes for these values has the shape of the generic plan (None:
/// not a statement that can be told).
unsafe fn same_shape(
    plan: &Plan,
    values: &[pg_sys::Datum],
    nulls: &[std::os::raw::c_char],
) -> Option<bool> {
    unsafe {
        let ps = plan_source(plan)?;
        let n = plan.types.len();
        if values.len() != n || nulls.len() != n {
            return None;
        }
        let params = pg_sys::makeParamList(n as i32);
        let slots = (*params).params.as_mut_slice(n);
        for i in 0..n {
            slots[i] = pg_sys::ParamExternData {
                value: values[i],
                isnull: nulls[i] == b'n' as std::os::raw::c_char,
                pflags: pg_sys::PARAM_FLAG_CONST as u16,
                ptype: plan.types[i],
            };
        }
        /// Puts the source's options back however planning ends (an ERROR unwinds through it).
        struct Options(*mut pg_sys::CachedPlanSource, i32);
        impl Drop for Options {
            fn drop(&mut self) {
                unsafe { (*self.0).cursor_options = self.1 };
            }
        }
        /// A plan this check holds, released however the check ends (an ERROR while the other
        /// is planned, a cancel, unwinds through it: the plan's memory is not kept).
        struct Held(*mut pg_sys::CachedPlan);
        impl Drop for Held {
            fn drop(&mut self) {
                unsafe { pg_sys::ReleaseCachedPlan(self.0, std::ptr::null_mut()) };
            }
        }
        let saved = Options(ps, (*ps).cursor_options);
        (*ps).cursor_options = saved.1 | pg_sys::CURSOR_OPT_CUSTOM_PLAN as i32;
        let custom = Held(pg_sys::GetCachedPlan(
            ps,
            params,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ));
        (*ps).cursor_options = saved.1 | pg_sys::CURSOR_OPT_GENERIC_PLAN as i32;
        let generic = Held(pg_sys::GetCachedPlan(
            ps,
            params,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ));
        drop(saved);
        Some(same_statements(
            (*custom.0).stmt_list,
            (*generic.0).stmt_list,
        ))
    }
}

/// From now on the statement runs its generic plan (planned again only when invalidated).
unsafe fn keep_generic(plan: &Plan) {
    unsafe {
        if let Some(ps) = plan_source(plan) {
            (*ps).cursor_options |= pg_sys::CURSOR_OPT_GENERIC_PLAN as i32;
        }
    }
}

unsafe fn list_items<T>(list: *mut pg_sys::List) -> Vec<*mut T> {
    unsafe {
        if list.is_null() {
            return vec![];
        }
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).ptr_value as *mut T)
            .collect()
    }
}

unsafe fn same_statements(a: *mut pg_sys::List, b: *mut pg_sys::List) -> bool {
    unsafe {
        let (a, b) = (list_items::<pg_sys::Node>(a), list_items::<pg_sys::Node>(b));
        a.len() == b.len()
            && a.iter().zip(&b).all(|(&x, &y)| {
                if (*x).type_ != pg_sys::NodeTag::T_PlannedStmt
                    || (*y).type_ != pg_sys::NodeTag::T_PlannedStmt
                {
                    return false;
                }
                let (x, y) = (x as *mut pg_sys::PlannedStmt, y as *mut pg_sys::PlannedStmt);
                (*x).commandType == (*y).commandType
                    && same_plan((*x).planTree, (*y).planTree)
                    && same_plans((*x).subplans, (*y).subplans)
            })
    }
}

unsafe fn same_plans(a: *mut pg_sys::List, b: *mut pg_sys::List) -> bool {
    unsafe {
        let (a, b) = (list_items::<pg_sys::Plan>(a), list_items::<pg_sys::Plan>(b));
        a.len() == b.len() && a.iter().zip(&b).all(|(&x, &y)| same_plan(x, y))
    }
}

/// The same plan shape: node by node the same kind, over the same range-table entry and index,
/// with the same join type and aggregation strategy. Node kinds with children this does not
/// know are never the same (the choice then stays PostgreSQL's).
unsafe fn same_plan(a: *mut pg_sys::Plan, b: *mut pg_sys::Plan) -> bool {
    use pg_sys::NodeTag as T;
    unsafe {
        match (a.is_null(), b.is_null()) {
            (true, true) => return true,
            (false, false) => {}
            _ => return false,
        }
        let tag = (*a).type_;
        if tag != (*b).type_ {
            return false;
        }
        let node = match tag {
            T::T_Result
            | T::T_ProjectSet
            | T::T_Material
            | T::T_Memoize
            | T::T_Sort
            | T::T_IncrementalSort
            | T::T_Group
            | T::T_WindowAgg
            | T::T_Unique
            | T::T_Gather
            | T::T_GatherMerge
            | T::T_Hash
            | T::T_LockRows
            | T::T_Limit
            | T::T_SetOp => true,
            T::T_SeqScan
            | T::T_BitmapHeapScan
            | T::T_TidScan
            | T::T_TidRangeScan
            | T::T_FunctionScan
            | T::T_ValuesScan
            | T::T_CteScan
            | T::T_WorkTableScan => {
                (*(a as *mut pg_sys::Scan)).scanrelid == (*(b as *mut pg_sys::Scan)).scanrelid
            }
            // the same relation through the same index
            T::T_IndexScan => {
                let f = |p: *mut pg_sys::Plan| {
                    let p = p as *mut pg_sys::IndexScan;
                    ((*p).scan.scanrelid, (*p).indexid)
                };
                f(a) == f(b)
            }
            T::T_IndexOnlyScan => {
                let f = |p: *mut pg_sys::Plan| {
                    let p = p as *mut pg_sys::IndexOnlyScan;
                    ((*p).scan.scanrelid, (*p).indexid)
                };
                f(a) == f(b)
            }
            T::T_BitmapIndexScan => {
                let f = |p: *mut pg_sys::Plan| {
                    let p = p as *mut pg_sys::BitmapIndexScan;
                    ((*p).scan.scanrelid, (*p).indexid)
                };
                f(a) == f(b)
            }
            T::T_BitmapAnd => same_plans(
                (*(a as *mut pg_sys::BitmapAnd)).bitmapplans,
                (*(b as *mut pg_sys::BitmapAnd)).bitmapplans,
            ),
            T::T_BitmapOr => same_plans(
                (*(a as *mut pg_sys::BitmapOr)).bitmapplans,
                (*(b as *mut pg_sys::BitmapOr)).bitmapplans,
            ),
            T::T_Append => same_plans(
                (*(a as *mut pg_sys::Append)).appendplans,
                (*(b as *mut pg_sys::Append)).appendplans,
            ),
            T::T_MergeAppend => same_plans(
                (*(a as *mut pg_sys::MergeAppend)).mergeplans,
                (*(b as *mut pg_sys::MergeAppend)).mergeplans,
            ),
            T::T_SubqueryScan => {
                let (x, y) = (
                    a as *mut pg_sys::SubqueryScan,
                    b as *mut pg_sys::SubqueryScan,
                );
                (*x).scan.scanrelid == (*y).scan.scanrelid && same_plan((*x).subplan, (*y).subplan)
            }
            T::T_NestLoop | T::T_MergeJoin | T::T_HashJoin => {
                (*(a as *mut pg_sys::Join)).jointype == (*(b as *mut pg_sys::Join)).jointype
            }
            T::T_Agg => {
                (*(a as *mut pg_sys::Agg)).aggstrategy == (*(b as *mut pg_sys::Agg)).aggstrategy
            }
            _ => false,
        };
        node && same_plan((*a).lefttree, (*b).lefttree) && same_plan((*a).righttree, (*b).righttree)
    }
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
