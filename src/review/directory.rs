//! One stored run's directory as a reviewer reads it: its accounts, its whole group catalog
//! (privilege and nesting are judged on the whole directory, as the reports judge them),
//! each account's direct groups, and what the run itself recorded in the ledger (its
//! settings and snapshot digest), so that a review of a past run uses that run's settings,
//! not today's.
//!
//! Two values are not part of a stored version and need care for a past run:
//! - **last login** is volatile and kept as its latest value only. For the latest run that
//!   is the run's own; for an older run it is the login as of that run only when it is no
//!   later than the run's end (logins only move forward), and otherwise unknown. A past
//!   review never shows a later login.
//! - **first seen in a group** is when the run that first saw the membership (in its
//!   unbroken stretch of versions up to the run) finished.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::ReadError;
use crate::config::SourceConfig;
use crate::diff::AccountRules;
use crate::ledger::entry::RunSettings;
use crate::ledger::read::run_evidence;
use crate::run::normalize::{DirectoryAccount, DirectoryGroup};
use crate::run::plan::membership_pair;
use crate::run::record::RecordKind;
use crate::store::{Reader, RunRecord, Store, StoreError};

/// A group name or id that names no single group of a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupNotFound {
    #[error("no group {name:?} in run {run_id}: give a group's name or id (`aksync show groups --run {run_id}`)")]
    Unknown { name: String, run_id: String },
    #[error("several groups are named {name:?}: give one's id ({ids})")]
    Ambiguous { name: String, ids: String },
}

/// An account as the run saw it, without its attributes (`metadata`), which no review or
/// query of access reads and which can be most of a record: a large directory is held in
/// memory whole. [`RunDirectory::full_account`] reads the whole record.
#[derive(Debug, Clone)]
pub struct AccountAt {
    pub account: DirectoryAccount,
    /// The run whose stored version this is.
    pub valid_from: String,
    pub in_scope: bool,
    /// The last login as of the run, when known (see the module's doc).
    pub last_login: LastLogin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastLogin {
    At(String),
    Never,
    /// Only a later login is known: the one as of this run is not.
    AfterRun(String),
}

impl LastLogin {
    pub fn text(&self) -> String {
        match self {
            LastLogin::At(at) => at.clone(),
            LastLogin::Never => "never".to_string(),
            LastLogin::AfterRun(_) => "unknown (only a later login is kept)".to_string(),
        }
    }
}

/// A direct membership as the run saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipAt {
    pub in_scope: bool,
    /// The run whose stored version the run saw (see [`RunDirectory::first_seen`]).
    pub valid_from: String,
}

/// One run's directory.
#[derive(Debug, Clone)]
pub struct RunDirectory {
    pub run: RunRecord,
    /// Whether it is the source's latest complete run.
    pub is_latest: bool,
    /// The source's settings as the run recorded them (today's for a run from before the
    /// ledger: `settings_recorded` says which).
    pub source: SourceConfig,
    pub settings_recorded: bool,
    pub snapshot_digest: Option<String>,
    pub ledger_seq: Option<u64>,
    pub groups: BTreeMap<String, DirectoryGroup>,
    pub groups_in_scope: BTreeSet<String>,
    /// In uid order.
    pub accounts: Vec<AccountAt>,
    /// Each account's direct groups, by uid.
    pub direct: BTreeMap<String, BTreeMap<String, MembershipAt>>,
}

