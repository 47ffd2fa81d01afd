//! Entities: real tables in the tenant's schema, defined and changed at runtime.
//!
//! Every change follows one path: lock the entity's catalog row, build the new definition in
//! udm-core, let udm-core plan the DDL from the old definition to the new one, run it as the
//! extension owner, and record the new version. All of it happens in the caller's transaction,
//! so a failure leaves table and catalog as they were.

use crate::access::security::as_owner;
use crate::catalog::{self, Entity, Status, Tenant};
use crate::error::{catch_pg, raise, spi_err, OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::{json, Value};
use udm_core::ddl::{self, Step};
use udm_core::definition::{
    apply_field_changes, junction_name, parse_field, parse_index, parse_rule, EntityDef, FieldDef,
    Source, Stage, Toggle,
};
use udm_core::error::name_list;
use udm_core::ident::{printable, qualified, quote_ident, validate_slug, SlugKind};
use udm_core::locks::LockScope;
use udm_core::related_rules::WithEntity;
use udm_core::rules::{rename_in_rule, rule_fields};
use udm_core::types::FieldType;

// ------------------------------------------------------------------ running DDL

pub fn busy(entity: &str) -> UdmError {
    UdmError::new(
        SqlState::LockNotAvailable,
        format!(
            "entity \"{entity}\" is busy: the definition change waited {} ms (udm.ddl_lock_timeout) for a lock another transaction holds",
            crate::guc::DDL_LOCK_TIMEOUT_MS.get()
        ),
    )
    .hint("retry when that transaction ends; pg_stat_activity shows long-running transactions")
}

fn exec_ddl(entity: &str, sql: &str) -> Result<()> {
    catch_pg(
        || crate::spi::run(sql, &[]),
        |e| {
            if e.code == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
                raise(busy(entity));
            }
            if e.code == PgSqlErrorCode::ERRCODE_CHECK_VIOLATION {
                e.raise_with(&format!("entity \"{entity}\" cannot change"));
            }
            e.raise_with(&format!("definition change of entity \"{entity}\" failed"))
        },
    )
}

fn query_one<T: FromDatum + IntoDatum>(entity: &str, sql: &str) -> Result<Option<T>> {
    catch_pg(
        || crate::spi::select_one::<T>(sql, &[]),
        |e| {
            if e.code == PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE {
                raise(busy(entity));
            }
            e.raise_with(&format!("definition change of entity \"{entity}\" failed"))
        },
    )
}

/// Runs planned steps as the extension owner. Consecutive DDL statements go to PostgreSQL as one
/// batch; checks run on their own.
fn run_steps(entity: &str, steps: &[Step]) -> Result<()> {
    as_owner(|| {
        let mut batch = String::new();
        let flush = |batch: &mut String| -> Result<()> {
            if !batch.is_empty() {
                exec_ddl(entity, batch)?;
                batch.clear();
            }
            Ok(())
        };
        for step in steps {
            if let Step::Sql(sql) = step {
                batch.push_str(sql);
                batch.push_str(";\n");
                continue;
            }
            flush(&mut batch)?;
            match step {
                Step::Sql(_) => unreachable!("handled above"),
                Step::ConversionCheck {
                    field,
                    from,
                    to,
                    sql,
                } => {
                    let refuse = |why: String| {
                        UdmError::new(
                            SqlState::DatatypeMismatch,
                            format!("cannot change field \"{field}\" of entity \"{entity}\" from {from} to {to}: {why}"),
                        )
                        .hint("clear or fix such values first, or add a new field of the new type and copy what converts")
                    };
                    let bad = catch_pg(
                        || crate::spi::select_one::<String>(sql, &[]),
                        |e| raise(refuse(e.message)),
                    )?;
                    if let Some(v) = bad {
                        return Err(refuse(format!(
                            "the value \"{}\" would not convert unchanged",
                            printable(&v)
                        )));
                    }
                }
                Step::RequireEmpty { field, sql } => {
                    if query_one::<bool>(entity, sql)?.unwrap_or(false) {
                        return Err(UdmError::new(
                            SqlState::NotNullViolation,
                            format!("cannot add required field \"{field}\" to entity \"{entity}\": it has records and the field has no default"),
                        )
                        .hint("give the field a default, or add it as optional, fill it in, then make it required"));
                    }
                }
                Step::RequireFilled { field, column, sql } => {
                    let n = query_one::<i64>(entity, sql)?.unwrap_or(0);
                    if n > 0 {
                        return Err(UdmError::new(
                            SqlState::NotNullViolation,
                            format!("field \"{field}\" of entity \"{entity}\" cannot be required: {n} record(s) have no value"),
                        )
                        .hint(format!("fill them in first, e.g. UPDATE ... SET {} = ... WHERE {} IS NULL", quote_ident(column), quote_ident(column))));
                    }
                }
                Step::RuleHolds { key, sql } => {
                    if let Some(id) = query_one::<String>(entity, sql)? {
                        let t = catalog::current_tenant()?;
                        let e = crate::triggers::rule_violation(&t.schema, entity, key);
                        let what = match key.strip_prefix("r.") {
                            Some(rule) => format!("rule \"{rule}\" of entity \"{entity}\""),
                            None => {
                                let rule = key.split_once('.').map_or(key.as_str(), |(_, r)| r);
                                format!("the \"{rule}\" rule of a field of entity \"{entity}\"")
                            }
                        };
                        return Err(UdmError {
                            message: format!(
                                "{what} does not hold for the records there: record {id} breaks it ({})",
                                e.message
                            ),
                            ..e
                        }
                        .hint("fix that record (and any other) first, or change the rule"));
                    }
                }
                Step::DefaultCheck { field, sql } => {
                    catch_pg(
                        || crate::spi::run(sql, &[]),
                        |e| {
                            e.raise_with(&format!("the default of field \"{field}\" breaks a rule"))
                        },
                    )?;
                }
            }
        }
        flush(&mut batch)?;
        Ok(())
    })
}

// ------------------------------------------------------------------ checks across entities

