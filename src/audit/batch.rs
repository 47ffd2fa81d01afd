//! The batched audit log (issue 20), for tenants made with `udm.audit_batches = on`.
//!
//! `_udm_audit_log` holds one row per chunk of a statement's changes to one table (up to
//! `PER_BATCH`): the record ids, actions, versions, images, changed fields and previous hashes
//! as arrays (lz4, hashes uncompressed), the changes' hashes and their records' previous
//! pointers as flat byte strings stored uncompressed (32 and 8 bytes a change: one change's is
//! read as a slice of its TOAST value, without the rest), and what the changes share (entity, user, role, transaction, time) once. Its
//! only index is the primary key `(batch_id, first_slot)`: one entry per chunk, not per change.
//!
//! Every change has a pointer, `batch_id * SLOTS + slot`, which is also its audit (event) id.
//! Each entity row carries the pointer of its latest change in the hidden column `_audit_ptr`,
//! given by the stamp trigger before the row is written (`next_pointer`), and each change stores
//! the pointer and hash of its record's previous change: a record's history is a chain walked
//! from its row. The chains the rows cannot carry (many-to-many links, keyed by the source
//! record; lock events; deleted records) have their newest pointer in `_udm_audit_heads`.
//!
//! The view `_udm_audit` shows the log one row per change, with the columns of the per-change
//! table other tenants have: everything that reads the audit log reads it there.

use super::{batch_store, Pending};
use crate::catalog::Tenant;
use crate::error::Result;
use crate::triggers::{text_datum, uuid_datum};
use pgrx::prelude::*;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::rc::Rc;
use udm_core::error::UdmError;
use udm_core::ident::{quote_ident, quote_literal};

pub const LOG: &str = udm_core::transfer::AUDIT_LOG;
pub const SEQ: &str = "_udm_audit_batch_seq";
pub const HEADS: &str = udm_core::transfer::AUDIT_HEADS;
/// The hidden column of entity rows: the pointer of the row's latest change.
pub const PTR_COLUMN: &str = udm_core::transfer::AUDIT_POINTER;
/// Pointers are `batch_id * SLOTS + slot`.
pub const SLOTS: i64 = 1024;
/// Changes per batch id (and at most per chunk row).
pub const PER_BATCH: i64 = 1000;
/// A flush reads a chunk's hashes whole when at least this many of its changes follow changes
/// of that chunk (else one hash at a time).
const WHOLE_AT: usize = 16;

/// Whether the tenant keeps its audit log in batches.
pub fn is_batched(t: &Tenant) -> bool {
    t.relation(LOG).is_some()
}

/// The per-change view of the log, as `_udm_audit` (`filter`: the WHERE clause that access
/// control adds, over the view's own columns).
fn view_sql(schema: &str, filter: Option<&str>) -> String {
    let s = quote_ident(schema);
    let filter = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
    format!(
        "CREATE OR REPLACE VIEW {s}.\"_udm_audit\" WITH (security_barrier) AS \
         SELECT * FROM (SELECT b.batch_id * {SLOTS} + b.first_slot + c.n - 1 AS audit_id, b.entity, \
           c.record_id, c.action, c.record_version, b.entity_version, c.old_data, c.new_data, \
           pg_catalog.string_to_array(c.changed, ',') AS changed_fields, b.user_id, b.db_role, \
           b.txid, b.changed_at, c.prev_hash, \
           pg_catalog.substring(hh.h, (c.n::integer - 1) * 32 + 1, 32) AS hash, b.batch_id, \
           ('x' || pg_catalog.encode(pg_catalog.substring(hh.p, (c.n::integer - 1) * 8 + 1, 8), \
             'hex'))::bit(64)::bigint AS prev_ptr \
         FROM {s}.\"{LOG}\" b, \
           LATERAL (SELECT b.hashes || '\\x'::bytea AS h, b.prev_ptrs || '\\x'::bytea AS p OFFSET 0) hh, \
           LATERAL ROWS FROM (pg_catalog.unnest(b.record_ids), \
           pg_catalog.unnest(b.actions), pg_catalog.unnest(b.record_versions), \
           pg_catalog.unnest(b.old_data), pg_catalog.unnest(b.new_data), \
           pg_catalog.unnest(b.changed_fields), pg_catalog.unnest(b.prev_hashes)) \
           WITH ORDINALITY AS c(record_id, action, record_version, old_data, new_data, changed, \
           prev_hash, n)) a{filter}"
    )
}

