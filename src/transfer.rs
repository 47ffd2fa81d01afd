//! Moving tenants: export, import and clone.
//!
//! The database produces and consumes the archive; a client (`udm-tenant`) only moves bytes.
//!
//! * `udm_export(slug)`, in a REPEATABLE READ transaction, returns the manifest (see
//!   `udm_core::transfer`) and one `COPY ... TO STDOUT` per section, in order: the client runs
//!   them in the same transaction, so every table is read in one snapshot. Tables the caller may
//!   not read whole (password columns, dropped entities, the global users' hashes) are read through
//!   `udm.export_rows`, which reads them as the extension's owner.
//! * `udm_import_begin(manifest, new_slug)` checks the manifest and makes the tenant as udm would
//!   — role `tenant_<slug>@<database>`, schema, catalog, udm's tables the archive has, and every
//!   entity table and junction table planned from the definitions by the same DDL planner — but
//!   bare: columns only, no keys, constraints, triggers or row security, and not in the registry.
//!   It returns one `COPY ... FROM STDIN` per section. Nothing fires while rows are loaded, so
//!   nothing is audited or stamped again, and no switch exists that a caller could use to skip
//!   the audit: the bare tables live only inside the importing transaction, which no other
//!   session sees, and that transaction cannot commit until `udm_import_finish` has made them
//!   whole (a pre-commit check refuses it).
//! * `udm_import_finish(slug)` checks every section's row count against the manifest, the
//!   catalog against the definitions the tables were planned from, registers the tenant, builds
//!   what the planner makes around the columns (each key and constraint validated against the
//!   loaded rows, rules over related records checked for every record), merges the users, sets
//!   the sequences (audit ids, auto numbers) and verifies the audit chain. All in the caller's
//!   transaction: a failure leaves nothing.
//! * `udm_clone_tenant(source, new_slug, with_data)` does both inside the database: the same
//!   plan, rows copied by one statement (one snapshot).

use crate::access::security::{self, as_owner, caller, is_superuser, role_name};
use crate::catalog::{self, Tenant};
use crate::error::{catch_pg, raise, required, spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::CString;
use udm_core::ddl::{self, Step};
use udm_core::ident::{printable, qualified, quote_ident, quote_literal, validate_slug, SlugKind};
use udm_core::transfer::{
    self as tr, Definitions, EntityState, Kind, Manifest, Section, SequenceValue, TenantInfo,
};

finfo_v1!(pg_finfo_udm_export_rows);

/// The staging table of the global users an archive carries (the session's, dropped at commit).
const STAGED_USERS: &str = "pg_temp.udm_import_users";

/// udm's tables of a tenant that an archive may hold, besides entity tables.
const INTERNAL: [&str; 12] = [
    tr::CATALOG,
    tr::USERS,
    tr::ROLES,
    tr::MEMBERS,
    tr::TUPLES,
    tr::LOCKS,
    tr::SUBSCRIPTIONS,
    tr::CONSUMERS,
    tr::KEYS,
    tr::AUDIT,
    tr::AUDIT_LOG,
    tr::AUDIT_HEADS,
];

/// An import begun in this transaction and not finished yet.
struct Import {
    slug: String,
    manifest: Manifest,
    /// The role given INSERT on the tenant's tables for the load (revoked by the finish).
    loader: Option<String>,
    /// Whether the sections' rows are counted against the manifest (a clone copies them itself).
    counted: bool,
}

thread_local! {
    static PENDING: RefCell<Option<Import>> = const { RefCell::new(None) };
}

pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
    }
}

/// The slug of the import in progress in this transaction, if any.
pub fn pending_slug() -> Option<String> {
    PENDING.with(|p| p.borrow().as_ref().map(|i| i.slug.clone()))
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_PRE_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            if let Some(i) = PENDING.with(|p| p.borrow_mut().take()) {
                raise(
                    UdmError::new(
                        SqlState::ObjectNotInPrerequisiteState,
                        format!(
                            "the import of tenant \"{}\" was not finished: the transaction is rolled back, nothing of the tenant is kept",
                            i.slug
                        ),
                    )
                    .hint(format!(
                        "after the rows are loaded, call {} before COMMIT (udm-tenant import does)",
                        udm_core::ident::sql_call("udm_import_finish", &[&i.slug])
                    )),
                );
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            PENDING.with(|p| *p.borrow_mut() = None);
        }
        _ => {}
    }
}

/// Exports, imports and clones are for udm admins and the extension's owner: an export is a
/// full copy of a tenant's data, its users' password hashes included.
fn require_admin_or_owner(action: &str) -> Result<()> {
    if caller() == security::owner() {
        return Ok(());
    }
    security::require_admin(action)
}

/// Whether the caller reads and writes every table as it is (the owner and superusers).
fn reads_everything() -> bool {
    let me = caller();
    me == security::owner() || is_superuser(me)
}

fn archive_ctx(slug: &str) -> String {
    format!("import of tenant \"{slug}\"")
}

fn corrupt(message: impl Into<String>) -> UdmError {
    UdmError::new(SqlState::BadCopyFileFormat, message).hint(
        "the archive is damaged or incomplete: export the tenant again (udm-tenant export), and check it with udm-tenant check",
    )
}

/// The text forms COPY writes and reads, the same on both ends whatever the sessions' settings
/// (for the rest of the transaction). Set by a query, not `SET`: an export runs in a read-only
/// transaction (on a standby too), where udm runs no statement that needs a transaction id.
fn set_local_formats() -> Result<()> {
    crate::spi::select_one::<String>(
        "SELECT pg_catalog.set_config('DateStyle', 'ISO, MDY', true) \
             || pg_catalog.set_config('IntervalStyle', 'postgres', true) \
             || pg_catalog.set_config('extra_float_digits', '3', true) \
             || pg_catalog.set_config('bytea_output', 'hex', true) \
             || pg_catalog.set_config('TimeZone', 'UTC', true)",
        &[],
    )
    .map(|_| ())
}

