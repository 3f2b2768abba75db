//! `aksync verify`: every digest recomputed from what is stored and on disk, the chain and
//! its signatures checked, and the first break named with its run and what differs.
//!
//! For each source: every entry's bytes must hash to its seal, name the digest of the entry
//! before it and follow it without a gap; a signed entry's signature must verify with a
//! known public key, and no entry may be unsigned after a signed one. Every run's record
//! must be the one its entry holds (its delivery state aside), and every run must have an
//! entry. The envelope file and report files each entry names must hash as recorded, unless
//! a prune entry says retention removed them; each complete run's snapshot digest is
//! recomputed from the stored versions in one pass over them (see [`super::snapshot`]),
//! unless retention removed that snapshot. The index of connections and disconnections
//! must list exactly the entries that are ones. The cost is the entries, the versions and the
//! files: it does not grow with runs × records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{RunRecord, RunStatus, Store};

use super::entry::{committed_record, Body, FileDigest};
use super::seal::{entry_digest, fingerprint, PublicKey, Seal};
use super::{parse_entry, snapshot, LedgerError};

/// Where the files an entry names are.
pub trait Files {
    fn envelope(&self, run: &RunRecord) -> PathBuf;
    /// A report file of a run, by the name its entry gives it.
    fn report(&self, source: &str, name: &str) -> PathBuf;
}

/// The first thing that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub seq: Option<u64>,
    pub run_id: Option<String>,
    pub what: String,
}

/// What verifying one source found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub source: String,
    pub entries: u64,
    pub runs: u64,
    pub signed: u64,
    pub unsigned: u64,
    /// The keys that signed entries, by fingerprint.
    pub signed_by: BTreeSet<String>,
    pub snapshots_checked: u64,
    pub files_checked: u64,
    /// What verify could not check, and why (a signer whose public key it was not given,
    /// snapshots and files that retention removed).
    pub notes: Vec<String>,
    pub first_break: Option<Break>,
}

impl Verdict {
    pub fn verified(&self) -> bool {
        self.first_break.is_none()
    }

    fn fail(&mut self, seq: Option<u64>, run_id: Option<&str>, what: String) {
        if self.first_break.is_none() {
            self.first_break = Some(Break {
                seq,
                run_id: run_id.map(str::to_string),
                what,
            });
        }
    }
}

/// A file an entry names, checked once the whole chain is read (a later prune entry may say
/// it is gone).
struct FileClaim {
    seq: u64,
    run_id: String,
    path: PathBuf,
    sha256: String,
    what: &'static str,
}

