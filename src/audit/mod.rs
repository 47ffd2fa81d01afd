//! The native audit: a Rust trigger on every entity and junction table records every change,
//! whatever wrote it (udm functions, plain INSERT/UPDATE/DELETE, COPY, cascades), in the tenant's
//! own append-only `_udm_audit` table, in the same transaction.
//!
//! The row trigger (`udm.audit_row`) builds the images and buffers the change; the statement
//! trigger (`udm.audit_flush`) writes a statement's buffered changes with one INSERT (and a big
//! statement flushes every `FLUSH_AT` rows on the way). Writing runs as the extension owner:
//! tenant roles may only read the audit table, never write, change or truncate it.
//!
//! Each row is hash-chained to the previous row of the same record (`udm_core::audit`). The audit
//! table is also the tenant's outbox of change events: the audit id is the event id, and
//! with `udm.notify_changes = on`, `pg_notify` on the tenant's channel announces them after commit
//! (see `events.rs`).

use crate::access::security::{as_owner_id, caller, role_name};
use crate::catalog::{self, Tenant};
use crate::error::{OrRaise, Result};
use crate::query::rowjson::{varlena, RowJson};
use crate::triggers::{text_datum, trigger_data, uuid_bytes, uuid_datum};
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::CStr;
use std::rc::Rc;
use udm_core::audit::{chain_hash, chain_hash_with, HashInput};
use udm_core::error::UdmError;
use udm_core::ident::{quote_ident, SYSTEM_COLUMNS};
use udm_core::types::FieldType;

pub mod batch;
pub mod batch_store;
pub mod events;
pub mod history;
pub mod links;
pub mod store;

finfo_v1!(pg_finfo_udm_audit_row);
finfo_v1!(pg_finfo_udm_audit_flush);
finfo_v1!(pg_finfo_udm_audit_hash);

const AUDIT_ROW: &str = "udm.audit_row";

/// System columns an image leaves out because the audit row has them in its own columns
/// (`record_id`, `record_version`); `record_image_sql` puts them back.
const IN_OWN_COLUMNS: [&str; 2] = ["id", "_version"];

/// SQL for the whole record an audit row shows: `image` (an expression over the row's columns)
/// with the `IN_OWN_COLUMNS` put back (a link row has no version).
pub fn record_image_sql(image: &str) -> String {
    format!(
        "({image} || jsonb_build_object('id', record_id) \
           || CASE WHEN record_version IS NULL THEN '{{}}'::jsonb \
              ELSE jsonb_build_object('_version', record_version) END)"
    )
}

/// A statement flushes its buffered changes every this many rows (the buffer and its images
/// stay within memory the session keeps: see `BUFFER_KEEP`).
const FLUSH_AT: usize = 1000;
/// The chain head cache is emptied when it grows past this many records.
const HEADS_MAX: usize = 50_000;
/// Up to this many changes in one flush are announced one notification each; more are
/// announced as one batch notification with the event id range.
const NOTIFY_EACH_UP_TO: usize = 100;

/// The tenant's audit log (change subscriptions and event consumers get their tables when first
/// used, see `events::ensure_tables`). One btree, (record_id, audit_id), finds a record's chain
/// and history; audit ids are unique by construction (an identity only udm writes) and are read
/// in ranges through the BRIN index, as rows are appended in id order: an audit row costs one
/// btree entry, not two.
pub fn tenant_tables_sql(schema: &str, role: &str, keys: bool) -> String {
    let s = quote_ident(schema);
    let r = quote_ident(role);
    let pkey = if keys {
        format!(", {}", audit_pkey_sql())
    } else {
        String::new()
    };
    let index = if keys {
        audit_index_sql(schema)
    } else {
        String::new()
    };
    format!(
        "CREATE TABLE {s}.\"_udm_audit\" (\
           audit_id bigint GENERATED ALWAYS AS IDENTITY, \
           entity text NOT NULL, \
           record_id uuid NOT NULL, \
           action text NOT NULL, \
           record_version integer, \
           entity_version integer, \
           old_data jsonb, \
           new_data jsonb, \
           changed_fields text[], \
           user_id text NOT NULL, \
           db_role text NOT NULL, \
           txid bigint NOT NULL, \
           changed_at timestamp with time zone NOT NULL, \
           prev_hash bytea, \
           hash bytea NOT NULL{pkey}); \
         {index} \
         GRANT SELECT ON {s}.\"_udm_audit\" TO {r}; \
         COMMENT ON TABLE {s}.\"_udm_audit\" IS 'udm audit log and change events (append-only, hash-chained per record)';"
    )
}

fn audit_pkey_sql() -> String {
    "CONSTRAINT \"_udm_audit__record__idx\" PRIMARY KEY (record_id, audit_id)".to_string()
}

