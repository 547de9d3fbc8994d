//! The one place where domain errors become gRPC statuses, each with a `google.rpc.ErrorInfo`
//! (domain `authd`) whose reason clients can switch on, and where an answer's status is read
//! back.

use tonic::{Code, Status, body::Body, codegen::http};
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

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The status of a refusal (a trailers-only answer), if `response` is one. tonic refuses a
/// request over its size limit with OUT_OF_RANGE before decoding it; authd's contract (and
/// gRPC's status guide) says RESOURCE_EXHAUSTED, so that one answer is replaced here, where
/// every answer's status is read anyway. Nothing else in authd answers OUT_OF_RANGE.
pub(super) fn refusal_status(response: &mut http::Response<Body>) -> Option<Code> {
    // An answer with a body carries its status in the trailers: no header to look up.
    if !http_body::Body::is_end_stream(response.body()) {
        return None;
    }
    match grpc_status(response.headers())? {
        Code::OutOfRange => {
            *response = request_too_large().into_http();
            Some(Code::ResourceExhausted)
        }
        code => Some(code),
    }
}

pub(super) fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_status_is_read_from_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("16"));
        assert_eq!(grpc_status(&headers), Some(Code::Unauthenticated));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), None);
    }

    #[test]
    fn a_refusal_is_read_from_its_headers_and_an_oversized_request_is_resource_exhausted() {
        let mut refused = tonic::Status::unauthenticated("no").into_http::<Body>();
        assert_eq!(refusal_status(&mut refused), Some(Code::Unauthenticated));
        let mut oversized = tonic::Status::out_of_range("too big").into_http::<Body>();
        assert_eq!(
            refusal_status(&mut oversized),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(
            grpc_status(oversized.headers()),
            Some(Code::ResourceExhausted)
        );
        // An answer with a body: its status comes in the trailers, whatever the headers say.
        let body = http_body_util::Full::new(tonic::codegen::Bytes::from_static(b"answer"));
        let mut answer = http::Response::new(Body::new(body));
        answer
            .headers_mut()
            .insert(GRPC_STATUS, http::HeaderValue::from_static("11"));
        assert_eq!(refusal_status(&mut answer), None);
    }
}
