//! The cost of auditing, in one run, on a 7-column entity (uuid, text, numeric, select, json,
//! timestamps): bulk insert of ROWS rows and an update of all of them, and single-row UPDATE
//! throughput with pgbench at 1 and 2 clients, for
//!   (a)  no audit: a plain table, and the same udm entity with `"audit": false`,
//!   (b)  the seed's PL/pgSQL row trigger (seed 001 section 4.6, with to_jsonb) on the plain table,
//!   (c)  udm's native audit on the udm entity,
//! and, in the bulk phase only, (a'') and (c'') as (a') and (c) with the plain tables' random
//! `gen_random_uuid()` ids instead of udm's time-ordered ones (what the id default is worth).
//!
//! and (d), the same udm entity in a tenant whose audit log is batched (`udm.audit_batches`,
//! issue 20: one log row per chunk of up to 1,000 changes, record pointers instead of a
//! per-change index).
//!
//! Goals (issue 4): (c) bulk insert <= 1.5x unaudited; (c) at least 1.5x faster than (b);
//! single-row update throughput of (c) >= 0.8x unaudited. Issue 20: (d) bulk insert <= 1.3x
//! unaudited, update of all rows <= 1.5x, single-row update throughput >= 0.9x. Also reported:
//! audit bytes per change.

use std::process::Command;
use std::time::Duration;
use udm_bench::*;

const VARIANTS: [(&str, &str); 7] = [
    ("plain", "(a) plain table, no audit"),
    ("udm_off", "(a') udm entity, audit off"),
    ("plpgsql", "(b) plain table + PL/pgSQL trigger"),
    ("udm", "(c) udm entity, native audit"),
    // what udm's time-ordered ids (udm.uuid_v7()) are worth: the same entities with the random
    // ids the plain tables have (bulk phase only)
    ("udm_off_random", "(a'') audit off, gen_random_uuid() ids"),
    ("udm_random", "(c'') native audit, gen_random_uuid() ids"),
    ("udm_batches", "(d) udm entity, batched audit log"),
];
/// Index of (d) in VARIANTS.
const BATCHES: usize = 6;
/// The variants pgbench runs (the random-id ones are for the bulk phase).
const PGBENCH_VARIANTS: usize = 4;

fn table(v: &str) -> &'static str {
    match v {
        "plain" => "public.t_plain",
        "plpgsql" => "public.t_plpgsql",
        "udm_off" => "ab.item_off",
        "udm_off_random" => "ab.item_off_random",
        "udm_random" => "ab.item_random",
        "udm_batches" => "abb.item",
        _ => "ab.item",
    }
}

fn setup(c: &mut postgres::Client) {
    let mut pg = connect("postgres");
    let _ = pg.batch_execute("DROP ROLE IF EXISTS tenant_ab; DROP ROLE IF EXISTS tenant_abb");
    c.batch_execute("SELECT udm_create_tenant('ab'); SELECT udm_use('ab');")
        .unwrap();
    // the 7-column entity, audited and not, with udm's ids and with random ones
    let fields = r#"[{"name": "name", "type": "text"},
        {"name": "price", "type": "decimal", "precision": 12, "scale": 2},
        {"name": "status", "type": "select", "values": ["draft", "active", "retired"]},
        {"name": "metadata", "type": "json"},
        {"name": "n", "type": "integer", "index": true}]"#;
    for (slug, audit, random_ids) in [
        ("item", true, false),
        ("item_off", false, false),
        ("item_random", true, true),
        ("item_off_random", false, true),
    ] {
        let def = format!(r#"{{"audit": {audit}, "fields": {fields}}}"#);
        c.execute(
            "SELECT udm_define_entity($1, $2::text::jsonb)",
            &[&slug, &def],
        )
        .unwrap();
        if random_ids {
            c.batch_execute(&format!(
                "ALTER TABLE ab.{slug} ALTER id SET DEFAULT gen_random_uuid()"
            ))
            .unwrap();
        }
    }
    // (d): a tenant whose audit log is batched
    c.batch_execute(
        "SET udm.audit_batches = on; SELECT udm_create_tenant('abb'); RESET udm.audit_batches; \
         SELECT udm_use('abb')",
    )
    .unwrap();
    c.execute(
        "SELECT udm_define_entity('item', $1::text::jsonb)",
        &[&format!(r#"{{"audit": true, "fields": {fields}}}"#)],
    )
    .unwrap();
    c.batch_execute("SELECT udm_use('ab')").unwrap();
    c.batch_execute(
        r#"CREATE TABLE public.t_plain (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text,
             price numeric(12,2), status text, metadata jsonb,
             created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), n integer);
           CREATE INDEX ON public.t_plain (n);
           CREATE TABLE public.t_plpgsql (LIKE public.t_plain INCLUDING ALL);
           CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, table_name text, record_id uuid, action text,
             old_data jsonb, new_data jsonb, user_id text, "timestamp" timestamptz);
           CREATE FUNCTION public.audit_trigger() RETURNS trigger AS $$
           BEGIN
             INSERT INTO audit_log (table_name, record_id, action, old_data, new_data, user_id, "timestamp")
             VALUES (TG_TABLE_NAME, COALESCE(NEW.id, OLD.id), TG_OP,
                     CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
                     CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
                     current_setting('app.current_user_id', true), NOW());
             RETURN COALESCE(NEW, OLD);
           END;
           $$ LANGUAGE plpgsql;
           CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON public.t_plpgsql
             FOR EACH ROW EXECUTE FUNCTION public.audit_trigger();"#,
    )
    .unwrap();
}

