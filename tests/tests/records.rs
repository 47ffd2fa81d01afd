//! Records through udm functions: typed input with clear errors, relations and links, optimistic
//! concurrency, batches that are all-or-nothing and name the failing row.

use udm_tests::*;

fn shop(m: &mut Member) {
    for def in [
        r#"SELECT udm_define_entity('category', '{"fields": [{"name": "name", "type": "text", "required": true, "unique": true},
            {"name": "parent_id", "type": "relation", "target": "category"}]}')"#,
        r#"SELECT udm_define_entity('tag', '{"fields": [{"name": "name", "type": "text"}]}')"#,
        r#"SELECT udm_define_entity('product', '{"fields": [
            {"name": "name", "type": "text", "required": true, "max_length": 50},
            {"name": "code", "type": "text", "unique": true},
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
            {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
            {"name": "released", "type": "date"},
            {"name": "metadata", "type": "json"},
            {"name": "pin", "type": "password", "min_length": 4},
            {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
            {"name": "tags", "type": "relation", "target": "tag", "many": true}]}')"#,
    ] {
        json(&mut m.client, def);
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn insert_returns_the_stored_row_without_passwords() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rins");
    shop(&mut m);
    let cat = json(
        &mut m.client,
        "SELECT udm_insert('category', '{\"name\": \"Phones\"}')",
    );
    let p = json(
        &mut m.client,
        &format!(
            "SELECT udm_insert('product', '{{\"name\": \"X1\", \"price\": 9.99, \"released\": \"2026-03-01\", \"pin\": \"1234\", \"category_id\": \"{}\", \"metadata\": {{\"brand\": \"Acme\"}}}}')",
            id_of(&cat)
        ),
    );
    assert_eq!(p["name"], "X1");
    assert_eq!(p["price"], json!(9.99));
    assert_eq!(p["status"], "draft", "defaults apply");
    assert_eq!(p["_version"], 1);
    assert_eq!(p["created_by"], m.role);
    assert_eq!(p["metadata"]["brand"], "Acme");
    assert_eq!(p["tags"], json!([]));
    assert!(p.get("pin").is_none(), "passwords are never returned: {p}");
    let hash: String = scalar(
        &mut adm,
        &format!("SELECT pin FROM \"{}\".product", m.tenant),
    );
    assert!(bcrypt::verify("1234", &hash).unwrap());
    let got = json(
        &mut m.client,
        &format!("SELECT udm_get('product', '{}')", id_of(&p)),
    );
    assert_eq!(got, p);
    let missing: Option<Value> = scalar(
        &mut m.client,
        "SELECT udm_get('product', gen_random_uuid())",
    );
    assert_eq!(missing, None);
    let sel = json(
        &mut m.client,
        &format!(
            "SELECT udm_get('product', '{}', ARRAY['name', 'category_id.name', 'metadata.brand'])",
            id_of(&p)
        ),
    );
    assert_eq!(
        sel,
        json!({"name": "X1", "category_id.name": "Phones", "metadata.brand": "Acme"})
    );
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_get('product', '{}', ARRAY['pin'])", id_of(&p)),
        "42501",
    );
    assert!(msg.contains("is a password and cannot be read"), "{msg}");
}

