//! The REST bridge (`/api`) of the real udm-server binary over HTTP against the test cluster:
//! every route's success path (status, Location, ETag, Link, body), If-Match and 412, batches
//! all or nothing, upsert, the list grammar over plain, relation and JSON paths with paging by
//! the Link header, problem+json for each refusal, the body limit, row-level security.

mod common;
use common::*;
use std::collections::HashMap;

/// A tenant the server's role serves, with alice (admin), bob and dan (editors), carol (viewer),
/// and mallory, a user who is no member. `category` (unique name, a self relation) and `product`
/// (unique sku, a rule, a JSON field, a select, dates, a relation to category, owned by its
/// creator: members other than admins see their own; write-locked per record).
struct Fixture {
    t: String,
    role: String,
    email: HashMap<&'static str, String>,
}

const CATEGORY: &str = r#"{"fields": [
    {"name": "name", "type": "text", "required": true, "unique": true},
    {"name": "parent_id", "type": "relation", "target": "category"}]}"#;
const PRODUCT: &str = r#"{"fields": [
    {"name": "name", "type": "text", "required": true},
    {"name": "sku", "type": "text", "unique": true},
    {"name": "price", "type": "decimal", "min": 0},
    {"name": "status", "type": "select", "values": ["draft", "active", "retired"]},
    {"name": "category_id", "type": "relation", "target": "category"},
    {"name": "metadata", "type": "json"},
    {"name": "start_date", "type": "date"},
    {"name": "end_date", "type": "date"},
    {"name": "owner_id", "type": "user", "on_delete": "cascade"}],
  "rules": [{"name": "cheap_names", "check": "price < 1000 or length(name) > 5",
             "message": "expensive things need long names"}],
  "access": {"scope": "self", "owner": "owner_id"},
  "lock": "self"}"#;

impl Fixture {
    fn new() -> Fixture {
        let mut adm = admin();
        let t = tenant(&mut adm, "rest");
        let mut email = HashMap::new();
        for n in ["alice", "bob", "carol", "dan", "mallory"] {
            let e = format!("{}@rest.test", unique(n));
            adm.query_one(
                "SELECT udm_create_user($1, $2, 'a-test-password')",
                &[&e, &n],
            )
            .unwrap();
            email.insert(n, e);
        }
        adm.execute("SELECT udm_use($1)", &[&t]).unwrap();
        adm.query_one(
            "SELECT udm_define_entity('category', $1::text::jsonb)",
            &[&CATEGORY],
        )
        .unwrap();
        adm.query_one(
            "SELECT udm_define_entity('product', $1::text::jsonb)",
            &[&PRODUCT],
        )
        .unwrap();
        adm.query_one(
            "SELECT udm_add_member($1, $2, 'admin')",
            &[&t, &email["alice"]],
        )
        .unwrap();
        adm.execute("SELECT udm_use($1, $2)", &[&t, &email["alice"]])
            .unwrap();
        for (u, r) in [("bob", "editor"), ("carol", "viewer"), ("dan", "editor")] {
            adm.query_one("SELECT udm_add_member($1, $2, $3)", &[&t, &email[u], &r])
                .unwrap();
        }
        adm.execute("RESET udm.tenant", &[]).unwrap();
        adm.execute("RESET udm.user_id", &[]).unwrap();
        let role = unique("udm_rest_");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_udm-server"))
            .args(["setup-role", &conn_string("postgres"), &role, &t])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setup-role: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture { t, role, email }
    }

    fn token(&self, user: &str) -> String {
        token(&self.t, &self.email[user])
    }

    fn server(&self, env: &[(&str, &str)]) -> Server {
        Server::start(&self.role, env)
    }
}

/// A request with a token and a JSON body (if any) and more headers.
fn call(
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Resp {
    let auth = format!("Bearer {token}");
    let mut h = vec![("Authorization", auth.as_str())];
    let text = body.map(|b| b.to_string());
    if text.is_some() {
        h.push(("Content-Type", "application/json"));
    }
    h.extend_from_slice(headers);
    s.request(method, path, &h, text.as_deref().map(str::as_bytes))
}

/// A success: its status and a JSON body (none for 204).
fn ok(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    if status == 204 {
        assert_eq!(r.body, "");
        return Value::Null;
    }
    assert_eq!(r.content_type(), "application/json", "{}", r.body);
    r.json()
}

/// A problem: its status, `application/problem+json`, the RFC 9457 members, nothing internal.
fn problem(r: &Resp, status: u16, path: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type(), "application/problem+json", "{}", r.body);
    let p = r.json();
    assert_eq!(p["status"], status, "{p}");
    assert_eq!(p["instance"], path, "{p}");
    assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
    match p["sqlstate"].as_str() {
        Some(s) => assert_eq!(p["type"], format!("https://udm.dev/problems/{s}")),
        None => assert_eq!(p["type"], "about:blank"),
    }
    for internal in [
        "SELECT ", "$1", "::jsonb", "tokio", "deadpool", "panicked", "SQL",
    ] {
        assert!(!r.body.contains(internal), "{internal} in {}", r.body);
    }
    p
}

fn insert(s: &Server, token: &str, entity: &str, rec: Value) -> Value {
    let r = call(
        s,
        token,
        "POST",
        &format!("/api/records/{entity}"),
        Some(&rec),
        &[],
    );
    ok(&r, 201)
}

