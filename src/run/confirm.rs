//! Deletions are confirmed (issue 17): a record missing from a listing is reported deleted
//! only once Authentik answers 404 for it by its id. A listing read page by page can skip a
//! record that still exists when the records move between its pages (one deleted on a page
//! already read shifts the next one back onto it), and when another is created meanwhile
//! `count` stays the same, so the listing's own checks cannot see it. A skipped record asked
//! for by its id answers 200: the listing was incomplete, and the run fails rather than
//! become false offboarding evidence.
//!
//! A run asks at most [`MAX_CONFIRMATIONS`] times, a few requests at once; a run with more
//! deletions asks nothing and is held for an admin instead ([`crate::run::quarantine`]).

use std::collections::BTreeMap;

use futures::TryStreamExt;

use crate::authentik::{AuthentikClient, ClientError};
use crate::diff::{DirectoryDiff, LeaveReason};
use crate::store::CANCELLED_BY_SHUTDOWN;

/// The most deletions a run confirms one by one.
pub const MAX_CONFIRMATIONS: usize = 200;
/// The longest username or group name an error quotes.
const NAME_CHARS: usize = 100;

/// A record a run found deleted, by what Authentik looks it up by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// `pk` is `None` when the account's stored version kept no pk to ask by.
    Account {
        username: String,
        pk: Option<i64>,
    },
    Group {
        name: String,
        uuid: String,
    },
}

impl Deletion {
    /// Every deletion the diff reports: the leavers by deletion, the purges (accounts
    /// deleted after they were deactivated) and the deleted groups. `account_pks` are the
    /// deleted accounts' pks by uid, as the plan read them from their stored payloads.
    pub fn of(diff: &DirectoryDiff, account_pks: &BTreeMap<String, i64>) -> Vec<Deletion> {
        let account = |uid: &String, username: &String| Deletion::Account {
            username: username.clone(),
            pk: account_pks.get(uid).copied(),
        };
        let leavers = diff
            .leavers
            .iter()
            .filter(|leaver| leaver.reason == LeaveReason::Deleted)
            .map(|leaver| account(&leaver.external_id, &leaver.username));
        let purged = diff
            .purged
            .iter()
            .map(|purge| account(&purge.external_id, &purge.username));
        let groups = diff.groups.deleted.iter().map(|group| Deletion::Group {
            name: group.display_name.clone(),
            uuid: group.external_id.clone(),
        });
        leavers.chain(purged).chain(groups).collect()
    }

    /// The API path that answers for the record, below `/api/v3/`.
    fn path(&self) -> Result<String, ConfirmError> {
        match self {
            Deletion::Account { pk: Some(pk), .. } => Ok(format!("core/users/{pk}/")),
            Deletion::Account { pk: None, .. } => Err(ConfirmError::NoPk {
                what: self.to_string(),
            }),
            Deletion::Group { uuid, .. } => Ok(format!("core/groups/{uuid}/")),
        }
    }
}

impl std::fmt::Display for Deletion {
    /// The record as an error names it: its name as the directory spells it, quoted safely.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted = |name: &str| crate::display::quote(name, NAME_CHARS);
        match self {
            Deletion::Account { username, .. } => write!(f, "account `{}`", quoted(username)),
            Deletion::Group { name, uuid } => write!(f, "group `{}` ({uuid})", quoted(name)),
        }
    }
}

/// Why a run's deletions could not be confirmed; the run fails with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("{what} is missing from the listing but Authentik still has it: the listing was incomplete (records moved between its pages while it was read), so the run is not stored")]
    StillExists { what: String },
    #[error("cannot confirm that {what} was deleted: {error}")]
    Unanswered { what: String, error: ClientError },
    #[error(
        "cannot confirm that {what} was deleted: its stored record has no pk to ask Authentik by"
    )]
    NoPk { what: String },
    #[error("{CANCELLED_BY_SHUTDOWN}")]
    Cancelled,
    #[error("the run's deletions were not confirmed within its deadline ({}s from its start): raise `sources.{source_name}.run_timeout_secs`, or check the server", limit.as_secs())]
    Deadline {
        source_name: String,
        limit: std::time::Duration,
    },
}

