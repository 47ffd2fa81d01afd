#![allow(clippy::result_large_err)] // GqlError carries locations, path, detail and hint, as the engine does
//! The SQL surface of udm's GraphQL engine (`udm_core::graphql`): `udm_graphql`,
//! `udm_graphql_schema` and the settings of its limits. The engine plans; this module runs the
//! planned statements through SPI as the caller (row-level security, rules, locks and audit apply
//! exactly as for plain SQL), with schemas, documents and plans in the per-backend caches.

use crate::cache::{self, Cache, Lru};
use crate::catalog;
use crate::error::{in_subtransaction, OrRaise, PgError, Result, UdmError};
use crate::json::{JsonB, JsonOut, RawJsonb};
use crate::query::rawspi;
use crate::query::rowjson::RowJson;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::rc::Rc;
use udm_core::error::SqlState;
use udm_core::graphql::{
    prepare, response, CacheKeys, Context, Document, GqlError, GqlSchema, Limits, Next,
    OperationKind, Planning, PointRead, RowPart, RowsShape, Statement, Wrap,
};

pub mod openapi;

pub static MAX_DOCUMENT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(100_000);
pub static MAX_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(15);
pub static MAX_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(20_000);
pub static MAX_FIELDS: GucSetting<i32> = GucSetting::<i32>::new(2_000);
pub static MAX_ROOT_FIELDS: GucSetting<i32> = GucSetting::<i32>::new(20);
pub static MAX_PAGE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static DEFAULT_PAGE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(50);
pub static MAX_LIST_ITEMS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static MAX_VARIABLE_VALUES: GucSetting<i32> = GucSetting::<i32>::new(100_000);
pub static INTROSPECTION: GucSetting<bool> = GucSetting::<bool>::new(true);

fn int_setting(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
    max: i32,
) {
    GucRegistry::define_int_guc(
        name,
        short,
        c"Requests past it get a LIMIT_EXCEEDED error (54000) naming this setting. Set by a superuser.",
        setting,
        min,
        max,
        GucContext::Suset,
        GucFlags::default(),
    );
}

pub fn init() {
    int_setting(
        c"udm.graphql_max_document_bytes",
        c"Size in bytes of a GraphQL document udm_graphql accepts.",
        &MAX_DOCUMENT_BYTES,
        100,
        10_000_000,
    );
    int_setting(
        c"udm.graphql_max_depth",
        c"Selection depth of a GraphQL operation, fragments expanded.",
        &MAX_DEPTH,
        2,
        100,
    );
    int_setting(
        c"udm.graphql_max_tokens",
        c"Lexical tokens of a GraphQL document.",
        &MAX_TOKENS,
        100,
        1_000_000,
    );
    int_setting(
        c"udm.graphql_max_fields",
        c"Fields a GraphQL operation selects, fragments expanded.",
        &MAX_FIELDS,
        10,
        1_000_000,
    );
    int_setting(
        c"udm.graphql_max_root_fields",
        c"Root fields (aliases included) of one GraphQL operation: each runs as a statement.",
        &MAX_ROOT_FIELDS,
        1,
        1000,
    );
    int_setting(
        c"udm.graphql_max_page_size",
        c"first/last of a GraphQL connection or list.",
        &MAX_PAGE_SIZE,
        1,
        udm_core::query::MAX_LIMIT as i32,
    );
    int_setting(
        c"udm.graphql_default_page_size",
        c"Page size of a GraphQL connection or list given neither first nor last.",
        &DEFAULT_PAGE_SIZE,
        1,
        udm_core::query::MAX_LIMIT as i32,
    );
    int_setting(
        c"udm.graphql_max_list_items",
        c"Items of a list argument or variable of a GraphQL request (in, objects).",
        &MAX_LIST_ITEMS,
        1,
        100_000,
    );
    int_setting(
        c"udm.graphql_max_variable_values",
        c"JSON values in the variables of a GraphQL request.",
        &MAX_VARIABLE_VALUES,
        1,
        10_000_000,
    );
    GucRegistry::define_bool_guc(
        c"udm.graphql_introspection",
        c"Whether udm_graphql answers __schema and __type.",
        c"Off: introspection fields are refused. Set by a superuser (e.g. ALTER ROLE ... SET).",
        &INTROSPECTION,
        GucContext::Suset,
        GucFlags::default(),
    );
}

fn limits() -> Limits {
    let n = |s: &GucSetting<i32>| s.get().max(1) as usize;
    let d = Limits::default();
    Limits {
        max_document_bytes: n(&MAX_DOCUMENT_BYTES),
        max_depth: n(&MAX_DEPTH),
        max_tokens: n(&MAX_TOKENS),
        max_fields: n(&MAX_FIELDS) as u64,
        max_root_fields: n(&MAX_ROOT_FIELDS),
        max_page_size: MAX_PAGE_SIZE.get() as i64,
        default_page_size: (DEFAULT_PAGE_SIZE.get() as i64).min(MAX_PAGE_SIZE.get() as i64),
        max_list_items: n(&MAX_LIST_ITEMS),
        max_variable_values: n(&MAX_VARIABLE_VALUES),
        max_variable_depth: d.max_variable_depth,
        introspection: INTROSPECTION.get(),
    }
}

