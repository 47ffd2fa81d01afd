//! Changing definitions at runtime: versions, soft removal, type changes, lock timeouts,
//! atomicity and cache invalidation across sessions.

use std::thread;
use std::time::{Duration, Instant};
use udm_tests::*;

fn product(m: &mut Member) {
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('product', '{"label": "Product", "fields": [
            {"name": "name", "type": "text", "required": true, "max_length": 200},
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
            {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
            {"name": "sample_date", "type": "date"},
            {"name": "release_date", "type": "date"}],
          "rules": [{"name": "sample_before_release", "check": "sample_date <= release_date",
                     "message": "sample date must not be after release date"}]}')"#,
    );
}

fn filenode(c: &mut postgres::Client, t: &str) -> u32 {
    scalar::<postgres::types::Oid>(
        c,
        &format!("SELECT pg_relation_filenode('\"{t}\".product')"),
    )
}

#[test]
fn add_field_with_constant_default_does_not_rewrite() {
    let mut adm = admin();
    let mut m = member(&mut adm, "cadd");
    product(&mut m);
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!("INSERT INTO \"{t}\".product (name, price) SELECT 'p' || i, i FROM generate_series(1, 2000) i"))
        .unwrap();
    let before = filenode(&mut adm, &t);
    let d = json(&mut m.client, "SELECT udm_add_field('product', '{\"name\": \"stock\", \"type\": \"integer\", \"min\": 0, \"default\": 5, \"required\": true}')");
    assert_eq!(d["version"], 2);
    assert_eq!(filenode(&mut adm, &t), before, "no table rewrite");
    let (n, s): (i64, i64) = {
        let r = m
            .client
            .query_one(
                &format!("SELECT count(*), sum(stock)::bigint FROM \"{t}\".product"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((n, s), (2000, 10_000), "existing rows read the default");
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE \"{t}\".product SET stock = -1 WHERE name = 'p1'"),
        "23514",
    );
    assert!(msg.contains("product.stock must be at least 0"), "{msg}");
    // a default that breaks the field's own rule is refused, and nothing changes
    let msg = expect_err(&mut m.client, "SELECT udm_add_field('product', '{\"name\": \"bad\", \"type\": \"integer\", \"min\": 10, \"default\": 5}')", "23514");
    assert!(
        msg.contains("the default of field \"bad\" breaks a rule")
            && msg.contains("product.bad must be at least 10"),
        "{msg}"
    );
    let v: i32 = scalar(
        &mut m.client,
        "SELECT (udm_describe('product')->>'version')::int",
    );
    assert_eq!(v, 2);
    // a required field without default cannot be added to a table with rows
    let msg = expect_err(&mut m.client, "SELECT udm_add_field('product', '{\"name\": \"sku\", \"type\": \"text\", \"required\": true}')", "23502");
    assert!(
        msg.contains("it has records and the field has no default"),
        "{msg}"
    );
}

