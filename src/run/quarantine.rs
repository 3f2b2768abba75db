//! Whether a run found too many leavers or membership removals to be released without an
//! admin's decision: a pure judgment of its diff against the source's thresholds and the run
//! it was compared with. Entra Connect stops an export that would delete more than 500
//! objects, Okta pauses an import that would unassign more than 20% of users: the same guard
//! against a fault upstream (an empty but successful listing, a token that lost visibility)
//! becoming mass offboarding evidence. More deletions than a run confirms one by one with
//! Authentik ([`crate::run::confirm`]) are held the same way, whatever the thresholds.

use crate::config::QuarantineThresholds;
use crate::diff::DirectoryDiff;
use crate::run::confirm::MAX_CONFIRMATIONS;
use crate::store::Counts;

/// What a run found that the thresholds judge.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub leavers: u64,
    pub membership_removals: u64,
    /// Every account the listing returned, in scope or not.
    pub accounts_listed: u64,
    /// The accounts and groups the run found deleted ([`crate::run::confirm::Deletion`]).
    pub deletions: u64,
}

impl Found {
    pub fn of(diff: &DirectoryDiff, accounts_listed: u64, deletions: u64) -> Found {
        Found {
            leavers: diff.leavers.len() as u64,
            membership_removals: diff.memberships.removed.len() as u64,
            accounts_listed,
            deletions,
        }
    }
}

/// Each threshold the run goes over, in words; empty when it may be released. `previous` is
/// the run it was compared with (a source's first run has none and is never held).
pub fn reasons(
    found: Found,
    previous: Option<(&str, &Counts)>,
    thresholds: &QuarantineThresholds,
) -> Vec<String> {
    let Some((previous_run, before)) = previous else {
        return Vec::new();
    };
    let mut reasons = Vec::new();
    if found.accounts_listed == 0 && before.accounts > 0 {
        reasons.push(format!(
            "the account listing was empty, but run {previous_run} had {} accounts",
            before.accounts
        ));
    }
    // Each deletion is confirmed with Authentik up to the bound; above it none is, and only
    // an admin can tell a real wave of deletions from a listing that missed records.
    if found.deletions > MAX_CONFIRMATIONS as u64 {
        reasons.push(format!(
            "{} deletions, more than the {MAX_CONFIRMATIONS} aksync confirms one by one: approve the run after checking them in Authentik",
            found.deletions
        ));
    }
    let checks = [
        (
            "leavers",
            found.leavers,
            before.accounts,
            "accounts",
            ("max_leavers", thresholds.max_leavers),
            ("max_leaver_percent", thresholds.max_leaver_percent),
        ),
        (
            "membership removals",
            found.membership_removals,
            before.memberships,
            "memberships",
            (
                "max_membership_removals",
                thresholds.max_membership_removals,
            ),
            (
                "max_membership_removal_percent",
                thresholds.max_membership_removal_percent,
            ),
        ),
    ];
    for (what, count, base, of, (count_key, max_count), (percent_key, max_percent)) in checks {
        if count > max_count {
            reasons.push(format!("{count} {what}, over {count_key} = {max_count}"));
        }
        if base > 0 {
            let percent = count as f64 * 100.0 / base as f64;
            if percent > max_percent {
                reasons.push(format!(
                    "{count} {what} are {percent:.1}% of the {base} {of} of run {previous_run}, over {percent_key} = {max_percent}"
                ));
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(leavers: u64, membership_removals: u64) -> Found {
        Found {
            leavers,
            membership_removals,
            accounts_listed: 100,
            deletions: 0,
        }
    }

    fn counts(accounts: u64, memberships: u64) -> Counts {
        Counts {
            accounts,
            groups: 3,
            memberships,
        }
    }

    #[test]
    fn each_threshold_is_strictly_over_and_named() {
        let limits = QuarantineThresholds::default();
        let before = counts(1_000, 1_000);
        let judged =
            |leavers, removals| reasons(found(leavers, removals), Some(("R1", &before)), &limits);
        assert!(judged(25, 25).is_empty(), "at the limit is not over it");
        assert_eq!(judged(26, 0), ["26 leavers, over max_leavers = 25"]);
        assert_eq!(
            judged(0, 26),
            ["26 membership removals, over max_membership_removals = 25"]
        );
        // Relative to the run compared with: 3 of 20 is 15%.
        let small = counts(20, 200);
        assert_eq!(
            reasons(found(3, 0), Some(("R1", &small)), &limits),
            ["3 leavers are 15.0% of the 20 accounts of run R1, over max_leaver_percent = 10"]
        );
        assert!(reasons(found(2, 0), Some(("R1", &small)), &limits).is_empty());
    }

    #[test]
    fn an_empty_listing_after_accounts_is_always_held_and_a_first_run_never() {
        let limits = QuarantineThresholds {
            max_leavers: u64::from(u32::MAX),
            max_leaver_percent: 100.0,
            ..QuarantineThresholds::default()
        };
        let empty = Found {
            accounts_listed: 0,
            ..found(0, 0)
        };
        assert_eq!(
            reasons(empty, Some(("R1", &counts(5, 0))), &limits),
            ["the account listing was empty, but run R1 had 5 accounts"]
        );
        assert!(reasons(empty, Some(("R1", &counts(0, 0))), &limits).is_empty());
        assert!(reasons(found(90, 90), None, &limits).is_empty());
    }

    #[test]
    fn more_deletions_than_are_confirmed_are_held_whatever_the_thresholds() {
        let limits = QuarantineThresholds {
            max_leavers: u64::MAX,
            max_leaver_percent: 100.0,
            max_membership_removals: u64::MAX,
            max_membership_removal_percent: 100.0,
        };
        let before = counts(1_000, 1_000);
        let judged = |deletions| {
            let found = Found {
                deletions,
                ..found(deletions, 0)
            };
            reasons(found, Some(("R1", &before)), &limits)
        };
        assert!(judged(200).is_empty(), "every one confirmed");
        assert_eq!(
            judged(201),
            ["201 deletions, more than the 200 aksync confirms one by one: approve the run after checking them in Authentik"]
        );
    }
}
