//! `aksync daemon` as systemd runs it: the real binary against the fake Authentik, on
//! schedules of a second or two. Waits have generous deadlines; the assertions are on what
//! happened: runs in the store, requests the fake saw, lines the daemon logged, messages
//! systemd would have received, answers of the endpoint.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aksync::daemon::process::ProcessStats;
use aksync::demo::fake::{Fault, READER_TOKEN};
use aksync::store::{DeliveryStatus, RunRecord, RunStatus};
use common::browser::{chromium_or_skip, laid_out_width};
use common::{receiver, TestEnv};
use serde_json::Value;

const EVERY_SECOND: &str = "*/1 * * * * *";
const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";
const EVERY_FIVE_SECONDS: &str = "*/5 * * * * *";
/// A schedule that does not fire while a test runs.
const YEARLY: &str = "0 0 1 1 *";
/// The upper bound of every wait: far above what each step needs.
const PATIENCE: Duration = Duration::from_secs(90);
/// What systemd allows for a stop before it kills (TimeoutStopSec is longer; the issue asks
/// for this).
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A running `aksync daemon`, its stderr captured to a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(env: &TestEnv) -> Daemon {
        Daemon::start_with(env, &[])
    }

    fn start_with(env: &TestEnv, vars: &[(&str, &str)]) -> Daemon {
        let log = env.dir.path().join("daemon.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_aksync"));
        command
            .arg("--config")
            .arg(&env.config_path)
            .arg("daemon")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for name in [
            "AKSYNC_CONFIG",
            "AKSYNC_LOG",
            "STATE_DIRECTORY",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
        ] {
            command.env_remove(name);
        }
        command.envs(vars.iter().copied());
        Daemon {
            child: command.spawn().expect("the daemon starts"),
            log,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the pid of our own child; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Polls `check` until it gives a value; fails with the daemon's log when the daemon
    /// exits first or the deadline passes.
    async fn wait_for<T>(&mut self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; daemon log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit.
    async fn stop_within(self, limit: Duration) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        self.exit_within(limit).await
    }

    /// Waits up to `limit` for the exit.
    async fn exit_within(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> String {
        let (status, log) = self.stop_within(PATIENCE).await;
        assert_eq!(status.code(), Some(0), "{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a configuration with the named sources on the fake, each with its keys, and
/// `tail` (top-level tables) after them.
fn write_config(env: &TestEnv, sources: &[(&str, &str)], tail: &str) {
    let mut text = format!("state_dir = {:?}\n", env.state_dir().display().to_string());
    for (name, keys) in sources {
        text.push_str(&format!(
            "\n[sources.{name}]\nbase_url = {:?}\ntoken_file = \"token\"\n{keys}\n",
            env.fake.base_url()
        ));
    }
    text.push_str(tail);
    std::fs::write(&env.config_path, text).unwrap();
}

fn schedule(expression: &str, run_on_start: bool) -> String {
    format!("schedule = {expression:?}\nrun_on_start = {run_on_start}\n")
}

/// The runs of a source, newest first.
fn runs(env: &TestEnv, source: &str) -> Vec<RunRecord> {
    if !env.database().exists() {
        return Vec::new();
    }
    env.store().runs(Some(source)).unwrap()
}

fn latest_complete(env: &TestEnv) -> RunRecord {
    env.store()
        .latest_complete("corp")
        .unwrap()
        .expect("a complete run")
}

fn complete_runs(env: &TestEnv, source: &str) -> usize {
    runs(env, source)
        .iter()
        .filter(|run| run.status == RunStatus::Complete)
        .count()
}

/// `Some(())` once `condition` holds, for [`Daemon::wait_for`].
fn when(condition: bool) -> Option<()> {
    condition.then_some(())
}

/// A source table whose every run fails, for the `tail` of [`write_config`]: nothing listens
/// on port 1. It runs once, at start.
fn unreachable_source(name: &str) -> String {
    format!(
        "\n[sources.{name}]\nbase_url = \"http://127.0.0.1:1\"\ntoken_file = \"token\"\n{}",
        schedule(YEARLY, true)
    )
}

/// Waits until the daemon's run has read the first page of a listing (of several pages).
async fn wait_for_a_run_under_way(daemon: &mut Daemon, env: &TestEnv) {
    daemon
        .wait_for("the listing to reach page 2", || {
            env.fake.with_state(|state| {
                when(state.request_log.iter().any(|line| line.contains("page=2")))
            })
        })
        .await;
}

/// Every request for users, `/me/` included, answers `status` with `body` from now on.
fn users_fail(status: u16, body: &str) -> Fault {
    Fault {
        path_contains: "/core/users/".into(),
        skip: 0,
        times: None,
        status,
        body: body.into(),
        retry_after: None,
        location: None,
    }
}

fn assert_plain_and_secret_free(log: &str) {
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in:\n{log}");
    assert!(!log.contains(READER_TOKEN), "the token is in:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seconds_schedule_makes_several_complete_runs() {
    let env = TestEnv::start(12).await;
    write_config(&env, &[("corp", &schedule(EVERY_SECOND, false))], "");
    let check = env.aksync(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check.stdout.contains("next scheduled run ")
            && check.stdout.contains("(*/1 * * * * * (UTC))"),
        "{}",
        check.stdout
    );
    let check = env.aksync(&["check", "--json"]).json();
    assert!(check[0]["next_run"].is_string(), "{check}");

    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("three complete runs", || {
            when(complete_runs(&env, "corp") >= 3)
        })
        .await;
    let log = daemon.stop().await;
    let runs = runs(&env, "corp");
    // Every run is complete; the stop may catch the newest one under way, which is then
    // recorded as cancelled by the shutdown (on a loaded machine it often does).
    let (newest, earlier) = runs.split_first().unwrap();
    assert!(
        earlier.iter().all(|run| run.status == RunStatus::Complete)
            && (newest.status == RunStatus::Complete || newest.cancelled_by_shutdown()),
        "{runs:#?}"
    );
    // Each run that changed something (here the first) writes its reports (reports_per_run
    // = "changes"), and every run logs its start and its end with counts.
    assert!(runs.last().unwrap().changed_anything());
    for run in runs.iter().filter(|run| run.status == RunStatus::Complete) {
        let report = env
            .state_dir()
            .join(format!("reports/corp/{}.html", run.run_id));
        assert_eq!(
            report.is_file(),
            run.changed_anything(),
            "{}",
            report.display()
        );
    }
    assert!(log.contains("aksync daemon started"), "{log}");
    assert!(log.contains("run started source=corp"), "{log}");
    let finished = log
        .lines()
        .find(|line| line.contains("run finished"))
        .unwrap_or_else(|| panic!("no end of a run in:\n{log}"));
    for field in [
        "source=corp",
        "status=complete",
        "duration_secs=",
        "accounts=",
        "memberships=",
        "joiners=",
        "movers=",
        "leavers=",
    ] {
        assert!(finished.contains(field), "{field} missing: {finished}");
    }
    assert!(log.contains(&format!("run={}", runs[0].run_id)), "{log}");
    assert_plain_and_secret_free(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_piped_to_a_file_are_plain_text_without_the_token() {
    let env = TestEnv::start(4).await;
    // Every request fails, so that warnings and errors are logged.
    env.fake.with_state(|state| {
        state
            .faults
            .push(users_fail(502, "<html>bad gateway</html>"))
    });
    write_config(&env, &[("corp", &schedule(YEARLY, true))], "");
    let sync = env.aksync(&["sync"]);
    assert_eq!(sync.code, 1, "{}{}", sync.stdout, sync.stderr);
    assert!(sync.stderr.contains("WARN"), "{}", sync.stderr);
    assert_plain_and_secret_free(&sync.stderr);

    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("a failed run", || when(runs(&env, "corp").len() >= 2))
        .await;
    let log = daemon.stop().await;
    assert!(
        log.contains("WARN") && log.contains("status=failed"),
        "{log}"
    );
    assert_plain_and_secret_free(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_never_overlap_and_a_manual_sync_waits_for_the_daemons_run() {
    let env = TestEnv::start(30).await;
    // A run takes a couple of seconds; the schedule fires every second.
    env.fake
        .with_state(|state| state.latency = Duration::from_millis(150));
    let keys = format!(
        "{}page_size = 5\nconcurrency = 1\n",
        schedule(EVERY_SECOND, true)
    );
    write_config(&env, &[("corp", &keys)], "");
    let mut daemon = Daemon::start(&env);
    let daemon_pid = daemon.child.id();
    daemon
        .wait_for("two complete runs", || {
            when(complete_runs(&env, "corp") >= 2)
        })
        .await;
    // Catch the daemon at the start of a run: its first request is to /me/.
    daemon
        .wait_for("the start of a daemon run", || {
            env.fake.with_state(|state| {
                when(
                    state.in_flight > 0
                        && state
                            .request_log
                            .last()
                            .is_some_and(|line| line.contains("/core/users/me/")),
                )
            })
        })
        .await;
    let manual = tokio::task::block_in_place(|| env.aksync(&["sync"]));
    assert_eq!(manual.code, 0, "{}{}", manual.stdout, manual.stderr);
    assert!(
        manual.stderr.contains(&format!(
            "waiting for the running sync of source `corp` (pid {daemon_pid})"
        )),
        "{}",
        manual.stderr
    );
    let after_manual = complete_runs(&env, "corp");
    daemon
        .wait_for("a scheduled run after the manual one", || {
            when(complete_runs(&env, "corp") > after_manual)
        })
        .await;
    let log = daemon.stop().await;

    let mut runs = runs(&env, "corp");
    // Every run is complete; the stop may catch the newest one under way, which is then
    // recorded as cancelled by the shutdown (on a loaded machine it often does).
    let (newest, earlier) = runs.split_first().unwrap();
    assert!(
        earlier.iter().all(|run| run.status == RunStatus::Complete)
            && (newest.status == RunStatus::Complete || newest.cancelled_by_shutdown()),
        "{runs:#?}"
    );
    runs.sort_by_key(|run| run.started_at);
    for pair in runs.windows(2) {
        assert!(
            pair[1].started_at >= pair[0].finished_at,
            "run {} started before run {} finished",
            pair[1].run_id,
            pair[0].run_id
        );
    }
    let max_in_flight = env.fake.with_state(|state| state.max_in_flight);
    assert_eq!(max_in_flight, 1, "two runs talked to the server at once");
    assert!(
        log.contains("run skipped: the previous run of this source is still going"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_a_slow_sync_and_records_it_failed() {
    let env = TestEnv::start(30).await;
    env.sync_ok();
    let before = runs(&env, "corp");
    env.fake.with_state(|state| {
        state.latency = Duration::from_millis(300);
        state.directory.add_user("late.arrival", "internal");
    });
    let keys = format!("{}page_size = 5\nconcurrency = 1\n", schedule(YEARLY, true));
    write_config(&env, &[("corp", &keys)], "");
    let mut daemon = Daemon::start(&env);
    wait_for_a_run_under_way(&mut daemon, &env).await;
    let (status, log) = daemon.stop_within(STOP_LIMIT).await;
    assert_eq!(status.code(), Some(0), "{log}");

    let after = runs(&env, "corp");
    assert_eq!(after.len(), before.len() + 1, "{after:#?}");
    let interrupted = &after[0];
    assert_eq!(interrupted.status, RunStatus::Failed);
    assert_eq!(interrupted.error.as_deref(), Some("cancelled by shutdown"));
    assert_eq!(after[1..], before[..], "earlier runs are untouched");
    // Nothing of the interrupted fetch was stored or written.
    let accounts = env.show_json("accounts", "latest");
    assert!(accounts
        .as_array()
        .unwrap()
        .iter()
        .all(|account| account["username"] != "late.arrival"));
    let outbox = env
        .state_dir()
        .join(format!("envelopes/corp/{}.jsonl", interrupted.run_id));
    assert!(!outbox.exists());
    assert!(log.contains("stopping") && log.contains("stopped"), "{log}");
}

/// The envelope files of a source, by name.
fn envelope_files(env: &TestEnv, source: &str) -> BTreeSet<String> {
    std::fs::read_dir(env.state_dir().join("envelopes").join(source))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_commit_aborts_it_and_records_the_run_failed() {
    let env = TestEnv::start(30).await;
    env.sync_ok();
    let corp = schedule(YEARLY, false);
    write_config(&env, &[("corp", &corp)], "");
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("the start", || {
            when(daemon_log_contains(&env, "aksync daemon started"))
        })
        .await;
    // Another process holds the database's write transaction, so a run's commit waits for
    // it: a commit as slow as this test wants.
    let (held, holding) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let store = env.store();
    let corp_run = runs(&env, "corp")[0].run_id.clone();
    let holder = std::thread::spawn(move || {
        store
            .update_run(&corp_run, |_| {
                held.send(()).unwrap();
                released.recv().ok();
                Ok(())
            })
            .unwrap();
    });
    holding.recv().unwrap();
    // A source added by reload runs at once.
    write_config(
        &env,
        &[("corp", &corp), ("hr", &schedule(YEARLY, true))],
        "",
    );
    daemon.signal(libc::SIGHUP);
    // The envelope file is put in place just before the commit begins.
    daemon
        .wait_for("the run to reach its commit", || {
            when(!envelope_files(&env, "hr").is_empty())
        })
        .await;
    daemon.signal(libc::SIGTERM);
    // The commit gives up; recording the failed run then waits for the database too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.send(()).unwrap();
    holder.join().unwrap();
    let (status, log) = daemon.exit_within(STOP_LIMIT).await;
    assert_eq!(status.code(), Some(0), "{log}");

    let hr = runs(&env, "hr");
    assert_eq!(hr.len(), 1, "{hr:#?}");
    assert_eq!(hr[0].status, RunStatus::Failed, "{log}");
    assert_eq!(hr[0].error.as_deref(), Some("cancelled by shutdown"));
    assert!(hr[0].cancelled_by_shutdown());
    // Nothing of the aborted commit is stored, and its envelope file is gone.
    assert_eq!(env.store().latest_complete("hr").unwrap(), None);
    assert_eq!(envelope_files(&env, "hr"), BTreeSet::new());
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_its_commit_gets_its_reports_at_the_next_start() {
    let env = TestEnv::start(10).await;
    // A Chromium that never answers: the run commits, then waits on its PDF report, and
    // the process is killed there, before any report or its ledger entry is written.
    let (chromium, chromium_pid) = common::hanging_chromium(env.dir.path());
    let reports = |formats: &str| format!("[output]\nreports = [{formats}]\n");
    write_config(
        &env,
        &[("corp", &schedule(YEARLY, true))],
        &reports("\"pdf\", \"json\", \"md\""),
    );
    let mut daemon = Daemon::start_with(&env, &[("AKSYNC_CHROMIUM", chromium.to_str().unwrap())]);
    let pid = daemon
        .wait_for("the PDF report to start", || {
            std::fs::read_to_string(&chromium_pid)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        })
        .await;
    let run = latest_complete(&env);
    daemon.signal(libc::SIGKILL);
    let _ = daemon.exit_within(STOP_LIMIT).await;
    // SAFETY: kill(2) of the stand-in Chromium this test started, by its pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let reports_dir = env.state_dir().join("reports/corp");
    let manifest = reports_dir.join(format!("{}.manifest.json", run.run_id));
    assert!(!manifest.exists());

    // The next start writes them (without the PDF, which the operator gave up), with their
    // ledger entry, before any run.
    write_config(
        &env,
        &[("corp", &schedule(YEARLY, false))],
        &reports("\"json\", \"md\""),
    );
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("the reports of the killed run", || when(manifest.exists()))
        .await;
    let log = daemon.stop().await;
    assert!(
        log.contains("writing the reports of a complete run that has none"),
        "{log}"
    );
    for extension in ["json", "md"] {
        assert!(reports_dir
            .join(format!("{}.{extension}", run.run_id))
            .exists());
    }
    assert_eq!(runs(&env, "corp").len(), 1, "no run was needed");
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);

    // Repaired once: the next start finds the ledger entry and leaves the files alone. A
    // recorded file that changed is not rewritten: it is evidence for `aksync verify`.
    let json = reports_dir.join(format!("{}.json", run.run_id));
    std::fs::write(&json, b"{}").unwrap();
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("the start", || {
            when(daemon_log_contains(&env, "aksync daemon started"))
        })
        .await;
    let log = daemon.stop().await;
    assert!(!log.contains("writing the reports"), "{log}");
    assert!(
        log.contains("is not as the ledger recorded it") && log.contains("aksync verify"),
        "{log}"
    );
    assert_eq!(std::fs::read(&json).unwrap(), b"{}");
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 1, "{}{}", verified.stdout, verified.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_source_and_a_broken_configuration_keeps_the_old_one() {
    let env = TestEnv::start(6).await;
    let keys = schedule(EVERY_SECOND, true);
    write_config(&env, &[("corp", &keys)], "");
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("a run of corp", || when(complete_runs(&env, "corp") >= 1))
        .await;

    write_config(&env, &[("corp", &keys), ("hr", &keys)], "");
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for("two runs of the new source", || {
            when(complete_runs(&env, "hr") >= 2)
        })
        .await;

    let working = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        format!("{working}\n[sources.broken]\nbase_url = \"https://x.example\"\ntokn_file = \"token\"\n"),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for("the rejected reload", || {
            when(daemon_log_contains(&env, "reload rejected"))
        })
        .await;
    let (corp, hr) = (complete_runs(&env, "corp"), complete_runs(&env, "hr"));
    daemon
        .wait_for("both sources to go on", || {
            when(complete_runs(&env, "corp") >= corp + 2 && complete_runs(&env, "hr") >= hr + 2)
        })
        .await;

    // A changed schedule and a changed filter apply: corp waits for next year, hr leaves out
    // akadmin from its next run on.
    let filtered = format!("{keys}filter = \"payload.username != 'akadmin'\"\n");
    write_config(
        &env,
        &[("corp", &schedule(YEARLY, true)), ("hr", &filtered)],
        "",
    );
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for("the second reload", || {
            let log = std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap();
            when(log.matches("configuration reloaded").count() == 2)
        })
        .await;
    let (corp, hr) = (complete_runs(&env, "corp"), complete_runs(&env, "hr"));
    daemon
        .wait_for("two filtered runs of hr", || {
            when(complete_runs(&env, "hr") >= hr + 2)
        })
        .await;
    // At most a run that was under way at the reload.
    assert!(complete_runs(&env, "corp") <= corp + 1);
    let hr_runs = runs(&env, "hr");
    let (latest, first) = (&hr_runs[0], hr_runs.last().unwrap());
    assert_ne!(latest.settings_fingerprint, first.settings_fingerprint);
    assert_eq!(latest.counts.accounts + 1, first.counts.accounts);
    let log = daemon.stop().await;
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(
        errors.len(),
        1,
        "one error for the broken configuration:\n{log}"
    );
    assert!(
        errors[0].contains("reload rejected") && errors[0].contains("sources.broken.tokn_file"),
        "{}",
        errors[0]
    );
    assert!(log.contains("source added source=hr"), "{log}");
    assert!(runs(&env, "broken").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_share_the_run_limit_and_a_failing_one_stops_none() {
    let env = TestEnv::start(20).await;
    env.fake
        .with_state(|state| state.latency = Duration::from_millis(40));
    let keys = format!("{}page_size = 5\nconcurrency = 1\n", schedule(YEARLY, true));
    // Nothing listens on port 1: every run of `down` fails.
    let tail = format!(
        "\n[sources.down]\nbase_url = \"http://127.0.0.1:1\"\ntoken_file = \"token\"\n{}\n\
         [daemon]\nmax_concurrent_runs = 1\n",
        schedule(YEARLY, true)
    );
    write_config(&env, &[("corp", &keys), ("hr", &keys)], &tail);
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("a run of every source", || {
            when(
                complete_runs(&env, "corp") == 1
                    && complete_runs(&env, "hr") == 1
                    && !runs(&env, "down").is_empty(),
            )
        })
        .await;
    daemon.stop().await;
    let failed = &runs(&env, "down")[0];
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("Connection refused"),
        "{failed:?}"
    );
    // One run at a time: the two sources never talked to the server at once.
    assert_eq!(env.fake.with_state(|state| state.max_in_flight), 1);
    let (corp, hr) = (&runs(&env, "corp")[0], &runs(&env, "hr")[0]);
    assert!(
        corp.finished_at <= hr.started_at || hr.finished_at <= corp.started_at,
        "{corp:?} {hr:?}"
    );
}

fn daemon_log_contains(env: &TestEnv, needle: &str) -> bool {
    std::fs::read_to_string(env.dir.path().join("daemon.log"))
        .unwrap_or_default()
        .contains(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let env = TestEnv::start(5).await;
    write_config(&env, &[("corp", &schedule(YEARLY, true))], "");
    let socket_path = env.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = Daemon::start_with(
        &env,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut messages: Vec<String> = Vec::new();
    receive_until(&socket, &mut messages, "READY=1", &|m| {
        m.iter().any(|m| m.contains("READY=1"))
    })
    .await;
    let ready = messages.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=corp: "), "{ready}");
    // The store opened before READY.
    assert!(env.database().exists());
    receive_until(
        &socket,
        &mut messages,
        "a STATUS after the first run",
        &|m| m.iter().any(|m| m.contains("STATUS=corp: complete")),
    )
    .await;
    receive_until(&socket, &mut messages, "WATCHDOG=1", &|m| {
        m.iter().any(|m| m == "WATCHDOG=1\n")
    })
    .await;
    let status = messages
        .iter()
        .find(|m| m.contains("STATUS=corp: complete"))
        .unwrap();
    let changes = latest_complete(&env)
        .changes
        .expect("a complete run has changes");
    let count = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let expected = format!(
        "({}, {}, {}), next ",
        count(changes.joiners, "joiner"),
        count(changes.movers, "mover"),
        count(changes.leavers, "leaver")
    );
    assert!(status.contains(&expected), "{status} lacks {expected}");

    daemon.signal(libc::SIGHUP);
    let seen = messages.len();
    receive_until(&socket, &mut messages, "RELOADING=1 and READY=1", &|m| {
        m[seen..]
            .iter()
            .any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC="))
            && m[seen..].iter().any(|m| m.contains("READY=1"))
    })
    .await;
    daemon
        .wait_for("the reload", || {
            when(daemon_log_contains(&env, "configuration reloaded"))
        })
        .await;
    daemon.signal(libc::SIGTERM);
    receive_until(&socket, &mut messages, "STOPPING=1", &|m| {
        m.iter().any(|m| m.contains("STOPPING=1"))
    })
    .await;
    let log = daemon.stop().await;
    assert_plain_and_secret_free(&log);
}

/// Receives datagrams into `messages` until `done` holds for them.
async fn receive_until(
    socket: &tokio::net::UnixDatagram,
    messages: &mut Vec<String>,
    what: &str,
    done: &dyn Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    let mut buffer = vec![0u8; 4096];
    while !done(messages) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let received = tokio::time::timeout(remaining, socket.recv(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no {what} in {messages:?}"))
            .unwrap();
        messages.push(String::from_utf8_lossy(&buffer[..received]).into_owned());
    }
}

struct HttpResponse {
    status: u16,
    head: String,
    body: String,
}

/// A GET exactly as written: no client that would tidy `/../` away first.
fn get(port: u16, target: &str) -> Option<HttpResponse> {
    get_with(port, target, "Host: 127.0.0.1\r\n")
}

/// A GET of `target` with the header lines `head` (each ending in CRLF), in HTTP/1.1 unless
/// `head` starts with another version's request line end.
fn get_with(port: u16, target: &str, head: &str) -> Option<HttpResponse> {
    request(
        port,
        &format!("GET {target} HTTP/1.1\r\n{head}Connection: close\r\n\r\n"),
    )
}

/// Sends `raw` as it is and reads the answer to its end.
fn request(port: u16, raw: &str) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of a series line such as `aksync_accounts{source="corp"} 12`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_and_the_status_page_follow_the_runs() {
    let env = TestEnv::start(10).await;
    let port = free_port();
    // Healthy means a complete run within twice the interval: ten seconds here.
    write_config(
        &env,
        &[("corp", &schedule(EVERY_FIVE_SECONDS, true))],
        &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut daemon = Daemon::start(&env);
    let healthy = daemon
        .wait_for("a healthy /healthz", || {
            get(port, "/healthz").filter(|response| response.status == 200)
        })
        .await;
    let health: Value = serde_json::from_str(&healthy.body).unwrap();
    assert_eq!(health["healthy"], true);
    assert_eq!(health["sources"]["corp"]["last_run"]["status"], "complete");
    assert!(
        health["sources"]["corp"]["next_run"].is_string(),
        "{health}"
    );

    let metrics = get(port, "/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .head
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    let accounts = latest_complete(&env).counts.accounts;
    assert_eq!(
        metric(&metrics.body, "aksync_accounts{source=\"corp\"}"),
        Some(accounts as f64),
        "{}",
        metrics.body
    );
    assert_eq!(
        metric(&metrics.body, "aksync_source_healthy{source=\"corp\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics.body,
            "aksync_runs_total{source=\"corp\",status=\"failed\"}"
        ),
        Some(0.0)
    );
    assert!(metric(
        &metrics.body,
        "aksync_runs_total{source=\"corp\",status=\"complete\"}"
    )
    .is_some_and(|runs| runs >= 1.0));
    let last_success = metric(
        &metrics.body,
        "aksync_last_success_timestamp_seconds{source=\"corp\"}",
    )
    .expect("a last success");

    // The status page links every run's HTML report, and the link serves it.
    let page = get(port, "/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"));
    assert!(!page.body.contains("<script"), "{}", page.body);
    let run_id = latest_complete(&env).run_id;
    let link = format!("/reports/corp/{run_id}.html");
    let page = daemon
        .wait_for("the status page to list the run", || {
            get(port, "/").filter(|page| page.body.contains(&format!("href=\"{link}\"")))
        })
        .await;
    assert!(page.body.contains("healthy"), "{}", page.body);
    let report = get(port, &link).unwrap();
    assert_eq!(report.status, 200);
    assert!(report.body.starts_with("<!doctype html>"));
    assert!(report.body.contains(&run_id));

    // Nothing outside the reports, however it is spelled.
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        env.dir.path().join("token"),
        env.state_dir()
            .join("reports/corp/01AAAAAAAAAAAAAAAAAAAAAAAA.html"),
    )
    .unwrap();
    for target in [
        "/../config.toml",
        "/reports/../config.toml",
        "/reports/../../token",
        "/reports/corp/../../aksync.redb",
        "/reports/%2e%2e/%2e%2e/token",
        "/reports/corp/%2e%2e%2f%2e%2e%2ftoken",
        "/reports/corp/..%2F..%2Ftoken",
        "/reports/%2Fetc%2Fpasswd",
        "/reports//etc/passwd",
        "/reports/corp/01AAAAAAAAAAAAAAAAAAAAAAAA.html",
        "/config.toml",
        "/token",
    ] {
        let response = get(port, target).unwrap();
        assert!(
            response.status == 404 || response.status == 400,
            "{target}: {}",
            response.status
        );
        assert!(!response.body.contains(READER_TOKEN), "{target}");
        assert!(!response.body.contains("state_dir"), "{target}");
    }

    // A failed run makes the source unhealthy. Its error ends in a long unbroken word, which
    // the status page must wrap.
    let detail = format!("down for maintenance {}", "x".repeat(300));
    env.fake.with_state(|state| {
        state
            .faults
            .push(users_fail(503, &format!("{{\"detail\": \"{detail}\"}}")))
    });
    let health: Value = daemon
        .wait_for("an unhealthy /healthz after a failed run", || {
            get(port, "/healthz")
                .filter(|response| response.status == 503)
                .map(|response| serde_json::from_str::<Value>(&response.body).unwrap())
                .filter(|health| health["sources"]["corp"]["last_run"]["status"] == "failed")
        })
        .await;
    assert_eq!(health["healthy"], false);
    assert_eq!(health["sources"]["corp"]["last_run"]["status"], "failed");
    assert!(
        health["sources"]["corp"]["reason"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{health}"
    );
    let metrics = get(port, "/metrics").unwrap().body;
    assert_eq!(
        metric(&metrics, "aksync_source_healthy{source=\"corp\"}"),
        Some(0.0)
    );
    assert!(metric(
        &metrics,
        "aksync_runs_total{source=\"corp\",status=\"failed\"}"
    )
    .is_some_and(|runs| runs >= 1.0));
    assert_eq!(
        metric(
            &metrics,
            "aksync_last_success_timestamp_seconds{source=\"corp\"}"
        ),
        Some(last_success),
        "a failed run is no success"
    );
    // The page says when the unhealthy source last completed, counts nothing for the failed
    // run, and fits a 1280 px window.
    let page = get(port, "/").unwrap().body;
    assert!(page.contains("last complete run "), "{page}");
    let failed_row = page
        .lines()
        .find(|line| line.contains("<td>failed</td>"))
        .unwrap_or_else(|| panic!("no failed run on the page:\n{page}"));
    assert!(
        failed_row.contains("<td class=\"n\">—</td>")
            && !failed_row.contains("<td class=\"n\">0</td>"),
        "{failed_row}"
    );
    if let Some(chromium) = chromium_or_skip("the status page") {
        let work = tempfile::tempdir().unwrap();
        let (content, window) =
            tokio::task::block_in_place(|| laid_out_width(&chromium, work.path(), &page, 1280));
        assert!(window > 1200, "the window is not 1280 px wide: {window}");
        assert!(
            content <= window,
            "the status page overflows: {content} px of content in {window} px"
        );
    }

    // Back to healthy once the server answers again.
    env.fake.with_state(|state| state.faults.clear());
    daemon
        .wait_for("a healthy /healthz again", || {
            get(port, "/healthz").filter(|response| response.status == 200)
        })
        .await;
    let log = daemon.stop().await;
    assert_plain_and_secret_free(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_everything_once_and_in_order_without_a_sync() {
    let env = TestEnv::start(15).await;
    let receiver = receiver().await;
    let webhook = format!(
        "\n[output.webhook]\nurl = {:?}\nbatch_size = 7\n",
        receiver.url
    );
    write_config(
        &env,
        &[("corp", &schedule(EVERY_TWO_SECONDS, true))],
        &webhook,
    );
    let mut daemon = Daemon::start(&env);
    let pending = |env: &TestEnv| {
        runs(env, "corp")
            .iter()
            .filter(|run| {
                run.delivery
                    .as_ref()
                    .is_some_and(|delivery| delivery.status == DeliveryStatus::Pending)
            })
            .count()
    };
    daemon
        .wait_for("a first run waiting for delivery", || {
            when(pending(&env) >= 1)
        })
        .await;
    env.fake
        .with_state(|state| state.directory.add_user("second.run", "internal"));
    daemon
        .wait_for("a second scheduled run waiting for delivery", || {
            when(pending(&env) >= 2)
        })
        .await;
    assert!(
        receiver.refused.load(Ordering::SeqCst) > 0,
        "no delivery attempt"
    );

    // No more syncs from here on: only the delivery loop can catch up.
    write_config(&env, &[("corp", &schedule(YEARLY, false))], &webhook);
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for("the reload", || {
            when(daemon_log_contains(&env, "configuration reloaded"))
        })
        .await;
    let before_up = runs(&env, "corp");
    receiver.down.store(false, Ordering::SeqCst);
    daemon
        .wait_for("every run delivered", || when(pending(&env) == 0))
        .await;
    let log = daemon.stop().await;
    let delivered = runs(&env, "corp");
    assert_eq!(delivered.len(), before_up.len(), "no run after the reload");

    let accepted = receiver.accepted.lock().unwrap().clone();
    let received = receiver.batches();
    let mut expected = Vec::new();
    for run in delivered.iter().rev() {
        let Some(delivery) = &run.delivery else {
            continue;
        };
        assert_eq!(delivery.status, DeliveryStatus::Delivered);
        expected.extend((1..=delivery.batches_total).map(|batch| (run.run_id.clone(), batch)));
    }
    assert!(expected.len() >= 2, "{expected:?}");
    assert_eq!(received, expected, "every batch once, oldest run first");
    let keys: BTreeSet<&str> = accepted.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys.len(), accepted.len());
    assert!(log.contains("webhook delivery paused"), "{log}");
    assert!(log.contains("webhook delivery caught up"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_a_manual_sync_work_while_the_daemon_runs() {
    let env = TestEnv::start(12).await;
    env.fake
        .with_state(|state| state.latency = Duration::from_millis(20));
    write_config(&env, &[("corp", &schedule(EVERY_TWO_SECONDS, true))], "");
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("two complete runs", || {
            when(complete_runs(&env, "corp") >= 2)
        })
        .await;
    let accounts = env.show_json("accounts", "latest");
    let username = accounts[0]["username"].as_str().unwrap().to_string();
    for args in [
        &["runs"][..],
        &["runs", "--json"],
        &["show", "groups"],
        &["diff", "previous", "latest"],
        &["report", "latest"],
        &["history", &username],
    ] {
        let run = tokio::task::block_in_place(|| env.aksync(args));
        assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(!run.stdout.is_empty(), "{args:?}");
    }
    let before = complete_runs(&env, "corp");
    let manual = tokio::task::block_in_place(|| env.aksync(&["sync"]));
    assert_eq!(manual.code, 0, "{}{}", manual.stdout, manual.stderr);
    daemon
        .wait_for("a scheduled run after the manual sync", || {
            when(complete_runs(&env, "corp") >= before + 2)
        })
        .await;
    daemon.stop().await;
}

/// An `[http]` table listening on `port`, with `extra` keys.
fn http_table(port: u16, extra: &str) -> String {
    format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n")
}

/// What `/proc` says about the daemon.
fn process_stats(daemon: &Daemon) -> ProcessStats {
    ProcessStats::read(&PathBuf::from(format!("/proc/{}", daemon.child.id())))
}

/// Until the endpoint answers; `/metrics` always does with 200.
async fn wait_for_endpoint(daemon: &mut Daemon, port: u16) {
    daemon
        .wait_for("the endpoint", || {
            get(port, "/metrics").filter(|response| response.status == 200)
        })
        .await;
}

/// Connections the flood test opens and leaves hanging.
const FLOOD: usize = 300;
/// The most file descriptors the daemon may have open during the flood: its connection
/// limit and its own descriptors (the store, the listener, the runtime, a run's sockets and
/// files) with room to spare, and far fewer than the flood's.
const FLOOD_FDS: u64 = 150;
/// How soon after the flood every flooding connection must be closed.
const FLOOD_CLOSED_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_the_daemon_keeps_answering_and_syncing() {
    let env = TestEnv::start(6).await;
    let port = free_port();
    write_config(
        &env,
        &[("corp", &schedule(EVERY_SECOND, true))],
        &http_table(port, ""),
    );
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("a healthy /healthz", || {
            get(port, "/healthz").filter(|response| response.status == 200)
        })
        .await;
    let runs_before = complete_runs(&env, "corp");
    // Half of them send nothing, half stop in the middle of their headers.
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|n| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            if n % 2 == 1 {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    .unwrap();
            }
            stream
        })
        .collect();
    let flooded_at = Instant::now();

    // The daemon holds a bounded number of them and keeps answering.
    for _ in 0..3 {
        let fds = process_stats(&daemon).open_fds.expect("the daemon's /proc");
        assert!(
            fds < FLOOD_FDS,
            "{fds} open descriptors during a flood of {FLOOD}: the endpoint is not bounded"
        );
        // Healthy or not (a slow run on a busy machine may be late), but an answer.
        let health = tokio::task::block_in_place(|| get(port, "/healthz"))
            .expect("no answer during the flood");
        let body: Value = serde_json::from_str(&health.body)
            .unwrap_or_else(|error| panic!("not a health answer ({error}): {}", health.body));
        assert!(body["sources"]["corp"].is_object(), "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every flooding connection is closed within seconds: the oldest ones at once to make
    // room, the others when their request headers are overdue.
    tokio::task::block_in_place(|| {
        for (n, mut stream) in flood.into_iter().enumerate() {
            let left = FLOOD_CLOSED_WITHIN.saturating_sub(flooded_at.elapsed());
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut answer = Vec::new();
            match stream.read_to_end(&mut answer) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(error) => panic!(
                    "flooding connection {n} still open {:?} after the flood: {error}",
                    flooded_at.elapsed()
                ),
            }
        }
    });
    daemon
        .wait_for("runs during and after the flood", || {
            when(complete_runs(&env, "corp") >= runs_before + 3)
        })
        .await;
    let log = daemon.stop().await;
    // No run failed for want of a descriptor; a scheduled run that the test's own stop met
    // as it started is cancelled by that stop, not by the flood.
    assert!(
        runs(&env, "corp")
            .iter()
            .all(|run| run.status == RunStatus::Complete || run.cancelled_by_shutdown()),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_a_large_report_cost_the_daemon_little_memory() {
    const REPORT_MIB: usize = 128;
    const READERS: usize = 16;
    let env = TestEnv::start(4).await;
    let port = free_port();
    write_config(
        &env,
        &[("corp", &schedule(YEARLY, false))],
        &http_table(port, ""),
    );
    let mut daemon = Daemon::start(&env);
    wait_for_endpoint(&mut daemon, port).await;
    let reports = env.state_dir().join("reports/corp");
    std::fs::create_dir_all(&reports).unwrap();
    let line = "<p>a line of a large report, repeated to fill it</p>\n".repeat(1024);
    let mut file = std::fs::File::create(reports.join("01AAAAAAAAAAAAAAAAAAAAAAAA.html")).unwrap();
    while file.metadata().unwrap().len() < (REPORT_MIB << 20) as u64 {
        file.write_all(line.as_bytes()).unwrap();
    }
    let size = file.metadata().unwrap().len();
    drop(file);
    let target = "/reports/corp/01AAAAAAAAAAAAAAAAAAAAAAAA.html";
    let resident = |daemon: &Daemon| process_stats(daemon).resident_bytes.expect("VmRSS");
    let before = resident(&daemon);

    // Readers that ask and never read: each would hold the whole file if it were read
    // into memory.
    let readers: Vec<TcpStream> = (0..READERS)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(stream, "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            stream
        })
        .collect();
    // As far as the socket buffers let the daemon get.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = resident(&daemon);
    let growth_mib = during.saturating_sub(before) >> 20;
    assert!(
        growth_mib < 48,
        "{READERS} slow readers of a {REPORT_MIB} MiB report grew the daemon by {growth_mib} MiB"
    );

    // A reader that reads gets every byte, with the length announced.
    let (head, received) = tokio::task::block_in_place(|| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let received = std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        (head, received)
    });
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {size}\r\n")),
        "{head}"
    );
    assert_eq!(received, size);
    drop(readers);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_requests_that_name_the_endpoint_are_answered() {
    let env = TestEnv::start(4).await;
    let port = free_port();
    write_config(
        &env,
        &[("corp", &schedule(YEARLY, false))],
        &http_table(port, "allowed_hosts = [\"aksync.example.com\"]"),
    );
    let mut daemon = Daemon::start(&env);
    wait_for_endpoint(&mut daemon, port).await;
    for host in [
        "localhost".to_string(),
        format!("LocalHost:{port}"),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
        "aksync.example.com".to_string(),
    ] {
        let response = get_with(port, "/metrics", &format!("Host: {host}\r\n")).unwrap();
        assert_eq!(response.status, 200, "Host: {host}");
    }
    // What a page on another site sends after rebinding its name to 127.0.0.1.
    for host in [
        "evil.example.com".to_string(),
        format!("evil.example.com:{port}"),
        "127.0.0.1.evil.example.com".to_string(),
        "aksync.example.com.evil.example.com".to_string(),
    ] {
        for target in ["/", "/metrics", "/healthz", "/reports/corp/01A.html"] {
            let response = get_with(port, target, &format!("Host: {host}\r\n")).unwrap();
            assert_eq!(response.status, 421, "Host: {host} {target}");
            assert_eq!(
                response.body.trim_end().lines().count(),
                1,
                "{}",
                response.body
            );
            assert!(!response.body.contains("evil"), "{}", response.body);
        }
    }
    // A request that names no host at all.
    let anonymous = request(port, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(anonymous.status, 421);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_take_its_lock_is_recorded_as_failed_with_the_reason() {
    let env = TestEnv::start(4).await;
    // A lock file that cannot be opened: a local reason, as a full descriptor table is.
    std::fs::create_dir_all(env.state_dir().join("locks/source-corp.lock")).unwrap();
    write_config(&env, &[("corp", &schedule(YEARLY, true))], "");
    let mut daemon = Daemon::start(&env);
    let failed = daemon
        .wait_for("a recorded run", || runs(&env, "corp").into_iter().next())
        .await;
    let log = daemon.stop().await;
    assert_eq!(failed.status, RunStatus::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("cannot lock") && error.contains("source-corp.lock"),
        "{error}"
    );
    assert!(!log.contains("run not recorded"), "{log}");
    assert!(log.contains("status=failed"), "{log}");

    let sync = env.aksync(&["sync"]);
    assert_eq!(sync.code, 1, "{}{}", sync.stdout, sync.stderr);
    let runs = runs(&env, "corp");
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot lock"),
        "{runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_shows_in_the_metrics_the_status_and_one_error() {
    let env = TestEnv::start(4).await;
    let port = free_port();
    let tail = http_table(port, "");
    write_config(&env, &[("corp", &schedule(YEARLY, false))], &tail);
    let socket_path = env.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = Daemon::start_with(&env, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let mut messages = Vec::new();
    receive_until(&socket, &mut messages, "READY=1", &|m| {
        m.iter().any(|m| m.contains("READY=1"))
    })
    .await;
    wait_for_endpoint(&mut daemon, port).await;
    let reload_metrics = || {
        let text = get(port, "/metrics").unwrap().body;
        (
            metric(&text, "aksync_config_last_reload_successful"),
            metric(&text, "aksync_config_last_reload_success_timestamp_seconds"),
        )
    };
    let (successful, loaded_at) = reload_metrics();
    assert_eq!(successful, Some(1.0));
    let loaded_at = loaded_at.expect("a load time");
    assert!(loaded_at > 1.7e9, "{loaded_at}");

    let good = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(&env.config_path, format!("{good}\nfrobnicate = 1\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    receive_until(&socket, &mut messages, "the rejection in STATUS", &|m| {
        m.iter().any(|m| m.contains("STATUS=reload rejected: "))
    })
    .await;
    let status = messages
        .iter()
        .find(|m| m.contains("STATUS=reload rejected: "))
        .unwrap();
    assert!(
        status.contains("frobnicate")
            && status.contains(", running the previous configuration; corp: "),
        "{status}"
    );
    assert_eq!(reload_metrics(), (Some(0.0), Some(loaded_at)));

    // A good configuration clears it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&env.config_path, &good).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for("the reload", || {
            when(daemon_log_contains(&env, "configuration reloaded"))
        })
        .await;
    let (successful, reloaded_at) = daemon
        .wait_for("the reload in the metrics", || {
            Some(reload_metrics()).filter(|(successful, _)| *successful == Some(1.0))
        })
        .await;
    assert_eq!(successful, Some(1.0));
    assert!(reloaded_at.unwrap() > loaded_at);
    let seen = messages.len();
    receive_until(
        &socket,
        &mut messages,
        "a STATUS without the rejection",
        &|m| m[seen..].iter().any(|m| m.contains("STATUS=corp: ")),
    )
    .await;
    let log = daemon.stop().await;
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("reload rejected: ")
            && errors[0].contains("frobnicate")
            && errors[0].ends_with(", running the previous configuration"),
        "{}",
        errors[0]
    );
}

/// `promtool`, or `None` (with a note) where it is not installed and this is not CI.
fn promtool_or_skip(what: &str) -> Option<&'static str> {
    let installed = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool must be installed on CI (`apt-get install prometheus`)"
        );
        eprintln!("note: promtool not found, skipping `promtool {what}`");
        return None;
    }
    Some("promtool")
}

/// Runs `promtool` with `args`, `stdin` on its standard input; whether it passed, and all it
/// said.
fn promtool(promtool: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_of_a_running_daemon_pass_promtool() {
    let env = TestEnv::start(8).await;
    // One failed request to retry, and a receiver that is down.
    env.fake.with_state(|state| {
        state.faults.push(Fault {
            times: Some(1),
            ..users_fail(503, "{\"detail\": \"busy\"}")
        })
    });
    let receiver = receiver().await;
    let port = free_port();
    let tail = format!(
        "{}\n[output.webhook]\nurl = {:?}\n",
        http_table(port, ""),
        receiver.url
    );
    write_config(
        &env,
        &[
            ("corp", &schedule(EVERY_TWO_SECONDS, true)),
            ("idle", &schedule(YEARLY, false)),
        ],
        &tail,
    );
    let mut daemon = Daemon::start(&env);
    let text = daemon
        .wait_for(
            "a complete run and a failed webhook batch in /metrics",
            || {
                get(port, "/metrics")
                    .map(|response| response.body)
                    .filter(|text| {
                        metric(
                            text,
                            "aksync_runs_total{source=\"corp\",status=\"complete\"}",
                        )
                        .is_some_and(|runs| runs >= 1.0)
                            && metric(text, "aksync_webhook_batches_total{outcome=\"failed\"}")
                                .is_some_and(|batches| batches >= 1.0)
                    })
            },
        )
        .await;
    for (series, at_least) in [
        ("aksync_authentik_requests_total{source=\"corp\"}", 4.0),
        ("aksync_authentik_retries_total{source=\"corp\"}", 1.0),
        ("aksync_authentik_errors_total{source=\"corp\"}", 0.0),
        ("aksync_authentik_requests_total{source=\"idle\"}", 0.0),
        ("aksync_joiners_total{source=\"corp\"}", 0.0),
        ("aksync_leavers_total{source=\"corp\"}", 0.0),
        ("aksync_run_duration_seconds_count{source=\"corp\"}", 1.0),
        ("aksync_run_in_progress{source=\"idle\"}", 0.0),
        ("aksync_config_last_reload_successful", 1.0),
        ("aksync_build_info{version=\"0.1.0\"}", 1.0),
        ("process_cpu_seconds_total", 0.0),
        ("process_resident_memory_bytes", 1e6),
        ("process_open_fds", 3.0),
        ("process_max_fds", 64.0),
    ] {
        assert!(
            metric(&text, series).is_some_and(|value| value >= at_least),
            "{series} below {at_least} in\n{text}"
        );
    }
    // A source that never completed has a zero, so that staleness alerts see it.
    assert_eq!(
        metric(
            &text,
            "aksync_last_success_timestamp_seconds{source=\"idle\"}"
        ),
        Some(0.0)
    );
    let openmetrics = get_with(
        port,
        "/metrics",
        "Host: 127.0.0.1\r\nAccept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3\r\n",
    )
    .unwrap();
    assert!(
        openmetrics
            .head
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{}",
        openmetrics.head
    );
    assert!(openmetrics.body.ends_with("# EOF\n"));
    let classic = get_with(
        port,
        "/metrics",
        "Host: 127.0.0.1\r\nAccept: text/plain;version=0.0.4\r\n",
    )
    .unwrap();
    assert!(classic
        .head
        .contains("content-type: text/plain; version=0.0.4"));

    // A joiner, a mover and a leaver, and the receiver back: the counters move with them.
    env.fake.with_state(|state| {
        let people: Vec<String> = state
            .directory
            .users
            .values()
            .filter(|user| user.is_active && user.path == "users" && user.username != "akadmin")
            .map(|user| user.username.clone())
            .collect();
        let mover = state.directory.user_by_username_mut(&people[0]).unwrap();
        mover.attributes["department"] = "Moved".into();
        let leaver = state.directory.user_by_username_mut(&people[1]).unwrap();
        leaver.is_active = false;
        state.directory.add_user("counted.joiner", "internal");
    });
    receiver
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let counted = |text: &str| {
        [
            "aksync_joiners_total{source=\"corp\"}",
            "aksync_movers_total{source=\"corp\"}",
            "aksync_leavers_total{source=\"corp\"}",
            "aksync_webhook_batches_total{outcome=\"delivered\"}",
        ]
        .iter()
        .all(|series| metric(text, series).is_some_and(|value| value >= 1.0))
    };
    daemon
        .wait_for("the changes counted and a delivered batch", || {
            get(port, "/metrics")
                .map(|response| response.body)
                .filter(|text| counted(text))
        })
        .await;
    daemon.stop().await;

    let Some(promtool_path) = promtool_or_skip("check metrics") else {
        return;
    };
    let (passed, said) = promtool(promtool_path, &["check", "metrics"], &classic.body);
    assert!(
        passed && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

/// The alert rules README.md gives: its YAML code block that starts with `groups:`.
fn readme_alert_rules() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```yaml\ngroups:\n")
        .expect("README.md has no alert rules")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_string()
}

/// Each rule of README.md against series where it must fire and where it must not. Time
/// starts at the Unix epoch, one sample a minute.
const ALERT_RULE_TESTS: &str = r#"
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # corp completes every minute; hr never did.
      - series: 'aksync_last_success_timestamp_seconds{source="corp"}'
        values: '0+60x120'
      - series: 'aksync_last_success_timestamp_seconds{source="hr"}'
        values: '0x120'
      # corp fails from minute 10 on; hr failed once.
      - series: 'aksync_runs_total{source="corp",status="failed"}'
        values: '0x10 1+1x20'
      - series: 'aksync_runs_total{source="hr",status="failed"}'
        values: '0x10 1x20'
      # 25 leavers at minute 31 for corp; a trickle for hr.
      - series: 'aksync_leavers_total{source="corp"}'
        values: '0x30 25x30'
      - series: 'aksync_leavers_total{source="hr"}'
        values: '0+0.25x60'
    alert_rule_test:
      - eval_time: 60m
        alertname: AksyncSourceStale
        exp_alerts: []
      - eval_time: 70m
        alertname: AksyncSourceStale
        exp_alerts:
          - exp_labels:
              severity: warning
              source: hr
            exp_annotations:
              summary: "aksync source hr has had no complete run for over an hour"
      - eval_time: 10m
        alertname: AksyncRunsFailing
        exp_alerts: []
      - eval_time: 20m
        alertname: AksyncRunsFailing
        exp_alerts:
          - exp_labels:
              severity: warning
              source: corp
              status: failed
            exp_annotations:
              summary: "aksync source corp keeps failing: see /healthz or journalctl -u aksync"
      - eval_time: 30m
        alertname: AksyncLeaverSpike
        exp_alerts: []
      - eval_time: 35m
        alertname: AksyncLeaverSpike
        exp_alerts:
          - exp_labels:
              severity: critical
              source: corp
            exp_annotations:
              summary: "aksync source corp found more than 20 leavers in an hour"
"#;

#[test]
fn the_readme_alert_rules_pass_promtool_and_fire_when_they_should() {
    let rules = readme_alert_rules();
    for alert in [
        "AksyncSourceStale",
        "AksyncRunsFailing",
        "AksyncLeaverSpike",
    ] {
        assert!(
            rules.contains(&format!("- alert: {alert}\n")),
            "{alert} missing:\n{rules}"
        );
    }
    let Some(promtool_path) = promtool_or_skip("check rules") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("aksync.rules.yml");
    std::fs::write(&rules_path, &rules).unwrap();
    let rules_file = rules_path.to_str().unwrap();
    let (passed, said) = promtool(promtool_path, &["check", "rules", rules_file], "");
    assert!(passed && said.contains("SUCCESS: 3 rules found"), "{said}");
    let tests_path = dir.path().join("aksync.rules.test.yml");
    std::fs::write(
        &tests_path,
        format!("rule_files:\n  - {rules_file}\n{ALERT_RULE_TESTS}"),
    )
    .unwrap();
    let (passed, said) = promtool(
        promtool_path,
        &["test", "rules", tests_path.to_str().unwrap()],
        "",
    );
    assert!(passed, "promtool test rules:\n{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_runaway_filter_is_rejected_and_the_daemon_goes_on() {
    let env = TestEnv::start(6).await;
    let keys = schedule(EVERY_SECOND, true);
    write_config(&env, &[("corp", &keys)], "");
    let mut daemon = Daemon::start(&env);
    daemon
        .wait_for("a run of corp", || when(complete_runs(&env, "corp") >= 1))
        .await;
    // 50,000 terms: once a SIGHUP with this killed the daemon.
    let filter: Vec<String> = (0..50_000)
        .map(|pk| format!("payload.pk == {pk}"))
        .collect();
    let runaway = format!("{keys}filter = {:?}\n", filter.join(" || "));
    write_config(&env, &[("corp", &runaway)], "");
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for("the rejected reload", || {
            when(daemon_log_contains(&env, "reload rejected"))
        })
        .await;
    let runs_then = complete_runs(&env, "corp");
    daemon
        .wait_for("runs with the previous configuration", || {
            when(complete_runs(&env, "corp") >= runs_then + 2)
        })
        .await;
    let log = daemon.stop().await;
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error for the rejected reload:\n{log}");
    assert!(
        errors[0].contains("sources.corp.filter") && errors[0].contains("bytes long"),
        "{}",
        errors[0]
    );
    assert!(errors[0].len() < 1000, "a short line: {}", errors[0]);
}

/// Starts the daemon with stderr as the journal would give it: `JOURNAL_STREAM` names the
/// device and inode of its stderr, the log file.
fn start_as_if_under_journald(env: &TestEnv) -> Daemon {
    use std::os::unix::fs::MetadataExt;
    let log = env.dir.path().join("daemon.log");
    std::fs::File::create(&log).unwrap();
    let metadata = std::fs::metadata(&log).unwrap();
    // Daemon::start_with truncates the same file, so its inode stays.
    let stream = format!("{}:{}", metadata.dev(), metadata.ino());
    Daemon::start_with(env, &[("JOURNAL_STREAM", &stream), ("AKSYNC_LOG", "info")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_for_the_journal_carry_their_priority_and_json_keeps_numbers() {
    let env = TestEnv::start(4).await;
    // `down` fails, so that its end is a warning.
    let down = unreachable_source("down");
    for format in ["text", "json"] {
        let tail = format!("{down}\n[daemon]\nlog_format = \"{format}\"\n");
        write_config(&env, &[("corp", &schedule(YEARLY, true))], &tail);
        let before = (runs(&env, "corp").len(), runs(&env, "down").len());
        let mut daemon = start_as_if_under_journald(&env);
        daemon
            .wait_for("a run of each source", || {
                when(runs(&env, "corp").len() > before.0 && runs(&env, "down").len() > before.1)
            })
            .await;
        let log = daemon.stop().await;
        for line in log.lines() {
            let priority = ["<3>", "<4>", "<6>", "<7>"]
                .into_iter()
                .find(|priority| line.starts_with(priority));
            assert!(priority.is_some(), "no priority: {line:?}");
        }
        let finished = |status: &str| {
            log.lines()
                .find(|line| line.contains("run finished") && line.contains(status))
                .unwrap_or_else(|| panic!("no {status} run in:\n{log}"))
                .to_string()
        };
        let (failed, complete) = (finished("failed"), finished("complete"));
        assert!(failed.starts_with("<4>"), "{failed}");
        assert!(complete.starts_with("<6>"), "{complete}");
        if format == "text" {
            assert!(
                failed.starts_with("<4>WARN run finished source=down "),
                "{failed}"
            );
            assert!(failed.contains("error=\"cannot connect"), "{failed}");
            assert!(
                complete.starts_with("<6>INFO run finished source=corp "),
                "{complete}"
            );
            assert!(log.contains("<6>INFO aksync daemon started"), "{log}");
        } else {
            let object = |line: &str| -> Value { serde_json::from_str(&line[3..]).unwrap() };
            let (failed, complete) = (object(&failed), object(&complete));
            assert_eq!(failed["level"], "WARN", "{failed}");
            assert!(failed["fields"]["duration_secs"].is_f64(), "{failed}");
            assert!(
                failed["fields"]["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("Connection refused")),
                "{failed}"
            );
            assert_eq!(failed["fields"]["source"], "down", "{failed}");
            assert!(complete["fields"]["duration_secs"].is_f64(), "{complete}");
            assert!(complete["fields"]["accounts"].is_u64(), "{complete}");
        }
        assert_plain_and_secret_free(&log);
    }
    // A configuration the daemon cannot start with is an error in the journal too.
    write_config(&env, &[("corp", "page_sise = 5\n")], "");
    let mut daemon = start_as_if_under_journald(&env);
    let status = daemon.child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let log = daemon.log();
    assert!(
        log.starts_with("<3>aksync: ") && log.contains("unknown key `sources.corp.page_sise`"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_run_keeps_the_source_healthy() {
    let env = TestEnv::start(30).await;
    let port = free_port();
    let http = format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let slow = format!("{}page_size = 5\nconcurrency = 1\n", schedule(YEARLY, true));
    write_config(&env, &[("corp", &slow)], &http);
    env.sync_ok();
    // A run in progress when systemctl restart stops the daemon.
    env.fake.with_state(|state| {
        state.latency = Duration::from_millis(300);
        state.request_log.clear();
    });
    let mut daemon = Daemon::start(&env);
    wait_for_a_run_under_way(&mut daemon, &env).await;
    let (status, log) = daemon.stop_within(STOP_LIMIT).await;
    assert_eq!(status.code(), Some(0), "{log}");
    let cancelled = &runs(&env, "corp")[0];
    assert!(cancelled.cancelled_by_shutdown(), "{cancelled:?}");
    // The stop is logged as what it is, not as a warning of a failed run.
    let finished = log
        .lines()
        .find(|line| line.contains("run finished") && line.contains(&cancelled.run_id))
        .unwrap_or_else(|| panic!("no run finished line: {log}"));
    assert!(
        finished.contains("INFO") && finished.contains("status=cancelled"),
        "{finished}"
    );

    // Started again, it waits for its next scheduled run: the cancelled one is recorded, but
    // it was aksync's own stop, not the source's failure.
    write_config(&env, &[("corp", &schedule(YEARLY, false))], &http);
    let mut daemon = Daemon::start(&env);
    let healthz = daemon.wait_for("/healthz", || get(port, "/healthz")).await;
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    let body: Value = serde_json::from_str(&healthz.body).unwrap();
    assert_eq!(body["sources"]["corp"]["healthy"], true, "{body}");
    let metrics = daemon.wait_for("/metrics", || get(port, "/metrics")).await;
    assert_eq!(
        metric(&metrics.body, "aksync_source_healthy{source=\"corp\"}"),
        Some(1.0),
        "{}",
        metrics.body
    );
    let page = daemon.wait_for("/", || get(port, "/")).await;
    assert!(
        page.body.contains("cancelled"),
        "the status page says the last run was cancelled: {}",
        page.body
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_line_says_why_a_run_failed_and_the_date_of_a_next_run_not_today() {
    let env = TestEnv::start(5).await;
    let down = unreachable_source("down");
    write_config(&env, &[("corp", &schedule(YEARLY, true))], &down);
    let socket_path = env.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let daemon = Daemon::start_with(&env, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let mut messages: Vec<String> = Vec::new();
    let both_ran = |m: &[String]| {
        m.iter()
            .any(|m| m.contains("corp: complete") && m.contains("down: failed"))
    };
    receive_until(&socket, &mut messages, "both runs' ends", &both_ran).await;
    let status = messages
        .iter()
        .find(|m| both_ran(std::slice::from_ref(m)))
        .unwrap();
    // The yearly schedule's next run is on January 1, never today; the failed source's retry
    // comes within minutes.
    let next_year = latest_complete(&env)
        .finished_at
        .format("%Y")
        .to_string()
        .parse::<i32>()
        .unwrap()
        + 1;
    let (corp, down) = status.split_once("; down: ").unwrap();
    assert!(
        corp.ends_with(&format!(" {next_year}-01-01 00:00")),
        "{status}"
    );
    assert!(
        down.starts_with("failed ") && down.contains(" (cannot connect to /api/v3/"),
        "{status}"
    );
    daemon.stop().await;
}
