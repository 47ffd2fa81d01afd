//! Application users: global (`udm.app_user`: one person may belong to several tenants), known to
//! each tenant that uses them through the tenant's own table `<tenant>._udm_user`.
//!
//! Nothing of a tenant references the global table: `user` fields, members and relation tuples
//! reference the tenant's `_udm_user` (a foreign key per tenant onto one global table would put
//! two triggers per reference on it: tens of thousands at scale, and every new reference
//! invalidating it for every backend). A directory, `udm.user_tenant`, says which tenants know a
//! user, so renaming, deleting or erasing a user touches those tenants only.
//!
//! What udm records about who did something (`created_by`, `updated_by`, the audit's `user_id`,
//! lock holders, who granted, added or acknowledged) is a registered user's id, never their
//! email: shown as the email while the user exists, and a reference that names nobody once the
//! user is erased. Labels (tenants without members) and database roles are recorded as they are.

use crate::access::security::{as_owner, caller, is_admin, require_admin, role_name};
use crate::catalog::{self, Tenant};
use crate::error::{spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use udm_core::access::{normalize_email, validate_password, validate_user_name};
use udm_core::ident::{printable, quote_ident, sql_call};

pub use udm_core::ddl::USER_TABLE;

/// A registered user: (id, email, name).
pub type UserRow = (pgrx::Uuid, String, String);

// ------------------------------------------------------------------ the tenant's users

/// The tenant's table of the users it knows, made on first use.
pub fn ensure_table(t: &Tenant) -> Result<()> {
    if t.relation(USER_TABLE).is_some() {
        return Ok(());
    }
    crate::spi::create_on_first_use(&t.schema, "users table", &table_sql(&t.schema, &t.role))?;
    catalog::invalidate_registry();
    Ok(())
}

/// The DDL of a tenant's users table.
pub fn table_sql(schema: &str, role: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.\"{USER_TABLE}\" (\
           id uuid PRIMARY KEY, \
           email text, \
           name text NOT NULL, \
           known_at timestamp with time zone NOT NULL DEFAULT now(), \
           erased_at timestamp with time zone); \
         GRANT SELECT ON {s}.\"{USER_TABLE}\" TO {}; \
         COMMENT ON TABLE {s}.\"{USER_TABLE}\" IS 'udm: the users this tenant knows (members, and users its user fields name)'",
        quote_ident(role)
    )
}

/// The users table before DDL that references it (an entity with `user` fields).
pub fn ensure_for(t: &Tenant, def: &udm_core::definition::EntityDef) -> Result<()> {
    if def
        .fields
        .iter()
        .any(|f| f.ftype == udm_core::types::FieldType::User)
    {
        ensure_table(t)?;
    }
    Ok(())
}

const KNOWN_MAX: usize = 10_000;

thread_local! {
    /// (tenant schema, user id) pairs this backend saw in the tenant's users table.
    static KNOWN: RefCell<HashSet<(pg_sys::Oid, [u8; 16])>> = RefCell::new(HashSet::new());
}

/// Makes the tenant know the user (its row in the tenant's users table, kept in step with the
/// user's email and name, and the directory entry).
pub fn know(t: &Tenant, u: &UserRow) -> Result<()> {
    know_here(t, u)?;
    enter_in_directory(t, u.0)?;
    remember(t, u.0);
    Ok(())
}

/// The user's row in the tenant's users table.
fn know_here(t: &Tenant, u: &UserRow) -> Result<()> {
    ensure_table(t)?;
    as_owner(|| {
        crate::spi::run(
            &format!(
                "INSERT INTO {} AS k (id, email, name) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name \
                 WHERE k.erased_at IS NULL AND (k.email, k.name) IS DISTINCT FROM (excluded.email, excluded.name)",
                t.catalog(USER_TABLE)
            ),
            &[u.0.into(), u.1.as_str().into(), u.2.as_str().into()],
        )
    })
}

