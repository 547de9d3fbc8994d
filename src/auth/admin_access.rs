//! Who may call the AdminService: a client certificate naming a listed identity, or a bearer
//! token whose SHA-256 is a line of the token file. The file is re-read when it changes, so
//! tokens are added and retired without a restart; one that cannot be read or parsed admits no
//! token at all until it is fixed. Refusals are throttled per address like failed logins.

use std::{
    fs::Metadata,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{AddressThrottle, AuthError};
use crate::{
    config::{AdminSettings, Backoff},
    store,
};

/// The longest bearer token looked at; longer ones are refused unhashed.
const MAX_TOKEN_BYTES: usize = 1024;

/// What an AdminService caller presented.
#[derive(Debug, Default)]
pub struct AdminCredentials<'a> {
    /// The `authorization: Bearer` token, if any.
    pub bearer: Option<&'a str>,
    /// The DNS and URI subject alternative names of the verified client certificate.
    pub certificate_names: Vec<String>,
    /// The calling peer's address, which refusals are counted against.
    pub peer: Option<IpAddr>,
}

/// Who an admitted caller is, for the audit trail: `certificate:<name>`, or `token:<the first
/// 12 hex digits of its SHA-256>` (enough to tell tokens apart, useless to an attacker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminCaller(pub String);

/// The AdminService's gate.
#[derive(Debug)]
pub struct AdminAccess {
    clients: Vec<String>,
    tokens: Option<TokenFile>,
    refusals: AddressThrottle,
}

impl AdminAccess {
    /// The gate `settings` describe; the token file must be readable at start.
    pub fn new(settings: &AdminSettings, backoff: Backoff) -> Result<Self, AuthError> {
        let tokens = settings
            .token_file
            .as_deref()
            .map(TokenFile::open)
            .transpose()?;
        Ok(Self {
            clients: settings.clients.clone(),
            tokens,
            refusals: AddressThrottle::new(backoff),
        })
    }

    /// Admits `credentials` or says why not. A certificate is looked at first; then the
    /// token, compared in constant time with every listed hash.
    pub fn authorize(&self, credentials: &AdminCredentials<'_>) -> Result<AdminCaller, AuthError> {
        let now = store::now();
        if let Some(peer) = credentials.peer
            && let Err(until) = self.refusals.reserve(peer, now)
        {
            let retry_after = (until - now).to_std().unwrap_or_default();
            return Err(AuthError::AdminThrottled { retry_after });
        }
        let admitted = self.check(credentials);
        if admitted.is_ok()
            && let Some(peer) = credentials.peer
        {
            self.refusals.release(peer, now);
        }
        admitted
    }

    fn check(&self, credentials: &AdminCredentials<'_>) -> Result<AdminCaller, AuthError> {
        if let Some(name) = credentials
            .certificate_names
            .iter()
            .find(|name| self.clients.contains(name))
        {
            return Ok(AdminCaller(format!("certificate:{name}")));
        }
        let Some(token) = credentials.bearer else {
            return Err(if credentials.certificate_names.is_empty() {
                AuthError::AdminCredentialsMissing
            } else {
                AuthError::AdminCredentialsRefused
            });
        };
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::AdminCredentialsRefused);
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let listed = self
            .tokens
            .as_ref()
            .map(TokenFile::hashes)
            .unwrap_or_default();
        // Every hash is compared, so the time taken says nothing about which one came close.
        let matched = listed
            .iter()
            .fold(subtle::Choice::from(0), |found, allowed| {
                found | allowed.ct_eq(&hash)
            });
        if bool::from(matched) {
            Ok(AdminCaller(format!("token:{}", &hex(&hash)[..12])))
        } else {
            Err(AuthError::AdminCredentialsRefused)
        }
    }
}

/// The token file and the hashes last read from it.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

/// The hashes, and the file's state when they were read.
#[derive(Debug)]
struct Loaded {
    stamp: Option<Stamp>,
    hashes: Arc<Vec<[u8; 32]>>,
}

/// What changes when the file is rewritten or a Kubernetes Secret's link is swapped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(metadata: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        }
    }
}

impl TokenFile {
    fn open(path: &Path) -> Result<Self, AuthError> {
        let (stamp, hashes) = read_hashes(path).map_err(|problem| {
            AuthError::Internal(
                format!("AUTH_ADMIN_TOKEN_FILE {}: {problem}", path.display()).into(),
            )
        })?;
        Ok(Self {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                stamp: Some(stamp),
                hashes: Arc::new(hashes),
            }),
        })
    }

    /// The listed hashes, read again first if the file changed. A file that cannot be read or
    /// parsed lists none: a token being retired must not live on through a broken edit.
    fn hashes(&self) -> Arc<Vec<[u8; 32]>> {
        let current = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() || current != loaded.stamp {
            let (stamp, hashes) = match read_hashes(&self.path) {
                Ok((stamp, hashes)) => {
                    tracing::info!(path = %self.path.display(), tokens = hashes.len(), "admin token file read");
                    (Some(stamp), hashes)
                }
                Err(problem) => {
                    if loaded.stamp.is_some() || !loaded.hashes.is_empty() {
                        tracing::error!(path = %self.path.display(), %problem, "admin token file unusable: no admin token is accepted until it is fixed");
                    }
                    (None, Vec::new())
                }
            };
            *loaded = Loaded {
                stamp,
                hashes: Arc::new(hashes),
            };
        }
        Arc::clone(&loaded.hashes)
    }
}