#[test]
fn schema_routes_define_describe_change_and_drop() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let list = ok(&call(&s, &alice, "GET", "/api/schemas", None, &[]), 200);
    let slugs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["category", "product"]);
    // POST: 201 and Location
    let def =
        json!({"slug": "supplier", "definition": {"fields": [{"name": "name", "type": "text"}]}});
    let r = call(&s, &alice, "POST", "/api/schemas", Some(&def), &[]);
    let d = ok(&r, 201);
    assert_eq!(r.header("location"), Some("/api/schemas/supplier"));
    assert_eq!(
        (d["slug"].as_str(), d["version"].as_i64()),
        (Some("supplier"), Some(1))
    );
    let d = ok(
        &call(&s, &alice, "GET", "/api/schemas/supplier", None, &[]),
        200,
    );
    assert_eq!(d["fields"][0]["name"], "name");
    // PUT a new one: 200; again: it exists, 409
    let widget = json!({"fields": [{"name": "label", "type": "text"}]});
    let d = ok(
        &call(&s, &alice, "PUT", "/api/schemas/widget", Some(&widget), &[]),
        200,
    );
    assert_eq!(d["slug"], "widget");
    let p = problem(
        &call(&s, &alice, "PUT", "/api/schemas/widget", Some(&widget), &[]),
        409,
        "/api/schemas/widget",
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["entity"].as_str()),
        (Some("42P07"), Some("widget"))
    );
    assert!(p["hint"].is_string(), "{p}");
    // fields: add (201, Location), alter, remove (204), restore
    let phone = json!({"name": "phone", "type": "phone"});
    let r = call(
        &s,
        &alice,
        "POST",
        "/api/schemas/supplier/fields",
        Some(&phone),
        &[],
    );
    let d = ok(&r, 201);
    assert_eq!(
        r.header("location"),
        Some("/api/schemas/supplier/fields/phone")
    );
    assert_eq!(d["fields"][1]["name"], "phone");
    let d = ok(
        &call(
            &s,
            &alice,
            "PATCH",
            "/api/schemas/supplier/fields/phone",
            Some(&json!({"label": "Phone"})),
            &[],
        ),
        200,
    );
    assert_eq!(d["fields"][1]["label"], "Phone");
    ok(
        &call(
            &s,
            &alice,
            "DELETE",
            "/api/schemas/supplier/fields/phone",
            None,
            &[],
        ),
        204,
    );
    let d = ok(
        &call(&s, &alice, "GET", "/api/schemas/supplier", None, &[]),
        200,
    );
    assert_eq!(d["fields"].as_array().unwrap().len(), 1);
    assert_eq!(d["removed_fields"][0]["name"], "phone", "{d}");
    let d = ok(
        &call(
            &s,
            &alice,
            "POST",
            "/api/schemas/supplier/fields/phone/restore",
            None,
            &[],
        ),
        200,
    );
    assert_eq!(d["fields"][1]["name"], "phone");
    // drop: 204, and gone from the tenant's active entities
    ok(
        &call(&s, &alice, "DELETE", "/api/schemas/widget", None, &[]),
        204,
    );
    let list = ok(&call(&s, &alice, "GET", "/api/schemas", None, &[]), 200);
    let widget = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["slug"] == "widget")
        .unwrap();
    assert_eq!(widget["status"], "dropped");
    // a bad body names what it lacks; an editor may not define (403)
    let p = problem(
        &call(
            &s,
            &alice,
            "POST",
            "/api/schemas",
            Some(&json!({"definition": {}})),
            &[],
        ),
        400,
        "/api/schemas",
    );
    assert_eq!(p["field"], "slug");
    let p = problem(
        &call(
            &s,
            &f.token("bob"),
            "PUT",
            "/api/schemas/gadget",
            Some(&widget_def()),
            &[],
        ),
        403,
        "/api/schemas/gadget",
    );
    assert_eq!(p["sqlstate"], "42501");
    problem(
        &call(&s, &alice, "GET", "/api/schemas/nothing", None, &[]),
        404,
        "/api/schemas/nothing",
    );
}

fn widget_def() -> Value {
    json!({"fields": [{"name": "label", "type": "text"}]})
}