/// The directory entry: which tenants know the user (what deleting or renaming them touches).
fn enter_in_directory(t: &Tenant, id: pgrx::Uuid) -> Result<()> {
    as_owner(|| {
        crate::spi::run(
            "INSERT INTO udm.user_tenant (user_id, tenant) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[id.into(), t.slug.as_str().into()],
        )
    })
}

/// On a Citus coordinator, for a tenant on a worker: makes the tenant know the registered users
/// that `udm_insert` or `udm_update` is about to write into its `user` fields (`cols`: column and
/// value). The check of the field runs in the trigger on the tenant's node, which cannot make the
/// tenant know a user there (that writes the directory, a reference table, from inside the
/// change). So the coordinator does it first: the tenant's users table on the node, by
/// `udm.citus_know_user` as a query of the tenant's catalog on the caller's own connection (the
/// trigger's, which sees that row; written over a connection of udm's owner, it would not), with
/// a token signed for this transaction; and the directory here. An id that names no user is left
/// to the trigger, which refuses it in the field's words. Elsewhere it does nothing.
pub fn know_before_write<'a>(
    t: &Tenant,
    def: &udm_core::definition::EntityDef,
    cols: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<()> {
    let users: Vec<pgrx::Uuid> = cols
        .filter(|(col, _)| {
            def.fields
                .iter()
                .any(|f| f.column == *col && f.ftype == udm_core::types::FieldType::User)
        })
        .filter_map(|(_, v)| uuid::Uuid::parse_str(v?).ok())
        .map(|u| pgrx::Uuid::from_bytes(*u.as_bytes()))
        .filter(|id| !KNOWN.with(|k| k.borrow().contains(&(t.schema_oid, *id.as_bytes()))))
        .collect();
    if users.is_empty() || !crate::citus::log_elsewhere(t) {
        return Ok(());
    }
    let sql = crate::citus::on_node_sql(&t.schema, "udm.citus_know_user($1)");
    for id in users {
        if find(&id.to_string())?.is_none() {
            continue;
        }
        let token = crate::citus::claims::know_token(&udm_core::claims::Know {
            tenant: t.slug.clone(),
            user: *id.as_bytes(),
        })?;
        crate::spi::select_one::<bool>(&sql, &[token.as_str().into()])?;
        enter_in_directory(t, id)?;
        remember(t, id);
    }
    Ok(())
}

finfo_v1!(pg_finfo_udm_citus_know_user);

/// `udm.citus_know_user(token)`: on a tenant's Citus worker, the tenant's users table learns the
/// registered user the coordinator's token names (see `know_before_write`). Refused anywhere but
/// on a worker (0A000), for a NULL token (22004), and for a token udm's coordinator did not make
/// in this transaction (42501).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_citus_know_user(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    (|| -> Result<()> {
        let token = unsafe {
            crate::citus::node_call_arg(
                fcinfo,
                "udm.citus_know_user",
                "token",
                "udm_insert and udm_update send it",
            )
        }?;
        let k = crate::citus::claims::check_know(&token)?;
        // the registry and the users (reference tables) and the tenant's users table are read
        // and written here, inside the query Citus sent to this node
        crate::citus::nested(|| {
            let t = catalog::tenant(&k.tenant)?.ok_or_else(|| {
                UdmError::invalid(format!(
                    "udm.citus_know_user: tenant \"{}\" does not exist",
                    printable(&k.tenant)
                ))
            })?;
            let id = pgrx::Uuid::from_bytes(k.user);
            let u = find(&id.to_string())?.ok_or_else(|| {
                UdmError::new(
                    SqlState::ForeignKeyViolation,
                    format!("udm.citus_know_user: user {id} does not exist"),
                )
            })?;
            know_here(&t, &u)?;
            remember(&t, id);
            Ok(())
        })
    })()
    .or_raise();
    pg_sys::Datum::from(true)
}

pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

/// What the tenants learned in a transaction (or savepoint) that rolls back is gone: so is this
/// backend's memory of it (`KNOWN`), or the next write naming the user would skip learning them
/// and fail on the users table's foreign key.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
    {
        forget_known();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        forget_known();
    }
}

