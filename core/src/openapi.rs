//! The OpenAPI 3.1 document of a tenant's REST routes (`udm_openapi()`, served by udm-server at
//! `GET /api/openapi.json`), built from the same [`Model`] the GraphQL schema is built from: the
//! entities as the reader sees them, so fields the reader's role may not read are absent, and
//! passwords appear only in request bodies.
//!
//! # What it describes
//!
//! The routes of the REST contract, relative to the server URL `/api`: per entity `e` (type name
//! `E`, as GraphQL names it) `/records/e` (list, create / batch / upsert), `/records/e/{id}`
//! (get, replace, update, delete), `/records/e/query/{kind}` (views), `/records/e/stats/agg`
//! (aggregates), `/records/e/{id}/history`, `/records/e/{id}/at`, `/records/e/{id}/rollback` and
//! `/records/e/{id}/lock`; the definition routes under `/schemas`; `/audit/report`,
//! `/audit/verify`; and `/openapi.json` itself.
//!
//! Components: per entity `E` (a record as udm returns it: system columns and fields, each typed
//! as `to_jsonb` writes it), `EInput` (a record to write: required fields required, no system
//! columns), `EPatch` (every field optional) and `EPage` (a page of the list route); `Problem`
//! (RFC 9457 with udm's `sqlstate`, `entity`, `field`, `rule`, `hint`) and the shapes of the other
//! routes. An entity whose names would collide with another's (`product_input` next to
//! `product`) or with a fixed component takes `Entity_<slug>` instead.
//!
//! # Names
//!
//! operationIds are a verb and the entity's type name (`listProduct`, `getProduct`,
//! `acquireLockProduct`): no verb is a prefix of another and type names are a bijection of
//! slugs, so they are unique; the other routes' ids start with words no verb starts with
//! (`schemaList`, `fieldAdd`, `auditReport`, `openapiDocument`).
//!
//! `info.version` is a hash of the rest of the document: it changes exactly when what the reader
//! sees changes (a definition, or the reader's field permissions).

use crate::definition::{EntityDef, FieldDef};
use crate::graphql::names::pascal;
use crate::ident::SYSTEM_COLUMNS;
use crate::query::path::Model;
use crate::types::FieldType;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The OpenAPI version of the document.
pub const OPENAPI_VERSION: &str = "3.1.0";

/// Query parameter names of the list grammar; a field with one of these names is filtered with
/// `filter.<name>`.
pub const RESERVED_PARAMS: &[&str] = &["select", "sort", "limit", "cursor", "count", "on_conflict"];

/// Kinds of `POST /records/{entity}/query/{kind}`.
pub const VIEW_KINDS: &[&str] = &["table", "kanban", "tree", "gantt", "dropdown", "breadcrumb"];

/// Kinds of `GET /audit/report`.
pub const AUDIT_KINDS: &[&str] = &["summary", "changes", "user_activity", "record_history"];

/// Components udm defines besides the per-entity ones (taken first).
const FIXED_SCHEMAS: &[&str] = &[
    "Problem",
    "RecordRef",
    "FileValue",
    "BatchResult",
    "ViewSpec",
    "ViewResult",
    "AggregateSpec",
    "AggregateResult",
    "HistoryEntry",
    "RollbackRequest",
    "LockStatus",
    "EntitySummary",
    "EntityDefinition",
    "NewEntity",
    "FieldDefinition",
    "FieldChanges",
    "AuditReport",
    "AuditVerification",
    "OpenApiDocument",
];

/// The names of an entity's components.
#[derive(Debug, Clone)]
struct Names {
    /// The entity's type name (operationIds).
    op: String,
    /// The base of its component names.
    base: String,
}

