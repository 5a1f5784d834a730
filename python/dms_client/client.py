"""``Client``: the methods of serve.md's API over ``<run-dir>/dms.sock``."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, cast, overload
from urllib.parse import quote, urlencode

from ._transport import _LOST, Answer, Transport, UnixConnection, connect_error
from .errors import CallTimeout, ProtocolError, error_for
from .types import (
    CleanupReport,
    Event,
    Health,
    Info,
    Json,
    KillReport,
    ReloadReport,
    RestartSpec,
    Stats,
)

#: The default time limit of a call, in seconds, on top of what the call itself asks
#: the daemon to wait (a kill's grace, a mount's ready timeout).
DEFAULT_TIMEOUT = 30.0

#: The daemon's default grace between SIGTERM and SIGKILL, and default ready timeout.
_DEFAULT_GRACE = 10.0
_DEFAULT_READY = 30.0

#: How long an event stream may stay silent (the daemon sends a heartbeat every 15 s).
_STREAM_SILENCE = 45.0


def _target_path(target: str, suffix: str = "") -> str:
    if not isinstance(target, str):
        raise TypeError(f"target must be a str, not {type(target).__name__}")
    if not target:
        raise ValueError("the target ID is empty; it must be 1 to 200 bytes of [A-Za-z0-9._-]")
    return f"/v1/targets/{quote(target, safe='')}{suffix}"


class Client:
    """A client of the ``dms serve`` of one run directory.

    One keep-alive connection, opened on first use and reopened when the daemon closed it
    (an idle timeout, a restart of ``dms serve``); thread-safe (calls take turns on the
    connection); every call has a time limit (``timeout`` plus what the call asks the
    daemon to wait). Errors are the exceptions of :mod:`dms_client.errors`.

    >>> from dms_client import Client
    >>> c = Client("/run/dms")                          # doctest: +SKIP
    >>> c.spawn("t1", ["sleep", "300"])["pid"]          # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] = "/run/dms",
        *,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.run_dir = os.fspath(run_dir)
        self.socket_path = os.fspath(socket_path or os.path.join(self.run_dir, "dms.sock"))
        self.timeout = float(timeout)
        self._transport = Transport(self.socket_path, self.run_dir)

    def __repr__(self) -> str:
        return f"Client(run_dir={self.run_dir!r}, socket_path={self.socket_path!r})"

    def close(self) -> None:
        """Closes the connection; a later call opens a new one."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # The raw API.

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | bytes | None = None,
        *,
        content_type: str | None = None,
        extra_timeout: float = 0.0,
    ) -> Json:
        """One request of the API, for endpoints this client has no method for.

        ``body`` is a mapping (sent as JSON) or raw bytes (sent with ``content_type``,
        default ``application/json``). Returns the decoded JSON answer (or the text of a
        ``text/plain`` one); an error answer raises its exception.
        """
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            content_type = content_type or "application/json"
        else:
            data = json.dumps(body).encode()
            content_type = content_type or "application/json"
        answer = self._transport.request(
            method, path, data, content_type, self.timeout + extra_timeout
        )
        return _decode(answer, method, path)

    def _get(self, path: str) -> Any:
        return self.call("GET", path)

    def _post(self, path: str, body: Mapping[str, Any] | None, wait: float = 0.0) -> Any:
        return self.call("POST", path, body if body else None, extra_timeout=wait)

    # The methods of serve.md.

    def health(self) -> Health:
        """``GET /v1/health``: the daemon's PID, version, uptime, run dir and backend."""
        return cast(Health, self._get("/v1/health"))

    def spawn(
        self,
        target: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        env_files: Sequence[str | os.PathLike[str]] | None = None,
        mount: str | os.PathLike[str] | None = None,
        restart: str | RestartSpec | None = None,
        replace: bool = False,
        *,
        log: str | os.PathLike[str] | None = None,
        ready_timeout: float | None = None,
        grace: float | None = None,
    ) -> Info:
        """Starts ``argv`` as the helper of ``target`` and returns its info object.

        ``env`` is added to the daemon's environment for the helper (its values are never
        stored, logged or returned); ``env_files`` are read at every start; with
        ``mount`` the helper counts as started once that directory is a mount point
        (within ``ready_timeout``, default 30 s); ``restart`` is a policy name
        (``"on-failure"``) or a :class:`~dms_client.types.RestartSpec`; ``replace`` stops
        a running helper first (with ``grace``). Paths must be absolute.
        """
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of strings, not one string")
        body: dict[str, Any] = {"argv": list(argv)}
        if env is not None:
            body["env"] = dict(env)
        if env_files is not None:
            body["env_files"] = [os.fspath(f) for f in env_files]
        if mount is not None:
            body["mount"] = os.fspath(mount)
        if ready_timeout is not None:
            body["ready_timeout_secs"] = ready_timeout
        if log is not None:
            body["log"] = os.fspath(log)
        if replace:
            body["replace"] = True
        if grace is not None:
            body["grace_secs"] = grace
        if restart is not None:
            body["restart"] = {"policy": restart} if isinstance(restart, str) else dict(restart)
        wait = 0.0
        if mount is not None:
            wait += _DEFAULT_READY if ready_timeout is None else ready_timeout
        if replace:
            wait += _DEFAULT_GRACE if grace is None else grace
        return cast(Info, self._post(_target_path(target, "/spawn"), body, wait))

    def kill(self, target: str, grace: float = _DEFAULT_GRACE) -> KillReport:
        """Stops ``target``'s helper (SIGTERM, SIGKILL after ``grace`` seconds) and
        removes its PID file; ``was_running`` is false when nothing ran."""
        return cast(
            KillReport,
            self._post(_target_path(target, "/kill"), {"grace_secs": grace}, grace),
        )

    def restart(self, target: str, grace: float | None = None) -> Info:
        """Stops ``target``'s helper and starts it again from its recorded spec."""
        body = None if grace is None else {"grace_secs": grace}
        wait = _DEFAULT_GRACE if grace is None else grace
        return cast(Info, self._post(_target_path(target, "/restart"), body, wait))

    def forget(self, target: str, grace: float | None = None) -> KillReport:
        """``DELETE /v1/targets/{t}``: stops the helper and forgets its spec (no restart)."""
        body = None if grace is None else {"grace_secs": grace}
        wait = _DEFAULT_GRACE if grace is None else grace
        return cast(
            KillReport,
            self.call("DELETE", _target_path(target), body, extra_timeout=wait),
        )

    @overload
    def status(self, target: None = None) -> list[Info]: ...

    @overload
    def status(self, target: str) -> Info: ...

    def status(self, target: str | None = None) -> Info | list[Info]:
        """One target's info object (``state`` ``absent`` when nothing is known), or,
        without ``target``, every target's, sorted."""
        if target is None:
            return cast("list[Info]", self._get("/v1/targets"))
        return cast(Info, self._get(_target_path(target)))

    def is_running(self, target: str) -> bool:
        """Whether ``target``'s helper is alive and proven ours."""
        return bool(self.status(target)["running"])

    def stats(self) -> Stats:
        """Totals: tracked, PID files, running, stale, foreign, corrupt, supervision."""
        return cast(Stats, self._get("/v1/stats"))

    def cleanup(
        self, all: bool = False, mounts: bool = False, grace: float | None = None
    ) -> CleanupReport:
        """Removes the PID files of dead, foreign and unreadable entries (the startup
        rule); ``all`` also stops every helper (one shared ``grace``); ``mounts`` also
        detaches recorded mounts that are stale or whose helper is gone."""
        body: dict[str, Any] = {"all": all, "mounts": mounts}
        if grace is not None:
            body["grace_secs"] = grace
        wait = (_DEFAULT_GRACE if grace is None else grace) if all else 0.0
        return cast(CleanupReport, self.call("POST", "/v1/cleanup", body, extra_timeout=wait))

    def adopt(self, target: str, pid: int) -> Info:
        """Records the running process ``pid`` as ``target``'s helper."""
        return cast(Info, self._post(_target_path(target, "/adopt"), {"pid": pid}))

    def logs(self, target: str, lines: int = 100) -> str:
        """The last ``lines`` lines of ``target``'s helper log."""
        query = urlencode({"lines": int(lines)})
        return cast(str, self._get(_target_path(target, f"/logs?{query}")))

    def reload(self) -> ReloadReport:
        """Re-reads the daemon's ``--targets`` directory."""
        return cast(ReloadReport, self._post("/v1/reload", None))

    def metrics(self) -> str:
        """The Prometheus text exposition of ``GET /metrics``."""
        return cast(str, self._get("/metrics"))

    def events(self, since: int | None = None, *, heartbeats: bool = False) -> EventStream:
        """The daemon's events as they happen (an iterator), on a connection of its own.

        With ``since``, the kept events after that ``seq`` come first. Heartbeats are
        skipped unless ``heartbeats``. The iterator ends cleanly when
        :meth:`EventStream.close` is called (from any thread) or when the daemon ends
        the stream (it shuts down); resume with ``events(since=stream.last_seq)``.
        """
        path = "/v1/events" if since is None else f"/v1/events?{urlencode({'since': since})}"
        return EventStream(self, path, heartbeats)


