//! Shared test support: a real authd per test on a free loopback port, a fresh database per
//! test on SQLite or PostgreSQL, and a real tonic client. Logs only with `TEST_LOG=1`.
#![allow(unreachable_pub)]

pub mod postgres;
pub mod process;
pub mod rows;

use std::{net::SocketAddr, path::PathBuf, sync::Once, time::Duration};

use authd::{
    auth::{Email, PasswordHasher, UserAdmin, UserRef},
    config::Config,
    proto::{
        LoginRequest, LoginResponse, LogoutRequest, RefreshRequest, RefreshResponse,
        ValidateRequest, ValidateResponse, auth_service_client::AuthServiceClient,
    },
    server::{self, Application},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt as _;

pub use postgres::TestDatabase;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Backend)` of the calling module as two tests, one per backend:
/// `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Backend::Sqlite).await
            })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Backend::Postgres).await
            })+
        }
    };
}

/// The password every test user gets unless a test says otherwise.
pub const PASSWORD: &str = "correct horse battery staple";

/// Cheap argon2 settings for tests; one test keeps the production ones.
pub const FAST_ARGON2: [(&str, &str); 2] = [
    ("AUTH_ARGON2_MEMORY_KIB", "256"),
    ("AUTH_ARGON2_ITERATIONS", "1"),
];

pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("info,authd=debug")
                .with_test_writer()
                .init();
        }
    });
}

/// The settings of a test server: loopback port 0, the test's database, fast argon2, and
/// whatever the test adds (later pairs win).
pub fn settings(db: &TestDatabase, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars = vec![
        ("AUTH_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("AUTH_HTTP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("AUTH_DATABASE_URL".to_owned(), db.url().to_owned()),
    ];
    if let Some(key) = db.key_file() {
        for (variable, file) in [
            ("AUTH_SIGNING_KEY_FILE", "signing_key.pem"),
            ("AUTH_REFRESH_KEY_FILE", "refresh_key.pem"),
            ("AUTH_REFRESH_GRACE_KEY_FILE", "refresh_grace_key.pem"),
        ] {
            let path = key.with_file_name(file);
            vars.push((variable.to_owned(), path.display().to_string()));
        }
    }
    vars.extend(
        FAST_ARGON2
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    vars
}

/// A running in-process authd with its database and a connected client.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/.well-known/jwks.json` is served.
    pub http_addr: SocketAddr,
    pub client: AuthServiceClient<Channel>,
    pub config: Config,
    pub db: TestDatabase,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// A server on a fresh database of `backend` with default settings.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// A server on a fresh database of `backend`, with extra settings.
    pub async fn spawn_with(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create(backend).await;
        Self::spawn_on(db, extra).await
    }

    /// A server on an existing test database (to restart on the same data).
    pub async fn spawn_on(db: TestDatabase, extra: &[(&str, &str)]) -> Self {
        init_logs();
        let config = Config::from_vars(settings(&db, extra)).expect("test settings are valid");
        let app = Application::build(config.clone())
            .await
            .expect("server starts");
        let addr = app.local_addr().expect("bound address");
        let http_addr = app.http_addr().expect("bound HTTP address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = signal.await;
        }));
        let client = connect(addr).await;
        Self {
            addr,
            http_addr,
            client,
            config,
            db,
            shutdown,
            server,
        }
    }

    /// Shuts the server down gracefully and hands back its database.
    pub async fn stop(self) -> TestDatabase {
        let _ = self.shutdown.send(());
        self.server
            .await
            .expect("server task")
            .expect("server stops cleanly");
        self.db
    }

    /// Adds a user directly through the domain, as `authd user add` would.
    pub async fn add_user(&self, email: &str, password: &str) {
        add_user_on(&self.config, email, password).await;
    }

    /// Disables a user directly through the domain, as `authd user disable` would.
    pub async fn disable_user(&self, email: &str) {
        let user = UserRef::Email(Email::parse(email).unwrap());
        user_admin(&self.config)
            .await
            .disable_user(&user, "test")
            .await
            .expect("user disabled");
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<LoginResponse, Status> {
        login(&self.client, email, password).await
    }

    /// Adds `email` with [`PASSWORD`] and logs in.
    pub async fn user_with_session(&self, email: &str) -> LoginResponse {
        self.add_user(email, PASSWORD).await;
        self.login(email, PASSWORD).await.expect("login succeeds")
    }
}

async fn user_admin(config: &Config) -> UserAdmin {
    let store = server::connect_and_migrate(&config.database)
        .await
        .expect("store");
    let hasher = PasswordHasher::new(config.login.argon2, 1, 1).expect("hasher");
    UserAdmin::new(store, hasher, config.login.password_policy)
}

/// Adds a user to a test database, as `authd user add` would, hashing at test cost.
pub async fn add_user(db: &TestDatabase, email: &str, password: &str) {
    add_user_with(db, &[], email, password).await;
}

/// Adds a user with the argon2 cost (and other settings) of `extra`.
pub async fn add_user_with(db: &TestDatabase, extra: &[(&str, &str)], email: &str, password: &str) {
    let config = Config::from_vars(settings(db, extra)).expect("test settings are valid");
    add_user_on(&config, email, password).await;
}

