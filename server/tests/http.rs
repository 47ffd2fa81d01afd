//! udm-server over HTTP against the test cluster: queries and mutations as the token's user,
//! every refusal of a token, GraphQL-over-HTTP methods, media types and status codes, limits,
//! and two tenants and several users interleaved over a pool of two connections.

mod common;
use common::*;
use std::collections::HashMap;

/// Three tenants with an entity `note` whose records are seen by their owner (and by a tenant's
/// admins): A (alice admin, bob editor, carol viewer), B (dave admin, erin editor), C (frank
/// admin). The server's role (made by `udm-server setup-role`) is a member of A and B only.
struct Fixture {
    a: String,
    b: String,
    c: String,
    role: String,
    /// name -> email
    email: HashMap<&'static str, String>,
    /// name -> user id
    id: HashMap<&'static str, String>,
}

impl Fixture {
    fn new() -> Fixture {
        let mut adm = admin();
        let (a, b, c) = (
            tenant(&mut adm, "srva"),
            tenant(&mut adm, "srvb"),
            tenant(&mut adm, "srvc"),
        );
        let mut email = HashMap::new();
        for n in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            let e = format!("{}@server.test", unique(n));
            adm.query_one(
                "SELECT udm_create_user($1, $2, 'a-test-password')",
                &[&e, &n],
            )
            .unwrap();
            email.insert(n, e);
        }
        let mut id = HashMap::new();
        for (t, admin_user, others) in [
            (&a, "alice", vec![("bob", "editor"), ("carol", "viewer")]),
            (&b, "dave", vec![("erin", "editor")]),
            (&c, "frank", vec![]),
        ] {
            adm.execute("SELECT udm_use($1)", &[t]).unwrap();
            adm.query_one(
                r#"SELECT udm_define_entity('note', '{"fields": [
                     {"name": "title", "type": "text", "required": true},
                     {"name": "owner_id", "type": "user", "on_delete": "cascade"}],
                   "access": {"scope": "self", "owner": "owner_id"}}')"#,
                &[],
            )
            .unwrap();
            adm.query_one(
                "SELECT udm_add_member($1, $2, 'admin')",
                &[t, &email[admin_user]],
            )
            .unwrap();
            adm.execute("SELECT udm_use($1, $2)", &[t, &email[admin_user]])
                .unwrap();
            for (u, r) in others {
                adm.query_one("SELECT udm_add_member($1, $2, $3)", &[t, &email[u], &r])
                    .unwrap();
            }
            for row in adm
                .query("SELECT email, user_id::text FROM udm_members()", &[])
                .unwrap()
            {
                let (e, i): (String, String) = (row.get(0), row.get(1));
                let n = *email.iter().find(|(_, v)| **v == e).unwrap().0;
                id.insert(n, i);
            }
        }
        adm.execute("RESET udm.tenant", &[]).unwrap();
        let role = unique("udm_server_");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_udm-server"))
            .args(["setup-role", &conn_string("postgres"), &role, &a, &b])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setup-role: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture {
            a,
            b,
            c,
            role,
            email,
            id,
        }
    }

    fn token(&self, tenant: &str, user: &str) -> String {
        token(tenant, &self.email[user])
    }

    fn server(&self, env: &[(&str, &str)]) -> Server {
        Server::start(&self.role, env)
    }
}

const INSERT: &str = r#"mutation($t: String!) { insertNote(objects: [{title: $t}]) { affectedCount records { title ownerId createdBy } } }"#;
const LIST: &str = r#"{ noteCollection(first: 1000, orderBy: [{title: ASC}]) { totalCount nodes { title ownerId } } }"#;

