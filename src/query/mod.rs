//! The query engine's SQL surface: `udm_query`, `udm_aggregate`, `udm_view`, `udm_explain`,
//! `udm_compile`.
//!
//! Per backend, udm caches the tenant's entity model and, for each spec *shape* (structure
//! without values), the compiled SQL and its prepared plan. A call parses its spec, looks its
//! shape up, binds its values and runs the plan. A definition change of a tenant (here or in
//! another session) drops that tenant's entries from both caches (see `catalog::generation`).

use crate::cache::{self, Cache, Lru};
use crate::catalog::{self, Entity, Tenant};
use crate::error::{raise, OrRaise, Result, UdmError};
use crate::json::JsonB;
use crate::query::rowjson::{palloc_copy, RowJson};
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use rawspi::Plan;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::Instant;
use udm_core::definition::EntityDef;
use udm_core::error::SqlState;
use udm_core::jsonb::{integer_numeric, write_object, Value as JsonbValue};
use udm_core::query::path::Model;
use udm_core::query::{self as q, Computed, PageCount, RowsOutput, Source, Template};

pub mod fastget;
pub mod rawspi;
pub mod rowjson;

/// The active entities of a tenant, as the compiler sees them.
pub struct TenantModel {
    schema: String,
    pub entities: BTreeMap<String, Rc<Entity>>,
    /// (entity, field) the session's role may not read.
    hidden: HashSet<(String, String)>,
    /// Names this model in cache keys: the tenant, and the hidden fields when there are any.
    pub key: String,
    /// The tenant's scope in udm's caches (`Tenant::scope`).
    pub scope: u32,
}

impl Model for TenantModel {
    fn schema(&self) -> &str {
        &self.schema
    }
    fn entity(&self, slug: &str) -> Option<&EntityDef> {
        self.entities.get(slug).map(|e| &e.def)
    }
    fn entity_names(&self) -> Vec<String> {
        self.entities.keys().cloned().collect()
    }
    fn hidden(&self, entity: &str, field: &str) -> bool {
        !self.hidden.is_empty()
            && self
                .hidden
                .contains(&(entity.to_string(), field.to_string()))
    }
}

pub struct Compiled {
    pub template: Template,
    pub plan: Plan,
    /// A page's exact count (`PageCount::Exact`): its own statement, planned per call.
    pub count_plan: Option<Plan>,
    /// How the result's rows become jsonb, made from the first result (the result's column types
    /// are fixed for a prepared plan).
    rows_json: RefCell<Option<Rc<RowsJson>>>,
}

impl Compiled {
    fn new(template: Template, plan: Plan) -> Result<Compiled> {
        let count_plan = match template.rows.as_ref().and_then(|p| p.count.as_ref()) {
            Some((_, PageCount::Exact(sql))) => {
                Some(rawspi::prepare_query_per_call(sql, template.params.len())?)
            }
            _ => None,
        };
        Ok(Compiled {
            template,
            plan,
            count_plan,
            rows_json: RefCell::new(None),
        })
    }

    /// The SQL of a page's exact count, if it has one.
    fn count_sql(&self) -> Option<&str> {
        match self.template.rows.as_ref()?.count.as_ref()? {
            (_, PageCount::Exact(sql)) => Some(sql),
            _ => None,
        }
    }
}

/// The jsonb builders of a result's rows: their columns (under their keys) and a page's cursor
/// keys that follow them.
struct RowsJson {
    types: Vec<pg_sys::Oid>,
    record: RowJson,
    keys: RowJson,
}

