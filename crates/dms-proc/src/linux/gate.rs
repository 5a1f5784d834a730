//! The start barrier of a real child: [`LinuxGate`] sends the byte and reads the
//! exec report (see the [module docs](super) of `linux`).

use super::reap::readable_fd;
use super::spawn::{exec_error, ParentEnds, STAGE_CHDIR, STAGE_EXEC};
use super::StatusRx;
use crate::{ExitStatus, Pid, ProcError, StartGate};
use async_trait::async_trait;
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use std::ffi::OsString;
use std::io;

/// The start barrier of a real child. Dropping it closes the gate: the child exits.
pub(super) struct LinuxGate {
    pub(super) pid: Pid,
    pub(super) program: OsString,
    pub(super) ends: Option<ParentEnds>,
    pub(super) status: StatusRx,
}

impl LinuxGate {
    /// Waits until the reaper has reaped the child.
    async fn reaped(&mut self) -> Option<ExitStatus> {
        self.status
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|s| *s)
    }
}

/// Reads the error pipe to its end: `None` at end of file with no data (exec happened
/// or the child died), else the reported stage and errno.
async fn read_exec_report(err_r: OwnedFd) -> io::Result<Option<(u32, i32)>> {
    let afd = match readable_fd(err_r) {
        Ok(afd) => afd,
        Err(e) => {
            // The reactor refused this fd: read on the blocking pool instead.
            let (fd, _) = e.into_parts();
            return tokio::task::spawn_blocking(move || read_exec_report_blocking(fd))
                .await
                .map_err(io::Error::other)?;
        }
    };
    let mut buf = [0u8; 8];
    let mut got = 0;
    loop {
        let mut guard = afd.readable().await?;
        match guard
            .try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf[got..]).map_err(io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                got += n;
                if got == buf.len() {
                    break;
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    if got < buf.len() {
        return Ok(None);
    }
    let stage = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
    Ok(Some((stage, errno)))
}

/// [`read_exec_report`] without the reactor.
fn read_exec_report_blocking(fd: OwnedFd) -> io::Result<Option<(u32, i32)>> {
    rustix::io::ioctl_fionbio(&fd, false)?;
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&fd, &mut buf[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let stage = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
    Ok(Some((stage, errno)))
}

#[async_trait]
impl StartGate for LinuxGate {
    async fn release(mut self: Box<Self>) -> Result<(), ProcError> {
        let ParentEnds { gate_w, err_r } = self.ends.take().expect("released once");
        let byte = [1u8];
        // SAFETY: sends one byte from a valid buffer on our socket; MSG_NOSIGNAL turns a
        // dead peer into EPIPE instead of SIGPIPE.
        let sent = unsafe {
            libc::send(
                gate_w.as_raw_fd(),
                byte.as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        let send_error = (sent != 1).then(io::Error::last_os_error);
        drop(gate_w);
        let report = read_exec_report(err_r)
            .await
            .map_err(|e| exec_error(&self.program, e))?;
        let pid = self.pid;
        match (report, send_error) {
            (None, None) => {
                tracing::info!(%pid, program = ?self.program, "helper released: program started");
                Ok(())
            }
            (Some((stage, errno)), _) => {
                let status = self.reaped().await;
                let err = io::Error::from_raw_os_error(errno);
                let source = match stage {
                    STAGE_EXEC => err,
                    STAGE_CHDIR => io::Error::new(
                        err.kind(),
                        format!("cannot enter the working directory: {err}"),
                    ),
                    _ => io::Error::new(err.kind(), format!("child setup failed: {err}")),
                };
                tracing::warn!(%pid, program = ?self.program, error = %source, ?status, "helper failed to start");
                Err(exec_error(&self.program, source))
            }
            (None, Some(e)) => {
                let status = self.reaped().await;
                Err(exec_error(
                    &self.program,
                    io::Error::other(format!(
                        "the helper (PID {pid}) died at the start barrier before its program ran \
                         (status {status:?}; release: {e})"
                    )),
                ))
            }
        }
    }
}
