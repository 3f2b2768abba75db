//! The fake server's data: users, groups and API tokens, and the seeded generator of a
//! realistic directory.
//!
//! Memberships are stored once, on the users (`FakeUser::groups`). Everything the API
//! derives from them (group members, child groups, superuser status) is computed when a
//! response is rendered, so a test that mutates the directory only has to change one place.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Owned by `akadmin`; reads everything.
pub const SUPERUSER_TOKEN: &str = "fake-superuser-token";
/// Owned by `svc-aksync-reader`; a role grants view_user/view_group, nothing else.
pub const READER_TOKEN: &str = "fake-reader-token";
/// Owned by a service account without any permission.
pub const NO_PERMISSION_TOKEN: &str = "fake-no-permission-token";
/// Owned by a person holding object permissions on a few users and groups only.
pub const OBJECT_READER_TOKEN: &str = "fake-object-reader-token";
/// A token that was revoked or has expired.
pub const REVOKED_TOKEN: &str = "fake-revoked-token";
/// A token of intent `app_password`, as `POST /core/users/service_account/` hands out.
pub const APP_PASSWORD_TOKEN: &str = "fake-app-password-token";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub install_id: String,
    /// By pk.
    pub users: BTreeMap<i64, FakeUser>,
    /// By uuid pk.
    pub groups: BTreeMap<String, FakeGroup>,
    /// By token value.
    pub tokens: BTreeMap<String, FakeToken>,
    /// RBAC roles, name by uuid (none unless a test adds them with [`Directory::add_role`]).
    pub roles: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeUser {
    pub pk: i64,
    pub username: String,
    pub name: String,
    pub email: String,
    pub is_active: bool,
    pub last_login: Option<String>,
    pub date_joined: String,
    /// `internal`, `external`, `service_account` or `internal_service_account`.
    pub user_type: String,
    pub path: String,
    pub attributes: Value,
    /// Direct group memberships (group uuids): the single source of truth for membership.
    pub groups: Vec<String>,
    pub uuid: String,
    pub last_updated: String,
    pub password_change_date: String,
    /// RBAC roles held directly (role uuids); since 2025.12.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGroup {
    /// The group's uuid.
    pub pk: String,
    pub name: String,
    pub is_superuser: bool,
    /// Parent group uuids; since 2025.12 a group may have several.
    pub parents: Vec<String>,
    pub attributes: Value,
    /// RBAC roles the group's members hold (role uuids).
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeToken {
    pub user_pk: i64,
    pub kind: TokenKind,
}

/// What a token may do, mirroring the permission situations section 4 of the API notes describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// Full lists; `/me/` lists system permissions.
    Superuser,
    /// Role-based reader: full lists, but `/me/` shows `system_permissions: []`.
    Reader,
    /// `/me/` and `/admin/version/` work; users and groups endpoints answer 403.
    NoPermission,
    /// Lists are silently filtered to these objects.
    ObjectReader {
        users: Vec<i64>,
        groups: Vec<String>,
    },
    /// Rejected as `Token invalid/expired`.
    Revoked,
    /// Rejected like an invalid token: only intent `api` is accepted as Bearer.
    AppPassword,
}

/// Users created by `add_user` get dates after every generated one, so that
/// `last_updated__gt` picks them up the way it would pick up a fresh account.
const ADDED_EPOCH: i64 = 1_772_355_600; // 2026-03-01T09:00:00Z
const GENERATED_FROM: i64 = 1_672_531_200; // 2023-01-01T00:00:00Z
const GENERATED_UNTIL: i64 = 1_772_150_400; // 2026-02-27T00:00:00Z
const DAY: i64 = 86_400;

