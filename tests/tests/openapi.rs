//! `udm_openapi()` checked by a real validator: @apidevtools/swagger-parser (installed by the
//! Makefile into tests/openapi, with Ajv for the component schemas; tests/openapi/validate.mjs)
//! finds the documents valid OpenAPI 3.1 — for the roadmap template with an entity of every field
//! type, as a member whose role hides a field, after a definition change, and for the demo
//! tenants — and records as udm returns them valid against the schemas that describe them; a
//! broken document is refused.

use std::process::Command;
use udm_tests::postgres::{Client, NoTls};
use udm_tests::*;

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi")
}

/// Runs the validator on `doc` (and `values`, `{"<component>": [value, ...]}`): (valid, report).
fn validate(doc: &Value, values: Option<&Value>) -> (bool, String) {
    let tmp = std::env::temp_dir();
    let doc_path = tmp.join(format!("{}.json", unique("openapi")));
    std::fs::write(&doc_path, doc.to_string()).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(dir().join("validate.mjs"))
        .arg(&doc_path)
        .current_dir(dir());
    let values_path = values.map(|v| {
        let p = tmp.join(format!("{}.json", unique("openapi_values")));
        std::fs::write(&p, v.to_string()).unwrap();
        p
    });
    if let Some(p) = &values_path {
        cmd.arg(p);
    }
    let out = cmd
        .output()
        .expect("node (the validator is installed by make test: tests/openapi)");
    let _ = std::fs::remove_file(&doc_path);
    if let Some(p) = values_path {
        let _ = std::fs::remove_file(p);
    }
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[track_caller]
fn assert_valid(doc: &Value, values: Option<&Value>) -> Value {
    let (ok, report) = validate(doc, values);
    assert!(ok, "the validator refused the document: {report}");
    serde_json::from_str(report.trim()).unwrap_or_else(|e| panic!("{e}: {report}"))
}

fn props<'a>(doc: &'a Value, schema: &str) -> &'a serde_json::Map<String, Value> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {schema}"))
}

fn list_params(doc: &Value, entity: &str) -> Vec<String> {
    doc["paths"][format!("/records/{entity}")]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect()
}

const ITEM: &str = r#"{"fields": [
  {"name": "a_text", "type": "text", "required": true, "min_length": 2, "max_length": 40, "pattern": "^[A-Za-z]"},
  {"name": "a_long", "type": "long_text"}, {"name": "a_float", "type": "float"},
  {"name": "a_int", "type": "integer", "min": -5, "max": 500}, {"name": "a_big", "type": "bigint"},
  {"name": "a_dec", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
  {"name": "a_cur", "type": "currency", "currency_code": "EUR"}, {"name": "a_pct", "type": "percent"},
  {"name": "a_bool", "type": "boolean", "default": false},
  {"name": "a_date", "type": "date", "min": "2000-01-01"}, {"name": "a_dt", "type": "datetime"},
  {"name": "a_time", "type": "time"}, {"name": "a_dur", "type": "duration"},
  {"name": "a_email", "type": "email"}, {"name": "a_url", "type": "url"},
  {"name": "a_phone", "type": "phone"}, {"name": "a_color", "type": "color"},
  {"name": "a_sel", "type": "select", "values": ["x", "y-z", "1st"], "required": true, "default": "x"},
  {"name": "a_multi", "type": "multi_select", "values": ["p", "q"], "max_items": 2},
  {"name": "a_tags", "type": "tags"}, {"name": "a_json", "type": "json"},
  {"name": "a_arr", "type": "array", "items": "integer", "max_items": 5},
  {"name": "a_dates", "type": "date[]"},
  {"name": "a_file", "type": "file", "max_size": 100000}, {"name": "a_uuid", "type": "uuid"},
  {"name": "a_rating", "type": "rating", "max": 10}, {"name": "a_secret", "type": "password", "min_length": 8},
  {"name": "a_no", "type": "auto_number"}, {"name": "a_user", "type": "user"},
  {"name": "folder_id", "type": "relation", "target": "folder"},
  {"name": "roadmap_id", "type": "relation", "target": "roadmap", "on_delete": "cascade"},
  {"name": "labels", "type": "relation", "target": "label", "many": true},
  {"name": "about", "type": "reference", "targets": ["folder", "label"]},
  {"name": "count", "type": "integer"}]}"#;

