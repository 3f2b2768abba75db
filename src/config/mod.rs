//! Configuration: where it is read from (file, `conf.d/`, `AKSYNC_*` environment), and its
//! validation into a [`Config`] that the rest of aksync can trust. Every problem becomes a
//! one-line [`ConfigError`] that names the file or key and says how to fix it.
//!
//! The parts of a source's configuration with their own rules: its cron [`schedule`], its
//! CEL [`filter`], its `ignore_fields` ([`fields`]), its token ([`secret`]); the
//! [`state_dir`] that other local users are kept out of; and the source's own file in
//! `conf.d/` that `aksync connect` writes ([`drop_in`]).

pub mod drop_in;
pub mod fields;
pub mod filter;
pub mod schedule;
pub mod secret;
pub mod state_dir;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::config::filter::{FilterTarget, OnFilterError, RecordFilter};
use crate::config::schedule::{Schedule, ScheduleError};
use crate::config::secret::ApiToken;
use crate::config::state_dir::Access;
use crate::display::redact_url;
use crate::output::report::ReportFormat;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/aksync/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/aksync";
const ENV_PREFIX: &str = "AKSYNC_";
/// Report formats written after every run unless `output.reports` says otherwise; PDF needs
/// Chromium, so it is opt-in.
const DEFAULT_REPORTS: [ReportFormat; 4] = [
    ReportFormat::Json,
    ReportFormat::Markdown,
    ReportFormat::Csv,
    ReportFormat::Html,
];
/// Variables with the `AKSYNC_` prefix that select the config file, logging or the browser
/// for PDF reports; they are not config keys.
const ENV_NOT_KEYS: [&str; 3] = ["config", "log", "chromium"];
/// Keys whose values are secrets: never echoed in an error.
const SECRET_KEYS: [&str; 1] = ["token"];
/// Where systemd's `LoadCredential=` puts this unit's credentials when a command runs outside
/// the service, which has `$CREDENTIALS_DIRECTORY` instead.
const SERVICE_CREDENTIALS_DIR: &str = "/run/credentials/aksync.service";
/// A token file (or a token on standard input) larger than this is not a token.
pub(crate) const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist: check the path given with --config or AKSYNC_CONFIG")]
    MissingFile(PathBuf),
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot read {what} {path}: {reason}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("no sources configured in {0}: add a [sources.<name>] table with base_url and token_file (see config.example.toml)")]
    NoSources(String),
    #[error("no configuration: {0} does not exist; create it from config.example.toml, or pass --config FILE")]
    NoConfig(PathBuf),
    #[error("unknown source `{name}`: configured sources are {known}")]
    UnknownSource { name: String, known: String },
    #[error("cannot write {path}: {reason}; check that its directory exists and is writable by this user")]
    Unwritable { path: PathBuf, reason: String },
}

/// A change to the files in `conf.d/`, applied to a load without touching them: how
/// `aksync connect` validates the source it would add, and `aksync disconnect` what would
/// remain.
#[derive(Debug, Clone, Copy)]
pub enum DropInChange<'a> {
    None,
    /// A file of this text added.
    Add(&'a str),
    /// This file left out.
    Remove(&'a Path),
}

/// Where the configuration file comes from, in order of precedence.
#[derive(Debug, Clone)]
pub enum ConfigLocation {
    /// Named with `--config` or `AKSYNC_CONFIG`: it must exist.
    Explicit(PathBuf),
    /// `/etc/aksync/config.toml`: may be absent when everything comes from the environment.
    Default,
}

impl ConfigLocation {
    pub fn from_option(path: Option<PathBuf>) -> ConfigLocation {
        path.map_or(ConfigLocation::Default, ConfigLocation::Explicit)
    }

    fn path(&self) -> &Path {
        match self {
            ConfigLocation::Explicit(path) => path,
            ConfigLocation::Default => Path::new(DEFAULT_CONFIG_PATH),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    output: RawOutput,
    #[serde(default)]
    daemon: RawDaemon,
    http: Option<RawHttp>,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    ledger: RawLedger,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_days: Option<u32>,
    keep_runs: Option<u32>,
    #[serde(default)]
    keep_files: bool,
    keep_evidence_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    max_concurrent_runs: Option<u32>,
    log_level: Option<String>,
    log_format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    #[serde(default)]
    allow_remote: bool,
    #[serde(default)]
    allowed_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    reports: Option<Vec<String>>,
    reports_per_run: Option<String>,
    webhook: Option<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    token_file: Option<PathBuf>,
    token_credential: Option<String>,
    batch_size: Option<u32>,
    timeout_secs: Option<u64>,
    #[serde(default)]
    allow_insecure_http: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    base_url: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    token_credential: Option<String>,
    #[serde(default)]
    primary_directory: bool,
    #[serde(default)]
    disable_group_sync: bool,
    filter: Option<String>,
    group_filter: Option<String>,
    #[serde(default)]
    on_filter_error: OnFilterError,
    page_size: Option<u32>,
    concurrency: Option<u32>,
    timeout_secs: Option<u64>,
    max_page_mib: Option<u32>,
    run_timeout_secs: Option<u64>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_insecure_http: bool,
    #[serde(default)]
    ignore_fields: Vec<String>,
    schedule: Option<String>,
    run_on_start: Option<bool>,
    timezone: Option<String>,
    #[serde(default)]
    privileged_groups: Vec<String>,
    #[serde(default)]
    privileged_roles: Vec<String>,
    hr_key_field: Option<String>,
    sla: Option<String>,
    expected_interval: Option<String>,
    unhealthy_after_failures: Option<u32>,
    max_leavers: Option<u64>,
    max_leaver_percent: Option<f64>,
    max_membership_removals: Option<u64>,
    max_membership_removal_percent: Option<f64>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub sources: BTreeMap<String, SourceConfig>,
    pub output: OutputConfig,
    pub daemon: DaemonConfig,
    /// The daemon's monitoring endpoint; off unless configured.
    pub http: Option<HttpConfig>,
    pub retention: Retention,
    pub ledger: LedgerConfig,
    /// The file the configuration was read from, for messages.
    pub origin: String,
    /// What loading found worth a warning but not a refusal (a deprecated field name, an
    /// entry that changes nothing), one line each: see [`Config::log_warnings`].
    pub warnings: Vec<String>,
}

/// How the evidence ledger is sealed.
#[derive(Debug, Clone, Default)]
pub struct LedgerConfig {
    /// Signs every entry's digest; `None`: entries are chained but not signed.
    pub signing_key: Option<std::sync::Arc<crate::ledger::seal::SigningKey>>,
    /// Where the key was read from, for messages.
    pub signing_key_file: Option<PathBuf>,
}

/// How much history is kept. Without `keep_days` and `keep_runs` everything is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the runs of the last this many days.
    pub keep_days: Option<u32>,
    /// Keep at least this many of each source's newest complete runs.
    pub keep_runs: Option<u32>,
    /// Keep the envelope and report files of pruned runs.
    pub keep_files: bool,
    /// Keep the ledger's entries (the evidence, which pruning snapshots keeps) of the last
    /// this many days; `None`: keep them all.
    pub keep_evidence_days: Option<u32>,
}

impl Retention {
    pub fn prunes(&self) -> bool {
        self.keep_days.is_some() || self.keep_runs.is_some() || self.keep_evidence_days.is_some()
    }
}

/// How `aksync daemon` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Runs of all sources together at one time.
    pub max_concurrent_runs: usize,
    /// A level (`info`); `AKSYNC_LOG` overrides it.
    pub log_level: String,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event with key=value fields.
    Text,
    /// One JSON object per event.
    Json,
}

/// The daemon's HTTP endpoint: /healthz, /metrics and a status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Host names besides the listen address, loopback and `localhost` that requests may
    /// name in their `Host` header (a reverse proxy's name), lowercase.
    pub allowed_hosts: Vec<String>,
}

