//! udm_graphql as applications call it: queries with nested relations, filters and pages;
//! mutations all or nothing; schema changes seen by other sessions; errors with locations, paths
//! and SQLSTATEs; limits; access control exactly as for plain SQL.

use udm_tests::postgres::Client;
use udm_tests::*;

fn gql(c: &mut Client, query: &str, vars: Value) -> Value {
    c.query_one("SELECT udm_graphql($1, $2)", &[&query, &vars])
        .unwrap_or_else(|e| panic!("udm_graphql: {e}"))
        .get(0)
}

fn ok(c: &mut Client, query: &str, vars: Value) -> Value {
    let r = gql(c, query, vars);
    assert!(r.get("errors").is_none(), "unexpected errors: {r}");
    r["data"].clone()
}

fn first_error(r: &Value) -> &Value {
    &r["errors"][0]
}

/// A shop: category (self relation), product (relation, decimal, select, json, many-to-many
/// tags, a rule), tag.
fn shop(adm: &mut Client) -> String {
    let t = tenant(adm, "gql");
    adm.batch_execute(&format!(
        r#"SELECT udm_use({t});
           SELECT udm_define_entity('category', '{{"fields": [
             {{"name": "name", "type": "text", "required": true, "unique": true}},
             {{"name": "parent_id", "type": "relation", "target": "category"}}]}}');
           SELECT udm_define_entity('tag', '{{"fields": [{{"name": "name", "type": "text", "unique": true}}]}}');
           SELECT udm_define_entity('product', '{{"fields": [
             {{"name": "name", "type": "text", "required": true}},
             {{"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0}},
             {{"name": "status", "type": "select", "values": ["draft", "active"], "default": "draft"}},
             {{"name": "meta", "type": "json"}},
             {{"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"}},
             {{"name": "tags", "type": "relation", "target": "tag", "many": true}}],
             "rules": [{{"name": "priced", "check": "status = ''draft'' or price > 0", "message": "active products have a price"}}]}}');
           INSERT INTO {s}.category (name) VALUES ('Phones'), ('Laptops');
           INSERT INTO {s}.tag (name) VALUES ('red'), ('blue');
           INSERT INTO {s}.product (name, price, status, meta, category_id)
             SELECT 'P' || i, i * 10, 'active', jsonb_build_object('color', CASE WHEN i % 2 = 0 THEN 'red' ELSE 'blue' END),
                    (SELECT id FROM {s}.category WHERE name = CASE WHEN i <= 6 THEN 'Phones' ELSE 'Laptops' END)
             FROM generate_series(1, 10) i;
           -- (a loop, not INSERT ... SELECT of a join: Citus 12.1 deparses that wrongly for a
           -- schema's tables, "( IS NOT NULL)")
           DO $$ DECLARE red uuid; p uuid; BEGIN
             SELECT id INTO red FROM {s}.tag WHERE name = 'red';
             FOR p IN SELECT id FROM {s}.product WHERE name IN ('P1', 'P2') ORDER BY name LOOP
               INSERT INTO {s}."product__tags" (source_id, target_id) VALUES (p, red);
             END LOOP; END $$;"#,
        t = lit(&t),
        s = t
    ))
    .unwrap();
    t
}

#[test]
fn queries_follow_relations_filter_sort_and_page_in_one_call() {
    let mut c = admin();
    let t = shop(&mut c);
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let d = ok(
        &mut c,
        r#"query($cat: String!, $n: Int = 2) {
             productCollection(filter: {category: {name: {eq: $cat}}, price: {gte: "20"}},
                               orderBy: [{price: DESC}], first: $n) {
               totalCount
               edges { cursor node { name price status category { name } tags { nodes { name } } } }
               pageInfo { hasNextPage endCursor }
             }
           }"#,
        json!({"cat": "Phones"}),
    );
    let pc = &d["productCollection"];
    assert_eq!(pc["totalCount"], 5, "{pc}");
    let names: Vec<&str> = pc["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["P6", "P5"]);
    assert_eq!(
        pc["edges"][0]["node"]["price"], "60.00",
        "Decimal is exact text"
    );
    assert_eq!(pc["edges"][0]["node"]["category"]["name"], "Phones");
    assert_eq!(pc["pageInfo"]["hasNextPage"], true);
    // the next page from the cursor
    let after = pc["pageInfo"]["endCursor"].as_str().unwrap().to_string();
    let d = ok(
        &mut c,
        r#"query($after: Cursor) { productCollection(filter: {category: {name: {eq: "Phones"}}},
             orderBy: [{price: DESC}], first: 3, after: $after) { nodes { name } } }"#,
        json!({ "after": after }),
    );
    let names: Vec<&str> = d["productCollection"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["P4", "P3", "P2"]);
    // to-many filters (some), reverse relations, JSON paths, aliases and fragments
    let d = ok(
        &mut c,
        r#"{ red: productCollection(filter: {tags: {some: {name: {eq: "red"}}}}, orderBy: [{name: ASC}]) { nodes { ...P } }
             cats: categoryCollection(orderBy: [{name: ASC}]) { nodes { name productCollection(first: 1, orderBy: [{price: ASC}]) { nodes { name } } } } }
           fragment P on Product { name }"#,
        json!({}),
    );
    assert_eq!(d["red"]["nodes"], json!([{"name": "P1"}, {"name": "P2"}]));
    assert_eq!(d["cats"]["nodes"][0]["name"], "Laptops");
    assert_eq!(
        d["cats"]["nodes"][0]["productCollection"]["nodes"][0]["name"],
        "P7"
    );
    // @skip and @include
    let d = ok(
        &mut c,
        r#"query($s: Boolean!) { productCollection(first: 1, orderBy: [{name: ASC}]) { nodes { name price @skip(if: $s) status @include(if: $s) } } }"#,
        json!({"s": true}),
    );
    assert_eq!(
        d["productCollection"]["nodes"][0],
        json!({"name": "P1", "status": "active"})
    );
}

