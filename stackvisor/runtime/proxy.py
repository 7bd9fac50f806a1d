"""`socket: proxy`: the supervisor keeps a service's public port and forwards each
connection to the service on an internal port, for servers that cannot take a socket.

A connection that arrives while the service is not up asks for it (`wanted`) and waits
until it is (healthy when it has a health check, else accepting on its internal port);
then the bytes flow both ways, each direction copied by a thread of its own with
blocking calls (the GIL is released while the kernel copies), so the event loop never
carries the traffic. `splice(2)` through a pipe was measured too: on loopback it moved
less (1.5 against 2.4 GB/s) for its many small transfers. `active` counts the open
connections (what `idle_stop` counts for a proxied service).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable

# Bytes per read: a connection starts small (a burst of fifty idle connections must not
# cost fifty megabytes) and grows, each time a read fills its buffer, up to the size
# where a bulk transfer moved most per core (1 MiB: 47% of direct against 39% at
# 256 KiB on a two-core machine, where the proxy competes with both ends for the cores).
_FIRST_CHUNK = 64 * 1024
_LAST_CHUNK = 1024 * 1024
_CONNECT_WAIT = 30.0  # how long a connection waits for a started service to accept

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a RST


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy `src` to `dst` until `src` ends, then end `dst`'s writing side; when `src`
    was reset, `dst` will be too, as it closes. Blocking calls in a thread of its own:
    the GIL is released while the kernel copies."""
    buf = bytearray(_FIRST_CHUNK)
    view = memoryview(buf)
    was_reset = False
    try:
        while moved := src.recv_into(buf):
            dst.sendall(view[:moved])
            if moved == len(buf) < _LAST_CHUNK:
                view.release()
                buf = bytearray(len(buf) * 4)
                view = memoryview(buf)
    except ConnectionResetError:
        was_reset = True
    except OSError:
        pass  # `dst` failed: its own pump ends with it
    finally:
        with contextlib.suppress(OSError):
            if was_reset:  # not an end its peer could take for a whole answer
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                dst.shutdown(socket.SHUT_RD)  # wakes the other pump, says nothing on the wire
            else:
                dst.shutdown(socket.SHUT_WR)


def relay(a: socket.socket, b: socket.socket, finished: Callable[[], object]) -> None:
    """Forward both ways in two threads; `finished` is called (from a thread) once both
    directions ended and both sockets are closed."""
    a.setblocking(True)
    b.setblocking(True)

    def both() -> None:
        other = threading.Thread(target=_pump, args=(b, a), daemon=True)
        other.start()
        _pump(a, b)
        other.join()
        a.close()
        b.close()
        finished()

    threading.Thread(target=both, daemon=True, name="proxy").start()


async def connect_when_accepting(
    port: int, deadline: float, serves: Callable[[int], bool]
) -> socket.socket | None:
    """A connection to 127.0.0.1:`port`, retried until the service accepts (it may run
    before it listens), it no longer serves there, or the deadline passes."""
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    while time.monotonic() < deadline and serves(port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            return sock
        except OSError:
            sock.close()
            await asyncio.sleep(retry_after(time.monotonic() - began))
    return None


def retry_after(waited: float) -> float:
    """Seconds until the next connection attempt, `waited` seconds into the wait: a tenth
    of it, from 1 ms to 20 ms. The first request pays at most a tenth of the service's
    own start for our polling; a refused connection on loopback costs some 20 us, so a
    slow start costs a few hundred attempts, not thousands."""
    return min(0.02, max(0.001, waited / 10))


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _from_thread(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is gone: the stack is down
        loop.call_soon_threadsafe(_settle, future)


class Rebound(Exception):
    """What a connection waited on handed the proxy over (a reload): wait on the next."""


class Proxy:
    """The public side: a listening socket of ours and the connections it forwards."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        up: Callable[[], Awaitable[int | None]],
        serves: Callable[[int], bool],
    ) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])  # the public port
        self.active = 0
        self.connections = 0
        self.waiting = 0  # connections waiting for the service to come up
        self._up = up  # waits until the service serves; its internal port (None: it did not come up)
        self._serves = serves  # whether the service still serves on an internal port
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: asyncio.Task[None] | None = None
        self._rebound = asyncio.Event()  # set (and made anew) by each `rebind`

    def start(self) -> None:
        """Accept from now on, until `close`."""
        if self._serving is None:
            self._serving = asyncio.create_task(self.serve(), name=f"proxy:{self.port}")

    def rebind(self, *, up: Callable[[], Awaitable[int | None]], serves: Callable[[int], bool]) -> None:
        """Serve another watcher of the same service from now on (a reload that kept the
        port): connections accepted and waiting stay, and so do the ones being forwarded."""
        self._up, self._serves = up, serves
        self._rebound.set()
        self._rebound = asyncio.Event()

    async def serve(self) -> None:
        """Accept until cancelled."""
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while True:
            client, _ = await loop.sock_accept(self.sock)
            task = asyncio.create_task(self._forward(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _forward(self, client: socket.socket) -> None:
        self.active += 1
        self.connections += 1
        try:
            upstream = await self._upstream()
            if upstream is None:  # reset, as a port nobody listens on answers
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                client.close()
                return
            for end in (client, upstream):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            finished = loop.create_future()
            relay(client, upstream, lambda: _from_thread(loop, finished))
            await finished
        except BaseException:
            client.close()
            raise
        finally:
            self.active -= 1

    async def _upstream(self) -> socket.socket | None:
        """A connection to the service once it serves; None if it cannot come up, or
        serves but does not accept. One that dies meanwhile (its listener gone, its exit
        not yet known) is waited for again, on the port of its next start."""
        while True:
            self.waiting += 1
            rebound = self._rebound
            try:
                port = await self._up()
            except Rebound:  # once the next watcher has the proxy, wait on it
                await rebound.wait()
                continue
            finally:
                self.waiting -= 1
            if port is None:
                return None
            upstream = await connect_when_accepting(port, time.monotonic() + _CONNECT_WAIT, self._serves)
            if upstream is not None or self._serves(port):
                return upstream

    def close(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
        for task in list(self._tasks):
            task.cancel()
        self.sock.close()
