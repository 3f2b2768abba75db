//! The joiner/mover/leaver diff between two complete runs of one source. It is a pure
//! function of what changed (the accounts whose material content or memberships changed, as
//! [`crate::record`]'s rule classified them, and the groups of both runs), so every rule is
//! tested here without I/O.
//!
//! The rules:
//! - a **joiner** is an account created active, or reactivated; created inactive is not one;
//! - a **leaver** is an active account that was deactivated or deleted;
//! - an account deleted after it had already left is **purged**: one event, not a second leaver;
//! - a **mover** is any other account whose material fields or direct groups changed;
//! - an account that ends up a superuser (its own flag, or a direct or inherited group with
//!   the superuser flag) is a **privilege escalation** when it joins, or when it moves from
//!   not being one;
//! - a run compared with nothing (a source's first run, or a new baseline) is a **baseline**:
//!   its accounts are "present at baseline", not joiners.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::normalize::{AccountStatus, DirectoryAccount, DirectoryGroup};
pub use crate::record::FieldChange;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupRef {
    pub external_id: String,
    pub display_name: String,
}

/// An account by its ids, for lists such as the superusers at a baseline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountRef {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
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
    pub account_type: crate::normalize::AccountType,
    pub is_superuser: bool,
    /// Authentik's `date_joined`.
    pub added_at: Option<String>,
    /// The direct groups after joining.
    pub groups: Vec<GroupRef>,
    /// For a reactivation: what changed together with it.
    #[serde(default)]
    pub changes: Vec<FieldChange>,
    #[serde(default)]
    pub groups_added: Vec<GroupRef>,
    #[serde(default)]
    pub groups_removed: Vec<GroupRef>,
    pub privilege_escalation: bool,
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
    /// Authentik's own time of its last change to the account (for a deactivation, usually
    /// the deactivation itself), when the server reports it.
    #[serde(default)]
    pub authentik_last_updated: Option<String>,
    /// Whether the account holds no direct group membership any more.
    pub memberships_removed: bool,
    /// For a deactivation: what changed together with it.
    #[serde(default)]
    pub changes: Vec<FieldChange>,
}

/// An account deleted after it had already left (it was inactive): the end of a termination
/// case that a leaver event opened earlier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Purge {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub last_seen_active_at: Option<DateTime<Utc>>,
    pub detected_at: DateTime<Utc>,
    pub last_login_at: Option<String>,
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

/// A count before and after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub before: u64,
    pub after: u64,
}

/// How the population of accounts moved, so that it reconciles:
/// `accounts.before + created - deleted = accounts.after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Population {
    pub accounts: BeforeAfter,
    pub active: BeforeAfter,
    pub superusers: BeforeAfter,
    pub created: u64,
    pub deleted: u64,
}

/// A run compared with nothing: why, and what was present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub reason: String,
    /// Accounts with Authentik's superuser flag at the baseline.
    pub superusers: Vec<AccountRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryDiff {
    pub source: String,
    /// Empty for a baseline.
    pub from_run: String,
    pub to_run: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    pub joiners: Vec<Joiner>,
    pub movers: Vec<Mover>,
    pub leavers: Vec<Leaver>,
    #[serde(default)]
    pub purged: Vec<Purge>,
    pub groups: GroupChanges,
    pub memberships: MembershipChanges,
    #[serde(default)]
    pub population: Population,
}

impl DirectoryDiff {
    pub fn is_empty(&self) -> bool {
        self.joiners.is_empty()
            && self.movers.is_empty()
            && self.leavers.is_empty()
            && self.purged.is_empty()
            && self.groups == GroupChanges::default()
            && self.memberships == MembershipChanges::default()
    }

    pub fn escalations(&self) -> usize {
        self.joiners
            .iter()
            .filter(|j| j.privilege_escalation)
            .count()
            + self
                .movers
                .iter()
                .filter(|m| m.privilege_escalation)
                .count()
    }
}

