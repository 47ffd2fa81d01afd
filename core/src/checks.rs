//! Field validation rules as SQL boolean expressions over the field's column, each with a stable
//! key (`f<id>.<rule>`) and the message a user reads when it fails.
//!
//! These become CHECK constraints that call `udm.check_rule(ok, schema, entity, key)`, so plain
//! `INSERT/UPDATE/COPY` are held to them and the failure names entity, field and rule.

use crate::definition::{EntityDef, FieldDef};
use crate::error::name_list;
use crate::ident::{quote_ident, quote_literal};
use crate::types::{Family, FieldType};
use serde_json::Value;

/// Regular expressions (PostgreSQL ARE) for the formatted text types.
pub const EMAIL_PATTERN: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";
pub const URL_PATTERN: &str = r"^https?://[^\s/$.?#][^\s]*$";
pub const PHONE_PATTERN: &str = r"^\+?[0-9][0-9 ().-]{5,23}[0-9]$";
pub const COLOR_PATTERN: &str = r"^#[0-9A-Fa-f]{6}$";

#[derive(Debug, Clone, PartialEq)]
pub struct FieldCheck {
    /// `f<id>.<rule>`: stable across renames.
    pub key: String,
    pub rule: &'static str,
    /// Boolean SQL expression over the column; NULL counts as passing.
    pub sql: String,
}

/// Names of the check rules a field has, in order (used to validate `messages`).
pub fn field_check_rules(f: &FieldDef) -> Vec<&'static str> {
    field_checks(f).into_iter().map(|c| c.rule).collect()
}

/// A typed SQL literal for a JSON bound or default: `'5'::numeric(12,2)`.
pub fn typed_literal(v: &Value, pg_type: &str) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("{}::{}", quote_literal(&text), pg_type)
}

/// All check rules of a field, as SQL over its column.
pub fn field_checks(f: &FieldDef) -> Vec<FieldCheck> {
    let col = quote_ident(&f.column);
    let mut out = Vec::new();
    let mut push = |rule: &'static str, sql: String| {
        out.push(FieldCheck {
            key: format!("f{}.{rule}", f.id),
            rule,
            sql,
        });
    };
    let t = &f.ftype;
    // (an encrypted field's column is text; its rules compare values of its type)
    let pg = if f.encrypted {
        f.ftype.base_pg_type()
    } else {
        f.pg_type()
    };
    match t {
        FieldType::Email => push(
            "format",
            format!("{col} ~* {}", quote_literal(EMAIL_PATTERN)),
        ),
        FieldType::Url => push("format", format!("{col} ~* {}", quote_literal(URL_PATTERN))),
        FieldType::Phone => push(
            "format",
            format!("{col} ~ {}", quote_literal(PHONE_PATTERN)),
        ),
        FieldType::Color => push(
            "format",
            format!("{col} ~ {}", quote_literal(COLOR_PATTERN)),
        ),
        FieldType::Select => push("values", format!("{col} = ANY ({})", text_array(&f.values))),
        FieldType::MultiSelect => push("values", format!("{col} <@ {}", text_array(&f.values))),
        FieldType::Rating => push("range", format!("{col} BETWEEN 0 AND {}", f.rating_max())),
        FieldType::Tags => {
            push(
                "not_empty",
                format!(
                    "array_position({col}, NULL) IS NULL AND array_position({col}, '') IS NULL"
                ),
            );
        }
        FieldType::File => {
            push(
                "file",
                format!(
                    "jsonb_typeof({col}) = 'object' AND {col} ? 'name' AND jsonb_typeof({col} -> 'name') = 'string'"
                ),
            );
        }
        FieldType::Reference => {
            push(
                "targets",
                format!(
                    "{col} IS NULL OR (coalesce(({col}).entity = ANY ({}), false) AND ({col}).id IS NOT NULL)",
                    text_array(&f.targets)
                ),
            );
        }
        _ => {}
    }
    if f.ftype.family() == Family::Text && !matches!(t, FieldType::Select | FieldType::Color) {
        if let Some(n) = f.min_length {
            push("min_length", format!("char_length({col}) >= {n}"));
        }
        if let Some(n) = f.max_length {
            push("max_length", format!("char_length({col}) <= {n}"));
        }
        if let Some(p) = &f.pattern {
            push("pattern", format!("{col} ~ {}", quote_literal(p)));
        }
    }
    if matches!(f.ftype.family(), Family::Number | Family::Temporal)
        && !matches!(t, FieldType::Rating)
    {
        if let Some(v) = &f.min {
            push("min", format!("{col} >= {}", typed_literal(v, &pg)));
        }
        if let Some(v) = &f.max {
            push("max", format!("{col} <= {}", typed_literal(v, &pg)));
        }
    }
    if f.ftype.family() == Family::List {
        if let Some(n) = f.min_items {
            push("min_items", format!("cardinality({col}) >= {n}"));
        }
        if let Some(n) = f.max_items {
            push("max_items", format!("cardinality({col}) <= {n}"));
        }
        if f.unique_items || matches!(t, FieldType::Tags) {
            push("unique_items", format!("udm.array_is_unique({col})"));
        }
    }
    if matches!(t, FieldType::File) {
        if let Some(n) = f.max_size {
            push(
                "max_size",
                format!(
                    "CASE jsonb_typeof({col} -> 'size') WHEN 'number' THEN ({col} ->> 'size')::numeric <= {n} \
                     ELSE ({col} -> 'size') IS NULL END"
                ),
            );
        }
        if !f.accept.is_empty() {
            push(
                "accept",
                format!(
                    "{col} IS NULL OR coalesce(({col} ->> 'mime_type') = ANY ({}), false)",
                    text_array(&f.accept)
                ),
            );
        }
    }
    out
}

