//! Users, members, roles (RBAC) and relation tuples (ReBAC), enforced for udm functions and
//! plain SQL alike: rows the user may not see are absent, fields kept back are absent or
//! refused, writes the user may not make are refused with 42501 naming the permission.

use udm_tests::*;

/// A tenant with a login role, and a session of it (no application user yet).
struct Access {
    tenant: String,
    role: String,
    app: postgres::Client,
}

fn setup(prefix: &str) -> Access {
    let mut adm = admin();
    let m = member(&mut adm, prefix);
    Access {
        tenant: m.tenant,
        role: m.role,
        app: m.client,
    }
}

impl Access {
    /// A user (email prefix + unique part) created by this tenant's app.
    fn user(&mut self, name: &str) -> String {
        let email = format!("{}@{}.test", unique(name), self.tenant).to_lowercase();
        json(
            &mut self.app,
            &format!(
                "SELECT udm_create_user({}, {}, 'correct horse')",
                lit(&email),
                lit(name)
            ),
        );
        email
    }

    fn add(&mut self, email: &str, role: &str) {
        json(
            &mut self.app,
            &format!(
                "SELECT udm_add_member({}, {}, {})",
                lit(&self.tenant),
                lit(email),
                lit(role)
            ),
        );
    }

    /// A session of the app's role acting as `email`.
    fn as_user(&self, email: &str) -> postgres::Client {
        let mut c = connect_as(&self.role);
        c.query_one("SELECT udm_use($1, $2)", &[&self.tenant, &email])
            .unwrap_or_else(|e| panic!("udm_use {email}: {}", message(&e)));
        c
    }

    fn switch(&mut self, email: &str) {
        self.app
            .query_one("SELECT udm_use($1, $2)", &[&self.tenant, &email])
            .unwrap_or_else(|e| panic!("udm_use {email}: {}", message(&e)));
    }
}

/// The id of the record a udm_insert expression returns.
fn inserted_id(c: &mut postgres::Client, insert: &str) -> String {
    scalar(c, &format!("SELECT ({insert})->>'id'"))
}

impl Access {
    /// Grants `level` on `object` (`entity:id`) to the user, as the app's current member.
    fn grant(&mut self, email: &str, level: &str, object: &str) {
        json(
            &mut self.app,
            &format!(
                "SELECT udm_grant({}, {}, {})",
                lit(email),
                lit(level),
                lit(object)
            ),
        );
    }
}

#[test]
fn users_are_validated_hashed_and_never_returned() {
    let mut a = setup("acu");
    let email = a.user("Alice");
    let u: Option<Value> = scalar(
        &mut a.app,
        &format!("SELECT udm_authenticate({}, 'correct horse')", lit(&email)),
    );
    assert_eq!(u, None, "not a member yet: no login");
    a.add(&email, "admin");
    a.switch(&email);
    let u = json(
        &mut a.app,
        &format!("SELECT udm_authenticate({}, 'correct horse')", lit(&email)),
    );
    assert_eq!(
        (u["email"].clone(), u["role"].clone()),
        (json!(email), json!("admin")),
        "{u}"
    );
    assert!(
        u.get("password_hash").is_none() && !u.to_string().contains("$2"),
        "{u}"
    );
    let wrong: Option<Value> = scalar(
        &mut a.app,
        &format!("SELECT udm_authenticate({}, 'wrong horse')", lit(&email)),
    );
    assert_eq!(wrong, None);
    let msg = expect_err(
        &mut a.app,
        "SELECT udm_create_user('not-an-email', 'Bob', 'long enough')",
        "22023",
    );
    assert!(msg.contains("is not a valid email address"), "{msg}");
    let msg = expect_err(
        &mut a.app,
        "SELECT udm_create_user('bob@x.test', 'Bob', 'short')",
        "22023",
    );
    assert!(msg.contains("at least 8"), "{msg}");
    let msg = expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_create_user({}, 'Again', 'long enough')",
            lit(&email.to_uppercase())
        ),
        "23505",
    );
    assert!(
        msg.contains("already exists") && msg.contains("udm_add_member"),
        "{msg}"
    );
    // the table of users is the extension owner's only
    expect_err(&mut a.app, "SELECT count(*) FROM udm.app_user", "42501");
    let hash: String = scalar(
        &mut admin(),
        &format!(
            "SELECT password_hash FROM udm.app_user WHERE email = {}",
            lit(&email)
        ),
    );
    assert!(hash.starts_with("$2") && hash.len() == 60, "bcrypt: {hash}");
}

#[test]
fn udm_use_accepts_members_only() {
    let mut a = setup("acm");
    let alice = a.user("Alice");
    let bob = a.user("Bob");
    // a registered user must be a member, even before the tenant has members
    let msg = expect_err(
        &mut a.app,
        &format!("SELECT udm_use({}, {})", lit(&a.tenant), lit(&bob)),
        "42501",
    );
    assert!(
        msg.contains("is not a member of tenant") && msg.contains("udm_add_member"),
        "{msg}"
    );
    // without members, free labels only attribute changes
    json(
        &mut a.app,
        &format!("SELECT udm_use({}, 'batch-job')", lit(&a.tenant)),
    );
    a.add(&alice, "admin");
    // from now on the tenant controls access: labels are refused too
    let msg = expect_err(
        &mut a.app,
        &format!("SELECT udm_use({}, 'batch-job')", lit(&a.tenant)),
        "42501",
    );
    assert!(msg.contains("no such user"), "{msg}");
    let u = json(
        &mut a.app,
        &format!(
            "SELECT udm_use({}, {})",
            lit(&a.tenant),
            lit(&alice.to_uppercase())
        ),
    );
    assert_eq!(
        u["email"],
        json!(alice),
        "found by any spelling of the email"
    );
    let id: String = scalar(
        &mut admin(),
        &format!(
            "SELECT id::text FROM udm.app_user WHERE email = {}",
            lit(&alice)
        ),
    );
    assert_eq!(u["user_id"], json!(id), "recorded by id, never by email");
    // another tenant does not know alice
    let mut other = setup("acm2");
    let msg = expect_err(
        &mut other.app,
        &format!("SELECT udm_use({}, {})", lit(&other.tenant), lit(&alice)),
        "42501",
    );
    assert!(
        msg.contains(&format!("is not a member of tenant \"{}\"", other.tenant)),
        "{msg}"
    );
}

fn product_entity(c: &mut postgres::Client) {
    json(
        c,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "price", "type": "decimal", "precision": 10, "scale": 2},
            {"name": "cost", "type": "decimal", "precision": 10, "scale": 2}]}')"#,
    );
}

