//! The writes a run plans before its commit: one [`Op`] per record that changed (or whose
//! volatile values moved), spooled to an anonymous temporary file so that a run of any size
//! plans in bounded memory. The commit's write transaction only replays them.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::codec::{CurrentRow, RUN_ID_LEN};
use crate::run::record::{Hash, RecordKind};

/// One planned write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A new version (created, or updated when `replaces` names the version it closes).
    Put {
        kind: RecordKind,
        external_id: String,
        replaces: Option<String>,
        /// What becomes of the record's tombstone.
        tombstone: TombstoneWrite,
        /// The version's entry, `{"record": …, "payload": …}` as JSON; its row is built from
        /// `current` (hash and flags).
        entry: Vec<u8>,
        current: CurrentRow,
        /// The volatile values as JSON, when the kind has any.
        volatile: Option<Vec<u8>>,
    },
    /// The record is gone: its version is closed. When its consumers saw the deletion (it
    /// was in scope), its tombstone becomes `tombstone` and the run's deletions log it;
    /// otherwise the tombstone stays as it was.
    Delete {
        kind: RecordKind,
        external_id: String,
        valid_from: String,
        tombstone: Option<Hash>,
    },
    /// Unchanged, but its volatile values moved: only the current row and the volatile values
    /// are rewritten, no version is added.
    Touch {
        kind: RecordKind,
        external_id: String,
        current: CurrentRow,
        volatile: Vec<u8>,
    },
}

/// A record's tombstone is the hash of the last envelope its consumers saw when that was a
/// deletion (a real one, or the record leaving the scope): what the record chains to if it
/// comes back. Each one set is logged in the run's deletions too, which is how a replay of an
/// older run finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TombstoneWrite {
    Keep,
    /// The record is seen again.
    Clear,
    /// The record left the scope: its consumers saw this deletion hash.
    Set(Hash),
}

/// Counts of what a plan will write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub versions: u64,
    pub deletions: u64,
    pub touches: u64,
}

/// Appends ops to an anonymous temporary file.
pub struct OpWriter {
    file: BufWriter<std::fs::File>,
    counts: OpCounts,
}

impl OpWriter {
    /// The file lives in `dir` (the state directory, so that a large plan does not fill a
    /// small /tmp) and disappears when dropped.
    pub fn new(dir: &Path) -> std::io::Result<OpWriter> {
        Ok(OpWriter {
            file: BufWriter::new(tempfile::tempfile_in(dir)?),
            counts: OpCounts::default(),
        })
    }

    pub fn push(&mut self, op: &Op) -> std::io::Result<()> {
        let out = &mut self.file;
        match op {
            Op::Put {
                kind,
                external_id,
                replaces,
                tombstone,
                entry,
                current,
                volatile,
            } => {
                self.counts.versions += 1;
                out.write_all(&[0, kind_byte(*kind)])?;
                write_bytes(out, external_id.as_bytes())?;
                write_bytes(out, replaces.as_deref().unwrap_or("").as_bytes())?;
                match tombstone {
                    TombstoneWrite::Keep => out.write_all(&[0])?,
                    TombstoneWrite::Clear => out.write_all(&[1])?,
                    TombstoneWrite::Set(hash) => {
                        out.write_all(&[2])?;
                        out.write_all(hash)?;
                    }
                }
                write_bytes(out, entry)?;
                out.write_all(&current.encode())?;
                write_bytes(out, volatile.as_deref().unwrap_or(&[]))?;
                out.write_all(&[u8::from(volatile.is_some())])?;
            }
            Op::Delete {
                kind,
                external_id,
                valid_from,
                tombstone,
            } => {
                self.counts.deletions += 1;
                out.write_all(&[1, kind_byte(*kind)])?;
                write_bytes(out, external_id.as_bytes())?;
                write_bytes(out, valid_from.as_bytes())?;
                out.write_all(&[u8::from(tombstone.is_some())])?;
                out.write_all(tombstone.as_ref().unwrap_or(&[0; 32]))?;
            }
            Op::Touch {
                kind,
                external_id,
                current,
                volatile,
            } => {
                self.counts.touches += 1;
                out.write_all(&[2, kind_byte(*kind)])?;
                write_bytes(out, external_id.as_bytes())?;
                out.write_all(&current.encode())?;
                write_bytes(out, volatile)?;
            }
        }
        Ok(())
    }

    pub fn counts(&self) -> OpCounts {
        self.counts
    }

    /// Flushes and rewinds, for the commit to read.
    pub fn finish(self) -> std::io::Result<Ops> {
        let counts = self.counts;
        let mut file = self.file.into_inner().map_err(|error| error.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Ops {
            file: BufReader::new(file),
            counts,
        })
    }
}

fn read_hash(input: &mut impl Read) -> std::io::Result<Hash> {
    let mut hash = [0u8; 32];
    input.read_exact(&mut hash)?;
    Ok(hash)
}

/// A finished plan, read back in the order it was written.
pub struct Ops {
    file: BufReader<std::fs::File>,
    counts: OpCounts,
}

impl Ops {
    pub fn counts(&self) -> OpCounts {
        self.counts
    }

