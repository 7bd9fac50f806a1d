"""Stopping several services in order: dependents first, independent services in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Protocol


class Stoppable(Protocol):
    async def stop(self, reason: str = "stopped", *, keep_socket: bool = False) -> None: ...


async def stop_in_order(
    runners: Mapping[str, Stoppable],
    depends_on: Mapping[str, Iterable[str]],
    names: Iterable[str],
    *,
    keep_sockets: bool = False,
) -> None:
    """Stop `names`, each after every dependent of it among `names`, the rest in parallel."""
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
            await runners[name].stop(keep_socket=keep_sockets)
        finally:
            done[name].set()

    async with asyncio.TaskGroup() as tg:
        for name in chosen:
            tg.create_task(stop_one(name))
