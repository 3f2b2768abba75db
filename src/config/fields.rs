//! `ignore_fields`: fields named as Authentik names them (as in the CEL `payload` and in
//! `hr_key_field`), resolved at load to the fields of aksync's normalized records that the
//! change rule ([`crate::run::record::ChangeRule`]) leaves out of the material view.
//!
//! One Authentik field can feed several normalized ones (`name` feeds `display_name`,
//! `given_name` and `family_name`): ignoring it ignores all of them. A name applies to
//! accounts and groups alike where both have it (`name`, `attributes.<key>`, `roles`,
//! `is_superuser`). aksync's own names of the normalized fields (`metadata.<key>`,
//! `display_name`, …) still work as they did, with a deprecation warning naming the
//! Authentik name to write instead. Volatile fields (`last_login`, …) are never a change
//! already, so an entry naming one is accepted with a warning that it does nothing. Any other
//! name is refused at load, with the closest known name when one is close.

use crate::run::record::RecordKind;

/// The prefix of an attribute: `attributes.<key>` names one key of a record's Authentik
/// attributes (the whole rest, dots included, since attribute keys such as
/// `goauthentik.io/user/service-account` contain dots).
const ATTRIBUTES: &str = "attributes";
/// The normalized records' name for the attributes.
const METADATA: &str = "metadata";

/// Authentik's fields (besides `attributes`) and the normalized record fields each feeds,
/// as [`crate::run::normalize`] builds them.
const AUTHENTIK_FIELDS: [(&str, &[&str]); 12] = [
    ("date_joined", &["added_at"]),
    ("email", &["canonical_email"]),
    ("is_active", &["status"]),
    ("is_superuser", &["is_superuser"]),
    ("name", &["display_name", "family_name", "given_name"]),
    // Before 2025.12 a group had a single `parent`.
    ("parent", &["parents"]),
    ("parents", &["parents"]),
    ("path", &["organization_unit"]),
    ("roles", &["roles"]),
    ("type", &["account_type", "authentik_type"]),
    // Not `display_name` too, although an account without a name is displayed by its
    // username: a group's `display_name` is its name, which ignoring usernames must not hide.
    ("username", &["username"]),
    ("uuid", &["secondary_key"]),
];

/// The normalized records' names that `ignore_fields` took before it took Authentik's (each
/// still ignores the one field it names), with the Authentik name to write instead.
const NORMALIZED_NAMES: [(&str, &str); 11] = [
    ("account_type", "type"),
    ("added_at", "date_joined"),
    ("authentik_type", "type"),
    ("canonical_email", "email"),
    ("display_name", "name"),
    ("family_name", "name"),
    ("given_name", "name"),
    (METADATA, ATTRIBUTES),
    ("organization_unit", "path"),
    ("secondary_key", "uuid"),
    ("status", "is_active"),
];

/// Authentik's names of the values that move with activity; aksync's own are
/// [`RecordKind::volatile_fields`].
const AUTHENTIK_VOLATILE: [&str; 3] = ["last_login", "last_updated", "password_change_date"];

/// Fields a record has that cannot be ignored, and why.
const NOT_IGNORABLE: [(&str, &str); 7] = [
    (
        "children",
        "lists a group's child groups, which are the `parents` of those groups",
    ),
    ("external_id", "is the record's identity"),
    (
        "groups",
        "lists memberships, which are records of their own",
    ),
    ("num_pk", "is the record's identity"),
    ("pk", "is the record's identity"),
    ("uid", "is the record's identity"),
    ("users", "lists memberships, which are records of their own"),
];

/// What is wrong with one entry of `ignore_fields`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("is empty: remove it, or name a field such as \"attributes.title\"")]
    Empty,
    #[error("names no attribute: write \"attributes.<key>\", e.g. \"attributes.title\"")]
    NoAttributeKey,
    #[error("{0}, so it cannot be ignored: remove it")]
    NotIgnorable(&'static str),
    #[error("names no field aksync keeps: did you mean `{0}`?")]
    Misspelt(String),
    #[error(
        "names no field aksync keeps: use one of Authentik's names: {}",
        known_names()
    )]
    Unknown,
}

