//! The joiner/mover/leaver diff between two complete runs of one source. It is a pure
//! function of what changed (the accounts whose material content or memberships changed, as
//! [`crate::run::record`]'s rule classified them, and the groups of both runs), so every rule is
//! tested here without I/O.
//!
//! The rules:
//! - a **joiner** is an account created active, or reactivated; created inactive is not one;
//! - a **leaver** is an active account that was deactivated or deleted;
//! - an account deleted after it had already left is **purged**: one event, not a second leaver;
//! - a **mover** is any other account whose material fields or direct groups changed;
//! - an active account is **privileged** when it is a superuser (its own flag, or a direct or
//!   inherited group with the superuser flag) or a member, directly or through a child group,
//!   of a group named in the source's `privileged_groups` ([`AccountRules`]); every account
//!   that becomes privileged, by any path (created, reactivated, moved, or a group's flag,
//!   parents or name changing), is a **privilege grant**, and the joiner or mover event that
//!   made it one is a **privilege escalation**; the reverse is a **privilege removal**;
//! - a run compared with nothing (a source's first run) is a **baseline**: its accounts are
//!   "present at baseline", not joiners;
//! - **scope** is a view: events are judged on the upstream records, whatever the filters
//!   say, and reported when the record is in scope on either side; a record that only
//!   entered or left the scope (the filter changed, group sync was switched, or it changed
//!   upstream in a way the filter sees) is a **scope change**, never a joiner or a leaver.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{SourceConfig, HR_KEY_PREFIX};
use crate::run::normalize::{AccountStatus, DirectoryAccount, DirectoryGroup, Role};
pub use crate::run::record::FieldChange;

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
    /// Always active: an account created inactive is no joiner.
    #[serde(default = "active")]
    pub status: AccountStatus,
    pub account_type: crate::run::normalize::AccountType,
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
    /// Whether the account became privileged by joining.
    pub privilege_escalation: bool,
    /// Whether it is privileged after joining, and through what.
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub privilege_source: Option<String>,
    /// The account's key in the HR system, from the source's `hr_key_field`.
    #[serde(default)]
    pub hr_key: Option<String>,
}

fn active() -> AccountStatus {
    AccountStatus::Active
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mover {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub changes: Vec<FieldChange>,
    pub groups_added: Vec<GroupRef>,
    pub groups_removed: Vec<GroupRef>,
    /// Whether the account became privileged by this move.
    pub privilege_escalation: bool,
    /// Whether it is privileged after the move, and through what.
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub privilege_source: Option<String>,
    #[serde(default)]
    pub hr_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaver {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub reason: LeaveReason,
    pub groups_at_departure: Vec<GroupRef>,
    /// When the last run that saw the account active started: detection latency is measured
    /// from here, so that it is an upper bound (the account may have left at any moment
    /// after that run began reading the directory).
    pub last_seen_active_at: Option<DateTime<Utc>>,
    /// When the run that found the account gone finished.
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
    /// Whether the account was privileged when it was last seen active, and through what.
    #[serde(default)]
    pub privileged_at_departure: bool,
    #[serde(default)]
    pub privilege_source: Option<String>,
    #[serde(default)]
    pub hr_key: Option<String>,
    /// `detected_at − last_seen_active_at`, in seconds.
    #[serde(default)]
    pub latency_seconds: Option<u64>,
    /// The `sla` in force when the run detected it, and whether the latency met it.
    #[serde(default)]
    pub sla_seconds: Option<u64>,
    #[serde(default)]
    pub within_sla: Option<bool>,
    /// Authentik recorded a login after the last run that saw the account active had
    /// finished: it was used while its departure was not yet seen.
    #[serde(default)]
    pub login_after_last_seen: bool,
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
    #[serde(default)]
    pub hr_key: Option<String>,
    /// The groups the inactive account still held, which its deletion removed.
    #[serde(default)]
    pub groups_at_deletion: Vec<GroupRef>,
    /// Authentik's own time of its last change to the account before the deletion.
    #[serde(default)]
    pub authentik_last_updated: Option<String>,
}

/// Why an account gained or lost privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivilegeReason {
    Created,
    Reactivated,
    /// Its own groups or superuser flag changed.
    Moved,
    /// A group on its path changed: its superuser flag, its parents or its name.
    GroupChanged,
    Deactivated,
    Deleted,
}

impl PrivilegeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PrivilegeReason::Created => "created",
            PrivilegeReason::Reactivated => "reactivated",
            PrivilegeReason::Moved => "moved",
            PrivilegeReason::GroupChanged => "group changed",
            PrivilegeReason::Deactivated => "deactivated",
            PrivilegeReason::Deleted => "deleted",
        }
    }
}

