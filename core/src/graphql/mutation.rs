//! Mutations, each planned as statements the surface runs in one subtransaction (a failure
//! leaves nothing):
//!
//! * insert: ids assigned up front for every record of the nested tree, then one
//!   `records::insert_many_sql` statement per entity level (parents first, each batch checked
//!   by `records::check_batch` like `udm_insert_many`), then one read of the inserted records;
//! * upsert: `records::upsert_many_sql` on a unique key, then a read by the key values;
//! * update by id: `udm_update(entity, id, patch, expected_version)`, then a read;
//! * update / delete by filter: the matching ids (`LIMIT atMost + 1 FOR NO KEY UPDATE`), the
//!   `atMost` guard, the write, the read (before a delete);
//! * delete by id: an optional version check, the read, `udm_delete(entity, id)`.

use super::builder::{Sels, R};
use super::error::{GqlError, PathSeg};
use super::plan::{Arg, Count, Finish, MutationField, Op, Planning};
use super::prepare::Planner;
use super::schema::{FieldKind, RootKind};
use super::transpile::{columns, Sql};
use crate::ident::{qualified, quote_ident};
use crate::query::filter::where_clause;
use crate::query::{From, Params};
use crate::records::{self, Mode};
use apollo_compiler::executable::Field;
use apollo_compiler::Node;
use serde_json::{json, Map, Value};

/// One entity level of a nested insert: (entity, rows with ids and links filled in).
type Batch = (String, Vec<Value>);

pub(crate) fn plan(
    p: &mut Planner,
    kind: &RootKind,
    entity: &str,
    fs: &[&Node<Field>],
) -> R<(Vec<Op>, Finish)> {
    let f = fs[0];
    let b = p.b;
    let path = vec![PathSeg::Key(p.key.clone())];
    let err = |e: GqlError| b.err(f, &path, e);
    let (records_sels, fields) = returned(p, entity, fs)?;
    let mut ops = Vec::new();
    let finish = match kind {
        RootKind::Insert | RootKind::Upsert => {
            let objects = b
                .arg(f, "objects")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            if objects.is_empty() {
                return Err(err(GqlError::input("objects is empty")));
            }
            if objects.len() > p.ctx.limits.max_list_items {
                return Err(err(GqlError::limit(format!(
                    "{} objects; udm.graphql_max_list_items allows {}",
                    objects.len(),
                    p.ctx.limits.max_list_items
                ))));
            }
            let filter = if *kind == RootKind::Insert {
                let mut batches: Vec<Batch> = Vec::new();
                let mut ids = Vec::new();
                for o in &objects {
                    ids.push(flatten(p, entity, o, None, &mut batches, 0).map_err(err)?);
                }
                for (e, rows) in &batches {
                    ops.push(insert_batch(p, e, rows).map_err(err)?);
                }
                json!({"id": {"in": ids}})
            } else {
                let (op, filter) = upsert(p, entity, f, &objects).map_err(err)?;
                ops.push(op);
                filter
            };
            let read = records_sels
                .as_ref()
                .map(|s| read(p, entity, s, Some(filter), None, objects.len()))
                .transpose()
                .map_err(err)?;
            let records = read.map(|r| {
                ops.push(r);
                ops.len() - 1
            });
            Finish::Mutation {
                count: Count::Known(objects.len()),
                records,
                fields,
            }
        }
        RootKind::Update => {
            let id = b.arg(f, "id").and_then(|v| v.as_str().map(str::to_string));
            let set = patch(p, entity, b.arg(f, "set").unwrap_or(json!({})));
            let expected = b.arg(f, "expectedVersion").map(|v| v.to_string());
            let sql = format!(
                "SELECT {}($1::text, $2::uuid, $3::jsonb, $4::integer)",
                function(p, "udm_update")
            );
            ops.push(Op::Run {
                sql: sql.into(),
                args: vec![
                    Arg::Text(Some(entity.into())),
                    Arg::Text(id.clone()),
                    Arg::Text(Some(set.to_string())),
                    Arg::Text(expected),
                ],
                planning: Planning::Cached,
            });
            ops.push(read_one(p, entity, fs, id).map_err(err)?);
            Finish::Last
        }
        RootKind::Delete => {
            let id = b.arg(f, "id").and_then(|v| v.as_str().map(str::to_string));
            if let Some(expected) = b.arg(f, "expectedVersion").and_then(|v| v.as_i64()) {
                let def = p
                    .ctx
                    .model
                    .entity(entity)
                    .ok_or_else(|| err(GqlError::internal("no entity")))?;
                let sql = format!(
                    "SELECT to_jsonb(v.\"_version\") FROM ({}) v",
                    records::version_sql(p.ctx.model.schema(), def)
                );
                ops.push(Op::Run {
                    sql: sql.into(),
                    args: vec![Arg::Text(id.clone())],
                    planning: Planning::Cached,
                });
                ops.push(Op::Version { of: 0, expected });
            }
            ops.push(read_one(p, entity, fs, id.clone()).map_err(err)?);
            let record = ops.iter().filter(|o| matches!(o, Op::Run { .. })).count() - 1;
            let sql = format!("SELECT {}($1::text, $2::uuid)", function(p, "udm_delete"));
            ops.push(Op::Run {
                sql: sql.into(),
                args: vec![Arg::Text(Some(entity.into())), Arg::Text(id)],
                planning: Planning::Cached,
            });
            Finish::Step(record)
        }
        RootKind::UpdateMany | RootKind::DeleteMany => {
            let at_most = b.arg(f, "atMost").and_then(|v| v.as_i64()).unwrap_or(0);
            if at_most < 1 {
                return Err(err(GqlError::input("atMost must be at least 1")));
            }
            let filter = b.filter(entity, &b.arg(f, "filter").unwrap_or(json!({})), f, &path)?;
            ops.push(matching_ids(p, entity, &filter, at_most).map_err(err)?);
            ops.push(Op::AtMost { of: 0, n: at_most });
            let by_ids = json!({"id": {"in": []}});
            let read_op = records_sels
                .as_ref()
                .map(|s| read(p, entity, s, Some(by_ids), Some(0), at_most as usize))
                .transpose()
                .map_err(err)?;
            let mut records = None;
            let table = qualified(p.ctx.model.schema(), entity);
            if *kind == RootKind::UpdateMany {
                let set = b.arg(f, "set").unwrap_or(json!({}));
                ops.push(update_many(p, entity, &set).map_err(err)?);
                if let Some(r) = read_op {
                    ops.push(r);
                    records = Some(2);
                }
            } else {
                if let Some(r) = read_op {
                    ops.push(r);
                    records = Some(1);
                }
                let sql = format!("WITH d AS (DELETE FROM {table} t0 WHERE t0.\"id\" = ANY ($1::uuid[]) RETURNING 1) SELECT count(*) FROM d");
                ops.push(Op::Run {
                    sql: sql.into(),
                    args: vec![Arg::Ids(0)],
                    planning: Planning::Cached,
                });
            }
            Finish::Mutation {
                count: Count::IdsOf(0),
                records,
                fields,
            }
        }
        _ => return Err(err(GqlError::internal("not a mutation"))),
    };
    Ok((ops, finish))
}

