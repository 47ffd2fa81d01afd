//! Filters: `{"status": "active", "metadata.brand": "Apple"}` (equality shorthand), the operator
//! form `{"price": {"gte": 10, "lt": 100}}`, and `and` / `or` / `not`. Any path usable as a
//! column is usable here; a path to many records means "some of them match" (EXISTS).
//! Values of json paths compare by their JSON type: numbers as numbers, ISO dates as dates.

use super::path::{junction_back, Leaf, Resolved, Seg, ToMany};
use super::{
    hop_from, is_operator_object, leaf_json, leaf_text, spec_param, Conv, From, Params, Ptr,
};
use super::{MAX_FILTER_DEPTH, MAX_FILTER_TERMS, OPERATORS};
use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{printable, quote_ident, quote_literal};
use crate::json::kind;
use crate::values::{parse_date, PType};
use serde_json::{Map, Value};

pub struct Filters<'a, 'm> {
    pub from: &'a mut From<'m>,
    pub params: &'a mut Params,
    pub entity: String,
    terms: usize,
    /// Join prefixes the filters use (a count query needs only those).
    pub used_prefixes: Vec<String>,
}

fn op_error(path: &str, op: &str, t: &str, valid: &[&str]) -> UdmError {
    UdmError::new(
        SqlState::DatatypeMismatch,
        format!(
            "filter \"{}\": operator \"{op}\" does not apply to {t}",
            printable(path)
        ),
    )
    .hint(format!(
        "operators for {t} are {}",
        name_list(valid.iter().copied())
    ))
}

const ORDERED_OPS: &[&str] = &[
    "eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "between", "is_null",
];
const TEXT_OPS: &[&str] = &[
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "between",
    "like",
    "ilike",
    "contains",
    "starts_with",
    "is_null",
];
const EQ_OPS: &[&str] = &["eq", "neq", "in", "not_in", "is_null"];
const ARRAY_OPS: &[&str] = &["contains", "overlaps", "is_null"];
const JSON_OPS: &[&str] = &["eq", "neq", "contains", "is_null"];

fn type_word(t: &PType) -> &'static str {
    match t {
        PType::Text => "text",
        PType::Numeric | PType::Float | PType::Integer | PType::BigInt | PType::SmallInt => {
            "numbers"
        }
        PType::Boolean => "booleans",
        PType::Date | PType::Timestamp | PType::Time | PType::Interval => "dates and times",
        PType::Uuid => "ids",
        PType::Jsonb => "json",
        PType::Ref => "references",
        PType::Array(_) => "lists",
    }
}

fn ops_for(t: &PType) -> &'static [&'static str] {
    match t {
        PType::Text => TEXT_OPS,
        PType::Boolean | PType::Uuid | PType::Ref => EQ_OPS,
        PType::Jsonb => JSON_OPS,
        PType::Array(_) => ARRAY_OPS,
        _ => ORDERED_OPS,
    }
}

fn sql_op(op: &str) -> &'static str {
    match op {
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        _ => "=",
    }
}

/// The JSON type a value asks a json path to be compared as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonAs {
    Number,
    Text,
    Date,
    Timestamp,
    Boolean,
    Json,
}

fn json_as(v: &Value) -> JsonAs {
    match v {
        Value::Number(_) => JsonAs::Number,
        Value::Bool(_) => JsonAs::Boolean,
        Value::String(s) if parse_date(s).is_some() => JsonAs::Date,
        Value::String(s) if crate::values::is_timestamp(s) => JsonAs::Timestamp,
        Value::String(_) => JsonAs::Text,
        Value::Array(items) => items.first().map_or(JsonAs::Text, json_as),
        _ => JsonAs::Json,
    }
}

impl<'a, 'm> Filters<'a, 'm> {
    pub fn new(from: &'a mut From<'m>, params: &'a mut Params, entity: &str) -> Self {
        Filters {
            from,
            params,
            entity: entity.to_string(),
            terms: 0,
            used_prefixes: Vec::new(),
        }
    }

