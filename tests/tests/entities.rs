//! Entities are real tables with real types; system columns are udm's; rules hold plain SQL.

use udm_tests::*;

const ALL_TYPES: &str = r#"{"fields": [
  {"name": "f_text", "type": "text"},
  {"name": "f_long", "type": "long_text"},
  {"name": "f_int", "type": "integer"},
  {"name": "f_big", "type": "bigint"},
  {"name": "f_dec", "type": "decimal", "precision": 10, "scale": 3},
  {"name": "f_float", "type": "float"},
  {"name": "f_bool", "type": "boolean"},
  {"name": "f_date", "type": "date"},
  {"name": "f_dt", "type": "datetime"},
  {"name": "f_time", "type": "time"},
  {"name": "f_dur", "type": "duration"},
  {"name": "f_uuid", "type": "uuid"},
  {"name": "f_json", "type": "json"},
  {"name": "f_email", "type": "email"},
  {"name": "f_url", "type": "url"},
  {"name": "f_phone", "type": "phone"},
  {"name": "f_select", "type": "select", "values": ["a", "b"]},
  {"name": "f_multi", "type": "multi_select", "values": ["x", "y", "z"]},
  {"name": "f_tags", "type": "tags"},
  {"name": "f_money", "type": "currency", "currency_code": "EUR"},
  {"name": "f_pct", "type": "percent"},
  {"name": "f_rating", "type": "rating"},
  {"name": "f_color", "type": "color"},
  {"name": "f_auto", "type": "auto_number"},
  {"name": "f_secret", "type": "password", "min_length": 8},
  {"name": "f_file", "type": "file"},
  {"name": "f_ints", "type": "integer[]"},
  {"name": "f_dates", "type": "array", "items": "date"}
]}"#;

#[test]
fn every_type_is_a_real_postgres_type() {
    let mut adm = admin();
    let mut m = member(&mut adm, "etypes");
    let d = json(
        &mut m.client,
        &format!("SELECT udm_define_entity('everything', {})", lit(ALL_TYPES)),
    );
    assert_eq!(d["fields"].as_array().unwrap().len(), 28);
    let rows = adm
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = format('%I.everything', $1::text)::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&m.tenant],
        )
        .unwrap();
    let cols: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want = [
        ("id", "uuid"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("created_by", "text"),
        ("updated_by", "text"),
        ("_version", "integer"),
        ("f_text", "text"),
        ("f_long", "text"),
        ("f_int", "integer"),
        ("f_big", "bigint"),
        ("f_dec", "numeric(10,3)"),
        ("f_float", "double precision"),
        ("f_bool", "boolean"),
        ("f_date", "date"),
        ("f_dt", "timestamp with time zone"),
        ("f_time", "time without time zone"),
        ("f_dur", "interval"),
        ("f_uuid", "uuid"),
        ("f_json", "jsonb"),
        ("f_email", "text"),
        ("f_url", "text"),
        ("f_phone", "text"),
        ("f_select", "text"),
        ("f_multi", "text[]"),
        ("f_tags", "text[]"),
        ("f_money", "numeric(19,2)"),
        ("f_pct", "numeric"),
        ("f_rating", "smallint"),
        ("f_color", "text"),
        ("f_auto", "bigint"),
        ("f_secret", "text"),
        ("f_file", "jsonb"),
        ("f_ints", "integer[]"),
        ("f_dates", "date[]"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(cols, want);
    let n: i64 = scalar(&mut m.client, "SELECT count(*) FROM udm_field_types()");
    assert!(n >= 24, "{n} field types");
}

#[test]
fn system_columns_are_managed_on_insert_and_update() {
    let mut adm = admin();
    let mut m = member(&mut adm, "esys");
    let t = m.tenant.clone();
    json(&mut m.client, "SELECT udm_define_entity('item', '{\"fields\": [{\"name\": \"n\", \"type\": \"integer\"}]}')");
    // forged system values are replaced
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".item (n, created_by, _version, created_at) VALUES (1, 'forger', 77, '2000-01-01')"
        ))
        .unwrap();
    let r = m.client.query_one(&format!("SELECT created_by, _version, created_at > now() - interval '1 hour' FROM \"{t}\".item"), &[]).unwrap();
    assert_eq!(r.get::<_, String>(0), m.role);
    assert_eq!(r.get::<_, i32>(1), 1);
    assert!(r.get::<_, bool>(2));
    for _ in 0..3 {
        m.client
            .batch_execute(&format!(
                "UPDATE \"{t}\".item SET n = n + 1, _version = 1, created_by = 'x'"
            ))
            .unwrap();
    }
    let r = m
        .client
        .query_one(
            &format!("SELECT _version, created_by, n FROM \"{t}\".item"),
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 4, "every update counts up");
    assert_eq!(r.get::<_, String>(1), m.role, "created_by keeps its value");
    assert_eq!(r.get::<_, i32>(2), 4);
    let msg = expect_err(
        &mut m.client,
        // (a constant: Citus refuses VOLATILE functions in an UPDATE of a distributed table)
        &format!("UPDATE \"{t}\".item SET id = '00000000-0000-4000-8000-0000000000ab'"),
        "0A000",
    );
    assert!(msg.contains("id of a item record cannot change"), "{msg}");
}

