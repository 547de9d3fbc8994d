//! The `auth.v1.AdminService` transport: every call passes the admin gate first (client
//! certificate or bearer token), then runs through the same user administration as the CLI.

use std::sync::Arc;

use tonic::{Request, Response, Status, transport::server::TlsConnectInfo};

use super::{answer, count, parse_id, timestamp, uuid_text};
use crate::{
    auth::{AdminAccess, AdminCaller, AdminCredentials, AuthError, Email, UserAdmin, UserRef},
    listener::ConnectionInfo,
    proto::{
        Client, CreateUserRequest, DisableUserRequest, EnableUserRequest, GetUserRequest,
        ListSessionsRequest, ListSessionsResponse, RevokeSessionRequest, RevokeSessionResponse,
        RevokeUserSessionsRequest, RevokeUserSessionsResponse, Session, SetPasswordRequest,
        SetPasswordResponse, User, admin_service_server::AdminService,
    },
    store::{ClientSeen, SessionRecord, UserRecord},
};

/// The `auth.v1.AdminService` implementation.
#[derive(Debug, Clone)]
pub struct AdminGrpc {
    access: Arc<AdminAccess>,
    admin: Arc<UserAdmin>,
}

impl AdminGrpc {
    /// Serves `admin` to the callers `access` admits.
    pub fn new(access: Arc<AdminAccess>, admin: Arc<UserAdmin>) -> Self {
        Self { access, admin }
    }

    /// Who is calling, if they may.
    fn caller<T>(&self, request: &Request<T>) -> Result<AdminCaller, AuthError> {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let credentials = AdminCredentials {
            bearer,
            certificate_names: certificate_names(request),
            peer: ConnectionInfo::peer_of(request.extensions()).map(|peer| peer.ip()),
        };
        self.access.authorize(&credentials)
    }
}

/// The DNS and URI subject alternative names of the caller's verified client certificate.
fn certificate_names<T>(request: &Request<T>) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer as _};
    let Some(certificates) = request
        .extensions()
        .get::<TlsConnectInfo<ConnectionInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
    else {
        return Vec::new();
    };
    let Some(Ok((_, certificate))) = certificates
        .first()
        .map(|der| x509_parser::certificate::X509Certificate::from_der(der))
    else {
        return Vec::new();
    };
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The user a request names by `user_id` or `email`.
fn user_ref(user_id: Option<&str>, email: Option<&str>) -> Result<UserRef, AuthError> {
    match (user_id, email) {
        (Some(id), _) => Ok(UserRef::Id(parse_id(id, "user_id")?)),
        (None, Some(email)) => Ok(UserRef::Email(Email::parse(email)?)),
        (None, None) => Err(AuthError::InvalidArgument {
            field: "user",
            problem: "name the user by user_id or email",
        }),
    }
}

/// The oneof `user` of each request, as (`user_id`, `email`).
macro_rules! named_user {
    ($user:expr, $module:ident) => {
        match &$user {
            Some(crate::proto::$module::User::UserId(id)) => user_ref(Some(id), None),
            Some(crate::proto::$module::User::Email(email)) => user_ref(None, Some(email)),
            None => user_ref(None, None),
        }
    };
}

fn user_message(user: UserRecord) -> User {
    User {
        user_id: uuid_text(user.id),
        email: user.email,
        created_at: Some(timestamp(user.created_at.timestamp())),
        disabled_at: user.disabled_at.map(|at| timestamp(at.timestamp())),
    }
}

/// A session as the API shows it.
pub(super) fn session_message(session: SessionRecord, current: bool) -> Session {
    Session {
        session_id: uuid_text(session.id),
        created_at: Some(timestamp(session.created_at.timestamp())),
        last_refreshed_at: session
            .last_refreshed_at
            .map(|at| timestamp(at.timestamp())),
        expires_at: Some(timestamp(session.expires_at.timestamp())),
        current,
        login_client: client_message(session.login_client),
        last_refresh_client: client_message(session.last_refresh_client),
    }
}

/// A client as stored; none if nothing was.
fn client_message(client: ClientSeen) -> Option<Client> {
    (client.address.is_some() || client.user_agent.is_some()).then(|| Client {
        address: client.address.unwrap_or_default(),
        user_agent: client.user_agent.unwrap_or_default(),
    })
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let CreateUserRequest { email, password } = request.into_inner();
            let email = Email::parse(&email)?;
            let user = self.admin.create_user(email, password, &caller.0).await?;
            Ok(Response::new(user_message(user)))
        })
        .await
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let user = named_user!(request.get_ref().user, get_user_request)?;
            let user = self.admin.user(&user).await?;
            tracing::info!(target: "audit", event = "user_read", user_id = %user.id, by = caller.0);
            Ok(Response::new(user_message(user)))
        })
        .await
    }

    async fn set_password(
        &self,
        request: Request<SetPasswordRequest>,
    ) -> Result<Response<SetPasswordResponse>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let user = named_user!(request.get_ref().user, set_password_request)?;
            let password = request.into_inner().new_password;
            let revoked = self.admin.set_password(&user, password, &caller.0).await?;
            Ok(Response::new(SetPasswordResponse {
                sessions_revoked: count(revoked),
            }))
        })
        .await
    }

    async fn disable_user(
        &self,
        request: Request<DisableUserRequest>,
    ) -> Result<Response<User>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let user = named_user!(request.get_ref().user, disable_user_request)?;
            let user = self.admin.disable_user(&user, &caller.0).await?;
            Ok(Response::new(user_message(user)))
        })
        .await
    }

    async fn enable_user(
        &self,
        request: Request<EnableUserRequest>,
    ) -> Result<Response<User>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let user = named_user!(request.get_ref().user, enable_user_request)?;
            let user = self.admin.enable_user(&user, &caller.0).await?;
            Ok(Response::new(user_message(user)))
        })
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let user = named_user!(request.get_ref().user, list_sessions_request)?;
            tracing::info!(target: "audit", event = "sessions_listed", user = ?user, by = caller.0);
            let ListSessionsRequest {
                page_size,
                page_token,
                ..
            } = request.into_inner();
            let page = self
                .admin
                .list_sessions(&user, page_size, &page_token)
                .await?;
            Ok(Response::new(ListSessionsResponse {
                sessions: page
                    .sessions
                    .into_iter()
                    .map(|session| session_message(session, false))
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        })
        .await
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let session_id = parse_id(&request.get_ref().session_id, "session_id")?;
            self.admin.revoke_session(session_id, &caller.0).await?;
            Ok(Response::new(RevokeSessionResponse {}))
        })
        .await
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsResponse>, Status> {
        answer(async {
            let caller = self.caller(&request)?;
            let user = named_user!(request.get_ref().user, revoke_user_sessions_request)?;
            let revoked = self.admin.revoke_user_sessions(&user, &caller.0).await?;
            Ok(Response::new(RevokeUserSessionsResponse {
                sessions_revoked: count(revoked),
            }))
        })
        .await
    }
}
