//! Errors of the REST bridge as RFC 9457 problem details (`application/problem+json`): udm's
//! SQLSTATE decides the status (the table below, documented in README.md "REST bridge"), and the
//! problem carries the message, the SQLSTATE, the entity, field and rule the error names, and its
//! hint. Internal errors keep nothing but the request id (the log has the rest).

use crate::error::{ApiError, DbDetail};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;

/// The HTTP status of a SQLSTATE udm raises on purpose; None: an internal error (500, hidden).
pub fn status_for(sqlstate: &str) -> Option<StatusCode> {
    let s = match sqlstate {
        // a stale expected version (udm_update) is 40001 with "expected version" in its detail:
        // `from_db` makes that 412; other serialization failures are conflicts
        "40001" => StatusCode::CONFLICT,
        "23505" | "23503" => StatusCode::CONFLICT,
        "23514" => StatusCode::UNPROCESSABLE_ENTITY,
        "23502" => StatusCode::BAD_REQUEST,
        "42601" | "42703" | "42602" | "42804" | "54000" => StatusCode::BAD_REQUEST,
        "42P01" | "42704" | "02000" | "P0002" => StatusCode::NOT_FOUND,
        "42501" => StatusCode::FORBIDDEN,
        "55P03" => StatusCode::LOCKED,
        "57014" => StatusCode::GATEWAY_TIMEOUT,
        "0A000" => StatusCode::NOT_IMPLEMENTED,
        // exists already, still in use, not in the state the change needs
        "55000" | "42P07" | "42701" | "42710" | "42P06" | "2BP01" => StatusCode::CONFLICT,
        s if s.starts_with("22") => StatusCode::BAD_REQUEST,
        _ => return None,
    };
    Some(s)
}

