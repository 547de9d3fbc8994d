//! The AdminService over the real socket: who may call it, users created, read, disabled and
//! re-enabled, passwords set, sessions listed and ended.

use std::time::Duration;

use authd::proto::{
    Client, CreateUserRequest, DisableUserRequest, EnableUserRequest, GetUserRequest,
    ListSessionsRequest, LoginRequest, RefreshRequest, RevokeSessionRequest,
    RevokeUserSessionsRequest, SetPasswordRequest, admin_service_client::AdminServiceClient,
    get_user_request, list_sessions_request, revoke_user_sessions_request,
};
use sha2::{Digest as _, Sha256};
use tonic::{Code, Request, transport::Channel};

use crate::common::{
    self, Backend, PASSWORD, TestApp, assert_refresh_refused, assert_refused,
    assert_validate_refused, refresh, validate,
};

on_both_backends!(
    admin_calls_need_a_listed_credential_and_new_tokens_work_without_a_restart,
    a_user_created_over_grpc_logs_in_and_duplicates_and_weak_passwords_are_refused,
    sessions_are_listed_newest_first_in_stable_pages,
    revoking_a_session_ends_it_and_leaves_the_others,
    a_new_password_ends_every_session_and_disabling_is_undone_by_enabling,
    grpcurl_lists_describes_and_calls_the_admin_service,
    no_login_racing_disable_user_outlives_it,
    a_session_revoked_on_one_replica_stops_validating_on_another,
);

const TOKEN: &str = "admin-token-for-the-support-tool";

