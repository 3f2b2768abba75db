//! Deletions are confirmed (issue 17): before a run reports an account or a group deleted,
//! it asks Authentik for it by its id, and only a 404 confirms it. The real binary against
//! the fake server: a real deletion, a listing that skipped a user who still exists, a
//! confirmation that gets no answer, a deleted group, and more deletions than a run asks about.

mod common;

use aksync::demo::fake::{Directory, Fault, ListKind, PageHook, READER_TOKEN};
use aksync::store::RunStatus;
use common::{remove_people, run_ids, TestEnv};

/// The detail requests the fake answered for `/api/v3/core/{kind}/<id>/`, in arrival order.
fn lookups(env: &TestEnv, kind: &str) -> Vec<String> {
    let prefix = format!("/api/v3/core/{kind}/");
    env.fake.with_state(|state| {
        state
            .request_log
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix))
            .filter(|rest| !rest.starts_with('?') && !rest.starts_with("me/"))
            .map(|rest| rest.trim_end_matches('/').to_string())
            .collect()
    })
}

/// A directory of a dozen people with the source's `extra` keys, which loses a few of them
/// without quarantine.
async fn small_directory(extra: &str) -> TestEnv {
    let env = TestEnv::start(12).await;
    env.write_config(READER_TOKEN, &format!("{}{extra}", TestEnv::NO_QUARANTINE));
    env
}