fn function(p: &Planner, name: &str) -> String {
    format!(
        "{}.{}",
        quote_ident(p.ctx.functions_schema),
        quote_ident(name)
    )
}

/// The fields of a `PMutationResult` selection, and the record selection of `records`.
#[allow(clippy::type_complexity)]
fn returned(
    p: &Planner,
    entity: &str,
    fs: &[&Node<Field>],
) -> R<(Option<Sels>, Vec<(String, MutationField)>)> {
    let b = p.b;
    let ret = fs[0].definition.ty.inner_named_type().to_string();
    if !ret.ends_with("MutationResult") {
        return Ok((None, vec![]));
    }
    let mut sels = None;
    let mut fields = Vec::new();
    for (k, sub) in b.sub_own(fs) {
        let mf = match sub[0].name.as_str() {
            "affectedCount" => MutationField::AffectedCount,
            "records" => {
                sels = Some(b.node(
                    entity,
                    "",
                    &b.sub_own(&sub),
                    &[PathSeg::Key(p.key.clone()), PathSeg::Key(k.clone())],
                )?);
                MutationField::Records
            }
            _ => MutationField::Typename(ret.clone()),
        };
        fields.push((k, mf));
    }
    Ok((sels, fields))
}

/// A patch input (GraphQL names) as udm data (slugs).
fn patch(p: &Planner, entity: &str, v: Value) -> Value {
    let m: Map<String, Value> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let slug = p.slug_of_field(entity, k);
            let v = input_value(p, entity, &slug, v);
            (slug, v)
        })
        .collect();
    Value::Object(m)
}

/// An input value of a field as udm's checks take it: Decimal and BigInt given as strings (the
/// exact form beyond 2^53) become JSON numbers with the same digits.
fn input_value(p: &Planner, entity: &str, slug: &str, v: &Value) -> Value {
    use crate::types::FieldType;
    let numeric = p
        .ctx
        .model
        .entity(entity)
        .and_then(|d| d.field(slug))
        .is_some_and(|f| {
            matches!(
                f.ftype,
                FieldType::Decimal
                    | FieldType::Currency
                    | FieldType::Percent
                    | FieldType::BigInt
                    | FieldType::AutoNumber
            )
        });
    if numeric {
        super::builder::numbers(v)
    } else {
        v.clone()
    }
}

