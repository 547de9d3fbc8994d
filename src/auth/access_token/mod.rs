//! Access tokens: EdDSA-signed JWTs (`typ: at+jwt`, RFC 9068) and the keys behind them.

use std::{collections::HashMap, time::Duration};

pub use authd_verifier::AccessClaims;
use authd_verifier::{ACCESS_TOKEN_TYPE, ALGORITHM, Rejection, TokenRules};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use jsonwebtoken::{
    DecodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};
use smol_str::SmolStr;
use uuid::Uuid;

use super::{AuthError, KeyError};

/// What Validate answers about a verified token, and all that its cache keeps of it: held
/// inline in the cache's entry rather than behind an `Arc` of the whole claims, so that a
/// cached token costs one hop less through memory (a cache miss on every call once thousands
/// of tokens are in rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedToken {
    /// The user's id (`sub`).
    pub user_id: Uuid,
    /// The session's id (`sid`): what a logout revokes.
    pub session_id: Uuid,
    /// The user's email when the token was issued: inline up to 23 bytes, as most are, so
    /// that answering it reads no other allocation either.
    pub email: SmolStr,
    /// `iat`, in seconds since the Unix epoch.
    pub issued_at: i64,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: i64,
}

impl From<AccessClaims> for ValidatedToken {
    fn from(claims: AccessClaims) -> Self {
        Self {
            user_id: claims.sub,
            session_id: claims.sid,
            email: claims.email.into(),
            issued_at: claims.iat,
            expires_at: claims.exp,
        }
    }
}

impl authd_verifier::Verified for ValidatedToken {
    fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

/// Signs access tokens with one Ed25519 key and verifies them against the known keys: the
/// signing key and any verify-only keys (older keys whose tokens may still be alive).
pub struct TokenKeys {
    kid: String,
    /// Signs access tokens. Held as a key rather than a jsonwebtoken `EncodingKey`, which
    /// decodes its DER and derives the public key again for every token: measured, that
    /// doubled the signing cost of each Login and Refresh.
    signer: ed25519_dalek::SigningKey,
    /// The base64url JOSE header every token carries (`alg`, `typ`, `kid`), encoded once.
    encoded_header: String,
    /// Verification keys by `kid`; a token whose `kid` is not here is refused.
    decoding: HashMap<String, DecodingKey>,
    /// The public half of every key, as published at `/.well-known/jwks.json`.
    jwks: JwkSet,
    /// What a token must satisfy: the same rules as every `authd-verifier`.
    rules: TokenRules,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .field(
                "verification_kids",
                &self.decoding.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What an access token's times must satisfy, beyond its signature and claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptance {
    /// `AUTH_JWT_LEEWAY`: clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// `AUTH_ACCESS_TOKEN_MAX_LIFETIME`: the longest `exp - iat` accepted. The revoked set
    /// remembers a revocation this long, so a longer-lived token (signed by a key that leaked,
    /// or under a longer TTL since shortened) would outlive its session's revocation.
    pub max_lifetime: Duration,
}

impl TokenKeys {
    /// Signs with `signing`; verifies tokens of `signing` and of every key in `verify_only`
    /// whose times meet `acceptance`.
    pub fn new(
        signing: &ed25519_dalek::SigningKey,
        verify_only: &[ed25519_dalek::VerifyingKey],
        issuer: &str,
        audience: &str,
        acceptance: Acceptance,
    ) -> Result<Self, KeyError> {
        let Acceptance {
            leeway,
            max_lifetime,
        } = acceptance;
        let mut decoding = HashMap::new();
        let mut jwks = JwkSet::default();
        let mut kid = String::new();
        for (index, key) in std::iter::once(signing.verifying_key())
            .chain(verify_only.iter().copied())
            .enumerate()
        {
            let (key_id, decoder, jwk) = public_key(&key)?;
            if index == 0 {
                kid.clone_from(&key_id);
            }
            if decoding.insert(key_id, decoder).is_none() {
                jwks.keys.push(jwk);
            }
        }

        let mut header = Header::new(ALGORITHM);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(kid.clone());
        let header = serde_json::to_vec(&header).map_err(|e| KeyError::Jwk(e.into()))?;
        Ok(Self {
            kid,
            signer: signing.clone(),
            encoded_header: URL_SAFE_NO_PAD.encode(header),
            decoding,
            jwks,
            rules: TokenRules::new(issuer, audience, max_lifetime, leeway),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The public keys as a JSON Web Key Set (RFC 7517), each with its `kid`.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// The `kid` of the signing key: its RFC 7638 JWK thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs a new access token for `user_id`'s session `session_id`.
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        email: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id,
            sid: session_id,
            email: email.to_owned(),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            jti: Uuid::new_v4(),
        };
        // The JWS compact serialisation (RFC 7515, 7.1): header.claims.signature, each
        // base64url without padding; `verify` (jsonwebtoken) reads it back.
        let claims = serde_json::to_vec(&claims).map_err(|e| AuthError::Internal(Box::new(e)))?;
        let mut token = format!("{}.{}", self.encoded_header, URL_SAFE_NO_PAD.encode(claims));
        let signature = self.signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }

    /// The rules tokens are checked by.
    pub fn rules(&self) -> &TokenRules {
        &self.rules
    }

    /// Checks the token by [`TokenRules`] against the known keys (by `kid`), now.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let now = authd_verifier::unix_now();
        self.rules
            .check(token, now, |kid| self.decoding.get(kid))
            .map_err(|rejection| match rejection {
                Rejection::Expired => AuthError::AccessTokenExpired,
                Rejection::Invalid | Rejection::UnknownKey => AuthError::AccessTokenInvalid,
            })
    }
}

/// The `kid` (RFC 7638 thumbprint), the verifier and the published JWK of a public key.
fn public_key(key: &ed25519_dalek::VerifyingKey) -> Result<(String, DecodingKey, Jwk), KeyError> {
    let decoding = DecodingKey::from_ed_der(key.as_bytes());
    let mut jwk = Jwk::from_decoding_key(&decoding, Some(ALGORITHM)).map_err(KeyError::Jwk)?;
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(KeyError::Jwk)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok((kid, decoding, jwk))
}

#[cfg(test)]
mod tests;
