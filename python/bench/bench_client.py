"""Figures of the Python client with many helpers tracked (a measurement, not a test).

    python3 python/bench/bench_client.py --dms target/release/dms --helpers 1000

Starts a ``dms serve`` in a temporary run dir, spawns ``--helpers`` helpers (``sleep``),
and measures, on a warm connection:

- ``is_running`` through ``Client`` and through the compat ``S3VaultFuseManager``
  (median and p99 per call);
- the original manager's ``is_running`` (psutil lookup of the PID in its memory), written
  as the original has it, when ``psutil`` is importable;
- ``get_stats()`` of the compat class, and of the original's (psutil, per process);
- ``GET /v1/health`` (the round trip with the least work on the daemon's side).

Then it stops every helper and the daemon. Needs nothing but the standard library
(and psutil for the comparison).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dms_client import Client, DaemonUnavailable
from dms_client.compat import S3VaultFuseManager


def measure(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """Median and p99 of ``calls`` calls of ``fn``, in microseconds (after a warm-up)."""
    for _ in range(min(50, calls)):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99) - 1] * 1e6


class OriginalIsRunning:
    """The original manager's lookups, as it wrote them: a dict of PIDs in memory,
    checked with psutil under a lock (``_is_process_alive``: ``is_running()`` and not a
    zombie), and its ``get_stats`` (psutil ``cpu_percent``, ``memory_info``,
    ``num_threads`` per process)."""

    def __init__(self, psutil: Any, pids: dict[str, int]) -> None:
        self.psutil = psutil
        self.processes = {t: {"pid": p, "start_time": time.time()} for t, p in pids.items()}
        self._lock = threading.Lock()

    def _is_process_alive(self, pid: int) -> bool:
        try:
            process = self.psutil.Process(pid)
            return bool(process.is_running() and process.status() != self.psutil.STATUS_ZOMBIE)
        except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
            return False

    def is_running(self, target_id: str) -> bool:
        with self._lock:
            if target_id in self.processes:
                pid = self.processes[target_id]["pid"]
                if self._is_process_alive(int(pid)):
                    return True
            return False

    def get_stats(self) -> dict[str, Any]:
        with self._lock:
            alive = sum(1 for t in self.processes if self._is_process_alive(self._pid(t)))
            out: list[dict[str, Any]] = []
            for target_id in self.processes:
                pid = self._pid(target_id)
                info: dict[str, Any] = {"pid": pid, "alive": self._is_process_alive(pid)}
                try:
                    p = self.psutil.Process(pid)
                    info["cpu_percent"] = p.cpu_percent()
                    info["memory_mb"] = p.memory_info().rss / 1024 / 1024
                    info["num_threads"] = p.num_threads()
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    pass
                out.append(info)
            return {"total_tracked": len(self.processes), "alive": alive, "processes": out}

    def _pid(self, target_id: str) -> int:
        return int(self.processes[target_id]["pid"])


def main() -> int:
    """Runs the measurement and prints the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dms", default=os.environ.get("DMS_BIN", "target/release/dms"))
    ap.add_argument("--helpers", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--stats-calls", type=int, default=50)
    args = ap.parse_args()

    top = tempfile.mkdtemp(prefix="dms-bench-")
    run_dir = os.path.join(top, "run")
    os.mkdir(run_dir, 0o700)
    log = open(os.path.join(top, "serve.log"), "wb")  # noqa: SIM115 - closed at the end
    daemon = subprocess.Popen(
        [os.path.abspath(args.dms), "--run-dir", run_dir, "serve"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    client = Client(run_dir, timeout=60)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.health()
                break
            except DaemonUnavailable:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        t0 = time.perf_counter()
        targets = [f"h-{n:04d}" for n in range(args.helpers)]
        with ThreadPoolExecutor(8) as pool:
            infos = list(pool.map(lambda t: client.spawn(t, ["sleep", "3600"]), targets))
        spawn_s = time.perf_counter() - t0
        pids = {i["target"]: int(i["pid"] or 0) for i in infos}
        assert client.stats()["running"] == args.helpers
        probe = targets[len(targets) // 2]

        print(f"helpers: {args.helpers} (spawned in {spawn_s:.1f} s through the client)")
        print(f"dms: {args.dms}; Python {sys.version.split()[0]}; {os.cpu_count()} cores")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        med, p99 = measure(lambda: client.health(), args.calls)
        print(f"GET /v1/health              median {med:7.1f} us  p99 {p99:7.1f} us")
        med, p99 = measure(lambda: client.is_running(probe), args.calls)
        print(f"Client.is_running           median {med:7.1f} us  p99 {p99:7.1f} us")
        manager = S3VaultFuseManager(pid_dir=os.path.join(run_dir, "s3"), dms_bin=args.dms)
        med, p99 = measure(lambda: manager.is_running(probe), args.calls)
        print(f"S3VaultFuseManager.is_running median {med:5.1f} us  p99 {p99:7.1f} us")
        med, p99 = measure(lambda: client.status(), args.stats_calls)
        print(f"GET /v1/targets (all)       median {med / 1000:7.2f} ms  p99 {p99 / 1000:6.2f} ms")
        med, p99 = measure(lambda: client.stats(), args.stats_calls)
        print(f"GET /v1/stats               median {med / 1000:7.2f} ms  p99 {p99 / 1000:6.2f} ms")
        body = json.dumps(client.status()).encode()
        med, p99 = measure(lambda: json.loads(body), args.stats_calls)
        print(f"  of which json.loads of {len(body)} bytes: median {med / 1000:.2f} ms")
        med, p99 = measure(lambda: manager.get_stats(), args.stats_calls)
        print(
            f"S3VaultFuseManager.get_stats median {med / 1000:6.2f} ms  p99 {p99 / 1000:6.2f} ms"
        )
        try:
            psutil = importlib.import_module("psutil")
        except ImportError:
            print("original (psutil): skipped, psutil is not installed")
        else:
            original = OriginalIsRunning(psutil, pids)
            med, p99 = measure(lambda: original.is_running(probe), args.calls)
            print(f"original is_running (psutil) median {med:5.1f} us  p99 {p99:7.1f} us")
            med, p99 = measure(lambda: original.get_stats(), args.stats_calls)
            print(
                f"original get_stats (psutil)  median {med / 1000:6.2f} ms  "
                f"p99 {p99 / 1000:6.2f} ms"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if daemon.poll() is None:
            report = client.cleanup(all=True, grace=2)
            print(f"stopped {len(report['stopped'])} helpers")
        client.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        log.close()
        shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
