//! One account's timeline, from the ledger: the runs whose entries name it (found through
//! the account index, so the cost is that account's events, not the number of runs), each
//! event as the run that found it recorded it. An account is found by any username or
//! email it ever had, or by its uid.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::diff::{FieldChange, GroupRef};
use crate::run::plan::membership_pair;
use crate::run::record::RecordKind;
use crate::store::Reader;

use super::read::run_evidence;
use super::run::{CREATED_INACTIVE, PRESENT_AT_BASELINE};
use super::LedgerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimelineKind {
    /// Present in a run compared with nothing (the source's first run, or a new baseline).
    Baseline,
    /// Created inactive: no access was granted, but the account exists from here.
    CreatedInactive,
    Joined,
    Rejoined,
    Moved,
    Left,
    Purged,
    /// Privilege that changed without a change of the account's own (a group's flag,
    /// parents or roles changed).
    PrivilegeGranted,
    PrivilegeRemoved,
    /// The account entered the source's scope without joining (`reason` says why: the
    /// filter changed, or the record did and its own event is beside).
    EnteredScope,
    /// The account left the scope without leaving: it still exists in Authentik.
    LeftScope,
    /// A run in the account's life ran with other settings than the run before (`changes`
    /// has each key old → new): what counts as a change, or as privilege, may differ from
    /// there on.
    SettingsChanged,
}

impl TimelineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineKind::Baseline => "present at baseline",
            TimelineKind::CreatedInactive => "created inactive",
            TimelineKind::Joined => "joined",
            TimelineKind::Rejoined => "rejoined",
            TimelineKind::Moved => "moved",
            TimelineKind::Left => "left",
            TimelineKind::Purged => "purged",
            TimelineKind::PrivilegeGranted => "privilege granted",
            TimelineKind::PrivilegeRemoved => "privilege removed",
            TimelineKind::EnteredScope => "entered scope",
            TimelineKind::LeftScope => "left scope",
            TimelineKind::SettingsChanged => "settings changed",
        }
    }
}

/// One event in an account's life, as the run that detected it recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEvent {
    pub run_id: String,
    pub detected_at: DateTime<Utc>,
    pub event: TimelineKind,
    /// created/reactivated for joins, deleted/deactivated for leaves, why privilege moved.
    pub reason: Option<String>,
    pub username: String,
    pub changes: Vec<FieldChange>,
    pub groups_added: Vec<GroupRef>,
    pub groups_removed: Vec<GroupRef>,
    /// The groups held after a join or at a baseline, or at departure for a leave.
    pub groups: Vec<GroupRef>,
    pub privilege_escalation: bool,
    /// Through what a privilege change holds, for a privilege event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privilege_source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub source: String,
    pub external_id: String,
    pub usernames: Vec<String>,
    pub events: Vec<TimelineEvent>,
}

/// The uids of the accounts that ever had `user` as username, email or uid.
pub fn find_accounts(
    reader: &Reader<'_>,
    source: &str,
    user: &str,
) -> Result<Vec<String>, LedgerError> {
    let mut found: BTreeSet<String> = reader.accounts_named(source, user)?.into_iter().collect();
    found.extend(reader.accounts_named(source, &user.to_lowercase())?);
    if !reader.account_runs(source, user)?.is_empty() {
        found.insert(user.to_string());
    }
    Ok(found.into_iter().collect())
}

/// What an index row says a run found for an account.
fn kinds(row: &[u8]) -> Vec<String> {
    serde_json::from_slice(row).unwrap_or_default()
}