#[test]
fn roles_decide_operations_and_fields_for_udm_and_plain_sql() {
    let mut a = setup("acr");
    let t = a.tenant.clone();
    product_entity(&mut a.app);
    a.app
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name, price, cost) VALUES ('P1', 10, 4)"
        ))
        .unwrap();
    let (alice, vic, ed, pat) = (a.user("Alice"), a.user("Vic"), a.user("Ed"), a.user("Pat"));
    a.add(&alice, "admin");
    a.switch(&alice);
    a.add(&vic, "viewer");
    a.add(&ed, "editor");
    json(
        &mut a.app,
        r#"SELECT udm_define_role('pricer', 'viewer', '{"entities": {"product": {"update": true, "fields": {"cost": {"read": false, "write": false}}}}}')"#,
    );
    a.add(&pat, "pricer");

    let mut viewer = a.as_user(&vic);
    assert_eq!(
        column::<String>(&mut viewer, &format!("SELECT name FROM \"{t}\".product")),
        ["P1"]
    );
    let msg = expect_err(
        &mut viewer,
        &format!("INSERT INTO \"{t}\".product (name) VALUES ('V')"),
        "42501",
    );
    assert!(
        msg.contains(&format!(
            "user \"{vic}\" (role \"viewer\") may not create product"
        )) && msg.contains("permission product.create missing"),
        "{msg}"
    );
    expect_err(
        &mut viewer,
        "SELECT udm_insert('product', '{\"name\": \"V\"}')",
        "42501",
    );
    let msg = expect_err(
        &mut viewer,
        &format!("DELETE FROM \"{t}\".product"),
        "42501",
    );
    assert!(msg.contains("product.delete"), "{msg}");

    let mut editor = a.as_user(&ed);
    let id: String = scalar(
        &mut editor,
        "SELECT udm_insert('product', '{\"name\": \"E\", \"cost\": 3}')->>'id'",
    );
    editor
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET price = 11 WHERE id = {}",
            lit(&id)
        ))
        .unwrap();
    editor
        .batch_execute(&format!(
            "DELETE FROM \"{t}\".product WHERE id = {}",
            lit(&id)
        ))
        .unwrap();

    // the custom role: may update, never sees or writes cost
    let mut pricer = a.as_user(&pat);
    let q = json(&mut pricer, "SELECT udm_query('product', '{}')");
    let row = &q["rows"][0];
    assert!(
        row.get("price").is_some() && row.get("cost").is_none(),
        "{q}"
    );
    let msg = expect_err(
        &mut pricer,
        "SELECT udm_query('product', '{\"columns\": [\"name\", \"cost\"]}')",
        "42501",
    );
    assert!(
        msg.contains("permission denied to read product.cost"),
        "{msg}"
    );
    expect_err(
        &mut pricer,
        "SELECT udm_query('product', '{\"filters\": {\"cost\": {\"gt\": 1}}}')",
        "42501",
    );
    let p1: String = scalar(
        &mut pricer,
        &format!("SELECT id::text FROM \"{t}\".product WHERE name = 'P1'"),
    );
    let g = json(
        &mut pricer,
        &format!("SELECT udm_get('product', {})", lit(&p1)),
    );
    assert!(g.get("cost").is_none() && g["name"] == "P1", "{g}");
    pricer
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET price = 12 WHERE name = 'P1'"
        ))
        .unwrap();
    let msg = expect_err(
        &mut pricer,
        &format!("UPDATE \"{t}\".product SET cost = 1 WHERE name = 'P1'"),
        "42501",
    );
    assert!(
        msg.contains("write field \"cost\" of product") && msg.contains("product.cost.write"),
        "{msg}"
    );
    let u = json(
        &mut pricer,
        &format!(
            "SELECT udm_update('product', {}, '{{\"price\": 13}}')",
            lit(&p1)
        ),
    );
    assert!(
        u.get("cost").is_none() && u["price"].as_f64() == Some(13.0),
        "{u}"
    );
    // a replacement by the pricer leaves the field it may not write as it was (and the one it
    // left out, price, becomes null)
    let r = json(
        &mut pricer,
        &format!(
            "SELECT udm_replace('product', {}, '{{\"name\": \"P1\"}}')",
            lit(&p1)
        ),
    );
    assert!(r.get("cost").is_none() && r["price"].is_null(), "{r}");
    let cost: String = scalar(
        &mut a.app,
        &format!(
            "SELECT cost::text FROM \"{t}\".product WHERE id = {}",
            lit(&p1)
        ),
    );
    assert_eq!(cost, "4.00");
    expect_err(
        &mut pricer,
        &format!("DELETE FROM \"{t}\".product"),
        "42501",
    );

    // no member selected: nothing to see, nothing to write
    let mut nobody = connect_as(&a.role);
    nobody.query_one("SELECT udm_use($1)", &[&t]).unwrap();
    assert_eq!(
        scalar::<i64>(
            &mut nobody,
            &format!("SELECT count(*) FROM \"{t}\".product")
        ),
        0
    );
    let q = json(
        &mut nobody,
        "SELECT udm_query('product', '{\"count\": \"exact\"}')",
    );
    assert_eq!(q["count"], 0, "{q}");
    let msg = expect_err(
        &mut nobody,
        &format!("INSERT INTO \"{t}\".product (name) VALUES ('N')"),
        "42501",
    );
    assert!(
        msg.contains("controls access and no member is selected"),
        "{msg}"
    );
    // setting udm.user_id directly to a non-member grants nothing either
    nobody
        .batch_execute("SET udm.user_id = 'stranger@nowhere.test'")
        .unwrap();
    assert_eq!(
        scalar::<i64>(
            &mut nobody,
            &format!("SELECT count(*) FROM \"{t}\".product")
        ),
        0
    );
}

