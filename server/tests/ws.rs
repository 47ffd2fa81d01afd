//! Subscriptions over WebSocket (graphql-transport-ws): the protocol's refusals and close codes
//! with a raw WebSocket client, and subscriptions with the npm `graphql-ws` client — an insert
//! delivered, a change the filter excludes and a record the subscriber may not see not
//! delivered, and resuming after the last event id seen.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

struct Fx {
    t: String,
    other: String,
    role: String,
    alice: String,
    bob: String,
    carol: String,
}

/// A tenant with notes seen by their owner (and by admin alice); bob is an editor, carol an
/// editor who may not read the field `secret`. Another
/// tenant the server's role is not a member of.
fn fixture() -> Fx {
    let mut adm = admin();
    let t = tenant(&mut adm, "wsa");
    let other = tenant(&mut adm, "wsb");
    let (alice, bob, carol) = (
        format!("{}@ws.test", unique("alice")),
        format!("{}@ws.test", unique("bob")),
        format!("{}@ws.test", unique("carol")),
    );
    for u in [&alice, &bob, &carol] {
        adm.query_one(
            "SELECT udm_create_user($1, 'WS user', 'a-test-password')",
            &[u],
        )
        .unwrap();
    }
    adm.execute("SELECT udm_use($1)", &[&t]).unwrap();
    adm.query_one(
        r#"SELECT udm_define_entity('note', '{"fields": [
             {"name": "title", "type": "text", "required": true},
             {"name": "secret", "type": "text"},
             {"name": "owner_id", "type": "user", "on_delete": "cascade"}],
           "access": {"scope": "self", "owner": "owner_id"}}')"#,
        &[],
    )
    .unwrap();
    adm.query_one("SELECT udm_add_member($1, $2, 'admin')", &[&t, &alice])
        .unwrap();
    adm.execute("SELECT udm_use($1, $2)", &[&t, &alice])
        .unwrap();
    adm.query_one("SELECT udm_add_member($1, $2, 'editor')", &[&t, &bob])
        .unwrap();
    // carol: an editor who may not read `secret`
    adm.query_one(
        r#"SELECT udm_define_role('nosecret', 'editor', '{"entities": {"note": {"fields": {"secret": {"read": false}}}}}')"#,
        &[],
    )
    .unwrap();
    adm.query_one("SELECT udm_add_member($1, $2, 'nosecret')", &[&t, &carol])
        .unwrap();
    adm.execute("RESET udm.tenant", &[]).unwrap();
    let role = unique("udm_server_ws_");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_udm-server"))
        .args(["setup-role", &conn_string("postgres"), &role, &t])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Fx {
        t,
        other,
        role,
        alice,
        bob,
        carol,
    }
}

fn connect(s: &Server, protocol: Option<&str>) -> Ws {
    let mut req = format!("ws://{}/graphql", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, _) = tungstenite::connect(req).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).unwrap();
}

/// The next text message as JSON, or the close code.
fn next(ws: &mut Ws) -> Result<Value, u16> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(f)) => return Err(f.map(|f| u16::from(f.code)).unwrap_or(1005)),
            Ok(_) => continue,
            Err(e) => panic!("websocket: {e}"),
        }
    }
}

fn closed_with(ws: &mut Ws) -> u16 {
    loop {
        match next(ws) {
            Err(code) => return code,
            Ok(m) => assert!(m["type"] == "pong" || m["type"] == "connection_ack", "{m}"),
        }
    }
}

fn init(ws: &mut Ws, token: &str) {
    send(
        ws,
        json!({"type": "connection_init", "payload": {"token": token}}),
    );
    assert_eq!(next(ws).unwrap()["type"], "connection_ack");
}