/// Relation targets must be active entities of the same tenant (or the entity itself); an
/// access scope through a relation needs a target with an access scope of its own.
fn check_targets(t: &Tenant, def: &EntityDef, fields: &[&FieldDef]) -> Result<()> {
    for f in fields {
        let targets: Vec<&String> = match f.ftype {
            FieldType::Relation => f.target.iter().collect(),
            FieldType::Reference => f.targets.iter().collect(),
            _ => continue,
        };
        for target in targets {
            if *target == def.slug {
                continue;
            }
            match catalog::entity_any(t, target)? {
                Some(e) if e.status == Status::Active => {}
                Some(_) => {
                    return Err(UdmError::new(
                        SqlState::UndefinedTable,
                        format!("field \"{}\" of entity \"{}\": target entity \"{target}\" was dropped", f.name, def.slug),
                    )
                    .hint(format!("restore it with {}", udm_core::ident::sql_call("udm_restore_entity", &[target]))))
                }
                None => {
                    return Err(UdmError::new(
                        SqlState::UndefinedTable,
                        format!(
                            "field \"{}\" of entity \"{}\": target entity \"{target}\" does not exist in tenant \"{}\"",
                            f.name, def.slug, t.slug
                        ),
                    )
                    .hint(format!(
                        "relations point to entities of the same tenant; define \"{target}\" first. Entities are {}",
                        name_list(catalog::entity_slugs(t).unwrap_or_default())
                    )))
                }
            }
        }
    }
    if let Some(p) = def.access.as_ref().and_then(|a| a.parent.as_deref()) {
        if let Some(target) = def.field(p).and_then(|f| f.target.as_deref()) {
            let scoped = catalog::entity_any(t, target)?.is_some_and(|e| e.def.access.is_some());
            if !scoped {
                return Err(UdmError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!(
                        "entity \"{}\": the access scope \"{p}\" points to \"{target}\", which has no access scope",
                        def.slug
                    ),
                )
                .hint(format!(
                    "give \"{target}\" one first, e.g. {}",
                    udm_core::ident::sql_call("udm_set_access", &[target, "{\"scope\": \"self\"}"])
                )));
            }
        }
    }
    Ok(())
}

/// Fields of other active entities that point to `slug`.
fn incoming_relations(t: &Tenant, slug: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in catalog::active_entities(t)? {
        if e.def.slug == slug {
            continue;
        }
        for f in &e.def.fields {
            let hit = match f.ftype {
                FieldType::Relation => f.target.as_deref() == Some(slug),
                FieldType::Reference => f.targets.iter().any(|x| x == slug),
                _ => false,
            };
            if hit {
                out.push(format!("{}.{}", e.def.slug, f.name));
            }
        }
    }
    Ok(out)
}

/// Defaults udm-core cannot check on its own: strings PostgreSQL parses (dates, times, uuids,
/// intervals) and numbers that must fit a declared precision.
fn default_needs_postgres(f: &FieldDef) -> bool {
    match &f.ftype {
        FieldType::Date | FieldType::DateTime | FieldType::Time => !matches!(
            f.default.as_ref().and_then(Value::as_str),
            Some("now" | "today")
        ),
        FieldType::Duration
        | FieldType::Uuid
        | FieldType::Relation
        | FieldType::User
        | FieldType::Reference
        | FieldType::Array(_) => true,
        FieldType::Decimal | FieldType::Currency | FieldType::Percent => true,
        _ => false,
    }
}

/// Literals in a definition (patterns, defaults, date bounds) are checked by PostgreSQL now, each
/// error naming its field, rather than failing later inside some DDL statement.
fn check_literals(ctx: &ddl::Ctx, def: &EntityDef) -> Result<()> {
    for f in &def.fields {
        let what = |part: &str| format!("entity \"{}\": field \"{}\": {part}", def.slug, f.name);
        if let Some(p) = f.pattern.as_deref() {
            catch_pg(
                || crate::spi::select_one::<bool>("SELECT ''::text ~ $1", &[p.into()]),
                |e| e.raise_with(&what("the pattern is not a valid regular expression")),
            )?;
        }
        if let Some(d) = ddl::default_sql(f).filter(|_| default_needs_postgres(f)) {
            catch_pg(
                || crate::spi::select_one::<String>(&format!("SELECT ({d})::text"), &[]),
                |e| e.raise_with(&what("default")),
            )?;
        }
        if f.ftype.family() == udm_core::types::Family::Temporal {
            for (key, bound) in [("min", &f.min), ("max", &f.max)] {
                let Some(b) = bound else { continue };
                // (an encrypted field's column is text: its bounds are of its type)
                let lit = udm_core::checks::typed_literal(b, &f.ftype.base_pg_type());
                catch_pg(
                    || crate::spi::select_one::<String>(&format!("SELECT ({lit})::text"), &[]),
                    |e| e.raise_with(&what(key)),
                )?;
            }
        }
    }
    // Each rule runs once over a row of NULLs: its literals are cast and its types resolved.
    // (alias "t": rules over related records correlate their sub-selects with it)
    let probe: Vec<String> = ["NULL::uuid AS \"id\"".to_string()]
        .into_iter()
        .chain(
            def.fields
                .iter()
                .filter(|f| f.has_column())
                .map(|f| format!("NULL::{} AS {}", f.pg_type(), quote_ident(&f.column))),
        )
        .collect();
    for r in &def.rules {
        let context = format!("entity \"{}\", rule \"{}\"", def.slug, r.name);
        let cond = match ddl::related_rule(ctx, def, &r.check).map_err(|e| e.context(&context))? {
            Some(c) => c.condition,
            None => {
                udm_core::rules::compile_rule(def, &r.check).map_err(|e| e.context(&context))?
            }
        };
        if !udm_core::rules::has_string_literal(&r.check)? {
            continue; // numbers and fields are checked by the compiler; only string casts remain
        }
        let sql = format!(
            "SELECT ({cond})::text FROM (SELECT {}) AS \"t\"",
            probe.join(", ")
        );
        catch_pg(
            || crate::spi::select_one::<String>(&sql, &[]),
            |e| e.raise_with(&context),
        )?;
    }
    Ok(())
}