#[test]
fn nobody_grants_more_than_they_have() {
    let mut a = setup("acg");
    product_entity(&mut a.app);
    let (alice, mona, ed, x) = (
        a.user("Alice"),
        a.user("Mona"),
        a.user("Ed"),
        a.user("Xavier"),
    );
    a.add(&alice, "admin");
    a.switch(&alice);
    // a manager who may only read
    json(
        &mut a.app,
        r#"SELECT udm_define_role('manager', 'viewer', '{"manage": true}')"#,
    );
    a.add(&mona, "manager");
    a.add(&ed, "editor");
    let mut editor = a.as_user(&ed);
    let msg = expect_err(
        &mut editor,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&a.tenant),
            lit(&x)
        ),
        "42501",
    );
    assert!(
        msg.contains("may not add members (permission manage missing)"),
        "{msg}"
    );
    let mut manager = a.as_user(&mona);
    json(
        &mut manager,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&a.tenant),
            lit(&x)
        ),
    );
    let msg = expect_err(
        &mut manager,
        &format!(
            "SELECT udm_add_member({}, {}, 'editor')",
            lit(&a.tenant),
            lit(&x)
        ),
        "42501",
    );
    assert!(
        msg.contains("role \"editor\" would allow *.create") && msg.contains("does not have"),
        "{msg}"
    );
    let msg = expect_err(
        &mut manager,
        r#"SELECT udm_define_role('sneaky', 'viewer', '{"entities": {"product": {"delete": true}}}')"#,
        "42501",
    );
    assert!(msg.contains("would allow product.delete"), "{msg}");
    // roles are checked against the tenant's entities and fields
    let msg = expect_err(
        &mut a.app,
        r#"SELECT udm_define_role('r1', 'viewer', '{"entities": {"nope": {"read": true}}}')"#,
        "42P01",
    );
    assert!(msg.contains("role \"r1\""), "{msg}");
    expect_err(
        &mut a.app,
        r#"SELECT udm_define_role('r2', 'viewer', '{"entities": {"product": {"fields": {"nope": {"read": false}}}}}')"#,
        "42703",
    );
    expect_err(
        &mut a.app,
        "SELECT udm_define_role('admin', 'viewer', '{}')",
        "42710",
    );
    expect_err(
        &mut a.app,
        "SELECT udm_define_role('r3', 'nobody', '{}')",
        "42704",
    );
    let roles = column::<String>(&mut a.app, "SELECT name FROM udm_roles() ORDER BY name");
    assert_eq!(roles, ["admin", "editor", "manager", "viewer"]);
    // the last admin stays: a member whose role manages the tenant counts as one
    json(
        &mut a.app,
        &format!(
            "SELECT udm_remove_member({}, {})",
            lit(&a.tenant),
            lit(&mona)
        ),
    );
    let msg = expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_remove_member({}, {})",
            lit(&a.tenant),
            lit(&alice)
        ),
        "55000",
    );
    assert!(msg.contains("last admin"), "{msg}");
    json(
        &mut a.app,
        &format!("SELECT udm_remove_member({}, {})", lit(&a.tenant), lit(&x)),
    );
    expect_err(
        &mut a.app,
        &format!("SELECT udm_use({}, {})", lit(&a.tenant), lit(&x)),
        "42501",
    );
    // plain SQL cannot get around udm_add_member, udm_define_role or udm_grant
    let mut ed_c = a.as_user(&ed);
    for sql in [
        format!("UPDATE \"{}\"._udm_member SET role = 'admin'", a.tenant),
        format!("DELETE FROM \"{}\"._udm_member", a.tenant),
        format!("INSERT INTO \"{}\"._udm_role (name, parent, permissions) VALUES ('root', 'admin', '{{}}')", a.tenant),
        format!(
            "INSERT INTO \"{}\"._udm_tuple (object_entity, object_id, subject, relation, granted_by) \
             SELECT 'product', gen_random_uuid(), user_id, 'admin', 'me' FROM \"{}\"._udm_member LIMIT 1",
            a.tenant, a.tenant
        ),
        format!("TRUNCATE \"{}\"._udm_tuple", a.tenant),
    ] {
        expect_err(&mut ed_c, &sql, "42501");
    }
    // member changes are audited (the failed udm_use above left no user selected: alice again)
    a.switch(&alice);
    let n: i64 = scalar(
        &mut a.app,
        &format!(
            "SELECT count(*) FROM \"{}\"._udm_audit WHERE entity = 'tenant#member'",
            a.tenant
        ),
    );
    assert_eq!(n, 6, "4 adds, 2 removals");
}

fn roadmap_entities(c: &mut postgres::Client) {
    json(
        c,
        r#"SELECT udm_define_entity('roadmap', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "owner_id", "type": "user", "on_delete": "cascade"}],
          "access": {"scope": "self", "owner": "owner_id"}}')"#,
    );
    json(
        c,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "roadmap_id", "type": "relation", "target": "roadmap", "required": true, "on_delete": "cascade"}],
          "access": {"scope": "roadmap_id"}, "lock": "roadmap_id"}')"#,
    );
    json(
        c,
        r#"SELECT udm_define_entity('link', '{"fields": [
            {"name": "label", "type": "text"},
            {"name": "product_id", "type": "relation", "target": "product", "on_delete": "cascade"}],
          "access": {"scope": "product_id"}}')"#,
    );
}