fn audit_index_sql(schema: &str) -> String {
    format!(
        "CREATE INDEX \"_udm_audit__changed_at_txid_id__idx\" ON {}.\"_udm_audit\" USING brin (changed_at, txid, audit_id) WITH (autosummarize = on); {}",
        quote_ident(schema),
        audit_id_index_sql(schema)
    )
}

/// The BRIN of event ids: `udm_events` reads the ids after a cursor, the newest rows of the log.
/// Rows are appended in id order, so ranges of 8 pages find them in a few pages whatever the
/// log's size (without it the planner scans the primary key whole: it grows with the log). A
/// BRIN costs a write nothing in the range being filled.
pub fn audit_id_index_sql(schema: &str) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS \"_udm_audit__id__idx\" ON {}.\"_udm_audit\" USING brin (audit_id) WITH (pages_per_range = 8, autosummarize = on);",
        quote_ident(schema)
    )
}

/// The keys of an audit log made without them (`tenant_tables_sql(.., false)`), once its rows
/// are in: as `tenant_tables_sql` makes them.
pub fn audit_keys_sql(schema: &str) -> String {
    format!(
        "ALTER TABLE {}.\"_udm_audit\" ADD {}; {}",
        quote_ident(schema),
        audit_pkey_sql(),
        audit_index_sql(schema)
    )
}

pub fn audit_table(t: &Tenant) -> String {
    t.catalog("_udm_audit")
}

/// For readers of the audit log by audit id (`first` <= id <= `last`, SQL expressions): what
/// they add to their WHERE clause so that a batched log reads only the chunks holding those ids
/// (nothing for a per-change table, whose BRIN finds them).
pub fn ids_sql(t: &Tenant, first: &str, last: &str) -> String {
    if batch::is_batched(t) {
        batch::chunks_sql(first, last)
    } else {
        String::new()
    }
}

// ------------------------------------------------------------------ per-table shape

enum Kind {
    Entity {
        id: usize,
        version: usize,
        /// (field name, attribute index) of audited fields (system columns excluded).
        fields: Vec<(String, usize)>,
        /// The pointer column of a batched tenant's entity (`batch::PTR_COLUMN`).
        ptr: Option<usize>,
    },
    Junction {
        source: usize,
    },
}

struct Shape {
    schema: Rc<str>,
    entity: Rc<str>,
    audited: bool,
    entity_version: i32,
    kind: Kind,
    json: Option<RowJson>,
    /// (typlen, typbyval) per attribute, for change detection.
    types: Vec<(i16, bool)>,
}

/// One buffered change.
struct Pending {
    schema: Rc<str>,
    entity: Rc<str>,
    record_id: [u8; 16],
    action: &'static str,
    record_version: Option<i32>,
    entity_version: i32,
    old: Option<pg_sys::Datum>,
    new: Option<pg_sys::Datum>,
    changed: Option<String>,
    user: Rc<str>,
    role: Rc<str>,
    txid: i64,
    at: i64,
    /// Whether the previous row of the record must be looked up (not for a plain INSERT, which
    /// starts a chain).
    lookup: bool,
    /// Whether the change is announced with `pg_notify` (record changes; lock events are only
    /// in the outbox: a notification serialises commits, which lock heartbeats would pay for).
    notify: bool,
    /// Batched log: the change's pointer (from the row the stamp trigger gave it one) and the
    /// pointer of the record's previous change (from the old row).
    ptr: Option<i64>,
    prev_ptr: Option<i64>,
}

/// (schema, entity, record id) of a hash chain.
type HeadKey = (Rc<str>, Rc<str>, [u8; 16]);
/// (`udm.user_id`, role) and the (user, role name) they give.
type CachedUser = (Option<String>, pg_sys::Oid, Rc<str>, Rc<str>);

thread_local! {
    /// By (table, trigger): a junction table's trigger names its entity in its argument.
    static SHAPES: crate::cache::Cache<(pg_sys::Oid, pg_sys::Oid), Rc<Shape>> = crate::cache::Lru::new("audit shapes");
    static BUFFER: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static BUFFER_CTX: Cell<pg_sys::MemoryContext> = const { Cell::new(std::ptr::null_mut()) };
    /// Buffer lengths at the start of each open subtransaction.
    static SUB_MARKS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// Newest hash per (schema, entity, record) written in this transaction: a cache of at most
    /// `HEADS_MAX` entries; a head not in it is read from the record index.
    static HEADS: RefCell<FxHashMap<HeadKey, [u8; 32]>> = RefCell::new(FxHashMap::default());
    /// Tenants whose event horizon lock this transaction holds.
    static HORIZON: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    /// Set while udm_rollback writes: changes are recorded as ROLLBACK.
    static ROLLBACK_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// While udm_rollback restores a deleted record: (id, version) the stamp trigger gives it.
    static RESTORE_VERSION: Cell<Option<([u8; 16], i32)>> = const { Cell::new(None) };
    static USER_CACHE: RefCell<Option<CachedUser>> = const { RefCell::new(None) };
}