fn refuse_pending(call: &str) -> Result<()> {
    if let Some(slug) = pending_slug() {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("{call}: the import of tenant \"{slug}\" is in progress in this transaction"),
        )
        .hint(format!(
            "finish it with {} (or roll the transaction back) first",
            udm_core::ident::sql_call("udm_import_finish", &[&slug])
        )));
    }
    Ok(())
}

// ------------------------------------------------------------------ reading a tenant

/// What a tenant has: its entities with tables (newest catalog versions) and which of udm's
/// tables it has, with their columns.
struct Source {
    entities: Vec<EntityState>,
    internal: BTreeMap<String, Vec<(String, String)>>,
}

fn table_columns(oid: pg_sys::Oid) -> Result<Vec<(String, String)>> {
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) \
             FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            None,
            &[oid.into()],
        )? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// (as the owner)
fn read_source(t: &Tenant) -> Result<Source> {
    // each entity's newest row, by entity; a purged entity is gone
    let rows = catalog::newest_definitions(t)?
        .into_iter()
        .filter(|(_, _, status, _)| status != "purged")
        .map(|(e, v, s, d)| (e, v, s, d.unwrap_or(Value::Null)));
    let mut entities = Vec::new();
    for (slug, version, status, definition) in rows {
        let def =
            udm_core::definition::EntityDef::from_catalog(&slug, &definition).map_err(|e| {
                UdmError::internal(format!(
                    "tenant \"{}\": the catalog of entity \"{slug}\" cannot be read: {}",
                    t.slug, e.message
                ))
            })?;
        entities.push(EntityState {
            slug,
            version,
            dropped: status == "dropped",
            definition,
            def,
        });
    }
    let mut internal = BTreeMap::new();
    for name in INTERNAL {
        if let Some(oid) = t.relation(name) {
            internal.insert(name.to_string(), table_columns(oid)?);
        }
    }
    Ok(Source { entities, internal })
}

fn column_list(s: &Section) -> String {
    s.columns
        .iter()
        .map(|(c, _)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The query of a section's rows in the source tenant.
fn section_query(t: &Tenant, s: &Section) -> String {
    match s.kind {
        Kind::GlobalUsers => format!(
            "SELECT a.id, a.email, a.name, a.password_hash, a.created_at, a.updated_at, a.created_by \
             FROM udm.app_user a JOIN {} u ON u.id = a.id",
            t.catalog(tr::USERS)
        ),
        _ => format!("SELECT {} FROM {}", column_list(s), t.catalog(&s.name)),
    }
}

/// What a manifest holds of a tenant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    /// Everything: an export, or a clone with data.
    All,
    /// Definitions (every version) and roles: a clone without data.
    Definitions,
}

/// The manifest of a tenant (as the owner, in the caller's snapshot); with `count`, each
/// section's rows counted.
fn build_manifest(t: &Tenant, content: Content, count: bool) -> Result<Manifest> {
    let src = read_source(t)?;
    let internal = match content {
        Content::All => src.internal.clone(),
        Content::Definitions => src
            .internal
            .iter()
            .filter(|(n, _)| {
                [tr::CATALOG, tr::ROLES].contains(&n.as_str()) || tr::is_audit_table(n)
            })
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect(),
    };
    let mut sections = tr::plan_sections(&src.entities, &internal);
    if count {
        for s in sections.iter_mut() {
            let n = crate::spi::select_one::<i64>(
                &format!("SELECT count(*) FROM ({}) AS s", section_query(t, s)),
                &[],
            )?
            .unwrap_or(0);
            s.rows = n.max(0) as u64;
        }
    }
    let (name, access, created_at, created_by) = Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT name, access, created_at::text, created_by FROM udm.tenant WHERE slug = $1",
            None,
            &[t.slug.as_str().into()],
        )?;
        match rows.next() {
            Some(r) => Ok::<_, pgrx::spi::Error>((
                r.get::<String>(1)?,
                r.get::<bool>(2)?.unwrap_or(false),
                r.get::<String>(3)?,
                r.get::<String>(4)?,
            )),
            None => Ok((None, false, None, None)),
        }
    })
    .map_err(spi_err)?;
    let mut sequences = Vec::new();
    if content == Content::All {
        for (table, column) in
            tr::sequence_columns(&src.entities, crate::audit::batch::is_batched(t))
        {
            let v = crate::spi::select_one::<i64>(
                "SELECT s.last_value FROM pg_catalog.pg_sequences s \
                 WHERE format('%I.%I', s.schemaname, s.sequencename) = pg_catalog.pg_get_serial_sequence($1, $2)",
                &[qualified(&t.schema, &table).into(), column.as_str().into()],
            )?;
            if let Some(value) = v {
                sequences.push(SequenceValue {
                    table,
                    column,
                    value,
                });
            }
        }
    }
    let exported_at = crate::spi::select_one::<String>(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[],
    )?;
    let mut m = Manifest {
        format_version: 1,
        udm_version: env!("CARGO_PKG_VERSION").to_string(),
        exported_at,
        source: json!({
            "database": crate::tenants::database_name(),
            "tenant": t.slug,
            "server_version": crate::spi::select_one::<String>("SELECT pg_catalog.current_setting('server_version')", &[])?,
            "encoding": crate::spi::select_one::<String>("SELECT pg_catalog.current_setting('server_encoding')", &[])?,
        }),
        tenant: TenantInfo {
            slug: t.slug.clone(),
            name,
            access: access && content == Content::All,
            created_at,
            created_by,
        },
        entities: src.entities,
        sections,
        sequences,
    };
    m.format_version = m.version_needed();
    Ok(m)
}

// ------------------------------------------------------------------ export