    /// The SQL condition of a filter tree at `ptr` (None when empty).
    pub fn compile(&mut self, v: &Value, ptr: Vec<Ptr>) -> Result<Option<String>> {
        self.node(v, ptr, 0)
    }

    fn node(&mut self, v: &Value, ptr: Vec<Ptr>, depth: usize) -> Result<Option<String>> {
        if depth > MAX_FILTER_DEPTH {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!("filters nest deeper than {MAX_FILTER_DEPTH} levels"),
            ));
        }
        let obj = match v {
            Value::Null => return Ok(None),
            Value::Object(o) => o,
            other => {
                return Err(UdmError::invalid(format!(
                    "filters must be an object, got {}",
                    kind(other)
                ))
                .hint("write {\"status\": \"active\"} or {\"price\": {\"gt\": 10}}"))
            }
        };
        let mut parts = Vec::new();
        for (key, val) in obj {
            let mut p = ptr.clone();
            p.push(Ptr::Key(key.clone()));
            match key.as_str() {
                "and" | "or" => {
                    let items = val.as_array().ok_or_else(|| {
                        UdmError::invalid(format!(
                            "\"{key}\" takes an array of filters, got {}",
                            kind(val)
                        ))
                    })?;
                    let mut sub = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let mut pi = p.clone();
                        pi.push(Ptr::Index(i));
                        if let Some(c) = self.node(item, pi, depth + 1)? {
                            sub.push(c);
                        }
                    }
                    if sub.is_empty() {
                        parts.push(if key == "and" {
                            "true".into()
                        } else {
                            "false".into()
                        });
                    } else {
                        parts.push(format!(
                            "({})",
                            sub.join(if key == "and" { " AND " } else { " OR " })
                        ));
                    }
                }
                "not" => {
                    if let Some(c) = self.node(val, p, depth + 1)? {
                        parts.push(format!("(NOT {c})"));
                    }
                }
                path => parts.push(self.path_filter(path, val, p, depth)?),
            }
        }
        Ok((!parts.is_empty()).then(|| parts.join(" AND ")))
    }

    fn path_filter(
        &mut self,
        path: &str,
        v: &Value,
        ptr: Vec<Ptr>,
        depth: usize,
    ) -> Result<String> {
        self.terms += 1;
        if self.terms > MAX_FILTER_TERMS {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!("more than {MAX_FILTER_TERMS} filter terms"),
            ));
        }
        if let Some(q) = quantifiers(v) {
            return self.quantified(path, q, ptr, depth);
        }
        let r = super::resolve(self.from.model, &self.entity, path)?;
        if let Some((hop, after)) = &r.to_many {
            let outer = self.from.alias_for(&r)?;
            self.note_prefixes(&r);
            let n = self.from.next_subquery()?;
            let x = self.from.sub_alias("f", n);
            let (mut from_sql, link) =
                hop_from(self.from, hop, &x, &self.from.sub_alias("fj", n), &outer);
            let mut alias = x.clone();
            for (i, h) in after.iter().enumerate() {
                let a = format!("{x}_{i}");
                from_sql.push_str(&format!(
                    " LEFT JOIN {} {a} ON {a}.\"id\" = {alias}.{}",
                    self.from.table(&h.target),
                    quote_ident(&h.column)
                ));
                alias = a;
            }
            let cond = self.leaf_filter(&r, &alias, v, ptr)?;
            return Ok(format!(
                "EXISTS (SELECT 1 FROM {from_sql} WHERE {link} AND {cond})"
            ));
        }
        let alias = self.from.alias_for(&r)?;
        self.note_prefixes(&r);
        self.leaf_filter(&r, &alias, v, ptr)
    }

    /// `{"some" | "every" | "none": {filters}}` on a path to many records: the sub-filter is
    /// relative to each related record and holds for one of them (`EXISTS`), for each of them
    /// (`NOT EXISTS … IS NOT TRUE`: also when there is none), or for none (`NOT EXISTS`).
    fn quantified(
        &mut self,
        path: &str,
        q: &Map<String, Value>,
        ptr: Vec<Ptr>,
        depth: usize,
    ) -> Result<String> {
        let (outer, hop) = self.records_hop(path)?;
        let mut parts = Vec::with_capacity(q.len());
        for (k, sub) in q {
            let n = self.from.next_subquery()?;
            let prefix = format!("{}_", self.from.sub_alias("q", n));
            let mut sub_from = From::with_prefix(self.from.model, hop.target(), &prefix);
            let mut p = ptr.clone();
            p.push(Ptr::Key(k.clone()));
            let cond = {
                let mut f = Filters::new(&mut sub_from, self.params, hop.target());
                f.terms = self.terms;
                let c = f.node(sub, p, depth + 1)?;
                self.terms = f.terms;
                c
            };
            let j = self.from.sub_alias("qj", n);
            let (from_sql, link) = hop.sql_from(&sub_from, &j, &outer);
            let exists = |c: &str| format!("EXISTS (SELECT 1 FROM {from_sql} WHERE {link}{c})");
            let and = |c: Option<String>| c.map(|c| format!(" AND {c}")).unwrap_or_default();
            parts.push(match (k.as_str(), cond) {
                ("some", c) => exists(&and(c)),
                ("none", c) => format!("(NOT {})", exists(&and(c))),
                (_, None) => "true".into(),
                (_, Some(c)) => format!("(NOT {})", exists(&format!(" AND ({c}) IS NOT TRUE"))),
            });
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            format!("({})", parts.join(" AND "))
        })
    }

    /// The alias of the record a quantified path starts from, and its hop to the related
    /// records: a path udm resolves to many records (`product[category_id]`, `tags`), or a
    /// many-to-many relation followed backwards (`product[tags]` from a tag).
    fn records_hop(&mut self, path: &str) -> Result<(String, RecordsHop)> {
        let model = self.from.model;
        let not_records = || {
            UdmError::invalid(format!(
                "filter \"{}\": \"some\", \"every\" and \"none\" apply to a path that ends at related records",
                printable(path)
            ))
            .hint("write e.g. {\"product[category_id]\": {\"some\": {\"status\": \"active\"}}} or {\"tags\": {\"none\": {\"name\": \"old\"}}}")
        };
        let resolved = super::resolve(model, &self.entity, path);
        if let Ok(r) = &resolved {
            let (hop, after) = r.to_many.as_ref().ok_or_else(not_records)?;
            let at_records = after.is_empty()
                && matches!(&r.leaf, Leaf::Column { column, .. } if column == "id")
                && !path.ends_with(".id");
            if !at_records {
                return Err(not_records());
            }
            let outer = self.from.alias_for(r)?;
            self.note_prefixes(r);
            return Ok((outer, RecordsHop::Path(hop.clone())));
        }
        let (prefix, last) = match path.rsplit_once('.') {
            Some((p, l)) => (format!("{p}.id"), l),
            None => ("id".to_string(), path),
        };
        let back = match (
            super::path::parse(last),
            super::resolve(model, &self.entity, &prefix),
        ) {
            (Ok(segs), Ok(r)) if r.to_many.is_none() => match segs.as_slice() {
                [Seg::Reverse { entity, field }] => {
                    let at = r
                        .to_one
                        .last()
                        .map_or(self.entity.as_str(), |h| h.target.as_str());
                    junction_back(model, at, entity, field.as_deref())
                        .map(|(src, j)| (r, src.slug.clone(), j))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((r, source, junction)) = back else {
            return Err(resolved.err().unwrap_or_else(not_records));
        };
        let outer = self.from.alias_for(&r)?;
        self.note_prefixes(&r);
        Ok((outer, RecordsHop::Back { junction, source }))
    }

    fn note_prefixes(&mut self, r: &Resolved) {
        for k in 0..r.to_one.len() {
            let p = r.join_prefix(k);
            if !self.used_prefixes.contains(&p) {
                self.used_prefixes.push(p);
            }
        }
    }

    fn leaf_filter(
        &mut self,
        r: &Resolved,
        alias: &str,
        v: &Value,
        ptr: Vec<Ptr>,
    ) -> Result<String> {
        match v {
            Value::Object(ops) if is_operator_object(ops) => {
                let mut conds = Vec::new();
                for (op, opv) in ops {
                    let mut p = ptr.clone();
                    p.push(Ptr::Key(op.clone()));
                    conds.push(self.op(r, alias, op, opv, p)?);
                }
                Ok(if conds.len() == 1 {
                    conds.remove(0)
                } else {
                    format!("({})", conds.join(" AND "))
                })
            }
            Value::Object(m)
                if !matches!(r.leaf, Leaf::Json { .. })
                    && !matches!(
                        &r.leaf,
                        Leaf::Column {
                            ptype: PType::Jsonb | PType::Ref,
                            ..
                        }
                    ) =>
            {
                let unknown: Vec<&String> = m
                    .keys()
                    .filter(|k| !OPERATORS.contains(&k.as_str()))
                    .collect();
                Err(UdmError::invalid(format!(
                    "filter \"{}\": unknown operator {}",
                    printable(&r.text),
                    name_list(unknown.iter().map(|s| s.as_str()))
                ))
                .hint(format!(
                    "operators are {}",
                    name_list(OPERATORS.iter().copied())
                )))
            }
            Value::Null => self.op(r, alias, "is_null", &Value::Bool(true), ptr),
            Value::Array(_)
                if !matches!(
                    &r.leaf,
                    Leaf::Column {
                        ptype: PType::Array(_) | PType::Jsonb,
                        ..
                    }
                ) =>
            {
                self.op(r, alias, "in", v, ptr)
            }
            _ => self.op(r, alias, "eq", v, ptr),
        }
    }

    fn what(r: &Resolved) -> String {
        format!("filter \"{}\"", printable(&r.text))
    }

    fn op(
        &mut self,
        r: &Resolved,
        alias: &str,
        op: &str,
        v: &Value,
        ptr: Vec<Ptr>,
    ) -> Result<String> {
        if let Leaf::Column {
            sealed: Some(sealed),
            column,
            ..
        } = &r.leaf
        {
            return self.sealed_op(r, alias, sealed, column, op, v, ptr);
        }
        if op == "is_null" {
            let b = v.as_bool().ok_or_else(|| {
                UdmError::invalid(format!(
                    "{}: \"is_null\" takes true or false, got {}",
                    Self::what(r),
                    kind(v)
                ))
            })?;
            let e = leaf_text(alias, &r.leaf);
            return Ok(format!("({e} IS {}NULL)", if b { "" } else { "NOT " }));
        }
        if v.is_null() && (op == "eq" || op == "neq") {
            let e = leaf_text(alias, &r.leaf);
            return Ok(format!(
                "({e} IS {}NULL)",
                if op == "eq" { "" } else { "NOT " }
            ));
        }
        match &r.leaf {
            Leaf::Column { ptype, .. } => self.column_op(r, alias, ptype.clone(), op, v, ptr),
            Leaf::Json { .. } => self.json_op(r, alias, op, v, ptr),
        }
    }

    /// A filter on an encrypted field: NULL tests on the stored column, equality through the
    /// blind index each stored value carries (`split_part(column, ':', 3)`, which the field's
    /// index is built on); nothing else can be answered without decrypting every row.
    #[allow(clippy::too_many_arguments)]
    fn sealed_op(
        &mut self,
        r: &Resolved,
        alias: &str,
        sealed: &super::path::Sealed,
        column: &str,
        op: &str,
        v: &Value,
        ptr: Vec<Ptr>,
    ) -> Result<String> {
        let what = Self::what(r);
        let col = format!("{alias}.{}", quote_ident(column));
        if op == "is_null" {
            let b = v.as_bool().ok_or_else(|| {
                UdmError::invalid(format!(
                    "{what}: \"is_null\" takes true or false, got {}",
                    kind(v)
                ))
            })?;
            return Ok(format!("({col} IS {}NULL)", if b { "" } else { "NOT " }));
        }
        if v.is_null() && (op == "eq" || op == "neq") {
            let not = if op == "eq" { "" } else { "NOT " };
            return Ok(format!("({col} IS {not}NULL)"));
        }
        if !matches!(op, "eq" | "neq" | "in" | "not_in") {
            return Err(super::path::sealed_refused(
                &r.text,
                &format!("filtered with \"{}\"", printable(op)),
                sealed,
            ));
        }
        if !sealed.blind {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "{what}: field \"{}\" of entity \"{}\" is encrypted without a blind index and cannot be filtered",
                    sealed.name, sealed.entity
                ),
            )
            .hint("an encrypted field defined with \"index\": true or \"unique\": true can be filtered by equality"));
        }
        let blind = super::path::Sealed::blind_sql(alias, column);
        let t = PType::Text;
        // while the values are converted, plaintext ones are compared as they are stored (the
        // field's plain index serves them, its partial blind index the sealed ones)
        let both = |sealed_cond: String, plain_cond: String| {
            if sealed.converting {
                let p = quote_literal(crate::crypto::PREFIX);
                format!(
                    "((starts_with({col}, {p}) AND {sealed_cond}) OR (NOT starts_with({col}, {p}) AND {plain_cond}))"
                )
            } else {
                sealed_cond
            }
        };
        Ok(match op {
            "eq" | "neq" => {
                let param = self
                    .params
                    .add(spec_param(&ptr, t, Conv::Value, what.clone()));
                let cond = both(
                    format!("({blind} = {})", sealed.blind_of_sql(&param)),
                    format!("({col} = {})", sealed.canonical_sql(&param)),
                );
                if op == "eq" {
                    cond
                } else {
                    format!("({col} IS NULL OR NOT {cond})")
                }
            }
            _ => {
                let param = self
                    .params
                    .add(spec_param(&ptr, t, Conv::Array, what.clone()));
                let list = format!(
                    "ARRAY(SELECT {} FROM unnest({param}) AS v(x))",
                    sealed.blind_of_sql("v.x")
                );
                let cond = both(
                    format!("({blind} = ANY ({list}))"),
                    format!(
                        "({col} = ANY (ARRAY(SELECT {} FROM unnest({param}) AS v(x))))",
                        sealed.canonical_sql("v.x")
                    ),
                );
                if op == "in" {
                    cond
                } else if sealed.converting {
                    format!("({col} IS NULL OR NOT {cond})")
                } else {
                    format!("({col} IS NULL OR {blind} <> ALL ({list}))")
                }
            }
        })
    }

    fn column_op(
        &mut self,
        r: &Resolved,
        alias: &str,
        t: PType,
        op: &str,
        v: &Value,
        ptr: Vec<Ptr>,
    ) -> Result<String> {
        let e = leaf_json(alias, &r.leaf);
        let what = Self::what(r);
        if !ops_for(&t).contains(&op) {
            return Err(op_error(&r.text, op, type_word(&t), ops_for(&t)));
        }
        let p = |this: &mut Self, ptr: &[Ptr], t: &PType, conv: Conv| {
            this.params
                .add(spec_param(ptr, t.clone(), conv, what.clone()))
        };
        Ok(match op {
            "eq" if t == PType::Jsonb => format!("({e} = {})", p(self, &ptr, &t, Conv::Json)),
            "neq" if t == PType::Jsonb => {
                format!("({e} IS DISTINCT FROM {})", p(self, &ptr, &t, Conv::Json))
            }
            "contains" if t == PType::Jsonb => {
                format!("({e} @> {})", p(self, &ptr, &t, Conv::Json))
            }
            "eq" => format!("({e} = {})", p(self, &ptr, &t, Conv::Value)),
            "neq" => format!("({e} IS DISTINCT FROM {})", p(self, &ptr, &t, Conv::Value)),
            "gt" | "gte" | "lt" | "lte" => {
                format!("({e} {} {})", sql_op(op), p(self, &ptr, &t, Conv::Value))
            }
            "in" => format!("({e} = ANY ({}))", p(self, &ptr, &t, Conv::Array)),
            "not_in" => format!(
                "({e} IS NULL OR {e} <> ALL ({}))",
                p(self, &ptr, &t, Conv::Array)
            ),
            "between" => {
                let pair = v.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                    UdmError::invalid(format!(
                        "{what}: \"between\" takes [low, high], got {}",
                        kind(v)
                    ))
                })?;
                let _ = pair;
                let (mut lo, mut hi) = (ptr.clone(), ptr.clone());
                lo.push(Ptr::Index(0));
                hi.push(Ptr::Index(1));
                format!(
                    "({e} BETWEEN {} AND {})",
                    p(self, &lo, &t, Conv::Value),
                    p(self, &hi, &t, Conv::Value)
                )
            }
            "like" => format!("({e} LIKE {})", p(self, &ptr, &t, Conv::Pattern)),
            "ilike" => format!("({e} ILIKE {})", p(self, &ptr, &t, Conv::Pattern)),
            "contains" if matches!(t, PType::Array(_)) => {
                let PType::Array(item) = &t else {
                    unreachable!()
                };
                if v.is_array() {
                    format!("({e} @> {})", p(self, &ptr, item, Conv::Array))
                } else {
                    format!("({} = ANY ({e}))", p(self, &ptr, item, Conv::Value))
                }
            }
            "overlaps" => {
                let PType::Array(item) = &t else {
                    unreachable!()
                };
                format!("({e} && {})", p(self, &ptr, item, Conv::Array))
            }
            "contains" => format!("({e} LIKE {})", p(self, &ptr, &t, Conv::Contains)),
            "starts_with" => format!("({e} LIKE {})", p(self, &ptr, &t, Conv::Prefix)),
            other => return Err(op_error(&r.text, other, type_word(&t), ops_for(&t))),
        })
    }

    fn json_op(
        &mut self,
        r: &Resolved,
        alias: &str,
        op: &str,
        v: &Value,
        ptr: Vec<Ptr>,
    ) -> Result<String> {
        let what = Self::what(r);
        let as_ = match op {
            "between" => v
                .as_array()
                .and_then(|a| a.first())
                .map_or(JsonAs::Text, json_as),
            "like" | "ilike" | "contains" | "starts_with" if v.is_string() => JsonAs::Text,
            _ => json_as(v),
        };
        let j = leaf_json(alias, &r.leaf);
        let text = leaf_text(alias, &r.leaf);
        // the typed value of the json path, NULL when the JSON type does not match
        let typed = match as_ {
            JsonAs::Number => {
                format!("(CASE WHEN jsonb_typeof({j}) = 'number' THEN ({j})::numeric END)")
            }
            JsonAs::Boolean => {
                format!("(CASE WHEN jsonb_typeof({j}) = 'boolean' THEN ({j})::boolean END)")
            }
            JsonAs::Date => format!("udm.json_date({j})"),
            JsonAs::Timestamp => format!("udm.json_timestamp({j})"),
            JsonAs::Text => text.clone(),
            JsonAs::Json => j.clone(),
        };
        let t = match as_ {
            JsonAs::Number => PType::Numeric,
            JsonAs::Boolean => PType::Boolean,
            JsonAs::Date => PType::Date,
            JsonAs::Timestamp => PType::Timestamp,
            JsonAs::Text => PType::Text,
            JsonAs::Json => PType::Jsonb,
        };
        if as_ == JsonAs::Json || op == "contains" && !v.is_string() {
            return Ok(match op {
                "eq" => format!(
                    "({j} = {})",
                    self.params
                        .add(spec_param(&ptr, PType::Jsonb, Conv::Json, what))
                ),
                "neq" => format!(
                    "({j} IS DISTINCT FROM {})",
                    self.params
                        .add(spec_param(&ptr, PType::Jsonb, Conv::Json, what))
                ),
                "contains" => format!(
                    "({j} @> {})",
                    self.params
                        .add(spec_param(&ptr, PType::Jsonb, Conv::Json, what))
                ),
                other => {
                    return Err(op_error(
                        &r.text,
                        other,
                        "json objects and arrays",
                        JSON_OPS,
                    ))
                }
            });
        }
        if !ops_for(&t).contains(&op) {
            return Err(op_error(&r.text, op, type_word(&t), ops_for(&t)));
        }
        let mut p = |ptr: &[Ptr], conv: Conv| {
            self.params
                .add(spec_param(ptr, t.clone(), conv, what.clone()))
        };
        Ok(match op {
            "eq" => format!("({typed} = {})", p(&ptr, Conv::Value)),
            "neq" => format!("({typed} IS DISTINCT FROM {})", p(&ptr, Conv::Value)),
            "gt" | "gte" | "lt" | "lte" => {
                format!("({typed} {} {})", sql_op(op), p(&ptr, Conv::Value))
            }
            "in" => format!("({typed} = ANY ({}))", p(&ptr, Conv::Array)),
            "not_in" => format!(
                "({typed} IS NULL OR {typed} <> ALL ({}))",
                p(&ptr, Conv::Array)
            ),
            "between" => {
                let (mut lo, mut hi) = (ptr.clone(), ptr.clone());
                lo.push(Ptr::Index(0));
                hi.push(Ptr::Index(1));
                format!(
                    "({typed} BETWEEN {} AND {})",
                    p(&lo, Conv::Value),
                    p(&hi, Conv::Value)
                )
            }
            "like" => format!("({text} LIKE {})", p(&ptr, Conv::Pattern)),
            "ilike" => format!("({text} ILIKE {})", p(&ptr, Conv::Pattern)),
            "contains" => format!("({text} LIKE {})", p(&ptr, Conv::Contains)),
            "starts_with" => format!("({text} LIKE {})", p(&ptr, Conv::Prefix)),
            other => return Err(op_error(&r.text, other, type_word(&t), ops_for(&t))),
        })
    }
}

