//! Entity definitions: parsing the caller's JSON (flat field options beside `name` and `type`),
//! validating it, and the canonical JSON udm stores and returns (the same shape, plus the ids and
//! physical names udm assigned, so a described definition can be fed back in).

use crate::access::{access_to_json, parse_access, AccessDef};
use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{fit_name, printable, validate_slug, SlugKind};
use crate::json::*;
use crate::locks::{lock_to_json, parse_lock, LockDef};
use crate::types::{Family, FieldType, COMMON_OPTIONS};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Most fields an entity may have (PostgreSQL allows 1600 columns; dropped ones count too).
pub const MAX_FIELDS: usize = 400;
pub const MAX_RULES: usize = 100;
pub const MAX_INDEXES: usize = 50;
pub const MAX_SELECT_VALUES: usize = 500;
pub const MAX_VALUE_LEN: usize = 200;
pub const MAX_LABEL_LEN: usize = 200;
pub const MAX_DESCRIPTION_LEN: usize = 2000;
pub const MAX_PATTERN_LEN: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Restrict,
    Cascade,
    SetNull,
    NoAction,
}

impl OnDelete {
    pub fn parse(s: &str) -> Result<OnDelete> {
        Ok(match s {
            "restrict" => OnDelete::Restrict,
            "cascade" => OnDelete::Cascade,
            "set_null" | "set null" => OnDelete::SetNull,
            "no_action" | "no action" => OnDelete::NoAction,
            other => {
                return Err(UdmError::invalid(format!(
                    "on_delete \"{}\" is not known",
                    printable(other)
                ))
                .hint(
                    "on_delete is one of \"restrict\", \"cascade\", \"set_null\", \"no_action\"",
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            OnDelete::Restrict => "restrict",
            OnDelete::Cascade => "cascade",
            OnDelete::SetNull => "set_null",
            OnDelete::NoAction => "no_action",
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            OnDelete::Restrict => "RESTRICT",
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull => "SET NULL",
            OnDelete::NoAction => "NO ACTION",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    /// Stable id within the entity; survives renames. Constraint keys use it.
    pub id: u32,
    pub name: String,
    /// Physical column (equal to `name` unless the field is removed).
    pub column: String,
    pub ftype: FieldType,
    pub label: Option<String>,
    pub description: Option<String>,
    pub required: bool,
    pub unique: bool,
    pub index: bool,
    pub default: Option<Value>,
    pub min: Option<Value>,
    pub max: Option<Value>,
    pub min_length: Option<u32>,
    pub max_length: Option<u32>,
    pub pattern: Option<String>,
    pub values: Vec<String>,
    pub min_items: Option<u32>,
    pub max_items: Option<u32>,
    pub unique_items: bool,
    pub precision: Option<u32>,
    pub scale: Option<u32>,
    pub currency_code: Option<String>,
    pub max_size: Option<u64>,
    pub accept: Vec<String>,
    pub target: Option<String>,
    pub targets: Vec<String>,
    pub on_delete: Option<OnDelete>,
    pub many: bool,
    pub messages: BTreeMap<String, String>,
    /// Junction table of a many-to-many relation.
    pub junction: Option<String>,
    /// Entity version in which the field was soft-removed.
    pub removed_in_version: Option<u32>,
    /// Changes to it count as critical in compliance reports.
    pub critical: bool,
    /// False keeps the field's values out of audit images (secrets).
    pub audited: bool,
    /// Values are stored sealed (AES-256-GCM under the tenant's data key, see `crypto`); with
    /// `unique` or `index` each carries a blind index for equality.
    pub encrypted: bool,
    /// Encryption is being turned on or off for the field's existing values (`udm_reencrypt`
    /// converts them in batches and clears it): its column may hold both plaintext and sealed
    /// values, and reads take either. `encrypted` stays true meanwhile (the field is read, filtered
    /// and refused as an encrypted field); with `Off`, writes store plaintext.
    pub encryption_pending: Option<Toggle>,
    /// Encryption is being turned on for a json or date-like field without rewriting its table
    /// (see `Stage`): the column keeps its type meanwhile, and a hidden column holds the sealed
    /// values (`sealed_column`) or, after the swap, the old plaintext to clear (`plain_column`).
    pub encryption_stage: Option<Stage>,
}

/// Which way a field's encryption is being switched while its existing values are converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    On,
    Off,
}

impl Toggle {
    pub fn name(self) -> &'static str {
        match self {
            Toggle::On => "on",
            Toggle::Off => "off",
        }
    }
}

/// Turning encryption on for a field whose column is not text (json, date, datetime, time,
/// duration) in two stages, so that no `ALTER COLUMN TYPE` rewrites the table under an exclusive
/// lock:
/// * `Sealing`: the field is still a plain field (`encrypted` false: read, filtered and sorted
///   as before); the stamp trigger keeps each written value's sealed form in the hidden text
///   column `sealed_column`, and `udm_reencrypt` seals the values written before, in batches.
///   When none is left, a short swap (catalog changes only) renames the old column to
///   `plain_column` and the hidden one to the field's column, whose blind index was built on it
///   meanwhile.
/// * `Scrubbing`: the field is encrypted; the old column's plaintext is cleared in batches
///   (`udm_reencrypt`), then the column is dropped (which leaves no bytes of it in the rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sealing,
    Scrubbing,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Sealing => "sealing",
            Stage::Scrubbing => "scrubbing",
        }
    }
}

impl FieldDef {
    pub fn new(id: u32, name: &str, ftype: FieldType) -> FieldDef {
        FieldDef {
            id,
            name: name.to_string(),
            column: name.to_string(),
            ftype,
            label: None,
            description: None,
            required: false,
            unique: false,
            index: false,
            default: None,
            min: None,
            max: None,
            min_length: None,
            max_length: None,
            pattern: None,
            values: vec![],
            min_items: None,
            max_items: None,
            unique_items: false,
            critical: false,
            audited: true,
            encrypted: false,
            encryption_pending: None,
            encryption_stage: None,
            precision: None,
            scale: None,
            currency_code: None,
            max_size: None,
            accept: vec![],
            target: None,
            targets: vec![],
            on_delete: None,
            many: false,
            messages: BTreeMap::new(),
            junction: None,
            removed_in_version: None,
        }
    }

    /// Many-to-many relations have no column; they live in a junction table.
    pub fn has_column(&self) -> bool {
        !(self.ftype == FieldType::Relation && self.many)
    }

    pub fn is_many_to_one(&self) -> bool {
        self.ftype == FieldType::Relation && !self.many
    }

    pub fn is_many_to_many(&self) -> bool {
        self.ftype == FieldType::Relation && self.many
    }

    /// The PostgreSQL type of the column, with numeric precision (text for encrypted fields).
    pub fn pg_type(&self) -> String {
        if self.encrypted {
            return "text".into();
        }
        match self.ftype {
            FieldType::Decimal | FieldType::Percent => match (self.precision, self.scale) {
                (Some(p), Some(s)) => format!("numeric({p},{s})"),
                (Some(p), None) => format!("numeric({p})"),
                _ => "numeric".into(),
            },
            FieldType::Currency => {
                format!(
                    "numeric({},{})",
                    self.precision.unwrap_or(19),
                    self.scale.unwrap_or(2)
                )
            }
            _ => self.ftype.base_pg_type(),
        }
    }

    pub fn on_delete(&self) -> OnDelete {
        self.on_delete.unwrap_or(OnDelete::Restrict)
    }

    /// Whether stored values carry a blind index (encrypted, and unique or indexed).
    pub fn blind_indexed(&self) -> bool {
        self.encrypted && (self.unique || self.index)
    }

