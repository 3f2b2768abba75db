//! The evidence ledger: what each run found, written once, in the run's own commit, and
//! never recomputed (the model is Certificate Transparency's append-only log).
//!
//! Every source has a chain of entries ([`entry`]): one per run, complete or failed, with
//! the run record, the settings that shaped it, every event it found as of that run (the
//! leavers' logins and privilege at departure included) and the population at its end; one
//! per set of report files a run wrote; one per prune; one per connection or
//! disconnection of the source (`aksync connect`, `aksync disconnect`). Each entry names the digest of the
//! one before it and is sealed ([`seal`]) with its own digest and, with a signing key, an
//! Ed25519 signature. A run's entry also holds the digest of the run's whole snapshot
//! ([`lthash`]), updated by each run's changes alone.
//!
//! Reports, `history` and the diff between consecutive runs read entries ([`read`]), so
//! what they say about the past does not change when settings, volatile values or
//! retention do; [`verify`] recomputes every digest from what is stored and on disk. Runs
//! from before the ledger get their entries by replay ([`backfill`]), marked as such.
//! [`replay`] runs two stored snapshots through the run's planner: the diff of runs that are
//! not consecutive, rebuilt envelope files and the backfill.

pub mod backfill;
pub mod entry;
pub mod history;
pub mod lthash;
pub mod read;
pub mod replay;
pub mod run;
pub mod seal;
pub mod snapshot;
pub mod verify;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::canonical::to_canonical_vec;
use crate::store::{ChainHead, IndexError, IndexRows, KeptState, LedgerWrite, RunRecord, Sealer};
pub use entry::{Body, Entry, RunEvidence, ENTRY_FORMAT};
use seal::{Seal, SigningKey};

/// An entry waiting for its place in its source's chain.
pub struct Pending<'a> {
    pub source: &'a str,
    pub recorded_at: DateTime<Utc>,
    pub body: Body,
    pub signer: Option<&'a SigningKey>,
    /// For a run: the accounts it names and the names they had (see [`run::RunIndex`]).
    pub index: run::RunIndex<'a>,
    /// For a complete run: what the next run starts from.
    pub source_state: Vec<(KeptState, Vec<u8>)>,
    /// For a complete run: the privileged accounts the next run compares with, serialized
    /// at the commit, after the entry (a whole list is not held twice).
    pub privileged_after: Option<entry::PrivilegedStep>,
}

/// The serialized form of an [`Entry`], borrowing its body.
#[derive(Serialize)]
struct EntryRef<'a> {
    format: u32,
    source: &'a str,
    seq: u64,
    prev: Option<String>,
    recorded_at: DateTime<Utc>,
    body: &'a Body,
}

impl<'a> Pending<'a> {
    /// An entry that indexes nothing and keeps nothing for the next run.
    pub fn new(
        source: &'a str,
        recorded_at: DateTime<Utc>,
        body: Body,
        signer: Option<&'a SigningKey>,
    ) -> Pending<'a> {
        Pending {
            source,
            recorded_at,
            body,
            signer,
            index: run::RunIndex::default(),
            source_state: Vec::new(),
            privileged_after: None,
        }
    }

    /// The entry's bytes after `head`: canonical JSON (keys sorted at every depth). A run's
    /// entry holds its record as the store stores it, with the id and `ledger_seq` the
    /// commit gave it.
    fn bytes(&mut self, head: &ChainHead, run: Option<&RunRecord>) -> Result<Vec<u8>, String> {
        let prev = match &head.last_seal {
            None => None,
            Some(bytes) => Some(
                Seal::decode(bytes)
                    .ok_or("the last ledger entry's seal does not read back")?
                    .hex(),
            ),
        };
        if let (Body::Run(evidence), Some(run)) = (&mut self.body, run) {
            evidence.run = entry::committed_record(run);
        }
        let entry = EntryRef {
            format: ENTRY_FORMAT,
            source: self.source,
            seq: head.next_seq,
            prev,
            recorded_at: self.recorded_at,
            body: &self.body,
        };
        to_canonical_vec(&entry).map_err(|error| error.to_string())
    }
}

impl Sealer for Pending<'_> {
    fn seal(&mut self, head: &ChainHead, run: Option<&RunRecord>) -> Result<LedgerWrite, String> {
        let entry = self.bytes(head, run)?;
        let digest = seal::entry_digest(&entry);
        let seal = match self.signer {
            Some(key) => key.seal(digest),
            None => Seal {
                digest,
                signature: None,
            },
        };
        Ok(LedgerWrite {
            seq: head.next_seq,
            entry,
            seal: seal.encode(),
        })
    }

    fn index(&self, rows: &mut IndexRows<'_>) -> Result<(), IndexError> {
        self.index.write(rows)?;
        if let Some(mark) = self.body.mark() {
            rows.mark(mark)?;
        }
        if let Body::Run(evidence) = &self.body {
            let unwritable = |error: serde_json::Error| IndexError::source(error.to_string());
            let settings = serde_json::to_vec(&evidence.settings).map_err(unwritable)?;
            rows.keep(KeptState::Settings, &settings)?;
            if !evidence.settings_changes.is_empty() {
                let keys: Vec<&str> = evidence
                    .settings_changes
                    .iter()
                    .map(|change| change.key.as_str())
                    .collect();
                rows.settings_changed(&serde_json::to_vec(&keys).map_err(unwritable)?)?;
            }
            if let (Some(after), Some(list)) = (&self.privileged_after, &evidence.privileged) {
                rows.keep(
                    KeptState::Privileged,
                    &after.kept_bytes(list).map_err(unwritable)?,
                )?;
            }
        }
        for (kind, state) in &self.source_state {
            rows.keep(*kind, state)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("ledger entry {seq} of source `{source_name}` does not read back: {reason}")]
    Unreadable {
        source_name: String,
        seq: u64,
        reason: String,
    },
}

/// A ledger entry that does not read back stops what reads it like any unreadable stored
/// data.
impl From<LedgerError> for crate::store::StoreError {
    fn from(error: LedgerError) -> crate::store::StoreError {
        match error {
            LedgerError::Store(error) => error,
            other => crate::store::StoreError::Aborted(other.to_string()),
        }
    }
}

/// Reads a stored entry.
pub fn parse_entry(source: &str, stored: &crate::store::LedgerRow) -> Result<Entry, LedgerError> {
    serde_json::from_slice(&stored.entry).map_err(|error| LedgerError::Unreadable {
        source_name: source.to_string(),
        seq: stored.seq,
        reason: error.to_string(),
    })
}
