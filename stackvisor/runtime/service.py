"""One service's life carried out: wait for dependencies, spawn, probe, restart, stop.

`ServiceRunner.lifecycle` is one coroutine per start of a service, run inside the
supervisor's task group; the process's output pump and health probe are its own
tasks in a nested group, so stopping a service ends exactly its tasks. What happens
next is never decided here: every event (the process started, exited, failed its
health check, a stop was asked) goes through the pure `lifecycle.step`, and this
module carries out the actions it returns and publishes the states it passes.

A runner knows its stack only through a `RunnerContext`: the few things it may ask
(publish an event, record a child, secure its port, the port environment, facts
about its dependencies). The supervisor talks to a runner through its methods.
"""

from __future__ import annotations

import asyncio
import time

from stackvisor.config.schema import Service
from stackvisor.config.users import UserSpec
from stackvisor.errors import StartError
from stackvisor.runtime import daemon
from stackvisor.runtime.command import HeldSocket
from stackvisor.runtime.context import RunnerContext
from stackvisor.runtime.dependencies import DependencyVerdict, dependencies_verdict, outage
from stackvisor.runtime.events import HealthChanged, Restarting, StateChanged
from stackvisor.runtime.freshness import Basis
from stackvisor.runtime.launch import launch
from stackvisor.runtime.lifecycle import (
    Action,
    AwaitDependencies,
    BackoffOver,
    Crashed,
    DependenciesMet,
    DependencyBroken,
    Ending,
    Exited,
    HealthVerdict,
    Idle,
    Life,
    LifeEvent,
    ListenFailed,
    Restart,
    Rules,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    StopRequested,
    Terminate,
    Terminating,
    may_have_lost_port,
    step,
)
from stackvisor.runtime.logs import ServiceLog, pump
from stackvisor.runtime.policy import Health
from stackvisor.runtime.probing import HealthProbe, port_taken_by_other
from stackvisor.runtime.process import Child
from stackvisor.runtime.servicefacts import ServiceFacts
from stackvisor.runtime.states import ALIVE, SETTLED, State
from stackvisor.runtime.stopping import until_stopped

_DRAIN_GRACE = 1.0