/// A condition that lets a reader of `_udm_audit` by audit id (`first` <= id <= `last`, SQL
/// expressions) read only the chunks that can hold them: the view's `batch_id` is the chunks'
/// key (and comparing it leaks nothing: the condition goes below a security barrier).
pub fn chunks_sql(first: &str, last: &str) -> String {
    format!(" AND batch_id BETWEEN ({first})::bigint / {SLOTS} AND ({last})::bigint / {SLOTS}")
}

/// The tables of a batched audit log (as `audit::tenant_tables_sql` makes the per-change one).
pub fn tables_sql(schema: &str, role: &str) -> String {
    let s = quote_ident(schema);
    let r = quote_ident(role);
    format!(
        "CREATE SEQUENCE {s}.\"{SEQ}\"; \
         CREATE TABLE {s}.\"{LOG}\" (\
           batch_id bigint NOT NULL, \
           first_slot integer NOT NULL, \
           entity text NOT NULL, \
           entity_version integer, \
           user_id text NOT NULL, \
           db_role text NOT NULL, \
           txid bigint NOT NULL, \
           changed_at timestamp with time zone NOT NULL, \
           record_ids uuid[] COMPRESSION lz4 NOT NULL, \
           actions text[] COMPRESSION lz4 NOT NULL, \
           record_versions integer[] COMPRESSION lz4 NOT NULL, \
           prev_ptrs bytea NOT NULL, \
           old_data jsonb[] COMPRESSION lz4 NOT NULL, \
           new_data jsonb[] COMPRESSION lz4 NOT NULL, \
           changed_fields text[] COMPRESSION lz4 NOT NULL, \
           prev_hashes bytea[] NOT NULL, \
           hashes bytea NOT NULL, \
           batch_hash bytea NOT NULL, \
           CONSTRAINT \"{LOG}_pkey\" PRIMARY KEY (batch_id, first_slot)); \
         ALTER TABLE {s}.\"{LOG}\" ALTER prev_ptrs SET STORAGE EXTERNAL, \
           ALTER hashes SET STORAGE EXTERNAL, ALTER prev_hashes SET STORAGE EXTERNAL; \
         ALTER SEQUENCE {s}.\"{SEQ}\" OWNED BY {s}.\"{LOG}\".batch_id; \
         CREATE TABLE {s}.\"{HEADS}\" (\
           entity text NOT NULL, \
           record_id uuid NOT NULL, \
           ptr bigint NOT NULL, \
           PRIMARY KEY (entity, record_id)); \
         CREATE INDEX \"{HEADS}__record__idx\" ON {s}.\"{HEADS}\" (record_id); \
         CREATE INDEX \"_udm_audit__changed_at_txid_id__idx\" ON {s}.\"{LOG}\" \
           USING brin (changed_at, txid, batch_id) WITH (autosummarize = on); \
         {view}; \
         GRANT SELECT ON {s}.\"_udm_audit\" TO {r}; \
         COMMENT ON TABLE {s}.\"{LOG}\" IS 'udm audit log in batches (one row per chunk of a statement''s changes; see the view _udm_audit)'; \
         COMMENT ON VIEW {s}.\"_udm_audit\" IS 'udm audit log and change events, one row per change (append-only, hash-chained per record)';",
        view = view_sql(schema, None)
    )
}

/// The view of a batched log as this version makes it, with the access filter when the tenant
/// controls access (`udm_upgrade_tenant`: a view made by an older build gets today's columns).
pub fn view_refresh_sql(t: &Tenant) -> String {
    if t.access {
        access_sql(&t.schema)
    } else {
        view_sql(&t.schema, None)
    }
}

/// An ERROR unless the tenant's view of its batched log has this version's columns (one made by
/// an older build lacks `prev_ptr`, which verification reads): `udm.upgrade_tenant` remakes it.
pub fn require_current_view(t: &Tenant) -> Result<()> {
    let current = match t.relation("_udm_audit") {
        Some(view) => crate::spi::select_one::<bool>(
            "SELECT true FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = 'prev_ptr' \
             AND NOT attisdropped",
            &[view.into()],
        )?
        .unwrap_or(false),
        None => false,
    };
    if current {
        return Ok(());
    }
    Err(UdmError::new(
        udm_core::error::SqlState::ObjectNotInPrerequisiteState,
        format!(
            "the audit log view of tenant \"{}\" was made by an older build of udm",
            t.slug
        ),
    )
    .hint(format!(
        "a superuser brings it up to date with {}",
        udm_core::ident::sql_call("udm.upgrade_tenant", &[&t.slug])
    )))
}

/// What switching access control on does to a batched log: the view shows a member the changes
/// of the records they see (and managers all of them), as the per-change table's policy does.
pub fn access_sql(schema: &str) -> String {
    let s = quote_literal(schema);
    view_sql(
        schema,
        Some(&format!(
            "((SELECT udm.may_read_audit({s})) OR udm.audit_visible({s}, a.entity, a.record_id))"
        )),
    )
}

