//! The SQL of representative queries and mutations.

use super::*;

fn one(q: &str, vars: Value) -> Statement {
    statements(q, vars).remove(0)
}

#[test]
fn by_id() {
    // leaves and to-one objects: the page's columns as rows, the object built by the surface
    let st = one(
        "query($id: UUID!) { product(id: $id) { id name price category { __typename name } } }",
        json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
    );
    assert!(
        st.sql.starts_with(
            "SELECT p1.c0, p1.c1, (p1.c2)::text, p1.c3, p1.c4 FROM (SELECT t0.\"id\" AS c0"
        ),
        "{}",
        st.sql
    );
    assert!(
        st.sql.ends_with("WHERE (t0.\"id\" = $1::uuid)) p1"),
        "one record by id: no ORDER BY, no LIMIT (PostgreSQL flattens the sub-select): {}",
        st.sql
    );
    assert!(!st.sql.contains("LIMIT"), "{}", st.sql);
    assert_eq!(
        st.params,
        vec![Some("6f9619ff-8b86-d011-b42d-00c04fc964ff".to_string())]
    );
    let shape = st.rows.expect("built from rows");
    assert_eq!(shape.columns, 5);
    assert_eq!(shape.wrap, Wrap::One);
    assert_eq!(
        shape.node,
        vec![
            ("id".to_string(), RowPart::Column(0)),
            ("name".to_string(), RowPart::Column(1)),
            ("price".to_string(), RowPart::Column(2)),
            (
                "category".to_string(),
                RowPart::Object {
                    present: 3,
                    fields: vec![
                        ("__typename".to_string(), RowPart::Const("Category".into())),
                        ("name".to_string(), RowPart::Column(4)),
                    ]
                }
            ),
        ]
    );
    assert_eq!(
        shape.point, None,
        "a related record is not a column of the table"
    );
    // plain columns only: readable by primary key
    let st = one(
        "query($id: UUID!) { product(id: $id) { __typename id name price createdAt } }",
        json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
    );
    assert_eq!(
        st.rows.expect("rows").point,
        Some(PointRead {
            entity: "product".into(),
            columns: vec![
                ("id".into(), false),
                ("name".into(), false),
                ("price".into(), true),
                ("created_at".into(), false)
            ],
            id_param: 0
        })
    );
    let st = one(
        r#"query($id: UUID!) { product(id: $id) { name brand: metadata(path: ["brand"]) } }"#,
        json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
    );
    assert_eq!(st.rows.expect("rows").point, None, "a JSON path");
    // a nested connection needs SQL's aggregate: the statement builds the jsonb
    let st = one(
        "query($id: UUID!) { category(id: $id) { name productCollection(first: 2) { nodes { name } } } }",
        json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
    );
    assert!(st.rows.is_none());
    assert!(
        st.sql
            .starts_with("SELECT (SELECT jsonb_build_object('name', p1.c1, 'productCollection', "),
        "{}",
        st.sql
    );
}

/// A root connection of only `nodes` (and `__typename`) over leaves and to-one objects is the
/// bare page in the order asked for; anything else of the connection is built in SQL.
#[test]
fn a_connection_of_only_flat_nodes_is_its_rows() {
    let st = one(
        "{ productCollection(orderBy: [{price: ASC}], first: 5) { __typename items: nodes { name category { parent { name } } } } }",
        json!({}),
    );
    let shape = st.rows.clone().expect("built from rows");
    assert!(
        st.sql
            .starts_with("SELECT p1.c1, p1.c2, p1.c3, p1.c4 FROM (SELECT t0.\"id\" AS c0"),
        "{}",
        st.sql
    );
    assert!(
        st.sql
            .ends_with(" LIMIT 5) p1 ORDER BY p1.k0 ASC NULLS LAST, p1.k1 ASC NULLS LAST"),
        "{}",
        st.sql
    );
    assert!(!st.sql.contains("jsonb"), "{}", st.sql);
    assert_eq!(
        shape.wrap,
        Wrap::Connection {
            keys: vec![
                ("__typename".into(), Some("ProductConnection".into())),
                ("items".into(), None)
            ],
            reverse: false
        }
    );
    assert_eq!(shape.columns, 4);
    // backwards: fetched in reverse, turned around by the surface
    let st = one(
        "{ productCollection(orderBy: [{price: ASC}], last: 3) { nodes { name } } }",
        json!({}),
    );
    assert!(
        matches!(&st.rows, Some(s) if s.wrap == Wrap::Connection { keys: vec![("nodes".into(), None)], reverse: true }),
        "{:?}",
        st.rows
    );
    assert!(
        st.sql
            .ends_with("p1 ORDER BY p1.k0 DESC NULLS FIRST, p1.k1 DESC NULLS FIRST"),
        "{}",
        st.sql
    );
    for q in [
        "{ productCollection(first: 5) { nodes { name } pageInfo { hasNextPage } } }",
        "{ productCollection(first: 5) { edges { node { name } } } }",
        "{ productCollection(first: 5) { totalCount nodes { name } } }",
        "{ productCollection(first: 5) { a: nodes { name } b: nodes { price } } }",
        "{ categoryCollection(first: 5) { nodes { name productCollection { nodes { name } } } } }",
    ] {
        let st = one(q, json!({}));
        assert!(st.rows.is_none(), "{q}");
        assert!(st.sql.contains("jsonb_agg"), "{q}: {}", st.sql);
    }
}

