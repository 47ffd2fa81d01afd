//! The batched audit log (issue 20, `udm.audit_batches`): one log row per chunk of a statement's
//! changes, record pointers on entity rows, and the per-change view `_udm_audit` that everything
//! else reads. The audit suites (audit.rs, links_history.rs, events_race.rs) run a second time on
//! batched tenants (`UDM_TEST_AUDIT_BATCHES=1`); this file checks what is particular to it.

use udm_tests::*;

/// A member of a fresh tenant whose audit log is batched, with a `product` entity.
fn batched(adm: &mut postgres::Client, prefix: &str) -> Member {
    let slug = unique(prefix);
    adm.batch_execute("SET udm.audit_batches = on").unwrap();
    adm.query_one("SELECT udm_create_tenant($1)", &[&slug])
        .unwrap();
    adm.batch_execute("RESET udm.audit_batches").unwrap();
    let role = login_role(adm, &format!("{prefix}_user"));
    grant_tenant(adm, &slug, &role);
    let mut client = connect_as(&role);
    client.query_one("SELECT udm_use($1)", &[&slug]).unwrap();
    json(
        &mut client,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text"},
            {"name": "price", "type": "integer"},
            {"name": "tags", "type": "relation", "target": "product", "many": true}]}')"#,
    );
    Member {
        tenant: slug,
        role,
        client,
    }
}

