//! Reading evidence back as it was written: a run's entry with its seal, the privileged
//! accounts at a run, the report files a run wrote, and the departure an account's history
//! recorded. Each costs the entries it reads, never a replay of snapshots.

use crate::diff::{LastActive, PrivilegedAccount};
use crate::store::Reader;

use super::entry::{Body, PrivilegedList, ReportFiles, RunEvidence};
use super::seal::Seal;
use super::{parse_entry, Entry, LedgerError};

/// An entry with where it is and how it is sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    pub entry: Entry,
    pub seal: Seal,
}

impl Sealed {
    pub fn digest_hex(&self) -> String {
        self.seal.hex()
    }
}

/// A run's evidence as its entry holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedRun {
    pub evidence: RunEvidence,
    pub seq: u64,
    pub seal: Seal,
}

fn sealed(reader: &Reader<'_>, source: &str, seq: u64) -> Result<Option<Sealed>, LedgerError> {
    let Some(stored) = reader.ledger_entry(source, seq)? else {
        return Ok(None);
    };
    let entry = parse_entry(source, &stored)?;
    let seal = decode_seal(source, &stored)?;
    Ok(Some(Sealed { entry, seal }))
}

/// Where a run's entry is: its record says, unless the run predates the ledger (or its
/// record is gone).
fn entry_seq(reader: &Reader<'_>, run_id: &str) -> Result<Option<u64>, LedgerError> {
    match reader.run_record(run_id) {
        Ok(record) => Ok(record.ledger_seq),
        Err(crate::store::StoreError::UnknownRun(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn decode_seal(source: &str, row: &crate::store::LedgerRow) -> Result<Seal, LedgerError> {
    Seal::decode(&row.seal).ok_or_else(|| LedgerError::Unreadable {
        source_name: source.to_string(),
        seq: row.seq,
        reason: "its seal does not read back".into(),
    })
}

/// A run's own entry, if the ledger has one.
pub fn run_evidence(
    reader: &Reader<'_>,
    source: &str,
    run_id: &str,
) -> Result<Option<SealedRun>, LedgerError> {
    let Some(seq) = entry_seq(reader, run_id)? else {
        return Ok(None);
    };
    match sealed(reader, source, seq)? {
        Some(Sealed {
            entry:
                Entry {
                    body: Body::Run(evidence),
                    ..
                },
            seal,
        }) if evidence.run.run_id == run_id => Ok(Some(SealedRun {
            evidence: *evidence,
            seq,
            seal,
        })),
        _ => Err(LedgerError::Unreadable {
            source_name: source.to_string(),
            seq,
            reason: format!("run {run_id} names it as its entry, but it is not"),
        }),
    }
}

/// The report files of a run as the ledger last recorded them: the newest `reports` entry
/// about it, anywhere from its own entry to the chain's head (one written after a crash
/// comes after later runs). Reads the entries since the run.
pub fn report_files(
    reader: &Reader<'_>,
    source: &str,
    run_id: &str,
) -> Result<Option<ReportFiles>, LedgerError> {
    let Some(seq) = entry_seq(reader, run_id)? else {
        return Ok(None);
    };
    let mut found = None;
    for row in reader.ledger_entries(source, seq)? {
        if let Body::Reports(files) = parse_entry(source, &row?)?.body {
            if files.run_id == run_id {
                found = Some(files);
            }
        }
    }
    Ok(found)
}

/// The privileged accounts at the end of a run whose entry is `evidence`, with the run
/// whose entry lists them (a run whose privilege did not change points at an earlier one).
pub fn privileged_at(
    reader: &Reader<'_>,
    source: &str,
    evidence: &RunEvidence,
) -> Result<Option<(String, Vec<PrivilegedAccount>)>, LedgerError> {
    match &evidence.privileged {
        None => Ok(None),
        Some(PrivilegedList::Listed(list)) => Ok(Some((evidence.run.run_id.clone(), list.clone()))),
        Some(PrivilegedList::SameAs(run_id)) => {
            let holder = run_evidence(reader, source, run_id)?;
            Ok(holder.and_then(|holder| match holder.evidence.privileged {
                Some(PrivilegedList::Listed(list)) => Some((run_id.clone(), list)),
                _ => None,
            }))
        }
    }
}

/// The last departure the ledger recorded for an account: when the last run that saw it
/// active started, and the groups it held then. A purge (the deletion of an account that had
/// already left) is timed and described from it.
pub fn last_departure(
    reader: &Reader<'_>,
    source: &str,
    uid: &str,
) -> Result<Option<LastActive>, LedgerError> {
    let runs = reader.account_runs(source, uid)?;
    for (run_id, kinds) in runs.iter().rev() {
        let kinds: Vec<String> = serde_json::from_slice(kinds).unwrap_or_default();
        if !kinds.iter().any(|kind| kind == "left") {
            continue;
        }
        let Some(run) = run_evidence(reader, source, run_id)? else {
            continue;
        };
        let leaver = run
            .evidence
            .diff
            .iter()
            .flat_map(|diff| &diff.leavers)
            .find(|leaver| leaver.external_id == uid);
        if let Some(leaver) = leaver {
            return Ok(leaver.last_seen_active_at.map(|at| LastActive {
                started_at: at,
                finished_at: at,
                groups: leaver.groups_at_departure.clone(),
            }));
        }
    }
    Ok(None)
}

/// The settings of the source's latest run, from its entry: what a new run's settings are
/// compared with. Only the entries after that run (its reports, a prune) are passed over.
pub fn last_run_settings(
    reader: &Reader<'_>,
    source: &str,
) -> Result<Option<super::entry::RunSettings>, LedgerError> {
    let mut seq = reader.chain_head(source)?.next_seq;
    while seq > 0 {
        seq -= 1;
        if let Some(Sealed { entry, .. }) = sealed(reader, source, seq)? {
            if let Body::Run(evidence) = entry.body {
                return Ok(Some(evidence.settings));
            }
        }
    }
    Ok(None)
}
