//! The native audit, as an existing app sees it: every write path is recorded (udm functions,
//! plain SQL, COPY, cascades, links), the log is append-only for tenants and tamper-evident,
//! history and rollback work across renames, and change events reach a LISTEN client and a
//! consumer that resumes after its last acknowledgement.

use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;
use udm_tests::*;

/// Whether this run's tenants keep their audit log in batches (`UDM_TEST_AUDIT_BATCHES=1`, see
/// `udm_tests::tenant`). The tests that edit the per-change table's storage directly (tampering,
/// damage) are for that layout; audit_batches.rs has their batched counterparts.
fn batched() -> bool {
    std::env::var("UDM_TEST_AUDIT_BATCHES").is_ok_and(|v| v == "1")
}

fn shop(m: &mut Member) {
    for def in [
        r#"SELECT udm_define_entity('category', '{"fields": [{"name": "name", "type": "text", "required": true}]}')"#,
        r#"SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}')"#,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0, "critical": true},
            {"name": "status", "type": "select", "values": ["draft", "active"], "default": "draft"},
            {"name": "secret", "type": "text", "audit": false},
            {"name": "pin", "type": "password"},
            {"name": "category_id", "type": "relation", "target": "category", "on_delete": "cascade"},
            {"name": "tags", "type": "relation", "target": "tag", "many": true}]}')"#,
    ] {
        json(&mut m.client, def);
    }
}

/// Inserts a product through udm and returns its id.
fn insert_product(m: &mut Member, fields: &str) -> String {
    let p = json(
        &mut m.client,
        &format!("SELECT udm_insert('product', '{fields}')"),
    );
    p["id"].as_str().unwrap().to_string()
}

/// Updates a product's price through udm once per price given, in order.
fn reprice(m: &mut Member, id: &str, prices: &[i32]) {
    for v in prices {
        json(
            &mut m.client,
            &format!("SELECT udm_update('product', '{id}', '{{\"price\": {v}}}')"),
        );
    }
}

fn count(m: &mut Member, cond: &str) -> i64 {
    scalar(
        &mut m.client,
        &format!(
            "SELECT count(*) FROM \"{}\"._udm_audit WHERE {cond}",
            m.tenant
        ),
    )
}

#[test]
fn every_write_path_is_recorded_with_images_and_who() {
    let mut adm = admin();
    let mut m = member(&mut adm, "aud");
    shop(&mut m);
    let s = m.tenant.clone();
    m.client
        .batch_execute("SELECT udm_use(current_setting('udm.tenant'), 'user-42')")
        .unwrap();
    let cat = json(
        &mut m.client,
        "SELECT udm_insert('category', '{\"name\": \"C\"}')",
    );
    let cat = cat["id"].as_str().unwrap().to_string();
    let p = json(
        &mut m.client,
        &format!(
            "SELECT udm_insert('product', '{{\"name\": \"A\", \"price\": 10, \"secret\": \"s3\", \"pin\": \"hunter22\", \"category_id\": \"{cat}\"}}')"
        ),
    );
    let id = p["id"].as_str().unwrap().to_string();
    // plain SQL, COPY, batch function
    m.client
        .batch_execute(&format!(
            "UPDATE \"{s}\".product SET price = 12.5, secret = 'other' WHERE id = '{id}'"
        ))
        .unwrap();
    let mut w = m
        .client
        .copy_in(&format!("COPY \"{s}\".product (name, price) FROM STDIN"))
        .unwrap();
    use std::io::Write;
    w.write_all(b"copied1\t1\ncopied2\t2\n").unwrap();
    w.finish().unwrap();
    json(
        &mut m.client,
        "SELECT udm_insert_many('product', '[{\"name\": \"b1\"}, {\"name\": \"b2\"}]')",
    );
    assert_eq!(count(&mut m, "entity = 'product' AND action = 'INSERT'"), 5);
    // the plain UPDATE: one row, version 2, changed fields, old and new images
    let row = m
        .client
        .query_one(
            &format!(
                "SELECT record_version, changed_fields, old_data, new_data, user_id, db_role, txid > 0 \
                 FROM \"{s}\"._udm_audit WHERE record_id = '{id}' AND action = 'UPDATE'"
            ),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), Some(2));
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["price".to_string()],
        "secret is not audited, so not listed"
    );
    let old: Value = row.get(2);
    let new: Value = row.get(3);
    assert_eq!(old["price"], serde_json::json!(10.0));
    assert_eq!(
        old.as_object().unwrap().len(),
        1,
        "an update's old image holds the previous values of the changed fields: {old}"
    );
    assert!(
        new.get("id").is_none() && new.get("_version").is_none() && new.get("updated_at").is_some(),
        "id and _version are the row's own columns, the other stamps are in the image: {new}"
    );
    assert_eq!(new["price"], serde_json::json!(12.5));
    assert!(
        new.get("pin").is_none(),
        "password fields never appear in images"
    );
    assert!(
        new.get("secret").is_none(),
        "excluded fields never appear in images"
    );
    assert_eq!(row.get::<_, String>(4), "user-42");
    assert_eq!(row.get::<_, String>(5), m.role);
    assert!(row.get::<_, bool>(6));
    // links, and a cascade delete of the product through its category
    let tag = json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"t\"}')",
    );
    let tag = tag["id"].as_str().unwrap().to_string();
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"tags\": [\"{tag}\"]}}')"),
    );
    assert_eq!(
        count(
            &mut m,
            &format!("entity = 'product.tags' AND record_id = '{id}' AND action = 'INSERT'")
        ),
        1
    );
    m.client
        .batch_execute(&format!("DELETE FROM \"{s}\".category WHERE id = '{cat}'"))
        .unwrap();
    assert_eq!(
        count(
            &mut m,
            &format!("record_id = '{id}' AND entity = 'product' AND action = 'DELETE'")
        ),
        1
    );
    assert_eq!(
        count(
            &mut m,
            &format!("record_id = '{id}' AND entity = 'product.tags' AND action = 'DELETE'")
        ),
        1
    );
    // a rolled-back change leaves nothing; history is newest first with summaries
    let before = count(&mut m, "true");
    m.client
        .batch_execute(&format!(
            "BEGIN; UPDATE \"{s}\".product SET price = 99; ROLLBACK;"
        ))
        .unwrap();
    assert_eq!(count(&mut m, "true"), before);
    let h = m
        .client
        .query(
            &format!("SELECT version, action, summary FROM udm_history('product', '{id}')"),
            &[],
        )
        .unwrap();
    let actions: Vec<String> = h.iter().map(|r| r.get::<_, String>(1)).collect();
    assert_eq!(actions, vec!["DELETE", "UPDATE", "UPDATE", "INSERT"]);
    let summaries: Vec<String> = h.iter().map(|r| r.get::<_, String>(2)).collect();
    assert_eq!(summaries[2], "price changed from 10.00 to 12.50");
    assert_eq!(json(&mut m.client, "SELECT udm_audit_verify()")["ok"], true);
}

