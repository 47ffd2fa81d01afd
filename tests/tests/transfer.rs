//! Moving tenants (export, import, clone). A tenant holding every kind of state udm keeps (the
//! roadmap template with rules over related records, members, a defined role, relation tuples, a
//! write lock, many-to-many links, references, passwords, auto numbers, user fields, a removed
//! field with its data, a dropped entity with its data, definitions with several versions,
//! subscriptions and a consumer part way through the events, and its audit log) is exported by
//! a udm admin with `udm-tenant`'s library and imported into a new database of the same cluster
//! and, under a new slug, into the same database; each import must work as the original did and
//! have the same schema. Clones (definitions only, with data) are independent of their source.
//! Refusals: callers who are not udm admins, a slug that is taken, damaged and truncated
//! archives, archives the server finds inconsistent, newer formats, users that collide — and a
//! failed import leaves nothing behind.

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use udm_tests::scenario::{all_records, names, populate, use_as, works, Database};
use udm_tests::*;

/// Where a database lives: socket directory, port, name.
#[derive(Clone)]
struct Db {
    host: String,
    port: String,
    name: String,
}

impl Database for Db {
    fn connect(&self, user: &str) -> Client {
        self.at(&self.name, user)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Db {
    fn shared() -> Db {
        Db {
            host: std::env::var("UDM_TEST_HOST")
                .unwrap_or_else(|_| "/work/main/target/test-cluster/sock".into()),
            port: std::env::var("UDM_TEST_PORT").unwrap_or_else(|_| "5498".into()),
            name: std::env::var("UDM_TEST_DB").unwrap_or_else(|_| "udm_it".into()),
        }
    }

    /// A new database of the same cluster, with udm.
    fn create(prefix: &str) -> Db {
        let db = Db {
            name: unique(prefix),
            ..Db::shared()
        };
        let mut c = db.at("postgres", "postgres");
        c.batch_execute(&format!("CREATE DATABASE \"{}\"", db.name))
            .unwrap();
        db.connect("postgres")
            .batch_execute("CREATE EXTENSION udm")
            .unwrap();
        db
    }

    fn at(&self, dbname: &str, user: &str) -> Client {
        Client::connect(
            &format!(
                "host={} port={} dbname={dbname} user={user} application_name=udm-transfer",
                self.host, self.port
            ),
            NoTls,
        )
        .unwrap_or_else(|e| panic!("connect to {dbname} as {user}: {e}"))
    }

    fn drop(&self) {
        let mut c = self.at("postgres", "postgres");
        let _ = c.batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
        // its tenant roles are the cluster's
        let roles: Vec<String> = c
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname LIKE '%@' || $1",
                &[&self.name],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for r in roles {
            let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS \"{r}\""));
        }
    }

    /// The tenant's schema, object by object as PostgreSQL's catalog has it (columns with their
    /// types, defaults, identities and privileges; constraints, indexes, triggers, policies, row
    /// security, privileges and comments), with its role and slug made neutral. (A constraint udm
    /// added NOT VALID, having proved it from a default, is validated by an import: the same.)
    /// Columns are compared by their order; a batched tenant's pointer column `_audit_ptr`, which
    /// an import adds after the definition's columns, by name only.
    fn schema(&self, slug: &str) -> Vec<String> {
        let mut c = self.connect("postgres");
        let sql = "WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = $1) \
          SELECT line FROM ( \
            SELECT format('column %s.%s %s %s notnull=%s identity=%s default=%s acl=%s', c.relname, \
                     CASE WHEN a.attname = '_audit_ptr' THEN 'ptr' ELSE (SELECT count(*) FROM pg_attribute b \
                       WHERE b.attrelid = c.oid AND b.attnum > 0 AND b.attnum <= a.attnum AND NOT b.attisdropped \
                         AND b.attname <> '_audit_ptr')::text END, a.attname, \
                     format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid), a.attacl) AS line \
              FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
              LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
              WHERE c.relnamespace = (SELECT oid FROM s) AND c.relkind = 'r' \
            UNION ALL SELECT format('constraint %s %s %s', c.relname, k.conname, \
                     regexp_replace(pg_get_constraintdef(k.oid), ' NOT VALID$', '')) \
              FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace = (SELECT oid FROM s) \
            UNION ALL SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = $1 \
            UNION ALL SELECT format('trigger %s', pg_get_triggerdef(t.oid)) \
              FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
              WHERE c.relnamespace = (SELECT oid FROM s) AND NOT t.tgisinternal \
            UNION ALL SELECT format('policy %s %s %s %s %s', tablename, policyname, cmd, qual, with_check) \
              FROM pg_policies WHERE schemaname = $1 \
            UNION ALL SELECT format('relation %s %s rls=%s acl=%s comment=%s', c.relname, c.relkind, c.relrowsecurity, \
                     (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(coalesce(c.relacl, acldefault('r', c.relowner))) x), \
                     obj_description(c.oid, 'pg_class')) \
              FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM s) \
            UNION ALL SELECT format('schema acl=%s comment=%s', nspacl, obj_description(oid, 'pg_namespace')) \
              FROM pg_namespace WHERE nspname = $1 \
          ) x ORDER BY line";
        let role = format!("tenant_{slug}@{}", self.name);
        let lines: Vec<String> = c
            .query(sql, &[&slug])
            .unwrap()
            .iter()
            .map(|r| {
                r.get::<_, String>(0)
                    .replace(&format!("\"{role}\""), "TENANT_ROLE")
                    .replace(&role, "TENANT_ROLE")
                    .replace(slug, "SLUG")
            })
            .collect();
        assert!(lines.len() > 50, "{lines:?}");
        let mut sorted = lines;
        sorted.sort();
        sorted
    }
}

/// A login role that is a udm admin (not a superuser).
fn udm_admin_role(c: &mut Client) -> String {
    let name = login_role(c, "tradm");
    c.batch_execute(&format!("GRANT udm_admin TO \"{name}\""))
        .unwrap();
    name
}