/// A short summary of a problem type (RFC 9457 `title`).
fn title(sqlstate: Option<&str>, status: StatusCode) -> String {
    let t = match sqlstate {
        Some("23505") => "Unique value taken",
        Some("23503") => "Related record missing or still referenced",
        Some("23514") => "Rule violated",
        Some("23502") => "Required value missing",
        Some("40001") if status == StatusCode::PRECONDITION_FAILED => "Version mismatch",
        Some("40001") => "Concurrent change",
        Some("42P01") => "No such entity",
        Some("42703") => "No such field",
        Some("P0002") | Some("02000") => "Not found",
        Some("42501") => "Permission denied",
        Some("55P03") => "Locked",
        Some("54000") => "Limit exceeded",
        Some(s) if s.starts_with("22") => "Invalid input",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    t.to_string()
}

/// The first `<word> "<value>"` in `text` (udm names entities, fields and rules this way).
fn quoted_after(text: &str, word: &str) -> Option<String> {
    let pat = format!("{word} \"");
    let mut from = 0;
    while let Some(i) = text[from..].find(&pat) {
        let at = from + i;
        // a whole word: not the end of another one ("subfield \"x\"")
        let whole = at == 0 || !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        let start = at + pat.len();
        if whole {
            if let Some(end) = text[start..].find('"') {
                return Some(text[start..start + end].to_string());
            }
            return None;
        }
        from = start;
    }
    None
}

fn is_slug(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What an error names: `rows[N]: ` (a batch's row), `entity "x"`, `field "y"`, `rule "z"`, and
/// messages that begin `<entity>.<field>` (`product.price: expected a number`,
/// `category.name must be unique`).
pub fn names(message: &str, detail: Option<&str>) -> DbDetail {
    let mut d = DbDetail::default();
    let mut msg = message;
    if let Some(rest) = msg.strip_prefix("rows[") {
        if let Some((n, after)) = rest.split_once("]: ") {
            if let Ok(n) = n.parse() {
                d.row = Some(n);
                msg = after;
            }
        }
    }
    let both = format!("{msg}\n{}", detail.unwrap_or(""));
    d.entity = quoted_after(&both, "entity");
    d.field = quoted_after(&both, "field");
    d.rule = quoted_after(&both, "rule");
    if d.field.is_none() {
        // a query's path (`path "category_id.nme": ...`)
        d.field = quoted_after(msg, "path");
    }
    let head = msg
        .split([' ', ':'])
        .next()
        .unwrap_or("")
        .split_once('.')
        .filter(|(e, f)| is_slug(e) && is_slug(f));
    if let Some((e, f)) = head {
        d.entity.get_or_insert_with(|| e.to_string());
        d.field.get_or_insert_with(|| f.to_string());
    }
    d
}

/// A database error as the REST caller sees it: udm's refusals with their status, message and
/// names; anything else as `db::failure` makes it (timeout 504, no database 503, else a hidden
/// 500).
pub fn from_db(e: tokio_postgres::Error) -> ApiError {
    let Some(db) = e.as_db_error() else {
        return crate::db::failure("statement", e);
    };
    let code = db.code().code();
    let Some(mut status) = status_for(code) else {
        return crate::db::failure("statement", e);
    };
    if *db.code() == SqlState::QUERY_CANCELED {
        return crate::db::failure("statement", e);
    }
    if code == "40001" && db.detail().is_some_and(|d| d.contains("expected version")) {
        status = StatusCode::PRECONDITION_FAILED;
    }
    let mut d = names(db.message(), db.detail());
    d.sqlstate = code.to_string();
    d.detail = db.detail().map(str::to_string);
    d.hint = db.hint().map(str::to_string);
    if d.field.is_none() {
        d.field = db.column().map(str::to_string);
    }
    if d.rule.is_none() {
        d.rule = db.constraint().map(str::to_string);
    }
    tracing::info!(sqlstate = code, status = status.as_u16(), "udm refused");
    ApiError::new(status, "DATABASE_ERROR", db.message()).with_db(d)
}

/// A problem the bridge makes itself with a SQLSTATE of udm's (a record that is not there).
pub fn make(status: StatusCode, sqlstate: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, "DATABASE_ERROR", message).with_db(DbDetail {
        sqlstate: sqlstate.into(),
        ..Default::default()
    })
}

/// The problem+json body of an error.
pub fn body(e: &ApiError, instance: &str) -> Value {
    let mut o = Map::new();
    let sqlstate = e.db.as_ref().map(|d| d.sqlstate.as_str());
    o.insert(
        "type".into(),
        match sqlstate {
            Some(s) => format!("https://udm.dev/problems/{s}").into(),
            None => "about:blank".into(),
        },
    );
    o.insert("title".into(), title(sqlstate, e.status).into());
    o.insert("status".into(), e.status.as_u16().into());
    o.insert("detail".into(), e.message.clone().into());
    o.insert("code".into(), e.code.into());
    if let Some(d) = &e.db {
        o.insert("sqlstate".into(), d.sqlstate.clone().into());
        for (k, v) in [
            ("entity", &d.entity),
            ("field", &d.field),
            ("rule", &d.rule),
            ("hint", &d.hint),
            ("db_detail", &d.detail),
        ] {
            if let Some(v) = v {
                o.insert(k.into(), v.clone().into());
            }
        }
        if let Some(r) = d.row {
            o.insert("row".into(), r.into());
        }
    }
    o.insert("instance".into(), instance.into());
    Value::Object(o)
}

/// The response of an error: problem+json, with the headers its status calls for.
pub fn response(e: &ApiError, instance: &str) -> Response {
    let mut r = (e.status, body(e, instance).to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    match e.status {
        StatusCode::UNAUTHORIZED => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::TOO_MANY_REQUESTS => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_statuses() {
        for (code, status) in [
            ("22P02", 400),
            ("22023", 400),
            ("23502", 400),
            ("42601", 400),
            ("42703", 400),
            ("23505", 409),
            ("23503", 409),
            ("23514", 422),
            ("42P01", 404),
            ("42704", 404),
            ("P0002", 404),
            ("02000", 404),
            ("42501", 403),
            ("40001", 409),
            ("55P03", 423),
            ("54000", 400),
            ("57014", 504),
            ("0A000", 501),
            ("55000", 409),
        ] {
            assert_eq!(status_for(code).map(|s| s.as_u16()), Some(status), "{code}");
        }
        for internal in ["XX000", "42883", "58030", "25006", "08006"] {
            assert_eq!(status_for(internal), None, "{internal}");
        }
    }

    #[test]
    fn names_are_read_from_message_and_detail() {
        let d = names(
            "expensive things need long names",
            Some("entity \"product\" of tenant \"t\", rule \"cheap_names\": price < 1000"),
        );
        assert_eq!(d.entity.as_deref(), Some("product"));
        assert_eq!(d.rule.as_deref(), Some("cheap_names"));
        assert_eq!(d.field, None);
        let d = names("rows[1]: product.price: expected a number, got \"x\"", None);
        assert_eq!(
            (d.row, d.entity.as_deref(), d.field.as_deref()),
            (Some(1), Some("product"), Some("price"))
        );
        let d = names(
            "category.name must be unique; the value is already taken",
            None,
        );
        assert_eq!(
            (d.entity.as_deref(), d.field.as_deref()),
            (Some("category"), Some("name"))
        );
        let d = names("entity \"product\" has no field \"nope\"", None);
        assert_eq!(
            (d.entity.as_deref(), d.field.as_deref()),
            (Some("product"), Some("nope"))
        );
        // a word ending in one of the names is not it; a version number is not a field
        let d = names("subentity \"x\" at 1.5", None);
        assert_eq!((d.entity, d.field), (None, None));
    }

    #[test]
    fn the_body_is_rfc_9457() {
        let e = make(StatusCode::NOT_FOUND, "P0002", "no record").with_db(DbDetail {
            sqlstate: "P0002".into(),
            entity: Some("product".into()),
            ..Default::default()
        });
        let b = body(&e, "/api/records/product/x");
        assert_eq!(b["type"], "https://udm.dev/problems/P0002");
        assert_eq!(b["status"], 404);
        assert_eq!(b["title"], "Not found");
        assert_eq!(b["entity"], "product");
        assert_eq!(b["instance"], "/api/records/product/x");
        assert!(b.get("field").is_none());
        let b = body(&ApiError::internal(), "/api/x");
        assert_eq!(b["type"], "about:blank");
        assert!(b.get("sqlstate").is_none());
    }
}
