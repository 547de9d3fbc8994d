//! The clean-up of expired rows: exactly the expired ones go, in batches, on schedule.

use crate::common;

use std::{collections::BTreeSet, time::Duration};

use authd::store::entity::{
    known_login_client, legacy_refresh_token, login_attempt, refresh_token, session, user,
};
use chrono::{DateTime, TimeDelta, Utc};
use common::{Backend, TestApp, TestDatabase, eventually, process::run_authd};
use sea_orm::{ActiveValue::Set, Database, DatabaseConnection, EntityTrait as _};
use uuid::Uuid;

on_both_backends!(
    cleanup_deletes_exactly_the_expired_rows,
    the_schedule_runs_the_cleanup,
);

/// What the clean-up must leave: sessions, pre-upgrade tokens, login attempts, known login
/// addresses.
type Rows = (
    BTreeSet<Uuid>,
    BTreeSet<Uuid>,
    BTreeSet<String>,
    BTreeSet<(String, String)>,
);

/// An address `email` last logged in from `age` ago.
async fn insert_known_client(
    db: &DatabaseConnection,
    email: &str,
    client: &str,
    age: TimeDelta,
) -> (String, String) {
    known_login_client::Entity::insert(known_login_client::ActiveModel {
        email: Set(email.to_owned()),
        client: Set(client.to_owned()),
        last_success_at: Set(authd::store::now() - age),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    (email.to_owned(), client.to_owned())
}

/// A session begun `age` ago whose current token expires at `expires_at`.
async fn insert_session(
    db: &DatabaseConnection,
    user_id: Uuid,
    age: TimeDelta,
    expires_at: DateTime<Utc>,
    revoked: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    let now = authd::store::now();
    session::Entity::insert(session::ActiveModel {
        id: Set(id),
        user_id: Set(user_id),
        created_at: Set(now - age),
        revoked_at: Set(revoked.then_some(now - TimeDelta::hours(1))),
        revoked_reason: Set(revoked.then(|| "logout".to_owned())),
        login_address: Set(None),
        login_user_agent: Set(None),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        session_id: Set(id),
        user_id: Set(user_id),
        session_started_at: Set(now - age),
        generation: Set(3),
        secret_hash: Set(Uuid::new_v4().as_bytes().repeat(2)),
        rotated_at: Set(now - TimeDelta::days(1)),
        expires_at: Set(expires_at),
        retried: Set(false),
        refreshed_address: Set(None),
        refreshed_user_agent: Set(None),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    id
}

/// A token from before the upgrade, as the migration keeps it.
async fn insert_legacy_token(
    db: &DatabaseConnection,
    session_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::new_v4();
    let now = authd::store::now();
    legacy_refresh_token::Entity::insert(legacy_refresh_token::ActiveModel {
        id: Set(id),
        session_id: Set(session_id),
        parent_id: Set(None),
        token_hash: Set(Uuid::new_v4().as_bytes().repeat(2)),
        created_at: Set(now - TimeDelta::days(8)),
        expires_at: Set(expires_at),
        used_at: Set(Some(now - TimeDelta::days(2))),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    id
}

async fn insert_login_attempt(
    db: &DatabaseConnection,
    email: &str,
    last_failure_at: DateTime<Utc>,
    blocked_until: DateTime<Utc>,
) -> String {
    login_attempt::Entity::insert(login_attempt::ActiveModel {
        email: Set(email.to_owned()),
        failures: Set(7),
        last_failure_at: Set(last_failure_at),
        blocked_until: Set(blocked_until),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    email.to_owned()
}

/// Seeds live, revoked and ended sessions, expired and unexpired pre-upgrade tokens, and login
/// attempts recent, forgotten and still blocking; returns the rows that must survive.
async fn seed(db: &DatabaseConnection) -> Rows {
    let now = authd::store::now();
    let (past, future) = (now - TimeDelta::seconds(5), now + TimeDelta::days(3));
    let user_id = Uuid::new_v4();
    user::Entity::insert(user::ActiveModel {
        id: Set(user_id),
        email: Set("alice@example.com".into()),
        password_hash: Set("$argon2id$unused".into()),
        disabled_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(db)
    .await
    .unwrap();

    let day = TimeDelta::days(1);
    let live = insert_session(db, user_id, day, future, false).await;
    // Revoked but not ended: kept, so presenting any of its tokens is still recognised.
    let revoked = insert_session(db, user_id, day, future, true).await;
    for _ in 0..3 {
        insert_session(db, user_id, day, past, false).await;
    }
    // Past AUTH_SESSION_MAX_LIFETIME (30 days), however late its token expires.
    insert_session(db, user_id, TimeDelta::days(31), future, false).await;

    let kept_legacy = insert_legacy_token(db, live, future).await;
    insert_legacy_token(db, live, past).await;

    let recent = insert_login_attempt(db, "recent@example.com", now, past).await;
    let blocking = insert_login_attempt(db, "blocked@example.com", now - day * 2, future).await;
    insert_login_attempt(db, "forgotten@example.com", now - day * 2, past).await;

    // Trusted for 30 days after the last success.
    let fresh = insert_known_client(db, "alice@example.com", "192.0.2.1", day).await;
    let aging = insert_known_client(db, "alice@example.com", "192.0.2.2", day * 29).await;
    insert_known_client(db, "alice@example.com", "192.0.2.3", day * 31).await;
    (
        BTreeSet::from([live, revoked]),
        BTreeSet::from([kept_legacy]),
        BTreeSet::from([recent, blocking]),
        BTreeSet::from([fresh, aging]),
    )
}

async fn remaining(db: &DatabaseConnection) -> Rows {
    let sessions = session::Entity::find().all(db).await.unwrap();
    let legacy = legacy_refresh_token::Entity::find().all(db).await.unwrap();
    let attempts = login_attempt::Entity::find().all(db).await.unwrap();
    let known = known_login_client::Entity::find().all(db).await.unwrap();
    (
        sessions.into_iter().map(|s| s.id).collect(),
        legacy.into_iter().map(|t| t.id).collect(),
        attempts.into_iter().map(|a| a.email).collect(),
        known.into_iter().map(|k| (k.email, k.client)).collect(),
    )
}

/// Every session has its one refresh row: the clean-up deletes them together.
async fn assert_one_refresh_row_per_session(db: &DatabaseConnection) {
    let sessions = session::Entity::find().all(db).await.unwrap();
    let rows = refresh_token::Entity::find().all(db).await.unwrap();
    let ids = |ids: Vec<Uuid>| ids.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        ids(rows.into_iter().map(|r| r.session_id).collect()),
        ids(sessions.into_iter().map(|s| s.id).collect())
    );
}

async fn cleanup_deletes_exactly_the_expired_rows(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let migrated = run_authd(&db, &["migrate"], "").await;
    assert!(migrated.status.success());
    let conn = Database::connect(db.url()).await.unwrap();
    let seeded = seed(&conn).await;

    // A batch of 2 makes the four ended sessions take several passes.
    let output = common::process::authd_command(&db, &[("AUTH_CLEANUP_BATCH_SIZE", "2")])
        .arg("cleanup")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "deleted 4 ended sessions, 1 expired pre-upgrade refresh tokens, 1 forgotten login \
             attempts and 1 known login addresses unseen for 30 days"
        ),
        "{stdout}"
    );

    assert_eq!(remaining(&conn).await, seeded);
    assert_one_refresh_row_per_session(&conn).await;

    let again = run_authd(&db, &["cleanup"], "").await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("deleted 0 ended sessions, 0 expired pre-upgrade refresh tokens, 0"),
        "{stdout}"
    );
}

async fn the_schedule_runs_the_cleanup(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_CLEANUP_SCHEDULE", "* * * * * *")]).await;
    let conn = Database::connect(app.db.url()).await.unwrap();
    let seeded = seed(&conn).await;
    eventually(Duration::from_secs(10), "the scheduled cleanup", || async {
        (remaining(&conn).await == seeded).then_some(())
    })
    .await;
}
