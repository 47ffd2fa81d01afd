//! Field encryption (`"encrypted": true`): values are ciphertext in the table, in pg_dump's output
//! and in the audit log, plaintext through udm for readers who may read the field; a ciphertext
//! moved to another record or field does not decrypt; equality and unique work through the blind
//! index, ranges and sorting are refused; a server without the master key refuses with a clear
//! error. The test cluster loads udm in shared_preload_libraries with a key file (Makefile).

use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use udm_tests::*;

/// Runs `sql` with the settings `set` sets, then `reset` whatever `sql` gave: three statements of
/// their own (on Citus a SET or RESET is passed on to the workers with its whole query string).
fn in_style(c: &mut Client, set: &str, sql: &str, reset: &str) -> Result<(), postgres::Error> {
    c.batch_execute(set).unwrap();
    let r = c.batch_execute(sql);
    c.batch_execute(reset).unwrap();
    r
}

const SSN: &str = "123-45-6789";
const MAIL: &str = "ada@example.com";
const NOTE: &str = "prefers tea, allergic to nuts";

fn customer(c: &mut Client) {
    json(
        c,
        r#"SELECT udm_define_entity('customer', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "ssn", "type": "text", "encrypted": true, "unique": true, "max_length": 11},
            {"name": "email", "type": "email", "encrypted": true, "index": true},
            {"name": "notes", "type": "long_text", "encrypted": true}]}')"#,
    );
}

fn insert(c: &mut Client, name: &str, ssn: &str, email: &str) -> Value {
    json(
        c,
        &format!(
            "SELECT udm_insert('customer', {})",
            lit(&json!({"name": name, "ssn": ssn, "email": email, "notes": NOTE}).to_string())
        ),
    )
}

fn pgbin(tool: &str) -> PathBuf {
    PathBuf::from(std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
        .join(tool)
}

fn stored(adm: &mut Client, tenant: &str, column: &str, id: &str) -> String {
    scalar(
        adm,
        &format!(
            "SELECT {column} FROM \"{tenant}\".customer WHERE id = {}",
            lit(id)
        ),
    )
}

/// Inserting `row` into the entity `sealed` (encrypted fields) answers the same JSON as into
/// `plain` (the same fields, not encrypted), record ids and stamps aside.
fn inserts_as_plain(c: &mut udm_tests::postgres::Client, row: &Value) {
    let insert = |c: &mut udm_tests::postgres::Client, entity: &str| {
        json(
            c,
            &format!(
                "SELECT udm_insert('{entity}', {}) - ARRAY['id', 'created_at', 'updated_at']",
                lit(&row.to_string())
            ),
        )
    };
    let (a, b) = (insert(c, "sealed"), insert(c, "plain"));
    assert_eq!(a, b, "the same JSON as a plain entity");
}

#[test]
fn values_are_ciphertext_at_rest_and_plaintext_through_udm() {
    let mut adm = admin();
    let mut m = member(&mut adm, "encr");
    let t = m.tenant.clone();
    customer(&mut m.client);
    let rec = insert(&mut m.client, "Ada", SSN, MAIL);
    assert_eq!(rec["ssn"], SSN, "udm_insert returns plaintext: {rec}");
    assert_eq!(rec["notes"], NOTE);
    let id = rec["id"].as_str().unwrap().to_string();

    // in the table: sealed, a fresh nonce per value
    let ssn_ct = stored(&mut adm, &t, "ssn", &id);
    assert!(ssn_ct.starts_with("udm1:1:"), "{ssn_ct}");
    // (the plaintext whole: a part as short as "6789" can turn up in the hex or base64 by chance)
    assert!(!ssn_ct.contains(SSN), "{ssn_ct}");
    for col in ["email", "notes"] {
        let v = stored(&mut adm, &t, col, &id);
        assert!(v.starts_with("udm1:"), "{col}: {v}");
        assert!(!v.contains("ada@") && !v.contains("tea"), "{col}: {v}");
    }
    // the blind index is part of indexed fields' values only
    assert_eq!(ssn_ct.split(':').nth(2).unwrap().len(), 32);
    assert_eq!(
        stored(&mut adm, &t, "notes", &id).split(':').nth(2),
        Some("")
    );

    // in the audit log: ciphertext only
    let audit: String = scalar(
        &mut adm,
        &format!("SELECT string_agg(coalesce(new_data::text, '') || coalesce(old_data::text, ''), ' ') FROM \"{t}\"._udm_audit"),
    );
    assert!(audit.contains("udm1:"), "{audit}");
    for plain in [SSN, MAIL, "tea"] {
        assert!(
            !audit.contains(plain),
            "the audit log holds {plain}: {audit}"
        );
    }

    // through udm: plaintext
    let got = json(
        &mut m.client,
        &format!("SELECT udm_get('customer', {})", lit(&id)),
    );
    assert_eq!(
        (got["ssn"].as_str(), got["email"].as_str()),
        (Some(SSN), Some(MAIL))
    );
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('customer', '{"columns": ["name", "ssn", "notes"]}')"#,
    );
    assert_eq!(page["rows"][0]["ssn"], SSN, "{page}");
    assert_eq!(page["rows"][0]["notes"], NOTE, "{page}");

    // plain SQL writes are sealed by the trigger, and read back with udm_decrypt
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".customer (name, ssn, email) VALUES ('Bob', '987-65-4321', 'bob@example.com')"
        ))
        .unwrap();
    let bob: String = scalar(
        &mut m.client,
        &format!("SELECT ssn FROM \"{t}\".customer WHERE name = 'Bob'"),
    );
    assert!(bob.starts_with("udm1:") && !bob.contains("4321"), "{bob}");
    let plain: String = scalar(
        &mut m.client,
        &format!("SELECT udm_decrypt('customer', 'ssn', id, ssn) FROM \"{t}\".customer WHERE name = 'Bob'"),
    );
    assert_eq!(plain, "987-65-4321");
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_decrypt('customer', 'name', id, name) FROM \"{t}\".customer"),
        "22023",
    );
    assert!(msg.contains("is not encrypted"), "{msg}");
    expect_err(
        &mut m.client,
        &format!("SELECT udm_decrypt('customer', 'nope', id, ssn) FROM \"{t}\".customer"),
        "42703",
    );
    // an UPDATE of another column keeps the sealed value as it was
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".customer SET name = 'Bobby' WHERE name = 'Bob'"
        ))
        .unwrap();
    let again: String = scalar(
        &mut adm,
        &format!("SELECT ssn FROM \"{t}\".customer WHERE name = 'Bobby'"),
    );
    assert_eq!(again, bob);

    // equality through the blind index; unique holds on plaintext
    let found = json(
        &mut m.client,
        &format!(
            "SELECT udm_query('customer', {})",
            lit(&json!({"columns": ["name"], "filters": {"ssn": SSN}}).to_string())
        ),
    );
    assert_eq!(found["rows"], json!([{"name": "Ada"}]), "{found}");
    let found = json(
        &mut m.client,
        r#"SELECT udm_query('customer', '{"columns": ["name"], "filters": {"email": {"in": ["bob@example.com", "x@y.zz"]}}}')"#,
    );
    assert_eq!(found["rows"], json!([{"name": "Bobby"}]), "{found}");
    // the indexes serve those filters: the unique field's B-tree, the indexed field's hash index
    // (for `in` through a bitmap scan); a sequential scan is made dear, the table being small
    // (on Citus the plan is the worker's, where the session's setting is not)
    let plans = if on_citus(&mut adm) {
        vec![]
    } else {
        vec![
            (json!({"filters": {"ssn": SSN}}), "customer__ssn__key"),
            (
                json!({"filters": {"email": "bob@example.com"}}),
                "customer__email__idx",
            ),
            (
                json!({"filters": {"email": {"in": ["bob@example.com", "x@y.zz"]}}}),
                "customer__email__idx",
            ),
        ]
    };
    m.client.batch_execute("SET enable_seqscan = off").unwrap();
    for (spec, index) in plans {
        let plan = json(
            &mut m.client,
            &format!("SELECT udm_explain('customer', {})", lit(&spec.to_string())),
        )["plan"]
            .to_string();
        assert!(plan.contains(index), "{spec}: {plan}");
    }
    m.client.batch_execute("RESET enable_seqscan").unwrap();
    let defs = index_defs(&mut adm, &t, "customer");
    assert!(
        defs.contains("customer__email__idx ON")
            && defs.contains("USING hash (split_part(email")
            && defs.contains("UNIQUE INDEX customer__ssn__key ON")
            && defs.contains("USING btree (split_part(ssn"),
        "{defs}"
    );
    let found = json(
        &mut m.client,
        r#"SELECT udm_query('customer', '{"columns": ["name"], "filters": {"ssn": {"neq": "987-65-4321"}}, "sort": ["name"]}')"#,
    );
    assert_eq!(found["rows"], json!([{"name": "Ada"}]), "{found}");
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_insert('customer', {})",
            lit(&json!({"name": "Eve", "ssn": SSN}).to_string())
        ),
        "23505",
    );
    assert!(msg.contains("ssn"), "{msg}");
    expect_err(
        &mut m.client,
        &format!(
            "INSERT INTO \"{t}\".customer (name, ssn) VALUES ('Eve', {})",
            lit(SSN)
        ),
        "23505",
    );

    // what cannot be answered from ciphertext is refused
    for (spec, words) in [
        (r#"{"sort": ["ssn"]}"#, "cannot be sorted by"),
        (
            r#"{"filters": {"ssn": {"gt": "1"}}}"#,
            "cannot be filtered with \"gt\"",
        ),
        (
            r#"{"filters": {"email": {"contains": "ada"}}}"#,
            "cannot be filtered",
        ),
        (r#"{"filters": {"notes": "x"}}"#, "without a blind index"),
    ] {
        let msg = expect_err(
            &mut m.client,
            &format!("SELECT udm_query('customer', '{spec}')"),
            "0A000",
        );
        assert!(
            msg.contains(words) && msg.contains("entity \"customer\"") && !msg.contains("hint: |"),
            "{spec}: {msg}"
        );
    }

    // the field's rules hold on the plaintext, for udm and plain SQL alike
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_insert('customer', '{"name": "Long", "ssn": "123456789012"}')"#,
        "23514",
    );
    assert!(msg.contains("ssn"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        &format!("INSERT INTO \"{t}\".customer (name, email) VALUES ('Bad', 'not an email')"),
        "23514",
    );
    assert!(msg.contains("email"), "{msg}");
    // a plaintext that looks like a ciphertext is refused, not stored
    let msg = expect_err(
        &mut m.client,
        &format!("INSERT INTO \"{t}\".customer (name, notes) VALUES ('Fake', 'udm1:hello')"),
        "22023",
    );
    assert!(msg.contains("field \"notes\"") && msg.contains(&t), "{msg}");
}

#[test]
fn history_and_rollback_work_on_encrypted_fields() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enhi");
    customer(&mut m.client);
    let id = insert(&mut m.client, "Ada", SSN, MAIL)["id"]
        .as_str()
        .unwrap()
        .to_string();
    json(
        &mut m.client,
        &format!(
            "SELECT udm_update('customer', {}, '{{\"ssn\": \"111-11-1111\", \"notes\": \"changed\"}}')",
            lit(&id)
        ),
    );
    let h: Value = scalar(
        &mut m.client,
        &format!(
            "SELECT jsonb_agg(jsonb_build_object('v', version, 'data', data) ORDER BY version) FROM udm_history('customer', {})",
            lit(&id)
        ),
    );
    assert_eq!(h[0]["data"]["ssn"], SSN, "{h}");
    assert_eq!(h[1]["data"]["ssn"], "111-11-1111", "{h}");
    assert_eq!(h[1]["data"]["notes"], "changed", "{h}");
    // rollback writes the sealed value of version 1 back: it belongs to this record and field
    json(
        &mut m.client,
        &format!("SELECT udm_rollback('customer', {}, 1)", lit(&id)),
    );
    let got = json(
        &mut m.client,
        &format!("SELECT udm_get('customer', {})", lit(&id)),
    );
    assert_eq!(got["ssn"], SSN, "{got}");
    assert_eq!(got["notes"], NOTE, "{got}");
    // and the unique blind index still finds it
    let found = json(
        &mut m.client,
        &format!(
            "SELECT udm_query('customer', {})",
            lit(&json!({"columns": ["name"], "filters": {"ssn": SSN}}).to_string())
        ),
    );
    assert_eq!(found["rows"], json!([{"name": "Ada"}]), "{found}");
}

#[test]
fn a_ciphertext_moved_to_another_record_or_field_does_not_decrypt() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enmv");
    let t = m.tenant.clone();
    customer(&mut m.client);
    let a = insert(&mut m.client, "A", SSN, MAIL)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = insert(&mut m.client, "B", "222-22-2222", "b@example.com")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // through the trigger: refused
    let copy_notes = format!(
        "UPDATE \"{t}\".customer SET notes = (SELECT notes FROM \"{t}\".customer WHERE id = {}) WHERE id = {}",
        lit(&a),
        lit(&b)
    );
    let msg = expect_err(&mut m.client, &copy_notes, "22023");
    assert!(
        msg.contains("does not decrypt for this record and field")
            && msg.contains("field \"notes\""),
        "{msg}"
    );
    let msg = expect_err(
        &mut m.client,
        &format!(
            "UPDATE \"{t}\".customer SET notes = ssn WHERE id = {}",
            lit(&a)
        ),
        "22023",
    );
    assert!(msg.contains("does not decrypt"), "{msg}");
    // past the trigger (a superuser with triggers off): reading fails instead of showing another
    // record's value (on Citus the triggers fire on the tenant's worker, where the coordinator's
    // session_replication_role does not reach)
    if on_citus(&mut adm) {
        return;
    }
    adm.batch_execute(&format!(
        "SET session_replication_role = replica; {copy_notes}; RESET session_replication_role"
    ))
    .unwrap();
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_get('customer', {})", lit(&b)),
        "XX001",
    );
    assert!(
        msg.contains("does not decrypt") && msg.contains("field \"notes\"") && msg.contains(&t),
        "{msg}"
    );
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_decrypt('customer', 'notes', id, notes) FROM \"{t}\".customer WHERE id = {}", lit(&b)),
        "XX001",
    );
    assert!(msg.contains("does not decrypt"), "{msg}");
    // the record it came from still reads
    let got = json(
        &mut m.client,
        &format!("SELECT udm_get('customer', {})", lit(&a)),
    );
    assert_eq!(got["notes"], NOTE);
}

