//! udm's `jsonb` argument and result type.
//!
//! pgrx's own `JsonB` reads a datum by printing it as text and parsing that with serde_json,
//! whose recursion limit (128 levels) made any deeper value an internal error, and a value
//! written by plain SQL a poison for every reader of the audit log. udm's `JsonB` reads the
//! binary jsonb format directly (no text round trip), with its place kept on the heap
//! (`udm_core::jsonb::read`), so any value up to `MAX_READ_DEPTH` levels reads; deeper ones are
//! refused with an error naming the limit. Results are written as pgrx writes them.

use crate::error::{raise, SqlState, UdmError};
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::nullable::Nullable;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::prelude::*;
use serde_json::Value;
use std::ffi::CStr;
use udm_core::jsonb::MAX_READ_DEPTH;

/// `jsonb` as the SQL type of a Rust type returned by udm's functions (and taken as an argument).
macro_rules! jsonb_sql_type {
    ($t:ty) => {
        unsafe impl SqlTranslatable for $t {
            const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!($t);
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> =
                Ok(SqlMappingRef::literal("jsonb"));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
                Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
        }

        unsafe impl BoxRet for $t {
            unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
                match self.into_datum() {
                    Some(d) => unsafe { fcinfo.return_raw_datum(d) },
                    None => fcinfo.return_null(),
                }
            }
        }
    };
}

/// A `jsonb` value as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonB(pub Value);

/// Reads a jsonb datum (detoasted here) into JSON.
pub unsafe fn read(datum: pg_sys::Datum) -> Result<Value, UdmError> {
    unsafe {
        let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
        // a full 4-byte header, as jsonb's own functions read it: the format's alignment is
        // counted from the start of the datum
        let detoasted = pg_sys::pg_detoast_datum(raw);
        let len = pgrx::varsize_any_exhdr(detoasted);
        let data = pgrx::vardata_any(detoasted) as *const u8;
        let bytes = std::slice::from_raw_parts(data, len);
        let out = udm_core::jsonb::read(bytes, MAX_READ_DEPTH, &mut numeric_json);
        if detoasted != raw {
            pg_sys::pfree(detoasted.cast());
        }
        out.map_err(|e| {
            let state = if e.0.contains("deeper than") {
                SqlState::ProgramLimitExceeded
            } else {
                SqlState::InvalidParameterValue
            };
            UdmError::new(state, format!("cannot read a jsonb value: {}", e.0)).hint(format!(
                "udm reads JSON values up to {MAX_READ_DEPTH} levels deep"
            ))
        })
    }
}

impl FromDatum for JsonB {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonB> {
        if is_null {
            return None;
        }
        Some(JsonB(unsafe { read(datum) }.unwrap_or_else(|e| raise(e))))
    }
}

impl IntoDatum for JsonB {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        pgrx::JsonB(self.0).into_datum()
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

jsonb_sql_type!(JsonB);

unsafe impl<'fcx> ArgAbi<'fcx> for JsonB {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| {
            raise(UdmError::new(
                SqlState::InvalidParameterValue,
                format!("argument {} must not be NULL", index + 1),
            ))
        })
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

/// A `jsonb` result made either from JSON or directly in the binary format (responses built
/// around jsonb values the database returned, which are then never converted to JSON and back).
#[derive(Debug, Clone, PartialEq)]
pub enum JsonOut {
    Json(Value),
    Raw(RawJsonb),
}

impl JsonOut {
    /// As JSON (reading the binary form when it is one).
    pub fn into_json(self) -> Result<Value, UdmError> {
        match self {
            JsonOut::Json(v) => Ok(v),
            JsonOut::Raw(r) => unsafe {
                let d = pg_sys::Datum::from(r.0.as_ptr());
                read(d)
            },
        }
    }
}

impl IntoDatum for JsonOut {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        match self {
            JsonOut::Json(v) => JsonB(v).into_datum(),
            JsonOut::Raw(r) => r.into_datum(),
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

jsonb_sql_type!(JsonOut);

/// A `jsonb` value kept in its binary form (the datum's bytes, 4-byte header included): audit
/// images pass through udm this way, whatever their depth or size, and only their top level is
/// ever rewritten (`without_keys`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawJsonb(pub Vec<u8>);

/// How deep a value is read for a summary meant for people (deeper parts show as `…`).
pub const SUMMARY_DEPTH: usize = 32;

impl RawJsonb {
    /// The root container (after the varlena header).
    pub fn root(&self) -> &[u8] {
        &self.0[4..]
    }

    /// The same object without the keys `drop` names (not an object: unchanged).
    pub fn without_keys(&self, drop: &dyn Fn(&str) -> bool) -> Result<RawJsonb, UdmError> {
        let bad = |e: udm_core::jsonb::JsonbError| {
            UdmError::new(
                SqlState::InvalidParameterValue,
                format!("cannot read a jsonb value: {}", e.0),
            )
        };
        let Some(pairs) = udm_core::jsonb::object_pairs(self.root()).map_err(bad)? else {
            return Ok(self.clone());
        };
        let kept: Vec<_> = pairs
            .into_iter()
            .filter(|(k, _)| !drop(&String::from_utf8_lossy(k)))
            .collect();
        let mut out = Vec::new();
        udm_core::jsonb::write_object(&mut out, &kept).map_err(bad)?;
        Ok(RawJsonb(out))
    }

    /// The value as JSON for a summary: anything deeper than `SUMMARY_DEPTH` shows as `…`.
    pub fn summary_value(&self) -> Result<Value, UdmError> {
        udm_core::jsonb::read_elided(self.root(), SUMMARY_DEPTH, &mut numeric_json).map_err(|e| {
            UdmError::new(
                SqlState::InvalidParameterValue,
                format!("cannot read a jsonb value: {}", e.0),
            )
        })
    }
}

/// A jsonb numeric (its bytes from its own varlena header on) as a JSON number.
fn numeric_json(n: &[u8]) -> Result<Value, udm_core::jsonb::JsonbError> {
    let text = unsafe {
        pgrx::direct_function_call::<&CStr>(
            pg_sys::numeric_out,
            &[Some(pg_sys::Datum::from(n.as_ptr()))],
        )
    }
    .map(|c| c.to_string_lossy().into_owned())
    .unwrap_or_default();
    text.parse::<serde_json::Number>()
        .map(Value::Number)
        .map_err(|_| udm_core::jsonb::JsonbError(format!("numeric {text} is not a JSON number")))
}

impl FromDatum for RawJsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<RawJsonb> {
        if is_null {
            return None;
        }
        unsafe {
            let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
            let detoasted = pg_sys::pg_detoast_datum(raw);
            let len = pgrx::varsize_any(detoasted);
            let bytes = std::slice::from_raw_parts(detoasted as *const u8, len).to_vec();
            if detoasted != raw {
                pg_sys::pfree(detoasted.cast());
            }
            Some(RawJsonb(bytes))
        }
    }
}

impl IntoDatum for RawJsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        unsafe {
            let p = pg_sys::palloc(self.0.len()) as *mut u8;
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, self.0.len());
            Some(pg_sys::Datum::from(p))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

jsonb_sql_type!(RawJsonb);
