//! `/metrics`: the status board in the OpenMetrics text format that Prometheus scrapes, with a
//! `source` label on every series. Counters count what this daemon did since it started;
//! gauges describe each source's last runs as stored.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::status::SourceStatus;
use crate::runner::run_duration;
use crate::store::RunStatus;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    source: String,
    status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every series, registered on a fresh registry so that a source removed by a reload
/// disappears with it.
#[derive(Default)]
struct Series {
    runs: Family<RunLabels, Counter>,
    envelopes: Family<SourceLabel, Counter>,
    healthy: Family<SourceLabel, Gauge>,
    last_success: Family<SourceLabel, FloatGauge>,
    last_duration: Family<SourceLabel, FloatGauge>,
    next_run: Family<SourceLabel, FloatGauge>,
    accounts: Family<SourceLabel, Gauge>,
    groups: Family<SourceLabel, Gauge>,
    memberships: Family<SourceLabel, Gauge>,
    joiners: Family<SourceLabel, Gauge>,
    movers: Family<SourceLabel, Gauge>,
    leavers: Family<SourceLabel, Gauge>,
    backlog: Family<SourceLabel, Gauge>,
}

impl Series {
    fn register(registry: &mut Registry) -> Series {
        let series = Series::default();
        registry.register(
            "runs",
            "Runs this daemon made since it started, by status",
            series.runs.clone(),
        );
        registry.register(
            "envelopes_emitted",
            "Envelopes written by this daemon's complete runs since it started",
            series.envelopes.clone(),
        );
        registry.register(
            "source_healthy",
            "1 when the last run is complete and no older than twice the schedule's interval",
            series.healthy.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the last complete run finished, in seconds since the Unix epoch",
            series.last_success.clone(),
        );
        registry.register(
            "last_run_duration_seconds",
            "How long the last run took, complete or not",
            series.last_duration.clone(),
        );
        registry.register(
            "next_run_timestamp_seconds",
            "When the next scheduled run is due, in seconds since the Unix epoch",
            series.next_run.clone(),
        );
        registry.register(
            "accounts",
            "Accounts in the last complete run",
            series.accounts.clone(),
        );
        registry.register(
            "groups",
            "Groups in the last complete run",
            series.groups.clone(),
        );
        registry.register(
            "memberships",
            "Memberships in the last complete run",
            series.memberships.clone(),
        );
        registry.register(
            "last_run_joiners",
            "Joiners found by the last complete run",
            series.joiners.clone(),
        );
        registry.register(
            "last_run_movers",
            "Movers found by the last complete run",
            series.movers.clone(),
        );
        registry.register(
            "last_run_leavers",
            "Leavers found by the last complete run",
            series.leavers.clone(),
        );
        registry.register(
            "outbox_backlog_runs",
            "Complete runs whose envelopes wait for webhook delivery",
            series.backlog.clone(),
        );
        series
    }

    fn record(&self, name: &str, status: &SourceStatus, now: DateTime<Utc>) {
        let source = SourceLabel {
            source: name.to_string(),
        };
        // Both statuses a run usually ends with are present from the start, so that rates
        // and alerts work before the first failure.
        let mut runs = BTreeMap::from([
            (RunStatus::Complete.as_str(), 0),
            (RunStatus::Failed.as_str(), 0),
        ]);
        runs.extend(&status.runs_by_status);
        for (run_status, count) in runs {
            let labels = RunLabels {
                source: name.to_string(),
                status: run_status.to_string(),
            };
            self.runs.get_or_create(&labels).inc_by(count);
        }
        self.envelopes
            .get_or_create(&source)
            .inc_by(status.envelopes_emitted);
        self.healthy
            .get_or_create(&source)
            .set(i64::from(status.health(now).healthy));
        self.backlog
            .get_or_create(&source)
            .set(saturating_i64(status.history.outbox_backlog));
        if let Some(next) = status.next_run {
            self.next_run.get_or_create(&source).set(seconds(next));
        }
        if let Some(run) = status.history.last_run() {
            self.last_duration
                .get_or_create(&source)
                .set(run_duration(run).as_secs_f64());
        }
        if let Some(run) = &status.history.last_complete {
            self.last_success
                .get_or_create(&source)
                .set(seconds(run.finished_at));
            let changes = run.changes.unwrap_or_default();
            for (family, value) in [
                (&self.accounts, run.counts.accounts),
                (&self.groups, run.counts.groups),
                (&self.memberships, run.counts.memberships),
                (&self.joiners, changes.joiners),
                (&self.movers, changes.movers),
                (&self.leavers, changes.leavers),
            ] {
                family.get_or_create(&source).set(saturating_i64(value));
            }
        }
    }
}

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The exposition of every source on the board.
pub fn render(sources: &BTreeMap<String, SourceStatus>, now: DateTime<Utc>) -> String {
    let mut registry = Registry::with_prefix("aksync");
    let series = Series::register(&mut registry);
    for (name, status) in sources {
        series.record(name, status, now);
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::super::status::tests::{run, status_with};
    use super::*;

    #[test]
    fn series_carry_the_source_and_the_last_runs() {
        let now = DateTime::parse_from_rfc3339("2026-05-04T12:31:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut corp = status_with(vec![
            run(RunStatus::Failed, "2026-05-04T12:30:05Z"),
            run(RunStatus::Complete, "2026-05-04T12:00:05Z"),
        ]);
        corp.runs_by_status.insert("complete", 3);
        corp.runs_by_status.insert("failed", 1);
        corp.envelopes_emitted = 17;
        let hr = status_with(vec![run(RunStatus::Complete, "2026-05-04T12:30:05Z")]);
        let text = render(
            &BTreeMap::from([("corp".to_string(), corp), ("hr".to_string(), hr)]),
            now,
        );
        for line in [
            "aksync_runs_total{source=\"corp\",status=\"complete\"} 3",
            "aksync_runs_total{source=\"corp\",status=\"failed\"} 1",
            "aksync_runs_total{source=\"hr\",status=\"failed\"} 0",
            "aksync_envelopes_emitted_total{source=\"corp\"} 17",
            "aksync_source_healthy{source=\"corp\"} 0",
            "aksync_source_healthy{source=\"hr\"} 1",
            "aksync_last_success_timestamp_seconds{source=\"corp\"} 1777896005.0",
            "aksync_last_run_duration_seconds{source=\"corp\"} 3.0",
            "aksync_accounts{source=\"corp\"} 12",
            "aksync_groups{source=\"corp\"} 3",
            "aksync_memberships{source=\"corp\"} 20",
            "aksync_last_run_joiners{source=\"corp\"} 1",
            "aksync_last_run_leavers{source=\"corp\"} 0",
            "aksync_outbox_backlog_runs{source=\"hr\"} 0",
            "# TYPE aksync_runs counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
