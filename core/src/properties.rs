//! Property-based tests of everything that reads caller input: the rule language, paths,
//! filters and whole query, aggregate and view specs, definitions, slugs, cursors, and the jsonb
//! reader, with arbitrary and adversarial inputs (deep nesting, huge lists, odd characters).
//! Each must return a value or an error with a SQLSTATE, never panic, overflow the stack or
//! report an internal error (XX000) for bad input.

use crate::definition::{EntityDef, Source};
use crate::error::{SqlState, UdmError};
use crate::query::path::tests::shop;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Bad input is the caller's error, never an internal one.
fn not_internal<T>(r: Result<T, UdmError>) -> Result<(), TestCaseError> {
    if let Err(e) = &r {
        prop_assert_ne!(e.state, SqlState::Internal, "internal error: {}", e.message);
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

/// Words the specs use, so arbitrary input reaches past the first check often.
const WORDS: &[&str] = &[
    "filters",
    "columns",
    "sort",
    "limit",
    "offset",
    "cursor",
    "count",
    "distinct",
    "and",
    "or",
    "not",
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "like",
    "ilike",
    "contains",
    "starts_with",
    "is_null",
    "between",
    "overlaps",
    "path",
    "direction",
    "desc",
    "asc",
    "exact",
    "estimated",
    "group_by",
    "metrics",
    "fn",
    "count_distinct",
    "sum",
    "avg",
    "min",
    "max",
    "having",
    "bucket",
    "month",
    "name",
    "price",
    "status",
    "metadata",
    "metadata.brand",
    "category_id",
    "category_id.name",
    "category_id.parent_id.name",
    "tags",
    "tags.name",
    "product[]",
    "labels",
    "released",
    "secret",
    "field",
    "start",
    "end",
    "search",
    "depth",
    "fields",
    "type",
    "text",
    "integer",
    "decimal",
    "relation",
    "target",
    "many",
    "required",
    "unique",
    "default",
    "values",
    "select",
    "json",
    "rules",
    "check",
    "message",
    "indexes",
    "",
    "x\"y",
    "a.b.c.d.e.f.g.h.i",
    "__",
    "pg_x",
    "ü",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(str::to_string),
        "[a-z_.\\[\\]]{0,12}",
        ".{0,8}",
    ]
}

/// Arbitrary JSON built from udm's spec words, nested up to a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!("1e400")),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(word(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// `{key: v}`, built without `json!` (which serialises an interpolated value again, recursively).
fn obj(key: &str, v: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), v);
    Value::Object(m)
}

/// `{"and": [{"and": [ ... ]}]}` `n` deep, and `[[[ ... ]]]` `n` deep.
fn nested_filter(n: usize) -> Value {
    let mut v = obj("name", json!("x"));
    for _ in 0..n {
        v = obj("and", Value::Array(vec![v]));
    }
    v
}

