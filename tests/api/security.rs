//! Security hardening: session lifetime, bounded requests and hashing, rehash, set-password,
//! login throttling.

use crate::common;

use std::time::Duration;

use authd::store::entity::session;
use common::{
    Backend, PASSWORD, TestApp, assert_refresh_refused, assert_refused, assert_status, eventually,
    login,
    process::{AuthdProcess, run_authd},
    refresh, validate,
};
use sea_orm::{Database, EntityTrait as _};
use tonic::Code;

on_both_backends!(
    a_session_cannot_refresh_past_its_max_lifetime,
    a_login_rehashes_a_password_made_with_other_parameters,
    a_hash_made_before_passwords_were_normalised_logs_in_and_is_rehashed,
    concurrent_logins_during_a_rehash_all_succeed,
    set_password_revokes_every_session,
    failed_logins_throttle_the_account_with_growing_delays,
    within_the_reuse_grace_a_retry_gets_the_same_successor,
    within_the_reuse_grace_a_second_retry_is_reuse,
    after_the_reuse_grace_a_retry_revokes_the_session,
    concurrent_guesses_are_counted_before_any_is_checked,
    an_accounts_own_concurrent_logins_all_succeed,
    a_stated_client_address_is_throttled_and_the_gateway_is_not,
    the_peer_is_throttled_when_asked,
    behind_a_trusted_proxy_a_spoofed_first_entry_changes_nothing,
    a_guessing_flood_does_not_lock_the_owner_out_of_a_known_address,
    the_parameter_sets_of_stored_hashes_are_read_from_the_database,
);

async fn within_the_reuse_grace_a_retry_gets_the_same_successor(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REFRESH_REUSE_GRACE", "30s")]).await;
    let first = app.user_with_session("alice@example.com").await;
    let second = refresh(&app.client, &first.refresh_token).await.unwrap();

    // The answer got lost; the client retries with the token it still has.
    let retried = refresh(&app.client, &first.refresh_token)
        .await
        .expect("forgiven retry");
    assert_eq!(
        retried.refresh_token, second.refresh_token,
        "the same successor, none minted"
    );
    assert_eq!(retried.session_id, first.session_id);
    validate(&app.client, &retried.access_token)
        .await
        .expect("the session survives");
    let row = common::rows::refresh_row(&app.db, &first.session_id).await;
    assert_eq!(row.generation, 2, "no new generation was minted");
    assert!(row.retried, "the one retry is spent");

    // Once the successor is used, the first token is two generations old: theft.
    let third = refresh(&app.client, &second.refresh_token)
        .await
        .expect("chain goes on");
    common::assert_reuse_revokes_session(
        &app.client,
        &first.refresh_token,
        &third.refresh_token,
        &third.access_token,
    )
    .await;

    if let Some(dir) = app.db.sqlite_dir() {
        let db = std::fs::read(dir.join("authd.db")).unwrap();
        let wal = std::fs::read(dir.join("authd.db-wal")).unwrap_or_default();
        for raw in [&second.refresh_token, &third.refresh_token] {
            let stored = [&db, &wal]
                .iter()
                .any(|bytes| bytes.windows(raw.len()).any(|w| w == raw.as_bytes()));
            assert!(!stored, "a raw refresh token is stored");
        }
    }
}

/// The grace forgives one lost answer, not a thief and a victim taking turns.
async fn within_the_reuse_grace_a_second_retry_is_reuse(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REFRESH_REUSE_GRACE", "30s")]).await;
    let scrape = || common::http_get(app.http_addr, "/metrics");
    let first = app.user_with_session("alice@example.com").await;
    let second = refresh(&app.client, &first.refresh_token).await.unwrap();
    let retried = refresh(&app.client, &first.refresh_token)
        .await
        .expect("the one forgiven retry");
    assert_eq!(retried.refresh_token, second.refresh_token);
    let (_, metrics) = scrape().await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("authd_refresh_grace_retries_total ") && !line.ends_with(" 0")
        ),
        "the retry is counted: {metrics}"
    );

    common::assert_reuse_revokes_session(
        &app.client,
        &first.refresh_token,
        &second.refresh_token,
        &retried.access_token,
    )
    .await;
}

