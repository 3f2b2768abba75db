//! What a crash can leave behind a complete run, put right: its reports are written after
//! its commit, so a process killed in between leaves a complete run without them, and its
//! envelope file may go missing. Looked for at the daemon's start and after every complete
//! run, under the source's run lock, in the newest few complete runs only ([`AT_START`],
//! [`AFTER_RUN`]): a crash is repaired by the next complete run or start, so the window never
//! needs the history.
//!
//! A run's reports are written again, with their `reports` entry in the ledger, only when the
//! ledger has no `reports` entry for the run and a configured report file is missing, or the
//! run made its own ledger entry (it is not backfilled) and so should have recorded them: a
//! process killed between writing the files and recording them. Nothing ever recorded them,
//! so nothing recorded is rewritten. Runs that changed nothing
//! are left alone (whether they got reports depended on `reports_per_run` at the time).
//! Report files that the ledger recorded and that are missing or differ are evidence of
//! tampering (or of a restore) for `aksync verify` to report; they are never rewritten, and a
//! warning names them. A missing
//! envelope file is rebuilt from the store, which refuses unless it hashes to what the run
//! recorded. Runs whose snapshots retention pruned are left alone: their files went by
//! design, and a `pruned` entry says so.
//!
//! A run writes its envelope file before its commit (and streams it to a temporary file
//! while it plans): a process killed before the commit leaves a file, or a temporary one, of
//! a run that was never stored. Before its fetch, under the source's run lock, each run
//! removes those ([`remove_unstored_envelopes`]), so that the outbox only ever holds the
//! files of stored runs.
//!
//! Webhook delivery goes through here too ([`deliver_repairing`]): a run whose envelope file
//! delivery cannot open is rebuilt before the pass goes on, so that delivery itself only
//! reads envelope files and the store.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, SourceConfig, WebhookConfig};
use crate::ledger::entry::ReportFiles;
use crate::output::artifacts::{manifest_path, rebuild_envelopes, report_path};
use crate::output::delivery::{deliver_pending, DeliveryError, DeliveryReport, Repair, Repairs};
use crate::output::envelope::{envelope_dir, envelope_path, envelope_run_id, sha256_of};
use crate::run::run_lock::{source_lock_path, RunLock, TryLock};
use crate::run::runner::{no_progress, write_run_reports, RunContext};
use crate::store::{RunRecord, Store, StoreError};

/// Complete runs checked at the daemon's start, per source.
pub const AT_START: usize = 5;
/// Complete runs before a run that are checked after it.
pub const AFTER_RUN: usize = 2;

/// Which runs to check: the newest `count` complete runs of the source up to `up_to` (the
/// latest complete run when `None`), that run itself included or not.
pub struct Window<'a> {
    pub up_to: Option<&'a str>,
    pub inclusive: bool,
    pub count: usize,
}

/// At the daemon's start, before any run: repairs the newest [`AT_START`] complete runs of
/// every source whose run lock is free (a source another process is syncing is repaired by
/// that run).
pub async fn repair_at_start(config: &Config, store: &Arc<Store>, clock: &dyn Clock) {
    let cancel = CancellationToken::new();
    let context = RunContext {
        config,
        store,
        clock,
        progress: &no_progress,
        cancel: &cancel,
    };
    for source in config.sources.values() {
        let lock = match RunLock::try_acquire(&source_lock_path(&config.state_dir, &source.name)) {
            Ok(TryLock::Acquired(lock)) => lock,
            Ok(TryLock::Held { .. }) => continue,
            Err(error) => {
                tracing::warn!(source = %source.name, "cannot check the artifacts of the latest runs: {error}");
                continue;
            }
        };
        let window = Window {
            up_to: None,
            inclusive: true,
            count: AT_START,
        };
        repair_source(&context, source, window).await;
        drop(lock);
    }
}

