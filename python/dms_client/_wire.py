"""One HTTP/1.1 request and answer on a connected socket, for the request/answer calls.

With ``http.client`` (an email parser for the headers, a new file object per answer) a
lookup cost the client about 230 µs of CPU, more than the daemon takes to answer it; with
this reader of the daemon's answers (status line, headers, a ``Content-Length`` or
chunked body) about 100 µs, JSON included. The event stream still uses ``http.client``.
"""

from __future__ import annotations

import contextlib
import socket

#: The longest status or header line accepted, and the most header lines.
_MAX_LINE = 65536
_MAX_HEADERS = 100


class NoAnswer(Exception):
    """The connection ended before the first byte of an answer: the request was not
    carried out (the daemon answers every request it reads)."""


class CutAnswer(Exception):
    """The connection ended in the middle of an answer, or the answer is not HTTP."""


class WireConnection:
    """A keep-alive connection to a Unix socket, one request at a time."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._rfile = sock.makefile("rb")

    def close(self) -> None:
        """Closes the connection."""
        self._rfile.close()
        self.sock.close()

    def settimeout(self, timeout: float) -> None:
        """The time limit of each send and receive."""
        self.sock.settimeout(timeout)

    def exchange(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, str, bytes, bool]:
        """Sends a request; its answer's status, content type, body, and whether the
        daemon closes the connection after it."""
        lines = [f"{method} {path} HTTP/1.1"]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # The daemon may answer and close before reading a body it refuses (a body over
        # 1 MiB): its answer is then waiting to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(head + body if body else head)
        try:
            status_line = self._rfile.readline(_MAX_LINE)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise NoAnswer(repr(e)) from e
        if not status_line:
            raise NoAnswer("the connection was closed before an answer")
        while True:
            status, version = _status(status_line)
            length, chunked, close, ctype = self._headers()
            if not 100 <= status < 200:
                break
            status_line = self._rfile.readline(_MAX_LINE)  # an interim answer: skip it
        if version == "HTTP/1.0":
            close = True
        if chunked:
            data = self._chunked()
        elif length is not None:
            data = self._exactly(length)
        else:
            data = self._rfile.read()
            close = True
        return status, ctype, data, close

    def _headers(self) -> tuple[int | None, bool, bool, str]:
        length: int | None = None
        chunked = close = False
        ctype = ""
        for _ in range(_MAX_HEADERS):
            line = self._rfile.readline(_MAX_LINE)
            if not line:
                raise CutAnswer("the connection was closed in the headers")
            if line in (b"\r\n", b"\n"):
                return length, chunked, close, ctype
            name, sep, value = line.partition(b":")
            if not sep:
                raise CutAnswer(f"not a header line: {line[:80]!r}")
            key = name.strip().lower()
            val = value.strip()
            if key == b"content-length":
                try:
                    length = int(val)
                except ValueError as e:
                    raise CutAnswer(f"bad Content-Length {val[:40]!r}") from e
            elif key == b"transfer-encoding":
                chunked = b"chunked" in val.lower()
            elif key == b"connection":
                close = b"close" in val.lower()
            elif key == b"content-type":
                ctype = val.decode("latin-1")
        raise CutAnswer(f"more than {_MAX_HEADERS} header lines")

    def _exactly(self, n: int) -> bytes:
        data = self._rfile.read(n)
        if len(data) != n:
            raise CutAnswer(f"the connection was closed after {len(data)} of {n} body bytes")
        return data

    def _chunked(self) -> bytes:
        parts = []
        while True:
            line = self._rfile.readline(_MAX_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as e:
                raise CutAnswer(f"bad chunk size line {line[:40]!r}") from e
            if size == 0:
                break
            parts.append(self._exactly(size))
            self._exactly(2)
        while self._rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)


def _status(line: bytes) -> tuple[int, str]:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise CutAnswer(f"not an HTTP status line: {line[:80]!r}")
    try:
        return int(parts[1]), parts[0].decode("latin-1")
    except ValueError as e:
        raise CutAnswer(f"not an HTTP status line: {line[:80]!r}") from e
