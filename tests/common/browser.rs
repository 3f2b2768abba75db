//! Headless Chromium for the layout checks of the HTML report and the daemon's status page.
//! Without Chromium they are skipped, except on CI (`CI` set), where they fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aksync::output::report::find_chromium;

const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
/// Only the test's copy of a page gets this script: the pages themselves never have one.
const MEASURE_SCRIPT: &str = "<script>\
    document.body.dataset.scrollWidth = document.documentElement.scrollWidth;\
    document.body.dataset.clientWidth = document.documentElement.clientWidth;\
    </script>";

/// Chromium, or `None` (with a note) where it is not installed and this is not CI.
pub fn chromium_or_skip(what: &str) -> Option<PathBuf> {
    let chromium = find_chromium();
    if chromium.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium must be installed on CI (e.g. `apt-get install chromium`, or set AKSYNC_CHROMIUM)"
        );
        eprintln!("note: Chromium not found, skipping the browser checks of {what}");
    }
    chromium
}

/// Runs headless Chromium on `page` with `extra` flags and returns what it printed,
/// failing the test if it takes longer than a minute.
pub fn run_chromium(chromium: &Path, profile: &Path, extra: &[&str], page: &Path) -> String {
    let stdout_path = profile.with_extension("stdout");
    let stdout = fs::File::create(&stdout_path).unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "{} did not finish within {BROWSER_TIMEOUT:?}",
                chromium.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{} failed: {status}", chromium.display());
    fs::read_to_string(&stdout_path).unwrap()
}

/// The DOM of `page` after it loaded in a window `width` px wide; `name` names the
/// browser profile under `work`.
pub fn dump_dom(chromium: &Path, work: &Path, name: &str, page: &Path, width: u32) -> String {
    run_chromium(
        chromium,
        &work.join(name),
        &[
            &format!("--window-size={width},800"),
            "--virtual-time-budget=2000",
            "--dump-dom",
        ],
        page,
    )
}

/// How wide `html` lays out in a window `width` px wide: (content width, window's client
/// width). The page overflows sideways when the first is larger.
pub fn laid_out_width(chromium: &Path, work: &Path, html: &str, width: u32) -> (u64, u64) {
    let page = work.join(format!("measured-{width}.html"));
    fs::write(
        &page,
        html.replace("</body>", &format!("{MEASURE_SCRIPT}</body>")),
    )
    .unwrap();
    let dom = dump_dom(
        chromium,
        work,
        &format!("profile-measure-{width}"),
        &page,
        width,
    );
    (
        data_attribute(&dom, "scroll-width"),
        data_attribute(&dom, "client-width"),
    )
}

/// The number in `data-<name>="…"` of the dumped DOM.
fn data_attribute(dom: &str, name: &str) -> u64 {
    let marker = format!("data-{name}=\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the DOM"))
        + marker.len();
    let end = start + dom[start..].find('"').unwrap();
    dom[start..end].parse().unwrap()
}
