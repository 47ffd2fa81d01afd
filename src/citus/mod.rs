//! Citus: udm on a Citus coordinator, where each tenant schema is a distributed schema (Citus's
//! schema-based sharding) living whole on one worker node, and the global tables (`udm.tenant`,
//! `udm.app_user`, `udm.user_tenant`, `udm.node_key`) are reference tables every node reads.
//! What udm's coordinator hands to its triggers on the workers: the selection (`selection`),
//! signed claims (`claims`), and the events no trigger writes (`events`).
//!
//! Without the `citus` extension in the database nothing here changes what udm does: every entry
//! point first asks `installed()`.
//!
//! What Citus needs from udm (see the README's "Scaling out with Citus"):
//! - Citus distributes only tables created by top-level statements; a `CREATE TABLE` udm runs
//!   through SPI stays a local coordinator table. So a tenant's schema is built with
//!   `citus.enable_schema_based_sharding` off and then made a distributed schema
//!   (`citus_schema_distribute`), and every table udm creates later in a distributed schema is
//!   distributed at once into the schema's colocation group (`create_distributed_table(t, NULL,
//!   colocate_with => '<schema>._udm_entity')`).
//! - Citus sends the whole SPI query string of a DDL statement to the workers, and a string of
//!   several statements cannot be sent: udm's DDL batches are run one statement at a time.
//! - Triggers fire on the worker against the shard (`<table>_<shard id>`): storage-level writes
//!   must go to the shard's relation, not to the shell table of the same name.

