//! The joiner/mover/leaver diff between two complete snapshots of one source. It is a pure
//! function of the two snapshots and of what the history says about leavers' last active
//! run, so every rule is tested here without I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::normalize::{AccountStatus, DirectoryAccount, DirectoryGroup, Snapshot};

/// Account fields whose change makes a mover. `metadata` is compared key by key.
const MATERIAL_ACCOUNT_FIELDS: [&str; 7] = [
    "username",
    "display_name",
    "canonical_email",
    "account_type",
    "authentik_type",
    "organization_unit",
    "is_superuser",
];
const MATERIAL_GROUP_FIELDS: [&str; 3] = ["display_name", "is_superuser", "parents"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupRef {
    pub external_id: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinReason {
    Created,
    Reactivated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    Deleted,
    Deactivated,
}

impl JoinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinReason::Created => "created",
            JoinReason::Reactivated => "reactivated",
        }
    }
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Deleted => "deleted",
            LeaveReason::Deactivated => "deactivated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joiner {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub reason: JoinReason,
    pub groups: Vec<GroupRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mover {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub changes: Vec<FieldChange>,
    pub groups_added: Vec<GroupRef>,
    pub groups_removed: Vec<GroupRef>,
    pub privilege_escalation: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaver {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub reason: LeaveReason,
    pub groups_at_departure: Vec<GroupRef>,
    pub last_seen_active_at: Option<DateTime<Utc>>,
    pub detected_at: DateTime<Utc>,
    pub last_login_at: Option<String>,
    /// Whether the account holds no direct group membership any more.
    pub memberships_removed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupChange {
    pub external_id: String,
    pub display_name: String,
    pub changes: Vec<FieldChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupChanges {
    pub created: Vec<GroupRef>,
    pub deleted: Vec<GroupRef>,
    pub changed: Vec<GroupChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MembershipRef {
    pub account_external_id: String,
    pub username: String,
    pub group_external_id: String,
    pub group_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MembershipChanges {
    pub added: Vec<MembershipRef>,
    pub removed: Vec<MembershipRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryDiff {
    pub source: String,
    pub from_run: String,
    pub to_run: String,
    pub joiners: Vec<Joiner>,
    pub movers: Vec<Mover>,
    pub leavers: Vec<Leaver>,
    pub groups: GroupChanges,
    pub memberships: MembershipChanges,
}

impl DirectoryDiff {
    pub fn is_empty(&self) -> bool {
        self.joiners.is_empty()
            && self.movers.is_empty()
            && self.leavers.is_empty()
            && self.groups == GroupChanges::default()
            && self.memberships == MembershipChanges::default()
    }
}

/// The last complete run that saw an account active, and its groups then.
#[derive(Debug, Clone, PartialEq)]
pub struct LastActive {
    pub finished_at: DateTime<Utc>,
    pub groups: Vec<GroupRef>,
}

/// One side of a diff: a complete run's id, finish time and snapshot.
pub struct Side<'a> {
    pub run_id: &'a str,
    pub finished_at: DateTime<Utc>,
    pub snapshot: &'a Snapshot,
}

/// What the diff needs besides the two snapshots.
pub struct DiffInput<'a> {
    pub source: &'a str,
    pub from: Side<'a>,
    pub to: Side<'a>,
    /// For leavers: the last run that saw them active. Missing entries fall back to the
    /// `from` run when the account was active there.
    pub last_active: &'a BTreeMap<String, LastActive>,
    /// Extra fields that never make a change on their own, e.g. `metadata.last_sync`.
    pub ignore_fields: &'a [String],
}

/// The accounts that leave between the two snapshots: the ones whose last active run the
/// caller should look up in the history.
pub fn leaver_ids(from: &Snapshot, to: &Snapshot) -> Vec<String> {
    from.accounts
        .iter()
        .filter(|(uid, entry)| match to.accounts.get(*uid) {
            None => true,
            Some(now) => {
                entry.record.status == AccountStatus::Active
                    && now.record.status == AccountStatus::Inactive
            }
        })
        .map(|(uid, _)| uid.clone())
        .collect()
}

pub fn diff(input: &DiffInput<'_>) -> DirectoryDiff {
    let from = input.from.snapshot;
    let to = input.to.snapshot;
    let groups_from = groups_by_account(from);
    let groups_to = groups_by_account(to);
    let empty = BTreeSet::new();
    let mut joiners = Vec::new();
    let mut movers = Vec::new();
    let mut leavers = Vec::new();

    for (uid, entry) in &to.accounts {
        let account = &entry.record;
        let now_groups = groups_to.get(uid).unwrap_or(&empty);
        let before = from.accounts.get(uid).map(|entry| &entry.record);
        let reason = match before {
            None => Some(JoinReason::Created),
            Some(before)
                if before.status == AccountStatus::Inactive
                    && account.status == AccountStatus::Active =>
            {
                Some(JoinReason::Reactivated)
            }
            _ => None,
        };
        if let Some(reason) = reason {
            joiners.push(Joiner {
                external_id: uid.clone(),
                username: account.username.clone(),
                canonical_email: account.canonical_email.clone(),
                reason,
                groups: group_refs(now_groups, to, from),
            });
            continue;
        }
        let Some(before) = before else { continue };
        let before_groups = groups_from.get(uid).unwrap_or(&empty);
        if before.status == AccountStatus::Active && account.status == AccountStatus::Inactive {
            let removed = now_groups.is_empty();
            leavers.push(leaver(
                input,
                uid,
                before,
                before_groups,
                LeaveReason::Deactivated,
                removed,
            ));
            continue;
        }
        let changes = account_changes(before, account, input.ignore_fields);
        let added: BTreeSet<&String> = now_groups.difference(before_groups).copied().collect();
        let removed: BTreeSet<&String> = before_groups.difference(now_groups).copied().collect();
        if changes.is_empty() && added.is_empty() && removed.is_empty() {
            continue;
        }
        let gains_superuser_group = added.iter().any(|group| {
            to.groups
                .get(*group)
                .is_some_and(|group| group.record.is_superuser)
        });
        movers.push(Mover {
            external_id: uid.clone(),
            username: account.username.clone(),
            canonical_email: account.canonical_email.clone(),
            changes,
            groups_added: group_refs(&added, to, from),
            groups_removed: group_refs(&removed, from, to),
            privilege_escalation: gains_superuser_group
                || (account.is_superuser && !before.is_superuser),
        });
    }
    for (uid, entry) in &from.accounts {
        if !to.accounts.contains_key(uid) {
            let before_groups = groups_from.get(uid).unwrap_or(&empty);
            let record = &entry.record;
            leavers.push(leaver(
                input,
                uid,
                record,
                before_groups,
                LeaveReason::Deleted,
                true,
            ));
        }
    }
    leavers.sort_by(|a, b| a.external_id.cmp(&b.external_id));

    DirectoryDiff {
        source: input.source.to_string(),
        from_run: input.from.run_id.to_string(),
        to_run: input.to.run_id.to_string(),
        joiners,
        movers,
        leavers,
        groups: group_changes(from, to, input.ignore_fields),
        memberships: membership_changes(from, to),
    }
}

fn leaver(
    input: &DiffInput<'_>,
    uid: &str,
    before: &DirectoryAccount,
    groups_before: &BTreeSet<&String>,
    reason: LeaveReason,
    memberships_removed: bool,
) -> Leaver {
    let last_active = input.last_active.get(uid).cloned().or_else(|| {
        (before.status == AccountStatus::Active).then(|| LastActive {
            finished_at: input.from.finished_at,
            groups: group_refs(groups_before, input.from.snapshot, input.to.snapshot),
        })
    });
    Leaver {
        external_id: uid.to_string(),
        username: before.username.clone(),
        canonical_email: before.canonical_email.clone(),
        reason,
        groups_at_departure: last_active
            .as_ref()
            .map(|last| last.groups.clone())
            .unwrap_or_default(),
        last_seen_active_at: last_active.map(|last| last.finished_at),
        detected_at: input.to.finished_at,
        last_login_at: input
            .to
            .snapshot
            .accounts
            .get(uid)
            .map_or(&before.last_login_at, |now| &now.record.last_login_at)
            .clone(),
        memberships_removed,
    }
}

/// Direct group ids per account uid.
fn groups_by_account(snapshot: &Snapshot) -> BTreeMap<&String, BTreeSet<&String>> {
    let mut groups: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for entry in snapshot.memberships.values() {
        groups
            .entry(&entry.record.account_external_id)
            .or_default()
            .insert(&entry.record.group_external_id);
    }
    groups
}

/// Names groups from the snapshot that holds them, falling back to the other one.
fn group_refs(ids: &BTreeSet<&String>, primary: &Snapshot, fallback: &Snapshot) -> Vec<GroupRef> {
    ids.iter()
        .map(|id| GroupRef {
            external_id: (*id).clone(),
            display_name: group_name(id, primary, fallback),
        })
        .collect()
}

fn group_name(id: &str, primary: &Snapshot, fallback: &Snapshot) -> String {
    primary
        .groups
        .get(id)
        .or_else(|| fallback.groups.get(id))
        .map_or_else(|| id.to_string(), |group| group.record.display_name.clone())
}

/// Material field changes of a record, `metadata` key by key, minus ignored fields.
fn field_changes(
    before: &Value,
    after: &Value,
    fields: &[&str],
    ignore_fields: &[String],
) -> Vec<FieldChange> {
    let ignored = |field: &str| ignore_fields.iter().any(|ignored| ignored == field);
    let mut changes = Vec::new();
    for field in fields {
        let (old, new) = (&before[*field], &after[*field]);
        if old != new && !ignored(field) {
            changes.push(FieldChange {
                field: field.to_string(),
                old: old.clone(),
                new: new.clone(),
            });
        }
    }
    let empty = serde_json::Map::new();
    let old_metadata = before["metadata"].as_object().unwrap_or(&empty);
    let new_metadata = after["metadata"].as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = old_metadata.keys().chain(new_metadata.keys()).collect();
    for key in keys {
        let field = format!("metadata.{key}");
        let old = old_metadata.get(key).cloned().unwrap_or(Value::Null);
        let new = new_metadata.get(key).cloned().unwrap_or(Value::Null);
        if old != new && !ignored(&field) && !ignored("metadata") {
            changes.push(FieldChange { field, old, new });
        }
    }
    changes
}

pub fn account_changes(
    before: &DirectoryAccount,
    after: &DirectoryAccount,
    ignore_fields: &[String],
) -> Vec<FieldChange> {
    field_changes(
        &to_value(before),
        &to_value(after),
        &MATERIAL_ACCOUNT_FIELDS,
        ignore_fields,
    )
}

pub fn group_field_changes(
    before: &DirectoryGroup,
    after: &DirectoryGroup,
    ignore_fields: &[String],
) -> Vec<FieldChange> {
    field_changes(
        &to_value(before),
        &to_value(after),
        &MATERIAL_GROUP_FIELDS,
        ignore_fields,
    )
}

fn to_value<T: Serialize>(record: &T) -> Value {
    serde_json::to_value(record).unwrap_or(Value::Null)
}

fn group_changes(from: &Snapshot, to: &Snapshot, ignore_fields: &[String]) -> GroupChanges {
    let mut changes = GroupChanges::default();
    for (id, entry) in &to.groups {
        match from.groups.get(id) {
            None => changes.created.push(GroupRef {
                external_id: id.clone(),
                display_name: entry.record.display_name.clone(),
            }),
            Some(before) => {
                let field_changes =
                    group_field_changes(&before.record, &entry.record, ignore_fields);
                if !field_changes.is_empty() {
                    changes.changed.push(GroupChange {
                        external_id: id.clone(),
                        display_name: entry.record.display_name.clone(),
                        changes: field_changes,
                    });
                }
            }
        }
    }
    for (id, entry) in &from.groups {
        if !to.groups.contains_key(id) {
            changes.deleted.push(GroupRef {
                external_id: id.clone(),
                display_name: entry.record.display_name.clone(),
            });
        }
    }
    changes
}

fn membership_changes(from: &Snapshot, to: &Snapshot) -> MembershipChanges {
    let describe = |key: &String, primary: &Snapshot, fallback: &Snapshot| {
        let snapshot = if primary.memberships.contains_key(key) {
            primary
        } else {
            fallback
        };
        let record = &snapshot.memberships[key].record;
        let username = primary
            .accounts
            .get(&record.account_external_id)
            .or_else(|| fallback.accounts.get(&record.account_external_id))
            .map_or_else(
                || record.account_external_id.clone(),
                |a| a.record.username.clone(),
            );
        MembershipRef {
            account_external_id: record.account_external_id.clone(),
            username,
            group_external_id: record.group_external_id.clone(),
            group_name: group_name(&record.group_external_id, primary, fallback),
        }
    };
    MembershipChanges {
        added: to
            .memberships
            .keys()
            .filter(|key| !from.memberships.contains_key(*key))
            .map(|key| describe(key, to, from))
            .collect(),
        removed: from
            .memberships
            .keys()
            .filter(|key| !to.memberships.contains_key(*key))
            .map(|key| describe(key, from, to))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
