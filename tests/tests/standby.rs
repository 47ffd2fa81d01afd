//! udm on a streaming hot standby. The test makes a standby of the test cluster with
//! `pg_basebackup -R` (as the `postgres` OS user, a data directory under target/, a unix socket
//! of its own), waits for it to replay a tenant with data and access control (members, relation
//! tuples, a write lock, a subscription and a consumer), and checks:
//!
//! * the reads serve there and answer exactly what the primary answers, as each member;
//! * writes fail with PostgreSQL's read-only error (25006), never an internal error;
//! * the event stream is refused with 55000 (its order rests on locks writers hold on the
//!   primary, which a standby does not see) and names the primary;
//! * definition, member and registry changes replayed from the primary reach udm's caches in a
//!   standby backend that was already running, on its next call.

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use udm_tests::*;

fn pgbin(tool: &str) -> PathBuf {
    PathBuf::from(std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
        .join(tool)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool as the `postgres` OS user (initdb and postgres refuse root), without
/// Rust's backtrace settings (errors would carry a backtrace in their DETAIL).
fn as_pg(tool: &str, args: &[&str], cwd: &Path) -> String {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pgbin(tool));
        c
    } else {
        Command::new(pgbin(tool))
    };
    let out = cmd
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("PGOPTIONS")
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// A hot standby of the test cluster, stopped when dropped (also when the test panics).
struct Standby {
    dir: PathBuf,
    port: String,
}

impl Standby {
    fn make(host: &str, port: &str) -> Standby {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target/standby-cluster");
        if dir.join("data/PG_VERSION").exists() {
            let _ = Command::new(pgbin("pg_ctl"))
                .args(["-D", &dir.join("data").display().to_string()])
                .args(["-m", "immediate", "stop"])
                .output();
            if is_root() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(pgbin("pg_ctl"))
                    .args(["-D", &dir.join("data").display().to_string()])
                    .args(["-m", "immediate", "stop"])
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let dir = dir.canonicalize().unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.display().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        let data = dir.join("data").display().to_string();
        as_pg(
            "pg_basebackup",
            &[
                "-h",
                host,
                "-p",
                port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            &dir,
        );
        let sb_port = std::env::var("UDM_STANDBY_PORT").unwrap_or_else(|_| "5494".to_string());
        // the primary's settings came along: later lines win. Only a unix socket of its own.
        let conf = format!(
            "\n# the standby of udm's standby test\n\
             port = {sb_port}\n\
             unix_socket_directories = '{}'\n\
             listen_addresses = ''\n\
             hot_standby = on\n\
             shared_buffers = 128MB\n",
            dir.join("sock").display()
        );
        let path = dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        let sb = Standby { dir, port: sb_port };
        as_pg(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &sb.dir.join("server.log").display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
            &sb.dir,
        );
        sb
    }

    fn connect(&self, db: &str, user: &str) -> Client {
        Client::connect(
            &format!(
                "host={} port={} dbname={db} user={user} options='-c statement_timeout=20s'",
                self.dir.join("sock").display(),
                self.port
            ),
            NoTls,
        )
        .unwrap_or_else(|e| panic!("connect to the standby as {user}: {e}"))
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let args = ["-D", data.as_str(), "-m", "fast", "-w", "stop"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pgbin("pg_ctl"))
                .args(args)
                .current_dir(&self.dir)
                .output()
        } else {
            Command::new(pgbin("pg_ctl")).args(args).output()
        };
    }
}

/// Waits until the standby has replayed everything the primary wrote so far: up to the WAL
/// insert position (with `synchronous_commit = off` the last commit records may not be written
/// yet, so the write position can lie before them).
fn replayed(primary: &mut Client, standby: &mut Client) {
    let lsn: String = scalar(primary, "SELECT pg_current_wal_insert_lsn()::text");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done: bool = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not replay {lsn}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of a statement, or its error as `ERROR <sqlstate>`.
fn answer(c: &mut Client, sql: &str) -> String {
    match c.query(sql, &[]) {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        // every column as text: the statements cast what is not text or json
                        r.try_get::<_, Option<Value>>(i)
                            .map(|v| v.map_or("NULL".into(), |v| v.to_string()))
                            .or_else(|_| {
                                r.try_get::<_, Option<String>>(i)
                                    .map(|v| v.unwrap_or_else(|| "NULL".into()))
                            })
                            .or_else(|_| r.try_get::<_, Option<bool>>(i).map(|v| format!("{v:?}")))
                            .or_else(|_| r.try_get::<_, Option<i64>>(i).map(|v| format!("{v:?}")))
                            .or_else(|_| r.try_get::<_, Option<i32>>(i).map(|v| format!("{v:?}")))
                            .unwrap_or_else(|e| panic!("{sql}: column {i}: {e}"))
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("ERROR {} {}", sqlstate(&e), message(&e)),
    }
}

fn use_as(c: &mut Client, t: &str, user: &str) {
    c.query_one("SELECT udm_use($1, $2)", &[&t, &user])
        .unwrap_or_else(|e| panic!("udm_use {t} {user}: {}", message(&e)));
}

struct Setup {
    tenant: String,
    app: String,
    alice: String,
    bob: String,
    carol: String,
    dave: String,
    alice_p: String,
    bob_p: String,
    child: String,
    before_update: String,
}

const PROJECT: &str = r#"{"label": "Project", "fields": [
    {"name": "name", "type": "text", "required": true},
    {"name": "status", "type": "select", "values": ["todo", "doing", "done"], "default": "todo"},
    {"name": "budget", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
    {"name": "starts", "type": "date"},
    {"name": "ends", "type": "date"},
    {"name": "category_id", "type": "relation", "target": "category"},
    {"name": "labels", "type": "relation", "target": "category", "many": true},
    {"name": "owner_id", "type": "user"}],
  "rules": [{"name": "in_order", "check": "starts <= ends", "message": "a project ends after it starts"}],
  "access": {"scope": "self", "owner": "owner_id"},
  "lock": "self"}"#;

fn setup(adm: &mut Client) -> Setup {
    let tenant = tenant(adm, "sb");
    let t = tenant.clone();
    let app = login_role(adm, "sbapp");
    grant_tenant(adm, &t, &app);
    let [alice, bob, carol, dave] =
        ["alice", "bob", "carol", "dave"].map(|n| format!("{}@sb.test", unique(n)));
    for u in [&alice, &bob, &carol, &dave] {
        json(
            adm,
            &format!(
                "SELECT udm_create_user({}, 'Someone', 'a-long-password')",
                lit(u)
            ),
        );
    }
    json(adm, &format!("SELECT udm_use({})", lit(&t)));
    json(
        adm,
        r#"SELECT udm_define_entity('category', '{"fields": [
             {"name": "name", "type": "text", "required": true, "unique": true},
             {"name": "parent_id", "type": "relation", "target": "category"}]}')"#,
    );
    json(
        adm,
        &format!("SELECT udm_define_entity('project', {})", lit(PROJECT)),
    );
    for (u, role) in [(&alice, "admin"), (&bob, "editor"), (&carol, "viewer")] {
        json(
            adm,
            &format!(
                "SELECT udm_add_member({}, {}, {})",
                lit(&t),
                lit(u),
                lit(role)
            ),
        );
    }
    let mut a = connect_as(&app);
    use_as(&mut a, &t, &alice);
    let root: String = scalar(
        &mut a,
        r#"SELECT udm_insert('category', '{"name": "Hardware"}')->>'id'"#,
    );
    let child: String = scalar(
        &mut a,
        &format!(
            r#"SELECT udm_insert('category', '{{"name": "Phones", "parent_id": "{root}"}}')->>'id'"#
        ),
    );
    let alice_p: String = scalar(
        &mut a,
        &format!(
            r#"SELECT udm_insert('project', '{{"name": "Falcon", "status": "doing", "budget": 1200.50,
                 "starts": "2027-01-01", "ends": "2027-06-30", "category_id": "{child}",
                 "labels": ["{root}", "{child}"]}}')->>'id'"#
        ),
    );
    json(
        &mut a,
        &format!(
            r#"SELECT udm_insert('project', '{{"name": "Eagle", "budget": 80, "category_id": "{root}"}}')"#
        ),
    );
    json(
        &mut a,
        &format!(
            "SELECT udm_grant({}, 'viewer', 'project:{alice_p}')",
            lit(&carol)
        ),
    );
    let mut b = connect_as(&app);
    use_as(&mut b, &t, &bob);
    let bob_p: String = scalar(
        &mut b,
        &format!(
            r#"SELECT udm_insert('project', '{{"name": "Heron", "status": "todo", "budget": 300,
                 "starts": "2027-03-01", "ends": "2027-04-01", "category_id": "{child}"}}')->>'id'"#
        ),
    );
    std::thread::sleep(Duration::from_millis(20));
    let before_update: String = scalar(&mut b, "SELECT now()::text");
    std::thread::sleep(Duration::from_millis(20));
    b.batch_execute(&format!(
        "UPDATE \"{t}\".project SET budget = 450, status = 'doing' WHERE id = '{bob_p}'"
    ))
    .unwrap();
    json(
        &mut b,
        &format!("SELECT udm_lock_acquire('project', '{bob_p}')"),
    );
    json(
        &mut a,
        "SELECT udm_subscribe('project', ARRAY['UPDATE'], 'review', '{\"budget\": {\"gt\": 100}}')",
    );
    a.batch_execute(&format!(
        "UPDATE \"{t}\".project SET budget = 1300 WHERE id = '{alice_p}'"
    ))
    .unwrap();
    let first = json(&mut a, "SELECT udm_consume('w1', 3)");
    let acked = first["last_event"].as_i64().unwrap();
    json(&mut a, &format!("SELECT udm_ack('w1', {acked})"));
    json(
        &mut a,
        r#"SELECT udm_define_role('auditor', 'viewer', '{"entities": {"project": {"fields": {"budget": {"read": false}}}}}')"#,
    );
    Setup {
        tenant,
        app,
        alice,
        bob,
        carol,
        dave,
        alice_p,
        bob_p,
        child,
        before_update,
    }
}

