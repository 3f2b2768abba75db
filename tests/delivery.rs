//! Webhook delivery that only moves forward: a receiver that keeps rejecting a batch gets the
//! run parked so later runs still go, an admin retries it (with a smaller batch size) or skips
//! it, and `Retry-After` is honoured.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{run_ids as runs, TestEnv};
use serde_json::Value;

/// A receiver that answers 413 to batches larger than `max_batch`, and 429 with
/// `Retry-After: 1` to the first request after `rate_limit` is set.
struct Receiver {
    url: String,
    max_batch: Arc<AtomicUsize>,
    rate_limit: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Value>>>,
}

async fn receiver() -> Receiver {
    let max_batch = Arc::new(AtomicUsize::new(usize::MAX));
    let rate_limit = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (max_in, limit_in, accepted_in) = (max_batch.clone(), rate_limit.clone(), accepted.clone());
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |body: axum::Json<Value>| {
            let (max, limit, accepted) = (max_in.clone(), limit_in.clone(), accepted_in.clone());
            async move {
                use axum::response::IntoResponse;
                if limit.swap(false, Ordering::SeqCst) {
                    return (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [(axum::http::header::RETRY_AFTER, "1")],
                    )
                        .into_response();
                }
                if body["envelopes"].as_array().unwrap().len() > max.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
                }
                accepted.lock().unwrap().push(body.0);
                axum::http::StatusCode::ACCEPTED.into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        max_batch,
        rate_limit,
        accepted,
    }
}

fn with_webhook(env: &TestEnv, base: &str, url: &str, batch_size: usize) {
    std::fs::write(
        &env.config_path,
        format!("{base}\n[output.webhook]\nurl = {url:?}\nbatch_size = {batch_size}\n"),
    )
    .unwrap();
}

fn delivery(env: &TestEnv, run_id: &str) -> aksync::store::DeliveryState {
    env.store().run(run_id).unwrap().delivery.unwrap()
}

