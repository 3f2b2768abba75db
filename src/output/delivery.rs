//! Webhook delivery of envelopes. Runs are delivered oldest first and batch by batch; each
//! acknowledged batch is recorded, and the record only ever moves forward, so an endpoint that
//! is down only delays delivery: the next pass resumes where it stopped, and nothing is sent
//! out of order or, once acknowledged, twice. Each batch carries an `Idempotency-Key` naming
//! its run and its range of envelopes. One process delivers at a time (the outbox lock), so a
//! daemon and a manual sync never send the same batch side by side.
//!
//! A receiver that keeps rejecting a batch outright (a 4xx such as 413) gets the run parked
//! after [`PARK_AFTER`] passes, so that later runs still go; `aksync deliver --retry RUN`
//! (with a smaller `batch_size`, say) or `--skip RUN` decides. `Retry-After` is honoured.
//!
//! Delivery reads envelope files and the store, and never replays a run: a run whose
//! envelope file is gone or does not match stops the pass until the repair step has tried to
//! rebuild it ([`crate::output::repair::deliver_repairing`] makes the passes), and one that
//! cannot be rebuilt (retention pruned what it was made from) is parked at once, with the
//! repair's reason: waiting cannot bring it back.
//!
//! A pass reads each source's undelivered runs only (see [`Store::undelivered_runs`]), and a
//! run's envelope file a batch at a time, so its memory is one batch whatever the backlog.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::json;

use crate::authentik::client::{error_chain, parse_retry_after};
use crate::authentik::RetryPolicy;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, WebhookConfig};
use crate::output::artifacts::{open_envelopes, ArtifactError, EnvelopeBatches};
use crate::run::run_lock::{outbox_lock_path, LockError, RunLock, TryLock};
use crate::store::{DeliveryState, DeliveryStatus, RunRecord, Store, StoreError};
use crate::telemetry::{telemetry, BatchOutcome};

const RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    base_delay: Duration::from_millis(300),
    max_delay: Duration::from_secs(5),
    max_retry_after: Duration::from_secs(30),
};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the webhook client: {0}")]
    Client(String),
    /// The webhook's token file could not be read; the reason names the key and the file.
    #[error("{0}")]
    Token(String),
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// How many passes in a row a receiver may reject a run's next batch outright before the
/// run is parked, so that later runs are not held up behind it forever.
pub const PARK_AFTER: u64 = 3;

/// What one delivery pass did.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    pub runs_delivered: Vec<String>,
    pub batches_sent: u64,
    /// Runs parked in this pass, each with why in a few words: the receiver kept rejecting
    /// it, or its envelope file cannot be read or rebuilt.
    pub runs_parked: Vec<(String, String)>,
    /// Why delivery stopped early; the remaining runs stay pending.
    pub stopped: Option<String>,
    /// The run whose envelope file could not be opened and that the repair step has not
    /// tried to rebuild yet: the pass stopped before it, leaving its delivery state as it was.
    pub needs_repair: Option<RunRecord>,
}

/// What the repair step made of a run's envelope file that delivery could not open.
#[derive(Debug, Clone)]
pub enum Repair {
    /// Rebuilt from the store.
    Rebuilt,
    /// Not rebuilt, and why; `permanent` when waiting cannot bring it back.
    Failed { reason: String, permanent: bool },
}

/// The repair step's outcomes in one delivery, by run id.
pub type Repairs = BTreeMap<String, Repair>;

/// Why a run's delivery did not finish.
enum Stop {
    /// The receiver or the network failed; the run stays pending and later runs wait, so
    /// that nothing arrives out of order.
    Transient(String),
    /// The receiver refused the batch itself (a 4xx such as 413).
    Rejected(String),
    /// The run's envelope file is gone or wrong and cannot be rebuilt from the store.
    Unrebuildable(String),
    /// The run's envelope file is gone or wrong, and the repair step has not tried it yet.
    NeedsRepair,
}