#[test]
fn a_statement_is_one_log_row_per_thousand_changes_and_the_view_shows_each() {
    let mut adm = admin();
    let mut m = batched(&mut adm, "abt");
    let t = m.tenant.clone();
    let kind: String = scalar(
        &mut adm,
        &format!("SELECT relkind::text FROM pg_class WHERE oid = '\"{t}\"._udm_audit'::regclass"),
    );
    assert_eq!(kind, "v", "_udm_audit is a view over the batched log");
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name, price) SELECT 'p' || i, i FROM generate_series(1, 2500) i"
        ))
        .unwrap();
    let chunks: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit_log"),
    );
    assert_eq!(chunks, 3, "2,500 changes of one statement: three log rows");
    let per_change: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit WHERE action = 'INSERT'"),
    );
    assert_eq!(per_change, 2500);
    // every row points at its own change, and the ids are unique
    let mismatched: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM \"{t}\".product p LEFT JOIN \"{t}\"._udm_audit a \
               ON a.audit_id = p._audit_ptr AND a.record_id = p.id WHERE a.audit_id IS NULL"
        ),
    );
    assert_eq!(mismatched, 0, "each row's pointer is its latest change");
    let distinct: i64 = scalar(
        &mut adm,
        &format!("SELECT count(DISTINCT audit_id) FROM \"{t}\"._udm_audit"),
    );
    assert_eq!(distinct, 2500);
    // an update of every row: the pointers move, each change chained to the insert before it
    m.client
        .batch_execute(&format!("UPDATE \"{t}\".product SET price = price + 1"))
        .unwrap();
    let chained: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM \"{t}\"._udm_audit u JOIN \"{t}\"._udm_audit i \
               ON i.record_id = u.record_id AND i.action = 'INSERT' \
             WHERE u.action = 'UPDATE' AND u.prev_hash = i.hash AND u.changed_fields = '{{price}}'"
        ),
    );
    assert_eq!(chained, 2500);
    let moved: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM \"{t}\".product p JOIN \"{t}\"._udm_audit a \
               ON a.audit_id = p._audit_ptr AND a.action = 'UPDATE' AND a.record_version = 2"
        ),
    );
    assert_eq!(moved, 2500);
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_pointer_written_by_hand_is_replaced_and_history_rollback_and_events_work() {
    let mut adm = admin();
    let mut m = batched(&mut adm, "abh");
    let t = m.tenant.clone();
    let p = json(
        &mut m.client,
        r#"SELECT udm_insert('product', '{"name": "lamp", "price": 10}')"#,
    );
    let id = p["id"].as_str().unwrap().to_string();
    // plain SQL may not choose where a row's chain continues
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET price = 11, _audit_ptr = 5 WHERE id = '{id}'"
        ))
        .unwrap();
    let ptr: i64 = scalar(
        &mut m.client,
        &format!("SELECT _audit_ptr FROM \"{t}\".product WHERE id = '{id}'"),
    );
    assert_ne!(ptr, 5);
    let newest: i64 = scalar(
        &mut m.client,
        &format!("SELECT max(audit_id) FROM \"{t}\"._udm_audit WHERE record_id = '{id}'"),
    );
    assert_eq!(ptr, newest);
    json(
        &mut m.client,
        &format!(r#"SELECT udm_update('product', '{id}', '{{"price": 12}}')"#),
    );
    let versions: String = scalar(
        &mut m.client,
        &format!(
            "SELECT string_agg(version::text || action, ',' ORDER BY event_id) FROM udm_history('product', '{id}')"
        ),
    );
    assert_eq!(versions, "1INSERT,2UPDATE,3UPDATE");
    json(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 1)"),
    );
    let price: i32 = scalar(
        &mut m.client,
        &format!("SELECT price FROM \"{t}\".product WHERE id = '{id}'"),
    );
    assert_eq!(price, 10);
    // a deleted record's chain is found again when it is restored
    json(
        &mut m.client,
        &format!("SELECT udm_delete('product', '{id}')"),
    );
    let head: i64 = scalar(
        &mut adm,
        &format!("SELECT ptr FROM \"{t}\"._udm_audit_heads WHERE record_id = '{id}'"),
    );
    let deleted: i64 = scalar(
        &mut m.client,
        &format!("SELECT audit_id FROM \"{t}\"._udm_audit WHERE record_id = '{id}' AND action = 'DELETE'"),
    );
    assert_eq!(
        head, deleted,
        "a deleted record's newest change is in _udm_audit_heads"
    );
    json(
        &mut m.client,
        &format!("SELECT udm_rollback('product', '{id}', 2)"),
    );
    let restored: i64 = scalar(
        &mut m.client,
        &format!(
            "SELECT count(*) FROM \"{t}\"._udm_audit r JOIN \"{t}\"._udm_audit d \
               ON d.record_id = r.record_id AND d.action = 'DELETE' AND r.prev_hash = d.hash \
             WHERE r.record_id = '{id}' AND r.action = 'ROLLBACK'"
        ),
    );
    assert_eq!(
        restored, 1,
        "the restore continues the deleted record's chain"
    );
    let versions: String = scalar(
        &mut m.client,
        &format!(
            "SELECT string_agg(version::text || action, ',' ORDER BY event_id) FROM udm_history('product', '{id}')"
        ),
    );
    assert_eq!(
        versions, "1INSERT,2UPDATE,3UPDATE,4ROLLBACK,4DELETE,5ROLLBACK",
        "the history walks back over the delete"
    );
    let then: i32 = scalar(
        &mut m.client,
        &format!(
            "SELECT (udm_record_at('product', '{id}', (SELECT changed_at FROM \"{t}\"._udm_audit \
               WHERE record_id = '{id}' AND record_version = 2))->>'price')::int"
        ),
    );
    assert_eq!(then, 11);
    // events: in order, their ids the changes' pointers
    let ev = json(&mut m.client, "SELECT udm_events(0, 100)");
    let ids: Vec<i64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert!(ids.len() >= 6, "{ev}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ev}");
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn tampering_with_the_batched_log_is_found_and_tenants_may_not_write_it() {
    let mut adm = admin();
    let mut m = batched(&mut adm, "abx");
    let t = m.tenant.clone();
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name, price) SELECT 'p' || i, i FROM generate_series(1, 10) i; \
             UPDATE \"{t}\".product SET price = price * 2"
        ))
        .unwrap();
    for sql in [
        format!("UPDATE \"{t}\"._udm_audit_log SET entity = 'x'"),
        format!("DELETE FROM \"{t}\"._udm_audit_log"),
        format!("DELETE FROM \"{t}\"._udm_audit_heads"),
        format!("SELECT * FROM \"{t}\"._udm_audit_log"),
    ] {
        expect_err(&mut m.client, &sql, "42501");
    }
    // a superuser changes an image in place: verify names the record
    adm.batch_execute(&format!(
        "UPDATE \"{t}\"._udm_audit_log SET new_data[3] = new_data[3] || '{{\"price\": 0}}' \
         WHERE first_slot = 0 AND 'INSERT' = ALL(actions)"
    ))
    .unwrap();
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], false, "{v}");
    // a superuser writes past the audit (triggers off): the record's version has no change
    adm.batch_execute(&format!(
        "ALTER TABLE \"{t}\".product DISABLE TRIGGER ALL; \
         UPDATE \"{t}\".product SET _version = 7 WHERE name = 'p4'; \
         ALTER TABLE \"{t}\".product ENABLE TRIGGER ALL"
    ))
    .unwrap();
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    let heads = &v["missing_heads"][0];
    assert_eq!(heads["entity"], "product", "{v}");
    assert_eq!(heads["records"], 1, "{v}");
    assert_eq!(heads["first"]["version"], 7, "{v}");
    assert_eq!(heads["first"]["newest_audited_version"], 2, "{v}");
    // and refusals: setting the layout is for superusers; a copy of the tampered tenant does
    // not verify, so it is not made (a batched tenant moves with its log, chains and pointers)
    expect_err(&mut m.client, "SET udm.audit_batches = on", "42501");
    let err = expect_err(
        &mut adm,
        &format!("SELECT udm_clone_tenant('{t}', '{t}c', true)"),
        "22P04",
    );
    assert!(err.contains("its audit log does not verify"), "{err}");
    let made: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{t}c'"),
    );
    assert_eq!(made, 0);
}

