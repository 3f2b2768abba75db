//! Directory ingest envelopes: one JSON line per record that was created, updated or deleted
//! in a run, in the order accounts, groups, memberships, each sorted by external id.
//!
//! An envelope is emitted exactly when a record's material hash changes (see
//! [`crate::run::record`]); its `hash` is that material hash, and `previous_hash` is the hash of
//! the last envelope emitted for the record (for a record that comes back after a deletion,
//! the deletion's, a scope exit included). A source's first run, its only baseline, starts
//! every chain: its envelopes carry no `previous_hash`. Records and payloads carry no volatile fields, so an envelope file can be
//! rebuilt from the store byte for byte.
//!
//! The file is written while the run is planned, to a temporary file beside its final name,
//! and renamed into place (after fsync) before the run commits.
//!
//! Openlane's payload sets ([`OpenlaneWriter`]) project a run's changes, which are not the
//! source's complete record set (`snapshotComplete: false`), or a run's whole snapshot
//! ([`crate::output::snapshot`], the only output marked complete).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::run::record::{hex_hash, FieldChange, Hash, RecordKind};
use crate::store::EnvelopeSummary;

pub const INTEGRATION: &str = "authentik";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    /// What a record's old and new material hashes say happened; `None` when it is unchanged.
    pub fn classify(old: Option<&Hash>, new: Option<&Hash>) -> Option<Action> {
        match (old, new) {
            (None, Some(_)) => Some(Action::Created),
            (Some(_), None) => Some(Action::Deleted),
            (Some(old), Some(new)) if old != new => Some(Action::Updated),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schema {
    DirectoryAccount,
    DirectoryGroup,
    DirectoryMembership,
}

impl Schema {
    pub fn of(kind: RecordKind) -> Schema {
        match kind {
            RecordKind::Account => Schema::DirectoryAccount,
            RecordKind::Group => Schema::DirectoryGroup,
            RecordKind::Membership => Schema::DirectoryMembership,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: Schema,
    pub action: Action,
    pub source: String,
    pub integration: String,
    pub run_id: String,
    pub observed_at: DateTime<Utc>,
    pub primary_directory: bool,
    pub external_id: String,
    /// Why a record that did not change upstream has an envelope: `out_of_scope` (a
    /// `deleted` record that left the source's scope but still exists), `in_scope` (a
    /// `created` one that entered it) or `restated` (an `updated` one whose material content
    /// is the same under a changed `ignore_fields` or record format). Absent for an upstream
    /// change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    pub record: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<FieldChange>>,
}

/// What every envelope of a run shares.
#[derive(Debug, Clone)]
pub struct EnvelopeContext<'a> {
    pub source: &'a str,
    pub run_id: &'a str,
    pub observed_at: DateTime<Utc>,
    pub primary_directory: bool,
}

/// One record's change, as the planner classified it. Record and payload are canonical
/// JSON, written as they are.
pub struct RecordChange<'r> {
    pub kind: RecordKind,
    pub external_id: &'r str,
    pub action: Action,
    /// See [`Envelope::reason`].
    pub reason: Option<&'static str>,
    /// The record the envelope carries: the new one, or for a deletion the last one with the
    /// status `DELETED`.
    pub record: &'r RawValue,
    pub payload: &'r RawValue,
    pub hash: Hash,
    pub previous_hash: Option<Hash>,
    pub changes: Option<&'r [FieldChange]>,
}

/// The serialized form of an [`Envelope`], borrowing its parts: same fields, same order. A
/// line of a full snapshot has the same shape, with [`Presence`] for its action.
#[derive(Serialize)]
struct EnvelopeLine<'a, A> {
    schema: Schema,
    action: A,
    source: &'a str,
    integration: &'a str,
    run_id: &'a str,
    observed_at: DateTime<Utc>,
    primary_directory: bool,
    external_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_hash: Option<String>,
    record: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<&'a [FieldChange]>,
}

/// The action of a line of a run's full snapshot: the record is there, which is no change.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum Presence {
    Snapshot,
}

