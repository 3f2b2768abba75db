//! The ledger's tables: entries and their seals, appended and never rewritten, with the
//! indexes that find a run's entries and an account's runs without a scan, and the running
//! snapshot digest of each source. What an entry means is [`crate::ledger`]'s business; the
//! store keeps bytes and appends them in the caller's write transaction, after the entry
//! before them.
//!
//! | table | key | value |
//! |---|---|---|
//! | `ledger` | `source␟seq` (12 digits) | the entry as canonical JSON |
//! | `ledger_seals` | the same | its digest and signature |
//! | `ledger_runs` | `source␟run_id␟seq` | the entry's kind: a run's entries |
//! | `ledger_accounts` | `source␟uid␟run_id` | what the run found for the account |
//! | `snapshot_digests` | source | the LtHash state of the latest complete run |

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::codec::{self, SEP};
use super::{corrupt_value, Failure, Reader, Store, StoreError};

pub(super) const LEDGER: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger");
pub(super) const SEALS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_seals");
pub(super) const LEDGER_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_runs");
pub(super) const LEDGER_ACCOUNTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_accounts");
pub(super) const SNAPSHOT_DIGESTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("snapshot_digests");

/// Where the next entry of a source goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainHead {
    pub next_seq: u64,
    /// The seal of the last entry, as stored.
    pub last_seal: Option<Vec<u8>>,
}

/// One sealed entry and what indexes it.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerWrite {
    pub seq: u64,
    pub entry: Vec<u8>,
    pub seal: Vec<u8>,
    pub kind: &'static str,
    pub run_id: Option<String>,
    /// For a run's entry: each account it names, with what it found for it.
    pub accounts: Vec<(String, Vec<u8>)>,
    /// For a complete run: the source's new snapshot digest state.
    pub snapshot_state: Option<Vec<u8>>,
}

/// Builds a source's next entry once the head of its chain is known: inside the write
/// transaction, so that two writers cannot both append after the same entry.
pub trait Sealer {
    /// The entry after `head`; a run commit passes the run's record, whose id the store
    /// may only now have given it.
    fn seal(&self, head: &ChainHead, run: Option<&super::RunRecord>)
        -> Result<LedgerWrite, String>;
}

/// A stored entry: its sequence number, bytes and seal bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub seq: u64,
    pub entry: Vec<u8>,
    pub seal: Vec<u8>,
}

fn seq_key(source: &str, seq: u64) -> String {
    format!("{source}{SEP}{seq:012}")
}

fn parse_seq(text: &str) -> Result<u64, Failure> {
    text.parse().map_err(|_| corrupt_value("ledger key"))
}

/// The head of a source's chain, read in a write transaction.
pub(super) fn head_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
) -> Result<ChainHead, Failure> {
    let seals = store.guard.call(|| txn.open_table(SEALS))?;
    last_seal(store, &seals, source)
}

fn last_seal(
    store: &Store,
    seals: &impl ReadableTable<&'static str, &'static [u8]>,
    source: &str,
) -> Result<ChainHead, Failure> {
    let prefix = codec::source_prefix(source);
    let end = codec::prefix_end(&prefix);
    let mut range = store
        .guard
        .call(|| seals.range(prefix.as_str()..end.as_str()))?;
    match store.guard.call(|| range.next_back().transpose())? {
        None => Ok(ChainHead::default()),
        Some((key, value)) => Ok(ChainHead {
            next_seq: parse_seq(&key.value()[prefix.len()..])? + 1,
            last_seal: Some(value.value().to_vec()),
        }),
    }
}

/// Appends one entry in the caller's write transaction.
pub(super) fn append_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
    run: Option<&super::RunRecord>,
    sealer: &dyn Sealer,
) -> Result<(), Failure> {
    let head = head_in(store, txn, source)?;
    let write = sealer
        .seal(&head, run)
        .map_err(|reason| Failure::Store(StoreError::Aborted(reason)))?;
    if write.seq != head.next_seq {
        return Err(Failure::Store(StoreError::Aborted(format!(
            "ledger entry {} of source `{source}` does not follow entry {}",
            write.seq, head.next_seq
        ))));
    }
    let guard = &store.guard;
    let key = seq_key(source, write.seq);
    let mut entries = guard.call(|| txn.open_table(LEDGER))?;
    guard.call(|| entries.insert(key.as_str(), write.entry.as_slice()))?;
    let mut seals = guard.call(|| txn.open_table(SEALS))?;
    guard.call(|| seals.insert(key.as_str(), write.seal.as_slice()))?;
    if let Some(run_id) = &write.run_id {
        let mut runs = guard.call(|| txn.open_table(LEDGER_RUNS))?;
        let index = format!("{source}{SEP}{run_id}{SEP}{:012}", write.seq);
        guard.call(|| runs.insert(index.as_str(), write.kind.as_bytes()))?;
        let mut accounts = guard.call(|| txn.open_table(LEDGER_ACCOUNTS))?;
        for (uid, found) in &write.accounts {
            let index = format!("{source}{SEP}{uid}{SEP}{run_id}");
            guard.call(|| accounts.insert(index.as_str(), found.as_slice()))?;
        }
    }
    if let Some(state) = &write.snapshot_state {
        let mut digests = guard.call(|| txn.open_table(SNAPSHOT_DIGESTS))?;
        guard.call(|| digests.insert(source, state.as_slice()))?;
    }
    Ok(())
}

