//! Snapshot digests recomputed from the stored versions, for every complete run at once, in
//! one pass over the versions: each version adds its element at the run it is valid from
//! and removes it at the run that closed it, so the running sum at a run is the digest of
//! exactly the records that run saw. Cost: the versions, plus 2 KiB per run that changed
//! something.

use std::collections::BTreeMap;

use crate::run::record::RecordKind;
use crate::store::{Reader, StoreError};

use super::lthash::LtHash;

/// The snapshot digest of each of `complete_runs` (run ids) that the stored versions still
/// describe exactly: a run older than `exact_from` (the oldest run retention kept the
/// snapshot of) saw versions that are gone, and gets none.
pub fn recompute(
    reader: &Reader<'_>,
    source: &str,
    complete_runs: &[String],
    exact_from: Option<&str>,
) -> Result<BTreeMap<String, LtHash>, StoreError> {
    let mut deltas: BTreeMap<String, LtHash> = BTreeMap::new();
    for kind in RecordKind::ALL {
        for version in reader.versions(source, kind, "")? {
            let version = version?;
            deltas.entry(version.valid_from.clone()).or_default().add(
                kind,
                &version.external_id,
                &version.hash,
            );
            if let Some(valid_to) = &version.valid_to {
                deltas.entry(valid_to.clone()).or_default().remove(
                    kind,
                    &version.external_id,
                    &version.hash,
                );
            }
        }
    }
    let mut found = BTreeMap::new();
    let mut state = LtHash::default();
    let mut deltas = deltas.into_iter().peekable();
    for run_id in complete_runs {
        while let Some((_, delta)) = deltas.next_if(|(at, _)| at <= run_id) {
            state.combine(&delta);
        }
        if exact_from.is_none_or(|from| run_id.as_str() >= from) {
            found.insert(run_id.clone(), state.clone());
        }
    }
    Ok(found)
}
