//! The redb database: runs, record versions, the current state of every source, and health.
//!
//! Storage grows with changes, not with runs or logins. Every record (account, group,
//! membership) is kept as versions; a version is valid from the run that first saw its
//! material content until the run that changed or removed it (see [`crate::run::record`] for what
//! "changed" means). Volatile values (`last_login_at`, `member_count`) are kept as their
//! latest value only. Any past complete run reads back as the versions whose validity covers
//! its id; run ids are ULIDs that increase within a source, so "covers" is a string
//! comparison.
//!
//! Tables (keys are `␟`-joined strings, see [`codec`]):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `schema_version` | the layout version |
//! | `runs` | run id | [`RunRecord`] as JSON (growable: unknown fields are kept) |
//! | `source_runs` | `source␟run_id` | the run's status: a per-source run index |
//! | `latest_complete` | source | the id of the source's latest complete run |
//! | `versions` | `source␟kind␟external_id␟valid_from` | `valid_to`, material hash, flags (60 bytes) |
//! | `entries` | the same key as its version | the version's entry JSON (`record`, `payload`) |
//! | `current` | `source␟kind␟external_id` | `valid_from`, material hash, volatile digest, flags |
//! | `tombstones` | `source␟kind␟external_id` | the hash of a deleted record's last envelope |
//! | `volatile` | `source␟kind␟external_id` | latest volatile values as JSON |
//! | `health` | source | [`HealthRecord`] as JSON |
//!
//! A run is planned without any write transaction (reading `current` and the spooled new
//! records side by side) and committed in one write transaction that holds only the conflict
//! check, the planned writes and the run record. The database is opened in redb's
//! multi-writer mode, so several aksync processes (the daemon and an admin's queries) share
//! the file; opening and reading never take the write lock.

pub mod codec;
mod file;
mod guard;
pub mod ledger;
mod migrate;
pub mod ops;
mod outbox;
pub mod prune;
pub mod run;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redb::{
    ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    TransactionError, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::run::record::{Hash, RawEntry, RecordKind};
use codec::{CurrentRow, DecodeError, Flags, SEP};
pub use guard::in_guarded_operation;
use guard::Guard;
/// A filler that keeps room in the database file for the record of a failed run on a full
/// disk (see [`Store::commit_complete`]): a failed run's commit needs a few dozen KiB of free
/// pages, which the file otherwise has only by chance.
const RESERVE: TableDefinition<&str, &[u8]> = TableDefinition::new("reserve");
const RESERVE_BYTES: usize = 64 * 1024;

pub use ledger::{ChainHead, IndexError, IndexRows, KeptState, LedgerRow, LedgerWrite, Sealer};
use ops::{Op, Ops};
pub use run::{
    ChangeCounts, Counts, DeliveryState, DeliveryStatus, EnvelopeSummary, HealthRecord,
    HealthStatus, RunOutcome, RunRecord, RunStatus, TokenUser, CANCELLED_BY_SHUTDOWN,
};

/// The layout version of the tables below. Bump it with a migration in `migrate.rs`.
pub const SCHEMA_VERSION: u32 = 4;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
const SOURCE_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("source_runs");
const LATEST: TableDefinition<&str, &str> = TableDefinition::new("latest_complete");
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
const TOMBSTONES: TableDefinition<&str, &[u8]> = TableDefinition::new("tombstones");
/// Every deletion's hash by the run that found it, `source␟kind␟external_id␟run_id`: never
/// pruned (it is small), so a rebuilt envelope file of a record that came back after a
/// deletion still names that deletion after retention removed the deleted version.
const DELETIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("deletions");
const VOLATILE: TableDefinition<&str, &[u8]> = TableDefinition::new("volatile");
const HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("health");

const SCHEMA_VERSION_KEY: &str = "schema_version";
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// redb's page cache. Runs read and write each record about once, so a large cache buys
/// little and would count against the memory budget of a large directory.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path} is in use by another process (waited {waited_secs}s): stop the other aksync command or service, or try again")]
    Locked { path: PathBuf, waited_secs: u64 },
    #[error("database {path} is corrupt or not an aksync database ({reason}): restore it from a backup, or move it aside to start a new history")]
    Corrupt { path: PathBuf, reason: String },
    #[error("database {path} was written by a newer aksync (schema {found}, this build knows up to {SCHEMA_VERSION}): upgrade aksync")]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("database {path} has schema {found}, which this aksync must migrate to {SCHEMA_VERSION} before it writes, and it is open in another process ({holders}): restart the service (`systemctl restart aksync`) so that the new version migrates it, or stop the other process first; read-only commands work meanwhile")]
    MigrationBlocked {
        path: PathBuf,
        found: u32,
        holders: String,
    },
    #[error("database {path} has schema {found}, which this aksync reads only after migrating it to {SCHEMA_VERSION}: run `aksync sync` (or start the service) once to migrate it")]
    NeedsMigration { path: PathBuf, found: u32 },
    #[error("cannot use database {path}: {reason}; check that state_dir is right and writable by this user")]
    Io { path: PathBuf, reason: String },
    #[error("internal error while using database {path}, please report it: {reason}; the database itself is not known to be damaged")]
    Internal { path: PathBuf, reason: String },
    #[error("no run `{0}`: list runs with `aksync runs`")]
    UnknownRun(String),
    #[error("run {run_id} is {status}, not complete: only complete runs have a snapshot")]
    NotComplete {
        run_id: String,
        status: &'static str,
    },
    #[error("the snapshot of run {run_id} was removed by [retention] (snapshots are kept from run {kept_from}); its events are still in the ledger: see `aksync report {run_id}` and `aksync history`")]
    SnapshotPruned { run_id: String, kept_from: String },
    #[error("another run of source `{source_name}` committed meanwhile (run {found}); this run was not stored, so that history never goes backwards: run it again")]
    Conflict { source_name: String, found: String },
    #[error("the run was not stored: {0}")]
    Aborted(String),
    /// aksync's own stop reached a run's plan or commit; nothing of it was stored.
    #[error("{CANCELLED_BY_SHUTDOWN}")]
    Cancelled,
}