/// An authd with the AdminService on, trusting `TOKEN`, and its token file.
struct AdminApp {
    app: TestApp,
    admin: AdminServiceClient<Channel>,
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AdminApp {
    async fn spawn(backend: Backend) -> Self {
        let (dir, path) = token_file();
        let token_file = std::path::PathBuf::from(&path);
        let app = TestApp::spawn_with(backend, &[("AUTH_ADMIN_TOKEN_FILE", &path)]).await;
        let admin = AdminServiceClient::new(common::channel(app.addr).await);
        Self {
            app,
            admin,
            token_file,
            _dir: dir,
        }
    }

    fn client(&self) -> AdminServiceClient<Channel> {
        self.admin.clone()
    }
}

/// `message` with `authorization: Bearer token`.
fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn by_email(email: &str) -> GetUserRequest {
    GetUserRequest {
        user: Some(get_user_request::User::Email(email.into())),
    }
}

async fn create_user(
    admin: &mut AdminServiceClient<Channel>,
    email: &str,
    password: &str,
) -> Result<authd::proto::User, tonic::Status> {
    let request = CreateUserRequest {
        email: email.into(),
        password: password.into(),
    };
    admin
        .create_user(bearer(request, TOKEN))
        .await
        .map(|r| r.into_inner())
}

async fn list_page(
    admin: &mut AdminServiceClient<Channel>,
    email: &str,
    page_size: u32,
    page_token: &str,
) -> authd::proto::ListSessionsResponse {
    let request = ListSessionsRequest {
        user: Some(list_sessions_request::User::Email(email.into())),
        page_size,
        page_token: page_token.into(),
    };
    admin
        .list_sessions(bearer(request, TOKEN))
        .await
        .expect("sessions listed")
        .into_inner()
}

async fn admin_calls_need_a_listed_credential_and_new_tokens_work_without_a_restart(
    backend: Backend,
) {
    let server = AdminApp::spawn(backend).await;
    let mut admin = server.client();
    assert_refused(
        admin.get_user(by_email("nobody@example.com")).await,
        Code::Unauthenticated,
        "ADMIN_CREDENTIALS_MISSING",
    );
    assert_refused(
        admin
            .get_user(bearer(by_email("nobody@example.com"), "a guess"))
            .await,
        Code::PermissionDenied,
        "ADMIN_CREDENTIALS_REFUSED",
    );
    // Past the gate: an ordinary answer.
    assert_refused(
        admin
            .get_user(bearer(by_email("nobody@example.com"), TOKEN))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    // A second token, added to the file while authd runs, works at once; removed, it stops.
    let second = "a-second-admin-token";
    let both = format!("{}\n{}\n", sha256_hex(TOKEN), sha256_hex(second));
    std::fs::write(&server.token_file, both).unwrap();
    assert_refused(
        admin
            .get_user(bearer(by_email("nobody@example.com"), second))
            .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );
    std::fs::write(&server.token_file, format!("{}\n", sha256_hex(TOKEN))).unwrap();
    assert_refused(
        admin
            .get_user(bearer(by_email("nobody@example.com"), second))
            .await,
        Code::PermissionDenied,
        "ADMIN_CREDENTIALS_REFUSED",
    );
}

async fn a_user_created_over_grpc_logs_in_and_duplicates_and_weak_passwords_are_refused(
    backend: Backend,
) {
    let server = AdminApp::spawn(backend).await;
    let mut admin = server.client();
    let created = create_user(&mut admin, "Alice@Example.com", PASSWORD)
        .await
        .expect("user created");
    assert_eq!(created.email, "alice@example.com");
    assert!(created.created_at.is_some() && created.disabled_at.is_none());
    server
        .app
        .login("alice@example.com", PASSWORD)
        .await
        .expect("the new user logs in");

    assert_refused(
        create_user(&mut admin, "alice@example.com", "another long passphrase").await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    assert_refused(
        create_user(&mut admin, "bob@example.com", "short").await,
        Code::InvalidArgument,
        "PASSWORD_TOO_SHORT",
    );
    assert_refused(
        create_user(&mut admin, "not an email", PASSWORD).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    // Read back by id and by email, never with the hash.
    let by_id = GetUserRequest {
        user: Some(get_user_request::User::UserId(created.user_id.clone())),
    };
    let found = admin
        .get_user(bearer(by_id, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found, created);
    let found = admin
        .get_user(bearer(by_email("ALICE@example.com"), TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found, created);
    let unnamed = GetUserRequest { user: None };
    assert_refused(
        admin.get_user(bearer(unnamed, TOKEN)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}

async fn sessions_are_listed_newest_first_in_stable_pages(backend: Backend) {
    let server = AdminApp::spawn(backend).await;
    let mut admin = server.client();
    let app = &server.app;
    app.add_user("alice@example.com", PASSWORD).await;
    // Three devices, as the calling service describes them.
    let devices = [
        ("198.51.100.1", "phone"),
        ("2001:db8::2", "laptop"),
        ("203.0.113.3", "tablet"),
    ];
    let mut logins = Vec::new();
    for (address, user_agent) in devices {
        let request = LoginRequest {
            email: "alice@example.com".into(),
            password: PASSWORD.into(),
            client: Some(Client {
                address: address.into(),
                user_agent: user_agent.into(),
            }),
        };
        let login = app.client.clone().login(request).await.unwrap();
        logins.push(login.into_inner());
    }

    let first = list_page(&mut admin, "alice@example.com", 2, "").await;
    assert_eq!(first.sessions.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = list_page(&mut admin, "alice@example.com", 2, &first.next_page_token).await;
    assert_eq!(second.sessions.len(), 1);
    assert_eq!(second.next_page_token, "", "the last page says so");
    let listed: Vec<String> = first
        .sessions
        .iter()
        .chain(&second.sessions)
        .map(|s| s.session_id.clone())
        .collect();
    let newest_first: Vec<String> = logins.iter().rev().map(|l| l.session_id.clone()).collect();
    assert_eq!(listed, newest_first);
    let seen: Vec<(String, String)> = first
        .sessions
        .iter()
        .chain(&second.sessions)
        .map(|s| {
            let client = s.login_client.clone().expect("the login's client is kept");
            (client.address, client.user_agent)
        })
        .collect();
    let expected: Vec<(String, String)> = devices
        .iter()
        .rev()
        .map(|(address, user_agent)| (address.to_string(), user_agent.to_string()))
        .collect();
    assert_eq!(seen, expected);
    // The same page asked again is the same page.
    let again = list_page(&mut admin, "alice@example.com", 2, &first.next_page_token).await;
    assert_eq!(again, second);
    assert!(
        first
            .sessions
            .iter()
            .all(|s| s.last_refreshed_at.is_none() && !s.current)
    );

    // A refresh moves the session's last-refreshed time and records where it came from.
    let request = RefreshRequest {
        refresh_token: logins[0].refresh_token.clone(),
        client: Some(Client {
            address: "198.51.100.9".into(),
            user_agent: "phone, updated".into(),
        }),
    };
    app.client.clone().refresh(request).await.unwrap();
    let all = list_page(&mut admin, "alice@example.com", 0, "").await;
    let oldest = all.sessions.last().unwrap();
    assert_eq!(oldest.session_id, logins[0].session_id);
    assert!(oldest.last_refreshed_at.is_some());
    let refreshed_from = oldest.last_refresh_client.clone().unwrap();
    assert_eq!(
        (
            refreshed_from.address.as_str(),
            refreshed_from.user_agent.as_str()
        ),
        ("198.51.100.9", "phone, updated")
    );
    assert_eq!(
        oldest.login_client.clone().unwrap().address,
        "198.51.100.1",
        "the login's client stays"
    );
    assert!(all.sessions[0].last_refresh_client.is_none());

    // Without a stated client, the calling peer's address is shown.
    app.login("alice@example.com", PASSWORD).await.unwrap();
    let newest = list_page(&mut admin, "alice@example.com", 1, "").await;
    let peer = newest.sessions[0].login_client.clone().unwrap();
    assert_eq!(peer.address, "127.0.0.1");

    assert_refused(
        admin
            .list_sessions(bearer(
                ListSessionsRequest {
                    user: Some(list_sessions_request::User::Email(
                        "alice@example.com".into(),
                    )),
                    page_size: 0,
                    page_token: "forged".into(),
                },
                TOKEN,
            ))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}

async fn revoking_a_session_ends_it_and_leaves_the_others(backend: Backend) {
    let server = AdminApp::spawn(backend).await;
    let mut admin = server.client();
    let app = &server.app;
    let ended = app.user_with_session("alice@example.com").await;
    let kept = app.login("alice@example.com", PASSWORD).await.unwrap();

    let revoke = |session_id: &str| RevokeSessionRequest {
        session_id: session_id.into(),
    };
    admin
        .revoke_session(bearer(revoke(&ended.session_id), TOKEN))
        .await
        .expect("session revoked");
    common::assert_session_revoked(&app.client, &ended.refresh_token, &ended.access_token).await;
    validate(&app.client, &kept.access_token)
        .await
        .expect("the other session validates");
    // Idempotent; an unknown session is NOT_FOUND.
    admin
        .revoke_session(bearer(revoke(&ended.session_id), TOKEN))
        .await
        .expect("revoking again is OK");
    assert_refused(
        admin
            .revoke_session(bearer(revoke(&uuid::Uuid::new_v4().to_string()), TOKEN))
            .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let kept = refresh(&app.client, &kept.refresh_token)
        .await
        .expect("the other session refreshes");

    let all = RevokeUserSessionsRequest {
        user: Some(revoke_user_sessions_request::User::Email(
            "alice@example.com".into(),
        )),
    };
    let answer = admin
        .revoke_user_sessions(bearer(all, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.sessions_revoked, 1);
    common::assert_session_revoked(&app.client, &kept.refresh_token, &kept.access_token).await;
}

async fn a_new_password_ends_every_session_and_disabling_is_undone_by_enabling(backend: Backend) {
    let server = AdminApp::spawn(backend).await;
    let mut admin = server.client();
    let app = &server.app;
    let session = app.user_with_session("alice@example.com").await;
    let new_password = "a brand new passphrase";
    let set = SetPasswordRequest {
        user: Some(authd::proto::set_password_request::User::Email(
            "alice@example.com".into(),
        )),
        new_password: new_password.into(),
    };
    let answer = admin
        .set_password(bearer(set, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.sessions_revoked, 1);
    assert_refresh_refused(&app.client, &session.refresh_token, "SESSION_REVOKED").await;
    assert_validate_refused(&app.client, &session.access_token, "SESSION_REVOKED").await;
    assert_refused(
        app.login("alice@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let session = app.login("alice@example.com", new_password).await.unwrap();

    let disable = || DisableUserRequest {
        user: Some(authd::proto::disable_user_request::User::Email(
            "alice@example.com".into(),
        )),
    };
    let disabled = admin
        .disable_user(bearer(disable(), TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.disabled_at.is_some());
    common::assert_session_revoked(&app.client, &session.refresh_token, &session.access_token)
        .await;
    assert_refused(
        app.login("alice@example.com", new_password).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let again = admin
        .disable_user(bearer(disable(), TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.disabled_at, disabled.disabled_at, "idempotent");

    let enable = EnableUserRequest {
        user: Some(authd::proto::enable_user_request::User::UserId(
            disabled.user_id.clone(),
        )),
    };
    let enabled = admin
        .enable_user(bearer(enable, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enabled.disabled_at, None);
    app.login("alice@example.com", new_password)
        .await
        .expect("enabled again");
}

/// A token file trusting `TOKEN`, in a folder of its own.
fn token_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-tokens");
    std::fs::write(&file, format!("{}\n", sha256_hex(TOKEN))).unwrap();
    let path = file.display().to_string();
    (dir, path)
}

async fn no_login_racing_disable_user_outlives_it(backend: Backend) {
    let (_dir, path) = token_file();
    let settings = [("AUTH_ADMIN_TOKEN_FILE", path.as_str())];
    crate::sessions::no_login_racing_a_change_outlives_it(backend, &settings, async |app| {
        let request = DisableUserRequest {
            user: Some(authd::proto::disable_user_request::User::Email(
                "alice@example.com".into(),
            )),
        };
        AdminServiceClient::new(common::channel(app.addr).await)
            .disable_user(bearer(request, TOKEN))
            .await
            .expect("user disabled");
    })
    .await;
}

/// RevokeSession on one replica: the other refuses the session's access token within the
/// revocation poll, and its refresh token at once.
async fn a_session_revoked_on_one_replica_stops_validating_on_another(backend: Backend) {
    let (_dir, path) = token_file();
    let db = common::TestDatabase::create(backend).await;
    let settings = [
        ("AUTH_ADMIN_TOKEN_FILE", path.as_str()),
        ("AUTH_REVOCATION_POLL", "1s"),
    ];
    let one = common::process::AuthdProcess::spawn(&db, &settings).await;
    let two = common::process::AuthdProcess::spawn(&db, &settings).await;
    common::add_user(&db, "alice@example.com", PASSWORD).await;
    let other_replica = two.client().await;
    let session = common::login(&other_replica, "alice@example.com", PASSWORD)
        .await
        .unwrap();
    let kept = common::login(&other_replica, "alice@example.com", PASSWORD)
        .await
        .unwrap();
    validate(&other_replica, &session.access_token)
        .await
        .expect("valid before");

    let request = RevokeSessionRequest {
        session_id: session.session_id.clone(),
    };
    AdminServiceClient::new(common::channel(one.addr).await)
        .revoke_session(bearer(request, TOKEN))
        .await
        .expect("revoked on the first replica");
    common::assert_session_revoked(
        &other_replica,
        &session.refresh_token,
        &session.access_token,
    )
    .await;
    validate(&other_replica, &kept.access_token)
        .await
        .expect("the user's other session lives on");
}

/// An operator's tool: grpcurl lists and describes the AdminService, and creates a user with
/// an admin token.
async fn grpcurl_lists_describes_and_calls_the_admin_service(backend: Backend) {
    use common::process::grpcurl;
    let server = AdminApp::spawn(backend).await;
    let addr = server.app.addr.to_string();
    let (ok, listed, errors) = grpcurl(&[&addr, "list"]).await;
    assert!(ok, "grpcurl list: {errors}");
    assert!(
        listed.lines().any(|l| l == "auth.v1.AdminService"),
        "{listed}"
    );
    let (ok, described, errors) = grpcurl(&[&addr, "describe", "auth.v1.AdminService"]).await;
    assert!(ok, "grpcurl describe: {errors}");
    assert!(described.contains("rpc CreateUser"), "{described}");

    let body = format!(r#"{{"email": "ops@example.com", "password": "{PASSWORD}"}}"#);
    let authorization = format!("authorization: Bearer {TOKEN}");
    let create = [
        "-H",
        &authorization,
        "-d",
        &body,
        &addr,
        "auth.v1.AdminService/CreateUser",
    ];
    let (ok, created, errors) = grpcurl(&create).await;
    assert!(ok, "grpcurl CreateUser: {errors}");
    assert!(
        created.contains(r#""email": "ops@example.com""#),
        "{created}"
    );
    let (ok, _, errors) = grpcurl(&create[2..]).await;
    assert!(!ok, "a call without the token is refused");
    assert!(
        errors.contains(r#""reason":"ADMIN_CREDENTIALS_MISSING""#),
        "{errors}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_service_is_off_unless_configured() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut admin = AdminServiceClient::new(common::channel(app.addr).await);
    let status = admin
        .get_user(bearer(by_email("alice@example.com"), TOKEN))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refused_tokens_are_throttled() {
    let server = AdminApp::spawn(Backend::Sqlite).await;
    let mut admin = server.client();
    let throttled = common::eventually(Duration::from_secs(10), "a throttled guess", || {
        let mut admin = admin.clone();
        async move {
            let status = admin
                .get_user(bearer(by_email("nobody@example.com"), "a guess"))
                .await
                .unwrap_err();
            if status.code() == Code::ResourceExhausted {
                return Some(status);
            }
            common::assert_status(&status, Code::PermissionDenied, "ADMIN_CREDENTIALS_REFUSED");
            None
        }
    })
    .await;
    common::assert_status(&throttled, Code::ResourceExhausted, "ADMIN_THROTTLED");
    // The right token from the same address waits too: guessing buys nothing.
    assert_refused(
        admin
            .get_user(bearer(by_email("nobody@example.com"), TOKEN))
            .await,
        Code::ResourceExhausted,
        "ADMIN_THROTTLED",
    );
}
