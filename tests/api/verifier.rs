//! `authd-verifier` against a live server: local verification, logouts from the feed, key
//! rotation, forgeries, failing closed when the feed goes quiet, and the tower layer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use authd_verifier::{AccessClaims, OnStale, Verifier, VerifierSettings, VerifyError, VerifyLayer};
use ed25519_dalek::{SigningKey, pkcs8::DecodePrivateKey as _};
use serde_json::json;
use tonic::{Code, Request, Response, Status, metadata::MetadataValue};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_client::HealthClient,
    health_server::{Health, HealthServer},
};

use crate::{
    common::{self, Backend, PASSWORD, TestApp, eventually, logout},
    keys::KeyRotation,
    validate::{forgeries, parts, sign},
};

on_both_backends!(
    a_fresh_token_verifies_locally_and_a_logged_out_one_is_refused,
    forged_and_expired_tokens_are_refused_as_validate_refuses_them,
    a_token_of_a_rotated_in_key_verifies_once_the_jwks_has_it,
    with_the_feed_silent_past_the_staleness_bound_verification_fails_closed,
    with_the_feed_out_of_reach_validate_can_stand_in,
    the_tower_layer_lets_only_a_good_token_through_with_its_claims,
);

/// Settings for a verifier of the server at `grpc` and `http`, as `app` issues tokens.
fn settings_for(app: &TestApp, grpc: SocketAddr, http: SocketAddr) -> VerifierSettings {
    VerifierSettings::new(
        &format!("http://{http}/.well-known/jwks.json"),
        &format!("http://{grpc}"),
        &app.config.sessions.issuer,
        &app.config.sessions.audience,
    )
    .unwrap()
}

/// A verifier of `app`, started and ready.
async fn ready_verifier(settings: VerifierSettings) -> Verifier {
    let verifier = Verifier::start(settings);
    verifier
        .ready(Duration::from_secs(10))
        .await
        .expect("keys and feed within 10 s");
    verifier
}

/// Waits until `verifier` refuses `token` locally with `refusal`.
async fn until_refused(verifier: &Verifier, token: &str, refusal: VerifyError) {
    eventually(Duration::from_secs(5), &format!("{refusal:?}"), || async {
        (verifier.verify_local(token).err() == Some(refusal.clone())).then_some(())
    })
    .await;
}

async fn a_fresh_token_verifies_locally_and_a_logged_out_one_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let phone = app.user_with_session("alice@example.com").await;
    let laptop = app.login("alice@example.com", PASSWORD).await.unwrap();
    let verifier = ready_verifier(settings_for(&app, app.addr, app.http_addr)).await;

    let claims = verifier.verify(&phone.access_token).await.unwrap();
    assert_eq!(claims.sid.to_string(), phone.session_id);
    assert_eq!(claims.email, "alice@example.com");
    assert_eq!(
        verifier.verify_local(&phone.access_token).unwrap(),
        claims,
        "the same answer from the cache"
    );

    logout(&app.client, &phone.refresh_token, false)
        .await
        .unwrap();
    until_refused(&verifier, &phone.access_token, VerifyError::Revoked).await;
    verifier
        .verify(&laptop.access_token)
        .await
        .expect("the other session lives on");
}

async fn forged_and_expired_tokens_are_refused_as_validate_refuses_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let server_key = SigningKey::from_pkcs8_pem(&app.db.signing_key_pem()).unwrap();
    let mut settings = settings_for(&app, app.addr, app.http_addr);
    settings.key_refetch_interval = Duration::from_millis(10);
    let verifier = ready_verifier(settings).await;

    for (case, token) in forgeries(&login.access_token, &login.refresh_token, &server_key) {
        assert_eq!(
            verifier.verify(&token).await.err(),
            Some(VerifyError::Invalid),
            "{case}"
        );
    }
    let (header, mut claims) = parts(&login.access_token);
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now - 120);
    claims["exp"] = json!(now - 60);
    let expired = sign(&server_key, &header, &claims);
    assert_eq!(
        verifier.verify(&expired).await.err(),
        Some(VerifyError::Expired)
    );
}

/// A port free now, to restart a server on the same addresses.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn a_token_of_a_rotated_in_key_verifies_once_the_jwks_has_it(backend: Backend) {
    let (grpc, http) = (free_address(), free_address());
    let (grpc_text, http_text) = (grpc.to_string(), http.to_string());
    let at = [
        ("AUTH_LISTEN", grpc_text.as_str()),
        ("AUTH_HTTP_LISTEN", http_text.as_str()),
    ];
    let app = TestApp::spawn_with(backend, &at).await;
    let before = app.user_with_session("alice@example.com").await;
    let mut settings = settings_for(&app, grpc, http);
    settings.key_refetch_interval = Duration::from_millis(10);
    let verifier = ready_verifier(settings).await;
    verifier.verify(&before.access_token).await.unwrap();

    let db = app.stop().await;
    let rotation = KeyRotation::new(&db);
    let rotated: Vec<_> = at.iter().copied().chain(rotation.settings()).collect();
    let app = TestApp::spawn_on(db, &rotated).await;
    let after = app.login("alice@example.com", PASSWORD).await.unwrap();
    assert_eq!(
        verifier.verify_local(&after.access_token).err(),
        Some(VerifyError::Invalid),
        "a key not fetched yet"
    );
    // Callers meeting the new key together share one fetch, and every one of them passes.
    let mut together = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (verifier, token) = (verifier.clone(), after.access_token.clone());
        together.spawn(async move { verifier.verify(&token).await });
    }
    while let Some(verified) = together.join_next().await {
        verified.unwrap().expect("the new key's token verifies");
    }
    verifier
        .verify(&before.access_token)
        .await
        .expect("the old key is still listed");
}

