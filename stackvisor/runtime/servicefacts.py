"""What the stack may read of one service: its configuration, state, port, process and
status, as its `ServiceRunner` keeps them. Nothing here changes anything; the runner
(`service`) carries the lifecycle out and owns these fields.
"""

from __future__ import annotations

import asyncio

from stackvisor.config.schema import Service
from stackvisor.runtime.context import RunnerContext
from stackvisor.runtime.dependencies import DependencyFacts
from stackvisor.runtime.freshness import Basis, outdated
from stackvisor.runtime.lifecycle import Life
from stackvisor.runtime.policy import Health
from stackvisor.runtime.process import Child
from stackvisor.runtime.states import ALIVE, SETTLED, State
from stackvisor.runtime.status import ServiceStatus


class ServiceFacts:
    """The read side of `ServiceRunner` (its base class)."""

    name: str
    ctx: RunnerContext
    _config: Service
    _life: Life
    _reason: str
    _port: int | None
    _child: Child | None
    _exit_code: int | None
    _health: Health | None
    _started_at: float | None  # wall clock of the current process
    _spawned: bool  # since the last start request: for `service_started`
    _task: asyncio.Task[None] | None
    _spawn_count: int
    _runs: int
    _basis: Basis | None  # what the current run was started against

    @property
    def config(self) -> Service:
        return self._config

    @property
    def state(self) -> State:
        return self._life.state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def settled(self) -> bool:
        return self.state in SETTLED

    def facts(self) -> DependencyFacts:
        return DependencyFacts(self.state, self._spawned, self._config.restart, self._reason, self._runs)

    def outdated(self) -> str:
        """Why this run (or completed one-shot) is outdated ("": it is not; see `freshness`)."""
        live = self.state in ALIVE or (self.state is State.COMPLETED and not self.running)
        if self._basis is None or not live or not (self._basis.runs or self._basis.ports):
            return ""  # asked on every event: most services follow nothing, answer at once
        return outdated(self._basis, self._config, self.ctx.dependency, self.ctx.port_env(self.name))

    @property
    def process(self) -> Child | None:
        """The service's process while it runs (or stops)."""
        child = self._child
        alive = child is not None and child.alive and self.state in ALIVE | {State.STOPPING}
        return child if alive else None

    def status(self) -> ServiceStatus:
        child = self.process
        return {
            "name": self.name,
            "state": str(self.state),
            "reason": self._reason,
            "pid": child.pid if child else None,
            "port": self._port,
            "health": None if self._health is None else str(self._health),
            "restarts": self._life.restarts_total,
            "exit_code": self._exit_code,
            "started_at": self._started_at if child else None,
            "depends_on": list(self._config.depends_on),
        }
