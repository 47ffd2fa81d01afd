//! Bringing tenants made by an earlier udm to what this version makes: run by the upgrade
//! scripts (`ALTER EXTENSION udm UPDATE`), and by an admin as a repair. Idempotent: on a tenant
//! that is current it changes nothing but remakes the same triggers and policies.
//!
//! What it does to a tenant: its table of known users (`_udm_user`) for members, relation tuples
//! and `user` fields, filled from the global users they name, and their foreign keys moved onto
//! it; the directory `udm.user_tenant`; every trigger and policy udm plans for its entities and
//! junction tables, remade (their arguments name their table since 0.2.0); the audit log's policy
//! where access control is on; the helpers' role granted to the tenant's role.

use crate::access::security::{as_owner, require_admin, TENANT_ROLES};
use crate::catalog;
use crate::error::{OrRaise, Result};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::{json, Value};
use udm_core::ddl::{TUPLE_TABLE, USER_TABLE};
use udm_core::ident::quote_ident;
use udm_core::types::FieldType;

const MEMBER_TABLE: &str = "_udm_member";

fn run(sql: &str) -> Result<()> {
    crate::spi::run(sql, &[])
}

pub fn upgrade_tenant(slug: &str) -> Result<Value> {
    require_admin("upgrade a tenant")?;
    let t = catalog::tenant(slug)?.ok_or_else(|| catalog::no_such_tenant(slug))?;
    let entities = catalog::active_entities(&t)?;
    let user_columns: Vec<(String, String)> = entities
        .iter()
        .flat_map(|e| {
            e.def
                .fields
                .iter()
                .filter(|f| f.ftype == FieldType::User && f.has_column())
                .map(|f| (e.def.slug.clone(), f.column.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let has_members = t.relation(MEMBER_TABLE).is_some();
    let has_tuples = t.relation(TUPLE_TABLE).is_some();
    let mut users_known = 0i64;
    if has_members || has_tuples || !user_columns.is_empty() {
        crate::access::users::ensure_table(&t)?;
        // every user something of the tenant names
        let mut sources = Vec::new();
        if has_members {
            sources.push(format!("SELECT user_id FROM {}", t.catalog(MEMBER_TABLE)));
        }
        if has_tuples {
            sources.push(format!("SELECT subject FROM {}", t.catalog(TUPLE_TABLE)));
        }
        for (e, c) in &user_columns {
            sources.push(format!("SELECT {} FROM {}", quote_ident(c), t.catalog(e)));
        }
        let union = sources.join(" UNION ");
        as_owner(|| {
            users_known = crate::spi::select_one::<i64>(
                &format!(
                    "WITH named(id) AS ({union}), \
                       added AS (INSERT INTO {users} (id, email, name) \
                         SELECT u.id, u.email, u.name FROM udm.app_user u JOIN named n ON n.id = u.id \
                         ON CONFLICT (id) DO NOTHING RETURNING id), \
                       listed AS (INSERT INTO udm.user_tenant (user_id, tenant) \
                         SELECT u.id, $1 FROM udm.app_user u JOIN named n ON n.id = u.id \
                         ON CONFLICT DO NOTHING RETURNING 1) \
                     SELECT (SELECT count(*) FROM added)",
                    users = t.catalog(USER_TABLE)
                ),
                &[t.slug.as_str().into()],
            )?
            .unwrap_or(0);
            // members and tuples reference the tenant's users, not the global table
            for (table, column) in [(MEMBER_TABLE, "user_id"), (TUPLE_TABLE, "subject")] {
                if t.relation(table).is_none() {
                    continue;
                }
                let tbl = t.catalog(table);
                let fkeys = crate::spi::select_one::<Vec<Option<String>>>(
                    "SELECT array_agg(conname::text) FROM pg_catalog.pg_constraint \
                     WHERE conrelid = $1::regclass AND contype = 'f' AND confrelid = 'udm.app_user'::regclass",
                    &[tbl.as_str().into()],
                )?
                .unwrap_or_default();
                for name in fkeys.into_iter().flatten() {
                    run(&format!(
                        "ALTER TABLE {tbl} DROP CONSTRAINT {}; \
                         ALTER TABLE {tbl} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} (id) ON DELETE CASCADE",
                        quote_ident(&name),
                        quote_ident(&name),
                        quote_ident(column),
                        t.catalog(USER_TABLE)
                    ))?;
                }
            }
            Ok::<_, crate::error::UdmError>(())
        })?;
    }
    // every trigger and policy as this version plans them
    let model = crate::query::definitions(&t)?;
    let ctx = udm_core::ddl::Ctx {
        schema: &t.schema,
        role: &t.role,
        access: t.access,
        model: Some(&*model),
        citus: crate::citus::installed(),
    };
    let mut steps = Vec::new();
    for e in &entities {
        steps.extend(udm_core::ddl::refresh_sql(&ctx, &e.def)?);
    }
    let batched = crate::audit::batch::is_batched(&t);
    if batched {
        steps.push(crate::audit::batch::view_refresh_sql(&t));
    } else if t.access {
        steps.push(format!(
            "DROP POLICY IF EXISTS {} ON {}",
            quote_ident(udm_core::ddl::ACCESS_POLICY),
            crate::audit::audit_table(&t)
        ));
        steps.extend(udm_core::ddl::audit_access_sql(
            &t.schema,
            crate::citus::installed(),
        ));
    }
    steps.push(format!(
        "GRANT {} TO {}",
        quote_ident(TENANT_ROLES),
        quote_ident(&t.role)
    ));
    // 0.2.0: the BRIN of event ids
    if t.relation("_udm_audit").is_some() && !batched {
        steps.push(crate::audit::audit_id_index_sql(&t.schema));
    }
    as_owner(|| {
        for s in &steps {
            run(s)?;
        }
        // run by an upgrade script, what it made would belong to the extension (pg_dump would
        // leave it out): a tenant's tables are the tenant's
        let members = crate::spi::select_one::<Vec<Option<String>>>(
            "SELECT array_agg(CASE c.relkind WHEN 'S' THEN 'SEQUENCE ' WHEN 'v' THEN 'VIEW ' \
                                 ELSE 'TABLE ' END || c.oid::regclass::text) \
             FROM pg_catalog.pg_depend d \
               JOIN pg_catalog.pg_class c ON c.oid = d.objid \
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e' \
               AND c.relkind IN ('r', 'p', 'S', 'v') \
               AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'udm') \
               AND c.relnamespace = $1::regnamespace",
            &[quote_ident(&t.schema).into()],
        )?
        .unwrap_or_default();
        for rel in members.into_iter().flatten() {
            run(&format!("ALTER EXTENSION udm DROP {rel}"))?;
        }
        Ok::<_, crate::error::UdmError>(())
    })?;
    catalog::invalidate(&t);
    Ok(
        json!({"tenant": t.slug, "entities": entities.len(), "statements": steps.len(), "users_known": users_known}),
    )
}

/// Every tenant of the database (the upgrade scripts call this).
pub fn upgrade_tenants() -> Result<Value> {
    require_admin("upgrade tenants")?;
    let slugs = as_owner(|| {
        crate::spi::select_one::<Vec<Option<String>>>(
            "SELECT array_agg(slug ORDER BY slug) FROM udm.tenant",
            &[],
        )
    })?
    .unwrap_or_default();
    let mut out = Vec::new();
    for s in slugs.into_iter().flatten() {
        out.push(upgrade_tenant(&s)?);
    }
    Ok(json!({"tenants": out}))
}

finfo_v1!(pg_finfo_udm_upgrade_tenant);
finfo_v1!(pg_finfo_udm_upgrade_tenants);

/// `udm.upgrade_tenant(slug text) returns jsonb` (internal: the owner, and udm admins it lets)
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_upgrade_tenant(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let slug = crate::error::required(pgrx::fcinfo::pg_getarg::<String>(fcinfo, 0), "slug");
        JsonB(upgrade_tenant(&slug).or_raise())
            .into_datum()
            .expect("jsonb")
    }
}

/// `udm.upgrade_tenants() returns jsonb` (internal; the upgrade scripts call it)
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_upgrade_tenants(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    JsonB(upgrade_tenants().or_raise())
        .into_datum()
        .expect("jsonb")
}
