"""The port registry: one sqlite file per user that every supervisor, CLI call and
script shares, so that two stacks (or a stack and a script) never hand out one port.

No daemon: whoever needs it opens it. Every change is one `BEGIN IMMEDIATE`
transaction (sqlite's write lock, taken before anything is read), and a unique index
over the live allocations' ports makes a duplicate impossible even if a bug let two
writers try. Allocations expire when their holder process is gone (pid and start
time) or their lease passed its ttl without a heartbeat; `allocate` and `cleanup`
sweep them. What the allocations mean is decided in `leases` (pure).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stackvisor.errors import UnsafePath
from stackvisor.ports import tables
from stackvisor.ports.leases import (
    DEFAULT_TYPES,
    EXPIRED,
    RESERVED,
    SCRIPT,
    Allocation,
    PortTaken,
    RegistryError,
    UnknownAllocation,
    check_port,
    choose_port,
    type_range,
)
from stackvisor.ports.registry_file import ENV, LOCK_WAIT, connect, default_path, identity
from stackvisor.system import procfs
from stackvisor.system.files import secure_dir

KEEP_EXPIRED = 24 * 3600.0  # expired allocations stay listed (`--all`) this long

# Literal, not a parameter: only then can sqlite use the schema's partial indexes.
LIVE = "status = 'reserved'"
_ALLOCATED = f"SELECT 1 FROM allocations WHERE {LIVE} AND port = ?"
_PACKED = f"SELECT COUNT(*), MAX(port) FROM allocations WHERE {LIVE} AND port BETWEEN ? AND ?"
_LIVE_PORTS = f"SELECT port FROM allocations WHERE {LIVE} AND port BETWEEN ? AND ? ORDER BY port"
_COLUMNS = "id, port, name, type, owner, pid, pid_start, host, allocated_at, last_heartbeat, ttl, status"


def holder_alive(pid: int, started: float | None) -> bool:
    return procfs.same_process(pid, started)


def _without_override() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != ENV}


def _unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`...: the first that names nothing yet."""
    candidate, n = path, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


