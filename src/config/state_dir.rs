//! The state directory as a place other local users must not reach into. It holds the
//! directory's names, emails and attributes, and what aksync writes there it later trusts, so:
//!
//! - A state directory that group or other users may write is refused, by every command:
//!   they could replace the database, or plant a symbolic link where aksync creates a file
//!   (`locks/source-corp.lock -> /home/aksync/.bashrc`) and have aksync truncate its target.
//! - Commands that write into it ([`Access::Write`]) refuse one that another user owns too:
//!   its owner can do all of the above.
//! - Files aksync creates there are opened without following a symbolic link
//!   ([`open_options`], `O_NOFOLLOW`): the lock files and the database. Temporary files
//!   (spools, plans, envelope and report files before their rename) are created with
//!   `O_CREAT | O_EXCL` or `O_TMPFILE` by `tempfile`, which never follow a link either, and a
//!   rename replaces a link instead of writing through it.
//!
//! A missing state directory is fine: aksync creates it, owner-only.

use std::fs::OpenOptions;
use std::path::Path;

/// What a command does with the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Queries (`runs`, `show`, `report`, …): a directory another user owns is read as it is,
    /// so that an admin can read the service's history with `sudo`.
    Read,
    /// Runs, delivery, pruning and rebuilt files: the directory must be this user's.
    Write,
}

/// Checks an existing state directory for `access`; the error is the reason and the fix,
/// after the key.
pub fn check(state_dir: &Path, access: Access) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // Through a symbolic link such as systemd's /var/lib/aksync: the target is what counts.
        let Ok(metadata) = std::fs::metadata(state_dir) else {
            return Ok(());
        };
        let shown = state_dir.display();
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "= {shown} can be written by other users (mode {mode:04o}), who could replace the database or plant links in it: run chmod go-w {shown} (chmod 700 keeps it private too)"
            ));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = unsafe { libc::geteuid() };
        if access == Access::Write && metadata.uid() != user {
            return Err(format!(
                "= {shown} belongs to uid {}, not to this user (uid {user}), and its owner could replace the database or plant links in it: run aksync as its owner, or make it this user's with chown {user} {shown}",
                metadata.uid()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (state_dir, access);
    Ok(())
}

/// The state directory holds personal data (the directory, envelopes, reports), so one that
/// aksync creates is readable by its owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Options for a file aksync creates or opens in the state directory: readable and writable
/// by its owner only, and never through a symbolic link (opening one fails with ELOOP; see
/// [`link_error`]).
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options
}

/// The error of an [`open_options`] open, saying so when it met a symbolic link.
pub fn link_error(error: std::io::Error) -> std::io::Error {
    #[cfg(unix)]
    if error.raw_os_error() == Some(libc::ELOOP) {
        return std::io::Error::other(
            "it is a symbolic link, which aksync does not follow in its state directory: remove it",
        );
    }
    error
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_can_write_is_refused_for_reading_too() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, refused) in [
            (0o700, false),
            (0o755, false),
            (0o770, true),
            (0o1777, true),
        ] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            for access in [Access::Read, Access::Write] {
                let checked = check(dir.path(), access);
                assert_eq!(checked.is_err(), refused, "{mode:o}: {checked:?}");
                if let Err(reason) = checked {
                    assert!(reason.contains("chmod go-w"), "{reason}");
                }
            }
        }
        assert_eq!(check(&dir.path().join("missing"), Access::Write), Ok(()));
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join("source-corp.lock");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let error = open_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&planted)
            .map_err(link_error)
            .unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A plain file is created owner-only.
        let path = dir.path().join("new.lock");
        let mut file = open_options().write(true).create(true).open(&path).unwrap();
        file.write_all(b"1").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
