//! The query compiler: a spec (JSON) is parsed against the entity metadata into SQL text whose
//! values are all bind parameters (`$n::type`), with every identifier quoted.
//!
//! Compilation yields a [`Template`]: the SQL and, for each parameter, where its value comes from
//! in the spec (a JSON pointer) and how it is checked. Two specs with the same [`shape_key`]
//! (same structure, different values) share one template, so the extension caches templates and
//! their prepared plans by shape and only [`bind`]s the values of each call.

pub mod aggregate;
pub mod filter;
pub mod path;
pub mod select;
pub mod views;

use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{fnv1a, printable, quote_ident, quote_literal};
use crate::json::kind;
use crate::values::{parse_date, to_text, PType};
use path::{Leaf, Model, Resolved, Sealed, ToMany, ToOne};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub use path::resolve;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;
/// Most groups an aggregate returns.
pub const MAX_GROUPS: i64 = 100_000;
pub const MAX_JOINS: usize = 16;
pub const MAX_TO_MANY: usize = 16;
pub const MAX_COLUMNS: usize = 200;
pub const MAX_FILTER_DEPTH: usize = 16;
pub const MAX_FILTER_TERMS: usize = 200;

/// One step of a JSON pointer into the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ptr {
    Key(String),
    Index(usize),
}

/// How a parameter's JSON value becomes its SQL text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conv {
    /// Checked against the parameter's type.
    Value,
    /// Each element checked; bound as an array (`in`, `not_in`).
    Array,
    /// A string searched inside text (`contains`): `%v%` with LIKE wildcards escaped.
    Contains,
    /// A string at the start of text (`starts_with`): `v%`, escaped.
    Prefix,
    /// A LIKE pattern given as is.
    Pattern,
    /// Serialised as one JSON value (containment in json).
    Json,
    /// A row count: a whole number from 1 to the given maximum.
    Limit(i64),
    /// A whole number of at least 0.
    Offset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Spec(Vec<Ptr>),
    /// The i-th key of the decoded cursor.
    Cursor(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub source: Source,
    pub ptype: PType,
    pub conv: Conv,
    /// Names the value in errors: `filter "price"`.
    pub what: String,
}

/// Compiled SQL and where its parameters come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub sql: String,
    pub params: Vec<ParamSpec>,
    /// Values the executor computes with the statement's parameters (an estimated count, read
    /// from `EXPLAIN`), for `PageCount::Computed`.
    pub computed: Vec<Computed>,
    /// Planned for the values of each call rather than once: statements that visit every
    /// matching row (exact counts, aggregates, kanban counts), where planning costs little next
    /// to running, and a plan made for average values can be far off for skewed ones (a roadmap
    /// holding most products).
    pub plan_per_call: bool,
    /// For pages and aggregates: the SQL returns the result's rows and the executor builds the
    /// jsonb result from them (None: the SQL returns the whole result as one jsonb value).
    pub rows: Option<RowsOutput>,
}

/// How the executor turns the rows of a statement into `{"rows": [...]}` (with a page's
/// `next_cursor` and `count`): each SQL row is one result row, its columns first (in `columns`
/// order), then a page's cursor keys. Building the objects from the rows costs a fraction of
/// `jsonb_build_object` and `jsonb_agg` in the statement, which convert every value through its
/// type's lookups and (for numerics) its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsOutput {
    /// The key of each column in the result's rows: the requested path, group key or metric.
    pub columns: Vec<String>,
    /// Keyset paging (None for aggregates and `distinct` pages, which page by offset).
    pub cursor: Option<PageCursor>,
    /// The count of all matching records and the key it goes under.
    pub count: Option<(String, PageCount)>,
    /// Columns that hold an encrypted field's stored (sealed) values, opened where the rows
    /// become JSON (no SQL call per value).
    pub sealed: Vec<SealedColumn>,
}

/// A result column holding the stored values of an encrypted field, and the result column of
/// their records' ids (bound into each value as associated data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedColumn {
    /// The column's index among the record columns.
    pub column: usize,
    /// The index of the result column holding the record id (after the cursor keys).
    pub id: usize,
    pub sealed: Sealed,
}

