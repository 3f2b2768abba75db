//! Unit tests of the version store, fed through the real pipeline (collect → plan → commit):
//! storage that grows with changes (not logins), exact read-back of past runs, failed runs,
//! ids, conflicts, schema, migration and corruption handling.

use std::collections::BTreeMap;

use super::codec::{CurrentRow, SEP};
use super::*;
use crate::run::record::RecordKind;
use crate::testing::{at, TestSource};
use redb::ReadableTable;
use serde_json::{json, Value};

fn user(pk: i64, name: &str, groups: &[&str]) -> Value {
    json!({"pk": pk, "username": format!("u{pk}"), "name": name, "is_active": true,
           "groups": groups, "email": "", "attributes": {}, "uid": format!("uid{pk}"),
           "path": "users", "type": "internal", "last_login": "2026-11-01T08:00:00Z"})
}

fn group(pk: &str, users: &[i64]) -> Value {
    json!({"pk": pk, "name": pk, "is_superuser": false, "parents": [], "users": users, "attributes": {}})
}

/// What a run reads back: every record of every kind, by kind and external id.
fn read_back(source: &TestSource, run: &RunRecord) -> BTreeMap<(RecordKind, String), Value> {
    let reader = source.store.reader().unwrap();
    let mut records = BTreeMap::new();
    for kind in RecordKind::ALL {
        for record in reader.records_at(run, kind).unwrap() {
            let record = record.unwrap();
            records.insert((kind, record.external_id), record.record);
        }
    }
    records
}

fn outcome(minute: i64) -> RunOutcome {
    RunOutcome {
        source: "corp".into(),
        started_at: at(minute),
        finished_at: at(minute),
        authentik_version: Some("2025.12.4".into()),
        settings_fingerprint: "f".into(),
        health: None,
        settings_changed: Vec::new(),
    }
}

#[test]
fn unchanged_runs_add_no_versions_and_past_runs_read_back() {
    let mut source = TestSource::new();
    let first = source.sync(
        vec![user(1, "A", &["g1"]), user(2, "B", &[])],
        vec![group("g1", &[1])],
    );
    assert_eq!(first.run.versions_written, 4);
    assert_eq!(source.store.version_count("corp").unwrap(), 4);

    let second = source.sync(
        vec![user(1, "A", &["g1"]), user(2, "B", &[])],
        vec![group("g1", &[1])],
    );
    assert_eq!(second.run.versions_written, 0);
    assert_eq!(source.store.version_count("corp").unwrap(), 4);
    assert!(second.run.run_id > first.run.run_id);

    let third = source.sync(
        vec![user(1, "A renamed", &[]), user(3, "C", &["g1"])],
        vec![group("g1", &[3])],
    );
    // A changed, C new, the membership C:g1 new. g1's member count is volatile and its
    // payload carries no member list, so g1 gets no version.
    assert_eq!(third.run.versions_written, 3);

    let before = read_back(&source, &first.run);
    assert_eq!(read_back(&source, &second.run), before);
    let after = read_back(&source, &third.run);
    assert_eq!(
        after
            .keys()
            .map(|(kind, id)| format!("{}:{id}", kind.as_str()))
            .collect::<Vec<_>>(),
        [
            "account:uid1",
            "account:uid3",
            "group:g1",
            "membership:uid3:g1"
        ]
    );
    assert_eq!(
        after[&(RecordKind::Account, "uid1".into())]["display_name"],
        "A renamed"
    );
    assert_eq!(
        before[&(RecordKind::Account, "uid1".into())]["display_name"],
        "A"
    );
    // The latest run reads through the current rows, older ones through the versions: both
    // must agree for the latest.
    let latest = source.store.latest_complete("corp").unwrap().unwrap();
    assert_eq!(latest.run_id, third.run.run_id);
}

