//! Functions udm attaches to entity tables, written against PostgreSQL's C interface so they
//! cost little per row: the row stamp trigger, the rule check called by CHECK constraints, and the
//! polymorphic reference triggers. They hold every write to the rules, plain SQL included.

use crate::catalog;
use crate::error::{raise, spi_err, OrRaise, Result, SqlState, UdmError};
use crate::guc;
use crate::trust::{required_column, trigger_args, typed_column};
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use std::ffi::CStr;
use udm_core::checks::field_rule_message;
use udm_core::definition::Stage;
use udm_core::ident::{qualified, quote_ident};
use udm_core::types::FieldType;

finfo_v1!(pg_finfo_udm_stamp_row);
finfo_v1!(pg_finfo_udm_check_rule);
finfo_v1!(pg_finfo_udm_reference_check);
finfo_v1!(pg_finfo_udm_reference_on_delete);

pub(crate) unsafe fn trigger_data(
    fcinfo: pg_sys::FunctionCallInfo,
    name: &str,
) -> *mut pg_sys::TriggerData {
    unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_TriggerData {
            raise(UdmError::new(
                SqlState::FeatureNotSupported,
                format!("{name}() can only be called as a trigger"),
            ));
        }
        ctx as *mut pg_sys::TriggerData
    }
}

/// The trigger data of a row trigger and its event, refusing to run as anything but a
/// `BEFORE` (or `AFTER`) `... FOR EACH ROW` trigger.
pub(crate) unsafe fn row_trigger_data(
    fcinfo: pg_sys::FunctionCallInfo,
    name: &str,
    before: bool,
) -> (*mut pg_sys::TriggerData, u32) {
    unsafe {
        let td = trigger_data(fcinfo, name);
        let ev = (*td).tg_event;
        let timing = if before {
            pg_sys::TRIGGER_EVENT_BEFORE
        } else {
            pg_sys::TRIGGER_EVENT_AFTER
        };
        if ev & pg_sys::TRIGGER_EVENT_ROW == 0 || ev & pg_sys::TRIGGER_EVENT_TIMINGMASK != timing {
            raise(UdmError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "{name}() must be {} ... FOR EACH ROW trigger",
                    if before { "a BEFORE" } else { "an AFTER" }
                ),
            ));
        }
        (td, ev)
    }
}

pub(crate) unsafe fn relation_names(rel: pg_sys::Relation) -> (String, String) {
    unsafe {
        let name = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr())
            .to_string_lossy()
            .into_owned();
        let nsp = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
        let schema = if nsp.is_null() {
            String::new()
        } else {
            CStr::from_ptr(nsp).to_string_lossy().into_owned()
        };
        (schema, name)
    }
}

pub(crate) fn text_datum(s: &str) -> pg_sys::Datum {
    s.into_datum().expect("text is never NULL")
}

fn is_bcrypt_hash(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 60
        && (s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2y$"))
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

pub(crate) unsafe fn uuid_bytes(d: pg_sys::Datum) -> [u8; 16] {
    unsafe {
        let p = d.cast_mut_ptr::<u8>();
        let mut out = [0u8; 16];
        std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), 16);
        out
    }
}

/// A uuid datum (in the current memory context) from its 16 bytes.
pub(crate) fn uuid_datum(b: &[u8; 16]) -> pg_sys::Datum {
    pgrx::Uuid::from_bytes(*b)
        .into_datum()
        .expect("uuid is never NULL")
}

/// Hashes a password column's new value (plain text) with bcrypt, after checking its length.
/// Returns None when nothing is to be done (NULL, unchanged, or already a bcrypt hash).
unsafe fn hash_password(
    newtup: pg_sys::HeapTuple,
    oldtup: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attno: i32,
    table: &str,
    column: &str,
    min_len: usize,
) -> Option<pg_sys::Datum> {
    unsafe {
        let mut n = false;
        let v = pg_sys::heap_getattr(newtup, attno, desc, &mut n);
        if n {
            return None;
        }
        let plain = String::from_datum(v, false).unwrap_or_default();
        if !oldtup.is_null() {
            let mut on = false;
            let ov = pg_sys::heap_getattr(oldtup, attno, desc, &mut on);
            if !on && String::from_datum(ov, false).as_deref() == Some(plain.as_str()) {
                return None; // the stored hash, unchanged
            }
        }
        if is_bcrypt_hash(&plain) {
            return None; // already a hash (an import)
        }
        if plain.chars().count() < min_len {
            raise(
                UdmError::new(
                    SqlState::CheckViolation,
                    format!("{table}.{column} must have at least {min_len} characters"),
                )
                .detail(format!(
                    "entity \"{table}\", field \"{column}\", rule \"min_length\""
                )),
            );
        }
        let cost = guc::BCRYPT_COST.get().clamp(4, 31) as u32;
        let hash = bcrypt::hash(plain.as_bytes(), cost)
            .unwrap_or_else(|e| raise(UdmError::internal(format!("bcrypt failed: {e}"))));
        Some(text_datum(&hash))
    }
}

