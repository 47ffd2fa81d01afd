//! The query engine end to end: dot paths, filters, sorting, keyset paging, counts, aggregates,
//! views, explain, and the compiled-query cache.

use udm_tests::*;

/// A tenant with categories (tree), brands, tags and products.
fn catalog(prefix: &str) -> Member {
    let mut adm = admin();
    let mut m = member(&mut adm, prefix);
    for def in [
        r#"SELECT udm_define_entity('category', '{"fields": [{"name": "name", "type": "text", "required": true},
            {"name": "parent_id", "type": "relation", "target": "category"}, {"name": "attributes", "type": "json"}]}')"#,
        r#"SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}')"#,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "codename", "type": "text"},
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2},
            {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft", "required": true},
            {"name": "metadata", "type": "json"},
            {"name": "preferences", "type": "json"},
            {"name": "released", "type": "date"},
            {"name": "labels", "type": "tags"},
            {"name": "category_id", "type": "relation", "target": "category"},
            {"name": "tags", "type": "relation", "target": "tag", "many": true}]}')"#,
    ] {
        json(&mut m.client, def);
    }
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!(
            r#"
            INSERT INTO "{t}".category (id, name, attributes) VALUES
              ('00000000-0000-0000-0000-0000000000c1', 'Electronics', '{{"color": "blue"}}');
            INSERT INTO "{t}".category (id, name, parent_id, attributes) VALUES
              ('00000000-0000-0000-0000-0000000000c2', 'Phones', '00000000-0000-0000-0000-0000000000c1', '{{"color": "black"}}'),
              ('00000000-0000-0000-0000-0000000000c3', 'Laptops', '00000000-0000-0000-0000-0000000000c1', '{{"color": "grey"}}');
            INSERT INTO "{t}".tag (id, name) VALUES ('00000000-0000-0000-0000-0000000000a1', 'hot'), ('00000000-0000-0000-0000-0000000000a2', 'eco');
            INSERT INTO "{t}".product (id, name, codename, price, status, metadata, preferences, released, labels, category_id) VALUES
              ('00000000-0000-0000-0000-000000000001', 'iPhone', 'ip', 999, 'active', '{{"brand": "Apple", "storage": 256, "launched": "2025-09-10"}}', '{{"theme": {{"default": "dark"}}}}', '2025-09-19', '{{premium}}', '00000000-0000-0000-0000-0000000000c2'),
              ('00000000-0000-0000-0000-000000000002', 'Pixel', 'px', 799, 'active', '{{"brand": "Google", "storage": 128, "launched": "2025-08-20"}}', '{{"theme": {{"default": "light"}}}}', '2025-08-28', '{{}}', '00000000-0000-0000-0000-0000000000c2'),
              ('00000000-0000-0000-0000-000000000003', 'MacBook', 'mb', 1999, 'draft', '{{"brand": "Apple", "storage": "1TB"}}', NULL, NULL, '{{premium,pro}}', '00000000-0000-0000-0000-0000000000c3'),
              ('00000000-0000-0000-0000-000000000004', 'Cable', 'cb', NULL, 'retired', '{{"brand": "Generic"}}', NULL, '2020-01-01', '{{}}', NULL);
            INSERT INTO "{t}".product__tags (source_id, target_id) VALUES
              ('00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-0000000000a1'),
              ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-0000000000a2'),
              ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-0000000000a1');
            "#
        ))
        .unwrap();
    m
}

fn q(m: &mut Member, entity: &str, spec: Value) -> Value {
    json(
        &mut m.client,
        &format!("SELECT udm_query('{entity}', {})", lit(&spec.to_string())),
    )
}