#[test]
fn input_is_checked_with_entity_field_and_type_named() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rbad");
    shop(&mut m);
    for (data, code, want) in [
        (
            r#"{"name": "a", "price": "abc"}"#,
            "22P02",
            "product.price: expected a number, got \"abc\"",
        ),
        (
            r#"{"name": "a", "released": "2026-02-30"}"#,
            "22P02",
            "product.released: expected a date (YYYY-MM-DD)",
        ),
        (
            r#"{"name": "a", "category_id": "not-a-uuid"}"#,
            "22P02",
            "product.category_id: expected a UUID",
        ),
        (
            r#"{"name": "a", "nope": 1}"#,
            "42703",
            "entity \"product\" has no field \"nope\"",
        ),
        (r#"{"name": "a", "_version": 7}"#, "22023", "system column"),
        (
            r#"{"name": "a", "price": -1}"#,
            "23514",
            "product.price must be at least 0",
        ),
        (
            r#"{"name": "a", "status": "gone"}"#,
            "23514",
            "product.status must be one of",
        ),
        (r#"{"price": 1}"#, "23502", "product.name is required"),
        (
            r#"{"name": "a", "pin": "12"}"#,
            "23514",
            "product.pin must have at least 4 characters",
        ),
        (
            r#"{"name": "a", "category_id": "00000000-0000-0000-0000-000000000001"}"#,
            "23503",
            "product.category_id refers to a category that does not exist",
        ),
        (
            r#"{"name": "a", "tags": ["00000000-0000-0000-0000-000000000001"]}"#,
            "23503",
            "does not exist",
        ),
        (r#"[1, 2]"#, "22023", "must be a JSON object"),
    ] {
        let msg = expect_err(
            &mut m.client,
            &format!("SELECT udm_insert('product', {})", lit(data)),
            code,
        );
        assert!(msg.contains(want), "{data}: {msg}");
    }
    json(
        &mut m.client,
        "SELECT udm_insert('product', '{\"name\": \"a\", \"code\": \"C1\"}')",
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_insert('product', '{\"name\": \"b\", \"code\": \"C1\"}')",
        "23505",
    );
    assert!(msg.contains("product.code must be unique"), "{msg}");
    let msg = expect_err(&mut m.client, "SELECT udm_insert('nothing', '{}')", "42P01");
    assert!(msg.contains("entity \"nothing\" does not exist"), "{msg}");
    let n: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{}\".product", m.tenant),
    );
    assert_eq!(n, 1, "failed inserts left nothing");
}

#[test]
fn many_to_many_links_are_written_and_replaced() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rlink");
    shop(&mut m);
    let t1 = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"hot\"}')",
    ));
    let t2 = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"new\"}')",
    ));
    let p = json(&mut m.client, &format!("SELECT udm_insert('product', '{{\"name\": \"A\", \"tags\": [\"{t1}\", \"{t2}\", \"{t1}\"]}}')"));
    let mut tags: Vec<String> = p["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    let mut want = vec![t1.clone(), t2.clone()];
    want.sort();
    assert_eq!(tags, want);
    let u = json(
        &mut m.client,
        &format!(
            "SELECT udm_update('product', '{}', '{{\"tags\": [\"{t2}\"]}}')",
            id_of(&p)
        ),
    );
    assert_eq!(u["tags"], json!([t2]));
    assert_eq!(u["_version"], 2, "changing links is a new version");
    let names = json(
        &mut m.client,
        &format!(
            "SELECT udm_get('product', '{}', ARRAY['tags.name'])",
            id_of(&p)
        ),
    );
    assert_eq!(names["tags.name"], json!(["new"]));
}