impl RowsJson {
    /// The builders for a result of `desc`, reusing `cached` when its column types match.
    unsafe fn for_desc(
        cached: &RefCell<Option<Rc<RowsJson>>>,
        out: &RowsOutput,
        desc: pg_sys::TupleDesc,
        as_types: &[(usize, pg_sys::Oid)],
    ) -> Result<Rc<RowsJson>> {
        unsafe {
            let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
            let types: Vec<pg_sys::Oid> = attrs.iter().map(|a| a.atttypid).collect();
            if let Some(p) = cached.borrow().as_ref().filter(|p| p.types == types) {
                return Ok(p.clone());
            }
            let n = out.columns.len();
            let keys = out.cursor.as_ref().map_or(0, |c| c.keys);
            if types.len() < n + keys {
                return Err(UdmError::internal(format!(
                    "udm: a statement returned {} columns, {} expected",
                    types.len(),
                    n + keys
                )));
            }
            let record: Vec<(String, usize)> = out.columns.iter().cloned().zip(0..n).collect();
            let key_cols: Vec<(String, usize)> =
                (0..keys).map(|i| (format!("k{i}"), n + i)).collect();
            let p = Rc::new(RowsJson {
                types,
                record: RowJson::new_as(desc, &record, as_types),
                keys: RowJson::new(desc, &key_cols),
            });
            *cached.borrow_mut() = Some(p.clone());
            Ok(p)
        }
    }
}

thread_local! {
    static MODELS: Cache<String, Rc<TenantModel>> = Lru::new("tenant models");
    static TEMPLATES: Cache<String, Rc<Compiled>> = Lru::new("compiled queries");
}

fn sync_generation() {
    let g = catalog::generation();
    cache::sync(&MODELS, g);
    cache::sync(&TEMPLATES, g);
}

/// The tenant's model as the session may read it, cached until a definition, member or role
/// changes.
pub fn model(t: &Tenant) -> Result<Rc<TenantModel>> {
    sync_generation();
    let hidden = crate::access::hidden_fields(t)?;
    let key = if hidden.is_empty() {
        t.slug.clone()
    } else {
        let mut h: Vec<String> = hidden.iter().map(|(e, f)| format!("{e}.{f}")).collect();
        h.sort();
        format!("{}[-{}]", t.slug, h.join(","))
    };
    build_model(t, hidden, key)
}

/// The tenant's model with every field, for definitions (rules over related records).
pub fn definitions(t: &Tenant) -> Result<Rc<TenantModel>> {
    sync_generation();
    build_model(t, HashSet::new(), t.slug.clone())
}

fn build_model(
    t: &Tenant,
    hidden: HashSet<(String, String)>,
    key: String,
) -> Result<Rc<TenantModel>> {
    if let Some(m) = cache::get(&MODELS, &key) {
        return Ok(m);
    }
    let mut entities = BTreeMap::new();
    for e in catalog::active_entities(t)? {
        entities.insert(e.def.slug.clone(), e);
    }
    let m = Rc::new(TenantModel {
        schema: t.schema.clone(),
        entities,
        hidden,
        key: key.clone(),
        scope: t.scope(),
    });
    // PostgreSQL's caches will hold the tenant's tables too (counted against the budget)
    cache::tenant_loaded(m.entities.len());
    let bytes = std::mem::size_of::<TenantModel>()
        + key.len() * 2
        + m.entities.keys().map(|k| k.len() + 64).sum::<usize>()
        + m.hidden
            .iter()
            .map(|(e, f)| e.len() + f.len() + 64)
            .sum::<usize>();
    cache::put_scoped(&MODELS, t.scope(), key, m.clone(), bytes);
    Ok(m)
}

/// The compiled template and plan for `key`, compiled and prepared on first use (an entry of
/// the tenant `scope`, dropped when its definitions change).
pub fn compiled(
    scope: u32,
    key: &str,
    build: impl FnOnce() -> Result<Template>,
) -> Result<(Rc<Compiled>, bool)> {
    sync_generation();
    if let Some(c) = cache::get(&TEMPLATES, key) {
        return Ok((c, true));
    }
    let template = build()?;
    let plan = if template.plan_per_call {
        rawspi::prepare_query_per_call(&template.sql, template.params.len())?
    } else {
        rawspi::prepare_query(&template.sql, template.params.len())?
    };
    let c = Rc::new(Compiled::new(template, plan)?);
    let bytes = c.plan.bytes()
        + c.count_plan.as_ref().map_or(0, |p| p.bytes())
        + c.template.sql.len() * 2
        + 1024;
    cache::put_scoped(&TEMPLATES, scope, key.to_string(), c.clone(), bytes);
    Ok((c, false))
}

