//! Access control by application users: global users, tenant members with roles (RBAC), and
//! relation tuples on records (ReBAC). The rules are pure (`udm_core::access`); this module
//! keeps the tables, caches each session's permissions and enforces them:
//!
//! * reads: entity tables of a tenant with members get row-level security. Their policy (see
//!   `udm_core::ddl::access_policy`) calls `udm.may_read_all`, `udm.may_read_scoped` and
//!   `udm.access_user` once per query, so plain `SELECT` and `udm_query` see the same rows;
//! * writes: the row trigger `udm.access_guard` refuses operations, fields and records the user
//!   may not write with 42501 naming the permission, for plain SQL and udm functions alike.
//!
//! Trust boundary: the application user is `udm.user_id` (set by `udm_use`), trusted from the
//! connecting role, like PostgREST's role switching. A user who is not a member of the tenant
//! gets no permissions. Superusers and `udm_admin` members act as the database administrator.

use crate::access::security::{as_owner, caller, is_admin, role_name};
use crate::access::users::{find as find_user, no_such_user, user_json, UserRow, USER_TABLE};
use crate::catalog::{self, Entity, Tenant};
use crate::error::{raise, spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use udm_core::access::{
    audit_readable, denied, effective, parse_object, parse_permissions, permissions_to_json,
    validate_role_name, AuditSubject, Level, Op, Perms, RoleDef, BUILTIN_ROLES,
};
use udm_core::ddl::TUPLE_TABLE;
use udm_core::ident::{printable, quote_ident, sql_call};

pub mod locks;
pub mod security;
pub mod users;

finfo_v1!(pg_finfo_udm_may_read_all);
finfo_v1!(pg_finfo_udm_may_read_scoped);
finfo_v1!(pg_finfo_udm_access_user);
finfo_v1!(pg_finfo_udm_access_guard);
finfo_v1!(pg_finfo_udm_id_in);
finfo_v1!(pg_finfo_udm_may_read_audit);
finfo_v1!(pg_finfo_udm_audit_visible);
finfo_v1!(pg_finfo_udm_link_guard);
finfo_v1!(pg_finfo_udm_tuple_objects);
finfo_v1!(pg_finfo_udm_visible_ids);

const ACCESS_GUARD: &str = "udm.access_guard";
const LINK_GUARD: &str = "udm.link_guard";

const MEMBER_TABLE: &str = "_udm_member";
const ROLE_TABLE: &str = "_udm_role";
/// The index of relation tuples by user: `(subject, object_entity)`.
const TUPLE_INDEX: &str = "_udm_tuple__subject__idx";

// ------------------------------------------------------------------ tables

/// The tenant's members, roles and relation tuples, made on first use.
fn ensure_tables(t: &Tenant) -> Result<()> {
    crate::access::users::ensure_table(t)?;
    if t.relation(MEMBER_TABLE).is_some()
        && t.relation(ROLE_TABLE).is_some()
        && t.relation(TUPLE_TABLE).is_some()
    {
        return Ok(());
    }
    crate::spi::create_on_first_use(&t.schema, "access tables", &tables_sql(&t.schema, &t.role))
}

/// The DDL of a tenant's members, roles and relation tuples (its users table first).
pub fn tables_sql(schema: &str, role: &str) -> String {
    let s = quote_ident(schema);
    let r = quote_ident(role);
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.\"{MEMBER_TABLE}\" (\
           user_id uuid PRIMARY KEY REFERENCES {s}.\"{USER_TABLE}\" (id) ON DELETE CASCADE, \
           role text NOT NULL, \
           added_by text NOT NULL, \
           added_at timestamp with time zone NOT NULL DEFAULT now()); \
         GRANT SELECT ON {s}.\"{MEMBER_TABLE}\" TO {r}; \
         CREATE TABLE IF NOT EXISTS {s}.\"{ROLE_TABLE}\" (\
           name text PRIMARY KEY, \
           parent text NOT NULL, \
           permissions jsonb NOT NULL, \
           defined_by text NOT NULL, \
           defined_at timestamp with time zone NOT NULL DEFAULT now()); \
         GRANT SELECT ON {s}.\"{ROLE_TABLE}\" TO {r}; \
         CREATE TABLE IF NOT EXISTS {s}.\"{TUPLE_TABLE}\" (\
           object_entity text NOT NULL, \
           object_id uuid NOT NULL, \
           subject uuid NOT NULL REFERENCES {s}.\"{USER_TABLE}\" (id) ON DELETE CASCADE, \
           relation text NOT NULL CHECK (relation IN ('viewer', 'editor', 'admin')), \
           granted_by text NOT NULL, \
           granted_at timestamp with time zone NOT NULL DEFAULT now(), \
           PRIMARY KEY (object_entity, object_id, subject)); \
         CREATE INDEX IF NOT EXISTS \"{TUPLE_INDEX}\" ON {s}.\"{TUPLE_TABLE}\" (subject, object_entity); \
         GRANT SELECT ON {s}.\"{TUPLE_TABLE}\" TO {r};"
    )
}

/// Switches access control on for the tenant: its entity tables get row-level security and the
/// access guard; from now on application users need to be members.
fn enable(t: &Tenant) -> Result<()> {
    if t.access {
        return Ok(());
    }
    ensure_tables(t)?;
    as_owner(|| {
        crate::spi::run(
            "UPDATE udm.tenant SET access = true WHERE slug = $1",
            &[t.slug.as_str().into()],
        )?;
        let model = crate::query::definitions(t)?;
        let ctx = udm_core::ddl::Ctx {
            schema: &t.schema,
            role: &t.role,
            access: true,
            model: Some(&*model),
            citus: crate::citus::installed(),
        };
        let mut sql = String::new();
        for e in catalog::active_entities(t)? {
            for s in udm_core::ddl::enable_access(&ctx, &e.def) {
                sql.push_str(&s);
                sql.push_str(";\n");
            }
        }
        if crate::audit::batch::is_batched(t) {
            sql.push_str(&crate::audit::batch::access_sql(&t.schema));
            sql.push_str(";\n");
        } else {
            for s in udm_core::ddl::audit_access_sql(&t.schema, crate::citus::installed()) {
                sql.push_str(&s);
                sql.push_str(";\n");
            }
        }
        crate::spi::run(&sql, &[])?;
        Ok(())
    })?;
    catalog::invalidate_registry();
    catalog::invalidate(t);
    Ok(())
}

// ------------------------------------------------------------------ members

pub fn member_role(t: &Tenant, user: pgrx::Uuid) -> Result<Option<String>> {
    if t.relation(MEMBER_TABLE).is_none() {
        return Ok(None);
    }
    as_owner(|| {
        crate::spi::select_one::<String>(
            &format!(
                "SELECT role FROM {} WHERE user_id = $1",
                t.catalog(MEMBER_TABLE)
            ),
            &[user.into()],
        )
    })
}

/// What `udm_use` records as the session's user: a registered user (by id or email) must be a
/// member of the tenant and is recorded by id (never by email: see `users`); an unregistered id
/// is only a label for attribution, and only in tenants without access control.
pub fn session_user_id(t: &Tenant, given: &str) -> Result<String> {
    match find_user(given)? {
        Some(u) => {
            if member_role(t, u.0)?.is_none() {
                return Err(UdmError::new(
                    SqlState::InsufficientPrivilege,
                    format!("user \"{}\" is not a member of tenant \"{}\"", u.1, t.slug),
                )
                .hint(format!(
                    "a tenant admin can add it with {}",
                    sql_call("udm_add_member", &[&t.slug, &u.1, "viewer"])
                )));
            }
            Ok(u.0.to_string())
        }
        None if t.access => Err(UdmError::new(
            SqlState::InsufficientPrivilege,
            format!(
                "user \"{}\" is not a member of tenant \"{}\" (no such user)",
                printable(given),
                t.slug
            ),
        )
        .hint("tenants with members accept only their members; udm_create_user and udm_add_member make one")),
        None => Ok(given.to_string()),
    }
}

// ------------------------------------------------------------------ the session's permissions

/// What the session may do in one tenant.
pub struct AccessCtx {
    pub enabled: bool,
    /// Superuser or udm admin: everything.
    pub db_admin: bool,
    pub user: Option<pgrx::Uuid>,
    pub email: Option<String>,
    pub role: Option<String>,
    pub perms: Perms,
}

impl AccessCtx {
    pub fn label(&self) -> String {
        self.email
            .clone()
            .or_else(crate::guc::user_id)
            .unwrap_or_else(|| role_name(caller()))
    }

    /// Sees every record of the entity (no relation tuples needed).
    fn sees_all(&self, e: &Entity) -> bool {
        !self.enabled
            || self.db_admin
            || (self.perms.allows(&e.def.slug, Op::Read)
                && (e.def.access.is_none() || self.perms.manages()))
    }

