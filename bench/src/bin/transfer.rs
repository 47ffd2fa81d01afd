//! Moving a tenant: `udm-tenant export` + `udm-tenant import` of a tenant with 1,000,000 records
//! (and their 1,000,000 audit rows) into another database of the cluster, next to `pg_dump -n
//! <schema>` + `pg_restore` of the same schema into another database, in one run, rounds
//! interleaved. Both go through a file. The baseline is timed as `pg_dump -Fc` writes by default
//! (compressed) and uncompressed (`-Z0`, like udm-tenant's archive); the goal (issue 16) is
//! udm / baseline <= 1.5 against the uncompressed one, the faster.
//!
//! What the import does beyond the restore is part of its time: every row counted against the
//! manifest, the catalog checked, the audit chain verified (every hash recomputed).
//!
//! `BATCHED=1`: the tenant keeps its audit log in batches (`udm.audit_batches`, issue 20), which
//! moves as chunks with each row's pointer.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use udm_bench::*;

fn pgbin(tool: &str) -> PathBuf {
    PathBuf::from(std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()))
        .join(tool)
}

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/udm-tenant")
}

fn host() -> String {
    std::env::var("BENCH_HOST").unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into())
}

fn port() -> String {
    std::env::var("BENCH_PORT").unwrap_or_else(|_| "5497".into())
}

fn conninfo(db: &str) -> String {
    format!("host={} port={} user=postgres dbname={db}", host(), port())
}

