//! Rules that read related records: `y_position in roadmap_id.y_axis_values` (a many-to-one
//! path), `x_position in roadmap_id.phase[].name` (then the records pointing back), or
//! `length(phase[]) <= 10` on the parent itself.
//!
//! A CHECK constraint cannot read other rows, so such a rule becomes triggers:
//! - on the rule's own table, a constraint trigger re-checks the written row;
//! - on every table the rule reads, a constraint trigger re-checks the records a change there
//!   reaches (walking the rule's path backwards), so changing a roadmap's y-axis values or
//!   removing a phase cannot leave a product breaking the rule.
//!
//! Both run the same kind of statement: the ids of the rule's records that no longer hold it.
//! Writers that could race are serialised on one row, the *lock point*: the first record a path
//! reaches (the roadmap, for the paths above), or the rule's own record when the path starts by
//! going to many. A record's own check takes that row FOR SHARE; a change further along takes it
//! FOR NO KEY UPDATE before it looks, so in READ COMMITTED the later writer waits and then sees
//! the earlier one's rows.
//!
//! Paths are resolved by the query engine's resolver (`query::path`), so rules and queries
//! spell relation paths the same way.

use crate::definition::EntityDef;
use crate::error::{Result, SqlState, UdmError};
use crate::ident::{qualified, quote_ident, quote_literal, SYSTEM_COLUMNS};
use crate::query::path::{self, Leaf, Model, ToMany};
use crate::rules::{parse, Compiler, FieldScope, Resolved, Scope, VType};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// One step of a rule's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// Follow `column` of the current record to the `target` record it names.
    Forward { column: String, target: String },
    /// The records of `source` whose `column` names the current record.
    Reverse { source: String, column: String },
}

impl Hop {
    /// The entity (table) the hop arrives at.
    pub fn table(&self) -> &str {
        match self {
            Hop::Forward { target, .. } => target,
            Hop::Reverse { source, .. } => source,
        }
    }
}

/// A path that leaves the rule's record: its hops, and the column it reads at the end (`None`
/// when it ends at the records themselves, e.g. `phase[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub hops: Vec<Hop>,
    pub leaf: Option<String>,
}

/// A model with one entity replaced (or removed, for `None`): how the tenant looks after the
/// definition change being planned.
pub struct WithEntity<'a> {
    pub base: &'a dyn Model,
    pub slug: &'a str,
    pub def: Option<&'a EntityDef>,
}

impl Model for WithEntity<'_> {
    fn schema(&self) -> &str {
        self.base.schema()
    }
    fn entity(&self, slug: &str) -> Option<&EntityDef> {
        if slug == self.slug {
            self.def
        } else {
            self.base.entity(slug)
        }
    }
    fn entity_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .base
            .entity_names()
            .into_iter()
            .filter(|n| n != self.slug)
            .collect();
        if self.def.is_some() {
            names.push(self.slug.to_string());
            names.sort();
        }
        names
    }
}

/// Resolves a rule's paths: own fields as for a CHECK constraint, relation paths as
/// sub-selects correlated with the rule's record (alias `"t"`), recording each path's chain.
struct RelatedScope<'a> {
    model: &'a dyn Model,
    entity: &'a EntityDef,
    chains: RefCell<Vec<Chain>>,
}

const ALIAS: &str = "\"t\"";

fn system_vtype(column: &str) -> VType {
    match column {
        "id" => VType::Uuid,
        "created_at" | "updated_at" => VType::DateTime,
        "_version" => VType::Number,
        _ => VType::Text,
    }
}

/// Whether a rule's path leaves the record: it follows a many-to-one relation, or goes to the
/// records pointing here (`phase[]`). Other paths are the record's own fields.
pub fn leaves_record(entity: &EntityDef, path: &[String]) -> bool {
    path[0].contains('[')
        || (path.len() > 1 && entity.field(&path[0]).is_some_and(|f| f.is_many_to_one()))
}

/// Whether any of the entity's rules reads related records.
pub fn reads_related(entity: &EntityDef) -> bool {
    entity
        .rules
        .iter()
        .any(|r| parse(&r.check).is_ok_and(|e| e.paths().iter().any(|p| leaves_record(entity, p))))
}

