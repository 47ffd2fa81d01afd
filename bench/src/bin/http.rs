//! udm-server on loopback (issue 17). The real `udm-server` binary (target/release) runs as a
//! child process on 127.0.0.1 with a pool of POOL connections (16), as a role made by
//! `udm-server setup-role`.
//!
//! 1. Q1 of `bench/query` (a page of 50 active products of one brand by price, with relation and
//!    JSON paths) as its GraphQL document (`bench/graphql` case 1) POSTed over HTTP/1.1
//!    keep-alive connections, one per concurrent client, against the same `udm_query` spec
//!    through a deadpool-postgres pool of the same size, each request being what the server does
//!    per request (a transaction: `set_config('statement_timeout') + udm_use(..., is_local)`, the
//!    call, commit). At 1, 16 and 64 concurrent clients: requests/s, p50 and p99 of both,
//!    interleaved, ROUNDS (3) runs per level in alternating order. Goal: <= 1.3x at p50. A third
//!    side, udm_graphql over the same pool, splits the ratio into GraphQL's share and HTTP's.
//! 2. SUBSCRIBERS (1,000) WebSocket subscribers (graphql-transport-ws, one subscription per
//!    connection, spread over SUBSCRIBER_USERS (20) viewers) of one tenant's `task` changes while
//!    one writer (a plain connection, autocommit) updates TASKS records one at a time. Each update
//!    returns the record's new version; each `next` carries the record's id and version, so every
//!    delivery is matched to the commit it reports: commit-to-delivery p50/p99/max over all
//!    deliveries (goal p99 <= 200 ms), deliveries missing. The writer's updates/s with those
//!    subscribers against the same loop with none (run before and after): goal >= 0.9x.
//!    WRITER_RATES=50,0: the writer at 50 updates/s, then as fast as it goes (0), one run each.
//!
//! Bounded: DURATION_S (5) per HTTP run and MAX_REQUESTS per run, WRITE_S (10) per writer run,
//! DRAIN_S (10) for deliveries after the writer stops, timeouts on every connection step.
//! Settings: ROWS (1,000,000 products), POOL, ROUNDS, SUBSCRIBERS, SUBSCRIBER_USERS, TASKS (100),
//! WRITER_RATES, UDM_SERVER_BIN.

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use udm_bench::*;

const DB: &str = "bench_http";
const ROLE: &str = "udm_server_bench_http";
const SECRET: &str = "udm-bench-http-secret-0123456789abcdef";
/// The product catalog (part 1) and the task tenant (part 2).
const CATALOG: &str = "hb";
const TASKS_TENANT: &str = "hs";

const Q1_GRAPHQL: &str = r#"query($brand: JSON!) { productCollection(filter: {status: {eq: active}, metadata: {path: ["brand"], eq: $brand}}, orderBy: [{price: ASC}], first: 50) {
    nodes { name price category { name parent { name } } metadata(path: ["brand"]) } } }"#;

const SUBSCRIPTION: &str =
    "subscription { taskChanged(actions: [UPDATE]) { eventId id version record { title counter } } }";

/// The brands that have active products. In the catalog a product's brand and status both follow
/// its number, so half of bench/query's brands have no active product at all and Q1 on them scans
/// the whole price index for nothing (hundreds of ms, all in the database): mixed in, they make
/// the latency bimodal and its p50 meaningless. Here every request returns its 50 rows.
fn brand(i: usize) -> String {
    const WITH_ACTIVE: [usize; 10] = [2, 3, 6, 7, 10, 11, 14, 15, 18, 19];
    format!("brand{}", WITH_ACTIVE[(i * 7) % WITH_ACTIVE.len()])
}

fn q1_spec(i: usize) -> Value {
    json!({"columns": ["name", "price", "category_id.name", "category_id.parent_id.name", "metadata.brand"],
           "filters": {"status": "active", "metadata.brand": brand(i)}, "sort": ["price"], "limit": 50})
}

