//! Turns one raw Authentik user or group into its normalized directory record
//! (`DirectoryAccount`, `DirectoryGroup`; memberships are `DirectoryMembership`), and strips
//! the raw object down to the payload that is kept beside it. The checks that span records
//! (references, the two membership views) are in [`crate::run::collect`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::authentik::model::{Group, User};

/// Keys dropped from the raw payload before it is kept. `avatar` can be a multi-kilobyte
/// data URI and says nothing about identity; the membership lists (`groups` of a user,
/// `users` and `children` of a group) live in membership and group records, not in every
/// payload; the timestamps that move with every login are volatile. Keys ending in `_obj`
/// are expansions of id lists that are kept, and would copy other records into this one.
const DROPPED_PAYLOAD_KEYS: [&str; 7] = [
    "avatar",
    "groups",
    "users",
    "children",
    "last_login",
    "last_updated",
    "password_change_date",
];

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
    /// Authentik's own time of its last change to the user; volatile like the login.
    #[serde(default)]
    pub last_updated_at: Option<String>,
    pub metadata: Map<String, Value>,
    /// RBAC roles held directly (Authentik 2025.12+); left out when there are none, so that
    /// the material hash of an account without roles is what it was before roles counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
}

/// An Authentik RBAC role, by its uuid and, where the server names it, its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Role {
    pub pk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Role uuids with the names that are known, sorted by uuid, without duplicates.
