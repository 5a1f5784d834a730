//! The pure half of the mount layer: the mount table's entries and their parsing, a
//! mount's state and identity, and what acting on exactly one mount found. No system
//! call here.

use serde::Serialize;
use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount ID (unique while mounted).
    pub mount_id: u64,
    /// Major number of the file system's device (`st_dev`).
    pub major: u32,
    /// Minor number of the file system's device: for FUSE, the connection number `N` of
    /// `/sys/fs/fuse/connections/N`.
    pub minor: u32,
    /// The mount point, decoded.
    pub mount_point: PathBuf,
    /// The file system type (`fuse`, `fuse.sshfs`, `fuseblk`, `ext4`, ...).
    pub fs_type: String,
    /// The mount source (e.g. the FUSE daemon's fsname).
    pub source: String,
}

impl MountEntry {
    /// Whether this is a FUSE mount.
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// The state of a helper's mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountState {
    /// Mounted and answering.
    Mounted,
    /// Mounted, but the FUSE daemon behind it is gone (ENOTCONN) or does not answer
    /// `statfs` within 2 s.
    Stale,
    /// Not a mount point.
    Unmounted,
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) the kernel writes in mountinfo fields.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Parses one mountinfo line; `None` if it is malformed.
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let mount_id = std::str::from_utf8(fields.first()?).ok()?.parse().ok()?;
    let majmin = std::str::from_utf8(fields.get(2)?).ok()?;
    let (major, minor) = majmin.split_once(':')?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.get(4)?)));
    // Optional fields end with a lone "-"; then fstype and source.
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let fs_type = String::from_utf8_lossy(&unescape(fields.get(sep + 1)?)).into_owned();
    let source = String::from_utf8_lossy(&unescape(fields.get(sep + 2)?)).into_owned();
    Some(MountEntry {
        mount_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point,
        fs_type,
        source,
    })
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

/// The topmost mount whose mount point is exactly `path`.
pub fn mount_at<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// The IDs of every mount whose mount point is exactly `path` (empty: nothing is
/// mounted there).
pub fn mount_ids_in(table: &[MountEntry], path: &Path) -> HashSet<u64> {
    table
        .iter()
        .filter(|m| m.mount_point == path)
        .map(|m| m.mount_id)
        .collect()
}

/// The FUSE mounts at `path` or below it, deepest (and latest) first, so that
/// detaching them in this order never leaves a child behind its parent.
pub fn fuse_mounts_under<'a>(table: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    let mut v: Vec<&MountEntry> = table
        .iter()
        .filter(|m| m.is_fuse() && m.mount_point.starts_with(path))
        .collect();
    v.reverse();
    v.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    v
}

/// What identifies one mount: its mount ID and device number, as in `/proc/self/mountinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MountIdentity {
    /// The mount ID.
    pub mount_id: u64,
    /// Major device number of its file system.
    pub major: u32,
    /// Minor device number (for FUSE: the connection number).
    pub minor: u32,
    /// The unique mount ID (`STATX_MNT_ID_UNIQUE`), where the kernel has one.
    pub unique: Option<u64>,
}

impl MountIdentity {
    /// Whether `entry` has this mount's ID and device (it is this mount, or one that
    /// took over both after it was gone: see [`crate::Mounts::prove`]).
    pub fn matches(&self, entry: &MountEntry) -> bool {
        entry.mount_id == self.mount_id && entry.major == self.major && entry.minor == self.minor
    }

    /// The entry of `table` at `path` with this mount's ID and device, if any (the mount
    /// itself, or one that took over both: see [`crate::Mounts::prove`]). IDs and device
    /// numbers are handed out lowest first, so the next FUSE mount anywhere commonly
    /// gets both of a mount just gone: an entry elsewhere is never this mount.
    pub fn find_at<'a>(&self, table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
        table
            .iter()
            .find(|m| self.matches(m) && m.mount_point == path)
    }

    /// The name of its directory in `/sys/fs/fuse/connections`: the kernel's device
    /// number (`major << 20 | minor`; for the usual anonymous FUSE device, the minor).
    pub fn connection_name(&self) -> String {
        ((u64::from(self.major) << 20) | u64::from(self.minor)).to_string()
    }
}

/// Whether the recorded mount is the one at a path, by [`crate::Mounts::prove`].
#[derive(Debug)]
pub enum Proof {
    /// It is the topmost mount at the path; the descriptor (open on it) pins it.
    Ours(OwnedFd),
    /// It is gone (whatever is mounted at the path now is another mount).
    Gone,
    /// Its ID and device are in the table, but another mount lies on top of it at the
    /// path, so it cannot be reached (or proven) through the path.
    Covered,
}

/// What an exact detach or unmount did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exact {
    /// The recorded mount was detached (or unmounted).
    Done,
    /// The recorded mount is gone: nothing to do.
    Gone,
    /// The recorded mount is there but another mount lies on top of it at its path:
    /// nothing was done (detaching it would take the other one along).
    Covered,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
        42 22 0:39 / /tmp/a\\040b/m ro,nosuid,nodev,relatime - fuse dms-testfuse ro,user_id=0\n\
        43 42 0:40 / /tmp/a\\040b/m/inner rw - fuse.sshfs host:/x rw\n\
        garbage line\n\
        44 22 0:41 / /tmp/a\\040b/m rw master:3 - fuse other rw\n";

    #[test]
    fn parses_escapes_optional_fields_and_skips_garbage() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].mount_point, Path::new("/tmp/a b/m"));
        assert_eq!((t[1].major, t[1].minor), (0, 39));
        assert_eq!(t[1].fs_type, "fuse");
        assert_eq!(t[1].source, "dms-testfuse");
        assert!(t[2].is_fuse() && !t[0].is_fuse());
        // Topmost mount at a path wins.
        assert_eq!(mount_at(&t, Path::new("/tmp/a b/m")).unwrap().mount_id, 44);
        let under: Vec<u64> = fuse_mounts_under(&t, Path::new("/tmp/a b/m"))
            .iter()
            .map(|m| m.mount_id)
            .collect();
        assert_eq!(under, vec![43, 44, 42]);
        assert!(fuse_mounts_under(&t, Path::new("/tmp/a")).is_empty());
    }

    #[test]
    fn unescape_leaves_lone_backslashes() {
        assert_eq!(unescape(b"a\\134b\\0"), b"a\\b\\0");
        assert_eq!(unescape(b"\\012"), b"\n");
    }

    #[test]
    fn identity_is_found_only_at_its_own_path() {
        let t = parse_mountinfo(SAMPLE);
        let id = MountIdentity {
            mount_id: 42,
            major: 0,
            minor: 39,
            unique: None,
        };
        assert_eq!(
            id.find_at(&t, Path::new("/tmp/a b/m")).unwrap().mount_id,
            42
        );
        assert!(id.find_at(&t, Path::new("/tmp/a b/m/inner")).is_none());
        assert_eq!(id.connection_name(), "39");
    }
}
