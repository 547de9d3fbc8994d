//! What operators see: Prometheus metrics at `/metrics` after real traffic, and JSON logs.

use crate::common;

use std::{collections::BTreeMap, time::Duration};

use common::{
    Backend, PASSWORD, TestApp, TestDatabase, eventually, http_get, login, logout,
    process::AuthdProcess, refresh, validate,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

on_both_backends!(every_metric_appears_in_a_scrape_after_traffic);

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses a scrape: every line is a comment or a well-formed sample, or the test fails.
fn parse_scrape(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn every_metric_appears_in_a_scrape_after_traffic(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("AUTH_CLEANUP_SCHEDULE", "* * * * * *"),
            ("AUTH_LOGIN_FREE_ATTEMPTS", "1"),
        ],
    )
    .await;
    let session = app.user_with_session("metrics@example.com").await;
    validate(&app.client, &session.access_token).await.unwrap();
    let rotated = refresh(&app.client, &session.refresh_token).await.unwrap();
    // The old token again: reuse, and the session is revoked.
    common::assert_refresh_refused(&app.client, &session.refresh_token, "REFRESH_TOKEN_REUSED")
        .await;
    let other = app.login("metrics@example.com", PASSWORD).await.unwrap();
    logout(&app.client, &other.refresh_token, false)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "a throttled login", || async {
        let refused = login(&app.client, "metrics@example.com", "wrong password")
            .await
            .unwrap_err();
        if refused.code() == Code::ResourceExhausted {
            common::assert_status(&refused, Code::ResourceExhausted, "LOGIN_THROTTLED");
            return Some(());
        }
        common::assert_status(&refused, Code::Unauthenticated, "INVALID_CREDENTIALS");
        None
    })
    .await;

    // Health checks are counted like any call.
    assert_eq!(
        common::health(app.addr, "").await.unwrap(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // A stream is counted when it ends, not at its head as a unary call is: one the client
    // walks away from is CANCELLED.
    {
        let channel = Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(watch.message().await.unwrap().is_some(), "no first status");
    }
    let watch_cancelled = [
        ("service", "grpc.health.v1.Health"),
        ("method", "Watch"),
        ("code", "CANCELLED"),
    ];

    let samples = eventually(
        Duration::from_secs(10),
        "a clean-up run and the cancelled Watch counted",
        || async {
            let (head, body) = http_get(app.http_addr, "/metrics").await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(head.contains("text/plain; version=0.0.4"), "{head}");
            let samples = parse_scrape(&body);
            (value(
                &samples,
                "authd_cleanup_runs_total",
                &[("outcome", "success")],
            )
            .is_some()
                && value(&samples, "authd_rpc_requests_total", &watch_cancelled).is_some())
            .then_some((samples, body))
        },
    )
    .await;
    let (samples, text) = samples;
    let at_least_one = |name: &str, labels: &[(&str, &str)]| {
        let found = value(&samples, name, labels);
        assert!(
            found.is_some_and(|v| v >= 1.0),
            "{name}{labels:?} = {found:?} in\n{text}"
        );
    };
    for (method, code) in [
        ("Login", "OK"),
        ("Login", "UNAUTHENTICATED"),
        ("Login", "RESOURCE_EXHAUSTED"),
        ("Refresh", "OK"),
        ("Refresh", "UNAUTHENTICATED"),
        ("Logout", "OK"),
        ("Validate", "OK"),
    ] {
        let labels = [
            ("service", "auth.v1.AuthService"),
            ("method", method),
            ("code", code),
        ];
        at_least_one("authd_rpc_requests_total", &labels);
        at_least_one("authd_rpc_duration_seconds_count", &labels);
        at_least_one(
            "authd_rpc_duration_seconds_bucket",
            &[("method", method), ("code", code), ("le", "+Inf")],
        );
    }
    let health = [
        ("service", "grpc.health.v1.Health"),
        ("method", "Check"),
        ("code", "OK"),
    ];
    at_least_one("authd_rpc_requests_total", &health);
    at_least_one("authd_rpc_duration_seconds_count", &health);
    at_least_one("authd_rpc_duration_seconds_count", &watch_cancelled);
    let watch_ok = [
        ("service", "grpc.health.v1.Health"),
        ("method", "Watch"),
        ("code", "OK"),
    ];
    assert_eq!(
        value(&samples, "authd_rpc_requests_total", &watch_ok),
        None,
        "a stream counted at its head"
    );
    at_least_one("authd_login_failures_total", &[]);
    at_least_one("authd_login_throttled_total", &[]);
    at_least_one("authd_refresh_token_reuse_total", &[]);
    at_least_one("authd_sessions_revoked_total", &[("reason", "reuse")]);
    at_least_one("authd_sessions_revoked_total", &[("reason", "logout")]);
    at_least_one("authd_revocation_set_size", &[]);
    at_least_one(
        "authd_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
    );
    for table in ["sessions", "legacy_refresh_tokens", "login_attempts"] {
        let deleted = value(
            &samples,
            "authd_cleanup_deleted_rows_total",
            &[("table", table)],
        );
        assert!(
            deleted.is_some(),
            "no clean-up count for {table} in\n{text}"
        );
    }
    let max = value(&samples, "authd_db_pool_max_connections", &[]);
    assert_eq!(max, Some(f64::from(app.config.database.max_connections)));
    for state in ["idle", "in_use"] {
        let connections = value(&samples, "authd_db_pool_connections", &[("state", state)]);
        assert!(connections.is_some(), "no pool {state} gauge in\n{text}");
    }
    // Every exported metric is described for whoever reads the scrape.
    for sample in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| sample.name.strip_suffix(suffix))
            .filter(|family| text.contains(&format!("# TYPE {family} histogram")))
            .unwrap_or(&sample.name);
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no HELP line"
        );
    }
    prometheus_parses_the_scrape(&text).await;
    drop(rotated);
}

