//! The pipeline at a realistic size (never timed: speed is the benchmark's business, see
//! `benches/scale.rs`): a 20,000-user directory is stored exactly, record by record, and the
//! diff of a 1% churn run is exactly the churn.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aksync::demo::fake::READER_TOKEN;
use common::{assert_accounts_match, ids, TestEnv};
use serde_json::Value;

fn membership_ids(records: &Value) -> BTreeSet<String> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}:{}",
                m["account_external_id"].as_str().unwrap(),
                m["group_external_id"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_users_are_stored_exactly() {
    let env = TestEnv::start(20_000).await;
    env.write_config(READER_TOKEN, "page_size = 100\nconcurrency = 4");
    env.sync_ok();
    let directory = env.fake.with_state(|state| state.directory.clone());
    assert_accounts_match(&env.show_json("accounts", "latest"), &directory);
    let groups = env.show_json("groups", "latest");
    let mut members: BTreeMap<&str, u64> = BTreeMap::new();
    let mut expected = BTreeSet::new();
    for user in directory.users.values() {
        for group in &user.groups {
            *members.entry(group.as_str()).or_default() += 1;
            expected.insert(format!("{}:{group}", directory.uid(user.pk)));
        }
    }
    assert_eq!(
        ids(&groups, "external_id"),
        directory.groups.keys().cloned().collect::<Vec<_>>()
    );
    for group in groups.as_array().unwrap() {
        let id = group["external_id"].as_str().unwrap();
        let fake = &directory.groups[id];
        assert_eq!(group["display_name"], fake.name.as_str());
        let mut parents = fake.parents.clone();
        parents.sort();
        assert_eq!(group["parents"], serde_json::to_value(parents).unwrap());
        assert_eq!(group["member_count"], members.get(id).copied().unwrap_or(0));
    }
    assert_eq!(
        membership_ids(&env.show_json("memberships", "latest")),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_percent_churn_runs_diff_is_exactly_the_churn() {
    let env = TestEnv::start(3_000).await;
    env.sync_ok();
    let before = env.fake.with_state(|state| state.directory.clone());
    let groups: Vec<String> = before.groups.keys().cloned().collect();
    // Distinct active people for each kind of change, six of each: 1% of the directory.
    let people: Vec<&aksync::demo::fake::FakeUser> = before
        .users
        .values()
        .filter(|user| user.is_active && user.user_type == "internal" && !user.groups.is_empty())
        .collect();
    let pick = |kind: usize| -> Vec<String> {
        (0..6)
            .map(|index| people[kind * 97 + index * 13].username.clone())
            .collect()
    };
    let (deleted, deactivated, retitled, moved) = (pick(0), pick(1), pick(2), pick(3));
    let created: Vec<String> = (0..6).map(|index| format!("churn.new.{index}")).collect();
    let target = groups[3].clone();
    env.fake.with_state(|state| {
        let directory = &mut state.directory;
        for name in &created {
            let pk = directory.add_user(name, "internal");
            directory
                .users
                .get_mut(&pk)
                .unwrap()
                .groups
                .push(target.clone());
        }
        for name in &deleted {
            let pk = directory.user_by_username(name).unwrap().pk;
            directory.users.remove(&pk);
        }
        for name in &deactivated {
            directory.user_by_username_mut(name).unwrap().is_active = false;
        }
        for name in &retitled {
            directory.user_by_username_mut(name).unwrap().attributes["title"] = "Churned".into();
        }
        for name in &moved {
            directory.user_by_username_mut(name).unwrap().groups = vec![target.clone()];
        }
    });
    env.sync_ok();
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    let names = |key: &str, reason: Option<&str>| -> BTreeSet<String> {
        diff[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| reason.is_none_or(|reason| item["reason"] == reason))
            .map(|item| item["username"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |names: &[String]| names.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(names("joiners", Some("created")), set(&created));
    assert_eq!(names("joiners", None).len(), created.len());
    assert_eq!(names("leavers", Some("deleted")), set(&deleted));
    assert_eq!(names("leavers", Some("deactivated")), set(&deactivated));
    assert_eq!(names("leavers", None).len(), 12);
    let mut movers = set(&retitled);
    // A move into the group already held changes nothing; the others are movers.
    movers.extend(
        moved
            .iter()
            .filter(|name| before.user_by_username(name).unwrap().groups != [target.clone()])
            .cloned(),
    );
    assert_eq!(names("movers", None), movers);
    assert!(diff["purged"].as_array().unwrap().is_empty());
    assert_eq!(diff["groups"]["changed"], serde_json::json!([]));

    // Memberships: the new people's, the moved people's new and old, the deleted people's.
    let after = env.fake.with_state(|state| state.directory.clone());
    let pairs = |directory: &aksync::demo::fake::Directory, names: &[String]| -> BTreeSet<String> {
        names
            .iter()
            .filter_map(|name| directory.user_by_username(name))
            .flat_map(|user| {
                let uid = directory.uid(user.pk);
                user.groups
                    .iter()
                    .map(move |group| format!("{uid}:{group}"))
            })
            .collect()
    };
    let mut added = pairs(&after, &created);
    added.extend(
        pairs(&after, &moved)
            .difference(&pairs(&before, &moved))
            .cloned(),
    );
    let mut removed = pairs(&before, &deleted);
    removed.extend(
        pairs(&before, &moved)
            .difference(&pairs(&after, &moved))
            .cloned(),
    );
    let listed = |key: &str| membership_ids(&diff["memberships"][key]);
    assert_eq!(listed("added"), added);
    assert_eq!(listed("removed"), removed);
    assert_eq!(diff["population"]["created"], 6);
    assert_eq!(diff["population"]["deleted"], 6);
    assert_eq!(
        diff["population"]["accounts"]["after"],
        after.users.len() as u64
    );
}
