//! Fuzz target `target_id`: arbitrary strings as target IDs.
//!
//! Properties:
//!
//! - `TargetId::new` never panics, and accepts a string exactly when the rule holds,
//!   checked here independently: 1 to 200 bytes, every byte in `[A-Za-z0-9._-]`, not
//!   starting with `.`;
//! - an accepted ID is the input unchanged (`as_str`, `Display`, `FromStr` agree), and
//!   its PID-file, lock-file and log-file paths are always *directly inside* the given
//!   directory: the parent is the directory, the file name is the ID plus `.pid` /
//!   `.lock` / `.log`, and that name is a single normal path component (never `.`, `..`,
//!   hidden, or containing `/`), for absolute, relative and empty directories alike;
//! - a refusal's message quotes the rule, is bounded in length whatever the input's
//!   length, and holds no control characters (the input is escaped).
#![no_main]

use dms_store::{TargetId, TARGET_ID_MAX_LEN, TARGET_ID_RULE};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

/// The rule, written out independently of the implementation.
fn valid(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=200).contains(&b.len())
        && b[0] != b'.'
        && b.iter().all(|&c| {
            c.is_ascii_lowercase()
                || c.is_ascii_uppercase()
                || c.is_ascii_digit()
                || c == b'.'
                || c == b'_'
                || c == b'-'
        })
}

fn check_inside(dir: &Path, path: &Path, id: &str, ext: &str) {
    assert_eq!(path.parent(), Some(dir), "{path:?} not directly in {dir:?}");
    let name = path.file_name().expect("has a file name");
    assert_eq!(name.to_str(), Some(format!("{id}.{ext}").as_str()));
    assert_eq!(
        path.components().count(),
        dir.components().count() + 1,
        "{path:?} adds more than one component to {dir:?}"
    );
    match path.components().next_back() {
        Some(Component::Normal(c)) => {
            assert_eq!(c, name);
            assert!(!c.to_string_lossy().starts_with('.'), "hidden file {c:?}");
        }
        other => panic!("last component of {path:?} is {other:?}"),
    }
}

fuzz_target!(|s: &str| {
    assert_eq!(TARGET_ID_MAX_LEN, 200);
    let result = TargetId::new(s);
    assert_eq!(
        result.is_ok(),
        valid(s),
        "TargetId::new({s:?}) = {result:?} disagrees with the rule"
    );
    let parsed: Result<TargetId, _> = s.parse();
    assert_eq!(parsed, result, "FromStr and new disagree");
    match result {
        Ok(id) => {
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            for dir in ["/run/dms/s3", "/", "relative/dir", "", "/tmp/a b/../c"] {
                let dir = Path::new(dir);
                check_inside(dir, &id.pid_file_in(dir), s, "pid");
                check_inside(dir, &id.lock_file_in(dir), s, "lock");
                check_inside(dir, &id.log_file_in(dir), s, "log");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(TARGET_ID_RULE), "{msg}");
            assert!(
                msg.len() <= 1024,
                "message of {} bytes for a {}-byte input",
                msg.len(),
                s.len()
            );
            assert!(
                !msg.chars().any(char::is_control),
                "control character in {msg:?}"
            );
        }
    }
});