/// Other entities' artifacts that read `changed` — rules over relation paths, access policies
/// written against a scope root — must still hold after the change (`after`; `None` when the
/// entity goes away): a rule that would no longer compile refuses the change, and triggers and
/// policies whose SQL changes are rebuilt. Returns (drops, additions).
fn dependent_steps(
    ctx: &ddl::Ctx,
    changed: &str,
    after: Option<&EntityDef>,
) -> Result<(Vec<Step>, Vec<Step>)> {
    let (mut drops, mut adds) = (Vec::new(), Vec::new());
    let Some(model) = ctx.model else {
        return Ok((drops, adds));
    };
    let tenant_after = WithEntity {
        base: model,
        slug: changed,
        def: after,
    };
    let ctx_after = ddl::Ctx {
        model: Some(&tenant_after),
        ..ctx.clone()
    };
    for name in model.entity_names() {
        let Some(def) = model
            .entity(&name)
            .filter(|d| d.slug != changed && (!d.rules.is_empty() || d.access.is_some()))
        else {
            continue;
        };
        let before = ddl::cross_entity_artifacts(ctx, def)?;
        let now = ddl::cross_entity_artifacts(&ctx_after, def).map_err(|e| {
            UdmError::new(
                SqlState::DependentObjectsStillExist,
                format!(
                    "entity \"{changed}\": this change would break a rule of {}",
                    e.message
                ),
            )
            .hint("change that rule first (udm_drop_rule, then udm_add_rule)")
        })?;
        let (d, a) = ddl::replace_artifacts(ctx, &before, &now);
        drops.extend(d);
        adds.extend(a);
    }
    Ok((drops, adds))
}

/// The triggers an entity's rules keep on other tables (they go with the entity when it is
/// dropped, and come back when it is restored).
fn foreign_rule_triggers(ctx: &ddl::Ctx, def: &EntityDef) -> Result<Vec<ddl::Artifact>> {
    Ok(ddl::rule_artifacts(ctx, def)?
        .into_iter()
        .filter(|a| a.table != def.slug)
        .collect())
}

fn uses_of_field(def: &EntityDef, field: &str) -> Result<Vec<String>> {
    let mut uses = Vec::new();
    for r in &def.rules {
        if rule_fields(&r.check)?.iter().any(|n| n == field) {
            uses.push(format!("rule \"{}\"", r.name));
        }
    }
    for i in &def.indexes {
        if i.fields.iter().any(|n| n == field) {
            uses.push(format!("index \"{}\"", i.name));
        }
    }
    if def.lock.as_ref().and_then(|l| l.scope_field()) == Some(field) {
        uses.push("the lock scope".to_string());
    }
    if let Some(a) = &def.access {
        if a.parent.as_deref() == Some(field) {
            uses.push("the access scope".to_string());
        }
        if a.owner.as_deref() == Some(field) {
            uses.push("the access owner".to_string());
        }
    }
    Ok(uses)
}

// ------------------------------------------------------------------ describe

pub fn describe(t: &Tenant, def: &EntityDef, version: i32, status: Status) -> Value {
    let mut v = def.to_json();
    v["version"] = json!(version);
    v["status"] = json!(status.name());
    v["tenant"] = json!(t.slug);
    v["table"] = json!(qualified(&t.schema, &def.slug));
    if let Some(fields) = v["fields"].as_array_mut() {
        for (f, fv) in def.fields.iter().zip(fields.iter_mut()) {
            fv["pg_type"] = json!(f.pg_type());
        }
    }
    v
}

fn describe_entity(t: &Tenant, e: &Entity) -> Value {
    describe(t, &e.def, e.version, e.status)
}

// ------------------------------------------------------------------ changes

/// Applies a change to an active entity: lock, build, plan, record, run. The new definition is
/// recorded before the DDL runs (same transaction), so a rule that fails while the DDL checks
/// existing rows is reported in the words of the new definition.
fn change(
    t: &Tenant,
    slug: &str,
    op: Value,
    build: impl FnOnce(&EntityDef, i32) -> Result<EntityDef>,
) -> Result<Value> {
    crate::access::require_manage(t, &format!("change the definition of entity \"{slug}\""))?;
    // one switch to the owner for the whole change (the membership check came before)
    as_owner(|| {
        let e = catalog::entity_for_update(t, slug, Some(Status::Active))?;
        let version = e.version + 1;
        let new = build(&e.def, version)?;
        let fields: Vec<&FieldDef> = new.fields.iter().collect();
        check_targets(t, &new, &fields)?;
        let model = crate::query::definitions(t)?;
        let ctx = ddl::Ctx {
            model: Some(&*model),
            ..t.ctx()
        };
        check_literals(&ctx, &new)?;
        if let Some(probe) = once_encrypted(&e.def, &new) {
            // encryption turned on in stages: what would not hold for the encrypted field (a
            // rule or index over it, a rule of another entity reading it) is refused now, not at
            // the swap
            ddl::plan_change(&ctx, &e.def, &probe)?;
            dependent_steps(&ctx, slug, Some(&probe))?;
        }
        let (mut steps, dependent) = dependent_steps(&ctx, slug, Some(&new))?;
        steps.extend(ddl::plan_change(&ctx, &e.def, &new)?);
        steps.extend(dependent);
        crate::crypto::ensure_keys(t, &new)?;
        catalog::write_entity(t, slug, e.table_oid, Some(&new), version, "active", op)?;
        crate::access::users::ensure_for(t, &new)?;
        run_steps(slug, &steps)?;
        Ok(describe(t, &new, version, Status::Active))
    })
}

/// When `new` starts turning encryption on in stages for a field (`Stage::Sealing`): the
/// definition as it will be once the field is encrypted.
fn once_encrypted(old: &EntityDef, new: &EntityDef) -> Option<EntityDef> {
    let starting = |f: &&FieldDef| {
        f.encryption_stage == Some(Stage::Sealing)
            && old
                .field_by_id(f.id)
                .and_then(|o| o.encryption_stage)
                .is_none()
    };
    if !new.fields.iter().any(|f| starting(&f)) {
        return None;
    }
    let mut probe = new.clone();
    for f in probe.fields.iter_mut() {
        if f.encryption_stage == Some(Stage::Sealing) {
            *f = f.as_encrypted();
        }
    }
    Some(probe)
}

