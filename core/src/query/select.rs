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

/// A paged select, shared by `udm_query` and the table view: its SQL returns one row per record
/// (see [`RowsOutput`]).
pub struct Page {
    pub sql: String,
    pub filter: Option<String>,
    pub count_from: String,
    pub columns: Vec<String>,
    pub cursor: Option<PageCursor>,
    /// For each cursor key column (`k0`, `k1`, …): (descending, NULLs first) in the order the
    /// caller asked for, also when the page was fetched backwards.
    pub order: Vec<(bool, bool)>,
    /// Encrypted fields selected as stored (`PageOptions::sealed_raw`), with their records' ids
    /// after the cursor keys.
    pub sealed: Vec<SealedColumn>,
}

/// How a page is fetched when it is part of a larger statement (GraphQL connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageOptions {
    /// A condition added to the page's WHERE clause, e.g. the link of a nested page to its
    /// parent row (`t0."category_id" = x1.c0`).
    pub link: Option<String>,
    /// Fetch the rows before the cursor (`before`, `last`), nearest first: every sort key
    /// reversed. The cursor keys and their columns are those of the forward page.
    pub backward: bool,
    /// Fetch one row more than the limit, which tells whether more rows follow.
    pub extra_row: bool,
    /// The filters select one record by its id (and every join is to one record): no ORDER BY
    /// and no LIMIT, so PostgreSQL flattens the page into the statement around it.
    pub by_id: bool,
    /// The caller builds the rows' JSON from the result (`RowsOutput`): encrypted fields are
    /// selected as stored and opened there, not through a SQL call per value. Not for
    /// `distinct` pages (equal plaintexts have different ciphertexts).
    pub sealed_raw: bool,
}

pub fn page(
    model: &dyn Model,
    entity: &str,
    obj: &Map<String, Value>,
    params: &mut Params,
) -> Result<Page> {
    page_with(
        model,
        entity,
        obj,
        params,
        &PageOptions {
            sealed_raw: true,
            ..Default::default()
        },
    )
}

/// The `id` sort key every keyset page ends with.
fn id_key() -> SortKey {
    SortKey {
        path: "id".into(),
        expr: "t0.\"id\"".into(),
        ptype: PType::Uuid,
        desc: false,
        nulls_first: false,
        not_null: true,
    }
}

