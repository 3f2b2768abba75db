//! Tolerant serde models of the Authentik objects aksync reads. They accept every server from
//! 2024.4 to 2026.x: unknown fields are ignored, fields added later are optional, and the
//! group hierarchy is read from `parents` (2025.12+) or `parent` (before).

use serde::Deserialize;
use serde_json::Value;

/// The `pagination` object of every list response. `next`/`previous` are 0 at the ends.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Pagination {
    pub next: u64,
    pub previous: u64,
    pub count: u64,
    pub current: u64,
    pub total_pages: u64,
}

#[derive(Debug, Deserialize)]
pub struct Page {
    pub pagination: Pagination,
    pub results: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub pk: i64,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_true")]
    pub is_active: bool,
    #[serde(default)]
    pub last_login: Option<String>,
    /// When Authentik last changed the user (any save, a login included).
    #[serde(default)]
    pub last_updated: Option<String>,
    #[serde(default)]
    pub date_joined: Option<String>,
    #[serde(default)]
    pub is_superuser: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub attributes: Option<serde_json::Map<String, Value>>,
    pub uid: String,
    #[serde(default)]
    pub path: Option<String>,
    /// Absent before 2023.8.
    #[serde(default, rename = "type")]
    pub user_type: Option<String>,
    /// Absent before 2023.10.
    #[serde(default)]
    pub uuid: Option<String>,
    /// RBAC roles held directly, as role uuids; since 2025.12.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

/// A role as `roles_obj` names it.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleObject {
    pub pk: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Group {
    pub pk: String,
    pub name: String,
    #[serde(default)]
    pub is_superuser: bool,
    /// 2025.12 and later.
    #[serde(default)]
    pub parents: Option<Vec<String>>,
    /// Before 2025.12.
    #[serde(default)]
    pub parent: Option<String>,
    /// Direct members by user pk; present even with `include_users=false`.
    #[serde(default)]
    pub users: Option<Vec<i64>>,
    #[serde(default)]
    pub attributes: Option<serde_json::Map<String, Value>>,
    /// RBAC roles of the group's members, as role uuids; since 2023.10.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// The same roles with their names; always filled by the server.
    #[serde(default)]
    pub roles_obj: Option<Vec<RoleObject>>,
}

impl Group {
    /// Parent group uuids, sorted, whichever version's shape the server sent.
    pub fn parent_ids(&self) -> Vec<String> {
        let mut parents = match (&self.parents, &self.parent) {
            (Some(parents), _) => parents.clone(),
            (None, Some(parent)) => vec![parent.clone()],
            (None, None) => Vec::new(),
        };
        parents.sort();
        parents.dedup();
        parents
    }
}

/// `GET /core/users/me/`.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionUser {
    pub user: MeUser,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MeUser {
    pub pk: i64,
    pub username: String,
    #[serde(default)]
    pub is_superuser: bool,
    #[serde(default, rename = "type")]
    pub user_type: Option<String>,
}

/// `GET /admin/version/`.
#[derive(Debug, Clone, Deserialize)]
pub struct Version {
    pub version_current: String,
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_and_new_group_shapes_give_the_same_parents() {
        let legacy: Group = serde_json::from_value(json!({
            "pk": "g1", "num_pk": 1, "name": "x", "parent": "p1", "parent_name": "P",
            "users": [1], "attributes": {}
        }))
        .unwrap();
        let current: Group = serde_json::from_value(json!({
            "pk": "g1", "name": "x", "parents": ["p1"], "parents_obj": null, "users": [1],
            "children": [], "roles_obj": [], "brand_new_field": {"x": 1}
        }))
        .unwrap();
        assert_eq!(legacy.parent_ids(), vec!["p1".to_string()]);
        assert_eq!(current.parent_ids(), legacy.parent_ids());
    }

    #[test]
    fn users_from_2024_without_later_fields_parse() {
        let user: User = serde_json::from_value(json!({
            "pk": 7, "username": "bob", "name": "Bob", "is_active": true, "last_login": null,
            "is_superuser": false, "groups": [], "groups_obj": null, "email": "",
            "avatar": "data:...", "attributes": {}, "uid": "abc", "path": "users"
        }))
        .unwrap();
        assert_eq!(user.user_type, None);
        assert_eq!(user.uuid, None);
        assert_eq!(user.date_joined, None);
    }
}