#[test]
fn relation_tuples_decide_rows_and_flow_down_relations() {
    let mut a = setup("act");
    let t = a.tenant.clone();
    roadmap_entities(&mut a.app);
    let (alice, bob, carol) = (a.user("Alice"), a.user("Bob"), a.user("Carol"));
    a.add(&alice, "admin");
    a.switch(&alice);
    a.add(&bob, "editor");
    a.add(&carol, "viewer");
    let mut bobc = a.as_user(&bob);
    let mut carolc = a.as_user(&carol);
    let r1: String = scalar(
        &mut a.app,
        "SELECT udm_insert('roadmap', '{\"name\": \"R1\"}')->>'id'",
    );
    let r2: String = scalar(
        &mut bobc,
        "SELECT udm_insert('roadmap', '{\"name\": \"R2\"}')->>'id'",
    );
    // the creator owns the roadmap
    let owner: String = scalar(
        &mut bobc,
        &format!("SELECT udm_get('roadmap', {})->>'owner_id'", lit(&r2)),
    );
    let bob_id: String = scalar(
        &mut bobc,
        &format!(
            "SELECT user_id::text FROM udm_members() WHERE email = {}",
            lit(&bob)
        ),
    );
    assert_eq!(owner, bob_id);
    let p1: String = scalar(&mut a.app, &format!("SELECT udm_insert('product', jsonb_build_object('name', 'P1', 'roadmap_id', {}))->>'id'", lit(&r1)));
    json(
        &mut a.app,
        &format!(
            "SELECT udm_insert('link', jsonb_build_object('label', 'L1', 'product_id', {}))",
            lit(&p1)
        ),
    );
    json(
        &mut bobc,
        &format!(
            "SELECT udm_insert('product', jsonb_build_object('name', 'P2', 'roadmap_id', {}))",
            lit(&r2)
        ),
    );
    // bob may not put products into a roadmap he has no relation to
    let msg = expect_err(
        &mut bobc,
        &format!(
            "INSERT INTO \"{t}\".product (name, roadmap_id) VALUES ('X', {})",
            lit(&r1)
        ),
        "42501",
    );
    assert!(
        msg.contains(&format!("it needs editor on roadmap {r1}, and has none")),
        "{msg}"
    );

    // rows: the tenant admin sees all, the owner his own, the viewer nothing yet
    let all = format!("SELECT name FROM \"{t}\".roadmap ORDER BY name");
    assert_eq!(column::<String>(&mut a.app, &all), ["R1", "R2"]);
    assert_eq!(column::<String>(&mut bobc, &all), ["R2"]);
    assert_eq!(
        column::<String>(&mut bobc, &format!("SELECT name FROM \"{t}\".product")),
        ["P2"]
    );
    assert!(column::<String>(&mut carolc, &all).is_empty());
    assert_eq!(
        json(&mut carolc, "SELECT udm_query('link', '{}')")["rows"],
        json!([])
    );

    // a viewer tuple on R1 shows R1, its products and their links (levels flow down)
    json(
        &mut a.app,
        &format!(
            "SELECT udm_grant({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("roadmap:{r1}"))
        ),
    );
    assert_eq!(column::<String>(&mut carolc, &all), ["R1"]);
    assert_eq!(
        column::<String>(&mut carolc, &format!("SELECT name FROM \"{t}\".product")),
        ["P1"]
    );
    let q = json(&mut carolc, "SELECT udm_query('link', '{\"columns\": [\"label\", \"product_id.name\", \"product_id.roadmap_id.name\"]}')");
    assert_eq!(
        q["rows"],
        json!([{"label": "L1", "product_id.name": "P1", "product_id.roadmap_id.name": "R1"}])
    );
    let agg = json(
        &mut carolc,
        "SELECT udm_aggregate('product', '{\"metrics\": [\"count\"]}')",
    );
    assert_eq!(agg["rows"][0]["count"], 1, "{agg}");
    // ... but a viewer does not write or lock
    let msg = expect_err(
        &mut carolc,
        &format!(
            "UPDATE \"{t}\".product SET name = 'c' WHERE id = {}",
            lit(&p1)
        ),
        "42501",
    );
    assert!(
        msg.contains("it needs editor on roadmap") && msg.contains("has viewer"),
        "{msg}"
    );
    let msg = expect_err(
        &mut carolc,
        &format!("SELECT udm_lock_acquire('product', {})", lit(&p1)),
        "42501",
    );
    assert!(msg.contains("viewers may not"), "{msg}");
    assert!(scalar::<bool>(
        &mut carolc,
        &format!(
            "SELECT udm_check({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("product:{p1}"))
        )
    ));
    assert!(!scalar::<bool>(
        &mut carolc,
        &format!(
            "SELECT udm_check({}, 'editor', {})",
            lit(&carol),
            lit(&format!("roadmap:{r1}"))
        )
    ));

    // granting needs admin on the record: the owner has it, an editor does not
    json(
        &mut bobc,
        &format!(
            "SELECT udm_grant({}, 'editor', {})",
            lit(&carol),
            lit(&format!("roadmap:{r2}"))
        ),
    );
    let msg = expect_err(
        &mut bobc,
        &format!(
            "SELECT udm_grant({}, 'editor', {})",
            lit(&carol),
            lit(&format!("roadmap:{r1}"))
        ),
        "42501",
    );
    assert!(msg.contains("it needs admin on it, and has none"), "{msg}");
    json(
        &mut a.app,
        &format!(
            "SELECT udm_grant({}, 'editor', {})",
            lit(&bob),
            lit(&format!("roadmap:{r1}"))
        ),
    );
    let msg = expect_err(
        &mut bobc,
        &format!(
            "SELECT udm_grant({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("roadmap:{r1}"))
        ),
        "42501",
    );
    assert!(msg.contains("has editor"), "{msg}");
    expect_err(
        &mut bobc,
        &format!(
            "SELECT udm_grant({}, 'owner', {})",
            lit(&carol),
            lit(&format!("roadmap:{r2}"))
        ),
        "22023",
    );

    // carol, editor on R2 (a viewer by role): edits and locks there, deletes products, not the roadmap
    assert_eq!(column::<String>(&mut carolc, &all), ["R1", "R2"]);
    json(
        &mut carolc,
        &format!("SELECT udm_lock_acquire('roadmap', {})", lit(&r2)),
    );
    carolc
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET name = 'P2c' WHERE roadmap_id = {}",
            lit(&r2)
        ))
        .unwrap();
    let msg = expect_err(
        &mut carolc,
        &format!("DELETE FROM \"{t}\".roadmap WHERE id = {}", lit(&r2)),
        "42501",
    );
    assert!(msg.contains("it needs admin on roadmap"), "{msg}");
    carolc
        .batch_execute(&format!(
            "DELETE FROM \"{t}\".product WHERE roadmap_id = {}",
            lit(&r2)
        ))
        .unwrap();
    json(
        &mut carolc,
        &format!("SELECT udm_lock_release('roadmap', {})", lit(&r2)),
    );
    // moving a product into a roadmap one is not editor of is refused
    let msg = expect_err(
        &mut carolc,
        &format!(
            "UPDATE \"{t}\".product SET roadmap_id = {} WHERE id = {}",
            lit(&r2),
            lit(&p1)
        ),
        "42501",
    );
    assert!(
        msg.contains(&format!("it needs editor on roadmap {r1}, and has viewer")),
        "{msg}"
    );

    // revoked: gone again
    json(
        &mut a.app,
        &format!(
            "SELECT udm_revoke({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("roadmap:{r1}"))
        ),
    );
    assert_eq!(column::<String>(&mut carolc, &all), ["R2"]);
    expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_revoke({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("roadmap:{r1}"))
        ),
        "42704",
    );
    // relations are granted on scope records; records inside inherit them
    let msg = expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_grant({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("product:{p1}"))
        ),
        "55000",
    );
    assert!(
        msg.contains("inherit their relations from \"roadmap\""),
        "{msg}"
    );
    // grants are audited; objects must exist and have an access scope
    let n: i64 = scalar(
        &mut a.app,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit WHERE entity = 'roadmap#access'"),
    );
    assert_eq!(n, 4, "3 grants and a revoke");
    expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_grant({}, 'viewer', 'roadmap:00000000-0000-0000-0000-000000000001')",
            lit(&carol)
        ),
        "P0002",
    );
    expect_err(
        &mut a.app,
        &format!("SELECT udm_grant({}, 'viewer', 'roadmap')", lit(&carol)),
        "22023",
    );
    // an access scope through a relation needs a target with a scope
    let msg = expect_err(
        &mut a.app,
        r#"SELECT udm_define_entity('note', '{"fields": [{"name": "n", "type": "text"}, {"name": "x_id", "type": "relation", "target": "note2"}], "access": {"scope": "x_id"}}')"#,
        "42P01",
    );
    assert!(msg.contains("note2"), "{msg}");
    json(
        &mut a.app,
        r#"SELECT udm_define_entity('tag', '{"fields": [{"name": "n", "type": "text"}]}')"#,
    );
    let msg = expect_err(
        &mut a.app,
        r#"SELECT udm_define_entity('note', '{"fields": [{"name": "n", "type": "text"}, {"name": "tag_id", "type": "relation", "target": "tag"}], "access": {"scope": "tag_id"}}')"#,
        "55000",
    );
    assert!(msg.contains("which has no access scope"), "{msg}");
}

