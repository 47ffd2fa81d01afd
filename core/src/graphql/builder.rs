//! The typed builder: a validated operation with coerced variables becomes, per root field, a
//! tree in udm's own vocabulary (dot paths, `filters`, `sort`, `limit`, `cursor`). Fragments are
//! collected (CollectFields, with `@skip`/`@include`), aliases kept as response keys, and every
//! input is translated to udm specs with errors located at the field and its response path.
//!
//! Recursion here follows the selection (bounded by `udm.graphql_max_depth`, checked before)
//! and filter inputs (bounded by `MAX_FILTER_DEPTH`).

use super::error::{location, GqlError, PathSeg};
use super::limits::Limits;
use super::names::slug_of;
use super::schema::{EntityInfo, FieldKind, GqlSchema, Out};
use crate::query::path::Model;
use crate::query::MAX_FILTER_DEPTH;
use apollo_compiler::ast::Value as AstValue;
use apollo_compiler::executable::{DirectiveList, Field, Selection, SelectionSet};
use apollo_compiler::response::{JsonMap, JsonValue};
use apollo_compiler::schema::ExtendedType;
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Node};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

pub(crate) type R<T> = Result<T, GqlError>;
/// Response key → selection, in document order.
pub(crate) type Sels = Vec<(String, Sel)>;
/// Fields collected under one response key.
pub(crate) type Fs<'d> = Vec<&'d Node<Field>>;

/// A selection of an entity record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sel {
    /// A value at a udm path (`name`, `category_id.name`, `metadata.brand`).
    Leaf {
        path: String,
        out: Out,
        list: bool,
    },
    Typename(String),
    /// The record a many-to-one relation points to (null when the relation is null).
    ToOne {
        path: String,
        sels: Sels,
    },
    /// A nested connection.
    Conn(Box<Conn>),
    /// A reference field: the record it points to, by entity.
    Union {
        path: String,
        arms: Vec<(String, String, Sels)>,
    },
    /// `{entity, id}` of a reference.
    Ref {
        path: String,
        parts: Vec<(String, RefPart)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefPart {
    Entity,
    Id,
    Typename,
}

/// How a nested connection hangs on its parent record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// `source.column = parent id`.
    Reverse { column: String },
    /// The parent's many-to-many relation: its junction's `target_id`s.
    Junction { junction: String },
    /// Records linking to the parent through their many-to-many relation.
    JunctionBack { junction: String },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PageField {
    HasNext,
    HasPrevious,
    Start,
    End,
    Typename,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EdgeSel {
    Cursor,
    Node(Sels),
    Typename(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ConnSel {
    TotalCount,
    PageInfo(Vec<(String, PageField)>),
    Edges(Vec<(String, EdgeSel)>),
    Nodes(Sels),
    Typename(String),
}

/// A connection: a page of an entity's records, maybe linked to a parent record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conn {
    pub entity: String,
    /// The link and the path (in the parent's row) of the parent's id.
    pub link: Option<(Link, String)>,
    /// udm spec: `filters`, `sort`, `limit`, `cursor`, `offset`.
    pub spec: Map<String, Value>,
    pub backward: bool,
    pub size: i64,
    pub after: bool,
    pub before: bool,
    pub sels: Vec<(String, ConnSel)>,
}

/// The builder of one operation.
pub(crate) struct Builder<'a> {
    pub schema: &'a GqlSchema,
    pub model: &'a dyn Model,
    pub doc: &'a Valid<ExecutableDocument>,
    pub vars: &'a JsonMap,
    pub limits: &'a Limits,
}

fn to_serde(v: &JsonValue) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// GraphQL operator names to udm's.
fn operator(op: &str) -> &str {
    match op {
        "notIn" => "not_in",
        "isNull" => "is_null",
        "startsWith" => "starts_with",
        other => other,
    }
}

/// udm operators of a GraphQL scalar filter object.
fn ops(v: &Value) -> Value {
    let Some(o) = v.as_object() else {
        return v.clone();
    };
    let m: Map<String, Value> = o
        .iter()
        .map(|(k, v)| (operator(k).to_string(), v.clone()))
        .collect();
    Value::Object(m)
}

/// Decimal and BigInt inputs given as strings (exact beyond 2^53) as JSON numbers with the
/// same digits, as udm's value checks take them; other strings stay.
pub(crate) fn numbers(v: &Value) -> Value {
    match v {
        Value::String(s)
            if s.bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
                && !s.is_empty() =>
        {
            serde_json::from_str::<serde_json::Number>(s)
                .map(Value::Number)
                .unwrap_or_else(|_| v.clone())
        }
        Value::Array(items) => Value::Array(items.iter().map(numbers).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), numbers(v))).collect()),
        other => other.clone(),
    }
}