fn latest_complete(env: &TestEnv) -> String {
    env.store().latest_complete("corp").unwrap().unwrap().run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_confirmed_and_an_unanswered_confirmation_fails_the_run() {
    let env = small_directory("").await;
    env.sync_ok();
    let first = latest_complete(&env);
    let gone = remove_people(&env, 1).remove(0);
    let detail = format!("/api/v3/core/users/{}/?", gone.pk);

    // Authentik does not answer for it: nothing says the account is gone.
    env.fake.with_state(|state| {
        state.faults.push(Fault {
            path_contains: detail.clone(),
            skip: 0,
            times: None,
            status: 503,
            body: b"<html>Service Unavailable</html>".to_vec(),
            retry_after: None,
            location: None,
        })
    });
    let unanswered = env.aksync(&["sync"]);
    assert_eq!(
        unanswered.code, 1,
        "{}{}",
        unanswered.stdout, unanswered.stderr
    );
    let runs = env.store().runs(Some("corp")).unwrap();
    assert_eq!(runs[0].status, RunStatus::Failed);
    let error = runs[0].error.clone().unwrap();
    assert!(
        error.starts_with(&format!(
            "cannot confirm that account `{}` was deleted",
            gone.username
        )) && error.contains("HTTP 503"),
        "{error}"
    );
    assert_eq!(latest_complete(&env), first, "nothing stored");

    env.fake.with_state(|state| state.faults.clear());
    env.sync_ok();
    assert_eq!(
        lookups(&env, "users"),
        (0..5).map(|_| gone.pk.to_string()).collect::<Vec<_>>(),
        "four attempts while it failed, one that confirmed"
    );
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    let leavers = diff["leavers"].as_array().unwrap();
    assert_eq!(leavers.len(), 1, "{diff}");
    assert_eq!(leavers[0]["username"], gone.username.as_str());
    assert_eq!(leavers[0]["reason"], "deleted");
}

/// Users page 2 is served after a user of page 1 was deleted and another created: the first
/// user of page 2 moves back onto page 1, which was already read, and the count stays the
/// same. The listing skipped a user who still exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_listing_skipped_fails_the_run_naming_it() {
    let env = small_directory("page_size = 5\nconcurrency = 1\n").await;
    let (skipped, shifted) = env.fake.with_state(|state| {
        let directory = &mut state.directory;
        // Anyone but the token's own user, whom a complete listing must contain.
        let reader = directory.tokens[READER_TOKEN].user_pk;
        let by_pk: Vec<i64> = directory.users.keys().copied().collect();
        let skipped = by_pk[5];
        let shifted = by_pk[1..5].iter().copied().find(|pk| *pk != reader);
        assert_ne!(skipped, reader);
        let shifted = shifted.expect("someone on page 1 to delete");
        // Without groups: the groups listing names their members, and a member missing from
        // the users listing is an inconsistency of its own, which a second read repairs.
        for pk in [skipped, shifted] {
            directory.users.get_mut(&pk).unwrap().groups.clear();
        }
        // Its name is quoted as the directory spells it, hazards escaped.
        directory.users.get_mut(&skipped).unwrap().username = "skipped\u{1b}[2J.user".into();
        (skipped, shifted)
    });
    env.sync_ok();
    let first = latest_complete(&env);
    env.fake.with_state(|state| {
        state.page_hooks.push(PageHook {
            list: ListKind::Users,
            page: 2,
            action: Box::new(move |directory: &mut Directory| {
                directory.users.remove(&shifted);
                directory.add_user("late.joiner", "internal");
            }),
        })
    });

    let run = env.aksync(&["sync"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(lookups(&env, "users"), [skipped.to_string()]);
    let runs = env.store().runs(Some("corp")).unwrap();
    assert_eq!(runs[0].status, RunStatus::Failed);
    let error = runs[0].error.clone().unwrap();
    assert!(
        error.starts_with("account `skipped\\u{1b}[2J.user` is missing from the listing")
            && error.contains("the listing was incomplete")
            && !error.contains('\n'),
        "{error}"
    );
    assert!(
        run.stdout.contains("skipped\\u{1b}[2J.user") && !run.stdout.contains('\u{1b}'),
        "{}",
        run.stdout
    );
    // No leaver, no joiner: the run stored nothing, and the one before is still the latest.
    assert_eq!(latest_complete(&env), first);
    assert_eq!(runs[0].changes, None);
    let accounts = env.aksync(&["show", "accounts", "--json"]).stdout;
    assert!(accounts.contains("skipped") && !accounts.contains("late.joiner"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_is_confirmed() {
    let env = small_directory("max_membership_removals = 1000\n").await;
    env.sync_ok();
    let (uuid, name) = env.fake.with_state(|state| {
        let group = state.directory.group_by_name("Finance").unwrap().clone();
        state.directory.remove_group(&group.pk);
        (group.pk, group.name)
    });
    env.sync_ok();
    assert_eq!(lookups(&env, "groups"), std::slice::from_ref(&uuid));
    assert!(lookups(&env, "users").is_empty());
    let diff = env.aksync(&["diff", "previous", "latest", "--json"]).json();
    assert_eq!(diff["groups"]["deleted"][0]["external_id"], uuid.as_str());
    assert_eq!(diff["groups"]["deleted"][0]["display_name"], name.as_str());
}

/// 201 deletions are more than a run confirms: it asks about none and is held, even with
/// thresholds that would let that many leavers through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_deletions_than_are_confirmed_quarantine_the_run() {
    let env = TestEnv::start(1000).await;
    env.write_config(
        READER_TOKEN,
        "max_leavers = 100000\nmax_leaver_percent = 100.0\nmax_membership_removals = 100000\nmax_membership_removal_percent = 100.0\n",
    );
    env.sync_ok();
    let first = latest_complete(&env);
    remove_people(&env, 201);

    let held = env.aksync(&["sync"]);
    assert_eq!(held.code, 1, "{}{}", held.stdout, held.stderr);
    assert!(lookups(&env, "users").is_empty(), "nothing asked");
    let reason = "201 deletions, more than the 200 aksync confirms one by one: approve the run after checking them in Authentik";
    assert!(
        held.stdout.contains("QUARANTINED") && held.stdout.contains(reason),
        "{}",
        held.stdout
    );
    let quarantined = env.store().run(&run_ids(&env)[1]).unwrap();
    assert_eq!(quarantined.status, RunStatus::Quarantined);
    assert_eq!(quarantined.quarantine.unwrap().reasons, [reason]);
    assert_eq!(latest_complete(&env), first);
}
