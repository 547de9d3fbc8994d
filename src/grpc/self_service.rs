//! AuthService's self-service calls, authenticated by the caller's access token.

use tonic::{Request, Response};

use super::{AuthGrpc, admin::session_message, count, parse_id};
use crate::{
    auth::{AuthError, Password},
    proto::{
        ChangePasswordRequest, ChangePasswordResponse, ListMySessionsRequest,
        ListMySessionsResponse, RevokeMySessionRequest, RevokeMySessionResponse,
    },
};

impl AuthGrpc {
    pub(super) async fn own_sessions(
        &self,
        request: Request<ListMySessionsRequest>,
    ) -> Result<Response<ListMySessionsResponse>, AuthError> {
        let ListMySessionsRequest {
            access_token,
            page_size,
            page_token,
        } = request.into_inner();
        let (page, current) = self
            .auth
            .own_sessions(&access_token, page_size, &page_token)
            .await?;
        Ok(Response::new(ListMySessionsResponse {
            sessions: page
                .sessions
                .into_iter()
                .map(|session| {
                    let is_current = session.id == current;
                    session_message(session, is_current)
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    pub(super) async fn revoke_own_session(
        &self,
        request: Request<RevokeMySessionRequest>,
    ) -> Result<Response<RevokeMySessionResponse>, AuthError> {
        let RevokeMySessionRequest {
            access_token,
            session_id,
        } = request.into_inner();
        let session_id = parse_id(&session_id, "session_id")?;
        self.auth
            .revoke_own_session(&access_token, session_id)
            .await?;
        Ok(Response::new(RevokeMySessionResponse {}))
    }

    pub(super) async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, AuthError> {
        let client = self.login_client(&request, None)?;
        let ChangePasswordRequest {
            access_token,
            current_password,
            new_password,
            end_other_sessions,
        } = request.into_inner();
        let current = Password::parse(current_password)?;
        let revoked = self
            .auth
            .change_password(
                &access_token,
                current,
                new_password,
                end_other_sessions,
                client.address,
            )
            .await?;
        Ok(Response::new(ChangePasswordResponse {
            sessions_revoked: count(revoked),
        }))
    }
}