/// The target of the evidence issue: 1,000 logins add no version, and a membership change
/// adds exactly one (the membership).
#[test]
fn logins_add_no_versions_and_a_membership_change_adds_one() {
    let mut source = TestSource::new();
    let people = |login: &str, extra_group: bool| -> Vec<Value> {
        (1..=1000)
            .map(|pk| {
                let mut raw = user(pk, "P", &["g1"]);
                raw["last_login"] = json!(login);
                raw["last_updated"] = json!(login);
                if extra_group && pk == 7 {
                    raw["groups"] = json!(["g1", "g2"]);
                }
                raw
            })
            .collect()
    };
    let groups = |extra_group: bool| {
        let members: Vec<i64> = (1..=1000).collect();
        vec![
            group("g1", &members),
            group("g2", if extra_group { &[7] } else { &[] }),
        ]
    };
    source.sync(people("2026-11-01T08:00:00Z", false), groups(false));
    let before = source.store.version_count("corp").unwrap();
    let logins = source.sync(people("2026-11-02T09:00:00Z", false), groups(false));
    assert_eq!(logins.run.versions_written, 0);
    assert_eq!(source.store.version_count("corp").unwrap(), before);
    assert!(logins.diff.unwrap().is_empty());
    // The latest login is kept where leavers and `show` read it.
    let reader = source.store.reader().unwrap();
    assert_eq!(
        reader
            .volatile("corp", RecordKind::Account, "uid5")
            .unwrap()["last_login_at"],
        "2026-11-02T09:00:00Z"
    );
    drop(reader);
    let moved = source.sync(people("2026-11-02T09:00:00Z", true), groups(true));
    assert_eq!(moved.run.versions_written, 1);
    assert_eq!(source.store.version_count("corp").unwrap(), before + 1);
}

#[test]
fn a_record_that_returns_reads_back_in_every_run() {
    let mut source = TestSource::new();
    let with = || vec![user(1, "A", &[]), user(2, "B", &[])];
    let runs = [
        source.sync(with(), vec![]).run,
        source.sync(vec![user(1, "A", &[])], vec![]).run,
        source.sync(with(), vec![]).run,
    ];
    let ids = |run: &RunRecord| {
        read_back(&source, run)
            .into_keys()
            .map(|(_, id)| id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&runs[0]), ["uid1", "uid2"]);
    assert_eq!(ids(&runs[1]), ["uid1"]);
    assert_eq!(ids(&runs[2]), ["uid1", "uid2"]);
}

#[test]
fn failed_runs_keep_the_last_snapshot() {
    let mut source = TestSource::new();
    let good = source.sync(vec![user(1, "A", &[])], vec![]).run;
    let failed = source.fail(outcome(30), "boom");
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("boom"));
    let store = &source.store;
    assert_eq!(
        store.latest_complete("corp").unwrap().unwrap().run_id,
        good.run_id
    );
    let reader = store.reader().unwrap();
    assert!(matches!(
        reader.records_at(&failed, RecordKind::Account).err(),
        Some(StoreError::NotComplete { .. })
    ));
    let runs = store.runs(Some("corp")).unwrap();
    assert_eq!(
        runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        vec![failed.run_id.clone(), good.run_id.clone()]
    );
    assert_eq!(store.runs(None).unwrap(), runs);
    assert_eq!(store.complete_runs("corp").unwrap(), vec![good]);
}

#[test]
fn run_ids_increase_even_when_the_clock_goes_back() {
    let mut source = TestSource::new();
    let later = source.fail(outcome(600), "x");
    // The pipeline's own clock starts at minute 1: before the failed run.
    let earlier = source.sync(vec![], vec![]).run;
    assert!(earlier.run_id > later.run_id);
}

