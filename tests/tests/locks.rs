//! Write locks: acquire, heartbeat, release and status; the guard on plain SQL and udm writes;
//! stale takeover and expiry; first-wins under many racing sessions; lock events in the audit.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;
use udm_tests::*;

/// roadmap (scope of its products) and product (locked through roadmap_id).
fn roadmap_and_product(c: &mut postgres::Client, product_lock: &str) {
    json(
        c,
        r#"SELECT udm_define_entity('roadmap', '{"fields": [{"name": "name", "type": "text", "required": true}]}')"#,
    );
    json(
        c,
        &format!(
            r#"SELECT udm_define_entity('product', '{{"fields": [
                 {{"name": "name", "type": "text", "required": true}},
                 {{"name": "x_position", "type": "integer", "default": 0}},
                 {{"name": "roadmap_id", "type": "relation", "target": "roadmap", "on_delete": "cascade"}}],
               "lock": {product_lock}}}')"#
        ),
    );
}

fn id_of(c: &mut postgres::Client, sql: &str) -> String {
    scalar::<String>(c, sql)
}

fn insert_roadmap(c: &mut postgres::Client, name: &str) -> String {
    id_of(
        c,
        &format!(
            "SELECT udm_insert('roadmap', jsonb_build_object('name', {}))->>'id'",
            lit(name)
        ),
    )
}

fn insert_product(c: &mut postgres::Client, name: &str, roadmap: &str) -> String {
    id_of(
        c,
        &format!(
            "SELECT udm_insert('product', jsonb_build_object('name', {}, 'roadmap_id', {}))->>'id'",
            lit(name),
            lit(roadmap)
        ),
    )
}

/// A second session of the member's role, using the tenant as application user `user`.
fn session(m: &Member, user: &str) -> postgres::Client {
    let mut c = connect_as(&m.role);
    c.query_one("SELECT udm_use($1, $2)", &[&m.tenant, &user])
        .unwrap();
    c
}

