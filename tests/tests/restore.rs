//! Backups restore. A database with a tenant holding every kind of state udm keeps (the roadmap
//! template with rules over related records, members, roles, relation tuples, a write lock,
//! many-to-many links, references, passwords, auto numbers, subscriptions and a consumer that
//! has acknowledged events, and its audit log) is dumped with the real tools and restored three
//! ways: `pg_dump -Fc` + `pg_restore --exit-on-error` and plain `pg_dump` + `psql` into new
//! databases of the same cluster, and `pg_dump -Fc` into a new cluster after
//! `pg_dumpall --roles-only`. Each restored database must work as the original did.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use udm_tests::*;

fn pgbin(tool: &str) -> PathBuf {
    PathBuf::from(std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
        .join(tool)
}

/// Where a database lives: socket directory, port, name.
#[derive(Clone)]
struct Db {
    host: String,
    port: String,
    name: String,
}

impl Db {
    fn connect(&self, user: &str) -> Client {
        Client::connect(
            &format!(
                "host={} port={} dbname={} user={user} application_name=udm-restore",
                self.host, self.port, self.name
            ),
            NoTls,
        )
        .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", self.name))
    }

    fn args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.host.clone(),
            "-p".into(),
            self.port.clone(),
            "-U".into(),
            "postgres".into(),
        ]
    }
}

fn run(tool: &str, args: &[String]) -> String {
    let out = Command::new(pgbin(tool))
        .args(args)
        .env_remove("PGOPTIONS")
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{tool} {args:?} failed:\n{err}");
    err
}

fn create_db(on: &Db) {
    let mut c = Client::connect(
        &format!(
            "host={} port={} dbname=postgres user=postgres",
            on.host, on.port
        ),
        NoTls,
    )
    .unwrap();
    c.batch_execute(&format!("CREATE DATABASE \"{}\"", on.name))
        .unwrap();
}

fn drop_db(on: &Db) {
    if let Ok(mut c) = Client::connect(
        &format!(
            "host={} port={} dbname=postgres user=postgres",
            on.host, on.port
        ),
        NoTls,
    ) {
        let _ = c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            on.name
        ));
    }
}

/// What the original looked like, to compare each restore with.
struct Expected {
    tenant: String,
    app: String,
    alice: String,
    bob: String,
    carol: String,
    roadmap: String,
    carol_sees: Vec<String>,
    audit_rows: i64,
    acked: i64,
    docs: i64,
}