fn pg_host() -> String {
    std::env::var("BENCH_HOST").unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into())
}

fn pg_port() -> String {
    std::env::var("BENCH_PORT").unwrap_or_else(|_| "5497".into())
}

/// The server's connection string (also the baseline pool's: the same role).
fn server_url() -> String {
    format!(
        "host={} port={} user={ROLE} dbname={DB} application_name=udm-bench-http",
        pg_host(),
        pg_port()
    )
}

fn server_bin() -> PathBuf {
    std::env::var_os("UDM_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/udm-server")
        })
}

fn server_cmd(pool: usize) -> Command {
    let mut cmd = Command::new(server_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("UDM_SERVER_") && k != "UDM_SERVER_BIN" {
            cmd.env_remove(k);
        }
    }
    cmd.env("UDM_SERVER_DATABASE_URL", server_url())
        .env("UDM_SERVER_LISTEN", "127.0.0.1:0")
        .env("UDM_SERVER_JWT_SECRET", SECRET)
        .env("UDM_SERVER_POOL_SIZE", pool.to_string())
        // as long as the baseline pool waits for a connection
        .env("UDM_SERVER_POOL_TIMEOUT_MS", "30000")
        .env("UDM_SERVER_LOG_FORMAT", "text")
        .env("UDM_SERVER_LOG", "warn");
    cmd
}

