//! The on-disk spool of one run's normalized records of one kind. Records are appended in
//! the order pages arrive; what stays in memory per record is its external id, material hash,
//! volatile digest, flags and where its bytes are. Sorted by external id once the fetch is
//! complete, the spool is the "new" side of the diff's merge with the stored state.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::{Map, Value};

use crate::canonical::canonical_json;
use crate::run::record::{
    raw, split_volatile, volatile_digest, ChangeRule, Hash, RawEntry, RecordKind,
};
use crate::store::codec::Flags;

/// Where one spooled record is, and what the merge compares without reading it.
#[derive(Debug, Clone)]
pub struct SpoolItem {
    pub external_id: Box<str>,
    pub hash: Hash,
    pub volatile_digest: u64,
    pub flags: Flags,
    offset: u64,
    record_len: u32,
    payload_len: u32,
    volatile_len: u32,
}

/// A spooled record read back: its entry (record and payload as canonical JSON) and its
/// volatile values.
#[derive(Debug, Clone)]
pub struct SpooledRecord {
    pub entry: RawEntry,
    pub volatile: Map<String, Value>,
}

pub struct SpoolWriter {
    kind: RecordKind,
    file: BufWriter<File>,
    written: u64,
    items: Vec<SpoolItem>,
}

impl SpoolWriter {
    /// An anonymous temporary file in `dir`, gone when the spool is dropped.
    pub fn new(dir: &Path, kind: RecordKind) -> std::io::Result<SpoolWriter> {
        Ok(SpoolWriter {
            kind,
            file: BufWriter::with_capacity(256 * 1024, tempfile::tempfile_in(dir)?),
            written: 0,
            items: Vec::new(),
        })
    }

    /// Appends one record (its full JSON, volatile fields included) and its stored payload.
    pub fn push(
        &mut self,
        external_id: &str,
        record: Value,
        payload: Value,
        rule: &ChangeRule<'_>,
        in_scope: bool,
    ) -> std::io::Result<()> {
        let (stored, volatile) = split_volatile(self.kind, record);
        let hash = rule.material_hash(&stored);
        let flags = Flags::of(&stored).with_scope(in_scope);
        let record = canonical_json(&stored);
        let payload = canonical_json(&payload);
        let volatile_bytes = if volatile.is_empty() {
            Vec::new()
        } else {
            canonical_json(&Value::Object(volatile.clone()))
        };
        for part in [&record, &payload, &volatile_bytes] {
            self.file.write_all(part)?;
        }
        let length = |part: &Vec<u8>| {
            u32::try_from(part.len()).map_err(|_| std::io::Error::other("a record over 4 GiB"))
        };
        self.items.push(SpoolItem {
            external_id: external_id.into(),
            hash,
            volatile_digest: volatile_digest(&volatile),
            flags,
            offset: self.written,
            record_len: length(&record)?,
            payload_len: length(&payload)?,
            volatile_len: length(&volatile_bytes)?,
        });
        self.written += (record.len() + payload.len() + volatile_bytes.len()) as u64;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorts the index by external id; the records stay where they are.
    pub fn finish(self) -> std::io::Result<Spool> {
        let file = self.file.into_inner().map_err(|error| error.into_error())?;
        let mut items = self.items;
        items.sort_unstable_by(|a, b| a.external_id.cmp(&b.external_id));
        Ok(Spool { file, items })
    }
}

/// A finished spool: the records sorted by external id.
pub struct Spool {
    file: File,
    items: Vec<SpoolItem>,
}

impl Spool {
    pub fn items(&self) -> &[SpoolItem] {
        &self.items
    }

    pub fn find(&self, external_id: &str) -> Option<&SpoolItem> {
        self.items
            .binary_search_by(|item| (*item.external_id).cmp(external_id))
            .ok()
            .map(|index| &self.items[index])
    }

    pub fn read(&self, item: &SpoolItem) -> std::io::Result<SpooledRecord> {
        let (record_len, payload_len) = (item.record_len as usize, item.payload_len as usize);
        let mut bytes = vec![0; record_len + payload_len + item.volatile_len as usize];
        self.file.read_exact_at(&mut bytes, item.offset)?;
        let volatile = if item.volatile_len == 0 {
            Map::new()
        } else {
            serde_json::from_slice(&bytes[record_len + payload_len..])
                .map_err(std::io::Error::other)?
        };
        Ok(SpooledRecord {
            entry: RawEntry {
                record: raw(bytes[..record_len].to_vec()),
                payload: raw(bytes[record_len..record_len + payload_len].to_vec()),
            },
            volatile,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_come_back_sorted_with_their_volatile_values() {
        let dir = tempfile::tempdir().unwrap();
        let rule = ChangeRule::new(&[]);
        let mut writer = SpoolWriter::new(dir.path(), RecordKind::Account).unwrap();
        for (id, login) in [("u3", "t3"), ("u1", "t1"), ("u2", "t2")] {
            writer
                .push(
                    id,
                    json!({"external_id": id, "status": "ACTIVE", "last_login_at": login}),
                    json!({"uid": id}),
                    &rule,
                    true,
                )
                .unwrap();
        }
        let spool = writer.finish().unwrap();
        let ids: Vec<&str> = spool.items().iter().map(|i| &*i.external_id).collect();
        assert_eq!(ids, ["u1", "u2", "u3"]);
        let item = spool.find("u2").unwrap();
        assert!(item.flags.active());
        let record = spool.read(item).unwrap();
        assert_eq!(record.volatile["last_login_at"], "t2");
        let entry = record.entry;
        assert_eq!(
            entry.record().unwrap(),
            json!({"external_id": "u2", "status": "ACTIVE"})
        );
        assert_eq!(entry.payload().unwrap(), json!({"uid": "u2"}));
        assert_eq!(item.hash, rule.material_hash(&entry.record().unwrap()));
        assert!(spool.find("u9").is_none());
    }
}
