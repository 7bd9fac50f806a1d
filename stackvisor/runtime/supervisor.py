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
import itertools
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

from stackvisor import graph
from stackvisor.config import ConfigError, ReloadDiff, diff_configs, load_config, restart_set
from stackvisor.config.interpolate import port_env
from stackvisor.config.schema import StackConfig, Strategy
from stackvisor.control import sockets
from stackvisor.ports.resolve import PortConflictError, PortContext, secure_port
from stackvisor.runtime import orphans, process
from stackvisor.runtime.events import EventBus
from stackvisor.runtime.logs import Console, RotatingFile, ServiceLog
from stackvisor.runtime.service import ServiceRunner, StartError
from stackvisor.runtime.state import StateDB
from stackvisor.runtime.watch import watch_stack
from stackvisor.runtime.states import State


_instances = itertools.count(1)

# Settings that take effect only when the supervisor starts again.
RESTART_SETTINGS = frozenset({"control", "logs_dir", "log_max_bytes", "log_backups", "reload"})


def state_dir(config: StackConfig) -> Path:
    return config.root / ".stackvisor"


class ActionConflict(Exception):
    """An action that the current state does not allow (HTTP 409)."""


@dataclass
class Lease:
    """Stop the stack when `exit_with` exits, or when no heartbeat came for `seconds`."""

    exit_with: int | None = None
    seconds: float | None = None


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
        created = process.create_time(self.pid) or time.time()
        # Every child carries "<instance>/<service>/<n>": unique across supervisors and runs.
        self.instance = f"{self.pid}-{created:.2f}-{next(_instances)}"
        self.started_at = time.time()
        self.strategy = strategy
        # In its own process (the CLI) everything below the supervisor is its to end;
        # embedded (tests, tools), only what carries its marker.
        self.owns_process_tree = owns_process_tree
        self.logger = logger or structlog.get_logger("stackvisor")
        state_dir(config).mkdir(mode=0o700, exist_ok=True)
        os.chmod(state_dir(config), 0o700)  # ours: lock, state, socket, token
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
        self.lock = sockets.StackLock(self.root)
        self.socket_path = sockets.socket_path(self.root, config.settings.control.socket)
        self.lease = Lease()
        self._lease_deadline: float | None = None
        self.last_reload: dict[str, Any] | None = None
        self.requested: list[str] = []  # what `up` named; [] = everything
        # Children recorded by earlier runs: a holder among them is a stale copy (level low).
        self.earlier_children = self.state_db.known_children()
        # One action at a time (start, stop, restart, reload): each sees the others' result.
        self._actions = asyncio.Lock()
        self._port_lock = asyncio.Lock()

    Conflict = ActionConflict

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
        # One resolution at a time: two services migrating at once must not both pick
        # the same free port. (A free port is answered without suspending at all.)
        async with self._port_lock:
            ctx = PortContext.from_config(
                self.config,
                strategy_override=self.strategy,
                known_children=self.earlier_children,
                taken={p for n, p in self.ports.items() if n != runner.name and p is not None},
            )
            ctx.grace = self.config.stop_timeout(svc)
            try:
                resolution = await secure_port(svc, ctx)
            except PortConflictError as exc:
                self._record_conflict(runner.name, getattr(exc, "record", None))
                raise StartError(str(exc)) from None
            self.ports[runner.name] = resolution.port
        self._record_conflict(runner.name, resolution.conflict)
        return resolution.port

    def _record_conflict(self, name: str, record: Any) -> None:
        if record is None:
            return
        data = record.as_dict() if hasattr(record, "as_dict") else dict(vars(record))
        data.pop("service", None)
        self.bus.publish("port_conflict", name, **data)
        self.logger.warning("port conflict", service=name, **data)

    def log_event(self, name: str, old: State, new: State, reason: str) -> None:
        # "pending" is bookkeeping: in the JSON log, not on the terminal.
        log = self.logger.debug if new is State.PENDING else self.logger.info
        log(f"{name}: {new}", service=name, old=str(old), new=str(new), reason=reason)

    # ----- running ---------------------------------------------------------------------

    def select(self, names: Iterable[str] | None) -> set[str]:
        names = list(names or [])
        if not names:
            return set(self.config.services)
        return graph.closure(self.config.graph(), names)

    async def run(
        self,
        selection: Iterable[str] | None = None,
        *,
        until_done: bool = False,
        control: bool = True,
        lease: Lease | None = None,
    ) -> int:
        """Run the selected services until asked to stop; the exit status of `up`.

        Raises `sockets.AlreadyRunning` (before touching anything) when another
        supervisor holds this stack.
        """
        self.lock.acquire()
        try:
            return await self._run(selection, until_done=until_done, control=control, lease=lease)
        finally:
            # In its own process the lock goes with the process, so `down`, which waits
            # for it, returns only once the supervisor is really gone.
            if not self.owns_process_tree:
                self.lock.release()

    async def _run(
        self, selection: Iterable[str] | None, *, until_done: bool, control: bool, lease: Lease | None
    ) -> int:
        if self.owns_process_tree:
            # Embedded in another program, we leave its process semantics alone.
            process.become_subreaper()
        self.requested = list(selection or [])
        self.selection = self.select(self.requested)
        self.lease = lease or Lease()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        server = None
        try:
            for ended in await orphans.end_orphans(self.state_db, self.instance):
                self.logger.warning(ended.describe())
                self.bus.publish("orphan", ended.service, pid=ended.pid, message=ended.describe())
            if control:
                server = await self._serve()
            self.bus.publish("stack", None, event="up", services=sorted(self.selection))
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                for name in graph.start_order(self.config.graph()):
                    if name in self.selection:
                        self.runners[name].start(tg)
                watchers = [tg.create_task(self._stop_when_done())] if until_done else []
                if self.config.settings.reload:
                    watchers.append(tg.create_task(watch_stack(self)))
                if self.lease.exit_with is not None:
                    watchers.append(tg.create_task(self._watch_pid(self.lease.exit_with)))
                if self.lease.seconds is not None:
                    watchers.append(tg.create_task(self._watch_lease(self.lease.seconds)))
                await self._stop_requested.wait()
                for watcher in watchers:
                    watcher.cancel()
                await self.shutdown()
        finally:
            # Whatever ended the run (also an error), nothing of ours stays behind.
            self._kill_leftovers()
            # Published while the socket still serves, so event streams see the end.
            self.bus.publish("stack", None, event="down", reason=self._stop_reason)
            if server is not None:
                await server.close()
                self.socket_path.unlink(missing_ok=True)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                loop.remove_signal_handler(sig)
            self.state_db.close()
        failed = [r.name for r in self.runners.values() if r.state is State.FAILED]
        return 1 if failed else 0

    async def _serve(self) -> Any:
        from stackvisor.control.server import ControlServer, ensure_token, parse_tcp

        settings = self.config.settings.control
        token = None
        tcp = None
        if settings.tcp:
            tcp = parse_tcp(settings.tcp)
            token = ensure_token(state_dir(self.config) / "token")
        server = ControlServer(self, token)
        await server.start(sockets.bind_unix(self.socket_path), tcp)
        return server

    async def _watch_pid(self, pid: int) -> None:
        """--exit-with: stop the stack when `pid` exits (a CI job that was killed)."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self.request_stop(f"pid {pid} (--exit-with) is gone")
            return
        gone = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        self.request_stop(f"pid {pid} (--exit-with) exited")

    def heartbeat(self) -> float | None:
        if self.lease.seconds is None:
            return None
        self._lease_deadline = time.monotonic() + self.lease.seconds
        return self.lease.seconds

    async def _watch_lease(self, seconds: float) -> None:
        self._lease_deadline = time.monotonic() + seconds
        while True:
            left = self._lease_deadline - time.monotonic()
            if left <= 0:
                self.request_stop(f"no heartbeat for {seconds:g}s (--lease)")
                return
            await asyncio.sleep(left)

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        return self._stop_requested

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
        runners = {n: self.runners[n] for n in names if n in self.runners}
        names = set(runners)
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
                await runners[name].stop()
            finally:
                done[name].set()

        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(stop_one(name))

    def _check_not_stopping(self) -> None:
        if self._stop_requested.is_set():
            raise ActionConflict("the stack is stopping")
        if self.tg is None:
            raise ActionConflict("the stack is not running yet")

    async def start_service(self, name: str) -> None:
        """Start `name` and whatever it needs that is not running."""
        async with self._actions:
            self._start_service(name)

    def _start_service(self, name: str) -> None:
        self._check_not_stopping()
        if name not in self.runners:
            raise ActionConflict(f"{name} is no longer a service of this stack")
        runner = self.runners[name]
        if runner.running:
            raise ActionConflict(f"{name} is already {runner.state}")
        needed = graph.closure(self.config.graph(), [name])
        self.selection |= needed
        assert self.tg is not None
        for dep in graph.start_order({n: list(self.config.services[n].depends_on) for n in needed}):
            if not self.runners[dep].running and (dep == name or self.runners[dep].state is not State.COMPLETED):
                self.runners[dep].start(self.tg)

    async def stop_service(self, name: str) -> None:
        async with self._actions:
            self._check_not_stopping()
            runner = self.runners.get(name)
            if runner is None or not runner.running:
                state = runner.state if runner else "gone"
                raise ActionConflict(f"{name} is not running (it is {state})")
            await runner.stop("stopped on request")

    def restart_cascade(self, names: Iterable[str]) -> set[str]:
        """`names` plus, transitively, every dependent whose depends_on says restart: true."""
        return restart_set(ReloadDiff(changed=tuple(names)), self.config)

    async def restart_services(self, names: Iterable[str]) -> None:
        """Stop the services (dependents first) and start them again in dependency order."""
        async with self._actions:
            await self._restart_services(list(names))

    async def _restart_services(self, names: list[str]) -> None:
        self._check_not_stopping()
        missing = [n for n in names if n not in self.runners]
        if missing:
            raise ActionConflict(f"{', '.join(missing)}: no longer a service of this stack")
        cascade = self.restart_cascade(names)
        # Dependents that are not running stay as they are; the named ones always start.
        named = set(names)
        targets = {n for n in cascade if n in named or self.runners[n].running}
        for name in targets:
            self.runners[name].keep_listener = True  # a restart keeps an inherited socket
        try:
            await self.stop_services(n for n in targets if self.runners[n].running)
        finally:
            for name in targets:
                self.runners[name].keep_listener = False
        if self.stopping:
            for name in targets:
                self.runners[name].close_listener()
            raise ActionConflict("the stack began stopping during the restart")
        assert self.tg is not None
        for name in graph.start_order(self.config.graph()):
            if name in targets:
                self.runners[name].start(self.tg)

    # ----- reload ----------------------------------------------------------------------

    async def reload(self, *, dry_run: bool = False, source: str = "request") -> dict[str, Any]:
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
            diff = diff_configs(self.config, new)
            restarts = sorted(restart_set(diff, new) & set(self.runners))
            result: dict[str, Any] = {
                "ok": True,
                "dry_run": dry_run,
                "source": source,
                "time": time.time(),
                "added": list(diff.added),
                "removed": list(diff.removed),
                "changed": list(diff.changed),
                "restarted": [n for n in restarts if n in self.select_in(new)],
                "settings_changed": list(diff.settings_changed),
                "needs_supervisor_restart": [
                    f for f in diff.settings_changed if f in RESTART_SETTINGS
                ],
                "summary": diff.describe(),
            }
            if dry_run:
                return result
            if not diff.is_empty():
                await self._apply(new, diff, restarts)
            self.last_reload = result
            self.bus.publish("reload", None, **{k: v for k, v in result.items() if k != "ok"})
            self.logger.info("reloaded: " + "; ".join(diff.describe()), source=source)
            return result

    def _reload_failed(self, error: str, dry_run: bool, source: str) -> dict[str, Any]:
        result = {"ok": False, "dry_run": dry_run, "source": source, "time": time.time(), "error": error}
        if not dry_run:
            self.last_reload = result
            self.bus.publish("reload_failed", None, error=error, source=source)
            self.logger.error(f"reload failed, nothing changed:\n{error}", source=source)
        return result

    def select_in(self, config: StackConfig) -> set[str]:
        """The selection under `config`: what `up` named (still there) and what it needs."""
        if not self.requested:
            return set(config.services)
        names = [n for n in self.requested if n in config.services]
        return graph.closure(config.graph(), names) if names else set()

    async def _apply(self, new: StackConfig, diff: ReloadDiff, restarts: list[str]) -> None:
        assert self.tg is not None
        going = [n for n in (*diff.removed, *restarts) if self.runners[n].running]
        # Stopping needs the old graph (removed services are only there).
        await self.stop_services(going)
        for name in diff.removed:
            runner = self.runners.pop(name)
            runner.close_listener()
            runner.log.file.close()
            self.ports.pop(name, None)
        self.config = new
        for name in diff.changed:
            runner = self.runners[name]
            runner.close_listener()  # the new config may move or drop the port
            runner.config = new.services[name]
            if isinstance(runner.config.port, int) or runner.config.port is None:
                runner.port = runner.config.port if isinstance(runner.config.port, int) else None
                self.ports[name] = runner.port
        for name in diff.added:
            svc = new.services[name]
            self.runners[name] = self._runner(svc)
            self.ports[name] = svc.port if isinstance(svc.port, int) else None
        self.selection = self.select_in(new)
        # Changed services start again even if they had failed (the edit may be the fix);
        # one stopped by hand stays stopped.
        by_hand = {n for n in restarts if n not in going and self.runners[n].state is State.STOPPED}
        starting = set(diff.added) | (set(restarts) - by_hand)
        for name in graph.start_order(new.graph()):
            if name in starting and name in self.selection and not self.runners[name].running:
                self.runners[name].start(self.tg)

    async def shutdown(self) -> None:
        await self.stop_services(self.runners)
        for runner in self.runners.values():
            runner.close_listener()
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
        services = []
        for name in graph.start_order(self.config.graph()):
            entry = self.runners[name].status()
            entry["selected"] = name in self.selection
            services.append(entry)
        return {
            "name": self.config.name,
            "pid": self.pid,
            "file": str(self.config.path),
            "started_at": self.started_at,
            "stopping": self._stop_requested.is_set(),
            "reload": self.last_reload,
            "services": services,
        }