fn nested_array(n: usize) -> Value {
    let mut v = Value::Array(vec![]);
    for _ in 0..n {
        v = Value::Array(vec![v]);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn rules_parse_or_refuse(src in ".{0,200}") {
        not_internal(crate::rules::parse(&src))?;
        not_internal(crate::rules::rule_fields(&src))?;
    }

    #[test]
    fn rules_from_rule_words_compile_or_refuse(
        parts in prop::collection::vec(prop::sample::select(&[
            "(", ")", "and", "or", "not", "price", "name", "released", "1", "'x'", "null", "<", "<=",
            "=", "!=", "+", "*", "/", "%", "in", "between", "like", "matches", "is", "length(",
            "lower(", "coalesce(", ",", "category_id.name", "metadata.brand", "true",
        ][..]), 0..40)
    ) {
        let src = parts.join(" ");
        let m = shop();
        let product = m.0.get("product").unwrap();
        not_internal(crate::related_rules::compile(&m, product, &src))?;
    }

    #[test]
    fn paths_resolve_or_refuse(p in "[a-z_.\\[\\]0-9ü\"]{0,60}") {
        let m = shop();
        not_internal(crate::query::path::parse(&p))?;
        not_internal(crate::query::path::resolve(&m, "product", &p))?;
    }

    #[test]
    fn query_specs_compile_or_refuse(spec in json_value()) {
        let m = shop();
        not_internal(crate::query::select::compile(&m, "product", &spec))?;
        not_internal(crate::query::aggregate::compile(&m, "product", &spec))?;
        for kind in crate::query::views::KINDS {
            not_internal(crate::query::views::compile(&m, "category", kind, &spec))?;
        }
        if let Ok(t) = crate::query::select::compile(&m, "product", &spec) {
            not_internal(crate::query::bind(&spec, &t))?;
        }
        let _ = crate::query::shape_key("query", "product", &spec);
    }

    #[test]
    fn filters_of_rule_words_compile_or_refuse(filters in json_value()) {
        let m = shop();
        let spec = json!({"filters": filters, "columns": ["name", "category_id.name"]});
        not_internal(crate::query::select::compile(&m, "product", &spec))?;
        not_internal(crate::query::image_condition(&m, "product", &filters, &|p| format!("{p}::jsonb")))?;
    }

    #[test]
    fn definitions_parse_or_refuse(def in json_value(), slug in word()) {
        not_internal(EntityDef::parse(&slug, &def, Source::Caller))?;
        not_internal(crate::definition::parse_field(&def, Source::Caller))?;
        let _ = crate::ident::validate_slug(crate::ident::SlugKind::Entity, &slug);
    }

    #[test]
    fn cursors_decode_or_refuse(c in ".{0,80}", v in json_value()) {
        not_internal(crate::query::decode_cursor(&json!(c), None))?;
        not_internal(crate::query::decode_cursor(&v, Some("sig")))?;
    }

    #[test]
    fn jsonb_reader_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = crate::jsonb::read(&bytes, 64, &mut |_| Ok(json!(0)));
        let _ = crate::jsonb::read_elided(&bytes, 8, &mut |_| Ok(json!(0)));
        let _ = crate::jsonb::object_pairs(&bytes);
    }

    #[test]
    fn jsonb_objects_round_trip(
        pairs in prop::collection::btree_map("[a-z]{1,6}", prop_oneof![
            Just(None), any::<bool>().prop_map(Some)
        ], 0..70),
        strings in prop::collection::vec(".{0,20}", 0..70),
    ) {
        let owned: Vec<(String, Option<bool>, String)> = pairs
            .into_iter()
            .zip(strings.iter().cycle().chain(std::iter::repeat(&String::new())))
            .map(|((k, b), s)| (k, b, s.clone()))
            .collect();
        let values: Vec<(&[u8], crate::jsonb::Value)> = owned
            .iter()
            .map(|(k, b, s)| {
                let v = match b {
                    None => crate::jsonb::Value::Null,
                    Some(true) => crate::jsonb::Value::Array(vec![
                        crate::jsonb::Value::String(s.as_bytes()),
                        crate::jsonb::Value::Bool(true),
                    ]),
                    Some(false) => crate::jsonb::Value::String(s.as_bytes()),
                };
                (k.as_bytes(), v)
            })
            .collect();
        let mut out = Vec::new();
        crate::jsonb::write_object(&mut out, &values).unwrap();
        let back = crate::jsonb::read(&out[4..], 64, &mut |_| Ok(json!(0))).unwrap();
        let expected: Map<String, Value> = owned
            .iter()
            .map(|(k, b, s)| {
                (k.clone(), match b {
                    None => Value::Null,
                    Some(true) => json!([s, true]),
                    Some(false) => json!(s),
                })
            })
            .collect();
        prop_assert_eq!(back, Value::Object(expected));
    }
}

/// Specs as deep as the extension lets through (it refuses specs deeper than
/// `udm.max_spec_depth`, at most 1,000, before any of this runs), on a stack the size of a
/// PostgreSQL backend's (8 MB), in a debug build: refused or compiled, never a stack overflow.
#[test]
fn deep_and_huge_specs_are_refused_not_overflowed() {
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(deep_and_huge)
        .unwrap()
        .join()
        .unwrap();
}

fn deep_and_huge() {
    let m = shop();
    let depth = 1000;
    for n in [17, 100, depth] {
        let spec = obj("filters", nested_filter(n));
        let e = crate::query::select::compile(&m, "product", &spec).unwrap_err();
        assert_eq!(e.state, SqlState::ProgramLimitExceeded, "{}", e.message);
        crate::jsonb::drop_deep(spec);
    }
    for make in [
        |d| obj("filters", obj("name", obj("in", nested_array(d)))),
        |d| obj("columns", nested_array(d)),
        |d| obj("sort", nested_array(d)),
        |d| obj("group_by", nested_array(d)),
        |d| obj("fields", nested_array(d)),
    ] {
        let spec: Value = make(depth);
        not_internal(crate::query::select::compile(&m, "product", &spec)).unwrap();
        not_internal(crate::query::aggregate::compile(&m, "product", &spec)).unwrap();
        not_internal(EntityDef::parse("x", &spec, Source::Caller)).unwrap();
        let _ = crate::query::shape_key("query", "product", &spec);
        assert!(crate::jsonb::depth(&spec) > depth);
        crate::jsonb::drop_deep(spec);
    }
    let rule = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let e = crate::rules::parse(&rule).unwrap_err();
    assert_eq!(e.state, SqlState::ProgramLimitExceeded, "{}", e.message);
    let many = json!({"filters": {"name": {"in": (0..100_000).map(|i| json!(i.to_string())).collect::<Vec<_>>()}}});
    let t = crate::query::select::compile(&m, "product", &many).unwrap();
    not_internal(crate::query::bind(&many, &t)).unwrap();
}
