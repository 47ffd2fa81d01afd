//! udm behind PgBouncer in transaction pooling mode. Each test starts its own pgbouncer (a unix
//! socket in a directory under target/, `pool_mode = transaction`, `default_pool_size = 2`) in
//! front of the test cluster: many client connections share two server connections, and each
//! transaction selects its tenant and user with `udm_use(tenant, user, is_local => true)`.
//!
//! Checked: two tenants with members of different roles (access control on) interleave over the
//! two server connections from many threads, and nobody acts in another's tenant or as another
//! user (writes attributed to the right user in the rows and the audit, reads showing exactly
//! what that user's tenant shows them); a transaction that forgot `udm_use` is refused instead of
//! inheriting the previous client's selection; a failed local `udm_use` voids nothing beyond its
//! transaction; a selection for the session stays on the server connection for the next client
//! (the hazard the README describes), and `udm.require_local_selection` refuses it.

use postgres::{Client, NoTls};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use udm_tests::*;

const POOL_PORT: u16 = 6432;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A pgbouncer of this test, stopped when dropped (also when the test panics).
struct Bouncer {
    child: Child,
    dir: PathBuf,
}

impl Bouncer {
    /// Starts pgbouncer in transaction mode for `users` (trusted, as the test cluster is), in
    /// front of the test database; it listens on a unix socket in its own directory only.
    fn start(name: &str, users: &[&str]) -> Bouncer {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("target").join(format!("pooler-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let db = env("UDM_TEST_DB", "udm_it");
        let conf = format!(
            "[databases]\n\
             {db} = host={host} port={port} dbname={db}\n\
             [pgbouncer]\n\
             listen_addr =\n\
             listen_port = {POOL_PORT}\n\
             unix_socket_dir = {dir}\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 2\n\
             min_pool_size = 0\n\
             reserve_pool_size = 0\n\
             max_client_conn = 100\n\
             server_reset_query =\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            host = env("UDM_TEST_HOST", "/work/main/target/test-cluster/sock"),
            port = env("UDM_TEST_PORT", "5498"),
            dir = dir.display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), conf).unwrap();
        let users: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("users.txt"), users).unwrap();
        let mut cmd = Command::new(env("PGBOUNCER", "pgbouncer"));
        if is_root() {
            // pgbouncer refuses to run as root: it switches to postgres, who owns its directory
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", &dir.display().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {}", dir.display());
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start pgbouncer (Debian package pgbouncer, see the Makefile): {e}")
            });
        let mut b = Bouncer { child, dir };
        let socket = b.dir.join(format!(".s.PGSQL.{POOL_PORT}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!("pgbouncer exited ({status}): {}", b.log());
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn conn_string(&self, user: &str) -> String {
        format!(
            "host={} port={POOL_PORT} dbname={} user={user} connect_timeout=10",
            self.dir.display(),
            env("UDM_TEST_DB", "udm_it")
        )
    }

    fn connect(&self, user: &str) -> Client {
        pool_connect(&self.conn_string(user))
            .unwrap_or_else(|e| panic!("connect through pgbouncer as {user}: {e}\n{}", self.log()))
    }
}

/// Connects through the pool. A connect refused by the socket itself (a loaded machine: a CI run
/// once saw one of eight simultaneous connects fail before pgbouncer logged it) is tried again a
/// few times; anything pgbouncer or PostgreSQL answers is returned at once. The error names its
/// cause in full.
fn pool_connect(target: &str) -> Result<Client, String> {
    let mut tries = 0;
    loop {
        match Client::connect(target, NoTls) {
            Ok(c) => return Ok(c),
            Err(e) if e.as_db_error().is_none() && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100 * tries));
            }
            Err(e) => return Err(format!("{e} ({e:?}), after {} tries", tries + 1)),
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A member of a tenant acting through the pool.
#[derive(Clone, Debug)]
struct Actor {
    tenant: String,
    other: String,
    email: String,
    id: String,
    role: &'static str,
}

/// What the setup made: the actors, and the one record each tenant's viewer was granted.
struct World {
    app: String,
    actors: Vec<Actor>,
    granted: HashMap<String, String>,
}

const DOC: &str = r#"{"fields": [
    {"name": "body", "type": "text", "required": true},
    {"name": "owner_id", "type": "user"}],
  "access": {"scope": "self", "owner": "owner_id"}}"#;

