"""Services started by their first connection, stopped when idle or when nobody renews
them: `start: on_demand`, `idle_stop` and a service's own `lease`.

The supervisor runs one `Activation` per service that has any of the three, as a task
beside the services:
- on demand: the service's listening socket is bound at `up` (and kept across stops),
  the service waits in `idle`, and a connection in the socket's backlog starts it with
  the socket handed over, so that connection is served, not refused;
- `idle_stop`: after that long without an established connection on its port (the
  kernel's socket table), the service is stopped gracefully;
- `lease`: after that long without `stackvisor heartbeat SERVICE`, the same;
- `socket: proxy`: the public port's listener relays (`proxy`), and while the service
  serves, the kernel carries new connections (`forwarding`).
An on-demand service that stopped, for any of these reasons or by itself, is idle again.
`Activating` is the supervisor's side: which services get one, also when a reload adds
or removes them.

The decision of when to stop is `due` (pure); the rest waits on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stackvisor.config.schema import StackConfig
from stackvisor.errors import ActionConflict, StartError
from stackvisor.ports import tables
from stackvisor.runtime.clock import Clock
from stackvisor.runtime.command import listening_socket
from stackvisor.runtime.deadman import Lease
from stackvisor.runtime.events import Activated, EventBus, IdleStopped
from stackvisor.runtime.forwarding import Forwarding, KernelPath
from stackvisor.runtime.proxy import Proxy, Rebound
from stackvisor.runtime.service import ServiceRunner
from stackvisor.runtime.states import ALIVE, SETTLED, State
from stackvisor.system import cgroups

_MAX_TICK = 1.0  # the longest time between two looks at a running service
# Idleness is counted from here: a service still starting has no clients yet.
_SERVING = frozenset({State.RUNNING, State.HEALTHY, State.UNHEALTHY})
# When a proxied service serves: healthy with a health check, else up.
_HEALTHY, _UP = frozenset({State.HEALTHY}), frozenset({State.RUNNING, State.HEALTHY})
# Down until somebody asks (not on demand): a proxied connection is closed then, after a
# moment, since a stop on its way to a start (a restart, a reload) passes through them.
_DOWN = frozenset({State.STOPPED, State.EXITED, State.COMPLETED})
_DOWN_GRACE = 1.0


@dataclass
class Watch:
    """What one look at a running service knows: when connections were last seen (None:
    some are open now) and when its lease was last renewed."""

    idle_since: float | None
    renewed: float


def due(watch: Watch, now: float, idle_stop: float | None, lease: float | None) -> str:
    """Why the service must stop now ("" when it need not)."""
    if lease is not None and now - watch.renewed >= lease:
        return f"no heartbeat for {lease:g}s (lease)"
    if idle_stop is not None and watch.idle_since is not None and now - watch.idle_since >= idle_stop:
        return f"no connection for {idle_stop:g}s (idle_stop)"
    return ""


def established(port: int) -> int:
    """Open connections whose local port is `port` (established, or half-closed by a
    client that waits for its answer): the service's clients."""
    _, counts = tables.listeners([port], established=True)
    return counts.get(port, 0)


