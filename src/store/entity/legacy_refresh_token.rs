use sea_orm::entity::prelude::*;

/// A refresh token issued before sessions moved to one row (one row per rotation). Kept only
/// so those tokens keep working (the current one) or are recognised as reuse (a used one)
/// until they expire; nothing new is written here.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "legacy_refresh_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub session_id: Uuid,
    /// The token this one replaced; `None` for a session's first token.
    pub parent_id: Option<Uuid>,
    /// SHA-256 of the raw token.
    pub token_hash: Vec<u8>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    /// Set when the token was traded for its successor.
    pub used_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