/// Everything the ledger recorded about one account, oldest first.
pub fn timeline(reader: &Reader<'_>, source: &str, uid: &str) -> Result<Timeline, LedgerError> {
    let mut usernames = BTreeSet::new();
    let mut events = Vec::new();
    let mut ever_seen = false;
    for (run_id, row) in reader.account_runs(source, uid)? {
        let Some(run) = run_evidence(reader, source, &run_id)? else {
            continue;
        };
        // A quarantined run's events are not the account's until the run is approved.
        if run.evidence.run.status == crate::store::RunStatus::Quarantined
            && reader.run_record(&run_id)?.status != crate::store::RunStatus::Complete
        {
            continue;
        }
        let kinds = kinds(&row);
        let detected_at = run.evidence.run.finished_at;
        let event = |kind, reason: Option<&str>, username: &str| TimelineEvent {
            run_id: run_id.clone(),
            detected_at,
            event: kind,
            reason: reason.map(str::to_string),
            username: username.to_string(),
            changes: Vec::new(),
            groups_added: Vec::new(),
            groups_removed: Vec::new(),
            groups: Vec::new(),
            privilege_escalation: false,
            privilege_source: None,
        };
        let diff = run.evidence.diff.as_ref();
        let has = |kind: &str| kinds.iter().any(|found| found == kind);
        if has(PRESENT_AT_BASELINE) || has(CREATED_INACTIVE) {
            let (kind, username) = match has(PRESENT_AT_BASELINE) {
                true => (
                    TimelineKind::Baseline,
                    username_at(reader, source, uid, &run_id)?,
                ),
                false => (
                    TimelineKind::CreatedInactive,
                    username_at(reader, source, uid, &run_id)?,
                ),
            };
            let username = username.unwrap_or_else(|| uid.to_string());
            events.push(TimelineEvent {
                groups: groups_at(reader, source, uid, &run_id)?,
                ..event(kind, None, &username)
            });
        }
        let Some(diff) = diff else { continue };
        let mut own_event = false;
        for joiner in diff
            .joiners
            .iter()
            .filter(|joiner| joiner.external_id == uid)
        {
            own_event = true;
            let kind = if ever_seen {
                TimelineKind::Rejoined
            } else {
                TimelineKind::Joined
            };
            events.push(TimelineEvent {
                groups: joiner.groups.clone(),
                changes: joiner.changes.clone(),
                groups_added: joiner.groups_added.clone(),
                groups_removed: joiner.groups_removed.clone(),
                privilege_escalation: joiner.privilege_escalation,
                ..event(kind, Some(joiner.reason.as_str()), &joiner.username)
            });
        }
        for mover in diff.movers.iter().filter(|mover| mover.external_id == uid) {
            own_event = true;
            events.push(TimelineEvent {
                changes: mover.changes.clone(),
                groups_added: mover.groups_added.clone(),
                groups_removed: mover.groups_removed.clone(),
                privilege_escalation: mover.privilege_escalation,
                ..event(TimelineKind::Moved, None, &mover.username)
            });
        }
        for leaver in diff
            .leavers
            .iter()
            .filter(|leaver| leaver.external_id == uid)
        {
            own_event = true;
            events.push(TimelineEvent {
                groups: leaver.groups_at_departure.clone(),
                changes: leaver.changes.clone(),
                ..event(
                    TimelineKind::Left,
                    Some(leaver.reason.as_str()),
                    &leaver.username,
                )
            });
        }
        for purge in diff.purged.iter().filter(|purge| purge.external_id == uid) {
            own_event = true;
            events.push(event(
                TimelineKind::Purged,
                Some("deleted"),
                &purge.username,
            ));
        }
        let scope = &diff.scope_changes;
        for (changes, kind) in [
            (&scope.accounts_entered, TimelineKind::EnteredScope),
            (&scope.accounts_left, TimelineKind::LeftScope),
        ] {
            for change in changes.iter().filter(|change| change.external_id == uid) {
                events.push(event(kind, Some(change.cause.as_str()), &change.name));
            }
        }
        // A grant or removal that a join, move or departure already tells is not told twice.
        if !own_event {
            for (changes, kind) in [
                (&diff.privilege_granted, TimelineKind::PrivilegeGranted),
                (&diff.privilege_removed, TimelineKind::PrivilegeRemoved),
            ] {
                for change in changes.iter().filter(|change| change.external_id == uid) {
                    events.push(TimelineEvent {
                        privilege_source: Some(change.privilege_source.clone()),
                        groups: change.groups_changed.clone(),
                        ..event(kind, Some(change.reason.as_str()), &change.username)
                    });
                }
            }
        }
        ever_seen = true;
    }
    settings_changes_in_life(reader, source, &mut events)?;
    for event in &events {
        usernames.insert(event.username.clone());
        for change in event
            .changes
            .iter()
            .filter(|change| change.field == "username")
        {
            usernames.extend(change.old.as_str().map(str::to_string));
            usernames.extend(change.new.as_str().map(str::to_string));
        }
    }
    Ok(Timeline {
        source: source.to_string(),
        external_id: uid.to_string(),
        usernames: usernames.into_iter().collect(),
        events,
    })
}