/// `privilege_source` of a grant caused by a group's superuser flag being switched on (or,
/// for a removal, off).
pub const GROUP_FLAG_CHANGED: &str = "group flag changed";
/// `privilege_source` of an account privileged by its own superuser flag alone, without a
/// group path (e.g. when group sync is disabled).
pub const SUPERUSER_FLAG: &str = "superuser flag";

/// An account that became privileged, or stopped being privileged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivilegeChange {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub hr_key: Option<String>,
    pub reason: PrivilegeReason,
    /// The direct group, or the inheritance path such as `hr-team-8 → authentik Admins`, or
    /// [`GROUP_FLAG_CHANGED`], or [`SUPERUSER_FLAG`].
    pub privilege_source: String,
    /// The path of groups from the account's direct group to the group that makes it
    /// privileged (empty for the superuser flag alone).
    pub path: Vec<GroupRef>,
    /// For [`PrivilegeReason::GroupChanged`]: the groups whose change did it.
    pub groups_changed: Vec<GroupRef>,
}

/// An account that held privileged access in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivilegedAccount {
    pub external_id: String,
    pub username: String,
    pub canonical_email: Option<String>,
    pub hr_key: Option<String>,
    /// The direct group, or the inheritance path such as `hr-team-8 → authentik Admins`, or
    /// the superuser flag alone.
    pub privilege_source: String,
    pub path: Vec<GroupRef>,
}

/// A change to a group that makes, or made, accounts privileged: its superuser flag, its
/// parents (named, not as pks) or its name; or such a group created or deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivilegedGroupChange {
    pub external_id: String,
    pub display_name: String,
    /// `created`, `deleted` or `changed`.
    pub change: String,
    pub changes: Vec<FieldChange>,
    pub accounts_granted: u64,
    pub accounts_removed: u64,
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

/// How the population of in-scope accounts moved, so that it reconciles:
/// `accounts.before + created - deleted + entered_scope - left_scope = accounts.after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Population {
    pub accounts: BeforeAfter,
    pub active: BeforeAfter,
    pub superusers: BeforeAfter,
    pub created: u64,
    pub deleted: u64,
    #[serde(default)]
    pub entered_scope: u64,
    #[serde(default)]
    pub left_scope: u64,
}

/// Why a record entered or left the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeCause {
    /// The record is unchanged upstream: the filter (or `group_filter`) changed.
    Filter,
    /// The record changed upstream in a way the filter sees (its own event is reported too).
    Record,
    /// Group sync was switched off (groups and memberships are no longer read) or on.
    GroupSync,
}

impl ScopeCause {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeCause::Filter => "the filter changed",
            ScopeCause::Record => "the record changed",
            ScopeCause::GroupSync => "group sync switched",
        }
    }
}

/// An account or a group that entered or left the scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeChange {
    pub external_id: String,
    /// The username or the group name.
    pub name: String,
    pub cause: ScopeCause,
}

/// What entered and left the scope in a run, apart from joiners and leavers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeChanges {
    pub accounts_entered: Vec<ScopeChange>,
    pub accounts_left: Vec<ScopeChange>,
    pub groups_entered: Vec<ScopeChange>,
    pub groups_left: Vec<ScopeChange>,
    pub memberships_entered: u64,
    pub memberships_left: u64,
    /// `Some(false)` when group sync was switched off in this run, `Some(true)` when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_sync: Option<bool>,
}

