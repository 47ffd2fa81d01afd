//! Tenant isolation is PostgreSQL's privilege system: a login role that is a member of tenant A
//! cannot read or change tenant B's tables or definitions through udm functions or plain SQL.

use udm_tests::*;

fn setup() -> (Client, Member, Member) {
    let mut adm = admin();
    let mut a = member(&mut adm, "isoa");
    let mut b = member(&mut adm, "isob");
    for m in [&mut a, &mut b] {
        json(
            &mut m.client,
            "SELECT udm_define_entity('secret', '{\"fields\": [{\"name\": \"code\", \"type\": \"text\"}]}')",
        );
        m.client
            .batch_execute(&format!(
                "INSERT INTO \"{}\".secret (code) VALUES ('of {}')",
                m.tenant, m.tenant
            ))
            .unwrap();
    }
    (adm, a, b)
}

use postgres::Client;

#[test]
fn a_member_cannot_select_the_other_tenant_through_udm() {
    let (_adm, mut a, b) = setup();
    let msg = expect_err(
        &mut a.client,
        &format!("SELECT udm_use({})", lit(&b.tenant)),
        "42501",
    );
    assert!(
        msg.contains(&format!("permission denied for tenant \"{}\"", b.tenant)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("GRANT \"tenant_{}@", b.tenant)),
        "hint names the grant: {msg}"
    );
    // the refused selection leaves no tenant selected (not its own either: a script meant for
    // the other tenant must not go on changing its own)
    let t: Option<String> = scalar(&mut a.client, "SELECT udm_current_tenant()");
    assert_eq!(t, None);
    a.client
        .query_one("SELECT udm_use($1)", &[&a.tenant])
        .unwrap();
    let t: Option<String> = scalar(&mut a.client, "SELECT udm_current_tenant()");
    assert_eq!(t.as_deref(), Some(a.tenant.as_str()));
}

#[test]
fn setting_the_guc_directly_does_not_get_around_membership() {
    let (_adm, mut a, b) = setup();
    a.client
        .batch_execute(&format!("SET udm.tenant = {}", lit(&b.tenant)))
        .unwrap();
    for sql in [
        "SELECT udm_describe('secret')".to_string(),
        "SELECT * FROM udm_entities()".to_string(),
        "SELECT udm_add_field('secret', '{\"name\": \"x\", \"type\": \"text\"}')".to_string(),
        "SELECT udm_drop_entity('secret')".to_string(),
        "SELECT udm_define_entity('mine', '{\"fields\": []}')".to_string(),
        "SELECT * FROM udm_entity_history('secret')".to_string(),
    ] {
        let msg = expect_err(&mut a.client, &sql, "42501");
        assert!(msg.contains("permission denied for tenant"), "{sql}: {msg}");
    }
    let t: Option<String> = scalar(&mut a.client, "SELECT udm_current_tenant()");
    assert_eq!(
        t, None,
        "udm_current_tenant() does not report a tenant the caller may not use"
    );
}

#[test]
fn plain_sql_cannot_reach_the_other_tenant() {
    let (_adm, mut a, b) = setup();
    let s = &b.tenant;
    for sql in [
        format!("SELECT * FROM \"{s}\".secret"),
        format!("INSERT INTO \"{s}\".secret (code) VALUES ('x')"),
        format!("UPDATE \"{s}\".secret SET code = 'x'"),
        format!("DELETE FROM \"{s}\".secret"),
        format!("SELECT * FROM \"{s}\"._udm_entity"),
        format!("SELECT * FROM \"{s}\"._udm_entity WHERE version > 1"),
        format!("CREATE TABLE \"{s}\".mine (x int)"),
    ] {
        let msg = expect_err(&mut a.client, &sql, "42501");
        assert!(msg.contains("permission denied for schema"), "{sql}: {msg}");
    }
    let msg = expect_err(&mut a.client, "SELECT * FROM udm.tenant", "42501");
    assert!(msg.contains("permission denied"), "{msg}");
}

