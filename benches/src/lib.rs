//! Shared pieces of the dms benchmarks: run-directory fixtures with real helper
//! processes, and the *floor*, the system calls a reuse-safe status scan cannot avoid.
//!
//! - [`fixture`]: `sleep 3600` helpers that are children of the benchmark (killed and
//!   reaped on drop), dead PIDs that no process holds, and sets of N PID files of which
//!   5 % name a live helper, written through a [`dms_store::PidStore`] or as bare files.
//! - [`floor`]: [`floor::floor_scan`] reads the directory, opens, reads and closes each
//!   PID file, sends `kill(pid, 0)` and reads `/proc/PID/stat` of the live ones; nothing
//!   else. Every scan figure is reported as a ratio to it, measured in the same run.
//!   [`floor::floor_scan_and_clear`] adds what clearing a stale entry cannot avoid (the
//!   startup rule that `dms status` runs): the target's lock, a re-read under it, the
//!   unlink.
//!
//! The criterion benches live in `benches/benches/`; `benches/compare.sh` runs the
//! whole-process comparisons (hyperfine) with the binaries in `src/bin/`.
//!
//! ```no_run
//! use dms_benches::{fixture, floor};
//! let helpers = fixture::Helpers::spawn(5)?;            // 5 live `sleep 3600` children
//! let plan = fixture::plan(100, &helpers)?;              // 100 targets, every 20th alive
//! let dir = tempfile::tempdir_in(fixture::tmpfs())?;
//! fixture::write_bare(&dir.path().join("s3"), &plan)?;
//! let counts = floor::floor_scan(&dir.path().join("s3"))?;
//! assert_eq!((counts.files, counts.alive), (100, 5));
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod fixture;
pub mod floor;

pub use cpu_time::ProcessCpuTime;

mod cpu_time {
    use criterion::measurement::{Measurement, ValueFormatter, WallTime};
    use std::time::Duration;

    /// A criterion measurement of this process's CPU time (user + system, all threads:
    /// `CLOCK_PROCESS_CPUTIME_ID`) instead of wall time. On a shared, loaded machine
    /// wall time includes the time other processes ran; CPU time does not, so ratios
    /// between scans stay meaningful. Work done by other processes (the helpers) is not
    /// counted either way.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ProcessCpuTime;

    fn now() -> Duration {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }

    static WALL: WallTime = WallTime;

    impl Measurement for ProcessCpuTime {
        type Intermediate = Duration;
        type Value = Duration;

        fn start(&self) -> Duration {
            now()
        }
        fn end(&self, start: Duration) -> Duration {
            now().saturating_sub(start)
        }
        fn add(&self, a: &Duration, b: &Duration) -> Duration {
            *a + *b
        }
        fn zero(&self) -> Duration {
            Duration::ZERO
        }
        fn to_f64(&self, v: &Duration) -> f64 {
            v.as_nanos() as f64
        }
        fn formatter(&self) -> &dyn ValueFormatter {
            WALL.formatter()
        }
    }
}

use dms_core::{ManagerOptions, UsageSampling};
use std::path::Path;

/// The manager options the `dms` command line uses (`crates/dms-cli/src/run.rs`,
/// `open_manager`), so that in-process figures match what `dms status` does.
pub fn cli_options(run_dir: &Path) -> ManagerOptions {
    let mut opts = ManagerOptions::new(run_dir);
    opts.usage = CLI_USAGE;
    opts
}

/// How the command line reads usage.
pub const CLI_USAGE: UsageSampling = UsageSampling::Lifetime;

/// Whether this benchmark binary runs in criterion's test mode (`cargo test --bench`,
/// without `--bench` on its command line): then fixtures are built at their smallest
/// size so that every bench runs once, quickly.
pub fn test_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test")
}

/// The current resident set size of this process, in bytes (`VmRSS` of
/// `/proc/self/status`).
pub fn rss_bytes() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other("no VmRSS line in /proc/self/status"))
}
