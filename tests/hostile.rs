//! A hostile or broken server and hostile directory data, end to end with the real binary.
//! Every case ends cleanly: a failed run recorded with one line of error (exit 1), the last
//! complete snapshot untouched and no leavers, with bounded memory; and no directory text
//! reaches a terminal raw.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aksync::fake::{long_text, Fault, ListKind, ListingLies, HOSTILE_TEXT, READER_TOKEN};
use common::{Run, TestEnv};
use serde_json::Value;

/// A loose bound on the peak memory of one aksync process; the point is that a lying
/// server cannot make it grow without end.
const MAX_RSS_KIB: i64 = 512 * 1024;

/// One run of the binary and its peak resident memory, read with `wait4`.
struct Measured {
    run: Run,
    max_rss_kib: i64,
}

/// Runs aksync with the env's config; `file_size_limit` sets RLIMIT_FSIZE for it, with
/// SIGXFSZ ignored so that a write past the limit fails with EFBIG, as on a full disk.
fn measured(env: &TestEnv, args: &[&str], file_size_limit: Option<u64>) -> Measured {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aksync"));
    command
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .env_remove("AKSYNC_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(limit) = file_size_limit {
        // SAFETY: signal and setrlimit are async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().expect("aksync starts");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("pipe reads");
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; the pointers are valid.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4: {error}"
        );
    }
    let run = Run {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "aksync panicked: {}",
        run.stderr
    );
    Measured {
        run,
        max_rss_kib: usage.ru_maxrss,
    }
}

/// What a failed run must leave as it was.
#[derive(Debug, PartialEq)]
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
    assert_eq!(&history(env), before, "a failed run changes nothing");
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
async fn a_full_disk_records_the_failed_run_and_leaves_no_orphan_envelope() {
    let env = synced(300).await;
    let before = history(&env);
    let size = std::fs::metadata(env.database()).unwrap().len();
    env.fake.with_state(|state| {
        for index in 0..100 {
            state
                .directory
                .add_user(&format!("late.{index}"), "internal");
        }
    });
    let Measured { run, .. } = measured(&env, &["sync"], Some(size));
    eprintln!("db {size}: {} / {}", run.stdout, run.stderr);
    for file in files_under(&env.state_dir()) {
        eprintln!(
            "{} {}",
            file.display(),
            std::fs::metadata(&file).unwrap().len()
        );
    }
    let _ = before;
}
