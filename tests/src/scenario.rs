//! A tenant holding every kind of state udm keeps, and the checks that a copy of it works as
//! the original did: what backups (tests/restore.rs) and tenant moves (tests/transfer.rs) must
//! carry. The roadmap template with rules over related records, members, a defined role,
//! relation tuples, a write lock, many-to-many links, references, passwords, auto numbers, user
//! fields, a removed field with its data, a dropped entity with its data, definitions with
//! several versions, subscriptions and a consumer part way through the events, the audit log.

use crate::*;
use postgres::Client;

/// A database the scenario is made in or checked in.
pub trait Database {
    fn connect(&self, user: &str) -> Client;
    fn name(&self) -> &str;
}

pub fn names(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub fn use_as(c: &mut Client, t: &str, user: &str) {
    c.query_one("SELECT udm_use($1, $2)", &[&t, &user])
        .unwrap_or_else(|e| panic!("udm_use {t} {user}: {}", message(&e)));
}

/// What the original looked like, to compare each copy with.
#[derive(Clone)]
pub struct Expected {
    pub tenant: String,
    pub app: String,
    pub alice: String,
    pub bob: String,
    pub carol: String,
    pub roadmap: String,
    pub carol_sees: Vec<String>,
    pub audit_rows: i64,
    pub acked: i64,
    pub docs: i64,
    pub doc_versions: i32,
    pub kept: i64,
    pub archived: i64,
    pub records: String,
}

/// Every record of every entity (ids, versions and what they hold), to compare copies with.
pub fn all_records(c: &mut Client, t: &str) -> String {
    let mut out = Vec::new();
    for table in [
        "roadmap",
        "phase",
        "product",
        "tag",
        "doc",
        "doc__tags",
        "note",
        "archive",
    ] {
        let rows: Vec<String> = names(
            c,
            &format!("SELECT to_jsonb(x)::text FROM \"{t}\".\"{table}\" x ORDER BY 1"),
        );
        out.push(format!("{table}: {}", rows.join("\n")));
    }
    out.join("\n\n")
}

pub fn populate(db: &impl Database) -> Expected {
    let mut su = db.connect("postgres");
    let tenant = unique("tr");
    let app = login_role(&mut su, "trapp");
    if crate::audit_batches() {
        su.batch_execute("SET udm.audit_batches = on").unwrap();
    }
    json(
        &mut su,
        &format!("SELECT udm_create_tenant({}, 'Moving Co')", lit(&tenant)),
    );
    su.batch_execute("RESET udm.audit_batches").unwrap();
    grant_tenant(&mut su, &tenant, &app);
    let (alice, bob, carol) = (
        format!("{}@tr.test", unique("alice")),
        format!("{}@tr.test", unique("bob")),
        format!("{}@tr.test", unique("carol")),
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
                 {"name": "about", "type": "reference", "targets": ["tag", "doc"]},
                 {"name": "draft", "type": "text"}],
                 "rules": [{"name": "title_short", "check": "length(title) <= 40", "message": "titles are short"}]}');
               SELECT udm_define_entity('note', '{"fields": [{"name": "body", "type": "text"}, {"name": "author", "type": "user"},
                 {"name": "doc_id", "type": "relation", "target": "doc", "on_delete": "cascade"}]}');
               SELECT udm_define_entity('archive', '{"fields": [{"name": "label", "type": "text"}]}');"#,
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
    json(
        &mut a,
        r#"SELECT udm_define_role('archivist', 'viewer', '{"entities": {"archive": {"update": true}}}')"#,
    );
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
    for (u, level) in [(&bob, "editor"), (&carol, "viewer")] {
        json(
            &mut a,
            &format!(
                "SELECT udm_grant({}, '{level}', 'roadmap:{roadmap}')",
                lit(u)
            ),
        );
    }
    a.batch_execute(&format!(
        r#"SELECT udm_insert('tag', '{{"name": "red"}}');
           SELECT udm_insert('tag', '{{"name": "blue"}}');
           INSERT INTO "{tenant}".doc (title, secret, draft) VALUES ('first', 'a-password-1', 'draft one'), ('second', 'a-password-2', 'draft two');
           INSERT INTO "{tenant}".doc__tags (source_id, target_id) SELECT d.id, t.id FROM "{tenant}".doc d, "{tenant}".tag t;
           UPDATE "{tenant}".doc SET about = ROW('tag', (SELECT id FROM "{tenant}".tag WHERE name = 'red'))::udm.ref WHERE title = 'first';
           INSERT INTO "{tenant}".note (body, author, doc_id) SELECT 'noted', (SELECT user_id FROM udm_members() WHERE email = {alice}), id FROM "{tenant}".doc;
           INSERT INTO "{tenant}".archive (label) VALUES ('old'), ('older');
           SELECT udm_subscribe('product', ARRAY['UPDATE'], 'review');"#,
        alice = lit(&alice)
    ))
    .unwrap();
    // definitions with history: a field removed with its data, one renamed, an entity dropped
    a.batch_execute(
        r#"SELECT udm_remove_field('doc', 'draft');
           SELECT udm_alter_field('note', 'body', '{"name": "text", "max_length": 500}');
           SELECT udm_add_field('tag', '{"name": "color", "type": "color"}');
           SELECT udm_drop_entity('archive');"#,
    )
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
    let kept: i64 = scalar(
        &mut su,
        &format!("SELECT count(*) FROM \"{tenant}\".doc WHERE \"_removed_f6_draft\" IS NOT NULL"),
    );
    assert_eq!(kept, 2, "the removed field keeps its data");
    let archived: i64 = scalar(
        &mut su,
        &format!("SELECT count(*) FROM \"{tenant}\".archive"),
    );
    let doc_versions: i32 = scalar(&mut a, "SELECT max(version) FROM udm_entity_history('doc')");
    let v = json(&mut a, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{v}");
    let records = all_records(&mut su, &tenant);
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
        doc_versions,
        kept,
        archived,
        records,
    }
}