async fn after_the_reuse_grace_a_retry_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REFRESH_REUSE_GRACE", "1s")]).await;
    let first = app.user_with_session("alice@example.com").await;
    let second = refresh(&app.client, &first.refresh_token).await.unwrap();
    let rotated_at = chrono::Utc::now();
    eventually(
        Duration::from_secs(10),
        "the grace window to close",
        || async {
            (chrono::Utc::now() > rotated_at + chrono::TimeDelta::milliseconds(1500)).then_some(())
        },
    )
    .await;
    common::assert_reuse_revokes_session(
        &app.client,
        &first.refresh_token,
        &second.refresh_token,
        &second.access_token,
    )
    .await;
}

async fn stored_hash(app: &TestApp) -> String {
    common::rows::password_hash(&app.db, "alice@example.com").await
}

/// The first login upgrades the hash while the others verify the old one: a rehash is the
/// same password, so it must not refuse them as a password change would.
async fn concurrent_logins_during_a_rehash_all_succeed(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_ARGON2_MEMORY_KIB", "512")]).await;
    let old_params = [("AUTH_ARGON2_MEMORY_KIB", "256")];
    common::add_user_with(&app.db, &old_params, "alice@example.com", PASSWORD).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let logins: Vec<_> = (0..8)
        .map(|_| {
            let (client, barrier) = (app.client.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                login(&client, "alice@example.com", PASSWORD).await
            })
        })
        .collect();
    for handle in logins {
        let session = handle.await.unwrap().expect("every login succeeds");
        validate(&app.client, &session.access_token).await.unwrap();
    }
    assert!(stored_hash(&app).await.starts_with("$argon2id$v=19$m=512,"));
}

