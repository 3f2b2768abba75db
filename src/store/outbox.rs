//! Where each source's webhook outbox starts, so that a delivery pass, the status page and
//! the daemon after every run read the runs that still wait for delivery (and those after
//! them), never the source's whole history.
//!
//! The meta key `delivered_through␟<source>` names a run such that no run of the source up to
//! it waits for delivery. It moves forward past runs that are settled (delivered, skipped,
//! parked, failed, or without envelopes to deliver) in the transaction that settles them or
//! that commits the next run, and back when an admin retries an older run. A database
//! without the key (from before it) is walked from its first run once. An older aksync that
//! does not know the key only ever adds runs after it, which are still found.

use redb::{ReadableTable, WriteTransaction};

use super::codec::{self, SEP};
use super::read::RunLookups;
use super::{
    from_json, Failure, Reader, RunRecord, RunStatus, Store, StoreError, LATEST, META, RUNS,
    SOURCE_RUNS,
};
use crate::store::DeliveryStatus;

fn mark_key(source: &str) -> String {
    format!("delivered_through{SEP}{source}")
}

/// Whether a run's envelopes still wait for the webhook.
fn waits(run: &RunRecord) -> bool {
    run.delivery
        .as_ref()
        .is_some_and(|delivery| delivery.status == DeliveryStatus::Pending)
}

impl Store {
    /// The runs of `source` whose envelopes wait for delivery, oldest first. Reads the runs
    /// after the source's outbox mark only.
    pub fn undelivered_runs(&self, source: &str) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|reader| {
            let mark = reader.outbox_mark(source)?;
            let ids = reader.run_ids_where(source, mark.as_deref(), None, false, &mut |_| true)?;
            let mut waiting = Vec::new();
            for (id, status) in ids {
                if status != RunStatus::Complete {
                    continue;
                }
                let run = reader.run(&id)?;
                if waits(&run) {
                    waiting.push(run);
                }
            }
            Ok(waiting)
        })
    }

    /// Every source with a complete run (the only runs with envelopes), by name.
    pub fn sources_with_runs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|reader| {
            let latest = reader.table(LATEST)?;
            let mut rows = self.guard.call(|| latest.iter())?;
            let mut names = Vec::new();
            while let Some((source, _)) = self.guard.call(|| rows.next().transpose())? {
                names.push(source.value().to_string());
            }
            Ok(names)
        })
    }

    /// The newest `count` runs of a source, of any status, newest first.
    pub fn recent_runs(&self, source: &str, count: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.read(|reader| {
            reader
                .run_ids_where(source, None, None, true, &mut |ids| ids.len() < count)?
                .iter()
                .map(|(id, _)| reader.run(id))
                .collect()
        })
    }
}

impl Reader<'_> {
    fn outbox_mark(&self, source: &str) -> Result<Option<String>, Failure> {
        let meta = self.table(META)?;
        let key = mark_key(source);
        Ok(self
            .store
            .guard
            .call(|| meta.get(key.as_str()))?
            .map(|value| String::from_utf8_lossy(value.value()).into_owned()))
    }
}

/// Keeps the source's outbox mark true after `changed` (a run just stored or rewritten) in
/// the caller's write transaction: back before it if it waits again, then forward past every
/// settled run. Costs the runs it moves past, and one more.
pub(super) fn settle_mark(
    store: &Store,
    txn: &WriteTransaction,
    changed: &RunRecord,
) -> Result<(), Failure> {
    let guard = &store.guard;
    let source = changed.source.as_str();
    let key = mark_key(source);
    let mut meta = guard.call(|| txn.open_table(META))?;
    let stored = guard
        .call(|| meta.get(key.as_str()))?
        .map(|value| String::from_utf8_lossy(value.value()).into_owned());
    let mut mark = stored.clone();
    let index = guard.call(|| txn.open_table(SOURCE_RUNS))?;
    let runs = guard.call(|| txn.open_table(RUNS))?;
    let prefix = codec::source_prefix(source);
    if waits(changed) && mark.as_deref() >= Some(changed.run_id.as_str()) {
        // The run before it, if any.
        let own = format!("{prefix}{}", changed.run_id);
        let mut before = guard.call(|| index.range(prefix.as_str()..own.as_str()))?;
        mark = guard
            .call(|| before.next_back().transpose())?
            .map(|(key, _)| key.value()[prefix.len()..].to_string());
    }
    let start = match &mark {
        Some(mark) => std::ops::Bound::Excluded(format!("{prefix}{mark}")),
        None => std::ops::Bound::Included(prefix.clone()),
    };
    let end = codec::prefix_end(&prefix);
    let bounds = (
        start.as_ref().map(String::as_str),
        std::ops::Bound::Excluded(end.as_str()),
    );
    let mut after = guard.call(|| index.range::<&str>(bounds))?;
    while let Some((key, status)) = guard.call(|| after.next().transpose())? {
        let id = &key.value()[prefix.len()..];
        if RunStatus::from_index(status.value()) == Some(RunStatus::Complete) {
            let record: RunRecord = match guard.call(|| runs.get(id))? {
                Some(value) => from_json(value.value(), "run")?,
                None => break,
            };
            if waits(&record) {
                break;
            }
        }
        mark = Some(id.to_string());
    }
    drop(after);
    if mark != stored {
        match &mark {
            Some(mark) => guard.call(|| meta.insert(key.as_str(), mark.as_bytes()))?,
            None => guard.call(|| meta.remove(key.as_str()))?,
        };
    }
    Ok(())
}
