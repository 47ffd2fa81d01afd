//! Harness for udm's integration tests: they connect with the `postgres` driver to the cluster
//! `make test` starts (UDM_TEST_HOST / UDM_TEST_PORT / UDM_TEST_DB), exactly as an existing
//! application would, and log in as different roles to prove what each may do.

use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicU32, Ordering};

pub use postgres;

pub mod scenario;
pub use serde_json::{json, Value};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn conn_string(user: &str) -> String {
    format!(
        "host={} port={} dbname={} user={} application_name=udm-tests",
        env("UDM_TEST_HOST", "/work/main/target/test-cluster/sock"),
        env("UDM_TEST_PORT", "5498"),
        env("UDM_TEST_DB", "udm_it"),
        user
    )
}

/// A connection as `user` (the test cluster trusts local connections).
pub fn connect_as(user: &str) -> Client {
    Client::connect(&conn_string(user), NoTls).unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// A superuser connection.
pub fn admin() -> Client {
    connect_as("postgres")
}

/// A name no other test uses: `prefix` + process id + counter.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh login role.
pub fn login_role(admin: &mut Client, prefix: &str) -> String {
    let name = unique(prefix);
    admin
        .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN"))
        .unwrap();
    name
}

/// Whether this run's tenants keep their audit log in batches (`udm.audit_batches`, issue 20):
/// `UDM_TEST_AUDIT_BATCHES=1`, with which the integration tier runs the audit suites (and tenant
/// transfer) a second time.
pub fn audit_batches() -> bool {
    std::env::var("UDM_TEST_AUDIT_BATCHES").is_ok_and(|v| v == "1")
}

/// Whether the database runs Citus (the Citus tier runs some suites against its coordinator).
pub fn on_citus(c: &mut Client) -> bool {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
        &[],
    )
    .unwrap()
    .get(0)
}

/// A fresh tenant; returns its slug (batched when `audit_batches()`).
pub fn tenant(admin: &mut Client, prefix: &str) -> String {
    let slug = unique(prefix);
    let batches = audit_batches();
    if batches {
        admin.batch_execute("SET udm.audit_batches = on").unwrap();
    }
    admin
        .query_one("SELECT udm_create_tenant($1)", &[&slug])
        .unwrap();
    if batches {
        admin.batch_execute("RESET udm.audit_batches").unwrap();
    }
    slug
}

/// A fresh tenant with a login role that is a member of it, connected and using the tenant.
pub struct Member {
    pub tenant: String,
    pub role: String,
    pub client: Client,
}

/// The database role of a tenant (`tenant_<slug>@<database>`), as its registry has it.
pub fn tenant_role(c: &mut Client, slug: &str) -> String {
    c.query_one(
        "SELECT role_name FROM udm_tenants() WHERE slug = $1",
        &[&slug],
    )
    .unwrap_or_else(|e| panic!("the role of tenant {slug}: {e}"))
    .get(0)
}

/// `GRANT <the tenant's role> TO <role>`, as an admin.
pub fn grant_tenant(admin: &mut Client, slug: &str, role: &str) {
    let tenant_role = tenant_role(admin, slug);
    admin
        .batch_execute(&format!("GRANT \"{tenant_role}\" TO \"{role}\""))
        .unwrap();
}

pub fn member(admin: &mut Client, prefix: &str) -> Member {
    let tenant = tenant(admin, prefix);
    let role = login_role(admin, &format!("{prefix}_user"));
    grant_tenant(admin, &tenant, &role);
    let mut client = connect_as(&role);
    client.query_one("SELECT udm_use($1)", &[&tenant]).unwrap();
    Member {
        tenant,
        role,
        client,
    }
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// The message, detail and hint of a failed statement, as one string.
pub fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{} | detail: {} | hint: {}",
            d.message(),
            d.detail().unwrap_or(""),
            d.hint().unwrap_or("")
        ),
        None => e.to_string(),
    }
}

/// Runs a statement that must fail with `code`; returns the full message.
#[track_caller]
pub fn expect_err(c: &mut Client, sql: &str, code: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected {code} from {sql}, but it succeeded"),
        Err(e) => {
            assert_eq!(sqlstate(&e), code, "{sql}: {}", message(&e));
            message(&e)
        }
    }
}

/// One jsonb value from a query.
#[track_caller]
pub fn json(c: &mut Client, sql: &str) -> Value {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .get::<_, Value>(0)
}

/// A single scalar from a query.
#[track_caller]
pub fn scalar<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .get::<_, T>(0)
}

