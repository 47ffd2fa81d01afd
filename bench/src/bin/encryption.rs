//! Field encryption (issue 19), in one run, alternating: two entities with the same fields, one
//! with three of them encrypted (`a` with a blind index), the other plain (`a` indexed).
//!
//! * ROWS inserts (one `INSERT ... SELECT` through the tables' triggers, sealing each value; each
//!   after a checkpoint; ROUNDS rounds, 5 by default):
//!   goal <= 1.5x;
//! * a page of 50 with the three fields through `udm_query` (each value decrypted): goal <= 1.3x;
//! * an equality filter on `a` through `udm_query` (blind index vs plain index): goal <= 1.3x.
//!
//! Then a report (no goal): turning encryption on for a required indexed `date` and a `json`
//! field of ROWS records, the staged way (`udm_reencrypt` sealing beside the columns, then the
//! swap) against the rewrite it replaced (two `ALTER COLUMN ... TYPE text`), each while a reader
//! queries the table without pause: how long the reader's longest query took (what the lock held
//! it up) against its median.

use udm_bench::*;

fn fields(encrypted: bool) -> String {
    let e = if encrypted {
        ", \"encrypted\": true"
    } else {
        ""
    };
    format!(
        r#"{{"fields": [{{"name": "name", "type": "text"}},
            {{"name": "a", "type": "text", "index": true{e}}},
            {{"name": "b", "type": "text"{e}}},
            {{"name": "c", "type": "long_text"{e}}}]}}"#
    )
}

fn main() {
    let n: i64 = setting("ROWS", 100_000);
    let rounds: usize = setting("ROUNDS", 5);
    let reads: usize = setting("READS", 300);
    let mut c = fresh_db("bench_encryption");
    let mut pg = connect("postgres");
    let _ = pg.batch_execute("DROP ROLE IF EXISTS tenant_be");
    c.batch_execute("SELECT udm_create_tenant('be'); SELECT udm_use('be')")
        .unwrap();
    for (name, enc) in [("sealed", true), ("plain", false)] {
        c.query_one(
            "SELECT udm_define_entity($1::text, $2::text::jsonb)",
            &[&name, &fields(enc)],
        )
        .unwrap_or_else(|e| {
            panic!("define {name}: {e} (is the bench cluster started with a key file?)")
        });
    }
    header(&format!(
        "field encryption: {n} inserts, pages of 50, equality filters; encrypted vs plain"
    ));
    let insert = |c: &mut postgres::Client, table: &str| {
        let sql = format!(
            "INSERT INTO be.{table} (name, a, b, c) SELECT 'n' || i, 'a' || i, 'b' || i, \
             'a somewhat longer note about record ' || i FROM generate_series(1, {n}) i"
        );
        // each insert starts after a checkpoint, so that none pays for one the other started
        c.batch_execute("CHECKPOINT").unwrap();
        time(|| c.batch_execute(&sql).unwrap()).0
    };
    let (mut ins_e, mut ins_p) = (vec![], vec![]);
    for round in 0..rounds {
        c.batch_execute("TRUNCATE be.sealed, be.plain").unwrap();
        if round % 2 == 0 {
            ins_e.push(insert(&mut c, "sealed"));
            ins_p.push(insert(&mut c, "plain"));
        } else {
            ins_p.push(insert(&mut c, "plain"));
            ins_e.push(insert(&mut c, "sealed"));
        }
    }
    c.batch_execute("VACUUM ANALYZE be.sealed, be.plain")
        .unwrap();
    let page = r#"{"columns": ["name", "a", "b", "c"], "limit": 50}"#;
    let (mut page_e, mut page_p, mut eq_e, mut eq_p) = (vec![], vec![], vec![], vec![]);
    for i in 0..reads {
        let k = format!("a{}", 1 + (i as i64 * 7919) % n);
        let filter = serde_json::json!({"columns": ["name", "a"], "filters": {"a": k}}).to_string();
        let q = |c: &mut postgres::Client, e: &str, spec: &str| {
            let (d, r) = time(|| {
                c.query_one("SELECT udm_query($1::text, $2::text::jsonb)", &[&e, &spec])
                    .unwrap()
            });
            let v: serde_json::Value = r.get(0);
            (d, v["rows"].as_array().map_or(0, |a| a.len()))
        };
        let order: [(&str, bool); 2] = if i % 2 == 0 {
            [("sealed", true), ("plain", false)]
        } else {
            [("plain", false), ("sealed", true)]
        };
        for (e, enc) in order {
            let (d, rows) = q(&mut c, e, page);
            assert_eq!(rows, 50);
            if enc {
                page_e.push(d)
            } else {
                page_p.push(d)
            }
            let (d, rows) = q(&mut c, e, &filter);
            assert_eq!(rows, 1, "{e}: {filter}");
            if enc {
                eq_e.push(d)
            } else {
                eq_p.push(d)
            }
        }
    }
    let mut summary = Vec::new();
    for (name, e, p, goal) in [
        (
            format!("{n} inserts (one INSERT ... SELECT)"),
            &ins_e,
            &ins_p,
            1.5,
        ),
        (
            "a page of 50, 3 encrypted fields".to_string(),
            &page_e,
            &page_p,
            1.3,
        ),
        (
            "equality filter: blind index vs plain index".to_string(),
            &eq_e,
            &eq_p,
            1.3,
        ),
    ] {
        header(&name);
        let (se, sp) = (stats(e), stats(p));
        row("encrypted", se);
        row("plain", sp);
        let r = ratio(
            "median encrypted / plain",
            se.median_ms,
            sp.median_ms,
            Some(goal),
        );
        summary.push((name, r, goal));
    }
    header("summary");
    for (name, r, goal) in summary {
        println!(
            "  {name:<48} median {r:>5.2}x (goal <= {goal:.1}x: {})",
            if r <= goal { "met" } else { "NOT MET" }
        );
    }
    turning_on(&mut c, n);
}