impl RunDirectory {
    /// Reads `run` of `source` (which must still have its snapshot).
    pub fn load(
        store: &Store,
        source: &SourceConfig,
        run: &RunRecord,
    ) -> Result<RunDirectory, ReadError> {
        let reader = store.reader()?;
        reader.require_snapshot(run)?;
        let is_latest = store
            .latest_complete(&run.source)?
            .is_some_and(|latest| latest.run_id == run.run_id);
        let sealed = run_evidence(&reader, &run.source, &run.run_id)?;
        let (settings, snapshot_digest, ledger_seq) = match &sealed {
            Some(sealed) => (
                Some(sealed.evidence.settings.clone()),
                sealed.evidence.snapshot_digest.clone(),
                Some(sealed.seq),
            ),
            None => (None, None, None),
        };
        let mut groups = BTreeMap::new();
        let mut groups_in_scope = BTreeSet::new();
        for stored in reader.records_at(run, RecordKind::Group)? {
            let stored = stored?;
            let group: DirectoryGroup = serde_json::from_value(stored.record)
                .map_err(|error| ReadError::unreadable(run, "group", &stored.external_id, error))?;
            if stored.flags.in_scope() {
                groups_in_scope.insert(stored.external_id.clone());
            }
            groups.insert(stored.external_id, group);
        }
        let mut direct: BTreeMap<String, BTreeMap<String, MembershipAt>> = BTreeMap::new();
        for head in reader.heads_at(run, RecordKind::Membership)? {
            let head = head?;
            let (uid, group) = membership_pair(&head.external_id);
            direct.entry(uid).or_default().insert(
                group,
                MembershipAt {
                    in_scope: head.flags.in_scope(),
                    valid_from: head.valid_from,
                },
            );
        }
        let mut accounts = Vec::new();
        for stored in reader.records_at(run, RecordKind::Account)? {
            let stored = stored?;
            let mut account: DirectoryAccount =
                serde_json::from_value(stored.record).map_err(|error| {
                    ReadError::unreadable(run, "account", &stored.external_id, error)
                })?;
            account.metadata = serde_json::Map::new();
            let volatile =
                reader.volatile(&run.source, RecordKind::Account, &stored.external_id)?;
            let login = volatile
                .get("last_login_at")
                .and_then(|value| value.as_str())
                .map(str::to_string);
            accounts.push(AccountAt {
                valid_from: stored.valid_from,
                last_login: last_login_as_of(login, is_latest, run.finished_at),
                in_scope: stored.flags.in_scope(),
                account,
            });
        }
        Ok(RunDirectory {
            run: run.clone(),
            is_latest,
            settings_recorded: settings.is_some(),
            source: settings
                .as_ref()
                .map_or_else(|| source.clone(), |settings| settings.applied_to(source)),
            snapshot_digest,
            ledger_seq,
            groups,
            groups_in_scope,
            accounts,
            direct,
        })
    }

    /// The id of the group `name_or_id` names: its id, or its name when one group has it.
    pub fn find_group(&self, name_or_id: &str) -> Result<String, GroupNotFound> {
        if self.groups.contains_key(name_or_id) {
            return Ok(name_or_id.to_string());
        }
        let named: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, group)| group.display_name == name_or_id)
            .map(|(id, _)| id.clone())
            .collect();
        match &named[..] {
            [id] => Ok(id.clone()),
            [] => Err(GroupNotFound::Unknown {
                name: name_or_id.to_string(),
                run_id: self.run.run_id.clone(),
            }),
            _ => Err(GroupNotFound::Ambiguous {
                name: name_or_id.to_string(),
                ids: named.join(", "),
            }),
        }
    }

    /// An account's whole stored record as the run saw it, attributes included.
    pub fn full_account(
        &self,
        store: &Store,
        account: &AccountAt,
    ) -> Result<serde_json::Value, ReadError> {
        let uid = &account.account.external_id;
        let entry = store.reader()?.version(
            &self.run.source,
            RecordKind::Account,
            uid,
            &account.valid_from,
        )?;
        entry
            .record()
            .map_err(|error| ReadError::unreadable(&self.run, "account", uid, error))
    }

    /// The rules that decide privilege, as the run recorded them.
    pub fn rules(&self) -> AccountRules {
        AccountRules::of(&self.source)
    }

    /// The settings the run recorded, as the ledger holds them (today's, before the ledger).
    pub fn settings(&self) -> RunSettings {
        RunSettings::of(&self.source)
    }

    /// An account's direct groups (in scope or all).
    pub fn direct_groups(&self, uid: &str, all: bool) -> BTreeSet<String> {
        self.direct
            .get(uid)
            .into_iter()
            .flatten()
            .filter(|(_, membership)| all || membership.in_scope)
            .map(|(group, _)| group.clone())
            .collect()
    }

    /// When the account was first seen in a direct group, in the unbroken stretch of stored
    /// versions that reaches this run: the end of the run that stored the stretch's first
    /// version (its start, from the run id, when retention removed that run's record).
    pub fn first_seen(
        &self,
        reader: &Reader<'_>,
        uid: &str,
        group: &str,
    ) -> Result<Option<DateTime<Utc>>, ReadError> {
        let Some(membership) = self.direct.get(uid).and_then(|groups| groups.get(group)) else {
            return Ok(None);
        };
        let external_id = format!("{uid}:{group}");
        let mut versions: Vec<_> = reader
            .versions(&self.run.source, RecordKind::Membership, &external_id)?
            .filter(|version| {
                version
                    .as_ref()
                    .map_or(true, |version| version.external_id == external_id)
            })
            .collect::<Result<_, _>>()?;
        versions.retain(|version| version.valid_from <= membership.valid_from);
        let mut first = membership.valid_from.clone();
        // Newest first: step back while the version before ends where this one starts.
        for version in versions.iter().rev() {
            if version.valid_to.as_deref() == Some(first.as_str()) {
                first = version.valid_from.clone();
            }
        }
        Ok(Some(run_time(reader, &first)?))
    }
}

