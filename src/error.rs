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

/// At most this many field violations go into one status, each field and
/// description cut to `MAX_VIOLATION_TEXT` bytes, and the message names the
/// first `MESSAGE_VIOLATIONS`: the status travels in headers, and a request
/// with hundreds of invalid items (or descriptions echoing long input) would
/// otherwise make them larger than clients accept (HTTP/2 refuses the whole
/// response, and the caller sees INTERNAL).
pub const MAX_FIELD_VIOLATIONS: usize = 20;
const MAX_VIOLATION_TEXT: usize = 128;
const MESSAGE_VIOLATIONS: usize = 5;

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(3);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

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
    /// The caller is authenticated but may not act on this resource (e.g. a
    /// data system's worker and another system's task).
    #[error("{caller} may not act on {resource}")]
    PermissionDenied { caller: String, resource: String },
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
            Error::InvalidArgument(violations) => {
                let total = violations.len();
                let violations: Vec<FieldViolation> = violations
                    .into_iter()
                    .take(MAX_FIELD_VIOLATIONS)
                    .map(|v| FieldViolation {
                        field: cut(v.field, MAX_VIOLATION_TEXT),
                        description: cut(v.description, MAX_VIOLATION_TEXT),
                    })
                    .collect();
                let shown = &violations[..violations.len().min(MESSAGE_VIOLATIONS)];
                let mut message = format!("invalid argument: {}", describe(shown));
                if total > shown.len() {
                    message.push_str(&format!(" (and {} more)", total - shown.len()));
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
            Error::PermissionDenied { caller, resource } => {
                return permission_denied_status(&caller, "resource", &resource);
            }
            Error::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                status(Code::Internal, "internal error", ErrorReason::InternalError)
            }
        };
        Status::with_error_details(code, message, details)
    }
}

/// A status the middleware returns before any handler runs, telling the
/// caller to retry after `after`.
fn retry_later(code: Code, message: &str, reason: ErrorReason, after: Duration) -> Status {
    let (code, message, mut details) = status(code, message, reason);
    details.set_retry_info(Some(after));
    Status::with_error_details(code, message, details)
}

/// RESOURCE_EXHAUSTED (reason OVERLOADED) for the middleware's load shedding.
pub fn overloaded_status() -> Status {
    retry_later(
        Code::ResourceExhausted,
        "the server is at its concurrency limit; retry with backoff",
        ErrorReason::Overloaded,
        Duration::from_millis(100),
    )
}

/// UNAVAILABLE (reason DATABASE_UNAVAILABLE) for a call refused at once
/// because the health monitor finds the database away.
/// (The monitor logs the outage once; no line per refused call.)
pub fn database_away_status() -> Status {
    retry_later(
        Code::Unavailable,
        "the database is unavailable; retry with backoff",
        ErrorReason::DatabaseUnavailable,
        Duration::from_secs(1),
    )
}

/// UNAUTHENTICATED (reason CALLER_UNAUTHENTICATED) for a call to `method`;
/// `why` says what was missing or wrong, never the credential itself.
pub fn unauthenticated_status(method: &str, why: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason_name(ErrorReason::CallerUnauthenticated),
        ERROR_DOMAIN,
        HashMap::from([("method".to_owned(), method.to_owned())]),
    );
    Status::with_error_details(
        Code::Unauthenticated,
        format!("unauthenticated: {why}; present a client certificate or a bearer token"),
        details,
    )
}

/// PERMISSION_DENIED (reason CALLER_NOT_PERMITTED): `caller` may not use
/// `what` (`method` or `resource`) `name`.
pub fn permission_denied_status(caller: &str, what: &str, name: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        reason_name(ErrorReason::CallerNotPermitted),
        ERROR_DOMAIN,
        HashMap::from([
            ("caller".to_owned(), caller.to_owned()),
            (what.to_owned(), name.to_owned()),
        ]),
    );
    Status::with_error_details(
        Code::PermissionDenied,
        format!("caller {caller:?} may not use {what} {name}"),
        details,
    )
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

    /// Runs a parse that records what it finds invalid: every violation,
    /// or what it parsed when there was none.
    pub fn collect<T>(parse: impl FnOnce(&mut Violations) -> Option<T>) -> Result<T> {
        let mut v = Violations::new();
        match parse(&mut v) {
            Some(parsed) if v.is_empty() => Ok(parsed),
            _ => Err(v.into_error()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn a_status_carries_a_bounded_number_of_short_violations() {
        let many = (0..500)
            .map(|i| FieldViolation::new(format!("items[{i}].value"), "é".repeat(1000)))
            .collect();
        let status = Status::from(Error::InvalidArgument(many));
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations.len(), MAX_FIELD_VIOLATIONS);
        assert!(
            violations
                .iter()
                .all(|v| v.description.len() <= MAX_VIOLATION_TEXT)
        );
        assert!(
            status.message().ends_with("(and 495 more)"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 1000);
    }
}