/// `ARRAY['a','b']::text[]`.
pub fn text_array(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| quote_literal(v)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

fn bound_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The message shown when a field rule fails: the field's own `messages` entry, else a sentence
/// naming entity, field and what the rule demands.
pub fn field_rule_message(entity: &EntityDef, f: &FieldDef, rule: &str) -> String {
    if let Some(m) = f.messages.get(rule) {
        return m.clone();
    }
    let who = format!("{}.{}", entity.slug, f.name);
    let temporal = f.ftype.family() == Family::Temporal;
    match rule {
        "required" => format!("{who} is required"),
        "unique" => format!("{who} must be unique; the value is already taken"),
        "format" => match f.ftype {
            FieldType::Email => format!("{who} must be a valid email address"),
            FieldType::Url => format!("{who} must be a valid http or https URL"),
            FieldType::Phone => {
                format!("{who} must be a valid phone number (digits, spaces, + ( ) - .)")
            }
            FieldType::Color => format!("{who} must be a color written as #RRGGBB"),
            _ => format!("{who} has the wrong format"),
        },
        "values" => match f.ftype {
            FieldType::MultiSelect => format!("{who} may only contain {}", name_list(&f.values)),
            _ => format!("{who} must be one of {}", name_list(&f.values)),
        },
        "range" => format!("{who} must be a rating from 0 to {}", f.rating_max()),
        "not_empty" => format!("{who} must not contain empty tags"),
        "file" => format!("{who} must be a file object with a \"name\""),
        "targets" => format!("{who} must reference a record of {}", name_list(&f.targets)),
        "min_length" => format!(
            "{who} must have at least {} characters",
            f.min_length.unwrap_or(0)
        ),
        "max_length" => format!(
            "{who} must have at most {} characters",
            f.max_length.unwrap_or(0)
        ),
        "pattern" => format!(
            "{who} must match the pattern {}",
            f.pattern.as_deref().unwrap_or("")
        ),
        "min" if temporal => format!(
            "{who} must be on or after {}",
            f.min.as_ref().map(bound_text).unwrap_or_default()
        ),
        "max" if temporal => format!(
            "{who} must be on or before {}",
            f.max.as_ref().map(bound_text).unwrap_or_default()
        ),
        "min" => format!(
            "{who} must be at least {}",
            f.min.as_ref().map(bound_text).unwrap_or_default()
        ),
        "max" => format!(
            "{who} must be at most {}",
            f.max.as_ref().map(bound_text).unwrap_or_default()
        ),
        "min_items" => format!(
            "{who} must have at least {} items",
            f.min_items.unwrap_or(0)
        ),
        "max_items" => format!("{who} must have at most {} items", f.max_items.unwrap_or(0)),
        "unique_items" => format!("{who} must not contain the same value twice"),
        "max_size" => format!("{who} must be at most {} bytes", f.max_size.unwrap_or(0)),
        "accept" => format!("{who} must be a file of type {}", name_list(&f.accept)),
        other => format!("{who} breaks rule \"{other}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{EntityDef, Source};
    use serde_json::json;

    fn entity(fields: Value) -> EntityDef {
        EntityDef::parse("product", &json!({ "fields": fields }), Source::Caller).unwrap()
    }

    #[test]
    fn text_checks() {
        let e = entity(
            json!([{"name": "name", "type": "text", "min_length": 2, "max_length": 200, "pattern": "^[A-Z]"}]),
        );
        let c = field_checks(&e.fields[0]);
        let sql: Vec<&str> = c.iter().map(|c| c.sql.as_str()).collect();
        assert_eq!(
            sql,
            vec![
                "char_length(\"name\") >= 2",
                "char_length(\"name\") <= 200",
                "\"name\" ~ '^[A-Z]'"
            ]
        );
        assert_eq!(c[0].key, "f1.min_length");
        assert_eq!(
            field_rule_message(&e, &e.fields[0], "max_length"),
            "product.name must have at most 200 characters"
        );
    }

    #[test]
    fn numeric_and_date_bounds_are_typed_literals() {
        let e = entity(json!([
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0, "max": 1000.5},
            {"name": "day", "type": "date", "min": "2020-01-01"}]));
        let c = field_checks(&e.fields[0]);
        assert_eq!(c[0].sql, "\"price\" >= '0'::numeric(12,2)");
        assert_eq!(c[1].sql, "\"price\" <= '1000.5'::numeric(12,2)");
        let d = field_checks(&e.fields[1]);
        assert_eq!(d[0].sql, "\"day\" >= '2020-01-01'::date");
        assert_eq!(
            field_rule_message(&e, &e.fields[1], "min"),
            "product.day must be on or after 2020-01-01"
        );
        assert_eq!(
            field_rule_message(&e, &e.fields[0], "min"),
            "product.price must be at least 0"
        );
    }

    #[test]
    fn hostile_values_stay_literals() {
        let e = entity(
            json!([{"name": "s", "type": "select", "values": ["a'); DROP TABLE x; --", "b\\c"]}]),
        );
        let c = field_checks(&e.fields[0]);
        assert_eq!(
            c[0].sql,
            "\"s\" = ANY (ARRAY['a''); DROP TABLE x; --', E'b\\\\c']::text[])"
        );
    }

    #[test]
    fn formatted_types_have_format_rules() {
        for (t, rule) in [
            ("email", "format"),
            ("url", "format"),
            ("phone", "format"),
            ("color", "format"),
        ] {
            let e = entity(json!([{"name": "v", "type": t}]));
            assert_eq!(field_check_rules(&e.fields[0]), vec![rule], "{t}");
        }
        let e = entity(json!([{"name": "v", "type": "rating", "max": 10}]));
        assert_eq!(field_checks(&e.fields[0])[0].sql, "\"v\" BETWEEN 0 AND 10");
        assert_eq!(
            field_rule_message(&e, &e.fields[0], "range"),
            "product.v must be a rating from 0 to 10"
        );
    }

    #[test]
    fn lists() {
        let e = entity(json!([
            {"name": "tags", "type": "tags", "max_items": 5},
            {"name": "nums", "type": "integer[]", "min_items": 1, "unique_items": true}]));
        assert_eq!(
            field_check_rules(&e.fields[0]),
            vec!["not_empty", "max_items", "unique_items"]
        );
        assert_eq!(
            field_check_rules(&e.fields[1]),
            vec!["min_items", "unique_items"]
        );
        assert_eq!(
            field_checks(&e.fields[1])[1].sql,
            "udm.array_is_unique(\"nums\")"
        );
    }

    #[test]
    fn sub_part_checks_fail_rather_than_pass_as_null() {
        // A CHECK passes on NULL, so a rule over part of a value must be false, not NULL, when
        // the part is missing; only a NULL column may yield NULL.
        let e = entity(json!([
            {"name": "doc", "type": "file", "accept": ["application/pdf"], "max_size": 10},
            {"name": "subject", "type": "reference", "targets": ["a"]}]));
        let sql: Vec<String> = field_checks(&e.fields[0])
            .into_iter()
            .map(|c| c.sql)
            .collect();
        assert!(sql[0].contains("\"doc\" ? 'name'"), "{}", sql[0]);
        assert!(
            sql[1].contains("ELSE (\"doc\" -> 'size') IS NULL"),
            "{}",
            sql[1]
        );
        assert!(
            sql[2].starts_with("\"doc\" IS NULL OR coalesce("),
            "{}",
            sql[2]
        );
        let r = &field_checks(&e.fields[1])[0].sql;
        assert!(r.starts_with("\"subject\" IS NULL OR (coalesce("), "{r}");
    }

    #[test]
    fn custom_messages_win() {
        let e = entity(
            json!([{"name": "code", "type": "text", "min_length": 3, "messages": {"min_length": "codes have 3+ letters"}}]),
        );
        assert_eq!(
            field_rule_message(&e, &e.fields[0], "min_length"),
            "codes have 3+ letters"
        );
    }
}