impl ScopeChanges {
    pub fn is_empty(&self) -> bool {
        self == &ScopeChanges::default()
    }
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
    #[serde(default)]
    pub privilege_granted: Vec<PrivilegeChange>,
    #[serde(default)]
    pub privilege_removed: Vec<PrivilegeChange>,
    #[serde(default)]
    pub privileged_group_changes: Vec<PrivilegedGroupChange>,
    #[serde(default, skip_serializing_if = "ScopeChanges::is_empty")]
    pub scope_changes: ScopeChanges,
}

impl DirectoryDiff {
    pub fn is_empty(&self) -> bool {
        self.scope_changes.is_empty()
            && self.joiners.is_empty()
            && self.movers.is_empty()
            && self.leavers.is_empty()
            && self.purged.is_empty()
            && self.groups == GroupChanges::default()
            && self.memberships == MembershipChanges::default()
            && self.privilege_granted.is_empty()
            && self.privilege_removed.is_empty()
    }

    /// Accounts that became privileged, by any path.
    pub fn escalations(&self) -> usize {
        self.privilege_granted.len()
    }
}

/// The last complete run that saw an account active, and its groups then.
#[derive(Debug, Clone, PartialEq)]
pub struct LastActive {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub groups: Vec<GroupRef>,
}

/// A compared run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRef {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// An account whose material content or direct groups differ between the two runs, with
/// both sides (`None` where it does not exist).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountSides {
    pub old: Option<DirectoryAccount>,
    pub new: Option<DirectoryAccount>,
    /// The material field changes, as [`crate::run::record::ChangeRule::field_changes`] found them.
    pub changes: Vec<FieldChange>,
    pub old_groups: BTreeSet<String>,
    pub new_groups: BTreeSet<String>,
    /// Whether each side is in scope (an absent side is not).
    pub old_in_scope: bool,
    pub new_in_scope: bool,
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
    pub rules: AccountRules,
    /// The groups out of scope before and after.
    pub groups_out_of_scope: [BTreeSet<String>; 2],
    /// What entered or left the scope, as the planner found it.
    pub scope_changes: ScopeChanges,
}

/// The source's settings that the diff applies to accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountRules {
    /// Names or pks of groups whose members, direct or through child groups, are
    /// privileged (`privileged_groups`); groups with the superuser flag always are.
    pub privileged_groups: BTreeSet<String>,
    /// Names or uuids of RBAC roles that are privileged access (`privileged_roles`), held
    /// directly or through a group.
    pub privileged_roles: BTreeSet<String>,
    /// Where an account's HR key is: `attributes.<key>[.<key>…]` (`hr_key_field`).
    pub hr_key_field: Option<String>,
    /// How soon a termination must be detected (`sla`), in seconds.
    pub sla_seconds: Option<u64>,
}

/// The path element that names a role, after the group that grants it (or alone, for a
/// role held directly): `role:<uuid>`, shown as `role <name>`.
const ROLE_PREFIX: &str = "role:";

impl AccountRules {
    /// The rules a source's configuration sets.
    pub fn of(source: &SourceConfig) -> AccountRules {
        AccountRules {
            privileged_groups: source.privileged_groups.iter().cloned().collect(),
            privileged_roles: source.privileged_roles.iter().cloned().collect(),
            hr_key_field: source.hr_key_field.clone(),
            sla_seconds: source.sla.map(|sla| sla.as_secs()),
        }
    }

    /// Whether members of `group` are privileged through it (before inheritance).
    pub fn confers(&self, group: &DirectoryGroup) -> bool {
        group.is_superuser
            || self.privileged_groups.contains(&group.external_id)
            || self.privileged_groups.contains(&group.display_name)
            || self.privileged_role(&group.roles, None).is_some()
    }

    /// The first of `roles` named in `privileged_roles`, by uuid or by name (names of roles
    /// held directly come from the groups that hold the same role, when `catalog` is given).
    fn privileged_role(
        &self,
        roles: &[Role],
        catalog: Option<&BTreeMap<String, DirectoryGroup>>,
    ) -> Option<GroupRef> {
        if self.privileged_roles.is_empty() {
            return None;
        }
        roles.iter().find_map(|role| {
            let name = role.name.clone().or_else(|| {
                catalog?
                    .values()
                    .flat_map(|group| &group.roles)
                    .find(|known| known.pk == role.pk)
                    .and_then(|known| known.name.clone())
            });
            let named = Role {
                pk: role.pk.clone(),
                name: name.clone(),
            };
            self.role_is_privileged(&named).then(|| GroupRef {
                external_id: format!("{ROLE_PREFIX}{}", role.pk),
                display_name: format!("role {}", name.unwrap_or_else(|| role.pk.clone())),
            })
        })
    }

