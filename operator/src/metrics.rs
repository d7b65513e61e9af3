//! Prometheus metrics. Labels are low-cardinality: controller names and error categories, never
//! object names.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("sectordb".into()), None).expect("a valid prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles run"),
            &["controller"],
        )
        .unwrap();
        let failures = IntCounterVec::new(
            Opts::new(
                "reconcile_failures_total",
                "Reconciles that failed, by error category",
            ),
            &["controller", "category"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["controller"],
        )
        .unwrap();
        let writes = IntCounterVec::new(
            Opts::new(
                "api_writes_total",
                "Writes sent to the apiserver, by controller and what was written",
            ),
            &["controller", "resource"],
        )
        .unwrap();
        let leader =
            IntGauge::new("leader", "1 while this replica holds the leader Lease").unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metrics are registered once");
        }
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            writes,
            leader,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        ReconcileTimer {
            histogram: self.duration.with_label_values(&[controller]),
            start: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &str, category: &str) {
        self.failures
            .with_label_values(&[controller, category])
            .inc();
    }

    /// Counts a write; a steady state must make none.
    pub fn write(&self, controller: &str, resource: &str) {
        self.writes.with_label_values(&[controller, resource]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// Records the reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