#[test]
fn errors_have_locations_paths_and_sqlstates() {
    let mut c = admin();
    let t = shop(&mut c);
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    // syntax
    let r = gql(&mut c, "{ productCollection { nodes { name }", json!({}));
    assert!(
        r.get("data").is_none(),
        "a request that fails before execution has no data: {r}"
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "GRAPHQL_PARSE_FAILED",
        "{r}"
    );
    assert!(first_error(&r)["locations"][0]["line"].as_i64().is_some());
    // validation: unknown field, with its location
    let r = gql(
        &mut c,
        "{\n  productCollection { nodes { nme } } }",
        json!({}),
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert_eq!(
        first_error(&r)["locations"][0],
        json!({"line": 2, "column": 31}),
        "{r}"
    );
    // a variable of the wrong type
    let r = gql(
        &mut c,
        "query($n: Int!) { productCollection(first: $n) { totalCount } }",
        json!({"n": "two"}),
    );
    assert!(r["errors"].as_array().is_some_and(|e| !e.is_empty()), "{r}");
    // a rule broken by a mutation: path, SQLSTATE and udm's message
    let r = gql(
        &mut c,
        r#"mutation { insertProduct(objects: [{name: "Free", status: active, price: 0}]) { affectedCount } }"#,
        json!({}),
    );
    let e = first_error(&r);
    assert_eq!(e["path"], json!(["insertProduct"]), "{r}");
    assert_eq!(e["extensions"]["sqlstate"], "23514", "{r}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("active products have a price"),
        "{r}"
    );
    // a limit names its setting
    c.batch_execute("SET udm.graphql_max_depth = 3").unwrap();
    let r = gql(
        &mut c,
        "{ productCollection { nodes { category { parent { parent { name } } } } } }",
        json!({}),
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "LIMIT_EXCEEDED",
        "{r}"
    );
    assert!(
        first_error(&r)["message"]
            .as_str()
            .unwrap()
            .contains("udm.graphql_max_depth"),
        "{r}"
    );
    c.batch_execute("RESET udm.graphql_max_depth").unwrap();
    // NULL and bad variables are errors in the response, never a crash
    let r: Value = c.query_one("SELECT udm_graphql(NULL)", &[]).unwrap().get(0);
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "BAD_USER_INPUT",
        "{r}"
    );
    let r: Value = c
        .query_one("SELECT udm_graphql('{ __typename }', '[1]')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "BAD_USER_INPUT",
        "{r}"
    );
    // without a tenant
    let mut other = admin();
    let r = gql(&mut other, "{ __typename }", json!({}));
    assert_eq!(first_error(&r)["extensions"]["sqlstate"], "55000", "{r}");
}