    /// Whether a role (named, where its name is known) is in `privileged_roles`, by name or
    /// by uuid.
    pub fn role_is_privileged(&self, role: &Role) -> bool {
        self.privileged_roles.contains(&role.pk)
            || role
                .name
                .as_ref()
                .is_some_and(|name| self.privileged_roles.contains(name))
    }

    /// The path from the first of `groups` (by id) that makes its members privileged,
    /// directly or through an ancestor, to the group that does, and then the role through
    /// which it does, if that is how.
    pub fn privilege_path(
        &self,
        groups: &BTreeSet<String>,
        catalog: &BTreeMap<String, DirectoryGroup>,
    ) -> Option<Vec<GroupRef>> {
        let mut path = groups
            .iter()
            .find_map(|group| ancestor_path(group, catalog, &|g| self.confers(g)))?;
        let last = catalog.get(&path.last()?.external_id)?;
        let by_group = last.is_superuser
            || self.privileged_groups.contains(&last.external_id)
            || self.privileged_groups.contains(&last.display_name);
        if !by_group {
            path.extend(self.privileged_role(&last.roles, None));
        }
        Some(path)
    }

    /// The groups of `catalog` whose members are privileged through them: the groups that
    /// confer privilege and all their descendants, found from the top down so that a deep or
    /// cyclic hierarchy costs one visit per group.
    pub fn privileged_group_ids(
        &self,
        catalog: &BTreeMap<String, DirectoryGroup>,
    ) -> BTreeSet<String> {
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, group) in catalog {
            for parent in &group.parents {
                children
                    .entry(parent.as_str())
                    .or_default()
                    .push(id.as_str());
            }
        }
        let mut found: BTreeSet<String> = BTreeSet::new();
        let mut queue: Vec<&str> = catalog
            .iter()
            .filter(|(_, group)| self.confers(group))
            .map(|(id, _)| id.as_str())
            .collect();
        while let Some(id) = queue.pop() {
            if found.insert(id.to_string()) {
                queue.extend(children.get(id).into_iter().flatten().copied());
            }
        }
        found
    }

    /// How an account with these direct groups holds privilege: the group path, an empty
    /// path for its own superuser flag alone, or `None`. An inactive account holds none.
    pub fn privilege(
        &self,
        account: &DirectoryAccount,
        groups: &BTreeSet<String>,
        catalog: &BTreeMap<String, DirectoryGroup>,
    ) -> Option<Vec<GroupRef>> {
        if account.status != AccountStatus::Active {
            return None;
        }
        self.privilege_path(groups, catalog)
            .or_else(|| account.is_superuser.then(Vec::new))
            .or_else(|| {
                self.privileged_role(&account.roles, Some(catalog))
                    .map(|role| vec![role])
            })
    }

    /// The account's HR key: the value at `hr_key_field` in its attributes, as text.
    pub fn hr_key(&self, account: &DirectoryAccount) -> Option<String> {
        let path = self.hr_key_field.as_deref()?.strip_prefix(HR_KEY_PREFIX)?;
        let mut keys = path.split('.');
        let mut value = account.metadata.get(keys.next()?)?;
        for key in keys {
            value = value.get(key)?;
        }
        match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// A privilege path as people read it: `hr-team-8 → authentik Admins`, or
/// [`SUPERUSER_FLAG`] for the account's own flag alone.
pub fn path_text(path: &[GroupRef]) -> String {
    if path.is_empty() {
        return SUPERUSER_FLAG.to_string();
    }
    let names: Vec<&str> = path.iter().map(|g| g.display_name.as_str()).collect();
    names.join(" → ")
}

/// One account of a snapshot as a census sees it before reading its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountHead {
    pub external_id: String,
    /// Out of scope, an account is neither counted nor listed (its groups still count for
    /// others: privilege is judged on the whole directory).
    pub in_scope: bool,
    pub active: bool,
    /// Its own superuser flag or roles could make it privileged without a group.
    pub may_hold_privilege_alone: bool,
}