/// Verifies one source's chain, runs, files and snapshots; `since` limits the file and
/// snapshot checks to the runs that started since then (the chain is always read whole).
pub fn verify_source(
    store: &Store,
    source: &str,
    keys: &[PublicKey],
    files: &dyn Files,
    since: Option<DateTime<Utc>>,
) -> Result<Verdict, LedgerError> {
    let reader = store.reader()?;
    let runs = store.runs_between(source, None, None)?;
    let mut verdict = Verdict {
        source: source.to_string(),
        ..Verdict::default()
    };
    let mut expected_seq = None;
    let mut previous: Option<String> = None;
    let mut first_prev: Option<(u64, Option<String>)> = None;
    let mut evidence_pruned: Option<(u64, Option<String>)> = None;
    let mut signed_before: Option<u64> = None;
    let mut unknown_keys = BTreeSet::new();
    let mut claims: Vec<FileClaim> = Vec::new();
    // A report file written again (after an approval, a repair) is claimed by its latest
    // entry: the earlier entry recorded the file it replaced.
    let mut report_claims: BTreeMap<PathBuf, FileClaim> = BTreeMap::new();
    let mut snapshot_claims: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut pruned_snapshots: BTreeSet<String> = BTreeSet::new();
    let mut pruned_files: BTreeSet<String> = BTreeSet::new();
    let mut entry_of_run: BTreeMap<String, u64> = BTreeMap::new();
    let mut marked_entries: Vec<(crate::store::EntryMark, u64)> = Vec::new();
    let mut decisions_claimed = BTreeMap::new();
    let mut decisions_recorded = BTreeMap::new();
    let mut last_seal: Option<Vec<u8>> = None;
    let in_scope = |run: &RunRecord| since.is_none_or(|since| run.started_at >= since);
    for row in reader.ledger_entries(source, 0)? {
        let row = row?;
        let seq = row.seq;
        verdict.entries += 1;
        if let Some(expected) = expected_seq {
            if seq != expected {
                verdict.fail(
                    Some(expected),
                    None,
                    format!(
                        "entries {expected} to {} are missing from the chain",
                        seq - 1
                    ),
                );
                break;
            }
        }
        expected_seq = Some(seq + 1);
        last_seal = Some(row.seal.clone());
        let digest = entry_digest(&row.entry);
        let Some(seal) = Seal::decode(&row.seal) else {
            verdict.fail(Some(seq), None, "its seal does not read back".into());
            break;
        };
        if seal.digest != digest {
            verdict.fail(
                Some(seq),
                None,
                format!(
                    "its bytes hash to {}, its seal says {}: the entry was changed",
                    hex::encode(digest),
                    seal.hex()
                ),
            );
            break;
        }
        let entry = match parse_entry(source, &row) {
            Ok(entry) => entry,
            Err(error) => {
                verdict.fail(Some(seq), None, error.to_string());
                break;
            }
        };
        let run_id = entry.body.run_id().map(str::to_string);
        if entry.seq != seq || entry.source != source {
            verdict.fail(
                Some(seq),
                run_id.as_deref(),
                format!(
                    "it says it is entry {} of source `{}`, but it is stored as entry {seq} of `{source}`",
                    entry.seq, entry.source
                ),
            );
            break;
        }
        match &previous {
            None => first_prev = Some((seq, entry.prev.clone())),
            Some(previous) if entry.prev.as_ref() != Some(previous) => {
                verdict.fail(
                    Some(seq),
                    run_id.as_deref(),
                    format!(
                        "it names {} as the entry before it, which is {previous}",
                        entry.prev.as_deref().unwrap_or("no entry")
                    ),
                );
                break;
            }
            Some(_) => {}
        }
        previous = Some(seal.hex());
        match &seal.signature {
            Some((key_id, signature)) => {
                verdict.signed += 1;
                signed_before = Some(seq);
                verdict.signed_by.insert(fingerprint(key_id));
                match keys.iter().find(|key| key.id() == *key_id) {
                    Some(key) if key.verifies(&digest, signature) => {}
                    Some(key) => {
                        verdict.fail(
                            Some(seq),
                            run_id.as_deref(),
                            format!(
                                "its signature does not verify with key {}",
                                key.fingerprint()
                            ),
                        );
                        break;
                    }
                    None => {
                        unknown_keys.insert(fingerprint(key_id));
                    }
                }
            }
            None => {
                verdict.unsigned += 1;
                if let Some(signed) = signed_before {
                    verdict.fail(
                        Some(seq),
                        run_id.as_deref(),
                        format!("it is not signed, though entry {signed} before it was: the signing key was removed, or the entry was written without it"),
                    );
                    break;
                }
            }
        }
        if let Some(mark) = entry.body.mark() {
            marked_entries.push((mark, seq));
        }
        match entry.body {
            Body::Run(evidence) => {
                verdict.runs += 1;
                let id = evidence.run.run_id.clone();
                entry_of_run.insert(id.clone(), seq);
                let stored = match reader.run_record(&id) {
                    Ok(stored) => stored,
                    Err(crate::store::StoreError::UnknownRun(_)) => {
                        verdict.fail(
                            Some(seq),
                            Some(&id),
                            "the run's record is gone from the database".into(),
                        );
                        break;
                    }
                    Err(error) => return Err(error.into()),
                };
                let differs = record_differences(&committed_record(&stored), &evidence.run);
                if !differs.is_empty() {
                    verdict.fail(
                        Some(seq),
                        Some(&id),
                        format!(
                            "the run's record differs from its ledger entry in {}",
                            differs.join(", ")
                        ),
                    );
                    break;
                }
                if let Some(taken) = stored.quarantine.as_ref().and_then(|q| q.decision.as_ref()) {
                    decisions_claimed.insert(id.clone(), (seq, taken.decision));
                }
                if !in_scope(&stored) {
                    continue;
                }
                if let (RunStatus::Complete, Some(summary)) = (stored.status, &stored.envelopes) {
                    claims.push(FileClaim {
                        seq,
                        run_id: id.clone(),
                        path: files.envelope(&stored),
                        sha256: summary.sha256.clone(),
                        what: "envelope file",
                    });
                }
                if let Some(digest) = evidence.snapshot_digest {
                    snapshot_claims.insert(id, (seq, digest));
                }
            }
            Body::Reports(reports) => {
                let scoped = reader
                    .run_record(&reports.run_id)
                    .map(|run| in_scope(&run))
                    .unwrap_or(true);
                if scoped {
                    for FileDigest { name, sha256, .. } in reports.files {
                        let path = files.report(source, &name);
                        report_claims.insert(
                            path.clone(),
                            FileClaim {
                                seq,
                                run_id: reports.run_id.clone(),
                                path,
                                sha256,
                                what: "report file",
                            },
                        );
                    }
                }
            }
            Body::Pruned(pruned) => {
                pruned_snapshots.extend(pruned.snapshots_of);
                pruned_files.extend(pruned.files_of);
                if let Some(before) = pruned.entries_before {
                    evidence_pruned = Some((before, pruned.last_removed_digest));
                }
            }
            Body::Connected(_) | Body::Disconnected(_) | Body::Reviewed(_) => {}
            Body::Decided(decided) => {
                decisions_recorded.insert(decided.run_id, decided.decision);
            }
        }
    }
    // A decision changes a run's record after its entry: only one its own entry records.
    if verdict.first_break.is_none() {
        for (run_id, (seq, decision)) in &decisions_claimed {
            if decisions_recorded.get(run_id) != Some(decision) {
                verdict.fail(
                    Some(*seq),
                    Some(run_id),
                    format!(
                        "the run's record says it was {}, but no ledger entry records that decision",
                        decision.as_str()
                    ),
                );
                break;
            }
        }
    }
    if let Some(broken) = verdict.first_break.as_mut() {
        // A break in an entry that does not say whose it is: the run whose record names it.
        if broken.run_id.is_none() {
            broken.run_id = runs
                .iter()
                .find(|run| run.ledger_seq.is_some() && run.ledger_seq == broken.seq)
                .map(|run| run.run_id.clone());
        }
        return Ok(verdict);
    }
    if verdict.entries == 0 && !runs.is_empty() {
        verdict.fail(
            None,
            None,
            format!(
                "the ledger has no entries, though {} runs are stored: they predate it; the next `aksync sync` (or the service's next run) writes their entries first",
                runs.len()
            ),
        );
        return Ok(verdict);
    }
    let head = reader.chain_head(source)?;
    if head.next_seq != expected_seq.unwrap_or(0) || head.last_seal != last_seal {
        verdict.fail(
            head.next_seq.checked_sub(1),
            None,
            format!(
                "the chain's head names entry {} as its last, but the chain ends at {}: entries were removed from its end, or the head was rewritten",
                head.next_seq as i128 - 1,
                expected_seq.map_or(-1, |next| next as i128 - 1)
            ),
        );
        return Ok(verdict);
    }
    check_chain_start(&mut verdict, first_prev, evidence_pruned);
    for mark in crate::store::EntryMark::ALL {
        let in_chain: Vec<u64> = marked_entries
            .iter()
            .filter(|(marked, _)| *marked == mark)
            .map(|(_, seq)| *seq)
            .collect();
        check_mark_index(&reader, source, mark, &in_chain, &mut verdict)?;
    }
    check_every_run_has_an_entry(&runs, &entry_of_run, &mut verdict);
    claims.extend(report_claims.into_values());
    for claim in claims {
        if verdict.first_break.is_some() {
            break;
        }
        if pruned_files.contains(&claim.run_id) {
            continue;
        }
        verdict.files_checked += 1;
        match std::fs::read(&claim.path) {
            Ok(bytes) => {
                let found = crate::output::envelope::sha256_hex(&bytes);
                if found != claim.sha256 {
                    verdict.fail(
                        Some(claim.seq),
                        Some(&claim.run_id),
                        format!(
                            "{} {} hashes to {found}, the ledger recorded {}: the file was changed",
                            claim.what,
                            claim.path.display(),
                            claim.sha256
                        ),
                    );
                }
            }
            Err(error) => verdict.fail(
                Some(claim.seq),
                Some(&claim.run_id),
                format!(
                    "{} {} cannot be read ({error}), and no prune entry says it was removed",
                    claim.what,
                    claim.path.display()
                ),
            ),
        }
    }
    if verdict.first_break.is_none() {
        check_snapshots(
            store,
            source,
            &runs,
            &snapshot_claims,
            &pruned_snapshots,
            &mut verdict,
        )?;
    }
    for key in unknown_keys {
        verdict.notes.push(format!(
            "entries signed by {key} were not checked: give its public key with --public-key"
        ));
    }
    if !pruned_files.is_empty() || !pruned_snapshots.is_empty() {
        verdict.notes.push(format!(
            "retention removed the snapshots of {} run(s) and the files of {} run(s): their entries, records and digests were checked",
            pruned_snapshots.len(),
            pruned_files.len()
        ));
    }
    Ok(verdict)
}