fn export(db: &Db, user: &str, slug: &str) -> Vec<u8> {
    let mut c = db.connect(user);
    let mut out = Vec::new();
    udm_tenant::export(&mut c, slug, &mut out)
        .unwrap_or_else(|e| panic!("export {slug} from {}: {e}", db.name));
    out
}

fn import(db: &Db, user: &str, archive: &[u8], as_slug: Option<&str>) -> Result<Value, String> {
    let mut c = db.connect(user);
    udm_tenant::import(&mut c, archive, as_slug).map_err(|e| e.to_string())
}

#[test]
fn an_exported_tenant_imports_into_a_new_database_and_under_a_new_slug() {
    let src = Db::create("udm_tr_src");
    let e = populate(&src);
    let mut su = src.connect("postgres");
    let adm = udm_admin_role(&mut su);
    let archive = export(&src, &adm, &e.tenant);
    let checked = udm_tenant::check(&archive[..]).expect("the archive checks");
    assert_eq!(checked.manifest["tenant"]["slug"], json!(e.tenant));
    // an archive of a batched log has format version 2; a per-change one stays at 1
    let version = if audit_batches() { 2 } else { 1 };
    assert_eq!(checked.manifest["format_version"], json!(version));
    // the password hashes travel: the archive is as secret as the tenant's data
    let text = String::from_utf8_lossy(&archive);
    assert!(
        text.contains("$2b$04$"),
        "users' bcrypt hashes are in the archive"
    );

    // 1. a new database of the same cluster, by a udm admin (no superuser)
    let dst = Db::create("udm_tr_dst");
    let done = import(&dst, &adm, &archive, None).expect("import");
    assert_eq!(done["tenant"], json!(e.tenant));
    assert_eq!(
        done["role"],
        json!(format!("tenant_{}@{}", e.tenant, dst.name))
    );
    assert_eq!(done["users"]["added"], json!(3), "{done}");
    assert_eq!(done["audit"]["ok"], json!(true));
    assert_eq!(
        dst.schema(&e.tenant),
        src.schema(&e.tenant),
        "the imported tenant has the schema udm made for the original"
    );
    // the ids of records and of audit rows are the original's
    let ids = |db: &Db, t: &str| -> Vec<String> {
        names(
            &mut db.connect("postgres"),
            &format!(
                "SELECT audit_id::text || ' ' || record_id::text FROM \"{t}\"._udm_audit ORDER BY audit_id"
            ),
        )
    };
    assert_eq!(ids(&dst, &e.tenant), ids(&src, &e.tenant));
    if audit_batches() {
        // each row's pointer to its latest change came along: a record's history is walked
        // from it
        let ptrs = |db: &Db| -> Vec<String> {
            names(
                &mut db.connect("postgres"),
                &format!(
                    "SELECT id::text || ' ' || _audit_ptr::text FROM \"{}\".doc ORDER BY id",
                    e.tenant
                ),
            )
        };
        assert!(!ptrs(&src).is_empty());
        assert_eq!(ptrs(&dst), ptrs(&src));
    }
    works(&dst, &e.tenant, &e);
    // the original did not change
    assert_eq!(all_records(&mut su, &e.tenant), e.records);

    // 2. the same database, under a new slug: the same users (same id and email) are reused
    let copy = unique("trcopy");
    let done = import(&src, &adm, &archive, Some(&copy)).expect("import as a new slug");
    assert_eq!(done["users"]["existing"], json!(3), "{done}");
    assert_eq!(done["users"]["added"], json!(0), "{done}");
    assert_eq!(
        src.schema(&copy),
        src.schema(&e.tenant),
        "the copy has the schema of the original, under its slug"
    );
    works(&src, &copy, &e);
    // the copy is its own: the original is as it was (works changed the copy)
    assert_eq!(all_records(&mut su, &e.tenant), e.records);
    let tenants_of_alice: Vec<String> = names(
        &mut su,
        &format!(
            "SELECT tenant FROM udm.user_tenant WHERE user_id = (SELECT id FROM udm.app_user WHERE email = {}) ORDER BY 1",
            lit(&e.alice)
        ),
    );
    assert_eq!(tenants_of_alice.len(), 2, "{tenants_of_alice:?}");

    // 3. an archive of the new database's tenant (it went on living there) imports back as a
    // third copy, and its chain still verifies
    let again = export(&dst, "postgres", &e.tenant);
    let third = unique("trback");
    let done = import(&src, "postgres", &again, Some(&third)).expect("import back");
    assert_eq!(done["audit"]["ok"], json!(true));
    src.drop();
    dst.drop();
}

