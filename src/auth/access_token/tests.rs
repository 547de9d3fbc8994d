//! Access tokens: issued, verified, refused for every way they can be wrong.

use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

use super::*;
use crate::auth::{load_signing_key, load_verification_key};

/// No leeway; tokens of up to an hour.
const ACCEPT_AN_HOUR: Acceptance = Acceptance {
    leeway: Duration::ZERO,
    max_lifetime: Duration::from_secs(3600),
};

#[test]
fn a_token_living_longer_than_the_longest_lifetime_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let sign = |iat, ttl| {
        keys.issue(Uuid::new_v4(), Uuid::new_v4(), "a@b.c", iat, ttl)
            .unwrap()
    };
    assert!(keys.verify(&sign(now(), Duration::from_secs(3600))).is_ok());
    // Our own key, our own claims: only the lifetime is wrong.
    let too_long = sign(now(), Duration::from_secs(3601));
    assert!(matches!(
        keys.verify(&too_long),
        Err(AuthError::AccessTokenInvalid)
    ));
}

#[test]
fn a_token_issued_in_the_future_is_invalid_beyond_the_leeway() {
    let dir = tempfile::tempdir().unwrap();
    let key = load_signing_key(None, Some(&dir.path().join("k.pem"))).unwrap();
    let lenient = Acceptance {
        leeway: Duration::from_secs(30),
        ..ACCEPT_AN_HOUR
    };
    let keys = TokenKeys::new(&key, &[], "authd", "svc", lenient).unwrap();
    let sign = |iat| anyones_token(&keys, iat);
    assert!(keys.verify(&sign(now() + 20)).is_ok(), "within the leeway");
    assert!(matches!(
        keys.verify(&sign(now() + 120)),
        Err(AuthError::AccessTokenInvalid)
    ));
}

fn keys(dir: &Path) -> TokenKeys {
    let key = load_signing_key(None, Some(&dir.join("k.pem"))).unwrap();
    TokenKeys::new(&key, &[], "authd", "svc", ACCEPT_AN_HOUR).unwrap()
}

/// A one-minute token of someone, issued at `iat`.
fn anyones_token(keys: &TokenKeys, iat: i64) -> String {
    keys.issue(
        Uuid::new_v4(),
        Uuid::new_v4(),
        "a@b.c",
        iat,
        Duration::from_secs(60),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn an_issued_token_verifies_with_its_claims() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    let token = keys
        .issue(user, session, "a@b.c", now(), Duration::from_secs(60))
        .unwrap();
    let claims = keys.verify(&token).unwrap();
    assert_eq!(
        (claims.sub, claims.sid, claims.email.as_str()),
        (user, session, "a@b.c")
    );
    assert_eq!(claims.exp - claims.iat, 60);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(keys.kid()));
    assert_eq!(keys.kid().len(), 43, "base64url SHA-256 thumbprint");
}

#[test]
fn what_validate_keeps_of_a_token_is_its_claims_short_or_long_email_alike() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
    // Inline up to 23 bytes, on the heap beyond: both kept whole.
    for email in ["a@b.c", "a.rather.long.address@mail.example.com"] {
        let token = keys
            .issue(user, session, email, now(), Duration::from_secs(60))
            .unwrap();
        let claims = keys.verify(&token).unwrap();
        let kept = ValidatedToken::from(claims.clone());
        assert_eq!(
            (kept.user_id, kept.session_id, kept.email.as_str()),
            (user, session, email)
        );
        assert_eq!((kept.issued_at, kept.expires_at), (claims.iat, claims.exp));
    }
}

#[test]
fn a_token_of_another_key_is_invalid() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let token = anyones_token(&keys(a.path()), now());
    assert!(matches!(
        keys(b.path()).verify(&token),
        Err(AuthError::AccessTokenInvalid)
    ));
}

#[test]
fn an_expired_token_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys(dir.path());
    let token = anyones_token(&keys, now() - 120);
    assert!(matches!(
        keys.verify(&token),
        Err(AuthError::AccessTokenExpired)
    ));
}

fn shared_keys() -> &'static TokenKeys {
    static KEYS: std::sync::OnceLock<TokenKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        keys(dir.path())
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_is_never_a_valid_token(raw in ".{0,300}") {
        let result = shared_keys().verify(&raw);
        proptest::prop_assert!(matches!(result, Err(AuthError::AccessTokenInvalid)));
    }

    #[test]
    fn arbitrary_jwt_shaped_input_is_never_valid(
        header in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        claims in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        signature in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        kid_header in proptest::bool::ANY,
    ) {
        let keys = shared_keys();
        let header = if kid_header {
            format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}"}}"#, keys.kid()).into_bytes()
        } else {
            header
        };
        let token = format!("{}.{}.{}", b64(&header), b64(&claims), b64(&signature));
        let result = keys.verify(&token);
        proptest::prop_assert!(matches!(result, Err(AuthError::AccessTokenInvalid)));
    }
}

#[test]
fn verify_only_keys_are_accepted_and_published() {
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = keys(old_dir.path());
    let old_token = anyones_token(&old, now());

    // The retired key, published as a public key only.
    let retired = load_signing_key(None, Some(&old_dir.path().join("k.pem"))).unwrap();
    let public_path = old_dir.path().join("old.pub.pem");
    let public_pem = retired
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&public_path, public_pem).unwrap();
    let verify_only = load_verification_key(&public_path).unwrap();

    let current = load_signing_key(None, Some(&new_dir.path().join("k.pem"))).unwrap();
    let rotated = TokenKeys::new(&current, &[verify_only], "authd", "svc", ACCEPT_AN_HOUR).unwrap();
    assert!(
        rotated.verify(&old_token).is_ok(),
        "a listed old key still verifies"
    );
    let kids: Vec<_> = rotated
        .jwks()
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    assert_eq!(kids, vec![rotated.kid().to_owned(), old.kid().to_owned()]);

    let unlisted = TokenKeys::new(&current, &[], "authd", "svc", ACCEPT_AN_HOUR).unwrap();
    assert!(matches!(
        unlisted.verify(&old_token),
        Err(AuthError::AccessTokenInvalid)
    ));
}