/// The tenant the caller uses and one of its active entities, with the model.
pub fn target(entity: &str) -> Result<(Rc<Tenant>, Rc<TenantModel>)> {
    let t = catalog::current_tenant()?;
    let m = model(&t)?;
    if !m.entities.contains_key(entity) {
        // the precise error: dropped, or missing
        catalog::entity(&t, entity)?;
        return Err(catalog::no_such_entity(&t, entity));
    }
    Ok((t, m))
}

/// `EXPLAIN (FORMAT JSON)` of `sql` planned for `binds`.
fn explain_json(sql: &str, binds: &[Option<String>]) -> Result<Value> {
    Ok(
        rawspi::once(&format!("EXPLAIN (FORMAT JSON) {sql}"), binds, false)?
            .map(rawspi::json_value)
            .unwrap_or(Value::Null),
    )
}

/// The values the template computes (estimated row counts, from `EXPLAIN` with the call's
/// parameters).
fn computed_values(c: &Compiled, binds: &[Option<String>]) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for comp in &c.template.computed {
        match comp {
            Computed::EstimatedRows(sql) => {
                let rows = q::estimated_rows(&explain_json(sql, binds)?);
                out.push(rows.round() as i64);
            }
        }
    }
    Ok(out)
}

/// Binds a spec's values and runs the compiled plan.
pub fn execute(c: &Compiled, spec: &Value) -> Result<pg_sys::Datum> {
    let binds = q::bind(spec, &c.template)?;
    if let Some(out) = &c.template.rows {
        return execute_rows(c, out, &binds);
    }
    rawspi::first_datum(&c.plan, &binds, true)?
        .ok_or_else(|| UdmError::internal("udm: the query returned no row"))
}

