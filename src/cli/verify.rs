//! `aksync verify` and `aksync keygen`: checking the evidence ledger, its files and a report
//! on its own, and making the key that signs the ledger.

use std::path::Path;

use super::output::print_line;
use super::{open_existing, print_json, CliError, Exit};
use crate::config::Config;
use crate::display::escape;
use crate::ledger::seal::{PublicKey, SigningKey};
use crate::ledger::verify::{verify_report, verify_source, Files, Verdict};
use crate::store::RunRecord;

fn key_error(error: crate::ledger::seal::KeyError) -> CliError {
    CliError::Runtime(error.to_string())
}

/// `keygen --out FILE` makes a signing key; `keygen --public FILE` writes the public key of
/// `--key` or of the configured signing key.
pub(super) fn keygen(
    out: Option<&Path>,
    public: Option<&Path>,
    key: Option<&Path>,
    config: Option<&Config>,
) -> Result<Exit, CliError> {
    let signing = match (out, key, config) {
        (Some(out), _, _) => {
            let key = SigningKey::generate();
            key.save(out).map_err(key_error)?;
            print_line(&format!(
                "wrote signing key {} to {}: set `[ledger] signing_key_file` to it, keep it readable by aksync only, and give auditors its public key (`aksync keygen --public FILE`)",
                key.public().fingerprint(),
                escape(&out.display().to_string())
            ))?;
            key
        }
        (None, Some(key), _) => SigningKey::load(key).map_err(key_error)?,
        (None, None, Some(config)) => {
            let Some(path) = &config.ledger.signing_key_file else {
                return Err(CliError::Usage(format!(
                    "{}: no `[ledger] signing_key_file` is configured: pass the key with --key FILE",
                    config.origin
                )));
            };
            SigningKey::load(path).map_err(key_error)?
        }
        (None, None, None) => {
            return Err(CliError::Usage(
                "give --out FILE for a new key, or --public FILE with --key FILE".into(),
            ))
        }
    };
    if let Some(public) = public {
        signing.public().save(public).map_err(key_error)?;
        print_line(&format!(
            "wrote public key {} to {}",
            signing.public().fingerprint(),
            escape(&public.display().to_string())
        ))?;
    }
    Ok(Exit::Success)
}

fn public_keys(paths: &[std::path::PathBuf]) -> Result<Vec<PublicKey>, CliError> {
    paths
        .iter()
        .map(|path| PublicKey::load(path).map_err(key_error))
        .collect()
}