/// The limits' fingerprint, written again only when a setting changed.
fn limits_fingerprint(lim: &Limits) -> Rc<str> {
    LAST_LIMITS.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((l, fp)) if l == lim => fp.clone(),
            _ => {
                let fp: Rc<str> = lim.fingerprint().into();
                *last = Some((lim.clone(), fp.clone()));
                fp
            }
        }
    })
}

thread_local! {
    static LAST_LIMITS: std::cell::RefCell<Option<(Limits, Rc<str>)>> = const { std::cell::RefCell::new(None) };
    static SCHEMAS: Cache<String, Rc<GqlSchema>> = Lru::new("graphql schemas");
    static DOCUMENTS: Cache<String, Rc<Document>> = Lru::new("graphql documents");
    static PLANS: Cache<(Planning, Rc<str>), Rc<Planned>> = Lru::new("graphql statements");
    static FUNCTIONS_SCHEMA: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The schema udm's functions are installed in (the extension's schema).
fn functions_schema() -> Result<String> {
    if let Some(s) = FUNCTIONS_SCHEMA.with(|s| s.borrow().clone()) {
        return Ok(s);
    }
    let name = crate::spi::select_one::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'udm'",
        &[],
    )?
    .ok_or_else(|| UdmError::internal("the schema of extension udm is not found"))?;
    FUNCTIONS_SCHEMA.with(|s| *s.borrow_mut() = Some(name.clone()));
    Ok(name)
}

/// The selected tenant's GraphQL schema as the session's role sees it.
fn schema_of(
    t: &catalog::Tenant,
) -> Result<(Rc<crate::query::TenantModel>, Rc<GqlSchema>, String)> {
    let model = crate::query::model(t)?;
    let key = CacheKeys::schema(&model.key, catalog::generation());
    cache::sync(&SCHEMAS, catalog::generation());
    if let Some(s) = cache::get(&SCHEMAS, &key) {
        return Ok((model, s, key));
    }
    let s = Rc::new(GqlSchema::build(&*model)?);
    cache::put_scoped(
        &SCHEMAS,
        model.scope,
        key.clone(),
        s.clone(),
        s.approx_bytes(),
    );
    Ok((model, s, key))
}

fn document(
    scope: u32,
    schema: &GqlSchema,
    schema_key: &str,
    text: &str,
    limits: &Limits,
) -> std::result::Result<(Rc<Document>, String), Vec<GqlError>> {
    let key = CacheKeys::document(schema_key, text, limits);
    cache::sync(&DOCUMENTS, catalog::generation());
    if let Some(d) = cache::get(&DOCUMENTS, &key) {
        return Ok((d, key));
    }
    let d = Rc::new(Document::parse(schema, text, limits)?);
    cache::put_scoped(&DOCUMENTS, scope, key.clone(), d.clone(), d.approx_bytes());
    Ok((d, key))
}

/// A query's plans, kept for the next request of the same document, operation and variables;
/// variables holding UUIDs may differ: where they became statement parameters is learnt by
/// planning once more with other UUIDs (anything else that differs: not kept).
struct Memo {
    fields: Vec<udm_core::graphql::FieldPlan>,
    /// (field, step, parameter) ← the UUID at this path of the variables
    slots: Vec<(usize, usize, usize, Vec<PathKey>)>,
}

