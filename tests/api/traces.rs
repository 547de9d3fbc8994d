//! OpenTelemetry traces, received by a real OTLP/gRPC receiver (tonic with the
//! `opentelemetry-proto` service) from the real `authd` binary.

use crate::common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Backend, PASSWORD, TestDatabase, eventually, http_get, process::AuthdProcess};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, metadata::MetadataValue};

/// A span as received: its resource's attributes, and the span.
type ResourceSpan = (Vec<KeyValue>, Span);

/// Every span received.
#[derive(Debug, Default, Clone)]
struct Received(Arc<Mutex<Vec<ResourceSpan>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default().attributes;
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((resource.clone(), span));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free loopback port, until the sender is dropped or fired.
async fn receiver() -> (SocketAddr, Received, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (addr, received, stop)
}

/// Settings that point authd at `collector` and export every 100 ms. Logs only warnings (and
/// the "listening" line the tests wait for): what is traced does not depend on what is logged.
fn exporting_to(collector: SocketAddr) -> [(&'static str, String); 4] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_SERVICE_NAME", "authd-under-test".to_owned()),
        ("RUST_LOG", "warn,authd::server=info".to_owned()),
    ]
}

fn as_pairs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
}

fn string(value: &str) -> Value {
    Value::StringValue(value.to_owned())
}

/// A request carrying the caller's W3C trace context.
fn traced<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_traced_under_the_callers_trace_with_child_spans_and_no_secret() {
    use authd::proto::{LoginRequest, RefreshRequest, ValidateRequest};
    let (collector, received, _stop) = receiver().await;
    let db = TestDatabase::create(Backend::Sqlite).await;
    let email = "traced@example.com";
    common::add_user(&db, email, PASSWORD).await;
    let server = AuthdProcess::spawn(&db, &as_pairs(&exporting_to(collector))).await;
    let mut client = server.client().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let login = LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    // A caller that does not sample its trace: neither the call nor its statements are traced.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    client
        .login(traced(login.clone(), unsampled))
        .await
        .unwrap();
    let sampled = format!("00-{trace_id}-{parent_id}-01");
    let tokens = client
        .login(traced(login, &sampled))
        .await
        .unwrap()
        .into_inner();
    let refreshed = client
        .refresh(traced(
            RefreshRequest {
                refresh_token: tokens.refresh_token.clone(),
                client: None,
            },
            &sampled,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .validate(traced(
            ValidateRequest {
                access_token: refreshed.access_token.clone(),
            },
            &sampled,
        ))
        .await
        .unwrap();

    let trace_id_bytes = hex(trace_id);
    let spans = eventually(Duration::from_secs(20), "the three calls' spans", || {
        let received = received.clone();
        let trace_id_bytes = trace_id_bytes.clone();
        async move {
            let spans: Vec<_> = received
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, span)| span.trace_id == trace_id_bytes)
                .cloned()
                .collect();
            let servers = spans
                .iter()
                .filter(|(_, span)| span.kind == SpanKind::Server as i32)
                .count();
            // The children end before their server span, so they are exported with or before it.
            (servers == 3).then_some(spans)
        }
    })
    .await;

    // Nothing else was traced: not the unsampled Login, nor its statements as traces of their own.
    let others: Vec<_> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, span)| span.trace_id != trace_id_bytes)
        .map(|(_, span)| span.name.clone())
        .collect();
    assert!(
        others.is_empty(),
        "spans outside the sampled trace: {others:?}"
    );

    let server_span = |method: &str| {
        spans
            .iter()
            .map(|(_, span)| span)
            .find(|span| span.name == format!("auth.v1.AuthService/{method}"))
            .unwrap_or_else(|| panic!("no server span for {method}: {spans:#?}"))
    };
    let login_span = server_span("Login");
    assert_eq!(login_span.kind, SpanKind::Server as i32);
    assert_eq!(
        login_span.parent_span_id,
        hex(parent_id),
        "continues the caller's span"
    );
    for (key, value) in [
        ("rpc.system", string("grpc")),
        ("rpc.service", string("auth.v1.AuthService")),
        ("rpc.method", string("Login")),
        ("rpc.grpc.status_code", Value::IntValue(0)),
    ] {
        assert_eq!(
            attribute(&login_span.attributes, key),
            Some(&value),
            "{key} of {login_span:#?}"
        );
    }
    let children: Vec<&Span> = spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.parent_span_id == login_span.span_id)
        .collect();
    assert!(
        children.iter().any(|span| span.name == "argon2id verify"),
        "a hashing span under Login: {children:#?}"
    );
    let statements: Vec<_> = children
        .iter()
        .filter(|span| attribute(&span.attributes, "db.system.name") == Some(&string("sqlite")))
        .map(|span| span.name.as_str())
        .collect();
    assert!(
        statements.contains(&"login_user") && statements.contains(&"create_session"),
        "statement spans under Login: {statements:?}"
    );
    for method in ["Refresh", "Validate"] {
        let span = server_span(method);
        assert_eq!(span.parent_span_id, hex(parent_id));
        assert_eq!(
            attribute(&span.attributes, "rpc.method"),
            Some(&string(method))
        );
    }
    let (resource, _) = &spans[0];
    assert_eq!(
        attribute(resource, "service.name"),
        Some(&string("authd-under-test"))
    );

    // Nothing secret or personal in any attribute or event of any span.
    let stored = common::rows::password_hash(&db, email).await;
    let mut phc = stored.rsplit('$');
    let (hash, salt) = (phc.next().unwrap(), phc.next().unwrap());
    let secrets = [
        email,
        PASSWORD,
        &tokens.refresh_token,
        &tokens.access_token,
        &refreshed.refresh_token,
        &refreshed.access_token,
        hash,
        salt,
    ];
    let everything = format!("{:?}", received.0.lock().unwrap());
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} was exported");
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_gone_calls_succeed_and_the_lost_spans_are_counted() {
    let (collector, _received, stop) = receiver().await;
    let db = TestDatabase::create(Backend::Sqlite).await;
    common::add_user(&db, "alone@example.com", PASSWORD).await;
    let server = AuthdProcess::spawn(&db, &as_pairs(&exporting_to(collector))).await;
    stop.send(()).unwrap();
    let client = server.client().await;
    let session = common::login(&client, "alone@example.com", PASSWORD)
        .await
        .unwrap();
    for _ in 0..200 {
        common::validate(&client, &session.access_token)
            .await
            .unwrap();
    }
    common::refresh(&client, &session.refresh_token)
        .await
        .unwrap();
    let http = server.http_addr();
    eventually(Duration::from_secs(20), "dropped spans counted", || async {
        let (_, body) = http_get(http, "/metrics").await;
        let dropped: f64 = body
            .lines()
            .filter(|line| {
                line.starts_with("authd_trace_spans_dropped_total{reason=\"export_failed\"}")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (dropped >= 200.0).then_some(())
    })
    .await;
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
