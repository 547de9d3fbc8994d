//! Access tokens: EdDSA-signed JWTs (`typ: at+jwt`, RFC 9068) and the keys behind them.

use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{
    Signer as _,
    pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding},
};
use jsonwebtoken::{
    Algorithm, DecodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AuthError;

/// The `typ` header of every access token (RFC 9068), so no other JWT passes as one.
const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The one signing algorithm; tokens naming any other are refused.
const ALGORITHM: Algorithm = Algorithm::EdDSA;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: `AUTH_ISSUER`.
    pub iss: String,
    /// Audience: `AUTH_AUDIENCE`.
    pub aud: String,
    /// The user's id.
    pub sub: Uuid,
    /// The session's id.
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

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The key file does not hold an Ed25519 key in PEM (PKCS#8 private, or SPKI public for a
    /// verification key).
    #[error("{path}: not an Ed25519 private key in PKCS#8 PEM ({problem})")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What the parser said.
        problem: String,
    },
    /// A private key file that users other than its owner may read or change.
    #[error(
        "{path}: mode {mode:04o} lets other users read or change it; run `chmod 600 {path}` \
         (0640 is accepted only for a file owned by root, as Kubernetes mounts Secrets)"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `authd keys generate` would overwrite a file.
    #[error("{path}: already exists; not overwritten")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The key could not be turned into a JWK (a bug: Ed25519 keys always can).
    #[error("cannot describe the key as a JWK: {0}")]
    Jwk(#[source] jsonwebtoken::errors::Error),
    /// No key file is configured and there is no SQLite folder to keep a generated one in.
    #[error(
        "the key file must be set when the database is not an SQLite file \
         (every replica must use the same key)"
    )]
    NoKeyLocation,
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
    validation: Validation,
    issuer: String,
    audience: String,
    /// [`Acceptance::leeway`] and [`Acceptance::max_lifetime`], in seconds.
    leeway: i64,
    max_lifetime: i64,
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
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Ok(Self {
            kid,
            signer: signing.clone(),
            encoded_header: URL_SAFE_NO_PAD.encode(header),
            decoding,
            jwks,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
            max_lifetime: i64::try_from(max_lifetime.as_secs()).unwrap_or(i64::MAX),
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

    /// Checks signature, algorithm, `typ`, `kid`, iss, aud, exp and nbf, and that the token's
    /// lifetime (`exp - iat`) is at most the longest accepted and its `iat` not in the future
    /// beyond the leeway. Key-carrying headers (`jwk`, `jku`, `x5u`, `x5c`) are ignored: only
    /// configured keys are trusted.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::AccessTokenInvalid)?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE) {
            return Err(AuthError::AccessTokenInvalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.decoding.get(kid))
            .ok_or(AuthError::AccessTokenInvalid)?;
        match jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation) {
            Ok(data) => {
                let claims = data.claims;
                let now = chrono::Utc::now().timestamp();
                let lifetime = claims.exp.saturating_sub(claims.iat);
                if lifetime > self.max_lifetime || claims.iat > now.saturating_add(self.leeway) {
                    return Err(AuthError::AccessTokenInvalid);
                }
                Ok(claims)
            }
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(AuthError::AccessTokenExpired),
                _ => Err(AuthError::AccessTokenInvalid),
            },
        }
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

/// Loads the signing key from `configured`, or else from `generated_path`, generating it there
/// (mode 0600) on first start.
pub fn load_signing_key(
    configured: Option<&Path>,
    generated_path: Option<&Path>,
) -> Result<ed25519_dalek::SigningKey, KeyError> {
    let path = match (configured, generated_path) {
        (Some(path), _) => path,
        (None, Some(path)) => {
            if generate_key_file(path)? {
                tracing::info!(path = %path.display(), "generated a new signing key");
            }
            path
        }
        (None, None) => return Err(KeyError::NoKeyLocation),
    };
    let pem = read_private(path)?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| format_error(path, &e))
}

