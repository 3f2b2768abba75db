//! A run's entry, built from what its sync found, before the commit that stores it: the
//! settings and what changed in them, the diff as the run judged it, the population and the
//! privileged accounts at its end (counted from the collected directory, not from the
//! events, so that a report's roll-forward checks the one against the other), and the index
//! rows that let `history` find an account's runs.

use std::collections::{BTreeMap, BTreeSet};

use crate::diff::{AccountHead, AccountRules, AccountSides, Census, DiffInput, DirectoryDiff};
use crate::run::collect::Collected;
use crate::run::normalize::{AccountStatus, DirectoryAccount, DirectoryGroup};
use crate::run::record::with_volatile;
use crate::store::{IndexError, IndexRows};

use super::entry::{PopulationAtEnd, PrivilegedList, PrivilegedNow, PrivilegedStep};

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
                in_scope: item.flags.in_scope(),
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
        groups: collected.groups.items().len() as u64 - collected.scope.groups_out_of_scope,
        memberships: collected.memberships.len() as u64 - collected.scope.memberships_out_of_scope,
    }
}

/// What an account's index row says a run found for it.
pub const PRESENT_AT_BASELINE: &str = "baseline";

/// What an account's index row says for an account created inactive (no joiner: no access
/// was granted, but its history starts there).
pub const CREATED_INACTIVE: &str = "created_inactive";

/// The rows beside a run's entry that let `history` find an account's runs, and the
/// account by any username or email it had, without reading every entry.
#[derive(Default)]
pub struct RunIndex<'a> {
    /// What the run found for each account its events name, and the accounts created
    /// inactive.
    pub found: BTreeMap<String, BTreeSet<&'static str>>,
    /// `(name, uid)` of every account on either side of a change.
    pub names: BTreeSet<(String, String)>,
    /// At a baseline, every account present.
    pub present: Option<Present<'a>>,
}

/// The accounts present at a baseline.
pub enum Present<'a> {
    /// The run's collected directory, read at the commit: each account is named as well.
    Collected(&'a Collected),
    /// A replayed run's accounts, by uid (a backfill names them from every stored version).
    Uids(Vec<String>),
}

