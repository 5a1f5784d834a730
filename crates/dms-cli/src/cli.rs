//! The clap definitions: the single source of `--help`, completions and the man page.

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use dms_store::{Pid, TargetId};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

const MAIN_EXAMPLES: &str = "\
Examples:
  # start a helper for target-1 and show it (no root needed with a temp run dir)
  dms --run-dir /tmp/dms spawn target-1 -- sleep 300
  dms --run-dir /tmp/dms status
  # stop it
  dms --run-dir /tmp/dms kill target-1

Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input,
3 not running (kill, status TARGET).";

const SPAWN_EXAMPLES: &str = "\
Examples:
  # credentials come from dms's own environment or a file, never the command line
  export AWS_SECRET_ACCESS_KEY=...
  dms spawn target-1 --mount /mnt/t1 --env AWS_SECRET_ACCESS_KEY \\
      --env vault_s3_bucket=backups --env-file /etc/dms/target-1.env \\
      -- /usr/bin/s3vaultfuse.py
  dms --json spawn demo --replace -- sleep 300

Exit codes: 0 started, 1 failed (already running, cannot start), 2 bad usage.";

const KILL_EXAMPLES: &str = "\
Examples:
  dms kill target-1
  dms --json kill target-1 --grace 2.5

Exit codes: 0 stopped, 1 failed, 3 was not running (a stale PID file is removed).";

const STATUS_EXAMPLES: &str = "\
Examples:
  dms status
  dms --json status target-1

Exit codes: all targets: 0; one target: 0 running, 3 not running.";

const STATS_EXAMPLES: &str = "\
Example:
  dms --json stats";

const CLEANUP_EXAMPLES: &str = "\
Examples:
  dms cleanup              # remove PID files of dead, foreign or unreadable entries
  dms cleanup --all -g 5   # also stop every running helper";

const ADOPT_EXAMPLES: &str = "\
Example:
  dms adopt target-1 12345

Exit codes: 0 adopted, 1 refused (PID not alive, target already running), 2 bad usage.";

const SERVE_EXAMPLES: &str = "\
Examples:
  dms --run-dir /tmp/d serve &
  curl --unix-socket /tmp/d/dms.sock http://dms/v1/health

Exit codes: 0 stopped by SIGTERM or SIGINT (the helpers keep running), 1 cannot serve
(another daemon serves the run dir, the socket is taken), 2 bad usage.";

const LOGS_EXAMPLES: &str = "\
Examples:
  dms logs target-1            # its last 100 lines
  dms logs target-1 -n 20 -f   # the last 20, then what it writes, across truncations

Exit codes: 0 printed (or followed until interrupted), 1 no log to read, 2 bad usage.";

const RESTART_EXAMPLES: &str = "\
Examples:
  dms restart target-1
  dms --json restart target-1 --grace 2

Exit codes: 0 restarted, 1 failed (nothing recorded to restart, no daemon), 2 bad usage.";

const EVENTS_EXAMPLES: &str = "\
Examples:
  dms events                 # follow from now on
  dms --json events --since 0  # replay the kept events, then follow

Exit codes: 0 the daemon ended the stream (it stopped), 1 no daemon.";

const RELOAD_EXAMPLES: &str = "\
Example:
  dms reload

Exit codes: 0 reloaded (bad files are reported and skipped), 1 no daemon.";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  dms completions bash > /etc/bash_completion.d/dms
  dms completions zsh > \"${fpath[1]}/_dms\"";

const MAN_EXAMPLES: &str = "\
Examples:
  dms man | man -l -
  dms man spawn > dms-spawn.1";

/// The help heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// Which store backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// `sqlite` when `<run-dir>/dms.sqlite3` exists, else `pidfile`.
    Auto,
    /// PID files only.
    Pidfile,
    /// PID files plus SQLite metadata (`<run-dir>/dms.sqlite3`).
    Sqlite,
}