#[derive(Clone, Debug, PartialEq)]
enum PathKey {
    Key(String),
    Index(usize),
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Writes the variables into `out` as JSON with every UUID replaced by a mark (the memo's key),
/// and notes where the UUIDs were.
fn write_masked(
    v: &Value,
    path: &mut Vec<PathKey>,
    found: &mut Vec<(Vec<PathKey>, String)>,
    out: &mut String,
) {
    match v {
        Value::String(s) if is_uuid(s) => {
            found.push((path.clone(), s.clone()));
            out.push_str("\"\\u0001uuid\"");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                path.push(PathKey::Index(i));
                write_masked(x, path, found, out);
                path.pop();
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                path.push(PathKey::Key(k.clone()));
                write_masked(x, path, found, out);
                path.pop();
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn at<'v>(v: &'v Value, path: &[PathKey]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| match k {
        PathKey::Key(k) => v.get(k),
        PathKey::Index(i) => v.get(i),
    })
}

fn at_mut<'v>(v: &'v mut Value, path: &[PathKey]) -> Option<&'v mut Value> {
    path.iter().try_fold(v, |v, k| match k {
        PathKey::Key(k) => v.get_mut(k),
        PathKey::Index(i) => v.get_mut(i),
    })
}

thread_local! {
    static MEMOS: Cache<String, Rc<Memo>> = Lru::new("graphql query plans");
    /// Queries asked once: a query's plans are kept when it is asked a second time, so queries
    /// whose variables always differ (searches, cursors) do not crowd the budget with plans.
    static SEEN: Cache<String, ()> = Lru::new("graphql queries asked once");
}

/// Learns where the UUIDs of `vars` went in `fields` (planned with `vars`) by planning again with
/// other UUIDs; None when anything but those parameters changed.
fn learn(
    fields: &[udm_core::graphql::FieldPlan],
    vars: &Value,
    uuids: &[(Vec<PathKey>, String)],
    plan_again: &mut dyn FnMut(&Value) -> Option<Vec<udm_core::graphql::FieldPlan>>,
) -> Option<Memo> {
    let mut other = vars.clone();
    let mut sentinels = Vec::new();
    for (path, _) in uuids {
        let s = udm_core::ids::uuid_text(&crate::records::uuid_v7());
        *at_mut(&mut other, path)? = Value::String(s.clone());
        sentinels.push(s);
    }
    let again = plan_again(&other)?;
    if again.len() != fields.len() {
        return None;
    }
    let mut slots = Vec::new();
    for (fi, (a, b)) in fields.iter().zip(&again).enumerate() {
        for (step, i) in a.param_differences(b)? {
            let (pa, pb) = (a.param(step, i)?.as_deref(), b.param(step, i)?.as_deref());
            // exactly one variable's UUID, passed through as it is
            let k = uuids.iter().zip(&sentinels).position(|((_, real), sent)| {
                Some(real.as_str()) == pa && Some(sent.as_str()) == pb
            })?;
            slots.push((fi, step, i, uuids[k].0.clone()));
        }
    }
    Some(Memo {
        fields: fields.to_vec(),
        slots,
    })
}

/// A statement's kept plan, and the jsonb builder of its rows' columns (made from its first
/// result: a kept plan's result types do not change).
struct Planned {
    plan: rawspi::Plan,
    columns: RefCell<Option<Rc<ColumnsJson>>>,
}

struct ColumnsJson {
    types: Vec<pg_sys::Oid>,
    json: RowJson,
}

fn plan_of(st: &Statement) -> Result<Rc<Planned>> {
    cache::sync(&PLANS, catalog::generation());
    let key = (st.planning, st.sql.clone());
    if let Some(p) = cache::get(&PLANS, &key) {
        return Ok(p);
    }
    let n = st.params.len();
    let plan = match st.planning {
        Planning::PerCall => rawspi::prepare_query_per_call(&st.sql, n)?,
        Planning::Generic => rawspi::prepare_with(
            &st.sql,
            &vec![pg_sys::TEXTOID; n],
            pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
        )?,
        Planning::Cached => rawspi::prepare(&st.sql, n)?,
    };
    let bytes = plan.bytes() + st.sql.len() * 2 + st.rows.as_ref().map_or(0, |r| r.columns * 128);
    let p = Rc::new(Planned {
        plan,
        columns: RefCell::new(None),
    });
    cache::put(&PLANS, key, p.clone(), bytes);
    Ok(p)
}

/// A PostgreSQL error as a GraphQL error (SQLSTATE, message, detail and hint as raised).
fn db_error(e: PgError) -> GqlError {
    let state = unsafe {
        std::ffi::CStr::from_ptr(pg_sys::unpack_sql_state(e.code as i32))
            .to_string_lossy()
            .into_owned()
    };
    GqlError::database(&state, &e.message, e.detail.as_deref(), e.hint.as_deref())
}

/// Runs a root field's plan to its value. An ERROR inside is caught by the caller's
/// subtransaction.
fn run_field(
    plan: &mut udm_core::graphql::FieldPlan,
    read_only: bool,
) -> std::result::Result<Value, GqlError> {
    let mut last = None;
    loop {
        match plan.next(last.take())? {
            Next::Done(v) => return Ok(v),
            Next::Run(st) => {
                let p = plan_of(&st).map_err(GqlError::from)?;
                let v = match &st.rows {
                    Some(shape) => match rows_value(&p, &st, shape, read_only)? {
                        Some(raw) => Some(JsonOut::Raw(raw).into_json().map_err(GqlError::from)?),
                        None => None,
                    },
                    None => rawspi::first_json(&p.plan, &st.params, read_only)
                        .map_err(GqlError::from)?,
                };
                last = Some(v.unwrap_or(Value::Null));
            }
        }
    }
}

/// Runs `f` in a subtransaction; an ERROR becomes a GraphQL error (and the subtransaction's work
/// is undone).
fn guarded<T>(
    f: impl FnOnce() -> std::result::Result<T, GqlError>,
) -> std::result::Result<T, GqlError> {
    match in_subtransaction(f) {
        Ok(r) => r,
        Err(e) => Err(db_error(e)),
    }
}

pub fn graphql(query: &str, variables: Option<&Value>, operation_name: Option<&str>) -> JsonOut {
    let lim = limits();
    let t = match catalog::current_tenant() {
        Ok(t) => t,
        Err(e) => return JsonOut::Json(response(None, &[GqlError::from(e)], None)),
    };
    let (model, schema, schema_key) = match schema_of(&t) {
        Ok(x) => x,
        Err(e) => return JsonOut::Json(response(None, &[GqlError::from(e)], None)),
    };
    let empty = json!({});
    let vars = variables.unwrap_or(&empty);
    // a query planned before for this schema, limits, operation, variables (UUIDs aside) and
    // document, looked up before the document is: a query asked again is not parsed again
    let mut uuids = Vec::new();
    let fingerprint = limits_fingerprint(&lim);
    let op = operation_name.unwrap_or("");
    let mut memo_key =
        String::with_capacity(schema_key.len() + fingerprint.len() + op.len() + query.len() + 64);
    memo_key.push_str(&schema_key);
    memo_key.push('|');
    memo_key.push_str(&fingerprint);
    memo_key.push('|');
    memo_key.push_str(&op.len().to_string());
    memo_key.push(':');
    memo_key.push_str(op);
    memo_key.push('|');
    write_masked(vars, &mut Vec::new(), &mut uuids, &mut memo_key);
    memo_key.push('|');
    memo_key.push_str(query);
    cache::sync(&MEMOS, catalog::generation());
    if let Some(m) = cache::get(&MEMOS, &memo_key) {
        let mut fields = m.fields.clone();
        let mut ok = true;
        for (fi, step, i, path) in &m.slots {
            let v = at(vars, path).and_then(Value::as_str).map(str::to_string);
            ok &= v.is_some() && fields[*fi].set_param(*step, *i, v);
        }
        if ok {
            return run_query(&t, fields);
        }
    }
    let (doc, _) = match document(model.scope, &schema, &schema_key, query, &lim) {
        Ok(d) => d,
        Err(errs) => return JsonOut::Json(response(None, &errs, None)),
    };
    let functions = match functions_schema() {
        Ok(f) => f,
        Err(e) => return JsonOut::Json(response(None, &[GqlError::from(e)], None)),
    };
    let plan = |vars: &Value| {
        let mut new_id = || udm_core::ids::uuid_text(&crate::records::uuid_v7());
        let mut ctx = Context {
            model: &*model,
            limits: &lim,
            functions_schema: &functions,
            new_id: &mut new_id,
        };
        prepare(&schema, &doc, operation_name, vars, &mut ctx)
    };
    let prepared = match plan(vars) {
        Ok(p) => p,
        Err(errs) => return JsonOut::Json(response(None, &errs, None)),
    };
    cache::sync(&SEEN, catalog::generation());
    let again = prepared.kind == OperationKind::Query && cache::get(&SEEN, &memo_key).is_some();
    if prepared.kind == OperationKind::Query && !again {
        let bytes = memo_key.len() + 64;
        cache::put_scoped(&SEEN, model.scope, memo_key.clone(), (), bytes);
    }
    if again {
        let memo = if uuids.is_empty() {
            Some(Memo {
                fields: prepared.fields.clone(),
                slots: vec![],
            })
        } else {
            learn(&prepared.fields, vars, &uuids, &mut |v| {
                plan(v).ok().map(|p| p.fields)
            })
        };
        if let Some(m) = memo {
            let bytes = memo_key.len()
                + m.fields
                    .iter()
                    .map(|f| f.sql().iter().map(|s| s.len() * 2).sum::<usize>() + 512)
                    .sum::<usize>();
            cache::put_scoped(&MEMOS, model.scope, memo_key, Rc::new(m), bytes);
        }
    }
    match prepared.kind {
        OperationKind::Subscription => {
            JsonOut::Json(response(None, &[], Some(json!({"subscription": "valid"}))))
        }
        OperationKind::Query => run_query(&t, prepared.fields),
        OperationKind::Mutation => {
            // all or nothing: one subtransaction for every field, in order
            let mut fields = prepared.fields;
            let current = std::cell::Cell::new(0usize);
            let out = crate::error::in_subtransaction_ok(|| {
                let mut data = Map::new();
                for (i, f) in fields.iter_mut().enumerate() {
                    current.set(i);
                    match run_field(f, false) {
                        Ok(v) => {
                            data.insert(f.key.clone(), v);
                        }
                        Err(e) => return Err(f.error(e)),
                    }
                }
                Ok(data)
            });
            let error = match out {
                Ok(Ok(data)) => {
                    return JsonOut::Json(response(Some(Value::Object(data)), &[], None))
                }
                Ok(Err(e)) => e,
                // an ERROR raised by the database while field `current` ran
                Err(e) => fields[current.get()].error(db_error(e)),
            };
            JsonOut::Json(response(Some(Value::Null), &[error], None))
        }
    }
}

/// A root field's value: a statement's `jsonb` result as it came (or no row), or JSON.
enum FieldOut {
    Raw(Option<RawJsonb>),
    Json(Value),
}

/// Runs a field made of one statement whose result is the field's value, keeping a `jsonb`
/// result in its binary form.
fn run_field_raw(
    t: &catalog::Tenant,
    plan: &mut udm_core::graphql::FieldPlan,
) -> std::result::Result<FieldOut, GqlError> {
    match plan.next(None)? {
        Next::Run(st) => {
            if let Some(shape) = &st.rows {
                if let Some(point) = &shape.point {
                    if let Some(v) = point_value(t, point, shape, &st)? {
                        return Ok(FieldOut::Raw(v));
                    }
                }
            }
            let p = plan_of(&st).map_err(GqlError::from)?;
            if let Some(shape) = &st.rows {
                return Ok(FieldOut::Raw(rows_value(&p, &st, shape, true)?));
            }
            Ok(
                match rawspi::first(&p.plan, &st.params, true, true).map_err(GqlError::from)? {
                    Some(rawspi::First::Raw(b)) => FieldOut::Raw(Some(b)),
                    Some(rawspi::First::Json(v)) => FieldOut::Json(v),
                    None => FieldOut::Raw(None),
                },
            )
        }
        Next::Done(v) => Ok(FieldOut::Json(v)),
    }
}

/// The value of a field built from its statement's rows by `shape`, in jsonb's binary format
/// (None: null, a record by id that does not exist or is not visible).
fn rows_value(
    p: &Planned,
    st: &Statement,
    shape: &RowsShape,
    read_only: bool,
) -> std::result::Result<Option<RawJsonb>, GqlError> {
    use udm_core::jsonb::Value as J;
    let too_big = |e: udm_core::jsonb::JsonbError| {
        UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!("udm: cannot build the result: {e}"),
        )
    };
    let objects = rawspi::rows_with(&p.plan, &st.params, read_only, |desc, rows| unsafe {
        let json = columns_json(p, desc, shape.columns)?;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![false; natts];
        let mut out = Vec::with_capacity(rows.len());
        for &row in rows {
            pg_sys::heap_deform_tuple(row, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            // each row's object is written while its values are borrowed from the row
            let mut buf = Vec::new();
            json.json
                .with_values(&values, &nulls, |vals| {
                    udm_core::jsonb::write_object(&mut buf, &object_of(&shape.node, &vals))
                })
                .map_err(too_big)?;
            out.push(buf);
        }
        Ok(out)
    })
    .map_err(GqlError::from)?;
    Ok(match &shape.wrap {
        Wrap::One => objects.into_iter().next().map(RawJsonb),
        Wrap::Connection { keys, reverse } => {
            let mut items: Vec<J> = objects.iter().map(|b| J::Jsonb(&b[4..])).collect();
            if *reverse {
                items.reverse();
            }
            let mut items = Some(items);
            let pairs: Vec<(&[u8], J)> = keys
                .iter()
                .map(|(k, t)| {
                    let v = match t {
                        Some(t) => J::String(t.as_bytes()),
                        None => J::Array(items.take().unwrap_or_default()),
                    };
                    (k.as_bytes(), v)
                })
                .collect();
            let mut buf = Vec::new();
            udm_core::jsonb::write_object(&mut buf, &pairs)
                .map_err(too_big)
                .map_err(GqlError::from)?;
            Some(RawJsonb(buf))
        }
    })
}

/// A record by id read by primary key without running its statement (`fastget`: where that is
/// provably the same, the caller holding table-wide SELECT and no row-level security applying).
/// None: the statement must run (then it also reports a bad id as PostgreSQL does).
fn point_value(
    t: &catalog::Tenant,
    point: &PointRead,
    shape: &RowsShape,
    st: &Statement,
) -> std::result::Result<Option<Option<RawJsonb>>, GqlError> {
    use crate::query::fastget;
    // only the form both PostgreSQL and this parser read the same way
    let Some(Some(id)) = st.params.get(point.id_param) else {
        return Ok(None);
    };
    let Some(id) = (id.len() == 36)
        .then(|| uuid::Uuid::parse_str(id).ok())
        .flatten()
    else {
        return Ok(None);
    };
    let e = catalog::entity(t, &point.entity).map_err(GqlError::from)?;
    let Some(p) = fastget::columns_plan(t, &e, &point.columns) else {
        return Ok(None);
    };
    let datum = pgrx::Uuid::from_bytes(*id.as_bytes()).into_datum();
    let Some(datum) = datum else {
        return Ok(None);
    };
    let read = fastget::read(&p, datum, |json, values, nulls| {
        let mut buf = Vec::new();
        unsafe {
            json.with_values(values, nulls, |vals| {
                udm_core::jsonb::write_object(&mut buf, &object_of(&shape.node, &vals))
            })
        }
        .map(|_| buf)
    });
    match read {
        fastget::Read::Found(Ok(buf)) => Ok(Some(Some(RawJsonb(buf)))),
        fastget::Read::Found(Err(e)) => Err(GqlError::from(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!("udm: cannot build the result: {e}"),
        ))),
        fastget::Read::Missing => Ok(Some(None)),
        fastget::Read::UseSql => Ok(None),
    }
}