/// `ALTER TABLE` adding the pointer column to an entity table of a batched tenant.
pub fn pointer_column_sql(table: &str) -> String {
    format!("ALTER TABLE {table} ADD COLUMN \"{PTR_COLUMN}\" bigint")
}

// ------------------------------------------------------------------ pointers

/// (table or 0, local transaction, command) -> (batch id, next slot)
type AllocKey = (pg_sys::Oid, u32, u32);

thread_local! {
    static ALLOC: RefCell<FxHashMap<AllocKey, (i64, i64)>> = RefCell::new(FxHashMap::default());
    /// Newest (hash, pointer) per (schema, entity, record) written in this transaction.
    static CHAIN: RefCell<FxHashMap<super::HeadKey, ([u8; 32], i64)>> = RefCell::new(FxHashMap::default());
    /// Kept plans per tenant schema: (insert a chunk, read a chunk's hashes, read heads, upsert heads).
    static PLANS: RefCell<FxHashMap<pg_sys::Oid, Rc<Plans>>> = RefCell::new(FxHashMap::default());
}

pub fn reset_transaction_state() {
    ALLOC.with(|a| a.borrow_mut().clear());
    CHAIN.with(|c| c.borrow_mut().clear());
}

/// After a subtransaction's abort: its rows are gone (pointers it handed out stay used).
pub fn forget_chain() {
    CHAIN.with(|c| c.borrow_mut().clear());
}

/// The pointer of the next change to table `relid` (0: changes without a row to carry it) in the
/// current command: slots of one batch id in order, a new batch id every `PER_BATCH`.
pub fn next_pointer(t: &Tenant, relid: pg_sys::Oid) -> Result<i64> {
    let key = (relid, crate::guc::local_xact(), unsafe {
        pg_sys::GetCurrentCommandId(false)
    });
    let hit = ALLOC.with(|a| {
        let mut a = a.borrow_mut();
        match a.get_mut(&key) {
            Some((batch, next)) if *next < PER_BATCH => {
                let p = *batch * SLOTS + *next;
                *next += 1;
                Some(p)
            }
            _ => None,
        }
    });
    if let Some(p) = hit {
        return Ok(p);
    }
    let batch = new_batch(t)?;
    ALLOC.with(|a| {
        let mut a = a.borrow_mut();
        if a.len() > 256 {
            a.clear();
        }
        a.insert(key, (batch, 1));
    });
    Ok(batch * SLOTS)
}

/// A new batch id, after the tenant's event horizon lock (taken once per transaction, before
/// the first id: see `events::horizon`).
fn new_batch(t: &Tenant) -> Result<i64> {
    let Some(seq) = t.relation(SEQ) else {
        return Err(UdmError::internal(format!(
            "udm audit: tenant schema \"{}\" has no {SEQ}",
            t.schema
        )));
    };
    // as the owner: tenant roles may not use the log's sequence
    Ok(super::as_owner_id(|| {
        if super::HORIZON.with(|h| h.borrow_mut().insert(t.schema.clone())) {
            lock_horizon(seq, super::horizon_tag(&t.schema));
        }
        unsafe {
            pgrx::direct_function_call::<i64>(
                pg_sys::nextval_oid,
                &[Some(pg_sys::Datum::from(seq))],
            )
            .expect("nextval")
        }
    }))
}

/// The horizon lock of a batched log: its key is the last event id any batch given out so far
/// can hold.
fn lock_horizon(seq: pg_sys::Oid, tag: i64) {
    super::hold_horizon(tag, seq, SLOTS);
}

/// The highest event id a batched log has given out (the horizon's sequence part).
pub fn last_event_sql(t: &Tenant) -> String {
    format!(
        "SELECT CASE WHEN is_called THEN last_value * {SLOTS} + {} ELSE 0 END FROM {}",
        SLOTS - 1,
        t.catalog(SEQ)
    )
}

// ------------------------------------------------------------------ kept plans

struct Plans {
    head: pg_sys::SPIPlanPtr,
    any_head: pg_sys::SPIPlanPtr,
    upsert: pg_sys::SPIPlanPtr,
    /// A record's chains walked back from their starts (`record_pointers`).
    walk: pg_sys::SPIPlanPtr,
}

unsafe fn keep(sql: &str, types: &mut [pg_sys::Oid]) -> Result<pg_sys::SPIPlanPtr> {
    unsafe { keep_with(sql, types, 0) }
}

