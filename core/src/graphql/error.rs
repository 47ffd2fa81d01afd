//! GraphQL errors: message, `locations`, `path`, and `extensions` with a GraphQL code and a
//! SQLSTATE, plus the response document they go into.

use crate::error::{SqlState, UdmError};
use apollo_compiler::parser::{SourceMap, SourceSpan};
use serde_json::{json, Map, Value};

/// One step of a response path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A place in the document: line and column, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// The `extensions.code` of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The document does not parse (or breaks a size limit while parsing).
    ParseFailed,
    /// A validation rule of the spec (or of udm) does not hold.
    ValidationFailed,
    /// A variable or argument value is wrong.
    BadUserInput,
    /// A limit (`udm.graphql_*`) was exceeded.
    LimitExceeded,
    /// Introspection is switched off (`udm.graphql_introspection`).
    IntrospectionDisabled,
    /// The database refused the statement (constraint, rule, permission, lock).
    DatabaseError,
    /// The reader may not do or see this.
    Forbidden,
    /// A bug in udm.
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ParseFailed => "GRAPHQL_PARSE_FAILED",
            Code::ValidationFailed => "GRAPHQL_VALIDATION_FAILED",
            Code::BadUserInput => "BAD_USER_INPUT",
            Code::LimitExceeded => "LIMIT_EXCEEDED",
            Code::IntrospectionDisabled => "INTROSPECTION_DISABLED",
            Code::DatabaseError => "DATABASE_ERROR",
            Code::Forbidden => "FORBIDDEN",
            Code::Internal => "INTERNAL_SERVER_ERROR",
        }
    }

    /// The code of a udm error, by its SQLSTATE class.
    pub fn of(state: SqlState) -> Code {
        match state {
            SqlState::ProgramLimitExceeded => Code::LimitExceeded,
            SqlState::InsufficientPrivilege => Code::Forbidden,
            SqlState::Internal | SqlState::DataCorrupted => Code::Internal,
            _ => Code::BadUserInput,
        }
    }
}

/// A GraphQL error (spec section 7.1.2).
#[derive(Debug, Clone, PartialEq)]
pub struct GqlError {
    pub message: String,
    pub locations: Vec<Location>,
    pub path: Vec<PathSeg>,
    pub code: Code,
    /// The five-character SQLSTATE (`54000`, `22023`, …).
    pub sqlstate: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl GqlError {
    pub fn new(code: Code, state: SqlState, message: impl Into<String>) -> Self {
        GqlError {
            message: message.into(),
            locations: vec![],
            path: vec![],
            code,
            sqlstate: state.code().to_string(),
            detail: None,
            hint: None,
        }
    }

    /// A validation error (`GRAPHQL_VALIDATION_FAILED`, 42601).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(Code::ValidationFailed, SqlState::SyntaxError, message)
    }

    /// A wrong input value (`BAD_USER_INPUT`, 22023).
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Code::BadUserInput, SqlState::InvalidParameterValue, message)
    }

    /// A limit exceeded (`LIMIT_EXCEEDED`, 54000); the message names the setting.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(Code::LimitExceeded, SqlState::ProgramLimitExceeded, message)
    }

    /// A bug in udm (`INTERNAL_SERVER_ERROR`, XX000).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, SqlState::Internal, message)
    }

    /// An error the database raised while running a statement of this field (the surface
    /// passes SQLSTATE, message, detail and hint of the PostgreSQL error).
    pub fn database(
        sqlstate: &str,
        message: &str,
        detail: Option<&str>,
        hint: Option<&str>,
    ) -> Self {
        let code = match sqlstate {
            "54000" => Code::LimitExceeded,
            "42501" => Code::Forbidden,
            s if s.starts_with("XX") => Code::Internal,
            _ => Code::DatabaseError,
        };
        GqlError {
            message: message.to_string(),
            locations: vec![],
            path: vec![],
            code,
            sqlstate: sqlstate.to_string(),
            detail: detail.map(str::to_string),
            hint: hint.map(str::to_string),
        }
    }

    pub fn at(mut self, loc: Option<Location>) -> Self {
        self.locations.extend(loc);
        self
    }

    /// Sets the response path (when none is set yet).
    pub fn with_path(mut self, path: &[PathSeg]) -> Self {
        if self.path.is_empty() {
            self.path = path.to_vec();
        }
        self
    }

    /// The error as the response's `errors` entry.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("message".into(), json!(self.message));
        if !self.locations.is_empty() {
            let locs = self
                .locations
                .iter()
                .map(|l| json!({"line": l.line, "column": l.column}));
            o.insert("locations".into(), Value::Array(locs.collect()));
        }
        if !self.path.is_empty() {
            let path = self.path.iter().map(|p| match p {
                PathSeg::Key(k) => json!(k),
                PathSeg::Index(i) => json!(i),
            });
            o.insert("path".into(), Value::Array(path.collect()));
        }
        let mut ext = Map::new();
        ext.insert("code".into(), json!(self.code.as_str()));
        ext.insert("sqlstate".into(), json!(self.sqlstate));
        if let Some(d) = &self.detail {
            ext.insert("detail".into(), json!(d));
        }
        if let Some(h) = &self.hint {
            ext.insert("hint".into(), json!(h));
        }
        o.insert("extensions".into(), Value::Object(ext));
        Value::Object(o)
    }
}

impl From<UdmError> for GqlError {
    fn from(e: UdmError) -> Self {
        GqlError {
            message: e.message,
            locations: vec![],
            path: vec![],
            code: Code::of(e.state),
            sqlstate: e.state.code().to_string(),
            detail: e.detail,
            hint: e.hint,
        }
    }
}

/// The location of a span in the document.
pub fn location(span: Option<SourceSpan>, sources: &SourceMap) -> Option<Location> {
    span.and_then(|s| s.line_column(sources))
        .map(|lc| Location {
            line: lc.line,
            column: lc.column,
        })
}

/// A response document: `{"data": …, "errors": […]}` (`errors` only when there are some;
/// `data` absent when the request failed before execution, spec 7.1.1).
pub fn response(data: Option<Value>, errors: &[GqlError], extensions: Option<Value>) -> Value {
    let mut o = Map::new();
    if !errors.is_empty() {
        o.insert(
            "errors".into(),
            errors.iter().map(GqlError::to_json).collect(),
        );
    }
    if let Some(d) = data {
        o.insert("data".into(), d);
    }
    if let Some(e) = extensions {
        o.insert("extensions".into(), e);
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_locations_paths_and_codes() {
        let e = GqlError::limit("too deep")
            .at(Some(Location { line: 2, column: 5 }))
            .with_path(&[PathSeg::Key("a".into()), PathSeg::Index(3)]);
        assert_eq!(
            e.to_json(),
            json!({"message": "too deep", "locations": [{"line": 2, "column": 5}], "path": ["a", 3],
                   "extensions": {"code": "LIMIT_EXCEEDED", "sqlstate": "54000"}})
        );
        let u: GqlError = UdmError::invalid("bad").hint("h").into();
        assert_eq!(
            (u.code, u.sqlstate.as_str(), u.hint.as_deref()),
            (Code::BadUserInput, "22023", Some("h"))
        );
        let d = GqlError::database("23505", "taken", Some("d"), None);
        assert_eq!(d.code, Code::DatabaseError);
        assert_eq!(
            response(None, &[d], None)["errors"][0]["extensions"]["detail"],
            "d"
        );
    }
}
