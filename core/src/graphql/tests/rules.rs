//! One document per rule of the Validation section (October 2021), each refused with a located
//! error; and documents that must pass.

use super::*;

#[test]
fn every_validation_rule() {
    let cases: &[(&str, &str, &str)] = &[
        ("5.1.1", "{ __typename } type X { a: Int }", "must not contain"),
        ("5.2.1.1", "query A { __typename } query A { __typename }", "`A`"),
        ("5.2.2.1", "{ __typename } query B { __typename }", "anonymous"),
        ("5.2.3.1", "subscription { productChanged { id } categoryChanged { id } }", "subscription"),
        ("5.3.1", "{ productCollection { nodes { nope } } }", "does not have a field"),
        ("5.3.2", "{ productCollection { nodes { a: name a: price } } }", "same alias"),
        ("5.3.2 args", "{ productCollection { nodes { m: metadata(path: [\"a\"]) m: metadata(path: [\"b\"]) } } }", "argument"),
        ("5.3.3 scalar", "{ productCollection { nodes { name { x } } } }", "scalar"),
        ("5.3.3 object", "{ productCollection }", "subselection"),
        ("5.4.1", "{ productCollection(nope: 1) { totalCount } }", "nope"),
        ("5.4.2", "{ productCollection(first: 1, first: 2) { totalCount } }", "first"),
        ("5.4.2.1", "{ product { id } }", "required"),
        ("5.5.1.1", "{ ...F } fragment F on Query { __typename } fragment F on Query { __typename }", "`F`"),
        ("5.5.1.2", "{ ...F } fragment F on Nope { __typename }", "Nope"),
        ("5.5.1.3", "{ ...F } fragment F on UUID { __typename }", "UUID"),
        ("5.5.1.4", "{ __typename } fragment F on Query { __typename }", "must be used"),
        ("5.5.2.1", "{ ...G }", "`G`"),
        ("5.5.2.2", "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }", "cannot reference itself"),
        ("5.5.2.3", "{ productCollection { nodes { ... on Category { name } } } }", "Category"),
        ("5.6.1", "{ productCollection(first: \"ten\") { totalCount } }", "expected value of type Int"),
        ("5.6.1 range", "{ productCollection(first: 99999999999) { totalCount } }", "int"),
        ("5.6.2", "{ productCollection(filter: {nope: {eq: 1}}) { totalCount } }", "nope"),
        ("5.6.3", "{ productCollection(filter: {name: {eq: \"a\", eq: \"b\"}}) { totalCount } }", "more than once"),
        ("5.6.4", "{ productCollection(orderBy: [{metadata: {path: [\"a\"]}}]) { totalCount } }", "direction"),
        ("5.7.1", "{ __typename @nope }", "nope"),
        ("5.7.2", "query @skip(if: true) { __typename }", "skip"),
        ("5.7.3", "{ __typename @skip(if: true) @skip(if: false) }", "skip"),
        ("5.8.1", "query($a: Int, $a: Int) { productCollection(first: $a) { totalCount } }", "$a"),
        ("5.8.2", "query($a: Product) { __typename }", "input type"),
        ("5.8.3", "{ productCollection(first: $n) { totalCount } }", "$n"),
        ("5.8.3 fragment", "query Q { ...F } fragment F on Query { productCollection(first: $n) { totalCount } }", "$n"),
        ("5.8.4", "query($n: Int) { __typename }", "$n"),
        ("5.8.5", "query($id: UUID) { product(id: $id) { id } }", "$id"),
    ];
    let mut missed = Vec::new();
    for (rule, q, want) in cases {
        let e = errors(q, json!({}));
        let hit = e.iter().any(|e| {
            e.message.to_lowercase().contains(&want.to_lowercase()) && !e.locations.is_empty()
        });
        if !hit {
            missed.push(format!(
                "{rule}: {:?}",
                e.iter()
                    .map(|e| (&e.message, &e.locations))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

#[test]
fn valid_documents_pass() {
    for (q, v) in [
        ("query($id: UUID!) { product(id: $id) { id name category { name } } }", json!({"id": "0190c7a4-0000-7000-8000-000000000000"})),
        ("query($id: UUID = \"0190c7a4-0000-7000-8000-000000000000\") { product(id: $id) { id } }", json!({})),
        ("query($skip: Boolean!) { productCollection { nodes { id name @skip(if: $skip) ... on Product { name } } } }", json!({"skip": true})),
        ("{ a: productCollection { totalCount } b: productCollection(first: 1) { totalCount } }", json!({})),
        ("subscription($f: ProductFilter) { productChanged(filter: $f) { id action record { name } } }", json!({"f": {"price": {"gt": "5"}}})),
        ("mutation { insertProduct(objects: [{name: \"x\", category: {name: \"c\"}}]) { affectedCount records { id } } }", json!({})),
        ("{ __schema { queryType { name } } __type(name: \"Product\") { name } }", json!({})),
    ] {
        let e = errors(q, v);
        assert!(e.is_empty(), "{q}: {:?}", e.iter().map(|e| e.to_json()).collect::<Vec<_>>());
    }
}

#[test]
fn variables_are_coerced_and_errors_located() {
    let e = errors(
        "query($n: Int!) { productCollection(first: $n) { totalCount } }",
        json!({}),
    );
    assert!(
        e[0].message.contains('n') && e[0].code == Code::BadUserInput,
        "{:?}",
        e
    );
    let e = errors(
        "query($f: ProductFilter) { productCollection(filter: $f) { totalCount } }",
        json!({"f": {"nope": 1}}),
    );
    assert!(!e.is_empty());
    let e = errors(
        "{\n  productCollection(first: 5000) { totalCount } }",
        json!({}),
    );
    assert_eq!(e[0].code, Code::LimitExceeded);
    assert_eq!(e[0].sqlstate, "54000");
    assert_eq!(e[0].locations, vec![Location { line: 2, column: 3 }]);
    assert_eq!(e[0].path, vec![PathSeg::Key("productCollection".into())]);
    assert!(e[0].message.contains("udm.graphql_max_page_size"));
    let e = errors(
        "{ productCollection(first: 1, last: 2) { totalCount } }",
        json!({}),
    );
    assert!(e[0].message.contains("not both"));
    let e = errors(
        "mutation { deleteProductMany(filter: {}, atMost: 0) { affectedCount } }",
        json!({}),
    );
    assert!(e[0].message.contains("atMost"));
}

#[test]
fn introspection_answers_and_can_be_switched_off() {
    let s = schema();
    let m = shop();
    let p = plan(
        &s,
        &m,
        "{ __type(name: \"Product\") { name kind } }",
        json!({}),
    )
    .unwrap();
    let mut f = p.fields.into_iter().next().unwrap();
    assert_eq!(
        f.next(None).unwrap(),
        Next::Done(json!({"name": "Product", "kind": "OBJECT"}))
    );
    let limits = Limits {
        introspection: false,
        ..Limits::default()
    };
    let doc = Document::parse(&s, "{ __schema { types { name } } }", &limits).unwrap();
    let mut ids = || String::new();
    let mut ctx = Context {
        model: &m,
        limits: &limits,
        functions_schema: "udm",
        new_id: &mut ids,
    };
    let e = prepare(&s, &doc, None, &json!({}), &mut ctx).unwrap_err();
    assert_eq!(e[0].code, Code::IntrospectionDisabled);
}
