//! A run's entry, built from what its sync found, before the commit that stores it: the
//! settings and what changed in them, the diff as the run judged it, the population and the
//! privileged accounts at its end (counted from the collected directory, not from the
//! events, so that a report's roll-forward checks the one against the other), and the index
//! rows that let `history` find an account's runs.

use std::collections::{BTreeMap, BTreeSet};

use crate::collect::Collected;
use crate::diff::{AccountHead, AccountRules, AccountSides, Census, DiffInput, DirectoryDiff};
use crate::normalize::{AccountStatus, DirectoryAccount, DirectoryGroup};
use crate::record::with_volatile;

use super::entry::{PopulationAtEnd, PrivilegedList, PrivilegedNow};

/// The privileged accounts and population of a run's collected directory.
pub fn census_of(collected: &Collected, rules: &AccountRules) -> std::io::Result<Census> {
    let invalid = |what: &str, error: serde_json::Error| {
        std::io::Error::other(format!("a spooled {what} does not read back: {error}"))
    };
    let mut catalog = BTreeMap::new();
    for item in collected.groups.items() {
        let record = collected.groups.read(item)?;
        let group: DirectoryGroup = serde_json::from_str(record.entry.record.get())
            .map_err(|error| invalid("group", error))?;
        catalog.insert(group.external_id.clone(), group);
    }
    let memberships = collected
        .memberships
        .pairs()
        .map(|(uid, group)| Ok((uid.to_string(), group.to_string())));
    let accounts = collected.accounts.items().iter().map(|item| {
        Ok((
            AccountHead {
                external_id: item.external_id.to_string(),
                active: item.flags.active(),
                may_hold_privilege_alone: item.flags.superuser() || item.flags.roles(),
            },
            item,
        ))
    });
    crate::diff::census(rules, &catalog, memberships, accounts, |_, item| {
        let record = collected.accounts.read(item)?;
        let value = record
            .entry
            .record()
            .map_err(|error| invalid("account", error))?;
        serde_json::from_value::<DirectoryAccount>(with_volatile(value, &record.volatile))
            .map_err(|error| invalid("account", error))
    })
}

/// The population at the end of a run.
pub fn population(census: &Census, collected: &Collected) -> PopulationAtEnd {
    PopulationAtEnd {
        accounts: census.accounts,
        active: census.active,
        privileged: census.privileged.len() as u64,
        groups: collected.groups.items().len() as u64,
        memberships: collected.memberships.len() as u64,
    }
}

/// What an account's index row says a run found for it.
pub const PRESENT_AT_BASELINE: &str = "baseline";

/// What an account's index row says for an account created inactive (no joiner: no access
/// was granted, but its history starts there).
pub const CREATED_INACTIVE: &str = "created_inactive";

/// The index rows of a run's entry: every account the diff names, with the kinds of event it
/// found for it, the accounts created inactive, and at a baseline every account present.
pub fn account_index<'a>(
    diff: &DirectoryDiff,
    created_inactive: impl Iterator<Item = &'a str>,
    present_at_baseline: impl Iterator<Item = &'a str>,
) -> Vec<(String, Vec<u8>)> {
    let mut found: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let mut note = |uid: &str, what: &'static str| {
        found.entry(uid.to_string()).or_default().insert(what);
    };
    if diff.baseline.is_some() {
        for uid in present_at_baseline {
            note(uid, PRESENT_AT_BASELINE);
        }
    }
    for uid in created_inactive {
        note(uid, CREATED_INACTIVE);
    }
    let events = [
        (
            diff.joiners
                .iter()
                .map(|e| &e.external_id)
                .collect::<Vec<_>>(),
            "joined",
        ),
        (
            diff.movers.iter().map(|e| &e.external_id).collect(),
            "moved",
        ),
        (
            diff.leavers.iter().map(|e| &e.external_id).collect(),
            "left",
        ),
        (
            diff.purged.iter().map(|e| &e.external_id).collect(),
            "purged",
        ),
        (
            diff.privilege_granted
                .iter()
                .map(|e| &e.external_id)
                .collect(),
            "privilege_granted",
        ),
        (
            diff.privilege_removed
                .iter()
                .map(|e| &e.external_id)
                .collect(),
            "privilege_removed",
        ),
    ];
    for (uids, what) in events {
        for uid in uids {
            note(uid, what);
        }
    }
    found
        .into_iter()
        .map(|(uid, kinds)| {
            let kinds: Vec<&str> = kinds.into_iter().collect();
            (uid, serde_json::to_vec(&kinds).expect("strings serialize"))
        })
        .collect()
}

