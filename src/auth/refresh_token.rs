//! Refresh tokens: opaque to clients, not JWTs, and sharing no key with access tokens.
//!
//! A token names its session and generation and carries a 256-bit secret, sealed with an
//! HMAC-SHA256 tag under the refresh key (`AUTH_REFRESH_KEY_FILE`):
//!
//! ```text
//! base64url( 0x01 | session id (16) | generation (8, big-endian) | secret (32) | tag (32) )
//! ```
//!
//! A forged or garbled token fails the tag, compared in constant time, before any database
//! query; knowing a session id (every access token carries it) is not enough to name a session
//! in a token. The database keeps only the SHA-256 of the current secret, so neither a leaked
//! database nor a leaked key alone gives a usable token.
//!
//! Tokens issued before this format (43 base64url characters, 256 random bits) are still
//! accepted while their rows last (`legacy_refresh_tokens`).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AuthError;

/// The first byte of a sealed token: its format.
const FORMAT: u8 = 1;
/// Format, session id, generation, secret.
const SEALED_BYTES: usize = 1 + 16 + 8 + 32;
/// Sealed part and tag, in unpadded base64url.
const TOKEN_CHARS: usize = (SEALED_BYTES + 32).div_ceil(3) * 4 - (3 - (SEALED_BYTES + 32) % 3) % 3;
/// A token from before the sealed format: 32 random bytes in unpadded base64url.
const LEGACY_TOKEN_CHARS: usize = 43;

type HmacSha256 = Hmac<Sha256>;

/// A refresh token as the client holds it. `Debug` never prints it.
#[derive(Debug)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// Checks the shape of a token presented by a client. Empty is a malformed request;
    /// anything that is not base64url of one of the two lengths cannot be one of ours and is
    /// reported as an unknown token. Whether it is genuine is [`RefreshKey::open`]'s business.
    pub fn parse(raw: String) -> Result<Self, AuthError> {
        if raw.is_empty() {
            return Err(AuthError::InvalidArgument {
                field: "refresh_token",
                problem: "must not be empty",
            });
        }
        let well_formed = (raw.len() == TOKEN_CHARS || raw.len() == LEGACY_TOKEN_CHARS)
            && raw
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !well_formed {
            return Err(AuthError::RefreshTokenInvalid);
        }
        Ok(Self(raw.into()))
    }

    /// The raw token, to put in a response.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A genuine token, opened: what it names and the secret it proves.
#[derive(Debug)]
pub enum Opened {
    /// A token of the sealed format.
    Sealed(SessionSecret),
    /// A token from before it, known only by the SHA-256 of its text.
    Legacy(LegacySecret),
}

/// A session, a generation and the secret of that generation's token.
#[derive(Debug)]
pub struct SessionSecret {
    /// The session the token belongs to.
    pub session_id: Uuid,
    /// Which of the session's tokens it is.
    pub generation: i64,
    secret: SecretBox<[u8]>,
}

impl SessionSecret {
    /// The secret of a pre-upgrade token: its raw text, at generation 0 of `session_id`.
    pub fn legacy(session_id: Uuid, legacy: LegacySecret) -> Self {
        Self {
            session_id,
            generation: 0,
            secret: legacy.0,
        }
    }

    /// SHA-256 of the secret, as the database keeps it. A fast hash suffices: the secret has
    /// 256 bits of entropy, so there is nothing to brute-force.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.expose_secret()).into()
    }

    /// The secret itself, from which the reuse grace derives the successor.
    pub(super) fn secret(&self) -> &[u8] {
        self.secret.expose_secret()
    }
}

/// A pre-upgrade token's text.
#[derive(Debug)]
pub struct LegacySecret(SecretBox<[u8]>);

impl LegacySecret {
    /// SHA-256 of the token's text, under which its row was stored.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.expose_secret()).into()
    }
}

/// A fresh 256-bit secret for a new token.
pub(super) fn random_secret() -> Result<[u8; 32], AuthError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| AuthError::Internal(Box::new(e)))?;
    Ok(secret)
}

/// An HMAC-SHA256 key, ready to clone for each message. `Debug` prints nothing of it.
#[derive(Clone)]
struct HmacKey(HmacSha256);

