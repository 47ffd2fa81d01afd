//! Dot paths: `name`, `category_id.name`, `category_id.parent_id.name`, `metadata.brand`,
//! `category_id.attributes.color`, `tags.name` (many-to-many), `product[].codename` (reverse:
//! products whose relation points here). Resolved against the tenant's entities into hops and a
//! leaf; every failure names the path, the segment and the names valid at that point.

use crate::definition::{EntityDef, FieldDef};
use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{printable, quote_ident, quote_literal, SYSTEM_COLUMNS};
use crate::types::FieldType;
use crate::values::PType;

pub const MAX_PATH_DEPTH: usize = 8;
pub const MAX_JSON_KEY: usize = 200;

/// The entities a query can reach: the tenant's active entities.
pub trait Model {
    fn schema(&self) -> &str;
    fn entity(&self, slug: &str) -> Option<&EntityDef>;
    fn entity_names(&self) -> Vec<String>;
    /// Fields the reader may not read (their role keeps them back): refused in paths, left out
    /// of default columns.
    fn hidden(&self, _entity: &str, _field: &str) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Name(String),
    /// `entity[]` or `entity[field]`: records of `entity` whose relation points here.
    Reverse {
        entity: String,
        field: Option<String>,
    },
}

/// A many-to-one hop: follow `column` of the current entity to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToOne {
    pub column: String,
    pub target: String,
}

/// A hop to several records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ToMany {
    /// Through a many-to-many junction table.
    Junction { junction: String, target: String },
    /// Records of `source` whose `column` points at the current record.
    Reverse { source: String, column: String },
}

