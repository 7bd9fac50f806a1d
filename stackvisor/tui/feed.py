"""The terminal UI's line to the supervisor: HTTP/1.1 over the stack's unix socket, inside
the event loop that Textual runs.

The CLI's client (`control.client`) blocks, which suits a command that asks one question.
A screen must stay live while an action takes seconds, and drop a log stream the moment
another service is selected or the user quits; a blocked thread can do neither, so here
every request is a task that can be cancelled. It connects as the CLI does
(`sockets.connect_unix`: long paths reached, only a supervisor of our own user answered)
and speaks the same small HTTP: one request per connection, bodies sized by
Content-Length, chunked, or ended by the server closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackvisor.control import sockets
from stackvisor.errors import ApiError, NotRunning

_CHUNK = 64 * 1024


class BrokenAnswer(ConnectionError):
    """The supervisor's answer stopped short or is not the HTTP we speak."""


@dataclass(frozen=True)
class ServerEvent:
    """One server-sent event: its `event:` name and its `data:` as JSON."""

    kind: str
    data: Any


class _Answer:
    def __init__(self, reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> None:
        self.reader = reader
        self.status = status
        self.headers = headers

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await self.reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        return
                    yield await self.reader.readexactly(size)
                    await self.reader.readexactly(2)
            elif (length := self.headers.get("content-length")) is not None:
                yield await self.reader.readexactly(int(length))
            else:
                while data := await self.reader.read(_CHUNK):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise BrokenAnswer(f"the supervisor's answer broke off ({exc})") from None

    async def body(self) -> Any:
        raw = b"".join([piece async for piece in self.pieces()])
        if "json" in self.headers.get("content-type", "") and raw:
            return json.loads(raw)
        return raw.decode("utf-8", "replace")


class Feed:
    """Questions, actions and streams of one stack's supervisor, at `path` (its socket)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.asynccontextmanager
    async def _exchange(self, method: str, url: str, body: Any = None) -> AsyncIterator[_Answer]:
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        try:
            # Connecting checks who serves the socket (a blocking call): off the loop.
            sock = await asyncio.to_thread(sockets.connect_unix, self.path, 5.0)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"the stack is not running ({exc})") from None
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_CHUNK)
        try:
            writer.write(head.encode("latin-1") + b"\r\n" + data)
            await writer.drain()
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                raise BrokenAnswer(f"no answer from the supervisor ({exc})") from None
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise BrokenAnswer(f"not an HTTP status line: {lines[0][:80]!r}")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            answer = _Answer(reader, int(parts[1]), headers)
            if answer.status >= 400:
                raise ApiError.from_body(answer.status, await answer.body())
            yield answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, method: str, url: str, body: Any = None) -> Any:
        async with self._exchange(method, url, body) as answer:
            return await answer.body()

    async def get(self, url: str) -> Any:
        return await self.request("GET", url)

    async def post(self, url: str, body: Any = None) -> Any:
        return await self.request("POST", url, body if body is not None else {})

    async def lines(self, url: str) -> AsyncIterator[str]:
        """The lines of a streamed answer (`logs?follow=true`) until the server ends it."""
        async with self._exchange("GET", url) as answer:
            rest = b""
            async for piece in answer.pieces():
                rest += piece
                *done, rest = rest.split(b"\n")
                for line in done:
                    yield line.decode("utf-8", "replace")
            if rest:
                yield rest.decode("utf-8", "replace")

    async def events(self, url: str) -> AsyncIterator[ServerEvent]:
        """Server-sent events (`/v1/events`), each with its data read as JSON."""
        kind, data = "message", list[str]()
        async for raw in self.lines(url):
            line = raw.removesuffix("\r")
            if not line:
                if data:
                    with contextlib.suppress(ValueError):  # not ours to understand: the next one is
                        yield ServerEvent(kind, json.loads("\n".join(data)))
                kind, data = "message", []
            elif line.startswith(":"):
                continue  # a keep-alive
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
