//! An access review as a file, and a completed one read back.
//!
//! The file is a [`Sheet`]: a header block that names the review (its `review_id`), the run
//! and the selection it covers, with what an auditor needs to re-perform it, then one row per
//! access with empty `decision`, `reviewer`, `reviewed_at` and `comment` columns.
//!
//! Reading a completed file back trusts nothing in it: the review it names is built again
//! from the store, and the file must be that review. Its header must name the same digest,
//! its columns must be the review's, each row must be one of the review's (by `row_id`, with
//! the account and access it had), none may be missing or repeated, and a decision must be
//! `keep` or `revoke` with a reviewer's name. The first problem is reported, naming the row;
//! nothing is recorded unless the whole file passes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::directory::RunDirectory;
use super::rows::{AccessRow, Review};
use crate::display::timestamp;
use crate::ledger::entry::{AccessDecision, ReviewSelection, Verdict};
use crate::output::sheet::Sheet;

/// The first line of every review file.
pub const TITLE: &str = "aksync access review";

/// The columns of a review, in order; the last four of the decision columns are the
/// reviewer's.
pub const COLUMNS: [&str; 19] = [
    "row_id",
    "username",
    "display_name",
    "email",
    "account_type",
    "status",
    "access_type",
    "access",
    "privileged",
    "granted",
    "first_seen",
    "last_login",
    "flags",
    DECISION,
    REVIEWER,
    REVIEWED_AT,
    COMMENT,
    "account_external_id",
    "access_external_id",
];
const DECISION: &str = "decision";
const REVIEWER: &str = "reviewer";
const REVIEWED_AT: &str = "reviewed_at";
const COMMENT: &str = "comment";
/// The columns a reviewer must not change: they say which access a row is about. Names are
/// not among them: a spreadsheet may rewrite a name that looks like a number or a date when
/// it saves a CSV file, and the ids say the same.
const IDENTITY: [&str; 3] = ["access_type", "account_external_id", "access_external_id"];

/// Header keys that the import reads back.
pub const REVIEW_ID: &str = "review_id";
pub const SOURCE: &str = "source";
pub const RUN_ID: &str = "run_id";
pub const GROUPS: &str = "selection_groups";
pub const PRIVILEGED_ONLY: &str = "selection_privileged_only";

/// Who produced the file, and when.
pub struct Produced<'a> {
    pub at: DateTime<Utc>,
    pub by: &'a crate::output::report::Producer,
}

/// The review as a sheet, ready for any format; each row is let go once it is cells, so
/// that a large review is not held twice.
pub fn sheet(directory: &RunDirectory, review: Review, produced: &Produced<'_>) -> Sheet {
    let run = &directory.run;
    let source = &directory.source;
    let or_none = |value: Option<&str>| value.unwrap_or("none").to_string();
    let list = |values: &[String]| match values.is_empty() {
        true => "none".to_string(),
        false => values.join(", "),
    };
    let mut reperform = format!(
        "aksync review --source {} --run {} --no-login-days {}",
        run.source, run.run_id, review.no_login_days
    );
    for group in &review.selection.groups {
        reperform.push_str(&format!(" --group {group:?}"));
    }
    if review.selection.privileged_only {
        reperform.push_str(" --privileged-only");
    }
    let header: Vec<(&str, String)> = vec![
        (REVIEW_ID, review.review_id.clone()),
        (SOURCE, run.source.clone()),
        (RUN_ID, run.run_id.clone()),
        ("snapshot_time", timestamp(run.finished_at)),
        (
            "snapshot_digest",
            or_none(directory.snapshot_digest.as_deref()),
        ),
        (
            "ledger_entry",
            directory
                .ledger_seq
                .map_or_else(|| "none".to_string(), |seq| seq.to_string()),
        ),
        ("authentik_base_url", source.base_url.to_string()),
        ("authentik_version", or_none(run.authentik_version.as_deref())),
        (
            "settings",
            match directory.settings_recorded {
                true => "as the run recorded them in the evidence ledger".to_string(),
                false => "today's: the run is from before the evidence ledger".to_string(),
            },
        ),
        ("filter", or_none(source.filter.as_deref())),
        ("group_filter", or_none(source.group_filter.as_deref())),
        ("privileged_groups", list(&source.privileged_groups)),
        ("privileged_roles", list(&source.privileged_roles)),
        // JSON, so that a group name with a comma reads back whole.
        (
            GROUPS,
            serde_json::to_string(&review.selection.groups).unwrap_or_default(),
        ),
        (
            PRIVILEGED_ONLY,
            review.selection.privileged_only.to_string(),
        ),
        ("no_login_days", review.no_login_days.to_string()),
        ("accounts", review.accounts().to_string()),
        ("rows", review.rows.len().to_string()),
        (
            "privileged_rows",
            review.count(|row| row.privileged).to_string(),
        ),
        (
            "flagged_rows",
            review.count(|row| !row.flags.is_empty()).to_string(),
        ),
        ("group_cycles", list(&review.cycles)),
        ("produced_at", timestamp(produced.at)),
        (
            "produced_by",
            format!("{}@{}", produced.by.os_user, produced.by.host),
        ),
        ("aksync_version", produced.by.aksync_version.clone()),
        ("reperform", reperform),
        (
            "instructions",
            "Fill in decision (keep or revoke), reviewer, reviewed_at (YYYY-MM-DD) and comment; change nothing else; then run `aksync review import FILE`.".to_string(),
        ),
    ];
    Sheet {
        title: TITLE.to_string(),
        header: header
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
        columns: COLUMNS.iter().map(|column| column.to_string()).collect(),
        rows: review
            .rows
            .into_iter()
            .map(|row| cells(&row, review.no_login_days))
            .collect(),
        choices: vec![(
            DECISION.to_string(),
            Verdict::ALL
                .iter()
                .map(|v| v.as_str().to_string())
                .collect(),
        )],
    }
}

