//! The GraphQL schema of a tenant, built programmatically from udm's entity definitions (the
//! [`Model`] the session may read: fields its role may not read are left out, passwords are
//! input-only), with the reflection the builder needs to map every GraphQL type, field and root
//! field back to entities, fields and udm paths.
//!
//! A schema depends only on the model, so the surface builds it once per (tenant model
//! version, hidden-field set) and shares it (`Rc<GqlSchema>`) across documents; see
//! [`super::CacheKeys`].

use super::names::{
    camel, is_enum_value, is_name, pascal, relation_names, reverse_name, type_name_conflict,
};
use super::sdl::{Field, Fields, Input, SchemaBuilder};
use crate::definition::{EntityDef, FieldDef};
use crate::error::{Result, UdmError};
use crate::query::path::Model;
use crate::types::FieldType;
use apollo_compiler::collections::HashMap as AHashMap;
use apollo_compiler::schema::Implementers;
use apollo_compiler::validation::Valid;
use apollo_compiler::{Name, Schema};
use std::collections::{BTreeMap, HashMap};

/// How a scalar value is written into the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// As PostgreSQL's jsonb gives it.
    Plain,
    /// As text (`Decimal`, `BigInt`: exact, beyond JavaScript's 2^53).
    Text,
}

/// What a GraphQL field of an entity type (or of its inputs) is, in udm terms.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// A system column (`id`, `created_at`, …).
    System {
        column: &'static str,
        ty: &'static str,
    },
    /// A field with a column of a scalar type (lists of scalars included).
    Scalar { field: String, ty: String, out: Out },
    /// A json (or file) field; `path` continues into the value.
    Json { field: String },
    /// The uuid of a many-to-one relation.
    RelationId { field: String },
    /// The record a many-to-one relation points to.
    ToOne { field: String, target: String },
    /// The records of a many-to-many relation.
    ManyToMany { field: String, target: String },
    /// Records of `source` whose many-to-one `field` points here.
    Reverse { source: String, field: String },
    /// Records of `source` linked here through its many-to-many `field`.
    ReverseManyToMany { source: String, field: String },
    /// A polymorphic reference, as a union of its (visible) targets.
    Reference { field: String, targets: Vec<String> },
    /// `{entity, id}` of a reference.
    ReferenceRef { field: String },
    /// A password: in insert and patch inputs only.
    Password { field: String },
}

impl FieldKind {
    /// The udm field (or system column) slug it stands for.
    pub fn slug(&self) -> &str {
        match self {
            FieldKind::System { column, .. } => column,
            FieldKind::Scalar { field, .. }
            | FieldKind::Json { field }
            | FieldKind::RelationId { field }
            | FieldKind::ToOne { field, .. }
            | FieldKind::ManyToMany { field, .. }
            | FieldKind::Reverse { field, .. }
            | FieldKind::ReverseManyToMany { field, .. }
            | FieldKind::Reference { field, .. }
            | FieldKind::ReferenceRef { field }
            | FieldKind::Password { field } => field,
        }
    }
}

/// An entity as the GraphQL schema shows it.
#[derive(Debug, Clone)]
pub struct EntityInfo {
    pub slug: String,
    pub type_name: String,
    /// GraphQL field name → what it is; the same names are used in the entity's filter,
    /// orderBy, groupBy, insert and patch inputs.
    pub fields: HashMap<String, FieldKind>,
    /// Unique key enum value → the udm fields of the key (for upserts).
    pub unique_keys: BTreeMap<String, Vec<String>>,
}

/// Operations of the write lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    Acquire,
    Heartbeat,
    Release,
    Status,
}

impl LockOp {
    /// The udm function it calls.
    pub fn function(self) -> &'static str {
        match self {
            LockOp::Acquire => "udm_lock_acquire",
            LockOp::Heartbeat => "udm_lock_heartbeat",
            LockOp::Release => "udm_lock_release",
            LockOp::Status => "udm_lock_status",
        }
    }
}

/// Definition changes: each one of udm's `udm_*` definition functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaOp {
    DefineEntity,
    DropEntity,
    RestoreEntity,
    AddField,
    AlterField,
    RemoveField,
    RestoreField,
    AddRule,
    DropRule,
    AddIndex,
    DropIndex,
}

impl SchemaOp {
    pub const ALL: &'static [SchemaOp] = &[
        SchemaOp::DefineEntity,
        SchemaOp::DropEntity,
        SchemaOp::RestoreEntity,
        SchemaOp::AddField,
        SchemaOp::AlterField,
        SchemaOp::RemoveField,
        SchemaOp::RestoreField,
        SchemaOp::AddRule,
        SchemaOp::DropRule,
        SchemaOp::AddIndex,
        SchemaOp::DropIndex,
    ];

    /// (GraphQL field, udm function, arguments as (name, GraphQL type, SQL type)).
    pub fn signature(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str, &'static str)],
    ) {
        match self {
            SchemaOp::DefineEntity => (
                "defineEntity",
                "udm_define_entity",
                &[
                    ("slug", "String!", "text"),
                    ("definition", "EntityDefinitionInput!", "jsonb"),
                ],
            ),
            SchemaOp::DropEntity => (
                "dropEntity",
                "udm_drop_entity",
                &[("entity", "String!", "text")],
            ),
            SchemaOp::RestoreEntity => (
                "restoreEntity",
                "udm_restore_entity",
                &[("entity", "String!", "text")],
            ),
            SchemaOp::AddField => (
                "addField",
                "udm_add_field",
                &[
                    ("entity", "String!", "text"),
                    ("field", "FieldDefinitionInput!", "jsonb"),
                ],
            ),
            SchemaOp::AlterField => (
                "alterField",
                "udm_alter_field",
                &[
                    ("entity", "String!", "text"),
                    ("field", "String!", "text"),
                    ("changes", "FieldChangesInput!", "jsonb"),
                ],
            ),
            SchemaOp::RemoveField => (
                "removeField",
                "udm_remove_field",
                &[("entity", "String!", "text"), ("field", "String!", "text")],
            ),
            SchemaOp::RestoreField => (
                "restoreField",
                "udm_restore_field",
                &[("entity", "String!", "text"), ("field", "String!", "text")],
            ),
            SchemaOp::AddRule => (
                "addRule",
                "udm_add_rule",
                &[
                    ("entity", "String!", "text"),
                    ("rule", "RuleInput!", "jsonb"),
                ],
            ),
            SchemaOp::DropRule => (
                "dropRule",
                "udm_drop_rule",
                &[("entity", "String!", "text"), ("name", "String!", "text")],
            ),
            SchemaOp::AddIndex => (
                "addIndex",
                "udm_add_index",
                &[
                    ("entity", "String!", "text"),
                    ("fields", "[String!]!", "text[]"),
                    ("unique", "Boolean", "boolean"),
                ],
            ),
            SchemaOp::DropIndex => (
                "dropIndex",
                "udm_drop_index",
                &[("entity", "String!", "text"), ("name", "String!", "text")],
            ),
        }
    }
}

/// Views of udm's query engine offered as root fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    Kanban,
    Tree,
    Gantt,
    Dropdown,
    Breadcrumb,
}

