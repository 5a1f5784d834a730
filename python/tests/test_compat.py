"""Every method of ``dms_client.compat.S3VaultFuseManager`` against a real daemon."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, is_dead, is_mount_point, wait_dead, zombie_pid

from dms_client import Client, DaemonUnavailable
from dms_client.compat import S3VaultFuseManager


@pytest.fixture
def manager(daemon: Daemon, run_dir: Path) -> Iterator[S3VaultFuseManager]:
    """A manager over the running ``daemon``."""
    m = S3VaultFuseManager(pid_dir=str(run_dir / "s3"), dms_bin=daemon.dms_bin, kill_grace=2)
    assert m.daemon_process is None, "a daemon was running: the manager must not start one"
    yield m
    m.client.close()


def test_constructor_starts_a_daemon_where_none_serves_and_says_so(
    dms_bin: str, run_dir: Path, daemons: list[Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dms_client.compat")
    m = S3VaultFuseManager(pid_dir=str(run_dir / "s3"), dms_bin=dms_bin)
    assert m.daemon_process is not None
    started = Daemon(dms_bin, run_dir)
    started.proc = m.daemon_process
    daemons.append(started)  # stopped by the fixture: the test started it
    assert m.client.health()["pid"] == m.daemon_process.pid
    records = [r for r in caplog.records if "no dms serve answered" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert f"--run-dir {run_dir} serve" in records[0].getMessage()
    # A second manager finds it and starts nothing.
    again = S3VaultFuseManager(pid_dir=str(run_dir / "s3"), dms_bin=dms_bin)
    assert again.daemon_process is None


def test_dms_bin_comes_from_the_environment(
    dms_bin: str,
    run_dir: Path,
    daemons: list[Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DMS_BIN", dms_bin)
    m = S3VaultFuseManager(pid_dir=str(run_dir / "s3"))
    assert m.daemon_process is not None
    d = Daemon(dms_bin, run_dir)
    d.proc = m.daemon_process
    daemons.append(d)
    assert m.client.health()["run_dir"] == str(run_dir)


def test_pid_dir_must_be_the_s3_directory_of_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be <run-dir>/s3"):
        S3VaultFuseManager(pid_dir=str(tmp_path / "pids"), start_daemon=False)


def test_constructor_and_load_existing_pids_apply_the_startup_rule(
    daemon: Daemon, run_dir: Path, client: Client
) -> None:
    dead = zombie_pid()
    s3 = run_dir / "s3"
    (s3 / "dead.pid").write_text(f"{dead}\n")
    live = subprocess.Popen(["sleep", "300"])
    daemon.seen_pids.add(live.pid)
    (s3 / "live.pid").write_text(f"{live.pid}")  # the old deployment's format: no newline
    m = S3VaultFuseManager(pid_dir=str(s3), dms_bin=daemon.dms_bin)
    assert not (s3 / "dead.pid").exists()
    assert (s3 / "live.pid").exists()
    assert m.is_running("live")
    assert "live" in m.processes
    assert not is_dead(live.pid)

    (s3 / "dead2.pid").write_text(f"{dead}\n")
    m._load_existing_pids()
    assert not (s3 / "dead2.pid").exists()
    assert m.kill_s3vaultfuse("live") is True
    assert live.wait(timeout=10) != 0


def test_is_running_get_process_info_list_stats_and_processes(
    manager: S3VaultFuseManager, client: Client, run_dir: Path
) -> None:
    info = client.spawn("t1", ["sleep", "300"])
    pid = info["pid"]
    assert manager.is_running("t1") is True
    assert manager.is_running("t2") is False
    assert manager.is_running("not/a/target") is False

    p = manager.get_process_info("t1")
    assert p is not None
    assert p["pid"] == pid and p["target_id"] == "t1" and p["alive"] is True
    assert p["status"] == "running"
    assert p["pid_file"] == str(run_dir / "s3" / "t1.pid") and p["pid_file_exists"] is True
    assert isinstance(p["start_time"], dt.datetime) and p["start_time"].tzinfo is None
    age = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - p["start_time"]
    assert dt.timedelta(seconds=-2) < age < dt.timedelta(minutes=5)
    assert p["memory_mb"] > 0 and p["num_threads"] >= 1
    assert p["uptime_seconds"] >= 0 and p["cpu_percent"] is not None
    assert p["mount_path"] is None
    assert manager.get_process_info("t2") is None
    assert manager.get_process_info("bad/id") is None

    listed = manager.list_all_processes()
    assert [x["target_id"] for x in listed] == ["t1"]

    stats = manager.get_stats()
    assert stats["total_tracked"] == 1 and stats["alive"] == 1 and stats["dead"] == 0
    assert stats["pid_files_on_disk"] == 1
    assert stats["pid_directory"] == str(run_dir / "s3")
    assert stats["processes"][0]["target_id"] == "t1"
    assert stats["processes"][0]["pid"] == pid
    assert stats["all_pids_ever_spawned"] >= 1

    procs = manager.processes
    assert len(procs) == 1 and list(procs) == ["t1"] and "t1" in procs
    assert procs["t1"]["pid"] == pid
    assert dict(procs.items())["t1"]["alive"] is True
    assert [v["pid"] for v in procs.values()] == [pid]
    assert procs.get("t2") is None
    with pytest.raises(TypeError):
        procs["t3"] = {}  # type: ignore[index]
    with pytest.raises(AttributeError):
        manager.processes = {}  # type: ignore[misc,assignment]
    # Served from the daemon's memory: it follows the daemon, not a copy.
    client.kill("t1", grace=2)
    assert "t1" not in procs and len(procs) == 0


def test_kill_cleanup_dead_and_cleanup_all(
    manager: S3VaultFuseManager, client: Client, run_dir: Path
) -> None:
    a = client.spawn("a", ["sleep", "300"])["pid"]
    b = client.spawn("b", ["sh", "-c", "trap '' TERM; sleep 300"])["pid"]
    c = client.spawn("c", ["sleep", "300"])["pid"]
    assert a is not None and b is not None and c is not None
    assert manager.kill_s3vaultfuse("a") is True
    wait_dead(a)
    assert not (run_dir / "s3" / "a.pid").exists()
    assert manager.kill_s3vaultfuse("a") is True  # nothing ran: True, as the original
    assert manager.kill_s3vaultfuse("b", force=True) is True  # ignores SIGTERM
    wait_dead(b)
    assert manager.kill_s3vaultfuse("bad/id") is False

    dead = zombie_pid()
    (run_dir / "s3" / "stale.pid").write_text(f"{dead}\n")
    assert manager.cleanup_dead_processes() == 1
    assert manager.cleanup_dead_processes() == 0

    manager.cleanup_all()
    wait_dead(c)
    assert manager.get_stats()["total_tracked"] == 0


def test_manual_pid_file_operations(
    manager: S3VaultFuseManager, run_dir: Path, daemon: Daemon
) -> None:
    # A PID of our own (never a number that may name someone else's process).
    helper = subprocess.Popen(["sleep", "300"])
    daemon.seen_pids.add(helper.pid)
    path = manager._get_pid_file_path("target-123")
    assert path == str(run_dir / "s3" / "target-123.pid")
    assert manager._read_pid_file("target-123") is None
    assert manager._write_pid_file("target-123", helper.pid) is True
    assert Path(path).read_text() == f"{helper.pid}\n"
    assert manager._read_pid_file("target-123") == helper.pid
    assert manager.is_running("target-123")
    Path(path).write_text("garbage")
    assert manager._read_pid_file("target-123") is None
    assert manager._delete_pid_file("target-123") is True
    assert not os.path.exists(path)
    assert manager._delete_pid_file("target-123") is True
    assert not [n for n in os.listdir(run_dir / "s3") if n.endswith(".tmp")]
    helper.kill()
    helper.wait()


def test_garbage_collection_stops_nothing(daemon: Daemon, run_dir: Path, client: Client) -> None:
    m = S3VaultFuseManager(pid_dir=str(run_dir / "s3"), dms_bin=daemon.dms_bin)
    pid = client.spawn("kept", ["sleep", "300"])["pid"]
    assert pid is not None and m.is_running("kept")
    del m
    gc.collect()
    assert not is_dead(pid)
    assert client.is_running("kept")


def test_spawn_failure_returns_false_and_logs(
    manager: S3VaultFuseManager, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager.binary = str(run_dir.parent / "no-such-helper")
    assert manager.spawn_s3vaultfuse("f", str(run_dir.parent / "mnt-f"), {}) is False
    assert any(
        "Failed to spawn s3vaultfuse for target f" in r.getMessage() for r in caplog.records
    )
    assert not (run_dir / "s3" / "f.pid").exists()


def test_spawn_s3vaultfuse_with_a_real_mount(
    daemon: Daemon, run_dir: Path, standin: Path, client: Client
) -> None:
    m = S3VaultFuseManager(
        pid_dir=str(run_dir / "s3"), binary=str(standin), dms_bin=daemon.dms_bin, kill_grace=5
    )
    mnt = run_dir.parent / "mnt" / "t1"
    env = {"STANDIN_SOURCE": str(run_dir.parent / "source"), "AWS_SECRET_ACCESS_KEY": "x9y8z7"}
    assert m.spawn_s3vaultfuse("t1", str(mnt), env) is True
    assert is_mount_point(mnt)
    assert (mnt / "in-the-bucket").read_text() == "hello\n"
    info = m.get_process_info("t1")
    assert info is not None and info["alive"] and info["mount_path"] == str(mnt)
    assert info["env_keys"] == sorted([*env, "vault_data_directory"])
    assert client.status("t1")["mount_state"] == "mounted"
    assert "x9y8z7" not in repr(client.status("t1"))
    # Already running: True at once, nothing started.
    assert m.spawn_s3vaultfuse("t1", str(mnt), env) is True
    again = m.get_process_info("t1")
    assert again is not None and again["pid"] == info["pid"]
    pid = info["pid"]
    assert m.kill_s3vaultfuse("t1") is True
    wait_dead(pid)
    assert not is_mount_point(mnt)
    assert m.is_running("t1") is False


def test_a_daemon_gone_mid_life_is_started_again_and_adopts_the_helpers(
    dms_bin: str, run_dir: Path, daemons: list[Daemon], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dms_client.compat")
    m = S3VaultFuseManager(pid_dir=str(run_dir / "s3"), dms_bin=dms_bin)
    assert m.daemon_process is not None
    first = Daemon(dms_bin, run_dir)
    first.proc = m.daemon_process
    daemons.append(first)
    pid = m.client.spawn("t", ["sleep", "300"])["pid"]
    assert pid is not None
    first.seen_pids.add(pid)
    assert first.stop() == 0  # the daemon this test started (through the manager)
    assert not is_dead(pid)

    assert m.is_running("t") is True  # a new daemon, started by this call
    assert m.daemon_process is not None and m.daemon_process is not first.proc
    second = Daemon(dms_bin, run_dir)
    second.proc = m.daemon_process
    daemons.append(second)
    started = [r for r in caplog.records if "no dms serve answered" in r.getMessage()]
    assert len(started) == 2
    assert m.get_process_info("t")["pid"] == pid  # type: ignore[index]


def test_without_start_daemon_no_daemon_is_an_error(run_dir: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="dms serve --run-dir"):
        S3VaultFuseManager(pid_dir=str(run_dir / "s3"), start_daemon=False)
