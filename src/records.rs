//! Records: `udm_insert`, `udm_get`, `udm_update` (optimistic concurrency), `udm_delete`, and
//! the batches `udm_insert_many` / `udm_upsert_many`. They run with the caller's privileges, so
//! tenant isolation (and row security) apply exactly as to plain SQL; constraint failures are
//! reported in words, naming entity, field (and row).

use crate::catalog::{self, Entity, Tenant};
use crate::error::{
    catch_pg, in_subtransaction, raise, OrRaise, PgError, Result, SqlState, UdmError,
};
use crate::json::JsonB;
use crate::query::rawspi;
use crate::query::{compiled, model};
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::rc::Rc;
use udm_core::checks::field_rule_message;
use udm_core::definition::EntityDef;
use udm_core::query::{self as q, Template};
use udm_core::records::{self as r, Mode, Write};

fn entity_of(entity: &str) -> Result<(Rc<Tenant>, Rc<Entity>)> {
    let t = catalog::current_tenant()?;
    let e = catalog::entity(&t, entity)?;
    Ok((t, e))
}

/// A kept plan for a statement udm builds itself (not from a spec).
fn plan_for(
    t: &Tenant,
    key: String,
    sql: impl FnOnce() -> String,
    nargs: usize,
) -> Result<Rc<crate::query::Compiled>> {
    compiled(t.scope(), &key, || {
        Ok(Template {
            sql: sql(),
            params: vec![
                q::spec_param(&[], udm_core::values::PType::Text, q::Conv::Value, "");
                nargs
            ],
            computed: vec![],
            plan_per_call: false,
            rows: None,
        })
    })
    .map(|(c, _)| c)
}

/// The constraint a PostgreSQL constraint error names (`... constraint "x" ...`).
fn constraint_name(message: &str) -> Option<&str> {
    let start = message.find("constraint \"")? + "constraint \"".len();
    let end = message[start..].find('"')? + start;
    Some(&message[start..end])
}

/// Words for a constraint failure PostgreSQL reported by constraint name.
fn translate(t: &Tenant, def: &EntityDef, e: PgError, row: Option<usize>) -> UdmError {
    let prefix = row.map(|i| format!("rows[{i}]: ")).unwrap_or_default();
    let named = constraint_name(&e.message).map(crate::citus::unsharded_name);
    // which field a constraint belongs to: its unique key, its foreign key, or the target key of
    // its many-to-many junction
    let field_of = |suffix: &str| {
        named.as_deref().and_then(|n| {
            def.fields.iter().find(|f| match suffix {
                "key" => {
                    udm_core::ddl::unique_name(&def.slug, &f.name) == n
                        || udm_core::ddl::sealed_unique_name(&def.slug, &f.name) == n
                }
                _ => {
                    udm_core::ddl::fkey_name(&def.slug, &f.name) == n
                        || f.junction.as_deref().is_some_and(|j| {
                            udm_core::ident::fit_name(&format!("{j}__target__fkey")) == n
                        })
                }
            })
        })
    };
    let mut out = match e.code {
        PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION => match field_of("key") {
            Some(f) => UdmError::new(
                SqlState::UniqueViolation,
                format!("{prefix}{}", field_rule_message(def, f, "unique")),
            ),
            // udm's own refusal (a value of a field whose encryption is being turned on or
            // off, held in the other form) names its field already
            None if named.is_none() => {
                UdmError::new(SqlState::UniqueViolation, format!("{prefix}{}", e.message))
            }
            None => UdmError::new(
                SqlState::UniqueViolation,
                format!(
                    "{prefix}{}: a record with these values exists ({})",
                    def.slug,
                    named.unwrap_or_default()
                ),
            ),
        },
        PgSqlErrorCode::ERRCODE_FOREIGN_KEY_VIOLATION => {
            if e.message.starts_with("update or delete") {
                // something still points at this record
                let by = e
                    .message
                    .rsplit("on table ")
                    .next()
                    .map(|s| s.trim_matches('"'))
                    .unwrap_or("another entity");
                UdmError::new(
                    SqlState::ForeignKeyViolation,
                    format!(
                        "{prefix}this {} record is still referenced by {by}",
                        def.slug
                    ),
                )
                .hint(format!(
                    "change or delete the {by} records that refer to it first"
                ))
            } else {
                match field_of("fkey") {
                    Some(f) => UdmError::new(
                        SqlState::ForeignKeyViolation,
                        format!(
                            "{prefix}{}.{} refers to a {} that does not exist",
                            def.slug,
                            f.name,
                            f.target.as_deref().unwrap_or("record")
                        ),
                    ),
                    None => UdmError::new(
                        SqlState::ForeignKeyViolation,
                        format!("{prefix}{}", e.message),
                    ),
                }
            }
        }
        PgSqlErrorCode::ERRCODE_CHECK_VIOLATION => {
            UdmError::new(SqlState::CheckViolation, format!("{prefix}{}", e.message))
        }
        PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION => {
            UdmError::new(SqlState::NotNullViolation, format!("{prefix}{}", e.message))
        }
        _ => {
            let mut e = e;
            e.message = format!("{prefix}{}", e.message);
            e.raise()
        }
    };
    out.detail = e.detail.clone().or(Some(format!(
        "entity \"{}\" of tenant \"{}\"",
        def.slug, t.slug
    )));
    if out.hint.is_none() {
        out.hint = e.hint;
    }
    out
}

