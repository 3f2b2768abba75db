//! The files a complete run leaves under the state directory: its envelope file (the outbox,
//! written while the run is planned and in place before it commits) and its audit reports
//! (written after). Both can be rebuilt from the store at any time.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::authentik::ListKind;
use crate::config::{Config, SourceConfig};
use crate::diff::DirectoryDiff;
use crate::envelope::{self, Envelope, EnvelopeWriter};
use crate::evidence;
use crate::report::{self, Report, ReportFormat, ReportHeader, TrendPoint};
use crate::store::{RunRecord, Store, StoreError};

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

/// The report of the complete runs after `from` up to `to` (just `to` when `from` is
/// `None`), each compared with the run it was compared with when it was stored.
pub fn build_report(
    store: &Store,
    source: &SourceConfig,
    from: Option<&RunRecord>,
    to: &RunRecord,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let runs = store.complete_runs(&source.name)?;
    let mut diffs = Vec::new();
    for run in &runs {
        let in_period = match from {
            Some(from) => run.run_id > from.run_id && run.run_id <= to.run_id,
            None => run.run_id == to.run_id,
        };
        if !in_period {
            continue;
        }
        let previous = previous_run(store, run)?;
        diffs.push(evidence::compare_runs(store, source, previous.as_ref(), run, None)?.0);
    }
    Ok(assemble_report(
        source,
        from,
        to,
        diffs,
        &runs,
        generated_at,
    ))
}

/// The report of one run whose diff is at hand, as a sync has it.
pub fn run_report(
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
    diff: DirectoryDiff,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let runs = store.complete_runs(&source.name)?;
    Ok(assemble_report(
        source,
        None,
        run,
        vec![diff],
        &runs,
        generated_at,
    ))
}

/// The header and the chart of the source's recent runs around the diffs.
fn assemble_report(
    source: &SourceConfig,
    from: Option<&RunRecord>,
    to: &RunRecord,
    diffs: Vec<DirectoryDiff>,
    complete_runs: &[RunRecord],
    generated_at: DateTime<Utc>,
) -> Report {
    let up_to_run: Vec<&RunRecord> = complete_runs
        .iter()
        .filter(|run| run.run_id <= to.run_id)
        .collect();
    let trend = up_to_run[up_to_run.len().saturating_sub(TREND_RUNS)..]
        .iter()
        .map(|run| {
            let changes = run.changes.unwrap_or_default();
            TrendPoint {
                run_id: run.run_id.clone(),
                finished_at: run.finished_at,
                accounts: run.counts.accounts,
                joiners: changes.joiners,
                movers: changes.movers,
                leavers: changes.leavers,
            }
        })
        .collect();
    Report {
        header: header(source, to, from),
        diffs,
        trend,
        generated_at,
    }
}

fn header(source: &SourceConfig, run: &RunRecord, from: Option<&RunRecord>) -> ReportHeader {
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
    ReportHeader {
        source: source.name.clone(),
        base_url: source.base_url.to_string(),
        authentik_version: run.authentik_version.clone(),
        run_id: run.run_id.clone(),
        started_at: run.started_at,
        finished_at: run.finished_at,
        previous_run: run.previous_run.clone(),
        baseline_reason: run.baseline_reason.clone(),
        period_from: from.map(|from| from.run_id.clone()),
        endpoints,
        filter: source.filter.clone(),
        group_sync: !source.disable_group_sync,
        counts: run.counts,
        aksync_version: run.aksync_version.clone(),
        envelope_sha256: run.envelopes.as_ref().map(|summary| summary.sha256.clone()),
    }
}

pub fn report_path(state_dir: &Path, source: &str, run_id: &str, format: ReportFormat) -> PathBuf {
    state_dir
        .join("reports")
        .join(source)
        .join(format!("{run_id}.{}", format.extension()))
}

/// Writes the configured report formats of a run. One format failing (PDF without Chromium,
/// say) does not keep the others from being written; the first failure is returned.
pub fn write_reports(config: &Config, report: &Report) -> Result<(), ArtifactError> {
    let mut first_failure = None;
    for format in &config.output.reports {
        let path = report_path(
            &config.state_dir,
            &report.header.source,
            &report.header.run_id,
            *format,
        );
        let written = report::render(report, *format)
            .map_err(ArtifactError::from)
            .and_then(|bytes| write_file(&path, &bytes));
        if let Err(error) = written {
            first_failure.get_or_insert(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}
