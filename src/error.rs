//! Typed errors shared by the store and every transport, with the one
//! mapping to gRPC status codes.
//!
//! Invalid input always names the field it came from (`outcomes[3].seq`), so a
//! client can fix its request without reading server logs. Internal errors are
//! logged here and returned opaque.

/// What went wrong, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending part.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// Path of the offending field, e.g. `outcomes[3].duration`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{field}: {message}")]
    NotFound {
        /// Field that named the missing thing.
        field: String,
        /// What is missing.
        message: String,
    },
    /// The request is well-formed but conflicts with what is stored.
    #[error("{field}: {message}")]
    FailedPrecondition {
        /// Field that conflicts.
        field: String,
        /// Why.
        message: String,
    },
    /// A create with the same id and different content.
    #[error("{field}: {message}")]
    AlreadyExists {
        /// Field that conflicts.
        field: String,
        /// Why.
        message: String,
    },
    /// The recorder is out of a resource it cannot do without (its disk is
    /// full); the message says which.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down or the store is closed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A SQLite failure.
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL failure that is not the database being away.
    #[error("storage error: {0}")]
    Postgres(String),
    /// A transaction lost a race with another (deadlock, serialization);
    /// running it again succeeds.
    #[error("storage conflict, retry: {0}")]
    Conflict(String),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection broke, or never was.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                let part = cause.to_string();
                if !text.contains(&part) {
                    text = format!("{text}: {part}");
                }
                source = cause.source();
            }
            return Error::Unavailable(format!("the database is unreachable: {text}"));
        };
        let state = code.code();
        if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        {
            return Error::Conflict(e.to_string());
        }
        // Connection exceptions, the server shutting down or starting, and
        // too many connections: the database is away for now.
        // A read-only transaction: a standby (a primary demoted during a
        // failover, for now) or default_transaction_read_only. Unavailable,
        // since a failover ends it, but named as what it is.
        if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return Error::Unavailable(
                "the database is read-only (a standby, or default_transaction_read_only is on); \
                 nothing of this write was stored"
                    .into(),
            );
        }
        if state.starts_with("08")
            || state.starts_with("57P")
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            return Error::Unavailable(format!("the database is unavailable: {e}"));
        }
        let detail = e
            .as_db_error()
            .map(|d| format!("{} ({state})", d.message()))
            .unwrap_or_else(|| e.to_string());
        if *code == SqlState::DISK_FULL {
            return Error::ResourceExhausted(format!(
                "the recorder's database disk is full: {detail}"
            ));
        }
        Error::Postgres(detail)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Error::Unavailable(format!("no database connection: {other}")),
        }
    }
}

/// Longest error message, in bytes: what a client is told and what the log
/// holds of one error. Messages quote a peer's input only in part
/// ([`crate::model::echo`]); this bound holds for the ones that forget.
pub const MAX_ERROR_BYTES: usize = 4096;

/// `text` cut to [`MAX_ERROR_BYTES`], marked where cut.
fn bounded(text: impl Into<String>) -> String {
    let mut text = text.into();
    crate::model::truncate_marked(&mut text, MAX_ERROR_BYTES);
    text
}

impl Error {
    /// An invalid-argument error naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: bounded(field),
            message: bounded(message),
        }
    }

    /// A not-found error naming `field`.
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::NotFound {
            field: bounded(field),
            message: bounded(message),
        }
    }

    /// The same error naming `field`, the argument a reader gave, where the
    /// store named its own parameter: what was not found, or a session id
    /// prefix that names more than one session.
    pub fn named(self, field: &str) -> Self {
        match self {
            Error::NotFound { message, .. } => Error::NotFound {
                field: field.into(),
                message,
            },
            Error::InvalidArgument { field: f, message } if f == "session_id" => {
                Error::InvalidArgument {
                    field: field.into(),
                    message,
                }
            }
            other => other,
        }
    }

    /// The same error with its field placed under `prefix`
    /// (`nodeid` within `outcomes[3]` is `outcomes[3].nodeid`). Validation
    /// names fields relative to what it checks and the caller adds where
    /// that was, so the success path formats no field paths.
    pub fn within(self, prefix: impl std::fmt::Display) -> Self {
        match self {
            Error::InvalidArgument { field, message } => Error::InvalidArgument {
                field: format!("{prefix}.{field}"),
                message,
            },
            Error::NotFound { field, message } => Error::NotFound {
                field: format!("{prefix}.{field}"),
                message,
            },
            Error::FailedPrecondition { field, message } => Error::FailedPrecondition {
                field: format!("{prefix}.{field}"),
                message,
            },
            Error::AlreadyExists { field, message } => Error::AlreadyExists {
                field: format!("{prefix}.{field}"),
                message,
            },
            other => other,
        }
    }

    /// A failed-precondition error naming `field`.
    pub fn precondition(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            field: bounded(field),
            message: bounded(message),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        // Errors built without the constructors are bounded here, once.
        let text = bounded(e.to_string());
        match &e {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(text),
            Error::NotFound { .. } => tonic::Status::not_found(text),
            Error::FailedPrecondition { .. } => tonic::Status::failed_precondition(text),
            Error::AlreadyExists { .. } => tonic::Status::already_exists(text),
            Error::Unavailable(_) => tonic::Status::unavailable(text),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(text),
            Error::Conflict(_) => tonic::Status::aborted(text),
            Error::Sqlite(_) | Error::Postgres(_) | Error::Internal(_) => {
                tracing::error!(error = %text, "internal error");
                tonic::Status::internal("internal error; see the server log")
            }
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
