//! Effective access, as a reviewer needs it: Authentik lists an account's direct groups only,
//! but a member of a group is a member of every ancestor of it, and holds the RBAC roles of
//! each of those groups besides its own. This module is pure: it expands one account's direct
//! groups over a snapshot's group catalog, with the path that grants each group and role, and
//! finds the cycles a hostile or broken hierarchy can have.
//!
//! Expansion is breadth first over the parents, from every direct group at once, visiting
//! each group once: the path it reports for a group is a shortest one (direct membership
//! first, ties broken by group id, which is the order the catalog has), and a cycle ends the
//! walk instead of looping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::diff::GroupRef;
use crate::run::normalize::{DirectoryGroup, Role};

/// One group an account is an effective member of, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupGrant {
    pub group: GroupRef,
    /// From the account's direct group to `group`, both included: one element for a direct
    /// membership.
    pub path: Vec<GroupRef>,
}

impl GroupGrant {
    pub fn is_direct(&self) -> bool {
        self.path.len() == 1
    }

    /// The direct group the membership comes through.
    pub fn direct_group(&self) -> &GroupRef {
        &self.path[0]
    }
}

/// One role an account holds, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleGrant {
    pub role: Role,
    /// Empty for a role held directly; else the groups from the account's direct group to
    /// the group that holds the role.
    pub path: Vec<GroupRef>,
}

/// How a grant reads: `direct`, or `via A → B` (the path from the direct group up to, but
/// without, the group granted; a role's path ends at the group that holds it).
pub fn granted_text(path: &[GroupRef]) -> String {
    if path.is_empty() {
        return "direct".to_string();
    }
    let names: Vec<&str> = path.iter().map(|g| g.display_name.as_str()).collect();
    format!("via {}", names.join(" → "))
}

/// How a group membership reads: `direct`, or `via` the groups below the one granted.
pub fn membership_granted_text(grant: &GroupGrant) -> String {
    granted_text(&grant.path[..grant.path.len() - 1])
}

fn group_ref(id: &str, catalog: &BTreeMap<String, DirectoryGroup>) -> GroupRef {
    GroupRef {
        external_id: id.to_string(),
        display_name: catalog
            .get(id)
            .map_or_else(|| id.to_string(), |group| group.display_name.clone()),
    }
}

/// How many levels of parents are followed: more than any real hierarchy has, and a bound on
/// the work and the path length a hostile one can cause (a path is built per group).
pub const MAX_NESTING: usize = 64;

/// Every group an account with these direct groups is a member of, with a shortest path to
/// each, in group-name order; ancestors more than [`MAX_NESTING`] levels up are not followed.
/// A direct group the catalog lacks is still listed (named by its id); it has no parents to
/// follow.
pub fn effective_groups(
    direct: &BTreeSet<String>,
    catalog: &BTreeMap<String, DirectoryGroup>,
) -> Vec<GroupGrant> {
    // Each group found points at the group it was reached from; paths are built at the end.
    let mut reached_from: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    let mut queue: VecDeque<(&str, usize)> = VecDeque::new();
    for id in direct {
        reached_from.insert(id, None);
        queue.push_back((id, 0));
    }
    while let Some((id, depth)) = queue.pop_front() {
        let Some(group) = catalog.get(id) else {
            continue;
        };
        if depth == MAX_NESTING {
            continue;
        }
        let mut parents: Vec<&str> = group.parents.iter().map(String::as_str).collect();
        parents.sort_unstable();
        for parent in parents {
            if !reached_from.contains_key(parent) {
                reached_from.insert(parent, Some(id));
                queue.push_back((parent, depth + 1));
            }
        }
    }
    let grants: Vec<GroupGrant> = reached_from
        .keys()
        .map(|&id| {
            let mut path = vec![group_ref(id, catalog)];
            let mut at = id;
            while let Some(Some(from)) = reached_from.get(at) {
                path.push(group_ref(from, catalog));
                at = from;
            }
            path.reverse();
            GroupGrant {
                group: group_ref(id, catalog),
                path,
            }
        })
        .collect();
    by_group_name(grants)
}

