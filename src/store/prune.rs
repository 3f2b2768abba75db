//! Retention: pruning the runs the configured history no longer keeps, without breaking what
//! remains.
//!
//! The runs kept are each source's latest complete run, the complete runs of the last
//! `keep_days` days and its newest `keep_runs` complete runs. The run the oldest kept run was
//! compared with stays too, as the anchor, so that every kept run's diff, report and envelope
//! file can still be replayed exactly; so does any run whose envelopes are not delivered yet.
//! Everything older goes: run records, and the versions that only those runs saw (a version
//! closed at or before the anchor is visible to no kept run). Tombstones stay, so that a
//! record that comes back still chains to its deletion.

use chrono::{DateTime, Duration as Span, Utc};
use redb::ReadableTable;

use super::codec::{self, SEP};
use super::{
    corrupt_value, DeliveryStatus, Failure, RunRecord, RunStatus, Store, StoreError, ENTRIES, META,
    SOURCE_RUNS, VERSIONS,
};
use crate::config::Retention;

/// What pruning a source would remove.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunePlan {
    pub source: String,
    /// The oldest run kept: every older run goes.
    pub anchor: String,
    /// The runs removed, oldest first.
    pub runs: Vec<RunRecord>,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    pub versions: u64,
}

/// The database file and how much of it holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub file_bytes: u64,
    pub used_bytes: u64,
}

/// Which runs of one source `retention` lets go at `now`; `runs` are all of the source's runs,
/// oldest first. `None` when nothing goes.
pub fn plan_prune(
    source: &str,
    runs: &[RunRecord],
    retention: &Retention,
    now: DateTime<Utc>,
) -> Option<PrunePlan> {
    if !retention.prunes() {
        return None;
    }
    let complete: Vec<&RunRecord> = runs
        .iter()
        .filter(|run| run.status == RunStatus::Complete)
        .collect();
    let latest = complete.last()?;
    let mut oldest_kept = latest.run_id.as_str();
    if let Some(days) = retention.keep_days {
        let cutoff = now - Span::days(i64::from(days));
        if let Some(run) = complete.iter().find(|run| run.finished_at >= cutoff) {
            oldest_kept = oldest_kept.min(run.run_id.as_str());
        }
    }
    if let Some(count) = retention.keep_runs {
        let index = complete.len().saturating_sub(count as usize);
        oldest_kept = oldest_kept.min(complete[index].run_id.as_str());
    }
    let oldest = complete
        .iter()
        .find(|run| run.run_id == oldest_kept)
        .expect("a kept run is complete");
    // The run the oldest kept one was compared with keeps its diff replayable.
    let mut anchor = match &oldest.previous_run {
        Some(previous) if complete.iter().any(|run| &run.run_id == previous) => previous.clone(),
        _ => oldest.run_id.clone(),
    };
    // An outbox that is not delivered is never lost.
    if let Some(undelivered) = runs.iter().find(|run| {
        run.delivery
            .as_ref()
            .is_some_and(|delivery| delivery.status != DeliveryStatus::Delivered)
    }) {
        anchor = anchor.min(undelivered.run_id.clone());
    }
    let pruned: Vec<RunRecord> = runs
        .iter()
        .filter(|run| run.run_id < anchor)
        .cloned()
        .collect();
    (!pruned.is_empty()).then(|| PrunePlan {
        source: source.to_string(),
        anchor,
        runs: pruned,
    })
}

/// The meta key that remembers where a source's history starts after pruning.
fn pruned_before_key(source: &str) -> String {
    format!("pruned_before{SEP}{source}")
}

impl Store {
    /// Removes the runs of a plan and the versions only they saw, in one write transaction.
    pub fn prune(&self, plan: &PrunePlan) -> Result<Pruned, StoreError> {
        self.write(|txn| {
            let guard = &self.guard;
            let mut runs = guard.call(|| txn.open_table(super::RUNS))?;
            let mut index = guard.call(|| txn.open_table(SOURCE_RUNS))?;
            for run in &plan.runs {
                guard.call(|| runs.remove(run.run_id.as_str()))?;
                let key = format!("{}{SEP}{}", plan.source, run.run_id);
                guard.call(|| index.remove(key.as_str()))?;
            }
            let mut versions = guard.call(|| txn.open_table(VERSIONS))?;
            let mut entries = guard.call(|| txn.open_table(ENTRIES))?;
            let prefix = codec::source_prefix(&plan.source);
            let end = codec::prefix_end(&prefix);
            let pruned = |value: &[u8]| {
                codec::version_valid_to(value).map(|valid_to| {
                    valid_to.is_some_and(|valid_to| valid_to.as_str() <= plan.anchor.as_str())
                })
            };
            let mut unreadable = false;
            // The entries go first, while their versions still say whether they are pruned.
            guard.call(|| {
                entries.retain_in(prefix.as_str()..end.as_str(), |key, _| {
                    match versions
                        .get(key)
                        .map(|row| row.map(|row| pruned(row.value())))
                    {
                        Ok(Some(Ok(gone))) => !gone,
                        _ => {
                            unreadable = true;
                            true
                        }
                    }
                })
            })?;
            let mut removed = 0;
            guard.call(|| {
                versions.retain_in(prefix.as_str()..end.as_str(), |_, value| {
                    match pruned(value) {
                        Ok(true) => {
                            removed += 1;
                            false
                        }
                        Ok(false) => true,
                        Err(_) => {
                            unreadable = true;
                            true
                        }
                    }
                })
            })?;
            if unreadable {
                return Err(corrupt_value("record version"));
            }
            let mut meta = guard.call(|| txn.open_table(META))?;
            let key = pruned_before_key(&plan.source);
            guard.call(|| meta.insert(key.as_str(), plan.anchor.as_bytes()))?;
            Ok(Pruned {
                runs: plan.runs.len() as u64,
                versions: removed,
            })
        })
    }

