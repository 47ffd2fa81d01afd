//! A request's operation → one [`FieldPlan`] per root field.

use super::builder::{Builder, Fs, Sels, R};
use super::error::{location, GqlError, PathSeg};
use super::limits::Limits;
use super::names::camel;
use super::parse::{is_introspection, operation, Document, OperationKind};
use super::plan::{Arg, FieldPlan, Finish, Op, Planning};
use super::schema::{GqlSchema, RootField, RootKind, ViewKind, SYSTEM};
use super::subscription::SubscriptionPlan;
use super::transpile::{columns, Sql};
use super::views::{flat, Shape, ViewShape};
use crate::ident::{quote_ident, quote_literal};
use crate::query::path::Model;
use crate::query::{bind, views};
use crate::values::PType;
use apollo_compiler::executable::Field;
use apollo_compiler::Node;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// What a request runs in: the reader's model, the limits, where udm's SQL functions live, and
/// a source of new record ids (UUIDv7, as `udm.uuid_v7()` makes them) for nested inserts.
pub struct Context<'a> {
    pub model: &'a dyn Model,
    pub limits: &'a Limits,
    /// The schema of the extension's functions (`udm_update`, `udm_history`, …).
    pub functions_schema: &'a str,
    pub new_id: &'a mut dyn FnMut() -> String,
}

/// A prepared operation.
#[derive(Debug)]
pub struct Prepared {
    pub kind: OperationKind,
    /// The root fields' plans, in response order.
    pub fields: Vec<FieldPlan>,
    /// For a subscription: what its events need.
    pub subscription: Option<SubscriptionPlan>,
}

