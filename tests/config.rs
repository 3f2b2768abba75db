//! Bad configuration: one line on stderr naming the file or key, exit code 2, no panic.

mod common;

use common::run_binary;

fn config_error(dir: &std::path::Path, text: &str, expected: &[&str]) {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.join("token"), "x").unwrap();
    for command in [&["sync"][..], &["check"], &["runs"]] {
        let run = run_binary(Some(&path), command);
        assert_eq!(
            run.code, 2,
            "{command:?} {text}: {}{}",
            run.stdout, run.stderr
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "one line: {}",
            run.stderr
        );
        for needle in expected {
            assert!(
                run.stderr.contains(needle),
                "{needle:?} not in {}",
                run.stderr
            );
        }
    }
}

const GOOD_SOURCE: &str =
    "[sources.corp]\nbase_url = \"https://ak.example.com\"\ntoken_file = \"token\"\n";

#[test]
fn unknown_keys_name_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}page_sise = 5\n"),
        &["unknown key `sources.corp.page_sise`:", "config.toml"],
    );
    config_error(
        dir.path(),
        &format!("stat_dir = \"/x\"\n{GOOD_SOURCE}"),
        &["unknown key `stat_dir`:"],
    );
}

#[test]
fn values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    config_error(
        dir.path(),
        "[sources.corp]\nbase_url = \"http://ak.example.com\"\ntoken_file = \"token\"\n",
        &["sources.corp.base_url", "https"],
    );
    config_error(
        dir.path(),
        "[sources.corp]\nbase_url = \"https://ak.example.com\"\ntoken_file = \"token\"\ntoken = \"y\"\n",
        &["exactly one"],
    );
    config_error(
        dir.path(),
        "[sources.corp]\nbase_url = \"https://ak.example.com\"\ntoken_file = \"missing-token\"\n",
        &["sources.corp.token_file", "missing-token"],
    );
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}filter = \"payload.type == \"\n"),
        &["sources.corp.filter", "CEL"],
    );
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}filter = \"paylod.type == 'internal'\"\n"),
        &["sources.corp.filter", "paylod"],
    );
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}page_size = 0\n"),
        &["sources.corp.page_size"],
    );
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}concurrency = \"four\"\n"),
        &["concurrency"],
    );
    config_error(dir.path(), "state_dir = \"/tmp\"\n", &["no sources"]);
    config_error(
        dir.path(),
        &format!(
            "{GOOD_SOURCE}[output.webhook]\nurl = \"https://user:secret@hooks.example.com/x\"\n"
        ),
        &["output.webhook.url", "token_file"],
    );
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}[output]\nreports = [\"md\", \"docx\"]\n"),
        &["output.reports", "docx"],
    );
    config_error(dir.path(), "this is = not toml [", &["config.toml"]);
}