/// One stored version of a record, as [`Reader::versions`] returns it; its entry is parsed
/// only when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordVersion {
    pub external_id: String,
    pub valid_from: String,
    pub valid_to: Option<String>,
    pub hash: Hash,
    pub flags: codec::Flags,
}

impl RecordVersion {
    /// Whether this version is the one `run_id` saw.
    pub fn valid_at(&self, run_id: &str) -> bool {
        covers(&self.valid_from, self.valid_to.as_deref(), run_id)
    }
}

/// Whether a version valid from `valid_from` until `valid_to` is the one `run_id` saw.
pub fn covers(valid_from: &str, valid_to: Option<&str>, run_id: &str) -> bool {
    valid_from <= run_id && valid_to.is_none_or(|valid_to| valid_to > run_id)
}

/// What a run needs to know about its source before it plans.
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    pub latest_complete: Option<RunRecord>,
    /// The source's newest run id of any status: a new run's id must be greater.
    pub last_run_id: Option<String>,
}

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

pub struct Store {
    db: Handle,
    path: PathBuf,
    wait: Duration,
    guard: Guard,
}

/// How the database is open: for writing (syncs, the daemon, pruning), or for reading only
/// (queries), which never takes the write lock and so never waits for another process's
/// commit.
enum Handle {
    Writable(Database),
    ReadOnly(redb::ReadOnlyDatabase),
}

impl Store {
    /// Opens an existing database for queries, without the write lock: a query answers while
    /// another process commits. A database that must first be created, migrated or repaired
    /// (after a writer crashed) is opened for writing instead, once.
    pub fn open_for_reading(path: &Path, wait: Duration) -> Result<Store, StoreError> {
        file::prepare(path)?;
        let guard = Guard::default();
        let opened = guard.call(|| builder().open_read_only_with_backend(backend(path, false)?));
        let db = match opened {
            Ok(db) => db,
            Err(Failure::Redb(redb::Error::RepairAborted | redb::Error::DatabaseAlreadyOpen)) => {
                return Store::open(path, wait)
            }
            Err(failure) => return Err(failure.into_store_error(path)),
        };
        let store = Store {
            db: Handle::ReadOnly(db),
            path: path.to_path_buf(),
            wait,
            guard,
        };
        match store.layout()? {
            // A reader reads the layout before this one as it is: it lacks only the
            // ledger's tables, which reads treat as empty. It never migrates.
            Layout::Current | Layout::Old(READABLE_OLD_SCHEMA) => Ok(store),
            Layout::Old(found) => Err(StoreError::NeedsMigration {
                path: path.to_path_buf(),
                found,
            }),
            Layout::Empty => {
                drop(store);
                Store::open(path, wait)
            }
        }
    }

