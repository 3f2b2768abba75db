//! The JSON shapes the fake serves, with keys in the order of authentik's serializers
//! (struct field order, because serde_json here does not preserve map insertion order),
//! and the values authentik computes instead of storing: group members, child groups,
//! superuser status through ancestor groups, `num_pk`, `uid` and the initials avatar.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::directory::{Directory, FakeGroup, FakeUser};

/// A role as `roles_obj` shows it.
#[derive(Serialize)]
struct RoleJson<'a> {
    pk: &'a str,
    name: &'a str,
}

/// Serializes as `{}`.
#[derive(Serialize)]
pub(super) struct EmptyObject {}

#[derive(Serialize)]
pub(super) struct Detail<'a> {
    pub detail: &'a str,
}

#[derive(Serialize)]
pub(super) struct Paginated<T> {
    pub pagination: Pagination,
    pub results: Vec<T>,
    pub autocomplete: EmptyObject,
}

#[derive(Serialize)]
pub(super) struct Pagination {
    pub next: u64,
    pub previous: u64,
    pub count: u64,
    pub current: u64,
    pub total_pages: u64,
    pub start_index: u64,
    pub end_index: u64,
}

#[derive(Serialize)]
pub(super) struct UserJson<'a> {
    pk: i64,
    username: &'a str,
    name: &'a str,
    is_active: bool,
    last_login: Option<&'a str>,
    date_joined: &'a str,
    is_superuser: bool,
    groups: &'a [String],
    groups_obj: Option<Vec<PartialGroupJson<'a>>>,
    #[serde(flatten)]
    roles: Option<UserRoles<'a>>,
    email: &'a str,
    avatar: String,
    attributes: &'a Value,
    uid: String,
    path: &'a str,
    #[serde(rename = "type")]
    user_type: &'a str,
    uuid: &'a str,
    password_change_date: &'a str,
    last_updated: &'a str,
}

/// Added in 2025.12, so absent in the legacy shape.
#[derive(Serialize)]
struct UserRoles<'a> {
    roles: &'a [String],
    roles_obj: Option<Vec<RoleJson<'a>>>,
}

#[derive(Serialize)]
struct PartialGroupJson<'a> {
    pk: &'a str,
    num_pk: u64,
    name: &'a str,
    is_superuser: bool,
    #[serde(flatten)]
    legacy_parent: Option<LegacyParent<'a>>,
    attributes: &'a Value,
}

/// The single-parent fields that 2025.12 replaced with `parents`/`parents_obj`.
#[derive(Serialize)]
struct LegacyParent<'a> {
    parent: Option<&'a str>,
    parent_name: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct GroupJson<'a> {
    pk: &'a str,
    num_pk: u64,
    name: &'a str,
    is_superuser: bool,
    #[serde(flatten)]
    legacy_parent: Option<LegacyParent<'a>>,
    #[serde(flatten)]
    parents: Option<Parents<'a>>,
    users: Vec<i64>,
    users_obj: Option<Vec<PartialUserJson<'a>>>,
    attributes: &'a Value,
    roles: &'a [String],
    roles_obj: Vec<RoleJson<'a>>,
    #[serde(flatten)]
    inherited_roles: Option<InheritedRoles<'a>>,
    children: Vec<&'a str>,
    children_obj: Option<Vec<RelatedGroupJson<'a>>>,
}

#[derive(Serialize)]
struct Parents<'a> {
    parents: &'a [String],
    parents_obj: Option<Vec<RelatedGroupJson<'a>>>,
}

/// Added in 2025.12, so absent in the legacy shape.
#[derive(Serialize)]
struct InheritedRoles<'a> {
    inherited_roles_obj: Option<Vec<RoleJson<'a>>>,
}

#[derive(Serialize)]
struct RelatedGroupJson<'a> {
    pk: &'a str,
    name: &'a str,
    is_superuser: bool,
    attributes: &'a Value,
    group_uuid: &'a str,
}

#[derive(Serialize)]
struct PartialUserJson<'a> {
    pk: i64,
    username: &'a str,
    name: &'a str,
    is_active: bool,
    last_login: Option<&'a str>,
    email: &'a str,
    attributes: &'a Value,
    uid: String,
}

#[derive(Serialize)]
pub(super) struct SessionUserJson<'a> {
    user: UserSelfJson<'a>,
}

#[derive(Serialize)]
struct UserSelfJson<'a> {
    pk: i64,
    username: &'a str,
    name: &'a str,
    is_active: bool,
    is_superuser: bool,
    groups: Vec<SelfGroupJson<'a>>,
    roles: &'a [String],
    email: &'a str,
    avatar: String,
    uid: String,
    settings: EmptyObject,
    #[serde(rename = "type")]
    user_type: &'a str,
    system_permissions: &'static [&'static str],
}

