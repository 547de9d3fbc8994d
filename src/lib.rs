//! authd: a gRPC authentication service. Login with email and password, short-lived JWT
//! access tokens, single-use rotating refresh tokens stored only as hashes.
//!
//! Layers, one direction only: [`grpc`] (transport) -> [`auth`] (the rules) -> [`store`]
//! (queries). [`server`] assembles them; [`config`] is read once at start-up.

pub mod auth;
pub mod config;
pub mod grpc;
pub mod proto;
pub mod server;
pub mod store;
