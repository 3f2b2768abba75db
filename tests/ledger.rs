//! The evidence ledger end to end, as an auditor tries it: what a run found stays what it
//! found, whatever settings, volatile values and retention do later; one event is counted in
//! one place in every format; and `aksync verify` notices any change to what was written.

mod common;

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable};

use aksync::demo::fake::Directory;
use common::{copy_dir, run_ids, TestEnv};
use serde_json::Value;

/// The people the scenarios pick: active, internal, with groups, not the token's or the
/// admin's own account.
fn people(directory: &Directory) -> Vec<String> {
    directory
        .users
        .values()
        .filter(|user| {
            user.is_active
                && user.user_type == "internal"
                && user.path == "users"
                && !user.groups.is_empty()
                && user.username != "akadmin"
        })
        .map(|user| user.username.clone())
        .collect()
}

fn append_config(env: &TestEnv, text: &str) {
    let mut config = std::fs::read_to_string(&env.config_path).unwrap();
    config.push_str(text);
    std::fs::write(&env.config_path, config).unwrap();
}

fn report_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut command = vec!["report"];
    command.extend_from_slice(args);
    command.extend_from_slice(&["--format", "json"]);
    let run = env.aksync(&command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()
}

/// The string `field` of each item of a JSON array.
fn field_of_each<'a>(items: &'a Value, field: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

fn leaver<'a>(report: &'a Value, username: &str) -> &'a Value {
    report["leavers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|leaver| leaver["username"] == username)
        .unwrap_or_else(|| panic!("no leaver {username} in {}", report["leavers"]))
}

/// The report a run wrote at the time and the report of the same run built three runs
/// later, after other people logged in and the leaver's volatile values moved, say the
/// same about the departure: the login, Authentik's last update and the warning are what
/// the run saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leavers_evidence_is_the_same_in_a_report_built_later() {
    let env = TestEnv::start(20).await;
    env.write_config(aksync::demo::fake::READER_TOKEN, "sla = \"1h\"");
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    let cast = people(&directory);
    let (gone, other) = (cast[0].clone(), cast[1].clone());
    env.fake.with_state(|state| {
        let user = state.directory.user_by_username_mut(&gone).unwrap();
        user.is_active = false;
        // A login after the run that last saw the account active: the warning.
        user.last_login = Some("2099-01-01T00:00:00Z".into());
        user.last_updated = "2099-01-01T00:00:01Z".into();
    });
    env.sync_ok();
    let departure = run_ids(&env)[1].clone();
    let written = std::fs::read_to_string(
        env.state_dir()
            .join("reports/corp")
            .join(format!("{departure}.json")),
    )
    .unwrap();
    let written: Value = serde_json::from_str(&written).unwrap();
    let at_the_time = leaver(&written, &gone).clone();
    assert_eq!(at_the_time["last_login_at"], "2099-01-01T00:00:00Z");
    assert_eq!(
        at_the_time["authentik_last_updated"],
        "2099-01-01T00:00:01Z"
    );
    assert_eq!(at_the_time["login_after_last_seen"], true);
    for round in 0..3 {
        env.fake.with_state(|state| {
            let stamp = format!("2099-02-0{}T00:00:00Z", round + 1);
            state
                .directory
                .user_by_username_mut(&other)
                .unwrap()
                .last_login = Some(stamp.clone());
            let left = state.directory.user_by_username_mut(&gone).unwrap();
            left.last_login = Some(stamp.clone());
            left.last_updated = stamp;
        });
        env.sync_ok();
    }
    let later = report_json(&env, &[&departure]);
    assert_eq!(later["period"]["report_id"], written["period"]["report_id"]);
    let first = run_ids(&env)[0].clone();
    // The period over every run, built after the later logins, says the same too.
    let period = report_json(&env, &["latest", "--from", &first]);
    for rebuilt in [leaver(&later, &gone), leaver(&period, &gone)] {
        for field in [
            "last_login_at",
            "authentik_last_updated",
            "login_after_last_seen",
            "last_seen_active_at",
            "detected_at",
            "latency_seconds",
            "within_sla",
            "groups_at_departure",
            "privileged_at_departure",
        ] {
            assert_eq!(rebuilt[field], at_the_time[field], "{field}");
        }
    }
}

