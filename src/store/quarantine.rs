//! Quarantined runs: a run over a source's thresholds (mass leavers, an empty listing) is
//! recorded with its ledger entry, but its writes are held, not applied, so the source's
//! current state stays the last complete run's and the next run is compared with that.
//! `aksync approve` applies the held writes as the run's own (the run becomes complete and
//! the source's latest); `aksync reject` drops them. Either decision is recorded in the run's
//! record and in the ledger, in the decision's one transaction.
//!
//! The held writes are the commit's own: the planned ops (copied in chunks, in plan order)
//! and what the run's entry keeps for the next run (snapshot digest, privileged accounts,
//! settings), so that an approval commits exactly what the run planned.

use std::io::{Read, Seek, SeekFrom, Write};

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::codec::{self, SEP};
use super::ledger::{self, KeptState};
use super::ops::Ops;
use super::read::RunLookups;
use super::write::{WriteReader, WriteTables};
use super::{
    outbox, Failure, QuarantineDecision, RunRecord, RunStatus, Sealer, Store, StoreError, LATEST,
    SOURCE_RUNS,
};

/// `source␟run_id␟ops␟chunk` → a chunk of the planned ops; `source␟run_id␟keep␟state` →
/// what the run's entry keeps for the next run.
pub(super) const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held");

/// The size of a chunk of held ops: a mass deletion of 100,000 accounts holds a few dozen.
const CHUNK_BYTES: usize = 1 << 20;

fn run_prefix(source: &str, run_id: &str) -> String {
    format!("{source}{SEP}{run_id}{SEP}")
}

pub(super) fn keep_key(source: &str, run_id: &str, kind: KeptState) -> String {
    format!("{}keep{SEP}{}", run_prefix(source, run_id), kind.name())
}

fn ops_key(source: &str, run_id: &str, chunk: u64) -> String {
    format!("{}ops{SEP}{chunk:010}", run_prefix(source, run_id))
}

/// Holds a quarantined run's planned ops in the commit's transaction.
pub(super) fn hold_ops(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
    run_id: &str,
    ops: &mut Ops,
) -> Result<(), Failure> {
    let mut held = store.guard.call(|| txn.open_table(HELD))?;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    for number in 0.. {
        let filled = fill(ops.raw(), &mut chunk).map_err(|error| io_failure(store, &error))?;
        if filled == 0 {
            break;
        }
        let key = ops_key(source, run_id, number);
        store
            .guard
            .call(|| held.insert(key.as_str(), &chunk[..filled]))?;
    }
    Ok(())
}

