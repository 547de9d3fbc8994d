//! Fresh databases for tests: a temporary SQLite file, or a new PostgreSQL database on the
#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]
//! server named by `AUTH_TEST_POSTGRES_URL`, else the one at 127.0.0.1:5432, else a throwaway
//! server started from the installed binaries. Nothing is downloaded; a missing PostgreSQL
//! fails the test instead of skipping it.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use sea_orm::{ConnectionTrait as _, Database};
use tempfile::TempDir;

use super::Backend;

/// A database that exists for one test and is dropped after it.
pub enum TestDatabase {
    Sqlite {
        dir: TempDir,
        url: String,
    },
    Postgres {
        name: String,
        admin_url: String,
        url: String,
        /// Holds the signing key: with PostgreSQL, authd requires a key file.
        key_dir: TempDir,
        _server: Option<Arc<ThrowawayPostgres>>,
    },
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("authd.db").display()
                );
                Self::Sqlite { dir, url }
            }
            Backend::Postgres => {
                let (server_url, server) = postgres_server();
                Self::create_on(&server_url, server).await
            }
        }
    }

    /// A fresh database on a particular PostgreSQL server (one a test stops and starts).
    pub async fn create_on(server_url: &str, server: Option<Arc<ThrowawayPostgres>>) -> Self {
        let name = format!("authd_test_{}", uuid::Uuid::new_v4().simple());
        let admin_url = format!("{server_url}/postgres");
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let key_dir = tempfile::tempdir().expect("temp dir");
        for key in ["signing_key.pem", "refresh_grace_key.pem"] {
            authd::auth::generate_key_file(&key_dir.path().join(key)).expect("test key");
        }
        Self::Postgres {
            url: format!("{server_url}/{name}"),
            name,
            admin_url,
            key_dir,
            _server: server,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } => url,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite { .. } => Backend::Sqlite,
            Self::Postgres { .. } => Backend::Postgres,
        }
    }

    /// The key file to configure, where authd does not generate one itself.
    pub fn key_file(&self) -> Option<PathBuf> {
        match self {
            Self::Sqlite { .. } => None,
            Self::Postgres { key_dir, .. } => Some(key_dir.path().join("signing_key.pem")),
        }
    }

    /// The signing key's PEM, wherever it lives.
    pub fn signing_key_pem(&self) -> String {
        let path = match self {
            Self::Sqlite { dir, .. } => dir.path().join("signing_key.pem"),
            Self::Postgres { key_dir, .. } => key_dir.path().join("signing_key.pem"),
        };
        std::fs::read_to_string(&path).expect("signing key exists")
    }

    /// The folder of the SQLite file (for tests that look at files beside it).
    pub fn sqlite_dir(&self) -> Option<&Path> {
        match self {
            Self::Sqlite { dir, .. } => Some(dir.path()),
            Self::Postgres { .. } => None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres {
            name, admin_url, ..
        } = self
        {
            let (name, admin_url) = (name.clone(), admin_url.clone());
            // Drop runs inside the test's runtime; a separate thread may block on its own.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let admin = Database::connect(&admin_url).await?;
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await?;
                    admin.close().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .join();
            if let Ok(Err(e)) = dropped {
                eprintln!("could not drop test database: {e}");
            }
        }
    }
}

/// The PostgreSQL server to use, as a URL without a database, and the throwaway server
/// behind it if one had to be started.
fn postgres_server() -> (String, Option<Arc<ThrowawayPostgres>>) {
    if let Ok(url) = std::env::var("AUTH_TEST_POSTGRES_URL") {
        return (url.trim_end_matches('/').to_owned(), None);
    }
    let local: SocketAddr = "127.0.0.1:5432".parse().expect("address");
    if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return ("postgres://postgres@127.0.0.1:5432".to_owned(), None);
    }
    // Share one throwaway server among the tests of this process while any is alive.
    static SHARED: Mutex<Weak<ThrowawayPostgres>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let server = shared.upgrade().unwrap_or_else(|| {
        let server = Arc::new(ThrowawayPostgres::start());
        *shared = Arc::downgrade(&server);
        server
    });
    (server.url(), Some(server))
}

/// A PostgreSQL server in a temporary folder on a free port, stopped when dropped.
pub struct ThrowawayPostgres {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

impl ThrowawayPostgres {
    /// initdb and start, as the `postgres` user when running as root (PostgreSQL refuses root).
    pub fn start() -> Self {
        let bin = postgres_bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        if running_as_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let server = Self { dir, port, bin };
        server.pg(
            "initdb",
            &[
                "-D",
                &server.data_dir(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    /// The server URL, without a database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash or an outage would.
    pub fn stop(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg(&self, program: &str, args: &[&str]) {
        run(self.command(program).args(args));
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data_dir(), "-m", "immediate", "stop"])
            .output();
    }
}

fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql (.ci/run installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect("an installed PostgreSQL with initdb")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn run(command: &mut Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
