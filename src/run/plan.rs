//! Planning: what changed between two states of a source's directory, and everything that
//! follows from it, decided once per record.
//!
//! A [`Planner`] is fed every record of both states in external id order (accounts, then
//! groups, then memberships). For each record whose material hash differs (see
//! [`crate::run::record`]) it derives, from that one classification, the store's writes (when
//! planning a sync), the envelope (when writing or rebuilding an envelope file) and the diff's
//! input. Unchanged records cost a comparison of two hashes.
//!
//! Two merges feed it: [`plan_sync`] walks the stored current state beside the spooled new
//! records of a sync, and [`crate::ledger::replay`] replays two stored runs from their versions.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::canonical::canonical_json;
use crate::diff::{
    AccountRef, AccountRules, Baseline, DiffInput, Population, RunRef, ScopeCause, ScopeChange,
};
use crate::ledger::lthash::Tracked;
use crate::output::envelope::{
    Action, EnvelopeContext, EnvelopeFile, EnvelopeWriter, RecordChange,
};
use crate::run::collect::Collected;
use crate::run::normalize::{DirectoryAccount, DirectoryGroup};
use crate::run::record::{
    raw, with_volatile, ChangeRule, Hash, RawEntry, RecordKind, DELETED_STATUS,
};
use crate::store::codec::{CurrentRow, Flags};
use crate::store::ops::{Op, OpWriter, Ops, TombstoneWrite};
use crate::store::{Reader, RecordVersion, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the run's plan or envelope file: {0}")]
    Io(#[from] std::io::Error),
    #[error("a stored record does not read back: {0}")]
    Record(String),
}

/// One side of a changed record, read in full (as canonical JSON, parsed only when a rule
/// needs its fields).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub hash: Hash,
    pub flags: Flags,
    /// The stored record (without volatile fields) and payload.
    pub entry: RawEntry,
    pub volatile: Map<String, Value>,
    /// For a stored side: the run its version is valid from.
    pub valid_from: Option<String>,
}

impl Loaded {
    /// A stored version read in full; a deleted account's latest volatile values come along
    /// with `with_volatile`, for the leaver's last login.
    pub fn stored(
        reader: &Reader<'_>,
        source: &str,
        kind: RecordKind,
        version: &RecordVersion,
        with_volatile: bool,
    ) -> Result<Loaded, StoreError> {
        let entry = reader.version(source, kind, &version.external_id, &version.valid_from)?;
        let volatile = if with_volatile && !kind.volatile_fields().is_empty() {
            reader.volatile(source, kind, &version.external_id)?
        } else {
            Map::new()
        };
        Ok(Loaded {
            hash: version.hash,
            flags: version.flags,
            entry,
            volatile,
            valid_from: Some(version.valid_from.clone()),
        })
    }

    fn record(&self) -> Result<Value, PlanError> {
        self.entry
            .record()
            .map_err(|error| PlanError::Record(error.to_string()))
    }
}

/// What a planner writes besides the diff's input.
pub struct Sinks {
    pub ops: Option<OpWriter>,
    pub envelopes: Option<EnvelopeWriter>,
}

/// How the settings moved between the two sides, so that what only the settings changed is
/// no event.
#[derive(Debug, Clone, Copy)]
pub struct SettingsStep<'a> {
    /// The rule the two sides are compared under: the fields ignored on either side, so that
    /// a field that became ignored, or stopped being, makes no change in this run (it is
    /// compared from the next run on).
    pub compare: ChangeRule<'a>,
    /// Whether groups and memberships were read on the old side and on the new side.
    pub groups_before: bool,
    pub groups_after: bool,
}

impl SettingsStep<'_> {
    /// A record's presence on each side as far as it is known: a group or membership on the
    /// side group sync did not read is taken as on the other side, as nothing is known of it.
    fn presence(&self, kind: RecordKind, old: bool, new: bool) -> (bool, bool) {
        if kind == RecordKind::Account {
            return (old, new);
        }
        match (self.groups_before, self.groups_after) {
            (true, false) => (old, old),
            (false, true) => (new, new),
            _ => (old, new),
        }
    }

    /// Whether a record of `kind` present on one side only is so because group sync was
    /// switched, not because it was created or deleted.
    fn uncollected(&self, kind: RecordKind, old: bool, new: bool) -> bool {
        let (known_old, known_new) = self.presence(kind, old, new);
        old != new && known_old == known_new
    }
}

/// What an envelope's `reason` says of a record that only entered or left the scope, or whose
/// new version only restates it (the same material content under a changed rule or format).
pub const OUT_OF_SCOPE: &str = "out_of_scope";
pub const IN_SCOPE: &str = "in_scope";
pub const RESTATED: &str = "restated";

pub struct Planner<'a> {
    rule: ChangeRule<'a>,
    step: SettingsStep<'a>,
    context: EnvelopeContext<'a>,
    sinks: Sinks,
    baseline: bool,
    input: DiffInput,
    block: Option<Block>,
    /// The groups whose members are privileged, before and after; known once the groups
    /// have passed (memberships come after them).
    privileged_groups: Option<[BTreeSet<String>; 2]>,
    /// The digest of the new side's whole snapshot, when a sync tracks it: the old side's,
    /// updated by every changed record.
    snapshot: Option<Tracked>,
    /// See [`Planned::deleted_account_pks`].
    deleted_account_pks: BTreeMap<String, i64>,
}

