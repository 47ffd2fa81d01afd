//! JSON values to typed SQL parameters. A value is checked in Rust against the type it must take
//! and handed to PostgreSQL as text with an explicit cast (`$3::numeric`), so errors name the
//! entity, field and expected type instead of surfacing as a bare cast failure.

use crate::definition::FieldDef;
use crate::error::{Result, SqlState, UdmError};
use crate::ident::printable;
use crate::json::kind;
use crate::types::FieldType;
use serde_json::Value;

/// The SQL type a parameter is cast to, and how its JSON value is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PType {
    Text,
    Numeric,
    Integer,
    BigInt,
    SmallInt,
    Float,
    Boolean,
    Date,
    Timestamp,
    Time,
    Interval,
    Uuid,
    Jsonb,
    /// `udm.ref` written as `(entity,id)`.
    Ref,
    Array(Box<PType>),
}

impl PType {
    pub fn sql(&self) -> String {
        match self {
            PType::Text => "text".into(),
            PType::Numeric => "numeric".into(),
            PType::Integer => "integer".into(),
            PType::BigInt => "bigint".into(),
            PType::SmallInt => "smallint".into(),
            PType::Float => "double precision".into(),
            PType::Boolean => "boolean".into(),
            PType::Date => "date".into(),
            PType::Timestamp => "timestamp with time zone".into(),
            PType::Time => "time without time zone".into(),
            PType::Interval => "interval".into(),
            PType::Uuid => "uuid".into(),
            PType::Jsonb => "jsonb".into(),
            PType::Ref => "udm.ref".into(),
            PType::Array(inner) => format!("{}[]", inner.sql()),
        }
    }

    pub fn of_field(t: &FieldType) -> PType {
        match t {
            FieldType::Integer => PType::Integer,
            FieldType::BigInt | FieldType::AutoNumber => PType::BigInt,
            FieldType::Rating => PType::SmallInt,
            FieldType::Decimal | FieldType::Currency | FieldType::Percent => PType::Numeric,
            FieldType::Float => PType::Float,
            FieldType::Boolean => PType::Boolean,
            FieldType::Date => PType::Date,
            FieldType::DateTime => PType::Timestamp,
            FieldType::Time => PType::Time,
            FieldType::Duration => PType::Interval,
            FieldType::Uuid | FieldType::Relation | FieldType::User => PType::Uuid,
            FieldType::Json | FieldType::File => PType::Jsonb,
            FieldType::Reference => PType::Ref,
            FieldType::MultiSelect | FieldType::Tags => PType::Array(Box::new(PType::Text)),
            FieldType::Array(item) => PType::Array(Box::new(PType::of_field(item))),
            _ => PType::Text,
        }
    }

    /// A word for messages: "a number", "a date (YYYY-MM-DD)".
    pub fn expected(&self) -> String {
        match self {
            PType::Text => "text".into(),
            PType::Numeric | PType::Float => "a number".into(),
            PType::Integer | PType::BigInt | PType::SmallInt => "a whole number".into(),
            PType::Boolean => "true or false".into(),
            PType::Date => "a date (YYYY-MM-DD)".into(),
            PType::Timestamp => "a date-time (ISO 8601, e.g. 2026-01-31T12:00:00Z)".into(),
            PType::Time => "a time (HH:MM[:SS])".into(),
            PType::Interval => "a duration (e.g. \"2 hours\" or \"P1D\")".into(),
            PType::Uuid => "a UUID".into(),
            PType::Jsonb => "any JSON".into(),
            PType::Ref => "an object {\"entity\": ..., \"id\": ...}".into(),
            PType::Array(inner) => format!("an array of {}", inner.expected()),
        }
    }

    pub fn is_ordered(&self) -> bool {
        !matches!(
            self,
            PType::Boolean | PType::Jsonb | PType::Ref | PType::Array(_) | PType::Uuid
        )
    }
}

