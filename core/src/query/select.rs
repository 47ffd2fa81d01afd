//! `udm_query`: one page of records as `{"rows": [...], "count": n, "next_cursor": ...}`, in one
//! statement that PostgreSQL plans like the hand-written query: LEFT JOINs per relation prefix,
//! filters as a WHERE clause, keyset pagination, the JSON built server-side.

use super::filter::where_clause;
use super::path::Model;
use super::*;
use serde_json::Value;

pub const QUERY_KEYS: &[&str] = &[
    "columns", "filters", "sort", "limit", "offset", "cursor", "count", "distinct",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountMode {
    None,
    Exact,
    Estimated,
}

pub fn count_mode(v: Option<&Value>) -> Result<CountMode> {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(CountMode::None),
        Some(Value::Bool(true)) => Ok(CountMode::Exact),
        Some(Value::String(s)) if s == "exact" => Ok(CountMode::Exact),
        Some(Value::String(s)) if s == "estimated" => Ok(CountMode::Estimated),
        Some(Value::String(s)) if s == "none" => Ok(CountMode::None),
        Some(other) => Err(UdmError::invalid(format!(
            "\"count\" must be \"exact\", \"estimated\" or \"none\", got {other}"
        ))),
    }
}

/// The parts of a paged select shared by `udm_query` and the table view.
pub struct Page {
    pub inner: String,
    pub from: String,
    pub filter: Option<String>,
    pub count_from: String,
    pub limit: String,
    pub sig: String,
    pub distinct: bool,
}

pub fn page(
    model: &dyn Model,
    entity: &str,
    obj: &Map<String, Value>,
    params: &mut Params,
) -> Result<Page> {
    let columns = columns_of(model, entity, obj)?;
    let mut from = From::new(model, entity);
    let row = row_object(&mut from, entity, &columns)?;
    let (filter, used) = where_clause(&mut from, params, entity, obj)?;
    let keys = sort_keys(&mut from, entity, obj.get("sort"))?;
    let distinct = opt_bool(obj, "distinct")?;
    let sig = sort_signature(entity, &keys);
    let mut conds: Vec<String> = filter.iter().cloned().collect();
    if let Some(c) = obj.get("cursor").filter(|c| !c.is_null()) {
        if distinct {
            return Err(
                UdmError::invalid("a cursor cannot page through \"distinct\" results")
                    .hint("use \"offset\" with \"distinct\""),
            );
        }
        let (ckeys, _) = decode_cursor(c, Some(&sig))?;
        conds.push(keyset_condition(params, &keys, &ckeys)?);
    }
    let limit = limit_literal(obj, "limit", MAX_LIMIT, DEFAULT_LIMIT)?;
    let offset = match obj.get("offset") {
        Some(v) if !v.is_null() => {
            format!(
                " OFFSET {}",
                params.add(spec_param(
                    &[Ptr::Key("offset".into())],
                    PType::BigInt,
                    Conv::Offset,
                    "\"offset\""
                ))
            )
        }
        _ => String::new(),
    };
    let where_sql = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let from_sql = from.sql(None);
    let inner = if distinct {
        let sorts: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!(", {} AS s{i}", k.expr))
            .collect();
        let order: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                format!(
                    "s{i} {} NULLS {}",
                    if k.desc { "DESC" } else { "ASC" },
                    if k.nulls_first { "FIRST" } else { "LAST" }
                )
            })
            .collect();
        let order_sql = if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", order.join(", "))
        };
        format!("SELECT DISTINCT {row} AS r{} FROM {from_sql}{where_sql}{order_sql} LIMIT {limit}{offset}", sorts.join(""))
    } else {
        let mut k: Vec<String> = keys.iter().map(|k| k.expr.clone()).collect();
        if !keys.iter().any(|k| k.expr == "t0.\"id\"") {
            k.push("t0.\"id\"".into());
        }
        format!(
            "SELECT {row} AS r, jsonb_build_array({}) AS k FROM {from_sql}{where_sql} ORDER BY {} LIMIT {limit}{offset}",
            k.join(", "),
            order_by(&keys, true)
        )
    };
    Ok(Page {
        inner,
        from: from_sql,
        filter,
        count_from: from.sql(Some(&used)),
        limit,
        sig,
        distinct,
    })
}

