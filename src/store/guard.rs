//! redb may panic on a damaged file (its debug builds do on purpose). A damaged file is bad
//! input, so such a panic becomes a "corrupt database" error instead of a crash. Only calls
//! into redb are guarded: a panic in aksync's own code is a bug and stays one, and is never
//! reported as corruption (whose advice, "move the file aside", would be destructive).
//!
//! After a caught panic the handle is marked broken and refuses further work: redb's state
//! inside it can no longer be trusted.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Failure;

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside a guarded redb call; the binary's panic hook stays
/// quiet for those, because they become errors.
pub fn in_guarded_operation() -> bool {
    GUARDED.with(|flag| flag.get())
}

/// Shared by a store handle and the iterators it hands out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    broken: Arc<AtomicBool>,
}

impl Guard {
    /// Runs one redb call; a panic inside it becomes [`Failure::Corrupt`] and breaks the handle.
    pub(crate) fn call<T, E: Into<Failure>>(
        &self,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, Failure> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Failure::Broken);
        }
        let previous = GUARDED.with(|flag| flag.replace(true));
        let result = catch_unwind(AssertUnwindSafe(call));
        GUARDED.with(|flag| flag.set(previous));
        match result {
            Ok(result) => result.map_err(Into::into),
            Err(panic) => {
                self.broken.store(true, Ordering::Release);
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "redb panicked".to_string());
                Err(Failure::Corrupt(
                    message.lines().next().unwrap_or("").to_string(),
                ))
            }
        }
    }
}
