//! Prometheus metrics, rendered by hand in the text exposition format (a handful of series does
//! not need a metrics library).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests carrying upload bytes right now.
    pub uploads_in_flight: Gauge,
    pub upload_bytes: Counter,
    pub webhook_failures: Counter,
    pub webhook_deliveries: Counter,
    /// Scale-out mode: jobs handed to the queue.
    pub jobs_published: Counter,
    verdicts: Mutex<BTreeMap<String, u64>>,
    /// Media time / wall time of the last final verdict, in thousandths.
    realtime_milli: AtomicU64,
    /// Models loaded and workers started.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn verdict(&self, decision: &str) {
        *self
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(decision.to_string())
            .or_default() += 1;
    }

    /// For an upload the wall time includes waiting for bytes, so this is at most the upload pace.
    pub fn record_realtime(&self, media_ms: u64, wall: Duration) {
        let wall_ms = wall.as_millis().max(1) as u64;
        self.realtime_milli
            .store(media_ms * 1000 / wall_ms, Ordering::Relaxed);
    }

    pub fn render(&self, queue_depth: i64) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        metric(
            "classguard_uploads_in_flight",
            "gauge",
            "Requests carrying upload bytes right now.",
            vec![(String::new(), self.uploads_in_flight.get().to_string())],
        );
        metric(
            "classguard_upload_bytes_total",
            "counter",
            "Upload bytes received.",
            vec![(String::new(), self.upload_bytes.get().to_string())],
        );
        metric(
            "classguard_jobs_published_total",
            "counter",
            "Scale-out mode: audit jobs handed to the queue.",
            vec![(String::new(), self.jobs_published.get().to_string())],
        );
        metric(
            "classguard_queue_depth",
            "gauge",
            "Audit jobs queued or running.",
            vec![(String::new(), queue_depth.to_string())],
        );
        let verdicts = self
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(d, n)| (format!("{{decision=\"{d}\"}}"), n.to_string()))
            .collect();
        metric(
            "classguard_verdicts_total",
            "counter",
            "Final verdicts by decision.",
            verdicts,
        );
        metric(
            "classguard_audit_realtime_factor",
            "gauge",
            "Media time over wall time of the last final verdict.",
            vec![(
                String::new(),
                format!(
                    "{:.3}",
                    self.realtime_milli.load(Ordering::Relaxed) as f64 / 1000.0
                ),
            )],
        );
        metric(
            "classguard_webhook_deliveries_total",
            "counter",
            "Webhook events delivered (2xx).",
            vec![(String::new(), self.webhook_deliveries.get().to_string())],
        );
        metric(
            "classguard_webhook_failures_total",
            "counter",
            "Webhook delivery attempts that failed.",
            vec![(String::new(), self.webhook_failures.get().to_string())],
        );
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_series_with_labels() {
        let m = super::Metrics::default();
        m.verdict("pass");
        m.verdict("pass");
        m.verdict("block");
        m.upload_bytes.add(10);
        let text = m.render(3);
        assert!(text.contains("classguard_verdicts_total{decision=\"pass\"} 2\n"));
        assert!(text.contains("classguard_verdicts_total{decision=\"block\"} 1\n"));
        assert!(text.contains("classguard_queue_depth 3\n"));
        assert!(text.contains("classguard_upload_bytes_total 10\n"));
    }
}
