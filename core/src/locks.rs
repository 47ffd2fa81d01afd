//! Write locks: exclusive editing of a record, or of every record in a parent's scope (a
//! product's scope is its roadmap).
//!
//! An entity declares its scope in its definition (`"lock": {"scope": "self"}` or
//! `"lock": {"scope": "roadmap_id", "required": true}`). A lock is one row per scope record in
//! the tenant's lock table; this module decides, from that row and the clock, what an acquirer,
//! a writer or a releaser may do. Times are PostgreSQL timestamps (microseconds since 2000).

use crate::error::{Result, SqlState, UdmError};
use crate::json::{expect_bool, expect_object, expect_str, refuse_unknown_keys};
use serde_json::{json, Value};

/// What a lock on a record of the entity protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockScope {
    /// The record itself.
    Record,
    /// The record a many-to-one relation field of this entity points to (by field name).
    Field(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDef {
    pub scope: LockScope,
    /// Writes (UPDATE, DELETE) need the writer to hold the scope's lock, not only that nobody
    /// else holds it.
    pub required: bool,
}

impl LockDef {
    /// The field the scope goes through, if any.
    pub fn scope_field(&self) -> Option<&str> {
        match &self.scope {
            LockScope::Record => None,
            LockScope::Field(f) => Some(f),
        }
    }
}

pub const SELF_SCOPE: &str = "self";

/// Parses the `lock` option of an entity definition: `"self"`, a field name, or
/// `{"scope": ..., "required": bool}`. `null` means no lock scope. The field is checked by the
/// definition (it must be a many-to-one relation).
pub fn parse_lock(v: &Value, entity: &str) -> Result<Option<LockDef>> {
    let what = format!("entity \"{entity}\": \"lock\"");
    let (scope, required) = match v {
        Value::Null => return Ok(None),
        Value::String(s) => (s.as_str(), false),
        Value::Object(_) => {
            let obj = expect_object(v, &what)?;
            refuse_unknown_keys(obj, &["scope", "required"], &what)?;
            let scope = match obj.get("scope") {
                Some(s) => expect_str(s, &format!("{what}: \"scope\""))?,
                None => return Err(UdmError::invalid(format!("{what} has no \"scope\"")).hint(
                    "write {\"scope\": \"self\"} or {\"scope\": \"<many-to-one relation field>\"}",
                )),
            };
            let required = match obj.get("required") {
                None | Some(Value::Null) => false,
                Some(r) => expect_bool(r, &format!("{what}: \"required\""))?,
            };
            (scope, required)
        }
        _ => {
            return Err(UdmError::invalid(format!(
                "{what} must be \"self\", a relation field name or an object, not {v}"
            ))
            .hint("write {\"scope\": \"self\"} or {\"scope\": \"<many-to-one relation field>\"}"))
        }
    };
    let scope = if scope == SELF_SCOPE {
        LockScope::Record
    } else {
        LockScope::Field(scope.to_string())
    };
    Ok(Some(LockDef { scope, required }))
}

pub fn lock_to_json(l: &LockDef) -> Value {
    let scope = match &l.scope {
        LockScope::Record => SELF_SCOPE,
        LockScope::Field(f) => f.as_str(),
    };
    json!({"scope": scope, "required": l.required})
}

/// A lock as stored: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    pub holder: String,
    pub acquired_at: i64,
    pub heartbeat_at: i64,
    /// From this moment another acquirer may take the lock over (no heartbeat for a while).
    pub stale_at: i64,
    /// From this moment the lock protects nothing.
    pub expires_at: i64,
}

