//! Failed logins per account, shared by every replica, for login throttling.

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
                    .table(LoginAttempts::Table)
                    // Normalised email, whether or not such a user exists.
                    .col(string_len(LoginAttempts::Email, 254).primary_key())
                    .col(integer(LoginAttempts::Failures))
                    .col(timestamp_with_time_zone(LoginAttempts::LastFailureAt))
                    .col(timestamp_with_time_zone(LoginAttempts::BlockedUntil))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LoginAttempts::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum LoginAttempts {
    Table,
    Email,
    Failures,
    LastFailureAt,
    BlockedUntil,
}
