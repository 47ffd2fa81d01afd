//! Field encryption (issue 19), in one run, alternating: two entities with the same fields, one
//! with three of them encrypted (`a` with a blind index), the other plain (`a` indexed).
//!
//! * ROWS inserts (one `INSERT ... SELECT` through the tables' triggers, sealing each value; each
//!   after a checkpoint; ROUNDS rounds, 5 by default):
//!   goal <= 1.5x;
//! * a page of 50 with the three fields through `udm_query` (each value decrypted): goal <= 1.3x;
//! * an equality filter on `a` through `udm_query` (blind index vs plain index): goal <= 1.3x.

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
}
