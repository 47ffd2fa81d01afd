//! DDL planning. Every definition change is a diff between the entity's old and new definition:
//! the planner turns it into ordered steps (validation queries, then drops, column changes,
//! additions, renames, grants). The extension runs them in one transaction.
//!
//! Identifiers are quoted; the only literals are DDL constants (defaults, bounds, rule keys), and
//! they pass through `quote_literal`.

use crate::checks::{field_checks, text_array, typed_literal};
use crate::definition::{EntityDef, FieldDef, Stage};
use crate::error::{Result, SqlState, UdmError};
use crate::ident::{fit_name, qualified, quote_ident, quote_literal, SYSTEM_COLUMNS};
use crate::query::path::Model;
use crate::related_rules::{self, CompiledRule, WithEntity};
use crate::rules::compile_rule;
use crate::types::FieldType;
use serde_json::Value;
use std::collections::BTreeMap;

/// Where the entity lives.
#[derive(Clone)]
pub struct Ctx<'a> {
    pub schema: &'a str,
    /// The tenant's role, which gets DML privileges on entity tables.
    pub role: &'a str,
    /// Whether the tenant controls access by application users (it has members): entity tables
    /// then get row-level security and the access guard.
    pub access: bool,
    /// The tenant's other entities, for rules that read related records (without them, rules
    /// may use the entity's own fields only).
    pub model: Option<&'a dyn Model>,
    /// Whether the tenant lives in a Citus distributed schema: its row-level security policies
    /// then have no sub-selects (Citus refuses them on distributed tables) and call udm functions
    /// that run on the tenant's worker instead (see `access_policy`).
    pub citus: bool,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("schema", &self.schema)
            .field("role", &self.role)
            .field("access", &self.access)
            .field("citus", &self.citus)
            .field("model", &self.model.map(|m| m.entity_names()))
            .finish()
    }
}

impl Ctx<'_> {
    pub fn table(&self, entity: &str) -> String {
        qualified(self.schema, entity)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Check,
    Unique,
    ForeignKey,
    Index,
    Trigger,
    /// A deferrable `CONSTRAINT TRIGGER` (rules over related records); its body follows the name.
    ConstraintTrigger,
    /// `ENABLE ROW LEVEL SECURITY` on the table (one per table, named after it).
    RowSecurity,
    /// A row-level security policy; its body is the USING expression.
    Policy,
}

/// A named database object udm derives from a definition: a constraint, index or trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// Stable identity across renames: `f3.min`, `f3.fkey`, `r.dates`, `i.<name>`, `stamp`.
    pub key: String,
    pub name: String,
    pub kind: ArtifactKind,
    /// The table (entity slug) it belongs to.
    pub table: String,
    /// Definition text; equal bodies mean nothing to rebuild.
    pub body: String,
    /// Field ids it depends on.
    pub fields: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Plain DDL.
    Sql(String),
    /// Before a type change: returns a row (the value as text) when some value would not
    /// survive the conversion unchanged.
    ConversionCheck {
        field: String,
        from: String,
        to: String,
        sql: String,
    },
    /// Before adding a required field without default: the table must be empty.
    RequireEmpty { field: String, sql: String },
    /// Before restoring a required field or making a field required: returns the number of
    /// records without a value.
    RequireFilled {
        field: String,
        column: String,
        sql: String,
    },
    /// Evaluates a new field's rules on its default: all existing rows hold the default, so
    /// this proves the rule for the whole table without scanning it.
    DefaultCheck { field: String, sql: String },
    /// After adding a rule: returns the id of a record that breaks it (`key` is the rule's key,
    /// `r.<rule>` or `f<field id>.<rule>`), so the refusal names one.
    RuleHolds { key: String, sql: String },
}

// ------------------------------------------------------------------ names

/// The tenant's table of the users it knows: `user` fields, members and relation tuples reference
/// it (never the global users table, which every tenant would then reference).
pub const USER_TABLE: &str = "_udm_user";

pub fn pkey_name(entity: &str) -> String {
    fit_name(&format!("{entity}__pkey"))
}

pub fn check_name(entity: &str, field: &str, rule: &str) -> String {
    fit_name(&format!("{entity}__{field}__{rule}"))
}

pub fn rule_constraint_name(entity: &str, rule: &str) -> String {
    fit_name(&format!("{entity}__{rule}__rule"))
}

pub fn unique_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}__key"))
}

/// The partial blind index that keeps the sealed values of a unique field unique while its
/// encryption is turned on or off.
pub fn sealed_unique_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}__sealed_key"))
}

/// The check that every value of a field whose encryption is turned on in stages has its sealed
/// form (`Stage`).
pub fn sealed_check_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}__sealed_check"))
}

pub fn fkey_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}__fkey"))
}

pub fn field_index_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}__idx"))
}

pub fn sequence_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}__seq"))
}

pub fn removed_column_name(f: &FieldDef) -> String {
    fit_name(&format!("_removed_f{}_{}", f.id, f.name))
}

pub fn removed_junction_name(entity: &str, f: &FieldDef) -> String {
    fit_name(&format!("{entity}__f{}__removed", f.id))
}

pub const STAMP_TRIGGER: &str = "udm_stamp";
/// The native audit trigger (row level) and the statement-level trigger that writes the audit
/// rows a statement buffered. Installed on every audited entity (switching auditing off drops
/// them) and on every junction table; the trigger also reads whether an entity is audited from
/// its definition at run time.
pub const AUDIT_TRIGGER: &str = "udm_audit";
pub const AUDIT_FLUSH_TRIGGER: &str = "udm_audit_flush";
/// The write-lock guard: only on entities with a lock scope (it reads the scope from the
/// definition at run time, so renaming the scope field changes nothing here).
pub const LOCK_TRIGGER: &str = "udm_lock_guard";
/// The access guard (row trigger) and the row-level security policy of tenants with access
/// control.
pub const ACCESS_TRIGGER: &str = "udm_access";
pub const ACCESS_POLICY: &str = "udm_access";
/// The tenant's relation tuples (ReBAC), made when access control is switched on.
pub const TUPLE_TABLE: &str = "_udm_tuple";

/// Who sees which rows, as the USING expression of the entity's policy. Every `udm.*` call is
/// wrapped in a sub-select, so PostgreSQL evaluates it once per query (an InitPlan), not per row:
/// * an entity without access scope: rows are seen when the user's role may read the entity;
/// * with an access scope: also rows of records the user has a relation tuple on, or owns, or
///   (scope through a relation) whose scope record the user sees — a scope root's test is
///   written out (`record_test`, the same one its own policy makes), deeper parents' policies
///   decide for themselves, so levels flow down relations.
///
/// On Citus (`ctx.citus`) a policy may have no sub-select: the calls are made per row (each is a
/// cache lookup once the first row of the command has found the answer), and a record inside a
/// scope is tested against `udm.visible_ids` of its parent (the parent's records the session
/// sees, as the parent's own policy decides, read once per command).
pub fn access_policy(ctx: &Ctx, def: &EntityDef) -> (String, Vec<u32>) {
    let s = quote_literal(ctx.schema);
    let e = quote_literal(&def.slug);
    let all = once(ctx, format!("udm.may_read_all({s}, {e})"));
    let Some(a) = &def.access else {
        return (all, vec![]);
    };
    let mut fields: Vec<u32> = [a.owner.as_deref(), a.parent.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|n| def.field(n).map(|f| f.id))
        .collect();
    fields.sort_unstable();
    let Some(f) = a.parent.as_deref().and_then(|p| def.field(p)) else {
        return (record_test(ctx, def, None), fields);
    };
    let target = f.target.as_deref().unwrap_or_default();
    let col = quote_ident(&f.column);
    let root = ctx
        .model
        .and_then(|m| m.entity(target))
        .filter(|t| t.access.as_ref().is_some_and(|ta| ta.parent.is_none()));
    let parent_test = match root {
        // On Citus: the parent records the reader sees, by a function (no sub-select).
        _ if ctx.citus => format!(
            "udm.id_in({col}, udm.visible_ids({s}, {}))",
            quote_literal(target)
        ),
        // The parent is a scope root: its own test, written out here against the tuple index
        // and the owner index, rather than a scan of every parent record through its policy.
        Some(t) => record_test(ctx, t, Some(&col)),
        // Deeper: the parent records the reader sees, as the parent's own policy decides.
        None => format!(
            "udm.id_in({col}, ARRAY(SELECT \"id\" FROM {}))",
            ctx.table(target)
        ),
    };
    let mut alts = vec![parent_test];
    if let Some(of) = a.owner.as_deref().and_then(|o| def.field(o)) {
        alts.push(format!(
            "{} = {}",
            quote_ident(&of.column),
            once(ctx, format!("udm.access_user({s})"))
        ));
    }
    (
        format!(
            "{all} OR ({} AND ({}))",
            once(ctx, format!("udm.may_read_scoped({s}, {e})")),
            alts.join(" OR ")
        ),
        fields,
    )
}

/// Who sees a record of a scope root (`def`, an entity with `"scope": "self"`): readers of all,
/// or scoped readers with a relation tuple on it or named by its owner field. For the root's own
/// policy `via` is `None`; a record inside the root passes its scope column, and the ownership
/// test becomes a lookup of the roots the reader owns.
///
/// The records a reader has tuples on (or owns) are collected once per query into an array (an
/// InitPlan; `udm.tuple_objects` reads the tuple index for the reader directly, so the lookup does
/// not depend on the planner's guess of how many tuples one user has) and each row is tested with
/// `udm.id_in` (one hash lookup in a set made once), which
/// parallel workers can run too (a hashed sub-select is kept to the leader, and `= ANY` searches
/// the array from its start for every row).
fn record_test(ctx: &Ctx, def: &EntityDef, via: Option<&str>) -> String {
    let s = quote_literal(ctx.schema);
    let e = quote_literal(&def.slug);
    let me = once(ctx, format!("udm.access_user({s})"));
    let id = via.unwrap_or("\"id\"");
    let mut arms = vec![format!(
        "udm.id_in({id}, {})",
        once(ctx, format!("udm.tuple_objects({s}, {e})"))
    )];
    let owner = def.access.as_ref().and_then(|a| a.owner.as_deref());
    if let Some(of) = owner.and_then(|o| def.field(o)) {
        let oc = quote_ident(&of.column);
        arms.push(match via {
            None => format!("{oc} = {me}"),
            Some(col) => format!(
                "udm.id_in({col}, ARRAY(SELECT \"id\" FROM {} WHERE {oc} = {me}))",
                ctx.table(&def.slug)
            ),
        });
    }
    format!(
        "{} OR ({} AND ({}))",
        once(ctx, format!("udm.may_read_all({s}, {e})")),
        once(ctx, format!("udm.may_read_scoped({s}, {e})")),
        arms.join(" OR ")
    )
}

/// A call the policy makes once per query: in a sub-select (an InitPlan), except on Citus, which
/// refuses sub-selects in policies (there the function is called per row and answers from its
/// cache).
fn once(ctx: &Ctx, call: String) -> String {
    if ctx.citus {
        call
    } else {
        format!("(SELECT {call})")
    }
}

/// Artifacts that read other entities' definitions: rules over related records, and (in a
/// tenant with access control) the access policy, which may write out its parent's. They are
/// rebuilt when those definitions change.
pub fn cross_entity_artifacts(ctx: &Ctx, def: &EntityDef) -> Result<Vec<Artifact>> {
    let mut out = rule_artifacts(ctx, def)?;
    if ctx.access && def.access.is_some() {
        out.extend(
            access_artifacts(ctx, def)
                .into_iter()
                .filter(|a| a.kind == ArtifactKind::Policy),
        );
    }
    Ok(out)
}

fn access_artifacts(ctx: &Ctx, def: &EntityDef) -> Vec<Artifact> {
    let (using, fields) = access_policy(ctx, def);
    vec![
        Artifact {
            key: "access.rls".into(),
            name: def.slug.clone(),
            kind: ArtifactKind::RowSecurity,
            table: def.slug.clone(),
            body: String::new(),
            fields: vec![],
        },
        Artifact {
            key: "access.policy".into(),
            name: ACCESS_POLICY.into(),
            kind: ArtifactKind::Policy,
            table: def.slug.clone(),
            body: using,
            fields,
        },
        Artifact {
            key: "access".into(),
            name: ACCESS_TRIGGER.into(),
            kind: ArtifactKind::Trigger,
            table: def.slug.clone(),
            body: format!(
                "BEFORE INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION udm.access_guard({})",
                ctx.table(&def.slug),
                quote_literal(&def.slug)
            ),
            fields: vec![],
        },
    ]
}

/// What switching access control on does to an existing entity: its access artifacts.
pub fn enable_access(ctx: &Ctx, def: &EntityDef) -> Vec<String> {
    let mut out: Vec<String> = access_artifacts(ctx, def)
        .iter()
        .map(|a| add_artifact_sql(ctx, a, false))
        .collect();
    for f in def.fields.iter().chain(def.removed_fields.iter()) {
        out.extend(junction_access_sql(ctx, &def.slug, f));
    }
    out
}

