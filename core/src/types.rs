//! The field types udm offers, the PostgreSQL type each becomes, the view types a UI can render it
//! with, and the options each accepts.

use crate::error::{name_list, Result, SqlState, UdmError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    Text,
    LongText,
    Integer,
    BigInt,
    Decimal,
    Float,
    Boolean,
    Date,
    DateTime,
    Time,
    Duration,
    Uuid,
    Json,
    Email,
    Url,
    Phone,
    Select,
    MultiSelect,
    Tags,
    Currency,
    Percent,
    Rating,
    Color,
    AutoNumber,
    Password,
    File,
    /// Many-to-one (a foreign key column) or, with `many`, many-to-many (a junction table).
    Relation,
    /// Polymorphic reference: `(entity, id)` stored as the composite type `udm.ref`.
    Reference,
    /// One of udm's global application users (a foreign key to `udm.app_user`).
    User,
    /// An array of a scalar type.
    Array(Box<FieldType>),
}

/// Broad families that decide which validation options apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Text,
    Number,
    Temporal,
    Boolean,
    Json,
    List,
    Relation,
    Other,
}

pub struct TypeInfo {
    pub name: &'static str,
    pub family: Family,
    pub view_types: &'static [&'static str],
    /// Options beyond the common ones (name, type, label, description, required, unique,
    /// default, index, messages).
    pub options: &'static [&'static str],
    pub description: &'static str,
}

const TEXT_OPTS: &[&str] = &["min_length", "max_length", "pattern"];
const NUM_OPTS: &[&str] = &["min", "max"];

pub const TYPES: &[TypeInfo] = &[
    TypeInfo {
        name: "text",
        family: Family::Text,
        view_types: &["text", "textarea"],
        options: TEXT_OPTS,
        description: "short text",
    },
    TypeInfo {
        name: "long_text",
        family: Family::Text,
        view_types: &["textarea", "rich_text", "markdown"],
        options: TEXT_OPTS,
        description: "long text, notes, documents",
    },
    TypeInfo {
        name: "integer",
        family: Family::Number,
        view_types: &["number", "slider"],
        options: NUM_OPTS,
        description: "32-bit whole number",
    },
    TypeInfo {
        name: "bigint",
        family: Family::Number,
        view_types: &["number"],
        options: NUM_OPTS,
        description: "64-bit whole number",
    },
    TypeInfo {
        name: "decimal",
        family: Family::Number,
        view_types: &["number"],
        options: &["min", "max", "precision", "scale"],
        description: "exact decimal number (numeric(precision, scale))",
    },
    TypeInfo {
        name: "float",
        family: Family::Number,
        view_types: &["number"],
        options: NUM_OPTS,
        description: "double precision floating point",
    },
    TypeInfo {
        name: "boolean",
        family: Family::Boolean,
        view_types: &["checkbox", "switch"],
        options: &[],
        description: "true or false",
    },
    TypeInfo {
        name: "date",
        family: Family::Temporal,
        view_types: &["date", "calendar", "gantt"],
        options: NUM_OPTS,
        description: "calendar date",
    },
    TypeInfo {
        name: "datetime",
        family: Family::Temporal,
        view_types: &["datetime", "calendar", "gantt"],
        options: NUM_OPTS,
        description: "point in time (timestamptz)",
    },
    TypeInfo {
        name: "time",
        family: Family::Temporal,
        view_types: &["time"],
        options: NUM_OPTS,
        description: "time of day",
    },
    TypeInfo {
        name: "duration",
        family: Family::Temporal,
        view_types: &["duration"],
        options: NUM_OPTS,
        description: "length of time (interval)",
    },
    TypeInfo {
        name: "uuid",
        family: Family::Other,
        view_types: &["text"],
        options: &[],
        description: "UUID",
    },
    TypeInfo {
        name: "json",
        family: Family::Json,
        view_types: &["json", "code"],
        options: &[],
        description: "JSON document (jsonb)",
    },
    TypeInfo {
        name: "email",
        family: Family::Text,
        view_types: &["email", "text"],
        options: TEXT_OPTS,
        description: "email address",
    },
    TypeInfo {
        name: "url",
        family: Family::Text,
        view_types: &["url", "link"],
        options: TEXT_OPTS,
        description: "http or https URL",
    },
    TypeInfo {
        name: "phone",
        family: Family::Text,
        view_types: &["phone"],
        options: TEXT_OPTS,
        description: "phone number",
    },
    TypeInfo {
        name: "select",
        family: Family::Text,
        view_types: &["select", "radio", "kanban"],
        options: &["values"],
        description: "one of a list of values",
    },
    TypeInfo {
        name: "multi_select",
        family: Family::List,
        view_types: &["multi_select", "checkbox_group"],
        options: &["values", "min_items", "max_items"],
        description: "several of a list of values",
    },
    TypeInfo {
        name: "tags",
        family: Family::List,
        view_types: &["tags"],
        options: &["min_items", "max_items"],
        description: "free-form labels, unique",
    },
    TypeInfo {
        name: "currency",
        family: Family::Number,
        view_types: &["currency", "number"],
        options: &["min", "max", "precision", "scale", "currency_code"],
        description: "money amount (numeric, default 19,2)",
    },
    TypeInfo {
        name: "percent",
        family: Family::Number,
        view_types: &["percent", "progress"],
        options: &["min", "max", "precision", "scale"],
        description: "percentage",
    },
    TypeInfo {
        name: "rating",
        family: Family::Number,
        view_types: &["rating", "stars"],
        options: &["max"],
        description: "rating from 0 to max (default 5)",
    },
    TypeInfo {
        name: "color",
        family: Family::Text,
        view_types: &["color"],
        options: &[],
        description: "color as #RRGGBB",
    },
    TypeInfo {
        name: "auto_number",
        family: Family::Number,
        view_types: &["number", "readonly"],
        options: &[],
        description: "number assigned automatically, unique",
    },
    TypeInfo {
        name: "password",
        family: Family::Other,
        view_types: &["password"],
        options: &["min_length"],
        description: "secret stored only as a bcrypt hash, never returned",
    },
    TypeInfo {
        name: "file",
        family: Family::Json,
        view_types: &["file", "image"],
        options: &["max_size", "accept"],
        description: "file metadata object {name, size, mime_type, url}",
    },
    TypeInfo {
        name: "relation",
        family: Family::Relation,
        view_types: &["relation", "dropdown", "lookup"],
        options: &["target", "on_delete", "many", "cardinality"],
        description: "link to a record of an entity (many-to-one) or several (many-to-many)",
    },
    TypeInfo {
        name: "reference",
        family: Family::Relation,
        view_types: &["reference"],
        options: &["targets", "on_delete"],
        description: "link to a record of one of several entities (polymorphic)",
    },
    TypeInfo {
        name: "user",
        family: Family::Relation,
        view_types: &["user", "avatar", "dropdown"],
        options: &["on_delete"],
        description: "one of udm's application users (udm_create_user), shared by all tenants",
    },
    TypeInfo {
        name: "array",
        family: Family::List,
        view_types: &["list"],
        options: &["items", "min_items", "max_items", "unique_items"],
        description: "list of a scalar type",
    },
];

