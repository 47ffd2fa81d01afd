//! Field encryption inside the server: the master key (read once, at server start, from the file
//! `udm.encryption_key_file` names, when udm is in `shared_preload_libraries`), each tenant's
//! wrapped data and index keys (`<schema>._udm_keys`, made when the tenant's first encrypted field
//! is defined), sealing in the stamp trigger, and the functions reads decrypt through.
//!
//! No function returns the master key or a tenant key, and no message quotes one. The crypto
//! itself (envelope, wrapping, blind indexes) is `udm_core::crypto`.

use crate::access::security::as_owner;
use crate::catalog::{self, Entity, Tenant};
use crate::error::{OrRaise, Result};
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::rc::Rc;
use std::sync::OnceLock;
use udm_core::crypto::{self as c, Key, Purpose};
use udm_core::definition::{EntityDef, FieldDef, Stage, Toggle};
use udm_core::error::{SqlState, UdmError};
use udm_core::ident::{printable, qualified, quote_ident, quote_literal};
use udm_core::ids::{hex, unhex, uuid_bytes};

pub static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static OLD_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The master key, or why there is none; set once in the postmaster (forked backends inherit it).
static MASTER: OnceLock<std::result::Result<Key, String>> = OnceLock::new();
/// The previous master key while a rotation is under way (`udm.encryption_old_key_file`): tenant
/// keys it wrapped still open, and `udm_rewrap_keys` wraps them again with the new one.
static OLD_MASTER: OnceLock<Option<Key>> = OnceLock::new();

pub const KEYS_TABLE: &str = "_udm_keys";

pub fn init() {
    // PostgreSQL allows PGC_POSTMASTER settings only while the server starts: loaded later (not
    // in shared_preload_libraries), udm defines neither and has no master key
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        let _ = MASTER.set(Err(
            "udm is not in shared_preload_libraries, where the master key is loaded".into(),
        ));
        return;
    }
    GucRegistry::define_string_guc(
        c"udm.encryption_key_file",
        c"File holding the master key of udm's field encryption (64 hex digits), read once at server start.",
        c"Only the file's path is a setting; the key is never shown. udm must be in shared_preload_libraries; the file must not be readable by other OS users.",
        &KEY_FILE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"udm.encryption_old_key_file",
        c"File holding the previous master key while the tenants' keys are re-wrapped with a new one (udm_rewrap_keys).",
        c"Read once at server start, like udm.encryption_key_file; remove it once udm_rewrap_keys has run.",
        &OLD_KEY_FILE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    {
        let old = OLD_KEY_FILE
            .get()
            .map(|_| load_key_file(&OLD_KEY_FILE, "udm.encryption_old_key_file"));
        match &old {
            Some(Ok(k)) => pgrx::log!(
                "udm: previous field encryption master key loaded (fingerprint {})",
                k.fingerprint()
            ),
            Some(Err(why)) => pgrx::warning!("udm: the previous master key is unavailable: {why}"),
            None => {}
        }
        let _ = OLD_MASTER.set(old.and_then(|r| r.ok()));
        let loaded = load_master();
        match &loaded {
            Ok(k) => pgrx::log!(
                "udm: field encryption master key loaded (fingerprint {})",
                k.fingerprint()
            ),
            Err(why) if KEY_FILE.get().is_some() => {
                pgrx::warning!("udm: field encryption is unavailable: {why}")
            }
            Err(_) => {}
        }
        let _ = MASTER.set(loaded);
    }
}

fn load_master() -> std::result::Result<Key, String> {
    load_key_file(&KEY_FILE, "udm.encryption_key_file")
}

fn load_key_file(
    setting: &GucSetting<Option<CString>>,
    name: &str,
) -> std::result::Result<Key, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = setting.get() else {
        return Err(format!("{name} is not set"));
    };
    let path = path.to_string_lossy().into_owned();
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("the master key file \"{path}\" cannot be read ({e})"))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the master key file \"{path}\" may be read by other users (mode {:o}); make it 0600",
            mode & 0o777
        ));
    }
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(&path)
            .map_err(|e| format!("the master key file \"{path}\" cannot be read ({e})"))?,
    );
    c::parse_master_key(&bytes).map_err(|e| format!("\"{path}\": {}", e.message))
}

/// Why this server has no master key, if it has none.
pub fn master_missing() -> Option<String> {
    match MASTER.get() {
        Some(Ok(_)) => None,
        Some(Err(why)) => Some(why.clone()),
        None => {
            Some("udm is not in shared_preload_libraries, where the master key is loaded".into())
        }
    }
}

fn master(what: &dyn Fn() -> String) -> Result<&'static Key> {
    match MASTER.get() {
        Some(Ok(k)) => Ok(k),
        _ => Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "{} is encrypted and this server has no master key: {}",
                what(),
                master_missing().unwrap_or_default()
            ),
        )
        .hint(
            "put udm in shared_preload_libraries, set udm.encryption_key_file to a file of 64 hex \
             digits that only the server's OS user can read, and restart the server",
        )),
    }
}

fn field_what(t: &Tenant, entity: &str, field: &str) -> String {
    format!(
        "field \"{}\" of entity \"{}\" in tenant \"{}\"",
        printable(field),
        printable(entity),
        t.slug
    )
}

/// A tenant's keys, opened.
pub struct TenantKeys {
    /// `_udm_keys` as read (a new table is a new set of keys).
    rel: pg_sys::Oid,
    /// The catalog generation it was read in (a key rotation invalidates the tenant's catalog).
    generation: u64,
    /// The data key new values are sealed with (the newest).
    active: i32,
    /// The data keys by id (a few: a linear search is cheaper than hashing, once per value).
    data: Vec<(i32, c::Sealer)>,
    index: Option<c::Blinder>,
}

impl TenantKeys {
    /// Data key `id`, made ready; `55000` naming the field (`what`) when the tenant has none.
    fn data_key(&self, what: &dyn Fn() -> String, id: i32) -> Result<&c::Sealer> {
        self.data
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, s)| s)
            .ok_or_else(|| no_such_key(what, id))
    }

    /// Whether the tenant has data key `id`.
    fn has(&self, id: i32) -> bool {
        self.data.iter().any(|(k, _)| *k == id)
    }

    /// The index key, made ready.
    fn index_key(&self, what: &dyn Fn() -> String) -> Result<&c::Blinder> {
        self.index.as_ref().ok_or_else(|| no_such_key(what, 1))
    }
}

thread_local! {
    static KEYS: RefCell<HashMap<String, Rc<TenantKeys>>> = RefCell::new(HashMap::new());
}

/// The rows of the tenant's `_udm_keys` (`[purpose, id, hex of the wrapped key, master
/// fingerprint, shredded at, shredded by]` each), read as the owner where they are.
fn key_rows_here(t: &Tenant) -> Result<serde_json::Value> {
    // where this node holds the table's shard (a Citus worker), the shard itself, as the
    // catalog's reads do: no distributed query from inside a trigger or a query of a shard
    let name =
        crate::citus::local_relation(t.schema_oid, KEYS_TABLE, KEYS_TABLE).and_then(|oid| unsafe {
            let name = pg_sys::get_rel_name(oid);
            (!name.is_null()).then(|| {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            })
        });
    let sql = format!(
        "SELECT coalesce(jsonb_agg(jsonb_build_array(purpose, id, encode(wrapped, 'hex'), master, \
           to_char(shredded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"'), shredded_by)), '[]') FROM {}",
        qualified(&t.schema, name.as_deref().unwrap_or(KEYS_TABLE))
    );
    // on a Citus worker, in a trigger or a query of a shard: the table is this node's
    let rows = crate::citus::nested(|| as_owner(|| crate::query::rawspi::once(&sql, &[], true)))?;
    Ok(rows
        .map(crate::query::rawspi::jsonb_value)
        .unwrap_or_default())
}

/// The rows of the tenant's `_udm_keys` (`key_rows_here`). On a Citus coordinator, for a tenant
/// on a worker, they are read there by `udm.citus_tenant_keys` as a query of the tenant's catalog
/// on the session's own connection: read over a connection of udm's owner, Citus would refuse
/// them once the session wrote to the tenant in the transaction.
fn key_rows(t: &Tenant) -> Result<serde_json::Value> {
    if !crate::citus::log_elsewhere(t) {
        return key_rows_here(t);
    }
    let token = crate::citus::claims::keys_token(&t.slug)?;
    let sql = crate::citus::on_node_sql(&t.schema, "udm.citus_tenant_keys($1)");
    Ok(
        crate::spi::select_one::<pgrx::JsonB>(&sql, &[token.as_str().into()])?
            .map(|j| j.0)
            .unwrap_or_default(),
    )
}