/// What switching access control on does to the tenant's audit log: row-level security, so a
/// member reads the audit rows of the records they see (and managers all of them), through
/// `udm_history`, reports, events and plain `SELECT` alike. `udm.may_read_audit` runs once per
/// query (a sub-select); `udm.audit_visible` per row only for readers who are not managers.
/// On Citus (`citus`) `udm.may_read_audit` is called per row (no sub-select, see `access_policy`).
pub fn audit_access_sql(schema: &str, citus: bool) -> [String; 2] {
    let t = format!("{}.\"_udm_audit\"", quote_ident(schema));
    let s = quote_literal(schema);
    let all = if citus {
        format!("udm.may_read_audit({s})")
    } else {
        format!("(SELECT udm.may_read_audit({s}))")
    };
    [
        format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
        format!(
            "CREATE POLICY {} ON {t} FOR SELECT USING ({all} OR udm.audit_visible({s}, entity, record_id))",
            quote_ident(ACCESS_POLICY)
        ),
    ]
}

/// The arguments every udm trigger starts with: the table it is on, as keys into udm's catalog
/// (the entity's slug; for a many-to-many field's junction table, the entity and the field's id,
/// which a rename does not change). Trigger functions find what they fire on from these, never
/// from the relation's name: on Citus a trigger fires on a shard, named `<table>_<shard id>`.
pub fn trigger_table_args(entity: &str, field: Option<u32>) -> String {
    match field {
        Some(id) => format!(
            "{}, {}",
            quote_literal(entity),
            quote_literal(&id.to_string())
        ),
        None => quote_literal(entity),
    }
}

/// `CREATE TRIGGER` statements of the audit triggers on the junction table of a many-to-many
/// field: links are audited as changes of `<entity>.<field>` keyed by the source record.
pub fn junction_audit_sql(table: &str, entity: &str, f: &FieldDef) -> [String; 2] {
    let args = trigger_table_args(entity, Some(f.id));
    [
        format!(
            "CREATE TRIGGER {} {}",
            quote_ident(AUDIT_TRIGGER),
            audit_trigger_body(table, &args, false)
        ),
        format!(
            "CREATE TRIGGER {} {}",
            quote_ident(AUDIT_FLUSH_TRIGGER),
            audit_trigger_body(table, &args, true)
        ),
    ]
}

fn audit_trigger_body(table: &str, args: &str, flush: bool) -> String {
    if flush {
        format!("AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION udm.audit_flush({args})")
    } else {
        format!("AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION udm.audit_row({args})")
    }
}

// ------------------------------------------------------------------ SQL pieces

/// The column's DEFAULT expression, if any.
pub fn default_sql(f: &FieldDef) -> Option<String> {
    let d = f.default.as_ref()?;
    let pg = f.pg_type();
    Some(match (&f.ftype, d) {
        (FieldType::DateTime, Value::String(s)) if s == "now" => "now()".into(),
        (FieldType::Date, Value::String(s)) if s == "now" || s == "today" => "CURRENT_DATE".into(),
        (FieldType::Time, Value::String(s)) if s == "now" => "LOCALTIME".into(),
        (FieldType::Boolean, Value::Bool(b)) => b.to_string(),
        (FieldType::Json | FieldType::File, v) => {
            format!("{}::jsonb", quote_literal(&v.to_string()))
        }
        (FieldType::Reference, Value::Object(o)) => {
            let entity = o.get("entity").and_then(Value::as_str).unwrap_or("");
            let id = o.get("id").and_then(Value::as_str).unwrap_or("");
            format!(
                "ROW({}, {}::uuid)::udm.ref",
                quote_literal(entity),
                quote_literal(id)
            )
        }
        (_, Value::Array(items)) => {
            if items.is_empty() {
                format!("'{{}}'::{pg}")
            } else {
                let lits: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => quote_literal(s),
                        other => quote_literal(&other.to_string()),
                    })
                    .collect();
                format!("ARRAY[{}]::{pg}", lits.join(", "))
            }
        }
        (_, v) => typed_literal(v, &pg),
    })
}

/// `"name" type [GENERATED ...] [DEFAULT ...] [NOT NULL]`.
pub fn column_sql(ctx: &Ctx, entity: &str, f: &FieldDef) -> String {
    let mut s = format!("{} {}", quote_ident(&f.column), f.pg_type());
    if f.ftype == FieldType::AutoNumber {
        s.push_str(&format!(
            " GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME {})",
            qualified(ctx.schema, &sequence_name(entity, &f.name))
        ));
    }
    if let Some(d) = default_sql(f) {
        s.push_str(" DEFAULT ");
        s.push_str(&d);
    }
    if f.required || f.ftype == FieldType::AutoNumber {
        s.push_str(" NOT NULL");
    }
    s
}

/// The condition of a CHECK artifact's body (what `check_body` wrapped).
fn check_condition<'a>(ctx: &Ctx, entity: &str, key: &str, body: &'a str) -> Option<&'a str> {
    let suffix = format!(
        "), {}, {}, {}))",
        quote_literal(ctx.schema),
        quote_literal(entity),
        quote_literal(key)
    );
    body.strip_prefix("CHECK (udm.check_rule((")?
        .strip_suffix(suffix.as_str())
}

fn check_body(ctx: &Ctx, entity: &str, key: &str, cond: &str) -> String {
    format!(
        "CHECK (udm.check_rule(({cond}), {}, {}, {}))",
        quote_literal(ctx.schema),
        quote_literal(entity),
        quote_literal(key)
    )
}

/// The stamp trigger sets system columns, reports missing required values in words before the
/// NOT NULL constraint would, and hashes password fields: which fields those are it reads from
/// the entity's definition in the catalog.
pub fn stamp_trigger_body(ctx: &Ctx, def: &EntityDef) -> String {
    format!(
        "BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION udm.stamp_row({})",
        ctx.table(&def.slug),
        trigger_table_args(&def.slug, None)
    )
}

// ------------------------------------------------------------------ artifacts

/// Constraints, indexes and triggers of one field (with `column` as its column name), and those
/// of its encryption being turned on in stages (`Stage`).
pub fn field_artifacts(ctx: &Ctx, def: &EntityDef, f: &FieldDef) -> Vec<Artifact> {
    let mut out = own_field_artifacts(ctx, def, f);
    if f.encryption_stage == Some(Stage::Sealing) && (f.unique || f.index) {
        out.push(staged_blind_artifact(ctx, def, f));
    }
    out.extend(staged_check_artifact(def, f));
    out
}

/// While encryption is turned on for field `f` in stages: a CHECK that a value set has its
/// sealed form (made `NOT VALID`: the values written before are sealed in batches).
/// `udm_reencrypt` validates it before the swap, without blocking readers or writers; then the
/// swap needs no count under its lock, and for a `required` field (whose check is the sealed
/// column's `IS NOT NULL`, kept across the swap until the change completes) `SET NOT NULL` on the
/// column it renames in scans nothing. A row written with triggers disabled is refused by it.
fn staged_check_artifact(def: &EntityDef, f: &FieldDef) -> Option<Artifact> {
    let col = quote_ident(&f.column);
    let cond = match f.encryption_stage? {
        Stage::Sealing if f.required => format!("{} IS NOT NULL", quote_ident(&f.sealed_column())),
        Stage::Sealing => format!(
            "{col} IS NULL OR {} IS NOT NULL",
            quote_ident(&f.sealed_column())
        ),
        Stage::Scrubbing if f.required => format!("{col} IS NOT NULL"),
        Stage::Scrubbing => return None,
    };
    Some(Artifact {
        key: format!("f{}.sealedcheck", f.id),
        name: sealed_check_name(&def.slug, &f.name),
        kind: ArtifactKind::Check,
        table: def.slug.clone(),
        body: format!("CHECK ({cond}) NOT VALID"),
        fields: vec![f.id],
    })
}

fn own_field_artifacts(ctx: &Ctx, def: &EntityDef, f: &FieldDef) -> Vec<Artifact> {
    let e = &def.slug;
    let mut out = Vec::new();
    if !f.has_column() {
        return out;
    }
    let col = quote_ident(&f.column);
    if f.encrypted {
        // the column holds sealed values: the stamp trigger checks the field's rules on the
        // plaintext before sealing it; unique and index work on the blind index
        let blind = format!("(({}))", crate::crypto::blind_index_sql(&col));
        // a blind index only ever answers equality, and its keys are random: a hash index holds
        // them smaller and takes a new one without the B-tree's descent and page splits at random
        // places (a UNIQUE constraint needs a B-tree)
        let blind_hash = format!("USING hash {blind}");
        if f.converting_blind() {
            // plaintext and sealed values side by side while they are converted: the plain
            // constraint (or index) keeps the plaintext ones, a partial blind index the sealed
            // ones, and the stamp trigger compares a value written with the other form
            let sealed_only = format!(
                "{} WHERE starts_with({col}, {})",
                if f.unique { &blind } else { &blind_hash },
                quote_literal(crate::crypto::PREFIX)
            );
            let (kind, plain_key, plain_name, plain_body, key, name) = if f.unique {
                (
                    ArtifactKind::Unique,
                    "unique",
                    unique_name(e, &f.name),
                    format!("UNIQUE ({col})"),
                    "sunique",
                    sealed_unique_name(e, &f.name),
                )
            } else {
                (
                    ArtifactKind::Index,
                    "index",
                    field_index_name(e, &f.name),
                    format!("({col})"),
                    "sindex",
                    fit_name(&format!("{e}__{}__sealed_idx", f.name)),
                )
            };
            out.push(Artifact {
                key: format!("f{}.{plain_key}", f.id),
                name: plain_name,
                kind,
                table: e.clone(),
                body: plain_body,
                fields: vec![f.id],
            });
            out.push(Artifact {
                key: format!("f{}.{key}", f.id),
                name,
                kind,
                table: e.clone(),
                body: sealed_only,
                fields: vec![f.id],
            });
            return out;
        }
        if f.unique {
            out.push(Artifact {
                key: format!("f{}.bunique", f.id),
                name: unique_name(e, &f.name),
                kind: ArtifactKind::Unique,
                table: e.clone(),
                body: blind,
                fields: vec![f.id],
            });
        } else if f.index {
            out.push(Artifact {
                key: format!("f{}.bindex", f.id),
                name: field_index_name(e, &f.name),
                kind: ArtifactKind::Index,
                table: e.clone(),
                body: blind_hash,
                fields: vec![f.id],
            });
        }
        return out;
    }
    for c in field_checks(f) {
        out.push(Artifact {
            name: check_name(e, &f.name, c.rule),
            body: check_body(ctx, e, &c.key, &c.sql),
            key: c.key,
            kind: ArtifactKind::Check,
            table: e.clone(),
            fields: vec![f.id],
        });
    }
    if f.unique || f.ftype == FieldType::AutoNumber {
        out.push(Artifact {
            key: format!("f{}.unique", f.id),
            name: unique_name(e, &f.name),
            kind: ArtifactKind::Unique,
            table: e.clone(),
            body: format!("UNIQUE ({col})"),
            fields: vec![f.id],
        });
    }
    // a many-to-one relation references its target entity, a user field the tenant's users
    let referenced = if f.is_many_to_one() {
        Some(ctx.table(f.target.as_deref().unwrap_or_default()))
    } else {
        (f.ftype == FieldType::User).then(|| ctx.table(USER_TABLE))
    };
    if let Some(table) = referenced {
        out.push(Artifact {
            key: format!("f{}.fkey", f.id),
            name: fkey_name(e, &f.name),
            kind: ArtifactKind::ForeignKey,
            table: e.clone(),
            body: format!(
                "FOREIGN KEY ({col}) REFERENCES {table} (\"id\") ON DELETE {}",
                f.on_delete().sql()
            ),
            fields: vec![f.id],
        });
    }
    let wants_index = (f.index || f.is_many_to_one() || f.ftype == FieldType::User)
        && f.ftype != FieldType::Reference;
    if wants_index && !f.unique {
        out.push(Artifact {
            key: format!("f{}.index", f.id),
            name: field_index_name(e, &f.name),
            kind: ArtifactKind::Index,
            table: e.clone(),
            body: format!("({col})"),
            fields: vec![f.id],
        });
    }
    if f.ftype == FieldType::Reference {
        out.push(Artifact {
            key: format!("f{}.refindex", f.id),
            name: field_index_name(e, &f.name),
            kind: ArtifactKind::Index,
            table: e.clone(),
            body: format!("((({col}).id))"),
            fields: vec![f.id],
        });
        out.push(Artifact {
            key: format!("f{}.refcheck", f.id),
            name: fit_name(&format!("udm_ref__{}", f.name)),
            kind: ArtifactKind::Trigger,
            table: e.clone(),
            body: format!(
                "CREATE CONSTRAINT TRIGGER {{name}} AFTER INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION udm.reference_check({}, {})",
                ctx.table(e),
                quote_literal(e),
                quote_literal(&f.id.to_string())
            ),
            fields: vec![f.id],
        });
        for t in &f.targets {
            out.push(Artifact {
                key: format!("f{}.refguard.{t}", f.id),
                name: fit_name(&format!("udm_ref__{e}__{}", f.name)),
                kind: ArtifactKind::Trigger,
                table: t.clone(),
                body: format!(
                    "CREATE TRIGGER {{name}} BEFORE DELETE ON {} FOR EACH ROW EXECUTE FUNCTION udm.reference_on_delete({}, {}, {})",
                    ctx.table(t),
                    quote_literal(t),
                    quote_literal(e),
                    quote_literal(&f.id.to_string())
                ),
                fields: vec![f.id],
            });
        }
    }
    out
}

