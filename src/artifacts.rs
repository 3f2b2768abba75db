//! The files a complete run leaves under the state directory: its envelope file (the outbox,
//! written while the run is planned and in place before it commits) and its audit reports
//! (written after). Both can be rebuilt from the store at any time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::authentik::ListKind;
use crate::config::{Config, SourceConfig};
use crate::diff::DirectoryDiff;
use crate::envelope::{self, Envelope, EnvelopeWriter};
use crate::evidence;
use crate::report::{
    self, Period, PeriodRun, Producer, Report, ReportFormat, ReportHeader, ReportSettings,
    Snapshot, TrendPoint,
};
use crate::store::{RunRecord, RunStatus, Store, StoreError};

/// How many recent runs the report's chart shows.
const TREND_RUNS: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} does not match run {run_id}: its SHA-256 is {found}, the run recorded {expected}; rebuild it with `aksync envelopes {run_id} --rebuild`")]
    Mismatch {
        path: PathBuf,
        run_id: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// One format of a run's reports; the others were written.
    #[error("{} report not written: {source}", format.label())]
    Format {
        format: ReportFormat,
        source: Box<ArtifactError>,
    },
}

/// Writes a file atomically, naming it in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    envelope::write_atomic(path, bytes).map_err(|error| ArtifactError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// The complete run `run` was compared with when it was stored.
fn previous_run(store: &Store, run: &RunRecord) -> Result<Option<RunRecord>, StoreError> {
    run.previous_run
        .as_deref()
        .map(|previous| store.run(previous))
        .transpose()
}

