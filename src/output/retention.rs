//! Applying `[retention]`: for each source, the snapshots the history no longer keeps go from
//! the store (see [`crate::store::prune`]), and so do their envelope and report files unless
//! `keep_files` is set; with `keep_evidence_days`, the older evidence too. Every prune is
//! itself an entry in the source's ledger, naming what it removed, so that `aksync verify`
//! knows which files and snapshots are gone by design. `aksync prune` runs it by hand; every
//! complete run after itself.

use std::path::Path;

use chrono::{DateTime, Duration as Span, Utc};
use serde::Serialize;

use crate::config::{Config, SourceConfig};
use crate::ledger::entry::PruneRecord;
use crate::ledger::{Body, Pending};
use crate::output::artifacts::{manifest_path, report_path};
use crate::output::envelope::envelope_path;
use crate::output::report::ReportFormat;
use crate::store::prune::{plan_prune, PrunePlan, Pruned};
use crate::store::{Store, StoreError};

/// What pruning did (or would do) to one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourcePrune {
    pub source: String,
    /// The oldest run whose snapshot is kept; `None` when no snapshot goes.
    pub keeps_from: Option<String>,
    pub runs: u64,
    pub versions: u64,
    pub files: u64,
    /// Runs whose records and ledger entries went (`keep_evidence_days`).
    pub evidence_runs: u64,
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
        let runs = store.runs_with_snapshots(&source.name)?;
        let mut plan =
            plan_prune(&source.name, &runs, &config.retention, now).unwrap_or(PrunePlan {
                source: source.name.clone(),
                anchor: String::new(),
                runs: Vec::new(),
                evidence_of: Vec::new(),
                evidence_kept_from: None,
            });
        if let Some(days) = config.retention.keep_evidence_days {
            let cutoff = now - Span::days(i64::from(days));
            let (old, kept_from) = store.evidence_older_than(&source.name, cutoff)?;
            if kept_from.is_some() && !old.is_empty() {
                plan.evidence_of = old;
                plan.evidence_kept_from = kept_from;
            }
        }
        if plan.runs.is_empty() && plan.evidence_of.is_empty() {
            outcomes.push(SourcePrune {
                source: source.name.clone(),
                keeps_from: None,
                runs: 0,
                versions: 0,
                files: 0,
                evidence_runs: 0,
            });
            continue;
        }
        let remove_files = !config.retention.keep_files;
        let pruned = if dry_run {
            Pruned {
                runs: plan.runs.len() as u64,
                versions: store.prunable_versions(&plan)?,
                evidence_runs: plan.evidence_of.len() as u64,
            }
        } else {
            let record = prune_record(store, &plan, remove_files)?;
            let signer = config.ledger.signing_key.as_deref();
            let mut pending = Pending::new(&source.name, now, Body::Pruned(record), signer);
            store.prune(&plan, &mut pending)?
        };
        let mut files = 0;
        if remove_files {
            for run in &plan.runs {
                files += remove_run_files(&config.state_dir, &source.name, &run.run_id, dry_run);
            }
        }
        let keeps_from = (!plan.runs.is_empty()).then(|| plan.anchor.clone());
        if !dry_run {
            tracing::info!(
                source = %source.name,
                runs = pruned.runs,
                versions = pruned.versions,
                files,
                evidence_runs = pruned.evidence_runs,
                keeps_from = %keeps_from.as_deref().unwrap_or("-"),
                "pruned"
            );
        }
        outcomes.push(SourcePrune {
            source: source.name.clone(),
            keeps_from,
            runs: pruned.runs,
            versions: pruned.versions,
            files,
            evidence_runs: pruned.evidence_runs,
        });
    }
    Ok(outcomes)
}

/// The ledger's record of a prune: whose snapshots and files go, and, when evidence goes,
/// the digest of the last entry removed (where the kept chain starts).
fn prune_record(
    store: &Store,
    plan: &PrunePlan,
    remove_files: bool,
) -> Result<PruneRecord, StoreError> {
    let pruned_runs: Vec<String> = plan.runs.iter().map(|run| run.run_id.clone()).collect();
    let (entries_before, last_removed_digest) = match &plan.evidence_kept_from {
        Some(kept) => {
            let seq = kept.ledger_seq.unwrap_or_default();
            let reader = store.reader()?;
            let last = match seq.checked_sub(1) {
                Some(last) => reader.ledger_entry(&plan.source, last)?,
                None => None,
            };
            let digest = last
                .and_then(|row| crate::ledger::seal::Seal::decode(&row.seal))
                .map(|seal| seal.hex());
            (Some(seq), digest)
        }
        None => (None, None),
    };
    Ok(PruneRecord {
        files_of: if remove_files {
            pruned_runs.clone()
        } else {
            Vec::new()
        },
        snapshots_of: pruned_runs,
        entries_before,
        last_removed_digest,
    })
}