/// Runs `f`; a constraint failure is raised in udm's words.
fn guarded<R>(t: &Tenant, def: &EntityDef, f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_pg(f, |e| raise(translate(t, def, e, None)))
}

fn link_args(id: &str, ids: &[String]) -> Vec<Option<String>> {
    let arr = format!("{{{}}}", ids.join(","));
    vec![Some(id.to_string()), Some(arr)]
}

fn write_links(t: &Tenant, def: &EntityDef, id: &str, w: &Write) -> Result<()> {
    for l in &w.links {
        let [del, ins] = r::replace_links_sql(&t.schema, &l.junction);
        for (i, sql) in [del, ins].into_iter().enumerate() {
            let c = plan_for(
                t,
                format!("{}|links{i}|{}|{}", t.slug, def.slug, l.junction),
                || sql,
                2,
            )?;
            rawspi::first_datum(&c.plan, &link_args(id, &l.ids), false)?;
        }
    }
    Ok(())
}

fn get_datum(t: &Tenant, def: &EntityDef, id: &str) -> Result<Option<pg_sys::Datum>> {
    let c = plan_for(
        t,
        format!("{}|get|{}", t.slug, def.slug),
        || r::get_sql(&t.schema, def),
        1,
    )?;
    let d = rawspi::first_datum(&c.plan, &[Some(id.to_string())], false)?;
    crate::access::strip_hidden(t, &def.slug, d)
}

fn col_key(w: &Write) -> String {
    let cols: Vec<&str> = w.cols.iter().map(|c| c.column.as_str()).collect();
    format!(
        "{}|{}|{}",
        w.id.is_some(),
        cols.join(","),
        !w.links.is_empty()
    )
}

/// On Citus, the tenant learns the registered users the write names before it reaches the node
/// (`users::know_before_write`).
fn know_users(t: &Tenant, def: &EntityDef, w: &Write) -> Result<()> {
    crate::access::users::know_before_write(
        t,
        def,
        w.cols
            .iter()
            .map(|c| (c.column.as_str(), c.value.as_deref())),
    )
}

pub fn insert(entity: &str, data: &Value) -> Result<pg_sys::Datum> {
    let (t, e) = entity_of(entity)?;
    let def = &e.def;
    let w = r::write_of(def, data, Mode::Insert)?;
    know_users(&t, def, &w)?;
    let c = plan_for(
        &t,
        format!("{}|ins|{}|{}", t.slug, entity, col_key(&w)),
        || r::insert_sql(&t.schema, def, &w),
        r::insert_values(&w).len(),
    )?;
    guarded(&t, def, || {
        let d = rawspi::first_datum(&c.plan, &r::insert_values(&w), false)?
            .ok_or_else(|| UdmError::internal("insert returned nothing"))?;
        if w.links.is_empty() {
            return Ok(crate::access::strip_hidden(&t, &def.slug, Some(d))?.unwrap_or(d));
        }
        let id = unsafe { pgrx::Uuid::from_datum(d, false) }
            .map(|u| u.to_string())
            .unwrap_or_default();
        write_links(&t, def, &id, &w)?;
        get_datum(&t, def, &id)?.ok_or_else(|| UdmError::internal("inserted record not found"))
    })
}

