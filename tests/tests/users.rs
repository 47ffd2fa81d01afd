//! The user lifecycle, and users without fan-in: nothing of a tenant references the global users
//! table; each tenant knows its users in its own `_udm_user`, records who did what by user id,
//! and shows emails to people. Renaming, deleting and erasing a user touch only the tenants that
//! know them; erasure keeps a reference that names nobody.

use postgres::Client;
use udm_tests::*;

struct Team {
    adm: Client,
    app: String,
    t: String,
    alice: String,
    bob: String,
}

fn user(adm: &mut Client, name: &str) -> String {
    let email = format!("{}@users.test", unique(name));
    json(
        adm,
        &format!(
            "SELECT udm_create_user({}, 'Someone', 'a-long-password')",
            lit(&email)
        ),
    );
    email
}

fn team() -> Team {
    let mut adm = admin();
    let m = member(&mut adm, "usr");
    let alice = user(&mut adm, "alice");
    let bob = user(&mut adm, "bob");
    let mut c = m.client;
    c.batch_execute(
        r#"SELECT udm_define_entity('task', '{"fields": [
             {"name": "title", "type": "text"},
             {"name": "owner", "type": "user", "on_delete": "restrict"},
             {"name": "reviewer", "type": "user", "on_delete": "set_null"}], "lock": "self"}')"#,
    )
    .unwrap();
    json(
        &mut c,
        &format!(
            "SELECT udm_add_member({}, {}, 'admin')",
            lit(&m.tenant),
            lit(&alice)
        ),
    );
    c.query_one("SELECT udm_use($1, $2)", &[&m.tenant, &alice])
        .unwrap();
    json(
        &mut c,
        &format!(
            "SELECT udm_add_member({}, {}, 'editor')",
            lit(&m.tenant),
            lit(&bob)
        ),
    );
    Team {
        adm,
        app: m.role,
        t: m.tenant,
        alice,
        bob,
    }
}

impl Team {
    fn as_user(&self, email: &str) -> Client {
        let mut c = connect_as(&self.app);
        c.query_one("SELECT udm_use($1, $2)", &[&self.t, &email])
            .unwrap();
        c
    }

    fn id(&mut self, email: &str) -> String {
        scalar(
            &mut self.adm,
            &format!(
                "SELECT id::text FROM udm.app_user WHERE email = {}",
                lit(email)
            ),
        )
    }
}

