//! A tenant's `_udm_audit` table at the storage level, for the audit trigger's hot path: append
//! rows (heap multi-insert plus the table's index entries, as COPY does), find the newest hash
//! of a record (a backward scan of the (record_id, audit_id) index), and take the tenant's event
//! horizon lock. No SQL is planned or executed per audited statement.
//!
//! Readers (history, reports, verify, events) use SQL; the table's layout is the one
//! `audit::tenant_tables_sql` creates, checked column by column when it is first opened here.

use crate::catalog::{self, Tenant};
use crate::error::Result;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;
use udm_core::error::UdmError;

/// The columns of `_udm_audit` in the order rows are given to `append` (after `audit_id`, which
/// `append` assigns from the table's identity sequence).
pub const COLUMNS: [(&str, pg_sys::Oid); 14] = [
    ("entity", pg_sys::TEXTOID),
    ("record_id", pg_sys::UUIDOID),
    ("action", pg_sys::TEXTOID),
    ("record_version", pg_sys::INT4OID),
    ("entity_version", pg_sys::INT4OID),
    ("old_data", pg_sys::JSONBOID),
    ("new_data", pg_sys::JSONBOID),
    ("changed_fields", pg_sys::TEXTARRAYOID),
    ("user_id", pg_sys::TEXTOID),
    ("db_role", pg_sys::TEXTOID),
    ("txid", pg_sys::INT8OID),
    ("changed_at", pg_sys::TIMESTAMPTZOID),
    ("prev_hash", pg_sys::BYTEAOID),
    ("hash", pg_sys::BYTEAOID),
];
pub const N: usize = COLUMNS.len();

/// The (record_id, audit_id) key that chains and history read.
const RECORD_INDEX: &str = "_udm_audit__record__idx";

/// Rows go to the heap this many at a time.
const BATCH: usize = 1000;

pub struct AuditTable {
    /// The tenant schema, for errors.
    schema: String,
    relid: pg_sys::Oid,
    seq: pg_sys::Oid,
    record_index: pg_sys::Oid,
    natts: usize,
    /// 0-based attribute index of audit_id and of each of `COLUMNS`
    id_attr: usize,
    attrs: [usize; N],
}

/// One row: the datums of `COLUMNS` (None for NULL).
pub type Row = [Option<pg_sys::Datum>; N];

thread_local! {
    static TABLES: crate::cache::Cache<pg_sys::Oid, Rc<AuditTable>> = crate::cache::Lru::new("audit tables");
}

/// The audit table of a tenant, cached per backend (by schema oid) until any definition changes.
pub fn of(t: &Tenant) -> Result<Rc<AuditTable>> {
    per_tenant(&TABLES, t, load)
}

/// What `load` made of a tenant's table, cached per backend (by schema oid) until any definition
/// changes.
pub fn per_tenant<V: 'static>(
    cache: &'static std::thread::LocalKey<crate::cache::Cache<pg_sys::Oid, Rc<V>>>,
    t: &Tenant,
    load: impl FnOnce(&Tenant) -> Result<V>,
) -> Result<Rc<V>> {
    crate::cache::sync(cache, catalog::generation());
    if let Some(a) = crate::cache::get(cache, &t.schema_oid) {
        return Ok(a);
    }
    let a = Rc::new(load(t)?);
    crate::cache::put_scoped(cache, t.scope(), t.schema_oid, a.clone(), 1024);
    Ok(a)
}

/// The error for a table, index, sequence or column udm made in a tenant schema that is not
/// there.
pub fn missing(t: &Tenant, what: &str) -> UdmError {
    UdmError::internal(format!(
        "udm audit: tenant schema \"{}\" has no {what}",
        t.schema
    ))
}

fn load(t: &Tenant) -> Result<AuditTable> {
    let missing = |what: &str| missing(t, what);
    let need = |name: &str| t.relation(name).ok_or_else(|| missing(name));
    // on Citus, where the trigger runs on a worker: the shard of the audit log and its index
    let local = |name: &str| {
        crate::citus::local_relation(t.schema_oid, "_udm_audit", name).ok_or_else(|| missing(name))
    };
    let table = local("_udm_audit")?;
    let seq = need("_udm_audit_audit_id_seq")?;
    let record_index = local(RECORD_INDEX)?;
    let mut wanted = vec![("audit_id", pg_sys::INT8OID)];
    wanted.extend_from_slice(&COLUMNS);
    let (natts, found) = layout(table, &wanted, &|c| {
        missing(&format!("column _udm_audit.{c} of the expected type"))
    })?;
    let mut attrs = [0usize; N];
    attrs.copy_from_slice(&found[1..]);
    Ok(AuditTable {
        schema: t.schema.clone(),
        relid: table,
        seq,
        record_index,
        natts,
        id_attr: found[0],
        attrs,
    })
}

