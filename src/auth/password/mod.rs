//! Password hashing with argon2id on a few dedicated threads that reuse their memory.
//!
//! Each hash needs `memory_kib` of working memory. Allocating it per hash makes glibc keep
//! freed blocks around (its mmap threshold grows with them): a login flood then held hundreds
//! of MiB. Instead each hashing thread keeps one buffer and reuses it, so memory is bounded by
//! `concurrency x memory_kib` and no page is faulted in twice.

mod phc;
mod threads;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use argon2::Params;

use super::{AuthError, credentials::Password};
use crate::config::Argon2Settings;
use phc::{OUTPUT_LEN, SALT_LEN, new_phc, params_of, phc_string, random, verify_phc};
use threads::HashingThreads;

/// The outcome of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    /// Wrong password, or no such user.
    Mismatch,
    /// The password matches a hash made with the configured parameters.
    Match,
    /// The password matches a hash made with other parameters; here is its new hash.
    MatchRehashed(String),
}

/// Hashes and verifies passwords on `concurrency` dedicated threads, so a burst of logins
/// never starves the async runtime and never holds more than `concurrency` hashes' memory.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    threads: HashingThreads,
    /// Verified against when the email is unknown (or the user disabled): made with the
    /// costliest parameters in use, see [`PasswordHasher::cover`].
    dummy_hash: Arc<str>,
    /// How long one verification of the dummy takes, in nanoseconds (a moving average):
    /// every failed verification is answered no sooner, whatever its hash's parameters.
    failure_floor: Arc<AtomicU64>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Starts `concurrency` hashing threads with room for `queue` waiting jobs. They stop when
    /// the last clone of the hasher is dropped.
    pub fn new(
        settings: Argon2Settings,
        concurrency: usize,
        queue: usize,
    ) -> Result<Self, AuthError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            Some(OUTPUT_LEN),
        )
        .map_err(internal)?;
        let threads = HashingThreads::start(concurrency, queue)?;
        // Random salt and output: verifying against it costs a full hash and never matches.
        let dummy_hash = phc_string(&params, &random::<SALT_LEN>()?, &random::<OUTPUT_LEN>()?)?;
        Ok(Self {
            params,
            threads,
            dummy_hash: dummy_hash.into(),
            failure_floor: Arc::default(),
        })
    }

    /// Makes the dummy hash as costly as the costliest of `prefixes` (PHC strings up to the
    /// salt: the parameter sets of the stored hashes) and the configured parameters, and
    /// times it. Then an unknown email, and a wrong password on an account of any of them,
    /// take the same time: each failure is answered no sooner than the dummy's verification.
    pub async fn cover(&mut self, prefixes: &[String]) -> Result<(), AuthError> {
        let cost = |p: &Params| (u64::from(p.m_cost()) * u64::from(p.t_cost()), p.p_cost());
        let mut costliest = self.params.clone();
        for prefix in prefixes {
            match params_of(prefix) {
                Some(params) if cost(&params) > cost(&costliest) => costliest = params,
                Some(_) => {}
                None => tracing::warn!(prefix, "a stored password hash has unreadable parameters"),
            }
        }
        let dummy = phc_string(&costliest, &random::<SALT_LEN>()?, &random::<OUTPUT_LEN>()?)?;
        self.dummy_hash = dummy.into();
        self.failure_floor.store(0, Ordering::Relaxed);
        // One verification to start the average from.
        let calibration = Password::parse("calibration".to_owned())?;
        self.verify(calibration, None).await?;
        tracing::info!(
            m_cost = costliest.m_cost(),
            t_cost = costliest.t_cost(),
            failure_floor_ms = self.failure_floor.load(Ordering::Relaxed) as f64 / 1e6,
            "failed logins take as long as the costliest stored hash"
        );
        Ok(())
    }

    /// The PHC string (algorithm, parameters, salt, hash) of a new password.
    #[tracing::instrument(target = "authd::hash", name = "argon2id hash", skip_all)]
    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        let params = self.params.clone();
        self.threads
            .run(move |memory| new_phc(&params, password.forms().normalised(), memory))
            .await?
    }

    /// Whether `password` matches `stored` (a PHC string), compared in constant time. With
    /// `stored` absent it checks against the dummy hash and answers no match, taking the same
    /// time as a real check. A match against a hash made with other parameters than the
    /// configured ones also carries a new hash of the password, to store in its place.
    ///
    /// The NFKC form is checked first. A password whose form as typed differs is checked in
    /// that form too when the first check fails (hashes made before passwords were
    /// normalised), unknown email or not, so both cost the same; such a match is rehashed.
    #[tracing::instrument(target = "authd::hash", name = "argon2id verify", skip_all)]
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<Verification, AuthError> {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let params = self.params.clone();
        let (verification, took, checks) = self
            .threads
            .run(move |memory| {
                let started = Instant::now();
                let forms = password.forms();
                let (mut matched, mut current) =
                    verify_phc(&phc, forms.normalised(), &params, memory)?;
                let mut checks = 1;
                if !matched && let Some(as_typed) = forms.as_typed() {
                    // Found under the old form: the stored hash must move to the normalised one.
                    (matched, _) = verify_phc(&phc, as_typed, &params, memory)?;
                    current = false;
                    checks = 2;
                }
                let took = started.elapsed();
                if !(known && matched) {
                    return Ok((Verification::Mismatch, took, checks));
                }
                if current {
                    return Ok((Verification::Match, took, checks));
                }
                let rehashed = new_phc(&params, forms.normalised(), memory)?;
                Ok::<_, AuthError>((Verification::MatchRehashed(rehashed), took, checks))
            })
            .await??;
        if !known {
            self.learn_failure_floor(took / checks);
        }
        if verification == Verification::Mismatch {
            let floor = Duration::from_nanos(self.failure_floor.load(Ordering::Relaxed));
            if let Some(wait) = (floor * checks).checked_sub(took) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(verification)
    }

    /// Folds one dummy verification's time into the failure floor (1/8 weight).
    fn learn_failure_floor(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .failure_floor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |floor| {
                Some(if floor == 0 {
                    sample
                } else {
                    floor - floor / 8 + sample / 8
                })
            });
    }
}

