//! The diff rules, one scenario each, through the real pipeline (collect → plan → commit) on
//! hand-written Authentik objects.

use super::*;
use crate::testing::TestSource;
use serde_json::{json, Value};

fn user(pk: i64, active: bool, groups: &[&str], attributes: Value) -> Value {
    json!({"pk": pk, "username": format!("user{pk}"), "name": format!("User {pk}"),
           "is_active": active, "groups": groups, "email": format!("U{pk}@example.com"),
           "attributes": attributes, "uid": format!("uid{pk}"), "path": "users",
           "type": "internal", "last_login": "2026-11-01T08:00:00Z", "is_superuser": false})
}

fn group(pk: &str, superuser: bool, users: &[i64]) -> Value {
    json!({"pk": pk, "name": format!("Group {pk}"), "is_superuser": superuser,
           "parents": [], "users": users, "attributes": {}})
}

fn before() -> (Vec<Value>, Vec<Value>) {
    (
        vec![
            user(1, true, &["g1"], json!({"department": "hr"})),
            user(2, true, &["g1"], json!({})),
            user(3, true, &[], json!({})),
            user(4, false, &[], json!({})),
            user(5, true, &["g1"], json!({})),
        ],
        vec![
            group("g1", false, &[1, 2, 5]),
            group("admins", true, &[]),
            group("old", false, &[]),
        ],
    )
}

fn after() -> (Vec<Value>, Vec<Value>) {
    let mut renamed = user(3, true, &["admins"], json!({}));
    renamed["username"] = json!("user3-renamed");
    renamed["is_superuser"] = json!(true);
    renamed["last_login"] = json!("2026-11-02T01:30:00Z");
    (
        vec![
            user(1, true, &["g1"], json!({"department": "it"})),
            // 2 deleted
            renamed,
            user(4, true, &[], json!({})),
            user(5, false, &[], json!({})),
            user(6, true, &["g1"], json!({})),
        ],
        vec![
            group("g1", false, &[1, 6]),
            group("admins", true, &[3]),
            group("new", false, &[]),
        ],
    )
}

/// The diff of the second of two runs.
fn diff_of(first: (Vec<Value>, Vec<Value>), second: (Vec<Value>, Vec<Value>)) -> DirectoryDiff {
    let mut source = TestSource::new();
    source.sync(first.0, first.1);
    source.sync(second.0, second.1).diff.unwrap()
}

#[test]
fn joiners_movers_and_leavers_are_exact() {
    let mut source = TestSource::new();
    let first = source.sync(before().0, before().1);
    let result = source.sync(after().0, after().1).diff.unwrap();
    let joiners: Vec<(&str, JoinReason)> = result
        .joiners
        .iter()
        .map(|j| (j.external_id.as_str(), j.reason))
        .collect();
    assert_eq!(
        joiners,
        vec![
            ("uid4", JoinReason::Reactivated),
            ("uid6", JoinReason::Created)
        ]
    );
    assert_eq!(
        result.joiners[1].groups,
        vec![GroupRef {
            external_id: "g1".into(),
            display_name: "Group g1".into()
        }]
    );

    let leavers: Vec<(&str, LeaveReason)> = result
        .leavers
        .iter()
        .map(|l| (l.external_id.as_str(), l.reason))
        .collect();
    assert_eq!(
        leavers,
        vec![
            ("uid2", LeaveReason::Deleted),
            ("uid5", LeaveReason::Deactivated)
        ]
    );
    for leaver in &result.leavers {
        assert_eq!(leaver.groups_at_departure.len(), 1);
        assert_eq!(leaver.last_seen_active_at, Some(first.run.finished_at));
        assert!(leaver.memberships_removed);
        assert_eq!(
            leaver.last_login_at.as_deref(),
            Some("2026-11-01T08:00:00Z")
        );
    }

    assert_eq!(result.movers.len(), 2);
    let department = &result.movers[0];
    assert_eq!(department.external_id, "uid1");
    assert_eq!(
        department.changes,
        vec![FieldChange {
            field: "metadata.department".into(),
            old: json!("hr"),
            new: json!("it")
        }]
    );
    assert!(!department.privilege_escalation);
    let renamed = &result.movers[1];
    assert_eq!(renamed.external_id, "uid3");
    let fields: Vec<&str> = renamed.changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec!["is_superuser", "username"]);
    assert_eq!(renamed.groups_added[0].external_id, "admins");
    assert!(renamed.privilege_escalation, "joined a superuser group");

    let refs = |ids: &[&str]| -> Vec<GroupRef> {
        ids.iter()
            .map(|id| GroupRef {
                external_id: id.to_string(),
                display_name: format!("Group {id}"),
            })
            .collect()
    };
    assert_eq!(result.groups.created, refs(&["new"]));
    assert_eq!(result.groups.deleted, refs(&["old"]));
    let pairs = |changes: &[MembershipRef]| -> Vec<String> {
        changes
            .iter()
            .map(|m| format!("{}:{}", m.account_external_id, m.group_external_id))
            .collect()
    };
    assert_eq!(
        pairs(&result.memberships.added),
        vec!["uid3:admins", "uid6:g1"]
    );
    assert_eq!(
        pairs(&result.memberships.removed),
        vec!["uid2:g1", "uid5:g1"]
    );
    assert_eq!(
        result.population,
        Population {
            accounts: BeforeAfter {
                before: 5,
                after: 5
            },
            active: BeforeAfter {
                before: 4,
                after: 4
            },
            superusers: BeforeAfter {
                before: 0,
                after: 1
            },
            created: 1,
            deleted: 1,
        }
    );
}