    /// Opens or creates the database for writing, waiting up to `wait` for another process
    /// that holds it exclusively. A current database is checked with a read transaction only;
    /// a new one gets its tables, and an older layout is migrated, in one write transaction.
    pub fn open(path: &Path, wait: Duration) -> Result<Store, StoreError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            create_private_dir(parent).map_err(|error| StoreError::Io {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })?;
        }
        file::prepare(path)?;
        let guard = Guard::default();
        let started = Instant::now();
        let db = loop {
            let attempt = guard.call(|| builder().create_with_backend(backend(path, true)?));
            match attempt {
                Ok(db) => break db,
                Err(Failure::Redb(redb::Error::DatabaseAlreadyOpen))
                    if started.elapsed() < wait =>
                {
                    std::thread::sleep(POLL_INTERVAL)
                }
                Err(Failure::Redb(redb::Error::DatabaseAlreadyOpen)) => {
                    return Err(StoreError::Locked {
                        path: path.to_path_buf(),
                        waited_secs: wait.as_secs(),
                    })
                }
                Err(failure) => return Err(failure.into_store_error(path)),
            }
        };
        let store = Store {
            db: Handle::Writable(db),
            path: path.to_path_buf(),
            wait,
            guard,
        };
        match store.layout()? {
            Layout::Current => {}
            Layout::Empty => store.write(|txn| store.prepare(txn))?,
            Layout::Old(found) => {
                drop(store);
                migrate_alone(path, found)?;
                return Store::open(path, wait);
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The error for stored data that does not read back.
    pub fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("unreadable {what}"),
        }
    }

    /// What the file holds, read without the write lock.
    fn layout(&self) -> Result<Layout, StoreError> {
        self.read(|reader| {
            let meta = match self.guard.call(|| reader.txn.open_table(META)) {
                Ok(meta) => meta,
                Err(Failure::Redb(redb::Error::TableDoesNotExist(_))) => return Ok(Layout::Empty),
                Err(failure) => return Err(failure),
            };
            let version = match self.guard.call(|| meta.get(SCHEMA_VERSION_KEY))? {
                None => return Ok(Layout::Empty),
                Some(value) => parse_schema_version(value.value())?,
            };
            if version > SCHEMA_VERSION {
                return Err(Failure::Store(StoreError::NewerSchema {
                    path: self.path.clone(),
                    found: version,
                }));
            }
            if version < SCHEMA_VERSION {
                return Ok(Layout::Old(version));
            }
            Ok(Layout::Current)
        })
    }

    /// Creates the tables, or migrates an older layout, in the caller's write transaction.
    /// Re-checks the layout inside it: another process may have done it meanwhile.
    fn prepare(&self, txn: &WriteTransaction) -> Result<(), Failure> {
        let mut meta = self.guard.call(|| txn.open_table(META))?;
        let found = match self.guard.call(|| meta.get(SCHEMA_VERSION_KEY))? {
            None => None,
            Some(value) => Some(parse_schema_version(value.value())?),
        };
        match found {
            Some(SCHEMA_VERSION) => return Ok(()),
            Some(version) if version > SCHEMA_VERSION => {
                return Err(Failure::Store(StoreError::NewerSchema {
                    path: self.path.clone(),
                    found: version,
                }))
            }
            Some(old) => migrate::migrate(self, txn, old)?,
            None => {}
        }
        for table in [
            RUNS,
            SOURCE_RUNS,
            VERSIONS,
            ENTRIES,
            CURRENT,
            TOMBSTONES,
            VOLATILE,
            HEALTH,
            DELETIONS,
            ledger::LEDGER,
            ledger::LEDGER_HEADS,
            ledger::LEDGER_ACCOUNTS,
            ledger::LEDGER_NAMES,
            ledger::LEDGER_SETTINGS,
            ledger::SNAPSHOT_DIGESTS,
            ledger::PRIVILEGED_NOW,
            ledger::RUN_SETTINGS,
        ] {
            self.guard.call(|| txn.open_table(table))?;
        }
        self.guard.call(|| txn.open_table(LATEST))?;
        let version = SCHEMA_VERSION.to_string();
        self.guard
            .call(|| meta.insert(SCHEMA_VERSION_KEY, version.as_bytes()))?;
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|reader| {
            let meta = reader.table(META)?;
            let value = self
                .guard
                .call(|| meta.get(SCHEMA_VERSION_KEY))?
                .ok_or_else(|| corrupt_value("schema version"))?;
            parse_schema_version(value.value())
        })
    }

    /// What a run of `source` needs before it plans.
    pub fn source_state(&self, source: &str) -> Result<SourceState, StoreError> {
        self.read(|reader| {
            let latest_complete = match reader.latest_complete_id(source)? {
                Some(id) => Some(reader.run(&id)?),
                None => None,
            };
            Ok(SourceState {
                latest_complete,
                last_run_id: reader.last_run_id(source)?,
            })
        })
    }

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
            let mut tables = WriteTables::open(self, txn)?;
            if plan.reset {
                tables.reset_source(&source, &run_id)?;
            }
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
            let head = ledger::head_in(self, txn, &source)?;
            plan.record.ledger_seq = Some(head.next_seq);
            tables.put_run(&plan.record)?;
            self.guard
                .call(|| tables.latest.insert(source.as_str(), run_id.as_str()))?;
            drop(tables);
            outbox::settle_mark(self, txn, &plan.record)?;
            ledger::append_in(
                self,
                txn,
                &source,
                &head,
                Some(&plan.record),
                &mut *plan.ledger,
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
            ledger::append_in(self, txn, &record.source, &head, Some(&record), ledger)?;
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

    /// Runs of one source (through the per-source index) or of all, newest first.
    pub fn runs(&self, source: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|reader| match source {
            Some(source) => reader
                .run_ids(source)?
                .iter()
                .rev()
                .map(|(id, _)| reader.run(id))
                .collect(),
            None => {
                let runs = reader.table(RUNS)?;
                let mut records = Vec::new();
                let mut rows = self.guard.call(|| runs.iter())?.rev();
                while let Some(row) = self.guard.call(|| rows.next().transpose())? {
                    records.push(from_json(row.1.value(), "run")?);
                }
                Ok(records)
            }
        })
    }

    pub fn run(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        self.read(|reader| reader.run(run_id))
    }

    /// The complete runs of a source, oldest first.
    pub fn complete_runs(&self, source: &str) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|reader| {
            reader
                .run_ids(source)?
                .iter()
                .filter(|(_, status)| *status == RunStatus::Complete)
                .map(|(id, _)| reader.run(id))
                .collect()
        })
    }

    /// The runs of a source after `after` up to and including `up_to` (by id), oldest first:
    /// read through the run index, at the cost of those runs alone.
    pub fn runs_between(
        &self,
        source: &str,
        after: Option<&str>,
        up_to: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|reader| {
            reader
                .run_ids_where(source, after, up_to, false, &mut |_| true)?
                .iter()
                .map(|(id, _)| reader.run(id))
                .collect()
        })
    }

    /// The newest `count` complete runs of a source up to and including `up_to` (or before
    /// it, with `inclusive` false), oldest first.
    pub fn complete_runs_back(
        &self,
        source: &str,
        up_to: &str,
        inclusive: bool,
        count: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let wanted = |(id, status): &&(String, RunStatus)| {
            *status == RunStatus::Complete && (inclusive || id.as_str() != up_to)
        };
        self.read(|reader| {
            let ids = reader.run_ids_where(source, None, Some(up_to), true, &mut |ids| {
                ids.iter().filter(wanted).count() < count
            })?;
            ids.iter()
                .rev()
                .filter(wanted)
                .map(|(id, _)| reader.run(id))
                .collect()
        })
    }

    pub fn latest_complete(&self, source: &str) -> Result<Option<RunRecord>, StoreError> {
        self.read(|reader| match reader.latest_complete_id(source)? {
            Some(id) => Ok(Some(reader.run(&id)?)),
            None => Ok(None),
        })
    }

    /// A consistent read-only view of the database, for reads that stream.
    pub fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let txn = self
            .guard
            .call(|| match &self.db {
                Handle::Writable(db) => db.begin_read(),
                Handle::ReadOnly(db) => db.begin_read(),
            })
            .map_err(|failure| failure.into_store_error(&self.path))?;
        Ok(Reader {
            store: self,
            txn,
            entries: std::cell::OnceCell::new(),
        })
    }

    /// How many record versions are stored for a source, all kinds together.
    pub fn version_count(&self, source: &str) -> Result<u64, StoreError> {
        self.read(|reader| {
            let versions = reader.table(VERSIONS)?;
            let start = codec::source_prefix(source);
            let end = codec::prefix_end(&start);
            let mut rows = self
                .guard
                .call(|| versions.range(start.as_str()..end.as_str()))?;
            let mut count = 0;
            while self.guard.call(|| rows.next().transpose())?.is_some() {
                count += 1;
            }
            Ok(count)
        })
    }

    pub fn put_health(&self, health: &HealthRecord) -> Result<(), StoreError> {
        self.write(|txn| self.put_health_in(txn, health))
    }

    fn put_health_in(&self, txn: &WriteTransaction, health: &HealthRecord) -> Result<(), Failure> {
        let bytes = to_json(health)?;
        let mut table = self.guard.call(|| txn.open_table(HEALTH))?;
        self.guard
            .call(|| table.insert(health.source.as_str(), bytes.as_slice()))?;
        Ok(())
    }

    pub fn health(&self, source: &str) -> Result<Option<HealthRecord>, StoreError> {
        self.read(|reader| {
            let health = reader.table(HEALTH)?;
            let value = self.guard.call(|| health.get(source))?;
            value
                .map(|value| from_json(value.value(), "health"))
                .transpose()
        })
    }

    fn read<T>(
        &self,
        operation: impl FnOnce(&Reader<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let reader = self.reader()?;
        operation(&reader).map_err(|failure| failure.into_store_error(&self.path))
    }

    /// One write transaction, committed only if `operation` succeeds. Waits up to the
    /// store's patience for another process's write transaction to end.
    fn write<T>(
        &self,
        operation: impl FnOnce(&WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        self.write_unless(&|| false, operation)
    }

    /// [`Store::write`], given up (nothing committed) with [`StoreError::Cancelled`] once
    /// `cancelled` says so, while it waits for the database or after `operation`.
    fn write_unless<T>(
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
    fn write_then_abort<T>(
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

enum Layout {
    Empty,
    /// An older schema, by its number.
    Old(u32),
    Current,
}

/// The older schema a newer binary can read without migrating it.
const READABLE_OLD_SCHEMA: u32 = 3;

/// Migrates an older layout while no other process has the file open: redb's single-writer
/// mode refuses to open while any multi-process handle (every aksync of schema 3 or later,
/// reading or writing) holds it, so an older daemon can never go on writing into a layout it
/// does not know. Refused, it names the processes that hold the file.
fn migrate_alone(path: &Path, found: u32) -> Result<(), StoreError> {
    let guard = Guard::default();
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    let db = match guard.call(|| builder.create(path)) {
        Ok(db) => db,
        Err(Failure::Redb(redb::Error::DatabaseAlreadyOpen)) => {
            return Err(StoreError::MigrationBlocked {
                path: path.to_path_buf(),
                found,
                holders: file::holders(path),
            })
        }
        Err(failure) => return Err(failure.into_store_error(path)),
    };
    let store = Store {
        db: Handle::Writable(db),
        path: path.to_path_buf(),
        wait: Duration::ZERO,
        guard,
    };
    store.write(|txn| store.prepare(txn))
}

fn parse_schema_version(bytes: &[u8]) -> Result<u32, Failure> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| corrupt_value("schema version"))
}

/// How every handle opens the file: writers in other processes allowed, the cache capped.
fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder
        .set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .set_cache_size(CACHE_BYTES);
    builder
}

/// The database file for redb, opened by aksync itself so that a symbolic link planted in
/// its place is not followed (see [`crate::config::state_dir`]); for writing, created if missing.
fn backend(
    path: &Path,
    writable: bool,
) -> Result<redb::backends::FileBackend, redb::DatabaseError> {
    let mut options = crate::config::state_dir::open_options();
    options.read(true);
    if writable {
        options.write(true).create(true).truncate(false);
    }
    let file = options
        .open(path)
        .map_err(crate::config::state_dir::link_error)?;
    redb::backends::FileBackend::new(file)
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

/// Run ids with their status, in the run index's order.
type RunIds = Vec<(String, RunStatus)>;

/// A read-only view of the database at one moment.
pub struct Reader<'s> {
    store: &'s Store,
    txn: redb::ReadTransaction,
    /// The entries table, opened at the first entry read: a diff reads thousands.
    entries: std::cell::OnceCell<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
}

/// What a stored record looks like to a reader: its version and its latest volatile values.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub external_id: String,
    pub valid_from: String,
    pub hash: Hash,
    /// The stored record, without volatile fields.
    pub record: Value,
    pub payload: Value,
}

