//! `/api/records/...`: records, lists, views, aggregates, history, rollback and write locks.

use super::{body, invalid, json, list, no_content, one, only, problem, query, record_id, session};
use crate::db::Mode;
use crate::error::ApiError;
use crate::App;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

const QUERY: &str = "SELECT udm_query($1, $2::jsonb)";
const INSERT: &str = "SELECT udm_insert($1, $2::jsonb)";
const INSERT_MANY: &str = "SELECT udm_insert_many($1, $2::jsonb)";
const UPSERT_MANY: &str = "SELECT udm_upsert_many($1, $2::jsonb, $3::text[])";
const GET: &str = "SELECT udm_get($1, $2::text::uuid, $3::text[])";
const UPDATE: &str = "SELECT udm_update($1, $2::text::uuid, $3::jsonb, $4::int4)";
/// PUT: the record holds the body and nothing older (`udm_replace`: every field it leaves out
/// becomes null; system columns in it are ignored, so what GET answered can be sent back).
const REPLACE: &str = "SELECT udm_replace($1, $2::text::uuid, $3::jsonb, $4::int4)";
const DELETE: &str = "SELECT udm_delete($1, $2::text::uuid)";
const VERSION: &str = "SELECT udm_get($1, $2::text::uuid, ARRAY['_version'])";
const VIEW: &str = "SELECT udm_view($1, $2, $3::jsonb)";
const AGGREGATE: &str = "SELECT udm_aggregate($1, $2::jsonb)";
const HISTORY: &str =
    "SELECT coalesce(jsonb_agg(to_jsonb(h) ORDER BY h.event_id DESC), '[]'::jsonb) \
     FROM udm_history($1, $2::text::uuid) h";
const AT: &str = "SELECT udm_record_at($1, $2::text::uuid, $3::text::timestamptz)";
const ROLLBACK: &str = "SELECT udm_rollback($1, $2::text::uuid, $3::int4, $4::text[])";
const LOCK_STATUS: &str = "SELECT udm_lock_status($1, $2::text::uuid)";
const LOCK_ACQUIRE: &str = "SELECT udm_lock_acquire($1, $2::text::uuid)";
const LOCK_HEARTBEAT: &str = "SELECT udm_lock_heartbeat($1, $2::text::uuid)";
const LOCK_RELEASE: &str = "SELECT udm_lock_release($1, $2::text::uuid)";

fn not_found(entity: &str, id: &str) -> ApiError {
    let mut e = problem::make(
        StatusCode::NOT_FOUND,
        "P0002",
        format!("{entity} has no record {id} (or it is hidden from you)"),
    );
    if let Some(d) = e.db.as_mut() {
        d.entity = Some(entity.to_string());
    }
    e
}

/// `ETag: "<_version>"` of a record.
fn with_etag(mut r: Response, record: &Value) -> Response {
    if let Some(v) = record.get("_version").and_then(Value::as_i64) {
        if let Ok(h) = HeaderValue::from_str(&format!("\"{v}\"")) {
            r.headers_mut().insert(header::ETAG, h);
        }
    }
    r
}

/// The expected version of `If-Match` (one strong entity tag `"<_version>"`; `*`: any).
pub fn if_match(headers: &HeaderMap) -> Result<Option<i32>, ApiError> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return match headers.get(header::IF_MATCH) {
            None => Ok(None),
            Some(_) => Err(invalid("If-Match", "give one If-Match header")),
        };
    };
    let s = v.to_str().unwrap_or("").trim();
    if s == "*" {
        return Ok(None);
    }
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse::<i32>().ok())
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "If-Match",
                "If-Match is one entity tag as ETag gives it (\"<_version>\"), or *",
            )
        })
}

/// A `udm_query` page, its records left as text.
#[derive(serde::Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    rows: Option<&'a serde_json::value::RawValue>,
    next_cursor: Option<String>,
    #[serde(borrow)]
    count: Option<&'a serde_json::value::RawValue>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    let pairs = query(&uri)?;
    let spec = list::spec(&pairs)?;
    let (who, _slot) = app.keys.admit(&headers, &app.per_token)?;
    let raw =
        crate::db::read_in_tenant(&app, &who, QUERY, &[&entity, &spec], problem::from_db).await?;
    // the page's records go to the client as the database wrote them: only the object around
    // them is read (its values stay unparsed text)
    let page: Page = serde_json::from_slice(&raw.0).map_err(|e| {
        tracing::error!(error = %e, "udm_query's page does not parse");
        ApiError::internal()
    })?;
    let mut body = String::with_capacity(raw.0.len() + 32);
    body.push_str("{\"records\": ");
    body.push_str(page.rows.map_or("[]", |r| r.get()));
    if let Some(c) = &page.next_cursor {
        body.push_str(", \"next_cursor\": ");
        body.push_str(&Value::String(c.clone()).to_string());
    }
    if let Some(c) = page.count.filter(|c| c.get() != "null") {
        body.push_str(", \"count\": ");
        body.push_str(c.get());
    }
    body.push('}');
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(c) = page.next_cursor {
        let link = format!("<{}>; rel=\"next\"", list::next_url(uri.path(), &pairs, &c));
        if let Ok(h) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(header::LINK, h);
        }
    }
    Ok(r)
}

pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
    uri: Uri,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let pairs = query(&uri)?;
    only(&pairs, &["on_conflict"])?;
    let data = body(&headers, raw)?;
    if let Some((_, key)) = pairs.first() {
        let key = list::names("on_conflict", key)?;
        let rows = match data {
            Value::Array(_) => data,
            Value::Object(_) => Value::Array(vec![data]),
            _ => {
                return Err(invalid(
                    "body",
                    "the body is a record or an array of records",
                ))
            }
        };
        let out = one(
            &app,
            &headers,
            Mode::Write,
            UPSERT_MANY,
            &[&entity, &rows, &key],
        )
        .await?;
        return Ok(json(StatusCode::OK, &out));
    }
    match data {
        Value::Array(_) => {
            let out = one(&app, &headers, Mode::Write, INSERT_MANY, &[&entity, &data]).await?;
            Ok(json(StatusCode::CREATED, &out))
        }
        Value::Object(_) => {
            let rec = one(&app, &headers, Mode::Write, INSERT, &[&entity, &data]).await?;
            let mut r = with_etag(json(StatusCode::CREATED, &rec), &rec);
            if let Some(id) = rec.get("id").and_then(Value::as_str) {
                let loc = format!(
                    "/api/records/{}/{}",
                    list::encode(&entity),
                    list::encode(id)
                );
                if let Ok(h) = HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(header::LOCATION, h);
                }
            }
            Ok(r)
        }
        _ => Err(invalid(
            "body",
            "the body is a record or an array of records",
        )),
    }
}

pub async fn get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = record_id(&id)?;
    let pairs = query(&uri)?;
    only(&pairs, &["select"])?;
    let columns = match pairs.first() {
        Some((_, v)) => Some(list::names("select", v)?),
        None => None,
    };
    let rec = one(&app, &headers, Mode::Read, GET, &[&entity, &id, &columns]).await?;
    if rec.is_null() {
        return Err(not_found(&entity, id));
    }
    Ok(with_etag(json(StatusCode::OK, &rec), &rec))
}

async fn update(
    app: &App,
    headers: &HeaderMap,
    entity: &str,
    id: &str,
    raw: Result<Bytes, BytesRejection>,
    replace: bool,
) -> Result<Response, ApiError> {
    let id = record_id(id)?;
    let expected = if_match(headers)?;
    let patch = body(headers, raw)?;
    if !patch.is_object() {
        return Err(invalid("body", "the body is an object of fields"));
    }
    let sql = if replace { REPLACE } else { UPDATE };
    let rec = one(
        app,
        headers,
        Mode::Write,
        sql,
        &[&entity, &id, &patch, &expected],
    )
    .await?;
    Ok(with_etag(json(StatusCode::OK, &rec), &rec))
}

pub async fn put(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    update(&app, &headers, &entity, &id, raw, true).await
}

pub async fn patch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    update(&app, &headers, &entity, &id, raw, false).await
}

fn stale(entity: &str, id: &str, want: i32, have: &Value) -> ApiError {
    let mut e = problem::make(
        StatusCode::PRECONDITION_FAILED,
        "40001",
        format!("{entity} {id} was changed by someone else: you expected version {want}, it is at version {have}"),
    );
    if let Some(d) = e.db.as_mut() {
        d.entity = Some(entity.to_string());
        d.hint = Some("read the record again and apply your change to the current version".into());
    }
    e
}

pub async fn delete(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = record_id(&id)?;
    let Some(want) = if_match(&headers)? else {
        one(&app, &headers, Mode::Write, DELETE, &[&entity, &id]).await?;
        return Ok(no_content());
    };
    // the version check and the delete in one snapshot: a change committed in between makes
    // the delete a serialization failure, answered as the stale version it is
    let s = session(&app, &headers, Mode::Snapshot).await?;
    let r = async {
        let v = s.tx.json(VERSION, &[&entity, &id]).await?;
        if v.is_null() {
            return Err(not_found(&entity, id));
        }
        let have = &v["_version"];
        if have.as_i64() != Some(i64::from(want)) {
            return Err(stale(&entity, id, want, have));
        }
        s.tx.json(DELETE, &[&entity, &id]).await.map_err(|e| {
            match e.db.as_ref().map(|d| d.sqlstate.as_str()) {
                Some("40001") => stale(&entity, id, want, &json!("a newer one")),
                _ => e,
            }
        })
    }
    .await;
    s.tx.finish(r).await?;
    Ok(no_content())
}

