//! A run's whole snapshot, as `aksync envelopes RUN --full` prints it: every account, group
//! and membership the run saw in scope, read from the stored versions, accounts then groups
//! then memberships, each in external id order, and written as it is read, so that a run of
//! 100,000 accounts is never held in memory.
//!
//! In aksync's own format each record is one line shaped like an envelope
//! ([`crate::output::envelope`]) whose `action` is `snapshot`: the record as the run saw it, a
//! statement of presence rather than an event. Its `hash` is the record's material hash (the
//! one its last change envelope carried), and it has neither `previous_hash` nor `changes`.
//! In Openlane's projection the sets are marked `snapshotComplete: true`, which no projection
//! of a run's changes is: a consumer may remove what it holds of this source and does not
//! find here.
//!
//! A record marked out of scope ([`crate::store::codec::Flags::OUT_OF_SCOPE`]) is stored as
//! part of the whole directory, but it is not one of the source's records to a consumer, so
//! it is left out.

use std::io::Write;

use crate::canonical::canonical_json;
use crate::output::envelope::{openlane_entry, EnvelopeContext, OpenlaneWriter, Schema};
use crate::run::record::{raw, RecordKind};
use crate::store::{Reader, RunRecord, StoreError, StoredRecord};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the snapshot: {0}")]
    Write(#[from] std::io::Error),
}

/// One record of a snapshot, with its kind.
type SnapshotRecord = Result<(RecordKind, StoredRecord), StoreError>;

/// The records of `run` that are in scope, accounts then groups then memberships, each in
/// external id order; an error if the run has no whole snapshot (failed, or pruned).
pub fn records_in_scope<'r>(
    reader: &'r Reader<'_>,
    run: &RunRecord,
) -> Result<impl Iterator<Item = SnapshotRecord> + 'r, StoreError> {
    reader.require_snapshot(run)?;
    let mut kinds = Vec::with_capacity(RecordKind::ALL.len());
    for kind in RecordKind::ALL {
        kinds.push(
            reader
                .records_at(run, kind)?
                .map(move |stored| stored.map(|stored| (kind, stored))),
        );
    }
    Ok(kinds.into_iter().flatten().filter(in_scope))
}

/// Whether a snapshot keeps a record: unless it is marked out of scope. An error is kept, to
/// be reported.
fn in_scope(record: &SnapshotRecord) -> bool {
    record
        .as_ref()
        .map_or(true, |(_, stored)| stored.flags.in_scope())
}