/// A stored version row a run saw: (external id, valid from, the row).
type VersionRowAt = (String, String, codec::VersionRow);

/// A record a run saw, before it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordHead {
    pub external_id: String,
    /// The run its version is valid from: with the id, what [`Reader::version`] reads.
    pub valid_from: String,
    pub flags: Flags,
}

/// The JSON of a stored entry.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredEntry {
    pub record: Value,
    #[serde(default)]
    pub payload: Value,
}

impl<'s> Reader<'s> {
    /// The error for stored data that does not read back.
    pub fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        self.store.corrupt(what)
    }

    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<redb::ReadOnlyTable<K, V>, Failure> {
        self.store.guard.call(|| self.txn.open_table(definition))
    }

    /// A table that an older layout lacks (read-only commands read such a database as it is).
    fn optional_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, Failure> {
        match self.table(definition) {
            Ok(table) => Ok(Some(table)),
            Err(Failure::Redb(redb::Error::TableDoesNotExist(_))) => Ok(None),
            Err(failure) => Err(failure),
        }
    }

    /// The record of a source's latest run, complete or failed.
    pub fn last_run(&self, source: &str) -> Result<Option<RunRecord>, StoreError> {
        self.last_run_id(source)
            .and_then(|id| id.map(|id| self.run(&id)).transpose())
            .map_err(|failure| failure.into_store_error(&self.store.path))
    }

    /// A run's record.
    pub fn run_record(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        self.run(run_id)
            .map_err(|failure| failure.into_store_error(&self.store.path))
    }

    fn run(&self, run_id: &str) -> Result<RunRecord, Failure> {
        let runs = self.table(RUNS)?;
        match self.store.guard.call(|| runs.get(run_id))? {
            Some(value) => from_json(value.value(), "run"),
            None => Err(Failure::Store(StoreError::UnknownRun(run_id.to_string()))),
        }
    }

    fn latest_complete_id(&self, source: &str) -> Result<Option<String>, Failure> {
        let latest = self.table(LATEST)?;
        Ok(self
            .store
            .guard
            .call(|| latest.get(source))?
            .map(|value| value.value().to_string()))
    }

    fn last_run_id(&self, source: &str) -> Result<Option<String>, Failure> {
        let index = self.table(SOURCE_RUNS)?;
        let prefix = codec::source_prefix(source);
        let end = codec::prefix_end(&prefix);
        let mut range = self
            .store
            .guard
            .call(|| index.range(prefix.as_str()..end.as_str()))?;
        Ok(self
            .store
            .guard
            .call(|| range.next_back().transpose())?
            .map(|(key, _)| key.value()[prefix.len()..].to_string()))
    }

    /// The source's run ids with their status, oldest first.
    fn run_ids(&self, source: &str) -> Result<RunIds, Failure> {
        self.run_ids_where(source, None, None, false, &mut |_| true)
    }

    /// The source's run ids with their status after `after` up to and including `up_to`,
    /// walked oldest first (or newest first with `backwards`) while `more` says so.
    fn run_ids_where(
        &self,
        source: &str,
        after: Option<&str>,
        up_to: Option<&str>,
        backwards: bool,
        more: &mut dyn FnMut(&RunIds) -> bool,
    ) -> Result<RunIds, Failure> {
        let index = self.table(SOURCE_RUNS)?;
        let prefix = codec::source_prefix(source);
        let start = match after {
            // The smallest key after `source␟after`.
            Some(after) => std::ops::Bound::Excluded(format!("{prefix}{after}")),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let end = match up_to {
            Some(up_to) => std::ops::Bound::Included(format!("{prefix}{up_to}")),
            None => std::ops::Bound::Excluded(codec::prefix_end(&prefix)),
        };
        let bounds = (
            start.as_ref().map(String::as_str),
            end.as_ref().map(String::as_str),
        );
        let mut range = self.store.guard.call(|| index.range::<&str>(bounds))?;
        let mut ids = Vec::new();
        while more(&ids) {
            let row = if backwards {
                self.store.guard.call(|| range.next_back().transpose())?
            } else {
                self.store.guard.call(|| range.next().transpose())?
            };
            let Some((key, value)) = row else { break };
            let status =
                RunStatus::from_index(value.value()).ok_or_else(|| corrupt_value("run index"))?;
            ids.push((key.value()[prefix.len()..].to_string(), status));
        }
        Ok(ids)
    }

    /// The current rows of one kind of one source, in external id order.
    pub fn current(
        &self,
        source: &str,
        kind: RecordKind,
    ) -> Result<impl Iterator<Item = Result<(String, CurrentRow), StoreError>> + 's, StoreError>
    {
        let prefix = codec::kind_prefix(source, kind);
        let rows = self.rows(CURRENT, &prefix, prefix.len())?;
        let path = self.store.path.clone();
        Ok(rows.map(move |row| {
            let (key, value) = row?;
            let row = CurrentRow::decode(&value)
                .map_err(|_| corrupt_value("current row").into_store_error(&path))?;
            Ok((key, row))
        }))
    }

    /// The current row of one record, if it is present in the latest complete run.
    pub fn current_row(
        &self,
        source: &str,
        kind: RecordKind,
        external_id: &str,
    ) -> Result<Option<CurrentRow>, StoreError> {
        self.point(CURRENT, source, kind, external_id)?
            .map(|bytes| {
                CurrentRow::decode(&bytes)
                    .map_err(|_| corrupt_value("current row").into_store_error(&self.store.path))
            })
            .transpose()
    }

    /// Every row of `table` whose key starts with `prefix`; keys lose their first `strip`
    /// bytes.
    fn rows(
        &self,
        definition: TableDefinition<&'static str, &'static [u8]>,
        prefix: &str,
        strip: usize,
    ) -> Result<Rows, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let table = self.table(definition).map_err(fail)?;
        let range = self
            .store
            .guard
            .call(|| table.range(prefix..))
            .map_err(fail)?;
        Ok(Rows {
            range,
            prefix: prefix.to_string(),
            strip,
            guard: self.store.guard.clone(),
            path: self.store.path.clone(),
        })
    }

    /// The stored version of a record that is valid from `valid_from`.
    pub fn version(
        &self,
        source: &str,
        kind: RecordKind,
        external_id: &str,
        valid_from: &str,
    ) -> Result<RawEntry, StoreError> {
        let key = codec::version_key(&codec::record_key(source, kind, external_id), valid_from);
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let entries = match self.entries.get() {
            Some(entries) => entries,
            None => {
                let opened = self.table(ENTRIES).map_err(fail)?;
                self.entries.get_or_init(|| opened)
            }
        };
        let value = self
            .store
            .guard
            .call(|| entries.get(key.as_str()))
            .map_err(fail)?
            .ok_or_else(|| fail(corrupt_value("missing record version")))?;
        RawEntry::parse(value.value()).map_err(|error| {
            fail(Failure::Corrupt(format!(
                "unreadable record version {external_id}: {error}"
            )))
        })
    }

    /// The hash of the deletion of a record that is gone, if it was deleted since the last
    /// baseline.
    pub fn tombstone(
        &self,
        source: &str,
        kind: RecordKind,
        external_id: &str,
    ) -> Result<Option<Hash>, StoreError> {
        self.point(TOMBSTONES, source, kind, external_id)?
            .map(|bytes| {
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt_value("tombstone").into_store_error(&self.store.path))
            })
            .transpose()
    }

    /// The hash of a record's last deletion found by a run after `after` (when given) up to
    /// and including `up_to`, from the deletion log (runs before the ledger logged none).
    pub fn deletion_between(
        &self,
        source: &str,
        kind: RecordKind,
        external_id: &str,
        after: Option<&str>,
        up_to: &str,
    ) -> Result<Option<Hash>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        if self.optional_table(DELETIONS).map_err(fail)?.is_none() {
            return Ok(None);
        }
        let prefix = format!("{}{SEP}", codec::record_key(source, kind, external_id));
        let found = self
            .rows(DELETIONS, &prefix, prefix.len())?
            .filter_map(|row| row.ok())
            .filter(|(run, _)| {
                run.as_str() <= up_to && after.is_none_or(|after| run.as_str() > after)
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        found
            .map(|(_, hash)| {
                hash.as_slice()
                    .try_into()
                    .map_err(|_| fail(corrupt_value("deletion")))
            })
            .transpose()
    }

    /// The latest volatile values of a record (also after it was deleted).
    pub fn volatile(
        &self,
        source: &str,
        kind: RecordKind,
        external_id: &str,
    ) -> Result<Map<String, Value>, StoreError> {
        match self.point(VOLATILE, source, kind, external_id)? {
            None => Ok(Map::new()),
            Some(bytes) => from_json(&bytes, "volatile values")
                .map_err(|failure| failure.into_store_error(&self.store.path)),
        }
    }

    fn point(
        &self,
        definition: TableDefinition<&'static str, &'static [u8]>,
        source: &str,
        kind: RecordKind,
        external_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let table = self.table(definition).map_err(fail)?;
        let key = codec::record_key(source, kind, external_id);
        Ok(self
            .store
            .guard
            .call(|| table.get(key.as_str()))
            .map_err(fail)?
            .map(|value| value.value().to_vec()))
    }

    /// Every stored version of the records of one kind whose external id starts with
    /// `id_prefix`, ordered by external id, then by the run that stored them.
    pub fn versions(
        &self,
        source: &str,
        kind: RecordKind,
        id_prefix: &str,
    ) -> Result<impl Iterator<Item = Result<RecordVersion, StoreError>> + 's, StoreError> {
        let prefix = codec::kind_prefix(source, kind);
        let rows = self.rows(VERSIONS, &format!("{prefix}{id_prefix}"), prefix.len())?;
        let path = self.store.path.clone();
        Ok(rows.map(move |row| {
            let (rest, value) = row?;
            let corrupt = |what| corrupt_value(what).into_store_error(&path);
            let (external_id, valid_from) =
                codec::split_version_key(&rest).ok_or_else(|| corrupt("record version key"))?;
            let row = codec::decode_version(&value).map_err(|_| corrupt("record version"))?;
            Ok(RecordVersion {
                external_id: external_id.to_string(),
                valid_from: valid_from.to_string(),
                valid_to: row.valid_to,
                hash: row.hash,
                flags: row.flags,
            })
        }))
    }

    /// That `run` still has its whole snapshot: it is complete and retention kept it.
    pub fn require_snapshot(&self, run: &RunRecord) -> Result<(), StoreError> {
        if run.status != RunStatus::Complete {
            return Err(StoreError::NotComplete {
                run_id: run.run_id.clone(),
                status: run.status.as_str(),
            });
        }
        match self.snapshots_kept_from(&run.source)? {
            Some(kept_from) if run.run_id < kept_from => Err(StoreError::SnapshotPruned {
                run_id: run.run_id.clone(),
                kept_from,
            }),
            _ => Ok(()),
        }
    }

    /// Where a source's kept snapshots start if it was pruned: the oldest run whose snapshot
    /// retention kept.
    pub fn snapshots_kept_from(&self, source: &str) -> Result<Option<String>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let meta = self.table(META).map_err(fail)?;
        let key = prune::pruned_before_key(source);
        Ok(self
            .store
            .guard
            .call(|| meta.get(key.as_str()))
            .map_err(fail)?
            .map(|value| String::from_utf8_lossy(value.value()).into_owned()))
    }

    /// Whether `run` has its snapshot (else an error) and is its source's latest complete run.
    fn is_latest_complete(&self, run: &RunRecord) -> Result<bool, StoreError> {
        self.require_snapshot(run)?;
        let latest = self
            .latest_complete_id(&run.source)
            .map_err(|failure| failure.into_store_error(&self.store.path))?;
        Ok(latest.as_deref() == Some(run.run_id.as_str()))
    }

    /// The stored version rows of one kind that an older run saw: (external id, valid from,
    /// the row). The key alone rules out later versions, the header closed ones.
    fn version_rows_at(
        &self,
        run: &RunRecord,
        kind: RecordKind,
    ) -> Result<impl Iterator<Item = Result<VersionRowAt, StoreError>> + 's, StoreError> {
        let run_id = run.run_id.clone();
        let prefix = codec::kind_prefix(&run.source, kind);
        let rows = self.rows(VERSIONS, &prefix, prefix.len())?;
        let path = self.store.path.clone();
        Ok(rows.filter_map(move |row| {
            let result = (|| {
                let (rest, value) = row?;
                let corrupt = |what| corrupt_value(what).into_store_error(&path);
                let (external_id, valid_from) =
                    codec::split_version_key(&rest).ok_or_else(|| corrupt("record version key"))?;
                if valid_from > run_id.as_str() {
                    return Ok(None);
                }
                let version =
                    codec::decode_version(&value).map_err(|_| corrupt("record version"))?;
                if !covers(valid_from, version.valid_to.as_deref(), &run_id) {
                    return Ok(None);
                }
                Ok(Some((
                    external_id.to_string(),
                    valid_from.to_string(),
                    version,
                )))
            })();
            result.transpose()
        }))
    }

    /// What a run saw of one kind, in external id order, without reading the records: their
    /// ids, versions and flags. Cheap enough to walk every account and membership of a run.
    pub fn heads_at(
        &self,
        run: &RunRecord,
        kind: RecordKind,
    ) -> Result<Box<dyn Iterator<Item = Result<RecordHead, StoreError>> + 's>, StoreError> {
        if self.is_latest_complete(run)? {
            return Ok(Box::new(self.current(&run.source, kind)?.map(|row| {
                let (external_id, current) = row?;
                Ok(RecordHead {
                    external_id,
                    valid_from: current.valid_from().to_string(),
                    flags: current.flags,
                })
            })));
        }
        Ok(Box::new(self.version_rows_at(run, kind)?.map(|row| {
            let (external_id, valid_from, version) = row?;
            Ok(RecordHead {
                external_id,
                valid_from,
                flags: version.flags,
            })
        })))
    }

    /// The records of one kind that `run` saw, in external id order. The latest complete run
    /// is read through the current rows (cost: its records); an older one through the versions.
    /// Either way each record's entry is then read by its version's key.
    pub fn records_at(
        &self,
        run: &RunRecord,
        kind: RecordKind,
    ) -> Result<Box<dyn Iterator<Item = Result<StoredRecord, StoreError>> + 's>, StoreError> {
        type Head = Result<(String, String, Hash), StoreError>;
        let heads: Box<dyn Iterator<Item = Head> + 's> = if self.is_latest_complete(run)? {
            Box::new(self.current(&run.source, kind)?.map(|row| {
                let (external_id, current) = row?;
                Ok((external_id, current.valid_from().to_string(), current.hash))
            }))
        } else {
            Box::new(self.version_rows_at(run, kind)?.map(|row| {
                let (external_id, valid_from, version) = row?;
                Ok((external_id, valid_from, version.hash))
            }))
        };
        let entries = self
            .table(ENTRIES)
            .map_err(|failure| failure.into_store_error(&self.store.path))?;
        let source = run.source.clone();
        let guard = self.store.guard.clone();
        let path = self.store.path.clone();
        Ok(Box::new(heads.map(move |head| {
            let (external_id, valid_from, hash) = head?;
            let fail = |failure: Failure| failure.into_store_error(&path);
            let key =
                codec::version_key(&codec::record_key(&source, kind, &external_id), &valid_from);
            let value = guard
                .call(|| entries.get(key.as_str()))
                .map_err(fail)?
                .ok_or_else(|| fail(corrupt_value("missing record version")))?;
            let entry: StoredEntry =
                from_json(value.value(), "record version entry").map_err(fail)?;
            Ok(StoredRecord {
                external_id,
                valid_from,
                hash,
                record: entry.record,
                payload: entry.payload,
            })
        })))
    }
}

