//! udm's per-backend caches within one budget (`udm.cache_size`): a backend serving more tenants
//! than fit evicts what it used least recently, rebuilds it transparently when used again, sees
//! definition changes made meanwhile by other sessions, and reports what it holds.

use udm_tests::*;

#[derive(Debug)]
struct Row {
    entries: i64,
    bytes: i64,
    hits: i64,
    misses: i64,
    evictions: i64,
    budget: i64,
}

fn stats(c: &mut Client, cache: &str) -> Row {
    let r = c
        .query_one(
            "SELECT entries, bytes, hits, misses, evictions, budget_bytes FROM udm_cache_stats() WHERE cache = $1",
            &[&cache],
        )
        .unwrap_or_else(|e| panic!("udm_cache_stats row {cache}: {e}"));
    Row {
        entries: r.get(0),
        bytes: r.get(1),
        hits: r.get(2),
        misses: r.get(3),
        evictions: r.get(4),
        budget: r.get(5),
    }
}

use udm_tests::postgres::Client;

fn make_tenants(adm: &mut Client, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let t = tenant(adm, "cache");
            adm.batch_execute(&format!(
                "SELECT udm_use({t}); \
                 SELECT udm_define_entity('shelf', '{{\"fields\": [{{\"name\": \"name\", \"type\": \"text\"}}]}}'); \
                 SELECT udm_define_entity('book', '{{\"fields\": [{{\"name\": \"title\", \"type\": \"text\", \"required\": true}}, \
                   {{\"name\": \"pages\", \"type\": \"integer\", \"min\": 1}}, \
                   {{\"name\": \"shelf_id\", \"type\": \"relation\", \"target\": \"shelf\"}}]}}'); \
                 SELECT udm_insert('book', '{{\"title\": \"Book of {i}\", \"pages\": {p}}}')",
                t = lit(&t),
                p = i + 1
            ))
            .unwrap();
            t
        })
        .collect()
}

/// The first book of tenant `t` with `columns` (a JSON array), by `udm_query`.
fn first_book(c: &mut Client, t: &str, columns: &str) -> Value {
    c.execute("SELECT udm_use($1)", &[&t]).unwrap();
    let spec = format!("{{\"columns\": {columns}}}");
    let v: Value = c
        .query_one("SELECT udm_query('book', $1::text::jsonb)", &[&spec])
        .unwrap()
        .get(0);
    v["rows"][0].clone()
}

