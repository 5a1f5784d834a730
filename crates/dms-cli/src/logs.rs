//! `dms logs TARGET [-n N] [-f]`: the last lines of a helper's log, read from the files
//! (with or without a daemon), across the log and its older generation `LOG.1`; with
//! `-f`, what the helper writes next, across truncations and replacements of the log, as
//! `tail -F` follows.
//!
//! The log is the one recorded for the target (the SQLite backend keeps `--log FILE`),
//! else `<run-dir>/logs/TARGET.log`. Text output has its control characters escaped as
//! the rest of the human output (a helper's bytes cannot send escape sequences to the
//! operator's terminal); `--json` prints `{"target", "log", "lines": [...]}`, and with
//! `-f` one `{"target", "line"}` object a line.

use crate::cli::{BackendChoice, LogsArgs};
use crate::output;
use crate::run::{choose_backend, Backend, CliError};
use dms_server::logs::{last_lines_from, older_generation, read_at, LogError};
use dms_store::{PidStore, Stored, TargetId};
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `-f` looks at the log.
const POLL: Duration = Duration::from_millis(100);

/// The most read from the log at a time while following.
const READ_AT_ONCE: usize = 1 << 20;

/// How much of what was printed last is remembered, to find where to go on in `LOG.1`
/// after a truncation.
const SUFFIX: usize = 256;

/// How often (20 ms apart) `LOG.1` is searched for the last bytes printed after a
/// truncation.
const CATCH_UP_TRIES: u32 = 10;

/// A partial line (no newline yet) is printed once it is this long, or once the helper
/// pauses.
const MAX_PENDING: usize = 64 * 1024;

/// Runs `dms logs`; `Ok` holds the exit code.
pub async fn run(
    run_dir: &Path,
    backend: BackendChoice,
    json: bool,
    args: LogsArgs,
) -> Result<u8, CliError> {
    let path = log_path(run_dir, backend, &args.target).await;
    let n = usize::try_from(args.lines).unwrap_or(usize::MAX);
    let mut out = Printer {
        json,
        target: args.target.clone(),
        pending: Vec::new(),
        suffix: Vec::new(),
        failed: None,
    };
    let first = match last_lines_from(&path, n) {
        Ok(t) => Some(t),
        Err(LogError::Missing { .. }) if args.follow => None,
        Err(e) => {
            return Err(CliError::Failed(format!(
                "target {}: {}; check the target ID and --run-dir",
                args.target,
                dms_server::render(&e)
            )))
        }
    };
    let (bytes, current) = match first {
        Some(t) => (t.bytes, t.current),
        None => (Vec::new(), None),
    };
    if !args.follow {
        if json {
            let lines: Vec<String> = bytes
                .split_inclusive(|&b| b == b'\n')
                .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\n").unwrap_or(l)).into_owned())
                .collect();
            let doc = json!({"target": args.target, "log": path, "lines": lines});
            return write_out(format!("{doc}\n").as_bytes());
        }
        let mut text = output::escape_lines(String::from_utf8_lossy(&bytes).into_owned());
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        return write_out(text.as_bytes());
    }
    if out.feed(&bytes, true) {
        follow(&path, current, &mut out).await;
    }
    match out.failed {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

/// Writes `bytes` to stdout: exit 0, or 1 when stdout fails (a closed pipe is not an
/// error).
fn write_out(bytes: &[u8]) -> Result<u8, CliError> {
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(CliError::Failed(format!("cannot write to stdout: {e}"))),
    }
}

/// The target's log: the one the SQLite store recorded, else the default.
async fn log_path(run_dir: &Path, backend: BackendChoice, target: &TargetId) -> PathBuf {
    let default = target.log_file_in(&run_dir.join("logs"));
    if choose_backend(backend, run_dir) != Backend::Sqlite {
        return default;
    }
    let recorded = match dms_store::SqliteStore::open_for_reading(run_dir) {
        Ok(store) => match store.get(target).await {
            Ok(Some(Stored::Valid(r))) => r.meta.log_path,
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %dms_core::Report::new(&e), "cannot read the target's record; using the default log");
                None
            }
        },
        Err(e) => {
            tracing::debug!(error = %dms_core::Report::new(&e), "cannot open the store; using the default log");
            None
        }
    };
    recorded.unwrap_or(default)
}

/// What `-f` prints, and what it remembers of it.
struct Printer {
    json: bool,
    target: TargetId,
    /// A line begun but not finished.
    pending: Vec<u8>,
    /// The last bytes taken from the log (printed or pending).
    suffix: Vec<u8>,
    /// Why stdout failed (other than a closed pipe).
    failed: Option<CliError>,
}

