//! udm's catalog: the tenant registry (`udm.tenant`) and each tenant's own entity catalog
//! (`<tenant>._udm_entity`), with a per-backend cache.
//!
//! The entity catalog is append-only: every definition change adds a row (entity, version,
//! status, full definition, the change, who, when, which transaction). The newest row of an
//! entity is its current definition, so the version history and the catalog cannot disagree.
//! Changes to one entity are serialised by a transaction-level advisory lock.
//!
//! The cache holds tenants and parsed entity definitions. A definition change queues a relcache
//! invalidation of the tenant's catalog table; every backend's callback marks its cache stale,
//! so nothing is re-read on the hot path and nothing stale survives a change. A transaction that
//! changed the catalog and then aborts also marks the cache stale.

use crate::error::{spi_err, Result, SqlState, UdmError};
use crate::json::JsonB;
use crate::security::{as_owner, caller, has_privs_of, role_name};
use pgrx::prelude::*;
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
    pub schema_oid: pg_sys::Oid,
    /// `<schema>._udm_entity`: invalidating it invalidates every backend's cache of this tenant.
    pub catalog_oid: pg_sys::Oid,
    /// LISTEN channel of the tenant's change events.
    pub channel: String,
    /// Whether application users' access is controlled (the tenant has members).
    pub access: bool,
}

impl Tenant {
    pub fn ctx(&self) -> udm_core::ddl::Ctx<'_> {
        udm_core::ddl::Ctx {
            schema: &self.schema,
            role: &self.role,
            access: self.access,
            model: None,
        }
    }

    pub fn catalog(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// The oid of a relation (table, index, sequence) in the tenant's schema, if there is one.
    pub fn relation(&self, name: &str) -> Option<pg_sys::Oid> {
        let c = std::ffi::CString::new(name).ok()?;
        let oid = unsafe { pg_sys::get_relname_relid(c.as_ptr(), self.schema_oid) };
        (oid != pg_sys::InvalidOid).then_some(oid)
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
    /// The entity's table. A change to the definition invalidates its relcache entry, which
    /// tells every backend to drop its cached definition (and plans on the table).
    pub table_oid: pg_sys::Oid,
}

thread_local! {
    static TENANTS: RefCell<HashMap<String, Rc<Tenant>>> = RefCell::new(HashMap::new());
    static ENTITIES: RefCell<HashMap<(String, String), Rc<Entity>>> = RefCell::new(HashMap::new());
    static WATCHED: RefCell<HashSet<pg_sys::Oid>> = RefCell::new(HashSet::new());
    /// Entity definitions may be out of date.
    static STALE: Cell<bool> = const { Cell::new(false) };
    /// The tenant registry may be out of date.
    static TENANTS_STALE: Cell<bool> = const { Cell::new(false) };
    static REGISTRY_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// Counts how often cached definitions were dropped; caches built on them compare it.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
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
    let registry = REGISTRY_OID.with(|o| o.get());
    if relid == pg_sys::InvalidOid {
        TENANTS_STALE.with(|s| s.set(true));
        STALE.with(|s| s.set(true));
        return;
    }
    if relid == registry {
        // a tenant came, went or changed: other tenants' definitions (and the plans built on
        // them) stay; a dropped tenant's catalog table invalidates its own entries when it goes
        TENANTS_STALE.with(|s| s.set(true));
        return;
    }
    let watched = WATCHED.with(|w| w.try_borrow().map(|w| w.contains(&relid)).unwrap_or(true));
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
                TENANTS_STALE.with(|s| s.set(true));
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
        TENANTS_STALE.with(|s| s.set(true));
    }
}

