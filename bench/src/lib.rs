//! Shared pieces of udm's benchmarks: connections to the bench cluster, timing and the
//! statistics every benchmark prints (median, p95, ratio against the baseline of the same run).

use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

pub use postgres;

/// A setting of the benchmark from the environment (`ROWS=10000 make bench ...`), or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn connect(db: &str) -> Client {
    let host = std::env::var("BENCH_HOST")
        .unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into());
    let port = std::env::var("BENCH_PORT").unwrap_or_else(|_| "5497".into());
    Client::connect(
        &format!("host={host} port={port} user=postgres dbname={db} application_name=udm-bench"),
        NoTls,
    )
    .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// The parallel workers PostgreSQL launched for each Gather in the statements `sql` runs
/// (nested ones too: a udm function's query), as auto_explain reports them to the client.
/// `setup` runs first (e.g. choosing the tenant).
pub fn workers_launched(
    db: &str,
    setup: &str,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Vec<i64> {
    let host = std::env::var("BENCH_HOST")
        .unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into());
    let port: u16 = std::env::var("BENCH_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5497);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut c = postgres::Config::new()
        .host(&host)
        .port(port)
        .user("postgres")
        .dbname(db)
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()))
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"));
    c.batch_execute(setup).unwrap();
    c.batch_execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
         SET auto_explain.log_analyze = on; SET auto_explain.log_nested_statements = on; \
         SET client_min_messages = log",
    )
    .unwrap();
    c.query(sql, params).unwrap();
    let out = seen
        .lock()
        .unwrap()
        .iter()
        .flat_map(|m| {
            m.lines()
                .filter_map(|l| l.trim().strip_prefix("Workers Launched: "))
                .filter_map(|n| n.trim().parse().ok())
                .collect::<Vec<i64>>()
        })
        .collect();
    out
}

/// A fresh database with udm installed.
pub fn fresh_db(name: &str) -> Client {
    let mut c = connect("postgres");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    // the tenant roles of the dropped database (`tenant_<slug>@<database>`: roles belong to the
    // cluster), else a rerun could not create its tenants again
    let left: Vec<String> = c
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname LIKE 'tenant\\_%@' || $1",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for r in left {
        let _ = c.batch_execute(&format!("DROP ROLE \"{}\"", r.replace('"', "\"\"")));
    }
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut d = connect(name);
    d.batch_execute("CREATE EXTENSION udm").unwrap();
    d
}

pub fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let v = f();
    (start.elapsed(), v)
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p95_ms: f64,
}

pub fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = ms.len();
    let pick = |q: f64| ms[((q * (n as f64 - 1.0)).round() as usize).min(n - 1)];
    Stats {
        n,
        mean_ms: ms.iter().sum::<f64>() / n as f64,
        median_ms: pick(0.5),
        p95_ms: pick(0.95),
    }
}

pub fn header(title: &str) {
    println!();
    println!("== {title}");
}

pub fn row(label: &str, s: Stats) {
    println!(
        "  {label:<44} n={:<5} mean {:>9.3} ms  median {:>9.3} ms  p95 {:>9.3} ms",
        s.n, s.mean_ms, s.median_ms, s.p95_ms
    );
}

/// Prints `udm / baseline` and whether it meets `goal` (a ratio ceiling).
pub fn ratio(label: &str, udm: f64, baseline: f64, goal: Option<f64>) -> f64 {
    let r = udm / baseline;
    match goal {
        Some(g) => println!(
            "  {label:<44} ratio {r:>6.2}x  (goal <= {g:.2}x: {})",
            if r <= g { "met" } else { "NOT MET" }
        ),
        None => println!("  {label:<44} ratio {r:>6.2}x"),
    }
    r
}

/// Brands of the product catalog `product_catalog` loads.
pub const CATALOG_BRANDS: usize = 20;

