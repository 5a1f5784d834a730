//! `dms-testfuse`: a tiny FUSE daemon that stands in for `s3vaultfuse` in dms's tests.
//!
//! It mounts a read-only filesystem holding one file, `hello.txt`, at the given
//! directory (as root, with the `mount(2)` system call: no `fusermount` needed) and
//! serves it until the mount is removed (it then exits 0) or it gets SIGTERM or SIGINT
//! (it then unmounts and exits 0).
//!
//! ```text
//! dms-testfuse [--fail-mount] [--mount-delay-ms N] [--ignore-sigterm] [--hang-statfs]
//!              [--hang-statfs-on-usr1] [--self-statfs] [--exit-after-mount] DIR
//! ```
//!
//! - `--fail-mount`: print an error and exit 3 without mounting.
//! - `--mount-delay-ms N`: wait N ms before mounting (a slow helper).
//! - `--ignore-sigterm`: SIGTERM is ignored (only SIGINT or SIGKILL stop it).
//! - `--hang-statfs`: never answer `statfs(2)`: the mount looks hung to a prober.
//! - `--exit-after-mount`: mount, then exit 4 at once without unmounting (the mount
//!   stays, answering ENOTCONN), as s3fs does when its bucket is missing.
//! - `--hang-statfs-on-usr1`: answer `statfs(2)` until SIGUSR1 arrives, then behave as
//!   `--hang-statfs` (and start the `--self-statfs` thread then): a helper that was
//!   healthy when it started and hangs later, as when its S3 endpoint stalls. It logs
//!   `got SIGUSR1: statfs hangs from now on`.
//! - `--self-statfs`: once mounted, a thread of the helper calls `statfs(2)` on its own
//!   mount. With `--hang-statfs` that thread waits forever in the kernel, where even
//!   SIGKILL cannot end the process: only aborting the FUSE connection frees it. Then
//!   the worker does not block on a hung statfs but leaves each one unanswered and
//!   goes on reading, so the helper's own request is received whoever asked first; it
//!   logs `statfs from PID N (my own thread: true) left unanswered` when it has it.
//!
//! Not published; test-only.

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyStatfs, Request, SessionACL,
};
use nix::sys::signal::{SigSet, Signal};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The content of `hello.txt`.
const CONTENT: &[u8] = b"hello from dms-testfuse\n";
/// Attribute cache time: short, so a dead daemon is noticed by lookups too.
const TTL: Duration = Duration::from_millis(100);

struct Args {
    dir: PathBuf,
    fail_mount: bool,
    mount_delay: Duration,
    ignore_sigterm: bool,
    hang_statfs: bool,
    hang_on_usr1: bool,
    self_statfs: bool,
    exit_after_mount: bool,
}

fn usage() -> String {
    "usage: dms-testfuse [--fail-mount] [--mount-delay-ms N] [--ignore-sigterm] \
     [--hang-statfs] [--hang-statfs-on-usr1] [--self-statfs] [--exit-after-mount] DIR"
        .to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args_os().skip(1);
    let mut dir = None;
    let mut out = Args {
        dir: PathBuf::new(),
        fail_mount: false,
        mount_delay: Duration::ZERO,
        ignore_sigterm: false,
        hang_statfs: false,
        hang_on_usr1: false,
        self_statfs: false,
        exit_after_mount: false,
    };
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--fail-mount") => out.fail_mount = true,
            Some("--ignore-sigterm") => out.ignore_sigterm = true,
            Some("--hang-statfs") => out.hang_statfs = true,
            Some("--self-statfs") => out.self_statfs = true,
            Some("--hang-statfs-on-usr1") => out.hang_on_usr1 = true,
            Some("--exit-after-mount") => out.exit_after_mount = true,
            Some("--mount-delay-ms") => {
                let n = args
                    .next()
                    .and_then(|v| v.to_str().and_then(|s| s.parse::<u64>().ok()))
                    .ok_or_else(|| format!("--mount-delay-ms needs a number of ms; {}", usage()))?;
                out.mount_delay = Duration::from_millis(n);
            }
            Some(s) if s.starts_with("--") => return Err(format!("unknown flag {s}; {}", usage())),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("one DIR only; {}", usage())),
        }
    }
    out.dir = dir.ok_or_else(usage)?;
    Ok(out)
}

fn attr(ino: u64) -> FileAttr {
    let (kind, perm, size, nlink) = if ino == 1 {
        (FileType::Directory, 0o755, 0, 2)
    } else {
        (FileType::RegularFile, 0o444, CONTENT.len() as u64, 1)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 1,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 512,
    }
}

/// One directory holding `hello.txt`.
struct HelloFs {
    /// Whether `statfs` hangs (set at start by `--hang-statfs`, or on SIGUSR1).
    hang_statfs: Arc<AtomicBool>,
    /// With `--hang-statfs`: leave each statfs unanswered but keep reading requests
    /// (set by `--self-statfs`), instead of blocking the single worker thread.
    keep_serving: bool,
}

