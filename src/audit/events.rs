//! Change events for workflows. The tenant's audit log is its outbox: every change's audit row
//! (written in the changing transaction) is an event whose id is the audit id. Consumers learn of
//! new events from `udm_event_heads` (a sequence read per tenant; writers pay nothing) or, with
//! `udm.notify_changes = on`, from the `pg_notify` the audit trigger sends on the tenant's
//! channel (delivered at commit; it serialises notifying commits, hence off by default).
//!
//! Delivery order and completeness: a writing transaction holds a shared advisory lock keyed by a
//! lower bound of the ids it writes (see `audit::take_horizon_lock`). `udm_events` reads the id
//! sequence first, then the held keys, and delivers only ids below both: an event is never
//! delivered while an event with a smaller id may still commit, so a consumer that resumes after
//! its last acknowledged id misses nothing. Changes to the same record are delivered in commit
//! order (the second writer waits for the first to commit before it gets its id).

use crate::access::security::{actor, as_owner};
use crate::audit::{audit_table, horizon_tag};
use crate::catalog::{self, Tenant};
use crate::error::{spi_err, OrRaise, Result};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::rc::Rc;
use udm_core::audit::ACTIONS;
use udm_core::error::{SqlState, UdmError};
use udm_core::ident::printable;
use udm_core::ident::quote_ident;

pub const MAX_EVENTS: i32 = 10_000;
/// The first range of audit ids `udm_events` reads (widened while it holds too few events).
const EVENT_WINDOW: i64 = 1024;

struct Subscription {
    entity: String,
    target: String,
    actions: Vec<String>,
    condition: Option<Value>,
}

/// The tenant's tables of subscriptions and consumers, created on first use (most tenants never
/// subscribe; creating them with every tenant would cost every onboarding two tables).
pub fn ensure_tables(t: &Tenant) -> Result<()> {
    if has_table(t, SUBSCRIPTIONS) && has_table(t, CONSUMERS) {
        return Ok(());
    }
    crate::spi::create_on_first_use(&t.schema, "events tables", &tables_sql(&t.schema, &t.role))
}

/// The DDL of a tenant's subscriptions and consumers.
pub fn tables_sql(schema: &str, role: &str) -> String {
    let s = quote_ident(schema);
    let r = quote_ident(role);
    format!(
        "CREATE TABLE IF NOT EXISTS {s}.\"{SUBSCRIPTIONS}\" (\
           entity text NOT NULL, \
           target text NOT NULL, \
           actions text[] NOT NULL, \
           condition jsonb, \
           created_by text NOT NULL, \
           created_at timestamp with time zone NOT NULL DEFAULT now(), \
           PRIMARY KEY (entity, target)); \
         GRANT SELECT ON {s}.\"{SUBSCRIPTIONS}\" TO {r}; \
         CREATE TABLE IF NOT EXISTS {s}.\"{CONSUMERS}\" (\
           consumer text PRIMARY KEY, \
           last_event bigint NOT NULL, \
           acked_by text NOT NULL, \
           acked_at timestamp with time zone NOT NULL DEFAULT now()); \
         GRANT SELECT ON {s}.\"{CONSUMERS}\" TO {r};"
    )
}

const SUBSCRIPTIONS: &str = "_udm_subscription";
const CONSUMERS: &str = "_udm_consumer";

fn has_table(t: &Tenant, name: &str) -> bool {
    t.relation(name).is_some()
}

