//! Spawning: everything the child needs prepared before the fork, the forked child up
//! to its `execve`, and the parent side of the fork (see the [module docs](super) of
//! `linux`).

use super::gate::LinuxGate;
use super::probe::{pidfd_open, read_stat};
use super::reap::reap;
use super::{files, prune_reaped, Child, LinuxSpawner};
use crate::{Pending, Pid, ProcError, SpawnSpec, GATE_DROPPED_EXIT_CODE};
use rustix::fd::{AsRawFd, OwnedFd};
use std::ffi::{CString, OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// The search path used when the given environment has no `PATH`.
pub(super) const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Exit code of a child whose `chdir` or `execve` failed.
pub(super) const EXEC_FAILED_EXIT_CODE: i32 = 127;
/// The child's descriptor for the gate (read end).
pub(super) const CHILD_GATE_FD: i32 = 3;
/// The child's descriptor for the error pipe (write end, close-on-exec).
pub(super) const CHILD_ERR_FD: i32 = 4;
/// Descriptors below this are the child's fixed layout; parent-side copies are moved up.
pub(super) const FIRST_FREE_FD: i32 = 5;
/// Stages reported through the error pipe.
pub(super) const STAGE_SETUP: u32 = 1;
pub(super) const STAGE_CHDIR: u32 = 2;
pub(super) const STAGE_EXEC: u32 = 3;

impl LinuxSpawner {
    pub(super) async fn spawn_child(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        let (plan, ends) = prepare(spec)?;
        // SAFETY: the child runs only `child_main`, which is async-signal-safe and never
        // returns; the parent continues normally.
        let forked = unsafe { libc::fork() };
        if forked < 0 {
            return Err(exec_error(
                &spec.program,
                io::Error::new(
                    io::Error::last_os_error().kind(),
                    format!("fork: {}", io::Error::last_os_error()),
                ),
            ));
        }
        if forked == 0 {
            // SAFETY: we are the freshly forked child.
            unsafe { child_main(&plan) }
        }
        drop(plan); // closes the child's ends in the parent
        let pid = match Pid::try_from(forked) {
            Ok(pid) => pid,
            Err(e) => {
                // Only possible if pid_max was raised after dms read it: the child is at
                // the barrier, so kill and reap it rather than run what we cannot track.
                // SAFETY: our own child, not yet reaped; valid out pointer.
                unsafe {
                    libc::kill(forked, libc::SIGKILL);
                    libc::waitpid(forked, &mut 0, 0);
                }
                return Err(exec_error(
                    &spec.program,
                    io::Error::other(format!("the new child has an untrackable PID: {e}")),
                ));
            }
        };

        // Our child cannot be reaped by anyone else, so the PID is stable until we reap.
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(%pid, error = %e, "pidfd_open of a new child failed; reaping with waitpid");
                None
            }
        };
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = reap(pid.get(), pidfd).await;
            tracing::debug!(%pid, ?status, "reaped helper");
            tx.send_replace(Some(status));
        });
        let start_ticks = match read_stat(pid) {
            Ok(Some(stat)) => stat.starttime,
            other => {
                // Cannot identify it: do not leave it behind.
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(pid.get(), libc::SIGKILL) };
                return Err(exec_error(
                    &spec.program,
                    io::Error::other(format!(
                        "cannot read /proc/{pid}/stat of the new child: {:?}",
                        other.err()
                    )),
                ));
            }
        };
        {
            let seq = self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            prune_reaped(&mut children);
            children.insert(
                pid.get(),
                Child {
                    start_ticks,
                    seq,
                    status: rx.clone(),
                },
            );
        }
        let identity = self.identity(pid, start_ticks);
        tracing::info!(
            %pid,
            start_ticks,
            program = ?spec.program,
            args = spec.args.len(),
            env_keys = ?spec.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            log = %spec.log.display(),
            "helper created, held at the start barrier"
        );
        Ok(Pending {
            identity,
            gate: Box::new(LinuxGate {
                pid,
                program: spec.program.clone(),
                ends: Some(ends),
                status: rx,
            }),
        })
    }
}

