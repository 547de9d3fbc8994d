//! Addresses each account last logged in from, so that a flood of wrong passwords against an
//! account does not lock its owner out at an address that logged in before. A new table:
//! nothing existing changes, and every live session keeps working.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

// The trait is declared with an elided lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KnownLoginClients::Table)
                    // The account's normalised email, as login_attempts keys it.
                    .col(string_len(KnownLoginClients::Email, 254))
                    // The address a login succeeded from, as throttling counts it (an IPv6
                    // address by its /64).
                    .col(string_len(KnownLoginClients::Client, 64))
                    .col(timestamp_with_time_zone(KnownLoginClients::LastSuccessAt))
                    .primary_key(
                        Index::create()
                            .col(KnownLoginClients::Email)
                            .col(KnownLoginClients::Client),
                    )
                    .to_owned(),
            )
            .await?;
        // The clean-up deletes the ones not seen for a while.
        manager
            .create_index(
                Index::create()
                    .name("idx_known_login_clients_last_success_at")
                    .table(KnownLoginClients::Table)
                    .col(KnownLoginClients::LastSuccessAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KnownLoginClients::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum KnownLoginClients {
    Table,
    Email,
    Client,
    LastSuccessAt,
}
