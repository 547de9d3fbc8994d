//! The revocation feed (WatchRevocations): the snapshot, then the news, a heartbeat, resuming
//! from a position, and the bounds that keep a subscriber cheap.

use std::{collections::HashSet, time::Duration};

use authd::proto::{WatchRevocationsRequest, WatchRevocationsResponse};
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_types::StatusExt as _;

use crate::common::{
    self, Backend, Client, PASSWORD, TestApp, assert_refused, assert_status, logout,
};

on_both_backends!(
    the_feed_starts_with_every_revoked_session_then_brings_each_new_one,
    a_subscriber_that_resumes_from_its_position_misses_nothing,
    a_quiet_feed_sends_heartbeats_that_move_its_position,
    a_malformed_position_is_an_invalid_argument,
    subscribers_beyond_the_limit_are_refused_until_one_leaves,
    one_address_cannot_take_every_seat,
    a_subscriber_that_falls_a_ring_behind_is_disconnected,
    a_subscriber_that_stops_reading_is_disconnected,
    shutting_down_ends_every_stream_at_once,
    grpcurl_follows_the_feed,
);

/// Opens a feed, resuming from `position` if any.
pub(crate) async fn watch(
    client: &Client,
    position: &str,
) -> Result<Streaming<WatchRevocationsResponse>, Status> {
    client
        .clone()
        .watch_revocations(WatchRevocationsRequest {
            resume_from: position.into(),
        })
        .await
        .map(|response| response.into_inner())
}

/// The next message, within a few seconds.
pub(crate) async fn next(
    stream: &mut Streaming<WatchRevocationsResponse>,
) -> WatchRevocationsResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("the stream carries on")
        .expect("the stream is open")
}

/// Reads until the subscriber has the whole set: the sessions it named, and its position.
pub(crate) async fn read_snapshot(
    stream: &mut Streaming<WatchRevocationsResponse>,
) -> (HashSet<String>, String) {
    let mut sessions = HashSet::new();
    loop {
        let message = next(stream).await;
        sessions.extend(message.revoked.into_iter().map(|r| r.session_id));
        if message.caught_up {
            return (sessions, message.position);
        }
    }
}