    /// Bypasses record levels: nothing to check, or a tenant admin.
    fn over_records(&self) -> bool {
        !self.enabled || self.db_admin || self.perms.manages()
    }
}

type CtxKey = (String, Option<String>, pg_sys::Oid);

thread_local! {
    static CONTEXTS: crate::cache::Cache<CtxKey, Rc<AccessCtx>> = crate::cache::Lru::new("access contexts");
}

fn roles_of(t: &Tenant) -> Result<HashMap<String, RoleDef>> {
    let mut out = HashMap::new();
    if t.relation(ROLE_TABLE).is_none() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT name, parent, permissions FROM {}",
        t.catalog(ROLE_TABLE)
    );
    let rows = as_owner(|| {
        Spi::connect(|c| {
            let mut v = Vec::new();
            for r in c.select(&sql, None, &[])? {
                v.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?,
                    r.get::<JsonB>(3)?.map(|j| j.0).unwrap_or(Value::Null),
                ));
            }
            Ok::<_, pgrx::spi::Error>(v)
        })
        .map_err(spi_err)
    })?;
    for (name, parent, perms) in rows {
        out.insert(
            name.clone(),
            RoleDef {
                name,
                parent,
                permissions: parse_permissions(&perms)?,
            },
        );
    }
    Ok(out)
}

fn role_perms(t: &Tenant, role: &str) -> Result<Perms> {
    let roles = roles_of(t)?;
    effective(role, &|n| roles.get(n).cloned())
}

/// The session's permissions in `t`, cached until a definition, member or role changes.
pub fn context(t: &Tenant) -> Result<Rc<AccessCtx>> {
    let g = catalog::generation();
    let uid = crate::guc::user_id();
    let key = (t.slug.clone(), uid.clone(), caller());
    crate::cache::sync(&CONTEXTS, g);
    if let Some(c) = crate::cache::get(&CONTEXTS, &key) {
        return Ok(c);
    }
    let mut ctx = AccessCtx {
        enabled: t.access,
        db_admin: is_admin(caller()),
        user: None,
        email: None,
        role: None,
        perms: Perms::default(),
    };
    if t.access {
        if let Some(u) = uid.as_deref().map(find_user).transpose()?.flatten() {
            if let Some(role) = member_role(t, u.0)? {
                ctx.perms = role_perms(t, &role)?;
                ctx.role = Some(role);
                ctx.user = Some(u.0);
                ctx.email = Some(u.1);
            }
        }
    }
    let ctx = Rc::new(ctx);
    let bytes = 256
        + key.0.len()
        + key.1.as_ref().map_or(0, |u| u.len())
        + ctx.role.as_ref().map_or(0, |r| r.len())
        + ctx.perms.entities.len() * 256;
    crate::cache::put_scoped(&CONTEXTS, t.scope(), key, ctx.clone(), bytes);
    Ok(ctx)
}

/// Definition changes (entities, fields, rules, scopes, templates) need `manage` once the tenant
/// controls access: otherwise a viewer could switch an entity's access scope off. Database-level
/// udm admins always may.
pub fn require_manage(t: &Tenant, what: &str) -> Result<()> {
    if !t.access {
        return Ok(());
    }
    let ctx = context(t)?;
    if ctx.db_admin || ctx.perms.manages() {
        return Ok(());
    }
    Err(denied(&ctx.label(), ctx.role.as_deref(), "manage", what))
}

/// A definition change that names a field needs the caller's role to read and write it: a
/// manager kept from a field may not rename, change, remove, restore, purge or index it, nor
/// write rules over it (each would reveal or move what the role hides).
pub fn require_field_access(t: &Tenant, entity: &str, field: &str, what: &str) -> Result<()> {
    if !t.access {
        return Ok(());
    }
    let ctx = context(t)?;
    if ctx.db_admin {
        return Ok(());
    }
    for (write, name) in [(false, "read"), (true, "write")] {
        if ctx.perms.field_denied(entity, field, write) {
            return Err(denied(
                &ctx.label(),
                ctx.role.as_deref(),
                &format!("{entity}.{field}.{name}"),
                what,
            ));
        }
    }
    Ok(())
}

/// Roles' permissions follow a renamed field (they name fields; the field is the same).
pub fn rename_field_in_roles(t: &Tenant, entity: &str, old: &str, new: &str) -> Result<()> {
    if t.relation(ROLE_TABLE).is_none() {
        return Ok(());
    }
    let from = vec![
        "entities".to_string(),
        entity.to_string(),
        "fields".to_string(),
        old.to_string(),
    ];
    let to = vec![
        "entities".to_string(),
        entity.to_string(),
        "fields".to_string(),
        new.to_string(),
    ];
    as_owner(|| {
        crate::spi::run(
            &format!(
                "UPDATE {} SET permissions = jsonb_set(permissions #- $1, $2, permissions #> $1) \
                 WHERE permissions #> $1 IS NOT NULL",
                t.catalog(ROLE_TABLE)
            ),
            &[from.into(), to.into()],
        )
    })
}

/// How many members other than `except` have a role that manages the tenant.
fn managers_left(t: &Tenant, except: pgrx::Uuid) -> Result<i64> {
    let roles: Vec<(String, i64)> = as_owner(|| {
        Spi::connect(|c| {
            let mut v = Vec::new();
            for r in c.select(
                &format!(
                    "SELECT role, count(*) FROM {} WHERE user_id <> $1 GROUP BY role",
                    t.catalog(MEMBER_TABLE)
                ),
                None,
                &[except.into()],
            )? {
                v.push((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<i64>(2)?.unwrap_or(0),
                ));
            }
            Ok::<_, pgrx::spi::Error>(v)
        })
        .map_err(spi_err)
    })?;
    let mut n = 0;
    for (role, count) in roles {
        if role_perms(t, &role).is_ok_and(|p| p.manages()) {
            n += count;
        }
    }
    Ok(n)
}

fn last_manager(t: &Tenant, user: &str, outcome: &str) -> UdmError {
    UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!(
            "cannot {outcome} \"{user}\": it is the last admin of tenant \"{}\" (no other member's role manages it)",
            t.slug
        ),
    )
    .hint("give another member a role that manages the tenant (admin) first")
}

/// (entity, field) pairs the session's role may not read.
pub fn hidden_fields(t: &Tenant) -> Result<std::collections::HashSet<(String, String)>> {
    let mut out = std::collections::HashSet::new();
    if !t.access {
        return Ok(out);
    }
    let ctx = context(t)?;
    if ctx.db_admin || ctx.perms.entities.values().all(|e| e.fields.is_empty()) {
        return Ok(out);
    }
    // the cached model with every field (not the catalog each time)
    for e in crate::query::definitions(t)?.entities.values() {
        for f in &e.def.fields {
            if ctx.perms.field_denied(&e.def.slug, &f.name, false) {
                out.insert((e.def.slug.clone(), f.name.clone()));
            }
        }
    }
    Ok(out)
}

/// The ids of the fields of `e` (active and removed: older audit images hold removed ones) the
/// session's role may not read; empty for database admins and roles that keep no field.
pub fn hidden_field_ids(t: &Tenant, e: &Entity) -> Result<std::collections::HashSet<u32>> {
    let mut out = std::collections::HashSet::new();
    if !t.access {
        return Ok(out);
    }
    let ctx = context(t)?;
    if ctx.db_admin {
        return Ok(out);
    }
    for f in e.def.fields.iter().chain(&e.def.removed_fields) {
        if ctx.perms.field_denied(&e.def.slug, &f.name, false) {
            out.insert(f.id);
        }
    }
    Ok(out)
}

/// Whether the session's role keeps any field of the tenant from being read.
pub fn hides_fields(t: &Tenant) -> Result<bool> {
    if !t.access {
        return Ok(false);
    }
    let ctx = context(t)?;
    Ok(!ctx.db_admin
        && ctx
            .perms
            .entities
            .values()
            .any(|e| e.fields.values().any(|(r, _)| *r == Some(false))))
}

/// A record (jsonb) without the fields the session's role may not read.
pub fn strip_hidden(
    t: &Tenant,
    entity: &str,
    d: Option<pg_sys::Datum>,
) -> Result<Option<pg_sys::Datum>> {
    let Some(d) = d else {
        return Ok(None);
    };
    let hidden = hidden_fields(t)?;
    if !hidden.iter().any(|(e, _)| e == entity) {
        return Ok(Some(d));
    }
    let mut v = crate::query::rawspi::jsonb_value(d);
    if let Some(o) = v.as_object_mut() {
        for (_, f) in hidden.iter().filter(|(e, _)| e == entity) {
            o.remove(f);
        }
    }
    Ok(JsonB(v).into_datum())
}

// ------------------------------------------------------------------ record levels (ReBAC)

