//! What leaves a run: its envelope file ([`envelope`], written while the run is planned),
//! the audit reports read from the ledger ([`report`]), the files a run leaves under the
//! state directory ([`artifacts`]), their repair after a crash ([`repair`]), their
//! retention ([`retention`]) and webhook delivery of the envelopes ([`delivery`]); and a
//! run's whole snapshot as envelopes, on request ([`snapshot`]). Access reviews travel as
//! one table in CSV, XLSX, HTML and JSON ([`sheet`]).

pub mod artifacts;
pub mod delivery;
pub mod envelope;
pub mod repair;
pub mod report;
pub mod retention;
pub mod sheet;
pub mod snapshot;
