//! One run of one source, top to bottom: the pages Authentik returns are normalized
//! ([`normalize`]), checked and spooled to disk as they arrive ([`collect`], [`spool`]),
//! classified once each by their material hash ([`record`]), planned against the stored
//! state ([`plan`]: the store writes, the envelope file and the diff's input), its deletions
//! confirmed with Authentik ([`confirm`]) and committed with the run's ledger entry
//! ([`sync`]). [`runner`] wraps a sync under the source's cross-process lock ([`run_lock`])
//! with what follows a complete run.

pub mod collect;
pub mod confirm;
pub mod normalize;
pub mod plan;
pub mod quarantine;
pub mod record;
pub mod run_lock;
pub mod runner;
pub mod spool;
pub mod sync;
