"""Every error code the API produces, as the client's exceptions, with the daemon's
message; and the client-side failures (no daemon, a daemon that does not answer)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, is_root

import dms_client
from dms_client import (
    ApiError,
    BadRequest,
    CallTimeout,
    Client,
    Conflict,
    DaemonUnavailable,
    Failed,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from dms_client.errors import error_for


def test_400_bad_request_names_what_is_wrong(client: Client) -> None:
    with pytest.raises(BadRequest) as e:
        client.spawn("bad/target", ["sleep", "1"])
    assert e.value.status == 400 and e.value.code == "bad_request"
    assert "invalid target ID" in e.value.message
    with pytest.raises(BadRequest, match="argv"):
        client.spawn("t", [])
    with pytest.raises(BadRequest, match="pid"):
        client.adopt("t", 0)
    with pytest.raises(BadRequest, match="unknown field `bogus`"):
        client.call("POST", "/v1/cleanup", {"bogus": 1})
    with pytest.raises(BadRequest, match="not an absolute path"):
        client.spawn("t", ["sleep", "1"], log="relative.log")


def test_404_405_413_415(client: Client) -> None:
    with pytest.raises(NotFound, match="no endpoint /v1/nowhere") as e:
        client.call("GET", "/v1/nowhere")
    assert e.value.status == 404
    with pytest.raises(MethodNotAllowed, match="does not take PUT") as e2:
        client.call("PUT", "/v1/stats")
    assert e2.value.status == 405
    with pytest.raises(TooLarge, match="1 MiB") as e3:
        client.call("POST", "/v1/cleanup", b" " * (1024 * 1024 + 1))
    assert e3.value.status == 413
    with pytest.raises(UnsupportedMediaType, match="application/json") as e4:
        client.call("POST", "/v1/cleanup", b"all=true", content_type="text/plain")
    assert e4.value.status == 415
    # The connection is usable after each of them.
    assert client.health()["status"] == "ok"


def test_409_conflict_already_running_and_adopt_refused(client: Client) -> None:
    pid = client.spawn("c", ["sleep", "300"])["pid"]
    assert pid is not None
    with pytest.raises(Conflict, match="already has a running helper") as e:
        client.spawn("c", ["sleep", "300"])
    assert e.value.status == 409 and e.value.code == "conflict"
    with pytest.raises(Conflict, match="already the helper of target c"):
        client.adopt("other", pid)


def test_500_failed_names_the_program(client: Client) -> None:
    with pytest.raises(Failed, match="/nonexistent/helper") as e:
        client.spawn("f", ["/nonexistent/helper"])
    assert e.value.status == 500 and e.value.code == "failed"
    assert client.status("f")["state"] == "absent"


NOBODY_SCRIPT = """
import sys
from dms_client import Client, Forbidden
c = Client(sys.argv[1])
assert c.stats()["total_tracked"] >= 0          # GETs are open
try:
    c.kill("kept", grace=1)
except Forbidden as e:
    print("FORBIDDEN", e.status, e.code, e.message)
else:
    print("ALLOWED")