/// Two movers, then `ignore_fields` that would hide their change, then `privileged_groups`
/// that would change who counts as privileged: the diff, the period report, its id and
/// `history` still say what the runs found, and the settings change is an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_results_do_not_follow_todays_settings() {
    let env = TestEnv::start(20).await;
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    let cast = people(&directory);
    env.fake.with_state(|state| {
        for name in &cast[..2] {
            state
                .directory
                .user_by_username_mut(name)
                .unwrap()
                .attributes["department"] = "Audit".into();
        }
    });
    env.sync_ok();
    let ids = run_ids(&env);
    let (r1, r2) = (ids[0].clone(), ids[1].clone());
    let movers = |diff: &Value| diff["movers"].as_array().unwrap().len();
    assert_eq!(movers(&env.aksync(&["diff", &r1, &r2, "--json"]).json()), 2);
    let before = report_json(&env, &[&r2, "--from", &r1]);

    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "ignore_fields = [\"attributes.department\"]\nprivileged_groups = [\"Finance\"]",
    );
    env.sync_ok();
    let r3 = run_ids(&env)[2].clone();
    assert_eq!(movers(&env.aksync(&["diff", &r1, &r2, "--json"]).json()), 2);
    let after = report_json(&env, &[&r2, "--from", &r1]);
    assert_eq!(after["period"]["report_id"], before["period"]["report_id"]);
    for key in [
        "movers",
        "privileged_accounts",
        "roll_forward",
        "leavers",
        "latency",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(after["period"]["settings"], before["period"]["settings"]);
    for mover in &cast[..2] {
        let history = env.aksync(&["history", mover, "--json"]).json();
        let events = field_of_each(&history[0]["events"], "event");
        // Changing ignore_fields is a settings event, never a new baseline (issue 16).
        assert_eq!(
            events,
            ["baseline", "moved", "settings_changed"],
            "{history}"
        );
        let moved = &history[0]["events"][1];
        assert_eq!(moved["run_id"], r2.as_str(), "{history}");
        assert!(moved.to_string().contains("Audit"), "{history}");
    }
    // A diff of runs that are not consecutive replays them, and says with which settings.
    let replayed = env.aksync(&["diff", &r1, &r3]);
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert!(
        replayed.stderr.contains("are not consecutive")
            && replayed
                .stderr
                .contains(&format!("with the settings run {r3} recorded")),
        "{}",
        replayed.stderr
    );
    // r2's envelope file, written before department became ignored, rebuilds under r2's own
    // settings byte for byte.
    let rebuilt = env.aksync(&["envelopes", &r2, "--rebuild"]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    let history = env.aksync(&["history", &cast[0], "--json"]).json();
    let settings = &history[0]["events"][2];
    assert_eq!(settings["run_id"], r3.as_str());
    let fields = field_of_each(&settings["changes"], "field");
    assert_eq!(fields, ["ignore_fields", "privileged_groups"]);
    let text = env.aksync(&["history", &cast[0]]).stdout;
    assert!(
        text.contains("settings changed") && text.contains(&format!("(run {r3})")),
        "{text}"
    );
    // The change of settings is an event of the run that first ran with them.
    let period = report_json(&env, &["latest", "--from", &r1]);
    let changes = &period["period"]["settings_changes"];
    assert_eq!(changes[0]["run_id"], r3.as_str(), "{changes}");
    let keys = field_of_each(&changes[0]["changes"], "key");
    assert_eq!(keys, ["ignore_fields", "privileged_groups"]);
    let csv = env.aksync(&["report", "latest", "--from", &r1, "--format", "csv"]);
    assert!(
        csv.stdout.contains(&format!(",{r3},")) && csv.stdout.contains("settings_changed"),
        "{}",
        csv.stdout
    );
    let runs = env.aksync(&["runs"]);
    let line = runs
        .stdout
        .lines()
        .find(|line| line.starts_with(&r3))
        .unwrap();
    assert!(
        line.contains("settings changed: ignore_fields, privileged_groups"),
        "{}",
        runs.stdout
    );
}

/// A group's parent changed to the admins and back: every member gains and loses superuser
/// rights without any change of their own. They are grants and removals and one group
/// change each way, not also movers, and every format counts the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reparented_and_back_is_grants_and_removals_not_movers() {
    let env = TestEnv::start(40).await;
    env.sync_ok();
    let (admins, finance) = env.fake.with_state(|state| {
        let directory = &state.directory;
        (
            directory
                .group_by_name("authentik Admins")
                .unwrap()
                .pk
                .clone(),
            directory.group_by_name("Finance").unwrap().pk.clone(),
        )
    });
    let members = env.fake.with_state(|state| {
        state
            .directory
            .users
            .values()
            .filter(|user| user.is_active && user.groups.contains(&finance))
            .filter(|user| !user.groups.contains(&admins))
            .count()
    });
    assert!(members >= 2, "Finance has {members} active members");
    for parents in [vec![admins.clone()], vec![]] {
        env.fake.with_state(|state| {
            state.directory.groups.get_mut(&finance).unwrap().parents = parents.clone();
        });
        env.sync_ok();
    }
    let first = run_ids(&env)[0].clone();
    let report = report_json(&env, &["latest", "--from", &first]);
    let count = |key: &str| report[key].as_array().unwrap().len();
    assert_eq!(count("movers"), 0, "{}", report["movers"]);
    assert_eq!(count("privilege_granted"), members);
    assert_eq!(count("privilege_removed"), members);
    assert!(report["privilege_granted"]
        .as_array()
        .unwrap()
        .iter()
        .all(|grant| grant["reason"] == "group_changed"));
    assert_eq!(report["period"]["summary"]["movers"], 0);
    assert_eq!(report["period"]["summary"]["group_changes"], 2);
    let csv = env.aksync(&["report", "latest", "--from", &first, "--format", "csv"]);
    let rows = |event: &str| {
        csv.stdout
            .lines()
            .filter(|line| line.split(',').nth(3) == Some(event))
            .count()
    };
    assert_eq!(rows("mover"), 0);
    assert_eq!(rows("privilege_granted"), members);
    assert_eq!(rows("privilege_removed"), members);
    let markdown = env.aksync(&["report", "latest", "--from", &first, "--format", "md"]);
    assert!(
        markdown.stdout.contains("| [Movers](#movers) | 0 |"),
        "{}",
        markdown.stdout
    );
    assert!(markdown.stdout.contains(&format!(
        "| [Privilege granted](#privilege-granted) | {members} |"
    )));
    let html = env.aksync(&["report", "latest", "--from", &first, "--format", "html"]);
    assert!(
        html.stdout
            .contains(&format!("Privilege granted ({members})")),
        "{}",
        html.stdout
    );
    assert!(html.stdout.contains("Movers (0)"));
}