/// While encryption is turned on for field `f` in stages (`Stage::Sealing`): the blind index the
/// encrypted field will have, built on the hidden column of sealed values under a name of its
/// own. It has the key of the encrypted field's artifact, so that the swap (which gives the
/// hidden column the field's column name) renames it instead of building it again.
fn staged_blind_artifact(ctx: &Ctx, def: &EntityDef, f: &FieldDef) -> Artifact {
    let enc = FieldDef {
        column: f.sealed_column(),
        ..f.as_encrypted()
    };
    let mut a = field_artifacts(ctx, def, &enc)
        .into_iter()
        .next()
        .expect("an encrypted unique or indexed field has a blind index");
    a.name = if f.unique {
        sealed_unique_name(&def.slug, &f.name)
    } else {
        fit_name(&format!("{}__{}__sealed_idx", def.slug, f.name))
    };
    a
}

/// Whether the entity's artifacts read other entities' definitions (rules over relation paths,
/// or, with access control, a policy inside a scope root): only then does planning need the
/// tenant's model.
pub fn reads_other_entities(def: &EntityDef, access: bool) -> bool {
    if access && def.access.as_ref().is_some_and(|a| a.parent.is_some()) {
        return true;
    }
    related_rules::reads_related(def)
}

/// A rule compiled against the tenant, if it reads related records (`None` for a rule over the
/// entity's own fields, which a CHECK constraint carries).
pub fn related_rule(ctx: &Ctx, def: &EntityDef, check: &str) -> Result<Option<CompiledRule>> {
    let Some(model) = ctx.model else {
        return Ok(None);
    };
    let tenant = WithEntity {
        base: model,
        slug: &def.slug,
        def: Some(def),
    };
    let c = related_rules::compile(&tenant, def, check)?;
    Ok((!c.chains.is_empty()).then_some(c))
}

pub fn related_rule_trigger_name(entity: &str, rule: &str, own: bool) -> String {
    fit_name(&format!(
        "{entity}__{rule}__{}",
        if own { "rule" } else { "recheck" }
    ))
}

/// The probes of udm's trigger `trigger` on `table` for rule `rule` of `def`, planned from the
/// definition (None when udm plans no such trigger): what `udm.rule_trigger` runs.
pub fn related_rule_probes(
    ctx: &Ctx,
    def: &EntityDef,
    rule: &str,
    trigger: &str,
    table: &str,
) -> Result<Option<Vec<related_rules::Probe>>> {
    let Some(r) = def.rules.iter().find(|r| r.name == rule) else {
        return Ok(None);
    };
    let Some(c) = related_rule(ctx, def, &r.check)? else {
        return Ok(None);
    };
    if table == def.slug && trigger == related_rule_trigger_name(&def.slug, rule, true) {
        let own = related_rules::own_trigger(ctx.schema, def, &c, Default::default());
        return Ok(Some(own.probes));
    }
    if trigger == related_rule_trigger_name(&def.slug, rule, false) {
        return Ok(related_rules::recheck_triggers(ctx.schema, def, &c)
            .into_iter()
            .find(|t| t.table == table)
            .map(|t| t.probes));
    }
    Ok(None)
}

/// A rule over related records: a constraint trigger on the entity's table (key `r.<rule>`)
/// and one on every table it reads (key `r.<rule>@<table>`).
fn related_rule_artifacts(
    ctx: &Ctx,
    def: &EntityDef,
    rule: &str,
    c: &CompiledRule,
    fields: &[u32],
) -> Vec<Artifact> {
    let key = format!("r.{rule}");
    let own_columns = fields
        .iter()
        .filter_map(|id| def.field_by_id(*id))
        .filter(|f| f.has_column())
        .map(|f| f.column.clone())
        .collect();
    let own = related_rules::own_trigger(ctx.schema, def, c, own_columns);
    let mut out = vec![Artifact {
        key: key.clone(),
        name: related_rule_trigger_name(&def.slug, rule, true),
        kind: ArtifactKind::ConstraintTrigger,
        table: def.slug.clone(),
        body: related_rules::trigger_body(ctx.schema, &def.slug, &key, &own),
        fields: fields.to_vec(),
    }];
    for t in related_rules::recheck_triggers(ctx.schema, def, c) {
        out.push(Artifact {
            key: format!("{key}@{}", t.table),
            name: related_rule_trigger_name(&def.slug, rule, false),
            kind: ArtifactKind::ConstraintTrigger,
            table: t.table.clone(),
            body: related_rules::trigger_body(ctx.schema, &def.slug, &key, &t),
            fields: fields.to_vec(),
        });
    }
    out
}

/// The artifacts of an entity's rules: CHECK constraints, and triggers for rules over related
/// records (some on the tables those rules read).
pub fn rule_artifacts(ctx: &Ctx, def: &EntityDef) -> Result<Vec<Artifact>> {
    let mut out = Vec::new();
    for r in &def.rules {
        let context = || format!("entity \"{}\", rule \"{}\"", def.slug, r.name);
        let fields: Vec<u32> = crate::rules::rule_fields(&r.check)?
            .iter()
            .filter_map(|n| def.field(n).map(|f| f.id))
            .collect();
        if let Some(related) = related_rule(ctx, def, &r.check).map_err(|e| e.context(context()))? {
            out.extend(related_rule_artifacts(ctx, def, &r.name, &related, &fields));
            continue;
        }
        let cond = compile_rule(def, &r.check).map_err(|e| e.context(context()))?;
        out.push(Artifact {
            key: format!("r.{}", r.name),
            name: rule_constraint_name(&def.slug, &r.name),
            kind: ArtifactKind::Check,
            table: def.slug.clone(),
            body: check_body(ctx, &def.slug, &format!("r.{}", r.name), &cond),
            fields,
        });
    }
    Ok(out)
}

/// All artifacts of an entity's active definition.
pub fn entity_artifacts(ctx: &Ctx, def: &EntityDef) -> Result<Vec<Artifact>> {
    let mut out = Vec::new();
    for f in &def.fields {
        out.extend(field_artifacts(ctx, def, f));
    }
    out.extend(rule_artifacts(ctx, def)?);
    for i in &def.indexes {
        let mut cols = Vec::new();
        let mut ids = Vec::new();
        for n in &i.fields {
            if SYSTEM_COLUMNS.contains(&n.as_str()) {
                cols.push(quote_ident(n));
                continue;
            }
            let f = def.field_or_err(n)?;
            cols.push(quote_ident(&f.column));
            ids.push(f.id);
        }
        out.push(Artifact {
            key: format!("i.{}", i.name),
            name: i.name.clone(),
            kind: if i.unique {
                ArtifactKind::Unique
            } else {
                ArtifactKind::Index
            },
            table: def.slug.clone(),
            body: format!("({})", cols.join(", ")),
            fields: ids,
        });
    }
    out.push(Artifact {
        key: "stamp".into(),
        name: STAMP_TRIGGER.into(),
        kind: ArtifactKind::Trigger,
        table: def.slug.clone(),
        body: stamp_trigger_body(ctx, def),
        fields: vec![],
    });
    // an entity with auditing off has no audit triggers: its writes pay nothing for them
    let audit_triggers: &[(&str, &str, bool)] = if def.audit {
        &[
            ("audit", AUDIT_TRIGGER, false),
            ("audit_flush", AUDIT_FLUSH_TRIGGER, true),
        ]
    } else {
        &[]
    };
    for &(key, name, flush) in audit_triggers {
        out.push(Artifact {
            key: key.into(),
            name: name.into(),
            kind: ArtifactKind::Trigger,
            table: def.slug.clone(),
            body: audit_trigger_body(
                &ctx.table(&def.slug),
                &trigger_table_args(&def.slug, None),
                flush,
            ),
            fields: vec![],
        });
    }
    if def.lock.is_some() {
        out.push(Artifact {
            key: "lock".into(),
            name: LOCK_TRIGGER.into(),
            kind: ArtifactKind::Trigger,
            table: def.slug.clone(),
            body: format!(
                "BEFORE UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION udm.lock_guard({})",
                ctx.table(&def.slug),
                quote_literal(&def.slug)
            ),
            fields: vec![],
        });
    }
    if ctx.access {
        out.extend(access_artifacts(ctx, def));
    }
    // Derived relation names share one namespace per schema: refuse collisions up front.
    let mut seen: BTreeMap<(String, String), &str> = BTreeMap::new();
    for a in &out {
        let ns = match a.kind {
            ArtifactKind::Index | ArtifactKind::Unique => "relation".to_string(),
            _ => format!("{}:{:?}", a.table, a.kind),
        };
        if let Some(other) = seen.insert((ns, a.name.clone()), &a.key) {
            return Err(UdmError::new(
                SqlState::DuplicateObject,
                format!(
                    "entity \"{}\": \"{}\" and \"{}\" would both be named \"{}\"",
                    def.slug, other, a.key, a.name
                ),
            )
            .hint("give the index another name"));
        }
    }
    Ok(out)
}

/// A unique artifact made as a unique index (an entity's index over fields, an encrypted
/// field's blind index) rather than a UNIQUE constraint.
fn unique_index(a: &Artifact) -> bool {
    a.key.starts_with('i') || a.key.ends_with(".bunique") || a.key.ends_with(".sunique")
}

fn add_artifact_sql(ctx: &Ctx, a: &Artifact, not_valid: bool) -> String {
    let t = ctx.table(&a.table);
    let name = quote_ident(&a.name);
    match a.kind {
        ArtifactKind::Check | ArtifactKind::ForeignKey => format!(
            "ALTER TABLE {t} ADD CONSTRAINT {name} {}{}",
            a.body,
            if not_valid { " NOT VALID" } else { "" }
        ),
        ArtifactKind::Unique if unique_index(a) => {
            format!("CREATE UNIQUE INDEX {name} ON {t} {}", a.body)
        }
        ArtifactKind::Unique => format!("ALTER TABLE {t} ADD CONSTRAINT {name} {}", a.body),
        ArtifactKind::Index => format!("CREATE INDEX {name} ON {t} {}", a.body),
        ArtifactKind::Trigger
            if matches!(
                a.key.as_str(),
                "stamp" | "audit" | "audit_flush" | "lock" | "access"
            ) =>
        {
            format!("CREATE TRIGGER {name} {}", a.body)
        }
        ArtifactKind::ConstraintTrigger => {
            format!("CREATE CONSTRAINT TRIGGER {name} {}", a.body)
        }
        ArtifactKind::Trigger => a.body.replace("{name}", &name),
        ArtifactKind::RowSecurity => format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
        ArtifactKind::Policy => format!(
            "CREATE POLICY {name} ON {t} USING ({}) WITH CHECK (true)",
            a.body
        ),
    }
}

/// Steps that turn artifacts `before` into `after`: (drops, additions).
pub fn replace_artifacts(
    ctx: &Ctx,
    before: &[Artifact],
    after: &[Artifact],
) -> (Vec<Step>, Vec<Step>) {
    let drops = before
        .iter()
        .filter(|a| !after.contains(a))
        .map(|a| Step::Sql(drop_artifact_sql(ctx, a)))
        .collect();
    let adds = after
        .iter()
        .filter(|a| !before.contains(a))
        .map(|a| Step::Sql(add_artifact_sql(ctx, a, false)))
        .collect();
    (drops, adds)
}

fn drop_artifact_sql(ctx: &Ctx, a: &Artifact) -> String {
    let t = ctx.table(&a.table);
    let name = quote_ident(&a.name);
    match a.kind {
        ArtifactKind::Unique if unique_index(a) => {
            format!("DROP INDEX {}", qualified(ctx.schema, &a.name))
        }
        ArtifactKind::Check | ArtifactKind::ForeignKey | ArtifactKind::Unique => {
            format!("ALTER TABLE {t} DROP CONSTRAINT {name}")
        }
        ArtifactKind::Index => format!("DROP INDEX {}", qualified(ctx.schema, &a.name)),
        ArtifactKind::Trigger | ArtifactKind::ConstraintTrigger => {
            format!("DROP TRIGGER {name} ON {t}")
        }
        ArtifactKind::RowSecurity => format!("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY"),
        ArtifactKind::Policy => format!("DROP POLICY {name} ON {t}"),
    }
}

/// The statements that bring an entity's triggers, policies and its user fields' foreign keys to
/// what this version of udm plans, whatever an earlier version made (an upgrade, a repair):
/// each is dropped if it exists and made again. Junction tables' triggers and policies too.
pub fn refresh_sql(ctx: &Ctx, def: &EntityDef) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in entity_artifacts(ctx, def)? {
        let user_fkey = a.kind == ArtifactKind::ForeignKey
            && a.fields.iter().any(|id| {
                def.field_by_id(*id)
                    .is_some_and(|f| f.ftype == FieldType::User)
            });
        let t = ctx.table(&a.table);
        let name = quote_ident(&a.name);
        let drop = match a.kind {
            ArtifactKind::Trigger | ArtifactKind::ConstraintTrigger => {
                format!("DROP TRIGGER IF EXISTS {name} ON {t}")
            }
            ArtifactKind::Policy => format!("DROP POLICY IF EXISTS {name} ON {t}"),
            ArtifactKind::ForeignKey if user_fkey => {
                format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {name}")
            }
            _ => continue,
        };
        out.push(drop);
        out.push(add_artifact_sql(ctx, &a, false));
    }
    for f in def.fields.iter().chain(&def.removed_fields) {
        let Some(j) = f.junction.as_deref() else {
            continue;
        };
        let jt = qualified(ctx.schema, j);
        for trigger in [AUDIT_TRIGGER, AUDIT_FLUSH_TRIGGER, ACCESS_TRIGGER] {
            out.push(format!(
                "DROP TRIGGER IF EXISTS {} ON {jt}",
                quote_ident(trigger)
            ));
        }
        // (as `junction_sql` makes them: whether the entity audits is read when they fire)
        out.extend(junction_audit_sql(&jt, &def.slug, f));
        if ctx.access {
            out.push(format!(
                "DROP POLICY IF EXISTS {} ON {jt}",
                quote_ident(ACCESS_POLICY)
            ));
            out.extend(junction_access_sql(ctx, &def.slug, f));
        }
    }
    Ok(out)
}