/// An entry of `ignore_fields` that is refused, with the key it is under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` entry {entry:?} {reason}")]
pub struct IgnoreFieldError {
    pub key: String,
    pub entry: String,
    pub reason: FieldError,
}

/// `ignore_fields` resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoredFields {
    /// The normalized record fields the entries name, sorted, without duplicates: what the
    /// change rule leaves out.
    pub record_fields: Vec<String>,
    /// One line per entry that works but deserves a word (a deprecated name, a volatile
    /// field), naming the key and the entry.
    pub warnings: Vec<String>,
}

/// What one entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolution {
    Fields(Vec<String>),
    /// An old name of aksync's, still honoured: the fields it names and what to write.
    Deprecated {
        fields: Vec<String>,
        instead: String,
    },
    /// A value that is never a change on its own.
    Volatile,
}

/// Resolves the entries of `ignore_fields` (`key` is where they are, for messages).
pub fn resolve(key: &str, entries: &[String]) -> Result<IgnoredFields, IgnoreFieldError> {
    let mut resolved = IgnoredFields::default();
    for entry in entries {
        let refused = |reason| IgnoreFieldError {
            key: key.to_string(),
            entry: entry.clone(),
            reason,
        };
        match resolve_entry(entry).map_err(refused)? {
            Resolution::Fields(fields) => resolved.record_fields.extend(fields),
            Resolution::Deprecated { fields, instead } => {
                let covers = match resolve_entry(&instead) {
                    Ok(Resolution::Fields(wider)) if wider != fields => {
                        format!(" (it covers {})", wider.join(", "))
                    }
                    _ => String::new(),
                };
                resolved.warnings.push(format!(
                    "`{key}` entry {entry:?} is aksync's deprecated name of the field: write {instead:?}, Authentik's name{covers}"
                ));
                resolved.record_fields.extend(fields);
            }
            Resolution::Volatile => resolved.warnings.push(format!(
                "`{key}` entry {entry:?} changes nothing: logins, Authentik's last update and a group's member count are never a change on their own; remove it"
            )),
        }
    }
    resolved.record_fields.sort();
    resolved.record_fields.dedup();
    Ok(resolved)
}

/// The record fields that `ignore_fields` entries recorded by an earlier run name. An entry
/// today's names refuse was accepted by an older aksync, which compared it as written: it
/// stays as written.
pub fn resolve_recorded(entries: &[String]) -> Vec<String> {
    let mut fields = Vec::new();
    for entry in entries {
        match resolve_entry(entry) {
            Ok(Resolution::Fields(named) | Resolution::Deprecated { fields: named, .. }) => {
                fields.extend(named)
            }
            Ok(Resolution::Volatile) => {}
            Err(_) => fields.push(entry.clone()),
        }
    }
    fields.sort();
    fields.dedup();
    fields
}

fn resolve_entry(entry: &str) -> Result<Resolution, FieldError> {
    if entry.trim().is_empty() {
        return Err(FieldError::Empty);
    }
    if let Some((prefix, key)) = entry.split_once('.') {
        return match prefix {
            _ if key.is_empty() && [ATTRIBUTES, METADATA].contains(&prefix) => {
                Err(FieldError::NoAttributeKey)
            }
            ATTRIBUTES => Ok(Resolution::Fields(vec![format!("{METADATA}.{key}")])),
            METADATA => Ok(Resolution::Deprecated {
                fields: vec![entry.to_string()],
                instead: format!("{ATTRIBUTES}.{key}"),
            }),
            _ if [ATTRIBUTES, METADATA]
                .iter()
                .any(|known| is_close(prefix, known)) =>
            {
                Err(FieldError::Misspelt(format!("{ATTRIBUTES}.{key}")))
            }
            _ => Err(FieldError::Unknown),
        };
    }
    if entry == ATTRIBUTES {
        return Ok(Resolution::Fields(vec![METADATA.to_string()]));
    }
    if let Some((_, fields)) = AUTHENTIK_FIELDS.iter().find(|(name, _)| *name == entry) {
        return Ok(Resolution::Fields(
            fields.iter().map(|field| field.to_string()).collect(),
        ));
    }
    if let Some((_, instead)) = NORMALIZED_NAMES.iter().find(|(name, _)| *name == entry) {
        return Ok(Resolution::Deprecated {
            fields: vec![entry.to_string()],
            instead: instead.to_string(),
        });
    }
    let volatile = RecordKind::ALL
        .iter()
        .flat_map(|kind| kind.volatile_fields())
        .chain(AUTHENTIK_VOLATILE.iter());
    if volatile.into_iter().any(|name| *name == entry) {
        return Ok(Resolution::Volatile);
    }
    if let Some((_, why)) = NOT_IGNORABLE.iter().find(|(name, _)| *name == entry) {
        return Err(FieldError::NotIgnorable(why));
    }
    // A misspelt old name is pointed to the Authentik name that replaces it.
    let candidates = std::iter::once((ATTRIBUTES, ATTRIBUTES))
        .chain(AUTHENTIK_FIELDS.iter().map(|(name, _)| (*name, *name)))
        .chain(NORMALIZED_NAMES.iter().copied());
    candidates
        .map(|(name, instead)| (strsim::osa_distance(entry, name), instead))
        .filter(|(distance, _)| *distance <= closeness(entry))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, instead)| Err(FieldError::Misspelt(instead.to_string())))
        .unwrap_or(Err(FieldError::Unknown))
}