/// Roles are access: a role given to one account is one mover, one new version and one
/// envelope, and with `privileged_roles` a privilege grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_only_change_is_one_mover_one_version_one_envelope() {
    let env = TestEnv::start(20).await;
    let role = env
        .fake
        .with_state(|state| state.directory.add_role("Auditor"));
    // A role held directly is named by its uuid: users list their roles without names.
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        &format!("privileged_roles = [{role:?}]"),
    );
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    let name = people(&directory)[0].clone();
    env.fake.with_state(|state| {
        state.directory.user_by_username_mut(&name).unwrap().roles = vec![role.clone()];
    });
    env.sync_ok();
    let latest = env.store().latest_complete("corp").unwrap().unwrap();
    assert_eq!(latest.versions_written, 1);
    assert_eq!(latest.envelopes.as_ref().unwrap().lines, 1);
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    let movers = diff["movers"].as_array().unwrap();
    assert_eq!(movers.len(), 1);
    assert_eq!(movers[0]["username"], name.as_str());
    assert_eq!(movers[0]["changes"][0]["field"], "roles");
    assert_eq!(
        diff["privilege_granted"][0]["privilege_source"],
        format!("role {role}").as_str()
    );
}

/// A state directory copied, with a config pointing at the copy: each tampering is tried on
/// its own copy.
struct Copy {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
}

fn copy_of(env: &TestEnv) -> Copy {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(env.dir.path(), dir.path());
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &env.dir.path().display().to_string(),
        &dir.path().display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    Copy {
        state: dir.path().join("state"),
        config,
        _dir: dir,
    }
}

const LEDGER: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("ledger");
const RUNS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("runs");
const SOURCE_RUNS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("source_runs");

/// A database opened for writing as aksync opens it, behind its back.
fn database(path: &Path) -> redb::Database {
    redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .create(path)
        .unwrap()
}

