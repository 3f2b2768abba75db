//! The daemon's webhook delivery loop: after every complete run with envelopes, and on its
//! own, it delivers the outbox with [`deliver_repairing`] (oldest run first, batch by batch).
//! While the receiver fails, passes back off 1, 2, 4 … seconds up to half a minute, so a
//! receiver that comes back is caught up within a minute, without waiting for a sync. A pass
//! that a stop cuts short may leave a batch sent but not recorded as acknowledged; it is sent
//! again on the next pass, with the same `Idempotency-Key`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::status::StatusBoard;
use crate::clock::Clock;
use crate::config::Config;
use crate::output::repair::deliver_repairing;
use crate::store::Store;

/// How often the loop looks for undelivered runs when nothing wakes it, e.g. runs a manual
/// sync could not deliver.
const IDLE_PASS: Duration = Duration::from_secs(60);
/// The longest wait between two passes while the receiver fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Outbox {
    pub config: watch::Receiver<Arc<Config>>,
    pub store: Arc<Store>,
    pub clock: Arc<dyn Clock>,
    pub board: Arc<StatusBoard>,
    /// Notified when a run leaves envelopes to deliver.
    pub wake: Arc<Notify>,
    pub cancel: CancellationToken,
}

impl Outbox {
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(self) {
        let mut failures = 0u32;
        loop {
            let wait = backoff(failures);
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            let config = self.config.borrow().clone();
            let Some(webhook) = &config.output.webhook else {
                failures = 0;
                continue;
            };
            let pass = tokio::select! {
                () = self.cancel.cancelled() => return,
                pass = deliver_repairing(&config, &self.store, webhook, &*self.clock) => pass,
            };
            let delivered_any = match pass {
                Ok(report) => {
                    if !report.runs_delivered.is_empty() {
                        tracing::info!(
                            runs = report.runs_delivered.len(),
                            batches = report.batches_sent,
                            "webhook delivery caught up"
                        );
                    }
                    match &report.stopped {
                        None => failures = 0,
                        Some(reason) => {
                            failures = failures.saturating_add(1);
                            tracing::warn!(
                                retry_in_secs = backoff(failures).as_secs(),
                                "webhook delivery paused: {reason}"
                            );
                        }
                    }
                    report.batches_sent > 0 || report.stopped.is_some()
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::error!(
                        retry_in_secs = backoff(failures).as_secs(),
                        "webhook delivery failed: {error}"
                    );
                    false
                }
            };
            if delivered_any {
                self.refresh_backlog().await;
            }
        }
    }

    async fn refresh_backlog(&self) {
        let (store, board) = (Arc::clone(&self.store), Arc::clone(&self.board));
        let refreshed =
            tokio::task::spawn_blocking(move || board.refresh(&store, &board.names())).await;
        if let Ok(Err(error)) = refreshed {
            tracing::warn!("cannot read the outbox backlog: {error}");
        }
    }
}

/// The wait before the next pass: the idle interval while all is well, else 1, 2, 4 …
/// seconds up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => IDLE_PASS,
        failures => Duration::from_secs(1 << (failures - 1).min(8)).min(MAX_BACKOFF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_receiver_is_retried_at_least_every_half_minute() {
        let waits: Vec<u64> = (1..=8)
            .map(|failures| backoff(failures).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(0), IDLE_PASS);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
