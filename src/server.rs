//! Assembles the gRPC server: AuthService, health and reflection, and the shutdown sequence.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    auth::{
        Acceptance, Authenticator, PasswordHasher, RefreshKey, ReuseGrace, RevokedSessions,
        SuccessorKey, TokenKeys, load_signing_key, load_verification_key,
    },
    cleanup,
    config::{Config, TlsFiles},
    grpc::{
        self, AuthGrpc,
        browser::{self, RefreshCookie},
        limits::InFlightLimit,
        observe::ObserveLayer,
    },
    listener::{BoundedListener, ConnectionInfo, ConnectionLimits, TrackCallsLayer},
    proto::{self, auth_service_server::AuthServiceServer},
    store::{self, Store},
    telemetry::CallSampler,
};

/// The gRPC service name that health checks name besides "".
pub const SERVICE_NAME: &str = "auth.v1.AuthService";

/// A health service name that is SERVING for as long as the process serves, whatever the
/// database does: for liveness probes, so an outage makes replicas unready, not restarted.
pub const LIVENESS_SERVICE: &str = "liveness";

/// A migrated, keyed and bound server, ready to run.
pub struct Application {
    config: Config,
    listener: TcpListener,
    http_listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    /// The public keys, published over HTTP.
    jwks: jsonwebtoken::jwk::JwkSet,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    store: Store,
    auth: Arc<Authenticator>,
    revoked: Arc<RevokedSessions>,
    /// When the revocation set was loaded; the poller continues from there.
    revocations_loaded_at: chrono::DateTime<chrono::Utc>,
    /// Which calls get a server span; `None` while tracing is off.
    call_sampler: Option<CallSampler>,
}