pub(super) fn exec_error(program: &OsStr, source: io::Error) -> ProcError {
    ProcError::Exec {
        program: program.to_owned(),
        source,
    }
}

pub(super) fn cstring(program: &OsStr, what: &str, bytes: &[u8]) -> Result<CString, ProcError> {
    CString::new(bytes).map_err(|_| {
        exec_error(
            program,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} contains a NUL byte"),
            ),
        )
    })
}

/// Finds the program: a path is used as is; a bare name is searched in the `PATH` of
/// the given environment.
pub(super) fn resolve_program(spec: &SpawnSpec) -> Result<PathBuf, ProcError> {
    let program = Path::new(&spec.program);
    if spec.program.is_empty() {
        return Err(exec_error(
            &spec.program,
            io::Error::new(io::ErrorKind::InvalidInput, "empty program name"),
        ));
    }
    if spec.program.as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        // The child runs in its working directory (`/` by default), not in dms's: a
        // relative `PATH` entry (`.`, or empty) is resolved here, against dms's.
        let candidate = dir.join(program);
        let candidate = std::path::absolute(&candidate).unwrap_or(candidate);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
    }
    Err(exec_error(
        &spec.program,
        io::Error::new(
            io::ErrorKind::NotFound,
            "no executable of that name in the PATH of the given environment",
        ),
    ))
}

/// Moves a descriptor to `FIRST_FREE_FD` or above, close-on-exec.
pub(super) fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_FREE_FD {
        Ok(fd)
    } else {
        Ok(rustix::io::fcntl_dupfd_cloexec(&fd, FIRST_FREE_FD)?)
    }
}

/// Everything the child needs, prepared before the fork so the child never allocates.
pub(super) struct ChildPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    devnull: OwnedFd,
    log: OwnedFd,
    gate_r: OwnedFd,
    err_w: OwnedFd,
    max_fd: i32,
}

/// The parent's ends, kept by the [`StartGate`].
pub(super) struct ParentEnds {
    pub(super) gate_w: OwnedFd,
    pub(super) err_r: OwnedFd,
}

pub(super) fn prepare(spec: &SpawnSpec) -> Result<(ChildPlan, ParentEnds), ProcError> {
    let program = spec.program.as_os_str();
    let path = resolve_program(spec)?;
    let path = cstring(program, "the program path", path.as_os_str().as_bytes())?;
    let mut argv = vec![cstring(program, "the program", program.as_bytes())?];
    for arg in &spec.args {
        argv.push(cstring(program, "an argument", arg.as_bytes())?);
    }
    let mut envp = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        let key = k.as_bytes();
        if key.is_empty() || key.contains(&b'=') {
            return Err(exec_error(
                program,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid environment key {k:?} (empty or containing '=')"),
                ),
            ));
        }
        let mut entry = Vec::with_capacity(key.len() + 1 + v.len());
        entry.extend_from_slice(key);
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        envp.push(cstring(
            program,
            &format!("environment variable {k:?}"),
            &entry,
        )?);
    }
    let cwd_path = spec.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
    let cwd = cstring(
        program,
        "the working directory",
        cwd_path.as_os_str().as_bytes(),
    )?;

    let log = files::open_log(&spec.log)?;
    let setup = |what: &str, e: io::Error| {
        exec_error(program, io::Error::new(e.kind(), format!("{what}: {e}")))
    };
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| setup("open /dev/null", e))?;
    let (gate_w, gate_r) = UnixStream::pair().map_err(|e| setup("socketpair", e))?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| setup("pipe", e.into()))?;
    rustix::io::ioctl_fionbio(&err_r, true).map_err(|e| setup("ioctl FIONBIO", e.into()))?;

    let high = |fd: OwnedFd| high_fd(fd).map_err(|e| setup("fcntl F_DUPFD_CLOEXEC", e));
    let max_fd = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(1 << 20, |n| n.min(1 << 20) as i32);

    let argv_ptrs = argv
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_ptrs = envp
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    Ok((
        ChildPlan {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd,
            devnull: high(devnull.into())?,
            log: high(log.into())?,
            gate_r: high(gate_r.into())?,
            err_w: high(err_w)?,
            max_fd,
        },
        ParentEnds {
            gate_w: gate_w.into(),
            err_r,
        },
    ))
}

