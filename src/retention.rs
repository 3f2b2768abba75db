//! Applying `[retention]`: for each source, the runs the history no longer keeps go from the
//! store (see [`crate::store::prune`]), and so do their envelope and report files unless
//! `keep_files` is set. `aksync prune` runs it by hand; the daemon after each run.

use std::path::Path;

use serde::Serialize;

use crate::artifacts::{manifest_path, report_path};
use crate::config::{Config, SourceConfig};
use crate::envelope::envelope_path;
use crate::report::ReportFormat;
use crate::store::prune::{plan_prune, Pruned};
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};

/// What pruning did (or would do) to one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourcePrune {
    pub source: String,
    /// The oldest run kept; `None` when nothing goes.
    pub keeps_from: Option<String>,
    pub runs: u64,
    pub versions: u64,
    pub files: u64,
}

/// Prunes each source as `config.retention` says at `now`. With `dry_run`, only says what
/// would go.
pub fn prune_sources(
    config: &Config,
    store: &Store,
    sources: &[&SourceConfig],
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<SourcePrune>, StoreError> {
    let mut outcomes = Vec::new();
    for source in sources {
        let mut runs = store.runs(Some(&source.name))?;
        runs.reverse();
        let Some(plan) = plan_prune(&source.name, &runs, &config.retention, now) else {
            outcomes.push(SourcePrune {
                source: source.name.clone(),
                keeps_from: None,
                runs: 0,
                versions: 0,
                files: 0,
            });
            continue;
        };
        let pruned = if dry_run {
            Pruned {
                runs: plan.runs.len() as u64,
                versions: store.prunable_versions(&plan)?,
            }
        } else {
            store.prune(&plan)?
        };
        let mut files = 0;
        if !config.retention.keep_files {
            for run in &plan.runs {
                files += remove_files(&config.state_dir, &source.name, &run.run_id, dry_run);
            }
        }
        if !dry_run {
            tracing::info!(
                source = %source.name,
                runs = pruned.runs,
                versions = pruned.versions,
                files,
                keeps_from = %plan.anchor,
                "pruned"
            );
        }
        outcomes.push(SourcePrune {
            source: source.name.clone(),
            keeps_from: Some(plan.anchor),
            runs: pruned.runs,
            versions: pruned.versions,
            files,
        });
    }
    Ok(outcomes)
}

/// The envelope and report files of a pruned run; how many there were.
fn remove_files(state_dir: &Path, source: &str, run_id: &str, dry_run: bool) -> u64 {
    let reports = ReportFormat::ALL.map(|format| report_path(state_dir, source, run_id, format));
    let mut removed = 0;
    let files = [
        envelope_path(state_dir, source, run_id),
        manifest_path(state_dir, source, run_id),
    ];
    for path in files.into_iter().chain(reports) {
        if !path.exists() {
            continue;
        }
        if dry_run {
            removed += 1;
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(error) => tracing::warn!(
                path = %crate::display::escape(&path.display().to_string()),
                "cannot remove a pruned run's file: {error}"
            ),
        }
    }
    removed
}
