//! Migrations of older layouts, each inside the write transaction that opens the database.
//!
//! Schema 1 stored every record version whole: volatile fields (logins) made versions, group
//! payloads carried their member lists, and versions were JSON keyed by the hash of the whole
//! entry. Schema 2 keeps the material content only (see [`crate::record`]). Migrating
//! rewrites each record's versions in the new layout, merges consecutive versions that
//! differed only in volatile content, and builds the per-source run index and the
//! latest-complete pointers. Material hashes are computed without `ignore_fields` (the store
//! does not know the settings); a source with `ignore_fields` starts a new baseline on its next
//! run anyway, because its settings fingerprint now includes them.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::codec::{self, CurrentRow, Flags, SEP};
use super::{
    corrupt_value, from_json, Failure, RunRecord, RunStatus, Store, CURRENT, LATEST, RUNS,
    SOURCE_RUNS, TOMBSTONES, VERSIONS, VOLATILE,
};
use crate::normalize::stored_payload;
use crate::record::{split_volatile, volatile_digest, ChangeRule, RecordKind};

const V1_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("record_versions");
const V1_CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current_versions");

#[derive(Deserialize)]
struct V1Version {
    valid_to: Option<String>,
    entry: Value,
}

/// Brings a database of schema `from` to the current layout.
pub(super) fn migrate(store: &Store, txn: &WriteTransaction, from: u32) -> Result<(), Failure> {
    match from {
        1 => from_v1(store, txn),
        other => Err(Failure::Corrupt(format!("unknown schema version {other}"))),
    }
}

fn from_v1(store: &Store, txn: &WriteTransaction) -> Result<(), Failure> {
    let guard = &store.guard;
    index_runs(store, txn)?;
    {
        let old = guard.call(|| txn.open_table(V1_VERSIONS))?;
        let mut writer = V2Writer {
            store,
            versions: guard.call(|| txn.open_table(VERSIONS))?,
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
    hash: crate::record::Hash,
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

struct V2Writer<'t> {
    store: &'t Store,
    versions: redb::Table<'t, &'static str, &'static [u8]>,
    current: redb::Table<'t, &'static str, &'static [u8]>,
    tombstones: redb::Table<'t, &'static str, &'static [u8]>,
    volatile: redb::Table<'t, &'static str, &'static [u8]>,
}

impl V2Writer<'_> {
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
            let mut bytes =
                codec::encode_version(&version.hash, Flags::of(&version.stored), &version.entry);
            if let Some(valid_to) = &version.valid_to {
                bytes = codec::close_version(&bytes, valid_to)?;
            }
            let key = codec::version_key(record_key, &version.valid_from);
            guard.call(|| self.versions.insert(key.as_str(), bytes.as_slice()))?;
        }
        Ok(())
    }
}