pub fn define_entity(slug: &str, definition: &Value) -> Result<Value> {
    crate::limits::check_spec(definition, "udm_define_entity definition")?;
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, &format!("define entity \"{}\"", printable(slug)))?;
    as_owner(|| {
        let def = EntityDef::parse(slug, definition, Source::Caller)?;
        // No change lock here: two sessions defining the same name both try version n of it, and the
        // catalog's primary key (entity, version) lets only one of them commit.
        let latest = catalog::latest_status(&t, slug)?;
        match latest.as_ref().map(|(_, status)| status.as_str()) {
            Some("active") => {
                return Err(UdmError::new(
                    SqlState::DuplicateTable,
                    format!("entity \"{slug}\" already exists in tenant \"{}\"", t.slug),
                )
                .hint(format!(
                    "change it with udm_add_field / udm_alter_field, or see {}",
                    udm_core::ident::sql_call("udm_describe", &[slug])
                )))
            }
            Some("dropped") => {
                return Err(UdmError::new(
                    SqlState::DuplicateTable,
                    format!(
                        "entity \"{slug}\" of tenant \"{}\" was dropped and still holds its data",
                        t.slug
                    ),
                )
                .hint(format!(
                    "restore it with {} or purge it with {} first",
                    udm_core::ident::sql_call("udm_restore_entity", &[slug]),
                    udm_core::ident::sql_call("udm_purge_entity", &[slug, slug])
                )))
            }
            _ => {}
        }
        // A purged entity's history stays; a new definition of the same name continues its versions.
        let version = latest.map_or(1, |(v, _)| v + 1);
        let fields: Vec<&FieldDef> = def.fields.iter().collect();
        check_targets(&t, &def, &fields)?;
        // (nothing reads a new entity yet; the tenant's model is needed only if it reads others)
        let model = ddl::reads_other_entities(&def, t.access)
            .then(|| crate::query::definitions(&t))
            .transpose()?;
        let ctx = ddl::Ctx {
            model: model
                .as_deref()
                .map(|m| m as &dyn udm_core::query::path::Model),
            ..t.ctx()
        };
        check_literals(&ctx, &def)?;
        let mut steps = ddl::create_entity(&ctx, &def)?;
        if crate::audit::batch::is_batched(&t) {
            // after CREATE TABLE, before the triggers
            steps.insert(
                1,
                ddl::Step::Sql(crate::audit::batch::pointer_column_sql(&ctx.table(slug))),
            );
        }
        crate::crypto::ensure_keys(&t, &def)?;
        catch_pg(
            || {
                let op = json!({"op": "define_entity"});
                catalog::write_entity(
                    &t,
                    slug,
                    pg_sys::InvalidOid,
                    Some(&def),
                    version,
                    "active",
                    op,
                )
            },
            |e| {
                if e.code == PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION {
                    raise(UdmError::new(
                        SqlState::DuplicateTable,
                        format!("entity \"{slug}\" was just defined in tenant \"{}\" by another session", t.slug),
                    ));
                }
                e.raise_with("udm_define_entity")
            },
        )?;
        crate::access::users::ensure_for(&t, &def)?;
        run_steps(slug, &steps)?;
        Ok(describe(&t, &def, version, Status::Active))
    })
}

pub fn add_field(entity: &str, field: &Value) -> Result<Value> {
    crate::limits::check_spec(field, "udm_add_field field")?;
    let t = catalog::current_tenant()?;
    let f = parse_field(field, Source::Caller)
        .map_err(|e| e.context(format!("entity \"{entity}\"")))?;
    if f.ftype == udm_core::types::FieldType::AutoNumber && crate::citus::installed() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "udm on Citus: cannot add auto_number field \"{}\" to entity \"{entity}\"",
                f.name
            ),
        )
        .detail("Citus refuses to add an identity column to a distributed table (ADD COLUMN ... GENERATED AS IDENTITY)")
        .hint("on Citus an auto_number field is defined with its entity (udm_define_entity)"));
    }
    change(
        &t,
        entity,
        json!({"op": "add_field", "field": field}),
        |old, _| {
            if let Some(rf) = old.removed_fields.iter().find(|r| r.name == f.name) {
                return Err(UdmError::new(
                    SqlState::DuplicateColumn,
                    format!(
                        "entity \"{entity}\" has a removed field \"{}\" holding data",
                        rf.name
                    ),
                )
                .hint(format!(
                    "bring it back with {}, or drop its data with {} first",
                    udm_core::ident::sql_call("udm_restore_field", &[entity, &rf.name]),
                    udm_core::ident::sql_call("udm_purge_field", &[entity, &rf.name])
                )));
            }
            if old.field(&f.name).is_some() {
                return Err(UdmError::new(
                    SqlState::DuplicateColumn,
                    format!("entity \"{entity}\" already has a field \"{}\"", f.name),
                )
                .hint(format!(
                    "change it with udm_alter_field({}, {}, ...)",
                    udm_core::ident::quote_literal(entity),
                    udm_core::ident::quote_literal(&f.name)
                )));
            }
            let mut new = old.clone();
            new.add_field(f.clone())?;
            Ok(new)
        },
    )
}

/// A change that names a field needs the caller's role to read and write it.
fn field_access(t: &Tenant, entity: &str, field: &str, verb: &str) -> Result<()> {
    crate::access::require_field_access(
        t,
        entity,
        field,
        &format!("{verb} field \"{}\" of {entity}", printable(field)),
    )
}

