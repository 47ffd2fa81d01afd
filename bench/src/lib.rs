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