/// The last complete run that saw an account active, and its groups then.
#[derive(Debug, Clone, PartialEq)]
pub struct LastActive {
    pub finished_at: DateTime<Utc>,
    pub groups: Vec<GroupRef>,
}

/// A compared run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRef {
    pub run_id: String,
    pub finished_at: DateTime<Utc>,
}

/// An account whose material content or direct groups differ between the two runs, with
/// both sides (`None` where it does not exist).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountSides {
    pub old: Option<DirectoryAccount>,
    pub new: Option<DirectoryAccount>,
    /// The material field changes, as [`crate::record::ChangeRule::field_changes`] found them.
    pub changes: Vec<FieldChange>,
    pub old_groups: BTreeSet<String>,
    pub new_groups: BTreeSet<String>,
}

/// Everything the diff needs: what changed, gathered by the caller from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffInput {
    pub source: String,
    /// `None` for a baseline.
    pub from: Option<RunRef>,
    pub to: RunRef,
    /// For a baseline: why it is one, and the superusers present.
    pub baseline: Option<Baseline>,
    pub accounts: BTreeMap<String, AccountSides>,
    pub groups_before: BTreeMap<String, DirectoryGroup>,
    pub groups_after: BTreeMap<String, DirectoryGroup>,
    /// The material field changes of groups present on both sides.
    pub group_changes: BTreeMap<String, Vec<FieldChange>>,
    /// (account uid, group pk).
    pub memberships_added: Vec<(String, String)>,
    pub memberships_removed: Vec<(String, String)>,
    /// For leavers not active in `from` (or when the runs are not adjacent): the last run that
    /// saw them active, from the history.
    pub last_active: BTreeMap<String, LastActive>,
    pub population: Population,
}

impl DiffInput {
    /// The accounts that leave or are purged and were not active in `from`: whose last active
    /// run the caller must look up in the history.
    pub fn history_needed(&self, adjacent: bool) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|(_, sides)| match (&sides.old, &sides.new) {
                (Some(old), None) => !adjacent || old.status != AccountStatus::Active,
                (Some(old), Some(new)) => {
                    !adjacent
                        && old.status == AccountStatus::Active
                        && new.status == AccountStatus::Inactive
                }
                _ => false,
            })
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