#[test]
fn alter_field_renames_relabels_and_changes_rules() {
    let mut adm = admin();
    let mut m = member(&mut adm, "calter");
    product(&mut m);
    let t = m.tenant.clone();
    m.client.batch_execute(&format!("INSERT INTO \"{t}\".product (name, price, sample_date, release_date) VALUES ('a', 1, '2025-01-01', '2025-02-01')")).unwrap();
    let d = json(&mut m.client, "SELECT udm_alter_field('product', 'sample_date', '{\"name\": \"sampled_on\", \"label\": \"Sampled on\"}')");
    assert_eq!(
        d["rules"][0]["check"], "sampled_on <= release_date",
        "rules follow the rename"
    );
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE \"{t}\".product SET sampled_on = '2026-01-01'"),
        "23514",
    );
    assert!(
        msg.contains("sample date must not be after release date"),
        "{msg}"
    );
    // tighten a rule: existing data is checked
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('product', 'name', '{\"min_length\": 3}')",
        "23514",
    );
    assert!(
        msg.contains("product.name must have at least 3 characters"),
        "{msg}"
    );
    let d = json(&mut m.client, "SELECT udm_alter_field('product', 'name', '{\"max_length\": null, \"min_length\": 1, \"default\": \"unnamed\"}')");
    assert!(d["fields"][0].get("max_length").is_none());
    m.client
        .batch_execute(&format!("INSERT INTO \"{t}\".product (price) VALUES (2)"))
        .unwrap();
    let n: String = scalar(
        &mut m.client,
        &format!("SELECT name FROM \"{t}\".product WHERE price = 2"),
    );
    assert_eq!(n, "unnamed");
    // unknown field / option, renaming onto another field
    expect_err(
        &mut m.client,
        "SELECT udm_alter_field('product', 'nope', '{\"label\": \"x\"}')",
        "42703",
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('product', 'name', '{\"colour\": 1}')",
        "22023",
    );
    assert!(msg.contains("unknown option \"colour\""), "{msg}");
    expect_err(
        &mut m.client,
        "SELECT udm_alter_field('product', 'name', '{\"name\": \"price\"}')",
        "42701",
    );
    // optional -> required is checked against the data
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name) VALUES ('no price')"
        ))
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('product', 'price', '{\"required\": true}')",
        "23502",
    );
    assert!(msg.contains("1 record(s) have no value"), "{msg}");
    // once required, plain inserts without it are refused in the words of the field, also by
    // a session that wrote to the table before the change (its stamp trigger plan is stale)
    let mut other = connect_as(&m.role);
    other
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name, price) VALUES ('warm', 1)"
        ))
        .unwrap();
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET price = 2 WHERE price IS NULL"
        ))
        .unwrap();
    json(
        &mut m.client,
        "SELECT udm_alter_field('product', 'price', '{\"required\": true}')",
    );
    for c in [&mut m.client, &mut other] {
        let msg = expect_err(
            c,
            &format!("INSERT INTO \"{t}\".product (name) VALUES ('no price')"),
            "23502",
        );
        assert!(msg.contains("product.price is required"), "{msg}");
    }
}

#[test]
fn type_changes_convert_safely_or_are_refused() {
    let mut adm = admin();
    let mut m = member(&mut adm, "ctype");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('item', '{"fields": [{"name": "qty", "type": "integer"}, {"name": "code", "type": "text"},
            {"name": "amount", "type": "decimal"}, {"name": "meta", "type": "json"}]}')"#,
    );
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".item (qty, code, amount) VALUES (5, '42', 1.5), (7, 'abc', 2)"
        ))
        .unwrap();
    // widening
    let d = json(
        &mut m.client,
        "SELECT udm_alter_field('item', 'qty', '{\"type\": \"bigint\"}')",
    );
    assert_eq!(d["fields"][0]["pg_type"], "bigint");
    // text -> integer: 'abc' does not convert
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('item', 'code', '{\"type\": \"integer\"}')",
        "42804",
    );
    assert!(
        msg.contains("cannot change field \"code\" of entity \"item\" from text to integer"),
        "{msg}"
    );
    // decimal -> integer would round 1.5
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('item', 'amount', '{\"type\": \"integer\"}')",
        "42804",
    );
    assert!(
        msg.contains("the value \"1.5\" would not convert unchanged"),
        "{msg}"
    );
    // json -> integer is refused outright
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('item', 'meta', '{\"type\": \"integer\"}')",
        "42804",
    );
    assert!(msg.contains("json converts only to text"), "{msg}");
    // once the data converts, it works
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".item SET code = '7' WHERE code = 'abc'"
        ))
        .unwrap();
    let d = json(
        &mut m.client,
        "SELECT udm_alter_field('item', 'code', '{\"type\": \"integer\", \"min\": 0}')",
    );
    assert_eq!(d["fields"][1]["pg_type"], "integer");
    let s: i64 = scalar(
        &mut m.client,
        &format!("SELECT sum(code)::bigint FROM \"{t}\".item"),
    );
    assert_eq!(s, 49);
    // text -> email validates every value
    json(
        &mut m.client,
        "SELECT udm_add_field('item', '{\"name\": \"contact\", \"type\": \"text\"}')",
    );
    m.client
        .batch_execute(&format!("UPDATE \"{t}\".item SET contact = 'nobody'"))
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_alter_field('item', 'contact', '{\"type\": \"email\"}')",
        "23514",
    );
    assert!(
        msg.contains("item.contact must be a valid email address"),
        "{msg}"
    );
    let v: i32 = scalar(
        &mut m.client,
        "SELECT (udm_describe('item')->>'version')::int",
    );
    assert_eq!(v, 4, "failed changes made no version");
}

