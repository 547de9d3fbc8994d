//! authd: a gRPC authentication service. Login with email and password, short-lived JWT
//! access tokens, single-use rotating refresh tokens stored only as hashes.
//!
//! Layers, one direction only: [`grpc`] (transport) -> [`auth`] (the rules) -> [`store`]
//! (queries). [`server`] assembles them; [`config`] is read once at start-up.

pub mod auth;
pub mod cleanup;
pub mod config;
pub mod grpc;
pub mod guarded_body;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod proto;
pub mod report;
pub mod server;
pub mod store;
pub mod telemetry;
