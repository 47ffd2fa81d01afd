//! Moving tenants: the manifest of a tenant archive and the sections that follow it.
//!
//! An export is a manifest (this module's `Manifest`, as JSON) and, for each of the tenant's
//! tables, its rows as one `COPY` text stream, in a fixed order (`Section`s). The manifest holds
//! what the importing database needs before any row arrives: the archive's format version, the
//! tenant, the current definition of every entity that has tables (the tables are planned from
//! them, by the same DDL planner that makes them for a definition), which sections follow with
//! their columns and row counts, and where sequences stood. The entity catalog (every version of
//! every definition) is itself a section: the manifest stays as small as the tenant's schema,
//! whatever the tenant holds.
//!
//! Everything here is pure: the extension (`src/transfer.rs`) produces and checks manifests with
//! it, and runs what it plans.

use crate::definition::{EntityDef, FieldDef};
use crate::error::{Result, SqlState, UdmError};
use crate::ident::{printable, validate_slug, SlugKind};
use crate::json::refuse_unknown_keys;
use crate::types::FieldType;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What the manifest's `format` says.
pub const FORMAT: &str = "udm-tenant";
/// The newest archive format this udm writes and reads. A change of what an archive holds, or of
/// how, is a new version; older versions stay readable.
pub const FORMAT_VERSION: u32 = 3;
/// The first format version that can hold a batched audit log (`AUDIT_LOG`); an archive of a
/// tenant with a per-change log is still written as version 1.
pub const BATCHED_FORMAT_VERSION: u32 = 2;
/// The first format version that can hold a tenant's field encryption keys (`KEYS`, wrapped by
/// the source database's master key); a tenant without them is still written as before.
pub const KEYS_FORMAT_VERSION: u32 = 3;

pub const CATALOG: &str = "_udm_entity";
pub const AUDIT: &str = "_udm_audit";
/// A batched audit log (issue 20): one row per chunk of a statement's changes, the newest
/// pointers of the chains rows cannot carry, and each entity row's pointer column. A tenant
/// whose archive has these sections instead of `AUDIT` keeps its log in batches.
pub const AUDIT_LOG: &str = "_udm_audit_log";
pub const AUDIT_HEADS: &str = "_udm_audit_heads";
pub const AUDIT_POINTER: &str = "_audit_ptr";
pub const USERS: &str = crate::ddl::USER_TABLE;
/// The section of the global users (`udm.app_user`) the tenant knows.
pub const GLOBAL_USERS: &str = "udm.app_user";
pub const ROLES: &str = "_udm_role";
pub const MEMBERS: &str = "_udm_member";
pub const TUPLES: &str = crate::ddl::TUPLE_TABLE;
pub const LOCKS: &str = "_udm_lock";
pub const SUBSCRIPTIONS: &str = "_udm_subscription";
pub const CONSUMERS: &str = "_udm_consumer";
/// The tenant's field encryption keys, wrapped by the master key (`crypto::KEYS_TABLE`).
pub const KEYS: &str = "_udm_keys";

/// How many entities (and sections, and sequences) a manifest may name: far above what a tenant
/// has, low enough that a hostile manifest cannot make the import plan without end.
pub const MAX_ENTITIES: usize = 10_000;
const MAX_SECTIONS: usize = 4 * MAX_ENTITIES;

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The entity catalog: every version of every definition.
    Catalog,
    /// One of udm's tables of the tenant (users it knows, members, roles, tuples, locks,
    /// subscriptions, consumers): made when the tenant first needed it, so optional.
    Internal,
    /// The global users the tenant knows, with their password hashes.
    GlobalUsers,
    /// An entity's table.
    Records,
    /// The junction table of a many-to-many field (active or removed).
    Links,
    /// The audit log (and event outbox).
    Audit,
}

/// udm's tables a tenant may have, in archive order: before the entity tables (members and
/// tuples reference the users table; every section's rows may name users), then after them.
pub const BEFORE_RECORDS: [&str; 5] = [USERS, GLOBAL_USERS, ROLES, MEMBERS, TUPLES];
pub const AFTER_RECORDS: [&str; 4] = [LOCKS, SUBSCRIPTIONS, CONSUMERS, KEYS];

/// The columns of the global users section (the staging table the import loads them into).
pub const GLOBAL_USER_COLUMNS: [(&str, &str); 7] = [
    ("id", "uuid"),
    ("email", "text"),
    ("name", "text"),
    ("password_hash", "text"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
    ("created_by", "text"),
];

/// One section: a table's rows as a COPY text stream of `columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The table's name in the tenant's schema (`udm.app_user` for the global users).
    pub name: String,
    pub kind: Kind,
    /// The entity a records or links section belongs to.
    pub entity: Option<String>,
    /// (column, PostgreSQL type), in COPY order.
    pub columns: Vec<(String, String)>,
    /// How many rows the stream holds.
    pub rows: u64,
}

impl Section {
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|(c, _)| c.as_str()).collect()
    }
}

/// The tenant as its registry had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    pub slug: String,
    pub name: Option<String>,
    /// Whether access control was on (the tenant had members).
    pub access: bool,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
}

/// An entity that has tables: its newest catalog version.
#[derive(Debug, Clone)]
pub struct EntityState {
    pub slug: String,
    pub version: i32,
    pub dropped: bool,
    /// The definition as the catalog stores it (compared with the catalog section's newest row).
    pub definition: Value,
    pub def: EntityDef,
}

