//! Retention end to end: `aksync prune` removes the snapshots `[retention]` no longer keeps
//! (the versions only older runs saw, and their files) but not the evidence: every run
//! stays listed, its events stay in reports and `history`, the chain still verifies, and what
//! remains reads and compares exactly as before.

mod common;

use common::TestEnv;
use serde_json::Value;

fn run_ids(env: &TestEnv) -> Vec<String> {
    let runs = env.aksync(&["runs", "--json"]).json();
    let mut ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["run_id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    ids
}

fn keep(env: &TestEnv, retention: &str) {
    let mut config = std::fs::read_to_string(&env.config_path).unwrap();
    config.push_str(&format!("\n[retention]\n{retention}\n"));
    std::fs::write(&env.config_path, config).unwrap();
}

/// Five runs, each after a change.
async fn history() -> TestEnv {
    let env = TestEnv::start(12).await;
    env.sync_ok();
    for round in 0..4 {
        env.fake.with_state(|state| {
            state
                .directory
                .add_user(&format!("round.{round}"), "internal");
            let victim = *state.directory.users.keys().nth(3 + round).unwrap();
            state.directory.users.get_mut(&victim).unwrap().attributes["title"] =
                format!("Title {round}").into();
        });
        env.sync_ok();
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_the_later_runs_readable_and_their_diffs_unchanged() {
    let env = history().await;
    let ids = run_ids(&env);
    assert_eq!(ids.len(), 5);
    let early_diff = env.aksync(&["diff", &ids[0], &ids[1], "--json"]).json();
    let early_report = env.aksync(&["report", "latest", "--from", &ids[0], "--format", "json"]);
    assert_eq!(early_report.code, 0, "{}", early_report.stderr);
    let later_diffs: Vec<Value> = [(2, 3), (3, 4)]
        .iter()
        .map(|(from, to)| {
            env.aksync(&["diff", &ids[*from], &ids[*to], "--json"])
                .json()
        })
        .collect();
    let accounts: Vec<Value> = ids[2..]
        .iter()
        .map(|id| env.show_json("accounts", id))
        .collect();
    let envelope = |id: &str| {
        std::fs::read(
            env.state_dir()
                .join("envelopes/corp")
                .join(format!("{id}.jsonl")),
        )
        .unwrap()
    };
    let envelopes: Vec<Vec<u8>> = ids[3..].iter().map(|id| envelope(id)).collect();
    let versions_before = env.store().version_count("corp").unwrap();

    // Without a limit, prune is refused as a usage error.
    let refused = env.aksync(&["prune"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);

    // Keep the two newest runs; the one the older of them was compared with stays as anchor.
    keep(&env, "keep_runs = 2");
    let dry = env.aksync(&["prune", "--dry-run", "--json"]).json();
    assert_eq!(dry["sources"][0]["runs"], 2);
    assert_eq!(dry["sources"][0]["keeps_from"], ids[2].as_str());
    assert_eq!(run_ids(&env), ids, "a dry run removes nothing");

    let pruned = env.aksync(&["prune", "--json"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let pruned = pruned.json();
    assert_eq!(pruned["sources"][0]["runs"], 2);
    assert_eq!(
        pruned["sources"][0]["files"],
        2 * 6,
        "an envelope, four reports and their manifest each"
    );
    assert!(pruned["sources"][0]["versions"].as_u64().unwrap() > 0);
    // Every run stays: retention removes snapshots, not evidence.
    assert_eq!(run_ids(&env), ids);
    assert!(env.store().version_count("corp").unwrap() < versions_before);
    assert!(!env
        .state_dir()
        .join("envelopes/corp")
        .join(format!("{}.jsonl", ids[0]))
        .exists());

    // What remains reads, compares and rebuilds exactly as before.
    for (index, (from, to)) in [(2, 3), (3, 4)].iter().enumerate() {
        assert_eq!(
            env.aksync(&["diff", &ids[*from], &ids[*to], "--json"])
                .json(),
            later_diffs[index]
        );
    }
    for (index, id) in ids[2..].iter().enumerate() {
        assert_eq!(env.show_json("accounts", id), accounts[index], "{id}");
    }
    for (index, id) in ids[3..].iter().enumerate() {
        std::fs::remove_file(
            env.state_dir()
                .join("envelopes/corp")
                .join(format!("{id}.jsonl")),
        )
        .unwrap();
        let rebuilt = env.aksync(&["envelopes", id, "--rebuild"]);
        assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
        assert_eq!(envelope(id), envelopes[index], "{id}");
    }
    // A replay that needs a pruned snapshot says so; what the ledger holds needs none.
    let pruned_run = env.aksync(&["diff", &ids[0], &ids[4]]);
    assert_eq!(pruned_run.code, 1);
    assert!(
        pruned_run.stderr.contains(&ids[0]) && pruned_run.stderr.contains("[retention]"),
        "{}",
        pruned_run.stderr
    );
    let shown = env.aksync(&["show", "accounts", "--run", &ids[0]]);
    assert_eq!(shown.code, 1);
    assert!(shown.stderr.contains("[retention]"), "{}", shown.stderr);
    assert_eq!(
        env.aksync(&["diff", &ids[0], &ids[1], "--json"]).json(),
        early_diff,
        "a consecutive diff reads the ledger"
    );
    // The period over every run still lists every event, and its runs' figures stand.
    let report = env.aksync(&["report", "latest", "--from", &ids[0], "--format", "json"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let (before, after): (Value, Value) = (
        serde_json::from_str(&early_report.stdout).unwrap(),
        serde_json::from_str(&report.stdout).unwrap(),
    );
    for key in ["joiners", "movers", "leavers", "roll_forward", "runs"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(after["joiners"].as_array().unwrap().len(), 4);
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
    assert!(
        verified.stdout.contains("retention removed"),
        "{}",
        verified.stdout
    );

    // The next sync still compares with the latest run, and applies the retention itself.
    env.fake.with_state(|state| {
        state.directory.add_user("after.prune", "internal");
    });
    let synced = env.sync_ok();
    assert!(synced.stdout.contains("1 joiners"), "{}", synced.stdout);
    let after = run_ids(&env);
    assert_eq!(after.len(), 6, "{after:?}");
    let store = env.store();
    assert_eq!(
        store.pruned_before("corp").unwrap().as_deref(),
        Some(ids[3].as_str())
    );
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}
