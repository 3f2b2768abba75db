//! Writing: a run's commit (the conflict check, the planned writes, the run record and its
//! ledger entry in one transaction), a failed run's record, updates of a run's record and
//! the health record; and the write transaction every writer waits for.

use std::time::Instant;

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition, TransactionError, WriteTransaction};

use super::codec::{self, CurrentRow, SEP};
use super::guard::Guard;
use super::ops::{Op, Ops, TombstoneWrite};
use super::quarantine;
use super::read::RunLookups;
use super::{
    corrupt_value, from_json, ledger, outbox, to_json, Counts, Failure, Handle, HealthRecord,
    RunOutcome, RunRecord, RunStatus, Sealer, Store, StoreError, CURRENT, DELETIONS, ENTRIES,
    HEALTH, LATEST, POLL_INTERVAL, RUNS, SOURCE_RUNS, TOMBSTONES, VERSIONS, VOLATILE,
};

/// A filler that keeps room in the database file for the record of a failed run on a full
/// disk (see [`Store::commit_complete`]): a failed run's commit needs a few dozen KiB of free
/// pages, which the file otherwise has only by chance.
const RESERVE: TableDefinition<&str, &[u8]> = TableDefinition::new("reserve");
const RESERVE_BYTES: usize = 64 * 1024;

/// A planned complete run: its record (with its id), the run the plan compared with, the
/// planned writes and its ledger entry.
pub struct CommitPlan<'a> {
    pub record: RunRecord,
    /// The source's latest complete run when the run started; if another run committed since,
    /// nothing is stored.
    pub expected_latest: Option<String>,
    /// A new baseline: every current version of the source is closed before the writes.
    pub reset: bool,
    pub ops: Ops,
    /// The source's health as the run saw it, stored in the same transaction.
    pub health: Option<HealthRecord>,
    /// The run's ledger entry, appended in the same transaction.
    pub ledger: &'a mut dyn Sealer,
    /// Asked while the commit waits for the database and as it writes: once it says yes,
    /// the transaction is dropped uncommitted and the commit fails with
    /// [`StoreError::Cancelled`].
    pub cancelled: &'a dyn Fn() -> bool,
}

/// How many planned writes a commit applies between two looks at its cancellation.
const WRITES_BETWEEN_CANCEL_CHECKS: usize = 1024;

impl Store {
    /// A new run id for `source`: a ULID from `at`, made greater than every run id of the
    /// source so that version validity compares as strings even when the clock went back.
    pub fn new_run_id(&self, source: &str, at: DateTime<Utc>) -> Result<String, StoreError> {
        let last = self.read(|reader| reader.last_run_id(source))?;
        next_run_id(last.as_deref(), at).map_err(|failure| failure.into_store_error(&self.path))
    }

    /// Stores a planned complete run in one write transaction and returns its record.
    pub fn commit_complete(&self, mut plan: CommitPlan<'_>) -> Result<RunRecord, StoreError> {
        let cancelled = plan.cancelled;
        self.write_unless(cancelled, |txn| {
            let source = plan.record.source.clone();
            let run_id = plan.record.run_id.clone();
            let (latest, last) = {
                let reader = WriteReader { store: self, txn };
                (
                    reader.latest_complete_id(&source)?,
                    reader.last_run_id(&source)?,
                )
            };
            if latest != plan.expected_latest
                || last.as_deref().is_some_and(|last| last >= run_id.as_str())
            {
                return Err(Failure::Store(StoreError::Conflict {
                    source_name: source,
                    found: last.or(latest).unwrap_or_default(),
                }));
            }
            // A quarantined run's writes are held for a decision: the source's current state
            // stays the run it was compared with's.
            let hold = plan.record.status == RunStatus::Quarantined;
            if hold {
                quarantine::hold_ops(self, txn, &source, &run_id, &mut plan.ops)?;
            }
            let mut tables = WriteTables::open(self, txn)?;
            if plan.reset && !hold {
                tables.reset_source(&source, &run_id)?;
            }
            if !hold {
                let mut applied = 0usize;
                while let Some(op) = plan.ops.next_op().map_err(|error| {
                    Failure::Store(StoreError::Io {
                        path: self.path.clone(),
                        reason: format!("reading the run's planned writes: {error}"),
                    })
                })? {
                    tables.apply(&source, &run_id, op)?;
                    applied += 1;
                    if applied.is_multiple_of(WRITES_BETWEEN_CANCEL_CHECKS) && cancelled() {
                        return Err(Failure::Store(StoreError::Cancelled));
                    }
                }
            }
            let head = ledger::head_in(self, txn, &source)?;
            plan.record.ledger_seq = Some(head.next_seq);
            tables.put_run(&plan.record)?;
            if !hold {
                self.guard
                    .call(|| tables.latest.insert(source.as_str(), run_id.as_str()))?;
            }
            drop(tables);
            outbox::settle_mark(self, txn, &plan.record)?;
            ledger::append_in(
                self,
                txn,
                &source,
                &head,
                Some(&plan.record),
                &mut *plan.ledger,
                hold,
            )?;
            // Rewritten by every complete run, the reserve's old pages are free room in the
            // file after the commit: when the disk fills, the next run's failure still fits.
            let mut reserve = self.guard.call(|| txn.open_table(RESERVE))?;
            let filler = vec![0u8; RESERVE_BYTES];
            self.guard
                .call(|| reserve.insert("reserve", filler.as_slice()))?;
            drop(reserve);
            if let Some(health) = &plan.health {
                self.put_health_in(txn, health)?;
            }
            Ok(plan.record.clone())
        })
    }