/// One delivery pass over the outbox, oldest run first. `repairs` says what the repair step
/// made of envelope files an earlier pass could not open; a pass that meets another such
/// file stops there and names the run in [`DeliveryReport::needs_repair`].
pub async fn deliver_pending(
    config: &Config,
    store: &Store,
    webhook: &WebhookConfig,
    clock: &dyn Clock,
    repairs: &Repairs,
) -> Result<DeliveryReport, DeliveryError> {
    let _lock = match RunLock::try_acquire(&outbox_lock_path(&config.state_dir))? {
        TryLock::Acquired(lock) => lock,
        TryLock::Held { holder } => {
            let pid = holder
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Ok(DeliveryReport {
                stopped: Some(format!(
                    "another aksync process{pid} is delivering the outbox"
                )),
                ..DeliveryReport::default()
            });
        }
    };
    // Each source's undelivered runs (read from its outbox mark on), oldest first overall.
    let mut pending: Vec<RunRecord> = Vec::new();
    for source in store.sources_with_runs()? {
        pending.extend(store.undelivered_runs(&source)?);
    }
    pending.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    let http = reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(authorization(webhook)?)
        .build()
        .map_err(|error| DeliveryError::Client(error.to_string()))?;
    let pass = Pass {
        config,
        webhook,
        http,
        store,
        repairs,
    };
    let mut report = DeliveryReport::default();
    for run in pending {
        let stop = match deliver_run(&pass, &run, clock, &mut report).await {
            Ok(()) => {
                report.runs_delivered.push(run.run_id.clone());
                continue;
            }
            Err(stop) => stop,
        };
        let (reason, rejected, lost) = match stop {
            Stop::Transient(reason) => (reason, false, false),
            Stop::Rejected(reason) => (reason, true, false),
            Stop::Unrebuildable(reason) => (reason, false, true),
            Stop::NeedsRepair => {
                report.needs_repair = Some(run);
                break;
            }
        };
        let parked = store.update_run(&run.run_id, |record| {
            let Some(delivery) = record.delivery.as_mut() else {
                return Ok(false);
            };
            delivery.attempts += 1;
            delivery.last_error = Some(reason.clone());
            delivery.rejections = if rejected { delivery.rejections + 1 } else { 0 };
            let park = delivery.status == DeliveryStatus::Pending
                && (lost || delivery.rejections >= PARK_AFTER);
            if park {
                delivery.status = DeliveryStatus::Parked;
            }
            Ok(park)
        })?;
        if parked {
            let why = match lost {
                true => "its envelope file cannot be read or rebuilt".to_string(),
                false => format!("the receiver rejected it {PARK_AFTER} times"),
            };
            tracing::warn!(run = %run.run_id, "webhook delivery parked ({why}): {reason}; decide with `aksync deliver --retry {}` or `--skip {}`", run.run_id, run.run_id);
            report.runs_parked.push((run.run_id.clone(), why));
            continue;
        }
        tracing::warn!(run = %run.run_id, "webhook delivery stopped: {reason}");
        report.stopped = Some(format!("run {}: {reason}", run.run_id));
        break;
    }
    Ok(report)
}

/// What every run of one pass is delivered with.
struct Pass<'a> {
    config: &'a Config,
    webhook: &'a WebhookConfig,
    http: reqwest::Client,
    store: &'a Store,
    repairs: &'a Repairs,
}

async fn deliver_run(
    pass: &Pass<'_>,
    run: &RunRecord,
    clock: &dyn Clock,
    report: &mut DeliveryReport,
) -> Result<(), Stop> {
    let (webhook, store) = (pass.webhook, pass.store);
    let mut envelopes = outbox_file(pass.config, run, pass.repairs)?;
    let mut state = run
        .delivery
        .clone()
        .unwrap_or_else(crate::store::DeliveryState::pending);
    if state.batch_size == 0 {
        state.batch_size = webhook.batch_size as u64;
    }
    let lines = run.envelopes.as_ref().map_or(0, |summary| summary.lines);
    let offset = state.progress().min(lines);
    let size = state.batch_size.max(1);
    state.batches_total = state.batches_delivered + (lines - offset).div_ceil(size);
    envelopes.skip(offset).map_err(unreadable)?;
    let mut first = offset;
    loop {
        let batch = envelopes.next_batch(size as usize).map_err(unreadable)?;
        if batch.is_empty() {
            break;
        }
        let number = state.batches_delivered + 1;
        let body = json!({
            "source": run.source,
            "run_id": run.run_id,
            "batch": number,
            "batches": state.batches_total,
            "first": first,
            "envelopes": batch,
        });
        drop(batch);
        let count = body["envelopes"].as_array().map_or(0, Vec::len) as u64;
        // The envelopes' range names the batch, whatever batch size sent it.
        let key = format!("{}-{first}+{count}", run.run_id);
        let posted = post_with_retries(webhook, &pass.http, &key, &body).await;
        telemetry().webhook_batch(match &posted {
            Ok(()) => BatchOutcome::Delivered,
            Err(Stop::Transient(_) | Stop::Unrebuildable(_) | Stop::NeedsRepair) => {
                BatchOutcome::Failed
            }
            Err(Stop::Rejected(_)) => BatchOutcome::Rejected,
        });
        posted?;
        report.batches_sent += 1;
        first += count;
        state.batches_delivered = number;
        state.envelopes_delivered = Some(first);
        state.rejections = 0;
        advance(store, run, &state)?;
    }
    state.status = DeliveryStatus::Delivered;
    state.last_error = None;
    state.delivered_at = Some(clock.now());
    advance(store, run, &state)
}

/// A run's envelope file that stopped reading midway: it changed after it was checked.
fn unreadable(error: ArtifactError) -> Stop {
    Stop::Transient(error.to_string())
}

