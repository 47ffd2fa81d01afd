//! Tenants: a schema holding everything of the tenant (entity tables and udm's catalog of them),
//! and a NOLOGIN role that owns access to it. Isolation is PostgreSQL's privilege system: only
//! members of `tenant_<slug>` (and udm admins, who are members of every tenant role) can reach the
//! schema, through udm functions or plain SQL alike.

use crate::access::security::{
    self, as_owner, caller, has_privs_of, require_admin, ADMIN_ROLE_NAME,
};
use crate::catalog::{self, Tenant};
use crate::error::{spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::json;
use udm_core::ident::{
    printable, quote_ident, quote_literal, tenant_role, validate_slug, SlugKind,
};

fn run(sql: &str) -> Result<()> {
    crate::spi::run(sql, &[])
}

/// The name of the database udm runs in.
pub fn database_name() -> String {
    current_database()
}

fn current_database() -> String {
    unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if p.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn tenant_json(slug: &str, name: Option<&str>, schema: &str, role: &str) -> serde_json::Value {
    json!({"slug": slug, "name": name, "schema": schema, "role": role})
}

pub fn create_tenant(slug: &str, name: Option<&str>) -> Result<serde_json::Value> {
    require_admin("create a tenant")?;
    validate_slug(SlugKind::Tenant, slug)?;
    if let Some(n) = name {
        if n.chars().count() > 200 {
            return Err(UdmError::invalid(
                "tenant name is longer than 200 characters",
            ));
        }
    }
    let role = tenant_role(slug, &current_database());
    let schema = slug.to_string();
    as_owner(|| {
        refuse_taken(slug, &role)?;
        create_objects(slug, name, &role)?;
        if crate::citus::installed() {
            crate::citus::make_first_use_tables(&schema, &role)?;
            crate::citus::distribute_schema(&schema)?;
        }
        register(slug, name, &role, None, None, false)
    })?;
    catalog::invalidate_registry();
    let mut out = tenant_json(slug, name, &schema, &role);
    out["created"] = json!(true);
    Ok(out)
}

/// The role a new tenant of this database gets.
pub fn new_tenant_role(slug: &str) -> String {
    tenant_role(slug, &current_database())
}

/// Refuses a slug whose tenant, schema or role exists (as the owner).
pub fn refuse_taken(slug: &str, role: &str) -> Result<()> {
    let schema = slug;
    let taken = crate::spi::select_one::<String>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM udm.tenant WHERE slug = $1) THEN 'tenant' \
                WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) THEN 'schema' \
                WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $2) THEN 'role' END",
        &[slug.into(), role.into()],
    )?;
    match taken.as_deref() {
        Some("tenant") => {
            Err(UdmError::new(SqlState::DuplicateSchema, format!("tenant \"{slug}\" already exists"))
                .hint("choose another slug, or drop the old tenant with udm_drop_tenant"))
        }
        Some("schema") => {
            Err(UdmError::new(
                SqlState::DuplicateSchema,
                format!("cannot create tenant \"{slug}\": a schema named \"{schema}\" already exists"),
            )
            .hint("the tenant's schema takes its slug; choose another slug"))
        }
        Some(_) => {
            Err(UdmError::new(
                SqlState::DuplicateObject,
                format!("cannot create tenant \"{slug}\": the role \"{role}\" already exists"),
            )
            .hint("roles are shared by all databases of the cluster: a database of this name that was dropped may have left it; if nothing uses it, a superuser can drop it (DROP ROLE), else choose another slug"))
        }
        None => Ok(()),
    }
}

/// The tenant's catalog: an append-only table of every version of every entity definition (its
/// newest row per entity is the current one).
pub fn catalog_table_sql(schema: &str, role: &str) -> String {
    let s = quote_ident(schema);
    let r = quote_ident(role);
    format!(
        "CREATE TABLE {s}.\"_udm_entity\" (\
           entity text NOT NULL, \
           version integer NOT NULL, \
           status text NOT NULL CHECK (status IN ('active', 'dropped', 'purged')), \
           definition jsonb, \
           change jsonb NOT NULL, \
           changed_by text NOT NULL, \
           changed_role text NOT NULL, \
           changed_at timestamp with time zone NOT NULL DEFAULT now(), \
           txid bigint NOT NULL DEFAULT txid_current(), \
           PRIMARY KEY (entity, version)); \
         GRANT SELECT ON {s}.\"_udm_entity\" TO {r};"
    )
}

