//! Batch writes (issue 3): `udm_insert_many` of ROWS rows (one jsonb array) next to a plain
//! multi-row `INSERT ... VALUES (...), (...)` of the same rows, and `udm_upsert_many` over all of
//! them next to `INSERT ... ON CONFLICT (key) DO UPDATE`, in one run, alternating. Both sides
//! write to identical udm entities (same constraints, triggers and audit), so the ratio is what
//! the batch functions add: parsing the array, converting each value, checking it.

use serde_json::{json, Value};
use udm_bench::*;

const FIELDS: &str = r#"[
  {"name": "code", "type": "text", "required": true, "unique": true},
  {"name": "name", "type": "text", "required": true, "max_length": 200},
  {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
  {"name": "status", "type": "select", "values": ["draft", "active", "retired"]},
  {"name": "qty", "type": "integer"},
  {"name": "due", "type": "date"},
  {"name": "metadata", "type": "json"}]"#;

fn rows(n: usize, round: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let status = ["draft", "active", "retired"][i % 3];
            json!({
                "code": format!("C{i:07}"),
                "name": format!("item {i} r{round}"),
                "price": serde_json::from_str::<Value>(&format!("{}.{:02}", i % 1000, (i + round) % 100)).unwrap(),
                "status": status,
                "qty": (i * 7 + round) % 500,
                "due": format!("2027-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
                "metadata": {"brand": format!("b{}", i % 50), "round": round},
            })
        })
        .collect()
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `(... ), (...)`: the rows as a VALUES list, the way a client would send them.
fn values(rows: &[Value]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "({}, {}, {}, {}, {}, {}, {})",
                lit(r["code"].as_str().unwrap()),
                lit(r["name"].as_str().unwrap()),
                r["price"],
                lit(r["status"].as_str().unwrap()),
                r["qty"],
                lit(r["due"].as_str().unwrap()),
                lit(&r["metadata"].to_string()),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const COLS: &str = "code, name, price, status, qty, due, metadata";

fn main() {
    let n: usize = setting("ROWS", 100_000);
    let rounds: usize = setting("ROUNDS", 5);
    let mut c = fresh_db("bench_batch");
    let mut pg = connect("postgres");
    let _ = pg.batch_execute("DROP ROLE IF EXISTS tenant_bt");
    c.batch_execute(&format!(
        "SELECT udm_create_tenant('bt'); SELECT udm_use('bt');
         SELECT udm_define_entity('via_udm', '{{\"fields\": {FIELDS}}}');
         SELECT udm_define_entity('via_sql', '{{\"fields\": {FIELDS}}}');"
    ))
    .unwrap();
    header(&format!(
        "batch writes of {n} rows: udm_insert_many / udm_upsert_many vs plain multi-row INSERT, {rounds} rounds"
    ));
    let (mut ins_u, mut ins_s, mut up_u, mut up_s) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        c.batch_execute("TRUNCATE bt.via_udm, bt.via_sql").unwrap();
        let fresh = Value::Array(rows(n, round));
        let changed = rows(n, round + 100);
        let insert_sql = format!(
            "INSERT INTO bt.via_sql ({COLS}) VALUES {}",
            values(fresh.as_array().unwrap())
        );
        let upsert_sql = format!(
            "INSERT INTO bt.via_sql ({COLS}) VALUES {} ON CONFLICT (code) DO UPDATE SET \
             name = excluded.name, price = excluded.price, status = excluded.status, \
             qty = excluded.qty, due = excluded.due, metadata = excluded.metadata",
            values(&changed)
        );
        let changed = Value::Array(changed);
        let udm_insert = |c: &mut postgres::Client| {
            time(|| {
                c.query_one("SELECT udm_insert_many('via_udm', $1)", &[&fresh])
                    .unwrap()
            })
            .0
        };
        let sql_insert =
            |c: &mut postgres::Client| time(|| c.batch_execute(&insert_sql).unwrap()).0;
        if round % 2 == 0 {
            ins_u.push(udm_insert(&mut c));
            ins_s.push(sql_insert(&mut c));
        } else {
            ins_s.push(sql_insert(&mut c));
            ins_u.push(udm_insert(&mut c));
        }
        let udm_upsert = |c: &mut postgres::Client| {
            time(|| {
                c.query_one(
                    "SELECT udm_upsert_many('via_udm', $1, ARRAY['code'])",
                    &[&changed],
                )
                .unwrap()
            })
            .0
        };
        let sql_upsert =
            |c: &mut postgres::Client| time(|| c.batch_execute(&upsert_sql).unwrap()).0;
        if round % 2 == 0 {
            up_u.push(udm_upsert(&mut c));
            up_s.push(sql_upsert(&mut c));
        } else {
            up_s.push(sql_upsert(&mut c));
            up_u.push(udm_upsert(&mut c));
        }
    }
    let same: bool = c
        .query_one(
            &format!(
                "SELECT (SELECT array_agg(({COLS}) ORDER BY code)::text FROM bt.via_udm) = \
                        (SELECT array_agg(({COLS}) ORDER BY code)::text FROM bt.via_sql)"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    println!(
        "  same rows in both tables: {}",
        if same { "yes" } else { "NO" }
    );
    let mut summary = Vec::new();
    for (name, u, s) in [
        ("insert", &ins_u, &ins_s),
        ("upsert (all rows exist)", &up_u, &up_s),
    ] {
        header(name);
        let (su, ss) = (stats(u), stats(s));
        row("udm batch function", su);
        row("plain multi-row INSERT", ss);
        let m = ratio("median udm / plain", su.median_ms, ss.median_ms, None);
        println!(
            "  rate: udm {:.0} rows/s, plain {:.0} rows/s",
            n as f64 / su.median_ms * 1000.0,
            n as f64 / ss.median_ms * 1000.0
        );
        summary.push((name, m));
    }
    header("summary");
    for (name, m) in summary {
        println!("  {name:<28} median {m:>5.2}x");
    }
}
