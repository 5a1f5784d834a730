"""``S3VaultFuseManager``: the original Python manager's API on top of ``dms serve``.

A drop-in swap: the method names, argument orders and return shapes of the original
(``trilio_dms.s3vaultfuse_manager.S3VaultFuseManager``), with the helpers held by the
daemon instead of by the Python process::

    # was: from trilio_dms.s3vaultfuse_manager import S3VaultFuseManager
    from dms_client.compat import S3VaultFuseManager

    manager = S3VaultFuseManager()
    manager.spawn_s3vaultfuse("target-123", "/var/lib/trilio/mnt/t1", env)
    manager.is_running("target-123")

What differs from the original, and why:

- It never stops anything when garbage-collected (the original's ``__del__`` killed every
  helper): the helpers belong to the daemon and outlive this object and its process.
- It never signals a process dms cannot prove is its own (start time, boot ID), where the
  original signalled whatever PID a file named.
- ``processes`` is a read-only mapping served from the daemon's memory; ``status`` is the
  dms state (``running``, ``stale``, ``foreign``, ...), and a helper's ``start_time`` is a
  naive UTC ``datetime`` (as the original's ``datetime.utcnow()``), to the second.
- Where no daemon serves the run dir, it starts one (``dms serve --run-dir``, detached)
  and logs a record saying so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Callable, TypeVar

from .client import DEFAULT_TIMEOUT, Client
from .errors import ApiError, BadRequest, Conflict, DaemonUnavailable, DmsError
from .types import Info

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How long a daemon started by the manager has to answer.
DAEMON_START_TIMEOUT = 10.0


def _start_time(info: Info) -> _dt.datetime | None:
    """The ``started_at`` of an info object as a naive UTC datetime."""
    text = info.get("started_at")
    if not text:
        return None
    return _dt.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")


def process_info(info: Info) -> dict[str, Any]:
    """The original manager's process-info dictionary for a daemon info object."""
    rss = info.get("rss_bytes")
    return {
        "pid": info.get("pid"),
        "target_id": info["target"],
        "mount_path": info.get("mount"),
        "start_time": _start_time(info),
        "env_keys": [],
        "status": info["state"],
        "loaded_from_disk": info.get("source") == "disk",
        "alive": bool(info["running"]),
        "pid_file": info["pid_file"],
        "pid_file_exists": bool(info["pid_file_exists"]),
        "cpu_percent": info.get("cpu_percent"),
        "memory_mb": None if rss is None else rss / 1024 / 1024,
        "num_threads": info.get("threads"),
        "uptime_seconds": info.get("uptime_secs"),
        "cmdline": info.get("cmdline"),
        "detail": info.get("detail"),
    }


def _in_memory(info: Info) -> bool:
    return info.get("source") in ("memory", "both")


class ProcessesView(Mapping[str, Mapping[str, Any]]):
    """The read-only ``processes`` mapping: target ID to process-info dictionary, for the
    helpers held in the daemon's memory. Each access asks the daemon (it is never
    stale); ``items()`` and ``values()`` take one snapshot."""

    def __init__(self, manager: S3VaultFuseManager) -> None:
        self._manager = manager

    def _snapshot(self) -> dict[str, Mapping[str, Any]]:
        infos = self._manager._call(lambda c: c.status())
        return {i["target"]: process_info(i) for i in infos if _in_memory(i)}

    def __getitem__(self, target_id: str) -> Mapping[str, Any]:
        if not isinstance(target_id, str):
            raise KeyError(target_id)
        try:
            info = self._manager._call(lambda c: c.status(target_id))
        except (BadRequest, ValueError):
            raise KeyError(target_id) from None
        if not _in_memory(info):
            raise KeyError(target_id)
        return process_info(info)

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot())

    def __len__(self) -> int:
        return len(self._snapshot())

    def keys(self) -> KeysView[str]:
        """The target IDs, from one snapshot."""
        return self._snapshot().keys()

    def items(self) -> ItemsView[str, Mapping[str, Any]]:
        """The (target ID, process info) pairs, from one snapshot."""
        return self._snapshot().items()

    def values(self) -> ValuesView[Mapping[str, Any]]:
        """The process-info dictionaries, from one snapshot."""
        return self._snapshot().values()

    def __repr__(self) -> str:
        return f"ProcessesView({dict(self._snapshot())!r})"


