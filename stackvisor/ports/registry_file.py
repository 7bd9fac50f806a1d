"""The registry's file: where it is, its schema, and opening it (`registry` uses it).

WAL, so readers never wait for a writer; no fsync (see `connect`); created 0600, and
sqlite gives its -wal and -shm files the same mode.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from stackvisor.system import procfs

ENV = "STACKVISOR_REGISTRY"
LOCK_WAIT = 10.0  # how long a change waits for another process's transaction

SCHEMA = """
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
CREATE INDEX IF NOT EXISTS holders ON allocations (pid, pid_start) WHERE status = 'reserved';
CREATE INDEX IF NOT EXISTS leases ON allocations (last_heartbeat + ttl)
    WHERE status = 'reserved' AND ttl IS NOT NULL;
CREATE TABLE IF NOT EXISTS reserved (port INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535));
CREATE TABLE IF NOT EXISTS boot (id TEXT NOT NULL);
"""


def default_path(environ: Mapping[str, str] = os.environ) -> Path:
    """STACKVISOR_REGISTRY, else `$XDG_STATE_HOME/stackvisor/ports.db` (default
    `~/.local/state/stackvisor/ports.db`)."""
    if environ.get(ENV):
        return Path(environ[ENV]).expanduser()
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "stackvisor" / "ports.db"


def identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def connect(path: Path) -> sqlite3.Connection:
    if not path.exists():  # 0600 from the start; sqlite gives -wal and -shm the same mode
        with contextlib.suppress(FileExistsError):
            os.close(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            )
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=LOCK_WAIT)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # No fsync: a power cut that spoils the file is a corrupt registry, moved aside and
        # made again (every live stack claims its ports again within a second), and the
        # scripts that held the rest died with the machine. With fsync, every WAL
        # checkpoint (one in a few hundred changes) took ~10 ms: the registry's p99.
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(SCHEMA)
        db.execute("SELECT COUNT(*) FROM allocations").fetchone()
        _after_reboot(db)
    except BaseException:
        db.close()
        raise
    return db


def _after_reboot(db: sqlite3.Connection) -> None:
    """The first open in a new boot expires every allocation held by a process: they all
    died with the old boot, and a holder's start (seconds since boot) means nothing in
    this one, where its pid may be somebody else's. A file without a boot recorded was
    written when starts were wall-clock times: the same applies. Checked again under the
    write lock, so that two first opens do not expire what the winner allocated since."""
    current = procfs.boot_id()
    if _recorded_boot(db) == current:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if _recorded_boot(db) != current:
            db.execute(
                "UPDATE allocations SET status = 'expired', expired_at = ?"
                " WHERE status = 'reserved' AND pid IS NOT NULL",
                (time.time(),),
            )
            db.execute("DELETE FROM boot")
            db.execute("INSERT INTO boot (id) VALUES (?)", (current,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _recorded_boot(db: sqlite3.Connection) -> str | None:
    row = db.execute("SELECT id FROM boot").fetchone()
    return None if row is None else str(row[0])