#[test]
fn nothing_of_a_tenant_references_the_global_users_and_attribution_is_by_id() {
    let mut tm = team();
    let t = tm.t.clone();
    let refs: i64 = scalar(
        &mut tm.adm,
        // (on Citus the reference table has Citus's own TRUNCATE trigger, no RI trigger)
        "SELECT (SELECT count(*) FROM pg_constraint WHERE confrelid = 'udm.app_user'::regclass) \
              + (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'udm.app_user'::regclass \
                   AND tgfoid::regproc::text <> 'citus_truncate_trigger')",
    );
    assert_eq!(
        refs, 0,
        "no foreign key (and no RI trigger) on the global users table"
    );
    let (alice, bob) = (tm.alice.clone(), tm.bob.clone());
    let (alice_id, bob_id) = (tm.id(&alice), tm.id(&bob));
    let mut a = tm.as_user(&alice);
    // a user field takes a user the tenant knows, and learns a registered one it did not know
    let carol = user(&mut tm.adm, "carol");
    let carol_id = tm.id(&carol);
    let plan = format!(
        "INSERT INTO \"{t}\".task (title, owner, reviewer) VALUES ('plan', '{alice_id}', '{carol_id}')"
    );
    if on_citus(&mut a) {
        // on Citus the change runs on the tenant's worker, which cannot register the tenant with
        // the user (README): refused, naming the user; a member is known
        let msg = expect_err(&mut a, &plan, "0A000");
        assert!(
            msg.contains(&format!("whom tenant \"{t}\" does not know yet")) && msg.contains(&carol),
            "{msg}"
        );
        tm.adm
            .query_one("SELECT udm_add_member($1, $2, 'viewer')", &[&t, &carol])
            .unwrap();
    }
    // learned in a transaction that rolls back, the user is not known: the next write learns
    // them again (no cache of what the tenant knows outlives the rollback)
    a.batch_execute(&format!("BEGIN; {plan}; ROLLBACK"))
        .unwrap();
    a.batch_execute(&format!(
        "BEGIN; SAVEPOINT s; {plan}; ROLLBACK TO SAVEPOINT s; COMMIT"
    ))
    .unwrap();
    a.batch_execute(&plan).unwrap();
    let known: String = scalar(
        &mut a,
        &format!("SELECT email FROM \"{t}\"._udm_user WHERE id = '{carol_id}'"),
    );
    assert_eq!(known, carol);
    let msg = expect_err(
        &mut a,
        &format!("INSERT INTO \"{t}\".task (title, owner) VALUES ('x', gen_random_uuid())"),
        "23503",
    );
    assert!(
        msg.contains("task.owner refers to user") && msg.contains("does not exist"),
        "{msg}"
    );
    // who did it is recorded by id, and shown by email
    let by: String = scalar(&mut a, &format!("SELECT created_by FROM \"{t}\".task"));
    assert_eq!(by, alice_id);
    let id: String = scalar(&mut a, &format!("SELECT id::text FROM \"{t}\".task"));
    let shown: String = scalar(
        &mut a,
        &format!("SELECT user_id FROM udm_history('task', '{id}') LIMIT 1"),
    );
    assert_eq!(shown, alice);
    let recorded: String = scalar(
        &mut tm.adm,
        &format!("SELECT user_id FROM \"{t}\"._udm_audit WHERE record_id = '{id}'"),
    );
    assert_eq!(recorded, alice_id, "the audit holds the id, not the email");
    // a renamed user: the tenants that know them follow, and history shows the new email
    let renamed = format!("{}@renamed.test", unique("alice"));
    let r = json(
        &mut tm.adm,
        &format!(
            r#"SELECT udm_update_user({}, '{{"email": "{renamed}", "name": "Alice B."}}')"#,
            lit(&alice)
        ),
    );
    assert_eq!(r["tenants"], json!([t]), "{r}");
    let shown: String = scalar(
        &mut a,
        &format!("SELECT user_id FROM udm_history('task', '{id}') LIMIT 1"),
    );
    assert_eq!(shown, renamed);
    let members: Vec<String> = a
        .query("SELECT email FROM udm_members() ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(members.contains(&renamed), "{members:?}");
    // only udm admins change users
    let msg = expect_err(
        &mut a,
        &format!(
            r#"SELECT udm_update_user({}, '{{"name": "Bobby"}}')"#,
            lit(&bob)
        ),
        "42501",
    );
    assert!(msg.contains("not a udm admin"), "{msg}");
    let _ = bob_id;
}

#[test]
fn deleting_a_user_follows_each_user_field_and_takes_memberships_tuples_and_locks() {
    let mut tm = team();
    let t = tm.t.clone();
    let (alice, bob) = (tm.alice.clone(), tm.bob.clone());
    let bob_id = tm.id(&bob);
    let mut a = tm.as_user(&alice);
    let mut b = tm.as_user(&bob);
    a.batch_execute(&format!(
        "INSERT INTO \"{t}\".task (title, owner, reviewer) VALUES ('one', '{bob_id}', '{bob_id}')"
    ))
    .unwrap();
    let task: String = scalar(&mut a, &format!("SELECT id::text FROM \"{t}\".task"));
    json(
        &mut b,
        &format!("SELECT udm_lock_acquire('task', '{task}')"),
    );
    let holder = json(&mut a, &format!("SELECT udm_lock_status('task', '{task}')"));
    assert_eq!(
        holder["holder"],
        json!(bob),
        "holders are shown by email: {holder}"
    );
    // confirm repeats the email; admins only
    expect_err(
        &mut tm.adm,
        &format!("SELECT udm_delete_user({}, 'nope@x.test')", lit(&bob)),
        "22023",
    );
    expect_err(
        &mut a,
        &format!("SELECT udm_delete_user({0}, {0})", lit(&bob)),
        "42501",
    );
    // a restrict user field refuses, naming where, and nothing changes
    let msg = expect_err(
        &mut tm.adm,
        &format!("SELECT udm_delete_user({0}, {0})", lit(&bob)),
        "23503",
    );
    assert!(msg.contains(&format!("tenant \"{t}\"")), "{msg}");
    let still: i64 = scalar(
        &mut tm.adm,
        &format!(
            "SELECT count(*) FROM udm.app_user WHERE email = {}",
            lit(&bob)
        ),
    );
    assert_eq!(still, 1);
    // (the task is locked by bob: he changes it)
    b.batch_execute(&format!("UPDATE \"{t}\".task SET owner = NULL"))
        .unwrap();
    let r = json(
        &mut tm.adm,
        &format!("SELECT udm_delete_user({0}, {0})", lit(&bob)),
    );
    assert_eq!(r["tenants"][0]["member"], json!(true), "{r}");
    // set_null followed; the membership, and the lock (audited), went with the user
    let reviewer: Option<String> = scalar(
        &mut tm.adm,
        &format!("SELECT reviewer::text FROM \"{t}\".task"),
    );
    assert_eq!(reviewer, None);
    let members: i64 = scalar(
        &mut tm.adm,
        &format!("SELECT count(*) FROM \"{t}\"._udm_member WHERE user_id = '{bob_id}'"),
    );
    assert_eq!(members, 0);
    let lock = json(&mut a, &format!("SELECT udm_lock_status('task', '{task}')"));
    assert_eq!(lock["locked"], json!(false), "{lock}");
    let released: i64 = scalar(
        &mut tm.adm,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit WHERE entity = 'task#lock' AND action = 'LOCK_RELEASE'"),
    );
    assert_eq!(released, 1);
    let dir: i64 = scalar(
        &mut tm.adm,
        &format!("SELECT count(*) FROM udm.user_tenant WHERE user_id = '{bob_id}'"),
    );
    assert_eq!(dir, 0);
    // the last admin is not deleted
    let msg = expect_err(
        &mut tm.adm,
        &format!("SELECT udm_delete_user({0}, {0})", lit(&alice)),
        "55000",
    );
    assert!(msg.contains("last admin"), "{msg}");
    let v = json(&mut a, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
}

#[test]
fn erasing_a_user_keeps_a_reference_that_names_nobody() {
    let mut tm = team();
    let t = tm.t.clone();
    let (alice, bob) = (tm.alice.clone(), tm.bob.clone());
    let bob_id = tm.id(&bob);
    let mut b = tm.as_user(&bob);
    b.batch_execute(&format!(
        "INSERT INTO \"{t}\".task (title, owner) VALUES ('bobs', '{bob_id}')"
    ))
    .unwrap();
    let task: String = scalar(&mut b, &format!("SELECT id::text FROM \"{t}\".task"));
    drop(b);
    let r = json(
        &mut tm.adm,
        &format!("SELECT udm_erase_user({0}, {0})", lit(&bob)),
    );
    assert_eq!(r["erased"], json!(bob_id), "{r}");
    // no personal data is left: not in the global users, not in the tenant's, not in records
    // or the audit (they hold the id)
    let found: i64 = scalar(
        &mut tm.adm,
        &format!(
            "SELECT (SELECT count(*) FROM udm.app_user WHERE email = {b}) \
                  + (SELECT count(*) FROM \"{t}\"._udm_user WHERE email = {b}) \
                  + (SELECT count(*) FROM \"{t}\".task WHERE created_by = {b} OR updated_by = {b}) \
                  + (SELECT count(*) FROM \"{t}\"._udm_audit WHERE user_id = {b} OR new_data::text LIKE '%' || {b} || '%')",
            b = lit(&bob)
        ),
    );
    assert_eq!(found, 0, "the email is gone everywhere");
    // the record keeps its owner's id; history shows the id, naming nobody
    let owner: String = scalar(
        &mut tm.adm,
        &format!("SELECT owner::text FROM \"{t}\".task"),
    );
    assert_eq!(owner, bob_id);
    let mut a = tm.as_user(&alice);
    let who: String = scalar(
        &mut a,
        &format!("SELECT user_id FROM udm_history('task', '{task}') LIMIT 1"),
    );
    assert_eq!(who, bob_id);
    let erased: bool = scalar(
        &mut tm.adm,
        &format!("SELECT erased_at IS NOT NULL FROM \"{t}\"._udm_user WHERE id = '{bob_id}'"),
    );
    assert!(erased);
    // the erased user can no longer be selected, nor log in
    expect_err(
        &mut a,
        &format!("SELECT udm_use({}, {})", lit(&t), lit(&bob)),
        "42501",
    );
    let mut a = tm.as_user(&alice);
    let v = json(&mut a, "SELECT udm_audit_verify()");
    assert_eq!(
        v["ok"],
        json!(true),
        "erasure leaves the audit chain whole: {v}"
    );
}