/// The object of a row by its shape, from the row's column values.
fn object_of<'a>(
    node: &'a [(String, RowPart)],
    vals: &[udm_core::jsonb::Value<'a>],
) -> Vec<(&'a [u8], udm_core::jsonb::Value<'a>)> {
    use udm_core::jsonb::Value as J;
    node.iter()
        .map(|(k, part)| {
            let v = match part {
                RowPart::Column(i) => vals.get(*i).cloned().unwrap_or(J::Null),
                RowPart::Const(t) => J::String(t.as_bytes()),
                RowPart::Object { present, fields } => match vals.get(*present) {
                    None | Some(J::Null) => J::Null,
                    Some(_) => J::Object(object_of(fields, vals)),
                },
            };
            (k.as_bytes(), v)
        })
        .collect()
}

/// The jsonb builder of a statement's columns (`want` of them), made once for its result types.
unsafe fn columns_json(
    p: &Planned,
    desc: pg_sys::TupleDesc,
    want: usize,
) -> Result<Rc<ColumnsJson>> {
    unsafe {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        let types: Vec<pg_sys::Oid> = attrs.iter().map(|a| a.atttypid).collect();
        if let Some(c) = p.columns.borrow().as_ref().filter(|c| c.types == types) {
            return Ok(c.clone());
        }
        if types.len() != want {
            return Err(UdmError::internal(format!(
                "udm: a statement returned {} columns, {want} expected",
                types.len()
            )));
        }
        let cols: Vec<(String, usize)> = (0..want).map(|i| (i.to_string(), i)).collect();
        let c = Rc::new(ColumnsJson {
            types,
            json: RowJson::new(desc, &cols),
        });
        *p.columns.borrow_mut() = Some(c.clone());
        Ok(c)
    }
}

