//! aksync: Authentik directory snapshots, joiner/mover/leaver diffs and audit evidence.
//!
//! # The crate map
//!
//! The folders follow the data, which flows one way:
//! [`config`] → [`authentik`] → [`run`] (collect, normalize, plan) → [`diff`] →
//! [`store`] + [`ledger`] → [`output`] (envelopes, reports, delivery) and [`review`] (access
//! reviews) → [`cli`] / [`daemon`].
//!
//! | folder | one concern |
//! |---|---|
//! | [`config`] | the configuration and its parts: [`config::schedule`], [`config::filter`], [`config::fields`], [`config::secret`], [`config::state_dir`] |
//! | [`authentik`] | the source: the REST client, its models and errors, and [`authentik::health`] (`aksync check`) |
//! | [`run`] | one run of one source, top to bottom: [`run::collect`], [`run::normalize`], [`run::spool`], [`run::record`], [`run::plan`], [`run::confirm`], [`run::quarantine`], [`run::sync`], [`run::runner`], [`run::run_lock`] |
//! | [`diff`] | the pure diff: joiners, movers, leavers and the rest |
//! | [`store`] | the redb database: snapshots, run records, the outbox mark |
//! | [`ledger`] | the evidence kept: entries, the chain and its seals, `history`, `verify`, and [`ledger::replay`] of stored runs |
//! | [`output`] | what leaves the run: [`output::envelope`], [`output::report`], [`output::artifacts`], [`output::repair`], [`output::retention`], [`output::delivery`], [`output::snapshot`], [`output::sheet`] |
//! | [`review`] | access reviews and point-in-time questions, read from [`store`] and [`ledger`]: effective access, review files (through [`output::sheet`]) and the revocations decided |
//! | [`cli`], [`daemon`] | the two ways to drive it |
//! | [`demo`] | the demo and the bundled fake Authentik ([`demo::fake`]) the tests use |
//!
//! # One run, top to bottom
//!
//! A run of one source is one pass over the data, flowing one way:
//!
//! 1. **Fetch** ([`authentik`]): `/core/users/me/`, the version and both listings through one
//!    pool of `concurrency` requests; every page is checked against the shape page 1 announced
//!    and bounded in size ([`authentik::client`]).
//! 2. **Collect** ([`run::collect`]): each page is normalized ([`run::normalize`]), filtered
//!    by the source's CEL expression ([`config::filter`]) and spooled to disk
//!    ([`run::spool`]) on its own thread as it arrives. Memory keeps pks, uids, group ids and
//!    memberships as pairs of small indexes; at the end every reference and both membership
//!    views are checked.
//! 3. **Plan** ([`run::plan`]): the spooled records, sorted by external id, are merged with
//!    the store's current state. Each record is classified once by its material hash
//!    ([`run::record`]: the one rule for "this record changed"), and that one classification
//!    yields the store writes (spooled as [`store::ops`]), the envelope file
//!    ([`output::envelope`]) and the diff's input. Unchanged records cost a comparison of two
//!    hashes.
//! 4. **Diff** ([`diff`]): a pure function turns that input into joiners, movers, leavers,
//!    purges, group and membership changes, privilege escalations and the population counts.
//!    Each deletion it reports is confirmed with Authentik by its id ([`run::confirm`]) while
//!    the plan waits; too many leavers, removals or deletions hold the run for an admin
//!    ([`run::quarantine`]).
//! 5. **Commit** ([`store`]) with its evidence ([`ledger`]): one short write transaction checks
//!    that no other run committed meanwhile, replays the planned writes and appends the run's
//!    sealed ledger entry (its events, settings, population and snapshot digest); the envelope
//!    file is in place before it.
//! 6. **After** ([`output`]): reports ([`output::report`], read from the ledger by
//!    [`output::report::assemble`], their files written by [`output::artifacts`] and recorded
//!    in the ledger), retention ([`output::retention`]), the repair of runs a stopped process
//!    left without reports or envelope files ([`output::repair`]) and webhook delivery
//!    ([`output::delivery`], which reads envelope files and the store only: a file it cannot
//!    open is rebuilt by [`output::repair::deliver_repairing`] before the pass goes on).
//!
//! [`run::sync`] drives steps 1–5; [`run::runner`] wraps it under the source's cross-process
//! lock ([`run::run_lock`]) with step 6, the same for `aksync sync` ([`cli`]) and `aksync
//! daemon` ([`daemon`], scheduled by [`config::schedule`]). `report`, `history` and the diff
//! of consecutive runs read the ledger; [`ledger::replay`] replays two stored runs through the
//! same planner for the diff of runs that are not consecutive, rebuilt envelope files and the
//! backfill of runs from before the ledger; [`ledger::verify`] checks everything the ledger
//! names.
//!
//! # The other modules
//!
//! [`config::state_dir`] keeps other local users out of the state directory; [`display`]
//! escapes untrusted text for every human-readable output; [`canonical`] writes canonical
//! JSON; [`clock`] makes time a parameter; [`telemetry`] counts requests to Authentik and
//! webhook batches for `/metrics`; [`logging`] sets up journald-friendly logs.

pub mod authentik;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod diff;
pub mod display;
pub mod ledger;
pub mod logging;
pub mod output;
pub mod review;
pub mod run;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod testing;
