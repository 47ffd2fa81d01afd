//! A tenant's batched log (`_udm_audit_log`) at the storage level, for the writer's hot path,
//! as `store` is for the per-change table: a chunk is one heap insert plus its index entries,
//! and the hash of a record's previous change is read by a backward scan of the primary key
//! `(batch_id, first_slot)`. No SQL is planned or executed per chunk (through SPI, the read and
//! the insert cost about 60 µs of an audited single-row UPDATE; this way about a third).
//!
//! On Citus, where the trigger fires on a worker, the shard of the log is used.

use super::batch::LOG;
use super::store::{layout, missing, per_tenant, Opened};
use crate::catalog::Tenant;
use crate::error::Result;
use pgrx::prelude::*;
use std::rc::Rc;
use udm_core::error::UdmError;

/// The columns of `_udm_audit_log` in the order a chunk is given to `insert`.
pub const COLUMNS: [(&str, pg_sys::Oid); 18] = [
    ("batch_id", pg_sys::INT8OID),
    ("first_slot", pg_sys::INT4OID),
    ("entity", pg_sys::TEXTOID),
    ("entity_version", pg_sys::INT4OID),
    ("user_id", pg_sys::TEXTOID),
    ("db_role", pg_sys::TEXTOID),
    ("txid", pg_sys::INT8OID),
    ("changed_at", pg_sys::TIMESTAMPTZOID),
    ("record_ids", pg_sys::UUIDARRAYOID),
    ("actions", pg_sys::TEXTARRAYOID),
    ("record_versions", pg_sys::INT4ARRAYOID),
    ("prev_ptrs", pg_sys::BYTEAOID),
    ("old_data", pg_sys::JSONBARRAYOID),
    ("new_data", pg_sys::JSONBARRAYOID),
    ("changed_fields", pg_sys::TEXTARRAYOID),
    ("prev_hashes", pg_sys::BYTEAARRAYOID),
    ("hashes", pg_sys::BYTEAOID),
    ("batch_hash", pg_sys::BYTEAOID),
];
const N: usize = COLUMNS.len();
const FIRST_SLOT: usize = 1;
const HASHES: usize = 16;

/// The primary key a change's chunk is found by.
const PKEY: &str = "_udm_audit_log_pkey";

pub struct LogTable {
    schema: String,
    relid: pg_sys::Oid,
    pkey: pg_sys::Oid,
    natts: usize,
    /// 0-based attribute index of each of `COLUMNS`
    attrs: [usize; N],
}

/// One chunk: the datums of `COLUMNS` (None for NULL).
pub type Chunk = [Option<pg_sys::Datum>; N];

thread_local! {
    static TABLES: crate::cache::Cache<pg_sys::Oid, Rc<LogTable>> = crate::cache::Lru::new("batched audit logs");
}

/// The batched log of a tenant, cached per backend (by schema oid) until any definition changes.
pub fn of(t: &Tenant) -> Result<Rc<LogTable>> {
    per_tenant(&TABLES, t, load)
}

fn load(t: &Tenant) -> Result<LogTable> {
    let missing = |what: &str| missing(t, what);
    let local = |name: &str| {
        crate::citus::local_relation(t.schema_oid, LOG, name).ok_or_else(|| missing(name))
    };
    let relid = local(LOG)?;
    let pkey = local(PKEY)?;
    let (natts, found) = layout(relid, &COLUMNS, &|c| {
        missing(&format!("column {LOG}.{c} of the expected type"))
    })?;
    let mut attrs = [0usize; N];
    attrs.copy_from_slice(&found);
    Ok(LogTable {
        schema: t.schema.clone(),
        relid,
        pkey,
        natts,
        attrs,
    })
}

impl LogTable {
    /// Opens the log and its indexes for one flush.
    pub fn open(&self) -> Result<Writer<'_>> {
        let (opened, pkey) = Opened::open(self.relid, self.pkey, PKEY);
        if pkey.is_null() {
            return Err(UdmError::internal(format!(
                "udm audit: tenant schema \"{}\" has no {PKEY} on its batched audit log",
                self.schema
            )));
        }
        Ok(Writer {
            table: self,
            opened,
            pkey,
        })
    }
}

/// The batched log opened for a flush (closed when dropped).
pub struct Writer<'a> {
    table: &'a LogTable,
    opened: Opened,
    pkey: pg_sys::Relation,
}

impl Writer<'_> {
    /// Inserts one chunk.
    pub fn insert(&self, chunk: &Chunk) {
        let t = self.table;
        unsafe {
            let desc = pg_sys::CreateTupleDescCopy((*self.opened.rel).rd_att);
            let mut values = vec![pg_sys::Datum::from(0usize); t.natts];
            let mut nulls = vec![true; t.natts];
            for (c, v) in chunk.iter().enumerate() {
                let a = t.attrs[c];
                values[a] = v.unwrap_or(pg_sys::Datum::from(0usize));
                nulls[a] = v.is_none();
            }
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
            let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::ExecStoreHeapTuple(tuple, slot, true);
            self.opened.insert(&mut [slot], std::ptr::null_mut());
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::FreeTupleDesc(desc);
        }
    }

    /// The chunk holding slot `slot` of batch `batch`: its first slot and its changes' hashes,
    /// all of them (`whole`) or only the 32 bytes of `slot` (a slice of the TOAST value). Read
    /// with a fresh snapshot after this command's own rows (a writer that waited for another's
    /// row lock sees the change it follows).
    pub fn hashes(&self, batch: i64, slot: i32, whole: bool) -> Option<(i64, Vec<u8>)> {
        let t = self.table;
        unsafe {
            pg_sys::CommandCounterIncrement();
            let rel = self.opened.rel;
            let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            let scan = pg_sys::index_beginscan(rel, self.pkey, snap, 2, 0);
            let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut keys[0],
                1,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::Oid::from(pg_sys::F_INT8EQ),
                pg_sys::Datum::from(batch),
            );
            pg_sys::ScanKeyInit(
                &mut keys[1],
                2,
                pg_sys::BTLessEqualStrategyNumber as u16,
                pg_sys::Oid::from(pg_sys::F_INT4LE),
                pg_sys::Datum::from(slot),
            );
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), 2, std::ptr::null_mut(), 0);
            let tslot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            let mut out = None;
            if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::BackwardScanDirection, tslot)
            {
                let mut null = false;
                let first = pg_sys::slot_getattr(tslot, t.attrs[FIRST_SLOT] as i32 + 1, &mut null)
                    .value() as i32 as i64;
                let d = pg_sys::slot_getattr(tslot, t.attrs[HASHES] as i32 + 1, &mut null);
                if !null && first <= slot as i64 {
                    let v = if whole {
                        pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr())
                    } else {
                        pg_sys::pg_detoast_datum_slice(
                            d.cast_mut_ptr(),
                            ((slot as i64 - first) * 32) as i32,
                            32,
                        )
                    };
                    out = Some((
                        first,
                        crate::query::rowjson::varlena(pg_sys::Datum::from(v)).to_vec(),
                    ));
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(tslot);
            pg_sys::index_endscan(scan);
            pg_sys::UnregisterSnapshot(snap);
            out
        }
    }
}