impl EnvelopeContext<'_> {
    /// One line of the envelope file, with its line break.
    pub fn line(&self, change: &RecordChange<'_>) -> Vec<u8> {
        line_bytes(&EnvelopeLine {
            schema: Schema::of(change.kind),
            action: change.action,
            source: self.source,
            integration: INTEGRATION,
            run_id: self.run_id,
            observed_at: self.observed_at,
            primary_directory: self.primary_directory,
            external_id: change.external_id,
            reason: change.reason,
            hash: hex_hash(&change.hash),
            previous_hash: change.previous_hash.as_ref().map(hex_hash),
            record: change.record,
            payload: (change.payload.get() != "null").then_some(change.payload),
            changes: change.changes,
        })
    }

    /// One line of a run's full snapshot (see [`crate::output::snapshot`]): the record as the
    /// run saw it, action `snapshot`, its material hash, without a chain or changes.
    pub fn snapshot_line(
        &self,
        kind: RecordKind,
        external_id: &str,
        record: &RawValue,
        payload: &RawValue,
        hash: &Hash,
    ) -> Vec<u8> {
        line_bytes(&EnvelopeLine {
            schema: Schema::of(kind),
            action: Presence::Snapshot,
            source: self.source,
            integration: INTEGRATION,
            run_id: self.run_id,
            observed_at: self.observed_at,
            primary_directory: self.primary_directory,
            external_id,
            reason: None,
            hash: hex_hash(hash),
            previous_hash: None,
            record,
            payload: (payload.get() != "null").then_some(payload),
            changes: None,
        })
    }
}

/// A line as JSON, with its line break.
fn line_bytes<A: Serialize>(line: &EnvelopeLine<'_, A>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).expect("an envelope serializes into memory");
    bytes.push(b'\n');
    bytes
}

/// Streams envelopes to a temporary file beside `path`, hashing as it goes.
pub struct EnvelopeWriter {
    path: PathBuf,
    file: BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    summary: EnvelopeSummary,
}

impl EnvelopeWriter {
    /// The temporary file is named `.<file name>.<random>`, after the file it becomes, so that
    /// one a killed process left behind says whose it was ([`temp_envelope_run_id`]).
    pub fn create(path: &Path) -> std::io::Result<EnvelopeWriter> {
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::config::state_dir::create_private_dir(dir)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let file = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(dir)?;
        Ok(EnvelopeWriter {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            hasher: Sha256::new(),
            summary: EnvelopeSummary::default(),
        })
    }

    pub fn push(&mut self, action: Action, line: &[u8]) -> std::io::Result<()> {
        self.hasher.update(line);
        self.file.write_all(line)?;
        self.summary.lines += 1;
        match action {
            Action::Created => self.summary.created += 1,
            Action::Updated => self.summary.updated += 1,
            Action::Deleted => self.summary.deleted += 1,
        }
        Ok(())
    }

    /// Flushes and fsyncs the file, and returns it with its summary; nothing is at `path` yet.
    pub fn finish(self) -> std::io::Result<EnvelopeFile> {
        let file = self.file.into_inner().map_err(|error| error.into_error())?;
        file.as_file().sync_all()?;
        let mut summary = self.summary;
        summary.sha256 = hex::encode(self.hasher.finalize());
        Ok(EnvelopeFile {
            path: self.path,
            file,
            summary,
        })
    }
}

/// A complete envelope file, not yet in place.
pub struct EnvelopeFile {
    path: PathBuf,
    file: tempfile::NamedTempFile,
    pub summary: EnvelopeSummary,
}

