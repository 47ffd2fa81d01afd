//! GraphQL names of udm's entities and fields.
//!
//! # The rule: bijective camelCase
//!
//! udm slugs are `[a-z][a-z0-9_]*` without `__` and without a trailing `_`. Their GraphQL names:
//!
//! * **fields** (and argument/input names): every `_` followed by a letter is dropped and the
//!   letter upper-cased; a `_` before a digit stays (`x_1` stays `x_1`, so it cannot collide with
//!   the slug `x1`);
//! * **types**: the same, with the first letter upper-cased.
//!
//! Slugs never contain upper-case letters, so the mapping is a bijection and its inverse is
//! "every upper-case letter `X` becomes `_x`" ([`slug_of`]): any GraphQL name says which slug
//! it stands for. The names depend only on the slug itself, never on other entities, so adding
//! an entity or a field never renames an existing one.
//!
//! | udm | GraphQL | note |
//! |---|---|---|
//! | entity `product` | type `Product`, root fields `product`, `productCollection` | no pluralisation |
//! | entity `dashboard_link` | type `DashboardLink`, root field `dashboardLink` | |
//! | field `y_axis_values` | `yAxisValues` | the words of udm's roadmap messages |
//! | field `x_1` / `x1` | `x_1` / `x1` | distinct |
//! | field `v2_api` | `v2Api` | |
//! | system column `created_at` | `createdAt` | |
//! | system column `_version` | `_version` | kept: udm's optimistic-lock word |
//! | relation `category_id` → category | `categoryId: UUID` + `category: Category` | [`relation_names`] |
//! | relation `owner` → user record | `ownerId: UUID` + `owner: …` | `_id` added for the id |
//! | reverse of `product.category_id` on `Category` | `productCollection` | the field is `<target>_id` |
//! | reverse of `category.parent_id` on `Category` | `categoryCollectionByParentId` | [`reverse_name`] |
//! | many-to-many `tags` on `Product` | `tags: TagConnection!`; on `Tag`: `productCollectionByTags` | |
//! | select `status` of `product` | enum `ProductStatus` | values verbatim when all are names |
//! | reference `subject` of `comment` | union `CommentSubject`, `subjectRef: RecordRef` | |
//!
//! Per entity type `P` the schema derives `PConnection`, `PEdge`, `PFilter`, `PListFilter`,
//! `POrderBy`, `PGroupBy`, `PGroup`, `PNumbers`, `PValues`, `PInsertInput`, `PPatch`,
//! `PUniqueKey`, `PField`, `PSelectField`, `PMutationResult`, `PChange`, `PVersion`,
//! `PSnapshot`, `PKanban`, `PKanbanColumn`, `PTreeNode`, `PGanttItem`, `PGantt`, and an enum
//! `P<Field>` per select field. An entity whose type name is one of udm's own types or ends
//! with a derived suffix (`…Connection`, `…Filter`, …) would collide: [`type_name_conflict`]
//! says so, and the schema leaves it out with a warning.