/// Asks Authentik for each deleted record, at most `concurrency` at once; the first one that
/// still exists or does not answer ends the confirmation with its error. Above
/// [`MAX_CONFIRMATIONS`] nothing is asked: such a run is quarantined for an admin to check.
pub async fn confirm(
    client: &AuthentikClient,
    deletions: &[Deletion],
    concurrency: usize,
) -> Result<(), ConfirmError> {
    if deletions.len() > MAX_CONFIRMATIONS {
        return Ok(());
    }
    futures::stream::iter(deletions.iter().map(Ok))
        .try_for_each_concurrent(concurrency.max(1), |deletion| async move {
            let what = || deletion.to_string();
            match client.exists(&deletion.path()?).await {
                Ok(false) => Ok(()),
                Ok(true) => Err(ConfirmError::StillExists { what: what() }),
                Err(error) => Err(ConfirmError::Unanswered {
                    what: what(),
                    error,
                }),
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSource;
    use serde_json::{json, Value};

    fn user(pk: i64, active: bool) -> Value {
        json!({"pk": pk, "username": format!("user{pk}"), "name": format!("User {pk}"),
               "is_active": active, "groups": [], "attributes": {}, "uid": format!("uid{pk}"),
               "path": "users", "type": "internal", "is_superuser": false})
    }

    fn group(pk: &str) -> Value {
        json!({"pk": pk, "name": format!("Group {pk}"), "is_superuser": false,
               "parents": [], "users": [], "attributes": {}})
    }

    #[test]
    fn deletions_are_deleted_leavers_purges_and_deleted_groups_by_their_lookup_ids() {
        let mut source = TestSource::new();
        source.sync(
            vec![user(1, true), user(2, true), user(3, false), user(4, true)],
            vec![group("g-kept"), group("g-gone")],
        );
        // 1 deleted, 2 deactivated, 3 (inactive) purged, 4 kept; one group deleted.
        let latest = source.store.latest_complete("corp").unwrap();
        let job = source
            .collect(
                vec![user(2, false), user(4, true)],
                vec![group("g-kept")],
                latest,
            )
            .unwrap();
        let Ok(planned) = job.plan(&source.store) else {
            panic!("the run plans")
        };
        assert_eq!(
            planned.deletions(),
            [
                Deletion::Account {
                    username: "user1".into(),
                    pk: Some(1)
                },
                Deletion::Account {
                    username: "user3".into(),
                    pk: Some(3)
                },
                Deletion::Group {
                    name: "Group g-gone".into(),
                    uuid: "g-gone".into()
                },
            ]
        );
        let paths: Vec<String> = planned
            .deletions()
            .iter()
            .map(|deletion| deletion.path().unwrap())
            .collect();
        assert_eq!(
            paths,
            ["core/users/1/", "core/users/3/", "core/groups/g-gone/"]
        );
    }

    #[test]
    fn an_account_without_a_stored_pk_cannot_be_confirmed() {
        let unknown = Deletion::Account {
            username: "ada".into(),
            pk: None,
        };
        assert_eq!(
            unknown.path().unwrap_err().to_string(),
            "cannot confirm that account `ada` was deleted: its stored record has no pk to ask Authentik by"
        );
    }

    #[test]
    fn a_name_is_quoted_on_one_line() {
        let hostile = Deletion::Account {
            username: "eve\u{1b}[2J\nroot".into(),
            pk: Some(1),
        };
        let named = ConfirmError::StillExists {
            what: hostile.to_string(),
        }
        .to_string();
        assert!(
            !named.contains('\n') && !named.contains('\u{1b}'),
            "{named}"
        );
        assert!(named.starts_with("account `eve"), "{named}");
        assert!(named.contains("the listing was incomplete"), "{named}");
    }
}