/// Flattens one insert object (and its nested parents and children) into per-entity batches,
/// parents before children; returns the record's id.
fn flatten(
    p: &mut Planner,
    entity: &str,
    o: &Value,
    link: Option<(String, String)>,
    batches: &mut Vec<Batch>,
    depth: usize,
) -> Result<String, GqlError> {
    if depth > p.ctx.limits.max_depth {
        return Err(GqlError::limit(
            "nested inserts nest deeper than udm.graphql_max_depth",
        ));
    }
    let info = p.b.info(entity)?;
    let id = o
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| (p.ctx.new_id)());
    let mut row = Map::new();
    row.insert("id".into(), json!(id));
    if let Some((field, parent)) = link {
        row.insert(field, json!(parent));
    }
    let mut children = Vec::new();
    for (k, v) in o.as_object().into_iter().flatten() {
        match info.fields.get(k) {
            Some(FieldKind::ToOne { field, target }) => {
                let target = target.clone();
                let pid = flatten(p, &target, v, None, batches, depth + 1)?;
                row.insert(field.clone(), json!(pid));
            }
            Some(FieldKind::Reverse { source, field }) => {
                children.push((source.clone(), field.clone(), v.clone()))
            }
            Some(kind) if k != "id" => {
                let slug = kind.slug().to_string();
                let v = input_value(p, entity, &slug, v);
                row.insert(slug, v);
            }
            _ => {}
        }
    }
    match batches
        .iter_mut()
        .find(|(e, rows)| e == entity && same_keys(&rows[0], &row))
    {
        Some((_, rows)) => rows.push(Value::Object(row)),
        None => batches.push((entity.to_string(), vec![Value::Object(row)])),
    }
    for (source, field, items) in children {
        for item in items.as_array().into_iter().flatten() {
            flatten(
                p,
                &source,
                item,
                Some((field.clone(), id.clone())),
                batches,
                depth + 1,
            )?;
        }
    }
    Ok(id)
}

fn same_keys(a: &Value, b: &Map<String, Value>) -> bool {
    a.as_object()
        .is_some_and(|a| a.len() == b.len() && a.keys().all(|k| b.contains_key(k)))
}

/// One batch insert, checked like `udm_insert_many`.
fn insert_batch(p: &Planner, entity: &str, rows: &[Value]) -> Result<Op, GqlError> {
    let def = p
        .ctx
        .model
        .entity(entity)
        .ok_or_else(|| GqlError::internal("no entity"))?;
    let rows = Value::Array(rows.to_vec());
    let batch = records::check_batch(def, &rows)?;
    let sql = records::insert_many_sql(p.ctx.model.schema(), def, &batch, false);
    Ok(Op::Run {
        sql: sql.into(),
        args: vec![Arg::Text(Some(rows.to_string()))],
        planning: Planning::Cached,
    })
}

/// An upsert on a unique key, and the filter that reads the written records back.
fn upsert(
    p: &Planner,
    entity: &str,
    f: &Node<Field>,
    objects: &[Value],
) -> Result<(Op, Value), GqlError> {
    let def = p
        .ctx
        .model
        .entity(entity)
        .ok_or_else(|| GqlError::internal("no entity"))?;
    let info = p.b.info(entity)?;
    let key_name =
        p.b.arg(f, "onConflict")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
    let key = info
        .unique_keys
        .get(&key_name)
        .cloned()
        .ok_or_else(|| GqlError::input(format!("no unique key {key_name}")))?;
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| patch(p, entity, o.clone()))
        .collect();
    let rows = Value::Array(rows);
    let cols = records::check_upsert_key(def, &key)?;
    records::check_unique_keys(&rows, &key)?;
    let batch = records::check_batch(def, &rows)?;
    let sql = records::upsert_many_sql(p.ctx.model.schema(), def, &batch, &cols, false);
    let any: Vec<Value> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| json!({"and": key.iter().map(|k| json!({ k.as_str(): r.get(k).cloned().unwrap_or(Value::Null) })).collect::<Vec<_>>()}))
        .collect();
    // the upsert returns two counts; the surface takes the first column
    Ok((
        Op::Run {
            sql: sql.into(),
            args: vec![Arg::Text(Some(rows.to_string()))],
            planning: Planning::Cached,
        },
        json!({"or": any}),
    ))
}