/// A page, fetched as `opts` says.
pub fn page_with(
    model: &dyn Model,
    entity: &str,
    obj: &Map<String, Value>,
    params: &mut Params,
    opts: &PageOptions,
) -> Result<Page> {
    let columns = columns_of(model, entity, obj)?;
    let mut from = From::new(model, entity);
    let distinct = opt_bool(obj, "distinct")?;
    let (row, raw) = row_columns_sealed(&mut from, entity, &columns, opts.sealed_raw && !distinct)?;
    let (filter, used) = where_clause(&mut from, params, entity, obj)?;
    let mut keys = sort_keys(&mut from, entity, obj.get("sort"))?;
    let sig = sort_signature(entity, &keys);
    let has_id = keys.iter().any(|k| k.expr == "t0.\"id\"");
    let mut order: Vec<(bool, bool)> = keys.iter().map(|k| (k.desc, k.nulls_first)).collect();
    if !has_id {
        order.push((false, false));
    }
    if opts.backward {
        if distinct {
            return Err(UdmError::invalid(
                "\"distinct\" results cannot be paged backwards",
            ));
        }
        if !has_id {
            keys.push(id_key());
        }
        for k in &mut keys {
            k.desc = !k.desc;
            k.nulls_first = !k.nulls_first;
        }
    }
    let mut conds: Vec<String> = filter.iter().cloned().collect();
    conds.extend(opts.link.iter().cloned());
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
    let fetch = if opts.extra_row {
        (limit.parse::<i64>().expect("limit_literal writes a number") + 1).to_string()
    } else {
        limit.clone()
    };
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
    let mut select: Vec<String> = row
        .iter()
        .enumerate()
        .map(|(i, (_, e))| format!("{e} AS c{i}"))
        .collect();
    let (sql, cursor) = if distinct {
        // the sort expressions follow the record's columns: DISTINCT sorts by what it selects
        select.extend(
            keys.iter()
                .enumerate()
                .map(|(i, k)| format!("{} AS s{i}", k.expr)),
        );
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
        (
            format!(
                "SELECT DISTINCT {} FROM {from_sql}{where_sql}{order_sql} LIMIT {fetch}{offset}",
                select.join(", ")
            ),
            None,
        )
    } else {
        let mut k: Vec<String> = keys.iter().map(|k| k.expr.clone()).collect();
        if !keys.iter().any(|k| k.expr == "t0.\"id\"") {
            k.push("t0.\"id\"".into());
        }
        let cursor = PageCursor {
            keys: k.len(),
            limit: limit.parse().expect("limit_literal writes a number"),
            sig,
        };
        select.extend(k.iter().enumerate().map(|(i, e)| format!("{e} AS k{i}")));
        // the ids of the records whose encrypted fields are selected as stored: a cursor key
        // when one is that id, else one column per record (alias)
        let mut ids: Vec<String> = Vec::new();
        let mut sealed = Vec::with_capacity(raw.len());
        for (column, id, s) in raw {
            let at = match k.iter().position(|e| *e == id) {
                Some(i) => row.len() + i,
                None => {
                    let j = ids.iter().position(|e| *e == id).unwrap_or_else(|| {
                        ids.push(id);
                        ids.len() - 1
                    });
                    row.len() + k.len() + j
                }
            };
            sealed.push(SealedColumn {
                column,
                id: at,
                sealed: s,
            });
        }
        select.extend(ids.iter().enumerate().map(|(j, e)| format!("{e} AS e{j}")));
        if opts.by_id && opts.link.is_none() && obj.get("cursor").is_none_or(Value::is_null) {
            return Ok(Page {
                sql: format!("SELECT {} FROM {from_sql}{where_sql}", select.join(", ")),
                filter,
                count_from: from.sql(Some(&used)),
                columns: row.into_iter().map(|(key, _)| key).collect(),
                cursor: None,
                order,
                sealed,
            });
        }
        (
            format!(
                "SELECT {} FROM {from_sql}{where_sql} ORDER BY {} LIMIT {fetch}{offset}",
                select.join(", "),
                order_by(&keys, true)
            ),
            Some((cursor, sealed)),
        )
    };
    let (cursor, sealed) = match cursor {
        Some((c, s)) => (Some(c), s),
        None => (None, Vec::new()),
    };
    Ok(Page {
        sql,
        filter,
        count_from: from.sql(Some(&used)),
        columns: row.into_iter().map(|(key, _)| key).collect(),
        cursor,
        order,
        sealed,
    })
}

/// The count of a page's matching records: an exact `count(*)` statement, or an estimate
/// computed from the plan of the matching rows.
pub fn page_count(p: &Page, mode: CountMode) -> (Option<PageCount>, Vec<Computed>) {
    let where_sql = p
        .filter
        .as_ref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    match mode {
        CountMode::None => (None, vec![]),
        CountMode::Exact => (
            Some(PageCount::Exact(format!(
                "SELECT count(*) FROM {}{where_sql}",
                p.count_from
            ))),
            vec![],
        ),
        CountMode::Estimated => (
            Some(PageCount::Computed(0)),
            vec![Computed::EstimatedRows(format!(
                "SELECT 1 FROM {}{where_sql}",
                p.count_from
            ))],
        ),
    }
}

/// The template of a page whose count (if any) goes under `count_key`.
pub fn page_template(
    p: Page,
    params: Params,
    count: Option<PageCount>,
    computed: Vec<Computed>,
    count_key: &str,
) -> Template {
    Template {
        sql: p.sql,
        params: params.0,
        computed,
        // the page stops after its rows; an exact count is its own statement, planned per call
        plan_per_call: false,
        rows: Some(RowsOutput {
            columns: p.columns,
            cursor: p.cursor,
            count: count.map(|c| (count_key.to_string(), c)),
            sealed: p.sealed,
        }),
    }
}