pub fn alter_field(entity: &str, field: &str, changes: &Value) -> Result<Value> {
    crate::limits::check_spec(changes, "udm_alter_field changes")?;
    let t = catalog::current_tenant()?;
    field_access(&t, entity, field, "change")?;
    let renamed = changes
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| *n != field)
        .map(str::to_string);
    let out = change(
        &t,
        entity,
        json!({"op": "alter_field", "field": field, "changes": changes}),
        |old, _| {
            let of = old.field_or_err(field)?;
            let nf = apply_field_changes(of, changes)
                .map_err(|e| e.context(format!("entity \"{entity}\"")))?;
            let mut new = old.clone();
            if nf.name != of.name {
                if old.field(&nf.name).is_some()
                    || old.removed_fields.iter().any(|r| r.name == nf.name)
                {
                    return Err(UdmError::new(
                    SqlState::DuplicateColumn,
                    format!("cannot rename field \"{field}\" of entity \"{entity}\": \"{}\" is taken", nf.name),
                )
                .hint("removed fields keep their names until purged"));
                }
                for r in &mut new.rules {
                    if rule_fields(&r.check)?.iter().any(|n| n == field) {
                        r.check = rename_in_rule(&r.check, field, &nf.name)?;
                    }
                }
                for i in &mut new.indexes {
                    for n in &mut i.fields {
                        if n == field {
                            *n = nf.name.clone();
                        }
                    }
                }
                if let Some(l) = &mut new.lock {
                    if l.scope_field() == Some(field) {
                        l.scope = LockScope::Field(nf.name.clone());
                    }
                }
                if let Some(a) = &mut new.access {
                    for slot in [&mut a.parent, &mut a.owner] {
                        if slot.as_deref() == Some(field) {
                            *slot = Some(nf.name.clone());
                        }
                    }
                }
            }
            if let Some(toggle) = nf.encryption_pending.filter(|_| {
                (nf.encryption_pending, nf.encrypted) != (of.encryption_pending, of.encrypted)
            }) {
                crate::crypto::check_toggle(&t, old, of, toggle)?;
            }
            if nf.encryption_stage.is_some() && of.encryption_stage.is_none() {
                // the swap renames the column: an index over fields would follow the old one
                let uses = uses_of_field(old, field)?;
                if !uses.is_empty() {
                    return Err(UdmError::new(
                        SqlState::FeatureNotSupported,
                        format!(
                            "cannot turn encryption on for field \"{field}\" of entity \"{entity}\": {} use(s) it",
                            uses.join(", ")
                        ),
                    )
                    .hint("drop those first (udm_drop_index, udm_drop_rule): an encrypted field cannot be part of them"));
                }
                crate::crypto::check_toggle(&t, old, of, Toggle::On)?;
            }
            let mut nf = nf;
            if nf.is_many_to_many() {
                nf.junction = Some(junction_name(entity, &nf.name));
            }
            let pos = new
                .fields
                .iter()
                .position(|x| x.id == of.id)
                .expect("field exists");
            new.fields[pos] = nf;
            Ok(new)
        },
    )?;
    // permissions follow the field, not its name
    if let Some(name) = renamed {
        crate::access::rename_field_in_roles(&t, entity, field, &name)?;
    }
    Ok(out)
}

/// Completes turning encryption on or off for `fields` of an entity once `udm_reencrypt` has
/// converted their values: a definition change (recorded and audited as the others), under a
/// SHARE lock on the table (writers in flight, which may have written under the previous
/// definition, are waited for, at most `udm.ddl_lock_timeout`), after `still_clean` confirms
/// again that no value waits. Turning off also gives the column its type back (a rewrite of
/// the table for json, date and datetime fields) and the field its CHECK constraints. Returns
/// the fields completed (none when a value came in meanwhile: a later call completes them).
pub fn finish_encryption(
    t: &Tenant,
    entity: &str,
    fields: &[String],
    still_clean: &dyn Fn(&FieldDef) -> Result<bool>,
) -> Result<Vec<String>> {
    let mut completed = Vec::new();
    let nothing = std::cell::Cell::new(false);
    let outcome = change(
        t,
        entity,
        json!({"op": "finish_encryption", "fields": fields}),
        |old, _| {
            // a swap or the drop of the old column (`Stage`) changes the table's columns
            let staged = old
                .fields
                .iter()
                .any(|f| fields.contains(&f.name) && f.encryption_stage.is_some());
            exec_ddl(
                entity,
                &format!(
                    "LOCK TABLE {} IN {} MODE",
                    qualified(&t.schema, &old.slug),
                    if staged { "ACCESS EXCLUSIVE" } else { "SHARE" }
                ),
            )?;
            let mut new = old.clone();
            for f in new.fields.iter_mut() {
                let changing = f.encryption_stage.is_some() || f.encryption_pending.is_some();
                if !changing || !fields.contains(&f.name) || !still_clean(f)? {
                    continue;
                }
                match (f.encryption_stage, f.encryption_pending) {
                    // sealed: the swap
                    (Some(Stage::Sealing), _) => {
                        *f = FieldDef {
                            encryption_stage: Some(Stage::Scrubbing),
                            ..f.as_encrypted()
                        };
                    }
                    // scrubbed: the old column goes
                    (Some(Stage::Scrubbing), _) => f.encryption_stage = None,
                    (None, p) => {
                        f.encryption_pending = None;
                        if p == Some(Toggle::Off) {
                            f.encrypted = false;
                        }
                    }
                }
                completed.push(f.name.clone());
            }
            if completed.is_empty() {
                nothing.set(true);
                return Err(UdmError::internal("udm: no field's encryption to complete"));
            }
            Ok(new)
        },
    );
    match outcome {
        Ok(_) => Ok(completed),
        Err(_) if nothing.get() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

pub fn remove_field(entity: &str, field: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    field_access(&t, entity, field, "remove")?;
    change(
        &t,
        entity,
        json!({"op": "remove_field", "field": field}),
        |old, version| {
            let f = old.field_or_err(field)?;
            if let Some(stage) = f.encryption_stage {
                return Err(UdmError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!(
                        "cannot remove field \"{field}\" of entity \"{entity}\": encryption is being turned on (stage \"{}\")",
                        stage.name()
                    ),
                )
                .hint("call udm_reencrypt(entity) until it reports the field completed (while its values are sealed, turning encryption off again also ends it)"));
            }
            let uses = uses_of_field(old, field)?;
            if !uses.is_empty() {
                return Err(UdmError::new(
                    SqlState::DependentObjectsStillExist,
                    format!(
                        "cannot remove field \"{field}\" of entity \"{entity}\": {} use(s) it",
                        uses.join(", ")
                    ),
                )
                .hint("drop or change those first (udm_drop_rule, udm_drop_index)"));
            }
            let mut new = old.clone();
            let mut removed = f.clone();
            removed.removed_in_version = Some(version as u32);
            if removed.has_column() {
                removed.column = ddl::removed_column_name(f);
            } else {
                removed.junction = Some(ddl::removed_junction_name(entity, f));
            }
            new.fields.retain(|x| x.id != f.id);
            new.removed_fields.push(removed);
            Ok(new)
        },
    )
}

fn removed_field<'a>(def: &'a EntityDef, field: &str) -> Result<&'a FieldDef> {
    def.removed_fields
        .iter()
        .rev()
        .find(|f| f.name == field)
        .ok_or_else(|| {
            let active = def.field(field).is_some();
            let e = UdmError::new(
                SqlState::ObjectNotInPrerequisiteState,
                format!(
                    "entity \"{}\" has no removed field \"{}\"",
                    def.slug,
                    printable(field)
                ),
            );
            if active {
                e.hint(format!(
                    "field \"{field}\" is active; remove it first with {}",
                    udm_core::ident::sql_call("udm_remove_field", &[&def.slug, field])
                ))
            } else {
                e.hint(format!(
                    "removed fields of \"{}\" are {}",
                    def.slug,
                    name_list(def.removed_fields.iter().map(|f| f.name.as_str()))
                ))
            }
        })
}

