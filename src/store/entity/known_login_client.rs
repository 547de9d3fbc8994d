use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "known_login_clients")]
pub struct Model {
    /// The account's normalised email.
    #[sea_orm(primary_key, auto_increment = false)]
    pub email: String,
    /// The address a login succeeded from, as throttling counts it.
    #[sea_orm(primary_key, auto_increment = false)]
    pub client: String,
    pub last_success_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
