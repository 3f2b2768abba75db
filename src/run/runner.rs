//! One run of one source, as both `aksync sync` and the daemon make it: under the source's run
//! lock, sync, write the reports of a complete run and repair the runs just before it that a
//! stopped process left without reports ([`crate::output::repair`]), and log the start and the end
//! with counts, duration and joiners/movers/leavers. Callers take the lock their own way (the
//! daemon skips a busy source, the CLI waits) and only print or schedule around this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::authentik::client::ProgressFn;
use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::ledger::entry::ReportFiles;
use crate::ledger::{Body, Pending};
use crate::output::artifacts::{write_reports, ArtifactError};
use crate::output::repair;
use crate::output::report::assemble::{build_report, Selection};
use crate::run::run_lock::{LockError, RunLock};
use crate::run::sync::{sync_source, SyncedRun};
use crate::store::{RunRecord, RunStatus, Store, StoreError};

/// What a run needs besides its source.
pub struct RunContext<'a> {
    pub config: &'a Config,
    /// The database, opened once per process.
    pub store: &'a Arc<Store>,
    pub clock: &'a dyn Clock,
    /// Called as pages arrive; the daemon passes [`no_progress`].
    pub progress: ProgressFn<'a>,
    /// Stops the run until it commits; it is then recorded as failed and stores nothing.
    pub cancel: &'a CancellationToken,
}

/// A progress callback that shows nothing.
pub fn no_progress(_: crate::authentik::ListKind, _: u64, _: u64) {}

/// Syncs `source` while holding its run lock, writes the reports of a complete run, and logs
/// the run. Only a failure to record the run is an error.
pub async fn run_source(
    context: &RunContext<'_>,
    source: &SourceConfig,
    lock: RunLock,
) -> Result<SyncedRun, StoreError> {
    tracing::info!(source = %source.name, "run started");
    // The run record's times end with the fetch; the log says what the whole run cost.
    let started = Instant::now();
    let synced = sync_source(
        context.config,
        source,
        context.store,
        context.clock,
        context.progress,
        context.cancel,
    )
    .await?;
    if synced.diff.is_some() {
        write_run_reports(context, source, &synced.run).await;
        prune(context, source).await;
        // A run before this one that a stopped process left without its reports. Not after
        // a failed run: what failed may be the store itself (a full disk).
        let window = repair::Window {
            up_to: Some(&synced.run.run_id),
            inclusive: false,
            count: repair::AFTER_RUN,
        };
        repair::repair_source(context, source, window).await;
    }
    drop(lock);
    log_finished(&synced.run, started.elapsed());
    Ok(synced)
}

/// Records a run that could not take the source's lock for a local reason (no file
/// descriptor left, a lock file that cannot be opened) as a failed run with that reason, so
/// that the history, `/healthz` and the metrics show it, not only a log line.
pub async fn record_lock_failure(
    context: &RunContext<'_>,
    source: &SourceConfig,
    error: &LockError,
) -> Result<SyncedRun, StoreError> {
    // The failed run's "run finished" warning says why, once.
    let synced = crate::run::sync::record_unstarted(
        context.config,
        context.store,
        source,
        context.clock,
        &error.to_string(),
    )
    .await?;
    log_finished(&synced.run, Duration::ZERO);
    Ok(synced)
}

/// Writes the configured reports of a complete run (unless `output.reports_per_run` leaves
/// it without), from its ledger entry and off the async executor (a PDF waits for
/// Chromium), and records the files in the ledger. A report is evidence about a run that is
/// already stored, so a failure here is a warning: `aksync report` can write it again.
pub(crate) async fn write_run_reports(
    context: &RunContext<'_>,
    source: &SourceConfig,
    run: &RunRecord,
) {
    let output = &context.config.output;
    if !output.writes_run_reports(run.changed_anything()) {
        return;
    }
    let (config, source, store) = (
        context.config.clone(),
        source.clone(),
        Arc::clone(context.store),
    );
    let (run, now) = (run.clone(), context.clock.now());
    let written = tokio::task::spawn_blocking(move || {
        let signer = config.ledger.signing_key.as_deref();
        let report =
            match build_report(&store, &source, &Selection::Run(Box::new(run.clone())), now) {
                Ok(report) => report,
                Err(error) => {
                    warn_not_written(&source, &run, &error.to_string());
                    return;
                }
            };
        let written = write_reports(&config, &report, signer);
        if let Some(error) = &written.failure {
            warn_reports_failed(&source, &run, error);
        }
        if written.files.is_empty() {
            return;
        }
        let files = Body::Reports(ReportFiles {
            run_id: run.run_id.clone(),
            report_id: report.header.report_id.clone(),
            files: written.files,
        });
        let mut pending = Pending::new(&source.name, now, files, signer);
        if let Err(error) = store.append_ledger(&source.name, &mut pending) {
            tracing::warn!(
                source = %source.name,
                run = %run.run_id,
                "the report files were written but not recorded in the ledger: {error}"
            );
        }
    })
    .await;
    if let Err(error) = written {
        tracing::warn!("reports not written: {error}");
    }
}

