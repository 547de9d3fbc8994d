//! What authd says about itself: the log format and where traces go. Read before the other
//! settings, because logging starts first so that their errors are logged in the chosen form.
//!
//! Traces follow OpenTelemetry's standard variables (`OTEL_*`), so that a collector set up for
//! other services needs nothing new. Exactly those listed in the README are read here, checked,
//! and handed to the SDK; a value the SDK would silently ignore stops start-up instead.

use std::{collections::HashMap, time::Duration};

use super::{ConfigError, vars::error};

/// Logging and tracing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Observability {
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where spans are exported; `None` when tracing is off (no endpoint, or disabled).
    pub traces: Option<TraceExport>,
}

/// `AUTH_LOG_FORMAT`: how log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal (the default).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// An OTLP/gRPC trace exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceExport {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: the
    /// collector's OTLP/gRPC address, such as `http://otel-collector:4317`.
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds,
    /// default 10000): how long one export may take before its spans are dropped.
    pub timeout: Duration,
    /// `OTEL_SERVICE_NAME` (default `authd`): the `service.name` of every span.
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: which calls are recorded.
    pub sampler: TraceSampler,
}

/// Which traces are recorded, after OpenTelemetry's `OTEL_TRACES_SAMPLER` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSampler {
    /// Follow the caller's sampling decision when a `traceparent` carries one (the
    /// `parentbased_*` values; the default).
    pub parent_based: bool,
    /// The share of new traces recorded: 1 for `*always_on`, 0 for `*always_off`, the
    /// argument for `*traceidratio`.
    pub ratio: f64,
}

impl Observability {
    /// Reads `AUTH_LOG_FORMAT` and the `OTEL_*` trace settings (after `.env`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(super::vars::environment())
    }

    /// Builds the settings from `(name, value)` pairs; an empty value counts as unset.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, v)| {
                (k.starts_with("OTEL_") || k == "AUTH_LOG_FORMAT") && !v.trim().is_empty()
            })
            .collect();
        let get = |name: &str| vars.get(name).map(|v| v.trim());
        Ok(Self {
            log_format: LogFormat::parse(get("AUTH_LOG_FORMAT"))?,
            traces: TraceExport::parse(&get)?,
        })
    }
}

impl LogFormat {
    fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(_) => Err(error("AUTH_LOG_FORMAT", "must be text or json")),
        }
    }
}

impl TraceExport {
    fn parse<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Option<Self>, ConfigError> {
        match get("OTEL_SDK_DISABLED")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false") => {}
            Some("true") => return Ok(None),
            Some(_) => return Err(error("OTEL_SDK_DISABLED", "must be true or false")),
        }
        match get("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(_) => {
                return Err(error(
                    "OTEL_TRACES_EXPORTER",
                    "must be otlp or none (authd exports OTLP over gRPC)",
                ));
            }
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = get(variable) {
                if protocol != "grpc" {
                    return Err(error(
                        variable,
                        "must be grpc (authd exports OTLP over gRPC)",
                    ));
                }
                break;
            }
        }
        let endpoint_variable = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find(|variable| get(variable).is_some());
        let Some(endpoint_variable) = endpoint_variable else {
            return Ok(None);
        };
        let endpoint = get(endpoint_variable).unwrap_or_default().to_owned();
        let valid = endpoint.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
        });
        if !valid {
            return Err(error(
                endpoint_variable,
                "must be an http:// or https:// address, such as http://otel-collector:4317",
            ));
        }
        let timeout = match [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .into_iter()
        .find_map(|variable| get(variable).map(|value| (variable, value)))
        {
            None => Duration::from_secs(10),
            Some((variable, value)) => match value.parse::<u64>() {
                Ok(millis) if millis > 0 => Duration::from_millis(millis),
                _ => return Err(error(variable, "must be a positive number of milliseconds")),
            },
        };
        Ok(Some(Self {
            endpoint,
            timeout,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or("authd").to_owned(),
            sampler: TraceSampler::parse(
                get("OTEL_TRACES_SAMPLER"),
                get("OTEL_TRACES_SAMPLER_ARG"),
            )?,
        }))
    }
}

impl TraceSampler {
    fn parse(sampler: Option<&str>, argument: Option<&str>) -> Result<Self, ConfigError> {
        let sampler = sampler.unwrap_or("parentbased_always_on");
        let (parent_based, kind) = match sampler.strip_prefix("parentbased_") {
            Some(kind) => (true, kind),
            None => (false, sampler),
        };
        let ratio = match kind {
            "always_on" => 1.0,
            "always_off" => 0.0,
            "traceidratio" => match argument.map(str::parse::<f64>) {
                None => 1.0,
                Some(Ok(ratio)) if (0.0..=1.0).contains(&ratio) => ratio,
                Some(_) => {
                    return Err(error(
                        "OTEL_TRACES_SAMPLER_ARG",
                        "must be a ratio from 0 to 1",
                    ));
                }
            },
            _ => {
                return Err(error(
                    "OTEL_TRACES_SAMPLER",
                    "must be always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        };
        Ok(Self {
            parent_based,
            ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Observability, ConfigError> {
        Observability::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        assert_eq!(settings(&[]).unwrap().log_format, LogFormat::Text);
        let json = settings(&[("AUTH_LOG_FORMAT", "JSON")]).unwrap();
        assert_eq!(json.log_format, LogFormat::Json);
        let bad = settings(&[("AUTH_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(bad.variable, "AUTH_LOG_FORMAT");
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(&[]).unwrap().traces, None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(settings(&[endpoint, off]).unwrap().traces, None, "{off:?}");
        }
    }

    #[test]
    fn the_trace_endpoint_timeout_name_and_sampler_follow_the_standard_variables() {
        let traces = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])
            .unwrap()
            .traces
            .unwrap();
        assert_eq!(
            traces,
            TraceExport {
                endpoint: "http://collector:4317".into(),
                timeout: Duration::from_secs(10),
                service_name: "authd".into(),
                sampler: TraceSampler {
                    parent_based: true,
                    ratio: 1.0
                },
            }
        );
        let traces = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_SERVICE_NAME", "authd-eu"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .traces
        .unwrap();
        assert_eq!(traces.endpoint, "https://traces:4317");
        assert_eq!(traces.timeout, Duration::from_millis(2500));
        assert_eq!(traces.service_name, "authd-eu");
        assert_eq!(
            traces.sampler,
            TraceSampler {
                parent_based: false,
                ratio: 0.25
            }
        );
    }

    #[test]
    fn a_bad_trace_setting_names_its_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        for (variable, bad) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_SDK_DISABLED", "maybe"),
        ] {
            let sampler = ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
            let found = settings(&[endpoint, sampler, (variable, bad)]).unwrap_err();
            assert_eq!(found.variable, variable, "{variable}={bad}");
        }
    }
}
