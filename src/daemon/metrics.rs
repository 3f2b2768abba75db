//! `/metrics`: the status board for Prometheus, in the format the scraper asks for with
//! `Accept` (OpenMetrics when it names `application/openmetrics-text`, else the classic text
//! format 0.0.4 that `promtool check metrics` reads), with a `source` label on every series
//! of a source. Counters (`*_total`, the run-duration histogram) count what this daemon and
//! its requests did since it started; gauges describe each source's last runs as stored;
//! `process_*` is the process's own CPU, memory and file descriptors.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::process::ProcessStats;
use super::status::{ConfigReload, SourceStatus};
use crate::run::runner::run_duration;
use crate::store::RunStatus;
use crate::telemetry::{telemetry, BatchOutcome, SourceLabel};

/// The two expositions Prometheus reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The classic text format, version 0.0.4.
    Text,
}

impl Format {
    /// OpenMetrics when `Accept` asks for it at least as much as for anything else, the
    /// classic text format otherwise (no `Accept`, `*/*`, `text/plain`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut openmetrics = 0.0_f64;
        let mut other = 0.0_f64;
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "" => {}
                _ => other = other.max(quality),
            }
        }
        if openmetrics > 0.0 && openmetrics >= other {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    source: String,
    status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every series of the sources, registered on a fresh registry so that a source removed by a
/// reload disappears with it.
#[derive(Default)]
struct Series {
    runs: Family<RunLabels, Counter>,
    envelopes: Family<SourceLabel, Counter>,
    joiners_found: Family<SourceLabel, Counter>,
    movers_found: Family<SourceLabel, Counter>,
    leavers_found: Family<SourceLabel, Counter>,
    in_progress: Family<SourceLabel, Gauge>,
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
            "joiners",
            "Joiners found by this daemon's complete runs since it started",
            series.joiners_found.clone(),
        );
        registry.register(
            "movers",
            "Movers found by this daemon's complete runs since it started",
            series.movers_found.clone(),
        );
        registry.register(
            "leavers",
            "Leavers found by this daemon's complete runs since it started",
            series.leavers_found.clone(),
        );
        registry.register(
            "run_in_progress",
            "1 while a run of the source is going (or waits for a free slot)",
            series.in_progress.clone(),
        );
        registry.register(
            "source_healthy",
            "1 when the last run is complete and no older than twice the schedule's interval",
            series.healthy.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the last complete run finished, in seconds since the Unix epoch; 0 before the first",
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
        let source = SourceLabel::new(name);
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
        let found = status.changes_found;
        for (family, count) in [
            (&self.envelopes, status.envelopes_emitted),
            (&self.joiners_found, found.joiners),
            (&self.movers_found, found.movers),
            (&self.leavers_found, found.leavers),
        ] {
            family.get_or_create(&source).inc_by(count);
        }
        self.in_progress
            .get_or_create(&source)
            .set(i64::from(status.running_since.is_some()));
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
        // Present before the first complete run too, so that a staleness alert sees it.
        let last_success = status.history.last_complete.as_ref();
        self.last_success
            .get_or_create(&source)
            .set(last_success.map_or(0.0, |run| seconds(run.finished_at)));
        if let Some(run) = last_success {
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

/// The sources' run-duration histograms as one family. Each source keeps its own histogram
/// on the board, so the family is put together at every scrape.
#[derive(Debug)]
struct RunDurations(Vec<(SourceLabel, Histogram)>);

impl Collector for RunDurations {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "run_duration_seconds",
            "How long this daemon's runs took, complete or not, since it started",
            None,
            MetricType::Histogram,
        )?;
        for (source, histogram) in &self.0 {
            histogram.encode(family.encode_family(source)?)?;
        }
        Ok(())
    }
}

/// The Authentik and webhook counters, with a zero series for every source and outcome that
/// has none yet, so that rates and alerts see them from the start.
fn register_requests<'s>(registry: &mut Registry, sources: impl Iterator<Item = &'s String>) {
    let counters = telemetry();
    for source in sources {
        let label = SourceLabel::new(source);
        for family in [
            &counters.authentik_requests,
            &counters.authentik_retries,
            &counters.authentik_errors,
        ] {
            family.get_or_create(&label).inc_by(0);
        }
    }
    for outcome in BatchOutcome::ALL {
        counters
            .webhook_batches
            .get_or_create(&outcome.label())
            .inc_by(0);
    }
    registry.register(
        "authentik_requests",
        "HTTP requests sent to Authentik since the daemon started, every attempt counted",
        counters.authentik_requests.clone(),
    );
    registry.register(
        "authentik_retries",
        "Requests to Authentik sent again after a transient failure (connection, timeout, 429, 5xx)",
        counters.authentik_retries.clone(),
    );
    registry.register(
        "authentik_errors",
        "Requests to Authentik that failed for good, after their retries",
        counters.authentik_errors.clone(),
    );
    registry.register(
        "webhook_batches",
        "Webhook batches by how they ended after their retries: delivered, failed (sent again later) or rejected by the receiver",
        counters.webhook_batches.clone(),
    );
}

