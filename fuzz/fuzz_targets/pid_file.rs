//! Fuzz target `pid_file`: arbitrary bytes as PID-file content.
//!
//! Properties, checked against an oracle written here independently of `Pid::parse`:
//!
//! - `Pid::parse` never panics;
//! - it returns `Ok` exactly when the content, trimmed of ASCII whitespace (space, `\t`,
//!   `\n`, `\r`, form feed) at both ends, is one or more ASCII digits whose value lies in
//!   `2..pid_max`, and then the PID is that value;
//! - an accepted PID round-trips: `to_file_content` is the decimal value and a newline,
//!   and parsing it gives the same PID;
//! - a refusal's message is non-empty, bounded in length and free of control
//!   characters (it is printed to terminals and logs);
//! - for one input in eight (chosen by length, so replays are deterministic), the bytes
//!   are also written as a real PID file in a temporary run directory and read back
//!   through `PidFileStore::get`, which must agree with `Pid::parse` (files over
//!   `MAX_PID_FILE_LEN` bytes are corrupt whatever they hold).
#![no_main]

use dms_store::{pid_max, Pid, PidFileStore, PidStore, Stored, TargetId, MAX_PID_FILE_LEN};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The oracle's whitespace: what a shell `echo`, `printf` or an editor may put around a
/// PID. Written out rather than taken from `u8::is_ascii_whitespace`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
}

/// The value the content must be parsed to, or `None` if it must be refused.
fn expected(data: &[u8]) -> Option<i32> {
    let start = data.iter().position(|&b| !is_space(b))?;
    let end = data.iter().rposition(|&b| !is_space(b))? + 1;
    let digits = &data[start..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Value with leading zeros stripped; more than 10 significant digits is above any
    // pid_max (at most 2^22).
    let significant: &[u8] = match digits.iter().position(|&b| b != b'0') {
        Some(i) => &digits[i..],
        None => b"0",
    };
    if significant.len() > 10 {
        return None;
    }
    let value: u64 = significant
        .iter()
        .fold(0, |acc, &d| acc * 10 + u64::from(d - b'0'));
    (2..u64::from(pid_max()))
        .contains(&value)
        .then(|| i32::try_from(value).expect("below pid_max, so fits in i32"))
}

mod scratch;

struct Disk {
    rt: tokio::runtime::Runtime,
    store: PidFileStore,
    target: TargetId,
}

fn disk() -> &'static Disk {
    static DISK: OnceLock<Disk> = OnceLock::new();
    DISK.get_or_init(|| {
        let run_dir = scratch::dir("dms-fuzz-pid-file-");
        let store = PidFileStore::open(run_dir).expect("open PidFileStore in scratch run dir");
        Disk {
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("tokio runtime"),
            store,
            target: TargetId::new("fuzz-target").expect("valid target"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let parsed = Pid::parse(data);
    match (expected(data), &parsed) {
        (Some(want), Ok(pid)) => {
            assert_eq!(pid.get(), want, "wrong value for {data:?}");
            let content = pid.to_file_content();
            assert_eq!(content, format!("{want}\n"));
            assert_eq!(Pid::parse(content.as_bytes()), Ok(*pid), "round trip");
            assert_eq!(pid.to_string(), want.to_string());
            assert_eq!(Pid::new(i64::from(want)), Ok(*pid));
        }
        (None, Err(e)) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(
                msg.len() < 512,
                "unbounded error message ({} bytes)",
                msg.len()
            );
            assert!(
                !msg.chars().any(char::is_control),
                "control character in error message {msg:?}"
            );
        }
        (want, got) => panic!("oracle says {want:?}, Pid::parse says {got:?} for {data:?}"),
    }

    if data.len().is_multiple_of(8) {
        let d = disk();
        let path = d.target.pid_file_in(d.store.pid_dir());
        std::fs::write(&path, data).expect("write PID file");
        let lookup =
            d.rt.block_on(d.store.get(&d.target))
                .expect("get of a regular file never fails");
        let fits = data.len() as u64 <= MAX_PID_FILE_LEN;
        match (&lookup, &parsed) {
            (Some(Stored::Valid(r)), Ok(pid)) if fits => assert_eq!(r.pid, *pid),
            (Some(Stored::Corrupt(c)), _) if !fits || parsed.is_err() => {
                assert_eq!(c.path, path);
                assert!(!c.reason.is_empty());
                assert!(
                    !c.reason.chars().any(char::is_control),
                    "control character in corrupt reason {:?}",
                    c.reason
                );
            }
            _ => panic!(
                "store read {lookup:?}, Pid::parse says {parsed:?}, {} bytes",
                data.len()
            ),
        }
    }
});