"""


def test_403_forbidden_for_a_nobody_peer(client: Client, daemon: Daemon, run_dir: Path) -> None:
    if not is_root() or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to connect as the user nobody")
    pid = client.spawn("kept", ["sleep", "300"])["pid"]
    # Let nobody reach the socket: the check under test is the daemon's, not the file's.
    for d in (run_dir.parent, run_dir):
        os.chmod(d, 0o755)
    os.chmod(daemon.socket, 0o666)
    pkg = run_dir.parent / "pkg"
    shutil.copytree(Path(dms_client.__file__).parent, pkg / "dms_client")
    for p in [pkg, *pkg.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    # An interpreter nobody may run (the test's own may live under /root).
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    script = f"import sys; sys.path.insert(0, {str(pkg)!r})\n" + NOBODY_SCRIPT
    out = subprocess.run(
        [
            *("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
            *(python, "-I", "-c", script, str(run_dir)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("FORBIDDEN 403 forbidden "), out.stdout
    assert "may not change anything" in out.stdout
    assert client.status("kept")["pid"] == pid and client.is_running("kept")


def test_no_daemon_names_the_socket_and_the_command(run_dir: Path) -> None:
    c = Client(run_dir)
    with pytest.raises(DaemonUnavailable) as e:
        c.stats()
    msg = str(e.value)
    assert str(run_dir / "dms.sock") in msg
    assert f"dms serve --run-dir {run_dir}" in msg
    assert "does not exist" in msg
    assert e.value.socket_path == str(run_dir / "dms.sock")


def test_a_socket_nobody_listens_on_is_unavailable(run_dir: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(run_dir / "dms.sock"))
    s.close()  # the file stays; nobody listens
    assert stat.S_ISSOCK(os.stat(run_dir / "dms.sock").st_mode)
    with pytest.raises(DaemonUnavailable, match="refused"):
        Client(run_dir).health()


class FakeDaemon:
    """Fault injection: a Unix socket server that answers each request with a scripted
    answer (or nothing), to test what a real daemon does only in races."""

    def __init__(self, path: Path, answers: list[bytes | None], close_after: bool) -> None:
        self.path = path
        self.answers = answers
        self.close_after = close_after
        self.requests = 0
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    self.requests += 1
                    answer = self.answers.pop(0)
                    if answer is None:
                        # Never answer: hold the connection until the client gives up.
                        conn.recv(1)
                        break
                    conn.sendall(answer)
                    if self.close_after:
                        break

    def close(self) -> None:
        self.sock.close()


def _answer(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.fixture
def fake_dir(run_dir: Path) -> Iterator[Path]:
    yield run_dir


def test_503_is_unavailable_with_the_daemons_message(fake_dir: Path) -> None:
    body = b'{"error": {"code": "unavailable", "message": "dms serve is shutting down"}}'
    fake = FakeDaemon(fake_dir / "dms.sock", [_answer("503 Service Unavailable", body)], False)
    try:
        with pytest.raises(Unavailable, match="shutting down") as e:
            Client(fake_dir).stats()
        assert e.value.status == 503 and e.value.code == "unavailable"
    finally:
        fake.close()


def test_a_daemon_that_does_not_answer_times_out(fake_dir: Path) -> None:
    fake = FakeDaemon(fake_dir / "dms.sock", [None], False)
    try:
        with pytest.raises(CallTimeout, match=r"did not answer GET /v1/stats within 0\.3 s"):
            Client(fake_dir, timeout=0.3).stats()
    finally:
        fake.close()


def test_a_reused_connection_closed_by_the_daemon_is_reopened(fake_dir: Path) -> None:
    ok = _answer("200 OK", b'{"status": "ok"}')
    # Keep-alive answers, but the server closes after each: the second call finds the
    # connection closed (the daemon's idle timeout, or a restart) and opens a new one.
    fake = FakeDaemon(fake_dir / "dms.sock", [ok, ok, ok], True)
    try:
        c = Client(fake_dir)
        for _ in range(3):
            assert c.call("GET", "/v1/health") == {"status": "ok"}
        assert fake.connections == 3 and fake.requests == 3
    finally:
        fake.close()


def test_unknown_codes_map_by_status_then_to_the_base_class() -> None:
    assert type(error_for(409, "conflict", "m")) is Conflict
    assert type(error_for(409, "something_new", "m")) is Conflict
    e = error_for(418, "teapot", "short and stout")
    assert type(e) is ApiError and e.status == 418 and e.message == "short and stout"
    assert isinstance(error_for(400, None, "x"), BadRequest)
    assert issubclass(CallTimeout, TimeoutError)
    assert issubclass(Forbidden, dms_client.DmsError)


def test_the_answer_reader_takes_chunked_close_and_interim_answers(fake_dir: Path) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + _answer("200 OK", b'{"b": 2}')
    closing = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b'Content-Length: 8\r\n\r\n{"c": 3}'
    )
    fake = FakeDaemon(fake_dir / "dms.sock", [chunked, interim, closing, closing], False)
    try:
        c = Client(fake_dir)
        assert c.call("GET", "/x") == {"a": 1}
        assert c.call("GET", "/x") == {"b": 2}
        assert c.call("GET", "/x") == {"c": 3}
        assert fake.connections == 1
        assert c.call("GET", "/x") == {"c": 3}  # reopened after Connection: close
        assert fake.connections == 2
    finally:
        fake.close()


def test_an_answer_cut_short_is_not_retried(fake_dir: Path) -> None:
    ok = _answer("200 OK", b'{"status": "ok"}')
    cut = _answer("200 OK", b'{"status": "ok"}')[:-5]
    fake = FakeDaemon(fake_dir / "dms.sock", [ok, cut, ok], True)
    try:
        c = Client(fake_dir)
        assert c.call("GET", "/v1/health") == {"status": "ok"}
        with pytest.raises(DaemonUnavailable, match="during POST /v1/cleanup"):
            c.call("POST", "/v1/cleanup", {})
        assert fake.requests == 2, "a request whose answer began must not be sent again"
    finally:
        fake.close()


def test_garbage_instead_of_http_is_an_error(fake_dir: Path) -> None:
    fake = FakeDaemon(fake_dir / "dms.sock", [b"SSH-2.0-OpenSSH\r\n\r\n"], True)
    try:
        with pytest.raises(DaemonUnavailable, match="not an HTTP status line"):
            Client(fake_dir).stats()
    finally:
        fake.close()