/// Runs a statement that returns rows and builds `{"rows": [...]}` from them, with a page's
/// `next_cursor` and `count` (see `RowsOutput`).
fn execute_rows(c: &Compiled, out: &RowsOutput, binds: &[Option<String>]) -> Result<pg_sys::Datum> {
    let count = match (&out.count, &c.count_plan) {
        (None, _) => None,
        (Some((key, PageCount::Computed(i))), _) => {
            let computed = computed_values(c, binds)?;
            Some((key, computed.get(*i).copied().unwrap_or(0)))
        }
        (Some((key, PageCount::Exact(_))), Some(plan)) => {
            let n = rawspi::first_datum(plan, binds, true)?.map_or(0, rawspi::int8);
            Some((key, n))
        }
        (Some((_, PageCount::Exact(_))), None) => {
            return Err(UdmError::internal("udm: a page's count was not prepared"))
        }
    };
    // the encrypted fields selected as stored: resolved before the rows are read (that may
    // read the tenant's keys through SPI); an error (no master key, keys destroyed) is raised at
    // the first value to open, as `udm.decrypt_field` raised it
    let sealed: Vec<(
        &q::SealedColumn,
        Result<crate::crypto::CallSite>,
        pg_sys::Oid,
    )> = out
        .sealed
        .iter()
        .map(|s| {
            let site = crate::crypto::call_site(&s.sealed.schema, &s.sealed.entity, s.sealed.field);
            Ok((s, site, read_type(&s.sealed)?))
        })
        .collect::<Result<_>>()?;
    let as_types: Vec<(usize, pg_sys::Oid)> =
        sealed.iter().map(|(s, _, t)| (s.column, *t)).collect();
    let bytes = rawspi::rows(&c.plan, binds, |desc, rows| unsafe {
        let json = RowsJson::for_desc(&c.rows_json, out, desc, &as_types)?;
        let natts = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![false; natts];
        let mut records = Vec::with_capacity(rows.len());
        // where each value is opened (wiped when the page is built)
        let mut scratch = zeroize::Zeroizing::new(Vec::new());
        for &row in rows {
            pg_sys::heap_deform_tuple(row, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            for (s, site, typ) in &sealed {
                open_column(s, site, *typ, &mut values, &mut nulls, &mut scratch)?;
            }
            records.push(json.record.build(&values, &nulls));
        }
        // after a full page, the cursor of its last row (still in `values`)
        let next_cursor = match &out.cursor {
            Some(cur) if rows.len() as i64 == cur.limit => Some(json.keys.with_values(
                &values,
                &nulls,
                |keys| cursor_text(keys, &cur.sig),
            )?),
            _ => None,
        };
        let mut ints = [0u8; 12];
        let mut pairs: Vec<(&[u8], JsonbValue)> = vec![(
            b"rows",
            JsonbValue::Array(
                records
                    .iter()
                    .map(|d| JsonbValue::Jsonb(crate::query::rowjson::varlena(*d)))
                    .collect(),
            ),
        )];
        if out.cursor.is_some() {
            let v = next_cursor
                .as_deref()
                .map_or(JsonbValue::Null, |s| JsonbValue::String(s.as_bytes()));
            pairs.push((b"next_cursor", v));
        }
        if let Some((key, n)) = count {
            let len = integer_numeric(n, &mut ints);
            pairs.push((key.as_bytes(), JsonbValue::Numeric(&ints[..len])));
        }
        let mut buf = Vec::new();
        write_object(&mut buf, &pairs).map_err(|e| {
            UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!("udm: cannot build the result: {e}"),
            )
        })?;
        Ok(buf)
    })?;
    Ok(palloc_copy(&bytes))
}

/// The type an encrypted field's plaintext is read back as (text, or its `sealed_form`).
fn read_type(s: &udm_core::query::path::Sealed) -> Result<pg_sys::Oid> {
    match s.form.map(|(_, read_as)| read_as) {
        None => Ok(pg_sys::TEXTOID),
        Some("jsonb") => Ok(pg_sys::JSONBOID),
        Some("date") => Ok(pg_sys::DATEOID),
        Some("timestamp with time zone") => Ok(pg_sys::TIMESTAMPTZOID),
        Some("time without time zone") => Ok(pg_sys::TIMEOID),
        Some("interval") => Ok(pg_sys::INTERVALOID),
        Some(other) => Err(UdmError::internal(format!(
            "udm: an encrypted field read as {other}"
        ))),
    }
}

