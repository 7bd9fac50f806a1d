"""The status page beside `stackvisor top`: `stackvisor ui` run as our child on request.

A key in `top` starts `stackvisor ui` for the same stack file and shows the one-time
address it prints. The child is ours, not detached: it serves the page for as long as
`top` runs and is ended when `top` quits (or when the key asks for a fresh address),
so nothing is left listening; a terminal that hangs up ends both (one process group).
It opens a browser itself (`--open`) only where there is a graphical session; over SSH
the address is the remote machine's 127.0.0.1, reached with
`ssh -L PORT:127.0.0.1:PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

_PREFIX = "status page: "


class PageError(Exception):
    """`stackvisor ui` did not come up: its own words, when it said any."""


def graphical() -> bool:
    """Whether a browser started here would show somewhere."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class PageServer:
    def __init__(self, stack_file: Path) -> None:
        self.stack_file = stack_file
        self.process: asyncio.subprocess.Process | None = None
        self.address: str | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, timeout: float = 20.0) -> str:
        """Serve the page (a fresh one-time address: the token works once) and return it."""
        await self.stop()
        argv = [sys.executable, "-m", "stackvisor", "ui", "--file", str(self.stack_file)]
        if graphical():
            argv.append("--open")
        self.process = proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            # In top's process group: when the terminal hangs up, both get SIGHUP and end.
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        said: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while raw := await proc.stdout.readline():
                    line = raw.decode("utf-8", "replace").strip()
                    if line.startswith(_PREFIX):
                        self.address = line.removeprefix(_PREFIX)
                        return self.address
                    said.append(line)
        except TimeoutError:
            said.append(f"no address within {timeout:g}s")
        await self.stop()
        raise PageError("; ".join(s for s in said if s) or "`stackvisor ui` ended without an address")

    async def stop(self, timeout: float = 5.0) -> None:
        proc, self.process, self.address = self.process, None, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # `ui` stops serving on SIGTERM
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        else:
            await proc.wait()