#[test]
fn records_with_location_etag_if_match_put_and_delete() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let cat = insert(&s, &alice, "category", json!({"name": "Phones"}));
    let r = call(
        &s,
        &alice,
        "POST",
        "/api/records/product",
        Some(
            &json!({"name": "Pixel", "sku": "p1", "price": 500, "category_id": cat["id"], "metadata": {"brand": "google"}}),
        ),
        &[],
    );
    let p = ok(&r, 201);
    let id = p["id"].as_str().unwrap().to_string();
    let loc = format!("/api/records/product/{id}");
    assert_eq!(r.header("location"), Some(loc.as_str()));
    assert_eq!(r.header("etag"), Some("\"1\""));
    // GET: the record and its ETag; select with a relation and a JSON path
    let r = call(&s, &alice, "GET", &loc, None, &[]);
    let got = ok(&r, 200);
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(
        (got["name"].as_str(), got["price"].as_i64()),
        (Some("Pixel"), Some(500))
    );
    let got = ok(
        &call(
            &s,
            &alice,
            "GET",
            &format!("{loc}?select=name,category_id.name,metadata.brand"),
            None,
            &[],
        ),
        200,
    );
    assert_eq!(got["category_id.name"], "Phones", "{got}");
    assert_eq!(got["metadata.brand"], "google", "{got}");
    // PATCH with a fresh If-Match: 200 and the new ETag
    let r = call(
        &s,
        &alice,
        "PATCH",
        &loc,
        Some(&json!({"price": 550})),
        &[("If-Match", "\"1\"")],
    );
    assert_eq!(ok(&r, 200)["price"], 550);
    assert_eq!(r.header("etag"), Some("\"2\""));
    // a stale one: 412, nothing changed
    let r = call(
        &s,
        &alice,
        "PATCH",
        &loc,
        Some(&json!({"price": 1})),
        &[("If-Match", "\"1\"")],
    );
    let pr = problem(&r, 412, &loc);
    assert_eq!(
        (pr["sqlstate"].as_str(), pr["entity"].as_str()),
        (Some("40001"), Some("product"))
    );
    assert!(pr["detail"].as_str().unwrap().contains("version 1"), "{pr}");
    let r = call(&s, &alice, "GET", &loc, None, &[]);
    assert_eq!(ok(&r, 200)["price"], 550);
    assert_eq!(r.header("etag"), Some("\"2\""));
    // a malformed If-Match is a 400
    let r = call(
        &s,
        &alice,
        "PATCH",
        &loc,
        Some(&json!({"price": 1})),
        &[("If-Match", "2")],
    );
    assert_eq!(problem(&r, 400, &loc)["field"], "If-Match");
    // PUT: what GET answered, changed, sent back; fields it leaves out become null
    let mut full = ok(&call(&s, &alice, "GET", &loc, None, &[]), 200);
    let o = full.as_object_mut().unwrap();
    o.insert("name".into(), json!("Pixel 2"));
    o.remove("price");
    o.remove("metadata");
    let r = call(
        &s,
        &alice,
        "PUT",
        &loc,
        Some(&full),
        &[("If-Match", "\"2\"")],
    );
    let put = ok(&r, 200);
    assert_eq!(r.header("etag"), Some("\"3\""));
    assert_eq!(
        (put["name"].as_str(), put["sku"].as_str()),
        (Some("Pixel 2"), Some("p1"))
    );
    assert!(put["price"].is_null() && put["metadata"].is_null(), "{put}");
    assert_eq!(put["category_id"], cat["id"]);
    // DELETE with a stale If-Match: 412, still there; with the fresh one: 204, then 404
    let r = call(&s, &alice, "DELETE", &loc, None, &[("If-Match", "\"2\"")]);
    problem(&r, 412, &loc);
    ok(&call(&s, &alice, "GET", &loc, None, &[]), 200);
    ok(
        &call(&s, &alice, "DELETE", &loc, None, &[("If-Match", "\"3\"")]),
        204,
    );
    let pr = problem(&call(&s, &alice, "GET", &loc, None, &[]), 404, &loc);
    assert_eq!(pr["sqlstate"], "P0002");
    // gone: PATCH and DELETE say so too; an id that is no UUID is a 400 naming it
    problem(
        &call(&s, &alice, "PATCH", &loc, Some(&json!({"price": 1})), &[]),
        404,
        &loc,
    );
    problem(&call(&s, &alice, "DELETE", &loc, None, &[]), 404, &loc);
    let pr = problem(
        &call(&s, &alice, "GET", "/api/records/product/42", None, &[]),
        400,
        "/api/records/product/42",
    );
    assert_eq!(pr["field"], "id");
}

fn count(s: &Server, token: &str, entity: &str) -> i64 {
    let r = call(
        s,
        token,
        "GET",
        &format!("/api/records/{entity}?count=exact&limit=1"),
        None,
        &[],
    );
    ok(&r, 200)["count"].as_i64().unwrap()
}

