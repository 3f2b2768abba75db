//! The one rule for "this record changed".
//!
//! A record (account, group or membership) is judged on its **material view**: its normalized
//! fields minus the volatile ones (which change with activity, not with access) and minus the
//! source's `ignore_fields`. The SHA-256 of the view's canonical JSON is the record's
//! **material hash**. A record changed exactly when its material hash changed, and everything
//! else follows from that one comparison: a new stored version, an envelope (whose `hash` is
//! the material hash, so `previous_hash` always equals the hash of the last envelope sent for
//! the record), the diff's joiners/movers/leavers and the report.
//!
//! Volatile values (an account's `last_login_at`, a group's `member_count`) are kept apart:
//! the store holds their latest value without versioning it, so a login adds no version.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::canonical::canonical_json;

/// The three kinds of directory record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Account,
    Group,
    Membership,
}

impl RecordKind {
    /// In the order envelopes and reports list them.
    pub const ALL: [RecordKind; 3] = [
        RecordKind::Account,
        RecordKind::Group,
        RecordKind::Membership,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Account => "account",
            RecordKind::Group => "group",
            RecordKind::Membership => "membership",
        }
    }

    /// Fields that change with activity rather than access. They never make a change on
    /// their own and are not part of a stored version.
    pub fn volatile_fields(self) -> &'static [&'static str] {
        match self {
            RecordKind::Account => &["last_login_at", "last_updated_at"],
            RecordKind::Group => &["member_count"],
            RecordKind::Membership => &[],
        }
    }
}

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Fields that versions stored by earlier releases hold and records no longer have: never a
/// change. `primary_source` describes the source, not the record; it moved to the envelope.
const RETIRED_FIELDS: [&str; 1] = ["primary_source"];

/// The fields of a membership record.
const MEMBERSHIP_FIELDS: [&str; 3] = ["account_external_id", "group_external_id", "role"];

/// A record (without volatile fields) and its kept payload, each as canonical JSON: what a
/// version stores, what a spool holds, and what an envelope carries, moved between them
/// without parsing.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub record: Box<RawValue>,
    pub payload: Box<RawValue>,
}

impl RawEntry {
    pub fn from_values(record: &Value, payload: &Value) -> RawEntry {
        RawEntry {
            record: raw(canonical_json(record)),
            payload: raw(canonical_json(payload)),
        }
    }

    /// A stored entry, `{"payload": …, "record": …}`.
    pub fn parse(bytes: &[u8]) -> Result<RawEntry, serde_json::Error> {
        #[derive(Deserialize)]
        struct Stored {
            record: Box<RawValue>,
            payload: Option<Box<RawValue>>,
        }
        let stored: Stored = serde_json::from_slice(bytes)?;
        Ok(RawEntry {
            record: stored.record,
            payload: stored.payload.unwrap_or_else(|| raw(b"null".to_vec())),
        })
    }

    /// The stored form, canonical when its parts are (its keys are in order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (record, payload) = (self.record.get(), self.payload.get());
        let mut out = Vec::with_capacity(record.len() + payload.len() + 24);
        out.extend_from_slice(br#"{"payload":"#);
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(br#","record":"#);
        out.extend_from_slice(record.as_bytes());
        out.push(b'}');
        out
    }

    pub fn record(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.record.get())
    }

    pub fn payload(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }
}

/// JSON text known to be valid, as a raw value.
pub fn raw(json: Vec<u8>) -> Box<RawValue> {
    let text = String::from_utf8(json).expect("serde_json writes UTF-8");
    RawValue::from_string(text).expect("serde_json writes valid JSON")
}

/// One field whose material value differs between two versions of a record. Metadata is
/// compared key by key, as `metadata.<key>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

/// What the source's settings add to the rule: fields that never make a change on their own,
/// named as the normalized record names them (`display_name`, `metadata.<key>`), which is
/// what configuration resolves `ignore_fields` to (see [`crate::config::fields`]).
#[derive(Debug, Clone, Copy)]
pub struct ChangeRule<'a> {
    ignore_fields: &'a [String],
}

/// The status a deleted record carries in its envelope (and so in its hash).
pub const DELETED_STATUS: &str = "DELETED";

impl<'a> ChangeRule<'a> {
    pub fn new(ignore_fields: &'a [String]) -> ChangeRule<'a> {
        ChangeRule { ignore_fields }
    }

    fn ignored(&self, field: &str) -> bool {
        self.ignore_fields.iter().any(|ignored| ignored == field)
    }

    /// The record as it is judged: without the ignored fields. `stored` is already without
    /// the volatile ones (see [`split_volatile`]).
    pub fn material_view(&self, stored: &Value) -> Value {
        let mut view = stored.clone();
        if let Some(object) = view.as_object_mut() {
            for field in self.ignore_fields {
                match field.split_once('.') {
                    Some(("metadata", key)) => {
                        if let Some(metadata) =
                            object.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            metadata.remove(key);
                        }
                    }
                    _ => {
                        object.remove(field.as_str());
                    }
                }
            }
        }
        view
    }