pub fn init() {
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

fn reset_transaction_state() {
    BUFFER.with(|b| b.borrow_mut().clear());
    reset_buffer_ctx();
    SUB_MARKS.with(|m| m.borrow_mut().clear());
    HEADS.with(|h| h.borrow_mut().clear());
    HORIZON.with(|h| h.borrow_mut().clear());
    ROLLBACK_DEPTH.with(|d| d.set(0));
    RESTORE_VERSION.with(|r| r.set(None));
    USER_CACHE.with(|u| *u.borrow_mut() = None);
    batch::reset_transaction_state();
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        // Every statement flushes at its end, but a statement stopped early by a row limit
        // (SPI with a count) skips its AFTER STATEMENT triggers: write what is left now, while
        // the transaction can still fail instead of losing it.
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if BUFFER.with(|b| !b.borrow().is_empty()) => {
            flush();
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => reset_transaction_state(),
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
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_START_SUB => {
            let len = BUFFER.with(|b| b.borrow().len());
            SUB_MARKS.with(|m| m.borrow_mut().push(len));
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            SUB_MARKS.with(|m| m.borrow_mut().pop());
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            let mark = SUB_MARKS.with(|m| m.borrow_mut().pop()).unwrap_or(0);
            BUFFER.with(|b| b.borrow_mut().truncate(mark));
            // rows written in the subtransaction are gone, and so are its locks
            HEADS.with(|h| h.borrow_mut().clear());
            HORIZON.with(|h| h.borrow_mut().clear());
            batch::forget_chain();
        }
        _ => {}
    }
}

unsafe fn attr_index(desc: pg_sys::TupleDesc, name: &str) -> Option<usize> {
    unsafe {
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        attrs
            .iter()
            .position(|a| !a.attisdropped && a.name() == name)
    }
}

/// The audit shape of a table, cached per backend until any definition changes.
unsafe fn shape(td: *mut pg_sys::TriggerData) -> Rc<Shape> {
    unsafe {
        let (rel, trigger) = ((*td).tg_relation, (*td).tg_trigger);
        let g = catalog::generation();
        crate::cache::sync(&SHAPES, g);
        let key = ((*rel).rd_id, (*trigger).tgoid);
        if let Some(s) = crate::cache::get(&SHAPES, &key) {
            return s;
        }
        let s = Rc::new(build_shape(td).or_raise());
        let scope = crate::trust::trigger_table(td, AUDIT_ROW).tenant.scope();
        crate::cache::put_scoped(&SHAPES, scope, key, s.clone(), 256 + s.types.len() * 64);
        s
    }
}

unsafe fn build_shape(td: *mut pg_sys::TriggerData) -> Result<Shape> {
    unsafe {
        let rel = (*td).tg_relation;
        let tt = crate::trust::trigger_table(td, AUDIT_ROW);
        let (schema, relname) = (tt.tenant.schema.clone(), tt.name.clone());
        let e = crate::trust::entity_of(&tt, AUDIT_ROW);
        let slug = e.def.slug.as_str();
        let desc = (*rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        let types = attrs.iter().map(|a| (a.attlen, a.attbyval)).collect();
        let need = |n: &str| {
            attr_index(desc, n).ok_or_else(|| {
                crate::trust::not_in_catalog(&tt, AUDIT_ROW, &format!("has no column \"{n}\""))
            })
        };
        // the columns whose datums are read as such (the rest go through RowJson, which
        // converts any type); a junction's key columns are uuids
        let typed = |n: &str, typ: pg_sys::Oid| {
            crate::trust::required_column(desc, &relname, n, typ, AUDIT_ROW) as usize - 1
        };
        let (entity, kind, json) = if let Some(id) = tt.field {
            // a junction table: the field it belongs to
            let f = e
                .def
                .fields
                .iter()
                .chain(&e.def.removed_fields)
                .find(|f| f.id == id);
            let Some(fname) = f.map(|f| f.name.clone()) else {
                return Err(crate::trust::not_in_catalog(
                    &tt,
                    AUDIT_ROW,
                    &format!("is not the junction table of a field of {slug}"),
                ));
            };
            let cols = vec![
                ("source_id".to_string(), typed("source_id", pg_sys::UUIDOID)),
                ("target_id".to_string(), typed("target_id", pg_sys::UUIDOID)),
            ];
            let json = RowJson::new(desc, &cols);
            (
                format!("{slug}.{fname}"),
                Kind::Junction {
                    source: typed("source_id", pg_sys::UUIDOID),
                },
                json,
            )
        } else {
            let mut cols: Vec<(String, usize)> = Vec::new();
            // id and _version are the row's record_id and record_version: not repeated
            for c in SYSTEM_COLUMNS
                .iter()
                .filter(|c| !IN_OWN_COLUMNS.contains(c))
            {
                cols.push((c.to_string(), need(c)?));
            }
            let mut fields = Vec::new();
            for f in &e.def.fields {
                if !f.has_column() || !f.audited || f.ftype == FieldType::Password {
                    continue;
                }
                let i = need(&f.column)?;
                cols.push((f.name.clone(), i));
                fields.push((f.name.clone(), i));
            }
            let json = RowJson::new(desc, &cols);
            let ptr = if batch::is_batched(&tt.tenant) {
                Some(typed(batch::PTR_COLUMN, pg_sys::INT8OID))
            } else {
                None
            };
            (
                slug.to_string(),
                Kind::Entity {
                    id: typed("id", pg_sys::UUIDOID),
                    version: typed("_version", pg_sys::INT4OID),
                    fields,
                    ptr,
                },
                json,
            )
        };
        Ok(Shape {
            schema: Rc::from(schema.as_str()),
            entity: Rc::from(entity.as_str()),
            audited: e.def.audit,
            entity_version: e.version,
            kind,
            json: Some(json),
            types,
        })
    }
}

// ------------------------------------------------------------------ the row trigger

unsafe fn deform(
    tup: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    unsafe {
        let n = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); n];
        let mut nulls = vec![false; n];
        pg_sys::heap_deform_tuple(tup, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        (values, nulls)
    }
}

/// Whether two datums have the same stored image (PostgreSQL's datumIsEqual): an unchanged
/// value keeps its bytes (and its TOAST pointer) across an UPDATE.
pub(crate) unsafe fn same_image(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    unsafe {
        if byval {
            return a == b;
        }
        let (pa, pb) = (a.cast_mut_ptr::<u8>(), b.cast_mut_ptr::<u8>());
        let (la, lb) = match len {
            -1 => (
                pgrx::varsize_any(pa as *const pg_sys::varlena),
                pgrx::varsize_any(pb as *const pg_sys::varlena),
            ),
            -2 => (
                CStr::from_ptr(pa as *const std::os::raw::c_char)
                    .to_bytes()
                    .len()
                    + 1,
                CStr::from_ptr(pb as *const std::os::raw::c_char)
                    .to_bytes()
                    .len()
                    + 1,
            ),
            n => (n as usize, n as usize),
        };
        la == lb && std::slice::from_raw_parts(pa, la) == std::slice::from_raw_parts(pb, lb)
    }
}

unsafe fn uuid_of(values: &[pg_sys::Datum], nulls: &[bool], i: usize) -> [u8; 16] {
    if nulls[i] {
        [0u8; 16]
    } else {
        unsafe { uuid_bytes(values[i]) }
    }
}

/// The buffer's memory context lives as long as the session and keeps this much between
/// statements, so buffering images costs no allocation from the operating system.
const BUFFER_KEEP: usize = 1024 * 1024;

/// Where buffered images live until their statement's flush (reset at every flush and at the
/// end of every transaction).
fn buffer_ctx() -> pg_sys::MemoryContext {
    BUFFER_CTX.with(|c| {
        if c.get().is_null() {
            let name = c"udm audit buffer";
            let ctx = unsafe {
                pg_sys::AllocSetContextCreateInternal(
                    pg_sys::TopMemoryContext,
                    name.as_ptr(),
                    BUFFER_KEEP,
                    BUFFER_KEEP,
                    8 * 1024 * 1024,
                )
            };
            c.set(ctx);
        }
        c.get()
    })
}

/// (user id, database role) of the change: `udm.user_id`, else the role.
fn who() -> (Rc<str>, Rc<str>) {
    let uid = crate::guc::user_id();
    let role = caller();
    USER_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((u, r, user, rolename)) = c.as_ref() {
            if *u == uid && *r == role {
                return (user.clone(), rolename.clone());
            }
        }
        let rolename: Rc<str> = Rc::from(role_name(role).as_str());
        let user: Rc<str> = match &uid {
            Some(u) => Rc::from(u.as_str()),
            None => rolename.clone(),
        };
        *c = Some((uid, role, user.clone(), rolename.clone()));
        (user, rolename)
    })
}

