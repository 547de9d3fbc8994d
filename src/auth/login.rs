//! Login: the throttles a login passes before its password is checked, then the check and
//! a new session.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use uuid::Uuid;

use super::{
    AuthError, Authenticator, Email, FAILURE_MEMORY, Issued, IssuedTokens, KNOWN_CLIENT_MEMORY,
    Password, Verification, refresh, refresh_token::random_secret, throttle_key,
};
use crate::store::{
    self, ClientSeen, FIRST_GENERATION, LoginReservation, LoginUser, NewSession, UserKey,
};

/// Who is logging in, as far as the caller can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginClient {
    /// The end user's address, which throttling per address counts against.
    pub address: Option<IpAddr>,
    /// The end user's User-Agent, for the audit trail and the session list.
    pub user_agent: Option<String>,
    /// The calling peer's address: shown for a session when no end user's address is known.
    pub peer: Option<IpAddr>,
}

impl LoginClient {
    /// What the session list shows of this client.
    pub fn seen(&self) -> ClientSeen {
        ClientSeen {
            address: self.address.or(self.peer).map(|ip| ip.to_string()),
            user_agent: self.user_agent.clone(),
        }
    }
}

/// How a login got past the throttles.
#[derive(Debug)]
enum Admission {
    /// Its attempt is counted against the account, as its `failures`-th failure.
    Reserved { failures: u32 },
    /// The account is blocked, but this address (its throttle key) logged in as it before.
    KnownClient { key: String },
}