#[test]
fn protocol_refusals_and_close_codes() {
    let f = fixture();
    let s = Server::start(&f.role, &[("connection_init_timeout_ms", "500")]);
    let p = Some("graphql-transport-ws");
    let good = token(&f.t, &f.bob);
    // no subprotocol: 4406
    let mut ws = connect(&s, None);
    assert_eq!(closed_with(&mut ws), 4406);
    // no connection_init in time: 4408
    let mut ws = connect(&s, p);
    assert_eq!(closed_with(&mut ws), 4408);
    // subscribe before the ack: 4401
    let mut ws = connect(&s, p);
    send(
        &mut ws,
        json!({"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }"}}),
    );
    assert_eq!(closed_with(&mut ws), 4401);
    // tokens: none, bad, expired, a tenant the server's role may not use, a non-member: 4403
    let expired = token_with(
        json!({"tenant": f.t, "sub": f.bob, "exp": now() - 60}),
        SECRET,
    );
    for payload in [
        json!(null),
        json!({"token": "not.a.jwt"}),
        json!({"token": expired}),
        json!({"token": token(&f.other, &f.bob)}),
        json!({"token": token(&f.t, "nobody@ws.test")}),
    ] {
        let mut ws = connect(&s, p);
        send(
            &mut ws,
            json!({"type": "connection_init", "payload": payload}),
        );
        assert_eq!(closed_with(&mut ws), 4403, "{payload}");
    }
    // the token as an Authorization value works too; a second init: 4429
    let mut ws = connect(&s, p);
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {good}")}}),
    );
    assert_eq!(next(&mut ws).unwrap()["type"], "connection_ack");
    // ping, pong
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(next(&mut ws).unwrap()["type"], "pong");
    // a query: next, complete
    send(
        &mut ws,
        json!({"id": "q", "type": "subscribe", "payload": {"query": "{ noteCollection { totalCount } }"}}),
    );
    let m = next(&mut ws).unwrap();
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some("q"), Some("next")),
        "{m}"
    );
    assert_eq!(
        m["payload"]["data"]["noteCollection"]["totalCount"], 0,
        "{m}"
    );
    assert_eq!(next(&mut ws).unwrap()["type"], "complete");
    // an invalid subscription: error, with the database's validation error
    send(
        &mut ws,
        json!({"id": "e", "type": "subscribe", "payload": {"query": "subscription { noSuchChanged { id } }"}}),
    );
    let m = next(&mut ws).unwrap();
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some("e"), Some("error")),
        "{m}"
    );
    assert_eq!(
        m["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{m}"
    );
    // a subscription, then the same id again: 4409
    let sub = json!({"id": "s", "type": "subscribe", "payload": {"query": "subscription { noteChanged { id } }"}});
    send(&mut ws, sub.clone());
    send(&mut ws, sub);
    assert_eq!(closed_with(&mut ws), 4409);
    let mut ws = connect(&s, p);
    init(&mut ws, &good);
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"token": good}}),
    );
    assert_eq!(closed_with(&mut ws), 4429);
    // not a message of the protocol: 4400
    for bad in [
        "not json",
        r#"{"type": "nonsense"}"#,
        r#"{"type": "subscribe", "payload": {"query": "{ __typename }"}}"#,
    ] {
        let mut ws = connect(&s, p);
        init(&mut ws, &good);
        ws.send(Message::Text(bad.into())).unwrap();
        assert_eq!(closed_with(&mut ws), 4400, "{bad}");
    }
}

#[test]
fn sigterm_closes_websockets_with_1001() {
    let f = fixture();
    let mut s = Server::start(&f.role, &[]);
    let mut ws = connect(&s, Some("graphql-transport-ws"));
    init(&mut ws, &token(&f.t, &f.bob));
    let killer = std::thread::spawn(move || {
        let st = s.terminate(Duration::from_secs(10));
        (st, s)
    });
    assert_eq!(closed_with(&mut ws), 1001);
    let (st, s) = killer.join().unwrap();
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", s.log());
}

/// The current event horizon of the tenant (a subscription starting there gets what follows).
fn horizon(t: &str) -> i64 {
    let mut adm = admin();
    adm.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let v: Value = adm
        .query_one("SELECT udm_events(0, 1)", &[])
        .unwrap()
        .get(0);
    v["horizon"].as_i64().unwrap()
}