/// Rebuilds a run's envelope file from the store, replaying the comparison the run made; it
/// must hash to what the run recorded, or nothing is written.
pub fn rebuild_envelopes(
    state_dir: &Path,
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
) -> Result<PathBuf, ArtifactError> {
    let path = envelope::envelope_path(state_dir, &source.name, &run.run_id);
    let writer = EnvelopeWriter::create(&path).map_err(|error| ArtifactError::Write {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    let previous = previous_run(store, run)?;
    let (_, file) = evidence::compare_runs(store, source, previous.as_ref(), run, Some(writer))?;
    let file = file.expect("an envelope writer was given");
    if let Some(summary) = &run.envelopes {
        if file.summary.sha256 != summary.sha256 {
            // The settings that shape envelopes changed since the run (e.g. ignore_fields).
            return Err(ArtifactError::Mismatch {
                path,
                run_id: run.run_id.clone(),
                expected: summary.sha256.clone(),
                found: file.summary.sha256,
            });
        }
    }
    file.persist().map_err(|error| ArtifactError::Write {
        path: path.clone(),
        reason: error.to_string(),
    })
}

/// A run's envelope file, checked against the SHA-256 the run recorded.
pub fn read_envelope_file(state_dir: &Path, run: &RunRecord) -> Result<Vec<u8>, ArtifactError> {
    let path = envelope::envelope_path(state_dir, &run.source, &run.run_id);
    let bytes = std::fs::read(&path).map_err(|error| ArtifactError::Read {
        path: path.clone(),
        reason: format!(
            "{error}; rebuild it with `aksync envelopes {} --rebuild`",
            run.run_id
        ),
    })?;
    let found = envelope::sha256_hex(&bytes);
    if let Some(summary) = run
        .envelopes
        .as_ref()
        .filter(|summary| summary.sha256 != found)
    {
        return Err(ArtifactError::Mismatch {
            path,
            run_id: run.run_id.clone(),
            expected: summary.sha256.clone(),
            found,
        });
    }
    Ok(bytes)
}

/// A run's envelopes from its file, checked against the SHA-256 the run recorded.
pub fn read_envelopes(state_dir: &Path, run: &RunRecord) -> Result<Vec<Envelope>, ArtifactError> {
    let bytes = read_envelope_file(state_dir, run)?;
    envelope::parse_jsonl(&bytes).map_err(|error| ArtifactError::Read {
        path: envelope::envelope_path(state_dir, &run.source, &run.run_id),
        reason: error.to_string(),
    })
}

/// Which runs a report covers.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One run: the runs after the latest complete run before it, up to it (so the failed
    /// attempts in between show), with its own diff.
    Run(Box<RunRecord>),
    /// Every run after `from` (whose own changes are not included) up to `to`.
    After {
        from: Box<RunRecord>,
        to: Box<RunRecord>,
    },
    /// Every run that finished after `since`, up to and including `until`.
    Between {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

/// How many complete runs a report's chart shows at most.
const TREND_MAX: usize = 100;

/// The report of the selected runs, each complete run compared with the run it was compared
/// with when it was stored.
pub fn build_report(
    store: &Store,
    source: &SourceConfig,
    selection: &Selection,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    assemble_report(store, source, selection, None, generated_at)
}

/// The report of one run whose diff is at hand, as a sync has it.
pub fn run_report(
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
    diff: DirectoryDiff,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    assemble_report(
        store,
        source,
        &Selection::Run(Box::new(run.clone())),
        Some(diff),
        generated_at,
    )
}

/// A run's bounds: `(after, up to)` by run id or by finish time.
enum Bounds<'a> {
    Ids(Option<&'a str>, &'a str),
    Times(DateTime<Utc>, DateTime<Utc>),
}

impl Bounds<'_> {
    fn contains(&self, run: &RunRecord) -> bool {
        match self {
            Bounds::Ids(after, up_to) => {
                after.is_none_or(|after| run.run_id.as_str() > after)
                    && run.run_id.as_str() <= *up_to
            }
            Bounds::Times(since, until) => run.finished_at > *since && run.finished_at <= *until,
        }
    }

    fn before(&self, run: &RunRecord) -> bool {
        match self {
            Bounds::Ids(after, _) => after.is_some_and(|after| run.run_id.as_str() <= after),
            Bounds::Times(since, _) => run.finished_at <= *since,
        }
    }
}

fn assemble_report(
    store: &Store,
    source: &SourceConfig,
    selection: &Selection,
    known_diff: Option<DirectoryDiff>,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    // Oldest first.
    let mut all_runs = store.runs(Some(&source.name))?;
    all_runs.reverse();
    let complete = |run: &&RunRecord| run.status == RunStatus::Complete;
    let latest_complete_before = |id: &str| {
        all_runs
            .iter()
            .filter(complete)
            .rfind(|run| run.run_id.as_str() < id)
    };
    let (bounds, selection_text) = match selection {
        Selection::Run(run) => {
            let previous = latest_complete_before(&run.run_id).map(|p| p.run_id.as_str());
            (
                Bounds::Ids(previous, &run.run_id),
                format!("run {}", run.run_id),
            )
        }
        Selection::After { from, to } => (
            Bounds::Ids(Some(&from.run_id), &to.run_id),
            format!(
                "every run after {} (its own changes not included) up to {}",
                from.run_id, to.run_id
            ),
        ),
        Selection::Between { since, until } => (
            Bounds::Times(*since, *until),
            format!(
                "every run that finished after {} up to {}",
                content_timestamp(*since),
                content_timestamp(*until)
            ),
        ),
    };
    let in_period: Vec<&RunRecord> = all_runs.iter().filter(|r| bounds.contains(r)).collect();
    let start_run = all_runs
        .iter()
        .filter(complete)
        .rfind(|run| bounds.before(run));
    let complete_in_period: Vec<&RunRecord> = in_period
        .iter()
        .copied()
        .filter(|run| complete(run))
        .collect();
    let end_run = complete_in_period.last().copied().or(start_run);
    let (period_start, period_end) = match (selection, &bounds) {
        (_, Bounds::Times(since, until)) => (*since, *until),
        (Selection::Run(run), _) => (
            start_run.map_or(run.started_at, |start| start.finished_at),
            run.finished_at,
        ),
        (Selection::After { from, to }, _) => (from.finished_at, to.finished_at),
        (Selection::Between { .. }, _) => unreachable!("time bounds are matched first"),
    };

    let mut known_diff = known_diff;
    let mut diffs = Vec::new();
    for run in &complete_in_period {
        match known_diff.take() {
            Some(diff) if diff.to_run == run.run_id => diffs.push(diff),
            other => {
                known_diff = other;
                let previous = previous_run(store, run)?;
                diffs.push(evidence::compare_runs(store, source, previous.as_ref(), run, None)?.0);
            }
        }
    }

    let reader = store.reader()?;
    let snapshot = |run: Option<&RunRecord>| -> Result<Snapshot, StoreError> {
        let Some(run) = run else {
            return Ok(Snapshot::default());
        };
        let census = evidence::census(&reader, source, run)?;
        Ok(Snapshot {
            run_id: Some(run.run_id.clone()),
            accounts: census.accounts,
            active: census.active,
            privileged: census.privileged,
        })
    };
    let start = snapshot(start_run)?;
    let end = if end_run.map(|run| &run.run_id) == start.run_id.as_ref() {
        start.clone()
    } else {
        snapshot(end_run)?
    };
    let mut privileged_at_baselines = BTreeMap::new();
    for diff in diffs.iter().filter(|diff| diff.baseline.is_some()) {
        let count = if Some(&diff.to_run) == end.run_id.as_ref() {
            end.privileged.len()
        } else {
            let run = store.run(&diff.to_run)?;
            evidence::census(&reader, source, &run)?.privileged.len()
        };
        privileged_at_baselines.insert(diff.to_run.clone(), count as u64);
    }

    // The period's complete runs; a period of fewer than two shows the runs before it.
    let chart_runs: Vec<&RunRecord> = if complete_in_period.len() >= 2 {
        complete_in_period.clone()
    } else {
        let up_to = end_run.map_or("", |run| run.run_id.as_str());
        all_runs
            .iter()
            .filter(complete)
            .filter(|run| run.run_id.as_str() <= up_to)
            .collect()
    };
    let limit = if complete_in_period.len() >= 2 {
        TREND_MAX
    } else {
        TREND_RUNS
    };
    let trend = chart_runs[chart_runs.len().saturating_sub(limit)..]
        .iter()
        .map(|run| trend_point(run))
        .collect();

    let header = header(
        source,
        Period {
            start: period_start,
            end: period_end,
            selection: selection_text,
            start_run: start_run.map(|run| run.run_id.clone()),
            end_run: end_run.map(|run| run.run_id.clone()),
        },
        &in_period,
        match selection {
            Selection::Run(run) => run.run_id.clone(),
            Selection::After { to, .. } => to.run_id.clone(),
            Selection::Between { .. } => end_run.map(|run| run.run_id.clone()).unwrap_or_default(),
        },
    );
    Ok(Report {
        header,
        runs: in_period.iter().map(|run| period_run(run)).collect(),
        diffs,
        start,
        end,
        privileged_at_baselines,
        trend,
        generated_at,
    })
}

fn content_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn trend_point(run: &RunRecord) -> TrendPoint {
    let changes = run.changes.unwrap_or_default();
    TrendPoint {
        run_id: run.run_id.clone(),
        finished_at: run.finished_at,
        accounts: run.counts.accounts,
        joiners: changes.joiners,
        movers: changes.movers,
        leavers: changes.leavers,
        baseline: run.previous_run.is_none(),
    }
}

fn period_run(run: &RunRecord) -> PeriodRun {
    PeriodRun {
        run_id: run.run_id.clone(),
        status: run.status,
        error: run.error.clone(),
        started_at: run.started_at,
        finished_at: run.finished_at,
        counts: run.counts,
        envelope_sha256: run.envelopes.as_ref().map(|summary| summary.sha256.clone()),
        envelope_lines: run.envelopes.as_ref().map(|summary| summary.lines),
        delivery: run.delivery.clone(),
        previous_run: run.previous_run.clone(),
        baseline_reason: run.baseline_reason.clone(),
        settings_fingerprint: run.settings_fingerprint.clone(),
        authentik_version: run.authentik_version.clone(),
        aksync_version: run.aksync_version.clone(),
        token_user: run.token_user.clone(),
        changes: run.changes,
    }
}

/// A report's id: the same for the same source, period and runs.
fn report_id(source: &str, period: &Period, runs: &[&RunRecord]) -> String {
    let mut digest = Sha256::new();
    digest.update(source.as_bytes());
    for at in [period.start, period.end] {
        digest.update(b"\n");
        digest.update(content_timestamp(at).as_bytes());
    }
    for run in runs {
        digest.update(b"\n");
        digest.update(run.run_id.as_bytes());
    }
    format!("{source}-{}", &hex::encode(digest.finalize())[..12])
}

fn header(
    source: &SourceConfig,
    period: Period,
    runs: &[&RunRecord],
    run_id: String,
) -> ReportHeader {
    let page_size = source.page_size.to_string();
    let mut endpoints = vec![
        "GET /api/v3/core/users/me/".to_string(),
        "GET /api/v3/admin/version/".to_string(),
    ];
    let lists: &[ListKind] = if source.disable_group_sync {
        &[ListKind::Users]
    } else {
        &[ListKind::Users, ListKind::Groups]
    };
    for kind in lists {
        let mut params: Vec<String> = kind
            .params()
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        params.push(format!("page_size={page_size}"));
        params.push("page=1..N".to_string());
        endpoints.push(format!("GET /api/v3/{}?{}", kind.path(), params.join("&")));
    }
    let (expected_interval, configured) = source.expected_interval();
    ReportHeader {
        report_id: report_id(&source.name, &period, runs),
        source: source.name.clone(),
        base_url: source.base_url.to_string(),
        run_id,
        period,
        endpoints,
        filter: source.filter.clone(),
        group_sync: !source.disable_group_sync,
        settings: ReportSettings {
            sla_seconds: source.sla.map(|sla| sla.as_secs()),
            expected_interval_seconds: expected_interval.as_secs(),
            expected_interval_from: if configured {
                format!("sources.{}.expected_interval", source.name)
            } else {
                format!(
                    "one and a half times the longest gap of the schedule {:?} ({})",
                    source.schedule.expression(),
                    source.schedule.timezone_name()
                )
            },
            hr_key_field: source.hr_key_field.clone(),
            privileged_groups: source.privileged_groups.clone(),
        },
        producer: Producer::current(),
    }
}

pub fn report_path(state_dir: &Path, source: &str, run_id: &str, format: ReportFormat) -> PathBuf {
    state_dir
        .join("reports")
        .join(source)
        .join(format!("{run_id}.{}", format.extension()))
}

/// The manifest of a run's reports: `<state_dir>/reports/<source>/<run_id>.manifest.json`.
pub fn manifest_path(state_dir: &Path, source: &str, run_id: &str) -> PathBuf {
    state_dir
        .join("reports")
        .join(source)
        .join(format!("{run_id}.manifest.json"))
}

/// What an auditor checks the report files against: the period, its runs and counts, and
/// each written file's SHA-256.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    report_id: &'a str,
    source: &'a str,
    period: &'a Period,
    runs: Vec<ManifestRun<'a>>,
    counts: report::period::PeriodCounts,
    generated_at: DateTime<Utc>,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize)]
