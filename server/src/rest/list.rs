//! The list grammar of `GET /api/records/{entity}`: a query string a person can type, turned
//! into a `udm_query` spec. Pure: no database, no knowledge of the entity (udm checks every path,
//! operator and value and names what is wrong).
//!
//! * `select=name,price,category_id.name`: columns, dot paths through relations and JSON
//! * `<path>=<op>.<value>` with op eq, neq, gt, gte, lt, lte, like, ilike, in (`in.a,b,c`), is
//!   (`is.null`, `is.notnull`); a bare `<path>=<value>` is eq. Several filters all apply.
//! * `sort=-price,name` (`-`: descending), `limit=` 1..1000 (100), `cursor=` (from the previous
//!   page), `count=exact|estimated`
//! * values: `true`, `false` and JSON numbers are sent as such, anything else as text; double
//!   quotes make text of anything (`sku=eq."123"`, `in."a,b",c`)
//! * reserved names (select, sort, limit, cursor, count, on_conflict): a field with such a name
//!   is filtered as `filter.<name>=...`

use crate::error::ApiError;
use serde_json::{json, Map, Value};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;
const RESERVED: [&str; 6] = ["select", "sort", "limit", "cursor", "count", "on_conflict"];

fn bad(param: &str, message: String) -> ApiError {
    ApiError::bad_request(message).with_db(crate::error::DbDetail {
        sqlstate: "22023".into(),
        field: Some(param.to_string()),
        ..Default::default()
    })
}

