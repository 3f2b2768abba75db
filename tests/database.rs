//! The database as an admin meets it: held by another process, damaged, or not there yet.
//! Each case is one clear line, never a panic.

mod common;

use common::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_held_by_another_process_is_reported_clearly() {
    let env = TestEnv::start(3).await;
    env.sync_ok();
    // An exclusive holder, as an older tool or a copy of redb without multi-process mode.
    let holder = redb::Database::create(env.database()).unwrap();
    let run = env.aksync(&["runs"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("in use by another process"),
        "{}",
        run.stderr
    );
    drop(holder);
    assert_eq!(env.aksync(&["runs"]).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_work_while_another_aksync_has_the_database_open() {
    let env = TestEnv::start(3).await;
    env.sync_ok();
    let _daemon_like = env.store();
    let run = env.aksync(&["runs", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json().as_array().unwrap().len(), 1);
    env.sync_ok();
}

/// Opening the database and reading it never take the write lock: a query answers while
/// another process is inside a write transaction (a long commit, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_while_another_process_holds_a_write_transaction() {
    let env = TestEnv::start(3).await;
    env.sync_ok();
    let writer = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .create(env.database())
        .unwrap();
    let held = writer.begin_write().unwrap();
    for command in [&["runs", "--json"][..], &["show", "accounts", "--json"]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
            .arg("--config")
            .arg(&env.config_path)
            .args(command)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Generous: it must not wait for the writer at all, which holds on until the end.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{command:?} waited for another process's write transaction");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "{command:?}: {status}");
    }
    held.abort().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_one_line_and_no_data_is_overwritten() {
    let env = TestEnv::start(3).await;
    env.sync_ok();
    let path = env.database();
    let mut bytes = std::fs::read(&path).unwrap();
    for byte in bytes.iter_mut().skip(4096) {
        *byte ^= 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    for command in [&["runs"][..], &["show", "accounts"], &["sync"]] {
        let run = env.aksync(command);
        assert_eq!(run.code, 1, "{command:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{command:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("corrupt"),
            "{command:?}: {}",
            run.stderr
        );
    }
    let after = std::fs::read(&path).unwrap();
    assert_eq!(
        after, bytes,
        "a damaged database is left as it was for recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_before_any_sync_say_so() {
    let env = TestEnv::start(3).await;
    let run = env.aksync(&["runs"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("no runs recorded yet"),
        "{}",
        run.stdout
    );
    let run = env.aksync(&["show", "accounts"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("aksync sync"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_mid_fetch_leaves_the_history_intact() {
    let env = TestEnv::start(30).await;
    env.sync_ok();
    let before = env.aksync(&["runs", "--json"]).json();
    env.fake.with_state(|state| {
        state.latency = std::time::Duration::from_millis(300);
        state.directory.add_user("late.arrival", "internal");
    });
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "page_size = 5\nconcurrency = 1",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        .args(["--config", env.config_path.to_str().unwrap(), "sync"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the listing is under way, then kill it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env
        .fake
        .with_state(|state| !state.request_log.iter().any(|line| line.contains("page=2")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sync never reached page 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.aksync(&["runs", "--json"]).json(), before);
    env.fake
        .with_state(|state| state.latency = std::time::Duration::ZERO);
    env.sync_ok();
    let accounts = env.show_json("accounts", "latest");
    assert!(accounts
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["username"] == "late.arrival"));
}