impl EnvelopeFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the file to its final name and makes the rename durable.
    /// The written envelopes, from the start, without putting the file in place (a dry run
    /// prints them and drops the file).
    pub fn read_back(&self) -> std::io::Result<std::fs::File> {
        self.file.reopen()
    }

    pub fn persist(self) -> std::io::Result<PathBuf> {
        self.file.persist(&self.path).map_err(|error| error.error)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
        Ok(self.path)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of what `reader` holds, read in pieces: a file of any size in bounded memory.
pub fn sha256_of(reader: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

pub fn envelope_path(state_dir: &Path, source: &str, run_id: &str) -> PathBuf {
    envelope_dir(state_dir, source).join(format!("{run_id}.jsonl"))
}

/// The directory of a source's envelope files (its outbox).
pub fn envelope_dir(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join("envelopes").join(source)
}

/// The run whose envelope file `file_name` (in an envelope directory) is, or is the
/// temporary file of ([`EnvelopeWriter::create`]); `None` for any other name.
pub fn envelope_run_id(file_name: &str) -> Option<&str> {
    let run_id = match file_name.strip_prefix('.') {
        Some(temporary) => temporary.split_once(".jsonl.")?.0,
        None => file_name.strip_suffix(".jsonl")?,
    };
    ulid::Ulid::from_string(run_id).is_ok().then_some(run_id)
}

/// Writes `bytes` so that `path` holds either nothing or the whole content, even after a
/// crash: a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A bare file name's parent is the empty path, which names no directory: the current one.
    let dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::config::state_dir::create_private_dir(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|error| error.error)?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn parse_jsonl(bytes: &[u8]) -> Result<Vec<Envelope>, serde_json::Error> {
    bytes
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(serde_json::from_slice)
        .collect()
}

/// Openlane's payload sets, written as they are produced: one set per schema in the order
/// accounts, groups, memberships, every set present (empty or not), each envelope one
/// [`openlane_entry`]. `snapshotComplete` on every set says whether they are the source's
/// complete record set (a run's whole snapshot), from which a consumer may infer removals,
/// or a part of it (a run's changes), from which it must not.
pub struct OpenlaneWriter<W: Write> {
    out: W,
    snapshot_complete: bool,
    /// The source's primary-directory flag as the run recorded it: it describes the source,
    /// not a record, so it is on each set (`primaryDirectory`), as on each aksync envelope.
    primary_directory: bool,
    /// How many sets are opened so far, in [`RecordKind::ALL`]'s order; the last is open.
    opened: usize,
    /// How many envelopes the open set has.
    in_set: u64,
    written: u64,
}

impl<W: Write> OpenlaneWriter<W> {
    pub fn start(
        mut out: W,
        snapshot_complete: bool,
        primary_directory: bool,
    ) -> std::io::Result<OpenlaneWriter<W>> {
        out.write_all(b"[")?;
        Ok(OpenlaneWriter {
            out,
            snapshot_complete,
            primary_directory,
            opened: 0,
            in_set: 0,
            written: 0,
        })
    }

    /// Adds an envelope to the set of `schema`, which is never one before the open set's.
    pub fn push(&mut self, schema: Schema, entry: &Value) -> std::io::Result<()> {
        let index = RecordKind::ALL
            .iter()
            .position(|kind| Schema::of(*kind) == schema)
            .unwrap_or(RecordKind::ALL.len());
        if index + 1 < self.opened {
            return Err(std::io::Error::other(format!(
                "a {schema:?} envelope after a later schema's: the envelopes are not in the order accounts, groups, memberships"
            )));
        }
        while self.opened <= index {
            self.open_next()?;
        }
        self.out
            .write_all(if self.in_set == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut self.out, entry)?;
        self.in_set += 1;
        self.written += 1;
        Ok(())
    }

    /// Closes the open set and opens the next one.
    fn open_next(&mut self) -> std::io::Result<()> {
        self.close_set()?;
        if self.opened > 0 {
            self.out.write_all(b",\n")?;
        }
        let schema = Schema::of(RecordKind::ALL[self.opened]);
        write!(
            self.out,
            "{{\"schema\":{},\"snapshotComplete\":{},\"primaryDirectory\":{},\"envelopes\":[",
            serde_json::to_string(&schema)?,
            self.snapshot_complete,
            self.primary_directory
        )?;
        self.opened += 1;
        self.in_set = 0;
        Ok(())
    }

    fn close_set(&mut self) -> std::io::Result<()> {
        match (self.opened, self.in_set) {
            (0, _) => Ok(()),
            (_, 0) => self.out.write_all(b"]}"),
            _ => self.out.write_all(b"\n]}"),
        }
    }

    /// Writes the sets not opened yet and the end; returns how many envelopes were written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        while self.opened < RecordKind::ALL.len() {
            self.open_next()?;
        }
        self.close_set()?;
        self.out.write_all(b"]\n")?;
        self.out.flush()?;
        Ok(self.written)
    }
}