#[test]
fn refusals_of_users_members_and_access_scopes_name_what_is_wrong() {
    let mut a = setup("acx");
    let alice = a.user("Alice");
    let bob = a.user("Bob");
    // logging in with an unknown or malformed email gives nothing (and costs a bcrypt all the same)
    for email in ["nobody@nowhere.test", "not an email"] {
        let u: Option<Value> = scalar(
            &mut a.app,
            &format!("SELECT udm_authenticate({}, 'correct horse')", lit(email)),
        );
        assert_eq!(u, None, "{email}");
    }
    a.add(&alice, "admin");
    a.switch(&alice);
    a.add(&bob, "viewer");
    // removing someone who is not a member
    let carol = a.user("Carol");
    let msg = expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_remove_member({}, {})",
            lit(&a.tenant),
            lit(&carol)
        ),
        "42704",
    );
    assert!(msg.contains("is not a member of tenant"), "{msg}");
    expect_err(
        &mut a.app,
        &format!(
            "SELECT udm_add_member({}, {}, 'overlord')",
            lit(&a.tenant),
            lit(&carol)
        ),
        "42704",
    );
    // once access control is on, only members who manage may register users
    let mut b = a.as_user(&bob);
    let msg = expect_err(
        &mut b,
        "SELECT udm_create_user('dave@acx.test', 'Dave', 'correct horse')",
        "42501",
    );
    assert!(msg.contains("manage"), "{msg}");
    // access scopes: the owner must be a user field, the scope a relation to a scoped entity
    product_entity(&mut a.app);
    let msg = expect_err(
        &mut a.app,
        r#"SELECT udm_set_access('product', '{"scope": "self", "owner": "name"}')"#,
        "22023",
    );
    assert!(msg.contains("name"), "{msg}");
    let msg = expect_err(
        &mut a.app,
        r#"SELECT udm_set_access('product', '{"scope": "nope"}')"#,
        "42703",
    );
    assert!(msg.contains("nope"), "{msg}");
    expect_err(
        &mut a.app,
        r#"SELECT udm_set_access('product', '{"scope": "self", "extra": 1}')"#,
        "22023",
    );
    json(
        &mut a.app,
        r#"SELECT udm_set_access('product', '{"scope": "self"}')"#,
    );
    let msg = expect_err(
        &mut a.app,
        r#"SELECT udm_set_access('product', '{"scope": "self"}')"#,
        "55000",
    );
    assert!(msg.contains("already has this access scope"), "{msg}");
    // a viewer may not change definitions, of any kind
    expect_err(&mut b, r#"SELECT udm_set_access('product', null)"#, "42501");
    let msg = expect_err(
        &mut b,
        r#"SELECT udm_define_entity('note', '{"fields": [{"name": "body", "type": "text"}]}')"#,
        "42501",
    );
    assert!(
        msg.contains("may not define entity \"note\" (permission manage missing)"),
        "{msg}"
    );
    expect_err(&mut b, "SELECT udm_drop_entity('product')", "42501");
    expect_err(&mut b, "SELECT udm_install_template('roadmap')", "42501");
    expect_err(
        &mut b,
        r#"SELECT udm_add_field('product', '{"name": "x", "type": "text"}')"#,
        "42501",
    );
    // udm's row triggers refuse to run as anything else
    let t = a.tenant.clone();
    let mut adm = admin();
    if on_citus(&mut adm) {
        // Citus creates triggers on a distributed table only with this (they fire on the worker)
        adm.batch_execute("SET citus.enable_unsafe_triggers = on")
            .unwrap();
    }
    for (f, args) in [
        ("access_guard", ""),
        ("rule_trigger", "'a', 'b', 'c', 'id', '', ''"),
    ] {
        adm.batch_execute(&format!(
            "CREATE TRIGGER wrong_{f} AFTER UPDATE ON \"{t}\".product FOR EACH STATEMENT EXECUTE FUNCTION udm.{f}({args})"
        ))
        .unwrap();
        let msg = expect_err(
            &mut adm,
            &format!("UPDATE \"{t}\".product SET name = name WHERE false"),
            "0A000",
        );
        assert!(msg.contains(&format!("udm.{f}() must be")), "{msg}");
        adm.batch_execute(&format!("DROP TRIGGER wrong_{f} ON \"{t}\".product"))
            .unwrap();
    }
}