/// Starts, tracks and stops one helper process per backup target.
#[derive(Debug, Parser)]
#[command(
    name = "dms",
    version,
    about = "Starts, tracks and stops one helper process per backup target",
    long_about = "Starts, tracks and stops one long-running helper process per backup target, \
recorded in memory and as PID files <run-dir>/s3/<TARGET>.pid, and never signals a process \
whose identity it cannot prove.",
    after_help = MAIN_EXAMPLES,
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// The run directory: PID files in s3/, locks in locks/, logs in logs/; created if missing.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "DMS_RUN_DIR",
        default_value = "/run/dms",
        value_name = "DIR"
    )]
    pub run_dir: PathBuf,

    /// The store backend (auto: sqlite when dms.sqlite3 exists in the run dir, else pidfile).
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        env = "DMS_BACKEND",
        value_enum,
        default_value_t = BackendChoice::Auto
    )]
    pub backend: BackendChoice,

    /// Do not ask the daemon: act on the run dir from this process (for emergencies, or
    /// when `dms serve` hangs). Without it, `spawn`, `kill`, `status`, `stats`, `cleanup`
    /// and `adopt` are answered by the daemon whose socket (`<run-dir>/dms.sock`) accepts
    /// a connection, with the same output and exit codes. The per-target locks keep both
    /// paths safe together.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub direct: bool,

    /// Machine-readable output on stdout: one JSON document per command.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,

    /// More logging on stderr (default errors only; -v warnings, -vv info, -vvv debug,
    /// -vvvv trace). RUST_LOG, when set, replaces this.
    #[arg(short, long, global = true, help_heading = GLOBAL, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// No logging on stderr; the final `dms: error:` line of a failure is still printed.
    #[arg(short, long, global = true, help_heading = GLOBAL, action = ArgAction::Count)]
    pub quiet: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start PROGRAM detached for TARGET, record it, and print its info.
    #[command(after_help = SPAWN_EXAMPLES)]
    Spawn(SpawnArgs),

    /// Stop TARGET's helper: SIGTERM to its process group, SIGKILL after the grace period.
    #[command(after_help = KILL_EXAMPLES)]
    Kill(KillArgs),

    /// Show one target's info, or every tracked target's, sorted by target.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),

    /// Show totals: tracked, running, stale, foreign, corrupt.
    #[command(after_help = STATS_EXAMPLES)]
    Stats,

    /// Remove PID files whose process is dead, foreign or unreadable.
    #[command(after_help = CLEANUP_EXAMPLES)]
    Cleanup(CleanupArgs),

    /// Record an already-running process as TARGET's helper.
    #[command(after_help = ADOPT_EXAMPLES)]
    Adopt(AdoptArgs),

    /// Stop TARGET's helper and start it again from the spec the daemon recorded (needs
    /// `dms serve`).
    #[command(after_help = RESTART_EXAMPLES)]
    Restart(RestartArgs),

    /// Print the daemon's events as they happen, one a line (needs `dms serve`).
    #[command(after_help = EVENTS_EXAMPLES)]
    Events(EventsArgs),

    /// Make the daemon re-read its declared targets (`dms serve --targets DIR`).
    #[command(after_help = RELOAD_EXAMPLES)]
    Reload,

    /// Run the daemon of the run dir: the HTTP API of serve.md on a Unix socket
    /// (default: dms.sock in the run dir), in the foreground, logging to stderr.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),

    /// Print the last lines of TARGET's helper log (and its older generation, .1);
    /// with -f, follow it as `tail -F` does. Reads the files, with or without a daemon.
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),

    /// Print a shell completion script to stdout.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff) of dms or of one command to stdout.
    #[command(after_help = MAN_EXAMPLES)]
    Man {
        /// The command whose page to print; the main page when omitted.
        command: Option<String>,
    },
}

/// Arguments of `dms spawn`.
#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// The target ID: 1 to 200 bytes of [A-Za-z0-9._-], not starting with '.'.
    #[arg(value_parser = parse_target)]
    pub target: TargetId,

    /// The mount point the helper serves: created if missing, recorded, reported in
    /// status; the helper counts as started only once DIR is a mount point that answers.
    /// Not `/`, not inside or above the run dir, not another running target's mount.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,

    /// With --mount: seconds to wait for DIR to become a mount point before the spawn
    /// fails (the helper is then stopped and nothing is kept).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30",
          requires = "mount")]
    pub ready_timeout: Duration,

    /// Add KEY=VALUE to the helper's environment, or KEY with its value from dms's own
    /// environment (keeps secrets off the command line). Repeatable.
    #[arg(long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<OsString>,

    /// Add the KEY=VALUE lines of FILE to the helper's environment ('#' comments and
    /// blank lines allowed; values are taken verbatim). Repeatable; --env wins over files.
    /// FILE must be a regular file (a FIFO, as from `<(...)`, is refused: it could block).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,

    /// The helper's log file, stdout and stderr appended [default: logs/TARGET.log in the
    /// run dir]. A regular file or a character device (/dev/null); a symlink, FIFO or
    /// socket is refused.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,

    /// Stop a running helper of TARGET first, instead of refusing. What can fail without
    /// starting anything (program, log, mount path, env files) is checked before the old
    /// helper is stopped: if it fails, the old helper keeps running.
    #[arg(long)]
    pub replace: bool,

    /// With --replace: seconds to wait after SIGTERM for the old helper before SIGKILL
    /// (decimals allowed).
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs, default_value = "10",
          requires = "replace")]
    pub grace: Duration,

    /// Restart the helper when it exits (needs `dms serve`, which supervises it): `never`
    /// (the default) only records the exit.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub restart: Option<RestartPolicy>,

    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_names = ["PROGRAM", "ARG"])]
    pub command: Vec<OsString>,
}

/// A restart policy of `dms spawn --restart` (serve.md "Supervision"; needs `dms serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartPolicy {
    /// Only record the exit.
    Never,
    /// Restart after an exit with a non-zero status or by a signal, or a stale mount.
    OnFailure,
    /// Restart after any exit.
    Always,
}