    /// Whether the field's values are being converted between plaintext and sealed while it
    /// has a blind index (encryption turned on or off for a unique or indexed field): both forms
    /// are stored meanwhile, and equality and uniqueness look at both.
    pub fn converting_blind(&self) -> bool {
        self.encryption_pending.is_some() && self.blind_indexed()
    }

    /// Whether turning encryption on goes through `Stage` (a column that is not text: its
    /// values cannot be sealed in place).
    pub fn stages_encryption(&self) -> bool {
        self.ftype.sealed_form().is_some()
    }

    /// Whether the field is encrypted or being encrypted in stages: what cannot hold for an
    /// encrypted field (rules, indexes over fields) is refused for it already.
    pub fn encrypted_or_staged(&self) -> bool {
        self.encrypted || self.encryption_stage.is_some()
    }

    /// The hidden text column holding the sealed values while `Stage::Sealing` (a name no field
    /// can have: field names start with a letter).
    pub fn sealed_column(&self) -> String {
        format!("_udm_f{}_sealed", self.id)
    }

    /// The hidden column holding the old plaintext values while `Stage::Scrubbing`.
    pub fn plain_column(&self) -> String {
        format!("_udm_f{}_plain", self.id)
    }

    /// The field as it will be once its encryption is turned on (what its values are sealed as
    /// while `Stage::Sealing`).
    pub fn as_encrypted(&self) -> FieldDef {
        FieldDef {
            encrypted: true,
            encryption_pending: None,
            encryption_stage: None,
            ..self.clone()
        }
    }