fn run(mut cmd: Command) -> Duration {
    let (d, out) = time(|| cmd.env_remove("PGOPTIONS").output().expect("run"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// Runs a command as `run` does, and returns its peak resident memory too (the child's own
/// `ru_maxrss`, from `wait4`), in MB.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its resource usage
fn run_measured(mut cmd: Command) -> (Duration, f64) {
    let start = std::time::Instant::now();
    let child = cmd
        .env_remove("PGOPTIONS")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let mut status = 0;
    // SAFETY: waits for the child just spawned (not waited for elsewhere)
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let d = start.elapsed();
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed ({status})"
    );
    (d, usage.ru_maxrss as f64 / 1024.0)
}

fn pg(tool: &str, args: &[&str]) -> Command {
    let mut c = Command::new(pgbin(tool));
    c.args(["-h", &host(), "-p", &port(), "-U", "postgres"]);
    c.args(args);
    c
}

/// Drops a database and the tenant roles it made (roles are the cluster's).
fn drop_db(pg: &mut postgres::Client, db: &str) {
    pg.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    let roles: Vec<String> = pg
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE '%@' || $1",
            &[&db],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for r in roles {
        pg.batch_execute(&format!("DROP ROLE \"{r}\"")).unwrap();
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rows: i64 = setting("ROWS", 1_000_000);
    let rounds: usize = setting("ROUNDS", 3);
    // BATCHED=1: the tenant keeps its audit log in batches (udm.audit_batches, issue 20)
    let batched = setting("BATCHED", 0) == 1;
    assert!(
        tool().exists(),
        "{} is missing: bench/run.sh builds it (cargo build --release -p udm-tenant)",
        tool().display()
    );
    let mut pgc = connect("postgres");
    // (the restored copies hold grants to the source's tenant role: they go first)
    for db in [
        "bench_transfer_pg",
        "bench_transfer_pg0",
        "bench_transfer_udm",
        "bench_transfer_src",
    ] {
        drop_db(&mut pgc, db);
    }
    let mut c = fresh_db("bench_transfer_src");
    header(&format!(
        "moving a tenant of {rows} records{}: udm-tenant export + import vs pg_dump -n + pg_restore, {rounds} rounds",
        if batched { " (audit log in batches)" } else { "" }
    ));
    let (d, _) = time(|| {
        c.batch_execute(&format!(
            r#"SET udm.audit_batches = {batched};
               SELECT udm_create_tenant('tx');
               RESET udm.audit_batches;
               SELECT udm_use('tx');
               SELECT udm_define_entity('category', '{{"fields": [{{"name": "name", "type": "text", "required": true, "unique": true}}]}}');
               SELECT udm_define_entity('product', '{{"fields": [
                 {{"name": "name", "type": "text", "required": true, "max_length": 200}},
                 {{"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0}},
                 {{"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"}},
                 {{"name": "metadata", "type": "json"}},
                 {{"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"}},
                 {{"name": "released", "type": "date"}},
                 {{"name": "stock", "type": "integer", "min": 0}}]}}');
               INSERT INTO tx.category (name) SELECT 'category ' || i FROM generate_series(1, 100) i;
               INSERT INTO tx.product (name, price, status, metadata, category_id, released, stock)
                 SELECT 'product ' || i, (i % 1000) + 0.99, (ARRAY['draft', 'active', 'retired'])[1 + i % 3],
                        jsonb_build_object('brand', 'b' || (i % 50), 'weight', i % 7),
                        (SELECT id FROM tx.category WHERE name = 'category ' || (1 + i % 100)),
                        DATE '2020-01-01' + (i % 2000), i % 500
                 FROM generate_series(1, {rows}) i;"#
        ))
        .unwrap();
        c.batch_execute("VACUUM ANALYZE tx.product").unwrap();
        c.batch_execute(if batched {
            "VACUUM ANALYZE tx._udm_audit_log, tx._udm_audit_heads"
        } else {
            "VACUUM ANALYZE tx._udm_audit"
        })
        .unwrap();
    });
    println!("  loaded in {:.1} s", secs(d));
    let sizes: (String, String) = {
        let r = c
            .query_one(
                "SELECT pg_size_pretty(pg_total_relation_size('tx.product')), \
                        (SELECT pg_size_pretty(sum(pg_total_relation_size(oid))) FROM pg_class \
                         WHERE relnamespace = 'tx'::regnamespace AND relkind = 'r' \
                           AND relname IN ('_udm_audit', '_udm_audit_log', '_udm_audit_heads'))",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    println!("  product: {}, audit log: {}", sizes.0, sizes.1);
    let dir = std::env::temp_dir().join(format!("udm-bench-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dump = dir.join("tx.dump").display().to_string();
    let dump0 = dir.join("tx0.dump").display().to_string();
    let archive = dir.join("tx.udm").display().to_string();

    let (mut ours, mut plain, mut packed) = (Vec::new(), Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    let (mut peak_rss, mut archive_mb) = (0f64, 0f64);
    for round in 0..rounds {
        for db in [
            "bench_transfer_pg",
            "bench_transfer_pg0",
            "bench_transfer_udm",
        ] {
            drop_db(&mut pgc, db);
            drop(fresh_db(db));
        }
        // the baseline, uncompressed and as pg_dump -Fc writes by default
        let d0 = run(pg(
            "pg_dump",
            &["-Fc", "-Z0", "-n", "tx", "-f", &dump0, "bench_transfer_src"],
        ));
        let r0 = run(pg(
            "pg_restore",
            &["--exit-on-error", "-d", "bench_transfer_pg0", &dump0],
        ));
        let d1 = run(pg(
            "pg_dump",
            &["-Fc", "-n", "tx", "-f", &dump, "bench_transfer_src"],
        ));
        let r1 = run(pg(
            "pg_restore",
            &["--exit-on-error", "-d", "bench_transfer_pg", &dump],
        ));
        // udm
        let mut export = Command::new(tool());
        export.args([
            "export",
            &conninfo("bench_transfer_src"),
            "tx",
            "-o",
            &archive,
        ]);
        let (e, e_rss) = run_measured(export);
        let mut import = Command::new(tool());
        import.args(["import", &conninfo("bench_transfer_udm"), "-i", &archive]);
        let (i, i_rss) = run_measured(import);
        peak_rss = peak_rss.max(e_rss).max(i_rss);
        let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        archive_mb = size(&archive);
        println!(
            "  round {}: udm-tenant export {:.2} s + import {:.2} s = {:.2} s ({:.0} MB) | pg_dump -Z0 {:.2} s + pg_restore {:.2} s = {:.2} s ({:.0} MB) | pg_dump {:.2} s + pg_restore {:.2} s = {:.2} s ({:.0} MB)",
            round + 1,
            secs(e),
            secs(i),
            secs(e + i),
            size(&archive),
            secs(d0),
            secs(r0),
            secs(d0 + r0),
            size(&dump0),
            secs(d1),
            secs(r1),
            secs(d1 + r1),
            size(&dump)
        );
        ratios.push(secs(e + i) / secs(d0 + r0));
        ours.push(secs(e + i));
        plain.push(secs(d0 + r0));
        packed.push(secs(d1 + r1));
    }
    // the imported tenant is whole
    let mut u = connect("bench_transfer_udm");
    u.query_one("SELECT udm_use('tx')", &[]).unwrap();
    let n: i64 = u
        .query_one("SELECT count(*) FROM tx.product", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, rows, "every record arrived");
    let v: String = u
        .query_one("SELECT udm_audit_verify()->>'ok'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, "true", "the audit chain verifies");
    println!("  imported tenant: {n} records, audit chain verifies");
    println!(
        "  udm-tenant's peak memory (export or import): {peak_rss:.1} MB for an archive of {archive_mb:.0} MB"
    );
    println!(
        "  medians: udm {:.2} s, pg_dump -Z0 + pg_restore {:.2} s, pg_dump + pg_restore {:.2} s",
        median(ours.clone()),
        median(plain.clone()),
        median(packed.clone())
    );
    ratio(
        "udm / (pg_dump -Fc -Z0 + pg_restore), medians",
        median(ours.clone()),
        median(plain),
        Some(1.5),
    );
    ratio(
        "udm / (pg_dump -Fc + pg_restore), medians",
        median(ours),
        median(packed),
        Some(1.5),
    );
    println!(
        "  per-round ratios (vs -Z0): {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
