//! Counters of what aksync asks of other servers: Authentik requests, their retries and the
//! requests that failed for good (per source), and webhook batches by outcome. They are
//! process-wide, so that the library counts without being told where to, `aksync sync` and
//! `check` just as the daemon; only the daemon shows them, on `/metrics`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

impl SourceLabel {
    pub fn new(source: &str) -> SourceLabel {
        SourceLabel {
            source: source.to_string(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// How a webhook batch ended, after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The receiver acknowledged it.
    Delivered,
    /// The receiver or the network failed; the batch is sent again later.
    Failed,
    /// The receiver refused the batch itself (a 4xx such as 413).
    Rejected,
}

impl BatchOutcome {
    pub const ALL: [BatchOutcome; 3] = [
        BatchOutcome::Delivered,
        BatchOutcome::Failed,
        BatchOutcome::Rejected,
    ];

    pub fn label(self) -> OutcomeLabel {
        let outcome = match self {
            BatchOutcome::Delivered => "delivered",
            BatchOutcome::Failed => "failed",
            BatchOutcome::Rejected => "rejected",
        };
        OutcomeLabel {
            outcome: outcome.to_string(),
        }
    }
}

/// The counters; [`telemetry`] gives the process's one set.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// HTTP requests sent to Authentik, every attempt counted.
    pub authentik_requests: Family<SourceLabel, Counter>,
    /// Attempts sent again after a transient failure.
    pub authentik_retries: Family<SourceLabel, Counter>,
    /// Requests that failed for good, after their retries.
    pub authentik_errors: Family<SourceLabel, Counter>,
    pub webhook_batches: Family<OutcomeLabel, Counter>,
}

impl Telemetry {
    pub fn authentik_request(&self, source: &str) {
        self.authentik_requests
            .get_or_create(&SourceLabel::new(source))
            .inc();
    }

    pub fn authentik_retry(&self, source: &str) {
        self.authentik_retries
            .get_or_create(&SourceLabel::new(source))
            .inc();
    }

    pub fn authentik_error(&self, source: &str) {
        self.authentik_errors
            .get_or_create(&SourceLabel::new(source))
            .inc();
    }

    pub fn webhook_batch(&self, outcome: BatchOutcome) {
        self.webhook_batches.get_or_create(&outcome.label()).inc();
    }
}

static TELEMETRY: LazyLock<Telemetry> = LazyLock::new(Telemetry::default);

pub fn telemetry() -> &'static Telemetry {
    &TELEMETRY
}
