"""`scale`: another count of copies for a service (`replicas`), carried out on the running
stack, and what a later reload does with it.

A scale is a reload to a stack that differs in one count (`config.replicas`): the
copies added start, the copies removed stop gracefully and their ports go back, and
no other copy or dependent is touched. The count holds across reloads until the file's
`replicas` for that service changes: then the file wins (as Compose's next `up`).
A mixin of `Supervisor`, as `Reloading`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, TypedDict

from stackvisor.config import ReloadDiff
from stackvisor.config.replicas import copy_names, expand_names, problems, with_replicas, written
from stackvisor.config.schema import StackConfig
from stackvisor.runtime import plans
from stackvisor.runtime.events import EventBus, Scaled
from stackvisor.runtime.service import ServiceRunner


class ScaleResult(TypedDict):
    service: str
    replicas: int
    added: list[str]
    removed: list[str]
    copies: list[str]


class Scaling:
    config: StackConfig
    runners: dict[str, ServiceRunner]
    requested: list[str]
    profiles: set[str]
    logger: Any
    bus: EventBus
    _actions: asyncio.Lock
    # service -> (the file's `replicas` when it was scaled, the count asked for)
    scaled: dict[str, tuple[int, int]]

    if TYPE_CHECKING:  # the supervisor's

        def _check_not_stopping(self) -> asyncio.TaskGroup: ...

        async def _apply(self, new: StackConfig, plan: plans.ReloadPlan) -> None: ...

        def _plan_to(self, new: StackConfig) -> tuple[ReloadDiff, plans.ReloadPlan]: ...

    def members(self, name: str) -> list[str]:
        """The services `name` stands for: a group's copies, else itself."""
        return expand_names(self.config, [name])

    def is_group(self, name: str) -> bool:
        return name in self.config.groups

    async def scale(self, name: str, count: int) -> ScaleResult:
        """Run `count` copies of `name`. LookupError: no such service; ValueError: a count
        it cannot have; ActionConflict: not now (the stack is stopping)."""
        async with self._actions:
            self._check_not_stopping()
            services = written(self.config)
            if name not in services:
                raise LookupError(name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"expected a number of copies, 0 or more (got {count!r})")
            new = with_replicas(self.config, name, count)
            said = [message for group, message in problems(services, new) if group == name]
            if said:
                raise ValueError("; ".join(said))
            before = services[name].replicas
            file_count = self.scaled.get(name, (before, before))[0]
            if count == file_count:
                self.scaled.pop(name, None)
            else:
                self.scaled[name] = (file_count, count)
            diff, plan = self._plan_to(new)
            if not diff.is_empty():
                await self._apply(new, plan)
            self.logger.info(f"{name}: scaled from {before} to {count}", service=name, at=time.time())
            self.bus.publish(Scaled(count, before, tuple(diff.added), tuple(diff.removed)), name)
            return {
                "service": name,
                "replicas": count,
                "added": list(diff.added),
                "removed": list(diff.removed),
                "copies": copy_names(name, count),
            }

    def keep_scale(self, new: StackConfig) -> StackConfig:
        """The stack a reload reads, with each count `scale` set kept while the file's
        `replicas` for that service is still the one it was scaled from."""
        for name, (file_count, count) in list(self.scaled.items()):
            services = written(new)
            if name not in services or services[name].replicas != file_count:
                del self.scaled[name]  # the file's count changed: it wins
                continue
            candidate = with_replicas(new, name, count)
            if any(group == name for group, _ in problems(services, candidate)):
                del self.scaled[name]
                continue
            new = candidate
        return new