/// 50 categories × their 10 newest products, with a relation path and a JSON path, in one
/// statement.
#[test]
fn nested_connection_in_one_statement() {
    let q = r#"query($min: Decimal) {
      categoryCollection(first: 50, orderBy: [{name: ASC}], filter: {productCollection: {some: {status: {eq: active}}}}) {
        totalCount
        pageInfo { hasNextPage endCursor }
        edges { cursor node {
          name parent { name }
          newest: productCollection(first: 10, orderBy: [{createdAt: DESC}], filter: {price: {gte: $min}}) {
            nodes { name price category { name } brand: metadata(path: ["brand"]) }
          } } } } }"#;
    let sts = statements(q, json!({"min": "100"}));
    assert_eq!(sts.len(), 1, "one statement");
    let sql = &sts[0].sql;
    assert!(
        sql.contains("LIMIT 51"),
        "one row more for hasNextPage: {sql}"
    );
    assert!(sql.contains("LIMIT 10"), "{sql}");
    assert!(
        sql.contains("WHERE t0.\"category_id\" = p1.c0 AND ((t0.\"price\" >= $3::numeric))")
            || sql.contains("t0.\"category_id\" = p1.c0"),
        "the nested page hangs on its parent row: {sql}"
    );
    assert!(sql.contains("(t0.\"metadata\" -> 'brand')"), "{sql}");
    assert!(
        sql.contains("LEFT JOIN \"acme\".\"category\" t1 ON t1.\"id\" = t0.\"category_id\""),
        "{sql}"
    );
    assert!(sql.contains("EXISTS (SELECT 1 FROM \"acme\".\"product\" q1_t0 WHERE q1_t0.\"category_id\" = t0.\"id\""), "{sql}");
    assert!(
        sql.contains("row_number() OVER (ORDER BY p2.k0 DESC NULLS FIRST, p2.k1 ASC NULLS LAST)")
            || sql.contains("DESC NULLS FIRST"),
        "{sql}"
    );
    assert!(
        sql.contains("(SELECT count(*)::int FROM \"acme\".\"category\" t0 WHERE"),
        "{sql}"
    );
    assert!(
        !sql.contains("active") && !sql.contains("100"),
        "values are parameters: {sql}"
    );
    assert!(
        sts[0].params.contains(&Some("active".into()))
            && sts[0].params.contains(&Some("100".into()))
    );
    assert_eq!(
        sts[0].planning,
        Planning::PerCall,
        "a count visits every row"
    );
}