#[test]
fn batches_are_all_or_nothing_and_upsert_on_a_key() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let rows = json!([
        {"name": "One", "sku": "s1", "price": 1},
        {"name": "Two", "sku": "s2", "price": "cheap"},
        {"name": "Three", "sku": "s3", "price": 3}]);
    let p = problem(
        &call(&s, &alice, "POST", "/api/records/product", Some(&rows), &[]),
        400,
        "/api/records/product",
    );
    assert_eq!(p["row"], 1, "{p}");
    assert_eq!(
        (p["entity"].as_str(), p["field"].as_str()),
        (Some("product"), Some("price"))
    );
    assert!(p["detail"].as_str().unwrap().starts_with("rows[1]"), "{p}");
    assert_eq!(count(&s, &alice, "product"), 0);
    // the third row fails in the database (its sku is the first one's): the two before it,
    // already written, are gone with it
    let rows = json!([
        {"name": "One", "sku": "s1", "price": 1},
        {"name": "Two", "sku": "s2", "price": 2},
        {"name": "Three", "sku": "s1", "price": 3}]);
    let p = problem(
        &call(&s, &alice, "POST", "/api/records/product", Some(&rows), &[]),
        409,
        "/api/records/product",
    );
    assert_eq!(p["sqlstate"], "23505", "{p}");
    assert_eq!(p["row"], 2, "{p}");
    assert_eq!(count(&s, &alice, "product"), 0);
    let rows = json!([
        {"name": "One", "sku": "s1", "price": 1},
        {"name": "Two", "sku": "s2", "price": 2},
        {"name": "Three", "sku": "s3", "price": 3}]);
    let out = ok(
        &call(&s, &alice, "POST", "/api/records/product", Some(&rows), &[]),
        201,
    );
    assert_eq!(out["inserted"], 3, "{out}");
    assert_eq!(count(&s, &alice, "product"), 3);
    // upsert on sku: one updated, one inserted
    let rows = json!([{"name": "Two again", "sku": "s2", "price": 22}, {"name": "Four", "sku": "s4", "price": 4}]);
    let out = ok(
        &call(
            &s,
            &alice,
            "POST",
            "/api/records/product?on_conflict=sku",
            Some(&rows),
            &[],
        ),
        200,
    );
    assert_eq!(
        (out["inserted"].as_i64(), out["updated"].as_i64()),
        (Some(1), Some(1)),
        "{out}"
    );
    // an object upserts too
    let out = ok(
        &call(
            &s,
            &alice,
            "POST",
            "/api/records/product?on_conflict=sku",
            Some(&json!({"name": "Four!", "sku": "s4"})),
            &[],
        ),
        200,
    );
    assert_eq!(out["updated"], 1, "{out}");
    let l = ok(
        &call(
            &s,
            &alice,
            "GET",
            "/api/records/product?select=name,price&sort=sku",
            None,
            &[],
        ),
        200,
    );
    assert_eq!(
        l["records"],
        json!([{"name": "One", "price": 1}, {"name": "Two again", "price": 22},
               {"name": "Three", "price": 3}, {"name": "Four!", "price": 4}])
    );
}

#[test]
fn the_list_grammar_over_plain_relation_and_json_paths_with_paging() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let phones = insert(&s, &alice, "category", json!({"name": "Phones"}));
    let laptops = insert(&s, &alice, "category", json!({"name": "Laptops"}));
    let mut rows = Vec::new();
    for i in 0..25 {
        let (cat, brand) = if i % 2 == 0 {
            (&phones, "acme")
        } else {
            (&laptops, "globex")
        };
        rows.push(json!({"name": format!("item{i:02}"), "sku": if i == 7 { Value::Null } else { json!(format!("k{i}")) },
            "price": 10 * i, "category_id": cat["id"], "metadata": {"brand": brand, "weight": i}}));
    }
    ok(
        &call(
            &s,
            &alice,
            "POST",
            "/api/records/product",
            Some(&Value::Array(rows)),
            &[],
        ),
        201,
    );
    let get = |q: &str| {
        ok(
            &call(
                &s,
                &alice,
                "GET",
                &format!("/api/records/product?{q}"),
                None,
                &[],
            ),
            200,
        )
    };
    let names = |v: &Value| -> Vec<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    // columns with a dot path through the relation and into JSON
    let v = get("select=name,category_id.name,metadata.brand&name=item03");
    assert_eq!(
        v["records"],
        json!([{"name": "item03", "category_id.name": "Laptops", "metadata.brand": "globex"}])
    );
    // operators: eq (bare and explicit), gt, in, like, is, on plain, relation and JSON paths
    assert_eq!(
        names(&get("select=name&price=gt.200&sort=name")),
        ["item21", "item22", "item23", "item24"]
    );
    assert_eq!(names(&get("select=name&price=eq.30")), ["item03"]);
    assert_eq!(
        names(&get("select=name&name=in.item01,item02,nothing&sort=name")),
        ["item01", "item02"]
    );
    assert_eq!(
        names(&get(
            "select=name&name=like.item1%25&price=lt.130&sort=name"
        )),
        ["item10", "item11", "item12"]
    );
    assert_eq!(names(&get("select=name&sku=is.null")), ["item07"]);
    assert_eq!(
        get("select=name&sku=is.notnull&count=exact&limit=1")["count"],
        24
    );
    assert_eq!(
        get("select=name&category_id.name=eq.Phones&count=exact&limit=1")["count"],
        13
    );
    assert_eq!(
        names(&get(
            "select=name&category_id.name=like.Lap%25&price=gte.220"
        )),
        ["item23"]
    );
    assert_eq!(
        names(&get(
            "select=name&metadata.brand=acme&metadata.weight=gt.21&sort=name"
        )),
        ["item22", "item24"]
    );
    assert_eq!(
        get("select=name&metadata.brand=in.acme,none&count=exact&limit=1")["count"],
        13
    );
    // sort descending, limit
    assert_eq!(
        names(&get("select=name&sort=-price&limit=3")),
        ["item24", "item23", "item22"]
    );
    // paging: follow Link rel=next to the end, every record once, in order
    let mut url =
        "/api/records/product?select=name,price&sort=-price&limit=10&count=exact".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = call(&s, &alice, "GET", &url, None, &[]);
        let v = ok(&r, 200);
        assert_eq!(v["count"], 25, "{v}");
        seen.extend(names(&v));
        pages += 1;
        match r.header("link") {
            Some(l) => {
                assert!(v["next_cursor"].is_string(), "{v}");
                let (target, rel) = l.split_once(">; ").unwrap();
                assert_eq!(rel, "rel=\"next\"");
                url = target.trim_start_matches('<').to_string();
                assert!(
                    url.starts_with("/api/records/product?") && url.contains("cursor="),
                    "{url}"
                );
            }
            None => {
                assert!(v.get("next_cursor").is_none(), "{v}");
                break;
            }
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).rev().map(|i| format!("item{i:02}")).collect();
    assert_eq!(seen, expected);
    // estimated counts are numbers too; refusals name the parameter or the path
    assert!(get("count=estimated&limit=1")["count"].is_number());
    let path = "/api/records/product";
    let p = problem(
        &call(&s, &alice, "GET", &format!("{path}?limit=5000"), None, &[]),
        400,
        path,
    );
    assert_eq!(p["field"], "limit");
    let p = problem(
        &call(&s, &alice, "GET", &format!("{path}?nope=eq.1"), None, &[]),
        400,
        path,
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["field"].as_str()),
        (Some("42703"), Some("nope")),
        "{p}"
    );
    let p = problem(
        &call(
            &s,
            &alice,
            "GET",
            &format!("{path}?price=gt.cheap"),
            None,
            &[],
        ),
        400,
        path,
    );
    assert!(p["detail"].as_str().unwrap().contains("price"), "{p}");
    // quotes make text: a text field compared with digits
    ok(
        &call(
            &s,
            &alice,
            "PATCH",
            &format!("{path}/{}", phones["id"].as_str().unwrap()).replace("product", "category"),
            Some(&json!({"name": "123"})),
            &[],
        ),
        200,
    );
    let v = ok(
        &call(
            &s,
            &alice,
            "GET",
            "/api/records/category?select=name&name=eq.%22123%22",
            None,
            &[],
        ),
        200,
    );
    assert_eq!(v["records"], json!([{"name": "123"}]));
}

