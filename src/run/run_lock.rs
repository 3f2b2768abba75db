//! Locks that hold across processes: one per source, so that two runs of a source never
//! overlap whether the daemon's schedule or an admin's `aksync sync` started them, and one for
//! webhook delivery, so that a batch is never sent by two processes at once.
//!
//! A lock is an advisory lock (`flock`) on a file under `<state_dir>/locks/`; the kernel
//! releases it when its holder exits, however it exits. The holder writes its pid into the
//! file so that whoever waits can say for whom. A symbolic link planted in place of a lock
//! file is not followed (see [`crate::config::state_dir`]).

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::config::state_dir::create_private_dir;

#[derive(Debug, thiserror::Error)]
#[error("cannot lock {path}: {reason}; check that state_dir is writable by this user")]
pub struct LockError {
    pub path: PathBuf,
    pub reason: String,
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// The outcome of [`RunLock::try_acquire`].
#[derive(Debug)]
pub enum TryLock {
    Acquired(RunLock),
    /// Another holder has it; its pid when it wrote one.
    Held {
        holder: Option<u32>,
    },
}

/// The lock of one source's runs.
pub fn source_lock_path(state_dir: &Path, source: &str) -> PathBuf {
    state_dir
        .join("locks")
        .join(format!("source-{source}.lock"))
}

/// The lock of webhook delivery.
pub fn outbox_lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("locks").join("outbox.lock")
}

impl RunLock {
    /// Takes the lock if it is free, without waiting.
    pub fn try_acquire(path: &Path) -> Result<TryLock, LockError> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(TryLock::Acquired(RunLock::claim(file, path)?)),
            Err(TryLockError::WouldBlock) => Ok(TryLock::Held {
                holder: holder_pid(file),
            }),
            Err(TryLockError::Error(error)) => Err(lock_error(path, error)),
        }
    }

    /// Takes the lock, waiting for the holder to release it; `on_wait` hears once who holds it
    /// before the wait begins.
    pub async fn acquire(
        path: &Path,
        on_wait: impl FnOnce(Option<u32>),
    ) -> Result<RunLock, LockError> {
        if let TryLock::Acquired(lock) = RunLock::try_acquire(path)? {
            return Ok(lock);
        }
        let file = open(path)?;
        on_wait(holder_pid(
            file.try_clone().map_err(|error| lock_error(path, error))?,
        ));
        let owned = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|error| lock_error(&owned, std::io::Error::other(error)))?
            .map_err(|error| lock_error(&owned, error))?;
        RunLock::claim(file, path)
    }

    fn claim(mut file: File, path: &Path) -> Result<RunLock, LockError> {
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|error| lock_error(path, error))?;
        Ok(RunLock { _file: file })
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(|error| lock_error(path, error))?;
    }
    crate::config::state_dir::open_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| lock_error(path, crate::config::state_dir::link_error(error)))
}

fn holder_pid(mut file: File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn lock_error(path: &Path, error: std::io::Error) -> LockError {
    LockError {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_lock_names_its_holder_and_is_taken_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = source_lock_path(dir.path(), "corp");
        let TryLock::Acquired(held) = RunLock::try_acquire(&path).unwrap() else {
            panic!("a fresh lock is free");
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        // A second handle, even in the same process, finds it held.
        match RunLock::try_acquire(&path).unwrap() {
            TryLock::Held { holder } => assert_eq!(holder, Some(std::process::id())),
            TryLock::Acquired(_) => panic!("the lock was taken twice"),
        }
        let mut heard = None;
        let waiting = RunLock::acquire(&path, |holder| heard = Some(holder));
        let release = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            drop(held);
        };
        let (acquired, ()) = tokio::join!(waiting, release);
        let _acquired = acquired.unwrap();
        assert_eq!(heard, Some(Some(std::process::id())));
        assert!(matches!(
            RunLock::try_acquire(&outbox_lock_path(dir.path())).unwrap(),
            TryLock::Acquired(_)
        ));
    }
}
