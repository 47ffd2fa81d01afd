//! The roadmap template (seed 003): every validation rule, through udm functions and plain SQL
//! alike, and the roadmap flow with users, relations and the write lock.

use serde_json::{json, Value};
use udm_tests::*;

/// `INSERT INTO <entity> (<keys>) VALUES (<each key of jsonb_populate_record(...)>)`: the record
/// a plain-SQL client would write.
fn plain_insert(t: &str, entity: &str, v: &Value) -> String {
    // one row of VALUES, each taken from the JSON as the column's type (an INSERT ... SELECT of
    // the function would go through Citus's coordinator as COPY, its refusals as XX000)
    let row = format!(
        "jsonb_populate_record(NULL::\"{t}\".{entity}, {})",
        lit(&v.to_string())
    );
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    let cols: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let values: Vec<String> = keys.iter().map(|k| format!("({row}).\"{k}\"")).collect();
    format!(
        "INSERT INTO \"{t}\".{entity} ({}) VALUES ({})",
        cols.join(", "),
        values.join(", ")
    )
}

fn udm_insert(entity: &str, v: &Value) -> String {
    format!("SELECT udm_insert('{entity}', {})", lit(&v.to_string()))
}

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut v = base.clone();
    v[key] = value;
    v
}

#[test]
fn every_rule_of_the_roadmap_template_holds_for_udm_and_plain_sql() {
    let mut adm = admin();
    let mut m = member(&mut adm, "tpl");
    let t = m.tenant.clone();
    let c = &mut m.client;
    c.query_one("SELECT udm_use($1, 'planner')", &[&t]).unwrap();
    let installed = json(c, "SELECT udm_install_template('roadmap')");
    assert_eq!(
        installed["entities"],
        json!(["roadmap", "phase", "product", "dashboard_link"])
    );
    // installing twice is refused, naming what exists
    let msg = expect_err(c, "SELECT udm_install_template('roadmap')", "42P07");
    assert!(msg.contains("the tenant has \"roadmap (active)\""), "{msg}");
    expect_err(c, "SELECT udm_install_template('crm')", "42704");

    let roadmap = json!({"name": "Hardware", "y_axis_values": ["HW", "SW"]});
    let r = json(c, &udm_insert("roadmap", &roadmap))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let phased = json(
        c,
        &udm_insert(
            "roadmap",
            &json!({"name": "Phased", "x_axis_mode": "phase", "y_axis_values": ["A"]}),
        ),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let product = json!({"codename": "Falcon", "part_number": "HW-1", "description": "A phone that folds",
        "sample_date": "2027-01-01", "release_date": "2027-02-01", "roadmap_id": r,
        "x_position": "2027-Q1", "y_position": "HW"});
    let p = json(c, &udm_insert("product", &product))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let phase =
        json!({"roadmap_id": phased, "name": "Concept", "sort_order": 0, "color": "#AABBCC"});
    json(c, &udm_insert("phase", &phase));
    let link =
        json!({"product_id": p, "dashboard_type": "sales", "dashboard_id": "d1", "label": "Sales"});
    json(c, &udm_insert("dashboard_link", &link));

    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "roadmap",
            with(&roadmap, "name", json!("ab")),
            "23514",
            "name minimum length 3 characters",
        ),
        (
            "roadmap",
            with(&roadmap, "name", json!("x".repeat(256))),
            "23514",
            "name maximum length 255 characters",
        ),
        (
            "roadmap",
            with(&roadmap, "y_axis_values", json!([])),
            "23514",
            "yAxisValues must be non-empty array",
        ),
        (
            "roadmap",
            with(
                &roadmap,
                "y_axis_values",
                json!((0..16).map(|i| format!("v{i}")).collect::<Vec<_>>()),
            ),
            "23514",
            "yAxisValues maximum 15 values",
        ),
        (
            "roadmap",
            with(&roadmap, "y_axis_values", json!(["HW", "HW"])),
            "23514",
            "Each value in yAxisValues must be unique within array",
        ),
        (
            "roadmap",
            with(&roadmap, "x_axis_mode", json!("grid")),
            "23514",
            "x_axis_mode",
        ),
        (
            "roadmap",
            with(&roadmap, "y_axis_type", json!("size")),
            "23514",
            "y_axis_type",
        ),
        (
            "product",
            with(&product, "codename", json!("F")),
            "23514",
            "codename minimum length 2 characters",
        ),
        (
            "product",
            with(
                &with(&product, "part_number", json!("HW")),
                "codename",
                json!("Fa"),
            ),
            "23514",
            "partNumber minimum length 3 characters",
        ),
        (
            "product",
            with(&product, "description", json!("too short")),
            "23514",
            "description minimum length 10 characters",
        ),
        (
            "product",
            with(
                &with(&product, "part_number", json!("HW-2")),
                "sample_date",
                json!("2027-03-01"),
            ),
            "23514",
            "sampleDate must be <= releaseDate",
        ),
        (
            "product",
            with(
                &with(&product, "part_number", json!("HW-3")),
                "y_position",
                json!("Services"),
            ),
            "23514",
            "yPosition must be one of values in parent Roadmap.yAxisValues",
        ),
        (
            "product",
            with(
                &with(&product, "part_number", json!("HW-4")),
                "x_position",
                json!("Concept"),
            ),
            "23514",
            "xPosition must match valid time value or phase name from parent roadmap",
        ),
        (
            "product",
            with(
                &with(&product, "part_number", json!("HW-5")),
                "x_position",
                json!("2027-Q5"),
            ),
            "23514",
            "xPosition must match",
        ),
        (
            "product",
            product.clone(),
            "23505",
            "partNumber must be unique globally",
        ),
        (
            "phase",
            with(&phase, "name", json!("C")),
            "23514",
            "name minimum length 2 characters",
        ),
        (
            "phase",
            with(&with(&phase, "name", json!("Dev")), "sort_order", json!(-1)),
            "23514",
            "order must be >= 0",
        ),
        (
            "phase",
            with(&with(&phase, "name", json!("Dev")), "color", json!("red")),
            "23514",
            "color must be valid hex format #RRGGBB if provided",
        ),
        (
            "phase",
            with(&phase, "sort_order", json!(1)),
            "23505",
            "phase_name_per_roadmap",
        ),
        (
            "phase",
            with(&phase, "name", json!("Dev")),
            "23505",
            "phase_order_per_roadmap",
        ),
        (
            "dashboard_link",
            with(&link, "dashboard_type", json!("finance")),
            "23514",
            "dashboardType must be from allowed list",
        ),
        (
            "dashboard_link",
            with(&link, "label", json!("ab")),
            "23514",
            "label minimum length 3 characters",
        ),
    ];
    for (entity, v, code, words) in &cases {
        let msg = expect_err(c, &udm_insert(entity, v), code);
        assert!(msg.contains(words), "{entity} {v}: {msg}");
        // plain SQL gets the same refusal; for a unique index in PostgreSQL's words (the key)
        let msg = expect_err(c, &plain_insert(&t, entity, v), code);
        let words = if *code == "23505" {
            "already exists"
        } else {
            words
        };
        assert!(msg.contains(words), "{entity} {v}: {msg}");
    }
    // time values: years, months, days, quarters and halves
    for (i, x) in ["2027", "2027-04", "2027-04-15", "2027-H2"]
        .iter()
        .enumerate()
    {
        let v = with(
            &with(&product, "part_number", json!(format!("T-{i}"))),
            "x_position",
            json!(x),
        );
        json(c, &udm_insert("product", &v));
    }
    // in phase mode, x_position names a phase of the product's roadmap
    let in_phase = with(
        &with(
            &with(&product, "part_number", json!("PH-1")),
            "roadmap_id",
            json!(phased),
        ),
        "y_position",
        json!("A"),
    );
    expect_err(c, &udm_insert("product", &in_phase), "23514");
    json(
        c,
        &udm_insert("product", &with(&in_phase, "x_position", json!("Concept"))),
    );
    // at most 10 phases per roadmap
    for i in 1..10 {
        c.batch_execute(&plain_insert(
            &t,
            "phase",
            &json!({"roadmap_id": phased, "name": format!("P{i}"), "sort_order": i}),
        ))
        .unwrap();
    }
    let msg = expect_err(
        c,
        &plain_insert(
            &t,
            "phase",
            &json!({"roadmap_id": phased, "name": "P10", "sort_order": 10}),
        ),
        "23514",
    );
    assert!(msg.starts_with("Maximum 10 phases per roadmap"), "{msg}");
    // changing phases needs the roadmap's lock; even then, a phase in use cannot be removed
    expect_err(
        c,
        &format!("DELETE FROM \"{t}\".phase WHERE name = 'Concept'"),
        "55P03",
    );
    json(
        c,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&phased)),
    );
    let msg = expect_err(
        c,
        &format!("DELETE FROM \"{t}\".phase WHERE name = 'Concept'"),
        "23514",
    );
    assert!(msg.contains("xPosition must match"), "{msg}");
    // moving or changing a product needs the roadmap's lock
    let msg = expect_err(
        c,
        &format!(
            "UPDATE \"{t}\".product SET y_position = 'SW' WHERE id = {}",
            lit(&p)
        ),
        "55P03",
    );
    assert!(msg.contains("udm_lock_acquire"), "{msg}");
    json(
        c,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&r)),
    );
    c.batch_execute(&format!(
        "UPDATE \"{t}\".product SET y_position = 'SW' WHERE id = {}",
        lit(&p)
    ))
    .unwrap();
    // deleting a roadmap takes its products, phases and links with it
    c.batch_execute(&format!(
        "DELETE FROM \"{t}\".roadmap WHERE id = {}",
        lit(&r)
    ))
    .unwrap();
    assert_eq!(
        scalar::<i64>(c, &format!("SELECT count(*) FROM \"{t}\".dashboard_link")),
        0
    );
}

