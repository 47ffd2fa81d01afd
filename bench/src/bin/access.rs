//! The cost of row-level security: `udm_query` on a roadmap of ROWS products, as a member whose
//! rows come through a relation tuple on the roadmap (access control on: the product policy
//! checks the roadmap, whose policy checks the tuple), next to the same queries on the same data
//! in a tenant without access control. Both run as the same non-superuser login role
//! (superusers bypass row-level security), interleaved.
//!
//! Goal (issue 5): RLS costs <= 1.2x at the median.

use postgres::{Client, NoTls};
use serde_json::{json, Value};
use std::time::Duration;
use udm_bench::*;

const DB: &str = "bench_access";
const APP: &str = "bench_access_app";
/// Roadmaps without products besides the 20 (the "wide" reader has relations to all of them).
const WIDE: i64 = 2000;

fn connect_as(user: &str) -> Client {
    let host = std::env::var("BENCH_HOST")
        .unwrap_or_else(|_| "/work/main/target/bench-cluster/sock".into());
    let port = std::env::var("BENCH_PORT").unwrap_or_else(|_| "5497".into());
    Client::connect(
        &format!("host={host} port={port} user={user} dbname={DB} application_name=udm-bench"),
        NoTls,
    )
    .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

fn tenant(c: &mut Client, slug: &str, rows: i64) {
    c.batch_execute(&format!(
        r#"SELECT udm_create_tenant('{slug}');
           SELECT udm_use('{slug}');
           SELECT udm_define_entity('roadmap', '{{"fields": [
             {{"name": "name", "type": "text", "required": true}},
             {{"name": "owner_id", "type": "user"}}],
             "access": {{"scope": "self", "owner": "owner_id"}}}}');
           SELECT udm_define_entity('product', '{{"fields": [
             {{"name": "name", "type": "text", "required": true}},
             {{"name": "price", "type": "decimal", "precision": 12, "scale": 2}},
             {{"name": "status", "type": "select", "values": ["draft", "active", "retired"]}},
             {{"name": "roadmap_id", "type": "relation", "target": "roadmap", "required": true}}],
             "access": {{"scope": "roadmap_id"}}}}');
           SELECT udm_add_index('product', ARRAY['price', 'id']);
           INSERT INTO {slug}.roadmap (name) SELECT 'roadmap ' || i FROM generate_series(1, 20) i;
           INSERT INTO {slug}.roadmap (name) SELECT 'extra ' || i FROM generate_series(1, {WIDE}) i;
           INSERT INTO {slug}.product (name, price, status, roadmap_id)
             SELECT 'product ' || i, (i % 100000) / 100.0, (ARRAY['draft', 'active', 'active', 'retired'])[1 + i % 4],
                    (SELECT id FROM {slug}.roadmap WHERE name = 'roadmap 1')
             FROM generate_series(1, {rows}) i;
           INSERT INTO {slug}.product (name, price, status, roadmap_id)
             SELECT 'other ' || i, i / 100.0, 'active', (SELECT id FROM {slug}.roadmap WHERE name = 'roadmap ' || (2 + i % 19))
             FROM generate_series(1, {rows} / 10) i;
           GRANT tenant_{slug} TO {APP};"#
    ))
    .unwrap();
    c.batch_execute(&format!("VACUUM ANALYZE {slug}.product"))
        .unwrap();
    c.batch_execute(&format!("VACUUM ANALYZE {slug}.roadmap"))
        .unwrap();
}

