//! Builds the jsonb object of a row from its attribute datums with PostgreSQL's own
//! `jsonb_build_object` (called through a prepared FmgrInfo, so every type converts exactly as it
//! does in SQL). Used by the fast point read and by the audit trigger's images.

use pgrx::prelude::*;
use std::ffi::CString;

/// Keys per `jsonb_build_object` call (it takes at most FUNC_MAX_ARGS arguments); wider rows are
/// built in chunks and concatenated.
const CHUNK: usize = (pg_sys::FUNC_MAX_ARGS as usize) / 2;

struct Call {
    flinfo: *mut pg_sys::FmgrInfo,
    fcinfo: pg_sys::FunctionCallInfo,
    /// (key datum, 0-based attribute index)
    cols: Vec<(pg_sys::Datum, usize)>,
}

/// A jsonb builder for one tuple descriptor; its memory lives in `ctx` (a child of
/// TopMemoryContext), freed on drop.
pub struct RowJson {
    calls: Vec<Call>,
    ctx: pg_sys::MemoryContext,
}

impl Drop for RowJson {
    fn drop(&mut self) {
        unsafe { pg_sys::MemoryContextDelete(self.ctx) };
    }
}

impl RowJson {
    /// `cols`: (key, 0-based attribute index) pairs of `desc`.
    ///
    /// # Safety
    /// `desc` must be a valid tuple descriptor and the indexes within it.
    pub unsafe fn new(desc: pg_sys::TupleDesc, cols: &[(String, usize)]) -> RowJson {
        unsafe {
            let name = c"udm row json";
            let ctx = pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                name.as_ptr(),
                0,
                1024,
                8 * 1024 * 1024,
            );
            let old = pg_sys::MemoryContextSwitchTo(ctx);
            let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
            let mut calls = Vec::new();
            for chunk in cols.chunks(CHUNK.max(1)) {
                let mut args: *mut pg_sys::List = std::ptr::null_mut();
                let mut keyed = Vec::with_capacity(chunk.len());
                for (n, i) in chunk {
                    let k = CString::new(n.as_str()).unwrap_or_default();
                    keyed.push((pg_sys::Datum::from(pg_sys::cstring_to_text(k.as_ptr())), *i));
                    let key_const = pg_sys::makeConst(
                        pg_sys::TEXTOID,
                        -1,
                        pg_sys::DEFAULT_COLLATION_OID,
                        -1,
                        pg_sys::Datum::from(0usize),
                        true,
                        false,
                    );
                    let a = &attrs[*i];
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
                let flinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>())
                    as *mut pg_sys::FmgrInfo;
                pg_sys::fmgr_info_cxt(pg_sys::F_JSONB_BUILD_OBJECT_ANY.into(), flinfo, ctx);
                (*flinfo).fn_expr = fexpr.cast();
                let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                    + 2 * chunk.len() * std::mem::size_of::<pg_sys::NullableDatum>();
                let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
                calls.push(Call {
                    flinfo,
                    fcinfo,
                    cols: keyed,
                });
            }
            pg_sys::MemoryContextSwitchTo(old);
            RowJson { calls, ctx }
        }
    }

    /// The jsonb object of a row given its (deformed) values and nulls, allocated in the
    /// current memory context.
    ///
    /// # Safety
    /// `values`/`nulls` must be the deformed attributes of a tuple of the descriptor given to
    /// `new`.
    pub unsafe fn build(&self, values: &[pg_sys::Datum], nulls: &[bool]) -> pg_sys::Datum {
        unsafe {
            let mut out: Option<pg_sys::Datum> = None;
            for c in &self.calls {
                let fc = c.fcinfo;
                (*fc).flinfo = c.flinfo;
                (*fc).context = std::ptr::null_mut();
                (*fc).resultinfo = std::ptr::null_mut();
                (*fc).fncollation = pg_sys::InvalidOid;
                (*fc).isnull = false;
                (*fc).nargs = (c.cols.len() * 2) as i16;
                let args = (*fc).args.as_mut_slice(c.cols.len() * 2);
                for (j, (key, i)) in c.cols.iter().enumerate() {
                    args[2 * j] = pg_sys::NullableDatum {
                        value: *key,
                        isnull: false,
                    };
                    args[2 * j + 1] = pg_sys::NullableDatum {
                        value: values[*i],
                        isnull: nulls[*i],
                    };
                }
                let f = (*c.flinfo).fn_addr.expect("jsonb_build_object");
                let part = f(fc);
                out = Some(match out {
                    None => part,
                    Some(acc) => pg_sys::OidFunctionCall2Coll(
                        pg_sys::F_JSONB_CONCAT.into(),
                        pg_sys::InvalidOid,
                        acc,
                        part,
                    ),
                });
            }
            out.unwrap_or_else(|| {
                pg_sys::OidFunctionCall0Coll(
                    pg_sys::F_JSONB_BUILD_OBJECT_.into(),
                    pg_sys::InvalidOid,
                )
            })
        }
    }
}