fn change(env: &TestEnv, name: &str) {
    env.fake.with_state(|state| {
        state.directory.add_user(name, "internal");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_run_is_parked_and_an_admin_retries_or_skips() {
    use aksync::store::DeliveryStatus::{Delivered, Parked, Pending, Skipped};
    let env = TestEnv::start(10).await;
    let receiver = receiver().await;
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    with_webhook(&env, &base, &receiver.url, 500);
    // The first run's envelopes (every record) are too many for the receiver in one batch.
    receiver.max_batch.store(5, Ordering::SeqCst);
    let first = env.sync_ok();
    assert!(first.stderr.contains("paused"), "{}", first.stderr);
    let run1 = runs(&env)[0].clone();
    assert_eq!(delivery(&env, &run1).rejections, 1);
    change(&env, "second.run");
    env.sync_ok();
    // Still in order: the second run waits behind the first.
    assert_eq!(delivery(&env, &runs(&env)[1]).status, Pending);
    change(&env, "third.run");
    let third = env.sync_ok();
    assert!(
        third.stderr.contains(&format!("--retry {run1}")),
        "{}",
        third.stderr
    );
    let ids = runs(&env);
    assert_eq!(delivery(&env, &run1).status, Parked);
    assert_eq!(delivery(&env, &ids[1]).status, Delivered);
    assert_eq!(delivery(&env, &ids[2]).status, Delivered);
    let listed = env.aksync(&["runs"]);
    assert!(listed.stdout.contains("parked 0/"), "{}", listed.stdout);
    // The period's report tells the auditor the run's evidence never reached the receiver.
    let since = env.store().run(&run1).unwrap().started_at.to_rfc3339();
    for format in ["json", "md"] {
        let out = env.dir.path().join(format!("period.{format}"));
        let report = env.aksync(&[
            "report",
            "--since",
            &since,
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(report.code, 0, "{}", report.stderr);
        let text = std::fs::read_to_string(&out).unwrap();
        if format == "json" {
            let json: Value = serde_json::from_str(&text).unwrap();
            let runs = json["runs"].as_array().unwrap();
            assert_eq!(runs[0]["run_id"], run1.as_str());
            assert_eq!(runs[0]["delivery"]["status"], "parked");
            assert_eq!(runs[1]["delivery"]["status"], "delivered");
        } else {
            assert!(text.contains("webhook delivery parked 0/"), "{text}");
        }
    }

    // A smaller batch size gets past the receiver's limit.
    with_webhook(&env, &base, &receiver.url, 5);
    let retried = env.aksync(&["deliver", "--retry", &run1]);
    assert_eq!(retried.code, 0, "{}", retried.stderr);
    assert!(retried.stdout.contains("delivered"), "{}", retried.stdout);
    let state = delivery(&env, &run1);
    assert_eq!(state.status, Delivered);
    let lines = env.store().run(&run1).unwrap().envelopes.unwrap().lines;
    assert_eq!(state.progress(), lines);
    let accepted = receiver.accepted.lock().unwrap().clone();
    let received: Vec<Value> = accepted
        .iter()
        .filter(|body| body["run_id"] == run1.as_str())
        .flat_map(|body| body["envelopes"].as_array().unwrap().clone())
        .collect();
    let file = std::fs::read_to_string(
        env.state_dir()
            .join("envelopes/corp")
            .join(format!("{run1}.jsonl")),
    )
    .unwrap();
    let expected: Vec<Value> = file
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        received, expected,
        "the parked run arrives whole and in order"
    );

    // A run an admin skips is never sent, and later runs go on.
    receiver.max_batch.store(0, Ordering::SeqCst);
    change(&env, "fourth.run");
    env.sync_ok();
    let run4 = runs(&env)[3].clone();
    let skipped = env.aksync(&["deliver", "--skip", &run4]);
    assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    assert_eq!(delivery(&env, &run4).status, Skipped);
    receiver.max_batch.store(usize::MAX, Ordering::SeqCst);
    let sent_before = receiver.accepted.lock().unwrap().len();
    change(&env, "fifth.run");
    env.sync_ok();
    let accepted = receiver.accepted.lock().unwrap().clone();
    assert!(accepted[sent_before..]
        .iter()
        .all(|body| body["run_id"] != run4.as_str()));
    assert_eq!(delivery(&env, &runs(&env)[4]).status, Delivered);
    // A delivered run cannot be skipped or retried.
    let refused = env.aksync(&["deliver", "--skip", &run1]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("delivered"), "{}", refused.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_within_one_pass() {
    let env = TestEnv::start(5).await;
    let receiver = receiver().await;
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    with_webhook(&env, &base, &receiver.url, 500);
    receiver.rate_limit.store(true, Ordering::SeqCst);
    let synced = env.sync_ok();
    assert!(
        synced.stdout.contains("webhook: delivered"),
        "{}{}",
        synced.stdout,
        synced.stderr
    );
    assert!(
        !receiver.rate_limit.load(Ordering::SeqCst),
        "the 429 was answered"
    );
    assert_eq!(receiver.accepted.lock().unwrap().len(), 1);
}

#[test]
fn delivery_state_only_moves_forward() {
    use aksync::store::{DeliveryState, DeliveryStatus};
    let mut at_two = DeliveryState::pending();
    at_two.envelopes_delivered = Some(2);
    let mut at_one = at_two.clone();
    at_one.envelopes_delivered = Some(1);
    assert!(at_one.advances_to(&at_two));
    assert!(!at_two.advances_to(&at_one), "progress never goes back");
    let mut delivered = at_two.clone();
    delivered.status = DeliveryStatus::Delivered;
    assert!(at_two.advances_to(&delivered));
    assert!(
        !delivered.advances_to(&at_two),
        "delivered never becomes pending again"
    );
    // Schema-1 states counted batches of a fixed size.
    let legacy = DeliveryState {
        envelopes_delivered: None,
        batches_delivered: 3,
        batch_size: 7,
        ..DeliveryState::pending()
    };
    assert_eq!(legacy.progress(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_query_is_redacted_in_logs_stored_errors_and_reports() {
    const SECRET: &str = "s3cr3t-api-key";
    let env = TestEnv::start(5).await;
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    let down = common::receiver().await;
    // A receiver that answers 503, then an address where nothing listens.
    for url in [down.url.clone(), "http://127.0.0.1:1/ingest".to_string()] {
        with_webhook(&env, &base, &format!("{url}?api_key={SECRET}"), 500);
        change(&env, &format!("joiner-{}", url.len()));
        let sync = env.aksync(&["sync"]);
        assert_eq!(sync.code, 0, "{}", sync.stderr);
        assert!(
            sync.stderr.contains("webhook delivery paused") && sync.stderr.contains("?***"),
            "{}",
            sync.stderr
        );
        // The oldest undelivered run holds the receiver's last answer.
        let runs = env.aksync(&["runs", "--json"]);
        assert!(runs.stdout.contains("/ingest?***"), "{}", runs.stdout);
        let mut shown = vec![sync.stdout, sync.stderr, runs.stdout];
        for format in ["md", "html", "json", "csv"] {
            let report = env.aksync(&[
                "report",
                "--since",
                "2000-01-01",
                "--until",
                "2999-01-01",
                "--format",
                format,
            ]);
            assert_eq!(report.code, 0, "{}", report.stderr);
            // Markdown escapes the asterisks.
            assert!(
                report.stdout.contains("/ingest?"),
                "{format}: no delivery error"
            );
            shown.push(report.stdout);
        }
        for text in shown {
            assert!(!text.contains(SECRET), "the query is in:\n{text}");
        }
    }
    for file in walk(&env.state_dir()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(SECRET.len())
                .any(|window| window == SECRET.as_bytes()),
            "the query is in {}",
            file.display()
        );
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_with_the_receiver_down_needs_no_more_memory_than_the_sync() {
    let env = TestEnv::start(20_000).await;
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    // The sync's own peak: the first run of 20,000 people, without a webhook.
    let sync = common::measured(&env, &["sync"], None);
    assert_eq!(sync.run.code, 0, "{}", sync.run.stderr);
    // The same first run again with a webhook whose receiver is down: every envelope waits.
    std::fs::remove_dir_all(env.state_dir()).unwrap();
    let down = common::receiver().await;
    with_webhook(&env, &base, &down.url, 500);
    let sync_with_webhook = common::measured(&env, &["sync"], None);
    assert_eq!(
        sync_with_webhook.run.code, 0,
        "{}",
        sync_with_webhook.run.stderr
    );
    let deliver = common::measured(&env, &["deliver"], None);
    assert!(
        deliver.run.stderr.contains("paused") || deliver.run.stdout.contains("paused"),
        "{}{}",
        deliver.run.stdout,
        deliver.run.stderr
    );
    let run = runs(&env)[0].clone();
    assert_eq!(
        delivery(&env, &run).status,
        aksync::store::DeliveryStatus::Pending
    );
    let file = env.state_dir().join(format!("envelopes/corp/{run}.jsonl"));
    let file_mib = std::fs::metadata(&file).unwrap().len() / (1 << 20);
    // Reading that file whole (and parsing it) costs several times its size.
    assert!(file_mib >= 20, "the outbox is only {file_mib} MiB");
    let bound = sync.max_rss_kib * 12 / 10;
    for (what, measured) in [("sync", &sync_with_webhook), ("deliver", &deliver)] {
        assert!(
            measured.max_rss_kib <= bound,
            "{what} with the receiver down peaked at {} KiB, the sync alone at {} KiB ({file_mib} MiB outbox)",
            measured.max_rss_kib,
            sync.max_rss_kib
        );
    }
}

/// Three runs, each with a joiner, delivered to `url` under `[retention] keep_runs = 1`; their
/// ids, oldest first.
fn three_runs_keeping_one(env: &TestEnv, url: &str) -> Vec<String> {
    let base = std::fs::read_to_string(&env.config_path).unwrap();
    with_webhook(
        env,
        &format!("{base}\n[retention]\nkeep_runs = 1\n"),
        url,
        500,
    );
    for name in ["first", "second", "third"] {
        change(env, name);
        env.sync_ok();
    }
    runs(env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_delivery_no_longer_holds_retention() {
    use aksync::store::DeliveryStatus::Pending;
    let env = TestEnv::start(10).await;
    let down = common::receiver().await;
    let ids = three_runs_keeping_one(&env, &down.url);
    assert!(ids.iter().all(|id| delivery(&env, id).status == Pending));
    let kept_from = |env: &TestEnv| {
        env.store()
            .reader()
            .unwrap()
            .snapshots_kept_from("corp")
            .unwrap()
    };
    // Undelivered, every run keeps its snapshot (and the one it was compared with).
    let pruned = env.aksync(&["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert_eq!(kept_from(&env), None);
    // Once the first two are skipped, the first is history: the third still needs the
    // second, the run it was compared with, to rebuild its outbox.
    for id in &ids[..2] {
        let skipped = env.aksync(&["deliver", "--skip", id]);
        assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    }
    let pruned = env.aksync(&["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert_eq!(kept_from(&env).as_deref(), Some(ids[1].as_str()));
    let shown = env.aksync(&["show", "accounts", "--run", &ids[0]]);
    assert!(
        shown.stderr.contains("removed by [retention]"),
        "{}",
        shown.stderr
    );
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_cannot_be_rebuilt_parks_its_run_and_later_runs_go() {
    use aksync::store::DeliveryStatus::{Delivered, Parked};
    let env = TestEnv::start(10).await;
    let receiver = common::receiver().await;
    let ids = three_runs_keeping_one(&env, &receiver.url);
    // Skipped, the first run's snapshot and outbox go with retention; an admin then changes
    // their mind about it, and about the third.
    for id in &ids {
        let skipped = env.aksync(&["deliver", "--skip", id]);
        assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    }
    let pruned = env.aksync(&["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let outbox = env
        .state_dir()
        .join(format!("envelopes/corp/{}.jsonl", ids[0]));
    assert!(!outbox.exists());
    let third = env.aksync(&["deliver", "--retry", &ids[2]]);
    assert!(third.stderr.contains("paused"), "{}", third.stderr);
    receiver.down.store(false, Ordering::SeqCst);
    let delivered = env.aksync(&["deliver", "--retry", &ids[0]]);
    assert_eq!(
        delivered.code, 0,
        "{}{}",
        delivered.stdout, delivered.stderr
    );
    let first = delivery(&env, &ids[0]);
    assert_eq!(first.status, Parked, "{first:?}");
    let error = first.last_error.unwrap();
    assert!(
        error.contains("rebuilding it failed") && error.contains("removed by [retention]"),
        "{error}"
    );
    assert!(
        delivered
            .stderr
            .contains("its envelope file cannot be read or rebuilt")
            && !delivered.stderr.contains("kept rejecting")
            && delivered.stderr.contains(&format!("--skip {}", ids[0])),
        "{}",
        delivered.stderr
    );
    // The run after it went in the same pass.
    assert_eq!(delivery(&env, &ids[2]).status, Delivered);
    assert!(receiver
        .batches()
        .iter()
        .all(|(run, _)| run.as_str() != ids[0]));
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 0, "{}{}", verified.stdout, verified.stderr);
}
