//! Evidence from the stored history: diffs between any two complete runs (with each leaver's
//! last active run looked up in the history), and one account's timeline across all runs.
//! The rules live in the pure [`crate::diff`]; this module only gathers their input.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::diff::{
    diff, leaver_ids, DiffInput, DirectoryDiff, FieldChange, GroupRef, LastActive, Side,
};
use crate::normalize::{
    AccountStatus, DirectoryAccount, DirectoryGroup, DirectoryMembership, Entry, Snapshot,
};
use crate::store::{RecordKind, RecordVersion, RunRecord, Store, StoreError};

/// One side of a comparison that may not be stored yet (a run being committed).
pub struct RunSnapshot<'a> {
    pub run_id: &'a str,
    pub finished_at: DateTime<Utc>,
    pub snapshot: &'a Snapshot,
}

/// The diff from `from` (none for a source's first run) to `to`. `runs_before_to` are the
/// complete runs older than `to`, oldest first, where leavers' last active run is sought.
pub fn compare(
    store: &Store,
    source: &str,
    ignore_fields: &[String],
    from: Option<RunSnapshot<'_>>,
    to: RunSnapshot<'_>,
    runs_before_to: &[RunRecord],
) -> Result<DirectoryDiff, StoreError> {
    let empty = Snapshot::default();
    let from = from.unwrap_or(RunSnapshot {
        run_id: "",
        finished_at: to.finished_at,
        snapshot: &empty,
    });
    // Next to each other, `from` is the last run before `to`: a leaver active there was last
    // seen active there, which the diff knows without the history.
    let adjacent = runs_before_to.last().map(|run| run.run_id.as_str()) == Some(from.run_id);
    let mut last_active = BTreeMap::new();
    for uid in leaver_ids(from.snapshot, to.snapshot) {
        let active_in_from = from
            .snapshot
            .accounts
            .get(&uid)
            .is_some_and(|entry| entry.record.status == AccountStatus::Active);
        if adjacent && active_in_from {
            continue;
        }
        let history = AccountHistory::load(store, source, &uid)?;
        if let Some(found) = history.last_active(runs_before_to) {
            last_active.insert(uid, found);
        }
    }
    Ok(diff(&DiffInput {
        source,
        from: Side {
            run_id: from.run_id,
            finished_at: from.finished_at,
            snapshot: from.snapshot,
        },
        to: Side {
            run_id: to.run_id,
            finished_at: to.finished_at,
            snapshot: to.snapshot,
        },
        last_active: &last_active,
        ignore_fields,
    }))
}

/// The diff between two stored complete runs of a source.
pub fn compare_runs(
    store: &Store,
    ignore_fields: &[String],
    from: &RunRecord,
    to: &RunRecord,
) -> Result<DirectoryDiff, StoreError> {
    let runs = store.complete_runs(&to.source)?;
    let before: Vec<RunRecord> = runs
        .into_iter()
        .filter(|run| run.run_id < to.run_id)
        .collect();
    let (from_snapshot, to_snapshot) = (store.snapshot(from)?, store.snapshot(to)?);
    compare(
        store,
        &to.source,
        ignore_fields,
        Some(RunSnapshot {
            run_id: &from.run_id,
            finished_at: from.finished_at,
            snapshot: &from_snapshot,
        }),
        RunSnapshot {
            run_id: &to.run_id,
            finished_at: to.finished_at,
            snapshot: &to_snapshot,
        },
        &before,
    )
}

/// Every stored version of one account, its memberships and the groups they name.
struct AccountHistory {
    uid: String,
    account: Vec<RecordVersion>,
    memberships: Vec<RecordVersion>,
    groups: Vec<RecordVersion>,
}

impl AccountHistory {
    fn load(store: &Store, source: &str, uid: &str) -> Result<AccountHistory, StoreError> {
        let account = store
            .versions(source, RecordKind::Account, uid)?
            .into_iter()
            .filter(|version| version.external_id == uid)
            .collect();
        let memberships = store.versions(source, RecordKind::Membership, &format!("{uid}:"))?;
        let group_ids: BTreeSet<&str> = memberships
            .iter()
            .filter_map(|version| version.external_id.split_once(':').map(|(_, group)| group))
            .collect();
        let mut groups = Vec::new();
        for group in group_ids {
            groups.extend(
                store
                    .versions(source, RecordKind::Group, group)?
                    .into_iter()
                    .filter(|version| version.external_id == group),
            );
        }
        Ok(AccountHistory {
            uid: uid.to_string(),
            account,
            memberships,
            groups,
        })
    }

    /// The part of the snapshot of `run_id` that concerns this account.
    fn snapshot_at(&self, run_id: &str) -> Snapshot {
        fn valid<R: serde::de::DeserializeOwned>(
            versions: &[RecordVersion],
            run_id: &str,
        ) -> BTreeMap<String, Entry<R>> {
            versions
                .iter()
                .filter(|version| version.valid_at(run_id))
                .filter_map(|version| {
                    serde_json::from_value(version.entry.clone())
                        .ok()
                        .map(|entry| (version.external_id.clone(), entry))
                })
                .collect()
        }
        Snapshot {
            accounts: valid::<DirectoryAccount>(&self.account, run_id),
            groups: valid::<DirectoryGroup>(&self.groups, run_id),
            memberships: valid::<DirectoryMembership>(&self.memberships, run_id),
        }
    }

    /// The newest of `runs` (oldest first) that saw the account active.
    fn last_active(&self, runs: &[RunRecord]) -> Option<LastActive> {
        runs.iter()
            .rev()
            .find_map(|run| self.active_at(run, &self.snapshot_at(&run.run_id)))
    }