#[test]
fn tenants_cannot_write_the_log_and_tampering_is_found() {
    if batched() {
        return;
    }
    let mut adm = admin();
    let mut m = member(&mut adm, "audt");
    shop(&mut m);
    let s = m.tenant.clone();
    let id = insert_product(&mut m, "{\"name\": \"A\", \"price\": 1}");
    reprice(&mut m, &id, &[2, 3, 4]);
    for sql in [
        format!("UPDATE \"{s}\"._udm_audit SET user_id = 'x'"),
        format!("DELETE FROM \"{s}\"._udm_audit"),
        format!("TRUNCATE \"{s}\"._udm_audit"),
        format!("INSERT INTO \"{s}\"._udm_audit (entity, record_id, action, user_id, db_role, txid, changed_at, hash) VALUES ('product', '{id}', 'UPDATE', 'x', 'x', 1, now(), '\\x00')"),
        "ALTER TABLE \"{s}\".product DISABLE TRIGGER udm_audit".replace("{s}", &s),
    ] {
        expect_err(&mut m.client, &sql, "42501");
    }
    assert_eq!(json(&mut m.client, "SELECT udm_audit_verify()")["ok"], true);
    // a superuser edits a row: its hash no longer matches
    adm.batch_execute(&format!(
        "UPDATE \"{s}\"._udm_audit SET new_data = jsonb_set(new_data, '{{price}}', '100') WHERE record_id = '{id}' AND record_version = 3"
    ))
    .unwrap();
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], false);
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap()
            .contains("hash"),
        "{v}"
    );
    // a superuser deletes a row in the middle: the next one no longer links
    let mut adm2 = admin();
    let mut m2 = member(&mut adm2, "audt2");
    shop(&mut m2);
    let s2 = m2.tenant.clone();
    let id2 = insert_product(&mut m2, "{\"name\": \"A\", \"price\": 1}");
    reprice(&mut m2, &id2, &[2, 3, 4]);
    adm2.batch_execute(&format!(
        "DELETE FROM \"{s2}\"._udm_audit WHERE record_id = '{id2}' AND record_version = 2"
    ))
    .unwrap();
    let v = json(&mut m2.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_broken"]["record_id"], serde_json::json!(id2));
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap()
            .contains("different row"),
        "{v}"
    );
}

/// The newest rows of a live record's chain, or all of it, cannot be removed unseen: the record's
/// current version must have an audit row while its entity audits. Changes made while auditing
/// was off are not counted against it.
#[test]
fn verify_reports_a_live_record_whose_newest_audit_rows_are_gone() {
    if batched() {
        return;
    }
    let mut adm = admin();
    let mut m = member(&mut adm, "audh");
    shop(&mut m);
    let s = m.tenant.clone();
    let kept = insert_product(&mut m, "{\"name\": \"K\", \"price\": 1}");
    let id = insert_product(&mut m, "{\"name\": \"A\", \"price\": 1}");
    reprice(&mut m, &id, &[2, 3, 4]);
    let other = insert_product(&mut m, "{\"name\": \"B\", \"price\": 1}");
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["missing_heads"], serde_json::json!([]));
    // a superuser removes the newest row of one record: every link left is intact
    adm.batch_execute(&format!(
        "DELETE FROM \"{s}\"._udm_audit WHERE record_id = '{id}' AND record_version = 4"
    ))
    .unwrap();
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"], serde_json::Value::Null, "{v}");
    let h = &v["missing_heads"][0];
    assert_eq!(h["entity"], "product");
    assert_eq!(h["records"], 1);
    assert_eq!(h["first"]["record_id"], serde_json::json!(id));
    assert_eq!(h["first"]["version"], 4);
    assert_eq!(h["first"]["newest_audited_version"], 3);
    // ... and the whole chain of another
    adm.batch_execute(&format!(
        "DELETE FROM \"{s}\"._udm_audit WHERE record_id = '{other}'"
    ))
    .unwrap();
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["missing_heads"][0]["records"], 2, "{v}");
    // a superuser writing with triggers off leaves a version without an audit row too
    // (on Citus the triggers fire on the tenant's worker: the setting goes there as a SET LOCAL;
    // one statement per command, as Citus sends a SET command's whole text on)
    let citus = on_citus(&mut adm);
    for sql in [
        "BEGIN",
        if citus {
            "SET LOCAL citus.propagate_set_commands = 'local'"
        } else {
            "SELECT 1"
        },
        "SET LOCAL session_replication_role = replica",
        &format!(
            "UPDATE \"{s}\".product SET price = 9, _version = _version + 1 WHERE id = '{kept}'"
        ),
        "COMMIT",
    ] {
        adm.batch_execute(sql).unwrap();
    }
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["missing_heads"][0]["records"], 3, "{v}");

    // changes while auditing is off are no missing rows; once it is on again, they count
    let mut m2 = member(&mut adm, "audh2");
    shop(&mut m2);
    let a = insert_product(&mut m2, "{\"name\": \"A\", \"price\": 1}");
    let b = insert_product(&mut m2, "{\"name\": \"B\", \"price\": 1}");
    json(&mut m2.client, "SELECT udm_set_audit('product', false)");
    reprice(&mut m2, &a, &[2]);
    reprice(&mut m2, &b, &[2]);
    let v = json(&mut m2.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
    json(&mut m2.client, "SELECT udm_set_audit('product', true)");
    let v = json(&mut m2.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "changed before auditing came back on: {v}");
    reprice(&mut m2, &a, &[3]);
    let v = json(&mut m2.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
    let s2 = m2.tenant.clone();
    adm.batch_execute(&format!(
        "DELETE FROM \"{s2}\"._udm_audit WHERE record_id = '{a}' AND record_version = 3"
    ))
    .unwrap();
    let v = json(&mut m2.client, "SELECT udm_audit_verify()");
    assert_eq!(
        v["missing_heads"][0]["first"]["record_id"],
        serde_json::json!(a),
        "{v}"
    );
    assert_eq!(v["missing_heads"][0]["records"], 1, "{v}");
}

#[test]
fn rollback_restores_versions_fields_and_deleted_records() {
    let mut adm = admin();
    let mut m = member(&mut adm, "aurb");
    shop(&mut m);
    let s = m.tenant.clone();
    let id = insert_product(
        &mut m,
        "{\"name\": \"A\", \"price\": 1, \"status\": \"draft\"}",
    );
    json(
        &mut m.client,
        &format!(
            "SELECT udm_update('product', '{id}', '{{\"price\": 2, \"status\": \"active\"}}')"
        ),
    );
    // rename a field: rollback follows the field by its id
    json(
        &mut m.client,
        "SELECT udm_alter_field('product', 'name', '{\"name\": \"title\"}')",
    );
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"title\": \"B\"}}')"),
    );
    let r = json(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 2, ARRAY['price'])"),
    );
    assert_eq!(r["fields"], serde_json::json!(["price"]));
    let row = json(&mut m.client, &format!("SELECT udm_get('product', '{id}')"));
    assert_eq!(row["title"], "B", "only price was rolled back");
    let r = json(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 1)"),
    );
    assert_eq!(r["version"], 5);
    let row = json(&mut m.client, &format!("SELECT udm_get('product', '{id}')"));
    assert_eq!(
        (
            row["title"].clone(),
            row["price"].clone(),
            row["status"].clone()
        ),
        ("A".into(), serde_json::json!(1.0), "draft".into())
    );
    let h = m
        .client
        .query(
            &format!("SELECT action, version FROM udm_history('product', '{id}') LIMIT 1"),
            &[],
        )
        .unwrap();
    assert_eq!(h[0].get::<_, String>(0), "ROLLBACK");
    // deleted records come back with the next version
    m.client
        .batch_execute(&format!("DELETE FROM \"{s}\".product WHERE id = '{id}'"))
        .unwrap();
    // times are read first, then passed: on Citus a udm call with a sub-select of a tenant
    // table runs whole on the tenant's worker, where udm refuses it
    let first_at: String = scalar(&mut m.client, &format!("SELECT changed_at::text FROM \"{s}\"._udm_audit WHERE record_id = '{id}' AND record_version = 1"));
    let at: Value = json(
        &mut m.client,
        &format!("SELECT udm_record_at('product', '{id}', '{first_at}')"),
    );
    assert_eq!(
        at["title"],
        Value::Null,
        "images keep the field names they had: {at}"
    );
    assert_eq!(at["name"], "A");
    assert_eq!(
        at["id"],
        id.as_str(),
        "record_at puts id and _version back: {at}"
    );
    assert_eq!(at["_version"], 1);
    let gone: Option<Value> = scalar(
        &mut m.client,
        &format!("SELECT udm_record_at('product', '{id}', now())"),
    );
    assert_eq!(gone, None, "deleted by now");
    let deleted_at: String = scalar(&mut m.client, &format!("SELECT (changed_at - interval '1 microsecond')::text FROM \"{s}\"._udm_audit WHERE record_id = '{id}' AND action = 'DELETE'"));
    let before_delete: Value = json(
        &mut m.client,
        &format!("SELECT udm_record_at('product', '{id}', '{deleted_at}')"),
    );
    assert_eq!(before_delete["_version"], 5, "{before_delete}");
    let r = json(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 5)"),
    );
    assert_eq!(r["version"], 6);
    let row = json(&mut m.client, &format!("SELECT udm_get('product', '{id}')"));
    assert_eq!(row["_version"], 6);
    // errors: unknown version, unknown field, a rule that no longer holds
    expect_err(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 42)"),
        "P0002",
    );
    expect_err(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 1, ARRAY['nope'])"),
        "42703",
    );
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"price\": 10}}')"),
    );
    json(
        &mut m.client,
        "SELECT udm_alter_field('product', 'price', '{\"min\": 5}')",
    );
    let e = expect_err(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 1, ARRAY['price'])"),
        "23514",
    );
    assert!(
        e.contains("cannot roll back product") && e.contains("price"),
        "{e}"
    );
    assert_eq!(json(&mut m.client, "SELECT udm_audit_verify()")["ok"], true);
}

