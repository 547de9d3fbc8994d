//! Sessions on one row: `refresh_tokens` holds one row per session (the current generation
//! and the hash of its secret), rewritten by each rotation instead of growing by one row per
//! refresh. The sliding end and the last rotation move from `sessions` to that row.
//!
//! Every live session keeps working: its current pre-upgrade token becomes generation 0 of
//! the new row (the hash is the same SHA-256 of the raw token), and the old table, renamed
//! `legacy_refresh_tokens`, still maps each pre-upgrade token to its session, so the current
//! one refreshes once (the answer is a token of the new format) and a used one is still
//! recognised as reuse. Its rows age out in the nightly clean-up within a refresh lifetime.
//!
//! Not reversible: tokens issued after the upgrade exist only as a generation and a hash,
//! which the previous schema cannot hold. Take a backup before upgrading.

use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{Statement, Value},
};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

// The trait is declared with an elided lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The same text on SQLite and PostgreSQL. Its indexes keep their names
        // (idx_refresh_tokens_token_hash serves the lookup of a pre-upgrade token,
        // idx_refresh_tokens_expires_at the clean-up).
        db.execute_unprepared("ALTER TABLE refresh_tokens RENAME TO legacy_refresh_tokens")
            .await?;

        // No index beside the primary key: a rotation then changes no indexed column, which
        // lets PostgreSQL update the row in place (a HOT update) and SQLite touch one b-tree.
        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .col(pk_uuid(RefreshTokens::SessionId))
                    // The session's user and login, copied (neither ever changes) so that a
                    // rotation reads no other row for them.
                    .col(uuid(RefreshTokens::UserId))
                    .col(timestamp_with_time_zone(RefreshTokens::SessionStartedAt))
                    // Counts the rotations; the token names the generation it carries.
                    .col(big_integer(RefreshTokens::Generation))
                    // SHA-256 of the current token's secret; the secret itself is nowhere.
                    .col(binary_len(RefreshTokens::SecretHash, 32))
                    .col(timestamp_with_time_zone(RefreshTokens::RotatedAt))
                    .col(timestamp_with_time_zone(RefreshTokens::ExpiresAt))
                    // Whether the previous token's one reuse-grace retry has been spent.
                    .col(boolean(RefreshTokens::Retried).default(false))
                    .foreign_key(
                        ForeignKey::create()
                            .from(RefreshTokens::Table, RefreshTokens::SessionId)
                            .to(Sessions::Table, Sessions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // Each session's unused token is its current one (a rotation marked the parent used
        // in the transaction that inserted the child, so there is one per session).
        db.execute_unprepared(
            "INSERT INTO refresh_tokens (session_id, user_id, session_started_at, \
               generation, secret_hash, rotated_at, expires_at, retried) \
             SELECT t.session_id, s.user_id, s.created_at, 0, t.token_hash, t.created_at, \
               t.expires_at, FALSE \
             FROM legacy_refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.used_at IS NULL \
             ON CONFLICT (session_id) DO NOTHING",
        )
        .await?;
        // A session without one (never seen, but possible in a hand-edited database) gets a
        // row that no token matches, so every session has exactly one row and the clean-up
        // deletes it when its old end passes; its revocation, if any, stays on record.
        let no_secret = Statement::from_sql_and_values(
            manager.get_database_backend(),
            "INSERT INTO refresh_tokens (session_id, user_id, session_started_at, \
               generation, secret_hash, rotated_at, expires_at, retried) \
             SELECT s.id, s.user_id, s.created_at, 0, $1, s.last_refreshed_at, s.expires_at, \
               FALSE \
             FROM sessions s \
             WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id)",
            [Value::Bytes(Some(vec![0; 32]))],
        );
        db.execute_raw(no_secret).await?;

        for column in ["expires_at", "last_refreshed_at"] {
            db.execute_unprepared(&format!("ALTER TABLE sessions DROP COLUMN {column}"))
                .await?;
        }

        // The clean-up deletes login attempts that have been quiet for a day.
        manager
            .create_index(
                Index::create()
                    .name("idx_login_attempts_last_failure_at")
                    .table(LoginAttempts::Table)
                    .col(LoginAttempts::LastFailureAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "sessions on one row cannot be undone: tokens issued since exist only as a \
             generation and a hash; restore the backup taken before the upgrade"
                .into(),
        ))
    }
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    SessionId,
    UserId,
    SessionStartedAt,
    Generation,
    SecretHash,
    RotatedAt,
    ExpiresAt,
    Retried,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum LoginAttempts {
    Table,
    LastFailureAt,
}