fn reset(c: &mut postgres::Client) {
    c.batch_execute(
        "TRUNCATE public.t_plain, public.t_plpgsql, public.audit_log, ab.item, ab.item_off, ab.item_random, ab.item_off_random, ab._udm_audit, \
         abb.item, abb._udm_audit_log, abb._udm_audit_heads",
    )
    .unwrap();
}

fn insert_sql(v: &str, rows: i64) -> String {
    format!(
        "INSERT INTO {} (name, price, status, metadata, n) \
         SELECT 'item ' || i, (i % 1000) / 10.0, (ARRAY['draft', 'active', 'retired'])[1 + i % 3], \
                jsonb_build_object('brand', 'b' || (i % 20), 'k', i), i \
         FROM generate_series(1, {rows}) i",
        table(v)
    )
}

/// tps of single-row UPDATEs on variant `v`; `options` go to the server (`PGOPTIONS`).
fn pgbench(v: &str, clients: u32, secs: u32, options: &str) -> f64 {
    let script = format!(
        "\\set n random(1, {})\nUPDATE {} SET price = price + 1 WHERE n = :n;\n",
        rows(),
        table(v)
    );
    let path = format!("/tmp/udm_bench_audit_{v}.sql");
    std::fs::write(&path, script).unwrap();
    let pgbin = std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let host = std::env::var("BENCH_HOST")
        .unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into());
    let port = std::env::var("BENCH_PORT").unwrap_or_else(|_| "5497".into());
    let out = Command::new(format!("{pgbin}/pgbench"))
        .env("PGOPTIONS", options)
        .args([
            "-n",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.to_string(),
            "-T",
            &secs.to_string(),
            "-f",
            &path,
            "bench_audit",
        ])
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "pgbench failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Issue 20's reads, per-change log (c) against batched (d), in one run, alternating: the history
/// of a record with 100 versions, `udm_record_at` in the middle of it, and `udm_audit_verify` of
/// the whole log (what the bulk phase left: ROWS inserts and ROWS updates, plus the record's).
fn reads(c: &mut postgres::Client) {
    let n: usize = setting("READS", 200);
    header(&format!(
        "audit reads: a record with 100 versions among {} changes, {n} calls each, alternating",
        2 * rows()
    ));
    // both logs hold the same changes: ROWS inserts and an update of each
    reset(c);
    for v in ["udm", "udm_batches"] {
        c.batch_execute(&insert_sql(v, rows())).unwrap();
        c.batch_execute(&format!("UPDATE {} SET price = price + 1", table(v)))
            .unwrap();
    }
    let mut ids = Vec::new();
    for tenant in ["ab", "abb"] {
        c.batch_execute(&format!("SELECT udm_use('{tenant}')"))
            .unwrap();
        let id: String = c
            .query_one(
                "SELECT udm_insert('item', '{\"name\": \"h\", \"price\": 1}')->>'id'",
                &[],
            )
            .unwrap()
            .get(0);
        for v in 2..=100 {
            c.execute(
                "SELECT udm_update('item', $1::text::uuid, jsonb_build_object('price', $2::int))",
                &[&id, &v],
            )
            .unwrap();
        }
        let mid: String = c
            .query_one(
                &format!(
                    "SELECT changed_at::text FROM {tenant}._udm_audit WHERE record_id = '{id}' AND record_version = 50"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        ids.push((tenant, id, mid));
    }
    let mut history = vec![vec![]; 2];
    let mut at = vec![vec![]; 2];
    let mut verify = vec![vec![]; 2];
    for round in 0..n {
        for (k, (tenant, id, mid)) in ids.iter().enumerate() {
            c.batch_execute(&format!("SELECT udm_use('{tenant}')"))
                .unwrap();
            let (d, count) = time(|| {
                c.query_one(
                    "SELECT count(*) FROM udm_history('item', $1::text::uuid)",
                    &[id],
                )
                .unwrap()
                .get::<_, i64>(0)
            });
            assert_eq!(count, 100, "{tenant}");
            history[k].push(d);
            let (d, price) = time(|| {
                c.query_one(
                    "SELECT (udm_record_at('item', $1::text::uuid, $2::text::timestamptz)->>'price')::numeric::int",
                    &[id, mid],
                )
                .unwrap()
                .get::<_, i32>(0)
            });
            assert_eq!(price, 50, "{tenant}");
            at[k].push(d);
            if round < 3 {
                let (d, ok) = time(|| {
                    c.query_one("SELECT (udm_audit_verify()->>'ok')::boolean", &[])
                        .unwrap()
                        .get::<_, bool>(0)
                });
                assert!(ok, "{tenant}");
                verify[k].push(d);
            }
        }
    }
    let names = ["(c) per-change log", "(d) batched"];
    for (label, d) in [
        ("history of 100 versions", &history),
        ("udm_record_at", &at),
        ("udm_audit_verify (3 calls)", &verify),
    ] {
        println!("\n  {label}");
        let med: Vec<f64> = d
            .iter()
            .zip(names)
            .map(|(s, name)| {
                let st = stats(s);
                row(name, st);
                st.median_ms
            })
            .collect();
        println!(
            "  {label}: (d) / (c) ratio {:.2}x (goal: no read more than 3x slower: {})",
            med[1] / med[0],
            if med[1] / med[0] <= 3.0 {
                "met"
            } else {
                "NOT MET"
            }
        );
    }
    c.batch_execute("SELECT udm_use('ab')").unwrap();
}

fn rows() -> i64 {
    setting("ROWS", 200_000)
}

fn main() {
    let rows = rows();
    let rounds: usize = setting("ROUNDS", 3);
    let secs: u32 = setting("SECS", 5);
    let mut c = fresh_db("bench_audit");
    setup(&mut c);
    header(&format!(
        "audit: bulk insert and update of {rows} rows, {rounds} rounds, variants interleaved"
    ));
    let mut ins: Vec<Vec<Duration>> = vec![vec![]; VARIANTS.len()];
    let mut upd: Vec<Vec<Duration>> = vec![vec![]; VARIANTS.len()];
    let mut bytes = (0f64, 0f64, 0f64);
    for _ in 0..rounds {
        for (k, (v, _)) in VARIANTS.iter().enumerate() {
            reset(&mut c);
            c.batch_execute("CHECKPOINT").unwrap();
            let (d, _) = time(|| c.batch_execute(&insert_sql(v, rows)).unwrap());
            ins[k].push(d);
            let (d, _) = time(|| {
                c.batch_execute(&format!("UPDATE {} SET price = price + 1", table(v)))
                    .unwrap()
            });
            upd[k].push(d);
            if *v == "udm" {
                let r = c
                    .query_one(
                        "SELECT pg_total_relation_size('ab._udm_audit')::float8 / count(*) FROM ab._udm_audit",
                        &[],
                    )
                    .unwrap();
                bytes.0 = r.get(0);
            }
            if *v == "udm_batches" {
                let r = c
                    .query_one(
                        "SELECT pg_total_relation_size('abb._udm_audit_log')::float8 \
                           / sum(cardinality(record_ids)) FROM abb._udm_audit_log",
                        &[],
                    )
                    .unwrap();
                bytes.2 = r.get(0);
            }
            if *v == "plpgsql" {
                let r = c
                    .query_one(
                        "SELECT pg_total_relation_size('public.audit_log')::float8 / count(*) FROM public.audit_log",
                        &[],
                    )
                    .unwrap();
                bytes.1 = r.get(0);
            }
        }
    }
    let med = |label: &str, d: &[Vec<Duration>]| -> Vec<f64> {
        println!("\n  {label}");
        VARIANTS
            .iter()
            .zip(d)
            .map(|((_, name), s)| {
                let st = stats(s);
                row(name, st);
                st.median_ms
            })
            .collect()
    };
    let i = med("bulk insert", &ins);
    let u = med("update of all rows", &upd);
    println!();
    ratio(
        "bulk insert (c) / (a') udm unaudited",
        i[3],
        i[1],
        Some(1.5),
    );
    ratio("bulk insert (c) / (a) plain table", i[3], i[0], None);
    ratio("bulk insert (b) / (a) plain table", i[2], i[0], None);
    let faster = i[2] / i[3];
    println!(
        "  bulk insert (b) / (c): udm is {faster:.2}x faster than the PL/pgSQL trigger (goal >= 1.5x: {})",
        if faster >= 1.5 { "met" } else { "NOT MET" }
    );
    ratio(
        "bulk insert (a'') random ids / (a') udm ids, audit off",
        i[4],
        i[1],
        None,
    );
    ratio(
        "bulk insert (c'') random ids / (c) udm ids, native audit",
        i[5],
        i[3],
        None,
    );
    ratio(
        "bulk insert (c'') / (a'') with random ids on both",
        i[5],
        i[4],
        None,
    );
    println!(
        "  bulk insert (b) / (c''): with random ids udm is {:.2}x faster than the PL/pgSQL trigger",
        i[2] / i[5]
    );
    ratio(
        "bulk insert (d) batched / (a') udm unaudited",
        i[BATCHES],
        i[1],
        Some(1.3),
    );
    ratio(
        "bulk insert (d) batched / (c) per-change log",
        i[BATCHES],
        i[3],
        None,
    );
    ratio("update all (c) / (a') udm unaudited", u[3], u[1], None);
    ratio(
        "update all (d) batched / (a') udm unaudited",
        u[BATCHES],
        u[1],
        Some(1.5),
    );
    ratio("update all (b) / (a) plain table", u[2], u[0], None);
    println!(
        "  update all (b) / (c): udm is {:.2}x faster than the PL/pgSQL trigger",
        u[2] / u[3]
    );
    println!(
        "  audit bytes per change (table + indexes): udm {:.0} B, batched {:.0} B, PL/pgSQL audit_log {:.0} B",
        bytes.0, bytes.2, bytes.1
    );

    reads(&mut c);

    // the disk's flush time moves between runs: each variant runs several short times,
    // interleaved with the others, and the median is compared
    let pg_rounds: usize = setting("PGBENCH_ROUNDS", 5);
    header(&format!(
        "single-row UPDATE throughput with pgbench ({pg_rounds} rounds of {secs} s per variant, interleaved; medians)"
    ));
    reset(&mut c);
    for (v, _) in VARIANTS[..PGBENCH_VARIANTS]
        .iter()
        .chain([&VARIANTS[BATCHES]])
    {
        c.batch_execute(&insert_sql(v, rows)).unwrap();
        c.batch_execute(&format!("VACUUM ANALYZE {}", table(v)))
            .unwrap();
    }
    c.batch_execute("CHECKPOINT").unwrap();
    // (variant, PGOPTIONS): the four variants, and (c) with the pg_notify wake-up turned on (it
    // is off by default: PostgreSQL serialises the commits of notifying transactions in a
    // database, a lock from pre-commit to the end of commit)
    let mut runs: Vec<(&str, &str, &str)> = VARIANTS[..PGBENCH_VARIANTS]
        .iter()
        .map(|(v, name)| (*v, *name, ""))
        .collect();
    runs.push((
        VARIANTS[3].0,
        "(c) with udm.notify_changes = on",
        "-c udm.notify_changes=on",
    ));
    runs.push((VARIANTS[BATCHES].0, VARIANTS[BATCHES].1, ""));
    for clients in [1u32, 2] {
        let mut tps: Vec<Vec<f64>> = vec![vec![]; runs.len()];
        for _ in 0..pg_rounds {
            for (k, (v, _, options)) in runs.iter().enumerate() {
                tps[k].push(pgbench(v, clients, secs, options));
            }
        }
        let med: Vec<f64> = tps
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.sort_by(|a, b| a.total_cmp(b));
                t[t.len() / 2]
            })
            .collect();
        for (k, (_, name, _)) in runs.iter().enumerate() {
            let all: Vec<String> = tps[k].iter().map(|t| format!("{t:.0}")).collect();
            println!(
                "  {clients} client(s)  {name:<40} median {:>7.0} tps  (runs: {})",
                med[k],
                all.join(", ")
            );
        }
        let r = med[3] / med[1];
        // each round runs every variant once, close together in time: the median of the
        // per-round ratios (c) / (a') is the paired comparison, less moved by the disk
        let mut paired: Vec<f64> = tps[3].iter().zip(&tps[1]).map(|(c, a)| c / a).collect();
        paired.sort_by(|a, b| a.total_cmp(b));
        let all: Vec<String> = paired.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  {clients} client(s)  (c) / (a') udm unaudited: {r:.2}x (goal >= 0.8x: {}); per round {}, median {:.2}x",
            if r >= 0.8 { "met" } else { "NOT MET" },
            all.join(", "),
            paired[paired.len() / 2]
        );
        println!(
            "  {clients} client(s)  (c) / (a) plain table: {:.2}x;  (b) / (a): {:.2}x;  (c) with notify on / (a'): {:.2}x",
            med[3] / med[0],
            med[2] / med[0],
            med[4] / med[1]
        );
        let r = med[5] / med[1];
        println!(
            "  {clients} client(s)  (d) batched / (a') udm unaudited: {r:.2}x (goal >= 0.9x: {})",
            if r >= 0.9 { "met" } else { "NOT MET" }
        );
    }
}
