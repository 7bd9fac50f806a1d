"""Ending what a killed supervisor left behind.

A child recorded in state.db with no exit is an orphan when the supervisor that
started it is gone. It is ended only if it is still the very same process (same
pid AND same start time, never a recycled pid); with it go the members of its
process group and every process carrying its supervisor's environment marker
(descendants that left the group).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from stackvisor.runtime import process
from stackvisor.runtime.state import ChildRecord, StateDB


@dataclass(frozen=True)
class Ended:
    service: str
    pid: int
    extra: int  # other processes of its group or with its marker

    def describe(self) -> str:
        more = f" and {self.extra} of its descendants" if self.extra else ""
        return f"ended orphaned {self.service} (pid {self.pid}){more} left by a killed supervisor"


def _group(record: ChildRecord) -> list[psutil.Process]:
    """Members of the child's process group, if the group is still the one we made."""
    leader_ok = process.is_same_process(record.pid, record.create_time)
    try:
        psutil.Process(record.pgid)
        leader_exists = True
    except psutil.Error:
        leader_exists = False
    if leader_exists and not leader_ok:
        return []  # the number now belongs to someone else's process
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == record.pgid:
                out.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            pass
    return out


def find_orphans(db: StateDB, instance: str) -> list[tuple[ChildRecord, list[psutil.Process]]]:
    """Children with no recorded exit that are not of supervisor `instance`.

    The caller holds the stack's lock, so no other supervisor of this stack is
    alive: whatever another one recorded and is still running was left behind.
    """
    found = []
    for record in db.live_children():
        if record.marker.startswith(instance + "/"):
            continue
        procs = {p.pid: p for p in _group(record)}
        if record.marker:
            procs.update((p.pid, p) for p in process.marked(record.marker))
        procs.pop(os.getpid(), None)
        found.append((record, list(procs.values())))
    return found


async def end_orphans(db: StateDB, instance: str, grace: float = 5.0) -> list[Ended]:
    """SIGTERM every orphan, SIGKILL what is left after `grace`; mark them exited."""
    found = find_orphans(db, instance)
    victims = [p for _, procs in found for p in procs]
    for proc in victims:
        process.send(proc.pid, signal.SIGTERM)
    await _wait_gone(victims, grace)
    process.kill_all(victims)
    await _wait_gone(victims, 2.0)
    ended = []
    for record, procs in found:
        db.child_exited(record.id, None)
        if procs:
            leader = [p for p in procs if p.pid == record.pid]
            ended.append(Ended(record.service, record.pid, len(procs) - len(leader)))
    return ended


async def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> None:
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_running(p) for p in procs):
            return
        process.reap_orphans()
        await asyncio.sleep(0.05)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
