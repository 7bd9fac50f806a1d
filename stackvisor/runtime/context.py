"""What a service's runner may ask of its stack: the `RunnerContext`, and nothing more.

The supervisor builds one context for all its runners; a runner never sees the
supervisor itself (see `service`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stackvisor.config.schema import Service
from stackvisor.runtime.clock import Clock
from stackvisor.runtime.dependencies import DependencyFacts
from stackvisor.runtime.events import EventBus
from stackvisor.runtime.process import Spawner
from stackvisor.runtime.states import State

if TYPE_CHECKING:
    from stackvisor.ports.owners import OwnerSearch


class ChildLedger(Protocol):
    """Where spawned children are recorded (state.db), so a later run can end orphans."""

    def child_started(
        self, service: str, pid: int, pgid: int, started: float, port: int | None, marker: str
    ) -> int: ...

    def child_exited(self, row: int, exit_code: int | None) -> None: ...


@dataclass(frozen=True)
class RunnerContext:
    root: Path
    instance: str  # every child's marker starts with it
    bus: EventBus
    clock: Clock
    spawner: Spawner
    owners: OwnerSearch
    ledger: ChildLedger
    logger: Any
    secure_port: Callable[[Service], Awaitable[int | None]]  # raises StartError
    reached_on: Callable[[Service, int | None], Awaitable[int | None]]  # its public port; as above
    port_env: Callable[[str], dict[str, str]]
    stop_timeout: Callable[[Service], float]
    dependency: Callable[[str], DependencyFacts | None]  # None: not in the running selection
    stopping: Callable[[], bool]  # the whole stack is stopping
    transition_logged: Callable[[str, State, State, str], None]
