//! Crash safety (issue 17): `aksync sync` killed with SIGKILL at pseudo-random points of its
//! run, many times over, never leaves the state directory in a state that the next process
//! trips on or that says something untrue.
//!
//! Each iteration changes the directory (joiners, leavers, movers), starts a sync and kills
//! it after a delay drawn from the seed, spread from 0 to the duration of a whole sync
//! (measured first), half of them after the fetch so that they hit the plan, the envelope
//! file, the commit and the reports. After each kill: the database opens; every run it lists
//! is complete and reads back in full, with the counts its record claims; the kill added at
//! most the one run it was killed in, and none before its plan was done; every complete
//! run's envelope file is there and hashes as the run recorded; `aksync verify` passes. The
//! next sync succeeds, stores the directory as it is, and repairs what the kill left: every
//! run that changed something has its reports, recorded in the ledger, and the outbox holds
//! the envelope files of the stored runs only (none of the killed run's, nor its temporary
//! file).
//!
//! `AKSYNC_CRASH_SEED=N` repeats a failed seed's delays and directory changes (where the
//! kills land still depends on the machine's pace).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aksync::demo::fake::Directory;
use aksync::run::record::RecordKind;
use aksync::store::{RunRecord, RunStatus, Store};
use common::{assert_accounts_match, TestEnv};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Kills, each followed by a sync that must succeed.
const ITERATIONS: usize = 30;
/// Enough people that a sync lasts long enough to be killed anywhere in it.
const PEOPLE: usize = 800;
/// The report files every run that changed something gets (the default formats).
const REPORT_EXTENSIONS: [&str; 5] = ["json", "md", "csv", "html", "manifest.json"];

/// Where a killed sync was, from its debug log: the last step it logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Before the last page arrived.
    Fetch,
    /// Planning: classifying records, writing the envelope file and the planned writes.
    Plan,
    /// Between the plan and the end of the commit (the envelope file moved into place, the
    /// write transaction).
    Commit,
    /// After the commit: reports, their ledger entry, retention, repair.
    Reports,
    /// The sync had exited before the kill.
    Finished,
}