#[test]
fn id_in_finds_ids_in_short_and_long_lists() {
    let mut c = admin();
    // short lists are searched in order, long ones through a sorted copy made once per query
    for n in [1, 8, 9, 500] {
        let (hits, misses): (i64, i64) = {
            let row = c
                .query_one(
                    &format!(
                        "WITH ids AS (SELECT md5(i::text)::uuid AS id FROM generate_series(1, {n}) i),
                              list AS (SELECT array_agg(id) || ARRAY[NULL::uuid, (SELECT id FROM ids ORDER BY id LIMIT 1)] AS a FROM ids),
                              probe AS (SELECT md5(i::text)::uuid AS id, i <= {n} AS member FROM generate_series(1, 2 * {n}) i)
                         SELECT count(*) FILTER (WHERE member AND udm.id_in(p.id, l.a)),
                                count(*) FILTER (WHERE NOT member AND NOT udm.id_in(p.id, l.a))
                         FROM probe p, list l"
                    ),
                    &[],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert_eq!((hits, misses), (n, n), "list of {n}");
    }
    let null: Option<bool> = scalar(&mut c, "SELECT udm.id_in(NULL, ARRAY[gen_random_uuid()])");
    assert_eq!(null, None);
    let empty: bool = scalar(&mut c, "SELECT udm.id_in(gen_random_uuid(), '{}'::uuid[])");
    assert!(!empty);
}

#[test]
fn a_scope_roots_owner_change_reaches_the_policies_inside_it() {
    let mut a = setup("aco");
    let t = a.tenant.clone();
    roadmap_entities(&mut a.app);
    let (alice, bob) = (a.user("Alice"), a.user("Bob"));
    a.add(&alice, "admin");
    a.switch(&alice);
    a.add(&bob, "viewer");
    let bob_id: String = scalar(
        &mut a.app,
        &format!(
            "SELECT user_id::text FROM udm_members() WHERE email = {}",
            lit(&bob)
        ),
    );
    json(
        &mut a.app,
        r#"SELECT udm_add_field('roadmap', '{"name": "lead_id", "type": "user"}')"#,
    );
    let r: String = scalar(
        &mut a.app,
        &format!("SELECT udm_insert('roadmap', jsonb_build_object('name', 'R', 'lead_id', '{bob_id}'))->>'id'"),
    );
    json(
        &mut a.app,
        &format!(
            "SELECT udm_insert('product', jsonb_build_object('name', 'P', 'roadmap_id', {}))",
            lit(&r)
        ),
    );
    let mut b = a.as_user(&bob);
    let count = |c: &mut postgres::Client, table: &str| -> i64 {
        scalar(c, &format!("SELECT count(*) FROM \"{t}\".{table}"))
    };
    // bob leads the roadmap, but the owner is alice: he sees nothing
    assert_eq!((count(&mut b, "roadmap"), count(&mut b, "product")), (0, 0));
    // the roadmap's owner becomes the lead: the product's policy follows
    json(
        &mut a.app,
        r#"SELECT udm_set_access('roadmap', '{"scope": "self", "owner": "lead_id"}')"#,
    );
    assert_eq!((count(&mut b, "roadmap"), count(&mut b, "product")), (1, 1));
    assert_eq!(count(&mut b, "link"), 0);
    // and the owner field cannot go while it is the owner
    expect_err(
        &mut a.app,
        "SELECT udm_remove_field('roadmap', 'lead_id')",
        "2BP01",
    );
}

/// The audit log holds every record's images: a member reads the rows of the records they see,
/// through udm_history, udm_record_at, reports, events and plain SELECT alike; a role kept from
/// a field reads none of its entity's rows; managers read everything; a transaction is undone
/// only by a member who may read all of it.
#[test]
fn the_audit_log_shows_members_the_records_they_see() {
    let mut a = setup("aal");
    let t = a.tenant.clone();
    roadmap_entities(&mut a.app);
    json(
        &mut a.app,
        r#"SELECT udm_define_entity('part', '{"fields": [
            {"name": "name", "type": "text"},
            {"name": "cost", "type": "decimal", "precision": 10, "scale": 2}]}')"#,
    );
    let (alice, bob, carol, pat) = (
        a.user("Alice"),
        a.user("Bob"),
        a.user("Carol"),
        a.user("Pat"),
    );
    a.add(&alice, "admin");
    a.switch(&alice);
    a.add(&bob, "editor");
    a.add(&carol, "viewer");
    json(
        &mut a.app,
        r#"SELECT udm_define_role('pricer', 'viewer', '{"entities": {"part": {"fields": {"cost": {"read": false}}}}}')"#,
    );
    a.add(&pat, "pricer");
    let r1 = inserted_id(&mut a.app, "udm_insert('roadmap', '{\"name\": \"R1\"}')");
    let r2 = inserted_id(&mut a.app, "udm_insert('roadmap', '{\"name\": \"R2\"}')");
    let p1 = inserted_id(
        &mut a.app,
        &format!(
            "udm_insert('product', jsonb_build_object('name', 'P1', 'roadmap_id', {}))",
            lit(&r1)
        ),
    );
    let p2 = inserted_id(
        &mut a.app,
        &format!(
            "udm_insert('product', jsonb_build_object('name', 'P2', 'roadmap_id', {}))",
            lit(&r2)
        ),
    );
    let part = inserted_id(
        &mut a.app,
        "udm_insert('part', '{\"name\": \"Bolt\", \"cost\": 3}')",
    );
    a.app
        .batch_execute(&format!(
            "UPDATE \"{t}\".part SET cost = 4 WHERE id = {}",
            lit(&part)
        ))
        .unwrap();
    for (who, level) in [(&carol, "viewer"), (&bob, "editor")] {
        a.grant(who, level, &format!("roadmap:{r1}"));
    }
    // one transaction changes a product of each roadmap
    a.app.batch_execute("BEGIN").unwrap();
    let here: i64 = scalar(&mut a.app, "SELECT txid_current()");
    a.app
        .batch_execute(&format!(
            "UPDATE \"{t}\".product SET name = name || '!' WHERE id IN ({}, {}); COMMIT",
            lit(&p1),
            lit(&p2)
        ))
        .unwrap();
    // the transaction as the history names it (on Citus, the transaction on the tenant's node)
    let tx: i64 = scalar(
        &mut a.app,
        &format!(
            "SELECT max(txid) FROM udm_history('product', {}) WHERE version = 2",
            lit(&p1)
        ),
    );
    if !on_citus(&mut a.app) {
        assert_eq!(tx, here);
    }

    let ids_seen = |c: &mut postgres::Client| -> Vec<String> {
        column::<String>(
            c,
            &format!("SELECT DISTINCT record_id::text FROM \"{t}\"._udm_audit ORDER BY 1"),
        )
    };
    // the policies' list of the records a member has tuples on
    let mut carolc = a.as_user(&carol);
    let objects = |c: &mut postgres::Client, entity: &str| -> Vec<String> {
        scalar(
            c,
            &format!(
                "SELECT udm.tuple_objects({}, {})::text[]",
                lit(&t),
                lit(entity)
            ),
        )
    };
    assert_eq!(objects(&mut carolc, "roadmap"), [r1.as_str()]);
    assert!(objects(&mut carolc, "product").is_empty());
    assert!(
        objects(&mut a.app, "roadmap").is_empty(),
        "alice has no tuples"
    );
    let mut want_carol = vec![r1.clone(), p1.clone(), part.clone()];
    want_carol.sort();
    assert_eq!(
        ids_seen(&mut carolc),
        want_carol,
        "plain SELECT of the audit log"
    );
    let count = |c: &mut postgres::Client, entity: &str, id: &str| -> i64 {
        scalar(
            c,
            &format!(
                "SELECT count(*) FROM udm_history({}, {})",
                lit(entity),
                lit(id)
            ),
        )
    };
    assert_eq!(count(&mut carolc, "product", &p1), 2);
    assert_eq!(
        count(&mut carolc, "product", &p2),
        0,
        "history of a record carol does not see"
    );
    assert_eq!(count(&mut carolc, "roadmap", &r2), 0);
    let at = |c: &mut postgres::Client, id: &str| -> Option<serde_json::Value> {
        scalar(
            c,
            &format!("SELECT udm_record_at('product', {}, now())", lit(id)),
        )
    };
    assert_eq!(at(&mut carolc, &p1).unwrap()["name"], "P1!");
    assert_eq!(at(&mut carolc, &p2), None);
    let report = json(
        &mut carolc,
        "SELECT udm_audit_report('changes', now() - interval '1 hour', now() + interval '1 hour')",
    );
    let reported: std::collections::BTreeSet<&str> = report["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        reported,
        want_carol.iter().map(String::as_str).collect(),
        "{report}"
    );
    let plain: i64 = scalar(
        &mut carolc,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit"),
    );
    assert_eq!(report["summary"]["total_changes"], plain, "{report}");
    let events = json(&mut carolc, "SELECT udm_events(0, 1000)");
    let evented: std::collections::BTreeSet<&str> = events["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{events}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(
        !evented.contains(p2.as_str()) && !evented.contains(r2.as_str()),
        "{events}"
    );
    assert!(evented.contains(p1.as_str()), "{events}");

    // pat reads parts, without their cost: none of their audit rows (the images hold the cost)
    let mut patc = a.as_user(&pat);
    assert_eq!(
        column::<String>(&mut patc, &format!("SELECT name FROM \"{t}\".part")),
        ["Bolt"]
    );
    assert!(ids_seen(&mut patc).is_empty());
    assert_eq!(count(&mut patc, "part", &part), 0);
    // nor once the field is removed: the older images still hold it
    json(&mut a.app, "SELECT udm_remove_field('part', 'cost')");
    assert!(ids_seen(&mut patc).is_empty());
    // verify checks what a member reads: pat sees parts but not their audit rows, which is no
    // missing row
    for c in [&mut patc, &mut carolc] {
        let v = json(c, "SELECT udm_audit_verify()");
        assert_eq!(v["ok"], true, "{v}");
    }

    // the admin reads everything, members' changes too
    let mut all = [r1.clone(), r2.clone(), p1.clone(), p2.clone(), part.clone()];
    all.sort();
    let admin_ids = ids_seen(&mut a.app);
    assert!(all.iter().all(|i| admin_ids.contains(i)), "{admin_ids:?}");
    let members: i64 = scalar(
        &mut a.app,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit WHERE entity = 'tenant#member'"),
    );
    assert_eq!(members, 4);
    let members: i64 = scalar(
        &mut carolc,
        &format!("SELECT count(*) FROM \"{t}\"._udm_audit WHERE entity = 'tenant#member'"),
    );
    assert_eq!(members, 0);

    // a grant shows the record's rows at once, a revoke hides them again
    a.grant(&carol, "viewer", &format!("roadmap:{r2}"));
    assert_eq!(count(&mut carolc, "product", &p2), 2);
    json(
        &mut a.app,
        &format!(
            "SELECT udm_revoke({}, 'viewer', {})",
            lit(&carol),
            lit(&format!("roadmap:{r2}"))
        ),
    );
    assert_eq!(count(&mut carolc, "product", &p2), 0);

    // bob edits R1 only: undoing the transaction would be half applied, so it is refused
    let mut bobc = a.as_user(&bob);
    let msg = expect_err(
        &mut bobc,
        &format!("SELECT udm_rollback_transaction({tx})"),
        "42501",
    );
    assert!(
        msg.contains(&format!(
            "transaction {tx} made 1 changes in tenant \"{t}\" that user \"{bob}\" may not read"
        )),
        "{msg}"
    );
    let p1_name: String = scalar(
        &mut a.app,
        &format!("SELECT name FROM \"{t}\".product WHERE id = {}", lit(&p1)),
    );
    assert_eq!(p1_name, "P1!");
    json(
        &mut a.app,
        &format!("SELECT udm_rollback_transaction({tx})"),
    );
    assert_eq!(
        column::<String>(
            &mut a.app,
            &format!("SELECT name FROM \"{t}\".product ORDER BY name")
        ),
        ["P1", "P2"]
    );

    // a deleted scoped record's rows are for managers: carol no longer sees P1 to check
    a.app
        .batch_execute(&format!(
            "DELETE FROM \"{t}\".product WHERE id = {}",
            lit(&p1)
        ))
        .unwrap();
    assert_eq!(count(&mut carolc, "product", &p1), 0);
    assert!(count(&mut a.app, "product", &p1) >= 4);
}