/// The cursor of a page: after a full page, the last row's key columns (those after the record
/// columns) and the sort's signature, as [`encode_cursor`] writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub keys: usize,
    pub limit: i64,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageCount {
    /// `SELECT count(*)` of the matching records: its own statement, with the page's
    /// parameters, planned for the values of each call (it visits every matching row).
    Exact(String),
    /// The i-th computed value (an estimate).
    Computed(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed {
    /// Run `EXPLAIN (FORMAT JSON)` of this SQL and take the top plan's row estimate.
    EstimatedRows(String),
}

/// The parameters of the statement being compiled. Pieces of SQL are built in any order; each
/// value gets the next `$n` and its source is recorded at index n - 1.
#[derive(Debug, Default)]
pub struct Params(pub Vec<ParamSpec>);

impl Params {
    /// `$n::type` for the parameter.
    pub fn add(&mut self, p: ParamSpec) -> String {
        let n = self.0.len() + 1;
        let t = match p.conv {
            Conv::Array => PType::Array(Box::new(p.ptype.clone())).sql(),
            Conv::Contains | Conv::Prefix | Conv::Pattern => "text".into(),
            Conv::Json => "jsonb".into(),
            Conv::Limit(_) | Conv::Offset => "bigint".into(),
            Conv::Value => p.ptype.sql(),
        };
        self.0.push(p);
        format!("${n}::{t}")
    }
}

/// A page or group limit: a whole number from 1 to `max`.
/// The rows `EXPLAIN (FORMAT JSON)` estimates for a statement: its top plan's; on Citus, where
/// the coordinator's node of a distributed query estimates nothing, its tasks' remote plans'
/// (summed, and scaled up to the task count when only some tasks are shown).
pub fn estimated_rows(explain: &Value) -> f64 {
    let plan = &explain[0]["Plan"];
    let job = &plan["Distributed Query"]["Job"];
    if let Some(tasks) = job["Tasks"].as_array() {
        let rows: Vec<f64> = tasks
            .iter()
            .filter_map(|t| remote_rows(&t["Remote Plan"]))
            .collect();
        if !rows.is_empty() {
            let shown = rows.len() as f64;
            let total = job["Task Count"].as_f64().unwrap_or(shown).max(shown);
            return rows.iter().sum::<f64>() * total / shown;
        }
    }
    plan["Plan Rows"].as_f64().unwrap_or(0.0)
}

/// The top plan's rows in a task's "Remote Plan" (nested in arrays).
fn remote_rows(v: &Value) -> Option<f64> {
    match v {
        Value::Array(a) => a.iter().find_map(remote_rows),
        Value::Object(o) => o.get("Plan").and_then(|p| p["Plan Rows"].as_f64()),
        _ => None,
    }
}

pub fn limit_value(v: &Value, what: &str, max: i64) -> Result<i64> {
    let n = v.as_i64().filter(|n| *n >= 1).ok_or_else(|| {
        UdmError::invalid(format!(
            "{what} must be a whole number of at least 1, got {v}"
        ))
    })?;
    if n > max {
        return Err(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!("{what} {n} is above the limit of {max}"),
        )
        .hint("page through larger results with the cursor returned with each page"));
    }
    Ok(n)
}

/// The LIMIT clause's number. A limit is part of a query's shape, not a parameter: checked here
/// and written as an integer literal, so PostgreSQL plans for it (with a LIMIT parameter every
/// generic plan assumes a tenth of the rows, and a prepared page query is planned again on every
/// call). Page sizes are few, so the plan cache stays small.
pub fn limit_literal(
    obj: &Map<String, Value>,
    key: &str,
    max: i64,
    default: i64,
) -> Result<String> {
    match obj.get(key) {
        Some(v) if !v.is_null() => Ok(limit_value(v, &format!("\"{key}\""), max)?.to_string()),
        _ => Ok(default.to_string()),
    }
}

pub fn spec_param(ptr: &[Ptr], ptype: PType, conv: Conv, what: impl Into<String>) -> ParamSpec {
    ParamSpec {
        source: Source::Spec(ptr.to_vec()),
        ptype,
        conv,
        what: what.into(),
    }
}

fn follow<'a>(spec: &'a Value, ptr: &[Ptr]) -> Option<&'a Value> {
    let mut v = spec;
    for p in ptr {
        v = match p {
            Ptr::Key(k) => v.get(k)?,
            Ptr::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The values of a call, as SQL text in parameter order (None for NULL).
pub fn bind(spec: &Value, t: &Template) -> Result<Vec<Option<String>>> {
    let mut cursor: Option<Vec<Value>> = None;
    let mut out = Vec::with_capacity(t.params.len());
    for p in &t.params {
        let v = match &p.source {
            Source::Cursor(i) => {
                if cursor.is_none() {
                    cursor =
                        Some(decode_cursor(spec.get("cursor").unwrap_or(&Value::Null), None)?.0);
                }
                let keys = cursor.as_ref().expect("decoded");
                let v = keys
                    .get(*i)
                    .ok_or_else(|| bad_cursor("it has too few keys"))?;
                if v.is_null() {
                    out.push(None);
                    continue;
                }
                out.push(Some(
                    to_text(v, &p.ptype, "cursor")
                        .map_err(|_| bad_cursor("its keys do not fit this query"))?,
                ));
                continue;
            }
            Source::Spec(ptr) => follow(spec, ptr)
                .ok_or_else(|| UdmError::internal(format!("{}: value missing", p.what)))?,
        };
        let text = match p.conv {
            Conv::Value => to_text(v, &p.ptype, &p.what)?,
            Conv::Array => {
                let items = v.as_array().ok_or_else(|| {
                    UdmError::new(
                        SqlState::InvalidTextRepresentation,
                        format!("{}: expected an array, got {}", p.what, kind(v)),
                    )
                })?;
                to_text(
                    &Value::Array(items.clone()),
                    &PType::Array(Box::new(p.ptype.clone())),
                    &p.what,
                )?
            }
            Conv::Contains | Conv::Prefix | Conv::Pattern => {
                let s = v.as_str().ok_or_else(|| {
                    UdmError::new(
                        SqlState::InvalidTextRepresentation,
                        format!("{}: expected text, got {}", p.what, kind(v)),
                    )
                })?;
                crate::json::check_text(s, &p.what)?;
                match p.conv {
                    Conv::Contains => format!("%{}%", escape_like(s)),
                    Conv::Prefix => format!("{}%", escape_like(s)),
                    _ => s.to_string(),
                }
            }
            Conv::Json => v.to_string(),
            Conv::Limit(max) => limit_value(v, &p.what, max)?.to_string(),
            Conv::Offset => v
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    UdmError::invalid(format!(
                        "{} must be a whole number of at least 0, got {v}",
                        p.what
                    ))
                })?
                .to_string(),
        };
        out.push(Some(text));
    }
    Ok(out)
}