/// `AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW`: buffers the change with its images.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_audit_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = crate::triggers::row_trigger_data(fcinfo, AUDIT_ROW, false);
        let rel = (*td).tg_relation;
        let shape = shape(td);
        if !shape.audited {
            return pg_sys::Datum::from(0usize);
        }
        let desc = (*rel).rd_att;
        let op = ev & pg_sys::TRIGGER_EVENT_OPMASK;
        let (old_tup, new_tup) = match op {
            pg_sys::TRIGGER_EVENT_INSERT => (std::ptr::null_mut(), (*td).tg_trigtuple),
            pg_sys::TRIGGER_EVENT_UPDATE => ((*td).tg_trigtuple, (*td).tg_newtuple),
            pg_sys::TRIGGER_EVENT_DELETE => ((*td).tg_trigtuple, std::ptr::null_mut()),
            _ => return pg_sys::Datum::from(0usize),
        };
        let old = (!old_tup.is_null()).then(|| deform(old_tup, desc));
        let new = (!new_tup.is_null()).then(|| deform(new_tup, desc));
        let rollback = ROLLBACK_DEPTH.with(|d| d.get()) > 0
            || crate::citus::claims::rollback_claimed().is_some();
        let action: &'static str = match op {
            pg_sys::TRIGGER_EVENT_DELETE => "DELETE",
            _ if rollback => "ROLLBACK",
            pg_sys::TRIGGER_EVENT_INSERT => "INSERT",
            _ => "UPDATE",
        };
        let json = shape.json.as_ref().expect("shape json");
        let mut old_only: Option<Vec<bool>> = None;
        let mut ptrs = (None, None);
        let (record_id, record_version, changed, lookup) = match &shape.kind {
            Kind::Entity {
                id,
                version,
                fields,
                ptr,
            } => {
                if let Some(p) = *ptr {
                    let at = |row: &Option<(Vec<pg_sys::Datum>, Vec<bool>)>| {
                        row.as_ref()
                            .and_then(|(v, n)| (!n[p]).then(|| v[p].value() as i64))
                    };
                    ptrs = (at(&new), at(&old));
                }
                let (v, n) = new.as_ref().or(old.as_ref()).expect("a row");
                let record_version = (!n[*version]).then(|| v[*version].value() as i32);
                let changed = match (&old, &new) {
                    (Some((ov, on)), Some((nv, nn))) => {
                        let mut names: Vec<&str> = Vec::new();
                        let mut mask = vec![false; ov.len()];
                        for (name, i) in fields {
                            let (len, byval) = shape.types[*i];
                            let same = match (on[*i], nn[*i]) {
                                (true, true) => true,
                                (false, false) => same_image(ov[*i], nv[*i], byval, len),
                                _ => false,
                            };
                            if !same {
                                names.push(name);
                                mask[*i] = true;
                            }
                        }
                        old_only = Some(mask);
                        Some(names.join(","))
                    }
                    _ => None,
                };
                (
                    uuid_of(v, n, *id),
                    record_version,
                    changed,
                    op != pg_sys::TRIGGER_EVENT_INSERT || rollback,
                )
            }
            Kind::Junction { source } => {
                let (v, n) = new.as_ref().or(old.as_ref()).expect("a row");
                (uuid_of(v, n, *source), None, None, true)
            }
        };
        let ctx = buffer_ctx();
        let prev = pg_sys::MemoryContextSwitchTo(ctx);
        // an UPDATE's old image holds the changed fields' previous values (the rest of the
        // record is the previous version's new image); a DELETE's holds the whole record
        let old_img = old
            .as_ref()
            .map(|(v, n)| json.build_only(v, n, old_only.as_deref()));
        let new_img = new.as_ref().map(|(v, n)| json.build(v, n));
        pg_sys::MemoryContextSwitchTo(prev);
        let (user, role) = who();
        let entry = Pending {
            schema: shape.schema.clone(),
            entity: shape.entity.clone(),
            record_id,
            action,
            record_version,
            entity_version: shape.entity_version,
            old: old_img,
            new: new_img,
            changed,
            user,
            role,
            txid: pg_sys::GetTopFullTransactionId().value as i64,
            at: change_time(),
            lookup,
            notify: true,
            ptr: ptrs.0,
            prev_ptr: ptrs.1,
        };
        let len = BUFFER.with(|b| {
            let mut b = b.borrow_mut();
            b.push(entry);
            b.len()
        });
        if len >= FLUSH_AT {
            flush();
        }
        pg_sys::Datum::from(0usize)
    }
}