fn roles(
    pks: Option<&[String]>,
    named: Option<&[crate::authentik::model::RoleObject]>,
) -> Vec<Role> {
    let mut roles: Vec<Role> = pks
        .unwrap_or_default()
        .iter()
        .map(|pk| Role {
            pk: pk.clone(),
            name: named
                .unwrap_or_default()
                .iter()
                .find(|role| &role.pk == pk)
                .and_then(|role| role.name.clone()),
        })
        .collect();
    roles.sort();
    roles.dedup_by(|a, b| a.pk == b.pk);
    roles
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryGroup {
    pub external_id: String,
    pub display_name: String,
    pub is_superuser: bool,
    pub parents: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Volatile: not part of a stored version (see [`crate::run::record`]).
    #[serde(default)]
    pub member_count: u64,
    /// RBAC roles every member holds through this group (and its child groups); left out
    /// when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
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

/// Reads a raw user; the error names its pk.
pub fn read_user(raw: &Value) -> Result<User, NormalizeError> {
    User::deserialize(raw).map_err(|error| record_error("user", raw, error))
}

/// Reads a raw group; the error names its pk.
pub fn read_group(raw: &Value) -> Result<Group, NormalizeError> {
    Group::deserialize(raw).map_err(|error| record_error("group", raw, error))
}

pub fn group_record(group: &Group) -> DirectoryGroup {
    DirectoryGroup {
        external_id: group.pk.clone(),
        display_name: group.name.clone(),
        is_superuser: group.is_superuser,
        parents: group.parent_ids(),
        metadata: group.attributes.clone().unwrap_or_default(),
        member_count: group.users.as_ref().map_or(0, |users| users.len() as u64),
        roles: roles(group.roles.as_deref(), group.roles_obj.as_deref()),
    }
}

pub fn account(user: &User) -> DirectoryAccount {
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
        last_updated_at: user.last_updated.clone(),
        metadata: attributes,
        roles: roles(user.roles.as_deref(), None),
    }
}

/// Best effort: the first word is the given name, the rest the family name.
fn split_name(name: &str) -> (Option<String>, Option<String>) {
    let mut words = name.split_whitespace();
    let given = words.next().map(str::to_string);
    let family = words.collect::<Vec<_>>().join(" ");
    (given, Some(family).filter(|family| !family.is_empty()))
}

/// The raw object as it is kept: without the keys that `DROPPED_PAYLOAD_KEYS` and the
/// `_obj` rule name.
pub fn stored_payload(mut raw: Value) -> Value {
    if let Some(object) = raw.as_object_mut() {
        object.retain(|key, _| {
            !DROPPED_PAYLOAD_KEYS.contains(&key.as_str()) && !key.ends_with("_obj")
        });
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

    fn user(pk: i64, user_type: &str) -> Value {
        json!({
            "pk": pk, "username": format!("u{pk}"), "name": "Ada Lovelace King",
            "is_active": pk % 2 == 0, "last_login": null, "date_joined": "2026-01-01T00:00:00Z",
            "is_superuser": false, "groups": ["g1"], "groups_obj": null,
            "email": "Ada@Example.COM", "avatar": "data:image/svg+xml;base64,AAAA",
            "attributes": {"department": "it"}, "uid": format!("uid{pk}"), "path": "users",
            "type": user_type, "uuid": format!("uuid-{pk}"), "last_updated": "x",
            "password_change_date": "y", "roles": ["r1"]
        })
    }

    #[test]
    fn account_types_map_as_documented() {
        let types: Vec<AccountType> = [
            "internal",
            "external",
            "service_account",
            "internal_service_account",
            "future_kind",
        ]
        .iter()
        .map(|kind| account(&read_user(&user(1, kind)).unwrap()).account_type)
        .collect();
        use AccountType::*;
        assert_eq!(types, vec![User, Guest, Service, Service, User]);
    }

    #[test]
    fn fields_are_normalized() {
        let record = account(&read_user(&user(2, "internal")).unwrap());
        assert_eq!(record.canonical_email.as_deref(), Some("ada@example.com"));
        assert_eq!(record.given_name.as_deref(), Some("Ada"));
        assert_eq!(record.family_name.as_deref(), Some("Lovelace King"));
        assert_eq!(record.status, AccountStatus::Active);
    }

    #[test]
    fn the_kept_payload_has_no_avatar_memberships_or_login_times() {
        let payload = stored_payload(user(2, "internal"));
        for key in [
            "avatar",
            "groups",
            "groups_obj",
            "last_login",
            "last_updated",
            "password_change_date",
        ] {
            assert!(payload.get(key).is_none(), "{key}");
        }
        assert_eq!(payload["email"], "Ada@Example.COM");
        assert_eq!(payload["roles"], json!(["r1"]));
        let group = stored_payload(
            json!({"pk": "g", "users": [1], "users_obj": [], "children": ["c"],
                                          "parents": ["p"], "parents_obj": [{}], "name": "G"}),
        );
        assert_eq!(group, json!({"pk": "g", "parents": ["p"], "name": "G"}));
    }

    #[test]
    fn a_record_that_does_not_parse_names_its_pk() {
        let error = read_user(&json!({"pk": 7, "username": 3})).unwrap_err();
        assert!(error.to_string().contains("user record 7"), "{error}");
    }

    const USER_KEYS: &[&str] = &[
        "pk",
        "username",
        "name",
        "is_active",
        "last_login",
        "last_updated",
        "date_joined",
        "is_superuser",
        "groups",
        "email",
        "attributes",
        "uid",
        "path",
        "type",
        "uuid",
        "roles",
        "groups_obj",
        "roles_obj",
    ];
    const GROUP_KEYS: &[&str] = &[
        "pk",
        "name",
        "is_superuser",
        "parents",
        "parent",
        "users",
        "attributes",
        "roles",
        "roles_obj",
        "users_obj",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// A user record of any shape is read or refused with an error naming it, and what
        /// is read normalizes and hashes: never a panic.
        #[test]
        fn arbitrary_users_never_panic(raw in crate::testing::arbitrary_object(USER_KEYS)) {
            if let Ok(user) = read_user(&raw) {
                let account = account(&user);
                crate::canonical::to_canonical_vec(&account).expect("an account serializes");
            }
            crate::canonical::canonical_json(&stored_payload(raw));
        }

        #[test]
        fn arbitrary_groups_never_panic(raw in crate::testing::arbitrary_object(GROUP_KEYS)) {
            if let Ok(group) = read_group(&raw) {
                let record = group_record(&group);
                crate::canonical::to_canonical_vec(&record).expect("a group serializes");
            }
            crate::canonical::canonical_json(&stored_payload(raw));
        }
    }
}
