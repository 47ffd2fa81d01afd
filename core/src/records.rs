//! Records: the SQL of `udm_insert`, `udm_get`, `udm_update`, `udm_delete` and the batch
//! functions, and the checking of JSON input against the entity's fields. Values always travel as
//! parameters (`$n::type`); a value of the wrong kind is refused before any SQL runs, naming
//! entity, field (and row) and the type expected.

use crate::ddl::default_sql;
use crate::definition::{EntityDef, FieldDef};
use crate::error::{name_list, Result, SqlState, UdmError};
use crate::ident::{printable, qualified, quote_ident, SYSTEM_COLUMNS};
use crate::ids::NEW_ID_SQL;
use crate::json::kind;
use crate::query::json_object;
use crate::types::FieldType;
use crate::values::{field_value, is_uuid, PType};
use serde_json::{Map, Value};

pub const MAX_BATCH_ROWS: usize = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Insert,
    Update,
}

/// A column to write: its type and the value as SQL text (None is NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Col {
    pub column: String,
    pub ptype: PType,
    pub value: Option<String>,
}

/// Links of a many-to-many field: the junction table and the target ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Links {
    pub field: String,
    pub junction: String,
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Write {
    pub cols: Vec<Col>,
    pub links: Vec<Links>,
    /// The record id when the caller gave one (insert).
    pub id: Option<String>,
}

fn unknown_field(def: &EntityDef, key: &str) -> UdmError {
    if SYSTEM_COLUMNS.contains(&key) {
        return UdmError::new(
            SqlState::InvalidParameterValue,
            format!("{}.{key} is a system column and is set by udm", def.slug),
        )
        .hint("leave it out; udm sets created_*, updated_* and _version on every write");
    }
    def.no_such_field(key)
}

/// A replacement of a record's fields (`udm_replace`, the REST API's PUT): `fields`, with every
/// other field of the definition set to null, so the record holds what was sent and nothing
/// older. System columns in `fields` (`id`, `_version`, `created_at`, ...) are ignored, so a
/// record read can be sent back changed; auto numbers (udm assigns them), passwords (never read
/// back) and fields `may_write` refuses (hidden from the caller) are left as they are.
pub fn replacement(
    def: &EntityDef,
    fields: &Value,
    may_write: &dyn Fn(&FieldDef) -> bool,
) -> Result<Value> {
    let obj = fields.as_object().ok_or_else(|| {
        UdmError::invalid(format!(
            "fields for {} must be a JSON object, got {}",
            def.slug,
            kind(fields)
        ))
        .hint("write {\"field\": value, ...}: every field left out becomes null")
    })?;
    let mut out: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !SYSTEM_COLUMNS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for f in &def.fields {
        if matches!(f.ftype, FieldType::AutoNumber | FieldType::Password)
            || out.contains_key(&f.name)
            || !may_write(f)
        {
            continue;
        }
        out.insert(f.name.clone(), Value::Null);
    }
    Ok(Value::Object(out))
}

/// The field of a data key, for writing.
pub fn writable_field<'a>(def: &'a EntityDef, key: &str) -> Result<&'a FieldDef> {
    let f = def.field(key).ok_or_else(|| unknown_field(def, key))?;
    if f.ftype == FieldType::AutoNumber {
        return Err(UdmError::new(
            SqlState::InvalidParameterValue,
            format!(
                "{}.{} is an auto_number and is assigned by udm",
                def.slug, f.name
            ),
        ));
    }
    Ok(f)
}

