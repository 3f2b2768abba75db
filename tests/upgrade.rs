//! Upgrading a database of the previous schema (a fixture the aksync before the ledger
//! wrote, see `tests/fixtures/README.md`): while an older process holds it, the new binary
//! refuses to migrate, and its read-only commands read it as it is; once the file is free,
//! the first run migrates it, backfills the ledger of the older runs (saying so), and
//! `aksync verify` passes.

mod common;

use std::path::Path;

use aksync::demo::fake::{Directory, FakeAuthentik, READER_TOKEN};
use common::{copy_dir, run_binary, write_secret, Run};
use redb::ReadableDatabase;

struct Upgrade {
    dir: tempfile::TempDir,
    fake: FakeAuthentik,
}

impl Upgrade {
    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("config.toml")
    }

    fn database(&self) -> std::path::PathBuf {
        self.dir.path().join("state/aksync.redb")
    }

    fn aksync(&self, args: &[&str]) -> Run {
        run_binary(Some(&self.config()), args)
    }
}

/// The fixture in a new state directory, with the fake serving the directory as the
/// fixture's last run saw it.
async fn upgrade() -> Upgrade {
    let mut directory = Directory::generate(aksync::demo::DEMO_SEED, 12);
    aksync::demo::change_directory(&mut directory);
    let fake = FakeAuthentik::start(directory).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema3"),
        &state,
    );
    write_secret(&dir.path().join("token"), READER_TOKEN);
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "state_dir = {:?}\n\n[sources.demo]\nbase_url = {:?}\ntoken_file = \"token\"\n",
            state.display().to_string(),
            fake.base_url()
        ),
    )
    .unwrap();
    Upgrade { dir, fake }
}

fn schema_version(database: &Path) -> String {
    let db = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .open_read_only(database)
        .unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn
        .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap();
    let version = meta.get("schema_version").unwrap().unwrap();
    String::from_utf8(version.value().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_database_is_migrated_only_when_no_other_process_holds_it() {
    let env = upgrade().await;
    assert_eq!(schema_version(&env.database()), "3");
    // The service of the older version, still running: it holds the file as every aksync of
    // schema 3 does, in redb's multi-process mode.
    let older_daemon = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .create(env.database())
        .unwrap();
    let refused = env.aksync(&["sync"]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("open in another process")
            && refused.stderr.contains("restart the service"),
        "{}",
        refused.stderr
    );
    assert_eq!(schema_version(&env.database()), "3", "not migrated");
    // Read-only commands read it as it is, without migrating.
    let runs = env.aksync(&["runs", "--json"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    assert_eq!(runs.json().as_array().unwrap().len(), 2);
    let report = env.aksync(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    assert_eq!(
        report.json()["period"]["evidence"]["replayed_runs"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the run without an entry is replayed for the report, and it says so"
    );
    assert_eq!(env.aksync(&["show", "accounts", "--json"]).code, 0);
    assert_eq!(
        schema_version(&env.database()),
        "3",
        "reading never migrates"
    );
    let runs_before: serde_json::Value = runs.json();
    drop(older_daemon);

    // The restarted service (here a sync) migrates, backfills, and carries on.
    let synced = env.aksync(&["sync"]);
    assert_eq!(synced.code, 0, "{}{}", synced.stdout, synced.stderr);
    assert!(
        synced.stdout.contains("0 joiners, 0 movers, 0 leavers"),
        "{}",
        synced.stdout
    );
    assert_eq!(schema_version(&env.database()), "4");
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
    assert!(verified.stdout.contains("3 runs"), "{}", verified.stdout);
    let first = runs_before[1]["run_id"].as_str().unwrap().to_string();
    let period = env.aksync(&["report", "latest", "--from", &first, "--format", "json"]);
    assert_eq!(period.code, 0, "{}", period.stderr);
    let period = period.json();
    assert_eq!(
        period["period"]["evidence"]["backfilled_runs"][0],
        runs_before[0]["run_id"]
    );
    assert_eq!(period["joiners"].as_array().unwrap().len(), 1);
    assert_eq!(period["leavers"][0]["username"], "julia.hoffmann");
    let history = env.aksync(&["history", "julia.hoffmann", "--json"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    let events: Vec<String> = history.json()[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["baseline", "left"]);
    drop(env.fake);
}
