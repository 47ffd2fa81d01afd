//! Who may do what: application users, tenant roles with inheritance (RBAC) and relation tuples
//! on records (ReBAC).
//!
//! * A tenant role grants operations (create, read, update, delete) per entity, with `"*"` for
//!   every entity, and may restrict single fields (read, write). `manage` lets a role add members,
//!   define roles and grant relations. The built-in roles are `viewer` ⊂ `editor` ⊂ `admin`; a
//!   role defined by a tenant inherits everything of its parent and adds its own.
//! * A relation tuple gives a user a level (`viewer` < `editor` < `admin`) on one record; an
//!   entity whose definition has an access scope shows its rows only to users with a level on
//!   the scope record (itself, or the record a relation field points to), and levels flow down
//!   those relations.
//!
//! Everything here is pure: the extension reads roles and tuples and asks these functions.

use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{printable, validate_slug, SlugKind};
use crate::json::{expect_bool, expect_object, expect_str, refuse_unknown_keys};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

// ------------------------------------------------------------------ levels and operations

/// A relation on a record; each implies the weaker ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Viewer,
    Editor,
    Admin,
}

pub const LEVELS: [&str; 3] = ["viewer", "editor", "admin"];

impl Level {
    pub fn parse(s: &str) -> Result<Level> {
        match s {
            "viewer" => Ok(Level::Viewer),
            "editor" => Ok(Level::Editor),
            "admin" => Ok(Level::Admin),
            _ => Err(
                UdmError::invalid(format!("relation \"{}\" is not known", printable(s))).hint(
                    format!(
                        "relations are {} (each implies the ones before it)",
                        name_list(LEVELS)
                    ),
                ),
            ),
        }
    }

    pub fn name(self) -> &'static str {
        LEVELS[self as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Read,
    Update,
    Delete,
}

pub const OPS: [&str; 4] = ["create", "read", "update", "delete"];

impl Op {
    pub fn name(self) -> &'static str {
        OPS[self as usize]
    }

    pub fn all() -> [Op; 4] {
        [Op::Create, Op::Read, Op::Update, Op::Delete]
    }

    /// The level on a scope record a write needs: creating and changing records needs
    /// `editor`; deleting the scope record itself needs `admin` (deleting records inside it,
    /// `editor`).
    pub fn needs(self, on_scope_record_itself: bool) -> Level {
        match self {
            Op::Read => Level::Viewer,
            Op::Create | Op::Update => Level::Editor,
            Op::Delete if on_scope_record_itself => Level::Admin,
            Op::Delete => Level::Editor,
        }
    }
}

// ------------------------------------------------------------------ role permissions

/// What a role allows on one entity (or on every entity, `"*"`). `None` says nothing (inherited
/// or the `"*"` entry decides).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityPerms {
    pub ops: [Option<bool>; 4],
    /// field -> (read, write)
    pub fields: BTreeMap<String, (Option<bool>, Option<bool>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Perms {
    pub manage: Option<bool>,
    pub entities: BTreeMap<String, EntityPerms>,
}

pub const ALL_ENTITIES: &str = "*";
pub const BUILTIN_ROLES: [&str; 3] = LEVELS;
pub const MAX_ROLE_DEPTH: usize = 16;

fn all_ops(read_only: bool) -> EntityPerms {
    EntityPerms {
        ops: if read_only {
            [Some(false), Some(true), Some(false), Some(false)]
        } else {
            [Some(true); 4]
        },
        fields: BTreeMap::new(),
    }
}

/// The built-in roles: viewer reads everything, editor also writes, admin also manages.
pub fn builtin(name: &str) -> Option<Perms> {
    let one = |p: EntityPerms, manage: bool| Perms {
        manage: Some(manage),
        entities: BTreeMap::from([(ALL_ENTITIES.to_string(), p)]),
    };
    match name {
        "viewer" => Some(one(all_ops(true), false)),
        "editor" => Some(one(all_ops(false), false)),
        "admin" => Some(one(all_ops(false), true)),
        _ => None,
    }
}

/// The parent a built-in role inherits from.
pub fn builtin_parent(name: &str) -> Option<&'static str> {
    match name {
        "editor" => Some("viewer"),
        "admin" => Some("editor"),
        _ => None,
    }
}

