//! The one error type of udm. Every failure carries a SQLSTATE, a message that names what was
//! wrong (tenant, entity, field, rule), and usually a hint saying what to do instead.

use std::fmt;

/// SQLSTATE classes udm raises. The extension maps each to PostgreSQL's error code; the pure core
/// only needs their five-character codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 22023: a JSON document or argument has the wrong shape or value.
    InvalidParameterValue,
    /// 22004: an argument that must have a value is NULL.
    NullValueNotAllowed,
    /// 22P02: a value cannot be read as the type it should have.
    InvalidTextRepresentation,
    /// 22P04: an archive (or a section of it) is damaged, truncated or not what it says.
    BadCopyFileFormat,
    /// 23502: a required value is missing.
    NotNullViolation,
    /// 23503: a referenced record does not exist or is still referenced.
    ForeignKeyViolation,
    /// 23505: a unique value is taken.
    UniqueViolation,
    /// 23514: a validation rule does not hold.
    CheckViolation,
    /// 2BP01: something still depends on the object.
    DependentObjectsStillExist,
    /// 42501: the caller may not do this.
    InsufficientPrivilege,
    /// 42601: an expression (rule, path) does not parse.
    SyntaxError,
    /// 42602: a slug is not a valid name.
    InvalidName,
    /// 42701: a field with that name exists.
    DuplicateColumn,
    /// 42703: no such field.
    UndefinedColumn,
    /// 42704: no such tenant, type, rule or index.
    UndefinedObject,
    /// 42710: an object (rule, index) with that name exists.
    DuplicateObject,
    /// 42P01: no such entity.
    UndefinedTable,
    /// 42P06: a tenant with that slug exists.
    DuplicateSchema,
    /// 42P07: an entity with that slug exists.
    DuplicateTable,
    /// 42804: a value or type change does not fit the field's type.
    DatatypeMismatch,
    /// 54000: a limit (size, depth, count) was exceeded.
    ProgramLimitExceeded,
    /// 55000: the object is not in a state that allows this (no tenant selected, field not removed).
    ObjectNotInPrerequisiteState,
    /// 55P03: a lock could not be taken in time.
    LockNotAvailable,
    /// 0A000: a valid request that udm does not support.
    FeatureNotSupported,
    /// 40001: the record changed since the caller read it (optimistic concurrency).
    SerializationFailure,
    /// P0002: no such record.
    NoDataFound,
    /// XX001: stored data fails its integrity check (an encrypted value that does not decrypt).
    DataCorrupted,
    /// XX000: a bug in udm.
    Internal,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidParameterValue => "22023",
            SqlState::NullValueNotAllowed => "22004",
            SqlState::InvalidTextRepresentation => "22P02",
            SqlState::BadCopyFileFormat => "22P04",
            SqlState::NotNullViolation => "23502",
            SqlState::ForeignKeyViolation => "23503",
            SqlState::UniqueViolation => "23505",
            SqlState::CheckViolation => "23514",
            SqlState::DependentObjectsStillExist => "2BP01",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::SyntaxError => "42601",
            SqlState::InvalidName => "42602",
            SqlState::DuplicateColumn => "42701",
            SqlState::UndefinedColumn => "42703",
            SqlState::UndefinedObject => "42704",
            SqlState::DuplicateObject => "42710",
            SqlState::UndefinedTable => "42P01",
            SqlState::DuplicateSchema => "42P06",
            SqlState::DuplicateTable => "42P07",
            SqlState::DatatypeMismatch => "42804",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::LockNotAvailable => "55P03",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::SerializationFailure => "40001",
            SqlState::NoDataFound => "P0002",
            SqlState::DataCorrupted => "XX001",
            SqlState::Internal => "XX000",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdmError {
    pub state: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub type Result<T, E = UdmError> = std::result::Result<T, E>;

impl UdmError {
    pub fn new(state: SqlState, message: impl Into<String>) -> Self {
        UdmError {
            state,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Puts `context` in front of the message, e.g. `field "price": ` + message.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(SqlState::InvalidParameterValue, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(SqlState::Internal, message)
    }
}

impl fmt::Display for UdmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.state.code())?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UdmError {}

/// Formats a list of names for a hint: `"a", "b", "c"`.
pub fn name_list<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    let mut out = String::new();
    for (i, n) in names.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(n.as_ref());
        out.push('"');
    }
    if out.is_empty() {
        out.push_str("(none)");
    }
    out
}