/// How many edits (a transposition counts as one) still make a typo of a name this long:
/// one, and one more per three characters beyond the first three.
fn closeness(typed: &str) -> usize {
    1.max(typed.chars().count() / 3)
}

fn is_close(typed: &str, name: &str) -> bool {
    strsim::osa_distance(typed, name) <= closeness(typed)
}

/// The name among `names` that `typed` is a typo of, the closest if several are; also for
/// the configuration's own keys.
pub(crate) fn closest_name<'a>(
    typed: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    names
        .into_iter()
        .map(|name| (strsim::osa_distance(typed, name), name))
        .filter(|(distance, _)| *distance <= closeness(typed))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// Authentik's names, for the message that names none of them.
fn known_names() -> String {
    let mut names: Vec<&str> = AUTHENTIK_FIELDS.iter().map(|(name, _)| *name).collect();
    names.insert(0, "attributes.<key>");
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const KEY: &str = "sources.corp.ignore_fields";

    fn resolved(entries: &[&str]) -> Result<IgnoredFields, FieldError> {
        let entries: Vec<String> = entries.iter().map(|entry| entry.to_string()).collect();
        resolve(KEY, &entries).map_err(|error| error.reason)
    }

    fn fields(entries: &[&str]) -> Vec<String> {
        resolved(entries).unwrap().record_fields
    }

    #[test]
    fn authentik_names_resolve_to_the_fields_they_feed() {
        assert_eq!(fields(&["attributes.title"]), ["metadata.title"]);
        assert_eq!(
            fields(&["attributes.goauthentik.io/user/service-account"]),
            ["metadata.goauthentik.io/user/service-account"]
        );
        assert_eq!(fields(&["attributes"]), ["metadata"]);
        assert_eq!(
            fields(&["name", "email"]),
            [
                "canonical_email",
                "display_name",
                "family_name",
                "given_name"
            ]
        );
        assert_eq!(fields(&["parent", "parents"]), ["parents"]);
        assert!(resolved(&["name", "attributes.title"])
            .unwrap()
            .warnings
            .is_empty());
    }

    /// The table agrees with the normalizer: changing an Authentik field of a raw user or
    /// group changes exactly the normalized fields it is said to feed.
    #[test]
    fn each_authentik_field_feeds_what_the_normalizer_makes_of_it() {
        use crate::run::normalize::{account, group_record, read_group, read_user};
        let user = json!({
            "pk": 1, "username": "ada", "name": "Ada Lovelace", "is_active": true,
            "date_joined": "2026-01-01T00:00:00Z", "is_superuser": false, "groups": [],
            "email": "ada@example.com", "attributes": {"title": "Engineer"}, "uid": "uid1",
            "path": "users", "type": "internal", "uuid": "uuid-1", "roles": ["r1"]
        });
        let group = json!({
            "pk": "g1", "name": "Staff", "is_superuser": false, "parents": ["p1"],
            "attributes": {"title": "x"}, "roles": ["r1"], "users": []
        });
        let normalized = |kind: RecordKind, raw: &Value| match kind {
            RecordKind::Account => serde_json::to_value(account(&read_user(raw).unwrap())).unwrap(),
            _ => serde_json::to_value(group_record(&read_group(raw).unwrap())).unwrap(),
        };
        let changed = [
            ("date_joined", json!("2026-02-01T00:00:00Z")),
            ("email", json!("lovelace@example.com")),
            ("is_active", json!(false)),
            ("is_superuser", json!(true)),
            ("name", json!("Augusta King")),
            ("parents", json!(["p2"])),
            ("path", json!("staff")),
            ("roles", json!(["r2"])),
            ("type", json!("external")),
            ("username", json!("augusta")),
            ("uuid", json!("uuid-2")),
        ];
        for (field, value) in changed {
            let mut seen = Vec::new();
            for (kind, raw) in [(RecordKind::Account, &user), (RecordKind::Group, &group)] {
                if raw.get(field).is_none() {
                    continue;
                }
                let mut after = raw.clone();
                after[field] = value.clone();
                let (old, new) = (normalized(kind, raw), normalized(kind, &after));
                let object = new.as_object().unwrap();
                seen.extend(
                    object
                        .keys()
                        .filter(|key| old[key.as_str()] != new[key.as_str()])
                        .cloned(),
                );
            }
            seen.sort();
            seen.dedup();
            assert_eq!(fields(&[field]), seen, "{field}");
        }
    }

    #[test]
    fn old_names_still_work_with_a_warning_naming_the_authentik_name() {
        let title = resolved(&["metadata.title"]).unwrap();
        assert_eq!(title.record_fields, ["metadata.title"]);
        assert_eq!(
            title.warnings,
            [format!(
                "`{KEY}` entry \"metadata.title\" is aksync's deprecated name of the field: write \"attributes.title\", Authentik's name"
            )]
        );
        let display = resolved(&["display_name"]).unwrap();
        assert_eq!(display.record_fields, ["display_name"]);
        assert!(
            display.warnings[0]
                .contains("write \"name\", Authentik's name (it covers display_name, family_name, given_name)"),
            "{:?}",
            display.warnings
        );
        assert_eq!(fields(&["metadata"]), ["metadata"]);
    }

    #[test]
    fn volatile_fields_are_accepted_as_doing_nothing() {
        for name in [
            "last_login",
            "last_login_at",
            "member_count",
            "password_change_date",
        ] {
            let volatile = resolved(&[name]).unwrap();
            assert!(volatile.record_fields.is_empty(), "{name}");
            assert!(volatile.warnings[0].contains("changes nothing"), "{name}");
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_closest_known_one() {
        let misspelt = |entry: &str| match resolved(&[entry]) {
            Err(FieldError::Misspelt(name)) => name,
            other => panic!("{entry}: {other:?}"),
        };
        assert_eq!(misspelt("emial"), "email");
        assert_eq!(misspelt("attribute.title"), "attributes.title");
        assert_eq!(misspelt("metdata.title"), "attributes.title");
        assert_eq!(misspelt("usrname"), "username");
        // An old name misspelt points to the name to write now.
        assert_eq!(misspelt("canonical_emial"), "email");
        assert_eq!(resolved(&["shoe_size"]), Err(FieldError::Unknown));
        assert_eq!(resolved(&["name.first"]), Err(FieldError::Unknown));
        assert_eq!(resolved(&["attributes."]), Err(FieldError::NoAttributeKey));
        assert_eq!(resolved(&[" "]), Err(FieldError::Empty));
        assert!(matches!(
            resolved(&["uid"]),
            Err(FieldError::NotIgnorable(_))
        ));
        // Attribute keys are free-form: one that no record has yet is no mistake.
        assert_eq!(fields(&["attributes.titel"]), ["metadata.titel"]);
        let error = resolve(KEY, &["emial".to_string()]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("`{KEY}` entry \"emial\" names no field aksync keeps: did you mean `email`?")
        );
        assert!(FieldError::Unknown
            .to_string()
            .contains("attributes.<key>, date_joined, email"));
    }
}
