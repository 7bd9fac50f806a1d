"""The event bus: every state change, restart, health change and port conflict.

An `Event` is plain data. The bus numbers events, keeps a short in-memory backlog,
writes each to the history (state.db) and fans it out to subscribers, each with a
bounded queue: a slow reader loses its oldest events, never stalls the stack.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    seq: int
    ts: float  # wall clock, for people and the history; delays use time.monotonic()
    kind: str  # state | health | restart | port_conflict | reload | reload_failed | stack
    service: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        self.changed = asyncio.Event()

    def publish(self, kind: str, service: str | None = None, **data: Any) -> Event:
        self.seq += 1
        event = Event(self.seq, time.time(), kind, service, data)
        self.backlog.append(event)
        if self.record is not None:
            self.record(event)
        for sub in list(self.subscribers):
            sub.put(event)
        # Waiters (dependency gates, --wait) re-check their condition on every event.
        self.changed.set()
        self.changed = asyncio.Event()
        return event

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize)
        self.subscribers.add(sub)
        return sub

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait for `predicate()` to hold, re-checking after every event."""

        async def loop() -> None:
            while not predicate():
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            return predicate()
        return True