impl LockRow {
    pub fn is_stale(&self, now: i64) -> bool {
        now >= self.stale_at
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

/// What an acquire does with the lock row it found (under its row lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Nobody holds it: a new lock.
    New,
    /// The acquirer holds it already: renewed, like a heartbeat.
    Renew,
    /// Another holder let it go stale or expire: taken over.
    TakeOver { previous: String },
    /// Another holder has it and keeps it alive.
    Refused,
}

pub fn decide_acquire(existing: Option<&LockRow>, me: &str, now: i64) -> Acquire {
    match existing {
        None => Acquire::New,
        Some(l) if l.holder == me => Acquire::Renew,
        Some(l) if l.is_stale(now) => Acquire::TakeOver {
            previous: l.holder.clone(),
        },
        Some(_) => Acquire::Refused,
    }
}

/// Whether a write by `me` in a scope with this lock row goes ahead: `Ok` or the reason it is
/// refused. An expired lock protects nothing; a stale one still does until it is taken over.
pub fn write_allowed<'a>(
    row: Option<&'a LockRow>,
    me: &str,
    required: bool,
    now: i64,
) -> std::result::Result<(), WriteRefusal<'a>> {
    match row {
        Some(l) if !l.is_expired(now) && l.holder != me => Err(WriteRefusal::HeldBy(l)),
        Some(l) if !l.is_expired(now) => Ok(()),
        _ if required => Err(WriteRefusal::NotHeld),
        _ => Ok(()),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum WriteRefusal<'a> {
    /// Someone else holds the scope's lock.
    HeldBy(&'a LockRow),
    /// The entity needs the writer to hold the lock, and nobody (alive) does.
    NotHeld,
}

/// The words for a scope: `roadmap 0b1e...` (the record itself) or `roadmap 0b1e... (the scope of
/// product 77aa...)`.
pub fn scope_words(scope_entity: &str, scope_id: &str, entity: &str, id: &str) -> String {
    if scope_entity == entity && scope_id == id {
        format!("{scope_entity} {scope_id}")
    } else {
        format!("{scope_entity} {scope_id} (the lock scope of {entity} {id})")
    }
}

/// The ERROR for a write refused because another holder has the lock.
pub fn locked_error(scope: &str, holder: &str, expires: &str, action: &str) -> UdmError {
    UdmError::new(
        SqlState::LockNotAvailable,
        format!("cannot {action}: {scope} is locked for editing by \"{holder}\" until {expires}"),
    )
    .hint("wait until the holder releases the lock or stops sending heartbeats; udm_lock_status shows the lock")
}

/// The ERROR for a write that needs the lock the writer does not hold.
pub fn lock_required_error(scope: &str, action: &str, acquire_call: &str) -> UdmError {
    UdmError::new(
        SqlState::LockNotAvailable,
        format!("cannot {action}: changes in {scope} need its write lock, and you do not hold it"),
    )
    .hint(format!("acquire it first with {acquire_call}"))
}

/// The ERROR for heartbeat or release of a lock somebody else holds.
pub fn not_holder_error(verb: &str, scope: &str, holder: &str, expires: &str) -> UdmError {
    UdmError::new(
        SqlState::LockNotAvailable,
        format!("cannot {verb} the lock on {scope}: it is held by \"{holder}\" until {expires}"),
    )
    .hint("only the holder may send heartbeats for or release a lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(holder: &str) -> LockRow {
        LockRow {
            holder: holder.into(),
            acquired_at: 0,
            heartbeat_at: 0,
            stale_at: 180,
            expires_at: 300,
        }
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse_lock(&Value::Null, "p").unwrap(), None);
        assert_eq!(
            parse_lock(&json!("self"), "p").unwrap(),
            Some(LockDef {
                scope: LockScope::Record,
                required: false
            })
        );
        let l = parse_lock(&json!({"scope": "roadmap_id", "required": true}), "p")
            .unwrap()
            .unwrap();
        assert_eq!(l.scope_field(), Some("roadmap_id"));
        assert!(l.required);
        assert_eq!(
            lock_to_json(&l),
            json!({"scope": "roadmap_id", "required": true})
        );
        assert_eq!(parse_lock(&lock_to_json(&l), "p").unwrap(), Some(l));
    }

    #[test]
    fn refuses_bad_shapes() {
        let e = parse_lock(&json!(5), "product").unwrap_err();
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        assert!(e.message.contains("entity \"product\""), "{}", e.message);
        let e = parse_lock(&json!({"required": true}), "product").unwrap_err();
        assert!(e.message.contains("no \"scope\""), "{}", e.message);
        let e = parse_lock(&json!({"scope": "self", "ttl": 5}), "product").unwrap_err();
        assert!(e.message.contains("ttl"), "{}", e.message);
        let e = parse_lock(&json!({"scope": "self", "required": "yes"}), "product").unwrap_err();
        assert!(e.message.contains("required"), "{}", e.message);
    }

    #[test]
    fn acquire_is_new_renew_takeover_or_refused() {
        assert_eq!(decide_acquire(None, "a", 0), Acquire::New);
        assert_eq!(decide_acquire(Some(&row("a")), "a", 10), Acquire::Renew);
        assert_eq!(decide_acquire(Some(&row("a")), "b", 179), Acquire::Refused);
        assert_eq!(
            decide_acquire(Some(&row("a")), "b", 180),
            Acquire::TakeOver {
                previous: "a".into()
            }
        );
        // expired is stale too
        assert!(matches!(
            decide_acquire(Some(&row("a")), "b", 400),
            Acquire::TakeOver { .. }
        ));
    }

    #[test]
    fn writes_are_refused_while_another_holds_the_lock() {
        let l = row("a");
        assert_eq!(write_allowed(Some(&l), "a", false, 10), Ok(()));
        assert_eq!(
            write_allowed(Some(&l), "b", false, 10),
            Err(WriteRefusal::HeldBy(&l))
        );
        // stale still protects; expired does not
        assert_eq!(
            write_allowed(Some(&l), "b", false, 200),
            Err(WriteRefusal::HeldBy(&l))
        );
        assert_eq!(write_allowed(Some(&l), "b", false, 300), Ok(()));
        assert_eq!(write_allowed(None, "b", false, 0), Ok(()));
    }

    #[test]
    fn required_locks_need_the_writer_to_hold_them() {
        let l = row("a");
        assert_eq!(
            write_allowed(None, "a", true, 0),
            Err(WriteRefusal::NotHeld)
        );
        assert_eq!(write_allowed(Some(&l), "a", true, 10), Ok(()));
        assert_eq!(
            write_allowed(Some(&l), "a", true, 300),
            Err(WriteRefusal::NotHeld)
        );
        assert_eq!(
            write_allowed(Some(&l), "b", true, 10),
            Err(WriteRefusal::HeldBy(&l))
        );
    }

    #[test]
    fn messages_name_scope_holder_and_expiry() {
        let s = scope_words("roadmap", "r1", "product", "p1");
        assert_eq!(s, "roadmap r1 (the lock scope of product p1)");
        assert_eq!(scope_words("roadmap", "r1", "roadmap", "r1"), "roadmap r1");
        let e = locked_error(&s, "alice", "12:05", "update product p1");
        assert_eq!(e.state, SqlState::LockNotAvailable);
        assert!(e.message.contains("\"alice\" until 12:05"), "{}", e.message);
        let e = lock_required_error(&s, "update product p1", "udm_lock_acquire('product', 'p1')");
        assert!(e.hint.unwrap().contains("udm_lock_acquire"));
        let e = not_holder_error("release", &s, "alice", "12:05");
        assert!(e
            .message
            .starts_with("cannot release the lock on roadmap r1"));
    }
}