/// Answers found in the current command (the backend's local transaction and command id):
/// relation tuples and records may change with the next command, not within one.
struct PerCommand<K, V> {
    at: (u32, u32),
    found: HashMap<K, V>,
}

impl<K: std::hash::Hash + Eq, V: Copy> PerCommand<K, V> {
    fn new() -> Self {
        PerCommand {
            at: (0, 0),
            found: HashMap::new(),
        }
    }

    /// The answer for `key`, from this command's earlier calls or `find`.
    fn get_or(
        cache: &'static std::thread::LocalKey<RefCell<Self>>,
        key: K,
        find: impl FnOnce() -> Result<V>,
    ) -> Result<V> {
        let at = crate::guc::current_command();
        let hit = cache.with(|c| {
            let mut c = c.borrow_mut();
            if c.at != at {
                c.at = at;
                c.found.clear();
            }
            c.found.get(&key).copied()
        });
        if let Some(v) = hit {
            return Ok(v);
        }
        // `find` may run SQL that calls back into this cache: no borrow is held meanwhile
        let v = find()?;
        cache.with(|c| c.borrow_mut().found.insert(key, v));
        Ok(v)
    }
}

thread_local! {
    /// Levels by (user, entity, record).
    static LEVELS: RefCell<PerCommand<(pgrx::Uuid, String, pgrx::Uuid), Option<Level>>> =
        RefCell::new(PerCommand::new());
    /// Whether the session sees a record, by (entity, record), for the audit log's policy.
    static SEEN: RefCell<PerCommand<(String, [u8; 16]), bool>> = RefCell::new(PerCommand::new());
}

/// The user's level on a record: its own tuple, ownership (admin), or its scope parent's level
/// (levels flow down relations), the highest of them.
pub fn level_of(
    t: &Tenant,
    user: pgrx::Uuid,
    entity: &str,
    id: pgrx::Uuid,
) -> Result<Option<Level>> {
    PerCommand::get_or(&LEVELS, (user, entity.to_string(), id), || {
        level_uncached(t, user, entity, id, 0)
    })
}

fn level_uncached(
    t: &Tenant,
    user: pgrx::Uuid,
    entity: &str,
    id: pgrx::Uuid,
    depth: usize,
) -> Result<Option<Level>> {
    let e = catalog::entity(t, entity)?;
    let Some(a) = &e.def.access else {
        return Ok(None);
    };
    let mut best: Option<Level> = None;
    if a.parent.is_none() && t.relation(TUPLE_TABLE).is_some() {
        let rel = as_owner(|| {
            crate::spi::select_one::<String>(
                &format!(
                    "SELECT relation FROM {} WHERE object_entity = $1 AND object_id = $2 AND subject = $3",
                    t.catalog(TUPLE_TABLE)
                ),
                &[entity.into(), id.into(), user.into()],
            )
        })?;
        best = rel.map(|r| Level::parse(&r)).transpose()?;
    }
    let col = |name: &str| e.def.field(name).map(|f| f.column.clone());
    if let Some(owner) = a.owner.as_deref().and_then(col) {
        let owns = as_owner(|| {
            crate::spi::select_one::<bool>(
                &format!(
                    "SELECT {} = $2 FROM {} WHERE id = $1",
                    quote_ident(&owner),
                    t.catalog(&e.def.slug)
                ),
                &[id.into(), user.into()],
            )
        })?;
        if owns == Some(true) {
            return Ok(Some(Level::Admin));
        }
    }
    if let Some(f) = a.parent.as_deref().and_then(|p| e.def.field(p)) {
        if depth < 8 {
            let parent = as_owner(|| {
                crate::spi::select_one::<pgrx::Uuid>(
                    &format!(
                        "SELECT {} FROM {} WHERE id = $1",
                        quote_ident(&f.column),
                        t.catalog(&e.def.slug)
                    ),
                    &[id.into()],
                )
            })?;
            if let (Some(p), Some(target)) = (parent, f.target.as_deref()) {
                let up = level_uncached(t, user, target, p, depth + 1)?;
                best = best.max(up);
            }
        }
    }
    Ok(best)
}

/// The session user's level on a record, treating tenant and database admins as admin.
fn my_level(t: &Tenant, ctx: &AccessCtx, entity: &str, id: pgrx::Uuid) -> Result<Option<Level>> {
    if ctx.over_records() {
        return Ok(Some(Level::Admin));
    }
    match ctx.user {
        Some(u) => level_of(t, u, entity, id),
        None => Ok(None),
    }
}

/// Lock acquire, heartbeat and release need `editor` on the scope record (viewers cannot lock).
pub fn require_lock_level(t: &Tenant, entity: &str, id: pgrx::Uuid, verb: &str) -> Result<()> {
    let ctx = context(t)?;
    if ctx.over_records() {
        return Ok(());
    }
    let e = catalog::entity(t, entity)?;
    let ok = if e.def.access.is_some() {
        my_level(t, &ctx, entity, id)?.is_some_and(|l| l >= Level::Editor)
    } else {
        ctx.perms.allows(entity, Op::Update)
    };
    if ok {
        return Ok(());
    }
    Err(denied(
        &ctx.label(),
        ctx.role.as_deref(),
        &format!("{entity}.editor"),
        &format!(
            "{verb} the write lock of {entity} {id} (editors and admins may; viewers may not)"
        ),
    ))
}

// ------------------------------------------------------------------ members and roles

/// Who may manage access in `t`: a udm admin, a member whose role manages; before the tenant has
/// members, any member of its database role (it can already do everything).
fn require_manager(t: &Tenant, what: &str) -> Result<Rc<AccessCtx>> {
    catalog::require_member(t)?;
    let ctx = context(t)?;
    if !ctx.enabled || ctx.db_admin || ctx.perms.manages() {
        return Ok(ctx);
    }
    Err(denied(&ctx.label(), ctx.role.as_deref(), "manage", what))
}

fn tenant_entities(t: &Tenant) -> Result<Vec<(String, Vec<String>)>> {
    Ok(catalog::active_entities(t)?
        .iter()
        .map(|e| {
            (
                e.def.slug.clone(),
                e.def.fields.iter().map(|f| f.name.clone()).collect(),
            )
        })
        .collect())
}

/// Nobody hands out more than they have: `perms` must be within the manager's own.
fn within_own(t: &Tenant, ctx: &AccessCtx, perms: &Perms, what: &str) -> Result<()> {
    if !ctx.enabled || ctx.db_admin {
        return Ok(());
    }
    if let Some(p) = perms.exceeds(&ctx.perms, &tenant_entities(t)?) {
        return Err(UdmError::new(
            SqlState::InsufficientPrivilege,
            format!(
                "permission denied: {what} would allow {p}, which user \"{}\" (role \"{}\") does not have",
                ctx.label(),
                ctx.role.as_deref().unwrap_or("none")
            ),
        )
        .hint("nobody can grant more than their own permissions"));
    }
    Ok(())
}

fn audit_access(
    t: &Tenant,
    entity: &str,
    id: pgrx::Uuid,
    action: &'static str,
    data: Value,
) -> Result<()> {
    crate::audit::record_event(t, entity, 0, *id.as_bytes(), action, &data)
}

pub fn add_member(tenant: &str, user: &str, role: &str) -> Result<Value> {
    let t = catalog::tenant(tenant)?.ok_or_else(|| catalog::no_such_tenant(tenant))?;
    let ctx = require_manager(&t, "add members")?;
    let u = find_user(user)?.ok_or_else(|| no_such_user(user))?;
    ensure_tables(&t)?;
    let perms = role_perms(&t, role)?;
    within_own(&t, &ctx, &perms, &format!("role \"{role}\""))?;
    crate::access::users::know(&t, &u)?;
    if !perms.manages() {
        if let Some(current) = member_role(&t, u.0)? {
            let was_manager = role_perms(&t, &current).is_ok_and(|p| p.manages());
            if was_manager && managers_left(&t, u.0)? == 0 {
                return Err(last_manager(&t, &u.1, &format!("give role \"{role}\" to")));
            }
        }
    }
    let actor = crate::access::security::actor();
    as_owner(|| {
        crate::spi::run(
            &format!(
                "INSERT INTO {} (user_id, role, added_by) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET role = excluded.role, added_by = excluded.added_by, added_at = excluded.added_at",
                t.catalog(MEMBER_TABLE)
            ),
            &[u.0.into(), role.into(), actor.as_str().into()],
        )
    })?;
    enable(&t)?;
    catalog::invalidate(&t);
    let t = catalog::tenant(tenant)?.ok_or_else(|| catalog::no_such_tenant(tenant))?;
    audit_access(
        &t,
        udm_core::access::MEMBER_EVENTS,
        u.0,
        "MEMBER_ADD",
        json!({"user": u.0.to_string(), "role": role}),
    )?;
    Ok(json!({"tenant": t.slug, "user": user_json(&u), "role": role, "access": true}))
}

