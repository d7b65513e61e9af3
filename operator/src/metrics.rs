//! Prometheus metrics. Counters carry low-cardinality labels only (controller names, error
//! categories). The backup gauges carry the database's namespace and name: one series per
//! database, removed when the database is deleted, as a province's count of databases bounds them.

use std::time::Instant;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::api::database::BackupState;
use crate::api::policy::MirrorStatus;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    writes: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    backup_time: IntGaugeVec,
    backup_size: IntGaugeVec,
    wal_archived: IntGaugeVec,
    drill_success: IntGaugeVec,
    drill_seconds: IntGaugeVec,
    drill_time: IntGaugeVec,
    mirror_lag: IntGaugeVec,
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
        let per_database = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["namespace", "database"]).unwrap()
        };
        let backup_time = per_database(
            "backup_last_success_timestamp_seconds",
            "When the latest backup in the primary repository completed (Unix time)",
        );
        let backup_size = per_database(
            "backup_last_size_bytes",
            "What the latest backup added to the primary repository, in bytes",
        );
        let wal_archived = per_database(
            "wal_last_archived_timestamp_seconds",
            "When PostgreSQL last archived a WAL segment (Unix time); time() minus it is the archive's age",
        );
        let drill_success = per_database(
            "restore_drill_success",
            "1 when the latest restore drill passed, 0 when it failed",
        );
        let drill_seconds = per_database(
            "restore_drill_restore_seconds",
            "How long the latest restore drill took from restore to promotion, in seconds",
        );
        let drill_time = per_database(
            "restore_drill_timestamp_seconds",
            "When the latest restore drill finished (Unix time)",
        );
        let mirror_lag = IntGaugeVec::new(
            Opts::new(
                "mirror_lag_seconds",
                "How far an off-site mirror is behind its primary repository: 0 after a complete pass, else seconds since the last one",
            ),
            &["policy", "repository"],
        )
        .unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
            Box::new(backup_time.clone()),
            Box::new(backup_size.clone()),
            Box::new(wal_archived.clone()),
            Box::new(drill_success.clone()),
            Box::new(drill_seconds.clone()),
            Box::new(drill_time.clone()),
            Box::new(mirror_lag.clone()),
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
            backup_time,
            backup_size,
            wal_archived,
            drill_success,
            drill_seconds,
            drill_time,
            mirror_lag,
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

    /// The backup gauges of one database, from its status.
    pub fn backup(&self, namespace: &str, database: &str, state: &BackupState) {
        let labels = [namespace, database];
        if let Some(last) = &state.last_successful {
            self.backup_time
                .with_label_values(&labels)
                .set(last.time.0.as_second());
            self.backup_size
                .with_label_values(&labels)
                .set(last.size_bytes);
        }
        if let Some(until) = &state.recoverable_until {
            self.wal_archived
                .with_label_values(&labels)
                .set(until.0.as_second());
        }
        if let Some(drill) = &state.last_drill {
            self.drill_success
                .with_label_values(&labels)
                .set(i64::from(drill.succeeded));
            self.drill_seconds
                .with_label_values(&labels)
                .set(drill.restore_seconds);
            self.drill_time
                .with_label_values(&labels)
                .set(drill.time.0.as_second());
        }
    }

    /// The lag of each mirror of a policy.
    pub fn mirrors(&self, policy: &str, mirrors: &[MirrorStatus]) {
        for mirror in mirrors {
            self.mirror_lag
                .with_label_values(&[policy, &mirror.name])
                .set(mirror.lag_seconds);
        }
    }

    /// Drops the mirror series of policies not in `existing` (deleted ones).
    pub fn keep_policies(&self, existing: &[String]) {
        use prometheus::core::Collector as _;
        for family in self.mirror_lag.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                let policy = label("policy");
                if !existing.contains(&policy) {
                    let _ = self
                        .mirror_lag
                        .remove_label_values(&[policy, label("repository")]);
                }
            }
        }
    }

    /// Drops a deleted database's series.
    pub fn forget(&self, namespace: &str, database: &str) {
        for gauge in [
            &self.backup_time,
            &self.backup_size,
            &self.wal_archived,
            &self.drill_success,
            &self.drill_seconds,
            &self.drill_time,
        ] {
            let _ = gauge.remove_label_values(&[namespace, database]);
        }
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
