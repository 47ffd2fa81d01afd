//! Who is calling, and acting as the extension's owner.
//!
//! udm functions are SECURITY INVOKER: data is read and written with the caller's own privileges,
//! so PostgreSQL itself keeps tenants apart. Definition changes need DDL on tables the caller may
//! not alter; for those udm checks the caller's membership first and then switches to the
//! extension's owner for just that work, with a safe `search_path` and udm's DDL lock timeout (the
//! same mechanism PostgreSQL uses for SECURITY DEFINER functions; an ERROR restores the caller).

use crate::error::{Result, SqlState, UdmError};
use crate::guc;
use once_cell::unsync::OnceCell;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

thread_local! {
    /// How deep inside an owner switch (of either kind) this backend is.
    static OWNER_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// How deep inside `as_owner` (the switch with udm's settings) this backend is.
    static SETTINGS_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static INVOKER: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
    static OWNER: OnceCell<pg_sys::Oid> = const { OnceCell::new() };
    static ADMIN_ROLE: OnceCell<pg_sys::Oid> = const { OnceCell::new() };
}

pub const ADMIN_ROLE_NAME: &str = "udm_admin";
/// Every tenant role is a member: it may execute the `udm.*` helpers that tenant tables' policies,
/// constraints and defaults call (see `sql/privileges.sql`).
pub const TENANT_ROLES: &str = "udm_tenant_roles";

/// The role on whose behalf this statement runs (the invoker), also while udm acts as the owner.
pub fn caller() -> pg_sys::Oid {
    let invoker = INVOKER.with(|i| i.get());
    if OWNER_DEPTH.with(|d| d.get()) > 0 && invoker != pg_sys::InvalidOid {
        return invoker;
    }
    unsafe { pg_sys::GetUserId() }
}

pub fn role_name(oid: pg_sys::Oid) -> String {
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("role {}", oid.to_u32())
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

pub fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let c = CString::new(name).ok()?;
    let oid = unsafe { pg_sys::get_role_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Whether `member` has the privileges of `role` (directly, through inheritance, or as superuser).
pub fn has_privs_of(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    unsafe { pg_sys::has_privs_of_role(member, role) }
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    unsafe { pg_sys::superuser_arg(role) }
}

/// The role that owns the extension; tenant schemas and tables belong to it.
pub fn owner() -> pg_sys::Oid {
    OWNER.with(|o| {
        *o.get_or_init(|| {
            let oid = crate::spi::select_one::<pg_sys::Oid>(
                "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'udm'",
                &[],
            )
            .ok()
            .flatten();
            oid.unwrap_or_else(|| {
                crate::error::raise(UdmError::internal(
                    "udm: the extension is not installed in this database",
                ))
            })
        })
    })
}

fn admin_role() -> Option<pg_sys::Oid> {
    ADMIN_ROLE.with(|a| a.get().copied()).or_else(|| {
        let oid = role_oid(ADMIN_ROLE_NAME)?;
        ADMIN_ROLE.with(|a| {
            let _ = a.set(oid);
        });
        Some(oid)
    })
}

/// Superusers and members of `udm_admin`.
pub fn is_admin(role: pg_sys::Oid) -> bool {
    is_superuser(role) || admin_role().is_some_and(|a| has_privs_of(role, a))
}

pub fn require_admin(action: &str) -> Result<()> {
    let me = caller();
    if is_admin(me) {
        return Ok(());
    }
    Err(UdmError::new(
        SqlState::InsufficientPrivilege,
        format!(
            "permission denied to {action}: role \"{}\" is not a udm admin",
            role_name(me)
        ),
    )
    .hint(format!(
        "a superuser can run GRANT {ADMIN_ROLE_NAME} TO \"{}\"",
        role_name(me)
    )))
}

/// Who made a change: the application user when `udm.user_id` is set, else the database role.
pub fn actor() -> String {
    guc::user_id().unwrap_or_else(|| role_name(caller()))
}

/// Runs `f` as the extension owner with `search_path = pg_catalog, pg_temp` and
/// `lock_timeout = udm.ddl_lock_timeout`, then restores the caller. If `f` raises, the
/// transaction (or subtransaction) abort restores user and settings, as for SECURITY DEFINER.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    if SETTINGS_DEPTH.with(|d| d.get()) > 0 {
        return f(); // already the owner, with udm's settings
    }
    if unsafe { pg_sys::IsInParallelMode() } {
        // settings cannot change in parallel mode (a row-level security helper running in a
        // parallel query): only read-only work happens there, and udm's SQL qualifies its names
        return with_owner_user(|| nested(&SETTINGS_DEPTH, f));
    }
    with_owner_user(|| {
        let nest = unsafe { pg_sys::NewGUCNestLevel() };
        let timeout = format!("{}ms", guc::DDL_LOCK_TIMEOUT_MS.get());
        set_saved("search_path", "pg_catalog, pg_temp");
        set_saved("lock_timeout", &timeout);
        // cascade notices of udm's own DDL say nothing the caller can act on
        set_saved("client_min_messages", "warning");
        if crate::citus::installed() {
            for (name, value) in crate::citus::SETTINGS {
                set_saved(name, value);
            }
        }
        let r = nested(&SETTINGS_DEPTH, f);
        unsafe { pg_sys::AtEOXact_GUC(true, nest) };
        r
    })
}

/// Runs `f` with the extension owner's user id and nothing else changed: for storage-level work
/// that runs no SQL of its own (SQL it reaches goes through `as_owner`, which adds udm's
/// settings). An ERROR restores the caller with the (sub)transaction abort.
pub fn as_owner_id<R>(f: impl FnOnce() -> R) -> R {
    with_owner_user(f)
}

/// Runs `f` with `depth` one deeper; an ERROR unwinding through `f` restores it too.
fn nested<R>(
    depth: &'static std::thread::LocalKey<std::cell::Cell<u32>>,
    f: impl FnOnce() -> R,
) -> R {
    struct Guard(&'static std::thread::LocalKey<std::cell::Cell<u32>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    depth.with(|d| d.set(d.get() + 1));
    let _guard = Guard(depth);
    f()
}

/// Switches the user id to the extension owner around `f` (once, however deeply nested),
/// keeping who invoked it for `caller`. An ERROR unwinds past the restore: the
/// (sub)transaction abort restores the user.
fn with_owner_user<R>(f: impl FnOnce() -> R) -> R {
    if OWNER_DEPTH.with(|d| d.get()) > 0 {
        return nested(&OWNER_DEPTH, f);
    }
    let owner = owner();
    let (mut saved_uid, mut saved_ctx) = (pg_sys::InvalidOid, 0i32);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_uid, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    INVOKER.with(|i| i.set(saved_uid));
    let r = nested(&OWNER_DEPTH, f);
    unsafe { pg_sys::SetUserIdAndSecContext(saved_uid, saved_ctx) };
    r
}

/// Sets a setting until the current GUC nest level ends (`GUC_ACTION_SAVE`, as a function's `SET`
/// clause: allowed in parallel mode too).
pub(crate) fn set_saved(name: &str, value: &str) {
    let n = CString::new(name).expect("no NUL");
    let v = CString::new(value).expect("no NUL");
    unsafe {
        pg_sys::set_config_option(
            n.as_ptr(),
            v.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}