/// Two overlapping runs of one source: the one that commits second must not write its older
/// view on top of the newer one.
#[test]
fn a_run_overtaken_by_another_commit_is_refused() {
    let mut source = TestSource::new();
    source.sync(vec![user(1, "A", &[])], vec![]);
    let latest = source.store.latest_complete("corp").unwrap();
    // A starts (and reads its directory) first; B starts later, sees a change, and commits.
    let run_a = source
        .collect(vec![user(1, "A", &[])], vec![], latest.clone())
        .unwrap();
    let run_b = source
        .collect(vec![user(1, "A", &[]), user(2, "B", &[])], vec![], latest)
        .unwrap();
    let b = match crate::testing::store_run(run_b, &source.store) {
        Ok(synced) => synced.run,
        Err(_) => panic!("B commits"),
    };
    let error = match crate::testing::store_run(run_a, &source.store) {
        Ok(_) => panic!("A must not commit after B"),
        Err(crate::run::sync::Rejected::Failed(_, reason)) => reason,
        Err(crate::run::sync::Rejected::Store(error)) => panic!("{error}"),
    };
    assert!(error.contains("committed meanwhile"), "{error}");
    assert_eq!(
        source
            .store
            .latest_complete("corp")
            .unwrap()
            .unwrap()
            .run_id,
        b.run_id
    );
    // A's envelope file is not left behind.
    let files = std::fs::read_dir(source.dir.path().join("envelopes/corp"))
        .unwrap()
        .count();
    assert_eq!(files, 2);
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

/// A panic inside redb is a damaged file; a panic in aksync's own code is a bug, and is never
/// called corruption.
#[test]
fn only_redb_panics_are_called_corruption() {
    let mut source = TestSource::new();
    let run = source.sync(vec![user(1, "A", &[])], vec![]).run;
    let bug = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        source
            .store
            .update_run(&run.run_id, |_| -> Result<(), String> {
                panic!("a bug in aksync")
            })
    }));
    assert!(
        bug.is_err(),
        "aksync's own panic is not turned into a store error"
    );
    assert_eq!(source.store.run(&run.run_id).unwrap(), run);

    let guard = Guard::default();
    let caught = guard.call(|| -> Result<(), redb::StorageError> { panic!("page checksum") });
    assert!(matches!(caught, Err(Failure::Corrupt(ref reason)) if reason == "page checksum"));
    let after = guard.call(|| Ok::<_, redb::StorageError>(()));
    let error = after
        .err()
        .unwrap()
        .into_store_error(Path::new("x.redb"))
        .to_string();
    assert!(
        error.contains("internal error") && error.contains("not used again"),
        "{error}"
    );
}

