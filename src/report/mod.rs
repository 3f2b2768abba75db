//! Audit reports of one run, or of a period of runs: joiners, movers, leavers, group and
//! membership changes, in Markdown, JSON, CSV and HTML (and PDF through headless Chromium).
//! Every report starts with a header that lets an auditor re-perform it.
//!
//! Rendering is pure: a [`Report`] in, bytes out.

mod chart;
mod content;
mod csv;
mod html;
mod json;
mod markdown;
mod pdf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::diff::DirectoryDiff;
use crate::store::Counts;

pub use content::{group_names, inline_text};
pub use html::escape as escape_html;
pub use pdf::{find_chromium, html_to_pdf};

/// What an auditor needs to re-perform the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportHeader {
    pub source: String,
    pub base_url: String,
    pub authentik_version: Option<String>,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The run this one was compared with; `None` for a source's first run or a new baseline.
    pub previous_run: Option<String>,
    /// Why a run that is not the source's first was not compared with the run before it.
    pub baseline_reason: Option<String>,
    /// For a period report: the first run of the period.
    pub period_from: Option<String>,
    /// The API calls made, with their parameters, e.g.
    /// `GET /api/v3/core/users/?ordering=pk&include_groups=false&include_roles=false&page_size=100`.
    pub endpoints: Vec<String>,
    pub filter: Option<String>,
    pub group_sync: bool,
    pub counts: Counts,
    pub aksync_version: String,
    pub envelope_sha256: Option<String>,
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
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub header: ReportHeader,
    /// One diff per run in the report, oldest first (a single run's report has one).
    pub diffs: Vec<DirectoryDiff>,
    /// Recent complete runs of the source, oldest first.
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
mod tests;