fn link_ids(def: &EntityDef, f: &FieldDef, v: &Value, what: &str) -> Result<Vec<String>> {
    let items = v.as_array().ok_or_else(|| {
        UdmError::new(
            SqlState::InvalidTextRepresentation,
            format!(
                "{what}: {}.{} takes a list of ids, got {}",
                def.slug,
                f.name,
                kind(v)
            ),
        )
    })?;
    let mut ids = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str().filter(|s| is_uuid(s)) {
            Some(s) => ids.push(s.to_ascii_lowercase()),
            None => {
                return Err(UdmError::new(
                    SqlState::InvalidTextRepresentation,
                    format!(
                        "{what}: {}.{}[{i}]: expected a UUID, got {}",
                        def.slug,
                        f.name,
                        printable(&item.to_string())
                    ),
                ))
            }
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Checks one record's data and returns what to write.
pub fn write_of(def: &EntityDef, data: &Value, mode: Mode) -> Result<Write> {
    let what = match mode {
        Mode::Insert => format!("data for {}", def.slug),
        Mode::Update => format!("patch for {}", def.slug),
    };
    let obj = data.as_object().ok_or_else(|| {
        UdmError::invalid(format!("{what} must be a JSON object, got {}", kind(data)))
            .hint("write {\"field\": value, ...}")
    })?;
    let mut w = Write::default();
    for (key, v) in obj {
        if key == "id" && mode == Mode::Insert {
            let id = v.as_str().filter(|s| is_uuid(s)).ok_or_else(|| {
                UdmError::new(
                    SqlState::InvalidTextRepresentation,
                    format!(
                        "{}.id: expected a UUID, got {}",
                        def.slug,
                        printable(&v.to_string())
                    ),
                )
            })?;
            w.id = Some(id.to_ascii_lowercase());
            continue;
        }
        let f = writable_field(def, key)?;
        if f.is_many_to_many() {
            let ids = if v.is_null() {
                vec![]
            } else {
                link_ids(def, f, v, &what)?
            };
            w.links.push(Links {
                field: f.name.clone(),
                junction: f.junction.clone().unwrap_or_default(),
                ids,
            });
            continue;
        }
        let value = field_value(&def.slug, f, v)?;
        w.cols.push(Col {
            column: f.column.clone(),
            ptype: PType::of_field(&f.ftype),
            value,
        });
    }
    Ok(w)
}

/// The JSON of a stored record at `alias`: system columns, readable fields, and the ids of
/// many-to-many links. Passwords never appear.
pub fn row_json(schema: &str, def: &EntityDef, alias: &str) -> String {
    let mut pairs: Vec<(String, String)> = SYSTEM_COLUMNS
        .iter()
        .map(|c| (c.to_string(), format!("{alias}.{}", quote_ident(c))))
        .collect();
    for f in &def.fields {
        if f.ftype == FieldType::Password {
            continue;
        }
        if f.is_many_to_many() {
            let j = qualified(schema, f.junction.as_deref().unwrap_or_default());
            pairs.push((
                f.name.clone(),
                format!("(SELECT coalesce(jsonb_agg(l.\"target_id\" ORDER BY l.\"target_id\"), '[]'::jsonb) FROM {j} l WHERE l.\"source_id\" = {alias}.\"id\")"),
            ));
        } else if f.encrypted {
            let sealed = crate::query::path::Sealed {
                schema: schema.to_string(),
                entity: def.slug.clone(),
                field: f.id,
                name: f.name.clone(),
                blind: f.blind_indexed(),
                converting: f.converting_blind(),
                form: f.ftype.sealed_form(),
            };
            pairs.push((f.name.clone(), sealed.decrypt_sql(alias, &f.column)));
        } else {
            pairs.push((
                f.name.clone(),
                format!("{alias}.{}", quote_ident(&f.column)),
            ));
        }
    }
    json_object(&pairs)
}

/// The columns `row_json` reads (`t1.<column>, ...`), and only those: the statement that returns
/// them needs SELECT on each, and a tenant role has none on password columns.
fn returned_columns(def: &EntityDef, links: bool) -> String {
    if links {
        return "t1.\"id\"".into();
    }
    let mut cols: Vec<String> = SYSTEM_COLUMNS
        .iter()
        .map(|c| format!("t1.{}", quote_ident(c)))
        .collect();
    for f in &def.fields {
        if f.ftype == FieldType::Password || f.is_many_to_many() {
            continue;
        }
        cols.push(format!("t1.{}", quote_ident(&f.column)));
    }
    cols.join(", ")
}

/// `INSERT ... RETURNING`: the record JSON, or only its id when links follow. The JSON is built
/// from the inserted row outside the INSERT (`WITH t0 AS (INSERT ... RETURNING t1.<columns>)
/// SELECT ...`):
/// Citus refuses functions that are not immutable in a RETURNING clause.
pub fn insert_sql(schema: &str, def: &EntityDef, w: &Write) -> String {
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    let mut n = 0;
    if w.id.is_some() {
        n += 1;
        cols.push("\"id\"".to_string());
        vals.push(format!("${n}::uuid"));
    }
    for c in &w.cols {
        n += 1;
        cols.push(quote_ident(&c.column));
        vals.push(format!("${n}::{}", c.ptype.sql()));
    }
    let returning = if w.links.is_empty() {
        row_json(schema, def, "t0")
    } else {
        "t0.\"id\"".into()
    };
    if cols.is_empty() {
        return format!(
            "WITH t0 AS (INSERT INTO {} AS t1 DEFAULT VALUES RETURNING {}) SELECT {returning} FROM t0",
            qualified(schema, &def.slug),
            returned_columns(def, !w.links.is_empty())
        );
    }
    format!(
        "WITH t0 AS (INSERT INTO {} AS t1 ({}) VALUES ({}) RETURNING {}) SELECT {returning} FROM t0",
        qualified(schema, &def.slug),
        cols.join(", "),
        vals.join(", "),
        returned_columns(def, !w.links.is_empty())
    )
}

/// Parameter values of `insert_sql`, in order.
pub fn insert_values(w: &Write) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    if let Some(id) = &w.id {
        out.push(Some(id.clone()));
    }
    out.extend(w.cols.iter().map(|c| c.value.clone()));
    out
}

/// `UPDATE ... WHERE id = $1 [AND _version = $2] RETURNING`, the JSON built outside the UPDATE
/// as for `insert_sql`.
pub fn update_sql(schema: &str, def: &EntityDef, w: &Write, versioned: bool) -> String {
    let mut n = if versioned { 2 } else { 1 };
    let mut sets = Vec::new();
    for c in &w.cols {
        n += 1;
        sets.push(format!(
            "{} = ${n}::{}",
            quote_ident(&c.column),
            c.ptype.sql()
        ));
    }
    if sets.is_empty() {
        // links changed only: still a new version of the record
        sets.push("\"updated_at\" = t1.\"updated_at\"".into());
    }
    let returning = if w.links.is_empty() {
        row_json(schema, def, "t0")
    } else {
        "t0.\"id\"".into()
    };
    format!(
        "WITH t0 AS (UPDATE {} AS t1 SET {} WHERE t1.\"id\" = $1::uuid{} RETURNING {}) SELECT {returning} FROM t0",
        qualified(schema, &def.slug),
        sets.join(", "),
        if versioned {
            " AND t1.\"_version\" = $2::integer"
        } else {
            ""
        },
        returned_columns(def, !w.links.is_empty())
    )
}

/// Replaces the links of a record (`$1` the record, `$2` the target ids).
pub fn replace_links_sql(schema: &str, junction: &str) -> [String; 2] {
    let j = qualified(schema, junction);
    [
        format!("DELETE FROM {j} WHERE \"source_id\" = $1::uuid AND NOT (\"target_id\" = ANY ($2::uuid[]))"),
        format!("INSERT INTO {j} (\"source_id\", \"target_id\") SELECT $1::uuid, unnest($2::uuid[]) ON CONFLICT DO NOTHING"),
    ]
}

pub fn get_sql(schema: &str, def: &EntityDef) -> String {
    format!(
        "SELECT {} FROM {} t0 WHERE t0.\"id\" = $1::uuid",
        row_json(schema, def, "t0"),
        qualified(schema, &def.slug)
    )
}

pub fn delete_sql(schema: &str, def: &EntityDef) -> String {
    format!(
        "DELETE FROM {} t0 WHERE t0.\"id\" = $1::uuid RETURNING t0.\"id\"",
        qualified(schema, &def.slug)
    )
}

pub fn version_sql(schema: &str, def: &EntityDef) -> String {
    format!(
        "SELECT \"_version\" FROM {} WHERE \"id\" = $1::uuid",
        qualified(schema, &def.slug)
    )
}

// ------------------------------------------------------------------ batches

/// A checked batch: the columns it writes (with SQL types) and the links of each row.
#[derive(Debug)]
pub struct Batch {
    pub rows: usize,
    /// (field, column, type, present in every row, has a default)
    pub cols: Vec<BatchCol>,
    pub links: Vec<BatchLinks>,
    pub has_ids: bool,
}

#[derive(Debug)]
pub struct BatchCol {
    pub key: String,
    pub column: String,
    pub ptype: PType,
    pub in_every_row: bool,
    pub default: Option<String>,
}

#[derive(Debug)]
pub struct BatchLinks {
    pub key: String,
    pub junction: String,
}

/// Checks every row of a batch (all of them, before any SQL) and describes its columns.
pub fn check_batch(def: &EntityDef, rows: &Value) -> Result<Batch> {
    let items = rows.as_array().ok_or_else(|| {
        UdmError::invalid(format!(
            "rows for {} must be a JSON array of objects, got {}",
            def.slug,
            kind(rows)
        ))
    })?;
    if items.is_empty() {
        return Err(UdmError::invalid(format!("rows for {} is empty", def.slug)));
    }
    if items.len() > MAX_BATCH_ROWS {
        return Err(UdmError::new(
            SqlState::ProgramLimitExceeded,
            format!(
                "{} rows in one batch; at most {MAX_BATCH_ROWS}",
                items.len()
            ),
        )
        .hint("send the rows in several batches"));
    }
    let mut seen: Vec<(String, usize)> = Vec::new(); // key, count
    let mut has_ids = false;
    let mut links: Vec<BatchLinks> = Vec::new();
    for (i, row) in items.iter().enumerate() {
        let obj = row.as_object().ok_or_else(|| {
            UdmError::invalid(format!("rows[{i}]: expected an object, got {}", kind(row)))
        })?;
        let w = write_of(def, row, Mode::Insert).map_err(|e| e.context(format!("rows[{i}]")))?;
        has_ids |= w.id.is_some();
        for key in obj.keys() {
            match seen.iter_mut().find(|(k, _)| k == key) {
                Some(s) => s.1 += 1,
                None => seen.push((key.clone(), 1)),
            }
        }
        for l in w.links {
            if !links.iter().any(|x| x.key == l.field) {
                links.push(BatchLinks {
                    key: l.field,
                    junction: l.junction,
                });
            }
        }
    }
    let mut cols = Vec::new();
    for (key, count) in seen {
        if key == "id" {
            continue;
        }
        let f = writable_field(def, &key)?;
        if f.is_many_to_many() {
            continue;
        }
        cols.push(BatchCol {
            key: key.clone(),
            column: f.column.clone(),
            ptype: PType::of_field(&f.ftype),
            in_every_row: count == items.len(),
            default: default_sql(f),
        });
    }
    Ok(Batch {
        rows: items.len(),
        cols,
        links,
        has_ids,
    })
}

/// The value of a batch column in row `e.d`: a key missing in a row takes the field's default.
fn batch_value(c: &BatchCol) -> String {
    let v = format!("r.{}", quote_ident(&c.key));
    match (&c.default, c.in_every_row) {
        (Some(d), false) => format!(
            "CASE WHEN e.d ? {} THEN {v} ELSE {d} END",
            crate::ident::quote_literal(&c.key)
        ),
        _ => v,
    }
}

fn batch_source(b: &Batch, range: bool) -> String {
    let mut defs: Vec<String> = b
        .cols
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.key), c.ptype.sql()))
        .collect();
    if b.has_ids {
        defs.push("\"id\" uuid".into());
    }
    for l in &b.links {
        defs.push(format!("{} uuid[]", quote_ident(&l.key)));
    }
    let mut src = format!(
        "jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(d, n) CROSS JOIN LATERAL jsonb_to_record(e.d) AS r({})",
        if defs.is_empty() { "\"__none\" text".to_string() } else { defs.join(", ") }
    );
    if range {
        src.push_str(" WHERE e.n BETWEEN $2::bigint AND $3::bigint");
    }
    src
}

