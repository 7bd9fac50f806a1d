"""Port allocations decided: what an allocation is, the service types and their ranges,
which port to hand out, and when an allocation has expired.

Pure: plain data in, a decision out. `registry` keeps the allocations in sqlite and
asks the kernel who listens; nothing here touches a file, a socket or a process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from stackvisor.config.kinds import DEFAULT_PORT_TYPES

DEFAULT_TYPES: Mapping[str, tuple[int, int] | None] = DEFAULT_PORT_TYPES

SCRIPT = "script"  # the owner of an allocation made from the command line or the API
RESERVED, ACTIVE, EXPIRED = "reserved", "active", "expired"


class RegistryError(Exception):
    """Bad input to the registry (an unknown type, a port out of range): HTTP 400."""

    status = 400


class UnknownAllocation(RegistryError):
    status = 404


class PortTaken(RegistryError):
    """A port that must be this one is not available: HTTP 409, naming who has it."""

    status = 409

    def __init__(self, message: str, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Allocation:
    """One port handed out. `status` is as stored: reserved or expired; `shown` adds
    `active` for a reserved port somebody listens on now."""

    id: str
    port: int
    name: str
    type: str
    owner: str  # a stack file's path, or "script"
    pid: int | None  # the holder: the allocation lives while this process does
    pid_start: float | None
    host: str
    allocated_at: float
    last_heartbeat: float
    ttl: float | None  # seconds without a heartbeat before it expires; None: no lease
    status: str

    def expired(self, now: float, holder_alive: Callable[[int, float | None], bool]) -> bool:
        """Its holder is gone (same pid, same start time), or its lease ran out."""
        if self.status == EXPIRED or self.lapsed(now):
            return True
        return self.pid is not None and not holder_alive(self.pid, self.pid_start)

    def lapsed(self, now: float) -> bool:
        """Its lease ran out (expired, whether or not a sweep has said so yet)."""
        return self.ttl is not None and now > self.last_heartbeat + self.ttl

    def describe(self) -> str:
        """`stack /srv/a/services.yaml's api (pid 4242)`, or `script web (pid 99)`."""
        who = f"{self.owner}'s {self.name}" if self.owner != SCRIPT else f"script allocation {self.name!r}"
        holder = f", pid {self.pid}" if self.pid is not None else ""
        return f"{who} ({self.status}{holder}, id {self.id})"

    def as_dict(self, now: float, listening: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "port": self.port,
            "name": self.name,
            "type": self.type,
            "owner": self.owner,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "host": self.host,
            "allocated_at": self.allocated_at,
            "last_heartbeat": self.last_heartbeat,
            "heartbeat_age": round(max(0.0, now - self.last_heartbeat), 3),
            "ttl": self.ttl,
            "status": EXPIRED
            if self.lapsed(now)
            else ACTIVE
            if self.status == RESERVED and listening
            else self.status,
        }


def parse_range(value: Any) -> tuple[int, int] | None:
    """`8080-8099`, `[8080, 8099]` or `any` as a range (None: any port)."""
    if value is None or value == "any":
        return None
    parts: Any = value.split("-", 1) if isinstance(value, str) else value
    if isinstance(parts, (list, tuple)) and len(parts) == 2:
        try:
            low, high = int(parts[0]), int(parts[1])
        except (TypeError, ValueError):
            low = high = 0
        if 1 <= low <= high <= 65535:
            return (low, high)
    raise RegistryError(f"expected a port range like 8080-8099 or 'any' (got {value!r})")


def check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise RegistryError(f"expected a port between 1 and 65535 (got {port!r})")
    return port


def type_range(kind: str, types: Mapping[str, tuple[int, int] | None]) -> tuple[int, int] | None:
    if kind not in types:
        known = ", ".join(sorted(types))
        raise RegistryError(f"unknown service type {kind!r} (known: {known})")
    return types[kind]


def choose_port(
    candidates: Iterable[int], unavailable: Set[int], listened: Callable[[int], bool]
) -> int | None:
    """The first candidate that is neither allocated nor reserved (`unavailable`) nor
    listened on by anyone now; None when there is none."""
    for port in candidates:
        if port not in unavailable and not listened(port):
            return port
    return None
