//! Ownership and permission checks of the run directory, done when a store is opened.
//!
//! dms runs as root and signals the processes its PID files name. Whoever can write to the
//! run directory (or to `s3/`) can plant a PID file and so choose what dms signals, or
//! swap `s3/` for a symlink into a directory of their choosing. So, before anything is
//! read or written, [`check_run_dir`] refuses:
//!
//! - a run directory or `s3/`, `locks/`, `logs/`, `mounts/` that is writable by others (`o+w`),
//!   with or without the sticky bit;
//! - a run directory or one of those subdirectories owned by a user other than root or
//!   the effective user;
//! - `s3/`, `locks/`, `logs/` or `mounts/` that is a symbolic link (the run directory itself may be
//!   one: where it lives is the administrator's choice, and the directory it points to
//!   is what is checked).
//!
//! Group-writable directories are accepted: a deployment may share the run directory
//! with a service group on purpose (`d /run/dms 0775 root dms -`).

use crate::error::effective_user;
use crate::{Error, Result, PID_SUBDIR};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The subdirectories of the run directory that must be real directories (never symlinks)
/// with a safe owner and mode, when they exist.
pub(crate) const CHECKED_SUBDIRS: [&str; 4] = [PID_SUBDIR, "locks", "logs", "mounts"];

/// Checks the run directory (which must exist) and those of [`CHECKED_SUBDIRS`] that
/// exist; see the module documentation.
pub(crate) fn check_run_dir(run_dir: &Path) -> Result<()> {
    // Follows a symlinked run directory on purpose: the directory it points to is the one
    // whose owner and mode matter.
    let meta = fs::metadata(run_dir).map_err(|e| inspect_error(run_dir, e))?;
    check_dir(run_dir, &meta)?;
    for sub in CHECKED_SUBDIRS {
        let path = run_dir.join(sub);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(inspect_error(&path, e)),
        };
        if meta.file_type().is_symlink() {
            let to = fs::read_link(&path)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            return Err(Error::Unsafe {
                path: path.clone(),
                problem: format!(
                    "it is a symbolic link{to}; dms never follows a link here, because \
                     whoever controls where it points controls which files dms trusts"
                ),
                fix: format!(
                    "replace it by a real directory: `rm {p} && mkdir -m 0755 {p}` \
                     (move any PID files from the link's target into it first)",
                    p = path.display()
                ),
            });
        }
        if meta.is_dir() {
            check_dir(&path, &meta)?;
        }
        // Anything else in the way is reported when dms tries to use it as a directory.
    }
    Ok(())
}

/// Refuses a world-writable directory, or one owned by a user other than root or us.
fn check_dir(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(Error::Unsafe {
            path: path.to_owned(),
            problem: format!(
                "it is writable by every user (mode {:04o}); any local user could plant \
                 PID files or symlinks there and make dms signal their choice of process",
                mode & 0o7777
            ),
            fix: format!("`chmod o-w {}`", path.display()),
        });
    }
    let owner = meta.uid();
    let me = nix::unistd::geteuid();
    if owner != 0 && owner != me.as_raw() {
        let owner_name = nix::unistd::User::from_uid(owner.into())
            .ok()
            .flatten()
            .map(|u| format!("user {} (uid {owner})", u.name))
            .unwrap_or_else(|| format!("uid {owner}"));
        let chown_to = nix::unistd::User::from_uid(me)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| me.to_string());
        return Err(Error::Unsafe {
            path: path.to_owned(),
            problem: format!(
                "it is owned by {owner_name}, not by root or by {} who runs dms; its owner \
                 could plant PID files there and make dms signal their choice of process",
                effective_user()
            ),
            fix: format!(
                "`chown {chown_to} {}` (or run dms as {owner_name})",
                path.display()
            ),
        });
    }
    Ok(())
}

fn inspect_error(path: &Path, e: std::io::Error) -> Error {
    let parent = path.parent().unwrap_or(path);
    Error::io("inspect", path, e, parent, crate::error::Access::Read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_and_root_owned_dirs_pass() {
        let tmp = tempfile::tempdir().unwrap();
        check_run_dir(tmp.path()).unwrap();
        for sub in CHECKED_SUBDIRS {
            fs::create_dir(tmp.path().join(sub)).unwrap();
        }
        chmod(&tmp.path().join("logs"), 0o775); // group-writable is accepted
        check_run_dir(tmp.path()).unwrap();
    }

    /// The error as a front end shows it: what, where, each cause, then the fix.
    fn shown(e: crate::Error) -> String {
        let hint = e.hint().map(|h| format!("; {h}")).unwrap_or_default();
        format!("{}{hint}", dms_testkit::chain(&e))
    }

    #[test]
    fn world_writable_run_dir_or_subdir_is_refused_with_chmod_fix() {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o1777);
        let msg = shown(check_run_dir(tmp.path()).unwrap_err());
        assert!(msg.contains("writable by every user (mode 1777)"), "{msg}");
        assert!(
            msg.contains(&format!("`chmod o-w {}`", tmp.path().display())),
            "{msg}"
        );
        chmod(tmp.path(), 0o700);
        for sub in CHECKED_SUBDIRS {
            let p = tmp.path().join(sub);
            fs::create_dir(&p).unwrap();
            chmod(&p, 0o757);
            let msg = shown(check_run_dir(tmp.path()).unwrap_err());
            assert!(
                msg.contains(&format!("`chmod o-w {}`", p.display())),
                "{msg}"
            );
            chmod(&p, 0o755);
        }
    }

    #[test]
    fn symlinked_subdir_is_refused_but_a_symlinked_run_dir_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        check_run_dir(&link).unwrap();

        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        for sub in CHECKED_SUBDIRS {
            let p = real.join(sub);
            std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
            let msg = shown(check_run_dir(&real).unwrap_err());
            assert!(msg.contains("is a symbolic link to"), "{msg}");
            assert!(msg.contains(&format!("`rm {}", p.display())), "{msg}");
            fs::remove_file(&p).unwrap();
        }
        // The link's target is checked too.
        chmod(&real, 0o777);
        assert!(check_run_dir(&link).is_err());
    }

    #[test]
    fn dir_owned_by_another_unprivileged_user_is_refused_with_chown_fix() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to chown a directory to another user");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let s3 = tmp.path().join("s3");
        fs::create_dir(&s3).unwrap();
        nix::unistd::chown(&s3, Some(65534.into()), None).unwrap();
        let msg = shown(check_run_dir(tmp.path()).unwrap_err());
        assert!(msg.contains("uid 65534"), "{msg}");
        assert!(
            msg.contains(&format!("`chown root {}`", s3.display())),
            "{msg}"
        );
    }
}
