//! The command line: global options and one subcommand per job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "aksync",
    version,
    about = "Authentik directory snapshots, joiner/mover/leaver diffs and audit evidence"
)]
pub struct Opt {
    /// Configuration file [default: /etc/aksync/config.toml]; `conf.d/*.toml` beside it is
    /// merged in, then AKSYNC_* environment variables.
    #[arg(long, global = true, env = "AKSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that each source answers, the token is valid and can read users and groups.
    Check {
        #[command(flatten)]
        source: SourceArg,
        /// Print JSON instead of one line per source.
        #[arg(long)]
        json: bool,
    },
    /// Add a source: check it as `check` does, then write its own configuration file
    /// `conf.d/NAME.toml` beside the configuration (owner-only; it holds the token or names
    /// its file) and record the connection in the evidence ledger. Nothing is written unless
    /// the check passes.
    Connect {
        /// The source's name (lowercase letters, digits, `-` and `_`).
        name: String,
        /// The Authentik address, e.g. https://authentik.example.com.
        #[arg(long, value_name = "URL")]
        base_url: String,
        #[command(flatten)]
        token: TokenArgs,
        /// Make this source the organization's primary directory.
        #[arg(long)]
        primary: bool,
        /// Sync users only: no groups or memberships.
        #[arg(long)]
        disable_group_sync: bool,
        /// A CEL expression on each account's `payload`: the matching accounts are the
        /// source's scope (the others are stored too, out of scope).
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
        /// The same for groups: a CEL expression on each group's `payload`.
        #[arg(long, value_name = "EXPR")]
        group_filter: Option<String>,
    },
    /// Remove a source that `connect` added: its file `conf.d/NAME.toml` (the stored
    /// credentials) goes, the disconnection is recorded in the evidence ledger, and its
    /// history stays. Revoke the token in Authentik afterwards.
    Disconnect {
        /// The source's name.
        name: String,
    },
    /// Sync each source now and store the snapshot as a run.
    Sync {
        #[command(flatten)]
        source: SourceArg,
        /// Fetch and compare with the latest complete run, print the envelopes the run would
        /// emit (stdout) and what it would find (stderr), and write nothing: no run, no file.
        #[arg(long)]
        dry_run: bool,
    },
    /// Release a quarantined run (too many leavers or removals at once): its held changes
    /// are stored as the source's latest snapshot, its reports written and its envelopes
    /// delivered. Only the source's newest stored run can be approved.
    Approve {
        /// The quarantined run's id.
        run: String,
        #[command(flatten)]
        source: SourceArg,
    },
    /// Discard a quarantined run: it stays in the history, marked rejected, nothing of it is
    /// delivered, and the next run is compared with the last complete run.
    Reject {
        /// The quarantined run's id.
        run: String,
        #[command(flatten)]
        source: SourceArg,
    },
    /// List stored runs, newest first, with the connections and disconnections of sources
    /// between them.
    Runs {
        #[command(flatten)]
        source: SourceArg,
        #[arg(long)]
        json: bool,
        /// With --json: list connections and disconnections too, as objects with an `event`
        /// key among the runs (without it, --json lists runs only, as it always did).
        #[arg(long, requires = "json")]
        events: bool,
    },
    /// Print the accounts, groups, memberships or roles of a stored snapshot: the latest, a
    /// run's, or the one in force at a time (--at).
    Show {
        #[arg(value_enum)]
        kind: ShowKind,
        #[command(flatten)]
        source: SourceArg,
        #[command(flatten)]
        run: RunChoice,
        /// Also the records outside the source's scope (its filter, group_filter), with a
        /// `scope` column: `in` or `out`.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filters: ShowFilters,
        #[command(flatten)]
        format: FormatArgs,
    },
    /// Write an access review of a run: one row per account and group it is an effective
    /// member of (and per role it holds), with how it is granted, since when, the last login,
    /// flags for what needs a look, and empty decision columns for the reviewer; then read
    /// the completed file back (`review import`) and follow the revocations (`review status`).
    #[command(args_conflicts_with_subcommands = true)]
    Review {
        #[command(subcommand)]
        action: Option<ReviewAction>,
        #[command(flatten)]
        export: ReviewExport,
    },
    /// Compare two complete runs: joiners, movers, leavers, group and membership changes.
    Diff {
        /// A run id, `latest` or `previous`.
        from: String,
        /// A run id, `latest` or `previous`.
        to: String,
        #[command(flatten)]
        source: SourceArg,
        #[arg(long)]
        json: bool,
    },
    /// Print a run's envelopes (the records that changed), or rebuild its envelope file.
    Envelopes {
        /// A run id, `latest` or `previous`.
        run: String,
        #[command(flatten)]
        source: SourceArg,
        #[arg(long, value_enum, default_value_t = EnvelopeFormat::Jsonl)]
        format: EnvelopeFormat,
        /// Write the envelope file again from the stored snapshots.
        #[arg(long, conflicts_with = "full")]
        rebuild: bool,
        /// Print the run's whole snapshot (every record in scope, action `snapshot`) instead
        /// of its changes; the only output whose Openlane sets say `snapshotComplete: true`.
        #[arg(long)]
        full: bool,
    },
    /// Print or write the audit report of a run, or of a period: the runs after --from up to
    /// RUN, or the runs between --since and --until.
    Report {
        /// A run id, `latest` or `previous` [default: latest].
        #[arg(conflicts_with = "since")]
        run: Option<String>,
        #[command(flatten)]
        source: SourceArg,
        /// Cover every run after this one up to RUN; this run's own changes are not included
        /// (its state is where the period starts).
        #[arg(long, value_name = "RUN", conflicts_with = "since")]
        from: Option<String>,
        /// Cover every run that finished after this time (RFC 3339, e.g.
        /// 2026-01-01T00:00:00Z, or a date, meaning its midnight UTC).
        #[arg(long, value_name = "TIMESTAMP")]
        since: Option<String>,
        /// With --since: up to and including this time [default: now].
        #[arg(long, value_name = "TIMESTAMP", requires = "since")]
        until: Option<String>,
        /// md, json, csv, html or pdf (pdf needs Chromium).
        #[arg(long, default_value = "md")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// One account's timeline across all stored runs: joined, moved, left, rejoined.
    History {
        /// A username, an email address or a uid.
        user: String,
        #[command(flatten)]
        source: SourceArg,
        #[arg(long)]
        json: bool,
    },
    /// Deliver the outbox to the webhook now, or decide about a run whose delivery was
    /// parked (the receiver kept rejecting it, or its envelope file cannot be rebuilt).
    Deliver {
        #[command(flatten)]
        decision: DeliveryDecision,
    },
    /// Remove the runs older than `[retention]` keeps (keep_days, keep_runs), the versions
    /// only they saw, and their envelope and report files; then give free space back to the
    /// file system when no other process is inside a transaction.
    Prune {
        #[command(flatten)]
        source: SourceArg,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check the evidence: every ledger digest recomputed from what is stored and on disk, the
    /// chain and its signatures, each run's record, envelope and report files and snapshot.
    /// With --report, check one report file against its manifest, without the database.
    Verify {
        #[command(flatten)]
        source: SourceArg,
        /// Check the files and snapshots of the runs that started since this time only (the
        /// chain is always checked whole).
        #[arg(long, value_name = "TIMESTAMP", conflicts_with = "report")]
        since: Option<String>,
        /// A report file (or its manifest) to check on its own.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// A public key (from `aksync keygen --public`) that signatures must verify with;
        /// may be given more than once.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make an Ed25519 signing key for the ledger (`--out`), or write the public key of the
    /// configured one (or of `--key`) for an auditor (`--public`).
    Keygen {
        /// Write a new signing key here (PEM, readable by its owner only).
        #[arg(long, value_name = "FILE", required_unless_present = "public")]
        out: Option<PathBuf>,
        /// Write the public key here (PEM).
        #[arg(long, value_name = "FILE")]
        public: Option<PathBuf>,
        /// The signing key whose public key `--public` writes [default: ledger.signing_key_file].
        #[arg(long, value_name = "FILE", requires = "public", conflicts_with = "out")]
        key: Option<PathBuf>,
    },
    /// Run as a service: sync each source on its schedule, deliver the outbox, and serve
    /// /healthz, /metrics and a status page when the `[http]` table is configured. SIGHUP reloads the
    /// configuration; SIGTERM stops.
    Daemon,
    /// Start the bundled fake Authentik with a generated directory, sync it into a temporary
    /// state directory and print what was stored. Needs no configuration.
    Demo {
        /// How many people the generated directory holds.
        #[arg(long, default_value_t = 40)]
        people: usize,
        /// Where to keep the demo's state [default: a new temporary directory].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

impl Command {
    /// Whether the command creates or changes files in the state directory, which must then be this
    /// user's (see [`crate::config::state_dir`]). `check` only stores its result, and does so when
    /// it may; queries only read.
    pub fn writes_state_dir(&self) -> bool {
        match self {
            Command::Sync { dry_run, .. } => !dry_run,
            Command::Deliver { .. }
            | Command::Approve { .. }
            | Command::Reject { .. }
            | Command::Daemon
            | Command::Connect { .. }
            | Command::Disconnect { .. } => true,
            Command::Prune { dry_run, .. } => !dry_run,
            Command::Envelopes { rebuild, .. } => *rebuild,
            Command::Review { action, .. } => matches!(action, Some(ReviewAction::Import { .. })),
            Command::Check { .. }
            | Command::Runs { .. }
            | Command::Show { .. }
            | Command::Diff { .. }
            | Command::Report { .. }
            | Command::History { .. }
            | Command::Verify { .. }
            | Command::Keygen { .. }
            | Command::Demo { .. } => false,
        }
    }
}

/// Which stored run a query reads.
#[derive(Debug, Args)]
pub struct RunChoice {
    /// A run id, or `latest` (the latest complete run).
    #[arg(long, default_value = "latest", value_name = "RUN_ID|latest")]
    pub run: String,
    /// The last complete run that finished at or before this time: RFC 3339, e.g.
    /// 2026-03-03T12:00:00Z, or a date, meaning the end of that day (UTC).
    #[arg(long, value_name = "TIMESTAMP", conflicts_with = "run")]
    pub at: Option<String>,
}

/// What `show` narrows its rows to.
#[derive(Debug, Args, Default)]
pub struct ShowFilters {
    /// memberships, roles: only this group (its name or id); roles: those granted through it.
    #[arg(long, value_name = "NAME_OR_ID")]
    pub group: Option<String>,
    /// memberships, roles: only this account (its username, email or uid).
    #[arg(long, value_name = "USER")]
    pub account: Option<String>,
    /// memberships: a member of a group is a member of every ancestor too; each row says
    /// how it is granted (`direct`, or `via` the groups on the way).
    #[arg(long)]
    pub effective: bool,
    /// accounts: `active` or `inactive`.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// accounts: `user`, `guest` or `service` (Authentik's internal, external and service
    /// accounts).
    #[arg(long = "type", value_name = "TYPE")]
    pub account_type: Option<String>,
    /// accounts: only the privileged ones, by the rule the reports use, with why and since
    /// when (from the evidence ledger); privilege is judged in the source's scope.
    #[arg(long, conflicts_with = "all")]
    pub privileged: bool,
}

/// What `aksync review` writes.
#[derive(Debug, Args)]
pub struct ReviewExport {
    #[command(flatten)]
    pub source: SourceArg,
    #[command(flatten)]
    pub run: RunChoice,
    /// Only these groups (name or id; may be given more than once), and the roles granted
    /// through them.
    #[arg(long, value_name = "NAME_OR_ID")]
    pub group: Vec<String>,
    /// Only the access that makes an account privileged.
    #[arg(long)]
    pub privileged_only: bool,
    /// Flag accounts without a login for this many days before the snapshot.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    pub no_login_days: u32,
    /// csv, xlsx, html or json.
    #[arg(long, value_enum, default_value_t = ReviewFormat::Csv)]
    pub format: ReviewFormat,
    /// Write to this file instead of standard output (needed for xlsx).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ReviewAction {
    /// Read a completed review (CSV or XLSX) back and record its decisions in the evidence
    /// ledger; list the revocations and whether each is carried out yet.
    Import {
        /// The review file as the reviewers completed it.
        file: PathBuf,
    },
    /// List the recorded reviews' revocations: carried out (the access is gone in a later
    /// run) or still pending.
    Status {
        #[command(flatten)]
        source: SourceArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReviewFormat {
    Csv,
    Xlsx,
    Html,
    Json,
}

#[derive(Debug, Args)]
pub struct SourceArg {
    /// Only this source (a `[sources.NAME]` table).
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
}

/// Where `connect` reads the token: exactly one of them.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TokenArgs {
    /// A file holding the token alone; the source's file names it (keep it chmod 600).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Read the token from standard input; it is written into the source's file.
    #[arg(long)]
    pub token_stdin: bool,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct DeliveryDecision {
    /// Queue a parked or skipped run again, batched with the configured batch_size from
    /// where it stopped.
    #[arg(long, value_name = "RUN_ID")]
    pub retry: Option<String>,
    /// Give up a pending or parked run's delivery, so that later runs go on.
    #[arg(long, value_name = "RUN_ID")]
    pub skip: Option<String>,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct FormatArgs {
    /// Print a JSON array of the normalized records.
    #[arg(long)]
    pub json: bool,
    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvelopeFormat {
    /// aksync's self-describing envelopes, one JSON object per line.
    Jsonl,
    /// Openlane's payload-set projection.
    Openlane,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowKind {
    Accounts,
    Groups,
    Memberships,
    /// The RBAC roles each account holds, its own and through its groups.
    Roles,
}
