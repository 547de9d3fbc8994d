//! Key files: Ed25519 keys in PEM, as `authd keys generate` writes them (PKCS#8 v1, mode
//! 0600, never overwritten) and as every key of authd is read (signing, verification, refresh,
//! reuse grace, TLS): refused when other users may read them.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::pkcs8::{
    DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding,
};
use uuid::Uuid;

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
}
