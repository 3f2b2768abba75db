//! `aksync approve` and `aksync reject`: an admin's decision on a quarantined run. Approved,
//! the run's held writes are stored as its own, it becomes the source's latest complete run,
//! its reports are written and its envelopes delivered; rejected, it stays in the history as
//! quarantined and is never compared with. Either way the decision, its time and the OS user
//! go into the run's record and the evidence ledger, in one transaction.

use std::sync::Arc;

use super::output::print_line;
use super::{deliver_outbox, resolve_run, single_source, CliError, Exit};
use crate::clock::Clock;
use crate::config::Config;
use crate::ledger::entry::{Body, RunDecision};
use crate::ledger::Pending;
use crate::output::report::Producer;
use crate::run::run_lock::{source_lock_path, RunLock};
use crate::run::runner::{no_progress, write_run_reports, RunContext};
use crate::run::sync::STORE_WAIT;
use crate::store::{Decision, DecisionError, QuarantineDecision, Store};

pub(super) async fn decide(
    config: &Config,
    source: Option<&str>,
    run: &str,
    decision: Decision,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let source = single_source(config, source)?;
    // Not while the source syncs: the run's writes apply on top of its latest complete run.
    let lock = RunLock::acquire(&source_lock_path(&config.state_dir, &source.name), |_| {
        eprintln!(
            "aksync: waiting for the running sync of source `{}`…",
            source.name
        );
    })
    .await
    .map_err(|error| CliError::Runtime(error.to_string()))?;
    let store = Arc::new(Store::open(&config.database_path(), STORE_WAIT)?);
    let record = resolve_run(&store, &source.name, run)?;
    let by = Producer::current();
    let taken = QuarantineDecision {
        decision,
        at: clock.now(),
        by: format!("{}@{}", by.os_user, by.host),
    };
    let body = Body::Decided(RunDecision {
        run_id: record.run_id.clone(),
        decision,
        reasons: record
            .quarantine
            .as_ref()
            .map(|quarantine| quarantine.reasons.clone())
            .unwrap_or_default(),
        by,
    });
    let mut pending = Pending::new(
        &source.name,
        taken.at,
        body,
        config.ledger.signing_key.as_deref(),
    );
    let decided = store
        .decide_quarantined(
            &record.run_id,
            taken,
            config.output.webhook.is_some(),
            &mut pending,
        )
        .map_err(|error| match error {
            DecisionError::Store(error) => CliError::Store(error),
            refused => CliError::Runtime(refused.to_string()),
        })?;
    match decision {
        Decision::Approved => {
            let cancel = tokio_util::sync::CancellationToken::new();
            let context = RunContext {
                config,
                store: &store,
                clock,
                progress: &no_progress,
                cancel: &cancel,
            };
            write_run_reports(&context, source, &decided).await;
            drop(lock);
            print_line(&format!(
                "{}: run {} approved: it is the source's latest complete run, its {} envelope(s) are released and the next run is compared with it",
                source.name,
                decided.run_id,
                decided.envelopes.as_ref().map_or(0, |summary| summary.lines)
            ))?;
            if config.output.webhook.is_some() {
                deliver_outbox(config, &store, clock).await?;
            }
        }
        Decision::Rejected => {
            drop(lock);
            print_line(&format!(
                "{}: run {} rejected: it stays in the history as quarantined, nothing of it is delivered, and runs are compared with run {}",
                source.name,
                decided.run_id,
                decided.previous_run.as_deref().unwrap_or("none")
            ))?;
        }
    }
    Ok(Exit::Success)
}