/// Writes the snapshot as aksync's envelope lines; returns how many.
pub fn write_envelopes(
    records: impl Iterator<Item = SnapshotRecord>,
    context: &EnvelopeContext<'_>,
    out: &mut impl Write,
) -> Result<u64, SnapshotError> {
    let mut count = 0;
    for record in records {
        let (kind, stored) = record?;
        let line = context.snapshot_line(
            kind,
            &stored.external_id,
            &raw(canonical_json(&stored.record)),
            &raw(canonical_json(&stored.payload)),
            &stored.hash,
        );
        out.write_all(&line)?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
}

/// Writes the snapshot as Openlane's payload sets, each marked complete; returns how many
/// envelopes.
pub fn write_openlane(
    records: impl Iterator<Item = SnapshotRecord>,
    primary_directory: bool,
    out: &mut impl Write,
) -> Result<u64, SnapshotError> {
    let mut sets = OpenlaneWriter::start(out, true, primary_directory)?;
    for record in records {
        let (kind, stored) = record?;
        let payload = (!stored.payload.is_null()).then_some(&stored.payload);
        let schema = Schema::of(kind);
        sets.push(
            schema,
            &openlane_entry(schema, &stored.external_id, &stored.record, payload, None),
        )?;
    }
    Ok(sets.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::Flags;
    use serde_json::{json, Value};

    fn stored(external_id: &str, flags: Flags) -> StoredRecord {
        StoredRecord {
            external_id: external_id.into(),
            valid_from: "R1".into(),
            hash: [1; 32],
            record: json!({"external_id": external_id}),
            payload: json!({"uid": external_id}),
            flags,
        }
    }

    #[test]
    fn records_out_of_scope_are_left_out_and_errors_kept() {
        let records: Vec<SnapshotRecord> = vec![
            Ok((RecordKind::Account, stored("a", Flags(Flags::ACTIVE)))),
            Ok((
                RecordKind::Account,
                stored("b", Flags(Flags::ACTIVE).with_scope(false)),
            )),
            Ok((RecordKind::Group, stored("g", Flags::default()))),
            Ok((
                RecordKind::Membership,
                stored("b:g", Flags::default().with_scope(false)),
            )),
            Err(StoreError::Corrupt {
                path: "aksync.redb".into(),
                reason: "x".into(),
            }),
        ];
        let kept: Vec<String> = records
            .into_iter()
            .filter(in_scope)
            .map(|record| record.map_or_else(|_| "error".into(), |(_, r)| r.external_id))
            .collect();
        assert_eq!(kept, ["a", "g", "error"]);
    }

    /// Marks the stored versions (and current rows) of the records whose key holds `id` as
    /// out of scope, as a run under a filter will.
    fn mark_out_of_scope(path: &std::path::Path, id: &str) {
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        for table in ["versions", "current"] {
            let definition = redb::TableDefinition::<&str, &[u8]>::new(table);
            let mut rows = txn.open_table(definition).unwrap();
            let marked: Vec<(String, Vec<u8>)> = redb::ReadableTable::iter(&rows)
                .unwrap()
                .map(|row| row.unwrap())
                .filter(|(key, _)| key.value().contains(id))
                .map(|(key, value)| {
                    let mut value = value.value().to_vec();
                    // The flags are a row's last byte.
                    *value.last_mut().unwrap() |= Flags::OUT_OF_SCOPE;
                    (key.value().to_string(), value)
                })
                .collect();
            assert!(!marked.is_empty(), "{table}");
            for (key, value) in marked {
                rows.insert(key.as_str(), value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_record_stored_out_of_scope_is_in_no_runs_snapshot() {
        let user = |pk: i64| {
            json!({"pk": pk, "username": format!("user{pk}"), "name": "A B", "is_active": true,
                   "groups": ["g1"], "email": "a@example.com", "attributes": {},
                   "uid": format!("uid{pk}"), "path": "users", "type": "internal",
                   "is_superuser": false})
        };
        let group = json!({"pk": "g1", "name": "G", "is_superuser": false, "parents": [],
                           "users": [1, 2], "attributes": {}});
        let mut source = crate::testing::TestSource::new();
        let older = source.sync(vec![user(1), user(2)], vec![group.clone()]).run;
        let latest = source.sync(vec![user(1), user(2)], vec![group]).run;
        source.reopen(|path| mark_out_of_scope(path, "uid2"));
        // The latest run reads the current rows, an older one the versions: both leave the
        // account and its membership out.
        for run in [&older, &latest] {
            let reader = source.store.reader().unwrap();
            let kept: Vec<String> = records_in_scope(&reader, run)
                .unwrap()
                .map(|record| record.unwrap().1.external_id)
                .collect();
            assert_eq!(kept, ["uid1", "g1", "uid1:g1"], "{}", run.run_id);
        }
    }

    #[test]
    fn the_openlane_snapshot_is_complete_in_every_set() {
        let records = vec![
            Ok((RecordKind::Account, stored("a", Flags::default()))),
            Ok((
                RecordKind::Account,
                stored("b", Flags::default().with_scope(false)),
            )),
        ];
        let mut out = Vec::new();
        let count = write_openlane(records.into_iter().filter(in_scope), true, &mut out).unwrap();
        assert_eq!(count, 1);
        let sets: Value = serde_json::from_slice(&out).unwrap();
        let schemas: Vec<&Value> = sets
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["schema"])
            .collect();
        assert_eq!(
            schemas,
            ["DirectoryAccount", "DirectoryGroup", "DirectoryMembership"]
        );
        for set in sets.as_array().unwrap() {
            assert_eq!(set["snapshotComplete"], true);
            assert_eq!(set["primaryDirectory"], true);
        }
        assert_eq!(
            sets[0]["envelopes"],
            json!([{"resource": "a", "payload": {"uid": "a"}}])
        );
    }
}