    /// The rating scale's top (default 5).
    pub fn rating_max(&self) -> i64 {
        self.max.as_ref().and_then(Value::as_i64).unwrap_or(5)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleDef {
    pub name: String,
    pub check: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    pub name: String,
    pub fields: Vec<String>,
    pub unique: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EntityDef {
    pub slug: String,
    pub label: Option<String>,
    pub description: Option<String>,
    pub fields: Vec<FieldDef>,
    pub removed_fields: Vec<FieldDef>,
    pub rules: Vec<RuleDef>,
    pub indexes: Vec<IndexDef>,
    pub next_field_id: u32,
    /// Whether changes to records are written to the tenant's audit log (and change events).
    pub audit: bool,
    /// The write-lock scope of the entity's records, if it has one.
    pub lock: Option<LockDef>,
    /// The access scope of the entity's rows (relation tuples on records), if it has one.
    pub access: Option<AccessDef>,
}

/// Whether JSON comes from a caller (udm assigns ids and physical names) or from udm's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Caller,
    Catalog,
}

const STORED_FIELD_KEYS: &[&str] = &[
    "id",
    "column",
    "junction",
    "removed_in_version",
    "encryption_pending",
    "encryption_stage",
];

fn field_what(name: &str) -> String {
    format!("field \"{}\"", printable(name))
}

/// Parses one field definition.
pub fn parse_field(v: &Value, source: Source) -> Result<FieldDef> {
    let obj = expect_object(v, "a field definition")?;
    let name = match obj.get("name") {
        Some(n) => expect_str(n, "field \"name\"")?,
        None => {
            return Err(UdmError::invalid(format!(
                "a field definition has no \"name\": {}",
                short_json(v)
            ))
            .hint("every field needs {\"name\": ..., \"type\": ...}"))
        }
    };
    validate_slug(SlugKind::Field, name)?;
    let what = field_what(name);
    let type_name = match obj.get("type") {
        Some(t) => expect_str(t, &format!("{what}: \"type\""))?,
        None => {
            return Err(UdmError::invalid(format!("{what} has no \"type\""))
                .hint("every field needs {\"name\": ..., \"type\": ...}"))
        }
    };
    let ftype = if type_name == "array" {
        let items = obj.get("items").ok_or_else(|| {
            UdmError::invalid(format!(
                "{what}: type \"array\" needs \"items\", the type of its elements"
            ))
            .hint(
                "write {\"type\": \"array\", \"items\": \"integer\"} or {\"type\": \"integer[]\"}",
            )
        })?;
        let item = FieldType::parse(expect_str(items, &format!("{what}: option \"items\""))?)
            .map_err(|e| e.context(&what))?;
        FieldType::array_of(item).map_err(|e| e.context(&what))?
    } else {
        FieldType::parse(type_name).map_err(|e| e.context(&what))?
    };

    let info = ftype.info();
    let mut allowed: Vec<&str> = COMMON_OPTIONS.to_vec();
    allowed.extend_from_slice(info.options);
    if source == Source::Catalog {
        allowed.extend_from_slice(STORED_FIELD_KEYS);
    }
    refuse_unknown_keys(obj, &allowed, &what)?;

    let mut f = FieldDef::new(0, name, ftype.clone());
    for (k, val) in obj {
        let opt = |o: &str| format!("{what}: option \"{o}\"");
        match k.as_str() {
            "name" | "type" => {}
            "id" => f.id = expect_u32(val, &opt("id"), 1, u32::MAX)?,
            "column" => f.column = expect_str(val, &opt("column"))?.to_string(),
            "junction" => f.junction = Some(expect_str(val, &opt("junction"))?.to_string()),
            "removed_in_version" => {
                f.removed_in_version =
                    Some(expect_u32(val, &opt("removed_in_version"), 1, u32::MAX)?)
            }
            "label" => f.label = Some(bounded_text(val, &opt("label"), MAX_LABEL_LEN)?),
            "description" => {
                f.description = Some(bounded_text(val, &opt("description"), MAX_DESCRIPTION_LEN)?)
            }
            "required" => f.required = expect_bool(val, &opt("required"))?,
            "unique" => f.unique = expect_bool(val, &opt("unique"))?,
            "index" => f.index = expect_bool(val, &opt("index"))?,
            "critical" => f.critical = expect_bool(val, &opt("critical"))?,
            "audit" => f.audited = expect_bool(val, &opt("audit"))?,
            "encrypted" => f.encrypted = expect_bool(val, &opt("encrypted"))?,
            "encryption_pending" => {
                f.encryption_pending = match val.as_str() {
                    Some("on") => Some(Toggle::On),
                    Some("off") => Some(Toggle::Off),
                    _ => {
                        return Err(UdmError::invalid(format!(
                            "{}: must be \"on\" or \"off\"",
                            opt("encryption_pending")
                        )))
                    }
                }
            }
            "encryption_stage" => {
                f.encryption_stage = match val.as_str() {
                    Some("sealing") => Some(Stage::Sealing),
                    Some("scrubbing") => Some(Stage::Scrubbing),
                    _ => {
                        return Err(UdmError::invalid(format!(
                            "{}: must be \"sealing\" or \"scrubbing\"",
                            opt("encryption_stage")
                        )))
                    }
                }
            }
            "default" => {
                if !val.is_null() {
                    f.default = Some(val.clone())
                }
            }
            "min" => f.min = non_null(val),
            "max" => f.max = non_null(val),
            "min_length" => {
                f.min_length = Some(expect_u32(val, &opt("min_length"), 0, 10_485_760)?)
            }
            "max_length" => {
                f.max_length = Some(expect_u32(val, &opt("max_length"), 1, 10_485_760)?)
            }
            "pattern" => {
                let p = expect_str(val, &opt("pattern"))?;
                if p.is_empty() || p.len() > MAX_PATTERN_LEN {
                    return Err(UdmError::invalid(format!(
                        "{} must be a regular expression of 1 to {MAX_PATTERN_LEN} characters",
                        opt("pattern")
                    )));
                }
                check_text(p, &opt("pattern"))?;
                f.pattern = Some(p.to_string())
            }
            "values" => {
                f.values =
                    expect_string_list(val, &opt("values"), MAX_SELECT_VALUES, MAX_VALUE_LEN)?
            }
            "min_items" => f.min_items = Some(expect_u32(val, &opt("min_items"), 0, 100_000)?),
            "max_items" => f.max_items = Some(expect_u32(val, &opt("max_items"), 1, 100_000)?),
            "unique_items" => f.unique_items = expect_bool(val, &opt("unique_items"))?,
            "precision" => f.precision = Some(expect_u32(val, &opt("precision"), 1, 1000)?),
            "scale" => f.scale = Some(expect_u32(val, &opt("scale"), 0, 1000)?),
            "currency_code" => {
                let c = expect_str(val, &opt("currency_code"))?;
                if c.len() != 3 || !c.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(UdmError::invalid(format!(
                        "{} must be a three-letter ISO 4217 code such as \"EUR\", got \"{}\"",
                        opt("currency_code"),
                        printable(c)
                    )));
                }
                f.currency_code = Some(c.to_string())
            }
            "max_size" => f.max_size = Some(expect_u64(val, &opt("max_size"))?),
            "accept" => f.accept = expect_string_list(val, &opt("accept"), 100, 200)?,
            "target" => {
                let t = expect_str(val, &opt("target"))?;
                validate_slug(SlugKind::Entity, t).map_err(|e| e.context(opt("target")))?;
                f.target = Some(t.to_string())
            }
            "targets" => {
                let ts = expect_string_list(val, &opt("targets"), 50, 100)?;
                for t in &ts {
                    validate_slug(SlugKind::Entity, t).map_err(|e| e.context(opt("targets")))?;
                }
                f.targets = ts
            }
            "on_delete" => {
                f.on_delete = Some(
                    OnDelete::parse(expect_str(val, &opt("on_delete"))?)
                        .map_err(|e| e.context(&what))?,
                )
            }
            "many" => f.many = expect_bool(val, &opt("many"))?,
            "cardinality" => match expect_str(val, &opt("cardinality"))? {
                "many_to_one" => f.many = false,
                "one_to_one" => {
                    f.many = false;
                    f.unique = true;
                }
                "many_to_many" => f.many = true,
                other => {
                    return Err(UdmError::invalid(format!(
                        "{} \"{}\" is not known",
                        opt("cardinality"),
                        printable(other)
                    ))
                    .hint("cardinality is \"many_to_one\", \"one_to_one\" or \"many_to_many\""))
                }
            },
            "items" => {
                let item = FieldType::parse(expect_str(val, &opt("items"))?)
                    .map_err(|e| e.context(&what))?;
                if FieldType::array_of(item.clone()).ok().as_ref() != Some(&ftype) {
                    return Err(UdmError::invalid(format!(
                        "{}: \"{}\" does not match type \"{}\"",
                        opt("items"),
                        item.name(),
                        ftype.name()
                    )));
                }
            }
            "messages" => {
                let m = expect_object(val, &opt("messages"))?;
                for (rk, rv) in m {
                    f.messages.insert(
                        rk.clone(),
                        bounded_text(rv, &format!("{what}: message \"{rk}\""), 500)?,
                    );
                }
            }
            other => {
                return Err(UdmError::internal(format!(
                    "option {other} accepted but not read"
                )))
            }
        }
    }
    validate_field(&f)?;
    Ok(f)
}

fn non_null(v: &Value) -> Option<Value> {
    if v.is_null() {
        None
    } else {
        Some(v.clone())
    }
}

fn bounded_text(v: &Value, what: &str, max: usize) -> Result<String> {
    let s = expect_str(v, what)?;
    if s.chars().count() > max {
        return Err(UdmError::invalid(format!(
            "{what} is longer than {max} characters"
        )));
    }
    check_text(s, what)?;
    Ok(s.to_string())
}

pub fn short_json(v: &Value) -> String {
    printable(&v.to_string())
}

/// Rule keys a field's `messages` may name, for its type and options.
pub fn message_keys(f: &FieldDef) -> Vec<&'static str> {
    let mut keys = vec!["required", "unique"];
    keys.extend(crate::checks::field_check_rules(f));
    keys
}

/// Checks that the options of one field fit together. Relation targets are resolved later,
/// against the tenant's catalog.
pub fn validate_field(f: &FieldDef) -> Result<()> {
    let what = field_what(&f.name);
    let err = |m: String| Err(UdmError::invalid(format!("{what}: {m}")));
    let t = &f.ftype;
    let fam = t.family();

    if matches!(t, FieldType::Relation) && f.target.is_none() {
        return Err(
            UdmError::invalid(format!("{what}: a relation needs a \"target\" entity"))
                .hint("write {\"type\": \"relation\", \"target\": \"category\"}"),
        );
    }
    if matches!(t, FieldType::Reference) && f.targets.is_empty() {
        return Err(UdmError::invalid(format!(
            "{what}: a reference needs \"targets\", the entities it may point to"
        ))
        .hint("write {\"type\": \"reference\", \"targets\": [\"product\", \"category\"]}"));
    }
    if f.unique && !t.can_be_unique() {
        return err(format!("a field of type {} cannot be unique", t.name()));
    }
    if f.many {
        if f.required || f.unique || f.default.is_some() || f.index {
            return err(
                "a many-to-many relation cannot be required, unique, indexed or have a default"
                    .into(),
            );
        }
        if f.on_delete.is_some() {
            return err("a many-to-many relation has no on_delete: its links are removed with either record".into());
        }
    }
    if f.encrypted {
        if !t.can_be_encrypted() {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!("{what}: a field of type {} cannot be encrypted", t.name()),
            )
            .hint("encrypted fields are text, long_text, email, url, phone, json, date, datetime, time or duration fields"));
        }
        if t == &FieldType::Json && f.index {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!("{what}: an encrypted json field cannot have an index"),
            )
            .hint("leave \"index\" out: its values can be read, not searched"));
        }
        if f.default.is_some() {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!("{what}: an encrypted field cannot have a default"),
            )
            .hint("leave \"default\" out, or set the value when the record is written"));
        }
    }
    if f.on_delete == Some(OnDelete::SetNull) && f.required {
        return err("on_delete \"set_null\" cannot be used on a required field".into());
    }
    match t {
        FieldType::AutoNumber if f.required || f.default.is_some() || f.unique => {
            return err(
                "an auto_number is assigned by udm: it takes no required, unique or default".into(),
            )
        }
        FieldType::Password if f.default.is_some() || f.index => {
            return err("a password cannot have a default or an index".into())
        }
        FieldType::Select | FieldType::MultiSelect if f.values.is_empty() => {
            return Err(UdmError::invalid(format!(
                "{what}: a {} needs \"values\", the list of allowed values",
                t.name()
            ))
            .hint("write {\"type\": \"select\", \"values\": [\"draft\", \"active\"]}"))
        }
        _ => {}
    }
    if let (Some(a), Some(b)) = (f.min_length, f.max_length) {
        if a > b {
            return err(format!("min_length {a} is greater than max_length {b}"));
        }
    }
    if let (Some(a), Some(b)) = (f.min_items, f.max_items) {
        if a > b {
            return err(format!("min_items {a} is greater than max_items {b}"));
        }
    }
    if let (Some(p), Some(s)) = (f.precision, f.scale) {
        if s > p {
            return err(format!("scale {s} is greater than precision {p}"));
        }
    }
    if f.scale.is_some() && f.precision.is_none() && !matches!(t, FieldType::Currency) {
        return err("scale needs precision".into());
    }
    // min / max: numbers for numbers, strings for dates and durations.
    for (key, v) in [("min", &f.min), ("max", &f.max)] {
        let Some(v) = v else { continue };
        match fam {
            Family::Number => {
                if !v.is_number() {
                    return err(format!("{key} must be a number, got {}", kind(v)));
                }
                if matches!(t, FieldType::Rating) {
                    let ok = key == "max" && v.as_i64().is_some_and(|n| (1..=100).contains(&n));
                    if !ok {
                        return err(
                            "a rating takes \"max\", a whole number from 1 to 100 (default 5)"
                                .into(),
                        );
                    }
                }
            }
            Family::Temporal => {
                let s = v.as_str().ok_or_else(|| {
                    UdmError::invalid(format!(
                        "{what}: {key} must be a {} string, got {}",
                        t.name(),
                        kind(v)
                    ))
                })?;
                check_text(s, key)?;
            }
            _ => return err(format!("{key} does not apply to type {}", t.name())),
        }
    }
    if let (Some(a), Some(b)) = (
        f.min.as_ref().and_then(Value::as_f64),
        f.max.as_ref().and_then(Value::as_f64),
    ) {
        if a > b {
            return err(format!("min {a} is greater than max {b}"));
        }
    }
    if let Some(d) = &f.default {
        validate_default(f, d).map_err(|e| e.context(format!("{what}: default")))?;
    }
    let keys = message_keys(f);
    for k in f.messages.keys() {
        if !keys.contains(&k.as_str()) {
            return Err(UdmError::invalid(format!(
                "{what}: \"messages\" names rule \"{}\", which this field does not have",
                printable(k)
            ))
            .hint(format!("this field's rules are {}", name_list(keys))));
        }
    }
    Ok(())
}

