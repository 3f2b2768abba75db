//! Bad configuration: one line on stderr naming the file or key, exit code 2, no panic.

mod common;

use common::{run_binary, write_secret};

fn config_error(dir: &std::path::Path, text: &str, expected: &[&str]) {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    write_secret(&dir.join("token"), "x");
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

/// A valid config.toml in `dir` with a state directory beside it and `token` in its token
/// file; returns the config's path.
fn good_config(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!("state_dir = {:?}\n{GOOD_SOURCE}", dir.join("state")),
    )
    .unwrap();
    write_secret(&dir.join("token"), token);
    path
}

#[test]
fn unknown_keys_name_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}page_sise = 5\n"),
        &[
            "unknown key `sources.corp.page_sise`: did you mean `page_size`?",
            "config.toml",
        ],
    );
    config_error(
        dir.path(),
        &format!("stat_dir = \"/x\"\n{GOOD_SOURCE}"),
        &["unknown key `stat_dir`: did you mean `state_dir`?"],
    );
    config_error(
        dir.path(),
        &format!("{GOOD_SOURCE}[daemon]\nlog_levl = \"info\"\n"),
        &["unknown key `daemon.log_levl`: did you mean `log_level`?"],
    );
    // Only the keys of the same table are suggested, and only close ones.
    for (text, key) in [
        (
            format!("{GOOD_SOURCE}[daemon]\npage_size = 5\n"),
            "daemon.page_size",
        ),
        (
            format!("{GOOD_SOURCE}frobnicate = 5\n"),
            "sources.corp.frobnicate",
        ),
    ] {
        config_error(
            dir.path(),
            &text,
            &[&format!(
                "unknown key `{key}`: remove it or check its spelling against config.example.toml"
            )],
        );
    }
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
    config_error(
        dir.path(),
        &format!(
            "{GOOD_SOURCE}primary_directory = true\n{}primary_directory = true\n",
            GOOD_SOURCE.replace("corp", "hr")
        ),
        &["primary_directory", "`corp` and `hr`", "at most one"],
    );
}