impl Scope for RelatedScope<'_> {
    fn resolve(&self, p: &[String]) -> Result<Resolved> {
        if !leaves_record(self.entity, p) {
            return FieldScope {
                entity: self.entity,
            }
            .resolve(p);
        }
        let text = p.join(".");
        let r = path::resolve(self.model, &self.entity.slug, &text)?;
        let mut hops: Vec<Hop> = r
            .to_one
            .iter()
            .map(|h| Hop::Forward {
                column: h.column.clone(),
                target: h.target.clone(),
            })
            .collect();
        let many = r.to_many.is_some();
        if let Some((to_many, after)) = &r.to_many {
            match to_many {
                ToMany::Reverse { source, column } => hops.push(Hop::Reverse {
                    source: source.clone(),
                    column: column.clone(),
                }),
                ToMany::Junction { .. } => {
                    return Err(UdmError::new(
                        SqlState::FeatureNotSupported,
                        format!("path \"{text}\" goes through a many-to-many relation, which rules cannot follow yet"),
                    )
                    .hint("follow many-to-one relations (roadmap_id.name) or records pointing here (phase[].name)"))
                }
            }
            hops.extend(after.iter().map(|h| Hop::Forward {
                column: h.column.clone(),
                target: h.target.clone(),
            }));
        }
        let last = hops.last().map(Hop::table).unwrap_or(&self.entity.slug);
        let last_def = self
            .model
            .entity(last)
            .ok_or_else(|| UdmError::internal(format!("entity \"{last}\" vanished")))?;
        let n = hops.len();
        let at = format!("\"r{n}\"");
        let encrypted = |field: &str| {
            UdmError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "path \"{text}\": field \"{field}\" of entity \"{last}\" is encrypted and cannot be used in a rule"
                ),
            )
            .hint("the database holds only its ciphertext; check the value in the application")
        };
        if let Leaf::Column { column, .. } = &r.leaf {
            // a field being encrypted in stages reads as plain until its swap, which the rule
            // would then keep from happening
            if let Some(f) = last_def
                .fields
                .iter()
                .find(|f| f.column == *column && f.encryption_stage.is_some())
            {
                return Err(encrypted(&f.name));
            }
        }
        // (the leaf's SQL type, for a list read from one record: see below)
        let (leaf_sql, vtype, leaf_col, pg_type) = match &r.leaf {
            Leaf::Column {
                sealed: Some(sealed),
                ..
            } => return Err(encrypted(&sealed.name)),
            Leaf::Column { column, .. } => {
                let (vt, pg) = if SYSTEM_COLUMNS.contains(&column.as_str()) {
                    (system_vtype(column), None)
                } else {
                    let f = last_def
                        .fields
                        .iter()
                        .find(|f| &f.column == column)
                        .ok_or_else(|| {
                            UdmError::internal(format!("column \"{column}\" vanished"))
                        })?;
                    (VType::of_field(&f.ftype), Some(f.pg_type()))
                };
                (
                    format!("{at}.{}", quote_ident(column)),
                    vt,
                    column.clone(),
                    pg,
                )
            }
            Leaf::Json { column, keys } => {
                let keys: Vec<String> = keys.iter().map(|k| quote_literal(k)).collect();
                (
                    format!(
                        "({at}.{} #>> ARRAY[{}])",
                        quote_ident(column),
                        keys.join(", ")
                    ),
                    VType::Text,
                    column.clone(),
                    None,
                )
            }
        };
        let select = hops_select(self.model.schema(), &hops, &leaf_sql);
        let (sql, vtype) = match (many, &vtype, pg_type) {
            (true, _, _) => (format!("ARRAY({select})"), VType::List(Box::new(vtype))),
            // `x = ANY ((SELECT list ...))` would compare x with each row: the cast makes the
            // sub-select one value, the list
            (false, VType::List(_), Some(pg)) => (format!("(({select})::{pg})"), vtype),
            _ => (format!("({select})"), vtype),
        };
        // a path ending at records (`phase[]`) reads their ids, which never change
        let leaf = (leaf_col != "id").then_some(leaf_col);
        self.chains.borrow_mut().push(Chain { hops, leaf });
        Ok(Resolved { sql, vtype })
    }
}