/// The transaction of a record's newest change, from its history.
fn history_txid(m: &mut Member, entity: &str, id: &str) -> i64 {
    scalar(
        &mut m.client,
        &format!("SELECT txid FROM udm_history('{entity}', '{id}') ORDER BY version DESC LIMIT 1"),
    )
}

#[test]
fn whole_transactions_roll_back_in_order_and_conflicts_are_named() {
    let mut adm = admin();
    let mut m = member(&mut adm, "aurt");
    shop(&mut m);
    let s = m.tenant.clone();
    let a = insert_product(&mut m, "{\"name\": \"A\", \"price\": 1}");
    let gone = insert_product(&mut m, "{\"name\": \"G\", \"price\": 1}");
    // one transaction: a category and a product in it, A changed twice, G deleted
    m.client.batch_execute("BEGIN").unwrap();
    let c = json(
        &mut m.client,
        "SELECT udm_insert('category', '{\"name\": \"new\"}')",
    );
    let c = c["id"].as_str().unwrap().to_string();
    let n = json(
        &mut m.client,
        &format!("SELECT udm_insert('product', '{{\"name\": \"N\", \"category_id\": \"{c}\"}}')"),
    );
    let n = n["id"].as_str().unwrap().to_string();
    m.client.batch_execute(&format!("UPDATE \"{s}\".product SET price = 5 WHERE id = '{a}'; UPDATE \"{s}\".product SET price = 6 WHERE id = '{a}'; DELETE FROM \"{s}\".product WHERE id = '{gone}'; COMMIT")).unwrap();
    // the transaction as udm_history names it (on Citus: the transaction on the tenant's node,
    // not the coordinator's txid_current())
    let tx = history_txid(&mut m, "category", &c);
    let r = json(
        &mut m.client,
        &format!("SELECT udm_rollback_transaction({tx})"),
    );
    assert_eq!(r["records"], 4, "category, N, A (changed twice) and G: {r}");
    let left: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{s}\".product WHERE id IN ('{n}')"),
    );
    assert_eq!(left, 0);
    let cats: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{s}\".category"),
    );
    assert_eq!(cats, 0);
    let price: String = scalar(
        &mut m.client,
        &format!("SELECT price::text FROM \"{s}\".product WHERE id = '{a}'"),
    );
    assert_eq!(price, "1.00");
    let back: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{s}\".product WHERE id = '{gone}'"),
    );
    assert_eq!(back, 1, "the deleted record is back");
    // a later transaction changed the same row: refused, naming it, unless forced
    m.client
        .batch_execute(&format!(
            "UPDATE \"{s}\".product SET price = 7 WHERE id = '{a}'"
        ))
        .unwrap();
    let tx2 = history_txid(&mut m, "product", &a);
    m.client
        .batch_execute(&format!(
            "UPDATE \"{s}\".product SET price = 8 WHERE id = '{a}'"
        ))
        .unwrap();
    let e = expect_err(
        &mut m.client,
        &format!("SELECT udm_rollback_transaction({tx2})"),
        "40001",
    );
    assert!(e.contains(&a), "{e}");
    json(
        &mut m.client,
        &format!("SELECT udm_rollback_transaction({tx2}, force => true)"),
    );
    let price: String = scalar(
        &mut m.client,
        &format!("SELECT price::text FROM \"{s}\".product WHERE id = '{a}'"),
    );
    assert_eq!(price, "1.00");
    expect_err(&mut m.client, "SELECT udm_rollback_transaction(1)", "P0002");
    assert_eq!(json(&mut m.client, "SELECT udm_audit_verify()")["ok"], true);
}