/// Keys of a quantified sub-filter on a path to many records.
pub const QUANTIFIERS: &[&str] = &["some", "every", "none"];

/// The quantifiers of a filter value, when it is `{"some" | "every" | "none": …}`.
pub fn quantifiers(v: &Value) -> Option<&Map<String, Value>> {
    v.as_object()
        .filter(|m| !m.is_empty() && m.keys().all(|k| QUANTIFIERS.contains(&k.as_str())))
}

/// The hop of a quantified sub-filter to its related records.
enum RecordsHop {
    /// A path's hop to many records.
    Path(ToMany),
    /// Records of `source` linked here through its many-to-many `junction`.
    Back { junction: String, source: String },
}

impl RecordsHop {
    fn target(&self) -> &str {
        match self {
            RecordsHop::Path(h) => h.target(),
            RecordsHop::Back { source, .. } => source,
        }
    }

    /// The FROM clause of the related records (with the joins of their own filter) and,
    /// through a junction aliased `j`, the condition linking them to `outer`.
    fn sql_from(&self, sub: &From, j: &str, outer: &str) -> (String, String) {
        let x = sub.root_alias();
        let records = sub.sql(None);
        let through = |junction: &str, here: &str, there: &str| {
            (
                format!(
                    "{records} JOIN {} {j} ON {j}.\"{here}\" = {x}.\"id\"",
                    sub.table(junction)
                ),
                format!("{j}.\"{there}\" = {outer}.\"id\""),
            )
        };
        match self {
            RecordsHop::Path(ToMany::Reverse { column, .. }) => (
                records,
                format!("{x}.{} = {outer}.\"id\"", quote_ident(column)),
            ),
            RecordsHop::Path(ToMany::Junction { junction, .. }) => {
                through(junction, "target_id", "source_id")
            }
            RecordsHop::Back { junction, .. } => through(junction, "source_id", "target_id"),
        }
    }
}

/// Compiles `filters` of a spec into a WHERE condition.
pub fn where_clause(
    from: &mut From,
    params: &mut Params,
    entity: &str,
    spec: &Map<String, Value>,
) -> Result<(Option<String>, Vec<String>)> {
    let mut f = Filters::new(from, params, entity);
    let cond = match spec.get("filters") {
        Some(v) => f.compile(v, vec![Ptr::Key("filters".into())])?,
        None => None,
    };
    Ok((cond, f.used_prefixes))
}