/// The camelCase name of a slug (fields, arguments, root fields).
pub fn camel(slug: &str) -> String {
    let mut out = String::with_capacity(slug.len());
    let mut chars = slug.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('_', Some(n)) if n.is_ascii_lowercase() => {
                out.push(n.to_ascii_uppercase());
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// The PascalCase name of a slug (types).
pub fn pascal(slug: &str) -> String {
    let c = camel(slug);
    let mut it = c.chars();
    match it.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + it.as_str(),
        None => c,
    }
}

/// The slug of a name made by [`camel`] or [`pascal`]: every upper-case letter `X` becomes `_x`
/// (a leading one just `x`).
pub fn slug_of(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a GraphQL Name (`/[_A-Za-z][_0-9A-Za-z]*/`).
pub fn is_name(v: &str) -> bool {
    let mut it = v.chars();
    matches!(it.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && it.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether a select value can be an enum value as it is: a Name, not `true`/`false`/`null`, not
/// starting with `__` (reserved for introspection).
pub fn is_enum_value(v: &str) -> bool {
    is_name(v) && !matches!(v, "true" | "false" | "null") && !v.starts_with("__")
}

/// The names of a many-to-one relation field: (id field, object field). `category_id` gives
/// (`categoryId`, `category`); `owner` gives (`ownerId`, `owner`).
pub fn relation_names(field: &str) -> (String, String) {
    match field.strip_suffix("_id").filter(|b| !b.is_empty()) {
        Some(base) => (camel(field), camel(base)),
        None => (camel(&format!("{field}_id")), camel(field)),
    }
}

/// The name, on the target type, of the connection of `source` records whose relation `field`
/// points there: `<source>Collection` when the field is a many-to-one named `<target>_id`, else
/// `<source>CollectionBy<Field>`.
pub fn reverse_name(source: &str, field: &str, many: bool, target: &str) -> String {
    if !many && field == format!("{target}_id") {
        format!("{}Collection", camel(source))
    } else {
        format!("{}CollectionBy{}", camel(source), pascal(field))
    }
}

/// Types udm's schema defines itself (besides the per-entity ones).
pub const UDM_TYPES: &[&str] = &[
    "Query",
    "Mutation",
    "Subscription",
    "PageInfo",
    "RecordRef",
    "RecordRefInput",
    "DropdownItem",
    "BreadcrumbItem",
    "RollbackResult",
    "OrderDirection",
    "GroupKey",
    "ChangeAction",
    "Cursor",
    "UUID",
    "Date",
    "DateTime",
    "Time",
    "Duration",
    "Decimal",
    "BigInt",
    "JSON",
    "JSONFilter",
    "JSONOrderBy",
    "JSONGroupBy",
];

/// Suffixes of the types derived from an entity type.
pub const DERIVED_SUFFIXES: &[&str] = &[
    "Connection",
    "Edge",
    "Filter",
    "ListFilter",
    "OrderBy",
    "GroupBy",
    "Group",
    "Numbers",
    "Values",
    "InsertInput",
    "Patch",
    "UniqueKey",
    "Field",
    "SelectField",
    "MutationResult",
    "Change",
    "Version",
    "Snapshot",
    "Kanban",
    "KanbanColumn",
    "TreeNode",
    "GanttItem",
    "Gantt",
];

/// Why an entity's type name cannot be used, if it cannot: it is one of udm's types, a scalar
/// filter (`StringFilter`), or ends with a derived suffix (so `product_connection` next to
/// `product` would collide with `ProductConnection`). `udm_define_entity` can call this to
/// refuse such slugs up front.
pub fn type_name_conflict(slug: &str) -> Option<String> {
    let p = pascal(slug);
    if UDM_TYPES.contains(&p.as_str()) || p.starts_with("__") {
        return Some(format!(
            "entity \"{slug}\": its GraphQL type name {p} is one of udm's own types"
        ));
    }
    DERIVED_SUFFIXES
        .iter()
        .find(|s| p.ends_with(*s) && p.len() > s.len())
        .map(|s| {
            format!("entity \"{slug}\": its GraphQL type name {p} ends with \"{s}\", which udm's types of other entities use")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bijective_on_slugs() {
        for s in [
            "product",
            "category_id",
            "y_axis_values",
            "x_1",
            "x1",
            "a_b_c",
            "dashboard_link",
            "v2_api",
            "a1_b2_3c",
        ] {
            assert_eq!(slug_of(&camel(s)), s, "{s}");
            assert_eq!(slug_of(&pascal(s)), s, "{s}");
        }
        assert_eq!(camel("y_axis_values"), "yAxisValues");
        assert_eq!(camel("x_1"), "x_1");
        assert_ne!(camel("x_1"), camel("x1"));
        assert_eq!(pascal("dashboard_link"), "DashboardLink");
    }

    #[test]
    fn relations_and_reverses() {
        assert_eq!(
            relation_names("category_id"),
            ("categoryId".into(), "category".into())
        );
        assert_eq!(relation_names("owner"), ("ownerId".into(), "owner".into()));
        assert_eq!(
            reverse_name("product", "category_id", false, "category"),
            "productCollection"
        );
        assert_eq!(
            reverse_name("category", "parent_id", false, "category"),
            "categoryCollectionByParentId"
        );
        assert_eq!(
            reverse_name("product", "tags", true, "tag"),
            "productCollectionByTags"
        );
    }

    #[test]
    fn enum_values_and_conflicts() {
        assert!(is_enum_value("in_progress") && is_enum_value("productType"));
        assert!(!is_enum_value("In progress") && !is_enum_value("2027-Q1"));
        assert!(!is_enum_value("null") && !is_enum_value("__x") && !is_enum_value(""));
        assert!(type_name_conflict("product").is_none());
        assert!(type_name_conflict("page_info").is_some());
        assert!(type_name_conflict("product_connection").is_some());
        assert!(type_name_conflict("connection").is_none());
        assert!(type_name_conflict("string_filter").is_some());
    }
}
