"""The control API: aiohttp on the stack's unix socket (and, with a token, on TCP).

Here: the routes and the handlers of single requests, which only translate HTTP to
calls on the `Supervisor` and back (what an action does is decided there), and
`ControlServer`, the running API. Elsewhere in this package: request helpers,
errors and auth (`http`), streams (`streams`), metrics (`metrics`), the OpenAPI
document (`openapi`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from typing import Any

from aiohttp import web

from stackvisor.control import audit_api, metrics, page, registry_api, streams
from stackvisor.control.http import (
    CLOSING,
    SUPERVISOR,
    TOKEN,
    TRUSTED,
    Trust,
    auth,
    bool_field,
    bool_query,
    errors,
    json_body,
    service_name,
    supervisor,
)
from stackvisor.control.openapi import OPENAPI
from stackvisor.control.scaling_api import group_action, group_status, scale
from stackvisor.errors import ActionConflict, ApiError
from stackvisor.runtime.supervisor import Supervisor


async def status(request: web.Request) -> web.Response:
    return web.json_response(supervisor(request).status(resources=bool_query(request, "resources")))


async def service(request: web.Request) -> web.Response:
    if supervisor(request).is_group(request.match_info["name"]):  # its copies (`replicas`)
        return web.json_response(group_status(request))
    return web.json_response(supervisor(request).service_status(service_name(request)))


async def service_action(request: web.Request) -> web.Response:
    sup = supervisor(request)
    if sup.is_group(request.match_info["name"]):  # every copy of it (`replicas`)
        return await group_action(request)
    name = service_name(request)
    action = request.match_info["action"]
    await json_body(request)
    try:
        if action == "start":
            await sup.start_service(name)
        elif action == "stop":
            await sup.stop_service(name)
        else:
            await sup.restart_services([name])
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(sup.service_status(name))


def _names(body: dict[str, Any], field: str = "services") -> list[str]:
    names = body.get(field, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(400, "malformed body", f"{field}: expected a list of names")
    return names


async def restart_many(request: web.Request) -> web.Response:
    body = await json_body(request)
    sup = supervisor(request)
    names = [one for name in _names(body) for one in sup.members(name)]
    unknown = [n for n in names if n not in sup.runners]
    if unknown:
        raise ApiError(404, "unknown service", ", ".join(unknown))
    try:
        await sup.restart_services(names or sorted(sup.selection))
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(sup.status())


async def up(request: web.Request) -> web.Response:
    """`up` against the running stack: the file applied, what is missing started."""
    body = await json_body(request)
    names = _names(body)
    profiles = _names(body, "profiles")
    try:
        result = await supervisor(request).converge(names, profiles)
    except LookupError as exc:
        raise ApiError(404, "unknown service", str(exc.args[0])) from None
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if not result["reload"]["ok"]:
        raise ApiError(400, "invalid stack file, nothing changed", result["reload"].get("error", ""))
    return web.json_response(result)


async def stop_stack(request: web.Request) -> web.Response:
    await json_body(request)
    sup = supervisor(request)
    sup.request_stop("stopped by `stackvisor down` or POST /v1/stop")
    return web.json_response({"stopping": True, "pid": sup.pid}, status=202)


async def heartbeat(request: web.Request) -> web.Response:
    await json_body(request)
    left = supervisor(request).heartbeat()
    return web.json_response({"ok": True, "lease_seconds_left": left})


async def service_heartbeat(request: web.Request) -> web.Response:
    name = service_name(request)
    await json_body(request)
    try:
        left = supervisor(request).heartbeat(name)
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response({"ok": True, "lease_seconds_left": left})


async def reload(request: web.Request) -> web.Response:
    body = await json_body(request)
    dry_run = bool_field(body, "dry_run") or bool_query(request, "dry_run")
    try:
        result = await supervisor(request).reload(dry_run=dry_run)
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if not result["ok"]:
        raise ApiError(400, "invalid stack file, nothing changed", result.get("error", ""))
    return web.json_response(result)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def make_app(sup: Supervisor, token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=1024 * 1024)
    app[SUPERVISOR] = sup
    app[TOKEN] = token
    app[CLOSING] = asyncio.Event()
    app[TRUSTED] = Trust()
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/services/{name}", service)
    app.router.add_post("/v1/services/{name}/{action:start|stop|restart}", service_action)
    app.router.add_get("/v1/services/{name}/logs", streams.logs)
    app.router.add_post("/v1/restart", restart_many)
    app.router.add_post("/v1/stop", stop_stack)
    app.router.add_post("/v1/up", up)
    app.router.add_post("/v1/reload", reload)
    app.router.add_post("/v1/heartbeat", heartbeat)
    app.router.add_post("/v1/services/{name}/heartbeat", service_heartbeat)
    app.router.add_post("/v1/services/{name}/scale", scale)
    app.router.add_get("/v1/events", streams.events)
    app.router.add_get("/v1/ws", streams.websocket)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics.metrics)
    app.router.add_get("/v1/audit", audit_api.audit)
    registry_api.add_routes(app)
    page.add_routes(app.router)
    return app


# A TCP connection must show the token within this many seconds, and no more than this
# many may be waiting to: past that, a new one is closed at once. Anyone on the machine
# can connect; only the token's holders may keep the supervisor's descriptors.
UNTRUSTED_WAIT = 10.0
UNTRUSTED_MAX = 64


class _TcpGuard:
    """Closes TCP connections that have not shown the token in time, and those beyond
    the few allowed to be waiting. aiohttp has no deadline for a request's headers, so
    this hooks where it registers each new connection (`Server.connection_made`)."""

    def __init__(self, runner: web.AppRunner, trust: Trust) -> None:
        assert runner.server is not None
        self.waiting: dict[object, asyncio.TimerHandle] = {}
        server = runner.server
        registered = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            registered(handler, transport)
            if isinstance(transport.get_extra_info("sockname"), tuple):  # TCP, not the unix socket
                self._arrived(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]
        trust.shown = self._shown

    def _arrived(self, handler: object, transport: asyncio.Transport) -> None:
        for gone in [h for h in self.waiting if getattr(h, "transport", None) is None]:
            self.waiting.pop(gone).cancel()  # closed meanwhile
        if len(self.waiting) >= UNTRUSTED_MAX:
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self.waiting[handler] = loop.call_later(UNTRUSTED_WAIT, self._expire, handler, transport)

    def _shown(self, handler: object) -> None:
        timer = self.waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, handler: object, transport: asyncio.Transport) -> None:
        if self.waiting.pop(handler, None) is not None:
            transport.abort()


class ControlServer:
    """The running API: bound before any service starts, closed after the last one stopped."""

    def __init__(self, sup: Supervisor, token: str | None = None) -> None:
        self.app = make_app(sup, token)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        self.sites: list[web.BaseSite] = []

    async def start(self, unix_sock: socket.socket, tcp: tuple[str, int] | None = None) -> None:
        """TCP first: whoever has an answer on the unix socket (`up -d --wait`) can count on
        the TCP address too. `sites[0]` is the unix one (see `replace_unix`)."""
        await self.runner.setup()
        tcp_site = None
        if tcp is not None:
            _TcpGuard(self.runner, self.app[TRUSTED])
            tcp_site = web.TCPSite(self.runner, tcp[0], tcp[1])
            await tcp_site.start()
        site = web.SockSite(self.runner, unix_sock)
        await site.start()
        self.sites.append(site)
        if tcp_site is not None:
            self.sites.append(tcp_site)

    async def replace_unix(self, unix_sock: socket.socket) -> None:
        """Serve on a new unix socket (the old one's file was deleted); stop the old one."""
        old = self.sites[0]
        site = web.SockSite(self.runner, unix_sock)
        await site.start()
        self.sites[0] = site
        await old.stop()

    async def close(self) -> None:
        self.app[CLOSING].set()
        await self.runner.cleanup()


def ensure_token(path: os.PathLike[str] | str) -> str:
    """STACKVISOR_TOKEN, else the token file (created 0600 with a new random token)."""
    env = os.environ.get("STACKVISOR_TOKEN")
    if env:
        return env
    # O_NOFOLLOW both ways: a link planted in place of the token is refused, not followed.
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as fh:
            text = fh.read().strip()
        if text:
            return text
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token
