//! Transport only: proto messages in, domain calls, proto messages or a `Status` out.

pub mod codec;
mod status;

use std::{future::Future, net::IpAddr, sync::Arc, time::Instant};

use tonic::{Request, Response, Status, codegen::http};

use crate::{
    auth::{AuthError, Authenticator, Email, IssuedTokens, Password, RefreshToken},
    proto::{
        LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, RefreshRequest,
        RefreshResponse, ValidateRequest, ValidateResponse, auth_service_server::AuthService,
    },
};

/// The `auth.v1.AuthService` implementation.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    auth: Arc<Authenticator>,
    trust_forwarded_for: bool,
}

impl AuthGrpc {
    /// Serves `auth` over gRPC; with `trust_forwarded_for`, the client address is the first
    /// `x-forwarded-for` entry rather than the peer.
    pub fn new(auth: Arc<Authenticator>, trust_forwarded_for: bool) -> Self {
        Self {
            auth,
            trust_forwarded_for,
        }
    }

    /// The address login throttling counts failures against.
    fn client_address<T>(&self, request: &Request<T>) -> Option<IpAddr> {
        let forwarded = self
            .trust_forwarded_for
            .then(|| request.metadata().get("x-forwarded-for"))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .and_then(|list| list.split(',').next())
            .and_then(|first| first.trim().parse().ok());
        forwarded.or_else(|| request.remote_addr().map(|peer| peer.ip()))
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        observe("Login", async {
            let client = self.client_address(&request);
            let LoginRequest { email, password } = request.into_inner();
            let email = Email::parse(&email)?;
            let password = Password::parse(password)?;
            Ok(self.auth.login(email, password, client).await?.into())
        })
        .await
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        observe("Refresh", async {
            let token = RefreshToken::parse(request.into_inner().refresh_token)?;
            Ok(self.auth.refresh(token).await?.into())
        })
        .await
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        observe("Logout", async {
            let LogoutRequest {
                refresh_token,
                all_sessions,
            } = request.into_inner();
            self.auth
                .logout(RefreshToken::parse(refresh_token), all_sessions)
                .await?;
            Ok(LogoutResponse {})
        })
        .await
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        observe("Validate", async {
            let claims = self.auth.validate(&request.get_ref().access_token)?;
            Ok(ValidateResponse {
                user_id: claims.sub.to_string(),
                email: claims.email,
                session_id: claims.sid.to_string(),
                issued_at: Some(timestamp(claims.iat)),
                expires_at: Some(timestamp(claims.exp)),
            })
        })
        .await
    }
}

/// Login and Refresh answer the same fields in two message types.
macro_rules! impl_from_issued_tokens {
    ($($response:ty),+) => {$(
        impl From<IssuedTokens> for $response {
            fn from(tokens: IssuedTokens) -> Self {
                Self {
                    access_token: tokens.access_token,
                    token_type: "Bearer".to_owned(),
                    expires_in: seconds(tokens.access_token_ttl),
                    refresh_token: tokens.refresh_token.expose().to_owned(),
                    refresh_expires_in: seconds(tokens.refresh_token_ttl),
                    session_id: tokens.session_id.to_string(),
                }
            }
        }
    )+};
}
impl_from_issued_tokens!(LoginResponse, RefreshResponse);

/// tonic refuses a request over its size limit with OUT_OF_RANGE before decoding it. authd's
/// contract (and gRPC's status guide) says RESOURCE_EXHAUSTED: this rewrites that one answer.
/// Nothing else in authd answers OUT_OF_RANGE.
pub fn oversized_is_resource_exhausted(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    if out_of_range {
        Status::from(AuthError::RequestTooLarge).into_http()
    } else {
        response
    }
}

fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

fn timestamp(unix_seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_seconds,
        nanos: 0,
    }
}

/// Runs one call, maps its error, and logs one line with method, status and latency.
async fn observe<T>(
    method: &'static str,
    call: impl Future<Output = Result<T, AuthError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = call.await.map(Response::new).map_err(Status::from);
    let code = result
        .as_ref()
        .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
    tracing::info!(
        method,
        code = ?code,
        latency_ms = started.elapsed().as_secs_f64() * 1e3,
        "rpc"
    );
    result
}
