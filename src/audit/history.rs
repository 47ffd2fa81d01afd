//! The SQL surface of the audit log: record history, point-in-time reads, rollback of a record
//! or a whole transaction, chain verification and compliance reports.
//!
//! Reads run as the caller: tenant members may read their tenant's audit table, and once the
//! tenant has members its row-level security shows each member the rows of the records they see
//! (`udm_core::ddl::audit_access_sql`). Rollbacks write as the caller too, so privileges, rules
//! and row-level security apply as to any write.

use crate::audit::{as_rollback, audit_table};
use crate::catalog::{self, Entity, Tenant};
use crate::error::{catch_pg, spi_err, OrRaise, Result};
use crate::json::{JsonB, RawJsonb};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use udm_core::audit::{
    audited_since, link_error, missing_head_error, parse_report_options, restore_plan, summarize,
    AuditedSince, ReportKind,
};
use udm_core::error::{SqlState, UdmError};
use udm_core::ident::{quote_ident, validate_slug, SlugKind};

fn tenant_and_entity(entity: &str) -> Result<(Rc<Tenant>, Option<Rc<Entity>>)> {
    let t = catalog::current_tenant()?;
    validate_slug(SlugKind::Entity, entity)?;
    let e = catalog::entity_any(&t, entity)?;
    Ok((t, e))
}

fn changed_list(v: Option<Vec<Option<String>>>) -> Vec<String> {
    v.unwrap_or_default().into_iter().flatten().collect()
}

/// What the session's role may not read of audit images. Images are keyed by the field names of
/// their entity version, so hidden fields (by id, which renames keep) are looked up by the names
/// each version used. `None` when the role keeps no field from being read (the usual case).
struct Hidden<'a> {
    t: &'a Tenant,
    ids: std::collections::HashMap<String, std::collections::HashSet<u32>>,
    names: std::collections::HashMap<(String, Option<i32>), Rc<std::collections::HashSet<String>>>,
}

