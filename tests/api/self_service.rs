//! Self-service over the real socket: a user lists their own sessions, ends one of them, and
//! changes their password, authenticated by their own access token.

use authd::proto::{
    ChangePasswordRequest, ListMySessionsRequest, ListMySessionsResponse, LoginResponse,
    RevokeMySessionRequest,
};
use tonic::{Code, Status};

use crate::common::{
    Backend, Client, PASSWORD, TestApp, assert_refused, assert_session_revoked, refresh, validate,
};

on_both_backends!(
    a_user_lists_only_their_own_sessions_and_sees_which_is_current,
    a_user_ends_one_of_their_sessions_but_never_another_users,
    changing_the_password_checks_the_current_one_and_keeps_the_calling_session,
    changing_the_password_may_leave_the_other_sessions_alive,
);

async fn own_sessions(client: &Client, access_token: &str) -> ListMySessionsResponse {
    client
        .clone()
        .list_sessions(ListMySessionsRequest {
            access_token: access_token.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("sessions listed")
        .into_inner()
}

async fn revoke_own(client: &Client, access_token: &str, session_id: &str) -> Result<(), Status> {
    client
        .clone()
        .revoke_session(RevokeMySessionRequest {
            access_token: access_token.into(),
            session_id: session_id.into(),
        })
        .await
        .map(|_| ())
}

async fn change_password(
    client: &Client,
    session: &LoginResponse,
    current: &str,
    new: &str,
    end_other_sessions: bool,
) -> Result<u32, Status> {
    client
        .clone()
        .change_password(ChangePasswordRequest {
            access_token: session.access_token.clone(),
            current_password: current.into(),
            new_password: new.into(),
            end_other_sessions,
        })
        .await
        .map(|r| r.into_inner().sessions_revoked)
}

async fn a_user_lists_only_their_own_sessions_and_sees_which_is_current(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.user_with_session("alice@example.com").await;
    let second = app.login("alice@example.com", PASSWORD).await.unwrap();
    app.user_with_session("bob@example.com").await;

    let listed = own_sessions(&app.client, &first.access_token).await;
    let ids: Vec<(&str, bool)> = listed
        .sessions
        .iter()
        .map(|s| (s.session_id.as_str(), s.current))
        .collect();
    assert_eq!(
        ids,
        [
            (second.session_id.as_str(), false),
            (first.session_id.as_str(), true)
        ]
    );
    assert_eq!(listed.next_page_token, "");
    assert_refused(
        app.client
            .clone()
            .list_sessions(ListMySessionsRequest {
                access_token: "not-a-token".into(),
                page_size: 0,
                page_token: String::new(),
            })
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

async fn a_user_ends_one_of_their_sessions_but_never_another_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let phone = app.user_with_session("alice@example.com").await;
    let laptop = app.login("alice@example.com", PASSWORD).await.unwrap();
    let bobs = app.user_with_session("bob@example.com").await;

    assert_refused(
        revoke_own(&app.client, &phone.access_token, &bobs.session_id).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    refresh(&app.client, &bobs.refresh_token)
        .await
        .expect("bob's session is untouched");

    revoke_own(&app.client, &phone.access_token, &laptop.session_id)
        .await
        .expect("alice ends her other session");
    assert_session_revoked(&app.client, &laptop.refresh_token, &laptop.access_token).await;
    validate(&app.client, &phone.access_token)
        .await
        .expect("the calling session lives on");
}

async fn changing_the_password_checks_the_current_one_and_keeps_the_calling_session(
    backend: Backend,
) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_LOGIN_FREE_ATTEMPTS", "2"),
            ("AUTH_LOGIN_BASE_DELAY", "1m"),
        ],
    )
    .await;
    let current = app.user_with_session("alice@example.com").await;
    let other = app.login("alice@example.com", PASSWORD).await.unwrap();
    let new = "a brand new passphrase";

    assert_refused(
        change_password(&app.client, &current, "not my password", new, true).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_refused(
        change_password(&app.client, &current, PASSWORD, "short", true).await,
        Code::InvalidArgument,
        "PASSWORD_TOO_SHORT",
    );
    let ended = change_password(&app.client, &current, PASSWORD, new, true)
        .await
        .expect("password changed");
    assert_eq!(ended, 1);
    assert_session_revoked(&app.client, &other.refresh_token, &other.access_token).await;
    refresh(&app.client, &current.refresh_token)
        .await
        .expect("the calling session lives on");
    app.login("alice@example.com", new)
        .await
        .expect("the new password works");

    // Guessing the current password is throttled like a login: two free failures, then a wait.
    for guess in ["guess one", "guess two"] {
        assert_refused(
            change_password(&app.client, &current, guess, PASSWORD, false).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    assert_refused(
        change_password(&app.client, &current, new, PASSWORD, false).await,
        Code::ResourceExhausted,
        "LOGIN_THROTTLED",
    );
}

async fn changing_the_password_may_leave_the_other_sessions_alive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let current = app.user_with_session("alice@example.com").await;
    let other = app.login("alice@example.com", PASSWORD).await.unwrap();
    let new = "a brand new passphrase";
    let ended = change_password(&app.client, &current, PASSWORD, new, false)
        .await
        .expect("password changed");
    assert_eq!(ended, 0);
    refresh(&app.client, &other.refresh_token)
        .await
        .expect("the other session lives on");
    assert_refused(
        app.login("alice@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}
