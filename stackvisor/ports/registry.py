"""Port leases: which port each service of a running stack holds.

The supervisor keeps one registry per stack so that `secure_port` knows the ports of
the other services (`PortContext.taken`) and two services starting at the same time
never migrate onto the same free port. Nothing here touches the system.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from stackvisor.config.schema import Service
from stackvisor.ports.resolve import PortContext, PortResolution, secure_port


class PortRegistry:
    """service name -> leased port, plus the lock that makes securing a port atomic."""

    def __init__(self, fixed: dict[str, int] | None = None) -> None:
        # Fixed ports of services not started yet are reserved for them from the start.
        self._fixed = dict(fixed or {})
        self._leases: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def lease(self, service: str, port: int | None) -> None:
        if port is None:
            self._leases.pop(service, None)
        else:
            self._leases[service] = port

    def release(self, service: str) -> None:
        self._leases.pop(service, None)

    def port(self, service: str) -> int | None:
        return self._leases.get(service)

    def leases(self) -> dict[str, int]:
        return dict(self._leases)

    def taken_for(self, service: str) -> set[int]:
        """Ports the service must not use or move to: every other service's lease, and the
        fixed port of every other service not started yet (unless it is this service's
        own port too: then whoever starts first keeps it)."""
        own = self._fixed.get(service)
        ports = {
            p for name, p in self._fixed.items()
            if name != service and name not in self._leases and p != own
        }
        ports |= {p for name, p in self._leases.items() if name != service}
        return ports

    async def secure(self, service: Service, ctx: PortContext) -> PortResolution:
        """`secure_port` with the other services' ports taken, then lease the result."""
        async with self._lock:
            local = replace(ctx, taken=set(ctx.taken) | self.taken_for(service.name))
            resolution = await secure_port(service, local)
            self.lease(service.name, resolution.port)
            return resolution
