//! The scale benchmark: the release binary against the bundled fake Authentik on loopback,
//! measured against a raw fetch of the same pages in the same run.
//!
//! ```sh
//! cargo bench --bench scale -- --users 100000
//! ```
//!
//! It builds a directory of N users in ~N/50 nested groups with 2–3 memberships each, serves
//! it with a fixed latency per request (a real server's), and then times:
//! 1. a raw fetch of every page a sync needs, same page size and concurrency, bodies
//!    discarded: the floor;
//! 2. a first sync into an empty state directory, a no-change sync, and syncs after 1% churn
//!    each (creates, deletes, deactivations, attribute changes, group moves);
//! 3. `aksync diff` from the first to the last run, `aksync show accounts --json`, and an
//!    access review of the latest run (`aksync review`, CSV), which holds the run's
//!    directory in memory.
//!
//! For each it prints wall time, its ratio to the raw fetch, the peak RSS of the aksync
//! process (from `wait4`), the database size and the envelope bytes, then PASS or FAIL
//! against each target of the scale issue. Speed is compared within one run on one machine,
//! never against a fixed number of seconds.
//!
//! With `--ledger` it measures what the evidence ledger costs over a long history instead:
//!
//! ```sh
//! cargo bench --bench scale -- --ledger --users 10000 --ledger-runs 1000 --latency-ms 0
//! ```
//!
//! a first sync, a no-change sync (and what its snapshot digest cost it, from its debug
//! log), then `--ledger-runs` runs of 0.1% churn each with every report format written,
//! and then the period report over all of them against the report of one run holding the
//! same number of events, `history` of one account, and `verify` of the whole chain.
//!
//! `SCALE_BENCH_WRAP` runs every measured command under another, split at spaces, to
//! profile it: `SCALE_BENCH_WRAP=heaptrack` (with the `#[global_allocator]` lines of
//! `src/main.rs` taken out: heaptrack sees the system allocator only), or `perf record -g --`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aksync::authentik::ListKind;
use aksync::demo::fake::{Directory, FakeAuthentik, READER_TOKEN};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "aksync's scale benchmark against the bundled fake Authentik")]
struct Args {
    /// People in the generated directory.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Latency the fake adds to every request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// Syncs after 1% churn each.
    #[arg(long, default_value_t = 30)]
    churn_runs: usize,
    /// Measure the evidence ledger over a long history instead (see the module's doc).
    #[arg(long)]
    ledger: bool,
    /// With --ledger: runs of 0.1% churn each.
    #[arg(long, default_value_t = 1000)]
    ledger_runs: usize,
    /// Keep the state directory and config at the end (and print where), to profile a
    /// command against the same data.
    #[arg(long)]
    keep: bool,
    /// cargo bench passes `--bench`; it means nothing here.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run as the spawner of measured commands (see [`Spawner`]).
    #[arg(long, hide = true)]
    spawner: bool,
}

const SEED: u64 = 2026;
const SOURCE: &str = "bench";

/// One measured command.
#[derive(Debug, Clone)]
struct Measured {
    label: String,
    wall: Duration,
    max_rss_kib: u64,
    /// The process's own CPU time, user and system: what it costs beside waiting for pages.
    cpu: Duration,
    /// The database file's length; it grows in steps (redb doubles it while it is small).
    db_bytes: u64,
    /// How much of the file holds data.
    db_used_bytes: u64,
    envelope_bytes: Option<u64>,
}

fn main() {
    let args = Args::parse();
    if args.spawner {
        return Spawner::serve();
    }
    // Started first, while this process is small: see `Spawner`.
    let spawner = Spawner::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(args, spawner));
}

/// Spawns the measured commands and reads their peak RSS with `wait4`. A child's `ru_maxrss`
/// starts from the memory of the process that spawned it (Linux carries it across `exec`),
/// and this benchmark holds a whole fake directory; so a small process, started before that
/// directory exists, spawns every measured command. Requests and answers are lines on its
/// standard input and output.
struct Spawner {
    child: std::process::Child,
    answers: std::io::BufReader<std::process::ChildStdout>,
}

impl Spawner {
    fn start() -> Spawner {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .arg("--spawner")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the spawner starts");
        let answers = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Spawner { child, answers }
    }