impl Filesystem for HelloFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if u64::from(parent) == 1 && name == "hello.txt" {
            reply.entry(&TTL, &attr(2), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            i @ (1 | 2) => reply.attr(&TTL, &attr(i)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        _size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if u64::from(ino) != 2 {
            return reply.error(Errno::ENOENT);
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(CONTENT.len());
        reply.data(&CONTENT[start..]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            return reply.error(Errno::ENOENT);
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (2, FileType::RegularFile, "hello.txt"),
        ];
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let hang = self.hang_statfs.load(Ordering::SeqCst);
        if hang && self.keep_serving {
            // The request stays unanswered (dropping the reply would answer EIO), and
            // the worker goes on reading: every caller's request is then in the
            // daemon's hands, where even SIGKILL cannot take it back.
            let own = std::path::Path::new(&format!("/proc/self/task/{}", req.pid())).exists();
            eprintln!(
                "dms-testfuse: statfs from PID {} (my own thread: {own}) left unanswered \
                 (--hang-statfs --self-statfs)",
                req.pid()
            );
            std::mem::forget(reply);
            return;
        }
        if hang {
            // A hung daemon: the single worker thread never comes back.
            eprintln!("dms-testfuse: statfs received; hanging (--hang-statfs)");
            loop {
                std::thread::park();
            }
        }
        reply.statfs(1, 0, 0, 1, 0, 512, 255, 512);
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dms-testfuse: {e}");
            return ExitCode::from(2);
        }
    };
    if args.fail_mount {
        eprintln!(
            "dms-testfuse: cannot mount {}: refusing to mount (--fail-mount)",
            args.dir.display()
        );
        return ExitCode::from(3);
    }
    // Block the stop signals in every thread; one thread waits for them with sigwait.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGUSR1);
    if !args.ignore_sigterm {
        stop.add(Signal::SIGTERM);
    } else {
        // SAFETY: installs SIG_IGN, no handler code runs.
        if let Err(e) = unsafe {
            nix::sys::signal::signal(Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn)
        } {
            eprintln!("dms-testfuse: cannot ignore SIGTERM: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = stop.thread_block() {
        eprintln!("dms-testfuse: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    if !args.mount_delay.is_zero() {
        eprintln!(
            "dms-testfuse: waiting {} ms before mounting (--mount-delay-ms)",
            args.mount_delay.as_millis()
        );
        std::thread::sleep(args.mount_delay);
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("dms-testfuse".to_owned()),
        MountOption::Subtype("dms-testfuse".to_owned()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    let hang = Arc::new(AtomicBool::new(args.hang_statfs));
    let fs = HelloFs {
        hang_statfs: hang.clone(),
        keep_serving: args.self_statfs,
    };
    let mut session = match fuser::Session::new(fs, &args.dir, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dms-testfuse: cannot mount {}: {e}", args.dir.display());
            return ExitCode::from(1);
        }
    };
    eprintln!("dms-testfuse: mounted {}", args.dir.display());
    if args.exit_after_mount {
        eprintln!("dms-testfuse: the bucket does not exist; exiting (--exit-after-mount)");
        std::process::exit(4);
    }
    let self_statfs = |dir: PathBuf| {
        std::thread::spawn(move || {
            let r = nix::sys::statfs::statfs(&dir);
            eprintln!(
                "dms-testfuse: statfs of my own mount returned {:?}",
                r.map(drop)
            );
        });
    };
    if args.self_statfs && !args.hang_on_usr1 {
        self_statfs(args.dir.clone());
    }
    let mut unmounter = session.unmount_callable();
    let dir = args.dir.clone();
    let (hang_on_usr1, with_self_statfs) = (args.hang_on_usr1, args.self_statfs);
    std::thread::spawn(move || loop {
        match stop.wait() {
            Ok(Signal::SIGUSR1) if hang_on_usr1 => {
                hang.store(true, Ordering::SeqCst);
                eprintln!("dms-testfuse: got SIGUSR1: statfs hangs from now on");
                if with_self_statfs {
                    self_statfs(dir.clone());
                }
            }
            Ok(Signal::SIGUSR1) => eprintln!("dms-testfuse: got SIGUSR1; ignored"),
            Ok(sig) => {
                eprintln!("dms-testfuse: got {sig}; unmounting {}", dir.display());
                if let Err(e) = unmounter.unmount() {
                    eprintln!("dms-testfuse: cannot unmount {}: {e}", dir.display());
                    std::process::exit(1);
                }
                return;
            }
            Err(e) => {
                eprintln!("dms-testfuse: sigwait failed: {e}");
                return;
            }
        }
    });
    match session.run() {
        Ok(()) => {
            eprintln!("dms-testfuse: {} unmounted; exiting", args.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dms-testfuse: session on {} ended: {e}", args.dir.display());
            ExitCode::from(1)
        }
    }
}
