//! Opening the database: for queries without the write lock, or for writing; a new file
//! gets its tables and an older layout is migrated ([`super::migrate`]) while no other
//! process has the file open.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{ConcurrencyMode, ReadableTable, WriteTransaction};

use super::guard::Guard;
use super::{
    corrupt_value, file, ledger, migrate, quarantine, Failure, Handle, Store, StoreError, CURRENT,
    DELETIONS, ENTRIES, HEALTH, LATEST, META, POLL_INTERVAL, RUNS, SCHEMA_VERSION,
    SCHEMA_VERSION_KEY, SOURCE_RUNS, TOMBSTONES, VERSIONS, VOLATILE,
};
use crate::config::state_dir::create_private_dir;

/// redb's page cache. Runs read and write each record about once, so a large cache buys
/// little and would count against the memory budget of a large directory.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

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
            ledger::LEDGER_CONNECTIONS,
            ledger::LEDGER_REVIEWS,
            ledger::SNAPSHOT_DIGESTS,
            ledger::PRIVILEGED_NOW,
            ledger::RUN_SETTINGS,
            quarantine::HELD,
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
