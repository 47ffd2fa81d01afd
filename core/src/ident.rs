//! Names: slug validation, identifier and literal quoting, and derived names that always fit
//! PostgreSQL's NAMEDATALEN.
//!
//! Every name a caller gives is validated as a slug *and* still quoted wherever it is written into
//! SQL. Values never go into SQL text, except literals of DDL (defaults, CHECK bounds), which pass
//! through [`quote_literal`] only.

use crate::error::{name_list, Result, SqlState, UdmError};

/// PostgreSQL identifiers are at most NAMEDATALEN - 1 = 63 bytes.
pub const MAX_IDENT: usize = 63;
/// Tenant slugs become schema names and role names (`tenant_<slug>`).
pub const MAX_TENANT_SLUG: usize = 40;
/// Entity, field, rule and index slugs.
pub const MAX_SLUG: usize = 48;

/// What a slug names; used for limits and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlugKind {
    Tenant,
    Entity,
    Field,
    Rule,
    Index,
    Role,
}

impl SlugKind {
    pub fn noun(self) -> &'static str {
        match self {
            SlugKind::Tenant => "tenant",
            SlugKind::Entity => "entity",
            SlugKind::Field => "field",
            SlugKind::Rule => "rule",
            SlugKind::Index => "index",
            SlugKind::Role => "role",
        }
    }

    pub fn max_len(self) -> usize {
        match self {
            SlugKind::Tenant => MAX_TENANT_SLUG,
            _ => MAX_SLUG,
        }
    }
}

/// SQL key words that are reserved (or reserved-but-function-name) in PostgreSQL. udm quotes every
/// identifier, but a slug that needs quoting in hand-written SQL is a trap for plain-SQL users.
const RESERVED_WORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Columns every entity table has; fields may not use these names.
pub const SYSTEM_COLUMNS: &[&str] = &[
    "id",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
    "_version",
];

/// PostgreSQL's own system columns.
const PG_SYSTEM_COLUMNS: &[&str] = &["oid", "tableoid", "xmin", "xmax", "cmin", "cmax", "ctid"];

/// Schema names a tenant may never take.
const RESERVED_SCHEMAS: &[&str] = &["public", "udm", "information_schema"];

pub fn is_reserved_word(s: &str) -> bool {
    RESERVED_WORDS.binary_search(&s).is_ok()
}

