//! The gRPC transport's set-up: TLS, reflection, HTTP/2 and connection bounds.

use anyhow::Context as _;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::{
    config::{TlsFiles, TransportSettings},
    listener::{ConnectionLimits, Keepalive},
    proto,
};

/// The descriptors of every service served, for reflection and per-call metrics.
pub(super) const SERVED_DESCRIPTOR_SETS: [&[u8]; 4] = [
    proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Reflection over every service served, both reflection versions included whichever one is
/// asked, and the `google.rpc` error details that statuses carry, so that grpcurl decodes
/// ErrorInfo and RetryInfo instead of printing raw bytes.
pub(super) fn reflection() -> tonic_reflection::server::Builder<'static> {
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

/// The gRPC server with its HTTP/2 bounds and, when configured, TLS. Browsers speak HTTP/1.1
/// to a plain-text port (and HTTP/2 over TLS via ALPN).
pub(super) fn grpc_server(
    transport: &TransportSettings,
    tls: Option<ServerTlsConfig>,
) -> anyhow::Result<Server> {
    let limits = transport.grpc_connection;
    let builder = Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // tonic passes `None` for both unless told, and `None` turns hyper's defences off:
        // these are h2's and hyper's own defaults (RUSTSEC-2024-0003, rapid reset).
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS));
    match tls {
        Some(tls) => builder
            .tls_config(tls)
            .context("while configuring TLS (AUTH_TLS_*)"),
        None => Ok(builder),
    }
}

/// Descriptors kept free of connections: standard streams, the database files and pool,
/// key files, the runtime's own.
const RESERVED_DESCRIPTORS: usize = 64;

/// The gRPC listener's bounds: the HTTP listener's, with TCP keepalive (the HTTP port's calls
/// are short, and its idle connections closed by the idle timeout).
pub(super) fn grpc_connection_limits(
    transport: &TransportSettings,
    http_limits: ConnectionLimits,
) -> ConnectionLimits {
    ConnectionLimits {
        keepalive: Some(Keepalive {
            idle: transport.grpc_connection.keepalive_interval,
            timeout: transport.grpc_connection.keepalive_timeout,
        }),
        ..http_limits
    }
}

/// Each listener's bounds: `AUTH_MAX_CONNECTIONS`, or fewer when the descriptor limit (first
/// raised to its hard limit) could not hold both listeners' connections beside the pool, so
/// that `accept` never runs out of descriptors.
pub(super) fn connection_limits(
    transport: &TransportSettings,
    database_connections: u32,
) -> ConnectionLimits {
    let configured = transport.max_connections;
    let max_connections = match crate::listener::raise_descriptor_limit() {
        Ok(limit) => {
            let reserved = RESERVED_DESCRIPTORS + database_connections as usize;
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
        handshake_timeout: transport.handshake_timeout,
        idle_timeout: transport.idle_timeout,
        keepalive: None,
    }
}

/// The server's TLS identity and, for mutual TLS, the CA its clients' certificates must chain to.
pub(super) fn load_tls(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
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