/// What the stamp trigger of one table needs, read from the entity's definition in udm's catalog
/// (never from the trigger's arguments) once per backend and definition change.
struct StampPlan {
    table: String,
    schema: String,
    tenant: std::rc::Rc<catalog::Tenant>,
    /// Attribute numbers of id, created_at, updated_at, created_by, updated_by, _version.
    system: [i32; 6],
    args: Vec<StampArg>,
    /// A batched tenant's pointer column (`audit::batch::PTR_COLUMN`), and whether the entity
    /// is audited (a change that is not keeps the row's pointer).
    ptr: Option<i32>,
    audited: bool,
}

enum StampArg {
    /// A required field: (attribute, field id).
    Required { attr: i32, field: u32 },
    /// A password field, hashed on write.
    Password {
        attr: i32,
        column: String,
        min_len: usize,
    },
    /// A user field: the tenant must know the user it names (and learns a registered one).
    User { attr: i32, field: String },
    /// An encrypted field: a plaintext written is checked against the field's rules and sealed.
    Sealed {
        attr: i32,
        spec: crate::crypto::SealSpec,
    },
    /// A field whose encryption is turned on in stages (`Stage::Sealing`): the value written
    /// (any type, `attr`) is sealed into the hidden text column `sealed`, whatever was written
    /// there; an update that keeps the value keeps its sealed form.
    Staged {
        attr: i32,
        sealed: i32,
        /// The type's output function, its by-value flag and length (of `attr`).
        output: pg_sys::Oid,
        byval: bool,
        len: i16,
        spec: crate::crypto::SealSpec,
    },
    /// The old plaintext column of a field whose values were swapped for sealed ones
    /// (`Stage::Scrubbing`): cleared by every write of its row, whatever was written to it.
    Cleared { attr: i32 },
}

thread_local! {
    static STAMP_PLANS: crate::cache::Cache<pg_sys::Oid, std::rc::Rc<StampPlan>> =
        crate::cache::Lru::new("row stamps");
}

const STAMP: &str = "udm.stamp_row";

unsafe fn stamp_plan(td: *mut pg_sys::TriggerData) -> std::rc::Rc<StampPlan> {
    unsafe {
        let rel = (*td).tg_relation;
        let tt = crate::trust::trigger_table(td, STAMP);
        let relid = (*rel).rd_id;
        crate::cache::sync(&STAMP_PLANS, catalog::generation());
        if let Some(p) = crate::cache::get(&STAMP_PLANS, &relid) {
            return p;
        }
        let e = crate::trust::entity_table(&tt, STAMP);
        let desc = (*rel).rd_att;
        let table = tt.name.as_str();
        let col = |n: &str, typ: pg_sys::Oid| required_column(desc, table, n, typ, STAMP);
        let system = [
            col("id", pg_sys::UUIDOID),
            col("created_at", pg_sys::TIMESTAMPTZOID),
            col("updated_at", pg_sys::TIMESTAMPTZOID),
            col("created_by", pg_sys::TEXTOID),
            col("updated_by", pg_sys::TEXTOID),
            col("_version", pg_sys::INT4OID),
        ];
        let mut args = Vec::new();
        for f in e.def.fields.iter().filter(|f| f.has_column()) {
            if f.required {
                // any type: only its NULL flag is read
                if let Some(attr) = column_any_type(desc, &f.column) {
                    args.push(StampArg::Required { attr, field: f.id });
                }
            }
            if f.ftype == FieldType::User {
                args.push(StampArg::User {
                    attr: col(&f.column, pg_sys::UUIDOID),
                    field: f.name.clone(),
                });
            }
            if f.encrypted {
                args.push(StampArg::Sealed {
                    attr: col(&f.column, pg_sys::TEXTOID),
                    spec: crate::crypto::SealSpec::of(&tt.tenant, &e.def, f),
                });
            }
            if f.encryption_stage == Some(Stage::Sealing) {
                let sealed = col(&f.sealed_column(), pg_sys::TEXTOID);
                let attr = crate::trust::present_column(desc, table, &f.column, STAMP);
                let a = (*desc).attrs.as_slice((*desc).natts as usize)[attr as usize - 1];
                let (mut output, mut varlena) = (pg_sys::Oid::INVALID, false);
                pg_sys::getTypeOutputInfo(a.atttypid, &mut output, &mut varlena);
                args.push(StampArg::Staged {
                    attr,
                    sealed,
                    output,
                    byval: a.attbyval,
                    len: a.attlen,
                    spec: crate::crypto::SealSpec::of(&tt.tenant, &e.def, &f.as_encrypted()),
                });
            }
            if f.encryption_stage == Some(Stage::Scrubbing) {
                args.push(StampArg::Cleared {
                    attr: crate::trust::present_column(desc, table, &f.plain_column(), STAMP),
                });
            }
            if f.ftype == FieldType::Password {
                args.push(StampArg::Password {
                    attr: col(&f.column, pg_sys::TEXTOID),
                    column: f.column.clone(),
                    min_len: f.min_length.unwrap_or(0) as usize,
                });
            }
        }
        let ptr = crate::audit::batch::is_batched(&tt.tenant)
            .then(|| col(crate::audit::batch::PTR_COLUMN, pg_sys::INT8OID));
        let p = std::rc::Rc::new(StampPlan {
            table: tt.name.clone(),
            schema: tt.tenant.schema.clone(),
            tenant: tt.tenant.clone(),
            system,
            args,
            ptr,
            audited: e.def.audit,
        });
        let bytes = 256 + p.table.len() + p.schema.len() + p.args.len() * 64;
        crate::cache::put_scoped(&STAMP_PLANS, tt.tenant.scope(), relid, p.clone(), bytes);
        p
    }
}