/// One record in Openlane's shape: `{resource, payload}`, with the `action` of a change (a
/// snapshot has none). A membership's resource is its group and its payload carries the
/// member uid; another record's payload is the raw Authentik object (its record without
/// one).
pub fn openlane_entry(
    schema: Schema,
    external_id: &str,
    record: &Value,
    payload: Option<&Value>,
    action: Option<Action>,
) -> Value {
    let mut entry = match schema {
        Schema::DirectoryMembership => json!({
            "resource": record["group_external_id"],
            "payload": {
                "uid": record["account_external_id"],
                "group": record["group_external_id"],
                "role": record["role"],
            },
        }),
        Schema::DirectoryAccount | Schema::DirectoryGroup => json!({
            "resource": external_id,
            "payload": payload.unwrap_or(record),
        }),
    };
    if let Some(action) = action {
        entry["action"] = json!(action);
    }
    entry
}

impl Envelope {
    /// The change this envelope tells, in Openlane's shape.
    pub fn openlane_entry(&self) -> Value {
        openlane_entry(
            self.schema,
            &self.external_id,
            &self.record,
            self.payload.as_ref(),
            Some(self.action),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::value::RawValue;

    fn context() -> EnvelopeContext<'static> {
        EnvelopeContext {
            source: "corp",
            run_id: "R2",
            observed_at: Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap(),
            primary_directory: true,
        }
    }

    #[test]
    fn the_hashes_say_what_happened() {
        let (a, b) = ([1; 32], [2; 32]);
        assert_eq!(Action::classify(None, Some(&a)), Some(Action::Created));
        assert_eq!(Action::classify(Some(&a), None), Some(Action::Deleted));
        assert_eq!(Action::classify(Some(&a), Some(&b)), Some(Action::Updated));
        assert_eq!(Action::classify(Some(&a), Some(&a)), None);
        assert_eq!(Action::classify(None, None), None);
    }

    fn raw(value: Value) -> Box<RawValue> {
        crate::run::record::raw(crate::canonical::canonical_json(&value))
    }

    #[test]
    fn a_line_is_the_envelope_it_describes() {
        let record = raw(json!({"external_id": "u1", "status": "DELETED"}));
        let payload = raw(json!({"uid": "u1"}));
        let line = context().line(&RecordChange {
            reason: None,
            kind: RecordKind::Account,
            external_id: "u1",
            action: Action::Deleted,
            record: &record,
            payload: &payload,
            hash: [3; 32],
            previous_hash: Some([4; 32]),
            changes: None,
        });
        assert!(line.ends_with(b"\n"));
        let envelope: Envelope = serde_json::from_slice(&line).unwrap();
        assert_eq!(envelope.record["status"], "DELETED");
        assert_eq!(envelope.hash, hex_hash(&[3; 32]));
        assert_eq!(envelope.previous_hash, Some(hex_hash(&[4; 32])));
        assert_eq!(envelope.payload, Some(json!({"uid": "u1"})));
        // The borrowed form serializes exactly as the owned one.
        let mut owned = serde_json::to_vec(&envelope).unwrap();
        owned.push(b'\n');
        assert_eq!(owned, line);
    }

    #[test]
    fn streamed_files_hash_what_they_hold_and_project_to_openlane() {
        let dir = tempfile::tempdir().unwrap();
        let path = envelope_path(dir.path(), "corp", "R1");
        let mut writer = EnvelopeWriter::create(&path).unwrap();
        let account = raw(json!({"external_id": "u1"}));
        let account_payload = raw(json!({"uid": "u1"}));
        let membership =
            raw(json!({"account_external_id": "u1", "group_external_id": "g", "role": "MEMBER"}));
        let null = raw(Value::Null);
        let lines = [
            context().line(&RecordChange {
                reason: None,
                kind: RecordKind::Account,
                external_id: "u1",
                action: Action::Created,
                record: &account,
                payload: &account_payload,
                hash: [1; 32],
                previous_hash: None,
                changes: None,
            }),
            context().line(&RecordChange {
                reason: None,
                kind: RecordKind::Membership,
                external_id: "u1:g",
                action: Action::Created,
                record: &membership,
                payload: &null,
                hash: [2; 32],
                previous_hash: None,
                changes: None,
            }),
        ];
        for line in &lines {
            writer.push(Action::Created, line).unwrap();
        }
        let file = writer.finish().unwrap();
        assert!(!path.exists(), "nothing is in place before persist");
        let summary = file.summary.clone();
        file.persist().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(summary.sha256, sha256_hex(&bytes));
        assert_eq!((summary.lines, summary.created), (2, 2));
        let envelopes = parse_jsonl(&bytes).unwrap();
        assert_eq!(envelopes.len(), 2);
        assert!(envelopes[1].payload.is_none());
        let mut out = Vec::new();
        let mut sets = OpenlaneWriter::start(&mut out, false, true).unwrap();
        for envelope in &envelopes {
            sets.push(envelope.schema, &envelope.openlane_entry())
                .unwrap();
        }
        assert_eq!(sets.finish().unwrap(), 2);
        let projection: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(projection[0]["envelopes"][0]["payload"]["uid"], "u1");
        assert_eq!(projection[0]["envelopes"][0]["action"], "created");
        assert_eq!(projection[1]["schema"], "DirectoryGroup");
        assert_eq!(projection[1]["envelopes"], json!([]));
        assert_eq!(projection[2]["envelopes"][0]["resource"], "g");
        assert_eq!(projection[2]["envelopes"][0]["payload"]["uid"], "u1");
        for set in projection.as_array().unwrap() {
            assert_eq!(set["snapshotComplete"], false);
        }
        // Sets come in their order: an account after a membership is refused, not mixed in.
        let mut sets = OpenlaneWriter::start(Vec::new(), false, false).unwrap();
        sets.push(Schema::DirectoryMembership, &json!({})).unwrap();
        assert!(sets.push(Schema::DirectoryAccount, &json!({})).is_err());
    }

    #[test]
    fn atomic_write_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = envelope_path(dir.path(), "corp", "R1");
        write_atomic(&path, b"one\n").unwrap();
        write_atomic(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    /// A temporary envelope file names its run, as the file it becomes does; other names
    /// name none.
    #[test]
    fn an_envelope_file_and_its_temporary_file_name_their_run() {
        let dir = tempfile::tempdir().unwrap();
        let run_id = "01M93BQCY74PMXX67PJ6X1EC5B";
        let path = envelope_path(dir.path(), "corp", run_id);
        let writer = EnvelopeWriter::create(&path).unwrap();
        let temporary = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .next()
            .unwrap();
        assert_eq!(envelope_run_id(&temporary), Some(run_id));
        writer.finish().unwrap().persist().unwrap();
        assert_eq!(envelope_run_id(&format!("{run_id}.jsonl")), Some(run_id));
        for other in [
            ".tmpL70Q05",
            "notes.jsonl",
            "R1.jsonl",
            ".R1.jsonl.abc",
            "x.json",
        ] {
            assert_eq!(envelope_run_id(other), None, "{other}");
        }
    }
}