/// (name, parent names, is_superuser, string attributes), parents listed before children.
type GroupSpec = (
    &'static str,
    &'static [&'static str],
    bool,
    &'static [(&'static str, &'static str)],
);
const GROUPS: &[GroupSpec] = &[
    ("authentik Admins", &[], true, &[]),
    ("Engineering", &[], false, &[("cost_center", "CC-1000")]),
    ("Operations", &[], false, &[("cost_center", "CC-2000")]),
    ("Backend", &["Engineering"], false, &[]),
    (
        "Platform",
        &["Engineering", "Operations"],
        false,
        &[("slack_channel", "#platform")],
    ),
    ("SRE", &["Platform"], false, &[("on_call", "true")]),
    ("Finance", &[], false, &[("cost_center", "CC-3000")]),
    ("HR", &[], false, &[("cost_center", "CC-4000")]),
    ("Sales", &[], false, &[]),
    ("Contractors", &[], false, &[("access_review", "quarterly")]),
    // Deliberately left without members.
    ("Alumni", &[], false, &[]),
];

/// (primary group, job titles, sub-team groups a member may also join).
type Department = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);
const DEPARTMENTS: &[Department] = &[
    (
        "Engineering",
        &[
            "Software Engineer",
            "Senior Software Engineer",
            "Staff Engineer",
            "Engineering Manager",
        ],
        &["Backend", "Platform", "SRE"],
    ),
    (
        "Operations",
        &[
            "Site Reliability Engineer",
            "IT Administrator",
            "Operations Analyst",
        ],
        &["Platform", "SRE"],
    ),
    (
        "Finance",
        &["Accountant", "Financial Controller", "Payroll Specialist"],
        &[],
    ),
    ("HR", &["HR Business Partner", "Recruiter"], &[]),
    (
        "Sales",
        &[
            "Account Executive",
            "Sales Engineer",
            "Customer Success Manager",
        ],
        &[],
    ),
];
const CONTRACTORS: Department = ("Contractors", &["Consultant", "Contractor"], &["Backend"]);
const PARTNER_COMPANIES: &[(&str, &str)] = &[
    ("Contoso", "contoso.example"),
    ("Fabrikam", "fabrikam.example"),
    ("Northwind", "northwind.example"),
];

const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Amara", "Anna", "Ben", "Carla", "Chen", "Daniel", "Elena", "Emil", "Fatima",
    "Felix", "Grace", "Hannah", "Ines", "Ivan", "Jamal", "Jonas", "Julia", "Kai", "Laura", "Leon",
    "Lina", "Lukas", "Maria", "Max", "Mei", "Mohammed", "Nina", "Noah", "Olga", "Oscar", "Paula",
    "Priya", "Rafael", "Sara", "Sofia", "Tariq", "Tom", "Yuki",
];
const LAST_NAMES: &[&str] = &[
    "Adams", "Becker", "Brown", "Costa", "Dubois", "Fischer", "Garcia", "Hoffmann", "Ivanova",
    "Jensen", "Kim", "Kowalski", "Lopez", "Martin", "Meyer", "Nakamura", "Novak", "Okafor",
    "Patel", "Rossi", "Schmidt", "Silva", "Smith", "Tanaka", "Wagner", "Weber", "Wong", "Yilmaz",
    "Zhang",
];

impl Directory {
    /// A deterministic directory: system accounts, the standard group hierarchy and `people`
    /// generated people. The same inputs always give an identical directory.
    pub fn generate(seed: u64, people: usize) -> Directory {
        let mut rng = SplitMix64(seed);
        let mut dir = Directory {
            install_id: derived_uuid(&["install", &seed.to_string()]),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            tokens: BTreeMap::new(),
            roles: BTreeMap::new(),
        };
        for &(name, parents, is_superuser, attributes) in GROUPS {
            let parents: Vec<String> = parents.iter().map(|p| dir.group_uuid(p)).collect();
            let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
            let uuid = dir.add_group(name, &parents, is_superuser);
            if let Some(group) = dir.groups.get_mut(&uuid) {
                group.attributes = string_object(attributes);
            }
        }
        let accounts = dir.add_system_accounts(&mut rng);
        let persons = dir.add_people(people, &mut rng);
        dir.issue_tokens(&accounts, &persons);
        dir
    }