/// Runs the graphql-ws client; returns its output lines once it printed `count` nexts (or timed
/// out) and the child.
fn client(
    s: &Server,
    token: &str,
    query: &str,
    after: i64,
    count: usize,
    timeout_ms: u64,
) -> std::process::Child {
    let spec = json!({
        "url": format!("ws://{}/graphql", s.addr),
        "token": token,
        "subscriptions": [{"query": query, "after": after}],
        "count": count,
        "timeout_ms": timeout_ms,
    });
    std::process::Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws/client.mjs"))
        .arg(spec.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node")
}

fn lines(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

fn nexts(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| l.get("next").map(|n| n["data"]["noteChanged"].clone()))
        .collect()
}

#[test]
fn graphql_ws_client_receives_what_the_subscriber_may_see_in_order_and_resumes() {
    let f = fixture();
    let s = Server::start(&f.role, &[("poll_interval_ms", "50")]);
    let sub = r#"subscription { noteChanged(filter: {title: {like: "keep%"}}) {
                   eventId action id record { title } changedFields old { title secret } } }"#;
    let start = horizon(&f.t);
    // carol may not select the field she may not read
    let refused = lines(client(&s, &token(&f.t, &f.carol), sub, start, 1, 3_000));
    let e = refused
        .iter()
        .find_map(|l| l.get("error"))
        .expect("an error");
    assert_eq!(
        e[0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
        "{refused:?}"
    );
    let bob = client(&s, &token(&f.t, &f.bob), sub, start, 4, 20_000);
    let alice = client(&s, &token(&f.t, &f.alice), sub, start, 5, 20_000);
    // writes as the users, over HTTP
    let w = |user: &str, q: &str, vars: Value| -> Value {
        let r = s.gql(&token(&f.t, user), q, vars);
        let v = r.json();
        assert!(v.get("errors").is_none(), "{v}");
        v
    };
    let ins = r#"mutation($t: String!) { insertNote(objects: [{title: $t}]) { records { id } } }"#;
    let id = |v: Value| {
        v["data"]["insertNote"]["records"][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let upd = r#"mutation($id: UUID!, $t: String!, $s: String) { updateNote(id: $id, set: {title: $t, secret: $s}) { title } }"#;
    // alice's note, which bob may not see
    let a = id(w(&f.alice, ins, json!({"t": "keep-a"})));
    let b1 = id(w(&f.bob, ins, json!({"t": "keep-b1"})));
    // an insert and an update the filter excludes
    let b2 = id(w(&f.bob, ins, json!({"t": "drop-b2"})));
    w(
        &f.bob,
        r#"mutation($id: UUID!, $t: String!) { updateNote(id: $id, set: {title: $t}) { title } }"#,
        json!({"id": b2, "t": "drop-b2x"}),
    );
    // updates it matches, by alice
    w(&f.alice, upd, json!({"id": b1, "t": "keep-b1x", "s": "s1"}));
    w(&f.alice, upd, json!({"id": b1, "t": "keep-b1y", "s": "s2"}));
    let b3 = id(w(&f.bob, ins, json!({"t": "keep-b3"})));
    let got = nexts(&lines(bob));
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|n| (n["action"].as_str().unwrap(), n["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("INSERT", b1.as_str()),
            ("UPDATE", b1.as_str()),
            ("UPDATE", b1.as_str()),
            ("INSERT", b3.as_str())
        ],
        "{got:?}"
    );
    // the updates' old images and changed fields
    assert_eq!(got[1]["old"]["title"], "keep-b1", "{got:?}");
    assert_eq!(got[2]["old"]["title"], "keep-b1x", "{got:?}");
    assert_eq!(got[2]["old"]["secret"], "s1", "{got:?}");
    let mut changed: Vec<String> = serde_json::from_value(got[2]["changedFields"].clone()).unwrap();
    changed.sort();
    assert_eq!(changed, ["secret", "title"], "{got:?}");
    assert_eq!(got[3]["record"]["title"], "keep-b3", "{got:?}");
    // event ids increase
    let ids: Vec<i64> = got
        .iter()
        .map(|n| n["eventId"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // alice (admin) sees every matching change, her own note's too
    let all = nexts(&lines(alice));
    let seen: Vec<(&str, &str)> = all
        .iter()
        .map(|n| (n["action"].as_str().unwrap(), n["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("INSERT", a.as_str()),
            ("INSERT", b1.as_str()),
            ("UPDATE", b1.as_str()),
            ("UPDATE", b1.as_str()),
            ("INSERT", b3.as_str())
        ],
        "{all:?}"
    );
    assert_eq!(all[3]["old"]["secret"], "s1", "{all:?}");
    // resuming after the first event gets the ones after it, once, in order, and nothing else
    let again = lines(client(&s, &token(&f.t, &f.bob), sub, ids[0], 10, 2_000));
    let seen: Vec<String> = nexts(&again)
        .iter()
        .map(|n| n["eventId"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = ids[1..].iter().map(|i| i.to_string()).collect();
    assert_eq!(seen, want, "{again:?}");
    assert!(
        again.iter().any(|l| l.get("timeout").is_some()),
        "{again:?}"
    );
}

#[test]
fn a_slow_consumer_is_closed_with_1008() {
    let f = fixture();
    let s = Server::start(
        &f.role,
        &[("subscriber_buffer", "2"), ("poll_interval_ms", "50")],
    );
    let mut ws = connect(&s, Some("graphql-transport-ws"));
    init(&mut ws, &token(&f.t, &f.alice));
    let start = horizon(&f.t);
    send(
        &mut ws,
        json!({"id": "s", "type": "subscribe", "payload": {
            "query": "subscription { noteChanged { eventId record { title } } }",
            "extensions": {"after": start}}}),
    );
    let mut adm = admin();
    adm.execute("SELECT udm_use($1, $2)", &[&f.t, &f.alice])
        .unwrap();
    adm.execute(
        &format!(
            "INSERT INTO \"{}\".note (title) SELECT 'n' || i FROM generate_series(1, 300) i",
            f.t
        ),
        &[],
    )
    .unwrap();
    // the server queues at most 2 messages for this socket: reading nothing, it is closed
    std::thread::sleep(Duration::from_millis(500));
    let mut delivered = 0;
    let code = loop {
        match next(&mut ws) {
            Ok(m) => {
                assert_eq!(m["type"], "next", "{m}");
                delivered += 1;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, 1008, "after {delivered} messages");
    assert!(delivered < 300, "{delivered}");
}

#[test]
fn limits_per_socket_and_a_token_that_expires() {
    let f = fixture();
    let s = Server::start(
        &f.role,
        &[
            ("max_subscriptions_per_connection", "1"),
            ("jwt_leeway_s", "0"),
            ("poll_interval_ms", "50"),
        ],
    );
    let sub = |id: &str| json!({"id": id, "type": "subscribe", "payload": {"query": "subscription { noteChanged { eventId } }"}});
    // one operation at a time on this socket: the second is refused, the socket stays
    let mut ws = connect(&s, Some("graphql-transport-ws"));
    init(&mut ws, &token(&f.t, &f.alice));
    send(&mut ws, sub("a"));
    send(&mut ws, sub("b"));
    let m = next(&mut ws).unwrap();
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some("b"), Some("error")),
        "{m}"
    );
    assert_eq!(
        m["payload"][0]["extensions"]["code"], "LIMIT_EXCEEDED",
        "{m}"
    );
    // once "a" completes, another may start
    send(&mut ws, json!({"id": "a", "type": "complete"}));
    send(&mut ws, sub("c"));
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(next(&mut ws).unwrap()["type"], "pong");
    // a token that expires ends its subscription with an error
    let short = token_with(
        json!({"tenant": f.t, "sub": f.alice, "exp": now() + 2}),
        SECRET,
    );
    let mut ws = connect(&s, Some("graphql-transport-ws"));
    init(&mut ws, &short);
    send(&mut ws, sub("x"));
    let m = next(&mut ws).unwrap();
    assert_eq!(
        (m["id"].as_str(), m["type"].as_str()),
        (Some("x"), Some("error")),
        "{m}"
    );
    assert_eq!(m["payload"][0]["message"], "the token has expired", "{m}");
}

/// A subscribe message from `after`.
fn subscribe(ws: &mut Ws, id: &str, query: &str, after: i64) {
    send(
        ws,
        json!({"id": id, "type": "subscribe", "payload": {"query": query, "extensions": {"after": after}}}),
    );
}

/// The event ids and titles of the next `n` messages (all `next`s of subscription `id`).
fn events(ws: &mut Ws, id: &str, n: usize) -> Vec<(i64, String)> {
    (0..n)
        .map(|_| {
            let m = next(ws).unwrap();
            assert_eq!(
                (m["id"].as_str(), m["type"].as_str()),
                (Some(id), Some("next")),
                "{m}"
            );
            let c = &m["payload"]["data"]["noteChanged"];
            let id: i64 = m["payload"]["extensions"]["eventId"]
                .as_i64()
                .or_else(|| c["eventId"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| panic!("no event id: {m}"));
            (id, c["record"]["title"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// The value of a metric line (its name and labels as written) of `/metrics`.
fn metric(s: &Server, line: &str) -> Option<f64> {
    let r = s.request("GET", "/metrics", &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

fn insert_quietly(f: &Fx, titles: &[&str]) {
    let mut adm = admin();
    adm.execute("SELECT udm_use($1, $2)", &[&f.t, &f.alice])
        .unwrap();
    // no notification: the server's watcher finds the events by itself
    adm.batch_execute("SET udm.notify_changes = off").unwrap();
    for t in titles {
        adm.execute(
            &format!("INSERT INTO \"{}\".note (title) VALUES ($1)", f.t),
            &[t],
        )
        .unwrap();
    }
}

/// Subscriptions of one user with the same request share one feed (one reading of the events
/// for all of them), each still gets every event once and in order — also one that joins late
/// from an old cursor — with writers sending no notification; the process's one watcher
/// connection finds the events, and after that connection is killed, it connects again and
/// delivery goes on.
#[test]
fn subscriptions_share_a_feed_and_need_no_notifications() {
    let f = fixture();
    let s = Server::start(&f.role, &[("poll_interval_ms", "20")]);
    let q = "subscription { noteChanged { eventId record { title } } }";
    let start = horizon(&f.t);
    let mut a = connect(&s, Some("graphql-transport-ws"));
    let mut b = connect(&s, Some("graphql-transport-ws"));
    init(&mut a, &token(&f.t, &f.alice));
    init(&mut b, &token(&f.t, &f.alice));
    subscribe(&mut a, "a", q, start);
    subscribe(&mut b, "b", q, start);
    insert_quietly(&f, &["one", "two", "three"]);
    let got_a = events(&mut a, "a", 3);
    let got_b = events(&mut b, "b", 3);
    let titles: Vec<&str> = got_a.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(titles, ["one", "two", "three"], "{got_a:?}");
    assert!(got_a.windows(2).all(|w| w[0].0 < w[1].0), "{got_a:?}");
    assert_eq!(got_a, got_b);
    // a late subscriber from the old cursor is caught up; the others get nothing twice
    let mut c = connect(&s, Some("graphql-transport-ws"));
    init(&mut c, &token(&f.t, &f.alice));
    subscribe(&mut c, "c", q, start);
    assert_eq!(events(&mut c, "c", 3), got_a);
    insert_quietly(&f, &["four"]);
    for (ws, id) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        let e = events(ws, id, 1);
        assert_eq!(e[0].1, "four", "{id}: {e:?}");
        assert!(e[0].0 > got_a[2].0);
    }
    // one feed for the three, one watched tenant
    assert_eq!(metric(&s, "udm_server_subscriptions_open"), Some(3.0));
    assert_eq!(metric(&s, "udm_server_feeds_open"), Some(1.0));
    assert_eq!(metric(&s, "udm_server_watched_tenants"), Some(1.0));
    assert_eq!(metric(&s, "udm_server_watcher_connected"), Some(1.0));
    assert_eq!(metric(&s, "udm_server_events_delivered_total"), Some(12.0));
    // the watcher's connection is killed: it connects again, and the events still come
    let mut adm = admin();
    let killed: i64 = adm
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE usename = $1 AND application_name = 'udm-server watcher'",
            &[&f.role],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    insert_quietly(&f, &["five"]);
    for (ws, id) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        assert_eq!(events(ws, id, 1)[0].1, "five", "{id}");
    }
    // completing leaves the feed; the last one out closes it and the tenant is no longer watched
    for (ws, id) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        send(ws, json!({"id": id, "type": "complete"}));
        send(ws, json!({"type": "ping"}));
        assert_eq!(next(ws).unwrap()["type"], "pong");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&s, "udm_server_feeds_open") != Some(0.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&s, "udm_server_feeds_open"), Some(0.0));
    assert_eq!(metric(&s, "udm_server_subscriptions_open"), Some(0.0));
    assert_eq!(metric(&s, "udm_server_watched_tenants"), Some(0.0));
}

/// A token holds at most `max_connections_per_token` WebSockets and requests together: a third
/// socket is closed with 1008, a request gets 429 with Retry-After; another token is not held
/// back, and a closed socket gives its place back. `/metrics` counts requests by operation type
/// and status, with their latency and the pool.
#[test]
fn connections_per_token_and_metrics() {
    let f = fixture();
    let s = Server::start(&f.role, &[("max_connections_per_token", "2")]);
    let t = token(&f.t, &f.alice);
    let mut one = connect(&s, Some("graphql-transport-ws"));
    let mut two = connect(&s, Some("graphql-transport-ws"));
    init(&mut one, &t);
    init(&mut two, &t);
    let mut three = connect(&s, Some("graphql-transport-ws"));
    send(
        &mut three,
        json!({"type": "connection_init", "payload": {"token": t}}),
    );
    assert_eq!(closed_with(&mut three), 1008);
    let q = "{ noteCollection { totalCount } }";
    let r = s.gql(&t, q, json!({}));
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        r.json()["errors"][0]["extensions"]["code"],
        "TOO_MANY_CONNECTIONS"
    );
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("retry-after") && v == "1"));
    // another token of the same user is another token
    let other = token_with(
        json!({"tenant": f.t, "sub": f.alice, "exp": now() + 600, "jti": "second"}),
        SECRET,
    );
    assert_eq!(s.gql(&other, q, json!({})).status, 200);
    // a socket closes: its place is free again
    let _ = one.close(None);
    let _ = one.flush();
    drop(one);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut status = 0;
    while std::time::Instant::now() < deadline {
        status = s.gql(&t, q, json!({})).status;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status, 200);
    // a request the document refuses, and one with no token
    assert_eq!(s.gql(&t, "{ nope }", json!({})).status, 400);
    assert_eq!(s.post(None, None, &json!({"query": q})).status, 401);
    let ok = metric(
        &s,
        "udm_server_requests_total{operation=\"query\",status=\"200\"}",
    );
    assert!(ok.is_some_and(|n| n >= 2.0), "{ok:?}");
    // at least the one above (the loop may have met the socket still open)
    let refused = metric(
        &s,
        "udm_server_requests_total{operation=\"query\",status=\"429\"}",
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
    assert!(metric(
        &s,
        "udm_server_requests_total{operation=\"query\",status=\"400\"}"
    )
    .is_some());
    assert!(metric(
        &s,
        "udm_server_requests_total{operation=\"query\",status=\"401\"}"
    )
    .is_some());
    let n = metric(
        &s,
        "udm_server_request_duration_seconds_count{operation=\"query\"}",
    )
    .unwrap();
    let inf = metric(
        &s,
        "udm_server_request_duration_seconds_bucket{operation=\"query\",le=\"+Inf\"}",
    );
    assert_eq!(inf, Some(n));
    assert_eq!(metric(&s, "udm_server_pool_max"), Some(4.0));
    assert_eq!(metric(&s, "udm_server_pool_waiting"), Some(0.0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&s, "udm_server_websockets_open") != Some(1.0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&s, "udm_server_websockets_open"), Some(1.0));
    drop((two, three));
}

/// A subscriber that resumes after the last event id it saw, on a new server process after the
/// old one stopped, gets every event written meanwhile and after, once, in order: the events
/// are in the database, not in the server.
#[test]
fn resuming_after_a_server_restart_misses_nothing() {
    let f = fixture();
    let q = "subscription { noteChanged { eventId record { title } } }";
    let start = horizon(&f.t);
    let mut s = Server::start(&f.role, &[]);
    let mut ws = connect(&s, Some("graphql-transport-ws"));
    init(&mut ws, &token(&f.t, &f.alice));
    subscribe(&mut ws, "s", q, start);
    insert_quietly(&f, &["r1", "r2"]);
    let first = events(&mut ws, "s", 2);
    let stopper = std::thread::spawn(move || {
        let st = s.terminate(Duration::from_secs(10));
        (st, s)
    });
    assert_eq!(closed_with(&mut ws), 1001);
    let (st, s) = stopper.join().unwrap();
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", s.log());
    // written while no server runs
    insert_quietly(&f, &["r3", "r4"]);
    let s2 = Server::start(&f.role, &[]);
    let mut ws = connect(&s2, Some("graphql-transport-ws"));
    init(&mut ws, &token(&f.t, &f.alice));
    subscribe(&mut ws, "s", q, first[1].0);
    insert_quietly(&f, &["r5"]);
    let rest = events(&mut ws, "s", 3);
    let titles: Vec<&str> = rest.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(titles, ["r3", "r4", "r5"], "{rest:?}");
    assert!(
        rest[0].0 > first[1].0 && rest.windows(2).all(|w| w[0].0 < w[1].0),
        "{first:?} {rest:?}"
    );
    // and nothing else
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(next(&mut ws).unwrap()["type"], "pong");
}

/// Members that join a feed while it reads and writes keep coming (each from the cursor before
/// the first write) still get every event once, in order: a member that joins from further back
/// than a read in flight is not moved past events it never received.
#[test]
fn members_joining_while_events_flow_miss_nothing() {
    let f = fixture();
    let s = Server::start(
        &f.role,
        &[("poll_interval_ms", "5"), ("feed_interval_ms", "10")],
    );
    let q = "subscription { noteChanged { eventId record { title } } }";
    let start = horizon(&f.t);
    let writer = {
        let (t, alice) = (f.t.clone(), f.alice.clone());
        std::thread::spawn(move || {
            let mut adm = admin();
            adm.execute("SELECT udm_use($1, $2)", &[&t, &alice])
                .unwrap();
            for i in 0..40 {
                adm.execute(
                    &format!("INSERT INTO \"{t}\".note (title) VALUES ($1)"),
                    &[&format!("n{i:02}")],
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(7));
            }
        })
    };
    let mut sockets = Vec::new();
    for k in 0..6 {
        let mut ws = connect(&s, Some("graphql-transport-ws"));
        init(&mut ws, &token(&f.t, &f.alice));
        subscribe(&mut ws, &format!("s{k}"), q, start);
        sockets.push(ws);
        std::thread::sleep(Duration::from_millis(35));
    }
    writer.join().unwrap();
    let want: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
    for (k, ws) in sockets.iter_mut().enumerate() {
        let got: Vec<String> = events(ws, &format!("s{k}"), 40)
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(got, want, "subscriber {k}");
        send(ws, json!({"type": "ping"}));
        assert_eq!(
            next(ws).unwrap()["type"],
            "pong",
            "subscriber {k}: nothing more"
        );
    }
}

/// Where writers announce changes (`udm.notify_changes = on`), the watcher LISTENs on the
/// tenant's channel and a notification wakes it at once: with a 20-second poll (and feeds
/// looking on their own only every 100 s), an insert still arrives within seconds.
#[test]
fn a_notification_wakes_the_watcher_before_its_poll() {
    let f = fixture();
    let s = Server::start(&f.role, &[("poll_interval_ms", "20000")]);
    let q = "subscription { noteChanged { eventId record { title } } }";
    let mut ws = connect(&s, Some("graphql-transport-ws"));
    init(&mut ws, &token(&f.t, &f.alice));
    subscribe(&mut ws, "s", q, horizon(&f.t));
    // the watcher has asked once and listens from then on
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&s, "udm_server_watched_tenants") != Some(1.0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut adm = admin();
    adm.execute("SELECT udm_use($1, $2)", &[&f.t, &f.alice])
        .unwrap();
    adm.batch_execute("SET udm.notify_changes = on").unwrap();
    let written = std::time::Instant::now();
    adm.execute(
        &format!("INSERT INTO \"{}\".note (title) VALUES ('announced')", f.t),
        &[],
    )
    .unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    }
    let got = events(&mut ws, "s", 1);
    assert_eq!(got[0].1, "announced");
    assert!(
        written.elapsed() < Duration::from_secs(5),
        "delivered after {:?}",
        written.elapsed()
    );
}
