//! The query engine against hand-written SQL. A tenant with `product` (1,000,000 rows: name,
//! price, status select, metadata json, category_id relation), `category` (10,000 rows, parent_id
//! self-relation, attributes json) and `brand`. Each query runs through udm and, interleaved,
//! as the same result written by hand as a prepared statement; both see the same indexes.
//!
//! Goal (issue 3): each <= 1.10x the hand-written baseline at the median and at p95, with the
//! same plan shape; plus the compile-only time per call with a warm cache.

use postgres::types::ToSql;
use serde_json::{json, Value};
use std::time::Duration;
use udm_bench::*;

/// Chooses the benchmark's tenant in a session.
const TENANT_SQL: &str = "SELECT udm_use('qb')";

const BRANDS: usize = CATALOG_BRANDS;

fn setup(c: &mut postgres::Client, rows: i64) {
    let d = product_catalog(c, "qb", rows);
    println!(
        "  loaded {rows} products, 10,000 categories in {:.1} s",
        d.as_secs_f64()
    );
}

struct Case {
    name: &'static str,
    udm_sql: &'static str,
    /// the spec (jsonb) for udm, per iteration
    udm_arg: Box<dyn Fn(usize) -> Value>,
    hand_sql: String,
    hand_args: Box<dyn Fn(usize) -> Vec<Box<dyn ToSql + Sync>>>,
    iterations: usize,
    /// udm_compile kind and entity for the compile-only figure
    compile: Option<(&'static str, &'static str)>,
}

fn brand(i: usize) -> String {
    format!("brand{}", 1 + (i * 7) % BRANDS)
}

const Q1_ROW: &str =
    "jsonb_build_object('name', p.name, 'price', p.price, 'category_id.name', c.name, \
     'category_id.parent_id.name', pc.name, 'metadata.brand', p.metadata -> 'brand')";

