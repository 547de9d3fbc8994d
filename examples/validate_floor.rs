//! The floor for Validate: a plain tonic server that answers every `ValidateRequest` with one
//! fixed `ValidateResponse` and does nothing else (no layers, no metrics, no verification),
//! plus the standard health service. `scripts/bench.sh ... floor` runs it beside authd so that
//! BENCHMARKS.md can say what authd's Validate costs above the transport.
//!
//!   cargo run --release --example validate_floor -- 127.0.0.1:50072
#![allow(clippy::expect_used)] // a measuring tool: failing loudly is right

use authd::proto::{
    ChangePasswordRequest, ChangePasswordResponse, ListMySessionsRequest, ListMySessionsResponse,
    LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse,
    RevokeMySessionRequest, RevokeMySessionResponse, ValidateRequest, ValidateResponse,
    WatchRevocationsRequest, WatchRevocationsResponse,
    auth_service_server::{AuthService, AuthServiceServer},
};
use tonic::{Request, Response, Status};

/// What the floor answers every call but Validate.
fn validate_only<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the floor answers Validate only"))
}

/// Answers Validate with the same message, whatever the token.
#[derive(Debug)]
struct FixedValidate(ValidateResponse);

#[tonic::async_trait]
impl AuthService for FixedValidate {
    type WatchRevocationsStream = tokio_stream::Empty<Result<WatchRevocationsResponse, Status>>;

    async fn watch_revocations(
        &self,
        _: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        validate_only()
    }

    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        validate_only()
    }

    async fn refresh(
        &self,
        _: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        validate_only()
    }

    async fn logout(&self, _: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        validate_only()
    }

    async fn list_sessions(
        &self,
        _: Request<ListMySessionsRequest>,
    ) -> Result<Response<ListMySessionsResponse>, Status> {
        validate_only()
    }

    async fn revoke_session(
        &self,
        _: Request<RevokeMySessionRequest>,
    ) -> Result<Response<RevokeMySessionResponse>, Status> {
        validate_only()
    }

    async fn change_password(
        &self,
        _: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        validate_only()
    }

    async fn validate(
        &self,
        _: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

#[tokio::main]
pub(crate) async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50072".to_owned())
        .parse()
        .expect("an address such as 127.0.0.1:50072");
    // What authd answers for a real token: same field sizes, so the same bytes on the wire.
    let fixed = ValidateResponse {
        user_id: "0193a1c4-5b6e-7f80-9a1b-2c3d4e5f6a7b".to_owned(),
        email: "fast+0@example.com".to_owned(),
        session_id: "0193a1c4-5b6e-7f80-9a1b-2c3d4e5f6a7c".to_owned(),
        issued_at: Some(prost_types::Timestamp {
            seconds: 1_764_000_000,
            nanos: 0,
        }),
        expires_at: Some(prost_types::Timestamp {
            seconds: 1_764_007_200,
            nanos: 0,
        }),
    };
    // No subscriber at all would make every span of h2 and hyper fall back to the `log` crate
    // (tracing's `log` feature is on in this tree): a cost a plain server does not have.
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
        .expect("the first subscriber");
    let (_, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(AuthServiceServer::new(FixedValidate(fixed)))
        .serve(address)
        .await
        .expect("serves");
}