fn main() {
    let rows: i64 = setting("ROWS", 100_000);
    let mut c = fresh_db(DB);
    header(&format!(
        "row-level security: udm_query on a {rows}-product roadmap, access control on vs off"
    ));
    {
        let mut pg = connect("postgres");
        for t in ["rls_on", "rls_off"] {
            let _ = pg.batch_execute(&format!("DROP ROLE IF EXISTS tenant_{t}"));
        }
        let _ = pg.batch_execute(&format!("DROP ROLE IF EXISTS {APP}"));
        pg.batch_execute(&format!("CREATE ROLE {APP} LOGIN"))
            .unwrap();
    }
    let (d, _) = time(|| {
        tenant(&mut c, "rls_on", rows);
        tenant(&mut c, "rls_off", rows);
    });
    println!("  loaded both tenants in {:.1} s", d.as_secs_f64());
    // access control in one of them: an admin, and a viewer with a tuple on roadmap 1
    c.batch_execute(
        "SELECT udm_use('rls_on');
         SELECT udm_create_user('admin@bench.test', 'Admin', 'bench password');
         SELECT udm_create_user('viewer@bench.test', 'Viewer', 'bench password');
         SELECT udm_add_member('rls_on', 'admin@bench.test', 'admin');
         SELECT udm_add_member('rls_on', 'viewer@bench.test', 'viewer');
         SELECT udm_grant('viewer@bench.test', 'viewer', 'roadmap:' || (SELECT id FROM rls_on.roadmap WHERE name = 'roadmap 1'));
         SELECT udm_create_user('wide@bench.test', 'Wide', 'bench password');
         SELECT udm_add_member('rls_on', 'wide@bench.test', 'viewer');
         SELECT count(udm_grant('wide@bench.test', 'viewer', 'roadmap:' || id)) FROM rls_on.roadmap;",
    )
    .unwrap();
    let mut wide = connect_as(APP);
    wide.batch_execute("SELECT udm_use('rls_on', 'wide@bench.test')")
        .unwrap();
    let mut on = connect_as(APP);
    on.batch_execute("SELECT udm_use('rls_on', 'viewer@bench.test')")
        .unwrap();
    let mut off = connect_as(APP);
    off.batch_execute("SELECT udm_use('rls_off')").unwrap();
    let roadmap_of = |c: &mut Client, t: &str| -> String {
        c.query_one(
            &format!("SELECT id::text FROM {t}.roadmap WHERE name = 'roadmap 1'"),
            &[],
        )
        .unwrap()
        .get(0)
    };
    let r_on = roadmap_of(&mut on, "rls_on");
    let r_off = roadmap_of(&mut off, "rls_off");
    let visible: i64 = on
        .query_one("SELECT count(*) FROM rls_on.product", &[])
        .unwrap()
        .get(0);
    println!(
        "  the viewer sees {visible} products (of {} in the tenant)",
        rows + rows / 10
    );

    type SpecOf = Box<dyn Fn(&str) -> Value>;
    let cases: Vec<(&str, SpecOf)> = vec![
        (
            "page of 50 of the roadmap, status filter, sorted by price",
            Box::new(
                |r: &str| json!({"columns": ["name", "price", "roadmap_id.name"], "filters": {"roadmap_id": r, "status": "active"}, "sort": ["price"], "limit": 50}),
            ),
        ),
        (
            "same page with an exact count",
            Box::new(
                |r: &str| json!({"columns": ["name", "price"], "filters": {"roadmap_id": r, "status": "active"}, "sort": ["price"], "limit": 50, "count": "exact"}),
            ),
        ),
    ];
    // the same count over the whole tenant, for a reader with relations to every roadmap (2,020:
    // each row's roadmap is looked up among them)
    let wide_spec: SpecOf = Box::new(
        |_: &str| json!({"columns": ["name", "price"], "filters": {"status": "active"}, "sort": ["price"], "limit": 50, "count": "exact"}),
    );
    let cases: Vec<(&str, SpecOf, bool)> = cases
        .into_iter()
        .map(|(n, s)| (n, s, false))
        .chain([(
            "exact count of the tenant, a reader of 2,020 roadmaps",
            wide_spec,
            true,
        )])
        .collect();
    let mut summary = Vec::new();
    for (name, spec, is_wide) in &cases {
        header(name);
        let s_on = spec(&r_on);
        let s_off = spec(&r_off);
        let q = "SELECT udm_query('product', $1)";
        let on = if *is_wide { &mut wide } else { &mut on };
        let a: Value = on.query_one(q, &[&s_on]).unwrap().get(0);
        let b: Value = off.query_one(q, &[&s_off]).unwrap().get(0);
        let same = a["rows"].as_array().map(Vec::len) == b["rows"].as_array().map(Vec::len)
            && a["count"] == b["count"];
        println!("  same result size: {}", if same { "yes" } else { "NO" });
        for _ in 0..10 {
            on.query_one(q, &[&s_on]).unwrap();
            off.query_one(q, &[&s_off]).unwrap();
        }
        let (mut u, mut h): (Vec<Duration>, Vec<Duration>) = (vec![], vec![]);
        for i in 0..200 {
            if i % 2 == 0 {
                u.push(time(|| on.query_one(q, &[&s_on]).unwrap()).0);
                h.push(time(|| off.query_one(q, &[&s_off]).unwrap()).0);
            } else {
                h.push(time(|| off.query_one(q, &[&s_off]).unwrap()).0);
                u.push(time(|| on.query_one(q, &[&s_on]).unwrap()).0);
            }
        }
        let (su, sh) = (stats(&u), stats(&h));
        row("access control on (row-level security)", su);
        row("access control off", sh);
        let rm = ratio("median on / off", su.median_ms, sh.median_ms, Some(1.2));
        let rp = ratio("p95 on / off", su.p95_ms, sh.p95_ms, None);
        summary.push((*name, rm, rp, same));
    }
    header("summary");
    for (n, m, p, same) in summary {
        println!(
            "  {n:<58} median {m:>5.2}x  p95 {p:>5.2}x  same size: {}",
            if same { "yes" } else { "NO" }
        );
    }
}
