//! Every integration test, in one binary: the shared support in `common` compiles once, and each
//! module below tests one part of authd over a real socket, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod admin;
mod browser;
mod cleanup;
mod cli;
mod examples;
mod feed;
mod hostile_input;
mod keys;
mod layout;
mod login;
mod observability;
mod operations;
mod reliability;
mod replicas;
mod security;
mod self_service;
mod sessions;
mod tls;
mod traces;
mod upgrade;
mod validate;
mod verifier;
