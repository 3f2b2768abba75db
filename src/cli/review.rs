//! `aksync review`: an access review of a stored run written as CSV, XLSX, HTML or JSON;
//! `review import FILE`: a completed review read back, checked against the review built
//! again from the store, and its decisions recorded in the evidence ledger; `review status`:
//! the recorded revocations, carried out or pending.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::opt::{ReviewAction, ReviewExport, ReviewFormat};
use super::output::{print, print_bytes, print_json, print_line, table};
use super::show::{chosen_run, run_line};
use super::{no_run, open_existing, single_source, CliError, Exit};
use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::ledger::entry::{Body, FileDigest, ReviewDecisions, ReviewSelection, Verdict};
use crate::ledger::read::reviews;
use crate::ledger::Pending;
use crate::output::artifacts::write_file;
use crate::output::report::Producer;
use crate::output::sheet::{self, Sheet};
use crate::review::directory::RunDirectory;
use crate::review::file::{self as review_file, Produced};
use crate::review::rows::{self, Review};
use crate::review::status::{revocations, Revocation, RevocationState};
use crate::run::sync::STORE_WAIT;
use crate::store::{RunStatus, Store};

/// The largest completed review read back: far more than a million-row sheet needs, and a
/// bound on what a hostile file makes us read.
const MAX_IMPORT_BYTES: u64 = 256 * 1024 * 1024;

pub(super) fn review(
    config: &Config,
    action: Option<ReviewAction>,
    export: &ReviewExport,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    match action {
        None => export_review(config, export, clock),
        Some(ReviewAction::Import { file }) => import(config, &file, clock),
        Some(ReviewAction::Status { source, json }) => {
            let source = single_source(config, source.source.as_deref())?;
            status(config, source, json)
        }
    }
}

fn runtime(error: impl std::fmt::Display) -> CliError {
    CliError::Runtime(error.to_string())
}

/// Builds the review of a run: its directory as the run recorded it, then its rows.
fn build(
    store: &Store,
    source: &SourceConfig,
    run: &crate::store::RunRecord,
    selection: &ReviewSelection,
    no_login_days: u32,
) -> Result<(RunDirectory, Review), CliError> {
    let directory = RunDirectory::load(store, source, run).map_err(runtime)?;
    let review = rows::build(store, &directory, selection, no_login_days).map_err(runtime)?;
    Ok((directory, review))
}

fn export_review(
    config: &Config,
    export: &ReviewExport,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let source = single_source(config, export.source.source.as_deref())?;
    if export.format == ReviewFormat::Xlsx && export.out.is_none() {
        return Err(CliError::Usage(
            "--format xlsx writes a workbook: give --out FILE".to_string(),
        ));
    }
    let store = open_existing(&config.database_path())?.ok_or_else(|| no_run(&source.name))?;
    let (run, at) = chosen_run(&store, &source.name, &export.run)?;
    let selection = ReviewSelection {
        groups: export.group.clone(),
        privileged_only: export.privileged_only,
    };
    let (directory, review) = build(&store, source, &run, &selection, export.no_login_days)?;
    let warnings: Vec<String> = review
        .cycles
        .iter()
        .map(|cycle| format!("aksync: warning: the group hierarchy has a cycle: {cycle}"))
        .collect();
    let summary = format!(
        "review {}: {} row(s) of {} account(s), {} privileged, {} flagged; {}{}",
        review.review_id,
        review.rows.len(),
        review.accounts(),
        review.count(|row| row.privileged),
        review.count(|row| !row.flags.is_empty()),
        run_line(&source.name, &run, at),
        export
            .out
            .as_ref()
            .map(|path| format!("; written to {}", path.display()))
            .unwrap_or_default()
    );
    let by = Producer::current();
    let sheet = review_file::sheet(
        &directory,
        review,
        &Produced {
            at: clock.now(),
            by: &by,
        },
    );
    // The sheet holds what the file needs: a large directory is not kept beside its bytes.
    drop(directory);
    let bytes = encode(&sheet, export.format)?;
    drop(sheet);
    match &export.out {
        Some(path) => write_file(path, &bytes).map_err(runtime)?,
        None => print_bytes(&bytes)?,
    }
    for warning in warnings {
        eprintln!("{warning}");
    }
    eprintln!("{summary}");
    Ok(Exit::Success)
}

