//! Code generated from `proto/auth/v1/auth.proto` by `build.rs`; never edited by hand.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("auth.v1");

/// The encoded descriptor set of `auth.v1`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("auth_descriptor");
