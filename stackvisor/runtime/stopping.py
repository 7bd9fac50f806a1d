"""Stopping: several services in order (dependents first, independent ones in parallel),
waiting for something unless a stop comes first, and ending what is left below us."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Collection, Iterable, Mapping
from typing import Any, Protocol

import psutil

from stackvisor.runtime.process import Spawner
from stackvisor.system import procfs


class Stoppable(Protocol):
    async def stop(self, reason: str = "stopped", *, keep_socket: bool = False) -> None: ...


async def stop_in_order(
    runners: Mapping[str, Stoppable],
    depends_on: Mapping[str, Iterable[str]],
    names: Iterable[str],
    *,
    keep_sockets: Collection[str] = (),
) -> None:
    """Stop `names`, each after every dependent of it among `names`, the rest in parallel;
    those in `keep_sockets` start again next, holding their listening socket meanwhile."""
    chosen = {n for n in names if n in runners}
    dependents: dict[str, set[str]] = {n: set() for n in chosen}
    for name in chosen:
        for dep in depends_on.get(name, ()):
            if dep in dependents:
                dependents[dep].add(name)
    done = {n: asyncio.Event() for n in chosen}

    async def stop_one(name: str) -> None:
        for dependent in dependents[name]:
            await done[dependent].wait()
        try:
            await runners[name].stop(keep_socket=name in keep_sockets)
        finally:
            done[name].set()

    async with asyncio.TaskGroup() as tg:
        for name in chosen:
            tg.create_task(stop_one(name))


async def until_stopped(stop: asyncio.Event, aw: Awaitable[Any]) -> tuple[bool, Any]:
    """Await `aw` unless `stop` is set first: (stopped, result). A stop cancels `aw`."""
    work = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if work.done():
        return False, work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return True, None


def kill_leftovers(instance: str, spawner: Spawner, *, whole_tree: bool) -> None:
    """SIGKILL whatever of ours is still alive (a daemonised grandchild, say): every
    process carrying the supervisor's marker and, with `whole_tree`, everything below
    this process."""
    leftovers = {p.pid: p for p in procfs.marked(instance + "/", prefix=True)}
    if whole_tree:
        with contextlib.suppress(psutil.Error):
            leftovers.update((p.pid, p) for p in psutil.Process().children(recursive=True))
    leftovers.pop(os.getpid(), None)
    spawner.gate.kill_all(leftovers.values())
    spawner.reap_orphans()
