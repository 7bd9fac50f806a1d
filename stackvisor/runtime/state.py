"""The stack's memory on disk: `.stackvisor/state.db` (sqlite).

Two tables: `children`, one row per process ever spawned (service, pid, process
group, start time, port, exit code), so a later run can find and end what a killed
supervisor left behind — matching pid AND start time, never a recycled pid (the start
counted from the boot, and the boot's id beside it: `procfs.started`; `create_time`
is the wall-clock start, for people); and
`events`, the history of every state change and port conflict.

Writes are small and synchronous from the event loop: sqlite in WAL mode commits
one row in well under a millisecond, and a crash then loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackvisor.errors import UnsafePath
from stackvisor.runtime.events import Event
from stackvisor.system import procfs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS children (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    create_time REAL NOT NULL,
    port INTEGER,
    supervisor_pid INTEGER NOT NULL,
    marker TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    exited_at REAL,
    exit_code INTEGER,
    started REAL,
    boot TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS children_live ON children (exited_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    supervisor_pid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    service TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS supervisors (
    id INTEGER PRIMARY KEY,
    marker TEXT NOT NULL,
    supervisor_pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    cgroup TEXT NOT NULL DEFAULT ''
);
"""


# The `service` of a supervisor's own record among the children it left (not a
# service name: names cannot be "*").
INSTANCE = "*"

# How long an event may wait to be written with those that follow it (`Ledger.record_event`).
EVENT_FLUSH_DELAY = 0.05


@dataclass(frozen=True)
class ChildRecord:
    id: int
    service: str
    pid: int
    pgid: int
    started: float | None  # seconds since boot; None when recorded under another boot
    port: int | None
    supervisor_pid: int
    marker: str
    cgroup: str = ""  # a supervisor's record: the folder of its stack's cgroups, if any

    @property
    def is_instance(self) -> bool:
        """A supervisor's own record: its marker prefix stands for all it started."""
        return self.service == INSTANCE