pub fn count_parts(
    p: &Page,
    mode: CountMode,
    params: &mut Params,
) -> (Option<String>, Vec<Computed>) {
    let where_sql = p
        .filter
        .as_ref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    match mode {
        CountMode::None => (None, vec![]),
        CountMode::Exact => (
            Some(format!(
                "(SELECT count(*) FROM {}{where_sql})",
                p.count_from
            )),
            vec![],
        ),
        CountMode::Estimated => {
            let ph = params.add(ParamSpec {
                source: Source::Computed(0),
                ptype: PType::BigInt,
                conv: Conv::Value,
                what: "count".into(),
            });
            (
                Some(ph),
                vec![Computed::EstimatedRows(format!(
                    "SELECT 1 FROM {}{where_sql}",
                    p.count_from
                ))],
            )
        }
    }
}

/// Compiles a `udm_query` spec.
pub fn compile(model: &dyn Model, entity: &str, spec: &Value) -> Result<Template> {
    let obj = spec_object(spec, "query spec")?;
    expect_keys(obj, QUERY_KEYS, "query spec")?;
    let mut params = Params::default();
    let p = page(model, entity, obj, &mut params)?;
    let (count, computed) = count_parts(&p, count_mode(obj.get("count"))?, &mut params);
    let mut pairs = vec![(
        "rows".to_string(),
        "coalesce(jsonb_agg(q.r), '[]'::jsonb)".to_string(),
    )];
    if !p.distinct {
        pairs.push(next_cursor(&p.limit, &p.sig));
    }
    let plan_per_call = count.is_some() && computed.is_empty();
    if let Some(c) = count {
        pairs.push(("count".into(), c));
    }
    let sql = format!("SELECT {} FROM ({}) q", json_object(&pairs), p.inner);
    Ok(Template {
        sql,
        params: params.0,
        computed,
        plan_per_call,
    })
}

#[cfg(test)]
mod tests {
    use super::super::path::tests::shop;
    use super::*;
    use serde_json::json;

    fn sql(spec: Value) -> Template {
        compile(&shop(), "product", &spec).unwrap()
    }

    #[test]
    fn joins_once_per_prefix_and_binds_values() {
        let t = sql(json!({
            "columns": ["name", "category_id.name", "category_id.parent_id.name", "metadata.brand"],
            "filters": {"status": "active", "metadata.brand": "Apple", "category_id.name": {"neq": "x"}},
            "sort": ["price"], "limit": 50}));
        assert_eq!(
            t.sql
                .matches("LEFT JOIN \"acme\".\"category\" t1 ON t1.\"id\" = t0.\"category_id\"")
                .count(),
            1
        );
        assert!(
            t.sql
                .contains("LEFT JOIN \"acme\".\"category\" t2 ON t2.\"id\" = t1.\"parent_id\""),
            "{}",
            t.sql
        );
        assert!(t.sql.contains("(t0.\"status\" = $"), "{}", t.sql);
        assert!(
            t.sql.contains("((t0.\"metadata\" ->> 'brand') = $"),
            "{}",
            t.sql
        );
        assert!(
            t.sql
                .contains("ORDER BY t0.\"price\" ASC NULLS LAST, t0.\"id\" ASC LIMIT 50) q"),
            "the limit is part of the plan: {}",
            t.sql
        );
        assert!(t.sql.contains("CASE WHEN count(*) = 50 THEN"), "{}", t.sql);
        assert!(
            !t.sql.contains("Apple") && !t.sql.contains("active"),
            "values are parameters: {}",
            t.sql
        );
        let vals = bind(&json!({"filters": {"status": "active", "metadata.brand": "Apple", "category_id.name": {"neq": "x"}}, "limit": 50}), &t, &[]).unwrap();
        assert_eq!(vals.len(), t.params.len());
        assert!(vals.contains(&Some("Apple".into())));
    }

    #[test]
    fn to_many_columns_and_filters() {
        let t = sql(json!({"columns": ["name", "tags.name"], "filters": {"tags.name": "hot"}}));
        assert!(t.sql.contains("(SELECT coalesce(jsonb_agg(m1.\"name\"), '[]'::jsonb) FROM \"acme\".\"product__tags\" j1"), "{}", t.sql);
        assert!(
            t.sql.contains(
                "EXISTS (SELECT 1 FROM \"acme\".\"product__tags\" fj2 JOIN \"acme\".\"tag\" f2"
            ),
            "{}",
            t.sql
        );
        let c = compile(
            &shop(),
            "category",
            &json!({"columns": ["name", "product[].codename"]}),
        )
        .unwrap();
        assert!(
            c.sql
                .contains("FROM \"acme\".\"product\" m1 WHERE m1.\"category_id\" = t0.\"id\""),
            "{}",
            c.sql
        );
    }

