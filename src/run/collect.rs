//! One run's directory as it arrives, page by page: each raw user and group is checked for
//! duplicates, judged in or out of the source's scope by its filters, normalized and spooled
//! to disk at once. Every record is kept, whatever its scope: the snapshot is the directory,
//! the scope a view of it (a record's flags carry it, see [`Flags::OUT_OF_SCOPE`]). What stays in memory is what
//! the checks across records need: pks and uids, group ids, and memberships as pairs of small
//! indexes. When the listings are complete, [`Collector::finish`] checks every reference and
//! that users' and groups' membership lists agree, and hands the sorted records to the diff.

use std::collections::HashMap;
use std::path::Path;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::authentik::client::ListedPage;
use crate::authentik::ListKind;
use crate::canonical::canonical_json;
use crate::config::filter::{FilterTarget, Judged, ScopeRules};
use crate::config::SourceConfig;
use crate::run::normalize::{
    account, group_record, read_group, read_user, stored_payload, DirectoryMembership,
    NormalizeError,
};
use crate::run::record::{raw, sha256, ChangeRule, RecordKind};
use crate::run::spool::{Spool, SpoolWriter};
use crate::store::codec::Flags;
use crate::store::ScopeCounts;

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The directory is not consistent (it changed while it was read, or the server lies).
    #[error("the directory changed during the run: {0}")]
    Inconsistent(#[from] NormalizeError),
    #[error(
        "the {list} listing was inconsistent: two different records have the pk {}",
        crate::display::quote(pk, 100)
    )]
    Duplicate { list: &'static str, pk: String },
    #[error(
        "the users listing was inconsistent: the users with the pks {first_pk} and {second_pk} have one uid {}",
        crate::display::quote(uid, 100)
    )]
    DuplicateUid {
        uid: String,
        first_pk: i64,
        second_pk: i64,
    },
    #[error("the {list} listing was inconsistent: page {page} held only records of earlier pages")]
    StalePage { list: &'static str, page: u64 },
    #[error("{0}")]
    Filter(String),
    #[error("cannot spool the run's records in the state directory: {0}")]
    Io(#[from] std::io::Error),
}

impl CollectError {
    /// A listing that shifted while it was read may be fine on a second read.
    pub fn is_inconsistency(&self) -> bool {
        matches!(
            self,
            CollectError::Inconsistent(_)
                | CollectError::Duplicate { .. }
                | CollectError::StalePage { .. }
        )
    }
}

/// A group pk or a user, by its index in the collector's tables.
type Index = u32;

pub struct Collector {
    group_sync: bool,
    scope: ScopeRules,
    counts: ScopeCounts,
    ignore_fields: Vec<String>,
    user_index: HashMap<i64, Index>,
    users: Vec<UserSlot>,
    group_index: HashMap<Box<str>, Index>,
    groups: Vec<GroupSlot>,
    /// (user, group) from users' `groups`.
    from_users: Vec<(Index, Index)>,
    /// (member pk, group) from groups' `users`; `None` once a group came without the list.
    from_groups: Option<Vec<(i64, Index)>>,
    /// (group, parent).
    parents: Vec<(Index, Index)>,
    accounts: SpoolWriter,
    group_records: SpoolWriter,
}

struct UserSlot {
    uid: Box<str>,
    digest: u64,
    in_scope: bool,
}

struct GroupSlot {
    pk: Box<str>,
    /// The digest of the listed object; `None` while it is only referenced.
    listed: Option<u64>,
    in_scope: bool,
}

impl ScopeCounts {
    fn note(&mut self, judged: Judged) {
        match judged {
            Judged::ErrorExcluded => self.filter_errors_excluded += 1,
            Judged::ErrorIncluded => self.filter_errors_included += 1,
            Judged::InScope | Judged::OutOfScope => {}
        }
    }
}

impl Collector {
    /// Spools into `dir` (the state directory).
    pub fn new(dir: &Path, source: &SourceConfig) -> Result<Collector, CollectError> {
        Ok(Collector {
            group_sync: !source.disable_group_sync,
            scope: ScopeRules::of(source).map_err(CollectError::Filter)?,
            counts: ScopeCounts::default(),
            ignore_fields: source.ignore_fields.clone(),
            user_index: HashMap::new(),
            users: Vec::new(),
            group_index: HashMap::new(),
            groups: Vec::new(),
            from_users: Vec::new(),
            from_groups: Some(Vec::new()),
            parents: Vec::new(),
            accounts: SpoolWriter::new(dir, RecordKind::Account)?,
            group_records: SpoolWriter::new(dir, RecordKind::Group)?,
        })
    }

    /// Whether the users listing held this pk (the token's own user, say).
    pub fn has_user(&self, pk: i64) -> bool {
        self.user_index.contains_key(&pk)
    }

    /// How many distinct records of a listing arrived.
    pub fn distinct(&self, kind: ListKind) -> u64 {
        match kind {
            ListKind::Users => self.users.len() as u64,
            ListKind::Groups => self.groups.iter().filter(|g| g.listed.is_some()).count() as u64,
        }
    }

    /// Adds one page of a listing. A page that holds records and none of them new cannot be
    /// a shift, only a server that answers every page alike.
    pub fn add_page(&mut self, page: ListedPage) -> Result<(), CollectError> {
        let held = page.records.len();
        let mut new = 0;
        for raw in page.records {
            let added = match page.kind {
                ListKind::Users => self.add_user(raw)?,
                ListKind::Groups => self.add_group(raw)?,
            };
            new += usize::from(added);
        }
        if held > 0 && new == 0 {
            return Err(CollectError::StalePage {
                list: page.kind.name(),
                page: page.number,
            });
        }
        Ok(())
    }

    /// Adds a raw user; `false` when it was seen before (and is the same).
    pub fn add_user(&mut self, raw: Value) -> Result<bool, CollectError> {
        let user = read_user(&raw)?;
        let digest = digest(&raw);
        if let Some(&index) = self.user_index.get(&user.pk) {
            // A listing that shifts by a page shows a record twice; it must be the same.
            if self.users[index as usize].digest != digest {
                return Err(CollectError::Duplicate {
                    list: "users",
                    pk: user.pk.to_string(),
                });
            }
            return Ok(false);
        }
        let judged = self
            .scope
            .judge(FilterTarget::Users, &raw, &user.username)
            .map_err(CollectError::Filter)?;
        self.counts.note(judged);
        let in_scope = judged.in_scope();
        self.counts.accounts_out_of_scope += u64::from(!in_scope);
        let index = self.users.len() as Index;
        self.user_index.insert(user.pk, index);
        self.users.push(UserSlot {
            uid: user.uid.as_str().into(),
            digest,
            in_scope,
        });
        if self.group_sync {
            for group in &user.groups {
                let group = self.group(group);
                self.from_users.push((index, group));
            }
        }
        let record = serde_json::to_value(account(&user)).map_err(std::io::Error::other)?;
        let rule = ChangeRule::new(&self.ignore_fields);
        self.accounts
            .push(&user.uid, record, stored_payload(raw), &rule, in_scope)?;
        Ok(true)
    }

    /// Adds a raw group; `false` when it was seen before (and is the same).
    pub fn add_group(&mut self, raw: Value) -> Result<bool, CollectError> {
        let group = read_group(&raw)?;
        let digest = digest(&raw);
        let index = self.group(&group.pk);
        if self.groups[index as usize].listed.is_none() {
            let judged = self
                .scope
                .judge(FilterTarget::Groups, &raw, &group.name)
                .map_err(CollectError::Filter)?;
            self.counts.note(judged);
            self.groups[index as usize].in_scope = judged.in_scope();
            self.counts.groups_out_of_scope += u64::from(!judged.in_scope());
        }
        let in_scope = self.groups[index as usize].in_scope;
        let slot = &mut self.groups[index as usize];
        match slot.listed {
            Some(seen) if seen == digest => return Ok(false),
            Some(_) => {
                return Err(CollectError::Duplicate {
                    list: "groups",
                    pk: group.pk.clone(),
                })
            }
            None => slot.listed = Some(digest),
        }
        match (&group.users, self.from_groups.as_mut()) {
            (Some(members), Some(pairs)) => pairs.extend(members.iter().map(|pk| (*pk, index))),
            // A server that omits `users` gives no second view to compare with.
            _ => self.from_groups = None,
        }
        for parent in group.parent_ids() {
            let parent = self.group(&parent);
            self.parents.push((index, parent));
        }
        let record = serde_json::to_value(group_record(&group)).map_err(std::io::Error::other)?;
        let rule = ChangeRule::new(&self.ignore_fields);
        self.group_records
            .push(&group.pk, record, stored_payload(raw), &rule, in_scope)?;
        Ok(true)
    }

    fn group(&mut self, pk: &str) -> Index {
        if let Some(&index) = self.group_index.get(pk) {
            return index;
        }
        let index = self.groups.len() as Index;
        self.group_index.insert(pk.into(), index);
        self.groups.push(GroupSlot {
            pk: pk.into(),
            listed: None,
            in_scope: true,
        });
        index
    }

    /// Checks every reference across records and the two membership views, counts the
    /// memberships out of scope, and sorts what was spooled.
    pub fn finish(mut self) -> Result<Collected, CollectError> {
        self.check_unique_uids()?;
        let dangling =
            |message: String| CollectError::Inconsistent(NormalizeError::Dangling(message));
        if let Some(&(group, parent)) = self
            .parents
            .iter()
            .find(|(_, parent)| self.groups[*parent as usize].listed.is_none())
        {
            return Err(dangling(format!(
                "group {} has parent {}, which is not in the groups listing",
                self.groups[group as usize].pk, self.groups[parent as usize].pk
            )));
        }
        if let Some(&(user, group)) = self
            .from_users
            .iter()
            .find(|(_, group)| self.groups[*group as usize].listed.is_none())
        {
            return Err(dangling(format!(
                "user {} is a member of group {}, which is not in the groups listing",
                self.users[user as usize].uid, self.groups[group as usize].pk
            )));
        }
        if let Some(from_groups) = self.from_groups.take() {
            let mut resolved = Vec::with_capacity(from_groups.len());
            for (pk, group) in from_groups {
                let user = *self.user_index.get(&pk).ok_or_else(|| {
                    dangling(format!(
                        "group {} lists user pk {pk}, which is not in the users listing",
                        self.groups[group as usize].pk
                    ))
                })?;
                resolved.push((user, group));
            }
            resolved.sort_unstable();
            resolved.dedup();
            self.from_users.sort_unstable();
            self.from_users.dedup();
            if resolved != self.from_users {
                let differing = symmetric_difference(&resolved, &self.from_users);
                return Err(dangling(format!(
                    "users' and groups' membership lists disagree on {differing} pair(s)"
                )));
            }
        } else {
            self.from_users.sort_unstable();
            self.from_users.dedup();
        }
        let users = &self.users;
        let groups = &self.groups;
        let mut pairs = std::mem::take(&mut self.from_users);
        self.counts.memberships_out_of_scope = pairs
            .iter()
            .filter(|(user, group)| {
                !(users[*user as usize].in_scope && groups[*group as usize].in_scope)
            })
            .count() as u64;
        // In the order of the membership ids (`uid:group`), compared byte by byte.
        pairs.sort_unstable_by(|a, b| {
            membership_key_bytes(users, groups, *a).cmp(membership_key_bytes(users, groups, *b))
        });
        Ok(Collected {
            accounts: self.accounts.finish()?,
            groups: self.group_records.finish()?,
            memberships: Memberships {
                user_scope: self.users.iter().map(|user| user.in_scope).collect(),
                group_scope: self.groups.iter().map(|group| group.in_scope).collect(),
                uids: self.users.into_iter().map(|user| user.uid).collect(),
                groups: self.groups.into_iter().map(|group| group.pk).collect(),
                pairs,
            },
            scope: self.counts,
        })
    }
}

impl Collector {
    /// Two users with different pks and one uid would be one account in the store and a
    /// joiner and a leaver in the diff: the server contradicts itself. The users are sorted
    /// by uid as indexes, 4 bytes each, so that no second copy of every uid is kept.
    fn check_unique_uids(&self) -> Result<(), CollectError> {
        let mut by_uid: Vec<Index> = (0..self.users.len() as Index).collect();
        by_uid.sort_unstable_by(|a, b| {
            self.users[*a as usize]
                .uid
                .cmp(&self.users[*b as usize].uid)
        });
        let Some(pair) = by_uid
            .windows(2)
            .find(|pair| self.users[pair[0] as usize].uid == self.users[pair[1] as usize].uid)
        else {
            return Ok(());
        };
        // Only on this error: the pks of the two indexes.
        let pk_of = |index: Index| {
            self.user_index
                .iter()
                .find_map(|(pk, at)| (*at == index).then_some(*pk))
                .unwrap_or_default()
        };
        let (first_pk, second_pk) = (pk_of(pair[0].min(pair[1])), pk_of(pair[0].max(pair[1])));
        Err(CollectError::DuplicateUid {
            uid: self.users[pair[0] as usize].uid.to_string(),
            first_pk,
            second_pk,
        })
    }
}

fn membership_key_bytes<'s>(
    users: &'s [UserSlot],
    groups: &'s [GroupSlot],
    (user, group): (Index, Index),
) -> impl Iterator<Item = u8> + 's {
    users[user as usize]
        .uid
        .bytes()
        .chain(std::iter::once(b':'))
        .chain(groups[group as usize].pk.bytes())
}