/// Takes a user out of a tenant (the user is being deleted or erased): membership and relation
/// tuples go, audited; refused while they are its last admin. Returns whether they were a member.
pub fn forget_member(t: &Tenant, u: &UserRow, erase: bool) -> Result<bool> {
    let Some(role) = member_role(t, u.0)? else {
        return Ok(false);
    };
    let was_manager = role_perms(t, &role).is_ok_and(|p| p.manages());
    if was_manager && managers_left(t, u.0)? == 0 {
        return Err(last_manager(
            t,
            &u.1,
            if erase { "erase" } else { "delete" },
        ));
    }
    as_owner(|| {
        crate::spi::run(
            &format!("DELETE FROM {} WHERE subject = $1", t.catalog(TUPLE_TABLE)),
            &[u.0.into()],
        )?;
        crate::spi::run(
            &format!("DELETE FROM {} WHERE user_id = $1", t.catalog(MEMBER_TABLE)),
            &[u.0.into()],
        )
    })?;
    catalog::invalidate(t);
    audit_access(
        t,
        udm_core::access::MEMBER_EVENTS,
        u.0,
        "MEMBER_REMOVE",
        json!({"user": u.0.to_string(), "role": role, "because": if erase { "user erased" } else { "user deleted" }}),
    )?;
    Ok(true)
}

pub fn remove_member(tenant: &str, user: &str) -> Result<Value> {
    let t = catalog::tenant(tenant)?.ok_or_else(|| catalog::no_such_tenant(tenant))?;
    let ctx = require_manager(&t, "remove members")?;
    let u = find_user(user)?.ok_or_else(|| no_such_user(user))?;
    let Some(role) = member_role(&t, u.0)? else {
        return Err(UdmError::new(
            SqlState::UndefinedObject,
            format!("user \"{}\" is not a member of tenant \"{}\"", u.1, t.slug),
        ));
    };
    within_own(
        &t,
        &ctx,
        &role_perms(&t, &role)?,
        &format!("removing a member with role \"{role}\""),
    )?;
    let was_manager = role_perms(&t, &role).is_ok_and(|p| p.manages());
    if was_manager && managers_left(&t, u.0)? == 0 {
        return Err(last_manager(&t, &u.1, "remove"));
    }
    as_owner(|| {
        crate::spi::run(
            &format!("DELETE FROM {} WHERE user_id = $1", t.catalog(MEMBER_TABLE)),
            &[u.0.into()],
        )?;
        crate::spi::run(
            &format!("DELETE FROM {} WHERE subject = $1", t.catalog(TUPLE_TABLE)),
            &[u.0.into()],
        )
    })?;
    catalog::invalidate(&t);
    audit_access(
        &t,
        udm_core::access::MEMBER_EVENTS,
        u.0,
        "MEMBER_REMOVE",
        json!({"user": u.0.to_string(), "role": role}),
    )?;
    Ok(json!({"tenant": t.slug, "user": user_json(&u), "removed": true}))
}

pub fn define_role(name: &str, parent: Option<&str>, permissions: &Value) -> Result<Value> {
    crate::limits::check_spec(permissions, "udm_define_role permissions")?;
    let t = catalog::current_tenant()?;
    let ctx = require_manager(&t, "define roles")?;
    validate_role_name(name)?;
    let parent = parent.unwrap_or("viewer");
    let own = parse_permissions(permissions)?;
    let ents = tenant_entities(&t)?;
    for (e, ep) in &own.entities {
        if e == udm_core::access::ALL_ENTITIES {
            continue;
        }
        let Some((_, fields)) = ents.iter().find(|(n, _)| n == e) else {
            return Err(catalog::no_such_entity(&t, e).context(format!("role \"{name}\"")));
        };
        for f in ep.fields.keys() {
            if !fields.contains(f) {
                return Err(UdmError::new(
                    SqlState::UndefinedColumn,
                    format!("role \"{name}\": entity \"{e}\" has no field \"{f}\""),
                )
                .hint(format!(
                    "fields of \"{e}\" are {}",
                    udm_core::error::name_list(fields)
                )));
            }
        }
    }
    ensure_tables(&t)?;
    let mut roles = roles_of(&t)?;
    roles.insert(
        name.to_string(),
        RoleDef {
            name: name.to_string(),
            parent: Some(parent.to_string()),
            permissions: own.clone(),
        },
    );
    let perms = effective(name, &|n| roles.get(n).cloned())?;
    within_own(&t, &ctx, &perms, &format!("role \"{name}\""))?;
    let actor = crate::access::security::actor();
    as_owner(|| {
        crate::spi::run(
            &format!(
                "INSERT INTO {} (name, parent, permissions, defined_by) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET parent = excluded.parent, permissions = excluded.permissions, \
                   defined_by = excluded.defined_by, defined_at = excluded.defined_at",
                t.catalog(ROLE_TABLE)
            ),
            &[name.into(), parent.into(), JsonB(permissions_to_json(&own)).into(), actor.as_str().into()],
        )
    })?;
    catalog::invalidate(&t);
    Ok(
        json!({"role": name, "parent": parent, "permissions": permissions_to_json(&own),
              "effective": permissions_to_json(&perms)}),
    )
}

pub struct RoleRow {
    pub name: String,
    pub parent: Option<String>,
    pub permissions: Value,
    pub builtin: bool,
}

pub fn roles() -> Result<Vec<RoleRow>> {
    let t = catalog::current_tenant()?;
    let mut out: Vec<RoleRow> = BUILTIN_ROLES
        .iter()
        .map(|r| RoleRow {
            name: r.to_string(),
            parent: udm_core::access::builtin_parent(r).map(str::to_string),
            permissions: permissions_to_json(&udm_core::access::builtin(r).expect("built in")),
            builtin: true,
        })
        .collect();
    let mut custom: Vec<RoleDef> = roles_of(&t)?.into_values().collect();
    custom.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(custom.into_iter().map(|r| RoleRow {
        name: r.name,
        parent: r.parent,
        permissions: permissions_to_json(&r.permissions),
        builtin: false,
    }));
    Ok(out)
}

// ------------------------------------------------------------------ relation tuples

/// Resolves `entity:id` to a record of an entity with an access scope.
/// `grantable`: the record must be a scope record (relations are granted there, records inside
/// a scope inherit them).
fn object_of(t: &Tenant, object: &str, grantable: bool) -> Result<(Rc<Entity>, pgrx::Uuid)> {
    let (entity, id) = parse_object(object)?;
    let e = catalog::entity(t, &entity)?;
    if let Some(p) = e
        .def
        .access
        .as_ref()
        .and_then(|a| a.parent.as_deref())
        .filter(|_| grantable)
    {
        let target = e
            .def
            .field(p)
            .and_then(|f| f.target.clone())
            .unwrap_or_default();
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("records of \"{entity}\" inherit their relations from \"{target}\" (through \"{p}\")"),
        )
        .hint(format!("grant on the {target} instead: '{target}:<id>'")));
    }
    if e.def.access.is_none() {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("entity \"{entity}\" has no access scope: its records take no relations"),
        )
        .hint(format!(
            "declare one with {}",
            sql_call("udm_set_access", &[&entity, "{\"scope\": \"self\"}"])
        )));
    }
    let id = pgrx::Uuid::from_bytes(
        *uuid::Uuid::parse_str(&id)
            .map_err(|e| UdmError::invalid(e.to_string()))?
            .as_bytes(),
    );
    let exists = as_owner(|| {
        crate::spi::select_one::<bool>(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE id = $1)",
                t.catalog(&entity)
            ),
            &[id.into()],
        )
    })?;
    if exists != Some(true) {
        return Err(UdmError::new(
            SqlState::NoDataFound,
            format!("entity \"{entity}\" has no record {id}"),
        ));
    }
    Ok((e, id))
}

/// Granting or revoking needs `admin` on the record, and cannot hand out more than one's own
/// level.
fn require_granter(
    t: &Tenant,
    ctx: &AccessCtx,
    e: &Entity,
    id: pgrx::Uuid,
    level: Level,
    verb: &str,
) -> Result<()> {
    let mine = my_level(t, ctx, &e.def.slug, id)?;
    let obj = format!("{} {id}", e.def.slug);
    match mine {
        Some(Level::Admin) => Ok(()),
        _ => Err(denied(
            &ctx.label(),
            ctx.role.as_deref(),
            &format!("{}.admin", e.def.slug),
            &format!(
                "{verb} relations on {obj} (it needs admin on it, and has {})",
                mine.map_or("none", Level::name)
            ),
        )),
    }
    .and_then(|_| {
        if mine.is_some_and(|m| level > m) {
            return Err(UdmError::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "cannot grant {} on {obj}: it is higher than your own level",
                    level.name()
                ),
            ));
        }
        Ok(())
    })
}