class Activation:
    def __init__(
        self,
        runner: ServiceRunner,
        *,
        bus: EventBus,
        clock: Clock,
        start: Callable[[str], Awaitable[None]],
        stop: Callable[[str, str, bool], Awaitable[None]],
        proxy: Proxy | None = None,
        forwarding: Forwarding | None = None,
    ) -> None:
        self.runner = runner
        self.bus = bus
        self.clock = clock
        self._start = start
        self._stop = stop
        self.watch = Watch(None, clock.now())
        self.proxy = proxy  # with `socket: proxy`; given: the one a reload kept
        self.handed_over = False  # the proxy goes on with the next Activation (a reload)
        self.forwarding = forwarding  # the kernel's path beside the proxy's
        self._wanted = asyncio.Event()  # a proxied connection waits for the service
        self._priming: asyncio.Task[None] | None = None

    @property
    def on_demand(self) -> bool:
        return self.runner.config.start == "on_demand"

    def heartbeat(self) -> None:
        self.watch.renewed = self.clock.now()

    def figures(self) -> dict[str, float | str | None]:
        """What `status` shows of this: the deadlines, and what carries a proxied service's
        new connections now."""
        shown: dict[str, float | str | None] = {**self.deadlines()}
        if self.proxy is not None and self.forwarding is not None:
            shown["forwarding"] = self.forwarding.via(self.proxy.port)
        return shown

    def deadlines(self) -> dict[str, float | None]:
        """Seconds until an idle stop and until the lease runs out, for `status`."""
        config, now, watch = self.runner.config, self.clock.now(), self.watch
        alive = self.runner.state in ALIVE
        idle = None
        if alive and config.idle_stop is not None and watch.idle_since is not None:
            idle = max(0.0, config.idle_stop - (now - watch.idle_since))
        lease = max(0.0, config.lease - (now - watch.renewed)) if alive and config.lease is not None else None
        return {"idle_stop_in": idle, "lease_left": lease}

    async def run(self) -> None:
        """Until the stack stops (cancelled)."""
        if self.runner.config.socket == "proxy":
            if self.proxy is None:
                self.proxy = await self._public_listener()
            else:  # kept by a reload: the service's port is where it listens
                await self.runner.ctx.reached_on(self.runner.config, self.proxy.port)
                self.proxy.rebind(up=self._up, serves=self._serves)
            self.proxy.start()
        kernel = None
        if self.proxy is not None and self.forwarding is not None:
            path = KernelPath(
                self.forwarding, self.bus, self.runner.name, self.proxy.port, self._serving, self._runs_on
            )
            kernel = asyncio.create_task(path.run(), name=f"forwarding:{self.runner.name}")
        try:
            while True:
                if self.on_demand and self.runner.state is not State.PENDING and not self.runner.running:
                    await self._serve_first_connection()
                elif not self.runner.running:
                    await self.bus.wait_until(lambda: self.runner.running)
                await self._watch_running()
        finally:
            if kernel is not None:
                kernel.cancel()
                await asyncio.gather(kernel, return_exceptions=True)  # the redirect is off
            if self.proxy is not None and not self.handed_over:
                self.proxy.close()

    async def _public_listener(self) -> Proxy:
        """The proxy's listener on the public port (a conflict on it resolved as for any
        service's port), once it is ours to listen on."""
        while True:
            try:
                public = await self.runner.ctx.reached_on(self.runner.config, None)
                assert public is not None  # `socket` needs a fixed port
                if self.forwarding is not None:
                    self.forwarding.prepare(public)
                return Proxy(listening_socket(public), up=self._up, serves=self._serves)
            except StartError as exc:
                await self._cannot_listen(str(exc))

    async def _cannot_listen(self, reason: str) -> None:
        """Somebody else listens on the port (a reload moved the service there): the
        service fails, not the stack, until somebody starts it again."""
        if self.runner.state not in SETTLED:  # started meanwhile, without its port
            await self._stop(self.runner.name, reason, False)
        self.runner.listen_failed(reason)
        await self.bus.wait_until(lambda: self.runner.state is not State.FAILED)

    def _serving(self) -> int | None:
        """The internal port while the service serves (healthy when it has a health
        check, else running), else None: when new connections may skip the proxy."""
        runner = self.runner
        return runner.port if runner.state in self._ready() else None

    def _runs_on(self, port: int) -> bool:
        return self.runner.running and self.runner.port == port

    def _serves(self, port: int) -> bool:
        return self._serving() == port

    def _ready(self) -> frozenset[State]:
        return _HEALTHY if self.runner.config.healthcheck is not None else _UP

    async def _up(self) -> int | None:
        """For a proxied connection: the service's internal port once it serves (healthy
        when it has a health check, else running); None if it cannot come up, or stays
        down until somebody asks (stopped by hand, exited without a restart)."""
        runner = self.runner
        ready = self._ready()
        if not runner.running:
            self._wanted.set()
        while True:
            await self.bus.wait_until(
                lambda: (
                    runner.state in ready or runner.state is State.FAILED or self._down() or self.handed_over
                )
            )
            if self.handed_over:  # a reload: the next watcher of the port says
                raise Rebound
            if not self._down():
                return runner.port if runner.state in ready else None
            try:
                await asyncio.wait_for(
                    self.bus.wait_until(lambda: not self._down() or self.handed_over), _DOWN_GRACE
                )
            except TimeoutError:
                return None

    def _down(self) -> bool:
        return not self.on_demand and self.runner.state in _DOWN

    async def _serve_first_connection(self) -> None:
        try:
            port = self.proxy.port if self.proxy is not None else await self._listen()
            reason = f"waiting for a connection on port {port}"
            woke = await (
                self._proxied_wake(reason) if self.proxy is not None else self._socket_wake(reason, port)
            )
        except StartError as exc:
            await self._cannot_listen(str(exc))
            return
        spawner = self.runner.ctx.spawner
        base = spawner.tracking.base
        # A child that joins its cgroup (not born there) does so in a few ms: see `cgroups.prime`.
        if base is not None and spawner.births is None:
            self._priming = asyncio.create_task(asyncio.to_thread(cgroups.prime, base))
        try:
            await self._start(self.runner.name)
        except ActionConflict:
            if self.runner.running:
                return  # started by somebody else meanwhile: watched below
            await asyncio.Event().wait()  # the stack is stopping: nothing to serve
        settled = {State.RUNNING, State.HEALTHY, State.FAILED, State.STOPPED, State.EXITED, State.COMPLETED}
        await self.bus.wait_until(lambda: self.runner.state in settled)
        if self.runner.state in (State.RUNNING, State.HEALTHY):
            self.bus.publish(Activated(port, round(self.clock.now() - woke, 4)), self.runner.name)

    async def _listen(self) -> int:
        """`socket: inherit`: the port its listening socket is on (held since its last
        stop or handed over by a reload), else the one it will be on, resolved now."""
        runner = self.runner
        port = await runner.ctx.reached_on(runner.config, runner.listening_on)
        assert port is not None  # `socket` needs a fixed port
        return port

    async def _socket_wake(self, reason: str, port: int) -> float:
        fd = self.runner.go_idle(reason, port=port)
        assert fd is not None
        loop = asyncio.get_running_loop()
        waiting = asyncio.Event()
        loop.add_reader(fd, waiting.set)
        try:
            await waiting.wait()
        finally:
            loop.remove_reader(fd)
        return self.clock.now()

    async def _proxied_wake(self, reason: str) -> float:
        self._wanted.clear()
        self.runner.go_idle(reason)
        assert self.proxy is not None
        if not self.proxy.waiting:  # else one came while the service stopped, or a reload ran
            await self._wanted.wait()
        return self.clock.now()

    async def _watch_running(self) -> None:
        config = self.runner.config
        ticks = [t / 5 for t in (config.idle_stop, config.lease) if t is not None]
        tick = min([_MAX_TICK, *ticks])
        self.watch = Watch(None, self.clock.now())
        while self.runner.running:
            await self.clock.sleep(tick)
            now = self.clock.now()
            port = self.runner.port
            if config.idle_stop is not None and port is not None and self.runner.state in _SERVING:
                # Proxied: the ones it holds, and the ones at the service (also by the kernel's path).
                held = self.proxy.active if self.proxy is not None else 0
                busy = held or await asyncio.to_thread(established, port)
                self.watch.idle_since = None if busy else (self.watch.idle_since or now)
            why = due(self.watch, now, config.idle_stop, config.lease)
            if why and self.runner.state in ALIVE:
                await self._stop(self.runner.name, why, self.on_demand)
                self.bus.publish(IdleStopped(why), self.runner.name)
                return