#[test]
fn rules_hold_plain_sql_and_name_entity_field_and_rule() {
    let mut adm = admin();
    let mut m = member(&mut adm, "erules");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        &format!("SELECT udm_define_entity('everything', {})", lit(ALL_TYPES)),
    );
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text", "required": true, "min_length": 2, "max_length": 10, "pattern": "^[A-Z]"},
            {"name": "code", "type": "text", "unique": true},
            {"name": "price", "type": "decimal", "min": 0, "max": 1000},
            {"name": "qty", "type": "integer", "min": 1},
            {"name": "launch", "type": "date", "min": "2020-01-01"},
            {"name": "sample_date", "type": "date"},
            {"name": "release_date", "type": "date"},
            {"name": "labels", "type": "tags", "max_items": 2},
            {"name": "nums", "type": "integer[]", "min_items": 1, "unique_items": true}],
          "rules": [{"name": "sample_before_release", "check": "sample_date <= release_date",
                     "message": "sample date must not be after release date"}]}')"#,
    );
    let cases: &[(&str, &str, &str)] = &[
        ("INSERT INTO {t}.product (name) VALUES ('A')", "23514", "product.name must have at least 2 characters"),
        ("INSERT INTO {t}.product (name) VALUES ('Abcdefghijk')", "23514", "product.name must have at most 10 characters"),
        ("INSERT INTO {t}.product (name) VALUES ('abc')", "23514", "product.name must match the pattern ^[A-Z]"),
        ("INSERT INTO {t}.product (name, price) VALUES ('Ab', -1)", "23514", "product.price must be at least 0"),
        ("INSERT INTO {t}.product (name, price) VALUES ('Ab', 1000.5)", "23514", "product.price must be at most 1000"),
        ("INSERT INTO {t}.product (name, qty) VALUES ('Ab', 0)", "23514", "product.qty must be at least 1"),
        ("INSERT INTO {t}.product (name, launch) VALUES ('Ab', '2019-12-31')", "23514", "product.launch must be on or after 2020-01-01"),
        (
            "INSERT INTO {t}.product (name, sample_date, release_date) VALUES ('Ab', '2025-02-01', '2025-01-01')",
            "23514",
            "sample date must not be after release date",
        ),
        ("INSERT INTO {t}.product (name, labels) VALUES ('Ab', '{a,b,c}')", "23514", "product.labels must have at most 2 items"),
        ("INSERT INTO {t}.product (name, labels) VALUES ('Ab', '{a,a}')", "23514", "must not contain the same value twice"),
        ("INSERT INTO {t}.product (name, nums) VALUES ('Ab', '{}')", "23514", "product.nums must have at least 1 items"),
        ("INSERT INTO {t}.product (price) VALUES (1)", "23502", "product.name is required"),
        ("INSERT INTO {t}.everything (f_email) VALUES ('not-an-email')", "23514", "everything.f_email must be a valid email address"),
        ("INSERT INTO {t}.everything (f_url) VALUES ('ftp://x')", "23514", "must be a valid http or https URL"),
        ("INSERT INTO {t}.everything (f_phone) VALUES ('call me')", "23514", "must be a valid phone number"),
        ("INSERT INTO {t}.everything (f_color) VALUES ('red')", "23514", "must be a color written as #RRGGBB"),
        ("INSERT INTO {t}.everything (f_select) VALUES ('c')", "23514", "everything.f_select must be one of \"a\", \"b\""),
        ("INSERT INTO {t}.everything (f_multi) VALUES ('{x,w}')", "23514", "may only contain \"x\", \"y\", \"z\""),
        ("INSERT INTO {t}.everything (f_rating) VALUES (6)", "23514", "must be a rating from 0 to 5"),
        ("INSERT INTO {t}.everything (f_tags) VALUES ('{ok,\"\"}')", "23514", "must not contain empty tags"),
        ("INSERT INTO {t}.everything (f_file) VALUES ('{\"size\": 3}')", "23514", "must be a file object with a \"name\""),
        ("INSERT INTO {t}.everything (f_secret) VALUES ('short')", "23514", "everything.f_secret must have at least 8 characters"),
        ("INSERT INTO {t}.everything (f_auto) VALUES (5)", "428C9", "cannot insert a non-DEFAULT value into column \"f_auto\""),
    ];
    for (sql, code, want) in cases {
        let sql = sql.replace("{t}", &format!("\"{t}\""));
        let msg = expect_err(&mut m.client, &sql, code);
        assert!(msg.contains(want), "{sql}: {msg}");
        if *code == "23514" && !want.contains("f_secret") {
            assert!(
                msg.contains("detail: entity \""),
                "detail names the entity: {msg}"
            );
            assert!(msg.contains("rule \""), "detail names the rule: {msg}");
        }
    }
    // good rows pass, the same through COPY-like multi-row inserts
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".product (name, code, price, qty, sample_date, release_date, labels, nums) VALUES \
             ('Ab', 'c1', 0, 1, '2025-01-01', '2025-01-01', '{{a,b}}', '{{1,2}}'), ('Bcd', 'c2', 999.99, 5, NULL, '2025-01-01', NULL, NULL)"
        ))
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        &format!("INSERT INTO \"{t}\".product (name, code) VALUES ('Cd', 'c1')"),
        "23505",
    );
    assert!(msg.contains("product__code__key"), "{msg}");
    // an update is held to the rules too
    let msg = expect_err(
        &mut m.client,
        &format!("UPDATE \"{t}\".product SET price = -5"),
        "23514",
    );
    assert!(msg.contains("product.price must be at least 0"), "{msg}");
}