fn internal(err: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(format!("password hashing: {err}").into())
}

#[cfg(test)]
mod tests {
    use argon2::{Argon2, PasswordHash, PasswordVerifier as _, password_hash::SaltString};

    use super::*;

    fn cheap() -> PasswordHasher {
        let settings = Argon2Settings {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        PasswordHasher::new(settings, 2, 8).unwrap()
    }

    fn pw(s: &str) -> Password {
        Password::parse(s.into()).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hasher = cheap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let right = hasher
            .verify(pw("correct horse"), Some(phc.clone()))
            .await
            .unwrap();
        assert_eq!(right, Verification::Match);
        let wrong = hasher
            .verify(pw("battery staple"), Some(phc))
            .await
            .unwrap();
        assert_eq!(wrong, Verification::Mismatch);
    }

    #[tokio::test]
    async fn hashes_agree_with_the_reference_implementation() {
        let hasher = cheap();
        let ours = hasher.hash(pw("correct horse")).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        let reference_verifies = Argon2::default().verify_password(b"correct horse", &parsed);
        assert!(reference_verifies.is_ok());

        use argon2::PasswordHasher as _;
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        let reference = Argon2::default()
            .hash_password(b"pw-from-elsewhere", &salt)
            .unwrap()
            .to_string();
        // Argon2::default() is m=19456,t=2: other parameters than these, so a match rehashes.
        let verified = hasher
            .verify(pw("pw-from-elsewhere"), Some(reference.clone()))
            .await;
        let Verification::MatchRehashed(new) = verified.unwrap() else {
            panic!("a hash with other parameters is rehashed on a match");
        };
        assert!(new.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{new}");
        let again = hasher
            .verify(pw("pw-from-elsewhere"), Some(new))
            .await
            .unwrap();
        assert_eq!(again, Verification::Match);
        let wrong = hasher
            .verify(pw("pw-from-elsewher"), Some(reference))
            .await
            .unwrap();
        assert_eq!(wrong, Verification::Mismatch);
    }

    const NFC: &str = "caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e";
    const NFD: &str = "cafe\u{301} cre\u{300}me bru\u{302}le\u{301}e";

    #[tokio::test]
    async fn a_password_enrolled_in_one_normalisation_logs_in_from_another() {
        let hasher = cheap();
        let enrolled = hasher.hash(pw(NFC)).await.unwrap();
        let verified = hasher.verify(pw(NFD), Some(enrolled)).await.unwrap();
        assert_eq!(verified, Verification::Match);
    }

    /// A hash made, before passwords were normalised, from the bytes as typed still matches,
    /// and is replaced by a hash of the normalised form.
    #[tokio::test]
    async fn a_hash_of_the_form_as_typed_matches_and_is_rehashed() {
        let hasher = cheap();
        let before = new_phc(&hasher.params, NFD.as_bytes(), &mut Vec::new()).unwrap();

        let Verification::MatchRehashed(after) =
            hasher.verify(pw(NFD), Some(before.clone())).await.unwrap()
        else {
            panic!("an old-form hash is rehashed on a match");
        };
        assert_eq!(
            hasher.verify(pw(NFC), Some(after)).await.unwrap(),
            Verification::Match,
            "the new hash is of the normalised form"
        );
        assert_eq!(
            hasher.verify(pw(NFC), Some(before)).await.unwrap(),
            Verification::Mismatch,
            "only the form once typed matches an old hash"
        );
    }

    /// The dummy takes the costliest parameters in use, and a wrong password on a cheaper
    /// hash is answered no sooner than a verification of the dummy.
    #[tokio::test]
    async fn failures_take_as_long_as_the_costliest_parameters_in_use() {
        let mut hasher = cheap();
        let cheap_hash = hasher.hash(pw("correct horse")).await.unwrap();
        hasher
            .cover(&[
                "$argon2id$v=19$m=2048,t=3,p=1".to_owned(),
                "$argon2id$v=19$m=32,t=1,p=1".to_owned(),
                "$unreadable".to_owned(),
            ])
            .await
            .unwrap();
        assert!(
            hasher
                .dummy_hash
                .starts_with("$argon2id$v=19$m=2048,t=3,p=1$")
        );
        let floor = Duration::from_nanos(hasher.failure_floor.load(Ordering::Relaxed));
        assert!(floor > Duration::ZERO, "timed at once");

        let started = Instant::now();
        let wrong = hasher
            .verify(pw("battery staple"), Some(cheap_hash.clone()))
            .await;
        assert_eq!(wrong.unwrap(), Verification::Mismatch);
        assert!(
            started.elapsed() >= floor,
            "a cheap failure waits for the floor"
        );
        // A success is answered as soon as it is known.
        let right = hasher.verify(pw("correct horse"), Some(cheap_hash)).await;
        assert_eq!(right.unwrap(), Verification::Match);
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let hasher = cheap();
        let unknown = hasher.verify(pw("anything"), None).await.unwrap();
        assert_eq!(unknown, Verification::Mismatch);
        assert!(
            hasher
                .dummy_hash
                .starts_with("$argon2id$v=19$m=64,t=1,p=1$")
        );
    }

    #[tokio::test]
    async fn production_parameters_are_the_owasp_ones() {
        let hasher = PasswordHasher::new(Argon2Settings::default(), 1, 1).unwrap();
        let phc = hasher.hash(pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let verified = hasher.verify(pw("correct horse"), Some(phc)).await.unwrap();
        assert_eq!(verified, Verification::Match);
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_internal_error() {
        let hasher = cheap();
        let result = hasher
            .verify(pw("x"), Some("not a phc string".into()))
            .await;
        assert!(matches!(result, Err(AuthError::Internal(_))));
    }
}
