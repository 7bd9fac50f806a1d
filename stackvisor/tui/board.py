"""What `stackvisor top` shows, as plain data: a row per service kept up to date from the
status document, the stack's events and the `resources` samples; its cells as text; the
log lines a search keeps.

Pure: no Textual, no socket, the time passed in. The screen (`app`) draws what is here,
so what it shows is tested without a terminal.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stackvisor.textfmt import format_age, format_bytes

# (key, header): every column fits an 80-column terminal with names up to NAME_WIDTH.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "SERVICE"),
    ("state", "STATE"),
    ("port", "PORT"),
    ("pid", "PID"),
    ("uptime", "UPTIME"),
    ("restarts", "RESTARTS"),
    ("cpu", "CPU"),
    ("mem", "MEM"),
)
NAME_WIDTH = 18
NO_NAMESPACE = "(no namespace)"

# States in which a service has a process (its pid and uptime mean something).
ALIVE = frozenset({"starting", "running", "healthy", "unhealthy", "stopping"})
# Events after which the status document says more than the event did (the restart
# count, a port that moved, services a reload added): the screen asks for it again.
REFRESH_AFTER = frozenset({"state", "restart", "reload", "port_conflict", "activated", "idle_stop"})
# How the state reads on the screen: a style that 16-colour terminals have.
STATE_STYLES = {
    "healthy": "bold green",
    "running": "green",
    "completed": "green",
    "starting": "yellow",
    "pending": "yellow",
    "backoff": "bold yellow",
    "stopping": "yellow",
    "unhealthy": "bold red",
    "failed": "bold red reverse",
    "exited": "red",
    "stopped": "dim",
    "idle": "cyan",
}


@dataclass
class Row:
    name: str
    state: str = "pending"
    reason: str = ""
    pid: int | None = None
    port: int | None = None
    started_at: float | None = None
    restarts: int = 0
    namespace: str | None = None
    cpu_percent: float | None = None
    memory_bytes: int | None = None


@dataclass
class Board:
    """The services in the stack's order (start order), and how the stack is."""

    rows: dict[str, Row] = field(default_factory=dict)
    name: str = ""
    down: str | None = None  # why the stack went down, once it did
    as_of: float = 0.0  # when the status document last read was asked for (unix time)
    _cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (cpu s, when)

    @property
    def grouped(self) -> bool:
        """Shown in namespaces: only when some service has one."""
        return any(row.namespace for row in self.rows.values())

    def groups(self) -> list[tuple[str | None, list[Row]]]:
        """(namespace, its rows) in order of first appearance; one group (None) when ungrouped."""
        if not self.grouped:
            return [(None, list(self.rows.values()))]
        found: dict[str, list[Row]] = {}
        for row in self.rows.values():
            found.setdefault(row.namespace or NO_NAMESPACE, []).append(row)
        return list(found.items())

    def layout(self) -> tuple[tuple[str | None, tuple[str, ...]], ...]:
        """What the table's rows are, without their content: a change means drawing it anew."""
        return tuple((ns, tuple(r.name for r in rows)) for ns, rows in self.groups())

    def apply_status(self, status: Mapping[str, Any], now: float, *, resources: bool = False) -> bool:
        """Take `/v1/status` (`resources`: asked with `?resources=true`; without it every
        service says null, which means nothing); True when the layout changed."""
        before = self.layout()
        self.as_of = max(self.as_of, now)
        self.name = str(status.get("name") or self.name)
        rows: dict[str, Row] = {}
        for svc in status.get("services", []):
            name = svc["name"]
            old = self.rows.get(name)
            row = Row(
                name=name,
                state=svc.get("state") or "pending",
                reason=svc.get("reason") or "",
                pid=svc.get("pid"),
                port=svc.get("port"),
                started_at=svc.get("started_at"),
                restarts=int(svc.get("restarts") or 0),
                namespace=svc.get("namespace") or None,
                cpu_percent=old.cpu_percent if old else None,
                memory_bytes=old.memory_bytes if old else None,
            )
            if resources:
                self._sample(row, svc.get("resources"), now)
            rows[name] = row
        self.rows = rows
        return self.layout() != before

    def apply_event(self, kind: str, service: str | None, data: Mapping[str, Any], ts: float) -> bool:
        """One event of the stack; True when the status document should be asked again.

        An event older than the last status document read is already in it: the
        replay of `?since=` (which bridges the moment between reading the status and
        following the events) must not draw the past again."""
        if ts < self.as_of:
            return False
        row = self.rows.get(service) if service else None
        if kind == "state" and row is not None:
            row.state = str(data.get("new") or row.state)
            row.reason = str(data.get("reason") or "")
            if row.state in ALIVE:
                row.pid = data.get("pid") or row.pid
                if row.state == "starting":
                    row.started_at = ts
            else:
                row.pid = row.started_at = None
                row.cpu_percent = row.memory_bytes = None
            if data.get("port") is not None:
                row.port = data["port"]
        elif kind == "stack" and data.get("event") == "down":
            self.down = str(data.get("reason") or "the stack went down")
        elif kind == "stack" and data.get("event") == "up":
            self.down = None
        return kind in REFRESH_AFTER

    def apply_resources(self, sample: Mapping[str, Any]) -> None:
        """A `resources` event: {"ts": ..., "services": {name: {...} | null}}."""
        ts = float(sample.get("ts") or 0.0)
        for name, used in (sample.get("services") or {}).items():
            row = self.rows.get(name)
            if row is not None:
                self._sample(row, used, ts)

    def _sample(self, row: Row, used: Mapping[str, Any] | None, ts: float) -> None:
        if not used:
            row.cpu_percent = row.memory_bytes = None
            self._cpu.pop(row.name, None)
            return
        row.memory_bytes = int(used.get("memory_bytes") or 0)
        cpu = float(used.get("cpu_seconds") or 0.0)
        last = self._cpu.get(row.name)
        if last is not None and ts > last[1]:
            spent = cpu - last[0]
            # Less than before: a new process whose count started again; no rate yet.
            row.cpu_percent = 100.0 * spent / (ts - last[1]) if spent >= 0 else None
        self._cpu[row.name] = (cpu, ts)