// ------------------------------------------------------------------ shape keys

/// Keys whose values are filter trees.
const FILTER_KEYS: &[&str] = &["filters", "having"];
/// Keys whose values are parameters.
/// Keys whose values are parameters: only their kind is part of a shape (a "limit" is part of
/// the shape, see `limit_literal`).
const VALUE_KEYS: &[&str] = &["offset", "search", "root", "id", "depth", "cards"];

/// What a value contributes to the shape: its kind, not its content (except where the kind
/// decides the SQL, e.g. an ISO date string in a json filter).
fn value_kind(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push('0'),
        Value::Bool(b) => out.push(if *b { 'T' } else { 'F' }),
        Value::Number(_) => out.push('n'),
        Value::String(s) => out.push(if parse_date(s).is_some() {
            'd'
        } else if crate::values::is_timestamp(s) {
            't'
        } else {
            's'
        }),
        Value::Array(items) => {
            out.push_str("a[");
            let mut kinds: Vec<String> = items
                .iter()
                .map(|i| {
                    let mut k = String::new();
                    value_kind(i, &mut k);
                    k
                })
                .collect();
            kinds.sort();
            kinds.dedup();
            out.push_str(&kinds.join(","));
            if items.is_empty() {
                out.push('e');
            }
            out.push(']');
        }
        Value::Object(_) => {
            out.push('o');
            out.push_str(&v.to_string());
        }
    }
}

fn filter_shape(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            for (k, val) in m {
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                match k.as_str() {
                    "and" | "or" => match val {
                        Value::Array(items) => {
                            out.push('[');
                            for i in items {
                                filter_shape(i, out);
                                out.push(',');
                            }
                            out.push(']');
                        }
                        other => value_kind(other, out),
                    },
                    "not" => filter_shape(val, out),
                    _ if filter::quantifiers(val).is_some() => {
                        for (q, sub) in val.as_object().into_iter().flatten() {
                            out.push_str(q);
                            filter_shape(sub, out);
                        }
                    }
                    _ => match val {
                        Value::Object(ops) if is_operator_object(ops) => {
                            out.push('{');
                            for (op, opv) in ops {
                                out.push_str(op);
                                out.push(':');
                                value_kind(opv, out);
                                out.push(',');
                            }
                            out.push('}');
                        }
                        other => value_kind(other, out),
                    },
                }
                out.push(',');
            }
            out.push('}');
        }
        other => value_kind(other, out),
    }
}

/// Keys whose values are specs of nested levels (`nested.<alias>`): shaped like a spec.
const NESTED_KEYS: &[&str] = &["nested"];

/// The shape of a spec: its structure with the values of filters, limits and searches reduced
/// to their kinds. `what` distinguishes query, aggregate and the views.
pub fn shape_key(what: &str, entity: &str, spec: &Value) -> String {
    let mut out = format!("{what}:{entity}:");
    match spec {
        Value::Object(m) => {
            for (k, v) in m {
                out.push_str(k);
                out.push('=');
                if FILTER_KEYS.contains(&k.as_str()) {
                    filter_shape(v, &mut out);
                } else if NESTED_KEYS.contains(&k.as_str()) && v.is_object() {
                    for (alias, sub) in v.as_object().into_iter().flatten() {
                        out.push_str(&serde_json::to_string(alias).unwrap_or_default());
                        out.push_str(&shape_key("(", "", sub));
                        out.push(')');
                    }
                } else if VALUE_KEYS.contains(&k.as_str()) {
                    value_kind(v, &mut out);
                } else if k == "cursor" {
                    match decode_cursor(v, None) {
                        Ok((keys, _)) => {
                            out.push_str("c[");
                            for key in keys {
                                out.push(if key.is_null() { '0' } else { 'v' });
                            }
                            out.push(']');
                        }
                        Err(_) => out.push_str("c!"),
                    }
                } else {
                    out.push_str(&v.to_string());
                }
                out.push(';');
            }
        }
        other => out.push_str(&other.to_string()),
    }
    out
}

// ------------------------------------------------------------------ cursors

fn bad_cursor(why: &str) -> UdmError {
    UdmError::invalid(format!("the cursor is not valid: {why}"))
        .hint("pass the next_cursor of the previous page unchanged, with the same sort")
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|x| *x == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes a cursor `{"k": [keys...], "s": signature}`; with `sig`, the signature must match.
pub fn decode_cursor(v: &Value, sig: Option<&str>) -> Result<(Vec<Value>, String)> {
    let s = v
        .as_str()
        .ok_or_else(|| bad_cursor("expected the string returned as next_cursor"))?;
    let bytes = b64_decode(s).ok_or_else(|| bad_cursor("it is not base64"))?;
    let j: Value = serde_json::from_slice(&bytes).map_err(|_| bad_cursor("it does not decode"))?;
    let keys = j
        .get("k")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| bad_cursor("it has no keys"))?;
    let found = j
        .get("s")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(sig) = sig {
        if found != sig {
            return Err(bad_cursor("it belongs to a query with another sort"));
        }
    }
    Ok((keys, found))
}