impl HmacKey {
    fn new(secret: [u8; 32]) -> Self {
        Self(
            HmacSha256::new_from_slice(&secret)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length")),
        )
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// The refresh-token key: seals tokens and checks their tags. Never the JWT signing key.
#[derive(Debug)]
pub struct RefreshKey(HmacKey);

impl RefreshKey {
    /// A key from 32 secret bytes (`AUTH_REFRESH_KEY_FILE`).
    pub fn new(secret: [u8; 32]) -> Self {
        Self(HmacKey::new(secret))
    }

    /// The token for generation `generation` of `session_id`, carrying `secret`.
    pub fn seal(&self, session_id: Uuid, generation: i64, secret: &[u8; 32]) -> RefreshToken {
        let mut token = Vec::with_capacity(SEALED_BYTES + 32);
        token.push(FORMAT);
        token.extend_from_slice(session_id.as_bytes());
        token.extend_from_slice(&generation.to_be_bytes());
        token.extend_from_slice(secret);
        let mut mac = self.0.0.clone();
        mac.update(&token);
        token.extend_from_slice(&mac.finalize().into_bytes());
        RefreshToken(URL_SAFE_NO_PAD.encode(token).into())
    }

    /// Opens a token: a sealed one whose tag is right (checked in constant time, with no
    /// database query), or a pre-upgrade one for the database to look up. Anything else is
    /// REFRESH_TOKEN_INVALID.
    pub fn open(&self, token: &RefreshToken) -> Result<Opened, AuthError> {
        let raw = token.expose();
        if raw.len() == LEGACY_TOKEN_CHARS {
            let text: Box<[u8]> = raw.as_bytes().into();
            return Ok(Opened::Legacy(LegacySecret(text.into())));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| AuthError::RefreshTokenInvalid)?;
        let (sealed, tag) = bytes
            .split_at_checked(SEALED_BYTES)
            .ok_or(AuthError::RefreshTokenInvalid)?;
        let mut mac = self.0.0.clone();
        mac.update(sealed);
        mac.verify_slice(tag)
            .map_err(|_| AuthError::RefreshTokenInvalid)?;
        let (format, rest) = sealed.split_at(1);
        let (session_id, rest) = rest.split_at(16);
        let (generation, secret) = rest.split_at(8);
        if format != [FORMAT] {
            return Err(AuthError::RefreshTokenInvalid);
        }
        let session_id =
            Uuid::from_slice(session_id).map_err(|_| AuthError::RefreshTokenInvalid)?;
        let generation = generation
            .try_into()
            .map(i64::from_be_bytes)
            .map_err(|_| AuthError::RefreshTokenInvalid)?;
        let secret: Box<[u8]> = secret.into();
        Ok(Opened::Sealed(SessionSecret {
            session_id,
            generation,
            secret: secret.into(),
        }))
    }
}

/// Derives a token's successor secret from the token's own secret, under a key of its own
/// (`AUTH_REFRESH_GRACE_KEY_FILE`), so a client retrying within the reuse grace gets the same
/// successor back although the database keeps only hashes.
#[derive(Debug)]
pub struct SuccessorKey(HmacKey);

impl SuccessorKey {
    /// A key from 32 secret bytes (kept apart from the signing and refresh keys).
    pub fn new(secret: [u8; 32]) -> Self {
        Self(HmacKey::new(secret))
    }

    /// HMAC-SHA256 of the parent's secret: as unpredictable as a random secret to anyone
    /// without the key, and the same every time for the same parent.
    pub fn successor_of(&self, parent: &SessionSecret) -> [u8; 32] {
        let mut mac = self.0.0.clone();
        mac.update(parent.secret());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RefreshKey {
        RefreshKey::new([7; 32])
    }

    fn sealed(key: &RefreshKey, token: &RefreshToken) -> SessionSecret {
        match key.open(token) {
            Ok(Opened::Sealed(secret)) => secret,
            other => panic!("not a sealed token: {other:?}"),
        }
    }

    #[test]
    fn a_sealed_token_opens_to_what_it_names() {
        let (session, secret) = (Uuid::new_v4(), random_secret().unwrap());
        let token = key().seal(session, 42, &secret);
        assert_eq!(token.expose().len(), TOKEN_CHARS);
        let parsed = RefreshToken::parse(token.expose().to_owned()).unwrap();
        let opened = sealed(&key(), &parsed);
        assert_eq!((opened.session_id, opened.generation), (session, 42));
        assert_eq!(
            opened.secret_hash(),
            <[u8; 32]>::from(Sha256::digest(secret))
        );
    }

    #[test]
    fn any_changed_bit_or_another_key_is_refused() {
        let token = key().seal(Uuid::new_v4(), 1, &random_secret().unwrap());
        let bytes = URL_SAFE_NO_PAD.decode(token.expose()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let forged = RefreshToken(URL_SAFE_NO_PAD.encode(flipped).into());
            assert!(
                matches!(key().open(&forged), Err(AuthError::RefreshTokenInvalid)),
                "bit {bit}"
            );
        }
        assert!(matches!(
            RefreshKey::new([8; 32]).open(&token),
            Err(AuthError::RefreshTokenInvalid)
        ));
    }

    #[test]
    fn a_legacy_token_is_known_by_the_hash_of_its_text() {
        let raw = "A".repeat(LEGACY_TOKEN_CHARS);
        let token = RefreshToken::parse(raw.clone()).unwrap();
        let Ok(Opened::Legacy(legacy)) = key().open(&token) else {
            panic!("not a legacy token");
        };
        assert_eq!(
            legacy.hash(),
            <[u8; 32]>::from(Sha256::digest(raw.as_bytes()))
        );
        let secret = SessionSecret::legacy(Uuid::nil(), legacy);
        assert_eq!(secret.generation, 0);
        assert_eq!(
            secret.secret_hash(),
            <[u8; 32]>::from(Sha256::digest(raw.as_bytes()))
        );
    }

    #[test]
    fn parse_refuses_what_cannot_be_a_token() {
        assert!(matches!(
            RefreshToken::parse(String::new()),
            Err(AuthError::InvalidArgument {
                field: "refresh_token",
                ..
            })
        ));
        let token = key().seal(Uuid::new_v4(), 1, &random_secret().unwrap());
        let too_long = format!("{}A", token.expose());
        let bad_alphabet = format!("{}=", &token.expose()[..TOKEN_CHARS - 1]);
        for bad in ["short".to_owned(), too_long, bad_alphabet] {
            assert!(matches!(
                RefreshToken::parse(bad),
                Err(AuthError::RefreshTokenInvalid)
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_opened_or_refused_with_a_documented_error(raw in ".{0,160}|[A-Za-z0-9_-]{119}") {
            match RefreshToken::parse(raw.clone()).and_then(|token| key().open(&token)) {
                Ok(Opened::Legacy(_)) => proptest::prop_assert_eq!(raw.len(), LEGACY_TOKEN_CHARS),
                // A random string with a right tag: 2^-256.
                Ok(Opened::Sealed(_)) => proptest::prop_assert!(false, "forged token accepted"),
                Err(AuthError::InvalidArgument { .. }) => proptest::prop_assert!(raw.is_empty()),
                Err(AuthError::RefreshTokenInvalid) => proptest::prop_assert!(!raw.is_empty()),
                Err(other) => proptest::prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn successors_are_stable_per_parent_and_key() {
        let parent = |secret: [u8; 32]| {
            let token = key().seal(Uuid::nil(), 1, &secret);
            sealed(&key(), &token)
        };
        let (one, other) = (
            parent(random_secret().unwrap()),
            parent(random_secret().unwrap()),
        );
        let grace = SuccessorKey::new([1; 32]);
        assert_eq!(grace.successor_of(&one), grace.successor_of(&one));
        assert_ne!(grace.successor_of(&one), grace.successor_of(&other));
        assert_ne!(
            grace.successor_of(&one),
            SuccessorKey::new([2; 32]).successor_of(&one)
        );
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let secret = random_secret().unwrap();
        let token = key().seal(Uuid::new_v4(), 1, &secret);
        assert!(!format!("{token:?}").contains(token.expose()));
        let opened = sealed(&key(), &token);
        let printed = format!("{opened:?}");
        assert!(!printed.contains(&format!("{:?}", &secret[..4])));
        assert_eq!(format!("{:?}", key()), "RefreshKey(..)");
    }
}