/// `{"data": {key: value, ...}}` written in jsonb's binary format around the fields' results;
/// None when a field's value is JSON (the response is then built as JSON).
fn raw_response(outs: &[(String, FieldOut)]) -> Option<Vec<u8>> {
    use udm_core::jsonb::{write_object, Value as J};
    let mut pairs = Vec::with_capacity(outs.len());
    for (k, o) in outs {
        pairs.push((
            k.as_bytes(),
            match o {
                FieldOut::Raw(Some(b)) => J::Jsonb(b.root()),
                FieldOut::Raw(None) | FieldOut::Json(Value::Null) => J::Null,
                FieldOut::Json(_) => return None,
            },
        ));
    }
    let mut data = Vec::new();
    write_object(&mut data, &pairs).ok()?;
    let mut out = Vec::with_capacity(data.len() + 32);
    write_object(&mut out, &[(b"data".as_slice(), J::Jsonb(&data[4..]))]).ok()?;
    Some(out)
}

/// Runs a query's fields, each in its own subtransaction (a field's error leaves the others).
fn run_query(t: &catalog::Tenant, fields: Vec<udm_core::graphql::FieldPlan>) -> JsonOut {
    let mut outs = Vec::with_capacity(fields.len());
    let mut errors = Vec::new();
    for mut f in fields {
        let key = f.key.clone();
        let r = if f.is_single_statement() {
            guarded(|| run_field_raw(t, &mut f))
        } else {
            guarded(|| run_field(&mut f, true)).map(FieldOut::Json)
        };
        match r {
            Ok(v) => outs.push((key, v)),
            Err(e) => {
                errors.push(f.error(e));
                outs.push((key, FieldOut::Json(Value::Null)));
            }
        }
    }
    if errors.is_empty() {
        if let Some(raw) = raw_response(&outs) {
            return JsonOut::Raw(RawJsonb(raw));
        }
    }
    let mut data = Map::new();
    for (k, o) in outs {
        let v = match o {
            FieldOut::Json(v) => v,
            FieldOut::Raw(None) => Value::Null,
            FieldOut::Raw(Some(b)) => match JsonOut::Raw(b).into_json() {
                Ok(v) => v,
                Err(e) => {
                    errors.push(GqlError::from(e));
                    Value::Null
                }
            },
        };
        data.insert(k, v);
    }
    JsonOut::Json(response(Some(Value::Object(data)), &errors, None))
}