fn forget_known() {
    KNOWN.with(|k| {
        if let Ok(mut k) = k.try_borrow_mut() {
            k.clear();
        }
    });
}

fn remember(t: &Tenant, id: pgrx::Uuid) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= KNOWN_MAX {
            k.clear();
        }
        k.insert((t.schema_oid, *id.as_bytes()));
    });
}

/// A `user` field's value: the tenant must know the user, and learns a registered user it did
/// not know yet; an id that names no user is refused (23503) in the field's words.
pub fn require_known(t: &Tenant, id: pgrx::Uuid, entity: &str, field: &str) -> Result<()> {
    if KNOWN.with(|k| k.borrow().contains(&(t.schema_oid, *id.as_bytes()))) {
        return Ok(());
    }
    // on Citus this runs in the trigger on the tenant's worker, inside the query Citus sent
    // there: what it reads is on this node (the tenant's users table, colocated; the registry, a
    // reference table); it writes nothing there (see below)
    crate::citus::nested(|| require_known_here(t, id, entity, field))
}

fn require_known_here(t: &Tenant, id: pgrx::Uuid, entity: &str, field: &str) -> Result<()> {
    let here = t.relation(USER_TABLE).is_some()
        && as_owner(|| {
            crate::spi::select_one::<bool>(
                &format!("SELECT true FROM {} WHERE id = $1", t.catalog(USER_TABLE)),
                &[id.into()],
            )
        })?
        .unwrap_or(false);
    if here {
        remember(t, id);
        return Ok(());
    }
    match find(&id.to_string())? {
        // a write Citus sent to the tenant's worker cannot write the registry of users' tenants
        // (a reference table, on every node) from inside itself: allowed, Citus was seen to
        // crash the worker committing such a transaction (COMMIT PREPARED). Nor can the
        // coordinator make the tenant know the user first for it: the trigger runs in the
        // caller's connection to the worker, which does not see what udm's owner wrote there
        Some(u) if crate::citus::on_worker() => Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "{entity}.{field} refers to user {} ({id}), whom tenant \"{}\" does not know yet",
                u.1, t.slug
            ),
        )
        .detail("on Citus a change that reaches the tenant's worker cannot make the tenant know a user: that writes udm.user_tenant, a reference table on every node, from inside the change")
        .hint("write the record with udm_insert or udm_update on the coordinator (they make the tenant know the user first), or make the user a member of the tenant (udm_add_member)")),
        Some(u) => know(t, &u),
        None => Err(UdmError::new(
            SqlState::ForeignKeyViolation,
            format!("{entity}.{field} refers to user {id}, which does not exist"),
        )
        .detail(format!(
            "entity \"{entity}\" of tenant \"{}\", field \"{field}\", rule \"user\"",
            t.slug
        ))
        .hint("udm_create_user makes users; a user field holds a user's id")),
    }
}

/// Who did something, for people: a registered user's email (while the tenant knows them and
/// they are not erased); anything else as recorded. Looked up once per name and call.
pub struct Names<'a> {
    t: &'a Tenant,
    seen: HashMap<String, String>,
}

impl<'a> Names<'a> {
    pub fn new(t: &'a Tenant) -> Self {
        Names {
            t,
            seen: HashMap::new(),
        }
    }

    pub fn show(&mut self, recorded: &str) -> Result<String> {
        if let Some(s) = self.seen.get(recorded) {
            return Ok(s.clone());
        }
        let shown = match uuid::Uuid::parse_str(recorded) {
            Ok(id) if self.t.relation(USER_TABLE).is_some() => as_owner(|| {
                crate::spi::select_one::<String>(
                    &format!(
                        "SELECT email FROM {} WHERE id = $1 AND erased_at IS NULL",
                        self.t.catalog(USER_TABLE)
                    ),
                    &[pgrx::Uuid::from_bytes(*id.as_bytes()).into()],
                )
            })?
            .unwrap_or_else(|| recorded.to_string()),
            _ => recorded.to_string(),
        };
        self.seen.insert(recorded.to_string(), shown.clone());
        Ok(shown)
    }
}

