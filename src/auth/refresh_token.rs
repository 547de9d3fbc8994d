//! Refresh tokens: 256 random bits, base64url, opaque. Not JWTs and signed by nothing, so
//! they share no secret with access tokens. Only their SHA-256 is ever stored.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::AuthError;

/// Length of a token: 32 bytes in unpadded base64url.
const TOKEN_CHARS: usize = 43;

/// A raw refresh token. `Debug` never prints it.
#[derive(Debug)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// A fresh token from the operating system's random source.
    pub fn generate() -> Result<Self, AuthError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| AuthError::Internal(Box::new(e)))?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes).into()))
    }

    /// Parses a token presented by a client. Empty is a malformed request; anything that is not
    /// 43 base64url characters cannot be one of ours and is reported as an unknown token.
    pub fn parse(raw: String) -> Result<Self, AuthError> {
        if raw.is_empty() {
            return Err(AuthError::InvalidArgument {
                field: "refresh_token",
                problem: "must not be empty",
            });
        }
        let well_formed = raw.len() == TOKEN_CHARS
            && raw
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !well_formed {
            return Err(AuthError::RefreshTokenInvalid);
        }
        Ok(Self(raw.into()))
    }

    /// The SHA-256 under which the token is stored and looked up. A fast hash suffices: the
    /// token has 256 bits of entropy, so there is nothing to brute-force.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.expose_secret().as_bytes()).into()
    }

    /// The raw token, to put in a response.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Derives a token's successor from the token itself, under a server key, so a client retrying
/// within the reuse grace gets the same successor back although the database keeps only hashes.
pub struct SuccessorKey([u8; 32]);

impl std::fmt::Debug for SuccessorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuccessorKey(..)")
    }
}

impl SuccessorKey {
    /// A key from 32 secret bytes (kept apart from the JWT signing key).
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// HMAC-SHA256 of the parent token: as unpredictable as a random token to anyone without
    /// the key, and the same every time for the same parent.
    pub fn successor_of(&self, parent: &RefreshToken) -> RefreshToken {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(parent.expose().as_bytes());
        RefreshToken(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_43_base64url_chars_and_distinct() {
        let (a, b) = (
            RefreshToken::generate().unwrap(),
            RefreshToken::generate().unwrap(),
        );
        assert_eq!(a.expose().len(), 43);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn parse_accepts_generated_tokens_and_refuses_others() {
        let token = RefreshToken::generate().unwrap();
        let parsed = RefreshToken::parse(token.expose().to_owned()).unwrap();
        assert_eq!(parsed.hash(), token.hash());
        assert!(matches!(
            RefreshToken::parse(String::new()),
            Err(AuthError::InvalidArgument {
                field: "refresh_token",
                ..
            })
        ));
        let too_long = format!("{}A", token.expose());
        let bad_alphabet = format!("{}=", &token.expose()[..42]);
        for bad in ["short".to_owned(), too_long, bad_alphabet] {
            assert!(matches!(
                RefreshToken::parse(bad),
                Err(AuthError::RefreshTokenInvalid)
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_parses_or_is_refused_with_a_documented_error(raw in ".{0,64}|[A-Za-z0-9_-]{43}") {
            let well_formed = raw.len() == 43
                && raw.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            match RefreshToken::parse(raw.clone()) {
                Ok(token) => {
                    proptest::prop_assert!(well_formed);
                    proptest::prop_assert_eq!(token.expose(), raw.as_str());
                }
                Err(AuthError::InvalidArgument { .. }) => proptest::prop_assert!(raw.is_empty()),
                Err(AuthError::RefreshTokenInvalid) => proptest::prop_assert!(!well_formed && !raw.is_empty()),
                Err(other) => proptest::prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn successors_are_stable_per_parent_and_key_and_look_like_tokens() {
        let (parent, other) = (
            RefreshToken::generate().unwrap(),
            RefreshToken::generate().unwrap(),
        );
        let key = SuccessorKey::new([1; 32]);
        let successor = key.successor_of(&parent);
        assert_eq!(successor.expose(), key.successor_of(&parent).expose());
        assert_ne!(successor.expose(), key.successor_of(&other).expose());
        assert_ne!(
            successor.expose(),
            SuccessorKey::new([2; 32]).successor_of(&parent).expose()
        );
        assert!(RefreshToken::parse(successor.expose().to_owned()).is_ok());
    }

    #[test]
    fn debug_does_not_print_the_token() {
        let token = RefreshToken::generate().unwrap();
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
