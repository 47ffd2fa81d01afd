//! The SQLSTATE of a `COPY` refused on a worker. Citus passes a worker's COPY error on with its
//! message and detail only (its `ReportCopyError`), so a rule or constraint a COPY breaks came
//! back as `XX000`, without its hint. On a worker, an error of a COPY that a coordinator sent (a
//! Citus internal connection) carries its SQLSTATE and hint in the last line of its detail
//! (`udm_core::error::tag_copy_error`). On the coordinator, a COPY's `XX000` that carries them is
//! raised again with them (so that a savepoint's handler sees the real SQLSTATE), and any other
//! report of such an `XX000` (the rows of an `INSERT ... SELECT`, which Citus also sends by COPY)
//! is given them back as it is sent; a report with another SQLSTATE only loses the tag: no client
//! sees it. (PostgreSQL calls the hook only for a report it writes to the server log, which
//! `log_min_messages` at its default, `warning`, does for every error.)

use pgrx::pg_sys;
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::pg_guard;
use pgrx::{PgLogLevel, PgSqlErrorCode, PgTryBuilder};
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use udm_core::error::{
    is_copy_from_stdin, remote_copy_error, tag_copy_error, unpacked_sqlstate, untagged_report,
};

static PREV_EMIT: OnceLock<pg_sys::emit_log_hook_type> = OnceLock::new();

/// What Citus names its connections between nodes (`CITUS_APPLICATION_NAME_PREFIX`).
const INTERNAL_PREFIX: &[u8] = b"citus_internal gpid=";

pub fn init() {
    unsafe {
        PREV_EMIT.get_or_init(|| pg_sys::emit_log_hook);
        pg_sys::emit_log_hook = Some(emit);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn emit(edata: *mut pg_sys::ErrorData) {
    unsafe {
        if !tag(edata) {
            untag(edata);
        }
        if let Some(prev) = PREV_EMIT.get().copied().flatten() {
            prev(edata);
        }
    }
}

unsafe fn text(p: *mut std::ffi::c_char) -> Option<String> {
    unsafe { (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned()) }
}

unsafe fn pstrdup(s: &str) -> *mut std::ffi::c_char {
    match std::ffi::CString::new(s) {
        Ok(c) => unsafe { pg_sys::pstrdup(c.as_ptr()) },
        Err(_) => std::ptr::null_mut(),
    }
}

/// A report whose detail carries a worker's SQLSTATE and hint: an `XX000` (Citus's report of a
/// worker's COPY error) is given them back; any other loses the tag only (the hint stays the
/// report's own when it has one). Nothing here may fail.
unsafe fn untag(edata: *mut pg_sys::ErrorData) {
    unsafe {
        let e = &mut *edata;
        // (the cheap tests first: this runs for every error reported)
        if e.elevel < PgLogLevel::ERROR as i32 || e.detail.is_null() {
            return;
        }
        let tag = udm_core::error::COPY_ERROR_TAG.as_bytes();
        let detail = CStr::from_ptr(e.detail).to_bytes();
        if !detail.windows(tag.len()).any(|w| w == tag) {
            return;
        }
        let Some((code, detail, hint)) = text(e.detail)
            .as_deref()
            .and_then(|d| untagged_report(e.sqlerrcode, d))
        else {
            return;
        };
        e.sqlerrcode = code;
        e.detail = detail.map_or(std::ptr::null_mut(), |d| pstrdup(&d));
        if e.hint.is_null() {
            if let Some(h) = hint {
                e.hint = pstrdup(&h);
            }
        }
    }
}

/// On a worker, in a coordinator's COPY: the error's SQLSTATE and hint into its detail (true when
/// this is such a report). Nothing here may fail: it runs while the error is being reported.
unsafe fn tag(edata: *mut pg_sys::ErrorData) -> bool {
    unsafe {
        let e = &mut *edata;
        if e.elevel < PgLogLevel::ERROR as i32
            || e.sqlerrcode == PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32
            || pg_sys::application_name.is_null()
            || !CStr::from_ptr(pg_sys::application_name)
                .to_bytes()
                .starts_with(INTERNAL_PREFIX)
            || pg_sys::debug_query_string.is_null()
            || !is_copy_from_stdin(CStr::from_ptr(pg_sys::debug_query_string).to_bytes())
        {
            return false;
        }
        let detail = text(e.detail);
        if detail
            .as_deref()
            .is_some_and(|d| remote_copy_error(d).is_some())
        {
            return true;
        }
        let tagged = tag_copy_error(
            detail.as_deref(),
            &unpacked_sqlstate(e.sqlerrcode),
            text(e.hint).as_deref(),
        );
        // (in the error's own memory context, as the rest of it)
        let p = pstrdup(&tagged);
        if !p.is_null() {
            e.detail = p;
        }
        true
    }
}

/// Runs a coordinator's `COPY` (`run`); its error that carries a worker's tag is raised again
/// without it, an `XX000` with the worker's SQLSTATE and hint (after the catch, as
/// `error::catch_pg` does).
pub fn restoring_sqlstate(run: impl FnOnce()) {
    let restored = PgTryBuilder::new(AssertUnwindSafe(|| {
        run();
        None
    }))
    .catch_others(|e| {
        if let CaughtError::PostgresError(r) = &e {
            let report = r
                .detail()
                .and_then(|d| untagged_report(r.sql_error_code() as i32, d));
            if let Some((code, detail, hint)) = report {
                let mut again =
                    ErrorReport::new(PgSqlErrorCode::from(code), r.message().to_string(), "udm");
                if let Some(d) = detail {
                    again = again.set_detail(d);
                }
                if let Some(h) = hint {
                    again = again.set_hint(h);
                }
                return Some(again);
            }
        }
        e.rethrow()
    })
    .execute();
    if let Some(again) = restored {
        again.report(PgLogLevel::ERROR);
    }
}
