//! Evidence from the stored history: the diff between any two complete runs (replayed from
//! their versions through the same [`Planner`] a sync uses, so a rebuilt envelope file is the
//! one the run wrote), each leaver's last active run, and one account's timeline.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::SourceConfig;
use crate::diff::{
    diff, AccountHead, AccountRules, AccountSides, Census, DiffInput, DirectoryDiff, FieldChange,
    GroupRef, LastActive, Population, RunRef,
};
use crate::envelope::{Action, EnvelopeContext, EnvelopeFile, EnvelopeWriter};
use crate::normalize::{DirectoryAccount, DirectoryGroup};
use crate::plan::{membership_pair, Loaded, PlanError, Planner, Sinks};
use crate::record::{with_volatile, ChangeRule, Hash, RecordKind};
use crate::store::{Reader, RecordVersion, RunRecord, Store, StoreError};

impl From<PlanError> for StoreError {
    fn from(error: PlanError) -> StoreError {
        match error {
            PlanError::Store(error) => error,
            other => StoreError::Aborted(other.to_string()),
        }
    }
}

/// A stored run's diff against `from` (`None`: compared with nothing, as a baseline), and,
/// when `envelopes` is given, the envelope file of that comparison.
pub fn compare_runs(
    store: &Store,
    source: &SourceConfig,
    from: Option<&RunRecord>,
    to: &RunRecord,
    envelopes: Option<EnvelopeWriter>,
) -> Result<(DirectoryDiff, Option<EnvelopeFile>), StoreError> {
    let runs = store.complete_runs(&source.name)?;
    let reader = store.reader()?;
    let context = EnvelopeContext {
        source: &source.name,
        run_id: &to.run_id,
        observed_at: to.finished_at,
        primary_directory: source.primary_directory,
    };
    let run_ref = |run: &RunRecord| RunRef {
        run_id: run.run_id.clone(),
        started_at: run.started_at,
        finished_at: run.finished_at,
    };
    let mut planner = Planner::new(
        ChangeRule::new(&source.ignore_fields),
        source.account_rules(),
        context,
        from.map(run_ref),
        run_ref(to),
        to.baseline_reason.clone(),
        Sinks {
            ops: None,
            envelopes,
        },
    );
    let chain_start = chain_start(&runs, to);
    replay(
        &reader,
        &source.name,
        from.map(|run| run.run_id.as_str()),
        &to.run_id,
        chain_start.as_deref(),
        &mut planner,
    )?;
    let mut planned = planner.finish()?;
    // Next to each other, `from` is the last run before `to`: a leaver active there was last
    // seen active there, which the diff knows without the history.
    let before: Vec<RunRecord> = runs
        .into_iter()
        .filter(|run| run.run_id < to.run_id)
        .collect();
    let adjacent = before.last().map(|run| &run.run_id) == from.map(|run| &run.run_id);
    let uids = planned.input.history_needed(adjacent);
    if !uids.is_empty() {
        planned.input.last_active = last_active(&reader, &source.name, &uids, &before)?;
    }
    Ok((diff(&planned.input), planned.envelopes))
}

/// The run that started `run`'s envelope chain: the nearest baseline at or before it.
fn chain_start(runs: &[RunRecord], run: &RunRecord) -> Option<String> {
    let mut current = run;
    for _ in 0..=runs.len() {
        match &current.previous_run {
            None => return Some(current.run_id.clone()),
            Some(previous) => current = runs.iter().find(|r| &r.run_id == previous)?,
        }
    }
    None
}

/// Feeds the planner every record of the two runs, from the stored versions.
fn replay(
    reader: &Reader<'_>,
    source: &str,
    from: Option<&str>,
    to: &str,
    chain_start: Option<&str>,
    planner: &mut Planner<'_>,
) -> Result<(), StoreError> {
    for kind in RecordKind::ALL {
        let mut versions = reader.versions(source, kind, "")?.peekable();
        while let Some(first) = versions.next() {
            let mut group = vec![first?];
            while let Some(Ok(next)) = versions.peek() {
                if next.external_id != group[0].external_id {
                    break;
                }
                group.push(versions.next().expect("peeked")?);
            }
            replay_record(reader, source, kind, &group, from, to, chain_start, planner)?;
        }
    }
    for uid in planner.needs_records() {
        let versions: Vec<RecordVersion> = reader
            .versions(source, RecordKind::Account, &uid)?
            .filter(|version| version.as_ref().map_or(true, |v| v.external_id == uid))
            .collect::<Result<_, _>>()?;
        let old = at_run(&versions, from)
            .map(|v| loaded(reader, source, RecordKind::Account, v, false))
            .transpose()?;
        let new = at_run(&versions, Some(to))
            .map(|v| loaded(reader, source, RecordKind::Account, v, false))
            .transpose()?;
        planner.fill(&uid, old.as_ref(), new.as_ref())?;
    }
    Ok(())
}