    /// Runs `program args…` with its standard output discarded; returns its exit code, peak
    /// RSS in KiB and CPU time in seconds.
    fn run(&mut self, command: &[String]) -> (i32, u64, f64) {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(
            stdin,
            "{}",
            serde_json::to_string(command).expect("a request")
        )
        .expect("spawner alive");
        let mut line = String::new();
        self.answers.read_line(&mut line).expect("an answer");
        serde_json::from_str(&line).expect("an answer")
    }

    // Each child is reaped by wait4, which also reads its peak memory.
    #[allow(clippy::zombie_processes)]
    fn serve() {
        use std::io::{BufRead, Write};
        for line in std::io::stdin().lock().lines() {
            let command: Vec<String> =
                serde_json::from_str(&line.expect("a request")).expect("a request");
            let mut command = command;
            if let Ok(wrap) = std::env::var("SCALE_BENCH_WRAP") {
                let mut wrapped: Vec<String> = wrap.split(' ').map(String::from).collect();
                wrapped.extend(command);
                command = wrapped;
            }
            let child = Command::new(&command[0])
                .args(&command[1..])
                .env_remove("AKSYNC_CONFIG")
                .env_remove("STATE_DIRECTORY")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the command starts");
            let pid = child.id() as libc::pid_t;
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value, and wait4 fills it for this child.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `pid` is our child, not yet waited for; the pointers are to live locals.
            let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            assert_eq!(waited, pid, "wait4 failed");
            let code = std::process::ExitStatus::from_raw(status)
                .code()
                .unwrap_or(-1);
            let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
            let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
            let answer =
                serde_json::to_string(&(code, usage.ru_maxrss as u64, cpu)).expect("an answer");
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{answer}").expect("the benchmark listens");
            stdout.flush().expect("the benchmark listens");
        }
    }
}