async fn a_login_rehashes_a_password_made_with_other_parameters(backend: Backend) {
    // The user was added under m=256 (the test default); the server now runs m=512.
    let app = TestApp::spawn_with(backend, &[("AUTH_ARGON2_MEMORY_KIB", "512")]).await;
    let old_params = [("AUTH_ARGON2_MEMORY_KIB", "256")];
    common::add_user_with(&app.db, &old_params, "alice@example.com", PASSWORD).await;
    assert!(
        stored_hash(&app)
            .await
            .starts_with("$argon2id$v=19$m=256,t=1,p=1$")
    );

    assert_refused(
        login(&app.client, "alice@example.com", "wrong password").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert!(
        stored_hash(&app).await.contains("m=256"),
        "a failed login changes nothing"
    );

    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("login");
    let rehashed = stored_hash(&app).await;
    assert!(
        rehashed.starts_with("$argon2id$v=19$m=512,t=1,p=1$"),
        "{rehashed}"
    );
    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("login with the new hash");
    assert_eq!(
        stored_hash(&app).await,
        rehashed,
        "a current hash is left alone"
    );
}

/// A hash made from a password's bytes as typed (NFD), as authd made them before it hashed
/// the NFKC form: the same bytes still log in and the hash moves to the normalised form, after
/// which the NFC spelling logs in too.
async fn a_hash_made_before_passwords_were_normalised_logs_in_and_is_rehashed(backend: Backend) {
    use argon2::{PasswordHasher as _, password_hash::SaltString};
    const NFC: &str = "caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e";
    const NFD: &str = "cafe\u{301} cre\u{300}me bru\u{302}le\u{301}e";
    let app = TestApp::spawn(backend).await;
    app.add_user("alice@example.com", PASSWORD).await;
    // The test cost (m=256, t=1), so that only the form, not the parameters, differs.
    let params = argon2::Params::new(256, 1, 1, Some(32)).unwrap();
    let old = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(
            NFD.as_bytes(),
            &SaltString::encode_b64(b"sixteen byte salt").unwrap(),
        )
        .unwrap()
        .to_string();
    let db = Database::connect(app.db.url()).await.unwrap();
    let user = authd::store::entity::user::Entity::find()
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    let mut row: authd::store::entity::user::ActiveModel = user.into();
    row.password_hash = sea_orm::ActiveValue::Set(old.clone());
    sea_orm::ActiveModelTrait::update(row, &db).await.unwrap();

    assert_refused(
        login(&app.client, "alice@example.com", NFC).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_eq!(
        stored_hash(&app).await,
        old,
        "a failed login changes nothing"
    );
    login(&app.client, "alice@example.com", NFD)
        .await
        .expect("the bytes once hashed still log in");
    let rehashed = stored_hash(&app).await;
    assert_ne!(rehashed, old, "rehashed in the normalised form");
    login(&app.client, "alice@example.com", NFC)
        .await
        .expect("now the NFC spelling logs in too");
}

async fn set_password_revokes_every_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_REVOCATION_POLL", "1s")]).await;
    let phone = app.user_with_session("alice@example.com").await;
    let laptop = login(&app.client, "alice@example.com", PASSWORD)
        .await
        .unwrap();

    let args = [
        "user",
        "set-password",
        "alice@example.com",
        "--password-stdin",
    ];
    let changed = run_authd(&app.db, &args, "a brand new passphrase\n").await;
    assert!(
        changed.status.success(),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );

    for session in [&phone, &laptop] {
        let (refresh_token, access_token) = (&session.refresh_token, &session.access_token);
        common::assert_session_revoked(&app.client, refresh_token, access_token).await;
    }
    let status = login(&app.client, "alice@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
    login(&app.client, "alice@example.com", "a brand new passphrase")
        .await
        .expect("new password");

    let unknown = run_authd(
        &app.db,
        &[
            "user",
            "set-password",
            "bob@example.com",
            "--password-stdin",
        ],
        "whatever else, fifteen+\n",
    )
    .await;
    assert!(!unknown.status.success(), "an unknown user is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_and_the_server_stays_healthy() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.add_user("alice@example.com", PASSWORD).await;
    for size in [20 * 1024, 1024 * 1024] {
        assert_refused(
            login(&app.client, &"a".repeat(size), PASSWORD).await,
            Code::ResourceExhausted,
            "REQUEST_TOO_LARGE",
        );
    }
    // Just under the limit is an ordinary (invalid) request.
    assert_refused(
        login(&app.client, &"a".repeat(15 * 1024), PASSWORD).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    common::wait_for_health(app.addr, ServingStatus::Serving, Duration::from_secs(5)).await;
    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("still serving logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_past_the_hashing_queue_is_turned_away() {
    use tonic_types::StatusExt as _;
    let slow = [
        ("AUTH_ARGON2_MEMORY_KIB", "19456"),
        ("AUTH_ARGON2_ITERATIONS", "6"),
        ("AUTH_PASSWORD_HASH_CONCURRENCY", "1"),
        ("AUTH_PASSWORD_HASH_QUEUE", "2"),
    ];
    let app = TestApp::spawn_with(Backend::Sqlite, &slow).await;
    app.add_user("alice@example.com", PASSWORD).await;
    // Twelve accounts (unknown ones hash a dummy just the same): one account's logins would
    // wait for each other's turn rather than fill the hashing queue.
    let calls: Vec<_> = (0..12)
        .map(|n| {
            let client = app.client.clone();
            tokio::spawn(
                async move { login(&client, &format!("user{n}@example.com"), PASSWORD).await },
            )
        })
        .collect();
    let (mut admitted, mut turned_away) = (0, 0);
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        if status.code() == Code::Unauthenticated {
            assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
            admitted += 1;
        } else {
            assert_status(&status, Code::ResourceExhausted, "OVERLOADED");
            assert!(
                status.get_details_retry_info().is_some(),
                "tells when to retry"
            );
            turned_away += 1;
        }
    }
    assert!(admitted >= 1, "some logins are checked");
    assert!(
        turned_away >= 1,
        "the rest are refused rather than queued without bound"
    );
    login(&app.client, "alice@example.com", PASSWORD)
        .await
        .expect("served again once idle");
}

async fn a_session_cannot_refresh_past_its_max_lifetime(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_SESSION_MAX_LIFETIME", "3s")]).await;
    let login = app.user_with_session("alice@example.com").await;
    assert!(
        login.refresh_expires_in <= 3,
        "the first token ends with the session"
    );

    // Rotation inside the lifetime works, but never moves the session's end.
    let rotated = refresh(&app.client, &login.refresh_token)
        .await
        .expect("refresh in time");
    assert!(rotated.refresh_expires_in <= 3);
    let db = Database::connect(app.db.url()).await.unwrap();
    let stored = session::Entity::find().one(&db).await.unwrap().unwrap();

    eventually(Duration::from_secs(10), "the session's end", || async {
        (chrono::Utc::now() > stored.created_at + chrono::TimeDelta::seconds(3)).then_some(())
    })
    .await;
    assert_refresh_refused(&app.client, &rotated.refresh_token, "SESSION_EXPIRED").await;
}

const THROTTLE: [(&str, &str); 4] = [
    ("AUTH_LOGIN_FREE_ATTEMPTS", "2"),
    ("AUTH_LOGIN_BASE_DELAY", "300ms"),
    ("AUTH_LOGIN_MAX_DELAY", "5s"),
    ("AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", "1000"),
];

fn retry_delay(status: &tonic::Status) -> Duration {
    use tonic_types::StatusExt as _;
    assert_status(status, Code::ResourceExhausted, "LOGIN_THROTTLED");
    let info = status.get_details_retry_info().expect("RetryInfo");
    info.retry_delay.expect("a delay")
}

/// Tries `password` until the throttle lets an attempt through; returns that attempt's result.
async fn first_unthrottled(
    app: &TestApp,
    email: &str,
    password: &str,
) -> Result<authd::proto::LoginResponse, tonic::Status> {
    eventually(
        Duration::from_secs(10),
        "the throttle to let a login through",
        || async {
            match login(&app.client, email, password).await {
                Err(status) if status.code() == Code::ResourceExhausted => None,
                other => Some(other),
            }
        },
    )
    .await
}

async fn failed_logins_throttle_the_account_with_growing_delays(backend: Backend) {
    let app = TestApp::spawn_with(backend, &THROTTLE).await;
    app.add_user("alice@example.com", PASSWORD).await;
    app.add_user("bob@example.com", PASSWORD).await;

    for _ in 0..2 {
        assert_refused(
            login(&app.client, "alice@example.com", "wrong").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    // Now even the right password waits: nothing is checked until the delay has passed.
    let first = retry_delay(
        &login(&app.client, "alice@example.com", PASSWORD)
            .await
            .unwrap_err(),
    );
    assert!(
        first > Duration::ZERO && first <= Duration::from_millis(300),
        "{first:?}"
    );

    // An unknown email is throttled the same way.
    for _ in 0..2 {
        let _ = login(&app.client, "nobody@example.com", "wrong").await;
    }
    let unknown = login(&app.client, "nobody@example.com", "wrong")
        .await
        .unwrap_err();
    assert!(retry_delay(&unknown) <= Duration::from_millis(300));

    // Another account is unaffected.
    login(&app.client, "bob@example.com", PASSWORD)
        .await
        .expect("bob is not throttled");

    // One more failure after the delay: the next delay is longer.
    let failed = first_unthrottled(&app, "alice@example.com", "wrong")
        .await
        .unwrap_err();
    assert_status(&failed, Code::Unauthenticated, "INVALID_CREDENTIALS");
    let second = retry_delay(
        &login(&app.client, "alice@example.com", PASSWORD)
            .await
            .unwrap_err(),
    );
    assert!(second > first, "the delay grows: {first:?} then {second:?}");

    // The right password works once the delay is over, and resets the count.
    first_unthrottled(&app, "alice@example.com", PASSWORD)
        .await
        .expect("right password");
    assert_refused(
        login(&app.client, "alice@example.com", "wrong").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

/// Address throttling alone: 3 free failures per address, then 10 s.
const ADDRESS_THROTTLE: [(&str, &str); 3] = [
    ("AUTH_LOGIN_FREE_ATTEMPTS", "100"),
    ("AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", "3"),
    ("AUTH_LOGIN_BASE_DELAY", "10s"),
];

/// A Login as a gateway sends it: the end user's address in `client`, or none, and perhaps an
/// `x-forwarded-for` header.
async fn login_via(
    app: &TestApp,
    email: &str,
    password: &str,
    client_address: Option<&str>,
    forwarded_for: Option<&str>,
) -> Result<authd::proto::LoginResponse, tonic::Status> {
    let mut request = tonic::Request::new(authd::proto::LoginRequest {
        email: email.into(),
        password: password.into(),
        client: client_address.map(|address| authd::proto::Client {
            address: address.into(),
            user_agent: "Mozilla/5.0 (test)".into(),
        }),
    });
    if let Some(forwarded) = forwarded_for {
        request
            .metadata_mut()
            .insert("x-forwarded-for", forwarded.parse().unwrap());
    }
    app.client
        .clone()
        .login(request)
        .await
        .map(|r| r.into_inner())
}

/// Many failures stating one end-user address, all through one peer (the gateway): that
/// address is throttled, another is not, and the gateway's own logins are not.
async fn a_stated_client_address_is_throttled_and_the_gateway_is_not(backend: Backend) {
    let app = TestApp::spawn_with(backend, &ADDRESS_THROTTLE).await;
    app.add_user("alice@example.com", PASSWORD).await;
    for n in 0..3 {
        let email = format!("guess{n}@example.com");
        assert_refused(
            login_via(&app, &email, "wrong", Some("203.0.113.7"), None).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    let status = login_via(
        &app,
        "alice@example.com",
        PASSWORD,
        Some("203.0.113.7"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        retry_delay(&status) > Duration::from_secs(5),
        "that address waits"
    );
    login_via(
        &app,
        "alice@example.com",
        PASSWORD,
        Some("198.51.100.2"),
        None,
    )
    .await
    .expect("another end user behind the same gateway");

    // Failures without a stated address come from the gateway itself: never throttled by
    // address unless AUTH_LOGIN_THROTTLE_PEER asks for it.
    for n in 0..5 {
        let email = format!("peer{n}@example.com");
        assert_refused(
            login_via(&app, &email, "wrong", None, None).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    login_via(&app, "alice@example.com", PASSWORD, None, None)
        .await
        .expect("the gateway is not throttled");

    let status = login_via(
        &app,
        "alice@example.com",
        PASSWORD,
        Some("203.0.113.7:443"),
        None,
    )
    .await
    .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(
        status.message().starts_with("client.address"),
        "{}",
        status.message()
    );
}

/// With AUTH_LOGIN_THROTTLE_PEER a Login without a stated address counts against the peer.
async fn the_peer_is_throttled_when_asked(backend: Backend) {
    let settings = [
        ADDRESS_THROTTLE.as_slice(),
        &[("AUTH_LOGIN_THROTTLE_PEER", "true")],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &settings).await;
    app.add_user("alice@example.com", PASSWORD).await;
    for n in 0..3 {
        let email = format!("guess{n}@example.com");
        let _ = login_via(&app, &email, "wrong", None, None).await;
    }
    let status = login_via(&app, "alice@example.com", PASSWORD, None, None)
        .await
        .unwrap_err();
    assert!(retry_delay(&status) > Duration::from_secs(5));
}

/// Behind one trusted proxy, the client writes the first x-forwarded-for entry and the proxy
/// appends what it saw. Rotating the first entry gains nothing: the throttle keys on the
/// proxy's entry. Writing a victim's address there does not lock the victim out.
async fn behind_a_trusted_proxy_a_spoofed_first_entry_changes_nothing(backend: Backend) {
    let settings = [
        ADDRESS_THROTTLE.as_slice(),
        &[("AUTH_TRUSTED_PROXY_HOPS", "1")],
    ]
    .concat();
    let app = TestApp::spawn_with(backend, &settings).await;
    app.add_user("alice@example.com", PASSWORD).await;
    for n in 0..3 {
        let spoofed = format!("198.51.100.{}, 203.0.113.7", n + 10);
        let email = format!("guess{n}@example.com");
        assert_refused(
            login_via(&app, &email, "wrong", None, Some(&spoofed)).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    let as_victim = "198.51.100.2, 203.0.113.7";
    let status = login_via(&app, "alice@example.com", PASSWORD, None, Some(as_victim))
        .await
        .unwrap_err();
    assert!(
        retry_delay(&status) > Duration::from_secs(5),
        "still the attacker's address"
    );
    login_via(
        &app,
        "alice@example.com",
        PASSWORD,
        None,
        Some("198.51.100.2"),
    )
    .await
    .expect("the victim, seen by the proxy as itself, is not locked out");
}

/// Account throttling alone: 5 free failures (the default), then 10 s.
const ACCOUNT_THROTTLE: [(&str, &str); 2] = [
    ("AUTH_LOGIN_BASE_DELAY", "10s"),
    ("AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS", "100000"),
];

/// 64 concurrent wrong passwords on one account, half through each of two replicas: each is
/// counted before any is checked, so only the 5 free attempts are checked and the rest are
/// refused with RESOURCE_EXHAUSTED; the right password, sent once the limit is crossed, is
/// refused too.
async fn concurrent_guesses_are_counted_before_any_is_checked(backend: Backend) {
    const FREE: usize = 5;
    let app = TestApp::spawn_with(backend, &ACCOUNT_THROTTLE).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let replica = AuthdProcess::spawn(&app.db, &ACCOUNT_THROTTLE).await;
    let clients = [app.client.clone(), replica.client().await];
    let guesses: Vec<_> = (0..64)
        .map(|n| {
            let client = clients[n % 2].clone();
            tokio::spawn(async move {
                login(&client, "alice@example.com", &format!("wrong guess {n}")).await
            })
        })
        .collect();
    let (mut checked, mut refused) = (0, 0);
    for guess in guesses {
        let status = guess.await.unwrap().expect_err("every guess is wrong");
        match status.code() {
            Code::Unauthenticated => {
                assert_status(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
                checked += 1;
            }
            Code::ResourceExhausted => refused += 1,
            other => panic!("a guess answered {other:?}: {status:?}"),
        }
    }
    assert!(
        (1..=FREE).contains(&checked),
        "{checked} of 64 concurrent guesses were checked"
    );
    assert_eq!(checked + refused, 64);
    for client in &clients {
        let status = login(client, "alice@example.com", PASSWORD)
            .await
            .expect_err("the right password once the limit is crossed");
        assert_status(&status, Code::ResourceExhausted, "LOGIN_THROTTLED");
    }
}

/// Ten concurrent logins of one account with the right password, on one replica and then
/// split over two: they wait for each other instead of counting against each other, and all
/// succeed.
async fn an_accounts_own_concurrent_logins_all_succeed(backend: Backend) {
    let app = TestApp::spawn_with(backend, &ACCOUNT_THROTTLE).await;
    app.add_user("alice@example.com", PASSWORD).await;
    let replica = AuthdProcess::spawn(&app.db, &ACCOUNT_THROTTLE).await;
    let other = replica.client().await;
    for split in [false, true] {
        let logins: Vec<_> = (0..10)
            .map(|n| {
                let client = if split && n % 2 == 1 {
                    other.clone()
                } else {
                    app.client.clone()
                };
                tokio::spawn(async move { login(&client, "alice@example.com", PASSWORD).await })
            })
            .collect();
        for (n, call) in logins.into_iter().enumerate() {
            call.await
                .unwrap()
                .unwrap_or_else(|status| panic!("login {n} (split {split}): {status:?}"));
        }
    }
}

/// The owner logged in from 198.51.100.2 before. A flood of wrong passwords from other
/// addresses blocks the account; the owner from that address still logs in, and the flood's
/// block stays (its delays keep growing). A known address that guesses wrong loses its pass.
async fn a_guessing_flood_does_not_lock_the_owner_out_of_a_known_address(backend: Backend) {
    const OWNER: &str = "198.51.100.2";
    let app = TestApp::spawn_with(backend, &ACCOUNT_THROTTLE).await;
    app.add_user("alice@example.com", PASSWORD).await;
    login_via(&app, "alice@example.com", PASSWORD, Some(OWNER), None)
        .await
        .expect("the owner's usual login");

    let mut blocked = None;
    for n in 0..20 {
        let attacker = format!("203.0.113.{n}");
        match login_via(&app, "alice@example.com", "guess", Some(&attacker), None).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                blocked = Some(retry_delay(&status));
                break;
            }
            other => assert_status(
                &other.unwrap_err(),
                Code::Unauthenticated,
                "INVALID_CREDENTIALS",
            ),
        }
    }
    let first_delay = blocked.expect("the flood blocks the account");

    login_via(&app, "alice@example.com", PASSWORD, Some(OWNER), None)
        .await
        .expect("the owner from a known address during the flood");
    let status = login_via(
        &app,
        "alice@example.com",
        PASSWORD,
        Some("192.0.2.99"),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        retry_delay(&status) > first_delay / 2,
        "an unknown address still meets the block, not reset by the owner's login"
    );

    assert_refused(
        login_via(&app, "alice@example.com", "guess", Some(OWNER), None).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_refused(
        login_via(&app, "alice@example.com", PASSWORD, Some(OWNER), None).await,
        Code::ResourceExhausted,
        "LOGIN_THROTTLED",
    );
}

/// What the hasher's dummy is sized by at start: every distinct parameter set of the stored
/// hashes, each once.
async fn the_parameter_sets_of_stored_hashes_are_read_from_the_database(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (n, memory) in ["256", "512", "512", "1024"].iter().enumerate() {
        let params = [("AUTH_ARGON2_MEMORY_KIB", *memory)];
        let email = format!("user{n}@example.com");
        common::add_user_with(&app.db, &params, &email, PASSWORD).await;
    }
    let store = authd::server::connect_and_migrate(&app.config.database)
        .await
        .unwrap();
    let mut prefixes = store.password_hash_prefixes().await.unwrap();
    prefixes.sort();
    assert_eq!(
        prefixes,
        [
            "$argon2id$v=19$m=1024,t=1,p=1",
            "$argon2id$v=19$m=256,t=1,p=1",
            "$argon2id$v=19$m=512,t=1,p=1",
        ]
    );
}
