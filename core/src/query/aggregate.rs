//! `udm_aggregate`: group by paths (relation and json paths, date buckets), metrics (count,
//! count_distinct, sum, avg, min, max), `having`, sort and limit.

use super::filter::where_clause;
use super::path::{Leaf, Model};
use super::*;
use serde_json::Value;

pub const AGGREGATE_KEYS: &[&str] = &["group_by", "metrics", "filters", "having", "sort", "limit"];
pub const BUCKETS: &[&str] = &["day", "week", "month", "quarter", "year"];
const FNS: &[&str] = &["count", "count_distinct", "sum", "avg", "min", "max"];

struct Output {
    key: String,
    expr: String,
    ptype: PType,
}

fn group_item(from: &mut From, entity: &str, v: &Value, i: usize) -> Result<Output> {
    let what = format!("group_by[{i}]");
    let (path, bucket, alias) = match v {
        Value::String(s) => (s.clone(), None, None),
        Value::Object(o) => {
            expect_keys(o, &["path", "bucket", "as"], &what)?;
            let path = crate::json::expect_str(
                o.get("path").unwrap_or(&Value::Null),
                &format!("{what}.path"),
            )?
            .to_string();
            let bucket = match o.get("bucket") {
                None | Some(Value::Null) => None,
                Some(b) => {
                    let b = crate::json::expect_str(b, &format!("{what}.bucket"))?;
                    if !BUCKETS.contains(&b) {
                        return Err(UdmError::invalid(format!(
                            "{what}: bucket \"{}\" is not known",
                            printable(b)
                        ))
                        .hint(format!("buckets are {}", known(BUCKETS))));
                    }
                    Some(b.to_string())
                }
            };
            let alias = match o.get("as") {
                None | Some(Value::Null) => None,
                Some(a) => Some(crate::json::expect_str(a, &format!("{what}.as"))?.to_string()),
            };
            (path, bucket, alias)
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
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "{what}: \"{path}\" leads to several records; group by it from the other entity"
            ),
        ));
    }
    let alias_sql = from.alias_for(&r)?;
    let (mut expr, mut ptype) = match &r.leaf {
        Leaf::Column { ptype, .. } => (leaf_json(&alias_sql, &r.leaf), ptype.clone()),
        Leaf::Json { .. } => (leaf_text(&alias_sql, &r.leaf), PType::Text),
    };
    if let Some(b) = &bucket {
        let base = match (&r.leaf, &ptype) {
            (Leaf::Json { .. }, _) => {
                format!("udm.json_timestamp({})", leaf_json(&alias_sql, &r.leaf))
            }
            (_, PType::Date | PType::Timestamp) => expr.clone(),
            _ => {
                return Err(UdmError::new(
                    SqlState::DatatypeMismatch,
                    format!("{what}: \"{path}\" is not a date, so it cannot be bucketed by {b}"),
                ))
            }
        };
        expr = format!(
            "(date_trunc({}, {base}))::date",
            crate::ident::quote_literal(b)
        );
        ptype = PType::Date;
    }
    let key = alias.unwrap_or_else(|| match &bucket {
        Some(b) => format!("{path}:{b}"),
        None => path.clone(),
    });
    Ok(Output { key, expr, ptype })
}

