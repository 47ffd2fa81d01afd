//! Tenants: creation makes schema, role and catalog in one transaction; dropping removes them
//! together; udm_use checks the tenant and the caller.

use udm_tests::*;

#[test]
fn create_makes_schema_role_and_catalog() {
    let mut adm = admin();
    let slug = unique("tcreate");
    let t = json(
        &mut adm,
        &format!("SELECT udm_create_tenant({}, 'Create Co')", lit(&slug)),
    );
    assert_eq!(t["slug"], slug);
    assert_eq!(t["name"], "Create Co");
    assert_eq!(t["schema"], slug);
    let db: String = scalar(&mut adm, "SELECT current_database()::text");
    let role = format!("tenant_{slug}@{db}");
    assert_eq!(t["role"], json!(role), "roles name their database");
    let schema: bool = scalar(
        &mut adm,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {})",
            lit(&slug)
        ),
    );
    assert!(schema);
    let nologin: bool = scalar(
        &mut adm,
        &format!(
            "SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = {}",
            lit(&role)
        ),
    );
    assert!(nologin, "the tenant role is NOLOGIN");
    let tables: String = scalar(
        &mut adm,
        &format!(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = {}",
            lit(&slug)
        ),
    );
    // on Citus the tables of first use come with the tenant (made later, their DDL would meet
    // Citus's rules for a transaction's connections)
    let citus: bool = scalar(
        &mut adm,
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
    );
    let expected = if citus {
        "_udm_audit,_udm_consumer,_udm_entity,_udm_lock,_udm_subscription"
    } else {
        "_udm_audit,_udm_entity"
    };
    assert_eq!(
        tables, expected,
        "the tenant's catalog and audit log live in its own schema (subscriptions, consumers and locks get tables when first used)"
    );
    let listed: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM udm_tenants() WHERE slug = {}",
            lit(&slug)
        ),
    );
    assert_eq!(listed, 1);
}

#[test]
fn create_refuses_bad_and_taken_slugs() {
    let mut adm = admin();
    let slug = tenant(&mut adm, "ttaken");
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_create_tenant({})", lit(&slug)),
        "42P06",
    );
    assert!(msg.contains("already exists"), "{msg}");
    for (bad, code, want) in [
        ("Acme", "42602", "lower-case"),
        ("a-b", "42602", "character '-'"),
        ("public", "42602", "reserved"),
        ("select", "42602", "reserved SQL key word"),
        ("pg_x", "42602", "pg_"),
        ("", "42602", "empty"),
        ("x; drop table udm.tenant", "42602", "character"),
    ] {
        let msg = expect_err(
            &mut adm,
            &format!("SELECT udm_create_tenant({})", lit(bad)),
            code,
        );
        assert!(msg.contains(want), "{bad}: {msg}");
    }
    let long = "a".repeat(41);
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_create_tenant({})", lit(&long)),
        "42602",
    );
    assert!(msg.contains("limit is 40"), "{msg}");
    adm.batch_execute("CREATE SCHEMA IF NOT EXISTS handmade")
        .unwrap();
    let msg = expect_err(&mut adm, "SELECT udm_create_tenant('handmade')", "42P06");
    assert!(
        msg.contains("schema named \"handmade\" already exists"),
        "{msg}"
    );
}

#[test]
fn creation_is_one_transaction() {
    let mut adm = admin();
    let slug = unique("tatomic");
    let mut tx = adm.transaction().unwrap();
    tx.query_one("SELECT udm_create_tenant($1)", &[&slug])
        .unwrap();
    tx.rollback().unwrap();
    let left: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = {0}) + (SELECT count(*) FROM pg_roles WHERE rolname = 'tenant_' || {0} || '@' || current_database()) + (SELECT count(*) FROM udm.tenant WHERE slug = {0})",
            lit(&slug)
        ),
    );
    assert_eq!(left, 0, "a rolled back creation leaves nothing");
    // and the slug is free again
    adm.query_one("SELECT udm_create_tenant($1)", &[&slug])
        .unwrap();
}