#[test]
fn reports_summarize_users_records_and_critical_changes() {
    let mut adm = admin();
    let mut m = member(&mut adm, "aurp");
    shop(&mut m);
    m.client
        .batch_execute("SELECT udm_use(current_setting('udm.tenant'), 'ann')")
        .unwrap();
    let id = insert_product(&mut m, "{\"name\": \"A\", \"price\": 99.99}");
    m.client
        .batch_execute("SELECT udm_use(current_setting('udm.tenant'), 'bob')")
        .unwrap();
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"price\": 129.99}}')"),
    );
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"status\": \"active\"}}')"),
    );
    let period = "now() - interval '1 hour', now() + interval '1 hour'";
    let r = json(
        &mut m.client,
        &format!("SELECT udm_audit_report('summary', {period})"),
    );
    assert_eq!(r["summary"]["total_changes"], 3);
    assert_eq!(r["summary"]["users_active"], 2);
    assert_eq!(r["summary"]["entities_modified"], 1);
    assert_eq!(r["summary"]["critical_changes"], 1, "{r}");
    let r = json(
        &mut m.client,
        &format!("SELECT udm_audit_report('changes', {period})"),
    );
    let summaries: Vec<&str> = r["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["change_summary"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        vec![
            "created product",
            "price changed from 99.99 to 129.99",
            "status changed from \"draft\" to \"active\""
        ]
    );
    let r = json(
        &mut m.client,
        &format!("SELECT udm_audit_report('user_activity', {period}, '{{\"user\": \"ann\"}}')"),
    );
    assert_eq!(r["details"].as_array().unwrap().len(), 1);
    let r = json(&mut m.client, &format!("SELECT udm_audit_report('record_history', {period}, '{{\"entity\": \"product\", \"record_id\": \"{id}\"}}')"));
    assert_eq!(r["details"].as_array().unwrap().len(), 3);
    let r = json(
        &mut m.client,
        "SELECT udm_audit_report('summary', now() + interval '1 hour', now() + interval '2 hours')",
    );
    assert_eq!(r["summary"]["total_changes"], 0);
    expect_err(
        &mut m.client,
        &format!("SELECT udm_audit_report('sox', {period})"),
        "22023",
    );
    expect_err(
        &mut m.client,
        &format!("SELECT udm_audit_report('user_activity', {period})"),
        "22023",
    );
    // a period is read through the changed_at index, not a scan of the whole table
    let s = m.tenant.clone();
    // on Citus the log's shard is planned on the tenant's worker: the setting goes there as a
    // SET LOCAL, and the index is its shard's (<name>_<shard id>)
    // (one statement per command: Citus sends a SET command's whole text on)
    let citus = on_citus(&mut m.client);
    let settings: &[&str] = if citus {
        &[
            "BEGIN",
            "SET LOCAL citus.propagate_set_commands = 'local'",
            "SET LOCAL enable_seqscan = off",
        ]
    } else {
        &["SET enable_seqscan = off"]
    };
    for sql in settings {
        m.client.batch_execute(sql).unwrap();
    }
    let plan: Vec<String> = column(&mut m.client, &format!("EXPLAIN SELECT count(*) FROM \"{s}\"._udm_audit a WHERE a.changed_at >= now() - interval '1 day' AND a.changed_at < now()"));
    if citus {
        m.client.batch_execute("COMMIT").unwrap();
    }
    assert!(
        plan.iter()
            .any(|l| l.contains("_udm_audit__changed_at_txid_id__idx")),
        "{plan:?}"
    );
}

/// Events are read in ranges of audit ids: pages of a consumer far behind, and pages across the
/// gap a rolled-back bulk write leaves in the ids, still deliver every committed event once, in
/// order; and a record's chain and history are read through the one btree the audit log has.
#[test]
fn events_are_read_in_id_ranges_across_gaps() {
    let mut adm = admin();
    let mut m = member(&mut adm, "aurange");
    shop(&mut m);
    let s = m.tenant.clone();
    let bulk = |n: i64| {
        format!(
            "INSERT INTO \"{s}\".product (name, price) SELECT 'p' || i, i FROM generate_series(1, {n}) i"
        )
    };
    m.client.batch_execute(&bulk(3000)).unwrap();
    m.client
        .batch_execute(&format!("BEGIN; {}; ROLLBACK", bulk(20_000)))
        .unwrap();
    m.client.batch_execute(&bulk(7)).unwrap();
    let mut seen: Vec<i64> = Vec::new();
    let mut after = 0i64;
    loop {
        let page = json(&mut m.client, &format!("SELECT udm_events({after}, 1000)"));
        let ids: Vec<i64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_i64().unwrap())
            .collect();
        if ids.is_empty() {
            assert_eq!(page["last_event"], after, "{page}");
            break;
        }
        // (a batched log's horizon is the end of the newest batch's ids: a short page ends
        // before it, and the next one is empty)
        assert!(
            ids.len() == 1000
                || page["last_event"] == page["horizon"]
                || (batched() && page["last_event"].as_i64() <= page["horizon"].as_i64()),
            "a short page ends at the horizon: {page}"
        );
        after = page["last_event"].as_i64().unwrap();
        seen.extend(ids);
    }
    assert_eq!(seen.len(), 3007);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in id order, once each"
    );
    let gap = seen.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap > 20_000, "the rolled-back ids are a gap: {gap}");
    if batched() {
        // a batched log: the ids after a cursor are read from the chunks holding them, found by
        // the log's primary key (the condition udm_events adds, `audit::ids_sql`)
        let last = seen.last().unwrap();
        let plan: Vec<String> = column(&mut m.client, &format!(
                    "EXPLAIN SELECT audit_id FROM \"{s}\"._udm_audit WHERE audit_id > {} AND audit_id <= {last} \
                       AND batch_id BETWEEN {} / 1024 AND {last} / 1024 ORDER BY audit_id LIMIT 100",
                    last - 1,
                    last - 1
                ));
        assert!(
            plan.iter().any(|l| l.contains("_udm_audit_log_pkey")),
            "{plan:?}"
        );
        return;
    }
    // the audit log's keys: (record_id, audit_id), and a BRIN for time, transaction and id
    let indexes: Vec<String> = column(&mut m.client, &format!(
                "SELECT indexrelid::regclass::text || ' ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = '\"{s}\"._udm_audit'::regclass ORDER BY 1"
            ));
    assert_eq!(indexes.len(), 3, "{indexes:?}");
    assert!(
        indexes[0].contains("USING brin (changed_at, txid, audit_id)"),
        "{indexes:?}"
    );
    assert!(
        indexes[1].contains("_udm_audit__id__idx") && indexes[1].contains("USING brin (audit_id)"),
        "{indexes:?}"
    );
    assert!(
        indexes[2].contains("UNIQUE INDEX _udm_audit__record__idx ON")
            && indexes[2].contains("btree (record_id, audit_id)"),
        "{indexes:?}"
    );
    // the ids after a cursor are found through the BRIN of ids, not by scanning the primary key
    // whole (once its ranges are summarized, as autovacuum does with autosummarize)
    adm.batch_execute(&format!(
        "SELECT brin_summarize_new_values('\"{s}\"._udm_audit__id__idx'); ANALYZE \"{s}\"._udm_audit"
    ))
    .unwrap();
    // as udm_events plans it: a prepared statement, planned for the values of the first calls
    m.client
        .batch_execute(&format!(
            "PREPARE ev(bigint, bigint, bigint) AS SELECT audit_id FROM \"{s}\"._udm_audit \
               WHERE audit_id > $1 AND audit_id <= $2 ORDER BY audit_id LIMIT $3"
        ))
        .unwrap();
    let last = seen.last().unwrap();
    let plan: Vec<String> = column(
        &mut m.client,
        &format!("EXPLAIN EXECUTE ev({}, {last}, 100)", last - 1),
    );
    assert!(
        plan.iter().any(|l| l.contains("_udm_audit__id__idx")),
        "{plan:?}"
    );
    m.client.batch_execute("DEALLOCATE ev").unwrap();
}