/// The last login as of a run that ended at `finished_at`, from the latest one kept.
fn last_login_as_of(
    latest_kept: Option<String>,
    is_latest: bool,
    finished_at: DateTime<Utc>,
) -> LastLogin {
    match latest_kept {
        None => LastLogin::Never,
        Some(at) if is_latest => LastLogin::At(at),
        Some(at) => {
            let after = DateTime::parse_from_rfc3339(&at)
                .map_or(true, |login| login.with_timezone(&Utc) > finished_at);
            if after {
                LastLogin::AfterRun(at)
            } else {
                LastLogin::At(at)
            }
        }
    }
}

/// When a run finished, or, if its record is gone, when it started (from its ULID).
pub fn run_time(reader: &Reader<'_>, run_id: &str) -> Result<DateTime<Utc>, StoreError> {
    match reader.run_record(run_id) {
        Ok(run) => Ok(run.finished_at),
        Err(StoreError::UnknownRun(_)) => Ok(ulid::Ulid::from_string(run_id)
            .map(|id| DateTime::<Utc>::from(id.datetime()))
            .unwrap_or_default()),
        Err(error) => Err(error),
    }
}

/// The last complete run of a source that finished at or before `at`. Run ids are ULIDs
/// of their start, so only the runs that started by then are read, newest first.
pub fn run_at(
    store: &Store,
    source: &str,
    at: DateTime<Utc>,
) -> Result<Option<RunRecord>, StoreError> {
    /// A run ends long after a later one starts only when runs overlap, which the source's
    /// lock prevents; a few more cover runs stopped and resumed.
    const LOOK_BACK: usize = 16;
    let up_to = crate::store::run_id_ceiling(at);
    let recent = store.complete_runs_back(source, &up_to, true, LOOK_BACK)?;
    let found = recent
        .iter()
        .rev()
        .find(|run| run.finished_at <= at)
        .cloned();
    if found.is_some() || recent.len() < LOOK_BACK {
        return Ok(found);
    }
    Ok(store
        .complete_runs(source)?
        .into_iter()
        .rev()
        .find(|run| run.run_id <= up_to && run.finished_at <= at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_past_run_never_shows_a_later_login() {
        let end = DateTime::parse_from_rfc3339("2026-03-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let before = Some("2026-03-01T08:00:00Z".to_string());
        let after = Some("2026-03-04T08:00:00Z".to_string());
        assert_eq!(
            last_login_as_of(before.clone(), false, end),
            LastLogin::At("2026-03-01T08:00:00Z".into())
        );
        assert_eq!(
            last_login_as_of(after.clone(), false, end),
            LastLogin::AfterRun("2026-03-04T08:00:00Z".into())
        );
        assert_eq!(
            last_login_as_of(after, true, end),
            LastLogin::At("2026-03-04T08:00:00Z".into())
        );
        assert_eq!(last_login_as_of(None, false, end), LastLogin::Never);
    }
}