use crate::error::{spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::{CStr, CString};
use udm_core::ident::{quote_ident, quote_literal, sql_call};

pub mod claims;
pub mod constraints;
pub mod copy_errors;
pub mod events;
pub mod selection;

thread_local! {
    /// Whether `citus` is installed, as found in one transaction (its local id, and the answer).
    static INSTALLED: Cell<Option<(u32, bool)>> = const { Cell::new(None) };
    /// Whether Citus is loaded in this backend, once found (never in the postmaster: udm's
    /// `_PG_init` does not ask, and Citus may be loaded after udm).
    static LOADED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether Citus is loaded in this backend (it has the `citus.version` setting). Citus works
/// only from `shared_preload_libraries`, so the answer cannot change while the backend runs:
/// it is looked up once.
pub fn loaded() -> bool {
    LOADED.with(|l| {
        l.get().unwrap_or_else(|| {
            let v = unsafe {
                !pg_sys::GetConfigOption(c"citus.version".as_ptr(), true, false).is_null()
            };
            l.set(Some(v));
            v
        })
    })
}

/// Whether the `citus` extension is installed in this database (looked up once per transaction).
/// In a backend that has not loaded Citus it is not installed, and nothing is looked up.
pub fn installed() -> bool {
    if !loaded() {
        return false;
    }
    crate::guc::once_per_transaction(&INSTALLED, || unsafe {
        pg_sys::IsTransactionState()
            && pg_sys::get_extension_oid(c"citus".as_ptr(), true) != pg_sys::InvalidOid
    })
}

/// The settings udm's own work runs with on Citus (`security::as_owner` sets them with its
/// others): udm's triggers may be created on distributed tables (Citus calls them unsafe: they
/// fire on the worker, against the shard; udm's triggers are written for that), and a schema udm
/// creates does not become a distributed schema before its tables are in it (`distribute_schema`
/// does that once they are).
pub const SETTINGS: [(&str, &str); 2] = [
    ("citus.enable_unsafe_triggers", "on"),
    ("citus.enable_schema_based_sharding", "off"),
];

/// One statement of a batch: its text, the table it creates when it is a `CREATE TABLE`, and
/// the tables of a column-level `GRANT` / `REVOKE`.
struct Statement {
    sql: String,
    creates: Option<String>,
    column_grant: Vec<(String, String)>,
    /// `ALTER TABLE schema.table RENAME CONSTRAINT old TO new`: (schema, table, old, new).
    constraint_rename: Option<[String; 4]>,
}

/// A C string of PostgreSQL's (a name in a parse tree, a setting's value) as an owned string;
/// None for a NULL pointer.
pub(super) fn owned_str(p: *const std::os::raw::c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The statements of `sql` (PostgreSQL's own parser splits them), each with the table it creates
/// (qualified, quoted) when it is a `CREATE TABLE`.
fn split(sql: &str) -> Result<Vec<Statement>> {
    let c = CString::new(sql).map_err(|_| UdmError::internal("SQL with a NUL byte"))?;
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    unsafe {
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list.is_null() {
            return Ok(out);
        }
        for i in 0..(*list).length as usize {
            let raw = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::RawStmt;
            let start = ((*raw).stmt_location.max(0) as usize).min(bytes.len());
            let end = match (*raw).stmt_len {
                0 => bytes.len(),
                n => (start + n as usize).min(bytes.len()),
            };
            let text = String::from_utf8_lossy(&bytes[start..end]).into_owned();
            let node = (*raw).stmt;
            let name = |p: *mut std::os::raw::c_char| owned_str(p);
            let creates = if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_CreateStmt {
                let rv = (*(node as *mut pg_sys::CreateStmt)).relation;
                match (name((*rv).schemaname), name((*rv).relname)) {
                    (Some(s), Some(r)) => Some(format!("{}.{}", quote_ident(&s), quote_ident(&r))),
                    (None, Some(r)) => Some(quote_ident(&r)),
                    _ => None,
                }
            } else {
                None
            };
            let mut column_grant = Vec::new();
            if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_GrantStmt {
                let g = node as *mut pg_sys::GrantStmt;
                let nodes = |l: *mut pg_sys::List| -> Vec<*mut pg_sys::Node> {
                    if l.is_null() {
                        return Vec::new();
                    }
                    (0..(*l).length as usize)
                        .map(|i| (*(*l).elements.add(i)).ptr_value as *mut pg_sys::Node)
                        .collect()
                };
                let by_column = nodes((*g).privileges).into_iter().any(|p| {
                    (*p).type_ == pg_sys::NodeTag::T_AccessPriv
                        && !(*(p as *mut pg_sys::AccessPriv)).cols.is_null()
                });
                if by_column
                    && (*g).objtype == pg_sys::ObjectType::OBJECT_TABLE
                    && (*g).targtype == pg_sys::GrantTargetType::ACL_TARGET_OBJECT
                {
                    for o in nodes((*g).objects) {
                        if (*o).type_ != pg_sys::NodeTag::T_RangeVar {
                            continue;
                        }
                        let rv = o as *mut pg_sys::RangeVar;
                        if let (Some(s), Some(r)) = (name((*rv).schemaname), name((*rv).relname)) {
                            column_grant.push((s, r));
                        }
                    }
                }
            }
            let mut constraint_rename = None;
            if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_RenameStmt {
                let r = node as *mut pg_sys::RenameStmt;
                if (*r).renameType == pg_sys::ObjectType::OBJECT_TABCONSTRAINT
                    && !(*r).relation.is_null()
                {
                    let rv = (*r).relation;
                    if let (Some(s), Some(t), Some(o), Some(n)) = (
                        name((*rv).schemaname),
                        name((*rv).relname),
                        name((*r).subname),
                        name((*r).newname),
                    ) {
                        constraint_rename = Some([s, t, o, n]);
                    }
                }
            }
            out.push(Statement {
                sql: text,
                creates,
                column_grant,
                constraint_rename,
            });
        }
    }
    Ok(out)
}

/// Runs a batch of statements on Citus: one at a time (Citus propagates a DDL statement to the
/// workers by its query string, which must then hold that statement only), and a table created in
/// a distributed schema is distributed at once, into the schema's colocation group.
pub fn run_batch(sql: &str) -> Result<()> {
    let statements = split(sql)?;
    if statements.len() <= 1
        && statements.iter().all(|s| {
            s.creates.is_none() && s.column_grant.is_empty() && s.constraint_rename.is_none()
        })
    {
        return Spi::run(sql).map_err(spi_err);
    }
    for s in statements {
        if let Some([schema, table, old, new]) = &s.constraint_rename {
            // Citus refuses to propagate a constraint's rename: the coordinator's shell gets it
            // here, the tenant's node after it
            without_propagation(|| Spi::run(&s.sql).map_err(spi_err))?;
            rename_constraint_on_node(schema, table, old, new)?;
        } else if s.column_grant.is_empty() {
            Spi::run(&s.sql).map_err(spi_err)?;
        } else {
            // Citus refuses to propagate a column-level GRANT: the coordinator's shell gets it
            // here, the tenant's node after it
            without_propagation(|| Spi::run(&s.sql).map_err(spi_err))?;
            for (schema, table) in &s.column_grant {
                column_grants_to_node(schema, table)?;
            }
        }
        if let Some(table) = s.creates {
            distribute_table(&table)?;
        }
    }
    Ok(())
}

/// Runs `f` with `citus.enable_ddl_propagation` off: its DDL changes this node only.
fn without_propagation<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    with_setting("citus.enable_ddl_propagation", "off", f)
}

/// Runs `f` with a setting changed for `f` only, as a function's `SET` clause does
/// (`security::set_saved`); an ERROR restores it with the (sub)transaction abort.
fn with_setting<R>(name: &str, value: &str, f: impl FnOnce() -> R) -> R {
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        crate::access::security::set_saved(name, value);
        let r = f();
        pg_sys::AtEOXact_GUC(true, nest);
        r
    }
}

/// Gives the tenant's node the column-level SELECT privileges the coordinator's shell of a
/// tenant table has (a password field's column is left out of them): for each role holding
/// some, `udm.citus_column_grant` on the node, as a query of the tenant's catalog, which Citus
/// sends there in this transaction. Citus copies only table-level privileges to the shards it
/// makes, so after a move the new node gets them again from here. (A table Citus does not
/// distribute, of a tenant made before Citus was installed, has them on the coordinator only.)
pub fn column_grants_to_node(schema: &str, table: &str) -> Result<()> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let grants: Vec<(String, Vec<String>)> = Spi::connect(|c| {
        let rows = c.select(
            "SELECT pg_catalog.pg_get_userbyid(a.grantee)::text, \
                    array_agg(att.attname::text ORDER BY att.attnum) \
             FROM pg_catalog.pg_attribute att, pg_catalog.aclexplode(att.attacl) a \
             WHERE att.attrelid = pg_catalog.to_regclass($1) AND att.attnum > 0 \
               AND NOT att.attisdropped AND a.privilege_type = 'SELECT' AND a.grantee <> 0 \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p \
                           WHERE p.logicalrelid = att.attrelid) \
             GROUP BY a.grantee ORDER BY 1",
            None,
            &[qualified.as_str().into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?;
    let sql = on_node_sql(schema, "udm.citus_column_grant($1, $2, $3, $4)");
    for (role, columns) in grants {
        Spi::run_with_args(
            &sql,
            &[
                schema.into(),
                table.into(),
                role.as_str().into(),
                columns.into(),
            ],
        )
        .map_err(spi_err)?;
    }
    Ok(())
}

/// Renames a constraint of the tenant table `table` on the tenant's node too (its shards and
/// the worker's copy of the table: `udm.citus_rename_constraint`, as a query of the tenant's
/// catalog, which Citus sends there in this transaction). A table Citus does not distribute, of
/// a tenant made before Citus was installed, has it on the coordinator only.
fn rename_constraint_on_node(schema: &str, table: &str, old: &str, new: &str) -> Result<()> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let distributed = crate::spi::select_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition \
                        WHERE logicalrelid = pg_catalog.to_regclass($1))",
        &[qualified.as_str().into()],
    )?
    .unwrap_or(false);
    if !distributed {
        return Ok(());
    }
    Spi::run_with_args(
        &on_node_sql(schema, "udm.citus_rename_constraint($1, $2, $3, $4)"),
        &[schema.into(), table.into(), old.into(), new.into()],
    )
    .map_err(spi_err)
}

/// After a move: the column-level privileges of every table of the tenant's schema, again on
/// its new node (`column_grants_to_node`).
fn column_grants_of_schema_to_node(schema_oid: pg_sys::Oid, schema: &str) -> Result<()> {
    let tables: Vec<String> = crate::spi::select_column(
        "SELECT DISTINCT c.relname::text FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_attribute att ON att.attrelid = c.oid \
         WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'p') AND att.attacl IS NOT NULL \
         ORDER BY 1",
        &[schema_oid.into()],
    )?;
    for table in tables {
        column_grants_to_node(schema, &table)?;
    }
    Ok(())
}

/// Distributes a new table of a distributed schema into the schema's colocation group (the one
/// of its catalog table `_udm_entity`); a table elsewhere, or distributed already, is left as it is.
fn distribute_table(table: &str) -> Result<()> {
    // a tenant whose schema is not distributed (made before Citus was installed, or taken out of
    // Citus by hand): its new table would stay a local table of the coordinator
    let apart = crate::spi::select_one::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = pg_catalog.to_regclass($1) \
           AND EXISTS (SELECT 1 FROM udm.tenant t WHERE t.schema_name = n.nspname) \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_schema d WHERE d.schemaid = n.oid)",
        &[table.into()],
    )?;
    if let Some(schema) = apart {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!("udm on Citus: tenant schema \"{schema}\" is not a distributed schema, so its new table {table} would stay a local table of the coordinator"),
        )
        .detail("on Citus every table of a tenant must be in the tenant's distributed schema (pg_dist_schema)")
        .hint(format!(
            "make the tenant's schema distributed first: SELECT citus_schema_distribute({})",
            quote_literal(&quote_ident(&schema))
        )));
    }
    Spi::run_with_args(
        "SELECT pg_catalog.create_distributed_table(c.oid::regclass, NULL, \
                  colocate_with => pg_catalog.format('%I.%I', n.nspname, '_udm_entity')) \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = pg_catalog.to_regclass($1) AND c.relname <> '_udm_entity' \
           AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p' \
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_schema d WHERE d.schemaid = n.oid) \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = c.oid)",
        &[table.into()],
    )
    .map_err(spi_err)
}

