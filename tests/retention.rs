//! Retention end to end: `aksync prune` removes the runs `[retention]` no longer keeps and the
//! versions only they saw, and what remains reads and compares exactly as before.

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
    assert_eq!(run_ids(&env), ids[2..].to_vec());
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
    let pruned_run = env.aksync(&["diff", &ids[0], &ids[4]]);
    assert_eq!(pruned_run.code, 1);
    assert!(pruned_run.stderr.contains(&ids[0]), "{}", pruned_run.stderr);

    // The next sync still compares with the latest run, and applies the retention itself.
    env.fake.with_state(|state| {
        state.directory.add_user("after.prune", "internal");
    });
    let synced = env.sync_ok();
    assert!(synced.stdout.contains("1 joiners"), "{}", synced.stdout);
    let after = run_ids(&env);
    assert_eq!(after.len(), 3, "two kept and the anchor: {after:?}");
    assert_eq!(after[0], ids[3]);
}