#[test]
fn copy_is_held_to_the_rules() {
    let mut adm = admin();
    let mut m = member(&mut adm, "ecopy");
    let t = m.tenant.clone();
    json(&mut m.client, "SELECT udm_define_entity('reading', '{\"fields\": [{\"name\": \"v\", \"type\": \"integer\", \"max\": 10}]}')");
    let mut w = m
        .client
        .copy_in(&format!("COPY \"{t}\".reading (v) FROM STDIN"))
        .unwrap();
    use std::io::Write;
    w.write_all(b"1\n2\n").unwrap();
    w.finish().unwrap();
    let mut w = m
        .client
        .copy_in(&format!("COPY \"{t}\".reading (v) FROM STDIN"))
        .unwrap();
    w.write_all(b"3\n11\n").unwrap();
    let e = w.finish().unwrap_err();
    // (on Citus too: the worker's SQLSTATE comes back)
    assert_eq!(sqlstate(&e), "23514");
    assert!(
        message(&e).contains("reading.v must be at most 10"),
        "{}",
        message(&e)
    );
    let n: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\".reading"),
    );
    assert_eq!(n, 2);
}

#[test]
fn passwords_are_hashed_and_never_readable() {
    let mut adm = admin();
    let mut m = member(&mut adm, "epw");
    let t = m.tenant.clone();
    json(
        &mut m.client,
        "SELECT udm_define_entity('account', '{\"fields\": [{\"name\": \"login\", \"type\": \"text\"}, {\"name\": \"secret\", \"type\": \"password\", \"min_length\": 8}]}')",
    );
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".account (login, secret) VALUES ('ann', 'correct horse')"
        ))
        .unwrap();
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT * FROM \"{t}\".account"),
        "42501",
    );
    assert!(msg.contains("permission denied"), "{msg}");
    let login: String = scalar(&mut m.client, &format!("SELECT login FROM \"{t}\".account"));
    assert_eq!(login, "ann");
    let hash: String = scalar(&mut adm, &format!("SELECT secret FROM \"{t}\".account"));
    assert!(hash.starts_with("$2b$04$") && hash.len() == 60, "{hash}");
    assert!(
        bcrypt::verify("correct horse", &hash).unwrap(),
        "the hash is of the given password"
    );
    // an unchanged update keeps the hash; a new value is hashed again
    m.client
        .batch_execute(&format!("UPDATE \"{t}\".account SET login = 'anna'"))
        .unwrap();
    let same: String = scalar(&mut adm, &format!("SELECT secret FROM \"{t}\".account"));
    assert_eq!(same, hash);
    m.client
        .batch_execute(&format!(
            "UPDATE \"{t}\".account SET secret = 'battery staple'"
        ))
        .unwrap();
    let new: String = scalar(&mut adm, &format!("SELECT secret FROM \"{t}\".account"));
    assert_ne!(new, hash);
    assert!(new.starts_with("$2b$"));
}

