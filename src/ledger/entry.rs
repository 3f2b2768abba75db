//! What the ledger keeps: one entry per event of a source, in the order they happened, each
//! naming the digest of the entry before it. A run's entry holds everything its evidence
//! stands on, as of that run: the run record, the settings that shaped it, every event it
//! found (with the volatile values and privilege as they were then), the population at its
//! end and the digest of its whole snapshot. Nothing later rewrites it. A source's
//! connection and disconnection are entries too: when collection from it began and ended,
//! who did it and with which settings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::SourceConfig;
use crate::diff::{DirectoryDiff, PrivilegedAccount};
use crate::store::{RunRecord, RunStatus};

/// The layout of entries this build writes.
pub const ENTRY_FORMAT: u32 = 1;

/// One entry of a source's chain: `{"body":{"run":{…}},"format":1,"prev":…,…}`. The body
/// is a field of its own, tagged by its one key, so that an entry parses in one pass
/// (serde buffers a flattened or internally tagged body whole before it reads it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub format: u32,
    pub source: String,
    /// The entry's position in its source's chain, from 0.
    pub seq: u64,
    /// The hex digest of the entry before it; `None` for a chain's first entry.
    pub prev: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// A run, complete or failed, as it was committed.
    Run(Box<RunEvidence>),
    /// The report files a complete run wrote, with their SHA-256.
    Reports(ReportFiles),
    /// Retention removed snapshots and files (never this ledger's entries) or, with
    /// `keep_evidence_days`, the entries before one.
    Pruned(PruneRecord),
    /// `aksync connect` wrote the source's configuration: collection from it begins.
    Connected(ConnectionEvent),
    /// `aksync disconnect` removed the source's configuration: collection from it ends,
    /// its history stays.
    Disconnected(ConnectionEvent),
    /// `aksync approve` or `aksync reject` decided on a quarantined run.
    Decided(RunDecision),
    /// `aksync review import` recorded the decisions of an access review of a run.
    Reviewed(Box<ReviewDecisions>),
}

/// The decisions reviewers took on an access review of a run, as `aksync review import`
/// read them from the completed file. The review itself is not stored: it is re-performed
/// from the run's snapshot (`review_id` names what it covered), so only what the reviewers
/// added is evidence of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewDecisions {
    /// The digest of the review: the run, the selection and every row's access.
    pub review_id: String,
    pub run_id: String,
    pub selection: ReviewSelection,
    /// How many rows the review has, and how many were left undecided.
    pub rows: u64,
    pub undecided: u64,
    /// The completed file as it was imported.
    pub file: FileDigest,
    /// The decided rows, in row-id order.
    pub decisions: Vec<AccessDecision>,
    /// Who imported it.
    pub by: crate::output::report::Producer,
}

impl ReviewDecisions {
    /// The review's id as people quote it: its first 16 characters.
    pub fn short_id(&self) -> String {
        self.review_id.chars().take(16).collect()
    }
}

/// Which access a review covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewSelection {
    /// Group names or ids as given (`--group`); empty for every group.
    pub groups: Vec<String>,
    pub privileged_only: bool,
}

/// What kind of access a review row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// An effective group membership.
    Group,
    /// An RBAC role, held directly or through a group.
    Role,
}

impl AccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Group => "group",
            AccessKind::Role => "role",
        }
    }
}

/// A reviewer's decision on one access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Keep,
    Revoke,
}

impl Verdict {
    pub const ALL: [Verdict; 2] = [Verdict::Keep, Verdict::Revoke];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::Revoke => "revoke",
        }
    }
}

/// One decided row of a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDecision {
    pub row_id: String,
    pub account_external_id: String,
    pub username: String,
    pub access: AccessKind,
    pub access_external_id: String,
    pub access_name: String,
    /// How the access was granted in the reviewed run (`direct`, or `via` groups).
    pub granted: String,
    pub decision: Verdict,
    pub reviewer: String,
    pub reviewed_at: String,
    pub comment: String,
}

/// A decision on a quarantined run, and who took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDecision {
    pub run_id: String,
    pub decision: crate::store::Decision,
    /// The thresholds the run went over, as its record states them.
    pub reasons: Vec<String>,
    pub by: crate::output::report::Producer,
}

