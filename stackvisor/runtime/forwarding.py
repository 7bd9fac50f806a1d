"""`socket: proxy` in the kernel (`settings.proxy_forwarding: kernel`, the default):
while a proxied service serves, new connections to its public port go straight to its
internal port by an nftables redirect (`system.nftables`), so the bytes of a bulk
transfer never pass through the supervisor.

The relay (`proxy`) is what the public port's listener does; the kernel path only
takes over once it is safe and hands back the moment it is not:
- on: when the service serves (healthy with a health check, else running) and the kernel
  lists a socket listening on its internal port;
- off: the moment the service's state changes away from that (stopping, exited, backoff,
  unhealthy, idle), synchronously with the change, before the process is even signalled.
  A connection that comes next reaches the listener again, waits there for the service
  as one during a start does, and is relayed;
- off as its listener goes, even while the service runs on (a development server's
  reloader that starts its server anew; a process killed from outside, before the
  supervisor learns it exited): the kernel tells the supervisor within a millisecond or
  two (`ports.closes`), and the redirect comes back once a listener is there again;
- everywhere: when the kernel refuses (no CAP_NET_ADMIN, no nf_tables), said once in the
  supervisor's log, or with `relay`.
Connections already open keep their way, whichever path is on. The table is made before
the first public port listens (`prepare`), so that the kernel tracks every connection
from its first packet, and kept until the stack is down (see `nftables.Redirects`); the
watch exists while a rule does.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from stackvisor.ports import tables
from stackvisor.ports.closes import ListenerCloses
from stackvisor.runtime.events import Event, EventBus, EventKind
from stackvisor.system import conntrack
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
    """The supervisor's redirects, public port -> internal port, and the watch on the
    internal ports' listeners that takes a redirect back the moment its listener goes."""

    def __init__(self, wanted: Callable[[], bool], logger: Any) -> None:
        self.wanted = wanted  # settings.proxy_forwarding is not `relay`
        self.rules: dict[int, int] = {}
        self.unavailable = ""  # why the kernel will not, once it said so
        self._logger = logger
        self._redirects: Redirects | None = None
        self._closes: ListenerCloses | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost: dict[int, Callable[[], None]] = {}
        self.forgetting: dict[tuple[int, int], asyncio.Task[None]] = {}  # (public, internal)

    def via(self, public: int) -> str:
        return "kernel" if public in self.rules else "relay"

    def prepare(self, public: int) -> None:
        """Make the table now if the kernel's path is wanted: before `public` listens,
        so that the kernel tracks every connection the relay takes from its first packet
        (`nftables` says why that matters). The kernel's entries of connections to it
        that are left from before (a supervisor killed) go."""
        if self.unavailable or not self.wanted():
            return
        try:
            self._redirects = self._redirects or Redirects()
            self._redirects.open()
        except (Unavailable, OSError) as exc:
            self._give_up(getattr(exc, "strerror", None) or str(exc))
            return
        self.forget(public, None)

    def forget(self, public: int, internal: int | None, still: Callable[[], bool] = lambda: True) -> None:
        """Delete the kernel's entries of connections to `public` redirected to
        `internal` (None: all), which nobody serves any more (`system.conntrack`)."""
        try:
            conntrack.forget(public, internal, still=still)
        except OSError as exc:
            self._logger.info(
                "connection tracking entries left", port=public, reason=exc.strerror or str(exc)
            )

    def forward(self, public: int, internal: int, lost: Callable[[], None]) -> bool:
        """New connections to `public` go to `internal` from now on, until `stop`, or until
        the listener on `internal` goes: then the redirect goes first and `lost` is called."""
        if self.unavailable or not self.wanted():
            return False
        try:
            self._watch({*self.rules.values(), internal})  # before the look below
            self._redirects = self._redirects or Redirects()
            self._redirects.set(public, internal)
        except (Unavailable, OSError) as exc:
            self._give_up(getattr(exc, "strerror", None) or str(exc))
            return False
        self.rules[public], self._lost[public] = internal, lost
        if not listens(internal):  # it went between the look and the watch: the watch missed it
            self._gone(public)
        return public in self.rules

    def stop(self, public: int) -> None:
        if public not in self.rules:
            return
        del self.rules[public]
        self._lost.pop(public, None)
        try:
            if self._redirects is not None:
                self._redirects.unset(public)
            if not self.rules:  # else the filter may still let its port through: it is ignored
                self._unwatch()
        except (Unavailable, OSError) as exc:
            self._give_up(getattr(exc, "strerror", None) or str(exc))

    def close(self) -> None:
        """The stack is down: the table and the watch go (the kernel would at our exit)."""
        for task in list(self.forgetting.values()):
            task.cancel()
        self.rules.clear()
        self._lost.clear()
        self._unwatch()
        if self._redirects is not None:
            self._redirects.close()
            self._redirects = None

    def _gone(self, public: int) -> None:
        lost = self._lost.get(public)
        self.stop(public)
        if lost is not None:
            lost()

    def _closed(self) -> None:
        """The kernel says watched listeners went (on the event loop, as it says so)."""
        assert self._closes is not None
        try:
            ports = self._closes.read()
            if ports is None:  # messages were lost: look at what listens now
                found, _ = tables.listeners(set(self.rules.values()), established=False)
                ports = set(self.rules.values()) - {sock.port for sock in found}
        except OSError as exc:
            self._give_up(f"watching listeners: {exc.strerror}")
            return
        for public, internal in list(self.rules.items()):
            if internal in ports:
                self._gone(public)

    def _watch(self, ports: set[int]) -> None:
        """Be told when a listener on `ports` goes; no watch without a port."""
        if not ports:
            self._unwatch()
            return
        if self._closes is None:
            self._closes = ListenerCloses()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._closes.fileno(), self._closed)
        self._closes.watch(ports)

    def _unwatch(self) -> None:
        closes, self._closes = self._closes, None
        if closes is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(closes.fileno())
            closes.close()

    def _give_up(self, reason: str) -> None:
        """The kernel refused: the relay carries everything from now on."""
        self.unavailable = reason
        self._logger.info("proxied connections are relayed by the supervisor", reason=reason)
        lost = list(self._lost.values())
        self.close()  # a rule left on would be worse than none
        for call in lost:
            call()