#[test]
fn versions_of_one_record_and_their_validity() {
    let mut source = TestSource::new();
    let r1 = source
        .sync(vec![user(1, "A", &[]), user(12, "L", &[])], vec![])
        .run;
    let r2 = source.sync(vec![user(1, "B", &[])], vec![]).run;
    let reader = source.store.reader().unwrap();
    let versions: Vec<RecordVersion> = reader
        .versions("corp", RecordKind::Account, "uid1")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
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

/// A schema-1 database (every login a version, member lists in payloads, JSON rows) opens as
/// schema 2: versions that differed only in volatile content merge, the run index and the
/// latest pointer are built, and the next run compares with the migrated state.
#[test]
fn a_schema_1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aksync.redb");
    let (r1, r2, r3) = (
        "01JDX000000000000000000001",
        "01JDX000000000000000000002",
        "01JDX000000000000000000003",
    );
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(SCHEMA_VERSION_KEY, b"1".as_slice()).unwrap();
            let mut runs = txn.open_table(RUNS).unwrap();
            for (id, minute) in [(r1, 1), (r2, 2), (r3, 3)] {
                let mut record = outcome(minute).into_record(
                    id.to_string(),
                    RunStatus::Complete,
                    None,
                    Counts::default(),
                    0,
                );
                record.settings_fingerprint =
                    crate::testing::source_config().settings_fingerprint();
                runs.insert(id, serde_json::to_vec(&record).unwrap().as_slice())
                    .unwrap();
            }
            let account = |login: &str| {
                json!({"record": {"external_id": "uid1", "username": "u1", "status": "ACTIVE",
                                  "is_superuser": false, "last_login_at": login, "metadata": {}},
                       "payload": {"uid": "uid1", "groups": ["g1"], "last_login": login}})
            };
            let mut versions = txn.open_table(migrate_v1_versions()).unwrap();
            let key = |id: &str, run: &str| format!("corp{SEP}account{SEP}{id}{SEP}{run}");
            // Two logins: three schema-1 versions of one account.
            for (run, valid_to, login) in
                [(r1, Some(r2), "t1"), (r2, Some(r3), "t2"), (r3, None, "t3")]
            {
                let row = json!({"valid_to": valid_to, "hash": "h", "entry": account(login)});
                versions
                    .insert(
                        key("uid1", run).as_str(),
                        serde_json::to_vec(&row).unwrap().as_slice(),
                    )
                    .unwrap();
            }
            // A deleted account: one closed version.
            let gone = json!({"valid_to": r2, "hash": "h", "entry": {"record": {"external_id": "uid2",
                "username": "u2", "status": "ACTIVE", "metadata": {}}, "payload": {}}});
            versions
                .insert(
                    key("uid2", r1).as_str(),
                    serde_json::to_vec(&gone).unwrap().as_slice(),
                )
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, Duration::ZERO).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.latest_complete("corp").unwrap().unwrap().run_id, r3);
    assert_eq!(store.complete_runs("corp").unwrap().len(), 3);
    assert_eq!(
        store.version_count("corp").unwrap(),
        2,
        "the logins merged into one version"
    );
    let reader = store.reader().unwrap();
    let current: Vec<(String, CurrentRow)> = reader
        .current("corp", RecordKind::Account)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].1.valid_from(), r1);
    assert_eq!(
        reader
            .volatile("corp", RecordKind::Account, "uid1")
            .unwrap()["last_login_at"],
        "t3"
    );
    assert!(reader
        .tombstone("corp", RecordKind::Account, "uid2")
        .unwrap()
        .is_some());
    let entry = reader
        .version("corp", RecordKind::Account, "uid1", r1)
        .unwrap();
    let (record, payload) = (entry.record().unwrap(), entry.payload().unwrap());
    assert!(record.get("last_login_at").is_none());
    assert!(payload.get("groups").is_none() && payload.get("last_login").is_none());
}

/// A schema-2 database (each version's entry inside its row) opens as schema 3 with every
/// run reading back the same, across more rows than one batch of the split.
#[test]
fn a_schema_2_database_is_migrated() {
    let mut source = TestSource::new();
    let users: Vec<Value> = (1..=700).map(|pk| user(pk, "A", &["g1"])).collect();
    let members: Vec<i64> = (1..=700).collect();
    let first = source.sync(users.clone(), vec![group("g1", &members)]).run;
    let mut renamed = users.clone();
    renamed[0] = user(1, "Renamed", &["g1"]);
    let second = source
        .sync(renamed.clone(), vec![group("g1", &members)])
        .run;
    let before = (read_back(&source, &first), read_back(&source, &second));
    let versions = source.store.version_count("corp").unwrap();
    assert!(versions > 1_400, "{versions} rows: more than one batch");

    source.reopen(|path| {
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut rows = txn.open_table(VERSIONS).unwrap();
            let entries = txn.open_table(ENTRIES).unwrap();
            for entry in entries.iter().unwrap() {
                let (key, entry) = entry.unwrap();
                let mut v2 = rows.get(key.value()).unwrap().unwrap().value().to_vec();
                v2[0] = 2;
                v2.extend_from_slice(entry.value());
                rows.insert(key.value(), v2.as_slice()).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(SCHEMA_VERSION_KEY, b"2".as_slice()).unwrap();
        }
        txn.delete_table(ENTRIES).unwrap();
        txn.commit().unwrap();
    });

    assert_eq!(source.store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(source.store.version_count("corp").unwrap(), versions);
    assert_eq!(
        (read_back(&source, &first), read_back(&source, &second)),
        before
    );
    // The next run compares with the migrated state: one rename, one new version.
    renamed[1] = user(2, "Renamed too", &["g1"]);
    let third = source.sync(renamed, vec![group("g1", &members)]).run;
    assert_eq!(third.versions_written, 1);
}

fn migrate_v1_versions() -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new("record_versions")
}