/// Replaces the stored (sealed) value of an encrypted field in a deformed row by its plaintext,
/// as a datum of the field's type; NULL when the session may not read the field.
///
/// # Safety
/// `values`/`nulls` are a deformed row of the result `s` indexes.
unsafe fn open_column(
    s: &q::SealedColumn,
    site: &Result<crate::crypto::CallSite>,
    typ: pg_sys::Oid,
    values: &mut [pg_sys::Datum],
    nulls: &mut [bool],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    unsafe {
        let i = s.column;
        if nulls[i] {
            return Ok(());
        }
        let site = site.as_ref().map_err(Clone::clone)?;
        if !site.allowed() {
            nulls[i] = true;
            return Ok(());
        }
        if nulls[s.id] {
            return Err(UdmError::internal(
                "udm: an encrypted value without its record id",
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(std::slice::from_raw_parts(
            values[s.id].cast_mut_ptr::<u8>(),
            16,
        ));
        // a value that is not UTF-8 is no sealed value: `open_stored` says so, naming the field
        let bytes = crate::query::rowjson::varlena(values[i]);
        let plain = site.open_stored(&id, bytes, scratch)?;
        values[i] = match typ {
            pg_sys::TEXTOID => crate::triggers::text_datum(plain),
            _ => {
                let text = std::ffi::CString::new(plain).map_err(|_| {
                    UdmError::new(
                        SqlState::DataCorrupted,
                        format!("{}: the decrypted value holds a NUL", site.what()),
                    )
                })?;
                let mut input = pg_sys::InvalidOid;
                let mut ioparam = pg_sys::InvalidOid;
                pg_sys::getTypeInputInfo(typ, &mut input, &mut ioparam);
                pg_sys::OidInputFunctionCall(input, text.as_ptr().cast_mut(), ioparam, -1)
            }
        };
        Ok(())
    }
}

/// A page's `next_cursor`: base64 (without line breaks) of the jsonb text of
/// `{"k": [keys], "s": signature}`, as `decode_cursor` reads it.
fn cursor_text(keys: Vec<JsonbValue<'_>>, sig: &str) -> Result<String> {
    let mut buf = Vec::new();
    write_object(
        &mut buf,
        &[
            (b"k", JsonbValue::Array(keys)),
            (b"s", JsonbValue::String(sig.as_bytes())),
        ],
    )
    .map_err(|e| UdmError::internal(format!("udm: cannot build a cursor: {e}")))?;
    let text = unsafe {
        let s = pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(palloc_copy(&buf))])
            .ok_or_else(|| UdmError::internal("udm: jsonb_out returned NULL"))?;
        std::ffi::CStr::from_ptr(s.cast_mut_ptr())
            .to_bytes()
            .to_vec()
    };
    Ok(q::b64_encode(&text))
}

/// The name a spec of `kind` has in errors.
fn spec_name(kind: &str) -> String {
    match kind {
        "query" | "aggregate" => format!("udm_{kind} spec"),
        view => format!("udm_view {view} spec"),
    }
}

fn run(kind: &str, entity: &str, spec: &Value) -> Result<pg_sys::Datum> {
    crate::limits::check_spec(spec, &spec_name(kind))?;
    let (_, m) = target(entity)?;
    let key = format!("{}|{}", m.key, q::shape_key(kind, entity, spec));
    let (c, _) = compiled(m.scope, &key, || compile(&*m, kind, entity, spec))?;
    let d = execute(&c, spec)?;
    if kind == "tree" {
        let nested = udm_core::query::views::nest_tree(&rawspi::jsonb_value(d));
        return Ok(JsonB(nested).into_datum().expect("jsonb"));
    }
    Ok(d)
}

fn compile(m: &dyn Model, kind: &str, entity: &str, spec: &Value) -> Result<Template> {
    match kind {
        "query" => q::select::compile(m, entity, spec),
        "aggregate" => q::aggregate::compile(m, entity, spec),
        view => q::views::compile(m, entity, view, spec),
    }
}

pub fn explain(entity: &str, spec: &Value, kind: &str) -> Result<Value> {
    crate::limits::check_spec(spec, &spec_name(kind))?;
    let (t, m) = target(entity)?;
    let template = compile(&*m, kind, entity, spec)?;
    let plan = rawspi::prepare_query(&template.sql, template.params.len())?;
    let fake = Compiled::new(template, plan)?;
    let binds = q::bind(spec, &fake.template)?;
    let plan = explain_json(&fake.template.sql, &binds)?;
    let mut out =
        json!({"tenant": t.slug, "sql": fake.template.sql, "params": binds, "plan": plan});
    if let Some(sql) = fake.count_sql() {
        out["count_sql"] = json!(sql);
        out["count_plan"] = explain_json(sql, &binds)?;
    }
    Ok(out)
}

/// What the compiler makes of a spec, and how long compiling (or finding it cached) takes.
pub fn compile_info(entity: &str, spec: &Value, kind: &str) -> Result<Value> {
    let start = Instant::now();
    crate::limits::check_spec(spec, &spec_name(kind))?;
    let (_, m) = target(entity)?;
    let key = format!("{}|{}", m.key, q::shape_key(kind, entity, spec));
    let (c, cached) = compiled(m.scope, &key, || compile(&*m, kind, entity, spec))?;
    let binds = q::bind(spec, &c.template)?;
    let us = start.elapsed().as_secs_f64() * 1e6;
    let sources: Vec<Value> = c
        .template
        .params
        .iter()
        .map(|p| match &p.source {
            Source::Spec(ptr) => json!({"from": ptr.iter().map(|s| match s {
                q::Ptr::Key(k) => json!(k),
                q::Ptr::Index(i) => json!(i),
            }).collect::<Vec<_>>(), "type": p.ptype.sql()}),
            Source::Cursor(i) => json!({"from": "cursor", "key": i, "type": p.ptype.sql()}),
        })
        .collect();
    let mut out = json!({"sql": c.template.sql, "params": binds, "sources": sources, "cached": cached, "compile_us": us, "shape": key});
    if let Some(sql) = c.count_sql() {
        out["count_sql"] = json!(sql);
    }
    Ok(out)
}

// ------------------------------------------------------------------ SQL surface

unsafe fn arg_text(fcinfo: pg_sys::FunctionCallInfo, n: usize, name: &str) -> String {
    unsafe {
        pg_getarg::<String>(fcinfo, n)
            .unwrap_or_else(|| raise(UdmError::invalid(format!("{name} must not be NULL"))))
    }
}

unsafe fn arg_json(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> Value {
    unsafe {
        pg_getarg::<JsonB>(fcinfo, n)
            .map(|j| j.0)
            .unwrap_or(Value::Null)
    }
}

finfo_v1!(pg_finfo_udm_query);
finfo_v1!(pg_finfo_udm_aggregate);
finfo_v1!(pg_finfo_udm_view);

/// `udm_query(entity text, spec jsonb) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_query(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let spec = arg_json(fcinfo, 1);
        run("query", &entity, &spec).or_raise()
    }
}

