//! `aksync connect` and `aksync disconnect` against the fake Authentik: nothing is written
//! unless the health check passes; a connection writes an owner-only `conf.d/NAME.toml` that
//! the next sync uses; a disconnection removes it and keeps the history; both are ledger
//! entries that `verify` checks and that `runs` and the period report list.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aksync::demo::fake::{REVOKED_TOKEN, SUPERUSER_TOKEN};
use common::{copy_dir, run_binary_with_input, write_secret, Run, TestEnv};
use serde_json::Value;

fn drop_in(env: &TestEnv, name: &str) -> PathBuf {
    env.dir.path().join("conf.d").join(format!("{name}.toml"))
}

/// `aksync connect NAME --base-url <the fake> ARGS…` with `input` on standard input.
fn connect(env: &TestEnv, name: &str, args: &[&str], input: Option<&str>) -> Run {
    let base_url = env.fake.base_url();
    let mut all = vec!["connect", name, "--base-url", &base_url];
    all.extend_from_slice(args);
    run_binary_with_input(Some(&env.config_path), &all, input)
}

/// The connections and disconnections that `runs --json --events` lists, newest first, as
/// (event, source).
fn listed_events(env: &TestEnv) -> Vec<(String, String)> {
    let listed = env.aksync(&["runs", "--json", "--events"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| {
            let event = item.get("event")?.as_str()?.to_string();
            Some((event, item["source"].as_str().unwrap().to_string()))
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn assert_verifies(env: &TestEnv, source: &str) {
    let verified = env.verify_ok(source);
    assert!(
        verified.stdout.contains(&format!("{source}: verified")),
        "{}",
        verified.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_writes_nothing() {
    let env = TestEnv::start(5).await;
    let refused = connect(&env, "hr", &["--token-stdin"], Some(REVOKED_TOKEN));
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("hr: Needs Attention")
            && refused.stderr.contains("nothing was written"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains(REVOKED_TOKEN),
        "{}",
        refused.stderr
    );
    assert!(!drop_in(&env, "hr").exists());
    // No temporary file left behind either, and no event.
    let conf_d = env.dir.path().join("conf.d");
    let left: Vec<_> = std::fs::read_dir(&conf_d)
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(listed_events(&env).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_sync_disconnect_reconnect_keeps_the_history_and_lists_every_event() {
    let env = TestEnv::start(5).await;
    let token_file = env.dir.path().join("hr.token");
    write_secret(&token_file, SUPERUSER_TOKEN);

    // Connected with a token file: the source's file names it and holds no token.
    let connected = connect(
        &env,
        "hr",
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--disable-group-sync",
            "--filter",
            "payload.is_active",
            "--group-filter",
            "payload.name != 'x'",
        ],
        None,
    );
    assert_eq!(
        connected.code, 0,
        "{}{}",
        connected.stdout, connected.stderr
    );
    assert!(
        connected
            .stdout
            .starts_with("hr: Healthy: Authentik 2025.12.4"),
        "{}",
        connected.stdout
    );
    let file = drop_in(&env, "hr");
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!(
            "token_file = {:?}",
            token_file.display().to_string()
        )) && text.contains("disable_group_sync = true")
            && text.contains("group_filter = \"payload.name != 'x'\"")
            && !text.contains(SUPERUSER_TOKEN),
        "{text}"
    );

    // The next sync uses it, and the ledger with the connection verifies.
    let synced = env.aksync(&["sync", "--source", "hr"]);
    assert_eq!(synced.code, 0, "{}{}", synced.stdout, synced.stderr);
    assert!(synced.stdout.contains("hr: run"), "{}", synced.stdout);
    let hr_run = env
        .store()
        .latest_complete("hr")
        .unwrap()
        .expect("hr synced");
    assert_eq!(hr_run.counts.groups, 0, "group sync disabled as connected");
    assert_verifies(&env, "hr");

    let disconnected = env.aksync(&["disconnect", "hr"]);
    assert_eq!(
        disconnected.code, 0,
        "{}{}",
        disconnected.stdout, disconnected.stderr
    );
    assert!(
        disconnected
            .stdout
            .contains("Directory > Tokens and App passwords")
            && disconnected.stdout.contains("next reload")
            && disconnected.stdout.contains("1 run(s)"),
        "{}",
        disconnected.stdout
    );
    assert!(!file.exists());
    assert!(
        env.aksync(&["sync", "--source", "hr"])
            .stderr
            .contains("unknown source `hr`"),
        "no longer configured"
    );
    // The history stays, and stays verified although the source is no longer configured.
    let runs = env.aksync(&["runs", "--json"]).json();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|run| run.get("run_id").is_some()),
        "--json alone lists runs only, as before: {runs}"
    );
    assert!(runs
        .as_array()
        .unwrap()
        .iter()
        .any(|run| run["run_id"] == hr_run.run_id.as_str()));
    assert_verifies(&env, "hr");

    // Connected again, with the token on standard input: it is in the file, nowhere else.
    let again = connect(&env, "hr", &["--token-stdin"], Some(SUPERUSER_TOKEN));
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(mode(&file), 0o600);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains(&format!("token = {SUPERUSER_TOKEN:?}")));
    assert!(!again.stdout.contains(SUPERUSER_TOKEN) && !again.stderr.contains(SUPERUSER_TOKEN));
    env.aksync(&["sync", "--source", "hr"]);
    let database = std::fs::read(env.database()).unwrap();
    assert!(
        !database
            .windows(SUPERUSER_TOKEN.len())
            .any(|window| window == SUPERUSER_TOKEN.as_bytes()),
        "the token is not in the database"
    );
    assert_verifies(&env, "hr");

    // `runs`: the events among the runs, by time.
    assert_eq!(
        listed_events(&env),
        [
            ("connected".to_string(), "hr".to_string()),
            ("disconnected".to_string(), "hr".to_string()),
            ("connected".to_string(), "hr".to_string()),
        ]
    );
    let listed = env.aksync(&["runs", "--json", "--events"]).json();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["source"] == "hr")
        .map(|item| item["event"].as_str().unwrap_or("run"))
        .collect();
    assert_eq!(
        kinds,
        ["run", "connected", "disconnected", "run", "connected"]
    );
    let table = env.aksync(&["runs"]);
    assert!(
        table.stdout.contains("disconnected")
            && table.stdout.contains("by ")
            && table
                .stdout
                .contains("group_filter \"payload.name != 'x'\""),
        "{}",
        table.stdout
    );

    // The period report lists them in every format.
    let report = |format: &str| {
        let run = env.aksync(&[
            "report",
            "--source",
            "hr",
            "--since",
            "2000-01-01",
            "--format",
            format,
        ]);
        assert_eq!(run.code, 0, "{format}: {}", run.stderr);
        run.stdout
    };
    let json: Value = serde_json::from_str(&report("json")).unwrap();
    let events: Vec<&str> = json["period"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|connection| connection["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["connected", "disconnected", "connected"]);
    assert_eq!(
        json["period"]["connections"][0]["disable_group_sync"], true,
        "the settings written"
    );
    assert!(report("md").contains("Connections and disconnections (3)"));
    let csv = report("csv");
    assert_eq!(
        csv.lines()
            .filter(|line| line.contains(",connected,"))
            .count(),
        2,
        "{csv}"
    );
    assert_eq!(
        csv.lines()
            .filter(|line| line.contains(",disconnected,"))
            .count(),
        1,
        "{csv}"
    );
    assert!(report("html").contains("disconnected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_connect_and_disconnect_refuse() {
    let env = TestEnv::start(5).await;
    env.write_config(SUPERUSER_TOKEN, "primary_directory = true");
    let corp = env.aksync(&["disconnect", "corp"]);
    assert_eq!(corp.code, 2, "{}", corp.stderr);
    assert!(
        corp.stderr.contains("source `corp` is defined in") && corp.stderr.contains("config.toml"),
        "{}",
        corp.stderr
    );
    let unknown = env.aksync(&["disconnect", "nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);

    let existing = connect(&env, "corp", &["--token-stdin"], Some(SUPERUSER_TOKEN));
    assert_eq!(existing.code, 2, "{}", existing.stderr);
    assert!(
        existing.stderr.contains("already exists"),
        "{}",
        existing.stderr
    );

    // Validated as loading validates: a second primary directory, a filter that does not
    // compile, a bad name. Nothing is written for any.
    for (name, args, what) in [
        ("hr", &["--primary"][..], "at most one source"),
        (
            "hr",
            &["--filter", "payload.type =="][..],
            "sources.hr.filter",
        ),
        (
            "hr",
            &["--group-filter", "payload.name.startsWith("][..],
            "sources.hr.group_filter",
        ),
        ("Bad", &[][..], "not allowed"),
    ] {
        let mut all = vec!["--token-stdin"];
        all.extend_from_slice(args);
        let refused = connect(&env, name, &all, Some(SUPERUSER_TOKEN));
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(what),
            "{args:?}: {}",
            refused.stderr
        );
        assert!(!drop_in(&env, name).exists());
    }

    // Exactly one of --token-file and --token-stdin.
    let neither = connect(&env, "hr", &[], None);
    assert_eq!(neither.code, 2, "{}", neither.stderr);
    let both = connect(
        &env,
        "hr",
        &["--token-stdin", "--token-file", "/dev/null"],
        Some(SUPERUSER_TOKEN),
    );
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(!drop_in(&env, "hr").exists());

    // A connected name is taken until it is disconnected.
    assert_eq!(
        connect(&env, "hr", &["--token-stdin"], Some(SUPERUSER_TOKEN)).code,
        0
    );
    let twice = connect(&env, "hr", &["--token-stdin"], Some(SUPERUSER_TOKEN));
    assert_eq!(twice.code, 2, "{}", twice.stderr);
    assert!(
        twice.stderr.contains("already exists") && twice.stderr.contains("hr.toml"),
        "{}",
        twice.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_schema_reads_and_takes_a_connection() {
    let env = TestEnv::start(5).await;
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema3"),
        &env.state_dir(),
    );
    // Read-only, it lists its runs and no events (it has no index of them).
    let listed = env.aksync(&["runs", "--json", "--events"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    // A connection migrates it, records itself, and everything verifies.
    let connected = connect(&env, "hr", &["--token-stdin"], Some(SUPERUSER_TOKEN));
    assert_eq!(
        connected.code, 0,
        "{}{}",
        connected.stdout, connected.stderr
    );
    assert_eq!(
        listed_events(&env),
        [("connected".to_string(), "hr".to_string())]
    );
    env.aksync(&["sync", "--source", "hr"]);
    assert_verifies(&env, "hr");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_connection_hidden_from_its_index() {
    let env = TestEnv::start(5).await;
    let connected = connect(&env, "hr", &["--token-stdin"], Some(SUPERUSER_TOKEN));
    assert_eq!(
        connected.code, 0,
        "{}{}",
        connected.stdout, connected.stderr
    );
    assert_verifies(&env, "hr");
    {
        let db = redb::Database::open(env.database()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut index = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new(
                    "ledger_connections",
                ))
                .unwrap();
            index.retain(|_, _| false).unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(listed_events(&env).is_empty(), "hidden from `runs`");
    let verified = env.aksync(&["verify", "--source", "hr"]);
    assert_eq!(verified.code, 1, "{}{}", verified.stdout, verified.stderr);
    assert!(
        verified.stdout.contains("hr: DOES NOT VERIFY")
            && verified.stdout.contains("index of connections"),
        "{}",
        verified.stdout
    );
}