/// What a user given by email or id is recorded as (their id), for filters over what was
/// recorded (`udm_audit_report(..., '{"user": ...}')`).
pub fn recorded_as(key: &str) -> Result<Vec<String>> {
    let mut out = vec![key.to_string()];
    if let Some(u) = find(key)? {
        for s in [u.0.to_string(), u.1] {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ the global users

pub fn hash_password(pw: &str) -> Result<String> {
    let cost = crate::guc::BCRYPT_COST.get() as u32;
    bcrypt::hash(pw.as_bytes(), cost).map_err(|e| UdmError::internal(format!("bcrypt failed: {e}")))
}

thread_local! {
    /// (cost, hash) verified against when an email is unknown.
    static STAND_IN_HASH: RefCell<Option<(i32, String)>> = const { RefCell::new(None) };
}

fn stand_in_hash() -> Result<String> {
    let cost = crate::guc::BCRYPT_COST.get();
    if let Some(h) = STAND_IN_HASH.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(k, _)| *k == cost)
            .map(|(_, h)| h.clone())
    }) {
        return Ok(h);
    }
    let h = hash_password("udm: no such user")?;
    STAND_IN_HASH.with(|c| *c.borrow_mut() = Some((cost, h.clone())));
    Ok(h)
}

/// Finds a registered user by id or email.
pub fn find(key: &str) -> Result<Option<UserRow>> {
    let key = key.trim();
    let by_id = uuid::Uuid::parse_str(key).ok();
    as_owner(|| {
        let stmt = crate::spi::prepared(
            "SELECT id, email, name FROM udm.app_user WHERE id = $1 OR email = lower($2) LIMIT 1",
            &[pg_sys::UUIDOID, pg_sys::TEXTOID],
            false,
        )?;
        Spi::connect(|c| {
            let id = by_id.map(|u| pgrx::Uuid::from_bytes(*u.as_bytes()));
            let mut rows = c.select(&*stmt, Some(1), &[id.into(), key.into()])?;
            match rows.next() {
                Some(r) => Ok(Some((
                    r.get::<pgrx::Uuid>(1)?
                        .unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16])),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                ))),
                None => Ok::<_, pgrx::spi::Error>(None),
            }
        })
        .map_err(spi_err)
    })
}

pub fn no_such_user(key: &str) -> UdmError {
    UdmError::new(
        SqlState::UndefinedObject,
        format!("user \"{}\" does not exist", printable(key)),
    )
    .hint("create it with udm_create_user(email, name, password)")
}

pub fn user_json(u: &UserRow) -> Value {
    json!({"id": u.0.to_string(), "email": u.1, "name": u.2})
}

pub fn create_user(email: &str, name: &str, password: &str) -> Result<Value> {
    let email = normalize_email(email)?;
    validate_user_name(name)?;
    validate_password(password)?;
    // udm admins, or an admin of the current tenant (an app registering its users)
    let me = caller();
    if !is_admin(me) {
        let t = catalog::current_tenant().map_err(|_| {
            UdmError::new(
                SqlState::InsufficientPrivilege,
                format!("permission denied to create a user: role \"{}\" is not a udm admin and has no tenant selected", role_name(me)),
            )
            .hint("select a tenant you administer with udm_use, or ask a udm admin")
        })?;
        crate::access::require_manage(&t, "create users")?;
    }
    let hash = hash_password(password)?;
    let actor = crate::access::security::actor();
    let row = as_owner(|| {
        if find(&email)?.is_some() {
            return Err(UdmError::new(
                SqlState::UniqueViolation,
                format!("a user with email \"{email}\" already exists"),
            )
            .hint("users are shared by all tenants: add the existing user with udm_add_member"));
        }
        let stmt = crate::spi::prepared(
            "INSERT INTO udm.app_user (email, name, password_hash, created_by) VALUES ($1, $2, $3, $4) \
             RETURNING id, email, name, created_at",
            &[pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::TEXTOID],
            true,
        )?;
        crate::spi::connect_mut("INSERT", |c| {
            let mut rows = c.update(
                &*stmt,
                None,
                &[
                    email.as_str().into(),
                    name.trim().into(),
                    hash.as_str().into(),
                    actor.as_str().into(),
                ],
            )?;
            let r = rows.next().expect("INSERT RETURNING gives a row");
            Ok::<_, pgrx::spi::Error>((
                r.get::<pgrx::Uuid>(1)?
                    .unwrap_or_else(|| pgrx::Uuid::from_bytes([0; 16])),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<pgrx::datum::TimestampWithTimeZone>(4)?,
            ))
        })
        .map_err(spi_err)
    })?;
    let mut out = user_json(&(row.0, row.1, row.2));
    out["created_at"] = json!(row.3.map(|t| t.to_string()));
    Ok(out)
}

