//! The diff rules, one scenario each, on hand-built snapshots.

use super::*;
use crate::normalize::normalize;
use chrono::TimeZone;
use serde_json::json;

fn user(pk: i64, active: bool, groups: &[&str], attributes: Value) -> Value {
    json!({"pk": pk, "username": format!("user{pk}"), "name": format!("User {pk}"),
           "is_active": active, "groups": groups, "email": format!("U{pk}@example.com"),
           "attributes": attributes, "uid": format!("uid{pk}"), "path": "users",
           "type": "internal", "last_login": "2026-11-01T08:00:00Z"})
}

fn group(pk: &str, superuser: bool, users: &[i64]) -> Value {
    json!({"pk": pk, "name": format!("Group {pk}"), "is_superuser": superuser,
           "parents": [], "users": users, "attributes": {}})
}

fn at(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, hour, 0, 0).unwrap()
}

fn run_diff(from: &Snapshot, to: &Snapshot, ignore: &[String]) -> DirectoryDiff {
    diff(&DiffInput {
        source: "corp",
        from: Side {
            run_id: "R1",
            finished_at: at(1),
            snapshot: from,
        },
        to: Side {
            run_id: "R2",
            finished_at: at(2),
            snapshot: to,
        },
        last_active: &BTreeMap::new(),
        ignore_fields: ignore,
    })
}

fn before() -> Snapshot {
    normalize(
        vec![
            user(1, true, &["g1"], json!({"department": "hr"})),
            user(2, true, &["g1"], json!({})),
            user(3, true, &[], json!({})),
            user(4, false, &[], json!({})),
            user(5, true, &["g1"], json!({})),
        ],
        Some(vec![
            group("g1", false, &[1, 2, 5]),
            group("admins", true, &[]),
            group("old", false, &[]),
        ]),
        false,
    )
    .unwrap()
}

fn after() -> Snapshot {
    let mut renamed = user(3, true, &["admins"], json!({}));
    renamed["username"] = json!("user3-renamed");
    renamed["last_login"] = json!("2026-11-02T01:30:00Z");
    normalize(
        vec![
            user(1, true, &["g1"], json!({"department": "it"})),
            // 2 deleted
            renamed,
            user(4, true, &[], json!({})),
            user(5, false, &[], json!({})),
            user(6, true, &["g1"], json!({})),
        ],
        Some(vec![
            group("g1", false, &[1, 6]),
            group("admins", true, &[3]),
            group("new", false, &[]),
        ]),
        false,
    )
    .unwrap()
}

#[test]
fn joiners_movers_and_leavers_are_exact() {
    let result = run_diff(&before(), &after(), &[]);
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
        assert_eq!(leaver.last_seen_active_at, Some(at(1)));
        assert_eq!(leaver.detected_at, at(2));
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
    assert_eq!(
        renamed
            .changes
            .iter()
            .map(|c| c.field.as_str())
            .collect::<Vec<_>>(),
        vec!["username"]
    );
    assert_eq!(renamed.groups_added[0].external_id, "admins");
    assert!(renamed.privilege_escalation, "joined a superuser group");

    assert_eq!(
        result.groups.created,
        vec![GroupRef {
            external_id: "new".into(),
            display_name: "Group new".into()
        }]
    );
    assert_eq!(
        result.groups.deleted,
        vec![GroupRef {
            external_id: "old".into(),
            display_name: "Group old".into()
        }]
    );
    let added: Vec<String> = result
        .memberships
        .added
        .iter()
        .map(|m| format!("{}:{}", m.account_external_id, m.group_external_id))
        .collect();
    let removed: Vec<String> = result
        .memberships
        .removed
        .iter()
        .map(|m| format!("{}:{}", m.account_external_id, m.group_external_id))
        .collect();
    assert_eq!(added, vec!["uid3:admins", "uid6:g1"]);
    assert_eq!(removed, vec!["uid2:g1", "uid5:g1"]);
}

#[test]
fn identical_snapshots_and_volatile_fields_make_no_change() {
    let snapshot = before();
    assert!(run_diff(&snapshot, &snapshot, &[]).is_empty());
    let mut logged_in = user(1, true, &["g1"], json!({"department": "hr"}));
    logged_in["last_login"] = json!("2026-11-02T00:00:00Z");
    logged_in["last_updated"] = json!("2026-11-02T00:00:00Z");
    logged_in["password_change_date"] = json!("2026-11-02T00:00:00Z");
    let one = normalize(
        vec![user(1, true, &[], json!({"department": "hr"}))],
        Some(vec![]),
        false,
    )
    .unwrap();
    let mut logged_in_no_groups = logged_in;
    logged_in_no_groups["groups"] = json!([]);
    let two = normalize(vec![logged_in_no_groups], Some(vec![]), false).unwrap();
    assert!(run_diff(&one, &two, &[]).is_empty());
}

#[test]
fn ignore_fields_silence_a_field() {
    let result = run_diff(
        &before(),
        &after(),
        &["metadata.department".to_string(), "username".to_string()],
    );
    assert!(result.movers.iter().all(|m| m.changes.is_empty()));
    assert!(result.movers.iter().all(|m| m.external_id != "uid1"));
}

#[test]
fn becoming_superuser_is_an_escalation_and_group_flags_are_changes() {
    let mut admin_before = group("g1", false, &[1]);
    let one = normalize(
        vec![user(1, true, &["g1"], json!({}))],
        Some(vec![admin_before.clone()]),
        false,
    )
    .unwrap();
    admin_before["is_superuser"] = json!(true);
    admin_before["name"] = json!("Renamed");
    let mut promoted = user(1, true, &["g1"], json!({}));
    promoted["is_superuser"] = json!(true);
    let two = normalize(vec![promoted], Some(vec![admin_before]), false).unwrap();
    let result = run_diff(&one, &two, &[]);
    assert!(result.movers[0].privilege_escalation);
    let fields: Vec<&str> = result.groups.changed[0]
        .changes
        .iter()
        .map(|c| c.field.as_str())
        .collect();
    assert_eq!(fields, vec!["display_name", "is_superuser"]);
}

#[test]
fn history_decides_when_a_leaver_was_last_active() {
    let from = before();
    let to = after();
    let mut last_active = BTreeMap::new();
    last_active.insert(
        "uid2".to_string(),
        LastActive {
            finished_at: at(0),
            groups: vec![],
        },
    );
    let result = diff(&DiffInput {
        source: "corp",
        from: Side {
            run_id: "R1",
            finished_at: at(1),
            snapshot: &from,
        },
        to: Side {
            run_id: "R2",
            finished_at: at(2),
            snapshot: &to,
        },
        last_active: &last_active,
        ignore_fields: &[],
    });
    let uid2 = result
        .leavers
        .iter()
        .find(|l| l.external_id == "uid2")
        .unwrap();
    assert_eq!(uid2.last_seen_active_at, Some(at(0)));
    assert!(uid2.groups_at_departure.is_empty());
    assert_eq!(
        leaver_ids(&from, &to),
        vec!["uid2".to_string(), "uid5".to_string()]
    );
}