fn names(v: &Value) -> Vec<String> {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn seed_example_dot_notation_works_as_written() {
    let mut m = catalog("qseed");
    // seed 001, section 4.3
    let r = q(
        &mut m,
        "product",
        json!({"columns": ["id", "name", "price", "category_id.name", "metadata.brand", "preferences.theme.default"],
               "filters": {"status": "active", "metadata.brand": "Apple"}}),
    );
    assert_eq!(r["rows"].as_array().unwrap().len(), 1);
    let row = &r["rows"][0];
    assert_eq!(row["name"], "iPhone");
    assert_eq!(row["category_id.name"], "Phones");
    assert_eq!(row["metadata.brand"], "Apple");
    assert_eq!(row["preferences.theme.default"], "dark");
    assert_eq!(row["price"], json!(999.0));
    // relation hops and a path from a relation into json
    let r = q(
        &mut m,
        "product",
        json!({"columns": ["name", "category_id.parent_id.name", "category_id.attributes.color"], "sort": ["name"]}),
    );
    let by_name = |n: &str| {
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("Cable"),
        json!({"name": "Cable", "category_id.parent_id.name": null, "category_id.attributes.color": null})
    );
    assert_eq!(
        by_name("iPhone"),
        json!({"name": "iPhone", "category_id.parent_id.name": "Electronics", "category_id.attributes.color": "black"})
    );
    // nested arrays for many-to-many and reverse relations
    let r = q(
        &mut m,
        "product",
        json!({"columns": ["name", "tags.name"], "filters": {"name": "iPhone"}}),
    );
    assert_eq!(r["rows"][0]["tags.name"], json!(["hot"]));
    let r = q(
        &mut m,
        "category",
        json!({"columns": ["name", "product[].codename"], "filters": {"name": "Phones"}}),
    );
    let mut codes: Vec<String> = r["rows"][0]["product[].codename"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    codes.sort();
    assert_eq!(codes, vec!["ip", "px"]);
}

#[test]
fn filters_of_every_kind() {
    let mut m = catalog("qfilt");
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"price": {"gt": 800}}), vec!["MacBook", "iPhone"]),
        (
            json!({"price": {"gte": 799, "lt": 1000}}),
            vec!["Pixel", "iPhone"],
        ),
        (
            json!({"price": {"between": [700, 1000]}}),
            vec!["Pixel", "iPhone"],
        ),
        (json!({"price": {"is_null": true}}), vec!["Cable"]),
        (json!({"price": null}), vec!["Cable"]),
        (
            json!({"status": {"in": ["draft", "retired"]}}),
            vec!["Cable", "MacBook"],
        ),
        (
            json!({"status": ["draft", "retired"]}),
            vec!["Cable", "MacBook"],
        ),
        (
            json!({"status": {"not_in": ["active"]}}),
            vec!["Cable", "MacBook"],
        ),
        (
            json!({"status": {"neq": "active"}}),
            vec!["Cable", "MacBook"],
        ),
        (json!({"name": {"like": "%Book"}}), vec!["MacBook"]),
        (json!({"name": {"ilike": "%BOOK"}}), vec!["MacBook"]),
        (json!({"name": {"contains": "ix"}}), vec!["Pixel"]),
        (json!({"name": {"starts_with": "Mac"}}), vec!["MacBook"]),
        (json!({"name": {"contains": "%"}}), vec![]),
        (json!({"labels": {"contains": "pro"}}), vec!["MacBook"]),
        (
            json!({"labels": {"contains": ["premium", "pro"]}}),
            vec!["MacBook"],
        ),
        (
            json!({"labels": {"overlaps": ["pro", "none"]}}),
            vec!["MacBook"],
        ),
        (json!({"metadata.storage": {"gte": 200}}), vec!["iPhone"]),
        (json!({"metadata.storage": 128}), vec!["Pixel"]),
        (json!({"metadata.storage": "1TB"}), vec!["MacBook"]),
        (
            json!({"metadata.launched": {"lt": "2025-09-01"}}),
            vec!["Pixel"],
        ),
        (
            json!({"metadata": {"contains": {"brand": "Apple"}}}),
            vec!["MacBook", "iPhone"],
        ),
        (
            json!({"category_id.name": "Phones"}),
            vec!["Pixel", "iPhone"],
        ),
        (
            json!({"category_id.parent_id.name": "Electronics", "price": {"gt": 1000}}),
            vec!["MacBook"],
        ),
        (json!({"tags.name": "hot"}), vec!["MacBook", "iPhone"]),
        (json!({"released": {"gte": "2025-09-01"}}), vec!["iPhone"]),
        (
            json!({"or": [{"status": "retired"}, {"metadata.brand": "Google"}]}),
            vec!["Cable", "Pixel"],
        ),
        (
            json!({"not": {"status": "active"}}),
            vec!["Cable", "MacBook"],
        ),
        (
            json!({"and": [{"status": "active"}, {"not": {"tags.name": "hot"}}]}),
            vec!["Pixel"],
        ),
    ];
    for (filters, want) in cases {
        let r = q(
            &mut m,
            "product",
            json!({"columns": ["name"], "filters": filters, "sort": ["name"]}),
        );
        let mut got = names(&r);
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "{filters}");
    }
    let cats = q(
        &mut m,
        "category",
        json!({"columns": ["name"], "filters": {"product[].metadata.brand": "Apple"}, "sort": ["name"]}),
    );
    assert_eq!(
        names(&cats),
        vec!["Laptops", "Phones"],
        "a filter on a reverse relation means some of them match"
    );
}

