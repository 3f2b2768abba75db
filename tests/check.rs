//! `aksync check`: Healthy for a working token, and each "Needs Attention" reason for the
//! faults an admin must tell apart. Results are stored in the database.

mod common;

use aksync::demo::fake::{
    APP_PASSWORD_TOKEN, NO_PERMISSION_TOKEN, READER_TOKEN, REVOKED_TOKEN, SUPERUSER_TOKEN,
};
use std::time::{Duration, Instant};

use aksync::clock::Clock;
use aksync::demo::fake::Fault;
use common::tls::{tls_front, ServerCertificate, TestCa, Validity};
use common::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_for_superuser_and_role_based_reader_tokens() {
    let env = TestEnv::start(5).await;
    for token in [SUPERUSER_TOKEN, READER_TOKEN] {
        env.write_config(token, "");
        let run = env.aksync(&["check"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.starts_with("corp: Healthy"), "{}", run.stdout);
        assert!(run.stdout.contains("2025.12.4"), "{}", run.stdout);
    }
    // The reader's /me/ shows no system_permissions, yet it is healthy: it can read the lists.
    let run = env.aksync(&["check", "--json"]);
    let results = run.json();
    assert_eq!(results[0]["status"], "Healthy");
    assert_eq!(results[0]["token_user"], "svc-aksync-reader");
    let stored = env.store().health("corp").unwrap().expect("health stored");
    assert_eq!(stored.status, aksync::store::HealthStatus::Healthy);
    assert_eq!(stored.token_user.as_deref(), Some("svc-aksync-reader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_trimmed_of_surrounding_whitespace() {
    let env = TestEnv::start(1).await;
    // As editors and `echo` leave it: a line break, spaces, a Windows line end.
    env.write_config(&format!(" \t{READER_TOKEN}\r\n\n"), "");
    let run = env.aksync(&["check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("corp: Healthy"), "{}", run.stdout);
    // The fake accepts only the exact token, so the header carried it trimmed.
    env.write_config(&format!("{READER_TOKEN}x"), "");
    assert_eq!(reason_of(&env).0, "bad_token");
}

fn reason_of(env: &TestEnv) -> (String, String) {
    let run = env.aksync(&["check", "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let result = &run.json()[0];
    assert_eq!(result["status"], "Needs Attention");
    let text = env.aksync(&["check"]);
    assert_eq!(
        text.stdout.lines().count(),
        1,
        "one line per source: {}",
        text.stdout
    );
    assert!(
        text.stdout.starts_with("corp: Needs Attention: "),
        "{}",
        text.stdout
    );
    (
        result["reason_code"].as_str().unwrap().to_string(),
        result["reason"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_wrong_kind_tokens_point_at_api_tokens() {
    let env = TestEnv::start(5).await;
    for token in [REVOKED_TOKEN, APP_PASSWORD_TOKEN, "not-a-token-at-all"] {
        env.write_config(token, "");
        let (code, reason) = reason_of(&env);
        assert_eq!(code, "bad_token");
        assert!(reason.contains("Token invalid/expired"), "{reason}");
        assert!(
            reason.contains("Directory > Tokens and App passwords"),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_permission_is_told_apart() {
    let env = TestEnv::start(5).await;
    env.write_config(NO_PERMISSION_TOKEN, "");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "no_permission");
    assert!(reason.contains("/api/v3/core/users/"), "{reason}");
    assert!(reason.contains("view_user"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_unreachable() {
    let env = TestEnv::start(1).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    env.write_config_for(
        &format!("http://127.0.0.1:{port}"),
        READER_TOKEN,
        "timeout_secs = 5",
    );
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "unreachable");
    assert!(reason.contains("cannot connect"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_server_that_is_not_authentik_is_told_apart() {
    let env = TestEnv::start(1).await;
    let app = axum::Router::new().fallback(|| async {
        axum::response::Html("<!doctype html><title>Welcome to nginx!</title>")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    env.write_config_for(&format!("http://{addr}"), READER_TOKEN, "");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "not_authentik");
    assert!(reason.contains("not an Authentik API"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_a_dns_failure() {
    let env = TestEnv::start(1).await;
    // .invalid never resolves (RFC 2606), so no traffic leaves the machine.
    env.write_config_for("https://authentik.invalid", READER_TOKEN, "");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "dns", "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_http_port_is_a_tls_failure() {
    let env = TestEnv::start(1).await;
    let https = env.fake.base_url().replace("http://", "https://");
    env.write_config_for(&https, READER_TOKEN, "timeout_secs = 5");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "tls", "{reason}");
    assert!(reason.contains("ca_file"), "{reason}");
    // The host, not an endpoint's path: TLS is the server's.
    let host = https.trim_start_matches("https://");
    assert!(
        reason.starts_with(&format!("TLS failure with {host}: ")),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_a_timeout() {
    let env = TestEnv::start(1).await;
    env.fake
        .with_state(|state| state.latency = std::time::Duration::from_millis(2500));
    env.write_config(READER_TOKEN, "timeout_secs = 1");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "timeout", "{reason}");
    assert!(reason.contains("timeout_secs"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_is_waited_for() {
    let env = TestEnv::start(1).await;
    // Authentik's throttling answers 429 with `Retry-After`; a proxy may send it as a date.
    // The wall clock: the binary waits in real time.
    let now = std::time::SystemTime::from(aksync::clock::SystemClock.now());
    let retry_at = now + Duration::from_secs(3);
    env.fake.with_state(|state| {
        state.faults.push(Fault {
            path_contains: "/core/users/me/".into(),
            skip: 0,
            times: Some(1),
            status: 429,
            body: br#"{"detail": "Request was throttled."}"#.to_vec(),
            retry_after: Some(httpdate::fmt_http_date(retry_at)),
            location: None,
        })
    });
    let started = Instant::now();
    let run = env.aksync(&["check"]);
    let waited = started.elapsed();
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("corp: Healthy"), "{}", run.stdout);
    // The date has whole seconds, so the wait is 2 to 3 seconds; the back-off without the
    // header would be a fifth of a second.
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    let me_requests = env.fake.with_state(|state| {
        state
            .request_log
            .iter()
            .filter(|path| path.starts_with("/api/v3/core/users/me/"))
            .count()
    });
    assert_eq!(me_requests, 2);
}

/// The fake behind HTTPS with `certificate`, and `ca` written to `ca.pem` beside the config.
async fn https_fake(env: &TestEnv, ca: &TestCa, certificate: &ServerCertificate) -> String {
    let front = tls_front(env.fake.addr(), certificate).await;
    std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
    format!("https://{front}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_healthy_with_the_issuing_ca_in_ca_file_and_untrusted_without() {
    let env = TestEnv::start(1).await;
    let ca = TestCa::new("Corp Root CA");
    let base_url = https_fake(&env, &ca, &ca.issue(&["127.0.0.1"], Validity::Current)).await;
    env.write_config_for(&base_url, READER_TOKEN, "ca_file = \"ca.pem\"");
    let run = env.aksync(&["check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("corp: Healthy"), "{}", run.stdout);
    env.write_config_for(&base_url, READER_TOKEN, "");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "tls_untrusted", "{reason}");
    for needle in [
        "TLS failure with 127.0.0.1: its certificate is not trusted (unknown issuer",
        "set `sources.corp.ca_file` to the PEM file of the CA that issued it",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason}");
    }
    // Another CA in ca_file: the message names the file that did not help.
    let other = TestCa::new("Other CA");
    std::fs::write(env.dir.path().join("other.pem"), &other.pem).unwrap();
    env.write_config_for(&base_url, READER_TOKEN, "ca_file = \"other.pem\"");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "tls_untrusted", "{reason}");
    assert!(reason.contains("other.pem"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_says_it_expired() {
    let env = TestEnv::start(1).await;
    let ca = TestCa::new("Corp Root CA");
    let base_url = https_fake(&env, &ca, &ca.issue(&["127.0.0.1"], Validity::Expired)).await;
    env.write_config_for(&base_url, READER_TOKEN, "ca_file = \"ca.pem\"");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "tls_expired", "{reason}");
    assert!(
        reason.contains(
            "TLS failure with 127.0.0.1: its certificate expired on 2001-01-01 00:00:00 UTC: renew"
        ),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_says_the_name_does_not_match() {
    let env = TestEnv::start(1).await;
    let ca = TestCa::new("Corp Root CA");
    let certificate = ca.issue(&["authentik.example.com"], Validity::Current);
    let base_url = https_fake(&env, &ca, &certificate).await;
    env.write_config_for(&base_url, READER_TOKEN, "ca_file = \"ca.pem\"");
    let (code, reason) = reason_of(&env);
    assert_eq!(code, "tls_name_mismatch", "{reason}");
    for needle in [
        "TLS failure with 127.0.0.1: its certificate does not match the name 127.0.0.1",
        "(it holds authentik.example.com)",
        "set `sources.corp.base_url` to a name the certificate holds",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason}");
    }
}