/// A row's cells, in [`COLUMNS`] order, the decision columns empty.
fn cells(row: &AccessRow, no_login_days: u32) -> Vec<String> {
    let flags: Vec<String> = row.flags.iter().map(|f| f.text(no_login_days)).collect();
    vec![
        row.row_id.clone(),
        row.username.clone(),
        row.display_name.clone(),
        row.email.clone().unwrap_or_default(),
        serde_name(row.account_type),
        serde_name(row.status),
        row.access.as_str().to_string(),
        row.access_name.clone(),
        if row.privileged { "yes" } else { "no" }.to_string(),
        row.granted.clone(),
        row.first_seen.map(timestamp).unwrap_or_default(),
        row.last_login.text(),
        flags.join(" "),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        row.account_external_id.clone(),
        row.access_external_id.clone(),
    ]
}

/// An enum as the store and `show` name it (`USER`, `ACTIVE`).
fn serde_name(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Why a completed review cannot be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("this is not an aksync access review: its first line is {0:?}, not {TITLE:?}")]
    NotAReview(String),
    #[error("the header has no {0} line: the header block was changed; export the review again")]
    MissingHeader(&'static str),
    #[error("the header's {key} {value:?} is not valid: the header block was changed")]
    BadHeader { key: &'static str, value: String },
    #[error("the header was changed: it names review {claimed}, but source `{source_name}`'s run {run_id} with that selection is review {actual}")]
    Tampered {
        claimed: String,
        actual: String,
        source_name: String,
        run_id: String,
    },
    #[error("the columns were changed: expected {expected}, found {found}")]
    Columns { expected: String, found: String },
    #[error("row {row} below the column row: {problem}")]
    Row { row: usize, problem: String },
    #[error("{missing} of the review's {rows} rows are missing from the file, e.g. {example}: put them back (undecided rows may stay empty)")]
    Missing {
        missing: usize,
        rows: usize,
        example: String,
    },
}

/// What the header of a completed file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub review_id: String,
    pub source: String,
    pub run_id: String,
    pub selection: ReviewSelection,
}

/// Reads the header block: which review the file claims to be.
pub fn claimed(sheet: &Sheet) -> Result<Claimed, ImportError> {
    if sheet.title.trim() != TITLE {
        return Err(ImportError::NotAReview(sheet.title.clone()));
    }
    let header: BTreeMap<&str, &str> = sheet
        .header
        .iter()
        .map(|(key, value)| (key.trim(), value.trim()))
        .collect();
    let get = |key: &'static str| {
        header
            .get(key)
            .map(|value| value.to_string())
            .ok_or(ImportError::MissingHeader(key))
    };
    let groups = get(GROUPS)?;
    let privileged_only = get(PRIVILEGED_ONLY)?;
    Ok(Claimed {
        review_id: get(REVIEW_ID)?,
        source: get(SOURCE)?,
        run_id: get(RUN_ID)?,
        selection: ReviewSelection {
            groups: serde_json::from_str(&groups).map_err(|_| ImportError::BadHeader {
                key: GROUPS,
                value: groups.clone(),
            })?,
            privileged_only: privileged_only
                .parse()
                .map_err(|_| ImportError::BadHeader {
                    key: PRIVILEGED_ONLY,
                    value: privileged_only.clone(),
                })?,
        },
    })
}

