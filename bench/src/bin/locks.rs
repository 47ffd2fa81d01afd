//! Write locks against a plain lease row: acquire / heartbeat / release cycles per second at 1, 8
//! and 32 clients, each client cycling on a record of its own, udm and baseline in the same run.
//!
//! udm: `udm_lock_acquire`, `udm_lock_heartbeat`, `udm_lock_release` on an entity with a lock
//! scope (each audited, with a change event). Baseline: the lease row a hand-written app would
//! keep, `UPDATE lease SET holder = $1, expires_at = now() + '5 min' WHERE id = $2 AND
//! (expires_at < now() OR holder = $1)` and the matching heartbeat and release UPDATEs.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use udm_bench::*;

const DB: &str = "bench_locks";
const CLIENTS: [usize; 3] = [1, 8, 32];
const ROUNDS: usize = 2;

fn seconds() -> f64 {
    setting("SECONDS_PER_RUN", 3.0)
}

fn setup(c: &mut postgres::Client, records: usize) -> Vec<String> {
    let mut pg = connect("postgres");
    let _ = pg.batch_execute("DROP ROLE IF EXISTS tenant_lb");
    c.batch_execute(&format!(
        r#"SELECT udm_create_tenant('lb');
           SELECT udm_use('lb');
           SELECT udm_define_entity('doc', '{{"fields": [{{"name": "name", "type": "text"}}], "lock": "self"}}');
           INSERT INTO lb.doc (name) SELECT 'doc ' || i FROM generate_series(1, {records}) i;
           CREATE TABLE public.lease (id uuid PRIMARY KEY, holder text, expires_at timestamptz NOT NULL DEFAULT '-infinity');
           INSERT INTO public.lease (id) SELECT id FROM lb.doc;"#
    ))
    .unwrap();
    c.query("SELECT id::text FROM lb.doc ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Udm,
    Lease,
}

/// Cycles per second of `clients` sessions, each on its own record, for `secs`.
fn run(variant: Variant, clients: usize, ids: &[String], secs: f64) -> f64 {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let barrier = barrier.clone();
            let id = ids[i].clone();
            thread::spawn(move || {
                let mut c = connect(DB);
                let user = format!("user{i}");
                c.query_one("SELECT udm_use('lb', $1)", &[&user]).unwrap();
                let stmts = match variant {
                    Variant::Udm => [
                        c.prepare("SELECT udm_lock_acquire('doc', $1::text::uuid)->>'acquired'").unwrap(),
                        c.prepare("SELECT udm_lock_heartbeat('doc', $1::text::uuid)->>'mine'").unwrap(),
                        c.prepare("SELECT udm_lock_release('doc', $1::text::uuid)->>'released'").unwrap(),
                    ],
                    Variant::Lease => [
                        c.prepare("UPDATE public.lease SET holder = $2, expires_at = now() + interval '5 min' WHERE id = $1::text::uuid AND (expires_at < now() OR holder = $2) RETURNING 'true'").unwrap(),
                        c.prepare("UPDATE public.lease SET expires_at = now() + interval '5 min' WHERE id = $1::text::uuid AND holder = $2 RETURNING 'true'").unwrap(),
                        c.prepare("UPDATE public.lease SET holder = NULL, expires_at = '-infinity' WHERE id = $1::text::uuid AND holder = $2 RETURNING 'true'").unwrap(),
                    ],
                };
                barrier.wait();
                let start = Instant::now();
                let mut cycles = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    for s in &stmts {
                        let row = match variant {
                            Variant::Udm => c.query_one(s, &[&id]),
                            Variant::Lease => c.query_one(s, &[&id, &user]),
                        }
                        .unwrap();
                        assert_eq!(row.get::<_, String>(0), "true", "every step succeeds");
                    }
                    cycles += 1;
                }
                (cycles, start.elapsed())
            })
        })
        .collect();
    barrier.wait();
    let mut total = 0u64;
    let mut longest = Duration::ZERO;
    for h in handles {
        let (n, d) = h.join().unwrap();
        total += n;
        longest = longest.max(d);
    }
    total as f64 / longest.as_secs_f64()
}

fn main() {
    let secs = seconds();
    let mut c = fresh_db(DB);
    header("write locks vs a plain lease-row UPDATE (acquire + heartbeat + release cycles/s)");
    let ids = setup(&mut c, *CLIENTS.iter().max().unwrap());
    let mut summary = Vec::new();
    for &n in &CLIENTS {
        let (mut u, mut l) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // alternate which goes first
            if round % 2 == 0 {
                u.push(run(Variant::Udm, n, &ids, secs));
                l.push(run(Variant::Lease, n, &ids, secs));
            } else {
                l.push(run(Variant::Lease, n, &ids, secs));
                u.push(run(Variant::Udm, n, &ids, secs));
            }
        }
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (u, l) = (avg(&u), avg(&l));
        println!("  {n:>2} clients: udm {u:>8.0} cycles/s   lease row {l:>8.0} cycles/s   udm / lease {:.2}x", u / l);
        summary.push((n, u, l));
    }
    let audit_rows: i64 = c
        .query_one(
            "SELECT count(*) FROM lb._udm_audit WHERE entity = 'doc#lock'",
            &[],
        )
        .unwrap()
        .get(0);
    println!("  lock events audited: {audit_rows}");
    header("summary");
    for (n, u, l) in summary {
        println!("  {n:>2} clients  throughput udm / lease row {:.2}x", u / l);
    }
}