/// Where a sequence stood: the last value given out for `table.column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceValue {
    pub table: String,
    pub column: String,
    pub value: i64,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub format_version: u32,
    pub udm_version: String,
    pub exported_at: Option<String>,
    pub source: Value,
    pub tenant: TenantInfo,
    pub entities: Vec<EntityState>,
    pub sections: Vec<Section>,
    pub sequences: Vec<SequenceValue>,
}

fn corrupt(message: impl Into<String>) -> UdmError {
    UdmError::new(SqlState::BadCopyFileFormat, message).hint(
        "the archive is damaged or was not written by udm-tenant export: export the tenant again",
    )
}

fn section_json(s: &Section) -> Value {
    json!({
        "name": s.name,
        "columns": s.columns.iter().map(|(c, t)| json!([c, t])).collect::<Vec<_>>(),
        "rows": s.rows,
    })
}

impl Manifest {
    /// Whether the archive's tenant keeps its audit log in batches.
    pub fn batched(&self) -> bool {
        self.sections.iter().any(|s| s.name == AUDIT_LOG)
    }

    /// Whether the archive carries the tenant's (wrapped) field encryption keys.
    pub fn has_keys(&self) -> bool {
        self.sections.iter().any(|s| s.name == KEYS)
    }

    /// The format version an archive of these sections is written in.
    pub fn version_needed(&self) -> u32 {
        if self.has_keys() {
            KEYS_FORMAT_VERSION
        } else if self.batched() {
            BATCHED_FORMAT_VERSION
        } else {
            1
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": FORMAT,
            "format_version": self.format_version,
            "udm_version": self.udm_version,
            "exported_at": self.exported_at,
            "source": self.source,
            "tenant": {
                "slug": self.tenant.slug,
                "name": self.tenant.name,
                "access": self.tenant.access,
                "created_at": self.tenant.created_at,
                "created_by": self.tenant.created_by,
            },
            "entities": self.entities.iter().map(|e| json!({
                "entity": e.slug,
                "version": e.version,
                "status": if e.dropped { "dropped" } else { "active" },
                "definition": e.definition,
            })).collect::<Vec<_>>(),
            "sections": self.sections.iter().map(section_json).collect::<Vec<_>>(),
            "sequences": self.sequences.iter().map(|s| json!({
                "table": s.table, "column": s.column, "value": s.value,
            })).collect::<Vec<_>>(),
        })
    }
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| corrupt(format!("tenant archive: {what} is not a JSON object")))
}

fn arr<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a Vec<Value>> {
    v.and_then(Value::as_array)
        .ok_or_else(|| corrupt(format!("tenant archive: {what} is not a JSON array")))
}

fn string<'a>(v: Option<&'a Value>, what: &str) -> Result<&'a str> {
    v.and_then(Value::as_str)
        .ok_or_else(|| corrupt(format!("tenant archive: {what} is not a string")))
}

fn opt_string(v: Option<&Value>, what: &str) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(corrupt(format!("tenant archive: {what} is not a string"))),
    }
}

fn integer(v: Option<&Value>, what: &str, min: i64) -> Result<i64> {
    v.and_then(Value::as_i64)
        .filter(|n| *n >= min)
        .ok_or_else(|| {
            corrupt(format!(
                "tenant archive: {what} is not a whole number of at least {min}"
            ))
        })
}

fn strict(o: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    refuse_unknown_keys(o, allowed, what)
        .map_err(|e| corrupt(format!("tenant archive: {}", e.message)))
}

