//! The one mapping from the service's errors to gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` whose reason is a value of
//! the `privacy.v1.ErrorReason` enum published in the proto; invalid input
//! also carries `google.rpc.BadRequest` field violations. Database faults
//! become UNAVAILABLE (retryable) with the cause in the log, never in the
//! message sent to the client.
use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::proto::ErrorReason;

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "privacy-records.v1";

/// At most this many field violations go into one status: the details
/// travel in a header, and a request with hundreds of invalid items would
/// otherwise make it larger than clients accept (HTTP/2 refuses the whole
/// response, and the caller sees INTERNAL).
pub const MAX_FIELD_VIOLATIONS: usize = 20;

/// One invalid field: its path in the request (`purpose.key`,
/// `checks[3].subject_id`) and why it is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a request, by what the caller should do
/// about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{message}")]
    FailedPrecondition {
        reason: ErrorReason,
        /// What the precondition is about (a resource name or a field).
        subject: String,
        message: String,
    },
    /// An operation not allowed in the resource's current state.
    #[error("{resource} is {state}: {action} is allowed only from {}", .allowed_from.join(", "))]
    InvalidTransition {
        resource: String,
        state: &'static str,
        action: &'static str,
        allowed_from: Vec<&'static str>,
    },
    #[error("request_id {0:?} was already used for a different request")]
    RequestIdReused(String),
    #[error("etag mismatch on {0}")]
    EtagMismatch(String),
    #[error("conflicting concurrent change; retries exhausted")]
    Conflict,
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn precondition(
        reason: ErrorReason,
        subject: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::FailedPrecondition {
            reason,
            subject: subject.into(),
            message: message.into(),
        }
    }

    /// Whether a retry of the same transaction may succeed.
    pub fn is_retryable_conflict(&self) -> bool {
        matches!(self, Error::Conflict)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        classify_sqlx(err)
    }
}

/// SQLSTATE classes that mean "the database is not there right now":
/// connection exceptions (08), operator intervention such as a shutdown
/// (57P01-57P03), insufficient resources (53).
fn is_unavailable_state(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

fn classify_sqlx(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::Unavailable(err),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("40001") | Some("40P01") => Error::Conflict,
            Some(code) if is_unavailable_state(code) => Error::Unavailable(err),
            _ => Error::Internal(format!("database error: {err}")),
        },
        _ => Error::Internal(format!("database error: {err}")),
    }
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

fn reason_name(reason: ErrorReason) -> &'static str {
    reason.as_str_name()
}

fn status(
    code: Code,
    message: impl Into<String>,
    reason: ErrorReason,
) -> (Code, String, ErrorDetails) {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason_name(reason),
        ERROR_DOMAIN,
        HashMap::<String, String>::new(),
    );
    (code, message.into(), details)
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let (code, message, details) = match err {
            Error::InvalidArgument(mut violations) => {
                let more = violations.len().saturating_sub(MAX_FIELD_VIOLATIONS);
                violations.truncate(MAX_FIELD_VIOLATIONS);
                let mut message = format!("invalid argument: {}", describe(&violations));
                if more > 0 {
                    message.push_str(&format!(" (and {more} more)"));
                }
                let (code, message, mut details) =
                    status(Code::InvalidArgument, message, ErrorReason::FieldViolation);
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                (code, message, details)
            }
            Error::NotFound(name) => {
                let (code, message, mut details) = status(
                    Code::NotFound,
                    format!("{name} not found"),
                    ErrorReason::ResourceNotFound,
                );
                details.set_resource_info("", name, "", "not found");
                (code, message, details)
            }
            Error::AlreadyExists(name) => status(
                Code::AlreadyExists,
                format!("{name} already exists"),
                ErrorReason::ResourceAlreadyExists,
            ),
            Error::FailedPrecondition {
                reason,
                subject,
                message,
            } => {
                let (code, text, mut details) =
                    status(Code::FailedPrecondition, message.clone(), reason);
                details.add_precondition_failure_violation(reason_name(reason), subject, message);
                (code, text, details)
            }
            Error::InvalidTransition {
                resource,
                state,
                action,
                allowed_from,
            } => {
                let message = format!(
                    "{resource} is {state}: {action} is allowed only from {}",
                    allowed_from.join(", ")
                );
                let mut details = ErrorDetails::new();
                details.set_error_info(
                    reason_name(ErrorReason::InvalidStateTransition),
                    ERROR_DOMAIN,
                    HashMap::from([
                        ("state".to_owned(), state.to_owned()),
                        ("action".to_owned(), action.to_owned()),
                        ("allowed_from".to_owned(), allowed_from.join(",")),
                    ]),
                );
                details.add_precondition_failure_violation(
                    reason_name(ErrorReason::InvalidStateTransition),
                    resource,
                    message.clone(),
                );
                (Code::FailedPrecondition, message, details)
            }
            Error::RequestIdReused(id) => {
                let (code, message, mut details) = status(
                    Code::InvalidArgument,
                    format!("request_id {id:?} was already used for a different request"),
                    ErrorReason::RequestIdReused,
                );
                details.add_bad_request_violation(
                    "request_id",
                    "already used for a different request; choose a new request_id",
                );
                (code, message, details)
            }
            Error::EtagMismatch(name) => status(
                Code::Aborted,
                format!("the etag does not match the current etag of {name}; read it again"),
                ErrorReason::EtagMismatch,
            ),
            Error::Conflict => {
                let (code, message, mut details) = status(
                    Code::Aborted,
                    "a concurrent change conflicted; retry with the same request_id",
                    ErrorReason::ConcurrentModification,
                );
                details.set_retry_info(Some(Duration::from_millis(50)));
                (code, message, details)
            }
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                let (code, message, mut details) = status(
                    Code::Unavailable,
                    "the database is unavailable; retry with backoff",
                    ErrorReason::DatabaseUnavailable,
                );
                details.set_retry_info(Some(Duration::from_secs(1)));
                (code, message, details)
            }
            Error::ShuttingDown => status(
                Code::Unavailable,
                "the server is shutting down; retry against another replica",
                ErrorReason::ShuttingDown,
            ),
            Error::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                status(Code::Internal, "internal error", ErrorReason::InternalError)
            }
        };
        Status::with_error_details(code, message, details)
    }
}

/// A status for the middleware's load shedding (no `Error` variant: it never
/// reaches a handler).
pub fn overloaded_status() -> Status {
    let (code, message, mut details) = status(
        Code::ResourceExhausted,
        "the server is at its concurrency limit; retry with backoff",
        ErrorReason::Overloaded,
    );
    details.set_retry_info(Some(Duration::from_millis(100)));
    Status::with_error_details(code, message, details)
}

/// A request that is not valid protobuf for its method (no `Error` variant:
/// the codec refuses it before any handler runs). tonic's own codec says
/// INTERNAL; the caller's message is at fault, so INVALID_ARGUMENT.
pub fn malformed_status(message: impl Into<String>) -> Status {
    let (code, message, details) = status(
        Code::InvalidArgument,
        message,
        ErrorReason::MalformedMessage,
    );
    Status::with_error_details(code, message, details)
}

/// Collects field violations while parsing a request, so that one response
/// names every invalid field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records the error of a parse, returning the value when it parsed.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, String>) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(description) => {
                self.add(field, description);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The error for the violations collected so far (used when a parse
    /// returned `None`, so there is at least one).
    pub fn into_error(self) -> Error {
        if self.0.is_empty() {
            Error::Internal("a parse failed without naming the field".into())
        } else {
            Error::InvalidArgument(self.0)
        }
    }

    /// `Ok(())` when nothing was invalid.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}