async fn run(args: Args, mut spawner: Spawner) {
    if args.ledger {
        return ledger(args, spawner).await;
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_aksync"));
    eprintln!("generating {} users…", args.users);
    let directory = directory(args.users);
    let memberships: usize = directory.users.values().map(|user| user.groups.len()).sum();
    let groups = directory.groups.len();
    let fake = FakeAuthentik::start(directory).await.expect("fake starts");
    fake.with_state(|state| {
        state.latency = Duration::from_millis(args.latency_ms);
        state.max_page_size = args.page_size.max(100);
    });
    let work = tempfile::tempdir().expect("a temporary directory");
    let config = write_config(work.path(), &fake.base_url(), &args);
    let state_dir = work.path().join("state");

    eprintln!("raw fetch…");
    let raw = raw_fetch(&fake.base_url(), &args).await;
    let mut results = Vec::new();
    eprintln!("first sync…");
    let first = sync(&mut spawner, &binary, &config, &state_dir, "first sync");
    results.push(first.clone());
    eprintln!("no-change sync…");
    let unchanged = sync(&mut spawner, &binary, &config, &state_dir, "no-change sync");
    results.push(unchanged.clone());
    let mut churn_rss = Vec::new();
    let mut last = unchanged.clone();
    for round in 0..args.churn_runs {
        fake.with_state(|state| churn(&mut state.directory, round, args.users / 500));
        last = sync(
            &mut spawner,
            &binary,
            &config,
            &state_dir,
            &format!("churn sync {}", round + 1),
        );
        churn_rss.push(last.max_rss_kib);
        eprintln!("{}: {:.2}s", last.label, last.wall.as_secs_f64());
    }
    if args.churn_runs > 0 {
        results.push(last.clone());
    }
    let runs = run_ids(&binary, &config);
    let diff = measure(
        &mut spawner,
        &binary,
        &config,
        &state_dir,
        &["diff", &runs[0], runs.last().expect("runs"), "--json"],
        "diff first → last",
    );
    let show = measure(
        &mut spawner,
        &binary,
        &config,
        &state_dir,
        &["show", "accounts", "--json"],
        "show accounts --json",
    );
    let review_file = work.path().join("review.csv");
    let review = measure(
        &mut spawner,
        &binary,
        &config,
        &state_dir,
        &["review", "--out", &review_file.display().to_string()],
        "review (csv)",
    );
    // A review holds its rows in memory (see the README's Scale section): its cost is per row.
    let review_rows = aksync::output::sheet::read_csv(
        &std::fs::read(&review_file).expect("the review was written"),
    )
    .expect("the review reads back")
    .rows
    .len();
    results.push(diff.clone());
    results.push(show.clone());
    results.push(review.clone());
    fake.shutdown().await;

    println!(
        "\n{} users, {groups} groups, {memberships} memberships; latency {} ms, page size {}, concurrency {}; {} cores\n",
        args.users,
        args.latency_ms,
        args.page_size,
        args.concurrency,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| {:<22} | {:>9} | {:>8} | {:>8} | {:>10} | {:>10} | {:>10} | {:>14} |",
        "step",
        "wall (s)",
        "× raw",
        "CPU (s)",
        "peak RSS",
        "DB in use",
        "DB file",
        "envelope bytes"
    );
    println!("|{}|", ["-"; 8].map(|_| "---").join("|"));
    println!(
        "| {:<22} | {:>9.2} | {:>8} | {:>8} | {:>10} | {:>10} | {:>10} | {:>14} |",
        "raw fetch",
        raw.as_secs_f64(),
        "1.00",
        "",
        "",
        "",
        "",
        ""
    );
    for result in &results {
        println!(
            "| {:<22} | {:>9.2} | {:>8.2} | {:>8.2} | {:>10} | {:>10} | {:>10} | {:>14} |",
            result.label,
            result.wall.as_secs_f64(),
            result.wall.as_secs_f64() / raw.as_secs_f64(),
            result.cpu.as_secs_f64(),
            mib(result.max_rss_kib * 1024),
            mib(result.db_used_bytes),
            mib(result.db_bytes),
            result
                .envelope_bytes
                .map_or_else(String::new, |bytes| bytes.to_string()),
        );
    }

    let ratio = |measured: &Measured| measured.wall.as_secs_f64() / raw.as_secs_f64();
    let peak_churn = churn_rss.iter().copied().max().unwrap_or(0);
    let checks: Vec<(String, bool)> = vec![
        (
            format!("first sync / raw fetch ≤ 1.10 ({:.2})", ratio(&first)),
            ratio(&first) <= 1.10,
        ),
        (
            format!(
                "no-change sync / raw fetch ≤ 1.05 ({:.2})",
                ratio(&unchanged)
            ),
            ratio(&unchanged) <= 1.05,
        ),
        (
            format!(
                "peak RSS of the first sync ≤ 128 MiB ({})",
                mib(first.max_rss_kib * 1024)
            ),
            first.max_rss_kib <= 128 * 1024,
        ),
        (
            format!(
                "no RSS growth across churn runs (first {}, peak {})",
                mib(churn_rss.first().copied().unwrap_or(0) * 1024),
                mib(peak_churn * 1024)
            ),
            churn_rss.is_empty() || peak_churn <= churn_rss[0] + churn_rss[0] / 4,
        ),
        (
            format!(
                "DB in use after the no-change run ≤ 1.01 × after the first ({:.3})",
                unchanged.db_used_bytes as f64 / first.db_used_bytes as f64
            ),
            unchanged.db_used_bytes as f64 <= first.db_used_bytes as f64 * 1.01,
        ),
        (
            format!(
                "DB in use after the churn runs ≤ 2 × after the first ({:.2})",
                last.db_used_bytes as f64 / first.db_used_bytes as f64
            ),
            last.db_used_bytes as f64 <= first.db_used_bytes as f64 * 2.0,
        ),
        (
            format!(
                "aksync diff first → last ≤ 1 s ({:.2}s)",
                diff.wall.as_secs_f64()
            ),
            diff.wall <= Duration::from_secs(1),
        ),
        (
            format!(
                "review / show accounts --json ≤ 5 in time ({:.2})",
                review.wall.as_secs_f64() / show.wall.as_secs_f64()
            ),
            review.wall.as_secs_f64() <= show.wall.as_secs_f64() * 5.0,
        ),
        (
            format!(
                "review peak RSS ≤ show's + 3 KiB per row ({} vs {}, {review_rows} rows)",
                mib(review.max_rss_kib * 1024),
                mib(show.max_rss_kib * 1024)
            ),
            review.max_rss_kib <= show.max_rss_kib + 3 * review_rows as u64,
        ),
        (
            format!(
                "envelope bytes of the no-change run = 0 ({})",
                unchanged.envelope_bytes.unwrap_or(0)
            ),
            unchanged.envelope_bytes == Some(0),
        ),
    ];
    println!();
    for (check, passed) in &checks {
        println!("{} {check}", if *passed { "PASS" } else { "FAIL" });
    }
    if args.keep {
        eprintln!("kept the config and state in {}", work.keep().display());
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The generated directory grown to the benchmark's shape: ~N/50 groups nested under the
/// standard ones, and 2–3 direct memberships per person.
fn directory(users: usize) -> Directory {
    let mut directory = Directory::generate(SEED, users);
    let roots: Vec<String> = directory.groups.keys().cloned().collect();
    let mut added: Vec<String> = Vec::new();
    for index in 0..(users / 50).max(1) {
        // Every third group nests under an earlier generated one, the rest under a root.
        let parent = if index % 3 == 2 && !added.is_empty() {
            added[index / 3 % added.len()].clone()
        } else {
            roots[index % roots.len()].clone()
        };
        added.push(directory.add_group(&format!("team-{index}"), &[parent.as_str()], false));
    }
    for (position, user) in directory.users.values_mut().enumerate() {
        let wanted = 2 + position % 2;
        for offset in 0..wanted {
            let group = &added[(position * 7 + offset * 13) % added.len()];
            if user.groups.len() < wanted && !user.groups.contains(group) {
                user.groups.push(group.clone());
            }
        }
    }
    directory
}

/// `5 × each` records change: `each` creates, deletes, deactivations, attribute changes and
/// group moves (`users / 500` each is 1% of the directory).
fn churn(directory: &mut Directory, round: usize, each: usize) {
    let each = each.max(1);
    let groups: Vec<String> = directory
        .groups
        .values()
        .filter(|group| group.name.starts_with("team-"))
        .map(|group| group.pk.clone())
        .collect();
    for index in 0..each {
        let pk = directory.add_user(&format!("churn.{round}.{index}"), "internal");
        if let Some(user) = directory.users.get_mut(&pk) {
            user.groups
                .push(groups[(round + index) % groups.len()].clone());
        }
    }
    // People only: the token's own service account and the admin stay.
    let people = |directory: &Directory| -> Vec<i64> {
        directory
            .users
            .values()
            .filter(|user| user.user_type == "internal" && user.username != "akadmin")
            .map(|user| user.pk)
            .collect()
    };
    let pks = people(directory);
    let pick = |offset: usize| pks[(round * 7919 + offset * 104_729) % pks.len()];
    for index in 0..each {
        let pk = pick(index);
        directory.users.remove(&pk);
    }
    let pks = people(directory);
    let pick = |offset: usize| pks[(round * 6007 + offset * 7_927) % pks.len()];
    for index in 0..each {
        if let Some(user) = directory.users.get_mut(&pick(index)) {
            user.is_active = false;
        }
        if let Some(user) = directory.users.get_mut(&pick(each + index)) {
            user.attributes["title"] = format!("Title {round}").into();
        }
        if let Some(user) = directory.users.get_mut(&pick(2 * each + index)) {
            user.groups = vec![groups[(round * 31 + index) % groups.len()].clone()];
        }
    }
}

/// The ledger over a long history: see the module's doc.
async fn ledger(args: Args, mut spawner: Spawner) {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_aksync"));
    let per_run = args.users / 5000;
    eprintln!("generating {} users…", args.users);
    let fake = FakeAuthentik::start(directory(args.users))
        .await
        .expect("fake starts");
    fake.with_state(|state| state.latency = Duration::from_millis(args.latency_ms));
    let work = tempfile::tempdir().expect("a temporary directory");
    let config = write_config_with(work.path(), &fake.base_url(), &args, true);
    let state_dir = work.path().join("state");
    let first = sync(&mut spawner, &binary, &config, &state_dir, "first sync");
    let unchanged = sync(&mut spawner, &binary, &config, &state_dir, "no-change sync");
    let (debug_wall, digest_seconds) = no_change_with_debug_log(&binary, &config);
    for round in 0..args.ledger_runs {
        fake.with_state(|state| churn(&mut state.directory, round, per_run));
        let run = measure(
            &mut spawner,
            &binary,
            &config,
            &state_dir,
            &["sync"],
            "churn",
        );
        if (round + 1) % 50 == 0 {
            eprintln!(
                "{} of {} churn runs; the last took {:.2}s",
                round + 1,
                args.ledger_runs,
                run.wall.as_secs_f64()
            );
        }
    }
    fake.shutdown().await;
    let runs = run_ids(&binary, &config);
    let period = measure(
        &mut spawner,
        &binary,
        &config,
        &state_dir,
        &["report", "latest", "--from", &runs[0], "--format", "json"],
        "period report, every run",
    );
    let history = measure(
        &mut spawner,
        &binary,
        &config,
        &state_dir,
        &["history", "churn.1.0"],
        "history of one account",
    );
    let verify = measure(
        &mut spawner,
        &binary,
        &config,
        &state_dir,
        &["verify"],
        "verify, every run",
    );

    // The same number of events in one run, in a history of its own.
    let events = per_run.max(1) * args.ledger_runs;
    let one_fake = FakeAuthentik::start(directory(args.users))
        .await
        .expect("fake starts");
    let one_work = tempfile::tempdir().expect("a temporary directory");
    let one_config = write_config_with(one_work.path(), &one_fake.base_url(), &args, true);
    let one_state = one_work.path().join("state");
    sync(&mut spawner, &binary, &one_config, &one_state, "first sync");
    one_fake.with_state(|state| churn(&mut state.directory, 0, events));
    sync(
        &mut spawner,
        &binary,
        &one_config,
        &one_state,
        "one big run",
    );
    one_fake.shutdown().await;
    let one = measure(
        &mut spawner,
        &binary,
        &one_config,
        &one_state,
        &["report", "latest", "--format", "json"],
        "report of one run, same events",
    );

    println!(
        "
{} users; {} runs of {} changes each ({} in all); latency {} ms; {} cores
",
        args.users,
        args.ledger_runs,
        5 * per_run.max(1),
        5 * events,
        args.latency_ms,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| {:<32} | {:>9} | {:>8} | {:>10} | {:>10} |",
        "step", "wall (s)", "CPU (s)", "peak RSS", "DB in use"
    );
    println!("|{}|", ["-"; 5].map(|_| "---").join("|"));
    for result in [&first, &unchanged, &period, &one, &history, &verify] {
        println!(
            "| {:<32} | {:>9.2} | {:>8.2} | {:>10} | {:>10} |",
            result.label,
            result.wall.as_secs_f64(),
            result.cpu.as_secs_f64(),
            mib(result.max_rss_kib * 1024),
            mib(result.db_used_bytes),
        );
    }
    let seconds = |measured: &Measured| measured.wall.as_secs_f64();
    let digest_share = digest_seconds / debug_wall.as_secs_f64();
    let checks = [
        (
            format!(
                "period report over every run ≤ 3 s ({:.2}s)",
                seconds(&period)
            ),
            seconds(&period) <= 3.0,
        ),
        (
            format!(
                "period report ≤ 3 × the report of one run with the same events ({:.2})",
                seconds(&period) / seconds(&one)
            ),
            seconds(&period) <= 3.0 * seconds(&one),
        ),
        (
            format!("history of one account ≤ 0.2 s ({:.2}s)", seconds(&history)),
            seconds(&history) <= 0.2,
        ),
        (
            format!("verify over every run ≤ 10 s ({:.2}s)", seconds(&verify)),
            seconds(&verify) <= 10.0,
        ),
        (
            format!(
                "the snapshot digest adds ≤ 2 % to a no-change run ({:.3} %)",
                digest_share * 100.0
            ),
            digest_share <= 0.02,
        ),
    ];
    println!();
    for (check, passed) in &checks {
        println!("{} {check}", if *passed { "PASS" } else { "FAIL" });
    }
    if args.keep {
        eprintln!("kept the config and state in {}", work.keep().display());
    }
}

/// Another no-change sync, with its debug log read: its wall time, and what its snapshot
/// digest took (the `snapshot digest` line's seconds).
fn no_change_with_debug_log(binary: &Path, config: &Path) -> (Duration, f64) {
    let started = Instant::now();
    let output = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("sync")
        .env("AKSYNC_LOG", "debug")
        .env_remove("AKSYNC_CONFIG")
        .output()
        .expect("aksync sync");
    let wall = started.elapsed();
    assert!(output.status.success(), "the no-change sync failed");
    let log = String::from_utf8_lossy(&output.stderr);
    let digest = log
        .lines()
        .find(|line| line.contains("snapshot digest"))
        .and_then(|line| line.split("seconds=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|seconds| seconds.parse::<f64>().ok())
        .expect("the sync logs what its snapshot digest took");
    (wall, digest)
}

fn write_config(dir: &Path, base_url: &str, args: &Args) -> PathBuf {
    write_config_with(dir, base_url, args, false)
}

/// The benchmark's config; `reports`: every format but PDF after every run, as by default.
fn write_config_with(dir: &Path, base_url: &str, args: &Args, reports: bool) -> PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, READER_TOKEN).expect("token written");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("token private");
    let config = dir.join("config.toml");
    // The churn is a deliberate 1% a run, leavers included: no quarantine for it.
    let text = format!(
        "state_dir = {:?}\n{}\n\n[sources.{SOURCE}]\nbase_url = {base_url:?}\ntoken_file = \"token\"\npage_size = {}\nconcurrency = {}\nmax_leaver_percent = 100.0\nmax_leavers = 1000000\nmax_membership_removal_percent = 100.0\nmax_membership_removals = 1000000\n",
        dir.join("state").display().to_string(),
        if reports { "" } else { "output.reports = []" },
        args.page_size,
        args.concurrency
    );
    std::fs::write(&config, text).expect("config written");
    config
}

/// Every page a sync needs, through one pool of `concurrency` requests like aksync's,
/// bodies read and dropped.
async fn raw_fetch(base_url: &str, args: &Args) -> Duration {
    let client = reqwest::Client::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let get = |path: String, params: Vec<(String, String)>| {
        let client = client.clone();
        let slots = Arc::clone(&slots);
        let url = format!("{base_url}/api/v3/{path}");
        async move {
            let _slot = slots.acquire_owned().await.expect("open pool");
            let response = client
                .get(url)
                .query(&params)
                .bearer_auth(READER_TOKEN)
                .send()
                .await
                .expect("the fake answers");
            response.bytes().await.expect("a body")
        }
    };
    let started = Instant::now();
    let page = |kind: ListKind, number: u64| {
        let mut params: Vec<(String, String)> = kind
            .params()
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        params.push(("page".into(), number.to_string()));
        params.push(("page_size".into(), args.page_size.to_string()));
        get(kind.path().to_string(), params)
    };
    let (_, _, users, groups) = tokio::join!(
        get("core/users/me/".into(), vec![]),
        get("admin/version/".into(), vec![]),
        page(ListKind::Users, 1),
        page(ListKind::Groups, 1)
    );
    let total = |body: &[u8]| -> u64 {
        let value: serde_json::Value = serde_json::from_slice(body).expect("a page");
        value["pagination"]["total_pages"]
            .as_u64()
            .expect("total_pages")
    };
    let mut rest = Vec::new();
    for (kind, first) in [(ListKind::Users, &users), (ListKind::Groups, &groups)] {
        for number in 2..=total(first) {
            rest.push(page(kind, number));
        }
    }
    futures::future::join_all(rest).await;
    started.elapsed()
}

fn sync(
    spawner: &mut Spawner,
    binary: &Path,
    config: &Path,
    state_dir: &Path,
    label: &str,
) -> Measured {
    let mut measured = measure(spawner, binary, config, state_dir, &["sync"], label);
    measured.envelope_bytes = newest_envelope(state_dir).map(|path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.len())
            .unwrap_or(0)
    });
    measured
}

fn newest_envelope(state_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(state_dir.join("envelopes").join(SOURCE))
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .max()
}

/// Runs the binary to completion (through the spawner), output discarded.
fn measure(
    spawner: &mut Spawner,
    binary: &Path,
    config: &Path,
    state_dir: &Path,
    args: &[&str],
    label: &str,
) -> Measured {
    let mut command = vec![
        binary.display().to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
    command.extend(args.iter().map(|arg| arg.to_string()));
    let started = Instant::now();
    let (code, max_rss_kib, cpu) = spawner.run(&command);
    let wall = started.elapsed();
    assert_eq!(code, 0, "{label}: aksync {args:?} failed");
    let usage = aksync::store::Store::open(&state_dir.join("aksync.redb"), Duration::from_secs(10))
        .and_then(|store| store.usage())
        .expect("the database opens");
    Measured {
        label: label.to_string(),
        wall,
        max_rss_kib,
        cpu: Duration::from_secs_f64(cpu),
        db_bytes: usage.file_bytes,
        db_used_bytes: usage.used_bytes,
        envelope_bytes: None,
    }
}

fn run_ids(binary: &Path, config: &Path) -> Vec<String> {
    let output = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(["runs", "--json"])
        .output()
        .expect("aksync runs");
    let runs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("runs as JSON");
    let mut ids: Vec<String> = runs
        .as_array()
        .expect("a list")
        .iter()
        .filter(|run| run["status"] == "complete")
        .map(|run| run["run_id"].as_str().expect("an id").to_string())
        .collect();
    ids.reverse();
    ids
}