#[test]
fn audit_can_be_switched_off_and_that_change_is_itself_recorded() {
    let mut adm = admin();
    let mut m = member(&mut adm, "auoff");
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('note', '{"audit": false, "fields": [{"name": "body", "type": "text"}]}')"#,
    );
    json(
        &mut m.client,
        "SELECT udm_insert('note', '{\"body\": \"x\"}')",
    );
    assert_eq!(count(&mut m, "entity = 'note'"), 0);
    let d = json(&mut m.client, "SELECT udm_describe('note')");
    assert_eq!(d["audit"], false, "{d}");
    // switching it on (and off again) is a versioned definition change, and takes effect at once
    json(&mut m.client, "SELECT udm_set_audit('note', true)");
    json(
        &mut m.client,
        "SELECT udm_insert('note', '{\"body\": \"y\"}')",
    );
    assert_eq!(count(&mut m, "entity = 'note'"), 1);
    // plain SQL is held to it too: the audit triggers come with auditing on
    let s = m.tenant.clone();
    let triggers = |m: &mut Member| -> i64 {
        scalar(
            &mut m.client,
            &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '\"{s}\".note'::regclass AND tgname LIKE 'udm_audit%'"),
        )
    };
    assert_eq!(triggers(&mut m), 2);
    m.client
        .batch_execute(&format!("UPDATE \"{s}\".note SET body = 'plain'"))
        .unwrap();
    assert_eq!(
        count(&mut m, "entity = 'note'"),
        3,
        "both rows' updates are audited"
    );
    json(&mut m.client, "SELECT udm_set_audit('note', false)");
    assert_eq!(triggers(&mut m), 0, "auditing off drops the triggers");
    json(
        &mut m.client,
        "SELECT udm_insert('note', '{\"body\": \"z\"}')",
    );
    m.client
        .batch_execute(&format!("UPDATE \"{s}\".note SET body = 'quiet'"))
        .unwrap();
    assert_eq!(count(&mut m, "entity = 'note'"), 3);
    let ops: Vec<String> = m
        .client
        .query(
            "SELECT change->>'op' FROM udm_entity_history('note') ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ops[1..],
        ["set_audit".to_string(), "set_audit".to_string()],
        "{ops:?}"
    );
    expect_err(
        &mut m.client,
        "SELECT udm_set_audit('note', false)",
        "55000",
    );
    expect_err(
        &mut m.client,
        "SELECT udm_set_audit('ghost', true)",
        "42P01",
    );
    expect_err(
        &mut m.client,
        "SELECT * FROM udm_history('ghost', gen_random_uuid())",
        "42P01",
    );
    expect_err(
        &mut m.client,
        "SELECT udm_record_at('ghost', gen_random_uuid(), now())",
        "42P01",
    );
}