fn rename_artifact_sql(ctx: &Ctx, a: &Artifact, new_name: &str) -> String {
    let t = ctx.table(&a.table);
    match a.kind {
        ArtifactKind::Index => {
            format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(ctx.schema, &a.name),
                quote_ident(new_name)
            )
        }
        ArtifactKind::Unique if unique_index(a) => {
            format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(ctx.schema, &a.name),
                quote_ident(new_name)
            )
        }
        ArtifactKind::Policy => {
            format!(
                "ALTER POLICY {} ON {t} RENAME TO {}",
                quote_ident(&a.name),
                quote_ident(new_name)
            )
        }
        ArtifactKind::Trigger | ArtifactKind::ConstraintTrigger => {
            format!(
                "ALTER TRIGGER {} ON {t} RENAME TO {}",
                quote_ident(&a.name),
                quote_ident(new_name)
            )
        }
        _ => format!(
            "ALTER TABLE {t} RENAME CONSTRAINT {} TO {}",
            quote_ident(&a.name),
            quote_ident(new_name)
        ),
    }
}

// ------------------------------------------------------------------ create

/// The columns of a junction table.
const JUNCTION_COLUMNS: &str = "\"source_id\" uuid NOT NULL, \"target_id\" uuid NOT NULL, \
     \"created_at\" timestamp with time zone NOT NULL DEFAULT now()";

/// The key constraints of a junction table, named after `j`, the name the table had when it was
/// made (a rename or a removal renames the table, not its constraints).
fn junction_keys(ctx: &Ctx, entity: &str, f: &FieldDef, j: &str) -> [String; 3] {
    let target = f.target.as_deref().unwrap_or_default();
    [
        format!(
            "CONSTRAINT {} PRIMARY KEY (\"source_id\", \"target_id\")",
            quote_ident(&fit_name(&format!("{j}__pkey")))
        ),
        format!(
            "CONSTRAINT {} FOREIGN KEY (\"source_id\") REFERENCES {} (\"id\") ON DELETE CASCADE",
            quote_ident(&fit_name(&format!("{j}__source__fkey"))),
            ctx.table(entity)
        ),
        format!(
            "CONSTRAINT {} FOREIGN KEY (\"target_id\") REFERENCES {} (\"id\") ON DELETE CASCADE",
            quote_ident(&fit_name(&format!("{j}__target__fkey"))),
            ctx.table(target)
        ),
    ]
}

/// What a junction table has besides its columns and keys: the index of its targets, the
/// tenant's privileges (`grant`), its comment, the audit triggers and, in tenants with members,
/// access control. `j` as for `junction_keys`; the table is `f.junction`.
fn junction_rest(ctx: &Ctx, entity: &str, f: &FieldDef, j: &str, grant: bool) -> Vec<String> {
    let jt = qualified(ctx.schema, f.junction.as_deref().unwrap_or_default());
    let target = f.target.as_deref().unwrap_or_default();
    let mut out = vec![format!(
        "CREATE INDEX {} ON {jt} (\"target_id\")",
        quote_ident(&fit_name(&format!("{j}__target__idx")))
    )];
    if grant {
        out.push(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {jt} TO {}",
            quote_ident(ctx.role)
        ));
    }
    out.push(format!(
        "COMMENT ON TABLE {jt} IS {}",
        quote_literal(&format!(
            "udm many-to-many links of {entity}.{} to {target}",
            f.name
        ))
    ));
    out.extend(junction_audit_sql(&jt, entity, f));
    if ctx.access {
        out.extend(junction_access_sql(ctx, entity, f));
    }
    out
}

fn junction_sql(ctx: &Ctx, entity: &str, f: &FieldDef) -> Vec<String> {
    let j = f.junction.clone().unwrap_or_default();
    let jt = qualified(ctx.schema, &j);
    let mut out = vec![format!(
        "CREATE TABLE {jt} ({JUNCTION_COLUMNS}, {})",
        junction_keys(ctx, entity, f, &j).join(", ")
    )];
    out.extend(junction_rest(ctx, entity, f, &j, true));
    out
}

/// Access control on the junction table of a many-to-many field, in a tenant with members: a
/// member sees the links between records they see (the source's and target's own policies decide,
/// in the sub-selects), and `udm.link_guard` holds link changes to what changing the field on
/// the source record needs (the entity's update permission or the record's editor level, and
/// the field's write permission).
pub fn junction_access_sql(ctx: &Ctx, entity: &str, f: &FieldDef) -> Vec<String> {
    let Some(j) = f.junction.as_deref() else {
        return Vec::new();
    };
    let jt = qualified(ctx.schema, j);
    let me = quote_ident(j);
    let target = f.target.as_deref().unwrap_or_default();
    let using = if ctx.citus {
        // no sub-selects on Citus: the records of either side the session sees, once per command
        let s = quote_literal(ctx.schema);
        format!(
            "udm.id_in(\"source_id\", udm.visible_ids({s}, {})) \
             AND udm.id_in(\"target_id\", udm.visible_ids({s}, {}))",
            quote_literal(entity),
            quote_literal(target)
        )
    } else {
        format!(
            "EXISTS (SELECT 1 FROM {} AS s WHERE s.\"id\" = {me}.\"source_id\") \
             AND EXISTS (SELECT 1 FROM {} AS t WHERE t.\"id\" = {me}.\"target_id\")",
            ctx.table(entity),
            ctx.table(target),
        )
    };
    vec![
        format!("ALTER TABLE {jt} ENABLE ROW LEVEL SECURITY"),
        format!(
            "CREATE POLICY {} ON {jt} USING ({using}) WITH CHECK (true)",
            quote_ident(ACCESS_POLICY),
        ),
        format!(
            "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE ON {jt} FOR EACH ROW EXECUTE FUNCTION udm.link_guard({})",
            quote_ident(ACCESS_TRIGGER),
            trigger_table_args(entity, Some(f.id))
        ),
    ]
}

/// Privileges of the tenant role on an entity table: all DML, and SELECT on every column except
/// password hashes. `fresh` tables have no grants yet, so nothing needs revoking.
pub fn grant_sql(ctx: &Ctx, def: &EntityDef, fresh: bool) -> Vec<String> {
    let t = ctx.table(&def.slug);
    let role = quote_ident(ctx.role);
    let secret = def
        .fields
        .iter()
        .chain(def.removed_fields.iter())
        .any(|f| f.ftype == FieldType::Password);
    let mut out = Vec::new();
    if !fresh {
        out.push(format!("REVOKE ALL ON {t} FROM {role}"));
    }
    if !secret {
        out.push(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {role}"
        ));
        return out;
    }
    let mut cols: Vec<String> = SYSTEM_COLUMNS.iter().map(|c| quote_ident(c)).collect();
    for f in def.fields.iter().chain(def.removed_fields.iter()) {
        if f.has_column() && f.ftype != FieldType::Password {
            cols.push(quote_ident(&f.column));
        }
    }
    out.push(format!("GRANT INSERT, UPDATE, DELETE ON {t} TO {role}"));
    out.push(format!(
        "GRANT SELECT ({}) ON {t} TO {role}",
        cols.join(", ")
    ));
    out
}

/// The system columns every entity table starts with.
fn system_columns() -> Vec<String> {
    vec![
        format!("\"id\" uuid NOT NULL DEFAULT {}", crate::ids::NEW_ID_SQL),
        "\"created_at\" timestamp with time zone NOT NULL DEFAULT now()".to_string(),
        "\"updated_at\" timestamp with time zone NOT NULL DEFAULT now()".to_string(),
        "\"created_by\" text".to_string(),
        "\"updated_by\" text".to_string(),
        "\"_version\" integer NOT NULL DEFAULT 1".to_string(),
    ]
}

/// An entity's artifacts as `create_entity` makes them: the constraints on its own table that
/// `CREATE TABLE` holds (`CONSTRAINT name body`, the primary key first), and the rest as
/// statements (indexes, triggers, rule triggers on other tables, row security).
fn split_artifacts(ctx: &Ctx, def: &EntityDef, artifacts: &[Artifact]) -> (Vec<String>, Vec<Step>) {
    let e = &def.slug;
    let mut inline = vec![format!(
        "CONSTRAINT {} PRIMARY KEY (\"id\")",
        quote_ident(&pkey_name(e))
    )];
    let mut later = Vec::new();
    for a in artifacts {
        let self_only = a.table == *e;
        match a.kind {
            ArtifactKind::Check | ArtifactKind::ForeignKey if self_only => {
                inline.push(format!("CONSTRAINT {} {}", quote_ident(&a.name), a.body))
            }
            ArtifactKind::Unique if self_only && !unique_index(a) => {
                inline.push(format!("CONSTRAINT {} {}", quote_ident(&a.name), a.body))
            }
            _ => later.push(Step::Sql(add_artifact_sql(ctx, a, false))),
        }
    }
    (inline, later)
}

/// The steps that create an entity's table from scratch.
pub fn create_entity(ctx: &Ctx, def: &EntityDef) -> Result<Vec<Step>> {
    let e = &def.slug;
    let mut cols = system_columns();
    for f in def.fields.iter().filter(|f| f.has_column()) {
        cols.push(column_sql(ctx, e, f));
    }
    let artifacts = entity_artifacts(ctx, def)?;
    let (inline, later) = split_artifacts(ctx, def, &artifacts);
    cols.extend(inline);
    let mut steps = vec![Step::Sql(format!(
        "CREATE TABLE {} (\n  {}\n)",
        ctx.table(e),
        cols.join(",\n  ")
    ))];
    steps.extend(later);
    for f in def.fields.iter().filter(|f| f.is_many_to_many()) {
        steps.extend(junction_sql(ctx, e, f).into_iter().map(Step::Sql));
    }
    steps.extend(grant_sql(ctx, def, true).into_iter().map(Step::Sql));
    Ok(steps)
}

// ------------------------------------------------------------------ import

/// The fields of an entity that have a column in its table, in the order their columns were
/// added (field ids grow with every field added; removing a field renames its column and keeps
/// it in place): active and removed fields alike.
pub fn column_fields(def: &EntityDef) -> Vec<&FieldDef> {
    let mut out: Vec<&FieldDef> = def
        .fields
        .iter()
        .chain(def.removed_fields.iter())
        .filter(|f| f.has_column())
        .collect();
    out.sort_by_key(|f| f.id);
    out
}

/// The columns of an entity's table (name, PostgreSQL type), in table order: the system columns,
/// then `column_fields`.
pub fn table_columns(def: &EntityDef) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![
        ("id".into(), "uuid".into()),
        ("created_at".into(), "timestamp with time zone".into()),
        ("updated_at".into(), "timestamp with time zone".into()),
        ("created_by".into(), "text".into()),
        ("updated_by".into(), "text".into()),
        ("_version".into(), "integer".into()),
    ];
    for f in column_fields(def) {
        out.push((f.column.clone(), f.pg_type()));
    }
    out
}

/// The columns of a junction table (name, PostgreSQL type).
pub fn junction_columns() -> Vec<(String, String)> {
    vec![
        ("source_id".into(), "uuid".into()),
        ("target_id".into(), "uuid".into()),
        ("created_at".into(), "timestamp with time zone".into()),
    ]
}

/// A removed field's column as removing left it: no default, NOT NULL only where PostgreSQL keeps
/// it (an auto number's identity).
fn removed_column_sql(ctx: &Ctx, entity: &str, f: &FieldDef) -> String {
    let mut s = format!("{} {}", quote_ident(&f.column), f.pg_type());
    if f.ftype == FieldType::AutoNumber {
        s.push_str(&format!(
            " GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME {}) NOT NULL",
            qualified(ctx.schema, &sequence_name(entity, &f.name))
        ));
    }
    s
}

/// What importing (or cloning) an entity makes, in two parts around loading its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportDdl {
    /// Before the rows: its table and its junction tables with their columns only (no keys,
    /// constraints, indexes or triggers: rows are loaded as they are, nothing fires).
    pub tables: Vec<String>,
    /// After the rows, before any entity's `after`: the primary keys of its tables (foreign
    /// keys of other tables need them).
    pub keys: Vec<String>,
    /// After the rows: what `create_entity` makes around the columns (and a later removal left),
    /// each constraint validated against the rows loaded: keys and constraints, indexes,
    /// triggers, row security and grants, junction tables' keys, and checks that the rules over
    /// related records hold for every record. For a dropped entity, what dropping it left: no
    /// grants, and no triggers of its rules on other tables.
    pub after: Vec<Step>,
}