pub fn get(
    entity: &str,
    id_datum: pg_sys::Datum,
    columns: Option<Vec<String>>,
) -> Result<Option<pg_sys::Datum>> {
    let t = catalog::current_tenant()?;
    let e = catalog::entity(&t, entity)?;
    if columns.is_none() {
        if let Some(p) = crate::query::fastget::plan(&t, &e) {
            match crate::query::fastget::get(&p, id_datum) {
                crate::query::fastget::Outcome::Found(d) => return Ok(Some(d)),
                crate::query::fastget::Outcome::Missing => return Ok(None),
                crate::query::fastget::Outcome::UseSql => {}
            }
        }
    }
    let id = unsafe { pgrx::Uuid::from_datum(id_datum, false) }
        .map(|u| u.to_string())
        .unwrap_or_default();
    let id = id.as_str();
    match columns {
        None => get_datum(&t, &e.def, id),
        Some(cols) => {
            let m = model(&t)?;
            let spec = json!({"columns": cols});
            let key = format!("{}|getcols|{}|{}", m.key, entity, cols.join("\u{1}"));
            let (c, _) = compiled(m.scope, &key, || {
                let obj = spec.as_object().expect("object");
                let columns = q::columns_of(&*m, entity, obj)?;
                let mut from = q::From::new(&*m, entity);
                let row = q::row_object(&mut from, entity, &columns)?;
                Ok(Template {
                    sql: format!(
                        "SELECT {row} FROM {} WHERE t0.\"id\" = $1::uuid",
                        from.sql(None)
                    ),
                    params: vec![q::spec_param(
                        &[],
                        udm_core::values::PType::Uuid,
                        q::Conv::Value,
                        "id",
                    )],
                    computed: vec![],
                    plan_per_call: false,
                    rows: None,
                })
            })?;
            rawspi::first_datum(&c.plan, &[Some(id.to_string())], true)
        }
    }
}

pub fn update(
    entity: &str,
    id: &str,
    patch: &Value,
    expected: Option<i32>,
) -> Result<pg_sys::Datum> {
    let (t, e) = entity_of(entity)?;
    let def = &e.def;
    let w = r::write_of(def, patch, Mode::Update)?;
    know_users(&t, def, &w)?;
    let versioned = expected.is_some();
    let mut args = vec![Some(id.to_string())];
    if let Some(v) = expected {
        args.push(Some(v.to_string()));
    }
    args.extend(w.cols.iter().map(|c| c.value.clone()));
    let c = plan_for(
        &t,
        format!("{}|upd|{}|{}|{versioned}", t.slug, entity, col_key(&w)),
        || r::update_sql(&t.schema, def, &w, versioned),
        args.len(),
    )?;
    let out = guarded(&t, def, || rawspi::first_datum(&c.plan, &args, false))?;
    let Some(d) = out else {
        let vc = plan_for(
            &t,
            format!("{}|ver|{}", t.slug, entity),
            || r::version_sql(&t.schema, def),
            1,
        )?;
        let current = rawspi::first_datum(&vc.plan, &[Some(id.to_string())], false)?;
        return Err(match (current, expected) {
            (None, _) => not_found(def, id),
            (Some(v), Some(want)) => {
                let have = v.value() as i32;
                UdmError::new(
                    SqlState::SerializationFailure,
                    format!("{} {id} was changed by someone else: you expected version {want}, it is at version {have}", def.slug),
                )
                .detail(format!("entity \"{}\", record {id}, expected version {want}, current version {have}", def.slug))
                .hint("read the record again (udm_get) and apply your change to the current version")
            }
            (Some(_), None) => not_found(def, id),
        });
    };
    if w.links.is_empty() {
        return Ok(crate::access::strip_hidden(&t, &def.slug, Some(d))?.unwrap_or(d));
    }
    guarded(&t, def, || write_links(&t, def, id, &w))?;
    get_datum(&t, def, id)?.ok_or_else(|| not_found(def, id))
}

fn not_found(def: &EntityDef, id: &str) -> UdmError {
    UdmError::new(
        SqlState::NoDataFound,
        format!("{} {id} does not exist", def.slug),
    )
    .hint(format!(
        "udm_query({}, ...) lists the records",
        udm_core::ident::quote_literal(&def.slug)
    ))
}