/// A run's envelope file, opened for delivery and checked against the run. One that is
/// missing or does not match is the repair step's to rebuild: until it has tried, the pass
/// stops at the run. One it cannot rebuild (its snapshot or the one it was compared with is
/// gone, the settings that shape envelopes changed, its source is no longer configured)
/// never will be by waiting, so the run is parked and later runs go.
fn outbox_file(
    config: &Config,
    run: &RunRecord,
    repairs: &Repairs,
) -> Result<EnvelopeBatches, Stop> {
    let error = match open_envelopes(&config.state_dir, run) {
        Ok(file) => return Ok(file),
        Err(error) => error,
    };
    Err(match repairs.get(&run.run_id) {
        None => Stop::NeedsRepair,
        Some(Repair::Rebuilt) => Stop::Transient(error.to_string()),
        Some(Repair::Failed {
            reason,
            permanent: true,
        }) => Stop::Unrebuildable(format!("{error}; {reason}")),
        Some(Repair::Failed {
            reason,
            permanent: false,
        }) => Stop::Transient(format!("{error}; {reason}")),
    })
}

/// Records delivery progress, only ever forward: a state another process moved further is
/// never lowered.
fn advance(store: &Store, run: &RunRecord, next: &DeliveryState) -> Result<(), Stop> {
    store
        .update_run(&run.run_id, |record| {
            let current = record
                .delivery
                .clone()
                .unwrap_or_else(DeliveryState::pending);
            if !current.advances_to(next) {
                return Err(format!(
                    "its delivery state moved on meanwhile ({} of its envelopes delivered, {})",
                    current.progress(),
                    current.status.as_str()
                ));
            }
            record.delivery = Some(next.clone());
            Ok(())
        })
        .map_err(|error| Stop::Transient(error.to_string()))
}

/// Puts a parked or skipped run back in the queue, batched with the configured size from
/// where it stopped.
pub fn retry(store: &Store, run_id: &str, batch_size: usize) -> Result<RunRecord, StoreError> {
    store.update_run(run_id, |record| {
        let delivery = delivery_in(
            record,
            &[DeliveryStatus::Parked, DeliveryStatus::Skipped],
            "parked or skipped",
        )?;
        delivery.envelopes_delivered = Some(delivery.progress());
        delivery.status = DeliveryStatus::Pending;
        delivery.rejections = 0;
        delivery.batch_size = batch_size as u64;
        delivery.batches_delivered = 0;
        delivery.batches_total = 0;
        Ok(())
    })?;
    store.run(run_id)
}

/// Gives up a run's delivery: its envelopes are not sent, and later runs go on.
pub fn skip(store: &Store, run_id: &str) -> Result<RunRecord, StoreError> {
    store.update_run(run_id, |record| {
        let delivery = delivery_in(
            record,
            &[DeliveryStatus::Pending, DeliveryStatus::Parked],
            "pending or parked",
        )?;
        delivery.status = DeliveryStatus::Skipped;
        Ok(())
    })?;
    store.run(run_id)
}

/// A run's delivery state, if it is in one of `allowed` (named `allowed_text` in the error):
/// what an admin's `--retry` or `--skip` may change.
fn delivery_in<'r>(
    record: &'r mut RunRecord,
    allowed: &[DeliveryStatus],
    allowed_text: &str,
) -> Result<&'r mut DeliveryState, String> {
    let run_id = &record.run_id;
    let delivery = record
        .delivery
        .as_mut()
        .ok_or_else(|| format!("run {run_id} has no envelopes to deliver"))?;
    if !allowed.contains(&delivery.status) {
        return Err(format!(
            "run {run_id} is {}, not {allowed_text}",
            delivery.status.as_str()
        ));
    }
    Ok(delivery)
}

/// The webhook's `Authorization` header, if it has a token: read from its file for each
/// delivery pass, so that a rotated token needs no restart.
fn authorization(webhook: &WebhookConfig) -> Result<HeaderMap, DeliveryError> {
    let mut headers = HeaderMap::new();
    if let Some(token) = &webhook.token {
        let token = token.read().map_err(DeliveryError::Token)?;
        // A checked token is visible ASCII, which a header value always takes.
        let mut value = HeaderValue::from_str(&token.bearer_header())
            .map_err(|error| DeliveryError::Client(error.to_string()))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

async fn post_with_retries(
    webhook: &WebhookConfig,
    http: &reqwest::Client,
    idempotency_key: &str,
    body: &serde_json::Value,
) -> Result<(), Stop> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let request = http
            .post(webhook.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        let (stop, retry_after) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    // The wall clock, not the pass's: the wait that follows is real time.
                    .and_then(|value| {
                        parse_retry_after(value, SystemTime::from(SystemClock.now()))
                    });
                let message = format!("{} answered HTTP {status}", webhook.shown_url());
                // A timeout, a rate limit or "too early" are the receiver's state; any other
                // 4xx is about the batch itself, and sending it again changes nothing.
                let rejected = (400..500).contains(&status) && ![408, 425, 429].contains(&status);
                if rejected {
                    return Err(Stop::Rejected(message));
                }
                (Stop::Transient(message), retry_after)
            }
            Err(error) => (
                Stop::Transient(format!(
                    "cannot reach {}: {}",
                    webhook.shown_url(),
                    error_chain(&error.without_url())
                )),
                None,
            ),
        };
        if attempt >= RETRY.attempts {
            return Err(stop);
        }
        tokio::time::sleep(RETRY.delay(attempt, retry_after)).await;
    }
}
