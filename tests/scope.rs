//! Scope is a view (issue 16): the real binary against the fake server, with filters and
//! settings that change between runs while the directory changes too. No settings change
//! starts a baseline; what only entered or left the scope is never a joiner or a leaver.

mod common;

use aksync::demo::fake::READER_TOKEN;
use common::TestEnv;
use serde_json::{json, Value};

/// The envelopes of a run, as `aksync envelopes RUN` prints them.
fn envelopes(env: &TestEnv, run: &str) -> Vec<Value> {
    let printed = env.aksync(&["envelopes", run]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    printed
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Every complete run's envelope file rebuilds from the store byte for byte (the rebuild
/// refuses a file whose SHA-256 is not the one the run recorded), whatever the configuration
/// says now: a replay applies the settings each run recorded.
fn assert_every_envelope_file_rebuilds(env: &TestEnv) {
    let runs = env.store().complete_runs("corp").unwrap();
    assert!(runs.len() > 1);
    for run in runs {
        let rebuilt = env.aksync(&["envelopes", &run.run_id, "--rebuild"]);
        assert_eq!(rebuilt.code, 0, "{}: {}", run.run_id, rebuilt.stderr);
    }
}

fn latest_diff(env: &TestEnv) -> Value {
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    diff.json()
}

fn usernames(events: &Value) -> Vec<String> {
    let mut names: Vec<String> = events
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|event| {
            event["username"]
                .as_str()
                .or(event["name"].as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn uid_of(env: &TestEnv, username: &str) -> String {
    env.fake.with_state(|state| {
        let user = state
            .directory
            .users
            .values()
            .find(|u| u.username == username)
            .unwrap();
        state.directory.uid(user.pk)
    })
}

fn set_department(env: &TestEnv, username: &str, department: &str) {
    env.fake.with_state(|state| {
        let user = state
            .directory
            .users
            .values_mut()
            .find(|u| u.username == username)
            .unwrap();
        user.attributes["department"] = json!(department);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_moved_out_of_the_filter_is_a_mover_that_left_scope_not_a_leaver() {
    let env = TestEnv::start(12).await;
    set_department(&env, "akadmin", "it");
    env.write_config(
        READER_TOKEN,
        "filter = \"has(payload.attributes.department) && payload.attributes.department == 'it'\"\n",
    );
    env.sync_ok();
    let admin = uid_of(&env, "akadmin");

    set_department(&env, "akadmin", "hr");
    env.sync_ok();
    let diff = latest_diff(&env);
    assert!(diff.get("baseline").is_none(), "{diff}");
    assert_eq!(usernames(&diff["leavers"]), Vec::<String>::new(), "{diff}");
    assert_eq!(usernames(&diff["movers"]), ["akadmin"], "{diff}");
    assert_eq!(usernames(&diff["privilege_removed"]), Vec::<String>::new());
    let left = &diff["scope_changes"]["accounts_left"];
    assert_eq!(usernames(left), ["akadmin"], "{diff}");
    assert_eq!(left[0]["cause"], "record");
    let sent = envelopes(&env, "latest");
    let farewell = sent
        .iter()
        .find(|e| e["schema"] == "DirectoryAccount" && e["external_id"] == admin.as_str())
        .expect("an envelope for akadmin");
    assert_eq!(farewell["action"], "deleted");
    assert_eq!(farewell["reason"], "out_of_scope");
    // Its memberships leave with it, as scope changes, not as removals.
    assert!(sent
        .iter()
        .filter(|e| e["schema"] == "DirectoryMembership")
        .all(|e| e["action"] == "deleted" && e["reason"] == "out_of_scope"));
    assert_eq!(diff["memberships"]["removed"], json!([]), "{diff}");
    // Still in the snapshot, out of scope: `show --all` lists it, `show` does not.
    let shown = env.show_json("accounts", "latest");
    assert!(!shown.to_string().contains(&admin));
    let all = env.aksync(&["show", "accounts", "--all", "--json"]).json();
    let row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["external_id"] == admin.as_str())
        .expect("akadmin in show --all");
    assert_eq!(row["scope"], "out");

    set_department(&env, "akadmin", "it");
    env.sync_ok();
    let diff = latest_diff(&env);
    assert_eq!(usernames(&diff["joiners"]), Vec::<String>::new(), "{diff}");
    assert_eq!(
        usernames(&diff["privilege_granted"]),
        Vec::<String>::new(),
        "{diff}"
    );
    assert_eq!(
        usernames(&diff["scope_changes"]["accounts_entered"]),
        ["akadmin"]
    );
    let back = envelopes(&env, "latest")
        .into_iter()
        .find(|e| e["schema"] == "DirectoryAccount" && e["external_id"] == admin.as_str())
        .unwrap();
    assert_eq!(back["action"], "created");
    assert_eq!(back["reason"], "in_scope");
    // The chain holds: it links to the deletion its consumers saw.
    assert_eq!(back["previous_hash"], farewell["hash"]);

    // `history` tells the account's life: it moved and left the scope, then moved back and
    // entered it again; it never left nor joined.
    let history = env.aksync(&["history", "akadmin", "--json"]).json();
    let events: Vec<(String, String)> = history[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["event"].as_str().unwrap().to_string(),
                event["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected = [
        ("baseline", ""),
        ("moved", ""),
        ("left_scope", "the record changed"),
        ("moved", ""),
        ("entered_scope", "the record changed"),
    ];
    assert_eq!(
        events,
        expected.map(|(event, reason)| (event.to_string(), reason.to_string())),
        "{history}"
    );
    let text = env.aksync(&["history", "akadmin"]).stdout;
    assert!(
        text.contains("left scope") && text.contains("entered scope"),
        "{text}"
    );
    // Rebuilt after the filter is gone, the files still say what the runs emitted: the
    // comeback still chains to the scope exit.
    env.write_config(READER_TOKEN, "");
    assert_every_envelope_file_rebuilds(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_filter_and_changed_ignore_fields_hide_no_real_leaver() {
    let env = TestEnv::start(16).await;
    env.sync_ok();
    let active: Vec<String> = env.fake.with_state(|state| {
        state
            .directory
            .users
            .values()
            .filter(|u| u.is_active && u.username != "akadmin" && u.path == "users")
            .map(|u| u.username.clone())
            .collect()
    });
    let (dropped, deactivated, deleted) = (&active[0], &active[1], &active[2]);

    // The filter narrows by one account while another is deactivated upstream.
    env.write_config(
        READER_TOKEN,
        &format!("filter = \"payload.username != '{dropped}'\"\n"),
    );
    env.fake.with_state(|state| {
        let user = state
            .directory
            .users
            .values_mut()
            .find(|u| &u.username == deactivated)
            .unwrap();
        user.is_active = false;
    });
    env.sync_ok();
    let diff = latest_diff(&env);
    assert!(diff.get("baseline").is_none(), "{diff}");
    assert_eq!(
        usernames(&diff["leavers"]),
        [deactivated.as_str()],
        "{diff}"
    );
    let left = &diff["scope_changes"]["accounts_left"];
    assert_eq!(usernames(left), [dropped.as_str()], "{diff}");
    assert_eq!(left[0]["cause"], "filter");
    let out = envelopes(&env, "latest")
        .into_iter()
        .find(|e| e["schema"] == "DirectoryAccount" && e["reason"] == "out_of_scope")
        .expect("an out_of_scope envelope");
    assert_eq!(out["action"], "deleted");
    assert_eq!(out["external_id"], uid_of(&env, dropped).as_str());

    // ignore_fields changes while an active account is deleted upstream.
    env.write_config(
        READER_TOKEN,
        &format!(
            "filter = \"payload.username != '{dropped}'\"\nignore_fields = [\"attributes.title\"]\n"
        ),
    );
    env.fake.with_state(|state| {
        let pk = *state
            .directory
            .users
            .iter()
            .find(|(_, u)| &u.username == deleted)
            .unwrap()
            .0;
        state.directory.users.remove(&pk);
    });
    env.sync_ok();
    let diff = latest_diff(&env);
    assert!(diff.get("baseline").is_none(), "{diff}");
    assert_eq!(usernames(&diff["leavers"]), [deleted.as_str()], "{diff}");
    assert_eq!(diff["leavers"][0]["reason"], "deleted");
    assert_eq!(diff["groups"]["created"], json!([]), "{diff}");
    assert_eq!(usernames(&diff["movers"]), Vec::<String>::new(), "{diff}");

    // The period report over every run, and the account's history, both tell it.
    let report = env.aksync(&["report", "--since", "2000-01-01", "--format", "csv"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let leaver_rows: Vec<&str> = report
        .stdout
        .lines()
        .filter(|l| l.contains(",leaver,"))
        .collect();
    assert!(
        leaver_rows.iter().any(|row| row.contains(deleted.as_str())),
        "{}",
        report.stdout
    );
    assert!(leaver_rows
        .iter()
        .any(|row| row.contains(deactivated.as_str())));
    assert!(!report
        .stdout
        .lines()
        .any(|l| l.contains(",leaver,") && l.contains(dropped.as_str())));
    let history = env.aksync(&["history", deleted]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    assert!(history.stdout.contains("left"), "{}", history.stdout);
    let markdown = env.aksync(&["report", "--since", "2000-01-01"]);
    assert!(
        markdown.stdout.contains("Scope changes"),
        "{}",
        markdown.stdout
    );
    assert!(
        !markdown.stdout.contains("RECONCILIATION"),
        "{}",
        markdown.stdout
    );
    assert_eq!(env.aksync(&["verify"]).code, 0);
    env.write_config(READER_TOKEN, "");
    assert_every_envelope_file_rebuilds(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sync_switched_off_and_on_removes_and_adds_nothing() {
    let env = TestEnv::start(12).await;
    env.sync_ok();
    env.write_config(READER_TOKEN, "disable_group_sync = true\n");
    env.sync_ok();
    let off = latest_diff(&env);
    assert!(off.get("baseline").is_none(), "{off}");
    assert_eq!(off["groups"]["deleted"], json!([]), "{off}");
    assert_eq!(off["memberships"]["removed"], json!([]), "{off}");
    assert_eq!(off["movers"], json!([]), "{off}");
    assert_eq!(off["privilege_removed"], json!([]), "{off}");
    assert_eq!(off["scope_changes"]["group_sync"], false, "{off}");
    assert!(off["scope_changes"]["memberships_left"].as_u64().unwrap() > 0);
    env.sync_ok();
    assert_eq!(latest_diff(&env)["scope_changes"], Value::Null);

    env.write_config(READER_TOKEN, "");
    env.sync_ok();
    let on = latest_diff(&env);
    assert_eq!(on["groups"]["created"], json!([]), "{on}");
    assert_eq!(on["memberships"]["added"], json!([]), "{on}");
    assert_eq!(on["movers"], json!([]), "{on}");
    assert_eq!(on["privilege_granted"], json!([]), "{on}");
    assert_eq!(on["scope_changes"]["group_sync"], true, "{on}");
    let entered = envelopes(&env, "latest");
    assert!(!entered.is_empty());
    assert!(
        entered.iter().all(|e| e["reason"] == "in_scope"),
        "{entered:?}"
    );

    // Runs that are not consecutive are replayed under the settings the newer one recorded,
    // stepping from the older one's as a sync does: across the switch, still no removals or
    // additions. Then with group sync off in the configuration, every file still rebuilds.
    let ids = common::run_ids(&env);
    for (from, to, group_sync) in [(&ids[0], &ids[2], false), (&ids[1], &ids[3], true)] {
        let replayed = env.aksync(&["diff", from, to, "--json"]);
        assert_eq!(replayed.code, 0, "{}", replayed.stderr);
        assert!(
            replayed
                .stderr
                .contains(&format!("with the settings run {to} recorded")),
            "{}",
            replayed.stderr
        );
        let diff = replayed.json();
        for removed_or_added in [
            &diff["groups"]["deleted"],
            &diff["groups"]["created"],
            &diff["memberships"]["removed"],
            &diff["memberships"]["added"],
        ] {
            assert_eq!(removed_or_added, &json!([]), "{from}..{to}: {diff}");
        }
        assert_eq!(diff["scope_changes"]["group_sync"], group_sync, "{diff}");
    }
    env.write_config(READER_TOKEN, "disable_group_sync = true\n");
    assert_every_envelope_file_rebuilds(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggling_the_primary_directory_changes_no_record() {
    let env = TestEnv::start(8).await;
    env.sync_ok();
    env.write_config(READER_TOKEN, "primary_directory = true\n");
    env.sync_ok();
    let diff = latest_diff(&env);
    assert!(diff.get("baseline").is_none(), "{diff}");
    assert!(envelopes(&env, "latest").is_empty());
    let runs = env.aksync(&["runs", "--json"]).json();
    assert!(runs.to_string().contains("primary_directory"), "{runs}");
    // The flag describes the source: each run's outputs say what that run recorded, in
    // aksync's envelopes and on each Openlane set, whatever the configuration says now.
    let ids = common::run_ids(&env);
    for (run, primary) in [(&ids[0], false), (&ids[1], true)] {
        let sets = env
            .aksync(&["envelopes", run, "--full", "--format", "openlane"])
            .json();
        let sets = sets.as_array().unwrap();
        assert!(
            sets.iter().all(|set| set["primaryDirectory"] == primary),
            "{run}"
        );
        let changes = env
            .aksync(&["envelopes", run, "--format", "openlane"])
            .json();
        assert!(changes
            .as_array()
            .unwrap()
            .iter()
            .all(|set| set["primaryDirectory"] == primary));
        let lines = env.aksync(&["envelopes", run, "--full"]).stdout;
        assert!(lines.lines().count() > 0);
        assert!(lines
            .lines()
            .all(|line| line.contains(&format!("\"primary_directory\":{primary}"))));
    }
}

/// A filter on an attribute most accounts lack: `on_filter_error` decides, through the binary.
/// `fail` fails the run naming an account and the expression; `exclude` and `include` put the
/// accounts it cannot judge out of or into the scope, and the run and its report count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_on_filter_error_mode_on_a_missing_attribute() {
    let env = TestEnv::start(12).await;
    let cast: Vec<String> = env.fake.with_state(|state| {
        let mut names: Vec<String> = state
            .directory
            .users
            .values()
            .map(|user| user.username.clone())
            .collect();
        names.sort();
        names
    });
    let (high, low) = (&cast[..2], &cast[2]);
    env.fake.with_state(|state| {
        for user in state.directory.users.values_mut() {
            if high.contains(&user.username) {
                user.attributes["clearance"] = json!("high");
            } else if &user.username == low {
                user.attributes["clearance"] = json!("low");
            }
        }
    });
    let unjudged = (cast.len() - 3) as u64;
    let filter = "filter = \"payload.attributes.clearance == 'high'\"\n";

    env.write_config(READER_TOKEN, filter);
    let failed = env.aksync(&["sync"]);
    assert_ne!(failed.code, 0, "{}", failed.stdout);
    let said = format!("{}{}", failed.stdout, failed.stderr);
    assert!(
        said.contains("payload.attributes.clearance == 'high'")
            && cast[3..].iter().any(|name| said.contains(name.as_str())),
        "{said}"
    );
    let store = env.store();
    assert!(store.latest_complete("corp").unwrap().is_none());
    drop(store);

    for (mode, in_scope, excluded, included) in [
        ("exclude", high.to_vec(), unjudged, 0),
        (
            "include",
            cast.iter().filter(|name| *name != low).cloned().collect(),
            0,
            unjudged,
        ),
    ] {
        env.write_config(
            READER_TOKEN,
            &format!("{filter}on_filter_error = \"{mode}\"\n"),
        );
        env.sync_ok();
        let shown = env.show_json("accounts", "latest");
        assert_eq!(usernames(&shown), in_scope, "{mode}");
        let all = env.aksync(&["show", "accounts", "--all", "--json"]).json();
        assert_eq!(all.as_array().unwrap().len(), cast.len(), "{mode}: {all}");
        let run = env.store().latest_complete("corp").unwrap().unwrap();
        let scope = run.scope.expect("a filtered run counts its scope");
        assert_eq!(scope.filter_errors_excluded, excluded, "{mode}");
        assert_eq!(scope.filter_errors_included, included, "{mode}");
        assert_eq!(
            scope.accounts_out_of_scope,
            (cast.len() - in_scope.len()) as u64,
            "{mode}"
        );
        let report = env.aksync(&["report", "latest"]);
        assert!(
            report.stdout.contains(&format!(
                "filter errors: {excluded} excluded, {included} included"
            )),
            "{mode}: {}",
            report.stdout
        );
    }
}
