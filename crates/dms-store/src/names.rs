//! File names in the PID directory: which are entries, which are strays, which are ours.

use crate::{Error, Result, TargetId};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The suffix of every PID file.
pub(crate) const PID_SUFFIX: &str = ".pid";

/// What a directory entry's name makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    /// `<target>.pid` for a valid target ID.
    Target(TargetId),
    /// A `*.pid` name whose stem is not a valid target ID.
    Stray {
        /// The file name, lossily converted to UTF-8.
        file_name: String,
        /// Why the stem is refused.
        reason: String,
    },
    /// Anything else (not ending in `.pid`, or one of our temporary files): not an entry.
    Ignored,
}

/// Classifies a directory entry's name.
pub(crate) fn classify(name: &OsStr) -> Name {
    let bytes = name.as_bytes();
    let Some(stem) = bytes.strip_suffix(PID_SUFFIX.as_bytes()) else {
        return Name::Ignored;
    };
    // (The lossy file name is made only for a stray: not once per target in a listing.)
    let file_name = || String::from_utf8_lossy(bytes).into_owned();
    match std::str::from_utf8(stem) {
        Ok(s) => match TargetId::new(s) {
            Ok(t) => Name::Target(t),
            Err(e) => Name::Stray {
                file_name: file_name(),
                reason: format!("file name is not a valid target ID: {e}"),
            },
        },
        Err(_) => Name::Stray {
            file_name: file_name(),
            reason: "file name is not valid UTF-8, so it is not a valid target ID".into(),
        },
    }
}

/// The key entries are sorted by: the file name without `.pid` (for a target, its ID).
pub(crate) fn sort_key(file_name: &str) -> &str {
    file_name.strip_suffix(PID_SUFFIX).unwrap_or(file_name)
}

/// Checks an argument of `remove_stray`: one path component, ending in `.pid`, whose stem
/// is not a valid target ID (targets are removed with `remove`).
pub(crate) fn check_stray_name(file_name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::Invalid(format!(
            "refusing to remove stray entry {file_name:?}: {why}"
        )))
    };
    if file_name.is_empty()
        || file_name.contains('/')
        || file_name.contains('\0')
        || file_name == "."
        || file_name == ".."
    {
        return refuse("it must be a single file name inside the PID directory");
    }
    if !file_name.ends_with(PID_SUFFIX) {
        return refuse("only names ending in .pid are entries");
    }
    if matches!(classify(OsStr::new(file_name)), Name::Target(_)) {
        return refuse("it is a valid target's PID file; remove it by target instead");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert!(matches!(classify(OsStr::new("t-1.pid")), Name::Target(t) if t.as_str() == "t-1"));
        assert!(matches!(
            classify(OsStr::new("a b.pid")),
            Name::Stray { .. }
        ));
        assert!(matches!(classify(OsStr::new(".pid")), Name::Stray { .. }));
        assert!(matches!(classify(OsStr::new(".x.pid")), Name::Stray { .. }));
        assert_eq!(classify(OsStr::new("t.lock")), Name::Ignored);
        assert_eq!(classify(OsStr::new(".t.pid.1234.tmp")), Name::Ignored);
        assert!(matches!(
            classify(OsStr::from_bytes(b"\xff.pid")),
            Name::Stray { file_name, .. } if file_name == "\u{fffd}.pid"
        ));
    }

    #[test]
    fn stray_names_are_checked() {
        assert!(check_stray_name("a b.pid").is_ok());
        assert!(check_stray_name(".x.pid").is_ok());
        for bad in [
            "", ".", "..", "../x.pid", "a/b.pid", "x.txt", "good.pid", "a\0.pid",
        ] {
            assert!(check_stray_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