/// Parses a role's permissions: `{"manage": bool, "entities": {"<entity>|*": {"create": bool,
/// "read": bool, "update": bool, "delete": bool, "fields": {"<field>": {"read": bool, "write":
/// bool}}}}}`.
pub fn parse_permissions(v: &Value) -> Result<Perms> {
    let what = "permissions";
    if v.is_null() {
        return Ok(Perms::default());
    }
    let obj = expect_object(v, what)?;
    refuse_unknown_keys(obj, &["manage", "entities"], what)?;
    let mut p = Perms {
        manage: match obj.get("manage") {
            None | Some(Value::Null) => None,
            Some(m) => Some(expect_bool(m, "permissions: \"manage\"")?),
        },
        entities: BTreeMap::new(),
    };
    if let Some(ents) = obj.get("entities") {
        for (entity, ev) in expect_object(ents, "permissions: \"entities\"")? {
            if entity != ALL_ENTITIES {
                validate_slug(SlugKind::Entity, entity)?;
            }
            let ew = format!("permissions of entity \"{entity}\"");
            let eo = expect_object(ev, &ew)?;
            let mut allowed: Vec<&str> = OPS.to_vec();
            allowed.push("fields");
            refuse_unknown_keys(eo, &allowed, &ew)?;
            let mut ep = EntityPerms::default();
            for (i, op) in OPS.iter().enumerate() {
                if let Some(b) = eo.get(*op) {
                    ep.ops[i] = Some(expect_bool(b, &format!("{ew}: \"{op}\""))?);
                }
            }
            if let Some(fs) = eo.get("fields") {
                if entity == ALL_ENTITIES {
                    return Err(UdmError::invalid(
                        "field permissions belong to a named entity, not to \"*\"",
                    )
                    .hint("write {\"entities\": {\"product\": {\"fields\": {\"cost\": {\"read\": false}}}}}"));
                }
                for (field, fv) in expect_object(fs, &format!("{ew}: \"fields\""))? {
                    validate_slug(SlugKind::Field, field)?;
                    let fw = format!("{ew}: field \"{field}\"");
                    let fo = expect_object(fv, &fw)?;
                    refuse_unknown_keys(fo, &["read", "write"], &fw)?;
                    let get = |k: &str| -> Result<Option<bool>> {
                        fo.get(k)
                            .map(|b| expect_bool(b, &format!("{fw}: \"{k}\"")))
                            .transpose()
                    };
                    ep.fields
                        .insert(field.clone(), (get("read")?, get("write")?));
                }
            }
            p.entities.insert(entity.clone(), ep);
        }
    }
    Ok(p)
}

pub fn permissions_to_json(p: &Perms) -> Value {
    let mut ents = Map::new();
    for (e, ep) in &p.entities {
        let mut m = Map::new();
        for (i, op) in OPS.iter().enumerate() {
            if let Some(b) = ep.ops[i] {
                m.insert(op.to_string(), json!(b));
            }
        }
        if !ep.fields.is_empty() {
            let mut fm = Map::new();
            for (f, (r, w)) in &ep.fields {
                let mut x = Map::new();
                if let Some(r) = r {
                    x.insert("read".into(), json!(r));
                }
                if let Some(w) = w {
                    x.insert("write".into(), json!(w));
                }
                fm.insert(f.clone(), Value::Object(x));
            }
            m.insert("fields".into(), Value::Object(fm));
        }
        ents.insert(e.clone(), Value::Object(m));
    }
    let mut out = Map::new();
    if let Some(m) = p.manage {
        out.insert("manage".into(), json!(m));
    }
    out.insert("entities".into(), Value::Object(ents));
    Value::Object(out)
}

/// `child` on top of `parent`: whatever the child says wins, the rest is inherited.
pub fn inherit(parent: &Perms, child: &Perms) -> Perms {
    let mut out = parent.clone();
    if child.manage.is_some() {
        out.manage = child.manage;
    }
    for (e, cp) in &child.entities {
        let op = out.entities.entry(e.clone()).or_default();
        for i in 0..4 {
            if cp.ops[i].is_some() {
                op.ops[i] = cp.ops[i];
            }
        }
        for (f, (r, w)) in &cp.fields {
            let slot = op.fields.entry(f.clone()).or_default();
            if r.is_some() {
                slot.0 = *r;
            }
            if w.is_some() {
                slot.1 = *w;
            }
        }
    }
    out
}