impl Application {
    /// Connects and migrates the database, loads (or generates) the signing key and binds the
    /// listener. Every failure here names what it was doing.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = crate::metrics::install().context("while installing the metrics recorder")?;
        let store = connect_and_migrate(&config).await?;
        let keys = load_token_keys(&config)?;
        let jwks = keys.jwks().clone();
        let mut hasher = PasswordHasher::new(
            config.argon2,
            config.password_hash_concurrency,
            config.password_hash_queue,
        )
        .context("while preparing the password hasher")?;
        let in_use = store
            .password_hash_prefixes()
            .await
            .context("while reading which argon2 parameters the stored hashes use")?;
        hasher
            .cover(&in_use)
            .await
            .context("while preparing the password hasher")?;
        let revoked = Arc::new(RevokedSessions::new(
            config.access_token_max_lifetime,
            config.jwt_leeway,
        ));
        let revocations_loaded_at = revoked
            .load(&store)
            .await
            .context("while loading revoked sessions")?;
        let auth = Arc::new(Authenticator::new(
            &config,
            store.clone(),
            keys,
            load_refresh_key(&config)?,
            hasher,
            Arc::clone(&revoked),
            load_reuse_grace(&config)?,
        ));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("while binding AUTH_LISTEN={}", config.listen))?;
        let tls = config.tls.as_ref().map(load_tls).transpose()?;
        let http_listener = TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("while binding AUTH_HTTP_LISTEN={}", config.http_listen))?;
        Ok(Self {
            config,
            listener,
            http_listener,
            tls,
            jwks,
            metrics,
            store,
            auth,
            revoked,
            revocations_loaded_at,
            call_sampler: None,
        })
    }

    /// Traces the calls `sampler` picks (see [`crate::telemetry`]).
    pub fn trace_calls(mut self, sampler: Option<CallSampler>) -> Self {
        self.call_sampler = sampler;
        self
    }

    /// The bound gRPC address (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.http_listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then turns health NOT_SERVING, stops accepting, lets
    /// in-flight calls finish for at most `AUTH_SHUTDOWN_GRACE`, and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;

        let reflection_v1 = reflection()
            .build_v1()
            .context("while building reflection v1")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("while building reflection v1alpha")?;

        let poller = tokio::spawn(Arc::clone(&self.revoked).poll_forever(
            self.store.clone(),
            self.config.revocation_poll,
            self.revocations_loaded_at,
        ));
        let mut scheduler = cleanup::start_schedule(
            self.store.clone(),
            &self.config.cleanup_schedule,
            cleanup::CleanupPolicy::from_config(&self.config),
        )
        .await
        .context("while starting the cleanup schedule (AUTH_CLEANUP_SCHEDULE)")?;

        let probe = tokio::spawn(probe_database(
            self.store.clone(),
            health.clone(),
            self.config.db_probe_interval,
            self.config.db_acquire_timeout,
        ));

        let address = self.local_addr()?;
        let http_address = self.http_addr()?;
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let upkeep = tokio::spawn(crate::metrics::upkeep_forever(self.metrics.clone()));
        let connection_limits = connection_limits(&self.config);
        let http_routes = crate::http::router(self.jwks, self.metrics, self.store.clone());
        let http = tokio::spawn(
            axum::serve(
                BoundedListener::new(self.http_listener, connection_limits),
                http_routes
                    .layer(TrackCallsLayer)
                    .into_make_service_with_connect_info::<ConnectionInfo>(),
            )
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .into_future(),
        );
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let signal_health = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            // Stop the probe first so it cannot turn health back to SERVING.
            probe.abort();
            let _ = probe.await;
            set_health(&signal_health, ServingStatus::NotServing).await;
            let _ = draining_tx.send(());
            let _ = stop_http.send(());
        };

        let auth_service = InFlightLimit::new(
            AuthServiceServer::new(AuthGrpc::new(
                self.auth,
                self.config.client_address,
                RefreshCookie::new(&self.config.refresh_cookie),
            ))
            .max_decoding_message_size(self.config.max_request_bytes),
            self.config.max_calls_in_flight,
            self.config.call_timeout,
        );
        let cors = browser::cors(&self.config.cors_origins).context("AUTH_CORS_ORIGINS")?;
        let observe = ObserveLayer::new(&SERVED_DESCRIPTOR_SETS, self.call_sampler)
            .context("while reading the served services' descriptors")?;
        // Browsers speak HTTP/1.1 to a plain-text port (and HTTP/2 over TLS via ALPN).
        let limits = self.config.grpc_connection;
        let mut builder = Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            // tonic passes `None` for both unless told, and `None` turns hyper's defences off:
            // these are h2's and hyper's own defaults (RUSTSEC-2024-0003, rapid reset).
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS));
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .context("while configuring TLS (AUTH_TLS_*)")?;
        }
        // Outermost first: every call counts against its connection's idle timeout, CORS
        // answers preflights, browser calls are marked before tonic-web rewrites their content
        // type, calls are observed in native gRPC (trailers as trailers) with the size-limit
        // answer already fixed.
        let serve = builder
            .layer(TrackCallsLayer)
            .layer(cors)
            .layer(tower::util::MapRequestLayer::new(
                browser::mark_browser_calls,
            ))
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(observe)
            .layer(tower::util::MapResponseLayer::new(
                grpc::oversized_is_resource_exhausted,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(auth_service)
            .serve_with_incoming_shutdown(
                BoundedListener::new(self.listener, connection_limits).into_stream(),
                signal,
            );
        tracing::info!(%address, %http_address, "listening");

        let grace = self.config.shutdown_grace;
        tokio::select! {
            served = serve => served.context("while serving")?,
            () = async {
                if draining_rx.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => tracing::warn!(?grace, "in-flight calls still running after the grace period; exiting"),
        }
        poller.abort();
        http.abort();
        upkeep.abort();
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "cleanup scheduler did not stop cleanly");
        }
        self.store
            .close()
            .await
            .context("while closing the database pool")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The descriptors of every service served, for reflection and per-call metrics.
const SERVED_DESCRIPTOR_SETS: [&[u8]; 4] = [
    proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Reflection over every service served, both reflection versions included whichever one is
/// asked, and the `google.rpc` error details that statuses carry, so that grpcurl decodes
/// ErrorInfo and RetryInfo instead of printing raw bytes.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    SERVED_DESCRIPTOR_SETS
        .into_iter()
        .chain([tonic_types::pb::FILE_DESCRIPTOR_SET])
        .fold(
            tonic_reflection::server::Builder::configure().include_reflection_service(false),
            tonic_reflection::server::Builder::register_encoded_file_descriptor_set,
        )
}

/// Streams a peer may reset before the server has accepted them, then GOAWAY (h2's default).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the server may reset for a peer's protocol errors, then GOAWAY (hyper's default).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Descriptors kept free of connections: standard streams, the database files and pool,
/// key files, the runtime's own.
const RESERVED_DESCRIPTORS: usize = 64;

/// Each listener's bounds: `AUTH_MAX_CONNECTIONS`, or fewer when the descriptor limit (first
/// raised to its hard limit) could not hold both listeners' connections beside the pool, so
/// that `accept` never runs out of descriptors.
fn connection_limits(config: &Config) -> ConnectionLimits {
    let configured = config.max_connections;
    let max_connections = match crate::listener::raise_descriptor_limit() {
        Ok(limit) => {
            let reserved = RESERVED_DESCRIPTORS + config.db_max_connections as usize;
            let spare = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(reserved)
                / 2;
            if spare < configured {
                tracing::warn!(
                    descriptor_limit = limit,
                    max_connections = spare.max(1),
                    "the descriptor limit holds fewer connections than AUTH_MAX_CONNECTIONS"
                );
            }
            configured.min(spare.max(1))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the descriptor limit");
            configured
        }
    };
    ConnectionLimits {
        max_connections,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
    }
}

/// Connects to the database and applies pending migrations.
pub async fn connect_and_migrate(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(config)
        .await
        .context("while connecting to AUTH_DATABASE_URL")?;
    store
        .migrate()
        .await
        .context("while migrating the database")?;
    Ok(store)
}

fn load_token_keys(config: &Config) -> anyhow::Result<TokenKeys> {
    let generated_path =
        store::sqlite_file(&config.database_url).map(|db| db.with_file_name("signing_key.pem"));
    let signing = load_signing_key(
        config.signing_key_file.as_deref(),
        generated_path.as_deref(),
    )
    .context("while loading the signing key (AUTH_SIGNING_KEY_FILE)")?;
    let verify_only = config
        .verification_key_files
        .iter()
        .map(|path| load_verification_key(path))
        .collect::<Result<Vec<_>, _>>()
        .context("while loading a verification key (AUTH_VERIFICATION_KEY_FILES)")?;
    TokenKeys::new(
        &signing,
        &verify_only,
        &config.issuer,
        &config.audience,
        Acceptance {
            leeway: config.jwt_leeway,
            max_lifetime: config.access_token_max_lifetime,
        },
    )
    .context("while preparing the token keys")
}

/// The server's TLS identity and, for mutual TLS, the CA its clients' certificates must chain to.
fn load_tls(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let read = |path: &std::path::Path, variable: &str| {
        std::fs::read(path).with_context(|| format!("while reading {variable}={}", path.display()))
    };
    let cert = read(&files.cert, "AUTH_TLS_CERT_FILE")?;
    let key = crate::auth::read_private(&files.key)
        .context("while reading AUTH_TLS_KEY_FILE")?
        .into_bytes();
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &files.client_ca {
        let ca = read(ca, "AUTH_TLS_CLIENT_CA_FILE")?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(tls)
}

/// The key that seals refresh tokens (`AUTH_REFRESH_KEY_FILE`).
fn load_refresh_key(config: &Config) -> anyhow::Result<RefreshKey> {
    let secret = load_secret_key(
        config,
        config.refresh_key_file.as_deref(),
        "refresh_key.pem",
        "the refresh-token key (AUTH_REFRESH_KEY_FILE)",
    )?;
    Ok(RefreshKey::new(secret))
}

/// The reuse grace, when `AUTH_REFRESH_REUSE_GRACE` is set, with its successor key.
fn load_reuse_grace(config: &Config) -> anyhow::Result<Option<ReuseGrace>> {
    let Some(window) = config.refresh_reuse_grace else {
        return Ok(None);
    };
    let secret = load_secret_key(
        config,
        config.refresh_grace_key_file.as_deref(),
        "refresh_grace_key.pem",
        "the reuse-grace key (AUTH_REFRESH_GRACE_KEY_FILE)",
    )?;
    Ok(Some(ReuseGrace {
        window: chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX),
        key: SuccessorKey::new(secret),
    }))
}

/// The 32 secret bytes of a key file as `authd keys generate` writes it: the configured one,
/// or with SQLite `generated_name` beside the database, created on first start.
fn load_secret_key(
    config: &Config,
    configured: Option<&std::path::Path>,
    generated_name: &str,
    what: &str,
) -> anyhow::Result<[u8; 32]> {
    let generated_path =
        store::sqlite_file(&config.database_url).map(|db| db.with_file_name(generated_name));
    let key = load_signing_key(configured, generated_path.as_deref())
        .with_context(|| format!("while loading {what}"))?;
    Ok(key.to_bytes())
}

/// Checks the database every `interval`: health is NOT_SERVING while it does not answer
/// within `timeout`, SERVING again once it does. Runs until aborted.
async fn probe_database(
    store: Store,
    health: HealthReporter,
    interval: Duration,
    timeout: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        ticker.tick().await;
        let outcome = tokio::time::timeout(timeout, store.ping()).await;
        let now_reachable = matches!(outcome, Ok(Ok(())));
        if !now_reachable {
            let discarded = store.discard_idle_connections();
            tracing::debug!(discarded, "idle database connections discarded");
        }
        if now_reachable == reachable {
            continue;
        }
        reachable = now_reachable;
        if reachable {
            tracing::info!("database reachable again: health SERVING");
            set_health(&health, ServingStatus::Serving).await;
        } else {
            let error = match outcome {
                Ok(Err(e)) => crate::error_chain(&e),
                _ => format!("no answer within {timeout:?}"),
            };
            tracing::error!(%error, "database unreachable: health NOT_SERVING");
            set_health(&health, ServingStatus::NotServing).await;
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}
