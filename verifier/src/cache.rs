//! A bounded cache of access tokens whose signature and claims were already verified, so that
//! a token costs one Ed25519 verification rather than one per call (as Envoy's jwt_authn
//! does). authd's Validate and the [`Verifier`](crate::Verifier) share it. Revocation is not
//! cached: both check it on every call.
//!
//! What it keeps of a token is the caller's choice ([`Verified`]): the verifier keeps the
//! claims it hands out; authd's Validate keeps only what it answers, inline, because with
//! thousands of tokens in rotation each hop from the cache's entry to another allocation is
//! a cache miss on every call.

use std::{
    hash::{BuildHasher, Hasher, RandomState},
    sync::Arc,
};

use quick_cache::{UnitWeighter, sync::Cache};
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use crate::{AccessClaims, TokenRules};

/// Verified tokens by a 128-bit keyed hash (SipHash-1-3, as Rust's own hash tables use) of
/// the whole token: any change to header, claims or signature is a different key, so a forged
/// variation of a cached token is verified afresh. The hash key is secret and new in every
/// process, so nobody can craft a token that lands on a cached one without verification; a
/// keyed hash does that at a fraction of SHA-256's cost where the CPU has no SHA instructions.
#[derive(Debug)]
pub struct VerifiedTokens<V = Arc<AccessClaims>> {
    /// `None` when the capacity is 0.
    cache: Option<Cache<TokenKey, V, UnitWeighter, KeyIsItsOwnHash>>,
    /// The SipHash key.
    key: (u64, u64),
    /// The rules' leeway: a cached token is served no longer than a fresh verification would
    /// accept it, until its `exp` plus this many seconds.
    leeway_seconds: i64,
}

/// What the cache keeps of a verified token, and hands out (cloned) on every hit.
pub trait Verified: Clone + From<AccessClaims> {
    /// The token's `exp`, in seconds since the Unix epoch.
    fn expires_at(&self) -> i64;
}

impl Verified for Arc<AccessClaims> {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

/// A token's place in the cache: its keyed hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TokenKey(u128);

impl<V: Verified> VerifiedTokens<V> {
    /// A cache of at most `capacity` tokens (0: no caching), each served no longer than
    /// `rules` would accept it: until its `exp` plus their leeway.
    pub fn new(capacity: usize, rules: &TokenRules) -> Self {
        // Two outputs of std's randomly keyed hasher: 128 secret bits, and nothing to fail.
        let random = RandomState::new();
        Self {
            cache: (capacity > 0).then(|| {
                Cache::with(
                    capacity,
                    capacity as u64,
                    UnitWeighter,
                    KeyIsItsOwnHash,
                    Default::default(),
                )
            }),
            key: (random.hash_one(0_u8), random.hash_one(1_u8)),
            leeway_seconds: rules.leeway_seconds(),
        }
    }

    /// The claims of `token`: from the cache while it has not expired at `now` (Unix seconds),
    /// otherwise from `verify`, whose success is remembered.
    pub fn get_or_verify<E>(
        &self,
        token: &str,
        now: i64,
        verify: impl FnOnce() -> Result<AccessClaims, E>,
    ) -> Result<V, E> {
        let Some(cache) = &self.cache else {
            return verify().map(V::from);
        };
        let key = self.key_of(token);
        if let Some(verified) = cache.get(&key) {
            if now < verified.expires_at().saturating_add(self.leeway_seconds) {
                return Ok(verified);
            }
            // Expired: the verification below gives the precise answer.
            cache.remove(&key);
        }
        let verified = V::from(verify()?);
        cache.insert(key, verified.clone());
        Ok(verified)
    }

    fn key_of(&self, token: &str) -> TokenKey {
        let mut hasher = SipHasher13::new_with_keys(self.key.0, self.key.1);
        hasher.write(token.as_bytes());
        TokenKey(hasher.finish128().as_u128())
    }
}

/// The cache's own hasher: a [`TokenKey`] is already a secret-keyed hash, uniform and beyond
/// an attacker's reach, so its low 64 bits serve as the table's hash as they are (hashing it
/// again with std's SipHash cost about 100 instructions a lookup).
#[derive(Debug, Clone, Copy, Default)]
struct KeyIsItsOwnHash;

impl BuildHasher for KeyIsItsOwnHash {
    type Hasher = LowBits;

