//! Claims udm's coordinator hands to its own triggers and functions on a Citus worker.
//!
//! On Citus a tenant's triggers fire on its worker, in the backend serving the coordinator's
//! connection, which knows nothing of what udm does in the coordinator's backend (that a write is
//! a rollback, and which version a restored record gets). The only channel Citus offers is a
//! transaction's `SET LOCAL`s, and any caller can set a setting. So udm signs what it claims
//! with a key of the database that only udm reads (HMAC-SHA256), and binds the claim to the
//! distributed transaction it is made in: a claim set by hand, changed, or carried into another
//! transaction is refused.
//!
//! A token is `<claim>|<hex of the HMAC of the claim>`; a rollback claim is
//! `rollback|<initiator node>|<transaction number>|<transaction stamp>|<restored record or ->|<version>`,
//! a claim that a tenant is to know a registered user (`udm.citus_know_user`)
//! `know|<initiator node>|<transaction number>|<transaction stamp>|<tenant>|<user id>`, a claim
//! that the coordinator reads a tenant's wrapped encryption keys (`udm.citus_tenant_keys`)
//! `keys|<initiator node>|<transaction number>|<transaction stamp>|<tenant>`.

use crate::ids::hex;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The distributed transaction a claim is bound to (Citus's `get_current_transaction_id()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub node: i32,
    pub number: i64,
    /// The transaction's stamp, as text (compared, never parsed).
    pub stamp: String,
}

/// A rollback under way: its writes are recorded as ROLLBACK, and a deleted record it restores
/// gets `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    pub restore: Option<([u8; 16], i32)>,
}

fn mac(key: &[u8], claim: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any length");
    m.update(b"udm claim\0");
    m.update(claim.as_bytes());
    m
}

/// A registered user the coordinator makes a tenant know (its users table on the tenant's node)
/// before `udm_insert` or `udm_update` write a `user` field naming them: the trigger on the node
/// cannot do it there (it would write the registry of users' tenants, a reference table, from
/// inside the change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Know {
    pub tenant: String,
    pub user: [u8; 16],
}

/// `<kind>|<transaction>|<payload>|<signature>`.
fn sign(key: &[u8], x: &Transaction, kind: &str, payload: &str) -> String {
    let claim = format!("{kind}|{}|{}|{}|{payload}", x.node, x.number, x.stamp);
    let sig = hex(&mac(key, &claim).finalize().into_bytes());
    format!("{claim}|{sig}")
}

/// The `n` payload fields of a token of `kind` that udm made (`key`) in transaction `x`.
fn open<'a>(
    key: &[u8],
    x: &Transaction,
    token: &'a str,
    kind: &str,
    n: usize,
) -> Result<Vec<&'a str>, Refused> {
    let (claim, sig) = token.rsplit_once('|').ok_or(Refused::Forged)?;
    let sig = unhex(sig).ok_or(Refused::Forged)?;
    mac(key, claim)
        .verify_slice(&sig)
        .map_err(|_| Refused::Forged)?;
    let parts: Vec<&str> = claim.split('|').collect();
    if parts.len() != 4 + n || parts[0] != kind {
        return Err(Refused::Forged);
    }
    if parts[1] != x.node.to_string() || parts[2] != x.number.to_string() || parts[3] != x.stamp {
        return Err(Refused::OtherTransaction);
    }
    Ok(parts[4..].to_vec())
}

/// The token of a rollback claim in transaction `x`.
pub fn rollback_token(key: &[u8], x: &Transaction, r: &Rollback) -> String {
    let restore = match &r.restore {
        Some((id, v)) => format!("{}|{v}", hex(id)),
        None => "-|0".to_string(),
    };
    sign(key, x, "rollback", &restore)
}

/// Why a token is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a token udm made, or made with another key, or changed.
    Forged,
    /// A token of another transaction.
    OtherTransaction,
}

/// The rollback a token claims, when udm made it (`key`) in transaction `x`.
pub fn verify_rollback(key: &[u8], x: &Transaction, token: &str) -> Result<Rollback, Refused> {
    let [id, version] = open(key, x, token, "rollback", 2)?[..] else {
        return Err(Refused::Forged);
    };
    let restore = if id == "-" {
        None
    } else {
        Some((
            uuid_bytes(id)?,
            version.parse().map_err(|_| Refused::Forged)?,
        ))
    };
    Ok(Rollback { restore })
}

/// The token of a claim that the tenant is to know the user, in transaction `x`.
pub fn know_token(key: &[u8], x: &Transaction, k: &Know) -> String {
    sign(key, x, "know", &format!("{}|{}", k.tenant, hex(&k.user)))
}

/// What a know token claims, when udm made it (`key`) in transaction `x`.
pub fn verify_know(key: &[u8], x: &Transaction, token: &str) -> Result<Know, Refused> {
    let [tenant, user] = open(key, x, token, "know", 2)?[..] else {
        return Err(Refused::Forged);
    };
    Ok(Know {
        tenant: tenant.to_string(),
        user: uuid_bytes(user)?,
    })
}

