//! SeaORM entities: one module per table, mirroring `migrations/`. Column docs live in
//! `../shared/DESIGN.md` and the migration; the derive macros generate undocumented items.
#![allow(missing_docs)]

pub mod known_login_client;
pub mod legacy_refresh_token;
pub mod login_attempt;
pub mod refresh_token;
pub mod session;
pub mod user;