fn mismatch(what: &str, t: &PType, v: &Value) -> UdmError {
    let got = match v {
        Value::String(s) => format!("\"{}\"", printable(s)),
        other => kind(other).to_string(),
    };
    UdmError::new(
        SqlState::InvalidTextRepresentation,
        format!("{what}: expected {}, got {got}", t.expected()),
    )
}

/// Numbers that JSON cannot write: `to_jsonb` (and so every udm result) makes them strings.
const SPECIAL_NUMBERS: [&str; 3] = ["NaN", "Infinity", "-Infinity"];
/// Dates and timestamps without a calendar day, as `to_jsonb` writes them.
const INFINITIES: [&str; 2] = ["infinity", "-infinity"];

/// The text PostgreSQL reads as a value of type `t`, after checking the JSON value fits. A value
/// as udm returns it is always accepted back (NaN and infinite numbers, infinite dates).
/// `what` names the place (`product.price`, `rows[3].price`, `filter on product.price`).
pub fn to_text(v: &Value, t: &PType, what: &str) -> Result<String> {
    let bad = || mismatch(what, t, v);
    match t {
        PType::Text => match v {
            Value::String(s) => {
                crate::json::check_text(s, what)?;
                Ok(s.clone())
            }
            _ => Err(bad()),
        },
        PType::Numeric | PType::Float => match v {
            Value::Number(n) => Ok(n.to_string()),
            // what to_jsonb makes of the values that are not JSON numbers
            Value::String(s) if SPECIAL_NUMBERS.contains(&s.as_str()) => Ok(s.clone()),
            _ => Err(bad()),
        },
        PType::Integer | PType::BigInt | PType::SmallInt => {
            let n = v.as_i64().ok_or_else(bad)?;
            let (lo, hi) = match t {
                PType::Integer => (i64::from(i32::MIN), i64::from(i32::MAX)),
                PType::SmallInt => (i64::from(i16::MIN), i64::from(i16::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            if n < lo || n > hi {
                return Err(UdmError::new(
                    SqlState::InvalidTextRepresentation,
                    format!("{what}: {n} is out of range for {}", t.sql()),
                ));
            }
            Ok(n.to_string())
        }
        PType::Boolean => v.as_bool().map(|b| b.to_string()).ok_or_else(bad),
        PType::Date => {
            let s = v.as_str().ok_or_else(bad)?;
            if parse_date(s).is_none() && !INFINITIES.contains(&s) {
                return Err(bad());
            }
            Ok(s.to_string())
        }
        PType::Timestamp => {
            let s = v.as_str().ok_or_else(bad)?;
            if !is_timestamp(s) && !INFINITIES.contains(&s) {
                return Err(bad());
            }
            Ok(s.to_string())
        }
        PType::Time => {
            let s = v.as_str().ok_or_else(bad)?;
            if !is_time(s) {
                return Err(bad());
            }
            Ok(s.to_string())
        }
        PType::Interval => {
            let s = v.as_str().ok_or_else(bad)?;
            if s.trim().is_empty() || s.len() > 100 {
                return Err(bad());
            }
            crate::json::check_text(s, what)?;
            Ok(s.to_string())
        }
        PType::Uuid => {
            let s = v.as_str().ok_or_else(bad)?;
            if !is_uuid(s) {
                return Err(bad());
            }
            Ok(s.to_ascii_lowercase())
        }
        PType::Jsonb => Ok(v.to_string()),
        PType::Ref => {
            let o = v.as_object().ok_or_else(bad)?;
            let entity = o.get("entity").and_then(Value::as_str).ok_or_else(bad)?;
            let id = o.get("id").and_then(Value::as_str).ok_or_else(bad)?;
            crate::ident::validate_slug(crate::ident::SlugKind::Entity, entity)
                .map_err(|e| e.context(what))?;
            if !is_uuid(id) {
                return Err(bad());
            }
            Ok(format!("({entity},{id})"))
        }
        PType::Array(inner) => {
            let items = v.as_array().ok_or_else(bad)?;
            let mut out = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if item.is_null() {
                    out.push_str("NULL");
                    continue;
                }
                let text = to_text(item, inner, &format!("{what}[{i}]"))?;
                out.push_str(&array_element(&text));
            }
            out.push('}');
            Ok(out)
        }
    }
}

/// One element of a PostgreSQL array literal, always double-quoted.
pub fn array_element(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `YYYY-MM-DD` with a real calendar day.
pub fn parse_date(s: &str) -> Option<(i32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.chars().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, m, d) = (num(0..4)? as i32, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&d).then_some((y, m, d))
}

/// `HH:MM[:SS[.fraction]]`.
pub fn is_time(s: &str) -> bool {
    let mut parts = s.split(':');
    let (Some(h), Some(m)) = (parts.next(), parts.next()) else {
        return false;
    };
    let sec = parts.next();
    if parts.next().is_some() {
        return false;
    }
    let two = |p: &str, max: u32| {
        p.len() == 2
            && p.chars().all(|c| c.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= max)
    };
    if !two(h, 23) || !two(m, 59) {
        return false;
    }
    match sec {
        None => true,
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, "0"));
            two(whole, 60) && !frac.is_empty() && frac.chars().all(|c| c.is_ascii_digit())
        }
    }
}

