//! Trigger functions trust nothing they are handed.
//!
//! Any role may `CREATE TRIGGER` on a table it owns (a temporary table, say) naming a function it
//! may execute, with any arguments; the function then runs with the table's rows and the
//! trigger's arguments as given. So every udm trigger function first checks, here, that it fires
//! on a table udm made: an ordinary, permanent table owned by the extension's owner (only the
//! owner, or a superuser, can attach triggers to it) in the schema of a tenant udm's registry
//! knows. What the trigger then does comes from udm's catalog of that tenant, never from SQL or
//! identifiers in its arguments: arguments are at most keys into the catalog, checked against it.
//! Every column is type-checked before a datum of it is read.

use crate::catalog::{self, Tenant};
use crate::error::{raise, Result, SqlState, UdmError};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::rc::Rc;

/// A table of a tenant, as a trigger on it found it.
pub struct TenantTable {
    pub tenant: Rc<Tenant>,
    /// The table's name in the tenant schema (an entity's slug, or a junction table's name).
    pub name: String,
    /// The entity the table belongs to, and for a junction table the field's id.
    pub entity: Option<Rc<catalog::Entity>>,
    pub field: Option<u32>,
}

thread_local! {
    /// Tables already found to be udm's, by (relation, trigger), for one catalog generation.
    static KNOWN: crate::cache::Cache<(pg_sys::Oid, pg_sys::Oid), Rc<TenantTable>> =
        crate::cache::Lru::new("trigger tables");
}

fn refused(func: &str, what: String) -> UdmError {
    UdmError::new(
        SqlState::InsufficientPrivilege,
        format!("{func}() runs only as a trigger udm attached to a table of a udm tenant; {what}"),
    )
    .hint("udm attaches its trigger functions itself when entities are defined; do not attach them to other tables")
}

/// The tenant table the trigger `td` fires on, or an ERROR (42501) when it is not a table udm
/// made. udm writes the table first in every trigger's arguments (`ddl::trigger_table_args`):
/// the entity, and for a junction table the field's id. The relation must be that table (or, on
/// Citus, a shard of it, named `<table>_<shard id>`). Triggers from before udm 0.2.0 have other
/// arguments; their table is the relation itself.
pub fn trigger_table(td: *mut pg_sys::TriggerData, func: &str) -> Rc<TenantTable> {
    let g = catalog::generation();
    let key = unsafe { ((*(*td).tg_relation).rd_id, (*(*td).tg_trigger).tgoid) };
    crate::cache::sync(&KNOWN, g);
    if let Some(t) = crate::cache::get(&KNOWN, &key) {
        return t;
    }
    let t = Rc::new(identify(td, func).unwrap_or_else(|e| raise(e)));
    crate::cache::put_scoped(&KNOWN, t.tenant.scope(), key, t.clone(), 256 + t.name.len());
    t
}

