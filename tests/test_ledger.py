"""state.db's ledger writes events and children's exits together (one transaction for a
burst, not one each), and nothing published is missing for a reader or after close.
Real sqlite files; a real event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

from stackvisor.runtime.events import EventBus, StackChanged
from stackvisor.runtime.state import EVENT_FLUSH_DELAY, Ledger


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(query).fetchall()


async def test_a_burst_is_one_write_and_readers_see_all_of_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ledger = Ledger(path, 4242, "i")
    ledger.open()
    bus = EventBus(record=ledger.record_event)
    handles = [ledger.child_started("api", 100 + i, 100 + i, 1.0, None, f"i/api/{i}") for i in range(50)]
    changes: list[int] = []
    assert ledger.db is not None
    ledger.db.db.set_trace_callback(lambda sql: changes.append(1) if sql.startswith("BEGIN") else None)
    for i in range(400):
        bus.publish(StackChanged("up", reason=str(i)))
    for handle in handles:
        ledger.child_exited(handle, 0)
    # A reader in this process flushes first (the control API's history does).
    ledger.flush()
    assert len(ledger.db.events(limit=1000)) == 400
    assert changes == [1], "400 events and 50 exits in one transaction"
    assert rows(path, "SELECT COUNT(*) FROM children WHERE exited_at IS NULL") == [(0,)]
    # Without a reader, the timer writes what follows within EVENT_FLUSH_DELAY.
    bus.publish(StackChanged("down"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20 * EVENT_FLUSH_DELAY
    while rows(path, "SELECT COUNT(*) FROM events") != [(401,)]:
        assert loop.time() < deadline, "the timer did not write the event"
        await asyncio.sleep(EVENT_FLUSH_DELAY / 5)
    ledger.close()


async def test_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ledger = Ledger(path, 4242, "i")
    ledger.open()
    handle = ledger.child_started("api", 100, 100, 1.0, None, "i/api/0")
    bus = EventBus(record=ledger.record_event)
    bus.publish(StackChanged("down"))
    ledger.child_exited(handle, -15)
    ledger.close()
    assert rows(path, "SELECT kind FROM events") == [("stack",)]
    assert rows(path, "SELECT exit_code FROM children") == [(-15,)]
    assert rows(path, "SELECT COUNT(*) FROM supervisors WHERE ended_at IS NOT NULL") == [(1,)]


def test_outside_an_event_loop_each_event_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ledger = Ledger(path, 4242, "i")
    ledger.open()
    EventBus(record=ledger.record_event).publish(StackChanged("up"))
    assert rows(path, "SELECT COUNT(*) FROM events") == [(1,)]
    ledger.close()


async def test_a_file_deleted_meanwhile_loses_no_exit_into_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ledger = Ledger(path, 4242, "i")
    ledger.open()
    gone = ledger.child_started("api", 100, 100, 1.0, None, "i/api/0")
    ledger.child_started("web", 200, 200, 1.0, None, "i/web/0")
    ledger.child_exited(gone, 0)  # pending, its row is in the file about to go
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    assert ledger.reopen_if_gone()
    ledger.close()
    # The new file knows the live child only, and no exit landed on a wrong row.
    assert rows(path, "SELECT service, exited_at IS NULL FROM children") == [("web", 1)]