/// Since when an account has held privileged access without a break, up to a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivilegedSince {
    /// The first run of the unbroken stretch, and when it finished.
    pub run_id: String,
    pub at: DateTime<Utc>,
    /// The stretch reaches back to the earliest run the ledger can tell about (a baseline,
    /// or the first run with a recorded list): privileged at least since then.
    pub at_least: bool,
}

/// What a run's entry says about privilege, read once for all the accounts a query asks
/// about: a run's list can take a few dozen entries to read back whole.
#[derive(Debug, Default)]
pub struct PrivilegedLists {
    runs: BTreeMap<String, Option<RunPrivileged>>,
}

#[derive(Debug)]
struct RunPrivileged {
    finished_at: DateTime<Utc>,
    /// Complete (a quarantined run that was never approved saw nothing that counts).
    complete: bool,
    baseline: bool,
    /// `None` when the entry has no list.
    uids: Option<BTreeSet<String>>,
}

impl PrivilegedLists {
    /// The run's privilege facts; `None` when the run has no entry.
    fn of(
        &mut self,
        reader: &Reader<'_>,
        source: &str,
        run_id: &str,
    ) -> Result<Option<&RunPrivileged>, LedgerError> {
        if !self.runs.contains_key(run_id) {
            let read = match run_evidence(reader, source, run_id)? {
                None => None,
                Some(run) => Some(RunPrivileged {
                    finished_at: run.evidence.run.finished_at,
                    complete: reader.run_record(run_id)?.status
                        == crate::store::RunStatus::Complete,
                    baseline: run
                        .evidence
                        .diff
                        .as_ref()
                        .is_some_and(|diff| diff.baseline.is_some()),
                    uids: super::read::privileged_at(reader, source, &run.evidence)?.map(|list| {
                        list.into_iter()
                            .map(|account| account.external_id)
                            .collect()
                    }),
                }),
            };
            self.runs.insert(run_id.to_string(), read);
        }
        Ok(self.runs[run_id].as_ref())
    }
}

/// Since when `uid`, privileged at `run_id`, has been privileged, as the privileged lists
/// the runs recorded say. Only the runs that can change it are read: the account's own
/// events (every grant and removal is one) and the runs that changed settings; the walk
/// stops at the first of them, going back, that did not list the account. `lists` keeps
/// what was read for the next account.
pub fn privileged_since(
    reader: &Reader<'_>,
    source: &str,
    uid: &str,
    run_id: &str,
    lists: &mut PrivilegedLists,
) -> Result<PrivilegedSince, LedgerError> {
    let mut candidates: BTreeSet<String> = reader
        .account_runs(source, uid)?
        .into_iter()
        .map(|(run, _)| run)
        .chain(
            reader
                .settings_changing_runs(source)?
                .into_iter()
                .map(|(run, _)| run),
        )
        .filter(|run| run.as_str() <= run_id)
        .collect();
    candidates.insert(run_id.to_string());
    let mut since: Option<(String, DateTime<Utc>)> = None;
    // Exact when the walk reaches a run that did not list the account, or its first event
    // (its join); a lower bound when it reaches a baseline or a run the ledger cannot tell.
    let mut at_least = false;
    for candidate in candidates.iter().rev() {
        let Some(run) = lists.of(reader, source, candidate)? else {
            at_least = true;
            break;
        };
        if !run.complete {
            continue;
        }
        let Some(uids) = &run.uids else {
            at_least = true;
            break;
        };
        if !uids.contains(uid) {
            break;
        }
        since = Some((candidate.clone(), run.finished_at));
        if run.baseline {
            at_least = true;
            break;
        }
    }
    let (run_id, at) = match since {
        Some(found) => found,
        None => (run_id.to_string(), reader.run_record(run_id)?.finished_at),
    };
    Ok(PrivilegedSince {
        run_id,
        at,
        at_least,
    })
}

