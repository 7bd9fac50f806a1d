"""`stackvisor ui`: the status page in a browser's reach, on 127.0.0.1.

A browser cannot open the stack's unix socket, so this command serves the page and
forwards the API to it (streams included: events and logs flow through as they come).
Nobody else on the machine may use it: it prints an address carrying a one-time token;
the first request with that token gets a session cookie (HttpOnly, SameSite=Strict, named
after the port, since cookies do not tell ports apart) and is sent on to the bare page.
Without the session every route answers 401, a second use of the token too. A request
that changes something (POST) also needs the session's CSRF value in `X-CSRF-Token`
(the page reads it from a second cookie, `sv_csrf_<port>`, that scripts of this origin
alone can see) and, when the browser names an origin, this one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stackvisor.cli.common import EXIT_OK, client, locate

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

# Headers of the API's answers that are the connection's own business, not the browser's.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
_CHUNK = 64 * 1024


@dataclass
class Sessions:
    """The one-time token and the sessions it opened (session id -> CSRF value)."""

    port: int
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    used: bool = False
    open: dict[str, str] = field(default_factory=dict)

    @property
    def cookie(self) -> str:
        return f"sv_session_{self.port}"

    @property
    def csrf_cookie(self) -> str:
        return f"sv_csrf_{self.port}"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def redeem(self, given: str) -> tuple[str, str] | None:
        """A new session (id, CSRF value) for the right token, once; None otherwise."""
        if self.used or not hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        self.used = True
        session, check = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.open[session] = check
        return session, check

    def check(self, session: str | None) -> str | None:
        """The CSRF value of a live session, None for anything else."""
        if not session:
            return None
        for known, value in self.open.items():
            if hmac.compare_digest(known.encode(), session.encode()):
                return value
        return None


def make_app(sessions: Sessions, upstream: Path) -> web.Application:
    from aiohttp import web

    from stackvisor.control import page
    from stackvisor.control.http import Handler

    def refuse(status: int, why: str) -> web.Response:
        return web.json_response(
            {"error": "unauthorized" if status == 401 else "forbidden", "detail": why}, status=status
        )

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.query.get("token")
        if request.path == "/" and given is not None:
            opened = sessions.redeem(given)
            if opened is None:
                return refuse(
                    401, "this address's token was used already or is wrong: run `stackvisor ui` again"
                )
            found = web.HTTPSeeOther("/")
            found.set_cookie(sessions.cookie, opened[0], path="/", samesite="Strict", httponly=True)
            found.set_cookie(sessions.csrf_cookie, opened[1], path="/", samesite="Strict")
            found.headers["Referrer-Policy"] = "no-referrer"
            return found
        check = sessions.check(request.cookies.get(sessions.cookie))
        if check is None:
            return refuse(401, "no session: open the address `stackvisor ui` printed")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("Origin")
            if origin is not None and origin != sessions.origin:
                return refuse(403, f"requests from {origin} are not accepted")
            if not hmac.compare_digest(request.headers.get("X-CSRF-Token", "").encode(), check.encode()):
                return refuse(403, "a change needs the page's X-CSRF-Token header")
        return await handler(request)

    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024)
    page.add_routes(app.router)
    connection: dict[str, ClientSession] = {}

    async def forward(request: web.Request) -> web.StreamResponse:
        from aiohttp import ClientError, ClientSession, ClientTimeout, UnixConnector

        if "http" not in connection:
            connection["http"] = ClientSession(
                connector=UnixConnector(path=str(upstream)), timeout=ClientTimeout(total=None, sock_connect=5)
            )
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("accept", "content-type", "last-event-id")
        }
        body = await request.read() if request.can_read_body else None
        try:
            async with connection["http"].request(
                request.method, f"http://stack{request.path_qs}", headers=headers, data=body
            ) as answer:
                out = web.StreamResponse(status=answer.status)
                out.headers.update({k: v for k, v in answer.headers.items() if k.lower() not in _HOP})
                out.headers["Cache-Control"] = "no-store"
                await out.prepare(request)
                async for chunk in answer.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (ClientError, OSError) as exc:
            why = f"the stack's supervisor does not answer ({exc}); is it still up?"
            return web.json_response({"error": "stack unreachable", "detail": why}, status=503)

    async def close(app: web.Application) -> None:
        if "http" in connection:
            await connection["http"].close()

    app.on_cleanup.append(close)
    for prefix in ("/v1/{tail:.*}", "/metrics", "/openapi.json"):
        app.router.add_route("*", prefix, forward)
    return app


def _listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


async def _serve(sock: socket.socket, sessions: Sessions, upstream: Path, opener: bool) -> None:
    from aiohttp import web

    runner = web.AppRunner(
        make_app(sessions, upstream), access_log=None, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        url = f"{sessions.origin}/?token={sessions.token}"
        print(f"status page: {url}", flush=True)
        print(
            "(the address works once; Ctrl-C stops serving it, the stack keeps running)",
            file=sys.stderr,
            flush=True,
        )
        if opener:
            import webbrowser

            await asyncio.to_thread(webbrowser.open, url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def cmd_ui(args: argparse.Namespace) -> int:
    stack = locate(args)
    api = client(stack)  # NotRunning (exit 3) when there is no stack to show
    try:
        sock = _listening(args.port)
    except OSError as exc:
        print(f"stackvisor: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sessions = Sessions(sock.getsockname()[1])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sock, sessions, api.path, args.open))
    return EXIT_OK
