//! Access reviews and point-in-time questions, read from the stored snapshots and the
//! evidence ledger; nothing here calls Authentik.
//!
//! - [`access`]: effective access (nested groups, roles) with the path that grants it, and
//!   the cycles of a group hierarchy; pure.
//! - [`directory`]: one stored run's directory, with the settings that run recorded, and the
//!   run in force at a time.
//! - [`rows`]: the rows of an access review, their flags, and the digest that names it.
//! - [`file`]: a review as a sheet (CSV, XLSX, HTML, JSON), and a completed one checked
//!   against the review built again and read back as decisions.
//! - [`status`]: the revocations of imported reviews, carried out or pending.
pub mod access;
pub mod directory;
pub mod file;
pub mod rows;
pub mod status;

use crate::ledger::LedgerError;
use crate::store::{RunRecord, StoreError};

/// Why a run's directory could not be read for a review or a query.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("run {run_id}: a stored {kind} ({external_id}) does not read back: {reason}")]
    Unreadable {
        run_id: String,
        kind: &'static str,
        external_id: String,
        reason: String,
    },
}

impl ReadError {
    /// A stored record of `run` that does not parse as its kind.
    pub fn unreadable(
        run: &RunRecord,
        kind: &'static str,
        external_id: &str,
        error: serde_json::Error,
    ) -> ReadError {
        ReadError::Unreadable {
            run_id: run.run_id.clone(),
            kind,
            external_id: external_id.to_string(),
            reason: error.to_string(),
        }
    }
}