/// A key of a json path (udm paths split on `.`).
fn json_key(k: &Value) -> Option<&str> {
    k.as_str()
        .filter(|s| !s.is_empty() && !s.contains('.') && !s.contains('[') && s.len() <= 200)
}

impl<'a> Builder<'a> {
    /// An error at a field (its location) and response path.
    pub fn err(&self, f: &Node<Field>, path: &[PathSeg], e: impl Into<GqlError>) -> GqlError {
        let mut e: GqlError = e.into();
        if e.locations.is_empty() {
            e.locations
                .extend(location(f.location(), &self.doc.sources));
        }
        e.with_path(path)
    }

    /// An input value with variables substituted (None: an absent variable).
    pub fn value(&self, v: &AstValue) -> Option<Value> {
        Some(match v {
            AstValue::Null => Value::Null,
            AstValue::Variable(n) => return self.vars.get(n.as_str()).map(to_serde),
            AstValue::Enum(n) => Value::String(n.to_string()),
            AstValue::String(s) => Value::String(s.clone()),
            AstValue::Boolean(b) => Value::Bool(*b),
            AstValue::Int(i) => serde_json::from_str(i.as_str()).unwrap_or(Value::Null),
            AstValue::Float(f) => serde_json::from_str(f.as_str()).unwrap_or(Value::Null),
            AstValue::List(items) => {
                Value::Array(items.iter().filter_map(|i| self.value(i)).collect())
            }
            AstValue::Object(fields) => Value::Object(
                fields
                    .iter()
                    .filter_map(|(k, v)| self.value(v).map(|v| (k.to_string(), v)))
                    .collect(),
            ),
        })
    }

    /// An argument's value (None when absent or null).
    pub fn arg(&self, f: &Node<Field>, name: &str) -> Option<Value> {
        f.argument_by_name(name)
            .ok()
            .and_then(|v| self.value(v))
            .filter(|v| !v.is_null())
    }

    fn included(&self, dirs: &DirectiveList) -> bool {
        let flag = |d: &str| {
            dirs.get(d)
                .and_then(|d| d.specified_argument_by_name("if"))
                .and_then(|v| self.value(v))
                .and_then(|v| v.as_bool())
        };
        flag("skip") != Some(true) && flag("include") != Some(false)
    }