/// A tenant's role, schema, catalog and audit log (as the owner): batched (made whole), or per
/// change, without its keys when `audit_keys` is false (see `audit::tenant_tables_sql`).
fn create_objects_with(
    slug: &str,
    name: Option<&str>,
    role: &str,
    audit_keys: bool,
    batched: bool,
) -> Result<()> {
    let s = quote_ident(slug);
    let r = quote_ident(role);
    let label = match name {
        Some(n) => format!("udm tenant {slug} ({n})"),
        None => format!("udm tenant {slug}"),
    };
    // One statement: role, schema, the tenant's catalog and its audit log.
    run(&format!(
        "CREATE ROLE {r} NOLOGIN; GRANT {r} TO {admin}; GRANT {helpers} TO {r}; \
         CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO {r}; \
         {catalog} \
         {audit} \
         COMMENT ON SCHEMA {s} IS {label}",
        catalog = catalog_table_sql(slug, role),
        audit = if batched {
            crate::audit::batch::tables_sql(slug, role)
        } else {
            crate::audit::tenant_tables_sql(slug, role, audit_keys)
        },
        admin = quote_ident(ADMIN_ROLE_NAME),
        helpers = quote_ident(security::TENANT_ROLES),
        label = quote_literal(&label),
    ))
}

fn create_objects(slug: &str, name: Option<&str>, role: &str) -> Result<()> {
    let batched = crate::guc::AUDIT_BATCHES.get() && !crate::citus::installed();
    create_objects_with(slug, name, role, true, batched)
}

/// What a tenant being imported starts with: role, schema, catalog, and its audit log without
/// keys (they are built once its rows are in).
pub fn create_objects_for_import(
    slug: &str,
    name: Option<&str>,
    role: &str,
    batched: bool,
) -> Result<()> {
    create_objects_with(slug, name, role, false, batched)
}

/// The tenant's row in the registry (a new notification channel). `created` keeps when and by
/// whom an imported tenant was made.
pub fn register(
    slug: &str,
    name: Option<&str>,
    role: &str,
    created_at: Option<&str>,
    created_by: Option<&str>,
    access: bool,
) -> Result<()> {
    let by = created_by
        .map(str::to_string)
        .unwrap_or_else(security::actor);
    crate::spi::run(
        "INSERT INTO udm.tenant (slug, name, schema_name, role_name, created_at, created_by, channel, access) \
         VALUES ($1, $2, $1, $3, coalesce($4::timestamptz, now()), $5, \
                 'udm_' || $1 || '_' || substr(md5(gen_random_uuid()::text), 1, 16), $6)",
        &[
            slug.into(),
            name.into(),
            role.into(),
            created_at.into(),
            by.as_str().into(),
            access.into(),
        ],
    )
}

/// Lists a tenant schema the registry has lost again (a database restored from a dump without the
/// rows of `udm.tenant`): its role is the one the schema grants `USAGE` to, access control is on
/// when it has members, and it gets a new notification channel.
pub fn register_tenant(slug: &str) -> Result<serde_json::Value> {
    require_admin("register a tenant")?;
    validate_slug(SlugKind::Tenant, slug)?;
    if catalog::tenant(slug)?.is_some() {
        return Err(UdmError::new(
            SqlState::DuplicateSchema,
            format!("tenant \"{slug}\" is already registered"),
        ));
    }
    if !catalog::unregistered_schema(slug) {
        return Err(UdmError::new(
            SqlState::UndefinedObject,
            format!("schema \"{}\" does not hold a udm tenant", printable(slug)),
        )
        .hint("udm_register_tenant lists a tenant schema (with its catalog table _udm_entity) that the registry lost; udm_create_tenant makes a new one"));
    }
    let (role, access) = as_owner(|| {
        let role = crate::spi::select_one::<String>(
            "SELECT r.rolname::text FROM pg_catalog.pg_namespace n, \
               LATERAL pg_catalog.aclexplode(n.nspacl) a \
               JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
             WHERE n.nspname = $1 AND a.privilege_type = 'USAGE' AND a.grantee <> n.nspowner \
             ORDER BY (r.rolname LIKE 'tenant\\_%') DESC, r.rolname LIMIT 1",
            &[slug.into()],
        )?;
        let members = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.\"_udm_member\")",
            quote_ident(slug)
        );
        let has_members = crate::spi::select_one::<bool>(
            "SELECT to_regclass(format('%I._udm_member', $1::text)) IS NOT NULL",
            &[slug.into()],
        )?
        .unwrap_or(false)
            && crate::spi::select_one::<bool>(&members, &[])?.unwrap_or(false);
        Ok::<_, UdmError>((role, has_members))
    })?;
    let role = role.ok_or_else(|| {
        UdmError::new(
            SqlState::UndefinedObject,
            format!("schema \"{slug}\" grants USAGE to no role: its tenant role is missing"),
        )
        .hint("restore the roles first (pg_dumpall --roles-only), then the database")
    })?;
    as_owner(|| {
        crate::spi::run(
            "INSERT INTO udm.tenant (slug, name, schema_name, role_name, created_by, channel, access) \
             VALUES ($1, NULL, $1, $2, $3, 'udm_' || $1 || '_' || substr(md5(gen_random_uuid()::text), 1, 16), $4)",
            &[slug.into(), role.as_str().into(), security::actor().as_str().into(), access.into()],
        )?;
        run(&format!(
            "GRANT {} TO {}",
            quote_ident(security::TENANT_ROLES),
            quote_ident(&role)
        ))
    })?;
    catalog::invalidate_registry();
    Ok(json!({"slug": slug, "schema": slug, "role": role, "access": access, "registered": true}))
}