impl ViewKind {
    /// udm's view kind name (`query::views::KINDS`).
    pub fn udm(self) -> &'static str {
        match self {
            ViewKind::Kanban => "kanban",
            ViewKind::Tree => "tree",
            ViewKind::Gantt => "gantt",
            ViewKind::Dropdown => "dropdown",
            ViewKind::Breadcrumb => "breadcrumb",
        }
    }
}

/// What a root field does.
#[derive(Debug, Clone, PartialEq)]
pub enum RootKind {
    ById,
    Collection,
    Aggregate,
    AsOf,
    History,
    View(ViewKind),
    Insert,
    Upsert,
    Update,
    UpdateMany,
    Delete,
    DeleteMany,
    Rollback,
    Lock(LockOp),
    Changed,
    RollbackTransaction,
    Schema(SchemaOp),
}

impl RootKind {
    /// Whether it changes definitions (must be alone in its operation).
    pub fn is_definition_change(&self) -> bool {
        matches!(self, RootKind::Schema(_))
    }
}

/// A root field: what it does, on which entity.
#[derive(Debug, Clone, PartialEq)]
pub struct RootField {
    pub kind: RootKind,
    pub entity: Option<String>,
}

/// Everything the builder needs to know about the schema, by GraphQL names.
#[derive(Debug, Default, Clone)]
pub struct Reflection {
    /// Entity object type name → entity.
    pub by_type: HashMap<String, EntityInfo>,
    /// Entity slug → its object type name.
    pub by_entity: HashMap<String, String>,
    pub query: HashMap<String, RootField>,
    pub mutation: HashMap<String, RootField>,
    pub subscription: HashMap<String, RootField>,
}

impl Reflection {
    /// The entity of a slug (in the schema).
    pub fn entity(&self, slug: &str) -> Option<&EntityInfo> {
        self.by_entity.get(slug).and_then(|t| self.by_type.get(t))
    }
}

