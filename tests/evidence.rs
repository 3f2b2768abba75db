//! Joiner/mover/leaver evidence end to end: the real binary syncs the fake Authentik, the
//! directory changes in every way an auditor samples, and the diff, the envelope file, the
//! reports, `history` and webhook delivery must say exactly what happened.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use aksync::demo::fake::Directory;
use common::{receiver, run_ids, TestEnv};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn envelope_lines(env: &TestEnv, run_id: &str) -> (Vec<u8>, Vec<Value>) {
    let path = env
        .state_dir()
        .join("envelopes/corp")
        .join(format!("{run_id}.jsonl"));
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let lines = String::from_utf8(bytes.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (bytes, lines)
}

fn uid_of(directory: &Directory, username: &str) -> String {
    directory.uid(directory.user_by_username(username).unwrap().pk)
}

/// People in the generated directory, picked by what the scenario needs.
struct Cast {
    deleted: String,
    deactivated: String,
    reactivated: String,
    renamed: String,
    department: String,
    promoted: String,
    moved: String,
}

fn cast(directory: &Directory) -> Cast {
    let people: Vec<&aksync::demo::fake::FakeUser> = directory
        .users
        .values()
        .filter(|user| {
            user.user_type == "internal" && user.path == "users" && user.username != "akadmin"
        })
        .collect();
    // A name, so that a rename changes the username alone.
    let active_with_groups: Vec<&&aksync::demo::fake::FakeUser> = people
        .iter()
        .filter(|user| user.is_active && !user.groups.is_empty() && !user.name.is_empty())
        .collect();
    let inactive = people
        .iter()
        .find(|user| !user.is_active)
        .expect("an inactive person");
    Cast {
        deleted: active_with_groups[0].username.clone(),
        deactivated: active_with_groups[1].username.clone(),
        renamed: active_with_groups[2].username.clone(),
        department: active_with_groups[3].username.clone(),
        promoted: active_with_groups[4].username.clone(),
        moved: active_with_groups[5].username.clone(),
        reactivated: inactive.username.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_is_exact_in_diff_envelopes_and_reports() {
    let env = TestEnv::start(40).await;
    env.sync_ok();
    let first = run_ids(&env)[0].clone();
    let before = env.fake.with_state(|state| state.directory.clone());

    // The first run emits every record as created.
    let (_, first_lines) = envelope_lines(&env, &first);
    let counts = env.store().run(&first).unwrap().counts;
    assert_eq!(
        first_lines.len() as u64,
        counts.accounts + counts.groups + counts.memberships
    );
    assert!(first_lines.iter().all(|line| line["action"] == "created"));

    let cast = cast(&before);
    let admins = before.group_by_name("authentik Admins").unwrap().pk.clone();
    let finance = before.group_by_name("Finance").unwrap().pk.clone();
    let moved_old_groups = before.user_by_username(&cast.moved).unwrap().groups.clone();
    env.fake.with_state(|state| {
        let d = &mut state.directory;
        let pk = d.add_user("new.hire", "internal");
        d.users.get_mut(&pk).unwrap().groups.push(finance.clone());
        let deleted = d.user_by_username(&cast.deleted).unwrap().pk;
        d.users.remove(&deleted);
        d.user_by_username_mut(&cast.deactivated).unwrap().is_active = false;
        d.user_by_username_mut(&cast.reactivated).unwrap().is_active = true;
        d.user_by_username_mut(&cast.renamed).unwrap().username = "renamed.person".into();
        d.user_by_username_mut(&cast.department).unwrap().attributes["department"] = "Audit".into();
        d.user_by_username_mut(&cast.promoted)
            .unwrap()
            .groups
            .push(admins.clone());
        let moved = d.user_by_username_mut(&cast.moved).unwrap();
        moved.groups = vec![finance.clone()];
        // Logging in changes nothing that matters.
        d.user_by_username_mut("akadmin").unwrap().last_login = Some("2026-11-28T10:00:00Z".into());
    });
    env.sync_ok();
    let second = run_ids(&env)[1].clone();
    let after = env.fake.with_state(|state| state.directory.clone());

    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    assert_eq!(diff["from_run"], first.as_str());
    assert_eq!(diff["to_run"], second.as_str());
    let pairs = |key: &str, field: &str| -> BTreeSet<(String, String)> {
        diff[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["username"].as_str().unwrap().to_string(),
                    item[field].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        pairs("joiners", "reason"),
        BTreeSet::from([
            ("new.hire".to_string(), "created".to_string()),
            (cast.reactivated.clone(), "reactivated".to_string())
        ])
    );
    assert_eq!(
        pairs("leavers", "reason"),
        BTreeSet::from([
            (cast.deleted.clone(), "deleted".to_string()),
            (cast.deactivated.clone(), "deactivated".to_string())
        ])
    );
    let movers: BTreeSet<String> = pairs("movers", "username")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        movers,
        BTreeSet::from([
            "renamed.person".to_string(),
            cast.department.clone(),
            cast.promoted.clone(),
            cast.moved.clone()
        ])
    );
    let mover = |name: &str| {
        diff["movers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["username"] == name)
            .unwrap()
            .clone()
    };
    // A rename is a move, not a leave plus a join.
    let renamed = mover("renamed.person");
    assert_eq!(
        renamed["external_id"],
        uid_of(&before, &cast.renamed).as_str()
    );
    assert_eq!(
        renamed["changes"],
        serde_json::json!([{"field": "username", "old": cast.renamed, "new": "renamed.person"}])
    );
    assert_eq!(
        mover(&cast.department)["changes"][0]["field"],
        "metadata.department"
    );
    assert_eq!(mover(&cast.department)["changes"][0]["new"], "Audit");
    let promoted = mover(&cast.promoted);
    assert_eq!(promoted["privilege_escalation"], true);
    assert_eq!(
        promoted["groups_added"][0]["display_name"],
        "authentik Admins"
    );
    // The superuser flag that joining the admins gives is the grant, not a change of the
    // account's own (one event, one place).
    assert!(promoted["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["field"] != "is_superuser"));
    let moved = mover(&cast.moved);
    assert_eq!(moved["privilege_escalation"], false);
    assert_eq!(moved["groups_added"][0]["external_id"], finance.as_str());
    let removed: BTreeSet<&str> = moved["groups_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["external_id"].as_str().unwrap())
        .collect();
    let expected_removed: BTreeSet<&str> = moved_old_groups
        .iter()
        .map(String::as_str)
        .filter(|g| *g != finance)
        .collect();
    assert_eq!(removed, expected_removed);
    for leaver in diff["leavers"].as_array().unwrap() {
        assert!(!leaver["groups_at_departure"].as_array().unwrap().is_empty());
        let run1 = env.store().run(&first).unwrap();
        let run2 = env.store().run(&second).unwrap();
        assert_eq!(
            leaver["last_seen_active_at"],
            serde_json::to_value(run1.started_at).unwrap()
        );
        assert_eq!(
            leaver["detected_at"],
            serde_json::to_value(run2.finished_at).unwrap()
        );
        assert_eq!(
            leaver["latency_seconds"],
            (run2.finished_at - run1.started_at).num_seconds()
        );
    }
    let deactivated = diff["leavers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["reason"] == "deactivated")
        .unwrap();
    // Authentik keeps a deactivated user's groups: the access was not removed.
    assert_eq!(deactivated["memberships_removed"], false);

    // The envelope file holds exactly the changed records.
    let (bytes, lines) = envelope_lines(&env, &second);
    let actual: BTreeSet<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["schema"].as_str().unwrap().into(),
                l["action"].as_str().unwrap().into(),
                l["external_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let uid = |name: &str| uid_of(&after, name);
    let account =
        |action: &str, id: String| ("DirectoryAccount".to_string(), action.to_string(), id);
    let membership =
        |action: &str, id: String| ("DirectoryMembership".to_string(), action.to_string(), id);
    let mut expected = BTreeSet::from([
        account("created", uid("new.hire")),
        account("deleted", uid_of(&before, &cast.deleted)),
        account("updated", uid(&cast.deactivated)),
        account("updated", uid(&cast.reactivated)),
        account("updated", uid("renamed.person")),
        account("updated", uid(&cast.department)),
        account("updated", uid(&cast.promoted)),
        membership("created", format!("{}:{finance}", uid("new.hire"))),
        membership("created", format!("{}:{admins}", uid(&cast.promoted))),
        membership("created", format!("{}:{finance}", uid(&cast.moved))),
    ]);
    for group in before
        .user_by_username(&cast.deleted)
        .unwrap()
        .groups
        .iter()
    {
        expected.insert(membership(
            "deleted",
            format!("{}:{group}", uid_of(&before, &cast.deleted)),
        ));
    }
    for group in moved_old_groups.iter().filter(|g| **g != finance) {
        expected.insert(membership(
            "deleted",
            format!("{}:{group}", uid(&cast.moved)),
        ));
    }
    assert_eq!(actual, expected);
    // Hashes chain: an update's previous_hash is the hash the record was created with.
    let created_hash =
        |id: &str| first_lines.iter().find(|l| l["external_id"] == id).unwrap()["hash"].clone();
    for line in &lines {
        assert_eq!(line["source"], "corp");
        assert_eq!(line["integration"], "authentik");
        assert_eq!(line["run_id"], second.as_str());
        assert_eq!(line["hash"].as_str().unwrap().len(), 64);
        if line["action"] != "created" {
            assert_eq!(
                line["previous_hash"],
                created_hash(line["external_id"].as_str().unwrap()),
                "{line}"
            );
        }
        if line["action"] == "updated" {
            assert!(!line["changes"].as_array().unwrap().is_empty());
        }
        if line["action"] == "deleted" {
            assert_eq!(line["record"]["status"], "DELETED");
        }
        if line["schema"] == "DirectoryAccount" {
            assert!(line["payload"]["uid"].is_string() && line["payload"].get("avatar").is_none());
        }
    }
    let run2 = env.store().run(&second).unwrap();
    let summary = run2.envelopes.expect("envelope summary");
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(summary.lines, lines.len() as u64);

    // Reports exist in every default format and name every event.
    let names = [
        "new.hire",
        &cast.reactivated,
        &cast.deleted,
        &cast.deactivated,
        "renamed.person",
        &cast.department,
        &cast.promoted,
        &cast.moved,
    ];
    for extension in ["md", "json", "csv", "html"] {
        let path = env
            .state_dir()
            .join("reports/corp")
            .join(format!("{second}.{extension}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        for name in names {
            assert!(text.contains(name), "{extension} report lacks {name}");
        }
        assert!(text.contains(&second), "{extension} report names the run");
        // CSV is one row per event; the other formats start with the re-performance header.
        if extension != "csv" {
            assert!(
                text.contains(&first),
                "{extension} header names the previous run"
            );
            assert!(
                text.contains(&summary.sha256),
                "{extension} header has the envelope hash"
            );
            assert!(
                text.contains("/api/v3/core/users/"),
                "{extension} header names the endpoints"
            );
        }
    }
    let html = std::fs::read_to_string(
        env.state_dir()
            .join("reports/corp")
            .join(format!("{second}.html")),
    )
    .unwrap();
    assert!(html.starts_with("<!doctype html>") || html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("id=\"leavers\""));
    assert!(!html.contains("<script"));

    // A run without upstream change writes an empty envelope file and no events.
    env.sync_ok();
    let third = run_ids(&env)[2].clone();
    let (bytes, _) = envelope_lines(&env, &third);
    assert!(bytes.is_empty());
    let quiet = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    for key in ["joiners", "movers", "leavers"] {
        assert_eq!(quiet[key], serde_json::json!([]), "{key}");
    }
    let run3 = env.store().run(&third).unwrap();
    assert_eq!(run3.changes.unwrap(), Default::default());
    assert_eq!(run3.versions_written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_files_rebuild_identically_and_project_to_openlane() {
    let env = TestEnv::start(10).await;
    env.sync_ok();
    env.fake.with_state(|state| {
        state.directory.add_user("late.joiner", "external");
    });
    env.sync_ok();
    let latest = run_ids(&env)[1].clone();
    let (original, _) = envelope_lines(&env, &latest);
    let path = env
        .state_dir()
        .join("envelopes/corp")
        .join(format!("{latest}.jsonl"));
    std::fs::remove_file(&path).unwrap();
    let missing = env.aksync(&["envelopes", "latest"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("--rebuild"), "{}", missing.stderr);
    let rebuilt = env.aksync(&["envelopes", "latest", "--rebuild"]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    assert_eq!(std::fs::read(&path).unwrap(), original);
    // Rebuilding writes the file; it does not also print every envelope.
    assert!(rebuilt.stdout.is_empty(), "{}", rebuilt.stdout);
    assert!(rebuilt.stderr.contains("rebuilt"), "{}", rebuilt.stderr);
    let printed = env.aksync(&["envelopes", "latest"]);
    assert_eq!(printed.stdout.as_bytes(), original.as_slice());

    let projection = env
        .aksync(&["envelopes", &latest, "--format", "openlane"])
        .json();
    assert_eq!(projection[0]["schema"], "DirectoryAccount");
    assert_eq!(
        projection[0]["envelopes"][0]["payload"]["username"],
        "late.joiner"
    );
    assert_eq!(projection[0]["envelopes"][0]["action"], "created");
    assert_eq!(projection[1]["schema"], "DirectoryGroup");
    assert_eq!(projection[2]["schema"], "DirectoryMembership");
    // A run's changes are not the source's complete record set: a consumer must not infer
    // that the records missing from them were removed.
    for set in projection.as_array().unwrap() {
        assert_eq!(set["snapshotComplete"], false, "{set}");
    }
}

/// The external ids of a run's records of one kind, as `show` lists them (in id order).
fn shown_ids(env: &TestEnv, kind: &str, run: &str) -> Vec<String> {
    env.show_json(kind, run)
        .as_array()
        .unwrap()
        .iter()
        .map(|record| match kind {
            "memberships" => format!(
                "{}:{}",
                record["account_external_id"].as_str().unwrap(),
                record["group_external_id"].as_str().unwrap()
            ),
            _ => record["external_id"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_snapshot_is_the_only_complete_openlane_projection() {
    let env = TestEnv::start(10).await;
    env.sync_ok();
    env.fake.with_state(|state| {
        state.directory.add_user("late.joiner", "external");
    });
    env.sync_ok();
    let runs = run_ids(&env);
    for run in &runs {
        let (accounts, groups, memberships) = (
            shown_ids(&env, "accounts", run),
            shown_ids(&env, "groups", run),
            shown_ids(&env, "memberships", run),
        );
        for ids in [&accounts, &groups, &memberships] {
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, &sorted, "show lists in id order");
            assert!(!ids.is_empty());
        }

        // Openlane's sets: accounts, groups, memberships, each complete, in id order, a
        // membership's resource its group and its payload the member's uid.
        let full = env.aksync(&["envelopes", run, "--full", "--format", "openlane"]);
        assert_eq!(full.code, 0, "{}", full.stderr);
        let sets = full.json();
        let sets = sets.as_array().unwrap();
        let schemas: Vec<&str> = sets.iter().map(|s| s["schema"].as_str().unwrap()).collect();
        assert_eq!(
            schemas,
            ["DirectoryAccount", "DirectoryGroup", "DirectoryMembership"]
        );
        let resources = |set: &Value| -> Vec<String> {
            set["envelopes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|envelope| {
                    assert!(envelope.get("action").is_none(), "{envelope}");
                    envelope["resource"].as_str().unwrap().to_string()
                })
                .collect()
        };
        assert_eq!(resources(&sets[0]), accounts);
        assert_eq!(resources(&sets[1]), groups);
        let pairs: Vec<String> = sets[2]["envelopes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|envelope| {
                assert_eq!(envelope["resource"], envelope["payload"]["group"]);
                format!(
                    "{}:{}",
                    envelope["payload"]["uid"].as_str().unwrap(),
                    envelope["resource"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(pairs, memberships);
        for set in sets {
            assert_eq!(set["snapshotComplete"], true, "{}", set["schema"]);
        }
        let payload = &sets[0]["envelopes"][0]["payload"];
        assert_eq!(payload["uid"].as_str(), Some(accounts[0].as_str()));
        assert!(payload.get("username").is_some(), "the raw user: {payload}");

        // aksync's own lines: every record once, action `snapshot`, no chain, no changes.
        let lines = env.aksync(&["envelopes", run, "--full"]);
        assert_eq!(lines.code, 0, "{}", lines.stderr);
        let envelopes: Vec<Value> = lines
            .stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let of = |schema: &str| -> Vec<String> {
            envelopes
                .iter()
                .filter(|envelope| envelope["schema"] == schema)
                .map(|envelope| envelope["external_id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(of("DirectoryAccount"), accounts);
        assert_eq!(of("DirectoryGroup"), groups);
        assert_eq!(of("DirectoryMembership"), memberships);
        let order: Vec<&str> = envelopes
            .iter()
            .map(|envelope| envelope["schema"].as_str().unwrap())
            .collect();
        let mut by_kind = order.clone();
        by_kind.sort_by_key(|schema| {
            ["DirectoryAccount", "DirectoryGroup", "DirectoryMembership"]
                .iter()
                .position(|known| known == schema)
        });
        assert_eq!(order, by_kind, "accounts, then groups, then memberships");
        for envelope in &envelopes {
            assert_eq!(envelope["action"], "snapshot");
            assert_eq!(envelope["run_id"], run.as_str());
            assert!(envelope.get("previous_hash").is_none());
            assert!(envelope.get("changes").is_none());
            assert_eq!(envelope["hash"].as_str().unwrap().len(), 64);
        }
    }
    // The first run's snapshot is the directory before the joiner came.
    let first = env
        .aksync(&["envelopes", &runs[0], "--full"])
        .stdout
        .contains("late.joiner");
    let second = env
        .aksync(&["envelopes", &runs[1], "--full"])
        .stdout
        .contains("late.joiner");
    assert_eq!((first, second), (false, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_follows_an_account_that_left_and_came_back() {
    let env = TestEnv::start(12).await;
    let person = env
        .fake
        .with_state(|state| cast(&state.directory).deactivated);
    env.sync_ok();
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&person)
            .unwrap()
            .attributes["title"] = "Lead".into()
    });
    env.sync_ok();
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&person)
            .unwrap()
            .is_active = false
    });
    env.sync_ok();
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&person)
            .unwrap()
            .is_active = true
    });
    env.sync_ok();

    let email = env.fake.with_state(|state| {
        state
            .directory
            .user_by_username(&person)
            .unwrap()
            .email
            .to_uppercase()
    });
    for query in [person.as_str(), email.as_str()] {
        let history = env.aksync(&["history", query, "--json"]).json();
        let events: Vec<(&str, &str)> = history[0]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap(),
                    e["reason"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            events,
            vec![
                // The first run is a baseline: the account was present, not joining.
                ("baseline", ""),
                ("moved", ""),
                ("left", "deactivated"),
                ("rejoined", "reactivated")
            ],
            "{query}"
        );
        assert_eq!(
            history[0]["events"][1]["changes"][0]["field"],
            "metadata.title"
        );
    }
    let text = env.aksync(&["history", &person]);
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("rejoined"), "{}", text.stdout);
    let unknown = env.aksync(&["history", "nobody.at.all"]);
    assert_eq!(unknown.code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_delivery_survives_a_receiver_that_is_down_for_two_runs() {
    let env = TestEnv::start(15).await;
    let receiver = receiver().await;
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        format!(
            "{config}\n[output.webhook]\nurl = {:?}\nbatch_size = 7\n",
            receiver.url
        ),
    )
    .unwrap();
    let first = env.sync_ok();
    assert!(
        first.stderr.contains("webhook delivery paused"),
        "{}",
        first.stderr
    );
    env.fake.with_state(|state| {
        state.directory.add_user("second.run", "internal");
    });
    env.sync_ok();
    receiver.down.store(false, Ordering::SeqCst);
    env.fake.with_state(|state| {
        state.directory.add_user("third.run", "internal");
    });
    let third = env.sync_ok();
    assert!(
        third.stdout.contains("webhook: delivered"),
        "{}",
        third.stdout
    );

    let accepted = receiver.accepted.lock().unwrap().clone();
    let keys: Vec<&str> = accepted.iter().map(|(key, _)| key.as_str()).collect();
    let unique: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(
        unique.len(),
        keys.len(),
        "every batch arrives once: {keys:?}"
    );
    let order = receiver.batches();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "runs oldest first, batches in order");
    // A batch's key names its run and its range of envelopes.
    for (key, body) in &accepted {
        assert_eq!(
            key,
            &format!(
                "{}-{}+{}",
                body["run_id"].as_str().unwrap(),
                body["first"],
                body["envelopes"].as_array().unwrap().len()
            )
        );
    }
    let store = env.store();
    let runs = store.runs(Some("corp")).unwrap();
    assert_eq!(runs.len(), 3);
    for run in &runs {
        let (_, lines) = envelope_lines(&env, &run.run_id);
        let received: Vec<Value> = accepted
            .iter()
            .filter(|(_, body)| body["run_id"] == run.run_id.as_str())
            .flat_map(|(_, body)| body["envelopes"].as_array().unwrap().clone())
            .collect();
        assert_eq!(
            received, lines,
            "run {} arrives whole and in order",
            run.run_id
        );
        let delivery = run.delivery.as_ref().unwrap();
        assert_eq!(delivery.status, aksync::store::DeliveryStatus::Delivered);
    }
    // Nothing is sent again once delivered.
    env.sync_ok();
    assert_eq!(receiver.accepted.lock().unwrap().len(), accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leavers_carry_their_last_active_run_from_the_history() {
    let env = TestEnv::start(12).await;
    env.write_config(aksync::demo::fake::READER_TOKEN, TestEnv::NO_QUARANTINE);
    let (gone_later, quitter) = env.fake.with_state(|state| {
        let cast = cast(&state.directory);
        (cast.deleted, cast.deactivated)
    });
    env.sync_ok(); // R1: both active
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&quitter)
            .unwrap()
            .is_active = false
    });
    env.sync_ok(); // R2: quitter deactivated, gone_later still active
    let held = env.fake.with_state(|state| {
        state
            .directory
            .user_by_username(&quitter)
            .unwrap()
            .groups
            .len()
    });
    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        for name in [&quitter, &gone_later] {
            let pk = directory.user_by_username(name).unwrap().pk;
            directory.users.remove(&pk);
        }
    });
    env.sync_ok(); // R3: both deleted
    let runs = env.store().runs(Some("corp")).unwrap();
    let (r3, r2, r1) = (&runs[0], &runs[1], &runs[2]);

    let leaver = |diff: &Value, name: &str| {
        diff["leavers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["username"] == name)
            .unwrap()
            .clone()
    };
    // Adjacent: the deleted account had been inactive since R2, so its deletion is a purge
    // (the end of the termination that R2 detected), not a second leaver; it was last active
    // in R1.
    let adjacent = env
        .aksync(&["diff", &r2.run_id, &r3.run_id, "--json"])
        .json();
    assert!(adjacent["leavers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["username"] != quitter.as_str()));
    let purge = adjacent["purged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["username"] == quitter.as_str())
        .unwrap()
        .clone();
    // Latency is an upper bound: from the start of the last run that saw it active.
    assert_eq!(
        purge["last_seen_active_at"],
        serde_json::to_value(r1.started_at).unwrap()
    );
    assert_eq!(leaver(&adjacent, &gone_later)["reason"], "deleted");
    // Across runs: R1 → R3 compares an active account with a deleted one, so both are
    // leavers; the other account was still active in R2, between the two runs compared.
    let across = env
        .aksync(&["diff", &r1.run_id, &r3.run_id, "--json"])
        .json();
    let deleted = leaver(&across, &quitter);
    assert_eq!(deleted["reason"], "deleted");
    assert_eq!(
        deleted["groups_at_departure"].as_array().unwrap().len(),
        held
    );
    let deleted = leaver(&across, &gone_later);
    assert_eq!(
        deleted["last_seen_active_at"],
        serde_json::to_value(r2.started_at).unwrap()
    );
    assert_eq!(
        deleted["detected_at"],
        serde_json::to_value(r3.finished_at).unwrap()
    );

    // A period report covers every run after --from, each event with the run that saw it.
    let out = env.dir.path().join("period.csv");
    let report = env.aksync(&[
        "report",
        "latest",
        "--from",
        &r1.run_id,
        "--format",
        "csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(
        csv.starts_with("source,run_id,run_started_at,event,reason,external_id,username"),
        "{csv}"
    );
    // run_id is the second column, event the fourth.
    let rows = |kind: &str| -> Vec<Vec<&str>> {
        csv.lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|cells| cells[3] == kind)
            .collect()
    };
    let leaver_rows = rows("leaver");
    assert_eq!(leaver_rows.len(), 2, "{csv}");
    assert!(leaver_rows
        .iter()
        .any(|row| row[6] == quitter && row[1] == r2.run_id));
    assert!(leaver_rows
        .iter()
        .any(|row| row[6] == gone_later && row[1] == r3.run_id));
    let purged_rows = rows("purged");
    assert_eq!(purged_rows.len(), 1, "{csv}");
    assert!(purged_rows[0][6] == quitter && purged_rows[0][1] == r3.run_id);

    let json = env.aksync(&["report", "--format", "json"]).json();
    assert_eq!(json["period"]["run_id"], r3.run_id.as_str());
    assert_eq!(json["period"]["start_run"], r2.run_id.as_str());
    assert_eq!(json["runs"][0]["previous_run"], r2.run_id.as_str());
    let bad = env.aksync(&["report", "--format", "xml"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("md, json, csv, html or pdf"),
        "{}",
        bad.stderr
    );
    let backwards = env.aksync(&["report", &r1.run_id, "--from", &r3.run_id]);
    assert_eq!(backwards.code, 2, "{}", backwards.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdf_reports_need_chromium_and_say_so() {
    let env = TestEnv::start(5).await;
    env.sync_ok();
    let out = env.dir.path().join("report.pdf");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        .args([
            "--config",
            env.config_path.to_str().unwrap(),
            "report",
            "--format",
            "pdf",
        ])
        .env("AKSYNC_CHROMIUM", env.dir.path().join("no-such-chromium"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.to_lowercase().contains("chromium"), "{stderr}");
    if aksync::output::report::find_chromium().is_some() {
        let run = env.aksync(&["report", "--format", "pdf", "--out", out.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(std::fs::read(&out).unwrap().starts_with(b"%PDF"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_hours_schedule_is_expected_to_pause_over_the_weekend() {
    // Every 5 minutes on weekdays, 9:00 to 17:55: the longest gap is Friday 17:55 to Monday
    // 09:00, whenever it is asked, not the 5 minutes of the next few runs.
    let env = TestEnv::start(4).await;
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "schedule = \"*/5 9-17 * * 1-5\"",
    );
    env.sync_ok();
    let report = env.aksync(&["report", "latest", "--format", "json"]).json();
    let weekend = 63 * 3600 + 5 * 60;
    assert_eq!(
        report["period"]["settings"]["expected_interval_seconds"],
        weekend * 3 / 2,
        "{}",
        report["period"]["settings"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_per_run_leaves_runs_that_changed_nothing_without_files_of_their_own() {
    let env = TestEnv::start(5).await;
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    let with_policy = |policy: &str| {
        std::fs::write(
            &env.config_path,
            format!("{base}\n[output]\nreports_per_run = {policy:?}\n"),
        )
        .unwrap()
    };
    let manifest = |run_id: &str| {
        env.state_dir()
            .join(format!("reports/corp/{run_id}.manifest.json"))
            .exists()
    };
    // By default ("changes"): the baseline has its reports, a run that changed nothing none,
    // and no repair writes them later.
    env.sync_ok();
    env.sync_ok();
    let later = env.sync_ok();
    assert!(
        !later.stderr.contains("writing the reports"),
        "{}",
        later.stderr
    );
    let ids = run_ids(&env);
    assert!(manifest(&ids[0]));
    assert!(!manifest(&ids[1]) && !manifest(&ids[2]));
    // On demand, and in the period's report, the run is all there.
    let single = env.aksync(&["report", &ids[1], "--format", "json"]);
    assert_eq!(single.code, 0, "{}", single.stderr);
    assert_eq!(single.json()["runs"].as_array().unwrap().len(), 1);
    let period = env
        .aksync(&["report", "--since", "2000-01-01", "--format", "json"])
        .json();
    assert_eq!(common::ids(&period["runs"], "run_id"), ids);

    with_policy("always");
    env.sync_ok();
    with_policy("never");
    env.fake
        .with_state(|state| state.directory.add_user("new.joiner", "internal"));
    env.sync_ok();
    let ids = run_ids(&env);
    assert!(manifest(&ids[3]), "always: a run that changed nothing");
    assert!(!manifest(&ids[4]), "never: not even a joiner's run");
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);

    with_policy("sometimes");
    let refused = env.aksync(&["sync"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("output.reports_per_run") && refused.stderr.contains("\"changes\""),
        "{}",
        refused.stderr
    );
}

/// Sets the `[output]` table of the env's config, the rest as it was written, at each call.
fn output_table(env: &TestEnv) -> impl Fn(&str) + '_ {
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    move |table| {
        std::fs::write(&env.config_path, format!("{config}\n[output]\n{table}\n")).unwrap();
    }
}

/// `aksync sync` with `AKSYNC_LOG=info`; what it logged.
fn sync_logged(env: &TestEnv) -> String {
    let sync = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        .arg("--config")
        .arg(&env.config_path)
        .arg("sync")
        .env("AKSYNC_LOG", "info")
        .env_remove("AKSYNC_CONFIG")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&sync.stderr).into_owned();
    assert!(sync.status.success(), "{log}");
    log
}

/// `aksync sync` killed after its commit, while it writes its reports (a PDF that never
/// comes), and an envelope file lost since: the next `aksync sync` writes the killed run's
/// reports with their ledger entry and rebuilds the envelope file as the run wrote it, and
/// says so; the chain then verifies. A run that changed nothing, and so had no reports, is
/// no crash to repair when `reports_per_run` changes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_sync_repairs_what_a_killed_sync_left_behind() {
    use std::time::{Duration, Instant};

    let env = TestEnv::start(10).await;
    let output = output_table(&env);
    output("reports = [\"json\", \"md\"]");
    env.sync_ok();
    let first = run_ids(&env)[0].clone();
    let envelopes = env.state_dir().join("envelopes/corp");
    let lost = envelopes.join(format!("{first}.jsonl"));
    let written = std::fs::read(&lost).unwrap();

    // The second run commits, then waits on a Chromium that never answers, and is killed.
    let (chromium, chromium_pid) = common::hanging_chromium(env.dir.path());
    output("reports = [\"pdf\", \"json\", \"md\"]");
    env.fake.with_state(|state| {
        state.directory.add_user("killed.joiner", "internal");
    });
    let mut sync = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        .arg("--config")
        .arg(&env.config_path)
        .arg("sync")
        .env("AKSYNC_CHROMIUM", &chromium)
        .env_remove("AKSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&chromium_pid)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the PDF report never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    sync.kill().unwrap();
    sync.wait().unwrap();
    // SAFETY: kill(2) of the stand-in Chromium this test started, by its pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = run_ids(&env)[1].clone();
    let reports_dir = env.state_dir().join("reports/corp");
    let manifest = reports_dir.join(format!("{killed}.manifest.json"));
    assert!(!manifest.exists(), "killed before its reports");
    std::fs::remove_file(&lost).unwrap();

    // The next sync, with a change of its own, puts both right after its own run.
    output("reports = [\"json\", \"md\"]");
    env.fake.with_state(|state| {
        state.directory.add_user("next.joiner", "internal");
    });
    let log = sync_logged(&env);
    assert!(
        log.contains("writing the reports of a complete run that has none")
            && log.contains(&killed),
        "{log}"
    );
    assert!(log.contains("envelope file was missing: rebuilt"), "{log}");
    assert!(manifest.exists());
    for extension in ["json", "md"] {
        assert!(reports_dir.join(format!("{killed}.{extension}")).exists());
    }
    assert_eq!(std::fs::read(&lost).unwrap(), written, "rebuilt as written");
    assert_eq!(run_ids(&env).len(), 3);
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);

    env.sync_ok();
    let quiet = run_ids(&env)[3].clone();
    assert!(!reports_dir.join(format!("{quiet}.md")).exists());
    output("reports = [\"json\", \"md\"]\nreports_per_run = \"always\"");
    let log = sync_logged(&env);
    assert!(
        !log.contains("writing the reports of a complete run"),
        "{log}"
    );
    assert!(!reports_dir.join(format!("{quiet}.md")).exists());
}

/// A sync killed after it wrote its report files and before it recorded them in the ledger
/// leaves files that nothing vouches for: the next sync writes them again and records them.
/// (The files are put there by hand here, for a run whose settings gave it none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_files_a_killed_sync_did_not_record_are_written_again_and_recorded() {
    let env = TestEnv::start(10).await;
    let output = output_table(&env);
    output("reports = [\"json\", \"md\"]\nreports_per_run = \"never\"");
    env.sync_ok();
    let first = run_ids(&env)[0].clone();
    let reports_dir = env.state_dir().join("reports/corp");
    std::fs::create_dir_all(&reports_dir).unwrap();
    let names = ["json", "md", "manifest.json"].map(|extension| format!("{first}.{extension}"));
    for name in &names {
        std::fs::write(reports_dir.join(name), "unrecorded").unwrap();
    }

    output("reports = [\"json\", \"md\"]");
    let log = sync_logged(&env);
    assert!(
        log.contains("writing the reports of a complete run that has none") && log.contains(&first),
        "{log}"
    );
    for name in &names {
        let written = std::fs::read_to_string(reports_dir.join(name)).unwrap();
        assert_ne!(written, "unrecorded", "{name}");
    }
    let store = env.store();
    let recorded =
        aksync::ledger::read::report_files(&store.reader().unwrap(), "corp", &first).unwrap();
    let recorded: BTreeSet<String> = recorded
        .expect("a reports entry")
        .files
        .into_iter()
        .map(|file| file.name)
        .collect();
    assert_eq!(recorded, names.into_iter().collect());
    drop(store);
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}