class Registry:
    """The open registry. `listened(port)` and `holder_alive` are the facts read from
    the system (replaceable in unit tests of the decisions, never needed otherwise)."""

    def __init__(self, db: sqlite3.Connection, path: Path, note: str | None = None) -> None:
        self.db = db
        self.path = path
        self.note = note  # set when a corrupt file was moved aside
        self.host = socket.gethostname()
        self.listened: Callable[[int], bool] = lambda port: not tables.is_free(port)
        self.identity = identity(path)

    # ----- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | None = None) -> Registry:
        """The user's registry (0600 in a 0700 folder). A file sqlite cannot read is moved
        to `ports.db.corrupt-<time>` and a fresh one made (`note` says so): the live
        stacks register their ports again within a second."""
        path = path or default_path()
        # Its own folder is made private; one that STACKVISOR_REGISTRY names keeps its mode.
        secure_dir(path.parent, 0o700, adopt=path == default_path(_without_override()))
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.islink(f"{path}{suffix}"):
                raise UnsafePath(f"{path}{suffix} is a symbolic link; stackvisor does not write through one")
        try:
            return cls(connect(path), path)
        except sqlite3.DatabaseError as exc:
            aside = _unused(path.with_name(f"{path.name}.corrupt-{int(time.time())}"))
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            note = f"{path} could not be read ({exc}): moved to {aside.name}; a fresh registry was made"
            return cls(connect(path), path, note)

    def close(self) -> None:
        self.db.close()

    def replaced(self) -> bool:
        """The file was deleted or replaced since it was opened (a person, `rm -rf`)."""
        return identity(self.path) != self.identity

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. While another process holds the lock, retry every
        fraction of a millisecond: sqlite's own busy handler sleeps up to 100 ms at a
        time, far longer than any transaction here lasts."""
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.0002
        self.db.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(pause)
                    pause = min(pause * 1.5, 0.001)
        finally:
            self.db.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ----- reading ----------------------------------------------------------------------

    def _rows(self, where: str = "1=1", args: Sequence[Any] = ()) -> list[Allocation]:
        query = f"SELECT {_COLUMNS} FROM allocations WHERE {where} ORDER BY port"
        return [Allocation(*row) for row in self.db.execute(query, args)]

    def live(self) -> list[Allocation]:
        return self._rows(LIVE)

    def get(self, allocation_id: str) -> Allocation:
        found = self._rows("id = ?", (allocation_id,))
        if not found:
            raise UnknownAllocation(f"no allocation {allocation_id!r}")
        return found[0]

    def listing(self, kind: str | None = None, *, everything: bool = False) -> list[Allocation]:
        where, args = ("1=1", []) if everything else (LIVE, [])
        if kind is not None:
            where += " AND type = ?"
            args.append(kind)
        return self._rows(where, args)

    def lookup(self, key: str | int) -> list[Allocation]:
        """The live allocations of a port (a number) or of a service name."""
        if isinstance(key, int) or (key.isascii() and key.isdigit()):  # not "¹"
            found = self._rows(f"{LIVE} AND port = ?", (check_port(int(key)),))
        else:
            found = self._rows(f"{LIVE} AND name = ?", (key,))
        now = time.time()
        return [a for a in found if not a.lapsed(now)]

    def reserved_ports(self) -> set[int]:
        return {port for (port,) in self.db.execute("SELECT port FROM reserved")}

    def as_dicts(self, allocations: Sequence[Allocation]) -> list[dict[str, Any]]:
        now = time.time()
        return [a.as_dict(now, a.status == RESERVED and self.listened(a.port)) for a in allocations]

    # ----- changing -----------------------------------------------------------------------

    def _expire(self, allocations: Sequence[Allocation], now: float) -> list[Allocation]:
        for a in allocations:
            self.db.execute(
                "UPDATE allocations SET status = ?, expired_at = ? WHERE id = ?", (EXPIRED, now, a.id)
            )
        return list(allocations)

    def _dead_holders(self) -> list[tuple[int, float | None]]:
        """The holders of live allocations that are gone, each looked at once. Read
        before the write lock is taken: a holder that died is still dead inside it."""
        rows = self.db.execute(
            f"SELECT DISTINCT pid, pid_start FROM allocations WHERE {LIVE} AND pid IS NOT NULL"
        ).fetchall()
        return [(pid, start) for pid, start in rows if not holder_alive(pid, start)]

    def _expirable(self, now: float, dead: Sequence[tuple[int, float | None]]) -> list[Allocation]:
        """The live allocations of `dead` holders and those whose lease ran out."""
        where = "(ttl IS NOT NULL AND last_heartbeat + ttl < ?)"
        args: list[Any] = [now]
        for pid, start in dead:
            where += " OR (pid = ? AND pid_start IS ?)"
            args += [pid, start]
        return self._rows(f"{LIVE} AND ({where})", args)

    def _sweep(self, now: float, dead: Sequence[tuple[int, float | None]]) -> list[Allocation]:
        """Expire what `_expirable` finds (inside a write transaction)."""
        return self._expire(self._expirable(now, dead), now)

    def sweep(self) -> list[Allocation]:
        """Expire every allocation whose holder is gone or whose lease ran out."""
        dead = self._dead_holders()
        with self._write():
            return self._sweep(time.time(), dead)

    def cleanup(self) -> tuple[list[Allocation], int]:
        """Sweep, and forget allocations expired more than KEEP_EXPIRED ago: (expired now,
        how many were forgotten)."""
        now = time.time()
        dead = self._dead_holders()
        with self._write():
            expired = self._sweep(now, dead)
            cur = self.db.execute(
                "DELETE FROM allocations WHERE status = ? AND expired_at < ?", (EXPIRED, now - KEEP_EXPIRED)
            )
        return expired, cur.rowcount

    def allocate(
        self,
        name: str,
        *,
        kind: str = "custom",
        preferred: int | None = None,
        required: bool = False,
        ttl: float | None = None,
        owner: str = SCRIPT,
        pid: int | None = None,
        types: Mapping[str, tuple[int, int] | None] = DEFAULT_TYPES,
        reserved: Sequence[int] = (),
    ) -> tuple[Allocation, list[Allocation]]:
        """A port for `name`, held by process `pid` (None: by its lease alone) and, with
        `ttl`, by heartbeats: (the allocation, what the sweep expired on the way).

        `preferred` is taken when it is available; with `required` it must be."""
        if not name or len(name) > 200:
            raise RegistryError("an allocation needs a name (at most 200 characters)")
        if ttl is not None and not 0 < ttl <= 365 * 86400:
            raise RegistryError(f"expected a ttl between 0 and a year (got {ttl!r})")
        if pid is None and ttl is None:
            raise RegistryError("an allocation held by no process needs a ttl")
        span = type_range(kind, types)
        if preferred is not None:
            check_port(preferred)
        started = procfs.started(pid) if pid is not None else None
        if pid is not None and started is None:
            raise RegistryError(f"no process {pid} to hold the allocation")
        # Everything that only reads is done before the write lock, so that the lock is
        # held for a few statements: what expired, and a port that was free a moment ago.
        # Under the lock the port is checked again, and chosen again if it was just taken.
        dead = self._dead_holders()
        now = time.time()
        stale = bool(self._expirable(now, dead))
        unavailable = self.reserved_ports() | set(reserved)
        try:
            guess: int | None = self._choose(span, preferred, required, unavailable)
        except PortTaken:
            guess = None  # maybe its holder is among what expires below
        with self._write():
            now = time.time()
            expired = self._sweep(now, dead) if stale else []
            port = guess
            if port is None or self._allocated(port):
                port = self._choose(span, preferred, required, unavailable)
            allocation = Allocation(
                uuid.uuid4().hex, port, name, kind, owner, pid, started, self.host, now, now, ttl, RESERVED
            )
            self._insert(allocation)
        return allocation, expired

    def _choose(
        self, span: tuple[int, int] | None, preferred: int | None, required: bool, unavailable: set[int]
    ) -> int:
        if preferred is not None:
            holder = self._rows(f"{LIVE} AND port = ?", (preferred,))
            port = None if holder else choose_port([preferred], unavailable, self.listened)
            if port is not None:
                return port
            if required:
                raise self._taken(preferred, holder[0] if holder else None, unavailable)
        return self._pick(span, unavailable)

    def _taken(self, port: int, holder: Allocation | None, reserved: set[int]) -> PortTaken:
        if holder is not None:
            return PortTaken(f"port {port} is allocated to {holder.describe()}", holder.as_dict(time.time()))
        if port in reserved or port in self.reserved_ports():
            return PortTaken(f"port {port} is reserved")
        return PortTaken(f"port {port} is listened on by another process (`stackvisor ports plan` names it)")

    def _allocated(self, port: int) -> bool:
        return self.db.execute(_ALLOCATED, (port,)).fetchone() is not None

    def _unallocated(self, low: int, high: int) -> Iterator[int]:
        """The ports of low..high that no live allocation has, lowest first. A range that
        is filled from its low end without a hole (how lowest-first allocation fills it)
        is answered by one count over the index; otherwise the gaps are walked."""
        count, top = self.db.execute(_PACKED, (low, high)).fetchone()
        if count == 0 or top - low + 1 == count:
            yield from range(low if count == 0 else top + 1, high + 1)
            return
        expected = low
        for (port,) in self.db.execute(_LIVE_PORTS, (low, high)).fetchall():
            yield from range(expected, port)
            expected = port + 1
        yield from range(expected, high + 1)

    def _pick(self, span: tuple[int, int] | None, unavailable: set[int]) -> int:
        if span is not None:
            port = choose_port(self._unallocated(*span), unavailable, self.listened)
            if port is None:
                raise PortTaken(f"no port of {span[0]}-{span[1]} is available")
            return port
        for _ in range(100):  # the kernel's pick, until it is one nobody was handed
            with socket.socket() as probe:
                probe.bind(("", 0))
                port = int(probe.getsockname()[1])
            if port not in unavailable and not self._allocated(port):
                return port
        raise PortTaken("the kernel offered only ports that are allocated")

    def _insert(self, a: Allocation) -> None:
        self.db.execute(
            f"INSERT INTO allocations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (a.id, a.port, a.name, a.type, a.owner, a.pid, a.pid_start, a.host)
            + (a.allocated_at, a.last_heartbeat, a.ttl, a.status),
        )

    def heartbeat(self, allocation_id: str) -> Allocation:
        now = time.time()
        with self._write():
            current = self.get(allocation_id)
            if current.status == EXPIRED or current.lapsed(now):  # too late, swept or not
                raise UnknownAllocation(f"allocation {allocation_id!r} expired; allocate again")
            self.db.execute("UPDATE allocations SET last_heartbeat = ? WHERE id = ?", (now, allocation_id))
        return self.get(allocation_id)

    def release(self, allocation_id: str) -> Allocation:
        with self._write():
            current = self.get(allocation_id)
            self.db.execute("DELETE FROM allocations WHERE id = ?", (allocation_id,))
        return current

    def reserve(self, ports: Sequence[int], *, keep: bool = True) -> None:
        """Add (`keep`) or remove per-user reserved ports, never handed out."""
        with self._write():
            for port in ports:
                check_port(port)
                if keep:
                    self.db.execute("INSERT OR IGNORE INTO reserved (port) VALUES (?)", (port,))
                else:
                    self.db.execute("DELETE FROM reserved WHERE port = ?", (port,))

    # ----- a stack's ports ----------------------------------------------------------------

    def claim(
        self, owner: str, name: str, port: int, *, kind: str = "custom", pid: int, pid_start: float | None
    ) -> tuple[Allocation, Allocation | None, list[Allocation]]:
        """`port` for service `name` of stack `owner`, held by its supervisor `pid`: (the
        allocation, the one it replaces when the service moved, what expired on the way).
        Raises PortTaken when another owner's live allocation has it."""
        now = time.time()
        with self._write():
            expired: list[Allocation] = []
            holder = self._rows(f"{LIVE} AND port = ?", (port,))
            if holder and (holder[0].owner, holder[0].name) != (owner, name):
                if holder[0].expired(now, holder_alive):
                    expired = self._expire(holder, now)
                else:
                    raise self._taken(port, holder[0], set())
            mine = self._rows(
                f"{LIVE} AND owner = ? AND name = ?",
                (
                    owner,
                    name,
                ),
            )
            if mine and mine[0].port == port and mine[0].pid == pid:
                return mine[0], None, expired
            for old in mine:
                self.db.execute("DELETE FROM allocations WHERE id = ?", (old.id,))
            allocation = Allocation(
                uuid.uuid4().hex, port, name, kind, owner, pid, pid_start, self.host, now, now, None, RESERVED
            )
            self._insert(allocation)
            return allocation, (mine[0] if mine else None), expired

    def others(self, owner: str) -> dict[int, Allocation]:
        """The live allocations of every other owner, by port."""
        return {a.port: a for a in self._rows(f"{LIVE} AND owner != ?", (owner,))}

    def release_owner(self, owner: str, names: Sequence[str] | None = None) -> list[Allocation]:
        """Release a stack's allocations (all, or those of `names`)."""
        with self._write():
            mine = self._rows(f"{LIVE} AND owner = ?", (owner,))
            gone = [a for a in mine if names is None or a.name in names]
            for a in gone:
                self.db.execute("DELETE FROM allocations WHERE id = ?", (a.id,))
        return gone

    def stats(self) -> dict[str, Any]:
        listed = self.as_dicts(self.listing(everything=True))
        by_status: dict[str, int] = {}
        by_type: dict[str, int] = {}
        for a in listed:
            by_status[a["status"]] = by_status.get(a["status"], 0) + 1
            if a["status"] != EXPIRED:
                by_type[a["type"]] = by_type.get(a["type"], 0) + 1
        return {"total": len(listed), "by_status": by_status, "by_type": by_type}


__all__ = ["ENV", "Registry", "RegistryError", "default_path"]