/// Rewrites one value of a table of the copy's database.
fn rewrite(
    copy: &Copy,
    table: redb::TableDefinition<&str, &[u8]>,
    key: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) {
    let db = database(&copy.state.join("aksync.redb"));
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(table).unwrap();
        let mut value = table.get(key).unwrap().unwrap().value().to_vec();
        edit(&mut value);
        table.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn verify(copy: &Copy) -> common::Run {
    common::run_binary(Some(&copy.config), &["verify"])
}

/// `verify --report FILE` passes, and says each of `says`.
fn report_verifies(file: &Path, says: &[&str]) {
    let run = common::run_binary(None, &["verify", "--report", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for said in says {
        assert!(run.stdout.contains(said), "{said}: {}", run.stdout);
    }
}

/// `verify` passes on an untouched, signed history, and catches, each with the run it
/// concerns: one byte of a report, of an envelope file, of a ledger entry, of a run record,
/// a deleted run, and a wrong signature. `verify --report` checks a report on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_untouched_and_catches_every_change() {
    let env = TestEnv::start(20).await;
    let key = env.dir.path().join("signing.pem");
    let made = env.aksync(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    append_config(&env, "\n[ledger]\nsigning_key_file = \"signing.pem\"\n");
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    let cast = people(&directory);
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&cast[0])
            .unwrap()
            .is_active = false;
        state.directory.add_user("new.person", "internal");
    });
    env.sync_ok();
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&cast[1])
            .unwrap()
            .attributes["title"] = "Lead".into();
    });
    env.sync_ok();
    let ids = run_ids(&env);
    let middle = ids[1].clone();
    let untouched = env.aksync(&["verify"]);
    assert_eq!(
        untouched.code, 0,
        "{}{}",
        untouched.stdout, untouched.stderr
    );
    assert!(
        untouched.stdout.contains("signed by ed25519:"),
        "{}",
        untouched.stdout
    );
    let public = env.dir.path().join("public.pem");
    let exported = env.aksync(&["keygen", "--public", public.to_str().unwrap()]);
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    let with_key = env.aksync(&["verify", "--public-key", public.to_str().unwrap(), "--json"]);
    assert_eq!(with_key.code, 0, "{}", with_key.stdout);
    assert_eq!(with_key.json()[0]["signed"], with_key.json()[0]["entries"]);

    let report_file = {
        let middle = middle.clone();
        move |state: &Path| state.join("reports/corp").join(format!("{middle}.csv"))
    };
    let envelope_file = {
        let middle = middle.clone();
        move |state: &Path| state.join("envelopes/corp").join(format!("{middle}.jsonl"))
    };
    let seq = env.store().run(&middle).unwrap().ledger_seq.unwrap();
    let entry_key = format!("corp\u{1f}{seq:012}");
    type Tamper = Box<dyn Fn(&Copy)>;
    let middle_key = middle.clone();
    let tamperings: Vec<(&str, Tamper)> = vec![
        (
            "a report byte",
            Box::new(move |copy: &Copy| flip_byte(&report_file(&copy.state), 40)),
        ),
        (
            "an envelope byte",
            Box::new(move |copy: &Copy| flip_byte(&envelope_file(&copy.state), 40)),
        ),
        (
            "a ledger entry byte",
            Box::new({
                let key = entry_key.clone();
                move |copy: &Copy| {
                    rewrite(copy, LEDGER, &key, |value| {
                        *value.last_mut().unwrap() = b' '
                    })
                }
            }),
        ),
        (
            "a run record",
            Box::new({
                let id = middle_key.clone();
                move |copy: &Copy| {
                    rewrite(copy, RUNS, &id, |value| {
                        let mut record: Value = serde_json::from_slice(value).unwrap();
                        record["accounts"] = (record["accounts"].as_u64().unwrap() + 1).into();
                        *value = serde_json::to_vec(&record).unwrap();
                    })
                }
            }),
        ),
        (
            "a deleted run",
            Box::new({
                let id = middle_key.clone();
                move |copy: &Copy| {
                    let db = database(&copy.state.join("aksync.redb"));
                    let txn = db.begin_write().unwrap();
                    txn.open_table(RUNS).unwrap().remove(id.as_str()).unwrap();
                    txn.open_table(SOURCE_RUNS)
                        .unwrap()
                        .remove(format!("corp\u{1f}{id}").as_str())
                        .unwrap();
                    txn.commit().unwrap();
                }
            }),
        ),
        (
            "a wrong signature",
            Box::new({
                let key = entry_key.clone();
                // The row is [seal length][format][digest 32][signed][key id 8][signature 64].
                move |copy: &Copy| {
                    rewrite(copy, LEDGER, &key, |value| {
                        value[1 + 1 + 32 + 1 + 8 + 3] ^= 0x80
                    })
                }
            }),
        ),
    ];
    for (what, tamper) in &tamperings {
        let copy = copy_of(&env);
        tamper(&copy);
        let run = verify(&copy);
        assert_eq!(run.code, 1, "{what}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("DOES NOT VERIFY") && run.stdout.contains(&middle),
            "{what}: {}",
            run.stdout
        );
    }

    // The newest run removed with its entries (its run, its reports): only the chain's head
    // still says they were there.
    let copy = copy_of(&env);
    let last = ids.last().unwrap().clone();
    let last_seq = env.store().run(&last).unwrap().ledger_seq.unwrap();
    {
        let db = database(&copy.state.join("aksync.redb"));
        let txn = db.begin_write().unwrap();
        {
            let mut ledger = txn.open_table(LEDGER).unwrap();
            let from = format!("corp\u{1f}{last_seq:012}");
            ledger
                .retain_in(from.as_str().."corp\u{1f}~", |_, _| false)
                .unwrap();
            txn.open_table(RUNS).unwrap().remove(last.as_str()).unwrap();
            txn.open_table(SOURCE_RUNS)
                .unwrap()
                .remove(format!("corp\u{1f}{last}").as_str())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let run = verify(&copy);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("DOES NOT VERIFY") && run.stdout.contains("removed from its end"),
        "{}",
        run.stdout
    );

    // A report checked on its own, without the database.
    let report = env
        .state_dir()
        .join("reports/corp")
        .join(format!("{middle}.md"));
    report_verifies(&report, &["signed by ed25519:"]);
    // The run's manifest itself vouches for every report beside it.
    let manifest = report.with_file_name(format!("{middle}.manifest.json"));
    report_verifies(&manifest, &[&format!("{middle}.md"), "signed by ed25519:"]);
    // A period report written with --out is signed too, and a changed byte of it is caught,
    // whether the file or its manifest is given.
    let period = env.dir.path().join("q4.csv");
    let first = ids[0].clone();
    let written = env.aksync(&[
        "report",
        "latest",
        "--from",
        &first,
        "--format",
        "csv",
        "--out",
        period.to_str().unwrap(),
    ]);
    assert_eq!(written.code, 0, "{}", written.stderr);
    let period_manifest = env.dir.path().join("q4.csv.manifest.json");
    for given in [&period, &period_manifest] {
        report_verifies(given, &["signed by ed25519:"]);
    }
    flip_byte(&period, 40);
    for given in [&period, &period_manifest] {
        let caught = common::run_binary(None, &["verify", "--report", given.to_str().unwrap()]);
        assert_eq!(caught.code, 1, "{}", caught.stdout);
        assert!(
            caught.stdout.contains("DOES NOT VERIFY") && caught.stdout.contains("hashes to"),
            "{}",
            caught.stdout
        );
    }
    let copy = copy_of(&env);
    let tampered = copy.state.join("reports/corp").join(format!("{middle}.md"));
    flip_byte(&tampered, 100);
    let caught = common::run_binary(None, &["verify", "--report", tampered.to_str().unwrap()]);
    assert_eq!(caught.code, 1, "{}", caught.stdout);
    assert!(
        caught.stdout.contains("DOES NOT VERIFY"),
        "{}",
        caught.stdout
    );
    let other_key = env.dir.path().join("other.pem");
    let other_public = env.dir.path().join("other.pub.pem");
    common::run_binary(
        None,
        &[
            "keygen",
            "--out",
            other_key.to_str().unwrap(),
            "--public",
            other_public.to_str().unwrap(),
        ],
    );
    let wrong = common::run_binary(
        None,
        &[
            "verify",
            "--report",
            report.to_str().unwrap(),
            "--public-key",
            other_public.to_str().unwrap(),
        ],
    );
    assert_eq!(wrong.code, 1, "{}", wrong.stdout);
    assert!(
        wrong.stdout.contains("not the key given"),
        "{}",
        wrong.stdout
    );
}