/// Adds a user to the database of `config`, hashing with its argon2 cost.
async fn add_user_on(config: &Config, email: &str, password: &str) {
    user_admin(config)
        .await
        .create_user(Email::parse(email).unwrap(), password.into(), "test")
        .await
        .expect("user added");
}

pub async fn login(client: &Client, email: &str, password: &str) -> Result<LoginResponse, Status> {
    client
        .clone()
        .login(LoginRequest {
            email: email.into(),
            password: password.into(),
            client: None,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn refresh(client: &Client, refresh_token: &str) -> Result<RefreshResponse, Status> {
    client
        .clone()
        .refresh(RefreshRequest {
            refresh_token: refresh_token.into(),
            client: None,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn logout(
    client: &Client,
    refresh_token: &str,
    all_sessions: bool,
) -> Result<(), Status> {
    client
        .clone()
        .logout(LogoutRequest {
            refresh_token: refresh_token.into(),
            all_sessions,
        })
        .await
        .map(|_| ())
}

pub async fn validate(client: &Client, access_token: &str) -> Result<ValidateResponse, Status> {
    client
        .clone()
        .validate(ValidateRequest {
            access_token: access_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Asserts that a session's tokens no longer work: Refresh answers SESSION_REVOKED at once and
/// Validate within two revocation polls (a revocation made elsewhere reaches it by polling).
pub async fn assert_session_revoked(client: &Client, refresh_token: &str, access_token: &str) {
    assert_refresh_refused(client, refresh_token, "SESSION_REVOKED").await;
    let status = eventually(
        Duration::from_secs(2),
        "Validate to see the revocation",
        || async { validate(client, access_token).await.err() },
    )
    .await;
    assert_status(&status, Code::Unauthenticated, "SESSION_REVOKED");
}

/// Asserts that `used`, a refresh token already traded, is refused as a reuse and that the reuse
/// revoked its session: the session's newest tokens stop working too.
pub async fn assert_reuse_revokes_session(
    client: &Client,
    used: &str,
    newest_refresh_token: &str,
    newest_access_token: &str,
) {
    assert_refresh_refused(client, used, "REFRESH_TOKEN_REUSED").await;
    assert_session_revoked(client, newest_refresh_token, newest_access_token).await;
}

/// The health status the server reports for `service` ("" for the whole server).
pub async fn health(addr: SocketAddr, service: &str) -> Result<ServingStatus, Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid URI")
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
}

/// Polls until both "" and `auth.v1.AuthService` report `wanted`.
pub async fn wait_for_health(addr: SocketAddr, wanted: ServingStatus, deadline: Duration) {
    eventually(deadline, &format!("health {wanted:?}"), || async {
        for service in ["", "auth.v1.AuthService"] {
            if health(addr, service).await.ok()? != wanted {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The generated client over a tonic channel.
pub type Client = AuthServiceClient<Channel>;

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid URI")
        .connect_timeout(Duration::from_secs(5))
        // A call that hangs fails, naming itself, long before the test's own time runs out.
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .expect("client connects")
}

pub async fn connect(addr: SocketAddr) -> Client {
    AuthServiceClient::new(channel(addr).await)
}

/// Asserts a status's code and its ErrorInfo reason (domain `authd`).
#[track_caller]
pub fn assert_status(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "authd");
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
}

/// Asserts that a call was refused with `code` and ErrorInfo `reason`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, reason: &str) {
    match result {
        Ok(answer) => panic!("expected {code:?} {reason}, got {answer:?}"),
        Err(status) => assert_status(&status, code, reason),
    }
}

/// Asserts that Refresh refuses `refresh_token` as UNAUTHENTICATED with `reason`.
pub async fn assert_refresh_refused(client: &Client, refresh_token: &str, reason: &str) {
    assert_refused(
        refresh(client, refresh_token).await,
        Code::Unauthenticated,
        reason,
    );
}

/// Asserts that Validate refuses `access_token` as UNAUTHENTICATED with `reason`.
pub async fn assert_validate_refused(client: &Client, access_token: &str, reason: &str) {
    assert_refused(
        validate(client, access_token).await,
        Code::Unauthenticated,
        reason,
    );
}

/// The value of one metric line (its name and labels, as scraped) at `GET /metrics` of
/// `http`; `None` before it was first recorded.
pub async fn metric(http: SocketAddr, line: &str) -> Option<f64> {
    let (_, scrape) = http_get(http, "/metrics").await;
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The authd binary built for this test run.
pub fn authd_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_authd"))
}

/// `GET path` over plain HTTP/1.1: the response head and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (head, body) = http_exchange(addr, request.as_bytes()).await;
    (head, String::from_utf8(body).expect("a text body"))
}

/// Sends one raw HTTP/1.1 request (it must say `Connection: close`) and returns the response
/// head and its body, de-chunked.
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8(response[..split].to_vec()).expect("an ASCII head");
    let body = &response[split + 4..];
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (head, body)
}

fn dechunk(mut chunks: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = chunks.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = std::str::from_utf8(&chunks[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        let data = line_end + 2;
        body.extend_from_slice(&chunks[data..data + size]);
        chunks = &chunks[data + size + 2..];
    }
}
