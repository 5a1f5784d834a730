//! The helper's environment: dms's own, plus `--env-file` lines, plus `--env` items.
//!
//! Values are never printed, logged or stored: every error here names the key, the
//! file and the line, and nothing else.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bad `--env` or `--env-file` input (exit code 2). Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// `--env KEY` names a variable that is not in dms's environment.
    #[error("--env {key}: {key} is not set in dms's environment; export it first, or pass --env {key}=VALUE")]
    NotSet {
        /// The key.
        key: String,
    },
    /// A `--env` item with an empty key.
    #[error("--env: an empty variable name is not allowed; use --env KEY=VALUE or --env KEY")]
    EmptyKey,
    /// The env file could not be read.
    #[error("cannot read env file {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The env file is not a regular file (a FIFO would block dms, a device might never
    /// end).
    #[error("env file {} is {kind}, not a regular file; write the variables to a regular file and pass that", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A line of the env file is not `KEY=VALUE`, a comment or blank.
    #[error("{}:{line}: {problem}; each line must be KEY=VALUE, a '#' comment or blank", path.display())]
    BadLine {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong (never the line itself: it may hold a secret).
        problem: &'static str,
    },
}

/// Builds the full environment of the helper: `base` (dms's own), then each env file in
/// order, then each `--env` item; a later definition of a key replaces an earlier one and
/// keeps its position.
pub fn build(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    env_files: &[PathBuf],
    env_items: &[OsString],
    lookup: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Vec<(OsString, OsString)>, EnvError> {
    let mut env: Vec<(OsString, OsString)> = base.into_iter().collect();
    let mut additions = Vec::new();
    for file in env_files {
        additions.extend(read_env_file(file)?);
    }
    for item in env_items {
        additions.push(parse_item(item, &lookup)?);
    }
    for (k, v) in additions {
        match env.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    Ok(env)
}

/// The keys `--env` and `--env-file` add (for logging: keys may be shown, values never).
pub fn added_keys(env_items: &[OsString]) -> Vec<String> {
    env_items
        .iter()
        .map(|i| {
            let b = i.as_bytes();
            let k = b.iter().position(|&c| c == b'=').map_or(b, |p| &b[..p]);
            String::from_utf8_lossy(k).into_owned()
        })
        .collect()
}

fn parse_item(
    item: &OsStr,
    lookup: &impl Fn(&OsStr) -> Option<OsString>,
) -> Result<(OsString, OsString), EnvError> {
    let b = item.as_bytes();
    match b.iter().position(|&c| c == b'=') {
        Some(0) => Err(EnvError::EmptyKey),
        Some(p) => Ok((
            OsStr::from_bytes(&b[..p]).to_owned(),
            OsStr::from_bytes(&b[p + 1..]).to_owned(),
        )),
        None if b.is_empty() => Err(EnvError::EmptyKey),
        None => match lookup(item) {
            Some(v) => Ok((item.to_owned(), v)),
            None => Err(EnvError::NotSet {
                key: item.to_string_lossy().into_owned(),
            }),
        },
    }
}

/// Reads `KEY=VALUE` lines. Blank lines and lines whose first non-blank character is `#`
/// are skipped; a trailing `\r` is dropped; the value is everything after the first `=`,
/// verbatim (no quote or escape processing).
pub fn read_env_file(path: &Path) -> Result<Vec<(OsString, OsString)>, EnvError> {
    let read_err = |source| EnvError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: a FIFO opens at once (instead of blocking dms until a writer comes)
    // and is then refused by its type, as is anything but a regular file.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(EnvError::NotRegular {
            path: path.to_owned(),
            kind: kind_name(&meta.file_type()),
        });
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut content).map_err(read_err)?;
    parse_env_file(path, &content)
}

/// What a file type is, in words.
fn kind_name(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

fn parse_env_file(path: &Path, content: &[u8]) -> Result<Vec<(OsString, OsString)>, EnvError> {
    let mut out = Vec::new();
    for (i, raw) in content.split(|&c| c == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let trimmed = line.trim_ascii_start();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        let bad = |problem| EnvError::BadLine {
            path: path.to_owned(),
            line: i + 1,
            problem,
        };
        let Some(p) = trimmed.iter().position(|&c| c == b'=') else {
            return Err(bad("no '=' in it"));
        };
        let key = &trimmed[..p];
        if key.is_empty() {
            return Err(bad("the variable name before '=' is empty"));
        }
        if key.iter().any(|c| c.is_ascii_whitespace()) {
            return Err(bad("the variable name contains white space"));
        }
        if line.contains(&0) {
            return Err(bad("it contains a NUL byte"));
        }
        out.push((
            OsString::from_vec(key.to_vec()),
            OsString::from_vec(trimmed[p + 1..].to_vec()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        s.into()
    }

    fn no_env(_: &OsStr) -> Option<OsString> {
        None
    }

    #[test]
    fn items_add_and_override() {
        let base = vec![(os("PATH"), os("/bin")), (os("A"), os("old"))];
        let lookup = |k: &OsStr| (k == "FROM_OWN").then(|| os("own-value"));
        let env = build(
            base,
            &[],
            &[os("A=new"), os("B=x=y"), os("FROM_OWN"), os("EMPTY=")],
            lookup,
        )
        .unwrap();
        assert_eq!(
            env,
            vec![
                (os("PATH"), os("/bin")),
                (os("A"), os("new")),
                (os("B"), os("x=y")),
                (os("FROM_OWN"), os("own-value")),
                (os("EMPTY"), os("")),
            ]
        );
    }

    #[test]
    fn missing_key_names_the_key() {
        let err = build(vec![], &[], &[os("SECRET_TOKEN")], no_env).unwrap_err();
        assert!(matches!(&err, EnvError::NotSet { key } if key == "SECRET_TOKEN"));
        assert!(err.to_string().contains("SECRET_TOKEN is not set"));
        assert!(matches!(
            build(vec![], &[], &[os("=v")], no_env),
            Err(EnvError::EmptyKey)
        ));
        assert!(matches!(
            build(vec![], &[], &[os("")], no_env),
            Err(EnvError::EmptyKey)
        ));
    }

    #[test]
    fn env_file_lines() {
        let p = Path::new("f.env");
        let got = parse_env_file(
            p,
            b"# comment\n\n  A=1\r\nB=two words \n   # indented comment\nC=\"quoted\"\nD=a=b",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                (os("A"), os("1")),
                (os("B"), os("two words ")),
                (os("C"), os("\"quoted\"")),
                (os("D"), os("a=b")),
            ]
        );
    }

    #[test]
    fn bad_env_file_line_names_file_and_line_but_not_the_value() {
        let p = Path::new("/etc/dms/t.env");
        for (content, line) in [
            (&b"A=1\nsupersecretvalue\n"[..], 2),
            (b"=supersecretvalue", 1),
            (b"\n\nMY KEY=supersecretvalue", 3),
            (b"K=supersecret\0value", 1),
        ] {
            let err = parse_env_file(p, content).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("/etc/dms/t.env:{line}: ")),
                "{msg}"
            );
            assert!(!msg.contains("supersecret"), "{msg}");
        }
    }

    #[test]
    fn files_then_items() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.env");
        std::fs::write(&f, "X=file\nY=file\n").unwrap();
        let env = build(vec![(os("X"), os("base"))], &[f], &[os("Y=item")], no_env).unwrap();
        assert_eq!(env, vec![(os("X"), os("file")), (os("Y"), os("item"))]);
    }

    #[test]
    fn unreadable_file_is_named() {
        let err = read_env_file(Path::new("/nonexistent/dms.env")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dms.env"));
    }
}