/// Everything the original could do, in the copy `t` of it in `db` (the app role granted it).
pub fn works(db: &impl Database, t: &str, e: &Expected) {
    let mut su = db.connect("postgres");
    let listed = names(&mut su, "SELECT slug FROM udm_tenants()");
    assert!(listed.contains(&t.to_string()), "{}: {listed:?}", db.name());
    grant_tenant(&mut su, t, &e.app);
    let rows: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{t}\"._udm_audit"));
    assert_eq!(
        rows,
        e.audit_rows,
        "{}: the audit log came along",
        db.name()
    );
    // the same records, ids and versions included, removed fields' and dropped entities' data too
    assert_eq!(
        all_records(&mut su, t),
        e.records,
        "{}: the records",
        db.name()
    );
    let docs: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{t}\".doc"));
    assert_eq!(docs, e.docs);
    let kept: i64 = scalar(
        &mut su,
        &format!("SELECT count(*) FROM \"{t}\".doc WHERE \"_removed_f6_draft\" IS NOT NULL"),
    );
    assert_eq!(kept, e.kept, "the removed field's data");
    let archived: i64 = scalar(&mut su, &format!("SELECT count(*) FROM \"{t}\".archive"));
    assert_eq!(archived, e.archived, "the dropped entity's data");
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
        db.name()
    );
    // and of the audit log, only the changes of what she may see (its access filter came along)
    let hers: i64 = scalar(&mut c, &format!("SELECT count(*) FROM \"{t}\"._udm_audit"));
    assert!(
        hers > 0 && hers < rows,
        "{}: the audit log's row security ({hers} of {rows} rows)",
        db.name()
    );
    expect_err(
        &mut c,
        &format!("UPDATE \"{t}\".product SET x_position = '2027-Q3' WHERE codename = 'Falcon'"),
        "42501",
    );
    // the dropped entity stays dropped, its table closed to the tenant
    expect_err(&mut c, &format!("SELECT * FROM \"{t}\".archive"), "42501");
    // bob still holds the write lock and writes through it; the change is audited and chained
    let mut b = db.connect(&e.app);
    use_as(&mut b, t, &e.bob);
    let lock = json(
        &mut b,
        &format!("SELECT udm_lock_status('roadmap', '{}')", e.roadmap),
    );
    assert_eq!(lock["holder"], json!(e.bob), "{}: {lock}", db.name());
    b.batch_execute(&format!(
        "UPDATE \"{t}\".product SET x_position = '2027-Q4' WHERE codename = 'Falcon'"
    ))
    .unwrap_or_else(|err| panic!("{}: a plain UPDATE: {}", db.name(), message(&err)));
    let id: String = scalar(
        &mut b,
        &format!("SELECT id::text FROM \"{t}\".product WHERE codename = 'Falcon'"),
    );
    let history = names(
        &mut b,
        &format!("SELECT summary FROM udm_history('product', '{id}')"),
    );
    assert!(history[0].contains("2027-Q4"), "{history:?}");
    assert!(
        history.len() >= 3,
        "the record's history came along: {history:?}"
    );
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
    // the defined role came along
    let roles = names(&mut a, "SELECT name FROM udm_roles() WHERE NOT builtin");
    assert_eq!(roles, ["archivist"]);
    // new records get the next auto number; links and references hold
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
    // a user field refuses an id that names nobody
    expect_err(
        &mut a,
        &format!("UPDATE \"{t}\".note SET author = gen_random_uuid()"),
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
        db.name(),
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
    // the chain verifies, the new rows included, and they chain to the imported ones
    let v = json(&mut a, "SELECT udm_audit_verify()");
    assert_eq!(v["ok"], json!(true), "{}: {v}", db.name());
    assert!(v["rows_checked"].as_i64().unwrap() > e.audit_rows);
    let chained: bool = scalar(
        &mut su,
        &format!(
            "SELECT prev_hash IS NOT NULL FROM \"{t}\"._udm_audit WHERE record_id = '{id}' ORDER BY audit_id DESC LIMIT 1"
        ),
    );
    assert!(chained, "the new audit row chains to the imported ones");
    // definitions change, with their history
    json(
        &mut a,
        r#"SELECT udm_add_field('doc', '{"name": "pages", "type": "integer", "min": 0}')"#,
    );
    let versions: i32 = scalar(&mut a, "SELECT max(version) FROM udm_entity_history('doc')");
    assert_eq!(
        versions,
        e.doc_versions + 1,
        "history of definitions came along"
    );
    json(&mut a, "SELECT udm_restore_field('doc', 'draft')");
    let drafts: i64 = scalar(
        &mut su,
        &format!("SELECT count(*) FROM \"{t}\".doc WHERE draft IS NOT NULL"),
    );
    assert_eq!(drafts, e.kept, "a removed field comes back with its data");
    json(&mut a, "SELECT udm_restore_entity('archive')");
    let archived: i64 = scalar(&mut a, &format!("SELECT count(*) FROM \"{t}\".archive"));
    assert_eq!(archived, e.archived);
    // new tenants come next to it
    let fresh = unique("fresh");
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
