//! A process's own resource use as Linux's `/proc/<pid>` tells it: CPU time, memory, open
//! file descriptors and their limit, for the standard `process_*` series of `/metrics`.
//! What cannot be read (another system, a hidden `/proc`) is left out, not guessed.

use std::path::Path;

/// The unit of the CPU times in `/proc/<pid>/stat`: `USER_HZ`, which Linux fixes at 100 for
/// its user interfaces whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time.
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// This process.
    pub fn current() -> ProcessStats {
        ProcessStats::read(Path::new("/proc/self"))
    }

    /// The process whose `/proc` directory is `proc_dir`, e.g. `/proc/1234`.
    pub fn read(proc_dir: &Path) -> ProcessStats {
        let read = |name: &str| std::fs::read_to_string(proc_dir.join(name)).ok();
        let status = read("status");
        let kilobytes = |key: &str| {
            status
                .as_deref()
                .and_then(|status| status_kilobytes(status, key))
                .map(|kib| kib * 1024)
        };
        ProcessStats {
            cpu_seconds: read("stat").as_deref().and_then(cpu_seconds),
            resident_bytes: kilobytes("VmRSS:"),
            virtual_bytes: kilobytes("VmSize:"),
            open_fds: std::fs::read_dir(proc_dir.join("fd"))
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: read("limits").as_deref().and_then(soft_open_files_limit),
        }
    }
}

/// `utime` + `stime` of `/proc/<pid>/stat`. The command name in parentheses may hold spaces
/// and parentheses itself, so the fields are counted from its last `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state (field 3), ..., utime (14), stime (15).
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / TICKS_PER_SECOND)
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kilobytes(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit of the `Max open files` line of `/proc/<pid>/limits`.
fn soft_open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_field_by_field() {
        let stat =
            "4242 (aksync (x) y) S 1 4242 4242 0 -1 4194560 3121 0 0 0 250 75 0 0 20 0 9 0 1 2 3";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\taksync\nVmSize:\t  123456 kB\nVmRSS:\t   14336 kB\n";
        assert_eq!(status_kilobytes(status, "VmRSS:"), Some(14336));
        assert_eq!(status_kilobytes(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(soft_open_files_limit(limits), Some(1024));
        assert_eq!(soft_open_files_limit("Max open files unlimited"), None);
    }

    #[test]
    fn this_process_is_measured_on_linux() {
        let stats = ProcessStats::current();
        if Path::new("/proc/self/stat").exists() {
            assert!(
                stats.resident_bytes.is_some_and(|bytes| bytes > 0),
                "{stats:?}"
            );
            assert!(stats.open_fds.is_some_and(|fds| fds > 2), "{stats:?}");
            assert!(stats.max_fds.is_some(), "{stats:?}");
            assert!(stats.cpu_seconds.is_some(), "{stats:?}");
        }
    }
}