pub fn diff(input: &DiffInput) -> DirectoryDiff {
    let mut joiners = Vec::new();
    let mut movers = Vec::new();
    let mut leavers = Vec::new();
    let mut purged = Vec::new();
    let to = &input.to;
    for (uid, sides) in &input.accounts {
        let added: BTreeSet<&String> = sides.new_groups.difference(&sides.old_groups).collect();
        let removed: BTreeSet<&String> = sides.old_groups.difference(&sides.new_groups).collect();
        let groups_added = group_refs(added.iter().copied(), input, After);
        let groups_removed = group_refs(removed.iter().copied(), input, Before);
        let without_status: Vec<FieldChange> = sides
            .changes
            .iter()
            .filter(|change| change.field != "status")
            .cloned()
            .collect();
        match (&sides.old, &sides.new) {
            (None, Some(new)) if new.status == AccountStatus::Active => joiners.push(Joiner {
                external_id: uid.clone(),
                username: new.username.clone(),
                canonical_email: new.canonical_email.clone(),
                reason: JoinReason::Created,
                account_type: new.account_type,
                is_superuser: new.is_superuser,
                added_at: new.added_at.clone(),
                groups: group_refs(sides.new_groups.iter(), input, After),
                changes: Vec::new(),
                groups_added: Vec::new(),
                groups_removed: Vec::new(),
                privilege_escalation: effective_superuser(
                    new,
                    &sides.new_groups,
                    &input.groups_after,
                ),
            }),
            // Created inactive: no access was granted.
            (None, Some(_)) | (None, None) => {}
            (Some(old), None) if old.status == AccountStatus::Active => leavers.push(leaver(
                input,
                uid,
                sides,
                old,
                LeaveReason::Deleted,
                true,
                Vec::new(),
            )),
            (Some(old), None) => {
                let last_active = last_active(input, uid, sides, old);
                purged.push(Purge {
                    external_id: uid.clone(),
                    username: old.username.clone(),
                    canonical_email: old.canonical_email.clone(),
                    last_seen_active_at: last_active.map(|last| last.finished_at),
                    detected_at: to.finished_at,
                    last_login_at: old.last_login_at.clone(),
                })
            }
            (Some(old), Some(new))
                if old.status == AccountStatus::Inactive && new.status == AccountStatus::Active =>
            {
                joiners.push(Joiner {
                    external_id: uid.clone(),
                    username: new.username.clone(),
                    canonical_email: new.canonical_email.clone(),
                    reason: JoinReason::Reactivated,
                    account_type: new.account_type,
                    is_superuser: new.is_superuser,
                    added_at: new.added_at.clone(),
                    groups: group_refs(sides.new_groups.iter(), input, After),
                    changes: without_status,
                    groups_added,
                    groups_removed,
                    privilege_escalation: effective_superuser(
                        new,
                        &sides.new_groups,
                        &input.groups_after,
                    ),
                })
            }
            (Some(old), Some(new))
                if old.status == AccountStatus::Active && new.status == AccountStatus::Inactive =>
            {
                let removed_all = sides.new_groups.is_empty();
                leavers.push(leaver(
                    input,
                    uid,
                    sides,
                    old,
                    LeaveReason::Deactivated,
                    removed_all,
                    without_status,
                ))
            }
            (Some(old), Some(new)) => {
                if sides.changes.is_empty() && added.is_empty() && removed.is_empty() {
                    continue;
                }
                movers.push(Mover {
                    external_id: uid.clone(),
                    username: new.username.clone(),
                    canonical_email: new.canonical_email.clone(),
                    changes: sides.changes.clone(),
                    groups_added,
                    groups_removed,
                    privilege_escalation: effective_superuser(
                        new,
                        &sides.new_groups,
                        &input.groups_after,
                    ) && !effective_superuser(
                        old,
                        &sides.old_groups,
                        &input.groups_before,
                    ),
                })
            }
        }
    }
    DirectoryDiff {
        source: input.source.clone(),
        from_run: input
            .from
            .as_ref()
            .map(|from| from.run_id.clone())
            .unwrap_or_default(),
        to_run: to.run_id.clone(),
        baseline: input.baseline.clone(),
        joiners,
        movers,
        leavers,
        purged,
        groups: group_changes(input),
        memberships: membership_changes(input),
        population: input.population,
    }
}

fn last_active(
    input: &DiffInput,
    uid: &str,
    sides: &AccountSides,
    old: &DirectoryAccount,
) -> Option<LastActive> {
    input.last_active.get(uid).cloned().or_else(|| {
        let from = input.from.as_ref()?;
        (old.status == AccountStatus::Active).then(|| LastActive {
            finished_at: from.finished_at,
            groups: group_refs(sides.old_groups.iter(), input, Before),
        })
    })
}

fn leaver(
    input: &DiffInput,
    uid: &str,
    sides: &AccountSides,
    old: &DirectoryAccount,
    reason: LeaveReason,
    memberships_removed: bool,
    changes: Vec<FieldChange>,
) -> Leaver {
    let last_active = last_active(input, uid, sides, old);
    Leaver {
        external_id: uid.to_string(),
        username: old.username.clone(),
        canonical_email: old.canonical_email.clone(),
        reason,
        groups_at_departure: last_active
            .as_ref()
            .map(|last| last.groups.clone())
            .unwrap_or_default(),
        last_seen_active_at: last_active.map(|last| last.finished_at),
        detected_at: input.to.finished_at,
        last_login_at: sides
            .new
            .as_ref()
            .map_or(&old.last_login_at, |new| &new.last_login_at)
            .clone(),
        authentik_last_updated: sides
            .new
            .as_ref()
            .map_or(&old.last_updated_at, |new| &new.last_updated_at)
            .clone(),
        memberships_removed,
        changes,
    }
}

