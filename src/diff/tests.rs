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
        // Latency counts from the start of the last run that saw it active: an upper bound.
        assert_eq!(leaver.last_seen_active_at, Some(first.run.started_at));
        let run = source.store.run(&result.to_run).unwrap();
        assert_eq!(
            leaver.latency_seconds,
            Some((run.finished_at - first.run.started_at).num_seconds() as u64)
        );
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
    // Joining the admins makes Authentik set is_superuser: the grant says so, not a change.
    assert_eq!(fields, vec!["username"]);
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
            ..Population::default()
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
    // Groups that were there are not "created", nor the admins' group a privileged change.
    assert_eq!(
        result.groups,
        GroupChanges::default(),
        "{:?}",
        result.groups
    );
    assert!(result.privileged_group_changes.is_empty());
    assert!(result.privilege_granted.is_empty());
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
    // The account changed only because its group did: one event, one place. The grant and
    // the group change say it; the account is no mover.
    assert!(result.movers.is_empty(), "{:?}", result.movers);
    assert_eq!(result.escalations(), 1);
    let grant = &result.privilege_granted[0];
    assert_eq!(grant.reason, crate::diff::PrivilegeReason::GroupChanged);
    assert_eq!(grant.privilege_source, crate::diff::GROUP_FLAG_CHANGED);
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
    // What changed together with the reactivation is shown, not dropped; the superuser flag
    // that joining the admins gives is the grant, not a change of the account's own.
    let back = &result.joiners[0];
    let fields: Vec<&str> = back.changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(fields, vec!["metadata.title"]);
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
    // Inactive, but still in g1, and used after the first run saw it active.
    let mut inactive = user(1, false, &["g1"], json!({}));
    inactive["last_login"] = json!("2099-01-01T00:00:00Z");
    inactive["last_updated"] = json!("2099-01-01T00:00:01Z");
    let left = source
        .sync(
            vec![inactive, user(2, true, &[], json!({}))],
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
    // The ledger says when the account was last active: the first run, from its start.
    assert_eq!(purge.last_seen_active_at, Some(first.run.started_at));
    assert_eq!(purged.population.deleted, 1);
    // What the deletion took away, and the account's last values before it.
    let groups: Vec<&str> = purge
        .groups_at_deletion
        .iter()
        .map(|group| group.external_id.as_str())
        .collect();
    assert_eq!(groups, ["g1"]);
    assert_eq!(purge.last_login_at.as_deref(), Some("2099-01-01T00:00:00Z"));
    assert_eq!(
        purge.authentik_last_updated.as_deref(),
        Some("2099-01-01T00:00:01Z")
    );
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
        roles: Vec::new(),
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

fn child_of(pk: &str, parent: &str, users: &[i64]) -> Value {
    let mut child = group(pk, false, users);
    child["parents"] = json!([parent]);
    child
}

/// A group's superuser flag switched on makes every member privileged, also the members of
/// its child groups and without any change to their own records: one privileged group
/// change naming the group, and one grant per account.
#[test]
fn a_group_flag_switched_on_is_one_group_change_and_a_grant_per_member() {
    let users = || {
        vec![
            user(1, true, &["g1"], json!({})),
            user(2, true, &["child"], json!({})),
            user(3, false, &["g1"], json!({})),
            user(4, true, &[], json!({})),
        ]
    };
    let result = diff_of(
        (
            users(),
            vec![group("g1", false, &[1, 3]), child_of("child", "g1", &[2])],
        ),
        (
            users(),
            vec![group("g1", true, &[1, 3]), child_of("child", "g1", &[2])],
        ),
    );
    let granted: Vec<(&str, PrivilegeReason, &str)> = result
        .privilege_granted
        .iter()
        .map(|g| {
            (
                g.external_id.as_str(),
                g.reason,
                g.privilege_source.as_str(),
            )
        })
        .collect();
    // The inactive member holds no access.
    assert_eq!(
        granted,
        vec![
            ("uid1", PrivilegeReason::GroupChanged, GROUP_FLAG_CHANGED),
            ("uid2", PrivilegeReason::GroupChanged, GROUP_FLAG_CHANGED),
        ]
    );
    assert_eq!(
        path_text(&result.privilege_granted[1].path),
        "Group child → Group g1"
    );
    assert_eq!(result.privileged_group_changes.len(), 1);
    let change = &result.privileged_group_changes[0];
    assert_eq!(change.display_name, "Group g1");
    assert_eq!(change.accounts_granted, 2);
    assert_eq!(change.changes[0].field, "is_superuser");
    assert!(result.movers.is_empty(), "no account record changed");
    assert_eq!(result.escalations(), 2);
}

/// Configured privileged groups count like superuser groups, by name or pk; a parent change
/// that puts a group under one is a grant for its members with the inheritance path, and its
/// parents are named, not listed as pks.
#[test]
fn privileged_groups_by_name_and_a_parent_change_grant_with_the_path() {
    let mut source = TestSource::new();
    source.source.privileged_groups = vec!["Group approvers".to_string()];
    source.source.hr_key_field = Some("attributes.hr.id".to_string());
    let people = |in_team: &[i64]| {
        vec![
            user(1, true, &["team"], json!({"hr": {"id": "E-1"}})),
            user(
                2,
                true,
                if in_team.contains(&2) { &["team"] } else { &[] },
                json!({"hr": {"id": 2}}),
            ),
        ]
    };
    source.sync(
        people(&[1]),
        vec![group("approvers", false, &[]), group("team", false, &[1])],
    );
    let result = source
        .sync(
            people(&[1, 2]),
            vec![
                group("approvers", false, &[]),
                child_of("team", "approvers", &[1, 2]),
            ],
        )
        .diff
        .unwrap();
    let granted: Vec<(&str, PrivilegeReason, &str, Option<&str>)> = result
        .privilege_granted
        .iter()
        .map(|g| {
            (
                g.external_id.as_str(),
                g.reason,
                g.privilege_source.as_str(),
                g.hr_key.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        granted,
        vec![
            (
                "uid1",
                PrivilegeReason::GroupChanged,
                "Group team → Group approvers",
                Some("E-1")
            ),
            // Added to the team in the same run: its own move is what granted it.
            (
                "uid2",
                PrivilegeReason::Moved,
                "Group team → Group approvers",
                Some("2")
            ),
        ]
    );
    let mover = &result.movers[0];
    assert!(mover.privilege_escalation && mover.privileged);
    assert_eq!(mover.hr_key.as_deref(), Some("2"));
    let change = &result.privileged_group_changes[0];
    assert_eq!(change.display_name, "Group team");
    assert_eq!(change.accounts_granted, 1);
    assert_eq!(change.changes[0].field, "parents");
    assert_eq!(change.changes[0].new, json!(["Group approvers"]));
}

/// A reactivated admin is a grant; an admin who leaves takes privilege away, and the leaver
/// says it was privileged; an inactive account moved into the admin group gains nothing.
#[test]
fn reactivation_and_departure_of_admins_grant_and_remove_privilege() {
    let result = diff_of(
        (
            vec![
                user(1, false, &["admins"], json!({})),
                user(2, true, &["admins"], json!({"employee_id": "E-2"})),
                user(3, false, &[], json!({})),
            ],
            vec![group("admins", true, &[1, 2])],
        ),
        (
            vec![
                user(1, true, &["admins"], json!({})),
                user(2, false, &["admins"], json!({"employee_id": "E-2"})),
                user(3, false, &["admins"], json!({})),
            ],
            vec![group("admins", true, &[1, 2, 3])],
        ),
    );
    assert_eq!(result.joiners.len(), 1);
    assert!(result.joiners[0].privilege_escalation);
    assert_eq!(
        result.joiners[0].privilege_source.as_deref(),
        Some("Group admins")
    );
    let granted: Vec<(&str, PrivilegeReason)> = result
        .privilege_granted
        .iter()
        .map(|g| (g.external_id.as_str(), g.reason))
        .collect();
    assert_eq!(granted, vec![("uid1", PrivilegeReason::Reactivated)]);
    let removed: Vec<(&str, PrivilegeReason)> = result
        .privilege_removed
        .iter()
        .map(|g| (g.external_id.as_str(), g.reason))
        .collect();
    assert_eq!(removed, vec![("uid2", PrivilegeReason::Deactivated)]);
    let leaver = &result.leavers[0];
    assert!(leaver.privileged_at_departure);
    assert_eq!(leaver.privilege_source.as_deref(), Some("Group admins"));
    let mover = result
        .movers
        .iter()
        .find(|m| m.external_id == "uid3")
        .unwrap();
    assert!(!mover.privilege_escalation && !mover.privileged);
}

#[test]
fn hr_keys_come_from_the_configured_attribute() {
    let rules = AccountRules {
        hr_key_field: Some("attributes.employee_id".to_string()),
        ..AccountRules::default()
    };
    let mut account: DirectoryAccount = serde_json::from_value(json!({
        "external_id": "u", "secondary_key": null, "username": "u", "display_name": "U",
        "given_name": null, "family_name": null, "canonical_email": null, "status": "ACTIVE",
        "account_type": "USER", "authentik_type": null, "is_superuser": false,
        "organization_unit": null, "added_at": null, "last_login_at": null,
        "metadata": {"employee_id": 4711}, "primary_source": false
    }))
    .unwrap();
    assert_eq!(rules.hr_key(&account).as_deref(), Some("4711"));
    account.metadata.clear();
    assert_eq!(rules.hr_key(&account), None);
    assert_eq!(AccountRules::default().hr_key(&account), None);
}

#[test]
fn privileged_groups_are_found_top_down_through_a_cycle() {
    let group = |id: &str, parents: &[&str], superuser: bool| {
        (
            id.to_string(),
            DirectoryGroup {
                external_id: id.into(),
                display_name: id.to_uppercase(),
                is_superuser: superuser,
                parents: parents.iter().map(|p| p.to_string()).collect(),
                metadata: Default::default(),
                member_count: 0,
                roles: Vec::new(),
            },
        )
    };
    let catalog = BTreeMap::from([
        group("root", &[], true),
        group("a", &["root", "b"], false),
        group("b", &["a"], false),
        group("c", &["x"], false),
        group("named", &[], false),
    ]);
    let rules = AccountRules {
        privileged_groups: BTreeSet::from(["NAMED".to_string()]),
        ..AccountRules::default()
    };
    let ids: Vec<String> = rules.privileged_group_ids(&catalog).into_iter().collect();
    assert_eq!(ids, vec!["a", "b", "named", "root"]);
    let path = rules
        .privilege_path(&BTreeSet::from(["b".to_string()]), &catalog)
        .unwrap();
    assert_eq!(path_text(&path), "B → A → ROOT");
}

/// The privileged accounts counted from a run's stored records agree with the diff's grants
/// and removals: start + granted − removed = end, with the same paths.
#[test]
fn the_census_of_stored_runs_agrees_with_the_grants() {
    let mut source = TestSource::new();
    source.source.privileged_groups = vec!["approvers".to_string()];
    let first = source.sync(
        vec![
            user(1, true, &["team"], json!({})),
            user(2, true, &["admins"], json!({})),
            user(3, false, &["admins"], json!({})),
        ],
        vec![
            group("admins", true, &[2, 3]),
            group("approvers", false, &[]),
            group("team", false, &[1]),
        ],
    );
    let second = source.sync(
        vec![
            user(1, true, &["team"], json!({})),
            user(2, false, &["admins"], json!({})),
            user(3, true, &["admins"], json!({})),
        ],
        vec![
            group("admins", true, &[2, 3]),
            group("approvers", false, &[]),
            child_of("team", "approvers", &[1]),
        ],
    );
    let diff = second.diff.unwrap();
    let reader = source.store.reader().unwrap();
    let rules = AccountRules::of(&source.source);
    let census = |run| crate::ledger::replay::census(&reader, &rules, run).unwrap();
    let (start, end) = (census(&first.run), census(&second.run));
    let names = |census: &crate::diff::Census| -> Vec<(String, String)> {
        census
            .privileged
            .iter()
            .map(|a| (a.username.clone(), a.privilege_source.clone()))
            .collect()
    };
    assert_eq!(names(&start), vec![("user2".into(), "Group admins".into())]);
    assert_eq!(
        names(&end),
        vec![
            ("user1".into(), "Group team → Group approvers".into()),
            ("user3".into(), "Group admins".into()),
        ]
    );
    assert_eq!((end.accounts, end.active), (3, 2));
    assert_eq!(
        start.privileged.len() + diff.privilege_granted.len() - diff.privilege_removed.len(),
        end.privileged.len()
    );
}

/// The evidence of a termination is judged when the run detects it: the latency from the
/// start of the last run that saw the account active, the SLA in force, and a login after
/// that run had finished (a login while it was still reading the directory proves nothing).
#[test]
fn a_leaver_carries_its_latency_sla_and_login_warning_as_of_its_run() {
    for (sla, login, within, warned) in [
        (Some(90), "2026-11-01T10:01:15Z", Some(true), false),
        (Some(89), "2026-11-01T10:01:45Z", Some(false), true),
        (None, "not a time", None, false),
    ] {
        let mut source = TestSource::new();
        source.source.sla = sla.map(std::time::Duration::from_secs);
        // Runs start a minute apart and take 30 s: 10:01:00–10:01:30, then 10:02:00–10:02:30.
        source.sync(vec![user(1, true, &[], json!({}))], vec![]);
        let mut gone = user(1, false, &[], json!({}));
        gone["last_login"] = json!(login);
        let result = source.sync(vec![gone], vec![]).diff.unwrap();
        let leaver = &result.leavers[0];
        assert_eq!(leaver.latency_seconds, Some(90));
        assert_eq!(leaver.sla_seconds, sla);
        assert_eq!(leaver.within_sla, within, "sla {sla:?}");
        assert_eq!(leaver.login_after_last_seen, warned, "login {login}");
    }
}

/// A role held directly, or through a group and its ancestors, is privileged access when
/// `privileged_roles` names it, by uuid or by name; the path says how it is held.
#[test]
fn privileged_roles_grant_privilege_directly_and_through_groups() {
    let mut source = TestSource::new();
    source.source.privileged_roles = vec!["Auditors".to_string(), "r-direct".to_string()];
    let mut parent = group("parent", false, &[]);
    parent["roles"] = json!(["r-audit"]);
    parent["roles_obj"] = json!([{"pk": "r-audit", "name": "Auditors"}]);
    let mut child = group("child", false, &[]);
    child["parents"] = json!(["parent"]);
    source.sync(
        vec![user(1, true, &[], json!({})), user(2, true, &[], json!({}))],
        vec![parent.clone(), child.clone()],
    );
    let mut direct = user(2, true, &[], json!({}));
    direct["roles"] = json!(["r-direct"]);
    child["users"] = json!([1]);
    let result = source
        .sync(
            vec![user(1, true, &["child"], json!({})), direct],
            vec![parent, child],
        )
        .diff
        .unwrap();
    let grants: Vec<(&str, &str)> = result
        .privilege_granted
        .iter()
        .map(|grant| (grant.external_id.as_str(), grant.privilege_source.as_str()))
        .collect();
    assert_eq!(
        grants,
        vec![
            ("uid1", "Group child → Group parent → role Auditors"),
            ("uid2", "role r-direct")
        ]
    );
    // The direct role is a change of the account itself.
    let mover = result
        .movers
        .iter()
        .find(|mover| mover.external_id == "uid2")
        .unwrap();
    assert_eq!(mover.changes[0].field, "roles");
}