/// Repairs the runs of `source` in `window`; the caller holds the source's run lock. A
/// repair that fails is a warning: the run is stored, and the next check tries again.
pub async fn repair_source(context: &RunContext<'_>, source: &SourceConfig, window: Window<'_>) {
    let (config, store, source_copy) = (
        context.config.clone(),
        Arc::clone(context.store),
        source.clone(),
    );
    let (up_to, inclusive, count) = (
        window.up_to.map(str::to_string),
        window.inclusive,
        window.count,
    );
    let inspected = tokio::task::spawn_blocking(move || {
        inspect(
            &config,
            &store,
            &source_copy,
            up_to.as_deref(),
            inclusive,
            count,
        )
    })
    .await;
    let inspected = inspected
        .map_err(|error| error.to_string())
        .and_then(|runs| runs.map_err(|error| error.to_string()));
    let unreported = match inspected {
        Ok(runs) => runs,
        Err(error) => {
            tracing::warn!(source = %source.name, "cannot check the artifacts of the latest runs: {error}");
            return;
        }
    };
    for run in unreported {
        tracing::info!(
            source = %source.name,
            run = %run.run_id,
            "writing the reports of a complete run that has none (the process stopped after its commit)"
        );
        write_run_reports(context, source, &run).await;
    }
}

/// Checks the runs in the window, rebuilds their missing envelope files and warns about
/// recorded report files that changed; returns the runs whose reports must be written.
fn inspect(
    config: &Config,
    store: &Store,
    source: &SourceConfig,
    up_to: Option<&str>,
    inclusive: bool,
    count: usize,
) -> Result<Vec<RunRecord>, StoreError> {
    let up_to = match up_to {
        Some(up_to) => up_to.to_string(),
        None => match store.latest_complete(&source.name)? {
            Some(latest) => latest.run_id,
            None => return Ok(Vec::new()),
        },
    };
    let runs = store.complete_runs_back(&source.name, &up_to, inclusive, count)?;
    let kept_from = store.reader()?.snapshots_kept_from(&source.name)?;
    let mut unreported = Vec::new();
    for run in runs {
        if kept_from
            .as_deref()
            .is_some_and(|kept_from| run.run_id.as_str() < kept_from)
        {
            continue;
        }
        rebuild_missing_envelopes(config, store, source, &run);
        let recorded =
            crate::ledger::read::report_files(&store.reader()?, &source.name, &run.run_id)
                .map_err(|error| StoreError::Aborted(error.to_string()))?;
        match recorded {
            Some(recorded) => warn_changed_reports(config, source, &run, &recorded),
            None if reports_missing(config, &run) || unrecorded(config, store, &run)? => {
                unreported.push(run)
            }
            None => {}
        }
    }
    Ok(unreported)
}

fn rebuild_missing_envelopes(
    config: &Config,
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
) {
    if run.envelopes.is_none() {
        return;
    }
    let path = envelope_path(&config.state_dir, &source.name, &run.run_id);
    if !is_missing(&path) {
        return;
    }
    match rebuild_envelopes(&config.state_dir, store, source, run) {
        Ok(_) => tracing::info!(
            source = %source.name,
            run = %run.run_id,
            "the run's envelope file was missing: rebuilt from the store"
        ),
        Err(error) => tracing::warn!(
            source = %source.name,
            run = %run.run_id,
            "the run's envelope file is missing and was not rebuilt: {error}"
        ),
    }
}

/// Removes the envelope files, and their temporary files, of runs of `source` that were never
/// stored: a run id after the source's latest complete run that names no run record, which
/// only a run killed before its commit leaves (a run that fails removes its own). The caller
/// holds the source's run lock, so no run of the source is writing one. Nothing else is
/// touched: a temporary file of a stored run's rebuild, files of pruned runs (kept with
/// `keep_files`), names that are no run id. A file that cannot be removed is a warning: it
/// is tried again before the next run.
pub(crate) fn remove_unstored_envelopes(state_dir: &Path, store: &Store, source: &str) {
    let entries = match std::fs::read_dir(envelope_dir(state_dir, source)) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(source = %source, "cannot look for envelope files of runs that were not stored: {error}");
            return;
        }
    };
    let latest = match store.latest_complete(source) {
        Ok(latest) => latest.map(|run| run.run_id),
        Err(error) => {
            tracing::warn!(source = %source, "cannot look for envelope files of runs that were not stored: {error}");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(run_id) = envelope_run_id(&name) else {
            continue;
        };
        if latest.as_deref().is_some_and(|latest| run_id <= latest) {
            continue;
        }
        match store.run(run_id) {
            Err(StoreError::UnknownRun(_)) => {}
            Ok(_) => continue,
            Err(error) => {
                tracing::warn!(source = %source, run = %run_id, "cannot tell whether the run was stored: {error}");
                continue;
            }
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                source = %source,
                run = %run_id,
                "removed {} of a run that was never stored (the process stopped before its commit)",
                crate::display::escape(&path.display().to_string())
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(
                source = %source,
                run = %run_id,
                "cannot remove {} of a run that was never stored: {error}",
                crate::display::escape(&path.display().to_string())
            ),
        }
    }
}