impl<'a> RunIndex<'a> {
    /// The accounts a diff names, with the kinds of event it found for each, the accounts
    /// created inactive (no joiner, as no access was granted, but their history starts
    /// there), and at a baseline `present`.
    pub fn of<'u>(
        diff: &DirectoryDiff,
        created_inactive: impl Iterator<Item = &'u str>,
        present: Option<Present<'a>>,
    ) -> RunIndex<'a> {
        let mut found: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
        let mut note = |uid: &str, what: &'static str| {
            found.entry(uid.to_string()).or_default().insert(what);
        };
        for uid in created_inactive {
            note(uid, CREATED_INACTIVE);
        }
        let ids = |events: &mut dyn Iterator<Item = &String>, what: &'static str| {
            events
                .map(move |uid| (uid.clone(), what))
                .collect::<Vec<_>>()
        };
        let events = [
            ids(&mut diff.joiners.iter().map(|e| &e.external_id), "joined"),
            ids(&mut diff.movers.iter().map(|e| &e.external_id), "moved"),
            ids(&mut diff.leavers.iter().map(|e| &e.external_id), "left"),
            ids(&mut diff.purged.iter().map(|e| &e.external_id), "purged"),
            ids(
                &mut diff.privilege_granted.iter().map(|e| &e.external_id),
                "privilege_granted",
            ),
            ids(
                &mut diff.privilege_removed.iter().map(|e| &e.external_id),
                "privilege_removed",
            ),
            ids(
                &mut diff
                    .scope_changes
                    .accounts_entered
                    .iter()
                    .map(|e| &e.external_id),
                "entered_scope",
            ),
            ids(
                &mut diff
                    .scope_changes
                    .accounts_left
                    .iter()
                    .map(|e| &e.external_id),
                "left_scope",
            ),
        ];
        for (uid, what) in events.into_iter().flatten() {
            note(&uid, what);
        }
        RunIndex {
            found,
            names: BTreeSet::new(),
            present: if diff.baseline.is_some() {
                present
            } else {
                None
            },
        }
    }

    /// Writes the rows: an account present at a baseline and named by an event gets one row
    /// with both.
    pub fn write(&self, rows: &mut IndexRows<'_>) -> Result<(), IndexError> {
        let encode = |kinds: &BTreeSet<&str>| {
            serde_json::to_vec(&kinds.iter().collect::<Vec<_>>()).expect("strings serialize")
        };
        let mut merged: BTreeSet<&str> = BTreeSet::new();
        let mut present = |uid: &str, rows: &mut IndexRows<'_>| {
            let mut kinds = BTreeSet::from([PRESENT_AT_BASELINE]);
            if let Some((uid, found)) = self.found.get_key_value(uid) {
                kinds.extend(found);
                merged.insert(uid.as_str());
            }
            rows.account(uid, &encode(&kinds))
        };
        match &self.present {
            None => {}
            Some(Present::Uids(uids)) => {
                for uid in uids {
                    present(uid, rows)?;
                }
            }
            Some(Present::Collected(collected)) => {
                #[derive(serde::Deserialize)]
                struct Named {
                    username: String,
                    canonical_email: Option<String>,
                }
                let unreadable = |error: &dyn std::fmt::Display| {
                    IndexError::source(format!("a spooled account does not read back: {error}"))
                };
                // `history` works on the scope: an account outside it was not present.
                for item in collected
                    .accounts
                    .items()
                    .iter()
                    .filter(|i| i.flags.in_scope())
                {
                    let uid = &*item.external_id;
                    present(uid, rows)?;
                    let record = collected
                        .accounts
                        .read(item)
                        .map_err(|error| unreadable(&error))?;
                    let named: Named = serde_json::from_str(record.entry.record.get())
                        .map_err(|error| unreadable(&error))?;
                    for name in std::iter::once(&named.username).chain(&named.canonical_email) {
                        rows.name(name, uid)?;
                    }
                }
            }
        }
        for (uid, kinds) in &self.found {
            if !merged.contains(uid.as_str()) {
                rows.account(uid, &encode(kinds))?;
            }
        }
        for (name, uid) in &self.names {
            rows.name(name, uid)?;
        }
        Ok(())
    }
}

/// `(name, uid)` of every username and email on either side of a change.
pub fn names(accounts: &BTreeMap<String, AccountSides>) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (uid, sides) in accounts {
        for account in sides.old.iter().chain(sides.new.iter()) {
            let names = std::iter::once(&account.username).chain(&account.canonical_email);
            found.extend(names.map(|name| (name.clone(), uid.clone())));
        }
    }
    found
}

/// A complete run's evidence, ready to be sealed with the run's commit.
pub struct CompleteEntry<'a> {
    pub evidence: super::RunEvidence,
    pub index: RunIndex<'a>,
    /// The privileged accounts the next run compares with, if they changed.
    pub privileged_now: Option<PrivilegedStep>,
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
    pub fn complete<'c>(
        self,
        record: &crate::store::RunRecord,
        input: &DiffInput,
        diff: DirectoryDiff,
        census: Census,
        collected: &'c Collected,
        previous_privileged: Option<&PrivilegedNow>,
        snapshot_digest: String,
    ) -> CompleteEntry<'c> {
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
        let mut index = RunIndex::of(&diff, created_inactive, Some(Present::Collected(collected)));
        index.names = names(&input.accounts);
        let population = population(&census, collected);
        let (privileged, privileged_now) =
            PrivilegedList::step(&record.run_id, census.privileged, previous_privileged);
        CompleteEntry {
            evidence: self.evidence(
                record,
                Some((diff, population, privileged, snapshot_digest)),
            ),
            index,
            privileged_now,
        }
    }
}
