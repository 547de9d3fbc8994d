//! Composition: the database, the keys and the domain assembled into a bound server, then
//! AuthService, health and reflection served beside the HTTP port, its background jobs, and
//! the shutdown sequence.

mod health;
mod keys;
mod parts;
mod transport;

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_cron_scheduler::JobScheduler;
use tonic::transport::ServerTlsConfig;
use tonic_health::{ServingStatus, pb::health_server::HealthServer};

pub use health::{LIVENESS_SERVICE, SERVICE_NAME};

use crate::{
    auth::{Authenticator, FeedCloser, RevocationFeed, RevokedSessions},
    cleanup,
    config::{Config, DatabaseSettings, TransportSettings},
    grpc::{
        AuthGrpc,
        admin::AdminGrpc,
        browser::{self, RefreshCookie},
        limits::InFlightLimit,
        observe::ObserveLayer,
    },
    listener::{BoundedListener, ConnectionInfo, ConnectionLimits, TrackCallsLayer},
    proto::{admin_service_server::AdminServiceServer, auth_service_server::AuthServiceServer},
    store::Store,
    telemetry::CallSampler,
};

/// A migrated, keyed and bound server, ready to run.
pub struct Application {
    config: Config,
    store: Store,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    revoked: Arc<RevokedSessions>,
    /// When the revocation set was loaded; the poller continues from there.
    revocations_loaded_at: chrono::DateTime<chrono::Utc>,
    grpc: GrpcPort,
    http: HttpPort,
}

/// The gRPC port and what its calls need.
struct GrpcPort {
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    auth: Arc<Authenticator>,
    /// The revocation feed, and what ends its streams at shutdown.
    feed: (RevocationFeed, FeedCloser),
    /// The AdminService, when configured.
    admin: Option<AdminGrpc>,
    /// Which calls get a server span; `None` while tracing is off.
    call_sampler: Option<CallSampler>,
}

/// The plain-HTTP port: JWKS and metrics.
struct HttpPort {
    listener: TcpListener,
    /// The public keys, published over HTTP.
    jwks: jsonwebtoken::jwk::JwkSet,
}

/// The jobs that run beside the listeners until shutdown.
struct BackgroundJobs {
    revocation_poll: JoinHandle<()>,
    revocation_listener: JoinHandle<()>,
    metrics_upkeep: JoinHandle<()>,
    cleanup: JobScheduler,
}

impl Application {
    /// Connects and migrates the database, loads (or generates) the keys and binds the
    /// listeners. Every failure here names what it was doing.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = crate::metrics::install().context("while installing the metrics recorder")?;
        let store = connect_and_migrate(&config.database).await?;
        let key_files = keys::KeyFileLocations::new(&config.sessions, &config.database);
        let keys = key_files.session_keys()?;
        let jwks = keys.access.jwks().clone();
        let hasher = parts::password_hasher(&config, &store).await?;
        let revoked = Arc::new(RevokedSessions::new(
            config.sessions.access_token_max_lifetime,
            config.sessions.jwt_leeway,
            config.feed.buffer,
        ));
        let revocations_loaded_at = revoked
            .load(&store)
            .await
            .context("while loading revoked sessions")?;
        let admin = parts::admin_service(&config, &store, &hasher, &revoked)?;
        let auth = Arc::new(Authenticator::new(
            &config.sessions,
            &config.login,
            store.clone(),
            keys,
            hasher,
            Arc::clone(&revoked),
        ));
        let feed = RevocationFeed::new(
            Arc::clone(&revoked),
            config.feed,
            config.sessions.revocation_poll,
        );
        let transport = &config.transport;
        let listener = TcpListener::bind(transport.listen)
            .await
            .with_context(|| format!("while binding AUTH_LISTEN={}", transport.listen))?;
        let tls = transport
            .tls
            .as_ref()
            .map(transport::load_tls)
            .transpose()?;
        let http_listener = TcpListener::bind(transport.http_listen)
            .await
            .with_context(|| format!("while binding AUTH_HTTP_LISTEN={}", transport.http_listen))?;
        Ok(Self {
            config,
            store,
            metrics,
            revoked,
            revocations_loaded_at,
            grpc: GrpcPort {
                listener,
                tls,
                auth,
                feed,
                admin,
                call_sampler: None,
            },
            http: HttpPort {
                listener: http_listener,
                jwks,
            },
        })
    }

    /// Traces the calls `sampler` picks (see [`crate::telemetry`]).
    pub fn trace_calls(mut self, sampler: Option<CallSampler>) -> Self {
        self.grpc.call_sampler = sampler;
        self
    }

    /// The bound gRPC address (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.grpc.listener.local_addr()?)
    }

    /// The bound HTTP address (useful with port 0).
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.http.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then turns health NOT_SERVING, stops accepting, lets
    /// in-flight calls finish for at most `AUTH_SHUTDOWN_GRACE`, and closes the pool.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (health, health_service) = health::serving().await;
        let jobs = self.start_background_jobs().await?;
        let address = self.local_addr()?;
        let http_address = self.http_addr()?;
        let Self {
            config,
            store,
            metrics,
            grpc,
            http,
            ..
        } = self;
        let probe = tokio::spawn(health::probe_database(
            store.clone(),
            health.clone(),
            config.database.probe_interval,
            config.database.acquire_timeout,
        ));
        let connection_limits =
            transport::connection_limits(&config.transport, config.database.max_connections);
        let (stop_http, http) = http.serve(metrics, store.clone(), connection_limits);
        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
            // Stop the probe first so it cannot turn health back to SERVING.
            probe.abort();
            let _ = probe.await;
            health::set_health(&health, ServingStatus::NotServing).await;
            let _ = draining_tx.send(());
            let _ = stop_http.send(());
        };
        let grpc_limits = transport::grpc_connection_limits(&config.transport, connection_limits);
        let serve = grpc.serve(&config.transport, health_service, grpc_limits, signal)?;
        tracing::info!(%address, %http_address, "listening");
        let grace = config.transport.shutdown_grace;
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
        http.abort();
        // Wait for the abort, so the HTTP port is free once this returns.
        let _ = http.await;
        jobs.stop().await;
        store
            .close()
            .await
            .context("while closing the database pool")?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The revocation poll and listener, the metrics upkeep and the cleanup schedule.
    async fn start_background_jobs(&self) -> anyhow::Result<BackgroundJobs> {
        let revocation_poll = tokio::spawn(Arc::clone(&self.revoked).poll_forever(
            self.store.clone(),
            self.config.sessions.revocation_poll,
            self.revocations_loaded_at,
        ));
        let cleanup = cleanup::start_schedule(
            self.store.clone(),
            &self.config.sessions.cleanup.schedule,
            cleanup::CleanupPolicy::new(&self.config.sessions),
        )
        .await
        .context("while starting the cleanup schedule (AUTH_CLEANUP_SCHEDULE)")?;
        let revocation_listener =
            tokio::spawn(Arc::clone(&self.revoked).listen_forever(self.store.clone()));
        Ok(BackgroundJobs {
            revocation_poll,
            revocation_listener,
            metrics_upkeep: tokio::spawn(crate::metrics::upkeep_forever(self.metrics.clone())),
            cleanup,
        })
    }
}