/// Reports `stage` and the current `errno` on `fd` and exits with 127.
///
/// # Safety
///
/// Only for the forked child: async-signal-safe calls only.
unsafe fn child_fail(fd: i32, stage: u32) -> ! {
    // SAFETY: errno location is valid for the calling thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes from a valid buffer, then exits without running destructors.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXEC_FAILED_EXIT_CODE)
    }
}

/// Sets the disposition of `sig` to the default, including the two real-time signals
/// glibc reserves for itself (32, 33), which its `signal()` wrapper refuses to touch.
///
/// # Safety
///
/// Async-signal-safe; meant for the forked child.
#[cfg(target_arch = "x86_64")]
unsafe fn reset_disposition(sig: i32) {
    /// The kernel's `struct sigaction` on x86_64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let act = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: raw rt_sigaction with a valid struct and the kernel's sigset size (8).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &raw const act,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Sets the disposition of `sig` to the default (glibc's reserved signals excepted).
///
/// # Safety
///
/// Async-signal-safe; meant for the forked child.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn reset_disposition(sig: i32) {
    // SAFETY: plain signal() call.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// The forked child: set up, wait at the gate, exec.
///
/// # Safety
///
/// Must only run in the child right after `fork()`: it uses only async-signal-safe
/// calls and never returns.
unsafe fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY (whole body): raw async-signal-safe syscalls on descriptors and C strings
    // prepared by the parent; no allocation, no locks.
    unsafe {
        // Default signal handling: the helper must not inherit dms's mask or ignored
        // signals (Rust ignores SIGPIPE), and a pending child must die of SIGTERM.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                reset_disposition(sig);
            }
        }
        let err_src = plan.err_w.as_raw_fd();
        if libc::dup2(err_src, CHILD_ERR_FD) < 0 {
            child_fail(err_src, STAGE_SETUP);
        }
        if libc::fcntl(CHILD_ERR_FD, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            child_fail(CHILD_ERR_FD, STAGE_SETUP);
        }
        if libc::setsid() < 0 {
            child_fail(CHILD_ERR_FD, STAGE_SETUP);
        }
        let moves = [
            (plan.devnull.as_raw_fd(), 0),
            (plan.log.as_raw_fd(), 1),
            (plan.log.as_raw_fd(), 2),
            (plan.gate_r.as_raw_fd(), CHILD_GATE_FD),
        ];
        for (from, to) in moves {
            if libc::dup2(from, to) < 0 {
                child_fail(CHILD_ERR_FD, STAGE_SETUP);
            }
        }
        // Close everything else: no leak into the helper, and no copy of another
        // pending child's gate kept alive by us.
        if libc::syscall(
            libc::SYS_close_range,
            FIRST_FREE_FD as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            for fd in FIRST_FREE_FD..plan.max_fd {
                libc::close(fd);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            child_fail(CHILD_ERR_FD, STAGE_CHDIR);
        }
        // The start barrier.
        let mut byte = 0u8;
        loop {
            let n = libc::read(CHILD_GATE_FD, (&raw mut byte).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // End of file (gate dropped, or dms died) or an error: run nothing.
            libc::_exit(GATE_DROPPED_EXIT_CODE);
        }
        libc::close(CHILD_GATE_FD);
        libc::execve(
            plan.path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        child_fail(CHILD_ERR_FD, STAGE_EXEC)
    }
}
