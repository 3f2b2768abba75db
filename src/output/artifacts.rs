//! The files a complete run leaves under the state directory: its envelope file (the outbox,
//! written while the run is planned and in place before it commits) and its audit reports
//! (written after). Both can be rebuilt from the store at any time.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, SourceConfig};
use crate::ledger::entry::FileDigest;
use crate::ledger::replay;
use crate::ledger::seal::SigningKey;
use crate::output::envelope::{self, Envelope, EnvelopeWriter};
use crate::output::report::{self, Period, Report, ReportFormat};
use crate::store::{RunRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} does not match run {run_id}: its SHA-256 is {found}, the run recorded {expected}; rebuild it with `aksync envelopes {run_id} --rebuild`")]
    Mismatch {
        path: PathBuf,
        run_id: String,
        expected: String,
        found: String,
    },
    #[error("the envelope file of run {run_id} rebuilt from the store hashes to {found}, not to the {expected} the run recorded, so {path} was not written: the stored snapshots it needs were changed (`aksync verify` checks them), retention removed a deleted version it needs (a deletion older than the deletion log), or the settings that shape envelopes (`ignore_fields`) changed since the run")]
    RebuildDiffers {
        path: PathBuf,
        run_id: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// One format of a run's reports; the others were written.
    #[error("{} report not written: {source}", format.label())]
    Format {
        format: ReportFormat,
        source: Box<ArtifactError>,
    },
}

impl ArtifactError {
    /// Whether trying again cannot help: the store no longer holds what the file was made
    /// from (a pruned snapshot, a run record gone) or makes a different file from it now (the
    /// settings that shape envelopes changed).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ArtifactError::Mismatch { .. }
                | ArtifactError::Store(
                    StoreError::SnapshotPruned { .. }
                        | StoreError::NotComplete { .. }
                        | StoreError::UnknownRun(_)
                )
        )
    }
}

/// Writes a file atomically, naming it in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    envelope::write_atomic(path, bytes).map_err(|error| ArtifactError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// The complete run `run` was compared with when it was stored.
fn previous_run(store: &Store, run: &RunRecord) -> Result<Option<RunRecord>, StoreError> {
    run.previous_run
        .as_deref()
        .map(|previous| store.run(previous))
        .transpose()
}