/// The first book's `isbn` in tenant `t`.
fn isbn(c: &mut Client, t: &str) -> Value {
    first_book(c, t, r#"["title", "isbn"]"#)["isbn"].clone()
}

fn title(c: &mut Client, t: &str) -> String {
    first_book(c, t, r#"["title", "pages", "shelf_id.name"]"#)["title"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_backend_stays_within_its_budget_and_rebuilds_what_it_evicted() {
    let mut adm = admin();
    let tenants = make_tenants(&mut adm, 40);
    let mut c = admin();
    // the smallest budget: 1 MB for 40 tenants of 2 entities does not fit
    c.batch_execute("SET udm.cache_size = '1MB'").unwrap();
    for (i, t) in tenants.iter().enumerate() {
        assert_eq!(title(&mut c, t), format!("Book of {i}"));
    }
    let total = stats(&mut c, "total");
    assert_eq!(total.budget, 1024 * 1024);
    assert!(total.evictions > 0, "nothing was evicted: {total:?}");
    let models = stats(&mut c, "tenant models");
    assert!(
        models.entries < tenants.len() as i64,
        "every tenant's model stayed: {models:?}"
    );
    let compiled = stats(&mut c, "compiled queries");
    assert!(
        compiled.evictions > 0,
        "no compiled query was evicted: {compiled:?}"
    );
    // udm's own share of the budget holds (PostgreSQL's catalog caches are reset past theirs)
    let own: i64 = c
        .query_one(
            "SELECT sum(bytes)::bigint FROM udm_cache_stats() WHERE cache NOT IN ('total', 'backend heap', 'postgres catalog caches')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        own <= total.budget,
        "udm's caches hold {own} bytes, over the budget"
    );

    // a definition changes in another session while this backend has evicted the tenant: the
    // rebuilt model has it
    let first = &tenants[0];
    adm.batch_execute(&format!(
        "SELECT udm_use({}); SELECT udm_add_field('book', '{{\"name\": \"isbn\", \"type\": \"text\"}}'); \
         UPDATE {}.book SET isbn = 'x-1'",
        lit(first),
        first
    ))
    .unwrap();
    assert_eq!(isbn(&mut c, first), "x-1");

    // and one still cached sees it too (its entries are dropped by the invalidation)
    let last = tenants.last().unwrap();
    assert_eq!(
        title(&mut c, last),
        format!("Book of {}", tenants.len() - 1)
    );
    adm.batch_execute(&format!(
        "SELECT udm_use({}); SELECT udm_alter_field('book', 'title', '{{\"name\": \"name_of_book\"}}')",
        lit(last)
    ))
    .unwrap();
    c.execute("SELECT udm_use($1)", &[last]).unwrap();
    let v: Value = c
        .query_one(
            "SELECT udm_query('book', '{\"columns\": [\"name_of_book\"]}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        v["rows"][0]["name_of_book"],
        format!("Book of {}", tenants.len() - 1)
    );
    let e = c
        .query_one(
            "SELECT udm_query('book', '{\"columns\": [\"title\"]}')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42703", "{}", message(&e));
}

/// The budget holds for the backend's memory itself, not only for udm's estimates of it (memory
/// PostgreSQL keeps for reuse, the allocator's overhead): tenants of the roadmap template hold
/// more in PostgreSQL's caches than udm estimates per entity.
#[test]
fn the_backend_heap_grows_no_more_than_the_budget() {
    let mut adm = admin();
    let tenants: Vec<String> = (0..80)
        .map(|_| {
            let t = tenant(&mut adm, "heap");
            adm.batch_execute(&format!(
                "SELECT udm_use({}); SELECT udm_install_template('roadmap')",
                lit(&t)
            ))
            .unwrap();
            t
        })
        .collect();
    let mut c = admin();
    c.batch_execute("SET udm.cache_size = '4MB'").unwrap();
    let query = |c: &mut Client, t: &str| -> i64 {
        c.execute("SELECT udm_use($1)", &[&t]).unwrap();
        let v: Value = c
            .query_one(
                "SELECT udm_query('roadmap', '{\"columns\": [\"name\", \"owner_id\"], \"count\": \"exact\"}')",
                &[],
            )
            .unwrap()
            .get(0);
        v["count"].as_i64().unwrap_or(-1)
    };
    assert_eq!(query(&mut c, &tenants[0]), 0);
    let idle = stats(&mut c, "backend heap").bytes;
    let budget = stats(&mut c, "total").budget;
    let mut peak = idle;
    for round in 0..2 {
        for (i, t) in tenants.iter().enumerate() {
            assert_eq!(query(&mut c, t), 0, "round {round}, tenant {i}");
            if i % 4 == 0 {
                peak = peak.max(stats(&mut c, "backend heap").bytes);
            }
        }
    }
    let total = stats(&mut c, "total");
    assert!(total.evictions > 0, "80 tenants fit 4 MB: {total:?}");
    // checked every few insertions: a little more between two checks
    assert!(
        peak - idle <= budget + budget / 16,
        "the heap grew by {} bytes over a budget of {budget}",
        peak - idle
    );
}

#[test]
fn warm_tenants_hit_and_a_large_budget_evicts_nothing() {
    let mut adm = admin();
    let tenants = make_tenants(&mut adm, 5);
    let mut c = admin();
    for t in &tenants {
        title(&mut c, t);
    }
    let before = stats(&mut c, "compiled queries");
    for _ in 0..3 {
        for t in &tenants {
            title(&mut c, t);
        }
    }
    let after = stats(&mut c, "compiled queries");
    assert_eq!(
        after.misses, before.misses,
        "warm queries were compiled again"
    );
    assert!(after.hits >= before.hits + 15, "{before:?} -> {after:?}");
    assert_eq!(after.evictions, 0);
    assert!(after.bytes > 0 && after.entries >= 5, "{after:?}");
    let heap = stats(&mut c, "backend heap");
    assert!(
        heap.bytes > after.bytes,
        "the heap holds the caches: {heap:?}"
    );
}

#[test]
fn only_a_superuser_sets_the_budget() {
    let mut adm = admin();
    let role = login_role(&mut adm, "cacheuser");
    let mut c = connect_as(&role);
    // anyone may read their own backend's figures (this loads udm into the backend)
    let n: i64 = c
        .query_one("SELECT count(*) FROM udm_cache_stats()", &[])
        .unwrap()
        .get(0);
    assert!(n >= 3);
    let e = c.batch_execute("SET udm.cache_size = '1GB'").unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    adm.query_one("SELECT count(*) FROM udm_cache_stats()", &[])
        .unwrap();
    let e = adm
        .batch_execute("SET udm.cache_size = '10kB'")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "below the minimum: {}", message(&e));
}

/// The misses of `cache` in `c` while `f` runs (a cache this backend never filled has no row).
fn misses_during(c: &mut Client, cache: &str, f: impl FnOnce(&mut Client)) -> i64 {
    let misses = |c: &mut Client| -> i64 {
        c.query_opt(
            "SELECT misses FROM udm_cache_stats() WHERE cache = $1",
            &[&cache],
        )
        .unwrap()
        .map_or(0, |r| r.get(0))
    };
    let before = misses(c);
    f(c);
    misses(c) - before
}

/// A change to one tenant's definitions, or only to its table's statistics (VACUUM, ANALYZE),
/// drops that tenant's cached definitions and plans in every backend, and no other tenant's.
#[test]
fn a_change_to_one_tenant_leaves_the_other_tenants_warm() {
    let mut adm = admin();
    let tenants = make_tenants(&mut adm, 4);
    let mut c = admin();
    for _ in 0..2 {
        for t in &tenants {
            title(&mut c, t);
        }
    }
    let t2 = tenants[2].clone();
    let insert_into_2 = move |c: &mut Client| {
        c.execute("SELECT udm_use($1)", &[&t2]).unwrap();
        c.batch_execute("SELECT udm_insert('book', '{\"title\": \"Another\", \"pages\": 3}')")
            .unwrap();
    };
    // on a Citus coordinator the triggers fire on the workers, whose caches hold for one
    // transaction, and VACUUM runs on the shards
    let citus = on_citus(&mut c);
    let stamps = misses_during(&mut c, "row stamps", insert_into_2.clone());
    assert_eq!(stamps, if citus { 0 } else { 1 });
    let all = |c: &mut Client| {
        for t in &tenants {
            assert!(!title(c, t).is_empty(), "{t}");
        }
    };
    assert_eq!(
        misses_during(&mut c, "compiled queries", all),
        0,
        "warm tenants were compiled again"
    );

    // VACUUM and ANALYZE of one tenant's table (what autovacuum does all day): that tenant is
    // rebuilt, the others stay warm
    let schema: String = adm
        .query_one(
            "SELECT schema_name FROM udm.tenant WHERE slug = $1",
            &[&tenants[0]],
        )
        .unwrap()
        .get(0);
    adm.batch_execute(&format!("VACUUM ANALYZE \"{schema}\".book"))
        .unwrap();
    let (models, queries) = (
        stats(&mut c, "tenant models"),
        stats(&mut c, "compiled queries"),
    );
    all(&mut c);
    let rebuilt = (
        stats(&mut c, "tenant models").misses - models.misses,
        stats(&mut c, "compiled queries").misses - queries.misses,
    );
    if citus {
        assert!(rebuilt.0 <= 1 && rebuilt.1 <= 1, "{rebuilt:?}");
    } else {
        assert_eq!(rebuilt, (1, 1));
    }

    // a field added to tenant 1's book by another session: tenant 1's next query sees it, and
    // only tenant 1 is compiled again
    adm.batch_execute(&format!(
        "SELECT udm_use({}); SELECT udm_add_field('book', '{{\"name\": \"isbn\", \"type\": \"text\", \"default\": \"0-00\"}}')",
        lit(&tenants[1])
    ))
    .unwrap();
    assert_eq!(misses_during(&mut c, "compiled queries", all), 1);
    assert_eq!(isbn(&mut c, &tenants[1]), "0-00");
    // the other tenants' book has no such field, as their cached definitions say
    c.execute("SELECT udm_use($1)", &[&tenants[2]]).unwrap();
    let e = c
        .query_one("SELECT udm_query('book', '{\"columns\": [\"isbn\"]}')", &[])
        .unwrap_err();
    assert!(message(&e).contains("isbn"), "{}", message(&e));

    // a change made by this backend itself: seen at once, and the others stay warm
    c.batch_execute(&format!(
        "SELECT udm_use({}); SELECT udm_add_field('book', '{{\"name\": \"isbn\", \"type\": \"text\", \"default\": \"9-99\"}}')",
        lit(&tenants[3])
    ))
    .unwrap();
    assert_eq!(isbn(&mut c, &tenants[3]), "9-99");
    assert_eq!(misses_during(&mut c, "tenant models", all), 0);
    // the triggers of a tenant nothing happened to kept their state all along
    if !citus {
        assert_eq!(misses_during(&mut c, "row stamps", insert_into_2), 0);
    }
}