/// Scalar types an array may hold.
pub const ARRAY_ITEM_TYPES: &[&str] = &[
    "text", "integer", "bigint", "decimal", "float", "boolean", "date", "datetime", "time", "uuid",
    "email", "url",
];

/// Common options every field accepts.
pub const COMMON_OPTIONS: &[&str] = &[
    "name",
    "type",
    "label",
    "description",
    "required",
    "unique",
    "default",
    "index",
    "messages",
    "critical",
    "audit",
    "encrypted",
];

/// Other names accepted for a type (`"type": "string"` is a `text` field): the definition
/// records the type's own name. `udm_field_types()` lists them with their type.
pub const ALIASES: &[(&str, &str)] = &[
    ("string", "text"),
    ("int", "integer"),
    ("numeric", "decimal"),
    ("number", "decimal"),
    ("bool", "boolean"),
    ("timestamp", "datetime"),
    ("polymorphic", "reference"),
];

/// The aliases of type `name`.
pub fn aliases_of(name: &str) -> Vec<&'static str> {
    ALIASES
        .iter()
        .filter(|(_, t)| *t == name)
        .map(|(a, _)| *a)
        .collect()
}

impl FieldType {
    pub fn parse(s: &str) -> Result<FieldType> {
        if let Some(inner) = s.strip_suffix("[]") {
            let item = FieldType::parse(inner)?;
            return FieldType::array_of(item);
        }
        let s = ALIASES.iter().find(|(a, _)| *a == s).map_or(s, |(_, t)| *t);
        Ok(match s {
            "text" => FieldType::Text,
            "long_text" => FieldType::LongText,
            "integer" => FieldType::Integer,
            "bigint" => FieldType::BigInt,
            "decimal" => FieldType::Decimal,
            "float" => FieldType::Float,
            "boolean" => FieldType::Boolean,
            "date" => FieldType::Date,
            "datetime" => FieldType::DateTime,
            "time" => FieldType::Time,
            "duration" => FieldType::Duration,
            "uuid" => FieldType::Uuid,
            "json" => FieldType::Json,
            "email" => FieldType::Email,
            "url" => FieldType::Url,
            "phone" => FieldType::Phone,
            "select" => FieldType::Select,
            "multi_select" => FieldType::MultiSelect,
            "tags" => FieldType::Tags,
            "currency" => FieldType::Currency,
            "percent" => FieldType::Percent,
            "rating" => FieldType::Rating,
            "color" => FieldType::Color,
            "auto_number" => FieldType::AutoNumber,
            "password" => FieldType::Password,
            "file" => FieldType::File,
            "relation" => FieldType::Relation,
            "reference" => FieldType::Reference,
            "user" => FieldType::User,
            "array" => return Err(UdmError::invalid(
                "type \"array\" needs \"items\", the type of its elements",
            )
            .hint(
                "write {\"type\": \"array\", \"items\": \"integer\"} or {\"type\": \"integer[]\"}",
            )),
            other => {
                return Err(UdmError::new(
                    SqlState::UndefinedObject,
                    format!("unknown field type \"{}\"", crate::ident::printable(other)),
                )
                .hint(format!(
                    "field types are {}",
                    name_list(TYPES.iter().map(|t| t.name))
                )))
            }
        })
    }

