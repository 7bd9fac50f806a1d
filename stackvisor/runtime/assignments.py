"""The stack's ports: which service has which port, and securing one before a start.

`PortAssignments` keeps the port of every service (after any migration, so a
dependent's `${DB_PORT}` follows), resolves conflicts one service at a time through
`ports.resolve`, and records each conflict as an event. The decisions are in
`ports.conflicts`; the signals go through the stack's gate.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stackvisor.config.interpolate import port_env
from stackvisor.config.schema import Service, StackConfig, Strategy
from stackvisor.errors import StartError
from stackvisor.ports.conflicts import ConflictRecord, PortConflictError
from stackvisor.ports.owners import OwnerSearch
from stackvisor.ports.resolve import PortContext, secure_port
from stackvisor.runtime.events import EventBus, PortConflict
from stackvisor.system.signals import SignalGate


class PortAssignments:
    def __init__(
        self,
        config: StackConfig,
        *,
        bus: EventBus,
        logger: Any,
        gate: SignalGate,
        strategy: Strategy | None = None,
    ) -> None:
        self.config = config  # replaced on reload: settings apply at once
        self.bus = bus
        self.logger = logger
        self.gate = gate
        self.strategy = strategy
        self.owners = OwnerSearch()
        self.ports: dict[str, int | None] = {name: fixed(svc) for name, svc in config.services.items()}
        # Children recorded by earlier runs: a holder among them is a stale copy (level low).
        self.earlier_children: set[tuple[int, float]] = set()
        self._lock = asyncio.Lock()

    def env(self, name: str) -> dict[str, str]:
        """`PORT` for `name` and `<NAME>_PORT` for every service of the stack."""
        return port_env(self.ports, own=name)

    def set(self, name: str, port: int | None) -> None:
        self.ports[name] = port

    def forget(self, name: str) -> None:
        self.ports.pop(name, None)

    async def secure(self, svc: Service) -> int | None:
        """The port the service will use, after any conflict on it is resolved."""
        if svc.port is None:
            return None
        # One resolution at a time: two services migrating at once must not both pick
        # the same free port. (A free port is answered without suspending at all.)
        async with self._lock:
            ctx = PortContext.from_config(
                self.config,
                strategy_override=self.strategy,
                known_children=self.earlier_children,
                taken={p for n, p in self.ports.items() if n != svc.name and p is not None},
                owners=self.owners,
                gate=self.gate,
            )
            ctx.grace = self.config.stop_timeout(svc)
            try:
                resolution = await secure_port(svc, ctx)
            except PortConflictError as exc:
                self._record(svc.name, exc.record)
                raise StartError(str(exc)) from None
            self.ports[svc.name] = resolution.port
        self._record(svc.name, resolution.conflict)
        return resolution.port

    def _record(self, name: str, record: ConflictRecord | None) -> None:
        if record is None:
            return
        data = record.as_dict()
        data.pop("service", None)
        self.bus.publish(PortConflict(**data), name)
        self.logger.warning("port conflict", service=name, **data)


def fixed(svc: Service) -> int | None:
    """The port a service asks for, when it names one (not `auto`)."""
    return svc.port if isinstance(svc.port, int) else None