#[test]
fn a_member_uses_its_own_tenant_with_plain_sql_but_cannot_alter_its_structure() {
    let (_adm, mut a, _b) = setup();
    let s = a.tenant.clone();
    let n: i64 = scalar(
        &mut a.client,
        &format!("SELECT count(*) FROM \"{s}\".secret"),
    );
    assert_eq!(n, 1);
    a.client
        .batch_execute(&format!(
            "INSERT INTO \"{s}\".secret (code) VALUES ('more')"
        ))
        .unwrap();
    // structure, triggers and the catalog belong to udm
    for (sql, code) in [
        (
            format!("ALTER TABLE \"{s}\".secret ADD COLUMN x int"),
            "42501",
        ),
        (
            format!("ALTER TABLE \"{s}\".secret DISABLE TRIGGER udm_stamp"),
            "42501",
        ),
        (format!("DROP TABLE \"{s}\".secret"), "42501"),
        (format!("TRUNCATE \"{s}\".secret"), "42501"),
        (format!("CREATE TABLE \"{s}\".mine (x int)"), "42501"),
        (
            format!("UPDATE \"{s}\"._udm_entity SET version = 99"),
            "42501",
        ),
        (format!("DELETE FROM \"{s}\"._udm_entity"), "42501"),
    ] {
        expect_err(&mut a.client, &sql, code);
    }
}

#[test]
fn only_admins_create_and_drop_tenants() {
    let mut adm = admin();
    let mut m = member(&mut adm, "isoc");
    let msg = expect_err(&mut m.client, "SELECT udm_create_tenant('isonew')", "42501");
    assert!(msg.contains("is not a udm admin"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_drop_tenant({0}, {0})", lit(&m.tenant)),
        "42501",
    );
    assert!(msg.contains("is not a udm admin"), "{msg}");

    // a member of udm_admin may, and then uses every tenant
    let boss = login_role(&mut adm, "isoboss");
    adm.batch_execute(&format!("GRANT udm_admin TO \"{boss}\""))
        .unwrap();
    let mut c = connect_as(&boss);
    let slug = unique("isoadm");
    let created = json(&mut c, &format!("SELECT udm_create_tenant({})", lit(&slug)));
    let db: String = scalar(&mut c, "SELECT current_database()::text");
    assert_eq!(created["role"], format!("tenant_{slug}@{db}"));
    json(&mut c, &format!("SELECT udm_use({})", lit(&m.tenant)));
    json(
        &mut c,
        &format!("SELECT udm_drop_tenant({0}, {0})", lit(&slug)),
    );
}

#[test]
fn udm_tenants_lists_only_usable_tenants() {
    let (_adm, mut a, b) = setup();
    let rows = a
        .client
        .query("SELECT slug FROM udm_tenants()", &[])
        .unwrap();
    let slugs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(slugs.contains(&a.tenant));
    assert!(!slugs.contains(&b.tenant), "{slugs:?}");
}

#[test]
fn relations_cannot_cross_tenants() {
    let (_adm, mut a, b) = setup();
    // the other tenant's entity is simply unknown here
    let msg = expect_err(
        &mut a.client,
        "SELECT udm_add_field('secret', '{\"name\": \"other\", \"type\": \"relation\", \"target\": \"nothere\"}')",
        "42P01",
    );
    assert!(msg.contains("does not exist in tenant"), "{msg}");
    // a qualified target is not a valid entity name
    let msg = expect_err(
        &mut a.client,
        &format!(
            "SELECT udm_add_field('secret', '{{\"name\": \"other\", \"type\": \"relation\", \"target\": \"{}.secret\"}}')",
            b.tenant
        ),
        "42602",
    );
    assert!(msg.contains("invalid entity name"), "{msg}");
}

#[test]
fn pooled_connections_switch_tenant_per_transaction() {
    let mut adm = admin();
    let a = tenant(&mut adm, "isopa");
    let b = tenant(&mut adm, "isopb");
    let pool_role = login_role(&mut adm, "isopool");
    grant_tenant(&mut adm, &a, &pool_role);
    grant_tenant(&mut adm, &b, &pool_role);
    let mut c = connect_as(&pool_role);
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT udm_use($1, NULL, true)", &[&a])
        .unwrap();
    let cur: Option<String> = tx
        .query_one("SELECT udm_current_tenant()", &[])
        .unwrap()
        .get(0);
    assert_eq!(cur.as_deref(), Some(a.as_str()));
    tx.commit().unwrap();
    let cur: Option<String> = scalar(&mut c, "SELECT udm_current_tenant()");
    assert_eq!(cur, None, "a local udm_use ends with the transaction");
    json(&mut c, &format!("SELECT udm_use({})", lit(&b)));
    let cur: Option<String> = scalar(&mut c, "SELECT udm_current_tenant()");
    assert_eq!(cur.as_deref(), Some(b.as_str()));
}