/// `runs`, reports and `review status` find connections, disconnections and review
/// decisions through their indexes: each must name exactly the entries of its kind, or they
/// would hide one or show one that is not.
fn check_mark_index(
    reader: &crate::store::Reader<'_>,
    source: &str,
    mark: crate::store::EntryMark,
    in_chain: &[u64],
    verdict: &mut Verdict,
) -> Result<(), LedgerError> {
    let indexed: Vec<u64> = reader
        .marked_entries(mark, Some(source))?
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    if indexed != in_chain {
        let differing = indexed
            .iter()
            .filter(|seq| !in_chain.contains(seq))
            .chain(in_chain.iter().filter(|seq| !indexed.contains(seq)))
            .next()
            .copied();
        verdict.fail(
            differing,
            None,
            format!(
                "the index of {} names entries {indexed:?}, but the chain's are entries {in_chain:?}: the index was changed",
                mark.what()
            ),
        );
    }
    Ok(())
}

/// The fields in which two run records differ, by name.
fn record_differences(stored: &RunRecord, recorded: &RunRecord) -> Vec<String> {
    let (Ok(serde_json::Value::Object(stored)), Ok(serde_json::Value::Object(recorded))) =
        (serde_json::to_value(stored), serde_json::to_value(recorded))
    else {
        return vec!["every field".into()];
    };
    let keys: BTreeSet<&String> = stored.keys().chain(recorded.keys()).collect();
    keys.into_iter()
        .filter(|key| stored.get(*key) != recorded.get(*key))
        .map(|key| format!("`{key}`"))
        .collect()
}