/// Audits a grant or revoke and says what changed.
/// (The audit names the user by id, as everything udm records: see `users`.)
fn relation_changed(
    t: &Tenant,
    e: &Entity,
    id: pgrx::Uuid,
    u: &UserRow,
    level: Level,
    action: &'static str,
    done: &str,
) -> Result<Value> {
    audit_access(
        t,
        &udm_core::access::access_events(&e.def.slug),
        id,
        action,
        json!({"user": u.0.to_string(), "relation": level.name()}),
    )?;
    let mut out = json!({"subject": u.1, "relation": level.name(),
                         "object": {"entity": e.def.slug, "id": id.to_string()}});
    out[done] = json!(true);
    Ok(out)
}

pub fn grant(subject: &str, relation: &str, object: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    let level = Level::parse(relation)?;
    let ctx = context(&t)?;
    let (e, id) = object_of(&t, object, true)?;
    require_granter(&t, &ctx, &e, id, level, "grant")?;
    let u = find_user(subject)?.ok_or_else(|| no_such_user(subject))?;
    if member_role(&t, u.0)?.is_none() {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("user \"{}\" is not a member of tenant \"{}\"", u.1, t.slug),
        )
        .hint(format!(
            "add it first with {}",
            sql_call("udm_add_member", &[&t.slug, &u.1, "viewer"])
        )));
    }
    ensure_tables(&t)?;
    let actor = crate::access::security::actor();
    as_owner(|| {
        crate::spi::run(
            &format!(
                "INSERT INTO {} (object_entity, object_id, subject, relation, granted_by) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (object_entity, object_id, subject) DO UPDATE SET relation = excluded.relation, \
                   granted_by = excluded.granted_by, granted_at = excluded.granted_at",
                t.catalog(TUPLE_TABLE)
            ),
            &[e.def.slug.as_str().into(), id.into(), u.0.into(), level.name().into(), actor.as_str().into()],
        )
    })?;
    relation_changed(&t, &e, id, &u, level, "GRANT", "granted")
}

pub fn revoke(subject: &str, relation: &str, object: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    let level = Level::parse(relation)?;
    let ctx = context(&t)?;
    let (e, id) = object_of(&t, object, true)?;
    require_granter(&t, &ctx, &e, id, level, "revoke")?;
    let u = find_user(subject)?.ok_or_else(|| no_such_user(subject))?;
    let table = t.catalog(TUPLE_TABLE);
    let args = || -> Vec<pgrx::datum::DatumWithOid> {
        vec![
            e.def.slug.as_str().into(),
            id.into(),
            u.0.into(),
            level.name().into(),
        ]
    };
    let cond = "object_entity = $1 AND object_id = $2 AND subject = $3 AND relation = $4";
    let gone = as_owner(|| {
        let found = crate::spi::select_one::<bool>(
            &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {cond})"),
            &args(),
        )?;
        if found == Some(true) {
            crate::spi::run(&format!("DELETE FROM {table} WHERE {cond}"), &args())?;
        }
        Ok::<_, UdmError>(i64::from(found == Some(true)))
    })?;
    if gone == 0 {
        return Err(UdmError::new(
            SqlState::UndefinedObject,
            format!(
                "user \"{}\" has no {} relation on {} {id}",
                u.1,
                level.name(),
                e.def.slug
            ),
        )
        .hint("udm_check tells which level a user has"));
    }
    relation_changed(&t, &e, id, &u, level, "REVOKE", "revoked")
}

pub fn check(subject: &str, relation: &str, object: &str) -> Result<bool> {
    let t = catalog::current_tenant()?;
    let level = Level::parse(relation)?;
    let (e, id) = object_of(&t, object, false)?;
    let Some(u) = find_user(subject)? else {
        return Ok(false);
    };
    let Some(role) = member_role(&t, u.0)? else {
        return Ok(false);
    };
    if role_perms(&t, &role)?.manages() {
        return Ok(true);
    }
    Ok(level_of(&t, u.0, &e.def.slug, id)?.is_some_and(|l| l >= level))
}

// ------------------------------------------------------------------ row-level security helpers

unsafe fn text_arg(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> String {
    unsafe { pg_getarg::<String>(fcinfo, i).unwrap_or_default() }
}

fn read_flags(schema: &str, entity: &str) -> Result<(bool, bool)> {
    crate::citus::nested(|| {
        let t = member_tenant(schema)?;
        let ctx = context(&t)?;
        let e = catalog::entity_for_policy(&t, entity)?
            .ok_or_else(|| catalog::no_such_entity(&t, entity))?;
        // relations open records of the entity to members whose role may read the entity at all
        let scoped = ctx.user.is_some() && ctx.perms.allows(&e.def.slug, Op::Read);
        Ok((ctx.sees_all(&e), scoped))
    })
}

/// The answer of an array-valued policy helper (`udm.tuple_objects`, `udm.visible_ids`) for
/// the current command and its arguments (schema, entity), kept with the call (`fn_extra`):
/// found on its first row, the same datum for every later row of the command. On a single node
/// the policy calls them once per query (an InitPlan); on Citus (no sub-selects in policies) once
/// per row, and `udm.id_in` then finds its set made already for this datum.
unsafe fn per_command_ids(
    fcinfo: pg_sys::FunctionCallInfo,
    find: impl FnOnce(&str, &str) -> Result<Vec<pgrx::Uuid>>,
) -> pg_sys::Datum {
    struct Kept {
        at: (u32, u32),
        args: (String, String),
        datum: pg_sys::Datum,
    }
    unsafe extern "C-unwind" fn free_kept(p: *mut std::os::raw::c_void) {
        drop(unsafe { Box::from_raw(p as *mut Kept) });
    }
    unsafe {
        let at = crate::guc::current_command();
        let args = (text_arg(fcinfo, 0), text_arg(fcinfo, 1));
        let flinfo = (*fcinfo).flinfo;
        let mut kept = (*flinfo).fn_extra as *mut Kept;
        if !kept.is_null() && (*kept).at == at && (*kept).args == args {
            return (*kept).datum;
        }
        let ids = find(&args.0, &args.1).or_raise();
        let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
        let datum = ids.into_datum().expect("an array is never NULL");
        pg_sys::MemoryContextSwitchTo(old);
        if kept.is_null() {
            kept = Box::into_raw(Box::new(Kept { at, args, datum }));
            // what is kept goes when the query's memory does
            let cb = pg_sys::MemoryContextAllocZero(
                (*flinfo).fn_mcxt,
                std::mem::size_of::<pg_sys::MemoryContextCallback>(),
            ) as *mut pg_sys::MemoryContextCallback;
            (*cb).func = Some(free_kept);
            (*cb).arg = kept as *mut std::os::raw::c_void;
            pg_sys::MemoryContextRegisterResetCallback((*flinfo).fn_mcxt, cb);
            (*flinfo).fn_extra = kept as *mut std::os::raw::c_void;
        } else {
            // the previous answer stays allocated until the query ends: a new one never takes its
            // address, which `udm.id_in` takes for the same list
            *kept = Kept { at, args, datum };
        }
        datum
    }
}

/// The records of `entity` the session sees, as the entity's own policy decides (its table read
/// as the session): what a record inside the entity's scope, or a link to it, is tested against
/// by the policies on Citus (`udm.visible_ids`).
fn visible_ids(t: &Tenant, entity: &str) -> Result<Vec<pgrx::Uuid>> {
    let e =
        catalog::entity_for_policy(t, entity)?.ok_or_else(|| catalog::no_such_entity(t, entity))?;
    Ok(crate::spi::select_one::<Vec<pgrx::Uuid>>(
        &format!(
            "SELECT coalesce(array_agg(\"id\"), '{{}}') FROM {}",
            t.catalog(&e.def.slug)
        ),
        &[],
    )?
    .unwrap_or_default())
}

/// `udm.visible_ids(schema, entity)`: see `visible_ids`; once per command.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_visible_ids(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        per_command_ids(fcinfo, |schema, entity| {
            crate::citus::nested(|| visible_ids(&*member_tenant(schema)?, entity))
        })
    }
}

/// The ids of the `uuid[]` an expression passes to `udm.id_in`, collected once per query (the
/// list comes from an InitPlan, so every row passes the same array).
struct IdSet {
    /// The array datum it was made from: its address and size, and its first and last 16 bytes
    /// (an InitPlan's array is the same datum for every row of a query).
    source: IdSetSource,
    ids: Ids,
}

/// A short list is searched in order; a longer one goes into a hash set.
enum Ids {
    Few(Vec<u128>),
    Many(rustc_hash::FxHashSet<u128>),
}

impl Ids {
    fn contains(&self, id: u128) -> bool {
        match self {
            Ids::Few(v) => v.contains(&id),
            Ids::Many(s) => s.contains(&id),
        }
    }
}

#[derive(PartialEq, Eq)]
struct IdSetSource(usize, usize, [u8; 16], [u8; 16]);

