//! What makes an authd access token valid: one definition, applied by authd's own Validate and
//! by every verifier, so the two cannot disagree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The one signature algorithm authd uses: EdDSA over Ed25519.
pub const ALGORITHM: Algorithm = Algorithm::EdDSA;

/// The `typ` header of every access token (RFC 9068), so no other JWT passes as one.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: authd's `AUTH_ISSUER`.
    pub iss: String,
    /// Audience: authd's `AUTH_AUDIENCE`.
    pub aud: String,
    /// The user's id.
    pub sub: Uuid,
    /// The session's id: what a logout revokes.
    pub sid: Uuid,
    /// The user's email when the token was issued.
    pub email: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, in seconds since the Unix epoch.
    pub exp: i64,
    /// A unique id for this token.
    pub jti: Uuid,
}

/// Why a token is refused by the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Malformed, forged, of another algorithm or type, issuer or audience, not yet valid,
    /// issued in the future, or living longer than the longest lifetime accepted.
    #[error("invalid access token")]
    Invalid,
    /// Past its `exp` (beyond the leeway).
    #[error("access token expired")]
    Expired,
    /// Signed by a key this verifier does not know (by `kid`): perhaps one rotated in since
    /// the keys were read.
    #[error("access token signed by an unknown key")]
    UnknownKey,
}

/// The checks every access token passes: signature, algorithm, `typ`, iss, aud, exp and nbf
/// with a leeway, and a lifetime (`exp - iat`) no longer than the longest accepted, with an
/// `iat` not in the future beyond the leeway. Key-carrying headers (`jwk`, `jku`, `x5u`,
/// `x5c`) are ignored: only the keys the caller supplies are trusted.
#[derive(Debug, Clone)]
pub struct TokenRules {
    validation: Validation,
    /// In seconds.
    leeway: i64,
    /// In seconds.
    max_lifetime: i64,
}

impl TokenRules {
    /// Tokens of `issuer` for `audience`, living at most `max_lifetime` (authd's
    /// `AUTH_ACCESS_TOKEN_MAX_LIFETIME`, 15 minutes by default), with `leeway` for clock skew.
    pub fn new(issuer: &str, audience: &str, max_lifetime: Duration, leeway: Duration) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Self {
            validation,
            leeway: seconds(leeway),
            max_lifetime: seconds(max_lifetime),
        }
    }

    /// The leeway, in seconds: a verified token is good until `exp` plus this.
    pub fn leeway_seconds(&self) -> i64 {
        self.leeway
    }

    /// Checks `token` against the rules, at `now` (Unix seconds), with the key that
    /// `key_for` gives for its `kid`.
    pub fn check<'k>(
        &self,
        token: &str,
        now: i64,
        key_for: impl FnOnce(&str) -> Option<&'k DecodingKey>,
    ) -> Result<AccessClaims, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid)?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(Rejection::Invalid);
        }
        let kid = header.kid.as_deref().ok_or(Rejection::Invalid)?;
        let key = key_for(kid).ok_or(Rejection::UnknownKey)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Rejection::Expired,
                _ => Rejection::Invalid,
            })?
            .claims;
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime > self.max_lifetime || claims.iat > now.saturating_add(self.leeway) {
            return Err(Rejection::Invalid);
        }
        Ok(claims)
    }
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Now, in Unix seconds: the clock the rules are checked against (0 before 1970, which no
/// token can be valid at).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}
