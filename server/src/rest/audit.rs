//! `/api/audit/...` and `/api/openapi.json`.

use super::{invalid, json, one, only, query};
use crate::db::Mode;
use crate::error::ApiError;
use crate::App;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value};
use std::sync::Arc;

const REPORT: &str = "SELECT udm_audit_report($1, coalesce($2::text, '-infinity')::timestamptz, \
     coalesce($3::text, 'infinity')::timestamptz, $4::jsonb)";
const VERIFY: &str = "SELECT udm_audit_verify()";
const OPENAPI: &str = "SELECT udm_openapi()::jsonb";

/// `?kind=summary|changes|user_activity|record_history&from=&to=&entity=&user=&record_id=&limit=`
/// (`from` and `to` default to the whole log).
pub async fn report(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let pairs = query(&uri)?;
    only(
        &pairs,
        &["kind", "from", "to", "entity", "user", "record_id", "limit"],
    )?;
    let mut kind = None;
    let (mut from, mut to) = (None::<String>, None::<String>);
    let mut options = Map::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "kind" => kind = Some(v.clone()),
            "from" => from = Some(v.clone()),
            "to" => to = Some(v.clone()),
            "limit" => {
                let n = v
                    .parse::<i64>()
                    .map_err(|_| invalid("limit", "\"limit\" is a whole number"))?;
                options.insert(k.clone(), n.into());
            }
            _ => {
                options.insert(k.clone(), v.clone().into());
            }
        }
    }
    let kind = kind.ok_or_else(|| {
        invalid(
            "kind",
            "give the kind: summary, changes, user_activity or record_history",
        )
    })?;
    let options = Value::Object(options);
    let out = one(
        &app,
        &headers,
        Mode::Read,
        REPORT,
        &[&kind, &from, &to, &options],
    )
    .await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn verify(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    only(&query(&uri)?, &[])?;
    let out = one(&app, &headers, Mode::Read, VERIFY, &[]).await?;
    Ok(json(StatusCode::OK, &out))
}

/// The tenant's OpenAPI document as the caller sees it (`udm_openapi()`, built by udm).
pub async fn openapi(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let out = one(&app, &headers, Mode::Read, OPENAPI, &[]).await?;
    Ok(json(StatusCode::OK, &out))
}