/// JSON kind checks for a default; PostgreSQL checks the literal itself when the column is made.
fn validate_default(f: &FieldDef, d: &Value) -> Result<()> {
    let t = &f.ftype;
    let want = |ok: bool, expected: &str| {
        if ok {
            Ok(())
        } else {
            Err(UdmError::new(
                SqlState::DatatypeMismatch,
                format!("must be {expected}, got {}", kind(d)),
            ))
        }
    };
    match t {
        FieldType::Integer | FieldType::BigInt | FieldType::Rating => {
            want(d.is_i64() || d.is_u64(), "a whole number")?;
            let n = d.as_i64().ok_or_else(|| {
                UdmError::new(SqlState::DatatypeMismatch, format!("{d} is out of range"))
            })?;
            let (lo, hi) = match t {
                FieldType::Integer => (i64::from(i32::MIN), i64::from(i32::MAX)),
                FieldType::Rating => (0, f.rating_max()),
                _ => (i64::MIN, i64::MAX),
            };
            if n < lo || n > hi {
                return Err(UdmError::new(
                    SqlState::DatatypeMismatch,
                    format!("{n} is out of range for {} (from {lo} to {hi})", t.name()),
                ));
            }
            Ok(())
        }
        FieldType::Decimal | FieldType::Float | FieldType::Currency | FieldType::Percent => {
            want(d.is_number(), "a number")
        }
        FieldType::Boolean => want(d.is_boolean(), "true or false"),
        FieldType::Json => Ok(()),
        FieldType::File => want(d.is_object(), "a file object"),
        FieldType::Reference => want(d.is_object(), "an object {\"entity\": ..., \"id\": ...}"),
        FieldType::MultiSelect | FieldType::Tags | FieldType::Array(_) => {
            let arr = d.as_array().ok_or_else(|| {
                UdmError::new(
                    SqlState::DatatypeMismatch,
                    format!("must be an array, got {}", kind(d)),
                )
            })?;
            for item in arr {
                if item.is_array() || item.is_object() || item.is_null() {
                    return Err(UdmError::new(
                        SqlState::DatatypeMismatch,
                        "array elements must be plain values",
                    ));
                }
            }
            if matches!(t, FieldType::MultiSelect) {
                for item in arr {
                    let s = item.as_str().unwrap_or_default();
                    if !f.values.iter().any(|v| v == s) {
                        return Err(UdmError::new(
                            SqlState::CheckViolation,
                            format!(
                                "\"{}\" is not one of the values {}",
                                printable(s),
                                name_list(&f.values)
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
        FieldType::Select => {
            let s = d.as_str().ok_or_else(|| {
                UdmError::new(
                    SqlState::DatatypeMismatch,
                    format!("must be a string, got {}", kind(d)),
                )
            })?;
            if !f.values.iter().any(|v| v == s) {
                return Err(UdmError::new(
                    SqlState::CheckViolation,
                    format!(
                        "\"{}\" is not one of the values {}",
                        printable(s),
                        name_list(&f.values)
                    ),
                ));
            }
            Ok(())
        }
        _ => {
            let s = d.as_str().ok_or_else(|| {
                UdmError::new(
                    SqlState::DatatypeMismatch,
                    format!("must be a string, got {}", kind(d)),
                )
            })?;
            check_text(s, "default")
        }
    }
}

/// The canonical JSON of a field: flat options beside name and type, only those set.
pub fn field_to_json(f: &FieldDef) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(f.name));
    m.insert("type".into(), json!(f.ftype.name()));
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    if let Some(l) = &f.label {
        put("label", json!(l));
    }
    if let Some(d) = &f.description {
        put("description", json!(d));
    }
    if f.required {
        put("required", json!(true));
    }
    if f.unique {
        put("unique", json!(true));
    }
    if f.encrypted {
        put("encrypted", json!(true));
    }
    if let Some(p) = f.encryption_pending {
        put("encryption_pending", json!(p.name()));
    }
    if let Some(s) = f.encryption_stage {
        put("encryption_stage", json!(s.name()));
    }
    if f.index {
        put("index", json!(true));
    }
    if f.critical {
        put("critical", json!(true));
    }
    if !f.audited {
        put("audit", json!(false));
    }
    if let Some(d) = &f.default {
        put("default", d.clone());
    }
    if let Some(v) = &f.min {
        put("min", v.clone());
    }
    if let Some(v) = &f.max {
        put("max", v.clone());
    }
    if let Some(v) = f.min_length {
        put("min_length", json!(v));
    }
    if let Some(v) = f.max_length {
        put("max_length", json!(v));
    }
    if let Some(v) = &f.pattern {
        put("pattern", json!(v));
    }
    if !f.values.is_empty() {
        put("values", json!(f.values));
    }
    if let Some(v) = f.min_items {
        put("min_items", json!(v));
    }
    if let Some(v) = f.max_items {
        put("max_items", json!(v));
    }
    if f.unique_items {
        put("unique_items", json!(true));
    }
    if let Some(v) = f.precision {
        put("precision", json!(v));
    }
    if let Some(v) = f.scale {
        put("scale", json!(v));
    }
    if let Some(v) = &f.currency_code {
        put("currency_code", json!(v));
    }
    if let Some(v) = f.max_size {
        put("max_size", json!(v));
    }
    if !f.accept.is_empty() {
        put("accept", json!(f.accept));
    }
    if let Some(v) = &f.target {
        put("target", json!(v));
    }
    if !f.targets.is_empty() {
        put("targets", json!(f.targets));
    }
    if let Some(v) = f.on_delete {
        put("on_delete", json!(v.name()));
    }
    if f.many {
        put("many", json!(true));
    }
    if !f.messages.is_empty() {
        put("messages", json!(f.messages));
    }
    put("id", json!(f.id));
    put("column", json!(f.column));
    if let Some(j) = &f.junction {
        put("junction", json!(j));
    }
    if let Some(v) = f.removed_in_version {
        put("removed_in_version", json!(v));
    }
    Value::Object(m)
}

/// Parses an entity-level rule `{"name", "check", "message"}`.
pub fn parse_rule(v: &Value) -> Result<RuleDef> {
    let obj = expect_object(v, "a rule")?;
    let name = expect_str(obj.get("name").unwrap_or(&Value::Null), "rule \"name\"")?;
    validate_slug(SlugKind::Rule, name)?;
    let what = format!("rule \"{name}\"");
    refuse_unknown_keys(obj, &["name", "check", "message"], &what)?;
    let check = obj
        .get("check")
        .ok_or_else(|| {
            UdmError::invalid(format!("{what} has no \"check\""))
                .hint("write {\"name\": \"dates_in_order\", \"check\": \"start_date <= end_date\", \"message\": \"...\"}")
        })
        .and_then(|c| bounded_text(c, &format!("{what}: \"check\""), 2000))?;
    let message = match obj.get("message") {
        None | Some(Value::Null) => None,
        Some(m) => Some(bounded_text(m, &format!("{what}: \"message\""), 500)?),
    };
    Ok(RuleDef {
        name: name.to_string(),
        check,
        message,
    })
}

pub fn rule_to_json(r: &RuleDef) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(r.name));
    m.insert("check".into(), json!(r.check));
    if let Some(msg) = &r.message {
        m.insert("message".into(), json!(msg));
    }
    Value::Object(m)
}

/// Parses an index `{"fields": [...], "unique": bool, "name"?}`; the name is derived when absent.
pub fn parse_index(v: &Value, entity: &str, source: Source) -> Result<IndexDef> {
    let obj = expect_object(v, "an index")?;
    refuse_unknown_keys(obj, &["name", "fields", "unique"], "index")?;
    let fields = expect_string_list(
        obj.get("fields").unwrap_or(&Value::Null),
        "index \"fields\"",
        32,
        64,
    )?;
    if fields.is_empty() {
        return Err(UdmError::invalid("index \"fields\" is empty").hint("name at least one field"));
    }
    let unique = match obj.get("unique") {
        Some(u) => expect_bool(u, "index \"unique\"")?,
        None => false,
    };
    let name = match obj.get("name") {
        Some(n) => {
            let n = expect_str(n, "index \"name\"")?;
            if source == Source::Caller {
                validate_slug(SlugKind::Index, n)?;
            }
            n.to_string()
        }
        None => index_name(entity, &fields, unique),
    };
    Ok(IndexDef {
        name,
        fields,
        unique,
    })
}

pub fn index_name(entity: &str, fields: &[String], unique: bool) -> String {
    fit_name(&format!(
        "{entity}__{}__{}",
        fields.join("__"),
        if unique { "key" } else { "idx" }
    ))
}

pub fn index_to_json(i: &IndexDef) -> Value {
    json!({"name": i.name, "fields": i.fields, "unique": i.unique})
}

const ENTITY_KEYS: &[&str] = &[
    "label",
    "description",
    "fields",
    "rules",
    "indexes",
    "audit",
    "lock",
    "access",
];
const STORED_ENTITY_KEYS: &[&str] = &["slug", "removed_fields", "next_field_id"];

impl EntityDef {
    /// About how much memory the definition holds (for cache budgets): its structures and the
    /// text they own.
    pub fn approx_bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len());
        let field = |f: &FieldDef| {
            std::mem::size_of::<FieldDef>()
                + f.name.len()
                + f.column.len()
                + text(&f.label)
                + text(&f.description)
                + text(&f.pattern)
                + f.values.iter().map(|v| v.len() + 24).sum::<usize>()
                + f.targets.iter().map(|v| v.len() + 24).sum::<usize>()
                + f.default.as_ref().map_or(0, |_| 64)
        };
        std::mem::size_of::<EntityDef>()
            + self.slug.len()
            + text(&self.label)
            + text(&self.description)
            + self.fields.iter().map(field).sum::<usize>()
            + self.removed_fields.iter().map(field).sum::<usize>()
            + self
                .rules
                .iter()
                .map(|r| {
                    std::mem::size_of::<RuleDef>() + r.name.len() + r.check.len() + text(&r.message)
                })
                .sum::<usize>()
            + self
                .indexes
                .iter()
                .map(|i| {
                    std::mem::size_of::<IndexDef>()
                        + i.name.len()
                        + i.fields.iter().map(|f| f.len() + 24).sum::<usize>()
                })
                .sum::<usize>()
    }

    /// Parses a definition. From a caller, field ids and columns are assigned here; from the
    /// catalog they are read back.
    pub fn parse(slug: &str, v: &Value, source: Source) -> Result<EntityDef> {
        validate_slug(SlugKind::Entity, slug)?;
        let what = format!("definition of entity \"{slug}\"");
        let obj = expect_object(v, &what)?;
        let mut allowed = ENTITY_KEYS.to_vec();
        if source == Source::Catalog {
            allowed.extend_from_slice(STORED_ENTITY_KEYS);
        }
        refuse_unknown_keys(obj, &allowed, &what)?;
        let opt_text = |k: &str, max: usize| -> Result<Option<String>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => Ok(Some(bounded_text(v, &format!("{what}: \"{k}\""), max)?)),
            }
        };
        let mut def = EntityDef {
            slug: slug.to_string(),
            label: opt_text("label", MAX_LABEL_LEN)?,
            description: opt_text("description", MAX_DESCRIPTION_LEN)?,
            fields: vec![],
            removed_fields: vec![],
            rules: vec![],
            indexes: vec![],
            next_field_id: 1,
            audit: match obj.get("audit") {
                None | Some(Value::Null) => true,
                Some(v) => expect_bool(v, &format!("{what}: \"audit\""))?,
            },
            lock: parse_lock(obj.get("lock").unwrap_or(&Value::Null), slug)?,
            access: parse_access(obj.get("access").unwrap_or(&Value::Null), slug)?,
        };
        let empty = Value::Array(vec![]);
        let fields = expect_array(
            obj.get("fields").unwrap_or(&empty),
            &format!("{what}: \"fields\""),
        )?;
        if fields.len() > MAX_FIELDS {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!(
                    "{what} has {} fields; at most {MAX_FIELDS} are allowed",
                    fields.len()
                ),
            ));
        }
        for fv in fields {
            let f = parse_field(fv, source).map_err(|e| e.context(format!("entity \"{slug}\"")))?;
            def.push_field(f, source)?;
        }
        if source == Source::Catalog {
            if let Some(rf) = obj.get("removed_fields") {
                for fv in expect_array(rf, "removed_fields")? {
                    def.removed_fields.push(parse_field(fv, source)?);
                }
            }
            if let Some(n) = obj.get("next_field_id") {
                def.next_field_id = expect_u32(n, "next_field_id", 1, u32::MAX)?;
            }
        }
        let rules = expect_array(
            obj.get("rules").unwrap_or(&empty),
            &format!("{what}: \"rules\""),
        )?;
        if rules.len() > MAX_RULES {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!("{what} has more than {MAX_RULES} rules"),
            ));
        }
        for rv in rules {
            let r = parse_rule(rv).map_err(|e| e.context(format!("entity \"{slug}\"")))?;
            def.add_rule(r)?;
        }
        let idx = expect_array(
            obj.get("indexes").unwrap_or(&empty),
            &format!("{what}: \"indexes\""),
        )?;
        if idx.len() > MAX_INDEXES {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!("{what} has more than {MAX_INDEXES} indexes"),
            ));
        }
        for iv in idx {
            let i = parse_index(iv, slug, source)
                .map_err(|e| e.context(format!("entity \"{slug}\"")))?;
            def.add_index(i)?;
        }
        if let Some(l) = def.lock.clone() {
            def.check_lock(&l)?;
        }
        if let Some(a) = def.access.clone() {
            def.check_access(&a)?;
        }
        Ok(def)
    }

    fn push_field(&mut self, mut f: FieldDef, source: Source) -> Result<()> {
        if self.field(&f.name).is_some() {
            return Err(UdmError::new(
                SqlState::DuplicateColumn,
                format!("entity \"{}\" has field \"{}\" twice", self.slug, f.name),
            )
            .hint("field names must be unique within an entity"));
        }
        if source == Source::Caller {
            f.id = self.next_field_id;
            f.column = f.name.clone();
            if f.is_many_to_many() {
                f.junction = Some(junction_name(&self.slug, &f.name));
            }
        }
        self.next_field_id = self.next_field_id.max(f.id + 1);
        self.fields.push(f);
        Ok(())
    }

    /// Adds a new field from a caller (assigning its id and column).
    pub fn add_field(&mut self, f: FieldDef) -> Result<()> {
        if self.fields.len() + self.removed_fields.len() >= MAX_FIELDS {
            return Err(UdmError::new(
                SqlState::ProgramLimitExceeded,
                format!(
                    "entity \"{}\" already has {MAX_FIELDS} fields (removed ones included)",
                    self.slug
                ),
            )
            .hint("purge removed fields with udm_purge_field"));
        }
        self.push_field(f, Source::Caller)
    }

    pub fn add_rule(&mut self, r: RuleDef) -> Result<()> {
        if self.rules.iter().any(|x| x.name == r.name) {
            return Err(UdmError::new(
                SqlState::DuplicateObject,
                format!("entity \"{}\" already has a rule \"{}\"", self.slug, r.name),
            ));
        }
        self.rules.push(r);
        Ok(())
    }

    pub fn add_index(&mut self, i: IndexDef) -> Result<()> {
        if self.indexes.iter().any(|x| x.name == i.name) {
            return Err(UdmError::new(
                SqlState::DuplicateObject,
                format!(
                    "entity \"{}\" already has an index \"{}\"",
                    self.slug, i.name
                ),
            ));
        }
        if self
            .indexes
            .iter()
            .any(|x| x.fields == i.fields && x.unique == i.unique)
        {
            return Err(UdmError::new(
                SqlState::DuplicateObject,
                format!(
                    "entity \"{}\" already has an index on ({})",
                    self.slug,
                    i.fields.join(", ")
                ),
            ));
        }
        for name in &i.fields {
            if crate::ident::SYSTEM_COLUMNS.contains(&name.as_str()) {
                continue; // id, created_at, ... are columns of every table
            }
            let f = self
                .field_or_err(name)
                .map_err(|e| e.context(format!("index \"{}\"", i.name)))?;
            if !f.has_column() {
                return Err(UdmError::invalid(format!(
                    "index \"{}\": field \"{name}\" is a many-to-many relation and has no column to index",
                    i.name
                )));
            }
            if f.encrypted_or_staged() {
                return Err(UdmError::new(
                    SqlState::FeatureNotSupported,
                    format!(
                        "index \"{}\": field \"{name}\" of entity \"{}\" is encrypted and cannot be part of an index over fields",
                        i.name, self.slug
                    ),
                )
                .hint("give the field itself \"unique\": true or \"index\": true: its blind index serves equality"));
            }
            if i.unique && !f.ftype.can_be_unique() {
                return Err(UdmError::invalid(format!(
                    "index \"{}\": field \"{name}\" of type {} cannot be part of a unique index",
                    i.name,
                    f.ftype.name()
                )));
            }
        }
        self.indexes.push(i);
        Ok(())
    }

    /// An access scope through a field needs a many-to-one relation to another entity; an owner
    /// needs a user field.
    pub fn check_access(&self, a: &AccessDef) -> Result<()> {
        if let Some(name) = &a.parent {
            let f = self
                .field(name)
                .ok_or_else(|| self.no_such_field(name).context("\"access\": \"scope\""))?;
            if !f.is_many_to_one() || f.target.as_deref() == Some(self.slug.as_str()) {
                return Err(UdmError::invalid(format!(
                    "entity \"{}\": the access scope \"{name}\" must be a many-to-one relation to another entity",
                    self.slug
                ))
                .hint(format!(
                    "use \"self\" or one of {}",
                    name_list(self.fields.iter().filter(|f| f.is_many_to_one() && f.target.as_deref() != Some(self.slug.as_str())).map(|f| f.name.as_str()))
                )));
            }
        }
        if let Some(name) = &a.owner {
            let f = self
                .field(name)
                .ok_or_else(|| self.no_such_field(name).context("\"access\": \"owner\""))?;
            if f.ftype != FieldType::User {
                return Err(UdmError::invalid(format!(
                    "entity \"{}\": the access owner \"{name}\" must be a user field, not a {} field",
                    self.slug,
                    f.ftype.name()
                ))
                .hint("add a field {\"type\": \"user\"} for the owner"));
            }
        }
        Ok(())
    }

    /// A lock scope through a field needs a many-to-one relation field of this entity.
    pub fn check_lock(&self, l: &LockDef) -> Result<()> {
        let Some(name) = l.scope_field() else {
            return Ok(());
        };
        let f = self
            .field(name)
            .ok_or_else(|| self.no_such_field(name).context("\"lock\": \"scope\""))?;
        if !f.is_many_to_one() {
            return Err(UdmError::invalid(format!(
                "entity \"{}\": the lock scope \"{name}\" must be a many-to-one relation field, not {}",
                self.slug,
                if f.is_many_to_many() { "a many-to-many relation".to_string() } else { format!("a {} field", f.ftype.name()) }
            ))
            .hint(format!(
                "use \"self\" or one of {}",
                name_list(self.fields.iter().filter(|f| f.is_many_to_one()).map(|f| f.name.as_str()))
            )));
        }
        Ok(())
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn field_by_id(&self, id: u32) -> Option<&FieldDef> {
        self.fields
            .iter()
            .chain(self.removed_fields.iter())
            .find(|f| f.id == id)
    }

    pub fn field_or_err(&self, name: &str) -> Result<&FieldDef> {
        self.field(name).ok_or_else(|| self.no_such_field(name))
    }

    pub fn no_such_field(&self, name: &str) -> UdmError {
        let removed = self.removed_fields.iter().any(|f| f.name == name);
        let e = UdmError::new(
            SqlState::UndefinedColumn,
            format!(
                "entity \"{}\" has no field \"{}\"",
                self.slug,
                printable(name)
            ),
        );
        if removed {
            e.hint(format!(
                "field \"{name}\" was removed; bring it back with {}",
                crate::ident::sql_call("udm_restore_field", &[&self.slug, name])
            ))
        } else {
            e.hint(format!(
                "fields of \"{}\" are {}",
                self.slug,
                name_list(self.fields.iter().map(|f| f.name.as_str()))
            ))
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("slug".into(), json!(self.slug));
        if let Some(l) = &self.label {
            m.insert("label".into(), json!(l));
        }
        if let Some(d) = &self.description {
            m.insert("description".into(), json!(d));
        }
        m.insert(
            "fields".into(),
            Value::Array(self.fields.iter().map(field_to_json).collect()),
        );
        m.insert(
            "rules".into(),
            Value::Array(self.rules.iter().map(rule_to_json).collect()),
        );
        m.insert(
            "indexes".into(),
            Value::Array(self.indexes.iter().map(index_to_json).collect()),
        );
        m.insert(
            "removed_fields".into(),
            Value::Array(self.removed_fields.iter().map(field_to_json).collect()),
        );
        m.insert("next_field_id".into(), json!(self.next_field_id));
        if !self.audit {
            m.insert("audit".into(), json!(false));
        }
        if let Some(l) = &self.lock {
            m.insert("lock".into(), lock_to_json(l));
        }
        if let Some(a) = &self.access {
            m.insert("access".into(), access_to_json(a));
        }
        Value::Object(m)
    }

    /// The definition as stored, reparsed: a round trip check.
    pub fn from_catalog(slug: &str, v: &Value) -> Result<EntityDef> {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("slug");
        }
        EntityDef::parse(slug, &v, Source::Catalog)
    }
}