/// `verify --report FILE`: the file against its manifest, and the manifest's signature.
pub(super) fn report(
    file: &Path,
    public_key_files: &[std::path::PathBuf],
    json: bool,
) -> Result<Exit, CliError> {
    let keys = public_keys(public_key_files)?;
    let verdict = verify_report(file, &keys);
    if json {
        print_json(&verdict)?;
    } else {
        let what = match (&verdict.report_id, &verdict.run_id) {
            (Some(report), Some(run)) => format!("report {report} (run {run})"),
            (Some(report), None) => format!("report {report}"),
            _ => "a report".to_string(),
        };
        // Given the manifest itself, what it vouches for is the files beside it.
        let (subject, them) = if verdict.file == verdict.manifest {
            match verdict.files_checked.as_slice() {
                [] => (
                    "no file it lists lies beside it; it is the manifest".to_string(),
                    "it",
                ),
                names => (
                    format!(
                        "the files beside it ({}) are those",
                        escape(&names.join(", "))
                    ),
                    "them",
                ),
            }
        } else {
            ("it is the file".to_string(), "it")
        };
        let line = match (&verdict.problem, &verdict.signed_by) {
            (Some(problem), _) => format!("{}: DOES NOT VERIFY: {}", verdict.file, escape(problem)),
            (None, Some(key)) => format!(
                "{}: verified: {subject} {what} produced, as its manifest {} lists {them}, signed by {key}{}",
                verdict.file,
                verdict.manifest,
                if keys.is_empty() {
                    " (compare this fingerprint with the one the operator gave you, or pass --public-key)"
                } else {
                    ", the key given with --public-key"
                }
            ),
            (None, None) => format!(
                "{}: matches its manifest {} ({what}); the manifest is not signed, so only the ledger (`aksync verify`) can vouch for a run's reports, and nothing for a report written with --out: set `[ledger] signing_key_file`",
                verdict.file, verdict.manifest
            ),
        };
        print_line(&line)?;
    }
    Ok(if verdict.verified() {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// Where a state directory keeps the files the ledger names.
struct StateFiles<'a> {
    state_dir: &'a Path,
}

impl Files for StateFiles<'_> {
    fn envelope(&self, run: &RunRecord) -> std::path::PathBuf {
        crate::output::envelope::envelope_path(self.state_dir, &run.source, &run.run_id)
    }

    fn report(&self, source: &str, name: &str) -> std::path::PathBuf {
        self.state_dir.join("reports").join(source).join(name)
    }
}

/// `verify`: each source's chain, runs, files and snapshots.
pub(super) fn ledger(
    config: &Config,
    source: Option<&str>,
    since: Option<&str>,
    public_key_files: &[std::path::PathBuf],
    json: bool,
) -> Result<Exit, CliError> {
    let since = since
        .map(|since| super::evidence::parse_time("--since", since))
        .transpose()?;
    let mut keys = public_keys(public_key_files)?;
    if let Some(key) = &config.ledger.signing_key {
        keys.push(key.public());
    }
    let Some(store) = open_existing(&config.database_path())? else {
        return Err(CliError::Runtime(format!(
            "no database at {}: nothing to verify yet",
            config.database_path().display()
        )));
    };
    let files = StateFiles {
        state_dir: &config.state_dir,
    };
    let sources = sources_to_verify(config, &store, source)?;
    let mut verdicts: Vec<Verdict> = Vec::new();
    for source in sources {
        let verdict = verify_source(&store, &source, &keys, &files, since)
            .map_err(|error| CliError::Runtime(error.to_string()))?;
        verdicts.push(verdict);
    }
    if json {
        print_json(&verdicts)?;
    } else {
        for verdict in &verdicts {
            print_line(&verdict_line(verdict))?;
            for note in &verdict.notes {
                print_line(&format!("  note: {}", escape(note)))?;
            }
        }
    }
    Ok(if verdicts.iter().all(Verdict::verified) {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// The configured sources and those whose chains outlive their configuration (a
/// disconnected source's evidence stays, and stays checked); or the one named, if it is
/// either.
fn sources_to_verify(
    config: &Config,
    store: &crate::store::Store,
    name: Option<&str>,
) -> Result<Vec<String>, CliError> {
    let mut sources: std::collections::BTreeSet<String> = config.sources.keys().cloned().collect();
    sources.extend(store.reader()?.chained_sources()?);
    match name {
        None => Ok(sources.into_iter().collect()),
        Some(name) if sources.contains(name) => Ok(vec![name.to_string()]),
        Some(name) => {
            // Neither configured nor in the store: the error names the configured ones.
            config.select_sources(Some(name))?;
            Ok(vec![name.to_string()])
        }
    }
}

fn verdict_line(verdict: &Verdict) -> String {
    match &verdict.first_break {
        Some(broken) => {
            let mut at = Vec::new();
            if let Some(seq) = broken.seq {
                at.push(format!("entry {seq}"));
            }
            if let Some(run) = &broken.run_id {
                at.push(format!("run {run}"));
            }
            format!(
                "{}: DOES NOT VERIFY at {}: {}",
                verdict.source,
                at.join(", "),
                escape(&broken.what)
            )
        }
        None => {
            let signed = match verdict
                .signed_by
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .as_slice()
            {
                [] => "not signed".to_string(),
                keys => format!("{} signed by {}", verdict.signed, keys.join(", ")),
            };
            format!(
                "{}: verified: {} entries ({} runs; {signed}), {} snapshot digests recomputed, {} files checked",
                verdict.source,
                verdict.entries,
                verdict.runs,
                verdict.snapshots_checked,
                verdict.files_checked
            )
        }
    }
}