/// `udm_graphql(query, variables, operation_name)`: a GraphQL response (`data`, `errors`) for
/// the selected tenant, as the selected user.
#[pg_extern(volatile, parallel_unsafe)]
fn udm_graphql(
    query: Option<&str>,
    variables: default!(Option<JsonB>, "NULL"),
    operation_name: default!(Option<&str>, "NULL"),
) -> JsonOut {
    let Some(query) = query else {
        return JsonOut::Json(response(
            None,
            &[GqlError::input("the GraphQL document (query) is NULL")],
            None,
        ));
    };
    let vars = variables.map(|v| v.0);
    if let Some(v) = &vars {
        if !v.is_object() && !v.is_null() {
            return JsonOut::Json(response(
                None,
                &[GqlError::input("variables must be a JSON object")],
                None,
            ));
        }
    }
    graphql(
        query,
        vars.as_ref().filter(|v| !v.is_null()),
        operation_name,
    )
}

/// `udm_graphql_schema()`: the SDL of the selected tenant's schema as the session's role sees it.
#[pg_extern(volatile, parallel_unsafe)]
fn udm_graphql_schema() -> String {
    let t = catalog::current_tenant().or_raise();
    let (_, s, _) = schema_of(&t).or_raise();
    s.sdl()
}

// ------------------------------------------------------------------ subscriptions delivered

