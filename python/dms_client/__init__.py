"""A client of ``dms serve``, the daemon of the dms helper-process manager.

- :class:`Client`: the API of serve.md (spawn, kill, restart, status, stats, cleanup,
  adopt, events, logs, ...) over ``<run-dir>/dms.sock``, standard library only;
- :mod:`dms_client.compat`: ``S3VaultFuseManager``, the original Python manager's
  methods and return shapes on top of the daemon (a drop-in: only the import changes);
- :mod:`dms_client.errors`: one exception per error code of the API.

>>> from dms_client import Client
>>> client = Client("/run/dms")                                  # doctest: +SKIP
>>> client.spawn("target-1", ["sleep", "300"])["state"]          # doctest: +SKIP
'running'
"""

from .client import DEFAULT_TIMEOUT, Client, EventStream
from .errors import (
    ApiError,
    BadRequest,
    CallTimeout,
    Conflict,
    DaemonUnavailable,
    DmsError,
    Failed,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ProtocolError,
    RequestTimeout,
    TooLarge,
    Unavailable,
    UnsupportedMediaType,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "ApiError",
    "BadRequest",
    "CallTimeout",
    "Client",
    "Conflict",
    "DaemonUnavailable",
    "DmsError",
    "EventStream",
    "Failed",
    "Forbidden",
    "MethodNotAllowed",
    "NotFound",
    "ProtocolError",
    "RequestTimeout",
    "TooLarge",
    "Unavailable",
    "UnsupportedMediaType",
    "__version__",
]