/// Attribute number (1-based) of a column of any type, if present and not dropped.
pub(crate) fn column_any_type(desc: pg_sys::TupleDesc, name: &str) -> Option<i32> {
    unsafe {
        let natts = (*desc).natts as usize;
        (*desc)
            .attrs
            .as_slice(natts)
            .iter()
            .position(|a| !a.attisdropped && a.name() == name)
            .map(|i| i as i32 + 1)
    }
}

/// `BEFORE INSERT OR UPDATE FOR EACH ROW`: system columns are udm's. On insert they are set;
/// on update `id` and `created_*` keep their values, `updated_*` are set and `_version` counts
/// up. Password columns (trigger arguments `column:min_length`) are hashed with bcrypt.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_stamp_row(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = row_trigger_data(fcinfo, STAMP, true);
        let op = ev & pg_sys::TRIGGER_EVENT_OPMASK;
        let is_insert = op == pg_sys::TRIGGER_EVENT_INSERT;
        if !is_insert && op != pg_sys::TRIGGER_EVENT_UPDATE {
            raise(UdmError::new(
                SqlState::FeatureNotSupported,
                "udm.stamp_row() handles INSERT and UPDATE only",
            ));
        }
        let rel = (*td).tg_relation;
        let desc = (*rel).rd_att;
        let (newtup, oldtup) = if is_insert {
            ((*td).tg_trigtuple, std::ptr::null_mut())
        } else {
            ((*td).tg_newtuple, (*td).tg_trigtuple)
        };
        let plan = stamp_plan(td);
        let table = plan.table.as_str();
        let [a_id, a_cat, a_uat, a_cby, a_uby, a_ver] = plan.system;
        let now = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
        let actor = text_datum(&crate::access::security::actor());

        let mut cols: Vec<i32> = Vec::with_capacity(8);
        let mut vals: Vec<pg_sys::Datum> = Vec::with_capacity(8);
        let mut nulls: Vec<bool> = Vec::with_capacity(8);
        let mut set = |a: i32, v: pg_sys::Datum, n: bool| {
            cols.push(a);
            vals.push(v);
            nulls.push(n);
        };
        if is_insert {
            set(a_cat, now, false);
            set(a_uat, now, false);
            set(a_cby, actor, false);
            set(a_uby, actor, false);
            let mut n = false;
            let id = pg_sys::heap_getattr(newtup, a_id, desc, &mut n);
            let version = if n {
                1
            } else {
                crate::audit::restore_version(&uuid_bytes(id)).unwrap_or(1)
            };
            set(a_ver, pg_sys::Datum::from(version), false);
        } else {
            let (mut n_old, mut n_new) = (false, false);
            let old_id = pg_sys::heap_getattr(oldtup, a_id, desc, &mut n_old);
            let new_id = pg_sys::heap_getattr(newtup, a_id, desc, &mut n_new);
            if n_new || n_old || uuid_bytes(old_id) != uuid_bytes(new_id) {
                raise(
                    UdmError::new(
                        SqlState::FeatureNotSupported,
                        format!("the id of a {table} record cannot change"),
                    )
                    .hint("create a new record instead"),
                );
            }
            for a in [a_cat, a_cby] {
                let mut n = false;
                let v = pg_sys::heap_getattr(oldtup, a, desc, &mut n);
                set(a, v, n);
            }
            let mut n = false;
            let old_version = pg_sys::heap_getattr(oldtup, a_ver, desc, &mut n);
            let next = if n { 1 } else { old_version.value() as i32 + 1 };
            set(a_uat, now, false);
            set(a_uby, actor, false);
            set(a_ver, pg_sys::Datum::from(next), false);
        }
        if let Some(a) = plan.ptr {
            // the pointer of this change (the audit trigger records it there), whatever the
            // row was given; a change that is not audited keeps the latest audited one's
            if plan.audited {
                let p = crate::audit::batch::next_pointer(&plan.tenant, (*rel).rd_id).or_raise();
                set(a, pg_sys::Datum::from(p), false);
            } else if is_insert {
                set(a, pg_sys::Datum::from(0usize), true);
            } else {
                let mut n = false;
                let v = pg_sys::heap_getattr(oldtup, a, desc, &mut n);
                set(a, v, n);
            }
        }
        for arg in &plan.args {
            match arg {
                StampArg::Required { attr, field } => {
                    let mut n = false;
                    pg_sys::heap_getattr(newtup, *attr, desc, &mut n);
                    if n {
                        raise(rule_violation(
                            &plan.schema,
                            table,
                            &format!("f{field}.required"),
                        ));
                    }
                }
                StampArg::Password {
                    attr,
                    column,
                    min_len,
                } => {
                    if let Some(h) =
                        hash_password(newtup, oldtup, desc, *attr, table, column, *min_len)
                    {
                        set(*attr, h, false);
                    }
                }
                StampArg::User { attr, field } => {
                    let mut n = false;
                    let v = pg_sys::heap_getattr(newtup, *attr, desc, &mut n);
                    if !n {
                        let id = pgrx::Uuid::from_bytes(uuid_bytes(v));
                        crate::access::users::require_known(&plan.tenant, id, table, field)
                            .or_raise();
                    }
                }
                StampArg::Sealed { attr, spec } => {
                    let mut n = false;
                    let v = pg_sys::heap_getattr(newtup, *attr, desc, &mut n);
                    if n {
                        continue;
                    }
                    let value = String::from_datum(v, false).unwrap_or_default();
                    if !oldtup.is_null() {
                        let mut on = false;
                        let ov = pg_sys::heap_getattr(oldtup, *attr, desc, &mut on);
                        if !on && String::from_datum(ov, false).as_deref() == Some(value.as_str()) {
                            continue; // the stored value, unchanged
                        }
                    }
                    let mut idn = false;
                    let id = pg_sys::heap_getattr(newtup, a_id, desc, &mut idn);
                    if idn {
                        continue; // the NOT NULL of id refuses the row
                    }
                    if let Some(sealed) =
                        crate::crypto::seal_for_write(&plan.tenant, spec, &uuid_bytes(id), &value)
                            .or_raise()
                    {
                        set(*attr, text_datum(&sealed), false);
                    }
                }
                StampArg::Staged {
                    attr,
                    sealed,
                    output,
                    byval,
                    len,
                    spec,
                } => {
                    let mut n = false;
                    let v = pg_sys::heap_getattr(newtup, *attr, desc, &mut n);
                    if n {
                        set(*sealed, pg_sys::Datum::from(0usize), true);
                        continue;
                    }
                    if !oldtup.is_null() {
                        let mut on = false;
                        let ov = pg_sys::heap_getattr(oldtup, *attr, desc, &mut on);
                        if !on && crate::audit::same_image(v, ov, *byval, *len) {
                            let mut sn = false;
                            let sv = pg_sys::heap_getattr(oldtup, *sealed, desc, &mut sn);
                            if !sn {
                                set(*sealed, sv, false); // the value and its sealed form, kept
                                continue;
                            }
                        }
                    }
                    let mut idn = false;
                    let id = pg_sys::heap_getattr(newtup, a_id, desc, &mut idn);
                    if idn {
                        continue; // the NOT NULL of id refuses the row
                    }
                    // the value as text (in this session's styles, which the canonical form
                    // that is sealed reads back)
                    let text = CStr::from_ptr(pg_sys::OidOutputFunctionCall(*output, v))
                        .to_string_lossy()
                        .into_owned();
                    match crate::crypto::seal_for_write(&plan.tenant, spec, &uuid_bytes(id), &text)
                        .or_raise()
                    {
                        Some(s) => set(*sealed, text_datum(&s), false),
                        None => set(*sealed, pg_sys::Datum::from(0usize), true),
                    }
                }
                StampArg::Cleared { attr } => set(*attr, pg_sys::Datum::from(0usize), true),
            }
        }
        let out = pg_sys::heap_modify_tuple_by_cols(
            newtup,
            desc,
            cols.len() as i32,
            cols.as_mut_ptr(),
            vals.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        pg_sys::Datum::from(out)
    }
}