fn read_keys(t: &Tenant, rel: pg_sys::Oid, master: &Key) -> Result<TenantKeys> {
    let rows = key_rows(t)?;
    let mut keys = TenantKeys {
        rel,
        generation: catalog::changes(),
        active: 0,
        data: Vec::new(),
        index: None,
    };
    for r in rows.as_array().into_iter().flatten() {
        if let Some(at) = r[4].as_str() {
            return Err(UdmError::new(
                SqlState::ObjectNotInPrerequisiteState,
                format!(
                    "the encryption keys of tenant \"{}\" were destroyed at {at} by {}: its encrypted values cannot be read or written",
                    t.slug,
                    r[5].as_str().unwrap_or("?")
                ),
            )
            .hint("crypto-shredding cannot be undone; the tenant's other fields still work"));
        }
        let (p, id, wrapped, wrapped_by) = key_row(t, r)?;
        let key = c::unwrap_key(wrapping_key(t, master, wrapped_by, p, id)?, &wrapped, p, id)
            .map_err(|e| e.context(format!("tenant \"{}\"", t.slug)))?;
        match p {
            Purpose::Data => {
                keys.active = keys.active.max(id);
                keys.data.push((id, key.sealer()));
            }
            Purpose::Index => keys.index = Some(key.blinder()),
        }
    }
    Ok(keys)
}

/// The master key that wrapped a tenant key (by its stored fingerprint): the loaded one, or the
/// previous one during a rotation.
fn wrapping_key<'a>(
    t: &Tenant,
    master: &'a Key,
    wrapped_by: &str,
    p: Purpose,
    id: i32,
) -> Result<&'a Key> {
    if wrapped_by == master.fingerprint() {
        return Ok(master);
    }
    if let Some(Some(old)) = OLD_MASTER.get() {
        if wrapped_by == old.fingerprint() {
            return Ok(old);
        }
    }
    Err(UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!(
            "tenant \"{}\": {} key {id} was wrapped by master key {wrapped_by}, and this server has master key {} loaded",
            t.slug,
            p.name(),
            master.fingerprint()
        ),
    )
    .hint("while rotating the master key, set udm.encryption_old_key_file to the previous key file, restart, and run udm_rewrap_keys()"))
}

/// A row of `_udm_keys` as read (`[purpose, id, hex of the wrapped key, master fingerprint,
/// ...]`): its purpose, id, wrapped bytes and the fingerprint of the master key that wrapped it.
fn key_row<'r>(t: &Tenant, r: &'r serde_json::Value) -> Result<(Purpose, i32, Vec<u8>, &'r str)> {
    let parts = (
        r[0].as_str().and_then(Purpose::parse),
        r[1].as_i64().and_then(|i| i32::try_from(i).ok()),
        r[2].as_str().and_then(unhex),
        r[3].as_str(),
    );
    let (Some(p), Some(id), Some(wrapped), Some(by)) = parts else {
        return Err(UdmError::new(
            SqlState::DataCorrupted,
            format!("tenant \"{}\": a row of {KEYS_TABLE} is damaged", t.slug),
        )
        .hint("restore the tenant's key table from a backup"));
    };
    Ok((p, id, wrapped, by))
}

/// The tenant's opened keys (read once per backend, again when the table is new or a key id
/// is not known yet).
fn keys(t: &Tenant, what: &dyn Fn() -> String, want: Option<i32>) -> Result<Rc<TenantKeys>> {
    let m = master(what)?;
    // the keys read in this catalog generation (a rotation, a dropped tenant start a new one)
    let generation = catalog::changes();
    let fresh = KEYS.with(|k| {
        k.borrow()
            .get(&t.schema)
            .filter(|k| k.generation == generation && want.is_none_or(|id| k.has(id)))
            .cloned()
    });
    if let Some(k) = fresh {
        return Ok(k);
    }
    let Some(rel) = t.relation(KEYS_TABLE) else {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("{} is encrypted but the tenant has no keys", what()),
        )
        .hint("its keys were destroyed, or the tenant was copied without its _udm_keys table"));
    };
    let cached = KEYS.with(|k| k.borrow().get(&t.schema).cloned());
    if let Some(k) = cached {
        if k.rel == rel && k.generation == catalog::changes() && want.is_none_or(|id| k.has(id)) {
            return Ok(k);
        }
    }
    let k = Rc::new(read_keys(t, rel, m)?);
    KEYS.with(|c| c.borrow_mut().insert(t.schema.clone(), k.clone()));
    Ok(k)
}

/// The tenant's keys table (`schema._udm_keys`), its statements.
pub fn keys_table_sql(schema: &str) -> String {
    let table = qualified(schema, KEYS_TABLE);
    format!(
        "CREATE TABLE {table} (\
               purpose text NOT NULL CHECK (purpose IN ('data', 'index')), \
               id integer NOT NULL CHECK (id > 0), \
               wrapped bytea NOT NULL, \
               master text NOT NULL, \
               created_at timestamp with time zone NOT NULL DEFAULT now(), \
               created_by text NOT NULL, \
               rewrapped_at timestamp with time zone, \
               rewrapped_by text, \
               shredded_at timestamp with time zone, \
               shredded_by text, \
               PRIMARY KEY (purpose, id)); \
             REVOKE ALL ON {table} FROM PUBLIC; \
             COMMENT ON TABLE {table} IS {}",
        quote_literal("udm: the tenant's field encryption keys, wrapped by the master key")
    )
}

/// That every key a tenant was given with (an import or clone carrying its `_udm_keys`) opens
/// with a master key this server has: else its encrypted values could not be read, and the
/// import is refused (the keys of a tenant whose keys were destroyed stay destroyed).
pub fn check_carried_keys(t: &Tenant) -> Result<()> {
    if t.relation(KEYS_TABLE).is_none() {
        return Ok(());
    }
    let what = || format!("the encryption keys of tenant \"{}\"", t.slug);
    let rows = key_rows(t)?;
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.iter().all(|r| !r[4].is_null()) {
        return Ok(());
    }
    let m = master(&|| format!("a field of tenant \"{}\"", t.slug))?;
    for r in rows.iter().filter(|r| r[4].is_null()) {
        let (p, id, wrapped, wrapped_by) = key_row(t, r)?;
        let by = wrapping_key(t, m, wrapped_by, p, id).map_err(|e| {
            e.hint(format!(
                "its keys are wrapped by the master key of the database it comes from ({wrapped_by}): \
                 give this server that key file as udm.encryption_old_key_file (a restart), \
                 import again, then run udm_rewrap_keys()"
            ))
        })?;
        c::unwrap_key(by, &wrapped, p, id).map_err(|e| e.context(what()))?;
    }
    Ok(())
}

/// Makes the tenant's keys if an encrypted field of `def` needs them and there are none: a data
/// key and an index key, random, stored wrapped by the master key. Refused without a master key.
pub fn ensure_keys(t: &Tenant, def: &EntityDef) -> Result<()> {
    let Some(f) = def.fields.iter().find(|f| f.encrypted_or_staged()) else {
        return Ok(());
    };
    let m = master(&|| field_what(t, &def.slug, &f.name))?;
    let actor = crate::access::security::actor();
    as_owner(|| {
        let table = qualified(&t.schema, KEYS_TABLE);
        // one session makes the keys; another waits here and finds them made
        crate::query::rawspi::once(
            "SELECT pg_advisory_xact_lock(hashtext('udm keys ' || $1))",
            &[Some(t.schema.clone())],
            false,
        )?;
        if t.relation(KEYS_TABLE).is_none() {
            let create = keys_table_sql(&t.schema);
            if crate::citus::installed() {
                // on Citus: distributed into the tenant's schema, on the tenant's node, where its
                // triggers seal and its queries open the values
                crate::citus::run_batch(&create)?;
            } else {
                crate::query::rawspi::once(&create, &[], false)?;
            }
        }
        let have = crate::query::rawspi::once(
            &format!("SELECT count(*) FROM {table} WHERE purpose = 'data'"),
            &[],
            false,
        )?
        .map(crate::query::rawspi::int8)
        .unwrap_or(0);
        if have == 0 {
            for p in [Purpose::Data, Purpose::Index] {
                let k = Key::random()?;
                let w = c::wrap_key(m, &k, p, 1)?;
                crate::query::rawspi::once(
                    &format!(
                        "INSERT INTO {table} (purpose, id, wrapped, master, created_by) VALUES ($1, 1, decode($2, 'hex'), $3, $4)"
                    ),
                    &[
                        Some(p.name().to_string()),
                        Some(hex(&w)),
                        Some(m.fingerprint()),
                        Some(actor.clone()),
                    ],
                    false,
                )?;
            }
        }
        Ok(())
    })
}