#[test]
fn updates_use_optimistic_concurrency() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rupd");
    shop(&mut m);
    let p = json(
        &mut m.client,
        "SELECT udm_insert('product', '{\"name\": \"A\", \"price\": 1}')",
    );
    let id = id_of(&p);
    let u = json(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"price\": 2}}', 1)"),
    );
    assert_eq!(u["_version"], 2);
    assert_eq!(u["price"], json!(2.0));
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"price\": 3}}', 1)"),
        "40001",
    );
    assert!(
        msg.contains("you expected version 1, it is at version 2"),
        "{msg}"
    );
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"price\": -3}}')"),
        "23514",
    );
    assert!(msg.contains("product.price must be at least 0"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_update('product', gen_random_uuid(), '{\"price\": 3}')",
        "P0002",
    );
    assert!(msg.contains("does not exist"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_update('product', '{id}', '{{\"id\": \"{id}\"}}')"),
        "22023",
    );
    assert!(msg.contains("system column"), "{msg}");
    // concurrent writers with the same expected version: exactly one wins
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let (role, tenant, id) = (m.role.clone(), m.tenant.clone(), id.clone());
            std::thread::spawn(move || {
                let mut c = connect_as(&role);
                json(&mut c, &format!("SELECT udm_use({})", lit(&tenant)));
                c.batch_execute(&format!(
                    "SELECT udm_update('product', '{id}', '{{\"price\": {i}}}', 2)"
                ))
                .map_err(|e| sqlstate(&e))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|c| c == "40001"));
}

#[test]
fn a_replacement_leaves_nothing_older() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rrep");
    shop(&mut m);
    let tag = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"t\"}')",
    ));
    let p = json(
        &mut m.client,
        &format!(
            "SELECT udm_insert('product', '{{\"name\": \"A\", \"code\": \"a1\", \"price\": 1, \"pin\": \"1234\", \"metadata\": {{\"x\": 1}}, \"tags\": [\"{tag}\"]}}')"
        ),
    );
    let id = id_of(&p);
    // what udm_get answers, changed, is sent back: system columns in it are ignored
    let mut back = json(&mut m.client, &format!("SELECT udm_get('product', '{id}')"));
    let o = back.as_object_mut().unwrap();
    o.insert("price".into(), json!(5));
    o.remove("metadata");
    o.remove("tags");
    let r = json(
        &mut m.client,
        &format!(
            "SELECT udm_replace('product', '{id}', {}::jsonb, 1)",
            lit(&back.to_string())
        ),
    );
    assert_eq!(r["_version"], 2, "{r}");
    assert_eq!(r["price"], json!(5.0));
    assert_eq!(r["code"], "a1");
    assert!(r["metadata"].is_null() && r.get("pin").is_none(), "{r}");
    let links: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{}\".product__tags", m.tenant),
    );
    assert_eq!(links, 0, "links left out are removed too");
    // the password is kept (never read back, so never sent back)
    let pin: bool = scalar(
        &mut adm,
        &format!(
            "SELECT pin IS NOT NULL FROM \"{}\".product WHERE id = '{id}'",
            m.tenant
        ),
    );
    assert!(pin);
    // a required field left out is refused, naming it; nothing changes
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_replace('product', '{id}', '{{\"price\": 7}}')"),
        "23502",
    );
    assert!(msg.contains("product.name"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_replace('product', '{id}', '{{\"name\": \"B\"}}', 1)"),
        "40001",
    );
    assert!(
        msg.contains("you expected version 1, it is at version 2"),
        "{msg}"
    );
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_replace('product', '{id}', '[1]')"),
        "22023",
    );
    assert!(
        msg.contains("fields for product must be a JSON object"),
        "{msg}"
    );
    expect_err(
        &mut m.client,
        &format!("SELECT udm_replace('product', '{id}', '{{\"name\": \"B\", \"nope\": 1}}')"),
        "42703",
    );
    let now = json(&mut m.client, &format!("SELECT udm_get('product', '{id}')"));
    assert_eq!(now["_version"], 2, "refusals change nothing: {now}");
}

#[test]
fn delete_and_restrict() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rdel");
    shop(&mut m);
    let c = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('category', '{\"name\": \"C\"}')",
    ));
    let p = id_of(&json(
        &mut m.client,
        &format!("SELECT udm_insert('product', '{{\"name\": \"A\", \"category_id\": \"{c}\"}}')"),
    ));
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_delete('category', '{c}')"),
        "23503",
    );
    assert!(
        msg.contains("this category record is still referenced by product"),
        "{msg}"
    );
    let d = json(
        &mut m.client,
        &format!("SELECT udm_delete('product', '{p}')"),
    );
    assert_eq!(d["deleted"], p);
    expect_err(
        &mut m.client,
        &format!("SELECT udm_delete('product', '{p}')"),
        "P0002",
    );
    json(
        &mut m.client,
        &format!("SELECT udm_delete('category', '{c}')"),
    );
}