/// A cursor as pages return it, from serde values (for tests; the extension writes the same
/// shape from the row's jsonb values, `query::cursor_text`, and `decode_cursor` reads both).
pub fn encode_cursor(keys: &Value, sig: &str) -> String {
    b64_encode(
        serde_json::json!({"k": keys, "s": sig})
            .to_string()
            .as_bytes(),
    )
}

// ------------------------------------------------------------------ spec helpers

pub fn expect_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    crate::json::refuse_unknown_keys(obj, allowed, what)
}

pub fn spec_object<'a>(spec: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    if spec.is_null() {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        return Ok(EMPTY.get_or_init(Map::new));
    }
    crate::json::expect_object(spec, what)
}

/// Operators of the filter language.
pub const OPERATORS: &[&str] = &[
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "like",
    "ilike",
    "contains",
    "starts_with",
    "is_null",
    "between",
    "overlaps",
];

pub fn is_operator_object(m: &Map<String, Value>) -> bool {
    !m.is_empty() && m.keys().all(|k| OPERATORS.contains(&k.as_str()))
}

// ------------------------------------------------------------------ FROM clause and expressions

/// The FROM clause being built: the root table and de-duplicated LEFT JOINs, one per distinct
/// relation prefix (`category_id`, `category_id.parent_id`).
pub struct From<'m> {
    pub model: &'m dyn Model,
    pub root: String,
    joins: Vec<(String, String, ToOne, String)>, // prefix, alias, hop, parent alias
    subqueries: usize,
    /// Put in front of every alias (`t0`, `t1`, `f1`, …), so a FROM clause compiled inside
    /// another statement's sub-select (a quantified filter) cannot shadow the outer aliases.
    prefix: String,
}

impl<'m> From<'m> {
    pub fn new(model: &'m dyn Model, root: &str) -> Self {
        Self::with_prefix(model, root, "")
    }

    /// A FROM clause whose aliases all start with `prefix` (`q1_t0`, `q1_t1`, `q1_f1`).
    pub fn with_prefix(model: &'m dyn Model, root: &str, prefix: &str) -> Self {
        From {
            model,
            root: root.to_string(),
            joins: Vec::new(),
            subqueries: 0,
            prefix: prefix.to_string(),
        }
    }

    /// The alias of the root table (`t0` without a prefix).
    pub fn root_alias(&self) -> String {
        format!("{}t0", self.prefix)
    }

    /// The alias of the n-th sub-select of a kind (`f`, `fj`, `m`, `j`, `q`), with the prefix.
    pub fn sub_alias(&self, kind: &str, n: usize) -> String {
        format!("{}{kind}{n}", self.prefix)
    }

    pub fn table(&self, entity: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(self.model.schema()),
            quote_ident(entity)
        )
    }

    /// The alias of the entity a path's to-one hops reach, adding joins as needed.
    pub fn alias_for(&mut self, r: &Resolved) -> Result<String> {
        let mut parent = self.root_alias();
        for k in 0..r.to_one.len() {
            let prefix = r.join_prefix(k);
            if let Some((_, alias, _, _)) = self.joins.iter().find(|j| j.0 == prefix) {
                parent = alias.clone();
                continue;
            }
            if self.joins.len() >= MAX_JOINS {
                return Err(UdmError::new(
                    SqlState::ProgramLimitExceeded,
                    format!("the query follows more than {MAX_JOINS} relations"),
                )
                .hint("ask for fewer related fields at once"));
            }
            let alias = format!("{}t{}", self.prefix, self.joins.len() + 1);
            self.joins
                .push((prefix, alias.clone(), r.to_one[k].clone(), parent));
            parent = alias;
        }
        Ok(parent)
    }

    pub fn next_subquery(&mut self) -> Result<usize> {
        self.subqueries += 1;
        if self.subqueries > MAX_TO_MANY {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!("the query asks for more than {MAX_TO_MANY} lists of related records"),
            ));
        }
        Ok(self.subqueries)
    }

    /// `FROM root t0 LEFT JOIN ...` (only the joins listed in `used`, in order; all when None).
    pub fn sql(&self, used: Option<&[String]>) -> String {
        let mut s = format!("{} {}", self.table(&self.root), self.root_alias());
        for (prefix, alias, hop, parent) in &self.joins {
            if let Some(used) = used {
                let needed = used
                    .iter()
                    .any(|u| u == prefix || u.starts_with(&format!("{prefix}.")));
                if !needed {
                    continue;
                }
            }
            s.push_str(&format!(
                " LEFT JOIN {} {alias} ON {alias}.\"id\" = {parent}.{}",
                self.table(&hop.target),
                quote_ident(&hop.column)
            ));
        }
        s
    }

    /// Like `sql`, with the root table replaced by `root_sql` (e.g. a record image turned back
    /// into a row with `jsonb_populate_record`).
    pub fn sql_with_root(&self, root_sql: &str) -> String {
        let own = format!("{} {}", self.table(&self.root), self.root_alias());
        let all = self.sql(None);
        format!("{root_sql} {}{}", self.root_alias(), &all[own.len()..])
    }

    /// The FROM clause as the right side of a JOIN: parenthesised when it has joins itself.
    pub fn nested_sql(&self) -> String {
        if self.joins.is_empty() {
            self.sql(None)
        } else {
            format!("({})", self.sql(None))
        }
    }

    pub fn join_count(&self) -> usize {
        self.joins.len()
    }
}