class ServiceRunner(ServiceFacts):
    def __init__(self, ctx: RunnerContext, config: Service, log: ServiceLog) -> None:
        self.ctx = ctx
        self.name = config.name
        self.log = log
        self._config = config
        self._rules = Rules.of(config)
        self._life = Life()
        self._reason = ""
        self._port: int | None = config.port if isinstance(config.port, int) else None
        self._child: Child | None = None
        self._exit_code: int | None = None
        self._health: Health | None = None
        self._started_at: float | None = None  # wall clock of the current process
        self._spawned = False  # since the last start request: for `service_started`
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._terminate = asyncio.Event()  # the step asked to end the process (unhealthy)
        self._spawn_count = 0
        self._runs = 0  # processes started but out of `idle`: what `restart: true` follows
        self._waking = False  # started out of `idle` (a connection, `start`): not "again"
        self._db_row: int | None = None
        self._listener = HeldSocket()  # with socket: inherit
        self._keep_socket = False  # set while a restart stops the service
        self._user: UserSpec | None = None  # who the current process runs as
        self._basis: Basis | None = None  # what the current run was started against

    # ----- what the stack may ask ------------------------------------------------------

    def start(self, tg: asyncio.TaskGroup) -> None:
        if self.running or self.ctx.stopping():
            return  # a start that raced a stop of the stack must not outlive it
        self._stop = asyncio.Event()
        self._spawned = False
        self._exit_code = None
        self._feed(Start())
        if self.state is not State.PENDING:
            return
        self._task = tg.create_task(self.lifecycle(), name=f"service:{self.name}")

    async def stop(self, reason: str = "stopped", *, keep_socket: bool = False) -> None:
        """Stop the service and wait until it has stopped. Safe to call in any state.

        `keep_socket`: a restart follows, so an inherited listening socket stays open
        and connections queue meanwhile.
        """
        self._stop.set()
        task = self._task
        self._keep_socket = keep_socket
        try:
            if task is not None:
                await asyncio.shield(task)
        finally:
            self._keep_socket = False
        # A start that came while we waited owns the service now: leave its state alone.
        if self._task is task and self.state in (State.PENDING, State.BACKOFF, State.SCHEDULED):
            self._feed(StopRequested(reason))

    def send_signal(self, sig: int) -> int | None:
        """`sig` to the process, not its group (a shell would die of a SIGHUP for its server)."""
        child = self._child
        if child is None or self.state not in ALIVE or not child.signal(sig, group=False):
            return None
        return child.pid

    def kill_now(self) -> None:
        """Second Ctrl-C: no grace period for anyone."""
        self._stop.set()
        if self._child is not None and self._child.alive:
            self._child.kill_now()

    def reconfigure(self, config: Service, *, keep_socket: bool = False) -> None:
        """Take a new configuration (a reload), applied at the next start. Its listening
        socket is closed (the port may move or go) unless `keep_socket` (`keeps_socket`)."""
        if not keep_socket:
            self.close_socket()
        self._config = config
        self._rules = Rules.of(config)
        if (isinstance(config.port, int) or config.port is None) and not self._listener.held:
            self._port = config.port  # a socket kept stays where it is (its port moved at up)

    def retarget(self, config: Service) -> None:
        """The same configuration but for the copies a dependency on a group names
        (a scale): nothing to restart, the dependencies checked from now on."""
        self._config = config

    def close_socket(self) -> None:
        self._listener.close()

    def hand_socket(self) -> HeldSocket:
        """Its listening socket, for the service that takes its port over (`plans.heirs`)."""
        held, self._listener = self._listener, HeldSocket()
        return held

    def take_socket(self, held: HeldSocket) -> None:
        self._listener.close()
        self._listener = held

    @property
    def listening_on(self) -> int | None:
        """`socket: inherit`: the port of the listening socket it holds, if it holds one."""
        return self._listener.port()

    def go_idle(self, reason: str, *, port: int | None = None) -> int | None:
        """`start: on_demand`: wait in `idle` (`schedule`: in `scheduled`); given its `port`
        (resolved), holding a socket listening there (its fd, for the supervisor to watch
        for a connection)."""
        if port is not None:
            self._port = port
        fd = None if port is None else self._listener.fileno(port)
        if self.state is self._rules.waits_in:  # waiting already (a reload moved its port)
            self._reason = reason
        self._feed(Idle(reason))
        return fd

    def listen_failed(self, reason: str) -> None:
        """The supervisor could not listen on the service's port for it: it fails."""
        self.close_socket()
        self._feed(ListenFailed(reason))

    def open(self) -> None:
        """Create the service's log file, so it is there to follow before any output."""
        self.log.open()

    def close(self) -> None:
        """The service is gone from the stack: release its socket and its log file."""
        self.close_socket()
        self.log.close()

    # ----- state -----------------------------------------------------------------------

    def _feed(self, event: LifeEvent) -> tuple[Action, ...]:
        """Apply `event` through the pure step; publish every state it passes through."""
        result = step(self._life, event, self.ctx.clock.now(), self._rules)
        old = self._life.state
        self._life = result.life
        for move in result.transitions:
            self._reason = move.reason
            if move.state is State.PENDING:
                self._waking = old is State.IDLE
            data = dict(move.data or {})
            self.ctx.bus.publish(
                StateChanged(
                    old=str(old),
                    new=str(move.state),
                    reason=move.reason,
                    pid=self._child.pid if self._child else None,
                    exit_code=self._exit_code,
                    port=data.get("port", self._port),
                    delay=data.get("delay"),
                    logs=tuple(self.log.last(20)) if move.state is State.FAILED else None,
                ),
                self.name,
            )
            self.ctx.transition_logged(self.name, old, move.state, move.reason)
            old = move.state
        return result.actions

    # ----- the lifecycle ---------------------------------------------------------------

    async def lifecycle(self) -> None:
        try:
            await self._lifecycle()
            if self.state in SETTLED and not self._keep_socket:
                self.close_socket()  # it ended for good: the port is free again
        except asyncio.CancelledError:
            self._abandon()
            raise
        except Exception as exc:  # a bug must fail this service, not the whole stack
            self.ctx.logger.exception("service crashed", service=self.name)
            self._abandon()
            self._feed(Crashed(f"internal error: {exc!r}"))

    def _abandon(self) -> None:
        """Leave nothing behind, and nothing unrecorded, when the lifecycle ends abnormally."""
        self.close_socket()
        if self._child is not None and self._child.alive:
            self._child.kill_now()
        if self._db_row is not None:
            self.ctx.ledger.child_exited(self._db_row, self._child.exit_code if self._child else None)
            self._db_row = None

    async def _lifecycle(self) -> None:
        stopped, verdict = await until_stopped(self._stop, self._dependencies())
        if stopped:
            return
        if verdict.ready is False:
            self._feed(DependencyBroken(verdict.reason))
            return
        for name in verdict.skipped:
            self.log.note(f"optional dependency {name} is not available; starting without it")
        actions = self._feed(DependenciesMet())
        while any(isinstance(a, Spawn) for a in actions):
            try:
                await self._spawn()
            except StartError as exc:
                self._feed(SpawnFailed(str(exc)))
                return
            code, port_taken = await self._supervise()
            self._exit_code = code  # with the state it causes: status never shows one without the other
            actions = self._feed(Exited(code, port_taken, self._outage()))
            if any(isinstance(a, AwaitDependencies) for a in actions):
                # A dependency is down: wait for it, then start (no restart was spent).
                stopped, _ = await until_stopped(
                    self._stop, self.ctx.bus.wait_until(lambda: not self._outage())
                )
                if stopped or self.ctx.stopping():
                    self._feed(StopRequested())
                    return
                actions = self._feed(DependenciesMet())
                continue
            restart = next((a for a in actions if isinstance(a, Restart)), None)
            if restart is None:
                return
            if restart.attempt:
                self.ctx.bus.publish(Restarting(restart.attempt, restart.delay, restart.reason), self.name)
            stopped, _ = await until_stopped(self._stop, self.ctx.clock.sleep(restart.delay))
            if stopped or self.ctx.stopping():
                self._feed(StopRequested())
                return
            actions = self._feed(BackoffOver())

    def _outage(self) -> str:
        return outage(self._config.depends_on, self.ctx.dependency)

    async def _dependencies(self) -> DependencyVerdict:
        deps = self._config.depends_on

        def verdict() -> DependencyVerdict:
            return dependencies_verdict(deps, self.ctx.dependency)

        await self.ctx.bus.wait_until(lambda: verdict().ready is not None)
        return verdict()

    # ----- one process -----------------------------------------------------------------

    async def _spawn(self) -> None:
        if (held := self._listener.port()) is not None:  # kept by a stop or a reload, or handed over
            self._port = await self.ctx.reached_on(self._config, held)
        else:
            self._port = await self.ctx.secure_port(self._config)
        cfg = self._config
        inherit = cfg.socket == "inherit"
        listener = self._listener.fileno(self._port) if inherit and self._port else None
        self._spawn_count += 1
        self._runs += 0 if self._waking else 1
        self._waking = False
        self._exit_code = None
        self._health = None
        launched = await launch(self.ctx, cfg, self._port, listener, self._spawn_count)
        self._child, self._user, self._basis = launched.child, launched.user, launched.basis
        self._db_row = launched.row
        self._started_at = time.time()
        self._spawned = True
        self._feed(Spawned(self._port))

    async def _supervise(self) -> tuple[int | None, bool]:
        """Run until the process exits: (its exit code, whether somebody took its port)."""
        child = self._child
        assert child is not None
        check = self._config.healthcheck
        self._terminate = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            drained = tg.create_task(pump(child.output_fd, self.log.feed))
            if self._config.daemon is not None:  # it forks into the background: follow that
                child = self._child = await daemon.settle(
                    child, self._config, self.ctx.root, self._stop, self.log
                )
            prober = None
            if check is not None:
                self._health = Health.STARTING
                probe = HealthProbe(
                    self.ctx,
                    self.name,
                    check,
                    child,
                    self._port,
                    self._listener.held,
                    self.log,
                    self._health_changed,
                    self._user,
                )
                prober = tg.create_task(probe.run())
            while True:
                waits = [child.wait(), self._stop.wait(), self._terminate.wait()]
                futures = [asyncio.ensure_future(w) for w in waits]
                await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                for fut in futures:
                    fut.cancel()
                if self._stop.is_set():
                    self._feed(StopRequested())
                    await self._end(child, "stop requested")
                    break
                if not child.alive:
                    break
                if self._terminate.is_set():
                    self._feed(Terminating("unhealthy"))
                    await self._end(child, "unhealthy")
                    break
            if prober is not None:
                prober.cancel()
            if self._life.ending is not Ending.UNHEALTHY:
                # What it started must not outlive it (ports, files): also when it exited
                # by itself, or just as a stop came in.
                await child.cleanup(self._config.signal_number, self.ctx.stop_timeout(self._config))
            # Let the pump read what the child wrote before it died, then stop waiting
            # for a grandchild that may still hold the pipe open.
            done, _ = await asyncio.wait({drained}, timeout=_DRAIN_GRACE)
            if not done:
                drained.cancel()
        self.log.flush()
        code = child.exit_code
        if self._db_row is not None:
            self.ctx.ledger.child_exited(self._db_row, code)
            self._db_row = None
        lost = may_have_lost_port(
            self._life,
            code,
            ever_healthy=self._health is Health.HEALTHY,
            inherited=self._listener.held,
            now=self.ctx.clock.now(),
        )
        return code, lost and await port_taken_by_other(self.ctx, self._port, child)

    async def _end(self, child: Child, why: str) -> None:
        """`shutdown.command` first if any, then the stop signal to the group, SIGKILL after
        the grace period; waits for the exit."""
        if self._config.shutdown is not None and child.alive:
            self.log.note(
                await daemon.shut_down(child, self._config, self.ctx.root, self.ctx.port_env(self.name))
            )
        if child.alive:
            self.log.note(f"stopping ({why}): {self._config.stop_signal} to the process group")
        await child.stop(self._config.signal_number, self.ctx.stop_timeout(self._config))

    def _health_changed(self, health: Health, seen: str) -> None:
        self._health = health
        self.ctx.bus.publish(HealthChanged(str(health), seen), self.name)
        actions = self._feed(HealthVerdict(health is Health.HEALTHY, seen, self._outage()))
        if any(isinstance(a, Terminate) for a in actions):
            self._terminate.set()
