//! `aksync sync` against the fake Authentik: the stored snapshot is exactly the directory,
//! storage grows with changes only, past runs read back as they were, and faults end as
//! failed runs that leave the last complete snapshot in place.

mod common;

use std::collections::BTreeSet;

use aksync::demo::fake::{Directory, Fault, ListKind, PageHook};
use common::{assert_accounts_match, ids, TestEnv};
use serde_json::Value;

/// The directory as aksync should store it: account uids, group pks and membership pairs.
fn expected(directory: &Directory) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut accounts: Vec<String> = directory
        .users
        .keys()
        .map(|pk| directory.uid(*pk))
        .collect();
    accounts.sort();
    let groups: Vec<String> = directory.groups.keys().cloned().collect();
    let mut memberships: Vec<String> = directory
        .users
        .values()
        .flat_map(|user| {
            let uid = directory.uid(user.pk);
            user.groups
                .iter()
                .map(move |group| format!("{uid}:{group}"))
        })
        .collect();
    memberships.sort();
    (accounts, groups, memberships)
}

fn membership_ids(records: &Value) -> Vec<String> {
    let mut ids: Vec<String> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["role"], "MEMBER");
            format!(
                "{}:{}",
                m["account_external_id"].as_str().unwrap(),
                m["group_external_id"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stores_exactly_the_directory() {
    let env = TestEnv::start(30).await;
    let run = env.sync_ok();
    assert!(run.stdout.contains("complete"), "{}", run.stdout);

    let directory = env.fake.with_state(|state| state.directory.clone());
    let (accounts, groups, memberships) = expected(&directory);
    let stored_accounts = env.show_json("accounts", "latest");
    assert_eq!(ids(&stored_accounts, "external_id"), accounts);
    assert_eq!(
        ids(&env.show_json("groups", "latest"), "external_id"),
        groups
    );
    assert_eq!(
        membership_ids(&env.show_json("memberships", "latest")),
        memberships
    );

    // Field by field, for every account.
    assert_accounts_match(&stored_accounts, &directory);
    let types: BTreeSet<&str> = directory
        .users
        .values()
        .map(|u| u.user_type.as_str())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "internal",
            "external",
            "service_account",
            "internal_service_account"
        ]),
        "the generated directory holds every user type"
    );

    // Groups keep their parents (several for some) and superuser flag.
    for record in env.show_json("groups", "latest").as_array().unwrap() {
        let group = &directory.groups[record["external_id"].as_str().unwrap()];
        let mut parents = group.parents.clone();
        parents.sort();
        assert_eq!(record["parents"], serde_json::to_value(&parents).unwrap());
        assert_eq!(record["is_superuser"], group.is_superuser);
        assert_eq!(record["display_name"], group.name.as_str());
    }
    assert!(directory.groups.values().any(|g| g.parents.len() > 1));

    // The readable table and the CSV hold the same accounts.
    let table = env.aksync(&["show", "accounts"]);
    assert_eq!(table.stdout.lines().count(), accounts.len() + 1);
    assert!(table.stdout.starts_with("USERNAME"), "{}", table.stdout);
    let csv = env.aksync(&["show", "accounts", "--csv"]);
    let mut lines = csv.stdout.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("external_id,secondary_key,username,"));
    assert_eq!(lines.count(), accounts.len());
    let both = env.aksync(&["show", "accounts", "--csv", "--json"]);
    assert_eq!(both.code, 2);

    // The state directory aksync created holds personal data: owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.state_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    // The raw payload is kept without the avatar, the member lists and the login times.
    let store = env.store();
    let latest = store.latest_complete("corp").unwrap().unwrap();
    let reader = store.reader().unwrap();
    let account = reader
        .records_at(&latest, aksync::run::record::RecordKind::Account)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    for dropped in ["avatar", "groups", "last_login", "last_updated"] {
        assert!(account.payload.get(dropped).is_none(), "{dropped}");
    }
    assert!(account.payload.get("uid").is_some());
    drop(reader);
    assert_eq!(latest.authentik_version.as_deref(), Some("2025.12.4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamped_concurrent_paging_equals_sequential_paging() {
    let env = TestEnv::start(60).await;
    env.fake.with_state(|state| state.max_page_size = 7);
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "page_size = 1000\nconcurrency = 1",
    );
    env.sync_ok();
    let sequential = env.show_json("accounts", "latest");
    let sequential_members = env.show_json("memberships", "latest");
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "page_size = 1000\nconcurrency = 8",
    );
    env.sync_ok();
    assert_eq!(env.show_json("accounts", "latest"), sequential);
    assert_eq!(env.show_json("memberships", "latest"), sequential_members);
    let users = env.fake.with_state(|state| state.directory.users.len());
    assert_eq!(sequential.as_array().unwrap().len(), users);
    // The clamp was in force: many pages were requested.
    let pages = env.fake.with_state(|state| {
        state
            .request_log
            .iter()
            .filter(|line| line.contains("/core/users/?"))
            .count()
    });
    assert!(pages >= 2 * users.div_ceil(7), "{pages} page requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_directory_adds_a_run_but_no_record_versions() {
    let env = TestEnv::start(20).await;
    env.sync_ok();
    let versions = env.store().version_count("corp").unwrap();
    assert!(versions > 20);
    env.sync_ok();
    let store = env.store();
    assert_eq!(store.version_count("corp").unwrap(), versions);
    let runs = store.runs(Some("corp")).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].versions_written, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_past_run_reads_back_as_the_directory_was() {
    let env = TestEnv::start(15).await;
    env.write_config(aksync::demo::fake::READER_TOKEN, TestEnv::NO_QUARANTINE);
    let mut history = Vec::new();
    let capture = |env: &TestEnv| {
        (
            env.show_json("accounts", "latest"),
            env.show_json("groups", "latest"),
            env.show_json("memberships", "latest"),
        )
    };
    env.sync_ok();
    history.push(capture(&env));

    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let pk = directory.add_user("new.joiner", "internal");
        let group = directory.groups.keys().next().unwrap().clone();
        directory.users.get_mut(&pk).unwrap().groups.push(group);
        let victim = *directory.users.keys().nth(10).unwrap();
        directory.users.remove(&victim);
    });
    env.sync_ok();
    history.push(capture(&env));

    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        let user = directory.user_by_username_mut("new.joiner").unwrap();
        user.is_active = false;
        user.name = "Renamed Person".into();
        user.groups.clear();
        let hr = directory.group_by_name("HR").unwrap().pk.clone();
        directory.remove_group(&hr);
    });
    env.sync_ok();
    history.push(capture(&env));

    let runs = env.store().runs(Some("corp")).unwrap();
    let run_ids: Vec<String> = runs.iter().rev().map(|run| run.run_id.clone()).collect();
    assert_eq!(run_ids.len(), 3);
    // Volatile values (last login and update, member count) are kept as their latest value only: an
    // older run reads back its material content, exactly.
    let material = |records: &Value| -> Value {
        let mut records = records.clone();
        for record in records.as_array_mut().unwrap() {
            let record = record.as_object_mut().unwrap();
            for volatile in ["last_login_at", "last_updated_at", "member_count"] {
                record.remove(volatile);
            }
        }
        records
    };
    for (index, (run_id, (accounts, groups, memberships))) in
        run_ids.iter().zip(&history).enumerate()
    {
        let shown_accounts = env.show_json("accounts", run_id);
        let shown_groups = env.show_json("groups", run_id);
        let latest = index == run_ids.len() - 1;
        assert_eq!(
            shown_accounts[0].get("last_login_at").is_some(),
            latest,
            "volatile values belong to the latest run only"
        );
        assert_eq!(shown_groups[0].get("member_count").is_some(), latest);
        assert_eq!(
            material(&shown_accounts),
            material(accounts),
            "accounts of {run_id}"
        );
        assert_eq!(
            material(&shown_groups),
            material(groups),
            "groups of {run_id}"
        );
        assert_eq!(
            &env.show_json("memberships", run_id),
            memberships,
            "memberships of {run_id}"
        );
    }
    assert_ne!(history[0].0, history[1].0);
    assert_ne!(history[1].1, history[2].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_mid_listing_gives_a_failed_run_and_keeps_the_snapshot() {
    let env = TestEnv::start(50).await;
    env.fake.with_state(|state| state.max_page_size = 10);
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "page_size = 10\nconcurrency = 2",
    );
    env.sync_ok();
    let before = env.show_json("accounts", "latest");
    env.fake.with_state(|state| {
        state.directory.add_user("never.stored", "internal");
        state.faults.push(Fault {
            path_contains: "/core/users/".into(),
            // /me/ and page 1 pass, then the listing breaks for good.
            skip: 2,
            times: None,
            status: 502,
            body: "<html>Bad Gateway</html>".into(),
            retry_after: None,
            location: None,
        });
    });
    let run = env.aksync(&["sync"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("failed"), "{}", run.stdout);
    assert!(run.stdout.contains("502"), "{}", run.stdout);

    let runs = env.store().runs(Some("corp")).unwrap();
    assert_eq!(runs[0].status, aksync::store::RunStatus::Failed);
    assert!(runs[0].error.as_deref().unwrap().contains("502"));
    assert_eq!(runs[0].counts.accounts, 0);
    assert_eq!(env.show_json("accounts", "latest"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_shifts_between_pages_is_never_stored_partially() {
    for (list, page) in [(ListKind::Users, 3), (ListKind::Groups, 2)] {
        let env = TestEnv::start(40).await;
        env.fake.with_state(|state| state.max_page_size = 5);
        env.write_config(
            aksync::demo::fake::READER_TOKEN,
            "page_size = 5\nconcurrency = 1",
        );
        env.fake.with_state(|state| {
            state.page_hooks.push(PageHook {
                list,
                page,
                action: Box::new(|directory: &mut Directory| {
                    // Changes the count of both listings, which is seen as a shift.
                    directory.add_group("AAA early group", &[], false);
                    directory.add_user("aaa.inserted", "internal");
                }),
            });
        });
        let run = env.aksync(&["sync"]);
        let directory = env.fake.with_state(|state| state.directory.clone());
        let (accounts, groups, memberships) = expected(&directory);
        if run.code == 0 {
            assert_eq!(
                ids(&env.show_json("accounts", "latest"), "external_id"),
                accounts
            );
            assert_eq!(
                ids(&env.show_json("groups", "latest"), "external_id"),
                groups
            );
            assert_eq!(
                membership_ids(&env.show_json("memberships", "latest")),
                memberships
            );
        } else {
            assert_eq!(run.code, 1);
            let runs = env.store().runs(Some("corp")).unwrap();
            assert_eq!(runs[0].status, aksync::store::RunStatus::Failed);
        }
        // The shift was seen and the listing was read again.
        let first_pages = env.fake.with_state(|state| {
            state
                .request_log
                .iter()
                .filter(|line| line.contains("/core/users/?") && line.contains("page=1&"))
                .count()
        });
        assert_eq!(
            first_pages, 2,
            "{list:?}: the shift is seen and the directory read once more"
        );
        // The hook fires once, so the second read is consistent and the run complete.
        assert_eq!(run.code, 0, "{list:?}: {}", run.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_renamed_during_the_listing_keeps_its_page() {
    let env = TestEnv::start(40).await;
    env.fake.with_state(|state| state.max_page_size = 3);
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "page_size = 3\nconcurrency = 1",
    );
    env.fake.with_state(|state| {
        // Sorted by name, the group that comes last would jump to page 1 once renamed, and
        // the listing would miss it; sorted by pk, it stays where it is.
        let last = state
            .directory
            .groups
            .values()
            .max_by(|a, b| a.name.cmp(&b.name))
            .unwrap()
            .pk
            .clone();
        state.page_hooks.push(PageHook {
            list: ListKind::Groups,
            page: 2,
            action: Box::new(move |directory: &mut Directory| {
                directory.groups.get_mut(&last).unwrap().name = "AAA renamed".into();
            }),
        });
    });
    env.sync_ok();
    let group_reads = env.fake.with_state(|state| {
        state
            .request_log
            .iter()
            .filter(|line| line.contains("/core/groups/?") && line.contains("page=1&"))
            .count()
    });
    assert_eq!(group_reads, 1, "the rename did not disturb the listing");
    let directory = env.fake.with_state(|state| state.directory.clone());
    assert_eq!(
        ids(&env.show_json("groups", "latest"), "external_id"),
        expected(&directory).1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_2025_12_servers_with_a_single_parent_are_read() {
    let env = TestEnv::start(10).await;
    env.fake.with_state(|state| {
        state.legacy_parent_shape = true;
        state.version = "2025.10.3".into();
    });
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    for record in env.show_json("groups", "latest").as_array().unwrap() {
        let group = &directory.groups[record["external_id"].as_str().unwrap()];
        let expected: Vec<String> = group.parents.first().cloned().into_iter().collect();
        assert_eq!(record["parents"], serde_json::to_value(expected).unwrap());
    }
    let latest = env.store().latest_complete("corp").unwrap().unwrap();
    assert_eq!(latest.authentik_version.as_deref(), Some("2025.10.3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sync_off_stores_accounts_only() {
    let env = TestEnv::start(10).await;
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "disable_group_sync = true\nprimary_directory = true",
    );
    env.sync_ok();
    assert_eq!(env.show_json("groups", "latest"), serde_json::json!([]));
    assert_eq!(
        env.show_json("memberships", "latest"),
        serde_json::json!([])
    );
    let accounts = env.show_json("accounts", "latest");
    assert!(accounts
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a.get("primary_source").is_none()));
    let groups_requested = env.fake.with_state(|state| {
        state
            .request_log
            .iter()
            .any(|l| l.contains("/core/groups/"))
    });
    assert!(!groups_requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_sees_part_of_the_directory_fails_the_run() {
    let env = TestEnv::start(10).await;
    env.write_config(aksync::demo::fake::OBJECT_READER_TOKEN, "");
    let run = env.aksync(&["sync"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("only part of the directory"),
        "{}",
        run.stdout
    );
    assert!(env.store().latest_complete("corp").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_database_or_output() {
    let env = TestEnv::start(10).await;
    env.sync_ok();
    env.write_config(aksync::demo::fake::REVOKED_TOKEN, "");
    let failed = env.aksync(&["sync"]);
    let check = env.aksync(&["check"]);
    let database = std::fs::read(env.database()).unwrap();
    for token in [
        aksync::demo::fake::READER_TOKEN,
        aksync::demo::fake::REVOKED_TOKEN,
    ] {
        let needle = token.as_bytes();
        assert!(
            !database.windows(needle.len()).any(|w| w == needle),
            "token in the database"
        );
        for text in [&failed.stdout, &failed.stderr, &check.stdout, &check.stderr] {
            assert!(!text.contains(token), "token in output: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_keeps_matching_accounts_and_their_memberships_only() {
    let env = TestEnv::start(30).await;
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "filter = \"payload.type == 'internal'\"",
    );
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    let internal: Vec<&aksync::demo::fake::FakeUser> = directory
        .users
        .values()
        .filter(|user| user.user_type == "internal")
        .collect();
    let mut expected_accounts: Vec<String> =
        internal.iter().map(|user| directory.uid(user.pk)).collect();
    expected_accounts.sort();
    assert_eq!(
        ids(&env.show_json("accounts", "latest"), "external_id"),
        expected_accounts
    );
    let mut expected_memberships: Vec<String> = internal
        .iter()
        .flat_map(|user| {
            user.groups
                .iter()
                .map(|group| format!("{}:{group}", directory.uid(user.pk)))
        })
        .collect();
    expected_memberships.sort();
    assert_eq!(
        membership_ids(&env.show_json("memberships", "latest")),
        expected_memberships
    );
    assert_eq!(
        ids(&env.show_json("groups", "latest"), "external_id").len(),
        directory.groups.len()
    );
    // The snapshot is the directory: `show --all` lists the others, out of scope, and the
    // memberships of out-of-scope accounts with them.
    let all = |kind: &str| env.aksync(&["show", kind, "--all", "--json"]).json();
    let accounts = all("accounts");
    let outside: Vec<&Value> = accounts
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["scope"] == "out")
        .collect();
    assert_eq!(outside.len(), directory.users.len() - internal.len());
    assert!(
        outside
            .iter()
            .all(|row| row["authentik_type"].is_string() && row["authentik_type"] != "internal"),
        "{accounts}"
    );
    let memberships = all("memberships");
    let total: usize = directory.users.values().map(|user| user.groups.len()).sum();
    assert_eq!(memberships.as_array().unwrap().len(), total);
    let out = memberships
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["scope"] == "out")
        .count();
    assert_eq!(out, total - expected_memberships.len(), "{memberships}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_settings_are_scope_changes_not_fabricated_leavers() {
    let env = TestEnv::start(20).await;
    env.sync_ok();
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "disable_group_sync = true\nfilter = \"payload.type == 'internal'\"",
    );
    env.sync_ok();
    // Compared with the run before (issue 16): what the filter and group sync left out are
    // scope changes, never leavers; no envelope says a record was deleted upstream.
    let store = env.store();
    let runs = store.runs(Some("corp")).unwrap();
    let latest = &runs[0];
    assert_eq!(
        latest.previous_run.as_deref(),
        Some(runs[1].run_id.as_str())
    );
    assert_eq!(latest.baseline_reason, None);
    assert_eq!(latest.changes.unwrap().leavers, 0);
    let path = env
        .state_dir()
        .join("envelopes/corp")
        .join(format!("{}.jsonl", latest.run_id));
    let lines = std::fs::read_to_string(path).unwrap();
    assert!(!lines.is_empty());
    for line in lines.lines() {
        let envelope: Value = serde_json::from_str(line).unwrap();
        assert_eq!(envelope["action"], "deleted", "{line}");
        assert_eq!(envelope["reason"], "out_of_scope", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_with_a_revoked_token_marks_the_source_unhealthy() {
    let env = TestEnv::start(5).await;
    env.sync_ok();
    let healthy = env.store().health("corp").unwrap().unwrap();
    assert_eq!(healthy.status, aksync::store::HealthStatus::Healthy);
    env.write_config(aksync::demo::fake::REVOKED_TOKEN, "");
    let run = env.aksync(&["sync"]);
    assert_eq!(run.code, 1);
    let health = env.store().health("corp").unwrap().unwrap();
    assert_eq!(health.status, aksync::store::HealthStatus::NeedsAttention);
    assert_eq!(health.reason_code.as_deref(), Some("bad_token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sources_are_kept_apart() {
    let env = TestEnv::start(8).await;
    let other = aksync::demo::fake::FakeAuthentik::start(Directory::generate(99, 5))
        .await
        .unwrap();
    let config = format!(
        "state_dir = {:?}\n\n[sources.corp]\nbase_url = {:?}\ntoken_file = \"token\"\n\n[sources.lab]\nbase_url = {:?}\ntoken_file = \"token\"\n",
        env.state_dir().display().to_string(),
        env.fake.base_url(),
        other.base_url()
    );
    std::fs::write(&env.config_path, config).unwrap();
    let run = env.aksync(&["sync"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("corp: run") && run.stdout.contains("lab: run"),
        "{}",
        run.stdout
    );
    let ambiguous = env.aksync(&["show", "accounts"]);
    assert_eq!(ambiguous.code, 2);
    assert!(
        ambiguous.stderr.contains("--source"),
        "{}",
        ambiguous.stderr
    );
    let lab = env
        .aksync(&["show", "accounts", "--source", "lab", "--json"])
        .json();
    let lab_users = other.with_state(|state| state.directory.users.len());
    assert_eq!(lab.as_array().unwrap().len(), lab_users);
    let all_runs = env.aksync(&["runs", "--json"]).json();
    assert_eq!(all_runs.as_array().unwrap().len(), 2);
    let corp_runs = env.aksync(&["runs", "--source", "corp", "--json"]).json();
    assert_eq!(corp_runs.as_array().unwrap().len(), 1);
    let corp_run = corp_runs[0]["run_id"].as_str().unwrap().to_string();
    let wrong = env.aksync(&["show", "accounts", "--source", "lab", "--run", &corp_run]);
    assert_eq!(wrong.code, 2);
    assert!(
        wrong.stderr.contains("belongs to source `corp`"),
        "{}",
        wrong.stderr
    );
    assert!(
        env.state_dir().join("envelopes/lab").is_dir()
            && env.state_dir().join("envelopes/corp").is_dir()
    );
    let unknown = env.aksync(&["sync", "--source", "nope"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("`corp`, `lab`"),
        "{}",
        unknown.stderr
    );

    // A source that cannot be run (here its lock file cannot be opened) does not keep the
    // other from its run; its run is recorded as failed with the reason, and the exit code
    // and one line on stderr say what happened.
    let lock = env.state_dir().join("locks/source-corp.lock");
    std::fs::remove_file(&lock).ok();
    std::fs::create_dir_all(&lock).unwrap();
    other.with_state(|state| {
        state.directory.add_user("lab.joiner", "internal");
    });
    let partial = env.aksync(&["sync"]);
    assert_eq!(partial.code, 1, "{}{}", partial.stdout, partial.stderr);
    assert_eq!(
        partial.stderr.trim().lines().count(),
        1,
        "{}",
        partial.stderr
    );
    assert!(
        partial.stderr.contains("cannot lock") && partial.stderr.contains("source=corp"),
        "{}",
        partial.stderr
    );
    assert!(partial.stdout.contains("lab: run"), "{}", partial.stdout);
    let lab_runs = env.aksync(&["runs", "--source", "lab", "--json"]).json();
    assert_eq!(lab_runs.as_array().unwrap().len(), 2);
    let corp_runs = env.aksync(&["runs", "--source", "corp", "--json"]).json();
    assert_eq!(corp_runs[0]["status"], "failed", "{corp_runs}");
    assert!(
        corp_runs[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot lock"),
        "{corp_runs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_of_the_store_need_no_token() {
    let env = TestEnv::start(6).await;
    env.sync_ok();
    let username = env.fake.with_state(|state| {
        let pk = state.directory.add_user("late.joiner", "internal");
        state.directory.users[&pk].username.clone()
    });
    env.sync_ok();
    // As under systemd with the service stopped: its credential is gone.
    let missing = "/run/credentials/aksync.service/missing.token";
    let config = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "token_file = \"token\"",
        &format!("token_file = {missing:?}"),
    );
    std::fs::write(
        &env.config_path,
        format!("{config}\n[retention]\nkeep_runs = 1\n"),
    )
    .unwrap();
    for args in [
        &["runs"][..],
        &["show", "accounts"],
        &["diff", "previous", "latest"],
        &["report", "latest"],
        &["history", &username],
        &["envelopes", "latest"],
        &["prune", "--dry-run"],
        &["verify"],
    ] {
        let run = env.aksync(args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains(missing), "{args:?}: {}", run.stderr);
    }
    for args in [&["sync"][..], &["check"]] {
        let run = env.aksync(args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains(&format!("`sources.corp.token_file`: cannot read {missing}")),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// The uids of the accounts whose envelopes a run wrote.
fn account_envelope_ids(env: &TestEnv, run_id: &str) -> Vec<String> {
    let path = env
        .state_dir()
        .join("envelopes/corp")
        .join(format!("{run_id}.jsonl"));
    let lines = std::fs::read_to_string(path).unwrap();
    lines
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|envelope| envelope["schema"] == "DirectoryAccount")
        .map(|envelope| envelope["external_id"].as_str().unwrap().to_string())
        .collect()
}

/// The usernames of a diff's movers.
fn mover_names(env: &TestEnv) -> Vec<String> {
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    diff["movers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mover| mover["username"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_fields_take_authentik_names_and_the_old_ones_still_work() {
    let env = TestEnv::start(10).await;
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "ignore_fields = [\"attributes.title\"]",
    );
    env.sync_ok();
    let (titled, renamed) = env.fake.with_state(|state| {
        let directory = &state.directory;
        let mut named = directory
            .users
            .values()
            .filter(|user| user.attributes.get("title").is_some() && !user.name.is_empty());
        let (titled, renamed) = (named.next().unwrap(), named.next().unwrap());
        (
            (titled.username.clone(), directory.uid(titled.pk)),
            (renamed.username.clone(), directory.uid(renamed.pk)),
        )
    });
    let retitle = |title: &str| {
        env.fake.with_state(|state| {
            state
                .directory
                .user_by_username_mut(&titled.0)
                .unwrap()
                .attributes["title"] = title.into();
        })
    };
    retitle("Chief Counter of Beans");
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(&renamed.0)
            .unwrap()
            .name = "Someone Else".into();
    });
    let second = env.sync_ok();
    assert!(!second.stderr.contains("WARN"), "{}", second.stderr);
    let runs = common::run_ids(&env);
    // The title is ignored: no mover, no envelope; the name is still a change.
    assert_eq!(mover_names(&env), [renamed.0.as_str()]);
    assert_eq!(account_envelope_ids(&env, &runs[1]), [renamed.1.as_str()]);

    // aksync's old name of the same field ignores it too, with a warning naming the new one,
    // and names the same field, so it starts no new baseline.
    env.write_config(
        aksync::demo::fake::READER_TOKEN,
        "ignore_fields = [\"metadata.title\"]",
    );
    let check = env.aksync(&["check"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    for run in [&check, &env.sync_ok()] {
        assert!(
            run.stderr.contains(
                "`sources.corp.ignore_fields` entry \"metadata.title\" is aksync's deprecated name of the field: write \"attributes.title\""
            ),
            "{}",
            run.stderr
        );
    }
    retitle("Vice Counter of Beans");
    env.sync_ok();
    let runs = common::run_ids(&env);
    assert!(env.store().run(&runs[3]).unwrap().baseline_reason.is_none());
    assert!(mover_names(&env).is_empty());
    assert!(account_envelope_ids(&env, &runs[3]).is_empty());
}

/// Every file under `dir` with its bytes: what a command that writes nothing leaves as it was.
fn tree_of(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// `sync --dry-run` prints the envelopes the run would emit and writes nothing: the state
/// directory is byte for byte as it was, and the real sync then emits the same changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_what_would_be_emitted_and_writes_nothing() {
    let env = TestEnv::start(12).await;
    env.write_config(aksync::demo::fake::READER_TOKEN, TestEnv::NO_QUARANTINE);
    env.sync_ok();
    env.fake.with_state(|state| {
        state.directory.add_user("dry.joiner", "internal");
        let leaver = state
            .directory
            .users
            .values_mut()
            .find(|user| {
                user.username != "akadmin" && user.is_active && user.user_type == "internal"
            })
            .unwrap();
        leaver.is_active = false;
    });
    let before = tree_of(&env.state_dir());
    let dry = env.aksync(&["sync", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stderr.contains("dry run, nothing written") && dry.stderr.contains("1 joiners"),
        "{}",
        dry.stderr
    );
    assert_eq!(
        tree_of(&env.state_dir()),
        before,
        "the dry run wrote nothing"
    );
    let key = |line: &str| {
        let envelope: Value = serde_json::from_str(line).unwrap();
        (
            envelope["schema"].to_string(),
            envelope["action"].to_string(),
            envelope["external_id"].to_string(),
            envelope["hash"].to_string(),
        )
    };
    let would: Vec<_> = dry.stdout.lines().map(key).collect();
    assert!(would
        .iter()
        .any(|(_, action, _, _)| action == "\"created\""));
    env.sync_ok();
    let emitted: Vec<_> = env
        .aksync(&["envelopes", "latest"])
        .stdout
        .lines()
        .map(key)
        .collect();
    assert_eq!(would, emitted);
}