/// The number of attributes of table `relid` and the 0-based attribute index of each of
/// `columns` (name, type), or the error `missing(name)` gives for the first one it lacks.
pub fn layout(
    relid: pg_sys::Oid,
    columns: &[(&str, pg_sys::Oid)],
    missing: &dyn Fn(&str) -> UdmError,
) -> Result<(usize, Vec<usize>)> {
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let list = (*desc).attrs.as_slice(natts);
        let found: Result<Vec<usize>> = columns
            .iter()
            .map(|(name, typ)| {
                list.iter()
                    .position(|a| !a.attisdropped && a.name() == *name && a.atttypid == *typ)
                    .ok_or_else(|| missing(name))
            })
            .collect();
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        Ok((natts, found?))
    }
}

impl AuditTable {
    /// Opens the table and its indexes for one flush: finding chain heads and appending rows
    /// share them.
    pub fn open(&self) -> Result<Writer<'_>> {
        let (t, record_index) = Opened::open(self.relid, self.record_index, RECORD_INDEX);
        if record_index.is_null() {
            return Err(UdmError::internal(format!(
                "udm audit: tenant schema \"{}\" has no {RECORD_INDEX} on its audit log",
                self.schema
            )));
        }
        Ok(Writer {
            table: self,
            opened: t,
            record_index,
        })
    }
}

/// A table opened for storage-level writes, with its indexes and an executor state to insert
/// their entries (closed when dropped).
pub struct Opened {
    pub rel: pg_sys::Relation,
    pub estate: *mut pg_sys::EState,
    pub rri: *mut pg_sys::ResultRelInfo,
}

