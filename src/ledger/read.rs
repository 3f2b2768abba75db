//! Reading evidence back as it was written: a run's entry with its seal, the privileged
//! accounts at a run, the report files a run wrote, the departure an account's history
//! recorded, the connections and disconnections of sources, and the access reviews imported. Each costs the entries it reads, never a replay of snapshots.

use crate::diff::{LastActive, PrivilegedAccount};
use crate::store::{KeptState, Reader};

use super::entry::{
    Body, ConnectionAction, ConnectionEvent, PrivilegedList, ReportFiles, ReviewDecisions,
    RunEvidence, RunSettings,
};
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

/// A source connected or disconnected, as its entry recorded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Connection {
    pub source: String,
    /// `connected` or `disconnected`.
    pub event: ConnectionAction,
    pub at: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    pub details: ConnectionEvent,
    pub seq: u64,
    /// The ledger digest of its entry.
    pub entry_digest: String,
}

/// The connections and disconnections of a source (of every source, without `source`), in
/// chain order; found through their index, so that the runs between them are not read.
pub fn connections(
    reader: &Reader<'_>,
    source: Option<&str>,
) -> Result<Vec<Connection>, LedgerError> {
    let mut found = Vec::new();
    for (source, seq) in reader.marked_entries(crate::store::EntryMark::Connection, source)? {
        let Some(Sealed { entry, seal }) = sealed(reader, &source, seq)? else {
            return Err(LedgerError::Unreadable {
                source_name: source,
                seq,
                reason: "the index of connections names it, but it is not in the chain".into(),
            });
        };
        let Some((event, details)) = entry.body.connection() else {
            return Err(LedgerError::Unreadable {
                source_name: source,
                seq,
                reason: "the index of connections names it, but it is no connection".into(),
            });
        };
        found.push(Connection {
            event,
            details: details.clone(),
            at: entry.recorded_at,
            seq,
            entry_digest: seal.hex(),
            source,
        });
    }
    Ok(found)
}

/// An imported access review, as its latest import recorded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordedReview {
    pub seq: u64,
    pub imported_at: chrono::DateTime<chrono::Utc>,
    /// The ledger digest of its entry.
    pub entry_digest: String,
    #[serde(flatten)]
    pub decisions: ReviewDecisions,
}

impl RecordedReview {
    /// How many decisions say `verdict`.
    pub fn count(&self, verdict: super::entry::Verdict) -> usize {
        self.decisions
            .decisions
            .iter()
            .filter(|decision| decision.decision == verdict)
            .count()
    }
}

/// Every import of an access review recorded for a source, in chain order; found through
/// their index, so that the runs between them are not read.
pub fn review_imports(
    reader: &Reader<'_>,
    source: &str,
) -> Result<Vec<RecordedReview>, LedgerError> {
    let mut imports = Vec::new();
    for (_, seq) in reader.marked_entries(crate::store::EntryMark::Review, Some(source))? {
        let not_a_review = |reason: &str| LedgerError::Unreadable {
            source_name: source.to_string(),
            seq,
            reason: format!("the index of access reviews names it, but {reason}"),
        };
        let Some(Sealed { entry, seal }) = sealed(reader, source, seq)? else {
            return Err(not_a_review("it is not in the chain"));
        };
        let Body::Reviewed(decisions) = entry.body else {
            return Err(not_a_review("it is no review"));
        };
        imports.push(RecordedReview {
            seq,
            imported_at: entry.recorded_at,
            entry_digest: seal.hex(),
            decisions: *decisions,
        });
    }
    Ok(imports)
}

/// The reviews in force: of each review, its latest import (whose decisions replace the
/// earlier ones'), in import order.
pub fn reviews(reader: &Reader<'_>, source: &str) -> Result<Vec<RecordedReview>, LedgerError> {
    let mut latest: std::collections::BTreeMap<String, RecordedReview> = Default::default();
    for import in review_imports(reader, source)? {
        latest.insert(import.decisions.review_id.clone(), import);
    }
    let mut reviews: Vec<RecordedReview> = latest.into_values().collect();
    reviews.sort_by_key(|review| review.seq);
    Ok(reviews)
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

/// The privileged accounts at the end of a run whose entry is `evidence`: its whole list, or
/// the list of the run it names changed as it says, read back to a whole list (at most a few
/// dozen entries, see [`PrivilegedList::step`]). `None` when a run on the way has no entry.
pub fn privileged_at(
    reader: &Reader<'_>,
    source: &str,
    evidence: &RunEvidence,
) -> Result<Option<Vec<PrivilegedAccount>>, LedgerError> {
    let mut steps = Vec::new();
    let mut current = evidence.privileged.clone();
    loop {
        match current {
            None => return Ok(None),
            Some(PrivilegedList::Full(list)) => {
                let list = steps.into_iter().rev().fold(
                    list,
                    |list, (changed, removed): (Vec<_>, Vec<_>)| {
                        PrivilegedList::apply(list, &changed, &removed)
                    },
                );
                return Ok(Some(list));
            }
            Some(PrivilegedList::Changed {
                since,
                changed,
                removed,
                ..
            }) => {
                // A chain longer than any run writes is damaged data, not a reason to loop.
                if steps.len() > 64 {
                    return Ok(None);
                }
                steps.push((changed, removed));
                current =
                    run_evidence(reader, source, &since)?.and_then(|run| run.evidence.privileged);
            }
        }
    }
}

/// The privileged accounts of the source's latest complete run, as the store keeps them for
/// the next run (none before the ledger's first run).
pub fn privileged_now(
    reader: &Reader<'_>,
    source: &str,
) -> Result<Option<super::entry::PrivilegedNow>, LedgerError> {
    kept(
        reader,
        source,
        KeptState::Privileged,
        "the privileged accounts of the latest complete run",
    )
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

/// The settings of the source's latest run, as the store keeps them beside its entry: what
/// a new run's settings are compared with.
pub fn last_run_settings(
    reader: &Reader<'_>,
    source: &str,
) -> Result<Option<RunSettings>, LedgerError> {
    kept(
        reader,
        source,
        KeptState::Settings,
        "the settings of the latest run",
    )
}

/// A source's kept state of one kind, as JSON.
fn kept<T: serde::de::DeserializeOwned>(
    reader: &Reader<'_>,
    source: &str,
    kind: KeptState,
    what: &str,
) -> Result<Option<T>, LedgerError> {
    let Some(bytes) = reader.source_state(source, kind)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| LedgerError::Unreadable {
            source_name: source.to_string(),
            seq: 0,
            reason: format!("{what}, kept for the next run: {error}"),
        })
}