#[derive(Serialize)]
struct SelfGroupJson<'a> {
    name: &'a str,
    pk: &'a str,
}

#[derive(Serialize)]
pub(super) struct VersionJson<'a> {
    pub version_current: &'a str,
    pub version_latest: &'static str,
    pub version_latest_valid: bool,
    pub build_hash: &'static str,
    pub outdated: bool,
    pub outpost_outdated: bool,
}

#[derive(Serialize)]
pub(super) struct ConfigJson {
    pub error_reporting: ErrorReportingJson,
    pub capabilities: [&'static str; 0],
    pub cache_timeout: u32,
    pub cache_timeout_flows: u32,
    pub cache_timeout_policies: u32,
}

#[derive(Serialize)]
pub(super) struct ErrorReportingJson {
    pub enabled: bool,
    pub sentry_dsn: &'static str,
    pub environment: &'static str,
    pub send_pii: bool,
    pub traces_sample_rate: f64,
}

/// Which `*_obj` fields a users request asked for.
pub(super) struct UserIncludes {
    pub groups: bool,
    pub roles: bool,
}

/// Which `*_obj` fields a groups request asked for.
pub(super) struct GroupIncludes {
    pub users: bool,
    pub parents: bool,
    pub children: bool,
    pub inherited_roles: bool,
}

/// Renders directory objects; built once per request so derived relations are computed once,
/// and only when the request renders them (a users page needs no member lists, and at 10^5
/// users building them would dominate every request).
pub(super) struct Render<'a> {
    dir: &'a Directory,
    legacy: bool,
    /// Group uuid -> direct member pks, ascending.
    members: OnceCell<HashMap<&'a str, Vec<i64>>>,
    /// Group uuid -> direct child groups, in uuid order.
    children: OnceCell<HashMap<&'a str, Vec<&'a FakeGroup>>>,
}