#[test]
fn drop_needs_confirmation_and_removes_everything() {
    let mut adm = admin();
    let mut m = member(&mut adm, "tdrop");
    json(&mut m.client, "SELECT udm_define_entity('thing', '{\"fields\": [{\"name\": \"n\", \"type\": \"integer\"}]}')");
    let slug = m.tenant.clone();
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_drop_tenant({}, 'nope')", lit(&slug)),
        "22023",
    );
    assert!(msg.contains("confirm must repeat the tenant slug"), "{msg}");
    drop(m);
    let out = json(
        &mut adm,
        &format!("SELECT udm_drop_tenant({0}, {0})", lit(&slug)),
    );
    assert_eq!(out["dropped"], slug);
    assert_eq!(out["entities"], json!(["thing"]));
    let left: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = {0}) + (SELECT count(*) FROM pg_roles WHERE rolname = 'tenant_' || {0} || '@' || current_database()) + (SELECT count(*) FROM udm.tenant WHERE slug = {0})",
            lit(&slug)
        ),
    );
    assert_eq!(left, 0);
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_drop_tenant({0}, {0})", lit(&slug)),
        "42704",
    );
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn udm_use_errors() {
    let mut adm = admin();
    let msg = expect_err(&mut adm, "SELECT udm_use('nosuchtenant')", "42704");
    assert!(
        msg.contains("tenant \"nosuchtenant\" does not exist"),
        "{msg}"
    );
    let msg = expect_err(&mut adm, "SELECT udm_use('Bad Name')", "42704");
    assert!(msg.contains("does not exist"), "{msg}");
    let slug = tenant(&mut adm, "tuse");
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_use({}, E'bad\\nuser')", lit(&slug)),
        "22023",
    );
    assert!(msg.contains("user id"), "{msg}");
    let mut fresh = admin();
    let msg = expect_err(&mut fresh, "SELECT udm_describe('x')", "55000");
    assert!(
        msg.contains("no tenant selected") && msg.contains("udm_use"),
        "{msg}"
    );
}