/// Delivers the outbox ([`deliver_pending`]), rebuilding from the store each envelope file a
/// pass cannot open (missing, or not what the run recorded) and passing again; a file that
/// cannot be rebuilt goes back to delivery with why, which parks the run or waits.
pub async fn deliver_repairing(
    config: &Config,
    store: &Store,
    webhook: &WebhookConfig,
    clock: &dyn Clock,
) -> Result<DeliveryReport, DeliveryError> {
    let mut repairs = Repairs::new();
    let mut report = DeliveryReport::default();
    loop {
        // Each pass that stops for a repair names a run not repaired yet: the loop ends.
        let mut pass = deliver_pending(config, store, webhook, clock, &repairs).await?;
        report.runs_delivered.append(&mut pass.runs_delivered);
        report.batches_sent += pass.batches_sent;
        report.runs_parked.append(&mut pass.runs_parked);
        report.stopped = pass.stopped;
        let Some(run) = pass.needs_repair else {
            return Ok(report);
        };
        let repair = rebuild_outbox(config, store, &run);
        repairs.insert(run.run_id, repair);
    }
}

/// Rebuilds an undelivered run's envelope file from the store.
fn rebuild_outbox(config: &Config, store: &Store, run: &RunRecord) -> Repair {
    let Some(source) = config.sources.get(&run.source) else {
        return Repair::Failed {
            reason: format!("source `{}` is no longer configured", run.source),
            permanent: true,
        };
    };
    match rebuild_envelopes(&config.state_dir, store, source, run) {
        Ok(_) => Repair::Rebuilt,
        Err(rebuild) => Repair::Failed {
            reason: format!("rebuilding it failed: {rebuild}"),
            permanent: rebuild.is_permanent(),
        },
    }
}

/// Whether the run should have report files of its own and one of them is not there. A run
/// that changed nothing is left alone: whether it got reports depended on `reports_per_run`
/// when it ran, and a setting changed since must not look like a crash.
fn reports_missing(config: &Config, run: &RunRecord) -> bool {
    let output = &config.output;
    if !run.changed_anything() || !output.writes_run_reports(true) {
        return false;
    }
    let files = output
        .reports
        .iter()
        .map(|format| report_path(&config.state_dir, &run.source, &run.run_id, *format))
        .chain(std::iter::once(manifest_path(
            &config.state_dir,
            &run.source,
            &run.run_id,
        )));
    files.into_iter().any(|path| is_missing(&path))
}

/// Whether the run should have report files of its own, has all of them, and the ledger has
/// no `reports` entry for it (the caller checked): a process killed after it wrote the files
/// and before it recorded them. Nothing vouches for such files, so they are written again
/// and recorded. A backfilled run (from before the ledger) had its reports without an entry
/// by design: left alone.
fn unrecorded(config: &Config, store: &Store, run: &RunRecord) -> Result<bool, StoreError> {
    if !run.changed_anything() || !config.output.writes_run_reports(true) {
        return Ok(false);
    }
    let evidence = crate::ledger::read::run_evidence(&store.reader()?, &run.source, &run.run_id)
        .map_err(|error| StoreError::Aborted(error.to_string()))?;
    Ok(evidence.is_some_and(|sealed| !sealed.evidence.backfilled))
}

/// Report files the ledger recorded that are gone or differ are left as they are: the
/// warning says which, for `aksync verify`.
fn warn_changed_reports(
    config: &Config,
    source: &SourceConfig,
    run: &RunRecord,
    recorded: &ReportFiles,
) {
    let dir = manifest_path(&config.state_dir, &source.name, &run.run_id);
    let dir = dir.parent().unwrap_or(Path::new("."));
    for file in &recorded.files {
        let path = dir.join(&file.name);
        let found = std::fs::File::open(&path).and_then(|mut opened| sha256_of(&mut opened));
        let problem = match found {
            Ok(found) if found == file.sha256 => continue,
            Ok(found) => format!("hashes to {found}, the ledger recorded {}", file.sha256),
            Err(error) => error.to_string(),
        };
        tracing::warn!(
            source = %source.name,
            run = %run.run_id,
            "report file {} is not as the ledger recorded it ({problem}); it is left as it is: run `aksync verify`",
            crate::display::escape(&path.display().to_string())
        );
    }
}

fn is_missing(path: &Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(error) if error.kind() == std::io::ErrorKind::NotFound)
}