/// udm-server as a child process; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    pool: usize,
    // kept open: the server writes its first line there
    _stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl Server {
    fn start(pool: usize) -> Server {
        let log = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-http-server.log");
        let mut child = server_cmd(pool)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {}: {e} (bench/run.sh builds it: cargo build --release -p udm-server)",
                    server_bin().display()
                )
            });
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("udm-server listening on http://") else {
            let _ = child.kill();
            panic!(
                "udm-server did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        assert!(addr.starts_with("127.0.0.1:"), "not loopback: {addr}");
        Server {
            addr: addr.to_string(),
            child,
            pool,
            _stdout: out,
            log,
        }
    }

    /// A token of `user` in `tenant` (`udm-server token`, the server's configuration).
    fn token(&self, tenant: &str, user: &str) -> String {
        let out = server_cmd(self.pool)
            .args(["token", tenant, user, "7200"])
            .output()
            .expect("udm-server token");
        assert!(
            out.status.success(),
            "udm-server token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines = log.lines().count();
        if lines > 0 {
            println!(
                "  (udm-server logged {lines} warning lines: {})",
                self.log.display()
            );
        }
    }
}

/// More open files (1,000 sockets here, and as many in the server, which inherits it).
fn raise_nofile() {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn setup(rows: i64, tasks: usize, users: usize) -> Vec<String> {
    let mut c = fresh_db(DB);
    let mut pg = connect("postgres");
    for r in pg
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%@bench\\_http'",
            &[],
        )
        .unwrap()
    {
        let n: String = r.get(0);
        pg.batch_execute(&format!("DROP ROLE \"{n}\"")).unwrap();
    }
    pg.batch_execute(&format!("DROP ROLE IF EXISTS {ROLE}"))
        .unwrap();
    let d = product_catalog(&mut c, CATALOG, rows);
    println!(
        "  loaded {rows} products, 10,000 categories in {:.1} s",
        d.as_secs_f64()
    );
    // the task tenant: a writer (editor) and `users` viewers
    c.batch_execute(&format!(
        r#"SELECT udm_create_tenant('{TASKS_TENANT}');
           SELECT udm_use('{TASKS_TENANT}');
           SELECT udm_define_entity('task', '{{"fields": [
             {{"name": "title", "type": "text", "required": true}},
             {{"name": "counter", "type": "integer", "required": true, "default": 0}}]}}');
           INSERT INTO {TASKS_TENANT}.task (title) SELECT 'task ' || i FROM generate_series(1, {tasks}) i;
           SELECT udm_create_user('writer@bench.http', 'Writer', 'bench password');
           SELECT udm_add_member('{TASKS_TENANT}', 'writer@bench.http', 'admin');"#
    ))
    .unwrap();
    for u in 0..users {
        c.execute(
            "SELECT udm_create_user($1, 'Subscriber', 'bench password')",
            &[&subscriber(u)],
        )
        .unwrap();
        c.execute(
            "SELECT udm_add_member($1, $2, 'viewer')",
            &[&TASKS_TENANT, &subscriber(u)],
        )
        .unwrap();
    }
    c.batch_execute(&format!("VACUUM ANALYZE {TASKS_TENANT}.task"))
        .unwrap();
    // the load's dirty pages written out before anything is measured
    c.batch_execute("CHECKPOINT").unwrap();
    let admin = format!(
        "host={} port={} user=postgres dbname={DB}",
        pg_host(),
        pg_port()
    );
    let out = Command::new(server_bin())
        .args(["setup-role", &admin, ROLE, CATALOG, TASKS_TENANT])
        .output()
        .unwrap_or_else(|e| panic!("udm-server setup-role: {e}"));
    assert!(
        out.status.success(),
        "udm-server setup-role: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.query(
        &format!("SELECT id::text FROM {TASKS_TENANT}.task ORDER BY title"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn subscriber(u: usize) -> String {
    format!("subscriber{u}@bench.http")
}

/// Milliseconds at quantile `q` (nearest rank) of sorted samples.
fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

// ------------------------------------------------------------------ part 1: HTTP vs the driver

#[derive(Clone, Copy)]
struct Bounds {
    duration: Duration,
    max_requests: usize,
}

struct Run {
    n: usize,
    per_s: f64,
    p50: f64,
    p99: f64,
    errors: usize,
}

fn summarise(mut lat: Vec<Duration>, elapsed: Duration) -> Run {
    lat.sort();
    Run {
        n: lat.len(),
        per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        errors: 0,
    }
}

/// One HTTP/1.1 keep-alive connection to the server.
struct HttpClient {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    auth: String,
}

impl HttpClient {
    async fn connect(addr: &str, token: &str) -> HttpClient {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .expect("connect timeout")
        .expect("connect to udm-server");
        stream.set_nodelay(true).unwrap();
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP handshake");
        tokio::spawn(conn);
        HttpClient {
            send,
            host: addr.to_string(),
            auth: format!("Bearer {token}"),
        }
    }

    /// One request on this connection; the response body as JSON, or the status and body of a
    /// failure.
    async fn send(
        &mut self,
        req: hyper::http::request::Builder,
        body: Bytes,
    ) -> Result<Value, String> {
        let req = req
            .header("host", &self.host)
            .header("authorization", &self.auth)
            .body(Full::new(body))
            .unwrap();
        self.send.ready().await.expect("connection ready");
        let resp = tokio::time::timeout(Duration::from_secs(30), self.send.send_request(req))
            .await
            .expect("request timeout")
            .expect("request");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
    }

    /// GET of a REST route (`/api/...`).
    async fn rest(&mut self, path: &str) -> Result<Value, String> {
        let req = hyper::Request::get(path).header("accept", "application/json");
        self.send(req, Bytes::new()).await
    }

    /// POST /graphql; GraphQL errors are a failure too.
    async fn graphql(&mut self, body: Bytes) -> Result<Value, String> {
        let req = hyper::Request::post("/graphql")
            .header("content-type", "application/json")
            .header("accept", "application/graphql-response+json");
        let v = self.send(req, body).await?;
        match v.get("errors") {
            Some(e) => Err(format!("GraphQL errors: {e}")),
            None => Ok(v),
        }
    }
}

/// Q1 as a REST list: `GET /api/records/product?...` in the bridge's query-string grammar.
fn q1_rest(i: usize) -> String {
    format!(
        "/api/records/product?select=name,price,category_id.name,category_id.parent_id.name,metadata.brand\
         &status=eq.active&metadata.brand=eq.{}&sort=price&limit=50",
        brand(i)
    )
}

fn q1_body(i: usize) -> Bytes {
    Bytes::from(json!({"query": Q1_GRAPHQL, "variables": {"brand": brand(i)}}).to_string())
}

/// What the server does per request, as a plain `udm_query`: one transaction on a pooled
/// connection.
async fn sql_q1(pool: &deadpool_postgres::Pool, user: &str, i: usize, graphql: bool) -> Value {
    let mut client = pool.get().await.expect("pooled connection");
    let tx = client.build_transaction().start().await.unwrap();
    let select = tx
        .prepare_cached(
            "SELECT set_config('statement_timeout', $1, true), udm_use($2, $3, is_local => true)",
        )
        .await
        .unwrap();
    tx.query_one(&select, &[&"10000", &CATALOG, &user])
        .await
        .unwrap();
    let row = if graphql {
        let run = tx
            .prepare_cached("SELECT udm_graphql($1, $2::jsonb, $3)")
            .await
            .unwrap();
        let vars = json!({"brand": brand(i)});
        tx.query_one(&run, &[&Q1_GRAPHQL, &vars, &None::<String>])
            .await
            .unwrap()
    } else {
        let run = tx
            .prepare_cached("SELECT udm_query('product', $1::jsonb)")
            .await
            .unwrap();
        tx.query_one(&run, &[&q1_spec(i)]).await.unwrap()
    };
    let v: Value = row.get(0);
    tx.commit().await.unwrap();
    v
}

/// Q1 over HTTP: GraphQL (`POST /graphql`) or REST (`GET /api/records/product?...`).
async fn run_http(addr: &str, token: &str, clients: usize, b: Bounds, rest: bool) -> Run {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(HttpClient::connect(addr, token).await);
    }
    let count = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::OnceLock::new());
    let start = Instant::now();
    let until = start + b.duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let (count, errors, first_error) = (count.clone(), errors.clone(), first_error.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = k;
                while Instant::now() < until
                    && count.fetch_add(1, Ordering::Relaxed) < b.max_requests
                {
                    let t = Instant::now();
                    let r = if rest {
                        c.rest(&q1_rest(i)).await
                    } else {
                        c.graphql(q1_body(i)).await
                    };
                    match r {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let _ = first_error.set(e);
                        }
                    }
                    i += clients;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let mut r = summarise(lat, start.elapsed());
    r.errors = errors.load(Ordering::Relaxed);
    if let Some(e) = first_error.get() {
        println!("    {} failed requests over HTTP; the first: {e}", r.errors);
    }
    r
}

async fn run_sql(pool: &deadpool_postgres::Pool, clients: usize, b: Bounds, graphql: bool) -> Run {
    let count = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let until = start + b.duration;
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let (count, pool) = (count.clone(), pool.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = k;
                while Instant::now() < until
                    && count.fetch_add(1, Ordering::Relaxed) < b.max_requests
                {
                    let t = Instant::now();
                    sql_q1(&pool, "reader@bench.http", i, graphql).await;
                    lat.push(t.elapsed());
                    i += clients;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    summarise(lat, start.elapsed())
}

fn print_run(label: &str, r: &Run) {
    println!(
        "    {label:<28} n={:<7} {:>8.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
        r.n, r.per_s, r.p50, r.p99
    );
    if r.errors > 0 {
        println!("    {label:<28} {} requests failed", r.errors);
    }
}

async fn part1(server: &Server, pool_size: usize) -> Vec<(usize, Vec<f64>)> {
    let rounds: usize = setting("ROUNDS", 3);
    let bounds = Bounds {
        duration: Duration::from_secs_f64(setting("DURATION_S", 5.0)),
        max_requests: setting("MAX_REQUESTS", 1_000_000),
    };
    let warm = Bounds {
        duration: Duration::from_secs_f64(setting("WARMUP_S", 1.0)),
        max_requests: 100_000,
    };
    header(&format!(
        "Q1 as GraphQL over HTTP (udm-server, pool {pool_size}) vs udm_query over a pooled driver (pool {pool_size}); {:.0} s a run, {rounds} runs a level",
        bounds.duration.as_secs_f64()
    ));
    let token = server.token(CATALOG, "reader@bench.http");
    let pg: tokio_postgres::Config = server_url().parse().unwrap();
    let mgr = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(mgr)
        .max_size(pool_size)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(30)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .unwrap();

    // the same rows both ways
    let mut c = HttpClient::connect(&server.addr, &token).await;
    let g = c.graphql(q1_body(3)).await.unwrap();
    let s = sql_q1(&pool, "reader@bench.http", 3, false).await;
    let gn: Vec<&Value> = g["data"]["productCollection"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| &n["name"])
        .collect();
    let sn: Vec<&Value> = s["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| &r["name"])
        .collect();
    let r = c.rest(&q1_rest(3)).await.unwrap();
    let rn: Vec<&Value> = r["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| &r["name"])
        .collect();
    println!(
        "  same products every way (GraphQL, REST, udm_query): {} ({} rows)",
        if gn == sn && rn == sn { "yes" } else { "NO" },
        gn.len()
    );
    drop(c);
    // every pooled connection of both sides warm (plans, the tenant's schema)
    run_http(&server.addr, &token, pool_size, warm, false).await;
    run_http(&server.addr, &token, pool_size, warm, true).await;
    run_sql(&pool, pool_size, warm, false).await;
    run_sql(&pool, pool_size, warm, true).await;

    let mut ratios = Vec::new();
    for clients in [1usize, 16, 64] {
        println!("  {clients} concurrent clients:");
        run_http(&server.addr, &token, clients, warm, false).await;
        run_http(&server.addr, &token, clients, warm, true).await;
        run_sql(&pool, clients, warm, false).await;
        run_sql(&pool, clients, warm, true).await;
        let mut rs = Vec::new();
        let mut rest_ratios = Vec::new();
        for round in 0..rounds {
            let (h, s, g, rr) = if round % 2 == 0 {
                let h = run_http(&server.addr, &token, clients, bounds, false).await;
                let rr = run_http(&server.addr, &token, clients, bounds, true).await;
                let s = run_sql(&pool, clients, bounds, false).await;
                (h, s, run_sql(&pool, clients, bounds, true).await, rr)
            } else {
                let g = run_sql(&pool, clients, bounds, true).await;
                let s = run_sql(&pool, clients, bounds, false).await;
                let rr = run_http(&server.addr, &token, clients, bounds, true).await;
                (
                    run_http(&server.addr, &token, clients, bounds, false).await,
                    s,
                    g,
                    rr,
                )
            };
            println!("   run {}:", round + 1);
            print_run("GraphQL over HTTP", &h);
            print_run("udm_query, pooled driver", &s);
            print_run("udm_graphql, pooled driver", &g);
            print_run("REST GET /api/records/product", &rr);
            let r = h.p50 / s.p50;
            println!(
                "    p50 HTTP / driver {r:>5.2}x   p99 {:>5.2}x   req/s {:>5.2}x",
                h.p99 / s.p99,
                h.per_s / s.per_s
            );
            println!(
                "    (udm_graphql / udm_query over the driver: p50 {:.2}x; HTTP / udm_graphql over the driver: p50 {:.2}x)",
                g.p50 / s.p50,
                h.p50 / g.p50
            );
            println!(
                "    p50 REST / GraphQL over HTTP {:>5.2}x (goal <= 1.10x)",
                rr.p50 / h.p50
            );
            rs.push(r);
            rest_ratios.push(rr.p50 / h.p50);
        }
        let m = median(&rs);
        println!(
            "   median p50 ratio {m:.2}x (goal <= 1.30x: {})",
            if m <= 1.3 { "met" } else { "NOT MET" }
        );
        let mr = median(&rest_ratios);
        println!(
            "   median p50 REST / GraphQL over HTTP {mr:.2}x (goal <= 1.10x: {})",
            if mr <= 1.1 { "met" } else { "NOT MET" }
        );
        ratios.push((clients, rs));
    }
    ratios
}

// ------------------------------------------------------------------ part 2: subscribers

/// Commits of the writer: (task index, new version, when the commit returned).
type Commits = Vec<(u32, i64, Instant)>;

/// The writer: one plain connection as a member of the task tenant, autocommit.
struct Writer {
    c: postgres::Client,
    up: postgres::Statement,
    ids: Vec<String>,
    /// the next write (task `next % ids.len()`)
    next: usize,
}

impl Writer {
    fn new(ids: Vec<String>) -> Writer {
        let mut c = connect(DB);
        c.batch_execute(&format!(
            "SELECT udm_use('{TASKS_TENANT}', 'writer@bench.http')"
        ))
        .unwrap();
        let up = c
            .prepare(&format!(
                "UPDATE {TASKS_TENANT}.task SET counter = counter + 1 WHERE id = $1::text::uuid RETURNING _version::bigint"
            ))
            .unwrap();
        Writer {
            c,
            up,
            ids,
            next: 0,
        }
    }

    /// Updates one task at a time for `dur` (at most `max`, at `rate`/s if > 0).
    fn run(&mut self, dur: Duration, rate: f64, max: usize) -> (Commits, Duration) {
        let mut out = Vec::new();
        let start = Instant::now();
        while start.elapsed() < dur && out.len() < max {
            if rate > 0.0 {
                let at = start + Duration::from_secs_f64(out.len() as f64 / rate);
                if let Some(w) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
            let k = self.next % self.ids.len();
            self.next += 1;
            let v: i64 = self.c.query_one(&self.up, &[&self.ids[k]]).unwrap().get(0);
            out.push((k as u32, v, Instant::now()));
        }
        (out, start.elapsed())
    }

    /// Updates/s of the writer alone.
    fn alone(&mut self, dur: Duration, rate: f64) -> f64 {
        let (w, d) = self.run(dur, rate, usize::MAX);
        w.len() as f64 / d.as_secs_f64()
    }
}

struct Sub {
    /// (task index, version, arrival)
    got: Vec<(u32, i64, Instant)>,
    /// how the socket ended early, if it did
    ended: Option<String>,
}

struct Shared {
    ids: HashMap<String, u32>,
    /// subscribers that received their first event
    live: AtomicUsize,
    /// `next` messages received
    nexts: AtomicUsize,
    stop: tokio::sync::watch::Receiver<bool>,
}

async fn subscribe(
    addr: String,
    token: String,
    shared: Arc<Shared>,
    ready: Arc<tokio::sync::Semaphore>,
) -> Sub {
    let mut sub = Sub {
        got: Vec::new(),
        ended: None,
    };
    let mut req = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let permit = ready.acquire().await.unwrap();
    let ws = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await;
    let mut ws = match ws {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            sub.ended = Some(format!("connect: {e}"));
            return sub;
        }
        Err(_) => {
            sub.ended = Some("connect: timeout".into());
            return sub;
        }
    };
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(
        json!({"type": "connection_init", "payload": {"token": token}}),
    ))
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("connection_ack") => {}
        other => {
            sub.ended = Some(format!("connection_init: {other:?}"));
            return sub;
        }
    }
    ws.send(send(
        json!({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}}),
    ))
    .await
    .unwrap();
    drop(permit);
    let mut first = true;
    let mut stop = shared.stop.clone();
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        match m {
            Some(Ok(Message::Text(t))) => {
                let at = Instant::now();
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "next" {
                    sub.ended = Some(format!("message: {v}"));
                    break;
                }
                let c = &v["payload"]["data"]["taskChanged"];
                let k = c["id"].as_str().and_then(|i| shared.ids.get(i));
                let ver = c["version"].as_i64();
                if let (Some(k), Some(ver)) = (k, ver) {
                    sub.got.push((*k, ver, at));
                }
                shared.nexts.fetch_add(1, Ordering::Relaxed);
                if first {
                    first = false;
                    shared.live.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(f))) => {
                sub.ended = Some(format!("closed: {f:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                sub.ended = Some(format!("error: {e}"));
                break;
            }
            None => {
                sub.ended = Some("closed".into());
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    sub
}

async fn part2(server: &Server, ids: Vec<String>, rate: f64) -> (f64, f64, f64, usize, usize) {
    let n_subs: usize = setting("SUBSCRIBERS", 1000);
    let users: usize = setting("SUBSCRIBER_USERS", 20);
    let write = Duration::from_secs_f64(setting("WRITE_S", 10.0));
    let drain = Duration::from_secs_f64(setting("DRAIN_S", 10.0));
    header(&format!(
        "{n_subs} WebSocket subscribers ({users} users, one subscription a connection) of {} tasks; writer {}, {:.0} s a run",
        ids.len(),
        if rate > 0.0 { format!("at {rate} updates/s") } else { "unbounded".into() },
        write.as_secs_f64()
    ));
    println!("  subscription: {SUBSCRIPTION}");
    // the writer's blocking client stays off the runtime's threads
    let ids_w = ids.clone();
    let (mut w, before) = tokio::task::spawn_blocking(move || {
        let mut w = Writer::new(ids_w);
        w.alone(Duration::from_secs(1), rate); // warm
        let b = w.alone(write, rate);
        (w, b)
    })
    .await
    .unwrap();
    println!("  writer alone (before):        {before:>9.0} updates/s");

    let tokens: Vec<String> = (0..users)
        .map(|u| server.token(TASKS_TENANT, &subscriber(u)))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        ids: ids
            .iter()
            .enumerate()
            .map(|(k, i)| (i.clone(), k as u32))
            .collect(),
        live: AtomicUsize::new(0),
        nexts: AtomicUsize::new(0),
        stop: stop_rx,
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let t0 = Instant::now();
    let subs: Vec<_> = (0..n_subs)
        .map(|s| {
            tokio::spawn(subscribe(
                server.addr.clone(),
                tokens[s % users].clone(),
                shared.clone(),
                gate.clone(),
            ))
        })
        .collect();
    // every subscription started: each has received an event (one update every 100 ms)
    let shared_w = shared.clone();
    let warm = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while shared_w.live.load(Ordering::Relaxed) < n_subs
            && start.elapsed() < Duration::from_secs(120)
        {
            w.run(Duration::from_secs(1), 0.0, 1);
            std::thread::sleep(Duration::from_millis(100));
        }
        w
    });
    let mut w = warm.await.unwrap();
    let live = shared.live.load(Ordering::Relaxed);
    println!(
        "  {live} of {n_subs} subscriptions delivering after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // let the warm-up's deliveries settle
    let mut seen = shared.nexts.load(Ordering::Relaxed);
    let settle = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = shared.nexts.load(Ordering::Relaxed);
        if now == seen || settle.elapsed() > Duration::from_secs(10) {
            break;
        }
        seen = now;
    }

    let base = shared.nexts.load(Ordering::Relaxed);
    let (commits, wd, mut w) = tokio::task::spawn_blocking(move || {
        let (c, d) = w.run(write, rate, usize::MAX);
        (c, d, w)
    })
    .await
    .unwrap();
    let with = commits.len() as f64 / wd.as_secs_f64();
    let expected = commits.len() * live;
    let drain_start = Instant::now();
    while shared.nexts.load(Ordering::Relaxed) < base + expected && drain_start.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = drain_start.elapsed();
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for s in subs {
        match tokio::time::timeout(Duration::from_secs(30), s).await {
            Ok(r) => results.push(r.unwrap()),
            Err(_) => panic!("a subscriber did not stop"),
        }
    }
    let commit_at: HashMap<(u32, i64), Instant> =
        commits.iter().map(|(k, v, t)| ((*k, *v), *t)).collect();
    let mut lat = Vec::new();
    let mut ended: HashMap<String, usize> = HashMap::new();
    for r in &results {
        for (k, v, at) in &r.got {
            if let Some(c) = commit_at.get(&(*k, *v)) {
                lat.push(at.saturating_duration_since(*c));
            }
        }
        if let Some(e) = &r.ended {
            let key: String = e.chars().take(120).collect();
            *ended.entry(key).or_default() += 1;
        }
    }
    lat.sort();
    let delivered = lat.len();
    let missing = (commits.len() * n_subs).saturating_sub(delivered);
    println!(
        "  writer with subscribers:      {with:>9.0} updates/s ({} updates; deliveries drained {:.1} s after the writer stopped)",
        commits.len(),
        drained.as_secs_f64()
    );
    for (e, n) in &ended {
        println!("  {n} subscribers ended early: {e}");
    }
    drop(results);
    // the server notices the closed sockets
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = tokio::task::spawn_blocking(move || w.alone(write, rate))
        .await
        .unwrap();
    println!("  writer alone (after):         {after:>9.0} updates/s");
    let p99 = pct(&lat, 0.99);
    println!(
        "  commit to delivery: {delivered} deliveries of {} expected ({missing} missing): p50 {:.1} ms  p99 {p99:.1} ms  max {:.1} ms (goal p99 <= 200 ms: {})",
        commits.len() * n_subs,
        pct(&lat, 0.5),
        lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        if p99 <= 200.0 && missing == 0 { "met" } else { "NOT MET" }
    );
    let tr = with / ((before + after) / 2.0);
    println!(
        "  writer throughput with {n_subs} subscribers / with none: {tr:.2}x (goal >= 0.90x: {})",
        if tr >= 0.9 { "met" } else { "NOT MET" }
    );
    (p99, tr, with, delivered, missing)
}

fn main() {
    raise_nofile();
    let rows: i64 = setting("ROWS", 1_000_000);
    let pool: usize = setting("POOL", 16);
    let tasks: usize = setting("TASKS", 100);
    let users: usize = setting("SUBSCRIBER_USERS", 20);
    header(&format!(
        "udm-server on loopback: GraphQL over HTTP and subscriptions ({rows} products)"
    ));
    let ids = setup(rows, tasks, users);
    let server = Server::start(pool);
    println!("  udm-server on {} (pool {pool})", server.addr);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let parts: String = setting("PARTS", "1,2".to_string());
    let mut ratios = Vec::new();
    if parts.contains('1') {
        ratios = rt.block_on(part1(&server, pool));
    }
    // a collaborative tenant's pace first, then the writer as fast as it goes (every update is
    // 1,000 deliveries: at 800 updates/s, 800,000 messages a second on these 2 cores)
    let mut subs = Vec::new();
    if parts.contains('2') {
        let rates: String = setting("WRITER_RATES", "50,0".to_string());
        for r in rates.split(',') {
            let rate: f64 = r
                .trim()
                .parse()
                .expect("WRITER_RATES: numbers (0: unbounded)");
            subs.push((rate, rt.block_on(part2(&server, ids.clone(), rate))));
        }
    }
    header("summary");
    for (clients, rs) in &ratios {
        let m = median(rs);
        println!(
            "  Q1 over HTTP / driver at p50, {clients:>2} clients: runs {}  median {m:.2}x (goal <= 1.30x: {})",
            rs.iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(" "),
            if m <= 1.3 { "met" } else { "NOT MET" }
        );
    }
    for (rate, (p99, tr, with, delivered, missing)) in subs {
        let pace = if rate > 0.0 {
            format!("writer at {rate} updates/s")
        } else {
            "writer unbounded".into()
        };
        println!(
            "  subscribers, {pace}: commit-to-delivery p99 {p99:.1} ms (goal <= 200 ms), {delivered} delivered, {missing} missing; writer {with:.0} updates/s, {tr:.2}x of none (goal >= 0.90x)"
        );
    }
    drop(server);
}