/// Links of a many-to-many field are changes of the source record's field: plain writes to the
/// junction table need what udm_update of that field needs, and a member sees only the links
/// between records they see.
#[test]
fn junction_tables_hold_links_to_the_fields_access_rules() {
    let mut a = setup("ajn");
    let t = a.tenant.clone();
    json(
        &mut a.app,
        r#"SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}')"#,
    );
    roadmap_entities(&mut a.app);
    json(
        &mut a.app,
        r#"SELECT udm_add_field('product', '{"name": "tags", "type": "relation", "target": "tag", "many": true}')"#,
    );
    let (alice, bob, vic, pat) = (a.user("Alice"), a.user("Bob"), a.user("Vic"), a.user("Pat"));
    a.add(&alice, "admin");
    a.switch(&alice);
    a.add(&bob, "editor");
    a.add(&vic, "viewer");
    json(
        &mut a.app,
        r#"SELECT udm_define_role('tagless', 'editor', '{"entities": {"product": {"fields": {"tags": {"write": false}}}}}')"#,
    );
    a.add(&pat, "tagless");
    let r1 = inserted_id(&mut a.app, "udm_insert('roadmap', '{\"name\": \"R1\"}')");
    let r2 = inserted_id(&mut a.app, "udm_insert('roadmap', '{\"name\": \"R2\"}')");
    let tag = inserted_id(&mut a.app, "udm_insert('tag', '{\"name\": \"red\"}')");
    let p1 = inserted_id(
        &mut a.app,
        &format!(
            "udm_insert('product', jsonb_build_object('name', 'P1', 'roadmap_id', {}))",
            lit(&r1)
        ),
    );
    let p2 = inserted_id(&mut a.app, &format!("udm_insert('product', jsonb_build_object('name', 'P2', 'roadmap_id', {}, 'tags', jsonb_build_array({})))", lit(&r2), lit(&tag)));
    for (who, level) in [(&bob, "editor"), (&vic, "viewer"), (&pat, "editor")] {
        a.grant(who, level, &format!("roadmap:{r1}"));
    }
    let link = |p: &str| {
        format!(
            "INSERT INTO \"{t}\".product__tags (source_id, target_id) VALUES ({}, {})",
            lit(p),
            lit(&tag)
        )
    };

    // bob edits R1's products: he links them, plainly, but not R2's
    let mut bobc = a.as_user(&bob);
    bobc.batch_execute(&link(&p1)).unwrap();
    let msg = expect_err(
        &mut bobc,
        &format!(
            "INSERT INTO \"{t}\".product__tags (source_id, target_id) VALUES ({}, {})",
            lit(&p2),
            lit(&tag)
        ),
        "42501",
    );
    assert!(
        msg.contains(&format!("may not change field \"tags\" of product {p2} (it needs editor on product {p2}, and has none)")),
        "{msg}"
    );
    // a viewer does not change links; a role kept from writing the field does not either
    let mut vicc = a.as_user(&vic);
    let msg = expect_err(
        &mut vicc,
        &format!(
            "DELETE FROM \"{t}\".product__tags WHERE source_id = {}",
            lit(&p1)
        ),
        "42501",
    );
    assert!(msg.contains("and has viewer"), "{msg}");
    let mut patc = a.as_user(&pat);
    let msg = expect_err(
        &mut patc,
        &format!(
            "DELETE FROM \"{t}\".product__tags WHERE source_id = {}",
            lit(&p1)
        ),
        "42501",
    );
    assert!(
        msg.contains("permission product.tags.write missing"),
        "{msg}"
    );
    let msg = expect_err(
        &mut patc,
        &format!(
            "SELECT udm_update('product', {}, '{{\"tags\": []}}')",
            lit(&p1)
        ),
        "42501",
    );
    assert!(msg.contains("product.tags.write"), "{msg}");

    // a junction made after the tenant got members is guarded too
    json(
        &mut a.app,
        r#"SELECT udm_add_field('product', '{"name": "labels", "type": "relation", "target": "tag", "many": true}')"#,
    );
    let msg = expect_err(
        &mut vicc,
        &format!(
            "INSERT INTO \"{t}\".product__labels (source_id, target_id) VALUES ({}, {})",
            lit(&p1),
            lit(&tag)
        ),
        "42501",
    );
    assert!(
        msg.contains("may not change field \"labels\" of product"),
        "{msg}"
    );
    // a removed field's links are no member's to change, an editor's neither
    json(&mut a.app, "SELECT udm_remove_field('product', 'labels')");
    let removed: String = scalar(
        &mut a.app,
        &format!(
            "SELECT relname::text FROM pg_class WHERE relnamespace = {}::regnamespace AND relname LIKE 'product\\_\\_f%\\_\\_removed'",
            lit(&format!("\"{t}\""))
        ),
    );
    let msg = expect_err(
        &mut bobc,
        &format!(
            "INSERT INTO \"{t}\".\"{removed}\" (source_id, target_id) VALUES ({}, {})",
            lit(&p1),
            lit(&tag)
        ),
        "42501",
    );
    assert!(
        msg.contains("permission product.labels.write missing"),
        "{msg}"
    );
    // a session of the tenant's role that selected no member sees no links to remove, and adds
    // none
    let mut nobody = connect_as(&a.role);
    nobody
        .batch_execute(&format!("SELECT udm_use({})", lit(&t)))
        .unwrap();
    let removed_none = nobody
        .execute(
            &format!(
                "DELETE FROM \"{t}\".product__tags WHERE source_id = {}",
                lit(&p1)
            ),
            &[],
        )
        .unwrap();
    assert_eq!(removed_none, 0);
    let msg = expect_err(&mut nobody, &link(&p1), "42501");
    assert!(msg.contains("no member is selected"), "{msg}");

    // reads: the links between records one sees
    let links = |c: &mut postgres::Client| -> Vec<String> {
        column::<String>(
            c,
            &format!("SELECT source_id::text FROM \"{t}\".product__tags ORDER BY 1"),
        )
    };
    assert_eq!(links(&mut vicc), [p1.as_str()]);
    let mut both = vec![p1.clone(), p2.clone()];
    both.sort();
    assert_eq!(links(&mut a.app), both);
    let tags: serde_json::Value = scalar(
        &mut vicc,
        &format!("SELECT udm_get('product', {})->'tags'", lit(&p1)),
    );
    assert_eq!(tags, json!([tag]));

    // udm_update of the field and a delete that cascades to the links pass the guard
    json(
        &mut bobc,
        &format!(
            "SELECT udm_update('product', {}, '{{\"tags\": []}}')",
            lit(&p1)
        ),
    );
    assert!(links(&mut bobc).is_empty());
    json(
        &mut bobc,
        &format!(
            "SELECT udm_update('product', {}, jsonb_build_object('tags', jsonb_build_array({})))",
            lit(&p1),
            lit(&tag)
        ),
    );
    assert_eq!(links(&mut bobc), [p1.as_str()]);
    bobc.batch_execute(&format!(
        "DELETE FROM \"{t}\".product WHERE id = {}",
        lit(&p1)
    ))
    .unwrap();
    assert_eq!(links(&mut a.app), [p2.as_str()]);
}