fn by_group_name(mut grants: Vec<GroupGrant>) -> Vec<GroupGrant> {
    grants.sort_by(|a, b| {
        (&a.group.display_name, &a.group.external_id)
            .cmp(&(&b.group.display_name, &b.group.external_id))
    });
    grants
}

/// The direct groups alone, as grants, in group-name order.
pub fn direct_grants(
    direct: &BTreeSet<String>,
    catalog: &BTreeMap<String, DirectoryGroup>,
) -> Vec<GroupGrant> {
    let grants: Vec<GroupGrant> = direct
        .iter()
        .map(|id| GroupGrant {
            group: group_ref(id, catalog),
            path: vec![group_ref(id, catalog)],
        })
        .collect();
    by_group_name(grants)
}

/// The names of the roles the groups of a catalog hold, by uuid: an account's own roles come
/// without names (the listing leaves them out), and a group that holds the same role names it.
#[derive(Debug, Clone, Default)]
pub struct RoleNames(BTreeMap<String, String>);

impl RoleNames {
    pub fn of(catalog: &BTreeMap<String, DirectoryGroup>) -> RoleNames {
        RoleNames(
            catalog
                .values()
                .flat_map(|group| &group.roles)
                .filter_map(|role| Some((role.pk.clone(), role.name.clone()?)))
                .collect(),
        )
    }
}

/// Every role an account holds: its own (`direct`), then those of each group it is an
/// effective member of, by the shortest path; one grant per role, a direct one first. Names
/// of roles held directly come from `names`.
pub fn effective_roles(
    own: &[Role],
    groups: &[GroupGrant],
    catalog: &BTreeMap<String, DirectoryGroup>,
    names: &RoleNames,
) -> Vec<RoleGrant> {
    let mut found: BTreeMap<String, RoleGrant> = BTreeMap::new();
    for role in own {
        let named = role.name.clone().or_else(|| names.0.get(&role.pk).cloned());
        found.entry(role.pk.clone()).or_insert(RoleGrant {
            role: Role {
                pk: role.pk.clone(),
                name: named,
            },
            path: Vec::new(),
        });
    }
    let mut by_path: Vec<&GroupGrant> = groups.iter().collect();
    by_path.sort_by_key(|grant| grant.path.len());
    for grant in by_path {
        let Some(group) = catalog.get(&grant.group.external_id) else {
            continue;
        };
        for role in &group.roles {
            found.entry(role.pk.clone()).or_insert(RoleGrant {
                role: role.clone(),
                path: grant.path.clone(),
            });
        }
    }
    let mut roles: Vec<RoleGrant> = found.into_values().collect();
    roles.sort_by(|a, b| (role_name(&a.role), &a.role.pk).cmp(&(role_name(&b.role), &b.role.pk)));
    roles
}

/// A role as people read it: its name, or its uuid when no group names it.
pub fn role_name(role: &Role) -> &str {
    role.name.as_deref().unwrap_or(&role.pk)
}

