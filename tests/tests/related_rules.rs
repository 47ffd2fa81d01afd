//! Rules over related records (`y_position in roadmap_id.y_axis_values`, `x_position in
//! roadmap_id.phase[].name`, `length(phase[]) <= 3`): held for udm functions and plain SQL, on
//! the rule's records and on changes to the records the rule reads, across definition changes,
//! and between concurrent writers.

use std::thread;
use std::time::Duration;
use udm_tests::*;

const R1: &str = "00000000-0000-4000-8000-000000000001";

/// roadmap, phase and product, with the roadmap rules of seed 003 (the phase limit is 3 here).
fn roadmap_model(c: &mut postgres::Client) {
    for sql in [
        r#"SELECT udm_define_entity('roadmap', '{"fields": [
             {"name": "name", "type": "text"},
             {"name": "x_axis_mode", "type": "select", "values": ["time", "phase"], "default": "time"},
             {"name": "y_axis_values", "type": "array", "items": "text"}]}')"#,
        r#"SELECT udm_define_entity('phase', '{"fields": [
             {"name": "name", "type": "text"},
             {"name": "roadmap_id", "type": "relation", "target": "roadmap", "required": true, "on_delete": "cascade"}]}')"#,
        r#"SELECT udm_define_entity('product', '{"fields": [
             {"name": "x_position", "type": "text"},
             {"name": "y_position", "type": "text"},
             {"name": "roadmap_id", "type": "relation", "target": "roadmap", "required": true, "on_delete": "cascade"}],
           "rules": [
             {"name": "y_in_axis", "check": "y_position in roadmap_id.y_axis_values",
              "message": "yPosition must be one of values in parent Roadmap.yAxisValues"},
             {"name": "x_valid", "check": "(roadmap_id.x_axis_mode = ''time'' and x_position matches ''^[0-9]{4}-Q[1-4]$'') or (roadmap_id.x_axis_mode = ''phase'' and x_position in roadmap_id.phase[].name)",
              "message": "xPosition must match valid time value or phase name from parent roadmap"}]}')"#,
        r#"SELECT udm_add_rule('roadmap', '{"name": "max_phases", "check": "length(phase[]) <= 3",
             "message": "Maximum 3 phases per roadmap"}')"#,
    ] {
        json(c, sql);
    }
    json(
        c,
        &format!(
            "SELECT udm_insert('roadmap', jsonb_build_object('id', '{R1}', 'name', 'R1', 'y_axis_values', '[\"HW\", \"SW\"]'::jsonb))"
        ),
    );
}

fn product(x: &str, y: &str) -> String {
    format!(
        "SELECT udm_insert('product', jsonb_build_object('x_position', {}, 'y_position', {}, 'roadmap_id', '{R1}'))",
        lit(x),
        lit(y)
    )
}