impl Body {
    /// The run the entry is about, if one.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Body::Run(evidence) => Some(&evidence.run.run_id),
            Body::Reports(files) => Some(&files.run_id),
            Body::Decided(decision) => Some(&decision.run_id),
            Body::Reviewed(review) => Some(&review.run_id),
            Body::Pruned(_) | Body::Connected(_) | Body::Disconnected(_) => None,
        }
    }

    /// The index the entry is found through, for the kinds that have one.
    pub fn mark(&self) -> Option<crate::store::EntryMark> {
        match self {
            Body::Connected(_) | Body::Disconnected(_) => Some(crate::store::EntryMark::Connection),
            Body::Reviewed(_) => Some(crate::store::EntryMark::Review),
            Body::Run(_) | Body::Reports(_) | Body::Pruned(_) | Body::Decided(_) => None,
        }
    }

    /// A connection or disconnection, with its action's name (`connected`, `disconnected`).
    pub fn connection(&self) -> Option<(ConnectionAction, &ConnectionEvent)> {
        match self {
            Body::Connected(event) => Some((ConnectionAction::Connected, event)),
            Body::Disconnected(event) => Some((ConnectionAction::Disconnected, event)),
            Body::Run(_)
            | Body::Reports(_)
            | Body::Pruned(_)
            | Body::Decided(_)
            | Body::Reviewed(_) => None,
        }
    }
}

/// Whether collection from a source began or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionAction {
    Connected,
    Disconnected,
}

impl ConnectionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionAction::Connected => "connected",
            ConnectionAction::Disconnected => "disconnected",
        }
    }
}

/// What `aksync connect` wrote or `aksync disconnect` removed, and who did it. Never the
/// token: `token` says only where it was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    pub base_url: String,
    /// The source's own configuration file (`conf.d/NAME.toml`).
    pub config_file: String,
    pub primary_directory: bool,
    pub disable_group_sync: bool,
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_filter: Option<String>,
    /// Where the token is kept: in the file itself, or the token file it names.
    pub token: String,
    /// The host, OS user and aksync version that wrote or removed the file.
    pub by: crate::output::report::Producer,
    /// For a connection: the health check that passed before anything was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentik_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_user: Option<String>,
}

impl ConnectionEvent {
    /// The event of `source`, whose configuration is `config_file`, by this process; a
    /// connection names the health check it passed.
    pub fn of(
        source: &SourceConfig,
        config_file: &std::path::Path,
        health: Option<&crate::store::HealthRecord>,
    ) -> ConnectionEvent {
        ConnectionEvent {
            base_url: source.base_url.to_string(),
            config_file: config_file.display().to_string(),
            primary_directory: source.primary_directory,
            disable_group_sync: source.disable_group_sync,
            filter: source.filter.clone(),
            group_filter: source.group_filter.clone(),
            token: source.token.whereabouts(),
            by: crate::output::report::Producer::current(),
            authentik_version: health.and_then(|health| health.authentik_version.clone()),
            token_user: health.and_then(|health| health.token_user.clone()),
        }
    }

    /// The settings in a line, for `runs` and reports.
    pub fn summary(&self) -> String {
        let mut parts = vec![
            format!("base_url {}", self.base_url),
            format!("primary_directory {}", self.primary_directory),
            format!("disable_group_sync {}", self.disable_group_sync),
        ];
        if let Some(filter) = &self.filter {
            parts.push(format!("filter {filter:?}"));
        }
        if let Some(filter) = &self.group_filter {
            parts.push(format!("group_filter {filter:?}"));
        }
        parts.push(format!("token {}", self.token));
        parts.push(format!("by {}@{}", self.by.os_user, self.by.host));
        parts.join(", ")
    }
}

/// Everything one run's evidence stands on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvidence {
    /// The run record as it was committed, without its webhook delivery state, which moves on
    /// after the run.
    pub run: RunRecord,
    pub settings: RunSettings,
    /// What changed in the settings since the source's previous run.
    #[serde(default)]
    pub settings_changes: Vec<SettingChange>,
    /// Written after the run by replaying its stored snapshot (the run predates the ledger):
    /// `settings` are then the ones applied at the replay, not the run's own.
    #[serde(default)]
    pub backfilled: bool,
    /// Why a complete run's evidence could not be replayed, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_replayable: Option<String>,
    /// A complete run's events against the run it was compared with.
    pub diff: Option<DirectoryDiff>,
    /// A complete run's population at its end.
    pub population: Option<PopulationAtEnd>,
    /// A complete run's privileged accounts at its end.
    pub privileged: Option<PrivilegedList>,
    /// The digest of a complete run's whole snapshot (see [`super::lthash`]).
    pub snapshot_digest: Option<String>,
}