fn warn_not_written(source: &SourceConfig, run: &RunRecord, error: &str) {
    tracing::warn!(
        source = %source.name,
        run = %run.run_id,
        "reports not written: {error}; write them with `aksync report {} --source {}`",
        run.run_id,
        source.name
    );
}

/// One format failing (a PDF, say) leaves the others in place: the warning says which, and
/// how to write it again.
fn warn_reports_failed(source: &SourceConfig, run: &RunRecord, error: &ArtifactError) {
    match error {
        ArtifactError::Format { format, .. } => tracing::warn!(
            source = %source.name,
            run = %run.run_id,
            "{error}; write it with `aksync report {} --source {} --format {}`",
            run.run_id,
            source.name,
            format.extension()
        ),
        other => warn_not_written(source, run, &other.to_string()),
    }
}

/// Applies `[retention]` to the source after a complete run, still under its lock. A prune
/// that fails leaves the history as it was; the next run tries again.
async fn prune(context: &RunContext<'_>, source: &SourceConfig) {
    if !context.config.retention.prunes() {
        return;
    }
    let (config, source, store) = (
        context.config.clone(),
        source.clone(),
        Arc::clone(context.store),
    );
    let now = context.clock.now();
    let pruned = tokio::task::spawn_blocking(move || {
        crate::output::retention::prune_sources(&config, &store, &[&source], now, false)
    })
    .await;
    match pruned {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!("pruning not done: {error}"),
        Err(error) => tracing::warn!("pruning not done: {error}"),
    }
}

/// How long a run took.
pub fn run_duration(run: &RunRecord) -> Duration {
    (run.finished_at - run.started_at)
        .to_std()
        .unwrap_or_default()
}

/// The run's end, with what it took from the start to its last report: a warning for a
/// failed run, with its error in a field of its own.
fn log_finished(run: &RunRecord, took: Duration) {
    // Milliseconds, as a number (not a string) in JSON logs.
    let duration_secs = (took.as_secs_f64() * 1000.0).round() / 1000.0;
    let changes = run.changes.unwrap_or_default();
    match run.status {
        // aksync's own stop: expected, and not a failure of the source.
        RunStatus::Failed if run.cancelled_by_shutdown() => tracing::info!(
            source = %run.source,
            run = %run.run_id,
            status = %run.outcome(),
            duration_secs,
            "run finished"
        ),
        RunStatus::Failed => tracing::warn!(
            source = %run.source,
            run = %run.run_id,
            status = %run.status.as_str(),
            duration_secs,
            // A string field: quoted in text logs (it has spaces), a string in JSON.
            error = run.error.as_deref().unwrap_or_default(),
            "run finished"
        ),
        RunStatus::Quarantined => tracing::warn!(
            source = %run.source,
            run = %run.run_id,
            status = %run.status.as_str(),
            duration_secs,
            leavers = changes.leavers,
            reasons = run.quarantine_reasons(),
            "run quarantined: nothing is delivered until `aksync approve {}` (or `aksync reject {}`)",
            run.run_id,
            run.run_id
        ),
        status => tracing::info!(
            source = %run.source,
            run = %run.run_id,
            status = %status.as_str(),
            duration_secs,
            accounts = run.counts.accounts,
            groups = run.counts.groups,
            memberships = run.counts.memberships,
            joiners = changes.joiners,
            movers = changes.movers,
            leavers = changes.leavers,
            envelopes = run.envelopes.as_ref().map_or(0, |summary| summary.lines),
            "run finished"
        ),
    }
}