class StateDB:
    """An open state.db. `StateDB.open` creates or upgrades the file; the constructor
    only keeps the connection it is given."""

    def __init__(
        self, db: sqlite3.Connection, path: Path, supervisor_pid: int, moved_aside: Path | None = None
    ) -> None:
        self.db = db
        self.path = path
        self.supervisor_pid = supervisor_pid
        # Where a corrupt database was moved before this fresh one was made.
        self.moved_aside = moved_aside

    @classmethod
    def open(cls, path: Path, supervisor_pid: int) -> StateDB:
        """Open (or create) the database. One that sqlite cannot read is moved aside to
        `state.db.corrupt-<unix time>` and a fresh one is made: the stack keeps working,
        and what the old one knew is kept for a person to look at."""
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.islink(f"{path}{suffix}"):  # sqlite would write through it
                raise UnsafePath(f"{path}{suffix} is a symbolic link; stackvisor does not write through one")
        try:
            return cls._ready(path, supervisor_pid, None)
        except sqlite3.DatabaseError:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            return cls._ready(path, supervisor_pid, aside)

    def recovery_note(self) -> str | None:
        """What to tell a person when a corrupt database was moved aside."""
        if self.moved_aside is None:
            return None
        return f"{self.path} could not be read: moved to {self.moved_aside.name}; using a fresh one"

    @classmethod
    def _ready(cls, path: Path, supervisor_pid: int, aside: Path | None) -> StateDB:
        state = cls(_connect(path), path, supervisor_pid, moved_aside=aside)
        try:
            state._check()
        except sqlite3.DatabaseError:
            state.close()
            raise
        return state

    def close(self) -> None:
        self.db.close()

    def _check(self) -> None:
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(children)")}
        if "marker" not in columns:  # a state.db written before markers were recorded
            self.db.execute("ALTER TABLE children ADD COLUMN marker TEXT NOT NULL DEFAULT ''")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(supervisors)")}
        if "cgroup" not in columns:  # ... and before cgroups
            self.db.execute("ALTER TABLE supervisors ADD COLUMN cgroup TEXT NOT NULL DEFAULT ''")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(children)")}
        if "boot" not in columns:  # ... and before starts were counted from the boot
            self.db.execute("ALTER TABLE children ADD COLUMN started REAL")
            self.db.execute("ALTER TABLE children ADD COLUMN boot TEXT NOT NULL DEFAULT ''")
        self.prune()

    def prune(self, keep_events: int = 100_000, keep_children: int = 10_000) -> None:
        """Keep the history bounded: the newest events, and the newest exited children.

        Children with no recorded exit are always kept: they may be orphans to end.
        """
        self.db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (keep_events,))
        self.db.execute(
            "DELETE FROM children WHERE exited_at IS NOT NULL AND id <= (SELECT MAX(id) FROM children) - ?",
            (keep_children,),
        )
        self.db.execute(
            "DELETE FROM supervisors WHERE ended_at IS NOT NULL"
            " AND id <= (SELECT MAX(id) FROM supervisors) - ?",
            (keep_children,),
        )

    def child_started(
        self, service: str, pid: int, pgid: int, started: float, port: int | None, marker: str
    ) -> int:
        """`started`: seconds since boot (`procfs.started`), recorded with this boot's id."""
        now = time.time()
        wall = started + procfs.boot_time()  # what ps shows
        cur = self.db.execute(
            "INSERT INTO children (service, pid, pgid, create_time, port, supervisor_pid, marker,"
            " started_at, started, boot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (service, pid, pgid, wall, port, self.supervisor_pid, marker, now, started, procfs.boot_id()),
        )
        return int(cur.lastrowid or 0)

    def instance_started(self, instance: str, cgroup: str = "") -> int:
        """A supervisor's own record, written before it starts anything: its marker,
        `<instance>/`, finds every process it ever started, also one started in the
        instant before a SIGKILL left no time to record it; and so does `cgroup`, the
        folder of its services' cgroups (with cgroup tracking), whatever they did."""
        cur = self.db.execute(
            "INSERT INTO supervisors (marker, supervisor_pid, started_at, cgroup) VALUES (?, ?, ?, ?)",
            (instance + "/", self.supervisor_pid, time.time(), cgroup),
        )
        return int(cur.lastrowid or 0)

    def instance_ended(self, row: int) -> None:
        self.db.execute("UPDATE supervisors SET ended_at = ? WHERE id = ?", (time.time(), row))

    def live_instances(self) -> list[ChildRecord]:
        """Supervisors with no recorded end, as records of what they may have left."""
        rows = self.db.execute(
            "SELECT id, marker, supervisor_pid, cgroup FROM supervisors WHERE ended_at IS NULL ORDER BY id"
        ).fetchall()
        return [
            ChildRecord(row, INSTANCE, 0, 0, None, None, pid, marker, cgroup)
            for row, marker, pid, cgroup in rows
        ]

    def child_exited(self, row: int, exit_code: int | None) -> None:
        self.db.execute(
            "UPDATE children SET exited_at = ?, exit_code = ? WHERE id = ?",
            (time.time(), exit_code, row),
        )

    def live_children(self) -> list[ChildRecord]:
        """Children with no recorded exit: alive, or left behind by a killed supervisor."""
        rows = self.db.execute(
            "SELECT id, service, pid, pgid, CASE WHEN boot = ? THEN started END, port, supervisor_pid,"
            " marker FROM children WHERE exited_at IS NULL ORDER BY id",
            (procfs.boot_id(),),
        ).fetchall()
        return [ChildRecord(*row) for row in rows]

    def known_children(self) -> set[tuple[int, float]]:
        """(pid, start since boot) of every child recorded in this boot."""
        rows = self.db.execute(
            "SELECT pid, started FROM children WHERE boot = ? AND started IS NOT NULL", (procfs.boot_id(),)
        ).fetchall()
        return {(int(pid), float(began)) for pid, began in rows}

    def record_event(self, event: Event) -> None:
        self.record_events([event])

    def record_events(
        self, events: Sequence[Event], exits: Sequence[tuple[int, int | None, float]] = ()
    ) -> None:
        """Events, and children's exits as (row, exit code, time), in one transaction: one
        write of the WAL, not one per event."""
        if not events and not exits:
            return
        rows = [
            (e.ts, self.supervisor_pid, e.seq, str(e.kind), e.service, json.dumps(e.data, default=str))
            for e in events
        ]
        with self.db:  # BEGIN ... COMMIT (ROLLBACK on an error)
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO events (ts, supervisor_pid, seq, kind, service, data) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self.db.executemany(
                "UPDATE children SET exited_at = ?, exit_code = ? WHERE id = ?",
                [(when, code, row) for row, code, when in exits],
            )

    def events(
        self, *, since: float | None = None, kinds: tuple[str, ...] = (), limit: int = 10000
    ) -> list[dict[str, Any]]:
        query = "SELECT ts, supervisor_pid, seq, kind, service, data FROM events WHERE 1=1"
        args: list[Any] = []
        if since is not None:
            query += " AND ts >= ?"
            args.append(since)
        if kinds:
            query += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(kinds)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        rows = self.db.execute(query, args).fetchall()
        return [
            {
                "ts": ts,
                "supervisor_pid": spid,
                "seq": seq,
                "kind": kind,
                "service": service,
                "data": json.loads(data),
            }
            for ts, spid, seq, kind, service, data in reversed(rows)
        ]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        db.execute("SELECT COUNT(*) FROM children").fetchone()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


