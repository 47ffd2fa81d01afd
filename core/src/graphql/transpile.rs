//! Selections → one SQL statement per root field, composed from udm's page compiler
//! (`query::select::page_with`). Every level is a page of udm's SQL (columns `c*`, cursor keys
//! `k*`) as a derived table; a connection is one scalar sub-select building its jsonb:
//!
//! ```sql
//! (SELECT jsonb_build_object('nodes', coalesce(jsonb_agg(x1.__v0 ORDER BY x1.__n)
//!                                        FILTER (WHERE x1.__n <= 10), '[]'::jsonb),
//!                            'pageInfo', jsonb_build_object('hasNextPage', count(*) > 10),
//!                            'totalCount', (SELECT count(*)::int FROM … WHERE <filter> AND <link>))
//!  FROM (SELECT jsonb_build_object('name', p1.c1, 'newest', (<nested connection>)) AS __v0,
//!               row_number() OVER (ORDER BY p1.k0 DESC NULLS FIRST, p1.k1 ASC NULLS LAST) AS __n
//!        FROM (<udm page … WHERE t0."category_id" = p0.c0 … LIMIT 11>) p1) x1)
//! ```
//!
//! Nested connections are correlated sub-selects of the parent's row (`p0.c0`), so a page of 50
//! categories with their 10 newest products is one statement; a selected `totalCount` is a
//! count sub-select (an InitPlan at the root); `limit + 1` rows tell `hasNextPage`. Values are
//! bind parameters, numbered in one [`Params`] for the whole statement and bound as each level
//! is compiled; identifiers are quoted by udm's compiler.

use super::builder::{Conn, ConnSel, EdgeSel, Link, PageField, RefPart, Sel, Sels};
use super::error::GqlError;
use super::plan::{PointRead, RowPart, RowsShape, Wrap};
use super::schema::Out;
use crate::ident::{quote_ident, quote_literal, SYSTEM_COLUMNS};
use crate::query::path::Model;
use crate::query::select::{page_with, Page, PageOptions};
use crate::query::{bind, json_object, Conv, ParamSpec, Params, Source, Template};
use crate::types::FieldType;
use crate::values::PType;
use serde_json::{json, Map, Value};

/// A statement being compiled: its parameters and their values.
pub(crate) struct Sql<'m> {
    pub model: &'m dyn Model,
    pub params: Params,
    pub values: Vec<Option<String>>,
    aliases: usize,
}

impl<'m> Sql<'m> {
    pub fn new(model: &'m dyn Model) -> Self {
        Sql {
            model,
            params: Params::default(),
            values: Vec::new(),
            aliases: 0,
        }
    }

    /// A parameter with its value (text as PostgreSQL reads the type; None is NULL).
    pub fn value(&mut self, v: Option<String>, ptype: PType, what: &str) -> String {
        self.values.push(v);
        self.params.add(ParamSpec {
            source: Source::Spec(vec![]),
            ptype,
            conv: Conv::Value,
            what: what.into(),
        })
    }

    /// A text parameter.
    pub fn text(&mut self, v: &str, what: &str) -> String {
        self.value(Some(v.to_string()), PType::Text, what)
    }

    /// A unique alias.
    pub fn alias(&mut self, base: &str) -> String {
        self.aliases += 1;
        format!("{base}{}", self.aliases)
    }