impl Names {
    fn read(&self) -> String {
        self.base.clone()
    }
    fn input(&self) -> String {
        format!("{}Input", self.base)
    }
    fn patch(&self) -> String {
        format!("{}Patch", self.base)
    }
    fn page(&self) -> String {
        format!("{}Page", self.base)
    }
    fn all(&self) -> [String; 4] {
        [self.read(), self.input(), self.patch(), self.page()]
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn param_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

fn response_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

/// A JSON body of `schema`.
fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

/// Allows `null` besides what `schema` allows.
fn nullable(mut schema: Value) -> Value {
    let Some(obj) = schema.as_object_mut() else {
        return schema;
    };
    if let Some(e) = obj.get_mut("enum").and_then(Value::as_array_mut) {
        if !e.contains(&Value::Null) {
            e.push(Value::Null);
        }
    }
    match obj.get("type").cloned() {
        Some(Value::String(t)) => {
            obj.insert("type".into(), json!([t, "null"]));
            schema
        }
        Some(Value::Array(mut ts)) => {
            if !ts.contains(&json!("null")) {
                ts.push(json!("null"));
            }
            obj.insert("type".into(), Value::Array(ts));
            schema
        }
        // no constraint on the value's type (json): null is already allowed
        _ if !["$ref", "allOf", "anyOf", "oneOf", "enum", "const"]
            .iter()
            .any(|k| obj.contains_key(*k)) =>
        {
            schema
        }
        _ => {
            // the notes and udm's extensions stay on the outside, where readers look
            let mut outer = Map::new();
            let keys: Vec<String> = obj
                .keys()
                .filter(|k| *k == "description" || k.starts_with("x-udm-"))
                .cloned()
                .collect();
            for k in keys {
                if let Some(v) = obj.remove(&k) {
                    outer.insert(k, v);
                }
            }
            outer.insert("anyOf".into(), json!([schema, { "type": "null" }]));
            Value::Object(outer)
        }
    }
}

/// Whether a PostgreSQL regular expression means the same as an ECMA-262 one (JSON Schema's
/// `pattern`), as far as a conservative look can tell: no POSIX classes, no ARE-only escapes or
/// embedded options. Others are given as `x-udm-pattern` only.
fn portable_pattern(p: &str) -> bool {
    !(p.contains("[[:")
        || p.contains("[[.")
        || p.contains("[[=")
        || p.contains("(?")
        || p.contains("***")
        || ["\\m", "\\M", "\\y", "\\Y", "\\A", "\\Z", "\\<", "\\>"]
            .iter()
            .any(|e| p.contains(e)))
}

/// Whether a field is read back (`udm_get`, `udm_query`) and so part of the read shape.
fn readable(f: &FieldDef) -> bool {
    f.ftype != FieldType::Password && f.has_column()
}

/// Whether a field is written by callers (the input shapes).
fn writable(f: &FieldDef) -> bool {
    f.ftype != FieldType::AutoNumber
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

/// The JSON Schema of a value of a scalar type, as udm returns it (read) or takes it (write).
fn scalar_schema(t: &FieldType) -> Value {
    match t {
        FieldType::Text | FieldType::LongText | FieldType::Phone | FieldType::Select => {
            json!({"type": "string"})
        }
        FieldType::Email => json!({"type": "string", "format": "email"}),
        FieldType::Url => json!({"type": "string", "format": "uri"}),
        FieldType::Color => json!({"type": "string", "pattern": crate::checks::COLOR_PATTERN}),
        FieldType::Integer => json!({"type": "integer", "format": "int32",
            "minimum": i32::MIN, "maximum": i32::MAX}),
        FieldType::BigInt | FieldType::AutoNumber => json!({"type": "integer", "format": "int64"}),
        FieldType::Rating => json!({"type": "integer", "minimum": 0}),
        FieldType::Decimal | FieldType::Currency | FieldType::Percent => json!({
            "type": "number",
            "description": "exact decimal: a JSON number, read and written with every digit (do not round it through a double)"
        }),
        FieldType::Float => json!({"type": "number", "format": "double"}),
        FieldType::Boolean => json!({"type": "boolean"}),
        FieldType::Date => json!({"type": "string", "format": "date"}),
        FieldType::DateTime => json!({"type": "string", "format": "date-time"}),
        FieldType::Time => json!({
            "type": "string",
            "pattern": "^[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,6})?)?$",
            "description": "time of day without a time zone, HH:MM[:SS[.ffffff]]"
        }),
        FieldType::Duration => json!({
            "type": "string",
            "description": "a length of time: PostgreSQL interval text as udm returns it (\"1 day 02:00:00\"); ISO 8601 (\"P1DT2H\") is accepted too"
        }),
        FieldType::Uuid | FieldType::User | FieldType::Relation => {
            json!({"type": "string", "format": "uuid"})
        }
        FieldType::Json => json!({"description": "any JSON value"}),
        FieldType::File => schema_ref("FileValue"),
        FieldType::Reference => schema_ref("RecordRef"),
        FieldType::Password => json!({"type": "string", "writeOnly": true}),
        FieldType::MultiSelect | FieldType::Tags => {
            json!({"type": "array", "items": {"type": "string"}})
        }
        FieldType::Array(item) => json!({"type": "array", "items": scalar_schema(item)}),
    }
}

fn set(s: &mut Value, k: &str, v: Value) {
    if let Some(o) = s.as_object_mut() {
        o.insert(k.into(), v);
    }
}

/// The schema of one field: its type, validation rules, enum values, relation and description.
fn field_schema(f: &FieldDef, mode: Mode, nullable_ok: bool) -> Value {
    let t = &f.ftype;
    let mut s = scalar_schema(t);
    let mut notes: Vec<String> = Vec::new();
    if let Some(l) = &f.label {
        notes.push(l.clone());
    }
    if let Some(d) = &f.description {
        notes.push(d.clone());
    }
    if let Some(d) = s.get("description").and_then(Value::as_str) {
        notes.push(d.to_string());
    }
    // a $ref with siblings is allowed in 3.1, but keep refs bare and put the notes beside
    if s.get("$ref").is_some() {
        s = json!({ "allOf": [s] });
    }
    match t {
        FieldType::Select => set(&mut s, "enum", json!(f.values)),
        FieldType::MultiSelect => {
            set(&mut s, "items", json!({"type": "string", "enum": f.values}));
            set(&mut s, "uniqueItems", json!(true));
        }
        FieldType::Tags => {
            set(&mut s, "items", json!({"type": "string", "minLength": 1}));
            set(&mut s, "uniqueItems", json!(true));
        }
        FieldType::Rating => set(&mut s, "maximum", json!(f.rating_max())),
        FieldType::Phone => set(&mut s, "pattern", json!(crate::checks::PHONE_PATTERN)),
        FieldType::Relation if f.many => {
            s = json!({"type": "array", "items": {"type": "string", "format": "uuid"}, "uniqueItems": true});
            let target = f.target.clone().unwrap_or_default();
            set(
                &mut s,
                "x-udm-relation",
                json!({"entity": target, "many": true}),
            );
            notes.push(format!(
                "many-to-many relation to {target}: the ids of the linked {target} records (written as a list; read through paths such as {}.<field>)",
                f.name
            ));
        }
        FieldType::Relation => {
            let target = f.target.clone().unwrap_or_default();
            set(
                &mut s,
                "x-udm-relation",
                json!({"entity": target, "on_delete": f.on_delete().name()}),
            );
            notes.push(format!(
                "the id of a {target} record (many-to-one relation; on delete of the {target}: {}); dot paths follow it: {}.<field of {target}>",
                f.on_delete().name(),
                f.name
            ));
        }
        FieldType::Reference => {
            set(&mut s, "x-udm-reference", json!({"entities": f.targets}));
            notes.push(format!(
                "a reference to a record of one of: {}",
                f.targets.join(", ")
            ));
        }
        FieldType::User => notes.push(
            "the id of one of udm's application users (udm_create_user), shared by all tenants"
                .into(),
        ),
        FieldType::AutoNumber => notes.push("assigned by udm on insert, unique".into()),
        FieldType::Password => {
            notes.push("write-only: stored as a bcrypt hash, never returned".into())
        }
        FieldType::File => {
            if let Some(n) = f.max_size {
                set(&mut s, "x-udm-max-size", json!(n));
                notes.push(format!("size at most {n} bytes"));
            }
            if !f.accept.is_empty() {
                set(&mut s, "x-udm-accept", json!(f.accept));
                notes.push(format!("mime types: {}", f.accept.join(", ")));
            }
        }
        _ => {}
    }
    if f.encrypted {
        // the value is typed as the field's type: udm reads it back as that type
        set(&mut s, "x-udm-encrypted", json!(true));
        notes.push(
            if f.blind_indexed() {
                "encrypted at rest: filtered by equality only (eq, neq, in, is), never sorted"
            } else {
                "encrypted at rest: filtered by is.null / is.notnull only, never sorted"
            }
            .into(),
        );
    }
    // text rules
    if (t.is_text_like() && !matches!(t, FieldType::Select | FieldType::Color))
        || *t == FieldType::Password
    {
        if let Some(n) = f.min_length {
            set(&mut s, "minLength", json!(n));
        }
        if let Some(n) = f.max_length {
            set(&mut s, "maxLength", json!(n));
        }
        if let Some(p) = &f.pattern {
            set(&mut s, "x-udm-pattern", json!(p));
            if portable_pattern(p) && *t != FieldType::Phone {
                set(&mut s, "pattern", json!(p));
            } else {
                notes.push(format!("matches the PostgreSQL regular expression {p}"));
            }
        }
    }
    // number and temporal bounds
    if !matches!(t, FieldType::Rating) {
        for (k, v, word) in [
            ("minimum", &f.min, "not before"),
            ("maximum", &f.max, "not after"),
        ] {
            let Some(v) = v else { continue };
            if t.is_numeric() && v.is_number() {
                set(&mut s, k, v.clone());
            } else if !v.is_null() {
                let x = if k == "minimum" {
                    "x-udm-minimum"
                } else {
                    "x-udm-maximum"
                };
                set(&mut s, x, v.clone());
                let shown = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                notes.push(format!("{word} {shown}"));
            }
        }
    }
    // list rules
    if matches!(
        t,
        FieldType::MultiSelect | FieldType::Tags | FieldType::Array(_)
    ) {
        if let Some(n) = f.min_items {
            set(&mut s, "minItems", json!(n));
        }
        if let Some(n) = f.max_items {
            set(&mut s, "maxItems", json!(n));
        }
        if f.unique_items {
            set(&mut s, "uniqueItems", json!(true));
        }
    }
    if f.unique {
        notes.push("unique".into());
    }
    if let Some(c) = &f.currency_code {
        set(&mut s, "x-udm-currency", json!(c));
        notes.push(format!("amount in {c}"));
    }
    if let Some(p) = f.precision {
        set(&mut s, "x-udm-precision", json!(p));
    }
    if let Some(sc) = f.scale {
        set(&mut s, "x-udm-scale", json!(sc));
    }
    if mode == Mode::Write {
        if let Some(d) = &f.default {
            let special = t.family() == crate::types::Family::Temporal
                && d.as_str()
                    .is_some_and(|x| matches!(x, "now" | "today" | "current_date"));
            if special {
                notes.push(format!(
                    "defaults to the time of the insert ({})",
                    d.as_str().unwrap_or_default()
                ));
            } else {
                set(&mut s, "default", d.clone());
            }
        }
    }
    if mode == Mode::Read && *t == FieldType::AutoNumber {
        set(&mut s, "readOnly", json!(true));
    }
    set(&mut s, "x-udm-type", json!(t.name()));
    if let Some(o) = s.as_object_mut() {
        o.remove("description");
    }
    notes.dedup();
    let mut desc = notes.join("; ");
    if desc.is_empty() {
        desc = t.info().description.to_string();
    }
    set(&mut s, "description", json!(desc));
    if nullable_ok {
        s = nullable(s);
    }
    s
}

/// `(name, schema, required)` of the system columns in the read shape.
fn system_properties() -> Vec<(&'static str, Value)> {
    vec![
        (
            "id",
            json!({"type": "string", "format": "uuid", "readOnly": true,
            "description": "the record's id (UUID version 7: time-ordered)"}),
        ),
        (
            "_version",
            json!({"type": "integer", "minimum": 1, "readOnly": true,
            "description": "counts the record's writes; the ETag and If-Match value"}),
        ),
        (
            "created_at",
            json!({"type": "string", "format": "date-time", "readOnly": true}),
        ),
        (
            "updated_at",
            json!({"type": "string", "format": "date-time", "readOnly": true}),
        ),
        (
            "created_by",
            json!({"type": ["string", "null"], "readOnly": true,
            "description": "the application user (udm.user_id) who created the record"}),
        ),
        (
            "updated_by",
            json!({"type": ["string", "null"], "readOnly": true,
            "description": "the application user who last changed the record"}),
        ),
    ]
}

struct Build<'m> {
    model: &'m dyn Model,
    tenant: String,
    entities: Vec<&'m EntityDef>,
    names: BTreeMap<String, Names>,
    schemas: Map<String, Value>,
    paths: Map<String, Value>,
}

/// The OpenAPI 3.1 document of `tenant` as `model` shows it (the reader's view).
pub fn document(model: &dyn Model, tenant: &str) -> Value {
    let mut slugs = model.entity_names();
    slugs.sort();
    let entities: Vec<&EntityDef> = slugs.iter().filter_map(|s| model.entity(s)).collect();
    let mut taken: BTreeSet<String> = FIXED_SCHEMAS.iter().map(|s| s.to_string()).collect();
    let mut names = BTreeMap::new();
    for e in &entities {
        let op = pascal(&e.slug);
        let mut n = Names {
            op: op.clone(),
            base: op,
        };
        if n.all().iter().any(|x| taken.contains(x)) {
            n.base = format!("Entity_{}", e.slug);
        }
        taken.extend(n.all());
        names.insert(e.slug.clone(), n);
    }
    let mut b = Build {
        model,
        tenant: tenant.to_string(),
        entities,
        names,
        schemas: Map::new(),
        paths: Map::new(),
    };
    b.fixed_schemas();
    for e in b.entities.clone() {
        b.entity_schemas(e);
        b.entity_paths(e);
    }
    b.schema_paths();
    b.audit_paths();
    b.openapi_path();
    let Build {
        schemas,
        paths,
        entities,
        ..
    } = b;
    let mut tags = vec![
        json!({"name": "schemas", "description": "entity definitions"}),
        json!({"name": "audit", "description": "the tenant's audit log"}),
        json!({"name": "openapi", "description": "this document"}),
    ];
    for e in &entities {
        let mut t = json!({"name": e.slug});
        if let Some(d) = e.description.as_ref().or(e.label.as_ref()) {
            set(&mut t, "description", json!(d));
        }
        tags.push(t);
    }
    let mut doc = json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": format!("udm tenant {tenant}"),
            "version": "",
            "description": format!(
                "The REST routes of udm tenant {tenant} as the caller sees it: fields the caller's role may not read are absent. Every request runs as the caller (row-level security, field permissions, rules, write locks and audit hold as for SQL). Errors are RFC 9457 problem details. info.version changes whenever a definition (or the caller's view of it) changes."
            ),
        },
        "servers": [{"url": "/api"}],
        "security": [{"bearer": []}],
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a token naming the tenant and the user (as for udm-server's GraphQL endpoint); 401 without a valid one, 403 when the user is not a member"
                }
            },
            "schemas": schemas,
            "parameters": common_parameters(),
            "responses": common_responses(),
            "headers": common_headers(),
        }
    });
    let hash = Sha256::digest(doc.to_string().as_bytes());
    let hex = crate::ids::hex(&hash[..8]);
    doc["info"]["version"] = json!(hex);
    doc
}