fn names(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn use_as(c: &mut Client, t: &str, user: &str) {
    c.query_one("SELECT udm_use($1, $2)", &[&t, &user])
        .unwrap_or_else(|e| panic!("udm_use {t} {user}: {}", message(&e)));
}

fn populate(db: &Db) -> Expected {
    let mut su = db.connect("postgres");
    su.batch_execute("CREATE EXTENSION udm").unwrap();
    let tenant = unique("bk");
    let app = login_role(&mut su, "bkapp");
    json(
        &mut su,
        &format!("SELECT udm_create_tenant({})", lit(&tenant)),
    );
    grant_tenant(&mut su, &tenant, &app);
    let (alice, bob, carol) = (
        format!("{}@bk.test", unique("alice")),
        format!("{}@bk.test", unique("bob")),
        format!("{}@bk.test", unique("carol")),
    );
    let mut owner = db.connect(&app);
    owner.query_one("SELECT udm_use($1)", &[&tenant]).unwrap();
    owner
        .batch_execute(
            r#"SELECT udm_install_template('roadmap');
               SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text", "unique": true}]}');
               SELECT udm_define_entity('doc', '{"fields": [
                 {"name": "title", "type": "text", "required": true},
                 {"name": "no", "type": "auto_number"},
                 {"name": "secret", "type": "password"},
                 {"name": "tags", "type": "relation", "target": "tag", "many": true},
                 {"name": "about", "type": "reference", "targets": ["tag", "doc"]}],
                 "rules": [{"name": "title_short", "check": "length(title) <= 40", "message": "titles are short"}]}');"#,
        )
        .unwrap();
    for u in [&alice, &bob, &carol] {
        json(
            &mut su,
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
            lit(&tenant),
            lit(&alice)
        ),
    );
    let mut a = db.connect(&app);
    use_as(&mut a, &tenant, &alice);
    for (u, role) in [(&bob, "editor"), (&carol, "viewer")] {
        json(
            &mut a,
            &format!(
                "SELECT udm_add_member({}, {}, {})",
                lit(&tenant),
                lit(u),
                lit(role)
            ),
        );
    }
    let roadmap: String = scalar(
        &mut a,
        r#"SELECT udm_insert('roadmap', '{"name": "Hardware", "y_axis_values": ["HW", "SW"]}')->>'id'"#,
    );
    let other: String = scalar(
        &mut a,
        r#"SELECT udm_insert('roadmap', '{"name": "Software", "y_axis_values": ["A"]}')->>'id'"#,
    );
    for (r, code, y) in [
        (&roadmap, "Falcon", "HW"),
        (&roadmap, "Eagle", "SW"),
        (&other, "Hidden", "A"),
    ] {
        json(
            &mut a,
            &format!(
                r#"SELECT udm_insert('product', '{{"codename": "{code}", "part_number": "P-{code}", "description": "a product of the roadmap", "roadmap_id": "{r}", "x_position": "2027-Q1", "y_position": "{y}", "sample_date": "2026-01-01", "release_date": "2026-06-01"}}')"#
            ),
        );
    }
    json(
        &mut a,
        &format!(
            "SELECT udm_grant({}, 'editor', 'roadmap:{roadmap}')",
            lit(&bob)
        ),
    );
    json(
        &mut a,
        &format!(
            "SELECT udm_grant({}, 'viewer', 'roadmap:{roadmap}')",
            lit(&carol)
        ),
    );
    a.batch_execute(&format!(
        r#"SELECT udm_insert('tag', '{{"name": "red"}}');
           SELECT udm_insert('tag', '{{"name": "blue"}}');
           INSERT INTO "{tenant}".doc (title, secret) VALUES ('first', 'a-password-1'), ('second', 'a-password-2');
           INSERT INTO "{tenant}".doc__tags (source_id, target_id) SELECT d.id, t.id FROM "{tenant}".doc d, "{tenant}".tag t;
           UPDATE "{tenant}".doc SET about = ROW('tag', (SELECT id FROM "{tenant}".tag WHERE name = 'red'))::udm.ref WHERE title = 'first';
           SELECT udm_subscribe('product', ARRAY['UPDATE'], 'review');"#
    ))
    .unwrap();
    let mut b = db.connect(&app);
    use_as(&mut b, &tenant, &bob);
    json(
        &mut b,
        &format!("SELECT udm_lock_acquire('roadmap', '{roadmap}')"),
    );
    b.batch_execute(&format!(
        "UPDATE \"{tenant}\".product SET x_position = '2027-Q2' WHERE codename = 'Falcon'"
    ))
    .unwrap();
    // a consumer takes part of the stream
    let first = json(&mut a, "SELECT udm_consume('w1', 5)");
    let acked = first["last_event"].as_i64().unwrap();
    json(&mut a, &format!("SELECT udm_ack('w1', {acked})"));
    let mut c = db.connect(&app);
    use_as(&mut c, &tenant, &carol);
    let carol_sees = names(
        &mut c,
        &format!("SELECT codename FROM \"{tenant}\".product ORDER BY 1"),
    );
    assert_eq!(carol_sees, ["Eagle", "Falcon"]);
    let audit_rows: i64 = scalar(
        &mut su,
        &format!("SELECT count(*) FROM \"{tenant}\"._udm_audit"),
    );
    let docs: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{tenant}\".doc"));
    let v = json(&mut a, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    Expected {
        tenant,
        app,
        alice,
        bob,
        carol,
        roadmap,
        carol_sees,
        audit_rows,
        acked,
        docs,
    }
}