/// `AFTER INSERT OR UPDATE OR DELETE FOR EACH STATEMENT`: writes what the statement buffered.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_audit_flush(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let td = trigger_data(fcinfo, "udm.audit_flush");
        crate::trust::tenant_of((*td).tg_relation, "udm.audit_flush").or_raise();
    }
    flush();
    pg_sys::Datum::from(0usize)
}

/// Writes every buffered change (grouped by tenant) and queues their notifications.
pub fn flush() {
    let mut entries: Vec<Pending> = BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if entries.is_empty() {
        return;
    }
    let mut start = 0;
    while start < entries.len() {
        let schema = entries[start].schema.clone();
        let mut end = start;
        while end < entries.len() && entries[end].schema == schema {
            end += 1;
        }
        // no SQL runs while writing: switching the user (for the sequence) is enough
        as_owner_id(|| write_group(&schema, &entries[start..end])).or_raise();
        start = end;
    }
    reset_buffer_ctx();
    // the next statement buffers into the same allocation
    entries.clear();
    BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        if b.is_empty() && b.capacity() < entries.capacity() {
            *b = entries;
        }
    });
}

/// Frees the buffered images (the context keeps its first block for the next statement).
fn reset_buffer_ctx() {
    BUFFER_CTX.with(|c| {
        let ctx = c.get();
        if !ctx.is_null() {
            unsafe { pg_sys::MemoryContextReset(ctx) };
        }
    });
}