fn metric(from: &mut From, entity: &str, v: &Value, i: usize) -> Result<Output> {
    let what = format!("metrics[{i}]");
    let (f, path, alias) = match v {
        Value::String(s) => (s.clone(), None, None),
        Value::Object(o) => {
            expect_keys(o, &["fn", "path", "as"], &what)?;
            let f = crate::json::expect_str(
                o.get("fn").unwrap_or(&Value::Null),
                &format!("{what}.fn"),
            )?
            .to_string();
            let path = match o.get("path") {
                None | Some(Value::Null) => None,
                Some(p) => Some(crate::json::expect_str(p, &format!("{what}.path"))?.to_string()),
            };
            let alias = match o.get("as") {
                None | Some(Value::Null) => None,
                Some(a) => Some(crate::json::expect_str(a, &format!("{what}.as"))?.to_string()),
            };
            (f, path, alias)
        }
        other => {
            return Err(UdmError::invalid(format!(
                "{what} must be \"count\" or an object, got {}",
                kind(other)
            )))
        }
    };
    if !FNS.contains(&f.as_str()) {
        return Err(UdmError::invalid(format!(
            "{what}: function \"{}\" is not known",
            printable(&f)
        ))
        .hint(format!("metrics are {}", known(FNS))));
    }
    let key = alias.unwrap_or_else(|| match &path {
        Some(p) => format!("{f}_{p}"),
        None => f.clone(),
    });
    let Some(path) = path else {
        if f == "count" {
            return Ok(Output {
                key,
                expr: "count(*)".into(),
                ptype: PType::BigInt,
            });
        }
        return Err(UdmError::invalid(format!(
            "{what}: \"{f}\" needs a \"path\""
        )));
    };
    let r = resolve(from.model, entity, &path)?;
    if r.to_many.is_some() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "{what}: \"{path}\" leads to several records; aggregate it from the other entity"
            ),
        ));
    }
    let a = from.alias_for(&r)?;
    let (e, t) = match &r.leaf {
        Leaf::Column { ptype, .. } => (leaf_json(&a, &r.leaf), ptype.clone()),
        Leaf::Json { .. } => {
            let j = leaf_json(&a, &r.leaf);
            if matches!(f.as_str(), "sum" | "avg" | "min" | "max") {
                (
                    format!("(CASE WHEN jsonb_typeof({j}) = 'number' THEN ({j})::numeric END)"),
                    PType::Numeric,
                )
            } else {
                (j, PType::Jsonb)
            }
        }
    };
    let numeric = matches!(
        t,
        PType::Numeric | PType::Float | PType::Integer | PType::BigInt | PType::SmallInt
    );
    Ok(match f.as_str() {
        "count" => Output {
            key,
            expr: format!("count({e})"),
            ptype: PType::BigInt,
        },
        "count_distinct" => Output {
            key,
            expr: format!("count(DISTINCT {e})"),
            ptype: PType::BigInt,
        },
        "sum" | "avg" if !numeric => {
            return Err(UdmError::new(
                SqlState::DatatypeMismatch,
                format!("{what}: {f} needs a number, \"{path}\" is not one"),
            ))
        }
        "sum" | "avg" => Output {
            key,
            expr: format!("{f}({e})"),
            ptype: PType::Numeric,
        },
        _ if !t.is_ordered() => {
            return Err(UdmError::new(
                SqlState::DatatypeMismatch,
                format!("{what}: {f} needs values that have an order, \"{path}\" has none"),
            ))
        }
        _ => Output {
            key,
            expr: format!("{f}({e})"),
            ptype: t,
        },
    })
}

fn having(params: &mut Params, outputs: &[Output], v: &Value) -> Result<Option<String>> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => {
            return Err(UdmError::invalid(format!(
                "\"having\" must be an object, got {}",
                kind(other)
            )))
        }
    };
    let mut conds = Vec::new();
    for (key, val) in obj {
        let out = outputs.iter().find(|o| &o.key == key).ok_or_else(|| {
            UdmError::new(
                SqlState::UndefinedColumn,
                format!(
                    "having: \"{}\" is not a group key or metric",
                    printable(key)
                ),
            )
            .hint(format!(
                "use one of {}",
                name_list(outputs.iter().map(|o| o.key.as_str()))
            ))
        })?;
        let ops: Vec<(String, Value)> = match val {
            Value::Object(m) if is_operator_object(m) => {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            other => vec![("eq".into(), other.clone())],
        };
        for (op, _) in ops {
            let mut ptr = vec![Ptr::Key("having".into()), Ptr::Key(key.clone())];
            if val.is_object() {
                ptr.push(Ptr::Key(op.clone()));
            }
            let what = format!("having \"{key}\"");
            let e = &out.expr;
            let mut p = |ptr: &[Ptr], conv: Conv| {
                params.add(spec_param(ptr, out.ptype.clone(), conv, what.clone()))
            };
            conds.push(match op.as_str() {
                "eq" => format!("({e} = {})", p(&ptr, Conv::Value)),
                "neq" => format!("({e} IS DISTINCT FROM {})", p(&ptr, Conv::Value)),
                "gt" => format!("({e} > {})", p(&ptr, Conv::Value)),
                "gte" => format!("({e} >= {})", p(&ptr, Conv::Value)),
                "lt" => format!("({e} < {})", p(&ptr, Conv::Value)),
                "lte" => format!("({e} <= {})", p(&ptr, Conv::Value)),
                "in" => format!("({e} = ANY ({}))", p(&ptr, Conv::Array)),
                "between" => {
                    let (mut lo, mut hi) = (ptr.clone(), ptr.clone());
                    lo.push(Ptr::Index(0));
                    hi.push(Ptr::Index(1));
                    format!(
                        "({e} BETWEEN {} AND {})",
                        p(&lo, Conv::Value),
                        p(&hi, Conv::Value)
                    )
                }
                other => {
                    return Err(UdmError::new(
                        SqlState::DatatypeMismatch,
                        format!("having \"{key}\": operator \"{other}\" does not apply"),
                    )
                    .hint("having takes eq, neq, gt, gte, lt, lte, in, between"))
                }
            });
        }
    }
    Ok((!conds.is_empty()).then(|| conds.join(" AND ")))
}

