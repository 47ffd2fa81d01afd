//! The audit log's pure logic: the hash chain that makes it tamper-evident, the rules a chain
//! must follow, human-readable change summaries, mapping an old image back onto the current
//! definition for a rollback, and the options of compliance reports.
//!
//! Each audit row carries `hash = SHA-256(prev_hash, row content)` where `prev_hash` is the hash
//! of the previous audit row of the same record. Chains are per record, so unrelated writers never
//! wait on each other. A record's chain starts with an INSERT (no previous hash); a plain INSERT
//! that re-uses the id of a deleted record starts a new segment right after the DELETE.

use crate::definition::EntityDef;
use crate::error::{Result, SqlState, UdmError};
use crate::json::{expect_object, expect_str, expect_u32, refuse_unknown_keys};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const ACTIONS: &[&str] = &["INSERT", "UPDATE", "DELETE", "ROLLBACK"];

/// The content of an audit row that its hash covers, in a fixed order. Images are the raw bytes
/// of the stored jsonb values, so the hash is recomputed from exactly what is stored.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub prev: Option<&'a [u8]>,
    pub entity: &'a str,
    pub record_id: &'a [u8],
    pub action: &'a str,
    pub record_version: Option<i32>,
    pub entity_version: Option<i32>,
    pub old_data: Option<&'a [u8]>,
    pub new_data: Option<&'a [u8]>,
    /// Changed fields joined with ','.
    pub changed_fields: Option<&'a str>,
    pub user_id: &'a str,
    pub db_role: &'a str,
    pub txid: i64,
    /// Microseconds since 2000-01-01 (PostgreSQL's timestamptz).
    pub changed_at: i64,
}

fn put(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => buf.push(0),
        Some(b) => {
            buf.push(1);
            buf.extend_from_slice(&(b.len() as u64).to_be_bytes());
            buf.extend_from_slice(b);
        }
    }
}

/// The hash of an audit row. The content is laid out in one buffer and hashed in one pass
/// (`scratch` is reused between calls).
pub fn chain_hash_with(scratch: &mut Vec<u8>, i: &HashInput) -> [u8; 32] {
    let buf = scratch;
    buf.clear();
    buf.extend_from_slice(b"udm-audit-v1");
    put(buf, i.prev);
    put(buf, Some(i.entity.as_bytes()));
    put(buf, Some(i.record_id));
    put(buf, Some(i.action.as_bytes()));
    let rv = i.record_version.map(i32::to_be_bytes);
    put(buf, rv.as_ref().map(|b| &b[..]));
    let ev = i.entity_version.map(i32::to_be_bytes);
    put(buf, ev.as_ref().map(|b| &b[..]));
    put(buf, i.old_data);
    put(buf, i.new_data);
    put(buf, i.changed_fields.map(str::as_bytes));
    put(buf, Some(i.user_id.as_bytes()));
    put(buf, Some(i.db_role.as_bytes()));
    put(buf, Some(&i.txid.to_be_bytes()));
    put(buf, Some(&i.changed_at.to_be_bytes()));
    Sha256::digest(&buf[..]).into()
}

pub fn chain_hash(i: &HashInput) -> [u8; 32] {
    chain_hash_with(&mut Vec::with_capacity(1024), i)
}

/// The hash of a chunk of the batched audit log: over its batch id, first slot and the hashes
/// of its changes in order (each of which covers its change's content).
pub fn batch_hash(batch_id: i64, first_slot: i32, hashes: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"udm-audit-batch-v1");
    h.update(batch_id.to_be_bytes());
    h.update(first_slot.to_be_bytes());
    h.update((hashes.len() as u64).to_be_bytes());
    for x in hashes {
        h.update(x);
    }
    h.finalize().into()
}

/// Why a row does not link to the row before it in its record's chain, if it does not.
/// `before` is the previous row of the same record (its action and hash).
pub fn link_error(
    before: Option<(&str, &[u8])>,
    prev_hash: Option<&[u8]>,
    action: &str,
) -> Option<String> {
    match (before, prev_hash) {
        (None, None) => None,
        (None, Some(_)) => Some("the row it chains to is missing".into()),
        (Some((prev_action, _)), None) => {
            if action == "INSERT" && prev_action == "DELETE" {
                None // the id was re-used after a delete: a new segment
            } else {
                Some("it does not chain to the row before it".into())
            }
        }
        (Some((_, h)), Some(p)) => {
            if h == p {
                None
            } else {
                Some("it chains to a different row than the one before it (a row is missing or was changed)".into())
            }
        }
    }
}

