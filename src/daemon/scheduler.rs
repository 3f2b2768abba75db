//! When each source runs next, on tokio-cron-scheduler's timer.
//!
//! Each source has one armed one-shot job at its next scheduled run, computed by
//! [`Schedule`] (croner), plus at most one earlier retry after a failed run. A firing job
//! sends a [`Tick`] to the daemon, which starts the run and arms the next one. The crate's
//! own cron jobs are not used: after their first run they evaluate the expression at the
//! UTC offset the job was created with (a daylight-saving change moves every later run by an
//! hour), they require the seconds field, and they require both day-of-month and day-of-week
//! to match where cron needs either. Computing each run with croner keeps `aksync check`, the
//! status page and the actual runs in agreement.
//!
//! [`Schedule`]: crate::config::schedule::Schedule
//!
//! The crate fires jobs at whole-second resolution, possibly a little early; a tick carries
//! the time it stands for, and the run waits for that time.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::UnboundedSender;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use uuid::Uuid;

use crate::clock::Clock;

/// A job that fired: the run of `source` due at `at`.
#[derive(Debug, Clone)]
pub struct Tick {
    pub source: String,
    pub job: Uuid,
    pub at: DateTime<Utc>,
}

/// An armed job, to recognise its tick or to disarm it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Armed {
    pub job: Uuid,
    pub at: DateTime<Utc>,
}

pub struct Scheduler {
    jobs: JobScheduler,
    ticks: UnboundedSender<Tick>,
}

#[derive(Debug, thiserror::Error)]
#[error("the scheduler failed: {0}")]
pub struct SchedulerError(String);

impl From<JobSchedulerError> for SchedulerError {
    fn from(error: JobSchedulerError) -> SchedulerError {
        SchedulerError(format!("{error:?}"))
    }
}

impl Scheduler {
    pub async fn start(ticks: UnboundedSender<Tick>) -> Result<Scheduler, SchedulerError> {
        let jobs = JobScheduler::new().await?;
        jobs.start().await?;
        Ok(Scheduler { jobs, ticks })
    }

    /// Arms a job that sends a tick for `source` at `at` (at once if `at` has passed).
    pub async fn arm(
        &self,
        source: &str,
        at: DateTime<Utc>,
        clock: &dyn Clock,
    ) -> Result<Armed, SchedulerError> {
        let wait = (at - clock.now()).to_std().unwrap_or(Duration::ZERO);
        let ticks = self.ticks.clone();
        let source = source.to_string();
        let job = Job::new_one_shot_at_instant_async(Instant::now() + wait, move |job, _| {
            let tick = Tick {
                source: source.clone(),
                job,
                at,
            };
            let ticks = ticks.clone();
            Box::pin(async move {
                // Only fails once the daemon has stopped listening, when ticks no longer matter.
                let _ = ticks.send(tick);
            })
        })?;
        let job = self.jobs.add(job).await?;
        Ok(Armed { job, at })
    }

    pub async fn disarm(&self, armed: Armed) {
        // A job that already fired is gone; that is fine.
        let _ = self.jobs.remove(&armed.job).await;
    }

    pub async fn shutdown(mut self) {
        if let Err(error) = self.jobs.shutdown().await {
            tracing::debug!("scheduler shutdown: {error:?}");
        }
    }
}

/// How long to wait before retrying after `failures` failed runs in a row: 1, 2, 4 … minutes
/// for a schedule of half an hour or more, shorter for shorter schedules (an eighth of the
/// interval, at least a second). `None` when the wait would reach the schedule's interval:
/// the next scheduled run comes first anyway.
pub fn retry_delay(failures: u32, interval: Duration) -> Option<Duration> {
    if failures == 0 {
        return None;
    }
    let base = (interval / 8).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let delay = base.saturating_mul(1 << (failures - 1).min(20));
    (delay < interval).then_some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_below_the_interval() {
        let half_hour = Duration::from_secs(1800);
        let delays: Vec<_> = (1..=6)
            .map(|failures| retry_delay(failures, half_hour).map(|delay| delay.as_secs() / 60))
            .collect();
        assert_eq!(
            delays,
            vec![Some(1), Some(2), Some(4), Some(8), Some(16), None]
        );
        assert_eq!(retry_delay(0, half_hour), None);
        assert_eq!(retry_delay(100, half_hour), None);
        let two_minutes = Duration::from_secs(120);
        assert_eq!(retry_delay(1, two_minutes), Some(Duration::from_secs(15)));
        assert_eq!(retry_delay(3, two_minutes), Some(Duration::from_secs(60)));
        assert_eq!(retry_delay(4, two_minutes), None);
        let ten_seconds = Duration::from_secs(10);
        assert_eq!(
            retry_delay(1, ten_seconds),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(
            retry_delay(1, Duration::from_secs(2)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(retry_delay(1, Duration::from_secs(1)), None);
    }
}