#[test]
fn views_aggregates_history_record_at_and_rollback() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let root = insert(&s, &alice, "category", json!({"name": "All"}));
    let phones = insert(
        &s,
        &alice,
        "category",
        json!({"name": "Phones", "parent_id": root["id"]}),
    );
    for (n, st, price) in [
        ("Alpha", "draft", 5),
        ("Bravo", "active", 7),
        ("Charlie", "active", 9),
    ] {
        insert(
            &s,
            &alice,
            "product",
            json!({"name": n, "status": st, "price": price, "category_id": phones["id"],
            "start_date": "2026-01-01", "end_date": "2026-02-01"}),
        );
    }
    let post = |path: &str, spec: Value| ok(&call(&s, &alice, "POST", path, Some(&spec), &[]), 200);
    let t = post(
        "/api/records/product/query/table",
        json!({"columns": ["name"], "sort": ["name"], "limit": 2}),
    );
    assert_eq!(t["rows"], json!([{"name": "Alpha"}, {"name": "Bravo"}]));
    assert!(t["next_cursor"].is_string());
    let k = post(
        "/api/records/product/query/kanban",
        json!({"field": "status", "columns": ["name"]}),
    );
    assert_eq!(k["columns"][1]["value"], "active");
    assert_eq!(k["columns"][1]["count"], 2, "{k}");
    let tr = post(
        "/api/records/category/query/tree",
        json!({"parent": "parent_id", "columns": ["name"]}),
    );
    assert!(tr.to_string().contains("Phones"), "{tr}");
    let g = post(
        "/api/records/product/query/gantt",
        json!({"start": "start_date", "end": "end_date", "label": "name"}),
    );
    assert!(g.to_string().contains("Charlie"), "{g}");
    let d = post(
        "/api/records/product/query/dropdown",
        json!({"label": "name", "search": "bra"}),
    );
    assert_eq!(d["items"][0]["label"], "Bravo", "{d}");
    let b = post(
        "/api/records/category/query/breadcrumb",
        json!({"id": phones["id"], "parent": "parent_id", "label": "name"}),
    );
    assert!(b.to_string().contains("All"), "{b}");
    let a = post(
        "/api/records/product/stats/agg",
        json!({"group_by": ["status"], "metrics": ["count", {"fn": "sum", "path": "price"}], "sort": ["status"]}),
    );
    assert_eq!(
        a["rows"],
        json!([{"status": "active", "count": 2, "sum_price": 16}, {"status": "draft", "count": 1, "sum_price": 5}]),
        "{a}"
    );
    let p = problem(
        &call(
            &s,
            &alice,
            "POST",
            "/api/records/product/query/pie",
            Some(&json!({})),
            &[],
        ),
        404,
        "/api/records/product/query/pie",
    );
    assert!(p["detail"].as_str().unwrap().contains("kanban"), "{p}");
    // history, the record at a time, rollback
    let rec = insert(&s, &alice, "product", json!({"name": "Delta", "price": 1}));
    let loc = format!("/api/records/product/{}", rec["id"].as_str().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let between = ok(
        &call(&s, &alice, "GET", "/api/audit/verify", None, &[]),
        200,
    );
    assert_eq!(between["ok"], true, "{between}");
    let mut adm = admin();
    let t1: String = adm
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .unwrap()
        .get(0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    ok(
        &call(&s, &alice, "PATCH", &loc, Some(&json!({"price": 2})), &[]),
        200,
    );
    let h = ok(
        &call(&s, &alice, "GET", &format!("{loc}/history"), None, &[]),
        200,
    );
    let actions: Vec<(&str, i64)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["action"].as_str().unwrap(),
                v["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(actions, [("UPDATE", 2), ("INSERT", 1)]);
    let r = call(
        &s,
        &alice,
        "GET",
        &format!("{loc}/at?time={}", list_encode(&t1)),
        None,
        &[],
    );
    let then = ok(&r, 200);
    assert_eq!(
        (then["price"].as_i64(), then["_version"].as_i64()),
        (Some(1), Some(1)),
        "{then}"
    );
    let at = format!("{loc}/at");
    problem(
        &call(
            &s,
            &alice,
            "GET",
            &format!("{at}?time=2000-01-01T00:00:00Z"),
            None,
            &[],
        ),
        404,
        &at,
    );
    let p = problem(&call(&s, &alice, "GET", &at, None, &[]), 400, &at);
    assert_eq!(p["field"], "time");
    let out = ok(
        &call(
            &s,
            &alice,
            "POST",
            &format!("{loc}/rollback"),
            Some(&json!({"version": 1})),
            &[],
        ),
        200,
    );
    assert_eq!(out["restored_version"], 1, "{out}");
    assert_eq!(
        ok(&call(&s, &alice, "GET", &loc, None, &[]), 200)["price"],
        1
    );
    let none = format!(
        "/api/records/product/{}/history",
        "00000000-0000-7000-8000-000000000000"
    );
    problem(&call(&s, &alice, "GET", &none, None, &[]), 404, &none);
}

fn list_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn write_locks_held_by_another_member_are_423() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let (alice, bob) = (f.token("alice"), f.token("bob"));
    let rec = insert(&s, &bob, "product", json!({"name": "Bob's", "price": 1}));
    let loc = format!("/api/records/product/{}", rec["id"].as_str().unwrap());
    let lock = format!("{loc}/lock");
    let st = ok(&call(&s, &bob, "GET", &lock, None, &[]), 200);
    assert_eq!(st["locked"], false, "{st}");
    let got = ok(&call(&s, &bob, "POST", &lock, None, &[]), 200);
    assert_eq!(
        (got["acquired"].as_bool(), got["mine"].as_bool()),
        (Some(true), Some(true)),
        "{got}"
    );
    let st = ok(&call(&s, &alice, "GET", &lock, None, &[]), 200);
    assert_eq!(st["locked"], true, "{st}");
    // alice (an admin) may not change bob's locked record, nor take his lock
    let p = problem(
        &call(&s, &alice, "PATCH", &loc, Some(&json!({"price": 2})), &[]),
        423,
        &loc,
    );
    assert_eq!(p["sqlstate"], "55P03");
    let p = problem(&call(&s, &alice, "POST", &lock, None, &[]), 423, &lock);
    assert_eq!(p["sqlstate"], "55P03");
    assert!(
        p["detail"].as_str().unwrap().contains(&f.email["bob"])
            || p["detail"].as_str().unwrap().contains("bob"),
        "{p}"
    );
    problem(&call(&s, &alice, "DELETE", &lock, None, &[]), 423, &lock);
    assert_eq!(ok(&call(&s, &bob, "GET", &loc, None, &[]), 200)["price"], 1);
    // bob renews and releases; then alice may write
    let hb = ok(&call(&s, &bob, "PUT", &lock, None, &[]), 200);
    assert_eq!(hb["locked"], true, "{hb}");
    ok(&call(&s, &bob, "DELETE", &lock, None, &[]), 204);
    assert_eq!(
        ok(
            &call(&s, &alice, "PATCH", &loc, Some(&json!({"price": 2})), &[]),
            200
        )["price"],
        2
    );
}

#[test]
fn refusals_are_problems_with_their_status() {
    let f = Fixture::new();
    let s = f.server(&[("max_body_bytes", "2000")]);
    let alice = f.token("alice");
    let path = "/api/records/product";
    insert(
        &s,
        &alice,
        "product",
        json!({"name": "Pixel", "sku": "p1", "price": 5}),
    );
    // unknown entity 404
    let p = problem(
        &call(&s, &alice, "GET", "/api/records/nothing", None, &[]),
        404,
        "/api/records/nothing",
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["entity"].as_str()),
        (Some("42P01"), Some("nothing")),
        "{p}"
    );
    // unique 409 naming entity and field
    let p = problem(
        &call(
            &s,
            &alice,
            "POST",
            path,
            Some(&json!({"name": "Other", "sku": "p1"})),
            &[],
        ),
        409,
        path,
    );
    assert_eq!(
        (
            p["sqlstate"].as_str(),
            p["entity"].as_str(),
            p["field"].as_str()
        ),
        (Some("23505"), Some("product"), Some("sku")),
        "{p}"
    );
    // a rule 422 naming it
    let p = problem(
        &call(
            &s,
            &alice,
            "POST",
            path,
            Some(&json!({"name": "Gold", "price": 5000})),
            &[],
        ),
        422,
        path,
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["rule"].as_str()),
        (Some("23514"), Some("cheap_names")),
        "{p}"
    );
    assert_eq!(p["detail"], "expensive things need long names");
    assert!(p["hint"].is_string());
    // bad input 400 naming the field; a required one missing; an unknown field
    let p = problem(
        &call(
            &s,
            &alice,
            "POST",
            path,
            Some(&json!({"name": "X", "price": "abc"})),
            &[],
        ),
        400,
        path,
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["field"].as_str()),
        (Some("22P02"), Some("price")),
        "{p}"
    );
    let p = problem(
        &call(&s, &alice, "POST", path, Some(&json!({"price": 1})), &[]),
        400,
        path,
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["field"].as_str()),
        (Some("23502"), Some("name")),
        "{p}"
    );
    let p = problem(
        &call(
            &s,
            &alice,
            "POST",
            path,
            Some(&json!({"name": "X", "colour": 1})),
            &[],
        ),
        400,
        path,
    );
    assert_eq!(
        (p["sqlstate"].as_str(), p["field"].as_str()),
        (Some("42703"), Some("colour")),
        "{p}"
    );
    let p = problem(
        &s.request(
            "POST",
            path,
            &[
                ("Authorization", &format!("Bearer {alice}")),
                ("Content-Type", "application/json"),
            ],
            Some(b"{not json"),
        ),
        400,
        path,
    );
    assert!(p["detail"].as_str().unwrap().contains("not JSON"), "{p}");
    // a viewer's write 403, and nothing written
    let p = problem(
        &call(
            &s,
            &f.token("carol"),
            "POST",
            path,
            Some(&json!({"name": "Carol's"})),
            &[],
        ),
        403,
        path,
    );
    assert_eq!(p["sqlstate"], "42501");
    assert_eq!(count(&s, &alice, "product"), 1);
    // tokens: none, bad, expired 401 (WWW-Authenticate); not a member 403
    let r = s.request("GET", path, &[], None);
    problem(&r, 401, path);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    problem(&call(&s, "not-a-token", "GET", path, None, &[]), 401, path);
    let expired = token_with(
        json!({"tenant": f.t, "sub": f.email["alice"], "exp": now() - 3600}),
        SECRET,
    );
    problem(&call(&s, &expired, "GET", path, None, &[]), 401, path);
    let p = problem(
        &call(&s, &f.token("mallory"), "GET", path, None, &[]),
        403,
        path,
    );
    assert!(p.get("sqlstate").is_none(), "{p}");
    // another tenant: one alice is a member of, with its own product, that this server's role
    // does not serve — refused the same way, and nothing of it shows through her own tenant
    let mut adm = admin();
    let other = tenant(&mut adm, "rest_other");
    adm.execute("SELECT udm_use($1)", &[&other]).unwrap();
    for (e, d) in [("category", CATEGORY), ("product", PRODUCT)] {
        adm.query_one("SELECT udm_define_entity($1, $2::text::jsonb)", &[&e, &d])
            .unwrap();
    }
    adm.query_one(
        "SELECT udm_add_member($1, $2, 'admin')",
        &[&other, &f.email["alice"]],
    )
    .unwrap();
    adm.execute("SELECT udm_use($1, $2)", &[&other, &f.email["alice"]])
        .unwrap();
    adm.execute(
        &format!("INSERT INTO \"{other}\".product (name, price) VALUES ('elsewhere', 1)"),
        &[],
    )
    .unwrap();
    let theirs = token(&other, &f.email["alice"]);
    let p = problem(&call(&s, &theirs, "GET", path, None, &[]), 403, path);
    assert!(p.get("sqlstate").is_none(), "{p}");
    assert_eq!(count(&s, &alice, "product"), 1);
    // a body over the limit 413
    let big = json!({"name": "x".repeat(5000)});
    problem(&call(&s, &alice, "POST", path, Some(&big), &[]), 413, path);
    // a route or method that is not there; a body that is not JSON by its type
    problem(
        &call(&s, &alice, "GET", "/api/nothing", None, &[]),
        404,
        "/api/nothing",
    );
    let r = call(&s, &alice, "PATCH", path, Some(&json!({})), &[]);
    problem(&r, 405, path);
    assert!(
        r.header("allow")
            .is_some_and(|a| a.contains("GET") && a.contains("POST")),
        "{:?}",
        r.headers
    );
    let r = s.request(
        "POST",
        path,
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("Content-Type", "text/plain"),
        ],
        Some(b"{}"),
    );
    problem(&r, 415, path);
    // REST requests are counted in /metrics
    let m = s.request("GET", "/metrics", &[], None).body;
    for status in ["201", "400", "401", "403", "404", "409", "413", "422"] {
        assert!(
            m.contains(&format!(
                "udm_server_requests_total{{operation=\"rest\",status=\"{status}\"}}"
            )),
            "{status}: {m}"
        );
    }
}