/// The SQL of a leaf at `alias`: the typed column, or the json value (`->`) for json paths.
pub fn leaf_json(alias: &str, leaf: &Leaf) -> String {
    match leaf {
        Leaf::Column {
            column,
            sealed: Some(sealed),
            ..
        } => sealed.decrypt_sql(alias, column),
        Leaf::Column { column, .. } => format!("{alias}.{}", quote_ident(column)),
        Leaf::Json { column, keys } => {
            let mut s = format!("{alias}.{}", quote_ident(column));
            for k in keys {
                s = format!("({s} -> {})", quote_literal(k));
            }
            s
        }
    }
}

/// A json path as text (`->>` at the end).
pub fn leaf_text(alias: &str, leaf: &Leaf) -> String {
    match leaf {
        Leaf::Json { column, keys } if !keys.is_empty() => {
            let mut s = format!("{alias}.{}", quote_ident(column));
            for (i, k) in keys.iter().enumerate() {
                let op = if i + 1 == keys.len() { "->>" } else { "->" };
                s = format!("({s} {op} {})", quote_literal(k));
            }
            s
        }
        other => leaf_json(alias, other),
    }
}

/// The subquery that lists a to-many path's values for the row at `outer` (a JSON array).
pub fn to_many_array(from: &mut From, outer: &str, r: &Resolved) -> Result<String> {
    let (hop, after) = r.to_many.as_ref().expect("to-many path");
    let n = from.next_subquery()?;
    let x = from.sub_alias("m", n);
    let (from_sql, cond) = hop_from(from, hop, &x, &from.sub_alias("j", n), outer);
    let mut sql = format!("FROM {from_sql}");
    let mut alias = x.clone();
    for (i, h) in after.iter().enumerate() {
        let a = format!("{x}_{i}");
        sql.push_str(&format!(
            " LEFT JOIN {} {a} ON {a}.\"id\" = {alias}.{}",
            from.table(&h.target),
            quote_ident(&h.column)
        ));
        alias = a;
    }
    Ok(format!(
        "(SELECT coalesce(jsonb_agg({}), '[]'::jsonb) {sql} WHERE {cond})",
        leaf_json(&alias, &r.leaf)
    ))
}

/// The FROM clause of a hop to many records (the records as `x`, a junction as `j`) and the
/// condition linking it to the record at `outer`.
pub fn hop_from(from: &From, hop: &ToMany, x: &str, j: &str, outer: &str) -> (String, String) {
    match hop {
        ToMany::Junction { junction, target } => (
            format!(
                "{} {j} JOIN {} {x} ON {x}.\"id\" = {j}.\"target_id\"",
                from.table(junction),
                from.table(target)
            ),
            format!("{j}.\"source_id\" = {outer}.\"id\""),
        ),
        ToMany::Reverse { source, column } => (
            format!("{} {x}", from.table(source)),
            format!("{x}.{} = {outer}.\"id\"", quote_ident(column)),
        ),
    }
}

/// `jsonb_build_object(...)` for key/expression pairs, in chunks (a function takes at most 100
/// arguments).
pub fn json_object(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "'{}'::jsonb".into();
    }
    let chunks: Vec<String> = pairs
        .chunks(50)
        .map(|c| {
            let args: Vec<String> = c
                .iter()
                .map(|(k, e)| format!("{}, {e}", quote_literal(k)))
                .collect();
            format!("jsonb_build_object({})", args.join(", "))
        })
        .collect();
    chunks.join(" || ")
}