/// Reads into `buffer` until it is full or the input ends.
fn fill(input: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

fn io_failure(store: &Store, error: &std::io::Error) -> Failure {
    Failure::Store(StoreError::Io {
        path: store.path.clone(),
        reason: format!("holding a quarantined run's planned writes: {error}"),
    })
}

/// Why a decision on a run cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("run {0} is not quarantined: only a quarantined run is approved or rejected")]
    NotQuarantined(String),
    #[error("run {run_id} was already {decision} on {at} by {by}")]
    AlreadyDecided {
        run_id: String,
        decision: &'static str,
        at: String,
        by: String,
    },
    #[error("run {run_id} is not the newest run of source `{source_name}`: run {newer} was {status} after it and compared with the last complete run, so this run's changes are already in its; reject this one with `aksync reject {run_id}` (a newer quarantined run can be approved instead)")]
    NotNewest {
        run_id: String,
        source_name: String,
        newer: String,
        status: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Takes `decision` on the quarantined run `run_id` in one write transaction: an approval
    /// applies its held writes as its own and makes it the source's latest complete run
    /// (`deliver`: its envelopes wait for webhook delivery); a rejection drops them. Either
    /// way the decision goes into the run's record and `ledger` is appended.
    pub fn decide_quarantined(
        &self,
        run_id: &str,
        decision: QuarantineDecision,
        deliver: bool,
        ledger: &mut dyn Sealer,
    ) -> Result<RunRecord, DecisionError> {
        let mut refused = None;
        let decided = self.write(|txn| {
            let reader = WriteReader { store: self, txn };
            let mut record = reader.run(run_id)?;
            if let Some(error) = refusal(&reader, &record, &decision)? {
                refused = Some(error);
                return Err(Failure::Store(StoreError::Aborted("refused".into())));
            }
            let source = record.source.clone();
            let approved = decision.decision == super::run::Decision::Approved;
            let quarantine = record.quarantine.get_or_insert_with(Default::default);
            quarantine.decision = Some(decision.clone());
            if approved {
                record.status = RunStatus::Complete;
                if deliver && record.envelopes.as_ref().is_some_and(|e| e.lines > 0) {
                    record.delivery = Some(super::DeliveryState::pending());
                }
                self.apply_held(txn, &source, run_id)?;
            }
            self.drop_held(txn, &source, run_id)?;
            let mut tables = WriteTables::open(self, txn)?;
            tables.put_run(&record)?;
            drop(tables);
            if approved {
                let mut latest = self.guard.call(|| txn.open_table(LATEST))?;
                self.guard.call(|| latest.insert(source.as_str(), run_id))?;
                drop(latest);
                outbox::settle_mark(self, txn, &record)?;
            }
            let head = ledger::head_in(self, txn, &source)?;
            ledger::append_in(self, txn, &source, &head, None, &mut *ledger, false)?;
            Ok(record)
        });
        match (decided, refused) {
            (_, Some(error)) => Err(error),
            (result, None) => Ok(result?),
        }
    }

    /// Applies a quarantined run's held ops and kept state, as its commit would have.
    fn apply_held(
        &self,
        txn: &WriteTransaction,
        source: &str,
        run_id: &str,
    ) -> Result<(), Failure> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let mut file = tempfile::tempfile_in(dir).map_err(|error| io_failure(self, &error))?;
        let prefix = run_prefix(source, run_id);
        let kept: Vec<(String, Vec<u8>)> = {
            let held = self.guard.call(|| txn.open_table(HELD))?;
            let end = codec::prefix_end(&prefix);
            let mut rows = self
                .guard
                .call(|| held.range(prefix.as_str()..end.as_str()))?;
            let mut kept = Vec::new();
            while let Some((key, value)) = self.guard.call(|| rows.next().transpose())? {
                let rest = &key.value()[prefix.len()..];
                if rest.starts_with("ops") {
                    file.write_all(value.value())
                        .map_err(|error| io_failure(self, &error))?;
                } else if let Some(name) = rest.strip_prefix(&format!("keep{SEP}")) {
                    kept.push((name.to_string(), value.value().to_vec()));
                }
            }
            kept
        };
        file.seek(SeekFrom::Start(0))
            .map_err(|error| io_failure(self, &error))?;
        let mut ops = Ops::from_file(file);
        let mut tables = WriteTables::open(self, txn)?;
        while let Some(op) = ops.next_op().map_err(|error| io_failure(self, &error))? {
            tables.apply(source, run_id, op)?;
        }
        drop(tables);
        for (name, state) in kept {
            let kind = KeptState::named(&name).ok_or_else(|| {
                Failure::Corrupt(format!("held state {name:?} of run {run_id} is unknown"))
            })?;
            ledger::keep_in(self, txn, source, kind, &state)?;
        }
        Ok(())
    }

    /// Removes a run's held writes.
    pub(super) fn drop_held(
        &self,
        txn: &WriteTransaction,
        source: &str,
        run_id: &str,
    ) -> Result<(), Failure> {
        let prefix = run_prefix(source, run_id);
        let end = codec::prefix_end(&prefix);
        let mut held = self.guard.call(|| txn.open_table(HELD))?;
        self.guard
            .call(|| held.retain_in(prefix.as_str()..end.as_str(), |_, _| false))?;
        Ok(())
    }
}

/// Why `decision` cannot be taken on `record`, if it cannot.
fn refusal(
    reader: &WriteReader<'_>,
    record: &RunRecord,
    decision: &QuarantineDecision,
) -> Result<Option<DecisionError>, Failure> {
    if let Some(taken) = record.quarantine.as_ref().and_then(|q| q.decision.as_ref()) {
        return Ok(Some(DecisionError::AlreadyDecided {
            run_id: record.run_id.clone(),
            decision: taken.decision.as_str(),
            at: taken.at.to_rfc3339(),
            by: taken.by.clone(),
        }));
    }
    if record.status != RunStatus::Quarantined {
        return Ok(Some(DecisionError::NotQuarantined(record.run_id.clone())));
    }
    if decision.decision == super::run::Decision::Rejected {
        return Ok(None);
    }
    // Approved, the run's writes apply on top of the run it was compared with: no run may
    // have been stored on that since.
    let index = reader.open(SOURCE_RUNS)?;
    let prefix = codec::source_prefix(&record.source);
    let own = format!("{prefix}{}", record.run_id);
    let end = codec::prefix_end(&prefix);
    let mut after = reader
        .guard()
        .call(|| index.range(own.as_str()..end.as_str()))?;
    let base_moved = reader.latest_complete_id(&record.source)? != record.previous_run;
    while let Some((key, status)) = reader.guard().call(|| after.next().transpose())? {
        let id = &key.value()[prefix.len()..];
        if id == record.run_id {
            continue;
        }
        let status = RunStatus::from_index(status.value());
        if let Some(status @ (RunStatus::Complete | RunStatus::Quarantined)) = status {
            return Ok(Some(DecisionError::NotNewest {
                run_id: record.run_id.clone(),
                source_name: record.source.clone(),
                newer: id.to_string(),
                status: status.as_str(),
            }));
        }
    }
    if base_moved {
        return Err(Failure::Store(StoreError::Aborted(format!(
            "run {} was compared with run {}, which is no longer the source's latest complete run",
            record.run_id,
            record.previous_run.as_deref().unwrap_or("none")
        ))));
    }
    Ok(None)
}
