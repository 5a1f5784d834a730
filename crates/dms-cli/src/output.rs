//! Human output, rendered from the typed reports that `--json` prints (the shapes of
//! cli.md): the one-shot path's own, and the daemon's read back into the same types, so
//! the outputs cannot disagree.

use dms_core::{
    CleanupReport, KillReport, KillStep, MountState, ProcessInfo, ProcessState, RemovalReason,
    Source, Stats,
};
use std::fmt::Write as _;

/// The value, or `"-"` for a missing one.
fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// 12.5 -> `12s`, 303 -> `5m03s`, 7500 -> `2h05m`, 273600 -> `3d04h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes in binary units: `512B`, `1.0K`, `12.3M`, `2.0G`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// Whether `s` holds a control character (C0, DEL, or a C1 control, which some
/// terminals obey as escape sequences): one scan of the bytes, no decoding. In UTF-8 a
/// C1 control is 0xC2 followed by 0x80..=0x9F; 0xC2 alone sends the string to the
/// careful path, which checks.
pub fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2)
}

/// Appends `s` to `out` with every control character escaped (`\n`, `\t`, `\r`,
/// `\u{1b}`, ...), so text output cannot fake rows or send escape sequences to the
/// operator's terminal. JSON output is exact and never goes through this.
pub fn push_escaped(out: &mut String, s: &str) {
    if !has_control(s) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// `s` with its control characters escaped ([`push_escaped`]); borrowed when it has none.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    if has_control(s) {
        let mut out = String::with_capacity(s.len() + 8);
        push_escaped(&mut out, s);
        out.into()
    } else {
        s.into()
    }
}

/// Every line of `text` with its control characters escaped; the line breaks stay.
pub fn escape_lines(text: String) -> String {
    if !text
        .bytes()
        .any(|b| (b < 0x20 && b != b'\n') || b == 0x7f || b == 0xc2)
    {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        push_escaped(&mut out, line);
    }
    out
}

/// The columns of the `status` table.
const STATUS_HEADER: [&str; 10] = [
    "TARGET", "PID", "STATE", "SOURCE", "UPTIME", "CPU", "RSS", "THREADS", "MOUNT", "COMMAND",
];

/// The `status` table of `infos`: one row per info object, sorted by target, columns
/// aligned, the command line last, followed by the row's detail in parentheses when
/// there is one (why an entry is corrupt, foreign or stale).
pub fn status_table(infos: &[ProcessInfo], details: &[Option<String>]) -> String {
    let mut table = StatusTable::default();
    for (n, info) in infos.iter().enumerate() {
        table.push_info(info, details.get(n).and_then(Option::as_deref));
    }
    let mut out = Vec::new();
    table
        .write_to(&mut out)
        .expect("writing to a vector cannot fail");
    String::from_utf8(out).expect("the rows are UTF-8")
}

/// The name an enum value has in the JSON shapes (`"running"`, `"disk"`, ...).
#[cfg(test)]
fn json_name(v: &impl serde::Serialize) -> Option<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The JSON name of a state, as serde writes it (held equal by a test), without a JSON
/// value per row of a listing.
fn state_name(s: ProcessState) -> &'static str {
    match s {
        ProcessState::Running => "running",
        ProcessState::Stale => "stale",
        ProcessState::Foreign => "foreign",
        ProcessState::Corrupt => "corrupt",
        ProcessState::Absent => "absent",
        ProcessState::Unverified => "unverified",
    }
}

/// The JSON name of a source (see [`state_name`]).
fn source_name(s: Source) -> &'static str {
    match s {
        Source::Memory => "memory",
        Source::Disk => "disk",
        Source::Both => "both",
    }
}

/// The JSON name of a mount state (see [`state_name`]).
fn mount_state_name(s: MountState) -> &'static str {
    match s {
        MountState::Mounted => "mounted",
        MountState::Stale => "stale",
        MountState::Unmounted => "unmounted",
    }
}

/// The JSON name of a removal reason (see [`state_name`]).
fn reason_name(r: RemovalReason) -> &'static str {
    match r {
        RemovalReason::Stale => "stale",
        RemovalReason::Foreign => "foreign",
        RemovalReason::Corrupt => "corrupt",
    }
}