/// What is written after every complete run.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub reports: Vec<ReportFormat>,
    pub reports_per_run: ReportsPerRun,
    pub webhook: Option<WebhookConfig>,
}

/// Which complete runs get report files of their own (`output.reports_per_run`). The period
/// report lists every run whatever this says, and `aksync report RUN` writes any run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportsPerRun {
    /// Runs that changed something (see [`crate::store::RunRecord::changed_anything`]).
    #[default]
    Changes,
    Always,
    Never,
}

impl OutputConfig {
    /// Whether a complete run gets report files of its own: some format is configured and
    /// `reports_per_run` takes the run, which `changed_anything` or not.
    pub fn writes_run_reports(&self, changed_anything: bool) -> bool {
        !self.reports.is_empty() && self.reports_per_run.writes(changed_anything)
    }
}

impl ReportsPerRun {
    /// Whether a run that `changed_anything` or not gets its report files.
    pub fn writes(self, changed_anything: bool) -> bool {
        match self {
            ReportsPerRun::Changes => changed_anything,
            ReportsPerRun::Always => true,
            ReportsPerRun::Never => false,
        }
    }
}

/// HTTP delivery of the envelopes.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: Url,
    pub token: Option<TokenSource>,
    pub batch_size: usize,
    pub timeout: Duration,
}

impl WebhookConfig {
    /// The URL as logs, stored errors and reports may show it: its query (`?api_key=…`) and
    /// fragment are secrets as far as aksync knows.
    pub fn shown_url(&self) -> String {
        redact_url(self.url.as_str())
    }
}

/// Where a token comes from. A file is read when a command needs the token
/// ([`TokenSource::read`]), not when the configuration loads: queries of the store need
/// none, and a credential that systemd gives only to the running service must not break
/// `sudo aksync runs`. Each run reads it again, so a rotated token file needs no reload.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// `token = "…"` in the configuration, checked when it loads.
    Inline(ApiToken),
    /// `token_file`, or `token_credential` in the credentials directory.
    File {
        path: PathBuf,
        /// The key that named it, for messages.
        key: String,
    },
}

impl TokenSource {
    /// The token; the error names the key and the file and says how to fix it.
    pub fn read(&self) -> Result<ApiToken, String> {
        match self {
            TokenSource::Inline(token) => Ok(token.clone()),
            TokenSource::File { path, key } => read_token_file(path, key),
        }
    }

    /// Where the token is kept, in words that never include it.
    pub fn whereabouts(&self) -> String {
        match self {
            TokenSource::Inline(_) => "inline in the configuration".to_string(),
            TokenSource::File { path, key } => format!("{key} {}", path.display()),
        }
    }
}

/// One Authentik instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    /// Normalized: no trailing `/`, no `/api/v3`.
    pub base_url: Url,
    pub token: TokenSource,
    pub primary_directory: bool,
    pub disable_group_sync: bool,
    /// CEL over each account's raw object: the accounts in scope.
    pub filter: Option<String>,
    /// CEL over each group's raw object: the groups in scope.
    pub group_filter: Option<String>,
    /// What a run makes of a record a filter cannot judge.
    pub on_filter_error: OnFilterError,
    pub page_size: u32,
    pub concurrency: usize,
    /// One request.
    pub timeout: Duration,
    /// The largest response body accepted, so that a broken server cannot exhaust memory.
    pub max_page_bytes: usize,
    /// The whole fetch of a run, so that a run always ends whatever the server does.
    pub run_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
    /// The normalized record fields that never make a change on their own (e.g.
    /// `metadata.last_sync`): `ignore_fields` resolved from Authentik's names by [`fields`],
    /// what the change rule leaves out.
    pub ignore_fields: Vec<String>,
    /// `ignore_fields` as the configuration wrote it (e.g. `attributes.last_sync`): what a
    /// run records and shows.
    pub ignore_fields_as_written: Vec<String>,
    /// When the daemon syncs this source.
    pub schedule: Schedule,
    /// Whether the daemon syncs this source as soon as it starts.
    pub run_on_start: bool,
    /// Names or pks of groups whose members (direct or through child groups) are privileged,
    /// besides the superuser groups.
    pub privileged_groups: Vec<String>,
    /// Names or uuids of RBAC roles that are privileged access, held directly or through a
    /// group.
    pub privileged_roles: Vec<String>,
    /// Where an account's HR key is, `attributes.<key>[.<key>…]`.
    pub hr_key_field: Option<String>,
    /// How soon a termination must be detected.
    pub sla: Option<Duration>,
    /// The longest time between two complete runs that is not a gap in coverage; `None`:
    /// derived from the schedule.
    pub expected_interval: Option<Duration>,
    /// How many failed runs in a row make the daemon report the source unhealthy.
    pub unhealthy_after_failures: u32,
    /// Above these a run is quarantined instead of released.
    pub quarantine: QuarantineThresholds,
}