fn main() {
    let rows: i64 = setting("ROWS", 1_000_000);
    let scale: usize = setting("ITER", 1);
    let mut c = fresh_db("bench_query");
    header(&format!(
        "query engine vs hand-written prepared SQL ({rows} products)"
    ));
    setup(&mut c, rows);
    c.batch_execute(TENANT_SQL).unwrap();
    if let Ok(mode) = std::env::var("PLAN_CACHE_MODE") {
        c.batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .unwrap();
    }
    let only: Option<String> = std::env::var("CASES").ok();

    // the cursor of page 100 (sorted by price, filtered by status)
    let cursor = page_100_cursor(&mut c);
    let (deep_cursor, (deep_price, deep_id)) = {
        let (keys, _) = udm_core_cursor(&cursor);
        (
            cursor.clone(),
            (
                keys[0].as_f64().unwrap(),
                keys[1].as_str().unwrap().to_string(),
            ),
        )
    };
    let ids: Vec<String> = c
        .query(
            "SELECT id::text FROM qb.product TABLESAMPLE SYSTEM (1) LIMIT 1000",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids = std::sync::Arc::new(ids);
    let get_cols: Vec<String> = c
        .query_one("SELECT udm_describe('product')", &[])
        .unwrap()
        .get::<_, Value>(0)["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    let mut get_pairs = vec![
        "'id', p.id".to_string(),
        "'created_at', p.created_at".into(),
        "'updated_at', p.updated_at".into(),
        "'created_by', p.created_by".into(),
        "'updated_by', p.updated_by".into(),
        "'_version', p._version".into(),
    ];
    get_pairs.extend(get_cols.iter().map(|f| format!("'{f}', p.{f}")));

    let ids2 = ids.clone();
    let ids3 = ids.clone();
    let cases = vec![
        Case {
            name: "1. page of 50: relation + json paths, filters, sort",
            udm_sql: "SELECT udm_query('product', $1)",
            udm_arg: Box::new(|i| {
                json!({"columns": ["name", "price", "category_id.name", "category_id.parent_id.name", "metadata.brand"],
                       "filters": {"status": "active", "metadata.brand": brand(i)}, "sort": ["price"], "limit": 50})
            }),
            hand_sql: format!(
                "SELECT jsonb_build_object('rows', coalesce(jsonb_agg(q.r), '[]'::jsonb), 'next_cursor', \
                   CASE WHEN count(*) = 50 THEN translate(encode(convert_to(jsonb_build_object('k', jsonb_agg(q.k) -> -1, 's', 'x')::text, 'UTF8'), 'base64'), E'\\n', '') END) \
                 FROM (SELECT {Q1_ROW} AS r, jsonb_build_array(p.price, p.id) AS k \
                       FROM qb.product p LEFT JOIN qb.category c ON c.id = p.category_id LEFT JOIN qb.category pc ON pc.id = c.parent_id \
                       WHERE p.status = $1 AND p.metadata ->> 'brand' = $2 ORDER BY p.price, p.id LIMIT 50) q"
            ),
            hand_args: Box::new(|i| vec![Box::new("active".to_string()), Box::new(brand(i))]),
            iterations: 300 * scale,
            compile: Some(("query", "product")),
        },
        Case {
            name: "2. keyset page 100 deep",
            udm_sql: "SELECT udm_query('product', $1)",
            udm_arg: Box::new(move |_| {
                json!({"columns": ["name", "price"], "filters": {"status": "active"}, "sort": ["price"], "limit": 50, "cursor": deep_cursor})
            }),
            hand_sql: "SELECT jsonb_build_object('rows', coalesce(jsonb_agg(q.r), '[]'::jsonb), 'next_cursor', \
                   CASE WHEN count(*) = 50 THEN translate(encode(convert_to(jsonb_build_object('k', jsonb_agg(q.k) -> -1, 's', 'x')::text, 'UTF8'), 'base64'), E'\\n', '') END) \
                 FROM (SELECT jsonb_build_object('name', p.name, 'price', p.price) AS r, jsonb_build_array(p.price, p.id) AS k \
                       FROM qb.product p WHERE p.status = $1 AND (p.price, p.id) > ($2::text::numeric, $3::text::uuid) ORDER BY p.price, p.id LIMIT 50) q"
                .into(),
            hand_args: Box::new(move |_| {
                vec![Box::new("active".to_string()), Box::new(deep_price.to_string()), Box::new(deep_id.clone())]
            }),
            iterations: 300 * scale,
            compile: Some(("query", "product")),
        },
        Case {
            name: "3. aggregate by category_id.name: count, avg(price)",
            udm_sql: "SELECT udm_aggregate('product', $1)",
            udm_arg: Box::new(|_| json!({"group_by": ["category_id.name"], "metrics": ["count", {"fn": "avg", "path": "price"}], "limit": 20000})),
            hand_sql: "SELECT jsonb_build_object('rows', coalesce(jsonb_agg(q.r), '[]'::jsonb)) FROM \
                 (SELECT jsonb_build_object('category_id.name', c.name, 'count', count(*), 'avg_price', avg(p.price)) AS r \
                  FROM qb.product p LEFT JOIN qb.category c ON c.id = p.category_id GROUP BY c.name ORDER BY c.name ASC NULLS LAST LIMIT $1) q"
                .into(),
            hand_args: Box::new(|_| vec![Box::new(20000i64)]),
            iterations: 15 * scale,
            compile: Some(("aggregate", "product")),
        },
        Case {
            name: "4. kanban by status, 20 cards a column",
            udm_sql: "SELECT udm_view('product', 'kanban', $1)",
            udm_arg: Box::new(|_| json!({"field": "status", "columns": ["name", "price"], "sort": ["price"], "limit": 20})),
            hand_sql: "SELECT jsonb_build_object('field', 'status', 'columns', coalesce(jsonb_agg(jsonb_build_object('value', v.value, \
                   'count', (SELECT count(*) FROM qb.product p WHERE p.status = v.value), \
                   'cards', (SELECT coalesce(jsonb_agg(c.r), '[]'::jsonb) FROM (SELECT jsonb_build_object('name', p.name, 'price', p.price) AS r \
                             FROM qb.product p WHERE p.status = v.value ORDER BY p.price, p.id LIMIT $1) c)) ORDER BY v.ord), '[]'::jsonb)) \
                 FROM unnest(ARRAY['draft', 'active', 'retired']::text[]) WITH ORDINALITY AS v(value, ord)"
                .into(),
            hand_args: Box::new(|_| vec![Box::new(20i64)]),
            iterations: 20 * scale,
            compile: Some(("kanban", "product")),
        },
        Case {
            name: "5. point udm_get by id",
            udm_sql: "SELECT udm_get('product', $1::text::uuid)",
            udm_arg: Box::new(move |i| json!(ids2[i % ids2.len()])),
            hand_sql: format!("SELECT jsonb_build_object({}) FROM qb.product p WHERE p.id = $1::text::uuid", get_pairs.join(", ")),
            hand_args: Box::new(move |i| vec![Box::new(ids3[i % ids3.len()].clone())]),
            iterations: 3000 * scale,
            compile: None,
        },
    ];

    let mut verdicts = Vec::new();
    for case in &cases {
        if let Some(o) = &only {
            if !o
                .split(',')
                .any(|n| case.name.starts_with(&format!("{n}.")))
            {
                continue;
            }
        }
        header(case.name);
        let udm_stmt = c.prepare(case.udm_sql).unwrap();
        let hand_stmt = c.prepare(&case.hand_sql).unwrap();
        let udm_param = |i: usize| -> Box<dyn ToSql + Sync> {
            let v = (case.udm_arg)(i);
            match v {
                Value::String(s) => Box::new(s),
                other => Box::new(other),
            }
        };
        // same result?
        let a: Value = c.query_one(&udm_stmt, &[&*udm_param(0)]).unwrap().get(0);
        let hargs = (case.hand_args)(0);
        let hrefs: Vec<&(dyn ToSql + Sync)> = hargs.iter().map(|b| b.as_ref()).collect();
        let b: Value = c.query_one(&hand_stmt, &hrefs).unwrap().get(0);
        let same = strip_cursor(&a) == strip_cursor(&b);
        println!("  same result: {}", if same { "yes" } else { "NO" });
        // warm both (plans go generic after five runs)
        for i in 0..10 {
            c.query_one(&udm_stmt, &[&*udm_param(i)]).unwrap();
            let hargs = (case.hand_args)(i);
            let hrefs: Vec<&(dyn ToSql + Sync)> = hargs.iter().map(|b| b.as_ref()).collect();
            c.query_one(&hand_stmt, &hrefs).unwrap();
        }
        let (mut u, mut h): (Vec<Duration>, Vec<Duration>) = (vec![], vec![]);
        for i in 0..case.iterations {
            let p = udm_param(i);
            let hargs = (case.hand_args)(i);
            let hrefs: Vec<&(dyn ToSql + Sync)> = hargs.iter().map(|b| b.as_ref()).collect();
            // alternate which goes first
            if i % 2 == 0 {
                u.push(time(|| c.query_one(&udm_stmt, &[&*p]).unwrap()).0);
                h.push(time(|| c.query_one(&hand_stmt, &hrefs).unwrap()).0);
            } else {
                h.push(time(|| c.query_one(&hand_stmt, &hrefs).unwrap()).0);
                u.push(time(|| c.query_one(&udm_stmt, &[&*p]).unwrap()).0);
            }
        }
        let (su, sh) = (stats(&u), stats(&h));
        row("udm", su);
        row("hand-written prepared SQL", sh);
        let rm = ratio(
            "median udm / hand-written",
            su.median_ms,
            sh.median_ms,
            Some(1.10),
        );
        let rp = ratio("p95 udm / hand-written", su.p95_ms, sh.p95_ms, Some(1.10));
        // plan shape: the same scan nodes on the same relations and indexes
        let plan_u = plan_nodes(&mut c, case, udm_param(0).as_ref());
        let plan_h = {
            let hargs = (case.hand_args)(0);
            let hrefs: Vec<&(dyn ToSql + Sync)> = hargs.iter().map(|b| b.as_ref()).collect();
            let e: String = c
                .query_one(&format!("EXPLAIN (FORMAT JSON) {}", case.hand_sql), &hrefs)
                .map(|r| r.get::<_, Value>(0).to_string())
                .unwrap_or_default();
            scans(&serde_json::from_str(&e).unwrap_or(Value::Null))
        };
        println!("  scans, udm:          {plan_u:?}");
        println!("  scans, hand-written: {plan_h:?}");
        let workers_u = workers_launched(
            "bench_query",
            TENANT_SQL,
            case.udm_sql,
            &[udm_param(0).as_ref()],
        );
        let workers_h = {
            let hargs = (case.hand_args)(0);
            let hrefs: Vec<&(dyn ToSql + Sync)> = hargs.iter().map(|b| b.as_ref()).collect();
            workers_launched("bench_query", TENANT_SQL, &case.hand_sql, &hrefs)
        };
        println!(
            "  parallel workers launched per Gather: udm {workers_u:?}, hand-written {workers_h:?}"
        );
        if let Some((kind, entity)) = case.compile {
            let mut us = Vec::new();
            for i in 0..200 {
                let v: Value = c
                    .query_one(
                        "SELECT udm_compile($1, $2, $3)",
                        &[&entity, &(case.udm_arg)(i), &kind],
                    )
                    .unwrap()
                    .get(0);
                us.push(Duration::from_secs_f64(
                    v["compile_us"].as_f64().unwrap() / 1e6,
                ));
            }
            let s = stats(&us);
            println!(
                "  compile only, warm cache: median {:.1} us, p95 {:.1} us",
                s.median_ms * 1000.0,
                s.p95_ms * 1000.0
            );
        }
        verdicts.push((case.name, rm, rp, same, plan_u == plan_h));
    }
    header("summary");
    for (n, m, p, same, plan) in verdicts {
        println!(
            "  {n:<52} median {m:>5.2}x  p95 {p:>5.2}x  same result: {}  same scans: {}",
            if same { "yes" } else { "NO" },
            if plan { "yes" } else { "no" }
        );
    }
}

fn strip_cursor(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("next_cursor");
    }
    v
}

