//! The byte layout of the store's keys and rows.
//!
//! Keys are strings whose parts are joined by `␟` (U+001F), which occurs in no source name and
//! no Authentik id, so a prefix scan finds one source's records of one kind, sorted by
//! external id. Rows that runs read for every record are small fixed-layout binary values, so
//! that a run that changes nothing parses no JSON; only a version's entry is JSON.

use crate::run::record::{Hash, RecordKind};

/// Separates the parts of a key.
pub const SEP: char = '\u{1f}';
/// Run ids are ULIDs: 26 characters.
pub const RUN_ID_LEN: usize = 26;
/// The format byte of a current row.
const CURRENT_FORMAT: u8 = 2;
const NO_RUN: [u8; RUN_ID_LEN] = [0; RUN_ID_LEN];

/// `source␟kind␟`: the prefix of every record key of one kind.
pub fn kind_prefix(source: &str, kind: RecordKind) -> String {
    format!("{source}{SEP}{}{SEP}", kind.as_str())
}

/// `source␟`: the prefix of every key of one source in the per-source tables.
pub fn source_prefix(source: &str) -> String {
    format!("{source}{SEP}")
}

/// `source␟kind␟external_id`.
pub fn record_key(source: &str, kind: RecordKind, external_id: &str) -> String {
    format!("{}{external_id}", kind_prefix(source, kind))
}

/// `source␟kind␟external_id␟valid_from`.
pub fn version_key(record_key: &str, valid_from: &str) -> String {
    format!("{record_key}{SEP}{valid_from}")
}

/// The smallest key after every key that starts with `prefix` (which ends in [`SEP`]).
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix[..prefix.len() - SEP.len_utf8()].to_string();
    end.push(char::from_u32(SEP as u32 + 1).expect("valid char"));
    end
}

/// `external_id␟valid_from`, the part of a version key after its kind prefix.
pub fn split_version_key(rest: &str) -> Option<(&str, &str)> {
    rest.rsplit_once(SEP)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError;

fn run_id_bytes(run_id: &str) -> Result<[u8; RUN_ID_LEN], DecodeError> {
    run_id.as_bytes().try_into().map_err(|_| DecodeError)
}

fn run_id_of(bytes: &[u8]) -> Result<Option<String>, DecodeError> {
    if bytes == NO_RUN {
        return Ok(None);
    }
    std::str::from_utf8(bytes)
        .map(|id| Some(id.to_string()))
        .map_err(|_| DecodeError)
}

/// The format byte of a version row. Schema 2 (format 2) appended the entry to the row, so a
/// scan of the versions read every record's content; schema 3 keeps the entry in its own
/// table under the same key.
pub const VERSION_FORMAT: u8 = 3;

/// One stored version's row: `[format][valid_to or zeros][material hash][flags]`. Its entry
/// (`{"record": …, "payload": …}`) is stored under the same key in the `entries` table.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    pub valid_to: Option<String>,
    pub hash: Hash,
    pub flags: Flags,
}

pub const VERSION_LEN: usize = 1 + RUN_ID_LEN + 32 + 1;

pub fn encode_version(hash: &Hash, flags: Flags) -> [u8; VERSION_LEN] {
    let mut out = [0; VERSION_LEN];
    out[0] = VERSION_FORMAT;
    out[1 + RUN_ID_LEN..VERSION_LEN - 1].copy_from_slice(hash);
    out[VERSION_LEN - 1] = flags.0;
    out
}

pub fn decode_version(bytes: &[u8]) -> Result<VersionRow, DecodeError> {
    if bytes.len() != VERSION_LEN || bytes[0] != VERSION_FORMAT {
        return Err(DecodeError);
    }
    Ok(VersionRow {
        valid_to: run_id_of(&bytes[1..1 + RUN_ID_LEN])?,
        hash: bytes[1 + RUN_ID_LEN..VERSION_LEN - 1]
            .try_into()
            .map_err(|_| DecodeError)?,
        flags: Flags(bytes[VERSION_LEN - 1]),
    })
}

