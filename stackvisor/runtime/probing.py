"""The health checks of one process: probe, count, and tell the runner when the verdict changes.

The timing (interval, retries, start period) is decided by `policy.HealthTracker`
on the stack's clock; one attempt of each kind is in `health`. A probe that
succeeds against somebody else's listener proves nothing: the first success is
checked against who holds the port.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stackvisor.config.interpolate import interpolate
from stackvisor.config.schema import HealthCheck
from stackvisor.config.users import UserSpec
from stackvisor.runtime import health
from stackvisor.runtime.command import interpolate_value, user_environment
from stackvisor.runtime.context import RunnerContext
from stackvisor.runtime.events import PortMismatch
from stackvisor.runtime.logs import ServiceLog
from stackvisor.runtime.policy import Health, HealthTracker
from stackvisor.runtime.process import Child

if TYPE_CHECKING:
    import aiohttp


@dataclass
class HealthProbe:
    ctx: RunnerContext
    name: str
    check: HealthCheck
    child: Child
    port: int | None
    inherited: bool  # the listening socket is ours, handed over
    log: ServiceLog
    changed: Callable[[Health, str], None]
    user: UserSpec | None = None  # an `exec` check runs as the service's user

    async def run(self) -> None:
        """Probe until the process exits (or, for a `log` check, until it matches)."""
        check = self.check
        variables = self.ctx.port_env(self.name)
        clock = self.ctx.clock
        tracker = HealthTracker(check.retries, check.start_period, clock.now(), interval=check.interval)
        if check.log is not None:
            await self._log_match(interpolate(check.log, variables))
            tracker.record(True, clock.now())
            self.changed(Health.HEALTHY, "log matched")
            return
        session = await health.http_session() if check.http is not None else None
        try:
            await self._probe(tracker, variables, session)
        finally:
            if session is not None:
                await session.close()

    async def _probe(
        self, tracker: HealthTracker, variables: dict[str, str], session: aiohttp.ClientSession | None
    ) -> None:
        check = self.check
        clock = self.ctx.clock
        verified = False
        while self._alive():
            ok, seen = await self._once(variables, session)
            if not self._alive():  # it ended during the probe
                return
            if ok and not verified:
                ok, why = await self._owns_port()
                verified = ok
                if not ok:
                    seen = why
                    self.ctx.bus.publish(PortMismatch(self.port, why), self.name)
            change = tracker.record(ok, clock.now())
            if change is not None:
                self.changed(change, seen)
            # Until the first success, probe often: start-up time is what people wait for.
            interval = check.interval if tracker.healthy else min(check.interval, check.start_interval)
            await clock.sleep(interval)

    def _alive(self) -> bool:
        return self.child.exit_code is None

    async def _once(
        self, variables: dict[str, str], session: aiohttp.ClientSession | None
    ) -> tuple[bool, str]:
        check = self.check
        if check.http is not None and session is not None:
            return await health.probe_http(session, interpolate(check.http, variables), check.timeout)
        if check.tcp is not None:
            return await health.probe_tcp(interpolate(check.tcp, variables), check.timeout)
        assert check.exec is not None
        env = dict(os.environ)
        env.update(variables)
        if self.user is not None:
            env.update(user_environment(self.user))
        return await health.probe_exec(
            self.ctx.spawner,
            interpolate_value(check.exec, variables),
            check.timeout,
            env,
            str(self.ctx.root),
            f"{self.ctx.instance}/{self.name}/probe",
            self.user,
        )

    async def _owns_port(self) -> tuple[bool, str]:
        """Is the listener on our port this child's, and not someone else's?

        Ours: in the child's process group, below it, or carrying its marker (a server
        that daemonised, `setsid -w`). Someone else's: a holder that was already
        there before the child started, answering the probes in its place.
        """
        child, port = self.child, self.port
        if port is None or self.inherited:
            return True, ""  # an inherited socket is the supervisor's and the child's both
        owners = await asyncio.to_thread(self.ctx.owners.find_owners, port, [child.pid])
        if not owners or any(o.pgid == child.pgid for o in owners):
            return True, ""  # the common case, decided without looking for descendants
        family = {child.pid, *(p.pid for p in await asyncio.to_thread(child.descendants))}
        foreign = [
            o
            for o in owners
            if o.pgid != child.pgid
            and o.pid not in family
            and o.started is not None
            and o.started < child.started
        ]
        if not foreign or len(foreign) < len(owners):
            return True, ""
        who = ", ".join(f"pid {o.pid} ({o.name})" for o in foreign)
        return False, f"port {port} is answered by {who}, not by {self.name}"

    async def _log_match(self, pattern: str) -> None:
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


async def port_taken_by_other(ctx: RunnerContext, port: int | None, child: Child) -> bool:
    """Does somebody outside the child's group listen on its port now?"""
    if port is None:
        return False
    owners = await asyncio.to_thread(ctx.owners.find_owners, port)
    return any(owner.pgid != child.pgid for owner in owners)
