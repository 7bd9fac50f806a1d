"""Ending what a killed supervisor left behind.

A child recorded in state.db with no exit is an orphan when the supervisor that
started it is gone. It is ended only if it is still the very same process (same
pid AND same start time, never a recycled pid); with it go the members of its
process group and every process carrying its supervisor's environment marker
(descendants that left the group). With cgroup tracking, whatever is still in the
stack's service cgroups goes too, whatever it did to hide (a new session, `env -i`):
the cgroups recorded in state.db, and those found on disk under the stack's name (the
state folder may be gone).

What does not live here: the process facts (`system.procfs`), the signal rules
(`system.signals`, reached through the spawner's gate) and the records themselves
(`state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from stackvisor.runtime.process import Spawner
from stackvisor.runtime.state import INSTANCE, ChildRecord, StateDB
from stackvisor.system import cgroups, procfs
from stackvisor.system.signals import SignalGate


@dataclass(frozen=True)
class Ended:
    service: str
    pid: int
    extra: int  # other processes of its group or with its marker
    cgroup: bool = False  # found in the service's cgroup: `extra` processes, no known pid

    def describe(self) -> str:
        count = f"{self.extra} process{'es' * (self.extra != 1)}"
        if self.cgroup:
            return f"ended {count} of {self.service} left in its cgroup by a killed supervisor"
        if self.service == INSTANCE:
            return f"ended {count} left by a killed supervisor"
        if not self.pid:  # its own process was gone already (it died with the supervisor)
            return f"ended {count} of {self.service} left by a killed supervisor"
        more = f" and {self.extra} of its descendants" if self.extra else ""
        return f"ended orphaned {self.service} (pid {self.pid}){more} left by a killed supervisor"


def _is_recorded_leader(record: ChildRecord) -> bool:
    """The recorded pid is provably the recorded process: its start time reads the same.

    A zombie leader counts (it still holds its pid and so its group's number); a
    start time we cannot read proves nothing, so it does not.
    """
    if record.pid <= 0:
        return False  # a supervisor's own record: its marker alone finds what is left
    if record.started is None:
        return False  # recorded under another boot (or before starts were counted from it)
    found = procfs.started(record.pid)
    return found is not None and procfs.same_start(found, record.started)


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


def leftover_cgroups(db: StateDB, stack: str | None) -> dict[Path, list[psutil.Process]]:
    """The service cgroups a killed supervisor of the stack may have left, with what is in
    them: those of recorded supervisors, and those on disk under the stack's name."""
    folders = set(cgroups.leftovers(stack)) if stack else set()
    for record in db.live_instances():
        if record.cgroup:
            with contextlib.suppress(OSError):
                folders.update(p for p in Path(record.cgroup).iterdir() if p.is_dir())
    return {folder: _members(folder) for folder in sorted(folders)}


def left_behind(db: StateDB, stack: str) -> set[tuple[int, float]]:
    """(pid, start since boot) of every process in the cgroups a killed supervisor left:
    its children's children too, which no record names."""
    return {
        (proc.pid, began)
        for procs in leftover_cgroups(db, stack).values()
        for proc in procs
        if (began := procfs.started(proc.pid)) is not None
    }


def _members(folder: Path) -> list[psutil.Process]:
    procs = []
    for pid in cgroups.pids(folder):
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs


async def end_orphans(
    db: StateDB, instance: str, spawner: Spawner, grace: float = 5.0, stack: str | None = None
) -> list[Ended]:
    """SIGTERM every orphan, SIGKILL what is left after `grace`; mark them exited.

    `stack`: the stack's cgroup name, to find its cgroups on disk. Called before the
    supervisor starts anything, so whatever is in them is left over."""
    found = find_orphans(db, instance)
    folders = leftover_cgroups(db, stack)
    victims = [p for _, procs in found for p in procs] + [p for ps in folders.values() for p in ps]
    for proc in victims:
        spawner.gate.send(proc.pid, signal.SIGTERM, ours=True)
    await _wait_gone(victims, grace, spawner)
    spawner.gate.kill_all(victims)
    await _wait_gone(victims, 2.0, spawner)
    if found:  # a supervisor was killed: what it was starting may appear only now
        await _sweep(db, instance, spawner)
    # Each process is said once: by its service's record, else by its cgroup, else by
    # the killed supervisor's own record (which names everything it started).
    claimed: set[int] = set()
    ended: list[Ended] = []
    for record, procs in found:
        if not record.is_instance:
            db.child_exited(record.id, None)
            mine = _claim(procs, claimed)
            if mine:
                leader = any(p.pid == record.pid for p in mine)
                ended.append(Ended(record.service, record.pid if leader else 0, len(mine) - leader))
    ended += await _clear({f: _claim(procs, claimed) for f, procs in folders.items()}, spawner.gate)
    for record, procs in found:
        if record.is_instance:
            db.instance_ended(record.id)
            if mine := _claim(procs, claimed):
                ended.append(Ended(record.service, 0, len(mine)))
    return ended


def _claim(procs: list[psutil.Process], claimed: set[int]) -> list[psutil.Process]:
    """Those of `procs` not said yet, now said."""
    mine = [p for p in procs if p.pid not in claimed]
    claimed.update(p.pid for p in mine)
    return mine


async def end_cgroups(stack: str, gate: SignalGate, grace: float = 5.0) -> list[Ended]:
    """End what is left in the stack's cgroups on disk, with no state.db to read."""
    folders = {folder: _members(folder) for folder in cgroups.leftovers(stack)}
    victims = [p for procs in folders.values() for p in procs]
    for proc in victims:
        gate.send(proc.pid, signal.SIGTERM, ours=True)
    await _wait_gone(victims, grace, None)
    return await _clear(folders, gate)


async def _clear(folders: dict[Path, list[psutil.Process]], gate: SignalGate) -> list[Ended]:
    """Kill what is still in each folder (what forked meanwhile too) and remove them."""
    for folder in folders:
        await asyncio.to_thread(cgroups.kill, folder, gate)
        await asyncio.to_thread(cgroups.remove, folder, 2.0)
    return [Ended(folder.name, 0, len(procs), cgroup=True) for folder, procs in folders.items() if procs]


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


async def _wait_gone(procs: Iterable[psutil.Process], timeout: float, spawner: Spawner | None) -> None:
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(procfs.running(p) for p in procs):
            return
        if spawner is not None:
            spawner.reap_orphans()
        await asyncio.sleep(0.05)