/// The run record as an entry keeps it: the same record without what changes after the run
/// (its webhook delivery, and for a quarantined run the decision on it, which its own entry
/// records, and the status that follows from it).
pub fn committed_record(run: &RunRecord) -> RunRecord {
    let mut committed = RunRecord {
        delivery: None,
        ..run.clone()
    };
    if let Some(quarantine) = committed.quarantine.as_mut() {
        if quarantine.decision.take().is_some() {
            committed.status = RunStatus::Quarantined;
        }
    }
    committed
}

/// The counts at the end of a complete run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopulationAtEnd {
    pub accounts: u64,
    pub active: u64,
    pub privileged: u64,
    pub groups: u64,
    pub memberships: u64,
}

/// The privileged accounts at the end of a run: the whole list now and then, and otherwise
/// what changed since an earlier run's list, so that the ledger grows with changes to
/// privilege, not with runs × privileged accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivilegedList {
    Full(Vec<PrivilegedAccount>),
    Changed {
        /// The run whose list this one changes.
        since: String,
        /// How many `Changed` steps lead back to a `Full` list, this one included.
        depth: u32,
        /// Accounts that became privileged, or whose privilege is now described otherwise
        /// (a renamed group, a new path).
        changed: Vec<PrivilegedAccount>,
        /// Accounts, by uid, that are no longer privileged.
        removed: Vec<String>,
    },
}

/// A source's privileged accounts at its latest complete run, as the store keeps them for
/// the next run to compare with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrivilegedNow {
    pub run_id: String,
    pub depth: u32,
    /// The accounts the `Changed` steps since the whole list name, added up.
    #[serde(default)]
    pub chained: u64,
    pub accounts: Vec<PrivilegedAccount>,
}

/// What a run's list leaves for the next run: a [`PrivilegedNow`] whose accounts, when the
/// run's list is whole, are that list (so that they are not held twice through the commit).
#[derive(Debug, Clone, PartialEq)]
pub struct PrivilegedStep {
    pub run_id: String,
    pub depth: u32,
    pub chained: u64,
    /// `None`: the accounts of the run's whole list.
    pub accounts: Option<Vec<PrivilegedAccount>>,
}

/// [`PrivilegedNow`] as it is serialized, borrowing its accounts.
#[derive(Serialize)]
struct PrivilegedNowRef<'a> {
    run_id: &'a str,
    depth: u32,
    chained: u64,
    accounts: &'a [PrivilegedAccount],
}

impl PrivilegedStep {
    fn accounts<'a>(&'a self, list: &'a PrivilegedList) -> &'a [PrivilegedAccount] {
        match (&self.accounts, list) {
            (Some(accounts), _) => accounts,
            (None, PrivilegedList::Full(accounts)) => accounts,
            (None, PrivilegedList::Changed { .. }) => &[],
        }
    }

    /// The kept state's bytes: a [`PrivilegedNow`] in JSON.
    pub fn kept_bytes(&self, list: &PrivilegedList) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&PrivilegedNowRef {
            run_id: &self.run_id,
            depth: self.depth,
            chained: self.chained,
            accounts: self.accounts(list),
        })
    }

    pub fn into_now(self, list: &PrivilegedList) -> PrivilegedNow {
        let accounts = self.accounts(list).to_vec();
        PrivilegedNow {
            run_id: self.run_id,
            depth: self.depth,
            chained: self.chained,
            accounts,
        }
    }
}

/// The longest chain of `Changed` steps: reading a run's list reads at most this many
/// entries back.
const MAX_DEPTH: u32 = 128;

