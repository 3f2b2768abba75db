//! Entries for the runs made before the ledger existed (a database of an older schema): each
//! run's evidence is replayed from its stored snapshot through the same planner a sync uses,
//! with the settings configured when the replay happens, and its entry says so
//! (`"backfilled": true`, with those settings). A source is backfilled once, before its
//! first run with the ledger appends to the chain; reports of runs without an entry (a
//! database not yet upgraded, read by a newer binary) replay the same way without storing.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::SourceConfig;
use crate::diff::{AccountRules, DirectoryDiff, GroupChanges, PrivilegedAccount};
use crate::ledger::replay::{census, compare_runs};
use crate::run::record::RecordKind;
use crate::store::{KeptState, RunRecord, RunStatus, Store, StoreError};

use super::entry::{PopulationAtEnd, PrivilegedList, PrivilegedNow, RunEvidence, RunSettings};
use super::lthash::LtHash;
use super::run::{self, Present, RunIndex};
use super::seal::SigningKey;
use super::{snapshot, Body, Pending};

/// A run's evidence replayed now, with today's settings of `source`: the same diff the sync
/// made when the settings have not changed since. `previous_privileged` is the privileged
/// accounts of the run before, which the run's list is kept as a change of; the returned
/// state is what the next run's list changes.
pub fn replay_evidence(
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
    previous_privileged: Option<&PrivilegedNow>,
) -> Result<(RunEvidence, Option<PrivilegedNow>), StoreError> {
    let mut evidence = run::RunContext {
        settings: RunSettings::of(source),
        previous_settings: None,
    }
    .failed(run);
    evidence.backfilled = true;
    if run.status != RunStatus::Complete {
        return Ok((evidence, None));
    }
    let previous = match &run.previous_run {
        None => None,
        Some(id) => match store.run(id) {
            Ok(previous) => Some(previous),
            Err(StoreError::UnknownRun(_)) => {
                evidence.not_replayable = Some(format!(
                    "run {id}, which this run was compared with, was pruned before the ledger existed"
                ));
                return Ok((evidence, None));
            }
            Err(error) => return Err(error),
        },
    };
    let diff = compare_runs(store, source, previous.as_ref(), run, None)?.diff;
    // Counting the privileged accounts reads the snapshot; the diff says when the list of
    // the run before still holds.
    let privileged = match previous_privileged {
        Some(previous) if !privilege_may_have_changed(&diff, &previous.accounts) => {
            previous.accounts.clone()
        }
        _ => census(&store.reader()?, &AccountRules::of(source), run)?.privileged,
    };
    evidence.population = Some(PopulationAtEnd {
        accounts: diff.population.accounts.after,
        active: diff.population.active.after,
        privileged: privileged.len() as u64,
        groups: run.counts.groups,
        memberships: run.counts.memberships,
    });
    let (list, step) = PrivilegedList::step(&run.run_id, privileged, previous_privileged);
    let now = step.map(|step| step.into_now(&list));
    evidence.privileged = Some(list);
    evidence.diff = Some(diff);
    Ok((evidence, now))
}

/// Whether a diff can have changed the list of privileged accounts (who, or how they are
/// named or hold it): a baseline, a grant or removal, a group change, or a change to an
/// account on the list.
fn privilege_may_have_changed(diff: &DirectoryDiff, list: &[PrivilegedAccount]) -> bool {
    let listed = |uid: &str| list.iter().any(|account| account.external_id == uid);
    diff.baseline.is_some()
        || !diff.privilege_granted.is_empty()
        || !diff.privilege_removed.is_empty()
        || diff.groups != GroupChanges::default()
        || diff.movers.iter().any(|mover| listed(&mover.external_id))
}

