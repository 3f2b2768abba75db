//! aksync: Authentik directory snapshots, joiner/mover/leaver diffs and audit evidence.
//!
//! # One run, top to bottom
//!
//! A run of one source is one pass over the data, flowing one way:
//!
//! 1. **Fetch** ([`authentik`]): `/core/users/me/`, the version and both listings through one
//!    pool of `concurrency` requests; every page is checked against the shape page 1 announced
//!    and bounded in size ([`authentik::client`]).
//! 2. **Collect** ([`collect`]): each page is normalized ([`normalize`]), filtered by the
//!    source's CEL expression ([`filter`]) and spooled to disk ([`spool`]) on its own thread as it
//!    arrives. Memory keeps pks, uids, group ids and memberships as pairs of small indexes; at
//!    the end every reference and both membership views are checked.
//! 3. **Plan** ([`plan`]): the spooled records, sorted by external id, are merged with the
//!    store's current state. Each record is classified once by its material hash
//!    ([`record`]: the one rule for "this record changed"), and that one classification yields
//!    the store writes (spooled as [`store::ops`]), the envelope file ([`envelope`]) and the
//!    diff's input. Unchanged records cost a comparison of two hashes.
//! 4. **Diff** ([`diff`]): a pure function turns that input into joiners, movers, leavers,
//!    purges, group and membership changes, privilege escalations and the population counts.
//! 5. **Commit** ([`store`]) with its evidence ([`ledger`]): one short write transaction checks
//!    that no other run committed meanwhile, replays the planned writes and appends the run's
//!    sealed ledger entry (its events, settings, population and snapshot digest); the envelope
//!    file is in place before it.
//! 6. **After**: reports ([`report`], read from the ledger by [`report::assemble`], their
//!    files written by [`artifacts`] and recorded in the ledger), retention ([`retention`]),
//!    the repair of runs a stopped process left without reports ([`repair`]) and webhook
//!    delivery ([`delivery`]).
//!
//! [`sync`] drives steps 1–5; [`runner`] wraps it under the source's cross-process lock
//! ([`run_lock`]) with step 6, the same for `aksync sync` ([`cli`]) and `aksync daemon`
//! ([`daemon`], scheduled by [`schedule`]). `report`, `history` and the diff of consecutive
//! runs read the ledger; [`evidence`] replays two stored runs through the same planner for
//! the diff of runs that are not consecutive, rebuilt envelope files and the backfill of runs
//! from before the ledger; [`ledger::verify`] checks everything the ledger names.
//!
//! # The other modules
//!
//! [`config`] reads and validates the configuration; [`state_dir`] keeps other local users out
//! of the state directory; [`health`] is `aksync check`; [`display`]
//! escapes untrusted text for every human-readable output; [`secret`] holds the token;
//! [`clock`] makes time a parameter; [`telemetry`] counts requests to Authentik and webhook
//! batches for `/metrics`; [`logging`] sets up journald-friendly logs; [`demo`] and
//! [`fake`] are the demo and the bundled fake Authentik the tests use.

pub mod artifacts;
pub mod authentik;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod diff;
pub mod display;
pub mod envelope;
pub mod evidence;
pub mod fake;
pub mod filter;
pub mod health;
pub mod ledger;
pub mod logging;
pub mod normalize;
pub mod plan;
pub mod record;
pub mod repair;
pub mod report;
pub mod retention;
pub mod run_lock;
pub mod runner;
pub mod schedule;
pub mod secret;
pub mod spool;
pub mod state_dir;
pub mod store;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
mod testing;