/// `SELECT <leaf> FROM <hop tables joined> WHERE <first hop correlated with "t">`.
fn hops_select(schema: &str, hops: &[Hop], leaf_sql: &str) -> String {
    let mut from = String::new();
    let mut first_on = String::new();
    let mut prev = ALIAS.to_string();
    for (i, h) in hops.iter().enumerate() {
        let alias = format!("\"r{}\"", i + 1);
        let table = qualified(schema, h.table());
        let on = match h {
            Hop::Forward { column, .. } => {
                format!("{alias}.\"id\" = {prev}.{}", quote_ident(column))
            }
            Hop::Reverse { column, .. } => {
                format!("{alias}.{} = {prev}.\"id\"", quote_ident(column))
            }
        };
        if i == 0 {
            from = format!("{table} AS {alias}");
            first_on = on;
        } else {
            from.push_str(&format!(" JOIN {table} AS {alias} ON {on}"));
        }
        prev = alias;
    }
    format!("SELECT {leaf_sql} FROM {from} WHERE {first_on}")
}

/// A rule compiled against the tenant: its SQL condition (over the record, alias `"t"`), and
/// the paths that leave the record (none for a rule a CHECK constraint can carry).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    pub condition: String,
    pub chains: Vec<Chain>,
}

pub fn compile(model: &dyn Model, entity: &EntityDef, check: &str) -> Result<CompiledRule> {
    let e = parse(check)?;
    let scope = RelatedScope {
        model,
        entity,
        chains: RefCell::new(Vec::new()),
    };
    let condition = Compiler::new(check, &scope).condition(&e)?;
    Ok(CompiledRule {
        condition,
        chains: scope.chains.into_inner(),
    })
}

/// What one trigger runs for one key of a changed row: lock the lock point, then look for a
/// record that no longer holds the rule. `$1` is the key's value (a uuid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub key_column: String,
    pub lock_sql: String,
    pub check_sql: String,
}

/// A trigger on one table for one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrigger {
    pub table: String,
    /// Whether inserts and deletes fire it (a path reaching records that point back), or only
    /// updates of `columns`.
    pub inserts_and_deletes: bool,
    pub columns: BTreeSet<String>,
    pub probes: Vec<Probe>,
}

/// Records of the rule's entity among `ids` (a sub-select or `$1`) that break the rule.
fn violators(schema: &str, entity: &str, ids: &str, condition: &str) -> String {
    format!(
        "SELECT {ALIAS}.\"id\"::text FROM {} AS {ALIAS} WHERE {ALIAS}.\"id\" IN ({ids}) AND NOT ({condition}) LIMIT 1",
        qualified(schema, entity)
    )
}

/// Records of the rule's entity that break the rule (for a rule added to a table with rows).
pub fn existing_violators(schema: &str, entity: &str, condition: &str) -> String {
    format!(
        "SELECT {ALIAS}.\"id\"::text FROM {} AS {ALIAS} WHERE NOT ({condition}) LIMIT 1",
        qualified(schema, entity)
    )
}

/// The own table's trigger: re-checks the written record.
pub fn own_trigger(
    schema: &str,
    def: &EntityDef,
    rule: &CompiledRule,
    own_columns: BTreeSet<String>,
) -> RuleTrigger {
    let mut probes = Vec::new();
    let mut locked = BTreeSet::new();
    for c in &rule.chains {
        if let Some(Hop::Forward { column, target }) = c.hops.first() {
            if locked.insert((column.clone(), target.clone())) {
                probes.push(Probe {
                    key_column: "id".into(),
                    lock_sql: format!(
                        "SELECT 1 FROM {} WHERE \"id\" IN (SELECT {} FROM {} WHERE \"id\" = $1) FOR SHARE",
                        qualified(schema, target),
                        quote_ident(column),
                        qualified(schema, &def.slug)
                    ),
                    check_sql: String::new(),
                });
            }
        }
    }
    probes.push(Probe {
        key_column: "id".into(),
        lock_sql: String::new(),
        check_sql: violators(schema, &def.slug, "$1", &rule.condition),
    });
    RuleTrigger {
        table: def.slug.clone(),
        inserts_and_deletes: false,
        columns: own_columns,
        probes,
    }
}