/// The `&str → &[u8]` rows whose keys start with a prefix, guarded row by row.
struct Rows {
    range: redb::Range<'static, &'static str, &'static [u8]>,
    prefix: String,
    strip: usize,
    guard: Guard,
    path: PathBuf,
}

impl Iterator for Rows {
    type Item = Result<(String, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let range = &mut self.range;
        match self.guard.call(|| range.next().transpose()) {
            Ok(None) => None,
            Ok(Some((key, _))) if !key.value().starts_with(self.prefix.as_str()) => None,
            Ok(Some((key, value))) => Some(Ok((
                key.value()[self.strip..].to_string(),
                value.value().to_vec(),
            ))),
            Err(failure) => Some(Err(failure.into_store_error(&self.path))),
        }
    }
}

/// Reads inside a write transaction (the conflict check sees what the commit will see).
struct WriteReader<'a> {
    store: &'a Store,
    txn: &'a WriteTransaction,
}

impl WriteReader<'_> {
    fn run(&self, run_id: &str) -> Result<RunRecord, Failure> {
        let runs = self.store.guard.call(|| self.txn.open_table(RUNS))?;
        let value = self.store.guard.call(|| runs.get(run_id))?;
        match value {
            Some(value) => from_json(value.value(), "run"),
            None => Err(Failure::Store(StoreError::UnknownRun(run_id.to_string()))),
        }
    }

    fn latest_complete_id(&self, source: &str) -> Result<Option<String>, Failure> {
        let latest = self.store.guard.call(|| self.txn.open_table(LATEST))?;
        let id = self
            .store
            .guard
            .call(|| latest.get(source))?
            .map(|value| value.value().to_string());
        Ok(id)
    }

    fn last_run_id(&self, source: &str) -> Result<Option<String>, Failure> {
        let index = self.store.guard.call(|| self.txn.open_table(SOURCE_RUNS))?;
        let prefix = codec::source_prefix(source);
        let end = codec::prefix_end(&prefix);
        let mut range = self
            .store
            .guard
            .call(|| index.range(prefix.as_str()..end.as_str()))?;
        let id = self
            .store
            .guard
            .call(|| range.next_back().transpose())?
            .map(|(key, _)| key.value()[prefix.len()..].to_string());
        Ok(id)
    }
}