/// A record with every field given, as an insert sends it.
fn full_item(user: &str, folder: &str, label: &str) -> Value {
    json!({
        "a_text": "Hello", "a_long": "a longer text", "a_float": 1.5, "a_int": 42,
        "a_big": 9007199254740993_i64, "a_dec": 1234.56, "a_cur": 99.99, "a_pct": 12.5,
        "a_bool": true, "a_date": "2026-03-04", "a_dt": "2026-03-04T05:06:07Z",
        "a_time": "12:30:00", "a_dur": "2 hours", "a_email": "someone@example.test",
        "a_url": "https://example.test/a?b=c", "a_phone": "+49 30 1234567", "a_color": "#12AB34",
        "a_sel": "y-z", "a_multi": ["p", "q"], "a_tags": ["red", "blue"],
        "a_json": {"k": [1, 2, {"x": null}]}, "a_arr": [3, 1, 2], "a_dates": ["2026-01-01"],
        "a_file": {"name": "manual.pdf", "size": 1234, "mime_type": "application/pdf", "url": "https://example.test/m.pdf"},
        "a_uuid": "0190c7a4-5e2b-7c3d-8f00-1a2b3c4d5e6f", "a_rating": 7,
        "a_secret": "a long secret", "a_user": user, "folder_id": folder,
        "labels": [label], "about": {"entity": "label", "id": label}, "count": 3
    })
}