/// The columns of a spec (`columns`, or every readable field and the system columns).
pub fn columns_of(
    model: &dyn Model,
    entity: &str,
    spec: &Map<String, Value>,
) -> Result<Vec<String>> {
    match spec.get("columns") {
        None | Some(Value::Null) => {
            let e = model.entity(entity).expect("checked");
            let mut cols: Vec<String> = crate::ident::SYSTEM_COLUMNS
                .iter()
                .map(|s| s.to_string())
                .collect();
            cols.extend(
                e.fields
                    .iter()
                    .filter(|f| {
                        f.ftype != crate::types::FieldType::Password
                            && f.has_column()
                            && !model.hidden(entity, &f.name)
                    })
                    .map(|f| f.name.clone()),
            );
            Ok(cols)
        }
        Some(v) => {
            let arr = crate::json::expect_array(v, "\"columns\"")?;
            if arr.is_empty() {
                return Err(UdmError::invalid("\"columns\" is empty")
                    .hint("name at least one path, or leave \"columns\" out for all fields"));
            }
            if arr.len() > MAX_COLUMNS {
                return Err(UdmError::new(
                    SqlState::ProgramLimitExceeded,
                    format!("more than {MAX_COLUMNS} columns"),
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for (i, c) in arr.iter().enumerate() {
                let s = crate::json::expect_str(c, &format!("columns[{i}]"))?;
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
            Ok(out)
        }
    }
}

/// The row object for `columns`: to-one paths through joins, to-many paths as nested arrays.
pub fn row_object(from: &mut From, entity: &str, columns: &[String]) -> Result<String> {
    Ok(json_object(&row_columns(from, entity, columns)?))
}

/// The (key, expression) of each of `columns`, as `row_object` puts them together.
pub fn row_columns(
    from: &mut From,
    entity: &str,
    columns: &[String],
) -> Result<Vec<(String, String)>> {
    Ok(row_columns_sealed(from, entity, columns, false)?.0)
}

/// `row_columns`; with `raw`, an encrypted field's column (not inside a list of related
/// records) is selected as stored, and listed with the expression of its record's id: (its
/// index among the columns, the id's SQL, the field).
#[allow(clippy::type_complexity)]
pub fn row_columns_sealed(
    from: &mut From,
    entity: &str,
    columns: &[String],
    raw: bool,
) -> Result<(Vec<(String, String)>, Vec<(usize, String, Sealed)>)> {
    let mut pairs = Vec::with_capacity(columns.len());
    let mut sealed = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let r = resolve(from.model, entity, c)?;
        let expr = if r.to_many.is_some() {
            let outer = from.alias_for(&r)?;
            to_many_array(from, &outer, &r)?
        } else {
            let alias = from.alias_for(&r)?;
            match &r.leaf {
                Leaf::Column {
                    column,
                    sealed: Some(s),
                    ..
                } if raw => {
                    sealed.push((i, format!("{alias}.\"id\""), s.clone()));
                    format!("{alias}.{}", quote_ident(column))
                }
                leaf => leaf_json(&alias, leaf),
            }
        };
        pairs.push((c.clone(), expr));
    }
    Ok((pairs, sealed))
}

/// A sort key: expression, direction, where NULLs go, and whether it can be NULL at all.
#[derive(Debug, Clone)]
pub struct SortKey {
    pub path: String,
    pub expr: String,
    pub ptype: PType,
    pub desc: bool,
    pub nulls_first: bool,
    pub not_null: bool,
}

/// Parses `sort`: `"price"`, `"-price"`, or `{"path", "direction": "asc"|"desc", "nulls": "first"|"last"}`.
pub fn sort_keys(from: &mut From, entity: &str, sort: Option<&Value>) -> Result<Vec<SortKey>> {
    let Some(sort) = sort.filter(|s| !s.is_null()) else {
        return Ok(Vec::new());
    };
    let items: Vec<Value> = match sort {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("sort[{i}]");
        let (path, desc, nulls) = match item {
            Value::String(s) => match s.strip_prefix('-') {
                Some(p) => (p.to_string(), true, None),
                None => (s.clone(), false, None),
            },
            Value::Object(o) => {
                expect_keys(o, &["path", "direction", "nulls"], &what)?;
                let path = crate::json::expect_str(
                    o.get("path").unwrap_or(&Value::Null),
                    &format!("{what}.path"),
                )?
                .to_string();
                let desc = match o.get("direction").and_then(Value::as_str) {
                    None | Some("asc") => false,
                    Some("desc") => true,
                    Some(other) => {
                        return Err(UdmError::invalid(format!(
                            "{what}: direction \"{}\" is not known",
                            printable(other)
                        ))
                        .hint("direction is \"asc\" or \"desc\""))
                    }
                };
                let nulls = match o.get("nulls").and_then(Value::as_str) {
                    None => None,
                    Some("first") => Some(true),
                    Some("last") => Some(false),
                    Some(other) => {
                        return Err(UdmError::invalid(format!(
                            "{what}: nulls \"{}\" is not known",
                            printable(other)
                        ))
                        .hint("nulls is \"first\" or \"last\""))
                    }
                };
                (path, desc, nulls)
            }
            other => {
                return Err(UdmError::invalid(format!(
                    "{what} must be a path or an object, got {}",
                    kind(other)
                )))
            }
        };
        let r = resolve(from.model, entity, &path)?;
        if r.to_many.is_some() {
            return Err(UdmError::invalid(format!(
                "{what}: \"{path}\" leads to several records and cannot be sorted by"
            ))
            .hint("sort by a field of this entity or of a many-to-one relation"));
        }
        let alias = from.alias_for(&r)?;
        let (ptype, not_null) = match &r.leaf {
            Leaf::Column {
                sealed: Some(s), ..
            } => return Err(path::sealed_refused(&path, "sorted by", s)),
            Leaf::Column { ptype, column, .. } => {
                let nn = r.to_one.is_empty() && column_not_null(from.model, entity, column);
                (ptype.clone(), nn)
            }
            Leaf::Json { .. } => (PType::Jsonb, false),
        };
        if matches!(ptype, PType::Array(_) | PType::Ref) {
            return Err(UdmError::invalid(format!(
                "{what}: \"{path}\" is a list and cannot be sorted by"
            )));
        }
        out.push(SortKey {
            path: path.clone(),
            expr: leaf_json(&alias, &r.leaf),
            ptype,
            desc,
            nulls_first: nulls.unwrap_or(desc),
            not_null,
        });
    }
    Ok(out)
}

fn column_not_null(model: &dyn Model, entity: &str, column: &str) -> bool {
    matches!(column, "id" | "created_at" | "updated_at" | "_version")
        || model
            .entity(entity)
            .and_then(|e| e.fields.iter().find(|f| f.column == column))
            .is_some_and(|f| f.required)
}

/// `ORDER BY` text for sort keys plus the `id` tie-breaker.
pub fn order_by(keys: &[SortKey], tie_breaker: bool) -> String {
    let mut parts: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{} {} NULLS {}",
                k.expr,
                if k.desc { "DESC" } else { "ASC" },
                if k.nulls_first { "FIRST" } else { "LAST" }
            )
        })
        .collect();
    if tie_breaker && !keys.iter().any(|k| k.expr == "t0.\"id\"") {
        parts.push("t0.\"id\" ASC".into());
    }
    parts.join(", ")
}