/// The path the README documents for a tenant that outgrows a shared database: into a cluster of
/// its own, with no roles copied there (only the application's login role and a udm admin are
/// made), through udm-tenant's export and import; everything works there as in the original,
/// and the original is dropped afterwards.
#[test]
fn a_tenant_moves_into_a_cluster_of_its_own() {
    let src = Db::create("udm_tr_mv");
    let e = populate(&src);
    let mut su = src.connect("postgres");
    let adm = udm_admin_role(&mut su);
    let archive = export(&src, &adm, &e.tenant);

    // a new cluster on a port of its own: make test TRANSFER_PORT=<port>
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/transfer-cluster");
    let cluster = root.join("tests/cluster.sh");
    let port = std::env::var("UDM_TRANSFER_PORT").unwrap_or_else(|_| "5493".into());
    let status = Command::new(&cluster)
        .args([
            "start",
            &dir.display().to_string(),
            &port,
            "fresh",
            "udm.bcrypt_cost = 4",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "start a cluster for the tenant");
    let own = Db {
        host: dir.join("sock").display().to_string(),
        port,
        name: unique("udm_tr_own"),
    };
    let mut c = own.at("postgres", "postgres");
    c.batch_execute(&format!("CREATE DATABASE \"{}\"", own.name))
        .unwrap();
    c.batch_execute(&format!(
        "CREATE ROLE \"{}\" LOGIN; CREATE ROLE \"{adm}\" LOGIN",
        e.app
    ))
    .unwrap();
    own.connect("postgres")
        .batch_execute(&format!(
            "CREATE EXTENSION udm; GRANT udm_admin TO \"{adm}\""
        ))
        .unwrap();
    // a non-admin there is refused, and leaves nothing
    let refused = import(&own, &e.app, &archive, None).expect_err("not a udm admin");
    assert!(refused.contains("42501"), "{refused}");
    nothing_of(&own, &e.tenant, 0);
    let done = import(&own, &adm, &archive, None).expect("import into the new cluster");
    assert_eq!(
        done["role"],
        json!(format!("tenant_{}@{}", e.tenant, own.name))
    );
    assert_eq!(done["users"]["added"], json!(3), "{done}");
    assert_eq!(done["audit"]["ok"], json!(true));
    assert_eq!(
        own.schema(&e.tenant),
        src.schema(&e.tenant),
        "the tenant has the schema udm made for the original"
    );
    works(&own, &e.tenant, &e);
    // the old copy goes
    json(
        &mut su,
        &format!(
            "SELECT udm_drop_tenant({}, {})",
            lit(&e.tenant),
            lit(&e.tenant)
        ),
    );
    let left: i64 = scalar(
        &mut su,
        &format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = {}",
            lit(&e.tenant)
        ),
    );
    assert_eq!(left, 0);
    src.drop();
    let _ = Command::new(&cluster)
        .args(["stop", &dir.display().to_string()])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An archive written anew from `archive`, with `edit` applied to its manifest and sections:
/// well framed (digests and lengths as the new content has them), so only the server can tell.
fn rewrite(
    archive: &[u8],
    edit_manifest: impl Fn(&mut Value),
    edit: impl Fn(&str, String) -> String,
) -> Vec<u8> {
    let mut r = udm_tenant::Reader::open(archive).unwrap();
    let mut m: Value = serde_json::from_str(&r.manifest).unwrap();
    let sections: Vec<String> = m["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let mut data = Vec::new();
    for s in &sections {
        let mut out = Vec::new();
        r.section(s, &mut out).unwrap();
        data.push(edit(s, String::from_utf8(out).unwrap()));
    }
    for (i, d) in data.iter().enumerate() {
        m["sections"][i]["rows"] = json!(d.matches('\n').count());
    }
    edit_manifest(&mut m);
    let mut w = udm_tenant::Writer::new(Vec::new(), &m.to_string()).unwrap();
    for (s, d) in sections.iter().zip(&data) {
        w.section(s, &mut d.as_bytes()).unwrap();
    }
    w.finish().unwrap()
}

/// Nothing of tenant `slug` is in `db`: no registry row, schema, role, users it brought.
fn nothing_of(db: &Db, slug: &str, users_before: i64) {
    let mut su = db.connect("postgres");
    let left: i64 = scalar(
        &mut su,
        &format!(
            "SELECT (SELECT count(*) FROM udm.tenant WHERE slug = {s}) \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = {s}) \
                  + (SELECT count(*) FROM pg_roles WHERE rolname = {r}) \
                  + (SELECT count(*) FROM udm.user_tenant WHERE tenant = {s})",
            s = lit(slug),
            r = lit(&format!("tenant_{slug}@{}", db.name))
        ),
    );
    assert_eq!(
        left, 0,
        "a failed import of {slug} left something in {}",
        db.name
    );
    let users: i64 = scalar(&mut su, "SELECT count(*) FROM udm.app_user");
    assert_eq!(users, users_before, "a failed import added users");
}

#[test]
fn damaged_archives_and_refusals_leave_nothing() {
    let src = Db::create("udm_tr_bad");
    let mut su = src.connect("postgres");
    let tenant = tenant(&mut su, "trbad");
    let member = login_role(&mut su, "trmember");
    grant_tenant(&mut su, &tenant, &member);
    let user = format!("{}@bad.test", unique("dora"));
    json(
        &mut su,
        &format!(
            "SELECT udm_create_user({}, 'Dora', 'a-long-password')",
            lit(&user)
        ),
    );
    su.query_one("SELECT udm_use($1)", &[&tenant]).unwrap();
    su.batch_execute(&format!(
        r#"SELECT udm_define_entity('item', '{{"fields": [{{"name": "title", "type": "text", "required": true, "max_length": 20}},
             {{"name": "n", "type": "auto_number"}}, {{"name": "owner", "type": "user"}}]}}');
           SELECT udm_add_member({t}, {u}, 'admin');
           SELECT udm_use({t}, {u});
           INSERT INTO "{tenant}".item (title) SELECT 'item ' || i FROM generate_series(1, 50) i;
           UPDATE "{tenant}".item SET title = title || '!' WHERE n % 2 = 0;"#,
        t = lit(&tenant),
        u = lit(&user)
    ))
    .unwrap();
    let adm = udm_admin_role(&mut su);
    let archive = export(&src, &adm, &tenant);
    let dst = Db::create("udm_tr_bad_dst");
    let users_before = |db: &Db| -> i64 {
        scalar(
            &mut db.connect("postgres"),
            "SELECT count(*) FROM udm.app_user",
        )
    };
    let before = users_before(&dst);

    // only udm admins (and the owner) export, import and clone; a tenant's own role may not
    let mut m = src.connect(&member);
    for sql in [
        format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT udm_export({})",
            lit(&tenant)
        ),
        "SELECT udm_import_begin('{}')".to_string(),
        format!("SELECT udm_import_finish({})", lit(&tenant)),
        format!("SELECT udm_clone_tenant({}, 'stolen')", lit(&tenant)),
        format!(
            "SELECT * FROM udm.export_rows({}, 'item') AS t(id uuid)",
            lit(&tenant)
        ),
    ] {
        let msg = expect_err(&mut m, &sql, "42501");
        assert!(msg.contains("permission denied"), "{msg}");
        m.batch_execute("ROLLBACK").unwrap();
    }
    let mut out = Vec::new();
    let err = udm_tenant::export(&mut src.connect(&member), &tenant, &mut out).unwrap_err();
    assert!(err.to_string().contains("not a udm admin"), "{err}");
    let err = import(&dst, &member, &archive, None).unwrap_err();
    assert!(
        err.contains("permission denied to import a tenant"),
        "{err}"
    );
    nothing_of(&dst, &tenant, before);

    // a slug that is taken
    let err = import(&src, &adm, &archive, None).unwrap_err();
    assert!(
        err.contains(&format!("tenant \"{tenant}\" already exists")) && err.contains("42P06"),
        "{err}"
    );
    // a bad slug
    let err = import(&dst, &adm, &archive, Some("Bad Slug")).unwrap_err();
    assert!(err.contains("42602"), "{err}");
    nothing_of(&dst, "Bad Slug", before);

    // damage the tool sees: a changed byte, truncation anywhere, a missing section
    let at = archive.len() / 2;
    let mut flipped = archive.clone();
    flipped[at] ^= 0x20;
    for (what, bad) in [
        ("a changed byte", flipped),
        ("cut in half", archive[..at].to_vec()),
        (
            "cut before its last line",
            archive[..archive.len() - 10].to_vec(),
        ),
        ("cut in the manifest", archive[..200].to_vec()),
        ("empty", Vec::new()),
        ("not an archive", b"PGDMP\x01\x0e\x00".to_vec()),
    ] {
        let err = import(&dst, &adm, &bad, None).unwrap_err();
        assert!(
            err.contains("damaged or truncated") || err.contains("not a udm tenant archive"),
            "{what}: {err}"
        );
        assert!(
            udm_tenant::check(&bad[..]).is_err(),
            "check finds it {what}"
        );
        nothing_of(&dst, &tenant, before);
    }

    // damage only the server sees (a well framed archive whose content is wrong)
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "an audit row changed",
            rewrite(
                &archive,
                |_| {},
                |s, d| {
                    let log = if audit_batches() {
                        "_udm_audit_log"
                    } else {
                        "_udm_audit"
                    };
                    if s == log {
                        d.replacen("item 3", "item 9", 1)
                    } else {
                        d
                    }
                },
            ),
            "22P04",
            "its audit log does not verify",
        ),
        (
            "a record that breaks a rule",
            rewrite(
                &archive,
                |_| {},
                |s, d| {
                    if s == "item" {
                        d.replacen("item 1\t", "an item title far too long\t", 1)
                    } else {
                        d
                    }
                },
            ),
            "23514",
            "item.title",
        ),
        (
            "two records with one id",
            rewrite(
                &archive,
                |_| {},
                |s, d| {
                    if s == "item" {
                        let first = d.lines().next().unwrap().to_string();
                        format!("{d}{}\n", first.replacen("item 1", "item x", 1))
                    } else {
                        d
                    }
                },
            ),
            "23505",
            "item__pkey",
        ),
        (
            "a definition that is not the catalog's",
            rewrite(
                &archive,
                |m| {
                    m["entities"][0]["definition"]["fields"][0]["max_length"] = json!(30);
                },
                |_, d| d,
            ),
            "22P04",
            "is not the one the manifest planned its tables from",
        ),
        (
            "a newer format",
            rewrite(
                &archive,
                |m| {
                    m["format_version"] = json!(99);
                    m["udm_version"] = json!("7.0.0");
                },
                |_, d| d,
            ),
            "0A000",
            "format version 99 (written by udm 7.0.0)",
        ),
        (
            "a user without a password hash",
            rewrite(
                &archive,
                |_| {},
                |s, d| {
                    if s == "udm.app_user" {
                        d.split('\t')
                            .enumerate()
                            .map(|(i, f)| if i == 3 { "\\N" } else { f })
                            .collect::<Vec<_>>()
                            .join("\t")
                    } else {
                        d
                    }
                },
            ),
            "22P04",
            "is not a user udm would have",
        ),
    ];
    for (what, bad, code, words) in cases {
        let err = import(&dst, &adm, &bad, None).unwrap_err();
        assert!(err.contains(code) && err.contains(words), "{what}: {err}");
        nothing_of(&dst, &tenant, before);
    }
    // the server counts the rows too: load an archive's sections by hand, one row short
    {
        let mut c = dst.connect(&adm);
        let mut r = udm_tenant::Reader::open(&archive[..]).unwrap();
        let mut tx = c.transaction().unwrap();
        let began: String = tx
            .query_one(
                "SELECT udm_import_begin($1::text::jsonb)::text",
                &[&r.manifest],
            )
            .unwrap()
            .get(0);
        let began: Value = serde_json::from_str(&began).unwrap();
        for st in began["statements"].as_array().unwrap() {
            let name = st["section"].as_str().unwrap();
            let mut data = Vec::new();
            r.section(name, &mut data).unwrap();
            if name == "item" {
                let text = String::from_utf8(data).unwrap();
                data = text
                    .lines()
                    .skip(1)
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
                    .into_bytes();
            }
            let mut w = tx.copy_in(st["copy"].as_str().unwrap()).unwrap();
            std::io::Write::write_all(&mut w, &data).unwrap();
            w.finish().unwrap();
        }
        let err = tx
            .query_one("SELECT udm_import_finish($1)", &[&tenant])
            .unwrap_err();
        assert_eq!(sqlstate(&err), "22P04", "{}", message(&err));
        assert!(
            message(&err).contains("section \"item\" holds 49 rows, the manifest says 50"),
            "{}",
            message(&err)
        );
    }
    nothing_of(&dst, &tenant, before);

    // a commit without the finish keeps nothing
    {
        let mut c = dst.connect(&adm);
        let r = udm_tenant::Reader::open(&archive[..]).unwrap();
        c.batch_execute("BEGIN").unwrap();
        c.query_one("SELECT udm_import_begin($1::text::jsonb)", &[&r.manifest])
            .unwrap();
        let err = c.batch_execute("COMMIT").unwrap_err();
        assert_eq!(sqlstate(&err), "55000");
        assert!(
            message(&err).contains("was not finished"),
            "{}",
            message(&err)
        );
        // and a finish of nothing begun is refused
        let err = c
            .query_one("SELECT udm_import_finish($1)", &[&tenant])
            .unwrap_err();
        assert!(
            message(&err).contains("no import of tenant"),
            "{}",
            message(&err)
        );
    }
    nothing_of(&dst, &tenant, before);

    // users that collide with this database's: refused naming the user, nothing kept
    let mut d = dst.connect("postgres");
    json(
        &mut d,
        &format!(
            "SELECT udm_create_user({}, 'Other Dora', 'another-password')",
            lit(&user)
        ),
    );
    let before = users_before(&dst);
    let err = import(&dst, &adm, &archive, None).unwrap_err();
    assert!(
        err.contains("23505")
            && err.contains(&user)
            && err.contains("has the email of another user"),
        "{err}"
    );
    nothing_of(&dst, &tenant, before);
    let id: String = scalar(
        &mut su,
        &format!(
            "SELECT id::text FROM udm.app_user WHERE email = {}",
            lit(&user)
        ),
    );
    d.batch_execute(&format!(
        "DELETE FROM udm.app_user WHERE email = {u}; \
         INSERT INTO udm.app_user (id, email, name, password_hash, created_by) \
         VALUES ('{id}', 'someone-else@bad.test', 'Else', 'x', 'test')",
        u = lit(&user)
    ))
    .unwrap();
    let err = import(&dst, &adm, &archive, None).unwrap_err();
    assert!(
        err.contains("23505")
            && err.contains(&format!(
                "this database's user {id} is \"someone-else@bad.test\""
            )),
        "{err}"
    );
    nothing_of(&dst, &tenant, before);
    // once the other user is out of the way, the same archive imports
    d.batch_execute(&format!("DELETE FROM udm.app_user WHERE id = '{id}'"))
        .unwrap();
    let done = import(&dst, &adm, &archive, None).expect("import");
    assert_eq!(done["rows"]["item"], json!(50));
    let next: i64 = scalar(
        &mut d,
        &format!("SELECT nextval(pg_get_serial_sequence('\"{tenant}\".item', 'n'))"),
    );
    assert_eq!(next, 51, "auto numbers continue after the imported ones");
    src.drop();
    dst.drop();
}

