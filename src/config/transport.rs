//! How authd talks to its callers: listeners, TLS, the bounds every connection and call is
//! held to, and where a caller's address comes from.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{
    BrowserSettings, ConfigError,
    vars::{Vars, error},
};

/// The listeners and the bounds on what callers may hold.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// `AUTH_LISTEN`: the gRPC listen address. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// `AUTH_TLS_CERT_FILE` and `AUTH_TLS_KEY_FILE` (PEM): serve gRPC over TLS.
    pub tls: Option<TlsFiles>,
    /// `AUTH_HTTP_LISTEN`: the plain-HTTP listen address for `/.well-known/jwks.json`.
    pub http_listen: SocketAddr,
    /// `AUTH_MAX_REQUEST_BYTES`: largest request message accepted; larger ones are refused
    /// with RESOURCE_EXHAUSTED before they are decoded.
    pub max_request_bytes: usize,
    /// `AUTH_SHUTDOWN_GRACE`: how long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// HTTP/2 bounds on each gRPC connection, so that one peer cannot hold unbounded state.
    pub grpc_connection: GrpcConnectionLimits,
    /// `AUTH_MAX_CONNECTIONS`: connections each listener (gRPC, HTTP) holds open at once;
    /// more wait in the kernel's backlog. Lowered at start if the descriptor limit is smaller.
    pub max_connections: usize,
    /// `AUTH_HANDSHAKE_TIMEOUT`: how long a new connection has to send its opening (the
    /// HTTP/2 preface, or an HTTP/1 request head up to its empty line) before it is closed.
    pub handshake_timeout: Duration,
    /// `AUTH_IDLE_TIMEOUT`: a connection (either listener) with no call in flight for this
    /// long is closed; clients reconnect when they next call.
    pub idle_timeout: Duration,
    /// `AUTH_MAX_CALLS_IN_FLIGHT`: AuthService calls in progress at once across every
    /// connection; one more is refused at once with RESOURCE_EXHAUSTED (`OVERLOADED`).
    pub max_calls_in_flight: usize,
    /// `AUTH_CALL_TIMEOUT`: the longest an AuthService call may take, reading its request
    /// included; past it the call is abandoned with DEADLINE_EXCEEDED (`CALL_TIMEOUT`).
    pub call_timeout: Duration,
    /// Where the address login throttling counts against comes from, when a Login carries
    /// no `client` field.
    pub client_address: ClientAddressRule,
    /// gRPC-Web for browsers: the origins allowed and the refresh-token cookie.
    pub browser: BrowserSettings,
}

/// TLS for the gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `AUTH_TLS_CERT_FILE`: the server's certificate chain, PEM.
    pub cert: PathBuf,
    /// `AUTH_TLS_KEY_FILE`: the server's private key, PEM.
    pub key: PathBuf,
    /// `AUTH_TLS_CLIENT_CA_FILE`: when set, clients must present a certificate signed by this
    /// CA (mutual TLS); one without is refused at the handshake.
    pub client_ca: Option<PathBuf>,
}

/// The end user's address for a Login without a `client` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientAddressRule {
    /// `AUTH_TRUSTED_PROXY_HOPS`: proxies in front of authd that append the address they saw
    /// to `x-forwarded-for`; the address is the entry that many from the right (the one the
    /// outermost trusted proxy wrote). 0: the header is ignored.
    pub trusted_proxy_hops: usize,
    /// `AUTH_LOGIN_THROTTLE_PEER`: with no address from the request, count against the
    /// calling peer's own address. Off by default: when every call comes through one gateway,
    /// that would throttle every user behind it at once.
    pub throttle_peer: bool,
}

/// What one gRPC connection may hold. Without a stream limit hyper accepts every stream a
/// peer opens (each costs memory until the peer ends it); TCP keepalive finds the peers that
/// vanished without closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcConnectionLimits {
    /// `AUTH_GRPC_MAX_CONCURRENT_STREAMS`: calls open at once on one connection, advertised
    /// in SETTINGS; a stream beyond it is refused (RST_STREAM REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// `AUTH_GRPC_KEEPALIVE_INTERVAL`: how long a connection may be silent before the kernel
    /// probes its peer. Whole seconds (rounded up), at most 32,767.
    pub keepalive_interval: Duration,
    /// `AUTH_GRPC_KEEPALIVE_TIMEOUT`: a connection whose peer has not acknowledged a probe,
    /// or data sent to it, within this is closed. Whole seconds (rounded up), at most
    /// 32,767.
    pub keepalive_timeout: Duration,
}

