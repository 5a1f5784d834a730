//! The record of each target's mount: `<run-dir>/mounts/<target>.mount`.
//!
//! A record holds the mount path and, once the helper's mount came up, that mount's
//! identity ([`MountIdentity`]: its mount ID and device from `/proc/self/mountinfo`):
//!
//! ```text
//! PATH                       written before the helper runs (and by older dms versions)
//! PATH \0 MOUNT_ID MAJOR:MINOR [UNIQUE_ID]   once the helper's mount is up
//! ```
//!
//! (`\0` is one NUL byte, which no path can hold; no trailing newline.) dms detaches or
//! aborts only a mount that matches a recorded identity; a record without one (written by
//! an older dms, or by a crash between the spawn and the mount) names a path, not a
//! mount, and nothing is done to whatever is mounted there.
//!
//! Records are read without following symbolic links and only when they are regular
//! files of at most [`MAX_RECORD`] bytes; anything else reads as no record.

use super::MountIdentity;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The largest record read (a path is at most 4,096 bytes).
pub const MAX_RECORD: u64 = 8192;

/// What `<run-dir>/mounts/<target>.mount` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRecord {
    /// The mount point.
    pub path: PathBuf,
    /// The mount's identity, once it came up; `None` in a record that names only a path.
    pub identity: Option<MountIdentity>,
}

impl MountRecord {
    /// The bytes of the record file.
    fn encode(&self) -> Vec<u8> {
        let mut v = self.path.as_os_str().as_bytes().to_vec();
        if let Some(id) = &self.identity {
            v.push(0);
            v.extend_from_slice(format!("{} {}:{}", id.mount_id, id.major, id.minor).as_bytes());
            if let Some(u) = id.unique {
                v.extend_from_slice(format!(" {u}").as_bytes());
            }
        }
        v
    }

    /// Parses the bytes of a record file; `None` if it names no absolute path.
    fn decode(bytes: &[u8]) -> Option<MountRecord> {
        let (path, rest) = match bytes.iter().position(|b| *b == 0) {
            Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
            None => (bytes, None),
        };
        if path.first() != Some(&b'/') {
            return None;
        }
        let identity = rest.and_then(|r| {
            let text = std::str::from_utf8(r).ok()?;
            let mut fields = text.split_ascii_whitespace();
            let id = fields.next()?;
            let (major, minor) = fields.next()?.split_once(':')?;
            let unique = match fields.next() {
                Some(u) => Some(u.parse().ok()?),
                None => None,
            };
            if fields.next().is_some() {
                return None;
            }
            Some(MountIdentity {
                mount_id: id.parse().ok()?,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                unique,
            })
        });
        Some(MountRecord {
            path: PathBuf::from(OsString::from_vec(path.to_vec())),
            identity,
        })
    }
}

/// The records of every target's mount, in `<run-dir>/mounts`. A record is written when a
/// helper with a mount is spawned, before the helper runs, completed with the mount's
/// identity once it is up, and removed once that mount is gone and no helper serves it, so
/// `cleanup --mounts` still finds a stale mount after the PID file is gone.
#[derive(Debug, Clone)]
pub struct MountRegistry {
    dir: PathBuf,
}

impl MountRegistry {
    /// The registry in `<run_dir>/mounts`.
    pub fn new(run_dir: &Path) -> MountRegistry {
        MountRegistry {
            dir: run_dir.join("mounts"),
        }
    }

    /// `<run-dir>/mounts`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, target: &str) -> PathBuf {
        self.dir.join(format!("{target}.mount"))
    }

    /// Records `path` as the mount of `target`, identity not yet known.
    pub fn put(&self, target: &str, path: &Path) -> io::Result<()> {
        self.put_record(
            target,
            &MountRecord {
                path: path.to_owned(),
                identity: None,
            },
        )
    }

    /// Writes the record of `target` atomically (temp file, fsync, rename); never follows
    /// a symbolic link at the temp file's name.
    pub fn put_record(&self, target: &str, record: &MountRecord) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!(".{target}.mount.tmp"));
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&record.encode())?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.file(target))
    }

    /// The recorded mount of `target`, if any.
    pub fn get(&self, target: &str) -> Option<MountRecord> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.file(target))
            .ok()?;
        let meta = f.metadata().ok()?;
        if !meta.is_file() || meta.len() > MAX_RECORD {
            tracing::warn!(target, path = %self.file(target).display(), "mount record is not a small regular file; ignored");
            return None;
        }
        let mut bytes = Vec::new();
        Read::take(&mut f, MAX_RECORD)
            .read_to_end(&mut bytes)
            .ok()?;
        MountRecord::decode(&bytes)
    }

    /// Forgets the mount of `target`.
    pub fn remove(&self, target: &str) -> io::Result<()> {
        match std::fs::remove_file(self.file(target)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every `(target, record)`, sorted by target.
    pub fn list(&self) -> Vec<(String, MountRecord)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<(String, MountRecord)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let target = name.strip_suffix(".mount")?;
                if target.starts_with('.') {
                    return None;
                }
                Some((target.to_owned(), self.get(target)?))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_identity() {
        let dir = tempfile::tempdir().unwrap();
        let r = MountRegistry::new(dir.path());
        assert!(r.list().is_empty());
        r.put("t1", Path::new("/mnt/x y")).unwrap();
        let id = MountIdentity {
            mount_id: 77,
            major: 0,
            minor: 51,
            unique: Some(1 << 40),
        };
        let with = MountRecord {
            path: "/mnt/z\nw".into(),
            identity: Some(id),
        };
        r.put_record("t0", &with).unwrap();
        assert_eq!(r.get("t1").unwrap().path, Path::new("/mnt/x y"));
        assert_eq!(r.get("t1").unwrap().identity, None);
        assert_eq!(r.get("t0").unwrap(), with);
        assert_eq!(r.list().len(), 2);
        assert_eq!(r.list()[0].0, "t0");
        r.remove("t1").unwrap();
        r.remove("t1").unwrap();
        assert_eq!(r.get("t1"), None);
    }

    #[test]
    fn old_records_relative_paths_symlinks_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let r = MountRegistry::new(dir.path());
        std::fs::create_dir_all(r.dir()).unwrap();
        // An older dms wrote the bare path.
        std::fs::write(r.dir().join("old.mount"), b"/mnt/old").unwrap();
        assert_eq!(
            r.get("old"),
            Some(MountRecord {
                path: "/mnt/old".into(),
                identity: None
            })
        );
        // A malformed identity names a path only: nothing is proven.
        std::fs::write(r.dir().join("bad.mount"), b"/mnt/b\0x 0:1").unwrap();
        assert_eq!(r.get("bad").unwrap().identity, None);
        std::fs::write(r.dir().join("rel.mount"), b"mnt/rel").unwrap();
        assert_eq!(r.get("rel"), None);
        std::fs::write(dir.path().join("elsewhere"), b"/").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), r.dir().join("link.mount"))
            .unwrap();
        assert_eq!(r.get("link"), None, "a symlinked record is not followed");
        std::fs::write(r.dir().join("big.mount"), vec![b'/'; 10_000]).unwrap();
        assert_eq!(r.get("big"), None);
    }
}