fn refresh_if_stale() {
    if TENANTS_STALE.with(|s| s.replace(false)) {
        TENANTS.with(|t| t.borrow_mut().clear());
    }
    if STALE.with(|s| s.replace(false)) {
        ENTITIES.with(|e| e.borrow_mut().clear());
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

/// The current generation of cached definitions: it changes whenever any definition this
/// backend may have cached changed (here or in another session).
pub fn generation() -> u64 {
    refresh_if_stale();
    GENERATION.with(|g| g.get())
}

/// Clears this backend's cache of the tenant's entities now and queues an invalidation of the
/// tenant's catalog table for every other backend (sent at commit).
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

/// The registry table's oid: its invalidation clears the tenant cache too.
fn registry_oid() -> pg_sys::Oid {
    REGISTRY_OID.with(|o| {
        if o.get() == pg_sys::InvalidOid {
            let oid =
                crate::spi::select_one::<pg_sys::Oid>("SELECT 'udm.tenant'::regclass::oid", &[])
                    .ok()
                    .flatten()
                    .unwrap_or(pg_sys::InvalidOid);
            o.set(oid);
        }
        o.get()
    })
}

pub fn invalidate_registry() {
    invalidate_oid(registry_oid());
    TENANTS_STALE.with(|s| s.set(true));
}

/// Looks a tenant up by slug (no membership check).
pub fn tenant(slug: &str) -> Result<Option<Rc<Tenant>>> {
    refresh_if_stale();
    let _ = registry_oid();
    if let Some(t) = TENANTS.with(|t| t.borrow().get(slug).cloned()) {
        return Ok(Some(t));
    }
    if validate_slug(SlugKind::Tenant, slug).is_err() {
        return Ok(None);
    }
    let row = as_owner(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT name, schema_name, role_name, \
                 coalesce(to_regclass(format('%I._udm_entity', schema_name))::oid, 0::oid), \
                 coalesce(to_regnamespace(quote_ident(schema_name))::oid, 0::oid), channel, access \
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
                    r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<String>(6)?.unwrap_or_default(),
                    r.get::<bool>(7)?.unwrap_or(false),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .map_err(spi_err)?;
    let Some((name, schema, role, catalog_oid, schema_oid, channel, access)) = row else {
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
        schema_oid,
        channel,
        access,
    });
    WATCHED.with(|w| w.borrow_mut().insert(catalog_oid));
    TENANTS.with(|m| m.borrow_mut().insert(slug.to_string(), t.clone()));
    Ok(Some(t))
}

pub fn no_such_tenant(slug: &str) -> UdmError {
    if unregistered_schema(slug) {
        return unregistered(slug);
    }
    UdmError::new(
        SqlState::UndefinedObject,
        format!("tenant \"{}\" does not exist", printable(slug)),
    )
    .hint("udm_tenants() lists the tenants you may use")
}

/// Whether `schema` holds a udm tenant (its catalog table, owned by the extension's owner) that
/// the registry does not list: a database restored from a dump without `udm.tenant`'s rows.
pub fn unregistered_schema(schema: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(schema) else {
        return false;
    };
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c.as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return false;
        }
        let rel = pg_sys::get_relname_relid(c"_udm_entity".as_ptr(), nsp);
        if rel == pg_sys::InvalidOid {
            return false;
        }
        let owner = crate::spi::select_one::<pg_sys::Oid>(
            "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1",
            &[rel.into()],
        )
        .ok()
        .flatten();
        owner == Some(crate::security::owner()) && tenant(schema).ok().flatten().is_none()
    }
}

/// The error for a tenant schema the registry does not list, with the repair.
pub fn unregistered(schema: &str) -> UdmError {
    UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!(
            "schema \"{}\" holds a udm tenant that udm's registry (udm.tenant) does not list",
            printable(schema)
        ),
    )
    .detail("the database was probably restored from a dump without the rows of udm.tenant (udm 0.1.0 left them out of pg_dump)")
    .hint(format!(
        "a udm admin can list it again with {}",
        udm_core::ident::sql_call("udm_register_tenant", &[schema])
    ))
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
    let t = tenant(slug)?.ok_or_else(|| no_such_tenant(slug))?;
    require_member(&t)?;
    Ok(t)
}

/// The session's tenant (`udm_use`), checked again on every call.
pub fn current_tenant() -> Result<Rc<Tenant>> {
    let slug = crate::guc::tenant().ok_or_else(|| {
        let e = UdmError::new(SqlState::ObjectNotInPrerequisiteState, "no tenant selected")
            .hint("call udm_use('<tenant>') first; udm_tenants() lists the tenants you may use");
        match crate::guc::failed_selection() {
            Some(call) => e.detail(format!(
                "{call} failed, and the tenant selected before it no longer counts"
            )),
            None => e,
        }
    })?;
    usable_tenant(&slug)
}