def _gone(alive: Callable[[int], bool], port: int) -> bool:
    return not alive(port)


async def _first(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class KernelPath:
    """One proxied service's redirect, on and off with the service (see above)."""

    def __init__(
        self,
        forwarding: Forwarding,
        bus: EventBus,
        service: str,
        public: int,
        serving: Callable[[], int | None],
        alive: Callable[[int], bool],
    ) -> None:
        self.forwarding = forwarding
        self.bus = bus
        self.service = service
        self.public = public
        self.serving = serving  # the internal port while the service serves, else None
        self.alive = alive  # whether a process of the service runs on that internal port

    async def run(self) -> None:
        """Until cancelled; the redirect is off when it returns."""
        forwarding = self.forwarding
        unhook = self.bus.hook(self._moved)
        served: int | None = None  # where the rule sent connections last
        try:
            while True:
                await self.bus.wait_until(lambda: self.serving() is not None and forwarding.wanted())
                port = self.serving()
                if port is None:
                    continue
                lost = asyncio.Event()  # its listener went: look for one again
                on = await self._listening(port) and forwarding.forward(self.public, port, lost.set)
                served = port if on else served
                over = self.bus.wait_until(functools.partial(self._over, port))
                await (_first(over, lost.wait()) if on else over)
                forwarding.stop(self.public)
                if on:
                    self._forget_later(port)
        finally:
            unhook()
            forwarding.stop(self.public)
            if served is not None:
                self._forget_later(served)

    def _forget_later(self, port: int) -> None:
        """Once the process that served `port` is gone, so are the kernel's entries of
        the connections redirected to it (`system.conntrack` says why). The task is the
        stack's, not this watcher's, which a reload may end first."""
        key, tasks = (self.public, port), self.forwarding.forgetting
        if key not in tasks:
            tasks[key] = asyncio.create_task(self._forget_when_gone(port))
            tasks[key].add_done_callback(lambda _: tasks.pop(key, None))

    async def _forget_when_gone(self, port: int) -> None:
        gone = functools.partial(_gone, self.alive, port)
        await self.bus.wait_until(gone)
        await asyncio.to_thread(self.forwarding.forget, self.public, port, gone)

    def _over(self, port: int) -> bool:
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