/// A role as the tenant defined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDef {
    pub name: String,
    pub parent: Option<String>,
    pub permissions: Perms,
}

/// The effective permissions of `role`: its own on top of its ancestors'. `lookup` finds a
/// tenant-defined role; built-in roles need none.
pub fn effective(role: &str, lookup: &dyn Fn(&str) -> Option<RoleDef>) -> Result<Perms> {
    let mut chain: Vec<Perms> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut name = Some(role.to_string());
    while let Some(n) = name {
        if !seen.insert(n.clone()) || seen.len() > MAX_ROLE_DEPTH {
            return Err(UdmError::new(
                SqlState::InvalidParameterValue,
                format!("role \"{role}\" inherits from itself (through \"{n}\")"),
            )
            .hint("a role's parent must not lead back to it"));
        }
        if let Some(b) = builtin(&n) {
            // a built-in role's permissions already include its parents'
            chain.push(b);
            name = None;
            continue;
        }
        let def = lookup(&n).ok_or_else(|| no_such_role(&n))?;
        chain.push(def.permissions);
        name = def.parent;
    }
    let mut out = Perms::default();
    for p in chain.iter().rev() {
        out = inherit(&out, p);
    }
    Ok(out)
}

pub fn no_such_role(name: &str) -> UdmError {
    UdmError::new(
        SqlState::UndefinedObject,
        format!("role \"{}\" does not exist", printable(name)),
    )
    .hint(format!(
        "the built-in roles are {}; define others with udm_define_role",
        name_list(BUILTIN_ROLES)
    ))
}

impl Perms {
    fn op_of(&self, entity: &str, op: Op) -> bool {
        let i = op as usize;
        self.entities
            .get(entity)
            .and_then(|e| e.ops[i])
            .or_else(|| self.entities.get(ALL_ENTITIES).and_then(|e| e.ops[i]))
            .unwrap_or(false)
    }

    pub fn allows(&self, entity: &str, op: Op) -> bool {
        self.op_of(entity, op)
    }

    pub fn manages(&self) -> bool {
        self.manage.unwrap_or(false)
    }

    fn field_flag(&self, entity: &str, field: &str, write: bool) -> Option<bool> {
        self.entities
            .get(entity)
            .and_then(|e| e.fields.get(field))
            .and_then(|(r, w)| if write { *w } else { *r })
    }

    /// Whether the role keeps a field from being read (`read: false`) or written (`write:
    /// false`), whatever decides the operation itself.
    pub fn field_denied(&self, entity: &str, field: &str, write: bool) -> bool {
        self.field_flag(entity, field, write) == Some(false)
    }

    /// A field is readable when the entity is and the role does not keep the field from it.
    pub fn field_readable(&self, entity: &str, field: &str) -> bool {
        self.allows(entity, Op::Read) && self.field_flag(entity, field, false) != Some(false)
    }

    /// A field is writable with `op` (create or update) when the operation is allowed and the
    /// role does not keep the field from it.
    pub fn field_writable(&self, entity: &str, field: &str, op: Op) -> bool {
        self.allows(entity, op) && self.field_flag(entity, field, true) != Some(false)
    }

    /// The first thing `self` allows that `other` does not, in words (`None`: `self` ⊆ `other`).
    /// `entities` are the tenant's entities with their fields.
    pub fn exceeds(&self, other: &Perms, entities: &[(String, Vec<String>)]) -> Option<String> {
        if self.manages() && !other.manages() {
            return Some("manage".into());
        }
        let mut names: BTreeSet<&str> = entities.iter().map(|(e, _)| e.as_str()).collect();
        names.extend(self.entities.keys().map(String::as_str));
        names.extend(other.entities.keys().map(String::as_str));
        for e in names {
            for op in Op::all() {
                if self.allows(e, op) && !other.allows(e, op) {
                    return Some(format!("{e}.{}", op.name()));
                }
            }
            let mut fields: BTreeSet<&str> = BTreeSet::new();
            if let Some((_, fs)) = entities.iter().find(|(n, _)| n == e) {
                fields.extend(fs.iter().map(String::as_str));
            }
            for p in [self, other] {
                if let Some(ep) = p.entities.get(e) {
                    fields.extend(ep.fields.keys().map(String::as_str));
                }
            }
            for f in fields {
                if self.field_readable(e, f) && !other.field_readable(e, f) {
                    return Some(format!("{e}.{f}.read"));
                }
                for op in [Op::Create, Op::Update] {
                    if self.field_writable(e, f, op) && !other.field_writable(e, f, op) {
                        return Some(format!("{e}.{f}.write"));
                    }
                }
            }
        }
        None
    }
}