impl Printer {
    /// Takes `bytes` read from the log; prints the complete lines (all of it when
    /// `flush`). False once stdout is gone.
    fn feed(&mut self, bytes: &[u8], flush: bool) -> bool {
        self.suffix.extend_from_slice(bytes);
        if self.suffix.len() > SUFFIX {
            self.suffix.drain(..self.suffix.len() - SUFFIX);
        }
        self.pending.extend_from_slice(bytes);
        let upto = if flush || self.pending.len() >= MAX_PENDING {
            complete_utf8(&self.pending)
        } else {
            match self.pending.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => return true,
            }
        };
        if upto == 0 {
            return true;
        }
        let chunk: Vec<u8> = self.pending.drain(..upto).collect();
        let text = String::from_utf8_lossy(&chunk).into_owned();
        let rendered = if self.json {
            let mut s = String::new();
            for line in text.split_inclusive('\n') {
                let line = line.strip_suffix('\n').unwrap_or(line);
                s.push_str(&json!({"target": self.target, "line": line}).to_string());
                s.push('\n');
            }
            s
        } else {
            output::escape_lines(text)
        };
        let mut o = std::io::stdout().lock();
        match o.write_all(rendered.as_bytes()).and_then(|()| o.flush()) {
            Ok(()) => true,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    self.failed = Some(CliError::Failed(format!("cannot write to stdout: {e}")));
                }
                false
            }
        }
    }
}

/// The length of the longest prefix of `b` that does not end inside a UTF-8 sequence.
fn complete_utf8(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => b.len(),
    }
}

/// Whether stdout is a pipe whose reader is gone (a write would fail with EPIPE).
fn stdout_closed() -> bool {
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let fd = stdout.as_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::empty(),
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(1) if fds[0].revents().intersects(rustix::event::PollFlags::ERR | rustix::event::PollFlags::HUP))
}

/// The log being followed.
struct Followed {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
}

impl Followed {
    fn new(file: File, offset: u64) -> Option<Followed> {
        let m = file.metadata().ok()?;
        Some(Followed {
            file,
            dev: m.dev(),
            ino: m.ino(),
            offset,
        })
    }
}

/// Follows the log at `path` from `current` until stdout is gone.
async fn follow(path: &Path, current: Option<(File, u64)>, out: &mut Printer) {
    let mut cur = current.and_then(|(f, off)| Followed::new(f, off));
    loop {
        // What the name holds now: the same file, another one (replaced), or nothing.
        let now = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file());
        match (&mut cur, &now) {
            (Some(c), Some(m)) if m.dev() == c.dev && m.ino() == c.ino => {
                let truncated =
                    m.len() < c.offset || !still_ends_with(&c.file, c.offset, &out.suffix);
                if truncated {
                    if !catch_up_from_older(path, out) {
                        return;
                    }
                    c.offset = 0;
                }
            }
            (Some(c), _) => {
                // Replaced or removed: what the old file still had, then the new one.
                if !drain(c, out) {
                    return;
                }
                cur = None;
                continue;
            }
            (None, Some(_)) => {
                cur = dms_server::logs::open_regular(path)
                    .ok()
                    .flatten()
                    .and_then(|f| Followed::new(f, 0));
            }
            (None, None) => {}
        }
        let wrote = match &mut cur {
            Some(c) => match read_more(c, out) {
                Some(n) => n,
                None => return,
            },
            None => 0,
        };
        if wrote == 0 {
            // The helper pauses: a partial line is shown now.
            if !out.feed(&[], true) {
                return;
            }
            if stdout_closed() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether the `suffix.len()` bytes of `file` before `offset` are still `suffix` (if
/// not, the file was truncated and written again past the old offset since).
fn still_ends_with(file: &File, offset: u64, suffix: &[u8]) -> bool {
    let len = suffix.len().min(offset as usize);
    if len == 0 {
        return true;
    }
    let mut buf = vec![0u8; len];
    match read_at(file, &mut buf, offset - len as u64) {
        Ok(n) => n == len && buf == suffix[suffix.len() - len..],
        Err(_) => true,
    }
}

/// Reads what `c` holds past its offset (at most [`READ_AT_ONCE`]) and prints it; the
/// bytes read, or `None` once stdout is gone.
fn read_more(c: &mut Followed, out: &mut Printer) -> Option<usize> {
    let mut buf = vec![0u8; READ_AT_ONCE];
    let n = read_at(&c.file, &mut buf, c.offset).unwrap_or(0);
    if n == 0 {
        return Some(0);
    }
    c.offset += n as u64;
    out.feed(&buf[..n], false).then_some(n)
}

/// Prints what `c` holds to its end. False once stdout is gone.
fn drain(c: &mut Followed, out: &mut Printer) -> bool {
    loop {
        match read_more(c, out) {
            Some(0) => return true,
            Some(_) => {}
            None => return false,
        }
    }
}

/// After a truncation: prints what `LOG.1` holds after the last bytes printed (the
/// lines written between the last read and the truncation). Nothing when those bytes
/// are not found in it (the log was emptied by someone else). False once stdout is gone.
fn catch_up_from_older(path: &Path, out: &mut Printer) -> bool {
    let older = older_generation(path);
    let suffix = out.suffix.clone();
    if suffix.is_empty() {
        return true;
    }
    // The daemon writes LOG.1 just after the truncation: give it a moment.
    for _ in 0..CATCH_UP_TRIES {
        if let Ok(Some(f)) = dms_server::logs::open_regular(&older) {
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            // Only its end can follow what was printed: read at most 64 MiB of it.
            let from = size.saturating_sub(64 << 20);
            let mut buf = vec![0u8; (size - from) as usize];
            let n = read_at(&f, &mut buf, from).unwrap_or(0);
            buf.truncate(n);
            if let Some(at) = buf.windows(suffix.len()).rposition(|w| w == &suffix[..]) {
                let rest = buf[at + suffix.len()..].to_vec();
                return out.feed(&rest, false);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