impl Phase {
    fn of(log: &str) -> Phase {
        let logged = |message: &str| log.lines().any(|line| line.contains(message));
        if logged("run finished") {
            Phase::Finished
        } else if logged(" committed ") {
            Phase::Reports
        } else if logged(" planned ") {
            Phase::Commit
        } else if logged(" fetched ") {
            Phase::Plan
        } else {
            Phase::Fetch
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_killed_anywhere_leave_a_store_that_verifies_and_syncs_on() {
    let seed = std::env::var("AKSYNC_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("crash test: AKSYNC_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let env = TestEnv::start(PEOPLE).await;
    env.sync_ok();

    // The first sync with changes, as every iteration makes, timed; each later sync that is
    // not killed times the next kill in turn, as the machine's pace changes.
    env.fake
        .with_state(|state| churn(&mut state.directory, &mut rng, 0));
    let log_path = env.dir.path().join("sync.log");
    let mut pace = timed_sync(
        &env,
        &log_path,
        &format!("seed {seed}, the first timed sync"),
    );
    let mut checked = check_runs(&env, &[], &format!("seed {seed}, before the kills"));
    let mut phases = BTreeMap::<Phase, usize>::new();
    for iteration in 1..=ITERATIONS {
        env.fake
            .with_state(|state| churn(&mut state.directory, &mut rng, iteration));
        let runs_before = checked.len();
        let mut sync = spawn_sync(&env, &log_path);
        // Even iterations are killed anywhere in the run, from its start; odd ones after the
        // fetch, where the plan, the envelope file, the commit and the reports are, which
        // a delay from the start rarely hits exactly (the fetch is most of a run and its
        // length varies with the machine's load).
        let after_fetch = iteration % 2 == 1;
        let span = match after_fetch {
            true => pace.whole.saturating_sub(pace.fetch),
            false => pace.whole,
        };
        let delay = span.mul_f64(rng.gen::<f64>() * 1.05);
        let mut from = Instant::now();
        while after_fetch && !logged_fetch(&log_path) && sync.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
            from = Instant::now();
        }
        // The delay is the kill point itself, not a wait for a condition: only an exit
        // before it ends it early.
        while from.elapsed() < delay && sync.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        sync.kill().unwrap(); // SIGKILL; a no-op if it has exited
        let status = sync.wait().unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap();
        let phase = Phase::of(&log);
        *phases.entry(phase).or_default() += 1;
        let origin = if after_fetch {
            "its fetch"
        } else {
            "its start"
        };
        let context = format!(
            "seed {seed}, iteration {iteration}: killed {delay:?} after {origin}, in {phase:?} ({status})"
        );
        eprintln!("crash test: {context}");

        checked = check_runs(&env, &checked, &context);
        let added = checked.len() - runs_before;
        match phase {
            Phase::Fetch | Phase::Plan => assert_eq!(
                added, 0,
                "{context}: a run killed before its commit was stored: {log}"
            ),
            Phase::Commit => assert!(added <= 1, "{context}: {added} runs stored"),
            Phase::Reports | Phase::Finished => {
                assert_eq!(
                    added, 1,
                    "{context}: the committed run is not listed: {log}"
                )
            }
        }
        env.verify_ok(&context);

        // The next sync, with changes of its own, succeeds, stores the directory as it is
        // and repairs what the kill left.
        env.fake
            .with_state(|state| churn(&mut state.directory, &mut rng, ITERATIONS + iteration));
        pace = timed_sync(&env, &log_path, &format!("{context}, the next sync"));
        checked = check_runs(&env, &checked, &format!("{context}, after the next sync"));
        assert_eq!(checked.len(), runs_before + added + 1, "{context}");
        let latest = checked.last().unwrap();
        let (users, groups) = env
            .fake
            .with_state(|state| (state.directory.users.len(), state.directory.groups.len()));
        assert_eq!(
            (latest.counts.accounts, latest.counts.groups),
            (users as u64, groups as u64),
            "{context}: the next sync did not store the directory as it is"
        );
        check_reports(&env, &checked, &context);
        assert_no_orphan_envelopes(&env, &checked, &context);
    }
    // The next kill's checks verify what each next sync repaired; the last one's, here.
    env.verify_ok(&format!("seed {seed}, after the last sync"));

    // What the last sync stored is the directory, field by field.
    let directory = env.fake.with_state(|state| state.directory.clone());
    assert_accounts_match(&env.show_json("accounts", "latest"), &directory);
    eprintln!(
        "crash test: seed {seed}, kills by phase {phases:?}, {:?} in all",
        started.elapsed()
    );
    // Both sides of the commit were hit, or the test proved little.
    let before_commit = phases.get(&Phase::Fetch).copied().unwrap_or(0);
    let after_fetch: usize = [Phase::Plan, Phase::Commit, Phase::Reports]
        .iter()
        .map(|phase| phases.get(phase).copied().unwrap_or(0))
        .sum();
    assert!(
        before_commit > 0 && after_fetch > 0,
        "seed {seed}: the kills did not spread over the run: {phases:?}"
    );
}

/// `aksync sync` with its debug log in `log` (the plan's and the commit's lines).
fn spawn_sync(env: &TestEnv, log: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_aksync"))
        .arg("--config")
        .arg(&env.config_path)
        .arg("sync")
        .env_remove("AKSYNC_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env("AKSYNC_LOG", "warn,aksync=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("aksync starts")
}

/// How long a whole sync took, from spawn to exit, and until it logged the end of its fetch.
struct Pace {
    whole: Duration,
    fetch: Duration,
}

/// A sync that must succeed, timed.
fn timed_sync(env: &TestEnv, log_path: &Path, context: &str) -> Pace {
    let started = Instant::now();
    let mut sync = spawn_sync(env, log_path);
    let mut fetched = None;
    let status = loop {
        if let Some(status) = sync.try_wait().unwrap() {
            break status;
        }
        if fetched.is_none() && logged_fetch(log_path) {
            fetched = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let whole = started.elapsed();
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(status.success(), "{context}: the sync failed: {log}");
    Pace {
        whole,
        fetch: fetched.unwrap_or(whole),
    }
}

/// Whether the sync logging to `log_path` has logged the end of its fetch.
fn logged_fetch(log_path: &Path) -> bool {
    std::fs::read_to_string(log_path).is_ok_and(|log| log.contains(" fetched "))
}

/// A few joiners, a leaver, a deactivation and movers (an attribute, a group), drawn from
/// `rng`; the token's own service account and the admin stay.
fn churn(directory: &mut Directory, rng: &mut StdRng, round: usize) {
    let groups: Vec<String> = directory.groups.keys().cloned().collect();
    for index in 0..rng.gen_range(1..=3) {
        let pk = directory.add_user(&format!("joiner.{round}.{index}"), "internal");
        let group = groups[rng.gen_range(0..groups.len())].clone();
        directory.users.get_mut(&pk).unwrap().groups.push(group);
    }
    let people: Vec<i64> = directory
        .users
        .values()
        .filter(|user| user.user_type == "internal" && user.username != "akadmin")
        .map(|user| user.pk)
        .collect();
    let mut person = || people[rng.gen_range(0..people.len())];
    let (leaver, deactivated, retitled, regrouped) = (person(), person(), person(), person());
    directory.users.remove(&leaver);
    if let Some(user) = directory.users.get_mut(&deactivated) {
        user.is_active = false;
    }
    if let Some(user) = directory.users.get_mut(&retitled) {
        user.attributes["title"] = format!("Title {round}").into();
    }
    let group = groups[rng.gen_range(0..groups.len())].clone();
    if let Some(user) = directory.users.get_mut(&regrouped) {
        user.groups = vec![group];
    }
}

/// Checks the runs of source `corp` against what was checked before (`checked`, oldest
/// first) and returns them all, oldest first: the database opens, every run is complete,
/// the runs checked before are still there as they were, each new one reads back in full
/// with the counts its record claims, and every complete run's envelope file hashes as it
/// recorded.
fn check_runs(env: &TestEnv, checked: &[RunRecord], context: &str) -> Vec<RunRecord> {
    // First as a query opens it (without the write lock, unless redb must repair the file).
    let listed = env.aksync(&["runs", "--json"]);
    assert_eq!(
        listed.code, 0,
        "{context}: `aksync runs` failed: {}",
        listed.stderr
    );
    let listed = listed.json().as_array().expect("an array").len();
    let store = Store::open(&env.database(), Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("{context}: the database does not open: {error}"));
    let mut runs = store
        .runs(Some("corp"))
        .unwrap_or_else(|error| panic!("{context}: the runs do not read: {error}"));
    runs.reverse();
    assert_eq!(
        listed,
        runs.len(),
        "{context}: `aksync runs` lists other runs"
    );
    for run in &runs {
        assert_eq!(
            run.status,
            RunStatus::Complete,
            "{context}: run {} is {:?}: {:?}",
            run.run_id,
            run.status,
            run.error
        );
    }
    let ids = |runs: &[RunRecord]| {
        runs.iter()
            .map(|run| run.run_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&runs[..checked.len().min(runs.len())]),
        ids(checked),
        "{context}: the runs before the kill changed"
    );
    for run in &runs[checked.len()..] {
        assert_reads_back(&store, run, context);
    }
    drop(store);
    for run in &runs {
        let summary = run.envelopes.as_ref().unwrap_or_else(|| {
            panic!(
                "{context}: complete run {} records no envelope file",
                run.run_id
            )
        });
        let path = aksync::output::envelope::envelope_path(&env.state_dir(), "corp", &run.run_id);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("{context}: {}: {error}", path.display()));
        assert_eq!(
            aksync::output::envelope::sha256_hex(&bytes),
            summary.sha256,
            "{context}: the envelope file of run {} is not the one it recorded",
            run.run_id
        );
    }
    runs
}

/// Every record of every kind that `run` saw reads back, as many as its record claims.
fn assert_reads_back(store: &Store, run: &RunRecord, context: &str) {
    let reader = store.reader().unwrap();
    for kind in RecordKind::ALL {
        let mut read = 0u64;
        let records = reader
            .records_at(run, kind)
            .unwrap_or_else(|error| panic!("{context}: run {}: {error}", run.run_id));
        for record in records {
            if let Err(error) = record {
                panic!(
                    "{context}: run {}: a {kind:?} does not read: {error}",
                    run.run_id
                );
            }
            read += 1;
        }
        let claimed = match kind {
            RecordKind::Account => run.counts.accounts,
            RecordKind::Group => run.counts.groups,
            RecordKind::Membership => run.counts.memberships,
        };
        assert_eq!(
            read, claimed,
            "{context}: run {} claims {claimed} {kind:?} records and reads back {read}",
            run.run_id
        );
    }
}

/// Every run that changed something has its report files, and a `reports` entry in the
/// ledger (which `aksync verify` checks them against).
fn check_reports(env: &TestEnv, runs: &[RunRecord], context: &str) {
    let store = env.store();
    let reader = store.reader().unwrap();
    let dir = env.state_dir().join("reports/corp");
    for run in runs.iter().filter(|run| run.changed_anything()) {
        for extension in REPORT_EXTENSIONS {
            let path = dir.join(format!("{}.{extension}", run.run_id));
            assert!(path.exists(), "{context}: {} is missing", path.display());
        }
        let recorded = aksync::ledger::read::report_files(&reader, "corp", &run.run_id)
            .unwrap_or_else(|error| panic!("{context}: {error}"));
        assert!(
            recorded.is_some(),
            "{context}: the reports of run {} are not in the ledger",
            run.run_id
        );
    }
}

/// The outbox holds the envelope files of the stored runs and nothing else: a file a killed
/// run wrote before its commit, or while it planned, is not taken for a run's.
fn assert_no_orphan_envelopes(env: &TestEnv, runs: &[RunRecord], context: &str) {
    let mut found: Vec<String> = std::fs::read_dir(env.state_dir().join("envelopes/corp"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let expected: Vec<String> = runs
        .iter()
        .map(|run| format!("{}.jsonl", run.run_id))
        .collect();
    assert_eq!(found, expected, "{context}: the outbox holds other files");
}
