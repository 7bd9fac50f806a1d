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
from stackvisor.system import procfs
from stackvisor.system.files import secure_dir

ENV = "STACKVISOR_REGISTRY"
KEEP_EXPIRED = 24 * 3600.0  # expired allocations stay listed (`--all`) this long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS allocations (
    id TEXT PRIMARY KEY,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    owner TEXT NOT NULL,
    pid INTEGER,
    pid_start REAL,
    host TEXT NOT NULL,
    allocated_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    ttl REAL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'expired')),
    expired_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS live_port ON allocations (port) WHERE status = 'reserved';
CREATE INDEX IF NOT EXISTS by_owner ON allocations (owner, name);
CREATE TABLE IF NOT EXISTS reserved (port INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535));
"""
_COLUMNS = "id, port, name, type, owner, pid, pid_start, host, allocated_at, last_heartbeat, ttl, status"


def default_path(environ: Mapping[str, str] = os.environ) -> Path:
    """STACKVISOR_REGISTRY, else `$XDG_STATE_HOME/stackvisor/ports.db` (default
    `~/.local/state/stackvisor/ports.db`)."""
    if environ.get(ENV):
        return Path(environ[ENV]).expanduser()
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "stackvisor" / "ports.db"


def holder_alive(pid: int, started: float | None) -> bool:
    return procfs.same_process(pid, started)


class Registry:
    """The open registry. `listened(port)` and `holder_alive` are the facts read from
    the system (replaceable in unit tests of the decisions, never needed otherwise)."""

    def __init__(self, db: sqlite3.Connection, path: Path, note: str | None = None) -> None:
        self.db = db
        self.path = path
        self.note = note  # set when a corrupt file was moved aside
        self.host = socket.gethostname()
        self.listened: Callable[[int], bool] = lambda port: not tables.is_free(port)
        self.identity = _identity(path)

    # ----- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | None = None) -> Registry:
        """The user's registry (0600 in a 0700 folder). A file sqlite cannot read is moved
        to `ports.db.corrupt-<time>` and a fresh one made (`note` says so): the live
        stacks register their ports again within a second."""
        path = path or default_path()
        secure_dir(path.parent, 0o700)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.islink(f"{path}{suffix}"):
                raise UnsafePath(f"{path}{suffix} is a symbolic link; stackvisor does not write through one")
        try:
            return cls(_connect(path), path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            note = f"{path} could not be read ({exc}): moved to {aside.name}; a fresh registry was made"
            return cls(_connect(path), path, note)

    def close(self) -> None:
        self.db.close()

    def replaced(self) -> bool:
        """The file was deleted or replaced since it was opened (a person, `rm -rf`)."""
        return _identity(self.path) != self.identity

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
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
        return self._rows("status = ?", (RESERVED,))

    def get(self, allocation_id: str) -> Allocation:
        found = self._rows("id = ?", (allocation_id,))
        if not found:
            raise UnknownAllocation(f"no allocation {allocation_id!r}")
        return found[0]

    def listing(self, kind: str | None = None, *, everything: bool = False) -> list[Allocation]:
        where, args = ("1=1", []) if everything else ("status = ?", [RESERVED])
        if kind is not None:
            where += " AND type = ?"
            args.append(kind)
        return self._rows(where, args)

    def lookup(self, key: str | int) -> list[Allocation]:
        """The live allocations of a port (a number) or of a service name."""
        if isinstance(key, int) or key.isdigit():
            return self._rows("status = ? AND port = ?", (RESERVED, check_port(int(key))))
        return self._rows("status = ? AND name = ?", (RESERVED, key))

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

    def _sweep(self, now: float) -> list[Allocation]:
        """Expire what is dead: each distinct holder is looked at once."""
        live = self.live()
        seen: dict[tuple[int, float | None], bool] = {}

        def alive(pid: int, started: float | None) -> bool:
            if (pid, started) not in seen:
                seen[(pid, started)] = holder_alive(pid, started)
            return seen[(pid, started)]

        return self._expire([a for a in live if a.expired(now, alive)], now)

    def sweep(self) -> list[Allocation]:
        """Expire every allocation whose holder is gone or whose lease ran out."""
        with self._write():
            return self._sweep(time.time())

    def cleanup(self) -> tuple[list[Allocation], int]:
        """Sweep, and forget allocations expired more than KEEP_EXPIRED ago: (expired now,
        how many were forgotten)."""
        now = time.time()
        with self._write():
            expired = self._sweep(now)
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
        started = procfs.create_time(pid) if pid is not None else None
        if pid is not None and started is None:
            raise RegistryError(f"no process {pid} to hold the allocation")
        now = time.time()
        with self._write():
            expired = self._sweep(now)
            taken = {a.port: a for a in self.live()}
            unavailable = set(taken) | self.reserved_ports() | set(reserved)
            port = None
            if preferred is not None:
                port = choose_port([preferred], unavailable, self.listened)
                if port is None and required:
                    raise self._taken(preferred, taken.get(preferred), set(reserved))
            if port is None:
                port = self._pick(span, unavailable)
            allocation = Allocation(
                uuid.uuid4().hex, port, name, kind, owner, pid, started, self.host, now, now, ttl, RESERVED
            )
            self._insert(allocation)
        return allocation, expired

    def _taken(self, port: int, holder: Allocation | None, reserved: set[int]) -> PortTaken:
        if holder is not None:
            return PortTaken(f"port {port} is allocated to {holder.describe()}", holder.as_dict(time.time()))
        if port in reserved or port in self.reserved_ports():
            return PortTaken(f"port {port} is reserved")
        return PortTaken(f"port {port} is listened on by another process (`stackvisor ports plan` names it)")

    def _pick(self, span: tuple[int, int] | None, unavailable: set[int]) -> int:
        if span is not None:
            port = choose_port(range(span[0], span[1] + 1), unavailable, self.listened)
            if port is None:
                raise PortTaken(f"no port of {span[0]}-{span[1]} is available")
            return port
        for _ in range(100):  # the kernel's pick, until it is one nobody was handed
            with socket.socket() as probe:
                probe.bind(("", 0))
                port = probe.getsockname()[1]
            if port not in unavailable:
                return int(port)
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
            if current.status == EXPIRED:
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
            holder = self._rows("status = ? AND port = ?", (RESERVED, port))
            if holder and (holder[0].owner, holder[0].name) != (owner, name):
                if holder[0].expired(now, holder_alive):
                    expired = self._expire(holder, now)
                else:
                    raise self._taken(port, holder[0], set())
            mine = self._rows("status = ? AND owner = ? AND name = ?", (RESERVED, owner, name))
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
        return {a.port: a for a in self._rows("status = ? AND owner != ?", (RESERVED, owner))}

    def release_owner(self, owner: str, names: Sequence[str] | None = None) -> list[Allocation]:
        """Release a stack's allocations (all, or those of `names`)."""
        with self._write():
            mine = self._rows("status = ? AND owner = ?", (RESERVED, owner))
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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():  # 0600 from the start; sqlite gives -wal and -shm the same mode
        with contextlib.suppress(FileExistsError):
            os.close(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            )
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(_SCHEMA)
        db.execute("SELECT COUNT(*) FROM allocations").fetchone()
    except BaseException:
        db.close()
        raise
    return db


__all__ = ["ENV", "Registry", "RegistryError", "default_path"]
