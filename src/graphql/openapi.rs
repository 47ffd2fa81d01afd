//! `udm_openapi()`: the OpenAPI 3.1 document of the selected tenant's REST routes as the session's
//! role sees it (`udm_core::openapi`), built from the same model as `udm_graphql_schema()`: fields
//! the role may not read are absent. udm-server serves it at `GET /api/openapi.json`.

use crate::catalog;
use crate::error::OrRaise;
use crate::json::JsonB;
use pgrx::prelude::*;

/// `udm_openapi()`: the selected tenant's OpenAPI document; `55000` when no tenant is selected.
#[pg_extern(volatile, parallel_unsafe)]
fn udm_openapi() -> JsonB {
    let t = catalog::current_tenant().or_raise();
    let model = crate::query::model(&t).or_raise();
    JsonB(udm_core::openapi::document(&*model, &t.slug))
}
