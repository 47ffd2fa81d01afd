//! `udm_view`: the view-shaped queries a UI needs — table, kanban, tree, gantt, dropdown,
//! breadcrumb — each compiled to one statement.

use super::filter::where_clause;
use super::path::{Leaf, Model};
use super::select::{page, page_count, page_template, CountMode, QUERY_KEYS};
use super::*;
use crate::definition::EntityDef;
use crate::types::FieldType;
use serde_json::{json, Value};

pub const KINDS: &[&str] = &["table", "kanban", "tree", "gantt", "dropdown", "breadcrumb"];
pub const MAX_TREE_DEPTH: i64 = 20;
pub const MAX_TREE_NODES: i64 = 10_000;

pub fn compile(model: &dyn Model, entity: &str, kind: &str, spec: &Value) -> Result<Template> {
    let obj = spec_object(spec, &format!("{kind} view spec"))?;
    match kind {
        "table" => table(model, entity, obj),
        "kanban" => kanban(model, entity, obj),
        "tree" => tree(model, entity, obj),
        "gantt" => gantt(model, entity, obj),
        "dropdown" => dropdown(model, entity, obj),
        "breadcrumb" => breadcrumb(model, entity, obj),
        other => Err(
            UdmError::invalid(format!("view kind \"{}\" is not known", printable(other)))
                .hint(format!("views are {}", known(KINDS))),
        ),
    }
}

fn table(model: &dyn Model, entity: &str, obj: &Map<String, Value>) -> Result<Template> {
    expect_keys(
        obj,
        &QUERY_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "count")
            .collect::<Vec<_>>(),
        "table view spec",
    )?;
    let mut params = Params::default();
    let p = page(model, entity, obj, &mut params)?;
    let (count, computed) = page_count(&p, CountMode::Exact);
    Ok(page_template(p, params, count, computed, "total"))
}

fn field_of<'a>(
    model: &'a dyn Model,
    entity: &str,
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<&'a crate::definition::FieldDef>> {
    let Some(v) = obj.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let name = crate::json::expect_str(v, &format!("\"{key}\""))?;
    let e = model.entity(entity).expect("checked");
    e.field(name).map(Some).ok_or_else(|| e.no_such_field(name))
}

fn limit_param(obj: &Map<String, Value>, key: &str, default: i64) -> Result<String> {
    limit_literal(obj, key, MAX_LIMIT, default)
}

fn kanban(model: &dyn Model, entity: &str, obj: &Map<String, Value>) -> Result<Template> {
    expect_keys(
        obj,
        &["field", "columns", "filters", "sort", "limit"],
        "kanban view spec",
    )?;
    let e = model.entity(entity).expect("checked");
    let field = match field_of(model, entity, obj, "field")? {
        Some(f) => f,
        None => e
            .fields
            .iter()
            .find(|f| f.ftype == FieldType::Select)
            .ok_or_else(|| {
                UdmError::invalid(format!(
                    "entity \"{entity}\" has no select field for a kanban"
                ))
                .hint("name one with \"field\"")
            })?,
    };
    if field.ftype != FieldType::Select {
        return Err(UdmError::new(
            SqlState::DatatypeMismatch,
            format!(
                "kanban field \"{}\" is a {}, not a select",
                field.name,
                field.ftype.name()
            ),
        )
        .hint("a kanban groups by a select field, in the order of its values"));
    }
    let mut params = Params::default();
    let mut from = From::new(model, entity);
    let columns = columns_of(model, entity, obj)?;
    let row = row_object(&mut from, entity, &columns)?;
    let (filter, used) = where_clause(&mut from, &mut params, entity, obj)?;
    let keys = sort_keys(&mut from, entity, obj.get("sort"))?;
    let limit = limit_param(obj, "limit", 20)?;
    let col = format!("t0.{}", quote_ident(&field.column));
    let filt = filter.map(|f| format!(" AND {f}")).unwrap_or_default();
    let values: Vec<String> = field.values.iter().map(|v| quote_literal(v)).collect();
    let cards = format!(
        "(SELECT coalesce(jsonb_agg(c.r), '[]'::jsonb) FROM (SELECT {row} AS r FROM {} WHERE {col} = v.value{filt} ORDER BY {} LIMIT {limit}) c)",
        from.sql(None),
        order_by(&keys, true)
    );
    let count = format!(
        "(SELECT count(*) FROM {} WHERE {col} = v.value{filt})",
        from.sql(Some(&used))
    );
    let sql = format!(
        "SELECT jsonb_build_object('field', {}, 'columns', coalesce(jsonb_agg(jsonb_build_object('value', v.value, 'count', {count}, 'cards', {cards}) ORDER BY v.ord), '[]'::jsonb)) \
         FROM unnest(ARRAY[{}]::text[]) WITH ORDINALITY AS v(value, ord)",
        quote_literal(&field.name),
        values.join(", ")
    );
    Ok(Template {
        sql,
        params: params.0,
        computed: vec![],
        plan_per_call: true,
        rows: None,
    })
}

