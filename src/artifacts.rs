//! The files a complete run leaves under the state directory: its envelope file (the outbox,
//! written before the run commits) and its audit reports (written after). Both can be rebuilt
//! from the store at any time.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::authentik::ListKind;
use crate::config::{Config, SourceConfig};
use crate::diff::DirectoryDiff;
use crate::envelope::{self, Envelope, EnvelopeContext};
use crate::evidence;
use crate::normalize::Snapshot;
use crate::report::{self, Report, ReportFormat, ReportHeader, TrendPoint};
use crate::store::{ChangeCounts, EnvelopeSummary, RunRecord, Store, StoreError};

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

pub fn change_counts(diff: &DirectoryDiff) -> ChangeCounts {
    ChangeCounts {
        joiners: diff.joiners.len() as u64,
        movers: diff.movers.len() as u64,
        leavers: diff.leavers.len() as u64,
        groups_changed: (diff.groups.created.len()
            + diff.groups.deleted.len()
            + diff.groups.changed.len()) as u64,
        memberships_changed: (diff.memberships.added.len() + diff.memberships.removed.len()) as u64,
    }
}

/// A run's envelopes and its envelope file's bytes, from the two snapshots it compares.
fn planned_envelopes(
    source: &SourceConfig,
    run: &RunRecord,
    from: &Snapshot,
    to: &Snapshot,
) -> (Vec<Envelope>, Vec<u8>) {
    let context = EnvelopeContext {
        source: &source.name,
        run_id: &run.run_id,
        observed_at: run.finished_at,
        primary_directory: source.primary_directory,
        ignore_fields: &source.ignore_fields,
    };
    let envelopes = envelope::plan(from, to, &context);
    let bytes = envelope::to_jsonl(&envelopes);
    (envelopes, bytes)
}

/// Writes a file atomically, naming it in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    envelope::write_atomic(path, bytes).map_err(|error| ArtifactError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Plans the envelopes of a run and writes its file atomically.
pub fn write_envelopes(
    state_dir: &Path,
    source: &SourceConfig,
    run: &RunRecord,
    from: &Snapshot,
    to: &Snapshot,
) -> Result<EnvelopeSummary, ArtifactError> {
    let (envelopes, bytes) = planned_envelopes(source, run, from, to);
    write_file(
        &envelope::envelope_path(state_dir, &source.name, &run.run_id),
        &bytes,
    )?;
    Ok(envelope::summary(&envelopes, &bytes))
}

/// The snapshot of the complete run before `run`, or an empty one for a source's first run.
fn previous_snapshot(store: &Store, run: &RunRecord) -> Result<Snapshot, StoreError> {
    match &run.previous_run {
        Some(previous) => store.snapshot(&store.run(previous)?),
        None => Ok(Snapshot::default()),
    }
}

/// Rebuilds a run's envelope file from the store; it must hash to what the run recorded.
pub fn rebuild_envelopes(
    state_dir: &Path,
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
) -> Result<PathBuf, ArtifactError> {
    let from = previous_snapshot(store, run)?;
    let to = store.snapshot(run)?;
    let (_, bytes) = planned_envelopes(source, run, &from, &to);
    let path = envelope::envelope_path(state_dir, &source.name, &run.run_id);
    if let Some(summary) = &run.envelopes {
        let found = envelope::sha256_hex(&bytes);
        if found != summary.sha256 {
            // The settings that shape envelopes changed since the run (e.g. ignore_fields).
            return Err(ArtifactError::Mismatch {
                path,
                run_id: run.run_id.clone(),
                expected: summary.sha256.clone(),
                found,
            });
        }
    }
    write_file(&path, &bytes)?;
    Ok(path)
}

/// A run's envelopes from its file, checked against the SHA-256 the run recorded.
pub fn read_envelopes(state_dir: &Path, run: &RunRecord) -> Result<Vec<Envelope>, ArtifactError> {
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
    envelope::parse_jsonl(&bytes).map_err(|error| ArtifactError::Read {
        path,
        reason: error.to_string(),
    })
}

/// The report of the complete runs after `from` up to `to` (just `to` when `from` is
/// `None`), each compared with the run it was compared with when it was stored. Each
/// snapshot is read once, however long the period.
pub fn build_report(
    store: &Store,
    source: &SourceConfig,
    from: Option<&RunRecord>,
    to: &RunRecord,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let runs = store.complete_runs(&source.name)?;
    let mut diffs = Vec::new();
    let mut last_read: Option<(&RunRecord, Snapshot)> = None;
    for (index, run) in runs.iter().enumerate() {
        let in_period = match from {
            Some(from) => run.run_id > from.run_id && run.run_id <= to.run_id,
            None => run.run_id == to.run_id,
        };
        if !in_period {
            continue;
        }
        let previous = match run.previous_run.as_deref() {
            None => None,
            Some(id) => match last_read.take() {
                Some((record, snapshot)) if record.run_id == id => Some((record, snapshot)),
                _ => {
                    let record = runs
                        .iter()
                        .find(|record| record.run_id == id)
                        .ok_or_else(|| StoreError::UnknownRun(id.to_string()))?;
                    Some((record, store.snapshot(record)?))
                }
            },
        };
        let snapshot = store.snapshot(run)?;
        diffs.push(evidence::compare(
            store,
            &source.name,
            &source.ignore_fields,
            previous
                .as_ref()
                .map(|(record, snapshot)| evidence::RunSnapshot {
                    run_id: &record.run_id,
                    finished_at: record.finished_at,
                    snapshot,
                }),
            evidence::RunSnapshot {
                run_id: &run.run_id,
                finished_at: run.finished_at,
                snapshot: &snapshot,
            },
            &runs[..index],
        )?);
        last_read = Some((run, snapshot));
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