#[test]
fn the_first_run_is_a_baseline_not_a_wave_of_joiners() {
    let mut source = TestSource::new();
    let mut admin = user(9, true, &["admins"], json!({}));
    admin["is_superuser"] = json!(true);
    let mut users = before().0;
    users.push(admin);
    let mut groups = before().1;
    groups[1] = group("admins", true, &[9]);
    let result = source.sync(users, groups).diff.unwrap();
    assert!(result.joiners.is_empty() && result.movers.is_empty());
    let baseline = result.baseline.expect("a baseline");
    assert_eq!(baseline.superusers.len(), 1);
    assert_eq!(baseline.superusers[0].username, "user9");
    assert_eq!(result.population.accounts.after, 6);
    assert_eq!(result.population.created, 6);
    assert_eq!(result.population.active.after, 5);
}

#[test]
fn identical_runs_and_volatile_fields_make_no_change() {
    let result = diff_of(before(), before());
    assert!(result.is_empty());
    let mut logged_in = user(1, true, &[], json!({"department": "hr"}));
    logged_in["last_login"] = json!("2026-11-02T00:00:00Z");
    logged_in["last_updated"] = json!("2026-11-02T00:00:00Z");
    logged_in["password_change_date"] = json!("2026-11-02T00:00:00Z");
    let result = diff_of(
        (
            vec![user(1, true, &[], json!({"department": "hr"}))],
            vec![],
        ),
        (vec![logged_in], vec![]),
    );
    assert!(result.is_empty());
}

#[test]
fn ignore_fields_silence_a_field() {
    let mut source = TestSource::new();
    source.source.ignore_fields = vec!["metadata.department".to_string(), "username".to_string()];
    source.sync(before().0, before().1);
    let result = source.sync(after().0, after().1).diff.unwrap();
    assert!(result.movers.iter().all(|m| m.external_id != "uid1"));
    let renamed = result
        .movers
        .iter()
        .find(|m| m.external_id == "uid3")
        .unwrap();
    assert!(renamed.changes.iter().all(|c| c.field != "username"));
}

#[test]
fn becoming_superuser_is_an_escalation_and_group_flags_are_changes() {
    let mut renamed_admins = group("g1", true, &[1]);
    renamed_admins["name"] = json!("Renamed");
    let mut promoted = user(1, true, &["g1"], json!({}));
    promoted["is_superuser"] = json!(true);
    let result = diff_of(
        (
            vec![user(1, true, &["g1"], json!({}))],
            vec![group("g1", false, &[1])],
        ),
        (vec![promoted], vec![renamed_admins]),
    );
    assert!(result.movers[0].privilege_escalation);
    let fields: Vec<&str> = result.groups.changed[0]
        .changes
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(fields, vec!["display_name", "is_superuser"]);
}

/// Authentik inherits the superuser flag from ancestor groups: joining a child of the admin
/// group is an escalation even if the account's own flag says nothing.
#[test]
fn superuser_rights_inherited_from_an_ancestor_count() {
    let mut child = group("child", false, &[]);
    child["parents"] = json!(["admins"]);
    let mut child_with_member = child.clone();
    child_with_member["users"] = json!([1]);
    let result = diff_of(
        (
            vec![user(1, true, &[], json!({}))],
            vec![group("admins", true, &[]), child],
        ),
        (
            vec![user(1, true, &["child"], json!({}))],
            vec![group("admins", true, &[]), child_with_member],
        ),
    );
    assert!(result.movers[0].privilege_escalation);
    assert_eq!(result.escalations(), 1);
}