/// The `status` table built one row at a time, each row kept as a span of one shared
/// string (cells separated by NUL, which no cell holds), so that a table of many targets
/// costs about its text and no allocation per row.
#[derive(Debug, Default)]
pub struct StatusTable {
    widths: [usize; 10],
    /// The text of every row, one after the other.
    text: String,
    /// Where each row is in `text`: start and end.
    rows: Vec<(usize, usize)>,
}

/// One row of a [`StatusTable`] being written at the end of its text: cells separated by
/// NUL, each cell's width folded into the table's column widths as it is finished.
struct RowWriter<'a> {
    row: &'a mut String,
    col: usize,
    widths: &'a mut [usize; 10],
}

impl RowWriter<'_> {
    /// Writes the next cell with `write`.
    fn cell(&mut self, write: impl FnOnce(&mut String)) {
        if self.col > 0 {
            self.row.push('\0');
        }
        let start = self.row.len();
        write(&mut *self.row);
        if has_control(&self.row[start..]) {
            // Rare: a command line or path with a newline, an escape sequence or a NUL
            // (which would also split the row's cells).
            let raw = self.row.split_off(start);
            push_escaped(self.row, &raw);
        }
        let w = self.row[start..].chars().count();
        self.widths[self.col] = self.widths[self.col].max(w);
        self.col += 1;
    }

    /// Writes the next cell with `write` from `value`, or `-` without one.
    fn opt<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut String, T)) {
        self.cell(|r| match value {
            Some(v) => write(r, v),
            None => r.push('-'),
        });
    }
}

