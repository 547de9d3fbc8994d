use sea_orm::entity::prelude::*;

/// One login. Its end and its last rotation live on its `refresh_tokens` row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    /// The login; the session ends at the latest `AUTH_SESSION_MAX_LIFETIME` after it.
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
    pub revoked_reason: Option<String>,
    /// The end user's address at login, as the calling service stated it (else the peer).
    pub login_address: Option<String>,
    /// The end user's User-Agent at login.
    pub login_user_agent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