/// Plain SQL's other ways in and the refusals of the trigger and the key table: COPY is sealed
/// and held to the field's rules, a value that only looks sealed is refused, `udm_record_at`
/// reads plaintext, and a wrapped key whose bytes changed is refused, not used.
#[test]
fn copy_record_at_and_damaged_values_and_keys() {
    use std::io::Write;
    let mut adm = admin();
    let mut m = member(&mut adm, "encp");
    let t = m.tenant.clone();
    customer(&mut m.client);
    let mut w = m
        .client
        .copy_in(&format!(
            "COPY \"{t}\".customer (name, ssn, email) FROM STDIN"
        ))
        .unwrap();
    w.write_all(b"Cy\t333-33-3333\tcy@example.com\n").unwrap();
    w.finish().unwrap();
    let id: String = scalar(
        &mut adm,
        &format!("SELECT id::text FROM \"{t}\".customer WHERE name = 'Cy'"),
    );
    let raw = stored(&mut adm, &t, "ssn", &id);
    // (not "333" alone: a blind index in hex or the base64 may hold it)
    assert!(
        raw.starts_with("udm1:") && !raw.contains("333-33-3333"),
        "{raw}"
    );
    let got = json(
        &mut m.client,
        &format!("SELECT udm_get('customer', {})", lit(&id)),
    );
    assert_eq!(got["ssn"], "333-33-3333", "{got}");
    // COPY is held to the field's rules on the plaintext (max_length 11)
    let mut w = m
        .client
        .copy_in(&format!("COPY \"{t}\".customer (name, ssn) FROM STDIN"))
        .unwrap();
    w.write_all(b"Dee\t123-45-6789-000\n").unwrap();
    let e = w.finish().unwrap_err();
    // (on Citus too: the worker's SQLSTATE comes back, src/citus/copy_errors.rs)
    assert_eq!(sqlstate(&e), "23514", "{}", message(&e));
    assert!(message(&e).contains("ssn"), "{}", message(&e));
    // a value that only looks sealed is refused, naming the field
    let msg = expect_err(
        &mut m.client,
        &format!(
            "UPDATE \"{t}\".customer SET notes = 'udm1:not sealed' WHERE id = {}",
            lit(&id)
        ),
        "22023",
    );
    assert!(
        msg.contains("field \"notes\"") && msg.contains("is not an encrypted value"),
        "{msg}"
    );
    // the record as it was: plaintext
    let at = json(
        &mut m.client,
        &format!("SELECT udm_record_at('customer', {}, now())", lit(&id)),
    );
    assert_eq!(at["ssn"], "333-33-3333", "{at}");
    // a wrapped key whose bytes changed does not open: a new session is refused (XX001), never
    // handed another key's values
    adm.batch_execute(&format!(
        "UPDATE \"{t}\"._udm_keys SET wrapped = set_byte(wrapped, 20, (get_byte(wrapped, 20) + 1) % 256) WHERE purpose = 'data'"
    ))
    .unwrap();
    let mut fresh = connect_as(&m.role);
    fresh
        .batch_execute(&format!("SELECT udm_use({})", lit(&t)))
        .unwrap();
    let msg = expect_err(
        &mut fresh,
        &format!("SELECT udm_get('customer', {})", lit(&id)),
        "XX001",
    );
    assert!(
        msg.contains("does not open with the loaded master key"),
        "{msg}"
    );
}

#[test]
fn pg_dump_output_holds_no_plaintext() {
    let mut adm = admin();
    let mut m = member(&mut adm, "endu");
    customer(&mut m.client);
    insert(&mut m.client, "Ada", SSN, MAIL);
    let db: String = scalar(&mut adm, "SELECT current_database()");
    let host = std::env::var("UDM_TEST_HOST")
        .unwrap_or_else(|_| "/work/main/target/test-cluster/sock".into());
    let port = std::env::var("UDM_TEST_PORT").unwrap_or_else(|_| "5498".into());
    let out = Command::new(pgbin("pg_dump"))
        .args([
            "-h", &host, "-p", &port, "-U", "postgres", "-n", &m.tenant, &db,
        ])
        .env_remove("PGOPTIONS")
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("udm1:1:"), "the dump holds the sealed values");
    assert!(dump.contains("_udm_keys"), "and the wrapped keys");
    for plain in [SSN, MAIL, "allergic"] {
        assert!(!dump.contains(plain), "pg_dump output holds {plain}");
    }
    // nor the number's last four on their own ("6789", "...-6789"): four digits also turn up by
    // chance inside a sealed value (base64), an id (hex) or a number, which are not its plaintext
    let token = |c: char| c.is_ascii_alphanumeric() || "+/=:_-".contains(c);
    for (i, _) in dump.match_indices("6789") {
        let start = dump[..i].rfind(|c| !token(c)).map_or(0, |p| p + 1);
        let end = dump[i..].find(|c| !token(c)).map_or(dump.len(), |p| i + p);
        let run = &dump[start..end];
        let leak = (run == "6789" || run.ends_with("-6789"))
            && !run.starts_with("udm1:")
            && uuid::Uuid::parse_str(run).is_err();
        assert!(!leak, "pg_dump output holds {run}");
    }
}

#[test]
fn only_readers_the_field_is_open_to_get_its_plaintext() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enac");
    let t = m.tenant.clone();
    customer(&mut m.client);
    let id = insert(&mut m.client, "Ada", SSN, MAIL)["id"]
        .as_str()
        .unwrap()
        .to_string();
    // a role of no tenant: not the table, not the internal functions, not udm_decrypt
    let outsider = login_role(&mut adm, "enout");
    let mut o = connect_as(&outsider);
    let ct = stored(&mut adm, &t, "ssn", &id);
    expect_err(
        &mut o,
        &format!(
            "SELECT udm.decrypt_field({}, 'customer', 2, {}, {})",
            lit(&t),
            lit(&id),
            lit(&ct)
        ),
        "42501",
    );
    expect_err(
        &mut o,
        &format!(
            "SELECT udm.blind_index({}, 'customer', 2, {})",
            lit(&t),
            lit(SSN)
        ),
        "42501",
    );
    // a member of another tenant: the internal function answers for its own tenants only
    let mut other = member(&mut adm, "enot");
    expect_err(
        &mut other.client,
        &format!(
            "SELECT udm.decrypt_field({}, 'customer', 2, {}, {})",
            lit(&t),
            lit(&id),
            lit(&ct)
        ),
        "42501",
    );
    // an application user whose role keeps the field back
    let email = format!("{}@{t}.test", unique("vic")).to_lowercase();
    json(
        &mut m.client,
        &format!(
            "SELECT udm_create_user({}, 'Vic', 'correct horse')",
            lit(&email)
        ),
    );
    json(
        &mut m.client,
        r#"SELECT udm_define_role('nossn', 'viewer', '{"entities": {"customer": {"fields": {"ssn": {"read": false}}}}}')"#,
    );
    json(
        &mut m.client,
        &format!(
            "SELECT udm_add_member({}, {}, 'nossn')",
            lit(&t),
            lit(&email)
        ),
    );
    let mut vic = connect_as(&m.role);
    vic.query_one("SELECT udm_use($1, $2)", &[&t, &email])
        .unwrap_or_else(|e| panic!("udm_use: {}", message(&e)));
    let got = json(
        &mut vic,
        &format!("SELECT udm_get('customer', {})", lit(&id)),
    );
    assert!(got.get("ssn").is_none(), "{got}");
    assert_eq!(got["email"], MAIL, "{got}");
    // a page opens the fields the role may read and leaves the others out
    let page = json(&mut vic, r#"SELECT udm_query('customer', '{}')"#);
    let row = &page["rows"][0];
    assert!(row.get("ssn").is_none(), "{page}");
    assert_eq!(
        (&row["email"], &row["notes"]),
        (&json!(MAIL), &json!(NOTE)),
        "{page}"
    );
    let msg = expect_err(
        &mut vic,
        r#"SELECT udm_query('customer', '{"columns": ["name", "ssn"]}')"#,
        "42501",
    );
    assert!(msg.contains("ssn"), "{msg}");
    let msg = expect_err(
        &mut vic,
        &format!(
            "SELECT udm_decrypt('customer', 'ssn', {}, {})",
            lit(&id),
            lit(&ct)
        ),
        "42501",
    );
    assert!(msg.contains("field \"ssn\""), "{msg}");
    let decrypted: Option<String> = scalar(
        &mut vic,
        &format!(
            "SELECT udm.decrypt_field({}, 'customer', 2, {}, {})",
            lit(&t),
            lit(&id),
            lit(&ct)
        ),
    );
    assert_eq!(decrypted, None, "kept back: NULL, never the plaintext");
    expect_err(
        &mut vic,
        &format!(
            "SELECT udm.blind_index({}, 'customer', 2, {})",
            lit(&t),
            lit(SSN)
        ),
        "42501",
    );
}

#[test]
fn definitions_that_cannot_hold_are_refused() {
    let mut adm = admin();
    let mut m = member(&mut adm, "endf");
    customer(&mut m.client);
    for (sql, code, words) in [
        (
            r#"SELECT udm_define_entity('x1', '{"fields": [{"name": "n", "type": "integer", "encrypted": true}]}')"#,
            "0A000",
            "cannot be encrypted",
        ),
        (
            r#"SELECT udm_define_entity('x2', '{"fields": [{"name": "n", "type": "text", "encrypted": true, "default": "a"}]}')"#,
            "0A000",
            "cannot have a default",
        ),
        (
            r#"SELECT udm_alter_field('customer', 'name', '{"encrypted": true, "index": true}')"#,
            "0A000",
            "turned on alone",
        ),
        (
            r#"SELECT udm_add_field('customer', '{"name": "age", "type": "integer"}'), udm_alter_field('customer', 'age', '{"encrypted": true}')"#,
            "0A000",
            "a field of type integer cannot be encrypted",
        ),
        (
            r#"SELECT udm_alter_field('customer', 'notes', '{"unique": true}')"#,
            "0A000",
            "cannot yet be changed",
        ),
        (
            r#"SELECT udm_alter_field('customer', 'ssn', '{"max_length": 9}')"#,
            "0A000",
            "cannot yet be changed: its stored values could not be checked",
        ),
        (
            r#"SELECT udm_add_rule('customer', '{"name": "r", "check": "notes <> ''''"}')"#,
            "0A000",
            "is encrypted and cannot be used in a rule",
        ),
        (
            r#"SELECT udm_add_index('customer', ARRAY['name', 'email'])"#,
            "0A000",
            "is encrypted and cannot be part of an index",
        ),
        (
            r#"SELECT udm_add_field('customer', '{"name": "d", "type": "date", "encrypted": true, "min": "someday"}')"#,
            "22007",
            "min",
        ),
        (
            r#"SELECT udm_upsert_many('customer', '[{"name": "A", "ssn": "1"}]', ARRAY['ssn'])"#,
            "0A000",
            "is encrypted and cannot identify records",
        ),
    ] {
        let msg = expect_err(&mut m.client, sql, code);
        assert!(msg.contains(words), "{sql}: {msg}");
    }
    // a new encrypted field on an entity with records: added, sealed from then on
    insert(&mut m.client, "Ada", SSN, MAIL);
    json(
        &mut m.client,
        r#"SELECT udm_add_field('customer', '{"name": "iban", "type": "text", "encrypted": true}')"#,
    );
    let r = json(
        &mut m.client,
        r#"SELECT udm_update('customer', (SELECT udm_query('customer', '{"columns": ["id"]}')->'rows'->0->>'id')::uuid, '{"iban": "DE00 1234"}')"#,
    );
    assert_eq!(r["iban"], "DE00 1234", "{r}");
    let raw: String = scalar(
        &mut adm,
        &format!("SELECT iban FROM \"{}\".customer", m.tenant),
    );
    assert!(raw.starts_with("udm1:"), "{raw}");
}

