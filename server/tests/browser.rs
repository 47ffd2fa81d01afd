//! The explorer in a real browser: Debian's headless Chromium (driven by npm `puppeteer-core`,
//! `server/tests/browser/explorer.js`) opens `http://<server>/graphql`, is refused with a bad
//! token (401 in the page), runs a query with a good one and shows the record, keeps the token
//! for the tab, lists the schema, and receives in its subscription pane a record inserted over
//! SQL while it is subscribed. The screenshot is kept as `target/artifacts/explorer.png`.
//! Without Chromium (`make deps` installs it) or the npm packages (`make test` installs them)
//! this test fails: it does not skip.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts")
}

#[test]
fn the_explorer_in_headless_chromium_queries_is_refused_and_subscribes() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (make deps)"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/puppeteer-core/package.json")
            .exists(),
        "puppeteer-core is missing: npm ci --prefix server/tests/browser (make test does it)"
    );

    // a tenant with an entity and a record; the server's role serves it
    let mut adm = admin();
    let t = tenant(&mut adm, "explorer");
    let user = format!("{}@explorer.test", unique("eve"));
    adm.execute("SELECT udm_use($1, $2)", &[&t, &user]).unwrap();
    adm.query_one(
        r#"SELECT udm_define_entity('item', '{"fields": [
             {"name": "title", "type": "text", "required": true}]}')"#,
        &[],
    )
    .unwrap();
    adm.execute(
        &format!("INSERT INTO \"{t}\".item (title) VALUES ('first item, from SQL')"),
        &[],
    )
    .unwrap();
    let horizon = adm
        .query_one("SELECT udm_events(0, 1)", &[])
        .unwrap()
        .get::<_, Value>(0)["horizon"]
        .as_i64()
        .unwrap();
    let role = unique("udm_server_explorer_");
    let out = Command::new(env!("CARGO_BIN_EXE_udm-server"))
        .args(["setup-role", &conn_string("postgres"), &role, &t])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Server::start(&role, &[("poll_interval_ms", "50")]);

    std::fs::create_dir_all(artifacts()).unwrap();
    let shot = artifacts().join("explorer.png");
    let _ = std::fs::remove_file(&shot);
    let bad = token_with(
        json!({"tenant": t, "sub": user, "exp": now() + 300}),
        "not-the-server-secret-0123456789abcdef",
    );
    let spec = json!({
        "url": format!("http://{}/graphql", s.addr),
        "token": token(&t, &user),
        "bad_token": bad,
        "query": "{ itemCollection(orderBy: [{title: ASC}]) { totalCount nodes { title } } }",
        "subscription": "subscription { itemChanged(actions: [INSERT]) { eventId action record { title } } }",
        "after": horizon,
        "screenshot": shot,
        "timeout_ms": 30_000,
    });
    let mut node = Command::new("node")
        .arg(dir.join("explorer.js"))
        .arg(spec.to_string())
        .env("PUPPETEER_SKIP_DOWNLOAD", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    // one JSON line per step; once the page has subscribed, a record is inserted over SQL
    let mut steps: Vec<Value> = Vec::new();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{steps:?}"));
        if v["step"] == "subscribed" {
            adm.execute(
                &format!(
                    "INSERT INTO \"{t}\".item (title) VALUES ('second item, while subscribed')"
                ),
                &[],
            )
            .unwrap();
        }
        steps.push(v);
    }
    let status = node.wait().unwrap();
    let step = |name: &str| -> &Value {
        steps
            .iter()
            .find(|v| v["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {steps:#?}\n{}", s.log()))
    };
    assert!(status.success(), "{status}: {steps:#?}\n{}", s.log());

    // the page: HTML, with a policy allowing only itself
    let page = step("page");
    assert_eq!(page["status"], 200, "{page}");
    assert_eq!(page["content_type"], "text/html; charset=utf-8", "{page}");
    assert_eq!(page["title"], "udm GraphQL explorer", "{page}");
    let csp = page["csp"].as_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");

    // a bad token: the server's 401 in the page
    let refused = step("bad_token");
    assert!(
        refused["status"].as_str().unwrap().starts_with("401"),
        "{refused}"
    );
    let body: Value = serde_json::from_str(refused["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    assert!(body.get("data").is_none(), "{body}");

    // the good token: the record
    let q = step("query");
    assert!(q["status"].as_str().unwrap().starts_with("200"), "{q}");
    let body: Value = serde_json::from_str(q["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["data"]["itemCollection"],
        json!({"totalCount": 1, "nodes": [{"title": "first item, from SQL"}]}),
        "{body}"
    );

    assert_eq!(step("reload")["token_kept"], true);

    // the schema, by introspection
    let schema = step("schema");
    let sdl = schema["result"].as_str().unwrap();
    assert!(
        schema["status"].as_str().unwrap().starts_with("200"),
        "{schema}"
    );
    assert!(
        sdl.contains("type Item {") && sdl.contains("  title: String!"),
        "{sdl}"
    );
    assert!(sdl.contains("subscription: Subscription"), "{sdl}");

    // the subscription pane received the insert made over SQL, and nothing else
    let log = step("log");
    assert_eq!(log["state"], "subscribed", "{log}");
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["kind"], "next", "{log}");
    let next: Value = serde_json::from_str(entries[0]["text"].as_str().unwrap()).unwrap();
    let changed = &next["data"]["itemChanged"];
    assert_eq!(changed["action"], "INSERT", "{next}");
    assert_eq!(
        changed["record"]["title"], "second item, while subscribed",
        "{next}"
    );
    let event = &next["extensions"]["eventId"];
    let event = event
        .as_i64()
        .or_else(|| event.as_str().and_then(|e| e.parse().ok()))
        .unwrap_or_else(|| panic!("no event id: {next}"));
    assert!(event > horizon, "{next}");
    // the record inserted over SQL is there for the query too
    let again: Value =
        serde_json::from_str(step("query_again")["result"].as_str().unwrap()).unwrap();
    assert_eq!(again["data"]["itemCollection"]["totalCount"], 2, "{again}");
    let stopped = step("stopped");
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["stop_disabled"], true, "{stopped}");

    // no script error, no policy violation, nothing fetched from elsewhere
    let done = step("done");
    assert_eq!(done["problems"], json!([]), "{done}");
    assert_eq!(done["foreign_requests"], json!([]), "{done}");

    // the screenshot, a PNG
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );
}