/// A snapshot's accounts, counted, and its privileged accounts in uid order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    pub accounts: u64,
    pub active: u64,
    pub privileged: Vec<PrivilegedAccount>,
}

/// Counts a snapshot's accounts and finds its privileged ones under `rules`. The groups
/// come whole; memberships (`(uid, group pk)`) and accounts (in uid order, each with where
/// its record is) pass by their ids, and only an account that may be privileged is read,
/// with `load`.
pub fn census<E, At>(
    rules: &AccountRules,
    catalog: &BTreeMap<String, DirectoryGroup>,
    memberships: impl Iterator<Item = Result<(String, String), E>>,
    accounts: impl Iterator<Item = Result<(AccountHead, At), E>>,
    mut load: impl FnMut(&AccountHead, At) -> Result<DirectoryAccount, E>,
) -> Result<Census, E> {
    let privileged_groups = rules.privileged_group_ids(catalog);
    let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if !privileged_groups.is_empty() {
        for membership in memberships {
            let (uid, group) = membership?;
            if privileged_groups.contains(&group) {
                member_of.entry(uid).or_default().insert(group);
            }
        }
    }
    let mut census = Census::default();
    for head in accounts {
        let (head, at) = head?;
        if !head.in_scope {
            continue;
        }
        census.accounts += 1;
        if !head.active {
            continue;
        }
        census.active += 1;
        let groups = member_of.remove(&head.external_id).unwrap_or_default();
        if groups.is_empty() && !head.may_hold_privilege_alone {
            continue;
        }
        let account = load(&head, at)?;
        if let Some(path) = rules.privilege(&account, &groups, catalog) {
            census.privileged.push(PrivilegedAccount {
                hr_key: rules.hr_key(&account),
                privilege_source: path_text(&path),
                path,
                external_id: account.external_id,
                username: account.username,
                canonical_email: account.canonical_email,
            });
        }
    }
    Ok(census)
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
    let mut privilege_granted = Vec::new();
    let mut privilege_removed = Vec::new();
    let rules = &input.rules;
    let to = &input.to;
    for (uid, sides) in &input.accounts {
        // Judged upstream, reported where the account is in scope on either side.
        if !sides.old_in_scope && !sides.new_in_scope {
            continue;
        }
        let [out_before, out_after] = &input.groups_out_of_scope;
        let added: BTreeSet<&String> = sides
            .new_groups
            .difference(&sides.old_groups)
            .filter(|group| !out_after.contains(*group))
            .collect();
        let removed: BTreeSet<&String> = sides
            .old_groups
            .difference(&sides.new_groups)
            .filter(|group| !out_before.contains(*group))
            .collect();
        let groups_added = group_refs(added.iter().copied(), input, After);
        let groups_removed = group_refs(removed.iter().copied(), input, Before);
        let held_before = sides
            .old
            .as_ref()
            .and_then(|old| rules.privilege(old, &sides.old_groups, &input.groups_before));
        let held_after = sides
            .new
            .as_ref()
            .and_then(|new| rules.privilege(new, &sides.new_groups, &input.groups_after));
        let escalation = held_before.is_none() && held_after.is_some();
        let source_after = held_after.as_deref().map(path_text);
        // Authentik computes an account's `is_superuser` from its groups: a flip that its
        // groups explain is the privilege grant or removal (and the group change), not also
        // a change of the account's own (one event, one place).
        let own_changes: Vec<FieldChange> = sides
            .changes
            .iter()
            .filter(|change| {
                change.field != "is_superuser" || !superuser_flag_derived(input, sides)
            })
            .cloned()
            .collect();
        let without_status: Vec<FieldChange> = own_changes
            .iter()
            .filter(|change| change.field != "status")
            .cloned()
            .collect();
        let joiner =
            |new: &DirectoryAccount, reason, changes, groups_added, groups_removed| Joiner {
                external_id: uid.clone(),
                username: new.username.clone(),
                canonical_email: new.canonical_email.clone(),
                reason,
                status: new.status,
                account_type: new.account_type,
                is_superuser: new.is_superuser,
                added_at: new.added_at.clone(),
                groups: group_refs(sides.new_groups.iter(), input, After),
                changes,
                groups_added,
                groups_removed,
                privilege_escalation: escalation,
                privileged: held_after.is_some(),
                privilege_source: source_after.clone(),
                hr_key: rules.hr_key(new),
            };
        match (&sides.old, &sides.new) {
            (None, Some(new)) if new.status == AccountStatus::Active => joiners.push(joiner(
                new,
                JoinReason::Created,
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )),
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
                    last_seen_active_at: last_active.as_ref().map(|last| last.started_at),
                    detected_at: to.finished_at,
                    last_login_at: old.last_login_at.clone(),
                    hr_key: rules.hr_key(old),
                    groups_at_deletion: group_refs(sides.old_groups.iter(), input, Before),
                    authentik_last_updated: old.last_updated_at.clone(),
                })
            }
            (Some(old), Some(new))
                if old.status == AccountStatus::Inactive && new.status == AccountStatus::Active =>
            {
                joiners.push(joiner(
                    new,
                    JoinReason::Reactivated,
                    without_status,
                    groups_added,
                    groups_removed,
                ))
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
            (Some(_), Some(new)) => {
                if !own_changes.is_empty() || !added.is_empty() || !removed.is_empty() {
                    movers.push(Mover {
                        external_id: uid.clone(),
                        username: new.username.clone(),
                        canonical_email: new.canonical_email.clone(),
                        changes: own_changes.clone(),
                        groups_added,
                        groups_removed,
                        privilege_escalation: escalation,
                        privileged: held_after.is_some(),
                        privilege_source: source_after.clone(),
                        hr_key: rules.hr_key(new),
                    })
                }
            }
        }
        match (&held_before, &held_after) {
            (None, Some(path)) => {
                privilege_granted.push(privilege_change(input, uid, sides, path, Gained))
            }
            (Some(path), None) => {
                privilege_removed.push(privilege_change(input, uid, sides, path, Lost))
            }
            _ => {}
        }
    }
    // A baseline's groups were present, not created.
    let (groups, privileged_group_changes) = match input.baseline {
        Some(_) => (GroupChanges::default(), Vec::new()),
        None => (
            group_changes(input),
            privileged_group_changes(input, &privilege_granted, &privilege_removed),
        ),
    };
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
        groups,
        memberships: membership_changes(input),
        population: input.population,
        privilege_granted,
        privilege_removed,
        privileged_group_changes,
        scope_changes: input.scope_changes.clone(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Gained,
    Lost,
}
use Direction::{Gained, Lost};