unsafe fn id_set_source(d: pg_sys::Datum) -> IdSetSource {
    unsafe {
        let p = d.cast_mut_ptr::<u8>();
        let size = pgrx::varlena::varsize_any(p as *const pg_sys::varlena);
        let mut first = [0u8; 16];
        let mut last = [0u8; 16];
        let k = size.min(16);
        std::ptr::copy_nonoverlapping(p, first.as_mut_ptr(), k);
        std::ptr::copy_nonoverlapping(p.add(size - k), last.as_mut_ptr(), k);
        IdSetSource(p as usize, size, first, last)
    }
}

unsafe fn id_set_of(d: pg_sys::Datum) -> IdSet {
    unsafe {
        let source = id_set_source(d);
        let arr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let mut elems: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut n: i32 = 0;
        pg_sys::deconstruct_array(
            arr,
            pg_sys::UUIDOID,
            16,
            false,
            b'c' as std::os::raw::c_char,
            &mut elems,
            &mut nulls,
            &mut n,
        );
        let ids = (0..n as usize)
            .filter(|i| !*nulls.add(*i))
            .map(|i| u128::from_be_bytes(crate::triggers::uuid_bytes(*elems.add(i))));
        let ids = if n <= 8 {
            Ids::Few(ids.collect())
        } else {
            Ids::Many(ids.collect())
        };
        IdSet { source, ids }
    }
}

unsafe extern "C-unwind" fn free_id_set(arg: *mut std::os::raw::c_void) {
    unsafe { drop(Box::from_raw(arg as *mut IdSet)) }
}

/// `udm.id_in(id, ids)`: whether `id` is in `ids`. Row-level security policies test each row's
/// scope against the scope records the reader may see; the list is put into a hash set once per
/// query (kept with the expression, freed with the query's memory), then each row costs one
/// lookup, so readers of thousands of scope records pay little more than readers of one.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_id_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let args = (*fcinfo).args.as_slice(2);
        let needle = u128::from_be_bytes(crate::triggers::uuid_bytes(args[0].value));
        let flinfo = (*fcinfo).flinfo;
        let mut set = (*flinfo).fn_extra as *mut IdSet;
        if set.is_null() || (*set).source != id_set_source(args[1].value) {
            if set.is_null() {
                set = Box::into_raw(Box::new(id_set_of(args[1].value)));
                // the set goes when the query's memory does
                let cb = pg_sys::MemoryContextAllocZero(
                    (*flinfo).fn_mcxt,
                    std::mem::size_of::<pg_sys::MemoryContextCallback>(),
                ) as *mut pg_sys::MemoryContextCallback;
                (*cb).func = Some(free_id_set);
                (*cb).arg = set as *mut std::os::raw::c_void;
                pg_sys::MemoryContextRegisterResetCallback((*flinfo).fn_mcxt, cb);
                (*flinfo).fn_extra = set as *mut std::os::raw::c_void;
            } else {
                *set = id_set_of(args[1].value);
            }
        }
        pg_sys::Datum::from((*set).ids.contains(needle))
    }
}

/// `udm.may_read_all(schema, entity)`: the session sees every row of the entity.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_may_read_all(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let (all, _) = read_flags(&text_arg(fcinfo, 0), &text_arg(fcinfo, 1)).or_raise();
        pg_sys::Datum::from(all)
    }
}

/// `udm.may_read_scoped(schema, entity)`: the session may read the entity's rows it has a
/// relation to.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_may_read_scoped(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let (_, scoped) = read_flags(&text_arg(fcinfo, 0), &text_arg(fcinfo, 1)).or_raise();
        pg_sys::Datum::from(scoped)
    }
}

/// The records of `entity` the session's member has a relation tuple on, read through the tuple
/// index `(subject, object_entity)` with the transaction's snapshot: one index range for the
/// member, whatever the planner would estimate for a user id it cannot see at plan time.
fn tuple_objects(t: &Tenant, entity: &str) -> Result<Vec<pgrx::Uuid>> {
    let ctx = context(t)?;
    // on a Citus coordinator, called directly (the policies call it on the tenant's node, where
    // the shard is): this node's table is only Citus's shell, so the tuples are read through Citus
    if let (Some(user), Some(None)) = (
        ctx.user,
        crate::citus::shard_relation(t.schema_oid, TUPLE_TABLE, TUPLE_TABLE),
    ) {
        return crate::spi::select_column(
            &format!(
                "SELECT object_id FROM {} WHERE subject = $1 AND object_entity = $2",
                udm_core::ident::qualified(&t.schema, TUPLE_TABLE)
            ),
            &[user.into(), entity.into()],
        );
    }
    // on Citus: the shards, where this node (the tenant's worker) holds them
    let local = |name: &str| crate::citus::local_relation(t.schema_oid, TUPLE_TABLE, name);
    let (Some(user), Some(table)) = (ctx.user, local(TUPLE_TABLE)) else {
        return Ok(Vec::new());
    };
    let index = local(TUPLE_INDEX).ok_or_else(|| {
        UdmError::internal(format!(
            "tenant \"{}\" has no index \"{TUPLE_INDEX}\" on its relation tuples",
            t.slug
        ))
    })?;
    let mut out = Vec::new();
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as i32);
        let idx = pg_sys::index_open(index, pg_sys::AccessShareLock as i32);
        let desc = (*rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        let object_att = attrs
            .iter()
            .position(|a| !a.attisdropped && a.name() == "object_id")
            .map(|i| i as i16 + 1)
            .ok_or_else(|| UdmError::internal("relation tuples have no object_id column"))?;
        let mut subject = *user.as_bytes();
        let entity_text =
            pg_sys::cstring_to_text_with_len(entity.as_ptr().cast(), entity.len() as i32);
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyEntryInitialize(
            &mut keys[0],
            0,
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            pg_sys::Datum::from(subject.as_mut_ptr()),
        );
        pg_sys::ScanKeyEntryInitialize(
            &mut keys[1],
            0,
            2,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::InvalidOid,
            pg_sys::DEFAULT_COLLATION_OID,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            pg_sys::Datum::from(entity_text),
        );
        let snap = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        let scan = pg_sys::index_beginscan(rel, idx, snap, 2, 0);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            let mut null = false;
            let d = pg_sys::slot_getattr(slot, object_att as i32, &mut null);
            if !null {
                let mut id = [0u8; 16];
                id.copy_from_slice(std::slice::from_raw_parts(d.cast_mut_ptr::<u8>(), 16));
                out.push(pgrx::Uuid::from_bytes(id));
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(idx, pg_sys::AccessShareLock as i32);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    }
    Ok(out)
}

/// `udm.tuple_objects(schema, entity)`: see `tuple_objects`.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_tuple_objects(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        per_command_ids(fcinfo, |schema, entity| {
            crate::citus::nested(|| tuple_objects(&*member_tenant(schema)?, entity))
        })
    }
}

/// `udm.access_user(schema)`: the session's member user id, or NULL.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_access_user(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let user = crate::citus::nested(|| context(&tenant_arg(fcinfo)).or_raise().user);
        match user {
            Some(u) => u.into_datum().expect("uuid datum"),
            None => {
                (*fcinfo).isnull = true;
                pg_sys::Datum::from(0usize)
            }
        }
    }
}

// ------------------------------------------------------------------ reading the audit log

/// Whether the session acts over every record of the tenant: access control is off, or it is a
/// database admin or a member whose role manages the tenant.
pub fn over_records(t: &Tenant) -> Result<bool> {
    Ok(context(t)?.over_records())
}

/// Whether the session reads the tenant's whole audit log: access control is off, or it is a
/// database admin or a member whose role manages the tenant.
pub fn reads_whole_audit(t: &Tenant) -> Result<bool> {
    Ok(context(t)?.over_records())
}

/// Whether the session reads the audit rows of the records of `entity` it sees (its role reads
/// the entity and all its fields, or it reads the whole log).
pub fn reads_entity_audit(t: &Tenant, entity: &Entity) -> Result<bool> {
    let ctx = context(t)?;
    Ok(
        ctx.over_records()
            || role_reads_audit(&ctx, entity, AuditSubject::Record(&entity.def.slug)),
    )
}

/// The role's part of reading an audit row about `subject` of `entity`: the images hold every
/// field, removed ones too (older images have their values), so it must read them all.
fn role_reads_audit(ctx: &AccessCtx, entity: &Entity, subject: AuditSubject<'_>) -> bool {
    let fields: Vec<&str> = entity
        .def
        .fields
        .iter()
        .chain(&entity.def.removed_fields)
        .map(|f| f.name.as_str())
        .collect();
    audit_readable(&ctx.perms, subject, &fields)
}

