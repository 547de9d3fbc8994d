use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "login_attempts")]
pub struct Model {
    /// Normalised email, whether or not such a user exists.
    #[sea_orm(primary_key, auto_increment = false)]
    pub email: String,
    /// Consecutive failed logins (forgotten after a quiet day, reset by a success).
    pub failures: i32,
    pub last_failure_at: DateTimeUtc,
    /// No login for this email is attempted before this instant.
    pub blocked_until: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