fn subscriptions(t: &Tenant) -> Result<Vec<Subscription>> {
    if !has_table(t, SUBSCRIPTIONS) {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT entity, target, actions, condition FROM {} ORDER BY entity, target",
        t.catalog(SUBSCRIPTIONS)
    );
    Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(&sql, None, &[])? {
            out.push(Subscription {
                entity: r.get::<String>(1)?.unwrap_or_default(),
                target: r.get::<String>(2)?.unwrap_or_default(),
                actions: r
                    .get::<Vec<Option<String>>>(3)?
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .collect(),
                condition: r.get::<JsonB>(4)?.map(|j| j.0).filter(|v| !v.is_null()),
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

/// A subscription condition compiled and prepared.
type ConditionPlan = Rc<(udm_core::query::Template, crate::query::rawspi::Plan)>;

thread_local! {
    /// (definition generation, compiled conditions by tenant, entity and condition)
    static CONDITIONS: crate::cache::Cache<String, ConditionPlan> =
        crate::cache::Lru::new("event conditions");
}

/// The compiled, prepared condition of a subscription (cached until a definition changes).
fn condition_plan(t: &Tenant, entity: &str, condition: &Value) -> Result<ConditionPlan> {
    let key = format!("{}|{entity}|{condition}", t.slug);
    let g = catalog::generation();
    crate::cache::sync(&CONDITIONS, g);
    if let Some(p) = crate::cache::get(&CONDITIONS, &key) {
        return Ok(p);
    }
    let m = crate::query::model(t)?;
    // the image is read from the audit row by its id inside the statement: it never leaves the
    // database (any depth, any size)
    let image = |p: &str| {
        format!(
            "(SELECT {} FROM {} WHERE audit_id = {p}::bigint{})",
            crate::audit::record_image_sql("coalesce(new_data, old_data)"),
            audit_table(t),
            crate::audit::ids_sql(t, p, p)
        )
    };
    let tpl = udm_core::query::image_condition(&*m, entity, condition, &image)
        .map_err(|e| e.context(format!("condition of a subscription to \"{entity}\"")))?;
    let plan = crate::query::rawspi::prepare(&tpl.sql, tpl.params.len() + 1)?;
    let p = Rc::new((tpl, plan));
    let bytes = p.1.bytes() + p.0.sql.len() * 2 + key.len();
    crate::cache::put_scoped(&CONDITIONS, t.scope(), key, p.clone(), bytes);
    Ok(p)
}

/// Whether the event `event_id` (an audit row of the subscription's entity) matches the
/// subscription's condition, evaluated on the record image in the audit row.
fn matches(t: &Tenant, s: &Subscription, event_id: i64) -> Result<bool> {
    let Some(cond) = &s.condition else {
        return Ok(true);
    };
    let p = condition_plan(t, &s.entity, cond)?;
    let spec = json!({ "filters": cond });
    let mut args = udm_core::query::bind(&spec, &p.0)?;
    args.push(Some(event_id.to_string()));
    let d = crate::query::rawspi::first_datum(&p.1, &args, true)?;
    Ok(d.is_some_and(|d| d.value() != 0))
}

pub fn subscribe(
    entity: &str,
    actions: Vec<String>,
    target: &str,
    condition: Option<&Value>,
) -> Result<Value> {
    if let Some(c) = condition {
        crate::limits::check_spec(c, "udm_subscribe condition")?;
    }
    let t = catalog::current_tenant()?;
    catalog::entity(&t, entity)?;
    // subscriptions wire the tenant's workflows: tenant configuration, like definitions
    crate::access::require_manage(
        &t,
        &format!("subscribe \"{}\" to entity \"{entity}\"", printable(target)),
    )?;
    if actions.is_empty() {
        return Err(
            UdmError::invalid("udm_subscribe: actions must not be empty")
                .hint("actions are INSERT, UPDATE, DELETE, ROLLBACK"),
        );
    }
    let mut acts = Vec::new();
    for a in &actions {
        let up = a.to_ascii_uppercase();
        if !ACTIONS.contains(&up.as_str()) {
            return Err(UdmError::invalid(format!(
                "udm_subscribe: unknown action \"{}\"",
                printable(a)
            ))
            .hint("actions are INSERT, UPDATE, DELETE, ROLLBACK"));
        }
        if !acts.contains(&up) {
            acts.push(up);
        }
    }
    label("target", target, "udm_subscribe", "e.g. a workflow name")?;
    let condition = condition.filter(|c| !c.is_null()).cloned();
    if let Some(c) = &condition {
        condition_plan(&t, entity, c)?; // compiles it: errors name the path
    }
    ensure_tables(&t)?;
    let sql = format!(
        "INSERT INTO {} (entity, target, actions, condition, created_by) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (entity, target) DO UPDATE SET actions = EXCLUDED.actions, condition = EXCLUDED.condition, \
           created_by = EXCLUDED.created_by, created_at = EXCLUDED.created_at",
        t.catalog(SUBSCRIPTIONS)
    );
    let who = actor();
    as_owner(|| {
        crate::spi::run(
            &sql,
            &[
                entity.into(),
                target.into(),
                acts.clone().into(),
                condition.clone().map(JsonB).into(),
                who.as_str().into(),
            ],
        )
    })?;
    Ok(json!({"entity": entity, "target": target, "actions": acts, "condition": condition}))
}

pub fn unsubscribe(entity: &str, target: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    crate::access::require_manage(
        &t,
        &format!(
            "unsubscribe \"{}\" from entity \"{}\"",
            printable(target),
            printable(entity)
        ),
    )?;
    ensure_tables(&t)?;
    let sql = format!(
        "DELETE FROM {} WHERE entity = $1 AND target = $2",
        t.catalog(SUBSCRIPTIONS)
    );
    let n = as_owner(|| {
        crate::spi::connect_mut("DELETE", |c| {
            c.update(&sql, None, &[entity.into(), target.into()])
                .map(|r| r.len())
        })
        .map_err(spi_err)
    })?;
    if n == 0 {
        return Err(UdmError::new(
            SqlState::UndefinedObject,
            format!(
                "\"{}\" is not subscribed to entity \"{}\"",
                printable(target),
                printable(entity)
            ),
        ));
    }
    Ok(json!({"entity": entity, "target": target, "unsubscribed": true}))
}

/// The highest event id that can be delivered: below every id a running writer may still
/// commit.
fn horizon(t: &Tenant) -> Result<i64> {
    // on a Citus coordinator the log, its sequence and its writers' locks are on the tenant's node
    if crate::citus::log_elsewhere(t) {
        return as_owner(|| crate::citus::events::horizon_on_node(t));
    }
    local_horizon(t)
}

/// The horizon of the tenant's log on this node: the last id given out, or below it the smallest
/// a writer still holds (its horizon lock, `audit::hold_horizon`).
pub(crate) fn local_horizon(t: &Tenant) -> Result<i64> {
    as_owner(|| {
        let last = if super::batch::is_batched(t) {
            super::batch::last_event_sql(t)
        } else {
            format!(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {}",
                t.catalog("_udm_audit_audit_id_seq")
            )
        };
        let seq = crate::spi::select_one::<i64>(&last, &[])?.unwrap_or(0);
        let held = crate::spi::select_one::<Vec<i64>>(
            "SELECT array_agg(((l.classid::bigint & 65535) << 32) | l.objid::bigint) FROM pg_catalog.pg_locks l \
             WHERE l.locktype = 'advisory' AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
               AND (l.classid::bigint >> 16) = $1",
            &[horizon_tag(&t.schema).into()],
        )?
        .unwrap_or_default();
        // a writer's key is the last id before its own: everything up to it is settled
        Ok(udm_core::audit::horizon(seq, &held))
    })
}

/// The event stream is read on the primary: its order rests on the horizon locks writers hold
/// there (`horizon`), which a standby does not see. Reading there, an event could be delivered
/// while one with a smaller id was still uncommitted on the primary, and a consumer that resumes
/// after it would never see that one.
pub(crate) fn primary_only(call: &str) -> Result<()> {
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("{call} cannot run on a standby (recovery is in progress): events are read on the primary"),
        )
        .detail("delivery order rests on locks that writing transactions hold on the primary, which a standby does not see")
        .hint("connect event consumers and listeners to the primary"));
    }
    Ok(())
}

pub fn events(after: i64, limit: i32) -> Result<Value> {
    let t = catalog::current_tenant()?;
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!("udm_events: limit must be from 1 to {MAX_EVENTS}, got {limit}"),
        ));
    }
    primary_only("udm_events")?;
    let subs = subscriptions(&t)?;
    let (rows, h) = read_events(&t, after, limit, false)?;
    let rows = rows.into_iter().map(|(r, _)| r).collect();
    deliver(&t, &subs, rows, after, h)
}

