//! The period report an auditor samples from, end to end: the real binary syncs the fake
//! Authentik through a period with known events (a failed run, an account created in the
//! admin group, a reactivated admin, a group whose superuser flag is switched on, a
//! deactivation followed by a deletion), and every format must list every run, reconcile the
//! roll-forward, flag every privilege grant with its source, count the terminated person
//! once, and time the termination against the SLA.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use aksync::demo::fake::{Directory, Fault};
use common::{run_ids, TestEnv};
use serde_json::Value;
use sha2::{Digest, Sha256};

const COLUMNS: &str = "source,run_id,run_started_at,event,reason,external_id,username,email,hr_key,privileged,escalation,privilege_source,groups,groups_added,groups_removed,field,old,new,last_seen_active_at,detected_at,latency_seconds,within_sla,last_login_at";

/// The active accounts with Authentik's superuser flag (which the fake, like Authentik,
/// inherits through groups) in a stored run: the privileged accounts under the default rules.
fn privileged_in(env: &TestEnv, run: &str) -> BTreeSet<String> {
    env.show_json("accounts", run)
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "ACTIVE" && a["is_superuser"] == true)
        .map(|a| a["username"].as_str().unwrap().to_string())
        .collect()
}

fn usernames(items: &Value) -> BTreeSet<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["username"].as_str().unwrap().to_string())
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// People picked from the generated directory.
struct Cast {
    /// Inactive, and in the admin group all along: reactivated later.
    dormant_admin: String,
    /// Deactivated, then deleted.
    quitter: String,
}