pub fn export(slug: &str) -> Result<Value> {
    require_admin_or_owner("export a tenant")?;
    if unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            "udm_export needs a REPEATABLE READ (or SERIALIZABLE) transaction: every table of the tenant is read in its one snapshot",
        )
        .hint(format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT {}; then run the COPY statements it returns, and COMMIT (udm-tenant export does)",
            udm_core::ident::sql_call("udm_export", &[slug])
        )));
    }
    let t = catalog::tenant(slug)?.ok_or_else(|| catalog::no_such_tenant(slug))?;
    set_local_formats()?;
    let direct = reads_everything();
    let me = caller();
    let (manifest, statements) = as_owner(|| {
        let m = build_manifest(&t, Content::All, true)?;
        let mut statements = Vec::new();
        for s in &m.sections {
            // the caller's own privileges where they read the table whole (row security lets
            // udm admins read every row); else through udm.export_rows, as the owner
            let readable = direct
                || (s.kind != Kind::GlobalUsers
                    && t.relation(&s.name).is_some_and(|oid| unsafe {
                        pg_sys::pg_class_aclcheck(oid, me, pg_sys::ACL_SELECT as pg_sys::AclMode)
                            == pg_sys::AclResult::ACLCHECK_OK
                    }));
            let sql = if readable && s.kind == Kind::GlobalUsers {
                format!("COPY ({}) TO STDOUT", section_query(&t, s))
            } else if readable {
                format!("COPY {} ({}) TO STDOUT", t.catalog(&s.name), column_list(s))
            } else {
                let defs: Vec<String> = s
                    .columns
                    .iter()
                    .map(|(c, ty)| format!("{} {ty}", quote_ident(c)))
                    .collect();
                format!(
                    "COPY (SELECT * FROM udm.export_rows({}, {}) AS t({})) TO STDOUT",
                    quote_literal(&t.slug),
                    quote_literal(&s.name),
                    defs.join(", ")
                )
            };
            statements.push(json!({"section": s.name, "rows": s.rows, "copy": sql}));
        }
        Ok::<_, UdmError>((m, statements))
    })?;
    Ok(json!({"manifest": manifest.to_json(), "statements": statements}))
}

/// `udm.export_rows(slug, section) returns setof record`: a section's rows read as the
/// extension's owner, for `udm_export`'s COPY of tables the caller may not read whole.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_export_rows(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let slug: String = required(pgrx::fcinfo::pg_getarg(fcinfo, 0), "slug");
        let section: String = required(pgrx::fcinfo::pg_getarg(fcinfo, 1), "section");
        require_admin_or_owner("export a tenant").or_raise();
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || ((*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32)
                == 0
            || (*rsinfo).expectedDesc.is_null()
        {
            raise(
                UdmError::new(
                    SqlState::FeatureNotSupported,
                    "udm.export_rows must be called in FROM, with a column definition list",
                )
                .hint("udm_export writes the statements that call it"),
            );
        }
        let t = catalog::tenant(&slug)
            .or_raise()
            .unwrap_or_else(|| raise(catalog::no_such_tenant(&slug)));
        let expected = (*rsinfo).expectedDesc;
        let per_query = (*(*rsinfo).econtext).ecxt_per_query_memory;
        let random = ((*rsinfo).allowedModes
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32)
            != 0;
        let old = pg_sys::MemoryContextSwitchTo(per_query);
        let desc = pg_sys::CreateTupleDescCopy(expected);
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);
        as_owner(|| {
            let src = read_source(&t)?;
            let s = tr::plan_sections(&src.entities, &src.internal)
                .into_iter()
                .find(|s| s.name == section)
                .ok_or_else(|| {
                    UdmError::new(
                        SqlState::UndefinedTable,
                        format!(
                            "tenant \"{}\" has no section \"{}\" to export",
                            t.slug,
                            printable(&section)
                        ),
                    )
                    .hint("udm_export lists the sections of a tenant")
                })?;
            fill_store(&section_query(&t, &s), &s.name, desc, store)
        })
        .or_raise();
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        pg_sys::Datum::from(0usize)
    }
}