/// The adversarial review's findings inside one tenant (issue "Security hardening", part 4):
/// a hidden field stays hidden from history and point-in-time reads, permissions follow a renamed
/// field, a manager kept from a field may not change it, subscriptions and consumer cursors are
/// not anybody's to move, and no member change leaves the tenant without an admin.
#[test]
fn hidden_fields_renames_subscriptions_consumers_and_the_last_admin() {
    let mut a = setup("sxa");
    let adm = a.user("Adm");
    let lim = a.user("Lim");
    let mgr = a.user("Mgr");
    let view = a.user("View");
    a.add(&adm, "admin");
    a.switch(&adm);
    json(
        &mut a.app,
        r#"SELECT udm_define_entity('item', '{"fields": [{"name": "name", "type": "text"}, {"name": "cost", "type": "integer"}]}')"#,
    );
    json(
        &mut a.app,
        r#"SELECT udm_define_role('limited', 'viewer', '{"entities": {"item": {"fields": {"cost": {"read": false}}}}}')"#,
    );
    json(
        &mut a.app,
        r#"SELECT udm_define_role('mgr', 'admin', '{"entities": {"item": {"fields": {"cost": {"read": false}}}}}')"#,
    );
    a.add(&lim, "limited");
    a.add(&mgr, "mgr");
    a.add(&view, "viewer");
    let id = inserted_id(
        &mut a.app,
        r#"udm_insert('item', '{"name": "widget", "cost": 7}')"#,
    );
    json(
        &mut a.app,
        &format!(r#"SELECT udm_update('item', '{id}', '{{"cost": 9, "name": "gadget"}}')"#),
    );
    json(
        &mut a.app,
        "SELECT udm_subscribe('item', ARRAY['INSERT'], 'billing-workflow')",
    );
    json(&mut a.app, "SELECT udm_ack('w1', 0)");

    // a manager kept from `cost` reads history and the record at a time without it
    let mut m = a.as_user(&mgr);
    let data: Vec<Value> = column(
        &mut m,
        &format!("SELECT data FROM udm_history('item', '{id}')"),
    );
    assert_eq!(data.len(), 2);
    assert!(
        data.iter()
            .all(|d| d.get("cost").is_none() && d.get("name").is_some()),
        "{data:?}"
    );
    let summaries: Vec<String> = column(
        &mut m,
        &format!("SELECT summary FROM udm_history('item', '{id}')"),
    );
    assert!(
        summaries
            .iter()
            .all(|s| !s.contains('9') && !s.contains('7')),
        "{summaries:?}"
    );
    let changed: Vec<String> = column(&mut m, &format!("SELECT unnest(changed_fields) FROM udm_history('item', '{id}') WHERE action = 'UPDATE'"));
    assert_eq!(changed, vec!["name".to_string()]);
    let at = json(
        &mut m,
        &format!("SELECT udm_record_at('item', '{id}', now())"),
    );
    assert!(
        at.get("cost").is_none() && at["name"] == json!("gadget"),
        "{at}"
    );
    let report = json(
        &mut m,
        "SELECT udm_audit_report('changes', now() - interval '1 hour', now() + interval '1 hour', '{\"entity\": \"item\"}')",
    );
    assert!(!report.to_string().contains("\"cost\""), "{report}");
    // ... and may not rename, change, index, remove or write rules over it
    for sql in [
        r#"SELECT udm_alter_field('item', 'cost', '{"name": "unit_cost"}')"#,
        r#"SELECT udm_alter_field('item', 'cost', '{"label": "Cost"}')"#,
        "SELECT udm_remove_field('item', 'cost')",
        "SELECT udm_add_index('item', ARRAY['cost'])",
        r#"SELECT udm_add_rule('item', '{"name": "cheap", "check": "cost < 100"}')"#,
    ] {
        let msg = expect_err(&mut m, sql, "42501");
        assert!(msg.contains("item.cost"), "{sql}: {msg}");
    }
    // the admin renames it: the restriction follows the field
    json(
        &mut a.app,
        r#"SELECT udm_alter_field('item', 'cost', '{"name": "unit_cost"}')"#,
    );
    let mut l = a.as_user(&lim);
    let row = json(&mut l, &format!("SELECT udm_get('item', '{id}')"));
    assert!(
        row.get("unit_cost").is_none() && row.get("cost").is_none(),
        "{row}"
    );
    let msg = expect_err(
        &mut l,
        r#"SELECT udm_query('item', '{"columns": ["unit_cost"]}')"#,
        "42501",
    );
    assert!(msg.contains("unit_cost"), "{msg}");
    let perms: Value = scalar(
        &mut a.app,
        &format!(
            "SELECT permissions FROM \"{}\"._udm_role WHERE name = 'limited'",
            a.tenant
        ),
    );
    assert_eq!(
        perms["entities"]["item"]["fields"],
        json!({"unit_cost": {"read": false}})
    );

    // a viewer may not unsubscribe the admin's workflow, nor move another consumer's cursor
    let mut v = a.as_user(&view);
    let msg = expect_err(
        &mut v,
        "SELECT udm_unsubscribe('item', 'billing-workflow')",
        "42501",
    );
    assert!(msg.contains("manage"), "{msg}");
    expect_err(
        &mut v,
        "SELECT udm_subscribe('item', ARRAY['UPDATE'], 'mine')",
        "42501",
    );
    let last: i64 = scalar(
        &mut a.app,
        "SELECT (udm_events(0, 10)->>'last_event')::bigint",
    );
    let msg = expect_err(&mut v, &format!("SELECT udm_ack('w1', {last})"), "42501");
    assert!(
        msg.contains("consumer \"w1\"") && msg.contains(&adm),
        "{msg}"
    );
    // its own consumer is its own
    json(&mut v, &format!("SELECT udm_ack('w2', {last})"));
    // the owner moves its cursor; a manager may move anyone's
    json(&mut a.app, &format!("SELECT udm_ack('w1', {last})"));
    json(&mut m, &format!("SELECT udm_ack('w2', {last})"));
    let owner: String = scalar(
        &mut a.app,
        &format!(
            "SELECT u.email FROM \"{0}\"._udm_consumer c JOIN \"{0}\"._udm_user u ON u.id::text = c.acked_by WHERE consumer = 'w2'",
            a.tenant
        ),
    );
    assert_eq!(
        owner, view,
        "a manager's ack leaves the consumer its owner's (recorded by id)"
    );

    // the last admin can neither be removed nor demoted (a role that manages counts as admin)
    json(
        &mut a.app,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&a.tenant),
            lit(&mgr)
        ),
    );
    for sql in [
        format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&a.tenant),
            lit(&adm)
        ),
        format!(
            "SELECT udm_remove_member({}, {})",
            lit(&a.tenant),
            lit(&adm)
        ),
    ] {
        let msg = expect_err(&mut a.app, &sql, "55000");
        assert!(msg.contains("last admin"), "{sql}: {msg}");
    }
    json(
        &mut a.app,
        &format!(
            "SELECT udm_add_member({}, {}, 'mgr')",
            lit(&a.tenant),
            lit(&mgr)
        ),
    );
    json(
        &mut a.app,
        &format!(
            "SELECT udm_add_member({}, {}, 'viewer')",
            lit(&a.tenant),
            lit(&adm)
        ),
    );
}