impl Store {
    /// Appends one entry to a source's chain in its own write transaction.
    pub fn append_ledger(&self, source: &str, sealer: &dyn Sealer) -> Result<(), StoreError> {
        self.append_ledger_batch(source, &[sealer])
    }

    /// Appends entries to a source's chain, in order, in one write transaction.
    pub fn append_ledger_batch(
        &self,
        source: &str,
        sealers: &[&dyn Sealer],
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            for sealer in sealers {
                append_in(self, txn, source, None, *sealer)?;
            }
            Ok(())
        })
    }
}

impl Reader<'_> {
    /// The head of a source's chain (an empty chain before the ledger's first entry, and in a
    /// database from before the ledger).
    pub fn chain_head(&self, source: &str) -> Result<ChainHead, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        match self.optional_table(SEALS).map_err(fail)? {
            None => Ok(ChainHead::default()),
            Some(seals) => last_seal(self.store, &seals, source).map_err(fail),
        }
    }

    /// A source's entries from `from_seq` on, in order.
    pub fn ledger_entries(
        &self,
        source: &str,
        from_seq: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<LedgerRow, StoreError>> + '_>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let (Some(entries), Some(seals)) = (
            self.optional_table(LEDGER).map_err(fail)?,
            self.optional_table(SEALS).map_err(fail)?,
        ) else {
            return Ok(Box::new(std::iter::empty()));
        };
        let prefix = codec::source_prefix(source);
        let start = seq_key(source, from_seq);
        let end = codec::prefix_end(&prefix);
        let mut range = self
            .store
            .guard
            .call(|| entries.range(start.as_str()..end.as_str()))
            .map_err(fail)?;
        let guard = self.store.guard.clone();
        let path = self.store.path.clone();
        Ok(Box::new(std::iter::from_fn(move || {
            let fail = |failure: Failure| failure.into_store_error(&path);
            let row = match guard.call(|| range.next().transpose()) {
                Ok(row) => row?,
                Err(failure) => return Some(Err(fail(failure))),
            };
            let (key, value) = row;
            let result = (|| {
                let seq = parse_seq(&key.value()[prefix.len()..])?;
                let seal = guard
                    .call(|| seals.get(key.value()))?
                    .ok_or_else(|| corrupt_value("ledger seal"))?;
                Ok(LedgerRow {
                    seq,
                    entry: value.value().to_vec(),
                    seal: seal.value().to_vec(),
                })
            })();
            Some(result.map_err(fail))
        })))
    }

    /// One entry by its sequence number.
    pub fn ledger_entry(&self, source: &str, seq: u64) -> Result<Option<LedgerRow>, StoreError> {
        let mut entries = self.ledger_entries(source, seq)?;
        match entries.next().transpose()? {
            Some(entry) if entry.seq == seq => Ok(Some(entry)),
            _ => Ok(None),
        }
    }

    /// The sequence numbers and kinds of a run's entries, in order.
    pub fn run_entries(
        &self,
        source: &str,
        run_id: &str,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let prefix = format!("{source}{SEP}{run_id}{SEP}");
        self.optional_rows(LEDGER_RUNS, &prefix)?
            .into_iter()
            .map(|(seq, kind)| {
                let seq = parse_seq(&seq)
                    .map_err(|failure| failure.into_store_error(&self.store.path))?;
                Ok((seq, String::from_utf8_lossy(&kind).into_owned()))
            })
            .collect()
    }

    /// The runs whose entries name an account, oldest first, with what each found for it.
    pub fn account_runs(
        &self,
        source: &str,
        uid: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.optional_rows(LEDGER_ACCOUNTS, &format!("{source}{SEP}{uid}{SEP}"))
    }

    /// The LtHash state of the source's latest complete run, once the ledger has one.
    pub fn snapshot_state(&self, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let Some(table) = self.optional_table(SNAPSHOT_DIGESTS).map_err(fail)? else {
            return Ok(None);
        };
        let value = self.store.guard.call(|| table.get(source)).map_err(fail)?;
        Ok(value.map(|value| value.value().to_vec()))
    }

    /// The rows under a prefix of a table that a database from before the ledger lacks.
    fn optional_rows(
        &self,
        definition: TableDefinition<&'static str, &'static [u8]>,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        if self.optional_table(definition).map_err(fail)?.is_none() {
            return Ok(Vec::new());
        }
        self.rows(definition, prefix, prefix.len())?.collect()
    }
}
