"""The control API: aiohttp on the stack's unix socket (and, with a token, on TCP).

JSON in and out. Every error is `{"error": ..., "detail": ...}` with a 4xx status
that says what was wrong (404 unknown service or route, 400 malformed input, 405
wrong method, 409 an action that conflicts with the current state, 401 a missing
or wrong token on TCP). The handlers only translate HTTP to calls on the
`Supervisor` and back; what an action does is decided there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psutil
from aiohttp import WSMsgType, web

from stackvisor.control.openapi import OPENAPI
from stackvisor.runtime.events import Event
from stackvisor.runtime.states import State

if TYPE_CHECKING:
    from stackvisor.runtime.supervisor import Supervisor

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
TOKEN: web.AppKey[str | None] = web.AppKey("token")
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("closing")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def error_response(status: int, error: str, detail: str = "") -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reasons = {404: "not found", 405: "method not allowed"}
        detail = f"{request.method} {request.path}"
        return error_response(exc.status, reasons.get(exc.status, exc.reason.lower()), detail)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:  # a bug: say so in JSON, keep serving, keep the stack up
        request.app[SUPERVISOR].logger.exception("control API error", path=request.path)
        return error_response(500, "internal error", f"{type(exc).__name__}: {exc}")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """TCP needs the bearer token; the unix socket is guarded by its 0600 mode."""
    local = request.transport is not None and isinstance(
        request.transport.get_extra_info("sockname"), str
    )
    if not local:  # TCP, or a connection we cannot tell: the token is required
        token = request.app[TOKEN]
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        expected = f"Bearer {token}".encode() if token else None
        if expected is None or not hmac.compare_digest(given, expected):
            return error_response(401, "unauthorized", "send Authorization: Bearer <token>")
    return await handler(request)


def _sup(request: web.Request) -> Supervisor:
    return request.app[SUPERVISOR]


def _service(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in _sup(request).runners:
        known = ", ".join(sorted(_sup(request).runners))
        raise ApiError(404, "unknown service", f"{name!r} is not a service of this stack ({known})")
    return name


def _int_query(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"bad {key}", f"expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"bad {key}", f"expected {low} to {high}, got {value}")
    return value


def _bool_query(request: web.Request, key: str) -> bool:
    raw = request.query.get(key, "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(400, f"bad {key}", f"expected true or false, got {raw!r}")


async def _body(request: web.Request) -> dict[str, Any]:
    """An optional JSON object body; anything else is a 400."""
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "malformed body", "nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed body", f"expected a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed body", "expected a JSON object")
    return data


# ----- handlers --------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    return web.json_response(_sup(request).status())


async def service(request: web.Request) -> web.Response:
    return web.json_response(_sup(request).runners[_service(request)].status())


async def service_action(request: web.Request) -> web.Response:
    name = _service(request)
    action = request.match_info["action"]
    await _body(request)
    sup = _sup(request)
    try:
        if action == "start":
            await sup.start_service(name)
        elif action == "stop":
            await sup.stop_service(name)
        else:
            await sup.restart_services([name])
    except sup.Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(sup.runners[name].status())


async def restart_many(request: web.Request) -> web.Response:
    body = await _body(request)
    sup = _sup(request)
    names = body.get("services", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "malformed body", "services: expected a list of service names")
    unknown = [n for n in names if n not in sup.runners]
    if unknown:
        raise ApiError(404, "unknown service", ", ".join(unknown))
    try:
        await sup.restart_services(names or sorted(sup.selection))
    except sup.Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(sup.status())


async def stop_stack(request: web.Request) -> web.Response:
    await _body(request)
    sup = _sup(request)
    sup.request_stop("stop requested over the control socket")
    return web.json_response({"stopping": True, "pid": sup.pid}, status=202)


async def heartbeat(request: web.Request) -> web.Response:
    await _body(request)
    sup = _sup(request)
    left = sup.heartbeat()
    return web.json_response({"ok": True, "lease_seconds_left": left})


async def reload(request: web.Request) -> web.Response:
    body = await _body(request)
    dry_run = bool(body.get("dry_run")) or _bool_query(request, "dry_run")
    sup = _sup(request)
    try:
        result = await sup.reload(dry_run=dry_run)
    except sup.Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if not result["ok"]:
        raise ApiError(400, "invalid stack file, nothing changed", result["error"])
    return web.json_response(result)


async def logs(request: web.Request) -> web.StreamResponse:
    name = _service(request)
    tail = _int_query(request, "tail", 100, 0, 100_000)
    follow = _bool_query(request, "follow")
    log = _sup(request).runners[name].log
    lines = log.last(tail)
    if not follow:
        return web.Response(text="".join(f"{line}\n" for line in lines), content_type="text/plain")
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)

    def listen(line: str) -> None:
        if not queue.full():
            queue.put_nowait(line)

    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    log.listeners.add(listen)
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
        log.listeners.discard(listen)
    return resp


def _event_json(event: Event | dict[str, Any]) -> dict[str, Any]:
    return event.as_dict() if isinstance(event, Event) else event


def _history_since(sup: Supervisor, request: web.Request) -> list[dict[str, Any]]:
    raw = request.query.get("since")
    if raw is None:
        return []
    try:
        since = float(raw)
    except ValueError:
        raise ApiError(400, "bad since", f"expected a unix timestamp, got {raw!r}") from None
    return sup.state_db.events(since=since)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events; `?since=TS` first replays the history from TS."""
    sup = _sup(request)
    replay = _history_since(sup, request)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    closing = request.app[CLOSING]
    with sup.bus.subscribe() as sub:
        try:
            for item in replay:
                await resp.write(_sse(item))
            while True:
                getter = asyncio.ensure_future(sub.get())
                closer = asyncio.ensure_future(closing.wait())
                done, _ = await asyncio.wait({getter, closer}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
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
                await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
    return resp


def _sse(item: dict[str, Any]) -> bytes:
    return (
        f"id: {item.get('seq', '')}\nevent: {item['kind']}\ndata: {json.dumps(item, default=str)}\n\n"
    ).encode()


async def websocket(request: web.Request) -> web.StreamResponse:
    """The event stream over WebSocket: subscribe / unsubscribe / ping messages."""
    sup = _sup(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    kinds: set[str] | None = None
    services: set[str] | None = None
    subscribed = False

    async def forward(sub: Any) -> None:
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
                if not subscribed:
                    continue
                if kinds and event.kind not in kinds:
                    continue
                if services and event.service not in services:
                    continue
                await ws.send_json({"type": "event", "event": event.as_dict()}, dumps=_dumps)
            await ws.close(code=1001, message=b"the stack is down")
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away: nothing to tell it

    with sup.bus.subscribe() as sub:
        async with asyncio.TaskGroup() as tg:
            pusher = tg.create_task(forward(sub))
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        continue
                    try:
                        data = json.loads(msg.data)
                        kind = data["type"]
                    except (ValueError, KeyError, TypeError, RecursionError):
                        await ws.send_json({"type": "error", "error": "expected {\"type\": ...}"})
                        continue
                    if kind == "ping":
                        await ws.send_json({"type": "pong", "ts": time.time()})
                    elif kind == "subscribe":
                        wanted = {k: data.get(k) or [] for k in ("kinds", "services")}
                        if not all(
                            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in wanted.values()
                        ):
                            await ws.send_json({"type": "error", "error": "kinds and services: lists of names"})
                            continue
                        kinds = set(wanted["kinds"]) or None
                        services = set(wanted["services"]) or None
                        subscribed = True
                        await ws.send_json({"type": "subscribed"})
                    elif kind == "unsubscribe":
                        subscribed = False
                        await ws.send_json({"type": "unsubscribed"})
                    else:
                        await ws.send_json({"type": "error", "error": f"unknown type {kind!r}"})
            finally:
                pusher.cancel()
    return ws


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def metrics(request: web.Request) -> web.Response:
    sup = _sup(request)
    out = [
        "# HELP stackvisor_service_up 1 when the service has a live process.",
        "# TYPE stackvisor_service_up gauge",
    ]
    runners = list(sup.runners.values())
    alive = {State.STARTING, State.RUNNING, State.HEALTHY, State.UNHEALTHY, State.STOPPING}
    out += [f'stackvisor_service_up{{service="{r.name}"}} {int(r.state in alive)}' for r in runners]
    out += [
        "# HELP stackvisor_service_healthy 1 when the last health check passed.",
        "# TYPE stackvisor_service_healthy gauge",
    ]
    out += [
        f'stackvisor_service_healthy{{service="{r.name}"}} {int(r.state is State.HEALTHY)}' for r in runners
    ]
    out += [
        "# HELP stackvisor_service_restarts_total Restarts since the supervisor started.",
        "# TYPE stackvisor_service_restarts_total counter",
    ]
    out += [f'stackvisor_service_restarts_total{{service="{r.name}"}} {r.restarts_total}' for r in runners]
    out += [
        "# HELP stackvisor_service_state 1 for the state the service is in.",
        "# TYPE stackvisor_service_state gauge",
    ]
    for r in runners:
        out += [
            f'stackvisor_service_state{{service="{r.name}",state="{s}"}} {int(r.state is s)}'
            for s in State
        ]
    me = psutil.Process()
    cpu = me.cpu_times()
    out += [
        "# HELP process_cpu_seconds_total The supervisor's CPU time.",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {cpu.user + cpu.system:.3f}",
        "# HELP process_resident_memory_bytes The supervisor's resident memory.",
        "# TYPE process_resident_memory_bytes gauge",
        f"process_resident_memory_bytes {me.memory_info().rss}",
    ]
    return web.Response(text="\n".join(out) + "\n", content_type="text/plain", charset="utf-8")


def make_app(supervisor: Supervisor, token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=1024 * 1024)
    app[SUPERVISOR] = supervisor
    app[TOKEN] = token
    app[CLOSING] = asyncio.Event()
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/services/{name}", service)
    app.router.add_post("/v1/services/{name}/{action:start|stop|restart}", service_action)
    app.router.add_get("/v1/services/{name}/logs", logs)
    app.router.add_post("/v1/restart", restart_many)
    app.router.add_post("/v1/stop", stop_stack)
    app.router.add_post("/v1/reload", reload)
    app.router.add_post("/v1/heartbeat", heartbeat)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/ws", websocket)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    return app


class ControlServer:
    """The running API: bound before any service starts, closed after the last one stopped."""

    def __init__(self, supervisor: Supervisor, token: str | None = None) -> None:
        self.app = make_app(supervisor, token)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        self.sites: list[web.BaseSite] = []

    async def start(self, unix_sock: Any, tcp: tuple[str, int] | None = None) -> None:
        await self.runner.setup()
        site = web.SockSite(self.runner, unix_sock)
        await site.start()
        self.sites.append(site)
        if tcp is not None:
            tcp_site = web.TCPSite(self.runner, tcp[0], tcp[1])
            await tcp_site.start()
            self.sites.append(tcp_site)

    async def close(self) -> None:
        self.app[CLOSING].set()
        await self.runner.cleanup()


def parse_tcp(address: str) -> tuple[str, int]:
    """`127.0.0.1:7070` -> ("127.0.0.1", 7070); the schema has checked the address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def ensure_token(path: os.PathLike[str] | str) -> str:
    """STACKVISOR_TOKEN, else the token file (created 0600 with a new random token)."""
    import secrets

    env = os.environ.get("STACKVISOR_TOKEN")
    if env:
        return env
    with contextlib.suppress(FileNotFoundError):
        text = open(path).read().strip()
        if text:
            return text
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token