/// What is wrong with a batched log's change whose chain pointer (`prev_ptr`, 0 for none) is not
/// the id of the change before it in its record's chain (`before`, None for the chain's first):
/// readers follow these pointers, so a changed one hides or repeats changes in history.
pub fn pointer_error(before: Option<i64>, prev_ptr: i64) -> Option<String> {
    if before.unwrap_or(0) == prev_ptr {
        None
    } else {
        Some(match before {
            None => "it points back to a change its record does not have".into(),
            Some(_) => "it points back to another change than the one before it".into(),
        })
    }
}

/// Since when every change of an entity's records has been audited, from its definition versions
/// in order (whether each audits, and when it was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditedSince<T> {
    /// Auditing is off now: nothing to expect.
    Off,
    /// Since the entity was defined.
    Always,
    /// Since auditing was last switched on, at this time: records changed later have an audit
    /// row for their current version.
    Since(T),
}

pub fn audited_since<T: Copy>(versions: &[(bool, T)]) -> AuditedSince<T> {
    let mut since = AuditedSince::Off;
    for (i, &(on, at)) in versions.iter().enumerate() {
        since = match (on, since) {
            (false, _) => AuditedSince::Off,
            (true, AuditedSince::Off) if i == 0 => AuditedSince::Always,
            (true, AuditedSince::Off) => AuditedSince::Since(at),
            (true, s) => s,
        };
    }
    since
}

/// The problem of a live record whose current version has no audit row, while its entity
/// audited every change since before the record's last change.
pub fn missing_head_error(version: i32, newest_audited: Option<i32>) -> String {
    match newest_audited {
        None => format!(
            "the record (version {version}) has no audit rows: its chain was removed, or it was written with triggers off"
        ),
        Some(v) => format!(
            "its current version {version} has no audit row (the newest is version {v}): audit rows were removed, or it was changed with triggers off"
        ),
    }
}

// ------------------------------------------------------------------ change summaries

fn show(v: &Value) -> String {
    match v {
        Value::Null => "empty".into(),
        Value::String(s) => {
            let short: String = s.chars().take(80).collect();
            if short.len() < s.len() {
                format!("\"{short}...\"")
            } else {
                format!("\"{short}\"")
            }
        }
        other => {
            let s = other.to_string();
            if s.chars().count() > 80 {
                format!("{}...", s.chars().take(80).collect::<String>())
            } else {
                s
            }
        }
    }
}

/// A value as a summary shows it: numbers exactly as stored (`12.50` in a numeric(12,2) field;
/// udm reads JSON numbers without rounding them through floating point).
fn show_number_or(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => show(other),
    }
}

/// "price changed from 99.99 to 129.99"
pub fn field_change(field: &str, old: &Value, new: &Value) -> String {
    match (old, new) {
        (Value::Null, n) => format!("{field} set to {}", show_number_or(n)),
        (o, Value::Null) => format!("{field} cleared (was {})", show_number_or(o)),
        (o, n) => format!(
            "{field} changed from {} to {}",
            show_number_or(o),
            show_number_or(n)
        ),
    }
}

/// A human-readable summary of one audit row.
pub fn summarize(
    action: &str,
    entity: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    changed: &[String],
) -> String {
    let get =
        |img: Option<&Value>, f: &str| img.and_then(|i| i.get(f)).cloned().unwrap_or(Value::Null);
    match action {
        "INSERT" => format!("created {entity}"),
        "DELETE" => format!("deleted {entity}"),
        "ROLLBACK" if old.is_none() => format!("restored {entity}"),
        _ => {
            let verb = if action == "ROLLBACK" {
                "rolled back: "
            } else {
                ""
            };
            if changed.is_empty() {
                return format!("{verb}{entity} saved without changes");
            }
            let parts: Vec<String> = changed
                .iter()
                .map(|f| field_change(f, &get(old, f), &get(new, f)))
                .collect();
            format!("{verb}{}", parts.join("; "))
        }
    }
}

// ------------------------------------------------------------------ links