/// A tenant's GraphQL schema: validated, with its reflection and introspection helpers.
pub struct GqlSchema {
    pub schema: Valid<Schema>,
    pub reflect: Reflection,
    pub implementers: AHashMap<Name, Implementers>,
    /// The tenant's PostgreSQL schema.
    pub tenant_schema: String,
    /// Entities left out, and why (type name collisions); shown by `udm_graphql_schema()`.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for GqlSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GqlSchema")
            .field("types", &self.schema.types.len())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl GqlSchema {
    /// Builds and validates the schema of a model.
    pub fn build(model: &dyn Model) -> Result<GqlSchema> {
        let mut b = Build::new(model);
        b.preamble()?;
        b.entities()?;
        b.definition_changes()?;
        b.roots()?;
        let Build {
            sb,
            reflect,
            warnings,
            ..
        } = b;
        let schema = sb.finish(true, true)?.validate().map_err(|e| {
            UdmError::internal(format!(
                "udm built an invalid GraphQL schema: {}",
                e.errors
                    .to_string()
                    .lines()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        let implementers = schema.implementers_map();
        Ok(GqlSchema {
            schema,
            reflect,
            implementers,
            tenant_schema: model.schema().to_string(),
            warnings,
        })
    }

    /// The schema as SDL text (`udm_graphql_schema()`), with the warnings as comments first.
    pub fn sdl(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            out.push_str("# warning: ");
            out.push_str(w);
            out.push('\n');
        }
        out.push_str(&self.schema.to_string());
        out
    }

    /// A rough size in bytes, for the surface's cache budget.
    pub fn approx_bytes(&self) -> usize {
        use apollo_compiler::schema::ExtendedType as T;
        let mut n = 4096;
        for t in self.schema.types.values() {
            n += 256
                + match t {
                    T::Object(o) => o
                        .fields
                        .values()
                        .map(|f| 160 + 96 * f.arguments.len())
                        .sum(),
                    T::InputObject(i) => i.fields.len() * 128,
                    T::Enum(e) => e.values.len() * 64,
                    T::Union(u) => u.members.len() * 32,
                    _ => 0,
                };
        }
        n + self
            .reflect
            .by_type
            .values()
            .map(|e| e.fields.len() * 96)
            .sum::<usize>()
    }
}

const SCALARS: &[(&str, &str)] = &[
    (
        "UUID",
        "A UUID as text, e.g. \"0190c7a4-5e2b-7c3d-8f00-1a2b3c4d5e6f\"",
    ),
    ("Date", "A calendar date, YYYY-MM-DD"),
    ("DateTime", "A date and time with time zone, ISO 8601"),
    ("Time", "A time of day, HH:MM[:SS[.ffffff]]"),
    (
        "Duration",
        "A duration: ISO 8601 (P1DT2H) or PostgreSQL interval text (2 hours)",
    ),
    (
        "Decimal",
        "An exact decimal number, as a string in results; strings or numbers as input",
    ),
    (
        "BigInt",
        "A 64-bit integer, as a string in results; strings or numbers as input",
    ),
    ("JSON", "Any JSON value"),
    (
        "Cursor",
        "An opaque page cursor: pass it back unchanged, with the same orderBy",
    ),
];

/// (scalar, GraphQL filter operators): one filter input per scalar.
const ORDERED: &str = "eq neq gt gte lt lte in notIn between isNull";
const SCALAR_FILTERS: &[(&str, &str)] = &[
    (
        "String",
        "eq neq gt gte lt lte in notIn between like ilike contains startsWith isNull",
    ),
    ("Int", ORDERED),
    ("BigInt", ORDERED),
    ("Float", ORDERED),
    ("Decimal", ORDERED),
    ("Date", ORDERED),
    ("DateTime", ORDERED),
    ("Time", ORDERED),
    ("Duration", ORDERED),
    ("Boolean", "eq neq isNull"),
    ("UUID", "eq neq in notIn isNull"),
];
/// Item types of list fields (`[T!]`), each with a `TListFilter`.
const LIST_ITEMS: &[&str] = &[
    "String", "Int", "BigInt", "Float", "Decimal", "Date", "DateTime", "Time", "Duration", "UUID",
    "Boolean",
];

/// The GraphQL type of an operator's value.
fn operator_type(op: &str, scalar: &str) -> String {
    match op {
        "in" | "notIn" | "between" => format!("[{scalar}!]"),
        "isNull" => "Boolean".into(),
        "like" | "ilike" | "contains" | "startsWith" => "String".into(),
        _ => scalar.into(),
    }
}

/// The output type (without `!`) of a scalar udm type, and how it is written.
fn scalar_of(t: &FieldType) -> Option<(&'static str, Out)> {
    Some(match t {
        FieldType::Text
        | FieldType::LongText
        | FieldType::Email
        | FieldType::Url
        | FieldType::Phone
        | FieldType::Color
        | FieldType::Select
        | FieldType::MultiSelect
        | FieldType::Tags => ("String", Out::Plain),
        FieldType::Integer | FieldType::Rating => ("Int", Out::Plain),
        FieldType::BigInt | FieldType::AutoNumber => ("BigInt", Out::Text),
        FieldType::Decimal | FieldType::Currency | FieldType::Percent => ("Decimal", Out::Text),
        FieldType::Float => ("Float", Out::Plain),
        FieldType::Boolean => ("Boolean", Out::Plain),
        FieldType::Date => ("Date", Out::Plain),
        FieldType::DateTime => ("DateTime", Out::Plain),
        FieldType::Time => ("Time", Out::Plain),
        FieldType::Duration => ("Duration", Out::Plain),
        FieldType::Uuid | FieldType::User => ("UUID", Out::Plain),
        FieldType::Array(item) => return scalar_of(item),
        _ => return None,
    })
}

fn is_list(t: &FieldType) -> bool {
    matches!(
        t,
        FieldType::MultiSelect | FieldType::Tags | FieldType::Array(_)
    )
}

fn is_ordered(scalar: &str) -> bool {
    !matches!(scalar, "Boolean" | "UUID" | "JSON")
}

fn is_numeric(scalar: &str) -> bool {
    matches!(scalar, "Int" | "BigInt" | "Float" | "Decimal")
}

fn is_date(t: &FieldType) -> bool {
    matches!(t, FieldType::Date | FieldType::DateTime)
}

/// System columns: (GraphQL name, column, type).
pub const SYSTEM: &[(&str, &str, &str)] = &[
    ("id", "id", "UUID!"),
    ("createdAt", "created_at", "DateTime!"),
    ("updatedAt", "updated_at", "DateTime!"),
    ("createdBy", "created_by", "String"),
    ("updatedBy", "updated_by", "String"),
    ("_version", "_version", "Int!"),
];

const CONN_ARGS: &[(&str, &str)] = &[
    ("first", "Int"),
    ("after", "Cursor"),
    ("last", "Int"),
    ("before", "Cursor"),
    ("offset", "Int"),
];

fn args(list: &[(&str, &str)]) -> Vec<Input> {
    list.iter().map(|(n, t)| Input::new(n, t)).collect()
}

/// Arguments of a connection of entity type `t`.
fn connection_args(t: &str) -> Vec<Input> {
    let mut a = vec![
        Input::new("filter", &format!("{t}Filter")),
        Input::new("orderBy", &format!("[{t}OrderBy!]")),
    ];
    a.extend(args(CONN_ARGS));
    a
}

/// The types of one entity, filled while its fields are visited.
#[derive(Default)]
struct EntityTypes {
    obj: Fields<Field>,
    snapshot: Fields<Field>,
    filter: Fields<Input>,
    order: Fields<Input>,
    group: Fields<Input>,
    insert: Fields<Input>,
    patch: Fields<Input>,
    numbers: Fields<Field>,
    values: Fields<Field>,
    field_enum: Vec<String>,
    select_fields: Vec<String>,
    date_fields: Vec<String>,
    info_fields: HashMap<String, FieldKind>,
}

impl EntityTypes {
    fn claim(&mut self, n: &str, kind: FieldKind) -> bool {
        if self.info_fields.contains_key(n) {
            return false;
        }
        self.info_fields.insert(n.to_string(), kind);
        true
    }
}

struct Build<'m> {
    model: &'m dyn Model,
    sb: SchemaBuilder,
    reflect: Reflection,
    warnings: Vec<String>,
    /// Entities in the schema (slug → type name), decided before any type is made.
    included: BTreeMap<String, String>,
    query: Fields<Field>,
    mutation: Fields<Field>,
    subscription: Fields<Field>,
}

impl<'m> Build<'m> {
    fn new(model: &'m dyn Model) -> Self {
        let mut included = BTreeMap::new();
        let mut warnings = Vec::new();
        for slug in model.entity_names() {
            match type_name_conflict(&slug) {
                Some(w) => warnings.push(format!("{w}; it is left out of the GraphQL schema")),
                None => {
                    included.insert(slug.clone(), pascal(&slug));
                }
            }
        }
        Build {
            model,
            sb: SchemaBuilder::new(),
            reflect: Reflection::default(),
            warnings,
            included,
            query: Fields::default(),
            mutation: Fields::default(),
            subscription: Fields::default(),
        }
    }

    fn preamble(&mut self) -> Result<()> {
        for (n, d) in SCALARS {
            self.sb.scalar(n, d)?;
        }
        let words = |w: &str| w.split(' ').map(str::to_string).collect::<Vec<_>>();
        self.sb.enumeration(
            "OrderDirection",
            Some("Sort direction; NULLs go last ascending and first descending unless said"),
            &words("ASC ASC_NULLS_FIRST ASC_NULLS_LAST DESC DESC_NULLS_FIRST DESC_NULLS_LAST"),
        )?;
        self.sb.enumeration(
            "GroupKey",
            Some("Group by the value, or by the period a date falls in"),
            &words("VALUE DAY WEEK MONTH QUARTER YEAR"),
        )?;
        self.sb.enumeration(
            "ChangeAction",
            None,
            &words("INSERT UPDATE DELETE ROLLBACK"),
        )?;
        let mut page: Fields<Field> = Fields::default();
        page.add("hasNextPage", "Boolean!", vec![], None);
        page.add(
            "hasPreviousPage",
            "Boolean!",
            vec![],
            Some("paging backwards: more records before; forwards: true after a cursor or offset"),
        );
        page.add("startCursor", "Cursor", vec![], None);
        page.add("endCursor", "Cursor", vec![], None);
        self.sb.object("PageInfo", None, &page)?;
        let mut rr: Fields<Field> = Fields::default();
        rr.add("entity", "String!", vec![], None);
        rr.add("id", "UUID!", vec![], None);
        self.sb.object(
            "RecordRef",
            Some("A reference to a record of an entity"),
            &rr,
        )?;
        let mut rri: Fields<Input> = Fields::default();
        rri.add("entity", "String!");
        rri.add("id", "UUID!");
        self.sb.input("RecordRefInput", None, &rri)?;
        let mut label: Fields<Field> = Fields::default();
        label.add("id", "UUID!", vec![], None);
        label.add("label", "String", vec![], None);
        self.sb.object(
            "RecordLabel",
            Some("A record and its label (dropdowns, breadcrumbs)"),
            &label,
        )?;
        self.json_inputs()?;
        self.scalar_filters()?;
        Ok(())
    }

    fn json_inputs(&mut self) -> Result<()> {
        let mut order: Fields<Input> = Fields::default();
        order.add("path", "[String!]!");
        order.add("direction", "OrderDirection!");
        self.sb.input(
            "JSONOrderBy",
            Some("Order by a value inside a json field"),
            &order,
        )?;
        let mut group: Fields<Input> = Fields::default();
        group.add("path", "[String!]!");
        group.add("key", "GroupKey");
        self.sb.input(
            "JSONGroupBy",
            Some("Group by a value inside a json field"),
            &group,
        )?;
        let mut f: Fields<Input> = Fields::default();
        f.add_described(
            "path",
            "[String!]",
            "keys leading into the value; none: the whole value",
        );
        for op in
            "eq neq gt gte lt lte in notIn between contains like ilike startsWith isNull".split(' ')
        {
            let t = match op {
                "in" | "notIn" | "between" => "[JSON!]",
                "like" | "ilike" | "startsWith" => "String",
                "isNull" => "Boolean",
                _ => "JSON",
            };
            f.add(op, t);
        }
        self.sb.input(
            "JSONFilter",
            Some("Compares by the value's JSON type: numbers as numbers, ISO dates as dates"),
            &f,
        )
    }

    fn scalar_filters(&mut self) -> Result<()> {
        for (s, ops) in SCALAR_FILTERS {
            let mut f: Fields<Input> = Fields::default();
            for op in ops.split(' ') {
                f.add(op, &operator_type(op, s));
            }
            self.sb.input(&format!("{s}Filter"), None, &f)?;
        }
        for s in LIST_ITEMS {
            let mut f: Fields<Input> = Fields::default();
            f.add_described("contains", &format!("[{s}!]"), "has all of these");
            f.add_described("overlaps", &format!("[{s}!]"), "has any of these");
            f.add("isNull", "Boolean");
            self.sb.input(&format!("{s}ListFilter"), None, &f)?;
        }
        Ok(())
    }

    fn entities(&mut self) -> Result<()> {
        let reverse = self.reverse_relations();
        let slugs: Vec<String> = self.included.keys().cloned().collect();
        for slug in slugs {
            let e = self.model.entity(&slug).ok_or_else(|| {
                UdmError::internal(format!("entity \"{slug}\" listed but not found"))
            })?;
            let rev = reverse.get(&slug).cloned().unwrap_or_default();
            self.entity(e, &rev)?;
        }
        Ok(())
    }

    /// Per target entity: the (source, field) of visible relations pointing at it.
    fn reverse_relations(&self) -> BTreeMap<String, Vec<(String, FieldDef)>> {
        let mut out: BTreeMap<String, Vec<(String, FieldDef)>> = BTreeMap::new();
        for s in self.included.keys() {
            let Some(e) = self.model.entity(s) else {
                continue;
            };
            for f in &e.fields {
                let visible = f.ftype == FieldType::Relation && !self.model.hidden(s, &f.name);
                if let Some(t) = f
                    .target
                    .as_ref()
                    .filter(|t| visible && self.included.contains_key(*t))
                {
                    out.entry(t.clone())
                        .or_default()
                        .push((s.clone(), f.clone()));
                }
            }
        }
        out
    }

    fn entity(&mut self, e: &EntityDef, reverse: &[(String, FieldDef)]) -> Result<()> {
        let p = pascal(&e.slug);
        let mut t = EntityTypes::default();
        self.system_fields(&mut t);
        t.insert.add("id", "UUID");
        for f in &e.fields {
            if !self.model.hidden(&e.slug, &f.name) {
                self.field(e, f, &mut t)?;
            }
        }
        for (source, f) in reverse {
            self.reverse_field(&e.slug, source, f, &mut t);
        }
        self.entity_types(e, &p, &mut t)?;
        self.entity_roots(e, &p, &t)?;
        let info = EntityInfo {
            slug: e.slug.clone(),
            type_name: p.clone(),
            fields: std::mem::take(&mut t.info_fields),
            unique_keys: unique_keys(e),
        };
        self.reflect.by_entity.insert(e.slug.clone(), p.clone());
        self.reflect.by_type.insert(p, info);
        Ok(())
    }

    fn system_fields(&mut self, t: &mut EntityTypes) {
        for (g, col, ty) in SYSTEM {
            let base = ty.trim_end_matches('!');
            t.claim(
                g,
                FieldKind::System {
                    column: col,
                    ty: base,
                },
            );
            t.obj.add(g, ty, vec![], None);
            t.snapshot.add(g, ty, vec![], None);
            t.filter.add(g, &format!("{base}Filter"));
            if is_ordered(base) || *g == "id" {
                t.order.add(g, "OrderDirection");
                t.values.add(g, base, vec![], None);
            }
            if *g != "id" {
                t.group.add(g, "GroupKey");
            }
            if *g == "_version" {
                t.numbers.add(g, "Decimal", vec![], None);
            }
            t.field_enum.push(g.to_string());
        }
    }

    fn warn_taken(&mut self, e: &EntityDef, f: &FieldDef, n: &str) {
        self.warnings.push(format!(
            "field \"{}\" of entity \"{}\": its GraphQL name {n} is taken by another field of {}; it is left out",
            f.name,
            e.slug,
            pascal(&e.slug)
        ));
    }

    fn field(&mut self, e: &EntityDef, f: &FieldDef, t: &mut EntityTypes) -> Result<()> {
        let desc = f.label.as_deref().or(f.description.as_deref());
        let n = camel(&f.name);
        match &f.ftype {
            FieldType::Password => {
                if t.claim(
                    &n,
                    FieldKind::Password {
                        field: f.name.clone(),
                    },
                ) {
                    t.insert
                        .add_described(&n, "String", "write-only: never returned");
                    t.patch.add(&n, "String");
                }
            }
            FieldType::Json | FieldType::File => self.json_field(e, f, &n, desc, t)?,
            FieldType::Relation if f.many => self.many_to_many(e, f, &n, desc, t),
            FieldType::Relation => self.many_to_one(e, f, desc, t),
            FieldType::Reference => self.reference(e, f, &n, desc, t)?,
            other => {
                if let Some((scalar, out)) = scalar_of(other) {
                    self.scalar_field(e, f, &n, desc, scalar, out, t)?;
                }
            }
        }
        Ok(())
    }

    fn json_field(
        &mut self,
        e: &EntityDef,
        f: &FieldDef,
        n: &str,
        desc: Option<&str>,
        t: &mut EntityTypes,
    ) -> Result<()> {
        if !t.claim(
            n,
            FieldKind::Json {
                field: f.name.clone(),
            },
        ) {
            self.warn_taken(e, f, n);
            return Ok(());
        }
        if f.encrypted {
            // stored sealed: read whole, compared by its blind index at most
            t.obj.add(n, "JSON", vec![], desc);
            t.snapshot.add(n, "JSON", vec![], None);
            t.filter
                .add(n, &self.sealed_filter("JSON", f.blind_indexed())?);
            t.insert.add(n, "JSON");
            t.patch.add(n, "JSON");
            return Ok(());
        }
        let mut path = Input::new("path", "[String!]");
        path.description = Some("keys leading into the value".into());
        t.obj.add(n, "JSON", vec![path], desc);
        t.snapshot.add(n, "JSON", vec![], None);
        t.filter.add(n, "JSONFilter");
        t.order.add(n, "JSONOrderBy");
        t.group.add(n, "JSONGroupBy");
        t.insert.add(n, "JSON");
        t.patch.add(n, "JSON");
        Ok(())
    }

    /// The filter input of an encrypted field: equality through its blind index (when it has
    /// one) and null tests; nothing else is answered without decrypting every row.
    fn sealed_filter(&mut self, scalar: &str, blind: bool) -> Result<String> {
        let name = if blind {
            format!("{scalar}EqualityFilter")
        } else {
            "EncryptedFilter".to_string()
        };
        if !self.sb.has(&name) {
            let mut f: Fields<Input> = Fields::default();
            if blind {
                for op in ["eq", "neq", "in", "notIn"] {
                    f.add(op, &operator_type(op, scalar));
                }
            }
            f.add("isNull", "Boolean");
            let desc = if blind {
                "An encrypted field: equality through its blind index"
            } else {
                "An encrypted field without a blind index: null tests only"
            };
            self.sb.input(&name, Some(desc), &f)?;
        }
        Ok(name)
    }

    fn many_to_many(
        &mut self,
        e: &EntityDef,
        f: &FieldDef,
        n: &str,
        desc: Option<&str>,
        t: &mut EntityTypes,
    ) {
        let Some(tp) = f
            .target
            .as_ref()
            .and_then(|x| self.included.get(x))
            .cloned()
        else {
            return;
        };
        let kind = FieldKind::ManyToMany {
            field: f.name.clone(),
            target: f.target.clone().unwrap_or_default(),
        };
        if !t.claim(n, kind) {
            return self.warn_taken(e, f, n);
        }
        t.obj
            .add(n, &format!("{tp}Connection!"), connection_args(&tp), desc);
        t.filter.add(n, &format!("{tp}ListFilter"));
        t.insert
            .add_described(n, "[UUID!]", "ids of the records to link");
        t.patch.add_described(n, "[UUID!]", "replaces the links");
    }

    fn many_to_one(
        &mut self,
        e: &EntityDef,
        f: &FieldDef,
        desc: Option<&str>,
        t: &mut EntityTypes,
    ) {
        let (idn, objn) = relation_names(&f.name);
        let bang = if f.required { "!" } else { "" };
        if !t.claim(
            &idn,
            FieldKind::RelationId {
                field: f.name.clone(),
            },
        ) {
            return self.warn_taken(e, f, &idn);
        }
        t.obj.add(&idn, &format!("UUID{bang}"), vec![], desc);
        t.snapshot.add(&idn, "UUID", vec![], None);
        t.filter.add(&idn, "UUIDFilter");
        t.order.add(&idn, "OrderDirection");
        t.group.add(&idn, "GroupKey");
        t.insert.add(&idn, "UUID");
        t.patch.add(&idn, "UUID");
        t.field_enum.push(idn.clone());
        t.values.add(&idn, "UUID", vec![], None);
        let target = f.target.clone().unwrap_or_default();
        let Some(tp) = self.included.get(&target).cloned() else {
            return;
        };
        let objn = if t.info_fields.contains_key(&objn) {
            format!("{objn}Record")
        } else {
            objn
        };
        let kind = FieldKind::ToOne {
            field: f.name.clone(),
            target,
        };
        if !t.claim(&objn, kind) {
            return self.warn_taken(e, f, &objn);
        }
        t.obj.add(&objn, &format!("{tp}{bang}"), vec![], desc);
        t.filter.add(&objn, &format!("{tp}Filter"));
        t.order.add(&objn, &format!("{tp}OrderBy"));
        t.group.add(&objn, &format!("{tp}GroupBy"));
        t.insert.add_described(
            &objn,
            &format!("{tp}InsertInput"),
            "creates the record and links it",
        );
    }

    fn reference(
        &mut self,
        e: &EntityDef,
        f: &FieldDef,
        n: &str,
        desc: Option<&str>,
        t: &mut EntityTypes,
    ) -> Result<()> {
        let refn = format!("{n}Ref");
        if !t.claim(
            &refn,
            FieldKind::ReferenceRef {
                field: f.name.clone(),
            },
        ) {
            self.warn_taken(e, f, &refn);
            return Ok(());
        }
        t.obj.add(&refn, "RecordRef", vec![], desc);
        t.snapshot.add(&refn, "RecordRef", vec![], None);
        t.insert.add(n, "RecordRefInput");
        t.patch.add(n, "RecordRefInput");
        let targets: Vec<String> = f
            .targets
            .iter()
            .filter(|x| self.included.contains_key(*x))
            .cloned()
            .collect();
        let union = format!("{}{}", pascal(&e.slug), pascal(&f.name));
        if targets.is_empty() || self.sb.has(&union) {
            return Ok(());
        }
        let kind = FieldKind::Reference {
            field: f.name.clone(),
            targets: targets.clone(),
        };
        if !t.claim(n, kind) {
            self.warn_taken(e, f, n);
            return Ok(());
        }
        let members: Vec<String> = targets.iter().map(|x| pascal(x)).collect();
        self.sb.union(
            &union,
            Some(&format!("The records {}.{} may point to", e.slug, f.name)),
            &members,
        )?;
        t.obj.add(n, &union, vec![], desc);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn scalar_field(
        &mut self,
        e: &EntityDef,
        f: &FieldDef,
        n: &str,
        desc: Option<&str>,
        scalar: &str,
        out: Out,
        t: &mut EntityTypes,
    ) -> Result<()> {
        let list = is_list(&f.ftype);
        let mut ty = scalar.to_string();
        let mut filter = format!("{scalar}Filter");
        if f.ftype == FieldType::Select {
            if let Some(en) = self.select_enum(e, f)? {
                filter = format!("{en}Filter");
                ty = en;
            }
            t.select_fields.push(n.to_string());
        }
        if list {
            ty = format!("[{ty}!]");
            filter = format!("{scalar}ListFilter");
        }
        if f.encrypted {
            filter = self.sealed_filter(scalar, f.blind_indexed())?;
        }
        let kind = FieldKind::Scalar {
            field: f.name.clone(),
            ty: ty.clone(),
            out,
        };
        if !t.claim(n, kind) {
            self.warn_taken(e, f, n);
            return Ok(());
        }
        let bang = if f.required { "!" } else { "" };
        t.obj.add(n, &format!("{ty}{bang}"), vec![], desc);
        t.snapshot.add(n, &ty, vec![], None);
        t.filter.add(n, &filter);
        if f.ftype != FieldType::AutoNumber {
            let req = f.required && f.default.is_none();
            t.insert
                .add(n, &format!("{ty}{}", if req { "!" } else { "" }));
            t.patch.add(n, &ty);
        }
        if !list {
            // named in field lists (a rollback's fields, ...); where an encrypted field cannot
            // serve (a label, a distinct count), the engine refuses it naming the field
            t.field_enum.push(n.to_string());
        }
        // an encrypted field is neither sorted, grouped nor aggregated (its stored values are
        // ciphertexts)
        if !list && !f.encrypted {
            t.group.add(n, "GroupKey");
            if is_ordered(scalar) {
                t.order.add(n, "OrderDirection");
                t.values.add(n, &ty, vec![], None);
            }
            if is_numeric(scalar) {
                let nt = if scalar == "Float" {
                    "Float"
                } else {
                    "Decimal"
                };
                t.numbers.add(n, nt, vec![], None);
            }
            if is_date(&f.ftype) {
                t.date_fields.push(n.to_string());
            }
        }
        Ok(())
    }

    /// The enum of a select field when every value is a GraphQL name (and the type name is
    /// free), with its filter input.
    fn select_enum(&mut self, e: &EntityDef, f: &FieldDef) -> Result<Option<String>> {
        if f.values.is_empty() || !f.values.iter().all(|v| is_enum_value(v)) {
            return Ok(None);
        }
        let en = format!("{}{}", pascal(&e.slug), pascal(&f.name));
        let clash = self.sb.has(&en)
            || self.sb.has(&format!("{en}Filter"))
            || self.included.values().any(|t| {
                en.starts_with(t.as_str())
                    && en != *t
                    && super::names::DERIVED_SUFFIXES.contains(&&en[t.len()..])
            });
        if clash {
            self.warnings.push(format!(
                "field \"{}\" of entity \"{}\": the enum name {en} is taken; its values are typed String",
                f.name, e.slug
            ));
            return Ok(None);
        }
        self.sb.enumeration(
            &en,
            Some(&format!("Values of {}.{}", e.slug, f.name)),
            &f.values,
        )?;
        let mut filter: Fields<Input> = Fields::default();
        for op in ["eq", "neq", "in", "notIn", "isNull"] {
            filter.add(op, &operator_type(op, &en));
        }
        self.sb.input(&format!("{en}Filter"), None, &filter)?;
        Ok(Some(en))
    }

    fn reverse_field(&mut self, target: &str, source: &str, f: &FieldDef, t: &mut EntityTypes) {
        let sp = pascal(source);
        let n = reverse_name(source, &f.name, f.many, target);
        let kind = if f.many {
            FieldKind::ReverseManyToMany {
                source: source.to_string(),
                field: f.name.clone(),
            }
        } else {
            FieldKind::Reverse {
                source: source.to_string(),
                field: f.name.clone(),
            }
        };
        if !t.claim(&n, kind) {
            self.warnings.push(format!(
                "the reverse of {source}.{} on {}: its name {n} is taken; it is left out",
                f.name,
                pascal(target)
            ));
            return;
        }
        t.obj
            .add(&n, &format!("{sp}Connection!"), connection_args(&sp), None);
        t.filter.add(&n, &format!("{sp}ListFilter"));
        if !f.many {
            t.insert.add_described(
                &n,
                &format!("[{sp}InsertInput!]"),
                "creates records pointing to this one",
            );
        }
    }

    fn entity_types(&mut self, e: &EntityDef, p: &str, t: &mut EntityTypes) -> Result<()> {
        let label = e.label.clone().unwrap_or_else(|| e.slug.clone());
        let desc = match &e.description {
            Some(d) => format!("{label}: {d} (entity {})", e.slug),
            None => format!("{label} (entity {})", e.slug),
        };
        self.sb.object(p, Some(&desc), &t.obj)?;
        self.sb.object(
            &format!("{p}Snapshot"),
            Some("A record's values as stored in its audit image"),
            &t.snapshot,
        )?;
        let mut conn: Fields<Field> = Fields::default();
        conn.add("edges", &format!("[{p}Edge!]!"), vec![], None);
        conn.add("nodes", &format!("[{p}!]!"), vec![], None);
        conn.add("pageInfo", "PageInfo!", vec![], None);
        conn.add(
            "totalCount",
            "Int!",
            vec![],
            Some("all records matching the filter"),
        );
        self.sb.object(&format!("{p}Connection"), None, &conn)?;
        let mut edge: Fields<Field> = Fields::default();
        edge.add("cursor", "Cursor!", vec![], None);
        edge.add("node", &format!("{p}!"), vec![], None);
        self.sb.object(&format!("{p}Edge"), None, &edge)?;
        let mut filter: Fields<Input> = Fields::default();
        filter.add("and", &format!("[{p}Filter!]"));
        filter.add("or", &format!("[{p}Filter!]"));
        filter.add("not", &format!("{p}Filter"));
        for i in std::mem::take(&mut t.filter).into_items() {
            filter.add(&i.name, &i.ty);
        }
        self.sb.input(&format!("{p}Filter"), None, &filter)?;
        let mut list: Fields<Input> = Fields::default();
        list.add_described(
            "some",
            &format!("{p}Filter"),
            "at least one related record matches",
        );
        list.add_described(
            "every",
            &format!("{p}Filter"),
            "every related record matches (also when there is none)",
        );
        list.add_described("none", &format!("{p}Filter"), "no related record matches");
        self.sb.input(&format!("{p}ListFilter"), None, &list)?;
        self.sb.input(
            &format!("{p}OrderBy"),
            Some("Exactly one field per item"),
            &t.order,
        )?;
        let mut group: Fields<Input> = Fields::default();
        group.add_described("as", "String", "the name of this key in `key`");
        for i in std::mem::take(&mut t.group).into_items() {
            group.add(&i.name, &i.ty);
        }
        self.sb.input(
            &format!("{p}GroupBy"),
            Some("Exactly one field per item (besides `as`)"),
            &group,
        )?;
        self.sb.input(&format!("{p}InsertInput"), None, &t.insert)?;
        if t.patch.is_empty() {
            t.patch.add("_version", "Int");
        }
        self.sb.input(&format!("{p}Patch"), None, &t.patch)?;
        self.sb
            .enumeration(&format!("{p}Field"), None, &t.field_enum)?;
        self.group_type(p, t)?;
        let mut result: Fields<Field> = Fields::default();
        result.add("affectedCount", "Int!", vec![], None);
        result.add("records", &format!("[{p}!]!"), vec![], None);
        self.sb
            .object(&format!("{p}MutationResult"), None, &result)?;
        self.change_types(p)?;
        let keys: Vec<String> = unique_keys(e).into_keys().collect();
        self.sb.enumeration(
            &format!("{p}UniqueKey"),
            Some("Unique keys an upsert can match on"),
            &keys,
        )?;
        self.view_types(p, t)
    }

    fn group_type(&mut self, p: &str, t: &EntityTypes) -> Result<()> {
        let mut g: Fields<Field> = Fields::default();
        g.add(
            "key",
            "JSON!",
            vec![],
            Some("the group's keys, by their names (`as`, or the field path)"),
        );
        g.add("count", "Int!", vec![], None);
        g.add(
            "countDistinct",
            "Int!",
            vec![Input::new("field", &format!("{p}Field!"))],
            None,
        );
        if !t.numbers.is_empty() {
            self.sb.object(&format!("{p}Numbers"), None, &t.numbers)?;
            g.add("sum", &format!("{p}Numbers!"), vec![], None);
            g.add("avg", &format!("{p}Numbers!"), vec![], None);
        }
        if !t.values.is_empty() {
            self.sb.object(&format!("{p}Values"), None, &t.values)?;
            g.add("min", &format!("{p}Values!"), vec![], None);
            g.add("max", &format!("{p}Values!"), vec![], None);
        }
        self.sb.object(&format!("{p}Group"), None, &g)
    }

    fn change_types(&mut self, p: &str) -> Result<()> {
        let mut c: Fields<Field> = Fields::default();
        c.add("eventId", "BigInt!", vec![], None);
        c.add("action", "ChangeAction!", vec![], None);
        c.add("id", "UUID!", vec![], None);
        c.add("version", "Int", vec![], None);
        c.add(
            "changedFields",
            "[String!]!",
            vec![],
            Some("GraphQL names of the fields the change wrote"),
        );
        c.add(
            "record",
            p,
            vec![],
            Some("the record as it is when the event is delivered (null: gone or not visible)"),
        );
        c.add(
            "old",
            &format!("{p}Snapshot"),
            vec![],
            Some("the values before the change"),
        );
        self.sb.object(&format!("{p}Change"), None, &c)?;
        let mut v: Fields<Field> = Fields::default();
        v.add("version", "Int", vec![], None);
        v.add("action", "ChangeAction!", vec![], None);
        v.add("changedFields", "[String!]!", vec![], None);
        v.add("summary", "String", vec![], None);
        v.add("userId", "String", vec![], None);
        v.add("dbRole", "String", vec![], None);
        v.add("changedAt", "DateTime", vec![], None);
        v.add("txid", "BigInt!", vec![], None);
        v.add("eventId", "BigInt!", vec![], None);
        v.add(
            "record",
            &format!("{p}Snapshot"),
            vec![],
            Some("the record after the change"),
        );
        self.sb.object(&format!("{p}Version"), None, &v)
    }

    fn view_types(&mut self, p: &str, t: &EntityTypes) -> Result<()> {
        if !t.select_fields.is_empty() {
            self.sb
                .enumeration(&format!("{p}SelectField"), None, &t.select_fields)?;
            let mut col: Fields<Field> = Fields::default();
            col.add("value", "String!", vec![], None);
            col.add("count", "Int!", vec![], None);
            col.add("cards", &format!("[{p}!]!"), vec![], None);
            self.sb.object(&format!("{p}KanbanColumn"), None, &col)?;
            let mut k: Fields<Field> = Fields::default();
            k.add("field", "String!", vec![], None);
            k.add("columns", &format!("[{p}KanbanColumn!]!"), vec![], None);
            self.sb.object(&format!("{p}Kanban"), None, &k)?;
        }
        if self.self_relation(p).is_some() {
            let mut n: Fields<Field> = Fields::default();
            n.add("id", "UUID!", vec![], None);
            n.add("parentId", "UUID", vec![], None);
            n.add("depth", "Int!", vec![], None);
            n.add("node", &format!("{p}!"), vec![], None);
            self.sb.object(
                &format!("{p}TreeNode"),
                Some("Tree nodes, depth first by level"),
                &n,
            )?;
        }
        if t.date_fields.len() >= 2 {
            self.sb
                .enumeration(&format!("{p}DateField"), None, &t.date_fields)?;
            let mut i: Fields<Field> = Fields::default();
            i.add("id", "UUID!", vec![], None);
            i.add("label", "String", vec![], None);
            i.add("start", "JSON", vec![], None);
            i.add("end", "JSON", vec![], None);
            i.add("group", "JSON", vec![], None);
            i.add("dependencies", "[UUID!]!", vec![], None);
            i.add("node", &format!("{p}!"), vec![], None);
            self.sb.object(&format!("{p}GanttItem"), None, &i)?;
            let mut g: Fields<Field> = Fields::default();
            g.add("items", &format!("[{p}GanttItem!]!"), vec![], None);
            g.add("groups", "[JSON!]!", vec![], None);
            self.sb.object(&format!("{p}Gantt"), None, &g)?;
        }
        Ok(())
    }

    /// The entity (by type name) when it has a many-to-one relation to itself.
    fn self_relation(&self, p: &str) -> Option<&EntityDef> {
        let slug = self.included.iter().find(|(_, t)| t.as_str() == p)?.0;
        let e = self.model.entity(slug)?;
        e.fields
            .iter()
            .any(|f| {
                f.is_many_to_one()
                    && f.target.as_deref() == Some(slug)
                    && !self.model.hidden(slug, &f.name)
            })
            .then_some(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn root(
        &mut self,
        op: Op,
        n: &str,
        ty: &str,
        args: Vec<Input>,
        kind: RootKind,
        entity: Option<&str>,
        desc: Option<&str>,
    ) {
        let (fields, map) = match op {
            Op::Query => (&mut self.query, &mut self.reflect.query),
            Op::Mutation => (&mut self.mutation, &mut self.reflect.mutation),
            Op::Subscription => (&mut self.subscription, &mut self.reflect.subscription),
        };
        if fields.add(n, ty, args, desc) {
            map.insert(
                n.to_string(),
                RootField {
                    kind,
                    entity: entity.map(str::to_string),
                },
            );
        } else {
            self.warnings.push(format!(
                "root field {n} is defined twice; the second is left out"
            ));
        }
    }

    fn entity_roots(&mut self, e: &EntityDef, p: &str, t: &EntityTypes) -> Result<()> {
        let c = camel(&e.slug);
        let s = Some(e.slug.as_str());
        let id = || Input::new("id", "UUID!");
        let filter = || Input::new("filter", &format!("{p}Filter"));
        let order = || Input::new("orderBy", &format!("[{p}OrderBy!]"));
        let first = || Input::new("first", "Int");
        use Op::*;
        self.root(
            Query,
            &c,
            p,
            vec![id()],
            RootKind::ById,
            s,
            Some("the record with this id, if visible"),
        );
        self.root(
            Query,
            &format!("{c}Collection"),
            &format!("{p}Connection!"),
            connection_args(p),
            RootKind::Collection,
            s,
            None,
        );
        let agg = vec![
            filter(),
            Input::new("groupBy", &format!("[{p}GroupBy!]")),
            first(),
        ];
        self.root(
            Query,
            &format!("{c}Aggregate"),
            &format!("[{p}Group!]!"),
            agg,
            RootKind::Aggregate,
            s,
            None,
        );
        let at = vec![id(), Input::new("at", "DateTime!")];
        self.root(
            Query,
            &format!("{c}AsOf"),
            &format!("{p}Snapshot"),
            at,
            RootKind::AsOf,
            s,
            Some("the record as it was at a time (from the audit log)"),
        );
        self.root(
            Query,
            &format!("{c}History"),
            &format!("[{p}Version!]!"),
            vec![id(), first()],
            RootKind::History,
            s,
            Some("the record's versions, newest first (from the audit log)"),
        );
        self.root(
            Query,
            &format!("{c}LockStatus"),
            "JSON!",
            vec![id()],
            RootKind::Lock(LockOp::Status),
            s,
            None,
        );
        let dropdown = vec![
            Input::new("search", "String"),
            Input::new("label", &format!("{p}Field")),
            filter(),
            first(),
        ];
        self.root(
            Query,
            &format!("{c}Dropdown"),
            "[RecordLabel!]!",
            dropdown,
            RootKind::View(ViewKind::Dropdown),
            s,
            None,
        );
        if !t.select_fields.is_empty() {
            let a = vec![
                Input::new("field", &format!("{p}SelectField")),
                filter(),
                order(),
                first(),
            ];
            self.root(
                Query,
                &format!("{c}Kanban"),
                &format!("{p}Kanban!"),
                a,
                RootKind::View(ViewKind::Kanban),
                s,
                Some("cards per value of a select field; `first` cards per column"),
            );
        }
        if self.self_relation(p).is_some() {
            let a = vec![
                Input::new("root", "UUID"),
                Input::new("depth", "Int"),
                filter(),
                order(),
                first(),
            ];
            self.root(
                Query,
                &format!("{c}Tree"),
                &format!("[{p}TreeNode!]!"),
                a,
                RootKind::View(ViewKind::Tree),
                s,
                None,
            );
            let a = vec![id(), Input::new("label", &format!("{p}Field"))];
            self.root(
                Query,
                &format!("{c}Breadcrumb"),
                "[RecordLabel!]!",
                a,
                RootKind::View(ViewKind::Breadcrumb),
                s,
                Some("the record and its ancestors, root first"),
            );
        }
        if t.date_fields.len() >= 2 {
            let df = format!("{p}DateField!");
            let a = vec![
                Input::new("start", &df),
                Input::new("end", &df),
                Input::new("label", &format!("{p}Field")),
                Input::new("groupBy", &format!("{p}Field")),
                filter(),
                order(),
                first(),
            ];
            self.root(
                Query,
                &format!("{c}Gantt"),
                &format!("{p}Gantt!"),
                a,
                RootKind::View(ViewKind::Gantt),
                s,
                None,
            );
        }
        let result = format!("{p}MutationResult!");
        let objects = || Input::new("objects", &format!("[{p}InsertInput!]!"));
        let set = || Input::new("set", &format!("{p}Patch!"));
        let expected = || Input::new("expectedVersion", "Int");
        let at_most = || Input::new("atMost", "Int!");
        let required_filter = || Input::new("filter", &format!("{p}Filter!"));
        self.root(
            Mutation,
            &format!("insert{p}"),
            &result,
            vec![objects()],
            RootKind::Insert,
            s,
            Some("inserts all records (with nested ones) or none"),
        );
        self.root(
            Mutation,
            &format!("upsert{p}"),
            &result,
            vec![
                objects(),
                Input::new("onConflict", &format!("{p}UniqueKey!")),
            ],
            RootKind::Upsert,
            s,
            None,
        );
        self.root(
            Mutation,
            &format!("update{p}"),
            p,
            vec![id(), set(), expected()],
            RootKind::Update,
            s,
            None,
        );
        self.root(
            Mutation,
            &format!("update{p}Many"),
            &result,
            vec![required_filter(), set(), at_most()],
            RootKind::UpdateMany,
            s,
            Some("refused, changing nothing, when more than atMost records match"),
        );
        self.root(
            Mutation,
            &format!("delete{p}"),
            p,
            vec![id(), expected()],
            RootKind::Delete,
            s,
            None,
        );
        self.root(
            Mutation,
            &format!("delete{p}Many"),
            &result,
            vec![required_filter(), at_most()],
            RootKind::DeleteMany,
            s,
            Some("refused, deleting nothing, when more than atMost records match"),
        );
        let rb = vec![
            id(),
            Input::new("version", "Int!"),
            Input::new("fields", &format!("[{p}Field!]")),
        ];
        self.root(
            Mutation,
            &format!("rollback{p}"),
            "JSON!",
            rb,
            RootKind::Rollback,
            s,
            Some("restores the record (or some fields) as of a version"),
        );
        self.root(
            Mutation,
            &format!("lock{p}"),
            "JSON!",
            vec![id()],
            RootKind::Lock(LockOp::Acquire),
            s,
            None,
        );
        self.root(
            Mutation,
            &format!("heartbeat{p}"),
            "JSON!",
            vec![id()],
            RootKind::Lock(LockOp::Heartbeat),
            s,
            None,
        );
        self.root(
            Mutation,
            &format!("unlock{p}"),
            "JSON!",
            vec![id()],
            RootKind::Lock(LockOp::Release),
            s,
            None,
        );
        let sub = vec![Input::new("actions", "[ChangeAction!]"), filter()];
        self.root(
            Subscription,
            &format!("{c}Changed"),
            &format!("{p}Change!"),
            sub,
            RootKind::Changed,
            s,
            None,
        );
        Ok(())
    }

    /// Typed inputs of the definition functions and their root fields.
    fn definition_changes(&mut self) -> Result<()> {
        let mut field: Fields<Input> = Fields::default();
        let mut changes: Fields<Input> = Fields::default();
        for (n, t) in DEFINITION_FIELD_INPUT {
            let required = matches!(*n, "name" | "type");
            field.add(n, &format!("{t}{}", if required { "!" } else { "" }));
            changes.add(n, t);
        }
        self.sb.input(
            "FieldDefinitionInput",
            Some("A udm field definition (udm_add_field); keys in camelCase"),
            &field,
        )?;
        self.sb.input(
            "FieldChangesInput",
            Some("Changes of a field (udm_alter_field); `name` renames it"),
            &changes,
        )?;
        let mut rule: Fields<Input> = Fields::default();
        rule.add("name", "String!");
        rule.add("check", "String!");
        rule.add("message", "String");
        self.sb.input("RuleInput", None, &rule)?;
        let mut index: Fields<Input> = Fields::default();
        index.add("name", "String");
        index.add("fields", "[String!]!");
        index.add("unique", "Boolean");
        self.sb.input("IndexInput", None, &index)?;
        let mut def: Fields<Input> = Fields::default();
        for (n, t) in [
            ("label", "String"),
            ("description", "String"),
            ("fields", "[FieldDefinitionInput!]"),
            ("rules", "[RuleInput!]"),
            ("indexes", "[IndexInput!]"),
            ("audit", "Boolean"),
            ("lock", "JSON"),
            ("access", "JSON"),
        ] {
            def.add(n, t);
        }
        self.sb.input(
            "EntityDefinitionInput",
            Some("A udm entity definition (udm_define_entity); keys in camelCase"),
            &def,
        )?;
        for op in SchemaOp::ALL {
            let (n, function, a) = op.signature();
            let args = a.iter().map(|(n, t, _)| Input::new(n, t)).collect();
            let desc = format!("calls {function}; must be the only kind of field of its operation");
            self.root(
                Op::Mutation,
                n,
                "JSON!",
                args,
                RootKind::Schema(*op),
                None,
                Some(&desc),
            );
        }
        let tx = vec![
            Input::new("txid", "BigInt!"),
            Input::new("force", "Boolean"),
        ];
        self.root(
            Op::Mutation,
            "rollbackTransaction",
            "JSON!",
            tx,
            RootKind::RollbackTransaction,
            None,
            Some("undoes every change of a database transaction (udm_rollback_transaction)"),
        );
        Ok(())
    }

    fn roots(&mut self) -> Result<()> {
        if self.query.is_empty() {
            // a schema needs a query field even for a tenant without entities
            self.query.add(
                "_entities",
                "[String!]!",
                vec![],
                Some("the entities of this schema"),
            );
        }
        let q = std::mem::take(&mut self.query);
        self.sb.object("Query", None, &q)?;
        let m = std::mem::take(&mut self.mutation);
        self.sb.object("Mutation", None, &m)?;
        let mut s = std::mem::take(&mut self.subscription);
        if s.is_empty() {
            s.add(
                "_none",
                "Boolean",
                vec![],
                Some("no entity to subscribe to"),
            );
        }
        self.sb.object("Subscription", None, &s)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Query,
    Mutation,
    Subscription,
}

/// Keys of udm's field definitions in camelCase, and their GraphQL input types.
const DEFINITION_FIELD_INPUT: &[(&str, &str)] = &[
    ("name", "String"),
    ("type", "String"),
    ("label", "String"),
    ("description", "String"),
    ("required", "Boolean"),
    ("unique", "Boolean"),
    ("index", "Boolean"),
    ("default", "JSON"),
    ("min", "JSON"),
    ("max", "JSON"),
    ("minLength", "Int"),
    ("maxLength", "Int"),
    ("pattern", "String"),
    ("values", "[String!]"),
    ("items", "String"),
    ("minItems", "Int"),
    ("maxItems", "Int"),
    ("uniqueItems", "Boolean"),
    ("precision", "Int"),
    ("scale", "Int"),
    ("currencyCode", "String"),
    ("maxSize", "BigInt"),
    ("accept", "[String!]"),
    ("target", "String"),
    ("targets", "[String!]"),
    ("onDelete", "String"),
    ("many", "Boolean"),
    ("messages", "JSON"),
    ("critical", "Boolean"),
    ("audited", "Boolean"),
];

/// Unique keys of an entity: `id`, unique fields, unique indexes (by their camelCase name).
fn unique_keys(e: &EntityDef) -> BTreeMap<String, Vec<String>> {
    let mut keys = BTreeMap::new();
    keys.insert("id".to_string(), vec!["id".to_string()]);
    for f in e.fields.iter().filter(|f| f.unique && f.has_column()) {
        keys.insert(camel(&f.name), vec![f.name.clone()]);
    }
    for i in e.indexes.iter().filter(|i| i.unique) {
        let n = camel(&i.name);
        if is_name(&n) && !keys.contains_key(&n) {
            keys.insert(n, i.fields.clone());
        }
    }
    keys
}