/// An error a Citus worker sends back for a `COPY` carries its SQLSTATE and hint in the last
/// line of its detail, after this tag: Citus passes a worker's COPY error on with its message and
/// detail only (as `XX000`), and the coordinator puts the two back (`remote_copy_error`).
pub const COPY_ERROR_TAG: &str = "[udm: SQLSTATE ";

/// The detail a worker sends for a COPY error: the error's own detail, then a line with its
/// SQLSTATE and hint.
pub fn tag_copy_error(detail: Option<&str>, sqlstate: &str, hint: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(d) = detail {
        out.push_str(d);
        out.push('\n');
    }
    out.push_str(COPY_ERROR_TAG);
    out.push_str(sqlstate);
    out.push(']');
    if let Some(h) = hint {
        out.push_str(" hint: ");
        out.push_str(h);
    }
    out
}

/// What a tagged COPY error detail carried: (SQLSTATE, the original detail, the hint). None for a
/// detail without the tag, or one whose SQLSTATE is not five digits or capitals.
pub fn remote_copy_error(detail: &str) -> Option<(String, Option<String>, Option<String>)> {
    let at = detail.rfind(COPY_ERROR_TAG)?;
    if at > 0 && !detail[..at].ends_with('\n') {
        return None;
    }
    let rest = &detail[at + COPY_ERROR_TAG.len()..];
    let code = rest.get(..5)?;
    if !code
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return None;
    }
    let after = &rest[5..];
    let hint = match after.strip_prefix(']')? {
        "" => None,
        h => Some(h.strip_prefix(" hint: ")?.to_string()),
    };
    let original = (at > 0).then(|| detail[..at - 1].to_string());
    Some((code.to_string(), original, hint))
}

/// The five characters of a SQLSTATE in PostgreSQL's integer form (`unpack_sql_state`).
pub fn unpacked_sqlstate(packed: i32) -> String {
    (0..5)
        .map(|i| char::from((((packed >> (6 * i)) & 0x3F) as u8).wrapping_add(b'0')))
        .collect()
}

/// Whether `sql` is a `COPY ... FROM STDIN` statement (as Citus sends a shard's rows to a
/// worker: `COPY <shard> (<columns>) FROM STDIN WITH (...)`).
pub fn is_copy_from_stdin(sql: &[u8]) -> bool {
    let sql = sql.trim_ascii_start();
    sql.len() > 5
        && sql[..4].eq_ignore_ascii_case(b"COPY")
        && sql[4].is_ascii_whitespace()
        && sql
            .windows(b" FROM STDIN".len())
            .any(|w| w.eq_ignore_ascii_case(b" FROM STDIN"))
}

/// What a report (`code`, PostgreSQL's packed SQLSTATE; its `detail`) becomes when its detail
/// carries a worker's tag: (its SQLSTATE, the detail without the tag, the worker's hint). Only an
/// `XX000` (Citus's report of a worker's COPY error) takes the worker's SQLSTATE; any other keeps
/// its own and loses the tag. None without a tag.
pub fn untagged_report(code: i32, detail: &str) -> Option<(i32, Option<String>, Option<String>)> {
    let (state, detail, hint) = remote_copy_error(detail)?;
    let internal = packed_sqlstate("XX000").expect("a SQLSTATE");
    let code = match packed_sqlstate(&state) {
        Some(worker) if code == internal => worker,
        _ => code,
    };
    Some((code, detail, hint))
}