#[test]
fn remove_restore_and_purge_keep_data_until_purged() {
    let mut adm = admin();
    let mut m = member(&mut adm, "crem");
    product(&mut m);
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name, price) VALUES ('keep me', 12.5)"
        ))
        .unwrap();
    let d = json(&mut m.client, "SELECT udm_remove_field('product', 'price')");
    assert!(d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["name"] != "price"));
    assert_eq!(d["removed_fields"][0]["name"], "price");
    assert_eq!(d["removed_fields"][0]["removed_in_version"], 2);
    // the column is hidden under a udm name, with its data
    let hidden: String = scalar(
        &mut adm,
        &format!("SELECT _removed_f2_price::text FROM \"{t}\".product"),
    );
    assert_eq!(hidden, "12.50");
    expect_err(
        &mut m.client,
        &format!("SELECT price FROM \"{t}\".product"),
        "42703",
    );
    // a removed field's name is not free until purged
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_add_field('product', '{\"name\": \"price\", \"type\": \"text\"}')",
        "42701",
    );
    assert!(msg.contains("udm_restore_field"), "{msg}");
    // rows can be written without it
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name) VALUES ('new')"
        ))
        .unwrap();
    json(
        &mut m.client,
        "SELECT udm_restore_field('product', 'price')",
    );
    let p: String = scalar(
        &mut m.client,
        &format!("SELECT price::text FROM \"{t}\".product WHERE name = 'keep me'"),
    );
    assert_eq!(p, "12.50");
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE \"{t}\".product SET price = -1"),
        "23514",
    );
    assert!(
        msg.contains("product.price must be at least 0"),
        "rules are back: {msg}"
    );
    // purge needs a removed field
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_purge_field('product', 'price')",
        "55000",
    );
    assert!(msg.contains("remove it first"), "{msg}");
    json(&mut m.client, "SELECT udm_remove_field('product', 'price')");
    json(&mut m.client, "SELECT udm_purge_field('product', 'price')");
    let cols: i64 = scalar(&mut adm, &format!("SELECT count(*) FROM pg_attribute WHERE attrelid = '\"{t}\".product'::regclass AND attname LIKE '%price%' AND NOT attisdropped"));
    assert_eq!(cols, 0);
    // fields used by rules cannot be removed
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_remove_field('product', 'sample_date')",
        "2BP01",
    );
    assert!(msg.contains("rule \"sample_before_release\""), "{msg}");
    // required fields come back only when every row has a value
    json(&mut m.client, "SELECT udm_remove_field('product', 'name')");
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (status) VALUES ('draft')"
        ))
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_restore_field('product', 'name')",
        "23502",
    );
    assert!(
        msg.contains("cannot be required: 1 record(s) have no value"),
        "{msg}"
    );
}

