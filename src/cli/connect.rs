//! `aksync connect` and `aksync disconnect`: the setup and removal steps of a source. A
//! connection is checked as `aksync check` checks a source before anything is written; then
//! the source's own file `conf.d/NAME.toml` is put in place and the connection recorded in
//! the evidence ledger. A disconnection removes that file (the stored credentials) and
//! records itself; the source's history stays, as evidence.

use std::io::Read;
use std::path::PathBuf;

use super::output::print_line;
use super::{CliError, Exit};
use crate::authentik::health::check_source;
use crate::clock::Clock;
use crate::config::drop_in::{self, NewSource, NewToken, SetAside};
use crate::config::{Config, ConfigLocation};
use crate::display::escape;
use crate::ledger::entry::{Body, ConnectionEvent};
use crate::ledger::Pending;
use crate::run::sync::STORE_WAIT;
use crate::store::{HealthStatus, Store};

/// What `aksync connect` was given.
pub(super) struct ConnectRequest {
    pub name: String,
    pub base_url: String,
    pub token_file: Option<PathBuf>,
    pub token_stdin: bool,
    pub primary: bool,
    pub disable_group_sync: bool,
    pub filter: Option<String>,
    pub group_filter: Option<String>,
}

/// How a running daemon learns of a change to its sources.
const RELOAD_HINT: &str =
    "a running daemon picks this up at its next reload (`systemctl reload aksync`)";

pub(super) async fn connect(
    location: &ConfigLocation,
    request: ConnectRequest,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let token = match (&request.token_file, request.token_stdin) {
        (Some(file), false) => NewToken::File(std::path::absolute(file).map_err(|error| {
            CliError::Usage(format!("--token-file {}: {error}", file.display()))
        })?),
        (None, true) => NewToken::Inline(token_from_stdin()?),
        _ => {
            return Err(CliError::Usage(
                "give the token with exactly one of --token-file FILE and --token-stdin".into(),
            ))
        }
    };
    let new = NewSource {
        name: &request.name,
        base_url: &request.base_url,
        token,
        primary_directory: request.primary,
        disable_group_sync: request.disable_group_sync,
        filter: request.filter.as_deref(),
        group_filter: request.group_filter.as_deref(),
    };
    let (mut config, text) = drop_in::with_new_source(location, &new)?;
    config.check_state_dir_owner()?;
    config.read_signing_key()?;
    let source = &config.sources[&request.name];
    config.read_token(&source.token)?;
    let health = check_source(source, clock).await;
    if health.status != HealthStatus::Healthy {
        return Err(CliError::Runtime(format!(
            "{}: {}: {}; nothing was written",
            source.name,
            health.status.as_str(),
            health
                .reason
                .as_deref()
                .unwrap_or("the health check failed")
        )));
    }
    let store = Store::open(&config.database_path(), STORE_WAIT)?;
    let path = text.stage()?.install()?;
    let event = ConnectionEvent::of(source, &path, Some(&health));
    if let Err(error) = record(&config, &store, &source.name, Body::Connected(event), clock) {
        // Without its entry the connection is no evidence: the file goes again.
        if let Err(removal) = std::fs::remove_file(&path) {
            eprintln!(
                "aksync: cannot remove {} again ({removal}): remove it by hand",
                path.display()
            );
        }
        return Err(error);
    }
    store.put_health(&health)?;
    print_line(&format!(
        "{}: {}: Authentik {}, token user {}",
        source.name,
        health.status.as_str(),
        escape(health.authentik_version.as_deref().unwrap_or("?")),
        escape(health.token_user.as_deref().unwrap_or("?"))
    ))?;
    print_line(&format!(
        "{}: connected: wrote {} (readable by its owner only) and recorded the connection in the evidence ledger; `aksync sync --source {}` syncs it now, and {RELOAD_HINT}",
        source.name,
        path.display(),
        source.name
    ))?;
    Ok(Exit::Success)
}

pub(super) fn disconnect(
    location: &ConfigLocation,
    name: &str,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let path = drop_in::of_connected_source(location, name)?;
    let mut config = Config::load(location)?;
    config.check_state_dir_owner()?;
    config.read_signing_key()?;
    let source = &config.sources[name];
    let event = ConnectionEvent::of(source, &path, None);
    let store = Store::open(&config.database_path(), STORE_WAIT)?;
    let aside = SetAside::new(&path)?;
    // On an error the file is put back as it was: still connected, nothing recorded.
    record(&config, &store, name, Body::Disconnected(event), clock)?;
    aside.discard()?;
    let runs = store.runs(Some(name))?.len();
    print_line(&format!(
        "{name}: disconnected: removed {} (its stored credentials) and recorded the disconnection in the evidence ledger; its {runs} run(s) and their evidence stay (`aksync runs`, `aksync verify`)",
        path.display()
    ))?;
    print_line(&format!(
        "{name}: revoke its token in Authentik now: Directory > Tokens and App passwords; {RELOAD_HINT} and stops collecting from it"
    ))?;
    if let Err(error) = Config::load(location) {
        eprintln!("aksync: the configuration without `{name}` does not load: {error}");
    }
    Ok(Exit::Success)
}

/// Appends a connection's entry to the source's chain.
fn record(
    config: &Config,
    store: &Store,
    source: &str,
    body: Body,
    clock: &dyn Clock,
) -> Result<(), CliError> {
    let mut pending = Pending::new(
        source,
        clock.now(),
        body,
        config.ledger.signing_key.as_deref(),
    );
    Ok(store.append_ledger(source, &mut pending)?)
}

/// The token on standard input, alone (surrounding whitespace aside).
fn token_from_stdin() -> Result<crate::config::secret::ApiToken, CliError> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(crate::config::MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|error| {
            CliError::Usage(format!(
                "--token-stdin: cannot read standard input: {error}"
            ))
        })?;
    if raw.len() as u64 > crate::config::MAX_TOKEN_FILE_BYTES {
        return Err(CliError::Usage(format!(
            "--token-stdin: standard input is larger than {} KiB, so it is not a token: give the token alone",
            crate::config::MAX_TOKEN_FILE_BYTES / 1024
        )));
    }
    let text = String::from_utf8(raw).map_err(|_| {
        CliError::Usage("--token-stdin: standard input is not text: give the token alone".into())
    })?;
    crate::config::checked_token(&text, "--token-stdin: the token on standard input")
        .map_err(CliError::Usage)
}
