//! Audit reports of a period of runs (a single run is a period of one): the runs and their
//! coverage, the roll-forward of the population, privileged access, terminations and their
//! timeliness, joiners, movers, group and membership changes, in Markdown, JSON, CSV and
//! HTML (and PDF through headless Chromium). Every report starts with a header that lets an
//! auditor rely on it and re-perform it.
//!
//! [`assemble`] reads a period's evidence from the ledger into a [`Report`]; rendering is
//! pure: a [`Report`] in, bytes out.

pub mod assemble;
mod chart;
mod content;
pub mod csv;
pub(crate) mod html;
mod json;
mod markdown;
mod pdf;
pub mod period;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::diff::{DirectoryDiff, PrivilegedAccount};
use crate::store::{ChangeCounts, Counts, DeliveryState, RunStatus, TokenUser};

pub use content::{group_names, inline_text};
pub use html::escape as escape_html;
pub use pdf::{find_chromium, html_to_pdf};

/// What an auditor needs to rely on the report: what it covers, how it was produced, and
/// how to re-perform it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportHeader {
    /// Stable for one period of one source: the same runs give the same id.
    pub report_id: String,
    pub source: String,
    pub base_url: String,
    /// The last run of the period: the report's files are named after it.
    pub run_id: String,
    pub period: Period,
    /// The API calls each run made, with their parameters, e.g.
    /// `GET /api/v3/core/users/?ordering=pk&include_groups=false&include_roles=false&page_size=100`.
    pub endpoints: Vec<String>,
    pub filter: Option<String>,
    pub group_sync: bool,
    pub settings: ReportSettings,
    pub producer: Producer,
    /// Where the report's facts come from, and how they are sealed.
    pub evidence: EvidenceInfo,
}

/// How the report stands on the evidence ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceInfo {
    /// The ledger digest of the entry of the report's run (`run_id`).
    pub run_digest: Option<String>,
    /// The key that signed that entry, as its fingerprint; `None`: not signed.
    pub signed_by: Option<String>,
    /// When the oldest entry the ledger still holds for the source was recorded, and its run.
    pub oldest_evidence: Option<OldestEvidence>,
    /// Runs of the period whose entries were written after them, by replay (`backfilled`).
    pub backfilled_runs: Vec<String>,
    /// Runs of the period without an entry, replayed for this report with the settings
    /// configured now (a database not yet upgraded).
    pub replayed_runs: Vec<String>,
    /// Complete runs of the period whose events could not be recovered, with why.
    pub missing: Vec<(String, String)>,
}

/// The oldest evidence a report can reach.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OldestEvidence {
    pub run_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// The time a report covers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// How the runs were chosen, in words.
    pub selection: String,
    /// The complete run whose state the period starts from (its own changes are not in the
    /// period); `None` when no complete run came before.
    pub start_run: Option<String>,
    /// The last complete run of the period, whose state it ends with.
    pub end_run: Option<String>,
}

/// The settings in force at the end of the period, as the ledger recorded them with its
/// last run (changes during the period are listed as settings changes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportSettings {
    pub sla_seconds: Option<u64>,
    pub expected_interval_seconds: u64,
    /// Where the expected interval comes from: the `expected_interval` key or the schedule.
    pub expected_interval_from: String,
    pub hr_key_field: Option<String>,
    pub privileged_groups: Vec<String>,
    pub privileged_roles: Vec<String>,
}

/// Who made the report, where, and with what.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Producer {
    pub host: String,
    pub os_user: String,
    pub aksync_version: String,
}

impl Producer {
    /// This process.
    pub fn current() -> Producer {
        Producer {
            host: whoami::fallible::hostname().unwrap_or_else(|_| "unknown".to_string()),
            os_user: whoami::fallible::username().unwrap_or_else(|_| "unknown".to_string()),
            aksync_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// One run of the period, complete or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodRun {
    pub run_id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub counts: Counts,
    pub envelope_sha256: Option<String>,
    /// How many envelopes the run wrote: what its delivery progress counts against.
    pub envelope_lines: Option<u64>,
    /// Where the webhook delivery of its envelopes stands, when a webhook is configured.
    pub delivery: Option<DeliveryState>,
    pub previous_run: Option<String>,
    pub baseline_reason: Option<String>,
    pub settings_fingerprint: String,
    pub authentik_version: Option<String>,
    pub aksync_version: String,
    /// The Authentik user the token belongs to.
    pub token_user: Option<TokenUser>,
    pub changes: Option<ChangeCounts>,
    /// What the source's filters left out of scope, and the records they could not judge,
    /// when it has filters: `counts` are of the records in scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<crate::store::ScopeCounts>,
    /// Why the run was held for a decision, and the decision, when it was quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<crate::store::Quarantine>,
    /// A run still quarantined or rejected: the leavers it would have reported, as
    /// `username (reason)`. An approved run's leavers are among the period's leavers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_leavers: Vec<String>,
    /// The ledger digest of the run's entry.
    pub entry_digest: Option<String>,
    /// The expected interval the run recorded: a gap in coverage that ends with this run is
    /// judged by it.
    pub expected_interval_seconds: Option<u64>,
}

impl PeriodRun {
    /// The webhook delivery in a sentence for human readers, with the receiver's last
    /// answer while it is not delivered.
    pub fn delivery_text(&self) -> Option<String> {
        let delivery = self.delivery.as_ref()?;
        let mut text = format!(
            "webhook delivery {}",
            delivery.summary(self.envelope_lines.unwrap_or(0))
        );
        if let (Some(error), false) = (
            &delivery.last_error,
            delivery.status == crate::store::DeliveryStatus::Delivered,
        ) {
            text.push_str(&format!(" ({error})"));
        }
        Some(text)
    }
}

/// The population of a run: counted from its records when it was stored, not from the
/// diffs, so that the roll-forward checks the one against the other.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// `None`: no run, an empty directory.
    pub run_id: Option<String>,
    pub accounts: u64,
    pub active: u64,
    pub privileged: Vec<PrivilegedAccount>,
    /// Why the counts are not known, when they are not (the run's evidence is gone).
    pub unavailable: Option<String>,
}

/// A run that recorded settings different from the run before it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsChanged {
    pub run_id: String,
    pub at: DateTime<Utc>,
    pub changes: Vec<crate::ledger::entry::SettingChange>,
}