    /// The `uid` authentik derives from the pk and the install id (`User.uid` in
    /// `authentik/core/models.py`: `sha256(f"{self.id}-{get_install_id()}")`).
    pub fn uid(&self, pk: i64) -> String {
        hex::encode(Sha256::digest(format!("{pk}-{}", self.install_id)))
    }

    /// Adds an active user under path `users` with no groups, pk max+1, and returns the pk.
    pub fn add_user(&mut self, username: &str, user_type: &str) -> i64 {
        self.insert_user(username, user_type).pk
    }

    fn insert_user(&mut self, username: &str, user_type: &str) -> &mut FakeUser {
        let pk = self.users.keys().next_back().map_or(1, |max| max + 1);
        let stamp = timestamp(
            ADDED_EPOCH.saturating_add(pk.saturating_mul(61)),
            if pk % 2 == 0 {
                0
            } else {
                pk.wrapping_mul(7919).rem_euclid(1_000_000) as u32
            },
        );
        let user = FakeUser {
            pk,
            username: username.to_owned(),
            name: String::new(),
            email: String::new(),
            is_active: true,
            last_login: None,
            date_joined: stamp.clone(),
            user_type: user_type.to_owned(),
            path: "users".to_owned(),
            attributes: json!({}),
            groups: Vec::new(),
            uuid: derived_uuid(&[&self.install_id, "user", &pk.to_string()]),
            last_updated: stamp.clone(),
            password_change_date: stamp,
            roles: Vec::new(),
        };
        self.users.entry(pk).or_insert(user)
    }

    /// Adds a group without attributes and returns its uuid.
    pub fn add_group(&mut self, name: &str, parents: &[&str], is_superuser: bool) -> String {
        // The salt only matters when a name is reused; it keeps uuids unique yet deterministic.
        let uuid = (0u32..)
            .map(|salt| derived_uuid(&[&self.install_id, "group", name, &salt.to_string()]))
            .find(|uuid| !self.groups.contains_key(uuid))
            .unwrap_or_default();
        let group = FakeGroup {
            pk: uuid.clone(),
            name: name.to_owned(),
            is_superuser,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            attributes: json!({}),
            roles: Vec::new(),
        };
        self.groups.insert(uuid.clone(), group);
        uuid
    }

    /// Adds an RBAC role and returns its uuid.
    pub fn add_role(&mut self, name: &str) -> String {
        let uuid = derived_uuid(&[&self.install_id, "role", name]);
        self.roles.insert(uuid.clone(), name.to_owned());
        uuid
    }

    pub fn user_by_username(&self, username: &str) -> Option<&FakeUser> {
        self.users.values().find(|u| u.username == username)
    }

    pub fn user_by_username_mut(&mut self, username: &str) -> Option<&mut FakeUser> {
        self.users.values_mut().find(|u| u.username == username)
    }

    pub fn group_by_name(&self, name: &str) -> Option<&FakeGroup> {
        self.groups.values().find(|g| g.name == name)
    }

    /// Deletes a group the way the database cascade would: memberships and parent links go too.
    pub fn remove_group(&mut self, uuid: &str) {
        self.groups.remove(uuid);
        for user in self.users.values_mut() {
            user.groups.retain(|g| g != uuid);
        }
        for group in self.groups.values_mut() {
            group.parents.retain(|p| p != uuid);
        }
    }

    fn group_uuid(&self, name: &str) -> String {
        self.group_by_name(name)
            .map(|g| g.pk.clone())
            .unwrap_or_default()
    }

    /// Adds a user and gives it generated (pre-2026-03) dates instead of `add_user`'s.
    fn add_generated_user(
        &mut self,
        username: &str,
        user_type: &str,
        rng: &mut SplitMix64,
    ) -> &mut FakeUser {
        let joined = rng.between(GENERATED_FROM, GENERATED_UNTIL - 30 * DAY);
        let password_changed = rng.between(joined, joined + 30 * DAY);
        let updated = rng.between(password_changed, GENERATED_UNTIL);
        let user = self.insert_user(username, user_type);
        user.date_joined = rng.timestamp(joined);
        user.password_change_date = rng.timestamp(password_changed);
        user.last_updated = rng.timestamp(updated);
        user
    }