/// Loads a verify-only key: an Ed25519 public key (SPKI PEM) or a retired private key.
pub fn load_verification_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let pem = read(path)?;
    if let Ok(public) = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem) {
        return Ok(public);
    }
    let pem = read_private(path)?;
    let private =
        ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| format_error(path, &e))?;
    Ok(private.verifying_key())
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a private key file (signing, refresh, grace or TLS), refusing one that users other
/// than its owner may read or change.
pub fn read_private(path: &Path) -> Result<String, KeyError> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if !private_enough(mode, metadata.uid()) {
        return Err(KeyError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    read(path)
}

/// PostgreSQL's rule for its own key files: nobody but the owner may read a key (0600 or
/// less), except that a file owned by root may also be read by its group (0640 or less), which
/// is how Kubernetes mounts a Secret for a non-root process with `fsGroup`.
fn private_enough(mode: u32, owner_uid: u32) -> bool {
    let allowed = if owner_uid == 0 { 0o740 } else { 0o700 };
    mode & 0o777 & !allowed == 0
}

fn format_error(path: &Path, problem: &dyn std::fmt::Display) -> KeyError {
    KeyError::Format {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

/// Writes a fresh Ed25519 key (PKCS#8 v1 PEM, mode 0600) to `path` unless a file is there;
/// returns whether it wrote one. The key is written beside `path` and linked into place, so a
/// crash never leaves a half-written key and two processes starting at once agree on one key.
pub fn generate_key_file(path: &Path) -> Result<bool, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| io(std::io::Error::other(e)))?;
    // PKCS#8 v1 (RFC 5208): the private key alone. v2 adds the public key, which OpenSSL 3.0
    // and Python's cryptography refuse; both versions load here.
    let key = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: secret,
        public_key: None,
    };
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| io(std::io::Error::other(e)))?;

    let temp = path.with_extension(format!("tmp-{}", Uuid::new_v4()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        match std::fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&temp);
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let sign = |iat| {
            keys.issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                "a@b.c",
                iat,
                Duration::from_secs(60),
            )
            .unwrap()
        };
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

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_generated_key_is_pkcs8_v1_and_a_v2_key_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        assert!(generate_key_file(&path).unwrap());
        let pem = std::fs::read_to_string(&path).unwrap();
        let der = ed25519_dalek::pkcs8::spki::der::pem::decode_vec(pem.as_bytes())
            .unwrap()
            .1;
        // PrivateKeyInfo: SEQUENCE { INTEGER version, ... }; v1 is 0, v2 (OneAsymmetricKey) 1.
        assert_eq!(&der[2..5], &[0x02, 0x01, 0x00], "version v1");

        let v2_path = dir.path().join("v2.pem");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let v2 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(&v2_path, v2.as_bytes()).unwrap();
        std::fs::set_permissions(&v2_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = load_signing_key(Some(&v2_path), None).unwrap();
        assert_eq!(loaded.to_bytes(), key.to_bytes());
    }

    #[test]
    fn a_generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let first = load_signing_key(None, Some(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_signing_key(None, Some(&path)).unwrap();
        assert_eq!(again.to_bytes(), first.to_bytes());
        assert!(
            !generate_key_file(&path).unwrap(),
            "an existing key is never overwritten"
        );
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
    fn a_token_of_another_key_is_invalid() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let token = keys(a.path())
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                "a@b.c",
                now(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(matches!(
            keys(b.path()).verify(&token),
            Err(AuthError::AccessTokenInvalid)
        ));
    }

    #[test]
    fn an_expired_token_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let token = keys
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                "a@b.c",
                now() - 120,
                Duration::from_secs(60),
            )
            .unwrap();
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
    fn a_key_that_is_not_ed25519_pkcs8_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            load_signing_key(Some(&path), None),
            Err(KeyError::Format { .. })
        ));
        assert!(matches!(
            load_verification_key(&path),
            Err(KeyError::Format { .. })
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            load_signing_key(Some(&missing), None),
            Err(KeyError::Io { .. })
        ));
        assert!(matches!(
            load_signing_key(None, None),
            Err(KeyError::NoKeyLocation)
        ));
    }

    #[test]
    fn key_files_must_be_private_to_their_owner_or_to_root_and_its_group() {
        for (mode, owner, private) in [
            (0o600, 1000, true),
            (0o400, 1000, true),
            (0o640, 1000, false),
            (0o604, 1000, false),
            (0o620, 1000, false),
            (0o640, 0, true),
            (0o440, 0, true),
            (0o660, 0, false),
            (0o644, 0, false),
            (0o600, 0, true),
        ] {
            assert_eq!(
                private_enough(mode, owner),
                private,
                "{mode:o} owned by {owner}"
            );
        }
    }

    #[test]
    fn a_world_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        assert!(generate_key_file(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_signing_key(Some(&path), None),
            Err(KeyError::TooOpen { .. })
        ));
        assert!(matches!(
            load_verification_key(&path),
            Err(KeyError::TooOpen { .. })
        ));
    }

    #[test]
    fn verify_only_keys_are_accepted_and_published() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let old = keys(old_dir.path());
        let old_token = old
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                "a@b.c",
                now(),
                Duration::from_secs(60),
            )
            .unwrap();

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
        let rotated =
            TokenKeys::new(&current, &[verify_only], "authd", "svc", ACCEPT_AN_HOUR).unwrap();
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
}
