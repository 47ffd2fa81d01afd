//! Strict readers for caller JSON: every wrong shape becomes an error that says where it was
//! (`field "price": option "min"`), what was expected and what came.

use crate::error::{name_list, Result, UdmError};
use serde_json::{Map, Value};

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn expect_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| UdmError::invalid(format!("{what} must be a JSON object, got {}", kind(v))))
}

pub fn expect_array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    v.as_array()
        .ok_or_else(|| UdmError::invalid(format!("{what} must be a JSON array, got {}", kind(v))))
}

pub fn expect_str<'a>(v: &'a Value, what: &str) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| UdmError::invalid(format!("{what} must be a string, got {}", kind(v))))
}

pub fn expect_bool(v: &Value, what: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| UdmError::invalid(format!("{what} must be true or false, got {}", kind(v))))
}

pub fn expect_u32(v: &Value, what: &str, min: u32, max: u32) -> Result<u32> {
    let n = v
        .as_u64()
        .filter(|n| *n >= u64::from(min) && *n <= u64::from(max));
    n.map(|n| n as u32).ok_or_else(|| {
        UdmError::invalid(format!(
            "{what} must be a whole number from {min} to {max}, got {v}"
        ))
    })
}

pub fn expect_u64(v: &Value, what: &str) -> Result<u64> {
    v.as_u64().ok_or_else(|| {
        UdmError::invalid(format!(
            "{what} must be a whole number of at least 0, got {v}"
        ))
    })
}

/// A list of non-empty strings, each at most `max_len` characters, at most `max_count`, no
/// duplicates.
pub fn expect_string_list(
    v: &Value,
    what: &str,
    max_count: usize,
    max_len: usize,
) -> Result<Vec<String>> {
    let arr = expect_array(v, what)?;
    if arr.len() > max_count {
        return Err(UdmError::invalid(format!(
            "{what} has {} entries, at most {max_count} are allowed",
            arr.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        let s = expect_str(item, &format!("{what}[{i}]"))?;
        if s.is_empty() {
            return Err(UdmError::invalid(format!("{what}[{i}] is empty")));
        }
        if s.chars().count() > max_len {
            return Err(UdmError::invalid(format!(
                "{what}[{i}] is longer than {max_len} characters"
            )));
        }
        check_text(s, &format!("{what}[{i}]"))?;
        if out.iter().any(|o| o == s) {
            return Err(UdmError::invalid(format!(
                "{what} lists \"{}\" twice",
                crate::ident::printable(s)
            )));
        }
        out.push(s.to_string());
    }
    Ok(out)
}

/// PostgreSQL text cannot hold NUL; refuse it up front with a clear message.
pub fn check_text(s: &str, what: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(UdmError::invalid(format!(
            "{what} contains a NUL character, which PostgreSQL text cannot hold"
        )));
    }
    Ok(())
}

/// Refuses keys not in `allowed`, naming the unknown key and listing the valid ones.
pub fn refuse_unknown_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            let mut valid: Vec<&str> = allowed.to_vec();
            valid.sort_unstable();
            return Err(UdmError::invalid(format!(
                "{what}: unknown option \"{}\"",
                crate::ident::printable(k)
            ))
            .hint(format!("valid options are {}", name_list(valid))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_are_named() {
        let e = expect_object(&json!([1]), "definition").unwrap_err();
        assert_eq!(e.message, "definition must be a JSON object, got an array");
        let e = expect_u32(&json!(-1), "max_length", 1, 10).unwrap_err();
        assert!(e.message.contains("from 1 to 10, got -1"));
        assert_eq!(expect_u32(&json!(7), "x", 1, 10).unwrap(), 7);
    }

    #[test]
    fn string_lists_refuse_duplicates_and_blanks() {
        assert_eq!(
            expect_string_list(&json!(["a", "b"]), "values", 10, 10).unwrap(),
            vec!["a", "b"]
        );
        assert!(expect_string_list(&json!(["a", "a"]), "values", 10, 10)
            .unwrap_err()
            .message
            .contains("twice"));
        assert!(expect_string_list(&json!([""]), "values", 10, 10)
            .unwrap_err()
            .message
            .contains("empty"));
        assert!(expect_string_list(&json!(["a", 1]), "values", 10, 10)
            .unwrap_err()
            .message
            .contains("values[1]"));
        assert!(expect_string_list(&json!(["a", "b"]), "values", 1, 10)
            .unwrap_err()
            .message
            .contains("at most 1"));
        assert!(expect_string_list(&json!(["a\u{0}"]), "values", 1, 10)
            .unwrap_err()
            .message
            .contains("NUL"));
    }

    #[test]
    fn unknown_keys_are_named_with_valid_ones() {
        let obj = json!({"name": "a", "max_lenght": 3});
        let e = refuse_unknown_keys(
            obj.as_object().unwrap(),
            &["name", "max_length"],
            "field \"a\"",
        )
        .unwrap_err();
        assert_eq!(e.message, "field \"a\": unknown option \"max_lenght\"");
        assert_eq!(
            e.hint.unwrap(),
            "valid options are \"max_length\", \"name\""
        );
    }
}