/// A grant (the account's privilege `path` after) or a removal (its path before), with why.
fn privilege_change(
    input: &DiffInput,
    uid: &str,
    sides: &AccountSides,
    path: &[GroupRef],
    direction: Direction,
) -> PrivilegeChange {
    let (account, other, groups_moved) = match direction {
        Gained => (&sides.new, &sides.old, &sides.old_groups),
        Lost => (&sides.old, &sides.new, &sides.new_groups),
    };
    let account = account.as_ref().expect("a privileged side exists");
    let active = |side: &Option<DirectoryAccount>| {
        side.as_ref()
            .is_some_and(|account| account.status == AccountStatus::Active)
    };
    let flag_switched = |group: &GroupRef| {
        input
            .group_changes
            .get(&group.external_id)
            .is_some_and(|changes| changes.iter().any(|c| c.field == "is_superuser"))
    };
    let reshaped = |group: &GroupRef| {
        input
            .group_changes
            .get(&group.external_id)
            .is_some_and(|changes| {
                changes
                    .iter()
                    .any(|c| matches!(c.field.as_str(), "parents" | "display_name" | "roles"))
            })
    };
    let mut groups_changed = Vec::new();
    let mut source = path_text(path);
    let reason = match (direction, other) {
        (Gained, None) => PrivilegeReason::Created,
        (Lost, None) => PrivilegeReason::Deleted,
        (Gained, Some(_)) if !active(other) => PrivilegeReason::Reactivated,
        (Lost, Some(_)) if !active(other) => PrivilegeReason::Deactivated,
        // Its own membership of the path's first group changed.
        _ if path
            .first()
            .is_some_and(|direct| !groups_moved.contains(&direct.external_id)) =>
        {
            PrivilegeReason::Moved
        }
        _ if path.last().is_some_and(flag_switched) => {
            groups_changed.push(path.last().expect("checked").clone());
            source = GROUP_FLAG_CHANGED.to_string();
            PrivilegeReason::GroupChanged
        }
        _ if path.iter().any(reshaped) => {
            groups_changed.extend(path.iter().filter(|group| reshaped(group)).cloned());
            PrivilegeReason::GroupChanged
        }
        _ => PrivilegeReason::Moved,
    };
    PrivilegeChange {
        external_id: uid.to_string(),
        username: account.username.clone(),
        canonical_email: account.canonical_email.clone(),
        hr_key: input.rules.hr_key(account),
        reason,
        privilege_source: source,
        path: path.to_vec(),
        groups_changed,
    }
}