/// Plans the operation `operation_name` of a document with `variables`.
pub fn prepare(
    schema: &GqlSchema,
    doc: &Document,
    operation_name: Option<&str>,
    variables: &Value,
    ctx: &mut Context,
) -> Result<Prepared, Vec<GqlError>> {
    let (op, vars) = operation(schema, doc, operation_name, variables, ctx.limits)?;
    let kind: OperationKind = op.operation_type.into();
    let b = Builder {
        schema,
        model: ctx.model,
        doc: &doc.doc,
        vars: &vars,
        limits: ctx.limits,
    };
    let mut collected = Vec::new();
    b.collect(
        &op.selection_set,
        op.object_type().as_str(),
        &mut collected,
        &mut HashSet::new(),
    );
    if collected.len() > ctx.limits.max_root_fields {
        return Err(vec![GqlError::limit(format!(
            "the operation has {} root fields; udm.graphql_max_root_fields allows {}",
            collected.len(),
            ctx.limits.max_root_fields
        ))]);
    }
    let introspection = introspect(schema, doc, op, &vars, ctx.limits, &collected)?;
    let roots = match kind {
        OperationKind::Query => &schema.reflect.query,
        OperationKind::Mutation => &schema.reflect.mutation,
        OperationKind::Subscription => &schema.reflect.subscription,
    };
    let defs = collected
        .iter()
        .filter(|(_, fs)| {
            roots
                .get(fs[0].name.as_str())
                .is_some_and(|r| r.kind.is_definition_change())
        })
        .count();
    if defs > 0 && defs < collected.len() {
        let f = collected
            .iter()
            .find(|(_, fs)| {
                roots
                    .get(fs[0].name.as_str())
                    .is_some_and(|r| !r.kind.is_definition_change())
            })
            .map(|(_, fs)| fs[0]);
        let at = f.and_then(|f| location(f.location(), &doc.doc.sources));
        return Err(vec![GqlError::validation("a mutation that changes definitions may contain only definition changes (the others were checked against the old schema)").at(at)]);
    }
    let mut fields = Vec::new();
    let mut subscription = None;
    let mut errors = Vec::new();
    for (key, fs) in &collected {
        let f = fs[0];
        let name = f.name.as_str();
        let at = location(f.location(), &doc.doc.sources);
        let plan = if name == "__typename" {
            Ok(FieldPlan::constant(key, json!(op.object_type().as_str())))
        } else if is_introspection(name) {
            Ok(FieldPlan::constant(
                key,
                introspection.get(key).cloned().unwrap_or(Value::Null),
            ))
        } else if let Some(root) = roots.get(name) {
            let mut p = Planner {
                b: &b,
                ctx: &mut *ctx,
                key: key.clone(),
            };
            if root.kind == RootKind::Changed {
                p.subscription(root, fs).map(|s| {
                    subscription = Some(s);
                    FieldPlan::constant(key, Value::Null)
                })
            } else {
                p.root(root, fs)
                    .map(|(ops, finish)| FieldPlan::new(key, at, ops, finish))
            }
        } else {
            Err(GqlError::internal(format!(
                "root field {name} is not reflected"
            )))
        };
        match plan {
            Ok(p) => fields.push(p),
            Err(mut e) => {
                if e.locations.is_empty() {
                    e.locations.extend(at);
                }
                errors.push(e.with_path(&[PathSeg::Key(key.clone())]));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Prepared {
        kind,
        fields,
        subscription,
    })
}

/// The introspection fields' data, answered from the schema (apollo-compiler's executor).
fn introspect(
    schema: &GqlSchema,
    doc: &Document,
    op: &Node<apollo_compiler::executable::Operation>,
    vars: &apollo_compiler::validation::Valid<apollo_compiler::response::JsonMap>,
    limits: &Limits,
    collected: &[(String, Fs<'_>)],
) -> Result<Map<String, Value>, Vec<GqlError>> {
    let wanted = collected
        .iter()
        .find(|(_, fs)| is_introspection(fs[0].name.as_str()));
    let Some((_, fs)) = wanted else {
        return Ok(Map::new());
    };
    let at = location(fs[0].location(), &doc.doc.sources);
    if !limits.introspection {
        return Err(vec![GqlError::new(
            super::error::Code::IntrospectionDisabled,
            crate::error::SqlState::InsufficientPrivilege,
            "introspection is switched off (udm.graphql_introspection)",
        )
        .at(at)]);
    }
    use apollo_compiler::introspection as intro;
    intro::check_max_depth(&doc.doc, op).map_err(|e| {
        vec![GqlError::limit(e.message().to_string()).at(location(e.location(), &doc.doc.sources))]
    })?;
    let resp = intro::partial_execute(&schema.schema, &schema.implementers, &doc.doc, op, vars)
        .map_err(|e| vec![GqlError::validation(e.message().to_string()).at(at)])?;
    match serde_json::to_value(&resp.data) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Ok(Map::new()),
    }
}

/// Plans one root field.
pub(crate) struct Planner<'b, 'a, 'c> {
    pub b: &'b Builder<'a>,
    pub ctx: &'b mut Context<'c>,
    pub key: String,
}

type Plan = (Vec<Op>, Finish);

fn run(sql: String, values: Vec<Option<String>>, planning: Planning) -> Op {
    Op::Run {
        sql: sql.into(),
        args: values.into_iter().map(Arg::Text).collect(),
        planning,
    }
}

impl Planner<'_, '_, '_> {
    fn path(&self) -> Vec<PathSeg> {
        vec![PathSeg::Key(self.key.clone())]
    }

    fn err(&self, f: &Node<Field>, e: impl Into<GqlError>) -> GqlError {
        self.b.err(f, &self.path(), e)
    }

    fn function(&self, name: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(self.ctx.functions_schema),
            quote_ident(name)
        )
    }

    fn node(&self, entity: &str, fs: &[&Node<Field>]) -> R<Sels> {
        self.b.node(entity, "", &self.b.sub_own(fs), &self.path())
    }

    fn root(&mut self, root: &RootField, fs: &[&Node<Field>]) -> R<Plan> {
        let f = fs[0];
        let entity = root.entity.clone().unwrap_or_default();
        match &root.kind {
            RootKind::ById => {
                let sels = self.node(&entity, fs)?;
                let id = self.b.arg(f, "id").unwrap_or(Value::Null);
                let mut sql = Sql::new(self.ctx.model);
                let filters = Some(json!({"id": {"eq": id.clone()}}));
                if let Some((text, shape)) = sql
                    .record_rows(&entity, &sels, filters)
                    .map_err(|e| self.err(f, e))?
                {
                    return Ok((
                        vec![run(text, sql.values, Planning::Cached)],
                        Finish::Rows(shape.into()),
                    ));
                }
                let e = sql
                    .record(&entity, &sels, None, Some(json!({"id": {"eq": id}})))
                    .map_err(|e| self.err(f, e))?;
                Ok((
                    vec![run(format!("SELECT {e}"), sql.values, Planning::Cached)],
                    Finish::Last,
                ))
            }
            RootKind::Collection => {
                let c = self.b.conn(&entity, None, fs, &self.path())?;
                let mut sql = Sql::new(self.ctx.model);
                if let Some((text, shape)) = sql.conn_rows(&c).map_err(|e| self.err(f, e))? {
                    let planning = if c.after || c.before {
                        Planning::Generic
                    } else {
                        Planning::Cached
                    };
                    return Ok((
                        vec![run(text, sql.values, planning)],
                        Finish::Rows(shape.into()),
                    ));
                }
                let e = sql.conn(&c, None).map_err(|e| self.err(f, e))?;
                let per_call = c
                    .sels
                    .iter()
                    .any(|(_, s)| matches!(s, super::builder::ConnSel::TotalCount));
                // a page after (before) a cursor: the keyset's index order decides the plan
                let planning = if per_call {
                    Planning::PerCall
                } else if c.after || c.before {
                    Planning::Generic
                } else {
                    Planning::Cached
                };
                let op = run(format!("SELECT {e}"), sql.values, planning);
                Ok((vec![op], Finish::Last))
            }
            RootKind::Aggregate => super::aggregate::plan(self, &entity, fs),
            RootKind::AsOf => self.as_of(&entity, fs),
            RootKind::History => self.history(&entity, fs),
            RootKind::View(v) => self.view(*v, &entity, fs),
            RootKind::Lock(op) => {
                let id = self
                    .b
                    .arg(f, "id")
                    .and_then(|v| v.as_str().map(str::to_string));
                let sql = format!(
                    "SELECT {}($1::text, $2::uuid)",
                    self.function(op.function())
                );
                Ok((
                    vec![run(sql, vec![Some(entity), id], Planning::Cached)],
                    Finish::Last,
                ))
            }
            RootKind::Rollback => {
                let id = self
                    .b
                    .arg(f, "id")
                    .and_then(|v| v.as_str().map(str::to_string));
                let version = self.b.arg(f, "version").map(|v| v.to_string());
                let fields = self.b.arg(f, "fields").map(|v| {
                    let slugs: Vec<Value> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str())
                        .map(|x| json!(self.slug_of_field(&entity, x)))
                        .collect();
                    crate::values::to_text(
                        &Value::Array(slugs),
                        &PType::Array(Box::new(PType::Text)),
                        "fields",
                    )
                    .unwrap_or_default()
                });
                let sql = format!(
                    "SELECT {}($1::text, $2::uuid, $3::integer, $4::text[])",
                    self.function("udm_rollback")
                );
                Ok((
                    vec![run(
                        sql,
                        vec![Some(entity), id, version, fields],
                        Planning::Cached,
                    )],
                    Finish::Last,
                ))
            }
            RootKind::RollbackTransaction => {
                let txid = self.b.arg(f, "txid").map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                });
                let force = Some(
                    self.b
                        .arg(f, "force")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false)
                        .to_string(),
                );
                let sql = format!(
                    "SELECT {}($1::bigint, $2::boolean)",
                    self.function("udm_rollback_transaction")
                );
                Ok((
                    vec![run(sql, vec![txid, force], Planning::Cached)],
                    Finish::Last,
                ))
            }
            RootKind::Schema(op) => self.definition_change(*op, f),
            RootKind::Insert
            | RootKind::Upsert
            | RootKind::Update
            | RootKind::UpdateMany
            | RootKind::Delete
            | RootKind::DeleteMany => super::mutation::plan(self, &root.kind, &entity, fs),
            RootKind::Changed => {
                Err(self.err(f, GqlError::internal("a subscription field in a plan")))
            }
        }
    }

    /// The udm field of a GraphQL field name of an entity (system columns included).
    pub(crate) fn slug_of_field(&self, entity: &str, name: &str) -> String {
        self.b
            .schema
            .reflect
            .entity(entity)
            .and_then(|i| i.fields.get(name))
            .map(|k| k.slug().to_string())
            .unwrap_or_else(|| super::names::slug_of(name))
    }

    /// A snapshot selection (`PSnapshot`) read from an audit image `img` (jsonb keyed by slug).
    pub(crate) fn snapshot_obj(&self, entity: &str, fs: &[&Node<Field>], img: &str) -> R<String> {
        let info = self.b.info(entity)?;
        let mut pairs = Vec::new();
        for (k, name) in self.b.plain(fs) {
            let e = match info.fields.get(&name) {
                _ if name == "__typename" => quote_literal(&format!("{}Snapshot", info.type_name)),
                Some(super::schema::FieldKind::Scalar {
                    field,
                    out: super::schema::Out::Text,
                    ..
                }) => {
                    let v = format!("({img} -> {})", quote_literal(field));
                    format!("(CASE WHEN jsonb_typeof({v}) = 'number' THEN to_jsonb({img} ->> {}) ELSE {v} END)", quote_literal(field))
                }
                Some(kind) => format!("({img} -> {})", quote_literal(kind.slug())),
                None => "NULL".into(),
            };
            pairs.push((k, e));
        }
        Ok(format!(
            "CASE WHEN {img} IS NULL THEN NULL ELSE {} END",
            crate::query::json_object(&pairs)
        ))
    }

    fn as_of(&mut self, entity: &str, fs: &[&Node<Field>]) -> R<Plan> {
        let f = fs[0];
        let obj = self.snapshot_obj(entity, fs, "r.d")?;
        let id = self
            .b
            .arg(f, "id")
            .and_then(|v| v.as_str().map(str::to_string));
        let at = self
            .b
            .arg(f, "at")
            .and_then(|v| v.as_str().map(str::to_string));
        let sql = format!(
            "SELECT {obj} FROM (SELECT {}($1::text, $2::uuid, $3::timestamptz)::jsonb AS d) r",
            self.function("udm_record_at")
        );
        Ok((
            vec![run(
                sql,
                vec![Some(entity.to_string()), id, at],
                Planning::Cached,
            )],
            Finish::Last,
        ))
    }

    /// `changed_fields` (slugs) as GraphQL names.
    fn changed_fields_expr(&self, entity: &str, col: &str) -> R<String> {
        let info = self.b.info(entity)?;
        let mut cases = String::new();
        let mut names: Vec<(&String, &str)> = info
            .fields
            .iter()
            .map(|(n, k)| (n, k.slug()))
            .filter(|(n, s)| camel(s) == **n)
            .collect();
        names.sort();
        for (n, s) in names {
            if n != s {
                cases.push_str(&format!(
                    " WHEN {} THEN {}",
                    quote_literal(s),
                    quote_literal(n)
                ));
            }
        }
        let name = if cases.is_empty() {
            "f".to_string()
        } else {
            format!("CASE f{cases} ELSE f END")
        };
        Ok(format!(
            "(SELECT coalesce(jsonb_agg({name}), '[]'::jsonb) FROM unnest({col}) f)"
        ))
    }

    fn history(&mut self, entity: &str, fs: &[&Node<Field>]) -> R<Plan> {
        let f = fs[0];
        let first = self
            .b
            .page_size(f, &self.path(), "first")?
            .unwrap_or(self.ctx.limits.max_page_size);
        let mut pairs = Vec::new();
        for (k, sub) in self.b.sub_own(fs) {
            let e = match sub[0].name.as_str() {
                "version" => "h.version".into(),
                "action" => "h.action".into(),
                "changedFields" => self.changed_fields_expr(entity, "h.changed_fields")?,
                "summary" => "h.summary".into(),
                "userId" => "h.user_id".into(),
                "dbRole" => "h.db_role".into(),
                "changedAt" => "h.changed_at".into(),
                "txid" => "h.txid::text".into(),
                "eventId" => "h.event_id::text".into(),
                "record" => self.snapshot_obj(entity, &sub, "h.data::jsonb")?,
                _ => quote_literal(&format!("{}Version", self.b.info(entity)?.type_name)),
            };
            pairs.push((k, e));
        }
        let sql = format!(
            "SELECT coalesce(jsonb_agg({} ORDER BY h.event_id DESC), '[]'::jsonb) FROM (SELECT * FROM {}($1::text, $2::uuid) ORDER BY event_id DESC LIMIT $3::bigint) h",
            crate::query::json_object(&pairs),
            self.function("udm_history")
        );
        let id = self
            .b
            .arg(f, "id")
            .and_then(|v| v.as_str().map(str::to_string));
        Ok((
            vec![run(
                sql,
                vec![Some(entity.to_string()), id, Some(first.to_string())],
                Planning::Cached,
            )],
            Finish::Last,
        ))
    }

    fn view(&mut self, kind: ViewKind, entity: &str, fs: &[&Node<Field>]) -> R<Plan> {
        let f = fs[0];
        let p = self.path();
        let mut spec = Map::new();
        if let Some(v) = self.b.arg(f, "filter") {
            spec.insert("filters".into(), self.b.filter(entity, &v, f, &p)?);
        }
        if let Some(v) = self.b.arg(f, "orderBy") {
            spec.insert("sort".into(), self.b.order_by(entity, &v, f, &p)?);
        }
        if let Some(n) = self.b.page_size(f, &p, "first")? {
            spec.insert("limit".into(), json!(n.max(1)));
        }
        for (arg, key) in [
            ("search", "search"),
            ("root", "root"),
            ("depth", "depth"),
            ("id", "id"),
        ] {
            if let Some(v) = self.b.arg(f, arg) {
                spec.insert(key.into(), v);
            }
        }
        for arg in ["field", "label", "start", "end", "groupBy"] {
            if let Some(v) = self
                .b
                .arg(f, arg)
                .and_then(|v| v.as_str().map(str::to_string))
            {
                let key = if arg == "groupBy" { "group_by" } else { arg };
                spec.insert(key.into(), json!(self.slug_of_field(entity, &v)));
            }
        }
        let shape = self.view_shape(kind, entity, fs, &mut spec)?;
        let spec = Value::Object(spec);
        let t = views::compile(self.ctx.model, entity, kind.udm(), &spec)
            .map_err(|e| self.err(f, e))?;
        let values = bind(&spec, &t).map_err(|e| self.err(f, e))?;
        Ok((
            vec![run(t.sql, values, Planning::per_call(t.plan_per_call))],
            Finish::View(ViewShape(shape)),
        ))
    }

    /// The shape of a view's result for the selection (and the columns the view must read).
    fn view_shape(
        &self,
        kind: ViewKind,
        entity: &str,
        fs: &[&Node<Field>],
        spec: &mut Map<String, Value>,
    ) -> R<Shape> {
        let f = fs[0];
        let tn = self.b.info(entity)?.type_name.clone();
        let mut cols: Vec<String> = Vec::new();
        let row = |b: &Builder,
                   sub: &[&Node<Field>],
                   ty: &str,
                   cols: &mut Vec<String>|
         -> R<Shape> {
            let sels = b.node(entity, "", &b.sub(sub, ty), &self.path())?;
            if !flat(&sels) {
                return Err(self.err(f, GqlError::validation("views return fields of the record and of its to-one relations; use a collection for nested lists")));
            }
            for c in columns(&sels) {
                if !cols.contains(&c) {
                    cols.push(c);
                }
            }
            Ok(Shape::Row(sels))
        };
        let label = |b: &Builder, sub: &[&Node<Field>]| -> Shape {
            Shape::Object(
                b.plain(sub)
                    .into_iter()
                    .map(|(k, n)| {
                        let s = if n == "__typename" {
                            Shape::Const(json!("RecordLabel"))
                        } else {
                            Shape::Same
                        };
                        (k, n, s)
                    })
                    .collect(),
            )
        };
        let shape = match kind {
            ViewKind::Dropdown | ViewKind::Breadcrumb => Shape::Object(vec![(
                "v".into(),
                "items".into(),
                Shape::List(Box::new(label(self.b, fs))),
            )]),
            ViewKind::Kanban => {
                let mut top = Vec::new();
                for (k, sub) in self.b.sub_own(fs) {
                    let s = match sub[0].name.as_str() {
                        "columns" => {
                            let mut colf = Vec::new();
                            for (ck, cs) in self.b.sub(&sub, &format!("{tn}KanbanColumn")) {
                                let name = cs[0].name.to_string();
                                let s = match name.as_str() {
                                    "cards" => {
                                        Shape::List(Box::new(row(self.b, &cs, &tn, &mut cols)?))
                                    }
                                    "__typename" => {
                                        Shape::Const(json!(format!("{tn}KanbanColumn")))
                                    }
                                    _ => Shape::Same,
                                };
                                colf.push((ck, name, s));
                            }
                            (
                                sub[0].name.to_string(),
                                Shape::List(Box::new(Shape::Object(colf))),
                            )
                        }
                        "field" => ("field".to_string(), Shape::Same),
                        _ => (String::new(), Shape::Const(json!(format!("{tn}Kanban")))),
                    };
                    top.push((k, s.0, s.1));
                }
                Shape::Object(vec![("v".into(), String::new(), Shape::Object(top))])
            }
            ViewKind::Tree => {
                let mut node = Vec::new();
                for (k, sub) in self.b.sub_own(fs) {
                    let (from, s) = match sub[0].name.as_str() {
                        "node" => ("row", row(self.b, &sub, &tn, &mut cols)?),
                        "parentId" => ("parent", Shape::Same),
                        "__typename" => ("", Shape::Const(json!(format!("{tn}TreeNode")))),
                        other => (if other == "id" { "id" } else { "depth" }, Shape::Same),
                    };
                    node.push((k, from.to_string(), s));
                }
                Shape::Object(vec![(
                    "v".into(),
                    "nodes".into(),
                    Shape::List(Box::new(Shape::Object(node))),
                )])
            }
            ViewKind::Gantt => {
                let mut top = Vec::new();
                for (k, sub) in self.b.sub_own(fs) {
                    let s = match sub[0].name.as_str() {
                        "items" => {
                            let mut item = Vec::new();
                            for (ik, is) in self.b.sub(&sub, &format!("{tn}GanttItem")) {
                                let name = is[0].name.to_string();
                                let (from, s) = match name.as_str() {
                                    "node" => {
                                        ("row".to_string(), row(self.b, &is, &tn, &mut cols)?)
                                    }
                                    "__typename" => (
                                        String::new(),
                                        Shape::Const(json!(format!("{tn}GanttItem"))),
                                    ),
                                    _ => (name.clone(), Shape::Same),
                                };
                                item.push((ik, from, s));
                            }
                            (
                                "items".to_string(),
                                Shape::List(Box::new(Shape::Object(item))),
                            )
                        }
                        "groups" => ("groups".to_string(), Shape::Same),
                        _ => (String::new(), Shape::Const(json!(format!("{tn}Gantt")))),
                    };
                    top.push((k, s.0, s.1));
                }
                Shape::Object(vec![("v".into(), String::new(), Shape::Object(top))])
            }
        };
        if !cols.is_empty() {
            spec.insert("columns".into(), json!(cols));
        }
        // the field's value is the `v` of a wrapper object around the view's result
        Ok(match shape {
            Shape::Object(mut v) if v.len() == 1 && v[0].0 == "v" => {
                let (_, from, inner) = v.remove(0);
                if from.is_empty() {
                    inner
                } else {
                    Shape::Object(vec![]).pick(&from, inner)
                }
            }
            other => other,
        })
    }

    fn definition_change(&mut self, op: super::schema::SchemaOp, f: &Node<Field>) -> R<Plan> {
        let (_, function, args) = op.signature();
        let mut values = Vec::new();
        let mut casts = Vec::new();
        for (i, (name, _, sql_type)) in args.iter().enumerate() {
            let v = self.b.arg(f, name);
            let text = match (v, *sql_type) {
                (None, _) => None,
                (Some(v), "jsonb") => Some(Builder::slug_keys(&v, 0).to_string()),
                (Some(v), "text[]") => Some(
                    crate::values::to_text(&v, &PType::Array(Box::new(PType::Text)), name)
                        .map_err(|e| self.err(f, e))?,
                ),
                (Some(Value::String(s)), _) => Some(s),
                (Some(v), _) => Some(v.to_string()),
            };
            values.push(text);
            casts.push(format!("${}::{sql_type}", i + 1));
        }
        if op == super::schema::SchemaOp::AddIndex && values.get(2).is_some_and(Option::is_none) {
            values[2] = Some("false".into());
        }
        let sql = format!("SELECT {}({})", self.function(function), casts.join(", "));
        Ok((vec![run(sql, values, Planning::Cached)], Finish::Last))
    }

    fn subscription(&mut self, root: &RootField, fs: &[&Node<Field>]) -> R<SubscriptionPlan> {
        super::subscription::plan(self, root.entity.as_deref().unwrap_or_default(), fs)
    }
}

impl Shape {
    /// `{value of key from}` reshaped by `inner`: a wrapper that takes one key of the input.
    fn pick(self, from: &str, inner: Shape) -> Shape {
        Shape::Pick(from.to_string(), Box::new(inner))
    }
}

/// The GraphQL names of the system columns (for snapshots and events).
pub(crate) fn system_name(column: &str) -> Option<&'static str> {
    SYSTEM
        .iter()
        .find(|(_, c, _)| *c == column)
        .map(|(g, _, _)| *g)
}
