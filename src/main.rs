//! The `authd` command: serve (the default), migrate, and user administration.

use std::{
    io::{BufRead as _, IsTerminal as _},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use authd::{
    auth::{AuthError, Email, KeyError, PasswordHasher, UserAdmin, UserRef, generate_key_file},
    cleanup,
    config::{Config, Observability},
    server::{self, Application},
    telemetry::{self, CallSampler},
};
use clap::{Parser, Subcommand};

/// mimalloc: a Validate costs about 5% less server CPU than on glibc's allocator (every call
/// allocates its HTTP/2 stream, headers and messages; BENCHMARKS.md). Built to commit its
/// arenas' memory as it is used (`.cargo/config.toml`): 45 MiB at idle, where glibc holds 43.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gRPC authentication service. Settings come from AUTH_* environment variables and `.env`.
#[derive(Debug, Parser)]
#[command(name = "authd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the database and serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Delete ended sessions and forgotten login failures once, print the counts and exit.
    Cleanup,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage key files (signing, refresh-token and reuse-grace keys).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new Ed25519 key (PKCS#8 PEM, mode 0600), for AUTH_SIGNING_KEY_FILE,
    /// AUTH_REFRESH_KEY_FILE or AUTH_REFRESH_GRACE_KEY_FILE. Never overwrites a file.
    Generate {
        /// Where to write the key.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user. The password (8 to 1024 bytes) is prompted for on a terminal.
    Add {
        /// The user's email address.
        email: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password (8 to 1024 bytes) and revoke all their sessions.
    SetPassword {
        /// The user's email address.
        email: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: their next login fails and all their sessions are revoked.
    Disable {
        /// The user's email address.
        email: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let observability = match Observability::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("authd: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs go to standard error, filtered by `RUST_LOG` (default `info`); traces to the
    // OTLP collector when one is configured.
    let telemetry = match telemetry::init(&observability) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("authd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let outcome = run(cli, telemetry.call_sampler()).await;
    telemetry.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("authd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, call_sampler: Option<CallSampler>) -> anyhow::Result<()> {
    // Read only by the commands that need settings: key generation must work before any exist.
    let settings = || Config::from_env().context("invalid configuration");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys(KeysCommand::Generate { out }) => generate_key(&out),
        Command::Serve => {
            let config = settings()?;
            let app = Application::build(config).await?.trace_calls(call_sampler);
            app.run_until(shutdown_signal()).await
        }
        Command::Migrate => {
            let config = settings()?;
            server::connect_and_migrate(&config.database).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Cleanup => {
            let config = settings()?;
            let store = server::connect_and_migrate(&config.database).await?;
            let report = cleanup::run_once(&store, cleanup::CleanupPolicy::new(&config.sessions))
                .await
                .context("while deleting ended rows")?;
            println!(
                "deleted {} ended sessions, {} expired pre-upgrade refresh tokens, {} forgotten \
                 login attempts and {} known login addresses unseen for 30 days",
                report.sessions,
                report.legacy_refresh_tokens,
                report.login_attempts,
                report.known_login_clients
            );
            Ok(())
        }
        Command::User(command) => {
            let config = settings()?;
            let store = server::connect_and_migrate(&config.database).await?;
            let hasher = PasswordHasher::new(config.login.argon2, 1, 1)?;
            let admin = UserAdmin::new(store, hasher, config.login.password_policy);
            // Who made a change, for the audit trail: the CLI, run by an operator.
            const BY: &str = "cli";
            let missing = |email: &Email| anyhow::anyhow!("no user with email {}", email.as_str());
            match command {
                UserCommand::Add {
                    email,
                    password_stdin,
                } => {
                    let email = Email::parse(&email)?;
                    let user = admin
                        .create_user(email, read_password(password_stdin)?, BY)
                        .await?;
                    println!("added {} ({})", user.email, user.id);
                }
                UserCommand::SetPassword {
                    email,
                    password_stdin,
                } => {
                    let email = Email::parse(&email)?;
                    let password = read_password(password_stdin)?;
                    let user = UserRef::Email(email.clone());
                    match admin.set_password(&user, password, BY).await {
                        Err(AuthError::UserNotFound) => return Err(missing(&email)),
                        changed => changed?,
                    };
                    println!(
                        "password changed for {}; all sessions revoked",
                        email.as_str()
                    );
                }
                UserCommand::Disable { email } => {
                    let email = Email::parse(&email)?;
                    let user = UserRef::Email(email.clone());
                    match admin.disable_user(&user, BY).await {
                        Err(AuthError::UserNotFound) => return Err(missing(&email)),
                        disabled => disabled?,
                    };
                    println!("disabled {}", email.as_str());
                }
            }
            Ok(())
        }
    }
}

fn generate_key(out: &std::path::Path) -> anyhow::Result<()> {
    if !generate_key_file(out)? {
        return Err(KeyError::Exists {
            path: out.to_owned(),
        }
        .into());
    }
    println!("wrote a new Ed25519 key to {}", out.display());
    Ok(())
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("while reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "standard input is not a terminal: pass --password-stdin to read the password from it"
        );
    }
    let password =
        rpassword::prompt_password("Password: ").context("while reading the password")?;
    let again = rpassword::prompt_password("Repeat: ").context("while reading the password")?;
    if password != again {
        bail!("the passwords differ");
    }
    Ok(password)
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C; only SIGTERM stops the server");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => {}
        () = interrupt => {}
    }
}