/// The events after `after` that the caller reads (row-level security of the audit log
/// applies), at most `limit`, up to the horizon; with `old`, each with its old image. Returns
/// them and the horizon: when fewer than `limit` come back, every event up to the horizon was
/// read (a reader may continue after the horizon).
pub fn read_events(
    t: &Tenant,
    after: i64,
    limit: i32,
    old: bool,
) -> Result<(Vec<EventWithImage>, i64)> {
    read_events_with(t, after, limit, old, Readers::AuditPolicy).map(|(rows, h, _)| (rows, h))
}

/// Who may see an event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// The audit log's row-level security: the role reads the entity and every field of it
    /// (`udm_events` hands out whole rows).
    AuditPolicy,
    /// The role reads the entity (and the record, where the entity is scoped): for readers
    /// that leave out of each event what the role may not read (`access::event_visible`), as
    /// subscriptions do.
    Entity,
}

/// `read_events`, with the readers of the events chosen, and whether the read stopped at `limit`
/// rows (more may be ready); with `Readers::Entity` the log is read as udm's owner and each row
/// kept only when `access::event_visible` says so (outside the owner's rights: a scoped entity's
/// own policy decides as for a plain SELECT).
pub fn read_events_with(
    t: &Tenant,
    after: i64,
    limit: i32,
    old: bool,
    readers: Readers,
) -> Result<(Vec<EventWithImage>, i64, bool)> {
    let read = |rows: &Vec<EventWithImage>| rows.len() as i64 >= i64::from(limit);
    if readers == Readers::Entity {
        let (rows, h) = crate::access::security::as_owner(|| read_events_as(t, after, limit, old))?;
        let full = read(&rows);
        // a full read stops short of the horizon: the readers continue after its last row,
        // whether that row was kept or not
        let h = match rows.last() {
            Some((r, _)) if full => r.0,
            _ => h,
        };
        let mut kept = Vec::with_capacity(rows.len());
        for (r, image) in rows {
            if crate::access::event_visible(t, &r.1, uuid_of(&r.2))? {
                kept.push((r, image));
            }
        }
        return Ok((kept, h, full));
    }
    let (rows, h) = read_events_as(t, after, limit, old)?;
    let full = read(&rows);
    Ok((rows, h, full))
}