def _decode(answer: Answer, method: str, path: str) -> Json:
    """The answer's document, or the exception of an error answer."""
    kind = answer.content_type.split(";", 1)[0].strip().lower()
    if 200 <= answer.status < 300:
        if kind == "application/json":
            try:
                return cast(Json, json.loads(answer.body))
            except ValueError as e:
                raise ProtocolError(f"{method} {path}: the answer is not JSON: {e}") from e
        return answer.body.decode("utf-8", "replace")
    code: str | None = None
    message = answer.body.decode("utf-8", "replace").strip() or f"HTTP {answer.status}"
    try:
        doc = json.loads(answer.body)
        err = doc["error"]
        code = str(err["code"])
        message = str(err["message"])
    except (ValueError, KeyError, TypeError):
        pass
    raise error_for(answer.status, code, message)


class EventStream(Iterator[Event]):
    """The iterator of :meth:`Client.events`; also a context manager."""

    def __init__(self, client: Client, path: str, heartbeats: bool) -> None:
        self._heartbeats = heartbeats
        self._closed = threading.Event()
        self._lock = threading.Lock()
        #: The ``seq`` of the last line read (heartbeats included); ``None`` before one.
        self.last_seq: int | None = None
        timeout = max(client.timeout, _STREAM_SILENCE)
        self._conn = UnixConnection(client.socket_path, timeout)
        try:
            self._conn.connect()
        except OSError as e:
            raise connect_error(client.socket_path, client.run_dir, e) from e
        try:
            self._conn.request("GET", path, headers={"Accept": "application/x-ndjson"})
            self._resp = self._conn.getresponse()
            if self._resp.status != 200:
                answer = Answer(
                    self._resp.status,
                    self._resp.getheader("Content-Type") or "",
                    self._resp.read(),
                )
                _decode(answer, "GET", path)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        """Ends the stream; an iteration in progress in another thread ends cleanly."""
        self._closed.set()
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:  # not while another thread reads
            self._conn.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called or the stream ended."""
        return self._closed.is_set()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while True:
            line = self._readline()
            if not line.strip():
                continue
            try:
                event = cast(Event, json.loads(line))
                seq = event["seq"]
            except (ValueError, KeyError, TypeError) as e:
                self.close()
                raise ProtocolError(f"an event line is not an event: {e}") from e
            self.last_seq = seq
            if event["kind"] == "heartbeat" and not self._heartbeats:
                continue
            return event

    def _readline(self) -> bytes:
        if self._closed.is_set():
            raise StopIteration
        with self._lock:
            try:
                line = self._resp.readline()
            except socket.timeout as e:
                if self._closed.is_set():
                    raise StopIteration from None
                self._closed.set()
                self._conn.close()
                raise CallTimeout(
                    f"the event stream was silent for {_STREAM_SILENCE:g} s (the daemon "
                    "sends a heartbeat every 15 s)"
                ) from e
            except (*_LOST, OSError, ValueError, AttributeError):
                line = b""
            if not line:
                # Closed by us, or the daemon ended the stream (it shuts down).
                self._closed.set()
                self._conn.close()
                raise StopIteration
            return line
