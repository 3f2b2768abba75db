//! The redb database: runs, record versions and health checks.
//!
//! Storage grows with changes, not with runs. Every record (account, group, membership) is
//! kept as versions; a version is valid from the run that first saw it until the run that
//! changed or removed it. A run that changes nothing adds only its metadata. Any past complete
//! run reads back as it was: the versions whose validity covers its id. Run ids are ULIDs
//! that the store makes strictly increasing, so "covers" is a string comparison.
//!
//! Each run is one write transaction: a run is fully visible or not at all. The database is
//! opened in redb's multi-writer mode, so several aksync processes (a daemon and an admin's
//! queries) can share the file; only write transactions exclude each other.

mod file;
pub mod run;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redb::{
    ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition, TransactionError,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::normalize::{Entry, Snapshot};
pub use run::{
    ChangeCounts, Counts, DeliveryState, DeliveryStatus, EnvelopeSummary, HealthRecord,
    HealthStatus, RunOutcome, RunRecord, RunStatus,
};

/// The layout version of the tables below. Bump it with a migration in [`Store::open`].
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// `source␟kind␟external_id␟valid_from_run` → [`StoredVersion`].
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("record_versions");
/// `source␟kind␟external_id` → [`OpenVersion`]: the versions of the last complete run.
const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current_versions");
const HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("health");

const SCHEMA_VERSION_KEY: &str = "schema_version";
/// Separates the parts of a key; it cannot occur in source names or Authentik ids.
const SEP: char = '\u{1f}';
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// redb's page cache. Runs read and write each record about once, so a large cache buys
/// little and would count against the memory budget of a large directory.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path} is in use by another process (waited {waited_secs}s): stop the other aksync command or service, or try again")]
    Locked { path: PathBuf, waited_secs: u64 },
    #[error("database {path} is corrupt or not an aksync database ({reason}): restore it from a backup, or move it aside to start a new history")]
    Corrupt { path: PathBuf, reason: String },
    #[error("database {path} was written by a newer aksync (schema {found}, this build knows up to {SCHEMA_VERSION}): upgrade aksync")]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("cannot use database {path}: {reason}; check that state_dir is right and writable by this user")]
    Io { path: PathBuf, reason: String },
    #[error("no run `{0}`: list runs with `aksync runs`")]
    UnknownRun(String),
    #[error("run {run_id} is {status}, not complete: only complete runs have a snapshot")]
    NotComplete {
        run_id: String,
        status: &'static str,
    },
    #[error("another process stored run {found} of source `{source_name}` during this run; run again to compare with it")]
    Conflict { source_name: String, found: String },
    #[error("the run was not stored: {0}")]
    Aborted(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKind {
    Account,
    Group,
    Membership,
}

impl RecordKind {
    pub const ALL: [RecordKind; 3] = [
        RecordKind::Account,
        RecordKind::Group,
        RecordKind::Membership,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Account => "account",
            RecordKind::Group => "group",
            RecordKind::Membership => "membership",
        }
    }
}

/// One version of one record.
#[derive(Debug, Serialize, Deserialize)]
struct StoredVersion {
    /// The run that changed or removed this version; `None` while it is current.
    valid_to: Option<String>,
    hash: String,
    entry: Value,
}

/// One stored version of a record, as [`Store::versions`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordVersion {
    pub external_id: String,
    pub valid_from: String,
    pub valid_to: Option<String>,
    /// The [`Entry`] as JSON: `{record, payload}`.
    pub entry: Value,
}

impl RecordVersion {
    /// Whether this version is the one a run saw.
    pub fn valid_at(&self, run_id: &str) -> bool {
        covers(&self.valid_from, self.valid_to.as_deref(), run_id)
    }
}

/// Where the current version of a record is.
#[derive(Debug, Serialize, Deserialize)]
struct OpenVersion {
    valid_from: String,
    hash: String,
}

pub struct Store {
    db: Database,
    path: PathBuf,
    wait: Duration,
}