pub fn restore_field(entity: &str, field: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    field_access(&t, entity, field, "restore")?;
    change(
        &t,
        entity,
        json!({"op": "restore_field", "field": field}),
        |old, _| {
            let rf = removed_field(old, field)?;
            if old.field(field).is_some() {
                return Err(UdmError::new(
                SqlState::DuplicateColumn,
                format!("cannot restore field \"{field}\" of entity \"{entity}\": an active field has that name"),
            )
            .hint("rename the active field first with udm_alter_field"));
            }
            let mut new = old.clone();
            let mut f = rf.clone();
            f.removed_in_version = None;
            if f.has_column() {
                f.column = f.name.clone();
            } else {
                f.junction = Some(junction_name(entity, &f.name));
            }
            new.removed_fields.retain(|x| x.id != rf.id);
            new.fields.push(f);
            Ok(new)
        },
    )
}

pub fn purge_field(entity: &str, field: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    field_access(&t, entity, field, "purge")?;
    change(
        &t,
        entity,
        json!({"op": "purge_field", "field": field}),
        |old, _| {
            let rf = removed_field(old, field)?;
            let mut new = old.clone();
            new.removed_fields.retain(|x| x.id != rf.id);
            Ok(new)
        },
    )
}

pub fn add_index(entity: &str, fields: &[String], unique: bool) -> Result<Value> {
    let t = catalog::current_tenant()?;
    for f in fields {
        field_access(&t, entity, f, "index")?;
    }
    change(
        &t,
        entity,
        json!({"op": "add_index", "fields": fields, "unique": unique}),
        |old, _| {
            let spec = json!({"fields": fields, "unique": unique});
            let i = parse_index(&spec, entity, Source::Caller)?;
            let mut new = old.clone();
            new.add_index(i)?;
            Ok(new)
        },
    )
}

/// Switches auditing (and change events) of an entity's records on or off: a definition change,
/// versioned and recorded like any other.
pub fn set_audit(entity: &str, enabled: bool) -> Result<Value> {
    let t = catalog::current_tenant()?;
    change(
        &t,
        entity,
        json!({"op": "set_audit", "enabled": enabled}),
        |old, _| {
            if old.audit == enabled {
                return Err(UdmError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!(
                        "auditing of entity \"{entity}\" is already {}",
                        if enabled { "on" } else { "off" }
                    ),
                ));
            }
            let mut new = old.clone();
            new.audit = enabled;
            Ok(new)
        },
    )
}

/// Declares (or with `scope = None` removes) the entity's write-lock scope: `self` or a
/// many-to-one relation field; `required` makes writes need the writer to hold the lock.
pub fn set_lock_scope(entity: &str, scope: Option<&str>, required: bool) -> Result<Value> {
    let t = catalog::current_tenant()?;
    change(
        &t,
        entity,
        json!({"op": "set_lock_scope", "scope": scope, "required": required}),
        |old, _| {
            let lock = match scope {
                None => None,
                Some(s) => {
                    udm_core::locks::parse_lock(&json!({"scope": s, "required": required}), entity)?
                }
            };
            if lock == old.lock {
                return Err(UdmError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!("entity \"{entity}\" already has this lock scope"),
                ));
            }
            let mut new = old.clone();
            if let Some(l) = &lock {
                new.check_lock(l)?;
            }
            new.lock = lock;
            Ok(new)
        },
    )
}

/// Declares (or with `null` removes) the entity's access scope: its rows are seen by users with a
/// relation on the scope record (itself or the record a relation points to), or who own it.
pub fn set_access(entity: &str, access: &Value) -> Result<Value> {
    crate::limits::check_spec(access, "udm_set_access access")?;
    let t = catalog::current_tenant()?;
    change(
        &t,
        entity,
        json!({"op": "set_access", "access": access}),
        |old, _| {
            let a = udm_core::access::parse_access(access, entity)?;
            if a == old.access {
                return Err(UdmError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!("entity \"{entity}\" already has this access scope"),
                ));
            }
            let mut new = old.clone();
            if let Some(a) = &a {
                new.check_access(a)?;
            }
            new.access = a;
            Ok(new)
        },
    )
}

pub fn drop_index(entity: &str, name: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    change(
        &t,
        entity,
        json!({"op": "drop_index", "name": name}),
        |old, _| {
            if !old.indexes.iter().any(|i| i.name == name) {
                return Err(UdmError::new(
                    SqlState::UndefinedObject,
                    format!("entity \"{entity}\" has no index \"{}\"", printable(name)),
                )
                .hint(format!(
                    "indexes of \"{entity}\" are {}",
                    name_list(old.indexes.iter().map(|i| i.name.as_str()))
                )));
            }
            let mut new = old.clone();
            new.indexes.retain(|i| i.name != name);
            Ok(new)
        },
    )
}

pub fn add_rule(entity: &str, rule: &Value) -> Result<Value> {
    crate::limits::check_spec(rule, "udm_add_rule rule")?;
    let t = catalog::current_tenant()?;
    if let Some(check) = rule.get("check").and_then(Value::as_str) {
        for f in rule_fields(check).unwrap_or_default() {
            field_access(&t, entity, &f, "write a rule over")?;
        }
    }
    change(
        &t,
        entity,
        json!({"op": "add_rule", "rule": rule}),
        |old, _| {
            let r = parse_rule(rule).map_err(|e| e.context(format!("entity \"{entity}\"")))?;
            let mut new = old.clone();
            new.add_rule(r)?;
            Ok(new)
        },
    )
}