    /// Records a failed run and its ledger entry. The stored snapshots are not touched.
    pub fn commit_failed(
        &self,
        outcome: RunOutcome,
        error: &str,
        ledger: &mut dyn Sealer,
    ) -> Result<RunRecord, StoreError> {
        self.write(|txn| {
            let last = WriteReader { store: self, txn }.last_run_id(&outcome.source)?;
            let run_id = next_run_id(last.as_deref(), outcome.started_at)?;
            if let Some(health) = &outcome.health {
                self.put_health_in(txn, health)?;
            }
            let mut record = outcome.into_record(
                run_id,
                RunStatus::Failed,
                Some(error.to_string()),
                Counts::default(),
                0,
            );
            let head = ledger::head_in(self, txn, &record.source)?;
            record.ledger_seq = Some(head.next_seq);
            WriteTables::open(self, txn)?.put_run(&record)?;
            outbox::settle_mark(self, txn, &record)?;
            ledger::append_in(
                self,
                txn,
                &record.source,
                &head,
                Some(&record),
                ledger,
                false,
            )?;
            Ok(record)
        })
    }

    /// Rewrites a run's record, e.g. to advance its delivery state. `update` sees the stored
    /// record (not a stale copy) and may refuse by returning an error message.
    pub fn update_run<T>(
        &self,
        run_id: &str,
        update: impl FnOnce(&mut RunRecord) -> Result<T, String>,
    ) -> Result<T, StoreError> {
        self.write(|txn| {
            let mut runs = self.guard.call(|| txn.open_table(RUNS))?;
            let mut record: RunRecord = match self.guard.call(|| runs.get(run_id))? {
                Some(value) => from_json(value.value(), "run")?,
                None => return Err(Failure::Store(StoreError::UnknownRun(run_id.to_string()))),
            };
            let result = update(&mut record)
                .map_err(|reason| Failure::Store(StoreError::Aborted(reason)))?;
            let bytes = to_json(&record)?;
            self.guard.call(|| runs.insert(run_id, bytes.as_slice()))?;
            drop(runs);
            outbox::settle_mark(self, txn, &record)?;
            Ok(result)
        })
    }

    pub fn put_health(&self, health: &HealthRecord) -> Result<(), StoreError> {
        self.write(|txn| self.put_health_in(txn, health))
    }