/// One change of a record's many-to-many links, as the audit log has it (junction rows are
/// audited as changes of `<entity>.<field>` keyed by the source record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkChange {
    pub audit_id: i64,
    pub txid: i64,
    /// The field's id (stable across renames).
    pub field: u32,
    pub target: String,
    /// Linked (true) or unlinked.
    pub added: bool,
}

/// The targets of each many-to-many field after `changes`, applied in order.
pub fn links_after<'a>(
    changes: impl IntoIterator<Item = &'a LinkChange>,
) -> std::collections::BTreeMap<u32, std::collections::BTreeSet<String>> {
    let mut out: std::collections::BTreeMap<u32, std::collections::BTreeSet<String>> =
        Default::default();
    for c in changes {
        let set = out.entry(c.field).or_default();
        if c.added {
            set.insert(c.target.clone());
        } else {
            set.remove(&c.target);
        }
    }
    out
}

/// What `changes` did to one field, in words: `tags: added a, b; removed c` (a link added and
/// removed again within them cancels out). `None` when nothing changed.
pub fn link_summary(field: &str, changes: &[&LinkChange]) -> Option<String> {
    let mut net: std::collections::BTreeMap<&str, i32> = Default::default();
    for c in changes {
        *net.entry(c.target.as_str()).or_default() += if c.added { 1 } else { -1 };
    }
    let added: Vec<&str> = net
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, _)| *t)
        .collect();
    let removed: Vec<&str> = net
        .iter()
        .filter(|(_, n)| **n < 0)
        .map(|(t, _)| *t)
        .collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", removed.join(", ")));
    }
    (!parts.is_empty()).then(|| format!("{field}: {}", parts.join("; ")))
}

// ------------------------------------------------------------------ rollback

/// What a rollback writes: values by current field name, and the fields it left alone.
#[derive(Debug, Default, PartialEq)]
pub struct RestorePlan {
    pub values: Map<String, Value>,
    pub skipped: Vec<String>,
}

