//! Faults injected for real: a database that goes away, a server killed with SIGKILL, a
//! SIGTERM with calls in flight, clients that give up mid-call.

use crate::common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use authd::store::entity::{refresh_token, session};
use common::{
    Backend, Client, PASSWORD, TestApp, TestDatabase, add_user, assert_status, eventually, health,
    login, logout, postgres::ThrowawayPostgres, process::AuthdProcess, refresh, validate,
    wait_for_health,
};
use sea_orm::{Database, EntityTrait as _};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

on_both_backends!(
    refresh_chains_survive_a_sigkill,
    a_sigkill_during_logins_leaves_whole_sessions_or_none,
    client_deadlines_never_leave_a_half_rotated_session,
);

/// Waits for a call that must not hang; returns what it answered.
async fn answered<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the call answered within a bounded time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_then_recovers_without_a_restart() {
    let server = Arc::new(ThrowawayPostgres::start());
    let db = TestDatabase::create_on(&server.url(), Some(Arc::clone(&server))).await;
    let settings = [
        ("AUTH_DB_PROBE_INTERVAL", "200ms"),
        ("AUTH_DB_ACQUIRE_TIMEOUT", "1s"),
    ];
    let app = TestApp::spawn_on(db, &settings).await;
    let before = app.user_with_session("alice@example.com").await;
    let other = app.login("alice@example.com", PASSWORD).await.unwrap();
    wait_for_health(app.addr, ServingStatus::Serving, Duration::from_secs(5)).await;

    server.stop();
    wait_for_health(app.addr, ServingStatus::NotServing, Duration::from_secs(10)).await;
    // Unready, but alive: a liveness probe must not restart replicas over a database outage.
    let liveness = health(app.addr, authd::server::LIVENESS_SERVICE).await;
    assert_eq!(liveness.unwrap(), ServingStatus::Serving);

    let status = answered(app.login("alice@example.com", PASSWORD))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "UNAVAILABLE");
    let status = answered(refresh(&app.client, &before.refresh_token))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "UNAVAILABLE");
    let status = answered(logout(&app.client, &other.refresh_token, false))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "UNAVAILABLE");
    // Validate needs no database: it keeps answering from the keys and revocations it holds.
    validate(&app.client, &before.access_token)
        .await
        .expect("validate during the outage");

    server.start_again();
    wait_for_health(app.addr, ServingStatus::Serving, Duration::from_secs(15)).await;
    let after = answered(refresh(&app.client, &before.refresh_token)).await;
    let after = after.expect("a session from before the outage refreshes after it");
    assert_eq!(after.session_id, before.session_id);
    answered(logout(&app.client, &other.refresh_token, false))
        .await
        .expect("logout after");
}

/// PostgreSQL killed with SIGKILL while the pool holds connections, then started again: health
/// says SERVING within a few probes, and from then on no call fails on a connection from
/// before the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_crash_serving_means_every_call_succeeds_at_once() {
    let server = Arc::new(ThrowawayPostgres::start());
    let db = TestDatabase::create_on(&server.url(), Some(Arc::clone(&server))).await;
    let settings = [
        ("AUTH_DB_PROBE_INTERVAL", "1s"),
        ("AUTH_DB_ACQUIRE_TIMEOUT", "1s"),
    ];
    let app = TestApp::spawn_on(db, &settings).await;
    // Eight accounts: one account's logins take turns, and would share one connection.
    for n in 0..8 {
        app.add_user(&format!("user{n}@example.com"), PASSWORD)
            .await;
    }
    let logins = |app: &TestApp| {
        let calls: Vec<_> = (0..8)
            .map(|n| {
                let client = app.client.clone();
                tokio::spawn(async move {
                    login(&client, &format!("user{n}@example.com"), PASSWORD).await
                })
            })
            .collect();
        async move {
            let mut sessions = Vec::new();
            for call in calls {
                sessions.push(answered(call).await.unwrap());
            }
            sessions
        }
    };
    // Eight at once fill the pool with connections that the crash will break.
    let before: Vec<_> = logins(&app).await.into_iter().map(Result::unwrap).collect();
    wait_for_health(app.addr, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert!(
        pooled_connections(&app.db).await >= 8,
        "the pool holds a connection per login"
    );

    server.kill();
    wait_for_health(app.addr, ServingStatus::NotServing, Duration::from_secs(10)).await;
    server.start_again();
    // Within a few probes, not one probe per dead pooled connection.
    wait_for_health(app.addr, ServingStatus::Serving, Duration::from_secs(5)).await;

    for (at, outcome) in logins(&app).await.into_iter().enumerate() {
        outcome.unwrap_or_else(|status| panic!("login {at} after SERVING: {status:?}"));
    }
    let refreshed = answered(refresh(&app.client, &before[0].refresh_token)).await;
    let refreshed = refreshed.expect("the first Refresh after SERVING");
    validate(&app.client, &refreshed.access_token)
        .await
        .expect("the first Validate after SERVING");
}

