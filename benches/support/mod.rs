//! authd in the benchmark's own process, with a user, for the benchmarks that need the real
//! server: the verifier's, and revocation propagation between replicas.
#![allow(dead_code, unreachable_pub)] // each benchmark uses its part

use std::net::SocketAddr;

use authd::{
    auth::{Email, PasswordHasher, UserAdmin},
    config::Config,
    proto::auth_service_client::AuthServiceClient,
    server::{self, Application},
};
use authd_verifier::VerifierSettings;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// The password of the benchmarks' user.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running authd.
pub struct Running {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub config: Config,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts authd with `vars` (on loopback ports of its choosing, cheap argon2).
    pub async fn start(vars: &[(&str, &str)]) -> Self {
        let defaults = [
            ("AUTH_LISTEN", "127.0.0.1:0"),
            ("AUTH_HTTP_LISTEN", "127.0.0.1:0"),
            ("AUTH_ARGON2_MEMORY_KIB", "256"),
            ("AUTH_ARGON2_ITERATIONS", "1"),
            ("RUST_LOG", "warn"),
        ];
        let config = Config::from_vars(
            defaults
                .iter()
                .chain(vars)
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect("benchmark settings");
        let app = Application::build(config.clone())
            .await
            .expect("authd starts");
        let (grpc, http) = (app.local_addr().unwrap(), app.http_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            grpc,
            http,
            config,
            stop,
            task,
        }
    }

    /// Adds a user with [`PASSWORD`], as `authd user add` does.
    pub async fn add_user(&self, email: &str) {
        let store = server::connect_and_migrate(&self.config.database)
            .await
            .unwrap();
        let hasher = PasswordHasher::new(self.config.login.argon2, 1, 1).unwrap();
        UserAdmin::new(store, hasher, self.config.login.password_policy)
            .create_user(Email::parse(email).unwrap(), PASSWORD.into(), "benchmark")
            .await
            .unwrap();
    }

    /// A client of this replica.
    pub async fn client(&self) -> AuthServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AuthServiceClient::new(channel)
    }

    /// A verifier's settings for this replica.
    pub fn verifier_settings(&self) -> VerifierSettings {
        VerifierSettings::new(
            &format!("http://{}/.well-known/jwks.json", self.http),
            &format!("http://{}", self.grpc),
            &self.config.sessions.issuer,
            &self.config.sessions.audience,
        )
        .unwrap()
    }

    /// Stops it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Logs `email` in on `client`.
pub async fn login(
    client: &AuthServiceClient<Channel>,
    email: &str,
) -> authd::proto::LoginResponse {
    client
        .clone()
        .login(authd::proto::LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
            client: None,
        })
        .await
        .unwrap()
        .into_inner()
}