fn spec_body(headers: &HeaderMap, raw: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let spec = body(headers, raw)?;
    if !spec.is_object() {
        return Err(invalid("body", "the body is a spec object"));
    }
    Ok(spec)
}

pub async fn view(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, kind)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !matches!(
        kind.as_str(),
        "table" | "kanban" | "tree" | "gantt" | "dropdown" | "breadcrumb"
    ) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no view \"{kind}\": table, kanban, tree, gantt, dropdown or breadcrumb"),
        ));
    }
    let spec = spec_body(&headers, raw)?;
    let out = if kind == "table" {
        one(&app, &headers, Mode::Read, QUERY, &[&entity, &spec]).await?
    } else {
        one(&app, &headers, Mode::Read, VIEW, &[&entity, &kind, &spec]).await?
    };
    Ok(json(StatusCode::OK, &out))
}

pub async fn aggregate(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(entity): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec = spec_body(&headers, raw)?;
    let out = one(&app, &headers, Mode::Read, AGGREGATE, &[&entity, &spec]).await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = record_id(&id)?;
    let out = one(&app, &headers, Mode::Read, HISTORY, &[&entity, &id]).await?;
    if out.as_array().is_some_and(Vec::is_empty) {
        return Err(not_found(&entity, id));
    }
    Ok(json(StatusCode::OK, &out))
}

pub async fn at(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = record_id(&id)?;
    let pairs = query(&uri)?;
    only(&pairs, &["time"])?;
    let Some((_, time)) = pairs.first() else {
        return Err(invalid("time", "give the time: ?time=<RFC 3339 timestamp>"));
    };
    let rec = one(&app, &headers, Mode::Read, AT, &[&entity, &id, time]).await?;
    if rec.is_null() {
        return Err(problem::make(
            StatusCode::NOT_FOUND,
            "P0002",
            format!("{entity} {id} did not exist at {time} (or it is hidden from you)"),
        ));
    }
    Ok(with_etag(json(StatusCode::OK, &rec), &rec))
}

pub async fn rollback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = record_id(&id)?;
    let b = body(&headers, raw)?;
    let version = b
        .get("version")
        .and_then(Value::as_i64)
        .and_then(|v| i32::try_from(v).ok())
        .ok_or_else(|| {
            invalid(
                "version",
                "the body is {\"version\": <n>, \"fields\"?: [...]}",
            )
        })?;
    let fields: Option<Vec<String>> = match b.get("fields") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|f| f.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("fields", "\"fields\" is a list of field names"))?,
        ),
        Some(_) => return Err(invalid("fields", "\"fields\" is a list of field names")),
    };
    let out = one(
        &app,
        &headers,
        Mode::Write,
        ROLLBACK,
        &[&entity, &id, &version, &fields],
    )
    .await?;
    Ok(json(StatusCode::OK, &out))
}

async fn lock_call(
    app: &App,
    headers: &HeaderMap,
    entity: &str,
    id: &str,
    mode: Mode,
    sql: &str,
) -> Result<Value, ApiError> {
    let id = record_id(id)?;
    one(app, headers, mode, sql, &[&entity, &id]).await
}

pub async fn lock_status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let out = lock_call(&app, &headers, &entity, &id, Mode::Read, LOCK_STATUS).await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn lock_acquire(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let out = lock_call(&app, &headers, &entity, &id, Mode::Write, LOCK_ACQUIRE).await?;
    if out["acquired"] == json!(false) {
        let holder = out["holder"].as_str().unwrap_or("someone else");
        let until = out["expires_at"].as_str().unwrap_or("it expires");
        let mut e = problem::make(
            StatusCode::LOCKED,
            "55P03",
            format!("{entity} {id} is locked by {holder} until {until}"),
        );
        if let Some(d) = e.db.as_mut() {
            d.entity = Some(entity.clone());
            d.hint = Some("try again when the holder releases it or stops renewing it".into());
        }
        return Err(e);
    }
    Ok(json(StatusCode::OK, &out))
}

pub async fn lock_heartbeat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let out = lock_call(&app, &headers, &entity, &id, Mode::Write, LOCK_HEARTBEAT).await?;
    Ok(json(StatusCode::OK, &out))
}

pub async fn lock_release(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    lock_call(&app, &headers, &entity, &id, Mode::Write, LOCK_RELEASE).await?;
    Ok(no_content())
}
