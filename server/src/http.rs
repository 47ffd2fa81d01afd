//! GraphQL over HTTP (graphql/graphql-over-http): POST with `application/json`, GET for queries
//! only, the response media type by `Accept`, and the specification's status codes. The server
//! only reads the document far enough to refuse a mutation over GET; the database parses,
//! validates and runs it (`udm_graphql`).

use crate::error::ApiError;
use crate::App;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The response media types of the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/graphql-response+json`: status codes tell request errors from results.
    GraphqlResponse,
    /// `application/json`: 200 for every GraphQL response.
    Json,
}

impl Media {
    pub fn content_type(self) -> &'static str {
        match self {
            Media::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
            Media::Json => "application/json; charset=utf-8",
        }
    }
}

/// The media ranges of the `Accept` headers, lower case, each with its quality in thousandths
/// (1000 when it gives none, 0 for a quality that does not parse); empty without the header;
/// None when a header is not text.
pub fn accept_ranges(headers: &HeaderMap) -> Option<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for v in headers.get_all(header::ACCEPT) {
        for item in v.to_str().ok()?.split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if range.is_empty() {
                continue;
            }
            let mut q = 1000u32;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = v
                            .trim()
                            .parse::<f32>()
                            .map(|f| (f.clamp(0.0, 1.0) * 1000.0) as u32)
                            .unwrap_or(0);
                    }
                }
            }
            out.push((range, q));
        }
    }
    Some(out)
}

/// The media type for an `Accept` header: the acceptable one of highest quality, the GraphQL
/// response type on a tie; `*/*` and `application/*` alone give `application/json`; no header
/// means `application/json` (the specification's advice for legacy clients). None: 406.
pub fn negotiate(headers: &HeaderMap) -> Option<Media> {
    let ranges = accept_ranges(headers)?;
    if ranges.is_empty() {
        return Some(Media::Json);
    }
    let mut best: Option<(u32, u8, Media)> = None; // (q in thousandths, preference, media)
    for (range, q) in ranges {
        let (pref, media) = match range.as_str() {
            "application/graphql-response+json" => (3, Media::GraphqlResponse),
            "application/json" => (2, Media::Json),
            "*/*" | "application/*" => (1, Media::Json),
            _ => continue,
        };
        if q == 0 {
            continue;
        }
        if best.is_none_or(|(bq, bp, _)| (q, pref) > (bq, bp)) {
            best = Some((q, pref, media));
        }
    }
    best.map(|(_, _, m)| m)
}

/// A GraphQL-over-HTTP request.
#[derive(Debug, Clone)]
pub struct GqlRequest {
    pub query: String,
    pub variables: Option<Value>,
    pub operation_name: Option<String>,
}

/// The kind of the operation a request selects, if the document parses and selects one (if not,
/// the database answers with the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Mutation,
    Subscription,
}

/// Documents whose kind was learnt lately, by (document, operation name): parsing a document
/// costs more than the rest of the server's work on a request. A memo of a pure function, bounded
/// in bytes and emptied when full.
struct Kinds {
    known: std::collections::HashMap<(String, Option<String>), Option<Kind>>,
    bytes: usize,
}

static KINDS: std::sync::Mutex<Option<Kinds>> = std::sync::Mutex::new(None);
const KINDS_BYTES: usize = 4 << 20;

pub fn operation_kind(doc: &str, operation_name: Option<&str>) -> Option<Kind> {
    let key = (doc.to_string(), operation_name.map(str::to_string));
    if let Some(k) = KINDS
        .lock()
        .ok()
        .and_then(|g| g.as_ref().and_then(|m| m.known.get(&key).copied()))
    {
        return k;
    }
    let kind = parse_kind(doc, operation_name);
    if let Ok(mut g) = KINDS.lock() {
        let m = g.get_or_insert_with(|| Kinds {
            known: Default::default(),
            bytes: 0,
        });
        let size = key.0.len() + key.1.as_ref().map_or(0, String::len) + 64;
        if m.bytes + size > KINDS_BYTES {
            m.known.clear();
            m.bytes = 0;
        }
        if size <= KINDS_BYTES && m.known.insert(key, kind).is_none() {
            m.bytes += size;
        }
    }
    kind
}

fn parse_kind(doc: &str, operation_name: Option<&str>) -> Option<Kind> {
    use apollo_parser::cst::Definition;
    let cst = apollo_parser::Parser::new(doc)
        .token_limit(200_000)
        .recursion_limit(200)
        .parse();
    if cst.errors().len() > 0 {
        return None;
    }
    let mut found = None;
    let mut count = 0;
    for d in cst.document().definitions() {
        let Definition::OperationDefinition(op) = d else {
            continue;
        };
        count += 1;
        let name = op.name().map(|n| n.text().to_string());
        let kind = match op.operation_type() {
            None => Kind::Query,
            Some(t) if t.mutation_token().is_some() => Kind::Mutation,
            Some(t) if t.subscription_token().is_some() => Kind::Subscription,
            Some(t) if t.query_token().is_some() => Kind::Query,
            // anything else: the database says what is wrong
            Some(_) => return None,
        };
        match operation_name {
            Some(n) if name.as_deref() == Some(n) => return Some(kind),
            Some(_) => {}
            None => found = Some(kind),
        }
    }
    if operation_name.is_none() && count == 1 {
        found
    } else {
        None
    }
}

pub fn request_from_object(o: &Map<String, Value>) -> Result<GqlRequest, ApiError> {
    let query = match o.get("query") {
        Some(Value::String(q)) => q.clone(),
        _ => return Err(ApiError::bad_request("\"query\" must be a string")),
    };
    let variables = match o.get("variables") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        _ => return Err(ApiError::bad_request("\"variables\" must be an object")),
    };
    let operation_name = match o.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        _ => return Err(ApiError::bad_request("\"operationName\" must be a string")),
    };
    match o.get("extensions") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        _ => return Err(ApiError::bad_request("\"extensions\" must be an object")),
    }
    // PostgreSQL's text and jsonb cannot hold U+0000: refused here, not by the database
    let nul = query.contains('\0')
        || operation_name.as_deref().is_some_and(|n| n.contains('\0'))
        || variables.as_ref().is_some_and(has_nul);
    if nul {
        return Err(ApiError::bad_request(
            "the request holds the character U+0000, which no GraphQL value here may hold",
        ));
    }
    Ok(GqlRequest {
        query,
        variables,
        operation_name,
    })
}

/// Whether a JSON value holds U+0000 in a string or a key (iteratively: any depth).
fn has_nul(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => {
                if o.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(o.values());
            }
            _ => {}
        }
    }
    false
}

fn parse_post(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<GqlRequest, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the request body must be application/json",
        ));
    }
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is larger than this server accepts",
            )
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("the request body is not valid JSON"))?;
    match &v {
        Value::Object(o) => request_from_object(o),
        _ => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
    }
}

fn parse_get(uri: &Uri) -> Result<GqlRequest, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|_| ApiError::bad_request("the query string could not be read"))?;
    let mut o = Map::new();
    for (k, v) in pairs {
        let value = match k.as_str() {
            "query" | "operationName" => Value::String(v),
            "variables" | "extensions" => serde_json::from_str(&v)
                .map_err(|_| ApiError::bad_request(format!("\"{k}\" must be JSON-encoded")))?,
            _ => continue,
        };
        if o.insert(k.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!("\"{k}\" is given twice")));
        }
    }
    request_from_object(&o)
}

pub async fn get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Ok(ws) = ws {
        // graphql-transport-ws; a client that does not ask for it is closed with 4406
        let ws = ws
            .protocols([crate::ws::PROTOCOL])
            .max_message_size(app.config.max_body_bytes);
        let ok = ws.selected_protocol().is_some();
        return ws.on_upgrade(move |socket| crate::ws::session(app, socket, ok));
    }
    // a browser opening /graphql: the explorer (a GraphQL GET always carries `query`)
    if !has_query(&uri) && crate::explorer::wanted(&headers) {
        return crate::explorer::page();
    }
    let Some(media) = negotiate(&headers) else {
        return not_acceptable();
    };
    let mut r = respond(&app, &headers, Method::GET, parse_get(&uri), media).await;
    // the same URL answers HTML or GraphQL by Accept
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// Whether the query string has a `query` parameter.
fn has_query(uri: &Uri) -> bool {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(pairs)| pairs.iter().any(|(k, _)| k == "query"))
        .unwrap_or(true)
}

pub async fn post(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(media) = negotiate(&headers) else {
        return not_acceptable();
    };
    respond(
        &app,
        &headers,
        Method::POST,
        parse_post(&headers, body),
        media,
    )
    .await
}

fn not_acceptable() -> Response {
    ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "NOT_ACCEPTABLE",
        "this server answers application/graphql-response+json or application/json",
    )
    .into_response()
}

/// The operation type of a GraphQL request, on its response for the metrics (`main.rs`).
#[derive(Clone, Copy)]
pub struct Operation(pub &'static str);

async fn respond(
    app: &App,
    headers: &HeaderMap,
    method: Method,
    req: Result<GqlRequest, ApiError>,
    media: Media,
) -> Response {
    let mut op = "none";
    let mut r = match run(app, headers, method, req, &mut op).await {
        Ok(body) => result(body, media),
        Err(e) => e.with_media(media).into_response(),
    };
    r.extensions_mut().insert(Operation(op));
    r
}

async fn run(
    app: &App,
    headers: &HeaderMap,
    method: Method,
    req: Result<GqlRequest, ApiError>,
    op: &mut &'static str,
) -> Result<crate::db::RawJson, ApiError> {
    let req = req?;
    let kind = operation_kind(&req.query, req.operation_name.as_deref());
    *op = crate::metrics::operation_label(kind);
    tracing::Span::current().record("op", *op);
    if method == Method::GET && kind == Some(Kind::Mutation) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "mutations are not allowed over GET; use POST",
        ));
    }
    if kind == Some(Kind::Subscription) {
        return Err(ApiError::bad_request(
            "subscriptions are not served over HTTP by this server",
        ));
    }
    let (who, _slot) = app.keys.admit(headers, &app.per_token)?;
    // a GET runs read-only whatever the document says
    crate::db::graphql(app, &who, &req, method == Method::GET).await
}

/// The HTTP response of a GraphQL response. A response with `data` and no `errors` (the usual
/// one) goes out as the database wrote it; any other is read first.
fn result(body: crate::db::RawJson, media: Media) -> Response {
    let b = &body.0;
    if b.starts_with(b"{\"data\": ") && memchr::memmem::find(b, b"\"errors\"").is_none() {
        let mut r = (StatusCode::OK, body.0).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(media.content_type()),
        );
        return r;
    }
    match body.parse() {
        Ok(v) => result_value(v, media),
        Err(e) => e.with_media(media).into_response(),
    }
}

/// The HTTP response of a GraphQL response read as JSON. With `application/graphql-response+json`, a response
/// without `data` (the request failed before execution: parse, validation, variables) is 400
/// (500 when udm reports an internal error); with `application/json` every GraphQL response is
/// 200. Internal errors lose their message (it is logged).
fn result_value(mut body: Value, media: Media) -> Response {
    let mut internal = false;
    if let Some(errors) = body.get_mut("errors").and_then(Value::as_array_mut) {
        for e in errors {
            if e["extensions"]["code"] == "INTERNAL_SERVER_ERROR" {
                tracing::error!(error = %e, "udm reported an internal error");
                internal = true;
                let mut kept = Map::new();
                kept.insert("message".into(), Value::from(ApiError::internal().message));
                if let Some(p) = e.get("path") {
                    kept.insert("path".into(), p.clone());
                }
                kept.insert(
                    "extensions".into(),
                    serde_json::json!({"code": "INTERNAL_SERVER_ERROR"}),
                );
                *e = Value::Object(kept);
            }
        }
    }
    let status = match media {
        Media::Json => StatusCode::OK,
        Media::GraphqlResponse if body.get("data").is_some() => StatusCode::OK,
        Media::GraphqlResponse if internal => StatusCode::INTERNAL_SERVER_ERROR,
        Media::GraphqlResponse => StatusCode::BAD_REQUEST,
    };
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.content_type()),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::RawJson;

    fn body(r: Response) -> (StatusCode, String, String) {
        let status = r.status();
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(r.into_body(), usize::MAX))
            .unwrap();
        (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn a_response_with_data_and_no_errors_goes_out_as_written() {
        // as jsonb prints it; a string value may hold the word errors without being read
        let text = r#"{"data": {"a": [1, 2], "b": "\"errors\" is only a word"}}"#;
        let text2 = r#"{"data": {"a": "x"}}"#;
        for media in [Media::Json, Media::GraphqlResponse] {
            let (status, ct, out) = body(result(RawJson(text2.into()), media));
            assert_eq!((status, out.as_str()), (StatusCode::OK, text2));
            assert_eq!(ct, media.content_type());
            // read, not passed through, but the same answer
            let (status, _, out) = body(result(RawJson(text.into()), media));
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                serde_json::from_str::<Value>(&out).unwrap(),
                serde_json::from_str::<Value>(text).unwrap()
            );
        }
    }

    #[test]
    fn a_response_with_errors_is_read_and_internal_messages_are_hidden() {
        let text = r#"{"data": {"a": null}, "errors": [{"message": "secret detail", "path": ["a"], "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}"#;
        let (status, _, out) = body(result(RawJson(text.into()), Media::GraphqlResponse));
        assert_eq!(status, StatusCode::OK);
        assert!(!out.contains("secret detail"), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["errors"][0]["path"], serde_json::json!(["a"]));
        // no data: a request error (400), or 500 for an internal one
        let (status, _, _) = body(result(
            RawJson(r#"{"errors": [{"message": "Syntax Error"}]}"#.into()),
            Media::GraphqlResponse,
        ));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = body(result(
            RawJson(r#"{"errors": [{"message": "x"}]}"#.into()),
            Media::Json,
        ));
        assert_eq!(status, StatusCode::OK);
        // what is read must parse (jsonb always does; anything else is the server's failure)
        let (status, _, out) = body(result(RawJson(b"{\"errors\": [".to_vec()), Media::Json));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    }

    #[test]
    fn the_memo_of_operation_kinds_stays_within_its_bytes() {
        // 45 documents of 100 KB: more than the memo holds (4 MB)
        let pad = "a ".repeat(50_000);
        for i in 0..45 {
            let doc = format!("query Q{i} {{ {pad} }}");
            assert_eq!(operation_kind(&doc, None), Some(Kind::Query));
            let bytes = KINDS.lock().unwrap().as_ref().map_or(0, |m| m.bytes);
            assert!(bytes <= KINDS_BYTES, "{bytes} bytes after {i} documents");
        }
        let kinds = KINDS.lock().unwrap();
        let m = kinds.as_ref().unwrap();
        assert!(m.known.len() < 45, "nothing was let go");
        assert_eq!(
            m.bytes,
            m.known
                .keys()
                .map(|(d, n)| d.len() + n.as_ref().map_or(0, String::len) + 64)
                .sum::<usize>()
        );
    }

    #[test]
    fn operation_kinds_are_remembered_per_document_and_name() {
        let doc = "query A { a } mutation B { b }";
        for _ in 0..2 {
            assert_eq!(operation_kind(doc, Some("A")), Some(Kind::Query));
            assert_eq!(operation_kind(doc, Some("B")), Some(Kind::Mutation));
            assert_eq!(operation_kind(doc, None), None);
            assert_eq!(
                operation_kind("subscription { s }", None),
                Some(Kind::Subscription)
            );
            assert_eq!(operation_kind("{ a ", None), None);
        }
    }
}