/// Validates a role name for `udm_define_role`: a slug, and not one of the built-in roles.
pub fn validate_role_name(name: &str) -> Result<()> {
    validate_slug(SlugKind::Role, name)?;
    if BUILTIN_ROLES.contains(&name) {
        return Err(UdmError::new(
            SqlState::DuplicateObject,
            format!("role \"{name}\" is built in and cannot be redefined"),
        )
        .hint("define a new role with it as parent"));
    }
    Ok(())
}

// ------------------------------------------------------------------ users

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 72; // bcrypt reads at most 72 bytes

/// A valid email, lower-cased: one `@`, a local part and a domain with a dot, no spaces or
/// control characters, at most 255 characters.
pub fn normalize_email(email: &str) -> Result<String> {
    let bad = |why: &str| {
        UdmError::invalid(format!(
            "\"{}\" is not a valid email address: {why}",
            printable(email)
        ))
        .hint("an email address looks like name@example.com")
    };
    let e = email.trim();
    if e.is_empty() {
        return Err(bad("it is empty"));
    }
    if e.chars().count() > 255 {
        return Err(bad("it is longer than 255 characters"));
    }
    if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains a space or a control character"));
    }
    let mut parts = e.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("it needs exactly one @"));
    };
    if local.is_empty() {
        return Err(bad("nothing comes before the @"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return Err(bad("the part after the @ is not a domain name"));
    }
    Ok(e.to_lowercase())
}

pub fn validate_password(pw: &str) -> Result<()> {
    let n = pw.chars().count();
    if n < MIN_PASSWORD {
        return Err(UdmError::invalid(format!(
            "the password is {n} characters long; it must have at least {MIN_PASSWORD}"
        ))
        .hint("choose a longer password"));
    }
    if pw.len() > MAX_PASSWORD {
        return Err(UdmError::invalid(format!(
            "the password is longer than {MAX_PASSWORD} bytes (bcrypt would ignore the rest)"
        )));
    }
    Ok(())
}

pub fn validate_user_name(name: &str) -> Result<()> {
    let n = name.trim().chars().count();
    if !(2..=255).contains(&n) || name.chars().any(char::is_control) {
        return Err(UdmError::invalid(format!(
            "user name \"{}\" must have 2 to 255 printable characters",
            printable(name)
        )));
    }
    Ok(())
}

// ------------------------------------------------------------------ record scopes (ReBAC)

/// An entity's access scope: its rows are seen by users with a level on the scope record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDef {
    /// `None`: the record itself; `Some(field)`: the record a many-to-one relation points to.
    pub parent: Option<String>,
    /// A user field whose user is implicitly admin of the record (`owner_id`).
    pub owner: Option<String>,
}

/// Parses the `access` option: `{"scope": "self" | "<relation field>", "owner": "<user
/// field>"}`. `null`: rows are seen by every role that may read the entity.
pub fn parse_access(v: &Value, entity: &str) -> Result<Option<AccessDef>> {
    let what = format!("entity \"{entity}\": \"access\"");
    if v.is_null() {
        return Ok(None);
    }
    let obj = expect_object(v, &what)?;
    refuse_unknown_keys(obj, &["scope", "owner"], &what)?;
    let scope = match obj.get("scope") {
        Some(s) => expect_str(s, &format!("{what}: \"scope\""))?,
        None => {
            return Err(UdmError::invalid(format!("{what} has no \"scope\"")).hint(
                "write {\"scope\": \"self\"} or {\"scope\": \"<many-to-one relation field>\"}",
            ))
        }
    };
    let owner = match obj.get("owner") {
        None | Some(Value::Null) => None,
        Some(o) => Some(expect_str(o, &format!("{what}: \"owner\""))?.to_string()),
    };
    Ok(Some(AccessDef {
        parent: (scope != "self").then(|| scope.to_string()),
        owner,
    }))
}