/// A cluster of its own with udm preloaded and no key file: encrypted fields are refused with a
/// clear error, and a restored tenant's sealed values are never shown as anything else.
#[test]
fn a_server_without_the_key_file_refuses_encrypted_fields() {
    // a tenant with sealed values, dumped from the test cluster
    let mut adm = admin();
    let mut m = member(&mut adm, "ennk");
    customer(&mut m.client);
    let id = insert(&mut m.client, "Ada", SSN, MAIL)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let src_db: String = scalar(&mut adm, "SELECT current_database()");
    let host = std::env::var("UDM_TEST_HOST")
        .unwrap_or_else(|_| "/work/main/target/test-cluster/sock".into());
    let port = std::env::var("UDM_TEST_PORT").unwrap_or_else(|_| "5498".into());

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/nokey-cluster");
    let cluster = root.join("tests/cluster.sh");
    let nk_port = std::env::var("UDM_NOKEY_PORT").unwrap_or_else(|_| "5492".into());
    let status = Command::new(&cluster)
        .args([
            "start",
            &dir.display().to_string(),
            &nk_port,
            "fresh",
            "udm.bcrypt_cost = 4",
            "shared_preload_libraries = 'udm'",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "start a cluster without a key file");
    let sock = dir.join("sock").display().to_string();
    let connect = |db: &str, user: &str| {
        Client::connect(
            &format!("host={sock} port={nk_port} dbname={db} user={user}"),
            NoTls,
        )
        .unwrap()
    };
    let mut pg = connect("postgres", "postgres");
    pg.batch_execute("CREATE DATABASE nokey").unwrap();
    let roles = Command::new(pgbin("pg_dumpall"))
        .args(["-h", &host, "-p", &port, "-U", "postgres", "--roles-only"])
        .output()
        .unwrap();
    assert!(roles.status.success());
    let dump = Command::new(pgbin("pg_dump"))
        .args(["-h", &host, "-p", &port, "-U", "postgres", &src_db])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    for (db, sql) in [("postgres", roles.stdout), ("nokey", dump.stdout)] {
        let mut child = Command::new(pgbin("psql"))
            .args([
                "-X", "-q", "-h", &sock, "-p", &nk_port, "-U", "postgres", "-d", db,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&sql).unwrap();
        assert!(child.wait().unwrap().success());
    }
    let mut c = connect("nokey", &m.role);
    c.query_one("SELECT udm_use($1)", &[&m.tenant]).unwrap();
    // reads: a clear error naming tenant, entity and field, never the ciphertext as a value
    let msg = expect_err(
        &mut c,
        &format!("SELECT udm_get('customer', {})", lit(&id)),
        "55000",
    );
    assert!(
        msg.contains("this server has no master key")
            && msg.contains(&format!("tenant \"{}\"", m.tenant))
            && msg.contains("entity \"customer\"")
            && msg.contains("udm.encryption_key_file"),
        "{msg}"
    );
    expect_err(
        &mut c,
        r#"SELECT udm_query('customer', '{"columns": ["ssn"]}')"#,
        "55000",
    );
    // writes: refused, nothing stored in plaintext
    let msg = expect_err(
        &mut c,
        r#"SELECT udm_insert('customer', '{"name": "Bo", "notes": "secret"}')"#,
        "55000",
    );
    assert!(msg.contains("field \"notes\""), "{msg}");
    let msg = expect_err(
        &mut c,
        &format!(
            "INSERT INTO \"{}\".customer (name, notes) VALUES ('Bo', 'secret')",
            m.tenant
        ),
        "55000",
    );
    assert!(
        msg.contains("hint: put udm in shared_preload_libraries"),
        "{msg}"
    );
    // encryption is not turned on or off either
    for sql in [
        r#"SELECT udm_alter_field('customer', 'name', '{"encrypted": true}')"#,
        r#"SELECT udm_alter_field('customer', 'notes', '{"encrypted": false}')"#,
    ] {
        let msg = expect_err(&mut c, sql, "55000");
        assert!(
            msg.contains("this server has no master key"),
            "{sql}: {msg}"
        );
    }
    // and no new encrypted field
    let msg = expect_err(
        &mut c,
        r#"SELECT udm_define_entity('vault', '{"fields": [{"name": "pin", "type": "text", "encrypted": true}]}')"#,
        "55000",
    );
    assert!(msg.contains("entity \"vault\""), "{msg}");
    // fields that are not encrypted still work
    let page = json(
        &mut c,
        r#"SELECT udm_query('customer', '{"columns": ["name"]}')"#,
    );
    assert_eq!(page["rows"], json!([{"name": "Ada"}]));
    // the tenant's archive, with its keys, is refused here too, and leaves nothing
    let mut archive = Vec::new();
    udm_tenant::export(&mut adm, &m.tenant, &mut archive).unwrap();
    let mut nk = connect("nokey", "postgres");
    let err = udm_tenant::import(&mut nk, &archive[..], Some("nokeycopy"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("55000")
            && err.contains("import of tenant \"nokeycopy\": its encryption keys")
            && err.contains(
                "a field of tenant \"nokeycopy\" is encrypted and this server has no master key"
            )
            && err.contains("udm.encryption_key_file"),
        "{err}"
    );
    no_tenant_left(&mut nk, "nokeycopy");
    drop(c);
    drop(pg);
    let _ = Command::new(&cluster)
        .args(["stop", &dir.display().to_string()])
        .status();
}

/// A new data key is used for new writes at once; `udm_reencrypt` moves old values in batches,
/// with progress, while another session keeps writing: nothing is lost, every value ends under
/// the new key and reads back as last written.
#[test]
fn data_key_rotation_under_concurrent_writes_loses_nothing() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enro");
    let t = m.tenant.clone();
    customer(&mut m.client);
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".customer (name, ssn, notes) \
             SELECT 'c' || i, 'ssn-' || i, 'note ' || i FROM generate_series(1, 300) i"
        ))
        .unwrap();
    let before: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM \"{t}\".customer WHERE split_part(notes, ':', 2) = '1'"),
    );
    assert_eq!(before, 300);
    let r = json(&mut m.client, "SELECT udm_rotate_data_key()");
    assert_eq!(
        (r["data_key"].as_i64(), r["previous"].as_i64()),
        (Some(2), Some(1)),
        "{r}"
    );
    let rows: Value = scalar(
        &mut adm,
        &format!("SELECT jsonb_agg(jsonb_build_array(purpose, id, created_by) ORDER BY purpose, id) FROM \"{t}\"._udm_keys"),
    );
    assert_eq!(
        rows,
        json!([
            ["data", 1, m.role],
            ["data", 2, m.role],
            ["index", 1, m.role]
        ]),
        "the keys table records who made each key"
    );

    // a writer in another session: updates notes of records 1..300 in a loop
    let (stop, writer) = writer_session(
        &m.role,
        &t,
        3,
        std::collections::HashMap::new(),
        |w, tenant, round, last| {
            for i in (round % 7..300).step_by(7) {
                let note = format!("round {round} of c{}", i + 1);
                w.execute(
                    &format!("UPDATE \"{tenant}\".customer SET notes = $1 WHERE name = $2"),
                    &[&note, &format!("c{}", i + 1)],
                )
                .unwrap();
                last.insert(format!("c{}", i + 1), note);
            }
        },
    );
    // re-encryption in batches, with progress
    let mut progress = Vec::new();
    loop {
        let r = json(&mut m.client, "SELECT udm_reencrypt('customer', 40)");
        progress.push(r["remaining"].as_i64().unwrap());
        if r["remaining"] == 0 && stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        if progress.len() >= 3 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        assert!(
            progress.len() < 200,
            "re-encryption does not finish: {progress:?}"
        );
    }
    let (last, _) = writer.join().unwrap();
    // one more pass after the writer stopped: nothing left
    let r = json(&mut m.client, "SELECT udm_reencrypt('customer')");
    assert_eq!(r["remaining"], 0, "{r}");
    assert!(progress.first().unwrap() > &0, "{progress:?}");
    let old_left: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM \"{t}\".customer WHERE split_part(notes, ':', 2) <> '2' OR split_part(ssn, ':', 2) <> '2'"
        ),
    );
    assert_eq!(old_left, 0, "every value is under the new key");
    // nothing lost: each record reads back as last written (by the writer or the insert)
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('customer', '{"columns": ["name", "ssn", "notes"], "limit": 500}')"#,
    );
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 300);
    for r in rows {
        let name = r["name"].as_str().unwrap();
        let n = &name[1..];
        assert_eq!(r["ssn"], format!("ssn-{n}"), "{r}");
        let want = last
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("note {n}"));
        assert_eq!(r["notes"], want, "{r}");
    }
    // the blind index still finds values moved to the new key
    let found = json(
        &mut m.client,
        r#"SELECT udm_query('customer', '{"columns": ["name"], "filters": {"ssn": "ssn-77"}}')"#,
    );
    assert_eq!(found["rows"], json!([{"name": "c77"}]), "{found}");
    // refusals
    expect_err(
        &mut m.client,
        "SELECT udm_reencrypt('customer', 0)",
        "22023",
    );
    expect_err(&mut m.client, "SELECT udm_reencrypt('nope')", "42P01");
    let mut plain = member(&mut adm, "enrp");
    json(
        &mut plain.client,
        r#"SELECT udm_define_entity('thing', '{"fields": [{"name": "name", "type": "text"}]}')"#,
    );
    expect_err(&mut plain.client, "SELECT udm_rotate_data_key()", "55000");
    expect_err(&mut plain.client, "SELECT udm_reencrypt('thing')", "22023");
}

/// A key file readable by the server only (as root: owned by postgres).
/// A writer in another session, as `role` in `tenant`: `round(client, tenant, n, state)` for
/// rounds n = 1, 2, ... until `stop` is set and at least `min_rounds` ran. Joined, it answers its
/// state and the number of rounds.
fn writer_session<S: Send + 'static>(
    role: &str,
    tenant: &str,
    min_rounds: u32,
    state: S,
    mut round: impl FnMut(&mut Client, &str, u32, &mut S) + Send + 'static,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(S, u32)>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let (role, tenant) = (role.to_string(), tenant.to_string());
    let handle = std::thread::spawn(move || {
        let mut w = connect_as(&role);
        w.query_one("SELECT udm_use($1)", &[&tenant]).unwrap();
        let mut state = state;
        let mut n = 0;
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) || n < min_rounds {
            n += 1;
            round(&mut w, &tenant, n, &mut state);
        }
        (state, n)
    });
    (stop, handle)
}

/// Nothing of tenant `slug` is in the database `c` is connected to: no registry row, no schema
/// (what a refused import must leave).
fn no_tenant_left(c: &mut Client, slug: &str) {
    let left: i64 = scalar(
        c,
        &format!(
            "SELECT (SELECT count(*) FROM udm.tenant WHERE slug = {s}) + (SELECT count(*) FROM pg_namespace WHERE nspname = {s})",
            s = lit(slug)
        ),
    );
    assert_eq!(left, 0, "a refused import of {slug} left something");
}

fn key_file(path: &std::path::Path) {
    let hex: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
    std::fs::write(path, hex).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _ = Command::new("chown")
        .args(["postgres:postgres", &path.display().to_string()])
        .status();
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b[0]
}

/// A new master key: the server starts with the new key file and the previous one as
/// `udm.encryption_old_key_file`, `udm_rewrap_keys()` wraps the tenant keys again at once, and
/// the server then runs with the new key file alone. With the old key file alone it refuses.
#[test]
fn a_new_master_key_rewraps_the_tenant_keys() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/rekey-cluster");
    let keys = root.join("target/rekey-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (a, b) = (keys.join("a.key"), keys.join("b.key"));
    key_file(&a);
    key_file(&b);
    let cluster = root.join("tests/cluster.sh");
    // its own port (tests of one file run side by side): make test REKEY_PORT=<port>
    let port = std::env::var("UDM_REKEY_PORT").unwrap_or_else(|_| "5490".into());
    let sock = dir.join("sock").display().to_string();
    let start = |fresh: bool, conf: &[String]| {
        let mut args = vec![
            "start".to_string(),
            dir.display().to_string(),
            port.clone(),
            if fresh { "fresh" } else { "keep" }.to_string(),
        ];
        args.extend(conf.iter().cloned());
        assert!(Command::new(&cluster)
            .args(&args)
            .status()
            .unwrap()
            .success());
    };
    let stop = || {
        let _ = Command::new(&cluster)
            .args(["stop", &dir.display().to_string()])
            .status();
    };
    let connect = |db: &str| {
        Client::connect(
            &format!("host={sock} port={port} dbname={db} user=postgres"),
            NoTls,
        )
        .unwrap()
    };
    start(
        true,
        &[
            "udm.bcrypt_cost = 4".into(),
            "shared_preload_libraries = 'udm'".into(),
            format!("udm.encryption_key_file = '{}'", a.display()),
        ],
    );
    let mut pg = connect("postgres");
    pg.batch_execute("CREATE DATABASE rekey").unwrap();
    let mut c = connect("rekey");
    c.batch_execute(
        "CREATE EXTENSION udm; SELECT udm_create_tenant('vault'); SELECT udm_use('vault')",
    )
    .unwrap();
    customer(&mut c);
    let id = insert(&mut c, "Ada", SSN, MAIL)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let get = format!("SELECT udm_get('customer', {})", lit(&id));
    let stored_before: String = scalar(&mut c, "SELECT ssn FROM vault.customer");
    // the tenant as an archive, its keys wrapped by key a (imported below as "moved")
    let mut archive = Vec::new();
    udm_tenant::export(&mut c, "vault", &mut archive).unwrap();
    let import = |c: &mut Client| -> Result<Value, String> {
        udm_tenant::import(c, &archive[..], Some("moved")).map_err(|e| e.to_string())
    };
    let restart = |c: Client, conf: &[(&str, Option<&std::path::Path>)]| {
        let mut c = c;
        for (k, v) in conf {
            match v {
                Some(p) => c
                    .batch_execute(&format!(
                        "ALTER SYSTEM SET {k} = {}",
                        lit(&p.display().to_string())
                    ))
                    .unwrap(),
                None => c.batch_execute(&format!("ALTER SYSTEM RESET {k}")).unwrap(),
            }
        }
        drop(c);
        stop();
        start(false, &[]);
        let mut c = connect("rekey");
        c.batch_execute("SELECT udm_use('vault')").unwrap();
        c
    };
    drop(pg);
    // the new key file alone: the tenant keys do not open, with a hint on what to do
    let mut c = restart(c, &[("udm.encryption_key_file", Some(&b))]);
    let msg = expect_err(&mut c, &get, "55000");
    assert!(
        msg.contains("was wrapped by master key") && msg.contains("udm.encryption_old_key_file"),
        "{msg}"
    );
    // an archive whose keys key a wrapped is refused by a server with key b alone, saying what
    // to do, and leaves nothing
    let err = import(&mut c).unwrap_err();
    assert!(
        err.contains("55000")
            && err.contains("import of tenant \"moved\": its encryption keys")
            && err.contains("udm.encryption_old_key_file"),
        "{err}"
    );
    no_tenant_left(&mut c, "moved");
    // new and previous: values read, and the keys are wrapped again at once, the imported
    // tenant's too
    let mut c = restart(c, &[("udm.encryption_old_key_file", Some(&a))]);
    assert_eq!(json(&mut c, &get)["ssn"], SSN);
    import(&mut c).unwrap();
    let moved_get = |c: &mut Client| -> Value {
        c.batch_execute("SELECT udm_use('moved')").unwrap();
        let v = json(c, &get);
        c.batch_execute("SELECT udm_use('vault')").unwrap();
        v
    };
    assert_eq!(moved_get(&mut c)["ssn"], SSN);
    let r = json(&mut c, "SELECT udm_rewrap_keys()");
    assert_eq!(r["keys"], 4, "{r}");
    assert_eq!(r["tenants"], json!(["moved", "vault"]), "{r}");
    let again = json(&mut c, "SELECT udm_rewrap_keys()");
    assert_eq!(again["keys"], 0, "{again}");
    let rows: i64 = scalar(
        &mut c,
        "SELECT count(*) FROM vault._udm_keys WHERE rewrapped_by = 'postgres' AND rewrapped_at IS NOT NULL",
    );
    assert_eq!(rows, 2, "who re-wrapped the keys is recorded");
    // the new key file alone now suffices; the values themselves never changed
    let mut c = restart(c, &[("udm.encryption_old_key_file", None)]);
    assert_eq!(json(&mut c, &get)["ssn"], SSN);
    assert_eq!(moved_get(&mut c)["ssn"], SSN);
    let stored_after: String = scalar(&mut c, "SELECT ssn FROM vault.customer");
    assert_eq!(stored_before, stored_after);
    // and the old key file alone no longer opens anything
    let mut c = restart(c, &[("udm.encryption_key_file", Some(&a))]);
    expect_err(&mut c, &get, "55000");
    drop(c);
    stop();
    let _ = std::fs::remove_dir_all(&keys);
}