    pub fn material_hash(&self, stored: &Value) -> Hash {
        sha256(&canonical_json(&self.material_view(stored)))
    }

    /// [`ChangeRule::material_hash`] of a record given as canonical JSON: when no ignored
    /// field can be in it, the view is the record itself and needs no parsing.
    pub fn material_hash_raw(
        &self,
        kind: RecordKind,
        record: &RawValue,
    ) -> Result<Hash, serde_json::Error> {
        let untouched = match kind {
            RecordKind::Membership => !self.ignore_fields.iter().any(|field| {
                let top = field.split('.').next().unwrap_or(field);
                MEMBERSHIP_FIELDS.contains(&top)
            }),
            RecordKind::Account | RecordKind::Group => self.ignore_fields.is_empty(),
        };
        if untouched {
            return Ok(sha256(record.get().as_bytes()));
        }
        Ok(self.material_hash(&serde_json::from_str(record.get())?))
    }

    /// The hash of a record's deletion: its material view with the status `DELETED`, which is
    /// what its `deleted` envelope carries.
    pub fn deleted_hash(&self, stored: &Value) -> Hash {
        let mut view = self.material_view(stored);
        if let Some(object) = view.as_object_mut() {
            object.insert("status".into(), Value::String(DELETED_STATUS.into()));
        }
        sha256(&canonical_json(&view))
    }

    /// The material differences between two stored versions, in field order, `metadata` key
    /// by key. Empty exactly when the two material hashes are equal.
    pub fn field_changes(&self, old: &Value, new: &Value) -> Vec<FieldChange> {
        let (old, new) = (self.material_view(old), self.material_view(new));
        let empty = Map::new();
        let old_fields = old.as_object().unwrap_or(&empty);
        let new_fields = new.as_object().unwrap_or(&empty);
        let mut names: Vec<&String> = old_fields.keys().chain(new_fields.keys()).collect();
        names.sort();
        names.dedup();
        let mut changes = Vec::new();
        for name in names {
            let old_value = old_fields.get(name).unwrap_or(&Value::Null);
            let new_value = new_fields.get(name).unwrap_or(&Value::Null);
            if old_value == new_value || RETIRED_FIELDS.contains(&name.as_str()) {
                continue;
            }
            match (name.as_str(), old_value, new_value) {
                ("metadata", Value::Object(_) | Value::Null, Value::Object(_) | Value::Null) => {
                    metadata_changes(old_value, new_value, &mut changes)
                }
                _ => changes.push(FieldChange {
                    field: name.clone(),
                    old: old_value.clone(),
                    new: new_value.clone(),
                }),
            }
        }
        changes
    }

    /// Whether a field (as `field` or `metadata.<key>`) is ignored.
    pub fn is_ignored(&self, field: &str) -> bool {
        self.ignored(field) || (field.starts_with("metadata.") && self.ignored("metadata"))
    }
}

fn metadata_changes(old: &Value, new: &Value, changes: &mut Vec<FieldChange>) {
    let empty = Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let old_value = old.get(key).unwrap_or(&Value::Null);
        let new_value = new.get(key).unwrap_or(&Value::Null);
        if old_value != new_value {
            changes.push(FieldChange {
                field: format!("metadata.{key}"),
                old: old_value.clone(),
                new: new_value.clone(),
            });
        }
    }
}

/// Splits a record's JSON into what is stored in a version and its volatile values.
pub fn split_volatile(kind: RecordKind, mut record: Value) -> (Value, Map<String, Value>) {
    let mut volatile = Map::new();
    if let Some(object) = record.as_object_mut() {
        for field in kind.volatile_fields() {
            if let Some(value) = object.remove(*field) {
                volatile.insert((*field).to_string(), value);
            }
        }
    }
    (record, volatile)
}

/// Puts volatile values back into a stored record, for display.
pub fn with_volatile(mut stored: Value, volatile: &Map<String, Value>) -> Value {
    if let Some(object) = stored.as_object_mut() {
        for (field, value) in volatile {
            object.insert(field.clone(), value.clone());
        }
    }
    stored
}

pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

pub fn hex_hash(hash: &Hash) -> String {
    hex::encode(hash)
}

