//! Failed logins per account and the addresses an account logged in from: the login
//! throttle's shared state, in the database so that every replica sees it.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use super::{
    Store, StoreError,
    entity::{known_login_client, login_attempt},
    missing,
};

/// The outcome of [`Store::reserve_login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginReservation {
    /// The attempt may check its password; it is counted as the `failures`-th failure until
    /// a success clears the count.
    Granted {
        /// The account's failures, this attempt included.
        failures: u32,
    },
    /// An earlier failure blocks attempts until then.
    Blocked {
        /// When the block ends.
        until: DateTime<Utc>,
    },
}

impl Store {
    /// Reserves a login attempt for `email` before its password is checked: counted as a
    /// failure at once (failures before `forget_before` forgotten), so that concurrent
    /// guesses on any replica each take a count, and blocking the next attempt until
    /// `block_end(count, now)`. Refused, and not counted, while an earlier block lasts.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn reserve_login_attempt(
        &self,
        email: &str,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
        block_end: impl Fn(u32, DateTime<Utc>) -> DateTime<Utc>,
    ) -> Result<LoginReservation, StoreError> {
        let _turn = self.write_turn().await?;
        use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
        let txn = self.db.begin().await?;
        // One atomic increment, which on PostgreSQL also locks the row until the commit:
        // concurrent reservations of one account take their counts one after another.
        let count = Expr::case(
            Expr::col((login_attempt::Entity, login_attempt::Column::LastFailureAt))
                .lt(forget_before),
            1,
        )
        .finally(Expr::col((login_attempt::Entity, login_attempt::Column::Failures)).add(1));
        login_attempt::Entity::insert(login_attempt::ActiveModel {
            email: Set(email.to_owned()),
            failures: Set(1),
            last_failure_at: Set(now),
            blocked_until: Set(now),
        })
        .on_conflict(
            OnConflict::column(login_attempt::Column::Email)
                .value(login_attempt::Column::Failures, count)
                .value(login_attempt::Column::LastFailureAt, now)
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let Some(row) = login_attempt::Entity::find_by_id(email.to_owned())
            .one(&txn)
            .await?
        else {
            return Err(missing("login attempt just written"));
        };
        if row.blocked_until > now {
            txn.rollback().await?;
            return Ok(LoginReservation::Blocked {
                until: row.blocked_until,
            });
        }
        let failures = u32::try_from(row.failures).unwrap_or(u32::MAX);
        login_attempt::Entity::update_many()
            .col_expr(
                login_attempt::Column::BlockedUntil,
                block_end(failures, now).into(),
            )
            .filter(login_attempt::Column::Email.eq(email))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(LoginReservation::Granted { failures })
    }

    /// Gives back a reservation whose password was never checked (the hashing queue was full,
    /// the database failed): one count less, and the block of one failure less.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn release_login_attempt(
        &self,
        email: &str,
        now: DateTime<Utc>,
        block_end: impl Fn(u32, DateTime<Utc>) -> DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        let txn = self.db.begin().await?;
        let Some(row) = login_attempt::Entity::find_by_id(email.to_owned())
            .one(&txn)
            .await?
        else {
            return Ok(());
        };
        let failures = row.failures.saturating_sub(1).max(0);
        login_attempt::Entity::update_many()
            .col_expr(login_attempt::Column::Failures, failures.into())
            .col_expr(
                login_attempt::Column::BlockedUntil,
                block_end(u32::try_from(failures).unwrap_or(0), now).into(),
            )
            .filter(login_attempt::Column::Email.eq(email))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Records that a login of `email` succeeded from `client` at `now`.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn remember_login_client(
        &self,
        email: &str,
        client: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        use sea_orm::sea_query::OnConflict;
        let _turn = self.write_turn().await?;
        known_login_client::Entity::insert(known_login_client::ActiveModel {
            email: Set(email.to_owned()),
            client: Set(client.to_owned()),
            last_success_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([
                known_login_client::Column::Email,
                known_login_client::Column::Client,
            ])
            .update_column(known_login_client::Column::LastSuccessAt)
            .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Whether a login of `email` succeeded from `client` since `since`.
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn is_known_login_client(
        &self,
        email: &str,
        client: &str,
        since: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(
            known_login_client::Entity::find_by_id((email.to_owned(), client.to_owned()))
                .one(&self.db)
                .await?
                .is_some_and(|known| known.last_success_at >= since),
        )
    }

    /// Forgets that `client` ever logged in as `email` (after it failed to, while trusted).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn forget_login_client(&self, email: &str, client: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        known_login_client::Entity::delete_by_id((email.to_owned(), client.to_owned()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Forgets the failed logins of `email` (after a success).
    #[tracing::instrument(target = "authd::db", skip_all, fields(db.system.name = self.db_system()))]
    pub async fn clear_login_failures(&self, email: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await?;
        login_attempt::Entity::delete_by_id(email.to_owned())
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
