//! udm on Citus against udm on a single node, in one run (issue 23). Scale-out cannot show a
//! speedup on one machine, so this measures what Citus costs: the same tenant (the `bench/query`
//! product catalog, `ROWS` products, 100,000 by default) once on a Citus worker, reached through
//! the coordinator, and once in a database of the same server without Citus. Then
//! `udm_move_tenant` of that tenant between the workers, with a writer updating it meanwhile: how
//! long the move takes and how long the writer waits.
//!
//! Runs against the clusters `make citus-bench` starts (`tests/citus.sh bench`): the coordinator
//! at BENCH_HOST/BENCH_PORT, its database CITUS_DB (Citus, two workers); the single-node database
//! is made fresh on the same coordinator. Loopback only.
//!
//! Goal: the queries <= 1.5x single-node udm at the median. `BENCH_USER=<id>` selects an
//! application user for the session as well (`udm_use(tenant, user)`), as an application with
//! members does.

use postgres::types::ToSql;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use udm_bench::*;

const SLUG: &str = "qc";

struct Side {
    name: &'static str,
    c: postgres::Client,
    ids: Vec<String>,
    deep_cursor: Value,
}

fn load(c: &mut postgres::Client, rows: i64) -> Duration {
    product_catalog(c, SLUG, rows)
}