impl PrivilegedList {
    /// How `accounts` (the run `run_id`'s list, in uid order) are kept: the change since
    /// `previous`, unless the chain back to a whole list is long, or the changes along it
    /// add up to more than the list itself (then reading the chain would cost more than
    /// the whole list does, and the whole list is as small). So the whole list is written
    /// when privilege has changed about as much as it holds, or every `MAX_DEPTH` runs.
    /// Returns the entry's form and the state the next run compares with; `None` when the
    /// list did not change, so that the kept state stays as it is and the next run's
    /// change names the same run this one does.
    pub fn step(
        run_id: &str,
        accounts: Vec<PrivilegedAccount>,
        previous: Option<&PrivilegedNow>,
    ) -> (PrivilegedList, Option<PrivilegedStep>) {
        let full = |accounts: Vec<PrivilegedAccount>| {
            (
                PrivilegedList::Full(accounts),
                Some(PrivilegedStep {
                    run_id: run_id.to_string(),
                    depth: 0,
                    chained: 0,
                    accounts: None,
                }),
            )
        };
        let Some(previous) = previous.filter(|previous| previous.depth < MAX_DEPTH) else {
            return full(accounts);
        };
        let before: std::collections::BTreeMap<&str, &PrivilegedAccount> = previous
            .accounts
            .iter()
            .map(|account| (account.external_id.as_str(), account))
            .collect();
        let now: std::collections::BTreeSet<&str> = accounts
            .iter()
            .map(|account| account.external_id.as_str())
            .collect();
        let changed: Vec<PrivilegedAccount> = accounts
            .iter()
            .filter(|account| before.get(account.external_id.as_str()) != Some(account))
            .cloned()
            .collect();
        let removed: Vec<String> = before
            .keys()
            .filter(|uid| !now.contains(*uid))
            .map(|uid| uid.to_string())
            .collect();
        let chained = previous.chained + (changed.len() + removed.len()) as u64;
        if chained > accounts.len().max(MAX_DEPTH as usize) as u64 {
            return full(accounts);
        }
        let depth = previous.depth + 1;
        let unchanged = changed.is_empty() && removed.is_empty();
        (
            PrivilegedList::Changed {
                since: previous.run_id.clone(),
                depth,
                changed,
                removed,
            },
            (!unchanged).then(|| PrivilegedStep {
                run_id: run_id.to_string(),
                depth,
                chained,
                accounts: Some(accounts),
            }),
        )
    }

    /// The list of a run whose `since` run had `base`.
    pub fn apply(
        base: Vec<PrivilegedAccount>,
        changed: &[PrivilegedAccount],
        removed: &[String],
    ) -> Vec<PrivilegedAccount> {
        let mut accounts: std::collections::BTreeMap<String, PrivilegedAccount> = base
            .into_iter()
            .map(|account| (account.external_id.clone(), account))
            .collect();
        for uid in removed {
            accounts.remove(uid);
        }
        for account in changed {
            accounts.insert(account.external_id.clone(), account.clone());
        }
        accounts.into_values().collect()
    }
}

/// The settings that shaped a run and how its evidence is judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub base_url: String,
    pub filter: Option<String>,
    /// Left out when unset: entries written before it existed read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_filter: Option<String>,
    pub disable_group_sync: bool,
    pub primary_directory: bool,
    pub ignore_fields: Vec<String>,
    pub privileged_groups: Vec<String>,
    #[serde(default)]
    pub privileged_roles: Vec<String>,
    pub hr_key_field: Option<String>,
    pub sla_seconds: Option<u64>,
    /// The longest time between two complete runs that is not a gap in coverage.
    pub expected_interval_seconds: u64,
    /// Where that interval comes from: the `expected_interval` key or the schedule.
    pub expected_interval_from: String,
    pub schedule: String,
    pub timezone: String,
    pub page_size: u32,
    pub aksync_version: String,
}

