//! Browsers: a real headless Chromium logs in through gRPC-Web, refreshes with nothing but its
//! HttpOnly cookie, and logs out. Page scripts never see the refresh token.

use crate::common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use authd::proto::{LoginResponse, RefreshResponse};
use axum::{Json, Router, response::Html, routing::get, routing::post};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{
    Backend, PASSWORD, TestApp, assert_status, eventually, http_exchange, login, validate,
};
use prost::Message as _;
use tokio::{net::TcpListener, sync::mpsc};
use tonic::Code;

on_both_backends!(
    a_browser_refreshes_with_its_http_only_cookie_and_never_sees_the_token,
    grpc_web_answers_set_the_cookie_with_its_attributes,
);

const PAGE: &str = include_str!("../assets/grpc_web_page.html");
const EMAIL: &str = "browser@example.com";

/// Debian's Chromium (`.ci/run` installs it); `AUTHD_TEST_CHROMIUM` names another.
fn chromium() -> PathBuf {
    let path = std::env::var_os("AUTHD_TEST_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium (bash .ci/run does) or set AUTHD_TEST_CHROMIUM",
        path.display()
    );
    path
}

/// What the page saw, step by step; `status` is the gRPC code, `message` the base64 protobuf.
#[derive(Debug, serde::Deserialize)]
struct Report {
    error: Option<String>,
    login: Option<Answer>,
    cookie_after_login: Option<String>,
    refresh: Option<Answer>,
    cookie_after_refresh: Option<String>,
    logout: Option<Answer>,
    refresh_after_logout: Option<Answer>,
}

#[derive(Debug, serde::Deserialize)]
struct Answer {
    status: i32,
    message: Option<String>,
}

impl Answer {
    fn ok<M: prost::Message + Default>(&self) -> M {
        assert_eq!(self.status, 0, "call failed: {self:?}");
        let bytes = STANDARD.decode(self.message.as_deref().unwrap()).unwrap();
        M::decode(bytes.as_slice()).unwrap()
    }
}

async fn a_browser_refreshes_with_its_http_only_cookie_and_never_sees_the_token(backend: Backend) {
    // The page comes from its own origin, as a web front end's would: every call is
    // cross-origin and needs AUTH_CORS_ORIGINS.
    let pages = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://localhost:{}", pages.local_addr().unwrap().port());
    let app = TestApp::spawn_with(backend, &[("AUTH_CORS_ORIGINS", &page_origin)]).await;
    app.add_user(EMAIL, PASSWORD).await;

    let (reports, mut report) = mpsc::channel::<Report>(1);
    let site = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/report",
            post(move |Json(body): Json<Report>| async move {
                let _ = reports.send(body).await;
            }),
        );
    tokio::spawn(async move { axum::serve(pages, site).await });

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{page_origin}/?authd=http://localhost:{}", app.addr.port());
    let mut browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Killed at the end, Chromium cannot remove its singleton folder: keep it in here.
        .env("TMPDIR", profile.path())
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let report = tokio::time::timeout(Duration::from_secs(60), report.recv())
        .await
        .expect("the page reports within a minute")
        .unwrap();
    // Done with the browser. Its helper processes outlive it for a moment and would leave
    // files behind in a profile removed at once; remove it once they have let go.
    browser.kill().await.unwrap();
    let profile = profile.keep();
    eventually(
        Duration::from_secs(10),
        "the browser profile removed",
        || async { std::fs::remove_dir_all(&profile).is_ok().then_some(()) },
    )
    .await;
    assert_eq!(report.error, None, "the page failed: {report:?}");

    let logged_in: LoginResponse = report.login.as_ref().unwrap().ok();
    assert!(!logged_in.access_token.is_empty());
    assert_eq!(
        logged_in.refresh_token, "",
        "refresh token in a body a script reads"
    );
    assert!(logged_in.refresh_expires_in > 0);
    let refreshed: RefreshResponse = report.refresh.as_ref().unwrap().ok();
    assert_eq!(
        refreshed.refresh_token, "",
        "refresh token in a body a script reads"
    );
    assert_eq!(refreshed.session_id, logged_in.session_id);
    for cookies in [&report.cookie_after_login, &report.cookie_after_refresh] {
        let cookies = cookies.as_deref().unwrap();
        assert!(
            !cookies.contains("authd_refresh"),
            "document.cookie shows the refresh cookie: {cookies}"
        );
    }
    assert_eq!(report.logout.as_ref().unwrap().status, 0);
    let after_logout = report.refresh_after_logout.as_ref().unwrap().status;
    assert_ne!(after_logout, 0, "a refresh after logout succeeded");

    // The session is revoked on the server, not just forgotten by the browser.
    let status = eventually(Duration::from_secs(2), "the revocation", || async {
        validate(&app.client, &refreshed.access_token).await.err()
    })
    .await;
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
}