impl ToMany {
    pub fn target(&self) -> &str {
        match self {
            ToMany::Junction { target, .. } => target,
            ToMany::Reverse { source, .. } => source,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Leaf {
    /// A column of the entity reached, with its parameter type.
    Column {
        column: String,
        ptype: PType,
        select_values: Option<Vec<String>>,
        /// The field is encrypted: its column holds sealed values.
        sealed: Option<Sealed>,
    },
    /// A path inside a json column.
    Json { column: String, keys: Vec<String> },
}

/// Where an encrypted field's values come from, for `udm.decrypt_field` (which checks, as the
/// reader, that the reader may read the field) and the blind index of an equality filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sealed {
    pub schema: String,
    pub entity: String,
    pub field: u32,
    pub name: String,
    /// The stored values carry a blind index (the field is unique or indexed).
    pub blind: bool,
    /// Encryption is being turned on or off for the (blind-indexed) field: plaintext and sealed
    /// values are both stored until they are converted, and equality looks at both.
    pub converting: bool,
    /// For json and date-like fields: the SQL of the canonical text and the type the plaintext
    /// is read back as (`FieldType::sealed_form`).
    pub form: Option<(&'static str, &'static str)>,
}

impl Sealed {
    /// The plaintext (text) of the sealed column at `alias`.
    pub fn decrypt_sql(&self, alias: &str, column: &str) -> String {
        let call = format!(
            "udm.decrypt_field({}, {}, {}, {alias}.\"id\", {alias}.{})",
            quote_literal(&self.schema),
            quote_literal(&self.entity),
            self.field,
            quote_ident(column)
        );
        match self.form {
            Some((_, read_as)) => format!("({call})::{read_as}"),
            None => call,
        }
    }

    /// The blind index stored in the sealed column at `alias` (what its index is built on).
    pub fn blind_sql(alias: &str, column: &str) -> String {
        crate::crypto::blind_index_sql(&format!("{alias}.{}", quote_ident(column)))
    }

    /// The canonical text of the plaintext `value_sql` (a text expression): what is sealed,
    /// blind-indexed, and stored while encryption is being turned on or off.
    pub fn canonical_sql(&self, value_sql: &str) -> String {
        match self.form {
            Some((canonical, _)) => format!("({})", canonical.replace("$1", value_sql)),
            None => value_sql.to_string(),
        }
    }

    /// The blind index of the plaintext `value_sql` (a text expression).
    pub fn blind_of_sql(&self, value_sql: &str) -> String {
        let value_sql = self.canonical_sql(value_sql);
        format!(
            "udm.blind_index({}, {}, {}, {value_sql})",
            quote_literal(&self.schema),
            quote_literal(&self.entity),
            self.field
        )
    }
}

/// The error for ordering or comparing an encrypted field by anything but equality.
pub fn sealed_refused(path: &str, what: &str, s: &Sealed) -> UdmError {
    UdmError::new(
        SqlState::FeatureNotSupported,
        format!(
            "path \"{}\": field \"{}\" of entity \"{}\" is encrypted and cannot be {what}",
            printable(path),
            s.name,
            s.entity
        ),
    )
    .hint("encrypted fields support equality filters (eq, neq, in, not_in, is_null) through their blind index only; sort and compare ranges in the application")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resolved {
    pub text: String,
    /// Many-to-one hops from the root.
    pub to_one: Vec<ToOne>,
    /// At most one hop to many records, then more many-to-one hops inside it.
    pub to_many: Option<(ToMany, Vec<ToOne>)>,
    pub leaf: Leaf,
}

impl Resolved {
    /// The prefix key of the k-th to-one hop (for join de-duplication): `category_id`,
    /// `category_id.parent_id`.
    pub fn join_prefix(&self, k: usize) -> String {
        self.to_one[..=k]
            .iter()
            .map(|h| h.column.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

fn bad_path(path: &str, why: impl std::fmt::Display) -> UdmError {
    UdmError::new(
        SqlState::UndefinedColumn,
        format!("path \"{}\": {why}", printable(path)),
    )
}

pub fn parse(path: &str) -> Result<Vec<Seg>> {
    if path.is_empty() {
        return Err(UdmError::new(SqlState::UndefinedColumn, "empty path")
            .hint("name a field, e.g. \"name\" or \"category_id.name\""));
    }
    let parts: Vec<&str> = path.split('.').collect();
    if parts.len() > MAX_PATH_DEPTH {
        return Err(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!(
                "path \"{}\" has {} segments; at most {MAX_PATH_DEPTH} are allowed",
                printable(path),
                parts.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        if p.is_empty() {
            return Err(bad_path(
                path,
                "empty segment (two dots, or a dot at an end)",
            ));
        }
        if p.chars().count() > MAX_JSON_KEY || p.chars().any(char::is_control) {
            return Err(bad_path(
                path,
                format!("segment \"{}\" is not a valid name or key", printable(p)),
            ));
        }
        if let Some(open) = p.find('[') {
            let inner = p[open + 1..].strip_suffix(']').ok_or_else(|| {
                bad_path(path, format!("\"{}\" lacks a closing ']'", printable(p)))
            })?;
            let entity = &p[..open];
            out.push(Seg::Reverse {
                entity: entity.to_string(),
                field: (!inner.is_empty()).then(|| inner.to_string()),
            });
        } else {
            out.push(Seg::Name(p.to_string()));
        }
    }
    Ok(out)
}

fn system_ptype(c: &str) -> PType {
    match c {
        "id" => PType::Uuid,
        "created_at" | "updated_at" => PType::Timestamp,
        "_version" => PType::Integer,
        _ => PType::Text,
    }
}

/// Names valid after the entity `e` in a path: system columns, fields, reverse relations.
pub fn names_at(model: &dyn Model, e: &EntityDef) -> Vec<String> {
    let mut names: Vec<String> = SYSTEM_COLUMNS.iter().map(|s| s.to_string()).collect();
    names.extend(
        e.fields
            .iter()
            .filter(|f| f.ftype != FieldType::Password && !model.hidden(&e.slug, &f.name))
            .map(|f| f.name.clone()),
    );
    for (source, field) in reverse_relations(model, &e.slug) {
        names.push(format!("{source}[{field}]"));
    }
    names
}

/// Relation fields of other entities (and the entity itself) that point at `target`.
pub fn reverse_relations(model: &dyn Model, target: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in model.entity_names() {
        if let Some(e) = model.entity(&name) {
            for f in &e.fields {
                if f.is_many_to_one() && f.target.as_deref() == Some(target) {
                    out.push((name.clone(), f.name.clone()));
                }
            }
        }
    }
    out
}

/// `source[field]` from `target` where `field` is a visible many-to-many relation of `source`
/// to `target`: the source entity and the junction table. (Paths do not follow these; quantified
/// filters do.)
pub fn junction_back<'a>(
    model: &'a dyn Model,
    target: &str,
    source: &str,
    field: Option<&str>,
) -> Option<(&'a EntityDef, String)> {
    let src = model.entity(source)?;
    let f = src.field(field?)?;
    (f.is_many_to_many() && f.target.as_deref() == Some(target) && !model.hidden(source, &f.name))
        .then(|| (src, f.junction.clone().unwrap_or_default()))
}

/// A path that ends at a hop to many records: its leaf is their id.
fn id_leaf(path: &str, to_one: Vec<ToOne>, to_many: Option<(ToMany, Vec<ToOne>)>) -> Resolved {
    Resolved {
        text: path.to_string(),
        to_one,
        to_many,
        leaf: Leaf::Column {
            column: "id".into(),
            ptype: PType::Uuid,
            select_values: None,
            sealed: None,
        },
    }
}

fn field_leaf(model: &dyn Model, entity: &EntityDef, f: &FieldDef) -> Leaf {
    Leaf::Column {
        column: f.column.clone(),
        ptype: PType::of_field(&f.ftype),
        select_values: matches!(f.ftype, FieldType::Select).then(|| f.values.clone()),
        sealed: f.encrypted.then(|| Sealed {
            schema: model.schema().to_string(),
            entity: entity.slug.clone(),
            field: f.id,
            name: f.name.clone(),
            blind: f.blind_indexed(),
            converting: f.converting_blind(),
            form: f.ftype.sealed_form(),
        }),
    }
}

/// Resolves `path` from the entity `root`.
pub fn resolve(model: &dyn Model, root: &str, path: &str) -> Result<Resolved> {
    let segs = parse(path)?;
    let mut current = model.entity(root).ok_or_else(|| {
        UdmError::new(
            SqlState::UndefinedTable,
            format!("entity \"{root}\" does not exist"),
        )
    })?;
    let mut to_one = Vec::new();
    let mut to_many: Option<(ToMany, Vec<ToOne>)> = None;
    let mut i = 0;
    let unknown = |e: &EntityDef, seg: &str, consumed: &[Seg]| {
        let at = if consumed.is_empty() {
            String::from("the start")
        } else {
            format!("\"{}.\"", seg_text(consumed))
        };
        bad_path(
            path,
            format!(
                "\"{}\" is not a field of entity \"{}\"",
                printable(seg),
                e.slug
            ),
        )
        .hint(format!(
            "at {at} you can use {}",
            name_list(names_at(model, e))
        ))
    };
    while i < segs.len() {
        let last = i + 1 == segs.len();
        match &segs[i] {
            Seg::Reverse { entity, field } => {
                if to_many.is_some() {
                    return Err(bad_path(path, "a path can go to many records only once"));
                }
                let candidates: Vec<(String, String)> = reverse_relations(model, &current.slug)
                    .into_iter()
                    .filter(|(s, f)| {
                        (s == entity || format!("{s}s") == *entity)
                            && field.as_ref().is_none_or(|x| x == f)
                    })
                    .collect();
                let (source, fname) = match candidates.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(unknown(current, &seg_text(&segs[i..=i]), &segs[..i])),
                    many => {
                        return Err(bad_path(
                            path,
                            format!(
                                "\"{}[]\" is ambiguous: several relations point here",
                                entity
                            ),
                        )
                        .hint(format!(
                            "name the field: {}",
                            name_list(many.iter().map(|(s, f)| format!("{s}[{f}]")))
                        )))
                    }
                };
                let src = model.entity(&source).expect("listed");
                let column = src.field(&fname).map(|f| f.column.clone()).unwrap_or(fname);
                to_many = Some((
                    ToMany::Reverse {
                        source: source.clone(),
                        column,
                    },
                    Vec::new(),
                ));
                current = src;
                if last {
                    return Ok(id_leaf(path, to_one, to_many));
                }
            }
            Seg::Name(name) => {
                if SYSTEM_COLUMNS.contains(&name.as_str()) {
                    if !last {
                        return Err(bad_path(
                            path,
                            format!("\"{name}\" is a system column and cannot be followed"),
                        ));
                    }
                    return Ok(Resolved {
                        text: path.to_string(),
                        to_one,
                        to_many,
                        leaf: Leaf::Column {
                            column: name.clone(),
                            ptype: system_ptype(name),
                            select_values: None,
                            sealed: None,
                        },
                    });
                }
                let Some(f) = current.field(name) else {
                    return Err(unknown(current, name, &segs[..i]));
                };
                if model.hidden(&current.slug, &f.name) {
                    return Err(UdmError::new(
                        SqlState::InsufficientPrivilege,
                        format!(
                            "path \"{}\": permission denied to read {}.{} (the reader's role keeps it back)",
                            printable(path),
                            current.slug,
                            f.name
                        ),
                    )
                    .hint("leave the field out; a tenant admin decides field permissions with udm_define_role"));
                }
                match &f.ftype {
                    FieldType::Password => {
                        return Err(UdmError::new(
                            SqlState::InsufficientPrivilege,
                            format!(
                                "path \"{}\": {}.{} is a password and cannot be read",
                                printable(path),
                                current.slug,
                                f.name
                            ),
                        ))
                    }
                    FieldType::Json | FieldType::File => {
                        let keys: Vec<String> = segs[i + 1..]
                            .iter()
                            .map(|s| match s {
                                Seg::Name(k) => Ok(k.clone()),
                                Seg::Reverse { .. } => {
                                    Err(bad_path(path, "inside a json field, use plain keys"))
                                }
                            })
                            .collect::<Result<_>>()?;
                        if f.encrypted && !keys.is_empty() {
                            return Err(UdmError::new(
                                SqlState::FeatureNotSupported,
                                format!(
                                    "path \"{}\": field \"{}\" of entity \"{}\" is encrypted: its keys cannot be followed",
                                    printable(path),
                                    f.name,
                                    current.slug
                                ),
                            )
                            .hint("read the whole field and pick the keys in the application"));
                        }
                        let leaf = if keys.is_empty() {
                            field_leaf(model, current, f)
                        } else {
                            Leaf::Json {
                                column: f.column.clone(),
                                keys,
                            }
                        };
                        return Ok(Resolved {
                            text: path.to_string(),
                            to_one,
                            to_many,
                            leaf,
                        });
                    }
                    FieldType::Relation if f.many => {
                        if to_many.is_some() {
                            return Err(bad_path(path, "a path can go to many records only once"));
                        }
                        let target = f.target.clone().unwrap_or_default();
                        to_many = Some((
                            ToMany::Junction {
                                junction: f.junction.clone().unwrap_or_default(),
                                target: target.clone(),
                            },
                            Vec::new(),
                        ));
                        current = model.entity(&target).ok_or_else(|| {
                            bad_path(path, format!("target \"{target}\" does not exist"))
                        })?;
                        if last {
                            return Ok(id_leaf(path, to_one, to_many));
                        }
                    }
                    FieldType::Relation if !last => {
                        let target = f.target.clone().unwrap_or_default();
                        let hop = ToOne {
                            column: f.column.clone(),
                            target: target.clone(),
                        };
                        match &mut to_many {
                            Some((_, after)) => after.push(hop),
                            None => to_one.push(hop),
                        }
                        current = model.entity(&target).ok_or_else(|| {
                            bad_path(path, format!("target \"{target}\" does not exist"))
                        })?;
                    }
                    _ => {
                        if !last {
                            return Err(bad_path(
                                path,
                                format!(
                                    "\"{}\" is a {} field of entity \"{}\" and cannot be followed",
                                    name,
                                    f.ftype.name(),
                                    current.slug
                                ),
                            )
                            .hint("only relations and json fields can be followed with '.'"));
                        }
                        return Ok(Resolved {
                            text: path.to_string(),
                            to_one,
                            to_many,
                            leaf: field_leaf(model, current, f),
                        });
                    }
                }
            }
        }
        i += 1;
    }
    unreachable!("the loop returns at the last segment")
}

fn seg_text(segs: &[Seg]) -> String {
    segs.iter()
        .map(|s| match s {
            Seg::Name(n) => n.clone(),
            Seg::Reverse {
                entity,
                field: None,
            } => format!("{entity}[]"),
            Seg::Reverse {
                entity,
                field: Some(f),
            } => format!("{entity}[{f}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::definition::{EntityDef, Source};
    use serde_json::json;
    use std::collections::BTreeMap;

    pub struct TestModel(pub BTreeMap<String, EntityDef>);

    impl Model for TestModel {
        fn schema(&self) -> &str {
            "acme"
        }
        fn entity(&self, slug: &str) -> Option<&EntityDef> {
            self.0.get(slug)
        }
        fn entity_names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
    }

    pub fn shop() -> TestModel {
        let mut m = BTreeMap::new();
        for (slug, def) in [
            (
                "category",
                json!({"fields": [{"name": "name", "type": "text"},
                {"name": "parent_id", "type": "relation", "target": "category"},
                {"name": "attributes", "type": "json"}]}),
            ),
            ("tag", json!({"fields": [{"name": "name", "type": "text"}]})),
            (
                "brand",
                json!({"fields": [{"name": "name", "type": "text"}]}),
            ),
            (
                "product",
                json!({"fields": [{"name": "name", "type": "text"},
                {"name": "codename", "type": "text"},
                {"name": "price", "type": "decimal"},
                {"name": "active", "type": "boolean"},
                {"name": "status", "type": "select", "values": ["draft", "active", "retired"]},
                {"name": "metadata", "type": "json"},
                {"name": "released", "type": "date"},
                {"name": "labels", "type": "tags"},
                {"name": "secret", "type": "password"},
                {"name": "category_id", "type": "relation", "target": "category"},
                {"name": "brand_id", "type": "relation", "target": "brand"},
                {"name": "tags", "type": "relation", "target": "tag", "many": true}]}),
            ),
        ] {
            m.insert(
                slug.to_string(),
                EntityDef::parse(slug, &def, Source::Caller).unwrap(),
            );
        }
        TestModel(m)
    }

    #[test]
    fn relation_and_json_paths() {
        let m = shop();
        let r = resolve(&m, "product", "category_id.parent_id.name").unwrap();
        assert_eq!(r.to_one.len(), 2);
        assert_eq!(r.join_prefix(1), "category_id.parent_id");
        assert!(matches!(&r.leaf, Leaf::Column { column, .. } if column == "name"));
        let r = resolve(&m, "product", "metadata.brand").unwrap();
        assert_eq!(
            r.leaf,
            Leaf::Json {
                column: "metadata".into(),
                keys: vec!["brand".into()]
            }
        );
        let r = resolve(&m, "product", "category_id.attributes.color.hex").unwrap();
        assert_eq!(r.to_one.len(), 1);
        assert_eq!(
            r.leaf,
            Leaf::Json {
                column: "attributes".into(),
                keys: vec!["color".into(), "hex".into()]
            }
        );
    }

    #[test]
    fn to_many_paths() {
        let m = shop();
        let r = resolve(&m, "product", "tags.name").unwrap();
        assert!(
            matches!(&r.to_many, Some((ToMany::Junction { junction, target }, _)) if junction == "product__tags" && target == "tag")
        );
        let r = resolve(&m, "category", "product[].codename").unwrap();
        assert!(
            matches!(&r.to_many, Some((ToMany::Reverse { source, column }, _)) if source == "product" && column == "category_id")
        );
        let r = resolve(&m, "category", "products[].brand_id.name").unwrap();
        assert_eq!(
            r.to_many.as_ref().unwrap().1.len(),
            1,
            "to-one hops inside the to-many hop"
        );
        let r = resolve(&m, "category", "category[parent_id].name").unwrap();
        assert!(
            matches!(&r.to_many, Some((ToMany::Reverse { source, .. }, _)) if source == "category")
        );
        let e = resolve(&m, "product", "tags.name.x").unwrap_err();
        assert!(
            e.message
                .contains("text field of entity \"tag\" and cannot be followed"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_segments_list_what_is_valid() {
        let m = shop();
        let e = resolve(&m, "product", "category_id.nme").unwrap_err();
        assert_eq!(e.state, SqlState::UndefinedColumn);
        assert_eq!(
            e.message,
            "path \"category_id.nme\": \"nme\" is not a field of entity \"category\""
        );
        let hint = e.hint.unwrap();
        assert!(
            hint.starts_with("at \"category_id.\" you can use"),
            "{hint}"
        );
        assert!(
            hint.contains("\"parent_id\"") && hint.contains("\"product[category_id]\""),
            "{hint}"
        );
        let e = resolve(&m, "product", "nope").unwrap_err();
        assert!(e
            .hint
            .unwrap()
            .starts_with("at the start you can use \"id\""));
        assert!(resolve(&m, "product", "name").is_ok());
    }

    #[test]
    fn limits_and_refusals() {
        let m = shop();
        assert_eq!(
            resolve(&m, "product", "a.".repeat(9).trim_end_matches('.'))
                .unwrap_err()
                .state,
            SqlState::ProgramLimitExceeded
        );
        assert_eq!(
            resolve(&m, "product", "secret").unwrap_err().state,
            SqlState::InsufficientPrivilege
        );
        assert!(resolve(&m, "product", "price.x")
            .unwrap_err()
            .message
            .contains("cannot be followed"));
        assert!(resolve(&m, "product", "id.x").is_err());
        assert!(resolve(&m, "product", "a..b")
            .unwrap_err()
            .message
            .contains("empty segment"));
        assert!(resolve(&m, "product", "x[")
            .unwrap_err()
            .message
            .contains("closing"));
    }
}