/// Maps an image written under definition `then` onto the current definition `now`: fields are
/// matched by their stable id, so renames are followed. With `only`, just those fields (named as
/// they are now, or as they were in the image) are restored, and one that cannot be is an error.
pub fn restore_plan(
    then: &EntityDef,
    now: &EntityDef,
    image: &Map<String, Value>,
    only: Option<&[String]>,
    what: &str,
) -> Result<RestorePlan> {
    let mut plan = RestorePlan::default();
    if let Some(only) = only {
        for name in only {
            let known = now.field(name).is_some() || then.field(name).is_some();
            if !known {
                return Err(UdmError::new(
                    SqlState::UndefinedColumn,
                    format!("{what}: entity \"{}\" has no field \"{name}\"", now.slug),
                )
                .hint(format!(
                    "fields: {}",
                    now.fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    for f in &then.fields {
        let Some(v) = image.get(&f.name) else {
            continue;
        };
        let current = now.fields.iter().find(|c| c.id == f.id);
        let wanted = match only {
            None => true,
            Some(list) => list
                .iter()
                .any(|n| n == &f.name || current.is_some_and(|c| &c.name == n)),
        };
        if !wanted {
            continue;
        }
        // an image written while the field was encrypted holds its ciphertext: once encryption
        // was turned off for the field, writing that back would store the ciphertext as a value
        let sealed_then = f.encrypted
            && current.is_some_and(|c| !c.encrypted)
            && v.as_str()
                .is_some_and(|s| s.starts_with(crate::crypto::PREFIX));
        if sealed_then {
            if only.is_some() {
                return Err(UdmError::new(
                    SqlState::FeatureNotSupported,
                    format!(
                        "{what}: field \"{}\" of entity \"{}\" was encrypted in that version and is not any more: its value there is a ciphertext",
                        f.name, now.slug
                    ),
                )
                .hint("roll back the other fields, or turn encryption on again for this one first"));
            }
            plan.skipped.push(f.name.clone());
            continue;
        }
        match current {
            Some(c) if c.has_column() => {
                plan.values.insert(c.name.clone(), v.clone());
            }
            _ => {
                if only.is_some() {
                    return Err(UdmError::new(
                        SqlState::ObjectNotInPrerequisiteState,
                        format!(
                            "{what}: field \"{}\" of entity \"{}\" was removed after that version",
                            f.name, now.slug
                        ),
                    )
                    .hint("restore the field with udm_restore_field first"));
                }
                plan.skipped.push(f.name.clone());
            }
        }
    }
    Ok(plan)
}

// ------------------------------------------------------------------ reports

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Summary,
    UserActivity,
    RecordHistory,
    Changes,
}

impl ReportKind {
    pub fn parse(s: &str) -> Result<ReportKind> {
        Ok(match s {
            "summary" => ReportKind::Summary,
            "user_activity" => ReportKind::UserActivity,
            "record_history" => ReportKind::RecordHistory,
            "changes" => ReportKind::Changes,
            other => {
                return Err(UdmError::invalid(format!(
                    "unknown audit report kind \"{}\"",
                    crate::ident::printable(other)
                ))
                .hint("kinds: summary, user_activity, record_history, changes"))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportOptions {
    pub user: Option<String>,
    pub entity: Option<String>,
    pub record_id: Option<String>,
    pub limit: u32,
}

pub const MAX_REPORT_ROWS: u32 = 10_000;

pub fn parse_report_options(kind: ReportKind, v: &Value) -> Result<ReportOptions> {
    let what = "audit report options";
    let o = expect_object(v, what)?;
    refuse_unknown_keys(o, &["user", "entity", "record_id", "limit"], what)?;
    let s = |k: &str| -> Result<Option<String>> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(
                expect_str(v, &format!("{what}: \"{k}\""))?.to_string(),
            )),
        }
    };
    let opts = ReportOptions {
        user: s("user")?,
        entity: s("entity")?,
        record_id: s("record_id")?,
        limit: match o.get("limit") {
            None => 1000,
            Some(v) => expect_u32(v, &format!("{what}: \"limit\""), 1, MAX_REPORT_ROWS)?,
        },
    };
    if kind == ReportKind::UserActivity && opts.user.is_none() {
        return Err(UdmError::invalid(
            "the user_activity report needs options {\"user\": \"...\"}",
        ));
    }
    if kind == ReportKind::RecordHistory && (opts.entity.is_none() || opts.record_id.is_none()) {
        return Err(UdmError::invalid(
            "the record_history report needs options {\"entity\": \"...\", \"record_id\": \"...\"}",
        ));
    }
    if let Some(e) = &opts.entity {
        crate::ident::validate_slug(crate::ident::SlugKind::Entity, e)?;
    }
    if let Some(r) = &opts.record_id {
        if !crate::values::is_uuid(r) {
            return Err(UdmError::new(
                SqlState::InvalidTextRepresentation,
                format!(
                    "{what}: \"record_id\" must be a uuid, got \"{}\"",
                    crate::ident::printable(r)
                ),
            ));
        }
    }
    Ok(opts)
}

/// How many low bits of an event id a writer's horizon lock key holds (the tenant's tag takes
/// the bits above them).
pub const HORIZON_ID_BITS: u32 = 48;
const HORIZON_ID_MASK: i64 = (1 << HORIZON_ID_BITS) - 1;

/// The key of a writer's horizon lock: the tenant's tag and the low bits of the last event id
/// before the writer's own. (On Citus a node numbers from its own range, `group << 48` and up,
/// so an id may have bits above the low ones.)
pub fn horizon_key(tag: i64, last_id: i64) -> i64 {
    (tag << HORIZON_ID_BITS) | (last_id & HORIZON_ID_MASK)
}

/// The event id whose low bits a held horizon lock key holds, given `last`, an id the log's
/// sequence gave out, read about when the lock was: the id with those low bits nearest to `last`.
/// A writer's id is near it, below or (the sequence moved on since `last` was read) above; never
/// 2^47 away.
pub fn held_id(low: i64, last: i64) -> i64 {
    const HALF: i64 = 1 << (HORIZON_ID_BITS - 1);
    let at = (last & !HORIZON_ID_MASK) | (low & HORIZON_ID_MASK);
    if at > last.saturating_add(HALF) {
        at - (1 << HORIZON_ID_BITS)
    } else if at < last.saturating_sub(HALF) {
        at + (1 << HORIZON_ID_BITS)
    } else {
        at
    }
}

/// The horizon of a log: every event id up to it is settled (committed or rolled back). `last`
/// is the last id given out, `held` the low bits each writer's horizon lock holds.
pub fn horizon(last: i64, held: &[i64]) -> i64 {
    held.iter()
        .map(|&low| held_id(low, last))
        .fold(last, i64::min)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_hash_covers_position_order_and_every_hash() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let h = super::batch_hash(7, 0, &[a, b]);
        assert_eq!(h, super::batch_hash(7, 0, &[a, b]));
        assert_ne!(h, super::batch_hash(7, 0, &[b, a]));
        assert_ne!(h, super::batch_hash(8, 0, &[a, b]));
        assert_ne!(h, super::batch_hash(7, 1, &[a, b]));
        assert_ne!(h, super::batch_hash(7, 0, &[a]));
    }

    #[test]
    fn auditing_counts_from_when_it_was_last_switched_on() {
        assert_eq!(audited_since::<i32>(&[]), AuditedSince::Off);
        assert_eq!(audited_since(&[(true, 1), (true, 2)]), AuditedSince::Always);
        assert_eq!(audited_since(&[(true, 1), (false, 2)]), AuditedSince::Off);
        assert_eq!(
            audited_since(&[(false, 1), (true, 2), (true, 3)]),
            AuditedSince::Since(2)
        );
        assert_eq!(
            audited_since(&[
                (true, 1),
                (false, 2),
                (true, 3),
                (false, 4),
                (true, 5),
                (true, 6)
            ]),
            AuditedSince::Since(5)
        );
        assert!(missing_head_error(4, Some(3))
            .contains("current version 4 has no audit row (the newest is version 3)"));
        assert!(missing_head_error(2, None).contains("has no audit rows"));
    }

    use super::*;
    use crate::definition::Source;
    use serde_json::json;

    fn input<'a>(prev: Option<&'a [u8]>, new: &'a [u8]) -> HashInput<'a> {
        HashInput {
            prev,
            entity: "product",
            record_id: &[7u8; 16],
            action: "UPDATE",
            record_version: Some(2),
            entity_version: Some(1),
            old_data: None,
            new_data: Some(new),
            changed_fields: Some("price"),
            user_id: "u1",
            db_role: "alice",
            txid: 42,
            changed_at: 1_000,
        }
    }

    #[test]
    fn hash_covers_every_part_and_the_previous_hash() {
        let a = chain_hash(&input(None, b"{}"));
        assert_eq!(a, chain_hash(&input(None, b"{}")));
        assert_ne!(a, chain_hash(&input(Some(&[0u8; 32]), b"{}")));
        assert_ne!(a, chain_hash(&input(None, b"{ }")));
        let mut i = input(None, b"{}");
        i.user_id = "u2";
        assert_ne!(a, chain_hash(&i));
        let mut i = input(None, b"{}");
        i.changed_at = 1_001;
        assert_ne!(a, chain_hash(&i));
        // NULL and empty are different
        let mut i = input(None, b"{}");
        i.changed_fields = Some("");
        let mut j = input(None, b"{}");
        j.changed_fields = None;
        assert_ne!(chain_hash(&i), chain_hash(&j));
    }

    /// The layout is part of the stored data (rows written earlier must still verify): pinned
    /// against a field-by-field reference of the format.
    #[test]
    fn hash_layout_is_stable() {
        let i = input(Some(&[9u8; 32]), b"{\"a\": 1}");
        let mut h = Sha256::new();
        h.update(b"udm-audit-v1");
        let field = |h: &mut Sha256, v: Option<&[u8]>| match v {
            None => h.update([0u8]),
            Some(b) => {
                h.update([1u8]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        };
        field(&mut h, Some(&[9u8; 32]));
        field(&mut h, Some(b"product"));
        field(&mut h, Some(&[7u8; 16]));
        field(&mut h, Some(b"UPDATE"));
        field(&mut h, Some(&2i32.to_be_bytes()));
        field(&mut h, Some(&1i32.to_be_bytes()));
        field(&mut h, None);
        field(&mut h, Some(b"{\"a\": 1}"));
        field(&mut h, Some(b"price"));
        field(&mut h, Some(b"u1"));
        field(&mut h, Some(b"alice"));
        field(&mut h, Some(&42i64.to_be_bytes()));
        field(&mut h, Some(&1000i64.to_be_bytes()));
        let reference: [u8; 32] = h.finalize().into();
        assert_eq!(chain_hash(&i), reference);
        let mut scratch = vec![1, 2, 3];
        assert_eq!(
            chain_hash_with(&mut scratch, &i),
            reference,
            "scratch is cleared"
        );
    }

    #[test]
    fn links() {
        let h = [1u8; 32];
        assert_eq!(link_error(None, None, "INSERT"), None);
        assert!(link_error(None, Some(&h), "UPDATE")
            .unwrap()
            .contains("missing"));
        assert_eq!(link_error(Some(("UPDATE", &h)), Some(&h), "UPDATE"), None);
        assert!(link_error(Some(("UPDATE", &h)), Some(&[2u8; 32]), "UPDATE").is_some());
        assert_eq!(link_error(Some(("DELETE", &h)), None, "INSERT"), None);
        assert!(link_error(Some(("UPDATE", &h)), None, "INSERT").is_some());
    }

    #[test]
    fn pointers() {
        assert_eq!(pointer_error(None, 0), None);
        assert_eq!(pointer_error(Some(2048), 2048), None);
        assert!(pointer_error(None, 2048).unwrap().contains("does not have"));
        assert!(pointer_error(Some(2048), 0)
            .unwrap()
            .contains("another change"));
        assert!(pointer_error(Some(2048), 4096).is_some());
    }

    #[test]
    fn summaries_read_like_sentences() {
        assert_eq!(
            field_change("price", &json!(99.99), &json!(129.99)),
            "price changed from 99.99 to 129.99"
        );
        let stored = |text: &str| -> Value { serde_json::from_str(text).unwrap() };
        assert_eq!(
            field_change("price", &stored("10.00"), &stored("12.50")),
            "price changed from 10.00 to 12.50"
        );
        assert_eq!(
            field_change(
                "price",
                &stored("12345678901234567890.000000001"),
                &stored("1e-20")
            ),
            "price changed from 12345678901234567890.000000001 to 1e-20",
            "numbers are not rounded"
        );
        assert_eq!(
            field_change("status", &Value::Null, &json!("draft")),
            "status set to \"draft\""
        );
        assert_eq!(
            field_change("name", &json!("a"), &Value::Null),
            "name cleared (was \"a\")"
        );
        let old = json!({"price": 1, "status": "draft"});
        let new = json!({"price": 2, "status": "active"});
        assert_eq!(
            summarize(
                "UPDATE",
                "product",
                Some(&old),
                Some(&new),
                &["price".into(), "status".into()]
            ),
            "price changed from 1 to 2; status changed from \"draft\" to \"active\""
        );
        assert_eq!(
            summarize("INSERT", "product", None, Some(&new), &[]),
            "created product"
        );
    }

    #[test]
    fn restore_follows_renames_and_skips_removed_fields() {
        let then = EntityDef::parse(
            "product",
            &json!({"fields": [{"name": "title", "type": "text"}, {"name": "price", "type": "decimal"}, {"name": "gone", "type": "text"}]}),
            Source::Caller,
        )
        .unwrap();
        let mut now = then.clone();
        now.fields[0].name = "name".into();
        now.fields[0].column = "name".into();
        let gone = now.fields.remove(2);
        now.removed_fields.push(gone);
        let img = json!({"title": "A", "price": 5, "gone": "x"});
        let img = img.as_object().unwrap();
        let p = restore_plan(&then, &now, img, None, "rollback").unwrap();
        assert_eq!(
            Value::Object(p.values.clone()),
            json!({"name": "A", "price": 5})
        );
        assert_eq!(p.skipped, vec!["gone".to_string()]);
        let only = restore_plan(&then, &now, img, Some(&["name".into()]), "rollback").unwrap();
        assert_eq!(Value::Object(only.values), json!({"name": "A"}));
        let e = restore_plan(&then, &now, img, Some(&["gone".into()]), "rollback").unwrap_err();
        assert!(e.message.contains("was removed"), "{}", e.message);
        let e = restore_plan(&then, &now, img, Some(&["nope".into()]), "rollback").unwrap_err();
        assert_eq!(e.state, SqlState::UndefinedColumn);
    }

    #[test]
    fn restore_skips_a_ciphertext_of_a_field_no_longer_encrypted() {
        let then = EntityDef::parse(
            "patient",
            &json!({"fields": [{"name": "name", "type": "text"}, {"name": "notes", "type": "text", "encrypted": true}]}),
            Source::Caller,
        )
        .unwrap();
        let mut now = then.clone();
        now.fields[1].encrypted = false;
        let img = json!({"name": "A", "notes": "udm1:1::AAAA"});
        let img = img.as_object().unwrap();
        let p = restore_plan(&then, &now, img, None, "rollback").unwrap();
        assert_eq!(Value::Object(p.values.clone()), json!({"name": "A"}));
        assert_eq!(p.skipped, vec!["notes".to_string()]);
        let e = restore_plan(&then, &now, img, Some(&["notes".into()]), "rollback").unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported);
        assert!(
            e.message.contains("was encrypted in that version"),
            "{}",
            e.message
        );
        // still encrypted (or turned on again): the ciphertext is written back, and the trigger
        // checks it belongs to the record and field
        let p = restore_plan(&then, &then, img, None, "rollback").unwrap();
        assert_eq!(p.values["notes"], "udm1:1::AAAA");
        // a plaintext image is written back as it is
        let img = json!({"name": "A", "notes": "plain"});
        let p = restore_plan(&then, &now, img.as_object().unwrap(), None, "rollback").unwrap();
        assert_eq!(p.values["notes"], "plain");
    }

    #[test]
    fn report_options() {
        assert!(parse_report_options(ReportKind::UserActivity, &json!({})).is_err());
        let o = parse_report_options(ReportKind::UserActivity, &json!({"user": "u1", "limit": 5}))
            .unwrap();
        assert_eq!(o.user.as_deref(), Some("u1"));
        assert_eq!(o.limit, 5);
        assert!(parse_report_options(ReportKind::Summary, &json!({"bogus": 1})).is_err());
        assert!(parse_report_options(
            ReportKind::RecordHistory,
            &json!({"entity": "p", "record_id": "x"})
        )
        .is_err());
        assert!(ReportKind::parse("sox").is_err());
    }

    #[test]
    fn links_replay_in_order_and_summaries_show_the_net_change() {
        let c = |id: i64, field: u32, target: &str, added: bool| LinkChange {
            audit_id: id,
            txid: 1,
            field,
            target: target.into(),
            added,
        };
        let changes = [
            c(1, 7, "a", true),
            c(2, 7, "b", true),
            c(3, 8, "x", true),
            c(4, 7, "a", false),
            c(5, 7, "c", true),
        ];
        let after = links_after(&changes);
        assert_eq!(after[&7].iter().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(after[&8].iter().collect::<Vec<_>>(), ["x"]);
        let of7: Vec<&LinkChange> = changes.iter().filter(|c| c.field == 7).collect();
        // a linked and unlinked again: no net change
        assert_eq!(link_summary("tags", &of7).unwrap(), "tags: added b, c");
        let undo = [c(6, 7, "b", false), c(7, 7, "d", true)];
        let refs: Vec<&LinkChange> = undo.iter().collect();
        assert_eq!(
            link_summary("tags", &refs).unwrap(),
            "tags: added d; removed b"
        );
        assert_eq!(link_summary("tags", &[&changes[0], &changes[3]]), None);
    }

    #[test]
    fn horizon_locks_hold_the_low_bits_and_are_read_back_near_the_sequence() {
        // a single node: ids below 2^48, the key is the id under the tag
        assert_eq!(horizon_key(5, 1234), (5 << 48) | 1234);
        assert_eq!(held_id(1234, 1300), 1234);
        assert_eq!(horizon(1300, &[]), 1300);
        assert_eq!(horizon(1300, &[1250, 1234]), 1234);
        // a Citus node numbers from group << 48: the tag is not overwritten, the id comes back
        let base = 2i64 << 48;
        let key = horizon_key(5, base + 77);
        assert_eq!(key >> 48, 5);
        assert_eq!(horizon(base + 90, &[key & ((1 << 48) - 1)]), base + 77);
        // the sequence moved past a 2^48 boundary since the writer took its lock
        let just_below = (3i64 << 48) - 2;
        let low = horizon_key(5, just_below) & ((1 << 48) - 1);
        assert_eq!(held_id(low, (3i64 << 48) + 4), just_below);
        // a writer that took its lock at the last id: the horizon is that id
        assert_eq!(horizon(base + 10, &[10]), base + 10);
        // a writer that took its lock after the sequence was read: above it, and left out
        assert_eq!(held_id(1549, base + 1500), base + 1549);
        assert_eq!(horizon(base + 1500, &[1549]), base + 1500);
        // the sequence was read just past a 2^48 boundary, a writer locked just before it
        assert_eq!(held_id((1 << 48) - 3, (3i64 << 48) + 2), (3i64 << 48) - 3);
    }
}