/// Rebuilds a run's envelope file from the store, replaying the comparison the run made; it
/// must hash to what the run recorded, or nothing is written.
pub fn rebuild_envelopes(
    state_dir: &Path,
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
) -> Result<PathBuf, ArtifactError> {
    let path = envelope::envelope_path(state_dir, &source.name, &run.run_id);
    let writer = EnvelopeWriter::create(&path).map_err(|error| ArtifactError::Write {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    let previous = previous_run(store, run)?;
    let replayed = replay::compare_runs(store, source, previous.as_ref(), run, Some(writer))?;
    let file = replayed.envelopes.expect("an envelope writer was given");
    if let Some(summary) = &run.envelopes {
        if file.summary.sha256 != summary.sha256 {
            // A run from before the ledger is replayed with today's settings, which may have
            // changed what its envelopes say (e.g. ignore_fields).
            return Err(ArtifactError::RebuildDiffers {
                path,
                run_id: run.run_id.clone(),
                expected: summary.sha256.clone(),
                found: file.summary.sha256,
            });
        }
    }
    file.persist().map_err(|error| ArtifactError::Write {
        path: path.clone(),
        reason: error.to_string(),
    })
}

/// The error of a run's envelope file that cannot be read, saying how to make it again.
fn unreadable_envelopes(path: &Path, run: &RunRecord, error: &std::io::Error) -> ArtifactError {
    ArtifactError::Read {
        path: path.to_path_buf(),
        reason: format!(
            "{error}; rebuild it with `aksync envelopes {} --rebuild`",
            run.run_id
        ),
    }
}

/// That a run's envelope file, whose SHA-256 is `found`, is the one the run recorded.
fn check_envelope_digest(path: &Path, run: &RunRecord, found: String) -> Result<(), ArtifactError> {
    match run
        .envelopes
        .as_ref()
        .filter(|summary| summary.sha256 != found)
    {
        Some(summary) => Err(ArtifactError::Mismatch {
            path: path.to_path_buf(),
            run_id: run.run_id.clone(),
            expected: summary.sha256.clone(),
            found,
        }),
        None => Ok(()),
    }
}

/// A run's envelope file, checked against the SHA-256 the run recorded.
pub fn read_envelope_file(state_dir: &Path, run: &RunRecord) -> Result<Vec<u8>, ArtifactError> {
    let path = envelope::envelope_path(state_dir, &run.source, &run.run_id);
    let bytes = std::fs::read(&path).map_err(|error| unreadable_envelopes(&path, run, &error))?;
    check_envelope_digest(&path, run, envelope::sha256_hex(&bytes))?;
    Ok(bytes)
}

/// A run's envelope file read a batch at a time, so that what is in memory is one batch
/// whatever the file's size. It is checked against the SHA-256 the run recorded in one
/// streaming pass when opened, and then read from the same open file, so a file replaced
/// meanwhile cannot slip in.
pub struct EnvelopeBatches {
    path: PathBuf,
    lines: BufReader<std::fs::File>,
    line: Vec<u8>,
}

/// Opens a run's envelope file for [`EnvelopeBatches`], checked against its SHA-256.
pub fn open_envelopes(state_dir: &Path, run: &RunRecord) -> Result<EnvelopeBatches, ArtifactError> {
    let path = envelope::envelope_path(state_dir, &run.source, &run.run_id);
    let unreadable = |error: std::io::Error| unreadable_envelopes(&path, run, &error);
    let mut file = crate::config::state_dir::open_options()
        .read(true)
        .open(&path)
        .map_err(|error| unreadable(crate::config::state_dir::link_error(error)))?;
    let found = envelope::sha256_of(&mut file).map_err(unreadable)?;
    check_envelope_digest(&path, run, found)?;
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    Ok(EnvelopeBatches {
        path,
        lines: BufReader::new(file),
        line: Vec::new(),
    })
}

impl EnvelopeBatches {
    /// Passes over the first `count` envelopes (those already delivered).
    pub fn skip(&mut self, count: u64) -> Result<(), ArtifactError> {
        for _ in 0..count {
            if !self.next_line()? {
                break;
            }
        }
        Ok(())
    }

    /// The next `size` envelopes at most, in file order; empty at the end of the file.
    pub fn next_batch(&mut self, size: usize) -> Result<Vec<Envelope>, ArtifactError> {
        let mut batch = Vec::new();
        while batch.len() < size && self.next_line()? {
            let envelope =
                serde_json::from_slice(&self.line).map_err(|error| ArtifactError::Read {
                    path: self.path.clone(),
                    reason: error.to_string(),
                })?;
            batch.push(envelope);
        }
        Ok(batch)
    }

    /// Reads the next envelope's line into `line`; false at the end. Empty lines are not
    /// envelopes, as [`envelope::parse_jsonl`] has it.
    fn next_line(&mut self) -> Result<bool, ArtifactError> {
        loop {
            self.line.clear();
            let read = self
                .lines
                .read_until(b'\n', &mut self.line)
                .map_err(|error| ArtifactError::Read {
                    path: self.path.clone(),
                    reason: error.to_string(),
                })?;
            if read == 0 {
                return Ok(false);
            }
            if self.line != b"\n" {
                return Ok(true);
            }
        }
    }
}

pub fn report_path(state_dir: &Path, source: &str, run_id: &str, format: ReportFormat) -> PathBuf {
    state_dir
        .join("reports")
        .join(source)
        .join(format!("{run_id}.{}", format.extension()))
}

/// The manifest of a run's reports: `<state_dir>/reports/<source>/<run_id>.manifest.json`.
pub fn manifest_path(state_dir: &Path, source: &str, run_id: &str) -> PathBuf {
    state_dir
        .join("reports")
        .join(source)
        .join(format!("{run_id}.manifest.json"))
}

/// What an auditor checks the report files against: the period, its runs and counts, each
/// written file's SHA-256, the ledger digest of the report's run, and, with a signing key,
/// a signature of all of it (see [`crate::ledger::seal::manifest_digest`]) with the public
/// key, so that `aksync verify --report FILE` can check the file without the database.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    report_id: &'a str,
    source: &'a str,
    period: &'a Period,
    runs: Vec<ManifestRun<'a>>,
    counts: report::period::PeriodCounts,
    generated_at: DateTime<Utc>,
    files: Vec<FileDigest>,
    run_digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<ManifestSignature>,
}

#[derive(Debug, Serialize)]
struct ManifestRun<'a> {
    run_id: &'a str,
    status: crate::store::RunStatus,
}