class Ledger:
    """One supervisor's records in state.db: itself, the children it started, its events.

    It hands out its own handles for children, so that when the file is deleted under a
    running supervisor (`git clean -fdx`) `reopen_if_gone` makes a fresh one, records
    the supervisor and its live children again, and the runners' handles stay valid.
    """

    def __init__(self, path: Path, supervisor_pid: int, instance: str) -> None:
        self.path = path
        self.supervisor_pid = supervisor_pid
        self.instance = instance
        self.cgroup = ""  # the stack's cgroup folder, when its services run in cgroups
        self.db: StateDB | None = None
        self._instance_row = 0
        self._handles = itertools.count(1)
        self._live: dict[int, tuple[int, tuple[Any, ...]]] = {}  # handle -> (row, what was recorded)
        self._pending: list[Event] = []  # events not yet written (see `record_event`)
        self._exits: list[tuple[int, int | None, float]] = []  # (row, exit code, when), the same
        self._flush: asyncio.TimerHandle | None = None

    def open(self) -> str | None:
        """Open (or create) the file and record this supervisor; a note if it was corrupt."""
        self.db = StateDB.open(self.path, self.supervisor_pid)
        self._instance_row = self.db.instance_started(self.instance, self.cgroup)
        return self.db.recovery_note()

    @property
    def is_open(self) -> bool:
        return self.db is not None

    def tracked_in(self, cgroup: Path | None) -> None:
        """Record the folder of the stack's cgroups: a later `down` ends what is in it."""
        self.cgroup = str(cgroup or "")
        if self.db is not None:
            self.db.db.execute(
                "UPDATE supervisors SET cgroup = ? WHERE id = ?", (self.cgroup, self._instance_row)
            )

    def known_children(self) -> set[tuple[int, float]]:
        return self.db.known_children() if self.db is not None else set()

    def close(self) -> None:
        if self.db is not None:
            self.flush()
            self.db.instance_ended(self._instance_row)
            self.db.close()
            self.db = None

    def reopen_if_gone(self) -> bool:
        """When the file was deleted: a fresh one with what is alive recorded again."""
        if self.db is None or self.path.exists():
            return False
        self.flush()  # the exits pending name rows of the old file
        self.db.close()
        self.open()
        assert self.db is not None
        for handle, (_, recorded) in list(self._live.items()):
            self._live[handle] = (self.db.child_started(*recorded), recorded)
        return True

    def child_started(
        self, service: str, pid: int, pgid: int, started: float, port: int | None, marker: str
    ) -> int:
        assert self.db is not None
        recorded = (service, pid, pgid, started, port, marker)
        handle = next(self._handles)
        self._live[handle] = (self.db.child_started(*recorded), recorded)
        return handle

    def child_exited(self, handle: int, exit_code: int | None) -> None:
        """Written with the next events (see `record_event`): a row that still says alive
        for a child that is gone costs a later `down` one look at a pid that is not there
        (every record is checked by pid and start time before anything is signalled)."""
        row, _ = self._live.pop(handle, (None, ()))
        if row is not None and self.db is not None:
            self._exits.append((row, exit_code, time.time()))
            self._flush_soon()

    def record_event(self, event: Event) -> None:
        """Events are written together, EVENT_FLUSH_DELAY after the first unwritten one
        (at once outside an event loop): 200 services stopping make 400 events, and one
        transaction each was most of a stop's time. A SIGKILL loses at most that much
        history; what protects processes (`children`, `supervisors`) is written at once."""
        if self.db is None:
            return
        self._pending.append(event)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush = loop.call_later(EVENT_FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write the events not yet written (readers of the history call this first)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.db is None:
            return
        events, self._pending = self._pending, []
        exits, self._exits = self._exits, []
        # A disk that is full or a file that went bad costs history, never supervision.
        with contextlib.suppress(sqlite3.Error):
            self.db.record_events(events, exits)