/// Connections to the test's database other than the one asking, from pg_stat_activity.
async fn pooled_connections(db: &TestDatabase) -> i64 {
    use sea_orm::{ConnectionTrait as _, Statement};
    let conn = Database::connect(db.url()).await.unwrap();
    let sql = "SELECT count(*) - 1 AS n FROM pg_stat_activity WHERE datname = current_database()";
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    conn.close().await.unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

struct Chain {
    /// The newest refresh token the client received.
    last: String,
    /// Every token the client already traded in.
    used: Vec<String>,
}

async fn refresh_chains_survive_a_sigkill(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let mut server = AuthdProcess::spawn(&db, &[]).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let client = server.client().await;
    let rotations = Arc::new(AtomicUsize::new(0));

    let mut chains = Vec::new();
    for _ in 0..16 {
        let session = login(&client, "alice@example.com", PASSWORD).await.unwrap();
        let (client, rotations) = (client.clone(), Arc::clone(&rotations));
        chains.push(tokio::spawn(async move {
            let mut chain = Chain {
                last: session.refresh_token,
                used: Vec::new(),
            };
            // Until the server dies under us.
            while let Ok(next) = refresh(&client, &chain.last).await {
                chain
                    .used
                    .push(std::mem::replace(&mut chain.last, next.refresh_token));
                rotations.fetch_add(1, Ordering::Relaxed);
            }
            chain
        }));
    }
    eventually(Duration::from_secs(30), "refreshes under way", || async {
        (rotations.load(Ordering::Relaxed) >= 64).then_some(())
    })
    .await;
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    let mut finished = Vec::new();
    for chain in chains {
        finished.push(chain.await.unwrap());
    }

    let restarted = AuthdProcess::spawn(&db, &[]).await;
    let client = restarted.client().await;
    for chain in &finished {
        // Either the last token works, or the refresh in flight at the kill committed and the
        // client never saw its answer: then presenting the last token is a reuse and the
        // session is revoked as a whole. Never anything in between.
        if let Err(status) = refresh(&client, &chain.last).await {
            assert_status(&status, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
        }
        for used in &chain.used {
            // An earlier generation is a reuse, whether or not the session was revoked.
            common::assert_refresh_refused(&client, used, "REFRESH_TOKEN_REUSED").await;
        }
    }
}

async fn a_sigkill_during_logins_leaves_whole_sessions_or_none(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let mut server = AuthdProcess::spawn(&db, &[]).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let client = server.client().await;
    let logins = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, logins) = (client.clone(), Arc::clone(&logins));
        workers.push(tokio::spawn(async move {
            while login(&client, "alice@example.com", PASSWORD).await.is_ok() {
                logins.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    eventually(Duration::from_secs(30), "logins under way", || async {
        (logins.load(Ordering::Relaxed) >= 32).then_some(())
    })
    .await;
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    for worker in workers {
        worker.await.unwrap();
    }

    let conn = Database::connect(db.url()).await.unwrap();
    let sessions = session::Entity::find().all(&conn).await.unwrap();
    let tokens = refresh_token::Entity::find().all(&conn).await.unwrap();
    assert!(sessions.len() >= 32);
    for session in &sessions {
        let count = tokens.iter().filter(|t| t.session_id == session.id).count();
        assert_eq!(
            count, 1,
            "session {} has {count} refresh tokens",
            session.id
        );
    }
}

async fn client_deadlines_never_leave_a_half_rotated_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let mut interrupted = 0;
    for round in 0u64..40 {
        let session = app.login("alice@example.com", PASSWORD).await.unwrap();
        let mut request = tonic::Request::new(authd::proto::RefreshRequest {
            refresh_token: session.refresh_token.clone(),
            client: None,
        });
        // From 0.1 ms to 4 ms: before, during and after the transaction.
        request.set_timeout(Duration::from_micros(100 + (round * 97) % 3900));
        if app.client.clone().refresh(request).await.is_err() {
            interrupted += 1;
            // The answer was lost: a retry with the same token either rotates it (nothing was
            // committed) or is a reuse (the rotation committed). Both leave a whole chain.
            let retry = eventually(Duration::from_secs(5), "a definite answer", || async {
                match refresh(&app.client, &session.refresh_token).await {
                    Err(s) if s.code() == Code::Unavailable => None,
                    other => Some(other),
                }
            })
            .await;
            if let Err(status) = retry {
                assert_status(&status, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
            }
        }
    }
    assert!(
        interrupted > 0,
        "no deadline fired: the test proved nothing"
    );
    // Every session kept its one row, rotated at most once (by the first try or the retry).
    let conn = Database::connect(app.db.url()).await.unwrap();
    let sessions = session::Entity::find().all(&conn).await.unwrap();
    let tokens = refresh_token::Entity::find().all(&conn).await.unwrap();
    assert_eq!(sessions.len(), 40);
    assert_eq!(tokens.len(), sessions.len(), "one refresh row per session");
    for token in &tokens {
        assert!(
            [1, 2].contains(&token.generation),
            "session {} rotated {} times",
            token.session_id,
            token.generation - 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_first_finishes_calls_in_flight_and_exits_zero() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    // Slow, one-at-a-time hashing keeps several logins in flight when SIGTERM arrives.
    let slow = [
        ("AUTH_ARGON2_MEMORY_KIB", "19456"),
        ("AUTH_ARGON2_ITERATIONS", "12"),
        ("AUTH_PASSWORD_HASH_CONCURRENCY", "1"),
        ("AUTH_SHUTDOWN_GRACE", "20s"),
    ];
    let mut server = AuthdProcess::spawn(&db, &slow).await;
    common::add_user_with(&db, &slow, "alice@example.com", PASSWORD).await;
    let client = server.client().await;

    let mut health = HealthClient::new(common::channel(server.addr).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let mut in_flight: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { login(&client, "alice@example.com", PASSWORD).await })
        })
        .collect();
    // Once the first answers, the other three have reached the server and wait their turn.
    let first = in_flight.remove(0).await.unwrap();
    first.expect("first login");
    server.terminate();

    let next = health.next().await.unwrap().unwrap();
    assert_eq!(
        next.status(),
        ServingStatus::NotServing,
        "health turns off first"
    );
    drop(health);
    let refused = eventually(
        Duration::from_secs(10),
        "new connections to be refused",
        || async {
            let attempt = Client::connect(format!("http://{}", server.addr)).await;
            attempt.is_err().then_some(())
        },
    );
    refused.await;
    for call in in_flight {
        call.await
            .unwrap()
            .expect("a call in flight at SIGTERM completes");
    }
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("exits within AUTH_SHUTDOWN_GRACE")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
