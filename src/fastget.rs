//! Point reads by primary key without a second executor: `udm_get` of a whole record opens the
//! primary key index, fetches the row under the statement's snapshot and builds its JSON with
//! PostgreSQL's own `jsonb_build_object` (so the output is exactly what the SQL path returns).
//!
//! Used only where it is provably the same as the SQL path: the caller holds table-wide SELECT,
//! row-level security is off for the table, and the entity has no many-to-many fields (their
//! link lists need a subquery). Otherwise `udm_get` takes the SQL path.

use crate::catalog::{self, Entity};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CString;
use std::rc::Rc;
use udm_core::ident::SYSTEM_COLUMNS;
use udm_core::types::FieldType;

/// What a fast read of one entity needs, kept in its own memory context.
pub struct GetPlan {
    relid: pg_sys::Oid,
    pkey: pg_sys::Oid,
    natts: i32,
    attnums: Vec<usize>,
    keys: Vec<pg_sys::Datum>,
    flinfo: *mut pg_sys::FmgrInfo,
    fcinfo: pg_sys::FunctionCallInfo,
    ctx: pg_sys::MemoryContext,
}

impl Drop for GetPlan {
    fn drop(&mut self) {
        unsafe { pg_sys::MemoryContextDelete(self.ctx) };
    }
}

thread_local! {
    static PLANS: RefCell<HashMap<String, Option<Rc<GetPlan>>>> = RefCell::new(HashMap::new());
    static GEN: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The fast-read plan of an entity, or None when it cannot have one.
pub fn plan(tenant: &str, e: &Entity) -> Option<Rc<GetPlan>> {
    let g = catalog::generation();
    if GEN.with(|x| x.replace(g)) != g {
        PLANS.with(|p| p.borrow_mut().clear());
    }
    let key = format!("{tenant}|{}", e.def.slug);
    if let Some(p) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return p;
    }
    let p = unsafe { build(e) }.map(Rc::new);
    PLANS.with(|x| x.borrow_mut().insert(key, p.clone()));
    p
}

unsafe fn build(e: &Entity) -> Option<GetPlan> {
    unsafe {
        if e.table_oid == pg_sys::InvalidOid || e.def.fields.iter().any(|f| f.is_many_to_many()) {
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
        let nargs = columns.len() * 2;
        if nargs > pg_sys::FUNC_MAX_ARGS as usize {
            return None;
        }
        let rel = pg_sys::relation_open(e.table_oid, pg_sys::AccessShareLock as i32);
        let pkey = pg_sys::RelationGetPrimaryKeyIndex(rel);
        let desc = (*rel).rd_att;
        let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
        let mut attnums = Vec::with_capacity(columns.len());
        for c in &columns {
            match attrs.iter().position(|a| !a.attisdropped && a.name() == c) {
                Some(i) => attnums.push(i),
                None => {
                    pg_sys::relation_close(rel, pg_sys::NoLock as i32);
                    return None;
                }
            }
        }
        let name = c"udm fast get";
        let ctx = pg_sys::AllocSetContextCreateInternal(
            pg_sys::TopMemoryContext,
            name.as_ptr(),
            0,
            1024,
            8 * 1024 * 1024,
        );
        let old = pg_sys::MemoryContextSwitchTo(ctx);
        let mut args: *mut pg_sys::List = std::ptr::null_mut();
        let mut keys = Vec::with_capacity(columns.len());
        for (n, &i) in names.iter().zip(attnums.iter()) {
            let k = CString::new(n.as_str()).expect("slug");
            keys.push(pg_sys::Datum::from(pg_sys::cstring_to_text(k.as_ptr())));
            let key_const = pg_sys::makeConst(
                pg_sys::TEXTOID,
                -1,
                pg_sys::DEFAULT_COLLATION_OID,
                -1,
                pg_sys::Datum::from(0usize),
                true,
                false,
            );
            let a = &attrs[i];
            let val_const = pg_sys::makeConst(
                a.atttypid,
                a.atttypmod,
                a.attcollation,
                a.attlen as i32,
                pg_sys::Datum::from(0usize),
                true,
                a.attbyval,
            );
            args = pg_sys::lappend(args, key_const.cast());
            args = pg_sys::lappend(args, val_const.cast());
        }
        let fexpr = pg_sys::makeFuncExpr(
            pg_sys::F_JSONB_BUILD_OBJECT_ANY.into(),
            pg_sys::JSONBOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        let flinfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(pg_sys::F_JSONB_BUILD_OBJECT_ANY.into(), flinfo, ctx);
        (*flinfo).fn_expr = fexpr.cast();
        let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
            + nargs * std::mem::size_of::<pg_sys::NullableDatum>();
        let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
        pg_sys::MemoryContextSwitchTo(old);
        let natts = (*desc).natts;
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        if pkey == pg_sys::InvalidOid {
            pg_sys::MemoryContextDelete(ctx);
            return None;
        }
        Some(GetPlan {
            relid: e.table_oid,
            pkey,
            natts,
            attnums,
            keys,
            flinfo,
            fcinfo,
            ctx,
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
    unsafe {
        let user = pg_sys::GetUserId();
        if pg_sys::pg_class_aclcheck(p.relid, user, pg_sys::ACL_SELECT as pg_sys::AclMode)
            != pg_sys::AclResult::ACLCHECK_OK
        {
            return Outcome::UseSql;
        }
        if pg_sys::check_enable_rls(p.relid, pg_sys::InvalidOid, true)
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            return Outcome::UseSql;
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
            let fc = p.fcinfo;
            (*fc).flinfo = p.flinfo;
            (*fc).context = std::ptr::null_mut();
            (*fc).resultinfo = std::ptr::null_mut();
            (*fc).fncollation = pg_sys::InvalidOid;
            (*fc).isnull = false;
            (*fc).nargs = (p.attnums.len() * 2) as i16;
            let args = (*fc).args.as_mut_slice(p.attnums.len() * 2);
            for (j, &i) in p.attnums.iter().enumerate() {
                args[2 * j] = pg_sys::NullableDatum {
                    value: p.keys[j],
                    isnull: false,
                };
                args[2 * j + 1] = pg_sys::NullableDatum {
                    value: values[i],
                    isnull: nulls[i],
                };
            }
            let f = (*p.flinfo).fn_addr.expect("jsonb_build_object");
            Outcome::Found(f(fc))
        } else {
            Outcome::Missing
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
        out
    }
}