pub struct TenantRow {
    pub slug: String,
    pub name: Option<String>,
    pub schema: String,
    pub role: String,
    pub created_at: Option<pgrx::datum::TimestampWithTimeZone>,
}

/// Tenants the caller may use (all of them for admins).
pub fn tenants() -> Result<Vec<TenantRow>> {
    let rows = as_owner(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select("SELECT slug, name, schema_name, role_name, created_at FROM udm.tenant ORDER BY slug", None, &[])? {
                out.push(TenantRow {
                    slug: r.get::<String>(1)?.unwrap_or_default(),
                    name: r.get::<String>(2)?,
                    schema: r.get::<String>(3)?.unwrap_or_default(),
                    role: r.get::<String>(4)?.unwrap_or_default(),
                    created_at: r.get(5)?,
                });
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .map_err(spi_err)?;
    let me = caller();
    Ok(rows
        .into_iter()
        .filter(|t| security::role_oid(&t.role).is_some_and(|r| has_privs_of(me, r)))
        .collect())
}

pub fn drop_tenant(slug: &str, confirm: &str) -> Result<serde_json::Value> {
    require_admin("drop a tenant")?;
    if confirm != slug {
        return Err(UdmError::invalid(format!(
            "udm_drop_tenant: confirm must repeat the tenant slug \"{}\", got \"{}\"",
            printable(slug),
            printable(confirm)
        ))
        .hint(format!(
            "write {} to drop the tenant with all its data",
            udm_core::ident::sql_call("udm_drop_tenant", &[slug, slug])
        )));
    }
    let t = catalog::tenant(slug)?.ok_or_else(|| catalog::no_such_tenant(slug))?;
    let entities = catalog::entity_slugs(&t).unwrap_or_default();
    // Queue the invalidation while the catalog table still exists (it looks the table up).
    catalog::invalidate(&t);
    drop_objects(&t)?;
    catalog::invalidate_registry();
    Ok(json!({"dropped": slug, "schema": t.schema, "role": t.role, "entities": entities}))
}

fn drop_objects(t: &Tenant) -> Result<()> {
    as_owner(|| {
        crate::spi::connect_mut("SELECT FOR UPDATE", |c| {
            c.update(
                "SELECT 1 FROM udm.tenant WHERE slug = $1 FOR UPDATE",
                None,
                &[t.slug.as_str().into()],
            )
            .map(|_| ())
        })
        .map_err(spi_err)?;
        run(&format!("DROP SCHEMA {} CASCADE", quote_ident(&t.schema)))?;
        run(&format!("DROP ROLE {}", quote_ident(&t.role)))?;
        crate::spi::run(
            "DELETE FROM udm.user_tenant WHERE tenant = $1",
            &[t.slug.as_str().into()],
        )?;
        crate::spi::connect_mut("DELETE", |c| {
            c.update(
                "DELETE FROM udm.tenant WHERE slug = $1",
                None,
                &[t.slug.as_str().into()],
            )
            .map(|_| ())
        })
        .map_err(spi_err)
    })
}

/// Selects the tenant (and application user) for the session, or with `local` for the
/// transaction only, after checking the caller may use it.
pub fn use_tenant(slug: &str, user_id: Option<&str>, local: bool) -> Result<serde_json::Value> {
    let t = catalog::usable_tenant(slug)?;
    if let Some(u) = user_id {
        if u.is_empty() || u.chars().count() > 200 || u.chars().any(char::is_control) {
            return Err(
                UdmError::invalid(format!("user id \"{}\" is not valid", printable(u)))
                    .hint("a user id is 1 to 200 printable characters"),
            );
        }
    }
    let user_id = user_id
        .map(|u| crate::access::session_user_id(&t, u))
        .transpose()?;
    // a registered user is recorded by id: their email, for the caller
    let email = match user_id.as_deref() {
        Some(u) => crate::access::users::find(u)?
            .filter(|r| r.0.to_string() == u)
            .map(|r| r.1),
        None => None,
    };
    crate::guc::set("udm.tenant", Some(&t.slug), local);
    crate::guc::set("udm.user_id", Some(user_id.as_deref().unwrap_or("")), local);
    crate::guc::selection_succeeded();
    if t.access && user_id.is_none() {
        pgrx::notice!(
            "tenant \"{}\" controls access: with no member selected, udm functions and plain SQL see none of its records and change nothing (select one with {})",
            t.slug,
            udm_core::ident::sql_call("udm_use", &[&t.slug, "<email>"])
        );
    }
    Ok(
        json!({"tenant": t.slug, "name": t.name, "schema": t.schema, "role": t.role, "user_id": user_id,
               "email": email, "local": local, "access": t.access}),
    )
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
fn udm_create_tenant(slug: Option<&str>, name: default!(Option<&str>, "NULL")) -> JsonB {
    let slug = crate::error::required(slug, "slug");
    JsonB(create_tenant(slug, name).or_raise())
}

#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(volatile)]
fn udm_tenants() -> TableIterator<
    'static,
    (
        name!(slug, String),
        name!(name, Option<String>),
        name!(schema_name, String),
        name!(role_name, String),
        name!(created_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let rows = tenants().or_raise();
    TableIterator::new(
        rows.into_iter()
            .map(|t| (t.slug, t.name, t.schema, t.role, t.created_at)),
    )
}

#[pg_extern(volatile)]
fn udm_register_tenant(slug: &str) -> JsonB {
    JsonB(register_tenant(slug).or_raise())
}

#[pg_extern(volatile)]
fn udm_drop_tenant(slug: &str, confirm: &str) -> JsonB {
    JsonB(drop_tenant(slug, confirm).or_raise())
}

#[pg_extern(volatile)]
fn udm_use(
    tenant: Option<&str>,
    user_id: default!(Option<&str>, "NULL"),
    is_local: default!(Option<bool>, false),
) -> JsonB {
    // until this succeeds, the previous selection no longer counts
    let shown = |v: Option<&str>| v.map_or("NULL".to_string(), udm_core::ident::quote_literal);
    let call = match user_id {
        Some(_) => format!("udm_use({}, {})", shown(tenant), shown(user_id)),
        None => format!("udm_use({})", shown(tenant)),
    };
    // a failed selection for the transaction voids the selection until the transaction ends
    // (behind a pooler, the next transaction on the server connection is another client's);
    // where session selections are refused, every failure is the transaction's
    let strict = crate::guc::REQUIRE_LOCAL_SELECTION.get();
    crate::guc::selection_started(call, is_local == Some(true) || strict);
    let tenant = crate::error::required(tenant, "tenant");
    let is_local = crate::error::required(is_local, "is_local");
    if strict && !is_local {
        crate::error::raise(
            UdmError::new(
                SqlState::ObjectNotInPrerequisiteState,
                "udm_use: a selection for the session is refused here (udm.require_local_selection is on)",
            )
            .detail("behind a pooler in transaction mode, a session's selection would stay on the server connection for the next client")
            .hint(format!(
                "select for the transaction: BEGIN; SELECT udm_use({}, is_local => true); ...; COMMIT;",
                match user_id {
                    Some(u) => format!("{}, {}", shown(Some(tenant)), shown(Some(u))),
                    None => shown(Some(tenant)),
                }
            )),
        );
    }
    JsonB(use_tenant(tenant, user_id, is_local).or_raise())
}

/// The tenant selected by udm_use, if the caller may still use it.
#[pg_extern(stable)]
fn udm_current_tenant() -> Option<String> {
    crate::guc::tenant()
        .and_then(|s| catalog::usable_tenant(&s).ok())
        .map(|t| t.slug.clone())
}