/// Whether the session may read an audit row about `subject` (the row's `entity` column) and the
/// record `id`: its role reads the entity and every field of it (the images hold them all), and,
/// where the entity is scoped by relations, it sees the record now in the entity table (so rows
/// of deleted scoped records are for managers). Tenant events are for managers.
pub fn audit_visible(t: &Tenant, subject: &str, id: pgrx::Uuid) -> Result<bool> {
    audit_row_visible(t, subject, id, true)
}

/// Whether the session may receive the event of an audit row as a subscription delivers it: as
/// `audit_visible`, except that the role need not read every field of the entity, because the
/// delivery leaves out of the event (its image before the change and its changed fields) and of
/// the record it reads as the session whatever the role may not read.
pub fn event_visible(t: &Tenant, subject: &str, id: pgrx::Uuid) -> Result<bool> {
    audit_row_visible(t, subject, id, false)
}

fn audit_row_visible(t: &Tenant, subject: &str, id: pgrx::Uuid, every_field: bool) -> Result<bool> {
    let ctx = context(t)?;
    if ctx.over_records() {
        return Ok(true);
    }
    let subject = AuditSubject::parse(subject);
    let Some(name) = subject.entity() else {
        return Ok(false);
    };
    let Some(e) =
        catalog::entity_for_policy(t, name)?.filter(|e| e.status == catalog::Status::Active)
    else {
        return Ok(false);
    };
    let readable = if every_field {
        role_reads_audit(&ctx, &e, subject)
    } else {
        udm_core::access::audit_readable(&ctx.perms, subject, &[])
    };
    if !readable {
        return Ok(false);
    }
    if e.def.access.is_none() {
        return Ok(true);
    }
    if ctx.user.is_none() {
        return Ok(false);
    }
    // as the session: the entity's own policy decides, as for a plain SELECT of the record
    PerCommand::get_or(&SEEN, (e.def.slug.clone(), *id.as_bytes()), || {
        Ok(crate::spi::select_one::<bool>(
            &format!("SELECT true FROM {} WHERE id = $1", t.catalog(&e.def.slug)),
            &[id.into()],
        )?
        .unwrap_or(false))
    })
}

/// The tenant of `schema` when the caller is a member of it (has the privileges of its role),
/// else an ERROR: the helpers policies call answer only about the caller's own tenants.
fn member_tenant(schema: &str) -> Result<Rc<Tenant>> {
    let t = catalog::tenant(schema)?.ok_or_else(|| catalog::no_such_tenant(schema))?;
    catalog::require_member(&t)?;
    Ok(t)
}

unsafe fn tenant_arg(fcinfo: pg_sys::FunctionCallInfo) -> Rc<Tenant> {
    unsafe { member_tenant(&text_arg(fcinfo, 0)).or_raise() }
}

/// `udm.may_read_audit(schema)`: the session reads the tenant's whole audit log. So does udm
/// itself, reading as the owner (`security::as_owner`): the owner of a per-change log passes
/// its row-level security, and a batched log's view, which filters with this, must let it
/// through alike (events, transaction rollback and reports read as the owner and decide
/// themselves what the session gets).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_may_read_audit(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        if pg_sys::GetUserId() == security::owner() {
            return pg_sys::Datum::from(true);
        }
        pg_sys::Datum::from(crate::citus::nested(|| {
            reads_whole_audit(&tenant_arg(fcinfo)).or_raise()
        }))
    }
}

/// `udm.audit_visible(schema, entity, record_id)`: the session may read this audit row.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_audit_visible(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let subject = text_arg(fcinfo, 1);
        let id =
            pg_getarg::<pgrx::Uuid>(fcinfo, 2).unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16]));
        pg_sys::Datum::from(crate::citus::nested(|| {
            audit_visible(&tenant_arg(fcinfo), &subject, id).or_raise()
        }))
    }
}

// ------------------------------------------------------------------ the write guard

/// A uuid column of a row (type-checked: an ERROR when the column has another type).
unsafe fn uuid_at(
    tup: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    col: &str,
) -> Option<pgrx::Uuid> {
    unsafe {
        let a = crate::trust::typed_column(desc, "", col, pg_sys::UUIDOID, "udm access guard")?;
        let mut null = false;
        let d = pg_sys::heap_getattr(tup, a, desc, &mut null);
        (!null).then(|| pgrx::Uuid::from_bytes(crate::triggers::uuid_bytes(d)))
    }
}

/// Fields written by the statement that the role keeps from writing: on INSERT those given a
/// value (fields with a default excepted), on UPDATE those that change.
unsafe fn forbidden_field(
    e: &Entity,
    perms: &Perms,
    op: Op,
    by_role: bool,
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
) -> Option<String> {
    unsafe {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        for f in e.def.fields.iter().filter(|f| f.has_column()) {
            let writable = if by_role {
                perms.field_writable(&e.def.slug, &f.name, op)
            } else {
                !perms.field_denied(&e.def.slug, &f.name, true)
            };
            if writable {
                continue;
            }
            let Some(i) = attrs
                .iter()
                .position(|a| !a.attisdropped && a.name() == f.column)
            else {
                continue;
            };
            let (mut nn, mut on) = (false, true);
            let nv = pg_sys::heap_getattr(new, i as i32 + 1, desc, &mut nn);
            let written = if op == Op::Create {
                !nn && f.default.is_none()
            } else {
                let ov = pg_sys::heap_getattr(old, i as i32 + 1, desc, &mut on);
                match (on, nn) {
                    (true, true) => false,
                    (false, false) => {
                        !crate::audit::same_image(ov, nv, attrs[i].attbyval, attrs[i].attlen)
                    }
                    _ => true,
                }
            };
            if written {
                return Some(f.name.clone());
            }
        }
        None
    }
}

/// Sets the owner field of a new record to the session's user when it is empty.
unsafe fn fill_owner(
    rel: pg_sys::Relation,
    tup: pg_sys::HeapTuple,
    col: &str,
    user: pgrx::Uuid,
) -> pg_sys::HeapTuple {
    unsafe {
        let desc = (*rel).rd_att;
        let Some(a) =
            crate::trust::typed_column(desc, "", col, pg_sys::UUIDOID, "udm access guard")
        else {
            return tup;
        };
        let mut null = false;
        pg_sys::heap_getattr(tup, a, desc, &mut null);
        if !null {
            return tup;
        }
        let mut cols = [a];
        let mut vals = [user.into_datum().expect("uuid datum")];
        let mut nulls = [false];
        pg_sys::heap_modify_tuple_by_cols(
            tup,
            desc,
            1,
            cols.as_mut_ptr(),
            vals.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    }
}

/// `BEFORE INSERT OR UPDATE OR DELETE FOR EACH ROW` on entity tables of tenants with access
/// control: refuses what the session's user may not do.
/// The member the session acts as, or 42501: the tenant controls access and nobody is selected.
fn selected_member(t: &Tenant, ctx: &AccessCtx) -> pgrx::Uuid {
    match ctx.user {
        Some(u) => u,
        None => raise(
            UdmError::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "permission denied: tenant \"{}\" controls access and no member is selected (udm.user_id is \"{}\")",
                    t.slug,
                    crate::guc::user_id().unwrap_or_default()
                ),
            )
            .hint(format!("select a member with {}", sql_call("udm_use", &[&t.slug, "<email>"]))),
        ),
    }
}

