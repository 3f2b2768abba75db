//! Shared set-up for the integration tests: a fake Authentik on loopback, a config file in a
//! temporary state directory, and the real `aksync` binary run against them; [`browser`]
//! lays pages out in headless Chromium, and [`tls`] puts HTTPS in front of the fake.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod browser;
pub mod tls;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aksync::demo::fake::{Directory, FakeAuthentik, FakeUser, READER_TOKEN};
use aksync::store::Store;
use serde_json::Value;

pub const SEED: u64 = 7;

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub fake: FakeAuthentik,
    pub config_path: PathBuf,
}

/// The result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {}", self.stdout))
    }
}

impl TestEnv {
    pub async fn start(people: usize) -> TestEnv {
        Self::with_directory(Directory::generate(SEED, people)).await
    }

    pub async fn with_directory(directory: Directory) -> TestEnv {
        let fake = FakeAuthentik::start(directory)
            .await
            .expect("fake server starts");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        let env = TestEnv {
            dir,
            fake,
            config_path,
        };
        env.write_config(READER_TOKEN, "");
        env
    }

    /// Source keys that let a run of a directory of a dozen people lose a few of them
    /// without quarantine (the default thresholds are relative too: 2 leavers of 15 are over
    /// `max_leaver_percent`), for tests about what such a run records.
    pub const NO_QUARANTINE: &'static str =
        "max_leaver_percent = 100.0\nmax_membership_removal_percent = 100.0\n";

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir().join("aksync.redb")
    }

    /// Writes a one-source config named `corp` using `token`, with extra source keys.
    pub fn write_config(&self, token: &str, extra_source_keys: &str) {
        self.write_config_for(&self.fake.base_url(), token, extra_source_keys);
    }

    pub fn write_config_for(&self, base_url: &str, token: &str, extra_source_keys: &str) {
        write_secret(&self.dir.path().join("token"), token);
        let config = format!(
            "state_dir = {:?}\n\n[sources.corp]\nbase_url = {base_url:?}\ntoken_file = \"token\"\n{extra_source_keys}\n",
            self.state_dir().display().to_string()
        );
        std::fs::write(&self.config_path, config).unwrap();
    }

    pub fn aksync(&self, args: &[&str]) -> Run {
        run_binary(Some(&self.config_path), args)
    }

    pub fn store(&self) -> Store {
        Store::open(&self.database(), Duration::from_secs(5)).expect("database opens")
    }

    pub fn sync_ok(&self) -> Run {
        let run = self.aksync(&["sync"]);
        assert_eq!(run.code, 0, "sync failed: {}{}", run.stdout, run.stderr);
        run
    }

    /// `aksync verify` passes; `context` says where, for the failure message.
    pub fn verify_ok(&self, context: &str) -> Run {
        let run = self.aksync(&["verify"]);
        assert_eq!(
            run.code, 0,
            "{context}: verify failed: {}{}",
            run.stdout, run.stderr
        );
        run
    }

    pub fn show_json(&self, kind: &str, run: &str) -> Value {
        let result = self.aksync(&["show", kind, "--run", run, "--json"]);
        assert_eq!(result.code, 0, "show failed: {}", result.stderr);
        result.json()
    }
}

/// Deletes `count` ordinary active accounts (not `akadmin`, not a token's user) from the
/// fake and returns them.
pub fn remove_people(env: &TestEnv, count: usize) -> Vec<FakeUser> {
    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let token_users: Vec<i64> = directory.tokens.values().map(|t| t.user_pk).collect();
        let people: Vec<i64> = directory
            .users
            .values()
            .filter(|user| {
                user.username != "akadmin" && user.is_active && !token_users.contains(&user.pk)
            })
            .map(|user| user.pk)
            .take(count)
            .collect();
        people
            .iter()
            .filter_map(|pk| directory.users.remove(pk))
            .collect()
    })
}

/// Copies a directory tree (a state directory, a fixture).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Writes a token file readable by its owner only, as an admin should (aksync warns about
/// others).
pub fn write_secret(path: &Path, content: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(content.as_bytes()).unwrap();
}

/// One run of the binary and its own peak resident memory.
pub struct Measured {
    pub run: Run,
    pub max_rss_kib: i64,
}

/// Runs aksync with the env's config; `file_size_limit` sets RLIMIT_FSIZE for it, with
/// SIGXFSZ ignored so that a write past the limit fails with EFBIG, as on a full disk.
pub fn measured(env: &TestEnv, args: &[&str], file_size_limit: Option<u64>) -> Measured {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aksync"));
    command
        .arg("--config")
        .arg(&env.config_path)
        .args(args)
        .env_remove("AKSYNC_CONFIG")
        .env_remove("STATE_DIRECTORY")
        // The logger's own colours are not directory data; without them, any escape
        // sequence on stderr came from the server or the directory.
        .env("NO_COLOR", "1")
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
    let pid = child.id();
    // The peak of the process's own memory (VmHWM), read until it has exited: `wait4`'s
    // ru_maxrss also counts the test process's memory at the fork, which is shared with the
    // other tests of the binary.
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(own_peak_kib)
        {
            peak = kib;
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    // Reaped only once the watcher has seen it exit, so that it never reads another process
    // that reuses the pid.
    let max_rss_kib = watcher.join().unwrap();
    let status = child.wait().expect("aksync exits");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "aksync panicked: {}",
        run.stderr
    );
    Measured { run, max_rss_kib }
}

