"""The stack: one task group owning every service's lifecycle, and the clean stop.

The supervisor starts each selected service's lifecycle at once — a service waits
only for its own `depends_on` conditions, so independent services start in
parallel rather than level by level. It owns the shared pieces the services use
(event bus, state.db, logs, the port assignments) and is the one place that
decides the order of stopping: dependents before their dependencies, independent
services in parallel, and afterwards every process that is still ours.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import structlog

from stackvisor import graph
from stackvisor.config.interpolate import port_env
from stackvisor.config.schema import StackConfig, Strategy
from stackvisor.runtime import process
from stackvisor.runtime.events import EventBus
from stackvisor.runtime.logs import Console, RotatingFile, ServiceLog
from stackvisor.runtime.service import ServiceRunner, StartError
from stackvisor.runtime.state import StateDB
from stackvisor.runtime.states import ALIVE, State


def state_dir(config: StackConfig) -> Path:
    return config.root / ".stackvisor"


class Supervisor:
    def __init__(
        self,
        config: StackConfig,
        *,
        console: Console,
        strategy: Strategy | None = None,
        logger: Any = None,
        owns_process_tree: bool = False,
    ) -> None:
        self.config = config
        self.root = config.root
        self.pid = os.getpid()
        self.instance = f"{self.pid}-{time.time():.0f}"
        self.started_at = time.time()
        self.strategy = strategy
        # In its own process (the CLI) everything below the supervisor is its to end;
        # embedded (tests, tools), only what carries its marker.
        self.owns_process_tree = owns_process_tree
        self.logger = logger or structlog.get_logger("stackvisor")
        self.state_db = StateDB(state_dir(config) / "state.db", self.pid)
        self.bus = EventBus(record=self.state_db.record_event)
        self.console = console
        self.ports: dict[str, int | None] = {
            name: svc.port if isinstance(svc.port, int) else None
            for name, svc in config.services.items()
        }
        self.runners: dict[str, ServiceRunner] = {}
        for name, svc in config.services.items():
            self.runners[name] = self._runner(svc)
        self.selection: set[str] = set(config.services)
        self.tg: asyncio.TaskGroup | None = None
        self._stop_requested = asyncio.Event()
        self._stop_reason = ""
        self._interrupts = 0

    def _runner(self, svc: Any) -> ServiceRunner:
        logs_dir = self.root / self.config.settings.logs_dir
        file = RotatingFile(
            logs_dir / f"{svc.name}.log",
            self.config.settings.log_max_bytes,
            self.config.settings.log_backups,
        )
        return ServiceRunner(self, svc, ServiceLog(svc.name, file, self.console))

    # ----- what the services ask of the stack ----------------------------------------

    def port_env(self, name: str) -> dict[str, str]:
        return port_env(self.ports, own=name)

    async def secure_port(self, runner: ServiceRunner) -> int | None:
        """The port the service will use, after any conflict on it is resolved."""
        svc = runner.config
        if svc.port is None:
            return None
        from stackvisor.ports.resolve import PortConflictError, PortContext, secure_port

        ours = {
            (r.child.pid, r.child.started)
            for r in self.runners.values()
            if r.child is not None and r.child.alive
        }
        ctx = PortContext.from_config(
            self.config,
            strategy_override=self.strategy,
            known_children=self.state_db.known_children() - ours,
            taken={p for n, p in self.ports.items() if n != runner.name and p is not None},
        )
        ctx.grace = self.config.stop_timeout(svc)
        try:
            resolution = await secure_port(svc, ctx)
        except PortConflictError as exc:
            self._record_conflict(runner.name, getattr(exc, "record", None))
            raise StartError(str(exc)) from None
        self._record_conflict(runner.name, resolution.conflict)
        self.ports[runner.name] = resolution.port
        return resolution.port

    def _record_conflict(self, name: str, record: Any) -> None:
        if record is None:
            return
        data = record.as_dict() if hasattr(record, "as_dict") else dict(vars(record))
        data.pop("service", None)
        self.bus.publish("port_conflict", name, **data)
        self.logger.warning("port conflict", service=name, **data)

    def log_event(self, name: str, old: State, new: State, reason: str) -> None:
        self.logger.info(f"{name}: {new}", service=name, old=str(old), new=str(new), reason=reason)

    # ----- running ---------------------------------------------------------------------

    def select(self, names: Iterable[str] | None) -> set[str]:
        names = list(names or [])
        if not names:
            return set(self.config.services)
        return graph.closure(self.config.graph(), names)

    async def run(self, selection: Iterable[str] | None = None, *, until_done: bool = False) -> int:
        """Run the selected services until asked to stop; the exit status of `up`."""
        process.become_subreaper()
        self.selection = self.select(selection)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        self.bus.publish("stack", None, event="up", services=sorted(self.selection))
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                for name in graph.start_order(self.config.graph()):
                    if name in self.selection:
                        self.runners[name].start(tg)
                if until_done:
                    tg.create_task(self._stop_when_done())
                await self._stop_requested.wait()
                await self.shutdown()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                loop.remove_signal_handler(sig)
            self.bus.publish("stack", None, event="down", reason=self._stop_reason)
            self.state_db.close()
        failed = [r.name for r in self.runners.values() if r.state is State.FAILED]
        return 1 if failed else 0

    def request_stop(self, reason: str = "") -> None:
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()

    def _on_signal(self, sig: int) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.logger.info(
                f"{signal.Signals(sig).name}: stopping the stack (again to kill at once)"
            )
            self.request_stop(signal.Signals(sig).name)
        else:
            self.logger.warning("second interrupt: killing everything now")
            for runner in self.runners.values():
                runner.kill_now()
            self._kill_leftovers()

    def _reap(self) -> None:
        process.reap_orphans()

    async def _stop_when_done(self) -> None:
        def done() -> bool:
            return all(
                self.runners[n].settled and not self.runners[n].running for n in self.selection
            )

        await self.bus.wait_until(done)
        self.request_stop("every service has ended")

    async def stop_services(self, names: Iterable[str]) -> None:
        """Stop `names`, each after every running dependent of it among `names`."""
        names = set(names)
        dependents: dict[str, set[str]] = {n: set() for n in names}
        for name in names:
            for dep in self.config.services[name].depends_on:
                if dep in dependents:
                    dependents[dep].add(name)
        done: dict[str, asyncio.Event] = {n: asyncio.Event() for n in names}

        async def stop_one(name: str) -> None:
            for dependent in dependents[name]:
                await done[dependent].wait()
            try:
                await self.runners[name].stop()
            finally:
                done[name].set()

        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(stop_one(name))

    async def shutdown(self) -> None:
        await self.stop_services(self.runners)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Whatever is still below us (a daemonised grandchild, say) is ended now."""
        leftovers = {p.pid: p for p in process.marked(self.instance + "/", prefix=True)}
        if self.owns_process_tree:
            try:
                leftovers.update((p.pid, p) for p in psutil.Process().children(recursive=True))
            except psutil.Error:
                pass
        leftovers.pop(os.getpid(), None)
        process.kill_all(leftovers.values())
        process.reap_orphans()

    # ----- reporting ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "pid": self.pid,
            "file": str(self.config.path),
            "started_at": self.started_at,
            "services": [self.runners[n].status() for n in graph.start_order(self.config.graph())],
        }

    def alive_count(self) -> int:
        return sum(1 for r in self.runners.values() if r.state in ALIVE)