/// The newest catalog row of an entity: (version, status, definition). A purged entity has
/// status "purged" and no definition.
type LatestRow = (i32, String, Option<serde_json::Value>, pg_sys::Oid);

fn latest_row(t: &Tenant, slug: &str) -> Result<Option<LatestRow>> {
    let sql = format!(
        "SELECT version, status, definition, coalesce((SELECT c.oid FROM pg_catalog.pg_class c \
           WHERE c.relnamespace = {}::oid AND c.relname = $1), 0::oid) \
         FROM {} WHERE entity = $1 ORDER BY version DESC LIMIT 1",
        t.schema_oid.to_u32(),
        t.catalog("_udm_entity")
    );
    as_owner(|| {
        let stmt = crate::spi::prepared(&sql, &[pg_sys::TEXTOID], false)?;
        Spi::connect(|c| {
            let mut out = None;
            for r in c.select(&*stmt, Some(1), &[slug.into()])? {
                out = Some((
                    r.get::<i32>(1)?.unwrap_or(0),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<JsonB>(3)?.map(|j| j.0),
                    r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)
    })
}

fn read_entity(t: &Tenant, slug: &str) -> Result<Option<Entity>> {
    let Some((version, status, def, table_oid)) = latest_row(t, slug)? else {
        return Ok(None);
    };
    let status = match status.as_str() {
        "active" => Status::Active,
        "dropped" => Status::Dropped,
        _ => return Ok(None),
    };
    let def = EntityDef::from_catalog(slug, &def.unwrap_or_default()).map_err(|e| {
        UdmError::internal(format!(
            "catalog of entity \"{slug}\" cannot be read: {}",
            e.message
        ))
    })?;
    if table_oid != pg_sys::InvalidOid {
        WATCHED.with(|w| w.borrow_mut().insert(table_oid));
    }
    Ok(Some(Entity {
        def,
        version,
        status,
        table_oid,
    }))
}

/// Serialises definition changes of one entity until the transaction ends (waits at most
/// `udm.ddl_lock_timeout`).
pub fn lock_entity(t: &Tenant, slug: &str) -> Result<()> {
    let key = format!("{}.{}", t.schema, slug);
    as_owner(|| {
        crate::error::catch_pg(
            || {
                let stmt = crate::spi::prepared(
                    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended($1, 0))",
                    &[pg_sys::TEXTOID],
                    true,
                )?;
                crate::spi::connect_mut("a definition change", |c| {
                    c.update(&*stmt, None, &[key.as_str().into()]).map(|_| ())
                })
                .map_err(spi_err)
            },
            |e| {
                if e.code == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
                    crate::error::raise(crate::entities::busy(slug));
                }
                e.raise_with(&format!("entity \"{slug}\""))
            },
        )
    })
}

/// The newest version and status of `slug`, read fresh (None if never defined).
pub fn latest_status(t: &Tenant, slug: &str) -> Result<Option<(i32, String)>> {
    Ok(latest_row(t, slug)?.map(|(v, s, _, _)| (v, s)))
}

/// An entity in any status, from the cache.
pub fn entity_any(t: &Tenant, slug: &str) -> Result<Option<Rc<Entity>>> {
    refresh_if_stale();
    let key = (t.slug.clone(), slug.to_string());
    if let Some(e) = ENTITIES.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(Some(e));
    }
    let Some(e) = read_entity(t, slug)? else {
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
    .hint(format!(
        "bring it back with {} or remove it for good with {}",
        udm_core::ident::sql_call("udm_restore_entity", &[slug]),
        udm_core::ident::sql_call("udm_purge_entity", &[slug, slug])
    ))
}

/// An active entity the caller's tenant has.
pub fn entity(t: &Tenant, slug: &str) -> Result<Rc<Entity>> {
    match entity_any(t, slug)? {
        Some(e) if e.status == Status::Active => Ok(e),
        Some(_) => Err(dropped(t, slug)),
        None => Err(no_such_entity(t, slug)),
    }
}

/// The entity read fresh under its change lock (serialises concurrent changes).
pub fn entity_for_update(t: &Tenant, slug: &str, want: Option<Status>) -> Result<Entity> {
    lock_entity(t, slug)?;
    let e = read_entity(t, slug)?.ok_or_else(|| no_such_entity(t, slug))?;
    match want {
        Some(Status::Active) if e.status == Status::Dropped => Err(dropped(t, slug)),
        Some(Status::Dropped) if e.status == Status::Active => Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("entity \"{slug}\" is not dropped"),
        )
        .hint(format!(
            "drop it first with {}",
            udm_core::ident::sql_call("udm_drop_entity", &[slug])
        ))),
        _ => Ok(e),
    }
}