#[test]
fn a_scope_lock_guards_plain_sql_and_udm_writes() {
    let mut adm = admin();
    let m = member(&mut adm, "lk");
    let t = m.tenant.clone();
    let mut alice = session(&m, "alice");
    let mut bob = session(&m, "bob");
    roadmap_and_product(&mut alice, r#"{"scope": "roadmap_id"}"#);
    let r1 = insert_roadmap(&mut alice, "R1");
    let r2 = insert_roadmap(&mut alice, "R2");
    let p1 = insert_product(&mut alice, "P1", &r1);
    let p2 = insert_product(&mut alice, "P2", &r2);

    // locking a product locks its roadmap
    let a = json(
        &mut alice,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&p1)),
    );
    assert_eq!(a["acquired"], true, "{a}");
    assert_eq!(a["holder"], "alice");
    assert_eq!(a["scope"], json!({"entity": "roadmap", "id": r1}));
    assert_eq!(a["mine"], true);
    let s = json(
        &mut bob,
        &format!("SELECT udm_lock_status('roadmap', {})", lit(&r1)),
    );
    assert_eq!(
        (s["locked"].clone(), s["mine"].clone(), s["holder"].clone()),
        (json!(true), json!(false), json!("alice")),
        "{s}"
    );

    // bob is refused, through plain SQL and udm alike, with holder and expiry named
    let msg = expect_err(
        &mut bob,
        &format!(
            "UPDATE \"{t}\".product SET name = 'B' WHERE id = {}",
            lit(&p1)
        ),
        "55P03",
    );
    assert!(
        msg.contains(&format!("cannot update product {p1}"))
            && msg.contains(&format!("roadmap {r1} (the lock scope of product {p1}) is locked for editing by \"alice\" until 20")),
        "{msg}"
    );
    expect_err(
        &mut bob,
        &format!(
            "SELECT udm_update('product', {}, '{{\"name\": \"B\"}}')",
            lit(&p1)
        ),
        "55P03",
    );
    let msg = expect_err(
        &mut bob,
        &format!("DELETE FROM \"{t}\".product WHERE id = {}", lit(&p1)),
        "55P03",
    );
    assert!(msg.contains("cannot delete product"), "{msg}");
    // moving another product into the locked roadmap is refused too
    let msg = expect_err(
        &mut bob,
        &format!(
            "UPDATE \"{t}\".product SET roadmap_id = {} WHERE id = {}",
            lit(&r1),
            lit(&p2)
        ),
        "55P03",
    );
    assert!(msg.contains(&format!("cannot move product {p2}")), "{msg}");
    // records of other roadmaps are free
    bob.batch_execute(&format!(
        "UPDATE \"{t}\".product SET name = 'P2b' WHERE id = {}",
        lit(&p2)
    ))
    .unwrap();

    // bob cannot take, renew or release alice's lock
    let b = json(
        &mut bob,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&r1)),
    );
    assert_eq!(
        (b["acquired"].clone(), b["holder"].clone()),
        (json!(false), json!("alice")),
        "{b}"
    );
    let msg = expect_err(
        &mut bob,
        &format!("SELECT udm_lock_release('product', {})", lit(&p1)),
        "55P03",
    );
    assert!(
        msg.contains("cannot release the lock on roadmap") && msg.contains("held by \"alice\""),
        "{msg}"
    );
    expect_err(
        &mut bob,
        &format!("SELECT udm_lock_heartbeat('roadmap', {})", lit(&r1)),
        "55P03",
    );
    // a heartbeat for a scope nobody locked, and locks on records that do not exist
    let msg = expect_err(
        &mut bob,
        &format!("SELECT udm_lock_heartbeat('roadmap', {})", lit(&r2)),
        "P0002",
    );
    assert!(
        msg.contains("there is no lock on roadmap") && msg.contains("udm_lock_acquire"),
        "{msg}"
    );
    expect_err(
        &mut bob,
        "SELECT udm_lock_acquire('product', '00000000-0000-4000-8000-00000000dead')",
        "P0002",
    );
    expect_err(
        &mut bob,
        "SELECT udm_lock_status('nope', gen_random_uuid())",
        "42P01",
    );

    // the holder writes; a heartbeat and a repeated acquire renew
    alice
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET x_position = 3 WHERE id = {}",
            lit(&p1)
        ))
        .unwrap();
    let h = json(
        &mut alice,
        &format!("SELECT udm_lock_heartbeat('roadmap', {})", lit(&r1)),
    );
    assert_eq!(h["mine"], true);
    let again = json(
        &mut alice,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&r1)),
    );
    assert_eq!(again["acquired"], true);
    assert_eq!(
        again["acquired_at"], a["acquired_at"],
        "re-acquiring keeps acquired_at"
    );

    // released: bob may write again; releasing twice says so
    let rel = json(
        &mut alice,
        &format!("SELECT udm_lock_release('product', {})", lit(&p1)),
    );
    assert_eq!(rel["released"], true);
    let rel = json(
        &mut alice,
        &format!("SELECT udm_lock_release('product', {})", lit(&p1)),
    );
    assert_eq!(rel["released"], false);
    bob.batch_execute(&format!(
        "UPDATE \"{t}\".product SET name = 'B' WHERE id = {}",
        lit(&p1)
    ))
    .unwrap();
    let s = json(
        &mut bob,
        &format!("SELECT udm_lock_status('product', {})", lit(&p1)),
    );
    assert_eq!(s["locked"], false);

    // every lock event is in the audit log, chained, attributed
    let events: Vec<(String, String)> = bob
        .query(
            &format!(
                "SELECT action, user_id FROM \"{t}\"._udm_audit WHERE entity = 'roadmap#lock' AND record_id = {}::uuid ORDER BY audit_id",
                lit(&r1)
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, String)> = [
        ("LOCK_ACQUIRE", "alice"),
        ("LOCK_HEARTBEAT", "alice"),
        ("LOCK_HEARTBEAT", "alice"),
        ("LOCK_RELEASE", "alice"),
    ]
    .iter()
    .map(|(a, u)| (a.to_string(), u.to_string()))
    .collect();
    assert_eq!(events, want);
    let v = json(&mut bob, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], true, "{v}");
    // tenant roles cannot write the lock table themselves
    expect_err(&mut bob, &format!("DELETE FROM \"{t}\"._udm_lock"), "42501");
}

