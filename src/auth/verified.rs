//! A bounded cache of access tokens whose signature and claims were already verified, so that
//! Validate pays for an Ed25519 verification once per token rather than once per call (as
//! Envoy's jwt_authn does). Revocation is not cached: Validate checks it on every call.

use std::{sync::Arc, time::Duration};

use quick_cache::sync::Cache;
use sha2::{Digest as _, Sha256};

use super::{AccessClaims, AuthError};

/// Verified tokens by the SHA-256 of the whole token: any change to header, claims or
/// signature is a different key, so a forged variation of a cached token is verified afresh.
#[derive(Debug)]
pub struct VerifiedTokens {
    /// `None` when `AUTH_VALIDATE_CACHE_SIZE` is 0.
    cache: Option<Cache<[u8; 32], Arc<AccessClaims>>>,
    /// `AUTH_JWT_LEEWAY`, in seconds: a cached token is served no longer than a fresh
    /// verification would accept it.
    leeway: i64,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0: no caching).
    pub fn new(capacity: usize, leeway: Duration) -> Self {
        Self {
            cache: (capacity > 0).then(|| Cache::new(capacity)),
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// The claims of `token`: from the cache while it has not expired at `now` (Unix seconds),
    /// otherwise from `verify`, whose success is remembered.
    pub fn get_or_verify(
        &self,
        token: &str,
        now: i64,
        verify: impl FnOnce() -> Result<AccessClaims, AuthError>,
    ) -> Result<Arc<AccessClaims>, AuthError> {
        let Some(cache) = &self.cache else {
            return verify().map(Arc::new);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = cache.get(&key) {
            if now < claims.exp.saturating_add(self.leeway) {
                return Ok(claims);
            }
            // Expired: the verification below gives the precise answer.
            cache.remove(&key);
        }
        let claims = Arc::new(verify()?);
        cache.insert(key, Arc::clone(&claims));
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use uuid::Uuid;

    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "authd".into(),
            aud: "internal-services".into(),
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            email: "alice@example.com".into(),
            iat: exp - 900,
            exp,
            jti: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_token_is_verified_once_until_it_expires() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(5));
        let verifications = Cell::new(0);
        let verify = || {
            verifications.set(verifications.get() + 1);
            Ok(claims(1_000))
        };
        cache.get_or_verify("token", 900, verify).unwrap();
        cache.get_or_verify("token", 1_004, verify).unwrap();
        assert_eq!(verifications.get(), 1, "the second call verified again");
        // Past exp + leeway, the verifier decides again.
        let expired = cache.get_or_verify("token", 1_005, || Err(AuthError::AccessTokenExpired));
        assert!(matches!(expired, Err(AuthError::AccessTokenExpired)));
    }

    #[test]
    fn failures_and_other_tokens_are_not_served_from_the_cache() {
        let cache = VerifiedTokens::new(10, Duration::ZERO);
        cache
            .get_or_verify("token", 0, || Ok(claims(1_000)))
            .unwrap();
        let forged = cache.get_or_verify("token.", 0, || Err(AuthError::AccessTokenInvalid));
        assert!(matches!(forged, Err(AuthError::AccessTokenInvalid)));
        let again = cache.get_or_verify("token.", 0, || Err(AuthError::AccessTokenInvalid));
        assert!(again.is_err(), "a failed verification was cached");
    }

    #[test]
    fn a_zero_capacity_verifies_every_time() {
        let cache = VerifiedTokens::new(0, Duration::ZERO);
        let verifications = Cell::new(0);
        for _ in 0..3 {
            cache
                .get_or_verify("token", 0, || {
                    verifications.set(verifications.get() + 1);
                    Ok(claims(1_000))
                })
                .unwrap();
        }
        assert_eq!(verifications.get(), 3);
    }
}