struct ManifestRun<'a> {
    run_id: &'a str,
    status: crate::store::RunStatus,
}

#[derive(Debug, Serialize)]
struct ManifestFile {
    /// The file's name, beside the manifest.
    name: String,
    sha256: String,
    bytes: u64,
}

fn write_manifest(
    path: &Path,
    report: &Report,
    written: &[(PathBuf, Vec<u8>)],
) -> Result<(), ArtifactError> {
    let manifest = Manifest {
        report_id: &report.header.report_id,
        source: &report.header.source,
        period: &report.header.period,
        runs: report
            .runs
            .iter()
            .map(|run| ManifestRun {
                run_id: &run.run_id,
                status: run.status,
            })
            .collect(),
        counts: report::period::period_counts(report),
        generated_at: report.generated_at,
        files: written
            .iter()
            .map(|(file, bytes)| ManifestFile {
                name: file
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: envelope::sha256_hex(bytes),
                bytes: bytes.len() as u64,
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|error| ArtifactError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    bytes.push(b'\n');
    write_file(path, &bytes)
}

/// Writes one rendered report to `path`, with its manifest `<path>.manifest.json` beside it.
pub fn write_report_file(path: &Path, report: &Report, bytes: &[u8]) -> Result<(), ArtifactError> {
    write_file(path, bytes)?;
    let mut manifest = path.as_os_str().to_owned();
    manifest.push(".manifest.json");
    write_manifest(
        Path::new(&manifest),
        report,
        &[(path.to_path_buf(), bytes.to_vec())],
    )
}

/// Writes the configured report formats of a run and their manifest. One format failing
/// (PDF without Chromium, say) does not keep the others from being written; the manifest
/// lists those that were, and the first failure is returned ([`ArtifactError::Format`] when
/// it is one format's).
pub fn write_reports(config: &Config, report: &Report) -> Result<(), ArtifactError> {
    let mut first_failure = None;
    let mut written = Vec::new();
    for format in &config.output.reports {
        let path = report_path(
            &config.state_dir,
            &report.header.source,
            &report.header.run_id,
            *format,
        );
        let result = report::render(report, *format)
            .map_err(ArtifactError::from)
            .and_then(|bytes| write_file(&path, &bytes).map(|()| bytes));
        match result {
            Ok(bytes) => written.push((path, bytes)),
            Err(error) => {
                first_failure.get_or_insert(ArtifactError::Format {
                    format: *format,
                    source: Box::new(error),
                });
            }
        }
    }
    let manifest = manifest_path(
        &config.state_dir,
        &report.header.source,
        &report.header.run_id,
    );
    if let Err(error) = write_manifest(&manifest, report, &written) {
        first_failure.get_or_insert(error);
    }
    first_failure.map_or(Ok(()), Err)
}