fn at_run<'v>(versions: &'v [RecordVersion], run: Option<&str>) -> Option<&'v RecordVersion> {
    let run = run?;
    versions.iter().find(|version| version.valid_at(run))
}

#[allow(clippy::too_many_arguments)]
fn replay_record(
    reader: &Reader<'_>,
    source: &str,
    kind: RecordKind,
    versions: &[RecordVersion],
    from: Option<&str>,
    to: &str,
    chain_start: Option<&str>,
    planner: &mut Planner<'_>,
) -> Result<(), StoreError> {
    let id = versions[0].external_id.as_str();
    let old = at_run(versions, from);
    let new = at_run(versions, Some(to));
    if old.is_none() && new.is_none() {
        return Ok(());
    }
    match kind {
        RecordKind::Account => planner.count(old.map(|v| v.flags), new.map(|v| v.flags)),
        RecordKind::Membership => planner.membership(id, old.is_some(), new.is_some()),
        RecordKind::Group => {}
    }
    let action = Action::classify(old.map(|v| &v.hash), new.map(|v| &v.hash));
    if let (RecordKind::Membership, Some(action), false) =
        (kind, action, planner.needs_membership_content())
    {
        planner.membership_changed(id, action);
        return Ok(());
    }
    if action.is_none() {
        if kind == RecordKind::Group {
            let old = old
                .map(|v| loaded(reader, source, kind, v, false))
                .transpose()?;
            let new = new
                .map(|v| loaded(reader, source, kind, v, false))
                .transpose()?;
            planner.catalog(old.as_ref(), new.as_ref())?;
        }
        return Ok(());
    }
    let old_loaded = old
        .map(|v| loaded(reader, source, kind, v, new.is_none()))
        .transpose()?;
    let new_loaded = new
        .map(|v| loaded(reader, source, kind, v, false))
        .transpose()?;
    let tombstone = match (old, from) {
        (None, Some(from)) => deletion_before(versions, from, chain_start)
            .map(|version| {
                Ok::<Hash, StoreError>(
                    planner
                        .rule()
                        .deleted_hash(&record_of(reader, source, kind, version)?),
                )
            })
            .transpose()?,
        _ => None,
    };
    planner.changed(kind, id, old_loaded, new_loaded, tombstone)?;
    Ok(())
}

/// The record's last deletion at or before `run` within its chain: what the live store's
/// tombstone held when `run` was the latest.
fn deletion_before<'v>(
    versions: &'v [RecordVersion],
    run: &str,
    chain_start: Option<&str>,
) -> Option<&'v RecordVersion> {
    versions
        .iter()
        .filter(|version| {
            version.valid_to.as_deref().is_some_and(|valid_to| {
                valid_to <= run && chain_start.is_none_or(|start| valid_to > start)
            })
        })
        .max_by(|a, b| a.valid_to.cmp(&b.valid_to))
}

fn loaded(
    reader: &Reader<'_>,
    source: &str,
    kind: RecordKind,
    version: &RecordVersion,
    with_volatile: bool,
) -> Result<Loaded, StoreError> {
    let entry = reader.version(source, kind, &version.external_id, &version.valid_from)?;
    let volatile = if with_volatile && !kind.volatile_fields().is_empty() {
        reader.volatile(source, kind, &version.external_id)?
    } else {
        serde_json::Map::new()
    };
    Ok(Loaded {
        hash: version.hash,
        flags: version.flags,
        entry,
        volatile,
        valid_from: Some(version.valid_from.clone()),
    })
}