/// `keep` with cursor options (`CURSOR_OPT_GENERIC_PLAN`: planned once, whatever the values).
unsafe fn keep_with(
    sql: &str,
    types: &mut [pg_sys::Oid],
    options: i32,
) -> Result<pg_sys::SPIPlanPtr> {
    unsafe {
        let c = std::ffi::CString::new(sql).map_err(|_| UdmError::internal("NUL in SQL"))?;
        let p =
            pg_sys::SPI_prepare_cursor(c.as_ptr(), types.len() as i32, types.as_mut_ptr(), options);
        if p.is_null() {
            return Err(UdmError::internal(format!(
                "udm audit: cannot prepare \"{sql}\""
            )));
        }
        pg_sys::SPI_keepplan(p);
        Ok(p)
    }
}

fn plans(t: &Tenant) -> Result<Rc<Plans>> {
    if let Some(p) = PLANS.with(|p| p.borrow().get(&t.schema_oid).cloned()) {
        return Ok(p);
    }
    use pg_sys::{INT8ARRAYOID, TEXTARRAYOID, TEXTOID, TIMESTAMPTZOID, UUIDARRAYOID, UUIDOID};
    let log = t.catalog(LOG);
    let heads = t.catalog(HEADS);
    // one step of a chain's walk from pointer `p`: its previous pointer and whether it is done
    let step = |p: &str| {
        format!(
            "LEFT JOIN LATERAL ( \
               SELECT ('x' || pg_catalog.encode(pg_catalog.substring(l.prev_ptrs, \
                        ({p} % {SLOTS} - l.first_slot)::int * 8 + 1, 8), 'hex'))::bit(64)::bigint AS prev, \
                      coalesce(l.changed_at <= $2, false) AS done \
               FROM {log} l WHERE l.batch_id = {p} / {SLOTS} AND l.first_slot <= ({p} % {SLOTS})::int \
               ORDER BY l.first_slot DESC LIMIT 1) st ON true"
        )
    };
    // SPI_prepare needs a connection of its own (this may run inside another's call)
    unsafe { pg_sys::SPI_connect() };
    struct Finish;
    impl Drop for Finish {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                unsafe { pg_sys::SPI_finish() };
            }
        }
    }
    let finish = Finish;
    let p = unsafe {
        Plans {
            head: keep(
                &format!("SELECT ptr FROM {heads} WHERE entity = $1 AND record_id = $2"),
                &mut [TEXTOID, UUIDOID],
            )?,
            any_head: keep(
                &format!("SELECT 1 FROM {heads} WHERE entity = $1 LIMIT 1"),
                &mut [TEXTOID],
            )?,
            upsert: keep(
                &format!(
                    "INSERT INTO {heads} (entity, record_id, ptr) \
                     SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::uuid[]), \
                       pg_catalog.unnest($3::bigint[])) \
                     ON CONFLICT (entity, record_id) DO UPDATE SET ptr = EXCLUDED.ptr"
                ),
                &mut [TEXTARRAYOID, UUIDARRAYOID, INT8ARRAYOID],
            )?,
            // The walk, in one statement: a step reads a change's previous pointer (8 bytes, a
            // slice of its chunk's `prev_ptrs`, by primary key) and whether it was made at or
            // before `$2` (where a walk for `udm_record_at` stops). UNION (not UNION ALL) ends
            // the walk at a pointer already seen, so even a log whose chains were tampered into a
            // cycle ends. With `$2`, only where each chain stopped is returned.
            walk: keep_with(
                &format!(
                    "WITH RECURSIVE w(ptr, prev, done) AS ( \
                       SELECT s.p, st.prev, st.done FROM pg_catalog.unnest($1::bigint[]) AS s(p) {} \
                       UNION \
                       SELECT w.prev, st.prev, st.done FROM w {} \
                       WHERE w.prev > 0 AND NOT w.done) \
                     SELECT DISTINCT ptr FROM w WHERE $2 IS NULL OR done",
                    step("s.p"),
                    step("w.prev")
                ),
                &mut [INT8ARRAYOID, TIMESTAMPTZOID],
                pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
            )?,
        }
    };
    drop(finish);
    let p = Rc::new(p);
    PLANS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 64 {
            // kept plans of tenants this backend no longer writes to
            for (_, old) in m.drain() {
                if let Ok(old) = Rc::try_unwrap(old) {
                    unsafe {
                        for q in [old.head, old.any_head, old.upsert, old.walk] {
                            pg_sys::SPI_freeplan(q);
                        }
                    }
                }
            }
        }
        m.insert(t.schema_oid, p.clone())
    });
    Ok(p)
}