/// A field's identity for sealing and the SQL that checks its rules on the plaintext.
pub struct SealSpec {
    pub entity: String,
    pub field: u32,
    pub name: String,
    pub blind: bool,
    /// `SELECT udm.check_rule(...) AND ... FROM (SELECT $1::<type> AS "col") s`, when it has rules.
    pub check: Option<String>,
    /// `SELECT <canonical text of $1>` for json and date-like fields (`FieldType::sealed_form`).
    pub canonical: Option<String>,
    /// Encryption is being turned off: writes store the plaintext (in its canonical form), and a
    /// sealed value written (an audit image restored) is stored opened.
    pub plain: bool,
    /// A unique field whose values are being converted: the statement (`$1`: the plaintext when
    /// turning on, its blind index when turning off; `$2`: the record's id) that finds another
    /// record holding the written value in the form its constraint does not see (plaintext
    /// values have the field's plain unique constraint, sealed ones its partial blind index).
    pub other_form: Option<String>,
}

impl SealSpec {
    pub fn of(t: &Tenant, def: &EntityDef, f: &FieldDef) -> SealSpec {
        let checks = udm_core::checks::field_checks(f);
        let check = (!checks.is_empty()).then(|| {
            let conds: Vec<String> = checks
                .iter()
                .map(|ck| {
                    format!(
                        "udm.check_rule(({}), {}, {}, {})",
                        ck.sql,
                        quote_literal(&t.schema),
                        quote_literal(&def.slug),
                        quote_literal(&ck.key)
                    )
                })
                .collect();
            format!(
                "SELECT {} FROM (SELECT ($1)::{} AS {}) s",
                conds.join(" AND "),
                f.ftype.base_pg_type(),
                quote_ident(&f.column)
            )
        });
        let canonical = f
            .ftype
            .sealed_form()
            .map(|(sql, _)| format!("SELECT {sql}"));
        SealSpec {
            entity: def.slug.clone(),
            field: f.id,
            name: f.name.clone(),
            blind: f.blind_indexed(),
            check,
            canonical,
            plain: f.encryption_pending == Some(Toggle::Off),
            other_form: (f.converting_blind() && f.unique).then(|| {
                let col = quote_ident(&f.column);
                let prefix = quote_literal(c::PREFIX);
                let cond = if f.encryption_pending == Some(Toggle::Off) {
                    format!(
                        "{} = $1 AND starts_with({col}, {prefix})",
                        c::blind_index_sql(&col)
                    )
                } else {
                    format!("{col} = $1 AND NOT starts_with({col}, {prefix})")
                };
                format!(
                    "SELECT 1 FROM {} WHERE {cond} AND \"id\" <> $2 LIMIT 1",
                    qualified(&t.schema, &def.slug)
                )
            }),
        }
    }
}

/// Refuses a value of a unique field being converted (`SealSpec::other_form`) that another
/// record holds in the other form (23505). Looked for as the owner: uniqueness is over all the
/// records, whatever the writer may see.
fn refuse_other_form(
    t: &Tenant,
    spec: &SealSpec,
    record: &[u8; 16],
    plaintext: &str,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let Some(sql) = &spec.other_form else {
        return Ok(());
    };
    let key = if spec.plain {
        keys(t, what, None)?
            .index_key(what)?
            .blind(spec.field, plaintext.as_bytes())
    } else {
        plaintext.to_string()
    };
    let found = as_owner(|| {
        let plan = crate::query::rawspi::kept_plan(
            &CHECK_PLANS,
            sql,
            &[pg_sys::TEXTOID, pg_sys::UUIDOID],
            0,
        )?;
        let mut values = [
            crate::triggers::text_datum(&key),
            crate::triggers::uuid_datum(record),
        ];
        let nulls = [b' ' as std::os::raw::c_char; 2];
        crate::query::rawspi::first_datum_of(&plan, &mut values, &nulls, true)
    })?;
    if found.is_some() {
        return Err(UdmError::new(
            SqlState::UniqueViolation,
            format!("{}: another record already has this value", what()),
        )
        .hint("the field is unique: while its encryption is turned on or off, its plaintext and encrypted values are compared with each other"));
    }
    Ok(())
}

thread_local! {
    static CHECK_PLANS: crate::query::rawspi::PlanCache =
        crate::cache::Lru::new("encrypted field checks");
}

/// Runs `sql` with `plaintext` as `$1`; its first column's datum (in the caller's context).
fn run_plan(sql: &str, plaintext: &str) -> Result<Option<pg_sys::Datum>> {
    let plan = crate::query::rawspi::kept_plan(&CHECK_PLANS, sql, &[pg_sys::TEXTOID], 0)?;
    let mut values = [crate::triggers::text_datum(plaintext)];
    let nulls = [b' ' as std::os::raw::c_char];
    crate::query::rawspi::first_datum_of(&plan, &mut values, &nulls, true)
}

/// Runs a field's rule checks (`udm.check_rule` raises when one fails).
fn run_check(sql: &str, plaintext: &str) -> Result<()> {
    run_plan(sql, plaintext).map(|_| ())
}

/// Runs SQL whose first column is text (the canonical form of a value).
fn run_text(sql: &str, plaintext: &str) -> Result<Option<String>> {
    Ok(run_plan(sql, plaintext)?.and_then(|d| unsafe { String::from_datum(d, false) }))
}

/// What the stamp trigger stores for a written value of an encrypted field: None to keep the
/// value as written (a sealed value of this very record and field, e.g. restored from its audit
/// image), or the sealed form of a plaintext (after its rules held).
pub fn seal_for_write(
    t: &Tenant,
    spec: &SealSpec,
    record: &[u8; 16],
    value: &str,
) -> Result<Option<String>> {
    let what = || field_what(t, &spec.entity, &spec.name);
    if c::looks_sealed(value) {
        let env = c::parse_envelope(value).ok_or_else(|| {
            UdmError::invalid(format!(
                "{}: the value starts with \"{}\" but is not an encrypted value",
                what(),
                c::PREFIX
            ))
            .hint(format!(
                "values of an encrypted field cannot start with \"{}\"",
                c::PREFIX
            ))
        })?;
        let k = keys(t, &what, Some(env.key_id))?;
        let dk = k.data_key(&what, env.key_id)?;
        let opened = c::open_with(dk, &env, record, spec.field).map_err(|e| {
            UdmError::new(
                SqlState::InvalidParameterValue,
                format!("{}: {}", what(), e.message),
            )
            .hint("write the plaintext: udm encrypts it; a ciphertext belongs to one record and field")
        })?;
        let opened = String::from_utf8(opened).map_err(|_| {
            UdmError::new(
                SqlState::DataCorrupted,
                format!("{}: the decrypted value is not text", what()),
            )
        })?;
        refuse_other_form(t, spec, record, &opened, &what)?;
        if spec.plain {
            // encryption is being turned off: stored opened
            return Ok(Some(opened));
        }
        if spec.blind && env.blind.is_empty() {
            return Err(UdmError::invalid(format!(
                "{}: the encrypted value has no blind index",
                what()
            ))
            .hint("write the plaintext: udm encrypts it"));
        }
        return Ok(None);
    }
    // json and dates: sealed (and blind-indexed) in one canonical form, whatever the session's
    // DateStyle or TimeZone; a value that is not of the type fails here, as the column would
    let canonical = match &spec.canonical {
        Some(sql) => Some(run_text(sql, value)?.unwrap_or_default()),
        None => None,
    };
    let value = canonical.as_deref().unwrap_or(value);
    if let Some(sql) = &spec.check {
        run_check(sql, value)?;
    }
    refuse_other_form(t, spec, record, value, &what)?;
    if spec.plain {
        return Ok(canonical);
    }
    let k = keys(t, &what, None)?;
    let dk = k.data_key(&what, k.active)?;
    let blind = if spec.blind {
        let ik = k.index_key(&what)?;
        Some(ik.blind(spec.field, value.as_bytes()))
    } else {
        None
    };
    c::seal_with(
        dk,
        k.active,
        blind.as_deref(),
        record,
        spec.field,
        value.as_bytes(),
    )
    .map(Some)
    .map_err(|e| e.context(what()))
}

fn no_such_key(what: &dyn Fn() -> String, id: i32) -> UdmError {
    UdmError::new(
        SqlState::ObjectNotInPrerequisiteState,
        format!("{}: the tenant has no key {id} to decrypt it with", what()),
    )
    .hint("the tenant's keys were destroyed or replaced")
}