/// Junction table of a many-to-many field: `<entity>__<field>` (slugs never contain `__`).
pub fn junction_name(entity: &str, field: &str) -> String {
    fit_name(&format!("{entity}__{field}"))
}

/// Applies `changes` to a field: keys replace options, `null` removes an option, `name` renames.
/// The type may change; udm decides later whether the data converts.
pub fn apply_field_changes(old: &FieldDef, changes: &Value) -> Result<FieldDef> {
    let what = field_what(&old.name);
    let ch = expect_object(changes, &format!("changes to {what}"))?;
    if ch.is_empty() {
        return Err(UdmError::invalid(format!("changes to {what} are empty"))
            .hint("pass e.g. {\"label\": \"Price\"} or {\"max_length\": 100}"));
    }
    for k in STORED_FIELD_KEYS {
        if ch.contains_key(*k) {
            return Err(UdmError::invalid(format!(
                "{what}: \"{k}\" is assigned by udm and cannot be changed"
            )));
        }
    }
    for k in ["target", "targets", "many", "cardinality"] {
        if let Some(v) = ch.get(k) {
            let cur = field_to_json(old);
            if cur.get(k) != Some(v) {
                return Err(UdmError::new(
                    SqlState::FeatureNotSupported,
                    format!("{what}: \"{k}\" of a relation cannot be changed"),
                )
                .hint("add a new relation field, copy the links, then remove this one"));
            }
        }
    }
    let mut obj = match field_to_json(old) {
        Value::Object(o) => o,
        _ => unreachable!(),
    };
    let type_changed = ch
        .get("type")
        .is_some_and(|t| t.as_str() != Some(&old.ftype.name()));
    if type_changed {
        // options of the old type that the new type does not take are dropped.
        let new_type = FieldType::parse(expect_str(&ch["type"], &format!("{what}: \"type\""))?)
            .map_err(|e| e.context(&what))?;
        let mut keep: Vec<&str> = COMMON_OPTIONS.to_vec();
        keep.extend_from_slice(new_type.info().options);
        keep.extend_from_slice(STORED_FIELD_KEYS);
        obj.retain(|k, _| keep.contains(&k.as_str()) || ch.contains_key(k));
        if matches!(new_type, FieldType::Array(_)) {
            obj.remove("items");
        }
    }
    for (k, v) in ch {
        if v.is_null() {
            if k == "name" || k == "type" {
                return Err(UdmError::invalid(format!(
                    "{what}: \"{k}\" cannot be removed"
                )));
            }
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    if let Some(stage) = old.encryption_stage {
        return staged_field_changes(old, ch, stage, &what);
    }
    let mut f = parse_field(&Value::Object(obj), Source::Catalog)?;
    f.id = old.id;
    // turning encryption on or off: the definition changes at once, the existing values are
    // converted afterwards in batches (`udm_reencrypt`); meanwhile the field counts as encrypted
    let asked = ch.get("encrypted").map(|v| v.as_bool() == Some(true));
    let toggle = match (old.encrypted, old.encryption_pending, asked) {
        (false, _, Some(true)) => Some(Toggle::On),
        (true, None | Some(Toggle::On), Some(false)) => Some(Toggle::Off),
        (true, Some(Toggle::Off), Some(true)) => Some(Toggle::On),
        _ => None,
    };
    if let Some(toggle) = toggle {
        f.encrypted = true;
        f.encryption_pending = Some(toggle);
        refuse_with_toggle(old, &f, &what, toggle)?;
        if !old.encrypted && f.stages_encryption() {
            // a column that is not text: its values are sealed beside it first (`Stage`)
            f.encrypted = false;
            f.encryption_pending = None;
            f.encryption_stage = Some(Stage::Sealing);
        }
        return Ok(f);
    }
    if old.encrypted && (f.ftype != old.ftype || f.blind_indexed() != old.blind_indexed()) {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "{what}: the type, \"unique\" and \"index\" of an encrypted field cannot yet be changed"
            ),
        )
        .hint("define a new encrypted field with the options it should have and copy the values into it"));
    }
    // a field's rules are checked on the plaintext when a value is written; stored values are
    // ciphertexts that no CHECK can read, so a new rule could not be held against them
    if old.encrypted
        && (f.min != old.min
            || f.max != old.max
            || f.min_length != old.min_length
            || f.max_length != old.max_length
            || f.pattern != old.pattern)
    {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "{what}: the rules (min, max, min_length, max_length, pattern) of an encrypted field cannot yet be changed: its stored values could not be checked against them"
            ),
        )
        .hint("define a new encrypted field with the rules it should have and copy the values into it"));
    }
    if f.name != old.name {
        f.column = f.name.clone();
    }
    Ok(f)
}