/// `udm_aggregate(entity text, spec jsonb) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_aggregate(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let spec = arg_json(fcinfo, 1);
        run("aggregate", &entity, &spec).or_raise()
    }
}

/// `udm_view(entity text, kind text, spec jsonb) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_view(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let kind = arg_text(fcinfo, 1, "kind");
        if !q::views::KINDS.contains(&kind.as_str()) {
            raise(
                UdmError::invalid(format!(
                    "view kind \"{}\" is not known",
                    udm_core::ident::printable(&kind)
                ))
                .hint(format!("views are {}", q::known(q::views::KINDS))),
            );
        }
        let spec = arg_json(fcinfo, 2);
        run(&kind, &entity, &spec).or_raise()
    }
}

fn check_kind(kind: &str) -> Result<()> {
    if kind == "query" || kind == "aggregate" || q::views::KINDS.contains(&kind) {
        return Ok(());
    }
    Err(UdmError::invalid(format!(
        "kind \"{}\" is not known",
        udm_core::ident::printable(kind)
    ))
    .hint(format!(
        "kinds are \"query\", \"aggregate\" and the views {}",
        q::known(q::views::KINDS)
    )))
}

/// The SQL udm generates for a spec, its parameters, and PostgreSQL's plan for it.
#[pg_extern(volatile)]
fn udm_explain(entity: &str, spec: JsonB, kind: default!(&str, "'query'")) -> JsonB {
    check_kind(kind).or_raise();
    JsonB(explain(entity, &spec.0, kind).or_raise())
}

/// What the compiler makes of a spec (SQL, parameters, where each comes from), whether it was
/// cached, and how long it took: a diagnostic for the query engine.
#[pg_extern(volatile)]
fn udm_compile(entity: &str, spec: JsonB, kind: default!(&str, "'query'")) -> JsonB {
    check_kind(kind).or_raise();
    JsonB(compile_info(entity, &spec.0, kind).or_raise())
}