    fn build_hasher(&self) -> LowBits {
        LowBits(0)
    }
}

/// See [`KeyIsItsOwnHash`].
#[derive(Debug)]
struct LowBits(u64);

impl Hasher for LowBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, key: u128) {
        // Truncation is the point: the low half of a uniform 128-bit value.
        self.0 = key as u64;
    }

    /// Only `TokenKey`'s `u128` is ever hashed; anything else still gets a fair hash.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, time::Duration};

    use uuid::Uuid;

    use super::*;

    /// What a verification refused, as the caller's own error type.
    #[derive(Debug)]
    enum Refused {
        Expired,
        Invalid,
    }

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "authd".into(),
            aud: "internal-services".into(),
            sub: Uuid::from_u128(1),
            sid: Uuid::from_u128(2),
            email: "alice@example.com".into(),
            iat: exp - 900,
            exp,
            jti: Uuid::from_u128(3),
        }
    }

    /// Rules with `leeway` seconds of leeway.
    fn rules(leeway: u64) -> TokenRules {
        TokenRules::new(
            "authd",
            "internal-services",
            Duration::from_secs(900),
            Duration::from_secs(leeway),
        )
    }

    /// A successful verification.
    fn verified(exp: i64) -> Result<AccessClaims, Refused> {
        Ok(claims(exp))
    }

    #[test]
    fn a_token_is_verified_once_until_it_expires() {
        let cache = VerifiedTokens::<Arc<AccessClaims>>::new(10, &rules(5));
        let verifications = Cell::new(0);
        let verify = || {
            verifications.set(verifications.get() + 1);
            verified(1_000)
        };
        cache.get_or_verify("token", 900, verify).unwrap();
        cache.get_or_verify("token", 1_004, verify).unwrap();
        assert_eq!(verifications.get(), 1, "the second call verified again");
        // Past exp + leeway, the verifier decides again.
        let expired = cache.get_or_verify("token", 1_005, || Err(Refused::Expired));
        assert!(matches!(expired, Err(Refused::Expired)));
    }

    #[test]
    fn failures_and_other_tokens_are_not_served_from_the_cache() {
        let cache = VerifiedTokens::<Arc<AccessClaims>>::new(10, &rules(0));
        cache.get_or_verify("token", 0, || verified(1_000)).unwrap();
        let forged = cache.get_or_verify("token.", 0, || Err(Refused::Invalid));
        assert!(matches!(forged, Err(Refused::Invalid)));
        let again = cache.get_or_verify("token.", 0, || Err(Refused::Invalid));
        assert!(again.is_err(), "a failed verification was cached");
    }

    #[test]
    fn two_caches_key_the_same_token_differently() {
        let (one, two) = (
            VerifiedTokens::<Arc<AccessClaims>>::new(1, &rules(0)),
            VerifiedTokens::<Arc<AccessClaims>>::new(1, &rules(0)),
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
    fn the_table_hash_of_a_key_is_its_low_half() {
        let key = TokenKey(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        assert_eq!(KeyIsItsOwnHash.hash_one(key), 0xfedc_ba98_7654_3210);
        // Anything else still spreads: order and content both count.
        assert_ne!(
            KeyIsItsOwnHash.hash_one([1_u8, 2]),
            KeyIsItsOwnHash.hash_one([2_u8, 1])
        );
    }

    /// A caller's own lean copy of the claims: only the expiry and the session.
    #[derive(Debug, Clone, PartialEq)]
    struct Lean {
        sid: Uuid,
        exp: i64,
    }

    impl From<AccessClaims> for Lean {
        fn from(claims: AccessClaims) -> Self {
            Self {
                sid: claims.sid,
                exp: claims.exp,
            }
        }
    }

    impl Verified for Lean {
        fn expires_at(&self) -> i64 {
            self.exp
        }
    }

    #[test]
    fn a_lean_copy_is_kept_and_served_until_its_own_expiry() {
        let cache = VerifiedTokens::<Lean>::new(10, &rules(5));
        let first = cache
            .get_or_verify("token", 900, || verified(1_000))
            .unwrap();
        assert_eq!(
            first,
            Lean {
                sid: Uuid::from_u128(2),
                exp: 1_000
            }
        );
        let again = cache.get_or_verify("token", 1_004, || Err(Refused::Invalid));
        assert_eq!(again.unwrap(), first, "not served from the cache");
        let expired = cache.get_or_verify("token", 1_005, || Err(Refused::Expired));
        assert!(matches!(expired, Err(Refused::Expired)));
    }

    #[test]
    fn a_zero_capacity_verifies_every_time() {
        let cache = VerifiedTokens::<Arc<AccessClaims>>::new(0, &rules(0));
        let verifications = Cell::new(0);
        for _ in 0..3 {
            cache
                .get_or_verify("token", 0, || {
                    verifications.set(verifications.get() + 1);
                    verified(1_000)
                })
                .unwrap();
        }
        assert_eq!(verifications.get(), 3);
    }
}
