//! PDF through headless Chromium: the HTML report printed by a real browser engine, so the
//! PDF looks exactly like the page. Chromium runs with a fresh profile, no network-facing
//! background services and a deadline, because a headless browser that waits for something
//! would otherwise hang a scheduled job.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::ReportError;

/// Printing a report of thousands of rows takes seconds; a minute means Chromium is stuck.
const PRINT_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CHROMIUM_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
/// Flags that keep a headless Chromium from reaching out, prompting, or needing a sandbox
/// that containers and systemd units often cannot provide.
const HEADLESS_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// `$AKSYNC_CHROMIUM` if set, else the first of `chromium`, `chromium-browser` and
/// `google-chrome` on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(configured) = std::env::var_os("AKSYNC_CHROMIUM").filter(|value| !value.is_empty())
    {
        // Taken as it is: a wrong path then fails with its own name instead of silently
        // printing with some other browser.
        return Some(PathBuf::from(configured));
    }
    let path = std::env::var_os("PATH")?;
    CHROMIUM_NAMES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Prints `html` to an A4 PDF with `chromium`, killing it after a minute.
pub fn html_to_pdf(html: &[u8], chromium: &Path) -> Result<Vec<u8>, ReportError> {
    if !write_execute_memory_allowed() {
        return Err(ReportError::Chromium(
            "this process may not map memory that is writable and executable, which Chromium's JavaScript engine needs (systemd's MemoryDenyWriteExecute=yes): install systemd/pdf.conf as a drop-in, see systemd/README.md".into(),
        ));
    }
    let work = tempfile::tempdir().map_err(io_error("cannot create a temporary directory"))?;
    let html_path = work.path().join("report.html");
    let pdf_path = work.path().join("report.pdf");
    let log_path = work.path().join("chromium.log");
    fs::write(&html_path, html).map_err(io_error("cannot write the HTML to print"))?;
    // A file, not a pipe: Chromium logs freely, and a full pipe nobody reads would block it.
    let log = File::create(&log_path).map_err(io_error("cannot create Chromium's log file"))?;
    let log_for_stdout = log
        .try_clone()
        .map_err(io_error("cannot create Chromium's log file"))?;
    let mut child = Command::new(chromium)
        .args(HEADLESS_FLAGS)
        .arg(flag_with_path(
            "--user-data-dir=",
            &work.path().join("profile"),
        ))
        .arg("--no-pdf-header-footer")
        .arg(flag_with_path("--print-to-pdf=", &pdf_path))
        .arg(file_url(&html_path))
        .stdin(Stdio::null())
        .stdout(log_for_stdout)
        .stderr(log)
        .spawn()
        .map_err(|error| {
            ReportError::Chromium(format!(
                "cannot start {}: {error}; install Chromium or set AKSYNC_CHROMIUM to its path",
                chromium.display()
            ))
        })?;
    let log_line = || telling_line(&log_path);
    match wait_with_deadline(&mut child, PRINT_TIMEOUT)? {
        None => {
            return Err(ReportError::Chromium(format!(
                "no PDF after {} s, Chromium was stopped (its log: {})",
                PRINT_TIMEOUT.as_secs(),
                log_line()
            )))
        }
        Some(status) if !status.success() => {
            return Err(ReportError::Chromium(format!(
                "{status} (its log: {})",
                log_line()
            )))
        }
        Some(_) => {}
    }
    let pdf = fs::read(&pdf_path).map_err(|error| {
        ReportError::Chromium(format!(
            "it exited without writing the PDF ({error}; its log: {})",
            log_line()
        ))
    })?;
    if !pdf.starts_with(b"%PDF") {
        return Err(ReportError::Chromium(
            "it wrote a file that is not a PDF".to_string(),
        ));
    }
    Ok(pdf)
}

/// Whether this process may map memory that is writable and executable at once. systemd's
/// `MemoryDenyWriteExecute=yes` forbids it with a seccomp filter that Chromium inherits, and
/// Chromium then hangs until the deadline instead of exiting: this says so at once.
fn write_execute_memory_allowed() -> bool {
    const PAGE: usize = 4096;
    // SAFETY: a private anonymous mapping that nothing else refers to, unmapped at once.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        // Out of memory is not a policy; Chromium may still work.
        let error = std::io::Error::last_os_error().raw_os_error();
        return !matches!(error, Some(libc::EPERM | libc::EACCES));
    }
    // SAFETY: the mapping made above, of that size.
    unsafe { libc::munmap(mapped, PAGE) };
    true
}

/// `Ok(None)` when the deadline passed; the child is then killed and reaped.
fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<ExitStatus>, ReportError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_error("cannot wait for Chromium"))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // It may have exited since try_wait; then there is nothing left to kill.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn io_error(context: &'static str) -> impl Fn(std::io::Error) -> ReportError {
    move |error| ReportError::Io(format!("{context}: {error}"))
}

