"""Shared fixtures: a real ``dms serve`` per test in a temporary run dir.

The test process makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): helpers are
children of the daemon, and when a test stops the daemon they are reparented to this
process (never to PID 1, which does not reap here). Every fixture stops what it started:
helpers through the API (or ``dms cleanup --all`` with the daemon stopped), the daemon by
SIGTERM, and reaps the zombies left to it.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from dms_client import Client, DaemonUnavailable

REPO = Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


_become_subreaper()


def reap_zombies() -> None:
    """Reaps every child of this process that has exited (never waits for a live one)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def is_dead(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls ``cond`` until it holds; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        reap_zombies()
        time.sleep(0.01)


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    """Waits until ``pid`` is dead (reaping it if it is our zombie)."""
    wait_for(f"PID {pid} to die", lambda: is_dead(pid), timeout)


@pytest.fixture(scope="session")
def dms_bin() -> str:
    """The ``dms`` binary under test: ``$DMS_BIN``, default ``<repo>/target/debug/dms``."""
    path = os.environ.get("DMS_BIN") or str(REPO / "target" / "debug" / "dms")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        pytest.fail(f"no dms binary at {path}: build it (cargo build -p dms-cli) or set $DMS_BIN")
    return path


class Daemon:
    """One ``dms serve`` started by a test."""

    def __init__(self, dms_bin: str, run_dir: Path) -> None:
        self.dms_bin = dms_bin
        self.run_dir = run_dir
        self.socket = run_dir / "dms.sock"
        self.log = run_dir.parent / f"{run_dir.name}-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    def start(self, *extra: str) -> Daemon:
        """Starts the daemon and waits until its socket answers."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.dms_bin, "--run-dir", str(self.run_dir), "serve", *extra],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        client = Client(self.run_dir, timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.health()
                break
            except DaemonUnavailable:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dms serve did not come up; its log:\n{self.log_text()}")
                time.sleep(0.01)
        client.close()
        return self

    def log_text(self) -> str:
        """The daemon's log so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        """The daemon's PID."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the daemon runs."""
        return self.proc is not None and self.proc.poll() is None

    def note_helpers(self) -> None:
        """Remembers the PIDs of the daemon's helpers (to reap them at the end)."""
        if not self.alive():
            return
        try:
            for info in Client(self.run_dir, timeout=5).status():
                if info["pid"] is not None:
                    self.seen_pids.add(info["pid"])
        except Exception:
            pass

    def stop(self) -> int:
        """SIGTERMs the daemon (SIGKILL after 10 s) and returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.note_helpers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        reap_zombies()
        return self.proc.returncode

    def client(self, timeout: float = 30.0) -> Client:
        """A client of this daemon."""
        return Client(self.run_dir, timeout=timeout)


def stop_everything(dms_bin: str, run_dir: Path, daemons: list[Daemon]) -> None:
    """Stops every helper of ``run_dir`` and every daemon; reaps what is left."""
    for d in daemons:
        if d.alive():
            d.note_helpers()
            try:
                d.client(timeout=20).cleanup(all=True, grace=1)
            except Exception as e:  # the daemon may be the thing under test
                print(f"cleanup through the API failed: {e}", file=sys.stderr)
            d.stop()
    out = subprocess.run(
        [dms_bin, "--run-dir", str(run_dir), "--json", "cleanup", "--all", "--grace", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        print(f"dms cleanup --all: {out.returncode} {out.stderr}", file=sys.stderr)
    else:
        json.loads(out.stdout)
    for d in daemons:
        for pid in d.seen_pids:
            wait_dead(pid, timeout=15)
    reap_zombies()


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A fresh temporary run dir (mode 0700), removed at the end."""
    top = Path(tempfile.mkdtemp(prefix="dms-py-"))
    d = top / "run"
    d.mkdir(mode=0o700)
    yield d
    for mnt in (top / "mnt").glob("*") if (top / "mnt").exists() else []:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def daemons(dms_bin: str, run_dir: Path) -> Iterator[list[Daemon]]:
    """The daemons a test starts on ``run_dir``; all stopped, with their helpers, at
    the end."""
    started: list[Daemon] = []
    yield started
    stop_everything(dms_bin, run_dir, started)


@pytest.fixture
def daemon(dms_bin: str, run_dir: Path, daemons: list[Daemon]) -> Daemon:
    """A running ``dms serve`` on ``run_dir``."""
    d = Daemon(dms_bin, run_dir).start()
    daemons.append(d)
    return d


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    """A client of ``daemon``."""
    c = daemon.client(timeout=30)
    yield c
    c.close()


def is_root() -> bool:
    """Whether the tests run as root."""
    return os.geteuid() == 0


def zombie_pid() -> int:
    """The PID of a child that exited and is left unreaped: a dead PID that cannot be
    reused while the test holds it (``reap_zombies`` may reap it later)."""
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while not is_dead(proc.pid):
        if time.monotonic() > deadline:
            pytest.fail("`true` did not exit within 10 s")
        time.sleep(0.005)
    # Forget the Popen without reaping (its __del__ only reaps an exited child later).
    proc.returncode = 0
    return proc.pid


#: A stand-in for /usr/bin/s3vaultfuse.py: mounts $STANDIN_SOURCE on
#: $vault_data_directory (a bind mount, so a real mount point that answers statfs) and
#: stays in the foreground until SIGTERM.
STANDIN = """\
#!/usr/bin/python3
import os, signal, subprocess, sys
mnt = os.environ["vault_data_directory"]
subprocess.run(["mount", "--bind", os.environ["STANDIN_SOURCE"], mnt], check=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"""


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` is in this process's mount table (``os.path.ismount`` misses a
    bind mount from the same file system)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return str(path) in points


def can_bind_mount(tmp: Path) -> bool:
    """Whether this process may make bind mounts (root, not in a locked-down container)."""
    if not is_root():
        return False
    a, b = tmp / "probe-a", tmp / "probe-b"
    a.mkdir(exist_ok=True)
    b.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "--bind", str(a), str(b)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(b)], check=True)
    return ok == 0


@pytest.fixture
def standin(run_dir: Path) -> Path:
    """The stand-in helper script, executable; skips the test where it cannot mount."""
    top = run_dir.parent
    if not can_bind_mount(top):
        pytest.skip("needs root and bind mounts (the stand-in helper mounts its directory)")
    (top / "mnt").mkdir(exist_ok=True)
    (top / "source").mkdir(exist_ok=True)
    (top / "source" / "in-the-bucket").write_text("hello\n")
    script = top / "s3vaultfuse.py"
    script.write_text(STANDIN)
    script.chmod(0o755)
    return script