#[test]
fn user_id_is_recorded_on_rows_and_definitions() {
    let mut adm = admin();
    let mut m = member(&mut adm, "tuser");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        &format!("SELECT udm_use({}, 'user-42')", lit(&t)),
    );
    json(&mut m.client, "SELECT udm_define_entity('note', '{\"fields\": [{\"name\": \"body\", \"type\": \"long_text\"}]}')");
    let by: String = scalar(
        &mut m.client,
        "SELECT changed_by FROM udm_entity_history('note')",
    );
    assert_eq!(by, "user-42");
    m.client
        .batch_execute(&format!("INSERT INTO \"{t}\".note (body) VALUES ('x')"))
        .unwrap();
    let (c, u): (String, String) = {
        let r = m
            .client
            .query_one(
                &format!("SELECT created_by, updated_by FROM \"{t}\".note"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((c.as_str(), u.as_str()), ("user-42", "user-42"));
    // without a user id the database role is recorded
    json(&mut m.client, &format!("SELECT udm_use({})", lit(&t)));
    m.client
        .batch_execute(&format!("UPDATE \"{t}\".note SET body = 'y'"))
        .unwrap();
    let u: String = scalar(
        &mut m.client,
        &format!("SELECT updated_by FROM \"{t}\".note"),
    );
    assert_eq!(u, m.role);
}

/// A failed `udm_use` leaves no tenant (and no user) selected: a script meant for another tenant
/// must not go on changing the one selected before, until a `udm_use` succeeds.
#[test]
fn a_failed_selection_leaves_nothing_selected() {
    let mut adm = admin();
    let mut m = member(&mut adm, "fus");
    let t = m.tenant.clone();
    let c = &mut m.client;
    json(
        c,
        r#"SELECT udm_define_entity('item', '{"fields": [{"name": "name", "type": "text"}]}')"#,
    );
    expect_err(c, "SELECT udm_use('missing_tenant')", "42704");
    let now: Option<String> = scalar(c, "SELECT udm_current_tenant()");
    assert_eq!(now, None);
    let msg = expect_err(c, r#"SELECT udm_insert('item', '{"name": "x"}')"#, "55000");
    assert!(
        msg.contains("no tenant selected")
            && msg.contains("udm_use('missing_tenant') failed, and the tenant selected before it no longer counts"),
        "{msg}"
    );
    // the setting still holds the old value; udm does not honour it
    let raw: String = scalar(c, "SELECT current_setting('udm.tenant')");
    assert_eq!(raw, t);
    // a udm_use that succeeds selects again
    json(c, &format!("SELECT udm_use({})", lit(&t)));
    json(c, r#"SELECT udm_insert('item', '{"name": "ok"}')"#);
    expect_err(c, "SELECT udm_use(NULL)", "22004");
    expect_err(c, "SELECT * FROM udm_entities()", "55000");
    json(c, &format!("SELECT udm_use({})", lit(&t)));
    json(c, r#"SELECT udm_insert('item', '{"name": "again"}')"#);
}

/// The same for a failed choice of user: the previous user no longer acts, neither through
/// udm functions nor through plain SQL, and selecting a tenant with members but no user says why
/// nothing shows.
#[test]
fn a_failed_user_selection_leaves_no_user_and_a_missing_user_is_announced() {
    let mut adm = admin();
    let m = member(&mut adm, "fuu");
    let t = m.tenant.clone();
    let alice = format!("{}@fuu.test", unique("alice"));
    json(
        &mut adm,
        &format!(
            "SELECT udm_create_user({}, 'Alice', 'a-long-password')",
            lit(&alice)
        ),
    );
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut c = conn_string(&m.role)
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| seen.lock().unwrap().push(n.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    json(&mut c, &format!("SELECT udm_use({})", lit(&t)));
    json(
        &mut c,
        r#"SELECT udm_define_entity('item', '{"fields": [{"name": "name", "type": "text"}]}')"#,
    );
    json(
        &mut c,
        &format!(
            "SELECT udm_add_member({}, {}, 'admin')",
            lit(&t),
            lit(&alice)
        ),
    );
    json(
        &mut c,
        &format!("SELECT udm_use({}, {})", lit(&t), lit(&alice)),
    );
    c.batch_execute(&format!("INSERT INTO \"{t}\".item (name) VALUES ('mine')"))
        .unwrap();
    let n: i64 = scalar(&mut c, &format!("SELECT count(*) FROM \"{t}\".item"));
    assert_eq!(n, 1);
    expect_err(
        &mut c,
        &format!("SELECT udm_use({}, 'nobody@fuu.test')", lit(&t)),
        "42501",
    );
    // alice no longer acts: plain SQL sees nothing and writes nothing
    let n: i64 = scalar(&mut c, &format!("SELECT count(*) FROM \"{t}\".item"));
    assert_eq!(
        n, 0,
        "the previous user carried on after a failed selection"
    );
    expect_err(
        &mut c,
        &format!("INSERT INTO \"{t}\".item (name) VALUES ('not mine')"),
        "42501",
    );
    assert!(notices.lock().unwrap().is_empty());
    json(&mut c, &format!("SELECT udm_use({})", lit(&t)));
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains(&format!(
            "tenant \"{t}\" controls access: with no member selected"
        )) && said.contains("udm_use("),
        "{said}"
    );
}

/// Two databases of one cluster (staging and production, say) may both have a tenant `acme`:
/// its role names its database, and one database's role opens nothing in the other.
#[test]
fn two_databases_of_a_cluster_have_tenants_of_the_same_slug() {
    let mut adm = admin();
    let other_db = unique("udm_it_two");
    adm.batch_execute(&format!("CREATE DATABASE \"{other_db}\""))
        .unwrap();
    let connect_other = |user: &str| {
        let cs = conn_string(user).replace(
            &format!(
                "dbname={}",
                std::env::var("UDM_TEST_DB").unwrap_or_else(|_| "udm_it".into())
            ),
            &format!("dbname={other_db}"),
        );
        postgres::Client::connect(&cs, postgres::NoTls).unwrap()
    };
    let mut adm2 = connect_other("postgres");
    adm2.batch_execute("CREATE EXTENSION udm").unwrap();
    let slug = unique("twin");
    let here = json(
        &mut adm,
        &format!("SELECT udm_create_tenant({})", lit(&slug)),
    );
    let there = json(
        &mut adm2,
        &format!("SELECT udm_create_tenant({})", lit(&slug)),
    );
    assert_ne!(here["role"], there["role"], "{here} {there}");
    assert!(
        there["role"]
            .as_str()
            .unwrap()
            .ends_with(&format!("@{other_db}")),
        "{there}"
    );
    // an application granted this database's tenant does not reach the other's
    let app = login_role(&mut adm, "twinapp");
    grant_tenant(&mut adm, &slug, &app);
    let mut c = connect_as(&app);
    json(&mut c, &format!("SELECT udm_use({})", lit(&slug)));
    let mut c2 = connect_other(&app);
    let msg = expect_err(&mut c2, &format!("SELECT udm_use({})", lit(&slug)), "42501");
    assert!(msg.contains("permission denied for tenant"), "{msg}");
    expect_err(
        &mut c2,
        &format!("SELECT count(*) FROM \"{slug}\"._udm_entity"),
        "42501",
    );
    drop(c2);
    drop(adm2);
    json(
        &mut adm,
        &format!("SELECT udm_drop_tenant({0}, {0})", lit(&slug)),
    );
    let mut adm2 = connect_other("postgres");
    json(
        &mut adm2,
        &format!("SELECT udm_drop_tenant({0}, {0})", lit(&slug)),
    );
    drop(adm2);
    adm.batch_execute(&format!("DROP DATABASE \"{other_db}\" WITH (FORCE)"))
        .unwrap();
}