fn symmetric_difference(a: &[(Index, Index)], b: &[(Index, Index)]) -> usize {
    let only_a = a
        .iter()
        .filter(|pair| b.binary_search(pair).is_err())
        .count();
    let only_b = b
        .iter()
        .filter(|pair| a.binary_search(pair).is_err())
        .count();
    only_a + only_b
}

fn digest(raw: &Value) -> u64 {
    let hash = sha256(&canonical_json(raw));
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// A run's complete, checked directory, sorted by external id.
pub struct Collected {
    pub accounts: Spool,
    pub groups: Spool,
    pub memberships: Memberships,
    pub scope: ScopeCounts,
}

/// Every membership of the directory, sorted by membership id.
pub struct Memberships {
    uids: Vec<Box<str>>,
    groups: Vec<Box<str>>,
    /// Whether each user and each group is in scope.
    user_scope: Vec<bool>,
    group_scope: Vec<bool>,
    pairs: Vec<(Index, Index)>,
}

impl Memberships {
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Each membership as `(account uid, group pk)`, in id order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs
            .iter()
            .map(|(user, group)| (&*self.uids[*user as usize], &*self.groups[*group as usize]))
    }

    /// Each membership as `(account uid, group pk)` with whether it is in scope (its
    /// account and its group are), in id order.
    pub fn scoped_pairs(&self) -> impl Iterator<Item = (&str, &str, bool)> + '_ {
        self.pairs.iter().map(|(user, group)| {
            (
                &*self.uids[*user as usize],
                &*self.groups[*group as usize],
                self.user_scope[*user as usize] && self.group_scope[*group as usize],
            )
        })
    }

    /// Each membership's id, record (as canonical JSON) and flags (only its scope), in id
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (String, Box<RawValue>, Flags)> + '_ {
        self.pairs.iter().map(|(user, group)| {
            let in_scope = self.user_scope[*user as usize] && self.group_scope[*group as usize];
            let membership =
                DirectoryMembership::new(&self.uids[*user as usize], &self.groups[*group as usize]);
            let quoted = |text: &str| Value::String(text.to_string()).to_string();
            // The keys in order: this is the record's canonical JSON.
            let record = format!(
                r#"{{"account_external_id":{},"group_external_id":{},"role":{}}}"#,
                quoted(&membership.account_external_id),
                quoted(&membership.group_external_id),
                quoted(&membership.role)
            );
            (
                membership.external_id(),
                raw(record.into_bytes()),
                Flags::default().with_scope(in_scope),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(pk: i64, kind: &str, groups: &[&str]) -> Value {
        json!({"pk": pk, "username": format!("u{pk}"), "uid": format!("uid{pk}"),
               "type": kind, "groups": groups, "attributes": {}})
    }

    fn group(pk: &str, users: &[i64], parents: &[&str]) -> Value {
        json!({"pk": pk, "name": format!("G {pk}"), "parents": parents, "users": users})
    }

    fn collect_with(
        users: Vec<Value>,
        groups: Vec<Value>,
        source: &SourceConfig,
    ) -> Result<Collected, CollectError> {
        let dir = tempfile::tempdir().unwrap();
        let mut collector = Collector::new(dir.path(), source)?;
        for raw in groups {
            collector.add_group(raw)?;
        }
        for raw in users {
            collector.add_user(raw)?;
        }
        collector.finish()
    }

    fn collect(users: Vec<Value>, groups: Vec<Value>) -> Result<Collected, CollectError> {
        collect_with(users, groups, &crate::testing::source_config())
    }

    fn membership_ids(collected: &Collected) -> Vec<String> {
        collected.memberships.iter().map(|(id, _, _)| id).collect()
    }

    #[test]
    fn memberships_come_from_both_sides_and_must_agree() {
        let users = vec![
            user(1, "internal", &["g1"]),
            user(2, "internal", &["g1", "g2"]),
        ];
        let groups = vec![group("g1", &[1, 2], &[]), group("g2", &[2], &["g1"])];
        let collected = collect(users.clone(), groups).unwrap();
        assert_eq!(
            membership_ids(&collected),
            ["uid1:g1", "uid2:g1", "uid2:g2"]
        );
        assert_eq!(collected.accounts.items().len(), 2);
        assert_eq!(collected.groups.items().len(), 2);
        let disagreeing = vec![group("g1", &[1], &[]), group("g2", &[2], &["g1"])];
        assert!(collect(users, disagreeing).is_err());
    }

    #[test]
    fn references_to_unknown_records_are_inconsistent() {
        let cases = [
            (
                vec![user(1, "internal", &["missing"])],
                vec![group("g1", &[], &[])],
            ),
            (
                vec![user(1, "internal", &[])],
                vec![group("g1", &[1, 9], &[])],
            ),
            (
                vec![user(1, "internal", &[])],
                vec![group("g1", &[], &["nope"])],
            ),
        ];
        for (users, groups) in cases {
            let error = collect(users, groups).err().unwrap();
            assert!(error.is_inconsistency(), "{error}");
        }
    }

    #[test]
    fn duplicates_must_be_identical() {
        let same = collect(
            vec![user(1, "internal", &[]), user(1, "internal", &[])],
            vec![],
        )
        .unwrap();
        assert_eq!(same.accounts.items().len(), 1);
        let error = collect(
            vec![user(1, "internal", &[]), user(1, "external", &[])],
            vec![],
        )
        .err()
        .unwrap();
        assert!(
            matches!(error, CollectError::Duplicate { list: "users", .. }),
            "{error}"
        );
        let renamed = json!({"pk": "g", "name": "Other", "parents": [], "users": []});
        let error = collect(vec![], vec![group("g", &[], &[]), renamed])
            .err()
            .unwrap();
        assert!(
            matches!(error, CollectError::Duplicate { list: "groups", .. }),
            "{error}"
        );
    }

    #[test]
    fn two_users_with_one_uid_fail_the_listing() {
        let twin = json!({"pk": 7, "username": "u7", "uid": "uid1", "attributes": {}});
        let error = collect(
            vec![user(1, "internal", &[]), user(2, "internal", &[]), twin],
            vec![],
        )
        .err()
        .unwrap();
        assert!(
            matches!(
                &error,
                CollectError::DuplicateUid { uid, first_pk: 1, second_pk: 7 } if uid == "uid1"
            ),
            "{error}"
        );
        assert!(error.to_string().ends_with("have one uid uid1"), "{error}");
    }

    #[test]
    fn filtered_records_stay_out_of_scope_with_their_memberships() {
        let mut source = crate::testing::source_config();
        source.filter = Some("payload.type == 'internal'".into());
        source.group_filter = Some("payload.name.lowerAscii().startsWith('g ')".into());
        let collected = collect_with(
            vec![
                user(1, "internal", &["g", "h"]),
                user(2, "external", &["g"]),
            ],
            vec![
                group("g", &[1, 2], &[]),
                json!({"pk": "h", "name": "Other", "parents": [], "users": [1]}),
            ],
            &source,
        )
        .unwrap();
        let scoped = |spool: &Spool| -> Vec<(String, bool)> {
            spool
                .items()
                .iter()
                .map(|i| (i.external_id.to_string(), i.flags.in_scope()))
                .collect()
        };
        // The snapshot is the whole directory; the scope is a flag on each record.
        assert_eq!(
            scoped(&collected.accounts),
            [("uid1".into(), true), ("uid2".into(), false)]
        );
        assert_eq!(
            scoped(&collected.groups),
            [("g".into(), true), ("h".into(), false)]
        );
        let memberships: Vec<(String, bool)> = collected
            .memberships
            .iter()
            .map(|(id, _, flags)| (id, flags.in_scope()))
            .collect();
        assert_eq!(
            memberships,
            [
                ("uid1:g".into(), true),
                ("uid1:h".into(), false),
                ("uid2:g".into(), false)
            ]
        );
        assert_eq!(
            collected.scope,
            ScopeCounts {
                accounts_out_of_scope: 1,
                groups_out_of_scope: 1,
                memberships_out_of_scope: 2,
                ..ScopeCounts::default()
            }
        );
    }

    #[test]
    fn a_record_the_filter_cannot_judge_follows_on_filter_error() {
        use crate::config::filter::OnFilterError;
        let users = || {
            vec![
                user(1, "internal", &[]),
                json!({"pk": 2, "username": "old", "uid": "uid2"}),
            ]
        };
        let mut source = crate::testing::source_config();
        source.filter = Some("payload.type == 'internal'".into());
        let error = collect_with(users(), Vec::new(), &source)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("user old") && error.contains("payload.type"),
            "{error}"
        );
        for (mode, in_scope, excluded, included) in [
            (OnFilterError::Exclude, false, 1, 0),
            (OnFilterError::Include, true, 0, 1),
        ] {
            source.on_filter_error = mode;
            let collected = collect_with(users(), Vec::new(), &source).unwrap();
            assert_eq!(collected.accounts.items()[1].flags.in_scope(), in_scope);
            assert_eq!(collected.scope.filter_errors_excluded, excluded);
            assert_eq!(collected.scope.filter_errors_included, included);
        }
    }

    #[test]
    fn membership_ids_sort_as_strings() {
        // "u1:g" sorts after "u10:g" byte by byte (':' > '0'), unlike the tuple ("u1", "g").
        let users = vec![
            json!({"pk": 1, "username": "a", "uid": "u1", "groups": ["g"]}),
            json!({"pk": 2, "username": "b", "uid": "u10", "groups": ["g"]}),
        ];
        let collected = collect(users, vec![group("g", &[1, 2], &[])]).unwrap();
        assert_eq!(membership_ids(&collected), ["u10:g", "u1:g"]);
    }
}
