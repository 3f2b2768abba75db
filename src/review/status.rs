//! Whether the revocations reviewers decided were carried out: each `revoke` of an imported
//! review is checked against the source's later runs. It is carried out once the account no
//! longer holds the access (the membership or role is gone, or the account was deactivated
//! or deleted), and the run that first saw it gone is named; otherwise it is pending as of
//! the latest complete run. A later import of the same review replaces the earlier one's
//! decisions.
//!
//! Only the account under review is read from each run probed (its record, its direct
//! memberships, and the run's groups), and the first run without the access is found by
//! bisection over the runs after the review, so the cost grows with the logarithm of the
//! runs since, not with them.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::access::{effective_groups, effective_roles, RoleNames};
use super::ReadError;
use crate::ledger::entry::{AccessDecision, AccessKind, Verdict};
use crate::ledger::read::reviews;
use crate::run::normalize::{AccountStatus, DirectoryAccount, DirectoryGroup};
use crate::run::plan::membership_pair;
use crate::run::record::RecordKind;
use crate::store::{Reader, RunRecord, RunStatus, Store};

/// Where a revocation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RevocationState {
    /// The access is gone from `run_id` on.
    CarriedOut {
        run_id: String,
        at: DateTime<Utc>,
        how: String,
    },
    /// The latest complete run still has it.
    Pending { as_of_run: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revocation {
    pub review_id: String,
    pub review_run: String,
    #[serde(flatten)]
    pub decision: AccessDecision,
    #[serde(flatten)]
    pub state: RevocationState,
}

/// Every revocation of the source's recorded reviews, with where it stands.
pub fn revocations(store: &Store, source: &str) -> Result<Vec<Revocation>, ReadError> {
    let reader = store.reader()?;
    let reviews = reviews(&reader, source)?;
    let Some(latest) = store.latest_complete(source)? else {
        return Ok(Vec::new());
    };
    let kept_from = reader.snapshots_kept_from(source)?;
    let mut probe = Probe::new(&reader, source);
    let mut found = Vec::new();
    for review in reviews {
        let revoked = review
            .decisions
            .decisions
            .iter()
            .filter(|decision| decision.decision == Verdict::Revoke);
        // The complete runs after the review's, whose snapshots are kept, oldest first.
        let mut later: Option<Vec<RunRecord>> = None;
        for decision in revoked {
            let state = match probe.lacks(&latest, decision)? {
                None => RevocationState::Pending {
                    as_of_run: latest.run_id.clone(),
                },
                Some(how) => {
                    let runs = match &mut later {
                        Some(runs) => runs,
                        None => later.insert(
                            store
                                .runs_between(source, Some(&review.decisions.run_id), None)?
                                .into_iter()
                                .filter(|run| run.status == RunStatus::Complete)
                                .filter(|run| {
                                    kept_from
                                        .as_deref()
                                        .is_none_or(|from| run.run_id.as_str() >= from)
                                })
                                .collect(),
                        ),
                    };
                    let (run, how) = match runs.is_empty() {
                        // Only when the runs after the review are gone but the latest.
                        true => (&latest, how),
                        false => first_without(&mut probe, runs, decision, how)?,
                    };
                    RevocationState::CarriedOut {
                        run_id: run.run_id.clone(),
                        at: run.finished_at,
                        how,
                    }
                }
            };
            found.push(Revocation {
                review_id: review.decisions.review_id.clone(),
                review_run: review.decisions.run_id.clone(),
                decision: decision.clone(),
                state,
            });
        }
    }
    Ok(found)
}

/// The first of `runs` (which end with one that lacks the access) without the access, by
/// bisection: the access is taken to stay gone once it went.
fn first_without<'r>(
    probe: &mut Probe<'_>,
    runs: &'r [RunRecord],
    decision: &AccessDecision,
    latest_how: String,
) -> Result<(&'r RunRecord, String), ReadError> {
    let (mut low, mut high) = (0, runs.len() - 1);
    let mut how = latest_how;
    while low < high {
        let middle = (low + high) / 2;
        match probe.lacks(&runs[middle], decision)? {
            Some(found) => {
                high = middle;
                how = found;
            }
            None => low = middle + 1,
        }
    }
    Ok((&runs[high], how))
}

/// Reads one account's access at a run, keeping each run's group catalog once read.
struct Probe<'r> {
    reader: &'r Reader<'r>,
    source: String,
    catalogs: BTreeMap<String, BTreeMap<String, DirectoryGroup>>,
}

impl<'r> Probe<'r> {
    fn new(reader: &'r Reader<'r>, source: &str) -> Probe<'r> {
        Probe {
            reader,
            source: source.to_string(),
            catalogs: BTreeMap::new(),
        }
    }

    /// `None` when the account holds the access at `run`; else how it lost it.
    fn lacks(
        &mut self,
        run: &RunRecord,
        decision: &AccessDecision,
    ) -> Result<Option<String>, ReadError> {
        let uid = &decision.account_external_id;
        let Some(account) = self.account(run, uid)? else {
            return Ok(Some("account deleted".to_string()));
        };
        if account.status != AccountStatus::Active {
            return Ok(Some("account deactivated".to_string()));
        }
        let direct = self.direct_groups(run, uid)?;
        let catalog = self.catalog(run)?;
        let groups = effective_groups(&direct, catalog);
        let held = match decision.access {
            AccessKind::Group => groups
                .iter()
                .any(|grant| grant.group.external_id == decision.access_external_id),
            // Roles are compared by uuid: their names do not matter here.
            AccessKind::Role => {
                effective_roles(&account.roles, &groups, catalog, &RoleNames::default())
                    .iter()
                    .any(|grant| grant.role.pk == decision.access_external_id)
            }
        };
        Ok((!held).then(|| format!("{} removed", decision.access.as_str())))
    }

    fn account(&self, run: &RunRecord, uid: &str) -> Result<Option<DirectoryAccount>, ReadError> {
        for version in self
            .reader
            .versions(&self.source, RecordKind::Account, uid)?
        {
            let version = version?;
            if version.external_id != uid || !version.valid_at(&run.run_id) {
                continue;
            }
            let entry =
                self.reader
                    .version(&self.source, RecordKind::Account, uid, &version.valid_from)?;
            let account = entry
                .record()
                .and_then(serde_json::from_value)
                .map_err(|error| ReadError::unreadable(run, "account", uid, error))?;
            return Ok(Some(account));
        }
        Ok(None)
    }

    fn direct_groups(&self, run: &RunRecord, uid: &str) -> Result<BTreeSet<String>, ReadError> {
        let mut groups = BTreeSet::new();
        let prefix = format!("{uid}:");
        for version in self
            .reader
            .versions(&self.source, RecordKind::Membership, &prefix)?
        {
            let version = version?;
            let (member, group) = membership_pair(&version.external_id);
            if member == uid && version.valid_at(&run.run_id) {
                groups.insert(group);
            }
        }
        Ok(groups)
    }

    fn catalog(&mut self, run: &RunRecord) -> Result<&BTreeMap<String, DirectoryGroup>, ReadError> {
        if !self.catalogs.contains_key(&run.run_id) {
            let mut catalog = BTreeMap::new();
            for stored in self.reader.records_at(run, RecordKind::Group)? {
                let stored = stored?;
                let group: DirectoryGroup =
                    serde_json::from_value(stored.record).map_err(|error| {
                        ReadError::unreadable(run, "group", &stored.external_id, error)
                    })?;
                catalog.insert(stored.external_id, group);
            }
            self.catalogs.insert(run.run_id.clone(), catalog);
        }
        Ok(&self.catalogs[&run.run_id])
    }
}