/// The file's stamp and hashes; the problem (never a line's content) if it has a bad line.
fn read_hashes(path: &Path) -> Result<(Stamp, Vec<[u8; 32]>), String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let hashes = parse_hashes(&text)?;
    Ok((Stamp::of(&metadata), hashes))
}

/// One lower-case hex SHA-256 per line; blank lines and `#` comments ignored.
fn parse_hashes(text: &str) -> Result<Vec<[u8; 32]>, String> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            parse_hex(line).ok_or_else(|| {
                format!("line {n} is not a SHA-256 in lower-case hex (64 characters)")
            })
        })
        .collect()
}

fn parse_hex(line: &str) -> Option<[u8; 32]> {
    let digits = line.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BACKOFF: Backoff = Backoff {
        free_attempts: 3,
        base_delay: Duration::from_secs(60),
        max_delay: Duration::from_secs(600),
    };

    fn sha256_hex(token: &str) -> String {
        hex(&Sha256::digest(token.as_bytes()))
    }

    fn access(dir: &Path, lines: &str) -> AdminAccess {
        let file = dir.join("tokens");
        std::fs::write(&file, lines).unwrap();
        let settings = AdminSettings {
            clients: vec!["ops.internal".into()],
            token_file: Some(file),
        };
        AdminAccess::new(&settings, BACKOFF).unwrap()
    }

    fn bearer(token: &str) -> AdminCredentials<'_> {
        AdminCredentials {
            bearer: Some(token),
            ..AdminCredentials::default()
        }
    }

    #[test]
    fn a_listed_token_or_certificate_is_admitted_and_named_without_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let gate = access(dir.path(), &format!("# ops\n\n{}\n", sha256_hex("s3cret")));
        let caller = gate.authorize(&bearer("s3cret")).unwrap();
        assert_eq!(caller.0, format!("token:{}", &sha256_hex("s3cret")[..12]));
        let certificate = AdminCredentials {
            certificate_names: vec!["other".into(), "ops.internal".into()],
            ..AdminCredentials::default()
        };
        assert_eq!(
            gate.authorize(&certificate).unwrap().0,
            "certificate:ops.internal"
        );
    }

    #[test]
    fn no_credential_is_missing_and_a_wrong_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gate = access(dir.path(), &sha256_hex("s3cret"));
        assert!(matches!(
            gate.authorize(&AdminCredentials::default()),
            Err(AuthError::AdminCredentialsMissing)
        ));
        assert!(matches!(
            gate.authorize(&bearer("wrong")),
            Err(AuthError::AdminCredentialsRefused)
        ));
        let unlisted = AdminCredentials {
            certificate_names: vec!["intruder.internal".into()],
            ..AdminCredentials::default()
        };
        assert!(matches!(
            gate.authorize(&unlisted),
            Err(AuthError::AdminCredentialsRefused)
        ));
    }

    #[test]
    fn a_malformed_file_is_refused_at_start_and_admits_nothing_once_running() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "not-a-hash\n").unwrap();
        let settings = AdminSettings {
            clients: Vec::new(),
            token_file: Some(file.clone()),
        };
        let Err(AuthError::Internal(problem)) = AdminAccess::new(&settings, BACKOFF) else {
            panic!("a malformed file was accepted");
        };
        assert!(problem.to_string().contains("line 1"), "{problem}");
        assert!(!problem.to_string().contains("not-a-hash"), "{problem}");

        let gate = access(dir.path(), &sha256_hex("s3cret"));
        std::fs::write(
            dir.path().join("tokens"),
            format!("{}\nbad\n", sha256_hex("s3cret")),
        )
        .unwrap();
        assert!(matches!(
            gate.authorize(&bearer("s3cret")),
            Err(AuthError::AdminCredentialsRefused)
        ));
    }

    #[test]
    fn refusals_from_one_address_are_throttled_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let gate = access(dir.path(), &sha256_hex("s3cret"));
        let from = |peer: &str, token| AdminCredentials {
            bearer: Some(token),
            peer: Some(peer.parse().unwrap()),
            ..AdminCredentials::default()
        };
        for _ in 0..BACKOFF.free_attempts {
            assert!(matches!(
                gate.authorize(&from("192.0.2.1", "guess")),
                Err(AuthError::AdminCredentialsRefused)
            ));
        }
        assert!(matches!(
            gate.authorize(&from("192.0.2.1", "guess")),
            Err(AuthError::AdminThrottled { .. })
        ));
        assert!(matches!(
            gate.authorize(&from("192.0.2.1", "s3cret")),
            Err(AuthError::AdminThrottled { .. })
        ));
        gate.authorize(&from("192.0.2.2", "s3cret")).unwrap();
    }
}
