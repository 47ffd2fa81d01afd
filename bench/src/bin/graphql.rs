//! GraphQL in the database against hand-written SQL (issue 21). The tenant of `bench/query`
//! (ROWS products, 10,000 categories with a parent, 20 brands); each GraphQL request runs through
//! `udm_graphql` and, interleaved, as one hand-written prepared statement returning the same JSON
//! (the response's `data`); the results are compared first.
//!
//! Goals: the five `bench/query` queries <= 1.15x at the median and p95; a nested query (50
//! categories, each with its 10 newest products, each with a relation path and a JSON path)
//! <= 1.2x; a by-id query with 1,000 tenants in the database vs 1 tenant <= 1.1x. Reported: the
//! schema build of a 50-entity tenant, cold and warm, and the per-call cost of a cached document.

use postgres::types::ToSql;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use udm_bench::*;

const DB: &str = "bench_graphql";
const ONE: &str = "bench_graphql_one";
const BRANDS: usize = CATALOG_BRANDS;

fn setup(c: &mut postgres::Client, rows: i64) {
    product_catalog(c, "gb", rows);
    c.batch_execute(
        "SELECT udm_add_index('product', ARRAY['category_id', 'created_at']); ANALYZE gb.product",
    )
    .unwrap();
}

fn brand(i: usize) -> String {
    format!("brand{}", 1 + (i * 7) % BRANDS)
}

struct Case {
    name: &'static str,
    goal: f64,
    query: String,
    vars: Box<dyn Fn(usize) -> Value>,
    hand_sql: String,
    hand_args: Box<dyn Fn(usize) -> Vec<Box<dyn ToSql + Sync>>>,
    iterations: usize,
}

fn run_case(c: &mut postgres::Client, case: &Case) -> (f64, f64, bool) {
    header(case.name);
    let g = c.prepare("SELECT udm_graphql($1, $2) -> 'data'").unwrap();
    let h = c.prepare(&case.hand_sql).unwrap();
    let hand = |c: &mut postgres::Client, i: usize| -> Value {
        let a = (case.hand_args)(i);
        let r: Vec<&(dyn ToSql + Sync)> = a.iter().map(|b| b.as_ref()).collect();
        c.query_one(&h, &r).unwrap().get(0)
    };
    let gql = |c: &mut postgres::Client, i: usize| -> Value {
        c.query_one(&g, &[&case.query, &(case.vars)(i)])
            .unwrap()
            .get(0)
    };
    let a = gql(c, 0);
    let b = hand(c, 0);
    let same = a == b;
    println!("  same result: {}", if same { "yes" } else { "NO" });
    if !same {
        let s = |v: &Value| v.to_string().chars().take(600).collect::<String>();
        println!("    graphql: {}\n    hand:    {}", s(&a), s(&b));
    }
    for i in 0..10 {
        gql(c, i);
        hand(c, i);
    }
    let (mut u, mut hs) = (Vec::new(), Vec::new());
    for i in 0..case.iterations {
        if i % 2 == 0 {
            u.push(time(|| gql(c, i)).0);
            hs.push(time(|| hand(c, i)).0);
        } else {
            hs.push(time(|| hand(c, i)).0);
            u.push(time(|| gql(c, i)).0);
        }
    }
    let (su, sh) = (stats(&u), stats(&hs));
    row("udm_graphql", su);
    row("hand-written prepared SQL", sh);
    let m = ratio(
        "median graphql / hand-written",
        su.median_ms,
        sh.median_ms,
        Some(case.goal),
    );
    let p = ratio(
        "p95 graphql / hand-written",
        su.p95_ms,
        sh.p95_ms,
        Some(case.goal),
    );
    (m, p, same)
}