    fn add_system_accounts(&mut self, rng: &mut SplitMix64) -> SystemAccounts {
        let admins = self.group_uuid("authentik Admins");
        let admin = self.add_generated_user("akadmin", "internal", rng);
        admin.name = "authentik Default Admin".to_owned();
        admin.email = "root@localhost".to_owned();
        admin.groups = vec![admins];
        admin.last_login = Some(admin.last_updated.clone());
        let admin = admin.pk;

        let outpost_id = derived_uuid(&[&self.install_id, "outpost"]).replace('-', "");
        let outpost = self.add_generated_user(
            &format!("ak-outpost-{outpost_id}"),
            "internal_service_account",
            rng,
        );
        outpost.name = "Outpost authentik Embedded Outpost Service-Account".to_owned();
        outpost.path = "goauthentik.io/outposts".to_owned();
        outpost.attributes = json!({"goauthentik.io/user/override-ips": true});

        let mut service_account = |username: &str, path: &str| {
            let user = self.add_generated_user(username, "service_account", rng);
            user.name = username.to_owned();
            user.path = path.to_owned();
            user.attributes = json!({"goauthentik.io/user/service-account": true});
            user.pk
        };
        let reader = service_account("svc-aksync-reader", "goauthentik.io/service-accounts");
        let monitoring = service_account("svc-monitoring", "goauthentik.io/service-accounts");
        // Created through POST /core/users/ with type=service_account, so it kept path `users`.
        let importer = service_account("svc-hr-import", "users");
        SystemAccounts {
            admin,
            reader,
            monitoring,
            importer,
        }
    }

    /// Returns the people's pks in creation order.
    fn add_people(&mut self, people: usize, rng: &mut SplitMix64) -> Vec<i64> {
        // Fixed strides (not coin flips) guarantee that even small directories contain
        // external and inactive people.
        let external_offset = rng.below(8) as usize;
        let inactive_offset = rng.below(10) as usize;
        let mut taken: HashSet<String> = self.users.values().map(|u| u.username.clone()).collect();
        (0..people)
            .map(|i| {
                let first = *rng.pick(FIRST_NAMES);
                let last = *rng.pick(LAST_NAMES);
                let base = format!("{}.{}", first.to_lowercase(), last.to_lowercase());
                let username = (1..)
                    .map(|n| {
                        if n == 1 {
                            base.clone()
                        } else {
                            format!("{base}{n}")
                        }
                    })
                    .find(|candidate| !taken.contains(candidate))
                    .unwrap_or_default();
                taken.insert(username.clone());
                let person = Person {
                    index: i,
                    first,
                    last,
                    username,
                    external: (i + external_offset).is_multiple_of(8),
                    active: !(i + inactive_offset).is_multiple_of(10),
                };
                self.add_person(&person, rng)
            })
            .collect()
    }