def cells(row: Row, now: float) -> tuple[str, ...]:
    """The row's text, column by column (see COLUMNS)."""
    name = row.name if len(row.name) <= NAME_WIDTH else row.name[: NAME_WIDTH - 1] + "…"
    uptime = "-"
    if row.started_at is not None and row.state in ALIVE:
        uptime = format_age(now - row.started_at, parts=2)
    cpu = "-"
    if row.cpu_percent is not None:
        cpu = f"{row.cpu_percent:.1f}%" if row.cpu_percent < 10 else f"{row.cpu_percent:.0f}%"
    return (
        name,
        row.state,
        "-" if row.port is None else str(row.port),
        "-" if row.pid is None else str(row.pid),
        uptime,
        str(row.restarts),
        cpu,
        "-" if row.memory_bytes is None else format_bytes(row.memory_bytes),
    )


def matches(line: str, query: str) -> list[tuple[int, int]]:
    """Where `query` occurs in `line`, ignoring case: (start, end) spans."""
    if not query:
        return []
    return [(m.start(), m.end()) for m in re.finditer(re.escape(query), line, flags=re.IGNORECASE)]


@dataclass
class LogLines:
    """The followed service's last lines, and the search that filters them."""

    keep: int = 2000
    query: str = ""
    lines: deque[str] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.lines = deque(self.lines, maxlen=self.keep)

    def add(self, line: str) -> bool:
        """Keep `line`; True when the search lets it show."""
        self.lines.append(line)
        return self.shows(line)

    def shows(self, line: str) -> bool:
        return not self.query or bool(matches(line, self.query))

    def shown(self) -> list[str]:
        return [line for line in self.lines if self.shows(line)]

    def clear(self, lines: Iterable[str] = ()) -> None:
        self.lines.clear()
        self.lines.extend(lines)
