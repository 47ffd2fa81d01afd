//! `/api/schemas/...`: entity definitions and their fields.

use super::{body, invalid, json, list, no_content, one};
use crate::db::Mode;
use crate::error::ApiError;
use crate::App;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;

const ENTITIES: &str =
    "SELECT coalesce(jsonb_agg(to_jsonb(e) ORDER BY e.slug), '[]'::jsonb) FROM udm_entities() e";
const DEFINE: &str = "SELECT udm_define_entity($1, $2::jsonb)";
const DESCRIBE: &str = "SELECT udm_describe($1)";
const DROP: &str = "SELECT udm_drop_entity($1)";
const ADD_FIELD: &str = "SELECT udm_add_field($1, $2::jsonb)";
const ALTER_FIELD: &str = "SELECT udm_alter_field($1, $2, $3::jsonb)";
const REMOVE_FIELD: &str = "SELECT udm_remove_field($1, $2)";
const RESTORE_FIELD: &str = "SELECT udm_restore_field($1, $2)";

fn created(out: &Value, location: &str) -> Response {
    let mut r = json(StatusCode::CREATED, out);
    if let Ok(h) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    r
}

fn object(v: Value, what: &str) -> Result<Value, ApiError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(invalid("body", format!("the body is {what}")))
    }
}

pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let out = one(&app, &headers, Mode::Read, ENTITIES, &[]).await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(&headers, raw)?;
    let shape = "{\"slug\": \"...\", \"definition\": {...}}";
    let slug = b
        .get("slug")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("slug", format!("the body is {shape}")))?
        .to_string();
    let definition = object(b.get("definition").cloned().unwrap_or_default(), shape)?;
    let out = one(&app, &headers, Mode::Write, DEFINE, &[&slug, &definition]).await?;
    Ok(created(
        &out,
        &format!("/api/schemas/{}", list::encode(&slug)),
    ))
}

pub async fn describe(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
) -> Result<Response, ApiError> {
    let out = one(&app, &headers, Mode::Read, DESCRIBE, &[&entity]).await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn define(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let definition = object(body(&headers, raw)?, "a definition object")?;
    let out = one(&app, &headers, Mode::Write, DEFINE, &[&entity, &definition]).await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn drop(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
) -> Result<Response, ApiError> {
    one(&app, &headers, Mode::Write, DROP, &[&entity]).await?;
    Ok(no_content())
}

pub async fn add_field(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let field = object(body(&headers, raw)?, "a field definition object")?;
    let out = one(&app, &headers, Mode::Write, ADD_FIELD, &[&entity, &field]).await?;
    let name = field.get("name").and_then(Value::as_str).unwrap_or("");
    Ok(created(
        &out,
        &format!(
            "/api/schemas/{}/fields/{}",
            list::encode(&entity),
            list::encode(name)
        ),
    ))
}

pub async fn alter_field(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, field)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let changes = object(body(&headers, raw)?, "an object of changes")?;
    let out = one(
        &app,
        &headers,
        Mode::Write,
        ALTER_FIELD,
        &[&entity, &field, &changes],
    )
    .await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn remove_field(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, field)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    one(
        &app,
        &headers,
        Mode::Write,
        REMOVE_FIELD,
        &[&entity, &field],
    )
    .await?;
    Ok(no_content())
}

pub async fn restore_field(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, field)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let out = one(
        &app,
        &headers,
        Mode::Write,
        RESTORE_FIELD,
        &[&entity, &field],
    )
    .await?;
    Ok(json(StatusCode::OK, &out))
}