#[test]
fn mutations_are_all_or_nothing_and_check_versions() {
    let mut c = admin();
    let t = shop(&mut c);
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    // nested insert: a category with its products, Decimal given as text
    let d = ok(
        &mut c,
        r#"mutation { insertCategory(objects: [{name: "Tablets", productCollection: [{name: "T1", price: "199.99"}, {name: "T2", price: 299}]}]) {
             affectedCount records { id name productCollection(orderBy: [{name: ASC}]) { nodes { name price } } } } }"#,
        json!({}),
    );
    let rec = &d["insertCategory"]["records"][0];
    assert_eq!(rec["name"], "Tablets");
    assert_eq!(
        rec["productCollection"]["nodes"],
        json!([{"name": "T1", "price": "199.99"}, {"name": "T2", "price": "299.00"}])
    );
    let plain: i64 = scalar(
        &mut c,
        &format!("SELECT count(*) FROM {t}.product p JOIN {t}.category c ON c.id = p.category_id WHERE c.name = 'Tablets'"),
    );
    assert_eq!(plain, 2, "plain SQL sees what GraphQL wrote");
    // two fields, the second fails: neither stays
    let r = gql(
        &mut c,
        r#"mutation { a: insertTag(objects: [{name: "green"}]) { affectedCount } b: insertTag(objects: [{name: "red"}]) { affectedCount } }"#,
        json!({}),
    );
    assert_eq!(r["data"], Value::Null, "{r}");
    assert_eq!(first_error(&r)["extensions"]["sqlstate"], "23505", "{r}");
    assert_eq!(first_error(&r)["path"], json!(["b"]));
    let green: i64 = scalar(
        &mut c,
        &format!("SELECT count(*) FROM {t}.tag WHERE name = 'green'"),
    );
    assert_eq!(green, 0, "the first insert was rolled back");
    // update by id with the expected version
    let id: String = scalar(
        &mut c,
        &format!("SELECT id::text FROM {t}.product WHERE name = 'P1'"),
    );
    let r = gql(
        &mut c,
        r#"mutation($id: UUID!) { updateProduct(id: $id, set: {name: "P1b"}, expectedVersion: 7) { name } }"#,
        json!({ "id": id }),
    );
    assert_eq!(first_error(&r)["extensions"]["sqlstate"], "40001", "{r}");
    let d = ok(
        &mut c,
        r#"mutation($id: UUID!) { updateProduct(id: $id, set: {name: "P1b"}, expectedVersion: 1) { name _version } }"#,
        json!({ "id": id }),
    );
    assert_eq!(d["updateProduct"]["name"], "P1b", "{d}");
    // update by filter guarded by atMost
    let r = gql(
        &mut c,
        r#"mutation { updateProductMany(filter: {status: {eq: active}}, set: {status: draft}, atMost: 3) { affectedCount } }"#,
        json!({}),
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "LIMIT_EXCEEDED",
        "{r}"
    );
    let drafts: i64 = scalar(
        &mut c,
        &format!("SELECT count(*) FROM {t}.product WHERE status = 'draft'"),
    );
    assert_eq!(
        drafts, 2,
        "only the Tablets products are drafts: nothing changed"
    );
    // delete, audited like plain SQL
    let d = ok(
        &mut c,
        r#"mutation($id: UUID!) { deleteProduct(id: $id) { name } }"#,
        json!({ "id": id }),
    );
    assert_eq!(d["deleteProduct"]["name"], "P1b");
    let audited: i64 = scalar(
        &mut c,
        &format!("SELECT count(*) FROM {t}._udm_audit WHERE record_id = '{id}' AND entity = 'product' AND action = 'DELETE'"),
    );
    assert_eq!(audited, 1);
}

#[test]
fn schema_mutations_are_seen_by_the_next_request_of_another_session() {
    let mut a = admin();
    let t = shop(&mut a);
    let mut b = admin();
    a.execute("SELECT udm_use($1)", &[&t]).unwrap();
    b.execute("SELECT udm_use($1)", &[&t]).unwrap();
    // b has the schema cached
    let sdl: String = b
        .query_one("SELECT udm_graphql_schema()", &[])
        .unwrap()
        .get(0);
    assert!(!sdl.contains("type Supplier"));
    let d = ok(
        &mut a,
        r#"mutation { defineEntity(slug: "supplier", definition: {fields: [{name: "name", type: "text", required: true}]}) }"#,
        json!({}),
    );
    assert!(d["defineEntity"].is_object(), "{d}");
    let sdl: String = b
        .query_one("SELECT udm_graphql_schema()", &[])
        .unwrap()
        .get(0);
    assert!(
        sdl.contains("type Supplier"),
        "the other session sees the new entity"
    );
    let d = ok(
        &mut b,
        r#"mutation { insertSupplier(objects: [{name: "ACME"}]) { affectedCount } }"#,
        json!({}),
    );
    assert_eq!(d["insertSupplier"]["affectedCount"], 1);
    // a definition change mixed with data changes is refused
    let r = gql(
        &mut a,
        r#"mutation { addField(entity: "supplier", field: {name: "city", type: "text"}) insertTag(objects: [{name: "x"}]) { affectedCount } }"#,
        json!({}),
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED",
        "{r}"
    );
}