#[test]
fn members_see_their_own_rows_through_the_list_route() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let (alice, bob, dan) = (f.token("alice"), f.token("bob"), f.token("dan"));
    for (t, n) in [(&bob, "b1"), (&bob, "b2"), (&dan, "d1"), (&alice, "a1")] {
        insert(&s, t, "product", json!({"name": n}));
    }
    let names = |t: &str| -> Vec<String> {
        let v = ok(
            &call(
                &s,
                t,
                "GET",
                "/api/records/product?select=name&sort=name&count=exact",
                None,
                &[],
            ),
            200,
        );
        assert_eq!(
            v["count"].as_u64().unwrap() as usize,
            v["records"].as_array().unwrap().len()
        );
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&bob), ["b1", "b2"]);
    assert_eq!(names(&dan), ["d1"]);
    assert_eq!(names(&alice), ["a1", "b1", "b2", "d1"]);
    // bob cannot read, change or delete dan's record either: it is not there for him
    let d1 = ok(
        &call(
            &s,
            &alice,
            "GET",
            "/api/records/product?select=id&name=d1",
            None,
            &[],
        ),
        200,
    );
    let loc = format!(
        "/api/records/product/{}",
        d1["records"][0]["id"].as_str().unwrap()
    );
    problem(&call(&s, &bob, "GET", &loc, None, &[]), 404, &loc);
    problem(
        &call(&s, &bob, "PATCH", &loc, Some(&json!({"name": "mine"})), &[]),
        404,
        &loc,
    );
    problem(&call(&s, &bob, "DELETE", &loc, None, &[]), 404, &loc);
    assert_eq!(names(&dan), ["d1"]);
}