#[test]
fn udm_openapi_is_valid_openapi_as_each_caller_sees_it() {
    let mut adm = admin();
    let t = tenant(&mut adm, "oapi");
    adm.batch_execute(&format!(
        "SELECT udm_use({t}); SELECT udm_install_template('roadmap');
         SELECT udm_define_entity('folder', '{{\"fields\": [{{\"name\": \"name\", \"type\": \"text\"}}, {{\"name\": \"parent_id\", \"type\": \"relation\", \"target\": \"folder\"}}]}}');
         SELECT udm_define_entity('label', '{{\"label\": \"Labels\", \"fields\": [{{\"name\": \"name\", \"type\": \"text\"}}]}}');
         SELECT udm_define_entity('item', {item});",
        t = lit(&t),
        item = lit(ITEM)
    ))
    .unwrap();

    let doc = json(&mut adm, "SELECT udm_openapi()");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], format!("udm tenant {t}"));
    for e in [
        "roadmap",
        "phase",
        "product",
        "dashboard_link",
        "folder",
        "label",
        "item",
    ] {
        for p in [
            format!("/records/{e}"),
            format!("/records/{e}/{{id}}"),
            format!("/records/{e}/{{id}}/lock"),
        ] {
            assert!(doc["paths"][&p].is_object(), "{p}");
        }
    }
    assert_eq!(
        doc["paths"]["/records/item"]["get"]["operationId"],
        "listItem"
    );
    let item = props(&doc, "Item");
    assert_eq!(item["a_text"]["minLength"], 2);
    assert_eq!(item["a_int"]["maximum"], 500);
    assert_eq!(item["a_sel"]["enum"], json!(["x", "y-z", "1st"]));
    assert_eq!(item["roadmap_id"]["x-udm-relation"]["entity"], "roadmap");
    assert!(!item.contains_key("a_secret"));
    assert_eq!(
        props(&doc, "ItemInput")["a_secret"]["writeOnly"],
        true,
        "passwords are written"
    );
    // the roadmap template's own rules are in its schemas
    let product = props(&doc, "Product");
    assert_eq!(product["codename"]["minLength"], 2);
    assert_eq!(product["codename"]["maxLength"], 100);

    // records as udm returns them are valid against the schemas that describe them
    let email = format!("{}@oapi.test", unique("u"));
    let user: String = scalar(
        &mut adm,
        &format!(
            "SELECT udm_create_user({}, 'Item User', 'a-long-password') ->> 'id'",
            lit(&email)
        ),
    );
    let folder: String = scalar(
        &mut adm,
        "SELECT udm_insert('folder', '{\"name\": \"F\"}') ->> 'id'",
    );
    let label: String = scalar(
        &mut adm,
        "SELECT udm_insert('label', '{\"name\": \"L\"}') ->> 'id'",
    );
    let full = full_item(&user, &folder, &label);
    let minimal = json!({"a_text": "Hi"});
    let mut stored = vec![];
    for input in [&full, &minimal] {
        let id: String = adm
            .query_one("SELECT udm_insert('item', $1) ->> 'id'", &[input])
            .unwrap_or_else(|e| panic!("{}", message(&e)))
            .get(0);
        stored.push(json(
            &mut adm,
            &format!("SELECT udm_get('item', {})", lit(&id)),
        ));
    }
    assert_eq!(stored[0]["a_dec"], json!(1234.56), "{}", stored[0]);
    assert!(stored[1]["a_dec"].is_null());
    let page = json(
        &mut adm,
        "SELECT udm_query('item', '{\"limit\": 1, \"count\": \"exact\"}')",
    );
    let rest_page = json!({"records": page["rows"], "next_cursor": page["next_cursor"], "count": page["count"]});
    let folders = json(&mut adm, "SELECT udm_query('folder', '{}')");
    let report = assert_valid(
        &doc,
        Some(&json!({
            "Item": stored,
            "ItemInput": [full, minimal],
            "ItemPatch": [{"a_int": 7}, {"a_long": null}],
            "ItemPage": [rest_page],
            "Folder": folders["rows"],
        })),
    );
    assert_eq!(report["values"], 8, "{report}");
    assert!(report["operations"].as_i64().unwrap() > 7 * 16, "{report}");

    // ... and values that break the schema are refused: the check can fail
    let mut wrong = stored[0].clone();
    wrong["a_sel"] = json!("nope");
    let (ok, why) = validate(&doc, Some(&json!({"Item": [wrong]})));
    assert!(!ok && why.contains("Item[0]"), "{why}");
    let (ok, why) = validate(&doc, Some(&json!({"ItemInput": [{"a_int": 501}]})));
    assert!(
        !ok && why.contains("'a_text'") && why.contains("<= 500"),
        "{why}"
    );

    // broken documents are refused
    let mut no_info = doc.clone();
    no_info.as_object_mut().unwrap().remove("info");
    let mut dangling = doc.clone();
    dangling["paths"]["/records/item"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"] = json!({"$ref": "#/components/schemas/Nope"});
    let mut twice = doc.clone();
    twice["paths"]["/records/label"]["get"]["operationId"] = json!("listItem");
    let mut bad_schema = doc.clone();
    bad_schema["components"]["schemas"]["Item"]["properties"]["a_int"]["maximum"] = json!("500");
    for (what, broken, says) in [
        ("no info", no_info, "info"),
        ("a dangling $ref", dangling, "Nope"),
        ("an operationId twice", twice, "listItem"),
        ("a bad schema", bad_schema, "maximum"),
    ] {
        let (ok, why) = validate(&broken, None);
        assert!(!ok, "{what}: the validator accepted it: {why}");
        assert!(why.contains(says), "{what}: {why}");
    }

    // a member whose role hides a field: the field is absent, the document valid
    let app = login_role(&mut adm, "oapiapp");
    grant_tenant(&mut adm, &t, &app);
    let viewer = format!("{}@oapi.test", unique("v"));
    adm.batch_execute(&format!(
        r#"SELECT udm_create_user({e}, 'Viewer', 'a-long-password');
           SELECT udm_define_role('limited', 'viewer', '{{"entities": {{"item": {{"fields": {{"a_int": {{"read": false}}}}}}}}}}');
           SELECT udm_add_member({t}, {e}, 'limited');"#,
        e = lit(&viewer),
        t = lit(&t)
    ))
    .unwrap();
    let mut c = connect_as(&app);
    expect_err(&mut c, "SELECT udm_openapi()", "55000");
    c.execute("SELECT udm_use($1, $2)", &[&t, &viewer]).unwrap();
    let seen = json(&mut c, "SELECT udm_openapi()");
    for s in ["Item", "ItemInput", "ItemPatch"] {
        assert!(!props(&seen, s).contains_key("a_int"), "{s}");
        assert!(props(&seen, s).contains_key("a_long"), "{s}");
        assert!(props(&doc, s).contains_key("a_int"), "{s}");
    }
    assert!(!list_params(&seen, "item").contains(&"a_int".to_string()));
    assert!(list_params(&doc, "item").contains(&"a_int".to_string()));
    assert!(list_params(&doc, "item").contains(&"filter.count".to_string()));
    assert_ne!(seen["info"]["version"], doc["info"]["version"]);
    // what the member reads is valid against what the member is shown
    let member_rows = json(&mut c, "SELECT udm_query('item', '{}')");
    assert!(member_rows["rows"][0].get("a_int").is_none());
    assert_valid(&seen, Some(&json!({"Item": member_rows["rows"]})));

    // a definition change: the new field appears (to both), the version changes
    adm.batch_execute(
        "SELECT udm_add_field('item', '{\"name\": \"b_new\", \"type\": \"integer\", \"min\": 1, \"max\": 9}')",
    )
    .unwrap();
    let after = json(&mut adm, "SELECT udm_openapi()");
    assert_eq!(props(&after, "Item")["b_new"]["minimum"], 1);
    assert_eq!(props(&after, "Item")["b_new"]["maximum"], 9);
    assert!(!props(&doc, "Item").contains_key("b_new"));
    assert_ne!(after["info"]["version"], doc["info"]["version"]);
    assert_eq!(
        json(&mut adm, "SELECT udm_openapi()")["info"]["version"],
        after["info"]["version"],
        "the same definitions give the same version"
    );
    let stored_after = json(
        &mut adm,
        &format!(
            "SELECT udm_get('item', {})",
            lit(stored[0]["id"].as_str().unwrap())
        ),
    );
    assert_valid(&after, Some(&json!({"Item": [stored_after]})));
    let seen_after = json(&mut c, "SELECT udm_openapi()");
    assert!(props(&seen_after, "Item").contains_key("b_new"));
    assert!(!props(&seen_after, "Item").contains_key("a_int"));
    assert_ne!(seen_after["info"]["version"], seen["info"]["version"]);
    assert_valid(&seen_after, None);
}

