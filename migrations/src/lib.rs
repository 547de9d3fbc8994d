//! authd's database schema, one file per migration. Run by `authd migrate` and at every
//! `authd serve` start; applied migrations are recorded in `seaql_migrations`.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_tables;
mod m20261126_000002_login_attempts;
mod m20261201_000003_sessions_on_one_row;
mod m20261202_000004_known_login_clients;
mod m20261202_000005_session_clients;

/// Every migration of authd, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_tables::Migration),
            Box::new(m20261126_000002_login_attempts::Migration),
            Box::new(m20261201_000003_sessions_on_one_row::Migration),
            Box::new(m20261202_000004_known_login_clients::Migration),
            Box::new(m20261202_000005_session_clients::Migration),
        ]
    }
}