fn bytes_datum(b: &[u8]) -> pg_sys::Datum {
    b.into_datum().expect("bytea is never NULL")
}

/// `changed_fields` as text[] from the comma-separated names (field names are slugs).
fn text_array(joined: &str) -> pg_sys::Datum {
    let mut elems: Vec<pg_sys::Datum> = if joined.is_empty() {
        Vec::new()
    } else {
        joined.split(',').map(text_datum).collect()
    };
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_array(
            elems.as_mut_ptr(),
            elems.len() as i32,
            pg_sys::TEXTOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::os::raw::c_char,
        ))
    }
}

/// 15 bits naming the tenant in horizon lock keys (a collision only makes delivery wait for
/// another tenant's writers too).
pub fn horizon_tag(schema: &str) -> i64 {
    (udm_core::ident::fnv1a(schema.as_bytes()) & 0x7fff) as i64
}

/// Takes a writer's horizon lock before it takes event ids from `seq`: a transaction-level
/// advisory lock in SHARE mode (writers never wait for each other on it) whose key is
/// (tenant tag << 48) | the low 48 bits of the last event id given out before the writer's own (`scale` ids per
/// sequence value: 1 for the per-change log, a batch's for the batched one). `events::horizon`
/// reads the smallest held. The last id is read again once the lock is held, and the lock taken
/// again while it moved: a reader that computed the horizon before the lock was there saw at most
/// that value, so the horizon never goes back below an event already delivered.
fn hold_horizon(tag: i64, seq: pg_sys::Oid, scale: i64) {
    let last = || -> i64 {
        let v: i64 = unsafe {
            pgrx::direct_function_call(
                pg_sys::pg_sequence_last_value,
                &[Some(pg_sys::Datum::from(seq))],
            )
        }
        .unwrap_or(0);
        v * scale + scale - 1
    };
    let lock = |key: i64| pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (key >> 32) as u32,
        locktag_field3: key as u32,
        locktag_field4: 1,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    let mut at = last();
    loop {
        let tag = lock(udm_core::audit::horizon_key(tag, at));
        unsafe { pg_sys::LockAcquire(&tag, pg_sys::ShareLock as i32, false, false) };
        let now = last();
        if now == at {
            return;
        }
        unsafe { pg_sys::LockRelease(&tag, pg_sys::ShareLock as i32, false) };
        at = now;
    }
}

fn write_group(schema: &str, entries: &[Pending]) -> Result<()> {
    let Some(t) = catalog::tenant(schema)? else {
        return Err(UdmError::internal(format!(
            "udm audit: \"{schema}\" is not a udm tenant schema"
        )));
    };
    let ids = if batch::is_batched(&t) {
        batch::write(&t, entries)?
    } else {
        write_rows(&t, schema, entries)?
    };
    let announced: Vec<(&Pending, i64)> = entries
        .iter()
        .zip(ids.iter().copied())
        .filter(|(e, _)| e.notify)
        .collect();
    announce(&t, &announced);
    Ok(())
}