/// The chain starts with an entry that names no entry before it, or (after retention of
/// evidence) with the entry a prune entry says follows the removed ones.
fn check_chain_start(
    verdict: &mut Verdict,
    first: Option<(u64, Option<String>)>,
    pruned: Option<(u64, Option<String>)>,
) {
    match (first, pruned) {
        (None, _) | (Some((0, None)), None) => {}
        (Some((seq, prev)), Some((before, last))) if seq == before && prev == last => {
            verdict.notes.push(format!(
                "retention of evidence removed entries 0 to {}: the chain is checked from entry {seq}",
                seq.saturating_sub(1)
            ));
        }
        (Some((seq, prev)), _) => verdict.fail(
            Some(seq),
            None,
            match prev {
                None => format!("the chain starts at entry {seq}, and no prune entry says why"),
                Some(prev) => format!(
                    "the first entry names {prev} as the one before it, and no prune entry says it was removed"
                ),
            },
        ),
    }
}

/// Every run the database holds must have its entry: a run added or rewritten behind the
/// ledger's back has none.
fn check_every_run_has_an_entry(
    runs: &[RunRecord],
    entries: &BTreeMap<String, u64>,
    verdict: &mut Verdict,
) {
    if verdict.first_break.is_some() {
        return;
    }
    for run in runs {
        match (entries.get(&run.run_id), run.ledger_seq) {
            (Some(seq), Some(named)) if *seq == named => {}
            (Some(seq), _) => {
                verdict.fail(
                    Some(*seq),
                    Some(&run.run_id),
                    format!(
                        "the run's record names entry {:?}, but its entry is {seq}",
                        run.ledger_seq
                    ),
                );
                return;
            }
            (None, _) => {
                verdict.fail(
                    run.ledger_seq,
                    Some(&run.run_id),
                    "the run has no entry in the ledger: it was added behind the ledger's back, or its entry was removed".into(),
                );
                return;
            }
        }
    }
}