/// `udm.link_guard(entity)`: the access guard of a many-to-many field's junction table. Adding,
/// changing or removing a link changes the field of its source record, so it needs what
/// `udm_update` of that field needs: the entity's update permission (or, on an entity scoped by
/// relations, editor on the record) and the field's write permission.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_link_guard(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = crate::triggers::row_trigger_data(fcinfo, LINK_GUARD, true);
        let rel = (*td).tg_relation;
        let (old, new) = match ev & pg_sys::TRIGGER_EVENT_OPMASK {
            pg_sys::TRIGGER_EVENT_INSERT => (std::ptr::null_mut(), (*td).tg_trigtuple),
            pg_sys::TRIGGER_EVENT_UPDATE => ((*td).tg_trigtuple, (*td).tg_newtuple),
            _ => ((*td).tg_trigtuple, std::ptr::null_mut()),
        };
        let result = pg_sys::Datum::from(if new.is_null() { old } else { new });
        let tt = crate::trust::trigger_table(td, LINK_GUARD);
        let t = tt.tenant.clone();
        let e = crate::trust::entity_of(&tt, LINK_GUARD);
        let entity = e.def.slug.clone();
        let of_table = |f: &&udm_core::definition::FieldDef| tt.field == Some(f.id);
        let active = e.def.fields.iter().find(of_table);
        // a removed field's links are no member's to change
        let Some(field) = active
            .or_else(|| e.def.removed_fields.iter().find(of_table))
            .map(|f| f.name.clone())
        else {
            raise(crate::trust::not_in_catalog(
                &tt,
                LINK_GUARD,
                &format!("is not the junction table of a field of {entity}"),
            ));
        };
        let ctx = context(&t).or_raise();
        if !ctx.enabled || ctx.db_admin {
            return result;
        }
        let user = selected_member(&t, &ctx);
        let desc = (*rel).rd_att;
        let sources: Vec<pgrx::Uuid> = [old, new]
            .iter()
            .filter(|r| !r.is_null())
            .filter_map(|r| uuid_at(*r, desc, "source_id"))
            .fold(Vec::new(), |mut v, id| {
                if !v.contains(&id) {
                    v.push(id);
                }
                v
            });
        let what = |id: &pgrx::Uuid| format!("change field \"{field}\" of {} {id}", e.def.slug);
        let first = sources
            .first()
            .copied()
            .unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16]));
        let by_role = e.def.access.is_none() || ctx.perms.manages();
        if by_role && !ctx.perms.allows(&e.def.slug, Op::Update) {
            raise(denied(
                &ctx.label(),
                ctx.role.as_deref(),
                &format!("{}.update", e.def.slug),
                &what(&first),
            ));
        }
        if active.is_none() || ctx.perms.field_denied(&e.def.slug, &field, true) {
            raise(denied(
                &ctx.label(),
                ctx.role.as_deref(),
                &format!("{}.{field}.write", e.def.slug),
                &what(&first),
            ));
        }
        if !by_role {
            let need = Op::Update.needs(e.def.access.as_ref().is_some_and(|a| a.parent.is_none()));
            for id in &sources {
                let l = level_of(&t, user, &e.def.slug, *id).or_raise();
                if l.is_none_or(|l| l < need) {
                    raise(denied(
                        &ctx.label(),
                        ctx.role.as_deref(),
                        &format!("{}.{}", e.def.slug, need.name()),
                        &format!(
                            "{} (it needs {} on {} {id}, and has {})",
                            what(id),
                            need.name(),
                            e.def.slug,
                            l.map_or("none", Level::name)
                        ),
                    ));
                }
            }
        }
        result
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_access_guard(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = crate::triggers::row_trigger_data(fcinfo, ACCESS_GUARD, true);
        let rel = (*td).tg_relation;
        let kind = ev & pg_sys::TRIGGER_EVENT_OPMASK;
        let (op, old, mut new) = match kind {
            pg_sys::TRIGGER_EVENT_INSERT => (Op::Create, std::ptr::null_mut(), (*td).tg_trigtuple),
            pg_sys::TRIGGER_EVENT_UPDATE => (Op::Update, (*td).tg_trigtuple, (*td).tg_newtuple),
            _ => (Op::Delete, (*td).tg_trigtuple, std::ptr::null_mut()),
        };
        let result =
            |new: pg_sys::HeapTuple| pg_sys::Datum::from(if new.is_null() { old } else { new });
        let tt = crate::trust::trigger_table(td, ACCESS_GUARD);
        let t = tt.tenant.clone();
        let e = crate::trust::entity_table(&tt, ACCESS_GUARD);
        let ctx = context(&t).or_raise();
        if !ctx.enabled {
            return result(new);
        }
        if op == Op::Create {
            // a new record's owner is whoever creates it, unless it names one
            let owner = e
                .def
                .access
                .as_ref()
                .and_then(|a| a.owner.as_deref())
                .and_then(|n| e.def.field(n));
            if let (Some(f), Some(u)) = (owner, ctx.user) {
                new = fill_owner(rel, new, &f.column, u);
            }
        }
        if ctx.db_admin {
            return result(new);
        }
        let desc = (*rel).rd_att;
        let record = uuid_at(if old.is_null() { new } else { old }, desc, "id")
            .map(|u| u.to_string())
            .unwrap_or_default();
        let what = |verb: &str| {
            format!("{verb} {} {record}", e.def.slug)
                .trim_end()
                .to_string()
        };
        let user = selected_member(&t, &ctx);
        // on entities with an access scope the relation on the record decides the operation
        // (checked below); a new scope record (a roadmap) needs the role's create
        let by_role = e.def.access.is_none()
            || ctx.perms.manages()
            || (op == Op::Create && e.def.access.as_ref().is_some_and(|a| a.parent.is_none()));
        if by_role && !ctx.perms.allows(&e.def.slug, op) {
            raise(denied(
                &ctx.label(),
                ctx.role.as_deref(),
                &format!("{}.{}", e.def.slug, op.name()),
                &what(op.name()),
            ));
        }
        if op != Op::Delete {
            if let Some(f) = forbidden_field(&e, &ctx.perms, op, by_role, old, new, desc) {
                raise(denied(
                    &ctx.label(),
                    ctx.role.as_deref(),
                    &format!("{}.{f}.write", e.def.slug),
                    &format!("write field \"{f}\" of {}", e.def.slug),
                ));
            }
        }
        if let Some(a) = &e.def.access {
            if !ctx.perms.manages() {
                let col = |n: &str| e.def.field(n).map(|f| (f.column.clone(), f.target.clone()));
                let need = |entity: &str, id: pgrx::Uuid, level: Level, verb: &str| {
                    let l = level_of(&t, user, entity, id).or_raise();
                    if l.is_none_or(|l| l < level) {
                        raise(denied(
                            &ctx.label(),
                            ctx.role.as_deref(),
                            &format!("{entity}.{}", level.name()),
                            &format!(
                                "{verb} (it needs {} on {entity} {id}, and has {})",
                                level.name(),
                                l.map_or("none", Level::name)
                            ),
                        ));
                    }
                };
                match a.parent.as_deref().and_then(col) {
                    None if op != Op::Create => {
                        let id = uuid_at(old, desc, "id").expect("a record has an id");
                        need(&e.def.slug, id, op.needs(true), &what(op.name()));
                    }
                    None => {}
                    Some((pcol, target)) => {
                        let target = target.unwrap_or_default();
                        let scopes = [
                            (!old.is_null())
                                .then(|| uuid_at(old, desc, &pcol))
                                .flatten(),
                            (!new.is_null())
                                .then(|| uuid_at(new, desc, &pcol))
                                .flatten(),
                        ];
                        for (i, s) in scopes.iter().enumerate() {
                            if let Some(s) = s {
                                if i == 1 && scopes[0] == Some(*s) {
                                    continue;
                                }
                                need(&target, *s, op.needs(false), &what(op.name()));
                            }
                        }
                    }
                }
            }
        }
        result(new)
    }
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
fn udm_add_member(tenant: &str, user_id: &str, role: default!(&str, "'viewer'")) -> JsonB {
    JsonB(add_member(tenant, user_id, role).or_raise())
}

#[pg_extern(volatile)]
fn udm_remove_member(tenant: &str, user_id: &str) -> JsonB {
    JsonB(remove_member(tenant, user_id).or_raise())
}

#[pg_extern(volatile)]
fn udm_define_role(
    name: Option<&str>,
    parent: Option<&str>,
    permissions: default!(JsonB, "'{}'"),
) -> JsonB {
    let name = crate::error::required(name, "name");
    JsonB(define_role(name, parent, &permissions.0).or_raise())
}

#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(stable)]
fn udm_roles() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(parent, Option<String>),
        name!(permissions, JsonB),
        name!(builtin, bool),
    ),
> {
    let rows = roles().or_raise();
    TableIterator::new(
        rows.into_iter()
            .map(|r| (r.name, r.parent, JsonB(r.permissions), r.builtin)),
    )
}

#[allow(clippy::type_complexity)]
#[pg_extern(stable)]
fn udm_members() -> TableIterator<
    'static,
    (
        name!(user_id, pgrx::Uuid),
        name!(email, String),
        name!(name, String),
        name!(role, String),
    ),
> {
    let rows = members().or_raise();
    TableIterator::new(rows)
}

fn members() -> Result<Vec<(pgrx::Uuid, String, String, String)>> {
    let t = catalog::current_tenant()?;
    if t.relation(MEMBER_TABLE).is_none() {
        return Ok(vec![]);
    }
    as_owner(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(
                &format!(
                    "SELECT u.id, u.email, u.name, m.role FROM {} m JOIN {} u ON u.id = m.user_id ORDER BY u.email",
                    t.catalog(MEMBER_TABLE),
                    t.catalog(USER_TABLE)
                ),
                None,
                &[],
            )? {
                out.push((
                    r.get::<pgrx::Uuid>(1)?.unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16])),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)
    })
}

#[pg_extern(volatile)]
fn udm_grant(subject: &str, relation: &str, object: &str) -> JsonB {
    JsonB(grant(subject, relation, object).or_raise())
}

#[pg_extern(volatile)]
fn udm_revoke(subject: &str, relation: &str, object: &str) -> JsonB {
    JsonB(revoke(subject, relation, object).or_raise())
}

#[pg_extern(stable)]
fn udm_check(subject: &str, relation: &str, object: &str) -> bool {
    check(subject, relation, object).or_raise()
}