#[test]
fn big_statements_notify_once_and_links_roll_back() {
    let mut adm = admin();
    let mut m = member(&mut adm, "aubig");
    shop(&mut m);
    let s = m.tenant.clone();
    let channel: String = scalar(&mut m.client, "SELECT udm_events_channel()");
    let mut listener = connect_as(&m.role);
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .unwrap();
    // (on Citus notifications are sent on the tenant's worker, where no client listens: the
    // README says so; the events are checked in the stream)
    let citus = on_citus(&mut m.client);
    // notifications are off unless asked for: a write announces nothing
    let off: String = scalar(&mut m.client, "SHOW udm.notify_changes");
    assert_eq!(off, "off");
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{s}\".product (name) VALUES ('unannounced')"
        ))
        .unwrap();
    {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(500));
        assert!(it.next().unwrap().is_none(), "no notification by default");
    }
    m.client
        .batch_execute(&format!(
            "SET udm.notify_changes = on; \
             INSERT INTO \"{s}\".product (name) SELECT 'p' || i FROM generate_series(1, 150) i"
        ))
        .unwrap();
    let last = if citus {
        scalar(
            &mut m.client,
            &format!("SELECT max(audit_id) FROM \"{s}\"._udm_audit"),
        )
    } else {
        let mut got = Vec::new();
        {
            let mut n = listener.notifications();
            let mut it = n.timeout_iter(Duration::from_secs(2));
            while let Some(x) = it.next().unwrap() {
                got.push(serde_json::from_str::<Value>(x.payload()).unwrap());
            }
        }
        assert_eq!(got.len(), 1, "one batch notification for 150 rows: {got:?}");
        assert_eq!(got[0]["batch"], true);
        assert_eq!(got[0]["count"], 150);
        let span = got[0]["last_event"].as_i64().unwrap() - got[0]["first_event"].as_i64().unwrap();
        assert_eq!(span, 149);
        got[0]["last_event"].as_i64().unwrap()
    };
    // the 150 rows are 150 events in the stream
    let big: i64 = scalar(
        &mut m.client,
        &format!("SELECT jsonb_array_length(udm_events({last} - 150, 200) -> 'events')::bigint"),
    );
    assert_eq!(big, 150);
    // without notifications the events are still in the outbox, in order
    m.client
        .batch_execute(&format!(
            "SET udm.notify_changes = off; INSERT INTO \"{s}\".product (name) VALUES ('quiet'); SET udm.notify_changes = on"
        ))
        .unwrap();
    {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(500));
        assert!(
            it.next().unwrap().is_none(),
            "no notification with udm.notify_changes = off"
        );
    }
    let quiet: i64 = scalar(
        &mut m.client,
        &format!("SELECT jsonb_array_length(udm_events({last}, 10) -> 'events')::bigint"),
    );
    assert_eq!(quiet, 1);
    // a transaction that linked a tag is undone by unlinking it
    let p: String = scalar(
        &mut m.client,
        &format!("SELECT id::text FROM \"{s}\".product LIMIT 1"),
    );
    let tag = json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"t\"}')",
    );
    let tag = tag["id"].as_str().unwrap().to_string();
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{p}', '{{\"tags\": [\"{tag}\"]}}')"),
    );
    let tx = history_txid(&mut m, "product", &p);
    let r = json(
        &mut m.client,
        &format!("SELECT udm_rollback_transaction({tx})"),
    );
    assert!(
        r["undone"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["undo"] == "unlink"),
        "{r}"
    );
    let links: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{s}\".product__tags"),
    );
    assert_eq!(links, 0);
    // subscriptions come and go; a missing one is an error
    json(
        &mut m.client,
        "SELECT udm_subscribe('product', ARRAY['DELETE'], 'cleanup')",
    );
    json(
        &mut m.client,
        "SELECT udm_unsubscribe('product', 'cleanup')",
    );
    expect_err(
        &mut m.client,
        "SELECT udm_unsubscribe('product', 'cleanup')",
        "42704",
    );
    // rolling back some fields of a deleted record is refused: it must be restored whole
    m.client
        .batch_execute(&format!("DELETE FROM \"{s}\".product WHERE id = '{p}'"))
        .unwrap();
    expect_err(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{p}', 1, ARRAY['name'])"),
        "55000",
    );
    assert_eq!(json(&mut m.client, "SELECT udm_audit_verify()")["ok"], true);
}

#[test]
fn events_reach_listeners_and_consumers_resume_without_gaps() {
    let mut adm = admin();
    let mut m = member(&mut adm, "auev");
    shop(&mut m);
    let channel: String = scalar(&mut m.client, "SELECT udm_events_channel()");
    // a real LISTEN client, as a workflow worker would run, and a writer that announces
    let mut listener = connect_as(&m.role);
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .unwrap();
    m.client
        .batch_execute("SET udm.notify_changes = on")
        .unwrap();
    // before any subscription or consumer the tenant has no tables for them, and reading works
    let none = json(&mut m.client, "SELECT udm_consume('early', 10)");
    assert_eq!(none["acked"], 0, "{none}");
    expect_err(
        &mut m.client,
        "SELECT udm_unsubscribe('product', 'nobody')",
        "42704",
    );
    json(
        &mut m.client,
        r#"SELECT udm_subscribe('product', ARRAY['UPDATE'], 'expensive-flow', '{"price": {"gt": 100}}')"#,
    );
    // made on first use, readable but not writable by the tenant
    expect_err(
        &mut m.client,
        &format!(
            "INSERT INTO \"{}\"._udm_subscription (entity, target, actions, created_by) VALUES ('product', 'x', '{{}}', 'me')",
            m.tenant
        ),
        "42501",
    );
    json(
        &mut m.client,
        r#"SELECT udm_subscribe('product', ARRAY['INSERT', 'UPDATE'], 'all-flow')"#,
    );
    let id = insert_product(&mut m, "{\"name\": \"A\", \"price\": 10}");
    json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"price\": 500}}')"),
    );
    let s = m.tenant.clone();
    m.client
        .batch_execute(&format!(
            "BEGIN; UPDATE \"{s}\".product SET price = 1; ROLLBACK"
        ))
        .unwrap();
    // (on Citus notifications are sent on the tenant's worker, where no client listens: the
    // README says so; the stream below is what listeners there poll)
    let citus = on_citus(&mut m.client);
    let mut got = Vec::new();
    if !citus {
        let mut it = listener.notifications();
        let mut iter = it.timeout_iter(Duration::from_secs(5));
        while got.len() < 2 {
            match iter.next().unwrap() {
                Some(n) => got.push(serde_json::from_str::<Value>(n.payload()).unwrap()),
                None => break,
            }
        }
        drop(iter);
        drop(it);
        assert_eq!(
            got.len(),
            2,
            "one notification per committed change: {got:?}"
        );
        assert_eq!(got[0]["action"], "INSERT");
        assert_eq!(got[1]["action"], "UPDATE");
        assert_eq!(got[1]["id"], serde_json::json!(id));
    }
    let e = json(&mut m.client, "SELECT udm_events(0, 100)");
    let ev = e["events"].as_array().unwrap();
    assert_eq!(ev.len(), 2, "the rolled-back change is no event: {e}");
    assert_eq!(ev[0]["targets"], serde_json::json!(["all-flow"]));
    assert_eq!(
        ev[1]["targets"],
        serde_json::json!(["all-flow", "expensive-flow"])
    );
    if !citus {
        assert_eq!(ev[1]["event_id"], got[1]["event"]);
    }
    // conditions see the whole record, its id and version too
    json(
        &mut m.client,
        &format!(
            r#"SELECT udm_subscribe('product', ARRAY['UPDATE'], 'this-record-flow', '{{"id": "{id}", "_version": 2}}')"#
        ),
    );
    let e = json(&mut m.client, "SELECT udm_events(0, 100)");
    assert_eq!(
        e["events"][1]["targets"],
        serde_json::json!(["all-flow", "expensive-flow", "this-record-flow"]),
        "{e}"
    );
    json(
        &mut m.client,
        "SELECT udm_unsubscribe('product', 'this-record-flow')",
    );
    // a consumer acknowledges, "crashes", and resumes after what it acknowledged
    let c1 = json(&mut m.client, "SELECT udm_consume('worker', 1)");
    let first = c1["events"][0]["event_id"].as_i64().unwrap();
    json(&mut m.client, &format!("SELECT udm_ack('worker', {first})"));
    let mut other = connect_as(&m.role);
    other.query_one("SELECT udm_use($1)", &[&m.tenant]).unwrap();
    let c2 = json(&mut other, "SELECT udm_consume('worker', 10)");
    let ids: Vec<i64> = c2["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![ev[1]["event_id"].as_i64().unwrap()]);
    expect_err(
        &mut other,
        &format!("SELECT udm_ack('worker', {})", first - 1),
        "55000",
    );
    // (an event id far beyond any given out: on Citus a node's ids start at its group << 48)
    expect_err(
        &mut other,
        &format!("SELECT udm_ack('worker', {})", first + 999_999),
        "22023",
    );
    // an uncommitted writer holds back later events until it finishes
    let mut slow = connect_as(&m.role);
    slow.query_one("SELECT udm_use($1)", &[&m.tenant]).unwrap();
    slow.batch_execute("BEGIN; SELECT udm_insert('product', '{\"name\": \"slow\"}')")
        .unwrap();
    json(
        &mut m.client,
        "SELECT udm_insert('product', '{\"name\": \"fast\"}')",
    );
    let during = json(&mut other, &format!("SELECT udm_events({}, 10)", ids[0]));
    assert_eq!(
        during["events"].as_array().unwrap().len(),
        0,
        "nothing passes an open writer: {during}"
    );
    slow.batch_execute("COMMIT").unwrap();
    let after = json(&mut other, &format!("SELECT udm_events({}, 10)", ids[0]));
    let names: Vec<i64> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{after}");
    assert!(names[0] < names[1]);
    // bad input
    expect_err(
        &mut m.client,
        "SELECT udm_subscribe('product', ARRAY['EXPLODE'], 'x')",
        "22023",
    );
    expect_err(
        &mut m.client,
        r#"SELECT udm_subscribe('product', ARRAY['UPDATE'], 'x', '{"nope": 1}')"#,
        "42703",
    );
    expect_err(
        &mut m.client,
        "SELECT udm_subscribe('ghost', ARRAY['UPDATE'], 'x')",
        "42P01",
    );
    expect_err(&mut m.client, "SELECT udm_events(0, 0)", "54000");
}