/// Every username and email of every stored account version: one pass over them.
fn stored_names(
    reader: &crate::store::Reader<'_>,
    source: &str,
) -> Result<std::collections::BTreeSet<(String, String)>, StoreError> {
    let mut names = std::collections::BTreeSet::new();
    for version in reader.versions(source, RecordKind::Account, "")? {
        let version = version?;
        let entry = reader.version(
            source,
            RecordKind::Account,
            &version.external_id,
            &version.valid_from,
        )?;
        let record = entry.record().map_err(|error| {
            reader.corrupt(format_args!("account {}: {error}", version.external_id))
        })?;
        for name in [&record["username"], &record["canonical_email"]] {
            if let Some(name) = name.as_str() {
                names.insert((name.to_string(), version.external_id.clone()));
            }
        }
    }
    Ok(names)
}

/// Backfills the ledger of `source` if it has runs and no entry yet; how many entries it
/// wrote. Under the source's run lock, like a run.
pub fn backfill(
    store: &Store,
    source: &SourceConfig,
    signer: Option<&Arc<SigningKey>>,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    // Every run checks this first: a source with a ledger costs one read, whatever its history.
    if store.reader()?.chain_head(&source.name)?.next_seq > 0 {
        return Ok(0);
    }
    let mut runs = store.runs(Some(&source.name))?;
    if runs.is_empty() {
        return Ok(0);
    }
    runs.reverse();
    tracing::info!(
        source = %source.name,
        runs = runs.len(),
        "backfilling the evidence ledger from the stored snapshots (runs from before the ledger)"
    );
    let complete: Vec<String> = runs
        .iter()
        .filter(|run| run.status == RunStatus::Complete)
        .map(|run| run.run_id.clone())
        .collect();
    let pruned_before = store.pruned_before(&source.name)?;
    let digests = {
        let reader = store.reader()?;
        snapshot::recompute(&reader, &source.name, &complete, pruned_before.as_deref())?
    };
    let reader = store.reader()?;
    let mut pending = Vec::with_capacity(runs.len());
    let mut privileged: Option<PrivilegedNow> = None;
    for record in &runs {
        let (mut evidence, privileged_after) =
            replay_evidence(store, source, record, privileged.as_ref())?;
        evidence.snapshot_digest = digests.get(&record.run_id).map(LtHash::hex);
        if privileged_after.is_some() {
            privileged = privileged_after;
        }
        let index = match &evidence.diff {
            None => RunIndex::default(),
            Some(diff) => {
                let present = match diff.baseline {
                    Some(_) => Some(Present::Uids(
                        reader
                            .heads_at(record, RecordKind::Account)?
                            .map(|head| head.map(|head| head.external_id))
                            .collect::<Result<_, _>>()?,
                    )),
                    None => None,
                };
                RunIndex::of(diff, std::iter::empty(), present)
            }
        };
        let body = Body::Run(Box::new(evidence));
        pending.push(Pending {
            index,
            ..Pending::new(&source.name, now, body, signer.map(Arc::as_ref))
        });
    }
    if let Some(last) = pending.last_mut() {
        // The latest complete run's digest and privileged accounts are where the next run
        // starts from.
        if let Some(digest) = complete.last().and_then(|latest| digests.get(latest)) {
            last.source_state
                .push((KeptState::SnapshotDigest, digest.to_bytes()));
        }
        if let Some(privileged) = &privileged {
            let state = serde_json::to_vec(privileged)
                .map_err(|error| StoreError::Aborted(error.to_string()))?;
            last.source_state.push((KeptState::Privileged, state));
        }
        last.index.names = stored_names(&reader, &source.name)?;
    }
    drop(reader);
    let mut entries: Vec<(&str, &mut dyn crate::store::Sealer)> = runs
        .iter()
        .map(|run| run.run_id.as_str())
        .zip(
            pending
                .iter_mut()
                .map(|entry| entry as &mut dyn crate::store::Sealer),
        )
        .collect();
    store.append_run_entries(&source.name, &mut entries)?;
    Ok(entries.len() as u64)
}