fn record_of(
    reader: &Reader<'_>,
    source: &str,
    kind: RecordKind,
    version: &RecordVersion,
) -> Result<Value, StoreError> {
    let entry = reader.version(source, kind, &version.external_id, &version.valid_from)?;
    entry.record().map_err(|error| {
        reader.corrupt(format_args!(
            "record version {}: {error}",
            version.external_id
        ))
    })
}

/// Counts `run`'s accounts and finds its privileged ones under `rules`, from its stored
/// records. Only the groups, the memberships of privileged groups and the privileged
/// accounts are held: the run's accounts and memberships pass by their ids and flags.
pub fn census(
    reader: &Reader<'_>,
    rules: &AccountRules,
    run: &RunRecord,
) -> Result<Census, StoreError> {
    let mut catalog = BTreeMap::new();
    for record in reader.records_at(run, RecordKind::Group)? {
        let record = record?;
        let group: DirectoryGroup = serde_json::from_value(record.record).map_err(|error| {
            reader.corrupt(format_args!("group {}: {error}", record.external_id))
        })?;
        catalog.insert(group.external_id.clone(), group);
    }
    let memberships = reader
        .heads_at(run, RecordKind::Membership)?
        .map(|head| head.map(|head| membership_pair(&head.external_id)));
    let accounts = reader.heads_at(run, RecordKind::Account)?.map(|head| {
        head.map(|head| {
            let account = AccountHead {
                external_id: head.external_id,
                active: head.flags.active(),
                may_hold_privilege_alone: head.flags.superuser() || head.flags.roles(),
            };
            (account, head.valid_from)
        })
    });
    crate::diff::census(
        rules,
        &catalog,
        memberships,
        accounts,
        |head, valid_from| {
            let entry = reader.version(
                &run.source,
                RecordKind::Account,
                &head.external_id,
                &valid_from,
            )?;
            entry
                .record()
                .and_then(serde_json::from_value)
                .map_err(|error| {
                    reader.corrupt(format_args!("account {}: {error}", head.external_id))
                })
        },
    )
}

/// For each account: the newest of `runs` (oldest first) that saw it active, with its groups
/// then.
pub fn last_active(
    reader: &Reader<'_>,
    source: &str,
    uids: &[String],
    runs: &[RunRecord],
) -> Result<BTreeMap<String, LastActive>, StoreError> {
    let mut found = BTreeMap::new();
    let groups = GroupHistory::load(reader, source)?;
    for uid in uids {
        let history = AccountHistory::load(reader, source, uid, &groups, false)?;
        if let Some(last) = runs.iter().rev().find_map(|run| history.active_at(run)) {
            found.insert(uid.clone(), last);
        }
    }
    Ok(found)
}

/// Every stored version of every group of a source, read once however many accounts are
/// looked up: privilege is inherited from ancestors, so an account needs them all.
struct GroupHistory {
    /// By external id, each group's versions in order.
    versions: BTreeMap<String, Vec<(RecordVersion, DirectoryGroup)>>,
}

impl GroupHistory {
    fn load(reader: &Reader<'_>, source: &str) -> Result<GroupHistory, StoreError> {
        let mut versions: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for version in reader.versions(source, RecordKind::Group, "")? {
            let version = version?;
            let record =
                serde_json::from_value(record_of(reader, source, RecordKind::Group, &version)?)
                    .map_err(|error| {
                        reader.corrupt(format_args!("group {}: {error}", version.external_id))
                    })?;
            versions
                .entry(version.external_id.clone())
                .or_default()
                .push((version, record));
        }
        Ok(GroupHistory { versions })
    }

    fn at(&self, id: &str, run_id: &str) -> Option<&DirectoryGroup> {
        self.versions
            .get(id)?
            .iter()
            .find(|(version, _)| version.valid_at(run_id))
            .map(|(_, group)| group)
    }

    fn catalog_at(&self, run_id: &str) -> BTreeMap<String, DirectoryGroup> {
        self.versions
            .keys()
            .filter_map(|id| self.at(id, run_id))
            .map(|group| (group.external_id.clone(), group.clone()))
            .collect()
    }
}

/// Every stored version of one account and its memberships, with the source's groups.
struct AccountHistory<'g> {
    uid: String,
    /// The account's versions, oldest first.
    versions: Vec<RecordVersion>,
    /// Their records, index by index, when loaded: whether a run saw the account active
    /// needs only the versions' flags.
    records: Vec<DirectoryAccount>,
    memberships: Vec<RecordVersion>,
    groups: &'g GroupHistory,
}

