//! Retention: pruning the snapshots the configured history no longer keeps, without touching
//! the evidence, and (with `keep_evidence_days`) the evidence older than that.
//!
//! The snapshots kept are those of each source's latest complete run, of the complete runs
//! of the last `keep_days` days and of its newest `keep_runs` complete runs. The run the
//! oldest kept run was compared with stays too, as the anchor, so that every kept run's
//! diff and envelope file can still be replayed exactly; so does any run whose envelopes are
//! not delivered yet, with the run it was compared with (a skipped delivery is decided, and
//! does not hold retention). What goes
//! is the record versions only older runs saw (a version closed at or before the anchor is
//! visible to no kept run). Run records and ledger entries stay: a pruned run still counts
//! in reports and its chain still verifies. Tombstones and the deletion log stay, so that a
//! record that comes back still chains to its deletion.
//!
//! With `keep_evidence_days`, the ledger entries and run records of the runs older than that
//! go too, but only of runs whose snapshots are already gone; a prune entry records the
//! digest of the last entry removed, where the kept chain starts.

use chrono::{DateTime, Duration as Span, Utc};
use redb::ReadableTable;

use super::codec::{self, SEP};
use super::read::RunLookups;
use super::{
    corrupt_value, ledger, DeliveryStatus, Failure, RunRecord, RunStatus, Sealer, Store,
    StoreError, ENTRIES, META, RUNS, SOURCE_RUNS, VERSIONS,
};
use crate::config::Retention;

/// What pruning a source would remove.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunePlan {
    pub source: String,
    /// The oldest run whose snapshot is kept: the versions only older runs saw go.
    pub anchor: String,
    /// The runs whose snapshots go now, oldest first (runs pruned before are not listed).
    pub runs: Vec<RunRecord>,
    /// The runs whose records and ledger entries go too (`keep_evidence_days`), oldest first.
    pub evidence_of: Vec<RunRecord>,
    /// The first run whose evidence stays, when some goes: the kept chain starts with its
    /// entry.
    pub evidence_kept_from: Option<RunRecord>,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    pub versions: u64,
    pub evidence_runs: u64,
}

/// The database file and how much of it holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub file_bytes: u64,
    pub used_bytes: u64,
}

/// Which snapshots of one source `retention` lets go at `now`; `runs` are the source's runs
/// whose snapshots are still kept, oldest first. `None` when nothing goes.
pub fn plan_prune(
    source: &str,
    runs: &[RunRecord],
    retention: &Retention,
    now: DateTime<Utc>,
) -> Option<PrunePlan> {
    if retention.keep_days.is_none() && retention.keep_runs.is_none() {
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
    // An outbox that is not delivered can always be rebuilt: its run keeps the run it was
    // compared with. One whose delivery was skipped holds nothing.
    if let Some(undelivered) = runs.iter().find(|run| {
        run.delivery.as_ref().is_some_and(|delivery| {
            !matches!(
                delivery.status,
                DeliveryStatus::Delivered | DeliveryStatus::Skipped
            )
        })
    }) {
        let compared_with = undelivered.previous_run.as_ref();
        anchor = anchor.min(compared_with.unwrap_or(&undelivered.run_id).clone());
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
        evidence_of: Vec::new(),
        evidence_kept_from: None,
    })
}

/// The meta key that remembers where a source's kept snapshots start after pruning.
pub(super) fn pruned_before_key(source: &str) -> String {
    format!("pruned_before{SEP}{source}")
}

impl Store {
    /// The runs of a source whose snapshots are still kept, oldest first: the ones a prune
    /// looks at, so that its cost is what retention keeps, not the whole history.
    pub fn runs_with_snapshots(&self, source: &str) -> Result<Vec<RunRecord>, StoreError> {
        let from = self.pruned_before(source)?;
        let mut runs = match &from {
            Some(from) => vec![self.run(from)?],
            None => Vec::new(),
        };
        runs.extend(self.runs_between(source, from.as_deref(), None)?);
        Ok(runs)
    }