/// Crypto-shredding: a udm admin destroys a tenant's keys, with a confirmation; its encrypted
/// values can no longer be read or written by anyone, its other fields keep working.
#[test]
fn shredding_the_keys_makes_encrypted_values_unreadable() {
    let mut adm = admin();
    let mut m = member(&mut adm, "ensh");
    let t = m.tenant.clone();
    customer(&mut m.client);
    let id = insert(&mut m.client, "Ada", SSN, MAIL)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let confirm = format!("destroy the keys of {t}");
    // a member is not an admin
    expect_err(
        &mut m.client,
        &format!("SELECT udm_shred_keys({}, {})", lit(&t), lit(&confirm)),
        "42501",
    );
    let msg = expect_err(
        &mut adm,
        &format!("SELECT udm_shred_keys({}, {})", lit(&t), lit(&t)),
        "22023",
    );
    assert!(msg.contains(&confirm), "{msg}");
    expect_err(
        &mut adm,
        "SELECT udm_shred_keys('no_such_tenant_x', 'destroy the keys of no_such_tenant_x')",
        "42704",
    );
    let r = json(
        &mut adm,
        &format!("SELECT udm_shred_keys({}, {})", lit(&t), lit(&confirm)),
    );
    assert_eq!(r["keys_destroyed"], 2, "{r}");
    let left: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM \"{t}\"._udm_keys WHERE length(wrapped) > 0 OR shredded_by IS NULL"),
    );
    assert_eq!(left, 0, "no key material is left in the table");
    // reads and writes of encrypted values: refused, naming the tenant
    for sql in [
        format!("SELECT udm_get('customer', {})", lit(&id)),
        r#"SELECT udm_query('customer', '{"columns": ["ssn"]}')"#.to_string(),
        format!("SELECT udm_history('customer', {})", lit(&id)),
        r#"SELECT udm_insert('customer', '{"name": "Bo", "notes": "x"}')"#.to_string(),
        format!("INSERT INTO \"{t}\".customer (name, ssn) VALUES ('Bo', '1')"),
        "SELECT udm_rotate_data_key()".to_string(),
        r#"SELECT udm_alter_field('customer', 'name', '{"encrypted": true}')"#.to_string(),
        r#"SELECT udm_alter_field('customer', 'notes', '{"encrypted": false}')"#.to_string(),
    ] {
        let msg = expect_err(&mut m.client, &sql, "55000");
        assert!(
            msg.contains(&format!(
                "the encryption keys of tenant \"{t}\" were destroyed"
            )),
            "{sql}: {msg}"
        );
    }
    // other fields still work
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('customer', '{"columns": ["name"]}')"#,
    );
    assert_eq!(page["rows"], json!([{"name": "Ada"}]));
    json(
        &mut m.client,
        r#"SELECT udm_insert('customer', '{"name": "Bo"}')"#,
    );
    // and a second time is refused
    expect_err(
        &mut adm,
        &format!("SELECT udm_shred_keys({}, {})", lit(&t), lit(&confirm)),
        "55000",
    );
}

#[test]
fn graphql_reads_plaintext_filters_by_equality_and_refuses_order() {
    let mut adm = admin();
    let mut m = member(&mut adm, "engq");
    customer(&mut m.client);
    insert(&mut m.client, "Ada", SSN, MAIL);
    insert(&mut m.client, "Bob", "222-22-2222", "bob@example.com");
    let all = json(
        &mut m.client,
        "SELECT udm_graphql('{ customerCollection { nodes { name ssn notes } } }')",
    );
    let nodes = &all["data"]["customerCollection"]["nodes"];
    assert_eq!(nodes.as_array().map(|a| a.len()), Some(2), "{all}");
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["ssn"] == SSN && n["notes"] == NOTE),
        "{all}"
    );
    let one = json(
        &mut m.client,
        r#"SELECT udm_graphql('{ customerCollection(filter: {ssn: {eq: "222-22-2222"}}) { nodes { name } } }')"#,
    );
    assert_eq!(
        one["data"]["customerCollection"]["nodes"],
        json!([{"name": "Bob"}]),
        "{one}"
    );
    // a subscriber is given the value before a change decrypted, as history gives it
    let h: i64 = scalar(
        &mut m.client,
        "SELECT (udm_events(0, 1)->>'horizon')::bigint",
    );
    let bob: String = scalar(
        &mut m.client,
        "SELECT udm_query('customer', '{\"filters\": {\"ssn\": \"222-22-2222\"}}')->'rows'->0->>'id'",
    );
    json(
        &mut m.client,
        &format!("SELECT udm_update('customer', '{bob}', '{{\"ssn\": \"333-33-3333\"}}')"),
    );
    let ev = json(
        &mut m.client,
        &format!(
            "SELECT udm_graphql_events('subscription {{ customerChanged(actions: [UPDATE]) {{ old {{ ssn }} record {{ ssn }} }} }}', NULL, NULL, {h})"
        ),
    );
    assert_eq!(
        ev["events"][0]["payload"]["data"]["customerChanged"],
        json!({"old": {"ssn": "222-22-2222"}, "record": {"ssn": "333-33-3333"}}),
        "{ev}"
    );
    // the schema offers no order and no range on it: refused when the document is validated
    for (q, names) in [
        (
            r#"{ customerCollection(orderBy: [{ssn: ASC}]) { nodes { name } } }"#,
            "field `ssn` does not exist on `CustomerOrderBy`",
        ),
        (
            r#"{ customerCollection(filter: {ssn: {gt: \"1\"}}) { nodes { name } } }"#,
            "field `gt` does not exist on `StringEqualityFilter`",
        ),
    ] {
        let r = json(
            &mut m.client,
            &format!("SELECT udm_graphql({})", lit(&q.replace("\\\"", "\""))),
        );
        assert_eq!(
            r["errors"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
            "{q}: {r}"
        );
        assert!(
            r["errors"][0]["message"].as_str().unwrap().contains(names),
            "{r}"
        );
    }
}

/// JSON and date-like fields: sealed as one canonical text (whatever the session's DateStyle or
/// TimeZone), read back as the types a plain field has, equal to what a plain field returns.
#[test]
fn json_and_date_fields_are_sealed_and_read_back_as_their_types() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enjd");
    let t = m.tenant.clone();
    let fields = |enc: bool| {
        let e = if enc { r#", "encrypted": true"# } else { "" };
        format!(
            r#"{{"fields": [{{"name": "name", "type": "text"}},
                {{"name": "doc", "type": "json"{e}}},
                {{"name": "born", "type": "date", "index": true, "min": "1900-01-01"{e}}},
                {{"name": "seen", "type": "datetime"{e}}}]}}"#
        )
    };
    for (name, enc) in [("sealed", true), ("plain", false)] {
        json(
            &mut m.client,
            &format!("SELECT udm_define_entity('{name}', {})", lit(&fields(enc))),
        );
    }
    let row = json!({"name": "Ada", "doc": {"allergies": ["nuts"], "n": 1.50},
                     "born": "1815-12-10", "seen": "2026-03-01T10:00:00+02:00"});
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_insert('sealed', {})", lit(&row.to_string())),
        "23514",
    );
    assert!(
        msg.contains("born"),
        "the date's min holds on the plaintext: {msg}"
    );
    let row = json!({"name": "Ada", "doc": {"allergies": ["nuts"], "n": 1.50},
                     "born": "1915-12-10", "seen": "2026-03-01T10:00:00+02:00"});
    inserts_as_plain(&mut m.client, &row);
    // plain SQL in another DateStyle and TimeZone: the same canonical value
    in_style(
        &mut m.client,
        "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/New_York'",
        &format!(
            "INSERT INTO \"{t}\".sealed (name, doc, born, seen) VALUES ('Bob', '{{\"k\": true}}', '10/12/1915', '2026-03-01 03:00:00')"
        ),
        "RESET DateStyle; RESET TimeZone",
    )
    .unwrap();
    let stored: Vec<String> = adm
        .query(
            &format!("SELECT concat_ws(' ', doc, born, seen) FROM \"{t}\".sealed"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in &stored {
        assert!(
            s.starts_with("udm1:") && !s.contains("1915") && !s.contains("nuts"),
            "{s}"
        );
    }
    let found = json(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["name", "doc", "seen"], "filters": {"born": "1915-12-10"}, "limit": 5}')"#,
    );
    let rows = found["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "both dates are one canonical value: {found}");
    let bob = rows.iter().find(|r| r["name"] == "Bob").unwrap();
    assert_eq!(bob["doc"], json!({"k": true}));
    let ada = rows.iter().find(|r| r["name"] == "Ada").unwrap();
    assert_eq!(
        ada["seen"], bob["seen"],
        "10:00+02 and 03:00 in New York are one instant"
    );
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"filters": {"born": {"gt": "1900-01-01"}}}')"#,
        "0A000",
    );
    assert!(msg.contains("field \"born\""), "{msg}");
    // history holds ciphertext and shows the plaintext, JSON as JSON
    let id: String = scalar(
        &mut m.client,
        &format!("SELECT id::text FROM \"{t}\".sealed WHERE name = 'Bob'"),
    );
    let h: Value = scalar(
        &mut m.client,
        &format!(
            "SELECT data FROM udm_history('sealed', {}) LIMIT 1",
            lit(&id)
        ),
    );
    assert_eq!(h["doc"], json!({"k": true}), "{h}");
    assert_eq!(h["born"], "1915-12-10", "{h}");
    // a value that is not of the type is refused, nothing stored
    expect_err(
        &mut m.client,
        &format!("INSERT INTO \"{t}\".sealed (name, born) VALUES ('X', 'not a date')"),
        "22007",
    );
}

#[test]
fn pages_open_encrypted_values_outside_sql_and_read_as_a_plain_entity_does() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enpg");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('owner', '{"fields": [
            {"name": "name", "type": "text"},
            {"name": "secret", "type": "text", "encrypted": true}]}')"#,
    );
    let fields = |enc: bool| {
        let e = if enc { r#", "encrypted": true"# } else { "" };
        format!(
            r#"{{"fields": [{{"name": "name", "type": "text"}},
                {{"name": "note", "type": "long_text"{e}}},
                {{"name": "doc", "type": "json"{e}}},
                {{"name": "born", "type": "date"{e}}},
                {{"name": "seen", "type": "datetime"{e}}},
                {{"name": "owner_id", "type": "relation", "target": "owner"}}]}}"#
        )
    };
    for (name, enc) in [("sealed", true), ("plain", false)] {
        json(
            &mut m.client,
            &format!("SELECT udm_define_entity('{name}', {})", lit(&fields(enc))),
        );
    }
    let owner = json(
        &mut m.client,
        r#"SELECT udm_insert('owner', '{"name": "O", "secret": "the owner''s secret"}')"#,
    );
    let oid = owner["id"].as_str().unwrap();
    for i in 0..30 {
        // every fifth record has no values, every other no owner
        let row = if i % 5 == 0 {
            json!({"name": format!("r{i:02}")})
        } else {
            json!({"name": format!("r{i:02}"), "note": format!("note {i} é ✓"),
                   "doc": {"i": i, "tags": ["a", "b"], "n": 1.50},
                   "born": format!("19{:02}-0{}-1{}", i, 1 + i % 9, i % 10),
                   "seen": format!("2026-03-01T1{}:00:00.123456+02:00", i % 10),
                   "owner_id": if i % 2 == 0 { Value::Null } else { json!(oid) }})
        };
        for e in ["sealed", "plain"] {
            json(
                &mut m.client,
                &format!("SELECT udm_insert('{e}', {})", lit(&row.to_string())),
            );
        }
    }
    // the page selects the stored values and opens them where its JSON is built: the SQL
    // holds no call per value
    let c = json(
        &mut m.client,
        r#"SELECT udm_compile('sealed', '{"columns": ["name", "note", "doc", "born", "seen", "owner_id.secret"]}')"#,
    );
    let sql = c["sql"].as_str().unwrap();
    assert!(!sql.contains("decrypt_field"), "{sql}");
    let cols = r#"["name", "note", "doc", "born", "seen", "owner_id.name"]"#;
    // in a session time zone and date style of its own: the same JSON as the plain entity
    m.client
        .batch_execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'")
        .unwrap();
    for spec in [
        format!(r#"{{"columns": {cols}, "sort": ["name"], "limit": 7}}"#),
        format!(r#"{{"columns": {cols}, "sort": ["-name"], "limit": 50, "count": "exact"}}"#),
        format!(r#"{{"columns": {cols}, "distinct": true, "sort": ["name"], "limit": 50}}"#),
    ] {
        let a = json(
            &mut m.client,
            &format!("SELECT udm_query('sealed', {})", lit(&spec)),
        );
        let b = json(
            &mut m.client,
            &format!("SELECT udm_query('plain', {})", lit(&spec)),
        );
        assert_eq!(a["rows"], b["rows"], "{spec}");
        assert_eq!(a.get("count"), b.get("count"), "{spec}");
        // the next page, by the cursor
        if let Some(cur) = a["next_cursor"].as_str() {
            let next = |e: &str, cur: &str, c: &mut Client| {
                let mut s: Value = serde_json::from_str(&spec).unwrap();
                s["cursor"] = json!(cur);
                json(
                    c,
                    &format!("SELECT udm_query('{e}', {})", lit(&s.to_string())),
                )
            };
            let na = next("sealed", cur, &mut m.client);
            let nb = next("plain", b["next_cursor"].as_str().unwrap(), &mut m.client);
            assert_eq!(na["rows"], nb["rows"], "{spec}");
        }
    }
    // the table view too
    let a = json(
        &mut m.client,
        &format!(
            "SELECT udm_view('sealed', 'table', {})",
            lit(&format!(r#"{{"columns": {cols}, "sort": ["name"]}}"#))
        ),
    );
    let b = json(
        &mut m.client,
        &format!(
            "SELECT udm_view('plain', 'table', {})",
            lit(&format!(r#"{{"columns": {cols}, "sort": ["name"]}}"#))
        ),
    );
    assert_eq!(a["rows"], b["rows"]);
    assert_eq!(a["rows"].as_array().unwrap().len(), 30);
    m.client
        .batch_execute("RESET TimeZone; RESET DateStyle")
        .unwrap();
    // an encrypted field of a related record
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["name", "owner_id.secret"], "sort": ["name"], "limit": 3}')"#,
    );
    assert_eq!(
        page["rows"],
        json!([{"name": "r00", "owner_id.secret": null},
               {"name": "r01", "owner_id.secret": "the owner's secret"},
               {"name": "r02", "owner_id.secret": null}])
    );
    // a ciphertext moved to another record (by a superuser with the triggers off: on Citus they
    // fire on the tenant's worker, which the coordinator's ALTER TABLE does not reach) fails
    // the page, naming tenant, entity and field
    if !on_citus(&mut adm) {
        adm.batch_execute(&format!(
            "ALTER TABLE \"{t}\".sealed DISABLE TRIGGER USER; \
             UPDATE \"{t}\".sealed SET note = (SELECT note FROM \"{t}\".sealed WHERE name = 'r01') WHERE name = 'r02'; \
             ALTER TABLE \"{t}\".sealed ENABLE TRIGGER USER"
        ))
        .unwrap();
        let msg = expect_err(
            &mut m.client,
            r#"SELECT udm_query('sealed', '{"columns": ["name", "note"], "sort": ["name"], "limit": 5}')"#,
            "XX001",
        );
        assert!(
            msg.contains(&format!(
                "field \"note\" of entity \"sealed\" in tenant \"{t}\""
            )),
            "{msg}"
        );
        // the page before it still reads
        let page = json(
            &mut m.client,
            r#"SELECT udm_query('sealed', '{"columns": ["note"], "sort": ["name"], "limit": 2}')"#,
        );
        assert_eq!(
            page["rows"],
            json!([{"note": null}, {"note": "note 1 é ✓"}])
        );
    }
    // once the keys are destroyed: a page holding an encrypted value is refused, one without
    // any (no rows, or NULLs only) still reads
    shred(&mut adm, &t);
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["name", "note"], "sort": ["name"], "limit": 2}')"#,
        "55000",
    );
    assert!(msg.contains("were destroyed"), "{msg}");
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["name", "note"], "sort": ["name"], "limit": 1}')"#,
    );
    assert_eq!(page["rows"], json!([{"name": "r00", "note": null}]));
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["note"], "filters": {"name": "none"}}')"#,
    );
    assert_eq!(page["rows"], json!([]));
}

