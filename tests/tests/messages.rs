//! Names and messages a newcomer meets: consumer names like subscription targets, refusals that
//! name a record that breaks a new rule, and type aliases listed where the types are.

use udm_tests::*;

#[test]
fn consumers_take_the_names_targets_take() {
    let mut adm = admin();
    let mut m = member(&mut adm, "msgc");
    let c = &mut m.client;
    json(
        c,
        r#"SELECT udm_define_entity('book', '{"fields": [{"name": "title", "type": "text"}]}')"#,
    );
    json(
        c,
        "SELECT udm_subscribe('book', ARRAY['INSERT'], 'price-review')",
    );
    c.batch_execute(r#"SELECT udm_insert('book', '{"title": "a"}')"#)
        .unwrap();
    let page = json(c, "SELECT udm_consume('tz-worker', 10)");
    let last = page["last_event"].as_i64().unwrap();
    json(c, &format!("SELECT udm_ack('tz-worker', {last})"));
    json(c, &format!("SELECT udm_ack('Worker #2 (eu)', {last})"));
    for bad in ["''", "repeat('x', 201)", "E'tab\\there'"] {
        let msg = expect_err(c, &format!("SELECT udm_consume({bad}, 10)"), "22023");
        assert!(
            msg.contains("udm_consume: consumer") && msg.contains("1 to 200 printable characters"),
            "{msg}"
        );
    }
    let msg = expect_err(c, "SELECT udm_ack('', 1)", "22023");
    assert!(msg.contains("udm_ack: consumer"), "{msg}");
}

#[test]
fn a_new_rule_that_stored_records_break_names_one() {
    let mut adm = admin();
    let mut m = member(&mut adm, "msgr");
    let t = m.tenant.clone();
    let c = &mut m.client;
    json(
        c,
        r#"SELECT udm_define_entity('book', '{"fields": [{"name": "title", "type": "text"}, {"name": "pages", "type": "integer"}]}')"#,
    );
    c.batch_execute(&format!(
        "INSERT INTO \"{t}\".book (title, pages) VALUES ('fine', 10), ('a very long title indeed', 500)"
    ))
    .unwrap();
    let long: String = scalar(
        c,
        &format!("SELECT id::text FROM \"{t}\".book WHERE pages = 500"),
    );
    // an entity rule without a message
    let msg = expect_err(
        c,
        r#"SELECT udm_add_rule('book', '{"name": "short", "check": "length(title) <= 10"}')"#,
        "23514",
    );
    assert!(
        msg.contains("rule \"short\" of entity \"book\" does not hold for the records there")
            && msg.contains(&format!("record {long} breaks it")),
        "{msg}"
    );
    // a field's rule
    let msg = expect_err(
        c,
        r#"SELECT udm_alter_field('book', 'pages', '{"max": 100}')"#,
        "23514",
    );
    assert!(
        msg.contains("the \"max\" rule of a field of entity \"book\"")
            && msg.contains(&format!("record {long} breaks it"))
            && msg.contains("book.pages must be at most 100"),
        "{msg}"
    );
    // nothing was half applied
    let d = json(c, "SELECT udm_describe('book')");
    assert_eq!(d["version"], json!(1), "{d}");
    // rows that hold it: the rule comes
    c.batch_execute(&format!(
        "UPDATE \"{t}\".book SET pages = 50, title = 'short'"
    ))
    .unwrap();
    json(
        c,
        r#"SELECT udm_add_rule('book', '{"name": "short", "check": "length(title) <= 10"}')"#,
    );
    json(
        c,
        r#"SELECT udm_alter_field('book', 'pages', '{"max": 100}')"#,
    );
}

#[test]
fn type_aliases_are_listed_with_their_types_and_recorded_as_the_type() {
    let mut adm = admin();
    let mut m = member(&mut adm, "msga");
    let c = &mut m.client;
    let rows = c
        .query(
            "SELECT type_name, aliases FROM udm_field_types() WHERE cardinality(aliases) > 0 ORDER BY 1",
            &[],
        )
        .unwrap();
    let listed: Vec<(String, Vec<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        listed.contains(&("text".into(), vec!["string".into()]))
            && listed.contains(&("decimal".into(), vec!["numeric".into(), "number".into()]))
            && listed.contains(&("datetime".into(), vec!["timestamp".into()])),
        "{listed:?}"
    );
    let d = json(
        c,
        r#"SELECT udm_define_entity('thing', '{"fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int"}, {"name": "c", "type": "bool"}, {"name": "d", "type": "timestamp"}, {"name": "e", "type": "number"}]}')"#,
    );
    let types: Vec<&str> = d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["text", "integer", "boolean", "datetime", "decimal"]);
    let msg = expect_err(
        c,
        r#"SELECT udm_add_field('thing', '{"name": "f", "type": "str"}')"#,
        "42704",
    );
    assert!(msg.contains("text"), "lists the types: {msg}");
}