pub fn compile(model: &dyn Model, entity: &str, spec: &Value) -> Result<Template> {
    let obj = spec_object(spec, "aggregate spec")?;
    expect_keys(obj, AGGREGATE_KEYS, "aggregate spec")?;
    let mut from = From::new(model, entity);
    let mut params = Params::default();
    let empty = Value::Array(vec![]);
    let groups = crate::json::expect_array(obj.get("group_by").unwrap_or(&empty), "\"group_by\"")?;
    let mut outputs = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let o = group_item(&mut from, entity, g, i)?;
        if outputs.iter().any(|x: &Output| x.key == o.key) {
            return Err(UdmError::invalid(format!(
                "group_by[{i}]: the name \"{}\" is used twice",
                o.key
            ))
            .hint("group by each path once, or name the other with \"as\""));
        }
        outputs.push(o);
    }
    let n_groups = outputs.len();
    let default_metrics = Value::Array(vec![Value::String("count".into())]);
    let metrics = crate::json::expect_array(
        obj.get("metrics").unwrap_or(&default_metrics),
        "\"metrics\"",
    )?;
    if metrics.is_empty() {
        return Err(UdmError::invalid("\"metrics\" is empty").hint("ask for at least \"count\""));
    }
    for (i, m) in metrics.iter().enumerate() {
        let o = metric(&mut from, entity, m, i)?;
        if outputs.iter().any(|x| x.key == o.key) {
            return Err(UdmError::invalid(format!(
                "metrics[{i}]: the name \"{}\" is used twice",
                o.key
            ))
            .hint("give it another name with \"as\""));
        }
        outputs.push(o);
    }
    let (filter, _) = where_clause(&mut from, &mut params, entity, obj)?;
    let having_sql = having(
        &mut params,
        &outputs,
        obj.get("having").unwrap_or(&Value::Null),
    )?;
    // sort by output names
    let mut order = Vec::new();
    let sort_items: Vec<Value> = match obj.get("sort") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a.clone(),
        Some(other) => vec![other.clone()],
    };
    for (i, s) in sort_items.iter().enumerate() {
        let (name, desc) = match s {
            Value::String(s) => s
                .strip_prefix('-')
                .map_or((s.as_str(), false), |n| (n, true)),
            other => {
                return Err(UdmError::invalid(format!(
                    "sort[{i}] must be a name, \"-name\" for descending, got {}",
                    kind(other)
                )))
            }
        };
        let out = outputs.iter().find(|o| o.key == name).ok_or_else(|| {
            UdmError::new(
                SqlState::UndefinedColumn,
                format!(
                    "sort[{i}]: \"{}\" is not a group key or metric",
                    printable(name)
                ),
            )
            .hint(format!(
                "sort by one of {}",
                name_list(outputs.iter().map(|o| o.key.as_str()))
            ))
        })?;
        order.push(format!(
            "{} {}",
            out.expr,
            if desc {
                "DESC NULLS LAST"
            } else {
                "ASC NULLS LAST"
            }
        ));
    }
    if order.is_empty() {
        order = outputs[..n_groups]
            .iter()
            .map(|o| format!("{} ASC NULLS LAST", o.expr))
            .collect();
    }
    let limit = limit_literal(obj, "limit", MAX_GROUPS, MAX_GROUPS)?;
    let group_sql = if n_groups == 0 {
        String::new()
    } else {
        format!(
            " GROUP BY {}",
            outputs[..n_groups]
                .iter()
                .map(|o| o.expr.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    // one row per group: its keys and metrics as columns, made into objects by the executor
    let columns: Vec<String> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| format!("{} AS c{i}", o.expr))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}{}{group_sql}{}{} LIMIT {limit}",
        columns.join(", "),
        from.sql(None),
        filter.map(|f| format!(" WHERE {f}")).unwrap_or_default(),
        having_sql
            .map(|h| format!(" HAVING {h}"))
            .unwrap_or_default(),
        if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", order.join(", "))
        },
    );
    Ok(Template {
        sql,
        params: params.0,
        computed: vec![],
        plan_per_call: true,
        rows: Some(RowsOutput {
            columns: outputs.into_iter().map(|o| o.key).collect(),
            cursor: None,
            count: None,
            sealed: Vec::new(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::path::tests::shop;
    use super::*;
    use serde_json::json;

    #[test]
    fn group_by_relation_with_metrics_having_and_sort() {
        let t = compile(
            &shop(),
            "product",
            &json!({"group_by": ["category_id.name"], "metrics": ["count", {"fn": "avg", "path": "price"}],
                    "having": {"count": {"gt": 5}}, "sort": ["-count"], "limit": 10}),
        )
        .unwrap();
        assert!(
            t.sql.starts_with(
                "SELECT t1.\"name\" AS c0, count(*) AS c1, avg(t0.\"price\") AS c2 FROM"
            ),
            "one row per group: {}",
            t.sql
        );
        assert!(
            t.sql.ends_with(
                "GROUP BY t1.\"name\" HAVING (count(*) > $1::bigint) ORDER BY count(*) DESC NULLS LAST LIMIT 10"
            ),
            "{}",
            t.sql
        );
        let out = t.rows.unwrap();
        assert_eq!(out.columns, ["category_id.name", "count", "avg_price"]);
        assert_eq!((out.cursor, out.count), (None, None));
    }

    #[test]
    fn buckets_and_json_groups() {
        let t = compile(&shop(), "product", &json!({"group_by": [{"path": "released", "bucket": "month"}, "metadata.brand"], "metrics": [{"fn": "sum", "path": "metadata.storage", "as": "storage"}]})).unwrap();
        assert!(
            t.sql.starts_with("SELECT (date_trunc('month', t0.\"released\"))::date AS c0, (t0.\"metadata\" ->> 'brand') AS c1, sum((CASE WHEN jsonb_typeof"),
            "{}",
            t.sql
        );
        assert_eq!(
            t.rows.unwrap().columns,
            ["released:month", "metadata.brand", "storage"]
        );
    }

    #[test]
    fn errors() {
        let m = shop();
        for (spec, want) in [
            (
                json!({"metrics": [{"fn": "median", "path": "price"}]}),
                "function \"median\" is not known",
            ),
            (
                json!({"metrics": [{"fn": "avg", "path": "name"}]}),
                "avg needs a number",
            ),
            (json!({"metrics": [{"fn": "sum"}]}), "needs a \"path\""),
            (
                json!({"group_by": [{"path": "name", "bucket": "month"}]}),
                "is not a date",
            ),
            (
                json!({"group_by": [{"path": "released", "bucket": "fortnight"}]}),
                "bucket \"fortnight\"",
            ),
            (
                json!({"group_by": ["tags.name"]}),
                "leads to several records",
            ),
            (json!({"having": {"total": 1}}), "not a group key or metric"),
            (json!({"sort": ["-nope"]}), "not a group key or metric"),
            (
                json!({"group_by": ["status", "status"]}),
                "group_by[1]: the name \"status\" is used twice",
            ),
        ] {
            let e = compile(&m, "product", &spec).unwrap_err();
            assert!(e.message.contains(want), "{spec}: {}", e.message);
        }
    }
}