fn prepare(name: &'static str, mut c: postgres::Client) -> Side {
    // with BENCH_USER, an application user is selected for the session too: on Citus udm then
    // sends the selection to the worker in every transaction (a BEGIN/COMMIT there)
    match std::env::var("BENCH_USER").ok().filter(|u| !u.is_empty()) {
        Some(u) => c.execute("SELECT udm_use($1, $2)", &[&SLUG, &u]),
        None => c.execute("SELECT udm_use($1)", &[&SLUG]),
    }
    .unwrap();
    let cursor = page_100_cursor(&mut c);
    let ids: Vec<String> = c
        .query(
            &format!("SELECT id::text FROM {SLUG}.product ORDER BY md5(id::text) LIMIT 1000"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    Side {
        name,
        c,
        ids,
        deep_cursor: cursor,
    }
}

/// A case's argument for one iteration on one side.
type Arg = Box<dyn Fn(&Side, usize) -> Value>;

struct Case {
    name: &'static str,
    sql: &'static str,
    arg: Arg,
    iterations: usize,
}

fn run_case(sides: &mut [Side; 2], case: &Case) -> [Vec<Duration>; 2] {
    let mut samples = [Vec::new(), Vec::new()];
    let stmts: Vec<postgres::Statement> = sides
        .iter_mut()
        .map(|s| s.c.prepare(case.sql).unwrap())
        .collect();
    // warm up, then interleaved
    for (k, s) in sides.iter_mut().enumerate() {
        for i in 0..5 {
            let a = (case.arg)(s, i);
            let p: &(dyn ToSql + Sync) = &a;
            s.c.query(&stmts[k], &[p]).unwrap();
        }
    }
    for i in 0..case.iterations {
        for (k, s) in sides.iter_mut().enumerate() {
            let a = (case.arg)(s, i);
            let p: &(dyn ToSql + Sync) = &a;
            let (d, _) = time(|| s.c.query(&stmts[k], &[p]).unwrap());
            samples[k].push(d);
        }
    }
    samples
}

fn brand(i: usize) -> String {
    format!("brand{}", 1 + (i * 7) % CATALOG_BRANDS)
}

/// The node (port) holding the tenant's tables.
fn tenant_port(c: &mut postgres::Client) -> i32 {
    c.query_one(
        &format!("SELECT min(nodeport) FROM citus_shards WHERE table_name::text LIKE '{SLUG}.%'"),
        &[],
    )
    .unwrap()
    .get(0)
}

/// Moves the tenant to `port` with `mode` while a writer updates one product after another
/// through the coordinator; prints the move's time and the writer's longest wait.
fn move_with_writer(c: &mut postgres::Client, db: &str, ids: &[String], port: i32, mode: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let (stop2, lat2, ids2, db2) = (stop.clone(), lat.clone(), ids.to_vec(), db.to_string());
    let writer = std::thread::spawn(move || {
        let mut w = connect(&db2);
        let st = w
            .prepare(&format!(
                "UPDATE {SLUG}.product SET price = price + 1 WHERE id = $1::text::uuid"
            ))
            .unwrap();
        let mut i = 0usize;
        let mut failed = 0usize;
        while !stop2.load(Ordering::Relaxed) {
            let start = Instant::now();
            if w.execute(&st, &[&ids2[i % ids2.len()]]).is_err() {
                failed += 1;
            }
            lat2.lock().unwrap().push((start, start.elapsed()));
            i += 1;
        }
        failed
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (d, v) = time(|| {
        c.query_one(
            "SELECT udm_move_tenant($1, 'localhost', $2, $3)",
            &[&SLUG, &port, &mode],
        )
        .unwrap()
        .get::<_, Value>(0)
    });
    let ended = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failed = writer.join().unwrap();
    let lat = lat.lock().unwrap();
    let during: Vec<Duration> = lat
        .iter()
        .filter(|(s, d)| *s + *d >= started && *s <= ended)
        .map(|(_, d)| *d)
        .collect();
    let longest = during.iter().max().copied().unwrap_or_default();
    let before: Vec<Duration> = lat
        .iter()
        .filter(|(s, _)| *s < started)
        .map(|(_, d)| *d)
        .collect();
    println!(
        "  move ({mode:<12}) to :{port}: {:>7.0} ms (udm says {} ms); writer: {} updates, {failed} failed, longest wait {:.0} ms during the move, median {:.2} ms before",
        d.as_secs_f64() * 1000.0,
        v["ms"],
        lat.len(),
        longest.as_secs_f64() * 1000.0,
        if before.is_empty() { 0.0 } else { stats(&before).median_ms }
    );
}

fn main() {
    let rows: i64 = setting("ROWS", 100_000);
    let scale: usize = setting("ITER", 1);
    let citus_db = std::env::var("CITUS_DB").unwrap_or_else(|_| "udm_citus".into());
    header(&format!(
        "udm on Citus (tenant on a worker, through the coordinator) vs single-node udm ({rows} products)"
    ));

    let mut cit = connect(&citus_db);
    let _ = cit.batch_execute(&format!("SELECT udm_drop_tenant('{SLUG}', '{SLUG}')"));
    let d = load(&mut cit, rows);
    let port = tenant_port(&mut cit);
    println!(
        "  Citus: loaded in {:.1} s, the tenant's shards on the worker at port {port}",
        d.as_secs_f64()
    );
    let mut one = fresh_db("bench_citus_single");
    let d = load(&mut one, rows);
    println!("  single node: loaded in {:.1} s", d.as_secs_f64());

    let mut sides = [prepare("citus", cit), prepare("single", one)];
    let cases = vec![
        Case {
            name: "1. page of 50: relation + json paths, filters, sort",
            sql: "SELECT udm_query('product', $1)",
            arg: Box::new(|_, i| {
                json!({"columns": ["name", "price", "category_id.name", "category_id.parent_id.name", "metadata.brand"],
                       "filters": {"status": "active", "metadata.brand": brand(i)}, "sort": ["price"], "limit": 50})
            }),
            iterations: 200 * scale,
        },
        Case {
            name: "2. keyset page 100 deep",
            sql: "SELECT udm_query('product', $1)",
            arg: Box::new(|s, _| {
                json!({"columns": ["name", "price"], "filters": {"status": "active"}, "sort": ["price"], "limit": 50, "cursor": s.deep_cursor})
            }),
            iterations: 200 * scale,
        },
        Case {
            name: "3. aggregate by category_id.name: count, avg(price)",
            sql: "SELECT udm_aggregate('product', $1)",
            arg: Box::new(|_, _| {
                json!({"group_by": ["category_id.name"], "metrics": ["count", {"fn": "avg", "path": "price"}], "limit": 20000})
            }),
            iterations: 20 * scale,
        },
        Case {
            name: "4. kanban by status, 20 cards a column",
            sql: "SELECT udm_view('product', 'kanban', $1)",
            arg: Box::new(|_, _| {
                json!({"field": "status", "columns": ["name", "price"], "sort": ["price"], "limit": 20})
            }),
            iterations: 100 * scale,
        },
        Case {
            name: "5. point udm_get by id",
            sql: "SELECT udm_get('product', ($1::jsonb #>> '{}')::uuid)",
            arg: Box::new(|s, i| json!(s.ids[i % s.ids.len()])),
            iterations: 500 * scale,
        },
        Case {
            name: "5b. plain SQL point read by id (the floor: one row through Citus's router)",
            sql: "SELECT to_jsonb(p) FROM qc.product p WHERE p.id = ($1::jsonb #>> '{}')::uuid",
            arg: Box::new(|s, i| json!(s.ids[i % s.ids.len()])),
            iterations: 500 * scale,
        },
        Case {
            name: "6. audited single-row udm_update",
            sql: "SELECT udm_update('product', ($1::jsonb ->> 0)::uuid, jsonb_build_object('price', ($1::jsonb ->> 1)::numeric))",
            arg: Box::new(|s, i| json!([s.ids[i % s.ids.len()], (i % 1000) as f64 + 0.5])),
            iterations: 500 * scale,
        },
    ];
    let mut worst: f64 = 0.0;
    let mut medians = Vec::new();
    for case in &cases {
        let [c, o] = run_case(&mut sides, case);
        println!("  {}", case.name);
        row(&format!("    {}", sides[0].name), stats(&c));
        row(&format!("    {}", sides[1].name), stats(&o));
        medians.push((case.name, stats(&c).median_ms, stats(&o).median_ms));
        // the goal is the queries'; the update and the plain SQL read are for comparison
        let goal =
            (!case.name.contains("udm_update") && !case.name.contains("plain SQL")).then_some(1.5);
        let r = ratio(
            "    citus / single (median)",
            stats(&c).median_ms,
            stats(&o).median_ms,
            goal,
        );
        if goal.is_some() {
            worst = worst.max(r);
        }
    }
    println!("  worst query ratio {worst:.2}x (goal <= 1.50x)");
    // what udm adds to a point read, on each side: udm_get over the plain SQL read of the row
    let median = |prefix: &str| {
        medians
            .iter()
            .find(|(n, _, _)| n.starts_with(prefix))
            .map(|&(_, c, o)| (c, o))
            .expect("a case of that number")
    };
    let (udm_c, udm_o) = median("5.");
    let (sql_c, sql_o) = median("5b.");
    println!(
        "  point read, udm_get / plain SQL: citus {:.2}x ({:.3} ms over {:.3} ms), single {:.2}x ({:.3} ms over {:.3} ms)",
        udm_c / sql_c,
        udm_c - sql_c,
        sql_c,
        udm_o / sql_o,
        udm_o - sql_o,
        sql_o
    );

    header(&format!(
        "udm_move_tenant of the {rows}-product tenant, a writer updating it meanwhile"
    ));
    let sizes: (i64, i64) = sides[0]
        .c
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {SLUG}.product), (SELECT count(*) FROM {SLUG}._udm_audit)"
            ),
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    println!("  {} products, {} audit rows", sizes.0, sizes.1);
    let ids = sides[0].ids.clone();
    let c = &mut sides[0].c;
    let from = tenant_port(c);
    let other = c
        .query_one(
            "SELECT min(nodeport) FROM pg_dist_node WHERE groupid <> 0 AND nodeport <> $1",
            &[&from],
        )
        .unwrap()
        .get::<_, i32>(0);
    move_with_writer(c, &citus_db, &ids, other, "block_writes");
    move_with_writer(c, &citus_db, &ids, from, "block_writes");
}