/// Changes of groups that make (or made) their members privileged, with the accounts each
/// one granted or removed privilege for.
fn privileged_group_changes(
    input: &DiffInput,
    granted: &[PrivilegeChange],
    removed: &[PrivilegeChange],
) -> Vec<PrivilegedGroupChange> {
    let rules = &input.rules;
    let privileged_before = rules.privileged_group_ids(&input.groups_before);
    let privileged_after = rules.privileged_group_ids(&input.groups_after);
    let affected = |changes: &[PrivilegeChange], id: &str| {
        changes
            .iter()
            .filter(|change| change.groups_changed.iter().any(|g| g.external_id == id))
            .count() as u64
    };
    let mut result = Vec::new();
    let catalogs = [
        (&input.groups_after, &input.groups_before, "created"),
        (&input.groups_before, &input.groups_after, "deleted"),
    ];
    for (catalog, other, change) in catalogs {
        for (id, group) in catalog {
            if !other.contains_key(id) && rules.confers(group) {
                result.push(PrivilegedGroupChange {
                    external_id: id.clone(),
                    display_name: group.display_name.clone(),
                    change: change.to_string(),
                    changes: Vec::new(),
                    accounts_granted: 0,
                    accounts_removed: 0,
                });
            }
        }
    }
    for (id, changes) in &input.group_changes {
        if !privileged_before.contains(id) && !privileged_after.contains(id) {
            continue;
        }
        let relevant: Vec<FieldChange> = changes
            .iter()
            .filter(|c| {
                matches!(
                    c.field.as_str(),
                    "is_superuser" | "parents" | "display_name" | "roles"
                )
            })
            .map(|c| named_parents(input, c))
            .collect();
        if relevant.is_empty() {
            continue;
        }
        result.push(PrivilegedGroupChange {
            external_id: id.clone(),
            display_name: group_name(id, input, After),
            change: "changed".to_string(),
            changes: relevant,
            accounts_granted: affected(granted, id),
            accounts_removed: affected(removed, id),
        });
    }
    result
}