/// Writes changes as rows of the per-change log; returns their audit ids.
fn write_rows(t: &Tenant, schema: &str, entries: &[Pending]) -> Result<Vec<i64>> {
    let table = store::of(t)?;
    // the previous hash of each record this transaction has not written yet
    let wanted: Vec<(Rc<str>, [u8; 16])> = HEADS.with(|h| {
        let h = h.borrow();
        let mut seen = HashSet::new();
        entries
            .iter()
            .filter(|e| e.lookup)
            .filter(|e| !h.contains_key(&(e.schema.clone(), e.entity.clone(), e.record_id)))
            .filter(|e| seen.insert((e.entity.clone(), e.record_id)))
            .map(|e| (e.entity.clone(), e.record_id))
            .collect()
    });
    let writer = table.open()?;
    let looked_up = writer.newest_hashes(&wanted);
    // entity, action, user and role repeat across a statement's rows: one datum each
    let mut texts: Vec<(*const u8, usize, pg_sys::Datum)> = Vec::new();
    let mut text = |s: &str| -> pg_sys::Datum {
        let key = (s.as_ptr(), s.len());
        if let Some(&(_, _, d)) = texts.iter().find(|(p, l, _)| (*p, *l) == key) {
            return d;
        }
        let d = text_datum(s);
        texts.push((key.0, key.1, d));
        d
    };
    let mut scratch = Vec::with_capacity(1024);
    let rows: Vec<store::Row> = HEADS.with(|heads| {
        let mut heads = heads.borrow_mut();
        if heads.len() > HEADS_MAX {
            heads.clear();
        }
        entries
            .iter()
            .map(|e| {
                let key = (e.schema.clone(), e.entity.clone(), e.record_id);
                let prev: Option<Vec<u8>> = if e.lookup {
                    heads
                        .get(&key)
                        .map(|h| h.to_vec())
                        .or_else(|| looked_up.get(&(e.entity.clone(), e.record_id)).cloned())
                } else {
                    None
                };
                let hash = chain_hash_with(
                    &mut scratch,
                    &HashInput {
                        prev: prev.as_deref(),
                        entity: &e.entity,
                        record_id: &e.record_id,
                        action: e.action,
                        record_version: e.record_version,
                        entity_version: Some(e.entity_version),
                        old_data: e.old.map(|d| unsafe { varlena(d) }),
                        new_data: e.new.map(|d| unsafe { varlena(d) }),
                        changed_fields: e.changed.as_deref(),
                        user_id: &e.user,
                        db_role: &e.role,
                        txid: e.txid,
                        changed_at: e.at,
                    },
                );
                heads.insert(key, hash);
                [
                    Some(text(&e.entity)),
                    Some(uuid_datum(&e.record_id)),
                    Some(text(e.action)),
                    e.record_version.map(pg_sys::Datum::from),
                    Some(pg_sys::Datum::from(e.entity_version)),
                    e.old,
                    e.new,
                    e.changed.as_deref().map(text_array),
                    Some(text(&e.user)),
                    Some(text(&e.role)),
                    Some(pg_sys::Datum::from(e.txid)),
                    Some(pg_sys::Datum::from(e.at)),
                    prev.as_deref().map(bytes_datum),
                    Some(bytes_datum(&hash)),
                ]
            })
            .collect()
    });
    if HORIZON.with(|h| h.borrow_mut().insert(schema.to_string())) {
        writer.lock_horizon(horizon_tag(schema));
    }
    let ids = writer.append(&rows);
    drop(writer);
    Ok(ids)
}

/// Queues the notifications of written changes.
fn announce(t: &Tenant, announced: &[(&Pending, i64)]) {
    let n = announced.len();
    if n == 0 || !crate::guc::NOTIFY_CHANGES.get() {
        return;
    }
    if n <= NOTIFY_EACH_UP_TO {
        for (e, id) in announced.iter() {
            // the payload serde_json would write for these four keys, without building a map
            let payload = format!(
                "{{\"action\":\"{}\",\"entity\":{},\"event\":{id},\"id\":\"{}\"}}",
                e.action,
                serde_json::Value::from(&*e.entity),
                uuid::Uuid::from_bytes(e.record_id).hyphenated()
            );
            notify(&t.channel, &payload);
        }
    } else {
        let payload = serde_json::json!({
            "batch": true,
            "first_event": announced.iter().map(|(_, id)| *id).min(),
            "last_event": announced.iter().map(|(_, id)| *id).max(),
            "count": n,
            "entity": &*announced[0].0.entity,
        });
        notify(&t.channel, &payload.to_string());
    }
}

fn notify(channel: &str, payload: &str) {
    let c = std::ffi::CString::new(channel).unwrap_or_default();
    let p = std::ffi::CString::new(payload).unwrap_or_default();
    unsafe {
        pg_sys::OidFunctionCall2Coll(
            pg_sys::F_PG_NOTIFY.into(),
            pg_sys::InvalidOid,
            pg_sys::Datum::from(pg_sys::cstring_to_text(c.as_ptr())),
            pg_sys::Datum::from(pg_sys::cstring_to_text(p.as_ptr())),
        );
    }
}

// ------------------------------------------------------------------ rollback mode

/// Runs `f` with changes recorded as ROLLBACK (and, when restoring a deleted record, with the
/// version the stamp trigger gives it).
pub fn as_rollback<R>(restore: Option<([u8; 16], i32)>, f: impl FnOnce() -> R) -> R {
    struct Guard(Option<([u8; 16], i32)>);
    impl Drop for Guard {
        fn drop(&mut self) {
            ROLLBACK_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
            RESTORE_VERSION.with(|r| r.set(self.0));
        }
    }
    let saved = RESTORE_VERSION.with(|r| r.replace(restore));
    ROLLBACK_DEPTH.with(|d| d.set(d.get() + 1));
    let _g = Guard(saved);
    // on Citus the triggers run on the tenant's worker: they are told too
    crate::citus::claims::rollback(restore, f)
}