/// A record id as the audit log's text gives it (the nil UUID for anything else, which names no
/// record).
pub fn uuid_of(text: &str) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(udm_core::ids::uuid_bytes(text).unwrap_or([0u8; 16]))
}

fn read_events_as(
    t: &Tenant,
    after: i64,
    limit: i32,
    old: bool,
) -> Result<(Vec<EventWithImage>, i64)> {
    let h = horizon(t)?;
    let sql = format!(
        "SELECT audit_id, entity, record_id::text, action, record_version, changed_fields, user_id, \
           changed_at, txid{} \
         FROM {} WHERE audit_id > $1::bigint AND audit_id <= $2::bigint{} ORDER BY audit_id LIMIT $3::bigint",
        if old { ", old_data" } else { "" },
        audit_table(t),
        crate::audit::ids_sql(t, "$1", "$2")
    );
    let plan = crate::query::rawspi::prepare(&sql, 3)?;
    // Read with a snapshot taken after the horizon: every event at or below it was written by a
    // transaction that has committed (and is in this snapshot) or aborted. The calling
    // statement's snapshot is older: an event committed between it and the horizon would be
    // passed over, and delivered never.
    let snapshot = unsafe { pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()) };
    let mut rows = Vec::new();
    // audit ids are read in ranges (BRIN): a window after `after`, widened while it holds fewer
    // events than asked for (ids of rolled-back writes leave gaps) and the horizon is further on
    let (mut lo, mut width) = (after, (i64::from(limit) * 4).max(EVENT_WINDOW));
    let mut failed = None;
    loop {
        let hi = h.min(lo.saturating_add(width));
        let want = i64::from(limit) - rows.len() as i64;
        if hi <= lo || want <= 0 {
            break;
        }
        let args = [
            Some(lo.to_string()),
            Some(hi.to_string()),
            Some(want.to_string()),
        ];
        if let Err(e) = crate::query::rawspi::rows_at(&plan, &args, snapshot, |desc, tuples| {
            for &tup in tuples {
                let image = if old {
                    let mut null = false;
                    let d = unsafe { pg_sys::SPI_getbinval(tup, desc, 10, &mut null) };
                    if null {
                        None
                    } else {
                        Some(unsafe { crate::json::read(d) }?)
                    }
                } else {
                    None
                };
                rows.push((unsafe { event_row(tup, desc) }, image));
            }
            Ok(())
        }) {
            failed = Some(e);
            break;
        }
        if rows.len() as i64 >= i64::from(limit) || hi >= h {
            break;
        }
        lo = hi;
        width = width.saturating_mul(4);
    }
    unsafe { pg_sys::UnregisterSnapshot(snapshot) };
    match failed {
        Some(e) => Err(e),
        None => Ok((rows, h)),
    }
}

