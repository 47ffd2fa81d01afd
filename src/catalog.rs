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

use crate::access::security::{as_owner, caller, has_privs_of, role_name};
use crate::cache::{self, Cache, Lru};
use crate::error::{spi_err, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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
            citus: crate::citus::installed(),
        }
    }

    pub fn catalog(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// The oid of a relation (table, index, sequence) in the tenant's schema, if there is one.
    /// What identifies the tenant's entries in udm's caches (`cache::put_scoped`): its catalog
    /// table's oid, whose invalidation (and that of its entity tables) drops them.
    pub fn scope(&self) -> u32 {
        self.catalog_oid.to_u32()
    }

    pub fn relation(&self, name: &str) -> Option<pg_sys::Oid> {
        let c = std::ffi::CString::new(name).ok()?;
        let oid = unsafe { pg_sys::get_relname_relid(c.as_ptr(), self.schema_oid) };
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// Runs `f`, a read of the tenant's catalog of entities (`_udm_entity`), as udm's owner; on a
/// Citus coordinator, as the caller when the caller may read that table (the tenant role's
/// members may). Citus reaches a tenant's worker over one connection per role and refuses a
/// transaction that reads, as one role, placements another role changed in it ("modified in
/// this transaction by a different user"). Two kinds of reads come here, both made after the
/// caller may have written: `udm_rollback` reads the definition of the version it restores after
/// writing the record; a row-level security helper reads the definitions its policy needs
/// (`Reader::Session`). The other reads of the catalog stay the owner's, whose DDL follows them
/// (Citus refuses DDL on placements read over two connections).
fn read_as_caller_on_citus<R>(t: &Tenant, f: impl FnOnce() -> R) -> R {
    let as_caller = crate::citus::installed()
        && !crate::citus::on_worker()
        && t.relation("_udm_entity").is_some_and(|oid| unsafe {
            pg_sys::pg_class_aclcheck(oid, pg_sys::GetUserId(), pg_sys::ACL_SELECT as _)
                == pg_sys::AclResult::ACLCHECK_OK
        });
    if as_caller {
        f()
    } else {
        as_owner(f)
    }
}

/// Runs `f`, a read of the tenant's catalog of entities, as udm's owner; on a Citus coordinator
/// after the session's role wrote the tenant's tables in this transaction, as the caller when the
/// caller may (`read_as_caller_on_citus`): Citus would refuse the owner's read then (e.g. a
/// `udm_query`, `udm_get` or `udm_update` after an `INSERT` in one transaction, in a backend that
/// had not read the definitions yet), and no DDL of udm can follow in that transaction either way.
fn read_after_session_writes<R>(t: &Tenant, f: impl FnOnce() -> R) -> R {
    let session_wrote = crate::citus::installed()
        && crate::citus::constraints::writer_of(t.schema_oid)
            .is_some_and(|role| role == unsafe { pg_sys::GetUserId() });
    if session_wrote {
        read_as_caller_on_citus(t, f)
    } else {
        as_owner(f)
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
    static TENANTS: Cache<String, Rc<Tenant>> = Lru::new("tenants");
    static ENTITIES: Cache<(String, String), Rc<Entity>> = Lru::new("entity definitions");
    /// Parsed definitions by (entity, stored jsonb bytes), shared by tenants with equal ones.
    static PARSED: Cache<(String, Vec<u8>), Rc<EntityDef>> = Lru::new("parsed definitions");
    /// Catalog and entity tables whose invalidation makes their tenant's cached definitions
    /// stale, with that tenant's scope (`Tenant::scope`; a few bytes each).
    static WATCHED: RefCell<HashMap<pg_sys::Oid, u32>> = RefCell::new(HashMap::new());
    /// Every tenant's cached definitions may be out of date.
    static STALE: Cell<bool> = const { Cell::new(false) };
    /// The tenants (scopes) whose cached definitions may be out of date.
    static STALE_SCOPES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Counts every drop of cached definitions, of all tenants or of some.
    static CHANGES: Cell<u64> = const { Cell::new(0) };
    /// The tenant registry may be out of date.
    static TENANTS_STALE: Cell<bool> = const { Cell::new(false) };
    static REGISTRY_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// Counts how often every tenant's cached definitions were dropped; caches built on them
    /// compare it (a drop of some tenants' goes through `cache::drop_scopes`).
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// Bumped whenever the cached tenant registry is dropped (a tenant made, changed, dropped).
    static REGISTRY_GENERATION: Cell<u64> = const { Cell::new(0) };
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
    if relid == pg_sys::InvalidOid && crate::cache::resetting() {
        // udm reset PostgreSQL's caches to stay within its budget: its own entries stay
        return;
    }
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
    // a tenant's catalog or one of its tables (an entity's definition changed, or only the
    // table's statistics, by VACUUM or ANALYZE): that tenant's cached definitions go, the
    // other tenants' stay
    match WATCHED.with(|w| w.try_borrow().map(|w| w.get(&relid).copied())) {
        Ok(None) => {}
        Ok(Some(scope)) => stale_scope(scope),
        Err(_) => STALE.with(|s| s.set(true)),
    }
}

/// Marks the cached definitions of the tenant `scope` out of date.
fn stale_scope(scope: u32) {
    let queued = STALE_SCOPES.with(|s| {
        s.try_borrow_mut()
            .map(|mut s| {
                if !s.contains(&scope) {
                    s.push(scope);
                }
            })
            .is_ok()
    });
    if !queued {
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

thread_local! {
    /// On a Citus worker: the local transaction the caches were last used in.
    static WORKER_XACT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn refresh_if_stale() {
    // On a Citus worker the tenant's definitions, members and registry change through other
    // nodes (the coordinator), whose invalidations never reach this one: what this backend
    // cached holds for one transaction only.
    if crate::citus::on_worker() {
        let lxid = crate::guc::local_xact();
        if WORKER_XACT.with(|x| x.replace(lxid)) != lxid || lxid == 0 {
            TENANTS_STALE.with(|s| s.set(true));
            STALE.with(|s| s.set(true));
        }
    }
    if TENANTS_STALE.with(|s| s.replace(false)) {
        cache::clear(&TENANTS);
        REGISTRY_GENERATION.with(|g| g.set(g.get() + 1));
    }
    let scopes = STALE_SCOPES.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // every cache built on definitions drops the entries of these tenants (and of no single
    // tenant); when one cannot, everything goes
    let all =
        STALE.with(|s| s.replace(false)) || (!scopes.is_empty() && !cache::drop_scopes(&scopes));
    if all {
        cache::clear(&ENTITIES);
        GENERATION.with(|g| g.set(g.get() + 1));
    }
    if all || !scopes.is_empty() {
        CHANGES.with(|c| c.set(c.get() + 1));
    }
}

/// The current generation of every tenant's cached definitions: a cache synced with it
/// (`cache::sync`) is emptied when it moves, and loses the entries of a tenant whose definitions
/// changed (here or in another session) without it moving (`cache::drop_scopes`).
pub fn generation() -> u64 {
    refresh_if_stale();
    GENERATION.with(|g| g.get())
}

/// A count that moves whenever any cached definition may have changed, of any tenant: for what
/// is not kept in a cache of `crate::cache`.
pub fn changes() -> u64 {
    refresh_if_stale();
    CHANGES.with(|c| c.get())
}

/// The current generation of the cached tenant registry and definitions together: it changes
/// whenever either may have changed (here or in another session).
pub fn registry_generation() -> (u64, u64) {
    refresh_if_stale();
    (
        REGISTRY_GENERATION.with(|g| g.get()),
        CHANGES.with(|c| c.get()),
    )
}

/// Clears this backend's cache of the tenant's entities now and queues an invalidation of the
/// tenant's catalog table for every other backend (sent at commit).
pub fn invalidate(t: &Tenant) {
    invalidate_oid(t.catalog_oid, Some(t.scope()));
}

/// Queues an invalidation of `oid` for every backend (sent at commit) and drops this backend's
/// cached definitions of the tenant `scope` now (of every tenant for None).
fn invalidate_oid(oid: pg_sys::Oid, scope: Option<u32>) {
    if oid != pg_sys::InvalidOid {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
    CHANGED_IN_XACT.with(|c| c.set(true));
    match scope {
        Some(scope) => stale_scope(scope),
        None => STALE.with(|s| s.set(true)),
    }
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
    invalidate_oid(registry_oid(), None);
    TENANTS_STALE.with(|s| s.set(true));
}

/// Looks a tenant up by slug (no membership check).
pub fn tenant(slug: &str) -> Result<Option<Rc<Tenant>>> {
    refresh_if_stale();
    let _ = registry_oid();
    if let Some(t) = cache::get(&TENANTS, slug) {
        return Ok(Some(t));
    }
    if validate_slug(SlugKind::Tenant, slug).is_err() {
        return Ok(None);
    }
    let row = as_owner(|| {
        // one kept plan for every tenant
        let stmt = crate::spi::prepared(
            "SELECT name, schema_name, role_name, channel, access FROM udm.tenant WHERE slug = $1",
            &[pg_sys::TEXTOID],
            false,
        )?;
        Spi::connect(|c| {
            let mut out = None;
            for r in c.select(&*stmt, Some(1), &[slug.into()])? {
                out = Some((
                    r.get::<String>(1)?,
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                    r.get::<bool>(5)?.unwrap_or(false),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)
    })?;
    let Some((name, schema, role, channel, access)) = row else {
        return Ok(None);
    };
    let (catalog_oid, schema_oid) = {
        let s = std::ffi::CString::new(schema.as_str()).unwrap_or_default();
        let ns = unsafe { pg_sys::get_namespace_oid(s.as_ptr(), true) };
        let cat = if ns == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            unsafe { pg_sys::get_relname_relid(c"_udm_entity".as_ptr(), ns) }
        };
        (cat, ns)
    };
    let role_oid = crate::access::security::role_oid(&role).ok_or_else(|| {
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
    WATCHED.with(|w| w.borrow_mut().insert(catalog_oid, t.scope()));
    let bytes = std::mem::size_of::<Tenant>()
        + t.slug.len()
        + t.schema.len()
        + t.role.len()
        + t.channel.len()
        + t.name.as_ref().map_or(0, |n| n.len());
    cache::put(&TENANTS, slug.to_string(), t.clone(), bytes);
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
        owner == Some(crate::access::security::owner()) && tenant(schema).ok().flatten().is_none()
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

/// The tenant whose schema is the namespace `ns`, if any (a tenant's schema is named by its slug).
pub fn tenant_of_namespace(ns: pg_sys::Oid) -> Result<Option<Rc<Tenant>>> {
    let name = unsafe { pg_sys::get_namespace_name(ns) };
    if name.is_null() {
        return Ok(None);
    }
    let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy();
    Ok(tenant(&name)?.filter(|t| t.schema_oid == ns))
}

/// A tenant the caller may use, by slug.
pub fn usable_tenant(slug: &str) -> Result<Rc<Tenant>> {
    let t = tenant(slug)?.ok_or_else(|| no_such_tenant(slug))?;
    require_member(&t)?;
    Ok(t)
}

/// The session's tenant (`udm_use`), checked again on every call.
pub fn current_tenant() -> Result<Rc<Tenant>> {
    if let Some(e) = crate::citus::on_worker_refusal() {
        return Err(e);
    }
    selected_tenant()
}

/// The tenant selected (`udm_use`) in this backend, checked as `current_tenant` checks it, also on
/// a Citus worker, where only the selection the coordinator sent is (for a function that reads
/// there, in the statement that called it: `udm_decrypt`).
pub fn selected_tenant() -> Result<Rc<Tenant>> {
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

/// Who reads a definition the cache does not hold.
#[derive(Clone, Copy)]
enum Reader {
    /// udm's owner (with udm's settings): what udm's own functions do.
    Owner,
    /// The session, on a Citus coordinator, when it may (`read_as_caller_on_citus`): what the
    /// row-level security helpers do. A policy is evaluated in the session's own statements, so
    /// its connection to the tenant's node is in use already; a read as the owner after the
    /// session wrote there in the transaction would be refused.
    Session,
}

fn latest_row(t: &Tenant, slug: &str, reader: Reader) -> Result<Option<LatestRow>> {
    // (the entity's table is looked up here, not by a sub-select of the statement: on Citus a
    // statement reading the catalog runs whole on the tenant's worker, whose oids are others)
    let sql = format!(
        "SELECT version, status, definition \
         FROM {} WHERE entity = $1 ORDER BY version DESC LIMIT 1",
        t.catalog("_udm_entity")
    );
    let read = || {
        let stmt = crate::spi::prepared(&sql, &[pg_sys::TEXTOID], false)?;
        Spi::connect(|c| {
            let mut out = None;
            for r in c.select(&*stmt, Some(1), &[slug.into()])? {
                out = Some((
                    r.get::<i32>(1)?.unwrap_or(0),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<JsonB>(3)?.map(|j| j.0),
                    t.relation(slug).unwrap_or(pg_sys::InvalidOid),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)
    };
    match reader {
        Reader::Owner => read_after_session_writes(t, read),
        Reader::Session => read_as_caller_on_citus(t, read),
    }
}

fn read_entity(t: &Tenant, slug: &str, reader: Reader) -> Result<Option<Entity>> {
    let Some((version, status, def, table_oid)) = latest_row(t, slug, reader)? else {
        return Ok(None);
    };
    if status != "active" && status != "dropped" {
        return Ok(None);
    }
    entity_from_row(t, slug, version, &status, def, table_oid).map(Some)
}

/// An active entity from its stored definition (a jsonb datum). Tenants made from one template
/// store the same definitions: a definition parsed for one tenant is reused for the others,
/// found by its exact stored bytes (never by a hash alone).
fn entity_from_stored(
    t: &Tenant,
    slug: &str,
    version: i32,
    datum: pg_sys::Datum,
    table_oid: pg_sys::Oid,
) -> Result<Entity> {
    let bytes: Vec<u8> = unsafe {
        let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
        let len = pgrx::varsize_any_exhdr(raw);
        std::slice::from_raw_parts(pgrx::vardata_any(raw) as *const u8, len).to_vec()
    };
    let key = (slug.to_string(), bytes);
    let def = match cache::get(&PARSED, &key) {
        Some(d) => d,
        None => {
            let value = unsafe { crate::json::read(datum) }?;
            let d = Rc::new(EntityDef::from_catalog(slug, &value).map_err(|e| {
                UdmError::internal(format!(
                    "catalog of entity \"{slug}\" cannot be read: {}",
                    e.message
                ))
            })?);
            let size = key.1.len() + d.approx_bytes();
            cache::put(&PARSED, key, d.clone(), size);
            d
        }
    };
    if table_oid != pg_sys::InvalidOid {
        WATCHED.with(|w| w.borrow_mut().insert(table_oid, t.scope()));
    }
    Ok(Entity {
        def: (*def).clone(),
        version,
        status: Status::Active,
        table_oid,
    })
}

fn entity_from_row(
    t: &Tenant,
    slug: &str,
    version: i32,
    status: &str,
    def: Option<serde_json::Value>,
    table_oid: pg_sys::Oid,
) -> Result<Entity> {
    let status = match status {
        "active" => Status::Active,
        _ => Status::Dropped,
    };
    let def = EntityDef::from_catalog(slug, &def.unwrap_or_default()).map_err(|e| {
        UdmError::internal(format!(
            "catalog of entity \"{slug}\" cannot be read: {}",
            e.message
        ))
    })?;
    if table_oid != pg_sys::InvalidOid {
        WATCHED.with(|w| w.borrow_mut().insert(table_oid, t.scope()));
    }
    Ok(Entity {
        def,
        version,
        status,
        table_oid,
    })
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
    Ok(latest_row(t, slug, Reader::Owner)?.map(|(v, s, _, _)| (v, s)))
}

/// An entity in any status, from the cache.
pub fn entity_any(t: &Tenant, slug: &str) -> Result<Option<Rc<Entity>>> {
    entity_cached(t, slug, Reader::Owner)
}

/// `entity_any` for a row-level security helper: a definition not cached yet is read as the
/// session on a Citus coordinator (`Reader::Session`).
pub fn entity_for_policy(t: &Tenant, slug: &str) -> Result<Option<Rc<Entity>>> {
    entity_cached(t, slug, Reader::Session)
}

fn entity_cached(t: &Tenant, slug: &str, reader: Reader) -> Result<Option<Rc<Entity>>> {
    refresh_if_stale();
    let key = (t.slug.clone(), slug.to_string());
    if let Some(e) = cache::get(&ENTITIES, &key) {
        return Ok(Some(e));
    }
    let Some(e) = read_entity(t, slug, reader)? else {
        return Ok(None);
    };
    let e = Rc::new(e);
    let bytes = std::mem::size_of::<Entity>() + e.def.approx_bytes();
    cache::put_scoped(&ENTITIES, t.scope(), key, e.clone(), bytes);
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
    let e = read_entity(t, slug, Reader::Owner)?.ok_or_else(|| no_such_entity(t, slug))?;
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
/// One statement reads the newest catalog row of every entity with its table; definitions the
/// cache holds at the same version are not parsed again (a tenant's first use in a backend reads
/// its catalog once, not once per entity).
pub fn active_entities(t: &Tenant) -> Result<Vec<Rc<Entity>>> {
    refresh_if_stale();
    let rows = read_after_session_writes(t, || newest_rows(t))?;
    let mut out = Vec::with_capacity(rows.len());
    for (slug, version, status, def) in rows {
        if status != "active" {
            continue;
        }
        let key = (t.slug.clone(), slug.clone());
        if let Some(e) = cache::get(&ENTITIES, &key) {
            if e.version == version && e.status == Status::Active {
                out.push(e);
                continue;
            }
        }
        let table_oid = t.relation(&slug).unwrap_or(pg_sys::InvalidOid);
        let e = Rc::new(match def {
            Some(d) => entity_from_stored(t, &slug, version, d, table_oid)?,
            None => entity_from_row(t, &slug, version, &status, None, table_oid)?,
        });
        let bytes = std::mem::size_of::<Entity>() + e.def.approx_bytes();
        cache::put_scoped(&ENTITIES, t.scope(), key, e.clone(), bytes);
        out.push(e);
    }
    Ok(out)
}

/// The newest catalog row of each entity, (entity, version, status, definition), read from the
/// catalog table directly (no statement to parse and plan: the first use of a tenant in a backend
/// is a scan of a small table). The table's columns are checked by name and type first.
/// (entity, version, status, definition datum copied out of the table)
type NewestRow = (String, i32, String, Option<pg_sys::Datum>);

/// (entity, version, status, definition) of a catalog row.
pub type DefinitionRow = (String, i32, String, Option<serde_json::Value>);

/// Each entity's newest catalog row read through SQL, by entity: (entity, version, status,
/// definition). Tenant export reads it so; so does `newest_rows` on a Citus coordinator, whose
/// catalog table is Citus's shell of the catalog on the tenant's worker.
pub fn newest_definitions(t: &Tenant) -> Result<Vec<DefinitionRow>> {
    let sql = format!(
        "SELECT DISTINCT ON (entity) entity, version, status, definition FROM {} \
         ORDER BY entity, version DESC",
        t.catalog("_udm_entity")
    );
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(&sql, None, &[])? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i32>(2)?.unwrap_or(0),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<JsonB>(4)?.map(|j| j.0),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// `newest_rows` through SQL, the definitions as datums of the caller's memory context.
fn newest_rows_sql(t: &Tenant) -> Result<Vec<NewestRow>> {
    Ok(newest_definitions(t)?
        .into_iter()
        .map(|(e, v, s, d)| (e, v, s, d.and_then(|d| JsonB(d).into_datum())))
        .collect())
}

fn newest_rows(t: &Tenant) -> Result<Vec<NewestRow>> {
    let mut table = t.catalog_oid;
    // on Citus: the catalog's shard where this node holds it, else SQL (Citus reads it where it is)
    match crate::citus::shard_relation(t.schema_oid, "_udm_entity", "_udm_entity") {
        Some(Some(shard)) => table = shard,
        Some(None) => return newest_rows_sql(t),
        None => {}
    }
    if table == pg_sys::InvalidOid {
        return Err(UdmError::internal(format!(
            "tenant \"{}\" has no entity catalog (its schema \"{}\" lacks _udm_entity)",
            t.slug, t.schema
        ))
        .hint(
            "restore the tenant's schema from a backup, or drop the tenant with udm_drop_tenant",
        ));
    }
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as i32);
        let desc = (*rel).rd_att;
        let column = |name: &str, typ: pg_sys::Oid| -> Result<i32> {
            let attrs = std::slice::from_raw_parts((*desc).attrs.as_ptr(), (*desc).natts as usize);
            attrs
                .iter()
                .position(|a| {
                    !a.attisdropped
                        && a.atttypid == typ
                        && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes()
                            == name.as_bytes()
                })
                .map(|i| i as i32 + 1)
                .ok_or_else(|| {
                    UdmError::internal(format!(
                        "the entity catalog of tenant \"{}\" lacks its column \"{name}\"",
                        t.slug
                    ))
                })
        };
        let cols = (|| {
            Ok::<_, UdmError>((
                column("entity", pg_sys::TEXTOID)?,
                column("version", pg_sys::INT4OID)?,
                column("status", pg_sys::TEXTOID)?,
                column("definition", pg_sys::JSONBOID)?,
            ))
        })();
        let (c_entity, c_version, c_status, c_def) = match cols {
            Ok(c) => c,
            Err(e) => {
                pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
                return Err(e);
            }
        };
        // what SPI would see: the statement's snapshot, with this transaction's changes so far
        // (a definition written earlier in the same call, e.g. by a template)
        if pg_sys::ActiveSnapshotSet() {
            pg_sys::PushCopiedSnapshot(pg_sys::GetActiveSnapshot());
        } else {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        pg_sys::UpdateActiveSnapshotCommandId();
        let snapshot = pg_sys::GetActiveSnapshot();
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            snapshot,
            0,
            std::ptr::null_mut(),
        );
        let text =
            |d: pg_sys::Datum| -> String { String::from_datum(d, false).unwrap_or_default() };
        let mut newest: HashMap<String, (i32, String, Option<pg_sys::Datum>)> = HashMap::new();
        loop {
            let tup = pg_sys::systable_getnext(scan);
            if tup.is_null() {
                break;
            }
            let mut null = false;
            let e = pg_sys::heap_getattr(tup, c_entity, desc, &mut null);
            if null {
                continue;
            }
            let entity = text(e);
            let v = pg_sys::heap_getattr(tup, c_version, desc, &mut null);
            let version = if null { 0 } else { v.value() as i32 };
            if newest
                .get(&entity)
                .is_some_and(|(have, _, _)| *have >= version)
            {
                continue;
            }
            let st = pg_sys::heap_getattr(tup, c_status, desc, &mut null);
            let status = if null { String::new() } else { text(st) };
            let d = pg_sys::heap_getattr(tup, c_def, desc, &mut null);
            // the definition is copied out of the buffer (read after the scan ends)
            let def = (!null)
                .then(|| pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(d.cast_mut_ptr())));
            newest.insert(entity, (version, status, def));
        }
        pg_sys::systable_endscan(scan);
        pg_sys::PopActiveSnapshot();
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        let mut out: Vec<_> = newest
            .into_iter()
            .map(|(e, (v, s, d))| (e, v, s, d))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
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
    let actor = crate::access::security::actor();
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
    // a new entity has no table other backends watch yet: its tenant's catalog tells them
    invalidate_oid(
        if table_oid == pg_sys::InvalidOid {
            t.catalog_oid
        } else {
            table_oid
        },
        Some(t.scope()),
    );
    Ok(())
}

/// The definition of an entity as it was in catalog version `version` (None when that version
/// has no definition, e.g. a purge).
pub fn definition_at(t: &Tenant, slug: &str, version: i32) -> Result<Option<EntityDef>> {
    let sql = format!(
        "SELECT definition FROM {} WHERE entity = $1 AND version = $2",
        t.catalog("_udm_entity")
    );
    let def = read_as_caller_on_citus(t, || {
        crate::spi::select_one::<JsonB>(&sql, &[slug.into(), version.into()])
    })?;
    match def {
        Some(j) if !j.0.is_null() => EntityDef::from_catalog(slug, &j.0).map(Some),
        _ => Ok(None),
    }
}
