//! Point reads by primary key without a second executor: `udm_get` of a whole record opens the
//! primary key index, fetches the row under the statement's snapshot and builds its JSON with
//! PostgreSQL's own `jsonb_build_object` (so the output is exactly what the SQL path returns).
//!
//! Used only where it is provably the same as the SQL path: the caller holds table-wide SELECT,
//! row-level security is off for the table, and the entity has no many-to-many fields (their
//! link lists need a subquery). Otherwise `udm_get` takes the SQL path. GraphQL's record by id
//! reads its columns the same way (`columns_plan`) under the same conditions.

use crate::cache::{self, Cache, Lru};
use crate::catalog::{self, Entity, Tenant};
use crate::query::rowjson::RowJson;
use pgrx::prelude::*;
use std::rc::Rc;
use udm_core::ident::SYSTEM_COLUMNS;
use udm_core::types::FieldType;

/// What a fast read of one entity needs.
pub struct GetPlan {
    relid: pg_sys::Oid,
    pkey: pg_sys::Oid,
    natts: i32,
    /// The columns read, as jsonb (keyed by field name for a whole record).
    pub json: RowJson,
}

thread_local! {
    static PLANS: Cache<String, Option<Rc<GetPlan>>> = Lru::new("point reads");
}

/// The fast-read plan of an entity, or None when it cannot have one.
pub fn plan(t: &Tenant, e: &Entity) -> Option<Rc<GetPlan>> {
    if crate::citus::installed() {
        // a Citus coordinator's table is a shell: the record is read where it is, through SQL
        return None;
    }
    let g = catalog::generation();
    cache::sync(&PLANS, g);
    let key = format!("{}|{}", t.slug, e.def.slug);
    if let Some(p) = cache::get(&PLANS, &key) {
        return p;
    }
    let p = unsafe { build(e) }.map(Rc::new);
    let bytes = 512 + e.def.fields.len() * 96 + key.len();
    cache::put_scoped(&PLANS, t.scope(), key, p.clone(), bytes);
    p
}

/// The fast-read plan of some columns of an entity (`columns`: each column and whether it is
/// read as its text), or None when it cannot have one (an encrypted or many-to-many field, a
/// column the table does not have). The jsonb builder's keys are the columns' positions.
pub fn columns_plan(t: &Tenant, e: &Entity, columns: &[(String, bool)]) -> Option<Rc<GetPlan>> {
    if crate::citus::installed() {
        return None;
    }
    let g = catalog::generation();
    cache::sync(&PLANS, g);
    let mut key = format!("{}|{}|", t.slug, e.def.slug);
    for (c, text) in columns {
        key.push_str(c);
        key.push(if *text { '\u{2}' } else { '\u{1}' });
    }
    if let Some(p) = cache::get(&PLANS, &key) {
        return p;
    }
    let plain = columns.iter().all(|(c, _)| {
        SYSTEM_COLUMNS.contains(&c.as_str())
            || e.def.fields.iter().any(|f| {
                &f.column == c
                    && !f.encrypted
                    && !f.is_many_to_many()
                    && f.ftype != FieldType::Password
            })
    });
    let p = plain
        .then(|| {
            let names: Vec<(String, String)> = columns
                .iter()
                .enumerate()
                .map(|(i, (c, _))| (c.clone(), i.to_string()))
                .collect();
            let text: Vec<bool> = columns.iter().map(|(_, t)| *t).collect();
            unsafe { open(e, &names, &text) }
        })
        .flatten()
        .map(Rc::new);
    let bytes = 512 + columns.len() * 96 + key.len();
    cache::put_scoped(&PLANS, t.scope(), key, p.clone(), bytes);
    p
}

