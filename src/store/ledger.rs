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
//! | `ledger_heads` | source | the next sequence number and the last entry's seal |
//! | `ledger_accounts` | `source␟uid␟run_id` | what the run found for the account |
//! | `ledger_names` | `source␟name␟uid` | nothing: the usernames and emails an account had |
//! | `ledger_settings` | `source␟run_id` | the keys of the settings the run changed (JSON) |
//! | `ledger_connections` | `source␟seq` | nothing: the entries that connected or disconnected the source |
//! | `ledger_reviews` | `source␟seq` | nothing: the entries that recorded access review decisions |
//! | `snapshot_digests` | source | the LtHash state of the latest complete run |
//! | `privileged_now` | source | the privileged accounts of the latest complete run (JSON) |
//! | `run_settings` | source | the settings of the latest run (JSON) |

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::codec::{self, SEP};
use super::read::RunLookups;
use super::write::{WriteReader, WriteTables};
use super::{corrupt_value, Failure, Reader, RunRecord, Store, StoreError};

pub(super) const LEDGER: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger");
/// Where each chain ends, so that appending reads a few bytes, not the last entry (which
/// can hold a whole baseline).
pub(super) const LEDGER_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_heads");
pub(super) const LEDGER_ACCOUNTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_accounts");
pub(super) const LEDGER_NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_names");
/// The runs that changed settings, so that `history` tells them without reading every entry.
pub(super) const LEDGER_SETTINGS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_settings");
/// The entries that connected or disconnected a source, so that `runs` and reports list them
/// without reading every entry.
pub(super) const LEDGER_CONNECTIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_connections");
/// The entries that recorded access review decisions, so that `review status` finds them
/// without reading every entry.
pub(super) const LEDGER_REVIEWS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("ledger_reviews");

/// The kinds of entry that are found through an index of their own rather than by reading
/// the chain: rare entries among many runs'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMark {
    /// A connection or disconnection of a source.
    Connection,
    /// The decisions of an access review.
    Review,
}

impl EntryMark {
    pub const ALL: [EntryMark; 2] = [EntryMark::Connection, EntryMark::Review];

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            EntryMark::Connection => LEDGER_CONNECTIONS,
            EntryMark::Review => LEDGER_REVIEWS,
        }
    }

    /// What the index lists, in words.
    pub fn what(self) -> &'static str {
        match self {
            EntryMark::Connection => "connections and disconnections",
            EntryMark::Review => "access review decisions",
        }
    }
}
pub(super) const SNAPSHOT_DIGESTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("snapshot_digests");
pub(super) const PRIVILEGED_NOW: TableDefinition<&str, &[u8]> =
    TableDefinition::new("privileged_now");
pub(super) const RUN_SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("run_settings");

/// What the store keeps of a source's latest complete run for the next run to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptState {
    /// The LtHash of its snapshot.
    SnapshotDigest,
    /// Its privileged accounts.
    Privileged,
    /// The settings of the latest run, complete or failed, which the next run's are
    /// compared with.
    Settings,
}

impl KeptState {
    const ALL: [KeptState; 3] = [
        KeptState::SnapshotDigest,
        KeptState::Privileged,
        KeptState::Settings,
    ];

    /// Its name where a quarantined run holds it.
    pub(super) fn name(self) -> &'static str {
        match self {
            KeptState::SnapshotDigest => "snapshot_digest",
            KeptState::Privileged => "privileged",
            KeptState::Settings => "settings",
        }
    }

    pub(super) fn named(name: &str) -> Option<KeptState> {
        KeptState::ALL.into_iter().find(|kind| kind.name() == name)
    }

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            KeptState::SnapshotDigest => SNAPSHOT_DIGESTS,
            KeptState::Privileged => PRIVILEGED_NOW,
            KeptState::Settings => RUN_SETTINGS,
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

/// One sealed entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerWrite {
    pub seq: u64,
    pub entry: Vec<u8>,
    pub seal: Vec<u8>,
}

/// Builds a source's next entry once the head of its chain is known: inside the write
/// transaction, so that two writers cannot both append after the same entry.
pub trait Sealer {
    /// The entry after `head`; a run commit passes the run's record as it is stored (with
    /// its id and `ledger_seq`).
    fn seal(&mut self, head: &ChainHead, run: Option<&RunRecord>) -> Result<LedgerWrite, String>;