fn self_relation<'a>(
    e: &'a EntityDef,
    named: Option<&'a crate::definition::FieldDef>,
    what: &str,
) -> Result<&'a crate::definition::FieldDef> {
    let f = match named {
        Some(f) => f,
        None => e
            .fields
            .iter()
            .find(|f| f.is_many_to_one() && f.target.as_deref() == Some(&e.slug))
            .ok_or_else(|| {
                UdmError::invalid(format!("entity \"{}\" has no relation to itself for a {what}", e.slug))
                    .hint("add one, e.g. {\"name\": \"parent_id\", \"type\": \"relation\", \"target\": \"<entity>\"}")
            })?,
    };
    if !(f.is_many_to_one() && f.target.as_deref() == Some(&e.slug)) {
        return Err(UdmError::new(
            SqlState::DatatypeMismatch,
            format!(
                "\"{}\" is not a relation of \"{}\" to itself",
                f.name, e.slug
            ),
        ));
    }
    Ok(f)
}

fn tree(model: &dyn Model, entity: &str, obj: &Map<String, Value>) -> Result<Template> {
    expect_keys(
        obj,
        &[
            "parent", "columns", "root", "depth", "filters", "sort", "limit",
        ],
        "tree view spec",
    )?;
    let e = model.entity(entity).expect("checked");
    let parent = self_relation(e, field_of(model, entity, obj, "parent")?, "tree")?;
    let pcol = quote_ident(&parent.column);
    let mut params = Params::default();
    let mut from = From::new(model, entity);
    let columns = columns_of(model, entity, obj)?;
    let row = row_object(&mut from, entity, &columns)?;
    let (filter, _) = where_clause(&mut from, &mut params, entity, obj)?;
    let keys = sort_keys(&mut from, entity, obj.get("sort"))?;
    let root_cond = match obj.get("root") {
        Some(v) if !v.is_null() => format!(
            "t0.{pcol} = {}",
            params.add(spec_param(
                &[Ptr::Key("root".into())],
                PType::Uuid,
                Conv::Value,
                "\"root\""
            ))
        ),
        _ => format!("t0.{pcol} IS NULL"),
    };
    let depth = match obj.get("depth") {
        Some(v) if !v.is_null() => {
            let d = v
                .as_i64()
                .filter(|d| (1..=MAX_TREE_DEPTH).contains(d))
                .ok_or_else(|| {
                    UdmError::invalid(format!(
                        "\"depth\" must be a whole number from 1 to {MAX_TREE_DEPTH}, got {v}"
                    ))
                })?;
            d.to_string()
        }
        _ => "5".into(),
    };
    let limit = limit_param(obj, "limit", MAX_TREE_NODES)?;
    let table = from.table(entity);
    let anchor_filter = filter.map(|f| format!(" AND {f}")).unwrap_or_default();
    let anchor_from = from.sql(None);
    let sql = format!(
        "WITH RECURSIVE tree(id, parent, depth, path) AS (\
           SELECT t0.\"id\", t0.{pcol}, 1, ARRAY[t0.\"id\"] FROM {anchor_from} WHERE {root_cond}{anchor_filter} \
           UNION ALL \
           SELECT c.\"id\", c.{pcol}, tree.depth + 1, tree.path || c.\"id\" FROM {table} c JOIN tree ON c.{pcol} = tree.id \
           WHERE tree.depth < {depth} AND NOT c.\"id\" = ANY (tree.path)) \
         SELECT jsonb_build_object('nodes', coalesce(jsonb_agg(jsonb_build_object('id', x.id, 'parent', x.parent, 'depth', x.depth, 'row', x.r) ORDER BY x.depth, x.o), '[]'::jsonb)) \
         FROM (SELECT tree.id, tree.parent, tree.depth, {row} AS r, row_number() OVER (ORDER BY {}) AS o \
               FROM tree JOIN {} ON t0.\"id\" = tree.id LIMIT {limit}) x",
        order_by(&keys, true),
        from.nested_sql(),
    );
    Ok(Template {
        sql,
        params: params.0,
        computed: vec![],
        plan_per_call: false,
        rows: None,
    })
}

