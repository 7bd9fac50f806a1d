"""The documents the supervisor reports: a service's status, the stack's, a reload's result.

TypedDicts, because they cross the control socket as JSON unchanged: the server
sends them, the client and the CLI read them, the OpenAPI document describes them.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class Resources(TypedDict):
    memory_bytes: int  # memory.current of its cgroup, else the RSS of its processes
    cpu_seconds: float  # CPU time so far (of the current process tree, or of its cgroup)
    processes: int


class ServiceStatus(TypedDict):
    name: str
    state: str
    reason: str
    pid: int | None
    port: int | None
    health: str | None
    restarts: int
    exit_code: int | None
    started_at: float | None  # unix time the current process started
    depends_on: list[str]
    selected: NotRequired[bool]  # in the stack's status: part of what `up` runs
    group: NotRequired[str | None]  # in the stack's status: the service it is a copy of (`replicas`)
    resources: NotRequired[Resources | None]  # in the stack's status; None when not running
    labels: NotRequired[dict[str, str]]  # in the stack's status: the service's `labels`
    requested_port: NotRequired[int | None]  # in the stack's status: the port the file asks for
    namespace: NotRequired[str | None]  # in the stack's status: the service's `namespace`
    idle_stop_in: NotRequired[float | None]  # with `idle_stop`: seconds until it is stopped
    lease_left: NotRequired[float | None]  # with `lease`: seconds until it is stopped
    internal_port: NotRequired[int | None]  # with `socket: proxy`: where the service listens
    forwarding: NotRequired[str]  # with `socket: proxy`: "kernel" or "relay" (new connections)
    next_run: NotRequired[float | None]  # with `schedule`: unix time of its next tick (None: stopped)
    overlapping: NotRequired[list[int]]  # with `schedule`: pids of the runs beside its own (max_concurrent)


class ReloadResult(TypedDict):
    ok: bool
    dry_run: bool
    source: str
    time: float
    error: NotRequired[str]  # when not ok: why the file was refused
    added: NotRequired[list[str]]
    removed: NotRequired[list[str]]
    changed: NotRequired[list[str]]
    restarted: NotRequired[list[str]]
    settings_changed: NotRequired[list[str]]
    needs_supervisor_restart: NotRequired[list[str]]
    summary: NotRequired[list[str]]


class StackStatus(TypedDict):
    name: str
    pid: int
    file: str
    started_at: float
    stopping: bool
    tracking: str  # "cgroup": every service in its own cgroup; "marker": the fallback
    stop_reason: NotRequired[str]  # while stopping: why (`down`, a signal, --exit-with...)
    reload: ReloadResult | None
    services: list[ServiceStatus]


class ConvergeResult(TypedDict):
    reload: ReloadResult
    started: list[str]  # services that were neither running nor on their way