/// The encrypted field `field` (an id) of an entity, active or removed.
fn sealed_field<'a>(t: &Tenant, e: &'a Entity, field: u32) -> Result<&'a FieldDef> {
    e.def
        .fields
        .iter()
        .chain(&e.def.removed_fields)
        .find(|f| f.id == field && f.encrypted)
        .ok_or_else(|| {
            UdmError::new(
                SqlState::UndefinedColumn,
                format!(
                    "entity \"{}\" of tenant \"{}\" has no encrypted field with id {field}",
                    e.def.slug, t.slug
                ),
            )
        })
}

/// Whether the session may read the field (its role does not keep it back).
fn may_read(t: &Tenant, e: &Entity, f: &FieldDef) -> Result<bool> {
    Ok(!crate::access::hidden_field_ids(t, e)?.contains(&f.id))
}

/// Opens a stored value of field `f` of record `id`.
fn open_value(t: &Tenant, e: &Entity, f: &FieldDef, id: &[u8; 16], stored: &str) -> Result<String> {
    open_value_with(t, e, f, id, stored, None)
}

/// `open_value` with the tenant's keys when the caller holds them already.
fn open_value_with(
    t: &Tenant,
    e: &Entity,
    f: &FieldDef,
    id: &[u8; 16],
    stored: &str,
    held: Option<&Rc<TenantKeys>>,
) -> Result<String> {
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    open_value_in(t, e, f, id, stored, held.map(|k| &**k), &mut buf).map(str::to_string)
}

/// `open_value_with` in the caller's buffer `buf` (its content replaced, kept to open the next
/// value without allocating): the plaintext, in `buf`.
fn open_value_in<'b>(
    t: &Tenant,
    e: &Entity,
    f: &FieldDef,
    id: &[u8; 16],
    stored: &str,
    held: Option<&TenantKeys>,
    buf: &'b mut Vec<u8>,
) -> Result<&'b str> {
    let what = || field_what(t, &e.def.slug, &f.name);
    if f.encryption_pending.is_some() && !c::looks_sealed(stored) {
        // encryption is being turned on or off: a value not (or no longer) sealed is the
        // plaintext, in its canonical form
        buf.clear();
        buf.extend_from_slice(stored.as_bytes());
        return std::str::from_utf8(buf).map_err(|_| UdmError::internal("text is not UTF-8"));
    }
    let env = c::parse_envelope(stored).ok_or_else(|| {
        UdmError::new(
            SqlState::DataCorrupted,
            format!("{}: the stored value is not an encrypted value", what()),
        )
        .hint("it was written past udm's trigger (e.g. with triggers disabled)")
    })?;
    let fetched;
    let k: &TenantKeys = match held {
        Some(k) if k.has(env.key_id) => k,
        _ => {
            fetched = keys(t, &what, Some(env.key_id))?;
            &fetched
        }
    };
    let dk = k.data_key(&what, env.key_id)?;
    let plain = c::open_in(dk, &env, id, f.id, buf).map_err(|e| e.context(what()))?;
    std::str::from_utf8(plain).map_err(|_| {
        UdmError::new(
            SqlState::DataCorrupted,
            format!("{}: the decrypted value is not text", what()),
        )
    })
}

/// The tenant, entity and field an internal call names, checked: the caller is a member.
fn resolve(schema: &str, entity: &str) -> Result<(Rc<Tenant>, Rc<Entity>)> {
    let t = catalog::tenant(schema)?.ok_or_else(|| catalog::no_such_tenant(schema))?;
    catalog::require_member(&t)?;
    let e = catalog::entity_any(&t, entity)?.ok_or_else(|| catalog::no_such_entity(&t, entity))?;
    Ok((t, e))
}

unsafe fn text_arg(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> String {
    unsafe { pg_getarg::<String>(fcinfo, i).unwrap_or_default() }
}

unsafe fn field_arg(fcinfo: pg_sys::FunctionCallInfo, i: usize) -> u32 {
    let n = unsafe { pg_getarg::<i32>(fcinfo, i).unwrap_or_default() };
    u32::try_from(n).unwrap_or(0)
}

finfo_v1!(pg_finfo_udm_citus_tenant_keys);

/// `udm.citus_tenant_keys(token)`: on a tenant's Citus worker, the tenant's wrapped keys (the
/// rows of its `_udm_keys`, as `key_rows_here` gives them) for the coordinator, which unwraps them
/// with the master key (see `key_rows`). Refused anywhere but on a worker (0A000), for a NULL
/// token (22004), and for a token udm's coordinator did not make in this transaction (42501).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_citus_tenant_keys(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let rows = (|| -> Result<serde_json::Value> {
        let token = unsafe {
            crate::citus::node_call_arg(
                fcinfo,
                "udm.citus_tenant_keys",
                "token",
                "udm's reads of encrypted fields send it",
            )
        }?;
        let slug = crate::citus::claims::check_keys(&token)?;
        crate::citus::nested(|| {
            let t = catalog::tenant(&slug)?.ok_or_else(|| catalog::no_such_tenant(&slug))?;
            if t.relation(KEYS_TABLE).is_none() {
                return Ok(serde_json::json!([]));
            }
            key_rows_here(&t)
        })
    })()
    .or_raise();
    pgrx::JsonB(rows)
        .into_datum()
        .unwrap_or(pg_sys::Datum::from(0usize))
}

finfo_v1!(pg_finfo_udm_decrypt_field);
finfo_v1!(pg_finfo_udm_blind_index);

/// What one call site of `udm.decrypt_field` (its constant schema, entity and field) resolved,
/// kept for the rest of the statement in the call's `fn_extra`: tenant, membership, entity, field,
/// whether the session may read it, the tenant's keys.
pub struct CallSite {
    schema: String,
    entity: String,
    field: u32,
    t: Rc<Tenant>,
    e: Rc<Entity>,
    def: FieldDef,
    allowed: bool,
    keys: Option<Rc<TenantKeys>>,
    /// Where `udm.decrypt_field` opens this call site's values, one after the other (wiped when
    /// the call site is dropped, with the statement).
    scratch: RefCell<zeroize::Zeroizing<Vec<u8>>>,
}

impl CallSite {
    /// Whether the session may read the field (else its values read as NULL).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// `field "…" of entity "…" in tenant "…"`, for messages.
    pub fn what(&self) -> String {
        field_what(&self.t, &self.e.def.slug, &self.def.name)
    }

    /// `open_in` for a stored value as read from the table (bytes): the value's parts found
    /// without the checks the decryption makes anyway (`c::split_stored`), with the keys held;
    /// any failure is reported as `open_in` reports it.
    pub fn open_stored<'b>(
        &self,
        id: &[u8; 16],
        stored: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b str> {
        let fast = match (&self.keys, c::split_stored(stored)) {
            (Some(k), Some(p)) if self.def.encryption_pending.is_none() => k
                .data
                .iter()
                .find(|(kid, _)| *kid == p.key_id)
                .and_then(|(_, dk)| {
                    c::open_parts(dk, p.key_id, p.blind, p.body, id, self.def.id, buf).ok()
                })
                .filter(|at| std::str::from_utf8(&buf[at.clone()]).is_ok()),
            _ => None,
        };
        if let Some(at) = fast {
            // SAFETY: checked to be UTF-8 just above
            return Ok(unsafe { std::str::from_utf8_unchecked(&buf[at]) });
        }
        let stored = String::from_utf8_lossy(stored);
        self.open_in(id, &stored, buf)
    }

    /// The plaintext of a stored value of record `id` (for a reader `allowed`), opened in
    /// `buf` (its content replaced; the caller keeps it for the next value and wipes it after).
    pub fn open_in<'b>(
        &self,
        id: &[u8; 16],
        stored: &str,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b str> {
        open_value_in(
            &self.t,
            &self.e,
            &self.def,
            id,
            stored,
            self.keys.as_deref(),
            buf,
        )
    }
}

/// Resolves an encrypted field (`schema`, `entity`, field id) for reads that open its values:
/// the caller is a member, the field is encrypted, whether the session may read it, and (if so)
/// the tenant's keys. Errors as `udm.decrypt_field` raises them.
pub fn call_site(schema: &str, entity: &str, field: u32) -> Result<CallSite> {
    let (t, e) = resolve(schema, entity)?;
    let def = sealed_field(&t, &e, field)?.clone();
    let allowed = may_read(&t, &e, &def)?;
    let keys = if allowed {
        let what = || field_what(&t, &e.def.slug, &def.name);
        Some(keys(&t, &what, None)?)
    } else {
        None
    };
    Ok(CallSite {
        schema: schema.to_string(),
        entity: entity.to_string(),
        field,
        t,
        e,
        def,
        allowed,
        keys,
        scratch: RefCell::new(zeroize::Zeroizing::new(Vec::new())),
    })
}

