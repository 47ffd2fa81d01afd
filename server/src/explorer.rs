//! The in-browser GraphQL explorer: one self-contained page (`explorer.html`, compiled into the
//! binary; no CDN, nothing fetched but `/graphql` itself), served for `GET /graphql` when the
//! request's `Accept` prefers `text/html` and it carries no `query` parameter. Its inline script
//! and style are allowed by their SHA-256 in the Content-Security-Policy, and nothing else is.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const PAGE: &str = include_str!("explorer.html");

/// The text between the first `<tag>` and the `</tag>` after it (what a CSP hash covers).
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = PAGE
        .find(&open)
        .expect("the explorer has an inline element")
        + open.len();
    let len = PAGE[start..].find(&close).expect("the element is closed");
    &PAGE[start..start + len]
}

fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The page's policy: its own script and style (by hash), requests to its own origin (fetch
/// and WebSocket), nothing else — no other script, frame, form target, plugin or base URL.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(inline("script")),
        hash(inline("style"))
    );
    HeaderValue::from_str(&policy).expect("a header value")
});

/// Whether a GET should get the explorer: `text/html` (or `application/xhtml+xml`) acceptable
/// and of no lower quality than every GraphQL media type the request accepts (`*/*` included),
/// as a browser's navigation asks; `curl` (`*/*`) and GraphQL clients get GraphQL.
pub fn wanted(headers: &HeaderMap) -> bool {
    let Some(ranges) = crate::http::accept_ranges(headers) else {
        return false;
    };
    let (mut html, mut graphql) = (0u32, 0u32);
    for (range, q) in ranges {
        match range.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/graphql-response+json" | "application/json" | "application/*" | "*/*" => {
                graphql = graphql.max(q)
            }
            _ => {}
        }
    }
    html > 0 && html >= graphql
}

/// The page, with headers that keep it to itself.
pub fn page() -> Response {
    let mut r = (StatusCode::OK, PAGE).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn browsers_get_the_page_and_graphql_clients_do_not() {
        for yes in [
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "text/html",
            "application/xhtml+xml, application/json;q=0.5",
            "text/html, application/json",
        ] {
            assert!(wanted(&accept(yes)), "{yes}");
        }
        for no in [
            "*/*",
            "application/json",
            "application/graphql-response+json",
            "text/html;q=0.5, application/json",
            "text/html;q=0",
            "text/plain",
        ] {
            assert!(!wanted(&accept(no)), "{no}");
        }
        assert!(!wanted(&HeaderMap::new()));
    }

    #[test]
    fn the_page_is_self_contained_and_its_policy_names_its_own_script_and_style() {
        // one inline script and style, nothing loaded from anywhere
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        for external in ["src=", "href=", "http://", "https://", "@import", "url("] {
            assert!(!PAGE.contains(external), "{external}");
        }
        let csp = CSP.to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(
            hash("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
    }
}