/// The sequences of a tenant schema's tables: (sequence, table, column), by name.
fn tenant_sequences(schema_oid: pg_sys::Oid) -> Result<Vec<(String, String, String)>> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT s.relname::text, tc.relname::text, a.attname::text \
             FROM pg_catalog.pg_class s \
             JOIN pg_catalog.pg_depend d ON d.objid = s.oid AND d.classid = 'pg_catalog.pg_class'::regclass \
               AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i') \
             JOIN pg_catalog.pg_class tc ON tc.oid = d.refobjid AND tc.relnamespace = s.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = tc.oid AND a.attnum = d.refobjsubid \
             WHERE s.relkind = 'S' AND s.relnamespace = $1 ORDER BY 1",
            None,
            &[schema_oid.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// After a tenant's rows came in from elsewhere (an import, a clone): on the tenant's node, each
/// sequence of its tables goes above the largest value its table holds, which may come from
/// another node's range (each node's copy of a sequence has its own). The query of the table
/// that does it (`udm.citus_lift_sequence`) is one Citus sends to that node, in this
/// transaction. (A sequence's setval on the coordinator reaches no worker.)
pub fn lift_sequences(schema: &str, schema_oid: pg_sys::Oid) -> Result<()> {
    for (seq, table, column) in tenant_sequences(schema_oid)? {
        let col = quote_ident(&column);
        Spi::run(&format!(
            "SELECT udm.citus_lift_sequence({}, max({col})::bigint) FROM {}.{} HAVING max({col}) IS NOT NULL",
            quote_literal(&format!("{}.{}", quote_ident(schema), quote_ident(&seq))),
            quote_ident(schema),
            quote_ident(&table)
        ))
        .map_err(spi_err)?;
    }
    Ok(())
}

/// Makes the tables a tenant otherwise gets on first use (its locks, its subscriptions and
/// consumers) in a new tenant's schema, before it is distributed. On first use they would be made
/// by DDL in the middle of a caller's transaction, which Citus refuses once the tenant's tables
/// were read there over two connections (the caller's and udm's owner's: "cannot perform DDL on
/// placement ... read over multiple connections").
pub fn make_first_use_tables(schema: &str, role: &str) -> Result<()> {
    crate::spi::run(
        &format!(
            "{}\n{}",
            crate::access::locks::table_sql(schema, role),
            crate::audit::events::tables_sql(schema, role)
        ),
        &[],
    )
}

/// Makes a new tenant's schema a distributed schema: its tables (catalog and audit log) move
/// together to one worker; then checks that every table of it is there.
pub fn distribute_schema(schema: &str) -> Result<()> {
    Spi::run_with_args(
        "SELECT pg_catalog.citus_schema_distribute($1::regnamespace)",
        &[quote_ident(schema).into()],
    )
    .map_err(spi_err)?;
    require_colocated(schema)
}

/// The tables of a tenant schema that are not in the schema's colocation group (local tables of
/// the coordinator, or distributed apart), by name.
pub fn not_colocated(schema: &str) -> Result<Vec<String>> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_dist_schema d ON d.schemaid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = c.oid \
             WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p') \
               AND p.colocationid IS DISTINCT FROM d.colocationid \
             ORDER BY 1",
            None,
            &[quote_ident(schema).into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.get::<String>(1)?.unwrap_or_default());
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// Refuses (0A000) a tenant schema whose tables are not all in its colocation group: on Citus,
/// such a table would stay a local table of the coordinator (or live on another node than the
/// tenant), silently out of reach of the tenant's triggers and of moves.
pub fn require_colocated(schema: &str) -> Result<()> {
    let apart = not_colocated(schema)?;
    if apart.is_empty() {
        return Ok(());
    }
    Err(UdmError::new(
        SqlState::FeatureNotSupported,
        format!(
            "udm on Citus: the table(s) {} of tenant schema \"{schema}\" would not be distributed with the tenant",
            apart.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
        ),
    )
    .detail("on Citus every table of a tenant must be in the tenant's distributed schema (pg_dist_schema), colocated with its catalog table _udm_entity")
    .hint("a tenant made before Citus was installed is not distributed; tables created in a tenant schema outside udm are not either"))
}

/// Where the rows of the tenant table `table` are, for storage-level reads and writes, on Citus:
/// `Some(Some(relation))` when this node holds its shard (`relation`: `name`, the table or one of
/// its indexes, as the shard's `<name>_<shard id>`), `Some(None)` when it is a Citus table whose
/// shard is on another node (this node's table of that name is only Citus's shell, whose heap no
/// query reads or writes), None when it is not a Citus table (or there is no Citus).
pub fn shard_relation(
    schema_oid: pg_sys::Oid,
    table: &str,
    name: &str,
) -> Option<Option<pg_sys::Oid>> {
    if !installed() {
        return None;
    }
    let table_oid = relation_by_name(schema_oid, table)?;
    let shard = crate::spi::select_one::<i64>(
        "SELECT s.shardid FROM pg_catalog.pg_dist_shard s \
         WHERE s.logicalrelid = $1 ORDER BY s.shardid LIMIT 1",
        &[table_oid.into()],
    )
    .ok()
    .flatten()?;
    Some(relation_by_name(schema_oid, &format!("{name}_{shard}")))
}

/// The statement that runs `call` (a `udm.citus_*` function and its parameters) on the node of the
/// tenant whose schema is `schema`, in this transaction, over the current user's connection to
/// it: a query of the tenant's catalog table, which Citus sends whole to that node (the
/// aggregate gives one row even for a tenant without entities).
pub fn on_node_sql(schema: &str, call: &str) -> String {
    format!(
        "SELECT {call} FROM (SELECT count(*) FROM {}.\"_udm_entity\") AS one",
        quote_ident(schema)
    )
}

/// Whether the tenant's audit log is on another node (a Citus coordinator, the tenant on a
/// worker): what udm appends to it outside a trigger goes there (`events::record_on_node`).
pub fn log_elsewhere(t: &crate::catalog::Tenant) -> bool {
    !on_worker()
        && matches!(
            shard_relation(t.schema_oid, "_udm_audit", "_udm_audit"),
            Some(None)
        )
}

fn relation_by_name(schema_oid: pg_sys::Oid, name: &str) -> Option<pg_sys::Oid> {
    let c = CString::new(name).ok()?;
    let oid = unsafe { pg_sys::get_relname_relid(c.as_ptr(), schema_oid) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The relation a storage-level write of the tenant table `table` (or a read of `name`, the
/// table or one of its indexes) uses on this node: the shard where this node holds it (a trigger
/// firing on a worker), else the relation of that name.
pub fn local_relation(schema_oid: pg_sys::Oid, table: &str, name: &str) -> Option<pg_sys::Oid> {
    match shard_relation(schema_oid, table, name) {
        Some(Some(shard)) => Some(shard),
        _ => relation_by_name(schema_oid, name),
    }
}

thread_local! {
    /// Whether this backend's node is a Citus worker, once found (a node's group does not change
    /// while it runs).
    static ON_WORKER: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether this is a Citus worker node (its group is not the coordinator's, 0).
pub fn on_worker() -> bool {
    if !installed() {
        return false;
    }
    if let Some(v) = ON_WORKER.with(|c| c.get()) {
        return v;
    }
    let Ok(found) = crate::spi::select_one::<bool>(
        "SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group",
        &[],
    ) else {
        return false;
    };
    let v = found.unwrap_or(false);
    ON_WORKER.with(|c| c.set(Some(v)));
    v
}

thread_local! {
    /// On a worker: the distributed transaction's time, for the local transaction it was read in.
    static STAMP: Cell<Option<(u32, Option<i64>)>> = const { Cell::new(None) };
}

/// On a worker, inside a transaction the coordinator started: the time Citus gave that
/// distributed transaction (`get_current_transaction_id()`'s stamp, taken on the coordinator's
/// clock when the transaction first reached a worker), as a `TimestampTz`. Every remote command
/// is a statement of its own on the worker, so the statement's start differs between the
/// statements of one udm call; this time does not. None elsewhere, or on a worker outside a
/// distributed transaction (someone connected to it directly).
pub fn distributed_stamp() -> Option<i64> {
    if !on_worker() {
        return None;
    }
    crate::guc::once_per_transaction(&STAMP, || {
        // microseconds since 2000-01-01, PostgreSQL's epoch (extract gives an exact numeric)
        crate::spi::select_one::<i64>(
            "SELECT ((extract(epoch FROM transaction_stamp) - 946684800) * 1000000)::int8 \
             FROM pg_catalog.get_current_transaction_id() WHERE transaction_number <> 0",
            &[],
        )
        .ok()
        .flatten()
    })
}

/// Runs `f`, a udm helper that a row-level security policy calls, with
/// `citus.allow_nested_distributed_execution` on (for `f` only). On Citus a policy is evaluated
/// on the tenant's worker, inside the query of a shard, and Citus refuses the queries such a
/// function runs there ("cannot execute a distributed query from a query on a shard") because a
/// function pushed to a node might read other nodes' data outside the transaction. udm's helpers
/// read only what is on that node: the tenant's own tables (colocated, all on the tenant's
/// worker) and the reference tables (a copy on every node), through Citus's local execution in the
/// same transaction. Without Citus, `f` runs as it is.
pub fn nested<R>(f: impl FnOnce() -> R) -> R {
    if !installed() {
        return f();
    }
    with_setting("citus.allow_nested_distributed_execution", "on", f)
}

/// The text argument of `function` (`udm.citus_*`, a query udm sends to a tenant's Citus worker,
/// where `sent_by`: "udm sends it", ...), named `arg` in errors: 22004 when it is NULL, then
/// 0A000 anywhere but on a worker.
///
/// # Safety
/// `fcinfo` is the call's, with at least one argument.
pub unsafe fn node_call_arg(
    fcinfo: pg_sys::FunctionCallInfo,
    function: &str,
    arg: &str,
    sent_by: &str,
) -> Result<String> {
    let Some(value) = (unsafe { pgrx::fcinfo::pg_getarg::<String>(fcinfo, 0) }) else {
        return Err(UdmError::new(
            SqlState::NullValueNotAllowed,
            format!("{function}: the {arg} may not be NULL"),
        ));
    };
    if !on_worker() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!("{function} runs on a Citus worker only, where {sent_by}"),
        ));
    }
    Ok(value)
}

/// The error (0A000) of a udm function called on a worker: Citus runs a statement that reads a
/// tenant's table whole on the tenant's worker, udm functions in it included, where what they
/// do (definitions, records, the audit) would not be done as on the coordinator. None when this
/// is not a Citus worker.
pub fn on_worker_refusal() -> Option<UdmError> {
    on_worker().then(|| {
        UdmError::new(
            SqlState::FeatureNotSupported,
            "udm on Citus: a udm function ran on a worker node",
        )
        .detail("Citus runs a statement that reads a tenant's table on the tenant's worker node, whole, with the udm functions it calls (e.g. udm_get('product', (SELECT id FROM shop.product ...))); udm's functions work on the coordinator only")
        .hint("call udm functions with values, not with sub-selects of tenant tables: read the value first, then pass it")
    })
}

/// A constraint or index name as udm made it: on Citus, errors raised on a worker name the
/// shard's copy, `<name>_<shard id>`.
pub fn unsharded_name(name: &str) -> String {
    if installed() {
        if let Some((base, id)) = name.rsplit_once('_') {
            if !base.is_empty() && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Where a tenant's tables are: the node (name, port) holding its catalog's shard.
fn tenant_node(schema: &str) -> Result<Option<(String, i32)>> {
    Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT n.nodename::text, n.nodeport FROM pg_catalog.pg_dist_shard s \
               JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid \
               JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid \
             WHERE s.logicalrelid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1::text, '_udm_entity')) \
             ORDER BY n.nodeid LIMIT 1",
            Some(1),
            &[schema.into()],
        )?;
        match rows.next() {
            Some(r) => Ok::<_, pgrx::spi::Error>(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i32>(2)?.unwrap_or(0),
            ))),
            None => Ok(None),
        }
    })
    .map_err(spi_err)
}

