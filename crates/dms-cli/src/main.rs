//! `dms`: the command line of the dms helper manager.
//!
//! Starts, tracks and stops one long-running helper process per backup target, recorded
//! as PID files `<run-dir>/s3/<TARGET>.pid` (and, with the `sqlite` backend, in
//! `<run-dir>/dms.sqlite3`). The contract (flags, exit codes, JSON shapes) is cli.md;
//! `dms --help` and `dms man` describe it.
//!
//! ```text
//! d=$(mktemp -d)
//! dms --run-dir "$d" spawn demo -- sleep 300
//! dms --run-dir "$d" status
//! dms --run-dir "$d" --json kill demo
//! ```
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input, 3 not running
//! (`kill`, `status TARGET`). Errors are one line on stderr starting `dms: error:`.

mod cli;
mod client;
mod env;
mod logs;
mod output;
mod remote;
mod run;
mod serve;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use std::io::Write;
use std::process::ExitCode;

/// Exit code of a failed operation.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of bad usage or bad input.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of `kill` and `status TARGET` when the helper is not running.
pub const EXIT_NOT_RUNNING: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { command } => return man(command.as_deref()),
        _ => {}
    }
    if let Command::Serve(_) = cli.command {
        // The daemon logs what it does (info) unless told otherwise.
        let verbose = if cli.quiet == 0 {
            cli.verbose.max(2)
        } else {
            0
        };
        init_logging(verbose, cli.quiet);
        return run_serve(cli);
    }
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(&run::CliError::Failed(format!(
                "cannot start the async runtime: {e}; check the process limits (ulimit -n, -u)"
            )))
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e),
    }
}

/// `dms serve`, on a runtime of two worker threads.
fn run_serve(cli: Cli) -> ExitCode {
    let Command::Serve(args) = cli.command else {
        unreachable!("only called for serve")
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(&run::CliError::Failed(format!(
                "cannot start the async runtime: {e}; check the process limits (ulimit -n, -u)"
            )))
        }
    };
    let code = match runtime.block_on(serve::run(cli.run_dir, cli.backend, args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => report(&e),
    };
    // Tasks still running (watchers, idle connections) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// Prints the one-line error and returns its exit code.
fn report(e: &run::CliError) -> ExitCode {
    // Escaped: a message may quote a path or a process's name holding escape sequences.
    eprintln!("dms: error: {}", output::escaped(&one_line(&e.to_string())));
    ExitCode::from(e.exit_code())
}

/// Collapses a message onto one line.
fn one_line(msg: &str) -> String {
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `--help` and `--version` print as clap renders them; every other parse error becomes
/// one `dms: error:` line with the usage of the command, exit code 2.
fn clap_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    // The message is everything before the usage and the "For more information" tip;
    // it may span lines (tips, values with newlines), so it is collapsed onto one.
    let rendered = e.render().to_string();
    let body = rendered.trim_start_matches("error: ");
    let end = ["\n\nUsage:", "\nUsage:", "\n\nFor more information"]
        .iter()
        .filter_map(|m| body.find(m))
        .min()
        .unwrap_or(body.len());
    let msg = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "a command is required".to_owned()
    } else {
        body[..end].to_owned()
    };
    let (name, usage) = usage_of_invoked_command();
    eprintln!(
        "dms: error: {}; usage: {usage} (see {name} --help)",
        one_line(&msg)
    );
    ExitCode::from(EXIT_USAGE)
}

/// The name and usage line of the command named on the command line (`dms spawn`,
/// `dms spawn [OPTIONS] ...`), or of `dms` itself.
fn usage_of_invoked_command() -> (String, String) {
    let mut root = Cli::command();
    root.build();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else { break };
        if arg == "--" {
            break;
        }
        if arg == "--run-dir" || arg == "--backend" {
            args.next();
            continue;
        }
        if arg.starts_with('-') {
            continue;
        }
        if let Some(sub) = root.find_subcommand_mut(arg) {
            let usage = sub.render_usage().to_string();
            return (
                format!("dms {arg}"),
                one_line(usage.trim_start_matches("Usage:")),
            );
        }
        break;
    }
    let usage = root.render_usage().to_string();
    (
        "dms".to_owned(),
        one_line(usage.trim_start_matches("Usage:")),
    )
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dms", &mut buf);
    write_stdout(&buf)
}

fn man(command: Option<&str>) -> ExitCode {
    let mut root = Cli::command();
    root.build();
    let page = match command {
        None => root,
        Some(name) => {
            let Some(sub) = root.find_subcommand(name) else {
                let names: Vec<&str> = root.get_subcommands().map(|s| s.get_name()).collect();
                eprintln!(
                    "dms: error: no command {name:?}; choose one of: {}",
                    names.join(", ")
                );
                return ExitCode::from(EXIT_USAGE);
            };
            // A page name must be 'static; this process prints one page and exits.
            let title: &'static str = Box::leak(format!("dms-{name}").into_boxed_str());
            sub.clone().name(title)
        }
    };
    let mut buf = Vec::new();
    match clap_mangen::Man::new(page).render(&mut buf) {
        Ok(()) => write_stdout(&buf),
        Err(e) => {
            eprintln!("dms: error: cannot render the man page: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Writes `bytes` to stdout; a closed pipe (`dms man | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dms: error: cannot write to stdout: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Logging to stderr: `RUST_LOG` when set; else errors only, `-v` adds warnings, `-vv`
/// info, `-vvv` debug, `-vvvv` trace, and `-q` turns logging off. The final
/// `dms: error:` line is not a log line and is always printed.
fn init_logging(verbose: u8, quiet: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, quiet) {
        (0, 0) => "error",
        (0, _) => "off",
        (1, _) => "warn",
        (2, _) => "info",
        (3, _) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::builder().parse_lossy(s),
        _ => EnvFilter::new(level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}