    /// Writes what the entry adds beside itself, row by row (a baseline indexes every
    /// account, so nothing collects the rows first).
    fn index(&self, rows: &mut IndexRows<'_>) -> Result<(), IndexError>;
}

/// Why an entry's index rows could not be written: the store's failure, or the caller's
/// (a record it read back for the index).
#[derive(Debug)]
pub struct IndexError(Failure);

impl IndexError {
    pub fn source(reason: String) -> IndexError {
        IndexError(Failure::Store(StoreError::Aborted(reason)))
    }
}

/// Inserts into a table opened on first use: an entry that indexes nothing opens nothing.
fn insert_opening<'t>(
    store: &Store,
    txn: &'t WriteTransaction,
    table: &mut Option<redb::Table<'t, &'static str, &'static [u8]>>,
    definition: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &str,
    value: &[u8],
) -> Result<(), IndexError> {
    let guard = &store.guard;
    let table = match table {
        Some(table) => table,
        None => table.insert(
            guard
                .call(|| txn.open_table(definition))
                .map_err(IndexError)?,
        ),
    };
    guard
        .call(|| table.insert(key, value))
        .map(drop)
        .map_err(IndexError)
}

/// The rows beside an entry, written in its write transaction: the indexes that find an
/// account's runs and names without a scan, and what the next run starts from.
pub struct IndexRows<'t> {
    store: &'t Store,
    txn: &'t WriteTransaction,
    source: &'t str,
    seq: u64,
    run_id: Option<&'t str>,
    /// A quarantined run's entry: what it keeps for the next run is held with its writes
    /// until a decision (see [`super::quarantine`]).
    hold: bool,
    accounts: Option<redb::Table<'t, &'static str, &'static [u8]>>,
    names: Option<redb::Table<'t, &'static str, &'static [u8]>>,
}

impl IndexRows<'_> {
    /// What the entry's run found for an account.
    pub fn account(&mut self, uid: &str, found: &[u8]) -> Result<(), IndexError> {
        let Some(run_id) = self.run_id else {
            return Err(IndexError::source(format!(
                "only a run's entry indexes accounts (account {uid})"
            )));
        };
        let key = format!("{}{SEP}{uid}{SEP}{run_id}", self.source);
        insert_opening(
            self.store,
            self.txn,
            &mut self.accounts,
            LEDGER_ACCOUNTS,
            &key,
            found,
        )
    }

    /// A username or email an account had, so that its history is found by either.
    pub fn name(&mut self, name: &str, uid: &str) -> Result<(), IndexError> {
        let key = format!("{}{SEP}{name}{SEP}{uid}", self.source);
        insert_opening(
            self.store,
            self.txn,
            &mut self.names,
            LEDGER_NAMES,
            &key,
            &[],
        )
    }

    /// The settings the entry's run changed (its entry has them old → new).
    pub fn settings_changed(&mut self, keys: &[u8]) -> Result<(), IndexError> {
        let Some(run_id) = self.run_id else {
            return Err(IndexError::source(
                "only a run's entry changes settings".to_string(),
            ));
        };
        let key = format!("{}{SEP}{run_id}", self.source);
        let mut none = None;
        insert_opening(self.store, self.txn, &mut none, LEDGER_SETTINGS, &key, keys)
    }

    /// The entry is one of the kind `mark` indexes.
    pub fn mark(&mut self, mark: EntryMark) -> Result<(), IndexError> {
        let key = seq_key(self.source, self.seq);
        let mut none = None;
        insert_opening(self.store, self.txn, &mut none, mark.table(), &key, &[])
    }

    /// What the next run of the source starts from.
    pub fn keep(&mut self, kind: KeptState, state: &[u8]) -> Result<(), IndexError> {
        match (self.hold, self.run_id) {
            (true, Some(run_id)) => {
                let key = super::quarantine::keep_key(self.source, run_id, kind);
                let (guard, txn) = (&self.store.guard, self.txn);
                let mut held = guard
                    .call(|| txn.open_table(super::quarantine::HELD))
                    .map_err(IndexError)?;
                guard
                    .call(|| held.insert(key.as_str(), state))
                    .map(drop)
                    .map_err(IndexError)
            }
            _ => keep_in(self.store, self.txn, self.source, kind, state).map_err(IndexError),
        }
    }
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
    let heads = store.guard.call(|| txn.open_table(LEDGER_HEADS))?;
    read_head(store, &heads, source)
}

/// `[next seq: 8 bytes, big-endian][the last entry's seal]`.
fn read_head(
    store: &Store,
    heads: &impl ReadableTable<&'static str, &'static [u8]>,
    source: &str,
) -> Result<ChainHead, Failure> {
    match store.guard.call(|| heads.get(source))? {
        None => Ok(ChainHead::default()),
        Some(value) => {
            let bytes = value.value();
            let (seq, seal) = bytes
                .split_first_chunk::<8>()
                .ok_or_else(|| corrupt_value("ledger head"))?;
            Ok(ChainHead {
                next_seq: u64::from_be_bytes(*seq),
                last_seal: Some(seal.to_vec()),
            })
        }
    }
}