    pub fn table(&self, entity: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(self.model.schema()),
            quote_ident(entity)
        )
    }

    /// A page of udm's compiler, with its parameters bound from `spec`.
    pub fn page(
        &mut self,
        entity: &str,
        spec: &Map<String, Value>,
        opts: &PageOptions,
    ) -> Result<Page, GqlError> {
        let start = self.params.0.len();
        let p = page_with(self.model, entity, spec, &mut self.params, opts)?;
        self.bind_from(start, &Value::Object(spec.clone()))?;
        Ok(p)
    }

    /// Binds the parameters added since `start` from `spec`.
    pub fn bind_from(&mut self, start: usize, spec: &Value) -> Result<(), GqlError> {
        let t = Template {
            sql: String::new(),
            params: self.params.0[start..].to_vec(),
            computed: vec![],
            plan_per_call: false,
            rows: None,
        };
        self.values.extend(bind(spec, &t)?);
        Ok(())
    }

    /// The jsonb of a record selection over the page row `row` (columns `cols`).
    pub fn node(&mut self, sels: &Sels, row: &str, cols: &[String]) -> Result<String, GqlError> {
        let mut pairs = Vec::with_capacity(sels.len());
        for (k, s) in sels {
            pairs.push((k.clone(), self.sel(s, row, cols)?));
        }
        Ok(json_object(&pairs))
    }

    fn sel(&mut self, s: &Sel, row: &str, cols: &[String]) -> Result<String, GqlError> {
        Ok(match s {
            Sel::Leaf { path, out, list } => {
                let c = col(row, cols, path)?;
                match (out, list) {
                    (Out::Text, false) => format!("({c})::text"),
                    (Out::Text, true) => format!("({c})::text[]"),
                    _ => c,
                }
            }
            Sel::Typename(t) => quote_literal(t),
            Sel::ToOne { path, sels } => {
                let fk = col(row, cols, path)?;
                format!(
                    "CASE WHEN {fk} IS NULL THEN NULL ELSE {} END",
                    self.node(sels, row, cols)?
                )
            }
            Sel::Conn(c) => self.conn(c, Some((row, cols)))?,
            Sel::Ref { path, parts } => {
                let r = col(row, cols, path)?;
                let pairs: Vec<(String, String)> = parts
                    .iter()
                    .map(|(k, p)| {
                        let e = match p {
                            RefPart::Entity => format!("({r}).\"entity\""),
                            RefPart::Id => format!("({r}).\"id\""),
                            RefPart::Typename => quote_literal("RecordRef"),
                        };
                        (k.clone(), e)
                    })
                    .collect();
                format!(
                    "CASE WHEN {r} IS NULL THEN NULL ELSE {} END",
                    json_object(&pairs)
                )
            }
            Sel::Union { path, arms } => {
                let r = col(row, cols, path)?;
                let mut cases = String::new();
                for (entity, _, sels) in arms {
                    let one = self.record(
                        entity,
                        sels,
                        Some(format!("t0.\"id\" = ({r}).\"id\"")),
                        None,
                    )?;
                    cases.push_str(&format!(" WHEN {} THEN {one}", quote_literal(entity)));
                }
                format!("(CASE ({r}).\"entity\"{cases} END)")
            }
        })
    }

    /// One record as a scalar sub-select: the page of at most one row matching `link` (and
    /// `filters`), its selection as jsonb (NULL when there is none).
    pub fn record(
        &mut self,
        entity: &str,
        sels: &Sels,
        link: Option<String>,
        filters: Option<Value>,
    ) -> Result<String, GqlError> {
        let p = self.record_page(entity, sels, link, filters)?;
        let row = self.alias("p");
        let obj = self.node(sels, &row, &p.columns)?;
        Ok(format!("(SELECT {obj} FROM ({}) {row})", p.sql))
    }

    /// One record as rows (at most one) for the surface to build its object, when the
    /// selection is flat (see [`RowsShape`]); None otherwise (nothing compiled).
    pub fn record_rows(
        &mut self,
        entity: &str,
        sels: &Sels,
        filters: Option<Value>,
    ) -> Result<Option<(String, RowsShape)>, GqlError> {
        if !flat(sels) {
            return Ok(None);
        }
        let id_param = self.values.len();
        let p = self.record_page(entity, sels, None, filters)?;
        let row = self.alias("p");
        let mut exprs = Vec::new();
        let node = self.row_parts(sels, &row, &p.columns, &mut exprs)?;
        let point = (self.values.len() == id_param + 1)
            .then(|| self.point_read(entity, sels, id_param))
            .flatten();
        let (sql, mut shape) = rows_statement(exprs, &row, &p.sql, None, node, Wrap::One);
        shape.point = point;
        Ok(Some((sql, shape)))
    }

    /// The columns of a selection of leaves as plain columns of the entity's table (None when
    /// any is something else: a JSON path, a related record, a list as text, an encrypted
    /// field, which the statement decrypts).
    fn point_read(&self, entity: &str, sels: &Sels, id_param: usize) -> Option<PointRead> {
        let def = self.model.entity(entity)?;
        let mut columns = Vec::new();
        for (_, s) in sels {
            match s {
                Sel::Typename(_) => {}
                Sel::Leaf { path, out, list } => {
                    let text = matches!(out, Out::Text);
                    if *list && text {
                        return None;
                    }
                    let column = if SYSTEM_COLUMNS.contains(&path.as_str()) {
                        path.clone()
                    } else {
                        let f = def.fields.iter().find(|f| &f.name == path)?;
                        if f.encrypted || f.is_many_to_many() || f.ftype == FieldType::Password {
                            return None;
                        }
                        f.column.clone()
                    };
                    columns.push((column, text));
                }
                _ => return None,
            }
        }
        (!columns.is_empty()).then(|| PointRead {
            entity: entity.to_string(),
            columns,
            id_param,
        })
    }

    /// A root connection as rows for the surface to build its value, when it selects only
    /// `nodes` (once) and `__typename`, and its nodes are flat (see [`RowsShape`]); None
    /// otherwise (nothing compiled).
    pub fn conn_rows(&mut self, c: &Conn) -> Result<Option<(String, RowsShape)>, GqlError> {
        let nodes = node_sels(c);
        let only_nodes = c
            .sels
            .iter()
            .all(|(_, s)| matches!(s, ConnSel::Nodes(_) | ConnSel::Typename(_)));
        if c.link.is_some() || !only_nodes || nodes.len() != 1 || !flat(nodes[0]) {
            return Ok(None);
        }
        let mut spec = c.spec.clone();
        spec.insert("columns".into(), json!(columns(nodes[0])));
        let opts = PageOptions {
            backward: c.backward,
            ..Default::default()
        };
        let page = self.page(&c.entity, &spec, &opts)?;
        let row = self.alias("p");
        let mut exprs = Vec::new();
        let node = self.row_parts(nodes[0], &row, &page.columns, &mut exprs)?;
        let keys = c
            .sels
            .iter()
            .map(|(k, s)| {
                let t = match s {
                    ConnSel::Typename(t) => Some(t.clone()),
                    _ => None,
                };
                (k.clone(), t)
            })
            .collect();
        let order = fetch_order(&row, &page, c.backward);
        let wrap = Wrap::Connection {
            keys,
            reverse: c.backward,
        };
        Ok(Some(rows_statement(
            exprs,
            &row,
            &page.sql,
            Some(&order),
            node,
            wrap,
        )))
    }

    /// The columns a flat selection's object needs of the page row (appended to `exprs`,
    /// converted as [`Self::sel`] converts them) and where its keys find them.
    fn row_parts(
        &mut self,
        sels: &Sels,
        row: &str,
        cols: &[String],
        exprs: &mut Vec<String>,
    ) -> Result<Vec<(String, RowPart)>, GqlError> {
        let mut out = Vec::with_capacity(sels.len());
        for (k, s) in sels {
            let part = match s {
                Sel::Leaf { .. } => {
                    exprs.push(self.sel(s, row, cols)?);
                    RowPart::Column(exprs.len() - 1)
                }
                Sel::Typename(t) => RowPart::Const(t.clone()),
                Sel::ToOne { path, sels } => {
                    exprs.push(col(row, cols, path)?);
                    let present = exprs.len() - 1;
                    let fields = self.row_parts(sels, row, cols, exprs)?;
                    RowPart::Object { present, fields }
                }
                _ => return Err(GqlError::internal("a selection of rows that is not flat")),
            };
            out.push((k.clone(), part));
        }
        Ok(out)
    }

    /// The page of at most one record matching `link` (and `filters`) with a selection's
    /// columns.
    fn record_page(
        &mut self,
        entity: &str,
        sels: &Sels,
        link: Option<String>,
        filters: Option<Value>,
    ) -> Result<Page, GqlError> {
        let cols = columns(sels);
        let mut spec = Map::new();
        spec.insert("columns".into(), json!(cols));
        // one record by its id (the joins of a page are all to one record)
        let by_id = link.is_none()
            && filters.as_ref().is_some_and(|f| {
                f.as_object().is_some_and(|o| {
                    o.len() == 1
                        && o.get("id").and_then(Value::as_object).is_some_and(|c| {
                            c.len() == 1 && c.get("eq").is_some_and(|v| v.is_string())
                        })
                })
            });
        if let Some(f) = filters {
            spec.insert("filters".into(), f);
        }
        spec.insert("limit".into(), json!(1));
        self.page(
            entity,
            &spec,
            &PageOptions {
                link,
                by_id,
                ..Default::default()
            },
        )
    }

    /// The condition linking a nested page's records (`t0`) to the parent row.
    fn link(&mut self, link: &Link, parent: &str) -> String {
        let j = self.alias("lj");
        let through = |here: &str, there: &str, table: String| {
            format!("EXISTS (SELECT 1 FROM {table} {j} WHERE {j}.\"{here}\" = t0.\"id\" AND {j}.\"{there}\" = {parent})")
        };
        match link {
            Link::Reverse { column } => format!("t0.{} = {parent}", quote_ident(column)),
            Link::Junction { junction } => through("target_id", "source_id", self.table(junction)),
            Link::JunctionBack { junction } => {
                through("source_id", "target_id", self.table(junction))
            }
        }
    }

    /// A connection as a scalar sub-select producing its jsonb; `parent`: the parent's page
    /// row and columns, for nested connections.
    pub fn conn(
        &mut self,
        c: &Conn,
        parent: Option<(&str, &[String])>,
    ) -> Result<String, GqlError> {
        let nodes: Vec<&Sels> = node_sels(c);
        let mut cols = vec!["id".to_string()];
        for s in &nodes {
            for p in columns(s) {
                push(&mut cols, &p);
            }
        }
        let link = match (&c.link, parent) {
            (Some((l, id_path)), Some((row, pcols))) => {
                Some(self.link(l, &col(row, pcols, id_path)?))
            }
            _ => None,
        };
        let wants = |f: &dyn Fn(&ConnSel) -> bool| c.sels.iter().any(|(_, s)| f(s));
        let has_more = wants(
            &|s| matches!(s, ConnSel::PageInfo(p) if p.iter().any(|(_, f)| matches!(f, PageField::HasNext | PageField::HasPrevious))),
        );
        let cursors = wants(&|s| match s {
            ConnSel::Edges(e) => e.iter().any(|(_, e)| matches!(e, EdgeSel::Cursor)),
            ConnSel::PageInfo(p) => p
                .iter()
                .any(|(_, f)| matches!(f, PageField::Start | PageField::End)),
            _ => false,
        });
        let mut spec = c.spec.clone();
        spec.insert("columns".into(), json!(cols));
        let opts = PageOptions {
            link: link.clone(),
            backward: c.backward,
            extra_row: has_more,
            by_id: false,
            sealed_raw: false,
        };
        let page = self.page(&c.entity, &spec, &opts)?;
        let (row, x) = (self.alias("p"), self.alias("x"));
        let mut inner = Vec::new();
        for (i, s) in nodes.iter().enumerate() {
            inner.push(format!("{} AS __v{i}", self.node(s, &row, &page.columns)?));
        }
        if cursors {
            inner.push(format!("{} AS __c", cursor_expr(&row, &page)));
        }
        inner.push(format!(
            "row_number() OVER (ORDER BY {}) AS __n",
            fetch_order(&row, &page, c.backward)
        ));
        let out = Shape {
            x: &x,
            size: c.size,
            backward: c.backward,
        };
        let mut pairs = Vec::new();
        let mut v = 0;
        for (k, s) in &c.sels {
            let e = match s {
                ConnSel::Nodes(_) => {
                    v += 1;
                    out.agg(&format!("{x}.__v{}", v - 1))
                }
                ConnSel::Edges(edges) => {
                    let node = edges.iter().any(|(_, e)| matches!(e, EdgeSel::Node(_)));
                    let e = out.edge(edges, if node { v } else { usize::MAX });
                    v += node as usize;
                    e
                }
                ConnSel::PageInfo(fields) => {
                    out.page_info(fields, c.after || spec.contains_key("offset"), c.before)
                }
                ConnSel::TotalCount => {
                    let conds: Vec<&String> = page.filter.iter().chain(link.iter()).collect();
                    let w = if conds.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " WHERE {}",
                            conds
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(" AND ")
                        )
                    };
                    format!("(SELECT count(*)::int FROM {}{w})", page.count_from)
                }
                ConnSel::Typename(t) => quote_literal(t),
            };
            pairs.push((k.clone(), e));
        }
        if c.sels
            .iter()
            .all(|(_, s)| matches!(s, ConnSel::TotalCount | ConnSel::Typename(_)))
        {
            // nothing from the page's rows (no aggregate over them): one row, whatever the page
            return Ok(format!("(SELECT {})", json_object(&pairs)));
        }
        Ok(format!(
            "(SELECT {} FROM (SELECT {} FROM ({}) {row}) {x})",
            json_object(&pairs),
            inner.join(", "),
            page.sql
        ))
    }
}