/// The statement that inserts a batch (`$1` the rows as jsonb; with `range`, only rows `$2..=$3`,
/// counted from 1). Returns the number inserted.
pub fn insert_many_sql(schema: &str, def: &EntityDef, b: &Batch, range: bool) -> String {
    let table = qualified(schema, &def.slug);
    let mut cols: Vec<String> = b.cols.iter().map(|c| quote_ident(&c.column)).collect();
    let mut vals: Vec<String> = b.cols.iter().map(batch_value).collect();
    if b.links.is_empty() {
        if b.has_ids {
            cols.push("\"id\"".into());
            vals.push(format!("coalesce(r.\"id\", {NEW_ID_SQL})"));
        }
        if cols.is_empty() {
            return format!(
                "WITH ins AS (INSERT INTO {table} (\"id\") SELECT {NEW_ID_SQL} FROM {} RETURNING 1) SELECT count(*) FROM ins",
                batch_source(b, range)
            );
        }
        return format!(
            "WITH ins AS (INSERT INTO {table} ({}) SELECT {} FROM {} RETURNING 1) SELECT count(*) FROM ins",
            cols.join(", "),
            vals.join(", "),
            batch_source(b, range)
        );
    }
    // with links: name every row first, then insert rows and links in one statement
    let link_cols: Vec<String> = b
        .links
        .iter()
        .map(|l| format!("r.{}", quote_ident(&l.key)))
        .collect();
    let mut src_cols = vec![if b.has_ids {
        format!("coalesce(r.\"id\", {NEW_ID_SQL}) AS \"id\"")
    } else {
        format!("{NEW_ID_SQL} AS \"id\"")
    }];
    for (i, v) in vals.iter().enumerate() {
        src_cols.push(format!("{v} AS c{i}"));
    }
    for (i, l) in link_cols.iter().enumerate() {
        src_cols.push(format!("{l} AS l{i}"));
    }
    let mut sql = format!(
        "WITH src AS MATERIALIZED (SELECT {} FROM {})",
        src_cols.join(", "),
        batch_source(b, range)
    );
    let ins_cols: Vec<String> = std::iter::once("\"id\"".to_string())
        .chain(cols.iter().cloned())
        .collect();
    let ins_vals: Vec<String> = std::iter::once("s.\"id\"".to_string())
        .chain((0..cols.len()).map(|i| format!("s.c{i}")))
        .collect();
    sql.push_str(&format!(
        ", ins AS (INSERT INTO {table} ({}) SELECT {} FROM src s RETURNING 1)",
        ins_cols.join(", "),
        ins_vals.join(", ")
    ));
    for (i, l) in b.links.iter().enumerate() {
        sql.push_str(&format!(
            ", lk{i} AS (INSERT INTO {} (\"source_id\", \"target_id\") SELECT DISTINCT s.\"id\", t.id FROM src s CROSS JOIN LATERAL unnest(s.l{i}) AS t(id) RETURNING 1)",
            qualified(schema, &l.junction)
        ));
    }
    let waits: Vec<String> = (0..b.links.len())
        .map(|i| format!(" + (SELECT count(*) FROM lk{i}) * 0"))
        .collect();
    sql.push_str(&format!(
        " SELECT (SELECT count(*) FROM ins){}",
        waits.join("")
    ));
    sql
}