/// How many leavers and membership removals one run may find before it is held for an
/// admin's decision (`aksync approve` / `aksync reject`): a count, and a percentage of the
/// run it is compared with. Over either is too many.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuarantineThresholds {
    pub max_leavers: u64,
    pub max_leaver_percent: f64,
    pub max_membership_removals: u64,
    pub max_membership_removal_percent: f64,
}

impl Default for QuarantineThresholds {
    fn default() -> QuarantineThresholds {
        QuarantineThresholds {
            max_leavers: 25,
            max_leaver_percent: 10.0,
            max_membership_removals: 25,
            max_membership_removal_percent: 10.0,
        }
    }
}

/// The settings that shape the stored data; a change to any of them makes records differ
/// without an upstream change, so runs record this fingerprint.
#[derive(serde::Serialize)]
struct DataShapingSettings<'a> {
    filter: Option<&'a str>,
    /// Left out when unset, like `ignore_fields`.
    #[serde(skip_serializing_if = "Option::is_none")]
    group_filter: Option<&'a str>,
    disable_group_sync: bool,
    primary_directory: bool,
    /// Left out when empty, so that sources without any keep the fingerprint that runs
    /// recorded before it was part of it. The resolved fields, not the names written: an old
    /// name rewritten as Authentik's changes no record.
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    ignore_fields: std::collections::BTreeSet<&'a str>,
}

impl SourceConfig {
    pub fn settings_fingerprint(&self) -> String {
        let settings = DataShapingSettings {
            filter: self.filter.as_deref(),
            group_filter: self.group_filter.as_deref(),
            disable_group_sync: self.disable_group_sync,
            primary_directory: self.primary_directory,
            ignore_fields: self.ignore_fields.iter().map(String::as_str).collect(),
        };
        let canonical = serde_json::to_vec(&settings).expect("plain struct serializes");
        hex::encode(Sha256::digest(canonical))
    }

    /// `expected_interval`, or one and a half times the longest gap of the schedule: a run's
    /// own duration or a late start is no gap, a missed run is.
    pub fn expected_interval(&self) -> (Duration, bool) {
        match self.expected_interval {
            Some(interval) => (interval, true),
            None => (self.schedule.interval().mul_f64(1.5), false),
        }
    }

    /// `base_url` joined with an API path such as `core/users/`.
    pub fn api_url(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        let base_path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}/api/v3/{path}"));
        url
    }
}

impl Config {
    /// Reads the file, `conf.d/*.toml` beside it in name order, then `AKSYNC_*` variables.
    pub fn load(location: &ConfigLocation) -> Result<Config, ConfigError> {
        Config::load_changed(location, DropInChange::None)
    }

    /// [`Config::load`] as if `conf.d/` were changed so.
    pub fn load_changed(
        location: &ConfigLocation,
        change: DropInChange<'_>,
    ) -> Result<Config, ConfigError> {
        let path = location.path();
        let figment = figment(location, change)?;
        let origin = path.display().to_string();
        let raw: RawConfig = figment
            .extract()
            .map_err(|error| figment_error(&figment, error, &origin))?;
        if raw.sources.is_empty() && !path.is_file() {
            return Err(ConfigError::NoConfig(path.to_path_buf()));
        }
        let environment = SystemdDirectories {
            state: std::env::var_os("STATE_DIRECTORY").map(PathBuf::from),
            credentials: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        };
        validate(raw, path, environment, origin)
    }

    /// Logs the load's warnings; whoever loaded the configuration calls it once logging is
    /// set up (the daemon's log level is part of the configuration).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{}: {warning}", self.origin);
        }
    }

    /// Reads every token the sources and the webhook name, for the commands that talk to
    /// them: a missing or unreadable one is a configuration error before anything runs.
    /// Warns about token files that other users can read.
    pub fn read_tokens(&self) -> Result<(), ConfigError> {
        for source in self.sources.values() {
            self.read_token(&source.token)?;
        }
        self.read_webhook_token()
    }

    /// Reads the signing key, for the commands that append to the ledger or sign a report: a
    /// configured key that does not load is a configuration error before anything runs, not
    /// an unsigned entry later.
    pub fn read_signing_key(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.ledger.signing_key_file else {
            return Ok(());
        };
        let key =
            crate::ledger::seal::SigningKey::load(path).map_err(|error| ConfigError::Invalid {
                origin: self.origin.clone(),
                message: format!("`ledger.signing_key_file`: {error}"),
            })?;
        warn_if_readable_by_others(path, "ledger.signing_key_file");
        self.ledger.signing_key = Some(std::sync::Arc::new(key));
        Ok(())
    }

    /// The webhook's token only, for `aksync deliver`.
    pub fn read_webhook_token(&self) -> Result<(), ConfigError> {
        match self
            .output
            .webhook
            .as_ref()
            .and_then(|webhook| webhook.token.as_ref())
        {
            Some(token) => self.read_token(token),
            None => Ok(()),
        }
    }

    /// Reads one token: unreadable, a configuration error; readable by others, a warning.
    pub fn read_token(&self, token: &TokenSource) -> Result<(), ConfigError> {
        token.read().map_err(|message| ConfigError::Invalid {
            origin: self.origin.clone(),
            message,
        })?;
        if let TokenSource::File { path, key } = token {
            warn_if_readable_by_others(path, key);
        }
        Ok(())
    }

    /// The sources to act on: the one named, or all of them.
    pub fn select_sources(&self, name: Option<&str>) -> Result<Vec<&SourceConfig>, ConfigError> {
        match name {
            None => Ok(self.sources.values().collect()),
            Some(name) => self
                .sources
                .get(name)
                .map(|source| vec![source])
                .ok_or_else(|| ConfigError::UnknownSource {
                    name: name.to_string(),
                    known: self.source_names(),
                }),
        }
    }

    fn source_names(&self) -> String {
        self.sources
            .keys()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// For commands that write into the state directory: it must also be this user's (see
    /// [`crate::config::state_dir`]); what every command needs was checked when the file loaded.
    pub fn check_state_dir_owner(&self) -> Result<(), ConfigError> {
        crate::config::state_dir::check(&self.state_dir, Access::Write).map_err(|reason| {
            ConfigError::Invalid {
                origin: self.origin.clone(),
                message: format!("`state_dir` {reason}"),
            }
        })
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("aksync.redb")
    }
}

