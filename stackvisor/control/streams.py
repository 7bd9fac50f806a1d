"""The control API's long-lived answers: a service's log followed live, events as SSE and
over WebSocket.

Each stream ends cleanly when the stack goes down (the app's `CLOSING` event), after
delivering what was already queued, and a client that goes away costs nothing but
its subscription. A slow reader loses its oldest events (see `EventBus`), never
stalls the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

from stackvisor.control.http import CLOSING, bool_query, dumps, int_query, service_name, supervisor
from stackvisor.errors import ApiError
from stackvisor.runtime.events import Subscription


async def logs(request: web.Request) -> web.StreamResponse:
    name = service_name(request)
    tail = int_query(request, "tail", 100, 0, 100_000)
    follow = bool_query(request, "follow")
    runner = supervisor(request).runners[name]
    lines = runner.log.last(tail)
    if not follow and not runner.log.reaches(tail):  # more than the memory keeps: the files have them
        with contextlib.suppress(OSError):
            lines = await asyncio.to_thread(runner.log.file.last_lines, tail)
    if not follow:
        return web.Response(text="".join(f"{line}\n" for line in lines), content_type="text/plain")
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)

    def listen(line: str) -> None:
        if not queue.full():
            queue.put_nowait(line)

    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    runner.log.listeners.add(listen)
    try:
        if lines:
            await resp.write("".join(f"{line}\n" for line in lines).encode())
        closing = request.app[CLOSING]
        while not closing.is_set():
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(queue.get(), 1.0)
                batch = [line]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                await resp.write("".join(f"{x}\n" for x in batch).encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        runner.log.listeners.discard(listen)
    return resp


def _history_since(request: web.Request) -> list[dict[str, Any]]:
    raw = request.query.get("since")
    if raw is None:
        return []
    try:
        since = float(raw)
    except ValueError:
        raise ApiError(400, "bad since", f"expected a unix timestamp, got {raw!r}") from None
    db = supervisor(request).state_db
    return db.events(since=since) if db is not None else []


def _sse(item: dict[str, Any]) -> bytes:
    return f"id: {item.get('seq', '')}\nevent: {item['kind']}\ndata: {dumps(item)}\n\n".encode()


def _resources(request: web.Request) -> bytes:
    """What each service uses now, as one `resources` event (not an event of the stack:
    no id, never in the history)."""
    status = supervisor(request).status(resources=True)
    used = {s["name"]: s.get("resources") for s in status["services"]}
    return f"event: resources\ndata: {dumps({'ts': time.time(), 'services': used})}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events; `?since=TS` first replays the history from TS; `?resources=N`
    adds what each service uses every N seconds (the status page's CPU and memory)."""
    sup = supervisor(request)
    replay = _history_since(request)
    every = int_query(request, "resources", 0, 0, 3600)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    closing = request.app[CLOSING]
    loop = asyncio.get_running_loop()
    sample_at = loop.time() + every if every else None
    with sup.bus.subscribe() as sub:
        try:
            for item in replay:
                await resp.write(_sse(item))
            while True:
                if sample_at is not None and loop.time() >= sample_at:  # also amid a flood of events
                    sample_at = loop.time() + every
                    await resp.write(_resources(request))
                quiet_until = loop.time() + 15.0
                wait = min(quiet_until, sample_at or quiet_until) - loop.time()
                getter = asyncio.ensure_future(sub.get())
                closer = asyncio.ensure_future(closing.wait())
                done, _ = await asyncio.wait(
                    {getter, closer}, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
                )
                closer.cancel()
                if getter in done:
                    await resp.write(_sse(getter.result().as_dict()))
                    continue
                getter.cancel()
                if closer in done:
                    # The stack is down: deliver what is still queued, then end the stream cleanly.
                    while not sub.queue.empty():
                        await resp.write(_sse(sub.queue.get_nowait().as_dict()))
                    await resp.write_eof()
                    break
                if sample_at is None or loop.time() < sample_at:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
    return resp


class _Filter:
    """What one WebSocket client asked for."""

    def __init__(self) -> None:
        self.subscribed = False
        self.kinds: set[str] | None = None
        self.services: set[str] | None = None

    def wants(self, kind: str, service: str | None) -> bool:
        if not self.subscribed:
            return False
        if self.kinds and kind not in self.kinds:
            return False
        return not self.services or service in self.services


async def _forward(
    request: web.Request, ws: web.WebSocketResponse, sub: Subscription, wanted: _Filter
) -> None:
    closing = request.app[CLOSING]
    try:
        while not closing.is_set():
            getter = asyncio.ensure_future(sub.get())
            closer = asyncio.ensure_future(closing.wait())
            done, _ = await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
            closer.cancel()
            if getter not in done:
                getter.cancel()
                break
            event = getter.result()
            if wanted.wants(event.kind, event.service):
                await ws.send_json({"type": "event", "event": event.as_dict()}, dumps=dumps)
        await ws.close(code=1001, message=b"the stack is down")
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away: nothing to tell it


async def _answer(ws: web.WebSocketResponse, data: Any, wanted: _Filter) -> None:
    try:
        kind = data["type"]
    except (KeyError, TypeError):
        await ws.send_json({"type": "error", "error": 'expected {"type": ...}'})
        return
    if kind == "ping":
        await ws.send_json({"type": "pong", "ts": time.time()})
    elif kind == "subscribe":
        lists = {k: data.get(k) or [] for k in ("kinds", "services")}
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists.values()):
            await ws.send_json({"type": "error", "error": "kinds and services: lists of names"})
            return
        wanted.kinds = set(lists["kinds"]) or None
        wanted.services = set(lists["services"]) or None
        wanted.subscribed = True
        await ws.send_json({"type": "subscribed"})
    elif kind == "unsubscribe":
        wanted.subscribed = False
        await ws.send_json({"type": "unsubscribed"})
    else:
        await ws.send_json({"type": "error", "error": f"unknown type {kind!r}"})


async def websocket(request: web.Request) -> web.StreamResponse:
    """The event stream over WebSocket: subscribe / unsubscribe / ping messages."""
    sup = supervisor(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    wanted = _Filter()
    with sup.bus.subscribe() as sub:
        async with asyncio.TaskGroup() as tg:
            pusher = tg.create_task(_forward(request, ws, sub, wanted))
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        continue
                    try:
                        data = json.loads(msg.data)
                    except (ValueError, RecursionError):
                        await ws.send_json({"type": "error", "error": 'expected {"type": ...}'})
                        continue
                    await _answer(ws, data, wanted)
            finally:
                pusher.cancel()
    return ws