    /// Plan bytes already written elsewhere (a quarantined run's held ops), at their start.
    pub(super) fn from_file(file: std::fs::File) -> Ops {
        Ops {
            file: BufReader::new(file),
            counts: OpCounts::default(),
        }
    }

    /// The plan's bytes, for holding them as they are.
    pub(super) fn raw(&mut self) -> &mut impl Read {
        &mut self.file
    }

    /// The next op, or `None` at the end.
    pub fn next_op(&mut self) -> std::io::Result<Option<Op>> {
        let mut head = [0u8; 2];
        match self.file.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        self.file.read_exact(&mut head[1..])?;
        let input = &mut self.file;
        let kind = kind_of(head[1])?;
        let op = match head[0] {
            0 => {
                let external_id = read_string(input)?;
                let replaces = Some(read_string(input)?).filter(|id| !id.is_empty());
                let mut tombstone = [0u8];
                input.read_exact(&mut tombstone)?;
                let tombstone = match tombstone[0] {
                    0 => TombstoneWrite::Keep,
                    1 => TombstoneWrite::Clear,
                    2 => TombstoneWrite::Set(read_hash(input)?),
                    _ => return Err(invalid("unknown tombstone write")),
                };
                let entry = read_bytes(input)?;
                let current = read_current(input)?;
                let volatile = read_bytes(input)?;
                let mut has_volatile = [0u8];
                input.read_exact(&mut has_volatile)?;
                Op::Put {
                    kind,
                    external_id,
                    replaces,
                    tombstone,
                    entry,
                    current,
                    volatile: (has_volatile[0] == 1).then_some(volatile),
                }
            }
            1 => {
                let external_id = read_string(input)?;
                let valid_from = read_string(input)?;
                let mut seen = [0u8];
                input.read_exact(&mut seen)?;
                let tombstone = read_hash(input)?;
                Op::Delete {
                    kind,
                    external_id,
                    valid_from,
                    tombstone: (seen[0] == 1).then_some(tombstone),
                }
            }
            2 => Op::Touch {
                kind,
                external_id: read_string(input)?,
                current: read_current(input)?,
                volatile: read_bytes(input)?,
            },
            _ => return Err(invalid("unknown op")),
        };
        Ok(Some(op))
    }
}

fn kind_byte(kind: RecordKind) -> u8 {
    match kind {
        RecordKind::Account => 0,
        RecordKind::Group => 1,
        RecordKind::Membership => 2,
    }
}

fn kind_of(byte: u8) -> std::io::Result<RecordKind> {
    RecordKind::ALL
        .get(byte as usize)
        .copied()
        .ok_or_else(|| invalid("unknown record kind"))
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("plan file: {what}"),
    )
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| invalid("value over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

fn read_bytes(input: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_string(input: &mut impl Read) -> std::io::Result<String> {
    String::from_utf8(read_bytes(input)?).map_err(|_| invalid("invalid UTF-8"))
}

fn read_current(input: &mut impl Read) -> std::io::Result<CurrentRow> {
    let mut bytes = [0u8; 1 + RUN_ID_LEN + 32 + 8 + 1];
    input.read_exact(&mut bytes)?;
    CurrentRow::decode(&bytes).map_err(|_| invalid("current row"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::Flags;

    #[test]
    fn ops_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let current = CurrentRow::new("01JDX0000000000000000000AA", [1; 32], 9, Flags(1)).unwrap();
        let ops = vec![
            Op::Put {
                kind: RecordKind::Account,
                external_id: "u1".into(),
                replaces: Some("01JDX0000000000000000000A9".into()),
                tombstone: TombstoneWrite::Set([7; 32]),
                entry: vec![1, 2, 3],
                current,
                volatile: Some(b"{}".to_vec()),
            },
            Op::Put {
                kind: RecordKind::Membership,
                external_id: "u1:g".into(),
                replaces: None,
                tombstone: TombstoneWrite::Clear,
                entry: vec![4],
                current,
                volatile: None,
            },
            Op::Delete {
                kind: RecordKind::Group,
                external_id: "g".into(),
                valid_from: "01JDX0000000000000000000A9".into(),
                tombstone: Some([3; 32]),
            },
            Op::Delete {
                kind: RecordKind::Group,
                external_id: "h".into(),
                valid_from: "01JDX0000000000000000000A9".into(),
                tombstone: None,
            },
            Op::Put {
                kind: RecordKind::Group,
                external_id: "h".into(),
                replaces: None,
                tombstone: TombstoneWrite::Keep,
                entry: vec![5],
                current,
                volatile: None,
            },
            Op::Touch {
                kind: RecordKind::Account,
                external_id: "u2".into(),
                current,
                volatile: b"{\"x\":1}".to_vec(),
            },
        ];
        let mut writer = OpWriter::new(dir.path()).unwrap();
        for op in &ops {
            writer.push(op).unwrap();
        }
        let mut read = writer.finish().unwrap();
        assert_eq!(
            read.counts(),
            OpCounts {
                versions: 3,
                deletions: 2,
                touches: 1
            }
        );
        let mut back = Vec::new();
        while let Some(op) = read.next_op().unwrap() {
            back.push(op);
        }
        assert_eq!(back, ops);
    }
}
