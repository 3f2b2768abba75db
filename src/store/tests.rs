//! Unit tests of the version store: storage that grows with changes, exact read-back of past
//! runs, failed runs, ids, schema and corruption handling.

use super::*;
use crate::normalize::{normalize, Snapshot};
use chrono::TimeZone;
use serde_json::json;

fn user(pk: i64, name: &str, groups: &[&str]) -> Value {
    json!({"pk": pk, "username": format!("u{pk}"), "name": name, "is_active": true,
           "groups": groups, "email": "", "attributes": {}, "uid": format!("uid{pk}"),
           "path": "users", "type": "internal"})
}

fn group(pk: &str, users: &[i64]) -> Value {
    json!({"pk": pk, "name": pk, "is_superuser": false, "parents": [], "users": users, "attributes": {}})
}

fn snapshot(users: Vec<Value>, groups: Vec<Value>) -> Snapshot {
    normalize(users, Some(groups), false).unwrap()
}

fn outcome(second: u32) -> RunOutcome {
    let at = Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, second).unwrap();
    RunOutcome {
        source: "corp".into(),
        started_at: at,
        finished_at: at,
        authentik_version: Some("2025.12.4".into()),
        settings_fingerprint: "f".into(),
    }
}

fn commit(
    store: &Store,
    outcome: RunOutcome,
    snapshot: &Snapshot,
) -> Result<RunRecord, StoreError> {
    let previous = store
        .latest_complete(&outcome.source)?
        .map(|run| run.run_id);
    store.commit_complete(outcome, snapshot, previous.as_deref(), |_| Ok(()))
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("aksync.redb"), Duration::from_secs(1)).unwrap();
    (dir, store)
}

#[test]
fn unchanged_runs_add_no_versions_and_past_runs_read_back() {
    let (_dir, store) = temp_store();
    let first = snapshot(
        vec![user(1, "A", &["g1"]), user(2, "B", &[])],
        vec![group("g1", &[1])],
    );
    let run1 = commit(&store, outcome(0), &first).unwrap();
    assert_eq!(run1.versions_written, 4);
    let versions_after_first = store.version_count("corp").unwrap();
    assert_eq!(versions_after_first, 4);

    let run2 = commit(&store, outcome(1), &first).unwrap();
    assert_eq!(run2.versions_written, 0);
    assert_eq!(store.version_count("corp").unwrap(), versions_after_first);
    assert!(run2.run_id > run1.run_id);

    let second = snapshot(
        vec![user(1, "A renamed", &[]), user(3, "C", &["g1"])],
        vec![group("g1", &[3])],
    );
    let run3 = commit(&store, outcome(2), &second).unwrap();
    // A changed, C new, g1's member count unchanged but payload users changed, membership C:g1 new.
    assert_eq!(run3.versions_written, 4);

    assert_eq!(store.snapshot(&run1).unwrap(), first);
    assert_eq!(store.snapshot(&run2).unwrap(), first);
    assert_eq!(store.snapshot(&run3).unwrap(), second);
    assert_eq!(
        store.latest_complete("corp").unwrap().unwrap().run_id,
        run3.run_id
    );
}

#[test]
fn a_record_that_returns_reads_back_in_every_run() {
    let (_dir, store) = temp_store();
    let with = snapshot(vec![user(1, "A", &[]), user(2, "B", &[])], vec![]);
    let without = snapshot(vec![user(1, "A", &[])], vec![]);
    let runs: Vec<RunRecord> = [&with, &without, &with]
        .iter()
        .enumerate()
        .map(|(i, snap)| commit(&store, outcome(i as u32), snap).unwrap())
        .collect();
    assert_eq!(store.snapshot(&runs[0]).unwrap(), with);
    assert_eq!(store.snapshot(&runs[1]).unwrap(), without);
    assert_eq!(store.snapshot(&runs[2]).unwrap(), with);
}

