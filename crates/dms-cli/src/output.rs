//! Human output. Every line is rendered from the same JSON documents that `--json`
//! prints (the shapes of cli.md), so the two outputs cannot disagree; the rows of a
//! full `status` are rendered from the info objects directly ([`StatusTable::push_info`],
//! held identical to [`status_row`] by a test), to spare a JSON document per target.

use dms_core::{MountState, ProcessInfo, ProcessState, Source};
use serde_json::Value;
use std::fmt::Write as _;

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn num_of(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn int_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn bool_of(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

/// `"-"` for a missing value.
fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".to_owned())
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

/// The mount column: the path, with its state when it is not plainly mounted.
fn mount_cell(info: &Value) -> String {
    let Some(mount) = str_of(info, "mount") else {
        return "-".to_owned();
    };
    match str_of(info, "mount_state") {
        Some("mounted") | None => mount.to_owned(),
        Some(state) => format!("{mount} ({state})"),
    }
}

fn cmdline_cell(info: &Value) -> String {
    match info.get("cmdline").and_then(Value::as_array) {
        Some(parts) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        None => "-".to_owned(),
    }
}

/// The columns of the `status` table.
const STATUS_HEADER: [&str; 10] = [
    "TARGET", "PID", "STATE", "SOURCE", "UPTIME", "CPU", "RSS", "THREADS", "MOUNT", "COMMAND",
];

/// One row of the `status` table.
pub type StatusRow = [String; 10];

/// The `status` table: one row per info object, columns aligned, the command line last,
/// followed by the row's detail in parentheses when there is one (why an entry is
/// corrupt, foreign or stale).
pub fn status_table(infos: &[Value], details: &[Option<String>]) -> String {
    let rows: Vec<StatusRow> = infos
        .iter()
        .enumerate()
        .map(|(n, i)| status_row(i, details.get(n).and_then(Option::as_deref)))
        .collect();
    render_status_table(&rows)
}

/// The cells of one info object's row of the `status` table, with its detail.
pub fn status_row(i: &Value, detail: Option<&str>) -> StatusRow {
    let mut command = cmdline_cell(i);
    if let Some(detail) = detail {
        command = if command == "-" {
            format!("({detail})")
        } else {
            format!("{command} ({detail})")
        };
    }
    let row = [
        or_dash(str_of(i, "target").map(str::to_owned)),
        or_dash(int_of(i, "pid").map(|p| p.to_string())),
        or_dash(str_of(i, "state").map(str::to_owned)),
        or_dash(str_of(i, "source").map(str::to_owned)),
        or_dash(num_of(i, "uptime_secs").map(duration)),
        or_dash(num_of(i, "cpu_percent").map(|c| format!("{c:.1}%"))),
        or_dash(int_of(i, "rss_bytes").map(bytes)),
        or_dash(int_of(i, "threads").map(|t| t.to_string())),
        mount_cell(i),
        command,
    ];
    row.map(|cell| escaped(&cell).into_owned())
}

/// The name an enum value has in the JSON shapes (`"running"`, `"disk"`, ...).
#[cfg(test)]
fn json_name(v: &impl serde::Serialize) -> Option<String> {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => Some(s),
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

/// The `status` table of `rows` ([`status_row`]), under its header, columns aligned.
pub fn render_status_table(rows: &[StatusRow]) -> String {
    let mut widths = STATUS_HEADER.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = STATUS_HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `status` table built one row at a time, each row kept as a span of one shared
/// string (cells separated by NUL, which no cell holds), so that a table of many targets
/// costs about its text and no allocation per row; written out as
/// [`render_status_table`] renders it.
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
    /// Adds a row ([`status_row`]).
    #[cfg(test)]
    pub fn push(&mut self, row: &StatusRow) {
        for (w, cell) in self.widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
        let start = self.text.len();
        self.text.push_str(&row.join("\0"));
        self.rows.push((start, self.text.len()));
    }

    /// Adds the row of the info object `i`: what [`status_row`] renders from its JSON
    /// document, written straight into the row's one string (`detail` too, without a
    /// string of its own).
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
pub fn spawn_line(info: &Value, log: &str) -> String {
    let target = str_of(info, "target").unwrap_or("?");
    let pid = or_dash(int_of(info, "pid").map(|p| p.to_string()));
    let mut line = format!("started {target}: PID {pid}, log {log}");
    if let Some(m) = str_of(info, "mount") {
        let _ = write!(line, ", mount {m}");
    }
    line
}

/// `adopted PID 1234 for target-1`.
pub fn adopt_line(info: &Value) -> String {
    let target = str_of(info, "target").unwrap_or("?");
    let pid = or_dash(int_of(info, "pid").map(|p| p.to_string()));
    format!("adopted PID {pid} for {target}")
}

/// The one line of `kill`.
pub fn kill_line(report: &Value) -> String {
    let target = str_of(report, "target").unwrap_or("?");
    let pid = int_of(report, "pid");
    let was_running = bool_of(report, "was_running").unwrap_or(false);
    let stopped = bool_of(report, "stopped").unwrap_or(false);
    let signal = str_of(report, "signal");
    let unmounted = report
        .get("steps")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|x| x == "unmount"));
    match (was_running, stopped, pid) {
        (false, _, Some(pid)) => {
            format!(
                "{target} was not running (PID {pid} is gone or not its helper); PID file removed"
            )
        }
        (false, _, None) => format!("{target} was not running"),
        (true, true, pid) => format!(
            "stopped {target} (PID {}) with {}",
            or_dash(pid.map(|p| p.to_string())),
            signal.unwrap_or(if unmounted { "an unmount" } else { "no signal" })
        ),
        (true, false, pid) => format!(
            "{target} (PID {}) did not stop after {}",
            or_dash(pid.map(|p| p.to_string())),
            signal.unwrap_or("signalling")
        ),
    }
}

/// The one line of `stats`.
pub fn stats_line(stats: &Value) -> String {
    let n = |k| int_of(stats, k).unwrap_or(0);
    let files = n("pid_files_on_disk");
    let mut line = format!(
        "{} tracked, {files} PID file{} on disk: {} running, {} stale, {} foreign, {} corrupt",
        n("total_tracked"),
        plural(files as usize),
        n("running"),
        n("stale"),
        n("foreign"),
        n("corrupt"),
    );
    // Counts the contract does not name are shown only when they are not zero.
    for (key, words) in [("unverified", "unverified"), ("strays", "stray PID files")] {
        if n(key) > 0 {
            let _ = write!(line, ", {} {words}", n(key));
        }
    }
    if let Some(m) = int_of(stats, "stale_mounts") {
        let _ = write!(line, ", {m} stale mounts");
    }
    let _ = write!(
        line,
        "; backend {}, run dir {}",
        str_of(stats, "backend").unwrap_or("?"),
        str_of(stats, "run_dir").unwrap_or("?"),
    );
    line
}

/// The one line of `cleanup`.
pub fn cleanup_line(report: &Value) -> String {
    let removed: Vec<String> = report
        .get("removed")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        str_of(r, "target").unwrap_or("?"),
                        str_of(r, "reason").unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let stopped: Vec<&str> = report
        .get("stopped")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut line = match removed.len() {
        0 => "removed no PID files".to_owned(),
        n => format!("removed {n} PID file{}: {}", plural(n), removed.join(", ")),
    };
    if !stopped.is_empty() {
        let n = stopped.len();
        let _ = write!(
            line,
            "; stopped {n} helper{}: {}",
            plural(n),
            stopped.join(", ")
        );
    }
    let mounts: Vec<String> = report
        .get("mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{} ({}, {})",
                        str_of(m, "path").unwrap_or("?"),
                        str_of(m, "state").unwrap_or("?"),
                        str_of(m, "action").unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if !mounts.is_empty() {
        let n = mounts.len();
        let _ = write!(line, "; mounts {n}: {}", mounts.join(", "));
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
