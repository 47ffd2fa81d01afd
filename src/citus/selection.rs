//! The selection (`udm_use`: `udm.tenant`, `udm.user_id`) on the workers of Citus.
//!
//! On Citus udm's triggers and row-level security run on the tenant's worker, in the backend
//! that serves the coordinator's connection, where the coordinator session's settings are not.
//! Citus sends a transaction's `SET LOCAL` statements to its worker connections (with
//! `citus.propagate_set_commands = 'local'`), and nothing else of the session. So before a
//! statement runs whose selection the workers of its transaction do not have yet, udm sends the
//! selection as `SET LOCAL`s in that transaction, and makes it a coordinated transaction: Citus
//! then opens every worker connection of it with `BEGIN` and those `SET LOCAL`s, reads and
//! statements outside a transaction block included. A session-level `udm_use` thereby reaches
//! the workers as a transaction-local one does.
//!
//! What is sent is the selection in effect (`guc::tenant`, `guc::user_id`): after a failed
//! `udm_use`, nothing; the coordinator's own settings stay as they were (a failed selection is
//! recognised by them).

use crate::guc;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use udm_core::ident::quote_literal;

/// A selection sent to the workers: in which transaction and subtransaction (Citus forgets the
/// `SET LOCAL`s of a subtransaction when it ends, committed or not), and what.
struct Sent {
    lxid: u32,
    subxact: pg_sys::SubTransactionId,
    tenant: String,
    user: String,
    /// The session's settings that shape the values the workers render (`RENDERING`), where the
    /// session changed them.
    rendering: Vec<(&'static str, String)>,
}

/// Settings that shape how values are rendered (a `timestamptz` in the session's time zone, an
/// interval, a date in text, a float): rows are built on the tenant's worker, which has its own.
const RENDERING: [(&str, &std::ffi::CStr); 4] = [
    ("timezone", c"timezone"),
    ("intervalstyle", c"intervalstyle"),
    ("datestyle", c"datestyle"),
    ("extra_float_digits", c"extra_float_digits"),
];

/// The `RENDERING` settings this session changed from their defaults (its `RESET` values).
fn changed_rendering() -> Vec<(&'static str, String)> {
    RENDERING
        .iter()
        .filter_map(|&(name, c)| {
            let now =
                super::owned_str(unsafe { pg_sys::GetConfigOption(c.as_ptr(), true, false) })?;
            let reset = super::owned_str(unsafe { pg_sys::GetConfigOptionResetString(c.as_ptr()) });
            (reset.as_deref() != Some(now.as_str())).then_some((name, now))
        })
        .collect()
}

thread_local! {
    /// The selections sent in the current transaction, outermost first.
    static SENT: RefCell<Vec<Sent>> = const { RefCell::new(Vec::new()) };
    /// Set while a selection is being sent (its own statements must not send it again).
    static SENDING: Cell<bool> = const { Cell::new(false) };
}

static PREV_EXECUTOR_START: OnceLock<pg_sys::ExecutorStart_hook_type> = OnceLock::new();
static PREV_PROCESS_UTILITY: OnceLock<pg_sys::ProcessUtility_hook_type> = OnceLock::new();

pub fn init() {
    unsafe {
        PREV_EXECUTOR_START.get_or_init(|| pg_sys::ExecutorStart_hook);
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_PROCESS_UTILITY.get_or_init(|| pg_sys::ProcessUtility_hook);
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: i32) {
    if eflags as u32 & pg_sys::EXEC_FLAG_EXPLAIN_ONLY == 0 {
        send_for(statement_of(query).as_ref(), names_decrypt(query));
        super::constraints::send_again();
    }
    match PREV_EXECUTOR_START.get().copied().flatten() {
        Some(prev) => prev(query, eflags),
        None => pg_sys::standard_ExecutorStart(query, eflags),
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    stmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // COPY of a distributed table runs on the workers without the executor (its triggers and,
    // for COPY TO, its row-level security there)
    let node = (*stmt).utilityStmt;
    let tag = if node.is_null() {
        pg_sys::NodeTag::T_Invalid
    } else {
        (*node).type_
    };
    if tag == pg_sys::NodeTag::T_CopyStmt {
        send(None);
        super::constraints::send_again();
        copy_target_written(node as *mut pg_sys::CopyStmt);
    }
    // a SET LOCAL of udm.citus_constraints: read before the statement runs (it may scribble on
    // a read-only tree)
    let constraints_setting = tag == pg_sys::NodeTag::T_VariableSetStmt && {
        let v = node as *mut pg_sys::VariableSetStmt;
        (*v).kind == pg_sys::VariableSetKind::VAR_SET_VALUE
            && !(*v).name.is_null()
            && std::ffi::CStr::from_ptr((*v).name).to_bytes()
                == super::constraints::SETTING.as_bytes()
    };
    let run = || match PREV_PROCESS_UTILITY.get().copied().flatten() {
        Some(prev) => prev(stmt, query, read_only_tree, context, params, env, dest, qc),
        None => pg_sys::standard_ProcessUtility(
            stmt,
            query,
            read_only_tree,
            context,
            params,
            env,
            dest,
            qc,
        ),
    };
    if tag == pg_sys::NodeTag::T_CopyStmt && super::loaded() {
        // a worker's refusal of the rows comes back as XX000: with its own SQLSTATE again (the
        // hook below is called through the FFI guard, so that its ERROR can be caught)
        super::copy_errors::restoring_sqlstate(|| pg_sys::ffi::pg_guard_ffi_boundary(run));
    } else {
        run();
    }
    // SET CONSTRAINTS, applied here, goes on to the workers; there it arrives as that setting
    if tag == pg_sys::NodeTag::T_ConstraintsSetStmt {
        super::constraints::propagate(
            node as *mut pg_sys::ConstraintsSetStmt,
            context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL,
        );
    } else if constraints_setting {
        super::constraints::apply_on_worker();
    }
}

/// A `COPY ... FROM` writes its table: noted for the commit (`constraints::written`).
unsafe fn copy_target_written(copy: *mut pg_sys::CopyStmt) {
    if !super::loaded() || copy.is_null() {
        return;
    }
    let c = unsafe { &*copy };
    if !c.is_from || c.relation.is_null() {
        return;
    }
    let relid = unsafe {
        pg_sys::RangeVarGetRelidExtended(
            c.relation,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    if relid != pg_sys::InvalidOid {
        super::constraints::written(unsafe { pg_sys::get_rel_namespace(relid) });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    let commit = event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB;
    if commit || event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        // Citus drops the subtransaction's SET LOCALs (the next statement sends again what
        // holds then)
        SENT.with(|s| s.borrow_mut().retain(|x| x.subxact != my));
        super::constraints::subxact_ended(commit, my, parent);
    }
}

/// Whether this backend serves a connection Citus opened from another backend (its
/// `application_name` is `citus_internal gpid=...`, `citus_rebalancer ...`, ...; a coordinator
/// may connect to itself): that backend was sent the selection, and sends nothing on.
pub(super) fn serves_citus() -> bool {
    unsafe {
        let name = pg_sys::GetConfigOption(c"application_name".as_ptr(), true, false);
        !name.is_null()
            && std::ffi::CStr::from_ptr(name)
                .to_bytes()
                .starts_with(b"citus_")
    }
}

/// Resets `SENDING` however the sending ends (an error unwinds through it).
struct Sending;
impl Drop for Sending {
    fn drop(&mut self) {
        SENDING.with(|s| s.set(false));
    }
}

/// A statement that only reads (a `SELECT` that locks no rows and has no data-modifying `WITH`),
/// with the namespaces of the relations it reads.
struct Read {
    namespaces: Vec<pg_sys::Oid>,
}

/// Permissions a statement that writes (or locks rows: `FOR UPDATE` asks for UPDATE) needs.
const WRITES: pg_sys::AclMode =
    (pg_sys::ACL_INSERT | pg_sys::ACL_UPDATE | pg_sys::ACL_DELETE) as pg_sys::AclMode;

/// The statement as `send` needs it: `Some` when it only reads, `None` when it may write. The
/// namespaces of the relations it writes are noted for the commit (`constraints::written`).
unsafe fn statement_of(query: *mut pg_sys::QueryDesc) -> Option<Read> {
    if !super::loaded() || query.is_null() {
        return None;
    }
    let q = unsafe { &*query };
    if q.plannedstmt.is_null() {
        return None;
    }
    let p = unsafe { &*q.plannedstmt };
    let mut writes =
        q.operation != pg_sys::CmdType::CMD_SELECT || p.hasModifyingCTE || !p.rowMarks.is_null();
    let mut namespaces = Vec::new();
    let list = p.rtable;
    let n = if list.is_null() {
        0
    } else {
        unsafe { (*list).length as usize }
    };
    for i in 0..n {
        let rte = unsafe { (*(*list).elements.add(i)).ptr_value as *mut pg_sys::RangeTblEntry };
        if rte.is_null() {
            continue;
        }
        let rte = unsafe { &*rte };
        if rte.rtekind != pg_sys::RTEKind::RTE_RELATION {
            continue;
        }
        let ns = unsafe { pg_sys::get_rel_namespace(rte.relid) };
        // a relation the statement writes or locks rows of (Citus's plan of a data-modifying
        // WITH is a SELECT without the flag, but keeps the original range table, its
        // permissions with it)
        if rte.requiredPerms & WRITES != 0 {
            writes = true;
            super::constraints::written(ns);
        }
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    (!writes).then_some(Read { namespaces })
}

thread_local! {
    /// Whether a namespace is the schema of a tenant whose access is controlled, for one
    /// generation of udm's cached registry and definitions.
    static ACCESS: RefCell<((u64, u64), std::collections::HashMap<pg_sys::Oid, bool>)> =
        RefCell::new(((0, 0), std::collections::HashMap::new()));
}

/// Whether the namespace `ns` is the schema of a tenant whose access is controlled (row-level
/// security there reads the selected user).
fn access_controlled(ns: pg_sys::Oid) -> bool {
    let generation = crate::catalog::registry_generation();
    if let Some(v) = ACCESS.with(|a| {
        let a = a.borrow();
        (a.0 == generation).then(|| a.1.get(&ns).copied()).flatten()
    }) {
        return v;
    }
    let v = matches!(crate::catalog::tenant_of_namespace(ns), Ok(Some(t)) if t.access);
    ACCESS.with(|a| {
        let mut a = a.borrow_mut();
        if a.0 != generation || a.1.len() >= 4096 {
            *a = (generation, std::collections::HashMap::new());
        }
        a.1.insert(ns, v);
    });
    v
}

/// Sends the selection to the workers now, whatever the statement that follows (a query whose
/// function on the tenant's node reads the selected user, e.g. `udm.citus_lock`).
pub(crate) fn send_now() {
    send(None);
}

/// Whether the statement's text names `udm_decrypt` (any case): it runs on the tenant's node with
/// the query of the tenant's table that calls it, and reads the selected tenant there. (Found in
/// the text because Citus plans the query whole for that node; the text is there for a cached
/// plan too. A call inside a view or a function is not seen.)
unsafe fn names_decrypt(query: *mut pg_sys::QueryDesc) -> bool {
    if !super::loaded() || query.is_null() || unsafe { (*query).sourceText.is_null() } {
        return false;
    }
    let text = unsafe { std::ffi::CStr::from_ptr((*query).sourceText) }.to_bytes();
    const NAME: &[u8] = b"udm_decrypt";
    text.windows(NAME.len())
        .any(|w| w.eq_ignore_ascii_case(NAME))
}

/// `send_for` a statement no function of which reads the selected tenant on the node.
fn send(read: Option<&Read>) {
    send_for(read, false)
}

/// Sends the selection in effect to the workers of the current transaction, unless they have
/// it already, with the session's rendering settings it changed (`RENDERING`: the workers
/// build the rows). Nothing happens without Citus, on a worker, in parallel mode (no setting may
/// change there), in a backend serving Citus's own connection, or when neither a user was
/// selected nor a rendering setting changed (a selection of a tenant alone tells the workers
/// nothing: they read the user). Nor for a statement that only reads (`read`) with the
/// session's rendering settings, when none of what it reads is a tenant's whose access is
/// controlled: the workers read the user there for nothing (a write's triggers read it for the
/// audit and the lock guard, row-level security only where access is controlled), and sending
/// it makes the statement a transaction of its own on the worker (BEGIN, the settings, COMMIT:
/// two more round trips than the read).
///
/// `tenant_read`: a function of the statement reads the selected tenant on the tenant's node
/// (`names_decrypt`): the selection is sent, a tenant alone too.
fn send_for(read: Option<&Read>, tenant_read: bool) {
    if !super::loaded() || SENDING.with(|s| s.get()) || unsafe { pg_sys::IsInParallelMode() } {
        return;
    }
    let tenant = guc::tenant().unwrap_or_default();
    let user = guc::user_id().unwrap_or_default();
    let rendering = changed_rendering();
    let lxid = guc::local_xact();
    let sent = SENT.with(|s| {
        s.borrow()
            .last()
            .filter(|x| x.lxid == lxid)
            .map(|x| x.tenant == tenant && x.user == user && x.rendering == rendering)
    });
    match sent {
        Some(true) => return,
        // the workers read the user (row-level security, attribution), not the tenant (the
        // schema of a trigger's table names it): with no user, and the session's rendering
        // settings as the workers have them, nothing to tell them yet
        // (a tenant alone matters to a function reading it there: `tenant_read`)
        None if user.is_empty() && rendering.is_empty() && (!tenant_read || tenant.is_empty()) => {
            return
        }
        _ => {}
    }
    SENDING.with(|s| s.set(true));
    let _sending = Sending;
    if !super::installed() || super::on_worker() || serves_citus() {
        return;
    }
    if let Some(r) = read {
        let rendering_sent = SENT.with(|s| {
            s.borrow()
                .last()
                .filter(|x| x.lxid == lxid)
                .map_or(rendering.is_empty(), |x| x.rendering == rendering)
        });
        if rendering_sent && !tenant_read && !r.namespaces.iter().any(|&ns| access_controlled(ns)) {
            return;
        }
    }
    let (raw_tenant, raw_user) = guc::raw_selection();
    let mut settings: Vec<(&str, &str)> = vec![("udm.tenant", &tenant), ("udm.user_id", &user)];
    settings.extend(rendering.iter().map(|(n, v)| (*n, v.as_str())));
    set_on_workers(&settings);
    // a failed selection is recognised by the settings it left: they stay on the coordinator
    if raw_tenant.as_deref().unwrap_or("") != tenant {
        guc::set("udm.tenant", raw_tenant.as_deref(), true);
    }
    if raw_user.as_deref().unwrap_or("") != user {
        guc::set("udm.user_id", raw_user.as_deref(), true);
    }
    use_coordinated_transaction();
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    SENT.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|x| x.lxid == lxid);
        s.push(Sent {
            lxid,
            subxact,
            tenant,
            user,
            rendering,
        });
    });
}

/// Sets udm's settings for the rest of the transaction (or of the subtransaction) on the
/// coordinator and on every worker connection of the transaction, open or opened later. Only
/// SET statements reach the workers, and Citus takes them only in what it counts as a
/// transaction block (a DO block is one). The caller makes the transaction a coordinated one.
pub(super) fn set_on_workers(settings: &[(&str, &str)]) {
    let mut body = String::from("BEGIN SET LOCAL citus.propagate_set_commands = 'local'; ");
    for (name, value) in settings {
        // udm's own setting names: no quoting needed, none allowed
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
            "a udm setting name"
        );
        // the value is a quoted literal, twice (the block's text is a literal too)
        body.push_str(&format!("SET LOCAL {name} = {}; ", quote_literal(value)));
    }
    // and back to what it was (Citus's default: none): Citus passes a SET on with its
    // statement's whole query string, which for a client's string of several statements holds
    // them all (a `SET ...; INSERT ...; RESET ...` would run its INSERT again on the worker);
    // what udm sends it sends through here
    let before = super::owned_str(unsafe {
        pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false)
    })
    .filter(|v| v.bytes().all(|b| b.is_ascii_lowercase()))
    .unwrap_or_else(|| "none".to_string());
    body.push_str(&format!(
        "SET LOCAL citus.propagate_set_commands = {}; END",
        quote_literal(&before)
    ));
    Spi::run(&format!("DO {}", quote_literal(&body)))
        .unwrap_or_else(|e| crate::error::raise(crate::error::spi_err(e)));
}

/// Makes the transaction a coordinated one (Citus's `UseCoordinatedTransaction`): every worker
/// connection it opens from now on starts with `BEGIN` and the transaction's `SET LOCAL`s. Left
/// to itself Citus sends a single-shard statement outside a transaction block, and a read in any
/// transaction that has not written, without them.
pub(super) fn use_coordinated_transaction() {
    static FOUND: OnceLock<Option<unsafe extern "C-unwind" fn()>> = OnceLock::new();
    let f = FOUND.get_or_init(|| unsafe {
        let p = pg_sys::load_external_function(
            c"$libdir/citus".as_ptr(),
            c"UseCoordinatedTransaction".as_ptr(),
            false,
            std::ptr::null_mut(),
        );
        (!p.is_null())
            .then(|| std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C-unwind" fn()>(p))
    });
    match f {
        Some(f) => unsafe { f() },
        None => pgrx::warning!(
            "udm on Citus: this Citus has no UseCoordinatedTransaction; the selection reaches the workers in transaction blocks only"
        ),
    }
}