/// The version a restored record gets, if udm_rollback is restoring this id.
pub fn restore_version(id: &[u8; 16]) -> Option<i32> {
    RESTORE_VERSION
        .with(|r| r.get())
        .or_else(|| crate::citus::claims::rollback_claimed().and_then(|r| r.restore))
        .and_then(|(rid, v)| (&rid == id).then_some(v))
}

/// When a change happened: the start of the statement that made it (one udm call is one
/// statement, so its changes share one time). On a Citus worker each of the coordinator's remote
/// commands is a statement of its own: there it is the distributed transaction's time, which the
/// changes of one udm call share (and which the coordinator's clock gives, whatever the worker's).
fn change_time() -> pg_sys::TimestampTz {
    crate::citus::distributed_stamp()
        .unwrap_or_else(|| unsafe { pg_sys::GetCurrentStatementStartTimestamp() })
}

// ------------------------------------------------------------------ udm.audit_hash

/// `udm.audit_hash(prev, entity, record_id, action, record_version, entity_version, old, new,
/// changed_fields, user_id, db_role, txid, changed_at)`: the hash an audit row must carry; used
/// by udm_audit_verify.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_audit_hash(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let args = (*fcinfo).args.as_slice(13);
        let bytes =
            |i: usize| -> Option<&[u8]> { (!args[i].isnull).then(|| varlena(args[i].value)) };
        let text =
            |i: usize| -> Option<&str> { bytes(i).map(|b| std::str::from_utf8(b).unwrap_or("")) };
        let id: [u8; 16] = if args[2].isnull {
            [0u8; 16]
        } else {
            let mut out = [0u8; 16];
            std::ptr::copy_nonoverlapping(args[2].value.cast_mut_ptr::<u8>(), out.as_mut_ptr(), 16);
            out
        };
        let int4 = |i: usize| (!args[i].isnull).then(|| args[i].value.value() as i32);
        let int8 = |i: usize| {
            if args[i].isnull {
                0
            } else {
                args[i].value.value() as i64
            }
        };
        let h = chain_hash(&HashInput {
            prev: bytes(0),
            entity: text(1).unwrap_or(""),
            record_id: &id,
            action: text(3).unwrap_or(""),
            record_version: int4(4),
            entity_version: int4(5),
            old_data: bytes(6),
            new_data: bytes(7),
            changed_fields: text(8),
            user_id: text(9).unwrap_or(""),
            db_role: text(10).unwrap_or(""),
            txid: int8(11),
            changed_at: int8(12),
        });
        bytes_datum(&h)
    }
}

// ------------------------------------------------------------------ events that are not row changes

/// An audit row that no row trigger writes (an access or lock event): `entity` names its chain
/// (`roadmap#lock`), `data` is its new image.
pub struct Event<'a> {
    pub entity: &'a str,
    pub entity_version: i32,
    pub record_id: [u8; 16],
    pub action: &'static str,
    pub data: &'a serde_json::Value,
}

/// Appends one audit row that no row trigger wrote (see `Event`). Written now, in the caller's
/// transaction.
pub fn record_event(
    t: &Tenant,
    entity: &str,
    entity_version: i32,
    record_id: [u8; 16],
    action: &'static str,
    data: &serde_json::Value,
) -> Result<()> {
    let e = Event {
        entity,
        entity_version,
        record_id,
        action,
        data,
    };
    let (user, role) = who();
    if crate::citus::log_elsewhere(t) {
        // the tenant's log is on a Citus worker (this node has only its shell table): the row is
        // written there, in this transaction
        return crate::citus::events::record_on_node(t, &e, &user, &role);
    }
    record_event_as(t, &e, user, role)
}

/// `record_event`, for `user` acting as the database role `role`.
pub fn record_event_as(t: &Tenant, e: &Event, user: Rc<str>, role: Rc<str>) -> Result<()> {
    let Event {
        entity,
        entity_version,
        record_id,
        action,
        data,
    } = *e;
    let ctx = buffer_ctx();
    let new = unsafe {
        let prev = pg_sys::MemoryContextSwitchTo(ctx);
        let d = pgrx::JsonB(data.clone()).into_datum();
        pg_sys::MemoryContextSwitchTo(prev);
        d
    };
    let entry = Pending {
        schema: Rc::from(t.schema.as_str()),
        entity: Rc::from(entity),
        record_id,
        action,
        record_version: None,
        entity_version,
        old: None,
        new,
        changed: None,
        user,
        role,
        txid: unsafe { pg_sys::GetTopFullTransactionId().value as i64 },
        at: change_time(),
        lookup: true,
        notify: false,
        ptr: None,
        prev_ptr: None,
    };
    BUFFER.with(|b| b.borrow_mut().push(entry));
    flush();
    Ok(())
}