impl<'a> Hidden<'a> {
    fn of(t: &'a Tenant) -> Result<Option<Hidden<'a>>> {
        if !crate::access::hides_fields(t)? {
            return Ok(None);
        }
        Ok(Some(Hidden {
            t,
            ids: Default::default(),
            names: Default::default(),
        }))
    }

    /// Names (as of entity version `version`) of the fields of `entity` the session may not read.
    fn names(
        &mut self,
        entity: &str,
        version: Option<i32>,
    ) -> Result<Rc<std::collections::HashSet<String>>> {
        let key = (entity.to_string(), version);
        if let Some(n) = self.names.get(&key) {
            return Ok(n.clone());
        }
        if !self.ids.contains_key(entity) {
            let ids = match catalog::entity_any(self.t, entity)? {
                Some(e) => crate::access::hidden_field_ids(self.t, &e)?,
                None => Default::default(),
            };
            self.ids.insert(entity.to_string(), ids);
        }
        let ids = &self.ids[entity];
        let mut names = std::collections::HashSet::new();
        if !ids.is_empty() {
            let def = match version {
                Some(v) => catalog::definition_at(self.t, entity, v)?,
                None => None,
            };
            let def = match def {
                Some(d) => Some(d),
                None => catalog::entity_any(self.t, entity)?.map(|e| e.def.clone()),
            };
            if let Some(d) = def {
                for f in d.fields.iter().chain(&d.removed_fields) {
                    if ids.contains(&f.id) {
                        names.insert(f.name.clone());
                    }
                }
            }
        }
        let names = Rc::new(names);
        self.names.insert(key, names.clone());
        Ok(names)
    }

    /// Removes what the session may not read from an audit row's images and changed fields. The
    /// row's subject is an entity, or `<entity>.<field>` for the links of a many-to-many field
    /// (whose images are the links: all of them go when the field is hidden).
    fn strip(
        &mut self,
        subject: &str,
        version: Option<i32>,
        images: &mut [&mut Option<RawJsonb>],
        changed: &mut Vec<String>,
    ) -> Result<()> {
        let (entity, field) = match subject.split_once('.') {
            Some((e, f)) => (e, Some(f)),
            None => (subject, None),
        };
        let names = self.names(entity, version)?;
        if names.is_empty() {
            return Ok(());
        }
        if let Some(f) = field {
            if names.contains(f) {
                for img in images.iter_mut() {
                    **img = None;
                }
                changed.clear();
            }
            return Ok(());
        }
        for img in images.iter_mut() {
            if let Some(i) = img.as_ref() {
                **img = Some(i.without_keys(&|k| names.contains(k))?);
            }
        }
        changed.retain(|c| !names.contains(c));
        Ok(())
    }
}

pub struct HistoryRow {
    pub version: Option<i32>,
    pub action: String,
    pub changed_fields: Option<Vec<Option<String>>>,
    pub summary: String,
    pub user_id: String,
    pub db_role: String,
    pub changed_at: Option<TimestampWithTimeZone>,
    pub txid: i64,
    pub event_id: i64,
    /// The record's image (binary, whatever its depth).
    pub data: Option<RawJsonb>,
    /// The row's images, while the row is being read.
    old: Option<RawJsonb>,
    new: Option<RawJsonb>,
}

/// A change's summary in words, from its images (read for people: deep values elided).
fn change_summary(
    action: &str,
    entity: &str,
    old: Option<&RawJsonb>,
    new: Option<&RawJsonb>,
    changed: &[String],
) -> Result<String> {
    let old = old.map(RawJsonb::summary_value).transpose()?;
    let new = new.map(RawJsonb::summary_value).transpose()?;
    Ok(summarize(
        action,
        entity,
        old.as_ref(),
        new.as_ref(),
        changed,
    ))
}

/// The audit rows of a record, newest first, with their entity versions (images not yet
/// summarised nor stripped).
fn history_rows(
    sql: &str,
    id: Uuid,
    entity: &str,
    chains: Option<crate::audit::batch::Chains>,
) -> Result<Vec<(HistoryRow, Option<i32>)>> {
    read_record(sql, id, entity, &[], chains, |r| {
        (
            HistoryRow {
                version: r.get::<i32>(1),
                action: r.get::<String>(2).unwrap_or_default(),
                changed_fields: r.get::<Vec<Option<String>>>(3),
                summary: String::new(),
                user_id: r.get::<String>(4).unwrap_or_default(),
                db_role: r.get::<String>(5).unwrap_or_default(),
                changed_at: r.get(6),
                txid: r.get::<i64>(7).unwrap_or(0),
                event_id: r.get::<i64>(8).unwrap_or(0),
                data: None,
                old: r.get::<RawJsonb>(9),
                new: r.get::<RawJsonb>(10),
            },
            r.get::<i32>(11),
        )
    })
}

/// A batched log's record filter (`batch::record_filter`) as (its arguments, its SQL).
pub(crate) fn split(
    f: Option<crate::audit::batch::RecordFilter>,
) -> (Option<crate::audit::batch::Chains>, String) {
    match f {
        Some((sql, ptrs, batches)) => (Some((ptrs, batches)), sql),
        None => (None, String::new()),
    }
}

pub fn history(entity: &str, id: Uuid) -> Result<Vec<HistoryRow>> {
    let (t, e) = tenant_and_entity(entity)?;
    let (chains, filter) = split(crate::audit::batch::record_filter(
        &t, entity, id, false, None, 3,
    )?);
    let sql = format!(
        "SELECT record_version, action, changed_fields, user_id, db_role, changed_at, txid, audit_id, old_data, new_data, entity_version \
         FROM {} WHERE record_id = $1 AND entity = $2{filter} ORDER BY audit_id DESC",
        audit_table(&t)
    );
    let mut hidden = Hidden::of(&t)?;
    let mut rows = Vec::new();
    for (r, version) in history_rows(&sql, id, entity, chains)? {
        let HistoryRow {
            action,
            changed_fields,
            old,
            new,
            ..
        } = &r;
        let mut changed = changed_list(changed_fields.clone());
        let (mut old, mut new) = (old.clone(), new.clone());
        if let Some(h) = hidden.as_mut() {
            h.strip(entity, version, &mut [&mut old, &mut new], &mut changed)?;
        }
        if let Some(e) = e.as_ref() {
            for img in [&mut old, &mut new] {
                if let Some(i) = img.as_ref() {
                    *img = Some(crate::crypto::open_image(&t, e, id.as_bytes(), i)?);
                }
            }
        }
        let summary = change_summary(action, entity, old.as_ref(), new.as_ref(), &changed)?;
        let data = if action == "DELETE" { old } else { new };
        rows.push(HistoryRow {
            changed_fields: Some(changed.into_iter().map(Some).collect()),
            summary,
            data,
            old: None,
            new: None,
            ..r
        });
    }
    if rows.is_empty() && e.is_none() {
        return Err(catalog::no_such_entity(&t, entity));
    }
    let mut rows = match e {
        Some(e) if crate::audit::links::has_links(&e) => with_link_history(&t, &e, id, rows)?,
        _ => rows,
    };
    // who, for people: registered users are recorded by id
    let mut names = crate::access::users::Names::new(&t);
    for r in &mut rows {
        r.user_id = names.show(&r.user_id)?;
    }
    Ok(rows)
}

/// One step of a record's history: a row of the record (with the link changes its transaction
/// made), or link changes made without one (plain SQL on a junction table).
struct Step {
    record: Option<HistoryRow>,
    links: Vec<crate::audit::links::LinkRow>,
}

/// Adds the record's link changes to its history: as changes of their fields (which ids were
/// added and removed) on the row of the transaction that made them, or as rows of their own;
/// and each row's data holds the links the record had then.
fn with_link_history(
    t: &Tenant,
    e: &Entity,
    id: Uuid,
    rows: Vec<HistoryRow>,
) -> Result<Vec<HistoryRow>> {
    let hidden_ids = crate::access::hidden_field_ids(t, e)?;
    let changes: Vec<crate::audit::links::LinkRow> = crate::audit::links::changes(t, e, id, None)?
        .into_iter()
        .filter(|l| !hidden_ids.contains(&l.change.field))
        .collect();
    if changes.is_empty() {
        return Ok(rows);
    }
    // oldest first; a transaction's link changes go with its last record row
    let mut steps: Vec<(i64, Step)> = rows
        .into_iter()
        .rev()
        .map(|r| {
            (
                r.event_id,
                Step {
                    record: Some(r),
                    links: Vec::new(),
                },
            )
        })
        .collect();
    let mut last_of_tx: HashMap<i64, usize> = HashMap::new();
    for (i, (_, s)) in steps.iter().enumerate() {
        if let Some(r) = &s.record {
            last_of_tx.insert(r.txid, i);
        }
    }
    let mut own: HashMap<i64, usize> = HashMap::new();
    for l in changes {
        let tx = l.change.txid;
        if let Some(&i) = last_of_tx.get(&tx) {
            steps[i].1.links.push(l);
        } else if let Some(&i) = own.get(&tx) {
            steps[i].1.links.push(l);
        } else {
            own.insert(tx, steps.len());
            steps.push((
                l.change.audit_id,
                Step {
                    record: None,
                    links: vec![l],
                },
            ));
        }
    }
    steps.sort_by_key(|(at, _)| *at);
    let mut state: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let mut last_image: Option<RawJsonb> = None;
    let mut last_version: Option<i32> = None;
    let mut out = Vec::with_capacity(steps.len());
    for (_, step) in steps {
        let before = state.clone();
        let by_field = {
            let mut m: BTreeMap<u32, Vec<&udm_core::audit::LinkChange>> = BTreeMap::new();
            for l in &step.links {
                m.entry(l.change.field).or_default().push(&l.change);
            }
            m
        };
        state = {
            let mut s = state;
            for l in &step.links {
                let set = s.entry(l.change.field).or_default();
                if l.change.added {
                    set.insert(l.change.target.clone());
                } else {
                    set.remove(&l.change.target);
                }
            }
            s
        };
        let mut names = Vec::new();
        let mut parts = Vec::new();
        for (field, list) in &by_field {
            let Some(f) = crate::audit::links::field(&e.def, *field) else {
                continue;
            };
            if let Some(p) = udm_core::audit::link_summary(&f.name, list) {
                names.push(f.name.clone());
                parts.push(p);
            }
        }
        match step.record {
            Some(mut r) => {
                // a delete's image is the record before it (and its links before they went)
                let links = if r.action == "DELETE" {
                    &before
                } else {
                    &state
                };
                if let Some(img) = &r.data {
                    r.data = Some(crate::audit::links::with_links(img, &e.def, links)?);
                }
                if r.action != "DELETE" {
                    last_image = r.data.clone();
                }
                last_version = r.version.or(last_version);
                if !parts.is_empty() && r.action != "DELETE" {
                    let mut changed = changed_list(r.changed_fields.take());
                    changed.extend(names);
                    r.summary = if r.summary.ends_with("saved without changes") {
                        parts.join("; ")
                    } else {
                        format!("{}; {}", r.summary, parts.join("; "))
                    };
                    r.changed_fields = Some(changed.into_iter().map(Some).collect());
                }
                out.push(r);
            }
            None if !parts.is_empty() => {
                let first = &step.links[0];
                let data = match &last_image {
                    Some(img) => Some(crate::audit::links::with_links(img, &e.def, &state)?),
                    None => None,
                };
                out.push(HistoryRow {
                    version: last_version,
                    action: "UPDATE".into(),
                    changed_fields: Some(names.into_iter().map(Some).collect()),
                    summary: parts.join("; "),
                    user_id: first.user_id.clone(),
                    db_role: first.db_role.clone(),
                    changed_at: first.changed_at,
                    txid: first.change.txid,
                    event_id: first.change.audit_id,
                    data,
                    old: None,
                    new: None,
                });
            }
            None => {}
        }
    }
    out.reverse();
    Ok(out)
}

thread_local! {
    /// The statements that read one record's changes (its history, `udm_record_at`), per tenant
    /// and layout, planned once: their generic plan is the one every call would get (planning
    /// the batched log's view at each call cost more than running it).
    static RECORD_PLANS: crate::query::rawspi::PlanCache =
        crate::cache::Lru::new("record reads");
}

/// Reads the changes of record `id` of `entity` with `sql`, whose parameters are the record id,
/// the entity, `more` and, on a batched log, the record filter's (`batch::record_filter`);
/// `f` gets each row while it is in SPI's memory.
fn read_record<R>(
    sql: &str,
    id: Uuid,
    entity: &str,
    more: &[(pg_sys::Oid, pg_sys::Datum)],
    chains: Option<crate::audit::batch::Chains>,
    mut f: impl FnMut(&Row) -> R,
) -> Result<Vec<R>> {
    let mut types = vec![pg_sys::UUIDOID, pg_sys::TEXTOID];
    let mut values: Vec<pg_sys::Datum> = vec![
        id.into_datum().expect("uuid"),
        entity.into_datum().expect("text"),
    ];
    for (t, v) in more {
        types.push(*t);
        values.push(*v);
    }
    if let Some((ptrs, batches)) = chains {
        types.extend([pg_sys::INT8ARRAYOID, pg_sys::INT8ARRAYOID]);
        values.push(ptrs.into_datum().expect("bigint[]"));
        values.push(batches.into_datum().expect("bigint[]"));
    }
    let plan = crate::query::rawspi::kept_plan(
        &RECORD_PLANS,
        sql,
        &types,
        pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
    )?;
    let nulls = vec![b' ' as std::os::raw::c_char; values.len()];
    crate::query::rawspi::rows_of(&plan, &mut values, &nulls, |desc, rows| {
        Ok(rows.iter().map(|&tuple| f(&Row { tuple, desc })).collect())
    })
}

/// A row of `read_record`, its columns copied out by `get`.
struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    fn get<T: FromDatum>(&self, column: i32) -> Option<T> {
        unsafe {
            let mut null = false;
            let d = pg_sys::heap_getattr(self.tuple, column, self.desc, &mut null);
            T::from_datum(d, null)
        }
    }
}