/// The version's `valid_to`, read without decoding the rest.
pub fn version_valid_to(bytes: &[u8]) -> Result<Option<String>, DecodeError> {
    decode_version(bytes).map(|row| row.valid_to)
}

/// Closes a version: the same row with `valid_to` set.
pub fn close_version(bytes: &[u8], run_id: &str) -> Result<[u8; VERSION_LEN], DecodeError> {
    decode_version(bytes)?;
    let mut closed: [u8; VERSION_LEN] = bytes.try_into().map_err(|_| DecodeError)?;
    closed[1..1 + RUN_ID_LEN].copy_from_slice(&run_id_bytes(run_id)?);
    Ok(closed)
}

/// A schema-2 version row split into the schema-3 row and its entry: the header kept its
/// layout, only the format byte and where the entry lives changed.
pub fn split_v2_version(bytes: &[u8]) -> Result<([u8; VERSION_LEN], &[u8]), DecodeError> {
    const V2_FORMAT: u8 = 2;
    if bytes.len() < VERSION_LEN || bytes[0] != V2_FORMAT {
        return Err(DecodeError);
    }
    let mut row: [u8; VERSION_LEN] = bytes[..VERSION_LEN].try_into().map_err(|_| DecodeError)?;
    row[0] = VERSION_FORMAT;
    decode_version(&row)?;
    Ok((row, &bytes[VERSION_LEN..]))
}

/// Bits of an account's state that population counts need without reading its version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    pub const ACTIVE: u8 = 1;
    pub const SUPERUSER: u8 = 2;
    /// The record holds RBAC roles of its own.
    pub const ROLES: u8 = 4;
    /// The record is in the directory but outside the source's scope (its `filter` or
    /// `group_filter`, or for a membership, either end): stored as part of the whole
    /// directory, left out of diffs, envelopes, reports and `show` by default. Versions
    /// stored before scopes existed never have it: what was outside the filter was not kept.
    pub const OUT_OF_SCOPE: u8 = 8;

    pub fn active(self) -> bool {
        self.0 & Self::ACTIVE != 0
    }

    pub fn superuser(self) -> bool {
        self.0 & Self::SUPERUSER != 0
    }

    pub fn roles(self) -> bool {
        self.0 & Self::ROLES != 0
    }

    pub fn in_scope(self) -> bool {
        self.0 & Self::OUT_OF_SCOPE == 0
    }

    /// The same flags with the scope bit set from `in_scope`.
    pub fn with_scope(self, in_scope: bool) -> Flags {
        match in_scope {
            true => Flags(self.0 & !Self::OUT_OF_SCOPE),
            false => Flags(self.0 | Self::OUT_OF_SCOPE),
        }
    }

    /// The flags of a stored record: an `ACTIVE` status, `is_superuser`, and roles.
    pub fn of(record: &serde_json::Value) -> Flags {
        let mut flags = 0;
        if record["status"] == "ACTIVE" {
            flags |= Self::ACTIVE;
        }
        if record["is_superuser"] == true {
            flags |= Self::SUPERUSER;
        }
        if record["roles"]
            .as_array()
            .is_some_and(|roles| !roles.is_empty())
        {
            flags |= Self::ROLES;
        }
        Flags(flags)
    }
}

/// Where the current version of a record is, and what a run compares without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentRow {
    pub valid_from: [u8; RUN_ID_LEN],
    pub hash: Hash,
    pub volatile_digest: u64,
    pub flags: Flags,
}

const CURRENT_LEN: usize = 1 + RUN_ID_LEN + 32 + 8 + 1;

impl CurrentRow {
    pub fn new(
        valid_from: &str,
        hash: Hash,
        volatile_digest: u64,
        flags: Flags,
    ) -> Result<CurrentRow, DecodeError> {
        Ok(CurrentRow {
            valid_from: run_id_bytes(valid_from)?,
            hash,
            volatile_digest,
            flags,
        })
    }

    pub fn valid_from(&self) -> &str {
        std::str::from_utf8(&self.valid_from).unwrap_or_default()
    }