/// How a kept plan runs (`run`).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A write.
    Write,
    /// A read of the writer: a fresh snapshot (what other writers committed, and this command's
    /// own rows).
    Latest,
    /// A reader's read, read-only, in the caller's snapshot.
    Reader,
}

/// Runs a kept plan, calling `f` with the result rows.
unsafe fn run<R>(
    plan: pg_sys::SPIPlanPtr,
    args: &[Option<pg_sys::Datum>],
    mode: Mode,
    f: impl FnOnce(pg_sys::TupleDesc, &[pg_sys::HeapTuple]) -> R,
) -> Result<R> {
    unsafe {
        let mut values: Vec<pg_sys::Datum> = args
            .iter()
            .map(|a| a.unwrap_or(pg_sys::Datum::from(0usize)))
            .collect();
        let nulls: Vec<std::os::raw::c_char> = args
            .iter()
            .map(|a| if a.is_some() { b' ' } else { b'n' } as std::os::raw::c_char)
            .collect();
        pg_sys::SPI_connect();
        let rc = if mode == Mode::Latest {
            pg_sys::CommandCounterIncrement();
            pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                nulls.as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                1,
            )
        } else {
            let read_only = mode == Mode::Reader;
            pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), read_only, 0)
        };
        if rc < 0 {
            pg_sys::SPI_finish();
            return Err(UdmError::internal(format!(
                "udm audit: a statement on the batched log failed ({rc})"
            )));
        }
        let tt = pg_sys::SPI_tuptable;
        let out = if tt.is_null() {
            f(std::ptr::null_mut(), &[])
        } else {
            let n = pg_sys::SPI_processed as usize;
            let rows = std::slice::from_raw_parts((*tt).vals, n);
            f((*tt).tupdesc, rows)
        };
        pg_sys::SPI_finish();
        Ok(out)
    }
}

// ------------------------------------------------------------------ writing

/// A one-dimensional array of `elems` (None: NULL).
fn array(
    elems: &[Option<pg_sys::Datum>],
    typ: pg_sys::Oid,
    len: i16,
    byval: bool,
    align: u8,
) -> pg_sys::Datum {
    let mut values: Vec<pg_sys::Datum> = elems
        .iter()
        .map(|e| e.unwrap_or(pg_sys::Datum::from(0usize)))
        .collect();
    let mut nulls: Vec<bool> = elems.iter().map(|e| e.is_none()).collect();
    let mut dims = [elems.len() as i32];
    let mut lbs = [1i32];
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_md_array(
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            typ,
            len as i32,
            byval,
            align as std::os::raw::c_char,
        ))
    }
}

fn bytes_datum(b: &[u8]) -> pg_sys::Datum {
    b.into_datum().expect("bytea is never NULL")
}

/// The hashes of chunks read whole in this flush: batch id -> (first slot, hashes).
type ChunkCache = FxHashMap<i64, Vec<(i64, Vec<u8>)>>;

/// The hash of the change at `ptr`. With `whole`, its chunk's hashes are read once and kept for
/// the rest of the flush (many changes of the flush follow changes of that chunk); else only its
/// own 32 bytes are read, a slice of the chunk's TOAST value.
fn hash_at(
    log: &batch_store::Writer,
    cache: &mut ChunkCache,
    ptr: i64,
    whole: bool,
) -> Result<Option<Vec<u8>>> {
    let (batch, slot) = (ptr / SLOTS, ptr % SLOTS);
    let find = |cache: &ChunkCache| -> Option<Vec<u8>> {
        cache.get(&batch)?.iter().find_map(|(first, hashes)| {
            let i = ((slot - first) * 32) as usize;
            (slot >= *first && i + 32 <= hashes.len()).then(|| hashes[i..i + 32].to_vec())
        })
    };
    if let Some(h) = find(cache) {
        return Ok(Some(h));
    }
    if !whole {
        let one = log.hashes(batch, slot as i32, false);
        return Ok(one.and_then(|(_, h)| (h.len() == 32).then_some(h)));
    }
    if let Some(c) = log.hashes(batch, slot as i32, true) {
        cache.entry(batch).or_default().push(c);
    }
    Ok(find(cache))
}

/// Whether any chain of `entity` has its head in `_udm_audit_heads` (a record of it was deleted,
/// or it is a link or lock chain), asked once per flush and entity.
fn had_heads(p: &Plans, seen: &mut FxHashMap<Rc<str>, bool>, entity: &Rc<str>) -> Result<bool> {
    if let Some(&b) = seen.get(entity) {
        return Ok(b);
    }
    let b = unsafe {
        run(
            p.any_head,
            &[Some(text_datum(entity))],
            Mode::Latest,
            |_, rows| !rows.is_empty(),
        )?
    };
    seen.insert(entity.clone(), b);
    Ok(b)
}

