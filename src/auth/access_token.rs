//! Access tokens: EdDSA-signed JWTs (`typ: at+jwt`, RFC 9068) and the keys behind them.

use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding,
};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{Jwk, ThumbprintHash},
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
    /// The key file does not hold an Ed25519 private key in PKCS#8 PEM.
    #[error("{path}: not an Ed25519 private key in PKCS#8 PEM ({problem})")]
    Format {
        /// The key file.
        path: PathBuf,
        /// What the parser said.
        problem: String,
    },
    /// No key file is configured and there is no SQLite folder to keep a generated one in.
    #[error(
        "AUTH_SIGNING_KEY_FILE must be set when the database is not an SQLite file \
         (every replica must sign with the same key)"
    )]
    NoKeyLocation,
}

/// Signs access tokens with one Ed25519 key and verifies them against the known keys.
pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    /// Verification keys by `kid`; a token whose `kid` is not here is refused.
    decoding: HashMap<String, DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Builds the signer and verifier from an Ed25519 private key in PKCS#8 PEM.
    pub fn from_pem(
        pem: &str,
        issuer: &str,
        audience: &str,
        leeway: Duration,
    ) -> Result<Self, String> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let decoding = DecodingKey::from_ed_der(key.verifying_key().as_bytes());
        let kid = Jwk::from_decoding_key(&decoding, Some(ALGORITHM))
            .and_then(|jwk| jwk.thumbprint(ThumbprintHash::SHA256))
            .map_err(|e| e.to_string())?;

        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Ok(Self {
            decoding: HashMap::from([(kid.clone(), decoding)]),
            kid,
            encoding,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
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
        let mut header = Header::new(ALGORITHM);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(Box::new(e)))
    }

    /// Checks signature, algorithm, `typ`, `kid`, iss, aud, exp and nbf. Key-carrying headers
    /// (`jwk`, `jku`, `x5u`, `x5c`) are ignored: only configured keys are trusted.
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
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(AuthError::AccessTokenExpired),
                _ => Err(AuthError::AccessTokenInvalid),
            },
        }
    }
}

/// Loads the signing key from `configured`, or else from `generated_path`, generating it there
/// (mode 0600) on first start. Returns the PEM text.
pub fn load_or_generate_key(
    configured: Option<&Path>,
    generated_path: Option<&Path>,
) -> Result<String, KeyError> {
    let path = match (configured, generated_path) {
        (Some(path), _) => return read_key(path),
        (None, Some(path)) => path,
        (None, None) => return Err(KeyError::NoKeyLocation),
    };
    if !path.exists() {
        generate_key_file(path)?;
        tracing::info!(path = %path.display(), "generated a new signing key");
    }
    read_key(path)
}

fn read_key(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read_to_string(path).map_err(io)?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        problem: e.to_string(),
    })?;
    Ok(pem)
}

/// Writes a fresh key next to `path` and links it into place, so a crash never leaves a
/// half-written key and two processes starting at once agree on one key.
fn generate_key_file(path: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| io(std::io::Error::other(e)))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
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
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    })();
    let _ = std::fs::remove_file(&temp);
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path) -> TokenKeys {
        let pem = load_or_generate_key(None, Some(&dir.join("k.pem"))).unwrap();
        TokenKeys::from_pem(&pem, "authd", "svc", Duration::ZERO).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let first = load_or_generate_key(None, Some(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_generate_key(None, Some(&path)).unwrap(), first);
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
        assert!(matches!(
            load_or_generate_key(Some(&path), None),
            Err(KeyError::Format { .. })
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            load_or_generate_key(Some(&missing), None),
            Err(KeyError::Io { .. })
        ));
        assert!(matches!(
            load_or_generate_key(None, None),
            Err(KeyError::NoKeyLocation)
        ));
    }
}