fn check_snapshots(
    store: &Store,
    source: &str,
    runs: &[RunRecord],
    claims: &BTreeMap<String, (u64, String)>,
    pruned: &BTreeSet<String>,
    verdict: &mut Verdict,
) -> Result<(), LedgerError> {
    let exact_from = store.pruned_before(source)?;
    let complete: Vec<String> = runs
        .iter()
        .filter(|run| run.status == RunStatus::Complete)
        .map(|run| run.run_id.clone())
        .collect();
    let reader = store.reader()?;
    let recomputed = snapshot::recompute(&reader, source, &complete, exact_from.as_deref())?;
    for (run_id, (seq, claimed)) in claims {
        if pruned.contains(run_id) {
            continue;
        }
        let Some(state) = recomputed.get(run_id) else {
            continue;
        };
        verdict.snapshots_checked += 1;
        if &state.hex() != claimed {
            verdict.fail(
                Some(*seq),
                Some(run_id),
                format!(
                    "the stored versions the run saw digest to {}, its entry recorded {claimed}: the snapshot was changed",
                    state.hex()
                ),
            );
            return Ok(());
        }
    }
    Ok(())
}

/// What `verify --report` found about one report file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportVerdict {
    pub file: String,
    pub manifest: String,
    pub report_id: Option<String>,
    pub run_id: Option<String>,
    pub run_digest: Option<String>,
    /// Whether the file's SHA-256 is the one its manifest lists (given a manifest: the
    /// SHA-256 of every file it lists that lies beside it).
    pub matches_manifest: bool,
    /// The files whose SHA-256 was checked against the manifest, by name.
    pub files_checked: Vec<String>,
    /// The key that signed the manifest, when it is signed and the signature verifies.
    pub signed_by: Option<String>,
    /// Why the report does not verify, when it does not.
    pub problem: Option<String>,
}

impl ReportVerdict {
    pub fn verified(&self) -> bool {
        self.problem.is_none()
    }
}

/// The manifest that describes `file`: the file itself if it is one, `<file>.manifest.json`
/// (a report written with `--out`), or `<run id>.manifest.json` beside it (a run's reports).
pub fn manifest_of(file: &std::path::Path) -> Option<PathBuf> {
    let name = file.file_name()?.to_string_lossy().into_owned();
    if name.ends_with(".manifest.json") {
        return Some(file.to_path_buf());
    }
    let beside = PathBuf::from(format!("{}.manifest.json", file.display()));
    if beside.is_file() {
        return Some(beside);
    }
    let stem = name.split('.').next()?;
    let run_manifest = file.with_file_name(format!("{stem}.manifest.json"));
    run_manifest.is_file().then_some(run_manifest)
}

/// Whether `file` hashes to the SHA-256 its manifest lists; why not, when it does not.
fn check_listed(file: &std::path::Path, listed: &str, shown: &str) -> Result<(), String> {
    let found = std::fs::read(file)
        .map(|bytes| crate::output::envelope::sha256_hex(&bytes))
        .map_err(|error| format!("cannot read {shown}: {error}"))?;
    if found == listed {
        Ok(())
    } else {
        Err(format!(
            "{shown} hashes to {found}, its manifest lists {listed}: the file is not the one the report produced"
        ))
    }
}