/// A short digest of volatile values, so that a run can tell whether they moved without
/// reading them back.
pub fn volatile_digest(volatile: &Map<String, Value>) -> u64 {
    if volatile.is_empty() {
        return 0;
    }
    let hash = sha256(&canonical_json(&Value::Object(volatile.clone())));
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account() -> Value {
        json!({
            "external_id": "uid1", "secondary_key": "7f0c0a55-0000-4000-8000-000000000001",
            "username": "jane.doe", "display_name": "Jane Doe", "given_name": "Jane",
            "family_name": "Doe", "canonical_email": "jane.doe@example.com",
            "status": "ACTIVE", "account_type": "USER", "authentik_type": "internal",
            "is_superuser": false, "organization_unit": "users",
            "added_at": "2026-01-01T00:00:00Z",
            "metadata": {"department": "it", "title": "Engineer"}, "primary_source": true
        })
    }

    /// Pinned: a dependency change (serde_json's `preserve_order`, a new field order) must not
    /// silently change every hash, which would break every consumer's chain.
    #[test]
    fn the_material_hash_of_a_fixed_record_is_pinned() {
        let rule = ChangeRule::new(&[]);
        assert_eq!(
            hex_hash(&rule.material_hash(&account())),
            "2fbfd70cea7997ea62d4187d4029b9e33c2af4969783bcecb9122e874666fb28"
        );
        // Schema 1 hashed serde_json's own compact output, whose keys were sorted; the hash of
        // an unchanged record must not change across the upgrade.
        assert_eq!(
            canonical_json(&account()),
            serde_json::to_vec(&account()).unwrap()
        );
    }

    #[test]
    fn every_material_field_is_a_change_and_ignored_ones_are_not() {
        let rule = ChangeRule::new(&[]);
        let before = account();
        for (field, value) in [
            ("given_name", json!("Janet")),
            ("family_name", json!("Roe")),
            ("added_at", json!("2026-02-01T00:00:00Z")),
            ("secondary_key", json!("other")),
            ("status", json!("INACTIVE")),
        ] {
            let mut after = before.clone();
            after[field] = value.clone();
            assert_ne!(
                rule.material_hash(&before),
                rule.material_hash(&after),
                "{field}"
            );
            let changes = rule.field_changes(&before, &after);
            assert_eq!(changes.len(), 1, "{field}");
            assert_eq!(changes[0].field, field);
            assert_eq!(changes[0].new, value);
        }
        let ignore = vec!["metadata.title".to_string(), "given_name".to_string()];
        let rule = ChangeRule::new(&ignore);
        let mut after = before.clone();
        after["metadata"]["title"] = json!("Lead");
        after["given_name"] = json!("J.");
        assert_eq!(rule.material_hash(&before), rule.material_hash(&after));
        assert!(rule.field_changes(&before, &after).is_empty());
        after["metadata"]["department"] = json!("hr");
        let changes = rule.field_changes(&before, &after);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, "metadata.department");
        assert!(rule.is_ignored("metadata.title"));
        assert!(ChangeRule::new(&["metadata".to_string()]).is_ignored("metadata.x"));
    }

    #[test]
    fn volatile_fields_are_split_off_and_digested() {
        let mut record = account();
        record["last_login_at"] = json!("2026-11-01T08:00:00Z");
        let (stored, volatile) = split_volatile(RecordKind::Account, record.clone());
        assert_eq!(stored, account());
        assert_eq!(volatile["last_login_at"], "2026-11-01T08:00:00Z");
        assert_ne!(volatile_digest(&volatile), 0);
        assert_eq!(volatile_digest(&Map::new()), 0);
        assert_eq!(with_volatile(stored, &volatile), record);
    }

    #[test]
    fn raw_entries_hash_and_store_like_their_values() {
        let record = account();
        let payload = json!({"uid": "uid1", "attributes": {"b": 1, "a": 2}});
        let entry = RawEntry::from_values(&record, &payload);
        let stored = entry.to_bytes();
        assert_eq!(
            stored,
            canonical_json(&json!({"record": record, "payload": payload}))
        );
        let back = RawEntry::parse(&stored).unwrap();
        assert_eq!(back.record().unwrap(), record);
        assert_eq!(back.payload().unwrap(), payload);
        let plain = ChangeRule::new(&[]);
        assert_eq!(
            plain
                .material_hash_raw(RecordKind::Account, &back.record)
                .unwrap(),
            plain.material_hash(&record)
        );
        let ignore = vec!["metadata.title".to_string()];
        let rule = ChangeRule::new(&ignore);
        assert_eq!(
            rule.material_hash_raw(RecordKind::Account, &back.record)
                .unwrap(),
            rule.material_hash(&record)
        );
        let membership =
            json!({"account_external_id": "u", "group_external_id": "g", "role": "MEMBER"});
        let membership_raw = raw(canonical_json(&membership));
        assert_eq!(
            rule.material_hash_raw(RecordKind::Membership, &membership_raw)
                .unwrap(),
            rule.material_hash(&membership)
        );
        let role = vec!["role".to_string()];
        assert_eq!(
            ChangeRule::new(&role)
                .material_hash_raw(RecordKind::Membership, &membership_raw)
                .unwrap(),
            ChangeRule::new(&role).material_hash(&membership)
        );
    }

    #[test]
    fn a_deletion_hashes_differently_from_the_record() {
        let rule = ChangeRule::new(&[]);
        assert_ne!(
            rule.deleted_hash(&account()),
            rule.material_hash(&account())
        );
        let mut deleted = account();
        deleted["status"] = json!(DELETED_STATUS);
        assert_eq!(rule.deleted_hash(&account()), rule.material_hash(&deleted));
    }
}
