"""What every handler of the control API shares: the app's keys, reading a request, errors, auth.

Errors are `{"error": ..., "detail": ...}` with a 4xx status that says what was
wrong (404 unknown service or route, 400 malformed input, 405 wrong method, 409 an
action that conflicts with the current state, 401 a missing or wrong token on TCP).
An unexpected exception is logged and answered as JSON too, and the stack stays up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from stackvisor.errors import ApiError

if TYPE_CHECKING:
    from stackvisor.runtime.supervisor import Supervisor

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
TOKEN: web.AppKey[str | None] = web.AppKey("token")
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("closing")


class Trust:
    """Told of each TCP connection (aiohttp's protocol object) that showed the token;
    the server's guard (see `server`) listens."""

    def __init__(self) -> None:
        self.shown: Callable[[object], None] = lambda connection: None


TRUSTED: web.AppKey[Trust] = web.AppKey("trusted")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    except Exception as exc:  # noqa: BLE001 - a bug: say so in JSON, keep serving, keep the stack up
        request.app[SUPERVISOR].logger.exception("control API error", path=request.path)
        return error_response(500, "internal error", f"{type(exc).__name__}: {exc}")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """TCP needs the bearer token; the unix socket is guarded by its 0600 mode."""
    local = request.transport is not None and isinstance(request.transport.get_extra_info("sockname"), str)
    if not local:  # TCP, or a connection we cannot tell: the token is required
        token = request.app[TOKEN]
        # The scheme is case-insensitive (RFC 7235): `bearer x` is `Bearer x`.
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        valid = scheme.lower() == "bearer" and token is not None
        if not valid or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), (token or "").encode()
        ):
            return error_response(401, "unauthorized", "send Authorization: Bearer <token>")
        request.app[TRUSTED].shown(request.protocol)
    return await handler(request)


def supervisor(request: web.Request) -> Supervisor:
    return request.app[SUPERVISOR]


def service_name(request: web.Request) -> str:
    """The `{name}` of the route, which must be a service of the stack (else 404)."""
    name = request.match_info["name"]
    runners = supervisor(request).runners
    if name not in runners:
        known = ", ".join(sorted(runners))
        raise ApiError(404, "unknown service", f"{name!r} is not a service of this stack ({known})")
    return name


def int_query(request: web.Request, key: str, default: int, low: int, high: int) -> int:
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


def bool_query(request: web.Request, key: str) -> bool:
    raw = request.query.get(key, "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise ApiError(400, f"bad {key}", f"expected true or false, got {raw!r}")


async def json_body(request: web.Request) -> dict[str, Any]:
    """An optional JSON object body; anything else is a 400."""
    if not request.can_read_body:
        return {}
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # a body its Content-Encoding does not decode
        raise ApiError(400, "malformed body", f"the body cannot be decoded: {exc.__cause__ or exc}") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        # JSON may escape half a surrogate pair (`"\ud800"`), which no text can hold:
        json.dumps(data, ensure_ascii=False).encode()
    except RecursionError:
        raise ApiError(400, "malformed body", "nested too deeply") from None
    except UnicodeEncodeError:
        raise ApiError(400, "malformed body", "a string is not valid unicode (a lone surrogate)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed body", f"expected a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed body", "expected a JSON object")
    return data


def bool_field(body: dict[str, Any], key: str) -> bool:
    """An optional true/false of a JSON body (absent: false); anything else is a 400."""
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise ApiError(400, "malformed body", f"{key}: expected true or false, got {value!r}")
    return value


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
