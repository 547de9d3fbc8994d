//! Verify [authd](https://github.com/) access tokens locally, at memory speed, and still honour
//! every logout within milliseconds.
//!
//! A [`Verifier`] keeps two things up to date in the background: authd's public keys (the
//! JWKS, refetched when a token names a key it has not seen, at most once per
//! [`VerifierSettings::key_refetch_interval`]), and the set of revoked sessions, from authd's
//! revocation feed (`AuthService.WatchRevocations`). Verifying a token is then a signature
//! check (once per token: verified tokens are cached until they expire) and a set lookup.
//! When the feed has been silent longer than [`VerifierSettings::staleness`], the verifier
//! cannot know about recent logouts and fails closed ([`VerifyError::FeedStale`]), or asks
//! authd's Validate instead if [`OnStale::CallValidate`] is set.
//!
//! [`VerifyLayer`] puts it in front of a tonic (or any tower) server: it reads
//! `authorization: Bearer <token>`, answers UNAUTHENTICATED for a missing or refused token,
//! and hands the verified [`AccessClaims`] to the service in the request's extensions.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use authd_verifier::{Verifier, VerifierSettings};
//!
//! let verifier = Verifier::start(VerifierSettings::new(
//!     "http://authd:8080/.well-known/jwks.json",
//!     "http://authd:50051",
//!     "authd",     // AUTH_ISSUER
//!     "internal",  // AUTH_AUDIENCE
//! )?);
//! verifier.ready(std::time::Duration::from_secs(10)).await?;
//! let claims = verifier.verify("eyJ...").await?;
//! println!("user {} in session {}", claims.sub, claims.sid);
//! # Ok(()) }
//! ```
//!
//! Without the default `client` feature the crate is only the token rules ([`TokenRules`]),
//! which authd's own Validate applies too.

mod rules;

pub use rules::{ACCESS_TOKEN_TYPE, ALGORITHM, AccessClaims, Rejection, TokenRules, unix_now};

#[cfg(feature = "cache")]
mod cache;
#[cfg(feature = "cache")]
pub use cache::{Verified, VerifiedTokens};

#[cfg(feature = "client")]
mod feed;
#[cfg(feature = "client")]
mod keys;
#[cfg(feature = "client")]
mod layer;
#[cfg(feature = "client")]
mod verifier;

#[cfg(feature = "client")]
pub use layer::{VerifyLayer, VerifyService};
#[cfg(feature = "client")]
pub use verifier::{OnStale, SettingsError, Verifier, VerifierSettings, VerifyError};

/// The AuthService client, generated from authd's `proto/`.
#[cfg(feature = "client")]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("auth.v1");
}
