//! The rows of an access review of one run: one per account in scope and group in scope it
//! is an effective member of, and one per role it holds, each with how it is granted, whether
//! it is privileged access (by the rules the run recorded), since when (the direct membership
//! that grants it), the last login as of the run, and flags for what needs a look.
//!
//! A review is identified by its digest (`review_id`): the source, the run, the selection
//! and every row's id. The same run and selection give the same rows, so a completed file is
//! matched against the review it claims to be by building that review again.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::access::{
    cycle_text, cycles, effective_groups, effective_roles, granted_text, membership_granted_text,
    role_name, RoleNames,
};
use super::directory::{AccountAt, LastLogin, RunDirectory};
use super::ReadError;
use crate::canonical::canonical_json;
use crate::ledger::entry::{AccessKind, ReviewSelection};
use crate::run::normalize::{AccountStatus, AccountType};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    Selection(String),
}

/// What needs a reviewer's look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// The account is inactive but still holds the access.
    InactiveWithAccess,
    /// No login for the configured number of days before the snapshot (or never, for an
    /// account older than that). Service accounts authenticate with tokens and are not
    /// judged by their logins.
    NoRecentLogin,
    /// An external (guest) account with privileged access.
    ExternalPrivileged,
    /// A service account with privileged access.
    ServicePrivileged,
}

impl Flag {
    pub fn text(self, no_login_days: u32) -> String {
        match self {
            Flag::InactiveWithAccess => "inactive_with_access".to_string(),
            Flag::NoRecentLogin => format!("no_login_{no_login_days}d"),
            Flag::ExternalPrivileged => "external_privileged".to_string(),
            Flag::ServicePrivileged => "service_privileged".to_string(),
        }
    }
}

/// One access of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub row_id: String,
    pub account_external_id: String,
    pub username: String,
    pub display_name: String,
    pub email: Option<String>,
    pub account_type: AccountType,
    pub status: AccountStatus,
    pub access: AccessKind,
    pub access_external_id: String,
    pub access_name: String,
    pub privileged: bool,
    /// `direct`, or `via` the groups on the way.
    pub granted: String,
    /// The groups on the way, by id (the direct group first); empty for a direct grant.
    pub via: Vec<String>,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_login: LastLogin,
    pub flags: Vec<Flag>,
}

/// A review of one run.
#[derive(Debug, Clone)]
pub struct Review {
    pub review_id: String,
    pub selection: ReviewSelection,
    pub no_login_days: u32,
    pub rows: Vec<AccessRow>,
    /// The cycles of the run's group hierarchy, as text (`A → B → A`).
    pub cycles: Vec<String>,
}

impl Review {
    /// How many distinct accounts the rows cover.
    pub fn accounts(&self) -> usize {
        let mut uids: Vec<&str> = self
            .rows
            .iter()
            .map(|row| row.account_external_id.as_str())
            .collect();
        uids.dedup();
        uids.len()
    }

    pub fn count(&self, wanted: impl Fn(&AccessRow) -> bool) -> usize {
        self.rows.iter().filter(|row| wanted(row)).count()
    }
}

/// A row's id: stable for the same account and access in any run. It starts with a letter:
/// a spreadsheet reads an id of digits (or digits, `e`, digits) as a number and rewrites it
/// when the file is saved.
pub fn row_id(account_external_id: &str, access: AccessKind, access_external_id: &str) -> String {
    let digest = Sha256::digest(
        format!(
            "{account_external_id}\u{1f}{}\u{1f}{access_external_id}",
            access.as_str()
        )
        .as_bytes(),
    );
    format!("r{}", hex::encode(&digest[..8]))
}

/// The digest that names a review: what it covers, not what the reviewers added.
pub fn review_id(
    source: &str,
    run_id: &str,
    selection: &ReviewSelection,
    rows: &[AccessRow],
) -> String {
    let mut row_ids: Vec<&str> = rows.iter().map(|row| row.row_id.as_str()).collect();
    row_ids.sort_unstable();
    let covered = serde_json::json!({
        "source": source,
        "run_id": run_id,
        "groups": selection.groups,
        "privileged_only": selection.privileged_only,
        "rows": row_ids,
    });
    hex::encode(Sha256::digest(canonical_json(&covered)))
}