/// A change asked of a field whose encryption is being turned on in stages: turning it on again
/// changes nothing; turning it off is taken while its values are sealed (the hidden column goes)
/// and refused once they were swapped in; any other change waits (`55000`).
fn staged_field_changes(
    old: &FieldDef,
    ch: &serde_json::Map<String, Value>,
    stage: Stage,
    what: &str,
) -> Result<FieldDef> {
    let asked = ch.get("encrypted").map(|v| v.as_bool() == Some(true));
    let waiting = || {
        UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "{what}: encryption is being turned on (stage \"{}\")",
                stage.name()
            ),
        )
    };
    if ch.len() != 1 || asked.is_none() {
        return Err(waiting().hint(
            "call udm_reencrypt(entity) until it reports the field completed, then change it",
        ));
    }
    match (stage, asked) {
        (Stage::Sealing, Some(false)) => Ok(FieldDef {
            encryption_stage: None,
            ..old.clone()
        }),
        (Stage::Scrubbing, Some(false)) => Err(waiting().hint(
            "its values are encrypted already: call udm_reencrypt(entity) until it reports the field completed, then turn encryption off",
        )),
        _ => Ok(old.clone()),
    }
}

/// What cannot come with turning encryption on or off for an existing field (`0A000`): another
/// change of its type or rules in the same call (existing values could not be held to them), a
/// type that cannot be encrypted, and `unique`/`index` — a unique constraint cannot hold across
/// plaintext and sealed values while they are converted.
fn refuse_with_toggle(old: &FieldDef, f: &FieldDef, what: &str, toggle: Toggle) -> Result<()> {
    let turn = toggle.name();
    if !f.ftype.can_be_encrypted() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!("{what}: a field of type {} cannot be encrypted", f.ftype.name()),
        )
        .hint("encrypted fields are text, long_text, email, url, phone, json, date, datetime, time or duration fields"));
    }
    // A unique field's constraint (or an indexed field's index) holds across its plaintext and
    // sealed values while they are converted: its plain constraint stays for the plaintext ones
    // (json and date-like columns hold their canonical text meanwhile), a partial blind index
    // covers the sealed ones, and the stamp trigger looks for a value written in one form among
    // the other (`FieldDef::converting_blind`).
    let mut same = f.clone();
    same.encrypted = old.encrypted;
    same.encryption_pending = old.encryption_pending;
    same.label = old.label.clone();
    same.description = old.description.clone();
    same.critical = old.critical;
    same.audited = old.audited;
    if same != *old {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "{what}: encryption is turned {turn} alone: other changes of the field (type, name, rules, default) cannot come with it"
            ),
        )
        .hint("change the other options in a call of their own"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Value {
        json!({"label": "Product",
          "fields": [
            {"name": "name", "type": "text", "required": true, "max_length": 200},
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
            {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
            {"name": "metadata", "type": "json"},
            {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
            {"name": "sample_date", "type": "date"},
            {"name": "release_date", "type": "date"}],
          "rules": [{"name": "sample_before_release", "check": "sample_date <= release_date",
                     "message": "sample date must not be after release date"}]})
    }

    #[test]
    fn parses_the_issue_example() {
        let d = EntityDef::parse("product", &product(), Source::Caller).unwrap();
        assert_eq!(d.fields.len(), 7);
        assert_eq!(d.fields[0].id, 1);
        assert_eq!(d.fields[6].id, 7);
        assert_eq!(d.next_field_id, 8);
        assert_eq!(d.field("price").unwrap().pg_type(), "numeric(12,2)");
        assert_eq!(
            d.field("category_id").unwrap().on_delete(),
            OnDelete::Restrict
        );
        assert_eq!(d.rules[0].name, "sample_before_release");
        assert_eq!(d.label.as_deref(), Some("Product"));
    }

    #[test]
    fn catalog_round_trip() {
        let d = EntityDef::parse("product", &product(), Source::Caller).unwrap();
        let back = EntityDef::from_catalog("product", &d.to_json()).unwrap();
        assert_eq!(d, back);
    }

    #[test]
    fn caller_cannot_set_ids_or_columns() {
        let e = EntityDef::parse(
            "x",
            &json!({"fields": [{"name": "a", "type": "text", "column": "b"}]}),
            Source::Caller,
        )
        .unwrap_err();
        assert!(
            e.message.contains("unknown option \"column\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn duplicate_field_is_42701() {
        let e = EntityDef::parse(
            "x",
            &json!({"fields": [{"name": "a", "type": "text"}, {"name": "a", "type": "integer"}]}),
            Source::Caller,
        )
        .unwrap_err();
        assert_eq!(e.state, SqlState::DuplicateColumn);
        assert!(e.message.contains("field \"a\" twice"));
    }

    #[test]
    fn bad_shapes_name_the_place() {
        let cases = [
            (json!([]), "must be a JSON object"),
            (json!({"fields": {}}), "\"fields\" must be a JSON array"),
            (json!({"fields": [{"type": "text"}]}), "has no \"name\""),
            (
                json!({"fields": [{"name": "a"}]}),
                "field \"a\" has no \"type\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "txt"}]}),
                "unknown field type \"txt\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "text", "min": 3}]}),
                "unknown option \"min\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "integer", "min": "x"}]}),
                "min must be a number",
            ),
            (
                json!({"fields": [{"name": "a", "type": "text", "max_length": 0}]}),
                "from 1 to",
            ),
            (
                json!({"fields": [{"name": "a", "type": "select"}]}),
                "needs \"values\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "select", "values": ["x"], "default": "y"}]}),
                "not one of the values",
            ),
            (
                json!({"fields": [{"name": "a", "type": "relation"}]}),
                "needs a \"target\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "relation", "target": "b", "on_delete": "explode"}]}),
                "on_delete \"explode\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "relation", "target": "b", "on_delete": "set_null", "required": true}]}),
                "set_null",
            ),
            (
                json!({"fields": [{"name": "a", "type": "json", "unique": true}]}),
                "cannot be unique",
            ),
            (
                json!({"fields": [{"name": "a", "type": "integer", "default": "5"}]}),
                "whole number",
            ),
            (
                json!({"fields": [{"name": "a", "type": "integer", "default": 3000000000u64}]}),
                "out of range for integer",
            ),
            (
                json!({"fields": [{"name": "a", "type": "rating", "default": 6}]}),
                "out of range for rating",
            ),
            (
                json!({"fields": [{"name": "a", "type": "text", "min_length": 5, "max_length": 2}]}),
                "greater than max_length",
            ),
            (
                json!({"fields": [{"name": "a", "type": "decimal", "precision": 2, "scale": 3}]}),
                "scale 3 is greater",
            ),
            (
                json!({"fields": [{"name": "a", "type": "text", "messages": {"min": "x"}}]}),
                "does not have",
            ),
            (
                json!({"fields": [{"name": "id", "type": "text"}]}),
                "system column",
            ),
            (
                json!({"fields": [], "colour": 1}),
                "unknown option \"colour\"",
            ),
            (json!({"rules": [{"name": "r"}]}), "has no \"check\""),
            (
                json!({"fields": [{"name": "a", "type": "rating", "max": 500}]}),
                "from 1 to 100",
            ),
            (
                json!({"fields": [{"name": "a", "type": "array"}]}),
                "needs \"items\"",
            ),
            (
                json!({"fields": [{"name": "a", "type": "currency", "currency_code": "euro"}]}),
                "ISO 4217",
            ),
        ];
        for (v, want) in cases {
            let e = EntityDef::parse("x", &v, Source::Caller).unwrap_err();
            assert!(e.message.contains(want), "{v}: got {:?}", e.message);
        }
    }

    #[test]
    fn array_with_items_option() {
        let d = EntityDef::parse(
            "x",
            &json!({"fields": [{"name": "a", "type": "text[]", "max_items": 3}]}),
            Source::Caller,
        )
        .unwrap();
        assert_eq!(d.fields[0].pg_type(), "text[]");
    }

    #[test]
    fn many_to_many_gets_a_junction() {
        let d = EntityDef::parse("product", &json!({"fields": [{"name": "tags", "type": "relation", "target": "tag", "many": true}]}), Source::Caller)
            .unwrap();
        assert_eq!(d.fields[0].junction.as_deref(), Some("product__tags"));
        assert!(!d.fields[0].has_column());
    }

    #[test]
    fn field_changes_rename_and_drop_options() {
        let d = EntityDef::parse("product", &product(), Source::Caller).unwrap();
        let name = d.field("name").unwrap();
        let f = apply_field_changes(
            name,
            &json!({"name": "title", "max_length": null, "min_length": 2}),
        )
        .unwrap();
        assert_eq!(f.name, "title");
        assert_eq!(f.column, "title");
        assert_eq!(f.id, name.id);
        assert_eq!(f.max_length, None);
        assert_eq!(f.min_length, Some(2));
        assert!(f.required);
    }

    #[test]
    fn field_type_change_drops_foreign_options() {
        let d = EntityDef::parse("product", &product(), Source::Caller).unwrap();
        let f = apply_field_changes(d.field("name").unwrap(), &json!({"type": "integer"})).unwrap();
        assert_eq!(f.ftype, FieldType::Integer);
        assert_eq!(f.max_length, None);
    }

    #[test]
    fn field_changes_refuse_relation_retarget_and_ids() {
        let d = EntityDef::parse("product", &product(), Source::Caller).unwrap();
        let e = apply_field_changes(d.field("category_id").unwrap(), &json!({"target": "brand"}))
            .unwrap_err();
        assert_eq!(e.state, SqlState::FeatureNotSupported);
        let e = apply_field_changes(d.field("name").unwrap(), &json!({"id": 9})).unwrap_err();
        assert!(e.message.contains("assigned by udm"));
        assert!(apply_field_changes(d.field("name").unwrap(), &json!({})).is_err());
    }

    #[test]
    fn indexes_check_fields() {
        let mut d = EntityDef::parse("product", &product(), Source::Caller).unwrap();
        let i = parse_index(
            &json!({"fields": ["status", "price"]}),
            "product",
            Source::Caller,
        )
        .unwrap();
        assert_eq!(i.name, "product__status__price__idx");
        let back = EntityDef::from_catalog("product", &{
            let mut d2 = d.clone();
            d2.add_index(i.clone()).unwrap();
            d2.to_json()
        })
        .unwrap();
        assert_eq!(
            back.indexes[0].name, "product__status__price__idx",
            "stored names are read back"
        );
        d.add_index(i.clone()).unwrap();
        assert_eq!(d.add_index(i).unwrap_err().state, SqlState::DuplicateObject);
        let e = d
            .add_index(
                parse_index(&json!({"fields": ["nope"]}), "product", Source::Caller).unwrap(),
            )
            .unwrap_err();
        assert_eq!(e.state, SqlState::UndefinedColumn);
        assert!(e.hint.unwrap().contains("\"price\""));
    }
}
