//! gRPC calls and their latency, in fixed buckets counted by atomics: a call adds to its bucket
//! and to the sum, with no clock reading and nothing kept per call. (The exporter's histograms
//! keep every sample with a timestamp of its own until upkeep: a clock reading per call and
//! memory that grows with the traffic; measured side by side, they cost Validate about 3.5%
//! of its server CPU.) The call counter is the buckets' total, rendered as a counter of its
//! own: one more atomic addition per call would count the same calls again.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Latency buckets' upper bounds, in seconds, from 100 µs (Validate) to 10 s (a Login queued
/// behind argon2).
pub(super) const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The histogram's name, as rendered.
const NAME: &str = "authd_rpc_duration_seconds";
/// The call counter's name, as rendered.
const CALLS: &str = "authd_rpc_requests_total";

/// The calls of one service, method and status code, and their latency.
#[derive(Debug, Default)]
pub struct Latency {
    /// Calls per bucket, not cumulative; the last counts those beyond every bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// Counts one call that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.partition_point(|&bound| bound < seconds);
        // Relaxed: each counter is exact on its own; a scrape needs no order between them.
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts as they stand, read once for a scrape.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .each_ref()
                .map(|bucket| bucket.load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// One series' counts as one scrape renders them: the call counter and the histogram's count
/// come from the same reading, so that they agree.
struct Snapshot {
    buckets: [u64; BUCKETS.len() + 1],
    sum_nanos: u64,
}

impl Snapshot {
    /// The calls counted.
    fn calls(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Appends this series' histogram to a scrape: its cumulative buckets, then sum and
    /// count. The count is the buckets' total, so that it always equals the `+Inf` bucket.
    fn render(&self, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (bucket, bound) in self
            .buckets
            .iter()
            .zip(BUCKETS.iter().map(Some).chain([None]))
        {
            cumulative += bucket;
            let _ = match bound {
                Some(bound) => {
                    writeln!(out, "{NAME}_bucket{{{labels},le=\"{bound}\"}} {cumulative}")
                }
                None => writeln!(out, "{NAME}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"),
            };
        }
        let sum = self.sum_nanos as f64 / 1e9;
        let _ = writeln!(out, "{NAME}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{NAME}_count{{{labels}}} {cumulative}");
    }
}

/// Every series made so far, by their rendered labels (in the order a scrape lists them).
static SERIES: Mutex<BTreeMap<String, Arc<Latency>>> = Mutex::new(BTreeMap::new());

/// The series of `service`, `method` and `code`: made on first use, the same one afterwards.
pub(super) fn series(service: &str, method: &str, code: &str) -> Arc<Latency> {
    let labels = format!(
        "service=\"{}\",method=\"{}\",code=\"{}\"",
        escape(service),
        escape(method),
        escape(code)
    );
    let mut series = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(series.entry(labels).or_default())
}

/// Appends the call counter and the latency histogram to a scrape in Prometheus' text format,
/// each with its HELP and TYPE and every series.
pub(super) fn render(out: &mut String) {
    let series = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    if series.is_empty() {
        return;
    }
    let snapshots: Vec<_> = series
        .iter()
        .map(|(labels, latency)| (labels, latency.snapshot()))
        .collect();
    let _ = writeln!(
        out,
        "# HELP {CALLS} gRPC calls (AuthService, health, reflection), by service, method and status code.\n# TYPE {CALLS} counter"
    );
    for (labels, snapshot) in &snapshots {
        let _ = writeln!(out, "{CALLS}{{{labels}}} {}", snapshot.calls());
    }
    let _ = writeln!(
        out,
        "# HELP {NAME} gRPC call latency, by service, method and status code.\n# TYPE {NAME} histogram"
    );
    for (labels, snapshot) in &snapshots {
        snapshot.render(labels, out);
    }
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `latency`'s series under `labels`.
    fn rendered(latency: &Latency, labels: &str) -> Vec<String> {
        let mut out = String::new();
        latency.snapshot().render(labels, &mut out);
        out.lines().map(str::to_owned).collect()
    }

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let latency = Latency::default();
        latency.record(Duration::from_micros(50)); // le 0.0001
        latency.record(Duration::from_micros(100)); // le 0.0001: on the bound
        latency.record(Duration::from_micros(101)); // le 0.00025
        latency.record(Duration::from_secs(3)); // le 5
        latency.record(Duration::from_secs(60)); // beyond every bound
        let lines = rendered(&latency, "m=\"x\"");
        assert_eq!(lines.len(), BUCKETS.len() + 3);
        assert_eq!(
            lines[0],
            "authd_rpc_duration_seconds_bucket{m=\"x\",le=\"0.0001\"} 2"
        );
        assert_eq!(
            lines[1],
            "authd_rpc_duration_seconds_bucket{m=\"x\",le=\"0.00025\"} 3"
        );
        assert_eq!(
            lines[13],
            "authd_rpc_duration_seconds_bucket{m=\"x\",le=\"2.5\"} 3"
        );
        assert_eq!(
            lines[14],
            "authd_rpc_duration_seconds_bucket{m=\"x\",le=\"5\"} 4"
        );
        assert_eq!(
            lines[15],
            "authd_rpc_duration_seconds_bucket{m=\"x\",le=\"10\"} 4"
        );
        assert_eq!(
            lines[16],
            "authd_rpc_duration_seconds_bucket{m=\"x\",le=\"+Inf\"} 5"
        );
        assert_eq!(
            lines[17],
            "authd_rpc_duration_seconds_sum{m=\"x\"} 63.000251"
        );
        assert_eq!(lines[18], "authd_rpc_duration_seconds_count{m=\"x\"} 5");
    }

    #[test]
    fn one_series_per_labels_however_often_asked_for() {
        let first = series("test.Service", "Same", "OK");
        let again = series("test.Service", "Same", "OK");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(
            &first,
            &series("test.Service", "Same", "INTERNAL")
        ));
    }

    #[test]
    fn a_scrape_carries_help_type_and_every_series_with_quoted_labels() {
        let quoted = series("test.Quoted", "a\"b\\c\nd", "OK");
        quoted.record(Duration::from_millis(1));
        quoted.record(Duration::from_secs(60));
        let mut out = String::new();
        render(&mut out);
        assert!(out.starts_with(
            "# HELP authd_rpc_requests_total gRPC calls (AuthService, health, reflection), by service, method and status code.\n\
             # TYPE authd_rpc_requests_total counter\n"
        ));
        let labels = "{service=\"test.Quoted\",method=\"a\\\"b\\\\c\\nd\",code=\"OK\"}";
        let histogram = out
            .find(
                "# HELP authd_rpc_duration_seconds gRPC call latency, by service, method and status code.\n\
                 # TYPE authd_rpc_duration_seconds histogram\n",
            )
            .unwrap();
        let calls = out.find(&format!("authd_rpc_requests_total{labels} 2\n"));
        assert!(calls.is_some_and(|at| at < histogram), "{out}");
        assert!(
            out[histogram..].contains(&format!("authd_rpc_duration_seconds_count{labels} 2\n")),
            "{out}"
        );
    }
}