/// The file, `conf.d/*.toml` beside it in name order (as `change` would leave them), then
/// `AKSYNC_*` variables.
fn figment(location: &ConfigLocation, change: DropInChange<'_>) -> Result<Figment, ConfigError> {
    let path = location.path();
    if let ConfigLocation::Explicit(path) = location {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.clone()));
        }
    }
    let mut figment = Figment::new();
    if path.is_file() {
        figment = figment.merge(Toml::file_exact(path));
    }
    for drop_in in conf_d_files(path)? {
        if !matches!(change, DropInChange::Remove(removed) if removed == drop_in) {
            figment = figment.merge(Toml::file_exact(drop_in));
        }
    }
    if let DropInChange::Add(text) = change {
        figment = figment.merge(Toml::string(text));
    }
    Ok(figment.merge(
        Env::prefixed(ENV_PREFIX)
            .split("__")
            .filter(|key| !ENV_NOT_KEYS.iter().any(|not_key| key == *not_key)),
    ))
}

/// `conf.d/` beside the configuration file.
fn conf_d_dir(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("conf.d")
}

fn conf_d_files(config_path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = conf_d_dir(config_path);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&dir).map_err(|error| ConfigError::Unreadable {
        what: "directory",
        path: dir.clone(),
        reason: error.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Turns figment's multi-part error into one line naming where the bad value came from.
fn figment_error(figment: &Figment, error: figment::Error, default_origin: &str) -> ConfigError {
    let key = error.path.join(".");
    let origin = error
        .metadata
        .as_ref()
        .map(shown_origin)
        .or_else(|| origin_of(figment, &key))
        .unwrap_or_else(|| default_origin.to_string());
    let message = match &error.kind {
        figment::error::Kind::UnknownField(field, known) => {
            // figment's path usually ends with the unknown field itself.
            let full_key = if key.is_empty() {
                field.clone()
            } else if error.path.last() == Some(field) {
                key.clone()
            } else {
                format!("{key}.{field}")
            };
            // serde's `deny_unknown_fields` lists the fields of the table's struct, so the
            // suggestion comes from what is really accepted and cannot drift from it.
            match fields::closest_name(field, known.iter().copied()) {
                Some(closest) => format!(
                    "unknown key `{full_key}`: did you mean `{closest}`? (see config.example.toml)"
                ),
                None => format!(
                    "unknown key `{full_key}`: remove it or check its spelling against config.example.toml"
                ),
            }
        }
        figment::error::Kind::MissingField(field) => {
            let full_key = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
            format!("missing required key `{full_key}`")
        }
        kind if error
            .path
            .last()
            .is_some_and(|last| SECRET_KEYS.contains(&last.as_str())) =>
        {
            format!("key `{key}`: {}", secret_kind(kind))
        }
        kind if key.is_empty() => kind.to_string(),
        kind => format!("key `{key}`: {kind}"),
    };
    ConfigError::Invalid {
        origin,
        message: without_source_lines(&message),
    }
}

/// The file or variables that set `key`, as a message names them.
fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    figment.find_metadata(key).map(shown_origin)
}

fn shown_origin(metadata: &figment::Metadata) -> String {
    match &metadata.source {
        // As given: figment's own Display makes a path relative to the working directory,
        // which under systemd (`/`) turns /etc/aksync/config.toml into etc/aksync/….
        Some(figment::Source::File(path)) => path.display().to_string(),
        Some(source) => source.to_string(),
        None => metadata.name.to_string(),
    }
}

/// What was wrong with a secret's value, without the value.
fn secret_kind(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind};
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            let found = match actual {
                Actual::Bool(_) => "a boolean",
                Actual::Unsigned(_) | Actual::Signed(_) => "a number",
                Actual::Float(_) => "a decimal number",
                Actual::Char(_) | Actual::Str(_) => "a string",
                Actual::Seq => "a list",
                Actual::Map => "a table",
                _ => "another kind of value",
            };
            format!("expected {expected}, found {found} (the value is not shown): write it in quotes, or better use token_file")
        }
        _ => "invalid value (not shown): use token_file".to_string(),
    }
}