fn head_of(p: &Plans, entity: &str, id: &[u8; 16]) -> Result<Option<i64>> {
    unsafe {
        run(
            p.head,
            &[Some(text_datum(entity)), Some(uuid_datum(id))],
            Mode::Latest,
            |desc, rows| {
                let row = *rows.first()?;
                let mut null = false;
                let d = pg_sys::heap_getattr(row, 1, desc, &mut null);
                (!null).then(|| d.value() as i64)
            },
        )
    }
}

/// Writes a tenant's buffered changes as chunks of the batched log; returns each change's event
/// id (its pointer).
pub(super) fn write(t: &Tenant, entries: &[Pending]) -> Result<Vec<i64>> {
    let p = plans(t)?;
    let table = batch_store::of(t)?;
    let log = table.open()?;
    // pointers: the row's (given by the stamp trigger), else one given now
    let mut ptrs = Vec::with_capacity(entries.len());
    for e in entries {
        ptrs.push(match e.ptr {
            Some(ptr) => ptr,
            None => next_pointer(t, pg_sys::InvalidOid)?,
        });
    }
    // previous (hash, pointer) of each change
    let mut chunks: ChunkCache = FxHashMap::default();
    // chunks that many changes of this flush follow are read whole, once
    let mut following: FxHashMap<i64, usize> = FxHashMap::default();
    for e in entries {
        if let Some(ptr) = e.prev_ptr {
            *following.entry(ptr / SLOTS).or_default() += 1;
        }
    }
    let mut prevs: Vec<(Option<Vec<u8>>, Option<i64>)> = Vec::with_capacity(entries.len());
    let mut hashes: Vec<[u8; 32]> = Vec::with_capacity(entries.len());
    let mut scratch = Vec::with_capacity(1024);
    let mut headed: Vec<usize> = Vec::new();
    let mut heads_seen: FxHashMap<Rc<str>, bool> = FxHashMap::default();
    for (i, e) in entries.iter().enumerate() {
        let key = (e.schema.clone(), e.entity.clone(), e.record_id);
        let cached = CHAIN.with(|c| c.borrow().get(&key).copied());
        let prev: (Option<Vec<u8>>, Option<i64>) = if let Some((h, ptr)) = cached {
            (Some(h.to_vec()), Some(ptr))
        } else if !e.lookup && e.prev_ptr.is_none() {
            // a plain INSERT starts a chain; one re-using a deleted record's id points back at
            // the deleted one's last change (its history goes on), without its hash
            let deleted = if had_heads(&p, &mut heads_seen, &e.entity)? {
                head_of(&p, &e.entity, &e.record_id)?
            } else {
                None
            };
            (None, deleted)
        } else {
            let ptr = match e.prev_ptr {
                Some(ptr) => Some(ptr),
                None if e.lookup => head_of(&p, &e.entity, &e.record_id)?,
                None => None,
            };
            match ptr {
                Some(ptr) => {
                    let whole = following
                        .get(&(ptr / SLOTS))
                        .is_some_and(|&n| n >= WHOLE_AT);
                    (hash_at(&log, &mut chunks, ptr, whole)?, Some(ptr))
                }
                None => (None, None),
            }
        };
        let hash = udm_core::audit::chain_hash_with(
            &mut scratch,
            &udm_core::audit::HashInput {
                prev: prev.0.as_deref(),
                entity: &e.entity,
                record_id: &e.record_id,
                action: e.action,
                record_version: e.record_version,
                entity_version: Some(e.entity_version),
                old_data: e.old.map(|d| unsafe { crate::query::rowjson::varlena(d) }),
                new_data: e.new.map(|d| unsafe { crate::query::rowjson::varlena(d) }),
                changed_fields: e.changed.as_deref(),
                user_id: &e.user,
                db_role: &e.role,
                txid: e.txid,
                changed_at: e.at,
            },
        );
        CHAIN.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() > super::HEADS_MAX {
                c.clear();
            }
            c.insert(key, (hash, ptrs[i]));
        });
        if e.ptr.is_none() || e.action == "DELETE" {
            headed.push(i);
        }
        prevs.push(prev);
        hashes.push(hash);
    }
    // chunks: consecutive changes of one batch id in consecutive slots sharing what a chunk
    // holds once
    let mut start = 0;
    while start < entries.len() {
        let first = &entries[start];
        let mut end = start + 1;
        while end < entries.len()
            && end - start < PER_BATCH as usize
            && ptrs[end] == ptrs[end - 1] + 1
            && ptrs[end] / SLOTS == ptrs[start] / SLOTS
            && {
                let e = &entries[end];
                e.entity == first.entity
                    && e.entity_version == first.entity_version
                    && e.user == first.user
                    && e.role == first.role
                    && e.txid == first.txid
                    && e.at == first.at
            }
        {
            end += 1;
        }
        insert_chunk(
            &log,
            &entries[start..end],
            &ptrs[start..end],
            &prevs[start..end],
            &hashes[start..end],
        )?;
        start = end;
    }
    // the newest change of each chain (a statement may link one record to several others)
    let mut newest: FxHashMap<(&str, [u8; 16]), usize> = FxHashMap::default();
    for &i in &headed {
        newest.insert((&entries[i].entity, entries[i].record_id), i);
    }
    headed.retain(|&i| newest.get(&(&*entries[i].entity, entries[i].record_id)) == Some(&i));
    if !headed.is_empty() {
        let ent: Vec<Option<pg_sys::Datum>> = headed
            .iter()
            .map(|&i| Some(text_datum(&entries[i].entity)))
            .collect();
        let ids: Vec<Option<pg_sys::Datum>> = headed
            .iter()
            .map(|&i| Some(uuid_datum(&entries[i].record_id)))
            .collect();
        let ps: Vec<Option<pg_sys::Datum>> = headed
            .iter()
            .map(|&i| Some(pg_sys::Datum::from(ptrs[i])))
            .collect();
        unsafe {
            run(
                p.upsert,
                &[
                    Some(array(&ent, pg_sys::TEXTOID, -1, false, b'i')),
                    Some(array(&ids, pg_sys::UUIDOID, 16, false, b'c')),
                    Some(array(&ps, pg_sys::INT8OID, 8, true, b'd')),
                ],
                Mode::Write,
                |_, _| (),
            )?;
        }
    }
    Ok(ptrs)
}

