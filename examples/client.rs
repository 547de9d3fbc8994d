//! A service calling authd with tonic: login, validate, refresh, logout.
//!
//! `cargo run --example client -- --email alice@example.com --password '...'`
//!
//! Your own service generates the client from `proto/auth/v1/auth.proto` with
//! tonic-prost-build; this example borrows the copy compiled into authd's library.

use std::time::Duration;

use anyhow::{Context as _, bail};
use authd::proto::{
    LoginRequest, LogoutRequest, RefreshRequest, ValidateRequest,
    auth_service_client::AuthServiceClient,
};
use clap::Parser;
use tonic::{Code, transport::Channel};

#[derive(Debug, Parser)]
struct Args {
    /// authd's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[arg(long)]
    email: String,
    #[arg(long)]
    password: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(args.addr.clone())?
        .connect_timeout(Duration::from_secs(5))
        // Every call gets a deadline: an auth check must never hang its caller.
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut authd = AuthServiceClient::new(channel);

    let login = authd
        .login(LoginRequest {
            email: args.email,
            password: args.password,
            client: None,
        })
        .await
        .context("login")?
        .into_inner();
    println!(
        "logged in: session {}, access token valid for {} s",
        login.session_id, login.expires_in
    );

    // What a service does with the bearer token of each incoming request.
    let who = authd
        .validate(ValidateRequest {
            access_token: login.access_token.clone(),
        })
        .await
        .context("validate")?
        .into_inner();
    println!("validated: user {} <{}>", who.user_id, who.email);

    // Refresh tokens are single-use: always keep the new one.
    let refreshed = authd
        .refresh(RefreshRequest {
            refresh_token: login.refresh_token,
            client: None,
        })
        .await
        .context("refresh")?
        .into_inner();
    println!("refreshed: new pair for session {}", refreshed.session_id);

    authd
        .logout(LogoutRequest {
            refresh_token: refreshed.refresh_token,
            all_sessions: false,
        })
        .await
        .context("logout")?;
    println!("logged out");

    // A logged-out session's access tokens stop validating within about a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = authd
            .validate(ValidateRequest {
                access_token: refreshed.access_token.clone(),
            })
            .await;
        match answer {
            Err(status) if status.code() == Code::Unauthenticated => {
                println!("after logout, validate says: {}", status.message());
                return Ok(());
            }
            Err(status) => bail!("validate after logout: {status}"),
            Ok(_) if tokio::time::Instant::now() > deadline => {
                bail!("the access token still validates after logout")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
