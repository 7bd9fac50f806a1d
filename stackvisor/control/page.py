"""The status page: `GET /` and its two assets, files of the package (`page/`: HTML, CSS
and JavaScript, no build step, nothing fetched from elsewhere).

The control server serves them on its own socket (and on TCP behind its token), and
`stackvisor ui` serves them in the browser's reach, behind a session (`cli.ui`). Every
answer forbids what the page never does: scripts, styles and connections from another
origin, being framed, and sending the address (which may carry a one-time token) on.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

FOLDER = Path(__file__).with_name("page")
ASSETS = {
    "index.html": "text/html",
    "page.css": "text/css",
    "page.js": "text/javascript",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def asset(name: str) -> bytes:
    """One file of the page, read once."""
    return (FOLDER / name).read_bytes()


def weight() -> int:
    """What the page weighs, in bytes, all files together."""
    return sum(len(asset(name)) for name in ASSETS)


def answer(name: str) -> web.Response:
    return web.Response(body=asset(name), content_type=ASSETS[name], charset="utf-8", headers=HEADERS)


async def index(request: web.Request) -> web.Response:
    return answer("index.html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in ASSETS or name == "index.html":
        raise web.HTTPNotFound()
    return answer(name)


async def no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=HEADERS)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", index)
    router.add_get("/ui/{asset}", static)
    router.add_get("/favicon.ico", no_icon)  # asked for by every browser: nothing to show