/// One subscription of a delivery batch: its document, and the last event its subscriber got.
struct Wanted {
    query: String,
    variables: Value,
    operation_name: Option<String>,
    after: i64,
}

/// Plans a subscription operation for the selected tenant and user.
fn plan_subscription(
    query: &str,
    variables: &Value,
    operation_name: Option<&str>,
) -> std::result::Result<
    (
        Rc<crate::query::TenantModel>,
        udm_core::graphql::SubscriptionPlan,
    ),
    Vec<GqlError>,
> {
    let lim = limits();
    let t = catalog::current_tenant().map_err(|e| vec![GqlError::from(e)])?;
    let (model, schema, schema_key) = schema_of(&t).map_err(|e| vec![GqlError::from(e)])?;
    let (doc, _) = document(model.scope, &schema, &schema_key, query, &lim)?;
    let functions = functions_schema().map_err(|e| vec![GqlError::from(e)])?;
    let mut new_id = || udm_core::ids::uuid_text(&crate::records::uuid_v7());
    let mut ctx = Context {
        model: &*model,
        limits: &lim,
        functions_schema: &functions,
        new_id: &mut new_id,
    };
    let prepared = prepare(&schema, &doc, operation_name, variables, &mut ctx)?;
    match (prepared.kind, prepared.subscription) {
        (OperationKind::Subscription, Some(plan)) => Ok((model, plan)),
        _ => Err(vec![GqlError::input(
            "udm_graphql_events delivers subscriptions: the operation is a query or a mutation (run it with udm_graphql)",
        )]),
    }
}

/// Runs a statement with a snapshot of its own (READ COMMITTED: it sees everything committed
/// before it, as the event stream, whose snapshot is newer than the calling statement's, did).
fn run_fresh(st: &Statement) -> std::result::Result<Option<Value>, GqlError> {
    let p = plan_of(st).map_err(GqlError::from)?;
    rawspi::first_json(&p.plan, &st.params, false).map_err(GqlError::from)
}

/// The response of one event for one subscription, as the selected user sees it (None: the
/// subscription does not want the event, or its filter does not match the record image).
fn event_response(
    t: &catalog::Tenant,
    model: &crate::query::TenantModel,
    plan: &udm_core::graphql::SubscriptionPlan,
    event: &udm_core::graphql::Event,
) -> Option<Value> {
    if !plan.wants(&event.entity, &event.action) {
        return None;
    }
    let audit = crate::audit::audit_table(t);
    let image = |p: &str| {
        format!(
            "(SELECT {} FROM {audit} WHERE audit_id = {p}::bigint{})",
            crate::audit::record_image_sql("coalesce(new_data, old_data)"),
            crate::audit::ids_sql(t, p, p)
        )
    };
    let out = guarded(|| {
        if let Some(st) = plan.condition(model, &image, Some(event.event_id.to_string()))? {
            // the image is read as udm's owner: the filter names only fields of the member's
            // schema, and the event was found visible to it (`access::event_visible`)
            if crate::access::security::as_owner(|| run_fresh(&st))? != Some(Value::Bool(true)) {
                return Ok(None);
            }
        }
        let record = match plan.record_statement(model, &event.id)? {
            Some(st) => run_fresh(&st)?,
            None => None,
        };
        Ok(Some(plan.payload(event, record)))
    });
    match out {
        Ok(None) => None,
        Ok(Some(data)) => Some(response(Some(data), &[], None)),
        Err(e) => Some(response(
            Some(Value::Null),
            &[e.with_path(&[udm_core::graphql::PathSeg::Key(plan.key.clone())])],
            None,
        )),
    }
}