/// Whether `relname` is `table` or a Citus shard of it (`<table>_<digits>`).
pub fn is_table_or_shard(relname: &str, table: &str) -> bool {
    relname == table
        || relname
            .strip_prefix(table)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

fn identify(td: *mut pg_sys::TriggerData, func: &str) -> Result<TenantTable> {
    let rel = unsafe { (*td).tg_relation };
    let tenant = tenant_of(rel, func)?;
    let (_, relname) = unsafe { crate::triggers::relation_names(rel) };
    let args = unsafe { trigger_args(td) };
    let entity = |slug: &str| -> Result<Option<Rc<catalog::Entity>>> {
        if udm_core::ident::validate_slug(udm_core::ident::SlugKind::Entity, slug).is_err() {
            return Ok(None);
        }
        catalog::entity_any(&tenant, slug)
    };
    let junction_of = |e: &catalog::Entity, id: u32| -> Option<String> {
        e.def
            .fields
            .iter()
            .chain(&e.def.removed_fields)
            .find(|f| f.id == id)
            .and_then(|f| f.junction.clone())
    };
    if let Some(e) = args.first().map(|a| entity(a)).transpose()?.flatten() {
        let field = args.get(1).and_then(|a| a.parse::<u32>().ok());
        let (name, field) = match field.and_then(|id| junction_of(&e, id).map(|j| (j, id))) {
            Some((j, id)) => (j, Some(id)),
            None => (e.def.slug.clone(), None),
        };
        if is_table_or_shard(&relname, &name) {
            return Ok(TenantTable {
                tenant,
                name,
                entity: Some(e),
                field,
            });
        }
    }
    // a trigger made before udm 0.2.0: its table is the relation itself
    if let Some(e) = entity(&relname)? {
        return Ok(TenantTable {
            tenant,
            name: relname,
            entity: Some(e),
            field: None,
        });
    }
    if let Some(e) = args.first().map(|a| entity(a)).transpose()?.flatten() {
        let found = e
            .def
            .fields
            .iter()
            .chain(&e.def.removed_fields)
            .find(|f| f.junction.as_deref() == Some(relname.as_str()))
            .map(|f| f.id);
        if let Some(id) = found {
            return Ok(TenantTable {
                tenant,
                name: relname,
                entity: Some(e),
                field: Some(id),
            });
        }
    }
    let t = TenantTable {
        tenant,
        name: relname,
        entity: None,
        field: None,
    };
    Err(not_in_catalog(&t, func, "is not one of its tables"))
}

/// The tenant whose schema holds `rel`, when `rel` is an ordinary, permanent table owned by the
/// extension's owner; else an ERROR (42501). For triggers that need no more (the statement
/// trigger that flushes the audit buffer).
pub fn tenant_of(rel: pg_sys::Relation, func: &str) -> Result<Rc<Tenant>> {
    let (schema, name) = unsafe { crate::triggers::relation_names(rel) };
    let form = unsafe { &*(*rel).rd_rel };
    let what = || format!("\"{schema}\".\"{name}\" is not one");
    let ordinary = form.relkind == pg_sys::RELKIND_RELATION as std::os::raw::c_char
        || form.relkind == pg_sys::RELKIND_PARTITIONED_TABLE as std::os::raw::c_char;
    if !ordinary || form.relpersistence != pg_sys::RELPERSISTENCE_PERMANENT as std::os::raw::c_char
    {
        return Err(refused(func, what()));
    }
    if form.relowner != crate::access::security::owner() {
        return Err(refused(func, what()));
    }
    let Some(tenant) = catalog::tenant(&schema)? else {
        if catalog::unregistered_schema(&schema) {
            return Err(catalog::unregistered(&schema));
        }
        return Err(refused(func, what()));
    };
    if tenant.schema_oid != form.relnamespace {
        return Err(refused(func, what()));
    }
    Ok(tenant)
}

/// The entity whose table (or junction table) `t` is.
pub fn entity_of(t: &TenantTable, func: &str) -> Rc<catalog::Entity> {
    t.entity
        .clone()
        .unwrap_or_else(|| raise(not_in_catalog(t, func, "is not an entity table")))
}

/// The entity whose own table `t` is (not a junction table).
pub fn entity_table(t: &TenantTable, func: &str) -> Rc<catalog::Entity> {
    if t.field.is_some() {
        raise(not_in_catalog(
            t,
            func,
            "is a junction table, not an entity table",
        ));
    }
    entity_of(t, func)
}

/// The error for a trigger whose table or arguments udm's catalog does not describe (a table
/// changed behind udm's back, or a trigger attached by hand).
pub fn not_in_catalog(t: &TenantTable, func: &str, what: &str) -> UdmError {
    UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!(
            "{func}(): table \"{}\".\"{}\" {what} in udm's catalog of tenant \"{}\"",
            t.tenant.schema, t.name, t.tenant.slug
        ),
    )
    .hint("udm creates and drops its triggers with each definition change; a trigger attached by hand, or left after a table was changed outside udm, must be dropped")
}

