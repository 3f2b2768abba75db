//! `aksync check`: Healthy for a working token, and each "Needs Attention" reason for the
//! faults an admin must tell apart. Results are stored in the database.

mod common;

use aksync::demo::fake::{
    APP_PASSWORD_TOKEN, NO_PERMISSION_TOKEN, READER_TOKEN, REVOKED_TOKEN, SUPERUSER_TOKEN,
};
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