/// Runs `sql` through a cursor and puts its rows into `store`, after checking they have the
/// column types `desc` says.
unsafe fn fill_store(
    sql: &str,
    section: &str,
    desc: pg_sys::TupleDesc,
    store: *mut pg_sys::Tuplestorestate,
) -> Result<()> {
    unsafe {
        let c = CString::new(sql).map_err(|_| UdmError::internal("SQL with a NUL byte"))?;
        pg_sys::SPI_connect();
        let portal = pg_sys::SPI_cursor_open_with_args(
            std::ptr::null(),
            c.as_ptr(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null(),
            true,
            0,
        );
        if portal.is_null() {
            pg_sys::SPI_finish();
            return Err(UdmError::internal("udm.export_rows: cannot open a cursor"));
        }
        let have = (*portal).tupDesc;
        let n = (*desc).natts as usize;
        let same = !have.is_null()
            && (*have).natts as usize == n
            && (0..n).all(|i| {
                let a = (*have).attrs.as_slice(n)[i].atttypid;
                let b = (*desc).attrs.as_slice(n)[i].atttypid;
                a == b
            });
        if !same {
            pg_sys::SPI_cursor_close(portal);
            pg_sys::SPI_finish();
            return Err(UdmError::new(
                SqlState::DatatypeMismatch,
                format!(
                    "udm.export_rows: the column definition list does not match the columns of section \"{}\"",
                    printable(section)
                ),
            )
            .hint("use the statement udm_export returns"));
        }
        loop {
            pg_sys::SPI_cursor_fetch(portal, true, 1000);
            let tt = pg_sys::SPI_tuptable;
            let got = pg_sys::SPI_processed as usize;
            if tt.is_null() || got == 0 {
                break;
            }
            for i in 0..got {
                pg_sys::tuplestore_puttuple(store, *(*tt).vals.add(i));
            }
            pg_sys::SPI_freetuptable(tt);
        }
        pg_sys::SPI_cursor_close(portal);
        pg_sys::SPI_finish();
        Ok(())
    }
}

// ------------------------------------------------------------------ import

/// Makes the tenant of `m` as `slug`, bare (see the module's comment), as the owner; with a
/// `loader`, gives that role INSERT on every table a section loads. Returns each section's
/// target: the table COPY loads it into.
fn create_bare(slug: &str, m: &Manifest, loader: Option<&str>) -> Result<Vec<String>> {
    let what = archive_ctx(slug);
    let role = crate::tenants::new_tenant_role(slug);
    crate::tenants::refuse_taken(slug, &role)?;
    let batched = m.batched();
    if batched && crate::citus::installed() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!("{what}: its audit log is batched, which udm does not support on Citus"),
        )
        .hint("import it into a database without Citus"));
    }
    crate::tenants::create_objects_for_import(slug, m.tenant.name.as_deref(), &role, batched)?;
    let has = |n: &str| m.sections.iter().any(|s| s.name == n);
    let user_fields = m.entities.iter().any(|e| {
        e.def
            .fields
            .iter()
            .chain(e.def.removed_fields.iter())
            .any(|f| f.ftype == udm_core::types::FieldType::User)
    });
    let access = has(tr::ROLES) || has(tr::MEMBERS) || has(tr::TUPLES);
    let mut sql = String::new();
    if has(tr::USERS) || user_fields || access {
        sql.push_str(&crate::access::users::table_sql(slug, &role));
        sql.push_str(";\n");
    }
    if access {
        sql.push_str(&crate::access::tables_sql(slug, &role));
        sql.push('\n');
    }
    if has(tr::LOCKS) {
        sql.push_str(&crate::access::locks::table_sql(slug, &role));
        sql.push('\n');
    }
    if has(tr::SUBSCRIPTIONS) || has(tr::CONSUMERS) {
        sql.push_str(&crate::audit::events::tables_sql(slug, &role));
        sql.push('\n');
    }
    if has(tr::KEYS) {
        // the keys its sealed values were sealed with, wrapped as they were (checked by the
        // finish: this server must hold the master key that wrapped them)
        sql.push_str(&crate::crypto::keys_table_sql(slug));
        sql.push_str(";\n");
    }
    let model = Definitions::new(slug, &m.entities);
    let ctx = ddl::Ctx {
        schema: slug,
        role: &role,
        access: m.tenant.access,
        model: Some(&model),
        citus: crate::citus::installed(),
    };
    for e in &m.entities {
        let plan = ddl::import_entity(&ctx, &e.def, e.dropped)
            .map_err(|err| err.context(format!("{what}: entity \"{}\"", e.slug)))?;
        for t in plan.tables {
            sql.push_str(&t);
            sql.push_str(";\n");
        }
        if batched {
            // the pointer of each row's latest change travels with the row
            sql.push_str(&crate::audit::batch::pointer_column_sql(&qualified(
                slug, &e.slug,
            )));
            sql.push_str(";\n");
        }
    }
    catch_pg(
        || crate::spi::run(&sql, &[]),
        |e| e.raise_with(&format!("{what}: making its tables")),
    )?;
    if crate::citus::installed() {
        // as udm_create_tenant does: the tables of first use made now, and the schema becomes a
        // distributed schema once its tables are in it (empty yet: the rows come into the
        // distributed tables)
        crate::citus::make_first_use_tables(slug, &role)?;
        crate::citus::distribute_schema(slug)?;
    }
    // udm's own tables: the archive's columns must be the tables' (a subset, of the same types,
    // holding every column that has no default)
    let schema_oid = crate::spi::select_one::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1",
        &[slug.into()],
    )?
    .unwrap_or(pg_sys::InvalidOid);
    for s in m
        .sections
        .iter()
        .filter(|s| matches!(s.kind, Kind::Catalog | Kind::Internal | Kind::Audit))
    {
        let c = CString::new(s.name.as_str()).map_err(|_| corrupt("a section name with a NUL"))?;
        let oid = unsafe { pg_sys::get_relname_relid(c.as_ptr(), schema_oid) };
        if oid == pg_sys::InvalidOid {
            return Err(corrupt(format!(
                "{what}: section \"{}\" has no table",
                s.name
            )));
        }
        let have = table_columns(oid)?;
        for (col, typ) in &s.columns {
            match have.iter().find(|(c, _)| c == col) {
                Some((_, t)) if t == typ => {}
                Some((_, t)) => {
                    return Err(corrupt(format!(
                        "{what}: column \"{}\" of section \"{}\" is {} in the archive, {t} here",
                        printable(col),
                        s.name,
                        printable(typ)
                    )))
                }
                None => {
                    return Err(corrupt(format!(
                        "{what}: section \"{}\" has a column \"{}\" that udm's table does not have",
                        s.name,
                        printable(col)
                    )))
                }
            }
        }
        let needed = crate::spi::select_one::<Vec<Option<String>>>(
            "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_catalog.pg_attribute a \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attnotnull \
               AND (attidentity <> '' OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef d \
                                                     WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum))",
            &[oid.into()],
        )?
        .unwrap_or_default();
        for n in needed.into_iter().flatten() {
            if !s.columns.iter().any(|(c, _)| *c == n) {
                return Err(corrupt(format!(
                    "{what}: section \"{}\" lacks column \"{n}\"",
                    s.name
                )));
            }
        }
    }
    let staged = m.sections.iter().any(|s| s.kind == Kind::GlobalUsers);
    let mut grants = Vec::new();
    if staged {
        let cols: Vec<String> = tr::GLOBAL_USER_COLUMNS
            .iter()
            .map(|(c, t)| format!("{} {t}", quote_ident(c)))
            .collect();
        grants.push(format!(
            "CREATE TEMP TABLE udm_import_users ({}) ON COMMIT DROP",
            cols.join(", ")
        ));
    }
    let mut targets = Vec::new();
    for s in &m.sections {
        let target = if s.kind == Kind::GlobalUsers {
            STAGED_USERS.to_string()
        } else {
            qualified(slug, &s.name)
        };
        if let Some(l) = loader {
            grants.push(format!("GRANT INSERT ON {target} TO {}", quote_ident(l)));
        }
        targets.push(target);
    }
    if !grants.is_empty() {
        crate::spi::run(&grants.join(";\n"), &[])?;
    }
    Ok(targets)
}

