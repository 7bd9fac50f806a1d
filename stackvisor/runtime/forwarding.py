"""`socket: proxy` in the kernel: while a proxied service serves, new connections to its
public port go straight to its internal port by an nftables redirect
(`system.nftables`), so the bytes of a bulk transfer never pass through the supervisor.

The relay (`proxy`) is what the public port's listener does; the kernel path only
takes over once it is safe and hands back the moment it is not:
- on: when the service serves (healthy with a health check, else running) and the kernel
  lists a socket listening on its internal port;
- off: the moment the service's state changes away from that (stopping, exited, backoff,
  unhealthy, idle), synchronously with the change, before the process is even signalled.
  A connection that comes next reaches the listener again, waits there for the service
  as one during a start does, and is relayed;
- everywhere: when the kernel refuses (no CAP_NET_ADMIN, no nf_tables), said once in the
  supervisor's log, or with `settings.proxy_forwarding: relay`.
Connections already open keep their way, whichever path is on. The table exists while a
rule does: it is made with the first and deleted with the last.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from stackvisor.ports import tables
from stackvisor.runtime.events import Event, EventBus, EventKind
from stackvisor.system.nftables import Redirects, Unavailable

_IPV4_REACHABLE = {(4, "127.0.0.1"), (4, "0.0.0.0"), (6, "::")}  # what 127.0.0.1:port reaches


def listens(port: int) -> bool:
    """Whether a socket listens where a connection to 127.0.0.1:`port` arrives."""
    found, _ = tables.listeners([port], established=False)
    return any((sock.family, sock.address) in _IPV4_REACHABLE for sock in found)


def poll_after(waited: float) -> float:
    """Seconds until the next look for the service's listening socket, `waited` seconds
    into the wait: a tenth of it, from 1 ms to half a second."""
    return min(0.5, max(0.001, waited / 10))


class Forwarding:
    """The supervisor's redirects, public port -> internal port, applied whole."""

    def __init__(self, wanted: Callable[[], bool], logger: Any) -> None:
        self.wanted = wanted  # settings.proxy_forwarding is not `relay`
        self.rules: dict[int, int] = {}
        self.unavailable = ""  # why the kernel will not, once it said so
        self._logger = logger
        self._redirects: Redirects | None = None

    def via(self, public: int) -> str:
        return "kernel" if public in self.rules else "relay"

    def forward(self, public: int, internal: int) -> bool:
        if self.unavailable or not self.wanted():
            return False
        return self._apply({**self.rules, public: internal})

    def stop(self, public: int) -> None:
        if public in self.rules:
            self._apply({p: i for p, i in self.rules.items() if p != public})

    def _apply(self, rules: dict[int, int]) -> bool:
        try:
            if rules:
                self._redirects = self._redirects or Redirects()
                self._redirects.apply(rules)
            else:
                self._drop_table()
        except Unavailable as exc:
            self.unavailable = str(exc)
            self._logger.info("proxied connections are relayed by the supervisor", reason=str(exc))
            self._drop_table()  # a rule left on would be worse than none
            self.rules = {}
            return False
        self.rules = rules
        return True

    def _drop_table(self) -> None:
        if self._redirects is not None:
            self._redirects.close()
            self._redirects = None


class KernelPath:
    """One proxied service's redirect, on and off with the service (see above)."""

    def __init__(
        self,
        forwarding: Forwarding,
        bus: EventBus,
        service: str,
        public: int,
        serving: Callable[[], int | None],
    ) -> None:
        self.forwarding = forwarding
        self.bus = bus
        self.service = service
        self.public = public
        self.serving = serving  # the internal port while the service serves, else None

    async def run(self) -> None:
        """Until cancelled; the redirect is off when it returns."""
        forwarding = self.forwarding
        unhook = self.bus.hook(self._moved)
        try:
            while True:
                await self.bus.wait_until(lambda: self.serving() is not None and forwarding.wanted())
                port = self.serving()
                if port is not None and await self._listening(port):
                    forwarding.forward(self.public, port)
                await self.bus.wait_until(functools.partial(self._over, port))
                forwarding.stop(self.public)
        finally:
            unhook()
            forwarding.stop(self.public)

    def _over(self, port: int | None) -> bool:
        return self.serving() != port or not self.forwarding.wanted()

    def _moved(self, event: Event) -> None:
        """Called as each event is published: the redirect goes off with the state."""
        if event.service == self.service and event.kind is EventKind.STATE and self.serving() is None:
            self.forwarding.stop(self.public)

    async def _listening(self, port: int) -> bool:
        """Wait until the service listens on `port`; False if it stops serving first."""
        began = time.monotonic()
        while self.serving() == port:
            if await asyncio.to_thread(listens, port):
                return self.serving() == port
            await asyncio.sleep(poll_after(time.monotonic() - began))
        return False