/// The signature a cursor carries: the sort it was made for.
pub fn sort_signature(entity: &str, keys: &[SortKey]) -> String {
    let text: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}:{}", k.path, k.desc, k.nulls_first))
        .collect();
    format!(
        "{:016x}",
        fnv1a(format!("{entity}|{}", text.join("|")).as_bytes())
    )
}

/// The keyset condition "after the cursor's row", with cursor values as parameters. When every
/// key is NOT NULL and all go the same way, a row comparison that a btree index can use.
pub fn keyset_condition(params: &mut Params, keys: &[SortKey], cursor: &[Value]) -> Result<String> {
    let mut all: Vec<SortKey> = keys.to_vec();
    if !all.iter().any(|k| k.expr == "t0.\"id\"") {
        all.push(SortKey {
            path: "id".into(),
            expr: "t0.\"id\"".into(),
            ptype: PType::Uuid,
            desc: false,
            nulls_first: false,
            not_null: true,
        });
    }
    if cursor.len() != all.len() {
        return Err(bad_cursor("it was made for another sort"));
    }
    let same_dir = all.iter().all(|k| k.desc == all[0].desc);
    if same_dir && all.iter().all(|k| k.not_null) && cursor.iter().all(|v| !v.is_null()) {
        let lhs: Vec<&str> = all.iter().map(|k| k.expr.as_str()).collect();
        let rhs: Vec<String> = all
            .iter()
            .enumerate()
            .map(|(i, k)| cursor_param(params, i, k))
            .collect();
        return Ok(format!(
            "({}) {} ({})",
            lhs.join(", "),
            if all[0].desc { "<" } else { ">" },
            rhs.join(", ")
        ));
    }
    Ok(keyset_expanded(params, &all, cursor, 0))
}

fn cursor_param(params: &mut Params, i: usize, k: &SortKey) -> String {
    params.add(ParamSpec {
        source: Source::Cursor(i),
        ptype: k.ptype.clone(),
        conv: Conv::Value,
        what: "cursor".into(),
    })
}

fn keyset_expanded(params: &mut Params, keys: &[SortKey], cursor: &[Value], i: usize) -> String {
    let k = &keys[i];
    let last = i + 1 == keys.len();
    let cmp = if k.desc { "<" } else { ">" };
    let e = &k.expr;
    if cursor[i].is_null() {
        return if k.nulls_first {
            if last {
                format!("({e} IS NOT NULL)")
            } else {
                format!(
                    "({e} IS NOT NULL OR ({e} IS NULL AND {}))",
                    keyset_expanded(params, keys, cursor, i + 1)
                )
            }
        } else if last {
            "false".into()
        } else {
            format!(
                "({e} IS NULL AND {})",
                keyset_expanded(params, keys, cursor, i + 1)
            )
        };
    }
    let p = cursor_param(params, i, k);
    let mut s = format!("({e} {cmp} {p}");
    if !k.nulls_first && !k.not_null {
        s.push_str(&format!(" OR {e} IS NULL"));
    }
    if !last {
        let p2 = cursor_param(params, i, k);
        s.push_str(&format!(
            " OR ({e} = {p2} AND {})",
            keyset_expanded(params, keys, cursor, i + 1)
        ));
    }
    s.push(')');
    s
}

/// The known option names of a spec, for errors.
pub fn known(names: &[&str]) -> String {
    name_list(names.iter().copied())
}

/// Reads an optional boolean option.
pub fn opt_bool(spec: &Map<String, Value>, key: &str) -> Result<bool> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => crate::json::expect_bool(v, &format!("\"{key}\"")),
    }
}

pub type Pairs = BTreeMap<String, String>;

