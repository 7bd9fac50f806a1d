"""CI dead-man switches: stop the stack when a process exits, or when heartbeats stop.

`up -d --exit-with PID` and `up -d --lease 30s` (renewed by `stackvisor heartbeat`).
Each watch calls `stop(reason)` once and returns; the supervisor runs them in its
task group and cancels them when the stack stops for another reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psutil

from stackvisor.runtime.clock import Clock
from stackvisor.system import procfs
from stackvisor.system.signals import SignalGate


@dataclass
class Lease:
    """Stop the stack when `exit_with` exits, or when no heartbeat came for `seconds`."""

    exit_with: int | None = None
    seconds: float | None = None
    deadline: float | None = field(default=None, compare=False)

    def renew(self, clock: Clock) -> float | None:
        """A heartbeat: the seconds granted, or None when the stack has no lease."""
        if self.seconds is None:
            return None
        self.deadline = clock.now() + self.seconds
        return self.seconds


def run_marker(pid: int) -> str:
    """The marker of what `stackvisor run` (pid `pid`) starts for its command."""
    return f"run-{pid}"


def end_left_by(gate: SignalGate, pid: int) -> None:
    """The process `--exit-with` named is gone: if it was a `stackvisor run`, killed
    before it could end its command, what the command started is ended here (it carries
    run's marker; PDEATHSIG took only the command itself). Through the gate: never
    another user's process, whatever its environment says."""
    for proc in procfs.marked(run_marker(pid)):
        with contextlib.suppress(psutil.Error):
            if proc.is_running():
                gate.send(proc.pid, signal.SIGKILL)


async def watch_pid(pid: int, stop: Callable[[str], None], left: Callable[[int], None]) -> None:
    """Until `pid` exits (a CI job that was killed): observed through a pidfd. Then
    `left(pid)` (to end what it left), and the stop."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        left(pid)
        stop(f"pid {pid} (--exit-with) is gone")
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    left(pid)
    stop(f"pid {pid} (--exit-with) exited")


async def watch_lease(lease: Lease, clock: Clock, stop: Callable[[str], None]) -> None:
    """Until the lease runs out: every heartbeat moves its deadline on."""
    assert lease.seconds is not None
    lease.renew(clock)
    while True:
        assert lease.deadline is not None
        left = lease.deadline - clock.now()
        if left <= 0:
            stop(f"no heartbeat for {lease.seconds:g}s (--lease)")
            return
        await clock.sleep(left)


def watches(
    lease: Lease, clock: Clock, stop: Callable[[str], None], left: Callable[[int], None]
) -> list[Coroutine[Any, Any, None]]:
    """The watches a lease asks for: --exit-with, --lease, both or none."""
    found = []
    if lease.exit_with is not None:
        found.append(watch_pid(lease.exit_with, stop, left))
    if lease.seconds is not None:
        found.append(watch_lease(lease, clock, stop))
    return found
