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
//!
//! The code follows the life of the file: [`open`](Store::open) lays it out and migrates
//! an older layout (`open.rs`, `migrate.rs`), `write.rs` commits runs and updates their
//! records, and `read.rs` serves the read API ([`Reader`]); `ledger.rs`, `outbox.rs` and
//! `prune.rs` add the tables of the evidence ledger, the outbox mark and retention.

pub mod codec;
mod file;
mod guard;
pub mod ledger;
mod migrate;
mod open;
pub mod ops;
mod outbox;
pub mod prune;
mod quarantine;
mod read;
pub mod run;
#[cfg(test)]
mod tests;
mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, TableDefinition, TableError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run::record::Hash;
use codec::DecodeError;
pub use guard::in_guarded_operation;
use guard::Guard;
pub use ledger::{
    ChainHead, EntryMark, IndexError, IndexRows, KeptState, LedgerRow, LedgerWrite, Sealer,
};
pub use quarantine::DecisionError;
pub use read::{Reader, RecordHead, StoredRecord};
pub use run::{run_id_ceiling, run_id_floor, Decision, Quarantine, QuarantineDecision};
pub use run::{
    ChangeCounts, Counts, DeliveryState, DeliveryStatus, EnvelopeSummary, HealthRecord,
    HealthStatus, RunOutcome, RunRecord, RunStatus, ScopeCounts, TokenUser, CANCELLED_BY_SHUTDOWN,
};
pub use write::CommitPlan;

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
    #[error("run {run_id} is {status}, not complete: only complete runs have a snapshot (a quarantined run's changes are held until `aksync approve {run_id}`: see them with `aksync envelopes {run_id}` and `aksync report {run_id}`)")]
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