class Activating:
    """The supervisor's part (a mixin, as `Reloading`): which services get an
    `Activation`, and the ones a reload adds or removes."""

    runners: dict[str, ServiceRunner]
    activations: dict[str, Activation]
    _activation_tasks: dict[str, asyncio.Task[None]]
    _kept_proxies: dict[str, Proxy]  # by `unwatch`, for the service's next Activation
    selection: set[str]
    bus: EventBus
    clock: Clock
    lease: Lease
    config: StackConfig
    logger: Any
    _forwarding: Forwarding | None = None  # made with the first proxied service

    @property
    def forwarding(self) -> Forwarding:
        if self._forwarding is None:
            wanted = lambda: self.config.settings.proxy_forwarding == "kernel"  # noqa: E731  (the latest reload's)
            self._forwarding = Forwarding(wanted, self.logger)
        return self._forwarding

    def end_forwarding(self) -> None:
        """The stack is down: the kernel's redirects and their table go."""
        if self._forwarding is not None:
            self._forwarding.close()

    if TYPE_CHECKING:  # the supervisor's

        async def start_service(self, name: str) -> None: ...

    def heartbeat(self, service: str | None = None) -> float | None:
        """Renew the stack's lease, or a service's own (`lease:`); seconds left."""
        if service is None:
            return self.lease.renew(self.clock)
        activation = self.activations.get(service)
        if activation is None or activation.runner.config.lease is None:
            raise ActionConflict(f"{service} has no lease (give it `lease: 30s`)")
        if not activation.runner.running:
            raise ActionConflict(f"{service} is {activation.runner.state}: start it, then renew it")
        activation.heartbeat()
        return activation.deadlines()["lease_left"]

    def start_activations(self, tg: asyncio.TaskGroup) -> None:
        """One per selected service started on demand, proxied, stopped when idle or held
        by a lease; kept by service with those a reload adds, as a reload may end any."""
        for name in sorted(self.selection):
            activation = self._activation(name)
            if activation is not None:
                self._activation_tasks[name] = tg.create_task(activation.run(), name=f"activation:{name}")

    def _activation(self, name: str) -> Activation | None:
        config = self.runners[name].config
        if name not in self.activations and (
            config.start == "on_demand" or config.socket == "proxy" or config.idle_stop or config.lease
        ):
            self.activations[name] = Activation(
                self.runners[name],
                bus=self.bus,
                clock=self.clock,
                start=self.start_service,
                stop=self._idle_out,
                proxy=self._kept_proxies.pop(name, None),
                forwarding=self.forwarding if config.socket == "proxy" else None,
            )
            return self.activations[name]
        return None

    def watch_added(self, name: str, tg: asyncio.TaskGroup) -> bool:
        """A service a reload added or changed: its activation, when it has one, runs from
        now on; True when it starts on demand (not now)."""
        activation = self._activation(name)
        if activation is None:
            return False
        self._activation_tasks[name] = tg.create_task(activation.run(), name=f"activation:{name}")
        return activation.on_demand

    def unwatch(self, name: str, *, keep_proxy: bool = False, heir: str | None = None) -> None:
        """A service a reload removed or changed: its activation ends. With `keep_proxy`
        (the port stays, see `plans.keeps_socket`) its proxy goes on, for the next one
        of the service, or of its `heir` (`plans.heirs`)."""
        activation = self.activations.pop(name, None)
        if activation is not None and activation.proxy is not None:
            if keep_proxy:
                activation.handed_over = True
                self._kept_proxies[heir or name] = activation.proxy
            else:  # now, not as its task ends: what comes next may listen on the port
                activation.proxy.close()
        task = self._activation_tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def close_kept_proxies(self) -> None:
        """A reload is done: a proxy kept for a service that is not watched again closes."""
        for proxy in self._kept_proxies.values():
            proxy.close()
        self._kept_proxies.clear()

    async def _idle_out(self, name: str, reason: str, keep_socket: bool) -> None:
        await self.runners[name].stop(reason, keep_socket=keep_socket)