/// An event row and, when asked for, its image before the change.
pub type EventWithImage = (EventRow, Option<Value>);

/// An event row as `udm_events` reads it.
pub type EventRow = (
    i64,
    String,
    String,
    String,
    Option<i32>,
    Option<Vec<Option<String>>>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// One row of the events query (its columns in order), read from the tuple.
unsafe fn event_row(tup: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> EventRow {
    unsafe {
        let col = |i: i32| {
            let mut null = false;
            let d = pg_sys::SPI_getbinval(tup, desc, i, &mut null);
            (d, null)
        };
        let (d1, n1) = col(1);
        let (d2, n2) = col(2);
        let (d3, n3) = col(3);
        let (d4, n4) = col(4);
        let (d5, n5) = col(5);
        let (d6, n6) = col(6);
        let (d7, n7) = col(7);
        let (d8, n8) = col(8);
        let (d9, n9) = col(9);
        let at = pgrx::datum::TimestampWithTimeZone::from_datum(d8, n8);
        (
            i64::from_datum(d1, n1).unwrap_or(0),
            String::from_datum(d2, n2).unwrap_or_default(),
            String::from_datum(d3, n3).unwrap_or_default(),
            String::from_datum(d4, n4).unwrap_or_default(),
            i32::from_datum(d5, n5),
            Vec::<Option<String>>::from_datum(d6, n6),
            String::from_datum(d7, n7),
            at.map(|a| a.to_iso_string()),
            i64::from_datum(d9, n9),
        )
    }
}

/// The events of `rows` with the targets whose subscriptions they match.
fn deliver(
    t: &Tenant,
    subs: &[Subscription],
    rows: Vec<EventRow>,
    after: i64,
    h: i64,
) -> Result<Value> {
    let mut events = Vec::with_capacity(rows.len());
    let mut last = after;
    let mut names = crate::access::users::Names::new(t);
    for (id, entity, record, action, version, changed, user, at, txid) in rows {
        let mut targets = Vec::new();
        for s in subs
            .iter()
            .filter(|s| s.entity == entity && s.actions.contains(&action))
        {
            if matches(t, s, id)? {
                targets.push(s.target.clone());
            }
        }
        last = id;
        events.push(json!({
            "event_id": id, "entity": entity, "id": record, "action": action, "version": version,
            "changed_fields": changed, "user_id": user.map(|u| names.show(&u)).transpose()?, "at": at, "txid": txid, "targets": targets,
        }));
    }
    Ok(json!({"events": events, "last_event": last, "horizon": h}))
}

/// A name callers choose for a subscription target or a consumer (`price-review`,
/// `tz-worker`): 1 to 200 printable characters.
fn label(what: &str, name: &str, call: &str, example: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(UdmError::invalid(format!(
            "{call}: {what} \"{}\" is not valid",
            printable(name)
        ))
        .hint(format!(
            "a {what} name ({example}) is 1 to 200 printable characters"
        )));
    }
    Ok(())
}

fn consumer_name(consumer: &str, call: &str) -> Result<()> {
    label(
        "consumer",
        consumer,
        call,
        "e.g. a worker's name, tz-worker",
    )
}

fn consumer_position(t: &Tenant, consumer: &str) -> Result<i64> {
    Ok(consumer_row(t, consumer)?.map_or(0, |(p, _)| p))
}

/// A consumer's (last acknowledged event, who acknowledged it).
fn consumer_row(t: &Tenant, consumer: &str) -> Result<Option<(i64, String)>> {
    if !has_table(t, CONSUMERS) {
        return Ok(None);
    }
    let sql = format!(
        "SELECT last_event, acked_by FROM {} WHERE consumer = $1",
        t.catalog(CONSUMERS)
    );
    Spi::connect(|c| {
        let mut out = None;
        for r in c.select(&sql, Some(1), &[consumer.into()])? {
            out = Some((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
}

pub fn consume(consumer: &str, limit: i32) -> Result<Value> {
    consumer_name(consumer, "udm_consume")?;
    let t = catalog::current_tenant()?;
    primary_only("udm_consume")?;
    let after = consumer_position(&t, consumer)?;
    let mut out = events(after, limit)?;
    out["consumer"] = json!(consumer);
    out["acked"] = json!(after);
    Ok(out)
}

pub fn ack(consumer: &str, event_id: i64) -> Result<Value> {
    consumer_name(consumer, "udm_ack")?;
    let t = catalog::current_tenant()?;
    let row = consumer_row(&t, consumer)?;
    let who = actor();
    // a consumer's cursor is its user's: others (but managers) may not move it
    if let Some((_, owner)) = &row {
        if *owner != who && !crate::access::over_records(&t)? {
            let mut names = crate::access::users::Names::new(&t);
            return Err(UdmError::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "permission denied: consumer \"{consumer}\" of tenant \"{}\" belongs to \"{}\", not to \"{}\"",
                    t.slug,
                    names.show(owner)?,
                    names.show(&who)?
                ),
            )
            .hint("each worker acknowledges with its own consumer name; a member whose role manages the tenant may move any consumer"));
        }
    }
    let current = row.map_or(0, |(p, _)| p);
    if event_id < current {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("consumer \"{consumer}\" already acknowledged event {current}; cannot go back to {event_id}"),
        )
        .hint("acknowledge the last event you processed; acknowledgements only move forward"));
    }
    let h = horizon(&t)?;
    if event_id > h {
        return Err(UdmError::new(
            SqlState::InvalidParameterValue,
            format!("event {event_id} has not been delivered yet (events are delivered up to {h})"),
        )
        .hint("acknowledge an event_id returned by udm_consume or udm_events"));
    }
    ensure_tables(&t)?;
    let sql = format!(
        "INSERT INTO {} (consumer, last_event, acked_by) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer) DO UPDATE SET last_event = EXCLUDED.last_event, acked_at = EXCLUDED.acked_at",
        t.catalog(CONSUMERS)
    );
    as_owner(|| {
        crate::spi::run(
            &sql,
            &[consumer.into(), event_id.into(), who.as_str().into()],
        )
    })?;
    Ok(json!({"consumer": consumer, "last_event": event_id}))
}

// ------------------------------------------------------------------ SQL surface

#[pg_extern(volatile)]
fn udm_subscribe(
    entity: Option<&str>,
    actions: Option<Vec<Option<String>>>,
    target: Option<&str>,
    condition: default!(Option<JsonB>, "NULL"),
) -> JsonB {
    let entity = crate::error::required(entity, "entity");
    let actions = crate::error::text_list(actions, "actions");
    let target = crate::error::required(target, "target");
    JsonB(subscribe(entity, actions, target, condition.as_ref().map(|j| &j.0)).or_raise())
}

#[pg_extern(volatile)]
fn udm_unsubscribe(entity: &str, target: &str) -> JsonB {
    JsonB(unsubscribe(entity, target).or_raise())
}

#[pg_extern(volatile)]
fn udm_events(after: default!(i64, 0), limit: default!(i32, 100)) -> JsonB {
    JsonB(events(after, limit).or_raise())
}

#[pg_extern(volatile)]
fn udm_consume(consumer: &str, limit: default!(i32, 100)) -> JsonB {
    JsonB(consume(consumer, limit).or_raise())
}

#[pg_extern(volatile)]
fn udm_ack(consumer: &str, event_id: i64) -> JsonB {
    JsonB(ack(consumer, event_id).or_raise())
}

/// How far each named tenant's event ids have gone, for watchers that wake subscribers without
/// notifications (udm-server polls this on one connection): `head` is the last audit id handed out
/// (events up to it may still be uncommitted: `udm_events` delivers only up to its horizon), and
/// `channel` the tenant's LISTEN channel. Only tenants the caller may use are answered; an unknown
/// tenant and one the caller is not a member of are both left out. Reads one sequence per tenant,
/// no table: cheap enough to ask every few milliseconds (on Citus, the newest id of each log).
pub fn event_heads(slugs: &[String]) -> Result<Vec<(String, i64, String)>> {
    if slugs.len() > MAX_HEADS {
        return Err(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!(
                "udm_event_heads: at most {MAX_HEADS} tenants per call, got {}",
                slugs.len()
            ),
        )
        .hint("ask for the tenants in several calls"));
    }
    let mut found = Vec::new();
    for slug in slugs {
        let Some(t) = catalog::tenant(slug)? else {
            continue;
        };
        if catalog::require_member(&t).is_err() {
            continue;
        }
        found.push(t);
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let heads = if crate::citus::installed() {
        citus_heads(&found)?
    } else {
        sequence_heads(&found)?
    };
    Ok(found
        .iter()
        .zip(heads)
        .map(|(t, h)| (t.slug.clone(), h, t.channel.clone()))
        .collect())
}

/// The heads as the tenants' sequences have them (one statement for all): a batched log's head
/// is the last event id its newest batch can hold.
fn sequence_heads(found: &[Rc<Tenant>]) -> Result<Vec<i64>> {
    let (seqs, slots): (Vec<String>, Vec<i64>) = found
        .iter()
        .map(|t| {
            if super::batch::is_batched(t) {
                (t.catalog(super::batch::SEQ), super::batch::SLOTS)
            } else {
                (t.catalog("_udm_audit_audit_id_seq"), 1)
            }
        })
        .unzip();
    as_owner(|| {
        let plan = crate::spi::prepared(
            "SELECT coalesce(pg_catalog.pg_sequence_last_value(pg_catalog.to_regclass(q)) * m + (m - 1), 0) \
             FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS u(q, m, n) ORDER BY n",
            &[pg_sys::TEXTARRAYOID, pg_sys::INT8ARRAYOID],
            false,
        )?;
        Spi::connect(|c| {
            let mut out = Vec::with_capacity(seqs.len());
            for r in c.select(&*plan, None, &[seqs.clone().into(), slots.clone().into()])? {
                out.push(r.get::<i64>(1)?.unwrap_or(0));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .map_err(spi_err)
    })
}

/// The heads on Citus: a tenant's audit rows are written on its worker, which numbers them from
/// its own copy of the sequence (the coordinator's is not advanced), so the head is the newest id
/// in the log (one read on the tenant's node, by the audit id's index).
fn citus_heads(found: &[Rc<Tenant>]) -> Result<Vec<i64>> {
    as_owner(|| {
        found
            .iter()
            .map(|t| {
                crate::spi::select_one::<i64>(
                    &format!(
                        "SELECT coalesce(max(audit_id), 0) FROM {}",
                        t.catalog(udm_core::transfer::AUDIT)
                    ),
                    &[],
                )
                .map(|h| h.unwrap_or(0))
            })
            .collect()
    })
}

/// Tenants one `udm_event_heads` call may name.
const MAX_HEADS: usize = 10_000;

#[pg_extern(volatile)]
fn udm_event_heads(
    tenants: Vec<Option<String>>,
) -> TableIterator<
    'static,
    (
        name!(tenant, String),
        name!(head, i64),
        name!(channel, String),
    ),
> {
    let slugs: Vec<String> = tenants.into_iter().flatten().collect();
    TableIterator::new(event_heads(&slugs).or_raise())
}

/// The LISTEN channel of the current tenant's change events.
#[pg_extern(volatile)]
fn udm_events_channel() -> String {
    catalog::current_tenant().or_raise().channel.clone()
}
