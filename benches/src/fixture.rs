//! Run directories for the benchmarks: real helper processes and sets of PID files.

use dms_store::{Identity, Metadata, Pid, PidStore, Record, TargetId};
use std::collections::HashSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

/// One target in 20 names a live helper: 5 %.
pub const ALIVE_EVERY: usize = 20;

/// A directory on tmpfs (`/dev/shm`, like production's `/run/dms`), else the system
/// temporary directory.
pub fn tmpfs() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Live `sleep 3600` helpers, children of this process. Dropping the value kills
/// (SIGKILL) and reaps every one of them; each also gets SIGKILL if the thread that
/// spawned it dies first (`PR_SET_PDEATHSIG`), so none outlives a crashed benchmark.
/// Spawn them from the main thread.
#[derive(Debug)]
pub struct Helpers {
    children: Vec<Child>,
}

impl Helpers {
    /// Starts `n` helpers. Check `ulimit -u` for large `n`.
    pub fn spawn(n: usize) -> io::Result<Helpers> {
        let mut helpers = Helpers {
            children: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let mut cmd = Command::new("sleep");
            cmd.arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            helpers.children.push(cmd.spawn()?);
        }
        Ok(helpers)
    }

    /// Their PIDs.
    pub fn pids(&self) -> Vec<Pid> {
        self.children
            .iter()
            .map(|c| Pid::new(i64::from(c.id())).expect("a child's PID is valid"))
            .collect()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// The boot ID of this machine.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// The identity (start ticks, boot ID) of the live process `pid`.
pub fn identity_of(pid: Pid, boot_id: &str) -> io::Result<Identity> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other(format!("no ')' in /proc/{pid}/stat")))?;
    let start_ticks = after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no start time in /proc/{pid}/stat")))?;
    Ok(Identity {
        start_ticks,
        boot_id: boot_id.to_owned(),
    })
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `n` PIDs that no process holds now, chosen among those the kernel hands out last:
/// walking down from the last PID allocated (the allocator moves up and wraps), so they
/// stay dead as long as possible while other processes start. When fewer PIDs are free
/// than asked for (pid_max is often 32768), at most half of the free ones are used and
/// repeated, so the allocator keeps room.
pub fn dead_pids(n: usize, avoid: &[Pid]) -> Vec<Pid> {
    let pid_max = dms_store::pid_max() as i64;
    let last = read_number("/proc/sys/kernel/ns_last_pid")
        .unwrap_or(pid_max - 1)
        .clamp(2, pid_max - 1);
    let avoid: HashSet<i32> = avoid.iter().map(|p| p.get()).collect();
    let free_total = (pid_max - 2) as usize;
    let want = n.min(free_total / 2).max(1);
    let mut found = Vec::with_capacity(want);
    let candidates = (300..last).rev().chain((last + 1..pid_max).rev());
    for p in candidates {
        if found.len() == want {
            break;
        }
        let raw = p as i32;
        if avoid.contains(&raw) {
            continue;
        }
        let Some(rp) = rustix::process::Pid::from_raw(raw) else {
            continue;
        };
        if rustix::process::test_kill_process(rp) == Err(rustix::io::Errno::SRCH) {
            found.push(Pid::new(p).expect("2 <= p < pid_max"));
        }
    }
    assert!(!found.is_empty(), "no free PID below pid_max {pid_max}");
    (0..n).map(|i| found[i % found.len()]).collect()
}

/// One target of a PID-file set.
#[derive(Debug, Clone)]
pub struct Planned {
    /// `target-00000`, ...
    pub target: TargetId,
    /// The PID its file names.
    pub pid: Pid,
    /// Whether that PID is one of the live helpers.
    pub alive: bool,
    /// The identity recorded for it (the helper's real one when alive; a start time no
    /// process has when dead).
    pub identity: Identity,
}

impl Planned {
    /// The record a store gets for it: identity and metadata as `dms spawn` writes them.
    pub fn record(&self) -> Record {
        Record {
            pid: self.pid,
            identity: Some(self.identity.clone()),
            meta: Metadata {
                cmdline: Some(vec!["sleep".into(), "3600".into()]),
                mount: None,
                spawned_at: Some(SystemTime::now()),
                log_path: Some(format!("/run/dms/logs/{}.log", self.target.as_str()).into()),
            },
            written_at: None,
        }
    }
}

/// The name of target `i`: `target-00000` ... (sorted like the numbers).
pub fn target(i: usize) -> TargetId {
    TargetId::new(&format!("target-{i:05}")).expect("a valid target ID")
}

/// `n` targets; every [`ALIVE_EVERY`]-th names one of `helpers` (so `helpers` must have
/// at least `n / 20` rounded up), the others a dead PID.
pub fn plan(n: usize, helpers: &Helpers) -> io::Result<Vec<Planned>> {
    plan_with(n, &helpers.pids())
}

/// [`plan`] with the live PIDs given (for helpers started by someone else, e.g. a shell).
pub fn plan_with(n: usize, alive: &[Pid]) -> io::Result<Vec<Planned>> {
    let need = n.div_ceil(ALIVE_EVERY);
    if alive.len() < need {
        return Err(io::Error::other(format!(
            "{n} targets need {need} live helpers, got {}",
            alive.len()
        )));
    }
    let boot = boot_id()?;
    let dead = dead_pids(n - need, alive);
    let mut dead = dead.into_iter();
    (0..n)
        .map(|i| {
            let (pid, is_alive) = if i % ALIVE_EVERY == 0 {
                (alive[i / ALIVE_EVERY], true)
            } else {
                (dead.next().expect("enough dead PIDs"), false)
            };
            let identity = if is_alive {
                identity_of(pid, &boot)?
            } else {
                Identity {
                    start_ticks: 1_000 + i as u64,
                    boot_id: boot.clone(),
                }
            };
            Ok(Planned {
                target: target(i),
                pid,
                alive: is_alive,
                identity,
            })
        })
        .collect()
}

/// Records every planned target through `store` (atomic, durable `put`s), a few at a
/// time.
pub async fn fill(store: &dyn PidStore, plan: &[Planned]) -> dms_store::Result<()> {
    for p in plan {
        store.put(&p.target, &p.record()).await?;
    }
    Ok(())
}

/// Writes every planned target as a bare PID file `PID\n` in `pid_dir` (created if
/// missing), as another tool would.
pub fn write_bare(pid_dir: &Path, plan: &[Planned]) -> io::Result<()> {
    std::fs::create_dir_all(pid_dir)?;
    for p in plan {
        std::fs::write(p.target.pid_file_in(pid_dir), p.pid.to_file_content())?;
    }
    Ok(())
}

/// Makes `to` a copy of the run directory `from` whose PID files are hard links (same
/// inode and mtime, so the SQLite rows still match them) and whose database, if any, is a
/// copy. `to` is emptied first, except its `locks/` and `logs/`.
pub fn restore_run_dir(from: &Path, to: &Path) -> io::Result<()> {
    let s3 = to.join(dms_store::PID_SUBDIR);
    if s3.exists() {
        std::fs::remove_dir_all(&s3)?;
    }
    std::fs::create_dir_all(&s3)?;
    for e in std::fs::read_dir(from.join(dms_store::PID_SUBDIR))? {
        let e = e?;
        std::fs::hard_link(e.path(), s3.join(e.file_name()))?;
    }
    let db = dms_store::DB_FILE_NAME;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(to.join(format!("{db}{suffix}")));
    }
    if from.join(db).exists() {
        std::fs::copy(from.join(db), to.join(db))?;
    }
    Ok(())
}