/// `udm.check_rule(ok, schema, entity, key)`: the body of every udm CHECK constraint. Returns
/// true when the rule holds; otherwise raises an ERROR that names entity, field and rule. STRICT,
/// so a NULL condition passes (SQL's rule for CHECK).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_check_rule(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        if pg_getarg::<bool>(fcinfo, 0).unwrap_or(true) {
            return pg_sys::Datum::from(true);
        }
        let schema: String = pg_getarg(fcinfo, 1).unwrap_or_default();
        let entity: String = pg_getarg(fcinfo, 2).unwrap_or_default();
        let key: String = pg_getarg(fcinfo, 3).unwrap_or_default();
        // the rule's words are the tenant's: only its members (who write its tables, where the
        // CHECK constraints call this) read them
        let t = catalog::tenant(&schema)
            .or_raise()
            .unwrap_or_else(|| raise(catalog::no_such_tenant(&schema)));
        catalog::require_member(&t).or_raise();
        raise(rule_violation(&schema, &entity, &key))
    }
}

/// The error for a failed rule, worded from the entity's current definition.
pub(crate) fn rule_violation(schema: &str, entity: &str, key: &str) -> UdmError {
    let fallback = || {
        UdmError::new(
            SqlState::CheckViolation,
            format!("{entity} breaks rule {key}"),
        )
        .detail(format!(
            "entity \"{entity}\" of tenant \"{schema}\", rule \"{key}\""
        ))
    };
    let found = catalog::tenant(schema)
        .ok()
        .flatten()
        .and_then(|t| catalog::entity_any(&t, entity).ok().flatten());
    let Some(e) = found else { return fallback() };
    let def = &e.def;
    let hint = format!(
        "{} shows the entity's rules",
        udm_core::ident::sql_call("udm_describe", &[entity])
    );
    if let Some(name) = key.strip_prefix("r.") {
        let Some(r) = def.rules.iter().find(|r| r.name == name) else {
            return fallback();
        };
        let msg = r
            .message
            .clone()
            .unwrap_or_else(|| format!("{entity} breaks rule \"{name}\": {}", r.check));
        return UdmError::new(SqlState::CheckViolation, msg)
            .detail(format!(
                "entity \"{entity}\" of tenant \"{schema}\", rule \"{name}\": {}",
                r.check
            ))
            .hint(hint);
    }
    let parsed = key
        .strip_prefix('f')
        .and_then(|k| k.split_once('.'))
        .and_then(|(id, rule)| Some((id.parse::<u32>().ok()?, rule)));
    let Some((id, rule)) = parsed else {
        return fallback();
    };
    let Some(f) = def.field_by_id(id) else {
        return fallback();
    };
    let state = if rule == "required" {
        SqlState::NotNullViolation
    } else {
        SqlState::CheckViolation
    };
    UdmError::new(state, field_rule_message(def, f, rule))
        .detail(format!(
            "entity \"{entity}\" of tenant \"{schema}\", field \"{}\", rule \"{rule}\"",
            f.name
        ))
        .hint(hint)
}