/// `udm_record_at` walks a record's chain back only to the newest change not after the time
/// asked, and answers as the per-change log does at every version, before the record existed and
/// after its delete; a chain a superuser bent into a cycle still ends (history and
/// `udm_record_at` answer, verify reports it).
#[test]
fn record_at_answers_at_every_version_and_a_chain_bent_into_a_cycle_ends() {
    let mut adm = admin();
    let mut m = batched(&mut adm, "abr");
    let t = m.tenant.clone();
    let p = json(
        &mut m.client,
        r#"SELECT udm_insert('product', '{"name": "clock", "price": 1}')"#,
    );
    let id = p["id"].as_str().unwrap().to_string();
    // one transaction per version: each change has a time of its own
    for v in 2..=12 {
        json(
            &mut m.client,
            &format!(r#"SELECT udm_update('product', '{id}', '{{"price": {v}}}')"#),
        );
    }
    let at = |v: i32| {
        format!(
            "(SELECT changed_at FROM \"{t}\"._udm_audit WHERE record_id = '{id}' AND record_version = {v})"
        )
    };
    let price = |c: &mut postgres::Client, when: &str| -> Option<i32> {
        c.query_one(
            &format!("SELECT (udm_record_at('product', '{id}', {when})->>'price')::int"),
            &[],
        )
        .unwrap()
        .get(0)
    };
    for v in 1..=12 {
        assert_eq!(price(&mut m.client, &at(v)), Some(v), "version {v}");
        assert_eq!(
            price(
                &mut m.client,
                &format!("{} + interval '1 microsecond'", at(v))
            ),
            Some(v),
            "just after version {v}"
        );
    }
    assert_eq!(
        price(
            &mut m.client,
            &format!("{} - interval '1 microsecond'", at(1))
        ),
        None,
        "before the insert"
    );
    json(
        &mut m.client,
        &format!("SELECT udm_delete('product', '{id}')"),
    );
    assert_eq!(price(&mut m.client, "now()"), None, "after the delete");
    assert_eq!(
        price(&mut m.client, &at(5)),
        Some(5),
        "a deleted record's past"
    );
    // a superuser points the first change back at the newest (the delete): a cycle
    let newest: i64 = scalar(
        &mut m.client,
        &format!("SELECT max(audit_id) FROM \"{t}\"._udm_audit WHERE record_id = '{id}'"),
    );
    let first: i64 = scalar(
        &mut m.client,
        &format!(
            "SELECT audit_id FROM \"{t}\"._udm_audit WHERE record_id = '{id}' AND record_version = 1"
        ),
    );
    let bent = adm
        .execute(
            &format!(
                "UPDATE \"{t}\"._udm_audit_log \
                 SET prev_ptrs = overlay(prev_ptrs PLACING int8send($1) FROM ($2::int - first_slot) * 8 + 1) \
                 WHERE batch_id = $3 AND first_slot <= $2 AND first_slot + cardinality(record_ids) > $2"
            ),
            &[&newest, &((first % 1024) as i32), &(first / 1024)],
        )
        .unwrap();
    assert_eq!(bent, 1);
    let versions: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM udm_history('product', '{id}')"),
    );
    assert_eq!(versions, 13, "every change once, the cycle walked once");
    assert_eq!(price(&mut m.client, &at(3)), Some(3));
    // the hashes still chain: it is the pointer that verify finds
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["audit_id"], first, "{v}");
    assert!(
        v["first_broken"]["problem"]
            .as_str()
            .unwrap()
            .contains("points back"),
        "{v}"
    );
}

/// A batched tenant made by a build whose view had no `prev_ptr` (verify reads it): verify
/// refuses, naming the tenant and the call that mends it, and `udm.upgrade_tenant` gives the view this version's columns,
/// the access filter kept.
#[test]
fn upgrade_tenant_gives_an_older_batched_view_its_columns() {
    let mut adm = admin();
    let mut m = batched(&mut adm, "abu");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        r#"SELECT udm_insert('product', '{"name": "cup", "price": 3}')"#,
    );
    // the view as the previous build made it: its columns without prev_ptr
    let role = tenant_role(&mut adm, &t);
    adm.batch_execute(&format!(
        "ALTER VIEW \"{t}\"._udm_audit RENAME TO _udm_audit_now; \
         CREATE VIEW \"{t}\"._udm_audit WITH (security_barrier) AS \
           SELECT audit_id, entity, record_id, action, record_version, entity_version, old_data, \
                  new_data, changed_fields, user_id, db_role, txid, changed_at, prev_hash, hash, batch_id \
           FROM \"{t}\"._udm_audit_now; \
         GRANT SELECT ON \"{t}\"._udm_audit TO \"{role}\""
    ))
    .unwrap();
    let msg = expect_err(&mut m.client, "SELECT udm_audit_verify()", "55000");
    assert!(
        msg.contains(&t) && msg.contains("udm.upgrade_tenant"),
        "{msg}"
    );
    json(&mut adm, &format!("SELECT udm.upgrade_tenant('{t}')"));
    let v = json(&mut m.client, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["rows_checked"], 1, "{v}");
}
