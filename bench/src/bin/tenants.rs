//! Ten thousand tenants in one database (issue 22), in one run:
//!
//! 1. Onboarding: TENANTS tenants, each created with the roadmap template through udm, next to
//!    the same tenant as plain DDL (the schema-only dump of a udm tenant with the template, so the
//!    same tables, constraints, indexes, policies and triggers, replayed under another name with
//!    its own role), interleaved. Goals: udm <= 1.3x plain DDL for the first and the last 100, and
//!    udm's growth from the first to the last 100 <= plain DDL's.
//! 2. Users with TENANTS tenants in the database: `udm_create_user`, renaming a user
//!    (`udm_update_user`) and deleting a user who belongs to 3 tenants: each <= 10 ms (median);
//!    deletions by the backend that onboarded every tenant and by a new one.
//! 3. One backend serving every tenant in turn (one `udm_query` each): its heap's peak against
//!    `udm.cache_size`; the median query of a working set that fits the budget (second pass) vs
//!    the one-tenant case: <= 1.2x. Then a warm tenant's query right after another tenant's table
//!    changed (as VACUUM, ANALYZE or DDL announce it), against the same query warm: report.
//! 4. The first query of a tenant in a backend (cold) vs the next one (warm): <= 3x; next to the
//!    floor PostgreSQL sets, the same query as plain SQL as the tenant's role on tenants this
//!    backend never touched, cold and warm.
//! 5. 16 backends querying 1,000 tenants at random vs 10 tenants: queries per second and the
//!    backends' total heap.
//!
//! `TENANTS=2000 make bench BENCH=tenants` runs a smaller database.

use postgres::Client;
use std::time::{Duration, Instant};
use udm_bench::*;

const DB: &str = "bench_tenants";
const QUERY: &str = r#"{"columns": ["name", "x_axis_mode", "owner_id"], "limit": 5}"#;

fn heap(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT bytes FROM udm_cache_stats() WHERE cache = 'backend heap'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn budget(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT budget_bytes FROM udm_cache_stats() WHERE cache = 'total'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn mb(b: i64) -> f64 {
    b as f64 / 1048576.0
}

/// The plain-DDL twin of a udm tenant: its schema-only dump, renamed.
fn plain_template(c: &mut Client) -> (String, String) {
    c.batch_execute(
        "SELECT udm_create_tenant('zzref'); SELECT udm_use('zzref', NULL, true); \
         SELECT udm_install_template('roadmap');",
    )
    .unwrap();
    let role: String = c
        .query_one("SELECT role_name FROM udm.tenant WHERE slug = 'zzref'", &[])
        .unwrap()
        .get(0);
    let pgbin = std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let host = std::env::var("BENCH_HOST")
        .unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into());
    let port = std::env::var("BENCH_PORT").unwrap_or_else(|_| "5497".into());
    let out = std::process::Command::new(format!("{pgbin}/pg_dump"))
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "--schema-only",
            "-n",
            "zzref",
            DB,
        ])
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: String = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with('\\') && !l.starts_with("--") && !l.contains("set_config('search_path'")
        })
        .collect::<Vec<_>>()
        .join("\n");
    (dump, role)
}