/// Reads and checks a manifest: its format and version, the tenant, every entity's definition
/// (each must parse as udm's catalog stores it, and relations must point to entities the archive
/// has), and that its sections are the ones those entities and udm's tables need, in order.
pub fn parse_manifest(v: &Value) -> Result<Manifest> {
    let o = v.as_object().ok_or_else(|| {
        corrupt("this is not a udm tenant archive: its manifest is not a JSON object")
    })?;
    if o.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(corrupt(format!(
            "this is not a udm tenant archive: its manifest's format is {}, not \"{FORMAT}\"",
            o.get("format")
                .map_or("missing".to_string(), crate::definition::short_json)
        )));
    }
    let version = integer(o.get("format_version"), "format_version", 1)?;
    let udm_version = string(o.get("udm_version"), "udm_version")?.to_string();
    if version > FORMAT_VERSION as i64 {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "the archive has format version {version} (written by udm {}); this udm ({}) reads format versions up to {FORMAT_VERSION}",
                printable(&udm_version),
                env!("CARGO_PKG_VERSION")
            ),
        )
        .hint(format!(
            "import it into a database with udm {} or later (ALTER EXTENSION udm UPDATE)",
            printable(&udm_version)
        )));
    }
    strict(
        o,
        &[
            "format",
            "format_version",
            "udm_version",
            "exported_at",
            "source",
            "tenant",
            "entities",
            "sections",
            "sequences",
        ],
        "the manifest",
    )?;
    let t = obj(o.get("tenant").unwrap_or(&Value::Null), "tenant")?;
    strict(
        t,
        &["slug", "name", "access", "created_at", "created_by"],
        "the manifest's tenant",
    )?;
    let slug = string(t.get("slug"), "tenant.slug")?.to_string();
    validate_slug(SlugKind::Tenant, &slug).map_err(|e| {
        corrupt(format!(
            "tenant archive: the tenant's slug is not valid: {}",
            e.message
        ))
    })?;
    let tenant = TenantInfo {
        slug: slug.clone(),
        name: opt_string(t.get("name"), "tenant.name")?,
        access: t
            .get("access")
            .and_then(Value::as_bool)
            .ok_or_else(|| corrupt("tenant archive: tenant.access is not true or false"))?,
        created_at: opt_string(t.get("created_at"), "tenant.created_at")?,
        created_by: opt_string(t.get("created_by"), "tenant.created_by")?,
    };
    let ctx = format!("archive of tenant \"{slug}\"");
    let list = arr(o.get("entities"), "entities")?;
    if list.len() > MAX_ENTITIES {
        return Err(corrupt(format!(
            "{ctx}: it names {} entities, more than udm imports ({MAX_ENTITIES})",
            list.len()
        )));
    }
    let mut entities = Vec::new();
    let mut seen = BTreeSet::new();
    for e in list {
        let eo = obj(e, "an entry of entities")?;
        strict(
            eo,
            &["entity", "version", "status", "definition"],
            "an entity of the manifest",
        )?;
        let es = string(eo.get("entity"), "an entity's \"entity\"")?.to_string();
        validate_slug(SlugKind::Entity, &es).map_err(|err| {
            corrupt(format!(
                "{ctx}: entity \"{}\": {}",
                printable(&es),
                err.message
            ))
        })?;
        if !seen.insert(es.clone()) {
            return Err(corrupt(format!("{ctx}: entity \"{es}\" is listed twice")));
        }
        let what = format!("{ctx}: entity \"{es}\"");
        let version = integer(
            eo.get("version"),
            &format!("the version of entity \"{es}\""),
            1,
        )?;
        let version = i32::try_from(version)
            .map_err(|_| corrupt(format!("{what}: version {version} is out of range")))?;
        let dropped = match eo.get("status").and_then(Value::as_str) {
            Some("active") => false,
            Some("dropped") => true,
            _ => {
                return Err(corrupt(format!(
                    "{what}: status is not \"active\" or \"dropped\""
                )))
            }
        };
        let definition = eo.get("definition").cloned().unwrap_or(Value::Null);
        let def = EntityDef::from_catalog(&es, &definition).map_err(|err| {
            corrupt(format!(
                "{what}: its definition cannot be read: {}",
                err.message
            ))
        })?;
        entities.push(EntityState {
            slug: es,
            version,
            dropped,
            definition,
            def,
        });
    }
    entities.sort_by(|a, b| a.slug.cmp(&b.slug));
    check_targets(&ctx, &entities)?;
    let slist = arr(o.get("sections"), "sections")?;
    if slist.len() > MAX_SECTIONS {
        return Err(corrupt(format!(
            "{ctx}: it names {} sections, more than udm imports ({MAX_SECTIONS})",
            slist.len()
        )));
    }
    let mut sections = Vec::new();
    for s in slist {
        let so = obj(s, "an entry of sections")?;
        strict(
            so,
            &["name", "columns", "rows"],
            "a section of the manifest",
        )?;
        let name = string(so.get("name"), "a section's name")?.to_string();
        let mut columns = Vec::new();
        for c in arr(
            so.get("columns"),
            &format!("the columns of section \"{}\"", printable(&name)),
        )? {
            match c.as_array().map(Vec::as_slice) {
                Some([Value::String(n), Value::String(t)]) => columns.push((n.clone(), t.clone())),
                _ => {
                    return Err(corrupt(format!(
                        "{ctx}: a column of section \"{}\" is not [name, type]",
                        printable(&name)
                    )))
                }
            }
        }
        let rows = integer(
            so.get("rows"),
            &format!("the rows of section \"{}\"", printable(&name)),
            0,
        )? as u64;
        sections.push(Section {
            name,
            kind: Kind::Internal, // set by check_sections
            entity: None,
            columns,
            rows,
        });
    }
    let mut sequences = Vec::new();
    for q in arr(o.get("sequences"), "sequences")? {
        let qo = obj(q, "an entry of sequences")?;
        strict(
            qo,
            &["table", "column", "value"],
            "a sequence of the manifest",
        )?;
        sequences.push(SequenceValue {
            table: string(qo.get("table"), "a sequence's table")?.to_string(),
            column: string(qo.get("column"), "a sequence's column")?.to_string(),
            value: integer(qo.get("value"), "a sequence's value", i64::MIN)?,
        });
    }
    let mut m = Manifest {
        format_version: version as u32,
        udm_version,
        exported_at: opt_string(o.get("exported_at"), "exported_at")?,
        source: o.get("source").cloned().unwrap_or(Value::Null),
        tenant,
        entities,
        sections,
        sequences,
    };
    check_sections(&mut m)?;
    check_sequences(&m)?;
    Ok(m)
}