/// Delivers change events to subscriptions of the selected tenant and user: reads the events
/// after the smallest `after` once (those of entities the member's role reads, and of records
/// it sees where the entity is scoped: `access::event_visible`), and for each subscription each event after its own `after` that it wants, whose
/// record image matches its filter, with `record { … }` read as the caller now. Subscriptions
/// with the same document, variables and operation share the work.
fn deliver(wanted: &[Wanted], limit: i32) -> Result<Value> {
    let t = catalog::current_tenant()?;
    if !(1..=crate::audit::events::MAX_EVENTS).contains(&limit) {
        return Err(UdmError::new(
            udm_core::error::SqlState::ProgramLimitExceeded,
            format!(
                "udm_graphql_events: limit must be from 1 to {}, got {limit}",
                crate::audit::events::MAX_EVENTS
            ),
        ));
    }
    crate::audit::events::primary_only("udm_graphql_events")?;
    // plan each distinct subscription once
    type Planned = std::result::Result<
        (
            Rc<crate::query::TenantModel>,
            udm_core::graphql::SubscriptionPlan,
        ),
        Vec<GqlError>,
    >;
    let mut groups: Vec<(String, Planned, i64)> = Vec::new();
    let mut group_of = Vec::with_capacity(wanted.len());
    for w in wanted {
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            w.query,
            w.variables,
            w.operation_name.as_deref().unwrap_or("")
        );
        let i = match groups.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let planned =
                    plan_subscription(&w.query, &w.variables, w.operation_name.as_deref());
                groups.push((key, planned, i64::MAX));
                groups.len() - 1
            }
        };
        groups[i].2 = groups[i].2.min(w.after);
        group_of.push(i);
    }
    let from = groups
        .iter()
        .filter(|g| g.1.is_ok())
        .map(|g| g.2)
        .min()
        .unwrap_or(i64::MAX);
    let old = groups
        .iter()
        .any(|g| matches!(&g.1, Ok((_, p)) if p.reads_old()));
    // `h`: every event up to it was read (the horizon, or the last event of a full read, kept
    // for this member or not)
    let (rows, h, more) = if from == i64::MAX {
        (Vec::new(), 0, false)
    } else {
        crate::audit::events::read_events_with(
            &t,
            from.max(0),
            limit,
            old,
            crate::audit::events::Readers::Entity,
        )?
    };
    // the image before the change and the changed fields without the fields the subscriber's
    // role may not read; the values of encrypted fields it reads, decrypted (as history gives
    // them)
    let hidden = crate::access::hidden_fields(&t)?;
    let mut entities: std::collections::HashMap<String, Option<Rc<catalog::Entity>>> =
        std::collections::HashMap::new();
    let mut events = Vec::with_capacity(rows.len());
    for (r, image) in rows {
        let entity = r.1;
        let shown = |f: &String| !hidden.contains(&(entity.clone(), f.clone()));
        let changed_fields = r.5.unwrap_or_default().into_iter().flatten();
        let old = match image {
            Some(mut img) => {
                if let Some(o) = img.as_object_mut() {
                    o.retain(|f, _| shown(f));
                    if !entities.contains_key(&entity) {
                        let e = catalog::entity_any(&t, &entity)?;
                        entities.insert(entity.clone(), e);
                    }
                    if let Some(e) = entities.get(&entity).and_then(Option::as_ref) {
                        let id = crate::audit::events::uuid_of(&r.2);
                        crate::crypto::open_json_image(&t, e, id.as_bytes(), o)?;
                    }
                }
                Some(img)
            }
            None => None,
        };
        events.push(udm_core::graphql::Event {
            event_id: r.0,
            id: r.2,
            action: r.3,
            version: r.4.map(i64::from),
            changed_fields: changed_fields.filter(|f| shown(f)).collect(),
            old,
            entity: entity.clone(),
        });
    }
    // each group's responses: (event id, response)
    let mut answers: Vec<Vec<(i64, Rc<Value>)>> = Vec::with_capacity(groups.len());
    for (_, planned, after) in &groups {
        let mut out = Vec::new();
        if let Ok((model, plan)) = planned {
            for e in events.iter().filter(|e| e.event_id > *after) {
                if let Some(r) = event_response(&t, model, plan, e) {
                    out.push((e.event_id, Rc::new(r)));
                }
            }
        }
        answers.push(out);
    }
    // where a subscription continues: after `h`, every event up to it read
    let reached = h;
    let results: Vec<Value> = wanted
        .iter()
        .zip(group_of)
        .map(|(w, g)| match &groups[g].1 {
            Err(errs) => response(None, errs, None),
            Ok(_) => {
                let evs: Vec<Value> = answers[g]
                    .iter()
                    .filter(|(id, _)| *id > w.after)
                    .map(|(id, r)| json!({"event_id": id, "payload": **r}))
                    .collect();
                json!({"events": evs, "cursor": w.after.max(reached)})
            }
        })
        .collect();
    Ok(json!({"results": results, "horizon": h, "more": more}))
}

/// `udm_graphql_events(query, variables, operation_name, after, limit)`: the payloads of a
/// subscription for the events after `after` that the selected user may see:
/// `{"events": [{"event_id", "payload": {"data": …}}], "cursor": <continue after this>,
/// "more": <more events are ready>}`, or `{"errors": […]}` for a document that is not a valid
/// subscription.
#[pg_extern(volatile, parallel_unsafe)]
fn udm_graphql_events(
    query: Option<&str>,
    variables: default!(Option<JsonB>, "NULL"),
    operation_name: default!(Option<&str>, "NULL"),
    after: default!(Option<i64>, 0),
    limit: default!(Option<i32>, 100),
) -> JsonB {
    let query = crate::error::required(query, "query");
    let after = crate::error::required(after, "after");
    let limit = crate::error::required(limit, "limit");
    let variables = match variables.map(|v| v.0) {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return JsonB(response(
                None,
                &[GqlError::input("variables must be a JSON object")],
                None,
            ))
        }
    };
    if after < 0 {
        crate::error::raise(UdmError::invalid(format!(
            "udm_graphql_events: after must be an event id (0 or more), got {after}"
        )));
    }
    let w = Wanted {
        query: query.to_string(),
        variables,
        operation_name: operation_name.map(str::to_string),
        after,
    };
    let mut out = deliver(std::slice::from_ref(&w), limit).or_raise();
    let mut r = out["results"][0].take();
    if r.get("errors").is_none() {
        r["more"] = out["more"].take();
    }
    JsonB(r)
}
