//! The clean-up of expired rows: exactly the expired ones go, in batches, on schedule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeSet, time::Duration};

use authd::store::entity::{refresh_token, session, user};
use chrono::{DateTime, TimeDelta, Utc};
use common::{Backend, TestApp, TestDatabase, eventually, process::run_authd};
use sea_orm::{ActiveValue::Set, Database, DatabaseConnection, EntityTrait as _};
use uuid::Uuid;

on_both_backends!(
    cleanup_deletes_exactly_the_expired_rows,
    the_schedule_runs_the_cleanup,
);

struct Seeded {
    kept_tokens: BTreeSet<Uuid>,
    kept_sessions: BTreeSet<Uuid>,
}

async fn insert_session(
    db: &DatabaseConnection,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    revoked: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    let now = authd::store::now();
    session::Entity::insert(session::ActiveModel {
        id: Set(id),
        user_id: Set(user_id),
        created_at: Set(now - TimeDelta::days(30)),
        expires_at: Set(expires_at),
        last_refreshed_at: Set(now - TimeDelta::days(1)),
        revoked_at: Set(revoked.then_some(now - TimeDelta::hours(1))),
        revoked_reason: Set(revoked.then(|| "logout".to_owned())),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    id
}

async fn insert_token(
    db: &DatabaseConnection,
    session_id: Uuid,
    expires_at: DateTime<Utc>,
    used: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    let now = authd::store::now();
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        id: Set(id),
        session_id: Set(session_id),
        parent_id: Set(None),
        token_hash: Set(Uuid::new_v4().as_bytes().repeat(2)),
        created_at: Set(now - TimeDelta::days(8)),
        expires_at: Set(expires_at),
        used_at: Set(used.then_some(now - TimeDelta::days(2))),
    })
    .exec_without_returning(db)
    .await
    .unwrap();
    id
}

/// Seeds live, used, revoked and expired rows; returns the ones that must survive.
async fn seed(db: &DatabaseConnection) -> Seeded {
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

    let live = insert_session(db, user_id, future, false).await;
    let revoked = insert_session(db, user_id, future, true).await;
    let ended = insert_session(db, user_id, past, false).await;
    let kept_tokens = BTreeSet::from([
        insert_token(db, live, future, false).await,
        // Used but unexpired: kept, so presenting it again is still recognised as reuse.
        insert_token(db, live, future, true).await,
        insert_token(db, revoked, future, false).await,
    ]);
    insert_token(db, live, past, false).await;
    insert_token(db, live, past, true).await;
    insert_token(db, revoked, past, true).await;
    insert_token(db, ended, past, true).await;
    Seeded {
        kept_tokens,
        kept_sessions: BTreeSet::from([live, revoked]),
    }
}

async fn remaining(db: &DatabaseConnection) -> (BTreeSet<Uuid>, BTreeSet<Uuid>) {
    let tokens = refresh_token::Entity::find().all(db).await.unwrap();
    let sessions = session::Entity::find().all(db).await.unwrap();
    (
        tokens.into_iter().map(|t| t.id).collect(),
        sessions.into_iter().map(|s| s.id).collect(),
    )
}

async fn cleanup_deletes_exactly_the_expired_rows(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let migrated = run_authd(&db, &["migrate"], "").await;
    assert!(migrated.status.success());
    let conn = Database::connect(db.url()).await.unwrap();
    let seeded = seed(&conn).await;

    // A batch of 2 makes the four expired tokens take several transactions.
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
        stdout.contains("deleted 4 expired refresh tokens and 1 expired sessions"),
        "{stdout}"
    );

    let (tokens, sessions) = remaining(&conn).await;
    assert_eq!(tokens, seeded.kept_tokens);
    assert_eq!(sessions, seeded.kept_sessions);

    let again = run_authd(&db, &["cleanup"], "").await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("deleted 0 expired refresh tokens and 0 expired sessions"),
        "{stdout}"
    );
}

async fn the_schedule_runs_the_cleanup(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[("AUTH_CLEANUP_SCHEDULE", "* * * * * *")]).await;
    let conn = Database::connect(app.db.url()).await.unwrap();
    let seeded = seed(&conn).await;
    eventually(Duration::from_secs(10), "the scheduled cleanup", || async {
        (remaining(&conn).await == (seeded.kept_tokens.clone(), seeded.kept_sessions.clone()))
            .then_some(())
    })
    .await;
}
