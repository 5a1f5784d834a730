"""The calls of the design note (pid-file-tracking.md), run as they are written there,
against the compat class with real helpers.

The note's paths and numbers are replaced by this test's own: its run dir for
``/run/dms``, and the PID of a process this test started for ``12345`` (a number typed
into a test may name someone else's process, which a test must never risk signalling).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import Daemon, wait_dead, zombie_pid

from dms_client.compat import S3VaultFuseManager


def test_the_design_notes_calls(
    daemon: Daemon, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_dir = str(run_dir / "s3")

    # "Compare Memory vs Disk"
    manager = S3VaultFuseManager(pid_dir=pid_dir, dms_bin=daemon.dms_bin)
    memory_count = len(manager.processes)
    disk_count = len([f for f in os.listdir(pid_dir) if f.endswith(".pid")])
    print(f"Memory: {memory_count}, Disk: {disk_count}")
    assert capsys.readouterr().out == "Memory: 0, Disk: 0\n"

    # "Recovery": a process started externally, its PID file created by hand.
    external = subprocess.Popen(["sleep", "300"])
    daemon.seen_pids.add(external.pid)
    subprocess.run(["sh", "-c", f"echo {external.pid} > {pid_dir}/target-123.pid"], check=True)
    # "Manager will find it"
    if manager.is_running("target-123"):
        print("Automatically loaded!")
    assert capsys.readouterr().out == "Automatically loaded!\n"

    # "Check Status (Checks Both)"
    assert manager.is_running("target-123") is True

    # "Get Process Info"
    info = manager.get_process_info("target-123")
    assert info is not None
    print(info["pid_file"])  # /run/dms/s3/target-123.pid
    print(info["pid_file_exists"])  # True/False
    assert capsys.readouterr().out == f"{pid_dir}/target-123.pid\nTrue\n"
    assert info["pid"] == external.pid

    # "Statistics"
    stats = manager.get_stats()
    print(stats["total_tracked"])  # In memory
    print(stats["pid_files_on_disk"])  # On disk
    assert capsys.readouterr().out.split() == [str(stats["total_tracked"]), "1"]

    # "Manual PID File Operations"
    other = subprocess.Popen(["sleep", "300"])
    daemon.seen_pids.add(other.pid)
    manager._write_pid_file("target-456", other.pid)
    pid = manager._read_pid_file("target-456")
    assert pid == other.pid
    manager._delete_pid_file("target-456")
    assert not os.path.exists(f"{pid_dir}/target-456.pid")
    other.kill()
    other.wait()

    # "PID File Exists but Process Dead" -> "Or use manager"
    dead = zombie_pid()
    Path(pid_dir, "target-dead.pid").write_text(str(dead))
    m = S3VaultFuseManager(pid_dir=pid_dir, dms_bin=daemon.dms_bin)
    m.cleanup_dead_processes()
    assert not os.path.exists(f"{pid_dir}/target-dead.pid")

    # "Memory and Disk Out of Sync"
    Path(pid_dir, "target-dead.pid").write_text(str(dead))
    manager = S3VaultFuseManager(pid_dir=pid_dir, dms_bin=daemon.dms_bin)
    manager._load_existing_pids()
    manager.cleanup_dead_processes()
    assert not os.path.exists(f"{pid_dir}/target-dead.pid")
    assert manager.is_running("target-123")

    # "Check Both Sources"
    target_id = "target-123"
    is_running = manager.is_running(target_id)
    assert is_running

    # "Use Cleanup": "Regular cleanup", then "Full cleanup on shutdown"
    manager.cleanup_dead_processes()
    manager.cleanup_all()
    assert external.wait(timeout=15) != 0
    assert not os.path.exists(f"{pid_dir}/target-123.pid")
    assert len(manager.processes) == 0
    wait_dead(external.pid)


def test_the_design_notes_spawn_call(daemon: Daemon, run_dir: Path, standin: Path) -> None:
    """``manager.spawn_s3vaultfuse(target_id, path, env)`` with a helper that mounts."""
    manager = S3VaultFuseManager(
        pid_dir=str(run_dir / "s3"), binary=str(standin), dms_bin=daemon.dms_bin
    )
    target_id = "target-prod-001"
    path = str(run_dir.parent / "mnt" / target_id)
    env = {"STANDIN_SOURCE": str(run_dir.parent / "source")}
    # "Good - Manager handles both automatically"
    assert manager.spawn_s3vaultfuse(target_id, path, env)
    pid = manager._read_pid_file(target_id)
    assert pid is not None and manager.processes[target_id]["pid"] == pid
    # "Full cleanup on shutdown"
    manager.cleanup_all()
    wait_dead(pid)
    assert not manager.is_running(target_id)