pub fn import_begin(manifest: &Value, new_slug: Option<&str>) -> Result<Value> {
    require_admin_or_owner("import a tenant")?;
    refuse_pending("udm_import_begin")?;
    if unsafe { pg_sys::GetCurrentTransactionNestLevel() } > 1 {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            "udm_import_begin cannot run inside a savepoint or an exception block",
        )
        .hint("run it at the top level of its own transaction"));
    }
    let m = tr::parse_manifest(manifest)?;
    let slug = new_slug.unwrap_or(&m.tenant.slug).to_string();
    validate_slug(SlugKind::Tenant, &slug)?;
    set_local_formats()?;
    let loader = (!reads_everything()).then(|| role_name(caller()));
    let targets = as_owner(|| create_bare(&slug, &m, loader.as_deref()))?;
    let statements: Vec<Value> = m
        .sections
        .iter()
        .zip(&targets)
        .map(|(s, target)| {
            json!({
                "section": s.name,
                "rows": s.rows,
                "copy": format!("COPY {target} ({}) FROM STDIN", column_list(s)),
            })
        })
        .collect();
    let role = crate::tenants::new_tenant_role(&slug);
    PENDING.with(|p| {
        *p.borrow_mut() = Some(Import {
            slug: slug.clone(),
            manifest: m,
            loader,
            counted: true,
        })
    });
    Ok(json!({"tenant": slug, "role": role, "statements": statements}))
}

pub fn import_finish(slug: &str) -> Result<Value> {
    require_admin_or_owner("import a tenant")?;
    let imp = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        match p.as_ref() {
            Some(i) if i.slug == slug => p.take(),
            _ => None,
        }
    });
    let Some(imp) = imp else {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "no import of tenant \"{}\" is in progress in this transaction",
                printable(slug)
            ),
        )
        .hint(match pending_slug() {
            Some(other) => format!("the import in progress is of tenant \"{other}\""),
            None => "udm_import_begin starts one, in the same transaction".to_string(),
        }));
    };
    finish(&imp)
}

/// Rows of each section, by name.
type SectionCounts = Vec<(String, u64)>;
/// The largest value of each sequence's column, by (table, column).
type SequenceMaxima = BTreeMap<(String, String), i64>;

