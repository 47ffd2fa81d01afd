//! udm's catalog: the tenant registry (`udm.tenant`) and each tenant's own entity catalog
//! (`<tenant>._udm_entity`, `<tenant>._udm_entity_version`), with a per-backend cache.
//!
//! The cache holds tenants and parsed entity definitions. A definition change queues a relcache
//! invalidation of the tenant's catalog table; every backend's callback marks its cache stale,
//! so nothing is re-read on the hot path and nothing stale survives a change. A transaction that
//! changed the catalog and then aborts also marks the cache stale.

use crate::error::{spi_err, Result, SqlState, UdmError};
use crate::security::{as_owner, caller, has_privs_of, role_name};
use pgrx::prelude::*;
use pgrx::JsonB;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use udm_core::definition::EntityDef;
use udm_core::ident::{printable, quote_ident, validate_slug, SlugKind};

#[derive(Debug)]
pub struct Tenant {
    pub slug: String,
    pub name: Option<String>,
    pub schema: String,
    pub role: String,
    pub role_oid: pg_sys::Oid,
    /// `<schema>._udm_entity`: invalidating it invalidates every backend's cache of this tenant.
    pub catalog_oid: pg_sys::Oid,
}

impl Tenant {
    pub fn ctx(&self) -> udm_core::ddl::Ctx<'_> {
        udm_core::ddl::Ctx {
            schema: &self.schema,
            role: &self.role,
        }
    }

    pub fn catalog(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Dropped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Dropped => "dropped",
        }
    }
}

#[derive(Debug)]
pub struct Entity {
    pub def: EntityDef,
    pub version: i32,
    pub status: Status,
}

thread_local! {
    static TENANTS: RefCell<HashMap<String, Rc<Tenant>>> = RefCell::new(HashMap::new());
    static ENTITIES: RefCell<HashMap<(String, String), Rc<Entity>>> = RefCell::new(HashMap::new());
    static WATCHED: RefCell<HashSet<pg_sys::Oid>> = RefCell::new(HashSet::new());
    static STALE: Cell<bool> = const { Cell::new(false) };
    static CHANGED_IN_XACT: Cell<bool> = const { Cell::new(false) };
}

/// Registers the invalidation callbacks; called once from `_PG_init`.
pub fn init() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0usize));
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let watched = relid == pg_sys::InvalidOid
        || WATCHED.with(|w| w.try_borrow().map(|w| w.contains(&relid)).unwrap_or(true));
    if watched {
        STALE.with(|s| s.set(true));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            if CHANGED_IN_XACT.with(|c| c.get()) {
                STALE.with(|s| s.set(true));
            }
            CHANGED_IN_XACT.with(|c| c.set(false));
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            CHANGED_IN_XACT.with(|c| c.set(false));
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB && CHANGED_IN_XACT.with(|c| c.get()) {
        STALE.with(|s| s.set(true));
    }
}

fn refresh_if_stale() {
    if STALE.with(|s| s.replace(false)) {
        TENANTS.with(|t| t.borrow_mut().clear());
        ENTITIES.with(|e| e.borrow_mut().clear());
    }
}

/// Clears this backend's cache now and queues the invalidation for every other backend (sent at
/// commit). Call after every catalog write.
pub fn invalidate(t: &Tenant) {
    invalidate_oid(t.catalog_oid);
}

pub fn invalidate_oid(oid: pg_sys::Oid) {
    if oid != pg_sys::InvalidOid {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
    CHANGED_IN_XACT.with(|c| c.set(true));
    STALE.with(|s| s.set(true));
}

/// The registry table's oid, watched so tenant changes invalidate caches.
fn registry_oid() -> pg_sys::Oid {
    thread_local! { static OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) }; }
    OID.with(|o| {
        if o.get() == pg_sys::InvalidOid {
            let oid = Spi::get_one::<pg_sys::Oid>("SELECT 'udm.tenant'::regclass::oid")
                .ok()
                .flatten()
                .unwrap_or(pg_sys::InvalidOid);
            o.set(oid);
            WATCHED.with(|w| w.borrow_mut().insert(oid));
        }
        o.get()
    })
}

pub fn invalidate_registry() {
    invalidate_oid(registry_oid());
}

