//! Refresh: one conditional statement rotates the session's token; when it matches nothing,
//! one read says why, and the rules below turn that into the answer (a reuse revokes the
//! session, a retry within the grace gets the same successor once).

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::{
    AuthError, Authenticator, Issued, IssuedTokens, LoginClient, RefreshToken,
    refresh_token::{Opened, SessionSecret, random_secret},
};
use crate::store::{
    self, Credential, RefreshClock, RefreshState, RevokedReason, Rotated, RotationOutcome,
};

/// How long refresh tokens and sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// A refresh token's lifetime.
    pub refresh_token: TimeDelta,
    /// A session's absolute lifetime from its login, however often it refreshes.
    pub session_max: TimeDelta,
}

impl Lifetimes {
    /// When a token issued at `now` expires, before the session's end cuts it short.
    pub fn token_expiry(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_add_signed(self.refresh_token)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The absolute end of a session that began at `session_start`.
    pub fn session_end(&self, session_start: DateTime<Utc>) -> DateTime<Utc> {
        session_start
            .checked_add_signed(self.session_max)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// A refresh at `now`: sessions that began before `now - session_max` have ended.
    pub fn clock(&self, now: DateTime<Utc>) -> RefreshClock {
        RefreshClock {
            now,
            sessions_started_after: now
                .checked_sub_signed(self.session_max)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

/// What a refused rotation means.
#[derive(Debug)]
enum Verdict {
    /// Refused with this error; nothing changes.
    Refuse(AuthError),
    /// An earlier generation: the token was used before, so it may be stolen.
    Reuse,
    /// The immediately previous token within the reuse grace: try the one retry.
    GraceRetry,
}

/// Why a rotation of `presented` matched nothing, from the session's refresh row read after it.
/// `grace`: the reuse-grace window, when it is on.
fn judge(
    presented: &SessionSecret,
    state: Option<&RefreshState>,
    now: DateTime<Utc>,
    lifetimes: Lifetimes,
    grace: Option<TimeDelta>,
) -> Verdict {
    let Some(state) = state else {
        return Verdict::Refuse(AuthError::RefreshTokenInvalid);
    };
    if presented.generation < state.generation {
        let retry = grace.is_some_and(|window| {
            presented.generation + 1 == state.generation
                && !state.retried
                && now - state.rotated_at < window
        });
        return if retry {
            Verdict::GraceRetry
        } else {
            Verdict::Reuse
        };
    }
    let secret_matches: bool = presented.secret_hash().ct_eq(&state.secret_hash[..]).into();
    // A generation the session never reached (a database restored from an old backup), or the
    // current one with another secret: whoever sealed it, it is not this session's token.
    if presented.generation > state.generation || !secret_matches {
        return Verdict::Refuse(AuthError::RefreshTokenInvalid);
    }
    Verdict::Refuse(if state.revoked || state.user_disabled {
        AuthError::SessionRevoked
    } else if lifetimes.session_end(state.session_started_at) <= now {
        AuthError::SessionExpired
    } else if state.expires_at <= now {
        AuthError::RefreshTokenExpired
    } else {
        // The statement and this read disagree: not expected on either backend.
        AuthError::Internal("a current refresh token failed to rotate".into())
    })
}

/// SHA-256 of a secret, as the database keeps it.
pub(super) fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Authenticator {
    /// Trades a refresh token for a new pair in the same session. A token presented again
    /// after it was traded revokes its session.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(
        &self,
        token: RefreshToken,
        client: &LoginClient,
    ) -> Result<IssuedTokens, AuthError> {
        let clock = self.lifetimes.clock(store::now());
        let presented = match self.refresh_key.open(&token)? {
            Opened::Sealed(secret) => secret,
            Opened::Legacy(legacy) => {
                let Some(found) = self.store.legacy_token(&legacy.hash()).await? else {
                    return Err(AuthError::RefreshTokenInvalid);
                };
                let presented = SessionSecret::legacy(found.session_id, legacy);
                if found.used {
                    // Traded before the upgrade: older than the session's generation 0.
                    return self.reused(presented.session_id).await;
                }
                presented
            }
        };
        let successor = match &self.grace {
            Some(grace) => grace.key.successor_of(&presented),
            None => random_secret()?,
        };
        let credential = Credential {
            session_id: presented.session_id,
            generation: presented.generation,
            secret_hash: presented.secret_hash(),
        };
        let expires_at = self.lifetimes.token_expiry(clock.now);
        let outcome = self
            .store
            .rotate(
                &credential,
                clock,
                secret_hash(&successor),
                expires_at,
                client.seen(),
            )
            .await?;
        let rotated = match outcome {
            RotationOutcome::Rotated(rotated) => rotated,
            RotationOutcome::Refused(state) => {
                let window = self.grace.as_ref().map(|grace| grace.window);
                return match judge(
                    &presented,
                    state.as_ref(),
                    clock.now,
                    self.lifetimes,
                    window,
                ) {
                    Verdict::Refuse(error) => Err(error),
                    Verdict::Reuse => self.reused(presented.session_id).await,
                    Verdict::GraceRetry => self.grace_retry(&presented, clock).await,
                };
            }
        };
        let generation = presented.generation + 1;
        audit!(event = "refresh", user_id = %rotated.user_id, session_id = %presented.session_id);
        self.issue_rotated(
            presented.session_id,
            generation,
            &successor,
            rotated,
            clock.now,
        )
    }

    /// The one retry the reuse grace allows: the presented token's successor, derived again,
    /// must still be the session's current token, issued within the window, its retry unspent.
    /// Anything else is a reuse.
    async fn grace_retry(
        &self,
        presented: &SessionSecret,
        clock: RefreshClock,
    ) -> Result<IssuedTokens, AuthError> {
        let Some(grace) = &self.grace else {
            return self.reused(presented.session_id).await;
        };
        let successor = grace.key.successor_of(presented);
        let current = Credential {
            session_id: presented.session_id,
            generation: presented.generation + 1,
            secret_hash: secret_hash(&successor),
        };
        let rotated_after = clock.now - grace.window;
        let Some(again) = self
            .store
            .retry_rotation(&current, clock, rotated_after)
            .await?
        else {
            return self.reused(presented.session_id).await;
        };
        crate::metrics::refresh_grace_retry();
        audit!(event = "refresh_retried", user_id = %again.user_id, session_id = %current.session_id);
        self.issue_rotated(
            current.session_id,
            current.generation,
            &successor,
            again,
            clock.now,
        )
    }

    /// A used token came back: revokes its session and answers REFRESH_TOKEN_REUSED.
    async fn reused(&self, session_id: Uuid) -> Result<IssuedTokens, AuthError> {
        let owner = self.revoke(session_id, RevokedReason::Reuse).await?;
        crate::metrics::refresh_token_reused();
        tracing::warn!(
            target: "audit",
            event = "refresh_token_reused",
            user_id = ?owner,
            %session_id,
            "refresh token reuse detected: session revoked"
        );
        Err(AuthError::RefreshTokenReused)
    }

    /// The pair for generation `generation` of `session_id`, whose token carries `secret`.
    fn issue_rotated(
        &self,
        session_id: Uuid,
        generation: i64,
        secret: &[u8; 32],
        rotated: Rotated,
        now: DateTime<Utc>,
    ) -> Result<IssuedTokens, AuthError> {
        let session_end = self.lifetimes.session_end(rotated.session_started_at);
        self.issue(Issued {
            user_id: rotated.user_id,
            email: &rotated.email,
            session_id,
            now,
            refresh_token: self.refresh_key.seal(session_id, generation, secret),
            refresh_expires_at: rotated.expires_at.min(session_end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RefreshKey;

    const LIFETIMES: Lifetimes = Lifetimes {
        refresh_token: TimeDelta::days(7),
        session_max: TimeDelta::days(30),
    };

    fn now() -> DateTime<Utc> {
        store::now()
    }

    /// A token of generation `generation` with `secret`, and the row of a live session whose
    /// current token is generation `current` with `current_secret`, rotated a second ago.
    fn case(
        generation: i64,
        secret: [u8; 32],
        current: i64,
        current_secret: [u8; 32],
    ) -> (SessionSecret, RefreshState) {
        let key = RefreshKey::new([3; 32]);
        let session_id = Uuid::new_v4();
        let Ok(Opened::Sealed(presented)) = key.open(&key.seal(session_id, generation, &secret))
        else {
            panic!("a sealed token opens");
        };
        let state = RefreshState {
            generation: current,
            secret_hash: secret_hash(&current_secret).to_vec(),
            rotated_at: now() - TimeDelta::seconds(1),
            expires_at: now() + TimeDelta::days(1),
            retried: false,
            session_started_at: now() - TimeDelta::days(1),
            revoked: false,
            user_disabled: false,
            user_id: Uuid::new_v4(),
        };
        (presented, state)
    }

    fn verdict(presented: &SessionSecret, state: &RefreshState, grace: Option<i64>) -> Verdict {
        let grace = grace.map(TimeDelta::seconds);
        judge(presented, Some(state), now(), LIFETIMES, grace)
    }

    #[test]
    fn any_earlier_generation_is_reuse() {
        for earlier in [0, 1, 49] {
            let (presented, state) = case(earlier, [1; 32], 50, [2; 32]);
            assert!(matches!(verdict(&presented, &state, None), Verdict::Reuse));
            // However stale, revoked or expired the session: still reuse.
            let revoked = RefreshState {
                revoked: true,
                expires_at: now() - TimeDelta::days(1),
                ..state
            };
            assert!(matches!(
                verdict(&presented, &revoked, None),
                Verdict::Reuse
            ));
        }
    }

    #[test]
    fn a_wrong_secret_or_an_unknown_session_or_generation_is_invalid() {
        let (presented, state) = case(5, [1; 32], 5, [2; 32]);
        let invalid = |v| matches!(v, Verdict::Refuse(AuthError::RefreshTokenInvalid));
        assert!(invalid(verdict(&presented, &state, Some(30))));
        let (future, state) = case(6, [1; 32], 5, [1; 32]);
        assert!(invalid(verdict(&future, &state, None)));
        assert!(invalid(judge(&presented, None, now(), LIFETIMES, None)));
    }

    #[test]
    fn the_current_token_is_refused_for_its_session_or_its_expiry() {
        let (presented, live) = case(3, [1; 32], 3, [1; 32]);
        let refused = |state: RefreshState| verdict(&presented, &state, None);
        let revoked = RefreshState {
            revoked: true,
            ..live.clone()
        };
        assert!(matches!(
            refused(revoked),
            Verdict::Refuse(AuthError::SessionRevoked)
        ));
        let disabled = RefreshState {
            user_disabled: true,
            ..live.clone()
        };
        assert!(matches!(
            refused(disabled),
            Verdict::Refuse(AuthError::SessionRevoked)
        ));
        let ended = RefreshState {
            session_started_at: now() - TimeDelta::days(31),
            ..live.clone()
        };
        assert!(matches!(
            refused(ended),
            Verdict::Refuse(AuthError::SessionExpired)
        ));
        let expired = RefreshState {
            expires_at: now(),
            ..live.clone()
        };
        assert!(matches!(
            refused(expired),
            Verdict::Refuse(AuthError::RefreshTokenExpired)
        ));
        assert!(matches!(
            refused(live),
            Verdict::Refuse(AuthError::Internal(_))
        ));
    }

    #[test]
    fn only_the_previous_token_within_the_window_and_unretried_may_retry() {
        let (previous, state) = case(4, [1; 32], 5, [2; 32]);
        assert!(matches!(
            verdict(&previous, &state, Some(30)),
            Verdict::GraceRetry
        ));
        assert!(matches!(verdict(&previous, &state, None), Verdict::Reuse));
        let spent = RefreshState {
            retried: true,
            ..state.clone()
        };
        assert!(matches!(
            verdict(&previous, &spent, Some(30)),
            Verdict::Reuse
        ));
        let late = RefreshState {
            rotated_at: now() - TimeDelta::seconds(31),
            ..state.clone()
        };
        assert!(matches!(
            verdict(&previous, &late, Some(30)),
            Verdict::Reuse
        ));
        let (older, state) = case(3, [1; 32], 5, [2; 32]);
        assert!(matches!(verdict(&older, &state, Some(30)), Verdict::Reuse));
    }
}