#[test]
fn audit_reports_and_verification() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let rec = insert(
        &s,
        &alice,
        "product",
        json!({"name": "Audited", "price": 1}),
    );
    let id = rec["id"].as_str().unwrap();
    ok(
        &call(
            &s,
            &alice,
            "PATCH",
            &format!("/api/records/product/{id}"),
            Some(&json!({"price": 2})),
            &[],
        ),
        200,
    );
    let sum = ok(
        &call(
            &s,
            &alice,
            "GET",
            "/api/audit/report?kind=summary",
            None,
            &[],
        ),
        200,
    );
    assert!(sum.to_string().contains("product"), "{sum}");
    let ch = ok(
        &call(
            &s,
            &alice,
            "GET",
            &format!(
                "/api/audit/report?kind=record_history&entity=product&record_id={id}&limit=10"
            ),
            None,
            &[],
        ),
        200,
    );
    let actions: Vec<&str> = ch["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["INSERT", "UPDATE"], "{ch}");
    let v = ok(
        &call(&s, &alice, "GET", "/api/audit/verify", None, &[]),
        200,
    );
    assert_eq!(v["ok"], true, "{v}");
    let path = "/api/audit/report";
    let p = problem(&call(&s, &alice, "GET", path, None, &[]), 400, path);
    assert_eq!(p["field"], "kind");
    let p = problem(
        &call(&s, &alice, "GET", &format!("{path}?kind=weekly"), None, &[]),
        400,
        path,
    );
    assert_eq!(p["sqlstate"], "22023");
    let p = problem(
        &call(
            &s,
            &alice,
            "GET",
            &format!("{path}?kind=summary&form=x"),
            None,
            &[],
        ),
        400,
        path,
    );
    assert_eq!(p["field"], "form");
}

