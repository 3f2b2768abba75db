//! Access reviews and point-in-time questions (issue 18): the real binary against the fake
//! server. `show --at` picks the run in force, nested groups and roles are expanded with the
//! path that grants them (a cycle included), privileged accounts say since when, and a review
//! goes out as CSV, XLSX, HTML and JSON, comes back completed, is checked row by row, and its
//! revocations are followed into later runs.

mod common;

use std::collections::BTreeMap;

use aksync::demo::fake::{Directory, READER_TOKEN};
use aksync::output::sheet::{self, Sheet};
use common::{TestEnv, SEED};
use serde_json::Value;

/// A small directory with a nested hierarchy: Team → Dept → {Org, Audit} (Dept has two
/// parents), Org holding role `org-viewer`; CycA ⇄ CycB, a cycle; and people placed to raise
/// each review flag.
fn directory() -> Directory {
    let mut directory = Directory::generate(SEED, 8);
    let org = directory.add_group("Org", &[], false);
    let audit = directory.add_group("Audit", &[], false);
    let dept = directory.add_group("Dept", &[&org, &audit], false);
    let team = directory.add_group("Team", &[&dept], false);
    let viewer = directory.add_role("org-viewer");
    directory.groups.get_mut(&org).unwrap().roles.push(viewer);
    let cyc_a = directory.add_group("CycA", &[], false);
    let cyc_b = directory.add_group("CycB", &[&cyc_a], false);
    directory
        .groups
        .get_mut(&cyc_a)
        .unwrap()
        .parents
        .push(cyc_b);
    let admins = directory
        .group_by_name("authentik Admins")
        .unwrap()
        .pk
        .clone();
    let add = |directory: &mut Directory, name: &str, kind: &str, groups: &[&str]| {
        let pk = directory.add_user(name, kind);
        let user = directory.users.get_mut(&pk).unwrap();
        user.email = format!("{name}@example.com");
        user.name = format!("{name} Person");
        user.last_login = Some(aksync::clock::Clock::now(&aksync::clock::SystemClock).to_rfc3339());
        user.groups = groups.iter().map(|g| g.to_string()).collect();
    };
    add(&mut directory, "cyril", "internal", &[&cyc_a]);
    add(&mut directory, "gina.guest", "external", &[&admins]);
    add(&mut directory, "svc-deploy", "service_account", &[&admins]);
    add(&mut directory, "ivan.inactive", "internal", &[&team]);
    directory
        .user_by_username_mut("ivan.inactive")
        .unwrap()
        .is_active = false;
    add(&mut directory, "olga.old", "internal", &[&team]);
    directory
        .user_by_username_mut("olga.old")
        .unwrap()
        .last_login = Some("2020-01-01T00:00:00Z".to_string());
    directory
}

fn group_pk(env: &TestEnv, name: &str) -> String {
    env.fake
        .with_state(|state| state.directory.group_by_name(name).unwrap().pk.clone())
}

fn set_groups(env: &TestEnv, username: &str, groups: &[&str]) {
    let pks: Vec<String> = groups.iter().map(|g| group_pk(env, g)).collect();
    env.fake.with_state(|state| {
        state
            .directory
            .user_by_username_mut(username)
            .unwrap()
            .groups = pks;
    });
}

async fn env() -> TestEnv {
    let env = TestEnv::with_directory(directory()).await;
    env.write_config(
        READER_TOKEN,
        &format!(
            "privileged_groups = [\"Org\"]\nprivileged_roles = [\"org-viewer\"]\n{}",
            TestEnv::NO_QUARANTINE
        ),
    );
    env
}

/// The complete runs, oldest first, with their end as the store has it (RFC 3339, full
/// precision).
fn runs(env: &TestEnv) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    env.store()
        .complete_runs("corp")
        .unwrap()
        .into_iter()
        .map(|run| (run.run_id, run.finished_at))
        .collect()
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn show(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["show"];
    all.extend_from_slice(args);
    all.push("--json");
    let shown = env.aksync(&all);
    assert_eq!(shown.code, 0, "{all:?}: {}", shown.stderr);
    shown.json().as_array().unwrap().clone()
}