/// One run of the source's recent history, for the chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    pub run_id: String,
    pub finished_at: DateTime<Utc>,
    pub accounts: u64,
    pub joiners: u64,
    pub movers: u64,
    pub leavers: u64,
    /// A run compared with nothing: its accounts were present, not joiners.
    pub baseline: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub header: ReportHeader,
    /// Every run of the period, complete, failed or quarantined, oldest first.
    pub runs: Vec<PeriodRun>,
    /// The diff of each complete run of the period against the run it was compared with,
    /// oldest first.
    pub diffs: Vec<DirectoryDiff>,
    /// The state the period starts from and ends with.
    pub start: Snapshot,
    pub end: Snapshot,
    /// The privileged accounts at each baseline run of the period (where the roll-forward
    /// restarts), by run id.
    pub privileged_at_restarts: BTreeMap<String, u64>,
    /// The settings changes the period's runs recorded, oldest first.
    pub settings_changes: Vec<SettingsChanged>,
    /// When the source was connected or disconnected in the period, oldest first: between a
    /// disconnection and the next connection nothing was collected.
    pub connections: Vec<crate::ledger::read::Connection>,
    /// The imports of access review decisions made in the period (`aksync review import`),
    /// oldest first, each as it was recorded.
    pub access_reviews: Vec<crate::ledger::read::RecordedReview>,
    /// Complete runs for the chart, oldest first.
    pub trend: Vec<TrendPoint>,
    pub generated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Markdown,
    Json,
    Csv,
    Html,
    Pdf,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 5] = [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Csv,
        ReportFormat::Html,
        ReportFormat::Pdf,
    ];

    pub fn extension(self) -> &'static str {
        match self {
            ReportFormat::Markdown => "md",
            ReportFormat::Json => "json",
            ReportFormat::Csv => "csv",
            ReportFormat::Html => "html",
            ReportFormat::Pdf => "pdf",
        }
    }

    /// The format's name in a sentence: "PDF report not written".
    pub fn label(self) -> &'static str {
        match self {
            ReportFormat::Markdown => "Markdown",
            ReportFormat::Json => "JSON",
            ReportFormat::Csv => "CSV",
            ReportFormat::Html => "HTML",
            ReportFormat::Pdf => "PDF",
        }
    }

    /// A format by its name or file extension, ignoring case.
    pub fn parse(name: &str) -> Option<ReportFormat> {
        match name.to_ascii_lowercase().as_str() {
            "md" | "markdown" => Some(ReportFormat::Markdown),
            "json" => Some(ReportFormat::Json),
            "csv" => Some(ReportFormat::Csv),
            "html" => Some(ReportFormat::Html),
            "pdf" => Some(ReportFormat::Pdf),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "PDF output needs Chromium, which was not found: install it (e.g. `apt-get install chromium`) \
         or set AKSYNC_CHROMIUM to its path; `--format html` works without it"
    )]
    ChromiumMissing,
    #[error("Chromium could not print the PDF: {0}")]
    Chromium(String),
    #[error("{0}; check that the temporary directory (TMPDIR) is writable and has space")]
    Io(String),
    #[error("cannot serialize the report as JSON: {0}")]
    Json(String),
}

/// Markdown, JSON, CSV and HTML are pure; PDF needs Chromium (see [`find_chromium`]).
pub fn render(report: &Report, format: ReportFormat) -> Result<Vec<u8>, ReportError> {
    match format {
        ReportFormat::Markdown => Ok(markdown::render(report).into_bytes()),
        ReportFormat::Json => json::render(report),
        ReportFormat::Csv => Ok(csv::render(report).into_bytes()),
        ReportFormat::Html => Ok(html::render(report).into_bytes()),
        ReportFormat::Pdf => {
            let chromium = find_chromium().ok_or(ReportError::ChromiumMissing)?;
            html_to_pdf(html::render(report).as_bytes(), &chromium)
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