#[test]
fn the_roadmap_flow_with_users_relations_and_the_lock() {
    let mut adm = admin();
    let m = member(&mut adm, "flow");
    let t = m.tenant.clone();
    let mut owner = m.client;
    json(&mut owner, "SELECT udm_install_template('roadmap')");
    let alice = unique("alice") + "@flow.test";
    let bob = unique("bob") + "@flow.test";
    let carol = unique("carol") + "@flow.test";
    for u in [&alice, &bob, &carol] {
        json(
            &mut owner,
            &format!(
                "SELECT udm_create_user({}, 'Someone', 'a-long-password')",
                lit(u)
            ),
        );
    }
    json(
        &mut owner,
        &format!(
            "SELECT udm_add_member({}, {}, 'admin')",
            lit(&t),
            lit(&alice)
        ),
    );
    let session = |user: &str| {
        let mut c = connect_as(&m.role);
        c.query_one("SELECT udm_use($1, $2)", &[&t, &user]).unwrap();
        c
    };
    let mut a = session(&alice);
    json(
        &mut a,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&t),
            lit(&bob)
        ),
    );
    json(
        &mut a,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&t),
            lit(&carol)
        ),
    );
    let r = json(
        &mut a,
        &udm_insert(
            "roadmap",
            &json!({"name": "Hardware", "y_axis_values": ["HW", "SW"]}),
        ),
    );
    // the creator owns the roadmap and is implicitly its admin
    let rid = r["id"].as_str().unwrap().to_string();
    assert!(scalar::<bool>(
        &mut a,
        &format!(
            "SELECT udm_check({}, 'admin', 'roadmap:{rid}')",
            lit(&alice)
        )
    ));
    json(
        &mut a,
        &format!("SELECT udm_grant({}, 'editor', 'roadmap:{rid}')", lit(&bob)),
    );
    json(
        &mut a,
        &format!(
            "SELECT udm_grant({}, 'viewer', 'roadmap:{rid}')",
            lit(&carol)
        ),
    );
    let mut b = session(&bob);
    let mut c = session(&carol);
    // nobody grants above their own level
    let msg = expect_err(
        &mut b,
        &format!(
            "SELECT udm_grant({}, 'admin', 'roadmap:{rid}')",
            lit(&carol)
        ),
        "42501",
    );
    assert!(msg.contains("admin"), "{msg}");
    // a viewer may not lock; an editor may
    expect_err(
        &mut c,
        &format!("SELECT udm_lock_acquire('roadmap', '{rid}')"),
        "42501",
    );
    json(
        &mut a,
        &format!("SELECT udm_lock_acquire('roadmap', '{rid}')"),
    );
    let p = json(&mut a, &udm_insert("product", &json!({"codename": "Falcon", "part_number": unique("HW"),
        "description": "A phone that folds", "sample_date": "2027-01-01", "release_date": "2027-02-01",
        "roadmap_id": rid, "x_position": "2027-Q1", "y_position": "HW"})))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // bob cannot move it while alice holds the lock
    let msg = expect_err(
        &mut b,
        &format!("UPDATE \"{t}\".product SET y_position = 'SW' WHERE id = '{p}'"),
        "55P03",
    );
    assert!(msg.contains(&alice), "{msg}");
    json(
        &mut a,
        &format!("SELECT udm_lock_release('roadmap', '{rid}')"),
    );
    // bob acquires, moves, and the audit shows who moved what
    json(
        &mut b,
        &format!("SELECT udm_lock_acquire('roadmap', '{rid}')"),
    );
    json(&mut b, &format!("SELECT udm_update('product', '{p}', '{{\"x_position\": \"2027-Q3\", \"y_position\": \"SW\"}}')"));
    let h = b
        .query_one(
            &format!("SELECT user_id, changed_fields FROM udm_history('product', '{p}') LIMIT 1"),
            &[],
        )
        .unwrap();
    assert_eq!(h.get::<_, String>(0), bob);
    assert_eq!(
        h.get::<_, Vec<String>>(1),
        vec!["x_position".to_string(), "y_position".to_string()]
    );
    // the viewer sees the product but may not change it, even holding nothing
    assert_eq!(
        scalar::<i64>(&mut c, &format!("SELECT count(*) FROM \"{t}\".product")),
        1
    );
    expect_err(
        &mut c,
        &format!("UPDATE \"{t}\".product SET codename = 'X' WHERE id = '{p}'"),
        "42501",
    );
    // and a move to a y value the roadmap lacks is refused whoever holds the lock
    expect_err(
        &mut b,
        &format!("UPDATE \"{t}\".product SET y_position = 'Nope' WHERE id = '{p}'"),
        "23514",
    );
    json(
        &mut b,
        &format!("SELECT udm_lock_release('roadmap', '{rid}')"),
    );
    // someone who may not read products still cannot take away the y value one uses
    let dave = unique("dave") + "@flow.test";
    json(
        &mut a,
        &format!(
            "SELECT udm_create_user({}, 'Dave', 'a-long-password')",
            lit(&dave)
        ),
    );
    json(
        &mut a,
        r#"SELECT udm_define_role('planner', 'editor', '{"entities": {"product": {"read": false}}}')"#,
    );
    json(
        &mut a,
        &format!(
            "SELECT udm_add_member({}, {}, 'planner')",
            lit(&t),
            lit(&dave)
        ),
    );
    json(
        &mut a,
        &format!("SELECT udm_grant({}, 'admin', 'roadmap:{rid}')", lit(&dave)),
    );
    let mut d = session(&dave);
    assert_eq!(count_of(&mut d, &t, "product"), 0, "dave sees no products");
    json(
        &mut d,
        &format!("SELECT udm_lock_acquire('roadmap', '{rid}')"),
    );
    let msg = expect_err(
        &mut d,
        &format!("UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['HW'] WHERE id = '{rid}'"),
        "23514",
    );
    assert!(
        msg.contains(&format!("leaves product {p} breaking it")),
        "{msg}"
    );
}

fn count_of(c: &mut postgres::Client, t: &str, table: &str) -> i64 {
    scalar(c, &format!("SELECT count(*) FROM \"{t}\".{table}"))
}
