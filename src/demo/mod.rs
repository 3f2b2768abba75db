//! The demo: the bundled fake Authentik with a generated directory, synced into a temporary
//! state directory with the same code path as a real sync, then printed. The fake Authentik
//! ([`fake`]) is the tests' too; neither is part of the product's data flow.

pub mod fake;

use std::path::PathBuf;

use crate::cli::opt::{FormatArgs, RunChoice, ShowFilters, ShowKind};
use crate::cli::output::print_line;
use crate::cli::show::ShowRequest;
use crate::cli::{self, CliError, Exit};
use crate::clock::Clock;
use crate::config::{Config, ConfigLocation};
use crate::demo::fake::{Directory, FakeAuthentik, READER_TOKEN};

const DEMO_SOURCE: &str = "demo";
/// The seed of the demo's generated directory (also of the previous schema's test fixture).
pub const DEMO_SEED: u64 = 2026;

pub async fn run(
    people: usize,
    state_dir: Option<PathBuf>,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let runtime_error =
        |what: &str, error: std::io::Error| CliError::Runtime(format!("demo: {what}: {error}"));
    let state_dir = match state_dir {
        Some(dir) => dir,
        // Owner-only from the start: it will hold the directory's names and emails.
        None => tempfile::Builder::new()
            .prefix("aksync-demo-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|error| runtime_error("cannot create a temporary directory", error))?
            .keep(),
    };
    crate::config::state_dir::create_private_dir(&state_dir)
        .map_err(|error| runtime_error(&format!("cannot create {}", state_dir.display()), error))?;
    let server = FakeAuthentik::start(Directory::generate(DEMO_SEED, people))
        .await
        .map_err(|error| runtime_error("cannot start the fake Authentik", error))?;
    let config_path = state_dir.join("config.toml");
    let token_path = state_dir.join("token");
    // Written owner-only, as a token file should be.
    crate::output::artifacts::write_file(&token_path, READER_TOKEN.as_bytes())
        .map_err(|error| CliError::Runtime(format!("demo: {error}")))?;
    let config_text = format!(
        "# Written by `aksync demo`; the fake server it names is gone when the demo ends.\n\
         state_dir = {state_dir:?}\n\n[sources.{DEMO_SOURCE}]\nbase_url = {base_url:?}\ntoken_file = \"token\"\n",
        state_dir = state_dir.display().to_string(),
        base_url = server.base_url(),
    );
    std::fs::write(&config_path, config_text).map_err(|error| {
        runtime_error(&format!("cannot write {}", config_path.display()), error)
    })?;
    let config = Config::load(&ConfigLocation::Explicit(config_path.clone()))?;
    print_line(&format!(
        "Fake Authentik at {} with {people} generated people; state in {}\n",
        server.base_url(),
        state_dir.display()
    ))?;
    let exit = cli::sync(&config, None, clock).await?;
    if exit != Exit::Success {
        server.shutdown().await;
        return Ok(exit);
    }
    print_line(
        "\nChanging the directory: a new hire, a leaver, a promotion to the admin group...",
    )?;
    server.with_state(|state| change_directory(&mut state.directory));
    let exit = cli::sync(&config, None, clock).await?;
    server.shutdown().await;
    if exit != Exit::Success {
        return Ok(exit);
    }
    print_line("")?;
    cli::evidence::diff(
        &config,
        &config.sources[DEMO_SOURCE],
        "previous",
        "latest",
        false,
    )?;
    let database = config.database_path();
    let table = FormatArgs {
        json: false,
        csv: false,
    };
    let latest = RunChoice {
        run: "latest".to_string(),
        at: None,
    };
    let source = &config.sources[DEMO_SOURCE];
    for kind in [ShowKind::Accounts, ShowKind::Groups] {
        print_line("")?;
        let request = ShowRequest {
            kind,
            run: &latest,
            all: false,
            filters: &ShowFilters::default(),
            format: &table,
        };
        cli::show::show(&config, source, &request)?;
    }
    print_line("")?;
    cli::runs(&database, None, false, false)?;
    print_line(&format!(
        "\nEnvelopes and audit reports are in {}/envelopes and {}/reports.\n\
         Query the stored history yourself, e.g.:\n  aksync --config {} report latest\n  aksync --config {} show memberships",
        state_dir.display(),
        state_dir.display(),
        config_path.display(),
        config_path.display()
    ))?;
    Ok(Exit::Success)
}

/// One of each event an auditor samples: a joiner, a leaver, a mover with a privilege
/// escalation.
pub fn change_directory(directory: &mut Directory) {
    let admins = directory
        .group_by_name("authentik Admins")
        .map(|group| group.pk.clone());
    directory.add_user("new.hire", "internal");
    let mut people = directory.users.values_mut().filter(|user| {
        user.user_type == "internal" && user.is_active && user.username != "akadmin"
    });
    if let Some(leaver) = people.next() {
        leaver.is_active = false;
    }
    if let (Some(promoted), Some(admins)) = (people.next(), admins) {
        promoted.groups.push(admins);
    }
}