/// The images are written in jsonb's binary format by udm itself: they must be exactly what
/// PostgreSQL's `to_jsonb` makes of the row, for every field type, nulls, special numbers,
/// infinite dates and json scalars included.
#[test]
fn images_equal_to_jsonb_for_every_field_type() {
    let mut adm = admin();
    let mut m = member(&mut adm, "img");
    every_field_type(&mut m);
    let s = m.tenant.clone();
    let rows = m
        .client
        .query(
            &format!(
                r#"SELECT a.new_data::text, (to_jsonb(e) - 'id' - '_version' - '_audit_ptr')::text,
                          a.new_data = to_jsonb(e) - 'id' - '_version' - '_audit_ptr', a.action
                   FROM "{s}"._udm_audit a JOIN "{s}".every e ON e.id = a.record_id
                   WHERE a.entity = 'every'
                     AND a.audit_id IN (SELECT max(audit_id) FROM "{s}"._udm_audit GROUP BY record_id)"#
            ),
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        let (ours, theirs): (String, String) = (r.get(0), r.get(1));
        assert_eq!(ours, theirs, "image of a {} row", r.get::<_, String>(3));
        assert!(r.get::<_, bool>(2));
    }
    // the images are well-formed jsonb all the way down: every path can be walked
    let paths: i64 = scalar(
        &mut m.client,
        &format!(
            r#"SELECT count(*) FROM "{s}"._udm_audit a, jsonb_path_query(a.new_data, 'strict $.**') p
               WHERE a.entity = 'every' AND p IS NOT NULL"#
        ),
    );
    assert!(paths > 50, "{paths}");
    // the point read builds its rows the same way, in the session's time zone of the moment
    // (timestamps are rendered once per value and zone)
    for zone in ["UTC", "Asia/Kolkata", "America/St_Johns"] {
        m.client
            .batch_execute(&format!("SET TIME ZONE '{zone}'"))
            .unwrap();
        // (the rows are read first, then each through udm_get: on Citus a udm call with a
        // sub-select or a join of a tenant table runs whole on the tenant's worker, where udm
        // refuses it)
        let rows = m
            .client
            .query(
                &format!(
                    r#"SELECT e.id::text, (to_jsonb(e) - 'ref' - '_audit_ptr')::text FROM "{s}".every e"#
                ),
                &[],
            )
            .unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            let ours: String = scalar(
                &mut m.client,
                &format!(
                    "SELECT (udm_get('every', '{}') - 'ref')::text",
                    r.get::<_, String>(0)
                ),
            );
            assert_eq!(ours, r.get::<_, String>(1), "in {zone}");
        }
        // and so do query pages: their records, and the next page's cursor (made from the
        // last record's keys) that reaches the rest
        let ours: String = scalar(
            &mut m.client,
            r#"SELECT (udm_query('every', '{"sort": ["an"], "limit": 3}') -> 'rows')::text"#,
        );
        let theirs: String = scalar(
            &mut m.client,
            &format!(
                r#"SELECT jsonb_agg(x.j ORDER BY x.an)::text FROM (SELECT to_jsonb(e) - '_audit_ptr' AS j, e.an FROM "{s}".every e ORDER BY e.an LIMIT 3) x"#
            ),
        );
        assert_eq!(ours, theirs, "query rows in {zone}");
        // every row once, whatever the sort: cursors carry numbers exactly (a decimal of 29
        // digits), NaN and the infinities, and timestamps in the zone of the session
        for sort in ["ts", "-dt", "d", "-d", "f", "-f", "t", "cur"] {
            let mut seen = Vec::new();
            let mut cursor = Value::Null;
            loop {
                let mut spec = json!({"columns": ["an"], "sort": [sort], "limit": 1});
                if !cursor.is_null() {
                    spec["cursor"] = cursor.clone();
                }
                let page = json(
                    &mut m.client,
                    &format!("SELECT udm_query('every', {})", lit(&spec.to_string())),
                );
                seen.extend(
                    page["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["an"].clone()),
                );
                cursor = page["next_cursor"].clone();
                if cursor.is_null() {
                    break;
                }
                assert!(seen.len() <= 4, "sort {sort} in {zone}: {seen:?}");
            }
            let mut distinct = seen.clone();
            distinct.sort_by_key(|v| v.as_i64());
            distinct.dedup();
            assert_eq!(
                (seen.len(), distinct.len()),
                (4, 4),
                "sort {sort} in {zone}: {seen:?}"
            );
        }
    }
}