pub fn record_at(entity: &str, id: Uuid, at: TimestampWithTimeZone) -> Result<Option<RawJsonb>> {
    let (t, e) = tenant_and_entity(entity)?;
    if e.is_none() {
        return Err(catalog::no_such_entity(&t, entity));
    }
    let (chains, filter) = split(crate::audit::batch::record_filter(
        &t,
        entity,
        id,
        false,
        Some(at),
        4,
    )?);
    let sql = format!(
        "SELECT CASE WHEN action = 'DELETE' THEN NULL ELSE {} END, entity_version FROM {} \
         WHERE record_id = $1 AND entity = $2 AND changed_at <= $3{filter} ORDER BY audit_id DESC LIMIT 1",
        crate::audit::record_image_sql("new_data"),
        audit_table(&t)
    );
    let at_datum = at.into_datum().expect("timestamptz");
    let row = read_record(
        &sql,
        id,
        entity,
        &[(pg_sys::TIMESTAMPTZOID, at_datum)],
        chains,
        |r| (r.get::<RawJsonb>(1), r.get::<i32>(2)),
    )?
    .into_iter()
    .next();
    let Some((mut image, version)) = row else {
        return Ok(None);
    };
    // the links it had then
    if let (Some(e), Some(img)) = (e.as_ref(), image.as_ref()) {
        if crate::audit::links::has_links(e) {
            let hidden = crate::access::hidden_field_ids(&t, e)?;
            let changes = crate::audit::links::changes(&t, e, id, Some(at))?;
            let links = udm_core::audit::links_after(
                changes
                    .iter()
                    .map(|l| &l.change)
                    .filter(|c| !hidden.contains(&c.field)),
            );
            let mut with = crate::audit::links::with_links(img, &e.def, &links)?;
            for f in e.def.fields.iter().filter(|f| hidden.contains(&f.id)) {
                with = with.without_keys(&|k| k == f.name)?;
            }
            image = Some(with);
        }
    }
    if let Some(h) = Hidden::of(&t)?.as_mut() {
        h.strip(entity, version, &mut [&mut image], &mut Vec::new())?;
    }
    if let (Some(e), Some(img)) = (e.as_ref(), image.as_ref()) {
        image = Some(crate::crypto::open_image(&t, e, id.as_bytes(), img)?);
    }
    Ok(image)
}

// ------------------------------------------------------------------ rollback

/// The newest version number the audit knows for a record.
fn last_version(t: &Tenant, entity: &str, id: Uuid) -> Result<i32> {
    let (chains, filter) = split(crate::audit::batch::record_filter(
        t, entity, id, false, None, 3,
    )?);
    let sql = format!(
        "SELECT max(record_version) FROM {} WHERE record_id = $1 AND entity = $2{filter}",
        audit_table(t)
    );
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![id.into(), entity.into()];
    crate::audit::batch::push_chains(&mut args, chains);
    Ok(crate::spi::select_one::<i32>(&sql, &args)?.unwrap_or(0))
}

fn exists(t: &Tenant, entity: &str, id: Uuid) -> Result<bool> {
    let sql = format!(
        "SELECT true FROM {}.{} WHERE id = $1 FOR UPDATE",
        quote_ident(&t.schema),
        quote_ident(entity)
    );
    crate::spi::connect_mut("SELECT FOR UPDATE", |c| {
        let rows = c.update(&sql, Some(1), &[id.into()])?;
        Ok::<_, pgrx::spi::Error>(!rows.is_empty())
    })
    .map_err(spi_err)
}