fn setup(adm: &mut Client, prefix: &str) -> World {
    let (ta, tb) = (
        tenant(adm, &format!("{prefix}a")),
        tenant(adm, &format!("{prefix}b")),
    );
    let app = login_role(adm, &format!("{prefix}app"));
    // a hung server statement fails the test instead of hanging it
    adm.batch_execute(&format!(
        "ALTER ROLE \"{app}\" SET statement_timeout = '20s'"
    ))
    .unwrap();
    let mut actors = Vec::new();
    let mut granted = HashMap::new();
    for (t, other) in [(&ta, &tb), (&tb, &ta)] {
        grant_tenant(adm, t, &app);
        json(adm, &format!("SELECT udm_use({})", lit(t)));
        json(
            adm,
            &format!("SELECT udm_define_entity('doc', {})", lit(DOC)),
        );
        for role in ["admin", "editor", "editor", "viewer"] {
            let email = format!("{}@{t}.test", unique(role));
            let id: String = scalar(
                adm,
                &format!(
                    "SELECT udm_create_user({}, 'Someone', 'a-long-password')->>'id'",
                    lit(&email)
                ),
            );
            json(
                adm,
                &format!(
                    "SELECT udm_add_member({}, {}, {})",
                    lit(t),
                    lit(&email),
                    lit(role)
                ),
            );
            actors.push(Actor {
                tenant: t.clone(),
                other: other.clone(),
                email,
                id,
                role,
            });
        }
        // the viewer sees one record: an editor's, granted to them
        let editor = actors
            .iter()
            .find(|a| &a.tenant == t && a.role == "editor")
            .unwrap()
            .clone();
        let viewer = actors
            .iter()
            .find(|a| &a.tenant == t && a.role == "viewer")
            .unwrap()
            .clone();
        let mut c = connect_as(&app);
        c.query_one("SELECT udm_use($1, $2)", &[t, &editor.email])
            .unwrap();
        let doc: String = scalar(
            &mut c,
            &format!(
                "SELECT udm_insert('doc', jsonb_build_object('body', {}))->>'id'",
                lit(&format!("{t}|{}|setup", editor.id))
            ),
        );
        json(
            &mut c,
            &format!(
                "SELECT udm_grant({}, 'viewer', 'doc:{doc}')",
                lit(&viewer.email)
            ),
        );
        granted.insert(t.clone(), doc);
    }
    World {
        app,
        actors,
        granted,
    }
}

/// What one client thread did: markers of committed and rolled-back writes, by actor id.
#[derive(Default)]
struct Done {
    committed: Vec<(String, String)>,
    rolled_back: Vec<String>,
    forgot: usize,
}