    fn add_person(&mut self, person: &Person, rng: &mut SplitMix64) -> i64 {
        let (department, titles, subteams) = if person.external {
            CONTRACTORS
        } else {
            *rng.pick(DEPARTMENTS)
        };
        let mut groups = Vec::new();
        if rng.below(12) != 0 {
            groups.push(self.group_uuid(department));
            for _ in 0..rng.below(3) {
                if !subteams.is_empty() {
                    let uuid = self.group_uuid(rng.pick::<&str>(subteams));
                    if !groups.contains(&uuid) {
                        groups.push(uuid);
                    }
                }
            }
        }
        let title = *rng.pick(titles);
        let (path, domain, attributes) = if person.external {
            let (company, domain) = *rng.pick(PARTNER_COMPANIES);
            let attributes = json!({"department": department, "title": title, "company": company});
            ("users/external", domain, attributes)
        } else {
            let employee_id = format!("E{:04}", person.index + 1);
            let attributes =
                json!({"department": department, "title": title, "employee_id": employee_id});
            ("users", "example.com", attributes)
        };
        // Mixed-case addresses make it observable whether a client lower-cases emails.
        let email = if rng.below(3) == 0 {
            let local: Vec<String> = person.username.split('.').map(capitalize).collect();
            format!("{}@{}", local.join("."), capitalize(domain))
        } else {
            format!("{}@{domain}", person.username)
        };
        let logs_in = rng.below(2) == 0;
        let user = self.add_generated_user(
            &person.username,
            if person.external {
                "external"
            } else {
                "internal"
            },
            rng,
        );
        user.name = if person.index % 9 == 4 {
            String::new()
        } else {
            format!("{} {}", person.first, person.last)
        };
        user.email = email;
        user.is_active = person.active;
        user.path = path.to_owned();
        user.attributes = attributes;
        user.groups = groups;
        user.last_login = logs_in.then(|| user.last_updated.clone());
        user.pk
    }

    fn issue_tokens(&mut self, accounts: &SystemAccounts, persons: &[i64]) {
        let object_reader = persons
            .iter()
            .copied()
            .find(|pk| {
                self.users
                    .get(pk)
                    .is_some_and(|u| u.is_active && u.user_type == "internal")
            })
            .unwrap_or(accounts.importer);
        let visible_users = persons
            .iter()
            .copied()
            .filter(|pk| *pk != object_reader)
            .take(4)
            .collect();
        let visible_groups = vec![self.group_uuid("Finance"), self.group_uuid("HR")];
        let tokens = [
            (SUPERUSER_TOKEN, accounts.admin, TokenKind::Superuser),
            (READER_TOKEN, accounts.reader, TokenKind::Reader),
            (
                NO_PERMISSION_TOKEN,
                accounts.monitoring,
                TokenKind::NoPermission,
            ),
            (
                OBJECT_READER_TOKEN,
                object_reader,
                TokenKind::ObjectReader {
                    users: visible_users,
                    groups: visible_groups,
                },
            ),
            (REVOKED_TOKEN, accounts.admin, TokenKind::Revoked),
            (
                APP_PASSWORD_TOKEN,
                accounts.importer,
                TokenKind::AppPassword,
            ),
        ];
        for (value, user_pk, kind) in tokens {
            self.tokens
                .insert(value.to_owned(), FakeToken { user_pk, kind });
        }
    }
}

struct SystemAccounts {
    admin: i64,
    reader: i64,
    monitoring: i64,
    importer: i64,
}

struct Person {
    index: usize,
    first: &'static str,
    last: &'static str,
    username: String,
    external: bool,
    active: bool,
}

/// splitmix64: a tiny PRNG whose output is fixed forever, unlike library RNGs that may
/// change their algorithm between versions, so generated directories stay byte-identical.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for test data; `n` must be non-zero.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, from: i64, to: i64) -> i64 {
        from + self.below((to - from).max(1) as u64) as i64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// DRF omits the fraction when the microseconds are zero; a quarter of the
    /// timestamps take that form so clients must parse both.
    fn timestamp(&mut self, secs: i64) -> String {
        let micros = if self.below(4) == 0 {
            0
        } else {
            self.below(1_000_000) as u32
        };
        timestamp(secs, micros)
    }
}

/// ISO-8601 UTC with `Z`, the way DRF renders datetimes.
fn timestamp(secs: i64, micros: u32) -> String {
    let base = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S");
    if micros == 0 {
        format!("{base}Z")
    } else {
        format!("{base}.{micros:06}Z")
    }
}

/// A version-4-shaped uuid that depends only on `parts`, so ids are reproducible.
fn derived_uuid(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\u{1f}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    dashed_uuid(&hex::encode(bytes))
}

/// 32 lowercase hex digits in the canonical 8-4-4-4-12 form.
pub(super) fn dashed_uuid(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn string_object(pairs: &[(&str, &str)]) -> Value {
    let map: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    Value::Object(map)
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}