#[test]
fn a_membership_rule_over_a_relation_holds_both_ways() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rr");
    let t = m.tenant.clone();
    let c = &mut m.client;
    roadmap_model(c);
    let p = scalar::<String>(c, &format!("{}->>'id'", product("2025-Q1", "HW")));

    // the rule's own records: udm functions and plain SQL, insert and update
    let msg = expect_err(c, &product("2025-Q1", "XX"), "23514");
    assert!(
        msg.starts_with("yPosition must be one of values in parent Roadmap.yAxisValues (product ")
            && msg.contains("rule \"y_in_axis\": y_position in roadmap_id.y_axis_values"),
        "{msg}"
    );
    expect_err(
        c,
        &format!("INSERT INTO \"{t}\".product (x_position, y_position, roadmap_id) VALUES ('2025-Q2', 'XX', '{R1}')"),
        "23514",
    );
    expect_err(
        c,
        &format!(
            "UPDATE \"{t}\".product SET y_position = 'XX' WHERE id = {}",
            lit(&p)
        ),
        "23514",
    );
    expect_err(
        c,
        &format!(
            "SELECT udm_update('product', {}, '{{\"y_position\": \"XX\"}}')",
            lit(&p)
        ),
        "23514",
    );
    json(
        c,
        &format!(
            "SELECT udm_update('product', {}, '{{\"y_position\": \"SW\"}}')",
            lit(&p)
        ),
    );
    // COPY is held too, with the rule's SQLSTATE (on Citus the worker's comes back)
    let copy_code = "23514";
    let copy = format!("COPY \"{t}\".product (x_position, y_position, roadmap_id) FROM STDIN");
    let mut w = c.copy_in(&copy).unwrap();
    std::io::Write::write_all(&mut w, format!("2025-Q3\tNOPE\t{R1}\n").as_bytes()).unwrap();
    let e = w.finish().unwrap_err();
    assert_eq!(sqlstate(&e), copy_code, "{}", message(&e));
    assert!(
        message(&e).starts_with("yPosition must be one of values in parent Roadmap.yAxisValues"),
        "{}",
        message(&e)
    );

    // the record the rule reads: taking away a value in use is refused, naming the product
    let msg = expect_err(
        c,
        &format!("UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['HW'] WHERE id = '{R1}'"),
        "23514",
    );
    assert!(
        msg.contains(&format!(
            "this change to roadmap (where id = {R1}) leaves product {p} breaking it"
        )),
        "{msg}"
    );
    // values nobody uses may go
    c.batch_execute(&format!(
        "UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['SW', 'Services'] WHERE id = '{R1}'"
    ))
    .unwrap();
    // the mode switch needs products in phases: one transaction with deferred checks does it
    expect_err(
        c,
        &format!("UPDATE \"{t}\".roadmap SET x_axis_mode = 'phase' WHERE id = '{R1}'"),
        "23514",
    );
    c.batch_execute(&format!(
        "BEGIN; SET CONSTRAINTS ALL DEFERRED;
         UPDATE \"{t}\".roadmap SET x_axis_mode = 'phase' WHERE id = '{R1}';
         INSERT INTO \"{t}\".phase (name, roadmap_id) VALUES ('Concept', '{R1}');
         UPDATE \"{t}\".product SET x_position = 'Concept';
         COMMIT"
    ))
    .unwrap();
    assert_eq!(
        scalar::<String>(
            c,
            &format!(
                "SELECT x_position FROM \"{t}\".product WHERE id = {}",
                lit(&p)
            )
        ),
        "Concept"
    );
    // a deferred check still refuses at commit, with the rule's SQLSTATE (on Citus udm has the
    // workers check what was deferred before Citus prepares their commit)
    let e = c
        .batch_execute(&format!(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED;
             UPDATE \"{t}\".product SET y_position = 'nope'; COMMIT"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", message(&e));
    c.batch_execute("ROLLBACK").ok();
    assert_eq!(
        scalar::<String>(
            c,
            &format!(
                "SELECT y_position FROM \"{t}\".product WHERE id = {}",
                lit(&p)
            )
        ),
        "SW"
    );
}

#[test]
fn records_pointing_back_are_counted_and_kept_consistent() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rr");
    let t = m.tenant.clone();
    let c = &mut m.client;
    roadmap_model(c);
    c.batch_execute(&format!(
        "UPDATE \"{t}\".roadmap SET x_axis_mode = 'phase';
         INSERT INTO \"{t}\".phase (name, roadmap_id) VALUES ('Concept', '{R1}'), ('Launch', '{R1}')"
    ))
    .unwrap();
    json(c, &product("Concept", "HW"));
    // in phase mode, x_position names one of the roadmap's phases
    let msg = expect_err(c, &product("2025-Q1", "HW"), "23514");
    assert!(
        msg.starts_with("xPosition must match valid time value or phase name from parent roadmap"),
        "{msg}"
    );
    // at most 3 phases: a 4th is refused, through udm and plain SQL, in one statement or two
    json(
        c,
        &format!("SELECT udm_insert('phase', jsonb_build_object('name', 'Testing', 'roadmap_id', '{R1}'))"),
    );
    let msg = expect_err(
        c,
        &format!(
            "SELECT udm_insert('phase', jsonb_build_object('name', 'Extra', 'roadmap_id', '{R1}'))"
        ),
        "23514",
    );
    assert!(
        msg.starts_with(&format!(
            "Maximum 3 phases per roadmap: this change to phase (where roadmap_id = {R1}) leaves roadmap {R1} breaking it"
        )),
        "{msg}"
    );
    expect_err(
        c,
        &format!("INSERT INTO \"{t}\".phase (name, roadmap_id) VALUES ('Extra', '{R1}')"),
        "23514",
    );
    // removing or renaming a phase a product uses is refused; unused ones may go
    expect_err(
        c,
        &format!("DELETE FROM \"{t}\".phase WHERE name = 'Concept'"),
        "23514",
    );
    expect_err(
        c,
        &format!("UPDATE \"{t}\".phase SET name = 'Idea' WHERE name = 'Concept'"),
        "23514",
    );
    c.batch_execute(&format!("DELETE FROM \"{t}\".phase WHERE name = 'Testing'"))
        .unwrap();
    // a rename moves its products in the same transaction
    c.batch_execute(&format!(
        "BEGIN; SET CONSTRAINTS ALL DEFERRED;
         UPDATE \"{t}\".phase SET name = 'Idea' WHERE name = 'Concept';
         UPDATE \"{t}\".product SET x_position = 'Idea' WHERE x_position = 'Concept';
         COMMIT"
    ))
    .unwrap();
    // deleting the roadmap cascades to phases and products without tripping the rules
    c.batch_execute(&format!("DELETE FROM \"{t}\".roadmap WHERE id = '{R1}'"))
        .unwrap();
    assert_eq!(
        scalar::<i64>(c, &format!("SELECT count(*) FROM \"{t}\".phase")),
        0
    );
}