fn cast(directory: &Directory) -> Cast {
    let people: Vec<&aksync::demo::fake::FakeUser> = directory
        .users
        .values()
        .filter(|user| user.user_type == "internal" && user.attributes.get("employee_id").is_some())
        .collect();
    Cast {
        dormant_admin: people
            .iter()
            .find(|user| !user.is_active)
            .expect("an inactive person")
            .username
            .clone(),
        quitter: people
            .iter()
            .find(|user| user.is_active && !user.groups.is_empty())
            .expect("an active person with groups")
            .username
            .clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_period_report_lists_every_run_reconciles_and_flags_every_grant() {
    let env = TestEnv::start(40).await;
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "sla = \"1s\"\nhr_key_field = \"attributes.employee_id\"\nexpected_interval = \"1h\"\n",
    );
    let (cast, admins, finance) = env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let cast = cast(directory);
        let admins = directory
            .group_by_name("authentik Admins")
            .unwrap()
            .pk
            .clone();
        let finance = directory.group_by_name("Finance").unwrap().pk.clone();
        directory
            .user_by_username_mut(&cast.dormant_admin)
            .unwrap()
            .groups
            .push(admins.clone());
        (cast, admins, finance)
    });
    env.sync_ok(); // R1: the baseline the period starts from.

    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let pk = directory.add_user("new.admin", "internal");
        let user = directory.users.get_mut(&pk).unwrap();
        user.groups.push(admins.clone());
        user.attributes = serde_json::json!({"employee_id": "E9001"});
    });
    env.sync_ok(); // R2: an account created in the admin group.

    env.fake.with_state(|state| {
        state.faults.push(Fault {
            path_contains: "/core/users/".into(),
            skip: 0,
            times: None,
            status: 403,
            body: br#"{"detail": "Token invalid/expired"}"#.to_vec(),
            retry_after: None,
            location: None,
        })
    });
    let failed = env.aksync(&["sync"]);
    assert_eq!(failed.code, 1, "{}{}", failed.stdout, failed.stderr);
    env.fake.with_state(|state| state.faults.clear());

    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&cast.dormant_admin)
            .unwrap()
            .is_active = true;
    });
    env.sync_ok(); // R3: the admin reactivated.

    env.fake.with_state(|state| {
        state
            .directory
            .groups
            .get_mut(&finance)
            .unwrap()
            .is_superuser = true;
    });
    env.sync_ok(); // R4: Finance's superuser flag switched on.
    let finance_members: BTreeSet<String> = env.fake.with_state(|state| {
        state
            .directory
            .users
            .values()
            .filter(|user| user.is_active && user.groups.contains(&finance))
            .map(|user| user.username.clone())
            .collect()
    });
    assert!(!finance_members.is_empty());

    // The deactivation is seen more than the SLA of 1 s after the last run that saw the
    // account active.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&cast.quitter)
            .unwrap()
            .is_active = false;
    });
    env.sync_ok(); // R5: deactivated.
    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let pk = directory.user_by_username(&cast.quitter).unwrap().pk;
        directory.users.remove(&pk);
    });
    env.sync_ok(); // R6: deleted.

    let ids = run_ids(&env);
    assert_eq!(ids.len(), 7, "six complete runs and a failed one");
    let first = ids[0].clone();
    let failed_run = env
        .store()
        .runs(Some("corp"))
        .unwrap()
        .into_iter()
        .find(|run| run.status == aksync::store::RunStatus::Failed)
        .unwrap();
    let period_runs = &ids[1..];

    let write = |format: &str| -> (std::path::PathBuf, Vec<u8>) {
        let out = env.dir.path().join(format!("period.{format}"));
        let run = env.aksync(&[
            "report",
            "latest",
            "--from",
            &first,
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 0, "{format}: {}", run.stderr);
        let bytes = std::fs::read(&out).unwrap();
        (out, bytes)
    };

    // JSON: the figures.
    let (json_path, json_bytes) = write("json");
    let json: Value = serde_json::from_slice(&json_bytes).unwrap();
    let listed: Vec<&str> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed, period_runs,
        "every run after --from, the failed one too"
    );
    let failed_json = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|run| run["run_id"] == failed_run.run_id.as_str())
        .unwrap();
    assert_eq!(failed_json["status"], "failed");
    assert!(
        failed_json["error"].as_str().unwrap().contains("403"),
        "{failed_json}"
    );
    assert_eq!(json["period"]["start_run"], first.as_str());
    assert_eq!(
        json["period"]["token_users"][0]["username"],
        "svc-aksync-reader"
    );

    let start = privileged_in(&env, &first);
    let end = privileged_in(&env, "latest");
    let roll = &json["roll_forward"];
    for line in ["accounts", "active", "privileged"] {
        assert_eq!(roll[line]["reconciles"], true, "{line}: {roll}");
    }
    assert_eq!(roll["privileged"]["start"], start.len());
    assert_eq!(roll["privileged"]["end"], end.len());
    assert_eq!(usernames(&json["privileged_accounts"]["start"]), start);
    assert_eq!(usernames(&json["privileged_accounts"]["end"]), end);
    assert_eq!(roll["accounts"]["added"], 1);
    assert_eq!(roll["accounts"]["removed"], 1);

    // Every grant, with its source.
    let grants: Vec<(String, String, String)> = json["privilege_granted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["username"].as_str().unwrap().to_string(),
                g["reason"].as_str().unwrap().to_string(),
                g["privilege_source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let grant = |name: &str| {
        grants
            .iter()
            .find(|(username, _, _)| username == name)
            .unwrap_or_else(|| panic!("no grant for {name}: {grants:?}"))
    };
    assert_eq!(grant("new.admin").1, "created");
    assert_eq!(grant("new.admin").2, "authentik Admins");
    assert_eq!(grant(&cast.dormant_admin).1, "reactivated");
    let finance_grants: BTreeSet<String> = grants
        .iter()
        .filter(|(_, reason, source)| reason == "group_changed" && source == "group flag changed")
        .map(|(username, _, _)| username.clone())
        .collect();
    let newly_privileged: BTreeSet<String> = finance_members
        .iter()
        .filter(|name| !start.contains(*name) && *name != &cast.dormant_admin)
        .cloned()
        .collect();
    assert_eq!(finance_grants, newly_privileged);
    assert_eq!(
        grants.len(),
        2 + finance_grants.len(),
        "nothing else was granted: {grants:?}"
    );
    let group_changes = json["privileged_group_changes"].as_array().unwrap();
    assert_eq!(group_changes.len(), 1, "{group_changes:?}");
    assert_eq!(group_changes[0]["display_name"], "Finance");
    assert_eq!(group_changes[0]["accounts_granted"], finance_grants.len());
    // A created admin and a reactivated one are escalations of their joiner events.
    for joiner in json["joiners"].as_array().unwrap() {
        assert_eq!(joiner["privilege_escalation"], true, "{joiner}");
    }
    let new_admin = json["joiners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["username"] == "new.admin")
        .unwrap();
    assert_eq!(new_admin["hr_key"], "E9001");
    assert_eq!(new_admin["account_type"], "USER");

    // One person terminated, in two events; its latency breaches the SLA.
    let leavers = json["leavers"].as_array().unwrap();
    let events: Vec<(&str, &str)> = leavers
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap(),
                l["username"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("leaver", cast.quitter.as_str()),
            ("purged", cast.quitter.as_str())
        ]
    );
    assert!(leavers[0]["hr_key"].as_str().unwrap().starts_with('E'));
    assert_eq!(json["period"]["summary"]["termination_cases"], 1);
    assert_eq!(json["period"]["summary"]["people_terminated"], 1);
    let latency = &json["latency"];
    assert_eq!(latency["n"], 1);
    assert!(latency["max_seconds"].as_u64().unwrap() >= 2, "{latency}");
    assert_eq!(latency["median_seconds"], latency["max_seconds"]);
    assert_eq!(latency["p95_seconds"], latency["max_seconds"]);
    assert_eq!(latency["breaches"].as_array().unwrap().len(), 1);
    assert_eq!(latency["breaches"][0]["username"], cast.quitter.as_str());
    assert_eq!(leavers[0]["within_sla"], false);

    // The manifest beside it names the file and its hash.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(env.dir.path().join("period.json.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["files"][0]["name"], "period.json");
    assert_eq!(manifest["files"][0]["sha256"], sha256_hex(&json_bytes));
    assert_eq!(
        manifest["runs"].as_array().unwrap().len(),
        period_runs.len()
    );
    assert_eq!(manifest["counts"]["failed_runs"], 1);
    drop(json_path);

    // CSV: exactly the columns; every run; a row per grant with its source.
    let (_, csv_bytes) = write("csv");
    let csv = String::from_utf8(csv_bytes).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), COLUMNS);
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    let of = |event: &str| -> Vec<&Vec<&str>> { rows.iter().filter(|r| r[3] == event).collect() };
    let run_rows: Vec<&str> = of("run").iter().map(|r| r[1]).collect();
    assert_eq!(run_rows, period_runs);
    assert!(of("run")
        .iter()
        .any(|r| r[1] == failed_run.run_id && r[4].trim_start_matches('"').starts_with("failed")));
    let granted = of("privilege_granted");
    assert_eq!(granted.len(), grants.len());
    assert!(granted.iter().all(|r| r[10] == "true" && !r[11].is_empty()));
    assert!(granted
        .iter()
        .any(|r| r[6] == "new.admin" && r[11] == "authentik Admins" && r[8] == "E9001"));
    let leaver_rows = of("leaver");
    assert_eq!(leaver_rows.len(), 1);
    assert_eq!(leaver_rows[0][21], "false", "within_sla");
    assert!(
        leaver_rows[0][20].parse::<u64>().unwrap() >= 2,
        "latency_seconds"
    );

    // Markdown and HTML: the same facts for people.
    let (_, markdown) = write("md");
    let (_, html) = write("html");
    for (format, bytes) in [("md", &markdown), ("html", &html)] {
        let text = String::from_utf8_lossy(bytes);
        for run in period_runs {
            assert!(text.contains(run.as_str()), "{format} lacks run {run}");
        }
        for needle in [
            "failed",
            "new.admin",
            "group flag changed",
            "Finance",
            "SLA BREACH",
            "Roll-forward",
            "DOES NOT RECONCILE",
        ] {
            let found = text.contains(needle);
            assert_eq!(
                found,
                needle != "DOES NOT RECONCILE",
                "{format} and {needle:?}"
            );
        }
        assert!(text.contains(&cast.dormant_admin), "{format}");
        assert!(text.contains(&cast.quitter), "{format}");
    }
    if aksync::output::report::find_chromium().is_some() {
        let (_, pdf) = write("pdf");
        assert!(pdf.starts_with(b"%PDF"));
    }

    // The same period by time; and a bare file name for --out works in the current directory.
    let r1 = env.store().run(&first).unwrap();
    let since = r1.finished_at.to_rfc3339();
    let out_dir = tempfile::tempdir().unwrap();
    let by_time = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        .current_dir(out_dir.path())
        .args(["--config", env.config_path.to_str().unwrap()])
        .args([
            "report",
            "--since",
            &since,
            "--format",
            "json",
            "--out",
            "period.json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        by_time.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&by_time.stderr)
    );
    let by_time: Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("period.json")).unwrap())
            .unwrap();
    assert!(Path::new(&out_dir.path().join("period.json.manifest.json")).is_file());
    let listed: Vec<&str> = by_time["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, period_runs);
    assert_eq!(by_time["roll_forward"], json["roll_forward"]);

    // The runs' own reports have a manifest too.
    let latest = ids.last().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            env.state_dir()
                .join("reports/corp")
                .join(format!("{latest}.manifest.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let names: BTreeSet<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from_iter(
            ["json", "md", "csv", "html"]
                .map(|ext| format!("{latest}.{ext}"))
                .iter()
                .map(String::as_str)
        )
    );
    for file in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(
            env.state_dir()
                .join("reports/corp")
                .join(file["name"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(file["sha256"], sha256_hex(&bytes));
    }

    // The baseline's accounts are present at the baseline, not joined, in `history` too.
    let history = env.aksync(&["history", &cast.quitter]);
    assert!(
        history.stdout.contains("present at baseline"),
        "{}",
        history.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_periods_are_usage_errors() {
    let env = TestEnv::start(5).await;
    env.sync_ok();
    for (args, hint) in [
        (&["report", "--since", "yesterday"][..], "is not a time"),
        (
            &["report", "--since", "2026-02-01", "--until", "2026-01-01"],
            "is not before",
        ),
        (&["report", "--until", "2026-01-01"], "--since"),
    ] {
        let run = env.aksync(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(hint), "{args:?}: {}", run.stderr);
    }
    let help = env.aksync(&["report", "--help"]);
    assert!(
        help.stdout.contains("own changes are not included"),
        "{}",
        help.stdout
    );
}