    /// The oldest runs of a source whose snapshots are gone and that finished before
    /// `cutoff`, oldest first, and the run after them: the evidence `keep_evidence_days` lets
    /// go, and where the kept chain starts. Reads only those runs.
    pub fn evidence_older_than(
        &self,
        source: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<(Vec<RunRecord>, Option<RunRecord>), StoreError> {
        let Some(kept_from) = self.pruned_before(source)? else {
            return Ok((Vec::new(), None));
        };
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let batch = self.read(|reader| {
                let ids =
                    reader.run_ids_where(source, after.as_deref(), None, false, &mut |ids| {
                        ids.len() < 64
                    })?;
                ids.iter()
                    .map(|(id, _)| reader.run(id))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            let Some(last) = batch.last() else {
                return Ok((found, None));
            };
            after = Some(last.run_id.clone());
            for run in batch {
                if run.run_id >= kept_from || run.finished_at >= cutoff {
                    return Ok((found, Some(run)));
                }
                found.push(run);
            }
        }
    }

    /// Removes the versions only a plan's runs saw, and with `evidence_of` those runs'
    /// records and ledger entries, and appends the prune's own entry (`record`), in one
    /// write transaction.
    pub fn prune(&self, plan: &PrunePlan, record: &mut dyn Sealer) -> Result<Pruned, StoreError> {
        self.write(|txn| {
            let guard = &self.guard;
            let mut removed = 0;
            if !plan.runs.is_empty() {
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
            }
            if let Some(first_kept) = &plan.evidence_kept_from {
                self.remove_evidence_in(txn, &plan.source, &plan.evidence_of, first_kept)?;
            }
            let head = ledger::head_in(self, txn, &plan.source)?;
            ledger::append_in(self, txn, &plan.source, &head, None, record, false)?;
            Ok(Pruned {
                runs: plan.runs.len() as u64,
                versions: removed,
                evidence_runs: plan.evidence_of.len() as u64,
            })
        })
    }

    /// Removes the records and ledger entries of `removed`, with their index rows: the
    /// entries before `first_kept`'s.
    fn remove_evidence_in(
        &self,
        txn: &redb::WriteTransaction,
        source: &str,
        removed: &[RunRecord],
        first_kept: &RunRecord,
    ) -> Result<(), Failure> {
        let guard = &self.guard;
        let mut records = guard.call(|| txn.open_table(RUNS))?;
        let mut index = guard.call(|| txn.open_table(SOURCE_RUNS))?;
        for run in removed {
            guard.call(|| records.remove(run.run_id.as_str()))?;
            let key = format!("{source}{SEP}{}", run.run_id);
            guard.call(|| index.remove(key.as_str()))?;
            // A quarantined run nobody decided on goes with its held writes.
            if run.awaits_decision() {
                self.drop_held(txn, source, &run.run_id)?;
            }
        }
        let ids: Vec<String> = removed.iter().map(|run| run.run_id.clone()).collect();
        let before = first_kept
            .ledger_seq
            .ok_or_else(|| corrupt_value("run without its ledger entry"))?;
        ledger::remove_before_in(self, txn, source, before, &ids)
    }

    /// How many versions [`Store::prune`] would remove for a plan, read without writing.
    pub fn prunable_versions(&self, plan: &PrunePlan) -> Result<u64, StoreError> {
        let reader = self.reader()?;
        let mut count = 0;
        for kind in crate::run::record::RecordKind::ALL {
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

    /// Where a source's kept snapshots start if it was pruned: the oldest run whose snapshot
    /// is kept.
    pub fn pruned_before(&self, source: &str) -> Result<Option<String>, StoreError> {
        self.reader()?.snapshots_kept_from(source)
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
            settings_changed: Vec::new(),
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
        let keep_one = Retention {
            keep_runs: Some(1),
            ..Retention::default()
        };
        // R4 waits: it and R3, which it was compared with, stay, so its file can be rebuilt.
        runs[3].delivery = Some(DeliveryState::pending());
        assert_eq!(
            pruned(plan_prune("corp", &runs, &keep_one, now())),
            ["R01", "R02"]
        );
        // R3 waits, and it was compared with R1.
        runs[3].delivery = None;
        runs[2].delivery = Some(DeliveryState::pending());
        assert_eq!(plan_prune("corp", &runs, &keep_one, now()), None);
        // A skipped delivery holds nothing.
        runs[2].delivery.as_mut().unwrap().status = DeliveryStatus::Skipped;
        assert_eq!(
            pruned(plan_prune("corp", &runs, &keep_one, now())),
            ["R01", "R02", "R03"]
        );
    }
}