/// The ids of the records matching a filter, locked, at most `at_most + 1` of them.
fn matching_ids(p: &Planner, entity: &str, filter: &Value, at_most: i64) -> Result<Op, GqlError> {
    let mut from = From::new(p.ctx.model, entity);
    let mut params = Params::default();
    let mut spec = Map::new();
    spec.insert("filters".into(), filter.clone());
    let (cond, _) = where_clause(&mut from, &mut params, entity, &spec)?;
    let t = crate::query::Template {
        sql: String::new(),
        params: params.0,
        computed: vec![],
        plan_per_call: false,
        rows: None,
    };
    let mut values = crate::query::bind(&Value::Object(spec), &t)?;
    values.push(Some((at_most + 1).to_string()));
    let n = values.len();
    let sql = format!(
        "SELECT coalesce(jsonb_agg(s.\"id\"), '[]'::jsonb) FROM (SELECT t0.\"id\" FROM {}{} ORDER BY t0.\"id\" LIMIT ${n}::bigint FOR NO KEY UPDATE OF t0) s",
        from.sql(None),
        cond.map(|c| format!(" WHERE {c}")).unwrap_or_default()
    );
    Ok(Op::Run {
        sql: sql.into(),
        args: values.into_iter().map(Arg::Text).collect(),
        planning: Planning::PerCall,
    })
}

/// `UPDATE … SET … WHERE id = ANY(ids of step 0)`, the values checked like `udm_update`'s.
fn update_many(p: &Planner, entity: &str, set: &Value) -> Result<Op, GqlError> {
    let def = p
        .ctx
        .model
        .entity(entity)
        .ok_or_else(|| GqlError::internal("no entity"))?;
    let w = records::write_of(def, &patch(p, entity, set.clone()), Mode::Update)?;
    if !w.links.is_empty() {
        return Err(GqlError::input(
            "many-to-many links are set one record at a time (update<Entity>)",
        ));
    }
    if w.cols.is_empty() {
        return Err(GqlError::input("set changes nothing"));
    }
    let mut args = vec![Arg::Ids(0)];
    let mut sets = Vec::new();
    for c in &w.cols {
        args.push(Arg::Text(c.value.clone()));
        sets.push(format!(
            "{} = ${}::{}",
            quote_ident(&c.column),
            args.len(),
            c.ptype.sql()
        ));
    }
    let sql = format!(
        "WITH u AS (UPDATE {} AS t0 SET {} WHERE t0.\"id\" = ANY ($1::uuid[]) RETURNING 1) SELECT count(*) FROM u",
        qualified(p.ctx.model.schema(), entity),
        sets.join(", ")
    );
    Ok(Op::Run {
        sql: sql.into(),
        args,
        planning: Planning::Cached,
    })
}

/// Reads records written by a mutation: by a filter, or by the ids step `ids_of` returned.
fn read(
    p: &Planner,
    entity: &str,
    sels: &Sels,
    filter: Option<Value>,
    ids_of: Option<usize>,
    max: usize,
) -> Result<Op, GqlError> {
    let mut sql = Sql::new(p.ctx.model);
    let mut spec = Map::new();
    spec.insert("columns".into(), json!(columns(sels)));
    spec.insert(
        "limit".into(),
        json!(max.clamp(1, crate::query::MAX_LIMIT as usize)),
    );
    let link = match (filter, ids_of) {
        (_, Some(_)) => Some("t0.\"id\" = ANY ($1::uuid[])".to_string()),
        (Some(f), None) => {
            spec.insert("filters".into(), f);
            None
        }
        _ => None,
    };
    if ids_of.is_some() {
        // $1 is the ids; the page's own parameters follow
        sql.value(
            None,
            crate::values::PType::Array(Box::new(crate::values::PType::Uuid)),
            "ids",
        );
    }
    let page = sql.page(
        entity,
        &spec,
        &crate::query::select::PageOptions {
            link,
            ..Default::default()
        },
    )?;
    let row = sql.alias("p");
    let obj = sql.node(sels, &row, &page.columns)?;
    let stmt = format!(
        "SELECT coalesce(jsonb_agg({obj}), '[]'::jsonb) FROM ({}) {row}",
        page.sql
    );
    let mut args: Vec<Arg> = sql.values.into_iter().map(Arg::Text).collect();
    if let Some(i) = ids_of {
        args[0] = Arg::Ids(i);
    }
    Ok(Op::Run {
        sql: stmt.into(),
        args,
        planning: Planning::Cached,
    })
}

/// Reads one record by id for a mutation returning the record.
fn read_one(
    p: &Planner,
    entity: &str,
    fs: &[&Node<Field>],
    id: Option<String>,
) -> Result<Op, GqlError> {
    let sels =
        p.b.node(entity, "", &p.b.sub_own(fs), &[PathSeg::Key(p.key.clone())])?;
    let mut sql = Sql::new(p.ctx.model);
    let e = sql.record(entity, &sels, None, Some(json!({"id": {"eq": id}})))?;
    Ok(Op::Run {
        sql: format!("SELECT {e}").into(),
        args: sql.values.into_iter().map(Arg::Text).collect(),
        planning: Planning::Cached,
    })
}
