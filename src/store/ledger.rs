//! The ledger's tables: entries with their seals, appended and never rewritten, the indexes
//! that find an account's runs and names without a scan, and the running snapshot digest of
//! each source. A run's record names the sequence number of its entry (`ledger_seq`), so a
//! run's entries need no index of their own: they are its entry and the entries after it up
//! to the source's next run. What an entry means is [`crate::ledger`]'s business; the store
//! keeps bytes and appends them in the caller's write transaction, after the entry before.
//!
//! A failed run's commit touches one ledger table, so that it still fits where a full disk
//! left only a few free pages.
//!
//! | table | key | value |
//! |---|---|---|
//! | `ledger` | `source␟seq` (12 digits) | the seal's length, the seal, the entry (canonical JSON) |
//! | `ledger_accounts` | `source␟uid␟run_id` | what the run found for the account |
//! | `ledger_names` | `source␟name␟uid` | nothing: the usernames and emails an account had |
//! | `snapshot_digests` | source | the LtHash state of the latest complete run |
//! | `privileged_now` | source | the privileged accounts of the latest complete run (JSON) |

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::codec::{self, SEP};
use super::{corrupt_value, Failure, Reader, RunRecord, Store, StoreError};

pub(super) const LEDGER: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger");
pub(super) const LEDGER_ACCOUNTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_accounts");
pub(super) const LEDGER_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_names");
pub(super) const SNAPSHOT_DIGESTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("snapshot_digests");
pub(super) const PRIVILEGED_NOW: TableDefinition<&str, &[u8]> =
    TableDefinition::new("privileged_now");

/// What the store keeps of a source's latest complete run for the next run to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptState {
    /// The LtHash of its snapshot.
    SnapshotDigest,
    /// Its privileged accounts.
    Privileged,
}

impl KeptState {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            KeptState::SnapshotDigest => SNAPSHOT_DIGESTS,
            KeptState::Privileged => PRIVILEGED_NOW,
        }
    }
}

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
    /// For a run's entry: each account it names, with what it found for it.
    pub accounts: Vec<(String, Vec<u8>)>,
    /// `(username or email, uid)` of the accounts the run saw change or appear, so that an
    /// account's history can be found by any name it had.
    pub names: Vec<(String, String)>,
    /// For a complete run: what the next run starts from.
    pub source_state: Vec<(KeptState, Vec<u8>)>,
}

/// Builds a source's next entry once the head of its chain is known: inside the write
/// transaction, so that two writers cannot both append after the same entry.
pub trait Sealer {
    /// The entry after `head`; a run commit passes the run's record as it is stored (with
    /// its id and `ledger_seq`).
    fn seal(&self, head: &ChainHead, run: Option<&RunRecord>) -> Result<LedgerWrite, String>;
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

/// `[seal length][seal][entry]`.
fn encode_row(seal: &[u8], entry: &[u8]) -> Result<Vec<u8>, Failure> {
    let length = u8::try_from(seal.len()).map_err(|_| corrupt_value("ledger seal"))?;
    let mut row = Vec::with_capacity(1 + seal.len() + entry.len());
    row.push(length);
    row.extend_from_slice(seal);
    row.extend_from_slice(entry);
    Ok(row)
}

fn decode_row(seq: u64, bytes: &[u8]) -> Result<LedgerRow, Failure> {
    let (&length, rest) = bytes
        .split_first()
        .ok_or_else(|| corrupt_value("ledger entry"))?;
    if rest.len() < length as usize {
        return Err(corrupt_value("ledger entry"));
    }
    let (seal, entry) = rest.split_at(length as usize);
    Ok(LedgerRow {
        seq,
        entry: entry.to_vec(),
        seal: seal.to_vec(),
    })
}

/// The head of a source's chain, read in a write transaction.
pub(super) fn head_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
) -> Result<ChainHead, Failure> {
    let entries = store.guard.call(|| txn.open_table(LEDGER))?;
    last_entry(store, &entries, source)
}

fn last_entry(
    store: &Store,
    entries: &impl ReadableTable<&'static str, &'static [u8]>,
    source: &str,
) -> Result<ChainHead, Failure> {
    let prefix = codec::source_prefix(source);
    let end = codec::prefix_end(&prefix);
    let mut range = store
        .guard
        .call(|| entries.range(prefix.as_str()..end.as_str()))?;
    match store.guard.call(|| range.next_back().transpose())? {
        None => Ok(ChainHead::default()),
        Some((key, value)) => {
            let seq = parse_seq(&key.value()[prefix.len()..])?;
            Ok(ChainHead {
                next_seq: seq + 1,
                last_seal: Some(decode_row(seq, value.value())?.seal),
            })
        }
    }
}

