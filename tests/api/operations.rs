//! What operators and orchestrators see: health, reflection, restarts, start-up errors, signals.

use crate::common;

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use common::{
    Backend, TestApp, TestDatabase, process::AuthdProcess, process::authd_command, validate,
};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

on_both_backends!(
    health_is_serving_for_the_server_and_the_service,
    reflection_lists_and_describes_the_service,
    grpcurl_lists_the_services_and_decodes_error_details,
    a_restart_keeps_the_signing_key,
    sigterm_drains_and_exits_cleanly,
);

async fn health_is_serving_for_the_server_and_the_service(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut health = HealthClient::new(common::channel(app.addr).await);
    for service in ["", "auth.v1.AuthService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e:?}"))
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// The first answer of reflection `$version` at `$addr` to `$request` (the two versions'
/// generated types differ, their calls do not).
macro_rules! reflection_answer {
    ($version:ident, $addr:expr, $request:expr) => {
        $version::server_reflection_client::ServerReflectionClient::new(
            common::channel($addr).await,
        )
        .server_reflection_info(tokio_stream::iter([$request]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap()
    };
}

async fn reflection_lists_and_describes_the_service(backend: Backend) {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = TestApp::spawn(backend).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let response = reflection_answer!(v1, app.addr, request);
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"auth.v1.AuthService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // grpcurl before 1.9 speaks only v1alpha; `describe` asks for the file of a symbol.
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "auth.v1.AuthService".into(),
            ),
        ),
    };
    let response = reflection_answer!(v1alpha, app.addr, request);
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        response.message_response
    else {
        panic!("unexpected reflection answer {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

async fn grpcurl_lists_the_services_and_decodes_error_details(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_LOGIN_FREE_ATTEMPTS", "1"),
            ("AUTH_LOGIN_BASE_DELAY", "1m"),
        ],
    )
    .await;
    let addr = app.addr.to_string();
    let (ok, listed, errors) = common::process::grpcurl(&[&addr, "list"]).await;
    assert!(ok, "grpcurl list: {errors}");
    for service in [
        "auth.v1.AuthService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == service),
            "{service} in {listed}"
        );
    }
    let (ok, described, errors) =
        common::process::grpcurl(&[&addr, "describe", "auth.v1.AuthService"]).await;
    assert!(ok, "grpcurl describe: {errors}");
    assert!(described.contains("rpc Refresh"), "{described}");

    // A reused refresh token: the reason is printed decoded, not as raw bytes.
    let session = app.user_with_session("grpcurl@example.com").await;
    common::refresh(&app.client, &session.refresh_token)
        .await
        .unwrap();
    let body = format!(r#"{{"refresh_token": "{}"}}"#, session.refresh_token);
    let (ok, _, errors) =
        common::process::grpcurl(&["-d", &body, &addr, "auth.v1.AuthService/Refresh"]).await;
    assert!(!ok, "a reused token is refused");
    assert!(errors.contains("Code: Unauthenticated"), "{errors}");
    assert!(errors.contains("google.rpc.ErrorInfo"), "{errors}");
    assert!(
        errors.contains(r#""reason":"REFRESH_TOKEN_REUSED""#),
        "{errors}"
    );
    assert!(!errors.contains("not recognized"), "{errors}");

    // A throttled login: RetryInfo with its delay.
    let wrong = r#"{"email": "grpcurl@example.com", "password": "not the right password"}"#;
    let login = ["-d", wrong, &addr, "auth.v1.AuthService/Login"];
    let (_, _, first) = common::process::grpcurl(&login).await;
    assert!(
        first.contains(r#""reason":"INVALID_CREDENTIALS""#),
        "{first}"
    );
    let (ok, _, errors) = common::process::grpcurl(&login).await;
    assert!(!ok, "a throttled login is refused");
    assert!(errors.contains("Code: ResourceExhausted"), "{errors}");
    assert!(errors.contains(r#""reason":"LOGIN_THROTTLED""#), "{errors}");
    assert!(errors.contains("google.rpc.RetryInfo"), "{errors}");
    assert!(errors.contains(r#""retryDelay":"#), "{errors}");
}

async fn a_restart_keeps_the_signing_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let login = app.user_with_session("alice@example.com").await;
    let db = app.stop().await;
    let key_before = db.signing_key_pem();
    if let Some(dir) = db.sqlite_dir() {
        let mode = std::fs::metadata(dir.join("signing_key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "generated key must be private to its owner"
        );
    }

    let app = TestApp::spawn_on(db, &[]).await;
    let validated = validate(&app.client, &login.access_token)
        .await
        .expect("a token issued before the restart still validates");
    assert_eq!(validated.session_id, login.session_id);
    assert_eq!(app.db.signing_key_pem(), key_before);
}

async fn sigterm_drains_and_exits_cleanly(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let mut server = AuthdProcess::spawn(&db, &[]).await;
    server.terminate();
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("authd exits after SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log.lock().unwrap()
    );
    assert!(server.log.lock().unwrap().contains("NOT_SERVING"));
}

/// Start-up refuses bad settings with a message that names the setting.
mod refuses_to_start {
    use super::*;

    async fn start_failure(extra: &[(&str, &str)]) -> String {
        let db = TestDatabase::create(Backend::Sqlite).await;
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            authd_command(&db, extra).arg("serve").output(),
        )
        .await
        .expect("authd gives up within a minute")
        .unwrap();
        assert!(!output.status.success(), "authd started with {extra:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    #[tokio::test]
    async fn with_a_missing_key_file() {
        let stderr = start_failure(&[("AUTH_SIGNING_KEY_FILE", "/nonexistent/key.pem")]).await;
        assert!(stderr.contains("AUTH_SIGNING_KEY_FILE"), "{stderr}");
        assert!(stderr.contains("/nonexistent/key.pem"), "{stderr}");
    }

    #[tokio::test]
    async fn with_a_key_file_that_is_not_an_ed25519_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let stderr = start_failure(&[("AUTH_SIGNING_KEY_FILE", path.to_str().unwrap())]).await;
        assert!(stderr.contains("not an Ed25519 private key"), "{stderr}");
    }

    #[tokio::test]
    async fn with_a_world_readable_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        authd::auth::generate_key_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let stderr = start_failure(&[("AUTH_SIGNING_KEY_FILE", path.to_str().unwrap())]).await;
        assert!(stderr.contains("mode 0644"), "{stderr}");
        assert!(stderr.contains("chmod 600"), "{stderr}");
    }

    /// A TLS key its owner's group may read: refused, naming the file and the fix. Owned by
    /// `nobody`, since the rule lets a root-owned file be read by its group (Kubernetes).
    #[tokio::test]
    async fn with_a_group_readable_tls_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&key_path, Some(65534), Some(65534)).unwrap();
        let stderr = start_failure(&[
            ("AUTH_TLS_CERT_FILE", cert_path.to_str().unwrap()),
            ("AUTH_TLS_KEY_FILE", key_path.to_str().unwrap()),
        ])
        .await;
        assert!(stderr.contains("AUTH_TLS_KEY_FILE"), "{stderr}");
        assert!(stderr.contains(key_path.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains("mode 0640"), "{stderr}");
        assert!(stderr.contains("chmod 600"), "{stderr}");
    }

    #[tokio::test]
    async fn with_a_bad_duration() {
        let stderr = start_failure(&[("AUTH_ACCESS_TOKEN_TTL", "soon")]).await;
        assert!(stderr.contains("AUTH_ACCESS_TOKEN_TTL"), "{stderr}");
    }

    #[tokio::test]
    async fn with_a_bad_cleanup_schedule() {
        let stderr = start_failure(&[("AUTH_CLEANUP_SCHEDULE", "every night")]).await;
        assert!(stderr.contains("AUTH_CLEANUP_SCHEDULE"), "{stderr}");
    }

    #[tokio::test]
    async fn with_an_unreachable_database() {
        let unreachable = [
            ("AUTH_DATABASE_URL", "postgres://postgres@127.0.0.1:1/authd"),
            ("AUTH_DB_ACQUIRE_TIMEOUT", "1s"),
        ];
        let stderr = start_failure(&unreachable).await;
        assert!(stderr.contains("AUTH_DATABASE_URL"), "{stderr}");
    }
}

/// Every call is logged and every security event audited (target `audit`), at debug level too,
/// without a password, a token or a hash in any line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_name_each_call_but_never_a_secret() {
    use common::{PASSWORD, add_user, login, logout, refresh};
    let db = TestDatabase::create(Backend::Sqlite).await;
    // One free failed login, so the second attempt below is throttled (and audited).
    let settings = [("RUST_LOG", "debug"), ("AUTH_LOGIN_FREE_ATTEMPTS", "1")];
    let server = AuthdProcess::spawn(&db, &settings).await;
    let client = server.client().await;
    add_user(&db, "alice@example.com", PASSWORD).await;
    let first = login(&client, "alice@example.com", PASSWORD).await.unwrap();
    let _ = login(&client, "alice@example.com", "a wrong password").await;
    let throttled = login(&client, "alice@example.com", "a wrong password").await;
    common::assert_refused(throttled, tonic::Code::ResourceExhausted, "LOGIN_THROTTLED");
    let second = refresh(&client, &first.refresh_token).await.unwrap();
    validate(&client, &second.access_token).await.unwrap();
    let _ = refresh(&client, &first.refresh_token).await; // reuse: logged as a warning
    logout(&client, &second.refresh_token, false).await.unwrap();

    server.terminate();
    let mut child = server.child;
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    let log = server.log.lock().unwrap().clone();
    for method in ["Login", "Refresh", "Validate", "Logout"] {
        assert!(
            log.contains(&format!("method=\"{method}\"")),
            "no line for {method}:\n{log}"
        );
    }
    assert!(log.contains("refresh token reuse detected"), "{log}");
    for event in [
        "login",
        "login_failed",
        "login_throttled",
        "refresh",
        "refresh_token_reused",
        "logout",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(" audit: ") && l.contains(&format!("event=\"{event}\"")));
        assert!(line.is_some(), "no audit event {event}:\n{log}");
    }
    let secrets = [
        PASSWORD,
        "a wrong password",
        &first.refresh_token,
        &second.refresh_token,
        &first.access_token,
        &second.access_token,
    ];
    for secret in secrets {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
    let stored = common::rows::password_hash(&db, "alice@example.com").await;
    let hash = stored.rsplit('$').next().unwrap().to_owned();
    assert!(!log.contains(&hash), "a password hash reached the log");

    // The CLI's administrative actions are audited too.
    let new_password = "another secret passphrase";
    let args = [
        "user",
        "set-password",
        "alice@example.com",
        "--password-stdin",
    ];
    let changed = common::process::run_authd(&db, &args, &format!("{new_password}\n")).await;
    let disabled =
        common::process::run_authd(&db, &["user", "disable", "alice@example.com"], "").await;
    let cli_log = format!(
        "{}{}",
        String::from_utf8_lossy(&changed.stderr),
        String::from_utf8_lossy(&disabled.stderr)
    );
    for event in ["password_changed", "user_disabled"] {
        assert!(
            cli_log.contains(&format!("event=\"{event}\"")),
            "no audit event {event}:\n{cli_log}"
        );
    }
    assert!(
        !cli_log.contains(new_password),
        "a password reached the log"
    );
}

/// The first start on SQLite, under umask 000, creates its data folder 0700 and the database,
/// its `-wal` and `-shm` files and both keys 0600.
#[tokio::test]
async fn the_first_start_creates_private_files_whatever_the_umask() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("data");
    let url = format!("sqlite://{}?mode=rwc", folder.join("authd.db").display());
    let binary = authd_command(&db, &[]).as_std().get_program().to_owned();
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", "umask 000 && exec \"$0\" serve"])
        .arg(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("RUST_LOG", "warn")
        .envs(common::settings(
            &db,
            &[("AUTH_DATABASE_URL", url.as_str())],
        ))
        .current_dir(root.path())
        .kill_on_drop(true);
    let mut server = command.spawn().unwrap();
    let files = [
        "authd.db",
        "authd.db-wal",
        "authd.db-shm",
        "signing_key.pem",
        "refresh_key.pem",
    ];
    common::eventually(Duration::from_secs(30), "the first start's files", || {
        let all = files.iter().all(|file| folder.join(file).exists());
        async move { all.then_some(()) }
    })
    .await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&folder), 0o700, "the data folder");
    for file in files {
        assert_eq!(mode(&folder.join(file)), 0o600, "{file}");
    }
    server.kill().await.unwrap();
}