/// Compiles a `udm_query` spec.
pub fn compile(model: &dyn Model, entity: &str, spec: &Value) -> Result<Template> {
    let obj = spec_object(spec, "query spec")?;
    expect_keys(obj, QUERY_KEYS, "query spec")?;
    let mut params = Params::default();
    let p = page(model, entity, obj, &mut params)?;
    let (count, computed) = page_count(&p, count_mode(obj.get("count"))?);
    Ok(page_template(p, params, count, computed, "count"))
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
                .ends_with("ORDER BY t0.\"price\" ASC NULLS LAST, t0.\"id\" ASC LIMIT 50"),
            "the limit is part of the plan: {}",
            t.sql
        );
        // one row per record: its columns, then the cursor keys (price, id)
        assert!(
            t.sql.starts_with("SELECT t0.\"name\" AS c0, t1.\"name\" AS c1, t2.\"name\" AS c2, (t0.\"metadata\" -> 'brand') AS c3, t0.\"price\" AS k0, t0.\"id\" AS k1 FROM"),
            "{}",
            t.sql
        );
        let out = t.rows.as_ref().expect("a page");
        assert_eq!(
            out.columns,
            [
                "name",
                "category_id.name",
                "category_id.parent_id.name",
                "metadata.brand"
            ]
        );
        let cursor = out.cursor.as_ref().expect("keyset paging");
        assert_eq!((cursor.keys, cursor.limit), (2, 50));
        assert_eq!(out.count, None);
        assert!(
            !t.sql.contains("Apple") && !t.sql.contains("active"),
            "values are parameters: {}",
            t.sql
        );
        let vals = bind(&json!({"filters": {"status": "active", "metadata.brand": "Apple", "category_id.name": {"neq": "x"}}, "limit": 50}), &t).unwrap();
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
        let sig = {
            let mut from = From::new(&m, "product");
            sort_signature(
                "product",
                &sort_keys(&mut from, "product", Some(&json!(["-created_at"]))).unwrap(),
            )
        };
        let cursor = t.rows.as_ref().and_then(|p| p.cursor.clone()).unwrap();
        assert_eq!(
            cursor,
            PageCursor {
                keys: 2,
                limit: 10,
                sig: sig.clone()
            }
        );
        assert!(
            t.sql.contains("t0.\"created_at\" AS k0, t0.\"id\" AS k1"),
            "{}",
            t.sql
        );
        let d = sql(json!({"columns": ["status"], "distinct": true, "sort": ["status"]}));
        assert!(
            d.sql
                .starts_with("SELECT DISTINCT t0.\"status\" AS c0, t0.\"status\" AS s0 FROM"),
            "{}",
            d.sql
        );
        assert_eq!(d.rows.unwrap().cursor, None, "distinct pages by offset");
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
        assert_eq!(
            t.rows.unwrap().count,
            Some((
                "count".to_string(),
                PageCount::Exact(
                    "SELECT count(*) FROM \"acme\".\"product\" t0 WHERE (t0.\"status\" = $1::text)"
                        .into()
                )
            ))
        );
        assert!(!t.plan_per_call, "the page itself stops after its rows");
        let t = sql(json!({"count": "estimated"}));
        assert_eq!(
            t.rows.as_ref().unwrap().count,
            Some(("count".to_string(), PageCount::Computed(0)))
        );
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

    #[test]
    fn quantified_filters_on_related_records() {
        let m = shop();
        let t = compile(
            &m,
            "category",
            &json!({"filters": {"product[category_id]": {"some": {"status": "active", "price": {"gt": 5}}}}}),
        )
        .unwrap();
        assert!(
            t.sql.contains("WHERE EXISTS (SELECT 1 FROM \"acme\".\"product\" q1_t0 WHERE q1_t0.\"category_id\" = t0.\"id\" AND (q1_t0.\"price\" > $1::numeric) AND (q1_t0.\"status\" = $2::text))"),
            "both conditions hold for one product: {}",
            t.sql
        );
        let t = compile(
            &m,
            "product",
            &json!({"filters": {"tags": {"every": {"name": {"starts_with": "a"}}, "none": {"name": "x"}}}}),
        )
        .unwrap();
        assert!(t.sql.contains("(NOT EXISTS (SELECT 1 FROM \"acme\".\"tag\" q1_t0 JOIN \"acme\".\"product__tags\" qj1 ON qj1.\"target_id\" = q1_t0.\"id\" WHERE qj1.\"source_id\" = t0.\"id\" AND ((q1_t0.\"name\" LIKE $1::text)) IS NOT TRUE))"), "{}", t.sql);
        assert!(
            t.sql
                .contains("(NOT EXISTS (SELECT 1 FROM \"acme\".\"tag\" q2_t0"),
            "{}",
            t.sql
        );
        // backwards through a many-to-many relation, and joins inside the sub-filter
        let t = compile(
            &m,
            "tag",
            &json!({"filters": {"product[tags]": {"some": {"category_id.name": "Phones"}}}}),
        )
        .unwrap();
        assert!(t.sql.contains("FROM \"acme\".\"product\" q1_t0 LEFT JOIN \"acme\".\"category\" q1_t1 ON q1_t1.\"id\" = q1_t0.\"category_id\" JOIN \"acme\".\"product__tags\" qj1 ON qj1.\"source_id\" = q1_t0.\"id\" WHERE qj1.\"target_id\" = t0.\"id\" AND (q1_t1.\"name\" = $1::text)"), "{}", t.sql);
        // nested quantifiers get their own aliases
        let t = compile(
            &m,
            "category",
            &json!({"filters": {"product[category_id]": {"some": {"tags": {"some": {"name": "hot"}}}}}}),
        )
        .unwrap();
        assert!(t.sql.contains("q1_q1_t0"), "{}", t.sql);
        let vals = bind(&json!({"filters": {"product[category_id]": {"some": {"tags": {"some": {"name": "hot"}}}}}}), &t).unwrap();
        assert_eq!(vals, vec![Some("hot".to_string())]);
        let e = compile(&m, "product", &json!({"filters": {"name": {"some": {}}}})).unwrap_err();
        assert!(
            e.message.contains("ends at related records"),
            "{}",
            e.message
        );
        let a = shape_key(
            "q",
            "c",
            &json!({"filters": {"tags": {"some": {"name": "a"}}}}),
        );
        let b = shape_key(
            "q",
            "c",
            &json!({"filters": {"tags": {"some": {"name": "b"}}}}),
        );
        assert_eq!(a, b, "values inside quantifiers are not structure");
    }

    #[test]
    fn pages_with_a_link_backwards_and_one_row_more() {
        let m = shop();
        let obj = json!({"columns": ["name"], "sort": [{"path": "created_at", "direction": "desc"}], "limit": 10});
        let opts = PageOptions {
            link: Some("t0.\"category_id\" = x1.c0".into()),
            backward: true,
            extra_row: true,
            by_id: false,
            sealed_raw: false,
        };
        let mut params = Params::default();
        let p = page_with(&m, "product", obj.as_object().unwrap(), &mut params, &opts).unwrap();
        assert!(
            p.sql.ends_with("WHERE t0.\"category_id\" = x1.c0 ORDER BY t0.\"created_at\" ASC NULLS LAST, t0.\"id\" DESC NULLS FIRST LIMIT 11"),
            "{}",
            p.sql
        );
        assert_eq!(p.order, vec![(true, true), (false, false)]);
        assert_eq!(p.cursor.as_ref().unwrap().limit, 10);
        // a cursor of the forward page pages backwards from the same row
        let sig = p.cursor.unwrap().sig;
        let cur = encode_cursor(
            &json!([
                "2024-01-01T00:00:00+00:00",
                "6f9619ff-8b86-d011-b42d-00c04fc964ff"
            ]),
            &sig,
        );
        let mut obj = obj;
        obj["cursor"] = json!(cur);
        let p = page_with(
            &m,
            "product",
            obj.as_object().unwrap(),
            &mut Params::default(),
            &opts,
        )
        .unwrap();
        assert!(
            p.sql
                .contains("(t0.\"created_at\", t0.\"id\") > ($1::timestamptz, $2::uuid)")
                || p.sql.contains("t0.\"created_at\" > $1"),
            "{}",
            p.sql
        );
    }
}
