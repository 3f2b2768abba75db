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

use aksync::fake::{Fault, READER_TOKEN};
use aksync::store::{DeliveryStatus, RunRecord, RunStatus};
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
    async fn stop_within(mut self, limit: Duration) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {limit:?} of SIGTERM:\n{}",
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
    assert!(runs.iter().all(|run| run.status == RunStatus::Complete));
    // Each run writes its reports and logs its start and its end with counts.
    for run in &runs {
        let report = env
            .state_dir()
            .join(format!("reports/corp/{}.html", run.run_id));
        assert!(report.is_file(), "{}", report.display());
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
    assert!(
        runs.iter().all(|run| run.status == RunStatus::Complete),
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
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
    assert!(metrics
        .head
        .contains("content-type: application/openmetrics-text"));
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

    // A failed run makes the source unhealthy.
    env.fake.with_state(|state| {
        state
            .faults
            .push(users_fail(503, "{\"detail\": \"down for maintenance\"}"))
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