/// One line from a possibly multi-line message. A TOML parse error quotes the offending
/// source line under a `|` gutter; that line may hold a secret, so it is left out.
fn without_source_lines(message: &str) -> String {
    let is_source_line = |line: &str| {
        line.trim_start()
            .split_once('|')
            .is_some_and(|(gutter, _)| gutter.trim().chars().all(|c| c.is_ascii_digit()))
    };
    message
        .lines()
        .filter(|line| !is_source_line(line))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The directories systemd names in the environment of a service.
struct SystemdDirectories {
    /// `$STATE_DIRECTORY` (`StateDirectory=`).
    state: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
    credentials: Option<PathBuf>,
}

fn validate(
    raw: RawConfig,
    config_path: &Path,
    environment: SystemdDirectories,
    origin: String,
) -> Result<Config, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        message,
    };
    if raw.sources.is_empty() {
        return Err(ConfigError::NoSources(origin));
    }
    let state_dir = raw
        .state_dir
        .or_else(|| {
            // systemd may pass several colon-separated directories; the first is ours.
            environment.state.and_then(|dirs| {
                dirs.to_str()
                    .and_then(|dirs| dirs.split(':').next())
                    .filter(|dir| !dir.is_empty())
                    .map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    check_state_dir(&state_dir).map_err(&invalid)?;
    let places = Places {
        config_dir: config_path.parent().unwrap_or(Path::new(".")),
        credentials_dir: environment
            .credentials
            .unwrap_or_else(|| PathBuf::from(SERVICE_CREDENTIALS_DIR)),
    };
    let mut sources = BTreeMap::new();
    let mut warnings = Vec::new();
    for (name, raw_source) in raw.sources {
        let (source, source_warnings) =
            validate_source(&name, raw_source, &places).map_err(&invalid)?;
        warnings.extend(source_warnings);
        sources.insert(name, source);
    }
    check_one_primary_directory(&sources).map_err(&invalid)?;
    let output = validate_output(raw.output, &places).map_err(&invalid)?;
    let daemon = validate_daemon(raw.daemon).map_err(&invalid)?;
    let http = raw.http.map(validate_http).transpose().map_err(&invalid)?;
    let retention = validate_retention(raw.retention).map_err(&invalid)?;
    let ledger = validate_ledger(raw.ledger, places.config_dir);
    Ok(Config {
        state_dir,
        sources,
        output,
        daemon,
        http,
        retention,
        ledger,
        origin,
        warnings,
    })
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn validate_retention(raw: RawRetention) -> Result<Retention, String> {
    let keep = |value: Option<u32>, key: &str| {
        value
            .map(|value| bounded(Some(value), value, 1..=1_000_000, key))
            .transpose()
    };
    Ok(Retention {
        keep_days: keep(raw.keep_days, "retention.keep_days")?,
        keep_runs: keep(raw.keep_runs, "retention.keep_runs")?,
        keep_files: raw.keep_files,
        keep_evidence_days: keep(raw.keep_evidence_days, "retention.keep_evidence_days")?,
    })
}

/// The signing key is a secret like a token: it is read by the commands that sign
/// ([`Config::read_signing_key`]), not when the configuration loads.
fn validate_ledger(raw: RawLedger, config_dir: &Path) -> LedgerConfig {
    LedgerConfig {
        signing_key: None,
        signing_key_file: raw.signing_key_file.map(|file| config_dir.join(file)),
    }
}

fn validate_daemon(raw: RawDaemon) -> Result<DaemonConfig, String> {
    let max_concurrent_runs = bounded(
        raw.max_concurrent_runs,
        2,
        1..=64,
        "daemon.max_concurrent_runs",
    )? as usize;
    let log_level = raw.log_level.map_or_else(
        || "info".to_string(),
        |level| level.trim().to_ascii_lowercase(),
    );
    if !LOG_LEVELS.contains(&log_level.as_str()) {
        return Err(format!(
            "`daemon.log_level` = {log_level:?} is not a level: use one of {}",
            LOG_LEVELS.join(", ")
        ));
    }
    let log_format = match raw.log_format.as_deref().map(str::trim) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(format!(
                "`daemon.log_format` = {other:?} is not a format: use \"text\" or \"json\""
            ))
        }
    };
    Ok(DaemonConfig {
        max_concurrent_runs,
        log_level,
        log_format,
    })
}

fn validate_http(raw: RawHttp) -> Result<HttpConfig, String> {
    let listen: SocketAddr = raw.listen.trim().parse().map_err(|_| {
        format!(
            "`http.listen` = {:?} is not an address and port: use e.g. \"127.0.0.1:9464\"",
            raw.listen
        )
    })?;
    if !listen.ip().is_loopback() && !raw.allow_remote {
        return Err(format!(
            "`http.listen` = {:?} is not a loopback address, and the endpoint has no authentication: \
             listen on 127.0.0.1 behind a reverse proxy, or set http.allow_remote = true",
            raw.listen
        ));
    }
    if raw.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(format!(
            "`http.allowed_hosts` lists {} names: list at most {MAX_ALLOWED_HOSTS}",
            raw.allowed_hosts.len()
        ));
    }
    let allowed_hosts = raw
        .allowed_hosts
        .iter()
        .map(|host| allowed_host(host))
        .collect::<Result<_, _>>()?;
    Ok(HttpConfig {
        listen,
        allowed_hosts,
    })
}

/// The most names `http.allowed_hosts` may list.
const MAX_ALLOWED_HOSTS: usize = 32;

/// An `http.allowed_hosts` entry: a DNS name or an IP address, without scheme or port, as the
/// `Host` header of a request through a reverse proxy names it.
fn allowed_host(raw: &str) -> Result<String, String> {
    let host = raw.trim().to_ascii_lowercase();
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let is_name = host.len() <= 253 && host.split('.').all(label_ok);
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if !is_name {
        return Err(format!(
            "`http.allowed_hosts` entry {raw:?} is not a host name: give names such as \"aksync.example.com\", without scheme, port or wildcard"
        ));
    }
    Ok(host)
}

/// A state directory that cannot be one, or that other users can write, is a configuration
/// error, said before anything tries to create files in it. A missing directory is fine: it
/// is created on first use.
fn check_state_dir(state_dir: &Path) -> Result<(), String> {
    if state_dir.as_os_str().is_empty() {
        return Err("`state_dir` is empty: give the directory for the database, e.g. /var/lib/aksync, or remove the key to use the default".into());
    }
    let shown = state_dir.display();
    match std::fs::symlink_metadata(state_dir) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("`state_dir` = {shown}: {error}")),
        Ok(metadata) if metadata.file_type().is_symlink() && !state_dir.exists() => {
            let target = std::fs::read_link(state_dir)
                .map(|target| target.display().to_string())
                .unwrap_or_default();
            Err(format!(
                "`state_dir` = {shown} is a symbolic link to {target}, which does not exist: create that directory or point state_dir at an existing one"
            ))
        }
        Ok(_) if !state_dir.is_dir() => Err(format!(
            "`state_dir` = {shown} is not a directory: move the file aside or choose another state_dir"
        )),
        Ok(_) => crate::config::state_dir::check(state_dir, Access::Read)
            .map_err(|reason| format!("`state_dir` {reason}")),
    }
}

/// Where relative paths and credential names point.
struct Places<'a> {
    /// `token_file` and `ca_file` are relative to the configuration file.
    config_dir: &'a Path,
    /// `token_credential` names a file here: `$CREDENTIALS_DIRECTORY` inside the service,
    /// the service's own credentials directory for commands run beside it.
    credentials_dir: PathBuf,
}

impl Places<'_> {
    /// Exactly one of `token`, `token_file` and `token_credential`; `prefix` is the table's
    /// key, e.g. `sources.corp.`.
    fn token(
        &self,
        prefix: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
        credential: Option<String>,
    ) -> Result<Option<TokenSource>, String> {
        let key = |field: &str| format!("{prefix}{field}");
        let given: Vec<String> = [
            ("token", inline.is_some()),
            ("token_file", file.is_some()),
            ("token_credential", credential.is_some()),
        ]
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(field, _)| format!("`{}`", key(field)))
        .collect();
        if given.len() > 1 {
            return Err(format!("{} are set: keep exactly one", given.join(" and ")));
        }
        if let Some(token) = inline {
            return checked_token(&token, &format!("`{}`", key("token")))
                .map(|token| Some(TokenSource::Inline(token)));
        }
        if let Some(file) = file {
            return Ok(Some(TokenSource::File {
                path: self.config_dir.join(file),
                key: key("token_file"),
            }));
        }
        let Some(name) = credential else {
            return Ok(None);
        };
        let plain_name = !name.is_empty()
            && !name.contains('/')
            && name != "."
            && name != ".."
            && name.chars().all(|c| c.is_ascii_graphic());
        if !plain_name {
            return Err(format!(
                "`{}` = {name:?} is not a credential name: give the name of a LoadCredential= line, e.g. \"corp.token\"",
                key("token_credential")
            ));
        }
        Ok(Some(TokenSource::File {
            path: self.credentials_dir.join(name),
            key: key("token_credential"),
        }))
    }
}

