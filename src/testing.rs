//! Test support: a source whose runs go through the real pipeline (collect → plan → commit)
//! from hand-written raw Authentik objects, without HTTP.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::Value;

use crate::config::SourceConfig;
use crate::output::envelope::{envelope_path, parse_jsonl, Envelope};
use crate::run::collect::Collector;
use crate::run::sync::{CompleteRun, Rejected, SyncedRun};
use crate::store::{RunOutcome, Store};

pub(crate) fn source_config() -> SourceConfig {
    SourceConfig {
        name: "corp".into(),
        base_url: crate::config::normalize_base_url("https://ak.example.com", false).unwrap(),
        token: crate::config::TokenSource::Inline(crate::config::secret::ApiToken::new("t")),
        primary_directory: false,
        disable_group_sync: false,
        filter: None,
        group_filter: None,
        on_filter_error: Default::default(),
        page_size: 100,
        concurrency: 4,
        timeout: std::time::Duration::from_secs(60),
        max_page_bytes: 64 * 1024 * 1024,
        run_timeout: std::time::Duration::from_secs(7200),
        ca_file: None,
        allow_insecure_http: false,
        ignore_fields: Vec::new(),
        ignore_fields_as_written: Vec::new(),
        schedule: crate::config::schedule::Schedule::default(),
        run_on_start: true,
        privileged_groups: Vec::new(),
        privileged_roles: Vec::new(),
        hr_key_field: None,
        sla: None,
        expected_interval: None,
        unhealthy_after_failures: 1,
        // Unit tests change a handful of records in directories of a few: quarantine has
        // its own tests (`run::quarantine`, tests/quarantine.rs).
        quarantine: crate::config::QuarantineThresholds {
            max_leavers: u64::MAX,
            max_leaver_percent: 100.0,
            max_membership_removals: u64::MAX,
            max_membership_removal_percent: 100.0,
        },
    }
}

/// Run start times: one minute apart from 2026-11-01 10:00 UTC.
pub(crate) fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 10, 0, 0).unwrap() + ChronoDuration::minutes(minute)
}

pub(crate) struct TestSource {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub source: SourceConfig,
    runs: i64,
}

impl TestSource {
    pub fn new() -> TestSource {
        Self::with(source_config())
    }

    pub fn with(source: SourceConfig) -> TestSource {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("aksync.redb"),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        TestSource {
            dir,
            store,
            source,
            runs: 0,
        }
    }

    /// Closes the database, lets `edit` change the file (e.g. write an older layout), and
    /// opens it again as aksync would.
    pub fn reopen(&mut self, edit: impl FnOnce(&std::path::Path)) {
        let path = self.dir.path().join("aksync.redb");
        // The handle is closed by swapping in one on a scratch file: `store` is never empty.
        let scratch = self.dir.path().join("scratch.redb");
        drop(std::mem::replace(
            &mut self.store,
            Store::open(&scratch, std::time::Duration::from_secs(5)).unwrap(),
        ));
        edit(&path);
        self.store = Store::open(&path, std::time::Duration::from_secs(5)).unwrap();
    }

    /// One complete run of this directory; `groups: None` for a source without group sync.
    pub fn sync(&mut self, users: Vec<Value>, groups: Vec<Value>) -> SyncedRun {
        match self.try_sync(users, groups) {
            Ok(synced) => synced,
            Err(error) => panic!("run not stored: {error}"),
        }
    }

    pub fn try_sync(&mut self, users: Vec<Value>, groups: Vec<Value>) -> Result<SyncedRun, String> {
        let latest = self.store.latest_complete(&self.source.name).unwrap();
        let job = self.collect(users, groups, latest)?;
        match store_run(job, &self.store) {
            Ok(synced) => Ok(synced),
            Err(Rejected::Store(error)) => Err(error.to_string()),
            Err(Rejected::Failed(_, reason)) => Err(reason),
        }
    }

    /// A run collected now, to be stored later (for overlapping runs).
    pub fn collect(
        &mut self,
        users: Vec<Value>,
        groups: Vec<Value>,
        latest: Option<crate::store::RunRecord>,
    ) -> Result<CompleteRun, String> {
        let mut collector = Collector::new(self.dir.path(), &self.source).unwrap();
        for raw in users {
            collector.add_user(raw).map_err(|error| error.to_string())?;
        }
        if !self.source.disable_group_sync {
            for raw in groups {
                collector
                    .add_group(raw)
                    .map_err(|error| error.to_string())?;
            }
        }
        let collected = collector.finish().map_err(|error| error.to_string())?;
        self.runs += 1;
        Ok(CompleteRun {
            state_dir: self.dir.path().to_path_buf(),
            source: self.source.clone(),
            webhook: false,
            signer: None,
            outcome: RunOutcome {
                source: self.source.name.clone(),
                started_at: at(self.runs),
                finished_at: at(self.runs) + ChronoDuration::seconds(30),
                authentik_version: Some("2025.12.4".into()),
                settings_fingerprint: self.source.settings_fingerprint(),
                health: None,
                settings_changed: Vec::new(),
            },
            latest,
            collected,
            token_user: None,
            cancel: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// A failed run, recorded as a sync records one.
    pub fn fail(&self, outcome: RunOutcome, error: &str) -> crate::store::RunRecord {
        crate::run::sync::commit_failed_run(&self.store, &self.source, None, &outcome, error)
            .unwrap()
    }

    pub fn envelopes(&self, run_id: &str) -> Vec<Envelope> {
        let bytes =
            std::fs::read(envelope_path(self.dir.path(), &self.source.name, run_id)).unwrap();
        parse_jsonl(&bytes).unwrap()
    }
}

/// Plans and commits a collected run in one go. A sync confirms the run's deletions with
/// Authentik between the two; these runs are read from no server, so there is none to ask.
pub(crate) fn store_run(job: CompleteRun, store: &Store) -> Result<SyncedRun, Rejected> {
    job.plan(store)?.commit(store)
}

/// Arbitrary JSON for the property tests of what reads a server's answers: every kind of
/// value, nested a few levels, with object keys drawn from `keys` (names the reader looks
/// for, so that it gets past its first checks) or made up.
pub(crate) fn arbitrary_json(
    keys: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        // Small numbers, as pks, counts and page numbers are.
        (-3i64..1000).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z ]{0,12}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        proptest::sample::select(keys).prop_map(str::to_string),
        any::<String>(),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..10)
                .prop_map(|object| Value::Object(object.into_iter().collect())),
        ]
    })
}

/// Objects whose keys are mostly `keys`, each with an arbitrary value: a user, group or page
/// as a broken or hostile server might send it.
pub(crate) fn arbitrary_object(
    keys: &'static [&'static str],
) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    proptest::collection::btree_map(
        prop_oneof![
            4 => proptest::sample::select(keys).prop_map(str::to_string),
            1 => any::<String>(),
        ],
        arbitrary_json(keys),
        0..keys.len() + 2,
    )
    .prop_map(|object| Value::Object(object.into_iter().collect()))
}
