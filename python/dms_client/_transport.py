"""HTTP/1.1 over a Unix socket with the standard library: one keep-alive connection,
shared under a lock, reopened when the daemon closed it (idle timeout, restart).

Request/answer calls go through :mod:`._wire`; :class:`UnixConnection` (``http.client``)
serves the event stream."""

from __future__ import annotations

import http.client
import select
import socket
import threading
from dataclasses import dataclass

from ._wire import CutAnswer, NoAnswer, WireConnection
from .errors import CallTimeout, DaemonUnavailable

#: What a lost connection raises while a request is sent or its answer read.
_LOST = (
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class UnixConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` to a Unix socket instead of a TCP port."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("dms", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Connects to the socket, with the connection's timeout."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass
class Answer:
    """One HTTP answer, read whole."""

    status: int
    content_type: str
    body: bytes


def connect_error(socket_path: str, run_dir: str, e: OSError) -> DaemonUnavailable:
    """The :class:`DaemonUnavailable` for a failed connect."""
    if isinstance(e, FileNotFoundError):
        reason = "the socket does not exist"
    elif isinstance(e, ConnectionRefusedError):
        reason = "connection refused: the daemon that made it is gone"
    elif isinstance(e, PermissionError):
        reason = (
            "permission denied: the socket is mode 0660; run as its owner, root, or a "
            "member of its group (dms serve --socket-group)"
        )
    elif isinstance(e, socket.timeout):
        reason = "connect timed out: the daemon does not accept connections"
    else:
        reason = f"cannot connect: {e}"
    return DaemonUnavailable(socket_path, run_dir, reason)


def _dropped(sock: socket.socket | None) -> bool:
    """Whether an idle connection was closed (or broken) by the other end."""
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class Transport:
    """Requests on one keep-alive connection, one at a time (thread-safe)."""

    def __init__(self, socket_path: str, run_dir: str) -> None:
        self.socket_path = socket_path
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._conn: WireConnection | None = None

    def close(self) -> None:
        """Closes the connection (the next request opens a new one)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self, timeout: float) -> WireConnection:
        try:
            return WireConnection(self.socket_path, timeout)
        except OSError as e:
            raise connect_error(self.socket_path, self.run_dir, e) from e

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        content_type: str | None,
        timeout: float,
    ) -> Answer:
        """Sends one request and reads its answer within ``timeout`` seconds.

        A request on a reused connection that the daemon closed before answering
        (it restarted, or closed the idle connection as the request left) is sent once
        more on a new connection: the daemon answers every request it reads, so an
        unanswered one was not carried out.
        """
        headers = {"Host": "dms"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        with self._lock:
            for attempt in (0, 1):
                conn = self._conn
                reused = conn is not None
                if conn is not None and _dropped(conn.sock):
                    self._drop()
                    conn, reused = None, False
                if conn is None:
                    conn = self._open(timeout)
                    self._conn = conn
                conn.settimeout(timeout)
                try:
                    status, ctype, data, close = conn.exchange(method, path, headers, body)
                    if close:
                        self._drop()
                    return Answer(status, ctype, data)
                except socket.timeout as e:
                    self._drop()
                    raise CallTimeout(
                        f"dms serve on {self.socket_path} did not answer {method} {path} "
                        f"within {timeout:g} s"
                    ) from e
                except NoAnswer as e:
                    self._drop()
                    if reused and attempt == 0:
                        continue
                    raise DaemonUnavailable(
                        self.socket_path,
                        self.run_dir,
                        f"the daemon closed the connection before answering {method} {path}",
                    ) from e
                except (CutAnswer, *_LOST) as e:
                    self._drop()
                    raise DaemonUnavailable(
                        self.socket_path,
                        self.run_dir,
                        f"the daemon closed the connection during {method} {path}: {e!r}",
                    ) from e
                except BaseException:
                    self._drop()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