#[test]
fn events_name_the_changed_encrypted_fields_and_carry_no_values() {
    let mut adm = admin();
    let mut m = member(&mut adm, "enev");
    customer(&mut m.client);
    let rec = insert(&mut m.client, "Ada", SSN, MAIL);
    let id = rec["id"].as_str().unwrap().to_string();
    json(
        &mut m.client,
        &format!(
            "SELECT udm_update('customer', {}, '{{\"ssn\": \"987-65-4321\"}}')",
            lit(&id)
        ),
    );
    json(
        &mut m.client,
        r#"SELECT udm_subscribe('customer', ARRAY['UPDATE'], 'ssn-watch', '{"ssn": "987-65-4321"}')"#,
    );
    json(
        &mut m.client,
        &format!(
            "SELECT udm_update('customer', {}, '{{\"notes\": \"n2\"}}')",
            lit(&id)
        ),
    );
    for sql in [
        "SELECT udm_events(0, 100)",
        "SELECT udm_consume('enc-reader', 100)",
    ] {
        let ev = json(&mut m.client, sql);
        let events = ev["events"].as_array().unwrap();
        assert_eq!(events.len(), 3, "{ev}");
        let text = ev.to_string();
        // names of changed fields only: no plaintext, no ciphertext
        for v in [SSN, "987-65-4321", MAIL, NOTE, "n2", "udm1:"] {
            assert!(!text.contains(v), "{sql}: {v} in {text}");
        }
        assert_eq!(events[1]["changed_fields"], json!(["ssn"]), "{ev}");
        assert_eq!(events[2]["changed_fields"], json!(["notes"]), "{ev}");
        // a subscription's condition on an encrypted field compares through its blind index
        assert_eq!(events[2]["targets"], json!(["ssn-watch"]), "{ev}");
    }
}

/// The fields of an entity with its raw column types and `encryption_pending` per field.
fn field_states(adm: &mut Client, m: &mut Member, entity: &str) -> Value {
    let d = json(
        &mut m.client,
        &format!("SELECT udm_describe({})", lit(entity)),
    );
    let types: Value = scalar(
        adm,
        &format!(
            "SELECT jsonb_object_agg(attname, format_type(atttypid, atttypmod)) FROM pg_attribute \
             WHERE attrelid = '\"{}\".{entity}'::regclass AND attnum > 0 AND NOT attisdropped",
            m.tenant
        ),
    );
    let mut out = serde_json::Map::new();
    for f in d["fields"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        out.insert(
            name.into(),
            json!([f["encrypted"], f["encryption_pending"], types[name]]),
        );
    }
    Value::Object(out)
}

/// Calls `udm_reencrypt(entity, batch)` until nothing remains; the progress seen and the fields
/// completed.
fn convert_all(c: &mut Client, entity: &str, batch: i32) -> (Vec<i64>, Vec<String>) {
    let mut progress = Vec::new();
    let mut completed = Vec::new();
    loop {
        let r = json(
            c,
            &format!("SELECT udm_reencrypt({}, {batch})", lit(entity)),
        );
        progress.push(r["remaining"].as_i64().unwrap());
        let now = r["completed"].as_array().unwrap();
        for f in now {
            completed.push(f.as_str().unwrap().to_string());
        }
        // a call that converted the last values completes only if no writer is in flight;
        // one more call (which waits for them) completes then
        if r["remaining"] == 0 && (r["reencrypted"] == 0 || !now.is_empty()) {
            return (progress, completed);
        }
        assert!(
            progress.len() < 500,
            "the conversion does not finish: {progress:?}"
        );
    }
}