#[test]
fn batches_are_all_or_nothing_and_name_the_row() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rbatch");
    shop(&mut m);
    let t = m.tenant.clone();
    let rows: Vec<Value> = (0..500)
        .map(|i| json!({"name": format!("p{i}"), "code": format!("c{i}"), "price": i}))
        .collect();
    let out = json(
        &mut m.client,
        &format!(
            "SELECT udm_insert_many('product', {})",
            lit(&Value::Array(rows).to_string())
        ),
    );
    assert_eq!(out["inserted"], 500);
    let s: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\".product WHERE status = 'draft'"),
    );
    assert_eq!(s, 500, "a key missing from every row takes the default");
    // a type error is found before anything runs
    let bad = json!([{"name": "x1"}, {"name": "x2", "price": "cheap"}]).to_string();
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_insert_many('product', {})", lit(&bad)),
        "22P02",
    );
    assert!(
        msg.starts_with("rows[1]: product.price: expected a number"),
        "{msg}"
    );
    // a rule broken deep in the batch: nothing is inserted, the row is named
    let mut rows: Vec<Value> = (0..300)
        .map(|i| json!({"name": format!("q{i}"), "price": 1}))
        .collect();
    rows[217] = json!({"name": "q217", "price": -1});
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_insert_many('product', {})",
            lit(&Value::Array(rows).to_string())
        ),
        "23514",
    );
    assert!(
        msg.starts_with("rows[217]: product.price must be at least 0"),
        "{msg}"
    );
    // a unique value taken by an earlier row of the same batch
    let mut rows: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("u{i}"), "code": format!("u{i}")}))
        .collect();
    rows[33]["code"] = json!("u5");
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_insert_many('product', {})",
            lit(&Value::Array(rows).to_string())
        ),
        "23505",
    );
    assert!(
        msg.starts_with("rows[33]: product.code must be unique"),
        "{msg}"
    );
    let n: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\".product"),
    );
    assert_eq!(n, 500, "failed batches inserted nothing");
    // upsert by a unique key
    let up =
        json!([{"code": "c1", "name": "renamed", "price": 7}, {"code": "new1", "name": "fresh"}])
            .to_string();
    let out = json(
        &mut m.client,
        &format!(
            "SELECT udm_upsert_many('product', {}, ARRAY['code'])",
            lit(&up)
        ),
    );
    assert_eq!(
        (out["inserted"].clone(), out["updated"].clone()),
        (json!(1), json!(1))
    );
    let name: String = scalar(
        &mut m.client,
        &format!("SELECT name FROM \"{t}\".product WHERE code = 'c1'"),
    );
    assert_eq!(name, "renamed");
    let v: i32 = scalar(
        &mut m.client,
        &format!("SELECT _version FROM \"{t}\".product WHERE code = 'c1'"),
    );
    assert_eq!(v, 2);
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_upsert_many('product', {}, ARRAY['name'])",
            lit(&up)
        ),
        "22023",
    );
    assert!(msg.contains("is not unique"), "{msg}");
    let dup = json!([{"code": "z", "name": "a"}, {"code": "z", "name": "b"}]).to_string();
    let msg = expect_err(
        &mut m.client,
        &format!(
            "SELECT udm_upsert_many('product', {}, ARRAY['code'])",
            lit(&dup)
        ),
        "23505",
    );
    assert!(
        msg.contains("rows[0] and rows[1] have the same key"),
        "{msg}"
    );
    // links in a batch
    let tag = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"t\"}')",
    ));
    let linked = json!([{"name": "l1", "tags": [tag]}, {"name": "l2"}]).to_string();
    json(
        &mut m.client,
        &format!("SELECT udm_insert_many('product', {})", lit(&linked)),
    );
    let links: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\".product__tags"),
    );
    assert_eq!(links, 1);
}