/// The official Prometheus client's own parser reads the whole scrape, and finds the call
/// latency a histogram whose buckets never decrease and whose count is its `+Inf` bucket.
async fn prometheus_parses_the_scrape(text: &str) {
    const CHECK: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
latency = families["authd_rpc_duration_seconds"]
assert latency.type == "histogram", latency.type
series = {}
for sample in latency.samples:
    labels = dict(sample.labels)
    le = labels.pop("le", None)
    key = tuple(sorted(labels.items()))
    entry = series.setdefault(key, {"buckets": [], "count": None})
    if sample.name.endswith("_bucket"):
        entry["buckets"].append((float(le), sample.value))
    elif sample.name.endswith("_count"):
        entry["count"] = sample.value
for key, entry in series.items():
    counts = [value for _, value in sorted(entry["buckets"])]
    assert counts == sorted(counts), (key, counts)
    assert counts[-1] == entry["count"], (key, counts[-1], entry["count"])
print(len(families), "families;", len(series), "latency series")
"#;
    let mut python = tokio::process::Command::new("python3");
    python
        .args(["-c", CHECK])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = python.spawn().expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the parser answers within 30 s")
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "prometheus_client refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("latency series"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let mut server = AuthdProcess::spawn(&db, &[("AUTH_LOG_FORMAT", "json")]).await;
    let client = server.client().await;
    validate(&client, "not-a-token").await.unwrap_err();
    let log = eventually(Duration::from_secs(10), "the call's log line", || async {
        let log = server.log.lock().unwrap().clone();
        log.contains(r#""method":"Validate""#).then_some(log)
    })
    .await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let rpc = lines
        .iter()
        .find(|line| line["method"] == "Validate")
        .unwrap();
    assert_eq!(rpc["message"], "rpc");
    assert_eq!(rpc["level"], "INFO");
    assert_eq!(rpc["code"], "Unauthenticated");
    assert!(rpc["timestamp"].is_string() && rpc["latency_ms"].is_number());
    assert!(lines.iter().any(|line| line["message"] == "listening"));
    server.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_format_stops_start_up_with_a_clear_error() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let output = common::process::authd_command(&db, &[("AUTH_LOG_FORMAT", "xml")])
        .arg("serve")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AUTH_LOG_FORMAT: must be text or json"),
        "{stderr}"
    );
}
