//! The `aksync` binary: parse the command line, run the command, print any error as one line.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// A run or a diff allocates and frees millions of small values (records, keys, pages);
/// mimalloc does that with far less overhead than the system allocator. It is built with
/// `no_thp`: with transparent huge pages its arenas fault in 2 MiB at a time, which cost a
/// 100k-user first sync 50 MiB of peak RSS and the diff a quarter of its time zeroing pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    install_panic_hook();
    let opt = match aksync::cli::opt::Opt::try_parse() {
        Ok(opt) => opt,
        Err(error) if !error.use_stderr() => {
            // --help and --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // clap explains over several lines; the part before the usage is the message.
            let rendered = error.render().to_string();
            let message = rendered
                .split("\n\nUsage:")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.trim_start_matches("error: ");
            eprintln!(
                "{}aksync: {message} (see aksync --help)",
                aksync::logging::error_line_prefix()
            );
            return ExitCode::from(aksync::cli::Exit::Usage as u8);
        }
    };
    // Store operations block their thread; a few spare workers keep the daemon's endpoint
    // and timers answering while runs commit.
    let workers = std::thread::available_parallelism().map_or(4, |cores| cores.get().max(4));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!(
                "{}aksync: cannot start the async runtime: {error}",
                aksync::logging::error_line_prefix()
            );
            return ExitCode::from(aksync::cli::Exit::Failure as u8);
        }
    };
    let exit = match runtime.block_on(aksync::cli::run(opt)) {
        Ok(exit) => exit,
        Err(error) => {
            // Errors may quote what a server sent; escaped, they cannot drive the terminal.
            let _ = writeln!(
                std::io::stderr(),
                "{}aksync: {}",
                aksync::logging::error_line_prefix(),
                aksync::display::escape(&error.to_string())
            );
            error.exit()
        }
    };
    // A blocking task that is still waiting (a lock, a slow disk) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(exit as u8)
}

/// A panic is a bug, but it still gets one line and no backtrace. Panics that the store turns
/// into a "corrupt database" error are not printed at all.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if aksync::store::in_guarded_operation() {
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let first_line = message.lines().next().unwrap_or("");
        eprintln!(
            "{}aksync: internal error, please report it: {}",
            aksync::logging::error_line_prefix(),
            aksync::display::escape(first_line)
        );
    }));
}