/// Whether a record selection is only leaves, `__typename` and to-one objects of those: what
/// the surface can build from a page's columns.
fn flat(sels: &Sels) -> bool {
    sels.iter().all(|(_, s)| match s {
        Sel::Leaf { .. } | Sel::Typename(_) => true,
        Sel::ToOne { sels, .. } => flat(sels),
        _ => false,
    })
}

/// `SELECT <exprs> FROM (<page>) <row> [ORDER BY <order>]` and its shape (a selection of only
/// `__typename` still selects a column, so that each row has one).
fn rows_statement(
    mut exprs: Vec<String>,
    row: &str,
    page: &str,
    order: Option<&str>,
    node: Vec<(String, RowPart)>,
    wrap: Wrap,
) -> (String, RowsShape) {
    if exprs.is_empty() {
        exprs.push("true".into());
    }
    let order = order.map_or(String::new(), |o| format!(" ORDER BY {o}"));
    let sql = format!("SELECT {} FROM ({page}) {row}{order}", exprs.join(", "));
    let shape = RowsShape {
        columns: exprs.len(),
        node,
        wrap,
        point: None,
    };
    (sql, shape)
}

/// How a connection's rows (`x.__n` numbered in fetch order) become its parts.
struct Shape<'a> {
    x: &'a str,
    size: i64,
    backward: bool,
}