#[test]
fn failed_runs_keep_the_last_snapshot() {
    let (_dir, store) = temp_store();
    let first = snapshot(vec![user(1, "A", &[])], vec![]);
    let good = commit(&store, outcome(0), &first).unwrap();
    let failed = store.commit_failed(outcome(1), "boom").unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("boom"));
    assert_eq!(
        store.latest_complete("corp").unwrap().unwrap().run_id,
        good.run_id
    );
    assert!(matches!(
        store.snapshot(&failed),
        Err(StoreError::NotComplete { .. })
    ));
    let runs = store.runs(Some("corp")).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        vec![failed.run_id, good.run_id]
    );
}

#[test]
fn run_ids_increase_even_when_the_clock_goes_back() {
    let (_dir, store) = temp_store();
    let empty = Snapshot::default();
    let later = commit(&store, outcome(30), &empty).unwrap();
    let earlier = commit(&store, outcome(5), &empty).unwrap();
    assert!(earlier.run_id > later.run_id);
}

#[test]
fn schema_version_is_recorded_and_newer_schemas_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aksync.redb");
    {
        let store = Store::open(&path, Duration::ZERO).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store
            .write(|txn| {
                let mut meta = txn.open_table(META)?;
                meta.insert(SCHEMA_VERSION_KEY, b"99".as_slice())?;
                Ok(())
            })
            .unwrap();
    }
    let error = Store::open(&path, Duration::ZERO).err().unwrap();
    assert!(
        matches!(error, StoreError::NewerSchema { found: 99, .. }),
        "{error}"
    );
}

#[test]
fn unknown_run_fields_survive() {
    let raw = json!({"run_id": "01J", "source": "corp", "status": "complete",
        "started_at": "2026-11-01T10:00:00Z", "finished_at": "2026-11-01T10:00:01Z", "error": null,
        "accounts": 1, "groups": 0, "memberships": 0, "authentik_version": null,
        "settings_fingerprint": "f", "aksync_version": "9.9.9", "chain_digest": "abc"});
    let record: RunRecord = serde_json::from_value(raw).unwrap();
    assert_eq!(record.counts.accounts, 1);
    // Only what this version does not know lands in `extra`, so nothing is written twice.
    assert_eq!(
        record.extra.keys().collect::<Vec<_>>(),
        vec!["chain_digest"]
    );
    let written = serde_json::to_string(&record).unwrap();
    assert_eq!(written.matches("\"accounts\"").count(), 1, "{written}");
    let again: RunRecord = serde_json::from_str(&written).unwrap();
    assert_eq!(again, record);
}

#[test]
fn a_garbage_file_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aksync.redb");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let error = Store::open(&path, Duration::ZERO).err().unwrap();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
}

#[test]
fn a_run_committed_meanwhile_is_a_conflict_and_finish_errors_store_nothing() {
    let (_dir, store) = temp_store();
    let empty = Snapshot::default();
    commit(&store, outcome(0), &empty).unwrap();
    let stale = store.commit_complete(outcome(1), &empty, None, |_| Ok(()));
    assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    let latest = store.latest_complete("corp").unwrap().unwrap().run_id;
    let aborted = store.commit_complete(
        outcome(2),
        &snapshot(vec![user(1, "A", &[])], vec![]),
        Some(&latest),
        |_| Err("disk full".to_string()),
    );
    assert!(matches!(aborted, Err(StoreError::Aborted(_))));
    assert_eq!(store.runs(None).unwrap().len(), 1);
    assert_eq!(store.version_count("corp").unwrap(), 0);
}

#[test]
fn versions_of_one_record_and_their_validity() {
    let (_dir, store) = temp_store();
    let r1 = commit(
        &store,
        outcome(0),
        &snapshot(vec![user(1, "A", &[]), user(12, "L", &[])], vec![]),
    )
    .unwrap();
    let r2 = commit(
        &store,
        outcome(1),
        &snapshot(vec![user(1, "B", &[])], vec![]),
    )
    .unwrap();
    let versions = store.versions("corp", RecordKind::Account, "uid1").unwrap();
    // uid1 and uid12 share the prefix; both are listed, each version once.
    let ids: Vec<(&str, bool, bool)> = versions
        .iter()
        .map(|v| {
            (
                v.external_id.as_str(),
                v.valid_at(&r1.run_id),
                v.valid_at(&r2.run_id),
            )
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            ("uid1", true, false),
            ("uid1", false, true),
            ("uid12", true, false)
        ]
    );
}