/// Writes `values` (by current field name) into the record: UPDATE when it exists, else INSERT
/// with `id` (a restore). Runs as the caller, recorded as ROLLBACK.
fn write_image(
    t: &Tenant,
    e: &Entity,
    id: Uuid,
    values: &Map<String, Value>,
    what: &str,
) -> Result<()> {
    let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&e.def.slug));
    let cols: Vec<String> = values
        .keys()
        .filter_map(|k| e.def.field(k))
        .filter(|f| f.has_column())
        .map(|f| quote_ident(&f.column))
        .collect();
    let img = Value::Object(values.clone());
    let present = exists(t, &e.def.slug, id)?;
    let sql = if present {
        if cols.is_empty() {
            return Err(UdmError::invalid(format!("{what}: no field to restore")));
        }
        // one assignment per column, not `SET (...) = (SELECT ...)`: Citus cannot deparse the
        // parameters of a multiple-column sub-select assignment ("unrecognized paramkind")
        format!(
            "UPDATE {table} AS t SET {} WHERE t.id = $2",
            cols.iter()
                .map(|c| format!("{c} = (jsonb_populate_record(NULL::{table}, $1)).{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        let mut all = vec!["\"id\"".to_string()];
        all.extend(cols.iter().cloned());
        let mut sel = vec!["$2".to_string()];
        sel.extend(cols.iter().map(|c| format!("r.{c}")));
        format!(
            "INSERT INTO {table} ({}) SELECT {} FROM jsonb_populate_record(NULL::{table}, $1) AS r",
            all.join(", "),
            sel.join(", ")
        )
    };
    let restore = if present {
        None
    } else {
        Some((*id.as_bytes(), last_version(t, &e.def.slug, id)? + 1))
    };
    let what = what.to_string();
    as_rollback(restore, || {
        catch_pg(
            || {
                crate::spi::connect_mut(&crate::spi::command(&sql), |c| {
                    c.update(&sql, None, &[JsonB(img).into(), id.into()])
                        .map(|_| ())
                })
                .map_err(spi_err)
            },
            |err| err.raise_with(&what),
        )
    })
}

fn delete_record(t: &Tenant, entity: &str, id: Uuid, what: &str) -> Result<()> {
    let sql = format!(
        "DELETE FROM {}.{} WHERE id = $1",
        quote_ident(&t.schema),
        quote_ident(entity)
    );
    let what = what.to_string();
    as_rollback(None, || {
        catch_pg(
            || {
                crate::spi::connect_mut("DELETE", |c| {
                    c.update(&sql, None, &[id.into()]).map(|_| ())
                })
                .map_err(spi_err)
            },
            |err| err.raise_with(&what),
        )
    })
}

fn definition_then(
    t: &Tenant,
    e: &Entity,
    version: Option<i32>,
) -> Result<udm_core::definition::EntityDef> {
    match version {
        Some(v) if v != e.version => {
            Ok(catalog::definition_at(t, &e.def.slug, v)?.unwrap_or_else(|| e.def.clone()))
        }
        _ => Ok(e.def.clone()),
    }
}

pub fn rollback(
    entity: &str,
    id: Uuid,
    version: i32,
    fields: Option<Vec<String>>,
) -> Result<Value> {
    let t = catalog::current_tenant()?;
    let e = catalog::entity(&t, entity)?;
    let what = format!("cannot roll back {entity} {id} to version {version}");
    let (chains, filter) = split(crate::audit::batch::record_filter(
        &t, entity, id, true, None, 4,
    )?);
    let sql = format!(
        "SELECT new_data, entity_version, audit_id, txid FROM {} WHERE record_id = $1 AND entity = $2 \
         AND record_version = $3 AND action <> 'DELETE'{filter} ORDER BY audit_id DESC LIMIT 1",
        audit_table(&t)
    );
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![id.into(), entity.into(), version.into()];
    crate::audit::batch::push_chains(&mut args, chains.clone());
    let row = Spi::connect(|c| {
        let mut out = None;
        for r in c.select(&sql, Some(1), &args)? {
            out = Some((
                r.get::<JsonB>(1)?.map(|j| j.0),
                r.get::<i32>(2)?,
                r.get::<i64>(3)?.unwrap_or(0),
                r.get::<i64>(4)?.unwrap_or(0),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?;
    let Some((Some(Value::Object(mut image)), def_version, at_id, at_tx)) = row else {
        return Err(UdmError::new(
            SqlState::NoDataFound,
            format!("{entity} {id} has no version {version} in the audit log"),
        )
        .hint(format!(
            "{} lists its versions",
            udm_core::ident::sql_call("udm_history", &[entity, &id.to_string()])
        )));
    };
    let then = definition_then(&t, &e, def_version)?;
    // values sealed while a field was encrypted, when it is not any more: their plaintext
    crate::crypto::open_json_fields(&t, &e, id.as_bytes(), &mut image, true)?;
    // many-to-many fields are restored from the link rows, the others from the image
    let named_then = |f: &udm_core::definition::FieldDef, n: &str| {
        f.name == n || then.fields.iter().any(|o| o.id == f.id && o.name == n)
    };
    let link_fields: Vec<&udm_core::definition::FieldDef> = e
        .def
        .fields
        .iter()
        .filter(|f| f.junction.is_some())
        .filter(|f| {
            fields
                .as_ref()
                .is_none_or(|list| list.iter().any(|n| named_then(f, n)))
        })
        .collect();
    let columns: Option<Vec<String>> = fields.as_ref().map(|list| {
        list.iter()
            .filter(|n| !link_fields.iter().any(|f| named_then(f, n)))
            .cloned()
            .collect()
    });
    let plan = restore_plan(&then, &e.def, &image, columns.as_deref(), &what)?;
    let present = exists(&t, entity, id)?;
    if fields.is_some() && !present {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("{what}: the record is deleted"),
        )
        .hint("roll back all its fields (fields => NULL) to restore it"));
    }
    if !present || !plan.values.is_empty() || link_fields.is_empty() {
        write_image(&t, &e, id, &plan.values, &what)?;
    }
    let mut skipped = plan.skipped.clone();
    let mut restored: Vec<String> = plan.values.keys().cloned().collect();
    if !link_fields.is_empty() {
        // the links of that version: every link change up to the next transaction that changed
        // the record or its links
        let filter = chains
            .as_ref()
            .map(|_| " AND audit_id = ANY($5::bigint[]) AND batch_id = ANY($6::bigint[])")
            .unwrap_or_default();
        let mut args: Vec<pgrx::datum::DatumWithOid> =
            vec![id.into(), entity.into(), at_id.into(), at_tx.into()];
        crate::audit::batch::push_chains(&mut args, chains);
        let boundary = crate::spi::select_one::<i64>(
            &format!(
                "SELECT min(audit_id) FROM {} WHERE record_id = $1 \
                   AND (entity = $2 OR starts_with(entity, $2 || '.')) AND audit_id > $3 AND txid <> $4{filter}",
                audit_table(&t)
            ),
            &args,
        )?;
        let changes = crate::audit::links::changes(&t, &e, id, None)?;
        let links = udm_core::audit::links_after(
            changes
                .iter()
                .map(|l| &l.change)
                .filter(|c| boundary.is_none_or(|b| c.audit_id < b)),
        );
        let none = BTreeSet::new();
        for f in link_fields {
            let gone =
                crate::audit::links::restore(&t, id, f, links.get(&f.id).unwrap_or(&none), &what)?;
            skipped.extend(
                gone.into_iter()
                    .map(|g| format!("{}: {g} (no longer exists)", f.name)),
            );
            restored.push(f.name.clone());
        }
    }
    let now = last_version(&t, entity, id)?;
    Ok(json!({
        "entity": entity,
        "id": id.to_string(),
        "restored_version": version,
        "version": now,
        "fields": restored,
        "skipped": skipped,
    }))
}

struct TxRow {
    audit_id: i64,
    entity: String,
    id: Uuid,
    action: String,
    old: Option<Value>,
    new: Option<Value>,
    entity_version: Option<i32>,
}

pub fn rollback_transaction(txid: i64, force: bool) -> Result<Value> {
    let t = catalog::current_tenant()?;
    let audit = audit_table(&t);
    let rows = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            &format!(
                "SELECT audit_id, entity, record_id, action, old_data, new_data, entity_version FROM {audit} \
                 WHERE txid = $1 AND action NOT LIKE 'LOCK\\_%' ORDER BY audit_id"
            ),
            None,
            &[txid.into()],
        )? {
            out.push(TxRow {
                audit_id: r.get::<i64>(1)?.unwrap_or(0),
                entity: r.get::<String>(2)?.unwrap_or_default(),
                id: r.get::<Uuid>(3)?.unwrap_or_else(|| Uuid::from_bytes([0; 16])),
                action: r.get::<String>(4)?.unwrap_or_default(),
                old: r.get::<JsonB>(5)?.map(|j| j.0),
                new: r.get::<JsonB>(6)?.map(|j| j.0),
                entity_version: r.get::<i32>(7)?,
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?;
    if rows.is_empty() {
        return Err(UdmError::new(
            SqlState::NoDataFound,
            format!(
                "transaction {txid} changed nothing in tenant \"{}\"",
                t.slug
            ),
        )
        .hint("the txid column of udm_history and of the audit reports names transactions"));
    }
    // a member undoes only a transaction whose every change they may read (the policy on the
    // audit log hid the others): a partial undo would be half applied
    let all = crate::access::security::as_owner(|| {
        crate::spi::select_one::<i64>(
            &format!("SELECT count(*) FROM {audit} WHERE txid = $1 AND action NOT LIKE 'LOCK\\_%'"),
            &[txid.into()],
        )
    })?
    .unwrap_or(0);
    if all > rows.len() as i64 {
        let ctx = crate::access::context(&t)?;
        return Err(UdmError::new(
            SqlState::InsufficientPrivilege,
            format!(
                "permission denied: transaction {txid} made {} changes in tenant \"{}\" that user \"{}\" may not read; it is not rolled back",
                all - rows.len() as i64,
                t.slug,
                ctx.label()
            ),
        )
        .hint("a member whose role manages the tenant can roll it back"));
    }
    // Undo units: each record by its first row in the transaction (its state before), and
    // each link (field, source, target) by its first row too: a link the transaction first
    // removed was there before, one it first made was not, whatever it did with it afterwards.
    let mut units: Vec<usize> = Vec::new();
    let mut order: Vec<(String, Uuid)> = Vec::new();
    let mut first: std::collections::HashMap<(String, [u8; 16]), usize> = Default::default();
    let mut first_link: std::collections::HashSet<(String, [u8; 16], String)> = Default::default();
    let mut last: std::collections::HashMap<(String, [u8; 16]), i64> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        let k = (r.entity.clone(), *r.id.as_bytes());
        if r.entity.contains('.') {
            let target = r
                .new
                .as_ref()
                .or(r.old.as_ref())
                .and_then(|v| v.get("target_id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if first_link.insert((r.entity.clone(), *r.id.as_bytes(), target)) {
                units.push(i);
            }
        } else if !first.contains_key(&k) {
            first.insert(k.clone(), i);
            units.push(i);
        }
        if !last.contains_key(&k) {
            order.push((r.entity.clone(), r.id));
        }
        last.insert(k, r.audit_id);
    }
    if !force {
        let entities: Vec<String> = order.iter().map(|(e, _)| e.clone()).collect();
        let ids: Vec<Uuid> = order.iter().map(|(_, i)| *i).collect();
        let after: Vec<i64> = order
            .iter()
            .map(|(e, i)| last[&(e.clone(), *i.as_bytes())])
            .collect();
        let sql = format!(
            "SELECT l.e, l.id::text, a.txid, a.user_id, a.action FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS l(e, id, after) \
             CROSS JOIN LATERAL (SELECT txid, user_id, action FROM {audit} a WHERE a.record_id = l.id AND a.entity = l.e \
               AND a.audit_id > l.after AND a.txid <> $4 ORDER BY a.audit_id LIMIT 1) a LIMIT 1"
        );
        let conflict = Spi::connect(|c| {
            let mut out = None;
            for r in c.select(
                &sql,
                None,
                &[entities.into(), ids.into(), after.into(), txid.into()],
            )? {
                out = Some((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<i64>(3)?.unwrap_or(0),
                    r.get::<String>(4)?.unwrap_or_default(),
                    r.get::<String>(5)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)?;
        if let Some((e, id, tx, user, action)) = conflict {
            return Err(UdmError::new(
                SqlState::SerializationFailure,
                format!(
                    "cannot roll back transaction {txid}: {e} {id} was changed later ({action} by {user} in transaction {tx})"
                ),
            )
            .hint("roll back the later transaction first, or pass force => true to overwrite its changes"));
        }
    }
    // Links the transaction made go first (a record it created cannot go while linked), then
    // records newest first, then links it removed (only once the records they join are back).
    let is_link = |i: usize| rows[i].entity.contains('.');
    let unlinked = |i: usize| rows[i].action == "DELETE";
    let mut ordered: Vec<usize> = units
        .iter()
        .rev()
        .copied()
        .filter(|&i| is_link(i) && !unlinked(i))
        .collect();
    ordered.extend(units.iter().rev().copied().filter(|&i| !is_link(i)));
    ordered.extend(
        units
            .iter()
            .rev()
            .copied()
            .filter(|&i| is_link(i) && unlinked(i)),
    );
    let mut undone = Vec::new();
    for i in ordered {
        let r = &rows[i];
        let (entity, id) = (&r.entity, &r.id);
        let what = format!("cannot roll back transaction {txid} for {entity} {id}");
        if let Some((owner, field)) = entity.split_once('.') {
            // a many-to-many link: re-link what was unlinked, unlink what was linked
            let e = catalog::entity(&t, owner)?;
            let f = e.def.field(field).ok_or_else(|| {
                UdmError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!("{what}: field \"{field}\" no longer exists"),
                )
            })?;
            let j = format!(
                "{}.{}",
                quote_ident(&t.schema),
                quote_ident(f.junction.as_deref().unwrap_or(""))
            );
            let target = r
                .new
                .as_ref()
                .or(r.old.as_ref())
                .and_then(|v| v.get("target_id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let relink = r.action == "DELETE";
            let sql = if relink {
                format!("INSERT INTO {j} (source_id, target_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING")
            } else {
                format!("DELETE FROM {j} WHERE source_id = $1 AND target_id = $2::uuid")
            };
            as_rollback(None, || {
                catch_pg(
                    || {
                        crate::spi::connect_mut(&crate::spi::command(&sql), |c| {
                            c.update(&sql, None, &[(*id).into(), target.as_str().into()])
                                .map(|_| ())
                        })
                        .map_err(spi_err)
                    },
                    |err| err.raise_with(&what),
                )
            })?;
            undone.push(json!({"entity": entity, "id": id.to_string(), "target_id": target, "undo": if relink { "relink" } else { "unlink" }}));
            continue;
        }
        let e = catalog::entity(&t, entity)?;
        match &r.old {
            None => {
                delete_record(&t, entity, *id, &what)?;
                undone.push(json!({"entity": entity, "id": id.to_string(), "undo": "delete"}));
            }
            // an UPDATE that changed no field (only its links, or nothing): nothing to revert
            Some(Value::Object(before)) if before.is_empty() && r.action != "DELETE" => {}
            Some(Value::Object(before)) => {
                let then = definition_then(&t, &e, r.entity_version)?;
                let plan = restore_plan(&then, &e.def, before, None, &what)?;
                write_image(&t, &e, *id, &plan.values, &what)?;
                undone.push(json!({"entity": entity, "id": id.to_string(), "undo": if r.action == "DELETE" { "restore" } else { "revert" }}));
            }
            Some(_) => {}
        }
    }
    Ok(json!({"txid": txid, "records": undone.len(), "undone": undone}))
}

// ------------------------------------------------------------------ verify

pub fn verify() -> Result<Value> {
    let t = catalog::current_tenant()?;
    verify_tenant(&t)
}

/// `udm_audit_verify` of a tenant (what the caller may read of it).
///
/// The rows are read in the order of the audit log's key, (record_id, audit_id): no sort of the
/// log (a chain is one record's rows of one entity; the few chains of one record id — its rows,
/// its links as `entity.field`, its locks as `entity#lock` — are followed side by side), and
/// each row's hash is recomputed where it is read.
pub fn verify_tenant(t: &Tenant) -> Result<Value> {
    let batched = crate::audit::batch::is_batched(t);
    if batched {
        crate::audit::batch::require_current_view(t)?;
    }
    let sql = format!(
        "SELECT a.audit_id, a.entity, a.record_id::text, a.action, a.prev_hash, \
           a.hash = udm.audit_hash(a.prev_hash, a.entity, a.record_id, a.action, a.record_version, a.entity_version, \
                  a.old_data, a.new_data, array_to_string(a.changed_fields, ','), a.user_id, a.db_role, a.txid, a.changed_at), \
           a.hash, {} \
         FROM {} AS a ORDER BY a.record_id, a.audit_id",
        // a batched log's readers follow each change's pointer to the one before it
        if batched { "a.prev_ptr" } else { "NULL::bigint" },
        audit_table(t)
    );
    let mut checked = 0i64;
    let mut records = 0i64;
    let mut first: Option<(i64, Value)> = None;
    Spi::connect(|c| {
        let mut cursor = c.open_cursor(&sql, &[]);
        // the chains of the current record id: entity -> (action, hash, audit id) of its newest
        // row so far
        let mut record: Option<String> = None;
        let mut chains: Vec<(String, String, Vec<u8>, i64)> = Vec::new();
        loop {
            let batch = cursor.fetch(10_000)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                checked += 1;
                let id = r.get::<i64>(1)?.unwrap_or(0);
                let entity = r.get::<String>(2)?.unwrap_or_default();
                let rec = r.get::<String>(3)?.unwrap_or_default();
                let action = r.get::<String>(4)?.unwrap_or_default();
                let prev = r.get::<Vec<u8>>(5)?;
                let hash_ok = r.get::<bool>(6)?.unwrap_or(false);
                let hash = r.get::<Vec<u8>>(7)?.unwrap_or_default();
                let prev_ptr = r.get::<i64>(8)?;
                if record.as_deref() != Some(rec.as_str()) {
                    record = Some(rec.clone());
                    chains.clear();
                }
                let at = chains.iter().position(|(e, _, _, _)| *e == entity);
                if at.is_none() {
                    records += 1;
                }
                let before = at.map(|i| (chains[i].1.as_str(), chains[i].2.as_slice()));
                let problem = if !hash_ok {
                    Some("its content does not match its hash (the row was changed)".to_string())
                } else {
                    link_error(before, prev.as_deref(), &action).or_else(|| {
                        prev_ptr.and_then(|p| {
                            udm_core::audit::pointer_error(at.map(|i| chains[i].3), p)
                        })
                    })
                };
                if let Some(p) = problem {
                    if first.as_ref().is_none_or(|(f, _)| id < *f) {
                        first = Some((
                            id,
                            json!({"audit_id": id, "entity": entity, "record_id": rec, "action": action, "problem": p}),
                        ));
                    }
                }
                match at {
                    Some(i) => chains[i] = (entity, action, hash, id),
                    None => chains.push((entity, action, hash, id)),
                }
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(spi_err)?;
    let missing = missing_heads(t)?;
    Ok(json!({
        "tenant": t.slug,
        "ok": first.is_none() && missing.is_empty(),
        "rows_checked": checked,
        "records": records,
        "first_broken": first.map(|(_, v)| v),
        "missing_heads": missing,
    }))
}

/// Live records whose current version has no audit row although their entity has audited every
/// change since before their last change: the newest rows of their chain (or all of it) were
/// removed, or they were written with triggers off. One entry per entity: how many records, and
/// the first.
/// `missing_heads` for one entity of a batched log: its view is read once (the versions of each
/// record, hashed here) instead of once per record, which has no index to find a record by.
fn missing_heads_batched(
    t: &Tenant,
    entity: &str,
    since: Option<TimestampWithTimeZone>,
) -> Result<Option<Value>> {
    let mut versions: std::collections::HashMap<[u8; 16], (i32, Vec<i32>)> = Default::default();
    let audit_sql = format!(
        "SELECT record_id, record_version FROM {} WHERE entity = $1 AND record_version IS NOT NULL",
        audit_table(t)
    );
    let rows_sql = format!(
        "SELECT \"id\", \"_version\" FROM {} e WHERE ($1::timestamptz IS NULL OR e.\"updated_at\" > $1) \
         ORDER BY \"id\"",
        t.catalog(entity)
    );
    let (mut count, mut first): (i64, Option<(Uuid, i32, Option<i32>)>) = (0, None);
    Spi::connect(|c| {
        let mut cursor = c.open_cursor(&audit_sql, &[entity.into()]);
        loop {
            let batch = cursor.fetch(10_000)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                if let (Some(id), Some(v)) = (r.get::<Uuid>(1)?, r.get::<i32>(2)?) {
                    let e = versions.entry(*id.as_bytes()).or_insert((v, Vec::new()));
                    e.0 = e.0.max(v);
                    e.1.push(v);
                }
            }
        }
        let mut cursor = c.open_cursor(&rows_sql, &[since.into()]);
        loop {
            let batch = cursor.fetch(10_000)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                let (Some(id), Some(v)) = (r.get::<Uuid>(1)?, r.get::<i32>(2)?) else {
                    continue;
                };
                let known = versions.get(id.as_bytes());
                if known.is_some_and(|(_, vs)| vs.contains(&v)) {
                    continue;
                }
                count += 1;
                if first.is_none() {
                    first = Some((id, v, known.map(|(m, _)| *m)));
                }
            }
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(spi_err)?;
    Ok(first.map(|(id, version, newest)| {
        json!({
            "entity": entity,
            "records": count,
            "first": {
                "record_id": id.to_string(),
                "version": version,
                "newest_audited_version": newest,
                "problem": missing_head_error(version, newest),
            },
        })
    }))
}

fn missing_heads(t: &Tenant) -> Result<Vec<Value>> {
    let versions_sql = format!(
        "SELECT entity, coalesce((definition->>'audit')::boolean, true), changed_at FROM {} \
         WHERE definition IS NOT NULL ORDER BY entity, version",
        t.catalog("_udm_entity")
    );
    let mut versions: std::collections::HashMap<
        String,
        Vec<(bool, Option<TimestampWithTimeZone>)>,
    > = Default::default();
    Spi::connect(|c| {
        for r in c.select(&versions_sql, None, &[])? {
            versions
                .entry(r.get::<String>(1)?.unwrap_or_default())
                .or_default()
                .push((r.get::<bool>(2)?.unwrap_or(true), r.get(3)?));
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .map_err(spi_err)?;
    let audit = audit_table(t);
    let batched = crate::audit::batch::is_batched(t);
    let mut out = Vec::new();
    for e in catalog::active_entities(t)? {
        if e.status != catalog::Status::Active || !e.def.audit {
            continue;
        }
        if !crate::access::reads_entity_audit(t, &e)? {
            continue;
        }
        let since = match audited_since(versions.get(&e.def.slug).map_or(&[][..], |v| v)) {
            AuditedSince::Off => continue,
            AuditedSince::Always => None,
            AuditedSince::Since(at) => at,
        };
        if batched {
            out.extend(missing_heads_batched(t, &e.def.slug, since)?);
            continue;
        }
        let sql = format!(
            "SELECT count(*) OVER (), e.\"id\"::text, e.\"_version\", \
               (SELECT max(a.record_version) FROM {audit} a WHERE a.record_id = e.\"id\" AND a.entity = $1) \
             FROM {} e \
             WHERE ($2::timestamptz IS NULL OR e.\"updated_at\" > $2) \
               AND NOT EXISTS (SELECT 1 FROM {audit} a WHERE a.record_id = e.\"id\" AND a.entity = $1 \
                                 AND a.record_version = e.\"_version\") \
             ORDER BY e.\"id\" LIMIT 1",
            t.catalog(&e.def.slug)
        );
        Spi::connect(|c| {
            for r in c.select(&sql, None, &[e.def.slug.as_str().into(), since.into()])? {
                let version = r.get::<i32>(3)?.unwrap_or(0);
                let newest = r.get::<i32>(4)?;
                out.push(json!({
                    "entity": e.def.slug,
                    "records": r.get::<i64>(1)?.unwrap_or(0),
                    "first": {
                        "record_id": r.get::<String>(2)?,
                        "version": version,
                        "newest_audited_version": newest,
                        "problem": missing_head_error(version, newest),
                    },
                }));
            }
            Ok::<_, pgrx::spi::Error>(())
        })
        .map_err(spi_err)?;
    }
    Ok(out)
}

// ------------------------------------------------------------------ reports

fn critical_fields(t: &Tenant) -> Result<Value> {
    let mut m = Map::new();
    for e in catalog::active_entities(t)? {
        let names: Vec<&str> = e
            .def
            .fields
            .iter()
            .filter(|f| f.critical)
            .map(|f| f.name.as_str())
            .collect();
        if !names.is_empty() {
            m.insert(e.def.slug.clone(), json!(names));
        }
    }
    Ok(Value::Object(m))
}

pub fn report(
    kind: &str,
    from: TimestampWithTimeZone,
    to: TimestampWithTimeZone,
    options: &Value,
) -> Result<Value> {
    crate::limits::check_spec(options, "udm_audit_report options")?;
    let kind = ReportKind::parse(kind)?;
    let o = parse_report_options(kind, options)?;
    let t = catalog::current_tenant()?;
    let audit = audit_table(&t);
    let critical = critical_fields(&t)?;
    // a user given by email or id: what was recorded for them (their id, or older rows' email)
    let users: Option<Vec<String>> = o
        .user
        .as_deref()
        .map(crate::access::users::recorded_as)
        .transpose()?;
    // $1 from, $2 to, $3 user, $4 entity, $5 record id, $6 critical fields, $7 limit
    let filter = "a.changed_at >= $1 AND a.changed_at < $2 \
                  AND ($3::text[] IS NULL OR a.user_id = ANY ($3::text[])) \
                  AND ($4::text IS NULL OR a.entity = $4) \
                  AND ($5::uuid IS NULL OR a.record_id = $5)";
    let is_critical = "EXISTS (SELECT 1 FROM jsonb_array_elements_text($6::jsonb -> a.entity) AS c(f) WHERE c.f = ANY (a.changed_fields))";
    let record: Option<Uuid> = o
        .record_id
        .as_deref()
        .and_then(|r| uuid::Uuid::parse_str(r).ok())
        .map(|u| Uuid::from_bytes(*u.as_bytes()));
    let args = |limit: Option<i64>| {
        let mut a: Vec<pgrx::datum::DatumWithOid> = vec![
            from.into(),
            to.into(),
            users.clone().into(),
            o.entity.clone().into(),
            record.into(),
            JsonB(critical.clone()).into(),
        ];
        if let Some(l) = limit {
            a.push(l.into());
        }
        a
    };
    let summary_sql = format!(
        "SELECT count(*), count(DISTINCT a.user_id), count(DISTINCT split_part(a.entity, '.', 1)), \
           count(*) FILTER (WHERE {is_critical}), \
           coalesce((SELECT jsonb_object_agg(action, n) FROM (SELECT action, count(*) AS n FROM {audit} a WHERE {filter} GROUP BY action) x), '{{}}'), \
           coalesce((SELECT jsonb_object_agg(entity, n) FROM (SELECT entity, count(*) AS n FROM {audit} a WHERE {filter} GROUP BY entity) x), '{{}}') \
         FROM {audit} a WHERE {filter}"
    );
    let details_sql = format!(
        "SELECT a.audit_id, a.changed_at, a.user_id, a.action, a.entity, a.record_id::text, a.record_version, \
           a.changed_fields, a.old_data, a.new_data, {is_critical}, a.txid, a.entity_version \
         FROM {audit} a WHERE {filter} ORDER BY a.audit_id LIMIT $7"
    );
    let (summary, details) = Spi::connect(|c| {
        let mut summary = json!({});
        for r in c.select(&summary_sql, None, &args(None))? {
            summary = json!({
                "total_changes": r.get::<i64>(1)?.unwrap_or(0),
                "users_active": r.get::<i64>(2)?.unwrap_or(0),
                "entities_modified": r.get::<i64>(3)?.unwrap_or(0),
                "critical_changes": r.get::<i64>(4)?.unwrap_or(0),
                "by_action": r.get::<JsonB>(5)?.map(|j| j.0),
                "by_entity": r.get::<JsonB>(6)?.map(|j| j.0),
            });
        }
        let mut details = Vec::new();
        if kind != ReportKind::Summary {
            for r in c.select(&details_sql, None, &args(Some(i64::from(o.limit))))? {
                let at: Option<TimestampWithTimeZone> = r.get(2)?;
                details.push((
                    json!({
                        "event_id": r.get::<i64>(1)?,
                        "at": at.map(|a| a.to_iso_string()),
                        "user": r.get::<String>(3)?,
                        "action": r.get::<String>(4)?.unwrap_or_default(),
                        "entity": r.get::<String>(5)?.unwrap_or_default(),
                        "record_id": r.get::<String>(6)?,
                        "version": r.get::<i32>(7)?,
                        "critical": r.get::<bool>(11)?.unwrap_or(false),
                        "txid": r.get::<i64>(12)?,
                    }),
                    changed_list(r.get::<Vec<Option<String>>>(8)?),
                    r.get::<RawJsonb>(9)?,
                    r.get::<RawJsonb>(10)?,
                    r.get::<i32>(13)?,
                ));
            }
        }
        Ok::<_, pgrx::spi::Error>((summary, details))
    })
    .map_err(spi_err)?;
    // summaries name values: without the fields the session's role may not read
    let mut hidden = Hidden::of(&t)?;
    let mut names = crate::access::users::Names::new(&t);
    let mut rows = Vec::with_capacity(details.len());
    for (mut row, mut changed, mut old, mut new, version) in details {
        if let Some(u) = row["user"].as_str().map(str::to_string) {
            row["user"] = json!(names.show(&u)?);
        }
        let action = row["action"].as_str().unwrap_or_default().to_string();
        let entity = row["entity"].as_str().unwrap_or_default().to_string();
        if let Some(h) = hidden.as_mut() {
            h.strip(&entity, version, &mut [&mut old, &mut new], &mut changed)?;
        }
        row["change_summary"] = json!(change_summary(
            &action,
            &entity,
            old.as_ref(),
            new.as_ref(),
            &changed
        )?);
        row["changed_fields"] = json!(changed);
        rows.push(row);
    }
    let details = rows;
    let mut out = json!({
        "report_type": options_kind_name(kind),
        "tenant": t.slug,
        "period": {"from": from.to_iso_string(), "to": to.to_iso_string()},
        "summary": summary,
    });
    if kind != ReportKind::Summary {
        out["truncated"] = json!(details.len() as u32 >= o.limit);
        out["details"] = Value::Array(details);
    }
    if let Some(u) = &o.user {
        out["user"] = json!(u);
    }
    Ok(out)
}

fn options_kind_name(k: ReportKind) -> &'static str {
    match k {
        ReportKind::Summary => "summary",
        ReportKind::UserActivity => "user_activity",
        ReportKind::RecordHistory => "record_history",
        ReportKind::Changes => "changes",
    }
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn udm_history(
    entity: &str,
    id: Uuid,
) -> TableIterator<
    'static,
    (
        name!(version, Option<i32>),
        name!(action, String),
        name!(changed_fields, Option<Vec<Option<String>>>),
        name!(summary, String),
        name!(user_id, String),
        name!(db_role, String),
        name!(changed_at, Option<TimestampWithTimeZone>),
        name!(txid, i64),
        name!(event_id, i64),
        name!(data, Option<RawJsonb>),
    ),
> {
    let rows = history(entity, id).or_raise();
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.version,
            r.action,
            r.changed_fields,
            r.summary,
            r.user_id,
            r.db_role,
            r.changed_at,
            r.txid,
            r.event_id,
            r.data,
        )
    }))
}

#[pg_extern(volatile)]
fn udm_record_at(entity: &str, id: Uuid, at: TimestampWithTimeZone) -> Option<RawJsonb> {
    record_at(entity, id, at).or_raise()
}

#[pg_extern(volatile)]
fn udm_rollback(
    entity: Option<&str>,
    id: Option<Uuid>,
    version: Option<i32>,
    fields: default!(Option<Vec<Option<String>>>, "NULL"),
) -> JsonB {
    let entity = crate::error::required(entity, "entity");
    let id = crate::error::required(id, "id");
    let version = crate::error::required(version, "version");
    let fields = fields.map(|f| crate::error::text_list(Some(f), "fields"));
    JsonB(rollback(entity, id, version, fields).or_raise())
}

#[pg_extern(volatile)]
fn udm_rollback_transaction(txid: i64, force: default!(bool, false)) -> JsonB {
    JsonB(rollback_transaction(txid, force).or_raise())
}

#[pg_extern(volatile)]
fn udm_audit_verify() -> JsonB {
    JsonB(verify().or_raise())
}

#[pg_extern(volatile)]
fn udm_audit_report(
    kind: &str,
    from: TimestampWithTimeZone,
    to: TimestampWithTimeZone,
    options: default!(JsonB, "'{}'"),
) -> JsonB {
    JsonB(report(kind, from, to, &options.0).or_raise())
}