/// ISO 8601: a date, optionally `T` or space and a time, optionally `Z` or an offset.
pub fn is_timestamp(s: &str) -> bool {
    // (by bytes that must be ASCII: a multi-byte character at byte 10 is simply not a date)
    let (Some(date), Some(rest)) = (s.get(..10), s.get(10..)) else {
        return false;
    };
    if parse_date(date).is_none() {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let rest = match rest.strip_prefix('T').or_else(|| rest.strip_prefix(' ')) {
        Some(r) => r,
        None => return false,
    };
    let (time, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !is_time(time) {
        return false;
    }
    match zone {
        "" | "Z" | "z" => true,
        z => {
            let z = &z[1..];
            let (h, m) = match (z.split_once(':'), z.len()) {
                (Some(hm), _) => hm,
                (None, 4) if z.is_char_boundary(2) => z.split_at(2),
                (None, _) => (z, "00"),
            };
            h.len() == 2 && m.len() == 2 && h.chars().chain(m.chars()).all(|c| c.is_ascii_digit())
        }
    }
}

/// 8-4-4-4-12 hexadecimal digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Checks a value for a field and returns its SQL text, or None for JSON null.
pub fn field_value(entity: &str, f: &FieldDef, v: &Value) -> Result<Option<String>> {
    if v.is_null() {
        return Ok(None);
    }
    let what = format!("{entity}.{}", f.name);
    let t = PType::of_field(&f.ftype);
    to_text(v, &t, &what).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars() {
        assert_eq!(to_text(&json!("a'b"), &PType::Text, "x").unwrap(), "a'b");
        assert_eq!(to_text(&json!(12.5), &PType::Numeric, "x").unwrap(), "12.5");
        assert_eq!(to_text(&json!(7), &PType::Integer, "x").unwrap(), "7");
        assert_eq!(to_text(&json!(true), &PType::Boolean, "x").unwrap(), "true");
        assert_eq!(
            to_text(&json!("2024-02-29"), &PType::Date, "x").unwrap(),
            "2024-02-29"
        );
        assert_eq!(
            to_text(
                &json!("6F9619FF-8B86-D011-B42D-00C04FC964FF"),
                &PType::Uuid,
                "x"
            )
            .unwrap(),
            "6f9619ff-8b86-d011-b42d-00c04fc964ff"
        );
        assert_eq!(
            to_text(&json!({"a": [1]}), &PType::Jsonb, "x").unwrap(),
            "{\"a\":[1]}"
        );
    }

    #[test]
    fn values_udm_returns_are_accepted_back() {
        for (v, t) in [
            (json!("NaN"), PType::Numeric),
            (json!("-Infinity"), PType::Float),
            (json!("infinity"), PType::Timestamp),
            (json!("-infinity"), PType::Date),
        ] {
            assert_eq!(to_text(&v, &t, "x").unwrap(), v.as_str().unwrap());
        }
        let exact: Value = serde_json::from_str("12345678901234567890.000000001").unwrap();
        assert_eq!(
            to_text(&exact, &PType::Numeric, "x").unwrap(),
            "12345678901234567890.000000001",
            "numbers are not rounded"
        );
        for (v, t) in [
            (json!("nan"), PType::Numeric),
            (json!("Infinity"), PType::Date),
            (json!("1e5"), PType::Float),
        ] {
            assert!(to_text(&v, &t, "x").is_err(), "{v}");
        }
    }

    #[test]
    fn mismatches_name_the_place_and_the_type() {
        let e = to_text(&json!("abc"), &PType::Numeric, "product.price").unwrap_err();
        assert_eq!(e.state, SqlState::InvalidTextRepresentation);
        assert_eq!(e.message, "product.price: expected a number, got \"abc\"");
        let e = to_text(&json!("2023-02-29"), &PType::Date, "p.d").unwrap_err();
        assert!(
            e.message
                .contains("expected a date (YYYY-MM-DD), got \"2023-02-29\""),
            "{}",
            e.message
        );
        assert!(to_text(&json!(3_000_000_000u64), &PType::Integer, "x")
            .unwrap_err()
            .message
            .contains("out of range"));
        assert!(to_text(&json!(1.5), &PType::Integer, "x").is_err());
        assert!(to_text(&json!("nope"), &PType::Uuid, "x").is_err());
        assert!(to_text(&json!(1), &PType::Text, "x").is_err());
    }

    #[test]
    fn arrays_are_quoted_literals() {
        let t = PType::Array(Box::new(PType::Text));
        assert_eq!(
            to_text(&json!(["a", "b\"c", "d\\e"]), &t, "x").unwrap(),
            r#"{"a","b\"c","d\\e"}"#
        );
        let e = to_text(&json!(["a", 1]), &t, "p.tags").unwrap_err();
        assert!(
            e.message.starts_with("p.tags[1]: expected text"),
            "{}",
            e.message
        );
        let n = PType::Array(Box::new(PType::Integer));
        assert_eq!(
            to_text(&json!([1, null, 3]), &n, "x").unwrap(),
            r#"{"1",NULL,"3"}"#
        );
    }

    #[test]
    fn dates_times_and_stamps() {
        assert!(parse_date("2024-02-29").is_some());
        assert!(parse_date("2023-02-29").is_none());
        assert!(parse_date("2023-13-01").is_none());
        assert!(parse_date("23-01-01").is_none());
        for ok in [
            "2024-01-31",
            "2024-01-31T10:00",
            "2024-01-31T10:00:05.123Z",
            "2024-01-31 10:00:00+02:00",
            "2024-01-31T23:59:59-0500",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        assert!(is_timestamp("2024-01-31T10:00+02"));
        for bad in [
            "2024-01-31T25:00",
            "2024-01-31X10:00",
            "yesterday",
            "2024-01-31T10:00+2",
        ] {
            assert!(!is_timestamp(bad), "{bad}");
        }
        assert!(is_time("08:30") && is_time("08:30:15.5") && !is_time("8:30") && !is_time("08:61"));
    }

    #[test]
    fn references() {
        let id = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
        assert_eq!(
            to_text(&json!({"entity": "product", "id": id}), &PType::Ref, "x").unwrap(),
            format!("(product,{id})")
        );
        assert!(to_text(&json!({"entity": "x,y", "id": id}), &PType::Ref, "x").is_err());
    }
}
