//! Quarantine (issue 17): a run that finds too many leavers at once, or an empty listing, is
//! held for an admin's decision. The real binary against the fake server: what the held run
//! shows, what the next run is compared with, and what `approve` and `reject` record.

mod common;

use aksync::store::RunStatus;
use common::{receiver, remove_people, run_ids, TestEnv};
use serde_json::Value;
use std::sync::atomic::Ordering;

fn history_events(env: &TestEnv, username: &str) -> Vec<String> {
    let history = env.aksync(&["history", username, "--json"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    let history: Value = history.json();
    history[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_leavers_are_held_and_released_only_by_approval() {
    let env = TestEnv::start(40).await;
    let hook = receiver().await;
    hook.down.store(false, Ordering::SeqCst);
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        format!("{config}\n[output.webhook]\nurl = {:?}\n", hook.url),
    )
    .unwrap();
    env.sync_ok();
    let delivered_before = hook.batches().len();
    let gone: Vec<String> = remove_people(&env, 6)
        .into_iter()
        .map(|user| user.username)
        .collect();

    // Six of some forty-five accounts is over max_leaver_percent = 10: a dry run says so.
    let dry = env.aksync(&["sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stderr.contains("would be QUARANTINED"),
        "{}",
        dry.stderr
    );
    let held = env.aksync(&["sync"]);
    assert_eq!(held.code, 1, "{}{}", held.stdout, held.stderr);
    assert!(
        held.stdout.contains("QUARANTINED") && held.stdout.contains("max_leaver_percent = 10"),
        "{}",
        held.stdout
    );
    let ids = run_ids(&env);
    let (complete, quarantined) = (ids[0].clone(), ids[1].clone());
    let record = env.store().run(&quarantined).unwrap();
    assert_eq!(record.status, RunStatus::Quarantined);
    assert_eq!(record.previous_run.as_deref(), Some(complete.as_str()));
    assert!(record.delivery.is_none());
    assert_eq!(hook.batches().len(), delivered_before, "nothing delivered");
    // The source's latest complete run is still the one before: `show` reads it, and the
    // held run has no snapshot of its own yet.
    let latest = env.store().latest_complete("corp").unwrap().unwrap();
    assert_eq!(latest.run_id, complete);
    let shown = env.aksync(&["show", "accounts", "--run", &quarantined]);
    assert_ne!(shown.code, 0);
    assert!(
        shown.stderr.contains("quarantined") && shown.stderr.contains("aksync approve"),
        "{}",
        shown.stderr
    );
    // Its report says why and lists the leavers it holds; `history` does not count them yet.
    let report = env.aksync(&["report", &quarantined]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert!(
        report.stdout.contains("Quarantined runs")
            && report.stdout.contains("awaiting a decision")
            && gone
                .iter()
                .all(|name| report.stdout.contains(name.as_str())),
        "{}",
        report.stdout
    );
    assert!(!history_events(&env, &gone[0]).contains(&"left".to_string()));
    let runs = env.aksync(&["runs"]);
    assert!(runs.stdout.contains("quarantined"), "{}", runs.stdout);
    let check = env.aksync(&["check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains(&format!("run {quarantined} is quarantined")),
        "{}",
        check.stdout
    );
    env.verify_ok("quarantine");

    let approved = env.aksync(&["approve", &quarantined]);
    assert_eq!(approved.code, 0, "{}{}", approved.stdout, approved.stderr);
    assert!(approved.stdout.contains("approved"), "{}", approved.stdout);
    let record = env.store().run(&quarantined).unwrap();
    assert_eq!(record.status, RunStatus::Complete);
    let decision = record.quarantine.unwrap().decision.unwrap();
    assert_eq!(decision.decision, aksync::store::Decision::Approved);
    assert!(decision.by.contains('@'), "{}", decision.by);
    let latest = env.store().latest_complete("corp").unwrap().unwrap();
    assert_eq!(latest.run_id, quarantined);
    // Now the run is evidence like any other: its snapshot, its leavers, its delivery.
    let accounts = env.show_json("accounts", &quarantined).to_string();
    assert!(gone.iter().all(|name| !accounts.contains(name.as_str())));
    assert_eq!(
        history_events(&env, &gone[0]),
        ["baseline", "left"],
        "{}",
        gone[0]
    );
    assert!(hook.batches().iter().any(|(run, _)| run == &quarantined));
    let report = env.aksync(&["report", "--since", "2000-01-01", "--format", "csv"]);
    assert!(
        gone.iter().all(|name| report
            .stdout
            .lines()
            .any(|l| l.contains(",leaver,") && l.contains(name.as_str()))),
        "{}",
        report.stdout
    );
    env.verify_ok("quarantine");
    assert_eq!(env.aksync(&["check"]).code, 0);
    let twice = env.aksync(&["approve", &quarantined]);
    assert_eq!(twice.code, 1, "{}", twice.stderr);
    assert!(
        twice.stderr.contains("already approved"),
        "{}",
        twice.stderr
    );

    // The next run is compared with the approved one: the leavers are not found again.
    env.sync_ok();
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    assert_eq!(diff["leavers"], serde_json::json!([]), "{diff}");
}

/// A listing that lost most of the directory for one run (an index rebuilding, a token whose
/// visibility shrank) is held; the directory comes back, and the next run is compared with
/// the last complete run, so nobody "joins". The held run can then only be rejected, and
/// `verify` notices a decision that no ledger entry records. An empty listing never gets
/// that far: without the token's own user in it, the run fails (the foundation's guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glitch_is_compared_past_and_rejected() {
    let env = TestEnv::start(15).await;
    env.sync_ok();
    // A successful, empty first page of users.
    let empty = serde_json::json!({
        "pagination": {"next": 0, "previous": 0, "count": 0, "current": 1,
                       "total_pages": 1, "start_index": 0, "end_index": 0},
        "results": [],
        "autocomplete": {}
    });
    env.fake.with_state(|state| {
        state.faults.push(aksync::demo::fake::Fault {
            path_contains: "/core/users/?".into(),
            skip: 0,
            times: None,
            status: 200,
            body: serde_json::to_vec(&empty).unwrap(),
            retry_after: None,
            location: None,
        })
    });
    let failed = env.aksync(&["sync"]);
    assert_eq!(failed.code, 1, "{}{}", failed.stdout, failed.stderr);
    assert!(failed.stdout.contains("failed"), "{}", failed.stdout);
    env.fake.with_state(|state| state.faults.clear());

    let everyone = env.fake.with_state(|state| state.directory.users.clone());
    remove_people(&env, 10);
    let held = env.aksync(&["sync"]);
    assert_eq!(held.code, 1, "{}{}", held.stdout, held.stderr);
    assert!(held.stdout.contains("QUARANTINED"), "{}", held.stdout);
    env.fake
        .with_state(|state| state.directory.users = everyone.clone());
    env.sync_ok();
    let ids: Vec<String> = env
        .store()
        .runs(Some("corp"))
        .unwrap()
        .into_iter()
        .rev()
        .filter(|run| run.status != RunStatus::Failed)
        .map(|run| run.run_id)
        .collect();
    let (complete, glitch, next) = (&ids[0], &ids[1], &ids[2]);
    let next_record = env.store().run(next).unwrap();
    assert_eq!(next_record.previous_run.as_deref(), Some(complete.as_str()));
    let diff = env.aksync(&["diff", complete, next, "--json"]).json();
    for key in ["joiners", "leavers", "movers"] {
        assert_eq!(diff[key], serde_json::json!([]), "{key}: {diff}");
    }

    let refused = env.aksync(&["approve", glitch]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("is not the newest run") && refused.stderr.contains(next.as_str()),
        "{}",
        refused.stderr
    );
    let rejected = env.aksync(&["reject", glitch]);
    assert_eq!(rejected.code, 0, "{}{}", rejected.stdout, rejected.stderr);
    let record = env.store().run(glitch).unwrap();
    assert_eq!(record.status, RunStatus::Quarantined);
    assert_eq!(
        record.quarantine.unwrap().decision.unwrap().decision,
        aksync::store::Decision::Rejected
    );
    let report = env.aksync(&["report", "--since", "2000-01-01"]);
    assert!(report.stdout.contains("rejected by"), "{}", report.stdout);
    env.verify_ok("quarantine");

    // A record edited to say a run was approved, without the decision's ledger entry.
    {
        use redb::ReadableTable;
        let db = redb::Database::open(env.database()).unwrap();
        let runs: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("runs");
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(runs).unwrap();
            let bytes = table.get(next.as_str()).unwrap().unwrap().value().to_vec();
            let mut record: Value = serde_json::from_slice(&bytes).unwrap();
            record["quarantine"] = serde_json::json!({
                "reasons": ["forged"],
                "decision": {"decision": "approved", "at": "2026-01-01T00:00:00Z", "by": "x@y"}
            });
            let bytes = serde_json::to_vec(&record).unwrap();
            table.insert(next.as_str(), bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    };
    let forged = env.aksync(&["verify"]);
    assert_ne!(forged.code, 0, "{}", forged.stdout);
    let said = format!("{}{}", forged.stdout, forged.stderr);
    assert!(said.contains(next.as_str()), "{said}");
}