#[test]
fn stale_locks_are_taken_over_and_expired_locks_protect_nothing() {
    let mut adm = admin();
    let m = member(&mut adm, "lks");
    let t = m.tenant.clone();
    // short times for this role (the settings are the DBA's: superuser only)
    adm.batch_execute(&format!(
        "ALTER ROLE \"{}\" SET udm.lock_stale_after = 1; ALTER ROLE \"{}\" SET udm.lock_expire_after = 3",
        m.role, m.role
    ))
    .unwrap();
    let mut alice = session(&m, "alice");
    let mut bob = session(&m, "bob");
    expect_err(&mut bob, "SET udm.lock_stale_after = 100000", "42501");
    roadmap_and_product(&mut alice, r#""roadmap_id""#);
    let r = insert_roadmap(&mut alice, "R");
    let p = insert_product(&mut alice, "P", &r);
    let a = json(
        &mut alice,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&r)),
    );
    assert_eq!(a["acquired"], true);
    let b = json(
        &mut bob,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&r)),
    );
    assert_eq!(b["acquired"], false);
    thread::sleep(Duration::from_millis(1300));
    // stale: still protects writes, but the next acquirer takes it over
    expect_err(
        &mut bob,
        &format!(
            "UPDATE \"{t}\".product SET x_position = 1 WHERE id = {}",
            lit(&p)
        ),
        "55P03",
    );
    let b = json(
        &mut bob,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&p)),
    );
    assert_eq!(
        (
            b["acquired"].clone(),
            b["holder"].clone(),
            b["taken_over_from"].clone()
        ),
        (json!(true), json!("bob"), json!("alice")),
        "{b}"
    );
    let msg = expect_err(
        &mut alice,
        &format!(
            "UPDATE \"{t}\".product SET x_position = 2 WHERE id = {}",
            lit(&p)
        ),
        "55P03",
    );
    assert!(msg.contains("by \"bob\""), "{msg}");
    expect_err(
        &mut alice,
        &format!("SELECT udm_lock_heartbeat('roadmap', {})", lit(&r)),
        "55P03",
    );
    let takeover: String = scalar(
        &mut bob,
        &format!(
            "SELECT new_data->>'previous_holder' FROM \"{t}\"._udm_audit WHERE entity = 'roadmap#lock' AND action = 'LOCK_TAKEOVER' AND record_id = {}::uuid",
            lit(&r)
        ),
    );
    assert_eq!(takeover, "alice");
    // expired: protects nothing
    thread::sleep(Duration::from_millis(3300));
    let s = json(
        &mut alice,
        &format!("SELECT udm_lock_status('roadmap', {})", lit(&r)),
    );
    assert_eq!(
        (s["locked"].clone(), s["expired"].clone()),
        (json!(false), json!(true)),
        "{s}"
    );
    alice
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET x_position = 2 WHERE id = {}",
            lit(&p)
        ))
        .unwrap();
    adm.batch_execute(&format!("ALTER ROLE \"{}\" RESET ALL", m.role))
        .unwrap();
}