/// The unique constraint an upsert key names: a unique field, or a unique index on exactly
/// those fields.
pub fn check_upsert_key(def: &EntityDef, key: &[String]) -> Result<Vec<String>> {
    if key.is_empty() {
        return Err(UdmError::invalid("the upsert key is empty")
            .hint("name the field(s) that identify a record, e.g. ARRAY['code']"));
    }
    let mut cols = Vec::new();
    for k in key {
        if k == "id" {
            cols.push("id".to_string());
            continue;
        }
        let f = def.field(k).ok_or_else(|| unknown_field(def, k))?;
        if f.encrypted {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                format!(
                    "upsert key: field \"{}\" of entity \"{}\" is encrypted and cannot identify records in a batch",
                    f.name, def.slug
                ),
            )
            .hint("upsert on another unique field or on \"id\", or find the record with a udm_query equality filter and udm_update it"));
        }
        cols.push(f.column.clone());
    }
    let single_unique =
        key.len() == 1 && (key[0] == "id" || def.field(&key[0]).is_some_and(|f| f.unique));
    let mut sorted = key.to_vec();
    sorted.sort();
    let index = def.indexes.iter().any(|i| {
        let mut f = i.fields.clone();
        f.sort();
        i.unique && f == sorted
    });
    if !single_unique && !index {
        return Err(UdmError::new(
            SqlState::InvalidParameterValue,
            format!(
                "upsert key ({}) of {} is not unique",
                key.join(", "),
                def.slug
            ),
        )
        .hint(format!(
            "make it unique first: {} or udm_add_index({}, ARRAY[{}], true)",
            crate::ident::sql_call(
                "udm_alter_field",
                &[&def.slug, &key[0], "{\"unique\": true}"]
            ),
            crate::ident::quote_literal(&def.slug),
            key.iter()
                .map(|k| crate::ident::quote_literal(k))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(cols)
}

/// Two rows of a batch with the same key cannot both be written by one upsert.
pub fn check_unique_keys(rows: &Value, key: &[String]) -> Result<()> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, row) in rows.as_array().into_iter().flatten().enumerate() {
        let mut parts = Vec::with_capacity(key.len());
        for k in key {
            let v = row.get(k).ok_or_else(|| {
                UdmError::invalid(format!(
                    "rows[{i}]: the upsert key field \"{k}\" is missing"
                ))
                .hint("every row needs the key fields")
            })?;
            parts.push(v.to_string());
        }
        let joined = parts.join("\u{1}");
        if let Some(first) = seen.insert(joined, i) {
            return Err(UdmError::new(
                SqlState::UniqueViolation,
                format!(
                    "rows[{first}] and rows[{i}] have the same key ({})",
                    key.join(", ")
                ),
            )
            .hint("an upsert batch may name each record once"));
        }
    }
    Ok(())
}

/// `INSERT ... ON CONFLICT (key) DO UPDATE`; returns (inserted, updated).
pub fn upsert_many_sql(
    schema: &str,
    def: &EntityDef,
    b: &Batch,
    key_cols: &[String],
    range: bool,
) -> String {
    let table = qualified(schema, &def.slug);
    let mut cols: Vec<String> = b.cols.iter().map(|c| quote_ident(&c.column)).collect();
    let mut vals: Vec<String> = b.cols.iter().map(batch_value).collect();
    if b.has_ids {
        cols.push("\"id\"".into());
        vals.push(format!("coalesce(r.\"id\", {NEW_ID_SQL})"));
    }
    let sets: Vec<String> = b
        .cols
        .iter()
        .filter(|c| !key_cols.contains(&c.column))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(&c.column)))
        .collect();
    let action = if sets.is_empty() {
        "DO UPDATE SET \"updated_at\" = t0.\"updated_at\"".to_string()
    } else {
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    format!(
        "WITH w AS (INSERT INTO {table} AS t0 ({}) SELECT {} FROM {} ON CONFLICT ({}) {action} RETURNING (t0.\"_version\" = 1) AS ins) \
         SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM w",
        cols.join(", "),
        vals.join(", "),
        batch_source(b, range),
        key_cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    )
}

