//! The client examples in `examples/` run against a live authd, so they cannot rot.

use crate::common;

use std::{path::PathBuf, process::Output, time::Duration};

use common::{Backend, PASSWORD, TestApp};
use tokio::process::Command;

on_both_backends!(
    the_rust_client_example_runs_against_a_live_server,
    the_python_example_verifies_tokens_against_the_jwks,
    the_verifier_example_verifies_locally_and_refuses_a_logged_out_session,
);

const EMAIL: &str = "example@example.com";

/// Runs an example to completion and asserts it succeeded and printed each of `steps`.
async fn run(command: &mut Command, steps: &[&str]) {
    let output: Output = tokio::time::timeout(
        Duration::from_secs(120),
        command.kill_on_drop(true).output(),
    )
    .await
    .expect("the example finishes within two minutes")
    .expect("the example starts");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for step in steps {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
}

/// `cargo test` builds the examples beside the test binaries (`target/<profile>/examples`).
fn example_binary(name: &str) -> PathBuf {
    let path = common::authd_binary().with_file_name("examples").join(name);
    assert!(
        path.exists(),
        "{} was not built: run the whole suite (`cargo nextest run --workspace`), which builds \
         the examples",
        path.display()
    );
    path
}

async fn the_rust_client_example_runs_against_a_live_server(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user(EMAIL, PASSWORD).await;
    let mut client = Command::new(example_binary("client"));
    client.args([
        "--addr",
        &format!("http://{}", app.addr),
        "--email",
        EMAIL,
        "--password",
        PASSWORD,
    ]);
    let steps = [
        "logged in",
        "validated",
        "refreshed",
        "logged out",
        "after logout",
    ];
    run(&mut client, &steps).await;
}

async fn the_python_example_verifies_tokens_against_the_jwks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.add_user(EMAIL, PASSWORD).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python/verify_tokens.py");
    // Its own temporary folder, to check that the script cleans up the stubs it generates.
    let scratch = tempfile::tempdir().unwrap();
    let mut python = Command::new("python3");
    python.env("TMPDIR", scratch.path()).arg(script).args([
        "--grpc",
        &app.addr.to_string(),
        "--jwks-url",
        &format!("http://{}/.well-known/jwks.json", app.http_addr),
        "--email",
        EMAIL,
        "--password",
        PASSWORD,
    ]);
    let steps = [
        "verified locally",
        "tampered token refused locally",
        "Validate agrees",
        "after logout: refused locally (session revoked)",
        "and Validate says 'session revoked'",
    ];
    run(&mut python, &steps).await;
    let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
    assert!(left.is_empty(), "the script left {left:?} behind");
}

async fn the_verifier_example_verifies_locally_and_refuses_a_logged_out_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let kept = app.user_with_session(EMAIL).await;
    let ended = app.login(EMAIL, PASSWORD).await.unwrap();
    common::logout(&app.client, &ended.refresh_token, false)
        .await
        .unwrap();
    let mut example = Command::new(example_binary("verify_token"));
    example.args([
        "--jwks",
        &format!("http://{}/.well-known/jwks.json", app.http_addr),
        "--authd",
        &format!("http://{}", app.addr),
        &kept.access_token,
        &ended.access_token,
        "not-a-token",
    ]);
    let session = format!("session {}", kept.session_id);
    run(
        &mut example,
        &[
            "valid: user ",
            &session,
            "refused: SESSION_REVOKED",
            "refused: TOKEN_INVALID",
        ],
    )
    .await;
}
