//! The REST bridge (`/api`): the routes of the contract in README.md ("REST bridge"), each one
//! or two `udm_*` calls in the request's transaction (`db::Tx`), with the same tokens, pool and
//! per-token limit as GraphQL. Every value is a bound parameter; no identifier is ever written
//! into SQL. Errors are RFC 9457 problem details (`problem.rs`), the list grammar is `list.rs`.

pub mod audit;
pub mod list;
pub mod problem;
pub mod records;
pub mod schemas;

use crate::db::{Mode, Tx};
use crate::error::ApiError;
use crate::limit::Slot;
use crate::App;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use std::sync::Arc;

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/schemas", get(schemas::list).post(schemas::create))
        .route(
            "/schemas/{entity}",
            get(schemas::describe)
                .put(schemas::define)
                .delete(schemas::drop),
        )
        .route(
            "/schemas/{entity}/fields",
            axum::routing::post(schemas::add_field),
        )
        .route(
            "/schemas/{entity}/fields/{field}",
            axum::routing::patch(schemas::alter_field).delete(schemas::remove_field),
        )
        .route(
            "/schemas/{entity}/fields/{field}/restore",
            axum::routing::post(schemas::restore_field),
        )
        .route(
            "/records/{entity}",
            get(records::list).post(records::create),
        )
        .route(
            "/records/{entity}/{id}",
            get(records::get)
                .put(records::put)
                .patch(records::patch)
                .delete(records::delete),
        )
        .route(
            "/records/{entity}/query/{kind}",
            axum::routing::post(records::view),
        )
        .route(
            "/records/{entity}/stats/agg",
            axum::routing::post(records::aggregate),
        )
        .route("/records/{entity}/{id}/history", get(records::history))
        .route("/records/{entity}/{id}/at", get(records::at))
        .route(
            "/records/{entity}/{id}/rollback",
            axum::routing::post(records::rollback),
        )
        .route(
            "/records/{entity}/{id}/lock",
            get(records::lock_status)
                .post(records::lock_acquire)
                .put(records::lock_heartbeat)
                .delete(records::lock_release),
        )
        .route("/audit/report", get(audit::report))
        .route("/audit/verify", get(audit::verify))
        .route("/openapi.json", get(audit::openapi))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route").into_response()
        })
        .layer(middleware::from_fn(finish))
}

/// Every response of the bridge: counted as `rest` by the metrics, and every error (also the
/// router's own 404 and 405 and a body over the limit, 413) as problem+json.
async fn finish(req: Request<Body>, next: Next) -> Response {
    // the path as the client sent it (`/api/...`; the nested router sees it without `/api`)
    let instance = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.0.path().to_string());
    tracing::Span::current().record("op", "rest");
    let mut r = next.run(req).await;
    let status = r.status();
    if (status.is_client_error() || status.is_server_error())
        && r.headers().get(header::CONTENT_TYPE)
            != Some(&HeaderValue::from_static("application/problem+json"))
    {
        let e = r.extensions_mut().remove::<ApiError>().unwrap_or_else(|| {
            let message = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "the request body is larger than the server takes",
                StatusCode::METHOD_NOT_ALLOWED => "this route does not take this method",
                StatusCode::NOT_FOUND => "no such route",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "the request body must be application/json",
                s if s.is_server_error() => {
                    return ApiError::internal();
                }
                _ => "the request could not be read",
            };
            ApiError::new(status, "BAD_REQUEST", message)
        });
        let allow = r.headers().get(header::ALLOW).cloned();
        r = problem::response(&e, &instance);
        if let Some(a) = allow {
            r.headers_mut().insert(header::ALLOW, a);
        }
    }
    r.extensions_mut().insert(crate::http::Operation("rest"));
    r
}

/// A request's transaction as the token's user, and its place in the token's connections.
pub struct Session {
    pub tx: Tx,
    _slot: Slot,
}

pub async fn session(app: &App, headers: &HeaderMap, mode: Mode) -> Result<Session, ApiError> {
    let (who, slot) = app.keys.admit(headers, &app.per_token)?;
    let tx = Tx::begin(app, &who, mode).await?;
    Ok(Session { tx, _slot: slot })
}

/// One statement in its own transaction.
pub async fn one(
    app: &App,
    headers: &HeaderMap,
    mode: Mode,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Value, ApiError> {
    let s = session(app, headers, mode).await?;
    let r = s.tx.json(sql, params).await;
    s.tx.finish(r).await
}

/// A JSON response.
pub fn json(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The JSON body of a request (`Content-Type` JSON, or none).
pub fn body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is larger than the server takes (max_body_bytes)",
            )
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let media = ct.split(';').next().unwrap_or("").trim();
        if media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "the request body must be application/json",
            ));
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// The decoded query string, in order.
pub fn query(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(p)| p)
        .map_err(|_| ApiError::bad_request("the query string could not be read"))
}

/// The only query parameters a route takes: a refusal names another.
pub fn only(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(invalid(
            k,
            format!(
                "unknown query parameter \"{k}\" (this route takes {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ),
        ));
    }
    Ok(())
}

/// 400 naming what is wrong (SQLSTATE 22023, udm's code for a bad option).
pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_db(crate::error::DbDetail {
        sqlstate: "22023".into(),
        field: Some(field.to_string()),
        ..Default::default()
    })
}

/// A record id of the path (a UUID).
pub fn record_id(id: &str) -> Result<&str, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| invalid("id", format!("\"{id}\" is not a record id (a UUID)")))
}