/// Reads `(entity, id)` of a `udm.ref` column (attribute `attr`, type-checked) of a row.
unsafe fn reference_of(
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    attr: i32,
) -> Option<(String, pgrx::Uuid)> {
    unsafe {
        let mut n = false;
        let d = pg_sys::heap_getattr(tuple, attr, desc, &mut n);
        if n {
            return None;
        }
        let hdr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let (mut n1, mut n2) = (false, false);
        let e = pg_sys::GetAttributeByNum(hdr, 1, &mut n1);
        let i = pg_sys::GetAttributeByNum(hdr, 2, &mut n2);
        if n1 || n2 {
            return None;
        }
        Some((
            String::from_datum(e, false)?,
            pgrx::Uuid::from_datum(i, false)?,
        ))
    }
}

fn reference_exists(schema: &str, entity: &str, id: pgrx::Uuid) -> Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE id = $1)",
        qualified(schema, entity)
    );
    Spi::connect(|c| {
        c.select(sql.as_str(), None, &[id.into()])?
            .first()
            .get_one::<bool>()
    })
    .map(|b| b.unwrap_or(false))
    .map_err(spi_err)
}

const REF_CHECK: &str = "udm.reference_check";
const REF_DELETE: &str = "udm.reference_on_delete";

/// Constraint trigger on tables with a reference field (argument: the field's column, a key into
/// the entity's definition): the referenced record must exist and be of one of the field's
/// targets. It runs as the writing role, a member of the tenant.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_reference_check(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = row_trigger_data(fcinfo, REF_CHECK, false);
        let rel = (*td).tg_relation;
        let tt = crate::trust::trigger_table(td, REF_CHECK);
        let e = crate::trust::entity_table(&tt, REF_CHECK);
        let desc = (*rel).rd_att;
        let (schema, table) = (tt.tenant.schema.as_str(), tt.name.as_str());
        let op = ev & pg_sys::TRIGGER_EVENT_OPMASK;
        if op == pg_sys::TRIGGER_EVENT_DELETE {
            return pg_sys::Datum::from(0usize);
        }
        let tuple = if op == pg_sys::TRIGGER_EVENT_UPDATE {
            (*td).tg_newtuple
        } else {
            (*td).tg_trigtuple
        };
        // arguments: the entity and the field's id (before udm 0.2.0: the field's column)
        let args = trigger_args(td);
        let keys: Vec<&String> = if args.len() == 2 && args[0] == e.def.slug {
            vec![&args[1]]
        } else {
            args.iter().collect()
        };
        for k in keys {
            let id = k.parse::<u32>().ok();
            let Some(f) =
                e.def.fields.iter().find(|f| {
                    f.ftype == FieldType::Reference && (Some(f.id) == id || f.column == *k)
                })
            else {
                raise(crate::trust::not_in_catalog(
                    &tt,
                    REF_CHECK,
                    &format!("has no reference field {}", udm_core::ident::printable(k)),
                ));
            };
            let column = f.column.clone();
            let Some(attr) =
                typed_column(desc, table, &column, crate::trust::ref_type(), REF_CHECK)
            else {
                continue;
            };
            let Some((entity, id)) = reference_of(tuple, desc, attr) else {
                continue;
            };
            let known = f.targets.contains(&entity);
            if !known || !reference_exists(schema, &entity, id).unwrap_or_else(|e| raise(e)) {
                raise(
                    UdmError::new(
                        SqlState::ForeignKeyViolation,
                        format!(
                            "{table}.{} refers to {} {id}, which does not exist",
                            f.name,
                            udm_core::ident::printable(&entity)
                        ),
                    )
                    .detail(format!(
                        "entity \"{table}\" of tenant \"{}\", field \"{}\", rule \"reference\"",
                        tt.tenant.slug, f.name
                    ))
                    .hint(format!(
                        "{}.{} refers to records of {}",
                        table,
                        f.name,
                        udm_core::error::name_list(f.targets.clone())
                    )),
                );
            }
        }
        pg_sys::Datum::from(0usize)
    }
}