/// The demo tenants of `make run` (sql/demo.sql, loaded with psql into a database of their own).
#[test]
fn demo_tenants_documents_are_valid() {
    let mut adm = admin();
    let db = unique("udm_oapi_demo");
    adm.batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .unwrap();
    let host = std::env::var("UDM_TEST_HOST")
        .unwrap_or_else(|_| "/work/main/target/test-cluster/sock".into());
    let port = std::env::var("UDM_TEST_PORT").unwrap_or_else(|_| "5498".into());
    let psql = std::env::var("PGBIN")
        .map(|b| format!("{b}/psql"))
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/psql".into());
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/demo.sql");
    let out = Command::new(&psql)
        .args(["-h", &host, "-p", &port, "-U", "postgres", "-d", &db])
        .args([
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "CREATE EXTENSION udm",
            "-f",
        ])
        .arg(&demo)
        .output()
        .expect("psql");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut c = Client::connect(
            &format!(
                "host={host} port={port} dbname={db} user=postgres application_name=udm-tests"
            ),
            NoTls,
        )
        .unwrap();
        for (tenant, user, entities) in [
            ("acme", None, vec!["category", "product"]),
            (
                "studio",
                Some("alice@studio.test"),
                vec!["roadmap", "phase", "product"],
            ),
            (
                "studio",
                Some("carol@studio.test"),
                vec!["roadmap", "phase", "product"],
            ),
        ] {
            match user {
                Some(u) => c.execute("SELECT udm_use($1, $2)", &[&tenant, &u]),
                None => c.execute("SELECT udm_use($1)", &[&tenant]),
            }
            .unwrap();
            let doc = json(&mut c, "SELECT udm_openapi()");
            assert_eq!(doc["info"]["title"], format!("udm tenant {tenant}"));
            for e in &entities {
                assert!(
                    doc["paths"][format!("/records/{e}")].is_object(),
                    "{tenant} {e}"
                );
            }
            // the demo's records are valid against their schemas
            let mut values = serde_json::Map::new();
            for e in &entities {
                let rows = json(&mut c, &format!("SELECT udm_query({}, '{{}}')", lit(e)));
                let schema = doc["paths"][format!("/records/{e}/{{id}}")]["get"]["responses"]
                    ["200"]["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string();
                values.insert(schema, rows["rows"].clone());
            }
            let report = assert_valid(&doc, Some(&Value::Object(values)));
            if tenant == "acme" {
                assert!(report["values"].as_i64().unwrap() >= 8, "{report}");
            }
        }
    }));
    adm.batch_execute(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .unwrap();
    // the demo's tenant roles are the cluster's: named after the database, they go with it
    for r in adm
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE '%@' || $1",
            &[&db],
        )
        .unwrap()
    {
        let r: String = r.get(0);
        let _ = adm.batch_execute(&format!("DROP ROLE \"{r}\""));
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