    /// CollectFields (spec 6.3.2): response key → the fields selected under it, in order.
    pub fn collect<'d>(
        &'d self,
        set: &'d SelectionSet,
        ty: &str,
        out: &mut Vec<(String, Fs<'d>)>,
        seen: &mut HashSet<String>,
    ) {
        for sel in &set.selections {
            match sel {
                Selection::Field(f) if self.included(&f.directives) => {
                    let key = f.response_key().to_string();
                    match out.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(f),
                        None => out.push((key, vec![f])),
                    }
                }
                Selection::FragmentSpread(s) if self.included(&s.directives) => {
                    if !seen.insert(s.fragment_name.to_string()) {
                        continue;
                    }
                    if let Some(fr) = self.doc.fragments.get(&s.fragment_name) {
                        if self.applies(fr.type_condition().as_str(), ty) {
                            self.collect(&fr.selection_set, ty, out, seen);
                        }
                    }
                }
                Selection::InlineFragment(i) if self.included(&i.directives) => {
                    if i.type_condition
                        .as_ref()
                        .is_none_or(|c| self.applies(c.as_str(), ty))
                    {
                        self.collect(&i.selection_set, ty, out, seen);
                    }
                }
                _ => {}
            }
        }
    }

    fn applies(&self, cond: &str, ty: &str) -> bool {
        cond == ty
            || match self.schema.schema.types.get(cond) {
                Some(ExtendedType::Union(u)) => u.members.iter().any(|m| m.name == ty),
                Some(ExtendedType::Interface(_)) => self
                    .schema
                    .implementers
                    .get(cond)
                    .is_some_and(|i| i.objects.iter().any(|o| o == ty)),
                _ => false,
            }
    }

    /// The merged sub-selection of the fields collected under one key, for object type `ty`.
    pub fn sub<'d>(&'d self, fields: &[&'d Node<Field>], ty: &str) -> Vec<(String, Fs<'d>)> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for f in fields {
            self.collect(&f.selection_set, ty, &mut out, &mut seen);
        }
        out
    }

    /// The sub-selection for the field's own (object) type.
    pub fn sub_own<'d>(&'d self, fields: &[&'d Node<Field>]) -> Vec<(String, Fs<'d>)> {
        let ty = fields[0].selection_set.ty.to_string();
        self.sub(fields, &ty)
    }

    pub fn info(&self, entity: &str) -> R<&'a EntityInfo> {
        self.schema
            .reflect
            .entity(entity)
            .ok_or_else(|| GqlError::internal(format!("entity \"{entity}\" is not in the schema")))
    }

    /// A page size argument: 0 to `udm.graphql_max_page_size`.
    pub fn page_size(&self, f: &Node<Field>, path: &[PathSeg], name: &str) -> R<Option<i64>> {
        let Some(v) = self.arg(f, name) else {
            return Ok(None);
        };
        match v.as_i64() {
            Some(n) if (0..=self.limits.max_page_size).contains(&n) => Ok(Some(n)),
            _ => Err(self.err(
                f,
                path,
                GqlError::limit(format!(
                    "{name} must be from 0 to {} (udm.graphql_max_page_size), got {v}",
                    self.limits.max_page_size
                )),
            )),
        }
    }

    /// The selections of an entity record (`prefix`: the udm path of the record, e.g.
    /// `category_id.` for a to-one object).
    pub fn node(
        &self,
        entity: &str,
        prefix: &str,
        fields: &[(String, Fs<'_>)],
        path: &[PathSeg],
    ) -> R<Sels> {
        let info = self.info(entity)?;
        let mut out = Vec::with_capacity(fields.len());
        for (k, fs) in fields {
            let f = fs[0];
            let mut p = path.to_vec();
            p.push(PathSeg::Key(k.clone()));
            let name = f.name.as_str();
            if name == "__typename" {
                out.push((k.clone(), Sel::Typename(info.type_name.clone())));
                continue;
            }
            let kind = info.fields.get(name).ok_or_else(|| {
                self.err(
                    f,
                    &p,
                    GqlError::internal(format!("{}.{name} is not reflected", info.type_name)),
                )
            })?;
            out.push((k.clone(), self.node_field(entity, prefix, kind, fs, &p)?));
        }
        Ok(out)
    }

    fn node_field(
        &self,
        entity: &str,
        prefix: &str,
        kind: &FieldKind,
        fs: &[&Node<Field>],
        p: &[PathSeg],
    ) -> R<Sel> {
        let f = fs[0];
        let parent_id = if prefix.is_empty() {
            "id".to_string()
        } else {
            prefix.trim_end_matches('.').to_string()
        };
        Ok(match kind {
            FieldKind::System { column, .. } => Sel::Leaf {
                path: format!("{prefix}{column}"),
                out: Out::Plain,
                list: false,
            },
            FieldKind::Scalar { field, out, ty } => Sel::Leaf {
                path: format!("{prefix}{field}"),
                out: *out,
                list: ty.starts_with('['),
            },
            FieldKind::RelationId { field } => Sel::Leaf {
                path: format!("{prefix}{field}"),
                out: Out::Plain,
                list: false,
            },
            FieldKind::Json { field } => {
                let mut path = format!("{prefix}{field}");
                for key in self
                    .arg(f, "path")
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                {
                    let k = json_key(&key).ok_or_else(|| {
                        self.err(f, p, GqlError::input(format!("json key {key} cannot be read: keys must be non-empty, without '.' or '['")))
                    })?;
                    path.push('.');
                    path.push_str(k);
                }
                Sel::Leaf {
                    path,
                    out: Out::Plain,
                    list: false,
                }
            }
            FieldKind::ToOne { field, target } => {
                let sub = self.sub_own(fs);
                Sel::ToOne {
                    path: format!("{prefix}{field}"),
                    sels: self.node(target, &format!("{prefix}{field}."), &sub, p)?,
                }
            }
            FieldKind::Reverse { source, field } => {
                let column = self.column(source, field)?;
                Sel::Conn(Box::new(self.conn(
                    source,
                    Some((Link::Reverse { column }, parent_id)),
                    fs,
                    p,
                )?))
            }
            FieldKind::ManyToMany { field, target } => {
                let junction = self.junction(entity, field)?;
                Sel::Conn(Box::new(self.conn(
                    target,
                    Some((Link::Junction { junction }, parent_id)),
                    fs,
                    p,
                )?))
            }
            FieldKind::ReverseManyToMany { source, field } => {
                let junction = self.junction(source, field)?;
                Sel::Conn(Box::new(self.conn(
                    source,
                    Some((Link::JunctionBack { junction }, parent_id)),
                    fs,
                    p,
                )?))
            }
            FieldKind::Reference { field, targets } => {
                let mut arms = Vec::new();
                for t in targets {
                    let tn = self.info(t)?.type_name.clone();
                    let sub = self.sub(fs, &tn);
                    arms.push((t.clone(), tn, self.node(t, "", &sub, p)?));
                }
                Sel::Union {
                    path: format!("{prefix}{field}"),
                    arms,
                }
            }
            FieldKind::ReferenceRef { field } => {
                let parts = self
                    .sub(fs, "RecordRef")
                    .into_iter()
                    .map(|(k, s)| {
                        let part = match s[0].name.as_str() {
                            "entity" => RefPart::Entity,
                            "id" => RefPart::Id,
                            _ => RefPart::Typename,
                        };
                        (k, part)
                    })
                    .collect();
                Sel::Ref {
                    path: format!("{prefix}{field}"),
                    parts,
                }
            }
            FieldKind::Password { .. } => {
                return Err(self.err(f, p, GqlError::internal("a password field was selected")))
            }
        })
    }

    fn column(&self, entity: &str, field: &str) -> R<String> {
        self.schema_entity_field(entity, field, |f| Some(f.column.clone()))
    }

    fn junction(&self, entity: &str, field: &str) -> R<String> {
        self.schema_entity_field(entity, field, |f| f.junction.clone())
    }

    fn schema_entity_field(
        &self,
        entity: &str,
        field: &str,
        get: impl Fn(&crate::definition::FieldDef) -> Option<String>,
    ) -> R<String> {
        self.model
            .entity(entity)
            .and_then(|e| e.field(field))
            .and_then(get)
            .ok_or_else(|| {
                GqlError::internal(format!("{entity}.{field} has no column or junction"))
            })
    }

    /// A connection field (root or nested).
    pub fn conn(
        &self,
        entity: &str,
        link: Option<(Link, String)>,
        fs: &[&Node<Field>],
        p: &[PathSeg],
    ) -> R<Conn> {
        let f = fs[0];
        let mut spec = Map::new();
        if let Some(v) = self.arg(f, "filter") {
            spec.insert("filters".into(), self.filter(entity, &v, f, p)?);
        }
        if let Some(v) = self.arg(f, "orderBy") {
            spec.insert("sort".into(), self.order_by(entity, &v, f, p)?);
        }
        let (first, last) = (
            self.page_size(f, p, "first")?,
            self.page_size(f, p, "last")?,
        );
        if first.is_some() && last.is_some() {
            return Err(self.err(f, p, GqlError::input("give first or last, not both")));
        }
        let (after, before) = (self.arg(f, "after"), self.arg(f, "before"));
        if after.is_some() && before.is_some() {
            return Err(self.err(f, p, GqlError::input("give after or before, not both")));
        }
        let backward = last.is_some() || (before.is_some() && first.is_none());
        if (backward && after.is_some()) || (!backward && before.is_some()) {
            return Err(self.err(
                f,
                p,
                GqlError::input("page forwards with first/after, backwards with last/before"),
            ));
        }
        let size = first.or(last).unwrap_or(self.limits.default_page_size);
        if let Some(c) = after.clone().or(before.clone()) {
            spec.insert("cursor".into(), c);
        }
        if let Some(o) = self.arg(f, "offset") {
            if o.as_i64().is_none_or(|n| n < 0) {
                return Err(self.err(
                    f,
                    p,
                    GqlError::input(format!("offset must be at least 0, got {o}")),
                ));
            }
            spec.insert("offset".into(), o);
        }
        spec.insert("limit".into(), json!(size.max(1)));
        let mut c = Conn {
            entity: entity.to_string(),
            link,
            spec,
            backward,
            size,
            after: after.is_some(),
            before: before.is_some(),
            sels: vec![],
        };
        let tn = self.info(entity)?.type_name.clone();
        for (k, sub) in self.sub_own(fs) {
            let mut kp = p.to_vec();
            kp.push(PathSeg::Key(k.clone()));
            let sel = match sub[0].name.as_str() {
                "totalCount" => ConnSel::TotalCount,
                "nodes" => ConnSel::Nodes(self.node(entity, "", &self.sub(&sub, &tn), &kp)?),
                "pageInfo" => ConnSel::PageInfo(self.page_info(&sub)),
                "edges" => ConnSel::Edges(self.edges(entity, &tn, &sub, &kp)?),
                _ => ConnSel::Typename(format!("{tn}Connection")),
            };
            c.sels.push((k, sel));
        }
        Ok(c)
    }

    fn page_info(&self, fs: &[&Node<Field>]) -> Vec<(String, PageField)> {
        self.sub(fs, "PageInfo")
            .into_iter()
            .map(|(k, p)| {
                let pf = match p[0].name.as_str() {
                    "hasNextPage" => PageField::HasNext,
                    "hasPreviousPage" => PageField::HasPrevious,
                    "startCursor" => PageField::Start,
                    "endCursor" => PageField::End,
                    _ => PageField::Typename,
                };
                (k, pf)
            })
            .collect()
    }

    fn edges(
        &self,
        entity: &str,
        tn: &str,
        fs: &[&Node<Field>],
        p: &[PathSeg],
    ) -> R<Vec<(String, EdgeSel)>> {
        let mut out = Vec::new();
        for (k, e) in self.sub(fs, &format!("{tn}Edge")) {
            let sel = match e[0].name.as_str() {
                "cursor" => EdgeSel::Cursor,
                "node" => {
                    let mut kp = p.to_vec();
                    kp.push(PathSeg::Key(k.clone()));
                    EdgeSel::Node(self.node(entity, "", &self.sub(&e, tn), &kp)?)
                }
                _ => EdgeSel::Typename(format!("{tn}Edge")),
            };
            out.push((k, sel));
        }
        Ok(out)
    }

    /// A filter input object as udm `filters`: `{"and": [terms]}` with paths from `entity`.
    pub fn filter(&self, entity: &str, v: &Value, f: &Node<Field>, p: &[PathSeg]) -> R<Value> {
        let mut terms = Vec::new();
        self.filter_terms(entity, v, "", f, p, &mut terms, 0)?;
        Ok(json!({ "and": terms }))
    }

    #[allow(clippy::too_many_arguments)]
    fn filter_terms(
        &self,
        entity: &str,
        v: &Value,
        prefix: &str,
        f: &Node<Field>,
        p: &[PathSeg],
        out: &mut Vec<Value>,
        depth: usize,
    ) -> R<()> {
        if depth > MAX_FILTER_DEPTH {
            return Err(self.err(
                f,
                p,
                GqlError::limit(format!(
                    "filters nest deeper than {MAX_FILTER_DEPTH} levels"
                )),
            ));
        }
        let Some(obj) = v.as_object() else {
            return Ok(());
        };
        let info = self.info(entity)?;
        for (k, val) in obj {
            let term = match k.as_str() {
                "and" | "or" => {
                    let mut items = Vec::new();
                    for item in val.as_array().into_iter().flatten() {
                        let mut t = Vec::new();
                        self.filter_terms(entity, item, prefix, f, p, &mut t, depth + 1)?;
                        items.push(json!({"and": t}));
                    }
                    json!({ k.as_str(): items })
                }
                "not" => {
                    let mut t = Vec::new();
                    self.filter_terms(entity, val, prefix, f, p, &mut t, depth + 1)?;
                    json!({"not": {"and": t}})
                }
                name => match info.fields.get(name) {
                    Some(FieldKind::ToOne { field, target }) => {
                        self.filter_terms(
                            target,
                            val,
                            &format!("{prefix}{field}."),
                            f,
                            p,
                            out,
                            depth + 1,
                        )?;
                        continue;
                    }
                    Some(FieldKind::Reverse { source, field }) => self.list_filter(
                        source,
                        format!("{prefix}{source}[{field}]"),
                        val,
                        f,
                        p,
                        depth,
                    )?,
                    Some(FieldKind::ManyToMany { field, target }) => {
                        self.list_filter(target, format!("{prefix}{field}"), val, f, p, depth)?
                    }
                    Some(FieldKind::ReverseManyToMany { source, field }) => self.list_filter(
                        source,
                        format!("{prefix}{source}[{field}]"),
                        val,
                        f,
                        p,
                        depth,
                    )?,
                    Some(FieldKind::Json { field }) => {
                        json_filter(&format!("{prefix}{field}"), val).ok_or_else(|| {
                            self.err(
                                f,
                                p,
                                GqlError::input(format!(
                                "filter {name}: json keys must be non-empty, without '.' or '['"
                            )),
                            )
                        })?
                    }
                    Some(
                        kind @ (FieldKind::System { .. }
                        | FieldKind::Scalar { .. }
                        | FieldKind::RelationId { .. }),
                    ) => {
                        let exact = matches!(kind, FieldKind::Scalar { out: Out::Text, .. });
                        self.scalar_filter(&format!("{prefix}{}", kind.slug()), val, exact, f, p)?
                    }
                    _ => {
                        return Err(self.err(
                            f,
                            p,
                            GqlError::input(format!("{name} cannot be filtered on")),
                        ))
                    }
                },
            };
            out.push(term);
        }
        Ok(())
    }

    fn scalar_filter(
        &self,
        path: &str,
        val: &Value,
        exact: bool,
        f: &Node<Field>,
        p: &[PathSeg],
    ) -> R<Value> {
        if let Some(b) = val.get("between") {
            if b.as_array().is_none_or(|a| a.len() != 2) {
                return Err(self.err(
                    f,
                    p,
                    GqlError::input(format!("filter {path}: between takes [low, high]")),
                ));
            }
        }
        self.check_lists(val, f, p)?;
        let o = ops(val);
        Ok(json!({ path: if exact { numbers(&o) } else { o } }))
    }

    fn check_lists(&self, val: &Value, f: &Node<Field>, p: &[PathSeg]) -> R<()> {
        for v in val.as_object().into_iter().flat_map(|o| o.values()) {
            if v.as_array()
                .is_some_and(|a| a.len() > self.limits.max_list_items)
            {
                return Err(self.err(
                    f,
                    p,
                    GqlError::limit(format!(
                        "a list has more than {} items (udm.graphql_max_list_items)",
                        self.limits.max_list_items
                    )),
                ));
            }
        }
        Ok(())
    }

    /// `{some|every|none: Filter}` on a to-many path: udm's quantified sub-filter.
    fn list_filter(
        &self,
        target: &str,
        path: String,
        v: &Value,
        f: &Node<Field>,
        p: &[PathSeg],
        depth: usize,
    ) -> R<Value> {
        let mut q = Map::new();
        for (k, sub) in v.as_object().into_iter().flatten() {
            let mut t = Vec::new();
            self.filter_terms(target, sub, "", f, p, &mut t, depth + 1)?;
            q.insert(k.clone(), json!({"and": t}));
        }
        if q.is_empty() {
            q.insert("some".into(), json!({}));
        }
        Ok(json!({ path: q }))
    }

    /// `orderBy` items as udm `sort` items.
    pub fn order_by(&self, entity: &str, v: &Value, f: &Node<Field>, p: &[PathSeg]) -> R<Value> {
        let items = match v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let mut out = Vec::with_capacity(items.len());
        for i in &items {
            out.push(self.order_item(entity, i, "", f, p)?);
        }
        Ok(Value::Array(out))
    }

    fn order_item(
        &self,
        entity: &str,
        v: &Value,
        prefix: &str,
        f: &Node<Field>,
        p: &[PathSeg],
    ) -> R<Value> {
        let one = v.as_object().filter(|o| o.len() == 1);
        let (name, val) = one.and_then(|o| o.iter().next()).ok_or_else(|| {
            self.err(
                f,
                p,
                GqlError::input("each orderBy item names exactly one field"),
            )
        })?;
        let info = self.info(entity)?;
        let (path, dir) = match (info.fields.get(name.as_str()), val) {
            (Some(FieldKind::ToOne { field, target }), Value::Object(_)) => {
                return self.order_item(target, val, &format!("{prefix}{field}."), f, p);
            }
            (Some(FieldKind::Json { field }), Value::Object(o)) => {
                let path =
                    json_path(&format!("{prefix}{field}"), o.get("path")).ok_or_else(|| {
                        self.err(
                            f,
                            p,
                            GqlError::input("json keys must be non-empty, without '.' or '['"),
                        )
                    })?;
                (
                    path,
                    o.get("direction")
                        .and_then(Value::as_str)
                        .unwrap_or("ASC")
                        .to_string(),
                )
            }
            (Some(kind), Value::String(d)) => (format!("{prefix}{}", kind.slug()), d.clone()),
            _ => return Err(self.err(f, p, GqlError::input(format!("cannot order by {name}")))),
        };
        Ok(sort_item(&path, &dir))
    }

    /// Sub-selections of a field returning plain objects: response key → field name.
    pub fn plain(&self, fs: &[&Node<Field>]) -> Vec<(String, String)> {
        self.sub_own(fs)
            .into_iter()
            .map(|(k, s)| (k, s[0].name.to_string()))
            .collect()
    }

    /// Input object keys in camelCase → udm slugs, recursively (definition inputs).
    pub fn slug_keys(v: &Value, depth: usize) -> Value {
        match v {
            Value::Object(m) if depth < 8 => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        // free-form JSON values (defaults, messages, lock, access) stay as given
                        let keep = matches!(
                            k.as_str(),
                            "default" | "min" | "max" | "messages" | "lock" | "access"
                        );
                        let v = if keep {
                            v.clone()
                        } else {
                            Self::slug_keys(v, depth + 1)
                        };
                        (slug_of(k), v)
                    })
                    .collect(),
            ),
            Value::Array(items) if depth < 8 => Value::Array(
                items
                    .iter()
                    .map(|i| Self::slug_keys(i, depth + 1))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// A udm sort item from a GraphQL OrderDirection.
fn sort_item(path: &str, dir: &str) -> Value {
    let (d, nulls) = match dir {
        "ASC_NULLS_FIRST" => ("asc", Some("first")),
        "ASC_NULLS_LAST" => ("asc", Some("last")),
        "DESC" => ("desc", None),
        "DESC_NULLS_FIRST" => ("desc", Some("first")),
        "DESC_NULLS_LAST" => ("desc", Some("last")),
        _ => ("asc", None),
    };
    let mut o = json!({"path": path, "direction": d});
    if let Some(n) = nulls {
        o["nulls"] = json!(n);
    }
    o
}

/// `field.key1.key2` from a json field's path and a list of keys (None: a key cannot be one).
pub(crate) fn json_path(base: &str, keys: Option<&Value>) -> Option<String> {
    let mut path = base.to_string();
    for k in keys.and_then(Value::as_array).into_iter().flatten() {
        path.push('.');
        path.push_str(json_key(k)?);
    }
    Some(path)
}

/// A JSONFilter as a udm filter term.
fn json_filter(base: &str, v: &Value) -> Option<Value> {
    let path = json_path(base, v.get("path"))?;
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("path");
    }
    Some(json!({ path: ops(&o) }))
}
