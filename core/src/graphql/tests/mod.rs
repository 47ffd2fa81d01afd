#![allow(clippy::while_let_loop)]
//! Tests of the GraphQL engine: schema, validation rules, errors, SQL, limits.

use super::*;
use crate::definition::{EntityDef, Source};
use crate::query::path::Model;
use serde_json::{json, Value};
use std::collections::BTreeMap;

mod hostile;
mod queries;
mod rules;

pub(crate) struct TestModel(pub BTreeMap<String, EntityDef>);

impl Model for TestModel {
    fn schema(&self) -> &str {
        "acme"
    }
    fn entity(&self, slug: &str) -> Option<&EntityDef> {
        self.0.get(slug)
    }
    fn entity_names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

pub(crate) fn model(defs: &[(&str, Value)]) -> TestModel {
    TestModel(
        defs.iter()
            .map(|(s, d)| {
                (
                    s.to_string(),
                    EntityDef::parse(s, d, Source::Caller).expect("valid definition"),
                )
            })
            .collect(),
    )
}

/// The README tour's shop: category (self relation), product, tag (many-to-many), comment
/// (a reference).
pub(crate) fn shop() -> TestModel {
    model(&[
        (
            "category",
            json!({"label": "Category", "fields": [
            {"name": "name", "type": "text", "required": true, "unique": true},
            {"name": "parent_id", "type": "relation", "target": "category", "on_delete": "cascade"}]}),
        ),
        ("tag", json!({"fields": [{"name": "name", "type": "text"}]})),
        (
            "product",
            json!({"label": "Product", "fields": [
            {"name": "name", "type": "text", "required": true, "max_length": 200},
            {"name": "price", "type": "decimal", "precision": 12, "scale": 2, "min": 0},
            {"name": "status", "type": "select", "values": ["draft", "active", "retired"], "default": "draft"},
            {"name": "metadata", "type": "json"},
            {"name": "category_id", "type": "relation", "target": "category", "on_delete": "restrict"},
            {"name": "sample_date", "type": "date"},
            {"name": "release_date", "type": "date"},
            {"name": "labels", "type": "tags"},
            {"name": "stock", "type": "bigint"},
            {"name": "secret", "type": "password"},
            {"name": "tags", "type": "relation", "target": "tag", "many": true}]}),
        ),
        (
            "comment",
            json!({"fields": [
            {"name": "body", "type": "long_text"},
            {"name": "subject", "type": "reference", "targets": ["product", "category"]}]}),
        ),
    ])
}

pub(crate) fn schema() -> GqlSchema {
    GqlSchema::build(&shop()).unwrap_or_else(|e| panic!("{e}"))
}

/// Prepares a request and returns its plans (or errors).
pub(crate) fn plan(
    s: &GqlSchema,
    m: &dyn Model,
    q: &str,
    vars: Value,
) -> Result<Prepared, Vec<GqlError>> {
    let limits = Limits::default();
    let doc = Document::parse(s, q, &limits)?;
    let mut n = 0u32;
    let mut ids = || {
        n += 1;
        format!("00000000-0000-7000-8000-{n:012}")
    };
    let mut ctx = Context {
        model: m,
        limits: &limits,
        functions_schema: "udm",
        new_id: &mut ids,
    };
    prepare(s, &doc, None, &vars, &mut ctx)
}

/// The statements of the first root field, with their parameters.
pub(crate) fn statements(q: &str, vars: Value) -> Vec<Statement> {
    let s = schema();
    let m = shop();
    let mut p = plan(&s, &m, q, vars).unwrap_or_else(|e| {
        panic!(
            "{q}: {:?}",
            e.iter().map(|e| e.to_json()).collect::<Vec<_>>()
        )
    });
    let f = &mut p.fields[0];
    let mut out = Vec::new();
    let mut last = None;
    loop {
        match f
            .next(last.take())
            .unwrap_or_else(|e| panic!("{}", e.to_json()))
        {
            Next::Run(st) => {
                // a stand-in result: ids for id lists, 1 otherwise
                last = Some(if st.sql.contains("jsonb_agg(s.\"id\")") {
                    json!(["6f9619ff-8b86-d011-b42d-00c04fc964ff"])
                } else {
                    json!(1)
                });
                out.push(st);
            }
            Next::Done(_) => break,
        }
    }
    out
}

pub(crate) fn errors(q: &str, vars: Value) -> Vec<GqlError> {
    let s = schema();
    plan(&s, &shop(), q, vars).err().unwrap_or_default()
}

#[test]
fn sdl_of_the_shop() {
    let s = schema();
    let sdl = s.sdl();
    for want in [
        "type Product {",
        "  price: Decimal",
        "  status: ProductStatus",
        "enum ProductStatus {",
        "  categoryId: UUID",
        "  category: Category",
        "  metadata(",
        "  tags(filter: TagFilter, orderBy: [TagOrderBy!], first: Int, after: Cursor, last: Int, before: Cursor, offset: Int): TagConnection!",
        "  productCollection(filter: ProductFilter",
        "  categoryCollectionByParentId(",
        "  productCollectionByTags(",
        "union CommentSubject = Product | Category",
        "  subjectRef: RecordRef",
        "input ProductListFilter {",
        "  insertProduct(objects: [ProductInsertInput!]!): ProductMutationResult!",
        "  productChanged(actions: [ChangeAction!], filter: ProductFilter): ProductChange!",
        "  categoryTree(",
        "  productKanban(",
        "  productGantt(",
        "  defineEntity(slug: String!, definition: EntityDefinitionInput!): JSON!",
    ] {
        assert!(sdl.contains(want), "missing {want:?} in\n{sdl}");
    }
    assert!(
        !sdl.contains("secret:") || sdl.contains("secret: String\n"),
        "passwords only in inputs"
    );
    let product = sdl
        .split("type Product {")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert!(!product.contains("secret"), "{product}");
}

#[test]
fn hidden_fields_are_absent() {
    struct Hiding(TestModel);
    impl Model for Hiding {
        fn schema(&self) -> &str {
            "acme"
        }
        fn entity(&self, slug: &str) -> Option<&EntityDef> {
            self.0.entity(slug)
        }
        fn entity_names(&self) -> Vec<String> {
            self.0.entity_names()
        }
        fn hidden(&self, entity: &str, field: &str) -> bool {
            entity == "product" && field == "price"
        }
    }
    let s = GqlSchema::build(&Hiding(shop())).unwrap();
    let sdl = s.sdl();
    assert!(
        !sdl.contains("price"),
        "hidden everywhere: filters, order, inputs"
    );
    let e = errors("{ productCollection { nodes { price } } }", json!({}));
    assert!(e.is_empty());
}

#[test]
fn roadmap_template_schema_builds() {
    let mut defs = Vec::new();
    for step in crate::templates::template("roadmap").unwrap() {
        if let crate::templates::Step::Define { entity, definition } = step {
            defs.push((entity, definition));
        }
    }
    let m = model(&defs);
    let s = GqlSchema::build(&m).unwrap();
    let sdl = s.sdl();
    for want in [
        "type Roadmap {",
        "  yAxisValues: [String!]!",
        "enum RoadmapYAxisType {",
        "  productType",
        "enum PhaseUniqueKey {",
        "type DashboardLink {",
    ] {
        assert!(sdl.contains(want), "missing {want:?}");
    }
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

/// An encrypted field is filtered by equality through its blind index (or only tested for
/// null without one), and is neither sorted nor grouped: the schema offers nothing else.
#[test]
fn encrypted_fields_offer_equality_only() {
    let m = model(&[(
        "patient",
        json!({"fields": [
            {"name": "name", "type": "text"},
            {"name": "ssn", "type": "text", "encrypted": true, "unique": true},
            {"name": "notes", "type": "long_text", "encrypted": true},
            {"name": "born", "type": "date", "encrypted": true, "index": true},
            {"name": "chart", "type": "json", "encrypted": true}]}),
    )]);
    let sdl = GqlSchema::build(&m).unwrap_or_else(|e| panic!("{e}")).sdl();
    let block = |start: &str| -> String {
        let from = sdl
            .find(start)
            .unwrap_or_else(|| panic!("{start} missing:\n{sdl}"));
        sdl[from..].split('}').next().unwrap().to_string()
    };
    let filter = block("input PatientFilter {");
    for want in [
        "ssn: StringEqualityFilter",
        "notes: EncryptedFilter",
        "born: DateEqualityFilter",
        "chart: EncryptedFilter",
        "name: StringFilter",
    ] {
        assert!(filter.contains(want), "{want} in {filter}");
    }
    let eq = block("input StringEqualityFilter {");
    assert!(
        eq.contains("eq: String") && eq.contains("notIn: [String!]"),
        "{eq}"
    );
    assert!(!eq.contains("like") && !eq.contains("gt"), "{eq}");
    let null_only = block("input EncryptedFilter {");
    assert!(
        null_only.contains("isNull") && !null_only.contains("eq"),
        "{null_only}"
    );
    let order = block("input PatientOrderBy {");
    assert!(
        order.contains("name") && !order.contains("ssn") && !order.contains("born"),
        "{order}"
    );
    let patient = block("type Patient {");
    assert!(
        patient.contains("chart: JSON") && !patient.contains("chart("),
        "{patient}"
    );
}