fn rows(tx: &mut postgres::Transaction, sql: &str) -> Vec<(String, Option<String>)> {
    tx.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// One transaction as `a`: select, check the selection, write (editors and admins), read and
/// check that exactly what `a` may see shows, and commit or roll back.
fn act(c: &mut Client, a: &Actor, granted: &str, marker: &str, commit: bool, done: &mut Done) {
    let mut tx = c.transaction().unwrap();
    let sel: serde_json::Value = tx
        .query_one(
            "SELECT udm_use($1, $2, is_local => true)",
            &[&a.tenant, &a.email],
        )
        .unwrap_or_else(|e| panic!("udm_use as {}: {}", a.email, message(&e)))
        .get(0);
    assert_eq!(sel["user_id"], json!(a.id), "{sel}");
    let now: (Option<String>, String) = {
        let r = tx
            .query_one(
                "SELECT udm_current_tenant(), current_setting('udm.user_id')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(now, (Some(a.tenant.clone()), a.id.clone()), "{}", a.email);
    let t = &a.tenant;
    if a.role == "viewer" {
        // a viewer writes nothing
        let mut sp = tx.savepoint("refused").unwrap();
        let e = sp
            .execute(
                &format!("INSERT INTO \"{t}\".doc (body) VALUES ($1)"),
                &[&marker],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        sp.rollback().unwrap();
    } else {
        let row: serde_json::Value = tx
            .query_one(
                "SELECT udm_insert('doc', jsonb_build_object('body', $1::text))",
                &[&format!("{marker}|udm")],
            )
            .unwrap_or_else(|e| panic!("udm_insert as {}: {}", a.email, message(&e)))
            .get(0);
        assert_eq!(row["created_by"], json!(a.id), "{row}");
        assert_eq!(row["owner_id"], json!(a.id), "{row}");
        let r = tx
            .query_one(
                &format!(
                    "INSERT INTO \"{t}\".doc (body) VALUES ($1) RETURNING created_by, updated_by, owner_id::text"
                ),
                &[&format!("{marker}|sql")],
            )
            .unwrap_or_else(|e| panic!("INSERT as {}: {}", a.email, message(&e)));
        let who: (String, String, String) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(who, (a.id.clone(), a.id.clone(), a.id.clone()));
        let n = tx
            .execute(
                &format!("UPDATE \"{t}\".doc SET body = body || '|upd' WHERE body = $1"),
                &[&format!("{marker}|sql")],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    // plain SQL shows what the user may see: their own records (editors), the granted one
    // (viewers), the tenant's (admins); never a record of the other tenant
    for (body, owner) in rows(
        &mut tx,
        &format!("SELECT body, owner_id::text FROM \"{t}\".doc"),
    ) {
        assert!(body.starts_with(&format!("{t}|")), "{body} in {t}");
        match a.role {
            "editor" => assert_eq!(owner.as_deref(), Some(a.id.as_str()), "{body}"),
            "viewer" => assert!(body.ends_with("|setup"), "{body}"),
            _ => {}
        }
    }
    let other: i64 = tx
        .query_one(&format!("SELECT count(*) FROM \"{}\".doc", a.other), &[])
        .unwrap()
        .get(0);
    assert_eq!(other, 0, "{} sees nothing of {}", a.email, a.other);
    // the udm functions read the same
    let page: serde_json::Value = tx
        .query_one(
            r#"SELECT udm_query('doc', '{"columns": ["id", "body", "owner_id"], "limit": 1000}')"#,
            &[],
        )
        .unwrap()
        .get(0);
    let page = page["rows"].as_array().unwrap().clone();
    for r in &page {
        let body = r["body"].as_str().unwrap();
        assert!(body.starts_with(&format!("{t}|")), "{r}");
        if a.role == "editor" {
            assert_eq!(r["owner_id"], json!(a.id), "{r}");
        }
    }
    match a.role {
        "viewer" => {
            assert_eq!(page.len(), 1, "{page:?}");
            assert_eq!(page[0]["id"], json!(granted));
        }
        _ => {
            // this transaction's own records are among them
            for kind in ["udm", "sql|upd"] {
                let mine = format!("{marker}|{kind}");
                assert!(
                    page.iter().any(|r| r["body"] == json!(mine)),
                    "{mine} not in {page:?}"
                );
            }
        }
    }
    if a.role != "viewer" {
        if commit {
            done.committed.push((marker.to_string(), a.id.clone()));
        } else {
            done.rolled_back.push(marker.to_string());
        }
    }
    if commit {
        tx.commit().unwrap();
    } else {
        tx.rollback().unwrap();
    }
}

/// A transaction that forgot `udm_use`: refused by udm, shown nothing and allowed nothing by
/// plain SQL, whatever the previous transaction on its server connection selected.
fn forgot(c: &mut Client, w: &World) {
    let mut tx = c.transaction().unwrap();
    let e = tx
        .query_one(r#"SELECT udm_query('doc', '{}')"#, &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    let msg = message(&e);
    assert!(
        msg.contains("no tenant selected") && !msg.contains("failed") && !msg.contains("nobody"),
        "nothing of another client's selection: {msg}"
    );
    tx.rollback().unwrap();
    let mut tx = c.transaction().unwrap();
    let (now, user): (Option<String>, Option<String>) = {
        let r = tx
            .query_one(
                "SELECT udm_current_tenant(), nullif(current_setting('udm.user_id', true), '')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((now, user), (None, None));
    for t in w.granted.keys() {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM \"{t}\".doc"), &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "no member selected: no rows of {t}");
    }
    let t = w.granted.keys().next().unwrap();
    let e = tx
        .execute(
            &format!("INSERT INTO \"{t}\".doc (body) VALUES ('nobody')"),
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    tx.rollback().unwrap();
}

#[test]
fn transaction_pooling_keeps_tenants_and_users_apart() {
    let started = Instant::now();
    let mut adm = admin();
    let w = setup(&mut adm, "pool");
    let pool = Bouncer::start("apart", &[&w.app]);
    let (threads, per_thread) = (8usize, 24usize);
    let w = std::sync::Arc::new(w);
    // the threads get only where to connect: the pgbouncer stays this thread's, stopped when it
    // drops, also when a thread failed or hangs and this thread panics
    let target = pool.conn_string(&w.app);
    let (tx, rx) = mpsc::channel();
    for n in 0..threads {
        let (w, target, tx) = (w.clone(), target.clone(), tx.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut c = pool_connect(&target)
                    .unwrap_or_else(|e| panic!("connect through pgbouncer: {e}"));
                let mut done = Done::default();
                for i in 0..per_thread {
                    let a = &w.actors[(n * 3 + i) % w.actors.len()];
                    match i % 8 {
                        // a transaction that forgot udm_use, after others' selections
                        3 => {
                            forgot(&mut c, &w);
                            done.forgot += 1;
                        }
                        // a failed selection: refused, rolled back, and nothing of it stays
                        5 => {
                            let mut t = c.transaction().unwrap();
                            let e = t
                                .query_one(
                                    "SELECT udm_use($1, $2, is_local => true)",
                                    &[&a.tenant, &format!("nobody{n}x{i}@example.test")],
                                )
                                .unwrap_err();
                            assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
                            t.rollback().unwrap();
                        }
                        _ => {
                            let marker = format!("{}|{}|{n}|{i}", a.tenant, a.id);
                            act(
                                &mut c,
                                a,
                                &w.granted[&a.tenant],
                                &marker,
                                i % 7 != 6,
                                &mut done,
                            );
                        }
                    }
                }
                done
            }));
            let _ = tx.send(r.map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            }));
        });
    }
    drop(tx);
    let mut all = Done::default();
    for _ in 0..threads {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(Ok(d)) => {
                all.committed.extend(d.committed);
                all.rolled_back.extend(d.rolled_back);
                all.forgot += d.forgot;
            }
            Ok(Err(p)) => panic!("a client thread failed: {p}\n{}", pool.log()),
            Err(e) => panic!("client threads did not finish in time: {e}"),
        }
    }
    assert!(all.committed.len() > 50 && !all.rolled_back.is_empty() && all.forgot > 8);
    // they shared the two server connections
    let servers: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = {}",
            lit(&w.app)
        ),
    );
    assert!(servers <= 2, "{servers} server connections");

    // every committed write is there once, attributed to its user in the row and the audit;
    // nothing of a rolled-back one is
    let mut by_marker: BTreeMap<String, (String, String, String, String, Vec<String>)> =
        BTreeMap::new();
    for t in w.granted.keys() {
        for r in adm
            .query(
                &format!(
                    "SELECT d.body, d.created_by, d.updated_by, d.owner_id::text, \
                       array(SELECT a.user_id FROM \"{t}\"._udm_audit a \
                             WHERE a.record_id = d.id ORDER BY a.audit_id) \
                     FROM \"{t}\".doc d"
                ),
                &[],
            )
            .unwrap()
        {
            let body: String = r.get(0);
            assert!(body.starts_with(&format!("{t}|")), "{body} in {t}");
            by_marker.insert(body, (t.clone(), r.get(1), r.get(2), r.get(3), r.get(4)));
        }
    }
    for (marker, id) in &all.committed {
        for (kind, audit_rows) in [("udm", 1), ("sql|upd", 2)] {
            let body = format!("{marker}|{kind}");
            let (t, created, updated, owner, audit) = by_marker
                .remove(&body)
                .unwrap_or_else(|| panic!("{body} was committed"));
            assert!(marker.starts_with(&format!("{t}|{id}|")));
            assert_eq!((&created, &updated, &owner), (id, id, id), "{body}");
            assert_eq!(audit, vec![id.clone(); audit_rows], "{body}: audit");
        }
    }
    for marker in &all.rolled_back {
        assert!(
            !by_marker
                .keys()
                .any(|b| b.starts_with(&format!("{marker}|"))),
            "{marker} was rolled back"
        );
    }
    // what is left is the setup's records
    assert_eq!(by_marker.len(), 2, "{:?}", by_marker.keys());
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}