/// Triggers on the tables the rule reads, one per table.
pub fn recheck_triggers(schema: &str, def: &EntityDef, rule: &CompiledRule) -> Vec<RuleTrigger> {
    let mut by_table: BTreeMap<String, RuleTrigger> = BTreeMap::new();
    for chain in &rule.chains {
        let hops = &chain.hops;
        let n = hops.len();
        let table_at = |j: usize| -> &str {
            if j == 0 {
                &def.slug
            } else {
                hops[j - 1].table()
            }
        };
        for k in 1..=n {
            let arrive = &hops[k - 1];
            let mut columns = BTreeSet::new();
            if let Hop::Reverse { column, .. } = arrive {
                columns.insert(column.clone());
            }
            if k < n {
                if let Hop::Forward { column, .. } = &hops[k] {
                    columns.insert(column.clone());
                }
            } else if let Some(leaf) = &chain.leaf {
                columns.insert(leaf.clone());
            }
            let reverse = matches!(arrive, Hop::Reverse { .. });
            if !reverse && columns.is_empty() {
                continue; // nothing of this record that the rule reads can change
            }
            // ids[j]: the records at level j the change at level k reaches
            let mut ids: Vec<String> = vec![String::new(); k];
            ids[k - 1] = match arrive {
                Hop::Forward { column, .. } => format!(
                    "SELECT \"id\" FROM {} WHERE {} = $1",
                    qualified(schema, table_at(k - 1)),
                    quote_ident(column)
                ),
                Hop::Reverse { .. } => "SELECT $1::uuid".to_string(),
            };
            for j in (1..k).rev() {
                ids[j - 1] = match &hops[j - 1] {
                    Hop::Forward { column, .. } => format!(
                        "SELECT \"id\" FROM {} WHERE {} IN ({})",
                        qualified(schema, table_at(j - 1)),
                        quote_ident(column),
                        ids[j]
                    ),
                    Hop::Reverse { column, .. } => format!(
                        "SELECT {} FROM {} WHERE \"id\" IN ({})",
                        quote_ident(column),
                        qualified(schema, table_at(j)),
                        ids[j]
                    ),
                };
            }
            let lock_point = usize::from(matches!(hops[0], Hop::Forward { .. }));
            let lock_sql = if k == 1 && lock_point == 1 {
                String::new() // the changed row is the lock point, and its change holds it
            } else {
                format!(
                    "SELECT 1 FROM {} WHERE \"id\" IN ({}) FOR NO KEY UPDATE",
                    qualified(schema, table_at(lock_point)),
                    ids[lock_point]
                )
            };
            let probe = Probe {
                key_column: match arrive {
                    Hop::Forward { .. } => "id".into(),
                    Hop::Reverse { column, .. } => column.clone(),
                },
                lock_sql,
                check_sql: violators(schema, &def.slug, &ids[0], &rule.condition),
            };
            let t = by_table
                .entry(arrive.table().to_string())
                .or_insert_with(|| RuleTrigger {
                    table: arrive.table().to_string(),
                    inserts_and_deletes: false,
                    columns: BTreeSet::new(),
                    probes: Vec::new(),
                });
            t.inserts_and_deletes |= reverse;
            t.columns.extend(columns);
            if !t.probes.contains(&probe) {
                t.probes.push(probe);
            }
        }
    }
    by_table.into_values().collect()
}

