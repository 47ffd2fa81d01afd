//! A record's many-to-many links as part of its history. Junction tables are audited as changes
//! of `<entity>.<field>` keyed by the source record (one row per link made or removed); here
//! those rows are read back as changes of the field: for history (which fields changed and how),
//! for the record as it was at a time, and for rollback (the links a version had).

use crate::catalog::{self, Entity, Tenant};
use crate::error::{catch_pg, spi_err, Result};
use crate::json::RawJsonb;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use udm_core::audit::LinkChange;
use udm_core::definition::{EntityDef, FieldDef};
use udm_core::error::UdmError;
use udm_core::ident::quote_ident;

/// A link change with who made it and when (for the history rows of link changes made without
/// a change of the record itself, as plain SQL on a junction table makes them).
pub struct LinkRow {
    pub change: LinkChange,
    pub user_id: String,
    pub db_role: String,
    pub changed_at: Option<TimestampWithTimeZone>,
}

/// Whether the entity has (or had) many-to-many fields: only then has it link rows.
pub fn has_links(e: &Entity) -> bool {
    e.def
        .fields
        .iter()
        .chain(&e.def.removed_fields)
        .any(|f| f.junction.is_some())
}

/// The many-to-many field with this id (active or removed), as it is now.
pub fn field(def: &EntityDef, id: u32) -> Option<&FieldDef> {
    def.fields
        .iter()
        .chain(&def.removed_fields)
        .find(|f| f.id == id && f.junction.is_some())
}

