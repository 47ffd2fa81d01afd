//! What udm's coordinator claims to its triggers on the workers (core/src/claims.rs): that the
//! writes of `udm_rollback` / `udm_rollback_transaction` are a rollback, and the version a
//! restored record gets. On a single node the triggers read that from the backend's memory
//! (`audit::as_rollback`); on Citus they run in another backend, on the tenant's worker, and get
//! it as a token in the setting `udm.claim`: signed with the database's key (`udm.node_key`, a
//! reference table only udm reads) and bound to the distributed transaction. A token set by hand,
//! changed, or carried into another transaction is refused (42501), never taken for a rollback.

use super::selection::{set_on_workers, use_coordinated_transaction};
use crate::error::{raise, spi_err, Result, SqlState, UdmError};
use pgrx::prelude::*;
use std::cell::RefCell;
use udm_core::claims::{self, Know, Refused, Rollback, Transaction};

thread_local! {
    /// On the coordinator: the tokens sent, innermost last.
    static SENT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// On a worker: the token last checked (in which transaction) and what it claims.
    static CHECKED: RefCell<Option<(u32, String, Rollback)>> = const { RefCell::new(None) };
}

/// Runs `f` with the workers told that its writes are a rollback (restoring the record `restore`
/// at its version). Without Citus, or on a worker, it runs `f`.
pub fn rollback<R>(restore: Option<([u8; 16], i32)>, f: impl FnOnce() -> R) -> R {
    if !super::installed() || super::on_worker() {
        return f();
    }
    let token = token(&Rollback { restore }).unwrap_or_else(|e| raise(e));
    set_on_workers(&[("udm.claim", &token)]);
    SENT.with(|s| s.borrow_mut().push(token));
    struct Sent;
    impl Drop for Sent {
        fn drop(&mut self) {
            let outer = SENT.with(|s| {
                let mut s = s.borrow_mut();
                s.pop();
                s.last().cloned()
            });
            // after an error the (sub)transaction is rolled back, the setting with it
            if !std::thread::panicking() {
                set_on_workers(&[("udm.claim", outer.as_deref().unwrap_or(""))]);
            }
        }
    }
    let _sent = Sent;
    f()
}

/// On a worker: the rollback the coordinator claims for this transaction's writes, if any.
pub fn rollback_claimed() -> Option<Rollback> {
    if !super::on_worker() {
        return None;
    }
    let token = crate::guc::CLAIM
        .get()
        .and_then(|c| c.to_str().ok().map(str::to_string))
        .filter(|t| !t.is_empty())?;
    let lxid = crate::guc::local_xact();
    if let Some(r) = CHECKED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(x, t, _)| *x == lxid && *t == token)
            .map(|(_, _, r)| r.clone())
    }) {
        return Some(r);
    }
    let r = check(&token).unwrap_or_else(|e| raise(e));
    CHECKED.with(|c| *c.borrow_mut() = Some((lxid, token, r.clone())));
    Some(r)
}

fn token(r: &Rollback) -> Result<String> {
    // the workers' connections take this transaction's id with them
    use_coordinated_transaction();
    Ok(claims::rollback_token(&key()?, &transaction()?, r))
}

fn check(token: &str) -> Result<Rollback> {
    verified(
        token,
        claims::verify_rollback,
        "the setting udm.claim",
        "udm.claim is set by udm_rollback only",
    )
    .map_err(|e| {
        e.hint("do not set udm.claim; roll back with udm_rollback or udm_rollback_transaction")
    })
}

/// The token with which the coordinator asks the tenant's node to make the tenant know a
/// registered user (`udm.citus_know_user`), in this transaction only.
pub fn know_token(k: &Know) -> Result<String> {
    use_coordinated_transaction();
    Ok(claims::know_token(&key()?, &transaction()?, k))
}

/// On a worker: what a know token claims, when udm's coordinator made it in this transaction.
pub fn check_know(token: &str) -> Result<Know> {
    verified(
        token,
        claims::verify_know,
        "the token of udm.citus_know_user",
        "udm_insert and udm_update make it",
    )
    .map_err(|e| e.hint("write the record with udm_insert or udm_update on the coordinator"))
}

/// The token with which the coordinator asks the tenant's node for the tenant's wrapped
/// encryption keys (`udm.citus_tenant_keys`), in this transaction only.
pub fn keys_token(tenant: &str) -> Result<String> {
    use_coordinated_transaction();
    Ok(claims::keys_token(&key()?, &transaction()?, tenant))
}

/// On a worker: the tenant a keys token names, when udm's coordinator made it in this transaction.
pub fn check_keys(token: &str) -> Result<String> {
    verified(
        token,
        claims::verify_keys,
        "the token of udm.citus_tenant_keys",
        "udm's reads of encrypted fields make it",
    )
    .map_err(|e| e.hint("read encrypted fields through udm's functions on the coordinator"))
}

/// A token checked with the database's key against this distributed transaction (read inside the
/// query of a shard, on this node: the key's reference table has a copy here).
fn verified<C>(
    token: &str,
    verify: fn(&[u8], &Transaction, &str) -> std::result::Result<C, Refused>,
    what: &str,
    made_by: &str,
) -> Result<C> {
    let (key, x) = super::nested(|| Ok::<_, UdmError>((key()?, transaction()?)))?;
    verify(&key, &x, token).map_err(|why| {
        UdmError::new(
            SqlState::InsufficientPrivilege,
            format!("udm on Citus: {what} holds no claim of udm for this transaction"),
        )
        .detail(match why {
            Refused::Forged => format!("its signature is not udm's: {made_by}"),
            Refused::OtherTransaction => "it was made in another transaction".to_string(),
        })
    })
}

/// The database's key (`udm.node_key`), read as udm.
fn key() -> Result<Vec<u8>> {
    crate::access::security::as_owner(|| {
        crate::spi::select_one::<Vec<u8>>("SELECT key FROM udm.node_key", &[])
    })?
    .ok_or_else(|| {
        UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            "udm on Citus: the database has no key in udm.node_key",
        )
        .hint("a udm admin runs SELECT udm.citus_setup() on the coordinator")
    })
}

/// Citus's id of the current distributed transaction.
fn transaction() -> Result<Transaction> {
    Spi::connect(|c| {
        let row = c
            .select(
                "SELECT initiator_node_identifier, transaction_number, transaction_stamp::text \
                 FROM pg_catalog.get_current_transaction_id()",
                Some(1),
                &[],
            )?
            .first();
        Ok(Transaction {
            node: row.get::<i32>(1)?.unwrap_or(0),
            number: row.get::<i64>(2)?.unwrap_or(0),
            stamp: row.get::<String>(3)?.unwrap_or_default(),
        })
    })
    .map_err(spi_err)
}
