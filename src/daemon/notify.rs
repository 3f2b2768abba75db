//! systemd's notification protocol (sd_notify(3)): READY=1 once the configuration is valid
//! and the store opens, a one-line STATUS= whenever it changes, WATCHDOG=1 pings when the
//! unit has `WatchdogSec=`, and RELOADING=1 / STOPPING=1 around a reload and the stop.
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;

pub struct Notifier {
    watchdog: Option<Duration>,
    last_status: Mutex<String>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            watchdog: sd_notify::watchdog_enabled(),
            last_status: Mutex::new(String::new()),
        }
    }

    pub fn ready(&self, status: &str) {
        self.remember(status);
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Sends STATUS= when it differs from the last one sent.
    pub fn status(&self, status: &str) {
        if self.remember(status) {
            send(&[NotifyState::Status(status)]);
        }
    }

    /// systemd ≥ 253 (`Type=notify-reload`) wants the monotonic time with RELOADING=1.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// Whether `status` is new.
    fn remember(&self, status: &str) -> bool {
        let mut last = self
            .last_status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == status {
            return false;
        }
        *last = status.to_string();
        true
    }
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!("cannot notify systemd: {error}");
    }
}