/// `VmHWM` of a `/proc/<pid>/status`, in KiB; a process that has exited has none.
fn own_peak_kib(status: &str) -> Option<i64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn run_binary(config: Option<&Path>, args: &[&str]) -> Run {
    run_binary_with_input(config, args, None)
}

/// The binary with `input` on its standard input (none: an empty one).
pub fn run_binary_with_input(config: Option<&Path>, args: &[&str], input: Option<&str>) -> Run {
    use std::io::Write;
    let mut command = Command::new(env!("CARGO_BIN_EXE_aksync"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .env_remove("AKSYNC_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("aksync runs");
    let mut stdin = child.stdin.take().expect("stdin piped");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).expect("stdin written");
    }
    drop(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("aksync runs");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("stack backtrace"),
        "aksync panicked: {}",
        run.stderr
    );
    run
}

/// Every stored account is its user in the fake directory, field by field, and every user
/// is stored.
pub fn assert_accounts_match(stored: &Value, directory: &Directory) {
    let by_uid: std::collections::BTreeMap<String, &aksync::demo::fake::FakeUser> = directory
        .users
        .values()
        .map(|user| (directory.uid(user.pk), user))
        .collect();
    let records = stored.as_array().expect("an array");
    assert_eq!(records.len(), by_uid.len(), "one account per user");
    for record in records {
        let user = by_uid[record["external_id"].as_str().expect("an id")];
        assert_eq!(record["username"], user.username.as_str());
        assert_eq!(record["secondary_key"], user.uuid.as_str());
        let display = if user.name.is_empty() {
            &user.username
        } else {
            &user.name
        };
        assert_eq!(record["display_name"], display.as_str());
        let email = user.email.to_lowercase();
        if email.is_empty() {
            assert!(record["canonical_email"].is_null());
        } else {
            assert_eq!(record["canonical_email"], email.as_str());
        }
        assert_eq!(
            record["status"],
            if user.is_active { "ACTIVE" } else { "INACTIVE" }
        );
        assert_eq!(record["authentik_type"], user.user_type.as_str());
        let expected_type = match user.user_type.as_str() {
            "internal" => "USER",
            "external" => "GUEST",
            "service_account" | "internal_service_account" => "SERVICE",
            other => panic!("unexpected type {other}"),
        };
        assert_eq!(record["account_type"], expected_type, "{}", user.username);
        assert_eq!(record["organization_unit"], user.path.as_str());
        assert_eq!(record["metadata"], user.attributes);
        assert_eq!(record["added_at"], user.date_joined.as_str());
        assert_eq!(
            record["last_login_at"],
            serde_json::to_value(&user.last_login).unwrap()
        );
        // The primary-directory flag is the source's, on each envelope, not in a record.
        assert!(record.get("primary_source").is_none());
    }
}

/// The ids of the runs of source `corp`, oldest first.
pub fn run_ids(env: &TestEnv) -> Vec<String> {
    let mut ids: Vec<String> = env
        .store()
        .runs(Some("corp"))
        .unwrap()
        .into_iter()
        .map(|run| run.run_id)
        .collect();
    ids.reverse();
    ids
}

/// The ids of a JSON array of records.
pub fn ids(records: &Value, key: &str) -> Vec<String> {
    let mut ids: Vec<String> = records
        .as_array()
        .expect("an array")
        .iter()
        .map(|record| record[key].as_str().expect("string id").to_string())
        .collect();
    ids.sort();
    ids
}

/// A webhook receiver that answers 503 while `down` (counting those requests in `refused`)
/// and records what it accepted.
pub struct Receiver {
    pub url: String,
    pub down: Arc<AtomicBool>,
    pub refused: Arc<AtomicUsize>,
    pub accepted: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    /// (run id, batch number) of every accepted request, in arrival order.
    pub fn batches(&self) -> Vec<(String, u64)> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| {
                (
                    body["run_id"].as_str().unwrap().to_string(),
                    body["batch"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

pub async fn receiver() -> Receiver {
    let down = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (down_in, refused_in, accepted_in) = (down.clone(), refused.clone(), accepted.clone());
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let (down, refused, accepted) =
                    (down_in.clone(), refused_in.clone(), accepted_in.clone());
                async move {
                    if down.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let key = headers["idempotency-key"].to_str().unwrap().to_string();
                    accepted.lock().unwrap().push((key, body.0));
                    axum::http::StatusCode::ACCEPTED
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        down,
        refused,
        accepted,
    }
}

/// A stand-in for Chromium that never answers: a run that writes a PDF report waits on it
/// after its commit, so a test can kill the run there. It writes its pid into the second
/// path it returns.
pub fn hanging_chromium(dir: &Path) -> (PathBuf, PathBuf) {
    let chromium = dir.join("hanging-chromium");
    let pid_file = dir.join("chromium.pid");
    std::fs::write(
        &chromium,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &chromium,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (chromium, pid_file)
}