/// Looks a tenant up by slug (no membership check).
pub fn tenant(slug: &str) -> Result<Option<Rc<Tenant>>> {
    refresh_if_stale();
    let _ = registry_oid();
    if let Some(t) = TENANTS.with(|t| t.borrow().get(slug).cloned()) {
        return Ok(Some(t));
    }
    let row = as_owner(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT name, schema_name, role_name, \
                 coalesce(to_regclass(format('%I._udm_entity', schema_name))::oid, 0::oid) \
                 FROM udm.tenant WHERE slug = $1",
                None,
                &[slug.into()],
            )?;
            let mut out = None;
            for r in rows {
                out = Some((
                    r.get::<String>(1)?,
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .map_err(spi_err)?;
    let Some((name, schema, role, catalog_oid)) = row else {
        return Ok(None);
    };
    let role_oid = crate::security::role_oid(&role).ok_or_else(|| {
        UdmError::internal(format!("tenant \"{slug}\" has lost its role \"{role}\""))
            .hint("recreate the role or drop the tenant with udm_drop_tenant")
    })?;
    let t = Rc::new(Tenant {
        slug: slug.to_string(),
        name,
        schema,
        role,
        role_oid,
        catalog_oid,
    });
    WATCHED.with(|w| w.borrow_mut().insert(catalog_oid));
    TENANTS.with(|m| m.borrow_mut().insert(slug.to_string(), t.clone()));
    Ok(Some(t))
}

pub fn no_such_tenant(slug: &str) -> UdmError {
    UdmError::new(
        SqlState::UndefinedObject,
        format!("tenant \"{}\" does not exist", printable(slug)),
    )
    .hint("udm_tenants() lists the tenants you may use")
}

/// The caller must have the privileges of the tenant's role (udm admins are members of every
/// tenant role).
pub fn require_member(t: &Tenant) -> Result<()> {
    let me = caller();
    if has_privs_of(me, t.role_oid) {
        return Ok(());
    }
    Err(UdmError::new(
        SqlState::InsufficientPrivilege,
        format!(
            "permission denied for tenant \"{}\": role \"{}\" is not a member of \"{}\"",
            t.slug,
            role_name(me),
            t.role
        ),
    )
    .hint(format!(
        "an admin can run GRANT \"{}\" TO \"{}\"",
        t.role,
        role_name(me)
    )))
}

/// A tenant the caller may use, by slug.
pub fn usable_tenant(slug: &str) -> Result<Rc<Tenant>> {
    validate_slug(SlugKind::Tenant, slug).map_err(|_| no_such_tenant(slug))?;
    let t = tenant(slug)?.ok_or_else(|| no_such_tenant(slug))?;
    require_member(&t)?;
    Ok(t)
}

/// The session's tenant (`udm_use`), checked again on every call.
pub fn current_tenant() -> Result<Rc<Tenant>> {
    let slug = crate::guc::tenant().ok_or_else(|| {
        UdmError::new(SqlState::ObjectNotInPrerequisiteState, "no tenant selected")
            .hint("call udm_use('<tenant>') first; udm_tenants() lists the tenants you may use")
    })?;
    usable_tenant(&slug)
}

fn read_entity(t: &Tenant, slug: &str, for_update: bool) -> Result<Option<Entity>> {
    let sql = format!(
        "SELECT version, status, definition FROM {} WHERE slug = $1{}",
        t.catalog("_udm_entity"),
        if for_update { " FOR UPDATE" } else { "" }
    );
    let row = as_owner(|| {
        Spi::connect_mut(|c| {
            let rows = if for_update {
                c.update(sql.as_str(), None, &[slug.into()])?
            } else {
                c.select(sql.as_str(), None, &[slug.into()])?
            };
            let mut out = None;
            for r in rows {
                out = Some((
                    r.get::<i32>(1)?.unwrap_or(0),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<JsonB>(3)?.map(|j| j.0),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    let Some((version, status, def)) = row.map_err(spi_err)? else {
        return Ok(None);
    };
    let def = EntityDef::from_catalog(slug, &def.unwrap_or_default()).map_err(|e| {
        UdmError::internal(format!(
            "catalog of entity \"{slug}\" cannot be read: {}",
            e.message
        ))
    })?;
    let status = if status == "dropped" {
        Status::Dropped
    } else {
        Status::Active
    };
    Ok(Some(Entity {
        def,
        version,
        status,
    }))
}

/// An entity in any status, from the cache.
pub fn entity_any(t: &Tenant, slug: &str) -> Result<Option<Rc<Entity>>> {
    refresh_if_stale();
    let key = (t.slug.clone(), slug.to_string());
    if let Some(e) = ENTITIES.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(Some(e));
    }
    let Some(e) = read_entity(t, slug, false)? else {
        return Ok(None);
    };
    let e = Rc::new(e);
    ENTITIES.with(|m| m.borrow_mut().insert(key, e.clone()));
    Ok(Some(e))
}

pub fn no_such_entity(t: &Tenant, slug: &str) -> UdmError {
    let known = entity_slugs(t).unwrap_or_default();
    UdmError::new(
        SqlState::UndefinedTable,
        format!(
            "entity \"{}\" does not exist in tenant \"{}\"",
            printable(slug),
            t.slug
        ),
    )
    .hint(format!(
        "entities of \"{}\" are {}",
        t.slug,
        udm_core::error::name_list(known)
    ))
}

fn dropped(t: &Tenant, slug: &str) -> UdmError {
    UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!("entity \"{slug}\" of tenant \"{}\" was dropped", t.slug),
    )
    .hint(format!("bring it back with udm_restore_entity('{slug}') or remove it for good with udm_purge_entity('{slug}', '{slug}')"))
}

/// An active entity the caller's tenant has.
pub fn entity(t: &Tenant, slug: &str) -> Result<Rc<Entity>> {
    match entity_any(t, slug)? {
        Some(e) if e.status == Status::Active => Ok(e),
        Some(_) => Err(dropped(t, slug)),
        None => Err(no_such_entity(t, slug)),
    }
}

/// The entity read fresh and locked for a definition change (serialises concurrent changes).
pub fn entity_for_update(t: &Tenant, slug: &str, want: Option<Status>) -> Result<Entity> {
    let e = read_entity(t, slug, true)?.ok_or_else(|| no_such_entity(t, slug))?;
    match want {
        Some(Status::Active) if e.status == Status::Dropped => Err(dropped(t, slug)),
        Some(Status::Dropped) if e.status == Status::Active => Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("entity \"{slug}\" is not dropped"),
        )
        .hint(format!("drop it first with udm_drop_entity('{slug}')"))),
        _ => Ok(e),
    }
}

/// Slugs of the tenant's active entities.
pub fn entity_slugs(t: &Tenant) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT slug FROM {} WHERE status = 'active' ORDER BY slug",
        t.catalog("_udm_entity")
    );
    as_owner(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(sql.as_str(), None, &[])? {
                out.push(r.get::<String>(1)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .map_err(spi_err)
}

/// All active entity definitions of a tenant (for relation checks).
pub fn active_entities(t: &Tenant) -> Result<Vec<Rc<Entity>>> {
    let mut out = Vec::new();
    for s in entity_slugs(t)? {
        if let Some(e) = entity_any(t, &s)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Records a definition change: the entity row and its version snapshot, in the caller's
/// transaction (run as owner).
pub fn write_entity(
    t: &Tenant,
    def: &EntityDef,
    version: i32,
    status: Status,
    change: serde_json::Value,
    insert: bool,
) -> Result<()> {
    let definition = JsonB(def.to_json());
    let actor = crate::security::actor();
    let role = role_name(caller());
    let upsert = if insert {
        format!(
            "INSERT INTO {} (slug, version, status, definition, created_by, updated_by) VALUES ($1, $2, $3, $4, $5, $5)",
            t.catalog("_udm_entity")
        )
    } else {
        format!(
            "UPDATE {} SET version = $2, status = $3, definition = $4, updated_by = $5, updated_at = now() WHERE slug = $1",
            t.catalog("_udm_entity")
        )
    };
    let history = format!(
        "INSERT INTO {} (entity, version, change, definition, changed_by, changed_role) VALUES ($1, $2, $3, $4, $5, $6)",
        t.catalog("_udm_entity_version")
    );
    as_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                upsert.as_str(),
                None,
                &[
                    def.slug.as_str().into(),
                    version.into(),
                    status.name().into(),
                    JsonB(definition.0.clone()).into(),
                    actor.as_str().into(),
                ],
            )?;
            c.update(
                history.as_str(),
                None,
                &[
                    def.slug.as_str().into(),
                    version.into(),
                    JsonB(change).into(),
                    definition.into(),
                    actor.as_str().into(),
                    role.as_str().into(),
                ],
            )?;
            Ok::<_, pgrx::spi::Error>(())
        })
    })
    .map_err(spi_err)?;
    invalidate(t);
    Ok(())
}

/// Removes an entity's catalog row (purge); its history stays.
pub fn delete_entity(
    t: &Tenant,
    slug: &str,
    version: i32,
    change: serde_json::Value,
) -> Result<()> {
    let actor = crate::security::actor();
    let role = role_name(caller());
    let del = format!("DELETE FROM {} WHERE slug = $1", t.catalog("_udm_entity"));
    let history = format!(
        "INSERT INTO {} (entity, version, change, definition, changed_by, changed_role) VALUES ($1, $2, $3, 'null'::jsonb, $4, $5)",
        t.catalog("_udm_entity_version")
    );
    as_owner(|| {
        Spi::connect_mut(|c| {
            c.update(del.as_str(), None, &[slug.into()])?;
            c.update(
                history.as_str(),
                None,
                &[
                    slug.into(),
                    version.into(),
                    JsonB(change).into(),
                    actor.as_str().into(),
                    role.as_str().into(),
                ],
            )?;
            Ok::<_, pgrx::spi::Error>(())
        })
    })
    .map_err(spi_err)?;
    invalidate(t);
    Ok(())
}