/// One line of `udm_entities()`.
pub struct EntityRow {
    pub slug: String,
    pub version: i32,
    pub status: String,
    pub label: Option<String>,
    pub fields: i32,
    pub changed_at: Option<pgrx::datum::TimestampWithTimeZone>,
}

/// The newest row of every entity that is not purged.
pub fn entity_rows(t: &Tenant) -> Result<Vec<EntityRow>> {
    let sql = format!(
        "SELECT entity, version, status, definition->>'label', coalesce(jsonb_array_length(definition->'fields'), 0), changed_at \
         FROM (SELECT DISTINCT ON (entity) * FROM {} ORDER BY entity, version DESC) AS newest \
         WHERE status <> 'purged' ORDER BY entity",
        t.catalog("_udm_entity")
    );
    as_owner(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(sql.as_str(), None, &[])? {
                out.push(EntityRow {
                    slug: r.get::<String>(1)?.unwrap_or_default(),
                    version: r.get::<i32>(2)?.unwrap_or(0),
                    status: r.get::<String>(3)?.unwrap_or_default(),
                    label: r.get::<String>(4)?,
                    fields: r.get::<i32>(5)?.unwrap_or(0),
                    changed_at: r.get(6)?,
                });
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .map_err(spi_err)
}

/// Slugs of the tenant's active entities.
pub fn entity_slugs(t: &Tenant) -> Result<Vec<String>> {
    Ok(entity_rows(t)?
        .into_iter()
        .filter(|r| r.status == "active")
        .map(|r| r.slug)
        .collect())
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

/// Records a definition change as the entity's next catalog row, in the caller's transaction
/// (run as owner), and invalidates the entity's table (`table_oid`, InvalidOid for a table that
/// does not exist yet) so every backend forgets the old definition. `def` is None when the entity
/// is purged.
pub fn write_entity(
    t: &Tenant,
    slug: &str,
    table_oid: pg_sys::Oid,
    def: Option<&EntityDef>,
    version: i32,
    status: &str,
    change: serde_json::Value,
) -> Result<()> {
    let definition = def.map(|d| JsonB(d.to_json()));
    let actor = crate::security::actor();
    let role = role_name(caller());
    let sql = format!(
        "INSERT INTO {} (entity, version, status, definition, change, changed_by, changed_role) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        t.catalog("_udm_entity")
    );
    as_owner(|| {
        let stmt = crate::spi::prepared(
            &sql,
            &[
                pg_sys::TEXTOID,
                pg_sys::INT4OID,
                pg_sys::TEXTOID,
                pg_sys::JSONBOID,
                pg_sys::JSONBOID,
                pg_sys::TEXTOID,
                pg_sys::TEXTOID,
            ],
            true,
        )?;
        crate::spi::connect_mut("INSERT", |c| {
            c.update(
                &*stmt,
                None,
                &[
                    slug.into(),
                    version.into(),
                    status.into(),
                    definition.into(),
                    JsonB(change).into(),
                    actor.as_str().into(),
                    role.as_str().into(),
                ],
            )
            .map(|_| ())
        })
        .map_err(spi_err)
    })?;
    invalidate_oid(table_oid);
    Ok(())
}

/// The definition of an entity as it was in catalog version `version` (None when that version
/// has no definition, e.g. a purge).
pub fn definition_at(t: &Tenant, slug: &str, version: i32) -> Result<Option<EntityDef>> {
    let sql = format!(
        "SELECT definition FROM {} WHERE entity = $1 AND version = $2",
        t.catalog("_udm_entity")
    );
    let def = as_owner(|| crate::spi::select_one::<JsonB>(&sql, &[slug.into(), version.into()]))?;
    match def {
        Some(j) if !j.0.is_null() => EntityDef::from_catalog(slug, &j.0).map(Some),
        _ => Ok(None),
    }
}
