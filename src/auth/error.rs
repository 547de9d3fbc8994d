//! The domain's one error type. `grpc::status` maps each variant to a gRPC status and an
//! ErrorInfo reason in one exhaustive match.

use crate::store::StoreError;

/// Why an authentication operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// INVALID_ARGUMENT: a request field is empty, too long or malformed.
    #[error("{field}: {problem}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// INVALID_ARGUMENT (`PASSWORD_TOO_SHORT`, `PASSWORD_TOO_LONG`, `PASSWORD_BLOCKLISTED`): a
    /// new password breaks the password policy.
    #[error("{0}")]
    PasswordRejected(super::credentials::PasswordRule),
    /// UNAUTHENTICATED (INVALID_CREDENTIALS): wrong password, unknown email or disabled user;
    /// deliberately one case so the answer reveals nothing about which.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// UNAUTHENTICATED (TOKEN_INVALID): an access token that is malformed, forged, signed with
    /// another key or algorithm, or not an access token at all.
    #[error("invalid access token")]
    AccessTokenInvalid,
    /// UNAUTHENTICATED (TOKEN_EXPIRED): an access token past its `exp` (or before its `nbf`).
    #[error("access token expired")]
    AccessTokenExpired,
    /// UNAUTHENTICATED (SESSION_REVOKED): the token's session was logged out, revoked after a
    /// reuse, or its user disabled.
    #[error("session revoked")]
    SessionRevoked,
    /// UNAUTHENTICATED (SESSION_EXPIRED): the session reached its end; log in again.
    #[error("session expired")]
    SessionExpired,
    /// UNAUTHENTICATED (REFRESH_TOKEN_INVALID): no such refresh token (unknown or malformed).
    #[error("invalid refresh token")]
    RefreshTokenInvalid,
    /// UNAUTHENTICATED (REFRESH_TOKEN_EXPIRED): the refresh token is past its lifetime.
    #[error("refresh token expired")]
    RefreshTokenExpired,
    /// UNAUTHENTICATED (REFRESH_TOKEN_REUSED): the refresh token was already used; its session
    /// has been revoked because the token may be stolen.
    #[error("refresh token already used; session revoked")]
    RefreshTokenReused,
    /// ALREADY_EXISTS (EMAIL_TAKEN): a new user's email is already registered.
    #[error("a user with this email already exists")]
    EmailTaken,
    /// RESOURCE_EXHAUSTED (LOGIN_THROTTLED): too many failed logins for this account or from
    /// this address; no password is checked until `retry_after` has passed.
    #[error("too many failed logins; retry later")]
    Throttled {
        /// How long until the next attempt is allowed.
        retry_after: std::time::Duration,
    },
    /// NOT_FOUND (USER_NOT_FOUND): no user has this id or email.
    #[error("no such user")]
    UserNotFound,
    /// NOT_FOUND (SESSION_NOT_FOUND): no session has this id (or, asked by a user, none of
    /// theirs does).
    #[error("no such session")]
    SessionNotFound,
    /// UNAUTHENTICATED (ADMIN_CREDENTIALS_MISSING): an AdminService call with neither a
    /// client certificate nor a bearer token.
    #[error("an admin credential is required")]
    AdminCredentialsMissing,
    /// PERMISSION_DENIED (ADMIN_CREDENTIALS_REFUSED): an AdminService call whose credential is
    /// not on the lists.
    #[error("this credential may not administer authd")]
    AdminCredentialsRefused,
    /// RESOURCE_EXHAUSTED (ADMIN_THROTTLED): too many refused admin credentials from this
    /// address; none is checked until `retry_after` has passed.
    #[error("too many refused admin credentials; retry later")]
    AdminThrottled {
        /// How long until the next attempt is allowed.
        retry_after: std::time::Duration,
    },
    /// RESOURCE_EXHAUSTED (OVERLOADED): every hashing thread is busy and the queue is full;
    /// retry after a moment.
    #[error("too many logins in progress; retry shortly")]
    Overloaded,
    /// RESOURCE_EXHAUSTED (TOO_MANY_SUBSCRIBERS): `AUTH_FEED_MAX_SUBSCRIBERS` revocation
    /// feeds are already being served.
    #[error("too many revocation feed subscribers; retry later or elsewhere")]
    TooManySubscribers,
    /// RESOURCE_EXHAUSTED (FEED_CONSUMER_TOO_SLOW): a revocation feed subscriber fell too far
    /// behind (or took no message for `AUTH_FEED_SEND_TIMEOUT`, when its connection is
    /// closed as well); reconnect with the last position.
    #[error("revocation feed subscriber too slow; reconnect with the last position")]
    FeedConsumerTooSlow,
    /// UNAVAILABLE (SHUTTING_DOWN): this replica is shutting down; call another.
    #[error("shutting down; reconnect")]
    ShuttingDown,
    /// UNAVAILABLE: the database is unreachable or busy; retrying later may succeed.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),
    /// INTERNAL: a bug or a broken dependency; details are logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable(err),
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Database(_) => Self::Internal(Box::new(err)),
        }
    }
}