unsafe fn build(e: &Entity) -> Option<GetPlan> {
    unsafe {
        // encrypted fields are decrypted by the SQL path's udm.decrypt_field
        if e.table_oid == pg_sys::InvalidOid
            || e.def
                .fields
                .iter()
                .any(|f| f.is_many_to_many() || f.encrypted)
        {
            return None;
        }
        let mut columns: Vec<String> = SYSTEM_COLUMNS.iter().map(|s| s.to_string()).collect();
        columns.extend(
            e.def
                .fields
                .iter()
                .filter(|f| f.ftype != FieldType::Password)
                .map(|f| f.column.clone()),
        );
        let names: Vec<String> = SYSTEM_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .chain(
                e.def
                    .fields
                    .iter()
                    .filter(|f| f.ftype != FieldType::Password)
                    .map(|f| f.name.clone()),
            )
            .collect();
        let named: Vec<(String, String)> = columns.into_iter().zip(names).collect();
        open(e, &named, &vec![false; named.len()])
    }
}

/// The plan reading the table columns `columns` (column, key) of the entity, those marked in
/// `text` as their text.
unsafe fn open(e: &Entity, columns: &[(String, String)], text: &[bool]) -> Option<GetPlan> {
    unsafe {
        if e.table_oid == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::relation_open(e.table_oid, pg_sys::AccessShareLock as i32);
        let pkey = pg_sys::RelationGetPrimaryKeyIndex(rel);
        let desc = (*rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        let mut cols = Vec::with_capacity(columns.len());
        let mut as_text = Vec::new();
        for ((c, n), t) in columns.iter().zip(text) {
            match attrs.iter().position(|a| !a.attisdropped && a.name() == c) {
                Some(i) => {
                    cols.push((n.clone(), i));
                    if *t {
                        as_text.push(i);
                    }
                }
                None => {
                    pg_sys::relation_close(rel, pg_sys::NoLock as i32);
                    return None;
                }
            }
        }
        let json = RowJson::new_text(desc, &cols, &as_text);
        let natts = (*desc).natts;
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        if pkey == pg_sys::InvalidOid {
            return None;
        }
        Some(GetPlan {
            relid: e.table_oid,
            pkey,
            natts,
            json,
        })
    }
}

pub enum Outcome {
    Found(pg_sys::Datum),
    Missing,
    /// The fast path does not apply (privileges, row security): use the SQL path.
    UseSql,
}

/// Reads the record with primary key `id` (a uuid datum).
pub fn get(p: &GetPlan, id: pg_sys::Datum) -> Outcome {
    match read(p, id, |json, values, nulls| unsafe {
        json.build(values, nulls)
    }) {
        Read::Found(d) => Outcome::Found(d),
        Read::Missing => Outcome::Missing,
        Read::UseSql => Outcome::UseSql,
    }
}

/// What `read` found.
pub enum Read<R> {
    Found(R),
    Missing,
    /// The fast path does not apply (privileges, row security): use the SQL path.
    UseSql,
}

/// Reads the row with primary key `id` (a uuid datum) and gives `f` the plan's jsonb builder
/// and the row's deformed values and nulls (valid during the call).
pub fn read<R>(
    p: &GetPlan,
    id: pg_sys::Datum,
    f: impl FnOnce(&RowJson, &[pg_sys::Datum], &[bool]) -> R,
) -> Read<R> {
    unsafe {
        let user = pg_sys::GetUserId();
        if pg_sys::pg_class_aclcheck(p.relid, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
            != pg_sys::AclResult::ACLCHECK_OK
        {
            return Read::UseSql;
        }
        if pg_sys::check_enable_rls(p.relid, pg_sys::InvalidOid, true)
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return Read::UseSql;
        }
        let heap = pg_sys::table_open(p.relid, pg_sys::AccessShareLock as i32);
        let index = pg_sys::index_open(p.pkey, pg_sys::AccessShareLock as i32);
        let mut snapshot = pg_sys::GetActiveSnapshot();
        if snapshot.is_null() {
            snapshot = pg_sys::GetTransactionSnapshot();
        }
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::F_UUID_EQ.into(),
            id,
        );
        let scan = pg_sys::index_beginscan(heap, index, snapshot, 1, 0);
        pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let found =
            pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot);
        let out = if found {
            if ((*slot).tts_nvalid as i32) < p.natts {
                pg_sys::slot_getsomeattrs_int(slot, p.natts);
            }
            let values = std::slice::from_raw_parts((*slot).tts_values, p.natts as usize);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, p.natts as usize);
            Read::Found(f(&p.json, values, nulls))
        } else {
            Read::Missing
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
        out
    }
}