async fn with_the_feed_silent_past_the_staleness_bound_verification_fails_closed(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_FEED_HEARTBEAT", "100ms")]).await;
    let login = app.user_with_session("alice@example.com").await;
    let mut settings = settings_for(&app, app.addr, app.http_addr);
    settings.staleness = Duration::from_secs(1);
    let verifier = ready_verifier(settings).await;
    verifier.verify(&login.access_token).await.unwrap();

    app.stop().await;
    until_refused(&verifier, &login.access_token, VerifyError::FeedStale).await;
    assert_eq!(
        verifier.verify(&login.access_token).await.err(),
        Some(VerifyError::FeedStale),
        "failing closed, nothing asks authd"
    );
}

async fn with_the_feed_out_of_reach_validate_can_stand_in(backend: Backend) {
    // The one feed seat is taken: the second verifier never hears the feed.
    let app = TestApp::spawn_with(backend, &[("AUTH_FEED_MAX_SUBSCRIBERS", "1")]).await;
    let login = app.user_with_session("alice@example.com").await;
    let _first = ready_verifier(settings_for(&app, app.addr, app.http_addr)).await;
    let mut settings = settings_for(&app, app.addr, app.http_addr);
    settings.on_stale = OnStale::CallValidate;
    let second = Verifier::start(settings);
    let claims = eventually(Duration::from_secs(5), "the keys", || async {
        second.verify(&login.access_token).await.ok()
    })
    .await;
    assert_eq!(claims.sid.to_string(), login.session_id);
    assert_eq!(
        second.verify_local(&login.access_token).err(),
        Some(VerifyError::FeedStale),
        "without the feed, local verification alone fails closed"
    );
    logout(&app.client, &login.refresh_token, false)
        .await
        .unwrap();
    assert_eq!(
        second.verify(&login.access_token).await.err(),
        Some(VerifyError::Revoked),
        "Validate's word"
    );
    app.stop().await;
    assert!(
        matches!(
            second.verify(&login.access_token).await,
            Err(VerifyError::Unavailable(_))
        ),
        "neither the feed nor Validate: refused"
    );
}

/// A protected service: answers health checks with the caller's user id in `x-user-id`.
struct WhoAsks;

#[tonic::async_trait]
impl Health for WhoAsks {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let claims = request
            .extensions()
            .get::<Arc<AccessClaims>>()
            .ok_or_else(|| Status::internal("no claims reached the service"))?;
        let mut response = Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        });
        response
            .metadata_mut()
            .insert("x-user-id", claims.sub.to_string().parse().unwrap());
        Ok(response)
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("check only"))
    }
}

/// A health check with `authorization` set to `value`, if any.
async fn check_with(
    client: &HealthClient<tonic::transport::Channel>,
    authorization: Option<&str>,
) -> Result<Response<HealthCheckResponse>, Status> {
    let mut request = Request::new(HealthCheckRequest::default());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
    }
    client.clone().check(request).await
}

#[track_caller]
fn assert_refused_by_layer(result: Result<Response<HealthCheckResponse>, Status>, reason: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let given = status
        .metadata()
        .get("x-authd-reason")
        .map(|v| v.to_str().unwrap());
    assert_eq!(given, Some(reason).filter(|r| !r.is_empty()), "{status:?}");
}

async fn the_tower_layer_lets_only_a_good_token_through_with_its_claims(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let revoked = app.login("alice@example.com", PASSWORD).await.unwrap();
    let verifier = ready_verifier(settings_for(&app, app.addr, app.http_addr)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(VerifyLayer::new(verifier.clone()))
            .add_service(HealthServer::new(WhoAsks))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = HealthClient::new(common::channel(address).await);

    assert_refused_by_layer(check_with(&client, None).await, "");
    assert_refused_by_layer(
        check_with(&client, Some("Bearer not-a-token")).await,
        "TOKEN_INVALID",
    );
    logout(&app.client, &revoked.refresh_token, false)
        .await
        .unwrap();
    until_refused(&verifier, &revoked.access_token, VerifyError::Revoked).await;
    assert_refused_by_layer(
        check_with(&client, Some(&format!("Bearer {}", revoked.access_token))).await,
        "SESSION_REVOKED",
    );
    let answer = check_with(&client, Some(&format!("Bearer {}", login.access_token)))
        .await
        .expect("a good token passes");
    let claims = verifier.verify_local(&login.access_token).unwrap();
    assert_eq!(
        answer
            .metadata()
            .get("x-user-id")
            .unwrap()
            .to_str()
            .unwrap(),
        claims.sub.to_string(),
        "the service saw the token's claims"
    );
}