/// `udm.decrypt_field(schema, entity, field id, record id, stored)`: the plaintext of a stored
/// value, as udm's own reads project it; NULL when the session's role keeps the field back (the
/// reads drop the field then). STRICT.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_decrypt_field(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let schema = pg_getarg::<&str>(fcinfo, 0).unwrap_or_default();
        let entity = pg_getarg::<&str>(fcinfo, 1).unwrap_or_default();
        let field = field_arg(fcinfo, 2);
        let flinfo = (*fcinfo).flinfo;
        let cached = (*flinfo).fn_extra as *const CallSite;
        let site: &CallSite = if !cached.is_null()
            && (*cached).field == field
            && (*cached).schema == schema
            && (*cached).entity == entity
        {
            &*cached
        } else {
            let site = crate::citus::nested(|| call_site(schema, entity, field)).or_raise();
            let p = pgrx::PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(site);
            (*flinfo).fn_extra = p.cast();
            &*p
        };
        if !site.allowed {
            (*fcinfo).isnull = true;
            return pg_sys::Datum::from(0usize);
        }
        let id = pg_getarg::<pgrx::Uuid>(fcinfo, 3).unwrap_or(pgrx::Uuid::from_bytes([0; 16]));
        let stored = pg_getarg::<&str>(fcinfo, 4).unwrap_or_default();
        let mut buf = site.scratch.borrow_mut();
        let plain = site.open_in(id.as_bytes(), stored, &mut buf).or_raise();
        crate::triggers::text_datum(plain)
    }
}

/// `udm.blind_index(schema, entity, field id, plaintext)`: the blind index an equality filter
/// compares with (for members whose role may read the field). STRICT.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_blind_index(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let schema = text_arg(fcinfo, 0);
        let entity = text_arg(fcinfo, 1);
        let field = field_arg(fcinfo, 2);
        let plain = text_arg(fcinfo, 3);
        let b = crate::citus::nested(|| blind_for(&schema, &entity, field, &plain)).or_raise();
        crate::triggers::text_datum(&b)
    }
}

fn blind_for(schema: &str, entity: &str, field: u32, plain: &str) -> Result<String> {
    let (t, e) = resolve(schema, entity)?;
    let f = sealed_field(&t, &e, field)?;
    if !may_read(&t, &e, f)? {
        return Err(denied(&t, &e.def.slug, &f.name));
    }
    let what = || field_what(&t, &e.def.slug, &f.name);
    let k = keys(&t, &what, None)?;
    let ik = k.index_key(&what)?;
    Ok(ik.blind(f.id, plain.as_bytes()))
}

fn denied(t: &Tenant, entity: &str, field: &str) -> UdmError {
    UdmError::new(
        SqlState::InsufficientPrivilege,
        format!("permission denied to read {}", field_what(t, entity, field)),
    )
    .hint("the reader's role keeps this field back")
}

/// `udm_decrypt(entity, field, id, stored)`: the plaintext of a value read with plain SQL from an
/// encrypted field of the current tenant, for a member whose role may read the field.
/// STRICT: a NULL value is NULL.
#[pg_extern(stable, parallel_safe)]
fn udm_decrypt(entity: &str, field: &str, id: pgrx::Uuid, stored: &str) -> String {
    crate::citus::nested(|| decrypt(entity, field, id, stored)).or_raise()
}

fn decrypt(entity: &str, field: &str, id: pgrx::Uuid, stored: &str) -> Result<String> {
    // on Citus a query of a tenant's table runs whole on the tenant's node, this call with it:
    // the coordinator sends the selection for a statement that names udm_decrypt
    let t = if crate::citus::on_worker() {
        if crate::guc::tenant().is_none() {
            return Err(UdmError::new(
                SqlState::ObjectNotInPrerequisiteState,
                "udm_decrypt on a Citus worker: no tenant selected",
            )
            .hint("on Citus, udm_decrypt must be named in the statement's own text (not inside a view or a function) for the coordinator to send the selection to the tenant's node; udm_use('<tenant>') first"));
        }
        catalog::selected_tenant()?
    } else {
        catalog::current_tenant()?
    };
    let e = catalog::entity_any(&t, entity)?.ok_or_else(|| catalog::no_such_entity(&t, entity))?;
    let f = e
        .def
        .fields
        .iter()
        .chain(&e.def.removed_fields)
        .find(|f| f.name == field)
        .ok_or_else(|| e.def.no_such_field(field))?;
    if !f.encrypted {
        return Err(UdmError::invalid(format!(
            "{} is not encrypted",
            field_what(&t, &e.def.slug, &f.name)
        ))
        .hint("read its column as it is"));
    }
    if !may_read(&t, &e, f)? {
        return Err(denied(&t, &e.def.slug, &f.name));
    }
    // while encryption is turned on or off, a value not sealed is the plaintext
    let plaintext = f.encryption_pending.is_some() && !c::looks_sealed(stored);
    if !plaintext && c::parse_envelope(stored).is_none() {
        return Err(UdmError::invalid(format!(
            "{}: the value given is not an encrypted value",
            field_what(&t, &e.def.slug, &f.name)
        ))
        .hint("pass the field's column as stored: udm_decrypt('customer', 'ssn', id, ssn)"));
    }
    open_value(&t, &e, f, id.as_bytes(), stored)
}

/// The plaintext of a sealed value `stored` of field `f` in a record image. For a field
/// encrypted now, a value that does not open is an error; for one that is not (encryption was
/// turned off since the image was written), None: the value is shown as it is (keys shredded
/// since, or a plaintext that only looks sealed).
fn open_stored(
    t: &Tenant,
    e: &Entity,
    f: &FieldDef,
    id: &[u8; 16],
    stored: &str,
) -> Result<Option<String>> {
    if f.encrypted {
        return open_value(t, e, f, id, stored).map(Some);
    }
    Ok(c::parse_envelope(stored).and_then(|_| open_value(t, e, f, id, stored).ok()))
}