pub fn delete(entity: &str, id: &str) -> Result<Value> {
    let (t, e) = entity_of(entity)?;
    let def = &e.def;
    let c = plan_for(
        &t,
        format!("{}|del|{}", t.slug, entity),
        || r::delete_sql(&t.schema, def),
        1,
    )?;
    let out = guarded(&t, def, || {
        rawspi::first_datum(&c.plan, &[Some(id.to_string())], false)
    })?;
    match out {
        Some(_) => Ok(json!({"deleted": id, "entity": entity})),
        None => Err(not_found(def, id)),
    }
}

// ------------------------------------------------------------------ batches

fn batch_key(b: &r::Batch) -> String {
    let cols: Vec<String> = b
        .cols
        .iter()
        .map(|c| format!("{}:{}", c.key, c.in_every_row))
        .collect();
    let links: Vec<&str> = b.links.iter().map(|l| l.key.as_str()).collect();
    format!("{}|{}|{}", cols.join(","), links.join(","), b.has_ids)
}

fn run_batch(
    plan: &rawspi::Plan,
    rows: pg_sys::Datum,
    range: Option<(i64, i64)>,
) -> Result<Option<pg_sys::Datum>> {
    let mut values = vec![rows];
    let mut nulls = vec![b' ' as std::os::raw::c_char];
    if let Some((lo, hi)) = range {
        values.push(pg_sys::Datum::from(lo));
        values.push(pg_sys::Datum::from(hi));
        nulls.extend([b' ' as std::os::raw::c_char; 2]);
    }
    rawspi::first_datum_of(plan, &mut values, &nulls, false)
}

/// Runs a batch; if it fails, finds the first row that fails on its own (halving the range in
/// subtransactions) and reports the error with that row's index.
fn batch(
    t: &Tenant,
    def: &EntityDef,
    rows: pg_sys::Datum,
    n: usize,
    kind: &str,
    sql: impl Fn(bool) -> String,
) -> Result<Option<pg_sys::Datum>> {
    let types = [pg_sys::JSONBOID];
    let key = format!("{}|{kind}|{}", t.slug, def.slug);
    let full = plan_typed(&format!("{key}|all"), &sql(false), &types)?;
    match in_subtransaction(|| run_batch(&full, rows, None)) {
        Ok(result) => result,
        Err(first) => {
            let ranged = plan_typed(
                &format!("{key}|range"),
                &sql(true),
                &[pg_sys::JSONBOID, pg_sys::INT8OID, pg_sys::INT8OID],
            )?;
            let (mut lo, mut hi) = (1i64, n as i64);
            let mut last = first;
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match in_subtransaction(|| run_batch(&ranged, rows, Some((lo, mid)))) {
                    Err(e) => {
                        last = e;
                        hi = mid;
                    }
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(_)) => lo = mid + 1,
                }
            }
            if let Err(e) = in_subtransaction(|| run_batch(&ranged, rows, Some((lo, lo)))) {
                last = e;
            }
            Err(translate(t, def, last, Some((lo - 1) as usize)))
        }
    }
}

thread_local! {
    static TYPED: crate::cache::Cache<String, Rc<rawspi::Plan>> = crate::cache::Lru::new("batch writes");
}

fn plan_typed(key: &str, sql: &str, types: &[pg_sys::Oid]) -> Result<Rc<rawspi::Plan>> {
    crate::cache::sync(&TYPED, catalog::generation());
    let full_key = format!("{key}|{sql}");
    if let Some(p) = crate::cache::get(&TYPED, &full_key) {
        return Ok(p);
    }
    let p = Rc::new(rawspi::prepare_typed(sql, types)?);
    let bytes = p.bytes() + full_key.len() * 2;
    crate::cache::put(&TYPED, full_key, p.clone(), bytes);
    Ok(p)
}

pub fn insert_many(entity: &str, rows_datum: pg_sys::Datum) -> Result<Value> {
    let (t, e) = entity_of(entity)?;
    let def = &e.def;
    let rows = rawspi::jsonb_value(rows_datum);
    let b = r::check_batch(def, &rows)?;
    let n = b.rows;
    let key = batch_key(&b);
    let d = batch(&t, def, rows_datum, n, &format!("insmany|{key}"), |range| {
        r::insert_many_sql(&t.schema, def, &b, range)
    })?;
    let inserted = d.map(rawspi::int8).unwrap_or(0);
    Ok(json!({"entity": entity, "inserted": inserted}))
}