/// The user with this email and password, if both match and the user is a member of the
/// current tenant (an app's login); NULL otherwise.
pub fn authenticate(email: &str, password: &str) -> Result<Option<Value>> {
    let t = catalog::current_tenant()?;
    let Ok(email) = normalize_email(email) else {
        return Ok(None);
    };
    let hash = as_owner(|| {
        crate::spi::select_one::<String>(
            "SELECT password_hash FROM udm.app_user WHERE email = $1",
            &[email.as_str().into()],
        )
    })?;
    // An unknown email costs one bcrypt too, so the time taken does not tell which emails exist.
    let ok = match hash.as_deref() {
        Some(h) => bcrypt::verify(password.as_bytes(), h).unwrap_or(false),
        None => {
            let _ = bcrypt::verify(password.as_bytes(), &stand_in_hash()?);
            false
        }
    };
    if !ok {
        return Ok(None);
    }
    let Some(u) = find(&email)? else {
        return Ok(None);
    };
    let Some(role) = crate::access::member_role(&t, u.0)? else {
        return Ok(None);
    };
    let mut out = user_json(&u);
    out["tenant"] = json!(t.slug);
    out["role"] = json!(role);
    Ok(Some(out))
}

/// The tenants that know a user (the directory).
fn tenants_of(id: pgrx::Uuid) -> Result<Vec<String>> {
    as_owner(|| {
        Ok(crate::spi::select_one::<Vec<Option<String>>>(
            "SELECT array_agg(tenant ORDER BY tenant) FROM udm.user_tenant WHERE user_id = $1",
            &[id.into()],
        )?
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect())
    })
}

/// Changes a user's email, name or password (udm admins): the tenants that know the user follow.
pub fn update_user(key: &str, changes: &Value) -> Result<Value> {
    require_admin("change a user")?;
    crate::limits::check_spec(changes, "udm_update_user changes")?;
    let u = find(key)?.ok_or_else(|| no_such_user(key))?;
    let obj = udm_core::json::expect_object(changes, "udm_update_user changes")?;
    udm_core::json::refuse_unknown_keys(
        obj,
        &["email", "name", "password"],
        "udm_update_user changes",
    )?;
    let email = match obj.get("email") {
        Some(v) => normalize_email(udm_core::json::expect_str(v, "\"email\"")?)?,
        None => u.1.clone(),
    };
    let name = match obj.get("name") {
        Some(v) => {
            let n = udm_core::json::expect_str(v, "\"name\"")?;
            validate_user_name(n)?;
            n.trim().to_string()
        }
        None => u.2.clone(),
    };
    let hash = match obj.get("password") {
        Some(v) => {
            let p = udm_core::json::expect_str(v, "\"password\"")?;
            validate_password(p)?;
            Some(hash_password(p)?)
        }
        None => None,
    };
    if email != u.1 {
        if let Some(other) = find(&email)? {
            if other.0 != u.0 {
                return Err(UdmError::new(
                    SqlState::UniqueViolation,
                    format!("a user with email \"{email}\" already exists"),
                ));
            }
        }
    }
    as_owner(|| {
        crate::spi::run(
            "UPDATE udm.app_user SET email = $2, name = $3, password_hash = coalesce($4, password_hash), updated_at = now() WHERE id = $1",
            &[u.0.into(), email.as_str().into(), name.as_str().into(), hash.into()],
        )
    })?;
    let now = (u.0, email, name);
    let tenants = tenants_of(u.0)?;
    for slug in &tenants {
        if let Some(t) = catalog::tenant(slug)? {
            know(&t, &now)?;
        }
    }
    let mut out = user_json(&now);
    out["tenants"] = json!(tenants);
    Ok(out)
}