impl HttpPort {
    /// Serves JWKS and metrics until the returned sender fires or is dropped.
    fn serve(
        self,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        store: Store,
        limits: ConnectionLimits,
    ) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let routes = crate::http::router(self.jwks, metrics, store);
        let server = axum::serve(
            BoundedListener::new(self.listener, limits),
            routes
                .layer(TrackCallsLayer)
                .into_make_service_with_connect_info::<ConnectionInfo>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        (stop, tokio::spawn(server.into_future()))
    }
}

impl GrpcPort {
    /// AuthService, health and reflection behind the layers every call passes, until `signal`
    /// completes and in-flight calls have finished.
    fn serve<H, S>(
        self,
        settings: &TransportSettings,
        health_service: HealthServer<H>,
        limits: ConnectionLimits,
        signal: S,
    ) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>> + use<H, S>>
    where
        H: tonic_health::pb::health_server::Health,
        S: Future<Output = ()> + Send,
    {
        let (feed, feed_closer) = self.feed;
        // Feed streams never end by themselves: end them as the drain begins.
        let signal = async move {
            signal.await;
            feed_closer.close();
        };
        let auth_service = InFlightLimit::new(
            AuthServiceServer::new(AuthGrpc::new(
                self.auth,
                feed,
                settings.client_address,
                RefreshCookie::new(&settings.browser.refresh_cookie),
            ))
            .max_decoding_message_size(settings.max_request_bytes),
            settings.max_calls_in_flight,
            settings.call_timeout,
        );
        let admin_service = self.admin.map(|admin| {
            InFlightLimit::new(
                AdminServiceServer::new(admin)
                    .max_decoding_message_size(settings.max_request_bytes),
                settings.max_calls_in_flight,
                settings.call_timeout,
            )
        });
        let browsers =
            browser::browsers(&settings.browser.cors_origins).context("AUTH_CORS_ORIGINS")?;
        let observe = ObserveLayer::new(&transport::SERVED_DESCRIPTOR_SETS, self.call_sampler)
            .context("while reading the served services' descriptors")?;
        let reflection_v1 = transport::reflection()
            .build_v1()
            .context("while building reflection v1")?;
        let reflection_v1alpha = transport::reflection()
            .build_v1alpha()
            .context("while building reflection v1alpha")?;
        // Outermost first: browsers' requests go through CORS and tonic-web while services'
        // calls go straight on; every call is then observed (and counted on its connection)
        // in native gRPC, trailers as trailers.
        Ok(transport::grpc_server(settings, self.tls)?
            .layer(browsers)
            .layer(observe)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(auth_service)
            .add_optional_service(admin_service)
            .serve_with_incoming_shutdown(
                BoundedListener::new(self.listener, limits).into_stream(),
                signal,
            ))
    }
}

impl BackgroundJobs {
    async fn stop(mut self) {
        self.revocation_poll.abort();
        self.revocation_listener.abort();
        self.metrics_upkeep.abort();
        if let Err(e) = self.cleanup.shutdown().await {
            tracing::warn!(error = %e, "cleanup scheduler did not stop cleanly");
        }
    }
}

/// Connects to the database and applies pending migrations.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<Store> {
    let store = Store::connect(settings)
        .await
        .context("while connecting to AUTH_DATABASE_URL")?;
    store
        .migrate()
        .await
        .context("while migrating the database")?;
    Ok(store)
}