/// The backend pid and what a transaction of `c` starts with.
fn server_state(c: &mut Client) -> (i32, Option<String>, Option<String>) {
    let r = c
        .query_one(
            "SELECT pg_backend_pid(), udm_current_tenant(), nullif(current_setting('udm.user_id', true), '')",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn a_failed_local_selection_ends_with_its_transaction() {
    let mut adm = admin();
    let w = setup(&mut adm, "pfail");
    let pool = Bouncer::start("failed", &[&w.app]);
    let a = w.actors.iter().find(|a| a.role == "editor").unwrap();
    let mut x = pool.connect(&w.app);
    let mut y = pool.connect(&w.app);
    // x fails a selection on one server connection; y's next transactions there start clean
    let mut hits = 0;
    for round in 0..10 {
        let mut t = x.transaction().unwrap();
        let pid: i32 = t.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let e = t
            .query_one(
                "SELECT udm_use($1, 'nobody@example.test', is_local => true)",
                &[&a.tenant],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        t.rollback().unwrap();
        let (p, tenant, user) = server_state(&mut y);
        assert_eq!((&tenant, &user), (&None, &None), "round {round}");
        if p == pid {
            hits += 1;
            let mut t = y.transaction().unwrap();
            let e = t.query_one("SELECT udm_describe('doc')", &[]).unwrap_err();
            let msg = message(&e);
            assert_eq!(sqlstate(&e), "55000", "{msg}");
            assert!(
                !msg.contains("nobody@example.test") && !msg.contains("failed"),
                "x's failed call is not y's business: {msg}"
            );
            t.rollback().unwrap();
            // and y's own selection works there
            let mut t = y.transaction().unwrap();
            t.query_one(
                "SELECT udm_use($1, $2, is_local => true)",
                &[&a.tenant, &a.email],
            )
            .unwrap();
            let d: serde_json::Value = t
                .query_one("SELECT udm_describe('doc')", &[])
                .unwrap()
                .get(0);
            assert_eq!(d["slug"], json!("doc"), "{d}");
            t.commit().unwrap();
        }
    }
    assert!(hits > 0, "y never followed x on its server connection");
    // within its transaction the failure voids the selection made before it (a savepoint
    // kept the transaction going), and the next transaction is not affected
    let mut t = x.transaction().unwrap();
    t.query_one(
        "SELECT udm_use($1, $2, is_local => true)",
        &[&a.tenant, &a.email],
    )
    .unwrap();
    let mut sp = t.savepoint("s").unwrap();
    sp.query_one("SELECT udm_use('no_such_tenant', NULL, true)", &[])
        .unwrap_err();
    sp.rollback().unwrap();
    let e = t.query_one("SELECT udm_describe('doc')", &[]).unwrap_err();
    let msg = message(&e);
    assert!(
        msg.contains("udm_use('no_such_tenant') failed"),
        "the failed call voids its transaction's selection: {msg}"
    );
    t.rollback().unwrap();
    let (_, tenant, _) = server_state(&mut x);
    assert_eq!(tenant, None);
    let mut t = x.transaction().unwrap();
    t.query_one(
        "SELECT udm_use($1, $2, is_local => true)",
        &[&a.tenant, &a.email],
    )
    .unwrap();
    t.query_one("SELECT udm_describe('doc')", &[]).unwrap();
    t.commit().unwrap();
}

#[test]
fn a_session_selection_through_a_transaction_pooler_stays_for_the_next_client() {
    let mut adm = admin();
    let w = setup(&mut adm, "psess");
    let strict = login_role(&mut adm, "pstrict");
    let a = w
        .actors
        .iter()
        .find(|a| a.role == "editor")
        .unwrap()
        .clone();
    grant_tenant(&mut adm, &a.tenant, &strict);
    adm.batch_execute(&format!(
        "ALTER ROLE \"{strict}\" SET udm.require_local_selection = on; \
         ALTER ROLE \"{strict}\" SET statement_timeout = '20s'"
    ))
    .unwrap();
    let pool = Bouncer::start("session", &[&w.app, &strict]);

    // the hazard: x selects for the session (autocommit); the server connection keeps it, and
    // y's transaction that lands there acts in x's tenant as x's user
    let mut x = pool.connect(&w.app);
    let mut y = pool.connect(&w.app);
    let t = &a.tenant;
    let pid: i32 = x
        .query_one(
            "SELECT pg_backend_pid() FROM udm_use($1, $2)",
            &[t, &a.email],
        )
        .unwrap()
        .get(0);
    let mut inherited = false;
    for _ in 0..10 {
        let (p, tenant, user) = server_state(&mut y);
        if p == pid {
            assert_eq!(
                (tenant.as_deref(), user.as_deref()),
                (Some(t.as_str()), Some(a.id.as_str()))
            );
            inherited = true;
            break;
        }
        assert_eq!((tenant, user), (None, None));
    }
    assert!(inherited, "y never landed on x's server connection");
    // y never said who it is, and writes as x's user (this is why poolers need is_local)
    let mut tx = y.transaction().unwrap();
    let p: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    if p == pid {
        let by: String = tx
            .query_one(
                &format!("INSERT INTO \"{t}\".doc (body) VALUES ('by y') RETURNING created_by"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(by, a.id);
    }
    tx.rollback().unwrap();
    // a local selection over it still ends with its transaction, back to the session's
    let mut tx = y.transaction().unwrap();
    let p: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let other = w
        .actors
        .iter()
        .find(|o| o.tenant == a.other && o.role == "admin")
        .unwrap();
    tx.query_one(
        "SELECT udm_use($1, $2, is_local => true)",
        &[&other.tenant, &other.email],
    )
    .unwrap();
    tx.commit().unwrap();
    if p == pid {
        let mut tx = y.transaction().unwrap();
        let q: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let now: Option<String> = tx
            .query_one("SELECT udm_current_tenant()", &[])
            .unwrap()
            .get(0);
        if q == pid {
            assert_eq!(now.as_deref(), Some(t.as_str()));
        }
        tx.rollback().unwrap();
    }

    // udm.require_local_selection (set by a superuser for the pool's role) refuses it
    let mut s = pool.connect(&strict);
    let e = s
        .query_one("SELECT udm_use($1, $2)", &[t, &a.email])
        .unwrap_err();
    let msg = message(&e);
    assert_eq!(sqlstate(&e), "55000", "{msg}");
    assert!(
        msg.contains("udm.require_local_selection") && msg.contains("is_local => true"),
        "{msg}"
    );
    for sql in [
        "SET udm.require_local_selection = off",
        "SET LOCAL udm.require_local_selection = off",
        "ALTER ROLE CURRENT_USER SET udm.require_local_selection = off",
    ] {
        let e = s.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
    }
    s.batch_execute("RESET ALL").unwrap();
    s.query_one("SELECT udm_use($1, $2)", &[t, &a.email])
        .unwrap_err();
    // a selection for the transaction works, and leaves nothing
    let mut tx = s.transaction().unwrap();
    tx.query_one("SELECT udm_use($1, $2, is_local => true)", &[t, &a.email])
        .unwrap();
    let by: String = tx
        .query_one(
            &format!("INSERT INTO \"{t}\".doc (body) VALUES ($1) RETURNING created_by"),
            &[&format!("{t}|{}|strict", a.id)],
        )
        .unwrap()
        .get(0);
    assert_eq!(by, a.id);
    tx.commit().unwrap();
    let (_, tenant, user) = server_state(&mut s);
    assert_eq!((tenant, user), (None, None));
    // connections without the setting keep selecting for the session
    let mut direct = connect_as(&w.app);
    direct
        .query_one("SELECT udm_use($1, $2)", &[t, &a.email])
        .unwrap();
    let now: Option<String> = scalar(&mut direct, "SELECT udm_current_tenant()");
    assert_eq!(now.as_deref(), Some(t.as_str()));
}