#[test]
fn point_reads_equal_the_stored_row_for_every_type() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rfast");
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('target', '{"fields": [{"name": "name", "type": "text"}]}')"#,
    );
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('all_types', '{"fields": [
            {"name": "t", "type": "text"}, {"name": "i", "type": "integer"}, {"name": "b", "type": "bigint"},
            {"name": "d", "type": "decimal", "precision": 10, "scale": 3}, {"name": "f", "type": "float"},
            {"name": "ok", "type": "boolean"}, {"name": "day", "type": "date"}, {"name": "at", "type": "datetime"},
            {"name": "tm", "type": "time"}, {"name": "dur", "type": "duration"}, {"name": "u", "type": "uuid"},
            {"name": "j", "type": "json"}, {"name": "s", "type": "select", "values": ["x", "y"]},
            {"name": "ms", "type": "multi_select", "values": ["x", "y"]}, {"name": "tg", "type": "tags"},
            {"name": "money", "type": "currency"}, {"name": "r", "type": "rating"}, {"name": "c", "type": "color"},
            {"name": "n", "type": "auto_number"}, {"name": "fl", "type": "file"}, {"name": "ints", "type": "integer[]"},
            {"name": "rel", "type": "relation", "target": "target"},
            {"name": "ref", "type": "reference", "targets": ["target"]}]}')"#,
    );
    let target = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('target', '{\"name\": \"T\"}')",
    ));
    let data = json!({
        "t": "tëxt \"quoted\"", "i": -5, "b": 9007199254740993i64, "d": 1.5, "f": 0.25, "ok": true, "day": "2026-02-28",
        "at": "2026-02-28T12:34:56.789Z", "tm": "08:30:00", "dur": "1 day 02:00:00", "u": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
        "j": {"a": [1, {"b": null}]}, "s": "x", "ms": ["x", "y"], "tg": ["a", "b"], "money": 12.34, "r": 4, "c": "#AbCdEf",
        "fl": {"name": "x.pdf", "size": 10}, "ints": [1, 2, 3], "rel": target, "ref": {"entity": "target", "id": target}});
    let stored = json(
        &mut m.client,
        &format!("SELECT udm_insert('all_types', {})", lit(&data.to_string())),
    );
    let got = json(
        &mut m.client,
        &format!("SELECT udm_get('all_types', '{}')", id_of(&stored)),
    );
    assert_eq!(got, stored, "the fast read equals the stored row");
    assert_eq!(got["ref"], json!({"entity": "target", "id": target}));
    let partial = json(
        &mut m.client,
        &format!(
            "SELECT udm_get('all_types', '{}', ARRAY['t', 'rel', 'at'])",
            id_of(&stored)
        ),
    );
    assert_eq!(partial["at"], stored["at"]);
    // inside a transaction the read sees the transaction's own writes
    let mut tx = m.client.transaction().unwrap();
    tx.execute(
        &format!("UPDATE \"{}\".all_types SET t = 'changed'", m.tenant),
        &[],
    )
    .unwrap();
    let seen: Value = tx
        .query_one(
            &format!("SELECT udm_get('all_types', '{}')", id_of(&stored)),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(seen["t"], "changed");
    tx.rollback().unwrap();
    // without table-wide SELECT (a password column) the SQL path answers, and hides the password
    json(
        &mut m.client,
        r#"SELECT udm_add_field('target', '{"name": "pw", "type": "password"}')"#,
    );
    let t = json(
        &mut m.client,
        &format!("SELECT udm_get('target', '{target}')"),
    );
    assert_eq!(t["name"], "T");
    assert!(t.get("pw").is_none());
}

