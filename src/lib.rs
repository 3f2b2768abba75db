//! aksync: Authentik directory snapshots, joiner/mover/leaver diffs and audit evidence.
//!
//! Data flows top-down through the modules:
//! `config (schedule) → authentik (client) → normalize → filter → store (snapshots) → sync /
//! health → diff → evidence → envelope / report (artifacts, delivery) → runner → cli / daemon`.
//! `runner` is one run of one source under its `run_lock`, the same for `aksync sync` and the
//! daemon. `display` escapes and shortens untrusted text for every human-readable output.
//! `fake` is the bundled fake Authentik server used by the demo and the tests.

pub mod artifacts;
pub mod authentik;
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
pub mod logging;
pub mod normalize;
pub mod plan;
pub mod record;
pub mod report;
pub mod retention;
pub mod run_lock;
pub mod runner;
pub mod schedule;
pub mod secret;
pub mod spool;
pub mod store;
pub mod sync;
#[cfg(test)]
mod testing;