/// PostgreSQL's integer form of a SQLSTATE (`MAKE_SQLSTATE`), for five digits or capitals.
pub fn packed_sqlstate(code: &str) -> Option<i32> {
    let b = code.as_bytes();
    if b.len() != 5
        || !b
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return None;
    }
    Some(
        b.iter()
            .enumerate()
            .map(|(i, c)| (((*c as i32) - ('0' as i32)) & 0x3F) << (6 * i))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_copy_error_s_sqlstate_and_hint_travel_in_its_detail() {
        use super::*;
        assert!(is_copy_from_stdin(
            b"COPY s.t_102008 (a) FROM STDIN WITH (format binary)"
        ));
        assert!(is_copy_from_stdin(b"  copy\ts from stdin"));
        assert!(!is_copy_from_stdin(b"COPYx FROM STDIN"));
        assert!(!is_copy_from_stdin(b"COPY (SELECT 1) TO STDOUT"));
        assert!(!is_copy_from_stdin(b"SELECT 1"));
        let d = tag_copy_error(Some("Failing row: x"), "23514", Some("fix it"));
        assert_eq!(d, "Failing row: x\n[udm: SQLSTATE 23514] hint: fix it");
        assert_eq!(
            remote_copy_error(&d),
            Some((
                "23514".into(),
                Some("Failing row: x".into()),
                Some("fix it".into())
            ))
        );
        let bare = tag_copy_error(None, "23505", None);
        assert_eq!(remote_copy_error(&bare), Some(("23505".into(), None, None)));
        // a multi-line detail keeps its lines; the tag is the last one
        let d = tag_copy_error(Some("a\nb"), "22P02", None);
        assert_eq!(
            remote_copy_error(&d),
            Some(("22P02".into(), Some("a\nb".into()), None))
        );
        // not a tag: inside a line, a bad code, something after the code
        for d in [
            "x [udm: SQLSTATE 23514]",
            "[udm: SQLSTATE 2351]",
            "[udm: SQLSTATE 23a14]",
            "[udm: SQLSTATE 23514",
            "[udm: SQLSTATE 23514]x",
            "no tag",
        ] {
            assert_eq!(remote_copy_error(d), None, "{d}");
        }
        // MAKE_SQLSTATE: 23514 (check_violation) and XX000 (internal_error)
        // (PostgreSQL's ERRCODE_CHECK_VIOLATION and ERRCODE_INTERNAL_ERROR)
        assert_eq!(packed_sqlstate("23514"), Some(67_391_682));
        assert_eq!(packed_sqlstate("XX000"), Some(2_600));
        assert_eq!(packed_sqlstate("00000"), Some(0));
        assert_eq!(unpacked_sqlstate(67_391_682), "23514");
        assert_eq!(unpacked_sqlstate(2_600), "XX000");
        assert_eq!(
            unpacked_sqlstate(packed_sqlstate("22P02").unwrap()),
            "22P02"
        );
        assert_eq!(packed_sqlstate("2351"), None);
        // a report: an XX000 takes the worker's SQLSTATE, another keeps its own; both lose the tag
        let tagged = tag_copy_error(Some("d"), "23505", Some("h"));
        let xx000 = packed_sqlstate("XX000").unwrap();
        let division = packed_sqlstate("22012").unwrap();
        assert_eq!(
            untagged_report(xx000, &tagged),
            Some((
                packed_sqlstate("23505").unwrap(),
                Some("d".into()),
                Some("h".into())
            ))
        );
        assert_eq!(
            untagged_report(division, &tagged),
            Some((division, Some("d".into()), Some("h".into())))
        );
        assert_eq!(untagged_report(xx000, "d"), None);
        assert_eq!(packed_sqlstate("2351x"), None);
    }

    use super::*;

    #[test]
    fn display_includes_code_detail_and_hint() {
        let e = UdmError::new(SqlState::UndefinedTable, "entity \"x\" does not exist")
            .detail("d")
            .hint("h");
        assert_eq!(
            e.to_string(),
            "entity \"x\" does not exist (42P01)\nDETAIL: d\nHINT: h"
        );
    }

    #[test]
    fn context_prefixes_message() {
        let e = UdmError::invalid("bad").context("field \"a\"");
        assert_eq!(e.message, "field \"a\": bad");
        assert_eq!(e.state.code(), "22023");
    }

    #[test]
    fn name_list_quotes_and_handles_empty() {
        assert_eq!(name_list(["a", "b"]), "\"a\", \"b\"");
        assert_eq!(name_list(Vec::<String>::new()), "(none)");
    }
}