    #[test]
    fn type_aware_json_filters() {
        let t = sql(
            json!({"filters": {"metadata.storage": {"gte": 128}, "metadata.launched": {"lt": "2024-06-01"}, "metadata.eco": true}}),
        );
        assert!(t.sql.contains("(CASE WHEN jsonb_typeof((t0.\"metadata\" -> 'storage')) = 'number' THEN ((t0.\"metadata\" -> 'storage'))::numeric END) >= $"), "{}", t.sql);
        assert!(
            t.sql
                .contains("udm.json_date((t0.\"metadata\" -> 'launched')) < $"),
            "{}",
            t.sql
        );
        assert!(t.sql.contains("::boolean END) = $"), "{}", t.sql);
    }

    #[test]
    fn operator_errors_name_the_path() {
        let m = shop();
        let e = compile(&m, "product", &json!({"filters": {"active": {"gt": true}}})).unwrap_err();
        assert_eq!(e.state, SqlState::DatatypeMismatch);
        assert!(
            e.message
                .contains("filter \"active\": operator \"gt\" does not apply to booleans"),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("\"eq\""));
        let e = compile(
            &m,
            "product",
            &json!({"filters": {"price": {"like": "1%"}}}),
        )
        .unwrap_err();
        assert!(e.message.contains("does not apply to numbers"));
        let e = compile(&m, "product", &json!({"filters": {"price": {"gtt": 1}}})).unwrap_err();
        assert!(
            e.message.contains("unknown operator \"gtt\""),
            "{}",
            e.message
        );
        let e = compile(&m, "product", &json!({"colums": ["name"]})).unwrap_err();
        assert!(e.message.contains("unknown option \"colums\""));
        let e = compile(&m, "product", &json!({"sort": ["tags.name"]})).unwrap_err();
        assert!(e.message.contains("cannot be sorted by"));
    }

    #[test]
    fn keyset_pages() {
        let m = shop();
        let t = compile(
            &m,
            "product",
            &json!({"sort": ["-created_at"], "limit": 10}),
        )
        .unwrap();
        assert!(
            t.sql.contains("THEN translate(encode(convert_to(jsonb_build_object('k', jsonb_agg(q.k) -> -1, 's', "),
            "{}",
            t.sql
        );
        let sig = {
            let mut from = From::new(&m, "product");
            sort_signature(
                "product",
                &sort_keys(&mut from, "product", Some(&json!(["-created_at"]))).unwrap(),
            )
        };
        let cur = encode_cursor(
            &json!([
                "2024-01-01T00:00:00+00:00",
                "6f9619ff-8b86-d011-b42d-00c04fc964ff"
            ]),
            &sig,
        );
        let t = compile(
            &m,
            "product",
            &json!({"sort": ["-created_at"], "limit": 10, "cursor": cur}),
        )
        .unwrap();
        // created_at is NOT NULL but the tie-breaker id goes up while created_at goes down
        assert!(t.sql.contains("(t0.\"created_at\" < $"), "{}", t.sql);
        let cur2 = encode_cursor(
            &json!(["6f9619ff-8b86-d011-b42d-00c04fc964ff"]),
            &sort_signature("product", &[]),
        );
        let t = compile(&m, "product", &json!({"cursor": cur2})).unwrap();
        assert!(
            t.sql.contains("(t0.\"id\") > ($"),
            "row comparison on NOT NULL keys: {}",
            t.sql
        );
        let e = compile(&m, "product", &json!({"sort": ["name"], "cursor": cur})).unwrap_err();
        assert!(e.message.contains("another sort"));
    }

    #[test]
    fn counts() {
        let t = sql(json!({"filters": {"status": "active"}, "count": "exact"}));
        assert!(t.sql.contains("'count', (SELECT count(*) FROM \"acme\".\"product\" t0 WHERE (t0.\"status\" = $1::text))"), "{}", t.sql);
        let t = sql(json!({"count": "estimated"}));
        assert_eq!(
            t.computed,
            vec![Computed::EstimatedRows(
                "SELECT 1 FROM \"acme\".\"product\" t0".into()
            )]
        );
    }

    #[test]
    fn limits() {
        let m = shop();
        let many: Vec<String> = (0..17)
            .map(|_| "category_id.parent_id".to_string())
            .collect();
        let path = many.join(".");
        assert!(compile(&m, "product", &json!({"columns": [path]})).is_err());
        let e = compile(&m, "product", &json!({"limit": 5000})).unwrap_err();
        assert_eq!(e.state, SqlState::ProgramLimitExceeded);
        assert!(e.message.contains("\"limit\" 5000"), "{}", e.message);
        for bad in [json!(0), json!(-3), json!(2.5), json!("10")] {
            let e = compile(&m, "product", &json!({"limit": bad})).unwrap_err();
            assert_eq!(e.state, SqlState::InvalidParameterValue, "{bad}");
        }
    }
}
