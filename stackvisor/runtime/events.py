"""The event bus: every state change, restart, health change, port conflict and reload.

`EventKind` is the one list of what can happen; each kind has a payload class
below with its fields typed, and the control API's OpenAPI document and the README
list the same kinds (the document is generated from `PAYLOADS`, a test holds the
README to it). An `Event` is plain data: the bus numbers events, keeps a short
in-memory backlog, hands each to the history (state.db) and fans it out to
subscribers, each with a bounded queue: a slow reader loses its oldest events,
never stalls the stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from stackvisor.runtime.status import ReloadResult


class EventKind(StrEnum):
    STATE = "state"
    HEALTH = "health"
    RESTART = "restart"
    PORT_CONFLICT = "port_conflict"
    PORT_MISMATCH = "port_mismatch"
    RELOAD = "reload"
    RELOAD_FAILED = "reload_failed"
    STACK = "stack"
    ORPHAN = "orphan"
    WATCH_FAILED = "watch_failed"
    PORT_ALLOCATED = "port_allocated"
    PORT_RELEASED = "port_released"
    PORT_EXPIRED = "port_expired"
    ACTIVATED = "activated"
    IDLE_STOP = "idle_stop"
    REPORT_FAILED = "report_failed"
    SCHEDULED_RUN = "scheduled_run"
    SCHEDULE_SKIPPED = "schedule_skipped"
    SCALED = "scaled"


@dataclass(frozen=True)
class Payload:
    """What one kind of event says. Fields that default to None are left out of the
    event's data while they are None (`port` on a state change other than starting)."""

    kind: ClassVar[EventKind]
    description: ClassVar[str]

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class StateChanged(Payload):
    kind = EventKind.STATE
    description = "a service moved from one state to another"
    old: str
    new: str
    reason: str
    pid: int | None
    exit_code: int | None
    port: int | None  # the port it has (when it starts: the one it was given)
    delay: float | None = None  # in backoff: seconds until the next start
    logs: tuple[str, ...] | None = None  # when it failed: its last output lines


@dataclass(frozen=True)
class HealthChanged(Payload):
    kind = EventKind.HEALTH
    description = "a service's health check changed its verdict"
    health: str
    output: str


@dataclass(frozen=True)
class Restarting(Payload):
    kind = EventKind.RESTART
    description = "a service will be started again after a delay"
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True)
class PortConflict(Payload):
    kind = EventKind.PORT_CONFLICT
    description = "a service's port was held by another process, and what was done"
    port: int | None
    holder_pid: int | None
    holder_name: str | None
    holder_user: str | None
    level: str
    action: str
    outcome: str
    new_port: int | None
    message: str
    strategy: str = ""


@dataclass(frozen=True)
class PortMismatch(Payload):
    kind = EventKind.PORT_MISMATCH
    description = "a health check was answered by a process that is not the service's"
    port: int | None
    message: str


@dataclass(frozen=True)
class Reloaded(Payload):
    kind = EventKind.RELOAD
    description = "the stack file was read again and its changes applied"
    dry_run: bool
    source: str
    time: float
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    restarted: tuple[str, ...]
    settings_changed: tuple[str, ...]
    needs_supervisor_restart: tuple[str, ...]
    summary: tuple[str, ...]

    @classmethod
    def of(cls, result: ReloadResult) -> Reloaded:
        return cls(
            dry_run=result["dry_run"],
            source=result["source"],
            time=result["time"],
            added=tuple(result.get("added", ())),
            removed=tuple(result.get("removed", ())),
            changed=tuple(result.get("changed", ())),
            restarted=tuple(result.get("restarted", ())),
            settings_changed=tuple(result.get("settings_changed", ())),
            needs_supervisor_restart=tuple(result.get("needs_supervisor_restart", ())),
            summary=tuple(result.get("summary", ())),
        )


@dataclass(frozen=True)
class ReloadFailed(Payload):
    kind = EventKind.RELOAD_FAILED
    description = "the stack file was edited into an invalid one; nothing changed"
    error: str
    source: str


@dataclass(frozen=True)
class StackChanged(Payload):
    kind = EventKind.STACK
    description = "the stack came up (`event: up`) or went down (`event: down`)"
    event: str
    services: tuple[str, ...] | None = None
    reason: str | None = None


@dataclass(frozen=True)
class OrphanEnded(Payload):
    kind = EventKind.ORPHAN
    description = "a process left behind by a killed supervisor was ended"
    pid: int
    message: str


@dataclass(frozen=True)
class WatchFailed(Payload):
    kind = EventKind.WATCH_FAILED
    description = "watching the stack's files stopped (edits no longer apply by themselves)"
    error: str


