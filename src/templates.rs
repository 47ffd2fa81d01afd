//! `udm_install_template(template)`: installs a named set of entity definitions (see
//! `udm_core::templates`) into the current tenant, in one transaction, through the same
//! functions a caller would use (so definitions are versioned, audited and checked alike).

use crate::catalog;
use crate::entities;
use crate::error::{OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::prelude::*;
use serde_json::{json, Value};
use udm_core::error::name_list;
use udm_core::templates::{self, Step};

pub fn install(name: &str) -> Result<Value> {
    let steps = templates::template(name)?;
    let t = catalog::current_tenant()?;
    crate::access::require_manage(&t, &format!("install template \"{name}\""))?;
    let names = templates::entities(&steps);
    let mut taken = Vec::new();
    for e in &names {
        if let Some((_, status)) = catalog::latest_status(&t, e)? {
            if status != "purged" {
                taken.push(format!("{e} ({status})"));
            }
        }
    }
    if !taken.is_empty() {
        return Err(UdmError::new(
            SqlState::DuplicateTable,
            format!(
                "cannot install template \"{name}\" into tenant \"{}\": it defines {}, and the tenant has {}",
                t.slug,
                name_list(names.iter().copied()),
                name_list(taken)
            ),
        )
        .hint("install it into another tenant, or purge those entities first"));
    }
    for s in &steps {
        match s {
            Step::Define { entity, definition } => {
                entities::define_entity(entity, definition)?;
            }
            Step::AddRule { entity, rule } => {
                entities::add_rule(entity, rule)?;
            }
        }
    }
    Ok(json!({"template": name, "tenant": t.slug, "entities": names}))
}

/// Installs a template (`'roadmap'`) into the current tenant; all or nothing.
#[pg_extern(volatile, parallel_unsafe)]
fn udm_install_template(template: &str) -> JsonB {
    JsonB(install(template).or_raise())
}