/// `(group or role name, granted)` of rows, sorted.
fn grants(rows: &[Value], name: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = rows
        .iter()
        .map(|row| {
            (
                row[name].as_str().unwrap().to_string(),
                row["granted"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_at_picks_the_run_in_force_and_expands_nesting_roles_and_privilege() {
    let env = env().await;
    // r1: nina is in no group; r2: in Team (privileged through Dept → Org); r3: nothing
    // changes; r4: out of Team again.
    env.fake.with_state(|state| {
        state.directory.add_user("nina", "internal");
    });
    env.sync_ok();
    set_groups(&env, "nina", &["Team"]);
    env.sync_ok();
    // A failed run between r2 and r3 is never the run in force.
    env.fake.with_state(|state| {
        state.faults.push(aksync::demo::fake::Fault {
            path_contains: "/core/users/?".into(),
            skip: 0,
            times: None,
            status: 500,
            body: b"{}".to_vec(),
            retry_after: None,
            location: None,
        })
    });
    assert_eq!(env.aksync(&["sync"]).code, 1);
    env.fake.with_state(|state| state.faults.clear());
    let failed = env.store().runs(Some("corp")).unwrap().remove(0);
    assert_eq!(failed.status.as_str(), "failed");
    env.sync_ok();
    set_groups(&env, "nina", &[]);
    env.sync_ok();
    let runs = runs(&env);
    assert_eq!(runs.len(), 4);
    let (r1, r2, r3, r4) = (&runs[0], &runs[1], &runs[2], &runs[3]);

    // --at resolves to the last complete run that finished at or before it.
    let at = |at: chrono::DateTime<chrono::Utc>| {
        let rows = show(
            &env,
            &[
                "memberships",
                "--at",
                &rfc3339(at),
                "--account",
                "nina",
                "--effective",
            ],
        );
        let run = rows
            .first()
            .map(|row| row["run_id"].as_str().unwrap().to_string());
        (run, grants(&rows, "group_name"))
    };
    assert_eq!(at(r2.1).0.as_deref(), Some(r2.0.as_str()));
    assert_eq!(
        at(r3.1 - chrono::Duration::nanoseconds(1)).0.as_deref(),
        Some(r2.0.as_str())
    );
    assert_eq!(at(r3.1).0.as_deref(), Some(r3.0.as_str()));
    assert_eq!(at(failed.finished_at).0.as_deref(), Some(r2.0.as_str()));
    assert_eq!(at(r4.1).1, []);
    assert_eq!(at(r2.1 - chrono::Duration::nanoseconds(1)).1, []);
    // Three levels, a group with two parents, each with its path.
    assert_eq!(
        at(r2.1).1,
        [
            ("Audit".to_string(), "via Team → Dept".to_string()),
            ("Dept".to_string(), "via Team".to_string()),
            ("Org".to_string(), "via Team → Dept".to_string()),
            ("Team".to_string(), "direct".to_string()),
        ]
    );
    // Without --effective: the direct group only, named on both sides.
    let direct = show(&env, &["memberships", "--run", &r2.0, "--account", "nina"]);
    assert_eq!(direct.len(), 1);
    assert_eq!(direct[0]["username"], "nina");
    assert_eq!(direct[0]["group_name"], "Team");
    assert_eq!(direct[0]["granted"], "direct");
    // The table says which run it read; a date means the end of that day.
    let today = aksync::clock::Clock::now(&aksync::clock::SystemClock)
        .format("%Y-%m-%d")
        .to_string();
    let table = env.aksync(&["show", "memberships", "--at", &today, "--group", "Team"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let first = table.stdout.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("# run {} of source `corp`", r4.0)),
        "{first}"
    );
    assert!(table.stdout.contains("olga.old"), "{}", table.stdout);
    let before = env.aksync(&["show", "accounts", "--at", "2020-01-01"]);
    assert_eq!(before.code, 1);
    assert!(
        before.stderr.contains(
            "no complete run of source `corp` finished at or before 2020-01-01T23:59:59Z"
        ),
        "{}",
        before.stderr
    );
    let bad = env.aksync(&["show", "accounts", "--at", "March 3rd"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--at \"March 3rd\" is not a time"),
        "{}",
        bad.stderr
    );

    // A cycle does not hang the expansion, and is reported.
    let warned = env.aksync(&["show", "memberships", "--effective", "--account", "cyril"]);
    assert!(
        warned.stderr.contains("has a cycle: CycA → CycB → CycA"),
        "{}",
        warned.stderr
    );
    let cyril = show(&env, &["memberships", "--effective", "--account", "cyril"]);
    assert_eq!(
        grants(&cyril, "group_name"),
        [
            ("CycA".to_string(), "direct".to_string()),
            ("CycB".to_string(), "via CycA".to_string())
        ]
    );

    // Roles: through a parent group, with the path.
    let roles = show(&env, &["roles", "--run", &r2.0, "--account", "nina"]);
    assert_eq!(
        grants(&roles, "role"),
        [(
            "org-viewer".to_string(),
            "via Team → Dept → Org".to_string()
        )]
    );
    assert!(show(&env, &["roles", "--account", "nina"]).is_empty());

    // Who had privileged access at r3, and since when: nina since r2, exactly; the
    // administrator since the first run or earlier.
    let privileged = show(&env, &["accounts", "--at", &rfc3339(r3.1), "--privileged"]);
    let by_name: BTreeMap<&str, &Value> = privileged
        .iter()
        .map(|row| (row["username"].as_str().unwrap(), row))
        .collect();
    let nina = by_name["nina"];
    assert_eq!(nina["privilege"], "Team → Dept → Org");
    assert_eq!(nina["privileged_since_run"], r2.0.as_str());
    assert_eq!(
        nina["privileged_since"],
        r2.1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(nina["run_id"], r3.0.as_str());
    let admin = by_name["akadmin"];
    assert_eq!(admin["privileged_since_run"], r1.0.as_str());
    assert!(admin["privileged_since"]
        .as_str()
        .unwrap()
        .ends_with("or earlier"));
    // The guest and the service account in the admins' group, by type.
    let guests = show(&env, &["accounts", "--privileged", "--type", "guest"]);
    assert_eq!(guests.len(), 1);
    assert_eq!(guests[0]["username"], "gina.guest");
    let latest = show(&env, &["accounts", "--privileged"]);
    assert!(latest.iter().all(|row| row["username"] != "nina"));
    let inactive = show(&env, &["accounts", "--status", "inactive"]);
    assert!(inactive
        .iter()
        .any(|row| row["username"] == "ivan.inactive"));
    assert!(inactive.iter().all(|row| row["status"] == "INACTIVE"));
    let misplaced = env.aksync(&["show", "groups", "--privileged"]);
    assert_eq!(misplaced.code, 2);
    assert!(
        misplaced
            .stderr
            .contains("--privileged applies to `show accounts`"),
        "{}",
        misplaced.stderr
    );
}

/// The review's rows by (username, access), each as column → cell.
fn rows_of(sheet: &Sheet) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    sheet
        .rows
        .iter()
        .map(|row| {
            let cells: BTreeMap<String, String> = sheet
                .columns
                .iter()
                .cloned()
                .zip(row.iter().cloned())
                .collect();
            ((cells["username"].clone(), cells["access"].clone()), cells)
        })
        .collect()
}

fn header(sheet: &Sheet, key: &str) -> String {
    sheet
        .header
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", sheet.header))
        .1
        .clone()
}

/// Sets one row's reviewer columns.
fn decide(sheet: &mut Sheet, username: &str, access: &str, decision: &str) {
    let column = |name: &str| sheet.columns.iter().position(|c| c == name).unwrap();
    let (user, acc, dec, rev, at, comment) = (
        column("username"),
        column("access"),
        column("decision"),
        column("reviewer"),
        column("reviewed_at"),
        column("comment"),
    );
    let row = sheet
        .rows
        .iter_mut()
        .find(|row| row[user] == username && row[acc] == access)
        .unwrap_or_else(|| panic!("no row {username} / {access}"));
    row[dec] = decision.to_string();
    row[rev] = "Ann Auditor".to_string();
    row[at] = "2026-12-01".to_string();
    row[comment] = format!("{decision}, said \"Ann\", =not a formula");
}

/// Imports a file that must be refused, with `expected` in the error.
fn refused(env: &TestEnv, sheet: &Sheet, name: &str, expected: &str) {
    let refused = import(env, sheet, name);
    assert_eq!(refused.code, 1, "{name}: {}", refused.stdout);
    assert!(
        refused.stderr.contains(expected),
        "{name}: {}",
        refused.stderr
    );
}

fn import(env: &TestEnv, sheet: &Sheet, name: &str) -> common::Run {
    let path = env.dir.path().join(name);
    let bytes = match name.ends_with(".xlsx") {
        true => sheet::write_xlsx(sheet).unwrap(),
        false => {
            let mut bytes = Vec::new();
            sheet::write_csv(sheet, &mut bytes).unwrap();
            bytes
        }
    };
    std::fs::write(&path, bytes).unwrap();
    env.aksync(&["review", "import", path.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_goes_out_comes_back_completed_and_its_revocations_are_followed() {
    let env = env().await;
    env.sync_ok();
    let r1 = runs(&env)[0].0.clone();

    // CSV: the rows and flags of the known directory.
    let csv = env.aksync(&["review"]);
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    assert!(
        csv.stderr
            .contains("the group hierarchy has a cycle: CycA → CycB → CycA"),
        "{}",
        csv.stderr
    );
    let exported = sheet::read_csv(csv.stdout.as_bytes()).unwrap();
    assert_eq!(exported.title, "aksync access review");
    assert_eq!(header(&exported, "run_id"), r1);
    assert_eq!(header(&exported, "source"), "corp");
    assert_eq!(header(&exported, "no_login_days"), "90");
    assert!(header(&exported, "reperform")
        .starts_with(&format!("aksync review --source corp --run {r1}")));
    assert_eq!(header(&exported, "snapshot_digest").len(), 64);
    let rows = rows_of(&exported);
    assert_eq!(header(&exported, "rows"), rows.len().to_string());
    let row = |user: &str, access: &str| -> &BTreeMap<String, String> {
        rows.get(&(user.to_string(), access.to_string()))
            .unwrap_or_else(|| panic!("no row {user} / {access} in {:?}", rows.keys()))
    };
    let olga_org = row("olga.old", "Org");
    assert_eq!(olga_org["granted"], "via Team → Dept");
    assert_eq!(olga_org["privileged"], "yes");
    assert_eq!(olga_org["access_type"], "group");
    assert_eq!(olga_org["flags"], "no_login_90d");
    assert_eq!(olga_org["decision"], "");
    assert!(!olga_org["first_seen"].is_empty());
    let olga_role = row("olga.old", "org-viewer");
    assert_eq!(olga_role["access_type"], "role");
    assert_eq!(olga_role["granted"], "via Team → Dept → Org");
    assert_eq!(olga_role["privileged"], "yes");
    assert_eq!(row("olga.old", "Audit")["privileged"], "no");
    assert_eq!(
        row("ivan.inactive", "Team")["flags"],
        "inactive_with_access"
    );
    assert_eq!(
        row("gina.guest", "authentik Admins")["flags"],
        "external_privileged"
    );
    assert_eq!(
        row("svc-deploy", "authentik Admins")["flags"],
        "service_privileged"
    );
    assert_eq!(row("cyril", "CycB")["granted"], "via CycA");
    assert_eq!(row("cyril", "CycA")["flags"], "");

    // The selection narrows the rows, and names itself in the header.
    let narrowed = env.aksync(&[
        "review",
        "--group",
        "Org",
        "--privileged-only",
        "--format",
        "json",
    ]);
    assert_eq!(narrowed.code, 0, "{}", narrowed.stderr);
    let narrowed = narrowed.json();
    let narrowed_rows = narrowed["rows"].as_array().unwrap();
    assert!(!narrowed_rows.is_empty());
    assert!(narrowed_rows.iter().all(|row| row["privileged"] == "yes"));
    assert!(narrowed_rows
        .iter()
        .all(|row| row["access"] == "Org" || row["granted"].as_str().unwrap().contains("Org")));
    let unknown = env.aksync(&["review", "--group", "Nope"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("no group \"Nope\""),
        "{}",
        unknown.stderr
    );

    // HTML: the same review, escaped, printable.
    let html = env.aksync(&["review", "--format", "html"]);
    assert_eq!(html.code, 0, "{}", html.stderr);
    assert!(html.stdout.contains("aksync access review"));
    assert!(html.stdout.contains(&header(&exported, "review_id")));
    assert!(html.stdout.contains("olga.old"));

    // XLSX: read back with calamine, with the decision dropdown.
    let xlsx_path = env.dir.path().join("review.xlsx");
    let written = env.aksync(&[
        "review",
        "--format",
        "xlsx",
        "--out",
        xlsx_path.to_str().unwrap(),
    ]);
    assert_eq!(written.code, 0, "{}", written.stderr);
    let bytes = std::fs::read(&xlsx_path).unwrap();
    let workbook = sheet::read_xlsx(&bytes).unwrap();
    assert_eq!(workbook.columns, exported.columns);
    assert_eq!(rows_of(&workbook), rows);
    assert_eq!(
        header(&workbook, "review_id"),
        header(&exported, "review_id")
    );
    let validations = sheet::xlsx_validations(&bytes).unwrap();
    let decision_column = exported
        .columns
        .iter()
        .position(|c| c == "decision")
        .unwrap();
    let letter = (b'A' + decision_column as u8) as char;
    assert!(
        validations
            .iter()
            .any(|(range, values)| range.starts_with(&format!("{letter}2"))
                && values == &["keep".to_string(), "revoke".to_string()]),
        "{validations:?}"
    );
    let no_out = env.aksync(&["review", "--format", "xlsx"]);
    assert_eq!(no_out.code, 2);

    // Bad files are refused with the row named, and nothing is recorded.
    let mut completed = workbook.clone();
    decide(&mut completed, "olga.old", "Org", "revoke");
    decide(&mut completed, "olga.old", "org-viewer", "revoke");
    decide(&mut completed, "gina.guest", "authentik Admins", "keep");
    let mut maybe = completed.clone();
    decide(&mut maybe, "cyril", "CycA", "maybe");
    refused(
        &env,
        &maybe,
        "maybe.xlsx",
        "decision \"maybe\" (cyril) is not `keep` or `revoke`",
    );
    let mut tampered = completed.clone();
    for (key, value) in tampered.header.iter_mut() {
        if key == "selection_privileged_only" {
            *value = "true".to_string();
        }
    }
    refused(&env, &tampered, "tampered.csv", "the header was changed");
    let mut short = completed.clone();
    short.rows.pop();
    refused(&env, &short, "short.csv", "1 of the review's");
    let mut edited = completed.clone();
    let user = edited
        .columns
        .iter()
        .position(|c| c == "account_external_id")
        .unwrap();
    edited.rows[0][user] = "mallory".to_string();
    refused(
        &env,
        &edited,
        "edited.csv",
        "row 1 below the column row: account_external_id says \"mallory\"",
    );
    let none = env.aksync(&["review", "status"]);
    assert_eq!(none.code, 0, "{}", none.stderr);
    assert!(
        none.stdout.contains("no revocations decided"),
        "{}",
        none.stdout
    );

    // The completed workbook is recorded: both revocations are pending.
    let imported = import(&env, &completed, "completed.xlsx");
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(
        imported
            .stdout
            .contains("recorded 3 decision(s) in the evidence ledger: 1 keep, 2 revoke"),
        "{}",
        imported.stdout
    );
    assert_eq!(
        imported.stdout.matches("PENDING").count(),
        2,
        "{}",
        imported.stdout
    );
    env.verify_ok("after the import");
    let again = import(&env, &completed, "completed.xlsx");
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again
            .stdout
            .contains("these decisions replace those imported at"),
        "{}",
        again.stdout
    );

    // The period report lists each import as it was recorded, and the revocations.
    let report = env.aksync(&["report", "--since", "2020-01-01", "--format", "json"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let imports = report.json()["period"]["access_reviews"].clone();
    let imports = imports.as_array().unwrap();
    assert_eq!(imports.len(), 2);
    assert_eq!(
        imports[0]["review_id"],
        header(&exported, "review_id").as_str()
    );
    assert_eq!(imports[0]["file"]["name"], "completed.xlsx");
    assert_eq!(imports[0]["entry_digest"].as_str().unwrap().len(), 64);
    let markdown = env.aksync(&["report", "--since", "2020-01-01"]);
    assert!(
        markdown.stdout.contains("Access reviews imported (2)"),
        "{}",
        markdown.stdout
    );
    assert!(
        markdown.stdout.contains("Revocations decided (4)"),
        "{}",
        markdown.stdout
    );
    let csv = env.aksync(&["report", "--since", "2020-01-01", "--format", "csv"]);
    assert_eq!(
        csv.stdout.matches("access_revoke_decided").count(),
        4,
        "{}",
        csv.stdout
    );

    // Upstream, olga leaves Team: her Org membership and the role through it go. The next
    // run carries both revocations out.
    set_groups(&env, "olga.old", &[]);
    env.sync_ok();
    let r2 = runs(&env)[1].0.clone();
    let status = env.aksync(&["review", "status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status = status.json();
    let reviews = status["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["run_id"], r1.as_str());
    assert_eq!(
        reviews[0]["review_id"],
        header(&exported, "review_id").as_str()
    );
    assert_eq!(
        (reviews[0]["keep"].as_u64(), reviews[0]["revoke"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(reviews[0]["file"]["name"], "completed.xlsx");
    assert_eq!(
        reviews[0]["undecided"].as_u64().unwrap() + 3,
        reviews[0]["rows"].as_u64().unwrap()
    );
    let revocations = status["revocations"].as_array().unwrap();
    assert_eq!(revocations.len(), 2);
    for revocation in revocations {
        assert_eq!(revocation["state"], "carried_out", "{revocation}");
        assert_eq!(revocation["run_id"], r2.as_str());
        assert_eq!(revocation["review_run"], r1.as_str());
        assert_eq!(revocation["reviewer"], "Ann Auditor");
        assert_eq!(revocation["decision"], "revoke");
        assert!(revocation["comment"]
            .as_str()
            .unwrap()
            .contains("=not a formula"));
    }

    // A CSV round trip of a later review: a revocation not carried out stays pending.
    let second = env.aksync(&["review", "--group", "authentik Admins"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let mut second = sheet::read_csv(second.stdout.as_bytes()).unwrap();
    // Reviewed at r2, the membership is first seen when r1 saw it.
    let r1_end = runs(&env)[0]
        .1
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let svc = rows_of(&second)[&("svc-deploy".to_string(), "authentik Admins".to_string())].clone();
    assert_eq!(svc["first_seen"], r1_end);
    assert_eq!(header(&second, "run_id"), r2);
    decide(&mut second, "svc-deploy", "authentik Admins", "revoke");
    let imported = import(&env, &second, "second.csv");
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    env.sync_ok();
    let status = env.aksync(&["review", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains("PENDING: still held in run"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stderr
            .contains("2 review(s) recorded; 3 revocation(s) decided, 2 carried out, 1 pending"),
        "{}",
        status.stderr
    );
    env.verify_ok("after the second import");

    // The reviews are found through an index of their own, which verify checks against
    // the chain: a review hidden from it is found out.
    {
        let db = redb::Database::open(env.database()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let definition = redb::TableDefinition::<&str, &[u8]>::new("ledger_reviews");
            let mut index = txn.open_table(definition).unwrap();
            index.retain(|_, _| false).unwrap();
        }
        txn.commit().unwrap();
    }
    let verified = env.aksync(&["verify"]);
    assert_eq!(verified.code, 1, "{}", verified.stdout);
    assert!(
        verified
            .stdout
            .contains("the index of access review decisions names entries []"),
        "{}",
        verified.stdout
    );
}