#[test]
fn drop_restore_and_purge_entity() {
    let mut adm = admin();
    let mut m = member(&mut adm, "cdrop");
    product(&mut m);
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!("INSERT INTO \"{t}\".product (name) VALUES ('x')"))
        .unwrap();
    let d = json(&mut m.client, "SELECT udm_drop_entity('product')");
    assert_eq!(d["status"], "dropped");
    expect_err(
        &mut m.client,
        &format!("SELECT * FROM \"{t}\".product"),
        "42501",
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_add_field('product', '{\"name\": \"x\", \"type\": \"text\"}')",
        "55000",
    );
    assert!(msg.contains("was dropped"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_define_entity('product', '{}')",
        "42P07",
    );
    assert!(msg.contains("udm_restore_entity"), "{msg}");
    json(&mut m.client, "SELECT udm_restore_entity('product')");
    let n: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\".product"),
    );
    assert_eq!(n, 1, "data survived the soft drop");
    json(&mut m.client, "SELECT udm_drop_entity('product')");
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_purge_entity('product', 'prod')",
        "22023",
    );
    assert!(msg.contains("confirm must repeat"), "{msg}");
    json(
        &mut m.client,
        "SELECT udm_purge_entity('product', 'product')",
    );
    let exists: bool = scalar(
        &mut adm,
        &format!("SELECT to_regclass('\"{t}\".product') IS NOT NULL"),
    );
    assert!(!exists);
    // history survives the purge, and the name is free again
    let versions: i64 = scalar(
        &mut m.client,
        "SELECT count(*) FROM udm_entity_history('product')",
    );
    assert_eq!(versions, 5);
    product(&mut m);
}

#[test]
fn every_change_is_a_version_with_snapshot_and_change() {
    let mut adm = admin();
    let mut m = member(&mut adm, "cver");
    product(&mut m);
    json(
        &mut m.client,
        "SELECT udm_add_field('product', '{\"name\": \"stock\", \"type\": \"integer\"}')",
    );
    json(
        &mut m.client,
        "SELECT udm_add_index('product', ARRAY['status', 'stock'])",
    );
    json(&mut m.client, "SELECT udm_add_rule('product', '{\"name\": \"stock_positive\", \"check\": \"stock >= 0\"}')");
    json(
        &mut m.client,
        "SELECT udm_drop_rule('product', 'stock_positive')",
    );
    let rows = m
        .client
        .query("SELECT version, change->>'op', jsonb_array_length(definition->'fields') FROM udm_entity_history('product')", &[])
        .unwrap();
    let got: Vec<(i32, String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "define_entity".into(), 5),
            (2, "add_field".into(), 6),
            (3, "add_index".into(), 6),
            (4, "add_rule".into(), 6),
            (5, "drop_rule".into(), 6),
        ]
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_add_index('product', ARRAY['status', 'stock'])",
        "42710",
    );
    assert!(msg.contains("already has an index"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_drop_index('product', 'nope')",
        "42704",
    );
    assert!(
        msg.contains("product__status__stock__idx"),
        "hint lists the indexes: {msg}"
    );
    json(
        &mut m.client,
        "SELECT udm_add_index('product', ARRAY['name'], true)",
    );
    let msg = expect_err(
        &mut m.client,
        &format!(
            "INSERT INTO \"{0}\".product (name) VALUES ('dup'), ('dup')",
            m.tenant
        ),
        "23505",
    );
    assert!(msg.contains("product__name__key"), "{msg}");
}

#[test]
fn ddl_gives_up_after_the_lock_timeout_instead_of_queueing() {
    let mut adm = admin();
    let mut m = member(&mut adm, "clock");
    product(&mut m);
    let t = m.tenant.clone();
    let mut holder = connect_as(&m.role);
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute(&format!("SELECT * FROM \"{t}\".product"))
        .unwrap(); // holds ACCESS SHARE
    m.client
        .batch_execute("SET udm.ddl_lock_timeout = 300")
        .unwrap();
    let start = Instant::now();
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_add_field('product', '{\"name\": \"x\", \"type\": \"text\"}')",
        "55P03",
    );
    let waited = start.elapsed();
    assert!(
        msg.contains("entity \"product\" is busy") && msg.contains("300 ms"),
        "{msg}"
    );
    assert!(waited < Duration::from_secs(3), "gave up after {waited:?}");
    tx.rollback().unwrap();
    // readers were not stuck behind it, and the change works once the lock is gone
    json(
        &mut m.client,
        "SELECT udm_add_field('product', '{\"name\": \"x\", \"type\": \"text\"}')",
    );
}

