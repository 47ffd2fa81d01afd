//! Builds the jsonb object of a row from its attribute datums. Used by the fast point read and by
//! the audit trigger's images, so it runs once per row written.
//!
//! Each column gets a converter chosen once from its type, and the object is written straight in
//! jsonb's binary format (`udm_core::jsonb`). Every value converts exactly as `to_jsonb` /
//! `jsonb_build_object` would convert it: text, booleans, numbers (integers become jsonb numerics,
//! NaN and infinities strings), jsonb (embedded as is), uuids, dates and timestamps (the ISO form
//! `to_jsonb` uses); any other type goes through `to_jsonb` itself.

use crate::error::raise;
use pgrx::prelude::*;
use pgrx::{vardata_any, varsize_any_exhdr};
use std::cell::RefCell;
use udm_core::error::{SqlState, UdmError};
use udm_core::jsonb::{integer_numeric, write_object, Value};

enum Conv {
    Text,
    Bool,
    Numeric,
    /// int2/int4/int8 (by value), written as numerics
    Int2,
    Int4,
    Int8,
    Jsonb,
    Uuid,
    /// date, timestamp, timestamptz: `JsonEncodeDateTime` of this type. The last value's text is
    /// kept (with the session time zone it was made in): the stamps of a statement's rows are
    /// usually one value.
    DateTime(pg_sys::Oid, RefCell<Option<(usize, usize, Vec<u8>)>>),
    /// The type's text output as a JSON string (what `value::text` gives)
    OutText(*mut pg_sys::FmgrInfo),
    /// `to_jsonb` through a prepared call (its argument's type is known from `fn_expr`)
    ToJsonb {
        flinfo: *mut pg_sys::FmgrInfo,
        fcinfo: pg_sys::FunctionCallInfo,
    },
}

struct Column {
    key: Vec<u8>,
    attr: usize,
    conv: Conv,
}

/// A jsonb builder for one tuple descriptor; the memory of its `to_jsonb` calls lives in `ctx`
/// (a child of TopMemoryContext), freed on drop.
pub struct RowJson {
    cols: Vec<Column>,
    ctx: pg_sys::MemoryContext,
    buf: RefCell<Vec<u8>>,
}

impl Drop for RowJson {
    fn drop(&mut self) {
        unsafe { pg_sys::MemoryContextDelete(self.ctx) };
    }
}

