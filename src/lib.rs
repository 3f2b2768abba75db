//! aksync: Authentik directory snapshots, joiner/mover/leaver diffs and audit evidence.
//!
//! Data flows top-down through the modules:
//! `config → authentik (client) → normalize → store (snapshots) → sync → cli`.
//! `fake` is the bundled fake Authentik server used by the demo and the tests.

pub mod authentik;
pub mod config;
pub mod fake;
pub mod normalize;
pub mod secret;
pub mod store;