/// The tables a commit writes.
struct WriteTables<'t> {
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
    fn open(store: &'t Store, txn: &'t WriteTransaction) -> Result<WriteTables<'t>, Failure> {
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

    fn put_run(&mut self, record: &RunRecord) -> Result<(), Failure> {
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

    fn apply(&mut self, source: &str, run_id: &str, op: Op) -> Result<(), Failure> {
        match op {
            Op::Put {
                kind,
                external_id,
                replaces,
                clears_tombstone,
                entry,
                current,
                volatile,
            } => {
                let record_key = codec::record_key(source, kind, &external_id);
                if let Some(valid_from) = replaces {
                    self.close(&record_key, &valid_from, run_id)?;
                }
                if clears_tombstone {
                    self.guard
                        .call(|| self.tombstones.remove(record_key.as_str()))?;
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
                self.guard.call(|| {
                    self.tombstones
                        .insert(record_key.as_str(), tombstone.as_slice())
                })?;
                let deletion = codec::version_key(&record_key, run_id);
                self.guard.call(|| {
                    self.deletions
                        .insert(deletion.as_str(), tombstone.as_slice())
                })?;
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

/// The state directory holds personal data (the directory, envelopes, reports), so one that
/// aksync creates is readable by its owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Why a store operation stopped, before it is given the database path.
#[derive(Debug)]
pub(crate) enum Failure {
    Redb(redb::Error),
    Corrupt(String),
    /// The handle caught a panic from redb earlier and is not used again.
    Broken,
    Store(StoreError),
}

impl From<redb::Error> for Failure {
    fn from(error: redb::Error) -> Failure {
        Failure::Redb(error)
    }
}

macro_rules! redb_failure {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(error: $error) -> Failure {
                Failure::Redb(error.into())
            }
        }
    )*};
}
redb_failure!(
    redb::DatabaseError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError
);

impl From<TableError> for Failure {
    fn from(error: TableError) -> Failure {
        Failure::Redb(error.into())
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<DecodeError> for Failure {
    fn from(_: DecodeError) -> Failure {
        corrupt_value("stored row")
    }
}

impl Failure {
    fn into_store_error(self, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        match self {
            Failure::Store(error) => error,
            Failure::Corrupt(reason) => StoreError::Corrupt { path, reason },
            Failure::Broken => StoreError::Internal {
                path,
                reason: "the database handle failed earlier in this process and is not used again"
                    .into(),
            },
            // A file that ends before its header does is damaged, not unwritable.
            Failure::Redb(redb::Error::Io(error))
                if !matches!(
                    error.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                StoreError::Io {
                    path,
                    reason: error.to_string(),
                }
            }
            Failure::Redb(redb::Error::Io(error)) => StoreError::Corrupt {
                path,
                reason: error.to_string(),
            },
            Failure::Redb(error) => StoreError::Corrupt {
                path,
                reason: error.to_string().replace('\n', " "),
            },
        }
    }
}

fn corrupt_value(what: &str) -> Failure {
    Failure::Corrupt(format!("unreadable {what} record"))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(value).map_err(|error| Failure::Corrupt(error.to_string()))
}

fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|error| Failure::Corrupt(format!("unreadable {what} record: {error}")))
}