/// A `parents` change with group names in place of pks; any other change as it is.
fn named_parents(input: &DiffInput, change: &FieldChange) -> FieldChange {
    if change.field != "parents" {
        return change.clone();
    }
    let names = |value: &serde_json::Value, prefer| match value.as_array() {
        Some(ids) => serde_json::Value::Array(
            ids.iter()
                .map(|id| match id.as_str() {
                    Some(id) => serde_json::Value::String(group_name(id, input, prefer)),
                    None => id.clone(),
                })
                .collect(),
        ),
        None => value.clone(),
    };
    FieldChange {
        field: change.field.clone(),
        old: names(&change.old, Before),
        new: names(&change.new, After),
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
            started_at: from.started_at,
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
    let held = input
        .rules
        .privilege(old, &sides.old_groups, &input.groups_before);
    let last_login_at = sides
        .new
        .as_ref()
        .map_or(&old.last_login_at, |new| &new.last_login_at)
        .clone();
    let detected_at = input.to.finished_at;
    let latency_seconds = last_active.as_ref().map(|last| {
        (detected_at - last.started_at)
            .num_seconds()
            .max(0)
            .unsigned_abs()
    });
    let sla_seconds = input.rules.sla_seconds;
    Leaver {
        privileged_at_departure: held.is_some(),
        privilege_source: held.as_deref().map(path_text),
        hr_key: input.rules.hr_key(old),
        external_id: uid.to_string(),
        username: old.username.clone(),
        canonical_email: old.canonical_email.clone(),
        reason,
        groups_at_departure: last_active
            .as_ref()
            .map(|last| last.groups.clone())
            .unwrap_or_default(),
        last_seen_active_at: last_active.as_ref().map(|last| last.started_at),
        detected_at,
        login_after_last_seen: login_after(last_login_at.as_deref(), last_active.as_ref()),
        last_login_at,
        authentik_last_updated: sides
            .new
            .as_ref()
            .map_or(&old.last_updated_at, |new| &new.last_updated_at)
            .clone(),
        memberships_removed,
        changes,
        latency_seconds,
        sla_seconds,
        within_sla: latency_seconds
            .zip(sla_seconds)
            .map(|(latency, sla)| latency <= sla),
    }
}

/// Whether Authentik recorded a login after the last run that saw the account active had
/// finished (a login during that run's fetch may well have come before its page was read).
fn login_after(login: Option<&str>, last_active: Option<&LastActive>) -> bool {
    let (Some(login), Some(last)) = (login, last_active) else {
        return false;
    };
    DateTime::parse_from_rfc3339(login)
        .is_ok_and(|login| login.with_timezone(&Utc) > last.finished_at)
}

/// Whether the account's `is_superuser` on both sides is what its groups give it, so that a
/// change of the flag is a consequence of group changes. Without group sync nothing explains
/// the flag, and its change is the account's own.
fn superuser_flag_derived(input: &DiffInput, sides: &AccountSides) -> bool {
    let explained = |account: &Option<DirectoryAccount>, groups, catalog| {
        account
            .as_ref()
            .is_none_or(|account| account.is_superuser == superuser_path(groups, catalog).is_some())
    };
    explained(&sides.old, &sides.old_groups, &input.groups_before)
        && explained(&sides.new, &sides.new_groups, &input.groups_after)
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
        ancestor_path(group, catalog, &|g| g.is_superuser)
            .map(|path| path.into_iter().map(|g| g.display_name).collect())
    })
}

/// The path from `group` up through its ancestors to the first group that `confers`
/// (depth first, parents in order), `group` itself included.
fn ancestor_path(
    group: &str,
    catalog: &BTreeMap<String, DirectoryGroup>,
    confers: &dyn Fn(&DirectoryGroup) -> bool,
) -> Option<Vec<GroupRef>> {
    walk_ancestors(group, catalog, confers, &mut BTreeSet::new())
}

fn walk_ancestors(
    group: &str,
    catalog: &BTreeMap<String, DirectoryGroup>,
    confers: &dyn Fn(&DirectoryGroup) -> bool,
    visited: &mut BTreeSet<String>,
) -> Option<Vec<GroupRef>> {
    // A hierarchy with a cycle (hostile data) must not loop.
    if !visited.insert(group.to_string()) {
        return None;
    }
    let record = catalog.get(group)?;
    let this = GroupRef {
        external_id: record.external_id.clone(),
        display_name: record.display_name.clone(),
    };
    if confers(record) {
        return Some(vec![this]);
    }
    record.parents.iter().find_map(|parent| {
        walk_ancestors(parent, catalog, confers, visited).map(|mut path| {
            path.insert(0, this.clone());
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
    let [out_before, out_after] = &input.groups_out_of_scope;
    let in_scope = |id: &String| !out_before.contains(id) || !out_after.contains(id);
    GroupChanges {
        created: input
            .groups_after
            .iter()
            .filter(|(id, _)| !input.groups_before.contains_key(*id) && !out_after.contains(*id))
            .map(|(id, group)| reference(id, group))
            .collect(),
        deleted: input
            .groups_before
            .iter()
            .filter(|(id, _)| !input.groups_after.contains_key(*id) && !out_before.contains(*id))
            .map(|(id, group)| reference(id, group))
            .collect(),
        changed: input
            .group_changes
            .iter()
            .filter(|(id, changes)| !changes.is_empty() && in_scope(id))
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
