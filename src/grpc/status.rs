//! The one place where domain errors become gRPC statuses, each with a `google.rpc.ErrorInfo`
//! (domain `authd`) whose reason clients can switch on.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::auth::AuthError;

/// How long an overloaded caller is asked to wait (google.rpc.RetryInfo).
const OVERLOAD_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// The ErrorInfo domain of every authd error.
const ERROR_DOMAIN: &str = "authd";

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        // Exhaustive on purpose: a new variant must choose its status here.
        let (code, reason) = match &err {
            AuthError::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            AuthError::PasswordRejected(rule) => (Code::InvalidArgument, rule.reason()),
            AuthError::InvalidCredentials => (Code::Unauthenticated, "INVALID_CREDENTIALS"),
            AuthError::AccessTokenInvalid => (Code::Unauthenticated, "TOKEN_INVALID"),
            AuthError::AccessTokenExpired => (Code::Unauthenticated, "TOKEN_EXPIRED"),
            AuthError::SessionRevoked => (Code::Unauthenticated, "SESSION_REVOKED"),
            AuthError::SessionExpired => (Code::Unauthenticated, "SESSION_EXPIRED"),
            AuthError::RefreshTokenInvalid => (Code::Unauthenticated, "REFRESH_TOKEN_INVALID"),
            AuthError::RefreshTokenExpired => (Code::Unauthenticated, "REFRESH_TOKEN_EXPIRED"),
            AuthError::RefreshTokenReused => (Code::Unauthenticated, "REFRESH_TOKEN_REUSED"),
            AuthError::EmailTaken => (Code::AlreadyExists, "EMAIL_TAKEN"),
            AuthError::UserNotFound => (Code::NotFound, "USER_NOT_FOUND"),
            AuthError::SessionNotFound => (Code::NotFound, "SESSION_NOT_FOUND"),
            AuthError::AdminCredentialsMissing => {
                (Code::Unauthenticated, "ADMIN_CREDENTIALS_MISSING")
            }
            AuthError::AdminCredentialsRefused => {
                (Code::PermissionDenied, "ADMIN_CREDENTIALS_REFUSED")
            }
            AuthError::AdminThrottled { .. } => (Code::ResourceExhausted, "ADMIN_THROTTLED"),
            AuthError::Overloaded => (Code::ResourceExhausted, "OVERLOADED"),
            AuthError::Throttled { .. } => (Code::ResourceExhausted, "LOGIN_THROTTLED"),
            AuthError::TooManySubscribers => (Code::ResourceExhausted, "TOO_MANY_SUBSCRIBERS"),
            AuthError::FeedConsumerTooSlow => (Code::ResourceExhausted, "FEED_CONSUMER_TOO_SLOW"),
            AuthError::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
            AuthError::Unavailable(_) => (Code::Unavailable, "UNAVAILABLE"),
            AuthError::Internal(_) => (Code::Internal, "INTERNAL"),
        };
        if matches!(err, AuthError::Unavailable(_) | AuthError::Internal(_)) {
            tracing::error!(error = %crate::report::error_chain(&err), "request failed");
        }
        let retry_after = match err {
            AuthError::Overloaded => Some(OVERLOAD_RETRY_DELAY),
            AuthError::Throttled { retry_after } | AuthError::AdminThrottled { retry_after } => {
                Some(retry_after)
            }
            _ => None,
        };
        status(code, reason, err.to_string(), retry_after)
    }
}

/// RESOURCE_EXHAUSTED (`OVERLOADED`, RetryInfo): `AUTH_MAX_CALLS_IN_FLIGHT` calls are
/// already in progress; this one was refused before it started.
pub(super) fn calls_shed() -> Status {
    status(
        Code::ResourceExhausted,
        "OVERLOADED",
        "too many calls in progress; retry shortly".to_owned(),
        Some(OVERLOAD_RETRY_DELAY),
    )
}

/// RESOURCE_EXHAUSTED (`REQUEST_TOO_LARGE`): the request message exceeds
/// `AUTH_MAX_REQUEST_BYTES`; it was refused before decoding.
pub(super) fn request_too_large() -> Status {
    status(
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        "request too large".to_owned(),
        None,
    )
}

/// DEADLINE_EXCEEDED (`CALL_TIMEOUT`): the call, its request included, took longer than
/// `AUTH_CALL_TIMEOUT` and was abandoned.
pub(super) fn call_timed_out() -> Status {
    status(
        Code::DeadlineExceeded,
        "CALL_TIMEOUT",
        "the call took longer than the server allows".to_owned(),
        None,
    )
}

fn status(
    code: Code,
    reason: &str,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
    if retry_after.is_some() {
        details.set_retry_info(retry_after);
    }
    Status::with_error_details(code, message, details)
}