/// BEFORE DELETE on a reference's target (arguments: source entity and column, keys into the
/// catalog; the action is the field's `on_delete` there): restrict, cascade or set null. Runs as
/// the deleting role.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_reference_on_delete(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = row_trigger_data(fcinfo, REF_DELETE, true);
        if ev & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_DELETE {
            raise(UdmError::new(
                SqlState::FeatureNotSupported,
                format!("{REF_DELETE}() handles DELETE only"),
            ));
        }
        let rel = (*td).tg_relation;
        let tt = crate::trust::trigger_table(td, REF_DELETE);
        crate::trust::entity_table(&tt, REF_DELETE);
        let desc = (*rel).rd_att;
        let (schema, target) = (tt.tenant.schema.as_str(), tt.name.as_str());
        // arguments: this (target) entity, the source entity and the reference field's id
        // (before udm 0.2.0: the source entity, the field's column and the action)
        let args = trigger_args(td);
        let (source, column) = match args.as_slice() {
            [t, s, id] if t == target && id.parse::<u32>().is_ok() => (s.as_str(), id.as_str()),
            [s, c, ..] => (s.as_str(), c.as_str()),
            _ => raise(crate::trust::not_in_catalog(
                &tt,
                REF_DELETE,
                "has a reference trigger without its source field",
            )),
        };
        let field_id = column.parse::<u32>().ok();
        // the source entity and its field, from the catalog
        let field = catalog::entity_any(&tt.tenant, source)
            .unwrap_or_else(|e| raise(e))
            .and_then(|e| {
                e.def
                    .fields
                    .iter()
                    .find(|f| {
                        f.ftype == FieldType::Reference
                            && (Some(f.id) == field_id || f.column == column)
                            && f.targets.iter().any(|t| t == target)
                    })
                    .map(|f| (f.column.clone(), f.name.clone(), f.on_delete().name()))
            });
        let Some((column, field_name, action)) = field else {
            raise(crate::trust::not_in_catalog(
                &tt,
                REF_DELETE,
                &format!(
                    "is not a target of a reference field {}.{}",
                    udm_core::ident::printable(source),
                    udm_core::ident::printable(column)
                ),
            ));
        };
        let a = crate::trust::required_column(desc, target, "id", pg_sys::UUIDOID, REF_DELETE);
        let mut n = false;
        let id =
            pgrx::Uuid::from_datum(pg_sys::heap_getattr((*td).tg_trigtuple, a, desc, &mut n), n);
        if let Some(id) = id {
            let table = qualified(schema, source);
            let col = quote_ident(&column);
            let cond = format!("({col}).entity = $1 AND ({col}).id = $2");
            let args = [target.into(), id.into()];
            let still_referenced = crate::spi::connect_mut("DELETE", |c| match action {
                "cascade" => c
                    .update(
                        format!("DELETE FROM {table} WHERE {cond}").as_str(),
                        None,
                        &args,
                    )
                    .map(|_| false),
                "set_null" => c
                    .update(
                        format!("UPDATE {table} SET {col} = NULL WHERE {cond}").as_str(),
                        None,
                        &args,
                    )
                    .map(|_| false),
                _ => c
                    .select(
                        format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {cond})").as_str(),
                        None,
                        &args,
                    )?
                    .first()
                    .get_one::<bool>()
                    .map(|b| b.unwrap_or(false)),
            })
            .unwrap_or_else(|e| raise(spi_err(e)));
            if still_referenced {
                raise(
                    UdmError::new(
                        SqlState::ForeignKeyViolation,
                        format!(
                            "{target} {id} cannot be deleted: {source}.{field_name} still refers to it"
                        ),
                    )
                    .hint(format!("change or delete those {source} records first")),
                );
            }
        }
        pg_sys::Datum::from((*td).tg_trigtuple)
    }
}