impl Authenticator {
    /// Checks the credentials and opens a session. Unknown email, wrong password and disabled
    /// user are one error, and all three run a full argon2 verification.
    ///
    /// Logins of one account take turns on this replica, and each reserves its attempt (per
    /// account in the database, per address here) before hashing: concurrent guesses count
    /// one each before any is checked, and a success gives its reservation back.
    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: Email,
        password: Password,
        login_client: LoginClient,
    ) -> Result<IssuedTokens, AuthError> {
        let client = login_client.address;
        let user_agent = login_client.user_agent.as_deref();
        let _turn = self.turns.take(email.as_str()).await?;
        let (user, verification) = self
            .check_password(&email, password, client, user_agent)
            .await?;
        if let Verification::MatchRehashed(new_hash) = verification {
            // Conditional on the old hash, so a concurrent password change is never undone.
            let replaced = self
                .store
                .replace_password_hash(user.id, &user.password_hash, &new_hash)
                .await?;
            if replaced {
                audit!(event = "password_rehashed", user_id = %user.id);
            }
        }

        let now = store::now();
        let secret = random_secret()?;
        let expires_at = self
            .lifetimes
            .token_expiry(now)
            .min(self.lifetimes.session_end(now));
        let session = NewSession {
            session_id: Uuid::new_v4(),
            user_id: user.id,
            user_seen_at: user.updated_at,
            created_at: now,
            secret_hash: refresh::secret_hash(&secret),
            expires_at,
            client: login_client.seen(),
        };
        if !self.store.create_session(&session).await? {
            // Disabled, or its password changed, while this login was hashing: that wins.
            audit!(event = "login_superseded", user_id = %user.id);
            crate::metrics::login_failed();
            return Err(AuthError::InvalidCredentials);
        }
        audit!(event = "login", user_id = %user.id, session_id = %session.session_id, client = ?client, user_agent = ?user_agent);
        let issued = Issued {
            user_id: user.id,
            email: &user.email,
            session_id: session.session_id,
            now,
            refresh_token: self
                .refresh_key
                .seal(session.session_id, FIRST_GENERATION, &secret),
            refresh_expires_at: expires_at,
        };
        self.issue(issued)
    }

    /// Checks `password` against the account of `email` the way a login does: through the
    /// throttles first, a full verification whether or not the account exists, the failure
    /// counted or the success's reservation given back. The caller holds the account's turn.
    pub(super) async fn check_password(
        &self,
        email: &Email,
        password: Password,
        client: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<(LoginUser, Verification), AuthError> {
        let admission = self.admit(email, client).await?;
        let backoff = self.account_backoff;

        let checked = async {
            let user = self
                .store
                .login_user(UserKey::Email(email.as_str()))
                .await?;
            // A disabled user is checked against the dummy, as an unknown email is.
            let stored_hash = user
                .as_ref()
                .filter(|u| !u.disabled)
                .map(|u| u.password_hash.clone());
            let verification = self.hasher.verify(password, stored_hash).await?;
            Ok::<_, AuthError>((user, verification))
        }
        .await;
        let (user, verification) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                // Never checked: the attempt must not count against the account.
                self.release_address(client);
                if let Admission::Reserved { .. } = admission
                    && let Err(release) = self
                        .store
                        .release_login_attempt(email.as_str(), store::now(), |failures, at| {
                            backoff.block_end(failures, at)
                        })
                        .await
                {
                    tracing::warn!(error = %crate::report::error_chain(&release), "a login reservation was not given back");
                }
                return Err(e);
            }
        };
        let user = match user {
            Some(user) if verification != Verification::Mismatch && !user.disabled => user,
            _ => {
                let failures = match admission {
                    Admission::Reserved { failures } => Some(failures),
                    Admission::KnownClient { ref key } => {
                        // Trusted once, wrong now: it meets the account's block from here on.
                        self.store.forget_login_client(email.as_str(), key).await?;
                        None
                    }
                };
                audit!(event = "login_failed", email = email.as_str(), failures, client = ?client, user_agent = ?user_agent);
                crate::metrics::login_failed();
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.release_address(client);
        match admission {
            Admission::Reserved { .. } => self.store.clear_login_failures(email.as_str()).await?,
            // The block stays for everyone else: the flood's delays keep growing.
            Admission::KnownClient { .. } => {}
        }
        if let Some(ip) = client {
            let key = throttle_key(ip).to_string();
            self.store
                .remember_login_client(email.as_str(), &key, store::now())
                .await?;
        }
        Ok((user, verification))
    }

    /// Lets a login through the throttles, before its password is checked: reserves its
    /// attempt per address and per account. While the account is blocked, a login from an
    /// address that logged in as it before (within [`KNOWN_CLIENT_MEMORY`]) still goes
    /// through, uncounted: a flood of guesses must not lock the owner out.
    async fn admit(&self, email: &Email, client: Option<IpAddr>) -> Result<Admission, AuthError> {
        // Throttled before any hashing, and the same way whether or not the email exists.
        let started = store::now();
        if let Some(ip) = client
            && let Err(until) = self.addresses.reserve(ip, started)
        {
            return Err(self.throttled(email, client, until, started));
        }
        let backoff = self.account_backoff;
        let admitted = async {
            let reserved = self
                .store
                .reserve_login_attempt(
                    email.as_str(),
                    started,
                    started - FAILURE_MEMORY,
                    |failures, at| backoff.block_end(failures, at),
                )
                .await?;
            let until = match reserved {
                LoginReservation::Granted { failures } => {
                    return Ok(Admission::Reserved { failures });
                }
                LoginReservation::Blocked { until } => until,
            };
            if let Some(ip) = client {
                let key = throttle_key(ip).to_string();
                let since = started - KNOWN_CLIENT_MEMORY;
                if self
                    .store
                    .is_known_login_client(email.as_str(), &key, since)
                    .await?
                {
                    audit!(event = "login_known_client_past_block", email = email.as_str(), client = ?client);
                    return Ok(Admission::KnownClient { key });
                }
            }
            Err(self.throttled(email, client, until, started))
        }
        .await;
        if admitted.is_err() {
            self.release_address(client);
        }
        admitted
    }

    /// The refusal of a throttled login, audited and counted.
    fn throttled(
        &self,
        email: &Email,
        client: Option<IpAddr>,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> AuthError {
        audit!(event = "login_throttled", email = email.as_str(), client = ?client);
        crate::metrics::login_throttled();
        let retry_after = (until - now).to_std().unwrap_or_default();
        AuthError::Throttled { retry_after }
    }

    /// Gives back the address's reservation of a login that succeeded or was never checked.
    fn release_address(&self, client: Option<IpAddr>) {
        if let Some(ip) = client {
            self.addresses.release(ip, store::now());
        }
    }
}
