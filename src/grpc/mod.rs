//! Transport only: proto messages in, domain calls, proto messages or a `Status` out.

pub mod admin;
pub mod browser;
mod client_address;
pub mod codec;
mod feed;
pub mod limits;
pub mod observe;
mod self_service;
mod status;

use std::{future::Future, sync::Arc};

use tonic::{Code, Request, Response, Status};

use self::browser::{RefreshCookie, is_browser_call};
use crate::{
    auth::{
        AuthError, Authenticator, Email, IssuedTokens, LoginClient, Password, RefreshToken,
        RevocationFeed,
    },
    config::ClientAddressRule,
    listener::ConnectionInfo,
    proto::{
        ChangePasswordRequest, ChangePasswordResponse, Client, ListMySessionsRequest,
        ListMySessionsResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse,
        RefreshRequest, RefreshResponse, RevokeMySessionRequest, RevokeMySessionResponse,
        ValidateRequest, ValidateResponse, WatchRevocationsRequest,
        auth_service_server::AuthService,
    },
};

/// The `auth.v1.AuthService` implementation.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    auth: Arc<Authenticator>,
    feed: RevocationFeed,
    client_address: ClientAddressRule,
    cookie: RefreshCookie,
}

impl AuthGrpc {
    /// Serves `auth` and its revocation `feed` over gRPC; a Login without a `client` address
    /// takes its address by `client_address`. Browsers (gRPC-Web) get their refresh token in
    /// `cookie` instead of the response body.
    pub fn new(
        auth: Arc<Authenticator>,
        feed: RevocationFeed,
        client_address: ClientAddressRule,
        cookie: RefreshCookie,
    ) -> Self {
        Self {
            auth,
            feed,
            client_address,
            cookie,
        }
    }

    /// The refresh token of a Refresh or Logout: the body's field, or for a browser with an
    /// empty field, its cookie.
    fn presented_refresh_token<T>(&self, request: &Request<T>, in_body: String) -> String {
        if in_body.is_empty() && is_browser_call(request) {
            self.cookie.read(request).unwrap_or_default()
        } else {
            in_body
        }
    }

    /// Login's and Refresh's answer: natively the tokens in the body; for a browser the
    /// refresh token only in an HttpOnly cookie, never where a script could read it.
    fn tokens_response<M: FromIssuedTokens>(
        &self,
        tokens: IssuedTokens,
        browser: bool,
    ) -> Result<Response<M>, AuthError> {
        if !browser {
            return Ok(Response::new(M::from_issued(tokens, true)));
        }
        let cookie = self
            .cookie
            .set(tokens.refresh_token.expose(), tokens.refresh_token_ttl)
            .map_err(|e| AuthError::Internal(Box::new(e)))?;
        let mut response = Response::new(M::from_issued(tokens, false));
        response.metadata_mut().insert("set-cookie", cookie);
        Ok(response)
    }

    /// Adds a `Set-Cookie` that deletes the browser's refresh cookie.
    fn clear_cookie(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Ok(clear) = self.cookie.clear() {
            metadata.insert("set-cookie", clear);
        }
    }

    /// The end user behind a Login: its `client` field, and where that states no address,
    /// the address `x-forwarded-for` or the peer give by the configured rule.
    fn login_client<T>(
        &self,
        request: &Request<T>,
        stated: Option<Client>,
    ) -> Result<LoginClient, AuthError> {
        let Client {
            address,
            user_agent,
        } = stated.unwrap_or_default();
        let peer = ConnectionInfo::peer_of(request.extensions());
        let address = match client_address::stated_address(&address)? {
            Some(address) => Some(address),
            None => client_address::unstated_address(self.client_address, request.metadata(), peer),
        };
        Ok(LoginClient {
            address,
            user_agent: client_address::user_agent(user_agent)?,
            peer: peer.map(|peer| peer.ip()),
        })
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    type WatchRevocationsStream = feed::FeedStream;

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        answer(async { Ok(Response::new(feed::watch(&self.feed, &request)?)) }).await
    }

    async fn list_sessions(
        &self,
        request: Request<ListMySessionsRequest>,
    ) -> Result<Response<ListMySessionsResponse>, Status> {
        answer(self.own_sessions(request)).await
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeMySessionRequest>,
    ) -> Result<Response<RevokeMySessionResponse>, Status> {
        answer(self.revoke_own_session(request)).await
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        answer(AuthGrpc::change_password(self, request)).await
    }