/// The product catalog the query engine and GraphQL are measured on, as tenant `slug`: `brand`
/// (CATALOG_BRANDS rows), `category` (10,000 rows: 100 roots, the rest their children; names
/// sort by number; attributes json) and `product` (`rows` rows: name, price, status select,
/// metadata json with brand and storage, category and brand relations, created_at one second
/// apart), with indexes on (price, id) and status; vacuumed and analysed. Returns the load time.
pub fn product_catalog(c: &mut Client, slug: &str, rows: i64) -> Duration {
    c.batch_execute(&format!(
        r#"SELECT udm_create_tenant('{slug}');
           SELECT udm_use('{slug}');
           SELECT udm_define_entity('brand', '{{"fields": [{{"name": "name", "type": "text", "required": true}}]}}');
           SELECT udm_define_entity('category', '{{"fields": [
             {{"name": "name", "type": "text", "required": true}},
             {{"name": "parent_id", "type": "relation", "target": "category"}},
             {{"name": "attributes", "type": "json"}}]}}');
           SELECT udm_define_entity('product', '{{"fields": [
             {{"name": "name", "type": "text", "required": true}},
             {{"name": "price", "type": "decimal", "precision": 12, "scale": 2, "required": true, "min": 0}},
             {{"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft", "required": true}},
             {{"name": "metadata", "type": "json"}},
             {{"name": "category_id", "type": "relation", "target": "category"}},
             {{"name": "brand_id", "type": "relation", "target": "brand"}}]}}');
           SELECT udm_add_index('product', ARRAY['price', 'id']);
           SELECT udm_add_index('product', ARRAY['status']);"#
    ))
    .unwrap();
    let b = CATALOG_BRANDS;
    let (d, _) = time(|| {
        c.batch_execute(&format!(
            "INSERT INTO {slug}.brand (name) SELECT 'brand' || i FROM generate_series(1, {b}) i;
             INSERT INTO {slug}.category (id, name, attributes)
               SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 'category ' || lpad(i::text, 5, '0'), jsonb_build_object('color', 'c' || (i % 7))
               FROM generate_series(1, 100) i;
             INSERT INTO {slug}.category (id, name, parent_id, attributes)
               SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 'category ' || lpad(i::text, 5, '0'),
                      ('00000000-0000-0000-0000-' || lpad(to_hex(1 + i % 100), 12, '0'))::uuid, jsonb_build_object('color', 'c' || (i % 7))
               FROM generate_series(101, 10000) i;
             INSERT INTO {slug}.product (name, price, status, metadata, category_id, brand_id, created_at)
               SELECT 'product ' || i, (i % 100000) / 100.0,
                      (ARRAY['draft', 'active', 'active', 'retired'])[1 + i % 4],
                      jsonb_build_object('brand', 'brand' || (1 + i % {b}), 'storage', 64 * (1 + i % 8)),
                      ('00000000-0000-0000-0000-' || lpad(to_hex(1 + i % 10000), 12, '0'))::uuid,
                      (SELECT id FROM {slug}.brand WHERE name = 'brand' || (1 + i % {b})),
                      now() - make_interval(secs => i)
               FROM generate_series(1, {rows}) i;"
        ))
        .unwrap()
    });
    for t in ["product", "category", "brand"] {
        c.batch_execute(&format!("VACUUM ANALYZE {slug}.{t}"))
            .unwrap();
    }
    d
}

/// The cursor of page 100 of the keyset query (active products by price, 50 a page) of the
/// selected tenant, walked through `udm_query`'s `next_cursor`.
pub fn page_100_cursor(c: &mut Client) -> serde_json::Value {
    let page_spec = |cursor: &serde_json::Value| {
        let mut s = serde_json::json!({"columns": ["name", "price"], "filters": {"status": "active"}, "sort": ["price"], "limit": 50});
        if !cursor.is_null() {
            s["cursor"] = cursor.clone();
        }
        s
    };
    let mut cursor = serde_json::Value::Null;
    for _ in 0..99 {
        let page: serde_json::Value = c
            .query_one("SELECT udm_query('product', $1)", &[&page_spec(&cursor)])
            .unwrap()
            .get(0);
        cursor = page["next_cursor"].clone();
    }
    cursor
}