/// Relation and reference targets must be entities the archive has tables of.
fn check_targets(ctx: &str, entities: &[EntityState]) -> Result<()> {
    let known: BTreeSet<&str> = entities.iter().map(|e| e.slug.as_str()).collect();
    for e in entities {
        for f in e.def.fields.iter().chain(e.def.removed_fields.iter()) {
            let targets: Vec<&String> = match f.ftype {
                FieldType::Relation => f.target.iter().collect(),
                FieldType::Reference => f.targets.iter().collect(),
                _ => continue,
            };
            for t in targets {
                if !known.contains(t.as_str()) {
                    return Err(corrupt(format!(
                        "{ctx}: field \"{}\" of entity \"{}\" points to entity \"{}\", which the archive does not have",
                        f.name,
                        e.slug,
                        printable(t)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The junction tables of an entity (active and removed many-to-many fields), by field id.
fn junction_fields(def: &EntityDef) -> Vec<&FieldDef> {
    let mut out: Vec<&FieldDef> = def
        .fields
        .iter()
        .chain(def.removed_fields.iter())
        .filter(|f| f.junction.is_some())
        .collect();
    out.sort_by_key(|f| f.id);
    out
}

/// The sections of the entities' tables, in archive order: entities by slug, each followed by
/// its junction tables (row counts 0: the export fills them in).
pub fn record_sections(entities: &[EntityState], batched: bool) -> Vec<Section> {
    let mut sorted: Vec<&EntityState> = entities.iter().collect();
    sorted.sort_by(|a, b| a.slug.cmp(&b.slug));
    let mut out = Vec::new();
    for e in sorted {
        let mut columns = crate::ddl::table_columns(&e.def);
        if batched {
            columns.push((AUDIT_POINTER.into(), "bigint".into()));
        }
        out.push(Section {
            name: e.slug.clone(),
            kind: Kind::Records,
            entity: Some(e.slug.clone()),
            columns,
            rows: 0,
        });
        for f in junction_fields(&e.def) {
            out.push(Section {
                name: f.junction.clone().unwrap_or_default(),
                kind: Kind::Links,
                entity: Some(e.slug.clone()),
                columns: crate::ddl::junction_columns(),
                rows: 0,
            });
        }
    }
    out
}

/// The sections of an archive in order, given which of udm's optional tables the tenant has
/// (`internal`: name → columns, as the tables have them) and the rows of each (0 here).
pub fn plan_sections(
    entities: &[EntityState],
    internal: &BTreeMap<String, Vec<(String, String)>>,
) -> Vec<Section> {
    let mut out = vec![Section {
        name: CATALOG.into(),
        kind: Kind::Catalog,
        entity: None,
        columns: internal.get(CATALOG).cloned().unwrap_or_default(),
        rows: 0,
    }];
    let internal_section = |name: &str| -> Option<Section> {
        if name == GLOBAL_USERS {
            return internal.contains_key(USERS).then(|| Section {
                name: GLOBAL_USERS.into(),
                kind: Kind::GlobalUsers,
                entity: None,
                columns: GLOBAL_USER_COLUMNS
                    .iter()
                    .map(|(c, t)| (c.to_string(), t.to_string()))
                    .collect(),
                rows: 0,
            });
        }
        internal.get(name).map(|cols| Section {
            name: name.into(),
            kind: Kind::Internal,
            entity: None,
            columns: cols.clone(),
            rows: 0,
        })
    };
    let batched = internal.contains_key(AUDIT_LOG);
    out.extend(BEFORE_RECORDS.iter().filter_map(|n| internal_section(n)));
    out.extend(record_sections(entities, batched));
    out.extend(AFTER_RECORDS.iter().filter_map(|n| internal_section(n)));
    for name in audit_sections(batched) {
        out.push(Section {
            name: (*name).into(),
            kind: Kind::Audit,
            entity: None,
            columns: internal.get(*name).cloned().unwrap_or_default(),
            rows: 0,
        });
    }
    out
}

/// The audit log's sequence, as (table, column): its ids, or a batched log's batch ids.
pub fn audit_sequence(batched: bool) -> (&'static str, &'static str) {
    if batched {
        (AUDIT_LOG, "batch_id")
    } else {
        (AUDIT, "audit_id")
    }
}

/// Whether `name` is a table of an audit log (either layout).
pub fn is_audit_table(name: &str) -> bool {
    audit_sections(false).contains(&name) || audit_sections(true).contains(&name)
}

/// The sections of the audit log, last in an archive: the per-change table, or a batched log's
/// heads and chunks.
pub fn audit_sections(batched: bool) -> &'static [&'static str] {
    if batched {
        &[AUDIT_HEADS, AUDIT_LOG]
    } else {
        &[AUDIT]
    }
}

/// The manifest's sections must be the ones its entities and udm's tables need, in order: the
/// catalog first and the audit log last, udm's optional tables where they belong, every table
/// of every entity with exactly the columns its definition gives it. (The columns of udm's own
/// tables are checked against the tables the import makes.) Sets each section's kind and
/// entity.
pub fn check_sections(m: &mut Manifest) -> Result<()> {
    let ctx = format!("archive of tenant \"{}\"", m.tenant.slug);
    let batched = m.batched();
    if batched && m.format_version < BATCHED_FORMAT_VERSION {
        return Err(corrupt(format!(
            "{ctx}: it has a batched audit log (section \"{AUDIT_LOG}\"), which format version {} cannot hold",
            m.format_version
        )));
    }
    if m.has_keys() && m.format_version < KEYS_FORMAT_VERSION {
        return Err(corrupt(format!(
            "{ctx}: it has encryption keys (section \"{KEYS}\"), which format version {} cannot hold",
            m.format_version
        )));
    }
    let expected_records = record_sections(&m.entities, batched);
    let mut names = BTreeSet::new();
    for s in &m.sections {
        if !names.insert(s.name.clone()) {
            return Err(corrupt(format!(
                "{ctx}: section \"{}\" is listed twice",
                printable(&s.name)
            )));
        }
    }
    let mut i = 0;
    let sections = &mut m.sections;
    fn take(
        ctx: &str,
        i: &mut usize,
        name: &str,
        kind: Kind,
        required: bool,
        sections: &mut [Section],
    ) -> Result<()> {
        match sections.get_mut(*i) {
            Some(s) if s.name == name => {
                s.kind = kind;
                *i += 1;
                Ok(())
            }
            _ if required => Err(corrupt(format!(
                "{ctx}: section \"{name}\" is missing or out of place (found {})",
                sections
                    .get(*i)
                    .map_or("the end of the sections".to_string(), |s| format!(
                        "\"{}\"",
                        printable(&s.name)
                    ))
            ))),
            _ => Ok(()),
        }
    }
    take(&ctx, &mut i, CATALOG, Kind::Catalog, true, sections)?;
    let had_users_at = i;
    for n in BEFORE_RECORDS {
        let kind = if n == GLOBAL_USERS {
            Kind::GlobalUsers
        } else {
            Kind::Internal
        };
        take(&ctx, &mut i, n, kind, false, sections)?;
    }
    let has_users = sections.get(had_users_at).is_some_and(|s| s.name == USERS);
    if sections.iter().any(|s| s.name == GLOBAL_USERS) && !has_users {
        return Err(corrupt(format!(
            "{ctx}: it has a section of global users but none of the users the tenant knows ({USERS})"
        )));
    }
    for want in &expected_records {
        match sections.get_mut(i) {
            Some(s) if s.name == want.name => {
                if s.columns != want.columns {
                    let entity = want.entity.as_deref().unwrap_or_default();
                    return Err(corrupt(format!(
                        "{ctx}: the columns of section \"{}\" are not those of entity \"{entity}\"'s definition (version {}): {} instead of {}",
                        s.name,
                        m.entities.iter().find(|e| e.slug == entity).map_or(0, |e| e.version),
                        column_list(&s.columns),
                        column_list(&want.columns)
                    )));
                }
                s.kind = want.kind;
                s.entity = want.entity.clone();
                i += 1;
            }
            other => {
                return Err(corrupt(format!(
                    "{ctx}: the rows of table \"{}\" (entity \"{}\") are missing or out of place (found {})",
                    want.name,
                    want.entity.as_deref().unwrap_or_default(),
                    other.map_or("the end of the sections".to_string(), |s| format!(
                        "\"{}\"",
                        printable(&s.name)
                    ))
                )))
            }
        }
    }
    for n in AFTER_RECORDS {
        take(&ctx, &mut i, n, Kind::Internal, false, sections)?;
    }
    for name in audit_sections(batched) {
        take(&ctx, &mut i, name, Kind::Audit, true, sections)?;
    }
    if let Some(extra) = sections.get(i) {
        return Err(corrupt(format!(
            "{ctx}: section \"{}\" is not one udm knows (or is out of place)",
            printable(&extra.name)
        )));
    }
    for s in sections.iter() {
        if s.kind == Kind::GlobalUsers {
            let want: Vec<(String, String)> = GLOBAL_USER_COLUMNS
                .iter()
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect();
            if s.columns != want {
                return Err(corrupt(format!(
                    "{ctx}: the columns of section \"{GLOBAL_USERS}\" are {} instead of {}",
                    column_list(&s.columns),
                    column_list(&want)
                )));
            }
        }
        if s.columns.is_empty() {
            return Err(corrupt(format!(
                "{ctx}: section \"{}\" has no columns",
                printable(&s.name)
            )));
        }
    }
    Ok(())
}

fn column_list(cols: &[(String, String)]) -> String {
    let shown: Vec<String> = cols
        .iter()
        .map(|(c, t)| format!("{} {}", printable(c), printable(t)))
        .collect();
    format!("({})", shown.join(", "))
}

/// The active entities of a manifest, as the DDL planner reads a tenant (rules over related
/// records, access policies through scope relations).
pub struct Definitions<'a> {
    pub schema: &'a str,
    pub entities: BTreeMap<String, &'a EntityDef>,
}

impl<'a> Definitions<'a> {
    pub fn new(schema: &'a str, entities: &'a [EntityState]) -> Self {
        Definitions {
            schema,
            entities: entities
                .iter()
                .filter(|e| !e.dropped)
                .map(|e| (e.slug.clone(), &e.def))
                .collect(),
        }
    }
}

impl crate::query::path::Model for Definitions<'_> {
    fn schema(&self) -> &str {
        self.schema
    }
    fn entity(&self, slug: &str) -> Option<&EntityDef> {
        self.entities.get(slug).copied()
    }
    fn entity_names(&self) -> Vec<String> {
        self.entities.keys().cloned().collect()
    }
}

/// Sequences belong to the audit log's ids and to auto number fields of the archive's entities.
fn check_sequences(m: &Manifest) -> Result<()> {
    let ctx = format!("archive of tenant \"{}\"", m.tenant.slug);
    if m.sequences.len() > MAX_SECTIONS {
        return Err(corrupt(format!("{ctx}: too many sequences")));
    }
    let log = audit_sequence(m.batched());
    for s in &m.sequences {
        let known = (s.table == log.0 && s.column == log.1)
            || m.entities.iter().any(|e| {
                e.slug == s.table
                    && crate::ddl::column_fields(&e.def)
                        .iter()
                        .any(|f| f.ftype == FieldType::AutoNumber && f.column == s.column)
            });
        if !known {
            return Err(corrupt(format!(
                "{ctx}: it sets a sequence of {}.{}, which is no audit log or auto number field",
                printable(&s.table),
                printable(&s.column)
            )));
        }
    }
    Ok(())
}

/// The sequences an import sets: the audit log's ids and every auto number column.
pub fn sequence_columns(entities: &[EntityState], batched: bool) -> Vec<(String, String)> {
    let (table, column) = audit_sequence(batched);
    let mut out = vec![(table.to_string(), column.to_string())];
    for e in entities {
        for f in crate::ddl::column_fields(&e.def) {
            if f.ftype == FieldType::AutoNumber {
                out.push((e.slug.clone(), f.column.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Source;

    fn def(slug: &str, v: Value) -> (EntityDef, Value) {
        let d = EntityDef::parse(slug, &v, Source::Caller).unwrap();
        let j = d.to_json();
        (d, j)
    }

    fn entity(slug: &str, v: Value, dropped: bool) -> EntityState {
        let (def, definition) = def(slug, v);
        EntityState {
            slug: slug.into(),
            version: 1,
            dropped,
            definition,
            def,
        }
    }

    fn internal() -> BTreeMap<String, Vec<(String, String)>> {
        let mut m = BTreeMap::new();
        for n in [CATALOG, USERS, MEMBERS, AUDIT] {
            m.insert(n.to_string(), vec![("x".to_string(), "text".to_string())]);
        }
        m
    }

    fn manifest() -> Manifest {
        let entities = vec![
            entity(
                "tag",
                json!({"fields": [{"name": "name", "type": "text"}]}),
                false,
            ),
            entity(
                "doc",
                json!({"fields": [
                    {"name": "title", "type": "text", "required": true},
                    {"name": "no", "type": "auto_number"},
                    {"name": "tags", "type": "relation", "target": "tag", "many": true}]}),
                false,
            ),
        ];
        let sections = plan_sections(&entities, &internal());
        Manifest {
            format_version: FORMAT_VERSION,
            udm_version: "0.2.0".into(),
            exported_at: None,
            source: json!({"database": "shop"}),
            tenant: TenantInfo {
                slug: "acme".into(),
                name: Some("Acme".into()),
                access: false,
                created_at: None,
                created_by: None,
            },
            entities,
            sections,
            sequences: vec![
                SequenceValue {
                    table: AUDIT.into(),
                    column: "audit_id".into(),
                    value: 10,
                },
                SequenceValue {
                    table: "doc".into(),
                    column: "no".into(),
                    value: 3,
                },
            ],
        }
    }

    /// The sections are the manifest()'s catalog, users, members and records, then `tail`.
    fn assert_sections(sections: &[Section], tail: &[&str]) {
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        let mut want = vec![
            CATALOG,
            USERS,
            GLOBAL_USERS,
            MEMBERS,
            "doc",
            "doc__tags",
            "tag",
        ];
        want.extend_from_slice(tail);
        assert_eq!(names, want);
    }

    #[test]
    fn a_manifest_round_trips() {
        let m = manifest();
        let back = parse_manifest(&m.to_json()).unwrap();
        assert_eq!(back.tenant, m.tenant);
        assert_eq!(back.sections, m.sections);
        assert_eq!(back.sequences, m.sequences);
        assert_sections(&back.sections, &[AUDIT]);
        assert_eq!(back.sections[4].kind, Kind::Records);
        assert_eq!(back.sections[5].kind, Kind::Links);
        assert_eq!(back.sections[5].entity.as_deref(), Some("doc"));
    }

    #[test]
    fn a_batched_log_travels_as_heads_and_chunks_with_each_row_s_pointer() {
        let mut m = manifest();
        let mut internal = internal();
        // a batched tenant's `_udm_audit` is a view over its log: the log's tables travel
        for n in [AUDIT_LOG, AUDIT_HEADS] {
            internal.insert(n.to_string(), vec![("y".to_string(), "bigint".to_string())]);
        }
        m.sections = plan_sections(&m.entities, &internal);
        m.sequences[0] = SequenceValue {
            table: AUDIT_LOG.into(),
            column: "batch_id".into(),
            value: 3,
        };
        assert!(m.batched());
        assert_eq!(m.version_needed(), BATCHED_FORMAT_VERSION);
        assert_sections(&m.sections, &[AUDIT_HEADS, AUDIT_LOG]);
        // entity rows carry their latest change's pointer; junction rows do not
        let cols = |name: &str| -> Vec<String> {
            let s = m.sections.iter().find(|s| s.name == name).unwrap();
            s.columns.iter().map(|(c, _)| c.clone()).collect()
        };
        assert_eq!(cols("tag").last().map(String::as_str), Some(AUDIT_POINTER));
        assert!(!cols("doc__tags").contains(&AUDIT_POINTER.to_string()));
        assert_eq!(
            sequence_columns(&m.entities, true)[0],
            (AUDIT_LOG.to_string(), "batch_id".to_string())
        );
        let back = parse_manifest(&m.to_json()).unwrap();
        assert_eq!(back.sections, m.sections);
        assert_eq!(back.sequences, m.sequences);
        assert!(back.sections[7..].iter().all(|s| s.kind == Kind::Audit));
        // the batch ids' sequence is the log's; a per-change log's ids are not there to set
        let mut stray = m.to_json();
        stray["sequences"][0] = json!({"table": AUDIT, "column": "audit_id", "value": 10});
        let e = parse_manifest(&stray).unwrap_err();
        assert!(
            e.message.contains("no audit log or auto number field"),
            "{}",
            e.message
        );

        // a version-1 manifest cannot hold a batched log
        let mut v1 = m.to_json();
        v1["format_version"] = json!(1);
        let e = parse_manifest(&v1).unwrap_err();
        assert!(e.message.contains("batched audit log"), "{}", e.message);
        // nor may an entity's rows lose their pointer column
        let mut bare = m.to_json();
        let tag = bare["sections"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|s| s["name"] == "tag")
            .unwrap();
        tag["columns"].as_array_mut().unwrap().pop();
        let e = parse_manifest(&bare).unwrap_err();
        assert!(
            e.message.contains("the columns of section \"tag\""),
            "{}",
            e.message
        );
        // and a per-change archive has no room for the log's tables
        let mut mixed = manifest().to_json();
        let sections = mixed["sections"].as_array_mut().unwrap();
        let heads = json!({"name": AUDIT_HEADS, "columns": [], "rows": 0});
        sections.push(heads);
        assert!(parse_manifest(&mixed).is_err());
    }

    #[test]
    fn encryption_keys_travel_after_the_records_in_a_newer_format() {
        let mut m = manifest();
        assert!(!m.has_keys());
        assert_eq!(m.version_needed(), 1);
        let mut internal = internal();
        internal.insert(
            KEYS.to_string(),
            vec![("w".to_string(), "bytea".to_string())],
        );
        m.sections = plan_sections(&m.entities, &internal);
        assert!(m.has_keys());
        assert_eq!(m.version_needed(), KEYS_FORMAT_VERSION);
        assert_sections(&m.sections, &[KEYS, AUDIT]);
        m.format_version = m.version_needed();
        let back = parse_manifest(&m.to_json()).unwrap();
        assert_eq!(back.sections, m.sections);
        assert_eq!(back.sections[7].kind, Kind::Internal);
        // an older format cannot hold them
        for older in [1, BATCHED_FORMAT_VERSION] {
            let mut v = m.to_json();
            v["format_version"] = json!(older);
            let e = parse_manifest(&v).unwrap_err();
            assert!(e.message.contains("encryption keys"), "{}", e.message);
        }
        // nor may they come before the records
        let mut early = m.to_json();
        let sections = early["sections"].as_array_mut().unwrap();
        let keys = sections.remove(7);
        sections.insert(4, keys);
        assert!(parse_manifest(&early).is_err());
    }

    #[test]
    fn table_columns_follow_field_ids_with_removed_fields_in_place() {
        let (mut d, _) = def(
            "doc",
            json!({"fields": [{"name": "a", "type": "text"}, {"name": "b", "type": "integer"},
                              {"name": "c", "type": "date"}]}),
        );
        let mut b = d.fields.remove(1);
        b.column = crate::ddl::removed_column_name(&b);
        d.removed_fields.push(b);
        let cols: Vec<String> = crate::ddl::table_columns(&d)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(
            cols,
            [
                "id",
                "created_at",
                "updated_at",
                "created_by",
                "updated_by",
                "_version",
                "a",
                "_removed_f2_b",
                "c"
            ]
        );
    }

    fn refused(v: Value) -> UdmError {
        parse_manifest(&v).expect_err("refused")
    }

    #[test]
    fn newer_formats_are_refused_naming_versions() {
        let mut v = manifest().to_json();
        v["format_version"] = json!(FORMAT_VERSION + 1);
        v["udm_version"] = json!("9.1.0");
        let e = refused(v);
        assert_eq!(e.state, SqlState::FeatureNotSupported);
        assert!(
            e.message
                .contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{}",
            e.message
        );
        assert!(e.message.contains("udm 9.1.0"), "{}", e.message);
        assert!(e.hint.unwrap().contains("9.1.0"));
    }

    #[test]
    fn damaged_manifests_are_refused_naming_what() {
        let e = refused(json!([1, 2]));
        assert_eq!(e.state, SqlState::BadCopyFileFormat);
        let e = refused(json!({"format": "pg_dump"}));
        assert!(
            e.message.contains("not a udm tenant archive"),
            "{}",
            e.message
        );
        // a section missing
        let mut v = manifest().to_json();
        v["sections"]
            .as_array_mut()
            .unwrap()
            .retain(|s| s["name"] != "doc__tags");
        let e = refused(v);
        assert!(
            e.message.contains("\"doc__tags\" (entity \"doc\")"),
            "{}",
            e.message
        );
        // columns that are not the definition's
        let mut v = manifest().to_json();
        v["sections"][4]["columns"][6] = json!(["title", "integer"]);
        let e = refused(v);
        assert!(
            e.message.contains("columns of section \"doc\""),
            "{}",
            e.message
        );
        // a relation to an entity the archive lacks
        let mut v = manifest().to_json();
        v["entities"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["entity"] != "tag");
        v["sections"]
            .as_array_mut()
            .unwrap()
            .retain(|s| s["name"] != "tag");
        let e = refused(v);
        assert!(
            e.message
                .contains("field \"tags\" of entity \"doc\" points to entity \"tag\""),
            "{}",
            e.message
        );
        // a definition that does not parse
        let mut v = manifest().to_json();
        v["entities"][0]["definition"]["fields"][0]["type"] = json!("nope");
        let e = refused(v);
        assert!(
            e.message
                .contains("entity \"tag\": its definition cannot be read"),
            "{}",
            e.message
        );
        // unknown sections and keys
        let mut v = manifest().to_json();
        v["sections"].as_array_mut().unwrap().insert(
            7,
            json!({"name": "pg_authid", "columns": [["a", "text"]], "rows": 1}),
        );
        let e = refused(v);
        assert!(e.message.contains("\"pg_authid\""), "{}", e.message);
        let mut v = manifest().to_json();
        v["sequences"][1]["column"] = json!("title");
        let e = refused(v);
        assert!(e.message.contains("doc.title"), "{}", e.message);
        let mut v = manifest().to_json();
        v["tenant"]["slug"] = json!("Robert'); DROP TABLE x; --");
        assert_eq!(refused(v).state, SqlState::BadCopyFileFormat);
        let mut v = manifest().to_json();
        v["sections"][0]["rows"] = json!(-1);
        assert_eq!(refused(v).state, SqlState::BadCopyFileFormat);
    }

    #[test]
    fn import_ddl_makes_bare_tables_then_what_a_definition_makes() {
        let m = manifest();
        let ctx = crate::ddl::Ctx {
            schema: "acme",
            role: "tenant_acme@shop",
            access: false,
            model: None,
            citus: false,
        };
        let doc = &m.entities.iter().find(|e| e.slug == "doc").unwrap().def;
        let plan = crate::ddl::import_entity(&ctx, doc, false).unwrap();
        assert!(plan.tables[0].starts_with("CREATE TABLE \"acme\".\"doc\""));
        assert!(!plan.tables[0].contains("CONSTRAINT"), "{}", plan.tables[0]);
        assert!(plan.tables[0].contains("GENERATED ALWAYS AS IDENTITY"));
        assert_eq!(plan.tables[1], "CREATE TABLE \"acme\".\"doc__tags\" (\"source_id\" uuid NOT NULL, \"target_id\" uuid NOT NULL, \"created_at\" timestamp with time zone NOT NULL DEFAULT now())");
        let sql: Vec<String> = plan
            .after
            .iter()
            .filter_map(|s| match s {
                crate::ddl::Step::Sql(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            plan.keys[0],
            "ALTER TABLE \"acme\".\"doc\" ADD CONSTRAINT \"doc__pkey\" PRIMARY KEY (\"id\")"
        );
        assert!(
            plan.keys[1].contains("\"doc__tags__pkey\""),
            "{:?}",
            plan.keys
        );
        assert!(sql
            .iter()
            .any(|s| s.contains("CREATE TRIGGER \"udm_audit\"")));
        assert!(sql
            .iter()
            .any(|s| s.contains("ADD CONSTRAINT \"doc__tags__source__fkey\"")));
        assert!(sql
            .iter()
            .any(|s| s.starts_with("GRANT SELECT, INSERT, UPDATE, DELETE ON \"acme\".\"doc\"")));
        // what create_entity makes, piece by piece
        let created: Vec<String> = crate::ddl::create_entity(&ctx, doc)
            .unwrap()
            .into_iter()
            .filter_map(|s| match s {
                crate::ddl::Step::Sql(s) => Some(s),
                _ => None,
            })
            .collect();
        for s in created.iter().filter(|s| !s.starts_with("CREATE TABLE")) {
            assert!(sql.contains(s), "import makes {s}");
        }
        // a dropped entity gets no grants
        let dropped = crate::ddl::import_entity(&ctx, doc, true).unwrap();
        assert!(!dropped
            .after
            .iter()
            .any(|s| matches!(s, crate::ddl::Step::Sql(q) if q.starts_with("GRANT"))));
        // on Citus, which takes one constraint per ALTER TABLE, the same constraints one by one
        let citus = crate::ddl::Ctx { citus: true, ..ctx };
        let split: Vec<String> = crate::ddl::import_entity(&citus, doc, false)
            .unwrap()
            .after
            .into_iter()
            .filter_map(|s| match s {
                crate::ddl::Step::Sql(s) => Some(s),
                _ => None,
            })
            .collect();
        let alters = |v: &[String]| -> Vec<String> {
            let mut out: Vec<String> = v
                .iter()
                .filter(|s| s.starts_with("ALTER TABLE"))
                .flat_map(|s| {
                    let (table, adds) = s.split_once(" ADD ").unwrap();
                    adds.split(", ADD ")
                        .map(|a| format!("{table} ADD {a}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            out.sort();
            out
        };
        assert!(
            split
                .iter()
                .filter(|s| s.starts_with("ALTER TABLE"))
                .all(|s| !s.contains(", ADD ")),
            "{split:#?}"
        );
        assert!(sql
            .iter()
            .any(|s| s.starts_with("ALTER TABLE") && s.contains(", ADD ")));
        assert_eq!(alters(&split), alters(&sql));
    }
}