fn common_parameters() -> Value {
    json!({
        "id": {"name": "id", "in": "path", "required": true,
               "description": "the record's id", "schema": {"type": "string", "format": "uuid"}},
        "select": {"name": "select", "in": "query", "required": false, "style": "form", "explode": false,
            "description": "the columns to return, comma separated: fields, system columns and dot paths through relations (category_id.name) and into JSON (metadata.brand). The records then have only these keys; without it they have every column the caller may read.",
            "schema": {"type": "string"}, "example": "id,name"},
        "sort": {"name": "sort", "in": "query", "required": false,
            "description": "sort keys, comma separated; a leading - sorts descending (-price,name)",
            "schema": {"type": "string"}},
        "limit": {"name": "limit", "in": "query", "required": false,
            "description": "page size",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
        "cursor": {"name": "cursor", "in": "query", "required": false,
            "description": "the next_cursor of the previous page (opaque), with the same filters and sort",
            "schema": {"type": "string"}},
        "count": {"name": "count", "in": "query", "required": false,
            "description": "also count the records matching the filters: exactly, or PostgreSQL's estimate",
            "schema": {"type": "string", "enum": ["exact", "estimated"]}},
        "on_conflict": {"name": "on_conflict", "in": "query", "required": false,
            "description": "upsert: the fields of a unique key, comma separated; rows whose key exists are updated (udm_upsert_many), the answer is 200 {inserted, updated}",
            "schema": {"type": "string"}},
        "if_match": {"name": "If-Match", "in": "header", "required": false,
            "description": "the ETag (\"<_version>\") the change was based on; a stale one answers 412",
            "schema": {"type": "string"}},
        "time": {"name": "time", "in": "query", "required": true,
            "description": "the point in time (RFC 3339)",
            "schema": {"type": "string", "format": "date-time"}},
        "entity": {"name": "entity", "in": "path", "required": true,
            "description": "an entity slug",
            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 48}},
        "field": {"name": "field", "in": "path", "required": true,
            "description": "a field name",
            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 48}},
        "kind": {"name": "kind", "in": "path", "required": true,
            "description": "the view: table (a page, as the list route), kanban, tree, gantt, dropdown, breadcrumb",
            "schema": {"type": "string", "enum": VIEW_KINDS}},
    })
}

/// (component, status, description) of the error responses.
const ERRORS: &[(&str, &str, &str)] = &[
    ("BadRequest", "400", "invalid input: a value of the wrong type, an unknown path or option, a limit passed (SQLSTATE 22xxx, 42601, 42703, 54000)"),
    ("Unauthorized", "401", "no valid bearer token"),
    ("Forbidden", "403", "the caller may not do this (42501)"),
    ("NotFound", "404", "no such entity, field or record (42P01, 42704, 02000, P0002)"),
    ("Conflict", "409", "a unique value taken, a record still referenced, a serialization failure (23505, 23503, 40001, 55000)"),
    ("PreconditionFailed", "412", "If-Match names a version that is no longer the record's"),
    ("UnprocessableContent", "422", "a validation rule refused the record (23514): the problem names the entity, field or rule"),
    ("Locked", "423", "the record's write lock is held by another user (55P03)"),
    ("Error", "default", "any other error: 501 not supported (0A000), 504 statement timeout (57014), 500 internal (its message hidden)"),
];

fn common_responses() -> Value {
    let mut m = Map::new();
    for (name, _, desc) in ERRORS {
        m.insert(
            name.to_string(),
            json!({
                "description": desc,
                "content": {"application/problem+json": {"schema": schema_ref("Problem")}}
            }),
        );
    }
    Value::Object(m)
}

fn common_headers() -> Value {
    json!({
        "ETag": {"description": "the record's version, \"<_version>\" (send it back as If-Match)",
                 "schema": {"type": "string"}},
        "Location": {"description": "the path of what was created", "schema": {"type": "string"}},
        "Link": {"description": "<...>; rel=\"next\": the next page, when there is one",
                 "schema": {"type": "string"}},
    })
}

/// Error responses: `codes` among 400 401 403 404 409 412 422 423, and the default.
fn errors(codes: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, status, _) in ERRORS {
        if *status == "default" || codes.contains(status) {
            m.insert(status.to_string(), response_ref(name));
        }
    }
    m
}

const READ_ERRORS: &[&str] = &["400", "401", "403", "404"];
const WRITE_ERRORS: &[&str] = &["400", "401", "403", "404", "409", "422", "423"];

struct Op {
    id: String,
    summary: String,
    tag: String,
    params: Vec<Value>,
    body: Option<(Value, bool)>,
    responses: Map<String, Value>,
    description: Option<String>,
}

impl Op {
    fn new(id: String, tag: &str, summary: impl Into<String>) -> Op {
        Op {
            id,
            summary: summary.into(),
            tag: tag.into(),
            params: vec![],
            body: None,
            responses: Map::new(),
            description: None,
        }
    }

    fn param(mut self, p: Value) -> Op {
        self.params.push(p);
        self
    }

    fn body(mut self, schema: Value) -> Op {
        self.body = Some((schema, true));
        self
    }

    fn respond(mut self, status: &str, desc: &str, schema: Option<Value>, headers: &[&str]) -> Op {
        let mut r = json!({"description": desc});
        if let Some(s) = schema {
            r["content"] = json_content(s);
        }
        if !headers.is_empty() {
            let mut h = Map::new();
            for n in headers {
                h.insert(n.to_string(), header_ref(n));
            }
            r["headers"] = Value::Object(h);
        }
        self.responses.insert(status.into(), r);
        self
    }

    fn errors(mut self, codes: &[&str]) -> Op {
        self.responses.extend(errors(codes));
        self
    }