/// Encryption turned on for existing fields (text, date, json, datetime) and off again, online:
/// the definition changes at once, `udm_reencrypt` converts the values in batches while another
/// session writes, reads are right in the middle of it, plain SQL writes are sealed from the
/// start, and the field's CHECK constraints and column type come back when it is turned off.
#[test]
fn encryption_turned_on_and_off_for_existing_fields_online() {
    let mut adm = admin();
    let mut m = member(&mut adm, "entg");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('patient', '{"fields": [
            {"name": "name", "type": "text", "required": true, "unique": true},
            {"name": "notes", "type": "long_text", "max_length": 40},
            {"name": "born", "type": "date", "min": "1900-01-01"},
            {"name": "meta", "type": "json"},
            {"name": "seen", "type": "datetime"}]}')"#,
    );
    m.client
        .batch_execute(&format!(
            "SET TimeZone = 'Europe/Paris'; SET DateStyle = 'SQL, DMY'; \
             INSERT INTO \"{t}\".patient (name, notes, born, meta, seen) \
             SELECT 'p' || i, 'note ' || i, date '1950-01-01' + i, jsonb_build_object('i', i), \
                    timestamptz '2024-03-01 12:00:00+00' + i * interval '1 minute' \
             FROM generate_series(1, 300) i"
        ))
        .unwrap();
    // refused: a change that comes with other changes, a stored value that looks encrypted (a
    // unique field: `encryption_of_a_unique_field_is_turned_on_and_off_online`)
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('patient', 'notes', '{"encrypted": true, "max_length": 30}')"#,
        "0A000",
    );
    assert!(msg.contains("turned on alone"), "{msg}");
    adm.batch_execute(&format!(
        "UPDATE \"{t}\".patient SET notes = 'udm1:1::abc' WHERE name = 'p5'"
    ))
    .unwrap();
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('patient', 'notes', '{"encrypted": true}')"#,
        "55000",
    );
    assert!(msg.contains("starts with \"udm1:\""), "{msg}");
    adm.batch_execute(&format!(
        "UPDATE \"{t}\".patient SET notes = 'note 5' WHERE name = 'p5'"
    ))
    .unwrap();

    // on: quick definition changes; the values are still plaintext. A text field's column
    // holds both forms meanwhile; json and date-like fields keep their column and type, and
    // their sealed values go beside it (`encryption_turned_on_for_json_and_dates_never_rewrites_the_table`)
    for (f, key, state) in [
        ("notes", "encryption_pending", "on"),
        ("born", "encryption_stage", "sealing"),
        ("meta", "encryption_stage", "sealing"),
        ("seen", "encryption_stage", "sealing"),
    ] {
        let r = json(
            &mut m.client,
            &format!(
                "SELECT udm_alter_field('patient', {}, '{{\"encrypted\": true}}')",
                lit(f)
            ),
        );
        let def = r["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == f)
            .unwrap()
            .clone();
        assert_eq!(def[key], state, "{r}");
    }
    let states = field_states(&mut adm, &mut m, "patient");
    assert_eq!(states["notes"], json!([true, "on", "text"]), "{states}");
    assert_eq!(states["born"], json!([null, null, "date"]), "{states}");
    assert_eq!(states["meta"], json!([null, null, "jsonb"]), "{states}");
    let raw: Value = scalar(
        &mut adm,
        &format!("SELECT to_jsonb(t) - 'id' - 'created_at' - 'updated_at' - 'created_by' - 'updated_by' - '_version' - 'seen' FROM \"{t}\".patient t WHERE name = 'p1'"),
    );
    assert_eq!(
        raw,
        json!({"name": "p1", "notes": "note 1", "born": "1950-01-02", "meta": {"i": 1},
               "_udm_f3_sealed": null, "_udm_f4_sealed": null, "_udm_f5_sealed": null}),
        "{raw}"
    );
    // plain SQL writes are sealed from now on (beside the column for a date), and the field's
    // rules hold on the plaintext
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".patient (name, notes, born) VALUES ('new', 'written late', '1999-12-31')"
        ))
        .unwrap();
    let late: Value = scalar(
        &mut adm,
        &format!("SELECT jsonb_build_array(notes, _udm_f3_sealed) FROM \"{t}\".patient WHERE name = 'new'"),
    );
    for v in late.as_array().unwrap() {
        assert!(v.as_str().unwrap().starts_with("udm1:"), "{late}");
    }
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE \"{t}\".patient SET born = '1800-01-01' WHERE name = 'p2'"),
        "23514",
    );
    assert!(msg.contains("born"), "{msg}");
    // while it is converted: its rules cannot change
    expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('patient', 'notes', '{"max_length": 50}')"#,
        "0A000",
    );

    // one batch, then reads see plaintext whether a value was converted yet or not
    let r = json(&mut m.client, "SELECT udm_reencrypt('patient', 100)");
    assert_eq!(r["reencrypted"], 100, "{r}");
    assert_eq!(r["completed"], json!([]), "{r}");
    let left = r["remaining"].as_i64().unwrap();
    assert!(left > 150 && left < 301, "{r}");
    let sealed: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM \"{t}\".patient WHERE starts_with(notes, 'udm1:')"),
    );
    assert!(sealed > 100 && sealed < 301, "mixed: {sealed}");
    let check_reads = |c: &mut Client, adm: &mut Client, what: &str| {
        let page = json(
            c,
            r#"SELECT udm_query('patient', '{"columns": ["id", "name", "notes", "born", "meta", "seen"], "filters": {"name": {"starts_with": "p"}}, "sort": ["name"], "limit": 500}')"#,
        );
        let rows = page["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 300, "{what}");
        for r in rows {
            let i: i64 = r["name"].as_str().unwrap()[1..].parse().unwrap();
            assert_eq!(r["meta"], json!({"i": i}), "{what}: {r}");
            let born: String = scalar(adm, &format!("SELECT (date '1950-01-01' + {i})::text"));
            assert_eq!(r["born"], born, "{what}: {r}");
            assert!(
                r["seen"].as_str().unwrap().starts_with("2024-03-01T"),
                "{what}: {r}"
            );
        }
        rows.clone()
    };
    let rows = check_reads(&mut m.client, &mut adm, "mid-conversion");
    for r in &rows {
        let i = &r["name"].as_str().unwrap()[1..];
        assert_eq!(r["notes"], format!("note {i}"), "{r}");
    }
    // udm_get and udm_decrypt on a converted and a not converted record
    let ids: Value = scalar(
        &mut adm,
        &format!(
            "SELECT jsonb_build_array(\
               (SELECT id FROM \"{t}\".patient WHERE starts_with(notes, 'udm1:') AND name LIKE 'p%' LIMIT 1), \
               (SELECT id FROM \"{t}\".patient WHERE NOT starts_with(notes, 'udm1:') LIMIT 1))"
        ),
    );
    for id in ids.as_array().unwrap() {
        let id = id.as_str().unwrap();
        let g = json(
            &mut m.client,
            &format!("SELECT udm_get('patient', {})", lit(id)),
        );
        let i = &g["name"].as_str().unwrap()[1..];
        assert_eq!(g["notes"], format!("note {i}"), "{g}");
        assert_eq!(g["meta"], json!({"i": i.parse::<i64>().unwrap()}), "{g}");
        let d: String = scalar(
            &mut m.client,
            &format!(
                "SELECT udm_decrypt('patient', 'notes', id, notes) FROM \"{t}\".patient WHERE id = {}",
                lit(id)
            ),
        );
        assert_eq!(d, format!("note {i}"));
    }

    // the rest, with a writer in another session that keeps changing notes
    let (stop, writer) = writer_session(
        &m.role,
        &t,
        2,
        std::collections::HashMap::new(),
        |w, tenant, round, last| {
            for i in (1 + round % 5..=300).step_by(5) {
                let note = format!("r{round} p{i}");
                w.execute(
                    &format!("UPDATE \"{tenant}\".patient SET notes = $1 WHERE name = $2"),
                    &[&note, &format!("p{i}")],
                )
                .unwrap();
                last.insert(format!("p{i}"), note);
            }
        },
    );
    let mut completed = Vec::new();
    let mut progress = Vec::new();
    let began = std::time::Instant::now();
    loop {
        let r = json(&mut m.client, "SELECT udm_reencrypt('patient', 30)");
        progress.push(r["remaining"].as_i64().unwrap());
        for f in r["completed"].as_array().unwrap() {
            completed.push(f.as_str().unwrap().to_string());
        }
        if progress.len() >= 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if r["remaining"] == 0 && writer.is_finished() {
            break;
        }
        if r["remaining"] == 0 {
            // the writer's last round (slow on a loaded machine): its rows come back plain
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(120),
            "{progress:?}"
        );
    }
    let (last, _) = writer.join().unwrap();
    let (_, more) = convert_all(&mut m.client, "patient", 1000);
    completed.extend(more);
    completed.sort();
    assert_eq!(completed, ["born", "meta", "notes", "seen"], "{progress:?}");
    let states = field_states(&mut adm, &mut m, "patient");
    assert_eq!(states["notes"], json!([true, null, "text"]), "{states}");
    assert_eq!(states["seen"], json!([true, null, "text"]), "{states}");
    let plain: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM \"{t}\".patient WHERE NOT (starts_with(notes, 'udm1:') AND starts_with(born, 'udm1:') \
             AND starts_with(meta, 'udm1:') AND starts_with(seen, 'udm1:'))"
        ),
    );
    assert_eq!(plain, 0, "every value is sealed");
    // nothing lost: each note reads back as last written
    let rows = check_reads(&mut m.client, &mut adm, "converted");
    assert!(!last.is_empty());
    for r in &rows {
        let name = r["name"].as_str().unwrap();
        let want = last
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("note {}", &name[1..]));
        assert_eq!(r["notes"], want, "{r}");
    }
    // a converted record's history opens its values
    let id = rows[0]["id"].as_str().unwrap().to_string();
    let versions = versions(&mut m.client, "patient", &id);
    let h = Value::from(versions.clone());
    assert!(versions.len() >= 2, "inserted, converted: {h}");
    let i = &rows[0]["name"].as_str().unwrap()[1..];
    assert_eq!(versions[0]["notes"], format!("note {i}"), "{h}");
    assert_eq!(versions[0]["born"], rows[0]["born"], "{h}");
    assert_eq!(versions.last().unwrap()["born"], rows[0]["born"], "{h}");
    assert!(!h.to_string().contains("udm1:"), "{h}");
    // once on, the field is an encrypted field: its rules cannot change
    expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('patient', 'notes', '{"max_length": 50}')"#,
        "0A000",
    );

    // off: writes store plaintext at once, the values are opened in batches, then the column
    // gets its type and the field its CHECK constraints back
    for f in ["notes", "born"] {
        json(
            &mut m.client,
            &format!(
                "SELECT udm_alter_field('patient', {}, '{{\"encrypted\": false}}')",
                lit(f)
            ),
        );
    }
    let states = field_states(&mut adm, &mut m, "patient");
    assert_eq!(states["notes"], json!([true, "off", "text"]), "{states}");
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".patient SET notes = 'plain again' WHERE name = 'p7'"
        ))
        .unwrap();
    let raw: String = scalar(
        &mut adm,
        &format!("SELECT notes FROM \"{t}\".patient WHERE name = 'p7'"),
    );
    assert_eq!(raw, "plain again");
    let r = json(&mut m.client, "SELECT udm_reencrypt('patient', 50)");
    assert_eq!(r["completed"], json!([]), "{r}");
    let mid = check_reads(&mut m.client, &mut adm, "turning off");
    assert!(mid.iter().any(|r| r["notes"] == "plain again"));
    let (_, completed) = convert_all(&mut m.client, "patient", 1000);
    let mut completed = completed;
    completed.sort();
    assert_eq!(completed, ["born", "notes"]);
    let states = field_states(&mut adm, &mut m, "patient");
    assert_eq!(states["notes"], json!([null, null, "text"]), "{states}");
    assert_eq!(states["born"], json!([null, null, "date"]), "{states}");
    assert_eq!(states["meta"], json!([true, null, "text"]), "{states}");
    let raw: Value = scalar(
        &mut adm,
        &format!("SELECT jsonb_build_array(notes, born) FROM \"{t}\".patient WHERE name = 'p1'"),
    );
    assert_eq!(raw[1], "1950-01-02", "{raw}");
    assert!(!raw[0].as_str().unwrap().starts_with("udm1:"), "{raw}");
    check_reads(&mut m.client, &mut adm, "off");
    // the CHECK constraint of max_length is back, for plain SQL too
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE \"{t}\".patient SET notes = repeat('x', 41) WHERE name = 'p1'"),
        "23514",
    );
    assert!(msg.contains("notes"), "{msg}");
    // a version written while notes was encrypted holds its ciphertext in the log: once
    // encryption is off, history shows its plaintext and a rollback restores the plaintext
    let p1: String = scalar(
        &mut adm,
        &format!("SELECT id::text FROM \"{t}\".patient WHERE name = 'p1'"),
    );
    let sealed_version: i32 = scalar(
        &mut adm,
        &format!(
            "SELECT min(record_version) FROM \"{t}\"._udm_audit WHERE record_id = {} \
               AND starts_with(new_data->>'notes', 'udm1:')",
            lit(&p1)
        ),
    );
    let shown: Value = scalar(
        &mut m.client,
        &format!(
            "SELECT jsonb_agg(data->'notes' ORDER BY version) FROM udm_history('patient', {})",
            lit(&p1)
        ),
    );
    assert!(!shown.to_string().contains("udm1:"), "{shown}");
    assert!(
        shown.as_array().unwrap().iter().all(|n| n == "note 1"),
        "{shown}"
    );
    json(
        &mut m.client,
        &format!(
            r#"SELECT udm_update('patient', {}, '{{"notes": "changed", "born": "1999-09-09"}}')"#,
            lit(&p1)
        ),
    );
    let r = json(
        &mut m.client,
        &format!(
            "SELECT udm_rollback('patient', {}, {sealed_version}, ARRAY['notes'])",
            lit(&p1)
        ),
    );
    assert_eq!(r["skipped"], json!([]), "{r}");
    let r = json(
        &mut m.client,
        &format!(
            "SELECT udm_rollback('patient', {}, {sealed_version})",
            lit(&p1)
        ),
    );
    assert_eq!(r["skipped"], json!([]), "{r}");
    let raw: Value = scalar(
        &mut adm,
        &format!("SELECT jsonb_build_array(notes, born) FROM \"{t}\".patient WHERE name = 'p1'"),
    );
    assert_eq!(
        raw,
        json!(["note 1", "1950-01-02"]),
        "plaintext restored: {raw}"
    );
    let g = json(
        &mut m.client,
        &format!("SELECT udm_get('patient', {})", lit(&p1)),
    );
    assert!(!g.to_string().contains("udm1:"), "{g}");
    // each step is a definition change of its own, in the entity's history
    let ops: Vec<String> = m
        .client
        .query(
            "SELECT change->>'op' FROM udm_entity_history('patient') ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ops.iter().filter(|o| *o == "finish_encryption").count(),
        ops.len() - 7,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|o| *o == "alter_field").count(),
        6,
        "{ops:?}"
    );
    // once the keys are destroyed, those old values stay ciphertext: history still answers and
    // shows them as they are, and a rollback of that field is refused rather than storing one
    // (the last encrypted fields off first: history of an encrypted field refuses after
    // shredding)
    for f in ["meta", "seen"] {
        json(
            &mut m.client,
            &format!(
                "SELECT udm_alter_field('patient', {}, '{{\"encrypted\": false}}')",
                lit(f)
            ),
        );
    }
    convert_all(&mut m.client, "patient", 1000);
    shred(&mut adm, &t);
    let shown: Value = scalar(
        &mut m.client,
        &format!(
            "SELECT jsonb_agg(data->'notes' ORDER BY version) FROM udm_history('patient', {})",
            lit(&p1)
        ),
    );
    let shown = shown.as_array().unwrap();
    assert!(
        shown
            .iter()
            .any(|n| n.as_str().is_some_and(|s| s.starts_with("udm1:"))),
        "{shown:?}"
    );
    assert!(shown.iter().any(|n| n == "note 1"), "{shown:?}");
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_rollback('patient', {}, {sealed_version}, ARRAY['notes'])",
            lit(&p1)
        ),
        "0A000",
    );
    assert!(msg.contains("was encrypted in that version"), "{msg}");
}

/// Time and duration fields: sealed as one canonical text (a duration as ISO 8601, whatever the
/// session's IntervalStyle), read back as the types a plain field has, found by equality through
/// the blind index; range filters refused.
#[test]
fn time_and_duration_fields_are_sealed_and_read_back_as_their_types() {
    let mut adm = admin();
    let mut m = member(&mut adm, "entd");
    let t = m.tenant.clone();
    let fields = |enc: bool| {
        let e = if enc { r#", "encrypted": true"# } else { "" };
        format!(
            r#"{{"fields": [{{"name": "name", "type": "text"}},
                {{"name": "at", "type": "time", "unique": true{e}}},
                {{"name": "took", "type": "duration", "index": true{e}}}]}}"#
        )
    };
    for (name, enc) in [("sealed", true), ("plain", false)] {
        json(
            &mut m.client,
            &format!("SELECT udm_define_entity('{name}', {})", lit(&fields(enc))),
        );
    }
    let rows = [
        json!({"name": "a", "at": "08:30:15.25", "took": "1 year 2 months 3 days 04:05:06.5"}),
        json!({"name": "b", "at": "23:59:59", "took": "-1 day +02:00:00"}),
        json!({"name": "c", "at": "00:00:00", "took": "PT0S"}),
    ];
    for row in &rows {
        inserts_as_plain(&mut m.client, row);
    }
    // plain SQL in another IntervalStyle: the same canonical value, found by equality
    in_style(
        &mut m.client,
        "SET IntervalStyle = 'sql_standard'",
        &format!(
            "INSERT INTO \"{t}\".sealed (name, at, took) VALUES ('d', '8:30:15.250', '+1-2 +3 +4:05:06.5')"
        ),
        "RESET IntervalStyle",
    )
    .unwrap_err();
    // (the time is unique: that insert is refused as a duplicate of a's)
    in_style(
        &mut m.client,
        "SET IntervalStyle = 'sql_standard'",
        &format!(
            "INSERT INTO \"{t}\".sealed (name, at, took) VALUES ('d', '09:00', '+1-2 +3 +4:05:06.5')"
        ),
        "RESET IntervalStyle",
    )
    .unwrap();
    let stored: Vec<String> = adm
        .query(
            &format!("SELECT concat_ws(' ', at, took) FROM \"{t}\".sealed"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 4);
    for s in &stored {
        assert!(s.starts_with("udm1:") && !s.contains("08:30"), "{s}");
    }
    let found = json(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["name", "took"], "filters": {"took": "1 year 2 mons 3 days 04:05:06.5"}, "sort": ["name"]}')"#,
    );
    let names: Vec<&str> = found["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "d"], "one canonical duration: {found}");
    let found = json(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"columns": ["name"], "filters": {"at": "08:30:15.250"}}')"#,
    );
    assert_eq!(found["rows"], json!([{"name": "a"}]), "{found}");
    // every record reads back as the plain entity's
    let q = r#"'{"columns": ["name", "at", "took"], "sort": ["name"], "filters": {"name": {"in": ["a", "b", "c"]}}}'"#;
    let a = json(&mut m.client, &format!("SELECT udm_query('sealed', {q})"));
    let b = json(&mut m.client, &format!("SELECT udm_query('plain', {q})"));
    assert_eq!(a["rows"], b["rows"]);
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_query('sealed', '{"filters": {"at": {"gt": "08:00"}}}')"#,
        "0A000",
    );
    assert!(msg.contains("field \"at\""), "{msg}");
    // a value that is not of the type: refused as the column would refuse it
    expect_err(
        &mut m.client,
        r#"SELECT udm_insert('sealed', '{"name": "x", "took": "soon"}')"#,
        "22007",
    );
}

/// Destroys the keys of tenant `t` (`udm_shred_keys`, confirmed), as a database admin.
fn shred(adm: &mut postgres::Client, t: &str) {
    json(
        adm,
        &format!(
            "SELECT udm_shred_keys({}, {})",
            lit(t),
            lit(&format!("destroy the keys of {t}"))
        ),
    );
}

