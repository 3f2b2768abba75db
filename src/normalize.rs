//! Turns raw Authentik users and groups into the normalized directory records
//! (`DirectoryAccount`, `DirectoryGroup`, `DirectoryMembership`) of one [`Snapshot`], and
//! checks that the memberships refer only to records of the same snapshot.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::authentik::model::{Group, User};

/// Keys dropped from the raw payload before it is kept: `avatar` can be a multi-kilobyte
/// data URI and says nothing about identity.
const DROPPED_PAYLOAD_KEYS: [&str; 1] = ["avatar"];

/// Before 2023.8 users had no `type`; service accounts carried this attribute instead.
const LEGACY_SERVICE_ACCOUNT_ATTRIBUTE: &str = "goauthentik.io/user/service-account";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountStatus {
    Active,
    Inactive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountType {
    User,
    Guest,
    Service,
}

impl AccountType {
    /// internal→USER, external→GUEST, both service-account types→SERVICE, anything else→USER.
    pub fn from_authentik(user_type: Option<&str>, attributes: &Map<String, Value>) -> AccountType {
        match user_type {
            Some("external") => AccountType::Guest,
            Some("service_account" | "internal_service_account") => AccountType::Service,
            Some(_) => AccountType::User,
            None if attributes
                .get(LEGACY_SERVICE_ACCOUNT_ATTRIBUTE)
                .and_then(Value::as_bool)
                .unwrap_or(false) =>
            {
                AccountType::Service
            }
            None => AccountType::User,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryAccount {
    pub external_id: String,
    pub secondary_key: Option<String>,
    pub username: String,
    pub display_name: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub canonical_email: Option<String>,
    pub status: AccountStatus,
    pub account_type: AccountType,
    pub authentik_type: Option<String>,
    pub is_superuser: bool,
    pub organization_unit: Option<String>,
    pub added_at: Option<String>,
    pub last_login_at: Option<String>,
    pub metadata: Map<String, Value>,
    pub primary_source: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryGroup {
    pub external_id: String,
    pub display_name: String,
    pub is_superuser: bool,
    pub parents: Vec<String>,
    pub metadata: Map<String, Value>,
    pub member_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryMembership {
    pub account_external_id: String,
    pub group_external_id: String,
    pub role: String,
}

impl DirectoryMembership {
    pub const ROLE_MEMBER: &'static str = "MEMBER";

    pub fn new(account_external_id: &str, group_external_id: &str) -> DirectoryMembership {
        DirectoryMembership {
            account_external_id: account_external_id.to_string(),
            group_external_id: group_external_id.to_string(),
            role: Self::ROLE_MEMBER.to_string(),
        }
    }

    /// `<account uid>:<group pk>`.
    pub fn external_id(&self) -> String {
        format!("{}:{}", self.account_external_id, self.group_external_id)
    }
}

/// A normalized record together with the raw Authentik object it came from (without the
/// dropped keys). Memberships have no raw object; their payload is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<R> {
    pub record: R,
    pub payload: Value,
}

/// One complete directory as seen by one run, keyed by external id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub accounts: BTreeMap<String, Entry<DirectoryAccount>>,
    pub groups: BTreeMap<String, Entry<DirectoryGroup>>,
    pub memberships: BTreeMap<String, Entry<DirectoryMembership>>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("{kind} record {pk} could not be read: {reason}")]
    Record {
        kind: &'static str,
        pk: String,
        reason: String,
    },
    #[error("{0}")]
    Dangling(String),
}

/// Builds the snapshot. `groups` is `None` when group sync is disabled: then neither groups
/// nor memberships are kept.
pub fn normalize(
    users: Vec<Value>,
    groups: Option<Vec<Value>>,
    primary_directory: bool,
) -> Result<Snapshot, NormalizeError> {
    let mut snapshot = Snapshot::default();
    let mut uid_by_pk = BTreeMap::new();
    let mut memberships_from_users = BTreeSet::new();
    for raw in users {
        let user = User::deserialize(&raw).map_err(|error| record_error("user", &raw, error))?;
        uid_by_pk.insert(user.pk, user.uid.clone());
        for group in &user.groups {
            memberships_from_users.insert((user.uid.clone(), group.clone()));
        }
        let record = account(&user, primary_directory);
        snapshot.accounts.insert(
            record.external_id.clone(),
            Entry {
                record,
                payload: strip_payload(raw),
            },
        );
    }
    let Some(groups) = groups else {
        return Ok(snapshot);
    };
    let mut memberships_from_groups = Some(BTreeSet::new());
    for raw in groups {
        let group = Group::deserialize(&raw).map_err(|error| record_error("group", &raw, error))?;
        match (&group.users, memberships_from_groups.as_mut()) {
            (Some(members), Some(pairs)) => {
                for pk in members {
                    let uid = uid_by_pk.get(pk).ok_or_else(|| {
                        NormalizeError::Dangling(format!(
                            "group {} lists user pk {pk}, which is not in the users listing",
                            group.pk
                        ))
                    })?;
                    pairs.insert((uid.clone(), group.pk.clone()));
                }
            }
            // A server that omits `users` gives no second view to compare with.
            _ => memberships_from_groups = None,
        }
        let record = DirectoryGroup {
            external_id: group.pk.clone(),
            display_name: group.name.clone(),
            is_superuser: group.is_superuser,
            parents: group.parent_ids(),
            metadata: group.attributes.clone().unwrap_or_default(),
            member_count: group.users.as_ref().map_or(0, |users| users.len() as u64),
        };
        snapshot.groups.insert(
            record.external_id.clone(),
            Entry {
                record,
                payload: strip_payload(raw),
            },
        );
    }
    if let Some(from_groups) = memberships_from_groups {
        if from_groups != memberships_from_users {
            let differing = from_groups
                .symmetric_difference(&memberships_from_users)
                .count();
            return Err(NormalizeError::Dangling(format!(
                "users' and groups' membership lists disagree on {differing} pair(s)"
            )));
        }
    }
    for group in snapshot.groups.values() {
        if let Some(parent) = group
            .record
            .parents
            .iter()
            .find(|parent| !snapshot.groups.contains_key(*parent))
        {
            return Err(NormalizeError::Dangling(format!(
                "group {} has parent {parent}, which is not in the groups listing",
                group.record.external_id
            )));
        }
    }
    for (uid, group) in memberships_from_users {
        if !snapshot.groups.contains_key(&group) {
            return Err(NormalizeError::Dangling(format!(
                "user {uid} is a member of group {group}, which is not in the groups listing"
            )));
        }
        let membership = DirectoryMembership::new(&uid, &group);
        snapshot.memberships.insert(
            membership.external_id(),
            Entry {
                record: membership,
                payload: Value::Null,
            },
        );
    }
    Ok(snapshot)
}

fn account(user: &User, primary_directory: bool) -> DirectoryAccount {
    let name = user.name.as_deref().unwrap_or("").trim();
    let (given_name, family_name) = split_name(name);
    let attributes = user.attributes.clone().unwrap_or_default();
    DirectoryAccount {
        external_id: user.uid.clone(),
        secondary_key: user.uuid.clone(),
        username: user.username.clone(),
        display_name: if name.is_empty() {
            user.username.clone()
        } else {
            name.to_string()
        },
        given_name,
        family_name,
        canonical_email: user
            .email
            .as_deref()
            .map(str::trim)
            .filter(|email| !email.is_empty())
            .map(str::to_lowercase),
        status: if user.is_active {
            AccountStatus::Active
        } else {
            AccountStatus::Inactive
        },
        account_type: AccountType::from_authentik(user.user_type.as_deref(), &attributes),
        authentik_type: user.user_type.clone(),
        is_superuser: user.is_superuser,
        organization_unit: user.path.clone().filter(|path| !path.is_empty()),
        added_at: user.date_joined.clone(),
        last_login_at: user.last_login.clone(),
        metadata: attributes,
        primary_source: primary_directory,
    }
}

/// Best effort: the first word is the given name, the rest the family name.
fn split_name(name: &str) -> (Option<String>, Option<String>) {
    let mut words = name.split_whitespace();
    let given = words.next().map(str::to_string);
    let family = words.collect::<Vec<_>>().join(" ");
    (given, Some(family).filter(|family| !family.is_empty()))
}

fn strip_payload(mut raw: Value) -> Value {
    if let Some(object) = raw.as_object_mut() {
        for key in DROPPED_PAYLOAD_KEYS {
            object.remove(key);
        }
    }
    raw
}

fn record_error(kind: &'static str, raw: &Value, error: serde_json::Error) -> NormalizeError {
    NormalizeError::Record {
        kind,
        pk: raw
            .get("pk")
            .map_or_else(|| "(without pk)".to_string(), Value::to_string),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(pk: i64, user_type: &str, groups: &[&str]) -> Value {
        json!({
            "pk": pk, "username": format!("u{pk}"), "name": "Ada Lovelace King",
            "is_active": pk % 2 == 0, "last_login": null, "date_joined": "2026-01-01T00:00:00Z",
            "is_superuser": false, "groups": groups, "groups_obj": null,
            "email": "Ada@Example.COM", "avatar": "data:image/svg+xml;base64,AAAA",
            "attributes": {"department": "it"}, "uid": format!("uid{pk}"), "path": "users",
            "type": user_type, "uuid": format!("uuid-{pk}")
        })
    }

    fn group(pk: &str, users: &[i64], parents: &[&str]) -> Value {
        json!({"pk": pk, "num_pk": 1, "name": format!("G {pk}"), "is_superuser": false,
               "parents": parents, "users": users, "users_obj": null, "attributes": {}})
    }

    #[test]
    fn account_types_map_as_documented() {
        let users = [
            "internal",
            "external",
            "service_account",
            "internal_service_account",
            "future_kind",
        ]
        .iter()
        .enumerate()
        .map(|(i, kind)| user(i as i64 + 1, kind, &[]))
        .collect();
        let snapshot = normalize(users, None, true).unwrap();
        let types: Vec<AccountType> = (1..=5)
            .map(|pk| snapshot.accounts[&format!("uid{pk}")].record.account_type)
            .collect();
        use AccountType::*;
        assert_eq!(types, vec![User, Guest, Service, Service, User]);
    }

    #[test]
    fn fields_are_normalized_and_avatar_dropped() {
        let snapshot = normalize(vec![user(2, "internal", &[])], None, true).unwrap();
        let entry = &snapshot.accounts["uid2"];
        assert_eq!(
            entry.record.canonical_email.as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(entry.record.given_name.as_deref(), Some("Ada"));
        assert_eq!(entry.record.family_name.as_deref(), Some("Lovelace King"));
        assert_eq!(entry.record.status, AccountStatus::Active);
        assert!(entry.record.primary_source);
        assert!(entry.payload.get("avatar").is_none());
        assert_eq!(entry.payload["email"], "Ada@Example.COM");
    }

    #[test]
    fn memberships_come_from_both_sides_and_must_agree() {
        let users = vec![
            user(1, "internal", &["g1"]),
            user(2, "internal", &["g1", "g2"]),
        ];
        let groups = vec![group("g1", &[1, 2], &[]), group("g2", &[2], &["g1"])];
        let snapshot = normalize(users.clone(), Some(groups), false).unwrap();
        assert_eq!(
            snapshot.memberships.keys().cloned().collect::<Vec<_>>(),
            vec!["uid1:g1", "uid2:g1", "uid2:g2"]
        );
        assert_eq!(snapshot.groups["g2"].record.parents, vec!["g1".to_string()]);
        assert_eq!(snapshot.groups["g1"].record.member_count, 2);

        let disagreeing = vec![group("g1", &[1], &[]), group("g2", &[2], &["g1"])];
        assert!(normalize(users, Some(disagreeing), false).is_err());
    }

    #[test]
    fn references_to_unknown_records_are_errors() {
        let users = vec![user(1, "internal", &["missing"])];
        assert!(normalize(users, Some(vec![group("g1", &[], &[])]), false).is_err());
        let users = vec![user(1, "internal", &[])];
        assert!(normalize(users, Some(vec![group("g1", &[1], &[])]), false).is_err());
        let users = vec![user(1, "internal", &[])];
        assert!(normalize(users, Some(vec![group("g1", &[], &["nope"])]), false).is_err());
    }

    #[test]
    fn group_sync_off_keeps_only_accounts() {
        let snapshot = normalize(vec![user(1, "internal", &["g1"])], None, false).unwrap();
        assert!(snapshot.groups.is_empty() && snapshot.memberships.is_empty());
        assert_eq!(snapshot.accounts.len(), 1);
    }
}