/// A command-line flag whose value is a path that need not be UTF-8.
fn flag_with_path(flag: &str, path: &Path) -> OsString {
    let mut argument = OsString::from(flag);
    argument.push(path);
    argument
}

/// A `file://` URL with every byte outside the unreserved set percent-encoded, so that a
/// temporary directory with spaces or `#` in its name still names the file.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for byte in path.as_os_str().as_encoded_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(byte) {
            url.push(char::from(*byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// What in Chromium's log says why it failed: the last line that names a fatal cause (a
/// failed check, missing support, a missing file or permission), else the last line that
/// names an error, else its last line. Chromium ends a crash with generic lines (where to
/// report bugs) and logs harmless errors (no D-Bus) along the way, so neither its last line
/// nor its last error alone says why.
fn telling_line(log_path: &Path) -> String {
    const FATAL: [&str; 6] = [
        "fatal",
        "check failed",
        "lacks support",
        "not permitted",
        "no such file",
        "permission denied",
    ];
    const ERROR: [&str; 2] = ["error", "cannot"];
    let log = fs::read_to_string(log_path).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let last_naming = |words: &[&str]| {
        lines.iter().rev().copied().find(|line| {
            let line = line.to_ascii_lowercase();
            words.iter().any(|word| line.contains(word))
        })
    };
    last_naming(&FATAL)
        .or_else(|| last_naming(&ERROR))
        .or(lines.last().copied())
        .unwrap_or("empty")
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_that_says_why_chromium_failed_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromium.log");
        let said = |text: &str| {
            fs::write(&log, text).unwrap();
            telling_line(&log)
        };
        // Under ProcSubset=pid, as a real Debian Chromium said it.
        assert_eq!(
            said("grep: /proc/cpuinfo: No such file or directory\nThe hardware on this system lacks support for the sse3 instruction set.\nPlease file a bug at the\nbug tracking system at http://crbug.com/1123353\n"),
            "The hardware on this system lacks support for the sse3 instruction set."
        );
        assert_eq!(
            said("[1:1:FATAL:sandbox/linux/services/credentials.cc:371] Check failed: . : Operation not permitted (1)\n#0 0x55 base::debug::StackTrace\n"),
            "[1:1:FATAL:sandbox/linux/services/credentials.cc:371] Check failed: . : Operation not permitted (1)"
        );
        // A harmless error before the cause does not hide it.
        assert_eq!(
            said("[1:2:ERROR:bus.cc(407)] Failed to connect to the bus\n[1:3:FATAL:zygote_host_impl_linux.cc(127)] No usable sandbox!\nReceived signal 6\n"),
            "[1:3:FATAL:zygote_host_impl_linux.cc(127)] No usable sandbox!"
        );
        assert_eq!(
            said("[1:2:ERROR:bus.cc(407)] Failed to connect to the bus\nexiting\n"),
            "[1:2:ERROR:bus.cc(407)] Failed to connect to the bus"
        );
        assert_eq!(said("starting\nstill going\n"), "still going");
        assert_eq!(said(""), "empty");
    }

    #[test]
    fn file_url_percent_encodes_what_a_url_cannot_hold() {
        assert_eq!(
            file_url(Path::new("/tmp/a b#c/report.html")),
            "file:///tmp/a%20b%23c/report.html"
        );
    }

    #[test]
    fn a_browser_that_cannot_start_is_a_one_line_error() {
        let error = html_to_pdf(b"<p>hi</p>", Path::new("/nonexistent/chromium")).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, ReportError::Chromium(_)), "{message}");
        assert!(message.contains("/nonexistent/chromium"), "{message}");
        assert!(
            message.contains("AKSYNC_CHROMIUM") && !message.contains('\n'),
            "{message}"
        );
    }

    #[test]
    fn a_browser_that_prints_nothing_is_an_error() {
        let error = html_to_pdf(b"<p>hi</p>", Path::new("true")).unwrap_err();
        assert!(
            error.to_string().contains("without writing the PDF"),
            "{error}"
        );
    }

    #[test]
    fn a_stuck_browser_is_killed_at_the_deadline() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let started = Instant::now();
        let status = wait_with_deadline(&mut child, Duration::from_millis(200)).unwrap();
        assert_eq!(status, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            child.try_wait().unwrap().is_some(),
            "the child was not reaped"
        );
    }

    #[test]
    fn chromium_missing_says_how_to_get_it() {
        let message = ReportError::ChromiumMissing.to_string();
        for hint in [
            "apt-get install chromium",
            "AKSYNC_CHROMIUM",
            "--format html",
        ] {
            assert!(message.contains(hint), "{message}");
        }
        assert!(
            !message.contains('\n') && !message.contains("  "),
            "{message}"
        );
    }
}