/// Appends one entry in the caller's write transaction, after `head` (which the caller read
/// in the same transaction).
/// Keeps `state` for the source's next run.
pub(super) fn keep_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
    kind: KeptState,
    state: &[u8],
) -> Result<(), Failure> {
    let mut table = store.guard.call(|| txn.open_table(kind.table()))?;
    store.guard.call(|| table.insert(source, state)).map(drop)
}

/// Appends the sealer's entry to the source's chain after `head`, with its index rows; `hold`
/// for a quarantined run's entry (what it keeps for the next run is held).
pub(super) fn append_in(
    store: &Store,
    txn: &WriteTransaction,
    source: &str,
    head: &ChainHead,
    run: Option<&RunRecord>,
    sealer: &mut dyn Sealer,
    hold: bool,
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
    // A baseline's entry can be megabytes: not held in three copies through the rest.
    drop(write.entry);
    let mut entries = guard.call(|| txn.open_table(LEDGER))?;
    guard.call(|| entries.insert(key.as_str(), row.as_slice()))?;
    drop((entries, row));
    let mut heads = guard.call(|| txn.open_table(LEDGER_HEADS))?;
    let head = [&(write.seq + 1).to_be_bytes()[..], &write.seal].concat();
    guard.call(|| heads.insert(source, head.as_slice()))?;
    drop(heads);
    let mut rows = IndexRows {
        store,
        txn,
        source,
        seq: write.seq,
        run_id: run.map(|run| run.run_id.as_str()),
        hold,
        accounts: None,
        names: None,
    };
    sealer
        .index(&mut rows)
        .map_err(|IndexError(failure)| failure)
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
    for table in [LEDGER, LEDGER_CONNECTIONS, LEDGER_REVIEWS] {
        let mut rows = guard.call(|| txn.open_table(table))?;
        guard.call(|| rows.retain_in(start.as_str()..end.as_str(), |_, _| false))?;
    }
    let mut settings = guard.call(|| txn.open_table(LEDGER_SETTINGS))?;
    for run_id in run_ids {
        let key = format!("{source}{SEP}{run_id}");
        guard.call(|| settings.remove(key.as_str()))?;
    }
    drop(settings);
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
    pub fn append_ledger(&self, source: &str, sealer: &mut dyn Sealer) -> Result<(), StoreError> {
        self.write(|txn| {
            let head = head_in(self, txn, source)?;
            append_in(self, txn, source, &head, None, sealer, false)
        })
    }

    /// Appends the entries of runs stored before the ledger existed, in order, in one write
    /// transaction: each run's record is given the `ledger_seq` of its entry.
    pub fn append_run_entries(
        &self,
        source: &str,
        runs: &mut [(&str, &mut dyn Sealer)],
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            for (run_id, sealer) in runs.iter_mut() {
                let head = head_in(self, txn, source)?;
                // The record as it is now (its delivery may have moved on meanwhile).
                let mut record = WriteReader { store: self, txn }.run(run_id)?;
                record.ledger_seq = Some(head.next_seq);
                WriteTables::open(self, txn)?.put_run(&record)?;
                append_in(
                    self,
                    txn,
                    source,
                    &head,
                    Some(&record),
                    &mut **sealer,
                    false,
                )?;
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
        match self.optional_table(LEDGER_HEADS).map_err(fail)? {
            None => Ok(ChainHead::default()),
            Some(heads) => read_head(self.store, &heads, source).map_err(fail),
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

    /// The runs of a source that changed settings, oldest first, with the keys they changed.
    pub fn settings_changing_runs(
        &self,
        source: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.optional_rows(LEDGER_SETTINGS, &codec::source_prefix(source))
    }

    /// The sequence numbers of the entries of the kind `mark` indexes, by source (every
    /// source's, without `source`), in chain order.
    pub fn marked_entries(
        &self,
        mark: EntryMark,
        source: Option<&str>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = source.map(codec::source_prefix).unwrap_or_default();
        self.optional_rows(mark.table(), &prefix)?
            .into_iter()
            .map(|(rest, _)| {
                let key = format!("{prefix}{rest}");
                let (source, seq) = key
                    .rsplit_once(SEP)
                    .ok_or_else(|| corrupt_value("ledger index key"))?;
                Ok((source.to_string(), parse_seq(seq)?))
            })
            .collect::<Result<_, Failure>>()
            .map_err(|failure| failure.into_store_error(&self.store.path))
    }

    /// The sources that have a ledger chain, configured now or not.
    pub fn chained_sources(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .optional_rows(LEDGER_HEADS, "")?
            .into_iter()
            .map(|(source, _)| source)
            .collect())
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