/// The usernames and emails an account is found by.
fn names_of(uid: &str, username: &str, email: Option<&str>) -> Vec<(String, String)> {
    std::iter::once(username)
        .chain(email)
        .map(|name| (name.to_string(), uid.to_string()))
        .collect()
}

/// `(name, uid)` of every account on either side of a change, and at a baseline of every
/// account collected (read from the spool: the one time a run reads every record).
pub fn names(
    accounts: &BTreeMap<String, AccountSides>,
    baseline: Option<&Collected>,
) -> std::io::Result<Vec<(String, String)>> {
    let mut found: BTreeSet<(String, String)> = BTreeSet::new();
    for (uid, sides) in accounts {
        for account in sides.old.iter().chain(sides.new.iter()) {
            found.extend(names_of(
                uid,
                &account.username,
                account.canonical_email.as_deref(),
            ));
        }
    }
    if let Some(collected) = baseline {
        #[derive(serde::Deserialize)]
        struct Named {
            username: String,
            canonical_email: Option<String>,
        }
        for item in collected.accounts.items() {
            let record = collected.accounts.read(item)?;
            let named: Named =
                serde_json::from_str(record.entry.record.get()).map_err(std::io::Error::other)?;
            found.extend(names_of(
                &item.external_id,
                &named.username,
                named.canonical_email.as_deref(),
            ));
        }
    }
    Ok(found.into_iter().collect())
}

/// A complete run's evidence, ready to be sealed with the run's commit.
pub struct CompleteEntry {
    pub evidence: super::RunEvidence,
    pub accounts: Vec<(String, Vec<u8>)>,
    pub names: Vec<(String, String)>,
    /// The privileged accounts the next run compares with.
    pub privileged_now: PrivilegedNow,
}

/// What a run's entry is made of, besides its record.
pub struct RunContext<'a> {
    pub settings: super::entry::RunSettings,
    /// The settings of the source's previous run, from its entry.
    pub previous_settings: Option<&'a super::entry::RunSettings>,
}

impl RunContext<'_> {
    /// The keys of the settings that differ from the previous run's, for its run record.
    pub fn changed_keys(&self) -> Vec<String> {
        self.previous_settings
            .map(|before| {
                self.settings
                    .changes_since(before)
                    .into_iter()
                    .map(|change| change.key)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The entry of a run that stored nothing of the directory.
    pub fn failed(self, record: &crate::store::RunRecord) -> super::RunEvidence {
        self.evidence(record, None)
    }

    fn evidence(
        self,
        record: &crate::store::RunRecord,
        complete: Option<(DirectoryDiff, PopulationAtEnd, PrivilegedList, String)>,
    ) -> super::RunEvidence {
        let settings_changes = self
            .previous_settings
            .map(|before| self.settings.changes_since(before))
            .unwrap_or_default();
        let (diff, population, privileged, snapshot_digest) = match complete {
            Some((diff, population, privileged, digest)) => {
                (Some(diff), Some(population), Some(privileged), Some(digest))
            }
            None => (None, None, None, None),
        };
        super::RunEvidence {
            run: super::entry::committed_record(record),
            settings: self.settings,
            settings_changes,
            backfilled: false,
            not_replayable: None,
            diff,
            population,
            privileged,
            snapshot_digest,
        }
    }

    /// The entry of a complete run: its diff (and the input it came from), the census of its
    /// directory (against the privileged accounts of the run it was compared with), and its
    /// snapshot digest.
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        self,
        record: &crate::store::RunRecord,
        input: &DiffInput,
        diff: DirectoryDiff,
        census: Census,
        collected: &Collected,
        previous_privileged: Option<&PrivilegedNow>,
        snapshot_digest: String,
    ) -> std::io::Result<CompleteEntry> {
        let created_inactive = input
            .accounts
            .iter()
            .filter(|(_, sides)| {
                sides.old.is_none()
                    && sides
                        .new
                        .as_ref()
                        .is_some_and(|new| new.status != AccountStatus::Active)
            })
            .map(|(uid, _)| uid.as_str());
        let accounts = account_index(
            &diff,
            created_inactive,
            collected
                .accounts
                .items()
                .iter()
                .map(|item| &*item.external_id),
        );
        let names = names(
            &input.accounts,
            diff.baseline.is_some().then_some(collected),
        )?;
        let population = population(&census, collected);
        let (privileged, privileged_now) =
            PrivilegedList::step(&record.run_id, census.privileged, previous_privileged);
        Ok(CompleteEntry {
            evidence: self.evidence(
                record,
                Some((diff, population, privileged, snapshot_digest)),
            ),
            accounts,
            names,
            privileged_now,
        })
    }
}