#[test]
fn clones_are_independent_copies() {
    let mut adm = admin();
    let src = tenant(&mut adm, "trsrc");
    let user = format!("{}@clone.test", unique("eve"));
    json(
        &mut adm,
        &format!(
            "SELECT udm_create_user({}, 'Eve', 'a-long-password')",
            lit(&user)
        ),
    );
    adm.query_one("SELECT udm_use($1)", &[&src]).unwrap();
    adm.batch_execute(&format!(
        r#"SELECT udm_define_entity('cat', '{{"fields": [{{"name": "name", "type": "text", "required": true, "unique": true}}]}}');
           SELECT udm_define_entity('item', '{{"fields": [
             {{"name": "title", "type": "text", "required": true}},
             {{"name": "n", "type": "auto_number"}},
             {{"name": "price", "type": "decimal", "min": 0}},
             {{"name": "cat_id", "type": "relation", "target": "cat", "on_delete": "restrict"}},
             {{"name": "cats", "type": "relation", "target": "cat", "many": true}}],
             "rules": [{{"name": "cheap_or_named", "check": "price < 100 or length(title) > 3"}}]}}');
           SELECT udm_add_field('item', '{{"name": "note", "type": "text"}}');
           SELECT udm_add_member({t}, {u}, 'admin');
           SELECT udm_use({t}, {u});
           SELECT udm_define_role('buyer', 'viewer', '{{"entities": {{"item": {{"update": true}}}}}}');
           INSERT INTO "{src}".cat (name) VALUES ('a'), ('b');
           INSERT INTO "{src}".item (title, price, cat_id) SELECT 'item ' || i, i, (SELECT id FROM "{src}".cat WHERE name = 'a') FROM generate_series(1, 20) i;
           INSERT INTO "{src}".item__cats SELECT i.id, c.id FROM "{src}".item i, "{src}".cat c WHERE i.n <= 5;
           UPDATE "{src}".item SET price = price + 1 WHERE n <= 10;"#,
        t = lit(&src),
        u = lit(&user)
    ))
    .unwrap();
    let history: Vec<String> = names(
        &mut adm,
        "SELECT version || ' ' || (change->>'op') FROM udm_entity_history('item') ORDER BY version",
    );

    // definitions only: the same entities and versions, no records, no members, an empty log
    let plain = unique("trdef");
    let done = json(
        &mut adm,
        &format!("SELECT udm_clone_tenant({}, {})", lit(&src), lit(&plain)),
    );
    assert_eq!(done["with_data"], json!(false));
    adm.query_one("SELECT udm_use($1)", &[&plain]).unwrap();
    assert_eq!(
        names(
            &mut adm,
            "SELECT version || ' ' || (change->>'op') FROM udm_entity_history('item') ORDER BY version"
        ),
        history
    );
    let records: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT (SELECT count(*) FROM \"{plain}\".item) + (SELECT count(*) FROM \"{plain}\".cat) \
                  + (SELECT count(*) FROM \"{plain}\"._udm_audit) + (SELECT count(*) FROM \"{plain}\".item__cats)"
        ),
    );
    assert_eq!(records, 0);
    assert_eq!(
        names(&mut adm, "SELECT name FROM udm_roles() WHERE NOT builtin"),
        ["buyer"]
    );
    assert_eq!(names(&mut adm, "SELECT email FROM udm_members()").len(), 0);
    adm.batch_execute(&format!(
        "INSERT INTO \"{plain}\".cat (name) VALUES ('x'); \
         INSERT INTO \"{plain}\".item (title, price, cat_id) SELECT 'new', 5, id FROM \"{plain}\".cat"
    ))
    .unwrap();
    let n: i64 = scalar(&mut adm, &format!("SELECT n FROM \"{plain}\".item"));
    assert_eq!(n, 1, "auto numbers start over");
    expect_err(
        &mut adm,
        &format!("INSERT INTO \"{plain}\".item (title, price) VALUES ('no', 500)"),
        "23514",
    );
    let v = json(&mut adm, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["rows_checked"], json!(2));

    // with data: the same records, members, roles, links and log; independent from then on
    let full = unique("trfull");
    let done = json(
        &mut adm,
        &format!(
            "SELECT udm_clone_tenant({}, {}, true)",
            lit(&src),
            lit(&full)
        ),
    );
    assert_eq!(done["rows"]["item"], json!(20), "{done}");
    assert_eq!(done["audit"]["ok"], json!(true));
    let snapshot = |c: &mut Client, t: &str| -> Vec<String> {
        names(
            c,
            &format!("SELECT to_jsonb(i)::text FROM \"{t}\".item i ORDER BY id"),
        )
    };
    assert_eq!(snapshot(&mut adm, &full), snapshot(&mut adm, &src));
    let role = login_role(&mut adm, "trclone");
    grant_tenant(&mut adm, &full, &role);
    let mut c = connect_as(&role);
    use_as(&mut c, &full, &user);
    assert_eq!(
        names(&mut c, "SELECT email FROM udm_members()"),
        [user.as_str()],
        "members came along (access control is on)"
    );
    // writes to the clone do not touch the source, and the other way round
    c.batch_execute(&format!(
        "UPDATE \"{full}\".item SET price = 0 WHERE n = 1; DELETE FROM \"{full}\".item__cats; \
         INSERT INTO \"{full}\".item (title, price) VALUES ('cloned only', 1)"
    ))
    .unwrap();
    adm.query_one("SELECT udm_use($1, $2)", &[&src, &user])
        .unwrap();
    adm.batch_execute(&format!("DELETE FROM \"{src}\".item WHERE n = 20"))
        .unwrap();
    let (src_price, src_links, src_items): (String, i64, i64) = {
        let r = adm
            .query_one(
                &format!(
                    "SELECT (SELECT price::text FROM \"{src}\".item WHERE n = 1), \
                            (SELECT count(*) FROM \"{src}\".item__cats), (SELECT count(*) FROM \"{src}\".item)"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((src_price.as_str(), src_links, src_items), ("2", 10, 19));
    let clone_items: i64 = scalar(&mut c, &format!("SELECT count(*) FROM \"{full}\".item"));
    assert_eq!(clone_items, 21);
    let n: i64 = scalar(
        &mut c,
        &format!("SELECT n FROM \"{full}\".item WHERE title = 'cloned only'"),
    );
    assert_eq!(n, 21, "the clone's numbering continues the source's");
    // both logs verify; the clone's history is the source's and then its own
    let v = json(&mut c, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    let v = json(&mut adm, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    let id: String = scalar(
        &mut c,
        &format!("SELECT id::text FROM \"{full}\".item WHERE n = 1"),
    );
    let versions: Vec<i32> = c
        .query(
            &format!("SELECT version FROM udm_history('item', '{id}')"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    // a definition change in the clone is the clone's
    json(
        &mut c,
        r#"SELECT udm_add_field('item', '{"name": "clone_only", "type": "boolean"}')"#,
    );
    let cols: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = {} AND column_name = 'clone_only'",
            lit(&src)
        ),
    );
    assert_eq!(cols, 0);

    // refusals
    expect_err(
        &mut adm,
        &format!("SELECT udm_clone_tenant({}, {})", lit(&src), lit(&full)),
        "42P06",
    );
    expect_err(
        &mut adm,
        &format!("SELECT udm_clone_tenant({}, 'x')", lit(&unique("nope"))),
        "42704",
    );
    expect_err(
        &mut adm,
        &format!("SELECT udm_clone_tenant({}, 'Not A Slug')", lit(&src)),
        "42602",
    );
    expect_err(
        &mut adm,
        &format!("SELECT udm_clone_tenant({}, NULL)", lit(&src)),
        "22004",
    );
    let mut member = connect_as(&role);
    let msg = expect_err(
        &mut member,
        &format!(
            "SELECT udm_clone_tenant({}, {})",
            lit(&full),
            lit(&unique("x"))
        ),
        "42501",
    );
    assert!(msg.contains("not a udm admin"), "{msg}");
}

/// Another backend, already running and holding the definitions it used in its caches, sees
/// tenants imported and cloned after it started: a slug it looked up before the import, a clone
/// of a tenant it used, and a tenant dropped and imported again under the same slug with another
/// definition (its plain SQL, udm functions, triggers and GraphQL all use the new one).
#[test]
fn other_sessions_see_imported_and_cloned_tenants() {
    let mut adm = admin();
    let src = tenant(&mut adm, "trcache");
    adm.batch_execute(&format!(
        r#"SELECT udm_use({t});
           SELECT udm_define_entity('item', '{{"fields": [{{"name": "title", "type": "text", "required": true}}]}}');
           INSERT INTO "{src}".item (title) VALUES ('one'), ('two');"#,
        t = lit(&src)
    ))
    .unwrap();
    let moved = unique("trmoved");
    let cloned = unique("trcloned");
    // the other backend: uses the source (its definitions cached), and looks for the copies
    let mut other = admin();
    other.query_one("SELECT udm_use($1)", &[&src]).unwrap();
    let fields = |c: &mut Client| -> Vec<String> {
        names(
            c,
            "SELECT f->>'name' FROM jsonb_array_elements(udm_describe('item')->'fields') f ORDER BY 1",
        )
    };
    let gql_titles = |c: &mut Client, q: &str| -> Value {
        let r: Value = c.query_one("SELECT udm_graphql($1)", &[&q]).unwrap().get(0);
        assert!(r.get("errors").is_none(), "{r}");
        r["data"]["itemCollection"]["nodes"].clone()
    };
    assert_eq!(fields(&mut other), ["title"]);
    assert_eq!(
        gql_titles(
            &mut other,
            "{ itemCollection(orderBy: [{title: ASC}]) { nodes { title } } }"
        ),
        json!([{"title": "one"}, {"title": "two"}])
    );
    expect_err(
        &mut other,
        &format!("SELECT udm_use({})", lit(&moved)),
        "42704",
    );

    // an import under a slug the other backend looked for
    let archive = export(&Db::shared(), "postgres", &src);
    import(&Db::shared(), "postgres", &archive, Some(&moved)).expect("import");
    other.query_one("SELECT udm_use($1)", &[&moved]).unwrap();
    assert_eq!(fields(&mut other), ["title"]);
    other
        .batch_execute(&format!(
            "INSERT INTO \"{moved}\".item (title) VALUES ('three')"
        ))
        .unwrap();
    let n: i64 = scalar(
        &mut other,
        &format!("SELECT count(*) FROM \"{moved}\".item"),
    );
    assert_eq!(n, 3);
    let v = json(&mut other, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["rows_checked"], json!(3), "{v}");

    // a clone of the tenant the other backend uses
    json(
        &mut adm,
        &format!(
            "SELECT udm_clone_tenant({}, {}, true)",
            lit(&src),
            lit(&cloned)
        ),
    );
    other.query_one("SELECT udm_use($1)", &[&cloned]).unwrap();
    assert_eq!(
        gql_titles(
            &mut other,
            "{ itemCollection(orderBy: [{title: ASC}]) { nodes { title } } }"
        ),
        json!([{"title": "one"}, {"title": "two"}])
    );
    other
        .batch_execute(&format!(
            "INSERT INTO \"{cloned}\".item (title) VALUES ('own')"
        ))
        .unwrap();
    let v = json(&mut other, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");

    // dropped and imported again under the same slug, from a source with another definition:
    // the other backend had the old one cached
    other.query_one("SELECT udm_use($1)", &[&moved]).unwrap();
    assert_eq!(fields(&mut other), ["title"]);
    json(
        &mut adm,
        &format!("SELECT udm_drop_tenant({}, {})", lit(&moved), lit(&moved)),
    );
    adm.batch_execute(&format!(
        r#"SELECT udm_use({t});
           SELECT udm_add_field('item', '{{"name": "size", "type": "integer", "default": 1}}');
           UPDATE "{src}".item SET size = 2 WHERE title = 'two';"#,
        t = lit(&src)
    ))
    .unwrap();
    let archive = export(&Db::shared(), "postgres", &src);
    import(&Db::shared(), "postgres", &archive, Some(&moved)).expect("import again");
    other.query_one("SELECT udm_use($1)", &[&moved]).unwrap();
    assert_eq!(fields(&mut other), ["size", "title"]);
    assert_eq!(
        gql_titles(
            &mut other,
            "{ itemCollection(orderBy: [{title: ASC}]) { nodes { title size } } }"
        ),
        json!([{"title": "one", "size": 1}, {"title": "two", "size": 2}])
    );
    other
        .batch_execute(&format!(
            "INSERT INTO \"{moved}\".item (title, size) VALUES ('four', 4)"
        ))
        .unwrap();
    let v = json(&mut other, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["rows_checked"], json!(4), "{v}");
}

/// A tenant with encrypted fields moves with its keys, wrapped by the master key as they were:
/// an import (into another database of the cluster, which has the same master key) and a clone
/// with data read its values back, find them through their blind index and seal new ones; a
/// clone without data gets keys of its own. Keys wrapped by a master key the server does not
/// have, or damaged, are refused and leave nothing; a tenant whose keys were destroyed moves
/// with them destroyed.
#[test]
fn encrypted_tenants_move_with_their_keys() {
    let src = Db::shared();
    let mut su = src.connect("postgres");
    let t = tenant(&mut su, "trenc");
    su.query_one("SELECT udm_use($1)", &[&t]).unwrap();
    su.batch_execute(
        r#"SELECT udm_define_entity('person', '{"fields": [
             {"name": "name", "type": "text"},
             {"name": "ssn", "type": "text", "encrypted": true, "index": true},
             {"name": "born", "type": "date", "encrypted": true}]}');
           SELECT udm_insert('person', '{"name": "Ada", "ssn": "123-45-6789", "born": "1815-12-10"}');
           SELECT udm_rotate_data_key();
           SELECT udm_insert('person', '{"name": "Bob", "ssn": "987-65-4321", "born": "1900-01-02"}');"#,
    )
    .unwrap();
    let keys = |c: &mut Client, slug: &str| -> Vec<String> {
        names(
            c,
            &format!(
                "SELECT purpose || id || ':' || encode(wrapped, 'hex') FROM \"{slug}\"._udm_keys ORDER BY 1"
            ),
        )
    };
    let original = keys(&mut su, &t);
    assert_eq!(original.len(), 3, "two data keys and an index key");
    // what a tenant must answer with its keys: the values, a blind index lookup, a new value
    let reads_back = |c: &mut Client, slug: &str| {
        c.query_one("SELECT udm_use($1)", &[&slug]).unwrap();
        let page = json(
            c,
            r#"SELECT udm_query('person', '{"columns": ["name", "ssn", "born"], "sort": [{"path": "name"}]}')"#,
        );
        assert_eq!(
            page["rows"],
            json!([{"name": "Ada", "ssn": "123-45-6789", "born": "1815-12-10"},
                   {"name": "Bob", "ssn": "987-65-4321", "born": "1900-01-02"}]),
            "{slug}"
        );
        let found = json(
            c,
            r#"SELECT udm_query('person', '{"columns": ["name"], "filters": {"ssn": "987-65-4321"}}')"#,
        );
        assert_eq!(found["rows"], json!([{"name": "Bob"}]), "{slug}");
        json(
            c,
            r#"SELECT udm_insert('person', '{"name": "Cy", "ssn": "555-55-5555", "born": "2000-02-29"}')"#,
        );
        let stored: String = scalar(
            c,
            &format!("SELECT ssn FROM \"{slug}\".person WHERE name = 'Cy'"),
        );
        assert!(stored.starts_with("udm1:"), "{slug}: {stored}");
    };

    let adm = udm_admin_role(&mut su);
    let archive = export(&src, &adm, &t);
    let manifest: Value =
        serde_json::from_str(&udm_tenant::Reader::open(&archive[..]).unwrap().manifest).unwrap();
    assert_eq!(manifest["format_version"], json!(3), "{manifest}");

    // cloned with data, in the same database: the same keys
    let copy = unique("trencc");
    json(
        &mut su,
        &format!("SELECT udm_clone_tenant({}, {}, true)", lit(&t), lit(&copy)),
    );
    assert_eq!(keys(&mut su, &copy), original);
    reads_back(&mut su, &copy);
    // definitions only: keys of its own
    let bare = unique("trencd");
    json(
        &mut su,
        &format!("SELECT udm_clone_tenant({}, {})", lit(&t), lit(&bare)),
    );
    let own = keys(&mut su, &bare);
    assert_eq!(own.len(), 2, "{own:?}");
    assert!(own.iter().all(|k| !original.contains(k)), "{own:?}");
    su.query_one("SELECT udm_use($1)", &[&bare]).unwrap();
    json(
        &mut su,
        r#"SELECT udm_insert('person', '{"name": "Di", "ssn": "111-11-1111", "born": "1999-09-09"}')"#,
    );
    let g = json(
        &mut su,
        r#"SELECT udm_query('person', '{"columns": ["ssn"], "filters": {"ssn": "111-11-1111"}}')"#,
    );
    assert_eq!(g["rows"], json!([{"ssn": "111-11-1111"}]));

    // imported into another database
    let dst = Db::create("udm_tr_enc");
    let users_before: i64 = scalar(
        &mut dst.connect("postgres"),
        "SELECT count(*) FROM udm.app_user",
    );
    let dadm = udm_admin_role(&mut dst.connect("postgres"));
    import(&dst, &dadm, &archive, None).unwrap();
    let mut d = dst.connect("postgres");
    assert_eq!(keys(&mut d, &t), original);
    reads_back(&mut d, &t);

    // keys wrapped by a master key this server does not have: refused, naming the tenant
    // (the archive with each row of its keys section edited, column by column)
    let keys_edited = |edit: &dyn Fn(&mut Vec<String>)| {
        rewrite(
            &archive,
            |_| {},
            |s, rows| {
                if s != "_udm_keys" {
                    return rows;
                }
                rows.lines()
                    .map(|l| {
                        let mut cols: Vec<String> = l.split('\t').map(str::to_string).collect();
                        edit(&mut cols);
                        cols.join("\t") + "\n"
                    })
                    .collect()
            },
        )
    };
    // the master key's fingerprint is the fourth column
    let foreign = keys_edited(&|cols| cols[3] = "0000000000000000".into());
    let other = unique("trencf");
    let err = import(&dst, &dadm, &foreign, Some(&other)).unwrap_err();
    assert!(
        err.contains(&format!(
            "import of tenant \"{other}\": its encryption keys"
        )) && err.contains("was wrapped by master key 0000000000000000")
            && err.contains("55000")
            && err.contains("udm.encryption_old_key_file"),
        "{err}"
    );
    nothing_of(&dst, &other, users_before);
    // a wrapped key changed by one byte does not open
    // (`wrapped`, bytea, the third column, is written as \\x<hex>: its last digit changed)
    let damaged = keys_edited(&|cols| {
        let last = cols[2].pop().unwrap();
        cols[2].push(if last == '0' { '1' } else { '0' });
    });
    let err = import(&dst, &dadm, &damaged, Some(&other)).unwrap_err();
    assert!(
        err.contains(&format!(
            "import of tenant \"{other}\": its encryption keys"
        )),
        "{err}"
    );
    nothing_of(&dst, &other, users_before);

    // destroyed keys stay destroyed in a clone
    su.query_one("SELECT udm_use($1)", &[&copy]).unwrap();
    json(
        &mut su,
        &format!(
            "SELECT udm_shred_keys({}, {})",
            lit(&copy),
            lit(&format!("destroy the keys of {copy}"))
        ),
    );
    let shredded = unique("trencs");
    json(
        &mut su,
        &format!(
            "SELECT udm_clone_tenant({}, {}, true)",
            lit(&copy),
            lit(&shredded)
        ),
    );
    su.query_one("SELECT udm_use($1)", &[&shredded]).unwrap();
    let msg = expect_err(
        &mut su,
        r#"SELECT udm_query('person', '{"columns": ["ssn"]}')"#,
        "55000",
    );
    assert!(
        msg.contains(&format!(
            "the encryption keys of tenant \"{shredded}\" were destroyed"
        )),
        "{msg}"
    );
    // and the original still reads
    reads_back(&mut su, &t);
    dst.drop();
}