impl Opened {
    /// Opens `relid` (row-exclusive) and its indexes, and finds among them the index `index`
    /// (by the oid the caller loaded, else by `index_name`: an index a superuser dropped and
    /// made again is used without waiting for a definition change to reload the table); null
    /// when it has no such index.
    pub fn open(
        relid: pg_sys::Oid,
        index: pg_sys::Oid,
        index_name: &str,
    ) -> (Opened, pg_sys::Relation) {
        unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                as *mut pg_sys::ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, false);
            let n = (*rri).ri_NumIndices as usize;
            let open: Vec<pg_sys::Relation> = (0..n)
                .map(|i| *(*rri).ri_IndexRelationDescs.add(i))
                .collect();
            let found = open
                .iter()
                .copied()
                .find(|&ix| (*ix).rd_id == index)
                .or_else(|| {
                    open.iter().copied().find(|&ix| {
                        CStr::from_ptr((*(*ix).rd_rel).relname.data.as_ptr()).to_bytes()
                            == index_name.as_bytes()
                    })
                })
                .unwrap_or(std::ptr::null_mut());
            if (*estate).es_per_tuple_exprcontext.is_null() {
                pg_sys::MakePerTupleExprContext(estate);
            }
            (Opened { rel, estate, rri }, found)
        }
    }

    /// Inserts the tuple in `slot` (its heap row and index entries, unique ones checked).
    /// `slots` of one call are inserted together.
    pub fn insert(&self, slots: &mut [*mut pg_sys::TupleTableSlot], bulk: pg_sys::BulkInsertState) {
        unsafe {
            let cid = pg_sys::GetCurrentCommandId(true);
            pg_sys::heap_multi_insert(
                self.rel,
                slots.as_mut_ptr(),
                slots.len() as i32,
                cid,
                0,
                bulk,
            );
            let econtext = (*self.estate).es_per_tuple_exprcontext;
            for &slot in slots.iter() {
                pg_sys::ExecInsertIndexTuples(
                    self.rri,
                    slot,
                    self.estate,
                    false,
                    false,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                pg_sys::ExecClearTuple(slot);
            }
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        // on an ERROR the transaction's abort releases all of it
        if std::thread::panicking() {
            return;
        }
        unsafe {
            pg_sys::ExecCloseIndices(self.rri);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// The audit table opened for a flush (closed when dropped).
pub struct Writer<'a> {
    table: &'a AuditTable,
    opened: Opened,
    /// The (record_id, audit_id) index among the table's open indexes.
    record_index: pg_sys::Relation,
}

impl Writer<'_> {
    /// Appends `rows` in order and returns the audit id of each.
    pub fn append(&self, rows: &[Row]) -> Vec<i64> {
        let t = self.table;
        let mut ids = Vec::with_capacity(rows.len());
        if rows.is_empty() {
            return ids;
        }
        unsafe {
            // the slots share one copy of the table's descriptor that is not reference-counted:
            // a slot of the relcache's own descriptor pins it in the resource owner, an entry
            // made and searched for again for every slot
            let desc = pg_sys::CreateTupleDescCopy((*self.opened.rel).rd_att);
            let bulk = if rows.len() > 1 {
                pg_sys::GetBulkInsertState()
            } else {
                std::ptr::null_mut()
            };
            let mut slots: Vec<*mut pg_sys::TupleTableSlot> = (0..rows.len().min(BATCH))
                .map(|_| pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple))
                .collect();
            let mut values = vec![pg_sys::Datum::from(0usize); t.natts];
            let mut nulls = vec![true; t.natts];
            for chunk in rows.chunks(BATCH) {
                for (row, &slot) in chunk.iter().zip(&slots) {
                    let id = pgrx::direct_function_call_as_datum(
                        pg_sys::nextval_oid,
                        &[Some(pg_sys::Datum::from(t.seq))],
                    )
                    .expect("nextval");
                    ids.push(id.value() as i64);
                    values[t.id_attr] = id;
                    nulls[t.id_attr] = false;
                    for (c, v) in row.iter().enumerate() {
                        let a = t.attrs[c];
                        values[a] = v.unwrap_or(pg_sys::Datum::from(0usize));
                        nulls[a] = v.is_none();
                    }
                    let tuple =
                        pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                    pg_sys::ExecStoreHeapTuple(tuple, slot, true);
                }
                self.opened.insert(&mut slots[..chunk.len()], bulk);
            }
            for slot in slots {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::FreeTupleDesc(desc);
            if !bulk.is_null() {
                pg_sys::FreeBulkInsertState(bulk);
            }
        }
        ids
    }

    /// The hash of the newest audit row of each (entity, record) asked for that has one, read
    /// with a fresh snapshot (a writer that waited for another's row lock sees its audit row).
    pub fn newest_hashes(
        &self,
        wanted: &[(Rc<str>, [u8; 16])],
    ) -> HashMap<(Rc<str>, [u8; 16]), Vec<u8>> {
        let t = self.table;
        let mut out = HashMap::new();
        if wanted.is_empty() {
            return out;
        }
        unsafe {
            // rows this transaction wrote in the current command become visible too
            pg_sys::CommandCounterIncrement();
            let (rel, idx) = (self.opened.rel, self.record_index);
            let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            let scan = pg_sys::index_beginscan(rel, idx, snap, 1, 0);
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            let entity_att = t.attrs[0] as i32 + 1;
            let hash_att = t.attrs[N - 1] as i32 + 1;
            let mut id = [0u8; 16];
            for (entity, record) in wanted {
                id.copy_from_slice(record);
                let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
                pg_sys::ScanKeyInit(
                    &mut key,
                    1,
                    pg_sys::BTEqualStrategyNumber as u16,
                    pg_sys::Oid::from(pg_sys::F_UUID_EQ),
                    pg_sys::Datum::from(id.as_mut_ptr()),
                );
                pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
                while pg_sys::index_getnext_slot(
                    scan,
                    pg_sys::ScanDirection::BackwardScanDirection,
                    slot,
                ) {
                    let mut null = false;
                    let e = pg_sys::slot_getattr(slot, entity_att, &mut null);
                    if null || crate::query::rowjson::varlena(e) != entity.as_bytes() {
                        continue;
                    }
                    let h = pg_sys::slot_getattr(slot, hash_att, &mut null);
                    if !null {
                        out.insert(
                            (entity.clone(), *record),
                            crate::query::rowjson::varlena(h).to_vec(),
                        );
                    }
                    break;
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::index_endscan(scan);
            pg_sys::UnregisterSnapshot(snap);
        }
        out
    }

    /// Takes the tenant's event horizon lock for this transaction: the shared advisory lock
    /// `pg_advisory_xact_lock_shared((tag << 48) | last audit id so far)`, a lower bound of the
    /// ids this transaction will write. `udm_events` delivers only events below every such key,
    /// so an event is never delivered before one with a smaller id that is still uncommitted.
    pub fn lock_horizon(&self, tag: i64) {
        super::hold_horizon(tag, self.table.seq, 1);
    }
}
