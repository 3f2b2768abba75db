//! Reading: runs and their records, the current state, record versions and what a run saw,
//! through [`Reader`], one read transaction's consistent view.

use std::path::PathBuf;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Map, Value};

use super::codec::{self, CurrentRow, Flags, SEP};
use super::guard::Guard;
use super::write::WriteReader;
use super::{
    corrupt_value, covers, from_json, prune, Failure, Handle, HealthRecord, RecordVersion,
    RunRecord, RunStatus, SourceState, Store, StoreError, CURRENT, DELETIONS, ENTRIES, HEALTH,
    LATEST, META, RUNS, SOURCE_RUNS, TOMBSTONES, VERSIONS, VOLATILE,
};
use crate::run::record::{Hash, RawEntry, RecordKind};

impl Store {
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

    pub fn health(&self, source: &str) -> Result<Option<HealthRecord>, StoreError> {
        self.read(|reader| {
            let health = reader.table(HEALTH)?;
            let value = self.guard.call(|| health.get(source))?;
            value
                .map(|value| from_json(value.value(), "health"))
                .transpose()
        })
    }

    pub(super) fn read<T>(
        &self,
        operation: impl FnOnce(&Reader<'_>) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let reader = self.reader()?;
        operation(&reader).map_err(|failure| failure.into_store_error(&self.path))
    }
}

/// Run ids with their status, in the run index's order.
type RunIds = Vec<(String, RunStatus)>;

/// A read-only view of the database at one moment.
pub struct Reader<'s> {
    pub(super) store: &'s Store,
    pub(super) txn: redb::ReadTransaction,
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
    /// The version's flags: whether the record is in scope, among others.
    pub flags: Flags,
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

impl<'s> Reader<'s> {
    /// The error for stored data that does not read back.
    pub fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        self.store.corrupt(what)
    }

    pub(super) fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<redb::ReadOnlyTable<K, V>, Failure> {
        self.store.guard.call(|| self.txn.open_table(definition))
    }

    /// A table that an older layout lacks (read-only commands read such a database as it is).
    pub(super) fn optional_table<K: redb::Key + 'static, V: redb::Value + 'static>(
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

    /// The source's run ids with their status, oldest first.
    fn run_ids(&self, source: &str) -> Result<RunIds, Failure> {
        self.run_ids_where(source, None, None, false, &mut |_| true)
    }

    /// The source's run ids with their status after `after` up to and including `up_to`,
    /// walked oldest first (or newest first with `backwards`) while `more` says so.
    pub(super) fn run_ids_where(
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
    pub(super) fn rows(
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
        parse_entry(value.value(), external_id).map_err(fail)
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

    pub(super) fn point(
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
        type Head = Result<(String, String, Hash, Flags), StoreError>;
        let heads: Box<dyn Iterator<Item = Head> + 's> = if self.is_latest_complete(run)? {
            Box::new(self.current(&run.source, kind)?.map(|row| {
                let (external_id, current) = row?;
                let valid_from = current.valid_from().to_string();
                Ok((external_id, valid_from, current.hash, current.flags))
            }))
        } else {
            Box::new(self.version_rows_at(run, kind)?.map(|row| {
                let (external_id, valid_from, version) = row?;
                Ok((external_id, valid_from, version.hash, version.flags))
            }))
        };
        let entries = self
            .table(ENTRIES)
            .map_err(|failure| failure.into_store_error(&self.store.path))?;
        let source = run.source.clone();
        let guard = self.store.guard.clone();
        let path = self.store.path.clone();
        Ok(Box::new(heads.map(move |head| {
            let (external_id, valid_from, hash, flags) = head?;
            let fail = |failure: Failure| failure.into_store_error(&path);
            let key =
                codec::version_key(&codec::record_key(&source, kind, &external_id), &valid_from);
            let value = guard
                .call(|| entries.get(key.as_str()))
                .map_err(fail)?
                .ok_or_else(|| fail(corrupt_value("missing record version")))?;
            let entry = parse_entry(value.value(), &external_id).map_err(fail)?;
            let (record, payload) = entry
                .record()
                .and_then(|record| Ok((record, entry.payload()?)))
                .map_err(|error| fail(unreadable_entry(&external_id, error)))?;
            Ok(StoredRecord {
                external_id,
                valid_from,
                hash,
                record,
                payload,
                flags,
            })
        })))
    }
}

/// A stored version's entry, parsed once, by the one parser of entries ([`RawEntry::parse`]).
fn parse_entry(bytes: &[u8], external_id: &str) -> Result<RawEntry, Failure> {
    RawEntry::parse(bytes).map_err(|error| unreadable_entry(external_id, error))
}

fn unreadable_entry(external_id: &str, error: serde_json::Error) -> Failure {
    Failure::Corrupt(format!("unreadable record version {external_id}: {error}"))
}

/// The run lookups of a transaction, for reading or writing: one implementation over
/// whichever transaction's tables, so that a commit's conflict check reads the runs as a
/// query does, and sees what the commit will see.
pub(super) trait RunLookups {
    fn guard(&self) -> &Guard;

    fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<impl ReadableTable<K, V>, Failure>;

    /// A run's record.
    fn run(&self, run_id: &str) -> Result<RunRecord, Failure> {
        let runs = self.open(RUNS)?;
        let value = self.guard().call(|| runs.get(run_id))?;
        match value {
            Some(value) => from_json(value.value(), "run"),
            None => Err(Failure::Store(StoreError::UnknownRun(run_id.to_string()))),
        }
    }

    /// The id of the source's latest complete run.
    fn latest_complete_id(&self, source: &str) -> Result<Option<String>, Failure> {
        let latest = self.open(LATEST)?;
        let id = self
            .guard()
            .call(|| latest.get(source))?
            .map(|value| value.value().to_string());
        Ok(id)
    }

    /// The id of the source's newest run of any status.
    fn last_run_id(&self, source: &str) -> Result<Option<String>, Failure> {
        let index = self.open(SOURCE_RUNS)?;
        let prefix = codec::source_prefix(source);
        let end = codec::prefix_end(&prefix);
        let mut range = self
            .guard()
            .call(|| index.range(prefix.as_str()..end.as_str()))?;
        let id = self
            .guard()
            .call(|| range.next_back().transpose())?
            .map(|(key, _)| key.value()[prefix.len()..].to_string());
        Ok(id)
    }
}

/// The run lookups of a [`Reader`] and of a commit's [`WriteReader`]: each holds its store and
/// its transaction, and redb's two transactions open tables alike without a common trait.
macro_rules! run_lookups {
    ($($reader:ident),*) => {$(
        impl RunLookups for $reader<'_> {
            fn guard(&self) -> &Guard {
                &self.store.guard
            }

            fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
                &self,
                definition: TableDefinition<K, V>,
            ) -> Result<impl ReadableTable<K, V>, Failure> {
                self.store.guard.call(|| self.txn.open_table(definition))
            }
        }
    )*};
}
run_lookups!(Reader, WriteReader);

/// The `&str → &[u8]` rows whose keys start with a prefix, guarded row by row.
pub(super) struct Rows {
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