/// Appends one entry in the caller's write transaction, after `head` (which the caller read
/// in the same transaction).
pub(super) fn append_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
    head: &ChainHead,
    run: Option<&RunRecord>,
    sealer: &dyn Sealer,
) -> Result<(), Failure> {
    let write = sealer
        .seal(head, run)
        .map_err(|reason| Failure::Store(StoreError::Aborted(reason)))?;
    if write.seq != head.next_seq {
        return Err(Failure::Store(StoreError::Aborted(format!(
            "ledger entry {} of source `{source}` does not follow entry {}",
            write.seq, head.next_seq
        ))));
    }
    let guard = &store.guard;
    let key = seq_key(source, write.seq);
    let row = encode_row(&write.seal, &write.entry)?;
    let mut entries = guard.call(|| txn.open_table(LEDGER))?;
    guard.call(|| entries.insert(key.as_str(), row.as_slice()))?;
    if let (Some(run), false) = (run, write.accounts.is_empty()) {
        let mut accounts = guard.call(|| txn.open_table(LEDGER_ACCOUNTS))?;
        for (uid, found) in &write.accounts {
            let index = format!("{source}{SEP}{uid}{SEP}{}", run.run_id);
            guard.call(|| accounts.insert(index.as_str(), found.as_slice()))?;
        }
    }
    if !write.names.is_empty() {
        let mut names = guard.call(|| txn.open_table(LEDGER_NAMES))?;
        for (name, uid) in &write.names {
            let index = format!("{source}{SEP}{name}{SEP}{uid}");
            guard.call(|| names.insert(index.as_str(), [].as_slice()))?;
        }
    }
    for (kind, state) in &write.source_state {
        let mut table = guard.call(|| txn.open_table(kind.table()))?;
        guard.call(|| table.insert(source, state.as_slice()))?;
    }
    Ok(())
}

/// Removes a source's entries before `seq` (retention of evidence) in the caller's write
/// transaction, with the account index rows of `run_ids`, the runs they were about.
pub(super) fn remove_before_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
    seq: u64,
    run_ids: &[String],
) -> Result<(), Failure> {
    let guard = &store.guard;
    let start = codec::source_prefix(source);
    let end = seq_key(source, seq);
    let mut entries = guard.call(|| txn.open_table(LEDGER))?;
    guard.call(|| entries.retain_in(start.as_str()..end.as_str(), |_, _| false))?;
    let mut accounts = guard.call(|| txn.open_table(LEDGER_ACCOUNTS))?;
    let removed: std::collections::BTreeSet<&str> = run_ids.iter().map(String::as_str).collect();
    let end = codec::prefix_end(&start);
    guard.call(|| {
        accounts.retain_in(start.as_str()..end.as_str(), |key, _| {
            !key.rsplit_once(SEP)
                .is_some_and(|(_, run)| removed.contains(run))
        })
    })?;
    Ok(())
}

impl Store {
    /// Appends one entry to a source's chain in its own write transaction.
    pub fn append_ledger(&self, source: &str, sealer: &dyn Sealer) -> Result<(), StoreError> {
        self.append_ledger_batch(source, &[sealer])
    }

    /// Appends the entries of runs stored before the ledger existed, in order, in one write
    /// transaction: each run's record is given the `ledger_seq` of its entry.
    pub fn append_run_entries(
        &self,
        source: &str,
        runs: &[(&str, &dyn Sealer)],
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            for (run_id, sealer) in runs {
                let head = head_in(self, txn, source)?;
                // The record as it is now (its delivery may have moved on meanwhile).
                let mut record = super::WriteReader { store: self, txn }.run(run_id)?;
                record.ledger_seq = Some(head.next_seq);
                super::WriteTables::open(self, txn)?.put_run(&record)?;
                append_in(self, txn, source, &head, Some(&record), *sealer)?;
            }
            Ok(())
        })
    }

    /// Appends entries to a source's chain, in order, in one write transaction.
    fn append_ledger_batch(&self, source: &str, sealers: &[&dyn Sealer]) -> Result<(), StoreError> {
        self.write(|txn| {
            for sealer in sealers {
                let head = head_in(self, txn, source)?;
                append_in(self, txn, source, &head, None, *sealer)?;
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
        match self.optional_table(LEDGER).map_err(fail)? {
            None => Ok(ChainHead::default()),
            Some(entries) => last_entry(self.store, &entries, source).map_err(fail),
        }
    }

    /// A source's entries from `from_seq` on, in order.
    pub fn ledger_entries(
        &self,
        source: &str,
        from_seq: u64,
    ) -> Result<Box<dyn Iterator<Item = Result<LedgerRow, StoreError>> + '_>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let Some(entries) = self.optional_table(LEDGER).map_err(fail)? else {
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
            let row = match guard.call(|| range.next().transpose()) {
                Ok(row) => row?,
                Err(failure) => return Some(Err(failure.into_store_error(&path))),
            };
            let (key, value) = row;
            let row = parse_seq(&key.value()[prefix.len()..])
                .and_then(|seq| decode_row(seq, value.value()));
            Some(row.map_err(|failure| failure.into_store_error(&path)))
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

    /// The runs whose entries name an account, oldest first, with what each found for it.
    pub fn account_runs(
        &self,
        source: &str,
        uid: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.optional_rows(LEDGER_ACCOUNTS, &format!("{source}{SEP}{uid}{SEP}"))
    }

    /// The uids of the accounts that ever had `name` as username or email.
    pub fn accounts_named(&self, source: &str, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .optional_rows(LEDGER_NAMES, &format!("{source}{SEP}{name}{SEP}"))?
            .into_iter()
            .map(|(uid, _)| uid)
            .collect())
    }

    /// What the store keeps of the source's latest complete run, once the ledger has it.
    pub fn source_state(
        &self,
        source: &str,
        kind: KeptState,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let fail = |failure: Failure| failure.into_store_error(&self.store.path);
        let Some(table) = self.optional_table(kind.table()).map_err(fail)? else {
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
