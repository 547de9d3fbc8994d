//! Signing keys: generation, rotation with verify-only keys, and the published JWKS that lets
//! any JWT library verify authd's tokens.

use crate::common;

use std::os::unix::fs::PermissionsExt as _;

use common::{
    Backend, PASSWORD, TestApp, TestDatabase, assert_validate_refused, http_get,
    process::run_authd, validate,
};

on_both_backends!(
    the_published_jwks_verifies_tokens_with_an_independent_library,
    a_rotated_out_key_verifies_while_listed_and_fails_once_removed,
);

async fn the_published_jwks_verifies_tokens_with_an_independent_library(backend: Backend) {
    use jwt_compact::{
        Algorithm as _, AlgorithmExt as _, UntrustedToken, alg::Ed25519, jwk::JsonWebKey,
    };
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;

    let (head, body) = http_get(app.http_addr, "/.well-known/jwks.json").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("cache-control: public, max-age="),
        "{head}"
    );
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].get("d").is_none(),
        "the private key must never be published"
    );

    // jwt-compact and ed25519-compact share no code with jsonwebtoken or ed25519-dalek.
    let token = UntrustedToken::new(&login.access_token).unwrap();
    assert_eq!(token.header().token_type.as_deref(), Some("at+jwt"));
    let kid = token.header().key_id.clone().unwrap();
    let published = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's kid is published");
    let jwk: JsonWebKey<'_> = serde_json::from_value(published.clone()).unwrap();
    let key = <Ed25519 as jwt_compact::Algorithm>::VerifyingKey::try_from(&jwk).unwrap();
    let verified = Ed25519
        .validator::<serde_json::Value>(&key)
        .validate(&token)
        .unwrap();
    assert_eq!(verified.claims().custom["sid"], login.session_id.as_str());
    assert_eq!(Ed25519.name(), "EdDSA");
}

/// A rotation of `db`'s signing key: a new key signs, the old one is listed as verify-only
/// (as a public key).
pub(crate) struct KeyRotation {
    _folder: tempfile::TempDir,
    new_key: String,
    old_public: String,
}

impl KeyRotation {
    pub(crate) fn new(db: &TestDatabase) -> Self {
        use ed25519_dalek::pkcs8::{EncodePublicKey as _, spki::der::pem::LineEnding};
        let folder = tempfile::tempdir().unwrap();
        let (new_key, old_public) = (
            folder.path().join("new.pem"),
            folder.path().join("old.pub.pem"),
        );
        authd::auth::generate_key_file(&new_key).unwrap();
        let old_private = match db {
            TestDatabase::Sqlite { dir, .. } => dir.path().join("signing_key.pem"),
            TestDatabase::Postgres { .. } => db.key_file().unwrap(),
        };
        let old = authd::auth::load_signing_key(Some(&old_private), None).unwrap();
        let pem = old
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        std::fs::write(&old_public, pem).unwrap();
        let text = |path: std::path::PathBuf| path.into_os_string().into_string().unwrap();
        Self {
            _folder: folder,
            new_key: text(new_key),
            old_public: text(old_public),
        }
    }

    /// The settings that make the rotation.
    pub(crate) fn settings(&self) -> [(&'static str, &str); 2] {
        [
            ("AUTH_SIGNING_KEY_FILE", &self.new_key),
            ("AUTH_VERIFICATION_KEY_FILES", &self.old_public),
        ]
    }
}

async fn a_rotated_out_key_verifies_while_listed_and_fails_once_removed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let db = app.stop().await;
    let rotation = KeyRotation::new(&db);
    let rotated = rotation.settings();
    let app = TestApp::spawn_on(db, &rotated).await;
    validate(&app.client, &login.access_token)
        .await
        .expect("old token, old key listed");
    let fresh = app.login("alice@example.com", PASSWORD).await.unwrap();
    validate(&app.client, &fresh.access_token)
        .await
        .expect("new token, new key");
    let (_, body) = http_get(app.http_addr, "/.well-known/jwks.json").await;
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "both keys are published"
    );

    let db = app.stop().await;
    let app = TestApp::spawn_on(db, &rotated[..1]).await;
    assert_validate_refused(&app.client, &login.access_token, "TOKEN_INVALID").await;
    validate(&app.client, &fresh.access_token)
        .await
        .expect("new token still valid");
}

#[tokio::test]
async fn keys_generate_writes_a_private_key_and_never_overwrites() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    let path_arg = path.to_str().unwrap();
    let generated = run_authd(&db, &["keys", "generate", "--out", path_arg], "").await;
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    authd::auth::load_signing_key(Some(&path), None).expect("an Ed25519 key authd accepts");

    let again = run_authd(&db, &["keys", "generate", "--out", path_arg], "").await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        key,
        "the key was not overwritten"
    );
}

/// The key `authd keys generate` writes is one OpenSSL reads (PKCS#8 v1, not the v2 that
/// OpenSSL 3.0 refuses), and OpenSSL derives from it the public key authd uses.
#[tokio::test]
async fn openssl_reads_the_keys_authd_writes() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    let generated = run_authd(
        &db,
        &["keys", "generate", "--out", path.to_str().unwrap()],
        "",
    )
    .await;
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs")
    };
    let key = path.to_str().unwrap();
    let check = openssl(&["pkey", "-in", key, "-noout"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let public = openssl(&["pkey", "-in", key, "-pubout", "-outform", "DER"]);
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    let ours = authd::auth::load_signing_key(Some(&path), None)
        .unwrap()
        .verifying_key();
    // The SubjectPublicKeyInfo of an Ed25519 key ends with the 32 key bytes.
    assert_eq!(&public.stdout[public.stdout.len() - 32..], ours.as_bytes());
}