/// The decisions of a completed file that claims to be `review` (built again from the
/// store), and how many rows were left undecided.
pub fn decisions(
    sheet: &Sheet,
    claimed: &Claimed,
    review: &Review,
) -> Result<(Vec<AccessDecision>, u64), ImportError> {
    if claimed.review_id != review.review_id {
        return Err(ImportError::Tampered {
            claimed: claimed.review_id.clone(),
            actual: review.review_id.clone(),
            source_name: claimed.source.clone(),
            run_id: claimed.run_id.clone(),
        });
    }
    let columns: Vec<&str> = sheet.columns.iter().map(|c| c.trim()).collect();
    if columns != COLUMNS {
        return Err(ImportError::Columns {
            expected: COLUMNS.join(","),
            found: columns.join(","),
        });
    }
    let column = |name: &str| {
        COLUMNS
            .iter()
            .position(|column| *column == name)
            .expect("a review column")
    };
    let by_id: BTreeMap<&str, &AccessRow> = review
        .rows
        .iter()
        .map(|row| (row.row_id.as_str(), row))
        .collect();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut decided = Vec::new();
    let mut undecided = 0;
    for (index, filled) in sheet.rows.iter().enumerate() {
        let number = index + 1;
        let fail = |problem: String| ImportError::Row {
            row: number,
            problem,
        };
        let cell = |name: &str| filled.get(column(name)).map_or("", |cell| cell.trim());
        if filled.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        let id = cell("row_id");
        let Some((id, row)) = by_id.get_key_value(id) else {
            return Err(fail(format!(
                "row_id {id:?} is not a row of review {}: rows cannot be added",
                review.review_id
            )));
        };
        if let Some(first) = seen.insert(id, number) {
            return Err(fail(format!(
                "row_id {id} is repeated (first in row {first}): each access is decided once"
            )));
        }
        // The identity cells as the file was written (the flags' window does not matter).
        let expected = cells(row, 0);
        for name in IDENTITY {
            let found = cell(name);
            let want = &expected[column(name)];
            if found != want.trim() {
                return Err(fail(format!(
                    "{name} says {found:?}, but the review's row {id} has {want:?}: change only decision, reviewer, reviewed_at and comment"
                )));
            }
        }
        let decision = match cell(DECISION).to_ascii_lowercase().as_str() {
            "" => {
                undecided += 1;
                continue;
            }
            "keep" => Verdict::Keep,
            "revoke" => Verdict::Revoke,
            other => {
                return Err(fail(format!(
                    "decision {other:?} ({}) is not `keep` or `revoke`",
                    row.username
                )))
            }
        };
        let reviewer = cell(REVIEWER);
        if reviewer.is_empty() {
            return Err(fail(format!(
                "the decision on {} / {} has no reviewer: name who decided",
                row.username, row.access_name
            )));
        }
        let reviewed_at = cell(REVIEWED_AT);
        if !reviewed_at.is_empty() && !is_date_or_time(reviewed_at) {
            return Err(fail(format!(
                "reviewed_at {reviewed_at:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"
            )));
        }
        decided.push(AccessDecision {
            row_id: row.row_id.clone(),
            account_external_id: row.account_external_id.clone(),
            username: row.username.clone(),
            access: row.access,
            access_external_id: row.access_external_id.clone(),
            access_name: row.access_name.clone(),
            granted: row.granted.clone(),
            decision,
            reviewer: reviewer.to_string(),
            reviewed_at: reviewed_at.to_string(),
            comment: cell(COMMENT).to_string(),
        });
    }
    let missing: Vec<&AccessRow> = review
        .rows
        .iter()
        .filter(|row| !seen.contains_key(row.row_id.as_str()))
        .collect();
    if let Some(first) = missing.first() {
        return Err(ImportError::Missing {
            missing: missing.len(),
            rows: review.rows.len(),
            example: format!(
                "{} / {} ({})",
                first.username, first.access_name, first.row_id
            ),
        });
    }
    decided.sort_by(|a, b| a.row_id.cmp(&b.row_id));
    Ok((decided, undecided))
}

/// A date as a reviewer types it, or a full time; a spreadsheet's date cell reads back as
/// either.
fn is_date_or_time(text: &str) -> bool {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
        || DateTime::parse_from_rfc3339(text).is_ok()
        || chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").is_ok()
}