/// One gRPC-Web call over raw HTTP/1.1: the response head and the data frame's message.
async fn grpc_web_call(
    app: &TestApp,
    method: &str,
    message: &[u8],
    cookie: Option<&str>,
) -> (String, Vec<u8>) {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    let cookie = cookie.map_or_else(String::new, |c| format!("Cookie: {c}\r\n"));
    let mut request = format!(
        "POST /auth.v1.AuthService/{method} HTTP/1.1\r\nHost: {}\r\nContent-Type: \
         application/grpc-web+proto\r\nContent-Length: {}\r\n{cookie}Connection: close\r\n\r\n",
        app.addr,
        frame.len()
    )
    .into_bytes();
    request.extend_from_slice(&frame);
    let (head, body) = http_exchange(app.addr, &request).await;
    // A trailers-only answer (an error) has no frames; otherwise the data frame comes first.
    let message = match body.first() {
        Some(0) => {
            let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            body[5..5 + length].to_vec()
        }
        _ => Vec::new(),
    };
    (head, message)
}

/// The value of the one `Set-Cookie` header in `head`.
fn set_cookie(head: &str) -> String {
    let cookies: Vec<_> = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, value)| value.trim().to_owned())
        .collect();
    assert_eq!(cookies.len(), 1, "{head}");
    cookies[0].clone()
}

async fn grpc_web_answers_set_the_cookie_with_its_attributes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user(EMAIL, PASSWORD).await;
    let request = authd::proto::LoginRequest {
        email: EMAIL.into(),
        password: PASSWORD.into(),
        client: None,
    };
    let (head, message) = grpc_web_call(&app, "Login", &request.encode_to_vec(), None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let logged_in = LoginResponse::decode(message.as_slice()).unwrap();
    assert_eq!(logged_in.refresh_token, "");
    let cookie = set_cookie(&head);
    let max_age = app.config.sessions.refresh_token_ttl.as_secs();
    let (pair, attributes) = cookie.split_once("; ").unwrap();
    assert_eq!(
        attributes,
        format!("Max-Age={max_age}; Path=/; HttpOnly; Secure; SameSite=Strict")
    );
    let token = pair.strip_prefix("__Host-authd_refresh=").unwrap();

    // The cookie refreshes like the token in a body would, and is rotated.
    let cookie = format!("theme=dark; __Host-authd_refresh={token}");
    let (head, message) = grpc_web_call(&app, "Refresh", &[], Some(&cookie)).await;
    assert_eq!(
        RefreshResponse::decode(message.as_slice())
            .unwrap()
            .refresh_token,
        ""
    );
    let rotated = set_cookie(&head);
    assert!(!rotated.contains(token), "the cookie was not rotated");

    // Presenting the old cookie again is reuse: refused, and the cookie is deleted.
    let (head, _) = grpc_web_call(&app, "Refresh", &[], Some(&cookie)).await;
    assert!(head.contains("grpc-status: 16"), "{head}");
    assert!(set_cookie(&head).starts_with("__Host-authd_refresh=; Max-Age=0;"));

    // Logout deletes the cookie; a native client still gets its token in the body.
    let (head, _) = grpc_web_call(&app, "Logout", &[], Some(&cookie)).await;
    assert!(set_cookie(&head).starts_with("__Host-authd_refresh=; Max-Age=0;"));
    let native = login(&app.client, EMAIL, PASSWORD).await.unwrap();
    assert_eq!(native.refresh_token.len(), 119);
}