fn insert_chunk(
    log: &batch_store::Writer,
    entries: &[Pending],
    ptrs: &[i64],
    prevs: &[(Option<Vec<u8>>, Option<i64>)],
    hashes: &[[u8; 32]],
) -> Result<()> {
    let e0 = &entries[0];
    let (batch, first) = (ptrs[0] / SLOTS, ptrs[0] % SLOTS);
    let ids: Vec<_> = entries
        .iter()
        .map(|e| Some(uuid_datum(&e.record_id)))
        .collect();
    let actions: Vec<_> = entries.iter().map(|e| Some(text_datum(e.action))).collect();
    let versions: Vec<_> = entries
        .iter()
        .map(|e| e.record_version.map(pg_sys::Datum::from))
        .collect();
    let mut prev_ptrs = Vec::with_capacity(prevs.len() * 8);
    for (_, p) in prevs {
        prev_ptrs.extend_from_slice(&p.unwrap_or(0).to_be_bytes());
    }
    let olds: Vec<_> = entries.iter().map(|e| e.old).collect();
    let news: Vec<_> = entries.iter().map(|e| e.new).collect();
    let changed: Vec<_> = entries
        .iter()
        .map(|e| e.changed.as_deref().map(text_datum))
        .collect();
    let prev_hashes: Vec<_> = prevs
        .iter()
        .map(|(h, _)| h.as_deref().map(bytes_datum))
        .collect();
    let mut hs = Vec::with_capacity(hashes.len() * 32);
    for h in hashes {
        hs.extend_from_slice(h);
    }
    let batch_hash = udm_core::audit::batch_hash(batch, first as i32, hashes);
    let jsonb = pg_sys::JSONBOID;
    log.insert(&[
        Some(pg_sys::Datum::from(batch)),
        Some(pg_sys::Datum::from(first as i32)),
        Some(text_datum(&e0.entity)),
        Some(pg_sys::Datum::from(e0.entity_version)),
        Some(text_datum(&e0.user)),
        Some(text_datum(&e0.role)),
        Some(pg_sys::Datum::from(e0.txid)),
        Some(pg_sys::Datum::from(e0.at)),
        Some(array(&ids, pg_sys::UUIDOID, 16, false, b'c')),
        Some(array(&actions, pg_sys::TEXTOID, -1, false, b'i')),
        Some(array(&versions, pg_sys::INT4OID, 4, true, b'i')),
        Some(bytes_datum(&prev_ptrs)),
        Some(array(&olds, jsonb, -1, false, b'i')),
        Some(array(&news, jsonb, -1, false, b'i')),
        Some(array(&changed, pg_sys::TEXTOID, -1, false, b'i')),
        Some(array(&prev_hashes, pg_sys::BYTEAOID, -1, false, b'i')),
        Some(bytes_datum(&hs)),
        Some(bytes_datum(&batch_hash)),
    ]);
    Ok(())
}

