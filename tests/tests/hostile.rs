//! Hostile callers. Every function udm has, found in the catalog (so new functions are covered
//! without touching this file), is called as a role that belongs to no tenant, as a member of
//! another tenant, and as a viewer of the tenant, with NULLs, empty values, values of the wrong
//! shape, SQL-looking strings and oversized input. None may crash the server, fail with an
//! internal error (XX000) or run into the statement timeout (unbounded work): every refusal is
//! an error with its own SQLSTATE. Trigger functions are attached by hand to tables udm did not
//! make, which they refuse.

use postgres::Client;
use udm_tests::*;

/// One function of the extension: (schema, name, argument types, returns trigger).
type Function = (String, String, Vec<String>, bool);

fn functions(adm: &mut Client) -> Vec<Function> {
    adm.query(
        "SELECT n.nspname, p.proname, \
           coalesce(array_agg(format_type(t.typ, NULL) ORDER BY t.ord) FILTER (WHERE t.typ IS NOT NULL), '{}'), \
           p.prorettype = 'trigger'::regtype \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e' \
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'udm') \
         LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS t(typ, ord) ON true \
         GROUP BY p.oid, n.nspname, p.proname, p.prorettype ORDER BY 2, 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// SQL expressions for an argument of `typ`: the first is the plain value the other arguments
/// take while one is varied.
fn candidates(typ: &str, tenant: &str) -> Vec<String> {
    let deep = |n: usize| format!("'{}{}'::jsonb", "[".repeat(n), "]".repeat(n));
    let deep_filter = format!(
        "'{}{{\"name\": \"x\"}}{}'::jsonb",
        "{\"and\": [".repeat(300),
        "]}".repeat(300)
    );
    let v: Vec<String> = match typ {
        "text" => vec![
            "'item'".into(),
            "NULL::text".into(),
            "''".into(),
            lit(tenant),
            "'name'".into(),
            "'query'".into(),
            "'x\"; SELECT pg_sleep(10); --'".into(),
            "'pg_catalog'".into(),
            "'_udm_audit'".into(),
            "repeat('x', 100000)".into(),
            "'{\"not\": \"a name\"}'".into(),
        ],
        "jsonb" => vec![
            "'{}'::jsonb".into(),
            "NULL::jsonb".into(),
            "'[]'::jsonb".into(),
            "'null'::jsonb".into(),
            "'\"x\"'::jsonb".into(),
            "'1e400'::jsonb".into(),
            deep(200),
            deep(5000),
            deep_filter,
            "jsonb_build_object('filters', jsonb_build_object('name', jsonb_build_object('in', (SELECT jsonb_agg(i::text) FROM generate_series(1, 100000) i))))".into(),
            "jsonb_build_object('columns', (SELECT jsonb_agg('name') FROM generate_series(1, 20000)))".into(),
            "'{\"limit\": 1e30, \"offset\": -1, \"sort\": \"x\", \"cursor\": \"%%%\"}'::jsonb".into(),
            "'{\"name\": \"x\", \"type\": \"text\", \"fields\": [{\"name\": \"a\", \"type\": \"nope\"}]}'::jsonb".into(),
            "(SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 20000) i)".into(),
        ],
        "uuid" => vec![
            "gen_random_uuid()".into(),
            "NULL::uuid".into(),
            "'00000000-0000-0000-0000-000000000000'::uuid".into(),
        ],
        "integer" => vec![
            "1".into(),
            "NULL::integer".into(),
            "0".into(),
            "-1".into(),
            "2147483647".into(),
        ],
        "bigint" => vec![
            "1::bigint".into(),
            "NULL::bigint".into(),
            "0::bigint".into(),
            "-1::bigint".into(),
            "9223372036854775807::bigint".into(),
        ],
        "boolean" => vec!["false".into(), "NULL::boolean".into(), "true".into()],
        "text[]" => vec![
            "ARRAY['name']".into(),
            "NULL::text[]".into(),
            "'{}'::text[]".into(),
            "ARRAY[NULL]::text[]".into(),
            "ARRAY['name', NULL]".into(),
            "(SELECT array_agg('f' || i) FROM generate_series(1, 5000) i)".into(),
        ],
        "uuid[]" => vec![
            "'{}'::uuid[]".into(),
            "NULL::uuid[]".into(),
            "ARRAY[NULL]::uuid[]".into(),
            "ARRAY[gen_random_uuid(), NULL]".into(),
        ],
        "timestamp with time zone" => vec![
            "now()".into(),
            "NULL::timestamptz".into(),
            "'infinity'::timestamptz".into(),
            "'-infinity'::timestamptz".into(),
        ],
        "anyarray" => vec![
            "ARRAY[1]".into(),
            "NULL::int[]".into(),
            "ARRAY[1, 2, 2]".into(),
        ],
        "bytea" => vec!["'\\x00'::bytea".into(), "NULL::bytea".into()],
        other => vec![format!("NULL::{other}")],
    };
    v
}

/// The calls of one function: every argument at its plain value, then each argument through
/// each of its candidates while the others stay plain.
fn calls(f: &Function, tenant: &str) -> Vec<String> {
    let (schema, name, args, _) = f;
    let cands: Vec<Vec<String>> = args.iter().map(|t| candidates(t, tenant)).collect();
    let call =
        |vals: &[String]| format!("SELECT * FROM \"{schema}\".\"{name}\"({})", vals.join(", "));
    let plain: Vec<String> = cands.iter().map(|c| c[0].clone()).collect();
    let mut out = vec![call(&plain)];
    for (i, c) in cands.iter().enumerate() {
        for v in c.iter().skip(1) {
            let mut vals = plain.clone();
            vals[i] = v.clone();
            out.push(call(&vals));
        }
    }
    out
}

struct Fixture {
    tenant: String,
    other_tenant: String,
    no_tenant: String,
    other_member: String,
    viewer_role: String,
    viewer: String,
}

/// Fixtures are made one at a time (adding a tenant's first member creates tables with foreign
/// keys to the global users table; concurrent ones can deadlock there).
static FIXTURE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fixture(adm: &mut Client) -> Fixture {
    let _one_at_a_time = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    let tenant = tenant(adm, "hosa");
    let other_tenant = tenant_slug(adm, "hosb");
    adm.batch_execute(&format!(
        "SELECT udm_use({t}); \
         SELECT udm_define_entity('cat', '{{\"fields\": [{{\"name\": \"name\", \"type\": \"text\"}}, {{\"name\": \"cap\", \"type\": \"integer\"}}]}}'); \
         SELECT udm_define_entity('item', '{{\"fields\": [\
            {{\"name\": \"name\", \"type\": \"text\", \"required\": true}}, \
            {{\"name\": \"price\", \"type\": \"decimal\", \"min\": 0}}, \
            {{\"name\": \"data\", \"type\": \"json\"}}, \
            {{\"name\": \"day\", \"type\": \"date\"}}, \
            {{\"name\": \"pin\", \"type\": \"password\"}}, \
            {{\"name\": \"cat_id\", \"type\": \"relation\", \"target\": \"cat\"}}, \
            {{\"name\": \"tags\", \"type\": \"relation\", \"target\": \"cat\", \"many\": true}}, \
            {{\"name\": \"ref\", \"type\": \"reference\", \"targets\": [\"cat\"]}}], \
          \"rules\": [{{\"name\": \"short\", \"check\": \"length(name) <= cat_id.cap\"}}], \
          \"lock\": \"self\"}}'); \
         INSERT INTO {q}.cat (name, cap) VALUES ('c', 10); \
         INSERT INTO {q}.item (name, data, cat_id) SELECT 'i', '{{\"a\": 1}}', id FROM {q}.cat",
        t = lit(&tenant),
        q = format_args!("\"{tenant}\""),
    ))
    .unwrap();
    let viewer = format!("{}@hostile.test", unique("v"));
    let boss = format!("{}@hostile.test", unique("b"));
    adm.batch_execute(&format!(
        "SELECT udm_create_user({v}, 'Viewer', 'password123'); \
         SELECT udm_create_user({b}, 'Boss', 'password123'); \
         SELECT udm_add_member({t}, {b}, 'admin'); \
         SELECT udm_add_member({t}, {v}, 'viewer')",
        v = lit(&viewer),
        b = lit(&boss),
        t = lit(&tenant)
    ))
    .unwrap();
    let no_tenant = login_role(adm, "hosn");
    let other_member = login_role(adm, "hoso");
    let viewer_role = login_role(adm, "hosv");
    grant_tenant(adm, &other_tenant, &other_member);
    grant_tenant(adm, &tenant, &viewer_role);
    Fixture {
        tenant,
        other_tenant,
        no_tenant,
        other_member,
        viewer_role,
        viewer,
    }
}

fn tenant_slug(adm: &mut Client, prefix: &str) -> String {
    tenant(adm, prefix)
}

/// Runs `sql`; returns a failure when it crashed the session, failed internally or timed out.
fn attempt(c: &mut Client, who: &str, sql: &str) -> Option<String> {
    let shown = if sql.len() > 300 { &sql[..300] } else { sql };
    match c.batch_execute(sql) {
        Ok(()) => None,
        Err(e) if e.is_closed() || e.as_db_error().is_none() => {
            Some(format!("{who}: connection lost (crash?): {shown}: {e}"))
        }
        Err(e) => match sqlstate(&e).as_str() {
            "XX000" => Some(format!("{who}: internal error: {shown}: {}", message(&e))),
            "57014" => Some(format!(
                "{who}: statement timeout (unbounded work): {shown}"
            )),
            _ => None,
        },
    }
}

fn session(role: &str, setup: &str) -> Client {
    let mut c = connect_as(role);
    c.batch_execute("SET statement_timeout = '10s'").unwrap();
    if !setup.is_empty() {
        c.batch_execute(setup).unwrap();
    }
    c
}

#[test]
fn no_function_crashes_fails_internally_or_runs_unbounded_for_any_caller() {
    let mut adm = admin();
    let started: String = scalar(&mut adm, "SELECT pg_postmaster_start_time()::text");
    let fx = fixture(&mut adm);
    let fns = functions(&mut adm);
    assert!(
        fns.len() > 60,
        "the catalog lists the extension's functions: {}",
        fns.len()
    );
    let identities = [
        ("a role in no tenant", fx.no_tenant.clone(), String::new()),
        (
            "a member of another tenant",
            fx.other_member.clone(),
            format!("SELECT udm_use({})", lit(&fx.other_tenant)),
        ),
        (
            "a viewer of the tenant",
            fx.viewer_role.clone(),
            format!("SELECT udm_use({}, {})", lit(&fx.tenant), lit(&fx.viewer)),
        ),
    ];
    let mut failures = Vec::new();
    let mut n = 0;
    for (who, role, setup) in &identities {
        let mut c = session(role, setup);
        for f in fns.iter().filter(|f| !f.3) {
            for sql in calls(f, &fx.tenant) {
                n += 1;
                if let Some(fail) = attempt(&mut c, who, &sql) {
                    failures.push(fail);
                    c = session(role, setup);
                }
            }
        }
    }
    let now: String = scalar(&mut admin(), "SELECT pg_postmaster_start_time()::text");
    assert_eq!(started, now, "the server restarted (a backend crashed)");
    assert!(
        failures.is_empty(),
        "{} of {n} calls failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn trigger_functions_cannot_be_attached_by_other_roles_nor_run_on_other_tables() {
    let mut adm = admin();
    let fx = fixture(&mut adm);
    let triggers: Vec<Function> = functions(&mut adm).into_iter().filter(|f| f.3).collect();
    assert!(triggers.len() >= 9, "{triggers:?}");
    // a role outside udm may not attach them at all
    let mut nobody = session(&fx.no_tenant, "");
    nobody
        .batch_execute("CREATE TEMP TABLE t (id uuid, r int)")
        .unwrap();
    for (schema, name, _, _) in &triggers {
        let sql = format!(
            "CREATE TRIGGER x AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION \"{schema}\".\"{name}\"('x', 'y', 'z', 'id', 'ALTER ROLE {} SUPERUSER', '')",
            fx.no_tenant
        );
        expect_err(&mut nobody, &sql, "42501");
    }
    // attached by a superuser to tables udm did not make, with columns of every wrong type and
    // arguments naming the tenant's own entities, they refuse to run: no crash, no internal
    // error, and above all no escalation
    let started: String = scalar(&mut adm, "SELECT pg_postmaster_start_time()::text");
    let mut failures = Vec::new();
    let tables = [
        "(id int, created_at int, updated_at int, created_by int, updated_by int, _version int, r int, source_id int, target_id int)",
        "(id uuid, created_at text, updated_at text, created_by int, updated_by int, _version text, r text)",
        "(x int)",
    ];
    let arg_sets = [
        String::new(),
        "'item'".to_string(),
        format!(
            "'item', 'cat', 'r.short', 'id', 'ALTER ROLE {} SUPERUSER', ''",
            fx.no_tenant
        ),
        "'cat', 'item', '8'".to_string(),
        "'item', '7'".to_string(),
    ];
    let mut c = admin();
    for (schema, name, _, _) in &triggers {
        for (ti, cols) in tables.iter().enumerate() {
            for (ai, args) in arg_sets.iter().enumerate() {
                let table = format!("hostile_{ti}_{ai}");
                let setup = format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {table} {cols}; \
                     INSERT INTO {table} SELECT FROM generate_series(1, 1); \
                     DROP TRIGGER IF EXISTS x ON {table}; DROP TRIGGER IF EXISTS s ON {table}; \
                     CREATE TRIGGER x BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION \"{schema}\".\"{name}\"({args}); \
                     CREATE TRIGGER s AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION \"{schema}\".\"{name}\"({args})"
                );
                c.batch_execute(&setup).unwrap();
                for dml in [
                    format!("INSERT INTO {table} SELECT FROM generate_series(1, 1)"),
                    format!(
                        "UPDATE {table} SET {}",
                        cols[1..].split(' ').next().unwrap_or("x").to_string() + " = DEFAULT"
                    ),
                    format!("DELETE FROM {table}"),
                ] {
                    if let Some(f) = attempt(&mut c, &format!("{name} on {table}"), &dml) {
                        failures.push(f);
                        c = admin();
                    }
                }
                let _ = c.batch_execute(&format!("DROP TABLE IF EXISTS {table}"));
            }
        }
        // called as a plain function
        let sql = format!("SELECT \"{schema}\".\"{name}\"()");
        if let Some(f) = attempt(&mut c, "direct call", &sql) {
            failures.push(f);
        }
    }
    let super_now: bool = scalar(
        &mut adm,
        &format!(
            "SELECT rolsuper FROM pg_roles WHERE rolname = {}",
            lit(&fx.no_tenant)
        ),
    );
    assert!(!super_now, "a trigger's arguments made a role superuser");
    let now: String = scalar(&mut adm, "SELECT pg_postmaster_start_time()::text");
    assert_eq!(started, now, "the server restarted (a backend crashed)");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn internal_helpers_are_not_public_and_answer_only_members() {
    let mut adm = admin();
    let fx = fixture(&mut adm);
    let t = lit(&fx.tenant);
    // no EXECUTE for a role outside udm
    let mut nobody = session(&fx.no_tenant, "");
    for sql in [
        format!("SELECT udm.check_rule(false, {t}, 'item', 'r.short')"),
        format!("SELECT udm.may_read_all({t}, 'nope')"),
        format!("SELECT udm.access_user({t})"),
        format!("SELECT udm.tuple_objects({t}, 'item')"),
        format!("SELECT udm.may_read_audit({t})"),
        format!("SELECT udm.audit_visible({t}, 'item', gen_random_uuid())"),
        format!("SELECT udm.citus_lock('acquire', {t}, 'item', gen_random_uuid())"),
        "SELECT udm.citus_know_user('know|0|1|x|t|00|00')".to_string(),
        "SELECT udm.citus_check_deferred('{\"deferred\": false}')".to_string(),
        "SELECT udm.citus_tenant_keys('keys|0|1|x|t|00')".to_string(),
        "SELECT udm.uuid_v7()".to_string(),
    ] {
        let msg = expect_err(&mut nobody, &sql, "42501");
        assert!(
            msg.contains("permission denied for function"),
            "{sql}: {msg}"
        );
    }
    // a member of another tenant may execute them (its own tables call them) but learns nothing
    // about this tenant
    let mut other = session(
        &fx.other_member,
        &format!("SELECT udm_use({})", lit(&fx.other_tenant)),
    );
    other
        .batch_execute(&format!("SET udm.user_id = {}", lit(&fx.viewer)))
        .unwrap();
    for sql in [
        format!("SELECT udm.check_rule(false, {t}, 'item', 'r.short')"),
        format!("SELECT udm.may_read_all({t}, 'nope')"),
        format!("SELECT udm.may_read_scoped({t}, 'item')"),
        format!("SELECT udm.access_user({t})"),
        format!("SELECT udm.tuple_objects({t}, 'item')"),
        format!("SELECT udm.may_read_audit({t})"),
        format!("SELECT udm.audit_visible({t}, 'item', gen_random_uuid())"),
    ] {
        let msg = expect_err(&mut other, &sql, "42501");
        assert!(
            msg.contains(&format!("permission denied for tenant \"{}\"", fx.tenant)),
            "{sql}: {msg}"
        );
        assert!(
            !msg.contains("item"),
            "{sql} names the tenant's entities: {msg}"
        );
    }
    // its own tenant's helpers work for it
    let ok: Option<bool> = scalar(
        &mut other,
        &format!("SELECT udm.may_read_audit({})", lit(&fx.other_tenant)),
    );
    assert_eq!(ok, Some(true));
    // the lock helper udm_lock_* send to a Citus worker does nothing anywhere else, for a member
    // of the tenant too
    let sql = format!(
        "SELECT udm.citus_lock('acquire', {}, 'item', gen_random_uuid())",
        lit(&fx.other_tenant)
    );
    let msg = expect_err(&mut other, &sql, "0A000");
    assert!(
        msg.contains("udm.citus_lock runs on a Citus worker only"),
        "{sql}: {msg}"
    );
}

#[test]
fn stored_json_of_any_depth_is_readable_and_oversized_specs_are_refused_by_name() {
    let mut adm = admin();
    let mut m = member(&mut adm, "hosd");
    let t = m.tenant.clone();
    m.client
        .batch_execute(
            "SELECT udm_define_entity('doc', '{\"fields\": [{\"name\": \"title\", \"type\": \"text\"}, {\"name\": \"body\", \"type\": \"json\"}]}'); \
             SELECT udm_subscribe('doc', ARRAY['INSERT', 'UPDATE'], 'wf', '{\"title\": \"a\"}')",
        )
        .unwrap();
    // written by plain SQL: 5,000 levels (past serde_json's 128), and 12,000 built by nesting
    // (past what PostgreSQL's own text parser takes)
    m.client
        .batch_execute(&format!(
            "INSERT INTO \"{t}\".doc (title, body) VALUES ('a', (repeat('[', 5000) || repeat(']', 5000))::jsonb); \
             DO $$ DECLARE j jsonb := (repeat('[', 6000) || repeat(']', 6000))::jsonb; \
             BEGIN FOR i IN 1..6000 LOOP j := jsonb_build_array(j); END LOOP; \
               INSERT INTO \"{t}\".doc (title, body) VALUES ('b', j); END $$; \
             UPDATE \"{t}\".doc SET title = title || '!'"
        ))
        .unwrap();
    let id: uuid::Uuid = scalar(
        &mut m.client,
        &format!("SELECT id FROM \"{t}\".doc WHERE title = 'a!'"),
    );
    // every reader of the audit log still works, and the event stream moves on past both rows
    let events = json(&mut m.client, "SELECT udm_events(0, 100)");
    assert_eq!(events["events"].as_array().unwrap().len(), 4, "{events}");
    let mut c = 0;
    // (read in SQL: the test's own JSON parser stops at 128 levels)
    for r in m
        .client
        .query(
            &format!(
                "SELECT data->>'title', jsonb_typeof(data->'body') FROM udm_history('doc', '{id}')"
            ),
            &[],
        )
        .unwrap()
    {
        let title: String = r.get(0);
        let body: String = r.get(1);
        assert!(title.starts_with('a') && body == "array", "{title} {body}");
        c += 1;
    }
    assert_eq!(c, 2);
    let body: String = scalar(
        &mut m.client,
        &format!("SELECT jsonb_typeof(udm_record_at('doc', '{id}', now())->'body')"),
    );
    assert_eq!(body, "array");
    let n: i32 = scalar(
        &mut m.client,
        "SELECT jsonb_array_length(udm_audit_report('changes', now() - interval '1 hour', now() + interval '1 hour')->'details')",
    );
    assert_eq!(n, 4);
    json(
        &mut m.client,
        &format!("SELECT udm_rollback('doc', '{id}', 1)"),
    );
    let n: i64 = scalar(
        &mut m.client,
        &format!("SELECT count(*) FROM \"{t}\".doc WHERE title = 'a'"),
    );
    assert_eq!(n, 1, "rolled back with its deep body");
    // the 12,000-deep one too: history and point-in-time pass images through whole
    let b: uuid::Uuid = scalar(
        &mut m.client,
        &format!("SELECT id FROM \"{t}\".doc WHERE title = 'b!'"),
    );
    // (each read a statement of its own: on Citus a udm function in a statement reading a tenant
    // table would run on the worker; compared as jsonb's text, too deep for serde_json)
    let stored: String = scalar(
        &mut m.client,
        &format!("SELECT body::text FROM \"{t}\".doc WHERE id = '{b}'"),
    );
    let in_history: String = scalar(
        &mut m.client,
        &format!("SELECT (data->'body')::text FROM udm_history('doc', '{b}') LIMIT 1"),
    );
    let at: String = scalar(
        &mut m.client,
        &format!("SELECT (udm_record_at('doc', '{b}', now())->'body')::text"),
    );
    assert!(
        in_history == stored && at == stored,
        "the deep body comes back exactly"
    );
    // specs: depth, size and list length, each refused naming its setting
    let deep = format!(
        "SELECT udm_query('doc', '{{\"filters\": {}{{\"title\": \"x\"}}{}}}')",
        "{\"and\": [".repeat(20),
        "]}".repeat(20)
    );
    let msg = expect_err(&mut m.client, &deep, "54000");
    assert!(msg.contains("udm.max_spec_depth"), "{msg}");
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_query('doc', jsonb_build_object('filters', jsonb_build_object('title', jsonb_build_object('in', (SELECT jsonb_agg(i::text) FROM generate_series(1, 1001) i)))))",
        "54000",
    );
    assert!(
        msg.contains("list of 1001 values") && msg.contains("udm.max_list_values"),
        "{msg}"
    );
    let msg = expect_err(
        &mut m.client,
        "SELECT udm_query('doc', jsonb_build_object('filters', jsonb_build_object('title', repeat('x', 2000000))))",
        "54000",
    );
    assert!(msg.contains("udm.max_spec_size"), "{msg}");
    // within the limits the same shapes work
    json(
        &mut m.client,
        "SELECT udm_query('doc', jsonb_build_object('filters', jsonb_build_object('title', jsonb_build_object('in', (SELECT jsonb_agg(i::text) FROM generate_series(1, 1000) i)))))",
    );
    // NULLs inside array arguments are refused by name, not by an internal error
    let msg = expect_err(
        &mut m.client,
        &format!("SELECT udm_get('doc', '{id}', ARRAY['title', NULL])"),
        "22004",
    );
    assert!(
        msg.contains("columns must not contain NULL (element 2 is NULL)"),
        "{msg}"
    );
    expect_err(&mut m.client, "SELECT udm_use(NULL)", "22004");
}
