//! Backups restore. A database with a tenant holding every kind of state udm keeps (the
//! scenario of `udm_tests::scenario`, which tenant moves are checked with too) is dumped with the
//! real tools and restored three ways: `pg_dump -Fc` + `pg_restore --exit-on-error` and plain
//! `pg_dump` + `psql` into new databases of the same cluster, and `pg_dump -Fc` into a new
//! cluster after `pg_dumpall --roles-only`. Each restored database must work as the original did.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use udm_tests::scenario::{populate, works, Database};
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

impl Database for Db {
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

    fn name(&self) -> &str {
        &self.name
    }
}

impl Db {
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
    src.connect("postgres")
        .batch_execute("CREATE EXTENSION udm")
        .unwrap();
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
    works(&one, &e.tenant, &e);

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
    works(&two, &e.tenant, &e);

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
    works(&three, &e.tenant, &e);

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
