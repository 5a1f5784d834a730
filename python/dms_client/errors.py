"""The exceptions of the client: one per error code of the API, and the daemon-side ones.

Every error the daemon answers with is ``{"error": {"code": C, "message": M}}``; the
client raises the subclass of :class:`ApiError` named after ``C`` (``bad_request`` is
:class:`BadRequest`, ...), carrying the daemon's message, HTTP status and code. A code
this version does not know is raised as :class:`ApiError` itself.
"""

from __future__ import annotations


class DmsError(Exception):
    """The base class of every exception this package raises."""


class DaemonUnavailable(DmsError):
    """No ``dms serve`` answers on the socket (missing, refused, or it went away).

    The message names the socket and the command that starts the daemon.
    """

    def __init__(self, socket_path: str, run_dir: str, reason: str) -> None:
        self.socket_path = socket_path
        self.run_dir = run_dir
        self.reason = reason
        super().__init__(
            f"no dms serve answers on {socket_path} ({reason}); start it with "
            f"`dms serve --run-dir {run_dir}` (or `systemctl start dms` where it is "
            "installed as a service)"
        )


class CallTimeout(DmsError, TimeoutError):
    """The daemon did not answer within the call's time limit.

    The connection is closed (its state is unknown); the next call opens a new one.
    """


class ProtocolError(DmsError):
    """The daemon's answer is not what the API promises (not JSON, wrong shape)."""


class ApiError(DmsError):
    """An error answered by the daemon: its HTTP status, code and message."""

    #: The API's error code this class stands for (``None`` for the base class).
    code_name: str | None = None

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{message} (HTTP {status} {code})")


class BadRequest(ApiError):
    """400 ``bad_request``: malformed JSON, an unknown or ill-typed field, a bad target ID
    or PID."""

    code_name = "bad_request"


class Forbidden(ApiError):
    """403 ``forbidden``: this peer may not change anything (GETs are open)."""

    code_name = "forbidden"


class NotFound(ApiError):
    """404 ``not_found``: no such endpoint (an older daemon, or a wrong path)."""

    code_name = "not_found"


class MethodNotAllowed(ApiError):
    """405 ``method_not_allowed``: the path exists but does not take this method."""

    code_name = "method_not_allowed"


class RequestTimeout(ApiError):
    """408 ``timeout``: the daemon did not receive the whole request body in time."""

    code_name = "timeout"


class Conflict(ApiError):
    """409 ``conflict``: already running, adopt refused, nothing recorded to restart."""

    code_name = "conflict"


class TooLarge(ApiError):
    """413 ``too_large``: a request body over 1 MiB."""

    code_name = "too_large"


class UnsupportedMediaType(ApiError):
    """415 ``unsupported_media_type``: a request body that is not JSON."""

    code_name = "unsupported_media_type"


class Failed(ApiError):
    """500 ``failed``: the operation failed (cannot start, mount never came up, store)."""

    code_name = "failed"


class Unavailable(ApiError):
    """503 ``unavailable``: the daemon is starting up or shutting down; retry later."""

    code_name = "unavailable"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code_name: cls
    for cls in (
        BadRequest,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        Conflict,
        TooLarge,
        UnsupportedMediaType,
        Failed,
        Unavailable,
    )
    if cls.code_name is not None
}

_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    409: Conflict,
    413: TooLarge,
    415: UnsupportedMediaType,
    500: Failed,
    503: Unavailable,
}


def error_for(status: int, code: str | None, message: str) -> ApiError:
    """The exception for an error answer: by its code, else by its HTTP status."""
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or ApiError
    return cls(status, code or f"http_{status}", message)
