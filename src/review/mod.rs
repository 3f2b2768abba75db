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
