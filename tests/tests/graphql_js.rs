//! A real client: graphql-js (npm `graphql`, the reference implementation, installed by the
//! Makefile into tests/graphql-js) builds a client schema from udm's introspection answer,
//! `validateSchema` finds nothing wrong, and documents validate against it as udm says.

use std::io::Write;
use std::process::{Command, Stdio};
use udm_tests::postgres::Client;
use udm_tests::*;

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphql-js")
}

fn node(args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new("node")
        .arg(dir().join("check.mjs"))
        .args(args)
        .current_dir(dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (installed by make test: tests/graphql-js)");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn check(c: &mut Client, documents: Value) -> Value {
    let (ok, query) = node(&["query"], None);
    assert!(ok, "{query}");
    let answer: Value = c
        .query_one("SELECT udm_graphql($1)", &[&query])
        .unwrap()
        .get(0);
    let docs = std::env::temp_dir().join(format!("{}.json", unique("gqldocs")));
    std::fs::write(&docs, documents.to_string()).unwrap();
    let (ok, report) = node(
        &["schema", docs.to_str().unwrap()],
        Some(&answer.to_string()),
    );
    let _ = std::fs::remove_file(&docs);
    assert!(ok, "graphql-js found problems: {report}");
    serde_json::from_str(&report).unwrap()
}

#[test]
fn graphql_js_builds_and_validates_udm_schemas() {
    let mut adm = admin();
    // every field type, relations both ways, many-to-many, a reference, a self relation
    let t = tenant(&mut adm, "gqljs");
    adm.batch_execute(&format!(
        r#"SELECT udm_use({t});
           SELECT udm_define_entity('folder', '{{"fields": [{{"name": "name", "type": "text"}}, {{"name": "parent_id", "type": "relation", "target": "folder"}}]}}');
           SELECT udm_define_entity('label', '{{"fields": [{{"name": "name", "type": "text"}}]}}');
           SELECT udm_define_entity('item', '{{"fields": [
             {{"name": "a_text", "type": "text"}}, {{"name": "a_long", "type": "long_text"}}, {{"name": "a_float", "type": "float"}},
             {{"name": "a_int", "type": "integer"}}, {{"name": "a_big", "type": "bigint"}}, {{"name": "a_dec", "type": "decimal"}},
             {{"name": "a_cur", "type": "currency"}}, {{"name": "a_pct", "type": "percent"}}, {{"name": "a_bool", "type": "boolean"}},
             {{"name": "a_date", "type": "date"}}, {{"name": "a_dt", "type": "datetime"}}, {{"name": "a_time", "type": "time"}},
             {{"name": "a_dur", "type": "duration"}}, {{"name": "a_email", "type": "email"}}, {{"name": "a_url", "type": "url"}},
             {{"name": "a_phone", "type": "phone"}}, {{"name": "a_color", "type": "color"}}, {{"name": "a_sel", "type": "select", "values": ["x", "y-z", "1st"]}},
             {{"name": "a_multi", "type": "multi_select", "values": ["p", "q"]}}, {{"name": "a_tags", "type": "tags"}},
             {{"name": "a_json", "type": "json"}}, {{"name": "a_arr", "type": "array", "items": "integer"}},
             {{"name": "a_file", "type": "file"}}, {{"name": "a_uuid", "type": "uuid"}}, {{"name": "a_rating", "type": "rating"}}, {{"name": "a_secret", "type": "password"}}, {{"name": "a_no", "type": "auto_number"}},
             {{"name": "a_user", "type": "user"}}, {{"name": "folder_id", "type": "relation", "target": "folder"}},
             {{"name": "labels", "type": "relation", "target": "label", "many": true}},
             {{"name": "about", "type": "reference", "targets": ["folder", "label"]}}]}}');"#,
        t = lit(&t)
    ))
    .unwrap();
    let report = check(
        &mut adm,
        json!({
            "nested": "{ itemCollection(first: 2, filter: {folder: {name: {eq: \"a\"}}}) { totalCount edges { cursor node { aText aDec folder { name parent { name } } labels { nodes { name } } about { __typename ... on Folder { name } } } } pageInfo { hasNextPage endCursor } } }",
            "mutation": "mutation { insertItem(objects: [{aText: \"x\", aDec: \"1.5\"}]) { affectedCount records { id } } }",
            "schema_change": "mutation { addField(entity: \"item\", field: {name: \"b\", type: \"text\"}) }",
            "subscription": "subscription { itemChanged(actions: [INSERT]) { eventId record { aText } } }",
            "bad_unknown_field": "{ itemCollection { nodes { nope } } }",
            "bad_password": "{ itemCollection { nodes { aSecret } } }",
            "bad_two_subscription_roots": "subscription { itemChanged { eventId } labelChanged { eventId } }"
        }),
    );
    assert!(report["types"].as_i64().unwrap() > 20, "{report}");

    // a member's schema, with a field its role may not read: graphql-js builds it too, and the
    // field is not in it
    let app = login_role(&mut adm, "gqljsapp");
    grant_tenant(&mut adm, &t, &app);
    let email = format!("{}@gqljs.test", unique("v"));
    adm.batch_execute(&format!(
        r#"SELECT udm_create_user({e}, 'Viewer', 'a-long-password');
           SELECT udm_define_role('limited', 'viewer', '{{"entities": {{"item": {{"fields": {{"a_text": {{"read": false}}}}}}}}}}');
           SELECT udm_add_member({t}, {e}, 'limited');"#,
        e = lit(&email),
        t = lit(&t)
    ))
    .unwrap();
    let mut c = connect_as(&app);
    c.execute("SELECT udm_use($1, $2)", &[&t, &email]).unwrap();
    check(
        &mut c,
        json!({
            "reads": "{ itemCollection { nodes { aLong } } }",
            "bad_hidden": "{ itemCollection { nodes { aText } } }"
        }),
    );
}