impl Store {
    /// Opens or creates the database, waiting up to `wait` for another process that holds it
    /// exclusively, and checks the schema version.
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
        let started = Instant::now();
        let db = loop {
            let attempt = guarded(path, || {
                redb::Builder::new()
                    .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                    .set_cache_size(CACHE_BYTES)
                    .create(path)
                    .map_err(|error| Failure::Redb(error.into()))
            });
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
            db,
            path: path.to_path_buf(),
            wait,
        };
        store.write(|txn| {
            for table in [META, RUNS, VERSIONS, CURRENT, HEALTH] {
                txn.open_table(table)?;
            }
            let mut meta = txn.open_table(META)?;
            let found = meta
                .get(SCHEMA_VERSION_KEY)?
                .map(|value| String::from_utf8_lossy(value.value()).parse::<u32>());
            match found {
                None => {
                    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
                    Ok(Ok(()))
                }
                Some(Ok(version)) if version <= SCHEMA_VERSION => Ok(Ok(())),
                Some(Ok(found)) => Ok(Err(StoreError::NewerSchema {
                    path: path.to_path_buf(),
                    found,
                })),
                Some(Err(_)) => Err(corrupt_value("schema version")),
            }
        })??;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|txn| {
            let meta = txn.open_table(META)?;
            let version = meta
                .get(SCHEMA_VERSION_KEY)?
                .ok_or_else(|| corrupt_value("schema version"))?;
            String::from_utf8_lossy(version.value())
                .parse()
                .map_err(|_| corrupt_value("schema version"))
        })
    }

    /// Stores a complete snapshot as a new run, in one transaction, and returns its record.
    ///
    /// `expected_latest` is the source's latest complete run when the caller looked; if
    /// another process committed a newer one meanwhile, nothing is stored. `finish` sees the
    /// record with its id before the commit, writes what must exist once the run does (the
    /// outbox), and completes the record; an error from it stores nothing.
    pub fn commit_complete(
        &self,
        outcome: RunOutcome,
        snapshot: &Snapshot,
        expected_latest: Option<&str>,
        finish: impl FnOnce(&mut RunRecord) -> Result<(), String>,
    ) -> Result<RunRecord, StoreError> {
        self.write(|txn| {
            let source = outcome.source.clone();
            let latest = latest_complete_id(txn, &source)?;
            if latest.as_deref() != expected_latest {
                return Err(Failure::Store(StoreError::Conflict {
                    source_name: source,
                    found: latest.unwrap_or_default(),
                }));
            }
            let run_id = next_run_id(txn, outcome.started_at)?;
            let mut versions_written = 0;
            versions_written += apply_kind(
                txn,
                &source,
                RecordKind::Account,
                &run_id,
                &snapshot.accounts,
            )?;
            versions_written +=
                apply_kind(txn, &source, RecordKind::Group, &run_id, &snapshot.groups)?;
            versions_written += apply_kind(
                txn,
                &source,
                RecordKind::Membership,
                &run_id,
                &snapshot.memberships,
            )?;
            let counts = Counts {
                accounts: snapshot.accounts.len() as u64,
                groups: snapshot.groups.len() as u64,
                memberships: snapshot.memberships.len() as u64,
            };
            let mut record =
                outcome.into_record(run_id, RunStatus::Complete, None, counts, versions_written);
            finish(&mut record).map_err(|reason| Failure::Store(StoreError::Aborted(reason)))?;
            put_json(&mut txn.open_table(RUNS)?, &record.run_id, &record)?;
            Ok(record)
        })
    }

    /// Rewrites a run's record, e.g. to advance its delivery state.
    pub fn update_run(
        &self,
        run_id: &str,
        update: impl FnOnce(&mut RunRecord),
    ) -> Result<RunRecord, StoreError> {
        self.write(|txn| {
            let mut runs = txn.open_table(RUNS)?;
            let mut record: RunRecord = match runs.get(run_id)? {
                Some(value) => from_json(value.value(), "run")?,
                None => return Err(Failure::Store(StoreError::UnknownRun(run_id.to_string()))),
            };
            update(&mut record);
            put_json(&mut runs, run_id, &record)?;
            Ok(record)
        })
    }

    /// Every stored version of the records of one kind whose external id starts with
    /// `id_prefix`, ordered by external id, then by the run that stored them.
    pub fn versions(
        &self,
        source: &str,
        kind: RecordKind,
        id_prefix: &str,
    ) -> Result<Vec<RecordVersion>, StoreError> {
        self.read(|txn| {
            let versions = txn.open_table(VERSIONS)?;
            let prefix = record_prefix(source, kind);
            let start = format!("{prefix}{id_prefix}");
            let end = prefix_end(&prefix);
            let mut rows = Vec::new();
            for row in versions.range(start.as_str()..end.as_str())? {
                let (key, value) = row?;
                let rest = &key.value()[prefix.len()..];
                if !rest.starts_with(id_prefix) {
                    break;
                }
                let (external_id, valid_from) = split_version_key(rest)?;
                let version: StoredVersion = from_json(value.value(), "record version")?;
                rows.push(RecordVersion {
                    external_id: external_id.to_string(),
                    valid_from: valid_from.to_string(),
                    valid_to: version.valid_to,
                    entry: version.entry,
                });
            }
            Ok(rows)
        })
    }

    /// Records a failed run. The stored snapshots are not touched.
    pub fn commit_failed(&self, outcome: RunOutcome, error: &str) -> Result<RunRecord, StoreError> {
        self.write(|txn| {
            let run_id = next_run_id(txn, outcome.started_at)?;
            let record = outcome.into_record(
                run_id,
                RunStatus::Failed,
                Some(error.to_string()),
                Counts::default(),
                0,
            );
            put_json(&mut txn.open_table(RUNS)?, &record.run_id, &record)?;
            Ok(record)
        })
    }

    /// Runs of one source or all, newest first.
    pub fn runs(&self, source: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|txn| {
            let runs = txn.open_table(RUNS)?;
            let mut records = Vec::new();
            for row in runs.iter()?.rev() {
                let (_, value) = row?;
                let record: RunRecord = from_json(value.value(), "run")?;
                if source.is_none_or(|source| record.source == source) {
                    records.push(record);
                }
            }
            Ok(records)
        })
    }

    pub fn run(&self, run_id: &str) -> Result<RunRecord, StoreError> {
        self.read(|txn| {
            let runs = txn.open_table(RUNS)?;
            let value = runs.get(run_id)?;
            match value {
                Some(value) => from_json(value.value(), "run"),
                None => Err(Failure::Store(StoreError::UnknownRun(run_id.to_string()))),
            }
        })
    }

    /// The complete runs of a source, oldest first.
    pub fn complete_runs(&self, source: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = self.runs(Some(source))?;
        runs.retain(|run| run.status == RunStatus::Complete);
        runs.reverse();
        Ok(runs)
    }

    pub fn latest_complete(&self, source: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.complete_runs(source)?.pop())
    }

    /// The snapshot of a complete run, exactly as that run stored it.
    pub fn snapshot(&self, run: &RunRecord) -> Result<Snapshot, StoreError> {
        if run.status != RunStatus::Complete {
            return Err(StoreError::NotComplete {
                run_id: run.run_id.clone(),
                status: run.status.as_str(),
            });
        }
        self.read(|txn| {
            let versions = txn.open_table(VERSIONS)?;
            let (source, run_id) = (run.source.as_str(), run.run_id.as_str());
            Ok(Snapshot {
                accounts: read_kind(&versions, source, RecordKind::Account, run_id)?,
                groups: read_kind(&versions, source, RecordKind::Group, run_id)?,
                memberships: read_kind(&versions, source, RecordKind::Membership, run_id)?,
            })
        })
    }

    /// How many record versions are stored for a source, all kinds together.
    pub fn version_count(&self, source: &str) -> Result<u64, StoreError> {
        self.read(|txn| {
            let versions = txn.open_table(VERSIONS)?;
            let start = format!("{source}{SEP}");
            let end = prefix_end(&start);
            let mut count = 0;
            for row in versions.range(start.as_str()..end.as_str())? {
                row?;
                count += 1;
            }
            Ok(count)
        })
    }

    pub fn put_health(&self, health: &HealthRecord) -> Result<(), StoreError> {
        self.write(|txn| put_json(&mut txn.open_table(HEALTH)?, &health.source, health))
    }

    pub fn health(&self, source: &str) -> Result<Option<HealthRecord>, StoreError> {
        self.read(|txn| {
            let health = txn.open_table(HEALTH)?;
            let value = health.get(source)?;
            value
                .map(|value| from_json(value.value(), "health"))
                .transpose()
        })
    }

    fn read<T>(
        &self,
        operation: impl FnOnce(&redb::ReadTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        guarded(&self.path, || {
            let txn = self.db.begin_read().map_err(redb::Error::from)?;
            operation(&txn)
        })
        .map_err(|failure| failure.into_store_error(&self.path))
    }

    /// One write transaction, committed only if `operation` succeeds. Waits up to the
    /// store's patience for another process's write transaction to end.
    fn write<T>(
        &self,
        operation: impl FnOnce(&WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let txn = loop {
            match guarded(&self.path, || Ok(self.db.try_begin_write())) {
                Ok(Ok(txn)) => break txn,
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
        };
        guarded(&self.path, move || {
            let value = operation(&txn)?;
            txn.commit().map_err(redb::Error::from)?;
            Ok(value)
        })
        .map_err(|failure| failure.into_store_error(&self.path))
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
enum Failure {
    Redb(redb::Error),
    Corrupt(String),
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
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl Failure {
    fn into_store_error(self, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        match self {
            Failure::Store(error) => error,
            Failure::Corrupt(reason) => StoreError::Corrupt { path, reason },
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

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside a store operation whose panics become
/// [`StoreError::Corrupt`]; the binary's panic hook stays quiet for those.
pub fn in_guarded_operation() -> bool {
    GUARDED.with(|flag| flag.get())
}

/// redb may panic on a damaged file (its debug builds do on purpose). A damaged file is bad
/// input, so the panic becomes an error that says so.
fn guarded<T>(path: &Path, operation: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    let previous = GUARDED.with(|flag| flag.replace(true));
    let result = catch_unwind(AssertUnwindSafe(operation));
    GUARDED.with(|flag| flag.set(previous));
    result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "internal failure".to_string());
        tracing::debug!(path = %path.display(), "store operation panicked: {message}");
        Err(Failure::Corrupt(
            message.lines().next().unwrap_or("").to_string(),
        ))
    })
}

fn latest_complete_id(txn: &WriteTransaction, source: &str) -> Result<Option<String>, Failure> {
    let runs = txn.open_table(RUNS)?;
    for row in runs.iter()?.rev() {
        let (_, value) = row?;
        let record: RunRecord = from_json(value.value(), "run")?;
        if record.source == source && record.status == RunStatus::Complete {
            return Ok(Some(record.run_id));
        }
    }
    Ok(None)
}

/// A ULID from the run's start, made strictly greater than every stored run id so that the
/// order of ids is the order of commits.
fn next_run_id(txn: &WriteTransaction, started_at: DateTime<Utc>) -> Result<String, Failure> {
    let runs = txn.open_table(RUNS)?;
    let millis = u64::try_from(started_at.timestamp_millis()).unwrap_or(0);
    let candidate = ulid::Ulid::from_parts(millis, rand::random::<u128>());
    let last = runs.last()?.map(|(key, _)| key.value().to_string());
    let id = match last.map(|last| ulid::Ulid::from_string(&last)) {
        Some(Ok(last)) if last >= candidate => last
            .increment()
            .ok_or_else(|| Failure::Corrupt("run ids exhausted".into()))?,
        Some(Err(_)) => return Err(corrupt_value("run id")),
        _ => candidate,
    };
    Ok(id.to_string())
}

fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn record_prefix(source: &str, kind: RecordKind) -> String {
    format!("{source}{SEP}{}{SEP}", kind.as_str())
}

/// Brings the versions of one kind in line with the new snapshot; returns how many
/// versions were added.
fn apply_kind<R: Serialize>(
    txn: &WriteTransaction,
    source: &str,
    kind: RecordKind,
    run_id: &str,
    entries: &BTreeMap<String, Entry<R>>,
) -> Result<u64, Failure> {
    let mut versions = txn.open_table(VERSIONS)?;
    let mut current = txn.open_table(CURRENT)?;
    let prefix = record_prefix(source, kind);
    let mut written = 0;
    for (external_id, entry) in entries {
        let entry =
            serde_json::to_value(entry).map_err(|error| Failure::Corrupt(error.to_string()))?;
        let hash = content_hash(entry.to_string().as_bytes());
        let record_key = format!("{prefix}{external_id}");
        let open: Option<OpenVersion> = current
            .get(record_key.as_str())?
            .map(|value| from_json(value.value(), "current version"))
            .transpose()?;
        match open {
            Some(open) if open.hash == hash => continue,
            Some(open) => close_version(&mut versions, &record_key, &open, run_id)?,
            None => {}
        }
        let version = StoredVersion {
            valid_to: None,
            hash: hash.clone(),
            entry,
        };
        put_json(
            &mut versions,
            &format!("{record_key}{SEP}{run_id}"),
            &version,
        )?;
        put_json(
            &mut current,
            &record_key,
            &OpenVersion {
                valid_from: run_id.to_string(),
                hash,
            },
        )?;
        written += 1;
    }
    let end = prefix_end(&prefix);
    let mut removed = Vec::new();
    for row in current.range(prefix.as_str()..end.as_str())? {
        let (key, value) = row?;
        let external_id = &key.value()[prefix.len()..];
        if !entries.contains_key(external_id) {
            let open: OpenVersion = from_json(value.value(), "current version")?;
            removed.push((key.value().to_string(), open));
        }
    }
    for (record_key, open) in removed {
        close_version(&mut versions, &record_key, &open, run_id)?;
        current.remove(record_key.as_str())?;
    }
    Ok(written)
}

fn close_version(
    versions: &mut redb::Table<&str, &[u8]>,
    record_key: &str,
    open: &OpenVersion,
    run_id: &str,
) -> Result<(), Failure> {
    let version_key = format!("{record_key}{SEP}{}", open.valid_from);
    let mut version: StoredVersion = match versions.get(version_key.as_str())? {
        Some(value) => from_json(value.value(), "record version")?,
        None => return Err(corrupt_value("missing record version")),
    };
    version.valid_to = Some(run_id.to_string());
    put_json(versions, &version_key, &version)
}

/// The entries of one kind that were valid at `run_id`.
fn read_kind<R: DeserializeOwned>(
    versions: &redb::ReadOnlyTable<&str, &[u8]>,
    source: &str,
    kind: RecordKind,
    run_id: &str,
) -> Result<BTreeMap<String, Entry<R>>, Failure> {
    let prefix = record_prefix(source, kind);
    let end = prefix_end(&prefix);
    let mut entries = BTreeMap::new();
    for row in versions.range(prefix.as_str()..end.as_str())? {
        let (key, value) = row?;
        let (external_id, valid_from) = split_version_key(&key.value()[prefix.len()..])?;
        // The key alone rules out later versions, without parsing them.
        if valid_from > run_id {
            continue;
        }
        let version: StoredVersion = from_json(value.value(), "record version")?;
        if !covers(valid_from, version.valid_to.as_deref(), run_id) {
            continue;
        }
        let entry = serde_json::from_value(version.entry)
            .map_err(|error| Failure::Corrupt(format!("record version: {error}")))?;
        entries.insert(external_id.to_string(), entry);
    }
    Ok(entries)
}

/// `external_id␟valid_from` (the part of a version key after its kind prefix).
fn split_version_key(rest: &str) -> Result<(&str, &str), Failure> {
    rest.rsplit_once(SEP)
        .ok_or_else(|| corrupt_value("record version key"))
}

/// Whether a version valid from `valid_from` until `valid_to` is the one `run_id` saw.
fn covers(valid_from: &str, valid_to: Option<&str>, run_id: &str) -> bool {
    valid_from <= run_id && valid_to.is_none_or(|valid_to| valid_to > run_id)
}

fn prefix_end(prefix: &str) -> String {
    // SEP ends every prefix; the next character bounds the range.
    let mut end = prefix[..prefix.len() - SEP.len_utf8()].to_string();
    end.push(char::from_u32(SEP as u32 + 1).expect("valid char"));
    end
}

fn put_json<T: Serialize>(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), Failure> {
    let bytes = serde_json::to_vec(value).map_err(|error| Failure::Corrupt(error.to_string()))?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|error| Failure::Corrupt(format!("unreadable {what} record: {error}")))
}

#[cfg(test)]
mod tests;