    pub(super) fn put_health_in(
        &self,
        txn: &WriteTransaction,
        health: &HealthRecord,
    ) -> Result<(), Failure> {
        let bytes = to_json(health)?;
        let mut table = self.guard.call(|| txn.open_table(HEALTH))?;
        self.guard
            .call(|| table.insert(health.source.as_str(), bytes.as_slice()))?;
        Ok(())
    }
    /// One write transaction, committed only if `operation` succeeds. Waits up to the
    /// store's patience for another process's write transaction to end.
    pub(super) fn write<T>(
        &self,
        operation: impl FnOnce(&WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.write_unless(&|| false, operation)
    }

    /// [`Store::write`], given up (nothing committed) with [`StoreError::Cancelled`] once
    /// `cancelled` says so, while it waits for the database or after `operation`.
    pub(super) fn write_unless<T>(
        &self,
        cancelled: &dyn Fn() -> bool,
        operation: impl FnOnce(&WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let txn = self.begin_write(cancelled)?;
        let value = operation(&txn).map_err(|failure| failure.into_store_error(&self.path))?;
        if cancelled() {
            // Dropped, the transaction is aborted.
            return Err(StoreError::Cancelled);
        }
        self.guard
            .call(|| txn.commit())
            .map_err(|failure| failure.into_store_error(&self.path))?;
        Ok(value)
    }

    /// A write transaction that is only looked into (statistics) and then dropped.
    pub(super) fn write_then_abort<T>(
        &self,
        operation: impl FnOnce(&WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let txn = self.begin_write(&|| false)?;
        let value = operation(&txn).map_err(|failure| failure.into_store_error(&self.path))?;
        self.guard
            .call(|| txn.abort())
            .map_err(|failure| failure.into_store_error(&self.path))?;
        Ok(value)
    }

    fn begin_write(&self, cancelled: &dyn Fn() -> bool) -> Result<WriteTransaction, StoreError> {
        let Handle::Writable(db) = &self.db else {
            return Err(StoreError::Internal {
                path: self.path.clone(),
                reason: "a write on a database opened for reading".into(),
            });
        };
        let started = Instant::now();
        loop {
            match self.guard.call(|| Ok::<_, Failure>(db.try_begin_write())) {
                Ok(Ok(txn)) => return Ok(txn),
                Ok(Err(TransactionError::WouldBlock)) if cancelled() => {
                    return Err(StoreError::Cancelled)
                }
                Ok(Err(TransactionError::WouldBlock)) if started.elapsed() < self.wait => {
                    std::thread::sleep(POLL_INTERVAL)
                }
                Ok(Err(TransactionError::WouldBlock)) => {
                    return Err(StoreError::Locked {
                        path: self.path.clone(),
                        waited_secs: self.wait.as_secs(),
                    })
                }
                Ok(Err(error)) => {
                    return Err(Failure::Redb(error.into()).into_store_error(&self.path))
                }
                Err(failure) => return Err(failure.into_store_error(&self.path)),
            }
        }
    }
}

/// A ULID from `at`, greater than `last`.
fn next_run_id(last: Option<&str>, at: DateTime<Utc>) -> Result<String, Failure> {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let candidate = ulid::Ulid::from_parts(millis, rand::random::<u128>());
    let id = match last.map(ulid::Ulid::from_string) {
        Some(Ok(last)) if last >= candidate => last
            .increment()
            .ok_or_else(|| Failure::Corrupt("run ids exhausted".into()))?,
        Some(Err(_)) => return Err(corrupt_value("run id")),
        _ => candidate,
    };
    Ok(id.to_string())
}

/// Reads inside a write transaction (the conflict check sees what the commit will see).
pub(super) struct WriteReader<'a> {
    pub(super) store: &'a Store,
    pub(super) txn: &'a WriteTransaction,
}

/// The tables a commit writes.
pub(super) struct WriteTables<'t> {
    guard: &'t Guard,
    runs: redb::Table<'t, &'static str, &'static [u8]>,
    index: redb::Table<'t, &'static str, &'static [u8]>,
    latest: redb::Table<'t, &'static str, &'static str>,
    versions: redb::Table<'t, &'static str, &'static [u8]>,
    entries: redb::Table<'t, &'static str, &'static [u8]>,
    current: redb::Table<'t, &'static str, &'static [u8]>,
    tombstones: redb::Table<'t, &'static str, &'static [u8]>,
    deletions: redb::Table<'t, &'static str, &'static [u8]>,
    volatile: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> WriteTables<'t> {
    pub(super) fn open(
        store: &'t Store,
        txn: &'t WriteTransaction,
    ) -> Result<WriteTables<'t>, Failure> {
        let guard = &store.guard;
        Ok(WriteTables {
            guard,
            runs: guard.call(|| txn.open_table(RUNS))?,
            index: guard.call(|| txn.open_table(SOURCE_RUNS))?,
            latest: guard.call(|| txn.open_table(LATEST))?,
            versions: guard.call(|| txn.open_table(VERSIONS))?,
            entries: guard.call(|| txn.open_table(ENTRIES))?,
            current: guard.call(|| txn.open_table(CURRENT))?,
            tombstones: guard.call(|| txn.open_table(TOMBSTONES))?,
            deletions: guard.call(|| txn.open_table(DELETIONS))?,
            volatile: guard.call(|| txn.open_table(VOLATILE))?,
        })
    }

    pub(super) fn put_run(&mut self, record: &RunRecord) -> Result<(), Failure> {
        let bytes = to_json(record)?;
        let index_key = format!("{}{SEP}{}", record.source, record.run_id);
        self.guard
            .call(|| self.runs.insert(record.run_id.as_str(), bytes.as_slice()))?;
        self.guard.call(|| {
            self.index
                .insert(index_key.as_str(), record.status.index_value())
        })?;
        Ok(())
    }

