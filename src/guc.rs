//! udm's settings. `udm.tenant` and `udm.user_id` only carry the session's choice: every udm
//! function checks the caller's membership again, so setting them directly grants nothing.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CLAIM: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CITUS_CONSTRAINTS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static DDL_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(3000);
pub static BCRYPT_COST: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static LOCK_STALE_AFTER_S: GucSetting<i32> = GucSetting::<i32>::new(180);
pub static LOCK_EXPIRE_AFTER_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static NOTIFY_CHANGES: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static MAX_SPEC_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(32);
pub static MAX_SPEC_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static MAX_LIST_VALUES: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static CACHE_SIZE_KB: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
pub static REQUIRE_LOCAL_SELECTION: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static AUDIT_BATCHES: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_string_guc(
        c"udm.tenant",
        c"Tenant the udm_* functions act on (set it with udm_use).",
        c"Setting it directly selects nothing the caller may not use: every udm function checks membership in the tenant's role.",
        &TENANT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"udm.user_id",
        c"Application user recorded as created_by/updated_by and in the audit.",
        c"Trusted from the connecting role, like PostgREST's role switching; see the README.",
        &USER_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"udm.claim",
        c"Internal: what udm's coordinator tells its triggers on Citus workers (a rollback under way).",
        c"Set by udm_rollback only: signed with the database's key and bound to its transaction; a value set by hand is refused.",
        &CLAIM,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"udm.citus_constraints",
        c"Internal: a SET CONSTRAINTS that udm's coordinator passes on to its Citus workers.",
        c"Set by udm on Citus's worker connections, where it is applied as that transaction's SET CONSTRAINTS; on the coordinator it does nothing.",
        &CITUS_CONSTRAINTS,
        GucContext::Userset,
        GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"udm.cache_size",
        c"Memory each backend may hold in udm's caches (definitions, compiled queries, kept plans) and in PostgreSQL's catalog caches for udm's tenants.",
        c"Past it, what was used least recently is dropped and rebuilt when used again. Set by a superuser (postgresql.conf, ALTER DATABASE/ROLE SET).",
        &CACHE_SIZE_KB,
        1024,
        i32::MAX / 2,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"udm.ddl_lock_timeout",
        c"How long a definition change waits for a table lock before it gives up.",
        c"Definition changes fail with a clear message instead of queueing readers behind them.",
        &DDL_LOCK_TIMEOUT_MS,
        1,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"udm.bcrypt_cost",
        c"bcrypt cost factor for password fields.",
        c"Only a superuser may lower it.",
        &BCRYPT_COST,
        4,
        15,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"udm.lock_stale_after",
        c"A write lock without a heartbeat for this long may be taken over by the next acquirer.",
        c"Set by a superuser (postgresql.conf, ALTER DATABASE/ROLE SET); stored with each lock when it is acquired or renewed.",
        &LOCK_STALE_AFTER_S,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"udm.lock_expire_after",
        c"A write lock without a heartbeat for this long protects nothing.",
        c"Set by a superuser; at least udm.lock_stale_after (the smaller one is used for both otherwise).",
        &LOCK_EXPIRE_AFTER_S,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"udm.max_spec_depth",
        c"How deeply a spec (query, view, aggregate, definition, permissions, condition) may nest.",
        c"Deeper specs are refused with an error naming this setting. Set by a superuser.",
        &MAX_SPEC_DEPTH,
        4,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"udm.max_spec_size",
        c"How large a spec may be.",
        c"Larger specs are refused with an error naming this setting. Set by a superuser.",
        &MAX_SPEC_SIZE_KB,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"udm.max_list_values",
        c"How many values a list in a spec may hold (an in filter's values, columns, fields).",
        c"Longer lists are refused with an error naming this setting. Set by a superuser.",
        &MAX_LIST_VALUES,
        1,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"udm.require_local_selection",
        c"udm_use selects for the transaction only (is_local => true); a selection for the session is refused.",
        c"For login roles behind a pooler in transaction mode (ALTER ROLE ... SET udm.require_local_selection = on): a session's selection would stay on the server connection for the next client. Set by a superuser.",
        &REQUIRE_LOCAL_SELECTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"udm.audit_batches",
        c"Tenants created from now on keep their audit log in batches (experimental, issue 20).",
        c"One row per chunk of a statement's changes instead of one per change; the view _udm_audit shows it one row per change. Not yet for tenants moved with udm_export_tenant or on Citus. Set by a superuser.",
        &AUDIT_BATCHES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"udm.notify_changes",
        c"Announce committed changes with pg_notify on the tenant's channel.",
        c"Off by default: PostgreSQL serialises the commits of notifying transactions in a database, so notifications slow concurrent writers down. Events are in the outbox either way (udm_events); consumers find new ones with udm_event_heads (one sequence read per tenant) as udm-server does. Turn it on (ALTER DATABASE ... SET) for LISTEN consumers.",
        &NOTIFY_CHANGES,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// (stale after, expire after) in seconds; a lock is never stale after it expired.
pub fn lock_times_s() -> (i32, i32) {
    let expire = LOCK_EXPIRE_AFTER_S.get();
    (LOCK_STALE_AFTER_S.get().min(expire), expire)
}

fn non_empty(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .and_then(|c| c.to_str().ok().map(str::to_string))
        .filter(|s| !s.is_empty())
}

/// A selection (`udm_use`) under way or failed: the settings as they were when it started, the
/// call, and for a selection for the transaction only (`is_local`), the transaction it ran in.
struct Selection {
    tenant: Option<String>,
    user: Option<String>,
    call: String,
    /// The backend's local transaction number of a transaction-local selection: its failure
    /// voids the selection until that transaction ends, never beyond (the next transaction on a
    /// pooled server connection belongs to another client).
    local_xact: Option<u32>,
}

thread_local! {
    /// A selection (`udm_use`) that failed. While the settings still hold the values they had
    /// when it started (and, for a transaction-local one, its transaction lasts), they select
    /// nothing: the previous selection does not carry on after a failed one (a script meant for
    /// another tenant would otherwise go on changing the old one). Not transactional: the
    /// failure's own rollback does not undo it.
    static FAILED: std::cell::RefCell<Option<Selection>> = const { std::cell::RefCell::new(None) };
}

/// The backend's local transaction number (new for every transaction, read-only ones too; 0
/// before the backend has its PGPROC).
pub fn local_xact() -> u32 {
    unsafe {
        if pg_sys::MyProc.is_null() {
            0
        } else {
            (*pg_sys::MyProc).lxid
        }
    }
}

/// `find`'s answer, looked up once per transaction and kept in `cell` (keyed by `local_xact`;
/// outside a transaction, number 0, it is looked up every time).
pub fn once_per_transaction<T: Copy + 'static>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<Option<(u32, T)>>>,
    find: impl FnOnce() -> T,
) -> T {
    let lxid = local_xact();
    if let Some((x, v)) = cell.with(|c| c.get()) {
        if x == lxid && lxid != 0 {
            return v;
        }
    }
    let v = find();
    cell.with(|c| c.set(Some((lxid, v))));
    v
}