#[test]
fn concurrent_changes_serialise_and_other_sessions_see_them() {
    let mut adm = admin();
    let mut m = member(&mut adm, "cconc");
    product(&mut m);
    let role = m.role.clone();
    let tenant = m.tenant.clone();
    // another session caches the definition
    let mut other = connect_as(&role);
    json(&mut other, &format!("SELECT udm_use({})", lit(&tenant)));
    let before = json(&mut other, "SELECT udm_describe('product')");
    assert_eq!(before["version"], 1);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (role, tenant) = (role.clone(), tenant.clone());
            thread::spawn(move || {
                let mut c = connect_as(&role);
                json(&mut c, &format!("SELECT udm_use({})", lit(&tenant)));
                json(&mut c, &format!("SELECT udm_add_field('product', '{{\"name\": \"extra{i}\", \"type\": \"integer\"}}')"))
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let after = json(&mut other, "SELECT udm_describe('product')");
    assert_eq!(
        after["version"], 5,
        "four changes, four versions, none lost"
    );
    assert_eq!(after["fields"].as_array().unwrap().len(), 9);
    let versions: Vec<i32> = other
        .query("SELECT version FROM udm_entity_history('product')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    // a change that touches only the catalog (a label) reaches the other session too
    json(
        &mut m.client,
        "SELECT udm_alter_field('product', 'price', '{\"label\": \"Unit price\"}')",
    );
    let seen = json(&mut other, "SELECT udm_describe('product')");
    assert_eq!(seen["version"], 6);
    assert_eq!(seen["fields"][1]["label"], "Unit price");
}

#[test]
fn a_rolled_back_change_leaves_table_and_catalog_untouched() {
    let mut adm = admin();
    let mut m = member(&mut adm, "crb");
    product(&mut m);
    let t = m.tenant.clone();
    {
        let mut tx = m.client.transaction().unwrap();
        tx.query_one(
            "SELECT udm_add_field('product', '{\"name\": \"tmp\", \"type\": \"text\"}')",
            &[],
        )
        .unwrap();
        let v: Value = tx
            .query_one("SELECT udm_describe('product')", &[])
            .unwrap()
            .get(0);
        assert_eq!(v["version"], 2, "visible inside the transaction");
        tx.rollback().unwrap();
    }
    let v = json(&mut m.client, "SELECT udm_describe('product')");
    assert_eq!(
        v["version"], 1,
        "the session's cache forgot the rolled back change"
    );
    let col: i64 = scalar(&mut adm, &format!("SELECT count(*) FROM pg_attribute WHERE attrelid = '\"{t}\".product'::regclass AND attname = 'tmp'"));
    assert_eq!(col, 0);
    // inside a savepoint that fails, too
    m.client
        .batch_execute(
            "DO $$ BEGIN
               BEGIN
                 PERFORM udm_add_field('product', '{\"name\": \"tmp2\", \"type\": \"text\"}');
                 PERFORM udm_add_field('product', '{\"name\": \"tmp2\", \"type\": \"text\"}');
               EXCEPTION WHEN duplicate_column THEN NULL;
               END;
             END $$",
        )
        .unwrap();
    let v = json(&mut m.client, "SELECT udm_describe('product')");
    assert_eq!(v["version"], 1);
    assert!(v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["name"] != "tmp2"));
}

#[test]
fn concurrent_definitions_of_one_name_leave_one_winner() {
    let mut adm = admin();
    let m = member(&mut adm, "cdef");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (role, tenant) = (m.role.clone(), m.tenant.clone());
            thread::spawn(move || {
                let mut c = connect_as(&role);
                json(&mut c, &format!("SELECT udm_use({})", lit(&tenant)));
                c.batch_execute("SELECT udm_define_entity('same', '{\"fields\": [{\"name\": \"n\", \"type\": \"integer\"}]}')")
                    .map_err(|e| sqlstate(&e))
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|code| code == "42P07"),
        "{results:?}"
    );
    let mut c = connect_as(&m.role);
    json(&mut c, &format!("SELECT udm_use({})", lit(&m.tenant)));
    let versions: i64 = scalar(&mut c, "SELECT count(*) FROM udm_entity_history('same')");
    assert_eq!(versions, 1);
}