// ------------------------------------------------------------------ reading a record's chains

/// The pointers of a record's changes, newest first: the chain from its row (an entity's
/// record) and those from `_udm_audit_heads` (`entity` itself when deleted; with `links`, its
/// many-to-many fields' chains, `<entity>.<field>`, as they were named). With `until`, a chain's
/// walk stops at its first change made at or before that time, and only those changes are
/// returned (what `udm_record_at` needs: the newest change not after it). Read as the owner:
/// the changes themselves are read through the view, as the caller.
pub fn record_pointers(
    t: &Tenant,
    entity: &str,
    id: pgrx::Uuid,
    links: bool,
    until: Option<pgrx::datum::TimestampWithTimeZone>,
) -> Result<Vec<i64>> {
    crate::access::security::as_owner(|| {
        let mut starts: Vec<i64> = Vec::new();
        if let Some(e) = crate::catalog::entity_any(t, entity)? {
            if t.relation(&e.def.slug).is_some() {
                let sql = format!(
                    "SELECT \"{PTR_COLUMN}\" FROM {} WHERE id = $1",
                    t.catalog(&e.def.slug)
                );
                // kept plans: a record's reads are short, planning them cost more than running
                let row = crate::spi::prepared(&sql, &[pg_sys::UUIDOID], false)?;
                pgrx::Spi::connect(|c| {
                    if let Some(r) = c.select(&*row, Some(1), &[id.into()])?.next() {
                        if let Some(p) = r.get::<i64>(1)? {
                            starts.push(p);
                        }
                    }
                    Ok::<_, pgrx::spi::Error>(())
                })
                .map_err(crate::error::spi_err)?;
            }
        }
        let sql = format!(
            "SELECT ptr FROM {} WHERE record_id = $1 AND (entity = $2 OR ($3 AND starts_with(entity, $2 || '.')))",
            t.catalog(HEADS)
        );
        let heads = crate::spi::prepared(
            &sql,
            &[pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::BOOLOID],
            false,
        )?;
        pgrx::Spi::connect(|c| {
            for r in c.select(&*heads, None, &[id.into(), entity.into(), links.into()])? {
                if let Some(p) = r.get::<i64>(1)? {
                    starts.push(p);
                }
            }
            Ok::<_, pgrx::spi::Error>(())
        })
        .map_err(crate::error::spi_err)?;
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let p = plans(t)?;
        let mut out: Vec<i64> = unsafe {
            let starts = starts.into_datum();
            let until = until.and_then(|u| u.into_datum());
            run(p.walk, &[starts, until], Mode::Reader, |desc, rows| {
                rows.iter()
                    .filter_map(|&row| {
                        let mut null = false;
                        let d = pg_sys::heap_getattr(row, 1, desc, &mut null);
                        (!null).then(|| d.value() as i64)
                    })
                    .collect()
            })?
        };
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    })
}

/// A record's pointers and their batch ids (the arguments of a `RecordFilter`).
pub type Chains = (Vec<i64>, Vec<i64>);
/// The SQL a reader adds and its arguments (`record_filter`).
pub type RecordFilter = (String, Vec<i64>, Vec<i64>);

/// Appends a record filter's arguments (its pointers, then their batch ids) to a reader's.
pub fn push_chains(args: &mut Vec<pgrx::datum::DatumWithOid<'static>>, chains: Option<Chains>) {
    if let Some((ptrs, batches)) = chains {
        args.push(ptrs.into());
        args.push(batches.into());
    }
}

/// What a reader of one record's changes (`WHERE record_id = ...`) adds to its WHERE clause so
/// that a batched log's view reads only the chunks on the record's chains: `$n` are the
/// pointers and `$n+1` their batch ids (both bigint[]). None for a per-change table.
pub fn record_filter(
    t: &Tenant,
    entity: &str,
    id: pgrx::Uuid,
    links: bool,
    until: Option<pgrx::datum::TimestampWithTimeZone>,
    n: usize,
) -> Result<Option<RecordFilter>> {
    if !is_batched(t) {
        return Ok(None);
    }
    let ptrs = record_pointers(t, entity, id, links, until)?;
    let mut batches: Vec<i64> = ptrs.iter().map(|p| p / SLOTS).collect();
    batches.dedup();
    Ok(Some((
        format!(
            " AND audit_id = ANY(${n}::bigint[]) AND batch_id = ANY(${}::bigint[])",
            n + 1
        ),
        ptrs,
        batches,
    )))
}
