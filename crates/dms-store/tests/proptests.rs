//! Property tests: PID parsing and formatting, PID-file content from anywhere, and target
//! IDs as paths.

use dms_store::{pid_max, Pid, PidFileStore, PidStore, Stored, TargetId, MAX_PID_FILE_LEN};
use proptest::prelude::*;
use std::path::{Component, Path};

/// What `Pid::parse` must accept, written independently of it: ASCII whitespace around
/// one run of decimal digits whose value is in `2..pid_max`.
fn oracle(content: &[u8]) -> Option<i32> {
    let s = std::str::from_utf8(content).ok()?;
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = t.trim_start_matches('0');
    if digits.len() > 10 {
        return None;
    }
    let v: u64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (v >= 2 && v < u64::from(pid_max())).then_some(v as i32)
}

/// Bytes that look like PID-file content more often than uniform bytes would.
fn pidish_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        "[ \t\r\n]{0,3}[-+]?[0-9]{0,12}[ \t\r\n\x0b\x0c]{0,3}".prop_map(String::into_bytes),
        "[0-9 \n\0x+-]{0,20}".prop_map(String::into_bytes),
        (any::<u32>(), "[ \n]{0,2}").prop_map(|(n, ws)| format!("{n}{ws}").into_bytes()),
        (any::<i64>()).prop_map(|n| n.to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pid_parse_and_format_round_trip(n in 2..pid_max() as i32, lead in "[ \t\n]{0,3}", trail in "[ \t\r\n]{0,3}") {
        let pid = Pid::try_from(n).unwrap();
        prop_assert_eq!(pid.get(), n);
        prop_assert_eq!(Pid::parse(pid.to_file_content().as_bytes()), Ok(pid));
        prop_assert_eq!(Pid::parse(pid.to_string().as_bytes()), Ok(pid));
        let padded = format!("{lead}{pid}{trail}");
        prop_assert_eq!(Pid::parse(padded.as_bytes()), Ok(pid));
        prop_assert_eq!(pid.to_file_content(), format!("{n}\n"));
    }

    #[test]
    fn out_of_range_numbers_are_never_pids(n in prop_oneof![i64::MIN..2i64, i64::from(pid_max())..i64::MAX]) {
        prop_assert!(Pid::new(n).is_err());
        prop_assert!(Pid::parse(n.to_string().as_bytes()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_give_a_pid_of_1_or_less(content in pidish_bytes()) {
        let parsed = Pid::parse(&content);
        if let Ok(p) = parsed {
            prop_assert!(p.get() > 1 && (p.get() as u32) < pid_max(), "{:?}", p);
        }
        prop_assert_eq!(parsed.ok().map(Pid::get), oracle(&content), "content {:?}", content);
    }

    #[test]
    fn target_ids_never_name_a_path_outside_the_pid_dir(s in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._/\\-]{0,12}",
        "(\\.\\./|/|\\./)?[a-z.]{0,5}(/\\.\\.)?",
        "[a-zA-Z0-9._-]{195,205}",
    ]) {
        let dir = Path::new("/run/dms/s3");
        match TargetId::new(&s) {
            Ok(t) => {
                for path in [t.pid_file_in(dir), t.lock_file_in(dir), t.log_file_in(dir)] {
                    prop_assert_eq!(path.parent(), Some(dir));
                    let rel = path.strip_prefix(dir).unwrap();
                    let comps: Vec<Component> = rel.components().collect();
                    prop_assert_eq!(comps.len(), 1);
                    prop_assert!(matches!(comps[0], Component::Normal(_)));
                    let name = rel.to_str().unwrap();
                    prop_assert!(!name.starts_with('.'), "hidden file {}", name);
                }
                let pid_file = t.pid_file_in(dir);
                prop_assert_eq!(pid_file.file_name().unwrap().to_str().unwrap(), format!("{s}.pid"));
            }
            Err(e) => prop_assert!(e.to_string().contains("1 to 200 bytes")),
        }
    }
}

proptest! {
    // Real files: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever bytes another tool leaves in a PID file, the store never panics, never
    /// reports a PID of 1 or less, and agrees with the parser (and the size limit).
    #[test]
    fn arbitrary_pid_file_content_through_the_store(content in pidish_bytes()) {
        let run = tempfile::tempdir().unwrap();
        let store = PidFileStore::open(run.path()).unwrap();
        std::fs::write(store.pid_dir().join("p.pid"), &content).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(store.get(&"p".parse().unwrap())).unwrap();
        let expected = if content.len() as u64 > MAX_PID_FILE_LEN { None } else { oracle(&content) };
        match got {
            Some(Stored::Valid(r)) => {
                prop_assert!(r.pid.get() > 1);
                prop_assert_eq!(Some(r.pid.get()), expected);
            }
            Some(Stored::Corrupt(c)) => {
                prop_assert_eq!(expected, None);
                prop_assert!(!c.reason.is_empty());
            }
            None => prop_assert!(false, "the file is there"),
        }
    }
}