/// Checks a report file against its manifest, and the manifest's signature against `keys`
/// (or the public key the manifest carries, whose fingerprint the caller shows): no
/// database needed.
pub fn verify_report(file: &std::path::Path, keys: &[PublicKey]) -> ReportVerdict {
    let shown =
        |path: &std::path::Path| crate::display::escape(&path.display().to_string()).into_owned();
    let mut verdict = ReportVerdict {
        file: shown(file),
        manifest: String::new(),
        report_id: None,
        run_id: None,
        run_digest: None,
        matches_manifest: false,
        files_checked: Vec::new(),
        signed_by: None,
        problem: None,
    };
    let Some(manifest_path) = manifest_of(file) else {
        verdict.problem = Some(format!(
            "no manifest found for {}: a report's manifest is <file>.manifest.json, or <run id>.manifest.json beside a run's reports",
            shown(file)
        ));
        return verdict;
    };
    verdict.manifest = shown(&manifest_path);
    let manifest: serde_json::Value = match std::fs::read(&manifest_path)
        .map_err(|error| error.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|error| error.to_string()))
    {
        Ok(manifest) => manifest,
        Err(error) => {
            verdict.problem = Some(format!(
                "cannot read the manifest {}: {error}",
                verdict.manifest
            ));
            return verdict;
        }
    };
    verdict.report_id = manifest["report_id"].as_str().map(str::to_string);
    verdict.run_id = manifest["period"]["end_run"].as_str().map(str::to_string);
    verdict.run_digest = manifest["run_digest"].as_str().map(str::to_string);
    let listed: Vec<(&str, &str)> = manifest["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| Some((entry["name"].as_str()?, entry["sha256"].as_str()?)))
        .collect();
    if manifest_path == file {
        // The manifest itself: every file it lists that lies beside it is checked.
        let dir = file.parent().unwrap_or(std::path::Path::new("."));
        for (name, sha256) in &listed {
            let plain = std::path::Path::new(name).file_name() == Some(std::ffi::OsStr::new(name));
            let path = dir.join(name);
            if !plain || !path.is_file() {
                continue;
            }
            if let Err(problem) = check_listed(&path, sha256, &shown(&path)) {
                verdict.problem = Some(problem);
                return verdict;
            }
            verdict.files_checked.push((*name).to_string());
        }
    } else {
        let name = file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((_, sha256)) = listed.iter().find(|(listed, _)| *listed == name) else {
            verdict.problem = Some(format!("the manifest does not list {name}"));
            return verdict;
        };
        if let Err(problem) = check_listed(file, sha256, &verdict.file) {
            verdict.problem = Some(problem);
            return verdict;
        }
        verdict.files_checked.push(name);
    }
    verdict.matches_manifest = !verdict.files_checked.is_empty();
    let signature = &manifest["signature"];
    if signature.is_null() {
        return verdict;
    }
    let embedded = signature["public_key"]
        .as_str()
        .and_then(PublicKey::from_pem);
    let key = match (embedded, keys) {
        (None, _) => {
            verdict.problem = Some("the manifest's signature names no readable public key".into());
            return verdict;
        }
        (Some(embedded), []) => embedded,
        (Some(embedded), keys) => match keys.iter().find(|key| key.id() == embedded.id()) {
            Some(key) => key.clone(),
            None => {
                verdict.problem = Some(format!(
                    "the manifest is signed by {}, which is not the key given with --public-key",
                    embedded.fingerprint()
                ));
                return verdict;
            }
        },
    };
    let digest = super::seal::manifest_digest(&manifest);
    let signature: Option<[u8; 64]> = signature["signature"]
        .as_str()
        .and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| bytes.try_into().ok());
    match signature {
        Some(signature) if key.verifies(&digest, &signature) => {
            verdict.signed_by = Some(key.fingerprint());
        }
        _ => {
            verdict.problem = Some(format!(
                "the manifest's signature does not verify with {}: the manifest was changed",
                key.fingerprint()
            ))
        }
    }
    verdict
}