/// The token of a claim that the coordinator reads the tenant's wrapped keys, in transaction `x`.
pub fn keys_token(key: &[u8], x: &Transaction, tenant: &str) -> String {
    sign(key, x, "keys", tenant)
}

/// The tenant a keys token names, when udm made it (`key`) in transaction `x`.
pub fn verify_keys(key: &[u8], x: &Transaction, token: &str) -> Result<String, Refused> {
    let [tenant] = open(key, x, token, "keys", 1)?[..] else {
        return Err(Refused::Forged);
    };
    Ok(tenant.to_string())
}

fn uuid_bytes(h: &str) -> Result<[u8; 16], Refused> {
    unhex(h)
        .and_then(|b| b.try_into().ok())
        .ok_or(Refused::Forged)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(number: i64) -> Transaction {
        Transaction {
            node: 0,
            number,
            stamp: "2026-12-06 15:00:00.123+00".into(),
        }
    }

    #[test]
    fn a_token_verifies_in_its_transaction_with_its_key_only() {
        let key = b"0123456789abcdef0123456789abcdef";
        for r in [
            Rollback { restore: None },
            Rollback {
                restore: Some(([7u8; 16], 12)),
            },
        ] {
            let t = rollback_token(key, &x(5), &r);
            assert_eq!(verify_rollback(key, &x(5), &t), Ok(r.clone()));
            assert_eq!(
                verify_rollback(key, &x(6), &t),
                Err(Refused::OtherTransaction)
            );
            assert_eq!(
                verify_rollback(b"another key", &x(5), &t),
                Err(Refused::Forged)
            );
        }
    }

    #[test]
    fn changed_or_made_up_tokens_are_forged() {
        let key = b"k";
        let t = rollback_token(
            key,
            &x(5),
            &Rollback {
                restore: Some(([1u8; 16], 3)),
            },
        );
        // another version, same signature
        let changed = t.replacen("|3|", "|4|", 1);
        assert_ne!(changed, t);
        assert_eq!(verify_rollback(key, &x(5), &changed), Err(Refused::Forged));
        for made_up in [
            "",
            "rollback",
            "rollback|0|5|x|-|0",
            "rollback|0|5|x|-|0|zz",
            "|",
        ] {
            assert_eq!(verify_rollback(key, &x(5), made_up), Err(Refused::Forged));
        }
        // a signature that verifies, over a claim of another kind
        let claim = "other|0|5|2026-12-06 15:00:00.123+00|-|0";
        let sig = hex(&mac(key, claim).finalize().into_bytes());
        assert_eq!(
            verify_rollback(key, &x(5), &format!("{claim}|{sig}")),
            Err(Refused::Forged)
        );
    }

    #[test]
    fn know_tokens_verify_as_know_only_in_their_transaction() {
        let key = b"0123456789abcdef";
        let k = Know {
            tenant: "shop".into(),
            user: [9u8; 16],
        };
        let t = know_token(key, &x(5), &k);
        assert_eq!(verify_know(key, &x(5), &t), Ok(k.clone()));
        assert_eq!(verify_know(key, &x(6), &t), Err(Refused::OtherTransaction));
        assert_eq!(verify_know(b"other", &x(5), &t), Err(Refused::Forged));
        // another tenant, same signature
        let changed = t.replacen("|shop|", "|team|", 1);
        assert_ne!(changed, t);
        assert_eq!(verify_know(key, &x(5), &changed), Err(Refused::Forged));
        // a rollback token is not a know token, nor the other way round
        let r = rollback_token(key, &x(5), &Rollback { restore: None });
        assert_eq!(verify_know(key, &x(5), &r), Err(Refused::Forged));
        assert_eq!(verify_rollback(key, &x(5), &t), Err(Refused::Forged));
    }

    #[test]
    fn keys_tokens_verify_as_keys_only_in_their_transaction() {
        let key = b"0123456789abcdef";
        let t = keys_token(key, &x(5), "shop");
        assert_eq!(verify_keys(key, &x(5), &t), Ok("shop".to_string()));
        assert_eq!(verify_keys(key, &x(6), &t), Err(Refused::OtherTransaction));
        assert_eq!(verify_keys(b"other", &x(5), &t), Err(Refused::Forged));
        let changed = t.replacen("|shop|", "|team|", 1);
        assert_ne!(changed, t);
        assert_eq!(verify_keys(key, &x(5), &changed), Err(Refused::Forged));
        // a know token is not a keys token, nor the other way round
        let k = know_token(
            key,
            &x(5),
            &Know {
                tenant: "shop".into(),
                user: [9u8; 16],
            },
        );
        assert_eq!(verify_keys(key, &x(5), &k), Err(Refused::Forged));
        assert_eq!(verify_know(key, &x(5), &t), Err(Refused::Forged));
    }
}