pub fn drop_rule(entity: &str, name: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    change(
        &t,
        entity,
        json!({"op": "drop_rule", "name": name}),
        |old, _| {
            if !old.rules.iter().any(|r| r.name == name) {
                return Err(UdmError::new(
                    SqlState::UndefinedObject,
                    format!("entity \"{entity}\" has no rule \"{}\"", printable(name)),
                )
                .hint(format!(
                    "rules of \"{entity}\" are {}",
                    name_list(old.rules.iter().map(|r| r.name.as_str()))
                )));
            }
            let mut new = old.clone();
            new.rules.retain(|r| r.name != name);
            Ok(new)
        },
    )
}

/// Every table an entity owns: its own and its many-to-many junctions (active or removed).
fn entity_tables(t: &Tenant, def: &EntityDef) -> Vec<String> {
    let mut out = vec![qualified(&t.schema, &def.slug)];
    for f in def.fields.iter().chain(def.removed_fields.iter()) {
        if let Some(j) = &f.junction {
            out.push(qualified(&t.schema, j));
        }
    }
    out
}

pub fn drop_entity(entity: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, &format!("drop entity \"{}\"", printable(entity)))?;
    let e = catalog::entity_for_update(&t, entity, Some(Status::Active))?;
    let incoming = incoming_relations(&t, entity)?;
    if !incoming.is_empty() {
        return Err(UdmError::new(
            SqlState::DependentObjectsStillExist,
            format!(
                "cannot drop entity \"{entity}\": {} point(s) to it",
                name_list(&incoming)
            ),
        )
        .hint("remove those relation fields first with udm_remove_field"));
    }
    let model = crate::query::definitions(&t)?;
    let ctx = ddl::Ctx {
        model: Some(&*model),
        ..t.ctx()
    };
    // rules of other entities reading this one refuse the drop
    dependent_steps(&ctx, entity, None)?;
    let role = quote_ident(&t.role);
    let mut steps: Vec<Step> = entity_tables(&t, &e.def)
        .into_iter()
        .map(|tbl| Step::Sql(format!("REVOKE ALL ON {tbl} FROM {role}")))
        .collect();
    let (drops, _) = ddl::replace_artifacts(&ctx, &foreign_rule_triggers(&ctx, &e.def)?, &[]);
    steps.extend(drops);
    run_steps(entity, &steps)?;
    let version = e.version + 1;
    catalog::write_entity(
        &t,
        entity,
        e.table_oid,
        Some(&e.def),
        version,
        "dropped",
        json!({"op": "drop_entity"}),
    )?;
    Ok(describe(&t, &e.def, version, Status::Dropped))
}

pub fn restore_entity(entity: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, &format!("restore entity \"{}\"", printable(entity)))?;
    let e = catalog::entity_for_update(&t, entity, Some(Status::Dropped))?;
    let fields: Vec<&FieldDef> = e.def.fields.iter().collect();
    check_targets(&t, &e.def, &fields)?;
    let model = crate::query::definitions(&t)?;
    let ctx = ddl::Ctx {
        model: Some(&*model),
        ..t.ctx()
    };
    let mut steps: Vec<Step> = ddl::grant_sql(&ctx, &e.def, false)
        .into_iter()
        .map(Step::Sql)
        .collect();
    let (_, adds) = ddl::replace_artifacts(&ctx, &[], &foreign_rule_triggers(&ctx, &e.def)?);
    steps.extend(adds);
    // while it was dropped, the records its rules read may have changed
    for r in &e.def.rules {
        if let Some(c) = ddl::related_rule(&ctx, &e.def, &r.check)? {
            steps.push(Step::RuleHolds {
                key: format!("r.{}", r.name),
                sql: udm_core::related_rules::existing_violators(&t.schema, entity, &c.condition),
            });
        }
    }
    for tbl in entity_tables(&t, &e.def).into_iter().skip(1) {
        steps.push(Step::Sql(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {tbl} TO {}",
            quote_ident(&t.role)
        )));
    }
    run_steps(entity, &steps)?;
    let version = e.version + 1;
    catalog::write_entity(
        &t,
        entity,
        e.table_oid,
        Some(&e.def),
        version,
        "active",
        json!({"op": "restore_entity"}),
    )?;
    Ok(describe(&t, &e.def, version, Status::Active))
}

pub fn purge_entity(entity: &str, confirm: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, &format!("purge entity \"{}\"", printable(entity)))?;
    if confirm != entity {
        return Err(UdmError::invalid(format!(
            "udm_purge_entity: confirm must repeat the entity name \"{}\", got \"{}\"",
            printable(entity),
            printable(confirm)
        ))
        .hint(format!(
            "write {} to delete the entity and its data for good",
            udm_core::ident::sql_call("udm_purge_entity", &[entity, entity])
        )));
    }
    let e = catalog::entity_for_update(&t, entity, Some(Status::Dropped))?;
    let ctx = t.ctx();
    let mut steps = Vec::new();
    // (the triggers of its rules on other tables went when it was dropped)
    let without_rules = EntityDef {
        rules: Vec::new(),
        ..e.def.clone()
    };
    for a in ddl::entity_artifacts(&ctx, &without_rules)? {
        if a.table != entity {
            steps.push(Step::Sql(format!(
                "DROP TRIGGER IF EXISTS {} ON {}",
                quote_ident(&a.name),
                ctx.table(&a.table)
            )));
        }
    }
    for tbl in entity_tables(&t, &e.def).into_iter().rev() {
        steps.push(Step::Sql(format!("DROP TABLE {tbl}")));
    }
    catalog::write_entity(
        &t,
        entity,
        e.table_oid,
        None,
        e.version + 1,
        "purged",
        json!({"op": "purge_entity"}),
    )?;
    run_steps(entity, &steps)?;
    Ok(json!({"purged": entity, "tenant": t.slug, "version": e.version + 1}))
}

pub fn describe_by_name(entity: &str) -> Result<Value> {
    let t = catalog::current_tenant()?;
    validate_slug(SlugKind::Entity, entity).map_err(|_| catalog::no_such_entity(&t, entity))?;
    let e = catalog::entity_any(&t, entity)?.ok_or_else(|| catalog::no_such_entity(&t, entity))?;
    Ok(describe_entity(&t, &e))
}

