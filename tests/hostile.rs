//! A hostile or broken server and hostile directory data, end to end with the real binary.
//! Every case ends cleanly: a failed run recorded with one line of error (exit 1), the last
//! complete snapshot untouched and no leavers, with bounded memory; and no directory text
//! reaches a terminal raw.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aksync::demo::fake::{long_text, Fault, ListKind, ListingLies, HOSTILE_TEXT, READER_TOKEN};
use common::{measured, Measured, TestEnv};
use serde_json::Value;

/// A loose bound on the peak memory of one aksync process; the point is that a lying
/// server cannot make it grow without end.
const MAX_RSS_KIB: i64 = 512 * 1024;

/// What a failed run must leave as it was.
struct History {
    complete_runs: Vec<Value>,
    accounts: Value,
    memberships: Value,
    files: Vec<PathBuf>,
}

fn history(env: &TestEnv) -> History {
    let runs = env.aksync(&["runs", "--json"]).json();
    History {
        complete_runs: runs
            .as_array()
            .unwrap()
            .iter()
            .filter(|run| run["status"] == "complete")
            .cloned()
            .collect(),
        accounts: env.show_json("accounts", "latest"),
        memberships: env.show_json("memberships", "latest"),
        files: files_under(&env.state_dir()),
    }
}

/// The history is as it was: no new complete run (so no leavers), the same latest snapshot,
/// no new file (no orphan envelope file, no report).
fn assert_untouched(env: &TestEnv, before: &History) {
    let now = history(env);
    assert_eq!(now.files, before.files, "files under the state directory");
    let run_ids = |history: &History| -> Vec<Value> {
        history
            .complete_runs
            .iter()
            .map(|run| run["run_id"].clone())
            .collect()
    };
    assert_eq!(run_ids(&now), run_ids(before), "complete runs");
    assert!(
        now.complete_runs == before.complete_runs,
        "complete run records changed"
    );
    assert!(
        now.accounts == before.accounts,
        "the latest accounts changed"
    );
    assert!(
        now.memberships == before.memberships,
        "the latest memberships changed"
    );
}

/// Every file under `dir` but the database, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name != "aksync.redb") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A synced environment whose page size makes several pages.
async fn synced(people: usize) -> TestEnv {
    let env = TestEnv::start(people).await;
    env.write_config(READER_TOKEN, "page_size = 10\nconcurrency = 2");
    env.sync_ok();
    env
}

