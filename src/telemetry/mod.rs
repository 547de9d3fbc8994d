//! Logs and traces through one `tracing` subscriber: a log layer filtered by `RUST_LOG`, and
//! when tracing is configured an OpenTelemetry layer exporting over OTLP/gRPC.
//!
//! Only spans made for export reach the collector: one server span per call
//! ([`RPC_TARGET`]), and beneath it the database statements ([`DB_TARGET`]) and the password
//! hashing ([`HASH_TARGET`]). Their fields are chosen to carry no secret and no email, and no
//! event (log line) is ever exported, so an audit line's details stay in the logs. Export is
//! batched on a thread of its own; when the queue is full or the collector does not answer,
//! spans are dropped and counted (`authd_trace_spans_dropped_total`), never waited for.
//!
//! Whether a call is traced is decided once, as it arrives ([`CallSampler`]), before any span
//! exists: a call sampled out then costs a header lookup, not a span that is built and thrown
//! away. The SDK records every span it is given, and statement and hashing spans exist only
//! beneath a traced call.

use std::{
    io::IsTerminal as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
        SpanProcessor,
    },
};
use tracing::subscriber::Interest;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, LevelFilter},
    layer::SubscriberExt as _,
};

use crate::config::{LogFormat, Observability, TraceExport};

mod sampler;
pub use sampler::CallSampler;

/// The target of the server span each call gets.
pub const RPC_TARGET: &str = "authd::rpc";
/// The target of a database statement's span.
pub const DB_TARGET: &str = "authd::db";
/// The target of a password hash's or verification's span.
pub const HASH_TARGET: &str = "authd::hash";
const EXPORTED_TARGETS: [&str; 3] = [RPC_TARGET, DB_TARGET, HASH_TARGET];

/// Spans waiting for export at most; one more is dropped (and counted).
const MAX_QUEUED_SPANS: usize = 2048;
/// Spans sent in one export at most.
const MAX_EXPORT_BATCH: usize = 512;
/// How long shutdown waits for the last spans to leave.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// The running exporter, if any; flushes on [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    sampler: Option<CallSampler>,
}

/// Installs the process-wide subscriber. Call once, inside the Tokio runtime (the exporter's
/// gRPC channel lives on it).
pub fn init(settings: &Observability) -> Result<Telemetry, TelemetryError> {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (subscriber, telemetry) = subscriber(settings, log_filter)?;
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(telemetry)
}

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the settings.
    #[error("while starting the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Another subscriber was installed first.
    #[error("while installing the log and trace subscriber: {0}")]
    Installed(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// The subscriber [`init`] installs: logs filtered by `log_filter`, and spans exported as
/// `settings` say.
fn subscriber(
    settings: &Observability,
    log_filter: EnvFilter,
) -> Result<(Box<dyn tracing::Subscriber + Send + Sync>, Telemetry), TelemetryError> {
    // The spans made for export stay out of the logs: the per-call log line says the same.
    // (The hint keeps `RUST_LOG`'s own: the most verbose level anything here may want, below
    // which the `tracing` macros of h2 and hyper skip even their callsite check.)
    let log_filter = log_filter.and(
        tracing_subscriber::filter::filter_fn(|meta| {
            !(meta.is_span() && EXPORTED_TARGETS.contains(&meta.target()))
        })
        .with_max_level_hint(LevelFilter::TRACE),
    );
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match settings.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter)
            .boxed(),
        // Span fields are flattened into each line; collectors want one flat object.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(log_filter)
            .boxed(),
    };
    let Some(traces) = &settings.traces else {
        let telemetry = Telemetry {
            provider: None,
            sampler: None,
        };
        return Ok((
            Box::new(tracing_subscriber::registry().with(logs)),
            telemetry,
        ));
    };
    let provider = tracer_provider(traces)?;
    // A call's span where the call is traced; statement and hashing spans only beneath one.
    // Decided per callsite wherever possible: every other span and event in the process is of
    // no interest, once and for all.
    let exported = tracing_subscriber::filter::dynamic_filter_fn(|meta, cx| {
        meta.target() == RPC_TARGET || cx.lookup_current().is_some()
    })
    .with_callsite_filter(|meta| {
        if !meta.is_span() || !EXPORTED_TARGETS.contains(&meta.target()) {
            Interest::never()
        } else if meta.target() == RPC_TARGET {
            Interest::always()
        } else {
            Interest::sometimes()
        }
    })
    .with_max_level_hint(LevelFilter::INFO);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("authd"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(exported);
    let telemetry = Telemetry {
        provider: Some(provider),
        sampler: Some(CallSampler::new(traces.sampler)),
    };
    Ok((
        Box::new(tracing_subscriber::registry().with(logs).with(spans)),
        telemetry,
    ))
}

impl Telemetry {
    /// Which calls to trace; `None` when tracing is off.
    pub fn call_sampler(&self) -> Option<CallSampler> {
        self.sampler.clone()
    }

    /// Sends what is still queued, for at most a few seconds, and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while it flushes; the export itself runs on the runtime.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH))
                .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "the last spans were not exported");
        }
    }
}

fn tracer_provider(traces: &TraceExport) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(traces.endpoint.clone())
        .with_timeout(traces.timeout)
        .build()?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batches = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        queued: Arc::clone(&queued),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUED_SPANS)
            .with_max_export_batch_size(MAX_EXPORT_BATCH)
            .build(),
    )
    .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BoundedQueue {
            inner: batches,
            queued,
        })
        // Calls are sampled as they arrive (CallSampler); what reaches the SDK is recorded.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build())
}

/// Counts the spans in the batch processor's queue, and drops (and counts) a span that would
/// not fit: the SDK drops those too, but only says so once.
#[derive(Debug)]
struct BoundedQueue<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
}

impl<P: SpanProcessor> SpanProcessor for BoundedQueue<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let admitted = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued < MAX_QUEUED_SPANS).then_some(queued + 1)
            })
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            crate::metrics::trace_spans_dropped("queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, taking spans off [`BoundedQueue`]'s count and counting failed exports.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        let exported = self.inner.export(batch).await;
        if exported.is_err() {
            crate::metrics::trace_spans_dropped("export_failed", spans);
        }
        exported
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
