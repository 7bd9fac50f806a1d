"""The stack's ports: which service has which port, and securing one before a start.

`PortAssignments` keeps the port of every service (after any migration, so a
dependent's `${DB_PORT}` follows), resolves conflicts one service at a time through
`ports.resolve`, and records each conflict as an event. The decisions are in
`ports.conflicts`; the signals go through the stack's gate.

Every port it settles on is claimed in the user's port registry for this stack (held
by the supervisor's process), so no other stack or script is handed it while the
stack runs, restarts included; a port another owner holds there is never taken, by
any strategy. Without a usable registry (an unwritable home) the stack still runs,
and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from stackvisor.config.interpolate import port_env
from stackvisor.config.replicas import groups
from stackvisor.config.schema import Service, StackConfig, Strategy
from stackvisor.errors import StartError, UnsafePath
from stackvisor.ports.conflicts import ConflictRecord, PortConflictError
from stackvisor.ports.leases import Allocation, PortTaken
from stackvisor.ports.owners import OwnerSearch
from stackvisor.ports.registry import Registry
from stackvisor.ports.resolve import PortContext, kernel_port, secure_port
from stackvisor.runtime.events import EventBus, PortAllocated, PortConflict, PortExpired, PortReleased
from stackvisor.system import procfs
from stackvisor.system.signals import SignalGate

_CLAIM_ATTEMPTS = 5  # plans made again after losing a claim to a racing stack


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
        self.registry: Registry | None = None
        self._claimed: dict[str, tuple[int, str]] = {}  # service -> (port, type) in the registry
        self.internal: dict[str, int] = {}  # proxied service -> the port it listens on
        self._unreachable: set[str] = set()  # services whose port's last resolution failed
        self._me = (os.getpid(), procfs.started(os.getpid()))

    @property
    def owner(self) -> str:
        return str(self.config.path)

    # ----- the registry ------------------------------------------------------------------

    def open_registry(self) -> None:
        try:
            self.registry = Registry.open()
        except (OSError, UnsafePath, sqlite3.Error) as exc:
            self.logger.warning(
                f"the port registry cannot be used ({exc}): ports are not shared with other stacks"
            )
            return
        if self.registry.note:
            self.logger.warning(self.registry.note)

    def close_registry(self) -> None:
        """The stack is down: its ports go back."""
        if self.registry is None:
            return
        with contextlib.suppress(sqlite3.Error):
            # Only what this supervisor claimed: one that lost the race for the stack's
            # lock must not release the ports of the one that runs it.
            self._published(PortReleased, self.registry.release_owner(self.owner, list(self._claimed)))
        self.registry.close()
        self.registry = None
        self._claimed.clear()

    def check_registry(self) -> None:
        """Once a second: a registry file deleted or replaced (corrupt, moved aside) is
        opened again and this stack's ports claimed again."""
        if self.registry is None or not self.registry.replaced():
            return
        self.registry.close()
        self.open_registry()
        for name, (port, kind) in list(self._claimed.items()):
            self._claim(name, port, kind)

    def _claim(self, name: str, port: int, kind: str) -> str | None:
        """Claim `port` for `name`; None when it is ours, else who has it."""
        if self.registry is None:
            return None
        try:
            got, replaced, expired = self.registry.claim(
                self.owner, name, port, kind=kind, pid=self._me[0], pid_start=self._me[1]
            )
        except PortTaken as exc:
            return str(exc).removeprefix(f"port {port} is allocated to ")
        except sqlite3.Error as exc:
            self.logger.warning(f"the port registry failed ({exc}): {name}'s port {port} is not shared")
            return None
        self._published(PortExpired, expired)
        if replaced is not None:
            self._published(PortReleased, [replaced])
        if self._claimed.get(name) != (port, kind):
            self._published(PortAllocated, [got])
        self._claimed[name] = (port, kind)
        return None

    def reserve(self, names: Iterable[str]) -> None:
        """At `up`: the fixed port of each service named is the stack's from now on, also
        while the service waits for its dependencies. One that another owner has is left
        to the service's own start, which moves it."""
        for name in names:
            svc = self.config.services.get(name)
            if svc is not None and isinstance(svc.port, int):
                self._claim(name, svc.port, svc.type or "custom")

    def release(self, name: str) -> None:
        """`name` left the stack (a reload removed it) or gave up: its port goes back."""
        if self.registry is None or self._claimed.pop(name, None) is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self._published(PortReleased, self.registry.release_owner(self.owner, [name]))

    def _others(self) -> dict[int, str]:
        if self.registry is None:
            return {}
        try:
            return {port: a.describe() for port, a in self.registry.others(self.owner).items()}
        except sqlite3.Error:
            return {}

    def _published(self, payload: type[PortAllocated], allocations: list[Allocation]) -> None:
        for a in allocations:
            self.bus.publish(
                payload(a.id, a.port, a.name, a.type, a.owner), a.name if a.owner == self.owner else None
            )

    def env(self, name: str) -> dict[str, str]:
        """`PORT` for `name` and `<NAME>_PORT` for every service of the stack, `<NAME>_PORTS`
        for every group of copies and `REPLICA` for a copy (a proxied
        service's `PORT` is its internal port; the others reach it on the public one)."""
        env = port_env(self.ports, own=name, groups=groups(self.config))
        if name in self.internal:
            env["PORT"] = str(self.internal[name])
        return env

    def _internal(self, svc: Service) -> int:
        """A port for a proxied service to listen on behind its public one: the kernel's
        pick, away from every port of the stack and of other owners, and allocated."""
        avoid = {p for p in self.ports.values() if p is not None} | set(self.internal.values())
        avoid |= set(self._others()) | set(self.config.settings.reserved_ports)
        port = kernel_port(avoid)
        self._claim(f"{svc.name}.internal", port, svc.type or "custom")
        self.internal[svc.name] = port
        return port

    def set(self, name: str, port: int | None) -> None:
        self.ports[name] = port

    def forget(self, name: str) -> None:
        self.ports.pop(name, None)
        self.release(name)
        self._no_internal(name)

    def _no_internal(self, name: str) -> None:
        """`name` is not proxied (any more: a reload): no internal port, nor its `PORT`."""
        if self.internal.pop(name, None) is not None:
            self.release(f"{name}.internal")

    async def secure(self, svc: Service) -> int | None:
        """The port the service will use, after any conflict on it is resolved."""
        if svc.port is None:
            self._no_internal(svc.name)
            return None
        if svc.socket == "proxy":  # the public port is the supervisor's (see `reached_on`)
            async with self._lock:  # after the public one's resolution (it goes first)
                unreachable = svc.name in self._unreachable
            if unreachable:  # it failed: the service does not start unless it is settled now
                await self.reached_on(svc, None)
            async with self._lock:
                return self._internal(svc)
        return await self.reached_on(svc, None)

    async def reached_on(self, svc: Service, listening: int | None) -> int | None:
        """The port the others reach the service on, after any conflict on it is
        resolved: where it listens, or where the supervisor listens for it (an on-demand
        service's socket, a proxied service's public port), which moves as a service's
        would. `listening`: a listener of ours is on that port already (a socket kept by
        a stop or a reload, one handed over): it stays the service's."""
        if svc.socket != "proxy":  # no longer proxied: its `PORT` is this port again
            self._no_internal(svc.name)
        if listening is not None:
            self.ports[svc.name] = listening
            self._unreachable.discard(svc.name)
            # Its own even when another service of the stack claimed it meanwhile (a
            # copy whose port is the next one), which moves at its start.
            for other, (at, _) in list(self._claimed.items()):
                if at == listening and other != svc.name:
                    self.release(other)
            if self._claimed.get(svc.name, (None,))[0] != listening:
                self._claim(svc.name, listening, svc.type or "custom")
            return listening
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
            kind = svc.type or "custom"
            # A fixed port is claimed first (one transaction, the common case); when
            # another owner holds it, or the port is chosen here, the plan avoids what
            # every other owner holds. A claim lost to a racing stack plans again.
            held = self._claim(svc.name, svc.port, kind) if isinstance(svc.port, int) else None
            if held is not None or not isinstance(svc.port, int):
                ctx.allocated = self._others()
            for _ in range(_CLAIM_ATTEMPTS):
                try:
                    resolution = await secure_port(svc, ctx)
                except PortConflictError as exc:
                    self._record(svc.name, exc.record)
                    self._unreachable.add(svc.name)
                    raise StartError(str(exc)) from None
                port = resolution.port
                if port is None or port == svc.port:
                    break
                held = self._claim(svc.name, port, kind)
                if held is None:
                    break
                ctx.allocated = {**self._others(), port: held}
            else:
                raise StartError(f"{svc.name}: every port tried was allocated meanwhile by another stack")
            self.ports[svc.name] = resolution.port
            self._unreachable.discard(svc.name)
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
