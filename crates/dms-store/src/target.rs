//! [`TargetId`]: the validated name of a backup target.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The longest target ID accepted, in bytes.
pub const TARGET_ID_MAX_LEN: usize = 200;

/// The rule a target ID must follow, as printed in error messages.
pub const TARGET_ID_RULE: &str = "1 to 200 bytes of [A-Za-z0-9._-], not starting with '.'";

/// A validated backup target ID: 1 to 200 bytes of `[A-Za-z0-9._-]`, not starting with `.`.
///
/// This is the only way to turn a target into a path: because the alphabet has no `/`
/// and the ID cannot start with `.`, [`TargetId::pid_file_in`] always names a file
/// directly inside the given directory (never `.`, `..`, or a hidden file).
///
/// ```
/// use dms_store::TargetId;
/// let t: TargetId = "target-123".parse().unwrap();
/// assert_eq!(t.as_str(), "target-123");
/// assert!("../etc".parse::<TargetId>().is_err());
/// ```
///
/// Cloning is cheap (a shared string: no allocation), as a manager keeps each target in
/// more than one table.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId(Arc<str>);

impl serde::Serialize for TargetId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Validated as [`TargetId::new`] validates: a document cannot carry an invalid ID in.
impl<'de> serde::Deserialize<'de> for TargetId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TargetId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a valid [`TargetId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target ID {shown}: {problem}; a target ID must be {rule}", rule = TARGET_ID_RULE)]
pub struct InvalidTargetId {
    /// The offending input, quoted and escaped for display (truncated when long).
    pub shown: String,
    /// What is wrong with it.
    pub problem: String,
}

impl TargetId {
    /// Validates `s` as a target ID.
    pub fn new(s: &str) -> Result<Self, InvalidTargetId> {
        let bad = |problem: String| InvalidTargetId {
            shown: quote(s),
            problem,
        };
        if s.is_empty() {
            return Err(bad("it is empty".into()));
        }
        if s.len() > TARGET_ID_MAX_LEN {
            return Err(bad(format!("it is {} bytes long", s.len())));
        }
        if s.starts_with('.') {
            return Err(bad("it starts with '.'".into()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(bad(format!("it contains {:?}", c)));
        }
        Ok(TargetId(Arc::from(s)))
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<dir>/<target>.pid`.
    pub fn pid_file_in(&self, dir: &Path) -> PathBuf {
        self.file_in(dir, ".pid")
    }

    /// `<dir>/<target>.lock`.
    pub fn lock_file_in(&self, dir: &Path) -> PathBuf {
        self.file_in(dir, ".lock")
    }

    /// `<dir>/<target>.log`.
    pub fn log_file_in(&self, dir: &Path) -> PathBuf {
        self.file_in(dir, ".log")
    }

    /// `dir.join(format!("{target}{suffix}"))` in one allocation (a status listing makes
    /// one such path per entry). A target ID is one plain path component (no `/`, not
    /// `.` or `..`), so pushing it onto `dir` is the same as joining it.
    fn file_in(&self, dir: &Path, suffix: &str) -> PathBuf {
        let len = dir.as_os_str().len() + 1 + self.0.len() + suffix.len();
        let mut path = PathBuf::with_capacity(len);
        path.push(dir);
        path.push(&*self.0);
        path.as_mut_os_string().push(suffix);
        path
    }
}

fn quote(s: &str) -> String {
    const SHOW: usize = 64;
    if s.len() <= SHOW {
        format!("{s:?}")
    } else {
        let mut end = SHOW;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}... ({} bytes)", &s[..end], s.len())
    }
}

impl FromStr for TargetId {
    type Err = InvalidTargetId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TargetId::new(s)
    }
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TargetId({:?})", self.0)
    }
}

impl AsRef<str> for TargetId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet() {
        for ok in [
            "a",
            "target-123",
            "target-prod-001",
            "A.b_c-D",
            "x.",
            &"a".repeat(200),
        ] {
            assert_eq!(TargetId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn file_paths_are_the_joined_names() {
        let t = TargetId::new("target-1.x").unwrap();
        for dir in ["/run/dms/s3", "/run/dms/s3/", "rel/dir", "", "/"] {
            let dir = Path::new(dir);
            assert_eq!(t.pid_file_in(dir), dir.join("target-1.x.pid"));
            assert_eq!(t.lock_file_in(dir), dir.join("target-1.x.lock"));
            assert_eq!(t.log_file_in(dir), dir.join("target-1.x.log"));
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../x",
            "a/b",
            "a b",
            "a\0b",
            "é",
            &"a".repeat(201),
        ] {
            let err = TargetId::new(bad).unwrap_err();
            assert!(err.to_string().contains(TARGET_ID_RULE), "{err}");
        }
    }
}