#[test]
fn a_required_lock_must_be_held_by_the_writer() {
    let mut adm = admin();
    let mut m = member(&mut adm, "lkr");
    let t = m.tenant.clone();
    roadmap_and_product(
        &mut m.client,
        r#"{"scope": "roadmap_id", "required": true}"#,
    );
    let r = insert_roadmap(&mut m.client, "R");
    // inserting is not guarded; changing is
    let p = insert_product(&mut m.client, "P", &r);
    let msg = expect_err(
        &mut m.client,
        &format!(
            "UPDATE \"{t}\".product SET x_position = 5 WHERE id = {}",
            lit(&p)
        ),
        "55P03",
    );
    assert!(
        msg.contains("need its write lock, and you do not hold it")
            && msg.contains(&format!("udm_lock_acquire('product', '{p}')")),
        "{msg}"
    );
    json(
        &mut m.client,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&p)),
    );
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET x_position = 5 WHERE id = {}",
            lit(&p)
        ))
        .unwrap();
    let u = json(
        &mut m.client,
        &format!(
            "SELECT udm_update('product', {}, '{{\"x_position\": 6}}')",
            lit(&p)
        ),
    );
    assert_eq!(u["x_position"], 6);
    json(
        &mut m.client,
        &format!("SELECT udm_lock_release('roadmap', {})", lit(&r)),
    );
    expect_err(
        &mut m.client,
        &format!("SELECT udm_delete('product', {})", lit(&p)),
        "55P03",
    );
}

#[test]
fn thirty_two_sessions_racing_for_one_lock_get_one_winner() {
    let mut adm = admin();
    let mut m = member(&mut adm, "lkrace");
    roadmap_and_product(&mut m.client, r#""roadmap_id""#);
    let r = insert_roadmap(&mut m.client, "R");
    const SESSIONS: usize = 32;
    const ROUNDS: usize = 15;
    let clients: Vec<postgres::Client> = (0..SESSIONS)
        .map(|i| session(&m, &format!("user{i}")))
        .collect();
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            let r = r.clone();
            thread::spawn(move || {
                let mut wins = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait();
                    let v: Value = c
                        .query_one("SELECT udm_lock_acquire('roadmap', $1::text::uuid)", &[&r])
                        .unwrap()
                        .get(0);
                    let won = v["acquired"] == true;
                    if won {
                        wins.push(round);
                    }
                    barrier.wait();
                    if won {
                        c.query_one("SELECT udm_lock_release('roadmap', $1::text::uuid)", &[&r])
                            .unwrap();
                    }
                    barrier.wait();
                }
                wins
            })
        })
        .collect();
    let mut per_round = [0usize; ROUNDS];
    for h in handles {
        for round in h.join().unwrap() {
            per_round[round] += 1;
        }
    }
    assert_eq!(per_round, [1usize; ROUNDS], "exactly one winner per round");
}