/// `udm_replace`: the record holds `fields` and nothing older: every other field the caller may
/// write becomes null (`udm_core::records::replacement`), in one `udm_update`.
pub fn replace(
    entity: &str,
    id: &str,
    fields: &Value,
    expected: Option<i32>,
) -> Result<pg_sys::Datum> {
    let (t, e) = entity_of(entity)?;
    let ctx = crate::access::context(&t)?;
    let may_write = |f: &udm_core::definition::FieldDef| {
        !t.access
            || ctx.db_admin
            || ctx
                .perms
                .field_writable(&e.def.slug, &f.name, udm_core::access::Op::Update)
    };
    let patch = r::replacement(&e.def, fields, &may_write)?;
    update(entity, id, &patch, expected)
}

pub fn upsert_many(entity: &str, rows_datum: pg_sys::Datum, key: &[String]) -> Result<Value> {
    let (t, e) = entity_of(entity)?;
    let def = &e.def;
    let key_cols = r::check_upsert_key(def, key)?;
    let rows = rawspi::jsonb_value(rows_datum);
    let b = r::check_batch(def, &rows)?;
    if !b.links.is_empty() {
        return Err(UdmError::new(
            SqlState::FeatureNotSupported,
            format!(
                "udm_upsert_many: many-to-many fields ({}) cannot be upserted in a batch",
                b.links
                    .iter()
                    .map(|l| l.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .hint("set links with udm_update per record"));
    }
    r::check_unique_keys(&rows, key)?;
    let shape = format!("upsert|{}|{}", batch_key(&b), key_cols.join(","));
    let d = batch(&t, def, rows_datum, b.rows, &shape, |range| {
        // counts come back as a record; the first column is what first_datum returns
        r::upsert_many_sql(&t.schema, def, &b, &key_cols, range).replacen(
            "SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM w",
            "SELECT jsonb_build_object('inserted', count(*) FILTER (WHERE ins), 'updated', count(*) FILTER (WHERE NOT ins)) FROM w",
            1,
        )
    })?;
    let mut out = d.map(rawspi::jsonb_value).unwrap_or(json!({}));
    out["entity"] = json!(entity);
    Ok(out)
}

// ------------------------------------------------------------------ SQL surface

unsafe fn arg_text(fcinfo: pg_sys::FunctionCallInfo, n: usize, name: &str) -> String {
    unsafe {
        pg_getarg::<String>(fcinfo, n)
            .unwrap_or_else(|| raise(UdmError::invalid(format!("{name} must not be NULL"))))
    }
}

unsafe fn arg_uuid(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> String {
    unsafe {
        pg_getarg::<pgrx::Uuid>(fcinfo, n)
            .map(|u| u.to_string())
            .unwrap_or_else(|| raise(UdmError::invalid("id must not be NULL")))
    }
}

unsafe fn arg_json(fcinfo: pg_sys::FunctionCallInfo, n: usize, name: &str) -> Value {
    unsafe {
        pg_getarg::<JsonB>(fcinfo, n)
            .map(|j| j.0)
            .unwrap_or_else(|| raise(UdmError::invalid(format!("{name} must not be NULL"))))
    }
}

finfo_v1!(pg_finfo_udm_insert);
finfo_v1!(pg_finfo_udm_get);
finfo_v1!(pg_finfo_udm_update);
finfo_v1!(pg_finfo_udm_replace);
finfo_v1!(pg_finfo_udm_delete);
finfo_v1!(pg_finfo_udm_insert_many);
finfo_v1!(pg_finfo_udm_upsert_many);

/// `udm_insert(entity text, data jsonb) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_insert(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let data = arg_json(fcinfo, 1, "data");
        insert(&entity, &data).or_raise()
    }
}

/// `udm_get(entity text, id uuid, columns text[] DEFAULT NULL) returns jsonb` (NULL when the
/// record does not exist)
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_get(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        if pgrx::fcinfo::pg_arg_is_null(fcinfo, 1) {
            raise(UdmError::invalid("id must not be NULL"));
        }
        let id = pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, 1);
        let columns = pg_getarg::<Vec<Option<String>>>(fcinfo, 2)
            .map(|c| crate::error::text_list(Some(c), "columns"));
        match get(&entity, id, columns).or_raise() {
            Some(d) => d,
            None => pgrx::fcinfo::pg_return_null(fcinfo),
        }
    }
}