class S3VaultFuseManager:
    """The original manager's API over the daemon of ``pid_dir``'s run directory.

    ``pid_dir`` is ``<run-dir>/s3`` (default ``/run/dms/s3``). ``binary`` is the helper
    program (default :attr:`S3VAULTFUSE_BIN`). ``dms_bin`` is the ``dms`` binary used to
    start a daemon when none answers (default ``$DMS_BIN``, else ``dms`` on ``PATH``).
    The constructor applies the startup rule (adopt live helpers proven ours, delete the
    PID files of dead ones), as the original's did.
    """

    #: The helper program, as in the original.
    S3VAULTFUSE_BIN = "/usr/bin/s3vaultfuse.py"
    #: The default PID directory, as in the original.
    PID_DIR = "/run/dms/s3"

    def __init__(
        self,
        pid_dir: str | None = None,
        binary: str | None = None,
        *,
        dms_bin: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ready_timeout: float = 30.0,
        kill_grace: float = 10.0,
        start_daemon: bool = True,
    ) -> None:
        self.pid_dir = os.path.abspath(pid_dir or self.PID_DIR)
        if os.path.basename(self.pid_dir) != "s3":
            raise ValueError(
                f"pid_dir {self.pid_dir!r} must be <run-dir>/s3 (dms keeps its PID files "
                "in the s3/ directory of its run directory); pass e.g. '/run/dms/s3'"
            )
        self.run_dir = os.path.dirname(self.pid_dir)
        self.binary = binary or self.S3VAULTFUSE_BIN
        self.ready_timeout = ready_timeout
        self.kill_grace = kill_grace
        self.client = Client(self.run_dir, timeout=timeout)
        self._dms_bin = dms_bin
        self._start_daemon = start_daemon
        self._lock = threading.Lock()
        self._all_pids: set[int] = set()
        self._env_keys: dict[str, list[str]] = {}
        #: The ``dms serve`` this manager started, if it started one (never stopped by it).
        self.daemon_process: subprocess.Popen[bytes] | None = None
        self._processes = ProcessesView(self)
        self._ensure_daemon()
        self._load_existing_pids()
        logger.info("S3VaultFuseManager initialized with PID directory: %s", self.pid_dir)

    # The daemon.

    def _find_dms(self) -> str:
        candidate = self._dms_bin or os.environ.get("DMS_BIN") or shutil.which("dms")
        if not candidate:
            raise DaemonUnavailable(
                self.client.socket_path,
                self.run_dir,
                "and no dms binary to start one: pass dms_bin=, set $DMS_BIN, or put dms "
                "on PATH (cargo install --path crates/dms-cli)",
            )
        return candidate

    def _ensure_daemon(self) -> None:
        """Starts ``dms serve --run-dir`` (detached) unless a daemon answers."""
        try:
            self.client.health()
            return
        except DaemonUnavailable:
            if not self._start_daemon:
                raise
        dms = self._find_dms()
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        log_path = os.path.join(self.run_dir, "dms-serve.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [dms, "--run-dir", self.run_dir, "serve"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        self.daemon_process = proc
        logger.warning(
            "no dms serve answered on %s: started `%s --run-dir %s serve` (PID %d, "
            "detached, log %s); it keeps running after this process",
            self.client.socket_path,
            dms,
            self.run_dir,
            proc.pid,
            log_path,
        )
        self._wait_for_daemon(proc, log_path)

    def _wait_for_daemon(self, proc: subprocess.Popen[bytes], log_path: str) -> None:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        last: DaemonUnavailable | None = None
        while time.monotonic() < deadline:
            try:
                self.client.health()
                return
            except DaemonUnavailable as e:
                last = e
            # Exited: another daemon may have won the race for the run dir; keep asking.
            proc.poll()
            time.sleep(0.02)
        tail = _tail(log_path)
        raise DaemonUnavailable(
            self.client.socket_path,
            self.run_dir,
            f"the dms serve started here (PID {proc.pid}, exit status {proc.poll()}) did "
            f"not answer within {DAEMON_START_TIMEOUT:g} s ({last}); its log {log_path} "
            f"ends: {tail!r}",
        )

    def _call(self, fn: Callable[[Client], _T]) -> _T:
        """``fn(client)``; when the daemon is gone, starts one and calls once more."""
        try:
            return fn(self.client)
        except DaemonUnavailable:
            if not self._start_daemon:
                raise
            self._ensure_daemon()
            return fn(self.client)

    # The original's methods.

    def _get_pid_file_path(self, target_id: str) -> str:
        """``<pid_dir>/<target_id>.pid``."""
        return os.path.join(self.pid_dir, f"{target_id}.pid")

    def _write_pid_file(self, target_id: str, pid: int) -> bool:
        """Writes ``pid`` to the target's PID file by hand (atomically); the daemon
        picks it up when the process it names is proven ours. True on success."""
        path = self._get_pid_file_path(target_id)
        tmp = os.path.join(self.pid_dir, f".{target_id}.pid.{os.getpid()}-py.tmp")
        try:
            os.makedirs(self.pid_dir, mode=0o755, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(f"{int(pid)}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            logger.info("PID file written: %s (PID: %d)", path, pid)
            return True
        except (OSError, ValueError) as e:
            logger.error("Failed to write PID file %s: %s", path, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False

    def _read_pid_file(self, target_id: str) -> int | None:
        """The PID in the target's PID file, or None (missing or not a number)."""
        path = self._get_pid_file_path(target_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                return int(f.read(64).strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("Failed to read PID file %s: %s", path, e)
            return None

    def _delete_pid_file(self, target_id: str) -> bool:
        """Deletes the target's PID file (the daemon then stops tracking its helper,
        without signalling it). True unless the deletion failed."""
        path = self._get_pid_file_path(target_id)
        try:
            os.unlink(path)
            logger.info("PID file deleted: %s", path)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.error("Failed to delete PID file %s: %s", path, e)
            return False
        return True

    def _load_existing_pids(self) -> None:
        """The startup rule: adopt the live helpers proven ours, delete the PID files of
        dead, foreign and unreadable entries (``POST /v1/cleanup``)."""
        report = self._call(lambda c: c.cleanup())
        infos = self._call(lambda c: c.status())
        loaded = [i for i in infos if _in_memory(i) and i["running"]]
        self._all_pids.update(i["pid"] for i in loaded if i["pid"] is not None)
        logger.info(
            "PID file loading complete: loaded=%d, cleaned=%d",
            len(loaded),
            len(report["removed"]),
        )

    def spawn_s3vaultfuse(self, target_id: str, mount_path: str, env: dict[str, str]) -> bool:
        """Starts the helper of ``target_id`` (``binary``, no arguments, ``env`` added to
        its environment, ``vault_data_directory`` set to ``mount_path`` unless ``env``
        has it) and returns True once ``mount_path`` is mounted; True at once when the
        target's helper already runs; False (and an error record) when it fails."""
        with self._lock:
            try:
                if self._call(lambda c: c.is_running(target_id)):
                    logger.info("s3vaultfuse already running for target %s", target_id)
                    return True
                helper_env = dict(env)
                helper_env.setdefault("vault_data_directory", mount_path)
                mount = os.path.abspath(mount_path)
                info = self._call(
                    lambda c: c.spawn(
                        target_id,
                        [self.binary],
                        env=helper_env,
                        mount=mount,
                        ready_timeout=self.ready_timeout,
                    )
                )
            except Conflict as e:
                # Already running: started by someone else in between (or by this call,
                # answered by a daemon that restarted and adopted it): it runs, as asked.
                if self.is_running(target_id):
                    logger.info("s3vaultfuse already running for target %s", target_id)
                    return True
                logger.error("Failed to spawn s3vaultfuse for target %s: %s", target_id, e)
                return False
            except DmsError as e:
                logger.error("Failed to spawn s3vaultfuse for target %s: %s", target_id, e)
                return False
            if info["pid"] is not None:
                self._all_pids.add(info["pid"])
            self._env_keys[target_id] = sorted(helper_env)
            logger.info(
                "s3vaultfuse spawned for target %s: PID %s, mount %s, PID file %s",
                target_id,
                info["pid"],
                mount,
                info["pid_file"],
            )
            return True

    def kill_s3vaultfuse(self, target_id: str, force: bool = False) -> bool:
        """Stops the helper of ``target_id`` (unmount, SIGTERM, SIGKILL after the grace;
        ``force``: no grace) and removes its PID file. True when no helper of the target
        runs any more (as the original: also when none ran); False on failure."""
        grace = 0.0 if force else self.kill_grace
        with self._lock:
            try:
                report = self._call(lambda c: c.kill(target_id, grace=grace))
            except (DmsError, ValueError, TypeError) as e:
                logger.error("Failed to kill s3vaultfuse for target %s: %s", target_id, e)
                return False
        self._env_keys.pop(target_id, None)
        if report["was_running"]:
            logger.info(
                "s3vaultfuse process killed for target %s (PID %s, %s)",
                target_id,
                report["pid"],
                report["signal"],
            )
        else:
            logger.info("No running s3vaultfuse process for target %s", target_id)
        return True

    def is_running(self, target_id: str) -> bool:
        """Whether the helper of ``target_id`` runs and is proven ours (memory, then
        disk: a PID file written by hand whose process is ours counts)."""
        try:
            return self._call(lambda c: c.is_running(target_id))
        except (BadRequest, ValueError, TypeError):
            return False

    def get_process_info(self, target_id: str) -> dict[str, Any] | None:
        """The process-info dictionary of ``target_id`` (keys ``pid``, ``target_id``,
        ``mount_path``, ``start_time``, ``status``, ``alive``, ``pid_file``,
        ``pid_file_exists``, ``cpu_percent``, ``memory_mb``, ``num_threads``,
        ``uptime_seconds``, ...), or None when dms records no PID for it."""
        try:
            info = self._call(lambda c: c.status(target_id))
        except (BadRequest, ValueError, TypeError):
            return None
        if info.get("pid") is None:
            return None
        out = process_info(info)
        out["env_keys"] = list(self._env_keys.get(target_id, []))
        return out

    def list_all_processes(self) -> list[dict[str, Any]]:
        """The process-info dictionaries of the helpers in the daemon's memory."""
        infos = self._call(lambda c: c.status())
        out = []
        for info in infos:
            if _in_memory(info):
                d = process_info(info)
                d["env_keys"] = list(self._env_keys.get(info["target"], []))
                out.append(d)
        return out

    def get_stats(self) -> dict[str, Any]:
        """``total_tracked`` (in the daemon's memory), ``alive``, ``dead``,
        ``pid_files_on_disk``, ``pid_directory``, ``all_pids_ever_spawned`` (PIDs this
        object has seen) and ``processes`` (a short dictionary per tracked helper)."""
        infos = self._call(lambda c: c.status())
        tracked = [i for i in infos if _in_memory(i)]
        alive = sum(1 for i in tracked if i["running"])
        self._all_pids.update(i["pid"] for i in tracked if i["pid"] is not None)
        try:
            on_disk = sum(1 for n in os.listdir(self.pid_dir) if n.endswith(".pid"))
        except OSError:
            on_disk = self._call(lambda c: c.stats())["pid_files_on_disk"]
        return {
            "total_tracked": len(tracked),
            "alive": alive,
            "dead": len(tracked) - alive,
            "all_pids_ever_spawned": len(self._all_pids),
            "pid_files_on_disk": on_disk,
            "pid_directory": self.pid_dir,
            "processes": [
                {
                    "target_id": i["target"],
                    "pid": i["pid"],
                    "alive": i["running"],
                    "uptime_seconds": i.get("uptime_secs") or 0,
                    "mount_path": i.get("mount"),
                    "pid_file": i["pid_file"],
                    "pid_file_exists": i["pid_file_exists"],
                }
                for i in tracked
            ],
        }

    def cleanup_dead_processes(self) -> int:
        """Removes the entries of dead (and foreign, unreadable) helpers, memory and
        disk; the number removed."""
        report = self._call(lambda c: c.cleanup())
        for r in report["removed"]:
            logger.info("Cleaned up %s entry for target %s", r["reason"], r["target"])
        return len(report["removed"])

    def cleanup_all(self, force: bool = False) -> None:
        """Stops every helper (all at once, one shared grace; ``force``: none) and
        removes their PID files."""
        grace = 0.0 if force else self.kill_grace
        try:
            report = self._call(lambda c: c.cleanup(all=True, grace=grace))
        except ApiError as e:
            logger.error("Error cleaning up all s3vaultfuse processes: %s", e)
            return
        self._env_keys.clear()
        logger.info(
            "All s3vaultfuse processes cleaned up: stopped %d, removed %d",
            len(report["stopped"]),
            len(report["removed"]),
        )

    @property
    def processes(self) -> ProcessesView:
        """The helpers in the daemon's memory: a read-only mapping of target ID to
        process-info dictionary."""
        return self._processes


def _tail(path: str, size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


__all__ = ["DAEMON_START_TIMEOUT", "ProcessesView", "S3VaultFuseManager", "process_info"]