/// The cycles of the group hierarchy: each strongly connected set of groups that reach
/// themselves through their parents (a group that is its own parent included), as a path
/// that closes on its first group, e.g. `A → B → A`. Sorted; empty for a sound hierarchy.
pub fn cycles(catalog: &BTreeMap<String, DirectoryGroup>) -> Vec<Vec<GroupRef>> {
    // Tarjan's algorithm, iterative so that a deep hierarchy cannot overflow the stack.
    struct Frame<'a> {
        id: &'a str,
        parents: Vec<&'a str>,
        next: usize,
    }
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut low: BTreeMap<&str, usize> = BTreeMap::new();
    let mut on_stack: BTreeSet<&str> = BTreeSet::new();
    let mut stack: Vec<&str> = Vec::new();
    let mut found: Vec<Vec<GroupRef>> = Vec::new();
    let parents_of = |id: &str| -> Vec<&str> {
        catalog.get(id).map_or_else(Vec::new, |group| {
            let mut parents: Vec<&str> = group
                .parents
                .iter()
                .map(String::as_str)
                .filter(|parent| catalog.contains_key(*parent))
                .collect();
            parents.sort_unstable();
            parents
        })
    };
    for root in catalog.keys() {
        if index.contains_key(root.as_str()) {
            continue;
        }
        let mut frames = vec![Frame {
            id: root,
            parents: parents_of(root),
            next: 0,
        }];
        index.insert(root, index.len());
        low.insert(root, index[root.as_str()]);
        stack.push(root);
        on_stack.insert(root);
        while let Some(frame) = frames.last_mut() {
            if let Some(&parent) = frame.parents.get(frame.next) {
                frame.next += 1;
                let id = frame.id;
                if !index.contains_key(parent) {
                    let next = index.len();
                    index.insert(parent, next);
                    low.insert(parent, next);
                    stack.push(parent);
                    on_stack.insert(parent);
                    frames.push(Frame {
                        id: parent,
                        parents: parents_of(parent),
                        next: 0,
                    });
                } else if on_stack.contains(parent) {
                    let lowest = low[id].min(index[parent]);
                    low.insert(id, lowest);
                }
                continue;
            }
            let id = frame.id;
            frames.pop();
            if let Some(caller) = frames.last() {
                let lowest = low[caller.id].min(low[id]);
                low.insert(caller.id, lowest);
            }
            if low[id] != index[id] {
                continue;
            }
            let mut members = Vec::new();
            while let Some(member) = stack.pop() {
                on_stack.remove(member);
                members.push(member);
                if member == id {
                    break;
                }
            }
            let self_loop = parents_of(id).contains(&id);
            if members.len() > 1 || self_loop {
                found.push(cycle_path(&members, catalog));
            }
        }
    }
    found.sort();
    found
}

/// A cycle through `members` (one strongly connected set) as a closed path, starting at the
/// group first by name and following parents within the set.
fn cycle_path(members: &[&str], catalog: &BTreeMap<String, DirectoryGroup>) -> Vec<GroupRef> {
    let set: BTreeSet<&str> = members.iter().copied().collect();
    let name = |id: &str| -> String {
        catalog
            .get(id)
            .map_or_else(|| id.to_string(), |group| group.display_name.clone())
    };
    let start = *set
        .iter()
        .min_by_key(|id| (name(id), id.to_string()))
        .expect("a cycle has members");
    let mut path = vec![group_ref(start, catalog)];
    let mut seen = BTreeSet::from([start]);
    let mut current = start;
    loop {
        let parents = catalog.get(current).map(|group| &group.parents);
        let mut within: Vec<&str> = parents
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|parent| set.contains(parent))
            .collect();
        within.sort_unstable();
        // Back to the start when it can, else to a member not yet on the path.
        let next = within
            .iter()
            .find(|parent| **parent == start)
            .or_else(|| within.iter().find(|parent| !seen.contains(**parent)))
            .copied();
        match next {
            Some(next) => {
                path.push(group_ref(next, catalog));
                if next == start {
                    return path;
                }
                seen.insert(next);
                current = next;
            }
            // Only reachable through members already on the path: close it there.
            None => {
                path.push(group_ref(start, catalog));
                return path;
            }
        }
    }
}