    fn close(&mut self, record_key: &str, valid_from: &str, run_id: &str) -> Result<(), Failure> {
        let key = codec::version_key(record_key, valid_from);
        let closed = {
            let value = self
                .guard
                .call(|| self.versions.get(key.as_str()))?
                .ok_or_else(|| corrupt_value("missing record version"))?;
            codec::close_version(value.value(), run_id)
                .map_err(|_| corrupt_value("record version"))?
        };
        self.guard
            .call(|| self.versions.insert(key.as_str(), closed.as_slice()))?;
        Ok(())
    }

    /// A new baseline: every current version of the source is closed and its tombstones are
    /// forgotten, so that the run's records all start new chains.
    fn reset_source(&mut self, source: &str, run_id: &str) -> Result<(), Failure> {
        let prefix = codec::source_prefix(source);
        let end = codec::prefix_end(&prefix);
        let mut open = Vec::new();
        {
            let mut rows = self
                .guard
                .call(|| self.current.range(prefix.as_str()..end.as_str()))?;
            while let Some((key, value)) = self.guard.call(|| rows.next().transpose())? {
                let row =
                    CurrentRow::decode(value.value()).map_err(|_| corrupt_value("current row"))?;
                open.push((key.value().to_string(), row.valid_from().to_string()));
            }
        }
        for (record_key, valid_from) in open {
            self.close(&record_key, &valid_from, run_id)?;
            self.guard
                .call(|| self.current.remove(record_key.as_str()))?;
        }
        self.guard.call(|| {
            self.tombstones
                .retain_in(prefix.as_str()..end.as_str(), |_, _| false)
        })?;
        Ok(())
    }

    /// The deletion a record's consumers saw in `run_id`: its tombstone, and logged in the
    /// run's deletions.
    fn tombstone(
        &mut self,
        record_key: &str,
        run_id: &str,
        hash: &crate::run::record::Hash,
    ) -> Result<(), Failure> {
        self.guard
            .call(|| self.tombstones.insert(record_key, hash.as_slice()))?;
        let deletion = codec::version_key(record_key, run_id);
        self.guard
            .call(|| self.deletions.insert(deletion.as_str(), hash.as_slice()))?;
        Ok(())
    }

    pub(super) fn apply(&mut self, source: &str, run_id: &str, op: Op) -> Result<(), Failure> {
        match op {
            Op::Put {
                kind,
                external_id,
                replaces,
                tombstone,
                entry,
                current,
                volatile,
            } => {
                let record_key = codec::record_key(source, kind, &external_id);
                if let Some(valid_from) = replaces {
                    self.close(&record_key, &valid_from, run_id)?;
                }
                match tombstone {
                    TombstoneWrite::Keep => {}
                    TombstoneWrite::Clear => {
                        self.guard
                            .call(|| self.tombstones.remove(record_key.as_str()))?;
                    }
                    TombstoneWrite::Set(hash) => self.tombstone(&record_key, run_id, &hash)?,
                }
                let version_key = codec::version_key(&record_key, run_id);
                let version = codec::encode_version(&current.hash, current.flags);
                self.guard.call(|| {
                    self.versions
                        .insert(version_key.as_str(), version.as_slice())
                })?;
                self.guard
                    .call(|| self.entries.insert(version_key.as_str(), entry.as_slice()))?;
                self.guard.call(|| {
                    self.current
                        .insert(record_key.as_str(), current.encode().as_slice())
                })?;
                if let Some(volatile) = volatile {
                    self.guard.call(|| {
                        self.volatile
                            .insert(record_key.as_str(), volatile.as_slice())
                    })?;
                }
            }
            Op::Delete {
                kind,
                external_id,
                valid_from,
                tombstone,
            } => {
                let record_key = codec::record_key(source, kind, &external_id);
                self.close(&record_key, &valid_from, run_id)?;
                self.guard
                    .call(|| self.current.remove(record_key.as_str()))?;
                if let Some(hash) = tombstone {
                    self.tombstone(&record_key, run_id, &hash)?;
                }
            }
            Op::Touch {
                kind,
                external_id,
                current,
                volatile,
            } => {
                let record_key = codec::record_key(source, kind, &external_id);
                self.guard.call(|| {
                    self.current
                        .insert(record_key.as_str(), current.encode().as_slice())
                })?;
                self.guard.call(|| {
                    self.volatile
                        .insert(record_key.as_str(), volatile.as_slice())
                })?;
            }
        }
        Ok(())
    }
}