fn validate_output(raw: RawOutput, places: &Places) -> Result<OutputConfig, String> {
    let reports = match raw.reports {
        None => DEFAULT_REPORTS.to_vec(),
        Some(names) => names
            .iter()
            .map(|name| {
                ReportFormat::parse(name).ok_or_else(|| {
                    format!("`output.reports` has unknown format {name:?}: use md, json, csv, html or pdf")
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let reports_per_run = match raw.reports_per_run.as_deref().map(str::trim) {
        None | Some("changes") => ReportsPerRun::Changes,
        Some("always") => ReportsPerRun::Always,
        Some("never") => ReportsPerRun::Never,
        Some(other) => {
            return Err(format!(
                "`output.reports_per_run` = {other:?} is not a choice: use \"changes\", \"always\" or \"never\""
            ))
        }
    };
    let webhook = match raw.webhook {
        None => None,
        Some(raw) => {
            let url = Url::parse(raw.url.trim()).map_err(|error| {
                format!(
                    "`output.webhook.url` = {:?} is not a URL: {error}",
                    redact_url(&raw.url)
                )
            })?;
            if !url.username().is_empty() || url.password().is_some() {
                // The URL appears in messages; a secret in it would leak there.
                return Err("`output.webhook.url` carries credentials: remove them and put the token in output.webhook.token_file".into());
            }
            require_secure_transport(&url, raw.allow_insecure_http).map_err(|reason| {
                format!(
                    "`output.webhook.url` = {:?}: {reason}",
                    redact_url(&raw.url)
                )
            })?;
            let token = places.token(
                "output.webhook.",
                None,
                raw.token_file,
                raw.token_credential,
            )?;
            Some(WebhookConfig {
                url,
                token,
                batch_size: bounded(raw.batch_size, 500, 1..=10_000, "output.webhook.batch_size")?
                    as usize,
                timeout: Duration::from_secs(bounded(
                    raw.timeout_secs,
                    30,
                    1..=600,
                    "output.webhook.timeout_secs",
                )?),
            })
        }
    };
    Ok(OutputConfig {
        reports,
        reports_per_run,
        webhook,
    })
}

/// A source's configuration, and the warnings its keys deserve.
fn validate_source(
    name: &str,
    raw: RawSource,
    places: &Places,
) -> Result<(SourceConfig, Vec<String>), String> {
    let key = |field: &str| format!("sources.{name}.{field}");
    if !is_valid_source_name(name) {
        return Err(source_name_rule(name));
    }
    let base_url =
        normalize_base_url(&raw.base_url, raw.allow_insecure_http).map_err(|reason| {
            format!(
                "`{}` = {:?}: {reason}",
                key("base_url"),
                redact_url(&raw.base_url)
            )
        })?;
    let token = places
        .token(
            &format!("sources.{name}."),
            raw.token,
            raw.token_file,
            raw.token_credential,
        )?
        .ok_or_else(|| {
            format!(
                "no token: set `{}` (under systemd), `{}` or `{}`",
                key("token_credential"),
                key("token_file"),
                key("token")
            )
        })?;
    let page_size = bounded(raw.page_size, 100, 1..=1000, &key("page_size"))?;
    let concurrency = bounded(raw.concurrency, 4, 1..=32, &key("concurrency"))?;
    let timeout_secs = bounded(raw.timeout_secs, 60, 1..=3600, &key("timeout_secs"))?;
    let max_page_mib = bounded(raw.max_page_mib, 64, 1..=1024, &key("max_page_mib"))?;
    let run_timeout_secs = bounded(
        raw.run_timeout_secs,
        7200,
        1..=7 * 24 * 3600,
        &key("run_timeout_secs"),
    )?;
    let filter = checked_filter(raw.filter, FilterTarget::Users, &key)?;
    let group_filter = checked_filter(raw.group_filter, FilterTarget::Groups, &key)?;
    let ca_file = match raw.ca_file {
        Some(file) => {
            let path = places.config_dir.join(file);
            if !path.is_file() {
                return Err(format!(
                    "`{}` = {}: no such file; give the PEM file of the CA that signed the Authentik certificate",
                    key("ca_file"),
                    path.display()
                ));
            }
            Some(path)
        }
        None => None,
    };
    let schedule = Schedule::parse(
        raw.schedule
            .as_deref()
            .unwrap_or(crate::config::schedule::DEFAULT_SCHEDULE),
        raw.timezone.as_deref(),
    )
    .map_err(|error| match error {
        ScheduleError::Expression(_) => format!(
            "`{}` = {:?} is {error} (e.g. \"*/30 * * * *\" is every 30 minutes)",
            key("schedule"),
            raw.schedule.as_deref().unwrap_or_default()
        ),
        ScheduleError::Timezone => format!(
            "`{}` = {:?} is {error}",
            key("timezone"),
            raw.timezone.as_deref().unwrap_or_default()
        ),
    })?;
    for (list, what) in [
        (&raw.privileged_groups, "privileged_groups"),
        (&raw.privileged_roles, "privileged_roles"),
    ] {
        if let Some(entry) = list.iter().find(|entry| entry.trim().is_empty()) {
            return Err(format!(
                "`{}` has an empty entry {entry:?}: give names or uuids",
                key(what)
            ));
        }
    }
    let hr_key_field = raw
        .hr_key_field
        .map(|field| check_hr_key_field(&field).map(|()| field))
        .transpose()
        .map_err(|reason| format!("`{}` {reason}", key("hr_key_field")))?;
    let sla = raw
        .sla
        .map(|text| parse_duration(&text))
        .transpose()
        .map_err(|reason| format!("`{}` {reason}", key("sla")))?;
    let expected_interval = raw
        .expected_interval
        .map(|text| parse_duration(&text))
        .transpose()
        .map_err(|reason| format!("`{}` {reason}", key("expected_interval")))?;
    let ignored = fields::resolve(&key("ignore_fields"), &raw.ignore_fields)
        .map_err(|error| error.to_string())?;
    let source = SourceConfig {
        name: name.to_string(),
        base_url,
        token,
        primary_directory: raw.primary_directory,
        disable_group_sync: raw.disable_group_sync,
        filter,
        group_filter,
        on_filter_error: raw.on_filter_error,
        page_size,
        concurrency: concurrency as usize,
        timeout: Duration::from_secs(timeout_secs),
        max_page_bytes: max_page_mib as usize * 1024 * 1024,
        run_timeout: Duration::from_secs(run_timeout_secs),
        ca_file,
        allow_insecure_http: raw.allow_insecure_http,
        ignore_fields: ignored.record_fields,
        ignore_fields_as_written: raw.ignore_fields,
        schedule,
        run_on_start: raw.run_on_start.unwrap_or(true),
        privileged_groups: raw.privileged_groups,
        privileged_roles: raw.privileged_roles,
        hr_key_field,
        sla,
        expected_interval,
        unhealthy_after_failures: bounded(
            raw.unhealthy_after_failures,
            1,
            1..=RECENT_RUNS as u32,
            &key("unhealthy_after_failures"),
        )?,
        quarantine: {
            let default = QuarantineThresholds::default();
            QuarantineThresholds {
                max_leavers: bounded(
                    raw.max_leavers,
                    default.max_leavers,
                    0..=u64::from(u32::MAX),
                    &key("max_leavers"),
                )?,
                max_leaver_percent: bounded(
                    raw.max_leaver_percent,
                    default.max_leaver_percent,
                    0.0..=100.0,
                    &key("max_leaver_percent"),
                )?,
                max_membership_removals: bounded(
                    raw.max_membership_removals,
                    default.max_membership_removals,
                    0..=u64::from(u32::MAX),
                    &key("max_membership_removals"),
                )?,
                max_membership_removal_percent: bounded(
                    raw.max_membership_removal_percent,
                    default.max_membership_removal_percent,
                    0.0..=100.0,
                    &key("max_membership_removal_percent"),
                )?,
            }
        },
    };
    Ok((source, ignored.warnings))
}

/// At most one source is the organization's primary directory: two would each claim to be
/// the authoritative record of its people.
/// A filter that parses, names only `payload` and gives a boolean for a typical record; an
/// empty one is no filter.
fn checked_filter(
    expression: Option<String>,
    target: FilterTarget,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<String>, String> {
    let Some(expression) = expression.filter(|expression| !expression.trim().is_empty()) else {
        return Ok(None);
    };
    RecordFilter::compile(&expression, target).map_err(|reason| {
        format!(
            "`{}` is not a valid CEL expression ({:?}): {reason}",
            key(target.key()),
            crate::display::truncate(&expression, 80)
        )
    })?;
    Ok(Some(expression))
}

fn check_one_primary_directory(sources: &BTreeMap<String, SourceConfig>) -> Result<(), String> {
    let primary: Vec<&str> = sources
        .values()
        .filter(|source| source.primary_directory)
        .map(|source| source.name.as_str())
        .collect();
    if primary.len() > 1 {
        return Err(format!(
            "`primary_directory = true` is set on sources {}: at most one source can be the primary directory, so set it on one of them only",
            primary
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    Ok(())
}

/// `hr_key_field` names a key of the account's Authentik attributes.
pub const HR_KEY_PREFIX: &str = "attributes.";

/// How many of a source's newest runs the daemon's status reads (and its page shows): the
/// most failed runs in a row that `unhealthy_after_failures` can name.
pub const RECENT_RUNS: usize = 20;

/// The longest `sla` or `expected_interval` accepted: a year.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration such as "30m", "24h", "7d" or "1h 30m". The error is the reason, after the key.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|error| {
        format!("= {text:?} is not a duration ({error}): write e.g. \"30m\", \"24h\" or \"7d\"")
    })?;
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(format!(
            "= {text:?} is out of range: use a duration from 1s to 366d"
        ));
    }
    Ok(duration)
}

fn check_hr_key_field(field: &str) -> Result<(), String> {
    let path = field.strip_prefix(HR_KEY_PREFIX);
    if path.is_none_or(|path| path.split('.').any(|key| key.trim().is_empty())) {
        return Err(format!(
            "= {field:?} does not name an attribute: write \"attributes.<key>\", e.g. \"attributes.employee_id\""
        ));
    }
    Ok(())
}

/// Why `name` is no source name.
fn source_name_rule(name: &str) -> String {
    format!(
        "source name `{name}` is not allowed: use lowercase letters, digits, `-` and `_`, at most 64, not starting with `-` or `_` (it names files and directories)"
    )
}

fn is_valid_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with(['-', '_'])
}

fn bounded<T>(
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    key: &str,
) -> Result<T, String>
where
    T: PartialOrd + fmt::Display + Copy,
{
    let value = value.unwrap_or(default);
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "`{key}` = {value} is out of range: use a value from {} to {}",
            range.start(),
            range.end()
        ))
    }
}

/// Reads a token file, at most [`MAX_TOKEN_FILE_BYTES`] of it (a path such as `/dev/zero`
/// must not read on forever).
fn read_token_file(path: &Path, key: &str) -> Result<ApiToken, String> {
    use std::io::Read;
    let cannot_read =
        |error: std::io::Error| format!("`{key}`: cannot read {}: {error}", path.display());
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut content = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(cannot_read)?;
    if content.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "`{key}`: {} is larger than {} KiB, so it is not a token file: give the file that holds only the token",
            path.display(),
            MAX_TOKEN_FILE_BYTES / 1024
        ));
    }
    let content = String::from_utf8(content).map_err(|_| {
        format!(
            "`{key}`: {} is not text: give the file that holds only the token",
            path.display()
        )
    })?;
    checked_token(&content, &format!("`{key}` ({})", path.display()))
}