/// Nests the flat node list of a tree view: `{"nodes": [{id, parent, depth, row}]}` becomes
/// `{"nodes": [{...row, "id", "children": [...]}]}`, roots first.
pub fn nest_tree(flat: &Value) -> Value {
    let nodes = flat
        .get("nodes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ids: std::collections::HashSet<String> = nodes
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    let mut children: std::collections::HashMap<String, Vec<Value>> =
        std::collections::HashMap::new();
    let mut roots = Vec::new();
    for n in nodes.iter().rev() {
        let id = n["id"].as_str().unwrap_or_default().to_string();
        let mut node = match n.get("row") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        node.insert("id".into(), json!(id));
        node.insert(
            "children".into(),
            Value::Array(
                children
                    .remove(&id)
                    .map(|mut c| {
                        c.reverse();
                        c
                    })
                    .unwrap_or_default(),
            ),
        );
        let node = Value::Object(node);
        match n["parent"].as_str() {
            Some(p) if ids.contains(p) && n["depth"].as_i64().unwrap_or(1) > 1 => {
                children.entry(p.to_string()).or_default().push(node)
            }
            _ => roots.push(node),
        }
    }
    roots.reverse();
    json!({"nodes": roots})
}

fn date_path(
    model: &dyn Model,
    entity: &str,
    obj: &Map<String, Value>,
    key: &str,
    from: &mut From,
) -> Result<String> {
    let path = crate::json::expect_str(
        obj.get(key).ok_or_else(|| {
            UdmError::invalid(format!("a gantt view needs \"{key}\", a date field"))
        })?,
        &format!("\"{key}\""),
    )?;
    let r = resolve(model, entity, path)?;
    match &r.leaf {
        Leaf::Column {
            ptype: PType::Date | PType::Timestamp,
            ..
        } if r.to_many.is_none() => {
            let a = from.alias_for(&r)?;
            Ok(leaf_json(&a, &r.leaf))
        }
        _ => Err(UdmError::new(
            SqlState::DatatypeMismatch,
            format!("gantt \"{key}\": \"{path}\" is not a date or datetime field"),
        )),
    }
}

fn gantt(model: &dyn Model, entity: &str, obj: &Map<String, Value>) -> Result<Template> {
    expect_keys(
        obj,
        &[
            "start",
            "end",
            "label",
            "group_by",
            "dependencies",
            "columns",
            "filters",
            "sort",
            "limit",
        ],
        "gantt view spec",
    )?;
    let mut params = Params::default();
    let mut from = From::new(model, entity);
    let start = date_path(model, entity, obj, "start", &mut from)?;
    let end = date_path(model, entity, obj, "end", &mut from)?;
    let label_path = match obj.get("label") {
        Some(v) => crate::json::expect_str(v, "\"label\"")?.to_string(),
        None => default_label(model.entity(entity).expect("checked")),
    };
    let lr = resolve(model, entity, &label_path)?;
    let la = from.alias_for(&lr)?;
    let label = leaf_text(&la, &lr.leaf);
    let group = match obj.get("group_by").filter(|v| !v.is_null()) {
        Some(v) => {
            let p = crate::json::expect_str(v, "\"group_by\"")?;
            let r = resolve(model, entity, p)?;
            if r.to_many.is_some() {
                return Err(UdmError::invalid(format!(
                    "gantt \"group_by\": \"{p}\" leads to several records"
                )));
            }
            let a = from.alias_for(&r)?;
            leaf_json(&a, &r.leaf)
        }
        None => "NULL::jsonb".into(),
    };
    let deps = match obj.get("dependencies").filter(|v| !v.is_null()) {
        Some(v) => {
            let p = crate::json::expect_str(v, "\"dependencies\"")?;
            let r = resolve(model, entity, p)?;
            match (&r.to_many, &r.leaf) {
                (Some(_), _) => {
                    let a = from.alias_for(&r)?;
                    to_many_array(&mut from, &a, &r)?
                }
                (
                    None,
                    Leaf::Column {
                        ptype: PType::Uuid, ..
                    },
                ) => {
                    let a = from.alias_for(&r)?;
                    let e = leaf_json(&a, &r.leaf);
                    format!(
                        "(CASE WHEN {e} IS NULL THEN '[]'::jsonb ELSE jsonb_build_array({e}) END)"
                    )
                }
                _ => {
                    return Err(UdmError::new(
                        SqlState::DatatypeMismatch,
                        format!("gantt \"dependencies\": \"{p}\" is not a relation"),
                    ))
                }
            }
        }
        None => "'[]'::jsonb".into(),
    };
    let extra = match obj.get("columns") {
        Some(_) => row_object(&mut from, entity, &columns_of(model, entity, obj)?)?,
        None => "'{}'::jsonb".into(),
    };
    let (filter, _) = where_clause(&mut from, &mut params, entity, obj)?;
    let mut keys = sort_keys(&mut from, entity, obj.get("sort"))?;
    if keys.is_empty() {
        keys.push(SortKey {
            path: "start".into(),
            expr: start.clone(),
            ptype: PType::Date,
            desc: false,
            nulls_first: false,
            not_null: false,
        });
    }
    let limit = limit_param(obj, "limit", MAX_LIMIT)?;
    let row = json_object(&[
        ("id".into(), "t0.\"id\"".into()),
        ("label".into(), label),
        ("start".into(), start),
        ("end".into(), end),
        ("group".into(), group.clone()),
        ("dependencies".into(), deps),
        ("row".into(), extra),
    ]);
    let sql = format!(
        "SELECT jsonb_build_object('items', coalesce(jsonb_agg(q.r), '[]'::jsonb), 'groups', coalesce(jsonb_agg(DISTINCT q.g) FILTER (WHERE q.g IS NOT NULL), '[]'::jsonb)) \
         FROM (SELECT {row} AS r, to_jsonb({group}) AS g FROM {}{} ORDER BY {} LIMIT {limit}) q",
        from.sql(None),
        filter.map(|f| format!(" WHERE {f}")).unwrap_or_default(),
        order_by(&keys, true)
    );
    Ok(Template {
        sql,
        params: params.0,
        computed: vec![],
        plan_per_call: false,
        rows: None,
    })
}

fn default_label(e: &EntityDef) -> String {
    e.fields
        .iter()
        .find(|f| matches!(f.ftype, FieldType::Text | FieldType::Email))
        .map(|f| f.name.clone())
        .unwrap_or_else(|| "id".into())
}

fn dropdown(model: &dyn Model, entity: &str, obj: &Map<String, Value>) -> Result<Template> {
    expect_keys(
        obj,
        &["label", "search", "filters", "limit"],
        "dropdown view spec",
    )?;
    let e = model.entity(entity).expect("checked");
    let label_path = match obj.get("label") {
        Some(v) => crate::json::expect_str(v, "\"label\"")?.to_string(),
        None => default_label(e),
    };
    let mut params = Params::default();
    let mut from = From::new(model, entity);
    let r = resolve(model, entity, &label_path)?;
    if r.to_many.is_some() {
        return Err(UdmError::invalid(format!(
            "dropdown \"label\": \"{label_path}\" leads to several records"
        )));
    }
    let a = from.alias_for(&r)?;
    let label = match &r.leaf {
        Leaf::Column {
            ptype: PType::Text, ..
        } => leaf_json(&a, &r.leaf),
        _ => format!("({})::text", leaf_text(&a, &r.leaf)),
    };
    let (filter, _) = where_clause(&mut from, &mut params, entity, obj)?;
    let mut conds: Vec<String> = filter.into_iter().collect();
    let mut order = Vec::new();
    if obj.get("search").is_some_and(|s| !s.is_null()) {
        let ptr = [Ptr::Key("search".into())];
        let contains = params.add(spec_param(&ptr, PType::Text, Conv::Contains, "\"search\""));
        let prefix = params.add(spec_param(&ptr, PType::Text, Conv::Prefix, "\"search\""));
        let exact = params.add(spec_param(&ptr, PType::Text, Conv::Value, "\"search\""));
        conds.push(format!("{label} ILIKE {contains}"));
        order.push(format!("(lower({label}) = lower({exact})) DESC"));
        order.push(format!("({label} ILIKE {prefix}) DESC"));
        order.push(format!("position(lower({exact}) in lower({label}))"));
    }
    order.push(format!("{label} ASC"));
    order.push("t0.\"id\" ASC".into());
    let limit = limit_param(obj, "limit", 20)?;
    let sql = format!(
        "SELECT jsonb_build_object('items', coalesce(jsonb_agg(q.r), '[]'::jsonb)) FROM (SELECT jsonb_build_object('id', t0.\"id\", 'label', {label}) AS r FROM {}{} ORDER BY {} LIMIT {limit}) q",
        from.sql(None),
        if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) },
        order.join(", ")
    );
    Ok(Template {
        sql,
        params: params.0,
        computed: vec![],
        plan_per_call: false,
        rows: None,
    })
}