    fn describe(mut self, d: impl Into<String>) -> Op {
        self.description = Some(d.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut o = json!({
            "operationId": self.id,
            "summary": self.summary,
            "tags": [self.tag],
            "responses": self.responses,
        });
        if let Some(d) = &self.description {
            o["description"] = json!(d);
        }
        if !self.params.is_empty() {
            o["parameters"] = json!(self.params);
        }
        if let Some((s, req)) = &self.body {
            o["requestBody"] = json!({"required": req, "content": json_content(s.clone())});
        }
        o
    }
}

impl Build<'_> {
    fn put(&mut self, path: &str, method: &str, op: Op) {
        let entry = self
            .paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}));
        entry[method] = op.to_json();
    }

    fn fixed_schemas(&mut self) {
        let s = &mut self.schemas;
        s.insert("Problem".into(), json!({
            "type": "object",
            "description": "An error, as RFC 9457 problem details with udm's own members",
            "required": ["type", "title", "status", "detail", "sqlstate"],
            "properties": {
                "type": {"type": "string", "format": "uri", "description": "https://udm.dev/problems/<sqlstate>"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 100, "maximum": 599},
                "detail": {"type": "string", "description": "udm's message (hidden for internal errors)"},
                "instance": {"type": "string", "description": "the request's path"},
                "sqlstate": {"type": "string", "pattern": "^[0-9A-Z]{5}$"},
                "entity": {"type": "string", "description": "the entity the error names"},
                "field": {"type": "string", "description": "the field the error names"},
                "rule": {"type": "string", "description": "the validation rule that refused the record"},
                "hint": {"type": "string", "description": "what to do about it"}
            }
        }));
        s.insert(
            "RecordRef".into(),
            json!({
                "type": "object",
                "description": "a reference to a record of an entity",
                "required": ["entity", "id"],
                "properties": {
                    "entity": {"type": "string"},
                    "id": {"type": "string", "format": "uuid"}
                }
            }),
        );
        s.insert(
            "FileValue".into(),
            json!({
                "type": "object",
                "description": "a file's metadata (the file itself lives elsewhere)",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "size": {"type": "integer", "minimum": 0},
                    "mime_type": {"type": "string"},
                    "url": {"type": "string"}
                }
            }),
        );
        s.insert(
            "BatchResult".into(),
            json!({
                "type": "object",
                "description": "what a batch did",
                "properties": {
                    "inserted": {"type": "integer", "minimum": 0},
                    "updated": {"type": "integer", "minimum": 0}
                }
            }),
        );
        s.insert("ViewSpec".into(), json!({
            "type": "object",
            "description": "the view's spec (udm_view): table: columns, filters, sort, limit, offset, cursor; kanban: field, columns, sort, limit; tree: parent, columns, root, depth; gantt: start, end, label, group_by; dropdown: label, search, limit; breadcrumb: id, parent, label"
        }));
        s.insert(
            "ViewResult".into(),
            json!({"type": "object", "description": "the view (udm_view)"}),
        );
        s.insert("AggregateSpec".into(), json!({
            "type": "object",
            "description": "udm_aggregate's spec: group_by (paths, or {path, bucket: day|week|month|quarter|year, as}), metrics (count, or {fn: count|count_distinct|sum|avg|min|max, path, as}), filters, having, sort, limit",
            "properties": {
                "group_by": {"type": "array"},
                "metrics": {"type": "array"},
                "filters": {"type": "object"},
                "having": {"type": "object"},
                "sort": {"type": "array"},
                "limit": {"type": "integer", "minimum": 1}
            }
        }));
        s.insert(
            "AggregateResult".into(),
            json!({
                "type": "object",
                "required": ["rows"],
                "properties": {"rows": {"type": "array", "items": {"type": "object"},
                    "description": "one per group: its keys and metrics"}}
            }),
        );
        s.insert(
            "HistoryEntry".into(),
            json!({
                "type": "object",
                "description": "a version of a record, from the audit log (udm_history)"
            }),
        );
        s.insert(
            "RollbackRequest".into(),
            json!({
                "type": "object",
                "required": ["version"],
                "properties": {
                    "version": {"type": "integer", "minimum": 1,
                        "description": "the version to bring back"},
                    "fields": {"type": "array", "items": {"type": "string"},
                        "description": "only these fields (default: all)"}
                }
            }),
        );
        s.insert(
            "LockStatus".into(),
            json!({
                "type": "object",
                "description": "the record's write lock (udm_lock_status, udm_lock_acquire, udm_lock_heartbeat): who holds it and until when"
            }),
        );
        s.insert(
            "EntitySummary".into(),
            json!({
                "type": "object",
                "description": "an entity of the tenant (udm_entities)",
                "properties": {"slug": {"type": "string"}}
            }),
        );
        s.insert("EntityDefinition".into(), json!({
            "type": "object",
            "description": "an entity definition (udm_define_entity, udm_describe): label, description, fields, rules, indexes, audit, lock, access",
            "properties": {
                "label": {"type": "string"},
                "description": {"type": "string"},
                "fields": {"type": "array", "items": schema_ref("FieldDefinition")},
                "rules": {"type": "array", "items": {"type": "object",
                    "required": ["name", "check"],
                    "properties": {"name": {"type": "string"}, "check": {"type": "string"},
                                   "message": {"type": "string"}}}},
                "indexes": {"type": "array", "items": {"type": "object"}},
                "audit": {"type": "boolean"},
                "lock": {"type": "object"},
                "access": {"type": "object"}
            }
        }));
        s.insert(
            "NewEntity".into(),
            json!({
                "type": "object",
                "required": ["slug", "definition"],
                "properties": {
                    "slug": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 48},
                    "definition": schema_ref("EntityDefinition")
                }
            }),
        );
        let types: Vec<&str> = crate::types::TYPES.iter().map(|t| t.name).collect();
        s.insert("FieldDefinition".into(), json!({
            "type": "object",
            "description": "a field: name, type and the type's options (udm_field_types())",
            "required": ["name", "type"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 48},
                "type": {"type": "string", "description": format!("one of {} (or an alias, or <scalar>[])", types.join(", "))},
                "label": {"type": "string"},
                "description": {"type": "string"},
                "required": {"type": "boolean"},
                "unique": {"type": "boolean"},
                "index": {"type": "boolean"},
                "default": {}
            }
        }));
        s.insert(
            "FieldChanges".into(),
            json!({
                "type": "object",
                "description": "the options to change (udm_alter_field): name renames, type converts when every value survives"
            }),
        );
        s.insert(
            "AuditReport".into(),
            json!({
                "type": "object",
                "description": "udm_audit_report: a compliance report of the kind asked for"
            }),
        );
        s.insert(
            "AuditVerification".into(),
            json!({
                "type": "object",
                "description": "udm_audit_verify: whether the audit log's hash chain is intact"
            }),
        );
        s.insert(
            "OpenApiDocument".into(),
            json!({"type": "object", "description": "an OpenAPI 3.1 document"}),
        );
    }

    fn visible<'e>(&self, e: &'e EntityDef) -> Vec<&'e FieldDef> {
        e.fields
            .iter()
            .filter(|f| !self.model.hidden(&e.slug, &f.name))
            .collect()
    }

    fn entity_schemas(&mut self, e: &EntityDef) {
        let n = self.names[&e.slug].clone();
        let fields = self.visible(e);
        let label = e
            .label
            .clone()
            .or(e.description.clone())
            .unwrap_or(e.slug.clone());
        // read shape
        let mut props = Map::new();
        let mut required: Vec<String> = vec![];
        for (name, s) in system_properties() {
            props.insert(name.into(), s);
            required.push(name.into());
        }
        for f in fields.iter().filter(|f| readable(f)) {
            props.insert(f.name.clone(), field_schema(f, Mode::Read, !f.required));
            if f.required {
                required.push(f.name.clone());
            }
        }
        self.schemas.insert(
            n.read(),
            json!({
                "type": "object",
                "title": e.slug,
                "description": format!("a {} record ({label}) as udm returns it: system columns and the fields the caller may read", e.slug),
                "required": required,
                "properties": props,
                "x-udm-entity": e.slug,
            }),
        );
        // write shapes
        let mut props = Map::new();
        let mut required: Vec<String> = vec![];
        for f in fields.iter().filter(|f| writable(f)) {
            props.insert(f.name.clone(), field_schema(f, Mode::Write, !f.required));
            if f.required && f.default.is_none() {
                required.push(f.name.clone());
            }
        }
        let mut input = json!({
            "type": "object",
            "title": format!("{} input", e.slug),
            "description": format!("a {} record to write: the fields (system columns are udm's); required fields without a default must be given. PUT sets the fields it does not give to null.", e.slug),
            "properties": props.clone(),
            "x-udm-entity": e.slug,
        });
        if !required.is_empty() {
            input["required"] = json!(required);
        }
        self.schemas.insert(n.input(), input);
        // a patch: every field optional; required ones may not be null
        self.schemas.insert(
            n.patch(),
            json!({
                "type": "object",
                "title": format!("{} patch", e.slug),
                "description": format!("changes to a {} record: the fields given are set, the others kept", e.slug),
                "properties": props,
                "minProperties": 1,
                "x-udm-entity": e.slug,
            }),
        );
        self.schemas.insert(
            n.page(),
            json!({
                "type": "object",
                "title": format!("{} page", e.slug),
                "required": ["records"],
                "properties": {
                    "records": {"type": "array", "items": schema_ref(&n.read())},
                    "next_cursor": {"type": ["string", "null"],
                        "description": "pass it as cursor for the next page; absent or null on the last"},
                    "count": {"type": "integer", "minimum": 0,
                        "description": "with count=exact|estimated: the records matching the filters"}
                },
                "x-udm-entity": e.slug,
            }),
        );
    }

    /// One query parameter per filterable field: `<name>=<op>.<value>`.
    fn filter_params(&self, e: &EntityDef) -> Vec<Value> {
        let mut out = vec![];
        let param = |name: &str, ty: &str, ops: &str, extra: &str| {
            let pname = if RESERVED_PARAMS.contains(&name) {
                format!("filter.{name}")
            } else {
                name.to_string()
            };
            let ops_list = ops.replace(' ', ", ");
            json!({
                "name": pname,
                "in": "query",
                "required": false,
                "description": format!(
                    "filter on {name} ({ty}): <op>.<value> with op one of {ops_list}; a bare value means eq. in takes a comma list (in.a,b), is takes null or notnull (is.null).{extra}"
                ),
                "schema": {"type": "string"},
            })
        };
        const ORDERED: &str = "eq neq gt gte lt lte in is";
        const TEXT: &str = "eq neq gt gte lt lte like ilike in is";
        const EQUAL: &str = "eq neq in is";
        for c in SYSTEM_COLUMNS {
            let (ty, ops) = match *c {
                "id" => ("uuid", EQUAL),
                "_version" => ("integer", ORDERED),
                "created_at" | "updated_at" => ("datetime", ORDERED),
                _ => ("text", TEXT),
            };
            out.push(param(c, ty, ops, ""));
        }
        for f in self.visible(e) {
            let t = &f.ftype;
            let ty = t.name();
            let (ops, extra) = match t {
                _ if f.encrypted && f.blind_indexed() => (
                    EQUAL,
                    " Encrypted: compared through its blind index, equality only.".to_string(),
                ),
                _ if f.encrypted => (
                    "is",
                    " Encrypted without a blind index (not unique or indexed): null tests only."
                        .to_string(),
                ),
                FieldType::Password | FieldType::Reference => continue,
                FieldType::Relation if f.many => continue,
                FieldType::Relation => (
                    EQUAL,
                    format!(
                        " Filter on the related {} record's fields with {}.<field>=<op>.<value>.",
                        f.target.as_deref().unwrap_or_default(),
                        f.name
                    ),
                ),
                FieldType::Json | FieldType::File => (
                    TEXT,
                    format!(
                        " Filter inside the value with {}.<key>=<op>.<value> (compared by the value's JSON type).",
                        f.name
                    ),
                ),
                FieldType::MultiSelect | FieldType::Tags | FieldType::Array(_) => ("is", String::new()),
                FieldType::Boolean | FieldType::Uuid | FieldType::User => (EQUAL, String::new()),
                FieldType::Select => (
                    TEXT,
                    format!(" Values: {}.", f.values.join(", ")),
                ),
                _ if t.is_text_like() => (TEXT, String::new()),
                _ => (ORDERED, String::new()),
            };
            out.push(param(&f.name, &ty, ops, &extra));
        }
        out
    }

    fn entity_paths(&mut self, e: &EntityDef) {
        let n = self.names[&e.slug].clone();
        let slug = e.slug.clone();
        let p = n.op.clone();
        let read = schema_ref(&n.read());
        let base = format!("/records/{slug}");
        let item = format!("{base}/{{id}}");

        // list
        let mut list = Op::new(format!("list{p}"), &slug, format!("list {slug} records"))
            .describe(format!(
                "A page of {slug} records (udm_query). Filters: one query parameter per field, <field>=<op>.<value> (op: eq, neq, gt, gte, lt, lte, like, ilike, in, is; a bare value means eq); paths through relations and into JSON filter the same way (category_id.name=eq.Phones, metadata.brand=ilike.acme%). A field named like a reserved parameter (select, sort, limit, cursor, count, on_conflict) is filtered with filter.<name>. The Link header names the next page."
            ));
        for c in ["select", "sort", "limit", "cursor", "count"] {
            list = list.param(param_ref(c));
        }
        for fp in self.filter_params(e) {
            list = list.param(fp);
        }
        let list = list
            .respond("200", "a page", Some(schema_ref(&n.page())), &["Link"])
            .errors(READ_ERRORS);
        self.put(&base, "get", list);

        // create: one record, a batch, an upsert
        let create = Op::new(format!("create{p}"), &slug, format!("insert {slug} records"))
            .describe("An object inserts one record (udm_insert: 201, Location, ETag). An array inserts them all or none (udm_insert_many; an error names the row index). With on_conflict, rows whose unique key exists are updated instead (udm_upsert_many: 200).")
            .param(param_ref("on_conflict"))
            .body(json!({"oneOf": [
                schema_ref(&n.input()),
                {"type": "array", "items": schema_ref(&n.input()), "minItems": 1}
            ]}))
            .respond("201", "inserted: the record (an object was sent), or the batch's result (an array)", Some(json!({"anyOf": [
                read.clone(),
                {"type": "array", "items": read.clone()},
                schema_ref("BatchResult")
            ]})), &["Location", "ETag"])
            .respond("200", "upserted (on_conflict)", Some(schema_ref("BatchResult")), &[])
            .errors(WRITE_ERRORS);
        self.put(&base, "post", create);

        // one record
        let get = Op::new(format!("get{p}"), &slug, format!("read a {slug} record"))
            .param(param_ref("id"))
            .param(param_ref("select"))
            .respond("200", "the record", Some(read.clone()), &["ETag"])
            .errors(READ_ERRORS);
        self.put(&item, "get", get);
        let replace = Op::new(format!("replace{p}"), &slug, format!("replace a {slug} record"))
            .describe("Sets every field: those not given become null (udm_replace; auto numbers, passwords and fields your role may not write are kept). With If-Match, a stale version answers 412.")
            .param(param_ref("id"))
            .param(param_ref("if_match"))
            .body(schema_ref(&n.input()))
            .respond("200", "the record as stored", Some(read.clone()), &["ETag"])
            .errors(&["400", "401", "403", "404", "409", "412", "422", "423"]);
        self.put(&item, "put", replace);
        let update = Op::new(
            format!("update{p}"),
            &slug,
            format!("change a {slug} record"),
        )
        .describe("Sets the fields given (udm_update). With If-Match, a stale version answers 412.")
        .param(param_ref("id"))
        .param(param_ref("if_match"))
        .body(schema_ref(&n.patch()))
        .respond("200", "the record as stored", Some(read.clone()), &["ETag"])
        .errors(&["400", "401", "403", "404", "409", "412", "422", "423"]);
        self.put(&item, "patch", update);
        let delete = Op::new(
            format!("delete{p}"),
            &slug,
            format!("delete a {slug} record"),
        )
        .describe("udm_delete; If-Match is checked first, in the same transaction.")
        .param(param_ref("id"))
        .param(param_ref("if_match"))
        .respond("204", "deleted", None, &[])
        .errors(&["400", "401", "403", "404", "409", "412", "423"]);
        self.put(&item, "delete", delete);

        // views and aggregates
        let view = Op::new(
            format!("query{p}"),
            &slug,
            format!("a view of {slug} records"),
        )
        .describe("udm_view(entity, kind, spec); table is udm_query's page.")
        .param(param_ref("kind"))
        .body(schema_ref("ViewSpec"))
        .respond("200", "the view", Some(schema_ref("ViewResult")), &[])
        .errors(READ_ERRORS);
        self.put(&format!("{base}/query/{{kind}}"), "post", view);
        let agg = Op::new(
            format!("aggregate{p}"),
            &slug,
            format!("aggregate {slug} records"),
        )
        .describe("udm_aggregate(entity, spec): groups and metrics.")
        .body(schema_ref("AggregateSpec"))
        .respond(
            "200",
            "one row per group",
            Some(schema_ref("AggregateResult")),
            &[],
        )
        .errors(READ_ERRORS);
        self.put(&format!("{base}/stats/agg"), "post", agg);

        // history, a past version, rollback
        let history = Op::new(
            format!("history{p}"),
            &slug,
            format!("the versions of a {slug} record"),
        )
        .describe("udm_history: the record's versions from the audit log.")
        .param(param_ref("id"))
        .respond(
            "200",
            "its versions",
            Some(json!({"type": "array", "items": schema_ref("HistoryEntry")})),
            &[],
        )
        .errors(READ_ERRORS);
        self.put(&format!("{item}/history"), "get", history);
        let at = Op::new(
            format!("snapshot{p}"),
            &slug,
            format!("a {slug} record as it was at a time"),
        )
        .describe("udm_record_at; 404 when the record did not exist then.")
        .param(param_ref("id"))
        .param(param_ref("time"))
        .respond("200", "the record as it was", Some(read.clone()), &[])
        .errors(READ_ERRORS);
        self.put(&format!("{item}/at"), "get", at);
        let rollback = Op::new(
            format!("rollback{p}"),
            &slug,
            format!("bring back an earlier version of a {slug} record"),
        )
        .describe("udm_rollback(entity, id, version, fields).")
        .param(param_ref("id"))
        .body(schema_ref("RollbackRequest"))
        .respond("200", "the record as stored", Some(read.clone()), &["ETag"])
        .errors(WRITE_ERRORS);
        self.put(&format!("{item}/rollback"), "post", rollback);

        // write locks
        let lock = format!("{item}/lock");
        let status = Op::new(
            format!("lockStatus{p}"),
            &slug,
            format!("the write lock of a {slug} record"),
        )
        .param(param_ref("id"))
        .respond("200", "the lock", Some(schema_ref("LockStatus")), &[])
        .errors(READ_ERRORS);
        self.put(&lock, "get", status);
        let acquire = Op::new(
            format!("acquireLock{p}"),
            &slug,
            format!("take the write lock of a {slug} record"),
        )
        .describe("udm_lock_acquire; 423 when another user holds it.")
        .param(param_ref("id"))
        .respond(
            "200",
            "the lock, now the caller's",
            Some(schema_ref("LockStatus")),
            &[],
        )
        .errors(&["400", "401", "403", "404", "409", "423"]);
        self.put(&lock, "post", acquire);
        let heartbeat = Op::new(
            format!("heartbeatLock{p}"),
            &slug,
            format!("keep the write lock of a {slug} record"),
        )
        .describe("udm_lock_heartbeat: extends the caller's lock.")
        .param(param_ref("id"))
        .respond("200", "the lock", Some(schema_ref("LockStatus")), &[])
        .errors(&["400", "401", "403", "404", "409", "423"]);
        self.put(&lock, "put", heartbeat);
        let release = Op::new(
            format!("releaseLock{p}"),
            &slug,
            format!("release the write lock of a {slug} record"),
        )
        .describe("udm_lock_release.")
        .param(param_ref("id"))
        .respond("204", "released", None, &[])
        .errors(&["400", "401", "403", "404", "409", "423"]);
        self.put(&lock, "delete", release);
    }

    fn schema_paths(&mut self) {
        let entity = param_ref("entity");
        let field = param_ref("field");
        let def = schema_ref("EntityDefinition");
        self.put(
            "/schemas",
            "get",
            Op::new("schemaList".into(), "schemas", "the tenant's entities")
                .describe("udm_entities()")
                .respond(
                    "200",
                    "the entities",
                    Some(json!({"type": "array", "items": schema_ref("EntitySummary")})),
                    &[],
                )
                .errors(READ_ERRORS),
        );
        self.put(
            "/schemas",
            "post",
            Op::new("schemaCreate".into(), "schemas", "define an entity")
                .describe("udm_define_entity(slug, definition)")
                .body(schema_ref("NewEntity"))
                .respond("201", "defined", Some(def.clone()), &["Location"])
                .errors(WRITE_ERRORS),
        );
        self.put(
            "/schemas/{entity}",
            "get",
            Op::new("schemaGet".into(), "schemas", "an entity's definition")
                .describe("udm_describe(entity)")
                .param(entity.clone())
                .respond("200", "the definition", Some(def.clone()), &[])
                .errors(READ_ERRORS),
        );
        self.put(
            "/schemas/{entity}",
            "put",
            Op::new("schemaReplace".into(), "schemas", "redefine an entity")
                .describe("udm_define_entity(entity, body): plans the change from the old definition to the new one")
                .param(entity.clone())
                .body(def.clone())
                .respond("200", "the new definition", Some(def.clone()), &[])
                .errors(WRITE_ERRORS),
        );
        self.put(
            "/schemas/{entity}",
            "delete",
            Op::new("schemaDrop".into(), "schemas", "drop an entity")
                .describe("udm_drop_entity(entity): the data stays until purged")
                .param(entity.clone())
                .respond("204", "dropped", None, &[])
                .errors(WRITE_ERRORS),
        );
        self.put(
            "/schemas/{entity}/fields",
            "post",
            Op::new("fieldAdd".into(), "schemas", "add a field")
                .describe("udm_add_field(entity, body)")
                .param(entity.clone())
                .body(schema_ref("FieldDefinition"))
                .respond("201", "added", Some(def.clone()), &["Location"])
                .errors(WRITE_ERRORS),
        );
        self.put(
            "/schemas/{entity}/fields/{field}",
            "patch",
            Op::new("fieldAlter".into(), "schemas", "change a field")
                .describe("udm_alter_field(entity, field, body)")
                .param(entity.clone())
                .param(field.clone())
                .body(schema_ref("FieldChanges"))
                .respond("200", "changed", Some(def.clone()), &[])
                .errors(WRITE_ERRORS),
        );
        self.put(
            "/schemas/{entity}/fields/{field}",
            "delete",
            Op::new("fieldRemove".into(), "schemas", "remove a field")
                .describe("udm_remove_field(entity, field): the data stays until udm_purge_field")
                .param(entity.clone())
                .param(field.clone())
                .respond("204", "removed", None, &[])
                .errors(WRITE_ERRORS),
        );
        self.put(
            "/schemas/{entity}/fields/{field}/restore",
            "post",
            Op::new("fieldRestore".into(), "schemas", "restore a removed field")
                .describe("udm_restore_field(entity, field)")
                .param(entity)
                .param(field)
                .respond("200", "restored", Some(def), &[])
                .errors(WRITE_ERRORS),
        );
    }

    fn audit_paths(&mut self) {
        let entities: Vec<String> = self.entities.iter().map(|e| e.slug.clone()).collect();
        let q = |name: &str, schema: Value, desc: &str| json!({"name": name, "in": "query", "required": false, "description": desc, "schema": schema});
        let mut kind = q(
            "kind",
            json!({"type": "string", "enum": AUDIT_KINDS}),
            "the report",
        );
        kind["required"] = json!(true);
        let mut entity_schema = json!({"type": "string"});
        if !entities.is_empty() {
            entity_schema["enum"] = json!(entities);
        }
        let report = Op::new("auditReport".into(), "audit", "an audit report")
            .describe("udm_audit_report(kind, from, to, options)")
            .param(kind)
            .param(q(
                "from",
                json!({"type": "string", "format": "date-time"}),
                "from this time",
            ))
            .param(q(
                "to",
                json!({"type": "string", "format": "date-time"}),
                "until this time",
            ))
            .param(q("entity", entity_schema, "only this entity"))
            .param(q("user", json!({"type": "string"}), "only this user"))
            .param(q(
                "record_id",
                json!({"type": "string", "format": "uuid"}),
                "only this record (record_history)",
            ))
            .param(q(
                "limit",
                json!({"type": "integer", "minimum": 1}),
                "at most this many rows",
            ))
            .respond("200", "the report", Some(schema_ref("AuditReport")), &[])
            .errors(READ_ERRORS);
        self.put("/audit/report", "get", report);
        let verify = Op::new(
            "auditVerify".into(),
            "audit",
            "verify the audit log's hash chain",
        )
        .describe("udm_audit_verify()")
        .respond(
            "200",
            "the verification",
            Some(schema_ref("AuditVerification")),
            &[],
        )
        .errors(READ_ERRORS);
        self.put("/audit/verify", "get", verify);
    }

    fn openapi_path(&mut self) {
        let tenant = self.tenant.clone();
        let op = Op::new(
            "openapiDocument".into(),
            "openapi",
            format!("this document: tenant {tenant} as the caller sees it"),
        )
        .describe("SELECT udm_openapi()")
        .respond(
            "200",
            "the OpenAPI document",
            Some(schema_ref("OpenApiDocument")),
            &[],
        )
        .errors(&["401", "403"]);
        self.put("/openapi.json", "get", op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Source;
    use std::collections::{HashMap, HashSet};

    struct M {
        entities: HashMap<String, EntityDef>,
        hidden: HashSet<(String, String)>,
    }

    impl Model for M {
        fn schema(&self) -> &str {
            "t_acme"
        }
        fn entity(&self, slug: &str) -> Option<&EntityDef> {
            self.entities.get(slug)
        }
        fn entity_names(&self) -> Vec<String> {
            self.entities.keys().cloned().collect()
        }
        fn hidden(&self, e: &str, f: &str) -> bool {
            self.hidden.contains(&(e.to_string(), f.to_string()))
        }
    }

    fn model(hidden: &[(&str, &str)]) -> M {
        let mut entities = HashMap::new();
        for (slug, def) in [
            (
                "category",
                json!({"fields": [
                    {"name": "name", "type": "text", "required": true, "min_length": 2, "max_length": 100},
                    {"name": "parent_id", "type": "relation", "target": "category"}
                ]}),
            ),
            (
                "tag",
                json!({"label": "Tags", "fields": [{"name": "name", "type": "text"}]}),
            ),
            (
                "product",
                json!({"label": "Products", "fields": [
                    {"name": "name", "type": "text", "required": true, "pattern": "^[A-Z]"},
                    {"name": "code", "type": "text", "pattern": "^[[:alpha:]]+$"},
                    {"name": "notes", "type": "long_text"},
                    {"name": "qty", "type": "integer", "min": 0, "max": 1000},
                    {"name": "big", "type": "bigint"},
                    {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
                    {"name": "weight", "type": "float"},
                    {"name": "active", "type": "boolean", "default": true},
                    {"name": "released", "type": "date", "min": "2020-01-01"},
                    {"name": "seen_at", "type": "datetime", "default": "now"},
                    {"name": "opens", "type": "time"},
                    {"name": "lead", "type": "duration"},
                    {"name": "ext", "type": "uuid"},
                    {"name": "meta", "type": "json"},
                    {"name": "contact", "type": "email"},
                    {"name": "site", "type": "url"},
                    {"name": "phone", "type": "phone"},
                    {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "required": true, "default": "draft"},
                    {"name": "channels", "type": "multi_select", "values": ["web", "shop"], "max_items": 2},
                    {"name": "labels", "type": "tags"},
                    {"name": "cost", "type": "currency", "currency_code": "EUR"},
                    {"name": "margin", "type": "percent"},
                    {"name": "stars", "type": "rating", "max": 10},
                    {"name": "colour", "type": "color"},
                    {"name": "no", "type": "auto_number"},
                    {"name": "secret", "type": "password", "min_length": 8},
                    {"name": "manual", "type": "file", "max_size": 1000},
                    {"name": "category_id", "type": "relation", "target": "category", "required": true},
                    {"name": "tags", "type": "relation", "target": "tag", "many": true},
                    {"name": "about", "type": "reference", "targets": ["category", "tag"]},
                    {"name": "owner", "type": "user"},
                    {"name": "sizes", "type": "integer[]", "min_items": 1, "unique_items": true},
                    {"name": "count", "type": "integer"}
                ]}),
            ),
        ] {
            entities.insert(
                slug.to_string(),
                EntityDef::parse(slug, &def, Source::Caller).unwrap(),
            );
        }
        M {
            entities,
            hidden: hidden
                .iter()
                .map(|(e, f)| (e.to_string(), f.to_string()))
                .collect(),
        }
    }

    fn schema<'a>(d: &'a Value, name: &str) -> &'a Value {
        &d["components"]["schemas"][name]
    }

    #[test]
    fn structure() {
        let d = document(&model(&[]), "acme");
        assert_eq!(d["openapi"], "3.1.0");
        assert_eq!(d["info"]["title"], "udm tenant acme");
        assert_eq!(d["info"]["version"].as_str().unwrap().len(), 16);
        assert_eq!(d["servers"], json!([{"url": "/api"}]));
        assert_eq!(d["security"], json!([{"bearer": []}]));
        assert_eq!(
            d["components"]["securitySchemes"]["bearer"],
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": d["components"]["securitySchemes"]["bearer"]["description"]})
        );
        for n in [
            "Product",
            "ProductInput",
            "ProductPatch",
            "ProductPage",
            "Category",
            "Tag",
            "Problem",
        ] {
            assert!(schema(&d, n).is_object(), "{n}");
        }
        let p = schema(&d, "Product");
        let props = p["properties"].as_object().unwrap();
        for sys in SYSTEM_COLUMNS {
            assert_eq!(props[*sys]["readOnly"], true, "{sys}");
        }
        let req: Vec<&str> = p["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            req,
            [
                "id",
                "_version",
                "created_at",
                "updated_at",
                "created_by",
                "updated_by",
                "name",
                "status",
                "category_id"
            ]
        );
        // passwords only in inputs; many-to-many only in inputs; auto numbers only in reads
        assert!(!props.contains_key("secret"));
        assert!(!props.contains_key("tags"));
        assert_eq!(props["no"]["readOnly"], true);
        let input = schema(&d, "ProductInput");
        let ip = input["properties"].as_object().unwrap();
        assert_eq!(ip["secret"]["writeOnly"], true);
        assert_eq!(ip["secret"]["minLength"], 8);
        assert!(!ip.contains_key("no") && !ip.contains_key("id") && !ip.contains_key("_version"));
        assert_eq!(ip["tags"]["items"]["format"], "uuid");
        // status has a default, so an insert may leave it out
        assert_eq!(input["required"], json!(["name", "category_id"]));
        assert!(schema(&d, "ProductPatch").get("required").is_none());
        assert_eq!(ip["active"]["default"], true);
        assert!(ip["seen_at"].get("default").is_none());
        // the Problem of RFC 9457 with udm's members
        let pr = schema(&d, "Problem")["properties"].as_object().unwrap();
        for k in [
            "type", "title", "status", "detail", "instance", "sqlstate", "entity", "field", "rule",
            "hint",
        ] {
            assert!(pr.contains_key(k), "{k}");
        }
        // every $ref resolves
        let text = d.to_string();
        for part in text.split("\"$ref\":\"#/components/").skip(1) {
            let r = &part[..part.find('"').unwrap()];
            let (kind, name) = r.split_once('/').unwrap();
            assert!(d["components"][kind][name].is_object(), "dangling {r}");
        }
    }

    #[test]
    fn types_formats_enums_and_bounds() {
        let d = document(&model(&[]), "acme");
        let p = &schema(&d, "Product")["properties"];
        assert_eq!(p["name"]["type"], "string");
        assert_eq!(p["name"]["pattern"], "^[A-Z]");
        // a PostgreSQL-only pattern is not given as an ECMA one
        assert!(p["code"].get("pattern").is_none());
        assert_eq!(p["code"]["x-udm-pattern"], "^[[:alpha:]]+$");
        assert_eq!(p["qty"]["type"], json!(["integer", "null"]));
        assert_eq!(p["qty"]["minimum"], 0);
        assert_eq!(p["qty"]["maximum"], 1000);
        assert_eq!(p["big"]["format"], "int64");
        assert_eq!(p["price"]["type"], json!(["number", "null"]));
        assert_eq!(p["price"]["minimum"], 0);
        assert_eq!(p["price"]["x-udm-scale"], 2);
        assert_eq!(p["released"]["format"], "date");
        assert_eq!(p["released"]["x-udm-minimum"], "2020-01-01");
        assert!(p["released"].get("minimum").is_none());
        assert_eq!(p["seen_at"]["format"], "date-time");
        assert!(p["opens"].get("format").is_none());
        assert_eq!(p["ext"]["format"], "uuid");
        assert_eq!(p["contact"]["format"], "email");
        assert_eq!(p["site"]["format"], "uri");
        assert_eq!(p["colour"]["pattern"], crate::checks::COLOR_PATTERN);
        assert_eq!(p["phone"]["pattern"], crate::checks::PHONE_PATTERN);
        assert_eq!(p["status"]["type"], "string");
        assert_eq!(p["status"]["enum"], json!(["draft", "active", "retired"]));
        assert_eq!(
            p["channels"]["items"]["enum"],
            json!(["web", "shop"]),
            "{}",
            p["channels"]
        );
        assert_eq!(p["channels"]["maxItems"], 2);
        assert_eq!(p["labels"]["uniqueItems"], true);
        assert_eq!(p["cost"]["x-udm-currency"], "EUR");
        assert_eq!(p["stars"]["maximum"], 10);
        assert_eq!(p["stars"]["minimum"], 0);
        assert_eq!(p["sizes"]["items"]["type"], "integer");
        assert_eq!(p["sizes"]["minItems"], 1);
        assert_eq!(p["sizes"]["uniqueItems"], true);
        assert_eq!(p["category_id"]["type"], "string");
        assert_eq!(p["category_id"]["format"], "uuid");
        assert_eq!(
            p["category_id"]["x-udm-relation"],
            json!({"entity": "category", "on_delete": "restrict"})
        );
        assert!(p["category_id"]["description"]
            .as_str()
            .unwrap()
            .contains("category"));
        assert_eq!(
            p["about"]["anyOf"][0]["allOf"][0]["$ref"],
            "#/components/schemas/RecordRef"
        );
        assert_eq!(p["about"]["anyOf"][1], json!({"type": "null"}));
        assert_eq!(
            p["about"]["x-udm-reference"]["entities"],
            json!(["category", "tag"])
        );
        assert!(p["about"]["description"].as_str().unwrap().contains("tag"));
        assert_eq!(p["manual"]["x-udm-max-size"], 1000);
        assert_eq!(p["owner"]["format"], "uuid");
        assert_eq!(p["meta"]["x-udm-type"], "json");
        assert!(p["meta"].get("type").is_none());
        // a nullable select allows null among its values
        let cat = &schema(&d, "Category")["properties"];
        assert_eq!(cat["name"]["minLength"], 2);
        assert_eq!(cat["name"]["maxLength"], 100);
        assert_eq!(cat["parent_id"]["type"], json!(["string", "null"]));
    }

    #[test]
    fn nullable_selects_allow_null() {
        let mut m = model(&[]);
        let e = m.entities.get_mut("product").unwrap();
        e.fields
            .iter_mut()
            .find(|f| f.name == "status")
            .unwrap()
            .required = false;
        let d = document(&m, "acme");
        let s = &schema(&d, "Product")["properties"]["status"];
        assert_eq!(s["type"], json!(["string", "null"]));
        assert_eq!(s["enum"], json!(["draft", "active", "retired", null]));
    }

    #[test]
    fn hidden_fields_are_absent() {
        let all = document(&model(&[]), "acme");
        let d = document(
            &model(&[("product", "qty"), ("product", "category_id")]),
            "acme",
        );
        for n in ["Product", "ProductInput", "ProductPatch"] {
            let props = schema(&d, n)["properties"].as_object().unwrap();
            assert!(!props.contains_key("qty"), "{n}");
            assert!(!props.contains_key("category_id"), "{n}");
            assert!(props.contains_key("name"), "{n}");
        }
        assert!(!schema(&d, "Product")["required"]
            .as_array()
            .unwrap()
            .contains(&json!("category_id")));
        let params = d["paths"]["/records/product"]["get"]["parameters"]
            .as_array()
            .unwrap();
        assert!(!params.iter().any(|p| p["name"] == "qty"));
        assert!(!d.to_string().contains("\"qty\""));
        assert!(all.to_string().contains("\"qty\""));
        assert_ne!(d["info"]["version"], all["info"]["version"]);
        // the same view gives the same document
        assert_eq!(
            document(
                &model(&[("product", "qty"), ("product", "category_id")]),
                "acme"
            ),
            d
        );
    }

    #[test]
    fn version_changes_with_definitions() {
        let a = document(&model(&[]), "acme");
        let mut m = model(&[]);
        let e = m.entities.get_mut("tag").unwrap();
        e.add_field(FieldDef::new(9, "color", FieldType::Color))
            .unwrap();
        let b = document(&m, "acme");
        assert_ne!(a["info"]["version"], b["info"]["version"]);
        assert!(schema(&b, "Tag")["properties"]["color"].is_object());
    }

    /// The contract's routes (/work/notes/rest-routes.md), relative to /api.
    const CONTRACT: &[(&str, &str)] = &[
        ("get", "/schemas"),
        ("post", "/schemas"),
        ("get", "/schemas/{entity}"),
        ("put", "/schemas/{entity}"),
        ("delete", "/schemas/{entity}"),
        ("post", "/schemas/{entity}/fields"),
        ("patch", "/schemas/{entity}/fields/{field}"),
        ("delete", "/schemas/{entity}/fields/{field}"),
        ("post", "/schemas/{entity}/fields/{field}/restore"),
        ("get", "/records/E"),
        ("post", "/records/E"),
        ("get", "/records/E/{id}"),
        ("put", "/records/E/{id}"),
        ("patch", "/records/E/{id}"),
        ("delete", "/records/E/{id}"),
        ("post", "/records/E/query/{kind}"),
        ("post", "/records/E/stats/agg"),
        ("get", "/records/E/{id}/history"),
        ("get", "/records/E/{id}/at"),
        ("post", "/records/E/{id}/rollback"),
        ("get", "/records/E/{id}/lock"),
        ("post", "/records/E/{id}/lock"),
        ("put", "/records/E/{id}/lock"),
        ("delete", "/records/E/{id}/lock"),
        ("get", "/audit/report"),
        ("get", "/audit/verify"),
        ("get", "/openapi.json"),
    ];

    #[test]
    fn every_contract_route_is_there_once_with_unique_operation_ids() {
        let d = document(&model(&[]), "acme");
        let paths = d["paths"].as_object().unwrap();
        let mut expected = 0;
        for (method, path) in CONTRACT {
            let concrete: Vec<String> = if path.contains("/E") {
                ["category", "product", "tag"]
                    .iter()
                    .map(|e| path.replace("/E", &format!("/{e}")))
                    .collect()
            } else {
                vec![path.to_string()]
            };
            for p in concrete {
                expected += 1;
                let op = &paths
                    .get(&p)
                    .unwrap_or_else(|| panic!("no path {p}"))
                    .get(*method)
                    .unwrap_or_else(|| panic!("no {method} {p}"));
                assert!(op["operationId"].is_string(), "{method} {p}");
                assert!(op["responses"]["default"].is_object(), "{method} {p}");
                // path parameters: each {name} of the template declared, required
                let declared: Vec<String> = op["parameters"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| {
                                let x = match x.get("$ref").and_then(Value::as_str) {
                                    Some(r) => {
                                        &d["components"]["parameters"]
                                            [r.rsplit('/').next().unwrap()]
                                    }
                                    None => x,
                                };
                                (x["in"] == "path").then(|| x["name"].as_str().unwrap().to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let in_template: Vec<String> = p
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_string)
                    .collect();
                assert_eq!(declared, in_template, "{method} {p}");
            }
        }
        let mut ids = HashSet::new();
        let mut ops = 0;
        for (p, item) in paths {
            for (m, op) in item.as_object().unwrap() {
                ops += 1;
                let id = op["operationId"].as_str().unwrap();
                assert!(
                    ids.insert(id.to_string()),
                    "operationId {id} twice ({m} {p})"
                );
            }
        }
        assert_eq!(ops, expected, "routes beyond the contract");
        for id in [
            "listProduct",
            "getProduct",
            "createTag",
            "acquireLockCategory",
        ] {
            assert!(ids.contains(id), "{id}");
        }
        // errors are problem+json
        let r = &d["components"]["responses"]["UnprocessableContent"];
        assert_eq!(
            r["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
        let create = &paths["/records/product"]["post"]["responses"];
        assert!(create["201"]["headers"]["Location"].is_object());
        assert!(create["201"]["headers"]["ETag"].is_object());
        assert_eq!(
            create["422"]["$ref"],
            "#/components/responses/UnprocessableContent"
        );
        assert!(paths["/records/product/{id}"]["patch"]["responses"]["412"].is_object());
        assert!(
            paths["/records/product"]["get"]["responses"]["200"]["headers"]["Link"].is_object()
        );
    }

    #[test]
    fn encrypted_fields_keep_their_types_and_offer_equality_only() {
        let mut m = model(&[]);
        m.entities.insert(
            "patient".into(),
            EntityDef::parse(
                "patient",
                &json!({"fields": [
                    {"name": "born", "type": "date", "encrypted": true, "index": true},
                    {"name": "seen", "type": "datetime", "encrypted": true},
                    {"name": "mail", "type": "email", "encrypted": true, "unique": true},
                    {"name": "notes", "type": "long_text", "encrypted": true}
                ]}),
                Source::Caller,
            )
            .unwrap(),
        );
        let d = document(&m, "acme");
        let p = &schema(&d, "Patient")["properties"];
        assert_eq!(p["born"]["format"], "date", "{}", p["born"]);
        assert_eq!(p["seen"]["format"], "date-time", "{}", p["seen"]);
        assert_eq!(p["mail"]["format"], "email");
        for f in ["born", "seen", "mail", "notes"] {
            assert_eq!(p[f]["x-udm-encrypted"], true, "{f}: {}", p[f]);
        }
        assert!(p["born"]["description"]
            .as_str()
            .unwrap()
            .contains("equality only"));
        let params = d["paths"]["/records/patient"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let desc = |n: &str| {
            params
                .iter()
                .find(|p| p["name"] == n)
                .unwrap_or_else(|| panic!("{n}"))["description"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let born = desc("born");
        assert!(
            born.contains("eq, neq, in, is") && !born.contains("gte"),
            "{born}"
        );
        let notes = desc("notes");
        assert!(
            notes.contains("op one of is;") && !notes.contains("eq,"),
            "{notes}"
        );
        // plain fields keep their operators
        assert!(!schema(&d, "Product")["properties"]["released"]
            .as_object()
            .unwrap()
            .contains_key("x-udm-encrypted"));
    }

    #[test]
    fn list_parameters_follow_the_grammar() {
        let d = document(&model(&[]), "acme");
        let params = d["paths"]["/records/product"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let names: Vec<String> = params
            .iter()
            .map(|p| match p.get("$ref") {
                Some(r) => r.as_str().unwrap().rsplit('/').next().unwrap().to_string(),
                None => p["name"].as_str().unwrap().to_string(),
            })
            .collect();
        for n in [
            "select",
            "sort",
            "limit",
            "cursor",
            "count",
            "id",
            "_version",
            "name",
            "qty",
            "status",
            "category_id",
            "meta",
            "filter.count",
        ] {
            assert!(names.contains(&n.to_string()), "{n} in {names:?}");
        }
        // not filterable as a parameter: passwords, many-to-many, references; reserved names
        // only with filter.
        for n in ["secret", "tags", "about"] {
            assert!(!names.contains(&n.to_string()), "{n}");
        }
        assert_eq!(names.iter().filter(|n| *n == "count").count(), 1);
        let qty = params.iter().find(|p| p["name"] == "qty").unwrap();
        let desc = qty["description"].as_str().unwrap();
        assert!(desc.contains("gte") && !desc.contains("like"), "{desc}");
        let name = params.iter().find(|p| p["name"] == "name").unwrap();
        assert!(name["description"].as_str().unwrap().contains("ilike"));
    }

    #[test]
    fn colliding_names_fall_back_to_the_slug() {
        let mut m = model(&[]);
        m.entities.insert(
            "product_input".into(),
            EntityDef::parse(
                "product_input",
                &json!({"fields": [{"name": "x", "type": "text"}]}),
                Source::Caller,
            )
            .unwrap(),
        );
        m.entities.insert(
            "problem".into(),
            EntityDef::parse(
                "problem",
                &json!({"fields": [{"name": "y", "type": "text"}]}),
                Source::Caller,
            )
            .unwrap(),
        );
        let d = document(&m, "acme");
        assert!(schema(&d, "ProductInput")["properties"]["name"].is_object());
        assert!(schema(&d, "Entity_product_input")["properties"]["x"].is_object());
        assert!(schema(&d, "Entity_product_inputInput")["properties"]["x"].is_object());
        assert!(schema(&d, "Problem")["properties"]["sqlstate"].is_object());
        assert!(schema(&d, "Entity_problem")["properties"]["y"].is_object());
        assert_eq!(
            d["paths"]["/records/problem"]["get"]["operationId"],
            "listProblem"
        );
    }
}
