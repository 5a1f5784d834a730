//! What a spawn checks before it changes anything, and how a replace that fails after
//! the old helper was stopped is reported.
//!
//! `spawn --replace` stops the old helper first. Everything that can be known to fail
//! before that stop is checked first ([`Inner::preflight`]): the program is found and is
//! an executable file, the log opens as the spawn would open it (a regular file or a
//! character device, no symlink, no FIFO), and the mount path, if given, can be a
//! directory. A start that still fails after the stop is reported as
//! [`Error::ReplacedThenFailed`], saying so plainly.
//!
//! Relative paths are made absolute here, against dms's working directory, because the
//! helper runs in `/`: the program (only when it contains a `/`; a bare name is looked up
//! in `PATH`), the log and the mount path. dms and the helper then see the same files,
//! and the recorded paths mean the same to a later dms started elsewhere.

use super::Inner;
use crate::error::{Error, Result};
use crate::mount::Mounts;
use crate::options::HelperSpec;
use dms_proc::{Pid, SpawnSpec};
use dms_store::TargetId;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Makes `p` absolute against the current directory.
fn absolute(p: &Path, what: &'static str) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    std::path::absolute(p).map_err(|source| Error::Path {
        path: p.to_owned(),
        what,
        source,
    })
}

/// Makes the relative paths of `spec` absolute (see the module documentation).
pub(super) fn absolute_paths(spec: &mut HelperSpec) -> Result<()> {
    let program = Path::new(&spec.program);
    if program.is_relative() && spec.program.as_encoded_bytes().contains(&b'/') {
        spec.program = absolute(program, "program")?.into_os_string();
    }
    if let Some(log) = &spec.log {
        spec.log = Some(absolute(log, "log file")?);
    }
    if let Some(mount) = &spec.mount {
        spec.mount = Some(absolute(mount, "mount path")?);
    }
    Ok(())
}

/// The mount path can be used: an existing path is a directory; a missing one (created
/// when the spawn waits for the mount) has a directory as its nearest existing ancestor.
fn check_mount_path(mounts: &dyn Mounts, dir: &Path, created: bool) -> Result<()> {
    let not_dir = |path: &Path, what: &str| {
        Error::Mount {
        path: path.to_owned(),
        op: "use as mount point",
        source: io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{what} is not a directory; pass a directory (or a path to create) as the mount point"),
        ),
    }
    };
    // A path on or below a FUSE mount is left to the mount checks, which never touch the
    // file system there: a stat would hang on a mount whose daemon is stopped or hung
    // (the old helper of a `--replace`, say).
    let resolved = super::mount_spawn::resolve(dir);
    if mounts.read_table().is_ok_and(|table| {
        table
            .iter()
            .any(|m| m.is_fuse() && resolved.starts_with(&m.mount_point))
    }) {
        return Ok(());
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(not_dir(dir, "it")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) => {}
        // ENOTCONN (a dead FUSE mount) and the like: left to the mount checks.
        Err(_) => return Ok(()),
    }
    if !created {
        return Ok(());
    }
    let mut up = dir.parent();
    while let Some(p) = up {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => return Err(not_dir(dir, &format!("its parent {}", p.display()))),
            Err(_) => up = p.parent(),
        }
    }
    Ok(())
}

impl Inner {
    /// The checks of a spawn of `spec` that need no fork (see the module
    /// documentation). `log` is the log the helper will get.
    pub(super) fn preflight(&self, spec: &HelperSpec, log: &Path) -> Result<()> {
        let probe = SpawnSpec {
            program: spec.program.clone(),
            args: Vec::new(),
            env: spec.env.clone(),
            log: log.to_owned(),
            cwd: None,
        };
        self.spawner.preflight(&probe)?;
        if let Some(dir) = &spec.mount {
            check_mount_path(self.mounts(), dir, spec.ready_timeout.is_some())?;
        }
        Ok(())
    }

    /// [`Inner::spawn_replacing`], with relative paths made absolute first, and an
    /// error after the old helper was stopped said to be one.
    pub(super) async fn spawn(
        self: &Arc<Self>,
        target: &TargetId,
        mut spec: HelperSpec,
    ) -> Result<dms_proc::ProcIdentity> {
        absolute_paths(&mut spec)?;
        let mut stopped: Option<Pid> = None;
        match self.spawn_replacing(target, spec, &mut stopped).await {
            Err(e) => match stopped {
                Some(old_pid) => Err(Error::ReplacedThenFailed {
                    target: target.clone(),
                    old_pid,
                    source: Box::new(e),
                }),
                None => Err(e),
            },
            ok => ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_and_bare_names_stay() {
        let cwd = std::env::current_dir().unwrap();
        let mut spec = HelperSpec {
            program: "bin/helper".into(),
            log: Some("h.log".into()),
            mount: Some("m".into()),
            ..HelperSpec::default()
        };
        absolute_paths(&mut spec).unwrap();
        assert_eq!(Path::new(&spec.program), cwd.join("bin/helper"));
        assert_eq!(spec.log.unwrap(), cwd.join("h.log"));
        assert_eq!(spec.mount.unwrap(), cwd.join("m"));
        let mut spec = HelperSpec {
            program: "sleep".into(),
            ..HelperSpec::default()
        };
        absolute_paths(&mut spec).unwrap();
        assert_eq!(spec.program, "sleep");
    }

    #[test]
    fn a_file_is_not_a_mount_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let m = &crate::mount::LinuxMounts;
        let err = crate::Report::new(&check_mount_path(m, &file, true).unwrap_err()).to_string();
        assert!(err.contains("not a directory"), "{err}");
        let err = check_mount_path(m, &file.join("sub"), true).unwrap_err();
        let err = crate::Report::new(&err).to_string();
        assert!(err.contains("its parent"), "{err}");
        check_mount_path(m, &dir.path().join("new/deeper"), true).unwrap();
        check_mount_path(m, dir.path(), true).unwrap();
    }
}