impl RunSettings {
    /// The settings of `source` in force at `now`.
    pub fn of(source: &SourceConfig) -> RunSettings {
        let (interval, configured) = source.expected_interval();
        RunSettings {
            base_url: source.base_url.to_string(),
            filter: source.filter.clone(),
            group_filter: source.group_filter.clone(),
            disable_group_sync: source.disable_group_sync,
            primary_directory: source.primary_directory,
            ignore_fields: source.ignore_fields_as_written.clone(),
            privileged_groups: source.privileged_groups.clone(),
            privileged_roles: source.privileged_roles.clone(),
            hr_key_field: source.hr_key_field.clone(),
            sla_seconds: source.sla.map(|sla| sla.as_secs()),
            expected_interval_seconds: interval.as_secs(),
            expected_interval_from: if configured {
                format!("sources.{}.expected_interval", source.name)
            } else {
                format!(
                    "one and a half times the longest gap of the schedule {:?} ({})",
                    source.schedule.expression(),
                    source.schedule.timezone_name()
                )
            },
            schedule: source.schedule.expression().to_string(),
            timezone: source.schedule.timezone_name().to_string(),
            page_size: source.page_size,
            aksync_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// `source` with what these settings say shapes a run's records, envelopes and evidence:
    /// how a run that recorded them is replayed, whatever the configuration says today.
    pub fn applied_to(&self, source: &SourceConfig) -> SourceConfig {
        let mut applied = source.clone();
        applied.filter = self.filter.clone();
        applied.group_filter = self.group_filter.clone();
        applied.disable_group_sync = self.disable_group_sync;
        applied.primary_directory = self.primary_directory;
        applied.ignore_fields = crate::config::fields::resolve_recorded(&self.ignore_fields);
        applied.ignore_fields_as_written = self.ignore_fields.clone();
        applied.privileged_groups = self.privileged_groups.clone();
        applied.privileged_roles = self.privileged_roles.clone();
        applied.hr_key_field = self.hr_key_field.clone();
        applied.sla = self.sla_seconds.map(std::time::Duration::from_secs);
        applied
    }

    /// The keys whose values differ from `before`, in key order.
    pub fn changes_since(&self, before: &RunSettings) -> Vec<SettingChange> {
        let as_map = |settings: &RunSettings| -> BTreeMap<String, Value> {
            match serde_json::to_value(settings) {
                Ok(Value::Object(map)) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            }
        };
        let (old, new) = (as_map(before), as_map(self));
        new.iter()
            .filter(|(key, value)| old.get(*key) != Some(*value))
            .map(|(key, value)| SettingChange {
                key: key.clone(),
                old: old.get(key).cloned().unwrap_or(Value::Null),
                new: value.clone(),
            })
            .collect()
    }
}

/// How the settings moved from a run to the next: what a planner compares under (see
/// [`crate::run::plan::SettingsStep`]), the same for a sync and for a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsBetween {
    /// The fields ignored now or by the previous run: a field that became ignored, or
    /// stopped being, makes no change in the run where the rule changed.
    pub compared_fields: Vec<String>,
    pub groups_before: bool,
    pub groups_after: bool,
}

impl SettingsBetween {
    /// From the `previous` run's recorded settings (none: the same as now) to `now`.
    pub fn of(previous: Option<&RunSettings>, now: &SourceConfig) -> SettingsBetween {
        let mut compared_fields = now.ignore_fields.clone();
        if let Some(previous) = previous {
            compared_fields.extend(crate::config::fields::resolve_recorded(
                &previous.ignore_fields,
            ));
        }
        compared_fields.sort();
        compared_fields.dedup();
        let groups_after = !now.disable_group_sync;
        SettingsBetween {
            compared_fields,
            groups_before: previous.map_or(groups_after, |previous| !previous.disable_group_sync),
            groups_after,
        }
    }

    pub fn step(&self) -> crate::run::plan::SettingsStep<'_> {
        crate::run::plan::SettingsStep {
            compare: crate::run::record::ChangeRule::new(&self.compared_fields),
            groups_before: self.groups_before,
            groups_after: self.groups_after,
        }
    }
}

/// One setting that changed between two runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingChange {
    pub key: String,
    pub old: Value,
    pub new: Value,
}

/// The report files of one run, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFiles {
    pub run_id: String,
    pub report_id: String,
    pub files: Vec<FileDigest>,
}