impl RestartPolicy {
    /// The policy's name in the API (`never`, `on-failure`, `always`).
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

/// Arguments of `dms restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The target ID.
    #[arg(value_parser = parse_target)]
    pub target: TargetId,

    /// Seconds to wait after SIGTERM before SIGKILL (decimals allowed).
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    pub grace: Duration,
}

/// Arguments of `dms events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First replay the kept events after this sequence number (0: all that are kept).
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
}

/// Arguments of `dms serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The socket to listen on [default: dms.sock in the run dir]; mode 0660.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The socket's group (a name or a number); its members may change things as the
    /// daemon's own user can [default: the daemon's group].
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// The bound of each helper log: within 2 s of a log passing it, its tail is kept as
    /// LOG.1 (one older generation) and the log is truncated in place. Bytes, or with a
    /// K, M or G suffix (KiB, MiB, GiB).
    #[arg(long, value_name = "N", value_parser = parse_bytes, default_value = "16M")]
    pub log_max_bytes: u64,

    /// Also serve GET /metrics (Prometheus text format, and nothing else) over TCP on
    /// ADDR, an IP address and port such as 127.0.0.1:9464, for a Prometheus that cannot
    /// reach the Unix socket (which serves /metrics too).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// A directory of declared targets, one `<target>.toml` each (argv, env_files, mount,
    /// log, `[restart]`); applied at start and at each reload (SIGHUP, POST /v1/reload).
    #[arg(long, value_name = "DIR")]
    pub targets: Option<PathBuf>,

    /// Seconds between the checks of supervised mounts (decimals allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10",
          env = "DMS_MOUNT_CHECK_SECS", hide = true)]
    pub mount_check_secs: Duration,
}

/// Arguments of `dms logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The target ID.
    #[arg(value_parser = parse_target)]
    pub target: TargetId,

    /// How many of the last lines to print.
    #[arg(short = 'n', long, value_name = "N", default_value = "100",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub lines: u64,

    /// Keep printing what the helper writes, across truncations and replacements of the
    /// log (as `tail -F`), until interrupted.
    #[arg(short, long)]
    pub follow: bool,
}

/// Arguments of `dms kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// The target ID.
    #[arg(value_parser = parse_target)]
    pub target: TargetId,

    /// Seconds to wait after SIGTERM before SIGKILL (decimals allowed).
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    pub grace: Duration,
}

/// Arguments of `dms status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this target (exit code 3 when it is not running).
    #[arg(value_parser = parse_target)]
    pub target: Option<TargetId>,
}

/// Arguments of `dms cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Also stop every running helper.
    #[arg(long)]
    pub all: bool,

    /// With --all: seconds to wait after SIGTERM before SIGKILL (one grace shared by all
    /// helpers: they are stopped together).
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    pub grace: Duration,

    /// Also detach each recorded mount that is stale or whose helper is gone (only the
    /// exact mount recorded, never anything else at or under its path).
    #[arg(long)]
    pub mounts: bool,
}

/// Arguments of `dms adopt`.
#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The target ID.
    #[arg(value_parser = parse_target)]
    pub target: TargetId,

    /// The PID of the running process to adopt.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
}

fn parse_target(s: &str) -> Result<TargetId, String> {
    TargetId::new(s).map_err(|e| e.to_string())
}

fn parse_pid(s: &str) -> Result<Pid, String> {
    Pid::parse(s.as_bytes()).map_err(|e| format!("invalid PID: {e}"))
}

/// Parses a size in bytes: `1048576`, `512K`, `16M`, `1G` (binary units; `KiB`, `MiB`,
/// `GiB` too). At least 1.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size: write bytes, or a number with K, M or G (e.g. 16M)"
            ))
        }
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: write bytes, or a number with K, M or G (e.g. 16M)")
    })?;
    match n.checked_mul(mult) {
        Some(0) => Err(format!("{s:?}: the bound must be at least 1 byte")),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too large")),
    }
}

/// Parses a non-negative number of seconds, decimals allowed (`10`, `0.5`).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 10 or 0.5)"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a non-negative, finite number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example() {
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("dms "), "{} has no example", sub.get_name());
        }
    }

    #[test]
    fn secs_parse() {
        assert_eq!(parse_secs("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_secs("0.25").unwrap(), Duration::from_millis(250));
        for bad in ["-1", "x", "inf", "NaN", ""] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes_parse() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("16M").unwrap(), 16 << 20);
        assert_eq!(parse_bytes("512K").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        for bad in ["0", "-1", "x", "1T", "", "1.5M", "99999999999999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spawn_needs_the_double_dash() {
        let r = Cli::try_parse_from(["dms", "spawn", "t", "sleep", "1"]);
        assert!(r.is_err());
        let c = Cli::try_parse_from(["dms", "spawn", "t", "--", "sleep", "1"]).unwrap();
        match c.command {
            Command::Spawn(a) => assert_eq!(a.command, ["sleep", "1"]),
            other => panic!("{other:?}"),
        }
    }
}