#[test]
fn report_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            format!("{GOOD_SOURCE}sla = \"soon\"\n"),
            &["sources.corp.sla", "not a duration", "24h"][..],
        ),
        (
            format!("{GOOD_SOURCE}sla = \"0s\"\n"),
            &["sources.corp.sla", "out of range"],
        ),
        (
            format!("{GOOD_SOURCE}expected_interval = \"400d\"\n"),
            &["sources.corp.expected_interval", "out of range"],
        ),
        (
            format!("{GOOD_SOURCE}hr_key_field = \"employee_id\"\n"),
            &["sources.corp.hr_key_field", "attributes.employee_id"],
        ),
        (
            format!("{GOOD_SOURCE}hr_key_field = \"attributes.\"\n"),
            &["sources.corp.hr_key_field", "does not name an attribute"],
        ),
        (
            format!("{GOOD_SOURCE}privileged_groups = [\"Admins\", \" \"]\n"),
            &["sources.corp.privileged_groups", "empty entry"],
        ),
        (
            format!("{GOOD_SOURCE}privileged_groups = \"Admins\"\n"),
            &["sources.corp.privileged_groups"],
        ),
    ] {
        config_error(dir.path(), &text, expected);
    }
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
    let path = good_config(dir.path(), "x");
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
    write_secret(&dir.path().join("token"), "x");
    let key = dir.path().join("signing.pem");
    let made = run_binary(None, &["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let mut enabled = Vec::new();
    for line in example.lines() {
        let uncommented = line.strip_prefix("# ").filter(|rest| {
            let is_key = rest
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            (is_key
                || rest.starts_with("[output.")
                || rest.starts_with("[http]")
                || rest.starts_with("[retention]")
                || rest.starts_with("[ledger]"))
                && !rest.starts_with("token =")
                && !rest.starts_with("token_file")
                && !rest.starts_with("ca_file")
        });
        let line = uncommented.unwrap_or(line);
        let line = if line.starts_with("token_credential") {
            "token_file = \"token\""
        } else {
            line
        };
        let line = if line.starts_with("state_dir") {
            format!("state_dir = {:?}", dir.path().join("state"))
        } else if line.starts_with("signing_key_file") {
            "signing_key_file = \"signing.pem\"".to_string()
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
            && text.contains("\n[http]\nlisten = ")
            && text.contains("\n[retention]\n")
            && text.contains("\nkeep_days = ")
            && text.contains("\nkeep_evidence_days = ")
            && text.contains("\nprivileged_roles = ")
            && text.contains("\n[ledger]\nsigning_key_file = "),
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

/// Runs `runs` with a config and asserts a one-line configuration error that names all of
/// `expected` and shows none of `secrets`.
fn secret_safe_error(text: &str, env: &[(&str, &str)], expected: &[&str], secrets: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    write_secret(&dir.path().join("token"), "x");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
        // `check` reads the token files; queries do not.
        .args(["--config", path.to_str().unwrap(), "check"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(2), "{text}: {stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for needle in expected {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    for secret in secrets {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{secret:?} echoed: {stderr}"
        );
    }
}

const SOURCE_HEAD: &str = "[sources.corp]\nbase_url = \"https://ak.example.com\"\n";

#[test]
fn errors_never_echo_a_secret() {
    // A token that TOML or the environment reads as a number.
    secret_safe_error(
        &format!("{SOURCE_HEAD}token = 8675309123\n"),
        &[],
        &["sources.corp.token", "expected a string"],
        &["8675309123"],
    );
    secret_safe_error(
        &format!("{SOURCE_HEAD}token_file = \"token\"\n"),
        &[("AKSYNC_SOURCES__CORP__TOKEN", "4242424242")],
        &["sources.corp.token"],
        &["4242424242"],
    );
    // A TOML syntax error on the token's line: the line is not quoted.
    secret_safe_error(
        &format!("{SOURCE_HEAD}token = \"s3cr3t-tok3n\n"),
        &[],
        &["config.toml", "line 3"],
        &["s3cr3t-tok3n"],
    );
    // Credentials and tokens in URLs.
    secret_safe_error(
        "[sources.corp]\nbase_url = \"https://admin:hunter22@ak.example.com/?token=t0k3n\"\ntoken_file = \"token\"\n",
        &[],
        &["sources.corp.base_url", "ak.example.com"],
        &["hunter22", "t0k3n", "admin:"],
    );
    secret_safe_error(
        "[sources.corp]\nbase_url = \"https://admin:hunter22@ak example.com\"\ntoken_file = \"token\"\n",
        &[],
        &["sources.corp.base_url"],
        &["hunter22"],
    );
    secret_safe_error(
        &format!(
            "{GOOD_SOURCE}[output.webhook]\nurl = \"ftp://ingest.example.com/x?key=w3bh00k\"\n"
        ),
        &[],
        &["output.webhook.url"],
        &["w3bh00k"],
    );
}

#[test]
fn a_token_with_whitespace_or_controls_inside_is_a_configuration_error() {
    // As TOML basic strings: a space, an escape sequence, a pasted scheme, a line break.
    for token in ["abc def", "abc\\u001b[2Jdef", "Bearer abcdef", "abc\\ndef"] {
        secret_safe_error(
            &format!("{SOURCE_HEAD}token = \"{token}\"\n"),
            &[],
            &["sources.corp.token", "whitespace, a control character"],
            &["abc"],
        );
    }
    // Surrounding whitespace, such as the line break of a token file, is fine.
    let dir = tempfile::tempdir().unwrap();
    let path = good_config(dir.path(), "  abcdef\n");
    let run = run_binary(Some(&path), &["runs"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn token_files_are_read_with_a_size_limit_and_warned_about_when_shared() {
    secret_safe_error(
        &format!("{SOURCE_HEAD}token_file = \"/dev/zero\"\n"),
        &[],
        &["sources.corp.token_file", "/dev/zero", "larger than 64 KiB"],
        &[],
    );
    // Nothing listens there: `check` reads the token, then finds the server down.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n[sources.corp]\nbase_url = \"http://127.0.0.1:1\"\ntoken_file = \"token\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    write_secret(&dir.path().join("token"), "abcdef");
    let token = dir.path().join("token");
    let shared = |run: &common::Run| {
        run.stderr
            .lines()
            .filter(|line| line.contains("readable by other users"))
            .count()
    };
    let run = run_binary(Some(&path), &["check"]);
    assert_eq!((run.code, shared(&run)), (1, 0), "{}", run.stderr);
    use std::os::unix::fs::PermissionsExt;
    // Readable by its group, or by everyone else but not its group: both are shared.
    for mode in [0o640, 0o604] {
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let run = run_binary(Some(&path), &["check"]);
        assert_eq!((run.code, shared(&run)), (1, 1), "{mode:o}: {}", run.stderr);
        assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!("(mode {mode:03o})")),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("abcdef"), "{}", run.stderr);
    }
    // Queries read no token, so they have nothing to warn about.
    let run = run_binary(Some(&path), &["runs"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
}

#[test]
fn a_state_dir_that_cannot_be_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
    for (state_dir, expected) in [
        (String::new(), "`state_dir` is empty"),
        (file.display().to_string(), "is not a directory"),
        (dangling.display().to_string(), "which does not exist"),
    ] {
        config_error(
            dir.path(),
            &format!("state_dir = {state_dir:?}\n{GOOD_SOURCE}"),
            &[expected, &state_dir],
        );
    }
    assert!(!dir.path().join("gone").exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

/// `payload.pk == 0 || payload.pk == 1 || …`
fn filter_of_terms(count: usize) -> String {
    (0..count)
        .map(|pk| format!("payload.pk == {pk}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

#[test]
fn a_syntax_error_in_either_filter_names_the_key_and_position_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (key, expression, position) in [
        ("filter", "payload.type == ", "<input>:1:17"),
        ("group_filter", "payload.name.startsWith(", "<input>:1:25"),
    ] {
        config_error(
            dir.path(),
            &format!(
                "state_dir = {:?}\n{GOOD_SOURCE}{key} = {expression:?}\n",
                state.display().to_string()
            ),
            &[
                &format!("`sources.corp.{key}` is not a valid CEL expression"),
                position,
                "Syntax error",
            ],
        );
        assert!(!state.exists(), "{key}: nothing is written");
    }
}

#[test]
fn runaway_filters_are_refused_alike_by_check_sync_and_queries() {
    // Once these crashed the process (a stack overflow or a panic in the CEL parser), or
    // passed `check` and then crashed `sync`: now each is one configuration error, the same
    // for every command.
    let dir = tempfile::tempdir().unwrap();
    let chain = format!("payload.pk{} > 0", " + 1".repeat(3_000));
    for (filter, reason) in [
        (
            filter_of_terms(2_000),
            "bytes long, more than the 16384 accepted",
        ),
        (
            format!("{}true{}", "(".repeat(200_000), ")".repeat(200_000)),
            "bytes long",
        ),
        (chain, "nests 3003 levels deep, more than the 100 accepted"),
    ] {
        config_error(
            dir.path(),
            &format!("{GOOD_SOURCE}filter = {filter:?}\n"),
            &[
                "`sources.corp.filter` is not a valid CEL expression",
                reason,
            ],
        );
    }
}

#[test]
fn a_token_comes_from_a_file_a_credential_or_the_configuration_and_only_one() {
    let dir = tempfile::tempdir().unwrap();
    let head = "[sources.corp]\nbase_url = \"https://ak.example.com\"\n";
    for (keys, expected) in [
        (
            "token_file = \"token\"\ntoken = \"y\"\n",
            "`sources.corp.token` and `sources.corp.token_file` are set: keep exactly one",
        ),
        (
            "token_file = \"token\"\ntoken_credential = \"corp.token\"\n",
            "`sources.corp.token_file` and `sources.corp.token_credential` are set",
        ),
        ("", "no token: set `sources.corp.token_credential`"),
        (
            "token_credential = \"../corp.token\"\n",
            "is not a credential name",
        ),
    ] {
        config_error(dir.path(), &format!("{head}{keys}"), &[expected]);
    }
}

#[test]
fn a_credential_is_read_from_the_credentials_directory_systemd_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n[sources.corp]\nbase_url = \"https://ak.example.com\"\ntoken_credential = \"corp.token\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let check = |credentials_dir: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"));
        command.arg("--config").arg(&path).arg("check");
        match credentials_dir {
            Some(dir) => command.env("CREDENTIALS_DIRECTORY", dir),
            None => command.env_remove("CREDENTIALS_DIRECTORY"),
        };
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Outside the service: the service's own directory, which only exists while it runs.
    let (code, stderr) = check(None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`sources.corp.token_credential`: cannot read /run/credentials/aksync.service/corp.token"),
        "{stderr}"
    );
    let (code, stderr) = check(Some(&credentials));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}", credentials.join("corp.token").display())),
        "{stderr}"
    );
    write_secret(&credentials.join("corp.token"), "t0k3n");
    let (code, stderr) = check(Some(&credentials));
    // The token was read; only the server (which does not exist) is missing now.
    assert_ne!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("t0k3n"), "{stderr}");
}

/// config.example.toml as it is, with the environment systemd/aksync.service gives it: the
/// state directory and the token come from there.
#[test]
fn the_example_config_works_as_it_is_under_the_shipped_unit() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    write_secret(&credentials.join("corp.token"), "t0k3n");
    let state = dir.path().join("state");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/aksync.service"
    ))
    .unwrap();
    assert!(unit.contains("\nLoadCredential=corp.token:"), "{unit}");
    let aksync = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
            .arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .args(args)
            .env("STATE_DIRECTORY", &state)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            // authentik.example.com does not exist; nothing listens on port 1 either.
            .env("AKSYNC_SOURCES__CORP__BASE_URL", "http://127.0.0.1:1")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, stdout) = aksync(&["check"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.starts_with("corp: Needs Attention"), "{stdout}");
    assert!(state.join("aksync.redb").is_file());
    let (code, stdout) = aksync(&["runs"]);
    assert_eq!(code, Some(0), "{stdout}");
}

#[test]
fn errors_name_the_configuration_file_as_it_was_given() {
    // systemd starts services in `/`, where a path relative to the working directory loses
    // its leading slash.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("{GOOD_SOURCE}page_sise = 5\n")).unwrap();
    for (cwd, given) in [
        ("/", path.clone()),
        (dir.path().to_str().unwrap(), "config.toml".into()),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_aksync"))
            .arg("--config")
            .arg(&given)
            .arg("runs")
            .current_dir(cwd)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with(&format!("aksync: {}: unknown key", given.display())),
            "{stderr}"
        );
    }
}

#[test]
fn ignore_fields_naming_nothing_are_refused_with_the_closest_name() {
    let dir = tempfile::tempdir().unwrap();
    for (entry, suggestion) in [
        ("emial", "did you mean `email`?"),
        ("attribute.title", "did you mean `attributes.title`?"),
    ] {
        config_error(
            dir.path(),
            &format!("{GOOD_SOURCE}ignore_fields = [{entry:?}]\n"),
            &[
                "`sources.corp.ignore_fields` entry",
                &format!("{entry:?} names no field aksync keeps: {suggestion}"),
            ],
        );
    }
    // Attribute keys are free-form: one that no account has (yet) is accepted quietly.
    let path = good_config(dir.path(), "x");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("ignore_fields = [\"attributes.titel\"]\n");
    std::fs::write(&path, text).unwrap();
    let runs = run_binary(Some(&path), &["runs"]);
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    assert!(runs.stderr.is_empty(), "{}", runs.stderr);
}