impl Shape<'_> {
    fn order(&self, reverse: bool) -> &'static str {
        if self.backward != reverse {
            " DESC"
        } else {
            ""
        }
    }

    /// The rows of the page (not the one more) as a jsonb array, in the order asked for.
    fn agg(&self, e: &str) -> String {
        format!(
            "coalesce(jsonb_agg({e} ORDER BY {x}.__n{}) FILTER (WHERE {x}.__n <= {}), '[]'::jsonb)",
            self.order(false),
            self.size,
            x = self.x
        )
    }

    fn edge(&self, edges: &[(String, EdgeSel)], node: usize) -> String {
        let pairs: Vec<(String, String)> = edges
            .iter()
            .map(|(k, e)| {
                let v = match e {
                    EdgeSel::Cursor => format!("{}.__c", self.x),
                    EdgeSel::Node(_) => format!("{}.__v{node}", self.x),
                    EdgeSel::Typename(t) => quote_literal(t),
                };
                (k.clone(), v)
            })
            .collect();
        self.agg(&json_object(&pairs))
    }

    fn cursor_at(&self, last: bool) -> String {
        format!(
            "(array_agg({x}.__c ORDER BY {x}.__n{}) FILTER (WHERE {x}.__n <= {}))[1]",
            self.order(last),
            self.size,
            x = self.x
        )
    }

    fn page_info(&self, fields: &[(String, PageField)], after: bool, before: bool) -> String {
        let more = format!("(count(*) > {})", self.size);
        let pairs: Vec<(String, String)> = fields
            .iter()
            .map(|(k, f)| {
                let e = match f {
                    PageField::HasNext if self.backward => before.to_string(),
                    PageField::HasNext => more.clone(),
                    PageField::HasPrevious if self.backward => more.clone(),
                    PageField::HasPrevious => after.to_string(),
                    PageField::Start => self.cursor_at(false),
                    PageField::End => self.cursor_at(true),
                    PageField::Typename => quote_literal("PageInfo"),
                };
                (k.clone(), e)
            })
            .collect();
        json_object(&pairs)
    }
}

