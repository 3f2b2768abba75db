//! Migrations of older layouts, each inside the write transaction that opens the database.
//!
//! Schema 1 stored every record version whole: volatile fields (logins) made versions, group
//! payloads carried their member lists, and versions were JSON keyed by the hash of the whole
//! entry. Schema 2 keeps the material content only (see [`crate::run::record`]). Migrating
//! rewrites each record's versions in the new layout, merges consecutive versions that
//! differed only in volatile content, and builds the per-source run index and the
//! latest-complete pointers. Material hashes are computed without `ignore_fields` (the store
//! does not know the settings); a source with `ignore_fields` starts a new baseline on its next
//! run anyway, because its settings fingerprint now includes them.
//!
//! Schema 3 moves each version's entry out of its row into the `entries` table under the same
//! key, so that scanning the versions (every diff between two old runs) reads 60 bytes per
//! version instead of the whole record. Migrating from 2 splits every row in place.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::codec::{self, CurrentRow, Flags, SEP};
use super::{
    corrupt_value, from_json, Failure, RunRecord, RunStatus, Store, CURRENT, ENTRIES, LATEST, RUNS,
    SOURCE_RUNS, TOMBSTONES, VERSIONS, VOLATILE,
};
use crate::run::normalize::stored_payload;
use crate::run::record::{split_volatile, volatile_digest, ChangeRule, RecordKind};

const V1_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("record_versions");
const V1_CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current_versions");

#[derive(Deserialize)]
struct V1Version {
    valid_to: Option<String>,
    entry: Value,
}

/// Brings a database of schema `from` to the current layout.
pub(super) fn migrate(store: &Store, txn: &WriteTransaction, from: u32) -> Result<(), Failure> {
    let what = if from < 3 {
        "every record version is rewritten once"
    } else {
        "the evidence ledger's tables are added"
    };
    tracing::info!(
        "migrating {} from schema {from} to {}: {what}",
        store.path.display(),
        super::SCHEMA_VERSION
    );
    match from {
        1 => from_v1(store, txn),
        2 => from_v2(store, txn),
        // Schema 4 adds the ledger's tables, which the caller creates; the ledger of the
        // runs before it is backfilled by `crate::ledger::backfill`, which knows the settings.
        3 => Ok(()),
        other => Err(Failure::Corrupt(format!("unknown schema version {other}"))),
    }
}

fn from_v1(store: &Store, txn: &WriteTransaction) -> Result<(), Failure> {
    let guard = &store.guard;
    index_runs(store, txn)?;
    {
        let old = guard.call(|| txn.open_table(V1_VERSIONS))?;
        let mut writer = Writer {
            store,
            versions: guard.call(|| txn.open_table(VERSIONS))?,
            entries: guard.call(|| txn.open_table(ENTRIES))?,
            current: guard.call(|| txn.open_table(CURRENT))?,
            tombstones: guard.call(|| txn.open_table(TOMBSTONES))?,
            volatile: guard.call(|| txn.open_table(VOLATILE))?,
        };
        let mut rows = guard.call(|| old.iter())?;
        let mut record: Option<(String, Vec<Converted>)> = None;
        while let Some((key, value)) = guard.call(|| rows.next().transpose())? {
            let (record_key, valid_from) = key
                .value()
                .rsplit_once(SEP)
                .ok_or_else(|| corrupt_value("record version key"))?;
            let version: V1Version = from_json(value.value(), "record version")?;
            let kind = kind_of(record_key)?;
            let converted = convert(kind, valid_from, version)?;
            match &mut record {
                Some((key, versions)) if key == record_key => versions.push(converted),
                _ => {
                    if let Some((key, versions)) = record.take() {
                        writer.write_record(&key, versions)?;
                    }
                    record = Some((record_key.to_string(), vec![converted]));
                }
            }
        }
        if let Some((key, versions)) = record.take() {
            writer.write_record(&key, versions)?;
        }
    }
    guard.call(|| txn.delete_table(V1_VERSIONS))?;
    guard.call(|| txn.delete_table(V1_CURRENT))?;
    Ok(())
}

/// How many schema-2 rows are split per read of the table: the rows are rewritten in the
/// same table, so they are read in batches, each after the last key of the one before.
const SPLIT_BATCH: usize = 1_000;