    /// How many versions [`Store::prune`] would remove for a plan, read without writing.
    pub fn prunable_versions(&self, plan: &PrunePlan) -> Result<u64, StoreError> {
        let reader = self.reader()?;
        let mut count = 0;
        for kind in crate::record::RecordKind::ALL {
            for version in reader.versions(&plan.source, kind, "")? {
                let version = version?;
                if version
                    .valid_to
                    .as_deref()
                    .is_some_and(|valid_to| valid_to <= plan.anchor.as_str())
                {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Where a source's history starts if it was pruned: its oldest kept run.
    pub fn pruned_before(&self, source: &str) -> Result<Option<String>, StoreError> {
        self.read(|reader| {
            let meta = reader.table(META)?;
            let key = pruned_before_key(source);
            let value = self.guard.call(|| meta.get(key.as_str()))?;
            Ok(value.map(|value| String::from_utf8_lossy(value.value()).into_owned()))
        })
    }

    /// How large the file is and how much of it holds data; the rest is free space that
    /// later writes reuse, or that [`Store::compact`] gives back.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let file_bytes = std::fs::metadata(&self.path)
            .map_err(|error| StoreError::Io {
                path: self.path.clone(),
                reason: error.to_string(),
            })?
            .len();
        // Statistics need a write transaction; it is dropped, not committed.
        self.write_then_abort(|txn| {
            let stats = self.guard.call(|| txn.stats())?;
            Ok(Usage {
                file_bytes,
                used_bytes: stats.allocated_pages() * stats.page_size() as u64,
            })
        })
    }

    /// Gives free space back to the file system. redb refuses while another process is inside
    /// a transaction; then nothing happens and `Ok(false)` says so.
    pub fn compact(&mut self) -> Result<bool, StoreError> {
        let super::Handle::Writable(db) = &mut self.db else {
            return Ok(false);
        };
        let result = self.guard.call(|| match db.compact() {
            Ok(_) => Ok(true),
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(error) => Err(Failure::Redb(error.into())),
        });
        result.map_err(|failure| failure.into_store_error(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Counts, DeliveryState, RunOutcome};
    use chrono::TimeZone;

    fn run(id: u32, status: RunStatus, day: u32, previous: Option<u32>) -> RunRecord {
        let at = Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap();
        let mut record = RunOutcome {
            source: "corp".into(),
            started_at: at,
            finished_at: at,
            authentik_version: None,
            settings_fingerprint: "f".into(),
            health: None,
        }
        .into_record(format!("R{id:02}"), status, None, Counts::default(), 0);
        record.previous_run = previous.map(|id| format!("R{id:02}"));
        record
    }

    fn history() -> Vec<RunRecord> {
        vec![
            run(1, RunStatus::Complete, 1, None),
            run(2, RunStatus::Failed, 2, None),
            run(3, RunStatus::Complete, 3, Some(1)),
            run(4, RunStatus::Complete, 4, Some(3)),
            run(5, RunStatus::Complete, 5, Some(4)),
        ]
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 6, 0, 0, 0).unwrap()
    }

    fn pruned(plan: Option<PrunePlan>) -> Vec<String> {
        plan.map(|plan| plan.runs.into_iter().map(|run| run.run_id).collect())
            .unwrap_or_default()
    }

    #[test]
    fn nothing_goes_without_a_limit() {
        assert_eq!(
            plan_prune("corp", &history(), &Retention::default(), now()),
            None
        );
    }

    #[test]
    fn the_newest_runs_and_the_anchor_stay() {
        let keep_two = Retention {
            keep_runs: Some(2),
            ..Retention::default()
        };
        // R4 and R5 kept; R3, which R4 was compared with, is the anchor.
        let plan = plan_prune("corp", &history(), &keep_two, now()).unwrap();
        assert_eq!(plan.anchor, "R03");
        assert_eq!(pruned(Some(plan)), ["R01", "R02"]);
        let keep_one = Retention {
            keep_runs: Some(1),
            ..Retention::default()
        };
        assert_eq!(
            pruned(plan_prune("corp", &history(), &keep_one, now())),
            ["R01", "R02", "R03"]
        );
    }

    #[test]
    fn days_and_runs_keep_their_union_and_the_latest_always_stays() {
        let days = Retention {
            keep_days: Some(2),
            ..Retention::default()
        };
        // Two days before Nov 6: R4 (Nov 4, noon) and R5 are kept, R3 is R4's anchor.
        assert_eq!(
            pruned(plan_prune("corp", &history(), &days, now())),
            ["R01", "R02"]
        );
        let none_recent = Retention {
            keep_days: Some(1),
            ..Retention::default()
        };
        let later = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        // Nothing is recent, but the latest complete run stays, with its anchor.
        assert_eq!(
            pruned(plan_prune("corp", &history(), &none_recent, later)),
            ["R01", "R02", "R03"]
        );
        let both = Retention {
            keep_days: Some(1),
            keep_runs: Some(4),
            ..Retention::default()
        };
        assert_eq!(
            pruned(plan_prune("corp", &history(), &both, later)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_undelivered_outbox_is_never_pruned() {
        let mut runs = history();
        runs[2].delivery = Some(DeliveryState::pending());
        let keep_one = Retention {
            keep_runs: Some(1),
            ..Retention::default()
        };
        assert_eq!(
            pruned(plan_prune("corp", &runs, &keep_one, now())),
            ["R01", "R02"]
        );
    }
}
