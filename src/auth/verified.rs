//! A bounded cache of access tokens whose signature and claims were already verified, so that
//! Validate pays for an Ed25519 verification once per token rather than once per call (as
//! Envoy's jwt_authn does). Revocation is not cached: Validate checks it on every call.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::Arc,
    time::Duration,
};

use quick_cache::sync::Cache;
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use super::{AccessClaims, AuthError};

/// Verified tokens by a 128-bit keyed hash (SipHash-1-3, as Rust's own hash tables use) of
/// the whole token: any change to header, claims or signature is a different key, so a forged
/// variation of a cached token is verified afresh. The hash key is secret and new in every
/// process, so nobody can craft a token that lands on a cached one without verification; a
/// keyed hash does that at a fraction of SHA-256's cost where the CPU has no SHA instructions.
#[derive(Debug)]
pub struct VerifiedTokens {
    /// `None` when `AUTH_VALIDATE_CACHE_SIZE` is 0.
    cache: Option<Cache<u128, Arc<AccessClaims>>>,
    /// The SipHash key.
    key: (u64, u64),
    /// `AUTH_JWT_LEEWAY`, in seconds: a cached token is served no longer than a fresh
    /// verification would accept it.
    leeway: i64,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0: no caching).
    pub fn new(capacity: usize, leeway: Duration) -> Self {
        // Two outputs of std's randomly keyed hasher: 128 secret bits, and nothing to fail.
        let random = RandomState::new();
        Self {
            cache: (capacity > 0).then(|| Cache::new(capacity)),
            key: (random.hash_one(0_u8), random.hash_one(1_u8)),
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
        let key = self.key_of(token);
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

    fn key_of(&self, token: &str) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.key.0, self.key.1);
        std::hash::Hasher::write(&mut hasher, token.as_bytes());
        hasher.finish128().as_u128()
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
    fn two_caches_key_the_same_token_differently() {
        let (one, two) = (
            VerifiedTokens::new(1, Duration::ZERO),
            VerifiedTokens::new(1, Duration::ZERO),
        );
        assert_eq!(one.key_of("token"), one.key_of("token"));
        assert_ne!(one.key_of("token"), one.key_of("token."));
        assert_ne!(
            one.key_of("token"),
            two.key_of("token"),
            "the hash key is not secret"
        );
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