#[test]
fn new_ids_are_version_7_and_increase_in_the_order_records_are_made() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rids");
    shop(&mut m);
    let t = m.tenant.clone();
    let one = id_of(&json(
        &mut m.client,
        "SELECT udm_insert('tag', '{\"name\": \"a\"}')",
    ));
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".tag (name) SELECT 'plain ' || i FROM generate_series(1, 500) i"
        ))
        .unwrap();
    json(
        &mut m.client,
        "SELECT udm_insert_many('tag', '[{\"name\": \"b1\"}, {\"name\": \"b2\"}, {\"name\": \"b3\"}]')",
    );
    // in the order they were made (the sequence of created rows is the ctid order of a fresh
    // table), the ids are strictly increasing, all version 7 with the RFC 9562 variant
    let ids: Vec<String> = m
        .client
        .query(
            &format!("SELECT id::text FROM \"{t}\".tag ORDER BY ctid"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 504);
    assert_eq!(ids[0], one);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
    for id in &ids {
        assert_eq!(&id[14..15], "7", "version of {id}");
        assert!("89ab".contains(&id[19..20]), "variant of {id}");
    }
    // the id tells the time it was made, to the millisecond
    let skew: f64 = scalar(
        &mut m.client,
        &format!(
            "SELECT abs(extract(epoch FROM created_at) * 1000 - ('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint)::float8 \
             FROM \"{t}\".tag WHERE id = '{one}'"
        ),
    );
    assert!(skew < 5000.0, "id time is {skew} ms off created_at");
    // an id given by the caller is kept
    let given = "00000000-0000-4000-8000-000000000001";
    let v = json(
        &mut m.client,
        &format!("SELECT udm_insert('tag', '{{\"id\": \"{given}\", \"name\": \"g\"}}')"),
    );
    assert_eq!(id_of(&v), given);
    // and through plain SQL too, where the row trigger sets the other system columns anyway
    let plain = "00000000-0000-4000-8000-000000000002";
    let (kept, by): (String, String) = {
        let r = m
            .client
            .query_one(
                &format!(
                    "INSERT INTO \"{t}\".tag (id, name, created_by) VALUES ('{plain}', 'p', 'forged') RETURNING id::text, created_by"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(kept, plain);
    assert_eq!(
        by, m.role,
        "created_by is the stamp trigger's, not the statement's"
    );
    // a batch keeps the ids it gives and makes the missing ones
    let batch = "00000000-0000-4000-8000-000000000003";
    json(
        &mut m.client,
        &format!("SELECT udm_insert_many('tag', '[{{\"id\": \"{batch}\", \"name\": \"c1\"}}, {{\"name\": \"c2\"}}]')"),
    );
    let c2: String = scalar(
        &mut m.client,
        &format!("SELECT id::text FROM \"{t}\".tag WHERE name = 'c2'"),
    );
    let c1: String = scalar(
        &mut m.client,
        &format!("SELECT id::text FROM \"{t}\".tag WHERE name = 'c1'"),
    );
    assert_eq!(c1, batch);
    assert_eq!(&c2[14..15], "7", "a missing id in a batch is made: {c2}");
}

/// JSON numbers reach the table, the filters and the results exactly as written: no rounding
/// through floating point (a decimal of 29 digits, a json fraction of 22), and the values
/// PostgreSQL has but JSON lacks (NaN) come back as the strings udm returns for them.
#[test]
fn numbers_are_written_and_read_without_rounding() {
    let mut adm = admin();
    let mut m = member(&mut adm, "rnum");
    json(
        &mut m.client,
        r#"SELECT udm_define_entity('measure', '{"fields": [{"name": "d", "type": "decimal"}, {"name": "j", "type": "json"}]}')"#,
    );
    let stored: String = scalar(
        &mut m.client,
        r#"SELECT (udm_insert('measure', '{"d": 12345678901234567890.000000001, "j": {"x": 0.1000000000000000000001}}') - 'id' - 'created_at' - 'updated_at' - 'created_by' - 'updated_by')::text"#,
    );
    assert_eq!(
        stored,
        r#"{"d": 12345678901234567890.000000001, "j": {"x": 0.1000000000000000000001}, "_version": 1}"#
    );
    let found: String = scalar(
        &mut m.client,
        r#"SELECT (udm_query('measure', '{"columns": ["d", "j.x"], "filters": {"d": 12345678901234567890.000000001, "j.x": {"gt": 0.1}}}') -> 'rows')::text"#,
    );
    assert_eq!(
        found,
        r#"[{"d": 12345678901234567890.000000001, "j.x": 0.1000000000000000000001}]"#
    );
    let none: String = scalar(
        &mut m.client,
        r#"SELECT (udm_query('measure', '{"filters": {"d": 12345678901234567890}}') -> 'rows')::text"#,
    );
    assert_eq!(none, "[]", "a filter on the rounded value matches nothing");
    let nan: String = scalar(
        &mut m.client,
        r#"SELECT udm_insert('measure', '{"d": "NaN"}') ->> 'd'"#,
    );
    assert_eq!(nan, "NaN");
    let msg = expect_err(
        &mut m.client,
        r#"SELECT udm_insert('measure', '{"d": "nan"}')"#,
        "22P02",
    );
    assert!(msg.contains("measure.d"), "{msg}");
}