/// A cycle as people read it: `A → B → A`.
pub fn cycle_text(cycle: &[GroupRef]) -> String {
    let names: Vec<&str> = cycle.iter().map(|g| g.display_name.as_str()).collect();
    names.join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn group(id: &str, parents: &[&str], roles: &[&str]) -> (String, DirectoryGroup) {
        (
            id.to_string(),
            DirectoryGroup {
                external_id: id.to_string(),
                display_name: id.to_uppercase(),
                is_superuser: false,
                parents: parents.iter().map(|p| p.to_string()).collect(),
                metadata: Map::new(),
                member_count: 0,
                roles: roles
                    .iter()
                    .map(|r| Role {
                        pk: format!("uuid-{r}"),
                        name: Some(r.to_string()),
                    })
                    .collect(),
            },
        )
    }

    fn ids(set: &[&str]) -> BTreeSet<String> {
        set.iter().map(|s| s.to_string()).collect()
    }

    fn summary(grants: &[GroupGrant]) -> Vec<(String, String)> {
        grants
            .iter()
            .map(|g| (g.group.display_name.clone(), membership_granted_text(g)))
            .collect()
    }

    #[test]
    fn three_levels_and_two_parents_expand_with_their_paths() {
        let catalog: BTreeMap<_, _> = [
            group("team", &["dept"], &[]),
            group("dept", &["org", "audit"], &["viewer"]),
            group("org", &[], &["admin"]),
            group("audit", &[], &[]),
        ]
        .into();
        let grants = effective_groups(&ids(&["team"]), &catalog);
        assert_eq!(
            summary(&grants),
            [
                ("AUDIT".into(), "via TEAM → DEPT".into()),
                ("DEPT".into(), "via TEAM".into()),
                ("ORG".into(), "via TEAM → DEPT".into()),
                ("TEAM".into(), "direct".into()),
            ]
        );
        let roles = effective_roles(
            &[
                Role {
                    pk: "uuid-own".into(),
                    name: None,
                },
                Role {
                    pk: "uuid-viewer".into(),
                    name: None,
                },
            ],
            &grants,
            &catalog,
            &RoleNames::of(&catalog),
        );
        let roles: Vec<(String, String)> = roles
            .iter()
            .map(|r| (role_name(&r.role).to_string(), granted_text(&r.path)))
            .collect();
        assert_eq!(
            roles,
            [
                ("admin".into(), "via TEAM → DEPT → ORG".into()),
                ("uuid-own".into(), "direct".into()),
                // Held directly as well: direct, named by the group that holds it too.
                ("viewer".into(), "direct".into()),
            ]
        );
    }

    #[test]
    fn a_direct_membership_wins_over_an_inherited_one() {
        let catalog: BTreeMap<_, _> = [group("team", &["org"], &[]), group("org", &[], &[])].into();
        let grants = effective_groups(&ids(&["team", "org"]), &catalog);
        assert_eq!(
            summary(&grants),
            [
                ("ORG".into(), "direct".into()),
                ("TEAM".into(), "direct".into())
            ]
        );
    }

    #[test]
    fn a_cycle_ends_the_walk_and_is_reported() {
        let catalog: BTreeMap<_, _> = [
            group("a", &["b"], &[]),
            group("b", &["c"], &[]),
            group("c", &["a"], &[]),
            group("self", &["self"], &[]),
            group("d", &["a"], &[]),
        ]
        .into();
        let grants = effective_groups(&ids(&["d"]), &catalog);
        assert_eq!(
            summary(&grants),
            [
                ("A".into(), "via D".into()),
                ("B".into(), "via D → A".into()),
                ("C".into(), "via D → A → B".into()),
                ("D".into(), "direct".into()),
            ]
        );
        let found: Vec<String> = cycles(&catalog).iter().map(|c| cycle_text(c)).collect();
        assert_eq!(found, ["A → B → C → A", "SELF → SELF"]);
    }

    #[test]
    fn a_deep_hierarchy_is_walked_without_recursion() {
        let depth = 50_000;
        let catalog: BTreeMap<String, DirectoryGroup> = (0..depth)
            .map(|n| {
                let parent = format!("g{:06}", (n + 1) % depth);
                group(&format!("g{n:06}"), &[parent.as_str()], &[])
            })
            .collect();
        let found = cycles(&catalog);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), depth + 1);
        let grants = effective_groups(&ids(&["g000000"]), &catalog);
        assert_eq!(grants.len(), MAX_NESTING + 1);
        assert!(grants
            .iter()
            .all(|grant| grant.path.len() <= MAX_NESTING + 1));
    }

    #[test]
    fn a_sound_hierarchy_has_no_cycles_and_unknown_groups_are_named_by_id() {
        let catalog: BTreeMap<_, _> =
            [group("a", &["b", "gone"], &[]), group("b", &[], &[])].into();
        assert!(cycles(&catalog).is_empty());
        let grants = effective_groups(&ids(&["a", "missing"]), &catalog);
        let names: Vec<&str> = grants
            .iter()
            .map(|g| g.group.display_name.as_str())
            .collect();
        assert_eq!(names, ["A", "B", "gone", "missing"]);
    }
}