    async fn login(
        &self,
        mut request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        answer(async {
            let browser = is_browser_call(&request);
            let stated = request.get_mut().client.take();
            let client = self.login_client(&request, stated)?;
            let LoginRequest {
                email, password, ..
            } = request.into_inner();
            let email = Email::parse(&email)?;
            let password = Password::parse(password)?;
            let tokens = self.auth.login(email, password, client).await?;
            self.tokens_response(tokens, browser)
        })
        .await
    }

    async fn refresh(
        &self,
        mut request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let browser = is_browser_call(&request);
        let refused = answer(async {
            let in_body = std::mem::take(&mut request.get_mut().refresh_token);
            let stated = request.get_mut().client.take();
            let client = self.login_client(&request, stated)?;
            let token = RefreshToken::parse(self.presented_refresh_token(&request, in_body))?;
            let tokens = self.auth.refresh(token, &client).await?;
            self.tokens_response(tokens, browser)
        })
        .await;
        // A browser's cookie that no longer refreshes is deleted, so it is not sent again.
        refused.map_err(|mut status| {
            if browser && status.code() == Code::Unauthenticated {
                self.clear_cookie(status.metadata_mut());
            }
            status
        })
    }

    async fn logout(
        &self,
        mut request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        answer(async {
            let browser = is_browser_call(&request);
            let all_sessions = request.get_ref().all_sessions;
            let in_body = std::mem::take(&mut request.get_mut().refresh_token);
            let token = RefreshToken::parse(self.presented_refresh_token(&request, in_body));
            self.auth.logout(token, all_sessions).await?;
            let mut response = Response::new(LogoutResponse {});
            if browser {
                self.clear_cookie(response.metadata_mut());
            }
            Ok(response)
        })
        .await
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        answer(async {
            let token = self.auth.validate(&request.get_ref().access_token)?;
            Ok(Response::new(ValidateResponse {
                user_id: uuid_text(token.user_id),
                email: token.email.into(),
                session_id: uuid_text(token.session_id),
                issued_at: Some(timestamp(token.issued_at)),
                expires_at: Some(timestamp(token.expires_at)),
            }))
        })
        .await
    }
}

/// Login's and Refresh's response messages, built from issued tokens.
trait FromIssuedTokens {
    /// The message; its `refresh_token` is empty unless `refresh_token_in_body`.
    fn from_issued(tokens: IssuedTokens, refresh_token_in_body: bool) -> Self;
}

/// Login and Refresh answer the same fields in two message types.
macro_rules! impl_from_issued_tokens {
    ($($response:ty),+) => {$(
        impl FromIssuedTokens for $response {
            fn from_issued(tokens: IssuedTokens, refresh_token_in_body: bool) -> Self {
                Self {
                    access_token: tokens.access_token,
                    token_type: "Bearer".to_owned(),
                    expires_in: seconds(tokens.access_token_ttl),
                    refresh_token: if refresh_token_in_body {
                        tokens.refresh_token.expose().to_owned()
                    } else {
                        String::new()
                    },
                    refresh_expires_in: seconds(tokens.refresh_token_ttl),
                    session_id: tokens.session_id.to_string(),
                }
            }
        }
    )+};
}
impl_from_issued_tokens!(LoginResponse, RefreshResponse);

fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// A count for a `uint32` response field.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A UUID request field.
fn parse_id(text: &str, field: &'static str) -> Result<uuid::Uuid, AuthError> {
    uuid::Uuid::try_parse(text).map_err(|_| AuthError::InvalidArgument {
        field,
        problem: "must be a UUID",
    })
}

/// A UUID in its hyphenated lower-case form, without the formatting machinery of `to_string`
/// (Validate's hot path).
pub(super) fn uuid_text(id: uuid::Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// A time to the microsecond.
pub(super) fn instant(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub(super) fn timestamp(unix_seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_seconds,
        nanos: 0,
    }
}

/// Runs one call and maps its error to the status the client sees (`observe` logs, counts
/// and traces it).
pub(super) async fn answer<T>(
    call: impl Future<Output = Result<Response<T>, AuthError>>,
) -> Result<Response<T>, Status> {
    call.await.map_err(Status::from)
}