/// The envelope and report files of a pruned run; how many there were.
fn remove_run_files(state_dir: &Path, source: &str, run_id: &str, dry_run: bool) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigLocation;
    use crate::ledger::verify::{verify_source, Files};
    use crate::output::report::assemble::{build_report, Selection};
    use crate::store::RunRecord;
    use crate::testing::{at, TestSource};
    use serde_json::{json, Value};

    fn user(pk: i64) -> Value {
        json!({"pk": pk, "username": format!("u{pk}"), "name": format!("User {pk}"),
               "is_active": true, "groups": [], "email": "", "attributes": {},
               "uid": format!("uid{pk}"), "path": "users", "type": "internal"})
    }

    struct StateFiles<'a>(&'a Path);

    impl Files for StateFiles<'_> {
        fn envelope(&self, run: &RunRecord) -> std::path::PathBuf {
            envelope_path(self.0, &run.source, &run.run_id)
        }

        fn report(&self, source: &str, name: &str) -> std::path::PathBuf {
            self.0.join("reports").join(source).join(name)
        }
    }

    /// The configuration of the test source's state directory with this `[retention]`.
    fn config(source: &TestSource, retention: &str) -> Config {
        let path = source.dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "state_dir = {:?}\n[sources.corp]\nbase_url = \"https://ak.example.com\"\ntoken = \"t\"\n[retention]\n{retention}\n",
                source.dir.path().display().to_string()
            ),
        )
        .unwrap();
        Config::load(&ConfigLocation::Explicit(path)).unwrap()
    }

    /// `keep_evidence_days` removes the records and entries of old runs whose snapshots are
    /// gone, and only those: the kept chain still verifies from where it now starts (also
    /// with `--since`), reports say where their evidence starts, and the runs after the cut
    /// keep their events.
    #[test]
    fn keep_evidence_days_removes_old_evidence_and_the_kept_chain_verifies() {
        let mut source = TestSource::new();
        for round in 1..=6 {
            source.sync((1..=round).map(user).collect(), Vec::new());
        }
        let store = &source.store;
        let first_entry = |store: &Store| {
            let reader = store.reader().unwrap();
            let row = reader.ledger_entries("corp", 0).unwrap().next().unwrap();
            row.unwrap().seq
        };
        assert_eq!(first_entry(store), 0);
        // Six runs a minute apart from 2026-11-01 10:01; ten days later, with one run's
        // snapshot kept and a day of evidence, the evidence of the pruned runs goes at once.
        let ten_days_later = at(6) + Span::days(10);
        let snapshots = config(&source, "keep_runs = 1");
        let evidence = config(&source, "keep_runs = 1\nkeep_evidence_days = 1");
        let sources: Vec<&SourceConfig> = snapshots.sources.values().collect();
        let pruned = prune_sources(&snapshots, store, &sources, ten_days_later, false).unwrap();
        assert_eq!(pruned[0].evidence_runs, 0, "keep_runs alone keeps evidence");
        assert!(pruned[0].runs > 0);
        assert_eq!(store.runs_between("corp", None, None).unwrap().len(), 6);

        // A dry run says what would go and removes nothing.
        let dry = prune_sources(&evidence, store, &sources, ten_days_later, true).unwrap();
        assert!(dry[0].evidence_runs > 0);
        assert_eq!(store.runs_between("corp", None, None).unwrap().len(), 6);
        let gone = prune_sources(&evidence, store, &sources, ten_days_later, false).unwrap();
        assert_eq!(gone[0].evidence_runs, dry[0].evidence_runs);
        let kept = store.runs_between("corp", None, None).unwrap();
        assert_eq!(kept.len() as u64, 6 - gone[0].evidence_runs);
        // The runs whose snapshots are still kept keep their evidence.
        let latest = store.latest_complete("corp").unwrap().unwrap();
        assert!(kept.iter().any(|run| run.run_id == latest.run_id));
        assert!(first_entry(store) > 0, "the oldest entries went");

        let files = StateFiles(source.dir.path());
        let verdict = verify_source(store, "corp", &[], &files, None).unwrap();
        assert!(verdict.verified(), "{verdict:?}");
        let since = verify_source(store, "corp", &[], &files, Some(at(5))).unwrap();
        assert!(since.verified(), "{since:?}");

        // Nothing younger than the cut goes, however often it runs.
        let again = prune_sources(&evidence, store, &sources, ten_days_later, false).unwrap();
        assert_eq!(again[0].evidence_runs, 0);
        let report = build_report(
            store,
            &source.source,
            &Selection::Run(Box::new(latest.clone())),
            ten_days_later,
        )
        .unwrap();
        let oldest = report.header.evidence.oldest_evidence.expect("stated");
        assert_eq!(
            oldest.run_id.as_deref(),
            Some(kept[0].run_id.as_str()),
            "the report names the oldest run whose evidence is kept"
        );
    }
}
