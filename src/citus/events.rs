//! Audit rows that no row trigger writes (access and lock events: `audit::record_event`) on a
//! Citus coordinator. The tenant's log lives on its worker, and the coordinator's table of that
//! name is only Citus's shell: a row written into it there would be in no query's sight, outside
//! the chain. So the coordinator sends the event to the worker as a query of the tenant's
//! catalog, which Citus runs there whole, in the same transaction: `udm.citus_record_event`
//! appends it to the log's shard, as the triggers do.

use crate::audit::Event;
use crate::catalog::Tenant;
use crate::error::{OrRaise, Result, SqlState, UdmError};
use crate::json::JsonB;
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use std::rc::Rc;

/// The actions of the events udm records outside triggers (`audit::record_event`'s callers).
const ACTIONS: [&str; 8] = [
    "MEMBER_ADD",
    "MEMBER_REMOVE",
    "GRANT",
    "REVOKE",
    "LOCK_ACQUIRE",
    "LOCK_HEARTBEAT",
    "LOCK_RELEASE",
    "LOCK_TAKEOVER",
];

/// Appends the event to the tenant's log on its worker, in this transaction.
pub fn record_on_node(t: &Tenant, e: &Event, user: &str, role: &str) -> Result<()> {
    let sql = super::on_node_sql(
        &t.schema,
        "udm.citus_record_event($1, $2, $3, $4, $5, $6, $7, $8)",
    );
    let written = crate::access::security::as_owner(|| {
        crate::spi::select_one::<bool>(
            &sql,
            &[
                t.schema.as_str().into(),
                e.entity.into(),
                e.entity_version.into(),
                pgrx::Uuid::from_bytes(e.record_id).into(),
                e.action.into(),
                JsonB(e.data.clone()).into(),
                user.into(),
                role.into(),
            ],
        )
    })?;
    if written != Some(true) {
        return Err(UdmError::internal(format!(
            "udm on Citus: the {} event of tenant \"{}\" was not written on its node",
            e.action, t.schema
        )));
    }
    Ok(())
}

finfo_v1!(pg_finfo_udm_citus_record_event);

/// `udm.citus_record_event(schema, entity, entity_version, record_id, action, data, user_id,
/// db_role)`: on the tenant's worker, appends an event to its log (see the module). Internal:
/// not executable by PUBLIC; refused anywhere but on a worker, for a schema that is not a udm
/// tenant's, or an action udm does not record this way.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_citus_record_event(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let text = |i: usize| unsafe { pg_getarg::<String>(fcinfo, i) };
    let (Some(schema), Some(entity), Some(action), Some(user), Some(role)) =
        (text(0), text(1), text(4), text(6), text(7))
    else {
        crate::error::raise(UdmError::new(
            SqlState::NullValueNotAllowed,
            "udm.citus_record_event: no argument may be NULL",
        ))
    };
    let version = unsafe { pg_getarg::<i32>(fcinfo, 2) }.unwrap_or(0);
    let id = unsafe { pg_getarg::<pgrx::Uuid>(fcinfo, 3) };
    let data = unsafe { pg_getarg::<JsonB>(fcinfo, 5) };
    let (Some(id), Some(data)) = (id, data) else {
        crate::error::raise(UdmError::new(
            SqlState::NullValueNotAllowed,
            "udm.citus_record_event: no argument may be NULL",
        ))
    };
    (|| -> Result<()> {
        if !super::on_worker() {
            return Err(UdmError::new(
                SqlState::FeatureNotSupported,
                "udm.citus_record_event runs on a Citus worker only, where udm sends it",
            ));
        }
        let Some(action) = ACTIONS.iter().copied().find(|a| *a == action) else {
            return Err(UdmError::invalid(format!(
                "udm.citus_record_event: \"{}\" is not an action udm records this way",
                udm_core::ident::printable(&action)
            )));
        };
        // the registry (a reference table) and the log's shard are read here, inside the query
        // Citus sent to this node
        super::nested(|| {
            let t = crate::catalog::tenant(&schema)?.ok_or_else(|| {
                UdmError::invalid(format!(
                    "udm.citus_record_event: \"{}\" is not a udm tenant's schema",
                    udm_core::ident::printable(&schema)
                ))
            })?;
            let e = Event {
                entity: &entity,
                entity_version: version,
                record_id: *id.as_bytes(),
                action,
                data: &data.0,
            };
            crate::audit::record_event_as(&t, &e, Rc::from(user.as_str()), Rc::from(role.as_str()))
        })
    })()
    .or_raise();
    pg_sys::Datum::from(true)
}

/// The horizon of the tenant's event stream (`audit::events`), on a Citus coordinator: the log,
/// its sequence and its writers' horizon locks are on the tenant's node, so it is found there,
/// by `udm.citus_event_horizon` as a query of the tenant's catalog, which Citus sends there.
pub fn horizon_on_node(t: &Tenant) -> Result<i64> {
    let sql = super::on_node_sql(&t.schema, "udm.citus_event_horizon($1)");
    crate::spi::select_one::<i64>(&sql, &[t.schema.as_str().into()])?.ok_or_else(|| {
        UdmError::internal(format!(
            "udm on Citus: no event horizon came back from the node of tenant \"{}\"",
            t.schema
        ))
    })
}

finfo_v1!(pg_finfo_udm_citus_event_horizon);

/// `udm.citus_event_horizon(schema)`: on the tenant's worker, the horizon of its event stream
/// there (see `horizon_on_node`). Internal: not executable by PUBLIC; refused anywhere but on a
/// worker, and for a schema that is not a udm tenant's.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn udm_citus_event_horizon(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let h = (|| -> Result<i64> {
        let schema = unsafe {
            super::node_call_arg(fcinfo, "udm.citus_event_horizon", "schema", "udm sends it")
        }?;
        super::nested(|| {
            let t = crate::catalog::tenant(&schema)?.ok_or_else(|| {
                UdmError::invalid(format!(
                    "udm.citus_event_horizon: \"{}\" is not a udm tenant's schema",
                    udm_core::ident::printable(&schema)
                ))
            })?;
            crate::audit::events::local_horizon(&t)
        })
    })()
    .or_raise();
    pg_sys::Datum::from(h)
}
