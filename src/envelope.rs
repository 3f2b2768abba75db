//! Directory ingest envelopes: one JSON line per record that was created, updated (a material
//! change) or deleted between two snapshots, in the order accounts, groups, memberships. The
//! plan is a pure function; writing the file is atomic (temp file, fsync, rename).
//!
//! `hash` covers a record's material content only: volatile fields (`last_login_at`, a
//! group's `member_count`) and ignored fields are left out, so a login alone changes no hash
//! and `previous_hash` always equals the hash of the last envelope sent for that record.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::diff::{account_changes, group_field_changes, FieldChange};
use crate::normalize::{Entry, Snapshot};
use crate::store::EnvelopeSummary;

pub const INTEGRATION: &str = "authentik";
const DELETED_STATUS: &str = "DELETED";
/// Fields that change without a change in access; they never make an envelope.
const VOLATILE_FIELDS: [&str; 2] = ["last_login_at", "member_count"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schema {
    DirectoryAccount,
    DirectoryGroup,
    DirectoryMembership,
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
pub struct EnvelopeContext<'a> {
    pub source: &'a str,
    pub run_id: &'a str,
    pub observed_at: DateTime<Utc>,
    pub primary_directory: bool,
    pub ignore_fields: &'a [String],
}

/// The envelopes of the changes from `from` to `to`. The first run of a source compares
/// with an empty snapshot, so every record is `created`.
pub fn plan(from: &Snapshot, to: &Snapshot, context: &EnvelopeContext<'_>) -> Vec<Envelope> {
    let mut envelopes = Vec::new();
    plan_kind(
        Schema::DirectoryAccount,
        &from.accounts,
        &to.accounts,
        context,
        |before, after| {
            let mut changes = account_changes(before, after, context.ignore_fields);
            if before.status != after.status {
                changes.insert(
                    0,
                    FieldChange {
                        field: "status".into(),
                        old: json!(before.status),
                        new: json!(after.status),
                    },
                );
            }
            changes
        },
        &mut envelopes,
    );
    plan_kind(
        Schema::DirectoryGroup,
        &from.groups,
        &to.groups,
        context,
        |before, after| group_field_changes(before, after, context.ignore_fields),
        &mut envelopes,
    );
    plan_kind(
        Schema::DirectoryMembership,
        &from.memberships,
        &to.memberships,
        context,
        // A membership is its identity: it is only ever created or deleted.
        |_, _| Vec::new(),
        &mut envelopes,
    );
    envelopes
}

fn plan_kind<R: Serialize>(
    schema: Schema,
    from: &std::collections::BTreeMap<String, Entry<R>>,
    to: &std::collections::BTreeMap<String, Entry<R>>,
    context: &EnvelopeContext<'_>,
    changes_of: impl Fn(&R, &R) -> Vec<FieldChange>,
    envelopes: &mut Vec<Envelope>,
) {
    let envelope = |action, external_id: &str, entry: &Entry<R>, previous: Option<&Entry<R>>| {
        let mut record = serde_json::to_value(&entry.record).unwrap_or(Value::Null);
        if action == Action::Deleted {
            record["status"] = json!(DELETED_STATUS);
        }
        let hash = record_hash(&record, context.ignore_fields);
        let previous_hash = previous.map(|previous| {
            record_hash(
                &serde_json::to_value(&previous.record).unwrap_or(Value::Null),
                context.ignore_fields,
            )
        });
        Envelope {
            schema,
            action,
            source: context.source.to_string(),
            integration: INTEGRATION.to_string(),
            run_id: context.run_id.to_string(),
            observed_at: context.observed_at,
            primary_directory: context.primary_directory,
            external_id: external_id.to_string(),
            hash,
            previous_hash,
            record,
            payload: (!entry.payload.is_null()).then(|| entry.payload.clone()),
            changes: None,
        }
    };
    for (external_id, entry) in to {
        match from.get(external_id) {
            None => envelopes.push(envelope(Action::Created, external_id, entry, None)),
            Some(before) => {
                let changes = changes_of(&before.record, &entry.record);
                if !changes.is_empty() {
                    let mut updated = envelope(Action::Updated, external_id, entry, Some(before));
                    updated.changes = Some(changes);
                    envelopes.push(updated);
                }
            }
        }
    }
    for (external_id, entry) in from {
        if !to.contains_key(external_id) {
            envelopes.push(envelope(Action::Deleted, external_id, entry, Some(entry)));
        }
    }
}

/// SHA-256 of the canonical JSON (sorted keys) of a record without volatile or ignored
/// fields.
fn record_hash(record: &Value, ignore_fields: &[String]) -> String {
    let mut material = record.clone();
    if let Some(object) = material.as_object_mut() {
        for field in VOLATILE_FIELDS
            .iter()
            .copied()
            .chain(ignore_fields.iter().map(String::as_str))
        {
            match field.split_once('.') {
                Some(("metadata", key)) => {
                    if let Some(metadata) =
                        object.get_mut("metadata").and_then(Value::as_object_mut)
                    {
                        metadata.remove(key);
                    }
                }
                _ => {
                    object.remove(field);
                }
            }
        }
    }
    sha256_hex(material.to_string().as_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One JSON object per line, each line ending in `\n`.
pub fn to_jsonl(envelopes: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::new();
    for envelope in envelopes {
        serde_json::to_writer(&mut out, envelope).expect("envelopes serialize");
        out.push(b'\n');
    }
    out
}

pub fn summary(envelopes: &[Envelope], file: &[u8]) -> EnvelopeSummary {
    let count = |action| envelopes.iter().filter(|e| e.action == action).count() as u64;
    EnvelopeSummary {
        sha256: sha256_hex(file),
        lines: envelopes.len() as u64,
        created: count(Action::Created),
        updated: count(Action::Updated),
        deleted: count(Action::Deleted),
    }
}

pub fn envelope_path(state_dir: &Path, source: &str, run_id: &str) -> PathBuf {
    state_dir
        .join("envelopes")
        .join(source)
        .join(format!("{run_id}.jsonl"))
}

/// Writes `bytes` so that `path` holds either nothing or the whole content, even after a
/// crash: a temporary file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::store::create_private_dir(dir)?;
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

/// Openlane's payload-set projection: one set per schema, in the order accounts, groups,
/// memberships, each envelope `{resource, payload}`. A membership's resource is its group
/// and its payload carries the member uid.
pub fn openlane_projection(envelopes: &[Envelope], snapshot_complete: bool) -> Value {
    let sets: Vec<Value> = [
        Schema::DirectoryAccount,
        Schema::DirectoryGroup,
        Schema::DirectoryMembership,
    ]
    .into_iter()
    .map(|schema| {
        let items: Vec<Value> = envelopes
            .iter()
            .filter(|envelope| envelope.schema == schema)
            .map(|envelope| match schema {
                Schema::DirectoryMembership => json!({
                    "resource": envelope.record["group_external_id"],
                    "action": envelope.action,
                    "payload": {
                        "uid": envelope.record["account_external_id"],
                        "group": envelope.record["group_external_id"],
                        "role": envelope.record["role"],
                    },
                }),
                _ => json!({
                    "resource": envelope.external_id,
                    "action": envelope.action,
                    "payload": envelope.payload.clone().unwrap_or_else(|| envelope.record.clone()),
                }),
            })
            .collect();
        json!({"schema": schema, "envelopes": items, "snapshotComplete": snapshot_complete})
    })
    .collect();
    Value::Array(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use chrono::TimeZone;

    fn user(pk: i64, active: bool, name: &str, login: &str, groups: &[&str]) -> Value {
        json!({"pk": pk, "username": format!("u{pk}"), "name": name, "is_active": active,
               "last_login": login, "groups": groups, "email": "", "attributes": {},
               "uid": format!("uid{pk}"), "path": "users", "type": "internal"})
    }

    fn group(pk: &str, users: &[i64]) -> Value {
        json!({"pk": pk, "name": pk, "parents": [], "users": users, "attributes": {}})
    }

    fn context() -> EnvelopeContext<'static> {
        EnvelopeContext {
            source: "corp",
            run_id: "R2",
            observed_at: Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap(),
            primary_directory: true,
            ignore_fields: &[],
        }
    }

    #[test]
    fn only_changed_records_with_actions_and_hash_chain() {
        let from = normalize(
            vec![
                user(1, true, "A", "t1", &["g"]),
                user(2, true, "B", "t1", &[]),
                user(3, true, "C", "t1", &[]),
            ],
            Some(vec![group("g", &[1])]),
            true,
        )
        .unwrap();
        let to = normalize(
            // 1 logs in (volatile), 2 deactivated, 3 deleted, 4 created and joins g.
            vec![
                user(1, true, "A", "t2", &["g"]),
                user(2, false, "B", "t1", &[]),
                user(4, true, "D", "t1", &["g"]),
            ],
            Some(vec![group("g", &[1, 4])]),
            true,
        )
        .unwrap();
        let envelopes = plan(&from, &to, &context());
        let summary: Vec<(Schema, Action, &str)> = envelopes
            .iter()
            .map(|e| (e.schema, e.action, e.external_id.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Schema::DirectoryAccount, Action::Updated, "uid2"),
                (Schema::DirectoryAccount, Action::Created, "uid4"),
                (Schema::DirectoryAccount, Action::Deleted, "uid3"),
                (Schema::DirectoryMembership, Action::Created, "uid4:g"),
            ]
        );
        let updated = &envelopes[0];
        assert_eq!(updated.changes.as_ref().unwrap()[0].field, "status");
        let first_run = plan(&Snapshot::default(), &from, &context());
        let uid2_created = first_run.iter().find(|e| e.external_id == "uid2").unwrap();
        assert_eq!(
            updated.previous_hash.as_deref(),
            Some(uid2_created.hash.as_str())
        );
        let deleted = &envelopes[2];
        assert_eq!(deleted.record["status"], "DELETED");
        assert!(deleted.previous_hash.is_some());
        assert!(deleted.payload.is_some());
        assert!(envelopes[3].payload.is_none());
        assert!(plan(&to, &to, &context()).is_empty());
        assert_eq!(first_run.len(), 3 + 1 + 1);
        assert!(first_run.iter().all(|e| e.action == Action::Created));
    }

    #[test]
    fn jsonl_round_trips_and_openlane_projection_shapes() {
        let to = normalize(
            vec![user(1, true, "A", "t", &["g"])],
            Some(vec![group("g", &[1])]),
            false,
        )
        .unwrap();
        let envelopes = plan(&Snapshot::default(), &to, &context());
        let bytes = to_jsonl(&envelopes);
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 3);
        assert_eq!(parse_jsonl(&bytes).unwrap(), envelopes);
        let projection = openlane_projection(&envelopes, true);
        assert_eq!(projection[0]["schema"], "DirectoryAccount");
        assert_eq!(projection[0]["envelopes"][0]["resource"], "uid1");
        assert_eq!(projection[0]["envelopes"][0]["payload"]["uid"], "uid1");
        assert_eq!(projection[2]["envelopes"][0]["resource"], "g");
        assert_eq!(projection[2]["envelopes"][0]["payload"]["uid"], "uid1");
        assert_eq!(summary(&envelopes, &bytes).created, 3);
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
}
