//! Adversarial documents are refused quickly and never overflow the stack (2 MB threads).

use super::*;
use proptest::prelude::*;
use std::time::Instant;

fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn hostile_documents_are_refused_cheaply() {
    on_small_stack(|| {
        let s = schema();
        let big = Limits {
            max_document_bytes: 20_000_000,
            ..Limits::default()
        };
        let deep = format!("{}{}", "{a".repeat(100_000), "}".repeat(100_000));
        let t = Instant::now();
        let e = Document::parse(&s, &deep, &big).unwrap_err();
        assert!(e[0].message.contains("nests deeper"), "{:?}", e[0]);
        assert!(t.elapsed().as_millis() < 200);
        let deep_list = format!(
            "{{ productCollection(filter: {{name: {{in: {}\"a\"{}}}}}) {{ totalCount }} }}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Document::parse(&s, &deep_list, &big).is_err());
        let ten_mb = format!("{{ {} }}", "a: __typename ".repeat(800_000));
        let e = Document::parse(&s, &ten_mb, &Limits::default()).unwrap_err();
        assert!(e[0].message.contains("udm.graphql_max_document_bytes"));
        let t = Instant::now();
        let e = Document::parse(&s, &ten_mb, &big).unwrap_err();
        assert!(
            e[0].message.contains("udm.graphql_max_tokens"),
            "{:?}",
            e[0]
        );
        assert!(t.elapsed().as_secs() < 5);
        // a fragment bomb: 2^30 fields expanded, measured without expanding
        let mut q = String::from("query { ...F0 }\n");
        for i in 0..30 {
            q.push_str(&format!("fragment F{i} on Query {{ a: productCollection {{ totalCount }} ...F{} ...F{} }}\n", i + 1, i + 1));
        }
        q.push_str("fragment F30 on Query { __typename }\n");
        let e = plan(&s, &shop(), &q, json!({})).unwrap_err();
        assert!(
            e[0].message.contains("udm.graphql_max_fields"),
            "{:?}",
            e[0]
        );
        // a chain of fragments deeper than the nesting limit
        let mut q = String::from("query { ...F0 }\n");
        for i in 0..500 {
            q.push_str(&format!("fragment F{i} on Query {{ ...F{} }}\n", i + 1));
        }
        q.push_str("fragment F500 on Query { __typename }\n");
        assert!(plan(&s, &shop(), &q, json!({})).is_err());
        // huge variables
        let vars = json!({"f": {"name": {"in": vec!["x"; 200_000]}}});
        let e = plan(
            &s,
            &shop(),
            "query($f: ProductFilter) { productCollection(filter: $f) { totalCount } }",
            vars,
        )
        .unwrap_err();
        assert!(e[0].message.contains("udm.graphql_max_"), "{:?}", e[0]);
        let mut deep_var = json!(1);
        for _ in 0..200 {
            deep_var = json!([deep_var]);
        }
        let e = plan(
            &s,
            &shop(),
            "query($j: JSON) { productCollection(filter: {metadata: {eq: $j}}) { totalCount } }",
            json!({"j": deep_var}),
        )
        .unwrap_err();
        assert!(e[0].message.contains("nest deeper"), "{:?}", e[0]);
    });
}

/// The whole pipeline at the depth limit fits in a small stack.
#[test]
fn the_limits_fit_a_small_stack() {
    let n = on_small_stack(|| {
        let q = format!(
            "{{ categoryCollection {{ nodes {{ {}name{} }} }} }}",
            "parent { ".repeat(7),
            " }".repeat(7)
        );
        statements(&q, json!({})).len()
    });
    assert_eq!(n, 1);
    let e = on_small_stack(|| {
        let q = format!(
            "{{ categoryCollection {{ nodes {{ {}name{} }} }} }}",
            "parent { ".repeat(18),
            " }".repeat(18)
        );
        errors(&q, json!({}))
    });
    assert!(e[0].message.contains("levels deep"), "{:?}", e[0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_documents_never_panic(q in "[{}()\\[\\]a-zA-Z_:$!@.,\"# \n0-9]{0,300}") {
        let s = schema();
        if let Err(errs) = plan(&s, &shop(), &q, json!({})) {
            for e in errs {
                prop_assert!(e.code != Code::Internal, "{q}: {}", e.message);
            }
        }
    }

    #[test]
    fn arbitrary_variables_never_panic(v in proptest::arbitrary::any::<Vec<(String, i64)>>(), name in "[a-z]{0,8}") {
        let s = schema();
        let mut filter = serde_json::Map::new();
        for (k, n) in v {
            filter.insert(k, json!({"eq": n}));
        }
        let vars = json!({"f": {"name": {"eq": name}, "and": [filter]}, "n": 3});
        let q = "query($f: ProductFilter, $n: Int) { productCollection(filter: $f, first: $n) { totalCount nodes { name } } }";
        if let Err(errs) = plan(&s, &shop(), q, vars) {
            for e in errs {
                prop_assert!(e.code != Code::Internal, "{}", e.message);
            }
        }
    }
}
