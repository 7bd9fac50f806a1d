"""One service's life: wait for dependencies, secure the port, spawn, probe, restart, stop.

`ServiceRunner.lifecycle` is one coroutine per start of a service, run inside the
supervisor's task group; the process's output pump and health probe are its own
tasks in a nested group, so stopping a service ends exactly its tasks. Every state
change goes through `_set_state` (checked against `states.ALLOWED`, published as an
event). Restart decisions are made by the pure `policy.RestartTracker`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import aiohttp

from stackvisor.config.interpolate import interpolate
from stackvisor.config.schema import Condition, HealthCheck, RestartPolicy, Service
from stackvisor.ports.scan import find_owners
from stackvisor.runtime import health, process
from stackvisor.runtime.logs import ServiceLog, pump
from stackvisor.runtime.policy import HealthChange, HealthTracker, RestartTracker, Verdict
from stackvisor.runtime.states import ALIVE, ALLOWED, SETTLED, State, check_transition

if TYPE_CHECKING:
    from stackvisor.runtime.supervisor import Supervisor

# A shell is needed only for these; otherwise `exec` makes the service the direct child.
_SHELL_SYNTAX = re.compile(r"[;&|<>()`\n]|^\s*(if|for|while|until|case|\{|!)\b")
_DRAIN_GRACE = 1.0
_HAND_OVER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n    os.dup2(fd, 3)\n    os.close(fd)\n"
    "os.set_inheritable(3, True)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES=sys.argv[2])\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def shell_argv(command: str) -> list[str]:
    if _SHELL_SYNTAX.search(command):
        return ["/bin/sh", "-c", command]
    return ["/bin/sh", "-c", f"exec {command}"]


class StartError(Exception):
    """The service cannot start (port unresolvable, command not found...): it fails with this."""


class ServiceRunner:
    def __init__(self, stack: Supervisor, config: Service, log: ServiceLog) -> None:
        self.stack = stack
        self.config = config
        self.name = config.name
        self.log = log
        self.state = State.STOPPED
        self.reason = ""
        self.port: int | None = config.port if isinstance(config.port, int) else None
        self.child: process.Child | None = None
        self.exit_code: int | None = None
        self.health: str | None = None
        self.restarts_total = 0
        self.started_at: float | None = None  # wall clock of the current process
        self.spawned = False  # since the last start request: for `service_started`
        self.tracker = RestartTracker()
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._spawn_count = 0
        self._db_row: int | None = None
        self.listener: socket.socket | None = None  # kept across restarts with socket: inherit
        self.keep_listener = False  # set while a restart stops and starts the service

    # ----- state -------------------------------------------------------------------

    def _set_state(self, new: State, reason: str = "", **data: Any) -> None:
        old = self.state
        check_transition(old, new)
        self.state = new
        self.reason = reason
        self.stack.bus.publish(
            "state",
            self.name,
            old=str(old),
            new=str(new),
            reason=reason,
            pid=self.child.pid if self.child else None,
            exit_code=self.exit_code,
            **data,
        )
        self.stack.log_event(self.name, old, new, reason)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def condition(self, condition: Condition) -> bool | None:
        """Is a dependent's `depends_on` condition on us met (True), never (False), or not yet?"""
        state = self.state
        if condition is Condition.STARTED:
            if self.spawned:
                return True
            return False if state is State.FAILED else None
        if condition is Condition.HEALTHY:
            if state is State.HEALTHY:
                return True
            if state in (State.FAILED, State.EXITED, State.COMPLETED):
                return False
            if state is State.UNHEALTHY and self.config.restart is RestartPolicy.NO:
                return False
            return None
        if state is State.COMPLETED:
            return True
        return False if state in (State.FAILED, State.EXITED) else None

    # ----- control -----------------------------------------------------------------

    def start(self, tg: asyncio.TaskGroup) -> None:
        if self.running or self.stack.stopping:
            return  # a start that raced a stop of the stack must not outlive it
        self._stop = asyncio.Event()
        self.spawned = False
        self.exit_code = None
        self.tracker = RestartTracker()
        self._set_state(State.PENDING, "waiting for dependencies" if self.config.depends_on else "")
        self.task = tg.create_task(self.lifecycle(), name=f"service:{self.name}")

    async def stop(self, reason: str = "stopped") -> None:
        """Stop the service and wait until it has stopped. Safe to call in any state."""
        self._stop.set()
        task = self.task
        if task is not None:
            await asyncio.shield(task)
        # A start that came while we waited owns the service now: leave its state alone.
        if self.task is task and self.state in (State.PENDING, State.BACKOFF):
            self._set_state(State.STOPPED, reason)

    def kill_now(self) -> None:
        """Second Ctrl-C: no grace period for anyone."""
        self._stop.set()
        if self.child is not None and self.child.alive:
            self.child.kill_now()

    async def _or_stop(self, aw: Awaitable[Any]) -> tuple[bool, Any]:
        """Await `aw` unless a stop request comes first: (stopped, result)."""
        work = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if work.done():
            return False, work.result()
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass
        return True, None

    # ----- the lifecycle -------------------------------------------------------------

    async def lifecycle(self) -> None:
        try:
            await self._lifecycle()
            if self.state in SETTLED and not self.keep_listener:
                self.close_listener()  # it ended for good: the port is free again
        except asyncio.CancelledError:
            self._abandon()
            raise
        except Exception as exc:  # a bug must fail this service, not the whole stack
            self.stack.logger.exception("service crashed", service=self.name)
            self._abandon()
            if State.FAILED in ALLOWED[self.state]:
                self._set_state(State.FAILED, f"internal error: {exc!r}")

    def _abandon(self) -> None:
        """Leave nothing behind, and nothing unrecorded, when the lifecycle ends abnormally."""
        self.close_listener()
        if self.child is not None and self.child.alive:
            self.child.kill_now()
        if self._db_row is not None:
            self.stack.state_db.child_exited(self._db_row, self.child.exit_code if self.child else None)
            self._db_row = None

    async def _lifecycle(self) -> None:
        stopped, ok = await self._or_stop(self._dependencies())
        if stopped or not ok:
            return
        resolved_again = False
        while True:
            try:
                await self._spawn()
            except StartError as exc:
                self._fail(str(exc))
                return
            unhealthy, stopped = await self._supervise()
            if stopped:
                return
            if not resolved_again and not unhealthy and await self._port_taken_meanwhile():
                # Someone took the port between our check and the child's bind: one more
                # resolution, at once and not counted as a restart.
                resolved_again = True
                self._set_state(
                    State.BACKOFF, f"port {self.port} was taken before {self.name} could bind it; resolving again",
                    delay=0.0,
                )
                continue
            decision = self.tracker.decide(
                policy=self.config.restart,
                exit_code=self.exit_code,
                unhealthy=unhealthy,
                max_restarts=self.config.max_restarts,
                backoff=self.config.backoff,
                now=time.monotonic(),
            )
            if decision.verdict is Verdict.COMPLETED:
                self._set_state(State.COMPLETED, decision.reason)
                return
            if decision.verdict is Verdict.EXITED:
                self._set_state(State.EXITED, decision.reason)
                return
            if decision.verdict is Verdict.FAILED:
                self._fail(decision.reason)
                return
            self.restarts_total += 1
            self._set_state(
                State.BACKOFF,
                f"{decision.reason}; restart {self.tracker.restarts} in {decision.delay:g}s",
                delay=decision.delay,
            )
            self.stack.bus.publish(
                "restart", self.name, attempt=self.tracker.restarts, delay=decision.delay,
                reason=decision.reason,
            )
            stopped, _ = await self._or_stop(asyncio.sleep(decision.delay))
            if stopped or self.stack.stopping:
                self._set_state(State.STOPPED, "stopped during backoff")
                return

    async def _port_taken_meanwhile(self) -> bool:
        """Did the process fail early while somebody else now listens on its port?"""
        if self.port is None or self.exit_code == 0 or self.health == "healthy" or self.listener:
            return False
        if self.tracker.started_at is not None and time.monotonic() - self.tracker.started_at > 10:
            return False
        owners = await asyncio.to_thread(find_owners, self.port)
        pgid = self.child.pgid if self.child else None
        return any(owner.pgid != pgid for owner in owners)

    async def _owns_port(self, child: process.Child) -> tuple[bool, str]:
        """Is the listener on our port this child's, and not someone else's?

        Ours: in the child's process group, below it, or carrying its marker (a server
        that daemonised, `setsid -w`). Someone else's: a holder that was already
        there before the child started, answering the probes in its place.
        """
        if self.port is None or self.listener is not None:
            return True, ""  # an inherited socket is the supervisor's and the child's both
        owners = await asyncio.to_thread(find_owners, self.port, [child.pid])
        if not owners or any(o.pgid == child.pgid for o in owners):
            return True, ""  # the common case, decided without looking for descendants
        family = {child.pid, *(p.pid for p in await asyncio.to_thread(child.descendants))}
        foreign = [
            o for o in owners
            if o.pgid != child.pgid and o.pid not in family
            and o.create_time is not None and o.create_time < child.started
        ]
        if not foreign or len(foreign) < len(owners):
            return True, ""
        who = ", ".join(f"pid {o.pid} ({o.name})" for o in foreign)
        return False, f"port {self.port} is answered by {who}, not by {self.name}"

    def _fail(self, reason: str) -> None:
        self._set_state(State.FAILED, reason, logs=self.log.last(20))

    async def _dependencies(self) -> bool:
        deps = self.config.depends_on
        if not deps:
            return True
        runners = self.stack.runners

        def verdicts() -> dict[str, bool | None]:
            return {name: runners[name].condition(dep.condition) for name, dep in deps.items()}

        def settled() -> bool:
            found = verdicts().values()
            return all(v is True for v in found) or any(v is False for v in found)

        await self.stack.bus.wait_until(settled)
        broken = [name for name, ok in verdicts().items() if ok is False]
        if broken:
            dep = broken[0]
            why = runners[dep].reason or str(runners[dep].state)
            wanted = deps[dep].condition.value
            self._fail(f"dependency {dep} cannot meet {wanted}: {dep} is {runners[dep].state} ({why})")
            return False
        return True

    # ----- one process ------------------------------------------------------------

    async def _spawn(self) -> None:
        if self.listener is None or self.listener.getsockname()[1] != self.port:
            self.close_listener()
            self.port = await self.stack.secure_port(self)
        variables = self.stack.port_env(self.name)
        cfg = self.config
        command = interpolate_value(cfg.command, variables)
        argv = shell_argv(command) if isinstance(command, str) else command
        pass_fds: tuple[int, ...] = ()
        cwd = str(self.stack.root / cfg.working_dir) if cfg.working_dir else str(self.stack.root)
        if cfg.socket == "inherit" and self.port is not None:
            try:
                argv[0] = process.resolve_program(argv[0], cwd, os.environ.get("PATH", os.defpath))
            except OSError as exc:
                raise StartError(f"cannot start {argv[0]!r}: {exc.strerror}") from None
            argv, pass_fds = self._inherit(argv)
        env = dict(os.environ)
        env.update({k: interpolate(v, variables) for k, v in cfg.env.items()})
        env.update(variables)
        self._spawn_count += 1
        marker = f"{self.stack.instance}/{self.name}/{self._spawn_count}"
        self.exit_code = None
        self.health = None
        try:
            self.child = await process.spawn(argv, env=env, cwd=cwd, marker=marker, pass_fds=pass_fds)
        except OSError as exc:
            raise StartError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        self.started_at = time.time()
        self.spawned = True
        self.tracker.started(time.monotonic())
        self._db_row = self.stack.state_db.child_started(
            self.name, self.child.pid, self.child.pgid, self.child.started, self.port, marker
        )
        self._set_state(State.STARTING, port=self.port)

    def _inherit(self, argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
        """Bind the port (once; kept across restarts) and wrap `argv` to receive it as fd 3."""
        if self.listener is None:
            assert self.port is not None
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
                sock.listen(128)
            except OSError as exc:
                sock.close()
                raise StartError(f"cannot bind port {self.port} to hand it over: {exc.strerror}") from None
            self.listener = sock
        fd = self.listener.fileno()
        # A few lines of Python move the socket to fd 3 and set LISTEN_PID to their own
        # pid, which `exec` passes on to the service: the systemd protocol, done after
        # fork without a preexec_fn (the shell cannot: dash knows fds 0-9 only).
        return [sys.executable, "-S", "-c", _HAND_OVER, str(fd), self.name, *argv], (fd,)

    def close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    async def _supervise(self) -> tuple[bool, bool]:
        """Run until the process exits: (was it unhealthy, was it a stop request)."""
        child = self.child
        assert child is not None
        unhealthy = asyncio.Event()
        stopped = False
        async with asyncio.TaskGroup() as tg:
            drained = tg.create_task(pump(child.output_fd, self.log.feed))
            if self.config.healthcheck is None:
                self._set_state(State.RUNNING)
            else:
                self.health = "starting"
                prober = tg.create_task(self._probe(child, self.config.healthcheck, unhealthy))
            while True:
                exited = asyncio.ensure_future(child.wait())
                sick = asyncio.ensure_future(unhealthy.wait())
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({exited, sick, stop}, return_when=asyncio.FIRST_COMPLETED)
                for fut in (exited, sick, stop):
                    fut.cancel()
                if self._stop.is_set() and child.alive:
                    stopped = True
                    await self._terminate(child, "stop requested")
                    break
                if not child.alive:
                    stopped = self._stop.is_set()
                    break
                if unhealthy.is_set():
                    if self.config.restart is RestartPolicy.NO:
                        unhealthy.clear()  # stays unhealthy, keeps running, may recover
                        continue
                    await self._terminate(child, "unhealthy")
                    break
            if self.config.healthcheck is not None:
                prober.cancel()
            if not unhealthy.is_set():
                # What it started must not outlive it (ports, files): also when it exited
                # by itself, or just as a stop came in.
                await child.cleanup(self.config.signal_number, self.stack.config.stop_timeout(self.config))
            # Let the pump read what the child wrote before it died, then stop waiting
            # for a grandchild that may still hold the pipe open.
            done, _ = await asyncio.wait({drained}, timeout=_DRAIN_GRACE)
            if not done:
                drained.cancel()
        self.log.flush()
        self.exit_code = child.exit_code
        if self._db_row is not None:
            self.stack.state_db.child_exited(self._db_row, child.exit_code)
            self._db_row = None
        if stopped:
            if self.state is not State.STOPPING:
                self._set_state(State.STOPPING, "stop requested")
            self._set_state(State.STOPPED, f"stopped (exit code {child.exit_code})")
        return unhealthy.is_set() and not stopped, stopped

    async def _terminate(self, child: process.Child, why: str) -> None:
        self._set_state(State.STOPPING, why)
        self.log.note(f"stopping ({why}): {self.config.stop_signal} to the process group")
        timeout = self.stack.config.stop_timeout(self.config)
        await child.stop(self.config.signal_number, timeout)

    async def _probe(self, child: process.Child, check: HealthCheck, unhealthy: asyncio.Event) -> None:
        variables = self.stack.port_env(self.name)
        tracker = HealthTracker(
            check.retries, check.start_period, time.monotonic(), interval=check.interval
        )
        if check.log is not None:
            await self._probe_log(interpolate(check.log, variables))
            tracker.record(True, time.monotonic())
            self._health_changed(HealthChange.HEALTHY, "log matched")
            return
        async with aiohttp.ClientSession() as session:
            verified = False
            while child.alive:
                ok, seen = await self._probe_once(check, variables, session)
                if not child.alive:
                    return
                if ok and not verified:
                    # A probe that succeeds against somebody else's server proves nothing.
                    ok, why = await self._owns_port(child)
                    verified = ok
                    if not ok:
                        seen = why
                        self.stack.bus.publish("port_mismatch", self.name, port=self.port, message=why)
                change = tracker.record(ok, time.monotonic(), seen)
                if change is not None:
                    self._health_changed(change, seen)
                    if change is HealthChange.UNHEALTHY:
                        unhealthy.set()
                # Until the first success, probe often: start-up time is what people wait for.
                interval = check.interval if tracker.healthy else min(check.interval, check.start_interval)
                await asyncio.sleep(interval)

    def _health_changed(self, change: HealthChange, seen: str) -> None:
        self.health = str(change)
        self.stack.bus.publish("health", self.name, health=str(change), output=seen)
        new = State.HEALTHY if change is HealthChange.HEALTHY else State.UNHEALTHY
        if self.state in (State.STARTING, State.HEALTHY, State.UNHEALTHY) and self.state is not new:
            self._set_state(new, seen)

    async def _probe_once(
        self, check: HealthCheck, variables: dict[str, str], session: aiohttp.ClientSession
    ) -> tuple[bool, str]:
        if check.http is not None:
            return await health.probe_http(session, interpolate(check.http, variables), check.timeout)
        if check.tcp is not None:
            return await health.probe_tcp(interpolate(check.tcp, variables), check.timeout)
        assert check.exec is not None
        env = dict(os.environ)
        env.update(variables)
        marker = f"{self.stack.instance}/{self.name}/probe"
        return await health.probe_exec(
            interpolate_value(check.exec, variables), check.timeout, env, str(self.stack.root), marker
        )

    async def _probe_log(self, pattern: str) -> None:
        regex = re.compile(pattern)
        matched = asyncio.Event()

        def listen(line: str) -> None:
            if regex.search(line):
                matched.set()

        self.log.listeners.add(listen)
        try:
            await matched.wait()
        finally:
            self.log.listeners.discard(listen)

    # ----- reporting -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        alive = self.child is not None and self.child.alive and self.state in ALIVE | {State.STOPPING}
        return {
            "name": self.name,
            "state": str(self.state),
            "reason": self.reason,
            "pid": self.child.pid if alive and self.child else None,
            "port": self.port,
            "health": self.health,
            "restarts": self.restarts_total,
            "exit_code": self.exit_code,
            "started_at": self.started_at if alive else None,
            "depends_on": list(self.config.depends_on),
        }

    @property
    def settled(self) -> bool:
        return self.state in SETTLED


def interpolate_value(value: str | list[str], variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, variables)
    return [interpolate(part, variables) for part in value]
