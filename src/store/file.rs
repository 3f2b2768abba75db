//! The database file before redb opens it: created owner-only, refused when it is a symbolic
//! link (see [`crate::config::state_dir`]) or when it is empty
//! although earlier runs left envelopes or reports (a truncated or replaced file would
//! otherwise silently start a new history that reports everyone as a joiner again), and a
//! warning when other users can read the state directory.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Once;

use super::StoreError;

/// The folders where complete runs leave files.
const RUN_ARTIFACT_DIRS: [&str; 2] = ["envelopes", "reports"];

/// Makes `path` ready for redb: a missing file is created with mode 0600 (redb initializes
/// an empty file); an existing one must be a regular file, and may be empty only while no run
/// has left files beside it.
pub(super) fn prepare(path: &Path) -> Result<(), StoreError> {
    let state_dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    warn_once_if_readable_by_others(state_dir);
    let io_error = |reason: String| StoreError::Io {
        path: path.to_path_buf(),
        reason,
    };
    // The path itself, not what a link there points to: a link is never followed.
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            return create_private_file(path).map_err(|error| io_error(error.to_string()));
        }
        Err(error) => return Err(io_error(error.to_string())),
    };
    if metadata.file_type().is_symlink() {
        return Err(io_error(
            "it is a symbolic link, which aksync does not follow in its state directory: put the database file itself there".into(),
        ));
    }
    if !metadata.is_file() {
        return Err(io_error("it is not a regular file".into()));
    }
    if metadata.len() == 0 {
        if let Some(dir) = earlier_run_files(state_dir) {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "the file is empty, but {} holds files of earlier runs, so it was truncated or replaced",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// Creates an empty file readable and writable by its owner only; another process creating
/// it first is fine.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    match crate::config::state_dir::open_options()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// The first run-artifact folder under `state_dir` that holds a file, if any.
fn earlier_run_files(state_dir: &Path) -> Option<std::path::PathBuf> {
    RUN_ARTIFACT_DIRS
        .iter()
        .map(|name| state_dir.join(name))
        .find(|dir| {
            // `<dir>/<source>/<run>.<ext>`: one level of sources, stopping at the first file.
            std::fs::read_dir(dir).is_ok_and(|sources| {
                sources.flatten().any(|source| {
                    std::fs::read_dir(source.path()).is_ok_and(|mut files| files.next().is_some())
                })
            })
        })
}

/// Once per process, so that a command that opens the store several times warns once.
fn warn_once_if_readable_by_others(state_dir: &Path) {
    static WARNED: Once = Once::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(metadata) = std::fs::metadata(state_dir) else {
            return;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            WARNED.call_once(|| {
                tracing::warn!(
                    "state directory {} is readable by other users (mode {mode:03o}), and it holds names, emails and attributes: run chmod 700 on it",
                    state_dir.display()
                );
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (&WARNED, state_dir);
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_database_file_is_owner_only_even_in_an_open_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("aksync.redb");
        prepare(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        // An existing empty file with no earlier runs beside it is a new database.
        prepare(&path).unwrap();
    }

    #[test]
    fn an_empty_file_beside_earlier_runs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aksync.redb");
        std::fs::write(&path, b"").unwrap();
        std::fs::create_dir_all(dir.path().join("reports/corp")).unwrap();
        prepare(&path).unwrap();
        std::fs::write(dir.path().join("reports/corp/01J.md"), b"x").unwrap();
        let error = prepare(&path).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn links_to_nothing_and_directories_are_not_databases() {
        let dir = tempfile::tempdir().unwrap();
        let dangling = dir.path().join("aksync.redb");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        let error = prepare(&dangling).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(!dir.path().join("gone").exists());
        let folder = dir.path().join("folder.redb");
        std::fs::create_dir(&folder).unwrap();
        let error = prepare(&folder).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }
}

/// The other processes that have `path` open, as people read them: `pid 4242 (aksync
/// daemon)`. Best effort: only the processes this user may look into are seen.
pub(super) fn holders(path: &Path) -> String {
    let Ok(target) = std::fs::canonicalize(path) else {
        return "another process".to_string();
    };
    let own = std::process::id();
    let mut found = Vec::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return "another process".to_string();
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| link == target));
        if holds {
            let command = std::fs::read(process.path().join("cmdline"))
                .map(|bytes| {
                    let words: Vec<String> = bytes
                        .split(|byte| *byte == 0)
                        .filter(|word| !word.is_empty())
                        .map(|word| String::from_utf8_lossy(word).into_owned())
                        .collect();
                    words.join(" ")
                })
                .unwrap_or_default();
            let command = crate::display::truncate(&command, 80).into_owned();
            found.push(format!("pid {pid} ({command})"));
        }
    }
    if found.is_empty() {
        "another process".to_string()
    } else {
        found.join(", ")
    }
}