impl<'a> Render<'a> {
    pub(super) fn new(dir: &'a Directory, legacy: bool) -> Render<'a> {
        Render {
            dir,
            legacy,
            members: OnceCell::new(),
            children: OnceCell::new(),
        }
    }

    fn members(&self, group: &str) -> &[i64] {
        let members = self.members.get_or_init(|| {
            let mut members: HashMap<&str, Vec<i64>> = HashMap::new();
            for user in self.dir.users.values() {
                for group in &user.groups {
                    members.entry(group).or_default().push(user.pk);
                }
            }
            members
        });
        members.get(group).map_or(&[], Vec::as_slice)
    }

    fn children(&self) -> &HashMap<&'a str, Vec<&'a FakeGroup>> {
        self.children.get_or_init(|| {
            let mut children: HashMap<&str, Vec<&FakeGroup>> = HashMap::new();
            for group in self.dir.groups.values() {
                for parent in &group.parents {
                    children.entry(parent).or_default().push(group);
                }
            }
            children
        })
    }

    /// The groups a user belongs to directly or through ancestors, each once, by name.
    fn all_groups(&self, user: &'a FakeUser) -> Vec<&'a FakeGroup> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut pending: Vec<&str> = user.groups.iter().map(String::as_str).collect();
        let mut found = Vec::new();
        while let Some(uuid) = pending.pop() {
            // Parent links can form a cycle if a test builds one; `seen` stops it.
            if !seen.insert(uuid) {
                continue;
            }
            if let Some(group) = self.dir.groups.get(uuid) {
                pending.extend(group.parents.iter().map(String::as_str));
                found.push(group);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    /// Roles by uuid, with their names (a uuid the directory does not know is left out, as
    /// a deleted role would be).
    fn role_objects(&self, uuids: impl IntoIterator<Item = &'a String>) -> Vec<RoleJson<'a>> {
        uuids
            .into_iter()
            .filter_map(|uuid| {
                self.dir
                    .roles
                    .get_key_value(uuid)
                    .map(|(pk, name)| RoleJson {
                        pk: pk.as_str(),
                        name: name.as_str(),
                    })
            })
            .collect()
    }

    /// The roles of a group's ancestors, each once.
    fn inherited_roles(&self, group: &'a FakeGroup) -> Vec<&'a String> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut pending: Vec<&str> = group.parents.iter().map(String::as_str).collect();
        let mut roles = BTreeSet::new();
        while let Some(uuid) = pending.pop() {
            if !seen.insert(uuid) {
                continue;
            }
            if let Some(parent) = self.dir.groups.get(uuid) {
                pending.extend(parent.parents.iter().map(String::as_str));
                roles.extend(parent.roles.iter());
            }
        }
        roles.into_iter().collect()
    }

    /// Authentik's user `is_superuser`: a superuser group reached directly or via an ancestor.
    fn is_superuser(&self, user: &'a FakeUser) -> bool {
        self.all_groups(user).iter().any(|g| g.is_superuser)
    }

    pub(super) fn user(&self, user: &'a FakeUser, includes: &UserIncludes) -> UserJson<'a> {
        UserJson {
            pk: user.pk,
            username: &user.username,
            name: &user.name,
            is_active: user.is_active,
            last_login: user.last_login.as_deref(),
            date_joined: &user.date_joined,
            is_superuser: self.is_superuser(user),
            groups: &user.groups,
            groups_obj: includes.groups.then(|| {
                user.groups
                    .iter()
                    .filter_map(|uuid| self.dir.groups.get(uuid))
                    .map(|g| self.partial_group(g))
                    .collect()
            }),
            roles: (!self.legacy).then(|| UserRoles {
                roles: &user.roles,
                roles_obj: includes.roles.then(|| self.role_objects(&user.roles)),
            }),
            email: &user.email,
            avatar: avatar(user),
            attributes: &user.attributes,
            uid: self.dir.uid(user.pk),
            path: &user.path,
            user_type: &user.user_type,
            uuid: &user.uuid,
            password_change_date: &user.password_change_date,
            last_updated: &user.last_updated,
        }
    }

    pub(super) fn group(&self, group: &'a FakeGroup, includes: &GroupIncludes) -> GroupJson<'a> {
        let children = self
            .children()
            .get(group.pk.as_str())
            .map_or(&[][..], Vec::as_slice);
        GroupJson {
            pk: &group.pk,
            num_pk: num_pk(&group.pk),
            name: &group.name,
            is_superuser: group.is_superuser,
            legacy_parent: self.legacy_parent(group),
            parents: (!self.legacy).then(|| Parents {
                parents: &group.parents,
                parents_obj: includes
                    .parents
                    .then(|| self.parent_groups(group).map(related_group).collect()),
            }),
            users: self.members(&group.pk).to_vec(),
            users_obj: includes.users.then(|| {
                self.members(&group.pk)
                    .iter()
                    .filter_map(|pk| self.dir.users.get(pk))
                    .map(|u| self.partial_user(u))
                    .collect()
            }),
            attributes: &group.attributes,
            roles: &group.roles,
            roles_obj: self.role_objects(&group.roles),
            inherited_roles: (!self.legacy).then(|| InheritedRoles {
                inherited_roles_obj: includes
                    .inherited_roles
                    .then(|| self.role_objects(self.inherited_roles(group))),
            }),
            children: children.iter().map(|g| g.pk.as_str()).collect(),
            children_obj: includes
                .children
                .then(|| children.iter().copied().map(related_group).collect()),
        }
    }

    pub(super) fn session_user(
        &self,
        user: &'a FakeUser,
        system_permissions: &'static [&'static str],
    ) -> SessionUserJson<'a> {
        SessionUserJson {
            user: UserSelfJson {
                pk: user.pk,
                username: &user.username,
                name: &user.name,
                is_active: user.is_active,
                is_superuser: self.is_superuser(user),
                groups: self
                    .all_groups(user)
                    .iter()
                    .map(|g| SelfGroupJson {
                        name: &g.name,
                        pk: &g.pk,
                    })
                    .collect(),
                roles: &user.roles,
                email: &user.email,
                avatar: avatar(user),
                uid: self.dir.uid(user.pk),
                settings: EmptyObject {},
                user_type: &user.user_type,
                system_permissions,
            },
        }
    }

    fn parent_groups(&self, group: &'a FakeGroup) -> impl Iterator<Item = &'a FakeGroup> + 'a {
        let groups = &self.dir.groups;
        group
            .parents
            .iter()
            .filter_map(move |uuid| groups.get(uuid))
    }

    /// Pre-2025.12 servers knew a single parent; the first of several stands in for it.
    fn legacy_parent(&self, group: &'a FakeGroup) -> Option<LegacyParent<'a>> {
        self.legacy.then(|| {
            let parent = group.parents.first().map(String::as_str);
            LegacyParent {
                parent,
                parent_name: parent
                    .and_then(|uuid| self.dir.groups.get(uuid))
                    .map(|g| g.name.as_str()),
            }
        })
    }

    fn partial_group(&self, group: &'a FakeGroup) -> PartialGroupJson<'a> {
        PartialGroupJson {
            pk: &group.pk,
            num_pk: num_pk(&group.pk),
            name: &group.name,
            is_superuser: group.is_superuser,
            legacy_parent: self.legacy_parent(group),
            attributes: &group.attributes,
        }
    }

    fn partial_user(&self, user: &'a FakeUser) -> PartialUserJson<'a> {
        PartialUserJson {
            pk: user.pk,
            username: &user.username,
            name: &user.name,
            is_active: user.is_active,
            last_login: user.last_login.as_deref(),
            email: &user.email,
            attributes: &user.attributes,
            uid: self.dir.uid(user.pk),
        }
    }
}

fn related_group(group: &FakeGroup) -> RelatedGroupJson<'_> {
    RelatedGroupJson {
        pk: &group.pk,
        name: &group.name,
        is_superuser: group.is_superuser,
        attributes: &group.attributes,
        group_uuid: &group.pk,
    }
}

/// Authentik's `int(str(self.pk.int)[:5])`: the first five decimal digits of the uuid's
/// 128-bit value.
fn num_pk(uuid: &str) -> u64 {
    let value = u128::from_str_radix(&uuid.replace('-', ""), 16).unwrap_or_default();
    let digits = value.to_string();
    digits[..digits.len().min(5)].parse().unwrap_or_default()
}

/// The avatar of authentik's default `initials` mode (`avatar_mode_generated` in
/// `authentik/lib/avatars.py`): the same SVG, base64 in a data URI, close to 1 KB per user.
/// Only the colour hash differs (SHA-256 here, MD5 there).
fn avatar(user: &FakeUser) -> String {
    let name = [user.name.trim(), user.username.trim()]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or("a k");
    let parts: Vec<&str> = name.split_whitespace().collect();
    let initials: String = match parts.as_slice() {
        [single] => single.chars().take(2).collect(),
        [first, .., last] => first.chars().take(1).chain(last.chars().take(1)).collect(),
        [] => String::new(),
    };
    let initials = initials
        .to_uppercase()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let digest = Sha256::digest(name.to_lowercase());
    let color = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) % 0xFF_FFFF;
    // Clamped like authentik to avoid too dark or too light backgrounds.
    let channel = |shift: u32| ((color >> shift) & 0xFF).clamp(55, 200);
    let (red, green, blue) = (channel(16), channel(8), channel(0));
    let luminance = red as f64 * 0.299 + green as f64 * 0.587 + blue as f64 * 0.114;
    let text = if luminance > 186.0 { "000" } else { "fff" };
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64px\" height=\"64px\" \
         viewBox=\"0 0 64 64\" version=\"1.1\"><rect fill=\"#{red:02x}{green:02x}{blue:02x}\" \
         cx=\"32\" cy=\"32\" width=\"64\" height=\"64\" r=\"32\"/><text x=\"50%\" y=\"50%\" \
         style=\"color: #{text}; line-height: 1; font-family: -apple-system,BlinkMacSystemFont,\
         'Segoe UI','Roboto','Oxygen','Ubuntu','Fira Sans','Droid Sans','Helvetica Neue',\
         sans-serif; \" fill=\"#{text}\" alignment-baseline=\"middle\" \
         dominant-baseline=\"middle\" text-anchor=\"middle\" font-size=\"28\" \
         font-weight=\"400\" dy=\".1em\">{initials}</text></svg>"
    );
    format!("data:image/svg+xml;base64,{}", base64(svg.as_bytes()))
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64; small enough to write here rather than add a dependency.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    BASE64_ALPHABET[(triple >> (18 - 6 * i)) as usize & 63],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn num_pk_takes_five_leading_decimal_digits() {
        // 0x1_0000_0000 = 4294967296
        assert_eq!(num_pk("00000000-0000-0000-0000-000100000000"), 42949);
        assert_eq!(num_pk("00000000-0000-0000-0000-00000000000c"), 12);
    }

    #[test]
    fn avatar_initials_follow_authentik() {
        let mut dir = Directory::generate(1, 0);
        let pk = dir.add_user("solo", "internal");
        let user = dir.users.get_mut(&pk).unwrap();
        let svg = |user: &FakeUser| {
            let encoded = avatar(user);
            let b64 = encoded.strip_prefix("data:image/svg+xml;base64,").unwrap();
            decode(b64)
        };
        assert!(svg(user).contains(">SO</text>"));
        user.name = "Mary Ann de Vries".to_owned();
        assert!(svg(user).contains(">MV</text>"));
        user.name = "R&D <team>".to_owned();
        assert!(svg(user).contains(">R&lt;</text>"));
    }

    /// Test-only inverse of `base64`, to look inside the avatar.
    fn decode(text: &str) -> String {
        let values: Vec<u32> = text
            .bytes()
            .filter(|b| *b != b'=')
            .map(|b| BASE64_ALPHABET.iter().position(|a| *a == b).unwrap() as u32)
            .collect();
        let mut bytes = Vec::new();
        for chunk in values.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, v)| acc | v << (18 - 6 * i));
            bytes.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        String::from_utf8(bytes).unwrap()
    }
}