/// A file by its name beside the others, its SHA-256 and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What one prune removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneRecord {
    /// Runs whose snapshots (record versions only they saw) were removed: their entries
    /// and run records stay, their snapshot digests can no longer be recomputed.
    #[serde(default)]
    pub snapshots_of: Vec<String>,
    /// Envelope and report files removed, by run.
    #[serde(default)]
    pub files_of: Vec<String>,
    /// With `keep_evidence_days`: the entries before this sequence number were removed; the
    /// digest of the last of them, which the first kept entry names as `prev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_removed_digest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_change_names_each_key_old_and_new() {
        let mut source = crate::testing::source_config();
        let before = RunSettings::of(&source);
        source.ignore_fields_as_written = vec!["attributes.department".into()];
        source.sla = Some(std::time::Duration::from_secs(3600));
        source.group_filter = Some("payload.name != 'x'".into());
        let after = RunSettings::of(&source);
        let changes = after.changes_since(&before);
        let keys: Vec<&str> = changes.iter().map(|change| change.key.as_str()).collect();
        assert_eq!(keys, ["group_filter", "ignore_fields", "sla_seconds"]);
        assert_eq!(changes[0].old, Value::Null);
        assert_eq!(changes[0].new, "payload.name != 'x'");
        assert_eq!(changes[2].old, Value::Null);
        assert_eq!(changes[2].new, 3600);
        // Settings written before group_filter existed read as without one.
        let mut older = serde_json::to_value(&before).unwrap();
        older.as_object_mut().unwrap().remove("group_filter");
        let older: RunSettings = serde_json::from_value(older).unwrap();
        assert_eq!(older, before);
        assert!(after.changes_since(&after).is_empty());
    }

    fn privileged(uid: &str, source: &str) -> PrivilegedAccount {
        PrivilegedAccount {
            external_id: uid.into(),
            username: uid.into(),
            canonical_email: None,
            hr_key: None,
            privilege_source: source.into(),
            path: Vec::new(),
        }
    }

    /// Replays a chain of lists the way a reader does: every `Changed` applied to the list
    /// of the run it names.
    fn replay(kept: &[(String, PrivilegedList)], index: usize) -> Vec<PrivilegedAccount> {
        match &kept[index].1 {
            PrivilegedList::Full(list) => list.clone(),
            PrivilegedList::Changed {
                since,
                changed,
                removed,
                ..
            } => {
                let base = kept.iter().position(|(run, _)| run == since).unwrap();
                PrivilegedList::apply(replay(kept, base), changed, removed)
            }
        }
    }

    #[test]
    fn privileged_lists_kept_as_changes_read_back_whole_and_restart_from_a_whole_list() {
        let mut accounts: Vec<PrivilegedAccount> = (0..200)
            .map(|n| privileged(&format!("u{n:03}"), "admins"))
            .collect();
        let mut kept = Vec::new();
        let mut now: Option<PrivilegedNow> = None;
        let runs = 3 * MAX_DEPTH as usize;
        for run in 0..runs {
            // One account changes its path, one leaves, one joins, now and then.
            if run % 3 == 1 {
                accounts[0].privilege_source = format!("path {run}");
            }
            if run % 5 == 2 {
                accounts.remove(1);
                accounts.push(privileged(&format!("v{run:02}"), "admins"));
                accounts.sort_by(|a, b| a.external_id.cmp(&b.external_id));
            }
            let run_id = format!("run-{run:02}");
            let (list, step) = PrivilegedList::step(&run_id, accounts.clone(), now.as_ref());
            if let PrivilegedList::Changed { depth, .. } = &list {
                assert!(*depth <= MAX_DEPTH, "run {run}: depth {depth}");
            }
            kept.push((run_id, list.clone()));
            assert_eq!(replay(&kept, run), accounts, "run {run}");
            // An unchanged list leaves the kept state as it was; a changed one's kept state
            // reads back as the state the step leaves.
            if let Some(step) = step {
                let stored: PrivilegedNow =
                    serde_json::from_slice(&step.kept_bytes(&list).unwrap()).unwrap();
                let next = step.into_now(&list);
                assert_eq!(stored, next);
                assert_eq!(next.accounts, accounts);
                now = Some(next);
            } else {
                assert_eq!(now.as_ref().unwrap().accounts, accounts, "run {run}");
            }
        }
        let whole = kept
            .iter()
            .filter(|(_, list)| matches!(list, PrivilegedList::Full(_)))
            .count();
        // The first run's, then a whole list again after MAX_DEPTH changes (the chain's
        // length stays bounded, checked above).
        assert!(whole >= 2, "{whole} whole lists");

        // A change to more than the list holds is kept whole: it is no smaller as a change.
        let replaced: Vec<PrivilegedAccount> = (0..200)
            .map(|n| privileged(&format!("w{n:03}"), "admins"))
            .collect();
        let (list, next) = PrivilegedList::step("run-big", replaced, now.as_ref());
        assert!(matches!(list, PrivilegedList::Full(_)));
        assert_eq!(next.unwrap().depth, 0);
    }
}