#[test]
fn members_read_and_write_no_more_than_through_plain_sql() {
    let mut adm = admin();
    let t = shop(&mut adm);
    let app = login_role(&mut adm, "gqlapp");
    grant_tenant(&mut adm, &t, &app);
    let viewer = format!("{}@gql.test", unique("viewer"));
    let editor = format!("{}@gql.test", unique("editor"));
    adm.batch_execute(&format!(
        r#"SELECT udm_create_user({v}, 'Viewer', 'a-long-password'); SELECT udm_create_user({e}, 'Editor', 'a-long-password');
           SELECT udm_use({t});
           SELECT udm_define_role('shopper', 'viewer', '{{"entities": {{"product": {{"fields": {{"meta": {{"read": false}}}}}}}}}}');
           SELECT udm_add_member({t}, {v}, 'shopper'); SELECT udm_add_member({t}, {e}, 'editor');"#,
        v = lit(&viewer),
        e = lit(&editor),
        t = lit(&t)
    ))
    .unwrap();
    let mut c = connect_as(&app);
    c.execute("SELECT udm_use($1, $2)", &[&t, &viewer]).unwrap();
    // the hidden field is not in the viewer's schema
    let sdl: String = c
        .query_one("SELECT udm_graphql_schema()", &[])
        .unwrap()
        .get(0);
    let product = sdl
        .split("type Product ")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert!(!product.contains("meta"), "{product}");
    let r = gql(
        &mut c,
        "{ productCollection { nodes { meta } } }",
        json!({}),
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED",
        "{r}"
    );
    // reads: what plain SQL shows
    let d = ok(&mut c, "{ productCollection { totalCount } }", json!({}));
    let plain: i64 = scalar(&mut c, &format!("SELECT count(*) FROM {t}.product"));
    assert_eq!(d["productCollection"]["totalCount"], plain);
    // writes refused
    let r = gql(
        &mut c,
        r#"mutation { insertTag(objects: [{name: "mine"}]) { affectedCount } }"#,
        json!({}),
    );
    assert_eq!(first_error(&r)["extensions"]["sqlstate"], "42501", "{r}");
    let r = gql(
        &mut c,
        r#"mutation { defineEntity(slug: "x", definition: {fields: [{name: "a", type: "text"}]}) }"#,
        json!({}),
    );
    assert_eq!(first_error(&r)["extensions"]["sqlstate"], "42501", "{r}");
    // the editor writes, attributed to them
    c.execute("SELECT udm_use($1, $2)", &[&t, &editor]).unwrap();
    let d = ok(
        &mut c,
        r#"mutation { insertTag(objects: [{name: "mine"}]) { records { id createdBy } } }"#,
        json!({}),
    );
    let editor_id: String = scalar(
        &mut adm,
        &format!(
            "SELECT id::text FROM udm.app_user WHERE email = {}",
            lit(&editor)
        ),
    );
    assert_eq!(
        d["insertTag"]["records"][0]["createdBy"],
        json!(editor_id),
        "recorded by user id, as plain SQL does: {d}"
    );
    // the viewer, whose role hides product.meta, is told of product changes all the same:
    // without the hidden field in the image before the change or in the changed fields
    let h: i64 = scalar(
        &mut adm,
        &format!("SELECT max(audit_id) FROM {t}._udm_audit"),
    );
    let p1: String = scalar(
        &mut adm,
        &format!("SELECT id::text FROM {t}.product WHERE name = 'P1'"),
    );
    c.execute(
        "SELECT udm_update('product', $1::text::uuid, '{\"price\": 11, \"meta\": {\"color\": \"green\"}}')",
        &[&p1],
    )
    .unwrap();
    c.execute(
        "SELECT udm_update('product', $1::text::uuid, '{\"meta\": {\"color\": \"pink\"}}')",
        &[&p1],
    )
    .unwrap();
    c.execute("SELECT udm_use($1, $2)", &[&t, &viewer]).unwrap();
    let sub = "subscription { productChanged(actions: [UPDATE]) { action changedFields old { name price } record { name price } } }";
    let r: Value = c
        .query_one("SELECT udm_graphql_events($1, NULL, NULL, $2)", &[&sub, &h])
        .unwrap()
        .get(0);
    let evs = r["events"].as_array().unwrap();
    assert_eq!(evs.len(), 2, "{r}");
    let first = &evs[0]["payload"]["data"]["productChanged"];
    assert_eq!(first["changedFields"], json!(["price"]), "{r}");
    assert_eq!(
        first["old"]["price"],
        json!("10.00"),
        "a Decimal as text: {r}"
    );
    assert!(
        !r.to_string().contains("green") && !r.to_string().contains("pink"),
        "{r}"
    );
    let second = &evs[1]["payload"]["data"]["productChanged"];
    assert_eq!(second["changedFields"], json!([]), "{r}");
    // a filter on a field the role reads applies to the image as to anyone's
    let sub = "subscription { productChanged(actions: [UPDATE], filter: {price: {gt: \"10.5\"}}) { changedFields } }";
    let r: Value = c
        .query_one("SELECT udm_graphql_events($1, NULL, NULL, $2)", &[&sub, &h])
        .unwrap()
        .get(0);
    assert_eq!(r["events"].as_array().map(Vec::len), Some(2), "{r}");
    let sub = "subscription { productChanged(actions: [UPDATE], filter: {price: {gt: \"12\"}}) { changedFields } }";
    let r: Value = c
        .query_one("SELECT udm_graphql_events($1, NULL, NULL, $2)", &[&sub, &h])
        .unwrap()
        .get(0);
    assert_eq!(r["events"], json!([]), "{r}");
    // the filter is evaluated on the image as udm's owner: a field the viewer may not read is
    // not in its schema, so it cannot be filtered on (and learnt through which events match)
    let sub = "subscription { productChanged(filter: {meta: {path: [\"color\"], eq: \"pink\"}}) { action } }";
    let r: Value = c
        .query_one("SELECT udm_graphql_events($1, NULL, NULL, $2)", &[&sub, &h])
        .unwrap()
        .get(0);
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{r}"
    );
    assert!(
        r["errors"][0]["message"].as_str().unwrap().contains("meta"),
        "{r}"
    );
    // events the viewer may not see (a member added: tenant events are for managers) are
    // passed over: read one at a time, the cursor moves on every call
    let h2: i64 = scalar(
        &mut adm,
        &format!("SELECT max(audit_id) FROM {t}._udm_audit"),
    );
    let other = format!("{}@gql.test", unique("other"));
    adm.batch_execute(&format!(
        "SELECT udm_create_user({o}, 'Other', 'a-long-password'); SELECT udm_use({t}); \
         SELECT udm_add_member({t}, {o}, 'viewer')",
        o = lit(&other),
        t = lit(&t)
    ))
    .unwrap();
    c.execute("SELECT udm_use($1, $2)", &[&t, &editor]).unwrap();
    c.execute(
        "SELECT udm_update('product', $1::text::uuid, '{\"price\": 12}')",
        &[&p1],
    )
    .unwrap();
    c.execute("SELECT udm_use($1, $2)", &[&t, &viewer]).unwrap();
    let sub1 = "subscription { productChanged { action } }";
    let (mut cursor, mut got, mut calls) = (h2, 0, 0);
    loop {
        let r: Value = c
            .query_one(
                "SELECT udm_graphql_events($1, NULL, NULL, $2, 1)",
                &[&sub1, &cursor],
            )
            .unwrap()
            .get(0);
        got += r["events"].as_array().map_or(0, Vec::len);
        let next = r["cursor"].as_i64().unwrap();
        calls += 1;
        if r["more"] == false {
            break;
        }
        assert!(
            next > cursor,
            "the cursor moves over events not delivered: {r}"
        );
        cursor = next;
        assert!(calls < 20, "{r}");
    }
    assert_eq!(got, 1, "the one product change, after {calls} reads");
    assert!(calls >= 2, "the member's addition was read and passed over");
    // udm_events hands out whole images: there the viewer still sees none of them
    let plain: Value = c
        .query_one("SELECT udm_events($1, 100)", &[&h])
        .unwrap()
        .get(0);
    assert!(!plain.to_string().contains(&p1), "{plain}");
    // introspection can be switched off by a superuser
    adm.batch_execute(&format!(
        "ALTER ROLE \"{app}\" SET udm.graphql_introspection = off"
    ))
    .unwrap();
    let mut c2 = connect_as(&app);
    c2.execute("SELECT udm_use($1, $2)", &[&t, &editor])
        .unwrap();
    let r = gql(&mut c2, "{ __schema { queryType { name } } }", json!({}));
    assert!(r["errors"].as_array().is_some_and(|e| !e.is_empty()), "{r}");
    let e = c2
        .batch_execute("SET udm.graphql_introspection = on")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn subscriptions_are_validated() {
    let mut c = admin();
    let t = shop(&mut c);
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let r = gql(
        &mut c,
        r#"subscription { productChanged(actions: [UPDATE], filter: {price: {gt: "10"}}) { eventId action record { name price } } }"#,
        json!({}),
    );
    assert_eq!(r["extensions"]["subscription"], "valid", "{r}");
    let r = gql(
        &mut c,
        r#"subscription { productChanged { eventId } tagChanged { eventId } }"#,
        json!({}),
    );
    assert_eq!(
        first_error(&r)["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED",
        "{r}"
    );
}

/// A query asked again with other variables (the backend keeps its plans, UUIDs becoming
/// parameters): each request gets its own rows, never the previous request's.
#[test]
fn a_query_asked_again_with_other_ids_gets_their_rows() {
    let mut c = admin();
    let t = shop(&mut c);
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let rows = c
        .query(
            &format!("SELECT id::text, name FROM {t}.product ORDER BY name"),
            &[],
        )
        .unwrap();
    let by_id = "query($id: UUID!) { product(id: $id) { id name } }";
    for _round in 0..2 {
        for r in &rows {
            let (id, name): (String, String) = (r.get(0), r.get(1));
            let d = ok(&mut c, by_id, json!({ "id": id }));
            assert_eq!(d["product"]["name"], name.as_str(), "{d}");
            assert_eq!(d["product"]["id"], id.as_str(), "{d}");
        }
    }
    // the second round ran the kept plan, with each request's id
    let hits: i64 = c
        .query_one(
            "SELECT hits FROM udm_cache_stats() WHERE cache = 'graphql query plans'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(hits >= rows.len() as i64, "kept plans used: {hits}");
    // a query asked once keeps no plan; asked again, it does
    let kept = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT entries FROM udm_cache_stats() WHERE cache = 'graphql query plans'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let by_name =
        "query($n: String!) { productCollection(filter: {name: {eq: $n}}) { totalCount } }";
    let before = kept(&mut c);
    assert_eq!(
        ok(&mut c, by_name, json!({"n": "P3"}))["productCollection"]["totalCount"],
        1
    );
    assert_eq!(
        ok(&mut c, by_name, json!({"n": "P4x"}))["productCollection"]["totalCount"],
        0
    );
    assert_eq!(kept(&mut c), before, "queries asked once keep no plans");
    assert_eq!(
        ok(&mut c, by_name, json!({"n": "P3"}))["productCollection"]["totalCount"],
        1
    );
    assert_eq!(kept(&mut c), before + 1);
    assert_eq!(
        ok(&mut c, by_name, json!({"n": "P3"}))["productCollection"]["totalCount"],
        1
    );
    // an id of no record, then one again
    let d = ok(
        &mut c,
        by_id,
        json!({"id": "00000000-0000-0000-0000-000000000000"}),
    );
    assert!(d["product"].is_null(), "{d}");
    let (id0, name0): (String, String) = (rows[0].get(0), rows[0].get(1));
    assert_eq!(
        ok(&mut c, by_id, json!({ "id": id0 }))["product"]["name"],
        name0.as_str()
    );
    // lists of ids, of other lengths and orders
    let in_ids = "query($ids: [UUID!]) { productCollection(filter: {id: {in: $ids}}, orderBy: [{name: ASC}]) { nodes { name } } }";
    for k in [1usize, 3, 2] {
        let ids: Vec<String> = rows.iter().rev().take(k).map(|r| r.get(0)).collect();
        let mut want: Vec<String> = rows.iter().rev().take(k).map(|r| r.get(1)).collect();
        want.sort();
        let d = ok(&mut c, in_ids, json!({ "ids": ids }));
        let got: Vec<&str> = d["productCollection"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{d}");
    }
    // the same id twice in one request, in two fields
    let two =
        "query($a: UUID!, $b: UUID!) { x: product(id: $a) { name } y: product(id: $b) { name } }";
    let (id1, name1): (String, String) = (rows[1].get(0), rows[1].get(1));
    let d = ok(&mut c, two, json!({"a": id0, "b": id1}));
    assert_eq!(
        (d["x"]["name"].as_str(), d["y"]["name"].as_str()),
        (Some(name0.as_str()), Some(name1.as_str()))
    );
    let d = ok(&mut c, two, json!({"a": id1, "b": id1}));
    assert_eq!(
        (d["x"]["name"].as_str(), d["y"]["name"].as_str()),
        (Some(name1.as_str()), Some(name1.as_str()))
    );
    let d = ok(&mut c, two, json!({"a": id1, "b": id0}));
    assert_eq!(
        (d["x"]["name"].as_str(), d["y"]["name"].as_str()),
        (Some(name1.as_str()), Some(name0.as_str()))
    );
    // a definition change: the kept plans go
    c.execute(
        "SELECT udm_add_field('product', '{\"name\": \"sku\", \"type\": \"text\"}')",
        &[],
    )
    .unwrap();
    c.execute(&format!("UPDATE {t}.product SET sku = 'S-' || name"), &[])
        .unwrap();
    let d = ok(
        &mut c,
        "query($id: UUID!) { product(id: $id) { name sku } }",
        json!({ "id": id0 }),
    );
    assert_eq!(d["product"]["sku"], format!("S-{name0}").as_str(), "{d}");
    assert_eq!(
        ok(&mut c, by_id, json!({ "id": id1 }))["product"]["name"],
        name1.as_str()
    );
    // UUIDs in text variables: passed through as they are (kept as parameters), or made into
    // something else (a pattern: planned each time); either way each request gets its own rows
    c.execute(
        &format!("INSERT INTO {t}.product (name, price) VALUES ($1, 1)"),
        &[&id0],
    )
    .unwrap();
    for (op, found) in [("eq", 1), ("startsWith", 1)] {
        let q = format!(
            "query($n: String!) {{ productCollection(filter: {{name: {{{op}: $n}}}}) {{ totalCount }} }}"
        );
        for (n, want) in [
            (&id0, found),
            (&id1, 0),
            (&id0, found),
            (&id1, 0),
            (&id0, found),
        ] {
            let d = ok(&mut c, &q, json!({ "n": n }));
            assert_eq!(d["productCollection"]["totalCount"], want, "{op} {n}: {d}");
        }
    }
    // a malformed id is still refused, after the plan was kept
    let r = gql(&mut c, by_id, json!({"id": "not-a-uuid"}));
    assert!(r["errors"].is_array(), "{r}");
}

/// A statement cancelled in one field (its timeout, `pg_cancel_backend`) ends the whole request
/// with 57014, as in plain SQL: the other fields do not run on without the timeout.
#[test]
fn a_cancelled_statement_ends_the_whole_request() {
    let mut adm = admin();
    let t = shop(&mut adm);
    let mut blocker = admin();
    blocker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {t}.product IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
    let mut c = admin();
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    c.batch_execute("SET statement_timeout = '300ms'").unwrap();
    let e = c
        .query_one(
            "SELECT udm_graphql('{ productCollection { totalCount } tagCollection { totalCount } }')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{}", message(&e));
    blocker.batch_execute("ROLLBACK").unwrap();
    // and a mutation's fields the same way
    blocker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {t}.tag IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
    let e = c
        .query_one(
            r#"SELECT udm_graphql('mutation { insertTag(objects: [{name: "green"}]) { affectedCount } }')"#,
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{}", message(&e));
    blocker.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("RESET statement_timeout").unwrap();
    let d = ok(&mut c, "{ tagCollection { totalCount } }", json!({}));
    assert_eq!(
        d["tagCollection"]["totalCount"], 2,
        "nothing was written: {d}"
    );
}

#[test]
fn graphql_events_resolves_a_subscription_for_the_events_after_a_cursor() {
    let mut c = admin();
    let t = shop(&mut c);
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let h: Value = c.query_one("SELECT udm_events(0, 1)", &[]).unwrap().get(0);
    let h = h["horizon"].as_i64().unwrap();
    c.batch_execute(&format!(
        "INSERT INTO {t}.tag (name) VALUES ('green'); UPDATE {t}.tag SET name = 'lime' WHERE name = 'green'; \
         INSERT INTO {t}.tag (name) VALUES ('grey')"
    ))
    .unwrap();
    let sub = r#"subscription($n: String) { tagChanged(actions: [INSERT], filter: {name: {like: $n}}) { action eventId record { name } } }"#;
    let mut ev = |after: i64, limit: i32| -> Value {
        c.query_one(
            "SELECT udm_graphql_events($1, $2, NULL, $3, $4)",
            &[&sub, &json!({"n": "g%"}), &after, &limit],
        )
        .unwrap()
        .get(0)
    };
    // the inserts (not the update), their records as they are now, in order
    let r = ev(h, 100);
    let got: Vec<(&str, &str)> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let p = &e["payload"]["data"]["tagChanged"];
            (
                p["action"].as_str().unwrap(),
                p["record"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("INSERT", "lime"), ("INSERT", "grey")], "{r}");
    assert_eq!(r["more"], false);
    let last = r["events"][1]["event_id"].as_i64().unwrap();
    // the cursor is past every event read: the last one (a per-change log), or the end of the
    // last batch of ids given out (a batched log's horizon: no event can come below it)
    let end = r["cursor"].as_i64().unwrap();
    assert!(end >= last, "{r}");
    assert_eq!(ev(end, 10)["events"], json!([]), "{r}");
    // after the first, one event read at a time (the update is read, and not delivered): the
    // second, and the cursor moves over every event read
    let (mut cursor, mut got, mut calls) =
        (r["events"][0]["event_id"].as_i64().unwrap(), vec![], 0);
    loop {
        let r = ev(cursor, 1);
        got.extend(
            r["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_i64().unwrap()),
        );
        assert!(
            r["cursor"].as_i64().unwrap() > cursor || r["more"] == false,
            "{r}"
        );
        cursor = r["cursor"].as_i64().unwrap();
        calls += 1;
        if r["more"] == false {
            break;
        }
    }
    assert_eq!((got, calls), (vec![last], 3));
    assert_eq!(ev(last, 10)["events"], json!([]));
    // not a subscription: a GraphQL error; bad cursors and limits: errors of their own
    let r: Value = c
        .query_one(
            "SELECT udm_graphql_events('{ tagCollection { totalCount } }')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{r}"
    );
    expect_err(
        &mut c,
        &format!("SELECT udm_graphql_events({}, NULL, NULL, -1)", lit(sub)),
        "22023",
    );
    expect_err(
        &mut c,
        &format!("SELECT udm_graphql_events({}, NULL, NULL, 0, 0)", lit(sub)),
        "54000",
    );
    expect_err(
        &mut c,
        &format!("SELECT udm_graphql_events({}, NULL, NULL, NULL)", lit(sub)),
        "22004",
    );
}

/// The text of a part (`at`, without the key `drop`) of the responses to two queries, run in one
/// statement (so in the same time zone).
fn both(
    c: &mut Client,
    one: &str,
    other: &str,
    vars: Value,
    at: &str,
    drop: &str,
) -> (String, String) {
    let r = c
        .query_one(
            "SELECT (CASE jsonb_typeof(a #> $4::text::text[]) WHEN 'object' THEN (a #> $4::text::text[]) - $5::text ELSE a #> $4::text::text[] END)::text,
                    (CASE jsonb_typeof(b #> $4::text::text[]) WHEN 'object' THEN (b #> $4::text::text[]) - $5::text ELSE b #> $4::text::text[] END)::text,
                    a ? 'errors' OR b ? 'errors', a::text, b::text
             FROM (SELECT udm_graphql($1, $3) AS a, udm_graphql($2, $3) AS b) x",
            &[&one, &other, &vars, &at, &drop],
        )
        .unwrap();
    assert!(
        !r.get::<_, bool>(2),
        "errors: {} / {}",
        r.get::<_, String>(3),
        r.get::<_, String>(4)
    );
    (r.get(0), r.get(1))
}

/// A root connection of only nodes, and a record by id, of leaves and to-one objects are built
/// by udm from the statement's rows (not by `jsonb_build_object` in SQL): for every field type,
/// nulls, special numbers, infinite dates, JSON scalars and time zones, the result is the same
/// text as the SQL-built one (a selection that needs SQL's aggregate: `pageInfo`, a reference).
#[test]
fn rows_built_by_udm_equal_what_sql_builds_for_every_field_type() {
    let mut adm = admin();
    let mut m = member(&mut adm, "gqlrows");
    every_field_type(&mut m);
    let s = m.tenant.clone();
    let fields = r#"__typename id createdAt updatedAt createdBy updatedBy _version t lt i bi d f b dt
        ts tm du u j deep: j(path: ["deep", "n"]) em sel ms tg cur rt an fl pc co ur ph us relId
        rel { __typename name } again: rel { id } ints days"#;
    for zone in ["UTC", "Asia/Kolkata", "America/St_Johns"] {
        m.client
            .batch_execute(&format!("SET TIME ZONE '{zone}'"))
            .unwrap();
        for page in ["first: 10", "last: 3", "first: 2, offset: 1"] {
            let rows_q = format!(
                "{{ everyCollection(orderBy: [{{an: ASC}}], {page}) {{ __typename nodes {{ {fields} }} }} }}"
            );
            let sql_q = format!(
                "{{ everyCollection(orderBy: [{{an: ASC}}], {page}) {{ __typename nodes {{ {fields} }} pageInfo {{ hasNextPage }} }} }}"
            );
            let (ours, theirs) = both(
                &mut m.client,
                &rows_q,
                &sql_q,
                json!({}),
                "{data,everyCollection}",
                "pageInfo",
            );
            assert_eq!(ours, theirs, "{page} in {zone}");
            assert!(
                ours.contains("\"__typename\": \"EveryConnection\""),
                "{ours}"
            );
            assert!(ours.contains("\"rel\": null"), "{ours}");
            if page == "first: 10" {
                assert_eq!(ours.matches("\"__typename\": \"Every\"").count(), 4);
                assert!(
                    ours.contains("\"rel\": {\"name\": \"T\", \"__typename\": \"Target\"}"),
                    "{ours}"
                );
                assert!(
                    ours.find("\"an\": \"1\"") < ours.find("\"an\": \"4\""),
                    "{ours}"
                );
            }
            if page == "last: 3" {
                assert!(
                    ours.find("\"an\": \"2\"") < ours.find("\"an\": \"4\""),
                    "{ours}"
                );
                assert!(!ours.contains("\"an\": \"1\""), "{ours}");
            }
        }
        let ids: Vec<String> = m
            .client
            .query(&format!(r#"SELECT id::text FROM "{s}".every"#), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids.len(), 4);
        let missing = "6f1c2a7e-0000-4000-8000-0000000000ff".to_string();
        for id in ids.iter().chain([&missing]) {
            let rows_q = format!("query($id: UUID!) {{ every(id: $id) {{ {fields} }} }}");
            let sql_q = format!(
                "query($id: UUID!) {{ every(id: $id) {{ {fields} ref {{ __typename ... on Target {{ name }} }} }} }}"
            );
            let (ours, theirs) = both(
                &mut m.client,
                &rows_q,
                &sql_q,
                json!({"id": id}),
                "{data,every}",
                "ref",
            );
            assert_eq!(ours, theirs, "record {id} in {zone}");
            if id == &missing {
                assert_eq!(ours, "null", "a record that does not exist is null");
            } else {
                assert!(ours.contains(&format!("\"id\": \"{id}\"")), "{ours}");
            }
        }
    }
    // read by primary key (no row-level security applies to the caller: here the superuser)
    adm.execute("SELECT udm_use($1)", &[&s]).unwrap();
    let leaves = "__typename id createdAt updatedAt createdBy updatedBy _version t lt i bi d f b dt ts tm du u j em sel ms tg cur rt an fl pc co ur ph us relId ints days";
    let ids: Vec<String> = adm
        .query(&format!(r#"SELECT id::text FROM "{s}".every"#), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for zone in ["UTC", "America/St_Johns"] {
        adm.batch_execute(&format!("SET TIME ZONE '{zone}'"))
            .unwrap();
        for id in ids
            .iter()
            .chain([&"6f1c2a7e-0000-4000-8000-0000000000ff".to_string()])
        {
            let point = format!("query($id: UUID!) {{ every(id: $id) {{ {leaves} }} }}");
            let sql = format!(
                "query($id: UUID!) {{ every(id: $id) {{ {leaves} ref {{ __typename }} }} }}"
            );
            let (ours, theirs) = both(
                &mut adm,
                &point,
                &sql,
                json!({"id": id}),
                "{data,every}",
                "ref",
            );
            assert_eq!(ours, theirs, "record {id} read by primary key in {zone}");
        }
    }
    // a bad id is refused as the statement refuses it
    let r = gql(
        &mut adm,
        "query($id: UUID!) { every(id: $id) { t } }",
        json!({"id": "6f1c2a7e00004000800000000000000ff"}),
    );
    assert!(r.get("errors").is_some(), "{r}");
}