/// The DDL of an entity in a tenant being imported: the same artifacts a definition creates, for
/// a table that also holds the columns of its removed fields (in place) and the junction tables
/// of removed many-to-many fields.
pub fn import_entity(ctx: &Ctx, def: &EntityDef, dropped: bool) -> Result<ImportDdl> {
    let e = &def.slug;
    let t = ctx.table(e);
    let active: std::collections::BTreeSet<u32> = def.fields.iter().map(|f| f.id).collect();
    let mut cols = system_columns();
    for f in column_fields(def) {
        cols.push(if active.contains(&f.id) {
            column_sql(ctx, e, f)
        } else {
            removed_column_sql(ctx, e, f)
        });
    }
    cols.extend(def.fields.iter().filter_map(stage_column_sql));
    let mut tables = vec![format!("CREATE TABLE {t} (\n  {}\n)", cols.join(",\n  "))];
    let mut artifacts = entity_artifacts(ctx, def)?;
    if dropped {
        // dropping an entity takes its rules' triggers off other tables
        let foreign: Vec<Artifact> = rule_artifacts(ctx, def)?
            .into_iter()
            .filter(|a| a.table != *e)
            .collect();
        artifacts.retain(|a| !foreign.contains(a));
    }
    let (inline, later) = split_artifacts(ctx, def, &artifacts);
    let mut keys = vec![format!("ALTER TABLE {t} ADD {}", inline[0])];
    let mut after = Vec::new();
    if inline.len() > 1 && ctx.citus {
        // Citus takes one constraint per ALTER TABLE
        for c in &inline[1..] {
            after.push(Step::Sql(format!("ALTER TABLE {t} ADD {c}")));
        }
    } else if inline.len() > 1 {
        // one statement: PostgreSQL checks the rows against all its CHECK constraints in one scan
        let adds: Vec<String> = inline[1..].iter().map(|c| format!("ADD {c}")).collect();
        after.push(Step::Sql(format!("ALTER TABLE {t} {}", adds.join(", "))));
    }
    after.extend(later);
    for f in def.fields.iter().chain(def.removed_fields.iter()) {
        let Some(jt) = f.junction.as_deref() else {
            continue;
        };
        // named when made: the field's junction name, whatever a removal renamed the table to
        let made_as = if active.contains(&f.id) {
            jt.to_string()
        } else {
            crate::definition::junction_name(e, &f.name)
        };
        let q = qualified(ctx.schema, jt);
        tables.push(format!("CREATE TABLE {q} ({JUNCTION_COLUMNS})"));
        let [pkey, source, target] = junction_keys(ctx, e, f, &made_as);
        keys.push(format!("ALTER TABLE {q} ADD {pkey}"));
        if ctx.citus {
            after.push(Step::Sql(format!("ALTER TABLE {q} ADD {source}")));
            after.push(Step::Sql(format!("ALTER TABLE {q} ADD {target}")));
        } else {
            after.push(Step::Sql(format!(
                "ALTER TABLE {q} ADD {source}, ADD {target}"
            )));
        }
        after.extend(
            junction_rest(ctx, e, f, &made_as, !dropped)
                .into_iter()
                .map(Step::Sql),
        );
    }
    if !dropped {
        after.extend(grant_sql(ctx, def, true).into_iter().map(Step::Sql));
        for r in &def.rules {
            if let Some(c) = related_rule(ctx, def, &r.check)? {
                after.push(Step::RuleHolds {
                    key: format!("r.{}", r.name),
                    sql: related_rules::existing_violators(ctx.schema, e, &c.condition),
                });
            }
        }
    }
    Ok(ImportDdl {
        tables,
        keys,
        after,
    })
}

// ------------------------------------------------------------------ change

/// Whether and how a column can change from one field type to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversion {
    /// Same PostgreSQL type: only constraints change.
    None,
    /// ALTER TYPE after checking that every value survives the round trip.
    Checked,
}

pub fn conversion(entity: &str, old: &FieldDef, new: &FieldDef) -> Result<Conversion> {
    let (a, b) = (&old.ftype, &new.ftype);
    if old.pg_type() == new.pg_type() && old.has_column() == new.has_column() {
        if (*a == FieldType::Password) != (*b == FieldType::Password) {
            return Err(refuse_conversion(
                entity,
                old,
                new,
                "passwords are stored as hashes",
            ));
        }
        if (*a == FieldType::AutoNumber) != (*b == FieldType::AutoNumber) {
            return Err(refuse_conversion(
                entity,
                old,
                new,
                "auto_number values are assigned by udm",
            ));
        }
        return Ok(Conversion::None);
    }
    let special = |t: &FieldType| {
        matches!(
            t,
            FieldType::Password | FieldType::AutoNumber | FieldType::Reference | FieldType::User
        ) || (*t == FieldType::Relation)
    };
    if special(a) || special(b) || old.is_many_to_many() || new.is_many_to_many() {
        return Err(refuse_conversion(
            entity,
            old,
            new,
            "relations, references, users, passwords and auto numbers keep their type",
        ));
    }
    let json = |t: &FieldType| matches!(t, FieldType::Json | FieldType::File);
    let list = |t: &FieldType| {
        matches!(
            t,
            FieldType::MultiSelect | FieldType::Tags | FieldType::Array(_)
        )
    };
    let text = |t: &FieldType| t.is_text_like() && *t != FieldType::Password;
    if json(a) != json(b) && !text(b) {
        return Err(refuse_conversion(
            entity,
            old,
            new,
            "json converts only to text",
        ));
    }
    if list(a) != list(b) && !text(b) {
        return Err(refuse_conversion(
            entity,
            old,
            new,
            "lists convert only to lists or text",
        ));
    }
    let boolish = |t: &FieldType| *t == FieldType::Boolean;
    if boolish(a) != boolish(b) && !text(a) && !text(b) {
        return Err(refuse_conversion(
            entity,
            old,
            new,
            "booleans convert only to and from text",
        ));
    }
    Ok(Conversion::Checked)
}

fn refuse_conversion(entity: &str, old: &FieldDef, new: &FieldDef, why: &str) -> UdmError {
    UdmError::new(
        SqlState::DatatypeMismatch,
        format!(
            "cannot change field \"{}\" of entity \"{entity}\" from {} to {}: {why}",
            old.name,
            old.ftype.name(),
            new.ftype.name()
        ),
    )
    .hint("add a new field of the new type, copy the values, then remove the old field")
}

/// Plans the DDL from `old` to `new` (same entity). Fields are matched by id.
pub fn plan_change(ctx: &Ctx, old: &EntityDef, new: &EntityDef) -> Result<Vec<Step>> {
    let e = &new.slug;
    let t = ctx.table(e);
    let mut checks = Vec::new();
    let mut column_steps = Vec::new();
    let mut fresh_columns: Vec<u32> = Vec::new();
    let mut type_changed: Vec<u32> = Vec::new();
    let mut junction_steps = Vec::new();

    let old_active: BTreeMap<u32, &FieldDef> = old.fields.iter().map(|f| (f.id, f)).collect();
    let old_removed: BTreeMap<u32, &FieldDef> =
        old.removed_fields.iter().map(|f| (f.id, f)).collect();
    let new_active: BTreeMap<u32, &FieldDef> = new.fields.iter().map(|f| (f.id, f)).collect();
    let new_removed: BTreeMap<u32, &FieldDef> =
        new.removed_fields.iter().map(|f| (f.id, f)).collect();

    // purged: in old (either list), gone from new
    for (id, f) in old_active.iter().chain(old_removed.iter()) {
        if new_active.contains_key(id) || new_removed.contains_key(id) {
            continue;
        }
        if f.has_column() {
            column_steps.push(Step::Sql(format!(
                "ALTER TABLE {t} DROP COLUMN {}",
                quote_ident(&f.column)
            )));
        } else if let Some(j) = &f.junction {
            junction_steps.push(Step::Sql(format!(
                "DROP TABLE {}",
                qualified(ctx.schema, j)
            )));
        }
    }
    // removed: active in old, removed in new
    for (id, nf) in &new_removed {
        let Some(of) = old_active.get(id) else {
            continue;
        };
        if of.has_column() {
            column_steps.push(Step::Sql(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                quote_ident(&of.column),
                quote_ident(&nf.column)
            )));
            if of.required {
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {} DROP NOT NULL",
                    quote_ident(&nf.column)
                )));
            }
            if of.default.is_some() {
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {} DROP DEFAULT",
                    quote_ident(&nf.column)
                )));
            }
        } else if let (Some(oj), Some(nj)) = (&of.junction, &nf.junction) {
            junction_steps.push(Step::Sql(format!(
                "ALTER TABLE {} RENAME TO {}",
                qualified(ctx.schema, oj),
                quote_ident(nj)
            )));
        }
    }
    for (id, nf) in &new_active {
        if let Some(rf) = old_removed.get(id) {
            // restored
            if nf.has_column() {
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                    quote_ident(&rf.column),
                    quote_ident(&nf.column)
                )));
                if let Some(d) = default_sql(nf) {
                    column_steps.push(Step::Sql(format!(
                        "ALTER TABLE {t} ALTER COLUMN {} SET DEFAULT {d}",
                        quote_ident(&nf.column)
                    )));
                }
                if nf.required {
                    checks.push(Step::RequireFilled {
                        field: nf.name.clone(),
                        column: rf.column.clone(),
                        sql: format!(
                            "SELECT count(*) FROM {t} WHERE {} IS NULL",
                            quote_ident(&rf.column)
                        ),
                    });
                    column_steps.push(Step::Sql(format!(
                        "ALTER TABLE {t} ALTER COLUMN {} SET NOT NULL",
                        quote_ident(&nf.column)
                    )));
                }
            } else if let (Some(rj), Some(nj)) = (&rf.junction, &nf.junction) {
                junction_steps.push(Step::Sql(format!(
                    "ALTER TABLE {} RENAME TO {}",
                    qualified(ctx.schema, rj),
                    quote_ident(nj)
                )));
            }
            continue;
        }
        let Some(of) = old_active.get(id) else {
            // added
            if nf.has_column() {
                if nf.required && nf.default.is_none() {
                    checks.push(Step::RequireEmpty {
                        field: nf.name.clone(),
                        sql: format!("SELECT EXISTS (SELECT 1 FROM {t})"),
                    });
                }
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ADD COLUMN {}",
                    column_sql(ctx, e, nf)
                )));
                fresh_columns.push(nf.id);
            } else {
                junction_steps.extend(junction_sql(ctx, e, nf).into_iter().map(Step::Sql));
            }
            continue;
        };
        // changed in place
        if !nf.has_column() {
            if of.junction != nf.junction {
                if let (Some(oj), Some(nj)) = (&of.junction, &nf.junction) {
                    junction_steps.push(Step::Sql(format!(
                        "ALTER TABLE {} RENAME TO {}",
                        qualified(ctx.schema, oj),
                        quote_ident(nj)
                    )));
                }
            }
            continue;
        }
        let col = quote_ident(&nf.column);
        if of.column != nf.column {
            column_steps.push(Step::Sql(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {col}",
                quote_ident(&of.column)
            )));
        }
        if of.encryption_stage.is_some() || nf.encryption_stage.is_some() {
            column_steps.extend(stage_steps(&t, of, nf));
            continue;
        }
        if of.encrypted != nf.encrypted {
            // encryption turned on (the column becomes text, holding each value in the canonical
            // form it is sealed in) or, once every value was decrypted, off (back to its type)
            let (from, to) = (of.pg_type(), nf.pg_type());
            if from != to {
                type_changed.push(nf.id);
                let using = match (nf.encrypted, nf.ftype.sealed_form()) {
                    (true, Some((form, _))) => form.replace("$1", &col),
                    _ => format!("{col}::{to}"),
                };
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} TYPE {to} USING {using}"
                )));
            }
            continue;
        }
        let conv = conversion(e, of, nf)?;
        let default_changed = default_sql(of) != default_sql(nf);
        if conv == Conversion::Checked {
            type_changed.push(nf.id);
            let (from, to) = (of.pg_type(), nf.pg_type());
            let ocol = quote_ident(&of.column);
            checks.push(Step::ConversionCheck {
                field: nf.name.clone(),
                from: of.ftype.name(),
                to: nf.ftype.name(),
                sql: format!(
                    "SELECT {ocol}::text FROM {t} WHERE {ocol} IS NOT NULL AND ({ocol}::{to})::{from} IS DISTINCT FROM {ocol} LIMIT 1"
                ),
            });
            if of.default.is_some() {
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} DROP DEFAULT"
                )));
            }
            column_steps.push(Step::Sql(format!(
                "ALTER TABLE {t} ALTER COLUMN {col} TYPE {to} USING {col}::{to}"
            )));
            if let Some(d) = default_sql(nf) {
                column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} SET DEFAULT {d}"
                )));
            }
        } else if default_changed {
            match default_sql(nf) {
                Some(d) => column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} SET DEFAULT {d}"
                ))),
                None => column_steps.push(Step::Sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} DROP DEFAULT"
                ))),
            }
        }
        if !of.required && nf.required {
            checks.push(Step::RequireFilled {
                field: nf.name.clone(),
                column: of.column.clone(),
                sql: format!(
                    "SELECT count(*) FROM {t} WHERE {} IS NULL",
                    quote_ident(&of.column)
                ),
            });
        }
        if of.required != nf.required {
            let what = if nf.required { "SET" } else { "DROP" };
            column_steps.push(Step::Sql(format!(
                "ALTER TABLE {t} ALTER COLUMN {col} {what} NOT NULL"
            )));
        }
    }

    // artifacts: compare old (with old names) and new by key
    let old_arts = entity_artifacts(ctx, old)?;
    let new_arts = entity_artifacts(ctx, new)?;
    let renames_of = |fields: &[u32]| fields.iter().any(|id| type_changed.contains(id));
    let mut drops = Vec::new();
    let mut adds = Vec::new();
    let mut renames = Vec::new();
    let mut rule_checks = Vec::new();
    let mut probes = Vec::new();
    let old_by_key: BTreeMap<&str, &Artifact> =
        old_arts.iter().map(|a| (a.key.as_str(), a)).collect();
    let new_by_key: BTreeMap<&str, &Artifact> =
        new_arts.iter().map(|a| (a.key.as_str(), a)).collect();
    for a in &old_arts {
        match new_by_key.get(a.key.as_str()) {
            Some(n)
                if same_body(old, new, a, n)
                    && !(renames_of(&a.fields) && a.kind == ArtifactKind::Check) =>
            {
                if n.name != a.name {
                    renames.push(Step::Sql(rename_artifact_sql(ctx, a, &n.name)));
                }
            }
            _ => drops.push(Step::Sql(drop_artifact_sql(ctx, a))),
        }
    }
    for a in &new_arts {
        let keep = old_by_key.get(a.key.as_str()).is_some_and(|o| {
            same_body(old, new, o, a) && !(renames_of(&a.fields) && a.kind == ArtifactKind::Check)
        });
        if keep {
            continue;
        }
        let on_fresh = !a.fields.is_empty() && a.fields.iter().all(|id| fresh_columns.contains(id));
        let not_valid =
            on_fresh && matches!(a.kind, ArtifactKind::Check | ArtifactKind::ForeignKey);
        if on_fresh && a.kind == ArtifactKind::Check {
            // the new column holds only its default (or NULL): proving the default proves the table.
            let f = new
                .fields
                .iter()
                .find(|f| f.id == a.fields[0])
                .expect("fresh field");
            if let Some(d) = default_sql(f) {
                let cond = a.body.trim_start_matches("CHECK ");
                checks.push(Step::DefaultCheck {
                    field: f.name.clone(),
                    sql: format!(
                        "SELECT {cond} FROM (SELECT {d} AS {}) AS \"new_row\"",
                        quote_ident(&f.column)
                    ),
                });
            }
        }
        if a.kind == ArtifactKind::ConstraintTrigger && !a.key.contains('@') {
            // a trigger checks rows written from now on; the rows there are checked here
            let name = &a.key[2..];
            let r = new
                .rules
                .iter()
                .find(|r| r.name == name)
                .expect("the rule's artifact");
            if let Some(c) = related_rule(ctx, new, &r.check)? {
                rule_checks.push(Step::RuleHolds {
                    key: format!("r.{name}"),
                    sql: related_rules::existing_violators(ctx.schema, &new.slug, &c.condition),
                });
            }
        }
        if a.kind == ArtifactKind::Check && !on_fresh {
            // a CHECK constraint validates the rows there but names none: find one first
            if let Some(cond) = check_condition(ctx, &a.table, &a.key, &a.body) {
                probes.push(Step::RuleHolds {
                    key: a.key.clone(),
                    sql: format!(
                        "SELECT \"id\"::text FROM {} WHERE NOT ({cond}) LIMIT 1",
                        ctx.table(&a.table)
                    ),
                });
            }
        }
        adds.push(Step::Sql(add_artifact_sql(ctx, a, not_valid)));
    }

    let mut steps = checks;
    steps.extend(drops);
    steps.extend(column_steps);
    steps.extend(junction_steps);
    steps.extend(renames);
    steps.extend(probes);
    steps.extend(adds);
    steps.extend(rule_checks);
    steps.extend(grant_sql(ctx, new, false).into_iter().map(Step::Sql));
    Ok(steps)
}