#[test]
fn errors_name_path_segment_and_valid_names() {
    let mut m = catalog("qerr");
    for (spec, code, want) in [
        (
            json!({"columns": ["category_id.nme"]}),
            "42703",
            "path \"category_id.nme\": \"nme\" is not a field of entity \"category\"",
        ),
        (
            json!({"filters": {"categroy_id.name": "x"}}),
            "42703",
            "\"categroy_id\" is not a field of entity \"product\"",
        ),
        (
            json!({"filters": {"status": {"gt": true}}}),
            "22P02",
            "filter \"status\": expected text, got a boolean",
        ),
        (
            json!({"filters": {"labels": {"gt": 1}}}),
            "42804",
            "operator \"gt\" does not apply to lists",
        ),
        (
            json!({"filters": {"price": {"like": "9%"}}}),
            "42804",
            "operator \"like\" does not apply to numbers",
        ),
        (
            json!({"filters": {"price": "cheap"}}),
            "22P02",
            "filter \"price\": expected a number, got \"cheap\"",
        ),
        (
            json!({"filters": {"price": {"between": [1]}}}),
            "22023",
            "takes [low, high]",
        ),
        (
            json!({"sort": ["tags.name"]}),
            "22023",
            "cannot be sorted by",
        ),
        (json!({"limit": 100000}), "54000", "above the limit of 1000"),
        (json!({"limit": 0}), "22023", "at least 1"),
        (
            json!({"columns": ["a.b.c.d.e.f.g.h.i"]}),
            "54000",
            "at most 8",
        ),
        (
            json!({"cursor": "garbage"}),
            "22023",
            "the cursor is not valid",
        ),
        (
            json!({"colums": ["name"]}),
            "22023",
            "unknown option \"colums\"",
        ),
        (json!({"count": "roughly"}), "22023", "\"count\" must be"),
    ] {
        let msg = expect_err(
            &mut m.client,
            &format!("SELECT udm_query('product', {})", lit(&spec.to_string())),
            code,
        );
        assert!(msg.contains(want), "{spec}: {msg}");
    }
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_query('product', '{\"columns\": [\"category_id.nme\"]}')",
        "42703",
    );
    assert!(
        msg.contains("hint: at \"category_id.\" you can use") && msg.contains("\"parent_id\""),
        "{msg}"
    );
}