/// `GET /api/openapi.json` is the tenant's OpenAPI 3.1 document as the caller sees it
/// (`udm_openapi()`), valid for a real validator (`tests/openapi/validate.mjs`:
/// @apidevtools/swagger-parser and Ajv), and it describes the routes this server has: every
/// operation it lists is answered by a route (no 404 for the path, no 405 for the method), and a
/// record the list route returns is valid against the document's schema for it.
#[test]
fn the_openapi_document_describes_the_routes_this_server_answers() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let alice = f.token("alice");
    let cat = insert(&s, &alice, "category", json!({"name": "tools"}));
    insert(
        &s,
        &alice,
        "product",
        json!({"name": "hammer", "sku": "h-1", "price": 12.5, "status": "active",
               "category_id": cat["id"], "metadata": {"brand": "acme"}}),
    );
    let doc = ok(
        &call(&s, &alice, "GET", "/api/openapi.json", None, &[]),
        200,
    );
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    let page = ok(
        &call(&s, &alice, "GET", "/api/records/product?limit=5", None, &[]),
        200,
    );
    // the validator, as tests/tests/openapi.rs runs it
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (doc_file, rec_file) = (
        dir.join(format!("{}.json", unique("openapi-"))),
        dir.join(format!("{}.json", unique("records-"))),
    );
    std::fs::write(&doc_file, doc.to_string()).unwrap();
    let records = page["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 1, "{page}");
    let product_schema = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .find(|k| k.as_str() == "Product")
        .cloned()
        .expect("a Product schema");
    std::fs::write(&rec_file, json!({ product_schema: records }).to_string()).unwrap();
    let out = std::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/openapi/validate.mjs"
        ))
        .arg(&doc_file)
        .arg(&rec_file)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // every operation of the document reaches a route of the server
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{entity}", "product")
            .replace("{field}", "sku")
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{kind}", "table");
        assert!(!concrete.contains('{'), "a path parameter left: {path}");
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let url = format!("/api{concrete}");
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let r = call(&s, &alice, &method.to_uppercase(), &url, body.as_ref(), &[]);
            let routed = match r.status {
                405 => false,
                // a 404 of udm (a record or entity not found) names its SQLSTATE; the router's
                // own 404 (no such path) does not
                404 => r.json().get("sqlstate").is_some(),
                _ => true,
            };
            assert!(routed, "{method} {url}: {} {}", r.status, r.body);
        }
    }
    assert!(operations >= 25, "{operations} operations");
}