/// Bodies match when they are equal after writing the old one with the new column names.
fn same_body(old: &EntityDef, new: &EntityDef, a: &Artifact, b: &Artifact) -> bool {
    if a.body == b.body {
        return true;
    }
    let mut body = a.body.clone();
    for id in &a.fields {
        if let (Some(of), Some(nf)) = (old.field_by_id(*id), new.field_by_id(*id)) {
            if of.column != nf.column {
                body = body.replace(&quote_ident(&of.column), &quote_ident(&nf.column));
            }
            if of.encryption_stage == Some(Stage::Sealing)
                && nf.encryption_stage == Some(Stage::Scrubbing)
            {
                body = body.replace(&quote_ident(&of.sealed_column()), &quote_ident(&nf.column));
            }
        }
    }
    body == b.body
}

/// The hidden column of a field whose encryption is turned on in stages (`Stage`), as a table
/// made from its definition (an import) has it: empty, so that `udm_reencrypt` seals the values
/// again (`Sealing`) or finds no plaintext to clear (`Scrubbing`).
fn stage_column_sql(f: &FieldDef) -> Option<String> {
    match f.encryption_stage? {
        Stage::Sealing => Some(format!("{} text", quote_ident(&f.sealed_column()))),
        Stage::Scrubbing => {
            let plain = FieldDef {
                encrypted: false,
                ..f.clone()
            };
            Some(format!(
                "{} {}",
                quote_ident(&f.plain_column()),
                plain.pg_type()
            ))
        }
    }
}

/// The column steps of a field whose encryption is turned on in stages (`Stage`), or turned
/// back off while its values are sealed. None of them rewrites the table: a column added
/// without a default, renamed or dropped changes the catalog only.
fn stage_steps(t: &str, of: &FieldDef, nf: &FieldDef) -> Vec<Step> {
    let col = quote_ident(&nf.column);
    let sealed = quote_ident(&nf.sealed_column());
    let plain = quote_ident(&nf.plain_column());
    let sql = |s: String| Step::Sql(s);
    match (of.encryption_stage, nf.encryption_stage) {
        (None, Some(Stage::Sealing)) => {
            vec![sql(format!("ALTER TABLE {t} ADD COLUMN {sealed} text"))]
        }
        (Some(Stage::Sealing), None) => vec![sql(format!("ALTER TABLE {t} DROP COLUMN {sealed}"))],
        (Some(Stage::Sealing), Some(Stage::Scrubbing)) => {
            // the swap: the old column keeps the plaintext until it is cleared; the hidden one
            // (every value sealed in it) becomes the field's column
            let mut out = vec![sql(format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {plain}",
                quote_ident(&of.column)
            ))];
            if of.required {
                out.push(sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {plain} DROP NOT NULL"
                )));
            }
            out.push(sql(format!(
                "ALTER TABLE {t} RENAME COLUMN {sealed} TO {col}"
            )));
            if nf.required {
                out.push(sql(format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL"
                )));
            }
            out
        }
        (Some(Stage::Scrubbing), None) => vec![sql(format!("ALTER TABLE {t} DROP COLUMN {plain}"))],
        _ => Vec::new(),
    }
}