#[test]
fn filters_through_relations_both_ways() {
    let sql = one(r#"{ productCollection(filter: {category: {name: {startsWith: "Ph"}}, tags: {every: {name: {neq: "old"}}, none: {name: {eq: "x"}}}, not: {status: {in: [draft]}}}) { totalCount } }"#, json!({})).sql;
    assert!(sql.contains("(t1.\"name\" LIKE $1::text)"), "{sql}");
    assert!(sql.contains("IS NOT TRUE"), "every: {sql}");
    assert!(
        sql.contains("(NOT EXISTS (SELECT 1 FROM \"acme\".\"tag\""),
        "none: {sql}"
    );
    let sql = one(r#"{ tagCollection(filter: {productCollectionByTags: {some: {price: {gt: 5}}}}) { nodes { name } } }"#, json!({})).sql;
    assert!(sql.contains("JOIN \"acme\".\"product__tags\" qj1 ON qj1.\"source_id\" = q1_t0.\"id\" WHERE qj1.\"target_id\" = t0.\"id\""), "{sql}");
    let sql = one(r#"{ productCollection(filter: {metadata: {path: ["size", "w"], gt: 3}}) { nodes { id } } }"#, json!({})).sql;
    assert!(
        sql.contains("jsonb_typeof(((t0.\"metadata\" -> 'size') -> 'w')) = 'number'"),
        "{sql}"
    );
}

#[test]
fn order_by_a_related_field_and_page_backwards() {
    let sql = one("{ productCollection(orderBy: [{category: {name: DESC_NULLS_LAST}}], last: 5) { nodes { name } pageInfo { hasPreviousPage startCursor } } }", json!({})).sql;
    assert!(
        sql.contains("ORDER BY t1.\"name\" ASC NULLS FIRST, t0.\"id\" DESC NULLS FIRST LIMIT 6"),
        "reversed to fetch backwards: {sql}"
    );
    assert!(
        sql.contains("ORDER BY x2.__n DESC"),
        "shown in the order asked for: {sql}"
    );
}

#[test]
fn aggregates_group_by_relation_paths() {
    let st = one("{ productAggregate(groupBy: [{category: {name: VALUE}}, {releaseDate: MONTH, as: \"month\"}]) { key count sum { price } max { price } } }", json!({}));
    assert!(
        st.sql
            .contains("GROUP BY t1.\"name\", (date_trunc('month', t0.\"release_date\"))::date"),
        "{}",
        st.sql
    );
    assert!(
        st.sql
            .contains("jsonb_build_object($1::text, a.c0, $2::text, a.c1)"),
        "{}",
        st.sql
    );
    assert_eq!(
        st.params,
        vec![Some("category.name".into()), Some("month".into())]
    );
}

#[test]
fn views_history_and_as_of() {
    let st = one("{ productKanban(field: status, first: 3) { columns { value count cards { name category { name } } } } }", json!({}));
    assert!(
        st.sql
            .contains("unnest(ARRAY['draft', 'active', 'retired']::text[])"),
        "{}",
        st.sql
    );
    let st = one("query($id: UUID!) { productHistory(id: $id, first: 5) { version action changedFields record { name price } } }", json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}));
    assert!(
        st.sql
            .contains("FROM \"udm\".\"udm_history\"($1::text, $2::uuid)"),
        "{}",
        st.sql
    );
    assert!(
        st.sql.contains("WHEN 'category_id' THEN 'categoryId'"),
        "{}",
        st.sql
    );
    let st = one("{ productAsOf(id: \"6f9619ff-8b86-d011-b42d-00c04fc964ff\", at: \"2024-01-01T00:00:00Z\") { name price } }", json!({}));
    assert!(
        st.sql
            .contains("\"udm\".\"udm_record_at\"($1::text, $2::uuid, $3::timestamptz)"),
        "{}",
        st.sql
    );
}

#[test]
fn mutations() {
    let sts = statements(
        r#"mutation { insertProduct(objects: [{name: "P", category: {name: "C", productCollection: [{name: "R"}]}}, {name: "Q", tags: ["6f9619ff-8b86-d011-b42d-00c04fc964ff"]}]) { affectedCount records { id name category { name } } } }"#,
        json!({}),
    );
    assert!(
        sts[0]
            .sql
            .starts_with("WITH ins AS (INSERT INTO \"acme\".\"category\""),
        "parents first: {}",
        sts[0].sql
    );
    assert!(
        sts.iter()
            .any(|s| s.sql.contains("INSERT INTO \"acme\".\"product__tags\"")),
        "links"
    );
    let last = sts.last().unwrap();
    assert!(
        last.sql.contains("= ANY ($1::uuid[])") || last.sql.contains("(t0.\"id\" = ANY ("),
        "read back by ids: {}",
        last.sql
    );
    let sts = statements(
        r#"mutation { updateProduct(id: "6f9619ff-8b86-d011-b42d-00c04fc964ff", set: {price: "5", categoryId: null}, expectedVersion: 3) { id _version } }"#,
        json!({}),
    );
    assert_eq!(
        &*sts[0].sql,
        "SELECT \"udm\".\"udm_update\"($1::text, $2::uuid, $3::jsonb, $4::integer)"
    );
    assert_eq!(
        sts[0].params[2].as_deref(),
        Some("{\"category_id\":null,\"price\":5}"),
        "a Decimal given as text reaches udm as the number it spells"
    );
    let sts = statements(
        r#"mutation { updateProductMany(filter: {status: {eq: draft}}, set: {status: retired}, atMost: 10) { affectedCount records { id } } }"#,
        json!({}),
    );
    assert!(
        sts[0]
            .sql
            .contains("LIMIT $2::bigint FOR NO KEY UPDATE OF t0"),
        "{}",
        sts[0].sql
    );
    assert_eq!(sts[0].params[1].as_deref(), Some("11"));
    assert!(sts[1].sql.contains("UPDATE \"acme\".\"product\" AS t0 SET \"status\" = $2::text WHERE t0.\"id\" = ANY ($1::uuid[])"), "{}", sts[1].sql);
    let sts = statements(
        r#"mutation { deleteProduct(id: "6f9619ff-8b86-d011-b42d-00c04fc964ff", expectedVersion: 1) { name } }"#,
        json!({}),
    );
    assert!(sts[0].sql.contains("\"_version\""), "{}", sts[0].sql);
    assert!(sts.last().unwrap().sql.contains("udm_delete"));
    let sts = statements(
        r#"mutation { upsertCategory(objects: [{name: "A"}], onConflict: name) { affectedCount } }"#,
        json!({}),
    );
    assert!(
        sts[0].sql.contains("ON CONFLICT (\"name\")"),
        "{}",
        sts[0].sql
    );
    let sts = statements(
        r#"mutation { addField(entity: "product", field: {name: "weight", type: "decimal", maxLength: 3}) }"#,
        json!({}),
    );
    assert_eq!(
        &*sts[0].sql,
        "SELECT \"udm\".\"udm_add_field\"($1::text, $2::jsonb)"
    );
    assert!(sts[0].params[1]
        .as_deref()
        .unwrap()
        .contains("\"max_length\":3"));
    let sts = statements(
        r#"mutation { lockProduct(id: "6f9619ff-8b86-d011-b42d-00c04fc964ff") }"#,
        json!({}),
    );
    assert!(sts[0].sql.contains("udm_lock_acquire"));
    let e = errors(
        r#"mutation { addField(entity: "product", field: {name: "w", type: "text"}) deleteProduct(id: "6f9619ff-8b86-d011-b42d-00c04fc964ff") { id } }"#,
        json!({}),
    );
    assert!(e[0].message.contains("only definition changes"));
}

#[test]
fn subscriptions_plan_their_payloads() {
    let s = schema();
    let m = shop();
    let p = plan(&s, &m, "subscription { productChanged(actions: [UPDATE], filter: {price: {gt: 5}}) { action changedFields record { name } old { price } } }", json!({})).unwrap();
    let sub = p.subscription.unwrap();
    assert!(sub.wants("product", "UPDATE") && !sub.wants("product", "DELETE"));
    let c = sub
        .condition(&m, &|p| format!("{p}::jsonb"), Some("{}".into()))
        .unwrap()
        .unwrap();
    assert!(c.sql.starts_with("SELECT EXISTS"), "{}", c.sql);
    assert_eq!(c.params.len(), 2);
    let r = sub
        .record_statement(&m, "6f9619ff-8b86-d011-b42d-00c04fc964ff")
        .unwrap()
        .unwrap();
    assert!(r.sql.contains("\"acme\".\"product\""));
    let ev = Event {
        event_id: 7,
        entity: "product".into(),
        id: "x".into(),
        action: "UPDATE".into(),
        version: Some(2),
        changed_fields: vec!["category_id".into()],
        old: Some(serde_json::from_str(r#"{"price": 3.50}"#).unwrap()),
    };
    // a Decimal of the image before the change is text, as the record gives it
    assert_eq!(
        sub.payload(&ev, Some(json!({"name": "n"}))),
        json!({"productChanged": {"action": "UPDATE", "changedFields": ["categoryId"], "record": {"name": "n"}, "old": {"price": "3.50"}}})
    );
}

#[test]
fn a_connection_of_only_its_count_is_one_row() {
    // nothing selected from the page's rows: no aggregate over them, so the count must not be
    // read once per row of the page (a scalar subquery returning several rows)
    let st = one("{ productCollection { totalCount __typename } }", json!({}));
    assert!(st.sql.contains("SELECT count(*)::int FROM"), "{}", st.sql);
    assert!(!st.sql.contains(") t0) x"), "{}", st.sql);
    let st = one(
        "{ productCollection { totalCount nodes { name } } }",
        json!({}),
    );
    assert!(st.sql.contains("jsonb_agg"), "{}", st.sql);
}

/// A page after a cursor is planned once for any cursor (its index order decides the plan); a
/// first page keeps PostgreSQL's own choice, and a count is planned per call.
#[test]
fn keyset_pages_are_planned_once() {
    let q = "query($after: Cursor) { productCollection(orderBy: [{price: ASC}], first: 50, after: $after) { nodes { name } } }";
    let first = one(q, json!({}));
    assert_eq!(first.planning, Planning::Cached);
    let sig = {
        let m = shop();
        let mut from = crate::query::From::new(&m, "product");
        crate::query::sort_signature(
            "product",
            &crate::query::sort_keys(&mut from, "product", Some(&json!(["price"]))).unwrap(),
        )
    };
    let cursor =
        crate::query::encode_cursor(&json!([9.5, "6f9619ff-8b86-d011-b42d-00c04fc964ff"]), &sig);
    let next = one(q, json!({"after": cursor}));
    assert_eq!(next.planning, Planning::Generic, "{}", next.sql);
    assert!(
        next.params.contains(&Some("9.5".into())),
        "{:?}",
        next.params
    );
    let counted = one(
        "query($after: Cursor) { productCollection(orderBy: [{price: ASC}], first: 50, after: $after) { totalCount nodes { name } } }",
        json!({"after": cursor}),
    );
    assert_eq!(counted.planning, Planning::PerCall);
}