fn udm_core_cursor(c: &Value) -> (Vec<Value>, String) {
    // base64 of {"k": [...], "s": ...}
    let s = c.as_str().unwrap();
    let bytes = base64_decode(s);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    (
        v["k"].as_array().unwrap().clone(),
        v["s"].as_str().unwrap_or("").to_string(),
    )
}

fn base64_decode(s: &str) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for ch in s.bytes().filter(|b| *b != b'=') {
        buf = (buf << 6) | B64.iter().position(|x| *x == ch).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// The scan nodes of a plan (type, relation, index), in order.
fn scans(plan: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(n: &Value, out: &mut Vec<String>) {
        if let Some(t) = n["Node Type"].as_str() {
            if t.contains("Scan") {
                let rel = n["Relation Name"].as_str().unwrap_or("");
                let idx = n["Index Name"].as_str().unwrap_or("");
                out.push(format!(
                    "{t}({rel}{}{idx})",
                    if idx.is_empty() { "" } else { " via " }
                ));
            }
        }
        if let Some(children) = n["Plans"].as_array() {
            for c in children {
                walk(c, out);
            }
        }
        if let Some(p) = n.get("Plan") {
            walk(p, out);
        }
    }
    if let Some(a) = plan.as_array() {
        for p in a {
            walk(p, &mut out);
        }
    }
    out
}

fn plan_nodes(c: &mut postgres::Client, case: &Case, p: &(dyn ToSql + Sync)) -> Vec<String> {
    let kind = if case.udm_sql.contains("udm_aggregate") {
        "aggregate"
    } else if case.udm_sql.contains("kanban") {
        "kanban"
    } else if case.udm_sql.contains("udm_get") {
        return pkey_reads(c, case, p);
    } else {
        "query"
    };
    let spec = (case.udm_arg)(0);
    let e: Value = c
        .query_one("SELECT udm_explain('product', $1, $2)", &[&spec, &kind])
        .unwrap()
        .get(0);
    scans(&e["plan"])
}

/// `udm_get` reads through the primary key index without an SQL plan: what it used is read
/// from the index's statistics around one call.
fn pkey_reads(c: &mut postgres::Client, case: &Case, p: &(dyn ToSql + Sync)) -> Vec<String> {
    let idx_scans = |c: &mut postgres::Client| -> i64 {
        c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        c.query_one(
            "SELECT coalesce(sum(idx_scan), 0)::bigint FROM pg_stat_user_indexes WHERE indexrelname = 'product__pkey'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = idx_scans(c);
    c.query_one(case.udm_sql, &[p]).unwrap();
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    let after = idx_scans(c);
    if after > before {
        vec!["Index Scan(product via product__pkey)".into()]
    } else {
        vec![format!(
            "no scan of product__pkey ({before} -> {after} index scans)"
        )]
    }
}
