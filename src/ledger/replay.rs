//! Evidence from the stored history: the diff between any two complete runs (replayed from
//! their versions through the same [`Planner`] a sync uses, so a rebuilt envelope file is the
//! one the run wrote), each leaver's last active run, and one account's timeline.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::config::SourceConfig;
use crate::diff::{
    diff, AccountHead, AccountRules, Census, DirectoryDiff, GroupRef, LastActive, RunRef,
};
use crate::output::envelope::{Action, EnvelopeContext, EnvelopeFile, EnvelopeWriter};
use crate::run::normalize::DirectoryGroup;
use crate::run::plan::{membership_pair, Loaded, PlanError, Planner, Sinks};
use crate::run::record::{ChangeRule, Hash, RecordKind};
use crate::store::{Reader, RecordVersion, RunRecord, Store, StoreError};

use super::entry::{RunSettings, SettingsBetween};
use super::read::run_evidence;

impl From<PlanError> for StoreError {
    fn from(error: PlanError) -> StoreError {
        match error {
            PlanError::Store(error) => error,
            other => StoreError::Aborted(other.to_string()),
        }
    }
}

/// Two stored runs compared again.
pub struct Replayed {
    pub diff: DirectoryDiff,
    /// The envelope file of the comparison, when a writer was given.
    pub envelopes: Option<EnvelopeFile>,
    /// Whose settings the comparison applied: the ones the newer run recorded in its ledger
    /// entry, or, for a run without one, the ones configured now.
    pub settings: ReplaySettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySettings {
    /// The settings the run (by id) recorded.
    Recorded(String),
    ConfiguredNow,
}

/// A stored run's diff against `from` (`None`: compared with nothing, as a baseline), and,
/// when `envelopes` is given, the envelope file of that comparison.
///
/// The comparison applies the settings `to` recorded, and steps from the ones `from`
/// recorded as a sync does (see [`SettingsBetween`]), so a result does not change because a
/// setting changed later: a rebuilt envelope file is the one the run wrote. Only a run
/// without a ledger entry (from before the ledger) is judged by today's configuration.
pub fn compare_runs(
    store: &Store,
    source: &SourceConfig,
    from: Option<&RunRecord>,
    to: &RunRecord,
    envelopes: Option<EnvelopeWriter>,
) -> Result<Replayed, StoreError> {
    let runs = store.complete_runs(&source.name)?;
    let reader = store.reader()?;
    for run in from.into_iter().chain(std::iter::once(to)) {
        reader.require_snapshot(run)?;
    }
    let recorded =
        |run: &RunRecord| -> Result<Option<RunSettings>, StoreError> {
            Ok(run_evidence(&reader, &source.name, &run.run_id)?
                .map(|sealed| sealed.evidence.settings))
        };
    let to_settings = recorded(to)?;
    let from_settings = from.map(recorded).transpose()?.flatten();
    let applied = to_settings
        .as_ref()
        .map(|settings| settings.applied_to(source));
    let source = applied.as_ref().unwrap_or(source);
    let between = SettingsBetween::of(from_settings.as_ref(), source);
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
        between.step(),
        AccountRules::of(source),
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
    Ok(Replayed {
        diff: diff(&planned.input),
        envelopes: planned.envelopes,
        settings: match to_settings {
            Some(_) => ReplaySettings::Recorded(to.run_id.clone()),
            None => ReplaySettings::ConfiguredNow,
        },
    })
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
            .map(|v| Loaded::stored(reader, source, RecordKind::Account, v, false))
            .transpose()?;
        let new = at_run(&versions, Some(to))
            .map(|v| Loaded::stored(reader, source, RecordKind::Account, v, false))
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
    let in_scope = |version: Option<&RecordVersion>| version.is_some_and(|v| v.flags.in_scope());
    let scope_moved = (old.is_some() && new.is_some() && in_scope(old) != in_scope(new))
        || planner.uncollected(kind, old.is_some(), new.is_some());
    if let (RecordKind::Membership, Some(action), false, false) = (
        kind,
        action,
        scope_moved,
        planner.needs_membership_content(),
    ) {
        if in_scope(old) || in_scope(new) {
            planner.membership_changed(id, action);
        }
        return Ok(());
    }
    if action.is_none() && !scope_moved {
        if kind == RecordKind::Group {
            let old = old
                .map(|v| Loaded::stored(reader, source, kind, v, false))
                .transpose()?;
            let new = new
                .map(|v| Loaded::stored(reader, source, kind, v, false))
                .transpose()?;
            planner.catalog(old.as_ref(), new.as_ref())?;
        }
        return Ok(());
    }
    let old_loaded = old
        .map(|v| Loaded::stored(reader, source, kind, v, new.is_none()))
        .transpose()?;
    let new_loaded = new
        .map(|v| Loaded::stored(reader, source, kind, v, false))
        .transpose()?;
    // A record that comes back into its consumers' view chains to the deletion they saw
    // last: the hash the run that deleted it, or saw it leave the scope, logged; or for a
    // deletion from before the log, the hash of the version it closed (a scope exit is
    // always logged).
    let tombstone = match (old, from) {
        (old, Some(from)) if !in_scope(old) => {
            match reader.deletion_between(source, kind, id, chain_start, from)? {
                Some(logged) => Some(logged),
                None if old.is_none() => deletion_before(versions, from, chain_start)
                    .map(|version| {
                        Ok::<Hash, StoreError>(
                            planner
                                .rule()
                                .deleted_hash(&record_of(reader, source, kind, version)?),
                        )
                    })
                    .transpose()?,
                None => None,
            }
        }
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
                in_scope: head.flags.in_scope(),
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
        let history = AccountHistory::load(reader, source, uid, &groups)?;
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
}

/// Every stored version of one account and its memberships, with the source's groups.
struct AccountHistory<'g> {
    /// The account's versions, oldest first.
    versions: Vec<RecordVersion>,
    memberships: Vec<RecordVersion>,
    groups: &'g GroupHistory,
}

impl<'g> AccountHistory<'g> {
    fn load(
        reader: &Reader<'_>,
        source: &str,
        uid: &str,
        groups: &'g GroupHistory,
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
        let memberships = parse_all(RecordKind::Membership, &format!("{uid}:"), None)?;
        Ok(AccountHistory {
            versions,
            memberships,
            groups,
        })
    }

    fn version_at(&self, run_id: &str) -> Option<usize> {
        self.versions
            .iter()
            .position(|version| version.valid_at(run_id))
    }

    fn groups_at(&self, run_id: &str) -> BTreeSet<String> {
        self.memberships
            .iter()
            .filter(|version| version.valid_at(run_id))
            .map(|version| membership_pair(&version.external_id).1)
            .collect()
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
}