/// Stores a run whose only user is named `name`, with envelopes waiting for a webhook when
/// `webhook` says so.
fn run_with_outbox(source: &mut TestSource, name: &str, webhook: bool) -> RunRecord {
    let latest = source.store.latest_complete("corp").unwrap();
    let mut job = source
        .collect(vec![user(1, name, &[])], vec![], latest)
        .unwrap();
    job.webhook = webhook;
    match crate::testing::store_run(job, &source.store) {
        Ok(synced) => synced.run,
        Err(crate::run::sync::Rejected::Failed(_, reason)) => panic!("{reason}"),
        Err(crate::run::sync::Rejected::Store(error)) => panic!("{error}"),
    }
}

#[test]
fn the_outbox_is_the_undelivered_runs_whatever_the_history_and_follows_decisions() {
    let mut source = TestSource::new();
    let mut waiting = Vec::new();
    for n in 0..300 {
        let run = run_with_outbox(&mut source, &format!("name {n}"), n % 100 == 50);
        if n % 100 == 50 {
            waiting.push(run.run_id);
        }
    }
    let outbox = |store: &Store| -> Vec<String> {
        let runs = store.undelivered_runs("corp").unwrap();
        runs.into_iter().map(|run| run.run_id).collect()
    };
    assert_eq!(outbox(&source.store), waiting);
    assert_eq!(source.store.sources_with_runs().unwrap(), ["corp"]);
    let set = |store: &Store, run_id: &str, status: DeliveryStatus| {
        store
            .update_run(run_id, |record| {
                record.delivery.as_mut().unwrap().status = status;
                Ok(())
            })
            .unwrap()
    };
    set(&source.store, &waiting[0], DeliveryStatus::Delivered);
    assert_eq!(outbox(&source.store), waiting[1..]);
    // A run put back in the queue (a retry) is found again, before the others.
    set(&source.store, &waiting[0], DeliveryStatus::Pending);
    assert_eq!(outbox(&source.store), waiting);
    for run_id in &waiting {
        set(&source.store, run_id, DeliveryStatus::Skipped);
    }
    assert_eq!(outbox(&source.store), Vec::<String>::new());
    // Failed runs and runs without envelopes move the mark too.
    source.fail(outcome(400), "unreachable");
    assert_eq!(outbox(&source.store), Vec::<String>::new());
    let last = run_with_outbox(&mut source, "last", true);
    assert_eq!(outbox(&source.store), std::slice::from_ref(&last.run_id));
    let recent = source.store.recent_runs("corp", 3).unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[0].run_id, last.run_id);
    assert_eq!(recent[1].status, RunStatus::Failed);
}

#[test]
fn a_cancelled_plan_stores_nothing_and_leaves_no_envelope_file() {
    let mut source = TestSource::new();
    let first = run_with_outbox(&mut source, "first", false);
    let latest = source.store.latest_complete("corp").unwrap();
    let job = source
        .collect(
            vec![user(1, "second", &[]), user(2, "third", &[])],
            vec![],
            latest,
        )
        .unwrap();
    job.cancel.cancel();
    match crate::testing::store_run(job, &source.store) {
        Err(crate::run::sync::Rejected::Failed(_, reason)) => {
            assert_eq!(reason, CANCELLED_BY_SHUTDOWN)
        }
        Ok(synced) => panic!("stored {synced:?}", synced = synced.run),
        Err(crate::run::sync::Rejected::Store(error)) => panic!("{error}"),
    }
    assert_eq!(
        source.store.latest_complete("corp").unwrap().unwrap(),
        first
    );
    let outbox: Vec<_> = std::fs::read_dir(source.dir.path().join("envelopes/corp"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outbox, [format!("{}.jsonl", first.run_id)]);
}