/// Deletes a user (udm admins; `confirm` repeats the email), or with `erase` erases their
/// personal data: in every tenant that knows them, memberships, relation tuples and held write
/// locks go (refused while they are a tenant's last admin); on delete, the tenant's row of them
/// goes too and `user` fields follow their `on_delete` (restrict refuses, naming a record); on
/// erase, that row keeps the id but loses email and name, so records and the audit keep a
/// reference that names nobody. The global user goes in both cases.
pub fn delete_user(key: &str, confirm: &str, erase: bool) -> Result<Value> {
    let call = if erase {
        "udm_erase_user"
    } else {
        "udm_delete_user"
    };
    require_admin(if erase {
        "erase a user"
    } else {
        "delete a user"
    })?;
    let u = find(key)?.ok_or_else(|| no_such_user(key))?;
    if normalize_email(confirm).ok().as_deref() != Some(u.1.as_str()) {
        return Err(UdmError::invalid(format!(
            "{call}: confirm must repeat the user's email \"{}\"",
            u.1
        ))
        .hint(format!("write {} to go on", sql_call(call, &[key, &u.1]))));
    }
    let tenants = tenants_of(u.0)?;
    let mut done = Vec::new();
    for slug in &tenants {
        let Some(t) = catalog::tenant(slug)? else {
            continue;
        };
        let removed = crate::access::forget_member(&t, &u, erase)?;
        crate::access::locks::release_all_of(&t, &u.0.to_string())?;
        if t.relation(USER_TABLE).is_some() {
            let sql = if erase {
                format!(
                    "UPDATE {} SET email = NULL, name = 'erased user', erased_at = now() WHERE id = $1",
                    t.catalog(USER_TABLE)
                )
            } else {
                format!("DELETE FROM {} WHERE id = $1", t.catalog(USER_TABLE))
            };
            let what = format!(
                "cannot {} user \"{}\" in tenant \"{}\"",
                if erase { "erase" } else { "delete" },
                u.1,
                t.slug
            );
            crate::error::catch_pg(
                || as_owner(|| crate::spi::run(&sql, &[u.0.into()])),
                |e| e.raise_with(&what),
            )?;
        }
        done.push(json!({"tenant": t.slug, "member": removed}));
    }
    as_owner(|| {
        if !erase {
            crate::spi::run(
                "DELETE FROM udm.user_tenant WHERE user_id = $1",
                &[u.0.into()],
            )?;
        }
        crate::spi::run("DELETE FROM udm.app_user WHERE id = $1", &[u.0.into()])
    })?;
    KNOWN.with(|k| k.borrow_mut().clear());
    Ok(json!({
        if erase { "erased" } else { "deleted" }: u.0.to_string(),
        "tenants": done,
    }))
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
fn udm_create_user(email: &str, name: &str, password: &str) -> JsonB {
    JsonB(create_user(email, name, password).or_raise())
}

#[pg_extern(volatile)]
fn udm_authenticate(email: &str, password: &str) -> Option<JsonB> {
    authenticate(email, password).or_raise().map(JsonB)
}

#[pg_extern(volatile)]
fn udm_update_user(user_id: &str, changes: JsonB) -> JsonB {
    JsonB(update_user(user_id, &changes.0).or_raise())
}

#[pg_extern(volatile)]
fn udm_delete_user(user_id: &str, confirm: &str) -> JsonB {
    JsonB(delete_user(user_id, confirm, false).or_raise())
}

#[pg_extern(volatile)]
fn udm_erase_user(user_id: &str, confirm: &str) -> JsonB {
    JsonB(delete_user(user_id, confirm, true).or_raise())
}