/// How often `udm_move_tenant` tries again when Citus has not yet dropped a shard an earlier move
/// left behind (waiting 0.5 s, 1 s, 1.5 s, 2 s).
const LEFTOVER_TRIES: i64 = 4;

/// `udm_move_tenant`: moves a tenant's distributed schema, every table of it, to another worker
/// node (`citus_schema_move`), then lets the tenant's sequences on the new node continue above
/// the values the old node gave (each node's copy of a sequence has its own range, and the audit
/// log's ids must keep growing for its chains, history and events). udm admins only.
///
/// `mode` is Citus's `shard_transfer_mode`: `block_writes` only (writes to the tenant wait for the
/// copy; reads go on). Logical replication ('auto', 'force_logical') is refused: a udm write made
/// while such a move switched nodes was seen to be lost.
pub fn move_tenant(
    slug: &str,
    node: &str,
    port: i32,
    mode: Option<&str>,
) -> Result<serde_json::Value> {
    crate::access::security::require_admin(&format!(
        "move tenant \"{}\"",
        udm_core::ident::printable(slug)
    ))?;
    if !installed() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "cannot move tenant \"{}\": Citus is not installed in this database",
                udm_core::ident::printable(slug)
            ),
        )
        .hint("udm_move_tenant moves a tenant between the worker nodes of a Citus cluster; on a single node, udm_export and udm_import move a tenant to another database"));
    }
    let t = crate::catalog::tenant(slug)?.ok_or_else(|| crate::catalog::no_such_tenant(slug))?;
    let distributed = crate::spi::select_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_schema WHERE schemaid = $1)",
        &[t.schema_oid.into()],
    )?
    .unwrap_or(false);
    if !distributed {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "cannot move tenant \"{}\": its schema \"{}\" is not a distributed schema",
                t.slug, t.schema
            ),
        )
        .hint(format!(
            "a tenant made before Citus was installed is not distributed; make it so first: SELECT citus_schema_distribute({})",
            quote_literal(&quote_ident(&t.schema))
        )));
    }
    let known = crate::spi::select_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node \
           WHERE nodename = $1 AND nodeport = $2 AND isactive AND noderole = 'primary' \
             AND shouldhaveshards)",
        &[node.into(), port.into()],
    )?
    .unwrap_or(false);
    if !known {
        return Err(UdmError::new(
            SqlState::UndefinedObject,
            format!(
                "cannot move tenant \"{}\" to {}:{port}: no such active worker node",
                t.slug,
                udm_core::ident::printable(node)
            ),
        )
        .hint("SELECT nodename, nodeport FROM pg_dist_node WHERE shouldhaveshards lists the nodes tenants can live on"));
    }
    // Only block_writes: with logical replication ('auto', 'force_logical') a udm write made
    // during the move's final switch was seen to be lost (udm_update committed on the old node and
    // missing on the new one; plain UPDATEs were not lost), so udm refuses those modes.
    let mode = match mode {
        None | Some("block_writes") => "block_writes".to_string(),
        Some(m @ ("auto" | "force_logical")) => {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "cannot move tenant \"{}\" with transfer mode \"{m}\": udm moves tenants with block_writes only",
                    t.slug
                ),
            )
            .detail("with logical replication a udm write made while the move switches nodes can be lost (seen with udm_update)")
            .hint(format!(
                "omit the mode: {}",
                sql_call("udm_move_tenant", &[&t.slug, node, &port.to_string()])
            )))
        }
        Some(other) => {
            return Err(UdmError::new(
                SqlState::InvalidParameterValue,
                format!(
                    "cannot move tenant \"{}\": unknown transfer mode \"{}\"",
                    t.slug,
                    udm_core::ident::printable(other)
                ),
            )
            .hint("mode is 'block_writes' (the default, NULL)"))
        }
    };
    let from = tenant_node(&t.schema)?;
    if from.as_ref().is_some_and(|(n, p)| n == node && *p == port) {
        return Ok(
            serde_json::json!({"tenant": t.slug, "moved": false, "node": node, "port": port}),
        );
    }
    let started = std::time::Instant::now();
    // Citus first drops what earlier moves left behind, and refuses to move while a shard of the
    // tenant is still among those leftovers; that happens when its maintenance daemon is dropping
    // them at the same moment (seen right after a move). Nothing was moved then: tried again.
    let mut tries = 0;
    loop {
        let moved = crate::error::in_subtransaction(|| {
            Spi::run_with_args(
                "SELECT pg_catalog.citus_schema_move($1::regnamespace, $2, $3, shard_transfer_mode => $4::citus.shard_transfer_mode)",
                &[quote_ident(&t.schema).into(), node.into(), port.into(), mode.as_str().into()],
            )
        });
        match moved {
            Ok(r) => break r.map_err(spi_err)?,
            Err(e) if e.message.contains("leftover from the previous move") => {
                if tries == LEFTOVER_TRIES {
                    return Err(UdmError::new(
                        SqlState::ObjectNotInPrerequisiteState,
                        format!(
                            "cannot move tenant \"{}\" yet: a shard of it that an earlier move left on a node could not be dropped ({} tries in {} s)",
                            t.slug,
                            tries + 1,
                            started.elapsed().as_secs()
                        ),
                    )
                    .detail(format!("Citus: {}", e.message))
                    .hint("a session still using that shard holds it; try again once it ends (pg_dist_cleanup lists what Citus has left to drop, CALL citus_cleanup_orphaned_resources() drops it now)"));
                }
                tries += 1;
                unsafe {
                    pg_sys::pg_usleep(500_000 * tries);
                    pg_sys::check_for_interrupts!();
                }
            }
            Err(e) => e.raise(),
        }
    }
    let moved_ms = started.elapsed().as_millis() as i64;
    // Citus made the new node's shards with table-level privileges only
    column_grants_of_schema_to_node(t.schema_oid, &t.schema)?;
    // the sequences of the tenant's tables, on the new node: above every value the table holds
    for (seq, table, column) in tenant_sequences(t.schema_oid)? {
        let top = crate::spi::select_one::<i64>(
            &format!(
                "SELECT max({}::bigint) FROM {}.{}",
                quote_ident(&column),
                quote_ident(&t.schema),
                quote_ident(&table)
            ),
            &[],
        )?;
        let Some(top) = top else { continue };
        // the command runs on the new node only (Citus's per-node range of the sequence there is
        // lifted: one node at a time uses a tenant's sequence); its names and values are
        // formatted by format() (%I, %L, %s of a bigint), never by hand
        let failed = crate::spi::select_one::<String>(
            "SELECT r.result FROM pg_catalog.master_run_on_worker(ARRAY[$1::text], ARRAY[$2::int], \
               ARRAY[pg_catalog.format('SET citus.enable_ddl_propagation = off; \
                 ALTER SEQUENCE %s MAXVALUE 9223372036854775807; \
                 SELECT pg_catalog.setval(%L::regclass, greatest(%s::bigint, \
                 (SELECT coalesce(last_value, start_value) FROM pg_catalog.pg_sequences \
                  WHERE schemaname = %L AND sequencename = %L)))', \
                 pg_catalog.format('%I.%I', $3::text, $4::text), pg_catalog.format('%I.%I', $3::text, $4::text), \
                 $5::bigint, $3::text, $4::text)], false) r \
             WHERE NOT r.success",
            &[node.into(), port.into(), t.schema.as_str().into(), seq.as_str().into(), top.into()],
        )?;
        if let Some(e) = failed {
            return Err(UdmError::new(
                SqlState::Internal,
                format!(
                    "tenant \"{}\" moved to {}:{port}, but its sequence \"{seq}\" could not be set there: {e}",
                    t.slug,
                    udm_core::ident::printable(node)
                ),
            )
            .hint(format!(
                "on that node, run SELECT setval({}, {top}) before writing to the tenant",
                quote_literal(&format!("{}.{}", quote_ident(&t.schema), quote_ident(&seq)))
            )));
        }
    }
    Ok(serde_json::json!({
        "tenant": t.slug,
        "moved": true,
        "from": from.map(|(n, p)| format!("{n}:{p}")),
        "to": format!("{node}:{port}"),
        "mode": mode,
        "ms": moved_ms,
    }))
}

#[pg_extern(volatile)]
fn udm_move_tenant(
    slug: Option<&str>,
    node_name: Option<&str>,
    node_port: Option<i32>,
    mode: default!(Option<&str>, "NULL"),
) -> JsonB {
    let (Some(slug), Some(node), Some(port)) = (slug, node_name, node_port) else {
        crate::error::raise(
            UdmError::new(
                SqlState::NullValueNotAllowed,
                "udm_move_tenant: slug, node_name and node_port must not be null",
            )
            .hint("udm_move_tenant('<tenant>', '<worker host>', <worker port>)"),
        );
    };
    JsonB(move_tenant(slug, node, port, mode).or_raise())
}