// ------------------------------------------------------------------ rules over related records

finfo_v1!(pg_finfo_udm_rule_trigger);

thread_local! {
    /// Plans of rule probes by SQL text (the text names the tables, columns and condition, so a
    /// changed rule is a new key; PostgreSQL re-plans a kept plan when a table it reads changes).
    static RULE_PLANS: crate::query::rawspi::PlanCache =
        crate::cache::Lru::new("rule probe plans");
}

fn rule_plan(sql: &str) -> Result<std::rc::Rc<crate::query::rawspi::Plan>> {
    crate::query::rawspi::kept_plan(&RULE_PLANS, sql, &[pg_sys::UUIDOID], 0)
}

/// Runs a probe statement with `key` as `$1`; returns the first column of its first row.
fn run_probe(sql: &str, key: pg_sys::Datum) -> Result<Option<pg_sys::Datum>> {
    let plan = rule_plan(sql)?;
    let mut values = [key];
    let nulls = [b' ' as std::os::raw::c_char];
    crate::query::rawspi::first_datum_of(&plan, &mut values, &nulls, false)
}

const RULE: &str = "udm.rule_trigger";

/// The probes of one rule trigger: (key attribute, lock statement, check statement).
type RuleProbes = Vec<(i32, String, String)>;

thread_local! {
    /// Probes planned from the catalog by trigger, for one catalog generation.
    static RULE_PROBES: crate::cache::Cache<pg_sys::Oid, std::rc::Rc<RuleProbes>> =
        crate::cache::Lru::new("rule probes");
}