/// The current command: (local transaction number, command id). What udm keeps "once per
/// command" is keyed by it.
pub fn current_command() -> (u32, u32) {
    (local_xact(), unsafe { pg_sys::GetCurrentCommandId(false) })
}

/// Marks a selection as under way: until `selection_succeeded`, the current settings are void
/// (with `local`, until the end of the transaction at most).
pub fn selection_started(call: String, local: bool) {
    let s = Selection {
        tenant: non_empty(&TENANT),
        user: non_empty(&USER_ID),
        call,
        local_xact: local.then(local_xact),
    };
    FAILED.with(|f| *f.borrow_mut() = Some(s));
}

pub fn selection_succeeded() {
    FAILED.with(|f| *f.borrow_mut() = None);
}

/// The call that failed, while the settings are still the ones it left (and, for a
/// transaction-local selection, in its transaction).
pub fn failed_selection() -> Option<String> {
    FAILED.with(|f| {
        let mut f = f.borrow_mut();
        let s = f.as_ref()?;
        let same_xact = s.local_xact.is_none_or(|x| x == local_xact());
        if same_xact && s.tenant == non_empty(&TENANT) && s.user == non_empty(&USER_ID) {
            return Some(s.call.clone());
        }
        // the settings changed since (SET udm.tenant, the end of a local selection), or the
        // transaction of a failed local selection ended: the settings count
        *f = None;
        None
    })
}

/// `udm.citus_constraints` (see `citus::constraints`).
pub fn citus_constraints() -> Option<String> {
    non_empty(&CITUS_CONSTRAINTS)
}

/// The settings `udm.tenant` and `udm.user_id` as they are, a failed selection's included.
pub fn raw_selection() -> (Option<String>, Option<String>) {
    (non_empty(&TENANT), non_empty(&USER_ID))
}

pub fn tenant() -> Option<String> {
    if failed_selection().is_some() {
        return None;
    }
    non_empty(&TENANT)
}

pub fn user_id() -> Option<String> {
    if failed_selection().is_some() {
        return None;
    }
    non_empty(&USER_ID)
}

/// Sets a udm setting for the session or (with `local`) the transaction.
pub fn set(name: &str, value: Option<&str>, local: bool) {
    let name = CString::new(name).expect("setting names have no NUL");
    let value = value.map(|v| CString::new(v).expect("values were checked for NUL"));
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ref().map_or(c"".as_ptr(), |v| v.as_ptr()),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            if local {
                pg_sys::GucAction::GUC_ACTION_LOCAL
            } else {
                pg_sys::GucAction::GUC_ACTION_SET
            },
            true,
            0,
            false,
        );
    }
}
