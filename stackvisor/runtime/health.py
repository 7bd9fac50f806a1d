"""Health probes: one attempt each, returning (ok, what was seen).

The timing (interval, retries, start_period) is decided by `policy.HealthTracker`
and driven by the service; this module only knows how to ask. `log` probes are
not here: they watch the output stream (see `ServiceRunner`). Parsing `host:port`
is `config.address`; an exec probe is started by the service's `Spawner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

from stackvisor.config.address import split_host_port
from stackvisor.config.users import UserSpec
from stackvisor.runtime.logs import pump
from stackvisor.runtime.process import Spawner

if TYPE_CHECKING:
    import aiohttp


async def probe_tcp(address: str, timeout: float) -> tuple[bool, str]:
    try:
        host, port = split_host_port(address)
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        return False, f"tcp {address}: {exc or type(exc).__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"tcp {address}: connected"


async def http_session() -> aiohttp.ClientSession:
    """A session for a service's http probes. aiohttp is imported on the first one, in a
    thread: the event loop keeps starting services meanwhile."""
    module = await asyncio.to_thread(importlib.import_module, "aiohttp")
    session: aiohttp.ClientSession = module.ClientSession()
    return session


async def probe_http(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[bool, str]:
    import aiohttp

    try:
        async with session.get(
            url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            await resp.read()
            return 200 <= resp.status < 400, f"GET {url}: {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return False, f"GET {url}: {exc or type(exc).__name__}"


async def probe_exec(
    spawner: Spawner,
    command: str | list[str],
    timeout: float,
    env: Mapping[str, str],
    cwd: str | None,
    marker: str,
    user: UserSpec | None = None,
) -> tuple[bool, str]:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        child = await spawner.spawn(argv, env=env, cwd=cwd, marker=marker, user=user)
    except OSError as exc:
        return False, f"exec {shlex.join(argv)}: {exc}"
    chunks: list[bytes] = []
    reader = asyncio.ensure_future(pump(child.output_fd, chunks.append))
    try:
        code = await asyncio.wait_for(asyncio.shield(child.wait()), timeout)
        # A background process of the probe may hold the pipe: read briefly, then stop.
        await asyncio.wait({reader}, timeout=0.5)
    except TimeoutError:
        return False, f"exec: timed out after {timeout:g}s"
    finally:
        # Whatever happened (timeout, cancellation at stop), the probe and all it
        # started are gone before we return.
        if child.alive or not reader.done():
            child.kill_now()
            await asyncio.wait({asyncio.ensure_future(child.wait())}, timeout=1.0)
        if not reader.done():
            reader.cancel()
            await asyncio.wait({reader})
    output = b"".join(chunks).decode("utf-8", "replace").strip()[-500:]
    return code == 0, output or f"exit {code}"
