"""A client across a restart of its daemon, and many threads on one client."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import Daemon, is_dead, wait_dead

from dms_client import Client, DaemonUnavailable


def test_a_daemon_restart_in_the_middle_of_a_clients_life(
    dms_bin: str, run_dir: Path, daemons: list[Daemon]
) -> None:
    first = Daemon(dms_bin, run_dir).start()
    daemons.append(first)
    c = Client(run_dir, timeout=10)
    pid = c.spawn("survivor", ["sleep", "300"])["pid"]
    assert pid is not None
    assert c.health()["pid"] == first.pid  # the connection is open and warm

    assert first.stop() == 0
    assert not is_dead(pid), "the helper must outlive its daemon"
    with pytest.raises(DaemonUnavailable) as e:
        c.stats()
    assert f"dms serve --run-dir {run_dir}" in str(e.value)

    second = Daemon(dms_bin, run_dir).start()
    daemons.append(second)
    # The same client object: its next call reconnects.
    assert c.health()["pid"] == second.pid
    info = c.status("survivor")
    assert info["pid"] == pid and info["running"]
    assert c.stats()["total_tracked"] == 1
    c.kill("survivor", grace=2)
    wait_dead(pid)


def test_twenty_threads_on_one_client(client: Client) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def work(n: int) -> None:
        target = f"thread-{n}"
        try:
            barrier.wait(timeout=10)
            info = client.spawn(target, ["sleep", "300"])
            for _ in range(10):
                assert client.is_running(target)
                assert client.status(target)["pid"] == info["pid"]
                stats = client.stats()
                assert stats["running"] >= 1
            listed = {i["target"] for i in client.status()}
            assert target in listed
            report = client.kill(target, grace=2)
            assert report["was_running"] and report["pid"] == info["pid"]
            assert not client.is_running(target)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert client.stats()["total_tracked"] == 0
