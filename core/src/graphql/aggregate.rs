//! `<entity>Aggregate(filter, groupBy, first)`: udm's aggregate compiler (`query::aggregate`)
//! with group keys over relation paths and date buckets, wrapped so the statement returns the
//! groups as one jsonb array shaped for the selection.

use super::builder::{Builder, R};
use super::error::GqlError;
use super::plan::{Arg, Finish, Op, Planning};
use super::prepare::Planner;
use super::schema::{FieldKind, Out};
use super::transpile::Sql;
use crate::ident::quote_literal;
use crate::query::{aggregate, json_object};
use apollo_compiler::executable::Field;
use apollo_compiler::Node;
use serde_json::{json, Map, Value};

/// A group key item: `{status: VALUE}`, `{category: {name: VALUE}}`, `{metadata: {path, key}}`.
fn group_item(
    b: &Builder,
    entity: &str,
    v: &Value,
    prefix: &str,
    name: &str,
) -> Option<(String, String, Option<String>)> {
    let info = b.info(entity).ok()?;
    let (k, val) = v.as_object()?.iter().find(|(k, _)| k.as_str() != "as")?;
    let label = if name.is_empty() {
        k.clone()
    } else {
        format!("{name}.{k}")
    };
    match (info.fields.get(k)?, val) {
        (FieldKind::ToOne { field, target }, Value::Object(_)) => {
            group_item(b, target, val, &format!("{prefix}{field}."), &label)
        }
        (FieldKind::Json { field }, Value::Object(o)) => {
            let path = super::builder::json_path(&format!("{prefix}{field}"), o.get("path"))?;
            Some((
                path,
                label,
                o.get("key").and_then(Value::as_str).map(str::to_string),
            ))
        }
        (kind, Value::String(key)) => {
            Some((format!("{prefix}{}", kind.slug()), label, Some(key.clone())))
        }
        _ => None,
    }
}

fn numeric_out(b: &Builder, entity: &str, field: &str) -> Option<(String, bool)> {
    match b.info(entity).ok()?.fields.get(field)? {
        FieldKind::Scalar { field, out, ty } => {
            Some((field.clone(), *out == Out::Text || ty != "Float"))
        }
        FieldKind::System { column, .. } => Some((column.to_string(), true)),
        FieldKind::RelationId { field } => Some((field.clone(), false)),
        _ => None,
    }
}

pub(crate) fn plan(p: &mut Planner, entity: &str, fs: &[&Node<Field>]) -> R<(Vec<Op>, Finish)> {
    let b = p.b;
    let f = fs[0];
    let path = vec![super::error::PathSeg::Key(p.key.clone())];
    let bad = |m: String| b.err(f, &path, GqlError::input(m));
    let mut spec = Map::new();
    if let Some(v) = b.arg(f, "filter") {
        spec.insert("filters".into(), b.filter(entity, &v, f, &path)?);
    }
    let mut groups = Vec::new();
    let mut names = Vec::new();
    for (i, g) in b
        .arg(f, "groupBy")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let (gpath, label, key) = group_item(b, entity, g, "", "")
            .ok_or_else(|| bad(format!("groupBy[{i}] names exactly one field")))?;
        let mut item = json!({"path": gpath, "as": format!("g{i}")});
        if let Some(k) = key.filter(|k| k != "VALUE") {
            item["bucket"] = json!(k.to_ascii_lowercase());
        }
        groups.push(item);
        names.push(
            g.get("as")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or(label),
        );
    }
    spec.insert("group_by".into(), Value::Array(groups));
    if let Some(n) = b.page_size(f, &path, "first")? {
        spec.insert("limit".into(), json!(n.max(1)));
    }
    // metrics: each selected output gets an internal name m<i>
    let mut metrics = Vec::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut sql = Sql::new(p.ctx.model);
    let col = |i: usize| format!("a.c{i}");
    let n_groups = names.len();
    let tn = b.info(entity)?.type_name.clone();
    for (k, sub) in b.sub_own(fs) {
        let field = sub[0].name.as_str();
        let e = match field {
            "key" => {
                let keys: Vec<String> = (0..n_groups)
                    .map(|i| format!("{}, {}", sql.text(&names[i], "groupBy as"), col(i)))
                    .collect();
                if keys.is_empty() {
                    "'{}'::jsonb".to_string()
                } else {
                    format!("jsonb_build_object({})", keys.join(", "))
                }
            }
            "count" => {
                metrics.push(json!({"fn": "count", "as": format!("m{}", metrics.len())}));
                format!("({})::int", col(n_groups + metrics.len() - 1))
            }
            "countDistinct" => {
                let name = b
                    .arg(sub[0], "field")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let slug = p.slug_of_field(entity, &name);
                metrics.push(json!({"fn": "count_distinct", "path": slug, "as": format!("m{}", metrics.len())}));
                format!("({})::int", col(n_groups + metrics.len() - 1))
            }
            "sum" | "avg" | "min" | "max" => {
                let mut inner = Vec::new();
                for (mk, m) in b.plain(&sub) {
                    if m == "__typename" {
                        continue;
                    }
                    let (slug, text) = numeric_out(b, entity, &m)
                        .ok_or_else(|| bad(format!("{field} of {m} is not available")))?;
                    metrics.push(
                        json!({"fn": field, "path": slug, "as": format!("m{}", metrics.len())}),
                    );
                    let c = col(n_groups + metrics.len() - 1);
                    inner.push((
                        mk,
                        if text && field != "min" && field != "max"
                            || (text && is_text_out(b, entity, &m))
                        {
                            format!("({c})::text")
                        } else {
                            c
                        },
                    ));
                }
                json_object(&inner)
            }
            _ => quote_literal(&format!("{tn}Group")),
        };
        pairs.push((k, e));
    }
    if metrics.is_empty() {
        metrics.push(json!({"fn": "count", "as": "m0"}));
    }
    spec.insert("metrics".into(), Value::Array(metrics));
    let spec = Value::Object(spec);
    let t = aggregate::compile(p.ctx.model, entity, &spec).map_err(|e| b.err(f, &path, e))?;
    // the aggregate's own parameters come first, then the key names
    let mut values = crate::query::bind(&spec, &t).map_err(|e| b.err(f, &path, e))?;
    let shift = values.len();
    let obj = renumber(&json_object(&pairs), shift);
    values.extend(sql.values);
    let stmt = format!(
        "SELECT coalesce(jsonb_agg({obj}), '[]'::jsonb) FROM ({}) a",
        t.sql
    );
    Ok((
        vec![Op::Run {
            sql: stmt.into(),
            args: values.into_iter().map(Arg::Text).collect(),
            planning: Planning::PerCall,
        }],
        Finish::Last,
    ))
}

fn is_text_out(b: &Builder, entity: &str, field: &str) -> bool {
    matches!(
        b.info(entity).ok().and_then(|i| i.fields.get(field)),
        Some(FieldKind::Scalar { out: Out::Text, .. })
    )
}

/// Shifts `$n` placeholders by `by` (the wrapper's parameters follow the aggregate's); text in
/// quotes is left alone.
fn renumber(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut in_literal = false;
    let mut it = sql.char_indices().peekable();
    while let Some((_, c)) = it.next() {
        if c == '\'' {
            in_literal = !in_literal;
        }
        if c == '$' && !in_literal && it.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
            let mut n = 0usize;
            while let Some((_, d)) = it.peek().filter(|(_, d)| d.is_ascii_digit()) {
                n = n * 10 + d.to_digit(10).unwrap_or(0) as usize;
                it.next();
            }
            out.push_str(&format!("${}", n + by));
            continue;
        }
        out.push(c);
    }
    out
}