/// `udm_update(entity text, id uuid, patch jsonb, expected_version integer DEFAULT NULL)`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_update(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let id = arg_uuid(fcinfo, 1);
        let patch = arg_json(fcinfo, 2, "patch");
        let expected = pg_getarg::<i32>(fcinfo, 3);
        update(&entity, &id, &patch, expected).or_raise()
    }
}

/// `udm_replace(entity text, id uuid, fields jsonb, expected_version integer DEFAULT NULL)`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_replace(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let id = arg_uuid(fcinfo, 1);
        let fields = arg_json(fcinfo, 2, "fields");
        let expected = pg_getarg::<i32>(fcinfo, 3);
        replace(&entity, &id, &fields, expected).or_raise()
    }
}

/// `udm_delete(entity text, id uuid) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_delete(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let id = arg_uuid(fcinfo, 1);
        JsonB(delete(&entity, &id).or_raise())
            .into_datum()
            .expect("jsonb")
    }
}

unsafe fn rows_arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> pg_sys::Datum {
    unsafe {
        if pgrx::fcinfo::pg_arg_is_null(fcinfo, n) {
            raise(UdmError::invalid("rows must not be NULL"));
        }
        // a detoasted copy: the batch reads it twice (checks in Rust, rows in SQL)
        pg_sys::Datum::from(pg_sys::pg_detoast_datum_packed(
            pgrx::fcinfo::pg_getarg_datum_raw(fcinfo, n).cast_mut_ptr(),
        ))
    }
}

/// `udm_insert_many(entity text, rows jsonb) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_insert_many(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let rows = rows_arg(fcinfo, 1);
        JsonB(insert_many(&entity, rows).or_raise())
            .into_datum()
            .expect("jsonb")
    }
}

/// `udm_upsert_many(entity text, rows jsonb, key text[]) returns jsonb`
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_upsert_many(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let entity = arg_text(fcinfo, 0, "entity");
        let rows = rows_arg(fcinfo, 1);
        let key = crate::error::text_list(pg_getarg::<Vec<Option<String>>>(fcinfo, 2), "key");
        JsonB(upsert_many(&entity, rows, &key).or_raise())
            .into_datum()
            .expect("jsonb")
    }
}

// ------------------------------------------------------------------ record ids

finfo_v1!(pg_finfo_udm_uuid_v7);

/// Random bytes for ids are fetched this many at a time (one call into the strong random source
/// per 32 ids instead of one per id).
const RANDOM_POOL: usize = 256;

struct IdSource {
    clock: udm_core::ids::V7Clock,
    pool: [u8; RANDOM_POOL],
    used: usize,
}

thread_local! {
    static IDS: std::cell::RefCell<IdSource> = const {
        std::cell::RefCell::new(IdSource {
            clock: udm_core::ids::V7Clock::new(),
            pool: [0; RANDOM_POOL],
            used: RANDOM_POOL,
        })
    };
}

/// `udm.uuid_v7()`: a new record id, time-ordered (UUID version 7, see `udm_core::ids`), with
/// 62 bits from PostgreSQL's strong random source, the one `gen_random_uuid()` uses.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_uuid_v7(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    crate::triggers::uuid_datum(&uuid_v7())
}

/// A new UUIDv7 (what `udm.uuid_v7()` returns).
pub fn uuid_v7() -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    IDS.with(|s| {
        let s = &mut *s.borrow_mut();
        if s.used + 8 > RANDOM_POOL {
            if !unsafe { pg_sys::pg_strong_random(s.pool.as_mut_ptr().cast(), RANDOM_POOL) } {
                raise(UdmError::internal(
                    "udm.uuid_v7: could not generate random values",
                ));
            }
            s.used = 0;
        }
        let mut random = [0u8; 8];
        random.copy_from_slice(&s.pool[s.used..s.used + 8]);
        s.used += 8;
        s.clock.next(now, random)
    })
}