/// Adds the settings changes of the runs after the account's first event, up to its
/// departure if it left: the runs whose results about it were judged by other settings.
fn settings_changes_in_life(
    reader: &Reader<'_>,
    source: &str,
    events: &mut Vec<TimelineEvent>,
) -> Result<(), LedgerError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let from = first.run_id.clone();
    let until = matches!(last.event, TimelineKind::Left | TimelineKind::Purged)
        .then(|| last.run_id.clone());
    let username = last.username.clone();
    for (run_id, _) in reader.settings_changing_runs(source)? {
        let in_life = run_id > from && until.as_ref().is_none_or(|until| run_id <= *until);
        let Some(run) = in_life
            .then(|| run_evidence(reader, source, &run_id))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        events.push(TimelineEvent {
            run_id: run_id.clone(),
            detected_at: run.evidence.run.finished_at,
            event: TimelineKind::SettingsChanged,
            reason: None,
            username: username.clone(),
            changes: run
                .evidence
                .settings_changes
                .into_iter()
                .map(|change| FieldChange {
                    field: change.key,
                    old: change.old,
                    new: change.new,
                })
                .collect(),
            groups_added: Vec::new(),
            groups_removed: Vec::new(),
            groups: Vec::new(),
            privilege_escalation: false,
            privilege_source: None,
        });
    }
    // Run ids are in time order. Within a run the settings come first (they can be why the
    // run is a baseline); its other events stay in the order they were told.
    events.sort_by(|a, b| {
        let settings_last = |event: &TimelineEvent| event.event != TimelineKind::SettingsChanged;
        (&a.run_id, settings_last(a)).cmp(&(&b.run_id, settings_last(b)))
    });
    Ok(())
}

/// The account's username as `run_id` saw it, while that run's snapshot is kept.
fn username_at(
    reader: &Reader<'_>,
    source: &str,
    uid: &str,
    run_id: &str,
) -> Result<Option<String>, LedgerError> {
    for version in reader.versions(source, RecordKind::Account, uid)? {
        let version = version?;
        if version.external_id != uid || !version.valid_at(run_id) {
            continue;
        }
        let entry = reader.version(source, RecordKind::Account, uid, &version.valid_from)?;
        let record = entry.record().unwrap_or_default();
        return Ok(record["username"].as_str().map(str::to_string));
    }
    Ok(None)
}

/// The account's direct groups at `run_id`, named as that run saw them, while that run's
/// snapshot is kept (empty once retention removed it).
fn groups_at(
    reader: &Reader<'_>,
    source: &str,
    uid: &str,
    run_id: &str,
) -> Result<Vec<GroupRef>, LedgerError> {
    let mut groups = BTreeMap::new();
    for version in reader.versions(source, RecordKind::Membership, &format!("{uid}:"))? {
        let version = version?;
        let (member, group) = membership_pair(&version.external_id);
        if member == uid && version.valid_at(run_id) {
            groups.insert(group.clone(), group);
        }
    }
    let mut named = Vec::new();
    for (id, _) in groups {
        let mut display_name = id.clone();
        for version in reader.versions(source, RecordKind::Group, &id)? {
            let version = version?;
            if version.external_id == id && version.valid_at(run_id) {
                let entry = reader.version(source, RecordKind::Group, &id, &version.valid_from)?;
                if let Some(name) = entry.record().unwrap_or_default()["display_name"].as_str() {
                    display_name = name.to_string();
                }
            }
        }
        named.push(GroupRef {
            external_id: id,
            display_name,
        });
    }
    Ok(named)
}