#[test]
fn definition_changes_keep_related_rules_whole() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rr");
    let t = m.tenant.clone();
    let c = &mut m.client;
    roadmap_model(c);
    // a field another entity's rule reads cannot go, nor the entity the rule counts
    let msg = expect_err(
        c,
        "SELECT udm_remove_field('roadmap', 'y_axis_values')",
        "2BP01",
    );
    assert!(
        msg.contains("this change would break a rule of entity \"product\", rule \"y_in_axis\""),
        "{msg}"
    );
    let msg = expect_err(
        c,
        r#"SELECT udm_alter_field('roadmap', 'y_axis_values', '{"name": "y_values"}')"#,
        "2BP01",
    );
    assert!(msg.contains("rule \"y_in_axis\""), "{msg}");
    let msg = expect_err(c, "SELECT udm_drop_entity('phase')", "2BP01");
    assert!(msg.contains("rule \"x_valid\""), "{msg}");
    // many-to-many paths are not followed by rules
    json(
        c,
        r#"SELECT udm_add_field('roadmap', '{"name": "tags", "type": "relation", "target": "phase", "many": true}')"#,
    );
    let msg = expect_err(
        c,
        r#"SELECT udm_add_rule('roadmap', '{"name": "m2m", "check": "length(tags.name) > 0"}')"#,
        "22023",
    );
    assert!(msg.contains("many-to-many"), "{msg}");
    // unknown paths name the segment and what is valid there
    let msg = expect_err(
        c,
        r#"SELECT udm_add_rule('product', '{"name": "bad", "check": "roadmap_id.nope = ''a''"}')"#,
        "42703",
    );
    assert!(
        msg.contains("\"nope\" is not a field of entity \"roadmap\""),
        "{msg}"
    );
    // a rule added over existing records must hold for them
    json(c, &product("2025-Q1", "HW"));
    let msg = expect_err(
        c,
        r#"SELECT udm_add_rule('product', '{"name": "named_mode", "check": "roadmap_id.name = ''other''"}')"#,
        "23514",
    );
    assert!(
        msg.contains("rule \"named_mode\" of entity \"product\" does not hold for the records there: record "),
        "{msg}"
    );
    // a dropped entity's rules stop guarding the records they read, and come back on restore
    json(c, "SELECT udm_drop_entity('product')");
    c.batch_execute(&format!(
        "UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['SW'] WHERE id = '{R1}'"
    ))
    .unwrap();
    let msg = expect_err(c, "SELECT udm_restore_entity('product')", "23514");
    assert!(
        msg.contains("rule \"y_in_axis\" of entity \"product\" does not hold"),
        "{msg}"
    );
    c.batch_execute(&format!(
        "UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['SW', 'HW'] WHERE id = '{R1}'"
    ))
    .unwrap();
    json(c, "SELECT udm_restore_entity('product')");
    expect_err(
        c,
        &format!("UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['SW'] WHERE id = '{R1}'"),
        "23514",
    );
}

