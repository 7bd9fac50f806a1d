"""Ending what a killed supervisor left behind.

A child recorded in state.db with no exit is an orphan when the supervisor that
started it is gone. It is ended only if it is still the very same process (same
pid AND same start time, never a recycled pid); with it go the members of its
process group and every process carrying its supervisor's environment marker
(descendants that left the group).

What does not live here: the process facts (`system.procfs`), the signal rules
(`system.signals`, reached through the spawner's gate) and the records themselves
(`state`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from stackvisor.runtime.process import Spawner
from stackvisor.runtime.state import INSTANCE, ChildRecord, StateDB
from stackvisor.system import procfs


@dataclass(frozen=True)
class Ended:
    service: str
    pid: int
    extra: int  # other processes of its group or with its marker

    def describe(self) -> str:
        if self.service == INSTANCE:
            return f"ended {self.extra} processes left by a killed supervisor"
        more = f" and {self.extra} of its descendants" if self.extra else ""
        return f"ended orphaned {self.service} (pid {self.pid}){more} left by a killed supervisor"


def _is_recorded_leader(record: ChildRecord) -> bool:
    """The recorded pid is provably the recorded process: its start time reads the same.

    A zombie leader counts (it still holds its pid and so its group's number); a
    start time we cannot read proves nothing, so it does not.
    """
    if record.pid <= 0:
        return False  # a supervisor's own record: its marker alone finds what is left
    found = procfs.create_time(record.pid)
    return found is not None and procfs.same_start(found, record.create_time)


def _family(record: ChildRecord) -> list[psutil.Process]:
    """What is provably left of one recorded child.

    Its group's members count only while the leader is alive and is the very
    process we recorded: then the group's number is still its own. Without a
    verified leader, only processes carrying the child's marker are taken — a
    group number alone may by now belong to somebody else's job.
    """
    found: dict[int, psutil.Process] = {}
    if _is_recorded_leader(record):
        try:
            leader = psutil.Process(record.pid)
        except psutil.Error:
            pass
        else:
            found[leader.pid] = leader
            found.update((p.pid, p) for p in procfs.descendants(leader.pid))
        for pid in procfs.group_members(record.pgid):
            if pid not in found:
                try:
                    found[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
    if record.marker:
        # "<instance>/" stands for everything that supervisor ever started.
        prefix = record.marker.endswith("/")
        found.update((p.pid, p) for p in procfs.marked(record.marker, prefix=prefix))
    found.pop(os.getpid(), None)
    return list(found.values())


def find_orphans(db: StateDB, instance: str) -> list[tuple[ChildRecord, list[psutil.Process]]]:
    """Children with no recorded exit that are not of supervisor `instance`.

    The caller holds the stack's lock, so no other supervisor of this stack is
    alive: whatever another one recorded and is still running was left behind.
    """
    found = []
    for record in [*db.live_children(), *db.live_instances()]:
        if record.marker.startswith(instance + "/"):
            continue
        found.append((record, _family(record)))
    return found


async def end_orphans(db: StateDB, instance: str, spawner: Spawner, grace: float = 5.0) -> list[Ended]:
    """SIGTERM every orphan, SIGKILL what is left after `grace`; mark them exited."""
    found = find_orphans(db, instance)
    victims = [p for _, procs in found for p in procs]
    for proc in victims:
        spawner.gate.send(proc.pid, signal.SIGTERM, ours=True)
    await _wait_gone(victims, grace, spawner)
    spawner.gate.kill_all(victims)
    await _wait_gone(victims, 2.0, spawner)
    if found:  # a supervisor was killed: what it was starting may appear only now
        await _sweep(db, instance, spawner)
    ended = []
    for record, procs in found:
        if record.is_instance:
            db.instance_ended(record.id)
        else:
            db.child_exited(record.id, None)
        if procs:
            leader = [p for p in procs if p.pid == record.pid]
            ended.append(Ended(record.service, record.pid, len(procs) - len(leader)))
    return ended


# A supervisor killed while it was starting a child leaves, for an instant, a process
# between fork and exec: it does not carry the marker yet (its environment is still the
# supervisor's) and its PDEATHSIG is not set yet. A moment later it has the marker and
# may start children of its own. So once orphans were ended, look again until two
# looks in a row find nothing.
_SWEEP_EVERY = 0.05
_SWEEP_FOR = 1.0


async def _sweep(db: StateDB, instance: str, spawner: Spawner) -> None:
    deadline = time.monotonic() + _SWEEP_FOR
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        await asyncio.sleep(_SWEEP_EVERY)
        late = [p for _, procs in find_orphans(db, instance) for p in procs if procfs.running(p)]
        quiet = 0 if late else quiet + 1
        spawner.gate.kill_all(late)
        await _wait_gone(late, 2.0, spawner)


async def _wait_gone(procs: Iterable[psutil.Process], timeout: float, spawner: Spawner) -> None:
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(procfs.running(p) for p in procs):
            return
        spawner.reap_orphans()
        await asyncio.sleep(0.05)
