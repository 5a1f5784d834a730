"""Every method of ``Client`` against a real ``dms serve``."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import Daemon, is_dead, wait_dead, wait_for, zombie_pid

from dms_client import ApiError, Client, Conflict, NotFound
from dms_client.types import Event


def test_health_names_the_daemon_and_its_run_dir(client: Client, daemon: Daemon) -> None:
    h = client.health()
    assert h["status"] == "ok"
    assert h["pid"] == daemon.pid
    assert h["run_dir"] == str(daemon.run_dir)
    assert h["backend"] in ("pidfile", "sqlite")
    assert h["uptime_secs"] >= 0


def test_spawn_status_is_running_stats_kill(client: Client, daemon: Daemon) -> None:
    info = client.spawn("t1", ["sleep", "300"])
    assert info["state"] == "running" and info["running"] is True
    pid = info["pid"]
    assert isinstance(pid, int)
    assert info["pid_file"] == str(daemon.run_dir / "s3" / "t1.pid")
    assert Path(info["pid_file"]).read_text().strip() == str(pid)
    assert info["cmdline"] == ["sleep", "300"]
    assert info["supervision"] is None

    assert client.status("t1")["pid"] == pid
    assert client.is_running("t1") is True
    assert client.is_running("nothing-here") is False
    absent = client.status("nothing-here")
    assert absent["state"] == "absent" and absent["pid"] is None

    client.spawn("t0", ["sleep", "300"])
    assert [i["target"] for i in client.status()] == ["t0", "t1"]

    stats = client.stats()
    assert stats["total_tracked"] == 2
    assert stats["running"] == 2
    assert stats["pid_files_on_disk"] == 2
    for key in ("supervised", "backoff", "failed", "restarts_total"):
        assert key in stats

    report = client.kill("t1", grace=2)
    assert report["was_running"] is True and report["stopped"] is True
    assert report["pid"] == pid
    assert report["signal"] == "SIGTERM"
    wait_dead(pid)
    assert not os.path.exists(info["pid_file"])
    assert client.is_running("t1") is False
    again = client.kill("t1", grace=1)
    assert again["was_running"] is False


def test_spawn_env_env_files_and_log_reach_the_helper_and_no_value_comes_back(
    client: Client, run_dir: Path
) -> None:
    out = run_dir.parent / "env.out"
    env_file = run_dir.parent / "t.env"
    env_file.write_text("FROM_FILE=file-value-123\n")
    log = run_dir.parent / "helper.log"
    script = f'echo "$SECRET_X $FROM_FILE" > {out}; echo to-the-log; exec sleep 300'
    info = client.spawn(
        "envy",
        ["sh", "-c", script],
        env={"SECRET_X": "s3cr3t-value-987"},
        env_files=[env_file],
        log=log,
    )
    wait_for(
        "the helper to write its environment", lambda: out.exists() and out.stat().st_size > 0
    )
    assert out.read_text().split() == ["s3cr3t-value-987", "file-value-123"]
    wait_for("the helper's log line", lambda: b"to-the-log" in log.read_bytes())
    everything = repr(info) + repr(client.status()) + repr(client.stats())
    assert "s3cr3t-value-987" not in everything
    assert "file-value-123" not in everything


def test_replace_stops_the_old_helper_first(client: Client) -> None:
    old = client.spawn("r", ["sleep", "300"])["pid"]
    with pytest.raises(Conflict):
        client.spawn("r", ["sleep", "301"])
    new = client.spawn("r", ["sleep", "301"], replace=True, grace=1)
    assert new["pid"] != old and new["running"]
    assert old is not None
    wait_dead(old)


def test_restart_policy_never_is_accepted(client: Client) -> None:
    info = client.spawn("p", ["sleep", "300"], restart="never")
    assert info["running"]
    info2 = client.spawn("q", ["sleep", "300"], restart={"policy": "never"})
    assert info2["running"]


def test_adopt_records_a_process_started_elsewhere(client: Client) -> None:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        info = client.adopt("adopted", proc.pid)
        assert info["pid"] == proc.pid and info["running"]
        assert client.is_running("adopted")
        report = client.kill("adopted", grace=2)
        assert report["was_running"]
        assert proc.wait(timeout=10) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_forget_stops_the_helper(client: Client) -> None:
    pid = client.spawn("gone", ["sleep", "300"])["pid"]
    assert pid is not None
    report = client.forget("gone", grace=1)
    assert report["was_running"] and report["pid"] == pid
    wait_dead(pid)
    assert client.status("gone")["state"] == "absent"


def test_cleanup_removes_stale_entries_and_all_stops_every_helper(
    client: Client, run_dir: Path
) -> None:
    dead = zombie_pid()
    (run_dir / "s3" / "stale.pid").write_text(f"{dead}\n")
    report = client.cleanup()
    assert {"target": "stale", "reason": "stale"} in report["removed"]
    assert report["stopped"] == []
    assert not (run_dir / "s3" / "stale.pid").exists()

    pids = [client.spawn(f"all-{n}", ["sleep", "300"])["pid"] for n in range(3)]
    report = client.cleanup(all=True, grace=1)
    assert sorted(report["stopped"]) == ["all-0", "all-1", "all-2"]
    for pid in pids:
        assert pid is not None
        wait_dead(pid)
    assert client.stats()["total_tracked"] == 0
    assert client.cleanup(mounts=True)["mounts"] == []


def test_restart_stops_and_starts_from_the_recorded_spec(client: Client) -> None:
    old = client.spawn("rs", ["sleep", "300"])["pid"]
    try:
        info = client.restart("rs", grace=1)
    except NotFound:
        pytest.skip("POST /v1/targets/{t}/restart: the restart endpoint not in this build")
    assert info["running"] and info["pid"] != old
    assert info["cmdline"] == ["sleep", "300"]
    assert old is not None
    wait_dead(old)


def test_logs_returns_the_last_lines(client: Client) -> None:
    client.spawn("logger", ["sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; done; sleep 300"])
    try:
        client.logs("logger", lines=2)
    except NotFound:
        pytest.skip("GET /v1/targets/{t}/logs: the logs endpoint not in this build")

    def last_two() -> bool:
        return client.logs("logger", lines=2).split() == ["line-4", "line-5"]

    wait_for("the last two log lines", last_two)


def test_metrics_when_the_daemon_has_them(client: Client) -> None:
    client.spawn("m", ["sleep", "300"])
    try:
        text = client.metrics()
    except NotFound:
        pytest.skip("GET /metrics: the metrics endpoint not in this build")
    assert "# TYPE dms_helpers" in text or "dms_helpers" in text


def _collect(out: list[Event], stream: Iterable[Event]) -> None:
    out.extend(stream)


def test_reload_starts_a_declared_target(
    dms_bin: str, run_dir: Path, daemons: list[Daemon]
) -> None:
    help_text = subprocess.run([dms_bin, "serve", "--help"], capture_output=True, text=True)
    if "--targets" not in help_text.stdout:
        pytest.skip("dms serve --targets (declared targets, reload) not in this build")
    targets = run_dir.parent / "targets"
    targets.mkdir()
    d = Daemon(dms_bin, run_dir).start("--targets", str(targets))
    daemons.append(d)
    c = d.client()
    (targets / "decl.toml").write_text('argv = ["sleep", "300"]\n')
    report = c.reload()
    assert report["started"] == ["decl"], report
    assert report["errors"] == []
    assert c.is_running("decl")
    (targets / "bad.toml").write_text("argv = 5\n")
    report = c.reload()
    assert report["unchanged"] == 1
    assert [e["file"] for e in report["errors"]] == [str(targets / "bad.toml")]


def test_a_supervised_helper_is_restarted_after_it_fails(client: Client) -> None:
    seen: list[Event] = []
    with client.events() as stream:
        reader = threading.Thread(target=_collect, args=(seen, stream), daemon=True)
        reader.start()
        try:
            info = client.spawn(
                "flaky",
                ["sh", "-c", "sleep 0.2; exit 1"],
                restart={"policy": "on-failure", "initial_delay_secs": 0.1},
            )
        except ApiError as e:
            if 'only "never" is supported' in e.message:
                pytest.skip("restart policies not in this build")
            raise
        sup = info["supervision"]
        assert sup is not None and sup["policy"] == "on-failure"

        def restarted() -> bool:
            kinds = [e["kind"] for e in seen if e["target"] == "flaky"]
            return "restart_scheduled" in kinds and kinds.count("spawned") >= 2

        wait_for("a restart of target flaky", restarted, timeout=20)
    after = client.status("flaky")["supervision"]
    assert after is not None and after["restarts"] >= 1
    assert client.stats()["supervised"] == 1
    client.forget("flaky", grace=1)


def test_events_see_a_helpers_exit(client: Client) -> None:
    seen: list[Event] = []
    with client.events() as stream:
        reader = threading.Thread(target=_collect, args=(seen, stream), daemon=True)
        reader.start()
        info = client.spawn("short", ["sh", "-c", "sleep 0.3; exit 3"])
        pid = info["pid"]

        def exited() -> bool:
            return any(e["kind"] == "exited" and e["target"] == "short" for e in seen)

        wait_for("an exited event of target short", exited, timeout=15)
    reader.join(timeout=5)
    assert not reader.is_alive(), "the iterator did not end on close"
    ex = next(e for e in seen if e["kind"] == "exited")
    assert ex["pid"] == pid
    assert ex.get("code") == 3 and ex.get("signal") is None
    kinds = [e["kind"] for e in seen if e["target"] == "short"]
    assert kinds.index("spawned") < kinds.index("exited")
    assert stream.last_seq is not None and stream.last_seq >= ex["seq"]
    assert all(e["kind"] != "heartbeat" for e in seen)


def test_events_since_replays_and_close_from_another_thread_ends_cleanly(
    client: Client,
) -> None:
    client.spawn("e1", ["sleep", "300"])
    client.kill("e1", grace=1)
    replay = client.events(since=0)
    first = next(replay)
    assert first["seq"] == 1 and first["kind"] == "spawned" and first["target"] == "e1"
    second = next(replay)
    assert second["kind"] == "killed"
    replay.close()
    with pytest.raises(StopIteration):
        next(replay)

    stream = client.events(since=second["seq"])
    ended = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in stream:
                pass
        except BaseException as e:  # the test asserts there is none
            errors.append(e)
        ended.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(0.05)  # let the reader block in its read; the assertion below waits
    stream.close()
    assert ended.wait(5), "the iterator did not end after close()"
    assert errors == []
    assert stream.closed


def test_events_end_when_the_daemon_stops(daemon: Daemon) -> None:
    stream = daemon.client(timeout=5).events()
    done = threading.Event()

    def consume() -> None:
        for _ in stream:
            pass
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert daemon.stop() == 0
    assert done.wait(10), "the event iterator did not end when the daemon stopped"


def test_the_helper_survives_the_client(client: Client, daemon: Daemon) -> None:
    pid = client.spawn("keep", ["sleep", "300"])["pid"]
    assert pid is not None
    client.close()
    del client
    import gc

    gc.collect()
    assert not is_dead(pid)
    assert daemon.client().is_running("keep")
