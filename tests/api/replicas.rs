//! Revocations pushed between replicas on PostgreSQL: with the poll at a minute, only the push
//! can deliver a logout to another replica in time, and it survives losing its connection.

use std::time::Duration;

use authd::store::LISTENER_APPLICATION_NAME;
use sea_orm::sqlx::{self, Connection as _, PgConnection};
use tonic::Code;

use crate::{
    common::{
        self, Backend, PASSWORD, TestDatabase, add_user, eventually, login, logout,
        process::AuthdProcess, validate,
    },
    feed,
};

/// Polls so rare that a test passing within seconds was served by the push.
const RARE_POLL: [(&str, &str); 1] = [("AUTH_REVOCATION_POLL", "1m")];

/// The backend pids of the revocation listeners connected to `db` that are listening: their
/// last statement was the LISTEN (a connection that has not sent it yet would miss a NOTIFY).
async fn listener_pids(db: &TestDatabase) -> Vec<i32> {
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database() \
           AND query ILIKE 'LISTEN%' ORDER BY pid",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Two replicas of one database, both listening.
async fn two_listening_replicas(db: &TestDatabase) -> (AuthdProcess, AuthdProcess) {
    let one = AuthdProcess::spawn(db, &RARE_POLL).await;
    let two = AuthdProcess::spawn(db, &RARE_POLL).await;
    eventually(
        Duration::from_secs(10),
        "both listeners connected",
        || async { (listener_pids(db).await.len() == 2).then_some(()) },
    )
    .await;
    (one, two)
}

/// A Logout on `on` makes Validate on `seen_from` refuse the session within 2 s.
async fn assert_logout_pushed(on: &common::Client, seen_from: &common::Client) {
    let session = login(seen_from, "alice@example.com", PASSWORD)
        .await
        .unwrap();
    validate(seen_from, &session.access_token)
        .await
        .expect("valid before the logout");
    logout(on, &session.refresh_token, false).await.unwrap();
    let status = eventually(
        Duration::from_secs(2),
        "the other replica to refuse the logged-out session",
        || async { validate(seen_from, &session.access_token).await.err() },
    )
    .await;
    common::assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_reaches_the_other_replica_by_push_with_the_poll_at_a_minute() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let (one, two) = two_listening_replicas(&db).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let metrics_of_two = two.http_addr();
    let (one, two) = (one.client().await, two.client().await);
    assert_logout_pushed(&one, &two).await;
    assert_logout_pushed(&two, &one).await;

    // The second replica counted what it announced and what reached it.
    let (_, scrape) = common::http_get(metrics_of_two, "/metrics").await;
    for counter in [
        "authd_revocations_pushed_total 1",
        "authd_revocations_received_total 1",
    ] {
        assert!(
            scrape.lines().any(|l| l == counter),
            "{counter} in\n{scrape}"
        );
    }
    assert!(
        scrape.contains("authd_revocation_push_lag_seconds_count 1"),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_connects_again_and_the_push_resumes() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let (one, two) = two_listening_replicas(&db).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let killed = listener_pids(&db).await;
    let mut conn = PgConnection::connect(db.url()).await.unwrap();
    for pid in &killed {
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(terminated, "listener {pid} terminated");
    }
    eventually(Duration::from_secs(15), "both listeners back", || async {
        let now = listener_pids(&db).await;
        (now.len() == 2 && now.iter().all(|pid| !killed.contains(pid))).then_some(())
    })
    .await;
    let (one, two) = (one.client().await, two.client().await);
    assert_logout_pushed(&one, &two).await;
}

/// What `name` counts in the scrape of `metrics` (0 before its first count).
async fn counter(metrics: std::net::SocketAddr, name: &str) -> f64 {
    common::metric(metrics, name).await.unwrap_or(0.0)
}

/// WatchRevocations on one replica carries a logout made on the other within 2 s, by the
/// push; and a subscriber that moves to the first replica with the second's position misses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_of_one_replica_carries_a_logout_made_on_the_other() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let (one, two) = two_listening_replicas(&db).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let (one, two) = (one.client().await, two.client().await);
    let first = login(&one, "alice@example.com", PASSWORD).await.unwrap();
    let second = login(&one, "alice@example.com", PASSWORD).await.unwrap();
    let mut feed = feed::watch(&two, "").await.unwrap();
    let (_, position) = feed::read_snapshot(&mut feed).await;
    drop(feed);
    logout(&one, &first.refresh_token, false).await.unwrap();

    let mut moved = feed::watch(&one, &position).await.unwrap();
    let (caught_up, _) = feed::read_snapshot(&mut moved).await;
    assert!(
        caught_up.contains(&first.session_id),
        "resumed elsewhere, the revocation made while away came back: {caught_up:?}"
    );
    let mut feed = feed::watch(&two, "").await.unwrap();
    feed::read_snapshot(&mut feed).await;
    logout(&one, &second.refresh_token, false).await.unwrap();
    feed::read_until_revoked(&mut feed, &second.session_id, Duration::from_secs(2)).await;
}

/// While the listeners keep losing their connection, a revocation still arrives by the poll,
/// within its interval; once they are left alone, the push delivers again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_listener_down_the_poll_delivers_and_the_push_comes_back() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let db = TestDatabase::create(Backend::Postgres).await;
    let poll = [("AUTH_REVOCATION_POLL", "2s")];
    let one = AuthdProcess::spawn(&db, &poll).await;
    let two = AuthdProcess::spawn(&db, &poll).await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let metrics_of_two = two.http_addr();
    let (one, two) = (one.client().await, two.client().await);
    eventually(
        Duration::from_secs(10),
        "both listeners connected",
        || async { (listener_pids(&db).await.len() == 2).then_some(()) },
    )
    .await;

    // Every listener connection is terminated as soon as it appears.
    let down = Arc::new(AtomicBool::new(true));
    let killer = tokio::spawn({
        let (down, url) = (down.clone(), db.url().to_owned());
        async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            while down.load(Ordering::Relaxed) {
                pace.tick().await;
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND datname = current_database()",
                )
                .bind(LISTENER_APPLICATION_NAME)
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
    });
    let session = login(&two, "alice@example.com", PASSWORD).await.unwrap();
    logout(&one, &session.refresh_token, false).await.unwrap();
    let status = eventually(
        Duration::from_secs(5),
        "the poll to bring the logout within its interval",
        || async { validate(&two, &session.access_token).await.err() },
    )
    .await;
    common::assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");

    down.store(false, Ordering::Relaxed);
    killer.await.unwrap();
    eventually(Duration::from_secs(15), "both listeners back", || async {
        (listener_pids(&db).await.len() == 2).then_some(())
    })
    .await;
    let received = counter(metrics_of_two, "authd_revocations_received_total").await;
    let session = login(&two, "alice@example.com", PASSWORD).await.unwrap();
    logout(&one, &session.refresh_token, false).await.unwrap();
    eventually(
        Duration::from_secs(2),
        "the push to deliver again",
        || async {
            let now = counter(metrics_of_two, "authd_revocations_received_total").await;
            (now == received + 1.0).then_some(())
        },
    )
    .await;
    common::assert_validate_refused(&two, &session.access_token, "SESSION_REVOKED").await;
}
