//! Transport only: proto messages in, domain calls, proto messages or a `Status` out.

mod status;

use std::{future::Future, sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

pub use status::ERROR_DOMAIN;

use crate::{
    auth::{AuthError, Authenticator, Email, IssuedTokens, Password},
    proto::{
        LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, RefreshRequest,
        RefreshResponse, ValidateRequest, ValidateResponse, auth_service_server::AuthService,
    },
};

/// The `auth.v1.AuthService` implementation.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    auth: Arc<Authenticator>,
}

impl AuthGrpc {
    /// Serves `auth` over gRPC.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        observe("Login", async {
            let LoginRequest { email, password } = request.into_inner();
            let email = Email::parse(&email)?;
            let password = Password::parse(password)?;
            let tokens = self.auth.login(email, password).await?;
            Ok(token_response(tokens))
        })
        .await
    }

    async fn refresh(
        &self,
        _request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        Err(Status::unimplemented("Refresh is not implemented yet"))
    }

    async fn logout(
        &self,
        _request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        Err(Status::unimplemented("Logout is not implemented yet"))
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

fn token_response(tokens: IssuedTokens) -> LoginResponse {
    LoginResponse {
        access_token: tokens.access_token,
        token_type: "Bearer".to_owned(),
        expires_in: seconds(tokens.access_token_ttl),
        refresh_token: tokens.refresh_token.expose().to_owned(),
        refresh_expires_in: seconds(tokens.refresh_token_ttl),
        session_id: tokens.session_id.to_string(),
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
