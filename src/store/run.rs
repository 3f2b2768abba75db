//! The metadata of one run and of one health check, as stored in the database. Both are JSON
//! so that later versions can add fields (digests, delivery state, decisions) without a
//! migration; fields this version does not know are kept when a record is rewritten.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every page arrived and the snapshot is stored.
    Complete,
    /// Nothing of the directory was stored; `error` says why.
    Failed,
    /// Stored, but held back for a decision (mass leavers).
    Quarantined,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Complete => "complete",
            RunStatus::Failed => "failed",
            RunStatus::Quarantined => "quarantined",
        }
    }

    /// The value of the run in the per-source run index.
    pub(crate) fn index_value(self) -> &'static [u8] {
        self.as_str().as_bytes()
    }

    pub(crate) fn from_index(bytes: &[u8]) -> Option<RunStatus> {
        [
            RunStatus::Complete,
            RunStatus::Failed,
            RunStatus::Quarantined,
        ]
        .into_iter()
        .find(|status| status.index_value() == bytes)
    }
}

/// Record counts of one snapshot, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub accounts: u64,
    pub groups: u64,
    pub memberships: u64,
}

/// The error of a run that aksync's own stop (SIGTERM, a restart) cancelled.
pub const CANCELLED_BY_SHUTDOWN: &str = "cancelled by shutdown";

/// The outcome of a run cancelled by shutdown ([`RunRecord::outcome`]).
pub const CANCELLED: &str = "cancelled";

/// What a run's filters made of its records: the run's counts are of the records in scope,
/// these of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeCounts {
    pub accounts_out_of_scope: u64,
    pub groups_out_of_scope: u64,
    pub memberships_out_of_scope: u64,
    /// Records a filter could not judge, which `on_filter_error` put out of scope.
    pub filter_errors_excluded: u64,
    /// Records a filter could not judge, which `on_filter_error` put in scope.
    pub filter_errors_included: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub source: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Record versions this run added: what it cost in storage.
    #[serde(default)]
    pub versions_written: u64,
    pub authentik_version: Option<String>,
    pub settings_fingerprint: String,
    pub aksync_version: String,
    /// The complete run this one was compared with; `None` for a source's first run.
    #[serde(default)]
    pub previous_run: Option<String>,
    /// Why the run was not compared with the source's previous complete run, e.g. because
    /// the settings that shape the data changed in between.
    #[serde(default)]
    pub baseline_reason: Option<String>,
    /// What changed since `previous_run`.
    #[serde(default)]
    pub changes: Option<ChangeCounts>,
    /// The envelope file (the outbox) of a complete run.
    #[serde(default)]
    pub envelopes: Option<EnvelopeSummary>,
    /// Webhook delivery of the envelopes, when a webhook is configured.
    #[serde(default)]
    pub delivery: Option<DeliveryState>,
    /// The Authentik user the token belongs to, as `/core/users/me/` named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_user: Option<TokenUser>,
    /// The sequence number of the run's entry in its source's ledger chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_seq: Option<u64>,
    /// The settings this run recorded differently from the source's run before it (its
    /// ledger entry has them old → new).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings_changed: Vec<String>,
    /// What the source's filters left out of scope, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeCounts>,
    /// Why a quarantined run was held back, and the decision on it once one is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Fields written by other aksync versions, preserved as they are.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl RunRecord {
    /// Whether the run has anything to report on its own: a baseline (the start of its
    /// evidence), changed records (every change has an envelope) or changed settings.
    pub fn changed_anything(&self) -> bool {
        self.previous_run.is_none()
            || self
                .envelopes
                .as_ref()
                .is_some_and(|summary| summary.lines > 0)
            || !self.settings_changed.is_empty()
    }

    /// Whether aksync's own stop cancelled the run: a failure of aksync's uptime, not of the
    /// source, so health looks past it.
    pub fn cancelled_by_shutdown(&self) -> bool {
        self.status == RunStatus::Failed && self.error.as_deref() == Some(CANCELLED_BY_SHUTDOWN)
    }

    /// How the run ended, as logs, metrics and the status show it: its status, except that a
    /// run aksync's own stop cancelled is `cancelled`, not a failure of the source (the
    /// record keeps `failed` with the reason).
    pub fn outcome(&self) -> &'static str {
        if self.cancelled_by_shutdown() {
            CANCELLED
        } else {
            self.status.as_str()
        }
    }
}

/// Why a run was held back for a decision, and the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Each threshold the run went over, in words.
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<QuarantineDecision>,
}

/// An admin's decision on a quarantined run: `approved` releases it (it becomes complete, its
/// envelopes are delivered); `rejected` discards it for comparison, kept for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineDecision {
    pub decision: Decision,
    pub at: DateTime<Utc>,
    /// The OS user who decided, and on which host.
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

impl Quarantine {
    /// The thresholds the run went over, in one line.
    pub fn reasons_line(&self) -> String {
        self.reasons.join("; ")
    }
}

impl RunRecord {
    /// The thresholds a quarantined run went over, in one line (empty for another run).
    pub fn quarantine_reasons(&self) -> String {
        self.quarantine
            .as_ref()
            .map(Quarantine::reasons_line)
            .unwrap_or_default()
    }

    /// What a quarantined run that waits for a decision asks of an admin, in one line: what
    /// `check`, `/healthz` and the status say.
    pub fn decision_needed(&self) -> Option<String> {
        self.awaits_decision().then(|| {
            format!(
                "run {id} is quarantined ({}): decide with `aksync approve {id}` or `aksync reject {id}`",
                self.quarantine_reasons(),
                id = self.run_id
            )
        })
    }