/// `AFTER ... ON <table> DEFERRABLE ... EXECUTE FUNCTION udm.rule_trigger(table, entity, key)`
/// (after `CREATE CONSTRAINT TRIGGER <name>`). The arguments are keys into udm's catalog: the
/// trigger function plans its probes from the rule's definition there (`ddl::related_rule_probes`),
/// never from SQL in its arguments.
pub fn trigger_body(schema: &str, entity: &str, key: &str, t: &RuleTrigger) -> String {
    let mut events = Vec::new();
    if t.inserts_and_deletes || t.table == entity {
        events.push("INSERT".to_string());
    }
    if t.inserts_and_deletes {
        events.push("DELETE".to_string());
    }
    if !t.columns.is_empty() {
        let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(c)).collect();
        events.push(format!("UPDATE OF {}", cols.join(", ")));
    }
    let args = [
        quote_literal(&t.table),
        quote_literal(entity),
        quote_literal(key),
    ];
    format!(
        "AFTER {} ON {} DEFERRABLE INITIALLY IMMEDIATE FOR EACH ROW EXECUTE FUNCTION udm.rule_trigger({})",
        events.join(" OR "),
        qualified(schema, &t.table),
        args.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Source;
    use crate::query::path::tests::TestModel;
    use serde_json::json;

    fn model() -> TestModel {
        let mut m = BTreeMap::new();
        for (slug, def) in [
            (
                "roadmap",
                json!({"fields": [
                    {"name": "name", "type": "text"},
                    {"name": "x_axis_mode", "type": "select", "values": ["time", "phase"]},
                    {"name": "y_axis_values", "type": "array", "items": "text"},
                    {"name": "settings", "type": "json"}]}),
            ),
            (
                "phase",
                json!({"fields": [
                    {"name": "name", "type": "text"},
                    {"name": "roadmap_id", "type": "relation", "target": "roadmap"}]}),
            ),
            (
                "product",
                json!({"fields": [
                    {"name": "x_position", "type": "text"},
                    {"name": "y_position", "type": "text"},
                    {"name": "roadmap_id", "type": "relation", "target": "roadmap"}]}),
            ),
        ] {
            m.insert(
                slug.to_string(),
                EntityDef::parse(slug, &def, Source::Caller).unwrap(),
            );
        }
        TestModel(m)
    }

    fn compiled(entity: &str, check: &str) -> CompiledRule {
        let m = model();
        let def = m.entity(entity).unwrap().clone();
        compile(&m, &def, check).unwrap()
    }

    #[test]
    fn own_fields_compile_as_for_a_check_constraint() {
        let r = compiled("product", "length(x_position) >= 2");
        assert_eq!(r.condition, "(char_length(\"x_position\") >= 2)");
        assert!(r.chains.is_empty());
    }

    #[test]
    fn a_membership_rule_over_a_many_to_one_path() {
        let r = compiled("product", "y_position in roadmap_id.y_axis_values");
        assert_eq!(
            r.condition,
            "(\"y_position\" = ANY (((SELECT \"r1\".\"y_axis_values\" FROM \"acme\".\"roadmap\" AS \"r1\" WHERE \"r1\".\"id\" = \"t\".\"roadmap_id\")::text[])))"
        );
        assert_eq!(
            r.chains,
            vec![Chain {
                hops: vec![Hop::Forward {
                    column: "roadmap_id".into(),
                    target: "roadmap".into()
                }],
                leaf: Some("y_axis_values".into())
            }]
        );
        let def = model().entity("product").unwrap().clone();
        let re = recheck_triggers("acme", &def, &r);
        assert_eq!(re.len(), 1);
        assert_eq!(re[0].table, "roadmap");
        assert!(!re[0].inserts_and_deletes);
        assert_eq!(re[0].columns, BTreeSet::from(["y_axis_values".to_string()]));
        // the changed roadmap is the lock point and is held by its own update
        assert_eq!(re[0].probes[0].lock_sql, "");
        assert!(re[0].probes[0].check_sql.contains(
            "WHERE \"t\".\"id\" IN (SELECT \"id\" FROM \"acme\".\"product\" WHERE \"roadmap_id\" = $1) AND NOT ("
        ));
        let own = own_trigger(
            "acme",
            &def,
            &r,
            BTreeSet::from(["roadmap_id".into(), "y_position".into()]),
        );
        assert!(own.probes[0].lock_sql.ends_with("FOR SHARE"));
        assert_eq!(
            trigger_body("acme", "product", "r.y", &own)
                .split(" ON ")
                .next()
                .unwrap(),
            "AFTER INSERT OR UPDATE OF \"roadmap_id\", \"y_position\""
        );
    }

    #[test]
    fn a_path_through_records_pointing_back() {
        let r = compiled("product", "x_position in roadmap_id.phase[].name");
        assert!(r.condition.contains("ARRAY(SELECT \"r2\".\"name\" FROM \"acme\".\"roadmap\" AS \"r1\" JOIN \"acme\".\"phase\" AS \"r2\" ON \"r2\".\"roadmap_id\" = \"r1\".\"id\" WHERE \"r1\".\"id\" = \"t\".\"roadmap_id\")"), "{}", r.condition);
        let def = model().entity("product").unwrap().clone();
        let re = recheck_triggers("acme", &def, &r);
        // roadmap: nothing it reads of the roadmap row itself can change (the phases do)
        assert_eq!(re.len(), 1);
        let phase = &re[0];
        assert_eq!(phase.table, "phase");
        assert!(phase.inserts_and_deletes);
        assert_eq!(
            phase.columns,
            BTreeSet::from(["name".to_string(), "roadmap_id".to_string()])
        );
        let p = &phase.probes[0];
        assert_eq!(p.key_column, "roadmap_id");
        assert_eq!(
            p.lock_sql,
            "SELECT 1 FROM \"acme\".\"roadmap\" WHERE \"id\" IN (SELECT $1::uuid) FOR NO KEY UPDATE"
        );
        assert!(p.check_sql.contains("\"t\".\"id\" IN (SELECT \"id\" FROM \"acme\".\"product\" WHERE \"roadmap_id\" IN (SELECT $1::uuid))"));
    }

    #[test]
    fn a_count_of_records_pointing_here() {
        let r = compiled("roadmap", "length(phase[]) <= 10");
        assert_eq!(
            r.condition,
            "(cardinality(ARRAY(SELECT \"r1\".\"id\" FROM \"acme\".\"phase\" AS \"r1\" WHERE \"r1\".\"roadmap_id\" = \"t\".\"id\")) <= 10)"
        );
        assert_eq!(r.chains[0].leaf, None);
        let def = model().entity("roadmap").unwrap().clone();
        let re = recheck_triggers("acme", &def, &r);
        assert_eq!(re[0].columns, BTreeSet::from(["roadmap_id".to_string()]));
        // the roadmap itself is the lock point: concurrent phase inserts wait for each other
        assert_eq!(
            re[0].probes[0].lock_sql,
            "SELECT 1 FROM \"acme\".\"roadmap\" WHERE \"id\" IN (SELECT $1::uuid) FOR NO KEY UPDATE"
        );
        let own = own_trigger("acme", &def, &r, BTreeSet::new());
        assert!(trigger_body("acme", "roadmap", "r.max", &own).starts_with("AFTER INSERT ON"));
    }

    #[test]
    fn json_leaves_and_types_are_checked() {
        let r = compiled(
            "product",
            "roadmap_id.settings.kind = 'a' and roadmap_id.x_axis_mode = 'time'",
        );
        assert_eq!(r.chains.len(), 2);
        let m = model();
        let def = m.entity("product").unwrap().clone();
        let e = compile(&m, &def, "roadmap_id.name > 3").unwrap_err();
        assert!(
            e.message.contains("cannot compare text with number"),
            "{}",
            e.message
        );
        let e = compile(&m, &def, "roadmap_id.nope = 'a'").unwrap_err();
        assert!(
            e.message
                .contains("\"nope\" is not a field of entity \"roadmap\""),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("y_axis_values"));
    }

    #[test]
    fn which_paths_leave_the_record() {
        let m = model();
        let product = m.entity("product").unwrap();
        let roadmap = m.entity("roadmap").unwrap();
        let path = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert!(leaves_record(product, &path("roadmap_id.name")));
        assert!(!leaves_record(product, &path("roadmap_id")));
        assert!(!leaves_record(product, &path("x_position")));
        assert!(!leaves_record(roadmap, &path("settings.kind")));
        assert!(leaves_record(roadmap, &path("phase[]")));
        let mut p = product.clone();
        assert!(!reads_related(&p));
        p.rules.push(
            crate::definition::parse_rule(
                &json!({"name": "y", "check": "y_position in roadmap_id.y_axis_values"}),
            )
            .unwrap(),
        );
        assert!(reads_related(&p));
    }

    #[test]
    fn the_model_after_a_change() {
        let m = model();
        let w = WithEntity {
            base: &m,
            slug: "phase",
            def: None,
        };
        assert_eq!(w.entity_names(), vec!["product", "roadmap"]);
        let def = m.entity("product").unwrap().clone();
        let e = compile(&w, &def, "x_position in roadmap_id.phase[].name").unwrap_err();
        assert!(e.message.contains("phase[]"), "{}", e.message);
    }
}