/// A reader querying `table` without pause until `stop`: its queries' durations.
fn reader(
    table: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<std::time::Duration>> {
    std::thread::spawn(move || {
        let mut r = connect("bench_encryption");
        let sql = format!("SELECT 1 FROM be.{table} WHERE name = 'n5'");
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            out.push(time(|| r.batch_execute(&sql).unwrap()).0);
        }
        out
    })
}

/// Runs `work` while a reader queries `table`; the work's time and the reader's durations.
fn with_reader(
    table: &'static str,
    work: impl FnOnce(),
) -> (std::time::Duration, Vec<std::time::Duration>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = reader(table, stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (d, ()) = time(work);
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (d, h.join().unwrap())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The report on turning encryption on (see the module's comment).
fn turning_on(c: &mut postgres::Client, n: i64) {
    let def = r#"{"fields": [{"name": "name", "type": "text"},
        {"name": "day", "type": "date", "required": true, "index": true},
        {"name": "doc", "type": "json"}]}"#;
    for e in ["staged", "rewritten"] {
        c.query_one(
            "SELECT udm_define_entity($1::text, $2::text::jsonb)",
            &[&e, &def],
        )
        .unwrap();
        c.batch_execute(&format!(
            "INSERT INTO be.{e} (name, day, doc) SELECT 'n' || i, date '2000-01-01' + i % 9000, \
             jsonb_build_object('i', i, 's', repeat('x', 40)) FROM generate_series(1, {n}) i"
        ))
        .unwrap();
        c.batch_execute(&format!("VACUUM ANALYZE be.{e}")).unwrap();
    }
    let file = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT pg_relation_filenode('be.staged')::bigint", &[])
            .unwrap()
            .get(0)
    };
    let before = file(c);
    header(&format!(
        "turning encryption on for a required indexed date and a json field of {n} records \
         (report), a reader querying the table without pause"
    ));
    let (alter, ()) = time(|| {
        for f in ["day", "doc"] {
            c.batch_execute(&format!(
                "SELECT udm_alter_field('staged', '{f}', '{{\"encrypted\": true}}')"
            ))
            .unwrap();
        }
    });
    // sealing, while another session holds the table (so that this call leaves the swap)
    let mut holder = connect("bench_encryption");
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM be.staged")
        .unwrap();
    let reencrypt = |c: &mut postgres::Client| -> serde_json::Value {
        c.query_one("SELECT udm_reencrypt('staged', $1::int)", &[&(n as i32)])
            .unwrap()
            .get(0)
    };
    let (seal, r) = time(|| reencrypt(c));
    assert_eq!(r["swapped"], serde_json::json!([]), "{r}");
    holder.batch_execute("COMMIT").unwrap();
    let mut swapped = serde_json::Value::Null;
    let (swap, read_swap) = with_reader("staged", || swapped = reencrypt(c));
    assert_eq!(
        swapped["swapped"],
        serde_json::json!(["day", "doc"]),
        "{swapped}"
    );
    let (clear, r) = time(|| reencrypt(c));
    assert_eq!(r["completed"], serde_json::json!(["day", "doc"]), "{r}");
    assert_eq!(file(c), before, "the staged table was rewritten");
    // the rewrite udm ran before, as it ran it (rolled back)
    let (rewrite, read_rewrite) = with_reader("rewritten", || {
        c.batch_execute(
            "BEGIN; \
             ALTER TABLE be.rewritten ALTER COLUMN day TYPE text USING to_char(day, 'YYYY-MM-DD'); \
             ALTER TABLE be.rewritten ALTER COLUMN doc TYPE text USING (doc)::jsonb::text; \
             ROLLBACK",
        )
        .unwrap()
    });
    println!(
        "  staged: udm_alter_field of both fields        {:>9.1} ms",
        ms(alter)
    );
    println!(
        "  staged: sealing every record (one call)       {:>9.1} ms",
        ms(seal)
    );
    println!(
        "  staged: the swap (one call)                   {:>9.1} ms",
        ms(swap)
    );
    println!(
        "  staged: clearing the old plaintext (one call) {:>9.1} ms",
        ms(clear)
    );
    println!(
        "  rewrite: two ALTER COLUMN ... TYPE text       {:>9.1} ms",
        ms(rewrite)
    );
    let (rs, rr) = (stats(&read_swap), stats(&read_rewrite));
    let longest = |v: &[std::time::Duration]| v.iter().copied().max().map(ms).unwrap_or(0.0);
    let (ls, lr) = (longest(&read_swap), longest(&read_rewrite));
    println!(
        "  reader during the swap: median {:.1} ms, longest {ls:.1} ms ({:.1}x its median)",
        rs.median_ms,
        ls / rs.median_ms
    );
    println!(
        "  reader during the rewrite: median {:.1} ms, longest {lr:.1} ms ({:.1}x its median)",
        rr.median_ms,
        lr / rr.median_ms
    );
    ratio("reader's longest query: swap / rewrite", ls, lr, None);
}