/// Reads until a message names `session_id`; fails after `deadline`.
pub(crate) async fn read_until_revoked(
    stream: &mut Streaming<WatchRevocationsResponse>,
    session_id: &str,
    deadline: Duration,
) -> WatchRevocationsResponse {
    tokio::time::timeout(deadline, async {
        loop {
            let message = next(stream).await;
            if message.revoked.iter().any(|r| r.session_id == session_id) {
                return message;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("session {session_id} not on the feed within {deadline:?}"))
}

/// `n` sessions of alice, who is created first.
async fn sessions(app: &TestApp, n: usize) -> Vec<authd::proto::LoginResponse> {
    app.add_user("alice@example.com", PASSWORD).await;
    let mut logins = Vec::new();
    for _ in 0..n {
        logins.push(app.login("alice@example.com", PASSWORD).await.unwrap());
    }
    logins
}

/// A server where alice has three sessions, the first of them logged out.
async fn three_sessions_first_logged_out(
    backend: Backend,
) -> (TestApp, Vec<authd::proto::LoginResponse>) {
    let app = TestApp::spawn(backend).await;
    let logins = sessions(&app, 3).await;
    logout(&app.client, &logins[0].refresh_token, false)
        .await
        .unwrap();
    (app, logins)
}

/// The value of a metric line (name with labels) in a scrape of `app`.
async fn metric(app: &TestApp, line: &str) -> Option<f64> {
    common::metric(app.http_addr, line).await
}

async fn the_feed_starts_with_every_revoked_session_then_brings_each_new_one(backend: Backend) {
    let (app, logins) = three_sessions_first_logged_out(backend).await;

    let mut feed = watch(&app.client, "").await.unwrap();
    let first = next(&mut feed).await;
    assert!(first.caught_up, "one page holds a revocation");
    let [revoked] = &first.revoked[..] else {
        panic!("expected the one revoked session, got {:?}", first.revoked);
    };
    assert_eq!(revoked.session_id, logins[0].session_id);
    // Forgotten once no access token of the session can still validate: at least the access
    // token lifetime after the revocation.
    let (at, until) = (revoked.revoked_at.unwrap(), revoked.forget_after.unwrap());
    assert!(until.seconds - at.seconds >= 15 * 60, "{at:?} .. {until:?}");
    assert!(!first.position.is_empty());

    logout(&app.client, &logins[1].refresh_token, false)
        .await
        .unwrap();
    let news = read_until_revoked(&mut feed, &logins[1].session_id, Duration::from_secs(5)).await;
    assert!(news.caught_up);
    assert!(
        news.revoked
            .iter()
            .all(|r| r.session_id != logins[2].session_id),
        "a live session is never on the feed"
    );
    assert_eq!(
        metric(&app, "authd_revocation_feed_subscribers").await,
        Some(1.0)
    );
    assert!(
        metric(&app, "authd_revocation_feed_lag_seconds_count").await >= Some(1.0),
        "the news was timed"
    );
}

async fn a_subscriber_that_resumes_from_its_position_misses_nothing(backend: Backend) {
    let (app, logins) = three_sessions_first_logged_out(backend).await;
    let mut feed = watch(&app.client, "").await.unwrap();
    let (seen, position) = read_snapshot(&mut feed).await;
    assert_eq!(seen, HashSet::from([logins[0].session_id.clone()]));
    drop(feed);

    // Made while nobody listened.
    logout(&app.client, &logins[1].refresh_token, false)
        .await
        .unwrap();
    let mut resumed = watch(&app.client, &position).await.unwrap();
    let (caught_up, _) = read_snapshot(&mut resumed).await;
    assert!(
        caught_up.contains(&logins[1].session_id),
        "the revocation made while away came back: {caught_up:?}"
    );
    logout(&app.client, &logins[2].refresh_token, false)
        .await
        .unwrap();
    read_until_revoked(&mut resumed, &logins[2].session_id, Duration::from_secs(5)).await;
}

async fn a_quiet_feed_sends_heartbeats_that_move_its_position(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_FEED_HEARTBEAT", "100ms")]).await;
    let mut feed = watch(&app.client, "").await.unwrap();
    let (none, position) = read_snapshot(&mut feed).await;
    assert!(none.is_empty());
    let beat = next(&mut feed).await;
    assert!(beat.revoked.is_empty() && beat.caught_up, "{beat:?}");
    let later = next(&mut feed).await;
    assert!(later.sent_at.unwrap().seconds >= beat.sent_at.unwrap().seconds);
    assert_ne!(
        later.position, position,
        "a heartbeat moves the position on"
    );
}

async fn a_malformed_position_is_an_invalid_argument(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for position in ["yesterday", "p", "p12x", "1733150000"] {
        assert_refused(
            watch(&app.client, position).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
    }
}

async fn subscribers_beyond_the_limit_are_refused_until_one_leaves(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_FEED_MAX_SUBSCRIBERS", "1")]).await;
    let mut first = watch(&app.client, "").await.unwrap();
    read_snapshot(&mut first).await;
    refused_until_one_leaves(&app, first).await;
}

/// Every seat this caller may take is taken: one more subscriber is refused, and once
/// `leaving` goes, a new one gets the snapshot.
async fn refused_until_one_leaves(app: &TestApp, leaving: Streaming<WatchRevocationsResponse>) {
    assert_refused(
        watch(&app.client, "").await,
        Code::ResourceExhausted,
        "TOO_MANY_SUBSCRIBERS",
    );
    drop(leaving);
    let mut next_one =
        common::eventually(Duration::from_secs(5), "the seat given back", || async {
            watch(&app.client, "").await.ok()
        })
        .await;
    read_snapshot(&mut next_one).await;
}

async fn one_address_cannot_take_every_seat(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_FEED_MAX_SUBSCRIBERS", "10"),
            ("AUTH_FEED_MAX_SUBSCRIBERS_PER_ADDRESS", "2"),
        ],
    )
    .await;
    let mut first = watch(&app.client, "").await.unwrap();
    let mut second = watch(&app.client, "").await.unwrap();
    read_snapshot(&mut first).await;
    read_snapshot(&mut second).await;
    refused_until_one_leaves(&app, first).await;
}

/// A client whose HTTP/2 windows hold `bytes`: what it does not read soon stops the server.
async fn narrow_client(app: &TestApp, bytes: u32) -> Client {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(bytes))
        .initial_connection_window_size(Some(bytes))
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

/// Reads what the server still sent, then the status it ended the stream with.
async fn ending(mut stream: Streaming<WatchRevocationsResponse>) -> Status {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends within 10 s")
}

async fn a_subscriber_that_falls_a_ring_behind_is_disconnected(backend: Backend) {
    // The send timeout is out of the way: only the ring decides.
    let app = TestApp::spawn_with(
        backend,
        &[("AUTH_FEED_BUFFER", "4"), ("AUTH_FEED_SEND_TIMEOUT", "1m")],
    )
    .await;
    let logins = sessions(&app, 40).await;
    let narrow = narrow_client(&app, 1024).await;
    let mut feed = watch(&narrow, "").await.unwrap();
    read_snapshot(&mut feed).await;
    // 40 revocations, one message each at most, while the subscriber reads nothing: more
    // than its 1 KiB window, the queue and the ring of 4 can hold.
    for login in &logins {
        logout(&app.client, &login.refresh_token, false)
            .await
            .unwrap();
    }
    let status = ending(feed).await;
    assert_status(&status, Code::ResourceExhausted, "FEED_CONSUMER_TOO_SLOW");
    common::eventually(Duration::from_secs(5), "the seat given back", || async {
        (metric(&app, "authd_revocation_feed_subscribers").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &app,
            r#"authd_revocation_feed_disconnects_total{reason="too_slow"}"#
        )
        .await,
        Some(1.0)
    );
}

async fn a_subscriber_that_stops_reading_is_disconnected(backend: Backend) {
    // Heartbeats alone fill a 1 KiB window quickly; no ring is outrun.
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_FEED_HEARTBEAT", "10ms"),
            ("AUTH_FEED_SEND_TIMEOUT", "500ms"),
        ],
    )
    .await;
    let narrow = narrow_client(&app, 1024).await;
    let mut feed = watch(&narrow, "").await.unwrap();
    read_snapshot(&mut feed).await;
    // Not reading: the server gives up on its own, holding nothing for the subscriber.
    common::eventually(
        Duration::from_secs(10),
        "the stalled subscriber disconnected",
        || async {
            let gone = metric(
                &app,
                r#"authd_revocation_feed_disconnects_total{reason="too_slow"}"#,
            )
            .await
                == Some(1.0);
            let seats = metric(&app, "authd_revocation_feed_subscribers").await;
            (gone && seats == Some(0.0)).then_some(())
        },
    )
    .await;
    assert_cut_off(ending(feed).await, "FEED_CONSUMER_TOO_SLOW");
}

/// A stalled subscriber's stream ends with its connection cut (a transport error, with no
/// word from authd), or, had the status still found room, with `reason`.
#[track_caller]
fn assert_cut_off(status: Status, reason: &str) {
    if status.get_details_error_info().is_some() {
        assert_eq!(status.get_details_error_info().unwrap().reason, reason);
    } else {
        assert!(
            matches!(status.code(), Code::Unknown | Code::Unavailable),
            "not a cut connection: {status:?}"
        );
    }
}

async fn shutting_down_ends_every_stream_at_once(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_SHUTDOWN_GRACE", "1m"),
            ("AUTH_FEED_HEARTBEAT", "10ms"),
            ("AUTH_FEED_SEND_TIMEOUT", "1m"),
        ],
    )
    .await;
    let narrow = narrow_client(&app, 1024).await;
    let mut stalled = watch(&narrow, "").await.unwrap();
    read_snapshot(&mut stalled).await;
    let mut feed = watch(&app.client, "").await.unwrap();
    read_snapshot(&mut feed).await;
    // A hundred heartbeats (4 KiB) went to each: the stalled subscriber's 1 KiB window and
    // queue are full, and its stream waits on it.
    for _ in 0..100 {
        next(&mut feed).await;
    }
    // Within the grace period and the send timeout the drain would otherwise wait for both.
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("the server stops without waiting out its grace period");
    assert_status(&ending(feed).await, Code::Unavailable, "SHUTTING_DOWN");
    assert_cut_off(ending(stalled).await, "SHUTTING_DOWN");
}

async fn grpcurl_follows_the_feed(backend: Backend) {
    let (app, logins) = three_sessions_first_logged_out(backend).await;
    let addr = app.addr.to_string();
    // A stream does not end by itself: grpcurl gives up after a second, having printed it.
    let (ended, printed, errors) = common::process::grpcurl(&[
        "-max-time",
        "1",
        "-d",
        "{}",
        &addr,
        "auth.v1.AuthService/WatchRevocations",
    ])
    .await;
    assert!(!ended, "the stream outlived grpcurl's deadline: {errors}");
    assert!(errors.contains("DeadlineExceeded"), "{errors}");
    for expected in [
        logins[0].session_id.as_str(),
        "\"caughtUp\": true",
        "\"position\": \"p",
    ] {
        assert!(printed.contains(expected), "no {expected} in {printed}");
    }
    assert!(!printed.contains(&logins[1].session_id), "{printed}");
}