#[test]
fn daemon_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            format!("{GOOD_SOURCE}schedule = \"*/30 * * *\"\n"),
            &["sources.corp.schedule", "4 fields", "*/30 * * * *"][..],
        ),
        (
            format!("{GOOD_SOURCE}schedule = \"61 * * * *\"\n"),
            &["sources.corp.schedule", "not a cron expression"],
        ),
        (
            format!("{GOOD_SOURCE}schedule = \"0 0 30 2 *\"\n"),
            &["sources.corp.schedule", "never matches"],
        ),
        (
            format!("{GOOD_SOURCE}timezone = \"Europe/Berln\"\n"),
            &["sources.corp.timezone", "IANA"],
        ),
        (
            format!("{GOOD_SOURCE}run_on_start = \"yes\"\n"),
            &["sources.corp.run_on_start"],
        ),
        (
            format!("{GOOD_SOURCE}[http]\nlisten = \"0.0.0.0:9464\"\n"),
            &["http.listen", "loopback", "allow_remote"],
        ),
        (
            format!("{GOOD_SOURCE}[http]\nlisten = \"localhost\"\n"),
            &["http.listen", "127.0.0.1:9464"],
        ),
        (
            format!("{GOOD_SOURCE}[http]\nlisten = \"127.0.0.1:9464\"\nauth = \"x\"\n"),
            &["unknown key `http.auth`"],
        ),
        (
            format!("{GOOD_SOURCE}[daemon]\nmax_concurrent_runs = 0\n"),
            &["daemon.max_concurrent_runs", "1 to 64"],
        ),
        (
            format!("{GOOD_SOURCE}[daemon]\nlog_level = \"loud\"\n"),
            &["daemon.log_level", "debug"],
        ),
        (
            format!("{GOOD_SOURCE}[daemon]\nlog_format = \"xml\"\n"),
            &["daemon.log_format", "json"],
        ),
    ] {
        config_error(dir.path(), &text, expected);
    }
    // A remote listener is a decision, not a default.
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n{GOOD_SOURCE}schedule = \"0 9 * * 1-5\"\ntimezone = \"Europe/Berlin\"\n\
             [http]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let run = run_binary(Some(&path), &["runs"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn a_missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_binary(Some(&dir.path().join("nope.toml")), &["sync"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("nope.toml") && run.stderr.contains("does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn conf_d_and_environment_are_merged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!("state_dir = {:?}\n{GOOD_SOURCE}", dir.path().join("state")),
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), "x").unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    // 20 overrides 10; the environment overrides both.
    std::fs::write(
        dir.path().join("conf.d/10-a.toml"),
        "[sources.corp]\npage_size = 0\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/20-b.toml"),
        "[sources.corp]\npage_size = 5000\n",
    )
    .unwrap();
    let run = run_binary(Some(&path), &["runs"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("5000"), "{}", run.stderr);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        .args(["--config", path.to_str().unwrap(), "runs"])
        .env("AKSYNC_SOURCES__CORP__PAGE_SIZE", "50")
        // Variables that select logging or the browser are not config keys.
        .env("AKSYNC_LOG", "warn")
        .env("AKSYNC_CHROMIUM", "/usr/bin/chromium")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every key that config.example.toml documents, commented out or not, is a real key.
#[test]
fn the_example_config_documents_real_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "x").unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let mut enabled = Vec::new();
    for line in example.lines() {
        let uncommented = line.strip_prefix("# ").filter(|rest| {
            let is_key = rest
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            (is_key || rest.starts_with("[output.") || rest.starts_with("[http]"))
                && !rest.starts_with("token =")
                && !rest.starts_with("ca_file")
        });
        let line = uncommented.unwrap_or(line);
        let line = if line.starts_with("token_file") {
            "token_file = \"token\""
        } else {
            line
        };
        let line = if line.starts_with("state_dir") {
            format!("state_dir = {:?}", dir.path().join("state"))
        } else {
            line.to_string()
        };
        enabled.push(line);
    }
    let text = enabled.join("\n");
    assert!(
        text.contains("\nfilter = ")
            && text.contains("[output.webhook]")
            && text.contains("\nignore_fields = ")
            && text.contains("\ntimezone = ")
            && text.contains("\n[http]\nlisten = "),
        "{text}"
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let run = run_binary(Some(&path), &["runs"]);
    assert_eq!(run.code, 0, "{}\n{text}", run.stderr);
}

#[test]
fn usage_errors_are_one_line() {
    for args in [
        &["frobnicate"][..],
        &["show"],
        &["show", "accounts", "--json", "--csv"],
    ] {
        let run = run_binary(None, args);
        assert_eq!(run.code, 2, "{args:?}");
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.starts_with("aksync: "), "{}", run.stderr);
    }
}

#[test]
fn without_any_configuration_the_error_says_where_it_looked() {
    if std::path::Path::new(aksync::config::DEFAULT_CONFIG_PATH).exists() {
        return; // a machine with aksync installed
    }
    let run = run_binary(None, &["sync"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/etc/aksync/config.toml") && run.stderr.contains("--config"),
        "{}",
        run.stderr
    );
}