/// Opens the encrypted fields of a record image (audit, history) at its top level: each sealed
/// value under the name of an encrypted field of the entity (or of one that was encrypted when
/// the image was written) becomes its plaintext. Fields the session may not read were stripped
/// before. Images with no value to open are returned as they are.
pub fn open_image(
    t: &Tenant,
    e: &Entity,
    id: &[u8; 16],
    image: &crate::json::RawJsonb,
) -> Result<crate::json::RawJsonb> {
    use udm_core::jsonb::Value as J;
    // fields encrypted now, and fields that may have been (a sealed value in an image written
    // before encryption was turned off for the field: opened when it opens, kept otherwise)
    let sealed: Vec<&FieldDef> = e
        .def
        .fields
        .iter()
        .chain(&e.def.removed_fields)
        .filter(|f| f.encrypted || f.ftype.can_be_encrypted())
        .collect();
    if sealed.is_empty() {
        return Ok(image.clone());
    }
    let bad = |err: udm_core::jsonb::JsonbError| {
        UdmError::new(
            SqlState::InvalidParameterValue,
            format!("cannot read a jsonb value: {}", err.0),
        )
    };
    let Some(pairs) = udm_core::jsonb::object_pairs(image.root()).map_err(bad)? else {
        return Ok(image.clone());
    };
    // a plaintext: text, or (json fields) a jsonb datum's bytes
    enum Plain {
        Text(String),
        Json(crate::json::RawJsonb),
    }
    let mut plains: Vec<Option<Plain>> = Vec::with_capacity(pairs.len());
    for (k, v) in &pairs {
        let key = String::from_utf8_lossy(k);
        let f = sealed.iter().find(|f| f.name == key);
        plains.push(match (f, v) {
            (Some(f), J::String(s)) => {
                let stored = String::from_utf8_lossy(s);
                if !c::looks_sealed(&stored) {
                    None
                } else if let Some(plain) = open_stored(t, e, f, id, &stored)? {
                    if f.ftype == udm_core::types::FieldType::Json {
                        let v: serde_json::Value = serde_json::from_str(&plain).map_err(|_| {
                            UdmError::new(
                                SqlState::DataCorrupted,
                                format!(
                                    "{}: the decrypted value is not JSON",
                                    field_what(t, &e.def.slug, &f.name)
                                ),
                            )
                        })?;
                        let d = pgrx::JsonB(v).into_datum();
                        let raw =
                            d.and_then(|d| unsafe { crate::json::RawJsonb::from_datum(d, false) });
                        raw.map(Plain::Json)
                    } else {
                        Some(Plain::Text(plain))
                    }
                } else {
                    None
                }
            }
            _ => None,
        });
    }
    if plains.iter().all(Option::is_none) {
        return Ok(image.clone());
    }
    let out: Vec<(&[u8], J<'_>)> = pairs
        .iter()
        .zip(&plains)
        .map(|((k, v), p)| match p {
            Some(Plain::Text(p)) => (*k, J::String(p.as_bytes())),
            Some(Plain::Json(j)) => (*k, J::Jsonb(j.root())),
            None => (*k, v.clone()),
        })
        .collect();
    let mut buf = Vec::new();
    udm_core::jsonb::write_object(&mut buf, &out).map_err(bad)?;
    Ok(crate::json::RawJsonb(buf))
}

/// `open_image` for an image read as JSON (subscription deliveries): each encrypted field's
/// sealed value replaced by its plaintext (a JSON field's parsed), in place.
pub fn open_json_image(
    t: &Tenant,
    e: &Entity,
    id: &[u8; 16],
    image: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    open_json_fields(t, e, id, image, false)
}

/// Opens the sealed values of `image` (as `open_json_image`); with `former_only`, only those of
/// fields that are not encrypted now: what a rollback writes back (a value sealed while the field
/// was encrypted is restored as its plaintext; the values of fields encrypted now are written
/// back sealed, as they are).
pub fn open_json_fields(
    t: &Tenant,
    e: &Entity,
    id: &[u8; 16],
    image: &mut serde_json::Map<String, serde_json::Value>,
    former_only: bool,
) -> Result<()> {
    for f in e.def.fields.iter().chain(&e.def.removed_fields) {
        let wanted = if former_only {
            !f.encrypted && f.ftype.can_be_encrypted()
        } else {
            f.encrypted || f.ftype.can_be_encrypted()
        };
        if !wanted {
            continue;
        }
        let Some(serde_json::Value::String(stored)) = image.get(&f.name) else {
            continue;
        };
        if !c::looks_sealed(stored) {
            continue;
        }
        let Some(plain) = open_stored(t, e, f, id, stored)? else {
            continue;
        };
        let v = if f.ftype == udm_core::types::FieldType::Json {
            serde_json::from_str(&plain).map_err(|_| {
                UdmError::new(
                    SqlState::DataCorrupted,
                    format!(
                        "{}: the decrypted value is not JSON",
                        field_what(t, &e.def.slug, &f.name)
                    ),
                )
            })?
        } else {
            serde_json::Value::String(plain)
        };
        image.insert(f.name.clone(), v);
    }
    Ok(())
}

// ------------------------------------------------------------------ data key rotation

/// `udm_rotate_data_key()`: a new data key for the current tenant; new writes are sealed with it
/// at once (every session: the tenant's catalog is invalidated), old values keep opening with
/// theirs until `udm_reencrypt` moves them. The key's row (`_udm_keys`: when, by whom) is the
/// record of the rotation.
pub fn rotate_data_key() -> Result<serde_json::Value> {
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, "rotate the tenant's data key")?;
    let what = || format!("tenant \"{}\"", t.slug);
    let m = master(&|| format!("a field of {}", what()))?;
    if t.relation(KEYS_TABLE).is_none() {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("{} has no encryption keys to rotate", what()),
        )
        .hint("its keys are made when its first encrypted field is defined"));
    }
    // refused when the keys were destroyed
    keys(&t, &|| format!("a field of {}", what()), None)?;
    let actor = crate::access::security::actor();
    let id = as_owner(|| {
        let table = qualified(&t.schema, KEYS_TABLE);
        crate::query::rawspi::once(
            "SELECT pg_advisory_xact_lock(hashtext('udm keys ' || $1))",
            &[Some(t.schema.clone())],
            false,
        )?;
        let id = crate::query::rawspi::once(
            &format!("SELECT coalesce(max(id), 0) + 1 FROM {table} WHERE purpose = 'data'"),
            &[],
            false,
        )?
        .map(|d| d.value() as i32)
        .unwrap_or(1);
        let k = Key::random()?;
        let w = c::wrap_key(m, &k, Purpose::Data, id)?;
        crate::query::rawspi::once(
            &format!(
                "INSERT INTO {table} (purpose, id, wrapped, master, created_by) VALUES ('data', $1::integer, decode($2, 'hex'), $3, $4)"
            ),
            &[
                Some(id.to_string()),
                Some(hex(&w)),
                Some(m.fingerprint()),
                Some(actor.clone()),
            ],
            false,
        )?;
        Ok::<_, UdmError>(id)
    })?;
    KEYS.with(|k| k.borrow_mut().remove(&t.schema));
    catalog::invalidate(&t);
    Ok(serde_json::json!({"tenant": t.slug, "data_key": id, "previous": id - 1, "by": actor}))
}