/// Multi-select values as a text[] literal (used by callers building queries).
pub fn values_array(values: &[String]) -> String {
    text_array(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{apply_field_changes, parse_field, EntityDef, Source};
    use serde_json::json;

    const CTX: Ctx = Ctx {
        model: None,
        access: false,
        schema: "acme",
        role: "tenant_acme",
        citus: false,
    };

    fn product() -> EntityDef {
        EntityDef::parse(
            "product",
            &json!({"label": "Product",
              "fields": [
                {"name": "name", "type": "text", "required": true, "max_length": 200},
                {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
                {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
                {"name": "metadata", "type": "json"},
                {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
                {"name": "sample_date", "type": "date"},
                {"name": "release_date", "type": "date"}],
              "rules": [{"name": "sample_before_release", "check": "sample_date <= release_date",
                         "message": "sample date must not be after release date"}]}),
            Source::Caller,
        )
        .unwrap()
    }

    fn sqls(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Sql(s) => s.clone(),
                Step::ConversionCheck { sql, .. } => format!("CONVERSION {sql}"),
                Step::RequireEmpty { sql, .. } => format!("EMPTY {sql}"),
                Step::RequireFilled { sql, .. } => format!("FILLED {sql}"),
                Step::DefaultCheck { sql, .. } => format!("DEFAULT {sql}"),
                Step::RuleHolds { sql, .. } => format!("HOLDS {sql}"),
            })
            .collect()
    }

    #[test]
    fn a_scope_roots_policy_reads_the_members_tuples_through_udm_tuple_objects() {
        let roadmap = EntityDef::parse(
            "roadmap",
            &json!({"fields": [
                {"name": "name", "type": "text"},
                {"name": "owner_id", "type": "user"}],
              "access": {"scope": "self", "owner": "owner_id"}}),
            Source::Caller,
        )
        .unwrap();
        let ctx = Ctx {
            access: true,
            ..CTX
        };
        let (policy, _) = access_policy(&ctx, &roadmap);
        assert_eq!(
            policy,
            "(SELECT udm.may_read_all('acme', 'roadmap')) OR ((SELECT udm.may_read_scoped('acme', 'roadmap')) \
             AND (udm.id_in(\"id\", (SELECT udm.tuple_objects('acme', 'roadmap'))) \
             OR \"owner_id\" = (SELECT udm.access_user('acme'))))"
        );
        // no sub-select of the tuple table: its plan would depend on a guess at the user's tuples
        assert!(!policy.contains(TUPLE_TABLE), "{policy}");
    }

    #[test]
    fn the_audit_logs_policy_quotes_the_schema() {
        let [rls, policy] = audit_access_sql("we\"ird'o", false);
        assert_eq!(
            rls,
            "ALTER TABLE \"we\"\"ird'o\".\"_udm_audit\" ENABLE ROW LEVEL SECURITY"
        );
        assert!(
            policy.starts_with(
                "CREATE POLICY \"udm_access\" ON \"we\"\"ird'o\".\"_udm_audit\" FOR SELECT"
            ),
            "{policy}"
        );
        assert!(
            policy.contains("(SELECT udm.may_read_audit('we\"ird''o')) OR udm.audit_visible('we\"ird''o', entity, record_id)"),
            "{policy}"
        );
    }

    #[test]
    fn create_table_has_system_columns_constraints_and_trigger() {
        let steps = sqls(&create_entity(&CTX, &product()).unwrap());
        let create = &steps[0];
        assert!(
            create.starts_with("CREATE TABLE \"acme\".\"product\" ("),
            "{create}"
        );
        for want in [
            "\"id\" uuid NOT NULL DEFAULT udm.uuid_v7()",
            "\"_version\" integer NOT NULL DEFAULT 1",
            "\"name\" text NOT NULL",
            "\"price\" numeric(12,2)",
            "\"status\" text DEFAULT 'draft'::text",
            "\"metadata\" jsonb",
            "CONSTRAINT \"product__pkey\" PRIMARY KEY (\"id\")",
            "CONSTRAINT \"product__name__max_length\" CHECK (udm.check_rule((char_length(\"name\") <= 200), 'acme', 'product', 'f1.max_length'))",
            "CONSTRAINT \"product__price__min\" CHECK (udm.check_rule((\"price\" >= '0'::numeric(12,2)), 'acme', 'product', 'f2.min'))",
            "CONSTRAINT \"product__category_id__fkey\" FOREIGN KEY (\"category_id\") REFERENCES \"acme\".\"category\" (\"id\") ON DELETE RESTRICT",
            "CONSTRAINT \"product__sample_before_release__rule\" CHECK (udm.check_rule(((\"sample_date\" <= \"release_date\")), 'acme', 'product', 'r.sample_before_release'))",
        ] {
            assert!(create.contains(want), "missing {want} in\n{create}");
        }
        assert!(steps.contains(
            &"CREATE INDEX \"product__category_id__idx\" ON \"acme\".\"product\" (\"category_id\")"
                .to_string()
        ));
        assert!(steps.contains(
            &"CREATE TRIGGER \"udm_stamp\" BEFORE INSERT OR UPDATE ON \"acme\".\"product\" FOR EACH ROW EXECUTE FUNCTION udm.stamp_row('product')".to_string()
        ));
        assert!(
            steps.contains(
                &"GRANT SELECT, INSERT, UPDATE, DELETE ON \"acme\".\"product\" TO \"tenant_acme\""
                    .to_string()
            ) && !steps.iter().any(|s| s.starts_with("REVOKE")),
            "a new table gets one grant and has nothing to revoke"
        );
    }

    #[test]
    fn audit_triggers_come_and_go_with_auditing() {
        let audited = sqls(&create_entity(&CTX, &product()).unwrap());
        let row = "CREATE TRIGGER \"udm_audit\" AFTER INSERT OR UPDATE OR DELETE ON \"acme\".\"product\" FOR EACH ROW EXECUTE FUNCTION udm.audit_row('product')";
        let flush = "CREATE TRIGGER \"udm_audit_flush\" AFTER INSERT OR UPDATE OR DELETE ON \"acme\".\"product\" FOR EACH STATEMENT EXECUTE FUNCTION udm.audit_flush('product')";
        assert!(audited.iter().any(|s| s == row), "{audited:?}");
        assert!(audited.iter().any(|s| s == flush), "{audited:?}");
        let mut off = product();
        off.audit = false;
        let quiet = sqls(&create_entity(&CTX, &off).unwrap());
        assert!(
            !quiet.iter().any(|s| s.contains("udm_audit")),
            "an entity with auditing off has no audit triggers: {quiet:?}"
        );
        let triggers = |steps: Vec<String>| -> Vec<String> {
            steps
                .into_iter()
                .filter(|s| s.contains("TRIGGER"))
                .collect()
        };
        let switch_off = triggers(sqls(&plan_change(&CTX, &product(), &off).unwrap()));
        assert_eq!(
            switch_off,
            [
                "DROP TRIGGER \"udm_audit\" ON \"acme\".\"product\"",
                "DROP TRIGGER \"udm_audit_flush\" ON \"acme\".\"product\""
            ]
        );
        let switch_on = triggers(sqls(&plan_change(&CTX, &off, &product()).unwrap()));
        assert_eq!(switch_on, [row, flush]);
    }

    #[test]
    fn passwords_are_hidden_from_select_and_the_trigger_names_only_its_entity() {
        let mut d = product();
        d.add_field(
            parse_field(
                &json!({"name": "pin", "type": "password", "min_length": 8}),
                Source::Caller,
            )
            .unwrap(),
        )
        .unwrap();
        let steps = sqls(&create_entity(&CTX, &d).unwrap());
        assert!(
            steps
                .iter()
                .any(|s| s.ends_with("udm.stamp_row('product')")),
            "{steps:#?}"
        );
        let grant = steps
            .iter()
            .find(|s| s.starts_with("GRANT SELECT ("))
            .unwrap();
        assert!(
            grant.contains("\"name\"") && !grant.contains("\"pin\""),
            "{grant}"
        );
    }

    #[test]
    fn adding_a_field_with_default_proves_the_default_instead_of_scanning() {
        let old = product();
        let mut new = old.clone();
        new.add_field(
            parse_field(
                &json!({"name": "stock", "type": "integer", "min": 0, "default": 5}),
                Source::Caller,
            )
            .unwrap(),
        )
        .unwrap();
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert_eq!(steps[0], "DEFAULT SELECT (udm.check_rule((\"stock\" >= '0'::integer), 'acme', 'product', 'f8.min')) FROM (SELECT '5'::integer AS \"stock\") AS \"new_row\"");
        assert!(steps.contains(
            &"ALTER TABLE \"acme\".\"product\" ADD COLUMN \"stock\" integer DEFAULT '5'::integer"
                .to_string()
        ));
        assert!(
            steps.iter().any(|s| s.ends_with("'f8.min')) NOT VALID")),
            "{steps:#?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("DROP"))
                || steps.iter().all(|s| !s.contains("DROP CONSTRAINT"))
        );
    }

    #[test]
    fn required_without_default_needs_an_empty_table() {
        let old = product();
        let mut new = old.clone();
        new.add_field(
            parse_field(
                &json!({"name": "sku", "type": "text", "required": true}),
                Source::Caller,
            )
            .unwrap(),
        )
        .unwrap();
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert_eq!(
            steps[0],
            "EMPTY SELECT EXISTS (SELECT 1 FROM \"acme\".\"product\")"
        );
    }

    #[test]
    fn rename_renames_column_and_artifacts_without_rebuilding() {
        let old = product();
        let mut new = old.clone();
        let f = apply_field_changes(old.field("name").unwrap(), &json!({"name": "title"})).unwrap();
        let i = new.fields.iter().position(|x| x.id == f.id).unwrap();
        new.fields[i] = f;
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert!(steps.contains(
            &"ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"name\" TO \"title\"".to_string()
        ));
        assert!(steps.contains(
            &"ALTER TABLE \"acme\".\"product\" RENAME CONSTRAINT \"product__name__max_length\" TO \"product__title__max_length\"".to_string()
        ));
        assert!(
            !steps
                .iter()
                .any(|s| s.contains("ADD CONSTRAINT") || s.contains("DROP CONSTRAINT")),
            "{steps:#?}"
        );
    }

    /// A field of `def` replaced by `f`.
    fn with_field(def: &EntityDef, f: FieldDef) -> EntityDef {
        let mut out = def.clone();
        let i = out.fields.iter().position(|x| x.id == f.id).unwrap();
        out.fields[i] = f;
        out
    }

    #[test]
    fn encryption_turned_on_for_a_json_field_seals_beside_it_and_swaps_without_a_rewrite() {
        use crate::definition::Stage;
        let old = product();
        let of = old.field("metadata").unwrap();
        let on = apply_field_changes(of, &json!({"encrypted": true})).unwrap();
        assert_eq!(
            (on.encrypted, on.encryption_pending, on.encryption_stage),
            (false, None, Some(Stage::Sealing))
        );
        let sealing = with_field(&old, on.clone());
        let col = format!("_udm_f{}_sealed", on.id);
        let plain = format!("_udm_f{}_plain", on.id);
        let steps = sqls(&plan_change(&CTX, &old, &sealing).unwrap());
        assert_eq!(
            steps
                .iter()
                .filter(|s| s.starts_with("ALTER TABLE") || s.starts_with("CREATE"))
                .collect::<Vec<_>>(),
            [
                &format!("ALTER TABLE \"acme\".\"product\" ADD COLUMN \"{col}\" text"),
                // every value set has its sealed form: checked for the rows written from now on
                // (whatever disables triggers), proven for the others before the swap
                &format!("ALTER TABLE \"acme\".\"product\" ADD CONSTRAINT \"product__metadata__sealed_check\" CHECK (\"metadata\" IS NULL OR \"{col}\" IS NOT NULL) NOT VALID"),
            ],
            "{steps:#?}"
        );
        // the swap: catalog changes only, no type change, nothing built
        let mut swapped = on.as_encrypted();
        swapped.encryption_stage = Some(Stage::Scrubbing);
        let scrubbing = with_field(&old, swapped.clone());
        let steps = sqls(&plan_change(&CTX, &sealing, &scrubbing).unwrap());
        let renames = [
            "ALTER TABLE \"acme\".\"product\" DROP CONSTRAINT \"product__metadata__sealed_check\""
                .to_string(),
            format!("ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"metadata\" TO \"{plain}\""),
            format!("ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"{col}\" TO \"metadata\""),
        ];
        assert_eq!(
            steps
                .iter()
                .filter(|s| s.starts_with("ALTER TABLE") || s.starts_with("CREATE"))
                .collect::<Vec<_>>(),
            renames.iter().collect::<Vec<_>>(),
            "{steps:#?}"
        );
        // scrubbed: the old column goes
        let mut done = swapped.clone();
        done.encryption_stage = None;
        let encrypted = with_field(&old, done.clone());
        let steps = sqls(&plan_change(&CTX, &scrubbing, &encrypted).unwrap());
        assert!(
            steps.contains(&format!(
                "ALTER TABLE \"acme\".\"product\" DROP COLUMN \"{plain}\""
            )),
            "{steps:#?}"
        );
        assert!(
            !steps
                .iter()
                .any(|s| s.contains("ALTER COLUMN") || s.starts_with("CREATE")),
            "{steps:#?}"
        );
        // turned off while sealing: the hidden column goes, the field is as it was
        let back = apply_field_changes(&on, &json!({"encrypted": false})).unwrap();
        assert_eq!(back, *of);
        let steps = sqls(&plan_change(&CTX, &sealing, &old).unwrap());
        assert!(
            steps.contains(&format!(
                "ALTER TABLE \"acme\".\"product\" DROP COLUMN \"{col}\""
            )),
            "{steps:#?}"
        );
        // turned off once encrypted: the values are opened in place, then the type comes back
        let off = apply_field_changes(&done, &json!({"encrypted": false})).unwrap();
        assert_eq!(
            (off.encrypted, off.encryption_pending),
            (true, Some(crate::definition::Toggle::Off))
        );
        let mut plain_again = off.clone();
        plain_again.encrypted = false;
        plain_again.encryption_pending = None;
        let steps = sqls(
            &plan_change(&CTX, &with_field(&old, off), &with_field(&old, plain_again)).unwrap(),
        );
        assert!(
            steps.iter().any(|s| s == "ALTER TABLE \"acme\".\"product\" ALTER COLUMN \"metadata\" TYPE jsonb USING \"metadata\"::jsonb"),
            "{steps:#?}"
        );
        // an old catalog's json field being encrypted in place still gets the text column
        let mut in_place = of.as_encrypted();
        in_place.encryption_pending = Some(crate::definition::Toggle::On);
        let steps = sqls(&plan_change(&CTX, &old, &with_field(&old, in_place)).unwrap());
        assert!(
            steps.iter().any(|s| s == "ALTER TABLE \"acme\".\"product\" ALTER COLUMN \"metadata\" TYPE text USING (\"metadata\")::jsonb::text"),
            "{steps:#?}"
        );
        // refused with it: other changes, unique/index, a type that cannot be encrypted
        for (f, ch, words) in [
            (
                "metadata",
                json!({"encrypted": true, "required": true}),
                "turned on alone",
            ),
            (
                "name",
                json!({"encrypted": true, "unique": true}),
                "turned on alone",
            ),
            ("price", json!({"encrypted": true}), "cannot be encrypted"),
        ] {
            let e = apply_field_changes(old.field(f).unwrap(), &ch).unwrap_err();
            assert_eq!(e.state, SqlState::FeatureNotSupported, "{e:?}");
            assert!(e.message.contains(words), "{}", e.message);
        }
        // while staged, the field waits: no other change, no turning off once swapped
        for (f, ch) in [
            (&on, json!({"label": "Meta"})),
            (&on, json!({"encrypted": false, "label": "Meta"})),
            (&swapped, json!({"encrypted": false})),
            (&swapped, json!({"name": "meta2"})),
        ] {
            let e = apply_field_changes(f, &ch).unwrap_err();
            assert_eq!(
                e.state,
                SqlState::ObjectNotInPrerequisiteState,
                "{ch}: {e:?}"
            );
            assert!(e.message.contains("being turned on"), "{}", e.message);
        }
        assert_eq!(
            apply_field_changes(&on, &json!({"encrypted": true})).unwrap(),
            on
        );
        // the stage is kept in the catalog, and is udm's to set
        let stored = crate::definition::field_to_json(&swapped);
        assert_eq!(stored["encryption_stage"], "scrubbing", "{stored}");
        assert_eq!(parse_field(&stored, Source::Catalog).unwrap(), swapped);
        assert!(parse_field(&stored, Source::Caller).is_err());
    }

    #[test]
    fn a_staged_date_field_builds_its_blind_index_beside_it_and_renames_it_at_the_swap() {
        use crate::definition::Stage;
        for (unique, plain_name, staged_name, create) in [
            (
                false,
                "product__sample_date__idx",
                "product__sample_date__sealed_idx",
                "CREATE INDEX \"product__sample_date__sealed_idx\" ON \"acme\".\"product\" USING hash ((split_part(\"_udm_f2_sealed\", ':', 3)))",
            ),
            (
                true,
                "product__sample_date__key",
                "product__sample_date__sealed_key",
                "CREATE UNIQUE INDEX \"product__sample_date__sealed_key\" ON \"acme\".\"product\" ((split_part(\"_udm_f2_sealed\", ':', 3)))",
            ),
        ] {
            let option = if unique { "unique" } else { "index" };
            let plain = EntityDef::parse(
                "product",
                &json!({"fields": [{"name": "name", "type": "text"},
                                   {"name": "sample_date", "type": "date", option: true, "required": true}]}),
                Source::Caller,
            )
            .unwrap();
            let on = apply_field_changes(&plain.fields[1], &json!({"encrypted": true})).unwrap();
            assert_eq!(on.encryption_stage, Some(Stage::Sealing));
            let sealing = with_field(&plain, on.clone());
            let steps = sqls(&plan_change(&CTX, &plain, &sealing).unwrap());
            let add = steps.iter().position(|s| s.contains("ADD COLUMN")).unwrap();
            let built = steps.iter().position(|s| s == create).unwrap();
            assert!(add < built, "{steps:#?}");
            assert!(steps.contains(&"ALTER TABLE \"acme\".\"product\" ADD CONSTRAINT \"product__sample_date__sealed_check\" CHECK (\"_udm_f2_sealed\" IS NOT NULL) NOT VALID".to_string()), "{steps:#?}");
            assert!(!steps.iter().any(|s| s.contains(plain_name)), "{steps:#?}");
            // the swap: the plain constraint goes, the columns trade names, the blind index is
            // renamed (never built again)
            let mut swapped = on.as_encrypted();
            swapped.encryption_stage = Some(Stage::Scrubbing);
            let scrubbing = with_field(&plain, swapped);
            let steps = sqls(&plan_change(&CTX, &sealing, &scrubbing).unwrap());
            let at = |want: &str| {
                steps
                    .iter()
                    .position(|s| s == want)
                    .unwrap_or_else(|| panic!("{want} not in {steps:#?}"))
            };
            let drop = if unique {
                at("ALTER TABLE \"acme\".\"product\" DROP CONSTRAINT \"product__sample_date__key\"")
            } else {
                at("DROP INDEX \"acme\".\"product__sample_date__idx\"")
            };
            let old_col = at("ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"sample_date\" TO \"_udm_f2_plain\"");
            let null_ok = at("ALTER TABLE \"acme\".\"product\" ALTER COLUMN \"_udm_f2_plain\" DROP NOT NULL");
            let new_col = at("ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"_udm_f2_sealed\" TO \"sample_date\"");
            let required = at("ALTER TABLE \"acme\".\"product\" ALTER COLUMN \"sample_date\" SET NOT NULL");
            let renamed = at(&format!(
                "ALTER INDEX \"acme\".\"{staged_name}\" RENAME TO \"{plain_name}\""
            ));
            assert!(
                drop < old_col && old_col < null_ok && null_ok < new_col && new_col < required
                    && required < renamed,
                "{steps:#?}"
            );
            assert!(
                !steps.iter().any(|s| s.starts_with("CREATE")
                    || s.contains(" TYPE ")
                    || s.contains("sealed_check")),
                "{steps:#?}"
            );
            // a required field's check (proving NOT NULL of the column renamed in, so that SET
            // NOT NULL scans nothing) stays until the change completes
            let mut done = scrubbing.fields[1].clone();
            done.encryption_stage = None;
            let steps = sqls(&plan_change(&CTX, &scrubbing, &with_field(&plain, done)).unwrap());
            let dropped = steps
                .iter()
                .position(|s| s == "ALTER TABLE \"acme\".\"product\" DROP CONSTRAINT \"product__sample_date__sealed_check\"")
                .unwrap();
            let gone = steps
                .iter()
                .position(|s| s.contains("DROP COLUMN \"_udm_f2_plain\""))
                .unwrap();
            assert!(dropped < gone, "{steps:#?}");
            // turned off while sealing: the blind index goes before its column
            let steps = sqls(&plan_change(&CTX, &sealing, &plain).unwrap());
            let idx = steps
                .iter()
                .position(|s| s.starts_with("DROP INDEX") && s.contains(staged_name))
                .unwrap();
            let col = steps
                .iter()
                .position(|s| s.contains("DROP COLUMN \"_udm_f2_sealed\""))
                .unwrap();
            assert!(idx < col, "{steps:#?}");
            // an import of the staged table makes its hidden column
            let ddl = import_entity(&CTX, &sealing, false).unwrap();
            assert!(
                ddl.tables[0].contains("\"_udm_f2_sealed\" text"),
                "{:#?}",
                ddl.tables
            );
        }
    }

    #[test]
    fn encryption_of_a_unique_text_field_keeps_both_forms_unique_while_converting() {
        let mut old = product();
        let i = old.fields.iter().position(|x| x.name == "name").unwrap();
        old.fields[i].unique = true;
        let on = apply_field_changes(&old.fields[i], &json!({"encrypted": true})).unwrap();
        assert!(on.converting_blind());
        let mut new = old.clone();
        new.fields[i] = on;
        // turned on: the plain constraint stays, a partial blind index comes for sealed values
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert!(steps.iter().any(|s| s == "CREATE UNIQUE INDEX \"product__name__sealed_key\" ON \"acme\".\"product\" ((split_part(\"name\", ':', 3))) WHERE starts_with(\"name\", 'udm1:')"), "{steps:#?}");
        assert!(
            !steps.iter().any(|s| s.contains("product__name__key")),
            "{steps:#?}"
        );
        // completed: both go, the blind unique index of an encrypted field comes
        let mut done = new.clone();
        done.fields[i].encryption_pending = None;
        let steps = sqls(&plan_change(&CTX, &new, &done).unwrap());
        assert!(
            steps
                .iter()
                .any(|s| s.contains("DROP CONSTRAINT \"product__name__key\"")),
            "{steps:#?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| s.contains("DROP INDEX") && s.contains("product__name__sealed_key")),
            "{steps:#?}"
        );
        assert!(steps.iter().any(|s| s == "CREATE UNIQUE INDEX \"product__name__key\" ON \"acme\".\"product\" ((split_part(\"name\", ':', 3)))"), "{steps:#?}");
        // turned off: the blind index goes, the plain constraint and the partial one come;
        // completed: only the plain constraint is left
        let off = apply_field_changes(&done.fields[i], &json!({"encrypted": false})).unwrap();
        let mut pending_off = done.clone();
        pending_off.fields[i] = off;
        let steps = sqls(&plan_change(&CTX, &done, &pending_off).unwrap());
        assert!(
            steps
                .iter()
                .any(|s| s.contains("DROP INDEX") && s.contains("product__name__key")),
            "{steps:#?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| s.contains("ADD CONSTRAINT \"product__name__key\" UNIQUE (\"name\")")),
            "{steps:#?}"
        );
        assert!(
            steps
                .iter()
                .any(|s| s.contains("\"product__name__sealed_key\"")
                    && s.contains("WHERE starts_with")),
            "{steps:#?}"
        );
        let mut plain = pending_off.clone();
        plain.fields[i].encrypted = false;
        plain.fields[i].encryption_pending = None;
        let steps = sqls(&plan_change(&CTX, &pending_off, &plain).unwrap());
        assert!(
            steps
                .iter()
                .any(|s| s.contains("DROP INDEX") && s.contains("product__name__sealed_key")),
            "{steps:#?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("product__name__key")),
            "{steps:#?}"
        );
    }

    #[test]
    fn type_change_checks_round_trip_and_rebuilds_checks() {
        let old = product();
        let mut new = old.clone();
        let f =
            apply_field_changes(old.field("price").unwrap(), &json!({"type": "float"})).unwrap();
        let i = new.fields.iter().position(|x| x.id == f.id).unwrap();
        new.fields[i] = f;
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert!(steps[0].starts_with("CONVERSION SELECT \"price\"::text FROM \"acme\".\"product\" WHERE \"price\" IS NOT NULL AND (\"price\"::double precision)::numeric(12,2) IS DISTINCT FROM \"price\""), "{}", steps[0]);
        let drop = steps
            .iter()
            .position(|s| s.contains("DROP CONSTRAINT \"product__price__min\""))
            .unwrap();
        let alter = steps
            .iter()
            .position(|s| s.contains("TYPE double precision"))
            .unwrap();
        let add = steps
            .iter()
            .position(|s| s.contains("ADD CONSTRAINT \"product__price__min\""))
            .unwrap();
        assert!(drop < alter && alter < add);
    }

    #[test]
    fn refused_conversions() {
        let d = product();
        let old = d.field("metadata").unwrap();
        let new = apply_field_changes(old, &json!({"type": "integer"})).unwrap();
        let e = conversion("product", old, &new).unwrap_err();
        assert_eq!(e.state, SqlState::DatatypeMismatch);
        assert!(e.message.contains("from json to integer"));
        let rel = d.field("category_id").unwrap();
        let mut as_uuid = rel.clone();
        as_uuid.ftype = FieldType::Text;
        assert!(conversion("product", rel, &as_uuid).is_err());
        let text = d.field("name").unwrap();
        let email = apply_field_changes(text, &json!({"type": "email"})).unwrap();
        assert_eq!(
            conversion("product", text, &email).unwrap(),
            Conversion::None
        );
    }

    #[test]
    fn remove_and_restore_rename_the_column() {
        let old = product();
        let mut new = old.clone();
        let mut f = new.fields.remove(0);
        f.column = removed_column_name(&f);
        f.removed_in_version = Some(2);
        new.removed_fields.push(f.clone());
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert!(steps.contains(
            &"ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"name\" TO \"_removed_f1_name\""
                .to_string()
        ));
        assert!(steps.contains(
            &"ALTER TABLE \"acme\".\"product\" ALTER COLUMN \"_removed_f1_name\" DROP NOT NULL"
                .to_string()
        ));
        assert!(steps.contains(
            &"ALTER TABLE \"acme\".\"product\" DROP CONSTRAINT \"product__name__max_length\""
                .to_string()
        ));
        // and back
        let back = sqls(&plan_change(&CTX, &new, &old).unwrap());
        assert!(back[0].starts_with("FILLED SELECT count(*)"), "{back:#?}");
        assert!(back.contains(
            &"ALTER TABLE \"acme\".\"product\" RENAME COLUMN \"_removed_f1_name\" TO \"name\""
                .to_string()
        ));
        assert!(back.contains(
            &"ALTER TABLE \"acme\".\"product\" ALTER COLUMN \"name\" SET NOT NULL".to_string()
        ));
        // purge
        let mut purged = new.clone();
        purged.removed_fields.clear();
        let p = sqls(&plan_change(&CTX, &new, &purged).unwrap());
        assert!(p.contains(
            &"ALTER TABLE \"acme\".\"product\" DROP COLUMN \"_removed_f1_name\"".to_string()
        ));
    }

    /// The product, and the product with a many-to-many field `tags` to `tag`.
    fn product_with_tags() -> (EntityDef, EntityDef) {
        let old = product();
        let mut new = old.clone();
        new.add_field(
            parse_field(
                &json!({"name": "tags", "type": "relation", "target": "tag", "many": true}),
                Source::Caller,
            )
            .unwrap(),
        )
        .unwrap();
        (old, new)
    }

    #[test]
    fn junctions_get_access_control_where_the_tenant_has_members() {
        let (old, new) = product_with_tags();
        let guarded = |ctx: &Ctx| {
            sqls(&plan_change(ctx, &old, &new).unwrap())
                .iter()
                .filter(|s| {
                    s.contains("udm.link_guard")
                        || s.contains("ROW LEVEL SECURITY")
                        || s.contains("CREATE POLICY")
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        assert!(guarded(&CTX).is_empty());
        let with_members = Ctx {
            access: true,
            ..CTX
        };
        let steps = guarded(&with_members);
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!(
            steps[0],
            "ALTER TABLE \"acme\".\"product__tags\" ENABLE ROW LEVEL SECURITY"
        );
        assert!(steps[1].contains("EXISTS (SELECT 1 FROM \"acme\".\"product\" AS s WHERE s.\"id\" = \"product__tags\".\"source_id\")"), "{}", steps[1]);
        assert!(steps[1].contains("EXISTS (SELECT 1 FROM \"acme\".\"tag\" AS t WHERE t.\"id\" = \"product__tags\".\"target_id\")"), "{}", steps[1]);
        assert!(
            steps[2].contains("EXECUTE FUNCTION udm.link_guard('product', '"),
            "{}",
            steps[2]
        );
        // switching access on later adds the same to existing junctions
        let on = enable_access(&with_members, &new);
        assert!(steps.iter().all(|s| on.contains(s)), "{on:?}");
    }

    #[test]
    fn many_to_many_creates_a_junction() {
        let (old, new) = product_with_tags();
        let steps = sqls(&plan_change(&CTX, &old, &new).unwrap());
        assert!(steps
            .iter()
            .any(|s| s.starts_with("CREATE TABLE \"acme\".\"product__tags\"")));
        assert!(steps
            .iter()
            .any(|s| s.contains("REFERENCES \"acme\".\"tag\" (\"id\") ON DELETE CASCADE")));
    }

    #[test]
    fn default_literals() {
        let f = |v: Value| parse_field(&v, Source::Caller).unwrap();
        assert_eq!(
            default_sql(&f(
                json!({"name": "a", "type": "datetime", "default": "now"})
            ))
            .unwrap(),
            "now()"
        );
        assert_eq!(
            default_sql(&f(json!({"name": "a", "type": "boolean", "default": true}))).unwrap(),
            "true"
        );
        assert_eq!(
            default_sql(&f(
                json!({"name": "a", "type": "json", "default": {"x": "it's"}})
            ))
            .unwrap(),
            "'{\"x\":\"it''s\"}'::jsonb"
        );
        assert_eq!(
            default_sql(&f(json!({"name": "a", "type": "tags", "default": []}))).unwrap(),
            "'{}'::text[]"
        );
        assert_eq!(
            default_sql(&f(
                json!({"name": "a", "type": "integer[]", "default": [1, 2]})
            ))
            .unwrap(),
            "ARRAY['1', '2']::integer[]"
        );
        assert_eq!(
            default_sql(&f(json!({"name": "a", "type": "text", "default": "x'y"}))).unwrap(),
            "'x''y'::text"
        );
    }

    #[test]
    fn auto_number_uses_a_named_sequence() {
        let f = parse_field(
            &json!({"name": "code", "type": "auto_number"}),
            Source::Caller,
        )
        .unwrap();
        assert_eq!(
            column_sql(&CTX, "order", &f),
            "\"code\" bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME \"acme\".\"order__code__seq\") NOT NULL"
        );
    }
}

#[cfg(test)]
mod related_rule_tests {
    use super::*;
    use crate::definition::parse_rule;
    use serde_json::json;

    #[test]
    fn a_rule_over_related_records_becomes_constraint_triggers_and_checks_existing_rows() {
        let m = crate::query::path::tests::shop();
        let ctx = Ctx {
            schema: "acme",
            role: "tenant_acme",
            access: false,
            model: Some(&m),
            citus: false,
        };
        let old = m.entity("product").unwrap().clone();
        let mut new = old.clone();
        new.add_rule(
            parse_rule(&json!({"name": "named", "check": "category_id.name != name"})).unwrap(),
        )
        .unwrap();
        let steps = plan_change(&ctx, &old, &new).unwrap();
        let sql: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Sql(s) => s.clone(),
                Step::RuleHolds { key, sql } => format!("HOLDS {key}: {sql}"),
                other => format!("{other:?}"),
            })
            .collect();
        let own = sql
            .iter()
            .position(|s| s.starts_with("CREATE CONSTRAINT TRIGGER \"product__named__rule\" AFTER INSERT OR UPDATE OF \"category_id\", \"name\" ON \"acme\".\"product\""))
            .unwrap_or_else(|| panic!("{sql:#?}"));
        let recheck = sql
            .iter()
            .position(|s| s.starts_with("CREATE CONSTRAINT TRIGGER \"product__named__recheck\" AFTER UPDATE OF \"name\" ON \"acme\".\"category\""))
            .unwrap_or_else(|| panic!("{sql:#?}"));
        let holds = sql
            .iter()
            .position(|s| s.starts_with("HOLDS r.named: SELECT \"t\".\"id\"::text FROM \"acme\".\"product\" AS \"t\" WHERE NOT ("))
            .unwrap_or_else(|| panic!("{sql:#?}"));
        assert!(
            own < holds && recheck < holds,
            "rows are checked after the triggers exist"
        );
        // dropping the rule drops both triggers
        let back = plan_change(&ctx, &new, &old).unwrap();
        let drops: Vec<&Step> = back
            .iter()
            .filter(|s| matches!(s, Step::Sql(x) if x.starts_with("DROP TRIGGER")))
            .collect();
        assert_eq!(drops.len(), 2, "{back:#?}");
        // without the tenant's model the rule cannot be planned: it names the path
        let e = plan_change(
            &Ctx {
                model: None,
                ..ctx.clone()
            },
            &old,
            &new,
        )
        .unwrap_err();
        assert!(e.message.contains("category_id.name"), "{}", e.message);
    }
}
