//! The query engine's SQL surface: `udm_query`, `udm_aggregate`, `udm_view`, `udm_explain`,
//! `udm_compile`.
//!
//! Per backend, udm caches the tenant's entity model and, for each spec *shape* (structure
//! without values), the compiled SQL and its prepared plan. A call parses its spec, looks its
//! shape up, binds its values and runs the plan. Any definition change (here or in another
//! session) flushes both caches (see `catalog::generation`).

use crate::catalog::{self, Entity, Tenant};
use crate::error::{raise, OrRaise, Result, UdmError};
use crate::rawspi::{self, Plan};
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;
use udm_core::definition::EntityDef;
use udm_core::query::path::Model;
use udm_core::query::{self as q, Computed, Source, Template};

/// The active entities of a tenant, as the compiler sees them.
pub struct TenantModel {
    schema: String,
    entities: BTreeMap<String, Rc<Entity>>,
    /// (entity, field) the session's role may not read.
    hidden: HashSet<(String, String)>,
    /// Names this model in cache keys: the tenant, and the hidden fields when there are any.
    pub key: String,
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
}

const MAX_TEMPLATES: usize = 1024;

thread_local! {
    static MODELS: RefCell<HashMap<String, Rc<TenantModel>>> = RefCell::new(HashMap::new());
    static TEMPLATES: RefCell<HashMap<String, Rc<Compiled>>> = RefCell::new(HashMap::new());
    static SEEN_GENERATION: Cell<u64> = const { Cell::new(u64::MAX) };
}

fn sync_generation() {
    let g = catalog::generation();
    if SEEN_GENERATION.with(|s| s.replace(g)) != g {
        MODELS.with(|m| m.borrow_mut().clear());
        TEMPLATES.with(|t| t.borrow_mut().clear());
    }
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
    if let Some(m) = MODELS.with(|m| m.borrow().get(&key).cloned()) {
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
    });
    MODELS.with(|x| x.borrow_mut().insert(key, m.clone()));
    Ok(m)
}

/// The compiled template and plan for `key`, compiled and prepared on first use.
pub fn compiled(
    key: &str,
    build: impl FnOnce() -> Result<Template>,
) -> Result<(Rc<Compiled>, bool)> {
    sync_generation();
    if let Some(c) = TEMPLATES.with(|t| t.borrow().get(key).cloned()) {
        return Ok((c, true));
    }
    let template = build()?;
    let plan = if template.plan_per_call {
        rawspi::prepare_query_per_call(&template.sql, template.params.len())?
    } else {
        rawspi::prepare_query(&template.sql, template.params.len())?
    };
    let c = Rc::new(Compiled { template, plan });
    TEMPLATES.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() >= MAX_TEMPLATES {
            t.clear();
        }
        t.insert(key.to_string(), c.clone());
    });
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

fn computed_values(c: &Compiled, spec: &Value) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for comp in &c.template.computed {
        match comp {
            Computed::EstimatedRows(sql) => {
                // the estimate uses the filter parameters only; the computed one is not referenced
                let binds = q::bind(
                    spec,
                    &c.template,
                    &vec!["0".to_string(); c.template.computed.len()],
                )?;
                let plan = rawspi::once(&format!("EXPLAIN (FORMAT JSON) {sql}"), &binds, false)?
                    .map(rawspi::json_value)
                    .unwrap_or(Value::Null);
                let rows = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0);
                out.push((rows.round() as i64).to_string());
            }
        }
    }
    Ok(out)
}

/// Binds a spec's values and runs the compiled plan.
pub fn execute(c: &Compiled, spec: &Value) -> Result<pg_sys::Datum> {
    let computed = computed_values(c, spec)?;
    let binds = q::bind(spec, &c.template, &computed)?;
    rawspi::first_datum(&c.plan, &binds, true)?
        .ok_or_else(|| UdmError::internal("udm: the query returned no row"))
}

fn run(kind: &str, entity: &str, spec: &Value) -> Result<pg_sys::Datum> {
    let (_, m) = target(entity)?;
    let key = format!("{}|{}", m.key, q::shape_key(kind, entity, spec));
    let (c, _) = compiled(&key, || compile(&*m, kind, entity, spec))?;
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
    let (t, m) = target(entity)?;
    let template = compile(&*m, kind, entity, spec)?;
    let fake = Compiled {
        plan: rawspi::prepare_query(&template.sql, template.params.len())?,
        template,
    };
    let computed = computed_values(&fake, spec)?;
    let binds = q::bind(spec, &fake.template, &computed)?;
    let plan = rawspi::once(
        &format!("EXPLAIN (FORMAT JSON) {}", fake.template.sql),
        &binds,
        false,
    )?
    .map(rawspi::json_value)
    .unwrap_or(Value::Null);
    Ok(json!({"tenant": t.slug, "sql": fake.template.sql, "params": binds, "plan": plan}))
}

/// What the compiler makes of a spec, and how long compiling (or finding it cached) takes.
pub fn compile_info(entity: &str, spec: &Value, kind: &str) -> Result<Value> {
    let start = Instant::now();
    let (_, m) = target(entity)?;
    let key = format!("{}|{}", m.key, q::shape_key(kind, entity, spec));
    let (c, cached) = compiled(&key, || compile(&*m, kind, entity, spec))?;
    let computed: Vec<String> = vec!["0".into(); c.template.computed.len()];
    let binds = q::bind(spec, &c.template, &computed)?;
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
            Source::Computed(i) => json!({"from": "computed", "index": i}),
        })
        .collect();
    Ok(
        json!({"sql": c.template.sql, "params": binds, "sources": sources, "cached": cached, "compile_us": us, "shape": key}),
    )
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