#[test]
fn relations_foreign_keys_many_to_many_self_and_references() {
    let mut adm = admin();
    let mut m = member(&mut adm, "erel");
    let t = m.tenant.clone();
    for def in [
        r#"SELECT udm_define_entity('category', '{"fields": [{"name": "name", "type": "text"},
            {"name": "parent_id", "type": "relation", "target": "category", "on_delete": "cascade"}]}')"#,
        r#"SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}')"#,
        r#"SELECT udm_define_entity('product', '{"fields": [{"name": "name", "type": "text"},
            {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
            {"name": "tags", "type": "relation", "target": "tag", "many": true}]}')"#,
        r#"SELECT udm_define_entity('comment', '{"fields": [{"name": "body", "type": "text"},
            {"name": "subject", "type": "reference", "targets": ["product", "category"], "on_delete": "cascade"}]}')"#,
    ] {
        json(&mut m.client, def);
    }
    let q = |s: &str| s.replace("{t}", &format!("\"{t}\""));
    m.client
        .batch_execute(&q("INSERT INTO {t}.category (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'root');
             INSERT INTO {t}.category (id, name, parent_id) VALUES ('00000000-0000-0000-0000-000000000002', 'child', '00000000-0000-0000-0000-000000000001');
             INSERT INTO {t}.product (id, name, category_id) VALUES ('00000000-0000-0000-0000-0000000000a1', 'p', '00000000-0000-0000-0000-000000000002');
             INSERT INTO {t}.tag (id, name) VALUES ('00000000-0000-0000-0000-0000000000f1', 'hot');
             INSERT INTO {t}.product__tags (source_id, target_id) VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-0000000000f1');"))
        .unwrap();
    // foreign key and its automatic index
    let msg = expect_err(
        &mut m.client,
        &q("INSERT INTO {t}.product (name, category_id) VALUES ('x', gen_random_uuid())"),
        "23503",
    );
    assert!(msg.contains("product__category_id__fkey"), "{msg}");
    let idx: i64 = scalar(&mut adm, &format!("SELECT count(*) FROM pg_indexes WHERE schemaname = '{t}' AND indexname = 'product__category_id__idx'"));
    assert_eq!(idx, 1);
    // restrict: the child category is used by a product
    expect_err(
        &mut m.client,
        &q("DELETE FROM {t}.category WHERE name = 'child'"),
        "23503",
    );
    // polymorphic reference: must exist, and cascades on delete
    m.client
        .batch_execute(&q("INSERT INTO {t}.comment (body, subject) VALUES ('nice', ROW('product', '00000000-0000-0000-0000-0000000000a1')::udm.ref)"))
        .unwrap();
    let msg = expect_err(&mut m.client, &q("INSERT INTO {t}.comment (body, subject) VALUES ('x', ROW('product', gen_random_uuid())::udm.ref)"), "23503");
    assert!(msg.contains("comment.subject refers to product"), "{msg}");
    let msg = expect_err(&mut m.client, &q("INSERT INTO {t}.comment (body, subject) VALUES ('x', ROW('tag', '00000000-0000-0000-0000-0000000000f1')::udm.ref)"), "23514");
    assert!(
        msg.contains("must reference a record of \"product\", \"category\""),
        "{msg}"
    );
    // deleting the product removes its many-to-many links and (cascade) its comments
    m.client
        .batch_execute(&q("DELETE FROM {t}.product WHERE name = 'p'"))
        .unwrap();
    let left: i64 = scalar(
        &mut m.client,
        &q("SELECT (SELECT count(*) FROM {t}.product__tags) + (SELECT count(*) FROM {t}.comment)"),
    );
    assert_eq!(left, 0);
    // self relation cascade: deleting the root deletes the child
    m.client
        .batch_execute(&q("DELETE FROM {t}.category WHERE name = 'root'"))
        .unwrap();
    let left: i64 = scalar(&mut m.client, &q("SELECT count(*) FROM {t}.category"));
    assert_eq!(left, 0);
    // an entity others point to cannot be dropped
    let msg = expect_err(&mut m.client, "SELECT udm_drop_entity('tag')", "2BP01");
    assert!(msg.contains("product.tags"), "{msg}");
}

#[test]
fn definitions_are_refused_with_specific_errors() {
    let mut adm = admin();
    let mut m = member(&mut adm, "ebad");
    let cases: &[(&str, &str, &str)] = &[
        ("SELECT udm_define_entity('Bad', '{}')", "42602", "invalid entity name \"Bad\""),
        ("SELECT udm_define_entity('x', '[]')", "22023", "must be a JSON object"),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"strnig\"}]}')", "42704", "unknown field type \"strnig\""),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"text\"}, {\"name\": \"a\", \"type\": \"text\"}]}')", "42701", "twice"),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"id\", \"type\": \"text\"}]}')", "42602", "system column"),
        ("SELECT udm_define_entity('x', '{\"rules\": [{\"name\": \"r\", \"check\": \"nope > 1\"}]}')", "42703", "no field \"nope\""),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"text\"}], \"rules\": [{\"name\": \"r\", \"check\": \"a >\"}]}')", "42601", "unexpected end"),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"text\"}], \"rules\": [{\"name\": \"r\", \"check\": \"a > 1\"}]}')", "42804", "cannot compare text with number"),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"relation\", \"target\": \"ghost\"}]}')", "42P01", "target entity \"ghost\" does not exist"),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"date\", \"default\": \"not a date\"}]}')", "22007", "invalid input syntax for type date"),
        ("SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"text\", \"pattern\": \"(\"}]}')", "2201B", "invalid regular expression"),
    ];
    for (sql, code, want) in cases {
        let msg = expect_err(&mut m.client, sql, code);
        assert!(msg.contains(want), "{sql}: {msg}");
    }
    // nothing of the failed definitions was left behind
    let n: i64 = scalar(&mut m.client, "SELECT count(*) FROM udm_entities()");
    assert_eq!(n, 0);
    json(
        &mut m.client,
        "SELECT udm_define_entity('x', '{\"fields\": [{\"name\": \"a\", \"type\": \"text\"}]}')",
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_define_entity('x', '{}')",
        "42P07",
    );
    assert!(msg.contains("already exists"), "{msg}");
}