/// Runs `sql` in a second session while `holder` keeps its transaction open, then commits the
/// holder; returns the second session's outcome.
fn racing(
    m: &Member,
    holder: &mut postgres::Client,
    first: &str,
    second: String,
) -> Result<(), postgres::Error> {
    holder.batch_execute(&format!("BEGIN; {first}")).unwrap();
    let role = m.role.clone();
    let tenant = m.tenant.clone();
    let other = thread::spawn(move || {
        let mut c = connect_as(&role);
        c.query_one("SELECT udm_use($1)", &[&tenant]).unwrap();
        c.batch_execute(&second)
    });
    thread::sleep(Duration::from_millis(300));
    assert!(
        !other.is_finished(),
        "the second writer must wait for the first"
    );
    holder.batch_execute("COMMIT").unwrap();
    other.join().unwrap()
}

#[test]
fn concurrent_writers_cannot_break_a_related_rule_together() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rr");
    let t = m.tenant.clone();
    let mut c = connect_as(&m.role);
    c.query_one("SELECT udm_use($1)", &[&t]).unwrap();
    roadmap_model(&mut m.client);

    // a product placed in HW while another session takes HW away: the second waits, then fails
    let e = racing(
        &m,
        &mut c,
        &format!("INSERT INTO \"{t}\".product (x_position, y_position, roadmap_id) VALUES ('2025-Q1', 'HW', '{R1}')"),
        format!("UPDATE \"{t}\".roadmap SET y_axis_values = ARRAY['SW'] WHERE id = '{R1}'"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", message(&e));

    // two sessions adding the 3rd and 4th phase: the second waits, then sees the first
    c.batch_execute(&format!(
        "INSERT INTO \"{t}\".phase (name, roadmap_id) VALUES ('A', '{R1}'), ('B', '{R1}')"
    ))
    .unwrap();
    let e = racing(
        &m,
        &mut c,
        &format!("INSERT INTO \"{t}\".phase (name, roadmap_id) VALUES ('C', '{R1}')"),
        format!("INSERT INTO \"{t}\".phase (name, roadmap_id) VALUES ('D', '{R1}')"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", message(&e));
    assert_eq!(
        scalar::<i64>(&mut c, &format!("SELECT count(*) FROM \"{t}\".phase")),
        3
    );

    // a phase removed while a product moves into it
    c.batch_execute(&format!(
        "BEGIN; SET CONSTRAINTS ALL DEFERRED; UPDATE \"{t}\".roadmap SET x_axis_mode = 'phase';
         UPDATE \"{t}\".product SET x_position = 'A'; COMMIT"
    ))
    .unwrap();
    let e = racing(
        &m,
        &mut c,
        &format!("UPDATE \"{t}\".product SET x_position = 'B'"),
        format!("DELETE FROM \"{t}\".phase WHERE name = 'B'"),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", message(&e));
}