#[derive(Debug, Serialize)]
struct ManifestSignature {
    key: String,
    public_key: String,
    /// Ed25519 over the manifest's digest, in hex.
    signature: String,
}

/// A written file as a manifest and the ledger list it: its name beside the others.
fn file_digest(path: &Path, bytes: &[u8]) -> FileDigest {
    FileDigest {
        name: path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: envelope::sha256_hex(bytes),
        bytes: bytes.len() as u64,
    }
}

fn write_manifest(
    path: &Path,
    report: &Report,
    files: &[FileDigest],
    signer: Option<&SigningKey>,
) -> Result<FileDigest, ArtifactError> {
    let write_error = |reason: String| ArtifactError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let mut manifest = Manifest {
        report_id: &report.header.report_id,
        source: &report.header.source,
        period: &report.header.period,
        runs: report
            .runs
            .iter()
            .map(|run| ManifestRun {
                run_id: &run.run_id,
                status: run.status,
            })
            .collect(),
        counts: report::period::period_counts(report),
        generated_at: report.generated_at,
        files: files.to_vec(),
        run_digest: report.header.evidence.run_digest.as_deref(),
        signature: None,
    };
    if let Some(key) = signer {
        let unsigned =
            serde_json::to_value(&manifest).map_err(|error| write_error(error.to_string()))?;
        let digest = crate::ledger::seal::manifest_digest(&unsigned);
        manifest.signature = Some(ManifestSignature {
            key: key.public().fingerprint(),
            public_key: key.public().to_pem(),
            signature: hex::encode(key.sign(&digest)),
        });
    }
    let mut bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|error| write_error(error.to_string()))?;
    bytes.push(b'\n');
    write_file(path, &bytes)?;
    Ok(file_digest(path, &bytes))
}

/// The manifest beside a report written to `path`: `<path>.manifest.json`.
pub fn manifest_beside(path: &Path) -> PathBuf {
    let mut manifest = path.as_os_str().to_owned();
    manifest.push(".manifest.json");
    PathBuf::from(manifest)
}

/// Writes one rendered report to `path`, with its manifest `<path>.manifest.json` beside it.
pub fn write_report_file(
    path: &Path,
    report: &Report,
    bytes: &[u8],
    signer: Option<&SigningKey>,
) -> Result<(), ArtifactError> {
    write_file(path, bytes)?;
    write_manifest(
        &manifest_beside(path),
        report,
        &[file_digest(path, bytes)],
        signer,
    )
    .map(|_| ())
}

/// What writing a run's reports left on disk: every file written (the manifest last), and
/// the first failure.
pub struct WrittenReports {
    pub files: Vec<FileDigest>,
    pub failure: Option<ArtifactError>,
}

/// Writes the configured report formats of a run and their manifest. One format failing
/// (PDF without Chromium, say) does not keep the others from being written; the manifest
/// lists those that were, and the first failure is kept ([`ArtifactError::Format`] when it
/// is one format's).
pub fn write_reports(
    config: &Config,
    report: &Report,
    signer: Option<&SigningKey>,
) -> WrittenReports {
    let mut failure = None;
    let mut files = Vec::new();
    for format in &config.output.reports {
        let path = report_path(
            &config.state_dir,
            &report.header.source,
            &report.header.run_id,
            *format,
        );
        let result = report::render(report, *format)
            .map_err(ArtifactError::from)
            .and_then(|bytes| write_file(&path, &bytes).map(|()| bytes));
        match result {
            Ok(bytes) => files.push(file_digest(&path, &bytes)),
            Err(error) => {
                failure.get_or_insert(ArtifactError::Format {
                    format: *format,
                    source: Box::new(error),
                });
            }
        }
    }
    let manifest = manifest_path(
        &config.state_dir,
        &report.header.source,
        &report.header.run_id,
    );
    match write_manifest(&manifest, report, &files, signer) {
        Ok(written) => files.push(written),
        Err(error) => {
            failure.get_or_insert(error);
        }
    }
    WrittenReports { files, failure }
}