fn from_v2(store: &Store, txn: &WriteTransaction) -> Result<(), Failure> {
    let guard = &store.guard;
    let mut versions = guard.call(|| txn.open_table(VERSIONS))?;
    let mut entries = guard.call(|| txn.open_table(ENTRIES))?;
    let mut after: Option<String> = None;
    loop {
        let mut batch: Vec<(String, Vec<u8>)> = Vec::with_capacity(SPLIT_BATCH);
        {
            let bounds = match &after {
                Some(key) => (
                    std::ops::Bound::Excluded(key.as_str()),
                    std::ops::Bound::Unbounded,
                ),
                None => (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
            };
            let mut rows = guard.call(|| versions.range::<&str>(bounds))?;
            while batch.len() < SPLIT_BATCH {
                let Some((key, value)) = guard.call(|| rows.next().transpose())? else {
                    break;
                };
                batch.push((key.value().to_string(), value.value().to_vec()));
            }
        }
        let Some((last, _)) = batch.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (key, value) in &batch {
            let (row, entry) =
                codec::split_v2_version(value).map_err(|_| corrupt_value("record version"))?;
            guard.call(|| entries.insert(key.as_str(), entry))?;
            guard.call(|| versions.insert(key.as_str(), row.as_slice()))?;
        }
    }
}

/// The per-source run index and the latest complete run of each source.
fn index_runs(store: &Store, txn: &WriteTransaction) -> Result<(), Failure> {
    let guard = &store.guard;
    let runs = guard.call(|| txn.open_table(RUNS))?;
    let mut index = guard.call(|| txn.open_table(SOURCE_RUNS))?;
    let mut latest = guard.call(|| txn.open_table(LATEST))?;
    let mut latest_complete: BTreeMap<String, String> = BTreeMap::new();
    let mut rows = guard.call(|| runs.iter())?;
    while let Some((_, value)) = guard.call(|| rows.next().transpose())? {
        let run: RunRecord = from_json(value.value(), "run")?;
        let key = format!("{}{SEP}{}", run.source, run.run_id);
        guard.call(|| index.insert(key.as_str(), run.status.index_value()))?;
        if run.status == RunStatus::Complete {
            // Run ids increase, and the table is read in id order.
            latest_complete.insert(run.source.clone(), run.run_id.clone());
        }
    }
    for (source, run_id) in &latest_complete {
        guard.call(|| latest.insert(source.as_str(), run_id.as_str()))?;
    }
    Ok(())
}

fn kind_of(record_key: &str) -> Result<RecordKind, Failure> {
    let kind = record_key
        .split(SEP)
        .nth(1)
        .ok_or_else(|| corrupt_value("record version key"))?;
    RecordKind::ALL
        .into_iter()
        .find(|candidate| candidate.as_str() == kind)
        .ok_or_else(|| corrupt_value("record kind"))
}

/// One schema-1 version in the new layout.
struct Converted {
    valid_from: String,
    valid_to: Option<String>,
    hash: crate::run::record::Hash,
    entry: Vec<u8>,
    stored: Value,
    volatile: Map<String, Value>,
}

fn convert(kind: RecordKind, valid_from: &str, version: V1Version) -> Result<Converted, Failure> {
    let record = version.entry.get("record").cloned().unwrap_or(Value::Null);
    let payload = stored_payload(version.entry.get("payload").cloned().unwrap_or(Value::Null));
    let (stored, volatile) = split_volatile(kind, record);
    let hash = ChangeRule::new(&[]).material_hash(&stored);
    let entry = serde_json::to_vec(&json!({"record": stored, "payload": payload}))
        .map_err(|error| Failure::Corrupt(error.to_string()))?;
    Ok(Converted {
        valid_from: valid_from.to_string(),
        valid_to: version.valid_to,
        hash,
        entry,
        stored,
        volatile,
    })
}

/// Writes converted schema-1 records in the current layout.
struct Writer<'t> {
    store: &'t Store,
    versions: redb::Table<'t, &'static str, &'static [u8]>,
    entries: redb::Table<'t, &'static str, &'static [u8]>,
    current: redb::Table<'t, &'static str, &'static [u8]>,
    tombstones: redb::Table<'t, &'static str, &'static [u8]>,
    volatile: redb::Table<'t, &'static str, &'static [u8]>,
}

impl Writer<'_> {
    /// Writes one record's versions (oldest first), merging neighbours whose material content
    /// is the same: they differed only in what schema 2 no longer versions.
    fn write_record(&mut self, record_key: &str, versions: Vec<Converted>) -> Result<(), Failure> {
        let guard = &self.store.guard;
        let mut merged: Vec<Converted> = Vec::new();
        for version in versions {
            match merged.last_mut() {
                Some(last)
                    if last.hash == version.hash
                        && last.valid_to.as_deref() == Some(version.valid_from.as_str()) =>
                {
                    last.valid_to = version.valid_to;
                    last.volatile = version.volatile;
                }
                _ => merged.push(version),
            }
        }
        let Some(last) = merged.last() else {
            return Ok(());
        };
        match &last.valid_to {
            None => {
                let current = CurrentRow::new(
                    &last.valid_from,
                    last.hash,
                    volatile_digest(&last.volatile),
                    Flags::of(&last.stored),
                )?;
                guard.call(|| self.current.insert(record_key, current.encode().as_slice()))?;
            }
            Some(_) => {
                let tombstone = ChangeRule::new(&[]).deleted_hash(&last.stored);
                guard.call(|| self.tombstones.insert(record_key, tombstone.as_slice()))?;
            }
        }
        if !last.volatile.is_empty() {
            let bytes = serde_json::to_vec(&last.volatile)
                .map_err(|error| Failure::Corrupt(error.to_string()))?;
            guard.call(|| self.volatile.insert(record_key, bytes.as_slice()))?;
        }
        for version in &merged {
            let mut row = codec::encode_version(&version.hash, Flags::of(&version.stored));
            if let Some(valid_to) = &version.valid_to {
                row = codec::close_version(&row, valid_to)?;
            }
            let key = codec::version_key(record_key, &version.valid_from);
            guard.call(|| self.versions.insert(key.as_str(), row.as_slice()))?;
            guard.call(|| self.entries.insert(key.as_str(), version.entry.as_slice()))?;
        }
        Ok(())
    }
}