pub fn access_to_json(a: &AccessDef) -> Value {
    let mut m = Map::new();
    m.insert("scope".into(), json!(a.parent.as_deref().unwrap_or("self")));
    if let Some(o) = &a.owner {
        m.insert("owner".into(), json!(o));
    }
    Value::Object(m)
}

/// Reads an object reference `entity:uuid`.
pub fn parse_object(s: &str) -> Result<(String, String)> {
    let bad = || {
        UdmError::invalid(format!(
            "object \"{}\" is not of the form entity:id",
            printable(s)
        ))
        .hint("write e.g. 'roadmap:0b9a6f1e-...'")
    };
    let (e, id) = s.split_once(':').ok_or_else(bad)?;
    validate_slug(SlugKind::Entity, e)?;
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((e.to_string(), id.to_lowercase()))
}

// ------------------------------------------------------------------ reading the audit log

/// What an audit row is about, read from its `entity` column: a change of a record (`product`),
/// a link change of a many-to-many field (`product.tags`), an event on a record (`roadmap#lock`,
/// `product#access`), or an event of the tenant itself (`tenant#member`).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum AuditSubject<'a> {
    Record(&'a str),
    Link { entity: &'a str, field: &'a str },
    RecordEvent(&'a str),
    Tenant,
}

/// The audit subject of a tenant's member changes.
pub const MEMBER_EVENTS: &str = "tenant#member";

/// The audit subject of the write-lock events of records of `entity` (keyed by the record).
pub fn lock_events(entity: &str) -> String {
    format!("{entity}#lock")
}

/// The audit subject of the relation grants on records of `entity` (keyed by the record).
pub fn access_events(entity: &str) -> String {
    format!("{entity}#access")
}

impl<'a> AuditSubject<'a> {
    /// Reads the subjects `lock_events`, `access_events` and `MEMBER_EVENTS` write; any other
    /// `#` subject is treated as a tenant event (for managers).
    pub fn parse(subject: &'a str) -> AuditSubject<'a> {
        if let Some((entity, kind)) = subject.split_once('#') {
            return match kind {
                "lock" | "access" => AuditSubject::RecordEvent(entity),
                _ => AuditSubject::Tenant,
            };
        }
        match subject.split_once('.') {
            Some((entity, field)) => AuditSubject::Link { entity, field },
            None => AuditSubject::Record(subject),
        }
    }

    /// The entity whose record the row is about (none for tenant events).
    pub fn entity(&self) -> Option<&'a str> {
        match *self {
            AuditSubject::Record(e) | AuditSubject::RecordEvent(e) => Some(e),
            AuditSubject::Link { entity, .. } => Some(entity),
            AuditSubject::Tenant => None,
        }
    }
}

/// Whether a role that does not manage the tenant may read audit rows about `subject`, short of
/// seeing the record itself (the caller checks that for scoped entities). `fields` are the
/// entity's fields: an image holds all of them, so a role kept from reading any one of them reads
/// none of the entity's audit rows (its records, through the entity table, without that field).
/// Tenant events (members) are for managers only.
pub fn audit_readable(perms: &Perms, subject: AuditSubject<'_>, fields: &[&str]) -> bool {
    let Some(entity) = subject.entity() else {
        return false;
    };
    if !perms.allows(entity, Op::Read)
        || fields.iter().any(|f| perms.field_denied(entity, f, false))
    {
        return false;
    }
    match subject {
        AuditSubject::Link { field, .. } => perms.field_readable(entity, field),
        _ => true,
    }
}

// ------------------------------------------------------------------ messages

/// 42501 for an operation a user's role does not allow.
pub fn denied(user: &str, role: Option<&str>, entity: &str, what: &str) -> UdmError {
    let who = match role {
        Some(r) => format!("user \"{user}\" (role \"{r}\")"),
        None => format!("user \"{user}\" (not a member)"),
    };
    UdmError::new(
        SqlState::InsufficientPrivilege,
        format!("permission denied: {who} may not {what} (permission {entity} missing)"),
    )
    .hint(
        "a tenant admin can give the user a role that allows it (udm_add_member, udm_define_role)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> impl Fn(&str) -> Option<RoleDef> {
        |n: &str| {
            match n {
            "pricer" => Some(RoleDef {
                name: "pricer".into(),
                parent: Some("viewer".into()),
                permissions: parse_permissions(&json!({"entities": {"product": {"update": true, "fields": {"cost": {"read": false}}}}})).unwrap(),
            }),
            "junior" => Some(RoleDef {
                name: "junior".into(),
                parent: Some("pricer".into()),
                permissions: parse_permissions(&json!({"entities": {"product": {"fields": {"name": {"write": false}}}}})).unwrap(),
            }),
            "loop_a" => Some(RoleDef { name: "loop_a".into(), parent: Some("loop_b".into()), permissions: Perms::default() }),
            "loop_b" => Some(RoleDef { name: "loop_b".into(), parent: Some("loop_a".into()), permissions: Perms::default() }),
            _ => None,
        }
        }
    }

    #[test]
    fn audit_subjects_are_read_from_the_entity_column() {
        assert_eq!(
            AuditSubject::parse("product"),
            AuditSubject::Record("product")
        );
        assert_eq!(
            AuditSubject::parse("product.tags"),
            AuditSubject::Link {
                entity: "product",
                field: "tags"
            }
        );
        assert_eq!(
            AuditSubject::parse("roadmap#lock"),
            AuditSubject::RecordEvent("roadmap")
        );
        assert_eq!(
            AuditSubject::parse("product#access"),
            AuditSubject::RecordEvent("product")
        );
        assert_eq!(AuditSubject::parse("tenant#member"), AuditSubject::Tenant);
        assert_eq!(AuditSubject::parse("tenant#member").entity(), None);
        // what the writers name is what the reader reads
        assert_eq!(
            AuditSubject::parse(&lock_events("roadmap")),
            AuditSubject::RecordEvent("roadmap")
        );
        assert_eq!(
            AuditSubject::parse(&access_events("product")),
            AuditSubject::RecordEvent("product")
        );
        assert_eq!(AuditSubject::parse(MEMBER_EVENTS), AuditSubject::Tenant);
    }

    #[test]
    fn audit_rows_are_readable_where_every_field_of_the_record_is() {
        let l = roles();
        let viewer = effective("viewer", &l).unwrap();
        let pricer = effective("pricer", &l).unwrap();
        let nothing = Perms::default();
        let fields = ["name", "cost"];
        let rec = AuditSubject::parse("product");
        assert!(audit_readable(&viewer, rec, &fields));
        assert!(audit_readable(
            &viewer,
            AuditSubject::parse("product#lock"),
            &fields
        ));
        // pricer may not read cost: no image of a product is his to read
        assert!(!audit_readable(&pricer, rec, &fields));
        assert!(!audit_readable(
            &pricer,
            AuditSubject::parse("product.tags"),
            &fields
        ));
        // but other entities' rows are
        assert!(audit_readable(
            &pricer,
            AuditSubject::parse("supplier"),
            &["name"]
        ));
        assert!(!audit_readable(&nothing, rec, &fields));
        assert!(!audit_readable(
            &viewer,
            AuditSubject::parse("tenant#member"),
            &[]
        ));
        let no_tags = parse_permissions(
            &json!({"entities": {"*": {"read": true}, "product": {"read": true, "fields": {"tags": {"read": false}}}}}),
        )
        .unwrap();
        assert!(audit_readable(
            &no_tags,
            AuditSubject::parse("supplier.tags"),
            &["name"]
        ));
        assert!(!audit_readable(
            &no_tags,
            AuditSubject::parse("product.tags"),
            &["name"]
        ));
    }

    #[test]
    fn builtin_roles_nest() {
        let l = roles();
        let v = effective("viewer", &l).unwrap();
        let e = effective("editor", &l).unwrap();
        let a = effective("admin", &l).unwrap();
        assert!(v.allows("product", Op::Read) && !v.allows("product", Op::Update));
        assert!(e.allows("product", Op::Delete) && !e.manages());
        assert!(a.manages());
        assert_eq!(v.exceeds(&e, &[]), None);
        assert_eq!(e.exceeds(&a, &[]), None);
        assert_eq!(e.exceeds(&v, &[]), Some("*.create".into()));
        assert_eq!(a.exceeds(&e, &[]), Some("manage".into()));
    }

    #[test]
    fn roles_inherit_and_restrict_fields() {
        let l = roles();
        let p = effective("pricer", &l).unwrap();
        assert!(p.allows("product", Op::Update) && !p.allows("category", Op::Update));
        assert!(p.allows("category", Op::Read));
        assert!(!p.field_readable("product", "cost"));
        assert!(p.field_readable("product", "name"));
        let j = effective("junior", &l).unwrap();
        assert!(
            !j.field_readable("product", "cost"),
            "inherited restriction"
        );
        assert!(!j.field_writable("product", "name", Op::Update));
        assert!(j.field_writable("product", "price", Op::Update));
        let ents = vec![(
            "product".to_string(),
            vec!["name".to_string(), "cost".to_string()],
        )];
        assert_eq!(j.exceeds(&p, &ents), None);
        assert_eq!(p.exceeds(&j, &ents), Some("product.name.write".into()));
        let v = effective("viewer", &l).unwrap();
        assert_eq!(p.exceeds(&v, &ents), Some("product.update".into()));
        assert_eq!(v.exceeds(&p, &ents), Some("product.cost.read".into()));
    }

    #[test]
    fn cycles_and_unknown_roles_are_errors() {
        let l = roles();
        let e = effective("loop_a", &l).unwrap_err();
        assert!(e.message.contains("inherits from itself"), "{}", e.message);
        let e = effective("nobody", &l).unwrap_err();
        assert_eq!(e.state, SqlState::UndefinedObject);
        assert!(validate_role_name("admin").is_err());
        assert!(validate_role_name("Bad").is_err());
        validate_role_name("pricer").unwrap();
    }

    #[test]
    fn permissions_parse_strictly_and_round_trip() {
        let v = json!({"manage": false, "entities": {"*": {"read": true}, "product": {"update": true, "fields": {"cost": {"read": false, "write": false}}}}});
        let p = parse_permissions(&v).unwrap();
        assert_eq!(parse_permissions(&permissions_to_json(&p)).unwrap(), p);
        for bad in [
            json!({"entities": {"product": {"write": true}}}),
            json!({"entities": {"*": {"fields": {"a": {"read": false}}}}}),
            json!({"entities": {"product": {"read": "yes"}}}),
            json!({"admin": true}),
            json!({"entities": {"Bad Name": {}}}),
        ] {
            assert!(parse_permissions(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn levels_order_and_writes_need_levels() {
        assert!(Level::Admin > Level::Editor && Level::Editor > Level::Viewer);
        assert_eq!(Level::parse("editor").unwrap(), Level::Editor);
        assert!(Level::parse("owner").is_err());
        assert_eq!(Op::Delete.needs(true), Level::Admin);
        assert_eq!(Op::Delete.needs(false), Level::Editor);
        assert_eq!(Op::Update.needs(true), Level::Editor);
        assert_eq!(Op::Read.needs(false), Level::Viewer);
    }

    #[test]
    fn emails_and_passwords() {
        assert_eq!(
            normalize_email(" Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "", "alice", "a@b", "a@@b.c", "@b.c", "a b@c.d", "a@-b.c", "a@b..c",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert!(validate_password("short").is_err());
        validate_password("long enough").unwrap();
        assert!(validate_password(&"x".repeat(73)).is_err());
        assert!(validate_user_name("A").is_err());
        validate_user_name("Al").unwrap();
    }

    #[test]
    fn objects_and_access_options() {
        let (e, id) = parse_object("roadmap:0B9A6F1E-0000-4000-8000-000000000001").unwrap();
        assert_eq!(
            (e.as_str(), id.as_str()),
            ("roadmap", "0b9a6f1e-0000-4000-8000-000000000001")
        );
        assert!(parse_object("roadmap").is_err());
        assert!(parse_object("roadmap:xyz").is_err());
        let a = parse_access(&json!({"scope": "self", "owner": "owner_id"}), "roadmap")
            .unwrap()
            .unwrap();
        assert_eq!(a.parent, None);
        assert_eq!(a.owner.as_deref(), Some("owner_id"));
        assert_eq!(
            parse_access(&access_to_json(&a), "roadmap").unwrap(),
            Some(a)
        );
        assert!(parse_access(&json!({"owner": "x"}), "roadmap").is_err());
        assert!(parse_access(&json!({"scope": "self", "x": 1}), "roadmap").is_err());
        let d = denied(
            "alice",
            Some("viewer"),
            "product.update",
            "update product p1",
        );
        assert_eq!(d.state, SqlState::InsufficientPrivilege);
        assert!(
            d.message.contains("permission product.update missing"),
            "{}",
            d.message
        );
    }
}
