//! Webhook delivery of envelopes. Runs are delivered oldest first and batch by batch; each
//! acknowledged batch is recorded, so an endpoint that is down only delays delivery: the next
//! sync resumes where it stopped, and nothing is sent out of order or, once acknowledged,
//! twice. Each batch carries an `Idempotency-Key` of run id and batch number. One process
//! delivers at a time (the outbox lock), so a daemon and a manual sync never send the same
//! batch side by side.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::json;

use crate::artifacts::{read_envelopes, rebuild_envelopes};
use crate::authentik::RetryPolicy;
use crate::clock::Clock;
use crate::config::{Config, WebhookConfig};
use crate::run_lock::{outbox_lock_path, LockError, RunLock, TryLock};
use crate::store::{DeliveryStatus, RunRecord, Store, StoreError};

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
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// What one delivery pass did.
#[derive(Debug, Default)]
pub struct DeliveryReport {
    pub runs_delivered: Vec<String>,
    pub batches_sent: u64,
    /// Why delivery stopped early; the remaining runs stay pending.
    pub stopped: Option<String>,
}

pub async fn deliver_pending(
    config: &Config,
    store: &Store,
    webhook: &WebhookConfig,
    clock: &dyn Clock,
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
    let mut pending: Vec<RunRecord> = store
        .runs(None)?
        .into_iter()
        .filter(|run| {
            run.delivery
                .as_ref()
                .is_some_and(|delivery| delivery.status == DeliveryStatus::Pending)
        })
        .collect();
    pending.reverse();
    let http = reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| DeliveryError::Client(error.to_string()))?;
    let mut report = DeliveryReport::default();
    for run in pending {
        if let Err(reason) =
            deliver_run(config, webhook, &http, store, &run, clock, &mut report).await
        {
            store.update_run(&run.run_id, |record| {
                if let Some(delivery) = record.delivery.as_mut() {
                    delivery.attempts += 1;
                    delivery.last_error = Some(reason.clone());
                }
                Ok(())
            })?;
            tracing::warn!(run = %run.run_id, "webhook delivery stopped: {reason}");
            report.stopped = Some(format!("run {}: {reason}", run.run_id));
            break;
        }
        report.runs_delivered.push(run.run_id.clone());
    }
    Ok(report)
}

async fn deliver_run(
    config: &Config,
    webhook: &WebhookConfig,
    http: &reqwest::Client,
    store: &Store,
    run: &RunRecord,
    clock: &dyn Clock,
    report: &mut DeliveryReport,
) -> Result<(), String> {
    let envelopes = match read_envelopes(&config.state_dir, run) {
        Ok(envelopes) => envelopes,
        Err(error) => {
            // The outbox file can always be rebuilt from the store.
            let source = config.sources.get(&run.source).ok_or_else(|| {
                format!("{error}; source `{}` is no longer configured", run.source)
            })?;
            rebuild_envelopes(&config.state_dir, store, source, run)
                .map_err(|error| error.to_string())?;
            read_envelopes(&config.state_dir, run).map_err(|error| error.to_string())?
        }
    };
    let mut state = run
        .delivery
        .clone()
        .unwrap_or_else(crate::store::DeliveryState::pending);
    if state.batch_size == 0 {
        state.batch_size = webhook.batch_size as u64;
    }
    let batches: Vec<_> = envelopes.chunks(state.batch_size as usize).collect();
    state.batches_total = batches.len() as u64;
    for (index, batch) in batches
        .iter()
        .enumerate()
        .skip(state.batches_delivered as usize)
    {
        let number = index as u64 + 1;
        let body = json!({
            "source": run.source,
            "run_id": run.run_id,
            "batch": number,
            "batches": state.batches_total,
            "envelopes": batch,
        });
        post_with_retries(webhook, http, &format!("{}-{number}", run.run_id), &body).await?;
        report.batches_sent += 1;
        state.batches_delivered = number;
        let progress = state.clone();
        store
            .update_run(&run.run_id, |record| {
                record.delivery = Some(progress);
                Ok(())
            })
            .map_err(|error| error.to_string())?;
    }
    state.status = DeliveryStatus::Delivered;
    state.last_error = None;
    state.delivered_at = Some(clock.now());
    store
        .update_run(&run.run_id, |record| {
            record.delivery = Some(state);
            Ok(())
        })
        .map_err(|error| error.to_string())?;
    Ok(())
}

async fn post_with_retries(
    webhook: &WebhookConfig,
    http: &reqwest::Client,
    idempotency_key: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = http
            .post(webhook.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        if let Some(token) = &webhook.token {
            request = request.header(AUTHORIZATION, token.bearer_header());
        }
        let (retryable, error) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                (
                    status.is_server_error() || status.as_u16() == 429,
                    format!("{} answered HTTP {}", webhook.url, status.as_u16()),
                )
            }
            Err(error) => (true, format!("cannot reach {}: {error}", webhook.url)),
        };
        if !retryable || attempt >= RETRY.attempts {
            return Err(error);
        }
        tokio::time::sleep(RETRY.delay(attempt, None)).await;
    }
}