fn main() {
    let rows: i64 = setting("ROWS", 1_000_000);
    let scale: usize = setting("ITER", 1);
    let mut c = fresh_db(DB);
    let mut pg = connect("postgres");
    for r in pg
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%@bench\\_graphql'",
            &[],
        )
        .unwrap()
    {
        let n: String = r.get(0);
        pg.batch_execute(&format!("DROP ROLE \"{n}\"")).unwrap();
    }
    header(&format!(
        "GraphQL vs hand-written prepared SQL ({rows} products)"
    ));
    setup(&mut c, rows);
    c.batch_execute("SELECT udm_use('gb')").unwrap();

    // the cursor of page 100 (by price, active products) and where it stands
    let pager = "query($after: Cursor) { productCollection(filter: {status: {eq: active}}, orderBy: [{price: ASC}], first: 50, after: $after) { nodes { id price } pageInfo { endCursor } } }";
    let mut after = Value::Null;
    let mut last = Value::Null;
    for _ in 0..99 {
        let d: Value = c
            .query_one(
                "SELECT udm_graphql($1, $2) -> 'data'",
                &[&pager, &json!({"after": after})],
            )
            .unwrap()
            .get(0);
        after = d["productCollection"]["pageInfo"]["endCursor"].clone();
        last = d["productCollection"]["nodes"][49].clone();
    }
    let deep_price = last["price"].as_str().unwrap_or("0").to_string();
    let deep_id = last["id"].as_str().unwrap_or_default().to_string();
    let ids: Vec<String> = c
        .query(
            "SELECT id::text FROM gb.product TABLESAMPLE SYSTEM (1) LIMIT 1000",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids = std::sync::Arc::new(ids);
    let (ids_a, ids_b) = (ids.clone(), ids.clone());

    let node1 = "jsonb_build_object('name', p.name, 'price', p.price::text, \
                 'category', CASE WHEN c.id IS NULL THEN NULL ELSE jsonb_build_object('name', c.name, \
                   'parent', CASE WHEN pc.id IS NULL THEN NULL ELSE jsonb_build_object('name', pc.name) END) END, \
                 'metadata', p.metadata -> 'brand')";
    let cases = vec![
        Case {
            name: "1. page of 50: relation + JSON paths, filters, sort",
            goal: 1.15,
            query: r#"query($brand: JSON!) { productCollection(filter: {status: {eq: active}, metadata: {path: ["brand"], eq: $brand}}, orderBy: [{price: ASC}], first: 50) {
                nodes { name price category { name parent { name } } metadata(path: ["brand"]) } } }"#.into(),
            vars: Box::new(|i| json!({"brand": brand(i)})),
            hand_sql: format!(
                "SELECT jsonb_build_object('productCollection', jsonb_build_object('nodes', coalesce(jsonb_agg(q.r ORDER BY q.n), '[]'::jsonb))) \
                 FROM (SELECT {node1} AS r, row_number() OVER () AS n \
                       FROM gb.product p LEFT JOIN gb.category c ON c.id = p.category_id LEFT JOIN gb.category pc ON pc.id = c.parent_id \
                       WHERE p.status = 'active' AND p.metadata ->> 'brand' = $1 ORDER BY p.price, p.id LIMIT 50) q"
            ),
            hand_args: Box::new(|i| vec![Box::new(brand(i))]),
            iterations: 300 * scale,
        },
        Case {
            name: "2. keyset page 100 deep",
            goal: 1.15,
            query: "query($after: Cursor) { productCollection(filter: {status: {eq: active}}, orderBy: [{price: ASC}], first: 50, after: $after) { nodes { name price } } }".into(),
            vars: Box::new(move |_| json!({"after": after})),
            hand_sql: "SELECT jsonb_build_object('productCollection', jsonb_build_object('nodes', coalesce(jsonb_agg(q.r ORDER BY q.n), '[]'::jsonb))) \
                 FROM (SELECT jsonb_build_object('name', p.name, 'price', p.price::text) AS r, row_number() OVER () AS n \
                       FROM gb.product p WHERE p.status = 'active' AND (p.price, p.id) > ($1::text::numeric, $2::text::uuid) ORDER BY p.price, p.id LIMIT 50) q".into(),
            hand_args: Box::new(move |_| vec![Box::new(deep_price.clone()), Box::new(deep_id.clone())]),
            iterations: 300 * scale,
        },
        Case {
            name: "3. aggregate by category.name: count, avg(price)",
            goal: 1.15,
            query: "{ productAggregate(groupBy: [{category: {name: VALUE}}], first: 1000) { key count avg { price } } }".into(),
            vars: Box::new(|_| json!({})),
            hand_sql: "SELECT jsonb_build_object('productAggregate', coalesce(jsonb_agg(q.r ORDER BY q.k NULLS LAST), '[]'::jsonb)) FROM \
                 (SELECT c.name AS k, jsonb_build_object('key', jsonb_build_object('category.name', c.name), 'count', count(*), \
                    'avg', jsonb_build_object('price', avg(p.price)::text)) AS r \
                  FROM gb.product p LEFT JOIN gb.category c ON c.id = p.category_id GROUP BY c.name ORDER BY c.name ASC NULLS LAST LIMIT $1) q".into(),
            hand_args: Box::new(|_| vec![Box::new(1000i64)]),
            iterations: 15 * scale,
        },
        Case {
            name: "4. kanban by status, 20 cards a column",
            goal: 1.15,
            query: "{ productKanban(field: status, orderBy: [{price: ASC}], first: 20) { field columns { value count cards { name price } } } }".into(),
            vars: Box::new(|_| json!({})),
            hand_sql: "SELECT jsonb_build_object('productKanban', jsonb_build_object('field', 'status', 'columns', coalesce(jsonb_agg(jsonb_build_object('value', v.value, \
                   'count', (SELECT count(*) FROM gb.product p WHERE p.status = v.value), \
                   'cards', (SELECT coalesce(jsonb_agg(c.r ORDER BY c.n), '[]'::jsonb) FROM (SELECT jsonb_build_object('name', p.name, 'price', p.price::text) AS r, row_number() OVER () AS n \
                             FROM gb.product p WHERE p.status = v.value ORDER BY p.price, p.id LIMIT $1) c)) ORDER BY v.ord), '[]'::jsonb))) \
                 FROM unnest(ARRAY['draft', 'active', 'retired']::text[]) WITH ORDINALITY AS v(value, ord)".into(),
            hand_args: Box::new(|_| vec![Box::new(20i64)]),
            iterations: 20 * scale,
        },
        Case {
            name: "5. a record by id",
            goal: 1.15,
            query: "query($id: UUID!) { product(id: $id) { id createdAt updatedAt createdBy updatedBy _version name price status metadata categoryId brandId } }".into(),
            vars: Box::new(move |i| json!({"id": ids_a[i % ids_a.len()]})),
            hand_sql: "SELECT jsonb_build_object('product', (SELECT jsonb_build_object('id', p.id, 'createdAt', p.created_at, 'updatedAt', p.updated_at, \
                 'createdBy', p.created_by, 'updatedBy', p.updated_by, '_version', p._version, 'name', p.name, 'price', p.price::text, \
                 'status', p.status, 'metadata', p.metadata, 'categoryId', p.category_id, 'brandId', p.brand_id) FROM gb.product p WHERE p.id = $1::text::uuid))".into(),
            hand_args: Box::new(move |i| vec![Box::new(ids_b[i % ids_b.len()].clone())]),
            iterations: 3000 * scale,
        },
        Case {
            name: "6. nested: 50 categories, each with its 10 newest products (relation path, JSON path)",
            goal: 1.2,
            query: r#"{ categoryCollection(orderBy: [{name: ASC}], first: 50) { nodes { name
                 productCollection(orderBy: [{createdAt: DESC}], first: 10) { nodes { name category { parent { name } } metadata(path: ["storage"]) } } } } }"#.into(),
            vars: Box::new(|_| json!({})),
            hand_sql: "SELECT jsonb_build_object('categoryCollection', jsonb_build_object('nodes', coalesce(jsonb_agg(q.r ORDER BY q.n), '[]'::jsonb))) FROM \
                 (SELECT jsonb_build_object('name', c.name, 'productCollection', jsonb_build_object('nodes', \
                    (SELECT coalesce(jsonb_agg(x.r ORDER BY x.n), '[]'::jsonb) FROM \
                       (SELECT jsonb_build_object('name', p.name, 'category', jsonb_build_object('parent', \
                                 CASE WHEN pc.id IS NULL THEN NULL ELSE jsonb_build_object('name', pc.name) END), \
                               'metadata', p.metadata -> 'storage') AS r, row_number() OVER () AS n \
                        FROM gb.product p LEFT JOIN gb.category pc ON pc.id = c.parent_id \
                        WHERE p.category_id = c.id ORDER BY p.created_at DESC, p.id ASC LIMIT 10) x))) AS r, \
                    row_number() OVER () AS n \
                  FROM (SELECT * FROM gb.category ORDER BY name, id LIMIT $1) c) q".into(),
            hand_args: Box::new(|_| vec![Box::new(50i64)]),
            iterations: 100 * scale,
        },
    ];
    let mut verdicts = Vec::new();
    for case in &cases {
        let (m, p, same) = run_case(&mut c, case);
        verdicts.push((case.name, m, p, same, case.goal));
    }

    // the per-call cost of a cached document, and of the engine over SPI
    header("per call: a cached document that runs no statement");
    let t = c.prepare("SELECT udm_graphql('{ __typename }')").unwrap();
    let one = c.prepare("SELECT 1").unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3000 {
        a.push(time(|| c.query_one(&t, &[]).unwrap()).0);
        b.push(time(|| c.query_one(&one, &[]).unwrap()).0);
    }
    let (sa, sb) = (stats(&a), stats(&b));
    row("udm_graphql('{ __typename }')", sa);
    row("SELECT 1", sb);
    println!(
        "  overhead of a cached document: {:.1} us at the median",
        (sa.median_ms - sb.median_ms) * 1000.0
    );

    // schema build of a 50-entity tenant, cold (a new backend) and warm
    header("schema build of a 50-entity tenant");
    let mut s = String::from("SELECT udm_create_tenant('gb50'); SELECT udm_use('gb50');");
    for e in 0..50 {
        let rel = if e > 0 {
            format!(
                r#", {{"name": "prev_id", "type": "relation", "target": "e{}"}}"#,
                e - 1
            )
        } else {
            String::new()
        };
        s.push_str(&format!(
            r#" SELECT udm_define_entity('e{e}', '{{"fields": [{{"name": "name", "type": "text"}}, {{"name": "n", "type": "integer"}}, {{"name": "at", "type": "datetime"}}, {{"name": "tags", "type": "tags"}}{rel}]}}');"#
        ));
    }
    c.batch_execute(&s).unwrap();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut n = connect(DB);
        n.batch_execute("SELECT udm_use('gb50')").unwrap();
        cold.push(
            time(|| {
                n.query_one("SELECT length(udm_graphql_schema())", &[])
                    .unwrap()
            })
            .0,
        );
        for _ in 0..20 {
            warm.push(
                time(|| {
                    n.query_one("SELECT length(udm_graphql_schema())", &[])
                        .unwrap()
                })
                .0,
            );
        }
    }
    row(
        "cold (a new backend: definitions, model, schema)",
        stats(&cold),
    );
    row("warm (cached schema; the SDL printed)", stats(&warm));

    // by id with 1,000 tenants in the database vs 1: a copy of this database keeps its one
    // tenant, this one gets 1,000 more; the two are measured in alternating rounds, so that the
    // machine's drift (a virtual machine's speed moves by a third from one minute to the next
    // here) falls on both alike
    let extra: usize = setting("TENANTS", 1000);
    header(&format!(
        "a record by id: 1 tenant vs {extra} tenants in the database (two databases, alternating rounds)"
    ));
    drop(c);
    let mut pg = connect("postgres");
    pg.batch_execute(&format!("DROP DATABASE IF EXISTS {ONE}"))
        .unwrap();
    pg.batch_execute(&format!(
        "CREATE DATABASE {ONE} TEMPLATE {DB} STRATEGY FILE_COPY"
    ))
    .unwrap();
    let mut one = connect(ONE);
    let mut many = connect(DB);
    for k in 0..extra {
        many.batch_execute(&format!(
            "SELECT udm_create_tenant('gx{k}'); SELECT udm_use('gx{k}'); \
             SELECT udm_define_entity('product', '{{\"fields\": [{{\"name\": \"name\", \"type\": \"text\"}}]}}'); \
             SELECT udm_graphql('{{ productCollection {{ totalCount }} }}');"
        ))
        .unwrap();
    }
    // the catalogs' autovacuum and the checkpoint that so much DDL calls for would otherwise run
    // during the measurement (2 cores)
    let settle = |c: &mut postgres::Client| {
        c.batch_execute(
            "VACUUM (ANALYZE) pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_depend, \
             pg_catalog.pg_type, pg_catalog.pg_constraint, pg_catalog.pg_index, pg_catalog.pg_trigger, \
             pg_catalog.pg_namespace, pg_catalog.pg_proc, pg_catalog.pg_policy, udm.tenant",
        )
        .unwrap();
    };
    settle(&mut one);
    settle(&mut many);
    many.batch_execute("CHECKPOINT").unwrap();
    // and the autovacuum of the new tenants' tables: until no worker has run for 2 s (at most
    // 120 s)
    let started = Instant::now();
    let mut idle_since = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let busy: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
                &[],
            )
            .unwrap()
            .get(0);
        if busy > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let query = "SELECT udm_graphql('query($id: UUID!) { product(id: $id) { name price category { name } } }', $1)";
    let mut sides = [(&mut one, Vec::new()), (&mut many, Vec::new())];
    for (c, _) in sides.iter_mut() {
        c.batch_execute("SELECT udm_use('gb')").unwrap();
    }
    let statements: Vec<postgres::Statement> = sides
        .iter_mut()
        .map(|(c, _)| c.prepare(query).unwrap())
        .collect();
    for round in 0..6 {
        for (side, (c, v)) in sides.iter_mut().enumerate() {
            for i in 0..600 {
                let vars = json!({"id": ids[i % ids.len()]});
                let d = time(|| c.query_one(&statements[side], &[&vars]).unwrap()).0;
                // the first round warms both
                if round > 0 {
                    v.push(d);
                }
            }
        }
    }
    let before = stats(&sides[0].1);
    let after = stats(&sides[1].1);
    row("1 tenant", before);
    row(&format!("{} tenants", extra + 2), after);
    let r1 = ratio(
        "median, many tenants / one",
        after.median_ms,
        before.median_ms,
        Some(1.1),
    );
    drop(sides);
    drop(one);
    pg.batch_execute(&format!("DROP DATABASE IF EXISTS {ONE}"))
        .unwrap();

    header("summary");
    for (n, m, p, same, goal) in verdicts {
        println!(
            "  {n:<70} median {m:>5.2}x  p95 {p:>5.2}x  (goal <= {goal:.2}x: {})  same result: {}",
            if m <= goal && p <= goal {
                "met"
            } else {
                "NOT MET"
            },
            if same { "yes" } else { "NO" }
        );
    }
    println!(
        "  by id, {} tenants vs 1: {r1:.2}x (goal <= 1.10x)",
        extra + 2
    );
}