    pub fn encode(&self) -> [u8; CURRENT_LEN] {
        let mut out = [0; CURRENT_LEN];
        out[0] = CURRENT_FORMAT;
        out[1..1 + RUN_ID_LEN].copy_from_slice(&self.valid_from);
        out[1 + RUN_ID_LEN..1 + RUN_ID_LEN + 32].copy_from_slice(&self.hash);
        out[1 + RUN_ID_LEN + 32..CURRENT_LEN - 1]
            .copy_from_slice(&self.volatile_digest.to_le_bytes());
        out[CURRENT_LEN - 1] = self.flags.0;
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CurrentRow, DecodeError> {
        if bytes.len() != CURRENT_LEN || bytes[0] != CURRENT_FORMAT {
            return Err(DecodeError);
        }
        let valid_from: [u8; RUN_ID_LEN] = bytes[1..1 + RUN_ID_LEN]
            .try_into()
            .map_err(|_| DecodeError)?;
        std::str::from_utf8(&valid_from).map_err(|_| DecodeError)?;
        Ok(CurrentRow {
            valid_from,
            hash: bytes[1 + RUN_ID_LEN..1 + RUN_ID_LEN + 32]
                .try_into()
                .map_err(|_| DecodeError)?,
            volatile_digest: u64::from_le_bytes(
                bytes[1 + RUN_ID_LEN + 32..CURRENT_LEN - 1]
                    .try_into()
                    .map_err(|_| DecodeError)?,
            ),
            flags: Flags(bytes[CURRENT_LEN - 1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "01JDX0000000000000000000AA";
    const LATER: &str = "01JDX0000000000000000000AB";

    #[test]
    fn versions_round_trip_and_close_in_place() {
        let hash = [7; 32];
        let bytes = encode_version(&hash, Flags(Flags::SUPERUSER));
        let row = decode_version(&bytes).unwrap();
        assert_eq!(row.valid_to, None);
        assert_eq!(row.hash, hash);
        assert!(row.flags.superuser());
        let closed = close_version(&bytes, LATER).unwrap();
        assert_eq!(version_valid_to(&closed).unwrap().as_deref(), Some(LATER));
        assert_eq!(decode_version(&closed).unwrap().hash, hash);
        assert!(decode_version(b"{json}").is_err());
        assert!(close_version(&bytes, "short").is_err());
    }

    #[test]
    fn schema_2_rows_split_into_row_and_entry() {
        let hash = [9; 32];
        let mut v2 = vec![2];
        v2.extend_from_slice(LATER.as_bytes());
        v2.extend_from_slice(&hash);
        v2.push(Flags::ACTIVE);
        v2.extend_from_slice(br#"{"record":{}}"#);
        let (row, entry) = split_v2_version(&v2).unwrap();
        assert_eq!(entry, br#"{"record":{}}"#);
        assert_eq!(
            decode_version(&row).unwrap(),
            VersionRow {
                valid_to: Some(LATER.to_string()),
                hash,
                flags: Flags(Flags::ACTIVE),
            }
        );
        assert!(
            split_v2_version(&row).is_err(),
            "a schema-3 row is not split again"
        );
    }

    #[test]
    fn current_rows_round_trip() {
        let row = CurrentRow::new(RUN, [3; 32], 42, Flags(Flags::ACTIVE)).unwrap();
        let decoded = CurrentRow::decode(&row.encode()).unwrap();
        assert_eq!(decoded, row);
        assert_eq!(decoded.valid_from(), RUN);
        assert!(decoded.flags.active() && !decoded.flags.superuser());
        assert!(CurrentRow::decode(&row.encode()[1..]).is_err());
    }

    #[test]
    fn keys_sort_by_source_kind_and_id() {
        let prefix = kind_prefix("corp", RecordKind::Account);
        let key = record_key("corp", RecordKind::Account, "u1");
        assert!(key.starts_with(&prefix) && key < prefix_end(&prefix));
        let version = version_key(&key, RUN);
        assert_eq!(
            split_version_key(&version[prefix.len()..]),
            Some(("u1", RUN))
        );
    }
}
