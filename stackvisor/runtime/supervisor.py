"""The stack: one task group owning every service's lifecycle, and the clean stop.

Each selected service's lifecycle starts at once and waits only for its own
`depends_on` conditions, so independent services start in parallel. The supervisor
owns what the services share (event bus, state.db, logs, port assignments, the
spawner and its signal gate) and carries out the order of stopping: dependents
first, independent services in parallel, then every process that is still ours.
What to restart and what a reload changes are decided in `plans`; what happens to
one service in `lifecycle`. The control socket and file watching are not known
here: the composition root (`stackvisor.app`) wires them in as companions.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import signal
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from stackvisor import graph, stackref
from stackvisor.config.replicas import group_of
from stackvisor.config.schema import Service, StackConfig, Strategy
from stackvisor.errors import ActionConflict
from stackvisor.paths import stack_paths
from stackvisor.runtime import orphans, plans
from stackvisor.runtime.activation import Activating, Activation
from stackvisor.runtime.assignments import PortAssignments
from stackvisor.runtime.clock import Clock, MonotonicClock
from stackvisor.runtime.context import RunnerContext
from stackvisor.runtime.deadman import Lease, end_left_by, watches
from stackvisor.runtime.dependencies import DependencyFacts
from stackvisor.runtime.events import EventBus, OrphanEnded, StackChanged
from stackvisor.runtime.freshness import follow
from stackvisor.runtime.logs import Console, RotatingFile, ServiceLog
from stackvisor.runtime.process import Spawner, become_subreaper
from stackvisor.runtime.reloading import Reloading
from stackvisor.runtime.resources import Meter
from stackvisor.runtime.scaling import Scaling
from stackvisor.runtime.scheduling import Scheduler, Scheduling
from stackvisor.runtime.service import ServiceRunner
from stackvisor.runtime.state import Ledger, StateDB
from stackvisor.runtime.states import State
from stackvisor.runtime.status import ReloadResult, Resources, ServiceStatus, StackStatus
from stackvisor.runtime.stopping import kill_leftovers, stop_in_order
from stackvisor.system.files import Folder, dir_mode, secure_dir
from stackvisor.system.signals import SignalGate

if TYPE_CHECKING:
    from stackvisor.runtime.reports import Reporter

Companion = Callable[["Supervisor"], Coroutine[Any, Any, None]]

__all__ = ["Companion", "Lease", "Supervisor"]


class Supervisor(Reloading, Activating, Scheduling, Scaling):
    def __init__(
        self,
        config: StackConfig,
        *,
        console: Console,
        strategy: Strategy | None = None,
        logger: Any = None,
        owns_process_tree: bool = False,
        clock: Clock | None = None,
        profiles: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.profiles = set(profiles)  # Compose's: which services with `profiles` run
        self.paths = stack_paths(config)
        self.logs_folder = Folder(self.paths.logs)  # held open from `open` (see system.files)
        self.pid = os.getpid()
        # Every child carries "<instance>/<service>/<n>": unique across supervisors and runs.
        self.instance = f"{self.pid}-{secrets.token_hex(4)}"
        self.started_at = time.time()
        # In its own process (the CLI) everything below the supervisor is its to end;
        # embedded (tests, tools), only what carries its marker.
        self.owns_process_tree = owns_process_tree
        self.logger = logger or structlog.get_logger("stackvisor")
        self.clock: Clock = clock or MonotonicClock()
        self.gate = SignalGate()
        self.spawner = Spawner(self.gate, subreaper=owns_process_tree)
        self.ledger = Ledger(self.paths.state_db, self.pid, self.instance)  # opened by `open`
        self.bus = EventBus(record=self.ledger.record_event)
        self.meter = Meter(self.clock)
        self.console = console
        self.ports = PortAssignments(
            config, bus=self.bus, logger=self.logger, gate=self.gate, strategy=strategy
        )
        self._context = RunnerContext(
            root=config.root,
            instance=self.instance,
            bus=self.bus,
            clock=self.clock,
            spawner=self.spawner,
            owners=self.ports.owners,
            ledger=self.ledger,
            logger=self.logger,
            secure_port=self.ports.secure,
            reached_on=self.ports.reached_on,
            port_env=self.ports.env,
            stop_timeout=self._stop_timeout,
            dependency=self._dependency,
            stopping=lambda: self.stopping,
            transition_logged=self._log_transition,
        )
        self.runners: dict[str, ServiceRunner] = {
            name: self._runner(svc) for name, svc in config.services.items()
        }
        self.selection: set[str] = set(config.services)
        self.tg: asyncio.TaskGroup | None = None
        self.activations: dict[str, Activation] = {}  # on demand, idle_stop, lease (see activation)
        self._activation_tasks: dict[str, asyncio.Task[None]] = {}  # by service: a reload ends some
        self._kept_proxies = {}
        self.schedules: dict[str, Scheduler] = {}  # services with `schedule` (see scheduling)
        self._stop_requested = asyncio.Event()
        self._stop_reason = ""
        self._interrupts = 0
        self.lease = Lease()
        self.last_reload: ReloadResult | None = None
        self.reporter: Reporter | None = None  # with settings.report (see `reports.reporting`)
        self.requested: list[str] = []  # what `up` named; [] = everything
        self.scaled: dict[str, tuple[int, int]] = {}  # counts set by `scale` (see scaling)
        # One action at a time (start, stop, restart, reload): each sees the others' result.
        self._actions = asyncio.Lock()

    def _runner(self, svc: Service) -> ServiceRunner:
        settings = self.config.settings
        file = RotatingFile(
            self.paths.service_log(svc.name),
            settings.log_max_bytes,
            settings.log_backups,
            on_error=lambda message: self.logger.warning(message, service=svc.name),
            mode=settings.logs_mode,
            folder=self.logs_folder,
        )
        return ServiceRunner(self._context, svc, ServiceLog(svc.name, file, self.console))

    # ----- what the services ask of the stack ------------------------------------------

    def _stop_timeout(self, svc: Service) -> float:
        return self.config.stop_timeout(svc)  # the settings of the latest reload

    def _dependency(self, name: str) -> DependencyFacts | None:
        runner = self.runners.get(name)
        return runner.facts() if runner is not None and name in self.selection else None

    def _log_transition(self, name: str, old: State, new: State, reason: str) -> None:
        # "pending" is bookkeeping: in the JSON log, not on the terminal.
        log = self.logger.debug if new is State.PENDING else self.logger.info
        log(f"{name}: {new}", service=name, old=str(old), new=str(new), reason=reason)
        if new is State.FAILED:  # it gave up: its port goes back to the registry
            self.ports.release(name)

    # ----- running ---------------------------------------------------------------------

    async def run(
        self,
        selection: Iterable[str] | None = None,
        *,
        until_done: bool = False,
        lease: Lease | None = None,
        companions: Sequence[Companion] = (),
    ) -> int:
        """Run the selected services until asked to stop; the exit status of `up`.
        `companions` run beside them (file watching), cancelled when the stack stops."""
        if self.owns_process_tree:  # embedded in another program, its process semantics stay
            become_subreaper()
        self.open()
        assert self.state_db is not None
        self.requested = list(selection or [])
        self.selection = plans.selection(self.config, self.requested, self.profiles)
        self.lease = lease or Lease()
        loop = asyncio.get_running_loop()
        self.catch_signals()
        loop.add_signal_handler(signal.SIGCHLD, self.spawner.reap_soon)
        try:
            stack = self.paths.cgroup_name
            for ended in await orphans.end_orphans(self.state_db, self.instance, self.spawner, stack=stack):
                self.logger.warning(ended.describe())
                self.bus.publish(OrphanEnded(ended.pid, ended.describe()), ended.service)
            self.ports.reserve(sorted(self.selection))
            self.bus.publish(StackChanged("up", services=tuple(sorted(self.selection))))
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                self.start_activations(tg)  # first: a public port is resolved before the start
                for name in graph.start_order(self.config.graph()):
                    if name in self.selection and self.started_by_up(name):
                        self.runners[name].start(tg)
                watchers: list[asyncio.Task[None]] = [tg.create_task(c(self)) for c in companions]
                self.start_schedules(tg)  # they end when the stack stops
                if until_done:
                    watchers.append(tg.create_task(self._stop_when_done()))
                left_by = functools.partial(end_left_by, self.spawner.gate)
                watchers += [
                    tg.create_task(w) for w in watches(self.lease, self.clock, self.request_stop, left_by)
                ]
                selected = lambda: [r for n, r in self.runners.items() if n in self.selection]  # noqa: E731
                watchers.append(
                    tg.create_task(follow(selected, self.bus, self.restart_services, self.logger))
                )
                await self._stop_requested.wait()
                for watcher in [*watchers, *self._activation_tasks.values()]:
                    watcher.cancel()
                await self.shutdown()
        finally:
            # Whatever ended the run (also an error), nothing of ours stays behind.
            kill_leftovers(self.instance, self.spawner, whole_tree=self.owns_process_tree)
            self.spawner.release()
            self.end_forwarding()
            # Published while the socket still serves, so event streams see the end.
            self.bus.publish(StackChanged("down", reason=self._stop_reason))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                loop.remove_signal_handler(sig)
            self.close()
        # Failed: gave up; for a stack of jobs, also one left `exited` by `restart: "no"`.
        failed = {State.FAILED, State.EXITED} if until_done else {State.FAILED}
        return int(any(r.state in failed for r in self.runners.values()))

    @property
    def state_db(self) -> StateDB | None:
        """state.db, with every event published so far written to it."""
        self.ledger.flush()
        return self.ledger.db

    def open(self) -> None:
        """The state folder (0700: lock, state, socket, token) and state.db. Idempotent."""
        if self.ledger.is_open:
            return
        secure_dir(self.paths.state_dir, 0o700)
        secure_dir(self.paths.logs, dir_mode(self.config.settings.logs_mode), adopt=self.paths.own_logs)
        self.logs_folder.open()
        note = self.ledger.open()
        if note is not None:
            self.logger.warning(note)
        self.ports.open_registry()
        self.ports.earlier_children = self.ledger.known_children()
        for runner in self.runners.values():
            runner.open()
        tracking = self.spawner.track(self.paths.cgroup_name)  # last: nothing fails after it
        self.ledger.tracked_in(tracking.base)
        self.logger.info(f"processes tracked by {tracking.kind} ({tracking.reason})")

    def record(self) -> None:
        """Say in the state folder which file runs and where its socket is (`stackref`):
        by the holder of the lock only, at start and after each reload that applied."""
        try:
            stackref.record(self.config, self.paths)
        except OSError as exc:
            self.logger.warning(f"cannot write {self.paths.record}: {exc}")

    def close(self) -> None:
        """Release the files (services' logs, state.db) and the spawn helper. Idempotent."""
        self.spawner.end_births()
        for runner in self.runners.values():
            runner.close()
        self.logs_folder.close()
        self.ports.close_registry()
        self.ledger.close()

    def is_running(self, name: str) -> bool:
        runner = self.runners.get(name)
        return runner is not None and runner.running

    def has_completed(self, name: str) -> bool:
        """A one-shot that ran to its end (exit 0)."""
        runner = self.runners.get(name)
        return runner is not None and not runner.running and runner.state is State.COMPLETED

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        return self._stop_requested

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()

    def catch_signals(self) -> None:
        """SIGINT, SIGTERM, SIGHUP stop the stack from now on (also before `run`). Idempotent."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            asyncio.get_running_loop().add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.logger.info(f"{signal.Signals(sig).name}: stopping the stack (again to kill at once)")
            self.request_stop(signal.Signals(sig).name)
        else:
            self.logger.warning("second interrupt: killing everything now")
            for runner in self.runners.values():
                runner.kill_now()
            kill_leftovers(self.instance, self.spawner, whole_tree=self.owns_process_tree)

    async def _stop_when_done(self) -> None:
        def done() -> bool:
            return all(self.runners[n].settled and not self.runners[n].running for n in self.selection)

        await self.bus.wait_until(done)
        self.request_stop("every service has ended")

    async def stop_services(self, names: Iterable[str], *, keep_sockets: Collection[str] = ()) -> None:
        """Stop `names`, each after every running dependent of it among `names`."""
        depends_on = {n: list(svc.depends_on) for n, svc in self.config.services.items()}
        await stop_in_order(self.runners, depends_on, names, keep_sockets=keep_sockets)

    def _check_not_stopping(self) -> asyncio.TaskGroup:
        if self._stop_requested.is_set():
            raise ActionConflict("the stack is stopping")
        if self.tg is None:
            raise ActionConflict("the stack is not running yet")
        return self.tg

    async def start_service(self, name: str) -> None:
        """Start `name` and whatever it needs that is not running."""
        async with self._actions:
            tg = self._check_not_stopping()
            if name not in self.runners:
                raise ActionConflict(f"{name} is no longer a service of this stack")
            runner = self.runners[name]
            if runner.running:
                raise ActionConflict(f"{name} is already {runner.state}")
            needed = graph.closure(self.config.graph(), [name])
            for added in sorted(needed - self.selection):  # out of the profiles until now
                self.selection.add(added)
                self.watch_added(added, tg)  # its proxy, idle stop, lease
            if self.requested and name not in self.requested:  # a later reload keeps it
                self.requested.append(name)
            for dep in graph.start_order({n: list(self.config.services[n].depends_on) for n in needed}):
                other = self.runners[dep]
                if not other.running and (dep == name or other.state is not State.COMPLETED):
                    other.start(tg)

    async def stop_service(self, name: str) -> None:
        async with self._actions:
            self._check_not_stopping()
            runner = self.runners.get(name)
            if runner is None or not (runner.running or runner.state is State.SCHEDULED):
                state = runner.state if runner else "gone"
                raise ActionConflict(f"{name} is not running (it is {state})")
            # An on-demand service waits idle again, on the same socket: connections that
            # come meanwhile wait for its next start.
            await runner.stop("stopped on request", keep_socket=runner.config.start == "on_demand")

    async def restart_services(self, names: Sequence[str]) -> None:
        """Stop the services (dependents first) and start them again in dependency order,
        with the dependents whose `depends_on` says `restart: true`."""
        async with self._actions:
            tg = self._check_not_stopping()
            missing = [n for n in names if n not in self.runners]
            if missing:
                raise ActionConflict(f"{', '.join(missing)}: no longer a service of this stack")
            running = {n for n, r in self.runners.items() if r.running}
            targets = plans.restart_targets(self.config, names, running)
            # A restart keeps an inherited socket: connections queue meanwhile.
            await self.stop_services((n for n in targets if n in running), keep_sockets=targets)
            if self.stopping:
                for name in targets:
                    self.runners[name].close_socket()
                raise ActionConflict("the stack began stopping during the restart")
            for name in graph.start_order(self.config.graph()):
                if name in targets:
                    self.runners[name].start(tg)

    async def shutdown(self) -> None:
        await self.stop_services(self.runners)
        for runner in self.runners.values():
            runner.close_socket()
        kill_leftovers(self.instance, self.spawner, whole_tree=self.owns_process_tree)

    # ----- reporting -------------------------------------------------------------------

    def service_status(self, name: str, figures: dict[str, Resources] | None = None) -> ServiceStatus:
        """One service as the stack's status lists it (`figures`: what each one uses)."""
        runner = self.runners[name]
        entry = runner.status()
        entry["selected"], entry["group"] = name in self.selection, group_of(self.config, name)
        self.schedule_status(name, entry)
        entry["resources"] = (figures or {}).get(name)
        asked = runner.config.port
        entry["labels"], entry["requested_port"], entry["namespace"] = (
            dict(runner.config.labels),
            asked if isinstance(asked, int) else None,
            runner.config.namespace,
        )
        if runner.config.socket == "proxy":  # the public port is the one to show
            entry["internal_port"], entry["port"] = self.ports.internal.get(name), self.ports.ports.get(name)
        if name in self.activations:
            entry.update(self.activations[name].figures())  # type: ignore[typeddict-item]
        return entry

    def status(self, *, resources: bool = False) -> StackStatus:
        """The stack's status; with `resources`, what each service uses (reading that
        costs a few milliseconds: asked for by people and scrapers, not by polling)."""
        running = {n: child for n, r in self.runners.items() if (child := r.process) is not None}
        figures = self.meter.read(running) if resources else {}
        services = [self.service_status(name, figures) for name in graph.start_order(self.config.graph())]
        status: StackStatus = {
            "name": self.config.name,
            "pid": self.pid,
            "file": str(self.config.path),
            "started_at": self.started_at,
            "stopping": self._stop_requested.is_set(),
            "tracking": self.spawner.tracking.kind,
            "reload": self.last_reload,
            "services": services,
        }
        if self.stopping:
            status["stop_reason"] = self._stop_reason
        return status