/// A token as it can go into an `Authorization` header: surrounding whitespace is dropped,
/// and anything but visible ASCII inside is an error, so that a stray line break or a
/// pasted "Bearer " fails here and not as a confusing request error. The value is never
/// echoed.
pub(crate) fn checked_token(raw: &str, what: &str) -> Result<ApiToken, String> {
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("{what} is empty: put the API token in it"));
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{what}: the token contains whitespace, a control character or a non-ASCII character: it must be the API token alone, on one line"
        ));
    }
    Ok(ApiToken::new(token))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            tracing::warn!(
                "`{key}`: {} is readable by other users (mode {mode:03o}): run chmod 600 on it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _key: &str) {}

/// Strips a trailing `/` and `/api/v3`, and requires https except on loopback or when
/// plain http is explicitly allowed.
pub fn normalize_base_url(raw: &str, allow_insecure_http: bool) -> Result<Url, String> {
    let trimmed = raw.trim();
    let mut url = Url::parse(trimmed).map_err(|error| {
        format!(
            "not a URL ({error}): use the Authentik address, e.g. https://authentik.example.com"
        )
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err("remove the query string or fragment: give only the Authentik address".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("remove the credentials from the URL: put the token in token_file".into());
    }
    require_secure_transport(&url, allow_insecure_http)?;
    let mut path = url.path().trim_end_matches('/').to_string();
    if let Some(stripped) = path.strip_suffix("/api/v3") {
        path = stripped.to_string();
    }
    url.set_path(if path.is_empty() { "/" } else { &path });
    Ok(url)
}

/// https, or plain http to a loopback address or when explicitly allowed.
fn require_secure_transport(url: &Url, allow_insecure_http: bool) -> Result<(), String> {
    let host = url
        .host()
        .ok_or("the URL has no host: use e.g. https://authentik.example.com")?
        .to_owned();
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http || is_loopback(&host) => Ok(()),
        "http" => Err(
            "plain http sends the token unencrypted: use https, or set allow_insecure_http = true if you accept that"
                .into(),
        ),
        other => Err(format!("scheme `{other}` is not supported: use https")),
    }
}

fn is_loopback(host: &url::Host<String>) -> bool {
    match host {
        url::Host::Domain(domain) => domain.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_normalization() {
        let url = normalize_base_url("https://ak.example.com/api/v3/", false).unwrap();
        assert_eq!(url.as_str(), "https://ak.example.com/");
        let url = normalize_base_url("https://example.com/auth/", false).unwrap();
        assert_eq!(url.as_str(), "https://example.com/auth");
        assert!(normalize_base_url("http://127.0.0.1:9000", false).is_ok());
        assert!(normalize_base_url("http://[::1]:9000", false).is_ok());
        assert!(normalize_base_url("http://localhost:9000", false).is_ok());
        let error = normalize_base_url("http://ak.example.com", false).unwrap_err();
        assert!(error.contains("allow_insecure_http"), "{error}");
        assert!(normalize_base_url("http://ak.example.com", true).is_ok());
        assert!(normalize_base_url("ftp://ak.example.com", true).is_err());
        assert!(normalize_base_url("ak.example.com", false).is_err());
        assert!(normalize_base_url("https://ak.example.com/?x=1", false).is_err());
    }

    #[test]
    fn toml_errors_lose_the_quoted_source_line() {
        let message = "TOML parse error at line 3, column 16\n  |\n3 | token = \"s3cr3t\n  |                ^\ninvalid basic string\n";
        assert_eq!(
            without_source_lines(message),
            "TOML parse error at line 3, column 16: invalid basic string"
        );
    }

    #[test]
    fn api_url_keeps_a_path_prefix() {
        let source = test_source("https://example.com/auth");
        assert_eq!(
            source.api_url("core/users/").as_str(),
            "https://example.com/auth/api/v3/core/users/"
        );
        let source = test_source("https://example.com");
        assert_eq!(
            source.api_url("admin/version/").as_str(),
            "https://example.com/api/v3/admin/version/"
        );
    }

    #[test]
    fn source_names_are_path_safe() {
        assert!(is_valid_source_name("corp"));
        assert!(is_valid_source_name("corp-eu_2"));
        assert!(!is_valid_source_name("Corp"));
        assert!(!is_valid_source_name("../x"));
        assert!(!is_valid_source_name(""));
    }

    #[test]
    fn fingerprint_changes_with_data_shaping_settings() {
        let mut source = test_source("https://example.com");
        let before = source.settings_fingerprint();
        source.page_size = 20;
        assert_eq!(before, source.settings_fingerprint());
        source.disable_group_sync = true;
        assert_ne!(before, source.settings_fingerprint());
        // ignore_fields shape every hash: a change is a settings event in the ledger.
        let mut source = test_source("https://example.com");
        source.ignore_fields = vec!["metadata.last_sync".into()];
        assert_ne!(before, source.settings_fingerprint());
        // Without them the fingerprint is the one schema-1 runs recorded, so an upgrade
        // does not start a new baseline.
        assert_eq!(
            before,
            "747c8c9c443f50a0a12789b2802cd7661af8230115017fb916030a09c57d61f8"
        );
    }

    #[test]
    fn allowed_hosts_are_names_or_addresses_without_a_port() {
        let http = |hosts: &[&str]| {
            validate_http(RawHttp {
                listen: "127.0.0.1:9464".into(),
                allow_remote: false,
                allowed_hosts: hosts.iter().map(|host| host.to_string()).collect(),
            })
        };
        let config = http(&[
            "Aksync.Example.COM",
            "monitor-1",
            "[2001:DB8::1]",
            "192.0.2.7",
        ])
        .unwrap();
        assert_eq!(
            config.allowed_hosts,
            [
                "aksync.example.com",
                "monitor-1",
                "2001:db8::1",
                "192.0.2.7"
            ]
        );
        for bad in [
            "",
            "https://aksync.example.com",
            "aksync.example.com:443",
            "*.example.com",
            "-bad.example.com",
            "a..b",
            "aksync.example.com/",
            "white space",
        ] {
            let error = http(&[bad]).unwrap_err();
            assert!(
                error.contains("http.allowed_hosts") && error.contains("without scheme, port"),
                "{bad:?}: {error}"
            );
        }
        let many: Vec<String> = (0..=MAX_ALLOWED_HOSTS).map(|n| format!("h{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(http(&many).unwrap_err().contains("at most 32"));
    }

    fn test_source(base: &str) -> SourceConfig {
        SourceConfig {
            base_url: normalize_base_url(base, false).unwrap(),
            ..crate::testing::source_config()
        }
    }
}