/// The reads of the function reference, each as one statement.
fn reads(s: &Setup) -> Vec<String> {
    let (t, ap, bp, child) = (&s.tenant, &s.alice_p, &s.bob_p, &s.child);
    let at = &s.before_update;
    vec![
        "SELECT slug, name, schema_name, role_name, created_at::text FROM udm_tenants() ORDER BY slug".into(),
        "SELECT udm_current_tenant()".into(),
        "SELECT udm_describe('project')".into(),
        "SELECT slug, label, version, status, fields, table_name, updated_at::text FROM udm_entities() ORDER BY slug".into(),
        "SELECT version, changed_at::text, changed_by, change, definition FROM udm_entity_history('project') ORDER BY version".into(),
        "SELECT type_name, pg_type, view_types::text, options::text, description FROM udm_field_types() ORDER BY type_name".into(),
        format!("SELECT udm_get('project', '{ap}')"),
        format!("SELECT udm_get('project', '{bp}', ARRAY['name', 'category_id.name', 'labels'])"),
        format!("SELECT udm_get('category', '{child}')"),
        r#"SELECT udm_query('project', '{"columns": ["name", "budget", "category_id.name", "category_id.parent_id.name", "labels.name", "owner_id"], "filters": {"budget": {"gte": 0}}, "sort": ["name"], "limit": 10, "count": "exact"}')"#.into(),
        r#"SELECT udm_query('category', '{"columns": ["name", "project[].name"], "sort": ["-name"], "limit": 1}')"#.into(),
        r#"SELECT udm_aggregate('project', '{"group_by": ["status", {"path": "starts", "bucket": "quarter"}], "metrics": ["count", {"fn": "sum", "path": "budget"}], "sort": ["status"]}')"#.into(),
        r#"SELECT udm_view('project', 'table', '{"columns": ["name", "status"], "sort": ["name"], "limit": 5}')"#.into(),
        r#"SELECT udm_view('project', 'kanban', '{"field": "status", "columns": ["name"], "sort": ["name"], "limit": 5}')"#.into(),
        r#"SELECT udm_view('category', 'tree', '{"parent": "parent_id", "columns": ["name"], "depth": 3}')"#.into(),
        r#"SELECT udm_view('project', 'gantt', '{"start": "starts", "end": "ends", "label": "name", "group_by": "category_id.name", "limit": 10}')"#.into(),
        r#"SELECT udm_view('project', 'dropdown', '{"label": "name", "search": "fa", "limit": 10}')"#.into(),
        format!(r#"SELECT udm_view('category', 'breadcrumb', '{{"id": "{child}", "parent": "parent_id", "label": "name"}}')"#),
        r#"SELECT udm_explain('project', '{"columns": ["name"], "filters": {"status": "doing"}}') -> 'sql'"#.into(),
        r#"SELECT udm_compile('project', '{"columns": ["name", "category_id.name"]}') - 'compile_us' - 'cached'"#.into(),
        format!("SELECT version, action, changed_fields::text, summary, user_id, db_role, changed_at::text, txid, event_id, data FROM udm_history('project', '{bp}')"),
        format!("SELECT udm_record_at('project', '{bp}', '{at}')"),
        format!("SELECT udm_record_at('project', '{bp}', now())"),
        "SELECT udm_audit_verify()".into(),
        "SELECT udm_audit_report('summary', '2000-01-01', '2100-01-01')".into(),
        "SELECT udm_audit_report('changes', '2000-01-01', '2100-01-01', '{\"entity\": \"project\"}')".into(),
        format!("SELECT udm_audit_report('record_history', '2000-01-01', '2100-01-01', '{{\"entity\": \"project\", \"record_id\": \"{bp}\"}}')"),
        "SELECT udm_events_channel() IS NOT NULL".into(),
        "SELECT user_id::text, email, name, role FROM udm_members() ORDER BY email".into(),
        "SELECT name, parent, permissions, builtin FROM udm_roles() ORDER BY name".into(),
        format!("SELECT udm_check({}, 'viewer', 'project:{ap}')", lit(&s.carol)),
        format!("SELECT udm_check({}, 'editor', 'project:{ap}')", lit(&s.carol)),
        format!("SELECT udm_lock_status('project', '{bp}')"),
        format!("SELECT udm_authenticate({}, 'a-long-password')", lit(&s.bob)),
        format!("SELECT udm_authenticate({}, 'a-wrong-password')", lit(&s.bob)),
        // plain SQL under row-level security
        format!("SELECT name, budget::text, created_by, updated_by, _version FROM \"{t}\".project ORDER BY name"),
        format!("SELECT count(*) FROM \"{t}\".project__labels"),
        format!("SELECT entity, action, user_id FROM \"{t}\"._udm_audit ORDER BY audit_id"),
    ]
}

/// Writes, each with what the standby must answer: PostgreSQL's read-only error.
fn writes(s: &Setup) -> Vec<String> {
    let (t, ap, bp, child) = (&s.tenant, &s.alice_p, &s.bob_p, &s.child);
    vec![
        r#"SELECT udm_insert('category', '{"name": "Tablets"}')"#.into(),
        format!(r#"SELECT udm_update('project', '{bp}', '{{"budget": 1}}')"#),
        format!(r#"SELECT udm_update('project', '{bp}', '{{"budget": 1}}', 2)"#),
        format!("SELECT udm_delete('project', '{bp}')"),
        r#"SELECT udm_insert_many('category', '[{"name": "A"}, {"name": "B"}]')"#.into(),
        r#"SELECT udm_upsert_many('category', '[{"name": "Phones"}]', ARRAY['name'])"#.into(),
        format!("INSERT INTO \"{t}\".category (name) VALUES ('Plain')"),
        format!("UPDATE \"{t}\".project SET budget = 2 WHERE id = '{bp}'"),
        format!("DELETE FROM \"{t}\".project WHERE id = '{bp}'"),
        format!("INSERT INTO \"{t}\".project__labels (source_id, target_id) VALUES ('{bp}', '{child}')"),
        r#"SELECT udm_define_entity('extra', '{"fields": [{"name": "x", "type": "text"}]}')"#.into(),
        r#"SELECT udm_add_field('project', '{"name": "extra", "type": "text"}')"#.into(),
        r#"SELECT udm_alter_field('project', 'name', '{"label": "Title"}')"#.into(),
        "SELECT udm_add_index('project', ARRAY['status'])".into(),
        r#"SELECT udm_add_rule('project', '{"name": "cheap", "check": "budget < 1000000"}')"#.into(),
        "SELECT udm_drop_entity('project')".into(),
        "SELECT udm_set_audit('category', false)".into(),
        "SELECT udm_set_lock_scope('category', 'self')".into(),
        "SELECT udm_install_template('roadmap')".into(),
        format!("SELECT udm_lock_acquire('project', '{ap}')"),
        format!("SELECT udm_lock_heartbeat('project', '{bp}')"),
        format!("SELECT udm_lock_release('project', '{bp}')"),
        format!("SELECT udm_grant({}, 'editor', 'project:{ap}')", lit(&s.carol)),
        format!("SELECT udm_revoke({}, 'viewer', 'project:{ap}')", lit(&s.carol)),
        format!("SELECT udm_add_member({}, {}, 'viewer')", lit(t), lit(&s.dave)),
        format!("SELECT udm_remove_member({}, {})", lit(t), lit(&s.carol)),
        r#"SELECT udm_define_role('helper', 'viewer', '{}')"#.into(),
        "SELECT udm_subscribe('category', ARRAY['INSERT'], 'other')".into(),
        "SELECT udm_unsubscribe('project', 'review')".into(),
        "SELECT udm_ack('w1', 4)".into(),
        format!("SELECT udm_rollback('project', '{bp}', 1)"),
        format!("SELECT udm_rollback_transaction((SELECT txid FROM \"{t}\"._udm_audit ORDER BY audit_id DESC LIMIT 1))"),
        "SELECT udm_create_user('someone.new@sb.test', 'Someone', 'a-long-password')".into(),
    ]
}

#[test]
fn a_hot_standby_serves_reads_refuses_writes_and_follows_definition_changes() {
    let host = std::env::var("UDM_TEST_HOST")
        .unwrap_or_else(|_| "/work/main/target/test-cluster/sock".into());
    let port = std::env::var("UDM_TEST_PORT").unwrap_or_else(|_| "5498".into());
    let db = std::env::var("UDM_TEST_DB").unwrap_or_else(|_| "udm_it".into());
    let mut adm = admin();
    // what streaming replication needs of the primary (initdb's defaults give both)
    let level: String = scalar(&mut adm, "SHOW wal_level");
    assert!(
        level == "replica" || level == "logical",
        "wal_level {level}"
    );
    let hba: i64 = scalar(
        &mut adm,
        "SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database) AND type = 'local'",
    );
    assert!(hba > 0, "pg_hba.conf lets local replication connections in");
    let s = setup(&mut adm);
    let t = s.tenant.clone();
    let sb = Standby::make(&host, &port);
    let mut sb_adm = sb.connect(&db, "postgres");
    replayed(&mut adm, &mut sb_adm);
    let in_recovery: bool = scalar(&mut sb_adm, "SELECT pg_is_in_recovery()");
    assert!(in_recovery);

    // 1. reads answer there what they answer on the primary, as each member
    let reads = reads(&s);
    for user in [&s.alice, &s.bob, &s.carol] {
        let mut p = connect_as(&s.app);
        let mut q = sb.connect(&db, &s.app);
        let (x, y) = (
            answer(
                &mut p,
                &format!("SELECT udm_use({}, {})", lit(&t), lit(user)),
            ),
            answer(
                &mut q,
                &format!("SELECT udm_use({}, {})", lit(&t), lit(user)),
            ),
        );
        assert_eq!(x, y, "udm_use as {user}");
        assert!(!y.starts_with("ERROR"), "{y}");
        for sql in &reads {
            let (x, y) = (answer(&mut p, sql), answer(&mut q, sql));
            assert!(!y.starts_with("ERROR XX"), "{user}: {sql}: {y}");
            assert_eq!(x, y, "as {user}: {sql}");
        }
    }
    // (the comparison is not vacuous: the members see different things, and reads succeed)
    let mut q = sb.connect(&db, &s.app);
    use_as(&mut q, &t, &s.carol);
    let carol = json(
        &mut q,
        r#"SELECT udm_query('project', '{"columns": ["name"]}')"#,
    );
    assert_eq!(carol["rows"], json!([{"name": "Falcon"}]), "{carol}");
    use_as(&mut q, &t, &s.bob);
    let bob = json(
        &mut q,
        r#"SELECT udm_query('project', '{"columns": ["name"], "sort": ["name"]}')"#,
    );
    assert_eq!(bob["rows"], json!([{"name": "Heron"}]), "{bob}");
    let h: i64 = scalar(
        &mut q,
        &format!("SELECT count(*) FROM udm_history('project', '{}')", s.bob_p),
    );
    assert_eq!(h, 2);
    let at = json(
        &mut q,
        &format!(
            "SELECT udm_record_at('project', '{}', '{}')",
            s.bob_p, s.before_update
        ),
    );
    assert_eq!(at["budget"].as_f64(), Some(300.0), "{at}");
    let lock = json(
        &mut q,
        &format!("SELECT udm_lock_status('project', '{}')", s.bob_p),
    );
    assert_eq!(
        (&lock["locked"], &lock["holder"]),
        (&json!(true), &json!(s.bob)),
        "{lock}"
    );

    // 2. writes fail with the read-only error, as members and as a superuser
    let writes = writes(&s);
    for (c, who) in [(&mut q, "bob"), (&mut sb_adm, "postgres")] {
        if who == "postgres" {
            json(c, &format!("SELECT udm_use({})", lit(&t)));
        } else {
            use_as(c, &t, &s.alice);
        }
        for sql in &writes {
            let e = c
                .batch_execute(sql)
                .expect_err(&format!("{who}: {sql} wrote on a standby"));
            assert_eq!(sqlstate(&e), "25006", "{who}: {sql}: {}", message(&e));
        }
    }
    for sql in [
        "SELECT udm_create_tenant('sbnew')".to_string(),
        format!("SELECT udm_drop_tenant({}, {})", lit(&t), lit(&t)),
        format!(
            r#"SELECT udm_update_user({}, '{{"name": "Other Name"}}')"#,
            lit(&s.dave)
        ),
    ] {
        let e = sb_adm.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), "25006", "{sql}: {}", message(&e));
    }
    // LISTEN needs the primary too (PostgreSQL's own refusal)
    let e = sb_adm.batch_execute("LISTEN anything").unwrap_err();
    assert_eq!(sqlstate(&e), "25006", "{}", message(&e));

    // 3. the event stream needs the primary
    use_as(&mut q, &t, &s.alice);
    for sql in ["SELECT udm_events(0, 10)", "SELECT udm_consume('w1', 10)"] {
        let e = q.batch_execute(sql).unwrap_err();
        let msg = message(&e);
        assert_eq!(sqlstate(&e), "55000", "{sql}: {msg}");
        assert!(msg.contains("standby") && msg.contains("primary"), "{msg}");
    }
    // (on the primary they serve)
    let mut p = connect_as(&s.app);
    use_as(&mut p, &t, &s.alice);
    json(&mut p, "SELECT udm_events(0, 10)");

    // 4. changes replayed from the primary reach the caches of running standby backends
    let mut long = sb.connect(&db, &s.app);
    use_as(&mut long, &t, &s.bob);
    let pid: i32 = scalar(&mut long, "SELECT pg_backend_pid()");
    let d = json(&mut long, "SELECT udm_describe('project')");
    let names = |d: &Value| -> Vec<String> {
        d["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&d).contains(&"status".to_string()), "{d}");
    json(
        &mut long,
        r#"SELECT udm_query('project', '{"columns": ["name", "status"], "filters": {"status": "doing"}}')"#,
    );
    let mut carol_long = sb.connect(&db, &s.app);
    use_as(&mut carol_long, &t, &s.carol);
    let seen = json(
        &mut carol_long,
        r#"SELECT udm_query('project', '{"columns": ["name"], "count": "exact"}')"#,
    );
    assert_eq!(seen["count"], json!(1), "{seen}");
    let mut dave_long = sb.connect(&db, &s.app);
    let e = dave_long
        .query_one("SELECT udm_use($1, $2)", &[&t, &s.dave])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let fresh = unique("sbn");
    let listed = |c: &mut Client| -> Vec<String> {
        c.query("SELECT slug FROM udm_tenants()", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert!(!listed(&mut sb_adm).contains(&fresh));

    use_as(&mut p, &t, &s.alice);
    json(
        &mut p,
        r#"SELECT udm_add_field('project', '{"name": "priority", "type": "integer", "min": 0}')"#,
    );
    json(
        &mut p,
        r#"SELECT udm_alter_field('project', 'status', '{"name": "stage"}')"#,
    );
    // (bob holds the project's write lock)
    let mut pb = connect_as(&s.app);
    use_as(&mut pb, &t, &s.bob);
    pb.batch_execute(&format!(
        "UPDATE \"{t}\".project SET priority = 5 WHERE id = '{}'",
        s.bob_p
    ))
    .unwrap();
    json(
        &mut p,
        &format!(
            "SELECT udm_add_member({}, {}, 'admin')",
            lit(&t),
            lit(&s.carol)
        ),
    );
    json(
        &mut p,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&t),
            lit(&s.dave)
        ),
    );
    json(
        &mut adm,
        &format!("SELECT udm_create_tenant({})", lit(&fresh)),
    );
    replayed(&mut adm, &mut sb_adm);

    let again: i32 = scalar(&mut long, "SELECT pg_backend_pid()");
    assert_eq!(again, pid, "the same standby backend");
    let d = json(&mut long, "SELECT udm_describe('project')");
    let n = names(&d);
    assert!(
        n.contains(&"priority".to_string())
            && n.contains(&"stage".to_string())
            && !n.contains(&"status".to_string()),
        "the standby backend follows the definition: {n:?}"
    );
    let page = json(
        &mut long,
        r#"SELECT udm_query('project', '{"columns": ["name", "stage", "priority"], "filters": {"stage": "doing"}}')"#,
    );
    assert_eq!(
        page["rows"],
        json!([{"name": "Heron", "stage": "doing", "priority": 5}]),
        "{page}"
    );
    let e = long
        .query_one(
            r#"SELECT udm_query('project', '{"columns": ["status"]}')"#,
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42703", "{}", message(&e));
    let g = json(
        &mut long,
        &format!("SELECT udm_get('project', '{}')", s.bob_p),
    );
    assert_eq!(
        (&g["priority"], &g["stage"]),
        (&json!(5), &json!("doing")),
        "{g}"
    );
    // a member's new role, and a new member, count at once there
    let seen = json(
        &mut carol_long,
        r#"SELECT udm_query('project', '{"columns": ["name"], "count": "exact"}')"#,
    );
    assert_eq!(seen["count"], json!(3), "carol is an admin now: {seen}");
    dave_long
        .query_one("SELECT udm_use($1, $2)", &[&t, &s.dave])
        .unwrap_or_else(|e| panic!("dave is a member now: {}", message(&e)));
    // a new tenant is listed, a dropped one goes
    assert!(listed(&mut sb_adm).contains(&fresh));
    json(&mut sb_adm, &format!("SELECT udm_use({})", lit(&fresh)));
    json(
        &mut adm,
        &format!("SELECT udm_drop_tenant({}, {})", lit(&fresh), lit(&fresh)),
    );
    replayed(&mut adm, &mut sb_adm);
    assert!(!listed(&mut sb_adm).contains(&fresh));
    let e = sb_adm
        .query_one("SELECT udm_use($1)", &[&fresh])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704", "{}", message(&e));
    drop(sb);
}
