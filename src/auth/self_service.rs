//! Self-service, authenticated by the user's own access token: their sessions listed, one of
//! them ended, their password changed (checked like a login, the calling session kept).

use std::net::IpAddr;

use uuid::Uuid;

use super::{AuthError, Authenticator, Email, Password, SessionPage, users::session_page};
use crate::store::{self, EndSessions, RevokedReason, UserKey};

impl Authenticator {
    /// A page of the caller's live sessions, and which one is the caller's own.
    #[tracing::instrument(skip_all)]
    pub async fn own_sessions(
        &self,
        access_token: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(SessionPage, Uuid), AuthError> {
        let caller = self.validate(access_token)?;
        let page = session_page(
            &self.store,
            caller.user_id,
            self.lifetimes.session_max,
            page_size,
            page_token,
        )
        .await?;
        Ok((page, caller.session_id))
    }

    /// Ends one of the caller's sessions. Another user's session is NOT_FOUND, exactly as a
    /// session that does not exist: the answer says nothing about other users.
    #[tracing::instrument(skip_all, fields(%session_id))]
    pub async fn revoke_own_session(
        &self,
        access_token: &str,
        session_id: Uuid,
    ) -> Result<(), AuthError> {
        let caller = self.validate(access_token)?;
        if self.store.session_owner(session_id).await? != Some(caller.user_id) {
            return Err(AuthError::SessionNotFound);
        }
        self.revoke(session_id, RevokedReason::Logout).await?;
        audit!(event = "session_revoked", user_id = %caller.user_id, %session_id, by = "self");
        Ok(())
    }

    /// Changes the caller's password, the current one checked like a login (and throttled
    /// alike). The calling session lives on; the others end if `end_other_sessions`. Returns
    /// how many ended.
    #[tracing::instrument(skip_all)]
    pub async fn change_password(
        &self,
        access_token: &str,
        current: Password,
        new_password: String,
        end_other_sessions: bool,
        client: Option<IpAddr>,
    ) -> Result<usize, AuthError> {
        let caller = self.validate(access_token)?;
        let new_password = Password::parse_new(new_password, &self.policy)?;
        let email = Email::parse(&caller.email)?;
        let _turn = self.turns.take(email.as_str()).await?;
        let (user, _) = self.check_password(&email, current, client, None).await?;
        if user.id != caller.user_id {
            // The email now belongs to another account than the token's: never change it.
            return Err(AuthError::InvalidCredentials);
        }
        let hash = self.hasher.hash(new_password).await?;
        let end = if end_other_sessions {
            EndSessions::AllBut(caller.session_id)
        } else {
            EndSessions::None
        };
        let (user_id, revoked) = self
            .store
            .set_password(UserKey::Id(caller.user_id), &hash, end)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        self.revoked.insert_all(&revoked, store::now());
        audit!(event = "password_changed", %user_id, sessions_revoked = revoked.len(), by = "self");
        Ok(revoked.len())
    }
}