/// The longest keepalive setting: Linux takes whole seconds up to 32,767 for both.
const MAX_KEEPALIVE: Duration = Duration::from_secs(32_767);

/// A TCP keepalive duration, rounded up to the whole seconds the kernel counts in.
fn keepalive_seconds(
    vars: &Vars,
    name: &'static str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let value = vars.duration(name, default)?;
    let seconds = Duration::from_secs(value.as_secs() + u64::from(value.subsec_nanos() > 0));
    if seconds > MAX_KEEPALIVE {
        return Err(error(
            name,
            "must be at most 32767s (9h 6m 7s), the kernel's bound",
        ));
    }
    Ok(seconds)
}

impl TransportSettings {
    pub(super) fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: vars.parsed("AUTH_LISTEN", "127.0.0.1:50051")?,
            tls: TlsFiles::parse(vars)?,
            http_listen: vars.parsed("AUTH_HTTP_LISTEN", "127.0.0.1:8080")?,
            max_request_bytes: vars.number(
                "AUTH_MAX_REQUEST_BYTES",
                16 * 1024,
                1024..=4 * 1024 * 1024,
            )?,
            shutdown_grace: vars.duration("AUTH_SHUTDOWN_GRACE", "10s")?,
            grpc_connection: GrpcConnectionLimits {
                max_concurrent_streams: vars.number(
                    "AUTH_GRPC_MAX_CONCURRENT_STREAMS",
                    100,
                    1..=10_000,
                )?,
                keepalive_interval: keepalive_seconds(vars, "AUTH_GRPC_KEEPALIVE_INTERVAL", "30s")?,
                keepalive_timeout: keepalive_seconds(vars, "AUTH_GRPC_KEEPALIVE_TIMEOUT", "10s")?,
            },
            max_connections: vars.number("AUTH_MAX_CONNECTIONS", 4096, 1..=1_000_000)?,
            handshake_timeout: vars.duration("AUTH_HANDSHAKE_TIMEOUT", "10s")?,
            idle_timeout: vars.duration("AUTH_IDLE_TIMEOUT", "5m")?,
            max_calls_in_flight: vars.number("AUTH_MAX_CALLS_IN_FLIGHT", 1024, 1..=1_000_000)?,
            call_timeout: vars.duration("AUTH_CALL_TIMEOUT", "30s")?,
            client_address: ClientAddressRule {
                // AUTH_TRUST_FORWARDED_FOR, its predecessor, meant one proxy in front.
                trusted_proxy_hops: match vars.get("AUTH_TRUSTED_PROXY_HOPS") {
                    Some(_) => vars.number("AUTH_TRUSTED_PROXY_HOPS", 0, 0..=16)?,
                    None => usize::from(vars.flag("AUTH_TRUST_FORWARDED_FOR", false)?),
                },
                throttle_peer: vars.flag("AUTH_LOGIN_THROTTLE_PEER", false)?,
            },
            browser: BrowserSettings::parse(vars)?,
        })
    }
}

impl TlsFiles {
    fn parse(vars: &Vars) -> Result<Option<Self>, ConfigError> {
        let path = |name: &str| vars.path(name);
        let client_ca = path("AUTH_TLS_CLIENT_CA_FILE");
        match (path("AUTH_TLS_CERT_FILE"), path("AUTH_TLS_KEY_FILE")) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err(error(
                "AUTH_TLS_CLIENT_CA_FILE",
                "needs AUTH_TLS_CERT_FILE and AUTH_TLS_KEY_FILE",
            )),
            (Some(_), None) => Err(error(
                "AUTH_TLS_KEY_FILE",
                "must be set with AUTH_TLS_CERT_FILE",
            )),
            (None, Some(_)) => Err(error(
                "AUTH_TLS_CERT_FILE",
                "must be set with AUTH_TLS_KEY_FILE",
            )),
        }
    }
}