fn register_config(registry: &mut Registry, reload: &ConfigReload) {
    registry.register(
        "build",
        "The version of aksync that runs",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register(
        "config_last_reload_successful",
        "0 when the last reload (SIGHUP) was rejected and the previous configuration runs, else 1",
        ConstGauge::new(i64::from(reload.rejected.is_none())),
    );
    registry.register(
        "config_last_reload_success_timestamp_seconds",
        "When the configuration in force was loaded, in seconds since the Unix epoch",
        ConstGauge::new(seconds(reload.last_success)),
    );
}

/// `process_*`, as Prometheus's own client libraries name them.
fn register_process(registry: &mut Registry, stats: &ProcessStats) {
    if let Some(cpu) = stats.cpu_seconds {
        registry.register(
            "cpu_seconds",
            "User and system CPU time spent in seconds",
            ConstCounter::new(cpu),
        );
    }
    for (name, help, value) in [
        (
            "resident_memory_bytes",
            "Resident memory size in bytes",
            stats.resident_bytes,
        ),
        (
            "virtual_memory_bytes",
            "Virtual memory size in bytes",
            stats.virtual_bytes,
        ),
        (
            "open_fds",
            "Number of open file descriptors",
            stats.open_fds,
        ),
        (
            "max_fds",
            "Maximum number of open file descriptors",
            stats.max_fds,
        ),
    ] {
        if let Some(value) = value {
            registry.register(name, help, ConstGauge::new(saturating_i64(value)));
        }
    }
}

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The exposition of every source on the board, of the configuration and of the process.
pub fn render(
    sources: &BTreeMap<String, SourceStatus>,
    reload: &ConfigReload,
    process: &ProcessStats,
    now: DateTime<Utc>,
    format: Format,
) -> String {
    let mut root = Registry::default();
    register_process(root.sub_registry_with_prefix("process"), process);
    let registry = root.sub_registry_with_prefix("aksync");
    register_config(registry, reload);
    let series = Series::register(registry);
    for (name, status) in sources {
        series.record(name, status, now);
    }
    registry.register_collector(Box::new(RunDurations(
        sources
            .iter()
            .map(|(name, status)| (SourceLabel::new(name), status.run_durations.clone()))
            .collect(),
    )));
    register_requests(registry, sources.keys());
    let mut text = String::new();
    let encoded = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &root),
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut text, &root),
    };
    encoded.expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::super::status::tests::{at, run, status_with};
    use super::*;

    fn board() -> BTreeMap<String, SourceStatus> {
        let mut corp = status_with(vec![
            run(RunStatus::Failed, "2026-05-04T12:30:05Z"),
            run(RunStatus::Complete, "2026-05-04T12:00:05Z"),
        ]);
        for stored in [
            run(RunStatus::Complete, "2026-05-04T11:00:05Z"),
            run(RunStatus::Complete, "2026-05-04T11:30:05Z"),
            run(RunStatus::Complete, "2026-05-04T12:00:05Z"),
            run(RunStatus::Failed, "2026-05-04T12:30:05Z"),
        ] {
            corp.count_run(&stored);
        }
        corp.envelopes_emitted = 17;
        let hr = status_with(vec![run(RunStatus::Complete, "2026-05-04T12:30:05Z")]);
        let mut fresh = status_with(Vec::new());
        fresh.running_since = Some(at("2026-05-04T12:30:00Z"));
        BTreeMap::from([
            ("corp".to_string(), corp),
            ("fresh".to_string(), fresh),
            ("hr".to_string(), hr),
        ])
    }

    fn reload() -> ConfigReload {
        ConfigReload {
            last_success: at("2026-05-04T09:00:00Z"),
            rejected: None,
        }
    }

    fn stats() -> ProcessStats {
        ProcessStats {
            cpu_seconds: Some(1.5),
            resident_bytes: Some(14 << 20),
            virtual_bytes: None,
            open_fds: Some(12),
            max_fds: Some(1024),
        }
    }

    #[test]
    fn series_carry_the_source_the_last_runs_and_the_totals() {
        let now = at("2026-05-04T12:31:00Z");
        let text = render(&board(), &reload(), &stats(), now, Format::Text);
        for line in [
            "aksync_runs_total{source=\"corp\",status=\"complete\"} 3",
            "aksync_runs_total{source=\"corp\",status=\"failed\"} 1",
            "aksync_runs_total{source=\"hr\",status=\"failed\"} 0",
            "aksync_envelopes_emitted_total{source=\"corp\"} 17",
            "aksync_joiners_total{source=\"corp\"} 3",
            "aksync_leavers_total{source=\"corp\"} 0",
            "aksync_movers_total{source=\"hr\"} 0",
            "aksync_run_in_progress{source=\"fresh\"} 1",
            "aksync_run_in_progress{source=\"corp\"} 0",
            "aksync_source_healthy{source=\"corp\"} 0",
            "aksync_source_healthy{source=\"hr\"} 1",
            "aksync_last_success_timestamp_seconds{source=\"corp\"} 1777896005.0",
            "aksync_last_success_timestamp_seconds{source=\"fresh\"} 0.0",
            "aksync_last_run_duration_seconds{source=\"corp\"} 3.0",
            "aksync_run_duration_seconds_count{source=\"corp\"} 4",
            "aksync_run_duration_seconds_sum{source=\"corp\"} 12.0",
            "aksync_run_duration_seconds_bucket{source=\"corp\",le=\"2.5\"} 0",
            "aksync_run_duration_seconds_bucket{source=\"corp\",le=\"5\"} 4",
            "aksync_run_duration_seconds_count{source=\"fresh\"} 0",
            "aksync_accounts{source=\"corp\"} 12",
            "aksync_groups{source=\"corp\"} 3",
            "aksync_memberships{source=\"corp\"} 20",
            "aksync_last_run_joiners{source=\"corp\"} 1",
            "aksync_last_run_leavers{source=\"corp\"} 0",
            "aksync_outbox_backlog_runs{source=\"hr\"} 0",
            "aksync_authentik_requests_total{source=\"fresh\"} 0",
            "aksync_authentik_errors_total{source=\"hr\"} 0",
            "aksync_webhook_batches_total{outcome=\"rejected\"} 0",
            "aksync_build_info{version=\"0.1.0\"} 1",
            "aksync_config_last_reload_successful 1",
            "aksync_config_last_reload_success_timestamp_seconds 1777885200.0",
            "process_cpu_seconds_total 1.5",
            "process_resident_memory_bytes 14680064",
            "process_open_fds 12",
            "process_max_fds 1024",
            "# TYPE aksync_runs_total counter",
            "# TYPE aksync_run_duration_seconds histogram",
            "# HELP aksync_leavers_total Leavers found by this daemon's complete runs since it started.",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // What could not be read is left out.
        assert!(!text.contains("process_virtual_memory_bytes"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_is_served_to_who_asks_for_it() {
        let now = at("2026-05-04T12:31:00Z");
        let rejected = ConfigReload {
            rejected: Some("bad key".into()),
            ..reload()
        };
        let text = render(&board(), &rejected, &stats(), now, Format::OpenMetrics);
        for line in [
            "# TYPE aksync_runs counter",
            "aksync_runs_total{source=\"corp\",status=\"complete\"} 3",
            "# TYPE aksync_build info",
            "aksync_config_last_reload_successful 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_format_follows_accept() {
        // What Prometheus 2.x and 3.x send, and what curl and promtool users send.
        for (accept, format) in [
            (
                Some("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text; version=1.0.0"), Format::OpenMetrics),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"), Format::Text),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (Some("*/*"), Format::Text),
            (Some(""), Format::Text),
            (None, Format::Text),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
}