/// Compiles a filter (the `filters` syntax of queries) into a statement that tells whether a
/// record image matches: `SELECT EXISTS (...)` over the image as a row of the entity, with the
/// filter's values as parameters and the image (jsonb) as the last one. Used by change-event
/// subscriptions.
///
/// `image` gives the SQL of the image from the placeholder of the last parameter (`$n`), which
/// the caller binds after the condition's own parameters (for example an audit row's id, whose
/// image a sub-select reads: the image then never leaves the database).
pub fn image_condition(
    model: &dyn Model,
    entity: &str,
    condition: &Value,
    image: &dyn Fn(&str) -> String,
) -> Result<Template> {
    let mut from = From::new(model, entity);
    let mut params = Params::default();
    let mut spec = Map::new();
    spec.insert("filters".into(), condition.clone());
    let (cond, _) = filter::where_clause(&mut from, &mut params, entity, &spec)?;
    let img = image(&format!("${}", params.0.len() + 1));
    let root = format!("jsonb_populate_record(NULL::{}, {img})", from.table(entity));
    Ok(Template {
        sql: format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE {})",
            from.sql_with_root(&root),
            cond.unwrap_or_else(|| "true".into())
        ),
        params: params.0,
        computed: vec![],
        plan_per_call: false,
        rows: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimated_rows_of_a_plan_and_of_a_distributed_one() {
        let plain = json!([{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 42}}]);
        assert_eq!(estimated_rows(&plain), 42.0);
        // Citus: the coordinator's custom scan estimates 0; its task's remote plan knows
        let task = |rows: i64| json!({"Node": "host=w1", "Remote Plan": [[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": rows}}]]});
        let citus = |count: i64, tasks: Vec<Value>| {
            json!([{"Plan": {"Node Type": "Custom Scan", "Plan Rows": 0,
                "Distributed Query": {"Job": {"Task Count": count, "Tasks Shown": "All", "Tasks": tasks}}}}])
        };
        assert_eq!(estimated_rows(&citus(1, vec![task(4)])), 4.0);
        assert_eq!(estimated_rows(&citus(2, vec![task(4), task(6)])), 10.0);
        // one task of 32 shown: scaled up
        assert_eq!(estimated_rows(&citus(32, vec![task(10)])), 320.0);
        // no remote plan: the top estimate
        assert_eq!(estimated_rows(&citus(1, vec![json!({"Node": "x"})])), 0.0);
        assert_eq!(estimated_rows(&Value::Null), 0.0);
    }

    #[test]
    fn base64_round_trip() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "{\"k\":[1,\"x\"],\"s\":\"00ff\"}",
        ] {
            assert_eq!(b64_decode(&b64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
    }

    #[test]
    fn cursors_carry_their_sort() {
        let c = encode_cursor(
            &json!([12.5, "6f9619ff-8b86-d011-b42d-00c04fc964ff"]),
            "abc",
        );
        let (keys, sig) = decode_cursor(&json!(c), Some("abc")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(sig, "abc");
        let e = decode_cursor(&json!(c), Some("other")).unwrap_err();
        assert!(e.message.contains("another sort"));
        assert!(decode_cursor(&json!("%%%"), None).is_err());
        assert!(decode_cursor(&json!(5), None).is_err());
    }

    #[test]
    fn shape_ignores_values_but_not_structure() {
        let a = shape_key(
            "q",
            "p",
            &json!({"columns": ["name"], "filters": {"status": "active", "price": {"gt": 5}}, "limit": 10}),
        );
        let b = shape_key(
            "q",
            "p",
            &json!({"columns": ["name"], "filters": {"status": "retired", "price": {"gt": 99}}, "limit": 10}),
        );
        assert_eq!(a, b);
        let limit = shape_key(
            "q",
            "p",
            &json!({"columns": ["name"], "filters": {"status": "retired", "price": {"gt": 99}}, "limit": 50}),
        );
        assert_ne!(a, limit, "the limit is part of the plan");
        let c = shape_key(
            "q",
            "p",
            &json!({"columns": ["price"], "filters": {"status": "active", "price": {"gt": 5}}, "limit": 10}),
        );
        assert_ne!(a, c, "columns are structure");
        let d = shape_key(
            "q",
            "p",
            &json!({"columns": ["name"], "filters": {"status": null, "price": {"gt": 5}}, "limit": 10}),
        );
        assert_ne!(a, d, "null is structure");
        let e = shape_key(
            "q",
            "p",
            &json!({"columns": ["name"], "filters": {"status": "active", "price": {"lt": 5}}, "limit": 10}),
        );
        assert_ne!(a, e, "operators are structure");
        let f = shape_key(
            "q",
            "p",
            &json!({"filters": {"metadata.made": "2024-01-01"}}),
        );
        let g = shape_key("q", "p", &json!({"filters": {"metadata.made": "Apple"}}));
        assert_ne!(f, g, "a date string compares as a date");
        let h = shape_key("q", "p", &json!({"filters": {"price": {"in": [1, 2]}}}));
        let i = shape_key("q", "p", &json!({"filters": {"price": {"in": [3, 4, 5]}}}));
        assert_eq!(h, i, "lists of any length share a shape");
    }

    #[test]
    fn bind_checks_values_with_the_places_named() {
        let t = Template {
            sql: String::new(),
            params: vec![
                spec_param(
                    &[Ptr::Key("filters".into()), Ptr::Key("price".into())],
                    PType::Numeric,
                    Conv::Value,
                    "filter \"price\"",
                ),
                spec_param(
                    &[Ptr::Key("limit".into())],
                    PType::BigInt,
                    Conv::Limit(MAX_LIMIT),
                    "\"limit\"",
                ),
                spec_param(
                    &[Ptr::Key("q".into())],
                    PType::Text,
                    Conv::Contains,
                    "\"q\"",
                ),
            ],
            computed: vec![],
            plan_per_call: false,
            rows: None,
        };
        let ok = bind(
            &json!({"filters": {"price": 5}, "limit": 20, "q": "50%_off"}),
            &t,
        )
        .unwrap();
        assert_eq!(
            ok,
            vec![
                Some("5".into()),
                Some("20".into()),
                Some("%50\\%\\_off%".into())
            ]
        );
        let e = bind(
            &json!({"filters": {"price": "x"}, "limit": 20, "q": ""}),
            &t,
        )
        .unwrap_err();
        assert_eq!(e.message, "filter \"price\": expected a number, got \"x\"");
        let e = bind(
            &json!({"filters": {"price": 1}, "limit": 5000, "q": ""}),
            &t,
        )
        .unwrap_err();
        assert_eq!(e.state, SqlState::ProgramLimitExceeded);
    }
}