/// Names the fields of an entity for a hint.
pub fn field_names(def: &EntityDef) -> String {
    name_list(def.fields.iter().map(|f| f.name.as_str()))
}

pub fn object_keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o: &Map<String, Value>| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Source;
    use serde_json::json;

    fn product() -> EntityDef {
        EntityDef::parse(
            "product",
            &json!({"fields": [
                {"name": "name", "type": "text", "required": true},
                {"name": "code", "type": "text", "unique": true},
                {"name": "price", "type": "decimal", "precision": 12, "scale": 2},
                {"name": "status", "type": "select", "values": ["draft", "active"], "default": "draft"},
                {"name": "secret", "type": "password"},
                {"name": "seq", "type": "auto_number"},
                {"name": "tags", "type": "relation", "target": "tag", "many": true},
                {"name": "released", "type": "date"}]}),
            Source::Caller,
        )
        .unwrap()
    }

    #[test]
    fn a_replacement_nulls_what_it_leaves_out() {
        let d = product();
        let all = |_: &FieldDef| true;
        let r = replacement(
            &d,
            &json!({"name": "A", "id": "x", "_version": 3, "created_at": "2026-01-01", "price": 2}),
            &all,
        )
        .unwrap();
        assert_eq!(
            r,
            json!({"name": "A", "price": 2, "code": null, "status": null, "tags": null, "released": null}),
            "system columns ignored; auto numbers and passwords kept"
        );
        // a field the caller may not write stays as it is
        let r = replacement(&d, &json!({"name": "B"}), &|f: &FieldDef| f.name != "code").unwrap();
        assert!(r.get("code").is_none() && r["price"].is_null(), "{r}");
        // the result is an ordinary patch: unknown fields are refused by write_of
        let r = replacement(&d, &json!({"name": "C", "nope": 1}), &all).unwrap();
        let e = write_of(&d, &r, Mode::Update).unwrap_err();
        assert!(e.message.contains("nope"), "{}", e.message);
        let e = replacement(&d, &json!([1]), &all).unwrap_err();
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        assert!(e
            .message
            .contains("fields for product must be a JSON object"));
    }

    #[test]
    fn writes_are_checked_and_typed() {
        let d = product();
        let w = write_of(
            &d,
            &json!({"name": "A", "price": 9.5, "tags": ["6F9619FF-8B86-D011-B42D-00C04FC964FF"]}),
            Mode::Insert,
        )
        .unwrap();
        assert_eq!(w.cols.len(), 2);
        assert_eq!(w.links[0].ids, vec!["6f9619ff-8b86-d011-b42d-00c04fc964ff"]);
        let sql = insert_sql("acme", &d, &w);
        assert!(sql.starts_with("WITH t0 AS (INSERT INTO \"acme\".\"product\" AS t1 (\"name\", \"price\") VALUES ($1::text, $2::numeric) RETURNING t1.\"id\") SELECT t0.\"id\" FROM t0"), "{sql}");
        for (data, want) in [
            (
                json!({"price": "abc"}),
                "product.price: expected a number, got \"abc\"",
            ),
            (
                json!({"nope": 1}),
                "entity \"product\" has no field \"nope\"",
            ),
            (json!({"created_at": "2020-01-01"}), "system column"),
            (json!({"seq": 5}), "auto_number"),
            (json!({"tags": "x"}), "takes a list of ids"),
            (json!({"tags": ["x"]}), "product.tags[0]: expected a UUID"),
            (json!({"released": "2024-02-30"}), "expected a date"),
            (json!([1]), "must be a JSON object"),
        ] {
            let e = write_of(&d, &data, Mode::Insert).unwrap_err();
            assert!(e.message.contains(want), "{data}: {}", e.message);
        }
        assert!(write_of(
            &d,
            &json!({"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
            Mode::Update
        )
        .unwrap_err()
        .message
        .contains("system column"));
    }

    #[test]
    fn records_never_return_passwords() {
        let j = row_json("acme", &product(), "t0");
        assert!(!j.contains("secret"));
        assert!(
            j.contains("'tags', (SELECT coalesce(jsonb_agg(l.\"target_id\""),
            "{j}"
        );
        assert!(j.contains("'_version', t0.\"_version\""));
    }

    #[test]
    fn updates_check_the_version() {
        let d = product();
        let w = write_of(&d, &json!({"price": 1}), Mode::Update).unwrap();
        let sql = update_sql("acme", &d, &w, true);
        assert!(sql.contains("SET \"price\" = $3::numeric WHERE t1.\"id\" = $1::uuid AND t1.\"_version\" = $2::integer"), "{sql}");
    }

    #[test]
    fn batches_name_the_row() {
        let d = product();
        let e = check_batch(&d, &json!([{"name": "a"}, {"name": "b", "price": "x"}])).unwrap_err();
        assert_eq!(
            e.message,
            "rows[1]: product.price: expected a number, got \"x\""
        );
        let b = check_batch(
            &d,
            &json!([{"name": "a", "status": "active"}, {"name": "b"}]),
        )
        .unwrap();
        let status = b.cols.iter().find(|c| c.key == "status").unwrap();
        assert!(!status.in_every_row);
        let sql = insert_many_sql("acme", &d, &b, false);
        assert!(
            sql.contains("CASE WHEN e.d ? 'status' THEN r.\"status\" ELSE 'draft'::text END"),
            "{sql}"
        );
        assert!(insert_many_sql("acme", &d, &b, true)
            .contains("WHERE e.n BETWEEN $2::bigint AND $3::bigint"));
    }

    #[test]
    fn upsert_keys_must_be_unique_and_distinct() {
        let d = product();
        assert_eq!(
            check_upsert_key(&d, &["code".into()]).unwrap(),
            vec!["code"]
        );
        let e = check_upsert_key(&d, &["name".into()]).unwrap_err();
        assert!(e.message.contains("is not unique") && e.hint.unwrap().contains("udm_add_index"));
        let e = check_unique_keys(
            &json!([{"code": "a"}, {"code": "b"}, {"code": "a"}]),
            &["code".into()],
        )
        .unwrap_err();
        assert_eq!(e.message, "rows[0] and rows[2] have the same key (code)");
        let b = check_batch(&d, &json!([{"code": "a", "name": "x"}])).unwrap();
        let sql = upsert_many_sql("acme", &d, &b, &["code".into()], false);
        assert!(
            sql.contains("ON CONFLICT (\"code\") DO UPDATE SET \"name\" = EXCLUDED.\"name\""),
            "{sql}"
        );
    }
}