#[test]
fn created_and_reactivated_superusers_are_escalations() {
    let mut admin = user(7, true, &["admins"], json!({}));
    admin["is_superuser"] = json!(true);
    let mut reactivated = user(4, true, &["admins"], json!({"title": "back"}));
    reactivated["is_superuser"] = json!(true);
    let mut dormant = user(4, false, &[], json!({}));
    dormant["is_superuser"] = json!(false);
    let result = diff_of(
        (vec![dormant], vec![group("admins", true, &[])]),
        (
            vec![admin, reactivated],
            vec![group("admins", true, &[4, 7])],
        ),
    );
    let joiners: Vec<(&str, JoinReason, bool)> = result
        .joiners
        .iter()
        .map(|j| (j.external_id.as_str(), j.reason, j.privilege_escalation))
        .collect();
    assert_eq!(
        joiners,
        vec![
            ("uid4", JoinReason::Reactivated, true),
            ("uid7", JoinReason::Created, true)
        ]
    );
    // What changed together with the reactivation is shown, not dropped.
    let back = &result.joiners[0];
    let fields: Vec<&str> = back.changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec!["is_superuser", "metadata.title"]);
    assert_eq!(back.groups_added[0].external_id, "admins");
    assert_eq!(result.escalations(), 2);
}

#[test]
fn accounts_created_inactive_are_not_joiners() {
    let result = diff_of(
        (vec![user(1, true, &[], json!({}))], vec![]),
        (
            vec![
                user(1, true, &[], json!({})),
                user(2, false, &[], json!({})),
            ],
            vec![],
        ),
    );
    assert!(result.joiners.is_empty());
    assert_eq!(result.population.created, 1);
    assert_eq!(result.population.accounts.after, 2);
    assert_eq!(result.population.active.after, 1);
}

/// Deactivated in one run, deleted in the next: one leaver event, then a purge.
#[test]
fn deleting_an_account_that_already_left_is_a_purge() {
    let mut source = TestSource::new();
    let first = source.sync(
        vec![
            user(1, true, &["g1"], json!({})),
            user(2, true, &[], json!({})),
        ],
        vec![group("g1", false, &[1])],
    );
    let left = source
        .sync(
            vec![
                user(1, false, &["g1"], json!({})),
                user(2, true, &[], json!({})),
            ],
            vec![group("g1", false, &[1])],
        )
        .diff
        .unwrap();
    assert_eq!(left.leavers.len(), 1);
    assert_eq!(left.leavers[0].reason, LeaveReason::Deactivated);
    assert!(!left.leavers[0].memberships_removed);
    let purged = source
        .sync(
            vec![user(2, true, &[], json!({}))],
            vec![group("g1", false, &[])],
        )
        .diff
        .unwrap();
    assert!(purged.leavers.is_empty(), "not a second leaver");
    assert_eq!(purged.purged.len(), 1);
    let purge = &purged.purged[0];
    assert_eq!(purge.external_id, "uid1");
    // The history says when the account was last active: the first run.
    assert_eq!(purge.last_seen_active_at, Some(first.run.finished_at));
    assert_eq!(purged.population.deleted, 1);
}

#[test]
fn effective_superuser_walks_a_cyclic_hierarchy_without_looping() {
    let group = |id: &str, parent: &str, superuser: bool| DirectoryGroup {
        external_id: id.into(),
        display_name: id.to_uppercase(),
        is_superuser: superuser,
        parents: vec![parent.into()],
        metadata: Default::default(),
        member_count: 0,
    };
    let catalog = BTreeMap::from([
        ("a".to_string(), group("a", "b", false)),
        ("b".to_string(), group("b", "a", false)),
        ("c".to_string(), group("c", "d", false)),
        ("d".to_string(), group("d", "x", true)),
    ]);
    assert_eq!(
        superuser_path(&BTreeSet::from(["a".to_string()]), &catalog),
        None
    );
    assert_eq!(
        superuser_path(&BTreeSet::from(["c".to_string()]), &catalog),
        Some(vec!["C".to_string(), "D".to_string()])
    );
}