@dataclass(frozen=True)
class PortAllocated(Payload):
    kind = EventKind.PORT_ALLOCATED
    description = (
        "a port was allocated in the user's registry (for a service of this stack, or through this API)"
    )
    id: str
    port: int
    name: str
    type: str
    owner: str


@dataclass(frozen=True)
class PortReleased(PortAllocated):
    kind = EventKind.PORT_RELEASED
    description = (
        "an allocation of the registry was released (the stack went down, the service moved or was removed)"
    )


@dataclass(frozen=True)
class PortExpired(PortAllocated):
    kind = EventKind.PORT_EXPIRED
    description = "an allocation expired: its holder process is gone, or its lease passed without a heartbeat"


@dataclass(frozen=True)
class Activated(Payload):
    kind = EventKind.ACTIVATED
    description = "an on-demand service was started by a connection (`seconds`: from it to the service up)"
    port: int | None
    seconds: float


@dataclass(frozen=True)
class IdleStopped(Payload):
    kind = EventKind.IDLE_STOP
    description = "a service was stopped: no connection for `idle_stop`, or no heartbeat within its `lease`"
    reason: str


@dataclass(frozen=True)
class ReportFailed(Payload):
    kind = EventKind.REPORT_FAILED
    description = "a report could not be sent to `settings.report.url`, its retries spent"
    url: str  # without a user or password written into it
    error: str
    attempts: int
    status: int | None  # the last HTTP status, None when no answer came
    trigger: str  # interval | change


@dataclass(frozen=True)
class ScheduledRun(Payload):
    kind = EventKind.SCHEDULED_RUN
    description = "a scheduled service's run ended (`exit_code`, `duration`, `result`: the state it ended in)"
    exit_code: int | None
    duration: float
    result: str  # completed | exited | failed | stopped
    trigger: str  # schedule: a tick started it; request: a start or restart by hand


@dataclass(frozen=True)
class ScheduleSkipped(Payload):
    kind = EventKind.SCHEDULE_SKIPPED
    description = "a tick of a service's schedule found its last run still going, and was skipped"
    reason: str
    running_for: float | None  # seconds the run that goes on has run
    next_run: float | None  # unix time of the next tick


@dataclass(frozen=True)
class Scaled(Payload):
    kind = EventKind.SCALED
    description = "`scale` changed a service's count of copies (`replicas`, `previous`, `added`, `removed`)"
    replicas: int
    previous: int
    added: tuple[str, ...]
    removed: tuple[str, ...]


PAYLOADS: dict[EventKind, type[Payload]] = {
    cls.kind: cls
    for cls in (
        StateChanged,
        HealthChanged,
        Restarting,
        PortConflict,
        PortMismatch,
        Reloaded,
        ReloadFailed,
        StackChanged,
        OrphanEnded,
        WatchFailed,
        PortAllocated,
        PortReleased,
        PortExpired,
        Activated,
        IdleStopped,
        ReportFailed,
        ScheduledRun,
        ScheduleSkipped,
        Scaled,
    )
}
assert set(PAYLOADS) == set(EventKind), "every kind of event has a payload"


@dataclass(frozen=True)
class Event:
    seq: int
    ts: float  # wall clock, for people and the history; delays use the monotonic clock
    kind: EventKind
    service: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": str(self.kind),
            "service": self.service,
            "data": self.data,
        }


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self.bus.subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, *, record: Callable[[Event], None] | None = None, backlog: int = 1000) -> None:
        self.subscribers: set[Subscription] = set()
        self.backlog: deque[Event] = deque(maxlen=backlog)
        self.record = record
        self.seq = 0
        self._changed: asyncio.Event | None = None
        self._hooks: list[Callable[[Event], None]] = []

    def publish(self, payload: Payload, service: str | None = None) -> Event:
        self.seq += 1
        event = Event(self.seq, time.time(), payload.kind, service, payload.data())
        self.backlog.append(event)
        if self.record is not None:
            self.record(event)
        for hook in list(self._hooks):
            hook(event)
        for sub in list(self.subscribers):
            sub.put(event)
        # Waiters (dependency gates, --wait) re-check their condition on every event.
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return event

    def hook(self, call: Callable[[Event], None]) -> Callable[[], None]:
        """Call `call` with each event as it is published, before anything else runs
        (what must follow a state at once: a redirect going off); returns the unhook."""
        self._hooks.append(call)
        return lambda: self._hooks.remove(call)

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize)
        self.subscribers.add(sub)
        return sub

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait for `predicate()` to hold, re-checking after every event."""

        async def loop() -> None:
            while not predicate():
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            return predicate()
        return True