/// Encryption turned on and off for a unique text field and an indexed email field with values:
/// while the values are converted, a value is unique across its plaintext and sealed forms
/// (refused with 23505 through udm and plain SQL alike, a record rewriting its own value is
/// not), equality finds both forms, and completing swaps the constraints (the blind unique index
/// when on, the plain constraint when off). A unique date field's column is held in its
/// canonical text meanwhile.
#[test]
fn encryption_of_a_unique_field_is_turned_on_and_off_online() {
    let mut adm = admin();
    let mut m = member(&mut adm, "entu");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('badge', '{"fields": [
            {"name": "code", "type": "text", "unique": true},
            {"name": "mail", "type": "email", "index": true},
            {"name": "day", "type": "date", "unique": true}]}')"#,
    );
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".badge (code, mail, day) \
             SELECT 'c' || i, 'm' || i || '@x.org', date '2024-01-01' + i FROM generate_series(1, 50) i"
        ))
        .unwrap();
    for f in ["code", "mail", "day"] {
        json(
            &mut m.client,
            &format!("SELECT udm_alter_field('badge', '{f}', '{{\"encrypted\": true}}')"),
        );
    }
    let by_udm = |code: &str| {
        format!(
            "SELECT udm_insert('badge', {})",
            lit(&json!({"code": code}).to_string())
        )
    };
    let insert = |c: &mut Client, code: &str| c.batch_execute(&by_udm(code));
    let dup = |c: &mut Client, sql: &str| {
        let msg = expect_err(c, sql, "23505");
        assert!(
            msg.contains("field \"code\"") || msg.contains("badge.code must be unique"),
            "{msg}"
        );
    };
    // held in plaintext by a record not converted yet: refused sealed, through udm and plain SQL
    dup(&mut m.client, &by_udm("c7"));
    let msg = expect_err(
        &mut m.client,
        &format!("INSERT INTO \"{t}\".badge (code) VALUES ('c8')"),
        "23505",
    );
    assert!(
        msg.contains("another record already has this value"),
        "{msg}"
    );
    // a date written again, through udm, and through plain SQL in another spelling: the date
    // is a plain field until its swap, held by its unique constraint (named with its shard's
    // number on Citus)
    for sql in [
        r#"SELECT udm_insert('badge', '{"code": "d1", "day": "2024-01-05"}')"#.to_string(),
        format!("INSERT INTO \"{t}\".badge (code, day) VALUES ('d1', '2024-1-5')"),
    ] {
        let msg = expect_err(&mut m.client, &sql, "23505");
        assert!(
            msg.contains("badge.day must be unique") || msg.contains("\"badge__day__key"),
            "{msg}"
        );
    }
    // sealed against sealed: the partial blind index
    insert(&mut m.client, "new1").unwrap();
    expect_err(&mut m.client, &by_udm("new1"), "23505");
    // a record rewriting its own value, or changing another field, is not a duplicate
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".badge SET code = 'c10' WHERE code = 'c10'; \
             UPDATE \"{t}\".badge SET mail = 'z@x.org' WHERE code = 'c9'"
        ))
        .unwrap();
    // (the value written is sealed; the one left as it was stays plaintext until converted)
    let stored: String = scalar(
        &mut adm,
        &format!("SELECT mail FROM \"{t}\".badge WHERE code = 'c9'"),
    );
    assert!(stored.starts_with("udm1:"), "{stored}");
    // part of the values converted: equality finds both forms
    json(&mut m.client, "SELECT udm_reencrypt('badge', 20)");
    let count = |c: &mut Client, filters: Value| -> usize {
        let r = json(
            c,
            &format!(
                "SELECT udm_query('badge', {})",
                lit(&json!({"columns": ["code"], "filters": filters}).to_string())
            ),
        );
        r["rows"].as_array().unwrap().len()
    };
    let plain_left: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM \"{t}\".badge WHERE NOT starts_with(code, 'udm1:')"),
    );
    assert!(plain_left > 0 && plain_left < 50, "{plain_left}");
    assert_eq!(
        count(
            &mut m.client,
            json!({"code": {"in": ["c1", "c10", "c49", "new1", "nope"]}})
        ),
        4
    );
    assert_eq!(count(&mut m.client, json!({"code": "c49"})), 1);
    assert_eq!(count(&mut m.client, json!({"code": {"neq": "c49"}})), 50);
    assert_eq!(
        count(&mut m.client, json!({"code": {"not_in": ["c1", "c2"]}})),
        49
    );
    assert_eq!(count(&mut m.client, json!({"mail": "m30@x.org"})), 1);
    assert_eq!(count(&mut m.client, json!({"day": "2024-01-07"})), 1);
    assert_eq!(
        count(
            &mut m.client,
            json!({"day": {"in": ["2024-01-02", "2024-02-19", "2025-01-01"]}})
        ),
        2
    );
    // completed: the blind unique index holds alone
    let (_, completed) = convert_all(&mut m.client, "badge", 20);
    assert!(
        ["code", "mail", "day"]
            .iter()
            .all(|f| completed.contains(&f.to_string())),
        "{completed:?}"
    );
    assert_eq!(count(&mut m.client, json!({"day": "2024-01-07"})), 1);
    let indexes = |adm: &mut Client| index_defs(adm, &t, "badge");
    let defs = indexes(&mut adm);
    assert!(
        defs.contains("CREATE UNIQUE INDEX badge__code__key ON")
            && defs.contains("(split_part(code, ':'::text, 3))")
            // an indexed field's blind index is a hash index (equality only)
            && defs.contains("USING hash (split_part(mail, ':'::text, 3))")
            && !defs.contains("sealed")
            && !defs.contains("(code)"),
        "{defs}"
    );
    dup(&mut m.client, &by_udm("c3"));
    assert_eq!(count(&mut m.client, json!({"code": "c3"})), 1);
    // a record that held "new1" gives it up and another takes it, both sealed
    let x = json(
        &mut m.client,
        r#"SELECT udm_query('badge', '{"columns": ["id", "_version"], "filters": {"code": "new1"}}')"#,
    )["rows"][0]
        .clone();
    let (x_id, x_version) = (x["id"].as_str().unwrap().to_string(), x["_version"].clone());
    json(
        &mut m.client,
        &format!(
            "SELECT udm_update('badge', {}, '{{\"code\": \"x2\"}}')",
            lit(&x_id)
        ),
    );
    insert(&mut m.client, "new1").unwrap();
    // turned off: a plaintext written while sealed values remain is compared with them
    json(
        &mut m.client,
        r#"SELECT udm_alter_field('badge', 'code', '{"encrypted": false}')"#,
    );
    dup(&mut m.client, &by_udm("c4"));
    // and so is a sealed value written back (a rollback to the version that held "new1"): it is
    // stored opened, and another record still holds "new1" sealed
    expect_err(
        &mut m.client,
        &format!("SELECT udm_rollback('badge', {}, {x_version})", lit(&x_id)),
        "23505",
    );
    insert(&mut m.client, "new2").unwrap();
    expect_err(&mut m.client, &by_udm("new2"), "23505");
    assert_eq!(
        count(&mut m.client, json!({"code": {"in": ["c4", "new2"]}})),
        2
    );
    // a writer in flight when the last values are converted: that call does not wait for it
    // (it holds the rows it converted, which the writer could be waiting for: a deadlock), and
    // the next call, which holds none, completes
    let mut w = connect_as(&m.role);
    w.batch_execute(&format!(
        "SELECT udm_use('{t}'); BEGIN; UPDATE \"{t}\".badge SET mail = mail WHERE code = 'new2'"
    ))
    .unwrap();
    m.client
        .batch_execute("SET statement_timeout = '20s'")
        .unwrap();
    let r = json(&mut m.client, "SELECT udm_reencrypt('badge', 1000)");
    assert!(r["reencrypted"].as_i64().unwrap() > 0, "{r}");
    assert_eq!(
        (&r["remaining"], &r["completed"]),
        (&json!(0), &json!([])),
        "{r}"
    );
    w.batch_execute("COMMIT").unwrap();
    let r = json(&mut m.client, "SELECT udm_reencrypt('badge', 1000)");
    assert_eq!(
        (&r["reencrypted"], &r["completed"]),
        (&json!(0), &json!(["code"])),
        "{r}"
    );
    m.client.batch_execute("RESET statement_timeout").unwrap();
    let defs = indexes(&mut adm);
    assert!(
        defs.contains("CREATE UNIQUE INDEX badge__code__key ON")
            && defs.contains("(code)")
            && !defs.contains("sealed"),
        "{defs}"
    );
    let sealed_left: i64 = scalar(
        &mut adm,
        &format!("SELECT count(*) FROM \"{t}\".badge WHERE starts_with(code, 'udm1:')"),
    );
    assert_eq!(sealed_left, 0);
    expect_err(&mut m.client, &by_udm("c5"), "23505");
    assert_eq!(count(&mut m.client, json!({"code": "c6"})), 1);
}

/// The bytes of a table's live row versions (the ones a scan sees) as hex, to look for bytes
/// that only a dropped or cleared column could still hold (pageinspect).
fn live_tuple_bytes(adm: &mut Client, table: &str) -> String {
    adm.batch_execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .unwrap();
    scalar(
        adm,
        &format!(
            "SELECT coalesce(string_agg(encode(i.t_data, 'hex'), ''), '') \
             FROM generate_series(0, pg_relation_size('{table}') / current_setting('block_size')::int - 1) b, \
                  heap_page_items(get_raw_page('{table}', b::int)) i \
             WHERE format('(%s,%s)', b, i.lp)::tid IN (SELECT ctid FROM {table})"
        ),
    )
}