#[test]
fn keyset_pages_cover_every_row_once_and_counts() {
    let mut adm = admin();
    let mut m = member(&mut adm, "qpage");
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('item', '{"fields": [{"name": "n", "type": "integer"}, {"name": "grp", "type": "text"}]}')"#,
    );
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!("INSERT INTO \"{t}\".item (n, grp) SELECT CASE WHEN i % 7 = 0 THEN NULL ELSE i % 13 END, 'g' || (i % 3) FROM generate_series(1, 237) i"))
        .unwrap();
    for sort in [
        json!(["n"]),
        json!(["-n"]),
        json!([{"path": "n", "nulls": "first"}]),
        json!(["grp", "-n"]),
        json!([]),
    ] {
        let mut seen = std::collections::HashSet::new();
        let mut cursor = Value::Null;
        let mut pages = 0;
        loop {
            let mut spec = json!({"columns": ["id", "n"], "sort": sort, "limit": 20});
            if !cursor.is_null() {
                spec["cursor"] = cursor.clone();
            }
            let r = q(&mut m, "item", spec);
            for row in r["rows"].as_array().unwrap() {
                assert!(
                    seen.insert(row["id"].as_str().unwrap().to_string()),
                    "row seen twice with sort {sort}"
                );
            }
            pages += 1;
            cursor = r["next_cursor"].clone();
            if cursor.is_null() {
                break;
            }
        }
        assert_eq!(seen.len(), 237, "sort {sort}");
        assert_eq!(pages, 12);
    }
    let r = q(
        &mut m,
        "item",
        json!({"filters": {"grp": "g1"}, "count": "exact", "limit": 1}),
    );
    assert_eq!(r["count"], 79);
    // a page past the last record still counts them all
    let r = q(
        &mut m,
        "item",
        json!({"filters": {"grp": "g1"}, "count": "exact", "limit": 5, "offset": 500}),
    );
    assert_eq!(r, json!({"rows": [], "count": 79, "next_cursor": null}));
    let r = q(&mut m, "item", json!({"count": "estimated", "limit": 1}));
    assert!(r["count"].as_i64().unwrap() > 0);
    let r = q(
        &mut m,
        "item",
        json!({"columns": ["grp"], "distinct": true, "sort": ["grp"]}),
    );
    assert_eq!(
        r["rows"],
        json!([{"grp": "g0"}, {"grp": "g1"}, {"grp": "g2"}])
    );
    let r = q(
        &mut m,
        "item",
        json!({"columns": ["n"], "sort": ["n"], "limit": 3, "offset": 1, "filters": {"n": {"is_null": false}}}),
    );
    assert_eq!(r["rows"], json!([{"n": 0}, {"n": 0}, {"n": 0}]));
    // a cursor for another sort is refused
    let c = q(&mut m, "item", json!({"sort": ["n"], "limit": 5}))["next_cursor"].clone();
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_query('item', {})",
            lit(&json!({"sort": ["-n"], "cursor": c}).to_string())
        ),
        "22023",
    );
    assert!(msg.contains("another sort"), "{msg}");
}

