//! `udm_add_field` with a constant default on a 1,000,000-row entity next to the same call on a
//! 1,000-row entity, alternating, in one run. A constant default must not rewrite or scan the
//! table, so the two should cost about the same.
//!
//! Goal (issue 2): big / small <= 2. Plain `ALTER TABLE ... ADD COLUMN ... DEFAULT` on the same
//! two tables is shown for reference.

use udm_bench::*;

fn main() {
    let rows: i64 = setting("ROWS", 1_000_000);
    let rounds: usize = setting("ROUNDS", 15);
    let mut c = fresh_db("bench_add_field");
    let mut pg = connect("postgres");
    let _ = pg.batch_execute("DROP ROLE IF EXISTS tenant_af");
    c.batch_execute(
        r#"SELECT udm_create_tenant('af');
           SELECT udm_use('af');
           SELECT udm_define_entity('big', '{"fields": [{"name": "name", "type": "text", "required": true},
                                                      {"name": "price", "type": "decimal", "min": 0}]}');
           SELECT udm_define_entity('small', '{"fields": [{"name": "name", "type": "text", "required": true},
                                                        {"name": "price", "type": "decimal", "min": 0}]}');"#,
    )
    .unwrap();
    header(&format!(
        "udm_add_field with a constant default: {rows} rows vs 1,000 rows, {rounds} rounds"
    ));
    let (d, _) = time(|| {
        c.batch_execute(&format!(
            "INSERT INTO af.big (name, price) SELECT 'p' || i, i % 1000 FROM generate_series(1, {rows}) i;
             INSERT INTO af.small (name, price) SELECT 'p' || i, i % 1000 FROM generate_series(1, 1000) i;"
        ))
        .unwrap();
        c.batch_execute("VACUUM ANALYZE af.big").unwrap();
        c.batch_execute("VACUUM ANALYZE af.small").unwrap();
    });
    println!("  loaded in {:.1} s", d.as_secs_f64());
    let size: String = c
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size('af.big'))",
            &[],
        )
        .unwrap()
        .get(0);
    println!("  big table: {size}");
    let filenode = |c: &mut postgres::Client| -> u32 {
        c.query_one("SELECT pg_relation_filenode('af.big')", &[])
            .unwrap()
            .get::<_, postgres::types::Oid>(0)
    };
    let before = filenode(&mut c);
    let (mut big, mut small, mut plain_big, mut plain_small) = (vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let field = format!(
            r#"SELECT udm_add_field('{{}}', '{{"name": "f{i}", "type": "integer", "min": 0, "default": {i}, "required": true}}')"#
        );
        let (d, r) = time(|| c.batch_execute(&field.replace("{}", "big")));
        r.unwrap();
        big.push(d);
        let (d, r) = time(|| c.batch_execute(&field.replace("{}", "small")));
        r.unwrap();
        small.push(d);
        let plain = format!(
            "ALTER TABLE af.{{}} ADD COLUMN g{i} integer NOT NULL DEFAULT {i} CHECK (g{i} >= 0)"
        );
        let (d, r) = time(|| c.batch_execute(&plain.replace("{}", "big")));
        r.unwrap();
        plain_big.push(d);
        let (d, r) = time(|| c.batch_execute(&plain.replace("{}", "small")));
        r.unwrap();
        plain_small.push(d);
    }
    let (b, s) = (stats(&big), stats(&small));
    row(&format!("udm_add_field, {rows} rows"), b);
    row("udm_add_field, 1,000 rows", s);
    row(
        &format!("plain ALTER TABLE ADD COLUMN, {rows} rows"),
        stats(&plain_big),
    );
    row(
        "plain ALTER TABLE ADD COLUMN, 1,000 rows",
        stats(&plain_small),
    );
    ratio(
        "udm big / small (median)",
        b.median_ms,
        s.median_ms,
        Some(2.0),
    );
    ratio(
        "plain big / small (median)",
        stats(&plain_big).median_ms,
        stats(&plain_small).median_ms,
        None,
    );
    println!(
        "  table rewritten: {}",
        if filenode(&mut c) == before {
            "no (same relfilenode before and after)"
        } else {
            "YES"
        }
    );
}