/// Chains stay linked when writers wait on each other's row locks (the waiting writer reads the
/// head with a fresh snapshot after the first commits), across savepoints rolled back, and
/// across statements big enough to be written in several flushes.
#[test]
fn chains_hold_under_waiting_writers_savepoints_and_big_statements() {
    let mut adm = admin();
    let mut m = member(&mut adm, "auch");
    shop(&mut m);
    let s = m.tenant.clone();
    let id = insert_product(&mut m, "{\"name\": \"A\", \"price\": 1}");
    let tenant_of = |c: &mut postgres::Client| {
        c.batch_execute(&format!("SELECT udm_use('{s}')")).unwrap();
    };
    // writer 1 holds the row; writer 2 waits for it, then writes on top of it
    let mut w1 = connect_as(&m.role);
    let mut w2 = connect_as(&m.role);
    tenant_of(&mut w1);
    tenant_of(&mut w2);
    w1.batch_execute(&format!(
        "BEGIN; UPDATE \"{s}\".product SET price = 2 WHERE id = '{id}'"
    ))
    .unwrap();
    let sql = format!("UPDATE \"{s}\".product SET price = price + 10 WHERE id = '{id}'");
    let waiter = std::thread::spawn(move || {
        w2.batch_execute(&sql).unwrap();
        w2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "writer 2 waits for writer 1's row lock"
    );
    w1.batch_execute("COMMIT").unwrap();
    waiter.join().unwrap();
    let linked: bool = scalar(
        &mut m.client,
        &format!(
            "SELECT b.prev_hash = a.hash FROM \"{s}\"._udm_audit a, \"{s}\"._udm_audit b \
             WHERE a.record_id = '{id}' AND a.record_version = 2 AND b.record_id = '{id}' AND b.record_version = 3"
        ),
    );
    assert!(
        linked,
        "the waiting writer's row chains to the one it waited for"
    );
    // a savepoint rolled back leaves no row, and the next change links to the last kept one
    m.client
        .batch_execute(&format!(
            "BEGIN; UPDATE \"{s}\".product SET price = 20 WHERE id = '{id}'; SAVEPOINT a; \
             UPDATE \"{s}\".product SET price = 21 WHERE id = '{id}'; ROLLBACK TO SAVEPOINT a; \
             UPDATE \"{s}\".product SET price = 22 WHERE id = '{id}'; COMMIT"
        ))
        .unwrap();
    let versions: Vec<i32> = column(&mut m.client, &format!("SELECT record_version FROM \"{s}\"._udm_audit WHERE record_id = '{id}' ORDER BY audit_id"));
    assert_eq!(
        versions,
        vec![1, 2, 3, 4, 5],
        "sequential, the rolled-back one gone"
    );
    // 12,000 rows inserted and then updated in one transaction: several flushes per statement
    m.client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO \"{s}\".product (name, price) SELECT 'bulk ' || i, i FROM generate_series(1, 12000) i; \
             UPDATE \"{s}\".product SET price = price + 1 WHERE name LIKE 'bulk %'; COMMIT"
        ))
        .unwrap();
    let n: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{s}\"._udm_audit WHERE new_data->>'name' LIKE 'bulk %'"),
    );
    assert_eq!(n, 24_000);
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["rows_checked"].as_i64().unwrap() >= 24_005, "{v}");
}

/// Every write is refused, whole, while the audit log is damaged: an ERROR names what is
/// missing, nothing is written unaudited, and writes work again once it is repaired.
#[test]
fn writes_are_refused_while_the_audit_log_is_damaged() {
    if batched() {
        return;
    }
    let mut adm = admin();
    let mut m = member(&mut adm, "audmg");
    shop(&mut m);
    let s = m.tenant.clone();
    adm.batch_execute(&format!(
        "ALTER INDEX \"{s}\"._udm_audit__record__idx RENAME TO damaged"
    ))
    .unwrap();
    // a new session: nothing of the log is cached yet
    let mut w = connect_as(&m.role);
    w.batch_execute(&format!("SELECT udm_use('{s}')")).unwrap();
    let msg = expect_err(
        &mut w,
        &format!("INSERT INTO \"{s}\".product (name) VALUES ('unaudited')"),
        "XX000",
    );
    assert!(
        msg.contains(&s) && msg.contains("_udm_audit__record__idx"),
        "{msg}"
    );
    let written: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{s}\".product WHERE name = 'unaudited'"),
    );
    assert_eq!(written, 0, "the write is rolled back with its audit");
    adm.batch_execute(&format!(
        "ALTER INDEX \"{s}\".damaged RENAME TO _udm_audit__record__idx"
    ))
    .unwrap();
    let mut w = connect_as(&m.role);
    w.batch_execute(&format!(
        "SELECT udm_use('{s}'); INSERT INTO \"{s}\".product (name) VALUES ('audited')"
    ))
    .unwrap();
    assert_eq!(count(&mut m, "new_data->>'name' = 'audited'"), 1);
    // a session that has the log cached: the key made again under its name is used at once,
    // and the key missing is refused with the same ERROR (not a failure to open a stale index)
    // one statement per command: Citus sends a command's DDL to the workers as it is, and refuses
    // several in one
    adm.batch_execute(&format!(
        "ALTER TABLE \"{s}\"._udm_audit DROP CONSTRAINT _udm_audit__record__idx"
    ))
    .unwrap();
    adm.batch_execute(&format!(
        "ALTER TABLE \"{s}\"._udm_audit ADD CONSTRAINT _udm_audit__record__idx PRIMARY KEY (record_id, audit_id)"
    ))
    .unwrap();
    w.batch_execute(&format!(
        "UPDATE \"{s}\".product SET name = 'again' WHERE name = 'audited'"
    ))
    .unwrap();
    assert_eq!(count(&mut m, "new_data->>'name' = 'again'"), 1);
    adm.batch_execute(&format!(
        "ALTER INDEX \"{s}\"._udm_audit__record__idx RENAME TO damaged"
    ))
    .unwrap();
    let msg = expect_err(
        &mut w,
        &format!("UPDATE \"{s}\".product SET name = 'lost' WHERE name = 'again'"),
        "XX000",
    );
    assert!(
        msg.contains(&s) && msg.contains("_udm_audit__record__idx"),
        "{msg}"
    );
    adm.batch_execute(&format!(
        "ALTER INDEX \"{s}\".damaged RENAME TO _udm_audit__record__idx"
    ))
    .unwrap();
    w.batch_execute(&format!(
        "UPDATE \"{s}\".product SET name = 'back' WHERE name = 'again'"
    ))
    .unwrap();
    assert_eq!(count(&mut m, "new_data->>'name' = 'back'"), 1);
    assert_eq!(json(&mut m.client, "SELECT udm_audit_verify()")["ok"], true);
}