/// What the rule trigger runs, planned from the rule's definition in udm's catalog. Its
/// arguments (schema, entity, rule key) only name the rule; SQL is never taken from them.
unsafe fn rule_probes(
    td: *mut pg_sys::TriggerData,
    tt: &crate::trust::TenantTable,
) -> (std::rc::Rc<RuleProbes>, String) {
    unsafe {
        let args = trigger_args(td);
        let (entity, key) = match args.as_slice() {
            [_, e, k, ..] => (e.clone(), k.clone()),
            _ => raise(crate::trust::not_in_catalog(
                tt,
                RULE,
                "has a rule trigger without its entity and rule",
            )),
        };
        let tgoid = (*(*td).tg_trigger).tgoid;
        crate::cache::sync(&RULE_PROBES, catalog::generation());
        if let Some(p) = crate::cache::get(&RULE_PROBES, &tgoid) {
            return (p, entity);
        }
        let t = &tt.tenant;
        let trigger = crate::trust::trigger_name(td);
        let planned = (|| -> Result<Option<Vec<udm_core::related_rules::Probe>>> {
            let Some(rule) = key.strip_prefix("r.") else {
                return Ok(None);
            };
            let Some(e) = catalog::entity_any(t, &entity)? else {
                return Ok(None);
            };
            if e.status != catalog::Status::Active {
                return Ok(None);
            }
            let model = crate::query::definitions(t)?;
            let ctx = udm_core::ddl::Ctx {
                schema: &t.schema,
                role: &t.role,
                access: t.access,
                model: Some(&*model),
                citus: crate::citus::installed(),
            };
            udm_core::ddl::related_rule_probes(&ctx, &e.def, rule, &trigger, &tt.name)
        })()
        .unwrap_or_else(|e| raise(e));
        let Some(planned) = planned else {
            raise(crate::trust::not_in_catalog(
                tt,
                RULE,
                &format!(
                    "has a trigger \"{trigger}\" for rule {} of entity {} that is not",
                    udm_core::ident::printable(&key),
                    udm_core::ident::printable(&entity)
                ),
            ));
        };
        let desc = (*(*td).tg_relation).rd_att;
        let probes: RuleProbes = planned
            .into_iter()
            .map(|p| {
                let attr = required_column(desc, &tt.name, &p.key_column, pg_sys::UUIDOID, RULE);
                (attr, p.lock_sql, p.check_sql)
            })
            .collect();
        let p = std::rc::Rc::new(probes);
        let bytes = 128
            + p.iter()
                .map(|(_, l, c)| l.len() + c.len() + 64)
                .sum::<usize>();
        crate::cache::put_scoped(&RULE_PROBES, tt.tenant.scope(), tgoid, p.clone(), bytes);
        (p, entity)
    }
}

/// `udm.rule_trigger(schema, entity, rule_key)`: the constraint trigger of a rule over related
/// records, on the rule's own table and on every table the rule reads. For each probe (planned
/// from the catalog), the changed row's key (new and old) is `$1`: the lock statement serialises
/// competing writers, the check statement returns a record breaking the rule, which is refused
/// in the rule's words.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_rule_trigger(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let (td, ev) = row_trigger_data(fcinfo, RULE, false);
        let rel = (*td).tg_relation;
        let tt = crate::trust::trigger_table(td, RULE);
        crate::trust::entity_table(&tt, RULE);
        let (probes, entity) = rule_probes(td, &tt);
        let key = trigger_args(td).get(2).cloned().unwrap_or_default();
        let schema = &tt.tenant.schema;
        let op = ev & pg_sys::TRIGGER_EVENT_OPMASK;
        let (new, old) = match op {
            pg_sys::TRIGGER_EVENT_INSERT => ((*td).tg_trigtuple, std::ptr::null_mut()),
            pg_sys::TRIGGER_EVENT_DELETE => (std::ptr::null_mut(), (*td).tg_trigtuple),
            _ => ((*td).tg_newtuple, (*td).tg_trigtuple),
        };
        let desc = (*rel).rd_att;
        let table = tt.name.as_str();
        let key_of = |tup: pg_sys::HeapTuple, attr: i32| -> Option<pg_sys::Datum> {
            if tup.is_null() {
                return None;
            }
            let mut null = false;
            let d = pg_sys::heap_getattr(tup, attr, desc, &mut null);
            (!null).then_some(d)
        };
        crate::access::security::as_owner(|| {
            for (attr, lock_sql, check_sql) in probes.iter() {
                let mut keys = Vec::with_capacity(2);
                if let Some(k) = key_of(new, *attr) {
                    keys.push(k);
                }
                if let Some(k) = key_of(old, *attr) {
                    let same = keys
                        .first()
                        .is_some_and(|n| uuid_bytes(*n) == uuid_bytes(k));
                    if !same {
                        keys.push(k);
                    }
                }
                let column = crate::trust::column_name(desc, *attr);
                for k in keys {
                    if !lock_sql.is_empty() {
                        run_probe(lock_sql, k).or_raise();
                    }
                    if check_sql.is_empty() {
                        continue;
                    }
                    // (the check statement returns the record's id as text)
                    let Some(record) = run_probe(check_sql, k)
                        .or_raise()
                        .and_then(|d| String::from_datum(d, false))
                    else {
                        continue;
                    };
                    let e = rule_violation(schema, &entity, &key);
                    let changed = pgrx::Uuid::from_bytes(uuid_bytes(k));
                    let e = if table == entity && column == "id" && record == changed.to_string() {
                        UdmError {
                            message: format!("{} ({entity} {record})", e.message),
                            ..e
                        }
                    } else {
                        UdmError {
                            message: format!(
                                "{}: this change to {table} (where {column} = {changed}) leaves {entity} {record} breaking it",
                                e.message
                            ),
                            ..e
                        }
                    };
                    raise(e);
                }
            }
        });
        pg_sys::Datum::from(0usize)
    }
}
