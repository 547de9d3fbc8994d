//! How fast a logout reaches the other replica and a verifier, on PostgreSQL:
//! `cargo bench --bench propagation` (needs PostgreSQL; `AUTH_BENCH_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432`).
//!
//! Two authd replicas share a fresh database, with the default settings (the poll at 1 s as the
//! backstop); a verifier follows replica B's feed. For each of 200 logouts made on replica A,
//! the time from Logout's answer to the first refusal of the session's access token by
//! Validate on B, and by the verifier, each polled back to back. Prints the percentiles for
//! BENCHMARKS.md; no pass or fail.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use authd::proto::{LogoutRequest, ValidateRequest};
use authd_verifier::{Verifier, VerifyError};
use sea_orm::{ConnectionTrait as _, Database};
use tonic::Code;

const LOGOUTS: usize = 200;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; this measures whatever it is asked.
    let server = std::env::var("AUTH_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let name = format!("authd_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(format!("{server}/postgres"))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = |file: &str| {
        let path = keys.path().join(file);
        authd::auth::generate_key_file(&path).unwrap();
        path.display().to_string()
    };
    let (signing, refresh, grace) = (key("signing.pem"), key("refresh.pem"), key("grace.pem"));
    let url = format!("{server}/{name}");
    let vars = [
        ("AUTH_DATABASE_URL", url.as_str()),
        ("AUTH_SIGNING_KEY_FILE", signing.as_str()),
        ("AUTH_REFRESH_KEY_FILE", refresh.as_str()),
        ("AUTH_REFRESH_GRACE_KEY_FILE", grace.as_str()),
    ];
    let a = support::Running::start(&vars).await;
    let b = support::Running::start(&vars).await;
    a.add_user("alice@example.com").await;
    let (on_a, on_b) = (a.client().await, b.client().await);
    let verifier = Verifier::start(b.verifier_settings());
    verifier.ready(Duration::from_secs(10)).await.unwrap();

    let mut to_b = Vec::with_capacity(LOGOUTS);
    let mut to_verifier = Vec::with_capacity(LOGOUTS);
    // The first few connect the listeners and warm the paths; they are not counted.
    for round in 0..LOGOUTS + 10 {
        let login = support::login(&on_a, "alice@example.com").await;
        verifier.verify(&login.access_token).await.unwrap();
        on_a.clone()
            .logout(LogoutRequest {
                refresh_token: login.refresh_token,
                all_sessions: false,
            })
            .await
            .unwrap();
        let answered = Instant::now();
        let token = login.access_token;
        let validate = async {
            loop {
                let refused = on_b
                    .clone()
                    .validate(ValidateRequest {
                        access_token: token.clone(),
                    })
                    .await
                    .is_err_and(|status| status.code() == Code::Unauthenticated);
                if refused {
                    return answered.elapsed();
                }
            }
        };
        let verify = async {
            loop {
                if verifier.verify_local(&token) == Err(VerifyError::Revoked) {
                    return answered.elapsed();
                }
                tokio::task::yield_now().await;
            }
        };
        let (b_took, verifier_took) = tokio::join!(validate, verify);
        if round >= 10 {
            to_b.push(b_took);
            to_verifier.push(verifier_took);
        }
    }
    report("Validate on replica B", &mut to_b);
    report("the verifier following B's feed", &mut to_verifier);

    drop(verifier);
    a.stop().await;
    b.stop().await;
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "logout on A -> refused by {what}, {} logouts: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}