#[test]
fn aggregates() {
    let mut m = catalog("qagg");
    let r = json(
        &mut m.client,
        r#"SELECT udm_aggregate('product', '{"group_by": ["category_id.name"], "metrics": ["count", {"fn": "avg", "path": "price", "as": "avg_price"}, {"fn": "max", "path": "price"}], "sort": ["category_id.name"]}')"#,
    );
    assert_eq!(r["rows"][0]["category_id.name"], "Laptops");
    assert_eq!(r["rows"][0]["count"], 1);
    assert_eq!(r["rows"][1]["category_id.name"], "Phones");
    assert_eq!(r["rows"][1]["avg_price"], json!(899.0));
    assert_eq!(r["rows"][1]["max_price"], json!(999.0));
    assert_eq!(r["rows"][2]["category_id.name"], Value::Null);
    let r = json(
        &mut m.client,
        r#"SELECT udm_aggregate('product', '{"group_by": ["metadata.brand"], "metrics": ["count"], "having": {"count": {"gte": 2}}}')"#,
    );
    assert_eq!(r["rows"], json!([{"metadata.brand": "Apple", "count": 2}]));
    let r = json(
        &mut m.client,
        r#"SELECT udm_aggregate('product', '{"group_by": [{"path": "released", "bucket": "year", "as": "year"}], "metrics": ["count"], "filters": {"released": {"is_null": false}}, "sort": ["year"]}')"#,
    );
    assert_eq!(
        r["rows"],
        json!([{"year": "2020-01-01", "count": 1}, {"year": "2025-01-01", "count": 2}])
    );
    let r = json(
        &mut m.client,
        r#"SELECT udm_aggregate('product', '{"metrics": [{"fn": "count_distinct", "path": "status"}, {"fn": "sum", "path": "metadata.storage", "as": "storage"}]}')"#,
    );
    assert_eq!(
        r["rows"],
        json!([{"count_distinct_status": 3, "storage": 384}])
    );
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_aggregate('product', '{"metrics": [{"fn": "avg", "path": "name"}]}')"#,
        "42804",
    );
    assert!(msg.contains("avg needs a number"), "{msg}");
}

