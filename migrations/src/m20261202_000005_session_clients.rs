//! Where each session was opened and last refreshed from: the end user's address and User-Agent
//! as the calling service stated them (else the calling peer), shown when a user or an
//! administrator lists sessions. Nullable columns added to existing tables: every live session
//! keeps working, and shows no client until it next refreshes.

use sea_orm_migration::{prelude::*, schema::*};

/// Longest User-Agent kept, in bytes (the API refuses longer ones).
const USER_AGENT_BYTES: u32 = 1024;
/// Longest address kept: an IPv6 address in text.
const ADDRESS_BYTES: u32 = 45;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

// The trait is declared with an elided lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sessions = [
            string_len_null(Sessions::LoginAddress, ADDRESS_BYTES),
            string_len_null(Sessions::LoginUserAgent, USER_AGENT_BYTES),
        ];
        alter_each(
            manager,
            Sessions::Table,
            sessions,
            TableAlterStatement::add_column,
        )
        .await?;
        let refresh_tokens = [
            string_len_null(RefreshTokens::RefreshedAddress, ADDRESS_BYTES),
            string_len_null(RefreshTokens::RefreshedUserAgent, USER_AGENT_BYTES),
        ];
        let add = TableAlterStatement::add_column;
        alter_each(manager, RefreshTokens::Table, refresh_tokens, add).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sessions = [Sessions::LoginAddress, Sessions::LoginUserAgent];
        alter_each(
            manager,
            Sessions::Table,
            sessions,
            TableAlterStatement::drop_column,
        )
        .await?;
        let refresh_tokens = [
            RefreshTokens::RefreshedAddress,
            RefreshTokens::RefreshedUserAgent,
        ];
        let drop = TableAlterStatement::drop_column;
        alter_each(manager, RefreshTokens::Table, refresh_tokens, drop).await
    }
}

/// One ALTER TABLE per column: SQLite changes one column per statement.
async fn alter_each<C>(
    manager: &SchemaManager<'_>,
    table: impl IntoIden + Copy + 'static,
    columns: impl IntoIterator<Item = C>,
    change: fn(&mut TableAlterStatement, C) -> &mut TableAlterStatement,
) -> Result<(), DbErr> {
    for column in columns {
        let mut statement = Table::alter();
        statement.table(table);
        change(&mut statement, column);
        manager.alter_table(statement).await?;
    }
    Ok(())
}

#[derive(DeriveIden, Clone, Copy)]
enum Sessions {
    Table,
    LoginAddress,
    LoginUserAgent,
}

#[derive(DeriveIden, Clone, Copy)]
enum RefreshTokens {
    Table,
    RefreshedAddress,
    RefreshedUserAgent,
}