/// `udm_reencrypt(entity, batch)`: brings up to `batch` records' values of the entity's encrypted
/// fields to the form the definition asks for, online: a value an older data key sealed is sealed
/// again with the newest; while encryption is being turned on for a field (`encryption_pending`
/// `on`), its plaintext values are sealed; while it is being turned off, its sealed values are
/// opened and written back as plaintext. The records are locked one batch at a time (others'
/// writes to them wait for the batch; records others hold are left for the next call), each
/// value is opened and sealed in memory, and written back through the trigger (a new version of
/// the record, audited). Once a pending field has no value left to convert, its change is
/// completed (a definition change, recorded like the others: see `entities::finish_encryption`).
/// Returns how many records it moved, how many still wait, and the fields it completed.
pub fn reencrypt(entity: &str, batch: i32) -> Result<serde_json::Value> {
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, &format!("re-encrypt entity \"{}\"", printable(entity)))?;
    if !(1..=100_000).contains(&batch) {
        return Err(UdmError::invalid(format!(
            "udm_reencrypt: batch must be from 1 to 100000, got {batch}"
        )));
    }
    let e = catalog::entity(&t, entity)?;
    let fields: Vec<&FieldDef> = e
        .def
        .fields
        .iter()
        .filter(|f| f.encrypted_or_staged())
        .collect();
    if fields.is_empty() {
        return Err(UdmError::invalid(format!(
            "entity \"{}\" of tenant \"{}\" has no encrypted fields",
            e.def.slug, t.slug
        )));
    }
    let what = || field_what(&t, &e.def.slug, &fields[0].name);
    // read as the owner, as everything below is: on Citus the completing DDL is refused once the
    // tenant's tables were read over two connections (the caller's and the owner's)
    let k = as_owner(|| keys(&t, &what, None))?;
    let active = k.active.to_string();
    let table = qualified(&t.schema, &e.def.slug);
    // per field, the SQL of "this record's value is not in the form the definition asks for"
    let stale: Vec<String> = fields.iter().map(|f| stale_sql(f)).collect();
    let old = stale.join(" OR ");
    let cols = fields
        .iter()
        .map(|f| quote_ident(&f.column))
        .collect::<Vec<_>>()
        .join(", ");
    let out = as_owner(|| {
        let picked = crate::query::rawspi::once(
            &format!(
                "SELECT coalesce(jsonb_agg(jsonb_build_array(s.\"id\", {})), '[]') FROM \
                 (SELECT \"id\", {cols} FROM {table} WHERE {old} LIMIT $2::integer FOR UPDATE SKIP LOCKED) s",
                fields
                    .iter()
                    .map(|f| match f.encryption_stage {
                        // sealed by the trigger from the row: its value is not needed here
                        Some(Stage::Sealing) => "NULL".to_string(),
                        _ => format!("s.{}", quote_ident(&f.column)),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[Some(active.clone()), Some(batch.to_string())],
            false,
        )?
        .map(crate::query::rawspi::jsonb_value)
        .unwrap_or_default();
        let rows = picked.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id_text = r[0].as_str().unwrap_or_default();
            let id = uuid_bytes(id_text)
                .ok_or_else(|| UdmError::internal("a record id is not a uuid"))?;
            let mut obj = serde_json::Map::new();
            obj.insert("id".into(), serde_json::Value::String(id_text.to_string()));
            for (i, f) in fields.iter().enumerate() {
                if f.encryption_stage == Some(Stage::Sealing) {
                    // the row's update has the stamp trigger seal its value beside it
                    continue;
                }
                let Some(stored) = r[i + 1].as_str() else {
                    continue;
                };
                if let Some(v) = convert_value(&t, &e, f, &k, &id, stored)? {
                    obj.insert(f.column.clone(), serde_json::Value::String(v));
                }
            }
            out.push(serde_json::Value::Object(obj));
        }
        if !out.is_empty() {
            let sets = fields
                .iter()
                .map(|f| {
                    let col = quote_ident(&f.column);
                    match f.encryption_stage {
                        Some(Stage::Sealing) => format!("{col} = t.{col}"),
                        stage => format!(
                            "{col} = CASE WHEN v.doc ? {lit} THEN v.doc ->> {lit} ELSE t.{col} END{}",
                            if stage == Some(Stage::Scrubbing) {
                                format!(", {} = NULL", quote_ident(&f.plain_column()))
                            } else {
                                String::new()
                            },
                            lit = quote_literal(&f.column)
                        ),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            crate::query::rawspi::once(
                &format!(
                    "UPDATE {table} AS t SET {sets} FROM jsonb_array_elements($1::jsonb) AS v(doc) \
                     WHERE t.\"id\" = (v.doc ->> 'id')::uuid"
                ),
                &[Some(serde_json::Value::Array(out).to_string())],
                false,
            )?;
        }
        Ok::<_, UdmError>(rows.len())
    })?;
    // per field, in all, and in all once the fields being sealed are swapped (their old
    // plaintext waits then): the records still waiting, in one scan
    let after_swap = std::iter::once(old.clone())
        .chain(
            fields
                .iter()
                .filter(|f| f.encryption_stage == Some(Stage::Sealing))
                .map(|f| format!("{} IS NOT NULL", quote_ident(&f.column))),
        )
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut counts = stale_counts(
        &table,
        &[stale.clone(), vec![old.clone(), after_swap]].concat(),
        &active,
    )?;
    let remaining_after_swap = counts.pop().unwrap_or(0);
    let remaining = counts.pop().unwrap_or(0);
    // a pending field none of whose values waits any more: its change is completed
    let done: Vec<&FieldDef> = fields
        .iter()
        .zip(&counts)
        .filter(|(f, n)| {
            (f.encryption_pending.is_some() || f.encryption_stage.is_some()) && **n == 0
        })
        .map(|(f, _)| *f)
        .collect();
    // A call that converted records holds their row locks: waiting for the table's SHARE lock
    // then could deadlock with a writer waiting for one of those rows while it holds its own
    // ROW EXCLUSIVE lock. Such a call completes only if the lock is free at once; else the next
    // call (which holds no row lock of the entity) completes, waiting for the lock as any
    // definition change does (at most `udm.ddl_lock_timeout`). A swap or the drop of an old
    // column (`Stage`) needs the ACCESS EXCLUSIVE lock.
    let staged = done.iter().any(|f| f.encryption_stage.is_some());
    let mode = if staged {
        pg_sys::AccessExclusiveLock
    } else {
        pg_sys::ShareLock
    };
    let lock_free = || unsafe { pg_sys::ConditionalLockRelationOid(e.table_oid, mode as i32) };
    let names: Vec<String> = done.iter().map(|f| f.name.clone()).collect();
    for f in done
        .iter()
        .filter(|f| f.encryption_stage == Some(Stage::Sealing))
    {
        // every value sealed: proven by its CHECK, validated now (a scan that blocks neither
        // readers nor writers; at once when it was), so that the swap scans nothing under its lock
        as_owner(|| {
            crate::spi::run(
                &format!(
                    "ALTER TABLE {table} VALIDATE CONSTRAINT {}",
                    quote_ident(&udm_core::ddl::sealed_check_name(&e.def.slug, &f.name))
                ),
                &[],
            )
        })?;
    }
    let moved = if done.is_empty() || (out > 0 && !lock_free()) {
        Vec::new()
    } else {
        crate::entities::finish_encryption(&t, &e.def.slug, &names, &|f| {
            // a concurrent call may have moved the field on meanwhile (the swap done, its old
            // column not cleared yet): only the state counted here is completed
            let seen = done.iter().any(|d| {
                d.name == f.name
                    && (d.encryption_stage, d.encryption_pending)
                        == (f.encryption_stage, f.encryption_pending)
            });
            if !seen {
                return Ok(false);
            }
            if f.encryption_stage.is_some() {
                // no count under the ACCESS EXCLUSIVE lock: a field being sealed has its values
                // sealed by its validated CHECK (which refuses a row written with triggers
                // disabled), and every write clears the old column of one being scrubbed
                return Ok(true);
            }
            let sql = stale_sql(f);
            Ok(count_any(&table, &sql, &active)? == 0)
        })?
    };
    // a swap is a step on the way: the old column's plaintext is cleared next
    let (swapped, completed): (Vec<String>, Vec<String>) = moved.into_iter().partition(|n| {
        done.iter()
            .any(|f| f.name == *n && f.encryption_stage == Some(Stage::Sealing))
    });
    // after a swap, the records whose old plaintext waits (counted before it, not under its
    // lock; at most that many)
    let remaining = if swapped.is_empty() {
        remaining
    } else {
        remaining_after_swap
    };
    Ok(serde_json::json!({
        "entity": e.def.slug,
        "data_key": k.active,
        "reencrypted": out,
        "remaining": remaining,
        "completed": completed,
        "swapped": swapped,
    }))
}

/// The SQL (over the entity's table, `$1` the newest data key's id as text) that is true when a
/// record's value of encrypted field `f` is not in the form the definition asks for: sealed by
/// an older key; plaintext while encryption is turned on; sealed while it is turned off.
fn stale_sql(f: &FieldDef) -> String {
    let col = quote_ident(&f.column);
    match f.encryption_stage {
        Some(Stage::Sealing) => {
            return format!(
                "({col} IS NOT NULL AND {} IS NULL)",
                quote_ident(&f.sealed_column())
            )
        }
        Some(Stage::Scrubbing) => {
            return format!(
                "({} IS NOT NULL OR ({col} IS NOT NULL AND {} <> $1))",
                quote_ident(&f.plain_column()),
                c::key_id_sql(&col)
            )
        }
        None => {}
    }
    let sealed = format!("starts_with({col}, {})", quote_literal(c::PREFIX));
    match f.encryption_pending {
        None => format!("({col} IS NOT NULL AND {} <> $1)", c::key_id_sql(&col)),
        Some(Toggle::On) => format!(
            "({col} IS NOT NULL AND (NOT {sealed} OR {} <> $1))",
            c::key_id_sql(&col)
        ),
        Some(Toggle::Off) => format!("({col} IS NOT NULL AND {sealed})"),
    }
}

/// How many records `cond` (a `stale_sql`, `$1` the active key id) holds for.
fn count_any(table: &str, cond: &str, active: &str) -> Result<i64> {
    as_owner(|| {
        crate::query::rawspi::once(
            &format!("SELECT count(*) FROM {table} WHERE {cond}"),
            &[Some(active.to_string())],
            false,
        )
    })
    .map(|d| d.map(crate::query::rawspi::int8).unwrap_or(0))
}

/// Per field, how many records hold a value not in its form (one scan).
fn stale_counts(table: &str, stale: &[String], active: &str) -> Result<Vec<i64>> {
    let cols = stale
        .iter()
        .map(|s| format!("count(*) FILTER (WHERE {s})"))
        .collect::<Vec<_>>()
        .join(", ");
    let row = as_owner(|| {
        crate::query::rawspi::once(
            &format!("SELECT jsonb_build_array({cols}) FROM {table}"),
            &[Some(active.to_string())],
            false,
        )
    })?
    .map(crate::query::rawspi::jsonb_value)
    .unwrap_or_default();
    Ok(stale
        .iter()
        .enumerate()
        .map(|(i, _)| row[i].as_i64().unwrap_or(0))
        .collect())
}

/// The value `udm_reencrypt` writes for a stored value of field `f` of record `id`: sealed with
/// the newest key (from an older key, or from the plaintext while encryption is turned on), the
/// plaintext (while it is turned off), or None when it is in its form already.
fn convert_value(
    t: &Tenant,
    e: &Entity,
    f: &FieldDef,
    k: &Rc<TenantKeys>,
    id: &[u8; 16],
    stored: &str,
) -> Result<Option<String>> {
    let w = || field_what(t, &e.def.slug, &f.name);
    if !c::looks_sealed(stored) {
        if f.encryption_pending != Some(Toggle::On) {
            return Ok(None);
        }
        // stored in its canonical form when encryption was turned on (or written since by an
        // older definition): its rules held under the column's constraints
        let blind = if f.blind_indexed() {
            Some(k.index_key(&w)?.blind(f.id, stored.as_bytes()))
        } else {
            None
        };
        let new_key = k.data_key(&w, k.active)?;
        return c::seal_with(
            new_key,
            k.active,
            blind.as_deref(),
            id,
            f.id,
            stored.as_bytes(),
        )
        .map(Some)
        .map_err(|err| err.context(w()));
    }
    let env = c::parse_envelope(stored).ok_or_else(|| {
        UdmError::new(
            SqlState::DataCorrupted,
            format!("{}: the stored value is not an encrypted value", w()),
        )
        .hint("it was written past udm's trigger (e.g. with triggers disabled)")
    })?;
    if f.encryption_pending != Some(Toggle::Off) && env.key_id == k.active {
        return Ok(None);
    }
    let kk = keys(t, &w, Some(env.key_id))?;
    let old_key = kk.data_key(&w, env.key_id)?;
    let plain = zeroize::Zeroizing::new(
        c::open_with(old_key, &env, id, f.id).map_err(|err| err.context(w()))?,
    );
    if f.encryption_pending == Some(Toggle::Off) {
        return String::from_utf8(plain.to_vec()).map(Some).map_err(|_| {
            UdmError::new(
                SqlState::DataCorrupted,
                format!("{}: the decrypted value is not text", w()),
            )
        });
    }
    let new_key = kk.data_key(&w, kk.active)?;
    let blind = (!env.blind.is_empty()).then_some(env.blind);
    c::seal_with(new_key, kk.active, blind, id, f.id, &plain)
        .map(Some)
        .map_err(|err| err.context(w()))
}

/// Before encryption is turned on or off for field `f` of entity `def` (`udm_alter_field`): the
/// tenant's keys must be usable (`55000`: no master key, keys destroyed), and, turning it on, no
/// stored value may already look like an encrypted value (it could not be told from one).
pub fn check_toggle(t: &Tenant, def: &EntityDef, f: &FieldDef, toggle: Toggle) -> Result<()> {
    let what = || field_what(t, &def.slug, &f.name);
    if t.relation(KEYS_TABLE).is_some() {
        keys(t, &what, None)?;
    } else {
        master(&what)?;
    }
    if toggle == Toggle::On && !f.encrypted {
        let col = quote_ident(&f.column);
        let found = as_owner(|| {
            crate::query::rawspi::once(
                &format!(
                    "SELECT to_jsonb(\"id\") FROM {} WHERE starts_with({col}::text, $1) LIMIT 1",
                    qualified(&t.schema, &def.slug)
                ),
                &[Some(c::PREFIX.to_string())],
                true,
            )
        })?;
        if let Some(d) = found {
            let id = crate::query::rawspi::jsonb_value(d);
            let id = id.as_str().unwrap_or_default();
            return Err(UdmError::new(
                SqlState::ObjectNotInPrerequisiteState,
                format!(
                    "{}: record {id} holds a value that starts with \"{}\", which could not be told from an encrypted value",
                    what(),
                    c::PREFIX
                ),
            )
            .hint("change that value first"));
        }
    }
    Ok(())
}

#[pg_extern(volatile)]
fn udm_rotate_data_key() -> pgrx::JsonB {
    pgrx::JsonB(rotate_data_key().or_raise())
}

#[pg_extern(volatile)]
fn udm_reencrypt(entity: &str, batch: default!(i32, 1000)) -> pgrx::JsonB {
    pgrx::JsonB(reencrypt(entity, batch).or_raise())
}

// ------------------------------------------------------------------ master key rotation

/// `udm_rewrap_keys()`: wraps every tenant key of the database that the previous master key
/// (`udm.encryption_old_key_file`) wrapped again with the loaded one, at once (the values stay as
/// they are). Each re-wrapped key's row records when and by whom. For udm admins.
pub fn rewrap_keys() -> Result<serde_json::Value> {
    crate::access::security::require_admin("re-wrap the tenants' encryption keys")?;
    let m = master(&|| "a field".to_string())?;
    let old = match OLD_MASTER.get() {
        Some(Some(k)) => Some(k),
        _ => None,
    };
    let actor = crate::access::security::actor();
    let mut tenants = Vec::new();
    let mut count = 0;
    for row in crate::tenants::tenants()? {
        let Some(t) = catalog::tenant(&row.slug)? else {
            continue;
        };
        if t.relation(KEYS_TABLE).is_none() {
            continue;
        }
        let table = qualified(&t.schema, KEYS_TABLE);
        let n = as_owner(|| {
            let rows = crate::query::rawspi::once(
                &format!(
                    "SELECT coalesce(jsonb_agg(jsonb_build_array(purpose, id, encode(wrapped, 'hex'), master)), '[]') \
                     FROM (SELECT * FROM {table} WHERE master <> $1 FOR UPDATE) k"
                ),
                &[Some(m.fingerprint())],
                false,
            )?
            .map(crate::query::rawspi::jsonb_value)
            .unwrap_or_default();
            let mut n = 0;
            for r in rows.as_array().into_iter().flatten() {
                let (p, id, wrapped, by) = key_row(&t, r)?;
                let Some(old) = old.filter(|k| k.fingerprint() == by) else {
                    return Err(wrapping_key(&t, m, by, p, id).err().unwrap_or_else(|| {
                        UdmError::internal("a key wrapped by the loaded master key was listed")
                    }));
                };
                let key = c::unwrap_key(old, &wrapped, p, id)
                    .map_err(|e| e.context(format!("tenant \"{}\"", t.slug)))?;
                let again = c::wrap_key(m, &key, p, id)?;
                crate::query::rawspi::once(
                    &format!(
                        "UPDATE {table} SET wrapped = decode($1, 'hex'), master = $2, rewrapped_at = now(), rewrapped_by = $3 \
                         WHERE purpose = $4 AND id = $5::integer"
                    ),
                    &[
                        Some(hex(&again)),
                        Some(m.fingerprint()),
                        Some(actor.clone()),
                        Some(p.name().to_string()),
                        Some(id.to_string()),
                    ],
                    false,
                )?;
                n += 1;
            }
            Ok::<_, UdmError>(n)
        })?;
        if n > 0 {
            KEYS.with(|k| k.borrow_mut().remove(&t.schema));
            catalog::invalidate(&t);
            tenants.push(t.slug.clone());
            count += n;
        }
    }
    Ok(
        serde_json::json!({"master": m.fingerprint(), "keys": count, "tenants": tenants, "by": actor}),
    )
}

#[pg_extern(volatile)]
fn udm_rewrap_keys() -> pgrx::JsonB {
    pgrx::JsonB(rewrap_keys().or_raise())
}

// ------------------------------------------------------------------ crypto-shredding

/// `udm_shred_keys(tenant, confirm)`: destroys the tenant's encryption keys (their wrapped bytes
/// are overwritten; each row keeps when and by whom), so its encrypted values can no longer be
/// read nor written by anyone. `confirm` must be `destroy the keys of <tenant>`. For udm admins.
pub fn shred_keys(slug: &str, confirm: &str) -> Result<serde_json::Value> {
    crate::access::security::require_admin("destroy a tenant's encryption keys")?;
    let want = format!("destroy the keys of {slug}");
    if confirm != want {
        return Err(UdmError::invalid(format!(
            "udm_shred_keys: confirm must be \"{}\", got \"{}\"",
            printable(&want),
            printable(confirm)
        ))
        .hint(format!(
            "write {} to make the tenant's encrypted values unreadable for good",
            udm_core::ident::sql_call("udm_shred_keys", &[slug, &want])
        )));
    }
    let t = catalog::tenant(slug)?.ok_or_else(|| catalog::no_such_tenant(slug))?;
    if t.relation(KEYS_TABLE).is_none() {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!("tenant \"{}\" has no encryption keys", t.slug),
        )
        .hint("its keys are made when its first encrypted field is defined"));
    }
    let actor = crate::access::security::actor();
    let table = qualified(&t.schema, KEYS_TABLE);
    let n = as_owner(|| {
        crate::query::rawspi::once(
            &format!(
                "WITH d AS (UPDATE {table} SET wrapped = ''::bytea, shredded_at = now(), shredded_by = $1 \
                 WHERE shredded_at IS NULL RETURNING 1) SELECT count(*) FROM d"
            ),
            &[Some(actor.clone())],
            false,
        )
    })?
    .map(crate::query::rawspi::int8)
    .unwrap_or(0);
    if n == 0 {
        return Err(UdmError::new(
            SqlState::ObjectNotInPrerequisiteState,
            format!(
                "the encryption keys of tenant \"{}\" were destroyed already",
                t.slug
            ),
        ));
    }
    KEYS.with(|k| k.borrow_mut().remove(&t.schema));
    catalog::invalidate(&t);
    pgrx::log!(
        "udm: the encryption keys of tenant \"{}\" were destroyed by {actor}",
        t.slug
    );
    Ok(serde_json::json!({
        "tenant": t.slug,
        "keys_destroyed": n,
        "by": actor,
        "then": format!("VACUUM {table}; and rotate the master key (udm_rewrap_keys) so that backups holding the wrapped keys cannot be opened either"),
    }))
}

#[pg_extern(volatile)]
fn udm_shred_keys(tenant: &str, confirm: &str) -> pgrx::JsonB {
    pgrx::JsonB(shred_keys(tenant, confirm).or_raise())
}