/// With `keep_runs = 1` after five runs, the evidence of every run stays: the period report
/// over all of them lists every event, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_evidence_of_pruned_runs() {
    let env = TestEnv::start(12).await;
    env.sync_ok();
    for round in 0..4 {
        env.fake.with_state(|state| {
            state
                .directory
                .add_user(&format!("round.{round}"), "internal");
        });
        env.sync_ok();
    }
    let first = run_ids(&env)[0].clone();
    let before = report_json(&env, &["latest", "--from", &first]);
    assert_eq!(before["joiners"].as_array().unwrap().len(), 4);
    append_config(&env, "\n[retention]\nkeep_runs = 1\n");
    let pruned = env.aksync(&["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let after = report_json(&env, &["latest", "--from", &first]);
    for key in ["joiners", "runs", "roll_forward"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    // A joiner of a pruned run is still a joiner in its history, not "present at baseline".
    let history = env.aksync(&["history", "round.0", "--json"]).json();
    let events = field_of_each(&history[0]["events"], "event");
    assert_eq!(events, ["joined"], "{history}");
}

/// A database written by a newer aksync is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_before_any_write() {
    let env = TestEnv::start(5).await;
    env.sync_ok();
    {
        let db = database(&env.database());
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .insert("schema_version", b"99".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let before = contents(&env.database());
    for command in [&["sync"][..], &["runs"], &["report", "latest"], &["verify"]] {
        let run = env.aksync(command);
        assert_eq!(run.code, 1, "{command:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("upgrade aksync"),
            "{command:?}: {}",
            run.stderr
        );
    }
    assert!(contents(&env.database()) == before, "nothing was written");
}

/// Every row of the tables a command could write, for comparing before and after.
fn contents(database: &Path) -> Vec<(String, String, Vec<u8>)> {
    let db = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
        .open_read_only(database)
        .unwrap();
    let txn = db.begin_read().unwrap();
    let mut rows = Vec::new();
    for name in [
        "meta",
        "runs",
        "source_runs",
        "ledger",
        "health",
        "current",
        "versions",
    ] {
        let Ok(table) = txn.open_table(redb::TableDefinition::<&str, &[u8]>::new(name)) else {
            continue;
        };
        for row in table.iter().unwrap() {
            let (key, value) = row.unwrap();
            rows.push((
                name.to_string(),
                key.value().to_string(),
                value.value().to_vec(),
            ));
        }
    }
    rows
}

/// A record that comes back after its deletion chains to that deletion, and the run where it
/// came back can still rebuild its envelope file after retention removed the deleted version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comeback_chains_to_its_deletion_after_retention() {
    let env = TestEnv::start(12).await;
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    let name = people(&directory)[0].clone();
    let pk = directory.user_by_username(&name).unwrap().pk;
    let user = directory.users[&pk].clone();
    env.fake.with_state(|state| {
        state.directory.users.remove(&pk);
    });
    env.sync_ok();
    env.fake.with_state(|state| {
        state.directory.users.insert(pk, user.clone());
    });
    env.sync_ok();
    let ids = run_ids(&env);
    let envelope = |run: &str| {
        env.state_dir()
            .join("envelopes/corp")
            .join(format!("{run}.jsonl"))
    };
    let lines = |run: &str| -> Vec<Value> {
        std::fs::read_to_string(envelope(run))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let uid = directory.uid(pk);
    let of = |run: &str| {
        lines(run)
            .into_iter()
            .find(|line| line["external_id"] == uid.as_str())
            .unwrap()
    };
    let (deleted, back) = (of(&ids[1]), of(&ids[2]));
    assert_eq!(deleted["action"], "deleted");
    assert_eq!(back["action"], "created");
    assert_eq!(back["previous_hash"], deleted["hash"]);
    let written = std::fs::read(envelope(&ids[2])).unwrap();
    append_config(&env, "\n[retention]\nkeep_runs = 1\n");
    assert_eq!(env.aksync(&["prune"]).code, 0);
    std::fs::remove_file(envelope(&ids[2])).unwrap();
    let rebuilt = env.aksync(&["envelopes", &ids[2], "--rebuild"]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    assert_eq!(std::fs::read(envelope(&ids[2])).unwrap(), written);
    // A run whose snapshot retention removed explains instead.
    let gone = env.aksync(&["envelopes", &ids[0], "--rebuild"]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("[retention]"), "{}", gone.stderr);
    assert!(!gone.stderr.contains("--rebuild`"), "{}", gone.stderr);
    assert_eq!(env.aksync(&["verify"]).code, 0);
}