/// Encryption turned on for json and date-like fields that hold values: no statement rewrites
/// the table (its file stays the same), the fields stay plain fields while their values are
/// sealed beside them (plain SQL writes too, whatever is written to the hidden column), the
/// swap to the sealed column is a short catalog change that builds nothing (and waits for
/// readers as any definition change does), and the old plaintext is
/// cleared from the rows before its column goes.
#[test]
fn encryption_turned_on_for_json_and_dates_never_rewrites_the_table() {
    let mut adm = admin();
    let mut m = member(&mut adm, "ents");
    let t = m.tenant.clone();
    let citus = on_citus(&mut adm);
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('visit', '{"fields": [
            {"name": "name", "type": "text", "required": true},
            {"name": "doc", "type": "json", "required": true},
            {"name": "day", "type": "date", "unique": true, "min": "2000-01-01"},
            {"name": "at", "type": "datetime", "index": true},
            {"name": "took", "type": "duration"},
            {"name": "back", "type": "time"},
            {"name": "late", "type": "datetime"}]}')"#,
    );
    m.client
        .batch_execute(&format!(
            "SET DateStyle = 'SQL, DMY'; \
             INSERT INTO \"{t}\".visit (name, doc, day, at, took) \
             SELECT 'v' || i, jsonb_build_object('i', i, 'tag', 'marker-' || (4700 + i)), \
                    date '2024-01-01' + i, timestamptz '2024-03-01 12:00:00+00' + i * interval '1 hour', \
                    i * interval '1 minute' \
             FROM generate_series(1, 130) i; RESET DateStyle"
        ))
        .unwrap();
    let table = format!("\"{t}\".visit");
    let filenode = |adm: &mut Client| -> i64 {
        scalar(
            adm,
            &format!("SELECT pg_relation_filenode('{table}')::bigint"),
        )
    };
    let file = filenode(&mut adm);
    // a field that an index over fields uses cannot be staged (the swap renames its column)
    json(
        &mut m.client,
        "SELECT udm_add_index('visit', ARRAY['name', 'took'])",
    );
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('visit', 'took', '{"encrypted": true}')"#,
        "0A000",
    );
    assert!(msg.contains("index"), "{msg}");

    for f in ["doc", "day", "at"] {
        json(
            &mut m.client,
            &format!("SELECT udm_alter_field('visit', '{f}', '{{\"encrypted\": true}}')"),
        );
    }
    let states = field_states(&mut adm, &mut m, "visit");
    assert_eq!(states["doc"], json!([null, null, "jsonb"]), "{states}");
    assert_eq!(states["day"], json!([null, null, "date"]), "{states}");
    let d = json(&mut m.client, "SELECT udm_describe('visit')");
    let stage = |d: &Value, f: &str| {
        d["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == f)
            .unwrap()["encryption_stage"]
            .clone()
    };
    assert_eq!(stage(&d, "day"), "sealing", "{d}");
    // still plain fields: ranges and sorting work, the rules hold on the column
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('visit', '{"columns": ["name"], "filters": {"day": {"gte": "2024-04-09"}}, "sort": ["-day"]}')"#,
    );
    assert_eq!(page["rows"][0]["name"], "v130", "{page}");
    expect_err(
        &mut m.client,
        &format!("UPDATE {table} SET day = '1999-01-01' WHERE name = 'v1'"),
        "23514",
    );
    // while staged: no other change, no removal, no rule or index over fields with it
    for (sql, code) in [
        (
            r#"SELECT udm_alter_field('visit', 'day', '{"label": "Day"}')"#,
            "55000",
        ),
        ("SELECT udm_remove_field('visit', 'doc')", "55000"),
        (
            "SELECT udm_add_index('visit', ARRAY['name', 'day'])",
            "0A000",
        ),
        (
            r#"SELECT udm_add_rule('visit', '{"name": "late", "check": "day > ''2024-01-01''"}')"#,
            "0A000",
        ),
    ] {
        let msg = expect_err(&mut m.client, sql, code);
        assert!(msg.contains("day") || msg.contains("doc"), "{sql}: {msg}");
    }
    // nor a rule of another entity reading it through a relation
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('stop', '{"fields": [
            {"name": "visit_id", "type": "relation", "target": "visit"},
            {"name": "seen_on", "type": "date"}]}')"#,
    );
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_add_rule('stop', '{"name": "after_day", "check": "seen_on >= visit_id.day"}')"#,
        "0A000",
    );
    assert!(
        msg.contains("field \"day\" of entity \"visit\" is encrypted"),
        "{msg}"
    );
    // plain SQL writes are sealed beside the column; what is written to the hidden column is
    // never taken
    m.client
        .batch_execute(&format!(
            "INSERT INTO {table} (name, doc, day, _udm_f3_sealed) VALUES ('w1', '{{\"w\": 1}}', '2025-05-05', 'forged'); \
             UPDATE {table} SET _udm_f2_sealed = 'forged too' WHERE name = 'w1'"
        ))
        .unwrap();
    let hidden: Value = scalar(
        &mut adm,
        &format!("SELECT jsonb_build_array(_udm_f2_sealed, _udm_f3_sealed, _udm_f4_sealed) FROM {table} WHERE name = 'w1'"),
    );
    assert!(hidden[0].as_str().unwrap().starts_with("udm1:"), "{hidden}");
    assert!(hidden[1].as_str().unwrap().starts_with("udm1:"), "{hidden}");
    assert_eq!(hidden[2], Value::Null, "{hidden}");
    // a row written past the trigger without its sealed form is refused by the field's check,
    // not yet validated for the rows written before
    let checks = |adm: &mut Client| -> Value {
        scalar(
            adm,
            &format!(
                "SELECT coalesce(jsonb_object_agg(conname, convalidated), '{{}}') FROM pg_constraint \
                 WHERE conrelid = '{table}'::regclass AND conname LIKE '%sealed_check'"
            ),
        )
    };
    assert_eq!(
        checks(&mut adm),
        json!({"visit__doc__sealed_check": false, "visit__day__sealed_check": false,
               "visit__at__sealed_check": false})
    );
    if !citus {
        // (on Citus the session's setting does not reach the worker, whose trigger seals)
        let msg = expect_err(
            &mut adm,
            &format!(
                "SET session_replication_role = replica; \
                 INSERT INTO {table} (id, name, doc) VALUES (gen_random_uuid(), 'past', '{{}}')"
            ),
            "23514",
        );
        assert!(msg.contains("visit__doc__sealed_check"), "{msg}");
        adm.batch_execute("RESET session_replication_role").unwrap();
    }
    // the blind indexes are built on the hidden column
    let indexes = |adm: &mut Client| index_defs(adm, &t, "visit");
    let defs = indexes(&mut adm);
    assert!(
        defs.contains("CREATE UNIQUE INDEX visit__day__sealed_key ON")
            && defs.contains("(split_part(_udm_f3_sealed, ':'::text, 3))")
            && defs.contains("visit__at__sealed_idx ON")
            && defs.contains("USING hash (split_part(_udm_f4_sealed, ':'::text, 3))"),
        "{defs}"
    );

    // a clone made now has the hidden columns, empty: its own udm_reencrypt seals them
    adm.batch_execute(&format!("SELECT udm_clone_tenant('{t}', '{t}c', true)"))
        .unwrap();
    grant_tenant(&mut adm, &format!("{t}c"), &m.role);

    // sealed in batches while another session writes; the records read right all along
    let (stop, writer) = writer_session(&m.role, &t, 2, (), |w, tenant, round, _| {
        for i in (1 + round % 4..=120).step_by(4) {
            w.execute(
                &format!(
                    "UPDATE \"{tenant}\".visit SET doc = jsonb_build_object('i', {i}, 'tag', 'marker-' || (4700 + {i}), 'round', {round}) WHERE name = 'v{i}'"
                ),
                &[],
            )
            .unwrap();
        }
    });
    let mut swapped = Vec::new();
    let mut progress = Vec::new();
    let began = std::time::Instant::now();
    while swapped.is_empty() {
        let r = json(&mut m.client, "SELECT udm_reencrypt('visit', 25)");
        progress.push(r["remaining"].as_i64().unwrap());
        for f in r["swapped"].as_array().unwrap() {
            swapped.push(f.as_str().unwrap().to_string());
        }
        if progress.len() >= 2 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if progress.len() == 2 {
            let page = json(
                &mut m.client,
                r#"SELECT udm_query('visit', '{"columns": ["name", "doc", "day"], "filters": {"name": "v7"}}')"#,
            );
            assert_eq!(page["rows"][0]["day"], "2024-01-08", "{page}");
            assert_eq!(page["rows"][0]["doc"]["tag"], "marker-4707", "{page}");
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(120),
            "{progress:?}"
        );
    }
    let ((), rounds) = writer.join().unwrap();
    swapped.sort();
    assert_eq!(swapped, ["at", "day", "doc"], "{progress:?}");
    // swapped: encrypted fields now, every value sealed in the column, the old plaintext beside
    // it until cleared; the blind indexes were renamed, not built again
    let states = field_states(&mut adm, &mut m, "visit");
    assert_eq!(states["doc"], json!([true, null, "text"]), "{states}");
    assert_eq!(states["day"], json!([true, null, "text"]), "{states}");
    let d = json(&mut m.client, "SELECT udm_describe('visit')");
    assert_eq!(stage(&d, "doc"), "scrubbing", "{d}");
    let unsealed: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM {table} WHERE NOT (starts_with(doc, 'udm1:') AND starts_with(day, 'udm1:')) \
             OR (at IS NOT NULL AND NOT starts_with(at, 'udm1:'))"
        ),
    );
    assert_eq!(unsealed, 0);
    let defs = indexes(&mut adm);
    assert!(
        defs.contains("CREATE UNIQUE INDEX visit__day__key ON")
            && defs.contains("(split_part(day, ':'::text, 3))")
            && defs.contains("visit__at__idx ON")
            && defs.contains("USING hash (split_part(at, ':'::text, 3))")
            && !defs.contains("sealed"),
        "{defs}"
    );
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('visit', '{"columns": ["name", "doc"], "filters": {"day": "2024-01-08"}}')"#,
    );
    assert_eq!(page["rows"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["rows"][0]["doc"]["i"], 7, "{page}");
    expect_err(
        &mut m.client,
        r#"SELECT udm_query('visit', '{"filters": {"day": {"gte": "2024-04-09"}}}')"#,
        "0A000",
    );
    expect_err(
        &mut m.client,
        r#"SELECT udm_insert('visit', '{"name": "dup", "doc": {}, "day": "2024-01-08"}')"#,
        "23505",
    );
    // the required field's check was validated before the swap (so SET NOT NULL scanned
    // nothing under its lock) and stays until the change completes; the others' went
    assert_eq!(checks(&mut adm), json!({"visit__doc__sealed_check": true}));
    // whatever is written to the old column is cleared: no writer keeps the change from ending
    m.client
        .batch_execute(&format!(
            "UPDATE {table} SET _udm_f2_plain = '{{\"x\": 1}}' WHERE name = 'v1'"
        ))
        .unwrap();
    let kept: bool = scalar(
        &mut adm,
        &format!("SELECT _udm_f2_plain IS NOT NULL FROM {table} WHERE name = 'v1'"),
    );
    assert!(!kept);
    // the old plaintext is still in the rows (the check below can fail), of a record the
    // writer left alone
    if !citus {
        assert!(live_tuple_bytes(&mut adm, &table).contains(&hex("marker-4825")));
    }
    // turning encryption off must wait for the old plaintext to be cleared
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('visit', 'doc', '{"encrypted": false}')"#,
        "55000",
    );
    assert!(msg.contains("scrubbing"), "{msg}");

    // cleared, then the old column goes: still the same file, and no byte of the plaintext left
    // in the rows
    let (_, completed) = convert_all(&mut m.client, "visit", 40);
    let mut completed = completed;
    completed.sort();
    assert_eq!(completed, ["at", "day", "doc"]);
    let states = field_states(&mut adm, &mut m, "visit");
    for f in ["doc", "day", "at"] {
        assert_eq!(states[f], json!([true, null, "text"]), "{states}");
    }
    let hidden: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass \
             AND attname LIKE '\\_udm\\_%' AND NOT attisdropped"
        ),
    );
    assert_eq!(hidden, 0);
    assert_eq!(checks(&mut adm), json!({}));
    if !citus {
        assert_eq!(filenode(&mut adm), file, "the table was never rewritten");
        let bytes = live_tuple_bytes(&mut adm, &table);
        for v in ["marker-4711", "marker-4825"] {
            assert!(!bytes.contains(&hex(v)), "{v} left in a row");
        }
    }
    // each record reads as last written (the writer's rounds included), and its history opens
    // the versions before and after the swap
    let rows = json(
        &mut m.client,
        r#"SELECT udm_query('visit', '{"columns": ["id", "name", "doc", "day", "at"], "filters": {"name": {"starts_with": "v"}}, "limit": 500}')"#,
    )["rows"]
        .clone();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 130);
    for r in rows {
        let i: i64 = r["name"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["doc"]["i"], i, "{r}");
        assert_eq!(r["doc"]["tag"], format!("marker-{}", 4700 + i), "{r}");
        let day: String = scalar(&mut adm, &format!("SELECT (date '2024-01-01' + {i})::text"));
        assert_eq!(r["day"], day, "{r}");
    }
    assert!(rounds >= 2);
    let v9 = rows.iter().find(|r| r["name"] == "v9").unwrap();
    let id = v9["id"].as_str().unwrap().to_string();
    let versions = versions(&mut m.client, "visit", &id);
    assert!(
        versions.len() >= 3,
        "inserted, sealed, cleared: {versions:?}"
    );
    for v in &versions {
        assert_eq!(v["day"], "2024-01-10", "{versions:?}");
    }
    // a rollback to the first version writes its plaintext, sealed
    json(
        &mut m.client,
        &format!("SELECT udm_rollback('visit', {}, 1)", lit(&id)),
    );
    let g = json(
        &mut m.client,
        &format!("SELECT udm_get('visit', {})", lit(&id)),
    );
    assert_eq!(g["doc"], json!({"i": 9, "tag": "marker-4709"}), "{g}");
    let stored: String = scalar(
        &mut adm,
        &format!("SELECT doc FROM {table} WHERE id = {}", lit(&id)),
    );
    assert!(stored.starts_with("udm1:"), "{stored}");

    // the clone, made while sealing: its table has the hidden columns, empty, and its records
    // read as the original's did then
    let mut c = connect_as(&m.role);
    c.query_one("SELECT udm_use($1)", &[&format!("{t}c")])
        .unwrap();
    let g = json(
        &mut c,
        r#"SELECT udm_query('visit', '{"columns": ["doc", "day"], "filters": {"name": "v5"}}')"#,
    );
    assert_eq!(g["rows"][0]["day"], "2024-01-06", "{g}");
    assert_eq!(g["rows"][0]["doc"]["i"], 5, "{g}");
    let empty: i64 = scalar(
        &mut adm,
        &format!(
            "SELECT count(*) FROM \"{t}c\".visit WHERE _udm_f2_sealed IS NULL AND _udm_f3_sealed IS NULL"
        ),
    );
    assert_eq!(empty, 131);

    // turned off while sealing: the hidden column goes, the field is as it was
    let hidden_columns = |adm: &mut Client| -> Vec<String> {
        column(
            adm,
            &format!(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = '{table}'::regclass \
                 AND attname LIKE '\\_udm\\_%' AND NOT attisdropped ORDER BY 1"
            ),
        )
    };
    // a rule of another entity reading the field keeps it from being staged (its swap could
    // never happen)
    json(
        &mut m.client,
        r#"SELECT udm_add_rule('stop', '{"name": "not_midnight", "check": "visit_id.back <> ''00:00''"}')"#,
    );
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_alter_field('visit', 'back', '{"encrypted": true}')"#,
        "2BP01",
    );
    assert!(
        msg.contains("not_midnight") || msg.contains("rule of stop"),
        "{msg}"
    );
    assert!(hidden_columns(&mut adm).is_empty());
    json(
        &mut m.client,
        "SELECT udm_drop_rule('stop', 'not_midnight')",
    );
    json(
        &mut m.client,
        r#"SELECT udm_alter_field('visit', 'back', '{"encrypted": true}')"#,
    );
    assert_eq!(hidden_columns(&mut adm), ["_udm_f6_sealed"]);
    // the trigger trusts no table: with the hidden column gone (by hand), a write is refused
    adm.batch_execute(&format!(
        "ALTER TABLE {table} RENAME COLUMN _udm_f6_sealed TO moved"
    ))
    .unwrap();
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE {table} SET back = '10:00' WHERE name = 'v1'"),
        "42703",
    );
    assert!(msg.contains("no column \"_udm_f6_sealed\""), "{msg}");
    adm.batch_execute(&format!(
        "ALTER TABLE {table} RENAME COLUMN moved TO _udm_f6_sealed"
    ))
    .unwrap();
    json(
        &mut m.client,
        r#"SELECT udm_alter_field('visit', 'back', '{"encrypted": false}')"#,
    );
    assert!(hidden_columns(&mut adm).is_empty());
    let states = field_states(&mut adm, &mut m, "visit");
    assert_eq!(
        states["back"],
        json!([null, null, "time without time zone"]),
        "{states}"
    );
    let d = json(&mut m.client, "SELECT udm_describe('visit')");
    assert_eq!(stage(&d, "back"), Value::Null, "{d}");

    // the swap waits for readers as any definition change does: a transaction that read the
    // table keeps it off (a call that sealed records does not wait; the next one gives up after
    // udm.ddl_lock_timeout), and the call after it swaps
    m.client
        .batch_execute(&format!(
            "UPDATE {table} SET late = timestamptz '2024-05-05 10:00:00+00' WHERE name LIKE 'v1%'"
        ))
        .unwrap();
    json(
        &mut m.client,
        r#"SELECT udm_alter_field('visit', 'late', '{"encrypted": true}')"#,
    );
    let mut reader = connect_as(&m.role);
    reader
        .batch_execute(&format!(
            "SELECT udm_use('{t}'); BEGIN; SELECT count(*) FROM {table}"
        ))
        .unwrap();
    let r = json(&mut m.client, "SELECT udm_reencrypt('visit', 1000)");
    assert!(r["reencrypted"].as_i64().unwrap() > 0, "{r}");
    assert_eq!(
        (&r["remaining"], &r["swapped"]),
        (&json!(0), &json!([])),
        "{r}"
    );
    m.client
        .batch_execute("SET udm.ddl_lock_timeout = '200ms'")
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_reencrypt('visit', 1000)",
        "55P03",
    );
    assert!(msg.contains("is busy"), "{msg}");
    reader.batch_execute("COMMIT").unwrap();
    let r = json(&mut m.client, "SELECT udm_reencrypt('visit', 1000)");
    assert_eq!(r["swapped"], json!(["late"]), "{r}");
    m.client
        .batch_execute("RESET udm.ddl_lock_timeout")
        .unwrap();
    let (_, completed) = convert_all(&mut m.client, "visit", 1000);
    assert_eq!(completed, ["late"]);
    let page = json(
        &mut m.client,
        r#"SELECT udm_query('visit', '{"columns": ["late"], "filters": {"name": "v12"}}')"#,
    );
    assert!(
        page["rows"][0]["late"]
            .as_str()
            .unwrap()
            .starts_with("2024-05-05T10:00:00"),
        "{page}"
    );
    if !citus {
        assert_eq!(filenode(&mut adm), file, "the table was never rewritten");
    }
}

/// The data of each version of a record, oldest first (`udm_history`).
fn versions(c: &mut Client, entity: &str, id: &str) -> Vec<Value> {
    let h = json(
        c,
        &format!(
            "SELECT jsonb_agg(data ORDER BY version) FROM udm_history({}, {})",
            lit(entity),
            lit(id)
        ),
    );
    h.as_array().cloned().unwrap_or_default()
}

/// The definitions of a table's indexes, in one string (ordered by name).
fn index_defs(adm: &mut Client, schema: &str, table: &str) -> String {
    scalar(
        adm,
        &format!(
            "SELECT string_agg(indexdef, ' | ' ORDER BY indexname) FROM pg_indexes \
             WHERE schemaname = '{schema}' AND tablename = '{table}'"
        ),
    )
}

/// Lowercase hexadecimal of a text's bytes.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