#[test]
fn concurrent_moves_under_the_lock_lose_no_update() {
    let mut adm = admin();
    let m = member(&mut adm, "lkmove");
    let t = m.tenant.clone();
    let mut setup = session(&m, "setup");
    roadmap_and_product(&mut setup, r#"{"scope": "roadmap_id", "required": true}"#);
    let r = insert_roadmap(&mut setup, "R");
    let p = insert_product(&mut setup, "P", &r);
    const WORKERS: usize = 6;
    const MOVES: usize = 8;
    let handles: Vec<_> = (0..WORKERS)
        .map(|i| {
            let mut c = session(&m, &format!("mover{i}"));
            let (t, p) = (t.clone(), p.clone());
            thread::spawn(move || {
                let mut done = 0;
                while done < MOVES {
                    let v: Value = c
                        .query_one("SELECT udm_lock_acquire('product', $1::text::uuid)", &[&p])
                        .unwrap()
                        .get(0);
                    if v["acquired"] != true {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    // read, then write what was read plus one: only safe under the lock
                    let x: i32 = c
                        .query_one(
                            &format!(
                                "SELECT x_position FROM \"{t}\".product WHERE id = $1::text::uuid"
                            ),
                            &[&p],
                        )
                        .unwrap()
                        .get(0);
                    c.execute(
                        &format!(
                            "UPDATE \"{t}\".product SET x_position = $2 WHERE id = $1::text::uuid"
                        ),
                        &[&p, &(x + 1)],
                    )
                    .unwrap();
                    c.query_one("SELECT udm_lock_release('product', $1::text::uuid)", &[&p])
                        .unwrap();
                    done += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let x: i32 = scalar(
        &mut setup,
        &format!(
            "SELECT x_position FROM \"{t}\".product WHERE id = {}",
            lit(&p)
        ),
    );
    assert_eq!(x as usize, WORKERS * MOVES);
}

#[test]
fn lock_scopes_are_checked_versioned_and_follow_renames() {
    let mut adm = admin();
    let mut m = member(&mut adm, "lkdef");
    let t = m.tenant.clone();
    roadmap_and_product(&mut m.client, "null");
    let r = insert_roadmap(&mut m.client, "R");
    let p = insert_product(&mut m.client, "P", &r);
    // no scope yet
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&p)),
        "55000",
    );
    assert!(
        msg.contains("entity \"product\" of tenant")
            && msg.contains("has no lock scope")
            && msg.contains("udm_set_lock_scope('product', 'self')"),
        "{msg}"
    );
    // bad scopes
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_set_lock_scope('product', 'name')",
        "22023",
    );
    assert!(
        msg.contains(
            "the lock scope \"name\" must be a many-to-one relation field, not a text field"
        ) && msg.contains("\"roadmap_id\""),
        "{msg}"
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_set_lock_scope('product', 'nope')",
        "42703",
    );
    assert!(msg.contains("has no field \"nope\""), "{msg}");
    expect_err(
        &mut m.client,
        r#"SELECT udm_define_entity('other', '{"fields": [{"name": "n", "type": "text"}], "lock": {"scope": "self", "until": 5}}')"#,
        "22023",
    );
    expect_err(
        &mut m.client,
        &format!("SELECT udm_lock_acquire('nothing', {})", lit(&p)),
        "42P01",
    );
    // declared: a version of its own; a second identical declaration is refused
    let d = json(
        &mut m.client,
        "SELECT udm_set_lock_scope('product', 'roadmap_id')",
    );
    assert_eq!(d["lock"], json!({"scope": "roadmap_id", "required": false}));
    let op: String = scalar(
        &mut m.client,
        "SELECT change->>'op' FROM udm_entity_history('product') ORDER BY version DESC LIMIT 1",
    );
    assert_eq!(op, "set_lock_scope");
    expect_err(
        &mut m.client,
        "SELECT udm_set_lock_scope('product', 'roadmap_id')",
        "55000",
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_lock_acquire('product', '00000000-0000-0000-0000-000000000001')",
        "P0002",
    );
    assert!(msg.contains("entity \"product\" has no record"), "{msg}");
    let orphan = insert_product(&mut m.client, "orphan", &r);
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET roadmap_id = NULL WHERE id = {}",
            lit(&orphan)
        ))
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&orphan)),
        "55000",
    );
    assert!(
        msg.contains("has no \"roadmap_id\": its lock scope is empty"),
        "{msg}"
    );
    // renaming the scope field follows; removing it is refused
    json(
        &mut m.client,
        "SELECT udm_alter_field('product', 'roadmap_id', '{\"name\": \"plan_id\"}')",
    );
    let d = json(&mut m.client, "SELECT udm_describe('product')");
    assert_eq!(d["lock"]["scope"], "plan_id");
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_remove_field('product', 'plan_id')",
        "2BP01",
    );
    assert!(msg.contains("the lock scope"), "{msg}");
    json(
        &mut m.client,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&p)),
    );
    let mut other = session(&m, "other");
    expect_err(
        &mut other,
        &format!(
            "UPDATE \"{t}\".product SET name = 'x' WHERE id = {}",
            lit(&p)
        ),
        "55P03",
    );
    // without a scope the guard is gone
    json(&mut m.client, "SELECT udm_set_lock_scope('product', NULL)");
    other
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET name = 'x' WHERE id = {}",
            lit(&p)
        ))
        .unwrap();
    // another tenant's member cannot touch this tenant's locks
    let mut stranger = member(&mut adm, "lkx");
    stranger
        .client
        .batch_execute(&format!("SET udm.tenant = {}", lit(&t)))
        .unwrap();
    expect_err(
        &mut stranger.client,
        &format!("SELECT udm_lock_status('roadmap', {})", lit(&r)),
        "42501",
    );
}
