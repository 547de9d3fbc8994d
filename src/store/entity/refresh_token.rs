use sea_orm::entity::prelude::*;

/// A session's rotating credential: one row per session, rewritten by every rotation.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refresh_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: Uuid,
    /// The session's user (copied from the session: it never changes).
    pub user_id: Uuid,
    /// The session's login (copied likewise), from which its absolute end is counted.
    pub session_started_at: DateTimeUtc,
    /// How many rotations the session has had (0: its token is from before the upgrade).
    pub generation: i64,
    /// SHA-256 of the current token's secret.
    pub secret_hash: Vec<u8>,
    /// When the current token was issued.
    pub rotated_at: DateTimeUtc,
    /// When the current token expires (the session's absolute end applies on top).
    pub expires_at: DateTimeUtc,
    /// Whether the previous token's one reuse-grace retry has been spent.
    pub retried: bool,
    /// The end user's address at the last rotation (else the peer's).
    pub refreshed_address: Option<String>,
    /// The end user's User-Agent at the last rotation.
    pub refreshed_user_agent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