impl<'g> AccountHistory<'g> {
    fn load(
        reader: &Reader<'_>,
        source: &str,
        uid: &str,
        groups: &'g GroupHistory,
        with_records: bool,
    ) -> Result<AccountHistory<'g>, StoreError> {
        let parse_all = |kind: RecordKind, prefix: &str, exact: Option<&str>| {
            reader
                .versions(source, kind, prefix)?
                .filter(|version| match (version, exact) {
                    (Ok(version), Some(id)) => version.external_id == id,
                    _ => true,
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let versions = parse_all(RecordKind::Account, uid, Some(uid))?;
        let mut records = Vec::new();
        if with_records {
            let volatile = reader.volatile(source, RecordKind::Account, uid)?;
            for version in &versions {
                let record = record_of(reader, source, RecordKind::Account, version)?;
                records.push(
                    serde_json::from_value(with_volatile(record, &volatile))
                        .map_err(|error| StoreError::Aborted(format!("account {uid}: {error}")))?,
                );
            }
        }
        let memberships = parse_all(RecordKind::Membership, &format!("{uid}:"), None)?;
        Ok(AccountHistory {
            uid: uid.to_string(),
            versions,
            records,
            memberships,
            groups,
        })
    }

    fn version_at(&self, run_id: &str) -> Option<usize> {
        self.versions
            .iter()
            .position(|version| version.valid_at(run_id))
    }

    /// The account as `run_id` saw it (the history must be loaded with its records).
    fn account_at(&self, run_id: &str) -> Option<&DirectoryAccount> {
        self.records.get(self.version_at(run_id)?)
    }

    fn groups_at(&self, run_id: &str) -> BTreeSet<String> {
        self.memberships
            .iter()
            .filter(|version| version.valid_at(run_id))
            .map(|version| membership_pair(&version.external_id).1)
            .collect()
    }

    fn catalog_at(&self, run_id: &str) -> BTreeMap<String, DirectoryGroup> {
        self.groups.catalog_at(run_id)
    }

    /// The account's direct groups at `run_id`, named as that run saw them.
    fn group_refs_at(&self, run_id: &str) -> Vec<GroupRef> {
        self.groups_at(run_id)
            .into_iter()
            .map(|id| GroupRef {
                display_name: self
                    .groups
                    .at(&id, run_id)
                    .map_or_else(|| id.clone(), |group| group.display_name.clone()),
                external_id: id,
            })
            .collect()
    }

    /// The account's groups at `run`, if that run saw it active.
    fn active_at(&self, run: &RunRecord) -> Option<LastActive> {
        let version = &self.versions[self.version_at(&run.run_id)?];
        version.flags.active().then(|| LastActive {
            started_at: run.started_at,
            finished_at: run.finished_at,
            groups: self.group_refs_at(&run.run_id),
        })
    }

    /// The diff of this one account between two runs.
    fn diff_input(
        &self,
        source: &SourceConfig,
        rule: &ChangeRule<'_>,
        from: &RunRecord,
        to: &RunRecord,
        last_active: Option<LastActive>,
    ) -> DiffInput {
        let at = |run: &RunRecord| {
            (
                self.account_at(&run.run_id).cloned(),
                self.groups_at(&run.run_id),
                self.catalog_at(&run.run_id),
            )
        };
        let (old, old_groups, groups_before) = at(from);
        let (new, new_groups, groups_after) = at(to);
        let value = |account: &Option<DirectoryAccount>| {
            account.as_ref().map(|account| {
                crate::record::split_volatile(
                    RecordKind::Account,
                    serde_json::to_value(account).unwrap_or_default(),
                )
                .0
            })
        };
        let changes = match (value(&old), value(&new)) {
            (Some(old), Some(new)) => rule.field_changes(&old, &new),
            _ => Vec::new(),
        };
        let pairs = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
            a.difference(b)
                .map(|group| (self.uid.clone(), group.clone()))
                .collect::<Vec<_>>()
        };
        DiffInput {
            source: source.name.clone(),
            from: Some(RunRef {
                run_id: from.run_id.clone(),
                started_at: from.started_at,
                finished_at: from.finished_at,
            }),
            to: RunRef {
                run_id: to.run_id.clone(),
                started_at: to.started_at,
                finished_at: to.finished_at,
            },
            baseline: None,
            memberships_added: pairs(&new_groups, &old_groups),
            memberships_removed: pairs(&old_groups, &new_groups),
            accounts: BTreeMap::from([(
                self.uid.clone(),
                AccountSides {
                    old,
                    new,
                    changes,
                    old_groups,
                    new_groups,
                },
            )]),
            groups_before,
            groups_after,
            group_changes: BTreeMap::new(),
            last_active: last_active
                .map(|last| BTreeMap::from([(self.uid.clone(), last)]))
                .unwrap_or_default(),
            population: Population::default(),
            rules: source.account_rules(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimelineKind {
    /// Present in a run compared with nothing (the source's first run, or a new baseline).
    Baseline,
    Joined,
    Rejoined,
    Moved,
    Left,
    Purged,
}

impl TimelineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineKind::Baseline => "present at baseline",
            TimelineKind::Joined => "joined",
            TimelineKind::Rejoined => "rejoined",
            TimelineKind::Moved => "moved",
            TimelineKind::Left => "left",
            TimelineKind::Purged => "purged",
        }
    }
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
    /// The groups held after a join or at a baseline, or at departure for a leave.
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
    let reader = store.reader()?;
    let mut found = BTreeSet::new();
    for version in reader.versions(source, RecordKind::Account, "")? {
        let version = version?;
        if version.external_id == user {
            found.insert(version.external_id);
            continue;
        }
        let Ok(record) = record_of(&reader, source, RecordKind::Account, &version) else {
            continue;
        };
        if record["username"].as_str() == Some(user)
            || record["canonical_email"].as_str() == Some(needle.as_str())
        {
            found.insert(version.external_id);
        }
    }
    Ok(found.into_iter().collect())
}

/// Everything that happened to one account across the stored complete runs, judged by the
/// source's change rule (its `ignore_fields` included).
pub fn timeline(store: &Store, source: &SourceConfig, uid: &str) -> Result<Timeline, StoreError> {
    let reader = store.reader()?;
    let groups = GroupHistory::load(&reader, &source.name)?;
    let history = AccountHistory::load(&reader, &source.name, uid, &groups, true)?;
    let rule = ChangeRule::new(&source.ignore_fields);
    let runs = store.complete_runs(&source.name)?;
    let mut usernames = BTreeSet::new();
    let mut events = Vec::new();
    let mut ever_seen = false;
    let mut last_active: Option<LastActive> = None;
    for (index, run) in runs.iter().enumerate() {
        let account = history.account_at(&run.run_id);
        if let Some(account) = account {
            usernames.insert(account.username.clone());
        }
        let from = run
            .previous_run
            .as_ref()
            .and_then(|id| runs[..index].iter().find(|r| &r.run_id == id));
        let event = |kind, reason: Option<&str>, username: &str| TimelineEvent {
            run_id: run.run_id.clone(),
            detected_at: run.finished_at,
            event: kind,
            reason: reason.map(str::to_string),
            username: username.to_string(),
            changes: Vec::new(),
            groups_added: Vec::new(),
            groups_removed: Vec::new(),
            groups: Vec::new(),
            privilege_escalation: false,
        };
        match from {
            None => {
                if let Some(account) = account {
                    ever_seen = true;
                    events.push(TimelineEvent {
                        groups: history.group_refs_at(&run.run_id),
                        ..event(TimelineKind::Baseline, None, &account.username)
                    });
                }
            }
            Some(from) => {
                let result =
                    diff(&history.diff_input(source, &rule, from, run, last_active.clone()));
                for joiner in &result.joiners {
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
                for purge in &result.purged {
                    events.push(event(
                        TimelineKind::Purged,
                        Some("deleted"),
                        &purge.username,
                    ));
                }
                if account.is_some() {
                    ever_seen = true;
                }
            }
        }
        if let Some(active) = history.active_at(run) {
            last_active = Some(active);
        }
    }
    Ok(Timeline {
        source: source.name.clone(),
        external_id: uid.to_string(),
        usernames: usernames.into_iter().collect(),
        events,
    })
}