/// The sync fails cleanly: exit 1, one line on stderr, the failed run recorded with an error
/// that contains every one of `expected`, the history untouched, memory bounded.
fn assert_clean_failure(env: &TestEnv, before: &History, expected: &[&str]) -> String {
    let Measured { run, max_rss_kib } = measured(env, &["sync"], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(max_rss_kib < MAX_RSS_KIB, "peak memory {max_rss_kib} KiB");
    assert_no_raw_controls(&run.stdout);
    assert_no_raw_controls(&run.stderr);
    let runs = env.aksync(&["runs", "--json"]).json();
    let latest = &runs[0];
    assert_eq!(latest["status"], "failed", "{latest}");
    let error = latest["error"].as_str().unwrap().to_string();
    for needle in expected {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
    assert!(run.stdout.contains("failed"), "{}", run.stdout);
    assert_untouched(env, before);
    error
}

fn assert_no_raw_controls(text: &str) {
    let raw = text.chars().find(|&c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    });
    assert!(
        raw.is_none(),
        "raw {raw:?} in output: {}",
        text.chars().take(2000).collect::<String>()
    );
}

fn lie(env: &TestEnv, list: ListKind, lies: ListingLies) {
    env.fake.with_state(|state| {
        state.lies.insert(list, lies);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_counts_fail_without_allocating_by_the_servers_word() {
    let env = synced(30).await;
    let before = history(&env);
    for (list, count) in [
        (ListKind::Users, 1u64 << 40),
        (ListKind::Users, 1 << 62),
        (ListKind::Groups, 1 << 40),
    ] {
        lie(
            &env,
            list,
            ListingLies {
                count: Some(count),
                ..ListingLies::default()
            },
        );
        assert_clean_failure(
            &env,
            &before,
            &["listing was inconsistent", &count.to_string()],
        );
        env.fake.with_state(|state| state.lies.clear());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pages_end_the_listing() {
    // 40 users: full pages of 10, so the repeated last page fits the lie.
    let env = synced(35).await;
    let before = history(&env);
    // Pages that do not fit the count stop at page 1, of each of the two reads.
    lie(
        &env,
        ListKind::Users,
        ListingLies {
            total_pages: Some(1_000_000_000_000),
            answer_every_page: true,
            ..ListingLies::default()
        },
    );
    env.fake.with_state(|state| state.request_log.clear());
    assert_clean_failure(
        &env,
        &before,
        &[
            "listing was inconsistent",
            "make 4 pages, not 1000000000000",
        ],
    );
    let user_pages = |env: &TestEnv| {
        env.fake.with_state(|state| {
            state
                .request_log
                .iter()
                .filter(|line| line.contains("/core/users/?"))
                .count()
        })
    };
    assert_eq!(user_pages(&env), 2);
    // A count made to fit: the pages past the end repeat the last one, which ends the read.
    let users = env
        .fake
        .with_state(|state| state.directory.users.len() as u64);
    lie(
        &env,
        ListKind::Users,
        ListingLies {
            total_pages: Some(1_000_000_000_000),
            count: Some(10 * 1_000_000_000_000),
            answer_every_page: true,
            ..ListingLies::default()
        },
    );
    env.fake.with_state(|state| state.request_log.clear());
    assert_clean_failure(&env, &before, &["held only records of earlier pages"]);
    // Both reads stop one page past the real end, give or take the pages fetched ahead: the
    // 2 in flight and the 2 queued for the collector (concurrency = 2).
    assert!(
        user_pages(&env) as u64 <= 2 * (users.div_ceil(10) + 1 + 4),
        "{} page requests",
        user_pages(&env)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_stops_at_the_page_size_limit() {
    let env = synced(30).await;
    let before = history(&env);
    lie(
        &env,
        ListKind::Users,
        ListingLies {
            endless_body: true,
            ..ListingLies::default()
        },
    );
    // The default limit, 64 MiB, is what bounds memory here.
    assert_clean_failure(&env, &before, &["more than 64 MiB", "max_page_mib"]);
    env.write_config(
        READER_TOKEN,
        "page_size = 10\nconcurrency = 2\nmax_page_mib = 1",
    );
    assert_clean_failure(&env, &before, &["more than 1 MiB"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_records_with_one_pk_or_two_users_with_one_uid_fail_the_listing() {
    let env = synced(30).await;
    let before = history(&env);
    let twin = ListingLies {
        conflicting_duplicate: true,
        ..ListingLies::default()
    };
    let shared_uid = ListingLies {
        shared_uid: true,
        ..ListingLies::default()
    };
    let cases: [(ListKind, ListingLies, &[&str]); 3] = [
        (
            ListKind::Users,
            twin.clone(),
            &["two different records have the pk"],
        ),
        (
            ListKind::Groups,
            twin,
            &["two different records have the pk"],
        ),
        (
            ListKind::Users,
            shared_uid,
            &["users with the pks", "have one uid"],
        ),
    ];
    for (list, lies, expected) in cases {
        lie(&env, list, lies);
        assert_clean_failure(&env, &before, expected);
        env.fake.with_state(|state| state.lies.clear());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_json_and_redirects_are_named_for_what_they_are() {
    let env = synced(10).await;
    let before = history(&env);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Answers `path` with `status`, `body` and maybe a Location, every time.
    let answer = |path: &str, status: u16, body: &[u8], location: Option<&str>| Fault {
        path_contains: path.into(),
        skip: 0,
        times: None,
        status,
        body: body.to_vec(),
        retry_after: None,
        location: location.map(str::to_string),
    };
    let cases: [(Fault, &[&str]); 5] = [
        (
            answer("/admin/version/", 200, deep.as_bytes(), None),
            &["malformed response", "recursion"],
        ),
        (
            answer(
                "/admin/version/",
                200,
                b"{\"version_current\": \"2025.12.\xff\xfe\"}",
                None,
            ),
            &["malformed response", "/api/v3/admin/version/"],
        ),
        (
            answer(
                "/core/users/me/",
                302,
                b"",
                Some("https://login.example.com/\u{202e}flow/?next=x"),
            ),
            &["redirected (HTTP 302) to https://login.example.com/\\u{202e}flow/?next=x"],
        ),
        (
            answer("/core/users/me/", 301, b"", None),
            &["redirected (HTTP 301) to nowhere"],
        ),
        (
            answer(
                "/admin/version/",
                200,
                b"<!doctype html><title>Sign in</title>",
                None,
            ),
            &["is not an Authentik API"],
        ),
    ];
    for (fault, expected) in cases {
        env.fake.with_state(|state| state.faults = vec![fault]);
        let error = assert_clean_failure(&env, &before, expected);
        if !expected[0].contains("not an Authentik API") {
            assert!(!error.contains("not an Authentik API"), "{error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_ends_at_its_deadline() {
    let env = synced(10).await;
    let before = history(&env);
    // Each request is answered within the request timeout, but the run takes too long.
    env.fake
        .with_state(|state| state.latency = Duration::from_secs(30));
    env.write_config(
        READER_TOKEN,
        "page_size = 10\nconcurrency = 2\nrun_timeout_secs = 1",
    );
    assert_clean_failure(
        &env,
        &before,
        &["did not finish within 1s", "sources.corp.run_timeout_secs"],
    );
    let health = env.store().health("corp").unwrap().unwrap();
    assert_eq!(health.reason_code.as_deref(), Some("timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_directory_text_reaches_no_terminal_raw() {
    let env = synced(12).await;
    let long = long_text(70_000);
    let (victim, group) = env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let mut people = directory
            .users
            .values_mut()
            .filter(|user| user.user_type == "internal" && user.username != "akadmin");
        let victim = people.next().unwrap();
        victim.name = HOSTILE_TEXT.to_string();
        let victim_name = victim.username.clone();
        people.next().unwrap().name = long.clone();
        let group_pk = directory.groups.keys().next().unwrap().clone();
        directory.groups.get_mut(&group_pk).unwrap().name = format!("Ops {HOSTILE_TEXT}");
        let joiner = directory.add_user(&format!("mallory{HOSTILE_TEXT}"), "internal");
        let joiner = directory.users.get_mut(&joiner).unwrap();
        joiner.name = HOSTILE_TEXT.to_string();
        joiner.groups.push(group_pk.clone());
        (victim_name, group_pk)
    });
    env.sync_ok();
    let Measured { run, .. } = measured(&env, &["diff", "previous", "latest"], None);
    assert!(
        run.stdout.contains("\\u{1b}]0;pwned\\u{7}"),
        "{}",
        run.stdout
    );
    let human: [&[&str]; 10] = [
        &["show", "accounts"],
        &["show", "groups"],
        &["show", "memberships"],
        &["diff", "previous", "latest"],
        &["history", &victim],
        &["history", "mallory"],
        &["runs"],
        &["report", "latest"],
        &["report", "latest", "--format", "html"],
        &["sync"],
    ];
    for args in human {
        let Measured { run, .. } = measured(&env, args, None);
        if args[0] == "history" && args[1] == "mallory" {
            // Not a username; the error quotes the argument safely.
            assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        } else {
            assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
        }
        assert_no_raw_controls(&run.stdout);
        assert_no_raw_controls(&run.stderr);
        if args[0] == "show" || args[0] == "runs" {
            let widest = run.stdout.lines().map(|line| line.chars().count()).max();
            assert!(
                widest < Some(3000),
                "{args:?}: lines of {widest:?} characters"
            );
        }
    }
    // Machine formats keep the exact values, however long.
    let accounts = env.show_json("accounts", "latest");
    let names: Vec<&str> = accounts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|account| account["display_name"].as_str())
        .collect();
    assert!(names.contains(&HOSTILE_TEXT));
    assert!(names.contains(&long.as_str()));
    let csv = env.aksync(&["show", "accounts", "--csv"]);
    assert!(csv.stdout.contains(&long), "the CSV keeps the whole value");
    let groups = env.show_json("groups", "latest");
    assert!(groups
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["external_id"] == group.as_str()
            || g["display_name"] == format!("Ops {HOSTILE_TEXT}")));
    // A server's error body is quoted escaped, by `check` and by a failed sync alike.
    env.fake.with_state(|state| {
        state.faults = vec![Fault {
            path_contains: "/admin/version/".into(),
            skip: 0,
            times: None,
            status: 418,
            body: HOSTILE_TEXT.into(),
            retry_after: None,
            location: None,
        }];
    });
    for args in [&["check"][..], &["sync"]] {
        let Measured { run, .. } = measured(&env, args, None);
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("HTTP 418"), "{args:?}: {}", run.stdout);
        assert_no_raw_controls(&run.stdout);
        assert_no_raw_controls(&run.stderr);
    }
}

/// Runs aksync with its standard output a pipe whose reader is already gone.
fn with_closed_stdout(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_aksync"))
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .env_remove("AKSYNC_CONFIG")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_standard_output_ends_quietly() {
    let env = synced(10).await;
    env.sync_ok();
    for args in [
        &["runs"][..],
        &["runs", "--json"],
        &["show", "accounts"],
        &["show", "accounts", "--csv"],
        &["diff", "previous", "latest"],
        &["report", "latest"],
        &["envelopes", "latest"],
        &["sync"],
    ] {
        let output = with_closed_stdout(&env, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("internal error") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    // The sync still did its work.
    let runs = env.aksync(&["runs", "--json"]).json();
    assert_eq!(runs.as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_records_the_failed_run_and_leaves_no_orphan_envelope() {
    let env = synced(300).await;
    let before = history(&env);
    const LATE: usize = 30;
    env.fake.with_state(|state| {
        for index in 0..LATE {
            let pk = state
                .directory
                .add_user(&format!("late.{index}"), "internal");
            // Large enough that storing them must grow the database, small enough that the
            // run's spool and envelope file (each under the database's size) can be written.
            state.directory.users.get_mut(&pk).unwrap().attributes["notes"] =
                serde_json::json!("x".repeat(8000));
        }
    });
    // The database cannot grow when the run commits; the run's smaller files can be written
    // before that.
    let size = std::fs::metadata(env.database()).unwrap().len();
    let Measured { run, .. } = measured(&env, &["sync"], Some(size));
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("File too large"), "{}", run.stderr);
    let runs = env.aksync(&["runs", "--json"]).json();
    assert_eq!(runs[0]["status"], "failed");
    let error = runs[0]["error"].as_str().unwrap();
    assert!(
        error.contains("could not be stored") && error.contains("File too large"),
        "{error}"
    );
    assert_untouched(&env, &before);
    // With room again, the same changes are stored.
    env.sync_ok();
    let accounts = env.show_json("accounts", "latest");
    assert_eq!(
        accounts.as_array().unwrap().len(),
        before.accounts.as_array().unwrap().len() + LATE
    );
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_is_private_even_in_an_open_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::start(5).await;
    std::fs::create_dir(env.state_dir()).unwrap();
    std::fs::set_permissions(env.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Measured { run, .. } = measured(&env, &["sync"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("readable by other users") && run.stderr.contains("chmod 700"),
        "{}",
        run.stderr
    );
    assert_eq!(mode(&env.database()), 0o600);
    for dir in ["envelopes", "envelopes/corp", "reports", "reports/corp"] {
        assert_eq!(mode(&env.state_dir().join(dir)), 0o700, "{dir}");
    }
    for file in files_under(&env.state_dir()) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    std::fs::set_permissions(env.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let Measured { run, .. } = measured(&env, &["sync"], None);
    assert_eq!(run.stderr, "", "no warning for a private directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_truncated_database_beside_earlier_runs_is_refused() {
    let env = synced(10).await;
    let original = std::fs::read(env.database()).unwrap();
    for kept in [0, 100, 4096] {
        std::fs::write(env.database(), &original[..kept]).unwrap();
        for args in [&["sync"][..], &["runs"], &["show", "accounts"]] {
            let Measured { run, .. } = measured(&env, args, None);
            assert_eq!(run.code, 1, "{kept} {args:?}: {}{}", run.stdout, run.stderr);
            assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
            assert!(run.stderr.contains("corrupt"), "{kept}: {}", run.stderr);
            assert!(!run.stderr.contains("writable"), "{kept}: {}", run.stderr);
            assert_eq!(
                std::fs::read(env.database()).unwrap(),
                &original[..kept],
                "{kept} {args:?}: the damaged file is left as it was"
            );
        }
    }
    std::fs::write(env.database(), b"").unwrap();
    let Measured { run, .. } = measured(&env, &["sync"], None);
    assert!(
        run.stderr.contains("truncated or replaced"),
        "{}",
        run.stderr
    );
}

/// `<prefix> 0\n<prefix> 1\n…`
fn numbered_lines(prefix: &str, count: usize) -> String {
    (0..count)
        .map(|n| format!("{prefix} {n}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sets the `notes` attribute of one person in the fake directory; returns their username.
fn set_notes(env: &TestEnv, notes: &str) -> String {
    env.fake.with_state(|state| {
        let user = state
            .directory
            .users
            .values_mut()
            .find(|user| user.user_type == "internal" && user.username != "akadmin")
            .unwrap();
        user.attributes["notes"] = Value::from(notes);
        user.username.clone()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_multi_line_attribute_that_changes_costs_a_bounded_report() {
    let env = synced(10).await;
    let (old, new) = (numbered_lines("old", 60_000), numbered_lines("new", 60_000));
    set_notes(&env, &old);
    env.sync_ok();
    set_notes(&env, &new);
    let started = std::time::Instant::now();
    let run = env.sync_ok();
    // A line diff of the two values is quadratic: it took minutes. A generous bound, to
    // catch that and not to measure.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "the sync took {took:?}");
    assert!(run.stdout.contains("1 mover"), "{}", run.stdout);
    let runs = env.aksync(&["runs", "--json"]).json();
    let run_id = runs[0]["run_id"].as_str().unwrap();
    let sizes = format!("changed, {} bytes → {} bytes", old.len(), new.len());
    for extension in ["md", "html"] {
        let report = std::fs::read_to_string(
            env.state_dir()
                .join(format!("reports/corp/{run_id}.{extension}")),
        )
        .unwrap();
        assert!(report.contains(&sizes), "{extension} lacks {sizes:?}");
    }
}

/// A stand-in for Chromium that takes `seconds` and fails the way a real one does.
fn failing_chromium(env: &TestEnv, seconds: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.dir.path().join("chromium");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nsleep {seconds}\necho 'ERROR:zygote_host_impl_linux.cc(127)] No usable sandbox!' >&2\nexit 3\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pdf_is_named_with_chromiums_error_and_the_logged_duration_covers_it() {
    let env = TestEnv::start(5).await;
    env.write_config(READER_TOKEN, "\n[output]\nreports = [\"md\", \"pdf\"]");
    let chromium = failing_chromium(&env, 2);
    let output = Command::new(env!("CARGO_BIN_EXE_aksync"))
        .arg("--config")
        .arg(&env.config_path)
        .arg("sync")
        .env("AKSYNC_CHROMIUM", &chromium)
        .env("AKSYNC_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|line| line.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning in {stderr}"));
    assert!(
        warning.contains("PDF report not written: Chromium could not print the PDF")
            && warning.contains("No usable sandbox!")
            && warning.contains("--format pdf`"),
        "{warning}"
    );
    assert!(!stderr.contains("reports not written"), "{stderr}");
    let runs = env.aksync(&["runs", "--json"]).json();
    let run_id = runs[0]["run_id"].as_str().unwrap();
    assert!(env
        .state_dir()
        .join(format!("reports/corp/{run_id}.md"))
        .is_file());
    // The run record ends with the fetch; the log's duration covers the reports too.
    let finished = stderr
        .lines()
        .find(|line| line.contains("run finished"))
        .unwrap_or_else(|| panic!("no end of the run in {stderr}"));
    let duration: f64 = finished
        .split("duration_secs=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {finished}"));
    assert!(duration >= 2.0, "{finished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdf_under_memory_deny_write_execute_fails_at_once_with_how_to_fix_it() {
    let env = synced(5).await;
    // Chromium would hang; the real one is not needed to show that it is not waited for.
    let chromium = failing_chromium(&env, 60);
    let out = env.dir.path().join("report.pdf");
    let mut command = Command::new(env!("CARGO_BIN_EXE_aksync"));
    command
        .arg("--config")
        .arg(&env.config_path)
        .args(["report", "latest", "--format", "pdf", "--out"])
        .arg(&out)
        .env("AKSYNC_CHROMIUM", &chromium);
    // What systemd's MemoryDenyWriteExecute=yes does with seccomp, the kernel does with
    // PR_SET_MDWE (Linux 6.3 and later).
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_MDWE, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipped: this kernel has no PR_SET_MDWE");
            return;
        }
        Err(error) => panic!("{error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("MemoryDenyWriteExecute=yes") && stderr.contains("systemd/pdf.conf"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "it waited");
    assert!(!out.exists());
}

/// Changes the owner of `path` to `uid` (the tests run as root).
fn chown(path: &Path, uid: u32) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string; chown reads it and touches no other memory.
    let changed = unsafe { libc::chown(path.as_ptr(), uid, uid) };
    assert_eq!(changed, 0, "chown: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_another_user_owns_or_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: giving a directory to another user needs root");
        return;
    }
    let env = TestEnv::start(5).await;
    std::fs::create_dir(env.state_dir()).unwrap();
    chown(&env.state_dir(), 54_321);
    for args in [&["sync"][..], &["daemon"], &["deliver"]] {
        let run = env.aksync(args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("belongs to uid 54321")
                && run
                    .stderr
                    .contains(&format!("chown 0 {}", env.state_dir().display())),
            "{}",
            run.stderr
        );
    }
    // An admin reads, and checks, the service's state; nothing is written there.
    let runs = env.aksync(&["runs"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let check = env.aksync(&["check"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(
        check.stdout.starts_with("corp: Healthy"),
        "{}",
        check.stdout
    );
    assert_eq!(std::fs::read_dir(env.state_dir()).unwrap().count(), 0);

    chown(&env.state_dir(), 0);
    std::fs::set_permissions(env.state_dir(), std::fs::Permissions::from_mode(0o770)).unwrap();
    for args in [&["sync"][..], &["runs"]] {
        let run = env.aksync(args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains("can be written by other users (mode 0770)")
                && run.stderr.contains("chmod go-w"),
            "{}",
            run.stderr
        );
    }
    std::fs::set_permissions(env.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    env.sync_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_planted_in_the_state_directory_are_not_followed() {
    let env = synced(5).await;
    let victim = env.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let lock = env.state_dir().join("locks/source-corp.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let sync = env.aksync(&["sync"]);
    assert_eq!(sync.code, 1, "{}{}", sync.stdout, sync.stderr);
    assert!(
        sync.stderr.contains("source-corp.lock") && sync.stderr.contains("symbolic link"),
        "{}",
        sync.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(&lock).unwrap();

    // The database too: a link in its place is refused, not opened.
    let moved = env.dir.path().join("elsewhere.redb");
    std::fs::rename(env.database(), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, env.database()).unwrap();
    let before = std::fs::read(&moved).unwrap();
    for args in [&["sync"][..], &["runs"]] {
        let run = env.aksync(args);
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    }
    assert!(
        std::fs::read(&moved).unwrap() == before,
        "the target changed"
    );
}