/// Everything the original could do, in the restored database.
fn works(db: &Db, e: &Expected) {
    let t = &e.tenant;
    let mut su = db.connect("postgres");
    let listed = names(&mut su, "SELECT slug FROM udm_tenants()");
    assert!(
        listed.contains(t),
        "{} lists its tenant: {listed:?}",
        db.name
    );
    let rows: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{t}\"._udm_audit"));
    assert_eq!(rows, e.audit_rows, "{}: the audit log came along", db.name);
    let docs: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{t}\".doc"));
    assert_eq!(docs, e.docs);
    // access control: carol sees what she saw
    let mut c = db.connect(&e.app);
    use_as(&mut c, t, &e.carol);
    assert_eq!(
        names(
            &mut c,
            &format!("SELECT codename FROM \"{t}\".product ORDER BY 1")
        ),
        e.carol_sees,
        "{}: row-level security",
        db.name
    );
    expect_err(
        &mut c,
        &format!("UPDATE \"{t}\".product SET x_position = '2027-Q3' WHERE codename = 'Falcon'"),
        "42501",
    );
    // bob still holds the write lock and writes through it; the change is audited and chained
    let mut b = db.connect(&e.app);
    use_as(&mut b, t, &e.bob);
    let lock = json(
        &mut b,
        &format!("SELECT udm_lock_status('roadmap', '{}')", e.roadmap),
    );
    assert_eq!(lock["holder"], json!(e.bob), "{}: {lock}", db.name);
    b.batch_execute(&format!(
        "UPDATE \"{t}\".product SET x_position = '2027-Q4' WHERE codename = 'Falcon'"
    ))
    .unwrap_or_else(|err| {
        panic!(
            "{}: a plain UPDATE after restore: {}",
            db.name,
            message(&err)
        )
    });
    let id: String = scalar(
        &mut b,
        &format!("SELECT id::text FROM \"{t}\".product WHERE codename = 'Falcon'"),
    );
    let last: String = scalar(
        &mut b,
        &format!("SELECT summary FROM udm_history('product', '{id}') LIMIT 1"),
    );
    assert!(last.contains("2027-Q4"), "{last}");
    // rules hold for plain SQL, in their words, over related records too
    let msg = expect_err(
        &mut b,
        &format!("UPDATE \"{t}\".product SET y_position = 'Laptops' WHERE codename = 'Falcon'"),
        "23514",
    );
    assert!(msg.contains("yPosition must be one of"), "{msg}");
    let mut a = db.connect(&e.app);
    use_as(&mut a, t, &e.alice);
    let msg = expect_err(
        &mut a,
        &format!("INSERT INTO \"{t}\".doc (title) VALUES (repeat('x', 50))"),
        "23514",
    );
    assert!(msg.contains("titles are short"), "{msg}");
    // new records get the next auto number; passwords stay hashed; links and references hold
    a.batch_execute(&format!("INSERT INTO \"{t}\".doc (title) VALUES ('third')"))
        .unwrap();
    let no: i64 = scalar(
        &mut su,
        &format!("SELECT no FROM \"{t}\".doc WHERE title = 'third'"),
    );
    let before: i64 = scalar(
        &mut su,
        &format!("SELECT max(no) FROM \"{t}\".doc WHERE title <> 'third'"),
    );
    assert!(no > before, "the numbering continues: {no} after {before}");
    let links: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{t}\".doc__tags"));
    assert_eq!(links, 4);
    expect_err(
        &mut a,
        &format!("DELETE FROM \"{t}\".tag WHERE name = 'red'"),
        "23503",
    );
    // the consumer continues after its last acknowledged event, and sees the new change
    let next = json(&mut a, "SELECT udm_consume('w1', 1000)");
    let ids: Vec<i64> = next["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["event_id"].as_i64().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && ids[0] > e.acked,
        "{}: {ids:?} after {}",
        db.name,
        e.acked
    );
    assert!(
        next["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["targets"] == json!(["review"])),
        "{next}"
    );
    // the chain verifies, the new rows included
    let v = json(&mut a, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{}: {v}", db.name);
    // definitions change, and new tenants come
    json(
        &mut a,
        r#"SELECT udm_add_field('doc', '{"name": "pages", "type": "integer", "min": 0}')"#,
    );
    let versions: i32 = scalar(&mut a, "SELECT max(version) FROM udm_entity_history('doc')");
    assert_eq!(versions, 2, "history of definitions came along");
    let fresh = unique("bkn");
    json(
        &mut su,
        &format!("SELECT udm_create_tenant({})", lit(&fresh)),
    );
    json(
        &mut su,
        &format!("SELECT udm_drop_tenant({}, {})", lit(&fresh), lit(&fresh)),
    );
    // users came along: they log in
    let who = json(
        &mut a,
        &format!(
            "SELECT udm_authenticate({}, 'a-long-password')",
            lit(&e.carol)
        ),
    );
    assert_eq!(who["role"], json!("viewer"), "{who}");
}

#[test]
fn backups_restore_into_a_new_database_and_a_new_cluster() {
    let host = std::env::var("UDM_TEST_HOST")
        .unwrap_or_else(|_| "/work/main/target/test-cluster/sock".into());
    let port = std::env::var("UDM_TEST_PORT").unwrap_or_else(|_| "5498".into());
    let src = Db {
        host: host.clone(),
        port: port.clone(),
        name: unique("udm_bk_src"),
    };
    create_db(&src);
    let e = populate(&src);
    let dir = std::env::temp_dir().join(unique("udm_bk"));
    std::fs::create_dir_all(&dir).unwrap();
    let custom = dir.join("db.dump").display().to_string();
    let plain = dir.join("db.sql").display().to_string();
    let mut a = src.args();
    a.extend(["-Fc".into(), "-f".into(), custom.clone(), src.name.clone()]);
    run("pg_dump", &a);
    let mut a = src.args();
    a.extend(["-Fp".into(), "-f".into(), plain.clone(), src.name.clone()]);
    run("pg_dump", &a);

    // 1. custom format into a new database of the same cluster
    let one = Db {
        name: unique("udm_bk_c"),
        ..src.clone()
    };
    create_db(&one);
    let mut a = one.args();
    a.extend([
        "--exit-on-error".into(),
        "-d".into(),
        one.name.clone(),
        custom.clone(),
    ]);
    run("pg_restore", &a);
    works(&one, &e);

    // 2. plain format through psql
    let two = Db {
        name: unique("udm_bk_p"),
        ..src.clone()
    };
    create_db(&two);
    let mut a = two.args();
    a.extend([
        "-X".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-d".into(),
        two.name.clone(),
        "-f".into(),
        plain.clone(),
    ]);
    run("psql", &a);
    works(&two, &e);

    // 3. a new cluster: roles first, then the database
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cluster_dir = root.join("target/restore-cluster");
    let cluster = root.join("tests/cluster.sh");
    // its own port (listening on localhost too): make test RESTORE_PORT=<port>
    let restore_port = std::env::var("UDM_RESTORE_PORT").unwrap_or_else(|_| "5496".into());
    let status = Command::new(&cluster)
        .args([
            "start",
            &cluster_dir.display().to_string(),
            &restore_port,
            "fresh",
            "udm.bcrypt_cost = 4",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "start a second cluster");
    let three = Db {
        host: cluster_dir.join("sock").display().to_string(),
        port: restore_port.clone(),
        name: unique("udm_bk_n"),
    };
    let roles = dir.join("roles.sql").display().to_string();
    let mut a = src.args();
    a.extend(["--roles-only".into(), "-f".into(), roles.clone()]);
    run("pg_dumpall", &a);
    // (its own superuser exists there already: that one statement fails, the rest apply)
    let mut a = three.args();
    a.extend([
        "-X".into(),
        "-q".into(),
        "-d".into(),
        "postgres".into(),
        "-f".into(),
        roles,
    ]);
    run("psql", &a);
    create_db(&three);
    let mut a = three.args();
    a.extend([
        "--exit-on-error".into(),
        "-d".into(),
        three.name.clone(),
        custom.clone(),
    ]);
    run("pg_restore", &a);
    works(&three, &e);

    for d in [&src, &one, &two] {
        drop_db(d);
    }
    let _ = Command::new(&cluster)
        .args(["stop", &cluster_dir.display().to_string()])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_restore_without_the_registry_says_what_is_missing_and_is_repaired() {
    // what a dump made by udm 0.1.0 restores to: tenant schemas whose registry rows are gone
    let mut adm = admin();
    let mut m = member(&mut adm, "unreg");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('note', '{"fields": [{"name": "body", "type": "text"}]}')"#,
    );
    m.client
        .batch_execute(&format!("INSERT INTO \"{t}\".note (body) VALUES ('kept')"))
        .unwrap();
    let row: Value = scalar(
        &mut adm,
        &format!(
            "SELECT to_jsonb(t) FROM udm.tenant t WHERE slug = {}",
            lit(&t)
        ),
    );
    adm.batch_execute(&format!("DELETE FROM udm.tenant WHERE slug = {}", lit(&t)))
        .unwrap();
    // writes are refused naming the repair, never with an internal error
    let mut c = connect_as(&m.role);
    let msg = expect_err(
        &mut c,
        &format!("UPDATE \"{t}\".note SET body = 'changed'"),
        "55000",
    );
    assert!(
        msg.contains("udm's registry (udm.tenant) does not list")
            && msg.contains(&format!("udm_register_tenant('{t}')")),
        "{msg}"
    );
    let msg = expect_err(&mut c, &format!("SELECT udm_use({})", lit(&t)), "55000");
    assert!(msg.contains("udm_register_tenant"), "{msg}");
    // only an admin repairs it
    let msg = expect_err(
        &mut c,
        &format!("SELECT udm_register_tenant({})", lit(&t)),
        "42501",
    );
    assert!(msg.contains("not a udm admin"), "{msg}");
    let r = json(
        &mut adm,
        &format!("SELECT udm_register_tenant({})", lit(&t)),
    );
    assert_eq!(r["role"], row["role_name"], "{r}");
    expect_err(
        &mut adm,
        &format!("SELECT udm_register_tenant({})", lit(&t)),
        "42P06",
    );
    expect_err(&mut adm, "SELECT udm_register_tenant('public')", "42602");
    let plain = unique("plain");
    adm.batch_execute(&format!("CREATE SCHEMA {plain}"))
        .unwrap();
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_register_tenant({})", lit(&plain)),
        "42704",
    );
    assert!(msg.contains("does not hold a udm tenant"), "{msg}");
    let mut c = connect_as(&m.role);
    c.query_one("SELECT udm_use($1)", &[&t]).unwrap();
    c.batch_execute(&format!("UPDATE \"{t}\".note SET body = 'changed'"))
        .unwrap();
    let v = json(&mut c, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
}