// ------------------------------------------------------------------ SQL surface

type Ts = pgrx::datum::TimestampWithTimeZone;

#[pg_extern(volatile)]
fn udm_define_entity(slug: &str, definition: JsonB) -> JsonB {
    JsonB(define_entity(slug, &definition.0).or_raise())
}

#[pg_extern(stable)]
fn udm_describe(entity: &str) -> JsonB {
    JsonB(describe_by_name(entity).or_raise())
}

#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(stable)]
fn udm_entities() -> TableIterator<
    'static,
    (
        name!(slug, String),
        name!(label, Option<String>),
        name!(version, i32),
        name!(status, String),
        name!(fields, i32),
        name!(table_name, String),
        name!(updated_at, Option<Ts>),
    ),
> {
    let t = catalog::current_tenant().or_raise();
    let rows: Vec<_> = catalog::entity_rows(&t)
        .or_raise()
        .into_iter()
        .map(|r| {
            let table = qualified(&t.schema, &r.slug);
            (
                r.slug,
                r.label,
                r.version,
                r.status,
                r.fields,
                table,
                r.changed_at,
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[pg_extern(stable)]
fn udm_entity_history(
    entity: &str,
) -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(changed_at, Option<Ts>),
        name!(changed_by, String),
        name!(change, JsonB),
        name!(definition, JsonB),
    ),
> {
    let t = catalog::current_tenant().or_raise();
    if catalog::latest_status(&t, entity).or_raise().is_none() {
        raise(catalog::no_such_entity(&t, entity));
    }
    let sql = format!(
        "SELECT version, changed_at, changed_by, change, coalesce(definition, 'null') FROM {} WHERE entity = $1 ORDER BY version",
        t.catalog("_udm_entity")
    );
    let rows = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(sql.as_str(), None, &[entity.into()])? {
            out.push((
                r.get::<i32>(1)?.unwrap_or(0),
                r.get::<Ts>(2)?,
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<JsonB>(4)?.unwrap_or(JsonB(Value::Null)),
                r.get::<JsonB>(5)?.unwrap_or(JsonB(Value::Null)),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)
    .or_raise();
    TableIterator::new(rows)
}

#[pg_extern(volatile)]
fn udm_add_field(entity: &str, field: JsonB) -> JsonB {
    JsonB(add_field(entity, &field.0).or_raise())
}

#[pg_extern(volatile)]
fn udm_alter_field(entity: &str, field: &str, changes: JsonB) -> JsonB {
    JsonB(alter_field(entity, field, &changes.0).or_raise())
}

#[pg_extern(volatile)]
fn udm_remove_field(entity: &str, field: &str) -> JsonB {
    JsonB(remove_field(entity, field).or_raise())
}

#[pg_extern(volatile)]
fn udm_restore_field(entity: &str, field: &str) -> JsonB {
    JsonB(restore_field(entity, field).or_raise())
}

#[pg_extern(volatile)]
fn udm_purge_field(entity: &str, field: &str) -> JsonB {
    JsonB(purge_field(entity, field).or_raise())
}

#[pg_extern(volatile)]
fn udm_add_index(
    entity: &str,
    fields: Vec<Option<String>>,
    unique: default!(bool, false),
) -> JsonB {
    let fields = crate::error::text_list(Some(fields), "fields");
    JsonB(add_index(entity, &fields, unique).or_raise())
}

#[pg_extern(volatile)]
fn udm_set_audit(entity: &str, enabled: bool) -> JsonB {
    JsonB(set_audit(entity, enabled).or_raise())
}

#[pg_extern(volatile)]
fn udm_set_lock_scope(
    entity: Option<&str>,
    scope: Option<&str>,
    required: default!(Option<bool>, false),
) -> JsonB {
    let entity = crate::error::required(entity, "entity");
    let required = crate::error::required(required, "required");
    JsonB(set_lock_scope(entity, scope, required).or_raise())
}

#[pg_extern(volatile)]
fn udm_set_access(entity: Option<&str>, access: Option<JsonB>) -> JsonB {
    let entity = crate::error::required(entity, "entity");
    JsonB(set_access(entity, &access.map_or(Value::Null, |j| j.0)).or_raise())
}

#[pg_extern(volatile)]
fn udm_drop_index(entity: &str, name: &str) -> JsonB {
    JsonB(drop_index(entity, name).or_raise())
}

#[pg_extern(volatile)]
fn udm_add_rule(entity: &str, rule: JsonB) -> JsonB {
    JsonB(add_rule(entity, &rule.0).or_raise())
}

#[pg_extern(volatile)]
fn udm_drop_rule(entity: &str, name: &str) -> JsonB {
    JsonB(drop_rule(entity, name).or_raise())
}

#[pg_extern(volatile)]
fn udm_drop_entity(entity: &str) -> JsonB {
    JsonB(drop_entity(entity).or_raise())
}

#[pg_extern(volatile)]
fn udm_restore_entity(entity: &str) -> JsonB {
    JsonB(restore_entity(entity).or_raise())
}

#[pg_extern(volatile)]
fn udm_purge_entity(entity: &str, confirm: &str) -> JsonB {
    JsonB(purge_entity(entity, confirm).or_raise())
}

/// Every field type with its PostgreSQL type, the view types a UI can offer, and its options.
#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(immutable, parallel_safe)]
fn udm_field_types() -> TableIterator<
    'static,
    (
        name!(type_name, String),
        name!(pg_type, String),
        name!(view_types, Vec<String>),
        name!(options, Vec<String>),
        name!(description, String),
        name!(aliases, Vec<String>),
    ),
> {
    let rows: Vec<_> = udm_core::types::TYPES
        .iter()
        .map(|t| {
            let pg = if t.name == "array" {
                "<items>[]".to_string()
            } else {
                FieldType::parse(t.name)
                    .map(|ft| ft.base_pg_type())
                    .unwrap_or_default()
            };
            (
                t.name.to_string(),
                pg,
                t.view_types.iter().map(|s| s.to_string()).collect(),
                t.options.iter().map(|s| s.to_string()).collect(),
                t.description.to_string(),
                udm_core::types::aliases_of(t.name)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            )
        })
        .collect();
    TableIterator::new(rows)
}