fn breadcrumb(model: &dyn Model, entity: &str, obj: &Map<String, Value>) -> Result<Template> {
    expect_keys(obj, &["id", "parent", "label"], "breadcrumb view spec")?;
    let e = model.entity(entity).expect("checked");
    let parent = self_relation(e, field_of(model, entity, obj, "parent")?, "breadcrumb")?;
    let pcol = quote_ident(&parent.column);
    if obj.get("id").is_none_or(Value::is_null) {
        return Err(UdmError::invalid(
            "a breadcrumb needs \"id\", the record whose ancestors to list",
        ));
    }
    let label_path = match obj.get("label") {
        Some(v) => crate::json::expect_str(v, "\"label\"")?.to_string(),
        None => default_label(e),
    };
    let mut params = Params::default();
    let mut from = From::new(model, entity);
    let r = resolve(model, entity, &label_path)?;
    let a = from.alias_for(&r)?;
    let label = leaf_json(&a, &r.leaf);
    let id = params.add(spec_param(
        &[Ptr::Key("id".into())],
        PType::Uuid,
        Conv::Value,
        "\"id\"",
    ));
    let table = from.table(entity);
    let sql = format!(
        "WITH RECURSIVE up(id, parent, depth, path) AS (\
           SELECT b.\"id\", b.{pcol}, 0, ARRAY[b.\"id\"] FROM {table} b WHERE b.\"id\" = {id} \
           UNION ALL \
           SELECT p.\"id\", p.{pcol}, up.depth + 1, up.path || p.\"id\" FROM {table} p JOIN up ON p.\"id\" = up.parent \
           WHERE up.depth < 100 AND NOT p.\"id\" = ANY (up.path)) \
         SELECT jsonb_build_object('items', coalesce(jsonb_agg(jsonb_build_object('id', up.id, 'label', {label}) ORDER BY up.depth DESC), '[]'::jsonb)) \
         FROM up JOIN {} ON t0.\"id\" = up.id",
        from.nested_sql()
    );
    Ok(Template {
        sql,
        params: params.0,
        computed: vec![],
        plan_per_call: false,
        rows: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::path::tests::shop;
    use super::*;

    #[test]
    fn kanban_in_value_order() {
        let t = compile(
            &shop(),
            "product",
            "kanban",
            &json!({"field": "status", "columns": ["name"], "limit": 20}),
        )
        .unwrap();
        assert!(
            t.sql
                .contains("unnest(ARRAY['draft', 'active', 'retired']::text[]) WITH ORDINALITY"),
            "{}",
            t.sql
        );
        assert!(t.sql.contains("ORDER BY v.ord"));
        let e = compile(&shop(), "product", "kanban", &json!({"field": "name"})).unwrap_err();
        assert!(e.message.contains("is a text, not a select"));
    }

    #[test]
    fn tree_and_breadcrumb_need_a_self_relation() {
        let t = compile(
            &shop(),
            "category",
            "tree",
            &json!({"columns": ["name"], "depth": 3}),
        )
        .unwrap();
        assert!(t.sql.contains("WITH RECURSIVE tree"), "{}", t.sql);
        assert!(t.sql.contains("tree.depth < 3"));
        let e = compile(&shop(), "product", "tree", &json!({})).unwrap_err();
        assert!(e.message.contains("no relation to itself"));
        let b = compile(
            &shop(),
            "category",
            "breadcrumb",
            &json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
        )
        .unwrap();
        assert!(b.sql.contains("ORDER BY up.depth DESC"), "{}", b.sql);
        assert!(compile(&shop(), "category", "breadcrumb", &json!({})).is_err());
    }

    #[test]
    fn dropdown_ranks_exact_then_prefix() {
        let t = compile(
            &shop(),
            "product",
            "dropdown",
            &json!({"label": "name", "search": "pho", "limit": 5}),
        )
        .unwrap();
        assert!(
            t.sql.contains(
                "(lower(t0.\"name\") = lower($3::text)) DESC, (t0.\"name\" ILIKE $2::text) DESC"
            ),
            "{}",
            t.sql
        );
        let vals = bind(&json!({"search": "5%", "limit": 5}), &t).unwrap();
        assert_eq!(vals[0].as_deref(), Some("%5\\%%"));
    }

    #[test]
    fn gantt_needs_dates() {
        let t = compile(&shop(), "product", "gantt", &json!({"start": "released", "end": "released", "group_by": "category_id.name", "dependencies": "tags"})).unwrap();
        assert!(t.sql.contains("'groups'"), "{}", t.sql);
        let e = compile(
            &shop(),
            "product",
            "gantt",
            &json!({"start": "name", "end": "released"}),
        )
        .unwrap_err();
        assert!(e.message.contains("is not a date"));
    }

    #[test]
    fn tree_joins_parenthesise_only_join_trees() {
        let t = compile(&shop(), "category", "tree", &json!({"columns": ["name"]})).unwrap();
        assert!(
            t.sql
                .contains("FROM tree JOIN \"acme\".\"category\" t0 ON t0.\"id\" = tree.id"),
            "{}",
            t.sql
        );
        let t = compile(
            &shop(),
            "category",
            "tree",
            &json!({"columns": ["parent_id.name"]}),
        )
        .unwrap();
        assert!(
            t.sql
                .contains("FROM tree JOIN (\"acme\".\"category\" t0 LEFT JOIN"),
            "{}",
            t.sql
        );
    }

    #[test]
    fn nests_trees() {
        let flat = json!({"nodes": [
            {"id": "a", "parent": null, "depth": 1, "row": {"name": "A"}},
            {"id": "b", "parent": "a", "depth": 2, "row": {"name": "B"}},
            {"id": "c", "parent": "b", "depth": 3, "row": {"name": "C"}},
            {"id": "d", "parent": "a", "depth": 2, "row": {"name": "D"}}]});
        let n = nest_tree(&flat);
        assert_eq!(n["nodes"][0]["name"], "A");
        assert_eq!(n["nodes"][0]["children"][0]["name"], "B");
        assert_eq!(n["nodes"][0]["children"][0]["children"][0]["name"], "C");
        assert_eq!(n["nodes"][0]["children"][1]["name"], "D");
    }

    #[test]
    fn unknown_kind() {
        let e = compile(&shop(), "product", "calendar", &json!({})).unwrap_err();
        assert!(e.hint.unwrap().contains("\"kanban\""));
    }
}