impl StatusTable {
    /// Adds the row of the info object `i`, written straight into the row's one string
    /// (`detail` too, without a string of its own).
    pub fn push_info(&mut self, i: &ProcessInfo, detail: Option<impl std::fmt::Display>) {
        let start = self.text.len();
        let mut row = RowWriter {
            row: &mut self.text,
            col: 0,
            widths: &mut self.widths,
        };
        row.cell(|r| r.push_str(i.target.as_str()));
        row.opt(i.pid, |r, p| {
            let _ = write!(r, "{p}");
        });
        row.cell(|r| r.push_str(state_name(i.state)));
        row.cell(|r| r.push_str(i.source.map_or("-", source_name)));
        row.opt(i.uptime_secs, |r, u| r.push_str(&duration(u)));
        row.opt(i.cpu_percent, |r, c| {
            let _ = write!(r, "{c:.1}%");
        });
        row.opt(i.rss_bytes, |r, b| r.push_str(&bytes(b)));
        row.opt(i.threads, |r, t| {
            let _ = write!(r, "{t}");
        });
        row.cell(|r| match &i.mount {
            None => r.push('-'),
            Some(m) => {
                r.push_str(&m.to_string_lossy());
                if let Some(state) = i.mount_state.filter(|s| *s != MountState::Mounted) {
                    let _ = write!(r, " ({})", mount_state_name(state));
                }
            }
        });
        row.cell(|r| match &i.cmdline {
            Some(parts) => {
                for (n, part) in parts.iter().enumerate() {
                    if n > 0 {
                        r.push(' ');
                    }
                    r.push_str(part);
                }
                if let Some(d) = detail {
                    let _ = write!(r, " ({d})");
                }
            }
            None => match detail {
                Some(d) => {
                    let _ = write!(r, "({d})");
                }
                None => r.push('-'),
            },
        });
        self.rows.push((start, self.text.len()));
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the header and the rows, columns aligned, the rows sorted by target (the
    /// first cell): rows may be pushed in any order.
    pub fn write_to(&mut self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut widths = STATUS_HEADER.map(str::len);
        for (w, own) in widths.iter_mut().zip(self.widths) {
            *w = (*w).max(own);
        }
        // (A stable sort: rows already in order cost one pass.)
        fn target(row: &str) -> &str {
            row.split('\0').next().unwrap_or("")
        }
        let text = &self.text;
        self.rows
            .sort_by(|&(a, x), &(b, y)| target(&text[a..x]).cmp(target(&text[b..y])));
        let mut line = String::new();
        let header = STATUS_HEADER.join("\0");
        let rows = self.rows.iter().map(|&(start, end)| &text[start..end]);
        for row in std::iter::once(header.as_str()).chain(rows) {
            line.clear();
            let mut cells = row.split('\0');
            let mut cell = cells.next().unwrap_or("");
            for (next, width) in cells.zip(widths) {
                line.push_str(cell);
                // Padded as `{cell:<w$}  ` would, without the formatting machinery.
                pad(&mut line, width.saturating_sub(cell.chars().count()) + 2);
                cell = next;
            }
            line.push_str(cell);
            line.truncate(line.trim_end().len());
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
        Ok(())
    }
}

/// Appends `n` spaces to `line`.
fn pad(line: &mut String, mut n: usize) {
    const SPACES: &str = "                                                                ";
    while n > 0 {
        let k = n.min(SPACES.len());
        line.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// `started target-1: PID 1234, log /run/dms/logs/target-1.log`.
pub fn spawn_line(info: &ProcessInfo, log: &str) -> String {
    let mut line = format!(
        "started {}: PID {}, log {log}",
        info.target,
        or_dash(info.pid)
    );
    if let Some(m) = &info.mount {
        let _ = write!(line, ", mount {}", m.display());
    }
    line
}

/// `adopted PID 1234 for target-1`.
pub fn adopt_line(info: &ProcessInfo) -> String {
    format!("adopted PID {} for {}", or_dash(info.pid), info.target)
}

/// The one line of `kill`.
pub fn kill_line(report: &KillReport) -> String {
    let target = &report.target;
    let signal = report.signal.map(|s| s.name());
    let unmounted = report.steps.contains(&KillStep::Unmount);
    match (report.was_running, report.stopped, report.pid) {
        (false, _, Some(pid)) => {
            format!(
                "{target} was not running (PID {pid} is gone or not its helper); PID file removed"
            )
        }
        (false, _, None) => format!("{target} was not running"),
        (true, true, pid) => format!(
            "stopped {target} (PID {}) with {}",
            or_dash(pid),
            signal.unwrap_or(if unmounted { "an unmount" } else { "no signal" })
        ),
        (true, false, pid) => format!(
            "{target} (PID {}) did not stop after {}",
            or_dash(pid),
            signal.unwrap_or("signalling")
        ),
    }
}

/// The one line of `stats`.
pub fn stats_line(stats: &Stats) -> String {
    let files = stats.pid_files_on_disk;
    let mut line = format!(
        "{} tracked, {files} PID file{} on disk: {} running, {} stale, {} foreign, {} corrupt",
        stats.total_tracked,
        plural(files),
        stats.running,
        stats.stale,
        stats.foreign,
        stats.corrupt,
    );
    // Counts the contract does not name are shown only when they are not zero.
    for (n, words) in [
        (stats.unverified, "unverified"),
        (stats.strays, "stray PID files"),
    ] {
        if n > 0 {
            let _ = write!(line, ", {n} {words}");
        }
    }
    if let Some(m) = stats.stale_mounts {
        let _ = write!(line, ", {m} stale mounts");
    }
    let _ = write!(
        line,
        "; backend {}, run dir {}",
        stats.backend,
        stats.run_dir.display(),
    );
    line
}

/// The one line of `cleanup`.
pub fn cleanup_line(report: &CleanupReport) -> String {
    let removed: Vec<String> = report
        .removed
        .iter()
        .map(|r| format!("{} ({})", r.target, reason_name(r.reason)))
        .collect();
    let mut line = match removed.len() {
        0 => "removed no PID files".to_owned(),
        n => format!("removed {n} PID file{}: {}", plural(n), removed.join(", ")),
    };
    if !report.stopped.is_empty() {
        let n = report.stopped.len();
        let stopped: Vec<&str> = report.stopped.iter().map(|t| t.as_str()).collect();
        let _ = write!(
            line,
            "; stopped {n} helper{}: {}",
            plural(n),
            stopped.join(", ")
        );
    }
    if !report.mounts.is_empty() {
        let mounts: Vec<String> = report
            .mounts
            .iter()
            .map(|m| {
                format!(
                    "{} ({}, {})",
                    m.path.display(),
                    mount_state_name(m.state),
                    m.action
                )
            })
            .collect();
        let _ = write!(line, "; mounts {}: {}", mounts.len(), mounts.join(", "));
    }
    line
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests;