/// Validates a slug: `[a-z][a-z0-9_]*`, no `__`, no trailing `_`, length-limited, not a reserved
/// word, and for fields not a system column.
pub fn validate_slug(kind: SlugKind, s: &str) -> Result<()> {
    let noun = kind.noun();
    let bad = |why: String| {
        UdmError::new(SqlState::InvalidName, format!("invalid {noun} name \"{}\": {why}", printable(s)))
            .hint(format!(
                "{} {noun} name starts with a lower-case letter and continues with lower-case letters, digits or single underscores, at most {} characters",
                if matches!(kind, SlugKind::Entity | SlugKind::Index) { "an" } else { "a" },
                kind.max_len()
            ))
    };
    if s.is_empty() {
        return Err(
            UdmError::new(SqlState::InvalidName, format!("{noun} name is empty"))
                .hint(format!("give the {noun} a name such as \"orders\"")),
        );
    }
    if s.len() > kind.max_len() {
        return Err(bad(format!(
            "it is {} characters long, the limit is {}",
            s.len(),
            kind.max_len()
        )));
    }
    let first = s.as_bytes()[0];
    if !first.is_ascii_lowercase() {
        return Err(bad("it must start with a lower-case letter".into()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(bad(format!(
            "it contains the character '{}'",
            c.escape_default()
        )));
    }
    if s.contains("__") {
        return Err(bad(
            "it contains a double underscore, which udm keeps for its own tables".into(),
        ));
    }
    if s.ends_with('_') {
        return Err(bad("it ends with an underscore".into()));
    }
    if s.starts_with("pg_") {
        return Err(bad(
            "names starting with \"pg_\" are reserved by PostgreSQL".into(),
        ));
    }
    if is_reserved_word(s) {
        return Err(UdmError::new(
            SqlState::InvalidName,
            format!("invalid {noun} name \"{s}\": it is a reserved SQL key word"),
        )
        .hint(format!(
            "choose another name, e.g. \"{s}_value\" or \"{noun}_{s}\""
        )));
    }
    match kind {
        SlugKind::Field if (SYSTEM_COLUMNS.contains(&s) || PG_SYSTEM_COLUMNS.contains(&s)) => {
            return Err(UdmError::new(
                SqlState::InvalidName,
                format!("invalid field name \"{s}\": it is a system column of every entity"),
            )
            .hint(format!(
                "system columns are {}; choose another name",
                name_list(SYSTEM_COLUMNS)
            )));
        }
        SlugKind::Tenant if RESERVED_SCHEMAS.contains(&s) => {
            return Err(UdmError::new(
                SqlState::InvalidName,
                format!("invalid tenant name \"{s}\": the schema \"{s}\" is reserved"),
            )
            .hint("choose another tenant name"));
        }
        SlugKind::Entity if PG_SYSTEM_COLUMNS.contains(&s) => {
            return Err(bad("it is a PostgreSQL system name".into()));
        }
        _ => {}
    }
    Ok(())
}

/// Shows at most 80 characters of a hostile string for an error message, control characters
/// escaped.
pub fn printable(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(80) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// Quotes an identifier, always: `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A call of a udm function as a user would type it, for hints: every argument is written as a
/// quoted literal, so a name from a caller can never be read as more SQL than one argument.
pub fn sql_call(function: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| quote_literal(&printable(a))).collect();
    format!("{function}({})", args.join(", "))
}

/// Quotes a string literal the way PostgreSQL's `quote_literal` does: quotes doubled, and when
/// there is a backslash, the `E'...'` form with backslashes doubled, so the result reads the same
/// whatever `standard_conforming_strings` is. NUL bytes cannot occur in PostgreSQL text and are
/// refused by callers before this point.
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A name derived from slugs (constraint, index, junction table) that always fits 63 bytes: when
/// the natural name is too long it is cut and a stable hash of the whole name is appended.
pub fn fit_name(natural: &str) -> String {
    if natural.len() <= MAX_IDENT {
        return natural.to_string();
    }
    let hash = fnv1a(natural.as_bytes());
    let mut cut = 54;
    while !natural.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}", &natural[..cut], (hash & 0xffff_ffff) as u32)
}

/// FNV-1a, 64 bit: a tiny, stable, dependency-free hash for derived names and cache keys.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Role that owns access to a tenant's schema.
/// The role of tenant `slug` in database `database`: `tenant_<slug>@<database>`. Roles are
/// shared by every database of a cluster; the database's name keeps the tenants of two databases
/// with the same slug (staging and production, two applications) apart. A name over 63 bytes
/// keeps as much of the database's name as fits, then `~` and 8 hex digits of its hash.
pub fn tenant_role(slug: &str, database: &str) -> String {
    let head = format!("tenant_{slug}@");
    let whole = format!("{head}{database}");
    if whole.len() <= MAX_IDENT {
        return whole;
    }
    let tag = format!("~{:08x}", (fnv1a(database.as_bytes()) & 0xffff_ffff) as u32);
    let mut room = MAX_IDENT.saturating_sub(head.len() + tag.len());
    while room > 0 && !database.is_char_boundary(room) {
        room -= 1;
    }
    format!("{head}{}{tag}", &database[..room.min(database.len())])
}

#[cfg(test)]
mod tests {

    #[test]
    fn hints_quote_every_argument() {
        assert_eq!(
            sql_call("udm_describe", &["product"]),
            "udm_describe('product')"
        );
        assert_eq!(
            sql_call("udm_drop_tenant", &["x'); DROP TABLE t; --", "a\\b"]),
            "udm_drop_tenant('x''); DROP TABLE t; --', E'a\\\\b')"
        );
    }

    use super::*;

    #[test]
    fn reserved_words_are_sorted_for_binary_search() {
        let mut sorted = RESERVED_WORDS.to_vec();
        sorted.sort();
        assert_eq!(sorted, RESERVED_WORDS);
    }

    #[test]
    fn accepts_good_slugs() {
        for s in ["a", "product", "category_id", "x1", "a_b_c", "order_line"] {
            validate_slug(SlugKind::Entity, s).unwrap();
        }
        validate_slug(SlugKind::Field, &"a".repeat(48)).unwrap();
        validate_slug(SlugKind::Tenant, &"t".repeat(40)).unwrap();
    }

    #[test]
    fn refuses_bad_slugs_with_invalid_name() {
        let cases = [
            ("", "empty"),
            ("Product", "lower-case letter"),
            ("1abc", "lower-case letter"),
            ("_x", "lower-case letter"),
            ("a-b", "character '-'"),
            ("a b", "character ' '"),
            ("a\"b", "character '\\\"'"),
            ("a__b", "double underscore"),
            ("ab_", "ends with an underscore"),
            ("pg_thing", "pg_"),
            ("select", "reserved SQL key word"),
            ("order", "reserved SQL key word"),
            ("prodüct", "character"),
        ];
        for (s, why) in cases {
            let e = validate_slug(SlugKind::Entity, s).unwrap_err();
            assert_eq!(e.state, SqlState::InvalidName, "{s}");
            assert!(e.message.contains(why), "{s}: {}", e.message);
            assert!(e.hint.is_some(), "{s} has a hint");
        }
    }

    #[test]
    fn refuses_too_long() {
        let e = validate_slug(SlugKind::Entity, &"a".repeat(49)).unwrap_err();
        assert!(e.message.contains("limit is 48"));
        let e = validate_slug(SlugKind::Tenant, &"a".repeat(41)).unwrap_err();
        assert!(e.message.contains("limit is 40"));
    }

    #[test]
    fn refuses_system_columns_as_fields_only() {
        for s in ["id", "created_at", "updated_by", "ctid", "xmin"] {
            let e = validate_slug(SlugKind::Field, s).unwrap_err();
            assert!(e.message.contains("system column"), "{s}");
        }
        validate_slug(SlugKind::Entity, "created_at").unwrap();
    }

    #[test]
    fn refuses_reserved_schemas_for_tenants() {
        for s in ["public", "udm", "information_schema"] {
            assert!(validate_slug(SlugKind::Tenant, s).is_err(), "{s}");
        }
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(
            printable("it's \"x\""),
            "it's \"x\"",
            "quotes stay readable"
        );
        assert_eq!(printable(&"x".repeat(100)).chars().count(), 81);
    }

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
    }

    #[test]
    fn quote_literal_matches_postgres() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(
            quote_literal("'; drop table x; --"),
            "'''; drop table x; --'"
        );
    }

    #[test]
    fn fit_name_keeps_short_and_hashes_long() {
        assert_eq!(fit_name("product_name_key"), "product_name_key");
        let long = format!("{}_{}_check", "e".repeat(48), "f".repeat(48));
        let fitted = fit_name(&long);
        assert!(fitted.len() <= MAX_IDENT);
        assert_eq!(fitted, fit_name(&long), "stable");
        let other = format!("{}_{}_check", "e".repeat(48), "g".repeat(48));
        assert_ne!(fit_name(&other), fitted, "distinct names stay distinct");
    }

    #[test]
    fn tenant_roles_name_their_database_and_fit() {
        assert_eq!(tenant_role("acme", "shop"), "tenant_acme@shop");
        let slug = "a".repeat(40);
        let long = tenant_role(&slug, "a_database_with_a_rather_long_name_indeed");
        assert!(long.len() <= MAX_IDENT, "{long}");
        assert!(long.starts_with(&format!("tenant_{slug}@a_data")), "{long}");
        assert_ne!(
            long,
            tenant_role(&slug, "a_database_with_a_rather_long_name_indeed_too"),
            "two long names stay apart"
        );
        assert!(tenant_role("x", &"ü".repeat(40)).len() <= MAX_IDENT);
    }
}
