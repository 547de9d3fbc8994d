//! Which calls are traced: decided once, as a call arrives, from its `traceparent` and the
//! configured sampler, before any span exists.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{SpanKind, TraceContextExt as _, TraceId},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample as _},
};
use tonic::codegen::http;

use crate::config::TraceSampler;

/// Decides, from its `traceparent`, whether a call is traced, the way OpenTelemetry's samplers
/// of the same names would: `parentbased_*` follows the caller's sampled flag, and otherwise
/// (or without a caller's trace) the ratio decides by trace id.
#[derive(Debug, Clone)]
pub struct CallSampler {
    parent_based: bool,
    ratio: Sampler,
    propagator: TraceContextPropagator,
    ids: RandomIdGenerator,
}

impl CallSampler {
    pub(super) fn new(settings: TraceSampler) -> Self {
        Self {
            parent_based: settings.parent_based,
            ratio: match settings.ratio {
                ratio if ratio <= 0.0 => Sampler::AlwaysOff,
                ratio if ratio >= 1.0 => Sampler::AlwaysOn,
                ratio => Sampler::TraceIdRatioBased(ratio),
            },
            propagator: TraceContextPropagator::new(),
            ids: RandomIdGenerator::default(),
        }
    }

    /// The caller's trace context (empty without a valid `traceparent`) when the call is to be
    /// traced, `None` when it is sampled out.
    pub fn sample(&self, headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
        if headers.contains_key(TRACEPARENT) {
            let caller = self.propagator.extract(&HeaderExtractor(headers));
            let parent = caller.span().span_context().clone();
            if parent.is_valid() {
                let traced = if self.parent_based {
                    parent.is_sampled()
                } else {
                    self.ratio_admits(parent.trace_id())
                };
                return traced.then_some(caller);
            }
        }
        let admitted = match self.ratio {
            // `always_off` and `always_on` need no trace id to decide.
            Sampler::AlwaysOff => false,
            Sampler::AlwaysOn => true,
            _ => self.ratio_admits(self.ids.new_trace_id()),
        };
        admitted.then(opentelemetry::Context::new)
    }

    fn ratio_admits(&self, trace_id: TraceId) -> bool {
        let result = self
            .ratio
            .should_sample(None, trace_id, "", &SpanKind::Server, &[], &[]);
        result.decision == SamplingDecision::RecordAndSample
    }
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Reads `traceparent` and `tracestate` from a request's headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_traceparent(flags: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        let value = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        headers.insert(TRACEPARENT, value.parse().unwrap());
        headers
    }

    fn sampler(parent_based: bool, ratio: f64) -> CallSampler {
        CallSampler::new(TraceSampler {
            parent_based,
            ratio,
        })
    }

    #[test]
    fn parent_based_sampling_follows_the_callers_flag() {
        let sampler = sampler(true, 0.0);
        let traced = sampler.sample(&with_traceparent("01")).unwrap();
        assert_eq!(
            traced.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sampler.sample(&with_traceparent("00")).is_none());
        // No caller: the ratio decides (here: never).
        assert!(sampler.sample(&http::HeaderMap::new()).is_none());
        assert!(
            self::sampler(true, 1.0)
                .sample(&http::HeaderMap::new())
                .is_some()
        );
    }

    #[test]
    fn without_parent_based_sampling_the_ratio_decides() {
        assert!(
            sampler(false, 0.0)
                .sample(&with_traceparent("01"))
                .is_none()
        );
        assert!(
            sampler(false, 1.0)
                .sample(&with_traceparent("00"))
                .is_some()
        );
        let half = sampler(false, 0.5);
        let traced = (0..2000)
            .filter(|_| half.sample(&http::HeaderMap::new()).is_some())
            .count();
        assert!(
            (800..1200).contains(&traced),
            "{traced} of 2000 traced at 0.5"
        );
    }

    #[test]
    fn a_malformed_traceparent_counts_as_none() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        assert!(sampler(true, 0.0).sample(&headers).is_none());
        let traced = sampler(true, 1.0).sample(&headers).unwrap();
        assert!(!traced.span().span_context().is_valid(), "a new root");
    }
}
