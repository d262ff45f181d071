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
    /// The server is shutting down or the store is closed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A SQLite failure.
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An invalid-argument error naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A not-found error naming `field`.
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::NotFound {
            field: field.into(),
            message: message.into(),
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
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidArgument { .. } => tonic::Status::invalid_argument(e.to_string()),
            Error::NotFound { .. } => tonic::Status::not_found(e.to_string()),
            Error::FailedPrecondition { .. } => tonic::Status::failed_precondition(e.to_string()),
            Error::AlreadyExists { .. } => tonic::Status::already_exists(e.to_string()),
            Error::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            Error::Sqlite(_) | Error::Internal(_) => {
                tracing::error!(error = %e, "internal error");
                tonic::Status::internal("internal error; see the server log")
            }
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