/// Row counts (and the largest value of each sequence's column) of the loaded sections.
fn count_sections(slug: &str, m: &Manifest) -> Result<(SectionCounts, SequenceMaxima)> {
    let seq_cols = tr::sequence_columns(&m.entities, m.batched());
    let mut counts = Vec::new();
    let mut maxima = BTreeMap::new();
    for s in &m.sections {
        let table = if s.kind == Kind::GlobalUsers {
            STAGED_USERS.to_string()
        } else {
            qualified(slug, &s.name)
        };
        let cols: Vec<&String> = seq_cols
            .iter()
            .filter(|(t, _)| *t == s.name && s.kind != Kind::GlobalUsers)
            .map(|(_, c)| c)
            .collect();
        let mut select = vec!["count(*)::text".to_string()];
        select.extend(
            cols.iter()
                .map(|c| format!("max({})::text", quote_ident(c))),
        );
        let row = Spi::connect(|c| {
            let mut rows = c.select(
                &format!("SELECT {} FROM {table}", select.join(", ")),
                None,
                &[],
            )?;
            let mut out = Vec::new();
            if let Some(r) = rows.next() {
                for i in 0..select.len() {
                    out.push(r.get::<String>(i + 1)?);
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)?;
        let n: u64 = row
            .first()
            .cloned()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        counts.push((s.name.clone(), n));
        for (i, c) in cols.iter().enumerate() {
            if let Some(v) = row
                .get(i + 1)
                .cloned()
                .flatten()
                .and_then(|v| v.parse::<i64>().ok())
            {
                maxima.insert((s.name.clone(), (*c).clone()), v);
            }
        }
    }
    Ok((counts, maxima))
}

/// The loaded catalog must end, for every entity the tables were planned from, in the version
/// and definition the manifest gave; every version's definition must read.
fn check_catalog(slug: &str, m: &Manifest) -> Result<()> {
    let what = archive_ctx(slug);
    let sql = format!(
        "SELECT entity, version, status, definition, \
                version = max(version) OVER (PARTITION BY entity) \
         FROM {} ORDER BY entity, version",
        qualified(slug, tr::CATALOG)
    );
    let mut newest: BTreeMap<String, (i32, String, Value)> = BTreeMap::new();
    Spi::connect(|c| {
        let mut cursor = c.open_cursor(&sql, &[]);
        loop {
            let batch = cursor.fetch(1000)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let entity = r.get::<String>(1)?.unwrap_or_default();
                let version = r.get::<i32>(2)?.unwrap_or(0);
                let status = r.get::<String>(3)?.unwrap_or_default();
                let def = r.get::<JsonB>(4)?.map(|j| j.0);
                let is_newest = r.get::<bool>(5)?.unwrap_or(false);
                if validate_slug(SlugKind::Entity, &entity).is_err() || version < 1 {
                    raise(corrupt(format!(
                        "{what}: the catalog has a row of entity \"{}\", version {version}",
                        printable(&entity)
                    )));
                }
                match &def {
                    Some(d) if !d.is_null() => {
                        if let Err(e) = udm_core::definition::EntityDef::from_catalog(&entity, d) {
                            raise(corrupt(format!(
                                "{what}: version {version} of entity \"{entity}\" in the catalog cannot be read: {}",
                                e.message
                            )));
                        }
                    }
                    _ if status != "purged" => raise(corrupt(format!(
                        "{what}: version {version} of entity \"{entity}\" in the catalog has no definition"
                    ))),
                    _ => {}
                }
                if is_newest {
                    newest.insert(entity, (version, status, def.unwrap_or(Value::Null)));
                }
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(spi_err)?;
    for e in &m.entities {
        let want = if e.dropped { "dropped" } else { "active" };
        match newest.remove(&e.slug) {
            Some((v, status, def)) if v == e.version && status == want && def == e.definition => {}
            Some((v, status, _)) => {
                return Err(corrupt(format!(
                    "{what}: the catalog's newest version of entity \"{}\" ({v}, {status}) is not the one the manifest planned its tables from ({}, {want})",
                    e.slug, e.version
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "{what}: the catalog has no versions of entity \"{}\"",
                    e.slug
                )))
            }
        }
    }
    if let Some((entity, (v, status, _))) = newest.into_iter().find(|(_, (_, s, _))| s != "purged")
    {
        return Err(corrupt(format!(
            "{what}: the catalog's entity \"{entity}\" (version {v}, {status}) is not in the manifest"
        )));
    }
    Ok(())
}

/// Runs the steps that make an entity's artifacts, with errors naming tenant and entity.
fn run_entity_steps(t: &Tenant, entity: &str, steps: &[Step]) -> Result<()> {
    let what = format!("{}: entity \"{entity}\"", archive_ctx(&t.slug));
    let mut batch = String::new();
    let flush = |batch: &mut String| -> Result<()> {
        if !batch.is_empty() {
            catch_pg(
                || crate::spi::run(batch, &[]),
                |e| e.raise_with(&format!("{what}: its records break a rule or key")),
            )?;
            batch.clear();
        }
        Ok(())
    };
    for step in steps {
        match step {
            Step::Sql(sql) => {
                batch.push_str(sql);
                batch.push_str(";\n");
            }
            Step::RuleHolds { key, sql } => {
                flush(&mut batch)?;
                if let Some(id) = crate::spi::select_one::<String>(sql, &[])? {
                    let e = crate::triggers::rule_violation(&t.schema, entity, key);
                    return Err(UdmError {
                        message: format!("{what}: record {id} breaks a rule: {}", e.message),
                        ..e
                    }
                    .hint("the archive holds records udm's rules refuse (written with triggers off, or changed by hand): fix them in the source and export again"));
                }
            }
            _ => {}
        }
    }
    flush(&mut batch)
}

/// The users an archive carries: each must be a user the tenant knows; one that exists here
/// (same id and email) is the same person and stays as it is; an id or email that names
/// someone else here is refused, naming them. New ones are added with their password hash.
fn merge_users(t: &Tenant) -> Result<Value> {
    let what = archive_ctx(&t.slug);
    let users = t.catalog(tr::USERS);
    let conflict = Spi::connect(|c| {
        let mut rows = c.select(
            &format!(
                "SELECT s.id::text, s.email, a.id::text, a.email FROM {STAGED_USERS} s \
                   JOIN udm.app_user a ON a.id = s.id OR a.email = s.email \
                 WHERE NOT (a.id = s.id AND a.email = s.email) ORDER BY s.email LIMIT 1"
            ),
            None,
            &[],
        )?;
        match rows.next() {
            Some(r) => Ok::<_, pgrx::spi::Error>(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    })
    .map_err(spi_err)?;
    if let Some((id, email, here_id, here_email)) = conflict {
        let message = if id == here_id {
            format!(
                "{what}: the archive's user {id} is \"{}\", but this database's user {id} is \"{}\"",
                printable(&email),
                printable(&here_email)
            )
        } else {
            format!(
                "{what}: the archive's user \"{}\" ({id}) has the email of another user of this database ({here_id})",
                printable(&email)
            )
        };
        return Err(UdmError::new(SqlState::UniqueViolation, message).hint(
            "users are shared by the tenants of a database: the two databases know different people by this id or email. Rename or delete this database's user (udm_update_user, udm_delete_user) if it is not in use, or import into another database",
        ));
    }
    let bad = crate::spi::select_one::<String>(
        &format!(
            "SELECT coalesce(s.email, s.id::text, '?') FROM {STAGED_USERS} s \
             WHERE s.id IS NULL OR s.email IS NULL OR s.email <> lower(btrim(s.email)) OR position('@' IN s.email) < 2 \
                OR s.name IS NULL OR length(btrim(s.name)) NOT BETWEEN 2 AND 255 \
                OR s.password_hash IS NULL OR s.password_hash !~ '^\\$2[aby]?\\$[0-9]{{2}}\\$.{{53}}$' \
                OR s.created_at IS NULL OR s.updated_at IS NULL OR s.created_by IS NULL \
                OR NOT EXISTS (SELECT 1 FROM {users} u WHERE u.id = s.id AND u.erased_at IS NULL) \
             LIMIT 1"
        ),
        &[],
    )?;
    if let Some(u) = bad {
        return Err(corrupt(format!(
            "{what}: the archive's user \"{}\" is not a user udm would have (a known user of the tenant, with an email, a name and a bcrypt password hash)",
            printable(&u)
        )));
    }
    let dup = crate::spi::select_one::<String>(
        &format!(
            "SELECT email FROM {STAGED_USERS} GROUP BY email HAVING count(*) > 1 \
             UNION ALL SELECT id::text FROM {STAGED_USERS} GROUP BY id HAVING count(*) > 1 LIMIT 1"
        ),
        &[],
    )?;
    if let Some(d) = dup {
        return Err(corrupt(format!(
            "{what}: the archive has user \"{}\" twice",
            printable(&d)
        )));
    }
    let missing = crate::spi::select_one::<String>(
        &format!(
            "SELECT u.id::text FROM {users} u WHERE u.erased_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM {STAGED_USERS} s WHERE s.id = u.id) LIMIT 1"
        ),
        &[],
    )?;
    if let Some(id) = missing {
        return Err(corrupt(format!(
            "{what}: the tenant knows user {id}, whom the archive does not carry"
        )));
    }
    let added = crate::spi::select_one::<i64>(
        &format!(
            "WITH added AS (INSERT INTO udm.app_user (id, email, name, password_hash, created_at, updated_at, created_by) \
               SELECT s.id, s.email, btrim(s.name), s.password_hash, s.created_at, s.updated_at, s.created_by \
               FROM {STAGED_USERS} s WHERE NOT EXISTS (SELECT 1 FROM udm.app_user a WHERE a.id = s.id) \
               RETURNING 1) SELECT count(*) FROM added"
        ),
        &[],
    )?
    .unwrap_or(0);
    let staged =
        crate::spi::select_one::<i64>(&format!("SELECT count(*) FROM {STAGED_USERS}"), &[])?
            .unwrap_or(0);
    Ok(json!({"added": added, "existing": staged - added}))
}

/// What a finished import (or clone) knows of its users: the tenant's copy of each follows the
/// global user here, and the directory lists the tenant.
fn list_users(t: &Tenant) -> Result<()> {
    let users = t.catalog(tr::USERS);
    crate::spi::run(
        &format!(
            "UPDATE {users} u SET email = a.email, name = a.name FROM udm.app_user a \
             WHERE a.id = u.id AND u.erased_at IS NULL AND (u.email, u.name) IS DISTINCT FROM (a.email, a.name)"
        ),
        &[],
    )?;
    crate::spi::run(
        &format!(
            "INSERT INTO udm.user_tenant (user_id, tenant) \
             SELECT u.id, $1 FROM {users} u JOIN udm.app_user a ON a.id = u.id ON CONFLICT DO NOTHING"
        ),
        &[t.slug.as_str().into()],
    )
}

/// How long each step of a finish took, for `client_min_messages = debug1`.
struct Steps {
    slug: String,
    last: std::time::Instant,
}

impl Steps {
    fn done(&mut self, step: &str) {
        let now = std::time::Instant::now();
        pgrx::debug1!(
            "udm import of tenant \"{}\": {step} took {} ms",
            self.slug,
            (now - self.last).as_millis()
        );
        self.last = now;
    }
}

fn finish(imp: &Import) -> Result<Value> {
    let m = &imp.manifest;
    let slug = imp.slug.as_str();
    let what = archive_ctx(slug);
    let steps = std::cell::RefCell::new(Steps {
        slug: slug.to_string(),
        last: std::time::Instant::now(),
    });
    let step = |name: &str| steps.borrow_mut().done(name);
    let role = crate::tenants::new_tenant_role(slug);
    let counts = as_owner(|| {
        if let Some(l) = &imp.loader {
            let mut revoke = Vec::new();
            for s in &m.sections {
                if s.kind != Kind::GlobalUsers {
                    revoke.push(format!(
                        "REVOKE INSERT ON {} FROM {}",
                        qualified(slug, &s.name),
                        quote_ident(l)
                    ));
                }
            }
            crate::spi::run(&revoke.join(";\n"), &[])?;
        }
        let (counts, maxima) = count_sections(slug, m)?;
        step("counting the rows");
        if imp.counted {
            for (s, (_, n)) in m.sections.iter().zip(&counts) {
                if *n != s.rows {
                    return Err(corrupt(format!(
                        "{what}: section \"{}\" holds {n} rows, the manifest says {}: the archive is truncated or damaged",
                        s.name, s.rows
                    )));
                }
            }
        }
        check_catalog(slug, m)?;
        crate::tenants::register(
            slug,
            m.tenant.name.as_deref(),
            &role,
            m.tenant.created_at.as_deref(),
            m.tenant.created_by.as_deref(),
            m.tenant.access,
        )?;
        step("checking the catalog, registering");
        Ok::<_, UdmError>((counts, maxima))
    })?;
    let (counts, maxima) = counts;
    catalog::invalidate_registry();
    let t = catalog::tenant(slug)?
        .ok_or_else(|| UdmError::internal(format!("{what}: the tenant is not registered")))?;
    let users = as_owner(|| {
        if !m.batched() {
            // (a batched log's tables are made with their keys: one entry per chunk)
            catch_pg(
                || crate::spi::run(&crate::audit::audit_keys_sql(slug), &[]),
                |e| e.raise_with(&format!("{what}: its audit log")),
            )?;
        }
        step("the audit log's keys");
        let model = crate::query::definitions(&t)?;
        let ctx = ddl::Ctx {
            model: Some(&*model),
            ..t.ctx()
        };
        let mut plans = Vec::new();
        for e in &m.entities {
            plans.push((
                e.slug.as_str(),
                ddl::import_entity(&ctx, &e.def, e.dropped)
                    .map_err(|err| err.context(format!("{what}: entity \"{}\"", e.slug)))?,
            ));
        }
        // every primary key before any foreign key
        for (entity, plan) in &plans {
            let keys: Vec<Step> = plan.keys.iter().cloned().map(Step::Sql).collect();
            run_entity_steps(&t, entity, &keys)?;
        }
        step("primary keys");
        for (entity, plan) in &plans {
            run_entity_steps(&t, entity, &plan.after)?;
        }
        step("constraints, indexes, triggers, policies, grants, rules");
        if t.access && m.batched() {
            crate::spi::run(&crate::audit::batch::access_sql(slug), &[])?;
        } else if t.access {
            crate::spi::run(
                &udm_core::ddl::audit_access_sql(slug, crate::citus::installed()).join(";\n"),
                &[],
            )?;
        }
        let users = if m.sections.iter().any(|s| s.kind == Kind::GlobalUsers) {
            let u = merge_users(&t)?;
            crate::spi::run(&format!("DROP TABLE {STAGED_USERS}"), &[])?;
            u
        } else {
            json!({"added": 0, "existing": 0})
        };
        if t.relation(tr::USERS).is_some() {
            list_users(&t)?;
        }
        step("users");
        for (table, column) in tr::sequence_columns(&m.entities, m.batched()) {
            let given = m
                .sequences
                .iter()
                .find(|s| s.table == table && s.column == column)
                .map(|s| s.value);
            let have = maxima.get(&(table.clone(), column.clone())).copied();
            let Some(v) = given.into_iter().chain(have).max() else {
                continue;
            };
            crate::spi::run(
                "SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence($1, $2), $3, true)",
                &[
                    qualified(slug, &table).into(),
                    column.as_str().into(),
                    v.into(),
                ],
            )?;
        }
        Ok::<_, UdmError>(users)
    })?;
    catalog::invalidate(&t);
    catalog::invalidate_registry();
    let t = catalog::tenant(slug)?
        .ok_or_else(|| UdmError::internal(format!("{what}: the tenant is not registered")))?;
    if crate::citus::installed() {
        as_owner(|| crate::citus::lift_sequences(slug, t.schema_oid))?;
    }
    step("sequences");
    crate::crypto::check_carried_keys(&t)
        .map_err(|e| e.context(format!("{what}: its encryption keys")))?;
    let verified = crate::audit::history::verify_tenant(&t)?;
    step("verifying the audit chain");
    if verified["ok"] != json!(true) {
        let first = &verified["first_broken"];
        let problem = if first.is_null() {
            format!(
                "records whose current version has no audit row: {}",
                verified["missing_heads"]
            )
        } else {
            format!(
                "audit row {} (entity \"{}\", record {}): {}",
                first["audit_id"],
                first["entity"].as_str().unwrap_or(""),
                first["record_id"].as_str().unwrap_or(""),
                first["problem"].as_str().unwrap_or("")
            )
        };
        return Err(corrupt(format!(
            "{what}: its audit log does not verify: {problem}"
        )));
    }
    let sections: serde_json::Map<String, Value> =
        counts.into_iter().map(|(n, c)| (n, json!(c))).collect();
    Ok(json!({
        "tenant": slug,
        "schema": slug,
        "role": role,
        "from": {"tenant": m.tenant.slug, "database": m.source.get("database"), "udm_version": m.udm_version},
        "entities": m.entities.len(),
        "rows": sections,
        "users": users,
        "access": t.access,
        "audit": {"ok": true, "rows_checked": verified["rows_checked"], "records": verified["records"]},
    }))
}

// ------------------------------------------------------------------ clone

pub fn clone_tenant(source: &str, new_slug: &str, with_data: bool) -> Result<Value> {
    require_admin_or_owner("clone a tenant")?;
    refuse_pending("udm_clone_tenant")?;
    let t = catalog::tenant(source)?.ok_or_else(|| catalog::no_such_tenant(source))?;
    validate_slug(SlugKind::Tenant, new_slug)?;
    let content = if with_data {
        Content::All
    } else {
        Content::Definitions
    };
    let m = as_owner(|| {
        let mut m = build_manifest(&t, content, false)?;
        // a new tenant, made now; its users are this database's already
        m.tenant.created_at = None;
        m.tenant.created_by = None;
        m.sections.retain(|s| s.kind != Kind::GlobalUsers);
        create_bare(new_slug, &m, None)?;
        // one statement: every table is read in one snapshot
        let mut ctes = Vec::new();
        for s in &m.sections {
            let copy = match content {
                Content::All => s.kind != Kind::GlobalUsers,
                Content::Definitions => s.kind == Kind::Catalog || s.name == tr::ROLES,
            };
            if !copy {
                continue;
            }
            ctes.push(format!(
                "c{} AS (INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE {})",
                ctes.len(),
                qualified(new_slug, &s.name),
                column_list(s),
                section_query(&t, s)
            ));
        }
        catch_pg(
            || crate::spi::run(&format!("WITH {} SELECT 1", ctes.join(", ")), &[]),
            |e| e.raise_with(&format!("clone of tenant \"{source}\" as \"{new_slug}\"")),
        )?;
        Ok::<_, UdmError>(m)
    })?;
    let mut out = finish(&Import {
        slug: new_slug.to_string(),
        manifest: m.clone(),
        loader: None,
        counted: false,
    })?;
    if !with_data {
        // no sealed value came along: keys of its own, as defining its entities would make
        let t = catalog::tenant(new_slug)?.ok_or_else(|| catalog::no_such_tenant(new_slug))?;
        let sealed = m
            .entities
            .iter()
            .find(|e| !e.dropped && e.def.fields.iter().any(|f| f.encrypted_or_staged()));
        if let Some(e) = sealed {
            crate::crypto::ensure_keys(&t, &e.def).map_err(|err| {
                err.context(format!("clone of tenant \"{source}\" as \"{new_slug}\""))
            })?;
        }
    }
    out["cloned"] = json!(source);
    out["with_data"] = json!(with_data);
    Ok(out)
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
fn udm_export(slug: Option<&str>) -> JsonB {
    let slug = required(slug, "slug");
    JsonB(export(slug).or_raise())
}

#[pg_extern(volatile)]
fn udm_import_begin(manifest: Option<JsonB>, new_slug: default!(Option<&str>, "NULL")) -> JsonB {
    let manifest = required(manifest, "manifest");
    JsonB(import_begin(&manifest.0, new_slug).or_raise())
}

#[pg_extern(volatile)]
fn udm_import_finish(slug: Option<&str>) -> JsonB {
    let slug = required(slug, "slug");
    JsonB(import_finish(slug).or_raise())
}

#[pg_extern(volatile)]
fn udm_clone_tenant(
    source: Option<&str>,
    new_slug: Option<&str>,
    with_data: default!(Option<bool>, false),
) -> JsonB {
    let source = required(source, "source");
    let new_slug = required(new_slug, "new_slug");
    let with_data = required(with_data, "with_data");
    JsonB(clone_tenant(source, new_slug, with_data).or_raise())
}