/// Builds the review of `directory`'s run: every in-scope account's access, narrowed by
/// `selection`, sorted by username, then groups before roles, then access name.
pub fn build(
    store: &Store,
    directory: &RunDirectory,
    selection: &ReviewSelection,
    no_login_days: u32,
) -> Result<Review, ReviewError> {
    let selected: Vec<String> = selection
        .groups
        .iter()
        .map(|group| {
            directory
                .find_group(group)
                .map_err(|error| ReviewError::Selection(error.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let rules = directory.rules();
    let privileged_groups = rules.privileged_group_ids(&directory.groups);
    let stale_before = directory.run.finished_at - Duration::days(i64::from(no_login_days));
    let reader = store.reader().map_err(ReadError::from)?;
    let role_names = RoleNames::of(&directory.groups);
    let mut rows = Vec::new();
    for account in directory.accounts.iter().filter(|account| account.in_scope) {
        let record = &account.account;
        let uid = &record.external_id;
        let groups = effective_groups(&directory.direct_groups(uid, false), &directory.groups);
        // Each direct group grants several rows (its ancestors, their roles): read once.
        let mut first_seen_in: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
        let mut first_seen = |group: &str| -> Result<Option<DateTime<Utc>>, ReadError> {
            if let Some(known) = first_seen_in.get(group) {
                return Ok(*known);
            }
            let found = directory.first_seen(&reader, uid, group)?;
            first_seen_in.insert(group.to_string(), found);
            Ok(found)
        };
        let mut found = Vec::new();
        for grant in &groups {
            let id = &grant.group.external_id;
            let selected_group = selected.is_empty() || selected.contains(id);
            if !directory.groups_in_scope.contains(id) || !selected_group {
                continue;
            }
            found.push(AccessRow {
                privileged: privileged_groups.contains(id),
                granted: membership_granted_text(grant),
                via: grant.path[..grant.path.len() - 1]
                    .iter()
                    .map(|group| group.external_id.clone())
                    .collect(),
                first_seen: first_seen(&grant.direct_group().external_id)?,
                ..row(account, AccessKind::Group, id, &grant.group.display_name)
            });
        }
        for grant in effective_roles(&record.roles, &groups, &directory.groups, &role_names) {
            let through_selected = selected.is_empty()
                || grant
                    .path
                    .iter()
                    .any(|group| selected.contains(&group.external_id));
            if !through_selected {
                continue;
            }
            let first_seen = match grant.path.first() {
                Some(direct) => first_seen(&direct.external_id)?,
                None => None,
            };
            found.push(AccessRow {
                privileged: rules.role_is_privileged(&grant.role),
                granted: granted_text(&grant.path),
                via: grant.path.iter().map(|g| g.external_id.clone()).collect(),
                first_seen,
                ..row(
                    account,
                    AccessKind::Role,
                    &grant.role.pk,
                    role_name(&grant.role),
                )
            });
        }
        for mut access in found {
            if selection.privileged_only && !access.privileged {
                continue;
            }
            access.flags = flags(account, &access, stale_before);
            rows.push(access);
        }
    }
    rows.sort_by(|a, b| {
        (
            &a.username,
            &a.account_external_id,
            a.access,
            &a.access_name,
            &a.access_external_id,
        )
            .cmp(&(
                &b.username,
                &b.account_external_id,
                b.access,
                &b.access_name,
                &b.access_external_id,
            ))
    });
    Ok(Review {
        review_id: review_id(
            &directory.run.source,
            &directory.run.run_id,
            selection,
            &rows,
        ),
        selection: selection.clone(),
        no_login_days,
        rows,
        cycles: cycles(&directory.groups)
            .iter()
            .map(|cycle| cycle_text(cycle))
            .collect(),
    })
}

/// A row of `account` for one access, before what depends on the grant.
fn row(account: &AccountAt, access: AccessKind, access_external_id: &str, name: &str) -> AccessRow {
    let record = &account.account;
    AccessRow {
        row_id: row_id(&record.external_id, access, access_external_id),
        account_external_id: record.external_id.clone(),
        username: record.username.clone(),
        display_name: record.display_name.clone(),
        email: record.canonical_email.clone(),
        account_type: record.account_type,
        status: record.status,
        access,
        access_external_id: access_external_id.to_string(),
        access_name: name.to_string(),
        privileged: false,
        granted: String::new(),
        via: Vec::new(),
        first_seen: None,
        last_login: account.last_login.clone(),
        flags: Vec::new(),
    }
}

fn flags(account: &AccountAt, access: &AccessRow, stale_before: DateTime<Utc>) -> Vec<Flag> {
    let record = &account.account;
    let mut flags = Vec::new();
    if record.status == AccountStatus::Inactive {
        flags.push(Flag::InactiveWithAccess);
    }
    let older = |at: &str| {
        DateTime::parse_from_rfc3339(at).is_ok_and(|at| at.with_timezone(&Utc) < stale_before)
    };
    let no_recent_login = match &account.last_login {
        LastLogin::At(at) => older(at),
        // Never logged in: stale once the account is older than the window (or its age is
        // unknown).
        LastLogin::Never => record.added_at.as_deref().is_none_or(older),
        LastLogin::AfterRun(_) => false,
    };
    if no_recent_login && record.account_type != AccountType::Service {
        flags.push(Flag::NoRecentLogin);
    }
    if access.privileged {
        match record.account_type {
            AccountType::Guest => flags.push(Flag::ExternalPrivileged),
            AccountType::Service => flags.push(Flag::ServicePrivileged),
            AccountType::User => {}
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_are_stable_and_distinct_per_access() {
        let a = row_id("uid1", AccessKind::Group, "g1");
        assert_eq!(a, row_id("uid1", AccessKind::Group, "g1"));
        assert_ne!(a, row_id("uid1", AccessKind::Role, "g1"));
        assert_ne!(a, row_id("uid1", AccessKind::Group, "g2"));
        assert_eq!(a.len(), 17);
        assert!(a.starts_with('r'));
    }
}