/// A value as typed: a quoted string, `true`/`false`, a JSON number, else text.
pub fn value(s: &str) -> Value {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        return Value::String(s[1..s.len() - 1].to_string());
    }
    match s {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if s.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        if let Ok(n) = serde_json::from_str::<serde_json::Number>(s) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

/// A comma list whose items may be double-quoted (and then hold commas).
fn items(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A comma list of names (`select`, `sort`, `on_conflict`).
pub fn names(param: &str, s: &str) -> Result<Vec<String>, ApiError> {
    let v: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
    if v.iter().any(|p| p.is_empty() || p == "-") {
        return Err(bad(
            param,
            format!("\"{param}\" is a comma list of names without empty items"),
        ));
    }
    Ok(v)
}

/// One filter: `<op>.<value>`, or a bare value (eq).
pub fn filter(path: &str, raw: &str) -> Result<Value, ApiError> {
    let cond = match raw.split_once('.') {
        Some((op @ ("eq" | "neq" | "gt" | "gte" | "lt" | "lte" | "like" | "ilike"), v)) => {
            json!({ op: value(v) })
        }
        Some(("in", v)) => json!({ "in": items(v).into_iter().map(value).collect::<Vec<_>>() }),
        Some(("is", "null")) => json!({ "is_null": true }),
        Some(("is", "notnull")) => json!({ "is_null": false }),
        Some(("is", other)) => {
            return Err(bad(
                path,
                format!("filter \"{path}\": is.{other}: use is.null or is.notnull"),
            ))
        }
        _ => value(raw),
    };
    let mut o = Map::new();
    o.insert(path.to_string(), cond);
    Ok(Value::Object(o))
}

/// The `udm_query` spec of a list request's query string (decoded pairs, in order).
pub fn spec(pairs: &[(String, String)]) -> Result<Value, ApiError> {
    let mut spec = Map::new();
    let mut filters = Vec::new();
    let mut seen = Vec::new();
    for (k, v) in pairs {
        if RESERVED.contains(&k.as_str()) {
            if seen.contains(&k) {
                return Err(bad(k, format!("\"{k}\" is given twice")));
            }
            seen.push(k);
        }
        match k.as_str() {
            "select" => {
                spec.insert("columns".into(), json!(names(k, v)?));
            }
            "sort" => {
                spec.insert("sort".into(), json!(names(k, v)?));
            }
            "limit" => {
                let n = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(
                            k,
                            format!("\"limit\" is a whole number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
                spec.insert("limit".into(), n.into());
            }
            "cursor" => {
                spec.insert("cursor".into(), v.clone().into());
            }
            "count" => {
                if !matches!(v.as_str(), "exact" | "estimated") {
                    return Err(bad(k, "\"count\" is exact or estimated".into()));
                }
                spec.insert("count".into(), v.clone().into());
            }
            "on_conflict" => {
                return Err(bad(k, "\"on_conflict\" is for POST (upsert)".into()));
            }
            path => {
                let path = path.strip_prefix("filter.").unwrap_or(path);
                if path.is_empty() {
                    return Err(bad(k, format!("\"{k}\" names no field")));
                }
                filters.push(filter(path, v)?);
            }
        }
    }
    spec.entry("limit").or_insert(DEFAULT_LIMIT.into());
    match filters.len() {
        0 => {}
        1 => {
            spec.insert("filters".into(), filters.pop().unwrap_or_default());
        }
        _ => {
            spec.insert("filters".into(), json!({ "and": filters }));
        }
    }
    Ok(Value::Object(spec))
}

/// Percent-encoding of a query-string component (everything but RFC 3986's unreserved
/// characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of the next page: the same query with `cursor` replaced.
pub fn next_url(path: &str, pairs: &[(String, String)], cursor: &str) -> String {
    let mut q: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    q.push(format!("cursor={}", encode(cursor)));
    format!("{path}?{}", q.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec_of(q: &[(&str, &str)]) -> Value {
        spec(&pairs(q)).unwrap()
    }

    #[test]
    fn an_empty_query_is_the_first_page_of_100() {
        assert_eq!(spec_of(&[]), json!({"limit": 100}));
    }

    #[test]
    fn select_sort_limit_cursor_count() {
        assert_eq!(
            spec_of(&[
                ("select", "name, price,category_id.name"),
                ("sort", "-price,name"),
                ("limit", "20"),
                ("cursor", "abc"),
                ("count", "exact"),
            ]),
            json!({"columns": ["name", "price", "category_id.name"], "sort": ["-price", "name"],
                   "limit": 20, "cursor": "abc", "count": "exact"})
        );
    }

    #[test]
    fn operators_on_plain_relation_and_json_paths() {
        assert_eq!(
            spec_of(&[("price", "gt.10.5")]),
            json!({"limit": 100, "filters": {"price": {"gt": 10.5}}})
        );
        assert_eq!(
            spec_of(&[
                ("name", "Pixel"),
                ("category_id.name", "like.Ph%"),
                ("metadata.brand", "in.apple,google"),
                ("sku", "is.notnull"),
                ("note", "is.null"),
                ("status", "neq.draft"),
                ("price", "gte.0"),
                ("price", "lte.-1e3"),
                ("name", "ilike.p%"),
                ("stock", "lt.5"),
            ])["filters"],
            json!({"and": [
                {"name": "Pixel"},
                {"category_id.name": {"like": "Ph%"}},
                {"metadata.brand": {"in": ["apple", "google"]}},
                {"sku": {"is_null": false}},
                {"note": {"is_null": true}},
                {"status": {"neq": "draft"}},
                {"price": {"gte": 0}},
                {"price": {"lte": -1000.0}},
                {"name": {"ilike": "p%"}},
                {"stock": {"lt": 5}}]})
        );
    }

    #[test]
    fn values_are_numbers_booleans_or_text_and_quotes_make_text() {
        assert_eq!(value("12"), json!(12));
        assert_eq!(value("-0.5"), json!(-0.5));
        assert_eq!(value("true"), json!(true));
        assert_eq!(value("\"123\""), json!("123"));
        assert_eq!(value("\"true\""), json!("true"));
        // not JSON numbers: text
        for s in [
            "007",
            "1.",
            "+1",
            "0x10",
            "12abc",
            "2024-01-31",
            "null",
            "",
            "\"",
        ] {
            assert_eq!(value(s), json!(s), "{s}");
        }
        assert_eq!(
            spec_of(&[("tag", "in.\"a,b\",c,\"3\",3")])["filters"],
            json!({"tag": {"in": ["a,b", "c", "3", 3]}})
        );
        // a bare value holding a dot and no operator is an equality
        assert_eq!(
            spec_of(&[("host", "example.com")])["filters"],
            json!({"host": "example.com"})
        );
        assert_eq!(
            spec_of(&[("version", "eq.in.x")])["filters"],
            json!({"version": {"eq": "in.x"}})
        );
    }

    #[test]
    fn reserved_names_are_filtered_with_the_filter_prefix() {
        assert_eq!(
            spec_of(&[("filter.sort", "eq.3"), ("filter.limit", "x")])["filters"],
            json!({"and": [{"sort": {"eq": 3}}, {"limit": "x"}]})
        );
    }

    #[test]
    fn refusals_name_the_parameter() {
        for (q, param) in [
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "1001")], "limit"),
            (vec![("limit", "ten")], "limit"),
            (vec![("count", "all")], "count"),
            (vec![("select", "a,,b")], "select"),
            (vec![("sort", "-")], "sort"),
            (vec![("sort", "a"), ("sort", "b")], "sort"),
            (vec![("flag", "is.true")], "flag"),
            (vec![("filter.", "x")], "filter."),
            (vec![("on_conflict", "sku")], "on_conflict"),
        ] {
            let e = spec(&pairs(&q)).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{q:?}");
            assert_eq!(
                e.db.as_ref().and_then(|d| d.field.as_deref()),
                Some(param),
                "{q:?}"
            );
        }
    }

    #[test]
    fn the_next_page_keeps_the_query_and_replaces_the_cursor() {
        let p = pairs(&[("select", "name"), ("cursor", "old"), ("name", "like.a b%")]);
        assert_eq!(
            next_url("/api/records/product", &p, "eyJr+/="),
            "/api/records/product?select=name&name=like.a%20b%25&cursor=eyJr%2B%2F%3D"
        );
    }
}