#[test]
fn views() {
    let mut m = catalog("qview");
    let k = json(
        &mut m.client,
        r#"SELECT udm_view('product', 'kanban', '{"field": "status", "columns": ["name"], "sort": ["name"], "limit": 1}')"#,
    );
    assert_eq!(
        k["columns"][0],
        json!({"value": "draft", "count": 1, "cards": [{"name": "MacBook"}]})
    );
    assert_eq!(k["columns"][1]["value"], "active");
    assert_eq!(k["columns"][1]["count"], 2);
    assert_eq!(k["columns"][1]["cards"], json!([{"name": "Pixel"}]));
    assert_eq!(k["columns"][2]["value"], "retired");
    let tbl = json(
        &mut m.client,
        r#"SELECT udm_view('product', 'table', '{"columns": ["name"], "sort": ["name"], "limit": 2}')"#,
    );
    assert_eq!(tbl["total"], 4);
    assert_eq!(tbl["rows"].as_array().unwrap().len(), 2);
    assert!(tbl["next_cursor"].is_string());
    let tree = json(
        &mut m.client,
        r#"SELECT udm_view('category', 'tree', '{"columns": ["name"], "sort": ["name"]}')"#,
    );
    assert_eq!(tree["nodes"][0]["name"], "Electronics");
    assert_eq!(tree["nodes"][0]["children"][0]["name"], "Laptops");
    assert_eq!(tree["nodes"][0]["children"][1]["name"], "Phones");
    let tree1 = json(
        &mut m.client,
        r#"SELECT udm_view('category', 'tree', '{"columns": ["name"], "depth": 1}')"#,
    );
    assert_eq!(tree1["nodes"][0]["children"], json!([]));
    let bc = json(
        &mut m.client,
        r#"SELECT udm_view('category', 'breadcrumb', '{"id": "00000000-0000-0000-0000-0000000000c2"}')"#,
    );
    assert_eq!(
        bc["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["label"].clone())
            .collect::<Vec<_>>(),
        vec![json!("Electronics"), json!("Phones")]
    );
    let dd = json(
        &mut m.client,
        r#"SELECT udm_view('product', 'dropdown', '{"label": "name", "search": "ac"}')"#,
    );
    assert_eq!(dd["items"].as_array().unwrap().len(), 1);
    assert_eq!(dd["items"][0]["label"], "MacBook");
    let dd = json(
        &mut m.client,
        r#"SELECT udm_view('product', 'dropdown', '{"label": "codename", "search": "p"}')"#,
    );
    let labels: Vec<&str> = dd["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["px", "ip"], "prefix matches first");
    let g = json(
        &mut m.client,
        r#"SELECT udm_view('product', 'gantt', '{"start": "released", "end": "released", "label": "name", "group_by": "category_id.name", "dependencies": "tags", "filters": {"released": {"is_null": false}}}')"#,
    );
    assert_eq!(g["items"].as_array().unwrap().len(), 3);
    assert_eq!(g["items"][0]["label"], "Cable");
    assert_eq!(g["groups"], json!(["Phones"]));
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_view('product', 'calendar', '{}')"#,
        "22023",
    );
    assert!(msg.contains("view kind \"calendar\" is not known"), "{msg}");
}

#[test]
fn explain_and_the_compiled_query_cache() {
    let mut m = catalog("qcache");
    let spec = json!({"columns": ["name"], "filters": {"status": "active"}});
    let first = json(
        &mut m.client,
        &format!("SELECT udm_compile('product', {})", lit(&spec.to_string())),
    );
    assert_eq!(first["cached"], false);
    let other_values = json!({"columns": ["name"], "filters": {"status": "draft"}});
    let second = json(
        &mut m.client,
        &format!(
            "SELECT udm_compile('product', {})",
            lit(&other_values.to_string())
        ),
    );
    assert_eq!(second["cached"], true, "same shape, other values: cached");
    assert_eq!(second["params"], json!(["draft"]));
    assert!(
        !second["sql"].as_str().unwrap().contains("draft"),
        "values are parameters"
    );
    // a definition change (in another session) invalidates the cache
    let mut other = connect_as(&m.role);
    json(&mut other, &format!("SELECT udm_use({})", lit(&m.tenant)));
    json(
        &mut other,
        "SELECT udm_add_field('product', '{\"name\": \"extra\", \"type\": \"text\"}')",
    );
    let third = json(
        &mut m.client,
        &format!(
            "SELECT udm_compile('product', {})",
            lit(&other_values.to_string())
        ),
    );
    assert_eq!(
        third["cached"], false,
        "recompiled after the definition changed"
    );
    let r = q(
        &mut m,
        "product",
        json!({"columns": ["name", "extra"], "filters": {"name": "iPhone"}}),
    );
    assert_eq!(
        r["rows"][0],
        json!({"name": "iPhone", "extra": null}),
        "the new field is queryable at once"
    );
    let e = json(
        &mut m.client,
        &format!("SELECT udm_explain('product', {})", lit(&spec.to_string())),
    );
    assert!(
        e["sql"]
            .as_str()
            .unwrap()
            .starts_with("SELECT t0.\"name\" AS c0, t0.\"id\" AS k0 FROM"),
        "a page's statement returns its records as rows: {e}"
    );
    assert_eq!(e["params"], json!(["active"]));
    assert!(e["plan"][0]["Plan"].is_object(), "{e}");
    assert!(e.get("count_sql").is_none(), "{e}");
    // an exact count is a statement of its own, explained with the page
    let counted = json!({"columns": ["name"], "filters": {"status": "active"}, "count": "exact"});
    let e = json(
        &mut m.client,
        &format!(
            "SELECT udm_explain('product', {})",
            lit(&counted.to_string())
        ),
    );
    assert!(
        e["count_sql"]
            .as_str()
            .unwrap()
            .starts_with("SELECT count(*) FROM"),
        "{e}"
    );
    assert!(e["count_plan"][0]["Plan"].is_object(), "{e}");
    let c = json(
        &mut m.client,
        &format!(
            "SELECT udm_compile('product', {})",
            lit(&counted.to_string())
        ),
    );
    assert_eq!(c["count_sql"], e["count_sql"]);
    let ea = json(
        &mut m.client,
        r#"SELECT udm_explain('product', '{"group_by": ["status"]}', 'aggregate')"#,
    );
    assert!(ea["sql"].as_str().unwrap().contains("GROUP BY"));
}

#[test]
fn queries_respect_tenant_isolation() {
    let a = catalog("qisoa");
    let mut b = catalog("qisob");
    b.client
        .batch_execute(&format!("SET udm.tenant = {}", lit(&a.tenant)))
        .unwrap();
    let msg = expect_err(&mut b.client, "SELECT udm_query('product', '{}')", "42501");
    assert!(msg.contains("permission denied for tenant"), "{msg}");
    expect_err(
        &mut b.client,
        "SELECT udm_insert('product', '{\"name\": \"x\"}')",
        "42501",
    );
}

/// A kept query whose plan is the same for every value runs its generic plan after its first
/// calls (it is no longer planned per call); one whose plan depends on the value stays planned per
/// call. Read from auto_explain's plans of udm's nested statements: a generic plan shows `$n`
/// where a plan for the call's values shows the values.
#[test]
fn a_query_planned_alike_for_every_value_keeps_its_generic_plan() {
    let mut adm = admin();
    let mut m = member(&mut adm, "genplan");
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('item', '{"fields": [{"name": "name", "type": "text"},
            {"name": "code", "type": "integer"}]}')"#,
    );
    json(&mut m.client, "SELECT udm_add_index('item', ARRAY['code'])");
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!(
            // codes in no order on disk (a permutation of 1..10000), so that an index scan over
            // most of them costs more than reading the table
            "INSERT INTO \"{t}\".item (name, code) SELECT 'item ' || c, c \
             FROM (SELECT (i * 7919) % 10000 + 1 AS c FROM generate_series(0, 9999) i) s"
        ))
        .unwrap();
    // as the owner: the planner's statistics
    adm.batch_execute(&format!("ANALYZE \"{t}\".item")).unwrap();
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = logged.clone();
    let mut c = conn_string("postgres")
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| seen.lock().unwrap().push(n.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    c.batch_execute(&format!(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
         SET auto_explain.log_nested_statements = on; SET client_min_messages = log; \
         SELECT udm_use({})",
        lit(&t)
    ))
    .unwrap();
    // the plan of the item query each call ran, and the call's answer
    let run = |c: &mut postgres::Client, filters: Value| -> (String, Value) {
        logged.lock().unwrap().clear();
        let spec = json!({"columns": ["name"], "filters": filters, "sort": ["name"]});
        let v = json(
            c,
            &format!("SELECT udm_query('item', {})", lit(&spec.to_string())),
        );
        let plans = logged.lock().unwrap();
        let plan = plans
            .iter()
            .rev()
            .find(|p| p.contains("Query Text: SELECT") && p.contains("\"item\""))
            .unwrap_or_else(|| panic!("no plan of the item query in {plans:?}"))
            .clone();
        (plan, v)
    };
    // by code: an index scan for every code. The first call is not watched; the second and third
    // are planned for their values and have the generic plan's shape, so the third and every
    // later call run the generic plan
    for i in 1..=8 {
        let code = 100 + i * 37;
        let (plan, v) = run(&mut c, json!({"code": code}));
        assert_eq!(names(&v), vec![format!("item {code}")]);
        let line = plan
            .lines()
            .find(|l| l.contains("Index Cond"))
            .unwrap_or_else(|| panic!("call {i}: not an index scan:\n{plan}"));
        if i <= 2 {
            assert!(line.contains(&code.to_string()), "call {i}:\n{plan}");
        } else {
            assert!(
                line.contains('$') && !line.contains(&code.to_string()),
                "call {i} was planned for its value:\n{plan}"
            );
        }
    }
    // by a range of codes: an index scan for a few codes, a sequential scan for nearly all; the
    // generic plan cannot be both, so the statement stays planned for each call's values
    for i in 1..=6 {
        let below = if i % 2 == 0 { 9900 } else { 4 };
        let (plan, v) = run(&mut c, json!({"code": {"lt": below}}));
        let rows = v["rows"].as_array().unwrap().len();
        assert_eq!(rows, if below == 4 { 3 } else { 50 }, "{v}");
        assert!(
            plan.contains(&format!("< {below})")),
            "call {i} ran a generic plan:\n{plan}"
        );
    }
}
