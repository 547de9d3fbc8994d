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
        // SQLite adds one column per ALTER TABLE.
        for column in [
            string_len_null(Sessions::LoginAddress, ADDRESS_BYTES),
            string_len_null(Sessions::LoginUserAgent, USER_AGENT_BYTES),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sessions::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [
            string_len_null(RefreshTokens::RefreshedAddress, ADDRESS_BYTES),
            string_len_null(RefreshTokens::RefreshedUserAgent, USER_AGENT_BYTES),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RefreshTokens::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Sessions::LoginAddress, Sessions::LoginUserAgent] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sessions::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [
            RefreshTokens::RefreshedAddress,
            RefreshTokens::RefreshedUserAgent,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(RefreshTokens::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    LoginAddress,
    LoginUserAgent,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    RefreshedAddress,
    RefreshedUserAgent,
}
