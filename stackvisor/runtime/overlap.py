"""Overlapping runs of a scheduled service (`max_concurrent` above 1): a tick that finds
the service's run still going starts another run beside it, while fewer than
`max_concurrent` are going.

The service's own process is its runner's; an overlapping run is a process of the same
command, folder, environment and user, started by the scheduler: in a cgroup of its own
(`<service>~<n>`), so the end of one run never takes another along; recorded as a
child in state.db, so a killed supervisor's next `up` or `down` ends it; its output in
the service's log; its end a `scheduled_run` event. The stack's stop ends it gracefully
(the service's stop signal, then SIGKILL after its stop timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import time

from stackvisor.errors import StartError
from stackvisor.runtime.command import build_command
from stackvisor.runtime.events import ScheduledRun
from stackvisor.runtime.logs import pump
from stackvisor.runtime.process import Child
from stackvisor.runtime.service import ServiceRunner


class Overlaps:
    """The overlapping runs of one scheduled service."""

    def __init__(self, runner: ServiceRunner) -> None:
        self.runner = runner
        self.going: dict[int, Child] = {}
        self._numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.going)

    async def start(self) -> bool:
        """Another run now; False when it could not be started (said in the log)."""
        runner, ctx = self.runner, self.runner.ctx
        cfg = runner.config
        number = next(self._numbers)
        marker = f"{ctx.instance}/{runner.name}/overlap-{number}"
        try:
            command = build_command(cfg, ctx.root, ctx.port_env(runner.name), None)
            child = await ctx.spawner.spawn(
                command.argv,
                env=command.env,
                cwd=command.cwd,
                marker=marker,
                user=command.user,
                service=f"{runner.name}~{number}",
            )
        except (StartError, OSError) as exc:
            runner.log.note(f"an overlapping run could not start: {exc}")
            return False
        row = ctx.ledger.child_started(runner.name, child.pid, child.pgid, child.started, runner.port, marker)
        self.going[number] = child
        task = asyncio.create_task(self._follow(number, child, row), name=f"run:{runner.name}~{number}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        runner.log.note(f"run {number} started beside the one still going (pid {child.pid})")
        return True

    async def _follow(self, number: int, child: Child, row: int) -> None:
        runner = self.runner
        began = time.monotonic()
        drained = asyncio.create_task(pump(child.output_fd, runner.log.feed))
        try:
            code = await child.wait()
            await child.cleanup(runner.config.signal_number, runner.ctx.stop_timeout(runner.config))
            await asyncio.wait({drained}, timeout=1.0)
        finally:
            if not drained.done():
                drained.cancel()
            self.going.pop(number, None)
            runner.ctx.ledger.child_exited(row, child.exit_code)
        result = "completed" if code == 0 else "exited"
        duration = round(time.monotonic() - began, 3)
        runner.ctx.bus.publish(ScheduledRun(code, duration, result, "schedule"), runner.name)

    async def stop(self) -> None:
        """The stack stops: every overlapping run ends, gracefully first."""
        timeout = self.runner.ctx.stop_timeout(self.runner.config)
        runs = list(self.going.values())
        await asyncio.gather(*(child.stop(self.runner.config.signal_number, timeout) for child in runs))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