    pub fn array_of(item: FieldType) -> Result<FieldType> {
        let name = item.name();
        if !ARRAY_ITEM_TYPES.contains(&name.as_str()) {
            return Err(
                UdmError::invalid(format!("an array cannot hold \"{name}\" values")).hint(format!(
                    "array element types are {}",
                    name_list(ARRAY_ITEM_TYPES)
                )),
            );
        }
        Ok(FieldType::Array(Box::new(item)))
    }

    /// The type's name as written in definitions (`integer[]` for arrays).
    pub fn name(&self) -> String {
        match self {
            FieldType::Array(item) => format!("{}[]", item.name()),
            other => other.info().name.to_string(),
        }
    }

    pub fn info(&self) -> &'static TypeInfo {
        let name = match self {
            FieldType::Text => "text",
            FieldType::LongText => "long_text",
            FieldType::Integer => "integer",
            FieldType::BigInt => "bigint",
            FieldType::Decimal => "decimal",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Time => "time",
            FieldType::Duration => "duration",
            FieldType::Uuid => "uuid",
            FieldType::Json => "json",
            FieldType::Email => "email",
            FieldType::Url => "url",
            FieldType::Phone => "phone",
            FieldType::Select => "select",
            FieldType::MultiSelect => "multi_select",
            FieldType::Tags => "tags",
            FieldType::Currency => "currency",
            FieldType::Percent => "percent",
            FieldType::Rating => "rating",
            FieldType::Color => "color",
            FieldType::AutoNumber => "auto_number",
            FieldType::Password => "password",
            FieldType::File => "file",
            FieldType::Relation => "relation",
            FieldType::Reference => "reference",
            FieldType::User => "user",
            FieldType::Array(_) => "array",
        };
        TYPES
            .iter()
            .find(|t| t.name == name)
            .expect("every type has info")
    }

    pub fn family(&self) -> Family {
        self.info().family
    }

    /// The PostgreSQL base type (without numeric precision, which depends on field options).
    pub fn base_pg_type(&self) -> String {
        match self {
            FieldType::Text
            | FieldType::LongText
            | FieldType::Email
            | FieldType::Url
            | FieldType::Phone
            | FieldType::Select
            | FieldType::Color
            | FieldType::Password => "text".into(),
            FieldType::Integer => "integer".into(),
            FieldType::BigInt | FieldType::AutoNumber => "bigint".into(),
            FieldType::Decimal | FieldType::Currency | FieldType::Percent => "numeric".into(),
            FieldType::Float => "double precision".into(),
            FieldType::Boolean => "boolean".into(),
            FieldType::Date => "date".into(),
            FieldType::DateTime => "timestamp with time zone".into(),
            FieldType::Time => "time without time zone".into(),
            FieldType::Duration => "interval".into(),
            FieldType::Uuid | FieldType::Relation | FieldType::User => "uuid".into(),
            FieldType::Json | FieldType::File => "jsonb".into(),
            FieldType::MultiSelect | FieldType::Tags => "text[]".into(),
            FieldType::Rating => "smallint".into(),
            FieldType::Reference => "udm.ref".into(),
            FieldType::Array(item) => format!("{}[]", item.base_pg_type()),
        }
    }

    /// Types whose values are compared as numbers.
    pub fn is_numeric(&self) -> bool {
        self.family() == Family::Number
    }

    pub fn is_text_like(&self) -> bool {
        self.family() == Family::Text
    }

    /// Whether a UNIQUE constraint makes sense on this type.
    /// Types whose values udm can encrypt (`"encrypted": true`): text-like, JSON and date-like
    /// ones, all stored as text (the sealed form of their canonical text, see `sealed_form`).
    pub fn can_be_encrypted(&self) -> bool {
        matches!(
            self,
            FieldType::Text
                | FieldType::LongText
                | FieldType::Email
                | FieldType::Url
                | FieldType::Phone
                | FieldType::Json
                | FieldType::Date
                | FieldType::DateTime
                | FieldType::Time
                | FieldType::Duration
        )
    }

    /// For an encrypted field: the SQL (over `$1`, its value as written, as text) of the canonical
    /// text that is sealed and blind-indexed (whatever the session's DateStyle or TimeZone), and
    /// the type its plaintext is read back as. None for text-like types (sealed as written).
    pub fn sealed_form(&self) -> Option<(&'static str, &'static str)> {
        match self {
            FieldType::Json => Some(("($1)::jsonb::text", "jsonb")),
            FieldType::Date => Some(("to_char(($1)::date, 'YYYY-MM-DD')", "date")),
            FieldType::DateTime => Some((
                "to_char(($1)::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00'",
                "timestamp with time zone",
            )),
            FieldType::Time => Some(("to_char(($1)::time, 'HH24:MI:SS.US')", "time without time zone")),
            // ISO 8601 with designators, which PostgreSQL reads whatever the IntervalStyle:
            // months, days and seconds kept apart as an interval keeps them
            FieldType::Duration => Some((
                "format('P%sM%sDT%sS', (extract(year FROM ($1)::interval) * 12 + extract(month FROM ($1)::interval))::bigint, \
                 extract(day FROM ($1)::interval)::bigint, \
                 extract(epoch FROM ($1)::interval - date_trunc('day', ($1)::interval)))",
                "interval",
            )),
            _ => None,
        }
    }

    pub fn can_be_unique(&self) -> bool {
        !matches!(
            self,
            FieldType::Json
                | FieldType::File
                | FieldType::Password
                | FieldType::MultiSelect
                | FieldType::Tags
                | FieldType::Array(_)
                | FieldType::Boolean
                | FieldType::AutoNumber
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_24_types_each_with_info_and_pg_type() {
        assert!(TYPES.len() >= 24, "{} types", TYPES.len());
        for t in TYPES {
            if t.name == "array" {
                continue;
            }
            let ft = FieldType::parse(t.name).unwrap();
            assert_eq!(ft.info().name, t.name);
            assert!(!ft.base_pg_type().is_empty());
            assert!(!t.view_types.is_empty());
        }
    }

    #[test]
    fn arrays_of_scalars() {
        let t = FieldType::parse("integer[]").unwrap();
        assert_eq!(t, FieldType::Array(Box::new(FieldType::Integer)));
        assert_eq!(t.base_pg_type(), "integer[]");
        assert_eq!(t.name(), "integer[]");
        assert_eq!(
            FieldType::parse("datetime[]").unwrap().base_pg_type(),
            "timestamp with time zone[]"
        );
        let e = FieldType::parse("json[]").unwrap_err();
        assert!(e.message.contains("cannot hold \"json\""), "{}", e.message);
        assert!(FieldType::parse("integer[][]").is_err());
    }

    #[test]
    fn unknown_type_lists_the_known_ones() {
        let e = FieldType::parse("strnig").unwrap_err();
        assert_eq!(e.state, SqlState::UndefinedObject);
        assert!(e.message.contains("\"strnig\""));
        assert!(e.hint.unwrap().contains("\"long_text\""));
    }

    #[test]
    fn aliases() {
        assert_eq!(FieldType::parse("string").unwrap(), FieldType::Text);
        assert_eq!(FieldType::parse("numeric").unwrap(), FieldType::Decimal);
        assert_eq!(
            FieldType::parse("polymorphic").unwrap(),
            FieldType::Reference
        );
    }
}