    /// Whether the run is quarantined and waits for `aksync approve` or `aksync reject`.
    pub fn awaits_decision(&self) -> bool {
        self.status == RunStatus::Quarantined
            && self
                .quarantine
                .as_ref()
                .is_none_or(|quarantine| quarantine.decision.is_none())
    }
}

/// Who a run read the directory as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenUser {
    pub username: String,
    pub pk: i64,
}

/// How many events the diff against the previous run found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeCounts {
    pub joiners: u64,
    pub movers: u64,
    pub leavers: u64,
    /// Accounts deleted after they had already left (deactivated): not a second leaver.
    #[serde(default)]
    pub purged: u64,
    /// Joiners and movers that gained superuser rights.
    #[serde(default)]
    pub escalations: u64,
    pub groups_changed: u64,
    pub memberships_changed: u64,
}

/// The envelope file of a run: `<state_dir>/envelopes/<source>/<run_id>.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSummary {
    pub sha256: String,
    pub lines: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// The receiver kept rejecting a batch (a 4xx such as 413), or the envelope file is gone
    /// and cannot be rebuilt: held back, so that later runs still go, until an admin runs
    /// `aksync deliver --retry` or `--skip`.
    Parked,
    /// An admin decided that this run's envelopes are not delivered.
    Skipped,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Parked => "parked",
            DeliveryStatus::Skipped => "skipped",
        }
    }
}

/// Where the webhook delivery of a run's envelopes stands. Envelopes are sent in order and
/// in batches; each acknowledged batch moves `envelopes_delivered` forward, and it never moves
/// back, so nothing is sent twice once acknowledged and a run resumes where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub status: DeliveryStatus,
    /// The batch size in use for this run; set at the first attempt, and again when an admin
    /// retries a parked run (so that a smaller configured size can get past a 413).
    pub batch_size: u64,
    /// Batches acknowledged under the current batch size (kept for readers of schema 1).
    pub batches_delivered: u64,
    pub batches_total: u64,
    /// Envelopes acknowledged, in file order.
    #[serde(default)]
    pub envelopes_delivered: Option<u64>,
    pub attempts: u64,
    /// Consecutive passes in which the receiver rejected the next batch outright.
    #[serde(default)]
    pub rejections: u64,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl DeliveryState {
    pub fn pending() -> DeliveryState {
        DeliveryState {
            status: DeliveryStatus::Pending,
            batch_size: 0,
            batches_delivered: 0,
            batches_total: 0,
            envelopes_delivered: Some(0),
            attempts: 0,
            rejections: 0,
            last_error: None,
            delivered_at: None,
        }
    }

    /// How many envelopes are acknowledged (schema-1 states counted batches only).
    pub fn progress(&self) -> u64 {
        self.envelopes_delivered
            .unwrap_or(self.batches_delivered.saturating_mul(self.batch_size))
    }

    /// The state in a few words, with its progress against the run's `lines` envelopes
    /// while it is not finished: `parked 100/250`, `delivered`.
    pub fn summary(&self, lines: u64) -> String {
        match self.status {
            DeliveryStatus::Pending | DeliveryStatus::Parked => {
                format!("{} {}/{lines}", self.status.as_str(), self.progress())
            }
            status => status.as_str().to_string(),
        }
    }

    /// Whether `next` only moves this state forward: never fewer envelopes, never from
    /// delivered or skipped back to pending.
    pub fn advances_to(&self, next: &DeliveryState) -> bool {
        let settled = matches!(
            self.status,
            DeliveryStatus::Delivered | DeliveryStatus::Skipped
        );
        next.progress() >= self.progress() && (!settled || next.status == self.status)
    }
}

/// What a finished run looked like before it is given its id by the store.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub authentik_version: Option<String>,
    pub settings_fingerprint: String,
    /// What the run saw of the source's health; stored with the run, in its transaction.
    pub health: Option<HealthRecord>,
    /// The settings that differ from the source's run before (see [`RunRecord`]).
    pub settings_changed: Vec<String>,
}

impl RunOutcome {
    pub(crate) fn into_record(
        self,
        run_id: String,
        status: RunStatus,
        error: Option<String>,
        counts: Counts,
        versions_written: u64,
    ) -> RunRecord {
        RunRecord {
            run_id,
            source: self.source,
            status,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error,
            counts,
            versions_written,
            authentik_version: self.authentik_version,
            settings_fingerprint: self.settings_fingerprint,
            aksync_version: env!("CARGO_PKG_VERSION").to_string(),
            previous_run: None,
            baseline_reason: None,
            changes: None,
            envelopes: None,
            delivery: None,
            token_user: None,
            ledger_seq: None,
            settings_changed: self.settings_changed,
            scope: None,
            quarantine: None,
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    Healthy,
    #[serde(rename = "Needs Attention")]
    NeedsAttention,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::NeedsAttention => "Needs Attention",
        }
    }
}

/// The last health check of a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub source: String,
    pub status: HealthStatus,
    pub checked_at: DateTime<Utc>,
    pub authentik_version: Option<String>,
    pub token_user: Option<String>,
    /// Machine-readable reason, e.g. `bad_token`; absent when healthy.
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The smallest run id a run started at `at` can have: run ids are ULIDs of their start.
pub fn run_id_floor(at: DateTime<Utc>) -> String {
    ulid::Ulid::from_parts(u64::try_from(at.timestamp_millis()).unwrap_or(0), 0).to_string()
}

/// The largest run id a run started at `at` can have.
pub fn run_id_ceiling(at: DateTime<Utc>) -> String {
    ulid::Ulid::from_parts(
        u64::try_from(at.timestamp_millis()).unwrap_or(0),
        u128::MAX >> 48,
    )
    .to_string()
}
