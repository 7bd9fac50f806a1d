"""The stack file applied to the running stack: `reload` (an edit, `stackvisor reload`)
and `converge` (`up` against a stack that runs: the file, then what is missing started).

What changes is decided in `plans` (pure); this carries it out on the supervisor's
runners. A mixin of `Supervisor`: the attributes below are the supervisor's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from stackvisor import graph
from stackvisor.config import ConfigError, ReloadDiff, diff_configs, load_config
from stackvisor.config.schema import Service, StackConfig
from stackvisor.errors import ActionConflict
from stackvisor.runtime import plans
from stackvisor.runtime.assignments import PortAssignments, fixed
from stackvisor.runtime.command import HeldSocket
from stackvisor.runtime.events import EventBus, Reloaded, ReloadFailed
from stackvisor.runtime.service import ServiceRunner
from stackvisor.runtime.states import State
from stackvisor.runtime.status import ConvergeResult, ReloadResult


class Reloading:
    config: StackConfig
    runners: dict[str, ServiceRunner]
    ports: PortAssignments
    selection: set[str]
    requested: list[str]
    profiles: set[str]
    last_reload: ReloadResult | None
    bus: EventBus
    logger: Any
    _actions: asyncio.Lock

    if TYPE_CHECKING:  # the supervisor's, too

        @property
        def stopping(self) -> bool: ...

        def _runner(self, svc: Service) -> ServiceRunner: ...

        def _check_not_stopping(self) -> asyncio.TaskGroup: ...

        def record(self) -> None: ...

        def keep_scale(self, new: StackConfig) -> StackConfig: ...

        def watch_added(self, name: str, tg: asyncio.TaskGroup) -> bool: ...

        def unwatch(self, name: str, *, keep_proxy: bool = False, heir: str | None = None) -> None: ...

        def close_kept_proxies(self) -> None: ...

        def schedule_added(self, name: str, tg: asyncio.TaskGroup, *, paused: bool = False) -> bool: ...

        def started_by_up(self, name: str) -> bool: ...

        def unschedule(self, name: str) -> None: ...

        async def stop_services(
            self, names: Iterable[str], *, keep_sockets: Collection[str] = ()
        ) -> None: ...

    async def converge(self, names: Sequence[str], profiles: Sequence[str] = ()) -> ConvergeResult:
        """`up [SERVICE...]` against this running stack, as `docker compose up -d`: apply the
        file, make the named services (none named: the whole stack, with the services of
        `profiles` and of the profiles already active) part of what runs, and
        start those of them that are neither running nor on their way. LookupError names
        a service the file does not have (after the reload)."""
        result = await self.reload(source="up")
        if not result["ok"]:
            return {"reload": result, "started": []}
        if unknown := [n for n in names if n not in self.config.services and n not in self.config.groups]:
            raise LookupError(", ".join(unknown))
        async with self._actions:
            tg = self._check_not_stopping()
            if not names:
                self.requested = []
            elif self.requested:
                self.requested = [*self.requested, *(n for n in names if n not in self.requested)]
            self.profiles |= set(profiles)
            wanted = plans.selection(self.config, names, self.profiles)
            added = sorted(wanted - self.selection)
            self.selection |= wanted
            self.ports.reserve(added)
            for name in added:  # first: a public port is resolved before the start
                self.watch_added(name, tg)  # its proxy, its idle stop, its lease; on demand: idle
            started = []
            for name in graph.start_order(self.config.graph()):
                runner = self.runners[name]
                if name in wanted and self.schedule_added(name, tg):
                    continue  # it runs on its schedule (again, if it was stopped by hand)
                if name not in wanted or (not self.started_by_up(name) and runner.state is not State.FAILED):
                    continue  # on demand: a connection starts it (a failed one starts now, as `start` does)
                if not runner.running and runner.state is not State.COMPLETED:
                    runner.start(tg)
                    started.append(name)
        return {"reload": result, "started": started}

    async def reload(self, *, dry_run: bool = False, source: str = "request") -> ReloadResult:
        """Re-read the stack file and apply what changed; an invalid file changes nothing."""
        async with self._actions:
            if self.stopping:
                raise ActionConflict("the stack is stopping")
            try:
                new = await asyncio.to_thread(load_config, self.config.path)
            except ConfigError as exc:
                return self._reload_failed(str(exc), dry_run, source)
            except OSError as exc:
                return self._reload_failed(f"{self.config.path}: {exc.strerror or exc}", dry_run, source)
            except Exception as exc:  # noqa: BLE001 - a file that breaks the loader is still only a refused edit
                why = f"{self.config.path}: cannot be read ({type(exc).__name__}: {exc})"
                return self._reload_failed(why, dry_run, source)
            new = self.keep_scale(new)  # a count `scale` set holds until the file's changes
            diff, plan = self._plan_to(new)
            result = plans.reload_result(plan, dry_run=dry_run, source=source, now=time.time())
            if dry_run:
                return result
            if not diff.is_empty():
                await self._apply(new, plan)
            self.last_reload = result
            self.bus.publish(Reloaded.of(result))
            self.logger.info("reloaded: " + "; ".join(diff.describe()), source=source)
            return result

    def _reload_failed(self, error: str, dry_run: bool, source: str) -> ReloadResult:
        result = plans.failed_reload(error, dry_run=dry_run, source=source, now=time.time())
        if not dry_run:
            self.last_reload = result
            self.bus.publish(ReloadFailed(error, source))
            self.logger.error(f"reload failed, nothing changed:\n{error}", source=source)
        return result

    def _plan_to(self, new: StackConfig) -> tuple[ReloadDiff, plans.ReloadPlan]:
        """What going from the running configuration to `new` changes, and the plan that does it."""
        diff = diff_configs(self.config, new)
        return diff, plans.plan_reload(
            self.config,
            new,
            diff,
            requested=self.requested,
            running={n for n, r in self.runners.items() if r.running},
            stopped_by_hand={n for n, r in self.runners.items() if r.state is State.STOPPED},
            profiles=self.profiles,
        )

    async def _apply(self, new: StackConfig, plan: plans.ReloadPlan) -> None:
        tg = self._check_not_stopping()
        # Stopping needs the old graph (removed services are only there).
        await self.stop_services(plan.stop, keep_sockets=plan.keep_sockets)
        handed: dict[str, HeldSocket] = {}  # by heir: the listener a removed service left
        kept: dict[str, int | None] = {}  # by service: the port of a listener that stays
        for name in plan.diff.removed:
            heir = plan.heirs.get(name)
            self.unwatch(name, keep_proxy=heir is not None, heir=heir)
            self.unschedule(name)
            runner = self.runners.pop(name)
            if heir is not None:
                handed[heir], kept[heir] = runner.hand_socket(), self.ports.ports.get(name)
            runner.close()
            self.ports.forget(name)
        self.config = self.ports.config = new
        self.record()
        try:
            for name in plan.diff.changed:
                # Made again below from what the service says now (with its proxy, if it stays).
                self.unwatch(name, keep_proxy=name in plan.keep_sockets)
                self.unschedule(name)
                runner = self.runners[name]
                runner.reconfigure(new.services[name], keep_socket=name in plan.keep_sockets)
                if name in plan.keep_sockets:  # where its listener is (moved by a conflict, maybe)
                    kept[name] = self.ports.ports.get(name)
                elif not isinstance(new.services[name].port, str):  # `auto` keeps the port it has
                    self.ports.set(name, runner.port)
            for name in plan.diff.added:
                svc = new.services[name]
                self.runners[name] = self._runner(svc)
                self.runners[name].open()
                if name in handed:
                    self.runners[name].take_socket(handed.pop(name))
                self.ports.set(name, kept.get(name, fixed(svc)))
            for name, runner in self.runners.items():  # a dependency on a group names its copies now
                if name not in plan.diff.changed and runner.config != new.services[name]:
                    runner.retarget(new.services[name])
            self.selection = set(plan.selection)
            watched = [*plan.diff.changed, *plan.diff.added]
            # Their ports are the stack's now, also for one that waits (on demand) to start.
            self.ports.reserve(sorted(n for n in watched if n in self.selection and n not in kept))
            waiting = {n for n in watched if n in self.selection and self.watch_added(n, tg)}  # on demand
        finally:  # a proxy or a socket kept for a service not watched again (or a failure) closes
            self.close_kept_proxies()
            for held in handed.values():
                held.close()
        # A scheduled one waits for its tick, also after an edit; one stopped by hand stays so.
        waiting |= {
            n
            for n in watched
            if n in self.selection and self.schedule_added(n, tg, paused=n not in plan.start)
        }
        for name in plan.start:
            if not self.runners[name].running and name not in waiting:
                self.runners[name].start(tg)