/// The row's cursor, as udm writes them (`query::decode_cursor` reads it).
fn cursor_expr(row: &str, p: &Page) -> String {
    let keys: Vec<String> = (0..p.order.len()).map(|i| format!("{row}.k{i}")).collect();
    let sig = p.cursor.as_ref().map(|c| c.sig.clone()).unwrap_or_default();
    format!(
        "translate(encode(convert_to(jsonb_build_object('k', jsonb_build_array({}), 's', {})::text, 'UTF8'), 'base64'), E'\\n', '')",
        keys.join(", "),
        quote_literal(&sig)
    )
}

/// The order the page's rows were fetched in (reversed keys when backward).
fn fetch_order(row: &str, p: &Page, backward: bool) -> String {
    p.order
        .iter()
        .enumerate()
        .map(|(i, (desc, nulls_first))| {
            let (d, n) = if backward {
                (!desc, !nulls_first)
            } else {
                (*desc, *nulls_first)
            };
            format!(
                "{row}.k{i} {} NULLS {}",
                if d { "DESC" } else { "ASC" },
                if n { "FIRST" } else { "LAST" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column of a path in a page row.
fn col(row: &str, cols: &[String], path: &str) -> Result<String, GqlError> {
    cols.iter()
        .position(|c| c == path)
        .map(|i| format!("{row}.c{i}"))
        .ok_or_else(|| GqlError::internal(format!("udm did not select \"{path}\"")))
}

fn push(out: &mut Vec<String>, p: &str) {
    if !out.iter().any(|x| x == p) {
        out.push(p.to_string());
    }
}

/// The node selections of a connection: `nodes`, then `edges { node }`, in order.
fn node_sels(c: &Conn) -> Vec<&Sels> {
    let mut out = Vec::new();
    for (_, s) in &c.sels {
        match s {
            ConnSel::Nodes(n) => out.push(n),
            ConnSel::Edges(e) => {
                if let Some((_, EdgeSel::Node(n))) =
                    e.iter().find(|(_, e)| matches!(e, EdgeSel::Node(_)))
                {
                    out.push(n);
                }
            }
            _ => {}
        }
    }
    out
}

/// The udm paths a record selection reads: leaves, relation columns of to-one objects (they
/// tell a null object), parent ids of nested connections, reference columns.
pub(crate) fn columns(sels: &Sels) -> Vec<String> {
    let mut out = vec!["id".to_string()];
    collect_columns(sels, &mut out);
    out
}

fn collect_columns(sels: &Sels, out: &mut Vec<String>) {
    for (_, s) in sels {
        match s {
            Sel::Leaf { path, .. } | Sel::Ref { path, .. } | Sel::Union { path, .. } => {
                push(out, path)
            }
            Sel::ToOne { path, sels } => {
                push(out, path);
                collect_columns(sels, out);
            }
            Sel::Conn(c) => {
                if let Some((_, id)) = &c.link {
                    push(out, id);
                }
            }
            Sel::Typename(_) => {}
        }
    }
}