/// The trigger's arguments as text.
pub unsafe fn trigger_args(td: *mut pg_sys::TriggerData) -> Vec<String> {
    unsafe {
        let t = (*td).tg_trigger;
        let n = (*t).tgnargs.max(0) as usize;
        (0..n)
            .map(|i| {
                CStr::from_ptr(*(*t).tgargs.add(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// The trigger's name, as udm created it: on a Citus worker a shard's trigger is named
/// `<name>_<shard id>`.
pub unsafe fn trigger_name(td: *mut pg_sys::TriggerData) -> String {
    let name = unsafe {
        CStr::from_ptr((*(*td).tg_trigger).tgname)
            .to_string_lossy()
            .into_owned()
    };
    if crate::citus::on_worker() {
        crate::citus::unsharded_name(&name)
    } else {
        name
    }
}

/// A column's attribute number (1-based) when the table has it with type `typ`; None when it
/// has no such column; an ERROR (42804) when it has one of another type.
pub fn typed_column(
    desc: pg_sys::TupleDesc,
    table: &str,
    name: &str,
    typ: pg_sys::Oid,
    func: &str,
) -> Option<i32> {
    unsafe {
        let natts = (*desc).natts as usize;
        let attrs = (*desc).attrs.as_slice(natts);
        let i = attrs
            .iter()
            .position(|a| !a.attisdropped && a.name() == name)?;
        if attrs[i].atttypid != typ {
            raise(
                UdmError::new(
                    SqlState::DatatypeMismatch,
                    format!(
                        "{func}(): column \"{table}\".\"{name}\" has type {}, not {}",
                        type_name(attrs[i].atttypid),
                        type_name(typ)
                    ),
                )
                .hint("udm's tables change only through udm_* functions"),
            );
        }
        Some(i as i32 + 1)
    }
}

/// Like `typed_column`, and the column must be there.
pub fn required_column(
    desc: pg_sys::TupleDesc,
    table: &str,
    name: &str,
    typ: pg_sys::Oid,
    func: &str,
) -> i32 {
    typed_column(desc, table, name, typ, func).unwrap_or_else(|| missing_column(table, name, func))
}

fn missing_column(table: &str, name: &str, func: &str) -> ! {
    raise(
        UdmError::new(
            SqlState::UndefinedColumn,
            format!("{func}(): table \"{table}\" has no column \"{name}\""),
        )
        .hint("udm's tables change only through udm_* functions"),
    )
}

/// `required_column` for a column of any type (its attribute number).
pub fn present_column(desc: pg_sys::TupleDesc, table: &str, name: &str, func: &str) -> i32 {
    crate::triggers::column_any_type(desc, name)
        .unwrap_or_else(|| missing_column(table, name, func))
}

/// The name of attribute `attr` (1-based) of a descriptor.
pub fn column_name(desc: pg_sys::TupleDesc, attr: i32) -> String {
    unsafe {
        let natts = (*desc).natts as usize;
        (*desc)
            .attrs
            .as_slice(natts)
            .get((attr - 1) as usize)
            .map(|a| a.name().to_string())
            .unwrap_or_default()
    }
}

fn type_name(oid: pg_sys::Oid) -> String {
    unsafe {
        let p = pg_sys::format_type_be(oid);
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

thread_local! {
    static REF_TYPE: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

/// The oid of the composite type `udm.ref` (polymorphic references).
pub fn ref_type() -> pg_sys::Oid {
    REF_TYPE.with(|r| {
        if r.get() == pg_sys::InvalidOid {
            let oid = crate::access::security::as_owner(|| {
                crate::spi::select_one::<pg_sys::Oid>(
                    "SELECT 'udm.ref'::pg_catalog.regtype::pg_catalog.oid",
                    &[],
                )
            })
            .ok()
            .flatten()
            .unwrap_or(pg_sys::InvalidOid);
            r.set(oid);
        }
        r.get()
    })
}