/// The memberships of one account, gathered while they pass.
struct Block {
    uid: String,
    old: BTreeSet<String>,
    new: BTreeSet<String>,
    changed: bool,
}

/// What a plan produced.
pub struct Planned {
    pub ops: Option<Ops>,
    pub envelopes: Option<EnvelopeFile>,
    pub input: DiffInput,
    /// The new side's snapshot digest, when it was tracked.
    pub snapshot: Option<Tracked>,
    /// The Authentik pk of each account gone from the new side, by uid, from its stored
    /// payload: the uid cannot be looked up, the pk can, and a sync asks Authentik by it
    /// whether the account is really deleted ([`crate::run::confirm`]).
    pub deleted_account_pks: BTreeMap<String, i64>,
}

impl<'a> Planner<'a> {
    /// `from` is `None` for a baseline, whose records all start new chains; `baseline_reason`
    /// says why it is one. `rules` are the source's account rules the diff applies.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rule: ChangeRule<'a>,
        step: SettingsStep<'a>,
        rules: AccountRules,
        context: EnvelopeContext<'a>,
        from: Option<RunRef>,
        to: RunRef,
        baseline_reason: Option<String>,
        sinks: Sinks,
    ) -> Planner<'a> {
        let baseline = from.is_none();
        Planner {
            rule,
            step,
            sinks,
            baseline,
            input: DiffInput {
                source: context.source.to_string(),
                from,
                to,
                baseline: baseline.then(|| Baseline {
                    reason: baseline_reason.unwrap_or_else(|| {
                        "first run of this source: every record is new".to_string()
                    }),
                    superusers: Vec::new(),
                }),
                accounts: BTreeMap::new(),
                groups_before: BTreeMap::new(),
                groups_after: BTreeMap::new(),
                group_changes: BTreeMap::new(),
                memberships_added: Vec::new(),
                memberships_removed: Vec::new(),
                last_active: BTreeMap::new(),
                population: Population::default(),
                rules,
                groups_out_of_scope: Default::default(),
                scope_changes: crate::diff::ScopeChanges {
                    group_sync: (!baseline && step.groups_before != step.groups_after)
                        .then_some(step.groups_after),
                    ..Default::default()
                },
            },
            context,
            block: None,
            privileged_groups: None,
            snapshot: None,
            deleted_account_pks: BTreeMap::new(),
        }
    }

    /// Tracks the snapshot digest of the new side, starting from the old side's.
    pub fn track_snapshot(&mut self, old: Tracked) {
        self.snapshot = Some(old);
    }

    pub fn is_baseline(&self) -> bool {
        self.baseline
    }

    pub fn rule(&self) -> &ChangeRule<'a> {
        &self.rule
    }

    /// Counts an account of either side for the population (in scope only).
    pub fn count(&mut self, old: Option<Flags>, new: Option<Flags>) {
        let population = &mut self.input.population;
        let old_in = old.filter(|flags| flags.in_scope());
        let new_in = new.filter(|flags| flags.in_scope());
        for (flags, side) in [(old_in, Side::Before), (new_in, Side::After)] {
            let Some(flags) = flags else { continue };
            let bump = |count: &mut crate::diff::BeforeAfter| match side {
                Side::Before => count.before += 1,
                Side::After => count.after += 1,
            };
            bump(&mut population.accounts);
            if flags.active() {
                bump(&mut population.active);
            }
            if flags.superuser() {
                bump(&mut population.superusers);
            }
        }
        match (old, new, old_in.is_some(), new_in.is_some()) {
            (None, Some(_), _, true) => population.created += 1,
            (Some(_), None, true, _) => population.deleted += 1,
            (Some(_), Some(_), false, true) => population.entered_scope += 1,
            (Some(_), Some(_), true, false) => population.left_scope += 1,
            _ => {}
        }
    }

    /// A record whose material hash or scope differs between the two sides. `tombstone` is
    /// the hash of the last envelope the record's consumers saw when that was a deletion (a
    /// real one, or its leaving the scope), which a record that comes back chains to.
    pub fn changed(
        &mut self,
        kind: RecordKind,
        external_id: &str,
        old: Option<Loaded>,
        new: Option<Loaded>,
        tombstone: Option<Hash>,
    ) -> Result<(), PlanError> {
        let content =
            Action::classify(old.as_ref().map(|o| &o.hash), new.as_ref().map(|n| &n.hash));
        let old_in = old.as_ref().is_some_and(|old| old.flags.in_scope());
        let new_in = new.as_ref().is_some_and(|new| new.flags.in_scope());
        let uncollected = self.uncollected(kind, old.is_some(), new.is_some());
        if content.is_none() && old_in == new_in {
            return Ok(());
        }
        if let (Some(snapshot), Some(_)) = (self.snapshot.as_mut(), content) {
            snapshot.replace(
                kind,
                external_id,
                old.as_ref().map(|old| &old.hash),
                new.as_ref().map(|new| &new.hash),
            );
        }
        let changes = match (&old, &new) {
            (Some(old), Some(new)) if content.is_some() => {
                let (old_record, new_record) = (old.record()?, new.record()?);
                let mut changes = self.step.compare.field_changes(&old_record, &new_record);
                if roles_only_restated(old, &old_record, &new_record) {
                    changes.retain(|change| change.field != "roles");
                }
                changes
            }
            _ => Vec::new(),
        };
        // What the record's consumers see: its scope on each side decides the action.
        let seen = match (old_in, new_in) {
            (true, true) => {
                content.map(|action| (action, (changes.is_empty()).then_some(RESTATED)))
            }
            (true, false) => Some((
                Action::Deleted,
                (new.is_some() || uncollected).then_some(OUT_OF_SCOPE),
            )),
            (false, true) => Some((
                Action::Created,
                (old.is_some() || uncollected).then_some(IN_SCOPE),
            )),
            (false, false) => None,
        };
        // The record as its consumers last see it when it leaves their view: with the status
        // `DELETED`, and the hash of that, which is kept as its tombstone.
        let farewell = match (seen, &new, &old) {
            (Some((Action::Deleted, _)), Some(last), _)
            | (Some((Action::Deleted, _)), None, Some(last)) => {
                let mut record = last.record()?;
                let hash = self.rule.deleted_hash(&record);
                if let Some(object) = record.as_object_mut() {
                    object.insert("status".into(), Value::String(DELETED_STATUS.into()));
                }
                Some((raw(canonical_json(&record)), hash))
            }
            _ => None,
        };
        if let Some(ops) = self.sinks.ops.as_mut() {
            let op = match (&old, &new) {
                (Some(old), None) => Op::Delete {
                    kind,
                    external_id: external_id.to_string(),
                    valid_from: stored_from(old)?,
                    tombstone: farewell.as_ref().map(|(_, hash)| *hash),
                },
                (old, Some(new)) => Op::Put {
                    kind,
                    external_id: external_id.to_string(),
                    replaces: old.as_ref().map(stored_from).transpose()?,
                    tombstone: match (&farewell, new_in && tombstone.is_some()) {
                        (Some((_, hash)), _) => TombstoneWrite::Set(*hash),
                        (None, true) => TombstoneWrite::Clear,
                        (None, false) => TombstoneWrite::Keep,
                    },
                    entry: new.entry.to_bytes(),
                    current: current_row(self.context.run_id, new)?,
                    volatile: volatile_bytes(kind, &new.volatile),
                },
                (None, None) => unreachable!("a changed record has a side"),
            };
            ops.push(&op)?;
        }
        if let (Some(envelopes), Some((action, reason))) = (self.sinks.envelopes.as_mut(), seen) {
            let line = match (&farewell, &old, &new) {
                (Some((record, hash)), _, _) => {
                    let last = new.as_ref().or(old.as_ref()).expect("a side");
                    self.context.line(&RecordChange {
                        kind,
                        external_id,
                        action,
                        reason,
                        record,
                        payload: &last.entry.payload,
                        hash: *hash,
                        previous_hash: old.as_ref().map(|old| old.hash),
                        changes: None,
                    })
                }
                (None, old, Some(new)) => self.context.line(&RecordChange {
                    kind,
                    external_id,
                    action,
                    reason,
                    record: &new.entry.record,
                    payload: &new.entry.payload,
                    hash: new.hash,
                    previous_hash: match (action, old) {
                        (Action::Updated, Some(old)) => Some(old.hash),
                        _ if self.baseline => None,
                        _ => tombstone,
                    },
                    changes: (action == Action::Updated).then_some(changes.as_slice()),
                }),
                (None, _, None) => unreachable!("only a deletion has no new side"),
            };
            envelopes.push(action, &line)?;
        }
        if old_in != new_in && !self.baseline && (old.is_some() && new.is_some() || uncollected) {
            self.scope_moved(
                kind,
                external_id,
                old.as_ref().or(new.as_ref()),
                new_in,
                match (uncollected, content) {
                    (true, _) => ScopeCause::GroupSync,
                    (false, None) => ScopeCause::Filter,
                    (false, Some(_)) => ScopeCause::Record,
                },
            )?;
        }
        match kind {
            RecordKind::Account => self.account_changed(external_id, old, new, changes)?,
            RecordKind::Group => {
                // Unknown on the side group sync did not read: the same as on the other.
                let (before, after) = match uncollected {
                    true => (old.as_ref().or(new.as_ref()), old.as_ref().or(new.as_ref())),
                    false => (old.as_ref(), new.as_ref()),
                };
                self.catalog(before, after)?;
                if content == Some(Action::Updated) {
                    self.input
                        .group_changes
                        .insert(external_id.to_string(), changes);
                }
            }
            RecordKind::Membership => {
                if let (Some(action), false, true) = (content, uncollected, old_in || new_in) {
                    self.membership_changed(external_id, action)
                }
            }
        }
        Ok(())
    }

    /// A record that entered (`entered`) or left the scope, for the diff: accounts and groups
    /// by name, memberships counted.
    fn scope_moved(
        &mut self,
        kind: RecordKind,
        external_id: &str,
        side: Option<&Loaded>,
        entered: bool,
        cause: ScopeCause,
    ) -> Result<(), PlanError> {
        let scope = &mut self.input.scope_changes;
        let name = |field: &str| -> Result<String, PlanError> {
            let record = side.expect("a side").record()?;
            Ok(record[field].as_str().unwrap_or(external_id).to_string())
        };
        let list = match (kind, entered) {
            (RecordKind::Membership, true) => {
                scope.memberships_entered += 1;
                return Ok(());
            }
            (RecordKind::Membership, false) => {
                scope.memberships_left += 1;
                return Ok(());
            }
            (RecordKind::Account, true) => (&mut scope.accounts_entered, "username"),
            (RecordKind::Account, false) => (&mut scope.accounts_left, "username"),
            (RecordKind::Group, true) => (&mut scope.groups_entered, "display_name"),
            (RecordKind::Group, false) => (&mut scope.groups_left, "display_name"),
        };
        let name = name(list.1)?;
        list.0.push(ScopeChange {
            external_id: external_id.to_string(),
            name,
            cause,
        });
        Ok(())
    }

    /// Whether [`Planner::changed`] needs a changed membership's content: only to write it
    /// or to emit its envelope. The diff needs its id alone.
    pub fn needs_membership_content(&self) -> bool {
        self.sinks.ops.is_some() || self.sinks.envelopes.is_some()
    }

    /// Whether a record of `kind` present on one side only is so because group sync was
    /// switched between the sides: it entered or left the scope, and its content on the side
    /// that was not read is unknown. A replay gives such a record to [`Planner::changed`].
    pub fn uncollected(&self, kind: RecordKind, old: bool, new: bool) -> bool {
        !self.baseline && self.step.uncollected(kind, old, new)
    }

    /// A membership that was created or deleted (an update changes no pair).
    pub fn membership_changed(&mut self, external_id: &str, action: Action) {
        if self.baseline {
            return;
        }
        let pair = membership_pair(external_id);
        match action {
            Action::Created => self.input.memberships_added.push(pair),
            Action::Deleted => self.input.memberships_removed.push(pair),
            Action::Updated => {}
        }
    }

    fn account_changed(
        &mut self,
        external_id: &str,
        old: Option<Loaded>,
        new: Option<Loaded>,
        changes: Vec<crate::run::record::FieldChange>,
    ) -> Result<(), PlanError> {
        if self.baseline {
            if let Some(new) = new.filter(|new| new.flags.superuser()) {
                let account = typed_account(&new)?;
                if let Some(baseline) = self.input.baseline.as_mut() {
                    baseline.superusers.push(AccountRef {
                        external_id: account.external_id,
                        username: account.username,
                        canonical_email: account.canonical_email,
                    });
                }
            }
            return Ok(());
        }
        if let (Some(old), None) = (&old, &new) {
            if let Some(pk) = payload_pk(old) {
                self.deleted_account_pks.insert(external_id.to_string(), pk);
            }
        }
        let sides = self
            .input
            .accounts
            .entry(external_id.to_string())
            .or_default();
        sides.old_in_scope = old.as_ref().is_some_and(|old| old.flags.in_scope());
        sides.new_in_scope = new.as_ref().is_some_and(|new| new.flags.in_scope());
        sides.old = old.as_ref().map(typed_account).transpose()?;
        sides.new = new.as_ref().map(typed_account).transpose()?;
        sides.changes = changes;
        Ok(())
    }

    /// A group present on either side, changed or not: the diff names groups and walks their
    /// hierarchy on both sides.
    pub fn catalog(&mut self, old: Option<&Loaded>, new: Option<&Loaded>) -> Result<(), PlanError> {
        let [out_before, out_after] = &mut self.input.groups_out_of_scope;
        for (loaded, catalog, out) in [
            (old, &mut self.input.groups_before, out_before),
            (new, &mut self.input.groups_after, out_after),
        ] {
            if let Some(loaded) = loaded {
                let group: DirectoryGroup = serde_json::from_str(loaded.entry.record.get())
                    .map_err(|error| PlanError::Record(format!("group: {error}")))?;
                if !loaded.flags.in_scope() {
                    out.insert(group.external_id.clone());
                }
                catalog.insert(group.external_id.clone(), group);
            }
        }
        Ok(())
    }

    /// An unchanged record whose volatile values moved: no version, only the current row and
    /// the latest values.
    pub fn touch(
        &mut self,
        kind: RecordKind,
        external_id: &str,
        current: CurrentRow,
        volatile: &Map<String, Value>,
    ) -> Result<(), PlanError> {
        if let Some(ops) = self.sinks.ops.as_mut() {
            ops.push(&Op::Touch {
                kind,
                external_id: external_id.to_string(),
                current,
                volatile: canonical_json(&Value::Object(volatile.clone())),
            })?;
        }
        Ok(())
    }

    /// Every membership of either side, in id order, so that each account's groups are known
    /// on both sides when it joins, leaves or moves.
    pub fn membership(&mut self, external_id: &str, old: bool, new: bool) {
        if self.baseline {
            return;
        }
        let (old, new) = self.step.presence(RecordKind::Membership, old, new);
        if self.privileged_groups.is_none() {
            let rules = &self.input.rules;
            self.privileged_groups = Some([
                rules.privileged_group_ids(&self.input.groups_before),
                rules.privileged_group_ids(&self.input.groups_after),
            ]);
        }
        let (uid, group) = membership_pair(external_id);
        if self.block.as_ref().is_none_or(|block| block.uid != uid) {
            self.close_block();
            self.block = Some(Block {
                uid,
                old: BTreeSet::new(),
                new: BTreeSet::new(),
                changed: false,
            });
        }
        let block = self.block.as_mut().expect("a block was just opened");
        if old {
            block.old.insert(group.clone());
        }
        if new {
            block.new.insert(group);
        }
        block.changed |= old != new;
    }

    fn close_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        // A group's flag, parents or name can make its members privileged, or not, without
        // any change to their records or memberships: the diff must see those accounts too.
        let privilege_moved = self
            .privileged_groups
            .as_ref()
            .is_some_and(|[before, after]| {
                block.old.is_disjoint(before) != block.new.is_disjoint(after)
            });
        if !block.changed && !privilege_moved && !self.input.accounts.contains_key(&block.uid) {
            return;
        }
        let sides = self.input.accounts.entry(block.uid).or_default();
        sides.old_groups = block.old;
        sides.new_groups = block.new;
    }

    /// Accounts whose groups changed but whose records did not: the caller reads their
    /// records with [`Planner::fill`].
    pub fn needs_records(&mut self) -> Vec<String> {
        self.close_block();
        self.input
            .accounts
            .iter()
            .filter(|(_, sides)| sides.old.is_none() && sides.new.is_none())
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    pub fn fill(
        &mut self,
        uid: &str,
        old: Option<&Loaded>,
        new: Option<&Loaded>,
    ) -> Result<(), PlanError> {
        let in_scope = |side: Option<&Loaded>| side.is_some_and(|side| side.flags.in_scope());
        let (old_in_scope, new_in_scope) = (in_scope(old), in_scope(new));
        let old = old.map(typed_account).transpose()?;
        let new = new.map(typed_account).transpose()?;
        if let Some(sides) = self.input.accounts.get_mut(uid) {
            sides.old = old;
            sides.new = new;
            sides.old_in_scope = old_in_scope;
            sides.new_in_scope = new_in_scope;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Planned, PlanError> {
        self.close_block();
        Ok(Planned {
            ops: self.sinks.ops.map(OpWriter::finish).transpose()?,
            envelopes: self
                .sinks
                .envelopes
                .map(EnvelopeWriter::finish)
                .transpose()?,
            input: self.input,
            snapshot: self.snapshot,
            deleted_account_pks: self.deleted_account_pks,
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Before,
    After,
}

/// Roles became part of the record with the ledger: a version stored before has no
/// `roles` key, though its payload kept the same role uuids. Such a record gains the key
/// without any change of access (it still gets its new version and envelope, so that
/// consumers' hash chains hold).
fn roles_only_restated(old: &Loaded, old_record: &Value, new_record: &Value) -> bool {
    if old_record.get("roles").is_some() {
        return false;
    }
    let mut before: Vec<String> = old
        .entry
        .payload()
        .ok()
        .and_then(|payload| serde_json::from_value(payload["roles"].clone()).ok())
        .unwrap_or_default();
    before.sort();
    before.dedup();
    let after: Vec<&str> = new_record["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|role| role["pk"].as_str())
        .collect();
    before == after
}

/// The `pk` of the raw object a version kept, if it has one (a payload from before payloads
/// were kept is `null`).
fn payload_pk(loaded: &Loaded) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Keyed {
        pk: i64,
    }
    serde_json::from_str::<Keyed>(loaded.entry.payload.get())
        .ok()
        .map(|keyed| keyed.pk)
}

fn stored_from(loaded: &Loaded) -> Result<String, PlanError> {
    loaded
        .valid_from
        .clone()
        .ok_or_else(|| PlanError::Record("a stored side without its version".into()))
}

fn current_row(run_id: &str, loaded: &Loaded) -> Result<CurrentRow, PlanError> {
    CurrentRow::new(
        run_id,
        loaded.hash,
        crate::run::record::volatile_digest(&loaded.volatile),
        loaded.flags,
    )
    .map_err(|_| PlanError::Record(format!("run id {run_id:?} is not a ULID")))
}

fn volatile_bytes(kind: RecordKind, volatile: &Map<String, Value>) -> Option<Vec<u8>> {
    (!kind.volatile_fields().is_empty()).then(|| canonical_json(&Value::Object(volatile.clone())))
}

fn typed_account(loaded: &Loaded) -> Result<DirectoryAccount, PlanError> {
    serde_json::from_value(with_volatile(loaded.record()?, &loaded.volatile))
        .map_err(|error| PlanError::Record(format!("account: {error}")))
}

/// `(account uid, group pk)` of a membership id `uid:group`.
pub fn membership_pair(external_id: &str) -> (String, String) {
    match external_id.split_once(':') {
        Some((uid, group)) => (uid.to_string(), group.to_string()),
        None => (external_id.to_string(), String::new()),
    }
}

/// Walks two sequences sorted by key side by side, calling `visit` once per key with the item
/// of each side that has it.
pub fn merge_sorted<A, B, E>(
    old: impl Iterator<Item = Result<A, E>>,
    new: impl Iterator<Item = Result<B, E>>,
    key_old: impl Fn(&A) -> &str,
    key_new: impl Fn(&B) -> &str,
    mut visit: impl FnMut(Option<A>, Option<B>) -> Result<(), PlanError>,
) -> Result<(), PlanError>
where
    PlanError: From<E>,
{
    let mut old = old.peekable();
    let mut new = new.peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return Ok(()),
            (Some(Err(_)), _) => {
                return Err(old
                    .next()
                    .and_then(Result::err)
                    .map(PlanError::from)
                    .expect("peeked"))
            }
            (_, Some(Err(_))) => {
                return Err(new
                    .next()
                    .and_then(Result::err)
                    .map(PlanError::from)
                    .expect("peeked"))
            }
            (Some(Ok(a)), Some(Ok(b))) => key_old(a).cmp(key_new(b)),
            (Some(Ok(_)), None) => std::cmp::Ordering::Less,
            (None, Some(Ok(_))) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => visit(next_item(&mut old)?, None)?,
            std::cmp::Ordering::Greater => visit(None, next_item(&mut new)?)?,
            std::cmp::Ordering::Equal => {
                let a = next_item(&mut old)?;
                let b = next_item(&mut new)?;
                visit(a, b)?
            }
        }
    }
}

fn next_item<T, E>(
    iter: &mut std::iter::Peekable<impl Iterator<Item = Result<T, E>>>,
) -> Result<Option<T>, PlanError>
where
    PlanError: From<E>,
{
    iter.next().transpose().map_err(PlanError::from)
}

/// Plans a sync: the stored current state of `source` beside the collected new records.
/// For a baseline the stored state is not read: every record starts a new chain.
pub fn plan_sync(
    reader: &Reader<'_>,
    source: &str,
    collected: &Collected,
    planner: &mut Planner<'_>,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), PlanError> {
    // Checked at every new record, so that a stop reaches a plan within one record.
    let go_on = || match cancelled() {
        true => Err(StoreError::Cancelled),
        false => Ok(()),
    };
    for (kind, spool) in [
        (RecordKind::Account, &collected.accounts),
        (RecordKind::Group, &collected.groups),
    ] {
        let old = stored_side(reader, source, kind, planner.is_baseline())?;
        let new = spool.items().iter().map(|item| go_on().map(|()| item));
        merge_sorted(
            old,
            new,
            |(id, _)| id.as_str(),
            |item| &item.external_id,
            |old, new| {
                let id = old
                    .as_ref()
                    .map(|(id, _): &(String, CurrentRow)| id.clone())
                    .or_else(|| new.map(|item| item.external_id.to_string()))
                    .expect("one side");
                if kind == RecordKind::Account {
                    planner.count(
                        old.as_ref().map(|(_, row)| row.flags),
                        new.map(|item| item.flags),
                    );
                }
                let changed = Action::classify(
                    old.as_ref().map(|(_, row)| &row.hash),
                    new.map(|item| &item.hash),
                )
                .is_some()
                    || matches!((&old, new), (Some((_, row)), Some(item)) if row.flags.in_scope() != item.flags.in_scope());
                let volatile_moved = matches!((&old, new), (Some((_, row)), Some(item)) if row.volatile_digest != item.volatile_digest);
                if !changed && !volatile_moved && kind != RecordKind::Group {
                    return Ok(());
                }
                let new_loaded = new.map(|item| spool_side(spool, item)).transpose()?;
                if !changed {
                    let (row, loaded) = (
                        old.as_ref().expect("both sides").1,
                        new_loaded.as_ref().expect("both sides"),
                    );
                    if volatile_moved {
                        let current = CurrentRow {
                            volatile_digest: new.expect("both sides").volatile_digest,
                            ..row
                        };
                        planner.touch(kind, &id, current, &loaded.volatile)?;
                    }
                    if kind == RecordKind::Group {
                        let old_loaded = Loaded::stored(
                            reader,
                            source,
                            kind,
                            &current_version(&id, &row),
                            false,
                        )?;
                        planner.catalog(Some(&old_loaded), Some(loaded))?;
                    }
                    return Ok(());
                }
                let old = old.as_ref().map(|(_, row)| row);
                plan_changed(reader, source, planner, kind, &id, old, new_loaded)
            },
        )?;
    }
    let old = stored_side(
        reader,
        source,
        RecordKind::Membership,
        planner.is_baseline(),
    )?;
    let new = collected
        .memberships
        .iter()
        .map(|membership| go_on().map(|()| membership));
    merge_sorted(
        old,
        new,
        |(id, _)| id.as_str(),
        |(id, _, _)| id.as_str(),
        |old, new| {
            let id = old
                .as_ref()
                .map(|(id, _)| id.clone())
                .or_else(|| new.as_ref().map(|(id, _, _)| id.clone()))
                .expect("one side");
            planner.membership(&id, old.is_some(), new.is_some());
            let new_loaded = new
                .map(|(_, record, flags)| -> Result<Loaded, PlanError> {
                    Ok(Loaded {
                        hash: planner
                            .rule()
                            .material_hash_raw(RecordKind::Membership, &record)
                            .map_err(|error| PlanError::Record(error.to_string()))?,
                        flags,
                        entry: RawEntry {
                            record,
                            payload: raw(b"null".to_vec()),
                        },
                        volatile: Map::new(),
                        valid_from: None,
                    })
                })
                .transpose()?;
            let scope_moved = matches!((&old, &new_loaded), (Some((_, row)), Some(new)) if row.flags.in_scope() != new.flags.in_scope());
            if !scope_moved
                && Action::classify(
                    old.as_ref().map(|(_, row)| &row.hash),
                    new_loaded.as_ref().map(|n| &n.hash),
                )
                .is_none()
            {
                return Ok(());
            }
            let old = old.as_ref().map(|(_, row)| row);
            plan_changed(
                reader,
                source,
                planner,
                RecordKind::Membership,
                &id,
                old,
                new_loaded,
            )
        },
    )?;
    for uid in planner.needs_records() {
        let old = match reader.current_row(source, RecordKind::Account, &uid)? {
            Some(row) => Some(Loaded::stored(
                reader,
                source,
                RecordKind::Account,
                &current_version(&uid, &row),
                false,
            )?),
            None => None,
        };
        let new = collected
            .accounts
            .find(&uid)
            .map(|item| spool_side(&collected.accounts, item))
            .transpose()?;
        planner.fill(&uid, old.as_ref(), new.as_ref())?;
    }
    Ok(())
}

type StoredRows<'r> = Box<dyn Iterator<Item = Result<(String, CurrentRow), StoreError>> + 'r>;

fn stored_side<'r>(
    reader: &'r Reader<'_>,
    source: &str,
    kind: RecordKind,
    baseline: bool,
) -> Result<StoredRows<'r>, PlanError> {
    if baseline {
        return Ok(Box::new(std::iter::empty()));
    }
    Ok(Box::new(reader.current(source, kind)?))
}

/// A record whose material hash or scope changed, planned against the stored state: its
/// stored side read in full (a deleted record's with its latest volatile values), and for a
/// record its consumers do not see, the hash of the deletion they saw last, which its envelope
/// chains to when it comes back.
fn plan_changed(
    reader: &Reader<'_>,
    source: &str,
    planner: &mut Planner<'_>,
    kind: RecordKind,
    external_id: &str,
    old: Option<&CurrentRow>,
    new: Option<Loaded>,
) -> Result<(), PlanError> {
    let old_loaded = old
        .map(|row| {
            let version = current_version(external_id, row);
            Loaded::stored(reader, source, kind, &version, new.is_none())
        })
        .transpose()?;
    // Only a record its consumers do not see now can have a tombstone.
    let unseen = old.is_none_or(|row| !row.flags.in_scope());
    let tombstone = match (unseen, planner.is_baseline()) {
        (true, false) => reader.tombstone(source, kind, external_id)?,
        _ => None,
    };
    planner.changed(kind, external_id, old_loaded, new, tombstone)
}

/// The stored version a current row points at.
fn current_version(external_id: &str, row: &CurrentRow) -> RecordVersion {
    RecordVersion {
        external_id: external_id.to_string(),
        valid_from: row.valid_from().to_string(),
        valid_to: None,
        hash: row.hash,
        flags: row.flags,
    }
}

fn spool_side(
    spool: &crate::run::spool::Spool,
    item: &crate::run::spool::SpoolItem,
) -> Result<Loaded, PlanError> {
    let record = spool.read(item)?;
    Ok(Loaded {
        hash: item.hash,
        flags: item.flags,
        entry: record.entry,
        volatile: record.volatile,
        valid_from: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::json;

    use crate::canonical::canonical_json;
    use crate::output::envelope::Action;
    use crate::run::record::{hex_hash, sha256, ChangeRule};
    use crate::testing::TestSource;

    /// One change to the small directory the property test evolves.
    #[derive(Debug, Clone)]
    enum Change {
        ToggleActive(usize),
        Rename(usize, u8),
        Attribute(usize, u8),
        ToggleMembership(usize, usize),
        ToggleDeleted(usize),
        RenameGroup(usize, u8),
        ToggleGroupSuperuser(usize),
        Login(usize, u8),
    }

    const USERS: usize = 4;
    const GROUPS: usize = 3;

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..USERS).prop_map(Change::ToggleActive),
            (0..USERS, 0..3u8).prop_map(|(u, n)| Change::Rename(u, n)),
            (0..USERS, 0..3u8).prop_map(|(u, n)| Change::Attribute(u, n)),
            (0..USERS, 0..GROUPS).prop_map(|(u, g)| Change::ToggleMembership(u, g)),
            (0..USERS).prop_map(Change::ToggleDeleted),
            (0..GROUPS, 0..3u8).prop_map(|(g, n)| Change::RenameGroup(g, n)),
            (0..GROUPS).prop_map(Change::ToggleGroupSuperuser),
            (0..USERS, 0..200u8).prop_map(|(u, n)| Change::Login(u, n)),
        ]
    }

    #[derive(Clone)]
    struct Person {
        active: bool,
        name: String,
        title: String,
        groups: [bool; GROUPS],
        deleted: bool,
        login: u8,
    }

    #[derive(Clone)]
    struct Team {
        name: String,
        superuser: bool,
    }

    fn render(
        people: &[Person],
        teams: &[Team],
    ) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let users = people
            .iter()
            .enumerate()
            .filter(|(_, person)| !person.deleted)
            .map(|(index, person)| {
                let groups: Vec<String> = (0..GROUPS)
                    .filter(|g| person.groups[*g])
                    .map(|g| format!("g{g}"))
                    .collect();
                let superuser = (0..GROUPS).any(|g| person.groups[g] && teams[g].superuser);
                json!({"pk": index + 1, "username": format!("u{index}"), "name": person.name,
                       "is_active": person.active, "groups": groups, "uid": format!("uid{index}"),
                       "attributes": {"title": person.title}, "type": "internal",
                       "is_superuser": superuser,
                       "last_login": format!("2026-11-01T08:{:02}:00Z", person.login % 60)})
            })
            .collect();
        let groups = teams
            .iter()
            .enumerate()
            .map(|(g, team)| {
                let members: Vec<usize> = people
                    .iter()
                    .enumerate()
                    .filter(|(_, person)| !person.deleted && person.groups[g])
                    .map(|(index, _)| index + 1)
                    .collect();
                json!({"pk": format!("g{g}"), "name": team.name, "is_superuser": team.superuser,
                       "parents": [], "users": members, "attributes": {}})
            })
            .collect();
        (users, groups)
    }

    fn apply(change: &Change, people: &mut [Person], teams: &mut [Team]) {
        match *change {
            Change::ToggleActive(u) => people[u].active = !people[u].active,
            Change::Rename(u, n) => people[u].name = format!("Person {u} v{n}"),
            Change::Attribute(u, n) => people[u].title = format!("title {n}"),
            Change::ToggleMembership(u, g) => people[u].groups[g] = !people[u].groups[g],
            Change::ToggleDeleted(u) => people[u].deleted = !people[u].deleted,
            Change::RenameGroup(g, n) => teams[g].name = format!("Group {g} v{n}"),
            Change::ToggleGroupSuperuser(g) => teams[g].superuser = !teams[g].superuser,
            Change::Login(u, n) => people[u].login = n,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Over any sequence of field, status, membership and deletion changes: every
        /// record's envelopes form an unbroken chain (each `previous_hash` is the hash of the
        /// record's previous envelope), each hash is the material hash of the record it
        /// carries, an envelope appears exactly when that hash changes, and a run without a
        /// material change emits nothing.
        #[test]
        fn envelope_chains_link_exactly(runs in prop::collection::vec(prop::collection::vec(change(), 0..4), 1..7)) {
            let mut people: Vec<Person> = (0..USERS)
                .map(|u| Person {
                    active: u != 3,
                    name: format!("Person {u}"),
                    title: "t".into(),
                    groups: [u == 0, u == 1, false],
                    deleted: false,
                    login: 0,
                })
                .collect();
            let mut teams: Vec<Team> = (0..GROUPS)
                .map(|g| Team { name: format!("Group {g}"), superuser: g == 2 })
                .collect();
            let mut source = TestSource::new();
            let rule = ChangeRule::new(&[]);
            let mut last_hash: BTreeMap<String, String> = BTreeMap::new();
            let mut last_state: BTreeMap<String, Option<String>> = BTreeMap::new();
            for (index, changes) in std::iter::once(Vec::new()).chain(runs).enumerate() {
                for change in &changes {
                    apply(change, &mut people, &mut teams);
                }
                let (users, groups) = render(&people, &teams);
                let run = source.sync(users, groups).run;
                let envelopes = source.envelopes(&run.run_id);
                let material_changes = changes.iter().any(|c| !matches!(c, Change::Login(..)));
                if index > 0 && !material_changes {
                    prop_assert!(envelopes.is_empty(), "a login-only run emitted {}", envelopes.len());
                }
                let mut seen = std::collections::BTreeSet::new();
                for envelope in &envelopes {
                    let key = format!("{:?}:{}", envelope.schema, envelope.external_id);
                    prop_assert!(seen.insert(key.clone()), "two envelopes for {key}");
                    prop_assert_eq!(
                        &envelope.hash,
                        &hex_hash(&sha256(&canonical_json(&rule.material_view(&envelope.record))))
                    );
                    prop_assert_eq!(envelope.previous_hash.as_ref(), last_hash.get(&key), "chain of {}", key);
                    prop_assert_ne!(Some(&Some(envelope.hash.clone())), last_state.get(&key), "no change in {}", key);
                    last_hash.insert(key.clone(), envelope.hash.clone());
                    let present = (envelope.action != Action::Deleted).then(|| envelope.hash.clone());
                    last_state.insert(key, present);
                }
            }
        }
    }
}
