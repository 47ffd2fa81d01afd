//! The server's one error type. Its message is written for the caller and never carries
//! internals (SQL, driver or database messages, stack, configuration): those go to the log under
//! the request id the response carries in `x-request-id`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::Media;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// `extensions.code` of the error.
    pub code: &'static str,
    pub message: String,
    /// The media type of the body (the one the request negotiated, if it got that far).
    pub media: Media,
    /// What the database said, for an error udm raised on purpose (the REST bridge's
    /// problem+json shows it; never set for internal errors).
    pub db: Option<Box<DbDetail>>,
}

/// A udm error as the caller may see it: its SQLSTATE, detail and hint, and the entity, field,
/// rule and batch row it names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbDetail {
    pub sqlstate: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub entity: Option<String>,
    pub field: Option<String>,
    pub rule: Option<String>,
    pub row: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            media: Media::Json,
            db: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "the token's user may not use this tenant",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the database is not available; try again",
        )
    }

    /// The token holds as many connections as it may (`max_connections_per_token`).
    pub fn too_many_connections() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_CONNECTIONS",
            "this token has as many requests and WebSockets open as it may; try again when one ends",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            "internal error (see the server log under this response's x-request-id)",
        )
    }

    pub fn with_db(mut self, db: DbDetail) -> Self {
        self.db = Some(Box::new(db));
        self
    }

    pub fn with_media(mut self, media: Media) -> Self {
        self.media = media;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"errors": [{"message": self.message, "extensions": {"code": self.code}}]});
        let mut r = (self.status, body.to_string()).into_response();
        // the REST bridge answers the same error as problem+json (`rest::problem`)
        r.extensions_mut().insert(self.clone());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.media.content_type()),
        );
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                h.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        r
    }
}