/// The first column of every row of a query (EXPLAIN lines, names, values).
#[track_caller]
pub fn column<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> Vec<T> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .iter()
        .map(|r| r.get::<_, T>(0))
        .collect()
}

/// Quotes a SQL string literal for test statements (tests build SQL the way a user would).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// In the member's tenant: an entity `every` with a field of every type (and `target`, which its
/// relation and reference point at), and four records of values that are hard to render: nulls,
/// special numbers, infinite dates, JSON scalars, escapes and non-ASCII text.
pub fn every_field_type(m: &mut Member) {
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('target', '{"fields": [{"name": "name", "type": "text"}]}')"#,
    );
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('every', '{"fields": [
            {"name": "t", "type": "text"}, {"name": "lt", "type": "long_text"},
            {"name": "i", "type": "integer"}, {"name": "bi", "type": "bigint"},
            {"name": "d", "type": "decimal"}, {"name": "f", "type": "float"},
            {"name": "b", "type": "boolean"}, {"name": "dt", "type": "date"},
            {"name": "ts", "type": "datetime"}, {"name": "tm", "type": "time"},
            {"name": "du", "type": "duration"}, {"name": "u", "type": "uuid"},
            {"name": "j", "type": "json"}, {"name": "em", "type": "email"},
            {"name": "sel", "type": "select", "values": ["a", "b"]},
            {"name": "ms", "type": "multi_select", "values": ["x", "y"]},
            {"name": "tg", "type": "tags"}, {"name": "cur", "type": "currency"},
            {"name": "rt", "type": "rating"}, {"name": "an", "type": "auto_number"},
            {"name": "fl", "type": "file"}, {"name": "pc", "type": "percent"},
            {"name": "co", "type": "color"}, {"name": "ur", "type": "url"},
            {"name": "ph", "type": "phone"}, {"name": "us", "type": "user"},
            {"name": "rel", "type": "relation", "target": "target"},
            {"name": "ref", "type": "reference", "targets": ["target"]},
            {"name": "ints", "type": "integer[]"}, {"name": "days", "type": "date[]"}]}')"#,
    );
    let s = m.tenant.clone();
    m.client
        .batch_execute(&format!(
            r#"INSERT INTO "{s}".target (id, name) VALUES ('6f1c2a7e-0000-4000-8000-00000000abcd', 'T');
            INSERT INTO "{s}".every (t, lt, i, bi, d, f, b, dt, ts, tm, du, u, j, em, sel, ms, tg, cur, rt, fl, pc, co, ur, ph, rel, ints, days) VALUES
              ('plain "quoted" \ text ✓', repeat('long ', 3000), -2147483648, 9223372036854775807,
               12345678901234567890.000000001, 0.1 + 0.2, true, '2024-02-29', '2024-05-01 12:34:56.789+02',
               '23:59:59.5', '1 year 2 mons 3 days 04:05:06', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
               '{{"deep": {{"n": [1, 2.50, -3e5], "s": "x", "t": true, "z": null}}, "e": {{}}, "a": []}}',
               'a@b.co', 'a', '{{x,y}}', '{{"t 1",ü}}', 0.01, 5,
               '{{"name": "f.pdf", "size": 10}}', 12.5, '#a0b1c2', 'https://x.test/a?b=c', '+1 555 0100',
               '6f1c2a7e-0000-4000-8000-00000000abcd', '{{1,NULL,-3}}', '{{2024-01-01,infinity}}'),
              (NULL, NULL, 0, -1, 'NaN', 'Infinity', false, '-infinity', 'infinity', NULL, NULL, NULL,
               '5', NULL, NULL, '{{}}', NULL, -0.00, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
              ('', '', NULL, NULL, 0, -0.0, NULL, NULL, NULL, '00:00', '0', NULL,
               '"just a string"', NULL, 'b', NULL, '{{}}', 1e-20, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, '{{}}'),
              (NULL, NULL, NULL, NULL, NULL, '-1.5e300', NULL, NULL, NULL, NULL, NULL, NULL,
               '[1, "two", {{"3": [null, true]}}]', NULL, NULL, NULL, NULL, 99999.99, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
            UPDATE "{s}".every SET d = '-Infinity' WHERE f = '-1.5e300';
            UPDATE "{s}".every SET ref = ROW('target', '6f1c2a7e-0000-4000-8000-00000000abcd')::udm.ref WHERE t = '';"#
        ))
        .unwrap();
}