/// The link changes of a record (every many-to-many field, removed ones too), in audit order,
/// up to `at` when given. Rows name their field as it was named then: the definition of their
/// entity version finds its id (which renames keep).
pub fn changes(
    t: &Tenant,
    e: &Entity,
    id: Uuid,
    at: Option<TimestampWithTimeZone>,
) -> Result<Vec<LinkRow>> {
    let (chains, filter) = crate::audit::history::split(crate::audit::batch::record_filter(
        t,
        &e.def.slug,
        id,
        true,
        None,
        4,
    )?);
    let sql = format!(
        "SELECT audit_id, txid, entity, entity_version, old_data->>'target_id', new_data->>'target_id', \
           user_id, db_role, changed_at \
         FROM {} WHERE record_id = $1 AND starts_with(entity, $2) \
           AND ($3::timestamptz IS NULL OR changed_at <= $3){filter} ORDER BY audit_id",
        crate::audit::audit_table(t)
    );
    let prefix = format!("{}.", e.def.slug);
    let mut args: Vec<pgrx::datum::DatumWithOid> =
        vec![id.into(), prefix.as_str().into(), at.into()];
    crate::audit::batch::push_chains(&mut args, chains);
    type Raw = (
        i64,
        i64,
        String,
        Option<i32>,
        Option<String>,
        Option<String>,
        String,
        String,
        Option<TimestampWithTimeZone>,
    );
    let raw: Vec<Raw> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(&sql, None, &args)? {
            out.push((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<i32>(4)?,
                r.get::<String>(5)?,
                r.get::<String>(6)?,
                r.get::<String>(7)?.unwrap_or_default(),
                r.get::<String>(8)?.unwrap_or_default(),
                r.get(9)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(spi_err)?;
    let mut defs: HashMap<Option<i32>, Option<EntityDef>> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (audit_id, txid, subject, version, old, new, user_id, db_role, changed_at) in raw {
        let name = &subject[prefix.len()..];
        let then = match defs.entry(version) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(match version {
                Some(n) => catalog::definition_at(t, &e.def.slug, n)?,
                None => None,
            }),
        }
        .as_ref();
        let by_name = |d: &EntityDef| {
            d.fields
                .iter()
                .chain(&d.removed_fields)
                .find(|f| f.name == name && f.junction.is_some())
                .map(|f| f.id)
        };
        let Some(field) = then.and_then(by_name).or_else(|| by_name(&e.def)) else {
            continue;
        };
        let mut push = |target: String, added: bool| {
            out.push(LinkRow {
                change: LinkChange {
                    audit_id,
                    txid,
                    field,
                    target,
                    added,
                },
                user_id: user_id.clone(),
                db_role: db_role.clone(),
                changed_at,
            })
        };
        match (old, new) {
            (Some(o), Some(n)) if o == n => {}
            (Some(o), Some(n)) => {
                push(o, false);
                push(n, true);
            }
            (Some(o), None) => push(o, false),
            (None, Some(n)) => push(n, true),
            (None, None) => {}
        }
    }
    Ok(out)
}

/// The record image with the links of its active many-to-many fields (by their names now, ids
/// sorted) put in: what the record's links were at that point.
pub fn with_links(
    img: &RawJsonb,
    def: &EntityDef,
    links: &BTreeMap<u32, BTreeSet<String>>,
) -> Result<RawJsonb> {
    let fields: Vec<&FieldDef> = def.fields.iter().filter(|f| f.junction.is_some()).collect();
    if fields.is_empty() {
        return Ok(img.clone());
    }
    let bad = |e: udm_core::jsonb::JsonbError| {
        UdmError::internal(format!("udm: cannot add links to an image: {}", e.0))
    };
    let Some(mut pairs) = udm_core::jsonb::object_pairs(img.root()).map_err(bad)? else {
        return Ok(img.clone());
    };
    let empty = BTreeSet::new();
    let lists: Vec<(&str, Vec<&str>)> = fields
        .iter()
        .map(|f| {
            let ids = links.get(&f.id).unwrap_or(&empty);
            (f.name.as_str(), ids.iter().map(String::as_str).collect())
        })
        .collect();
    pairs.retain(|(k, _)| !lists.iter().any(|(n, _)| n.as_bytes() == *k));
    for (name, ids) in &lists {
        pairs.push((
            name.as_bytes(),
            udm_core::jsonb::Value::Array(
                ids.iter()
                    .map(|i| udm_core::jsonb::Value::String(i.as_bytes()))
                    .collect(),
            ),
        ));
    }
    let mut out = Vec::new();
    udm_core::jsonb::write_object(&mut out, &pairs).map_err(bad)?;
    Ok(RawJsonb(out))
}

/// Sets the links of a record's many-to-many field to `wanted` (a rollback, recorded as such),
/// as the caller: links to records that no longer exist (or the caller cannot see) are left out
/// and returned.
pub fn restore(
    t: &Tenant,
    id: Uuid,
    f: &FieldDef,
    wanted: &BTreeSet<String>,
    what: &str,
) -> Result<Vec<String>> {
    let (Some(junction), Some(target)) = (f.junction.as_deref(), f.target.as_deref()) else {
        return Ok(Vec::new());
    };
    let ids: Vec<Uuid> = wanted
        .iter()
        .filter_map(|s| uuid::Uuid::parse_str(s).ok())
        .map(|u| Uuid::from_bytes(*u.as_bytes()))
        .collect();
    let existing: Vec<String> = crate::spi::select_one::<Vec<Option<String>>>(
        &format!(
            "SELECT array_agg(x::text) FROM unnest($1::uuid[]) x WHERE EXISTS (SELECT 1 FROM {}.{} t WHERE t.id = x)",
            quote_ident(&t.schema),
            quote_ident(target)
        ),
        &[ids.into()],
    )?
    .unwrap_or_default()
    .into_iter()
    .flatten()
    .collect();
    let gone: Vec<String> = wanted
        .iter()
        .filter(|w| !existing.contains(w))
        .cloned()
        .collect();
    let list = format!("{{{}}}", existing.join(","));
    let [del, ins] = udm_core::records::replace_links_sql(&t.schema, junction);
    let what = what.to_string();
    crate::audit::as_rollback(None, || {
        catch_pg(
            || {
                crate::spi::connect_mut("INSERT", |c| {
                    for sql in [&del, &ins] {
                        c.update(
                            sql.as_str(),
                            None,
                            &[id.to_string().as_str().into(), list.as_str().into()],
                        )?;
                    }
                    Ok::<_, pgrx::spi::Error>(())
                })
                .map_err(spi_err)
            },
            |err| err.raise_with(&what),
        )
    })?;
    Ok(gone)
}
