//! Raising udm errors as PostgreSQL ERRORs, and adding context to errors PostgreSQL raises while
//! udm runs its statements.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
pub use udm_core::{SqlState, UdmError};

pub type Result<T, E = UdmError> = std::result::Result<T, E>;

fn pg_code(s: SqlState) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match s {
        SqlState::InvalidParameterValue => ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::NullValueNotAllowed => ERRCODE_NULL_VALUE_NOT_ALLOWED,
        SqlState::InvalidTextRepresentation => ERRCODE_INVALID_TEXT_REPRESENTATION,
        SqlState::BadCopyFileFormat => ERRCODE_BAD_COPY_FILE_FORMAT,
        SqlState::NotNullViolation => ERRCODE_NOT_NULL_VIOLATION,
        SqlState::ForeignKeyViolation => ERRCODE_FOREIGN_KEY_VIOLATION,
        SqlState::UniqueViolation => ERRCODE_UNIQUE_VIOLATION,
        SqlState::CheckViolation => ERRCODE_CHECK_VIOLATION,
        SqlState::DependentObjectsStillExist => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        SqlState::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
        SqlState::SyntaxError => ERRCODE_SYNTAX_ERROR,
        SqlState::InvalidName => ERRCODE_INVALID_NAME,
        SqlState::DuplicateColumn => ERRCODE_DUPLICATE_COLUMN,
        SqlState::UndefinedColumn => ERRCODE_UNDEFINED_COLUMN,
        SqlState::UndefinedObject => ERRCODE_UNDEFINED_OBJECT,
        SqlState::DuplicateObject => ERRCODE_DUPLICATE_OBJECT,
        SqlState::UndefinedTable => ERRCODE_UNDEFINED_TABLE,
        SqlState::DuplicateSchema => ERRCODE_DUPLICATE_SCHEMA,
        SqlState::DuplicateTable => ERRCODE_DUPLICATE_TABLE,
        SqlState::DatatypeMismatch => ERRCODE_DATATYPE_MISMATCH,
        SqlState::ProgramLimitExceeded => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        SqlState::ObjectNotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        SqlState::LockNotAvailable => ERRCODE_LOCK_NOT_AVAILABLE,
        SqlState::FeatureNotSupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        SqlState::SerializationFailure => ERRCODE_T_R_SERIALIZATION_FAILURE,
        SqlState::NoDataFound => ERRCODE_NO_DATA_FOUND,
        SqlState::DataCorrupted => ERRCODE_DATA_CORRUPTED,
        SqlState::Internal => ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises the error as a PostgreSQL ERROR (unwinding to pgrx's guard, which reports it).
pub fn raise(e: UdmError) -> ! {
    let mut r = ErrorReport::new(pg_code(e.state), e.message, "udm");
    if let Some(d) = e.detail {
        r = r.set_detail(d);
    }
    if let Some(h) = e.hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}

/// An argument that must not be NULL: its value, or an ERROR (22004) naming it.
pub fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| {
        raise(UdmError::new(
            SqlState::NullValueNotAllowed,
            format!("{name} must not be NULL"),
        ))
    })
}

/// A `text[]` argument: its elements, or an ERROR (22004) when it or one of them is NULL.
pub fn text_list(v: Option<Vec<Option<String>>>, name: &str) -> Vec<String> {
    required(v, name)
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.unwrap_or_else(|| {
                raise(UdmError::new(
                    SqlState::NullValueNotAllowed,
                    format!("{name} must not contain NULL (element {} is NULL)", i + 1),
                ))
            })
        })
        .collect()
}

pub fn spi_err(e: pgrx::spi::Error) -> UdmError {
    UdmError::internal(format!("udm: SPI failed: {e}"))
}

/// What a caught PostgreSQL error said.
pub struct PgError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    /// Re-raises unchanged.
    pub fn raise(self) -> ! {
        let mut r = ErrorReport::new(self.code, self.message, "udm");
        if let Some(d) = self.detail {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint {
            r = r.set_hint(h);
        }
        r.report(PgLogLevel::ERROR);
        unreachable!()
    }

    /// Re-raises with `context` in front of the message, keeping code, detail and hint.
    pub fn raise_with(self, context: &str) -> ! {
        let mut r = ErrorReport::new(self.code, format!("{context}: {}", self.message), "udm");
        if let Some(d) = self.detail {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint {
            r = r.set_hint(h);
        }
        r.report(PgLogLevel::ERROR);
        unreachable!()
    }
}

/// Runs `f`; an ERROR raised inside it is handed to `on_error` (which must raise again: after a
/// caught ERROR the transaction may not do more work until it is rolled back).
pub fn catch_pg<R>(f: impl FnOnce() -> R, on_error: impl FnOnce(PgError) -> R) -> R {
    let outcome: std::result::Result<R, PgError> = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
        .catch_others(|e| {
            let r = match e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            Err(PgError {
                code: r.sql_error_code(),
                message: r.message().to_string(),
                detail: r.detail().map(str::to_string),
                hint: r.hint().map(str::to_string),
            })
        })
        .execute();
    match outcome {
        Ok(v) => v,
        Err(e) => on_error(e),
    }
}

/// Runs `f` in a subtransaction that stays only when `f` returns `Ok`: an `Err` it returns, or an
/// ERROR raised inside it, rolls the subtransaction back (all or nothing).
pub fn in_subtransaction_ok<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<std::result::Result<T, E>, PgError> {
    unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(ctx);
        let out = catch_pg(|| Ok(f()), Err);
        match out {
            Ok(Ok(_)) => pg_sys::ReleaseCurrentSubTransaction(),
            _ => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(ctx);
        pg_sys::CurrentResourceOwner = owner;
        not_cancelled(out)
    }
}

/// Runs `f` in a subtransaction: on an ERROR the subtransaction is rolled back and the error
/// returned, and the caller's transaction can go on (as a PL/pgSQL EXCEPTION block does).
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> std::result::Result<R, PgError> {
    unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(ctx);
        let out = catch_pg(|| Ok(f()), Err);
        match out {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(ctx);
        pg_sys::CurrentResourceOwner = owner;
        not_cancelled(out)
    }
}

/// A cancelled statement (`statement_timeout`, `pg_cancel_backend`: 57014) is never an error the
/// caller handles and goes on from: it is raised again once the subtransaction is rolled back, as
/// PL/pgSQL's `EXCEPTION WHEN OTHERS` does not catch it either.
fn not_cancelled<R>(out: std::result::Result<R, PgError>) -> std::result::Result<R, PgError> {
    match out {
        Err(e) if e.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED => e.raise(),
        other => other,
    }
}