fn encode(sheet: &Sheet, format: ReviewFormat) -> Result<Vec<u8>, CliError> {
    Ok(match format {
        ReviewFormat::Csv => {
            let mut bytes = Vec::new();
            sheet::write_csv(sheet, &mut bytes).map_err(runtime)?;
            bytes
        }
        ReviewFormat::Xlsx => sheet::write_xlsx(sheet).map_err(runtime)?,
        ReviewFormat::Html => sheet::write_html(sheet).into_bytes(),
        ReviewFormat::Json => {
            let mut bytes =
                serde_json::to_vec_pretty(&sheet::write_json(sheet)).map_err(runtime)?;
            bytes.push(b'\n');
            bytes
        }
    })
}

/// Reads a completed review: XLSX by its zip signature, CSV otherwise.
fn read_completed(path: &Path) -> Result<(Sheet, FileDigest), CliError> {
    let unreadable = |error: &dyn std::fmt::Display| {
        CliError::Runtime(format!("{}: cannot read it: {error}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|error| unreadable(&error))?;
    let mut bytes = Vec::new();
    file.take(MAX_IMPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| unreadable(&error))?;
    if bytes.len() as u64 > MAX_IMPORT_BYTES {
        return Err(CliError::Runtime(format!(
            "{}: larger than {} MiB, which no review written by aksync is",
            path.display(),
            MAX_IMPORT_BYTES / 1024 / 1024
        )));
    }
    let sheet = match bytes.starts_with(b"PK\x03\x04") {
        true => sheet::read_xlsx(&bytes),
        false => sheet::read_csv(&bytes),
    }
    .map_err(|error| CliError::Runtime(format!("{}: {error}", path.display())))?;
    let digest = FileDigest {
        name: path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes: bytes.len() as u64,
    };
    Ok((sheet, digest))
}

fn import(config: &Config, path: &Path, clock: &dyn Clock) -> Result<Exit, CliError> {
    let (sheet, file) = read_completed(path)?;
    let in_file =
        |error: review_file::ImportError| CliError::Runtime(format!("{}: {error}", path.display()));
    let claimed = review_file::claimed(&sheet).map_err(in_file)?;
    let source = config.sources.get(&claimed.source).ok_or_else(|| {
        CliError::Runtime(format!(
            "{}: the review is of source `{}`, which is not configured here",
            path.display(),
            claimed.source
        ))
    })?;
    let store = Store::open(&config.database_path(), STORE_WAIT)?;
    let run = store.run(&claimed.run_id).map_err(|error| {
        CliError::Runtime(format!("{}: the review's run: {error}", path.display()))
    })?;
    if run.source != source.name || run.status != RunStatus::Complete {
        return Err(CliError::Runtime(format!(
            "{}: the header was changed: run {} is not a complete run of source `{}`",
            path.display(),
            run.run_id,
            source.name
        )));
    }
    // The flags do not change which rows a review has: any window builds the same review.
    let (_, review) = build(&store, source, &run, &claimed.selection, 90)?;
    let (decisions, undecided) =
        review_file::decisions(&sheet, &claimed, &review).map_err(in_file)?;
    let count = |verdict: Verdict| decisions.iter().filter(|d| d.decision == verdict).count();
    let (kept, revoked) = (count(Verdict::Keep), count(Verdict::Revoke));
    let body = Body::Reviewed(Box::new(ReviewDecisions {
        review_id: review.review_id.clone(),
        run_id: run.run_id.clone(),
        selection: claimed.selection.clone(),
        rows: review.rows.len() as u64,
        undecided,
        file,
        decisions,
        by: Producer::current(),
    }));
    let mut pending = Pending::new(
        &source.name,
        clock.now(),
        body,
        config.ledger.signing_key.as_deref(),
    );
    let earlier = reviews(&store.reader()?, &source.name)
        .map_err(runtime)?
        .into_iter()
        .find(|recorded| recorded.decisions.review_id == review.review_id);
    store.append_ledger(&source.name, &mut pending)?;
    if let Some(earlier) = earlier {
        print_line(&format!(
            "{}: these decisions replace those imported at {} (ledger entry {}), which stay in the ledger",
            source.name,
            super::evidence::timestamp(earlier.imported_at),
            earlier.seq
        ))?;
    }
    print_line(&format!(
        "{}: review {} of run {}: recorded {} decision(s) in the evidence ledger: {kept} keep, {revoked} revoke, {undecided} undecided",
        source.name,
        review.review_id,
        run.run_id,
        kept + revoked
    ))?;
    let of_this: Vec<Revocation> = revocations(&store, &source.name)
        .map_err(runtime)?
        .into_iter()
        .filter(|revocation| revocation.review_id == review.review_id)
        .collect();
    print_revocations(&of_this)?;
    Ok(Exit::Success)
}

/// A recorded review in a word: which run, when imported and by whom, what was decided.
#[derive(serde::Serialize)]
struct ReviewSummary<'a> {
    review_id: &'a str,
    #[serde(skip)]
    short_id: String,
    run_id: &'a str,
    imported_at: String,
    imported_by: String,
    rows: u64,
    keep: usize,
    revoke: usize,
    undecided: u64,
    file: &'a FileDigest,
    ledger_seq: u64,
}

fn status(config: &Config, source: &SourceConfig, json: bool) -> Result<Exit, CliError> {
    let store = open_existing(&config.database_path())?.ok_or_else(|| no_run(&source.name))?;
    let reviews = reviews(&store.reader()?, &source.name).map_err(runtime)?;
    let summaries: Vec<ReviewSummary> = reviews
        .iter()
        .map(|review| {
            let recorded = &review.decisions;
            ReviewSummary {
                review_id: &recorded.review_id,
                short_id: recorded.short_id(),
                run_id: &recorded.run_id,
                imported_at: super::evidence::timestamp(review.imported_at),
                imported_by: format!("{}@{}", recorded.by.os_user, recorded.by.host),
                rows: recorded.rows,
                keep: review.count(Verdict::Keep),
                revoke: review.count(Verdict::Revoke),
                undecided: recorded.undecided,
                file: &recorded.file,
                ledger_seq: review.seq,
            }
        })
        .collect();
    let found = revocations(&store, &source.name).map_err(runtime)?;
    if json {
        print_json(&serde_json::json!({"reviews": summaries, "revocations": found}))?;
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|review| {
            vec![
                review.short_id.clone(),
                review.run_id.to_string(),
                review.imported_at.clone(),
                review.imported_by.clone(),
                format!(
                    "{} keep, {} revoke, {} undecided of {}",
                    review.keep, review.revoke, review.undecided, review.rows
                ),
                review.file.name.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print(&table(
            &["review", "run", "imported", "by", "decisions", "file"],
            &rows,
        ))?;
        print_line("")?;
    }
    print_revocations(&found)?;
    let pending = found
        .iter()
        .filter(|r| matches!(r.state, RevocationState::Pending { .. }))
        .count();
    eprintln!(
        "{}: {} review(s) recorded; {} revocation(s) decided, {} carried out, {pending} pending",
        source.name,
        summaries.len(),
        found.len(),
        found.len() - pending
    );
    Ok(Exit::Success)
}

fn print_revocations(found: &[Revocation]) -> Result<(), CliError> {
    if found.is_empty() {
        return print_line("no revocations decided");
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|revocation| {
            let decision = &revocation.decision;
            let state = match &revocation.state {
                RevocationState::CarriedOut { run_id, at, how } => format!(
                    "carried out: {how} in run {run_id} ({})",
                    super::evidence::timestamp(*at)
                ),
                RevocationState::Pending { as_of_run } => {
                    format!("PENDING: still held in run {as_of_run}")
                }
            };
            vec![
                decision.username.clone(),
                format!("{} {}", decision.access.as_str(), decision.access_name),
                decision.reviewer.clone(),
                revocation.review_run.clone(),
                state,
            ]
        })
        .collect();
    print(&table(
        &["username", "access", "reviewer", "reviewed run", "status"],
        &rows,
    ))
}