    /// The account's groups at `run`, if that run saw it active.
    fn active_at(&self, run: &RunRecord, snapshot: &Snapshot) -> Option<LastActive> {
        let account = snapshot.accounts.get(&self.uid)?;
        (account.record.status == AccountStatus::Active).then(|| LastActive {
            finished_at: run.finished_at,
            groups: snapshot
                .memberships
                .values()
                .map(|membership| {
                    let id = &membership.record.group_external_id;
                    GroupRef {
                        external_id: id.clone(),
                        display_name: snapshot
                            .groups
                            .get(id)
                            .map_or_else(|| id.clone(), |group| group.record.display_name.clone()),
                    }
                })
                .collect(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimelineKind {
    Joined,
    Rejoined,
    Moved,
    Left,
}

/// One event in an account's life, as the run that detected it saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEvent {
    pub run_id: String,
    pub detected_at: DateTime<Utc>,
    pub event: TimelineKind,
    /// created/reactivated for joins, deleted/deactivated for leaves.
    pub reason: Option<String>,
    pub username: String,
    pub changes: Vec<FieldChange>,
    pub groups_added: Vec<GroupRef>,
    pub groups_removed: Vec<GroupRef>,
    /// The groups held after a join, or at departure for a leave.
    pub groups: Vec<GroupRef>,
    pub privilege_escalation: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub source: String,
    pub external_id: String,
    pub usernames: Vec<String>,
    pub events: Vec<TimelineEvent>,
}

/// The uids of accounts that ever had `user` as username, email or uid.
pub fn find_accounts(store: &Store, source: &str, user: &str) -> Result<Vec<String>, StoreError> {
    let needle = user.to_lowercase();
    let mut found = BTreeSet::new();
    for version in store.versions(source, RecordKind::Account, "")? {
        let record = &version.entry["record"];
        let matches = version.external_id == user
            || record["username"].as_str() == Some(user)
            || record["canonical_email"].as_str() == Some(needle.as_str());
        if matches {
            found.insert(version.external_id);
        }
    }
    Ok(found.into_iter().collect())
}

/// Everything that happened to one account across the stored complete runs.
pub fn timeline(store: &Store, source: &str, uid: &str) -> Result<Timeline, StoreError> {
    let history = AccountHistory::load(store, source, uid)?;
    let runs = store.complete_runs(source)?;
    let mut usernames = BTreeSet::new();
    let mut events = Vec::new();
    let mut ever_seen = false;
    let mut previous: Option<(&RunRecord, Snapshot)> = None;
    let mut last_active: Option<LastActive> = None;
    for run in &runs {
        let snapshot = history.snapshot_at(&run.run_id);
        if let Some(account) = snapshot.accounts.get(uid) {
            usernames.insert(account.record.username.clone());
        }
        let empty = Snapshot::default();
        let (from_run, from_snapshot) = match &previous {
            Some((run, snapshot)) => (*run, snapshot),
            None => (run, &empty),
        };
        let result = diff(&DiffInput {
            source,
            from: Side {
                run_id: &from_run.run_id,
                finished_at: from_run.finished_at,
                snapshot: from_snapshot,
            },
            to: Side {
                run_id: &run.run_id,
                finished_at: run.finished_at,
                snapshot: &snapshot,
            },
            last_active: &last_active
                .clone()
                .map(|found| BTreeMap::from([(uid.to_string(), found)]))
                .unwrap_or_default(),
            ignore_fields: &[],
        });
        events.extend(timeline_events(&result, run, &mut ever_seen));
        if let Some(active) = history.active_at(run, &snapshot) {
            last_active = Some(active);
        }
        previous = Some((run, snapshot));
    }
    Ok(Timeline {
        source: source.to_string(),
        external_id: uid.to_string(),
        usernames: usernames.into_iter().collect(),
        events,
    })
}

fn timeline_events(
    result: &DirectoryDiff,
    run: &RunRecord,
    ever_seen: &mut bool,
) -> Vec<TimelineEvent> {
    let event = |kind, reason: Option<String>, username: &str| TimelineEvent {
        run_id: run.run_id.clone(),
        detected_at: run.finished_at,
        event: kind,
        reason,
        username: username.to_string(),
        changes: Vec::new(),
        groups_added: Vec::new(),
        groups_removed: Vec::new(),
        groups: Vec::new(),
        privilege_escalation: false,
    };
    let mut events = Vec::new();
    for joiner in &result.joiners {
        let kind = if *ever_seen {
            TimelineKind::Rejoined
        } else {
            TimelineKind::Joined
        };
        *ever_seen = true;
        events.push(TimelineEvent {
            groups: joiner.groups.clone(),
            ..event(
                kind,
                Some(joiner.reason.as_str().to_string()),
                &joiner.username,
            )
        });
    }
    for mover in &result.movers {
        events.push(TimelineEvent {
            changes: mover.changes.clone(),
            groups_added: mover.groups_added.clone(),
            groups_removed: mover.groups_removed.clone(),
            privilege_escalation: mover.privilege_escalation,
            ..event(TimelineKind::Moved, None, &mover.username)
        });
    }
    for leaver in &result.leavers {
        let reason = Some(leaver.reason.as_str().to_string());
        events.push(TimelineEvent {
            groups: leaver.groups_at_departure.clone(),
            ..event(TimelineKind::Left, reason, &leaver.username)
        });
    }
    events
}