unsafe fn to_jsonb_call(
    a: &pg_sys::FormData_pg_attribute,
    typ: pg_sys::Oid,
    ctx: pg_sys::MemoryContext,
) -> Conv {
    unsafe {
        // the attribute's own type, or the type its values are given as (`new_as`)
        let (typmod, collation, len, byval) = if typ == a.atttypid {
            (a.atttypmod, a.attcollation, a.attlen, a.attbyval)
        } else {
            let mut len = 0i16;
            let mut byval = false;
            pg_sys::get_typlenbyval(typ, &mut len, &mut byval);
            (-1, pg_sys::InvalidOid, len, byval)
        };
        let old = pg_sys::MemoryContextSwitchTo(ctx);
        let arg = pg_sys::makeConst(
            typ,
            typmod,
            collation,
            len as i32,
            pg_sys::Datum::from(0usize),
            true,
            byval,
        );
        let fexpr = pg_sys::makeFuncExpr(
            pg_sys::F_TO_JSONB.into(),
            pg_sys::JSONBOID,
            pg_sys::lappend(std::ptr::null_mut(), arg.cast()),
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        let flinfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(pg_sys::F_TO_JSONB.into(), flinfo, ctx);
        (*flinfo).fn_expr = fexpr.cast();
        let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
            + std::mem::size_of::<pg_sys::NullableDatum>();
        let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
        pg_sys::MemoryContextSwitchTo(old);
        Conv::ToJsonb { flinfo, fcinfo }
    }
}

/// Calls a strict built-in function of one argument that never returns NULL.
unsafe fn call1(
    f: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    d: pg_sys::Datum,
) -> pg_sys::Datum {
    unsafe { pgrx::direct_function_call_as_datum(f, &[Some(d)]).expect("a non-null result") }
}

unsafe fn bytes<'a>(p: *const u8, len: usize) -> &'a [u8] {
    unsafe { std::slice::from_raw_parts(p, len) }
}

/// The bytes of a varlena datum after its header; only a TOAST pointer or a compressed value is
/// detoasted (into the current context).
pub(crate) unsafe fn varlena<'a>(d: pg_sys::Datum) -> &'a [u8] {
    unsafe {
        let mut p = d.cast_mut_ptr::<pg_sys::varlena>();
        let first = *(p as *const u8);
        // little-endian varlena headers: 0x01 = external pointer, xxxxxx10 = 4-byte compressed
        if first == 0x01 || first & 0x03 == 0x02 {
            p = pg_sys::pg_detoast_datum_packed(p);
        }
        bytes(vardata_any(p) as *const u8, varsize_any_exhdr(p))
    }
}

/// A datum of `bytes` (a whole varlena, header included) copied into the current memory context.
pub(crate) fn palloc_copy(bytes: &[u8]) -> pg_sys::Datum {
    unsafe {
        let p = pg_sys::palloc(bytes.len()) as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        pg_sys::Datum::from(p)
    }
}

unsafe fn cstring<'a>(p: *const std::os::raw::c_char) -> &'a [u8] {
    unsafe { std::ffi::CStr::from_ptr(p).to_bytes() }
}

/// A `numeric` body as jsonb stores it: NaN and the infinities are not JSON numbers and become
/// strings, as in `to_jsonb`.
unsafe fn numeric_value<'a>(d: pg_sys::Datum) -> Value<'a> {
    unsafe {
        let body = varlena(d);
        let special = body.len() >= 2 && u16::from_le_bytes([body[0], body[1]]) & 0xC000 == 0xC000;
        if special {
            let s = call1(pg_sys::numeric_out, d);
            Value::String(cstring(s.cast_mut_ptr()))
        } else {
            Value::Numeric(body)
        }
    }
}

/// A uuid's text form (as `uuid_out` writes it), allocated in the current memory context.
unsafe fn uuid_text<'a>(d: pg_sys::Datum) -> &'a [u8] {
    unsafe {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(bytes(d.cast_mut_ptr::<u8>(), 16));
        let out = pg_sys::palloc(uuid::fmt::Hyphenated::LENGTH) as *mut u8;
        let buf = std::slice::from_raw_parts_mut(out, uuid::fmt::Hyphenated::LENGTH);
        uuid::Uuid::from_bytes(raw).hyphenated().encode_lower(buf);
        buf
    }
}

impl RowJson {
    /// `cols`: (key, 0-based attribute index) pairs of `desc`, keys unique.
    ///
    /// # Safety
    /// `desc` must be a valid tuple descriptor and the indexes within it.
    pub unsafe fn new(desc: pg_sys::TupleDesc, cols: &[(String, usize)]) -> RowJson {
        unsafe { Self::new_as(desc, cols, &[]) }
    }

    /// `new`, with the values of some attributes (`as_types`: attribute index, type) given to
    /// `build` as datums of another type than the attribute's (text, jsonb, date, timestamp,
    /// timestamptz, time or interval): e.g. the plaintext of a stored ciphertext.
    ///
    /// # Safety
    /// As for `new`.
    pub unsafe fn new_as(
        desc: pg_sys::TupleDesc,
        cols: &[(String, usize)],
        as_types: &[(usize, pg_sys::Oid)],
    ) -> RowJson {
        unsafe { Self::make(desc, cols, as_types, &[]) }
    }

    /// `new`, with the attributes `as_text` names written as their type's text output (a JSON
    /// string, as `jsonb_build_object(k, value::text)` writes it).
    ///
    /// # Safety
    /// As for `new`.
    pub unsafe fn new_text(
        desc: pg_sys::TupleDesc,
        cols: &[(String, usize)],
        as_text: &[usize],
    ) -> RowJson {
        unsafe { Self::make(desc, cols, &[], as_text) }
    }

    unsafe fn make(
        desc: pg_sys::TupleDesc,
        cols: &[(String, usize)],
        as_types: &[(usize, pg_sys::Oid)],
        as_text: &[usize],
    ) -> RowJson {
        unsafe {
            let ctx = pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"udm row json".as_ptr(),
                0,
                1024,
                8 * 1024 * 1024,
            );
            let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
            let out: Vec<Column> = cols
                .iter()
                .map(|(name, i)| {
                    let a = &attrs[*i];
                    let typ = as_types
                        .iter()
                        .find(|(at, _)| at == i)
                        .map_or(a.atttypid, |(_, t)| *t);
                    let conv = if as_text.contains(i) {
                        let mut func = pg_sys::InvalidOid;
                        let mut varlena = false;
                        pg_sys::getTypeOutputInfo(typ, &mut func, &mut varlena);
                        let flinfo = pg_sys::MemoryContextAllocZero(
                            ctx,
                            std::mem::size_of::<pg_sys::FmgrInfo>(),
                        ) as *mut pg_sys::FmgrInfo;
                        pg_sys::fmgr_info_cxt(func, flinfo, ctx);
                        Conv::OutText(flinfo)
                    } else {
                        match pg_sys::getBaseType(typ) {
                            pg_sys::TEXTOID | pg_sys::VARCHAROID => Conv::Text,
                            pg_sys::BOOLOID => Conv::Bool,
                            pg_sys::NUMERICOID => Conv::Numeric,
                            pg_sys::INT2OID => Conv::Int2,
                            pg_sys::INT4OID => Conv::Int4,
                            pg_sys::INT8OID => Conv::Int8,
                            pg_sys::JSONBOID => Conv::Jsonb,
                            pg_sys::UUIDOID => Conv::Uuid,
                            t @ (pg_sys::DATEOID
                            | pg_sys::TIMESTAMPOID
                            | pg_sys::TIMESTAMPTZOID) => Conv::DateTime(t, RefCell::new(None)),
                            _ => to_jsonb_call(a, typ, ctx),
                        }
                    };
                    Column {
                        key: name.as_bytes().to_vec(),
                        attr: *i,
                        conv,
                    }
                })
                .collect();
            RowJson {
                cols: out,
                ctx,
                buf: RefCell::new(Vec::with_capacity(512)),
            }
        }
    }

    /// The jsonb object of a row given its (deformed) values and nulls, allocated in the
    /// current memory context (as are the temporary values of its conversions).
    ///
    /// # Safety
    /// `values`/`nulls` must be the deformed attributes of a tuple of the descriptor given to
    /// `new`.
    pub unsafe fn build(&self, values: &[pg_sys::Datum], nulls: &[bool]) -> pg_sys::Datum {
        unsafe { self.build_only(values, nulls, None) }
    }

    /// The values of the columns, in the order they were given to `new`, for `f` (they borrow
    /// from the row and from this builder).
    ///
    /// # Safety
    /// As for `build`.
    pub unsafe fn with_values<R>(
        &self,
        values: &[pg_sys::Datum],
        nulls: &[bool],
        f: impl FnOnce(Vec<Value<'_>>) -> R,
    ) -> R {
        unsafe {
            let mut ints = vec![[0u8; 12]; self.cols.len()];
            let out = self
                .cols
                .iter()
                .zip(ints.iter_mut())
                .map(|(c, int)| self.value(c, values, nulls, int))
                .collect();
            f(out)
        }
    }

    /// One column's value as jsonb writes it; `int` holds an integer's numeric.
    unsafe fn value<'a>(
        &'a self,
        c: &'a Column,
        values: &[pg_sys::Datum],
        nulls: &[bool],
        int: &'a mut [u8; 12],
    ) -> Value<'a> {
        unsafe {
            let (d, null) = (values[c.attr], nulls[c.attr]);
            if null {
                return Value::Null;
            }
            match &c.conv {
                Conv::Text => Value::String(varlena(d)),
                Conv::Bool => Value::Bool(d.value() & 0xff != 0),
                Conv::Numeric => numeric_value(d),
                Conv::Int2 | Conv::Int4 | Conv::Int8 => {
                    let v = match c.conv {
                        Conv::Int2 => d.value() as i16 as i64,
                        Conv::Int4 => d.value() as i32 as i64,
                        _ => d.value() as i64,
                    };
                    let n = integer_numeric(v, int);
                    Value::Numeric(&int[..n])
                }
                Conv::Jsonb => Value::Jsonb(varlena(d)),
                Conv::Uuid => Value::String(uuid_text(d)),
                Conv::DateTime(t, last) => {
                    let tz = pg_sys::session_timezone as usize;
                    let mut last = last.borrow_mut();
                    let hit = matches!(&*last, Some((v, z, _)) if *v == d.value() && *z == tz);
                    if !hit {
                        let text = cstring(pg_sys::JsonEncodeDateTime(
                            std::ptr::null_mut(),
                            d,
                            *t,
                            std::ptr::null(),
                        ));
                        *last = Some((d.value(), tz, text.to_vec()));
                    }
                    let text = &last.as_ref().expect("just set").2;
                    // the text lives in the column until its next different value
                    Value::String(bytes(text.as_ptr(), text.len()))
                }
                Conv::OutText(flinfo) => {
                    Value::String(cstring(pg_sys::OutputFunctionCall(*flinfo, d)))
                }
                Conv::ToJsonb { flinfo, fcinfo } => {
                    let fc = *fcinfo;
                    (*fc).flinfo = *flinfo;
                    (*fc).context = std::ptr::null_mut();
                    (*fc).resultinfo = std::ptr::null_mut();
                    (*fc).fncollation = pg_sys::InvalidOid;
                    (*fc).isnull = false;
                    (*fc).nargs = 1;
                    (*fc).args.as_mut_slice(1)[0] = pg_sys::NullableDatum {
                        value: d,
                        isnull: false,
                    };
                    let f = (**flinfo).fn_addr.expect("to_jsonb");
                    Value::Jsonb(varlena(f(fc)))
                }
            }
        }
    }

    /// Like `build`, with only the columns whose attribute index `keep` marks (all when None).
    ///
    /// # Safety
    /// As for `build`; `keep` is indexed by attribute.
    pub unsafe fn build_only(
        &self,
        values: &[pg_sys::Datum],
        nulls: &[bool],
        keep: Option<&[bool]>,
    ) -> pg_sys::Datum {
        unsafe {
            let mut pairs: Vec<(&[u8], Value)> = Vec::with_capacity(self.cols.len());
            let mut ints = vec![[0u8; 12]; self.cols.len()];
            for (c, int) in self.cols.iter().zip(ints.iter_mut()) {
                if keep.is_some_and(|k| !k[c.attr]) {
                    continue;
                }
                pairs.push((&c.key, self.value(c, values, nulls, int)));
            }
            let mut buf = self.buf.borrow_mut();
            if let Err(e) = write_object(&mut buf, &pairs) {
                raise(UdmError::new(
                    SqlState::ProgramLimitExceeded,
                    format!("udm: cannot build the jsonb image of a row: {e}"),
                ));
            }
            palloc_copy(&buf)
        }
    }
}