/// Whether an account holds superuser rights: its own flag, or a group it is in, directly or
/// through any ancestor (Authentik inherits the flag from parent groups).
pub fn effective_superuser(
    account: &DirectoryAccount,
    groups: &BTreeSet<String>,
    catalog: &BTreeMap<String, DirectoryGroup>,
) -> bool {
    account.is_superuser || superuser_path(groups, catalog).is_some()
}

/// The first group (by id) through which `groups` grant superuser rights, with the path of
/// group names from the direct group to the one with the flag.
pub fn superuser_path(
    groups: &BTreeSet<String>,
    catalog: &BTreeMap<String, DirectoryGroup>,
) -> Option<Vec<String>> {
    groups.iter().find_map(|group| {
        let mut visited = BTreeSet::new();
        ancestor_path(group, catalog, &mut visited)
    })
}

fn ancestor_path(
    group: &str,
    catalog: &BTreeMap<String, DirectoryGroup>,
    visited: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    // A hierarchy with a cycle (hostile data) must not loop.
    if !visited.insert(group.to_string()) {
        return None;
    }
    let record = catalog.get(group)?;
    if record.is_superuser {
        return Some(vec![record.display_name.clone()]);
    }
    record.parents.iter().find_map(|parent| {
        ancestor_path(parent, catalog, visited).map(|mut path| {
            path.insert(0, record.display_name.clone());
            path
        })
    })
}

#[derive(Clone, Copy)]
enum Prefer {
    Before,
    After,
}
use Prefer::{After, Before};

/// Names groups from the side that holds them, falling back to the other.
fn group_refs<'a>(
    ids: impl Iterator<Item = &'a String>,
    input: &DiffInput,
    prefer: Prefer,
) -> Vec<GroupRef> {
    ids.map(|id| GroupRef {
        external_id: id.clone(),
        display_name: group_name(id, input, prefer),
    })
    .collect()
}

fn group_name(id: &str, input: &DiffInput, prefer: Prefer) -> String {
    let (primary, fallback) = match prefer {
        Before => (&input.groups_before, &input.groups_after),
        After => (&input.groups_after, &input.groups_before),
    };
    primary
        .get(id)
        .or_else(|| fallback.get(id))
        .map_or_else(|| id.to_string(), |group| group.display_name.clone())
}

fn group_changes(input: &DiffInput) -> GroupChanges {
    let reference = |id: &String, group: &DirectoryGroup| GroupRef {
        external_id: id.clone(),
        display_name: group.display_name.clone(),
    };
    GroupChanges {
        created: input
            .groups_after
            .iter()
            .filter(|(id, _)| !input.groups_before.contains_key(*id))
            .map(|(id, group)| reference(id, group))
            .collect(),
        deleted: input
            .groups_before
            .iter()
            .filter(|(id, _)| !input.groups_after.contains_key(*id))
            .map(|(id, group)| reference(id, group))
            .collect(),
        changed: input
            .group_changes
            .iter()
            .filter(|(_, changes)| !changes.is_empty())
            .map(|(id, changes)| GroupChange {
                external_id: id.clone(),
                display_name: group_name(id, input, After),
                changes: changes.clone(),
            })
            .collect(),
    }
}

fn membership_changes(input: &DiffInput) -> MembershipChanges {
    let describe = |(uid, group): &(String, String), prefer: Prefer| {
        let sides = input.accounts.get(uid);
        let account = match prefer {
            Before => sides.and_then(|s| s.old.as_ref().or(s.new.as_ref())),
            After => sides.and_then(|s| s.new.as_ref().or(s.old.as_ref())),
        };
        MembershipRef {
            account_external_id: uid.clone(),
            username: account.map_or_else(|| uid.clone(), |a| a.username.clone()),
            group_external_id: group.clone(),
            group_name: group_name(group, input, prefer),
        }
    };
    MembershipChanges {
        added: input
            .memberships_added
            .iter()
            .map(|pair| describe(pair, After))
            .collect(),
        removed: input
            .memberships_removed
            .iter()
            .map(|pair| describe(pair, Before))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
