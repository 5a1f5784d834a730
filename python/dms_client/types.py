"""The documents of the API as ``TypedDict``\\ s (serve.md and cli.md's JSON shapes).

They are plain ``dict``\\ s at run time. The daemon may add fields (the contract only
adds), so a document can hold keys not listed here.
"""

from __future__ import annotations

from typing import Literal, TypedDict, Union

#: A target's state (``unverified``: alive, but dms may not inspect it).
State = Literal["running", "stale", "foreign", "corrupt", "absent", "unverified"]

#: A mount point's state.
MountState = Literal["mounted", "stale", "unmounted"]

#: A restart policy.
Policy = Literal["never", "on-failure", "always"]


class LastExit(TypedDict):
    """How a supervised helper last ended."""

    code: int | None
    signal: str | None


class Supervision(TypedDict):
    """The supervision of a helper (``null`` in the info object when unsupervised)."""

    policy: Policy
    state: Literal["running", "backoff", "failed", "stopped"]
    restarts: int
    failures: int
    next_restart_at: str | None
    last_exit: LastExit | None
    reason: str | None


class Info(TypedDict):
    """The info object of one target (``status``, ``spawn``, ``adopt``, ``restart``)."""

    target: str
    pid: int | None
    state: State
    running: bool
    pid_file: str
    pid_file_exists: bool
    source: Literal["memory", "disk", "both"] | None
    started_at: str | None
    uptime_secs: float | None
    cpu_percent: float | None
    rss_bytes: int | None
    threads: int | None
    cmdline: list[str] | None
    mount: str | None
    mounted: bool | None
    mount_state: MountState | None
    supervision: Supervision | None
    detail: str | None


class KillReport(TypedDict):
    """What ``kill`` (and ``DELETE``) did."""

    target: str
    pid: int | None
    was_running: bool
    signal: str | None
    stopped: bool
    steps: list[str]


class Removed(TypedDict):
    """One entry removed by cleanup."""

    target: str
    reason: Literal["stale", "foreign", "corrupt"]


class MountAction(TypedDict):
    """One mount handled by ``cleanup(mounts=True)``."""

    target: str
    path: str
    state: MountState
    action: str


class CleanupReport(TypedDict):
    """What ``cleanup`` did."""

    removed: list[Removed]
    stopped: list[str]
    mounts: list[MountAction]


class Stats(TypedDict):
    """Totals over every tracked target, with the daemon's supervision counters."""

    total_tracked: int
    pid_files_on_disk: int
    running: int
    stale: int
    foreign: int
    corrupt: int
    unverified: int
    strays: int
    stale_mounts: int | None
    backend: str
    run_dir: str
    supervised: int
    backoff: int
    failed: int
    restarts_total: int


class Health(TypedDict):
    """``GET /v1/health``."""

    status: str
    pid: int
    version: str
    uptime_secs: float
    run_dir: str
    backend: str


class _EventBase(TypedDict):
    seq: int
    time: str
    kind: str
    target: str | None
    pid: int | None


class Event(_EventBase, total=False):
    """One event of ``GET /v1/events``; the keys after ``pid`` depend on ``kind``."""

    code: int | None
    signal: str | None
    reason: str | None
    delay_secs: float
    attempt: int
    failures: int


class ReloadError(TypedDict):
    """A declared-target file that could not be used."""

    file: str
    line: int | None
    message: str


class ReloadReport(TypedDict):
    """What ``POST /v1/reload`` did."""

    started: list[str]
    stopped: list[str]
    restarted: list[str]
    unchanged: int
    errors: list[ReloadError]


class RestartSpec(TypedDict, total=False):
    """The ``restart`` object of a spawn request (all optional; seconds may be decimals)."""

    policy: Policy
    initial_delay_secs: float
    max_delay_secs: float
    reset_after_secs: float
    max_failures: int
    window_secs: float


#: A JSON value, as the daemon sends it.
Json = Union[None, bool, int, float, str, list["Json"], dict[str, "Json"]]

__all__ = [
    "CleanupReport",
    "Event",
    "Health",
    "Info",
    "Json",
    "KillReport",
    "LastExit",
    "MountAction",
    "MountState",
    "Policy",
    "ReloadError",
    "ReloadReport",
    "Removed",
    "RestartSpec",
    "State",
    "Stats",
    "Supervision",
]