fn titles(r: &Value) -> Vec<String> {
    r["data"]["noteCollection"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes: {r}"))
        .iter()
        .map(|n| n["title"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn setup_role_is_one_idempotent_command_granting_the_named_tenants() {
    let f = Fixture::new();
    let mut adm = admin();
    let member = |adm: &mut postgres::Client, t: &str| -> bool {
        let r = tenant_role(adm, t);
        adm.query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&f.role, &r])
            .unwrap()
            .get(0)
    };
    assert!(member(&mut adm, &f.a) && member(&mut adm, &f.b));
    assert!(!member(&mut adm, &f.c));
    let (login, superuser): (bool, bool) = {
        let r = adm
            .query_one(
                "SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = $1",
                &[&f.role],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(login && !superuser);
    let local: i64 = adm
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole \
             WHERE r.rolname = $1 AND 'udm.require_local_selection=on' = ANY(s.setconfig)",
            &[&f.role],
        )
        .unwrap()
        .get(0);
    assert_eq!(local, 1);
    // again, with C: idempotent, adds C
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_udm-server"))
            .arg("setup-role")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[&conn_string("postgres"), &f.role, &f.a, &f.c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(member(&mut adm, &f.c));
    // an unknown tenant is refused, and a hostile role name is only ever a quoted identifier
    let out = run(&[&conn_string("postgres"), &f.role, "no_such_tenant"]);
    assert!(!out.status.success());
    let evil = format!("{}\"; DROP TABLE x; --", unique("evil"));
    let out = run(&[&conn_string("postgres"), &evil, &f.a]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: i64 = adm
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&evil])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let ra = tenant_role(&mut adm, &f.a);
    adm.batch_execute(&format!(
        "REVOKE {} FROM {}; DROP ROLE {}",
        ident(&ra),
        ident(&evil),
        ident(&evil)
    ))
    .unwrap();
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[test]
fn queries_and_mutations_run_as_the_tokens_user_and_the_database_decides() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let bob = f.token(&f.a, "bob");
    // a mutation: recorded as bob, owned by bob
    let r = s.gql(&bob, INSERT, json!({"t": "bob's note"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v.get("errors").is_none(), "{v}");
    let rec = &v["data"]["insertNote"]["records"][0];
    assert_eq!(v["data"]["insertNote"]["affectedCount"], 1);
    assert_eq!(rec["ownerId"], f.id["bob"].as_str());
    assert_eq!(rec["createdBy"], f.id["bob"].as_str());
    // committed: another request (and plain SQL) sees it
    let mut adm = admin();
    let n: i64 = adm
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.note WHERE title = 'bob''s note' AND owner_id::text = $1",
                ident(&f.a)
            ),
            &[&f.id["bob"]],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let alice = f.token(&f.a, "alice");
    s.gql(&alice, INSERT, json!({"t": "alice's note"}));
    // row-level security as for plain SQL: bob sees his own, alice (admin) both, carol none
    assert_eq!(titles(&s.gql(&bob, LIST, json!({})).json()), ["bob's note"]);
    assert_eq!(
        titles(&s.gql(&alice, LIST, json!({})).json()),
        ["alice's note", "bob's note"]
    );
    let carol = f.token(&f.a, "carol");
    assert!(titles(&s.gql(&carol, LIST, json!({})).json()).is_empty());
    // a viewer may not create: the database refuses, the mutation has no effect
    let r = s.gql(&carol, INSERT, json!({"t": "carol's note"}));
    assert_eq!(r.status, 200, "data is present (null): {}", r.body);
    let v = r.json();
    assert_eq!(v["data"], Value::Null, "{v}");
    assert_eq!(v["errors"][0]["extensions"]["code"], "FORBIDDEN", "{v}");
    assert_eq!(v["errors"][0]["path"], json!(["insertNote"]), "{v}");
    // the other tenant sees none of it
    let dave = f.token(&f.b, "dave");
    assert!(titles(&s.gql(&dave, LIST, json!({})).json()).is_empty());
    // a query over GET, with variables and an operation name
    let q = "query Mine($n: Int!) { noteCollection(first: $n) { nodes { title } } } query Other { __typename }";
    let path = format!(
        "/graphql?query={}&variables={}&operationName=Mine",
        enc(q),
        enc(r#"{"n": 5}"#)
    );
    let auth = format!("Bearer {bob}");
    let r = s.request("GET", &path, &[("Authorization", &auth)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(titles(&r.json()), ["bob's note"]);
    // the response carries a request id, and the log line of the request has it
    let rid = r.header("x-request-id").unwrap().to_string();
    assert_eq!(rid.len(), 36);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(s.log().contains(&rid), "{}", s.log());
}

/// Percent-encoding for a query string.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_mutation_over_get_is_refused_with_405_and_writes_nothing() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let auth = format!("Bearer {}", f.token(&f.a, "bob"));
    let count = || -> i64 {
        admin()
            .query_one(&format!("SELECT count(*) FROM {}.note", ident(&f.a)), &[])
            .unwrap()
            .get(0)
    };
    for (doc, op) in [
        (
            r#"mutation { insertNote(objects: [{title: "via get"}]) { affectedCount } }"#,
            None,
        ),
        (
            r#"query Q { __typename } mutation M { insertNote(objects: [{title: "via get"}]) { affectedCount } }"#,
            Some("M"),
        ),
    ] {
        let mut path = format!("/graphql?query={}", enc(doc));
        if let Some(o) = op {
            path.push_str(&format!("&operationName={o}"));
        }
        for accept in ["application/json", "application/graphql-response+json"] {
            let r = s.request(
                "GET",
                &path,
                &[("Authorization", &auth), ("Accept", accept)],
                None,
            );
            assert_eq!(r.status, 405, "{}", r.body);
            assert_eq!(r.header("allow"), Some("POST"));
            assert_eq!(
                r.json()["errors"][0]["extensions"]["code"],
                "METHOD_NOT_ALLOWED"
            );
        }
    }
    // a document whose operation the server cannot tell (two anonymous operations) goes to the
    // database, read-only, which refuses it: nothing is written
    let path = format!(
        "/graphql?query={}",
        enc(
            r#"mutation { insertNote(objects: [{title: "via get"}]) { affectedCount } } query { __typename }"#
        )
    );
    let r = s.request("GET", &path, &[("Authorization", &auth)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["errors"][0]["message"].is_string(), "{}", r.body);
    assert_eq!(count(), 0);
    // the same mutation over POST works
    let r = s.gql(
        &f.token(&f.a, "bob"),
        r#"mutation { insertNote(objects: [{title: "via post"}]) { affectedCount } }"#,
        json!({}),
    );
    assert_eq!(
        r.json()["data"]["insertNote"]["affectedCount"],
        1,
        "{}",
        r.body
    );
    assert_eq!(count(), 1);
}

fn assert_refused(r: &Resp, status: u16, message: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert_eq!(v["errors"][0]["message"], message, "{v}");
    assert!(v.get("data").is_none(), "{v}");
    // nothing of the database, the driver or the key shows
    for word in [
        "udm_use",
        "permission",
        "SQL",
        "tenant_",
        "postgres",
        SECRET,
        "42501",
    ] {
        assert!(!r.body.contains(word), "{word} in {}", r.body);
    }
    if status == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
}

#[test]
fn every_token_refusal() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let q = json!({"query": "{ __typename }"});
    let email = &f.email["bob"];
    let ok = s.post(Some(&f.token(&f.a, "bob")), None, &q);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["data"]["__typename"], "Query");

    let required = "a bearer token is required (Authorization: Bearer <JWT>)";
    assert_refused(&s.post(None, None, &q), 401, required);
    let body = q.to_string();
    for auth in ["Basic Ym9iOnB3", "Bearer", "Bearer ", "bob"] {
        let r = s.request(
            "POST",
            "/graphql",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", auth),
            ],
            Some(body.as_bytes()),
        );
        assert_refused(&r, 401, required);
    }
    let invalid = "invalid token";
    let claims = |extra: Value| {
        let mut c = json!({"tenant": f.a, "sub": email, "exp": now() + 300});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    // not a JWT; signed with another secret; unsigned (alg none); no exp
    assert_refused(&s.post(Some("not.a.jwt"), None, &q), 401, invalid);
    let other = token_with(claims(json!({})), "another-secret-of-at-least-32-bytes!!");
    assert_refused(&s.post(Some(&other), None, &q), 401, invalid);
    let b64 = |v: Value| {
        use std::fmt::Write;
        // base64url without padding
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for ch in bytes.chunks(3) {
            let n = ch.iter().fold(0u32, |acc, b| acc << 8 | *b as u32) << (8 * (3 - ch.len()));
            for i in 0..=ch.len() {
                write!(out, "{}", A[(n >> (18 - 6 * i) & 63) as usize] as char).unwrap();
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(json!({})))
    );
    assert_refused(&s.post(Some(&none), None, &q), 401, invalid);
    let good = token_with(claims(json!({})), SECRET);
    let (head, rest) = good.split_once('.').unwrap();
    let tampered = format!(
        "{head}.{}.{}",
        b64(claims(json!({"tenant": f.b}))),
        rest.split_once('.').unwrap().1
    );
    assert_refused(&s.post(Some(&tampered), None, &q), 401, invalid);
    let no_exp = token_with(claims(json!({"exp": null})), SECRET);
    assert_refused(&s.post(Some(&no_exp), None, &q), 401, invalid);
    // expired (past the leeway); not valid before a time in the future
    let expired = token_with(claims(json!({"exp": now() - 60})), SECRET);
    assert_refused(
        &s.post(Some(&expired), None, &q),
        401,
        "the token has expired",
    );
    let early = token_with(claims(json!({"nbf": now() + 3600})), SECRET);
    assert_refused(
        &s.post(Some(&early), None, &q),
        401,
        "the token is not valid yet (nbf)",
    );
    let started = token_with(claims(json!({"nbf": now() - 10})), SECRET);
    assert_eq!(s.post(Some(&started), None, &q).status, 200);
    // claims naming no tenant or user
    let t = token_with(claims(json!({"tenant": null})), SECRET);
    assert_refused(
        &s.post(Some(&t), None, &q),
        401,
        "the token has no usable \"tenant\" claim",
    );
    let t = token_with(claims(json!({"sub": ""})), SECRET);
    assert_refused(
        &s.post(Some(&t), None, &q),
        401,
        "the token has no usable \"sub\" claim",
    );
    let t = token_with(claims(json!({"sub": 42})), SECRET);
    assert_refused(
        &s.post(Some(&t), None, &q),
        401,
        "the token has no usable \"sub\" claim",
    );
    // a character the database cannot hold is the token's fault, not the server's
    let t = token_with(claims(json!({"tenant": format!("{}\u{0}", f.a)})), SECRET);
    assert_refused(
        &s.post(Some(&t), None, &q),
        401,
        "the token has no usable \"tenant\" claim",
    );

    // 403, decided by udm_use: a tenant the server's role is not a member of, a user who is not a
    // member of the tenant, a tenant that does not exist, an id that names no user
    let forbidden = "the token's user may not use this tenant";
    for (tenant, user) in [
        (f.c.as_str(), f.email["frank"].as_str()),
        (f.a.as_str(), f.email["dave"].as_str()),
        (f.b.as_str(), f.email["bob"].as_str()),
        ("no_such_tenant", email.as_str()),
        (f.a.as_str(), "'; DROP TABLE x; --"),
    ] {
        let r = s.post(Some(&token(tenant, user)), None, &q);
        assert_refused(&r, 403, forbidden);
    }
    // and the connections went back to the pool in order: a good token still works
    assert_eq!(s.post(Some(&f.token(&f.b, "erin")), None, &q).status, 200);
}

#[test]
fn rs256_tokens_with_a_public_key_file() {
    let f = Fixture::new();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("rsa"));
    std::fs::create_dir_all(&dir).unwrap();
    let key = |name: &str| {
        let private = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .arg("-out")
                .arg(&public)
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl");
        (std::fs::read(&private).unwrap(), public)
    };
    let (private, public) = key("server");
    let (other, _) = key("other");
    let rs = |pem: &[u8], claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap(),
        )
        .unwrap()
    };
    let claims = json!({"tenant": f.a, "sub": f.email["bob"], "exp": now() + 300});
    let q = json!({"query": "{ __typename }"});
    // RS256 only: an HS256 token (even one signed with the public key's bytes) is refused
    let s = Server::start(
        &f.role,
        &[
            ("jwt_secret", ""),
            ("jwt_public_key_file", public.to_str().unwrap()),
        ],
    );
    assert_eq!(
        s.post(Some(&rs(&private, claims.clone())), None, &q).status,
        200
    );
    assert_refused(
        &s.post(Some(&rs(&other, claims.clone())), None, &q),
        401,
        "invalid token",
    );
    let pem = std::fs::read_to_string(&public).unwrap();
    assert_refused(
        &s.post(Some(&token_with(claims.clone(), &pem)), None, &q),
        401,
        "invalid token",
    );
    drop(s);
    // both keys configured; custom claim names
    let s = Server::start(
        &f.role,
        &[
            ("jwt_public_key_file", public.to_str().unwrap()),
            ("tenant_claim", "org"),
            ("user_claim", "email"),
        ],
    );
    let custom = json!({"org": f.a, "email": f.email["bob"], "exp": now() + 300});
    assert_eq!(
        s.post(Some(&rs(&private, custom.clone())), None, &q).status,
        200
    );
    assert_eq!(
        s.post(Some(&token_with(custom, SECRET)), None, &q).status,
        200
    );
    assert_refused(
        &s.post(Some(&rs(&private, claims)), None, &q),
        401,
        "the token has no usable \"org\" claim",
    );
}

#[test]
fn media_types_status_codes_and_limits() {
    let f = Fixture::new();
    let s = f.server(&[("max_body_bytes", "4096")]);
    let t = f.token(&f.a, "alice");
    let gr = "application/graphql-response+json";
    let parse = json!({"query": "{ noteCollection { "});
    let invalid = json!({"query": "{ noSuchField }"});
    let good = json!({"query": "{ __typename }"});
    // application/graphql-response+json: requests that fail before execution are 400
    for (body, code) in [
        (&parse, "GRAPHQL_PARSE_FAILED"),
        (&invalid, "GRAPHQL_VALIDATION_FAILED"),
    ] {
        let r = s.post(Some(&t), Some(gr), body);
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.content_type().starts_with(gr), "{}", r.content_type());
        let v = r.json();
        assert_eq!(v["errors"][0]["extensions"]["code"], code, "{v}");
        assert!(v.get("data").is_none());
        // application/json: 200 with the same GraphQL response
        let r = s.post(Some(&t), Some("application/json"), body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.content_type().starts_with("application/json"));
        assert_eq!(r.json(), v);
    }
    // variables of the wrong type: a request error too
    let r = s.post(
        Some(&t),
        Some(gr),
        &json!({"query": "query($n: Int!) { noteCollection(first: $n) { totalCount } }", "variables": {"n": "x"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // the media type by Accept
    for (accept, expect) in [
        (None, "application/json"),
        (Some(gr), gr),
        (Some("application/json"), "application/json"),
        (Some("*/*"), "application/json"),
        (
            Some("application/json;q=0.5, application/graphql-response+json"),
            gr,
        ),
        (
            Some("application/graphql-response+json;q=0.4, application/json;q=0.9"),
            "application/json",
        ),
        (
            Some("text/html, application/graphql-response+json;q=0.1"),
            gr,
        ),
    ] {
        let r = s.post(Some(&t), accept, &good);
        assert_eq!(r.status, 200, "{accept:?}: {}", r.body);
        assert!(
            r.content_type().starts_with(expect),
            "{accept:?}: {}",
            r.content_type()
        );
    }
    for accept in [
        "text/html",
        "application/xml, text/plain",
        "application/json;q=0",
    ] {
        let r = s.post(Some(&t), Some(accept), &good);
        assert_eq!(r.status, 406, "{accept}: {}", r.body);
    }
    // malformed requests: 400 whatever the media type, before the token is looked at
    for body in [
        "not json",
        "[1]",
        r#"{"query": 1}"#,
        r#"{"variables": {}}"#,
        r#"{"query": "{ __typename }", "variables": [1]}"#,
        r#"{"query": "{ __typename }", "operationName": 5}"#,
    ] {
        for accept in ["application/json", gr] {
            let r = s.request(
                "POST",
                "/graphql",
                &[("Content-Type", "application/json"), ("Accept", accept)],
                Some(body.as_bytes()),
            );
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert_eq!(r.json()["errors"][0]["extensions"]["code"], "BAD_REQUEST");
        }
    }
    // U+0000, which PostgreSQL's text and jsonb cannot hold, anywhere in a request: 400, not 500
    for body in [
        json!({"query": "{ __typename } # \u{0}"}),
        json!({"query": "{ __typename }", "operationName": "a\u{0}"}),
        json!({"query": "query($x: String) { __typename }", "variables": {"x": "a\u{0}b"}}),
        json!({"query": "query($x: JSON) { __typename }", "variables": {"x": [{"k\u{0}": 1}]}}),
    ] {
        let r = s.post(Some(&t), Some(gr), &body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["errors"][0]["extensions"]["code"], "BAD_REQUEST");
    }
    let r = s.request(
        "POST",
        "/graphql",
        &[("Content-Type", "text/plain")],
        Some(good.to_string().as_bytes()),
    );
    assert_eq!(r.status, 415, "{}", r.body);
    // the body limit
    let big = json!({"query": format!("{{ __typename }} # {}", "x".repeat(5000))});
    let r = s.post(Some(&t), None, &big);
    assert_eq!(r.status, 413, "{}", r.body);
    // subscriptions are not served over HTTP
    let r = s.post(
        Some(&t),
        Some(gr),
        &json!({"query": "subscription { note { action } }"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // other methods and paths
    assert_eq!(s.request("PUT", "/graphql", &[], Some(b"{}")).status, 405);
    assert_eq!(s.request("GET", "/nowhere", &[], None).status, 404);
    // health: the process, and the database
    let r = s.request("GET", "/healthz", &[], None);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = s.request("GET", "/readyz", &[], None);
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));
}

const BROWSER: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[test]
fn get_graphql_gives_browsers_the_explorer_and_everyone_else_graphql() {
    let f = Fixture::new();
    let s = f.server(&[]);
    let t = f.token(&f.a, "alice");
    // a browser's navigation, or text/html alone, without a query: the page, with its policy
    for accept in [BROWSER, "text/html"] {
        let r = s.request("GET", "/graphql", &[("Accept", accept)], None);
        assert_eq!(r.status, 200, "{accept}: {}", r.body);
        assert_eq!(r.content_type(), "text/html; charset=utf-8");
        assert!(r.body.starts_with("<!doctype html>"), "{}", r.body);
        assert!(r.body.contains("<title>udm GraphQL explorer</title>"));
        assert!(r.body.contains("graphql-transport-ws"));
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(
            csp.contains("connect-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("vary"), Some("Accept"));
        // the page holds no token, key or setting of this server
        for secret in [SECRET, t.as_str(), f.role.as_str(), &f.a] {
            assert!(!r.body.contains(secret), "{secret}");
        }
    }
    // the same request as before the explorer: GraphQL clients, curl and no Accept get the
    // GraphQL answer to a GET without a query (400), whatever the token
    for accept in [
        Some("application/json"),
        Some("application/graphql-response+json"),
        Some("*/*"),
        Some("text/html;q=0.5, application/json"),
        None,
    ] {
        let mut h = vec![("Authorization", format!("Bearer {t}"))];
        if let Some(a) = accept {
            h.push(("Accept", a.to_string()));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = s.request("GET", "/graphql", &h, None);
        assert_eq!(r.status, 400, "{accept:?}: {}", r.body);
        assert!(
            r.content_type().starts_with("application/"),
            "{accept:?}: {}",
            r.content_type()
        );
        let v = r.json();
        assert_eq!(v["errors"][0]["extensions"]["code"], "BAD_REQUEST", "{v}");
        assert_eq!(
            v["errors"][0]["message"], "\"query\" must be a string",
            "{v}"
        );
    }
    // with a query, a browser gets GraphQL (JSON), and text/html alone still gets 406
    let path = format!("/graphql?query={}", enc("{ __typename }"));
    let auth = format!("Bearer {t}");
    let r = s.request(
        "GET",
        &path,
        &[("Accept", BROWSER), ("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type().starts_with("application/json"));
    assert_eq!(r.json()["data"]["__typename"], "Query", "{}", r.body);
    assert_eq!(r.header("vary"), Some("Accept"));
    let r = s.request(
        "GET",
        &path,
        &[("Accept", "text/html"), ("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 406, "{}", r.body);
    // the page is for GET only: a POST with text/html is still refused (406)
    let r = s.request(
        "POST",
        "/graphql",
        &[
            ("Accept", "text/html"),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"query": "{ __typename }"}"#),
    );
    assert_eq!(r.status, 406, "{}", r.body);
}

#[test]
fn a_database_that_does_not_answer() {
    let f = Fixture::new();
    // a port nothing listens on
    let mut s = Server::start(&f.role, &[("pool_timeout_ms", "2000")]);
    drop(s);
    let url = conn_string(&f.role).replace(
        &format!(
            "port={}",
            std::env::var("UDM_TEST_PORT").unwrap_or("5498".into())
        ),
        "port=1",
    );
    s = Server::start(
        &f.role,
        &[("database_url", &url), ("pool_timeout_ms", "2000")],
    );
    assert_eq!(s.request("GET", "/healthz", &[], None).status, 200);
    assert_eq!(s.request("GET", "/readyz", &[], None).status, 503);
    let r = s.post(
        Some(&f.token(&f.a, "bob")),
        None,
        &json!({"query": "{ __typename }"}),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json()["errors"][0]["message"],
        "the database is not available; try again"
    );
    assert!(
        !r.body.contains("port") && !r.body.contains("sock"),
        "{}",
        r.body
    );
}

#[test]
fn the_statement_timeout_holds_for_every_request() {
    let f = Fixture::new();
    let mut adm = admin();
    adm.execute("SELECT udm_use($1, $2)", &[&f.a, &f.email["alice"]])
        .unwrap();
    adm.execute(
        &format!(
            "INSERT INTO {}.note (title) SELECT 'n' || i FROM generate_series(1, 20000) i",
            ident(&f.a)
        ),
        &[],
    )
    .unwrap();
    let q = r#"{ noteCollection(filter: {title: {like: "%9%9%"}}) { totalCount } }"#;
    let t = f.token(&f.a, "alice");
    let normal = f.server(&[]);
    let r = normal.gql(&t, q, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["data"]["noteCollection"]["totalCount"]
            .as_i64()
            .unwrap()
            > 100
    );
    let s = f.server(&[("statement_timeout_ms", "1")]);
    let r = s.gql(&t, q, json!({}));
    let v = r.json();
    // either the whole statement was cancelled (504), or the field's statement (its error)
    if r.status == 504 {
        assert_eq!(v["errors"][0]["extensions"]["code"], "TIMEOUT", "{v}");
    } else {
        assert_eq!(r.status, 200, "{v}");
        assert_eq!(v["errors"][0]["extensions"]["sqlstate"], "57014", "{v}");
    }
    // the timeout is the transaction's: the connection serves the next request normally
    let r = normal.gql(&t, q, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn interleaved_tenants_and_users_over_a_pool_of_two_leak_nothing() {
    let f = Fixture::new();
    let app = unique("udm-server-pool2-");
    let url = conn_string(&f.role).replace(
        "application_name=udm-tests",
        &format!("application_name={app}"),
    );
    let s = f.server(&[("database_url", &url), ("pool_size", "2")]);
    const ROUNDS: usize = 12;
    // (tenant, user, may write, titles of whom they see)
    let actors: Vec<(String, &str, bool, Vec<&str>)> = vec![
        (f.a.clone(), "alice", true, vec!["alice", "bob"]),
        (f.a.clone(), "bob", true, vec!["bob"]),
        (f.a.clone(), "carol", false, vec![]),
        (f.b.clone(), "dave", true, vec!["dave", "erin"]),
        (f.b.clone(), "erin", true, vec!["erin"]),
    ];
    let addr = s.addr.clone();
    std::thread::scope(|scope| {
        for (tenant, user, writes, sees) in &actors {
            let (f, addr) = (&f, addr.clone());
            scope.spawn(move || {
                let tok = f.token(tenant, user);
                let auth = format!("Bearer {tok}");
                let post = |q: &str, vars: Value| {
                    let body = json!({"query": q, "variables": vars}).to_string();
                    request(
                        &addr,
                        "POST",
                        "/graphql",
                        &[
                            ("Content-Type", "application/json"),
                            ("Accept", "application/graphql-response+json"),
                            ("Authorization", &auth),
                        ],
                        Some(body.as_bytes()),
                    )
                };
                for i in 0..ROUNDS {
                    let title = format!("{user}-{i:02}");
                    let v = post(INSERT, json!({"t": title})).json();
                    if *writes {
                        let rec = &v["data"]["insertNote"]["records"][0];
                        assert_eq!(rec["title"], title.as_str(), "{user}: {v}");
                        assert_eq!(rec["ownerId"], f.id[user].as_str(), "{user}: {v}");
                        assert_eq!(rec["createdBy"], f.id[user].as_str(), "{user}: {v}");
                    } else {
                        assert_eq!(v["data"], Value::Null, "{user}: {v}");
                        assert_eq!(
                            v["errors"][0]["extensions"]["code"], "FORBIDDEN",
                            "{user}: {v}"
                        );
                    }
                    let v = post(LIST, json!({})).json();
                    let seen = titles(&v);
                    for t in &seen {
                        let who = t.split('-').next().unwrap();
                        assert!(sees.contains(&who), "{user} in {tenant} saw {t}: {v}");
                    }
                    let own = seen
                        .iter()
                        .filter(|t| t.starts_with(&format!("{user}-")))
                        .count();
                    assert_eq!(own, if *writes { i + 1 } else { 0 }, "{user}: {v}");
                    for n in v["data"]["noteCollection"]["nodes"].as_array().unwrap() {
                        let who = n["title"].as_str().unwrap().split('-').next().unwrap();
                        assert_eq!(n["ownerId"], f.id[who].as_str());
                    }
                    // a refused request in between: another tenant's user, and no token
                    let intruder = token(
                        tenant,
                        &f.email[if tenant == &f.a { "dave" } else { "bob" }],
                    );
                    let r = request(
                        &addr,
                        "POST",
                        "/graphql",
                        &[
                            ("Content-Type", "application/json"),
                            ("Authorization", &format!("Bearer {intruder}")),
                        ],
                        Some(json!({"query": LIST}).to_string().as_bytes()),
                    );
                    assert_eq!(r.status, 403, "{}", r.body);
                }
            });
        }
    });
    // what the database holds: every write recorded as its user's, in its tenant
    let mut adm = admin();
    for (t, users) in [(&f.a, ["alice", "bob"]), (&f.b, ["dave", "erin"])] {
        let rows = adm
            .query(
                &format!(
                    "SELECT title, owner_id::text, created_by FROM {}.note ORDER BY title",
                    ident(t)
                ),
                &[],
            )
            .unwrap();
        assert_eq!(rows.len(), 2 * ROUNDS);
        for r in rows {
            let (title, owner, by): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let who = title.split('-').next().unwrap();
            assert!(users.contains(&who), "{title} in {t}");
            assert_eq!(
                (owner.as_str(), by.as_str()),
                (f.id[who].as_str(), f.id[who].as_str())
            );
        }
    }
    // and the server held no more than its two connections
    let n: i64 = adm
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert!((1..=2).contains(&n), "{n} connections");
}

#[test]
fn configuration_from_a_toml_file_and_the_environment() {
    let f = Fixture::new();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("conf"));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let file = dir.join("udm-server.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = {:?}\nlisten = \"127.0.0.1:0\"\njwt_secret_file = {:?}\ntenant_claim = \"org\"\npool_size = 3\n",
            conn_string(&f.role),
            secret_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let start = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_udm-server"));
        for (k, _) in std::env::vars() {
            if k.starts_with("UDM_SERVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).envs(env.iter().copied());
        cmd
    };
    // the file alone: the claim name comes from it, the secret from its file
    let mut child = start(&["--config", file.to_str().unwrap()], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("udm-server listening on http://")
        .unwrap()
        .to_string();
    let tok = token_with(
        json!({"org": f.a, "sub": f.email["bob"], "exp": now() + 300}),
        SECRET,
    );
    let r = request(
        &addr,
        "POST",
        "/graphql",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {tok}")),
        ],
        Some(br#"{"query": "{ __typename }"}"#),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status, 200, "{}", r.body);
    // refusals at start: exit code 2 and a message naming the problem, never the secret
    for (args, env, expect) in [
        (
            vec!["--config", file.to_str().unwrap()],
            vec![("UDM_SERVER_POOL_SIZE", "many")],
            "UDM_SERVER_POOL_SIZE must be a whole number",
        ),
        (
            vec!["--config", file.to_str().unwrap()],
            vec![("UDM_SERVER_POOL_SIZE", "0")],
            "pool_size",
        ),
        (
            vec!["--config", file.to_str().unwrap()],
            vec![("UDM_SERVER_MAX_CONNECTIONS_PER_TOKEN", "0")],
            "max_connections_per_token must be at least 1",
        ),
        (
            vec![],
            vec![("UDM_SERVER_JWT_SECRET", SECRET)],
            "database_url is required",
        ),
        (
            vec![],
            vec![("UDM_SERVER_DATABASE_URL", "host=/tmp")],
            "no token key",
        ),
        (
            vec![],
            vec![
                ("UDM_SERVER_DATABASE_URL", "host=/tmp"),
                ("UDM_SERVER_JWT_SECRET", "short"),
            ],
            "at least 32 bytes",
        ),
        (
            vec!["--config", "/nonexistent.toml"],
            vec![],
            "cannot read /nonexistent.toml",
        ),
        (vec!["--bogus"], vec![], "usage"),
    ] {
        let out = start(&args, &env).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(expect), "{args:?} {env:?}: {err}");
        assert!(!err.contains(SECRET));
    }
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "database_url = \"x\"\njwt_secret = \"0123456789abcdef0123456789abcdef\"\nno_such_key = 1\n").unwrap();
    let out = start(&["--config", bad.to_str().unwrap()], &[])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no_such_key"), "{err}");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let f = Fixture::new();
    let mut s = f.server(&[]);
    let t = f.token(&f.a, "bob");
    assert_eq!(s.gql(&t, "{ __typename }", json!({})).status, 200);
    let status = s.terminate(std::time::Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        s.log()
    );
    assert!(s.log().contains("shutting down"), "{}", s.log());
}

#[test]
fn udm_server_token_issues_what_the_server_accepts() {
    let f = Fixture::new();
    let s = f.server(&[("user_claim", "email")]);
    let issue = |ttl: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_udm-server"))
            .args(["token", &f.a, &f.email["bob"], ttl])
            .env("UDM_SERVER_DATABASE_URL", conn_string(&f.role))
            .env("UDM_SERVER_JWT_SECRET", SECRET)
            .env("UDM_SERVER_USER_CLAIM", "email")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let t = issue("600");
    let r = s.gql(&t, INSERT, json!({"t": "by token"}));
    assert_eq!(
        r.json()["data"]["insertNote"]["records"][0]["ownerId"],
        f.id["bob"].as_str(),
        "{}",
        r.body
    );
    // its exp is honoured: with no leeway, a token of no seconds is refused
    drop(s);
    let s = f.server(&[("user_claim", "email"), ("jwt_leeway_s", "0")]);
    let t = issue("0");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = s.post(Some(&t), None, &json!({"query": "{ __typename }"}));
    assert_refused(&r, 401, "the token has expired");
}