fn main() {
    let tenants: usize = setting("TENANTS", 10_000);
    // PARTS=2,3,4 runs some parts (part 1 always runs unless REUSE=1 reuses an earlier run's database)
    let parts: String = setting("PARTS", "1,2,3,4,5".to_string());
    let part = |n: &str| parts.split(',').any(|p| p.trim() == n);
    if setting("REUSE", 0) == 1 {
        let mut c = connect(DB);
        let have: i64 = c
            .query_one(
                "SELECT count(*) FROM udm.tenant WHERE slug ~ '^t[0-9]+$'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            have as usize, tenants,
            "REUSE=1: the database has {have} tenants, TENANTS={tenants}"
        );
        after_onboarding(&mut c, tenants, &part);
        return;
    }
    let mut c = fresh_db(DB);
    let mut pg = connect("postgres");
    for r in pg
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%@bench\\_tenants%' OR rolname LIKE 'plain\\_%'",
            &[],
        )
        .unwrap()
    {
        let name: String = r.get(0);
        pg.batch_execute(&format!("DROP ROLE \"{name}\"")).unwrap();
    }

    // ---------------------------------------------------------------- 1. onboarding
    header(&format!(
        "onboarding {tenants} tenants with the roadmap template: udm vs the same tenant as plain DDL, interleaved"
    ));
    let (dump, role) = plain_template(&mut c);
    let (mut udm, mut plain) = (Vec::with_capacity(tenants), Vec::with_capacity(tenants));
    let started = Instant::now();
    for i in 0..tenants {
        let slug = format!("t{i}");
        let (d, r) = time(|| {
            c.batch_execute(&format!(
                "BEGIN; SELECT udm_create_tenant('{slug}'); SELECT udm_use('{slug}', NULL, true); \
                 SELECT udm_install_template('roadmap'); COMMIT;"
            ))
        });
        r.unwrap();
        udm.push(d);
        let p = format!("p{i}");
        let prole = format!("plain_{i}");
        let sql = format!(
            "BEGIN; CREATE ROLE \"{prole}\" NOLOGIN; {}; COMMIT;",
            dump.replace(&role, &prole).replace("zzref", &p)
        );
        let (d, r) = time(|| c.batch_execute(&sql));
        r.unwrap();
        plain.push(d);
        if (i + 1) % 1000 == 0 {
            eprintln!(
                "  ... {} tenants ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let h = 100.min(tenants);
    let (uf, ul) = (stats(&udm[..h]), stats(&udm[tenants - h..]));
    let (pf, pl) = (stats(&plain[..h]), stats(&plain[tenants - h..]));
    row("udm, first 100 tenants", uf);
    row("plain DDL, first 100 tenants", pf);
    row("udm, last 100 tenants", ul);
    row("plain DDL, last 100 tenants", pl);
    ratio(
        "udm / plain DDL, first 100 (median)",
        uf.median_ms,
        pf.median_ms,
        Some(1.3),
    );
    ratio(
        "udm / plain DDL, last 100 (median)",
        ul.median_ms,
        pl.median_ms,
        Some(1.3),
    );
    let ug = ratio(
        "growth last/first 100, udm",
        ul.median_ms,
        uf.median_ms,
        None,
    );
    let pgr = ratio(
        "growth last/first 100, plain DDL",
        pl.median_ms,
        pf.median_ms,
        None,
    );
    println!(
        "  udm growth / plain DDL growth: {:.2}x ({})",
        ug / pgr,
        if ug <= pgr * 1.1 {
            "met: no extra growth"
        } else {
            "NOT MET: grows faster"
        }
    );

    after_onboarding(&mut c, tenants, &part);
}

/// Parts 2 to 5, those `part` selects, on a database of `tenants` onboarded tenants.
fn after_onboarding(c: &mut Client, tenants: usize, part: &dyn Fn(&str) -> bool) {
    if part("2") {
        part2(c, tenants);
    }
    if part("3") {
        part3(tenants);
    }
    if part("4") {
        part4(tenants);
    }
    if part("5") {
        part5(tenants);
    }
}

fn part2(c: &mut Client, tenants: usize) {
    // ---------------------------------------------------------------- 2. users
    header(&format!(
        "users with {tenants} tenants in the database (goal <= 10 ms each, median)"
    ));
    c.batch_execute("SET udm.bcrypt_cost = 4").unwrap();
    let n = 30;
    let mut create = Vec::new();
    for k in 0..n {
        let (d, r) = time(|| {
            c.execute(
                "SELECT udm_create_user($1, 'Bench user', 'a-long-password')",
                &[&format!("u{k}@bench.test")],
            )
        });
        r.unwrap();
        create.push(d);
    }
    // each user joins 3 tenants
    for k in 0..n {
        for j in 0..3 {
            let t = format!("t{}", (k * 3 + j) % tenants);
            c.batch_execute(&format!(
                "SELECT udm_use('{t}'); SELECT udm_add_member('{t}', 'u{k}@bench.test', 'editor')"
            ))
            .unwrap();
        }
    }
    c.batch_execute("RESET udm.tenant").unwrap();
    let mut rename = Vec::new();
    for k in 0..n {
        let (d, r) = time(|| {
            c.execute(
                "SELECT udm_update_user($1, $2::jsonb)",
                &[
                    &format!("u{k}@bench.test"),
                    &serde_json::json!({"email": format!("v{k}@bench.test")}),
                ],
            )
        });
        r.unwrap();
        rename.push(d);
    }
    // half deleted by this backend (in a full run, the one that onboarded every tenant), half
    // by a new one, as a pooled backend of an application would
    let mut other = connect(DB);
    let (mut delete, mut delete_new) = (Vec::new(), Vec::new());
    for k in 0..n {
        let who = format!("v{k}@bench.test");
        if k % 2 == 0 {
            let (d, r) = time(|| c.execute("SELECT udm_delete_user($1, $1)", &[&who]));
            r.unwrap();
            delete.push(d);
        } else {
            let (d, r) = time(|| other.execute("SELECT udm_delete_user($1, $1)", &[&who]));
            r.unwrap();
            delete_new.push(d);
        }
    }
    for (label, s) in [
        ("udm_create_user", stats(&create)),
        ("renaming a user in 3 tenants", stats(&rename)),
        ("deleting a user of 3 tenants", stats(&delete)),
        ("  the same, by a new backend", stats(&delete_new)),
    ] {
        row(label, s);
        println!(
            "  {:<44} {}",
            "",
            if s.median_ms <= 10.0 {
                "goal <= 10 ms: met"
            } else {
                "goal <= 10 ms: NOT MET"
            }
        );
    }
}

/// Selects tenant `t` and times one query there (statements prepared per connection).
fn run_on(b: &mut Client, t: &str) -> Duration {
    b.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let (d, r) = time(|| b.query("SELECT udm_query('roadmap', $1::text::jsonb)", &[&QUERY]));
    r.unwrap();
    d
}

/// `clients` backends each running random tenants' queries for `secs`: (queries/s, heap total).
/// Each backend first visits every tenant of the spread once (warm-up, timed apart), then all
/// run random tenants' queries for `secs`.
fn many(clients: usize, spread: usize, secs: u64) -> (f64, i64, f64) {
    let warmed = std::sync::Arc::new(std::sync::Barrier::new(clients + 1));
    let go = std::sync::Arc::new(std::sync::Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let (warmed, go) = (warmed.clone(), go.clone());
            std::thread::spawn(move || {
                let mut c = connect(DB);
                let q = c
                    .prepare("SELECT udm_query('roadmap', $1::text::jsonb)")
                    .unwrap();
                let u = c.prepare("SELECT udm_use($1)").unwrap();
                for i in 0..spread {
                    let t = format!("t{}", (i + k * 37) % spread);
                    c.execute(&u, &[&t]).unwrap();
                    c.query(&q, &[&QUERY]).unwrap();
                }
                warmed.wait();
                go.wait();
                let stop = Instant::now() + Duration::from_secs(secs);
                let mut state = 0x9e3779b97f4a7c15u64 ^ (k as u64 + 1);
                let mut n = 0u64;
                while Instant::now() < stop {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let t = format!("t{}", state % spread as u64);
                    c.execute(&u, &[&t]).unwrap();
                    c.query(&q, &[&QUERY]).unwrap();
                    n += 1;
                }
                (n, heap(&mut c))
            })
        })
        .collect();
    let start = Instant::now();
    warmed.wait();
    let warm_up = start.elapsed().as_secs_f64();
    go.wait();
    let (mut n, mut h) = (0u64, 0i64);
    for t in handles {
        let (a, b) = t.join().unwrap();
        n += a;
        h += b;
    }
    (n as f64 / secs as f64, h, warm_up)
}

fn part3(tenants: usize) {
    // ---------------------------------------------------------------- 3. one backend, all tenants
    header("one backend serving every tenant in turn (udm_query each)");
    let mut b = connect(DB);
    let budget_b = budget(&mut b);
    let idle = heap(&mut b);
    // the one-tenant case
    let mut one = Vec::new();
    for _ in 0..2000 {
        one.push(run_on(&mut b, "t0"));
    }
    let one = stats(&one[200..]);
    row("one tenant, warm", one);
    // a working set that fits the budget: 200 tenants, second pass
    let ws = 200.min(tenants);
    for i in 0..ws {
        run_on(&mut b, &format!("t{i}"));
    }
    let mut fit = Vec::new();
    for _ in 0..5 {
        for i in 0..ws {
            fit.push(run_on(&mut b, &format!("t{i}")));
        }
    }
    let fit = stats(&fit);
    row(
        &format!("{ws} tenants in turn, warm (fits the budget)"),
        fit,
    );
    ratio(
        "working set in the budget / one tenant (median)",
        fit.median_ms,
        one.median_ms,
        Some(1.2),
    );
    let mut all = Vec::with_capacity(tenants);
    let mut peak = 0i64;
    for i in 0..tenants {
        all.push(run_on(&mut b, &format!("t{i}")));
        if i % 250 == 0 || i + 1 == tenants {
            peak = peak.max(heap(&mut b));
        }
    }
    row(
        &format!("all {tenants} tenants in turn (each cold)"),
        stats(&all),
    );
    println!(
        "  backend heap: idle {:.1} MB, peak {:.1} MB over {tenants} tenants; udm.cache_size {:.1} MB: peak - idle {} the budget",
        mb(idle),
        mb(peak),
        mb(budget_b),
        if peak - idle <= budget_b { "within" } else { "BEYOND" }
    );
    for r in b
        .query(
            "SELECT cache, entries, bytes, hits, misses, evictions FROM udm_cache_stats()",
            &[],
        )
        .unwrap()
    {
        let (name, e, by, hi, mi, ev): (String, i64, i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        println!(
            "    {name:<26} entries {e:>7}  {:>8.1} MB  hits {hi:>8}  misses {mi:>7}  evictions {ev:>7}",
            mb(by)
        );
    }
    // a warm tenant's query right after another tenant's table changed in another session,
    // with this backend's caches full: PostgreSQL announces VACUUM, ANALYZE and DDL of a table to
    // every backend alike (here a storage parameter, which always announces it); only that
    // tenant's cached definitions and plans may go
    if tenants >= 8 {
        let mut other = connect(DB);
        let warm = format!("t{}", tenants - 1);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for k in 0..100 {
            before.push(run_on(&mut b, &warm));
            other
                .batch_execute(&format!(
                    "ALTER TABLE t{}.roadmap SET (fillfactor = {})",
                    tenants - 2 - k % 5,
                    90 + k % 2
                ))
                .unwrap();
            after.push(run_on(&mut b, &warm));
        }
        let (bs, a) = (stats(&before), stats(&after));
        row("a warm tenant's query", bs);
        row("the same, after another tenant's table changed", a);
        ratio(
            "after another tenant's change / warm (median)",
            a.median_ms,
            bs.median_ms,
            None,
        );
    }
}

fn part4(tenants: usize) {
    // ---------------------------------------------------------------- 4. cold vs warm
    header("first query of a tenant in a backend (cold) vs the next (warm)");
    let mut b = connect(DB);
    run_on(&mut b, "t0");
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 1..=200.min(tenants - 1) {
        let t = format!("t{}", tenants - i);
        cold.push(run_on(&mut b, &t));
        warm.push(run_on(&mut b, &t));
    }
    // the floor PostgreSQL sets: the same query as plain SQL, as the tenant's role, on other
    // tenants (never touched by this backend either)
    let mut p = connect(DB);
    p.batch_execute("SELECT 1 FROM t0.roadmap LIMIT 1").unwrap();
    let (mut pcold, mut pwarm) = (Vec::new(), Vec::new());
    for i in 1..=200.min(tenants.saturating_sub(201)) {
        let t = format!("t{}", tenants - 200 - i);
        p.batch_execute(&format!("SET ROLE \"tenant_{t}@{DB}\""))
            .unwrap();
        let sql =
            format!("SELECT name, x_axis_mode, owner_id FROM {t}.roadmap ORDER BY id LIMIT 5");
        let (d, r) = time(|| p.simple_query(&sql));
        r.unwrap();
        pcold.push(d);
        let (d, r) = time(|| p.simple_query(&sql));
        r.unwrap();
        pwarm.push(d);
        p.batch_execute("RESET ROLE").unwrap();
    }
    let (cs, wsx) = (stats(&cold), stats(&warm));
    row("cold (tenant's first query in the backend)", cs);
    row("warm (its second)", wsx);
    ratio(
        "cold / warm (median)",
        cs.median_ms,
        wsx.median_ms,
        Some(3.0),
    );
    if !pcold.is_empty() {
        let (pc, pw) = (stats(&pcold), stats(&pwarm));
        row("plain SQL as the tenant's role, cold", pc);
        row("plain SQL as the tenant's role, warm", pw);
        ratio(
            "plain SQL cold / warm (median)",
            pc.median_ms,
            pw.median_ms,
            None,
        );
        ratio(
            "udm cold / plain SQL cold (median)",
            cs.median_ms,
            pc.median_ms,
            None,
        );
    }
}

fn part5(tenants: usize) {
    // ---------------------------------------------------------------- 5. 16 backends
    header("16 backends querying tenants at random (SECONDS each, after a warm-up)");
    let secs = setting("SECONDS", 10u64);
    let mut results = Vec::new();
    for spread in [10usize, 1000.min(tenants)] {
        let (qps, total_heap, warm_up) = many(16, spread, secs);
        println!(
            "  {spread:>5} tenants: {qps:>8.0} queries/s, backends' heap {:.1} MB in all ({:.1} MB each); warm-up (each backend visits each tenant once) {warm_up:.1} s",
            mb(total_heap),
            mb(total_heap) / 16.0
        );
        results.push((qps, total_heap));
    }
    ratio(
        "queries/s, 1,000 tenants / 10 tenants",
        results[1].0,
        results[0].0,
        None,
    );
}
