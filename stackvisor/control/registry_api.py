"""The port registry over the control API: `/v1/ports/...` on every stack's socket.

The same registry as `stackvisor ports VERB` (the user's ports.db), so a tool that
speaks HTTP to any running stack can allocate, renew, release and look up ports. Each
call runs in a thread (sqlite may wait for another writer's lock) on one connection
of this server's own. Allocations, releases and expirations made here are events.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from stackvisor.config.kinds import parse_duration
from stackvisor.control.http import bool_query, int_query, json_body, supervisor
from stackvisor.errors import ApiError, UnsafePath
from stackvisor.ports.leases import Allocation, RegistryError
from stackvisor.ports.registry import Registry
from stackvisor.runtime.events import PortAllocated, PortExpired, PortReleased

if TYPE_CHECKING:
    from stackvisor.runtime.supervisor import Supervisor

T = TypeVar("T")
REGISTRY: web.AppKey[_Shared] = web.AppKey("registry")


class _Shared:
    """One registry connection for the server's requests, used by one thread at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registry: Registry | None = None

    def run(self, func: Callable[[Registry], T]) -> T:
        with self.lock:
            if self.registry is None or self.registry.replaced():
                if self.registry is not None:
                    self.registry.close()
                self.registry = Registry.open()
            return func(self.registry)

    def close(self) -> None:
        with self.lock:
            if self.registry is not None:
                self.registry.close()
                self.registry = None


async def _call(request: web.Request, func: Callable[[Registry], T]) -> T:
    try:
        return await asyncio.to_thread(request.app[REGISTRY].run, func)
    except RegistryError as exc:
        raise ApiError(exc.status, "refused" if exc.status == 409 else "bad request", str(exc)) from None
    except (OSError, UnsafePath) as exc:
        raise ApiError(409, "registry unavailable", str(exc)) from None


def _publish(sup: Supervisor, payload: type[PortAllocated], allocations: list[Allocation]) -> None:
    for a in allocations:
        sup.bus.publish(payload(a.id, a.port, a.name, a.type, a.owner))


def _rows(registry: Registry, allocations: list[Allocation]) -> list[dict[str, Any]]:
    return registry.as_dicts(allocations)


def _optional_int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"bad {key}", f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"bad {key}", f"expected a string, got {value!r}")
    return value


async def allocate(request: web.Request) -> web.Response:
    body = await json_body(request)
    name = _text(body, "name")
    if not name:
        raise ApiError(400, "bad name", "expected the name of what the port is for")
    kind = _text(body, "type", "custom") or "custom"
    preferred = _optional_int(body, "preferred", 1, 65535)
    pid = _optional_int(body, "pid", 1, 2**31 - 1)
    raw_ttl = body.get("ttl")
    try:
        ttl = None if raw_ttl is None else parse_duration(raw_ttl)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ApiError(400, "bad ttl", str(exc)) from None
    required = body.get("required", False)
    if not isinstance(required, bool):
        raise ApiError(400, "bad required", f"expected true or false, got {required!r}")
    sup = supervisor(request)
    types = sup.config.port_types()

    def run(registry: Registry) -> tuple[dict[str, Any], Allocation, list[Allocation]]:
        got, expired = registry.allocate(
            name, kind=kind, preferred=preferred, required=required, ttl=ttl, pid=pid, types=types
        )
        return _rows(registry, [got])[0], got, expired

    row, got, expired = await _call(request, run)
    _publish(sup, PortExpired, expired)
    _publish(sup, PortAllocated, [got])
    return web.json_response(row)


async def release(request: web.Request) -> web.Response:
    body = await json_body(request)
    allocation_id = _text(body, "id")
    if not allocation_id:
        raise ApiError(400, "bad id", "expected the id of an allocation")
    gone = await _call(request, lambda registry: registry.release(allocation_id))
    _publish(supervisor(request), PortReleased, [gone])
    return web.json_response(gone.as_dict(gone.last_heartbeat))


async def heartbeat(request: web.Request) -> web.Response:
    await json_body(request)
    allocation_id = request.match_info["id"]
    row = await _call(request, lambda registry: _rows(registry, [registry.heartbeat(allocation_id)])[0])
    return web.json_response(row)


async def cleanup(request: web.Request) -> web.Response:
    await json_body(request)

    def run(registry: Registry) -> tuple[list[Allocation], int, list[dict[str, Any]]]:
        expired, forgotten = registry.cleanup()
        return expired, forgotten, _rows(registry, expired)

    expired, forgotten, rows = await _call(request, run)
    _publish(supervisor(request), PortExpired, expired)
    return web.json_response({"expired": rows, "forgotten": forgotten})


async def directory(request: web.Request) -> web.Response:
    kind = request.query.get("type")
    everything = bool_query(request, "all")
    rows = await _call(
        request, lambda registry: _rows(registry, registry.listing(kind, everything=everything))
    )
    return web.json_response(rows)


async def by_type(request: web.Request) -> web.Response:
    kind = request.match_info["type"]
    if kind not in supervisor(request).config.port_types():
        raise ApiError(400, "unknown type", f"{kind!r} is not a service type (GET /v1/ports/ranges)")
    rows = await _call(request, lambda registry: _rows(registry, registry.listing(kind)))
    return web.json_response(rows)


async def _found(request: web.Request, key: str | int) -> web.Response:
    rows = await _call(request, lambda registry: _rows(registry, registry.lookup(key)))
    if not rows:
        raise ApiError(404, "no allocation", f"no live allocation for {key}")
    return web.json_response(rows)


async def by_service(request: web.Request) -> web.Response:
    return await _found(request, request.match_info["name"])


async def by_port(request: web.Request) -> web.Response:
    raw = request.match_info["port"]
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 65535:
        raise ApiError(400, "bad port", f"expected a port between 1 and 65535, got {raw!r}")
    return await _found(request, int(raw))


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await _call(request, lambda registry: registry.stats()))


def _ranges(sup: Supervisor) -> dict[str, list[int] | None]:
    return {kind: list(span) if span else None for kind, span in sup.config.port_types().items()}


async def ranges(request: web.Request) -> web.Response:
    return web.json_response(_ranges(supervisor(request)))


async def overview(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 1000, 1, 100000)

    def run(registry: Registry) -> dict[str, Any]:
        live = registry.listing()
        return {
            "stats": registry.stats(),
            "reserved": sorted(registry.reserved_ports()),
            "allocations": _rows(registry, live[:limit]),
        }

    out = await _call(request, run)
    out["ranges"] = _ranges(supervisor(request))
    return web.json_response(out)


def add_routes(app: web.Application) -> None:
    app[REGISTRY] = _Shared()
    app.on_cleanup.append(_close)
    app.router.add_post("/v1/ports/allocate", allocate)
    app.router.add_post("/v1/ports/release", release)
    app.router.add_post("/v1/ports/{id}/heartbeat", heartbeat)
    app.router.add_post("/v1/ports/cleanup", cleanup)
    app.router.add_get("/v1/ports/directory", directory)
    app.router.add_get("/v1/ports/service/{name}", by_service)
    app.router.add_get("/v1/ports/port/{port}", by_port)
    app.router.add_get("/v1/ports/type/{type}", by_type)
    app.router.add_get("/v1/ports/overview", overview)
    app.router.add_get("/v1/ports/stats", stats)
    app.router.add_get("/v1/ports/ranges", ranges)


async def _close(app: web.Application) -> None:
    app[REGISTRY].close()


# ----- the OpenAPI paths (merged into `openapi.OPENAPI`) -------------------------------------

_ALLOCATION = {
    "type": "object",
    "required": ["id", "port", "name", "type", "owner", "pid", "status", "ttl", "last_heartbeat"],
    "properties": {
        "id": {"type": "string"},
        "port": {"type": "integer"},
        "name": {"type": "string"},
        "type": {"type": "string"},
        "owner": {"type": "string", "description": "the stack file, or `script`"},
        "pid": {"type": ["integer", "null"], "description": "the holder: it lives while this process does"},
        "pid_start": {
            "type": ["number", "null"],
            "description": "when the holder started, in seconds since boot: with pid, its identity",
        },
        "host": {"type": "string"},
        "allocated_at": {"type": "number"},
        "last_heartbeat": {"type": "number"},
        "heartbeat_age": {"type": "number"},
        "ttl": {"type": ["number", "null"]},
        "status": {"type": "string", "enum": ["active", "reserved", "expired"]},
    },
}
_LIST = {"type": "array", "items": {"$ref": "#/components/schemas/Allocation"}}
_ERR = {"$ref": "#/components/schemas/Error"}


def _doc(summary: str, schema: Any, *codes: int, **extra: Any) -> dict[str, Any]:
    text = {400: "bad input", 404: "unknown", 409: "not available (the body names the holder)"}
    responses = {"200": {"description": "ok", "content": {"application/json": {"schema": schema}}}}
    responses |= {
        str(c): {"description": text[c], "content": {"application/json": {"schema": _ERR}}} for c in codes
    }
    return {"summary": summary, "responses": responses, **extra}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


PATHS: dict[str, Any] = {
    "/v1/ports/allocate": {
        "post": _doc(
            "Allocate a port in the user's registry (held by `pid`, and/or by heartbeats within `ttl`)",
            {"$ref": "#/components/schemas/Allocation"},
            400,
            409,
            requestBody=_body(
                {
                    "name": {"type": "string"},
                    "type": {"type": "string", "description": "a service type (GET /v1/ports/ranges)"},
                    "preferred": {"type": "integer"},
                    "required": {"type": "boolean"},
                    "ttl": {"type": ["number", "string"], "description": "seconds, or a duration like 60s"},
                    "pid": {"type": "integer"},
                },
                ["name"],
            ),
        )
    },
    "/v1/ports/release": {
        "post": _doc(
            "Release an allocation",
            {"$ref": "#/components/schemas/Allocation"},
            400,
            404,
            requestBody=_body({"id": {"type": "string"}}, ["id"]),
        )
    },
    "/v1/ports/{id}/heartbeat": {
        "post": _doc(
            "Renew an allocation's lease",
            {"$ref": "#/components/schemas/Allocation"},
            400,
            404,
            parameters=[_path("id")],
        )
    },
    "/v1/ports/cleanup": {
        "post": _doc("Expire what is dead; forget old expired allocations", {"type": "object"}, 400)
    },
    "/v1/ports/directory": {
        "get": _doc(
            "Every live allocation (all=true: also the expired)",
            _LIST,
            400,
            parameters=[
                {"name": "type", "in": "query", "schema": {"type": "string"}},
                {"name": "all", "in": "query", "schema": {"type": "boolean"}},
            ],
        )
    },
    "/v1/ports/service/{name}": {
        "get": _doc("The live allocations of a name", _LIST, 404, parameters=[_path("name")])
    },
    "/v1/ports/port/{port}": {
        "get": _doc("The live allocation of a port", _LIST, 400, 404, parameters=[_path("port", "integer")])
    },
    "/v1/ports/type/{type}": {
        "get": _doc("The live allocations of a service type", _LIST, 400, parameters=[_path("type")])
    },
    "/v1/ports/overview": {
        "get": _doc(
            "Stats, reserved ports, ranges and the live allocations",
            {"type": "object"},
            400,
            parameters=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
        )
    },
    "/v1/ports/stats": {"get": _doc("Allocations by status and by type", {"type": "object"})},
    "/v1/ports/ranges": {
        "get": _doc("The service types and their ranges (null: any port)", {"type": "object"})
    },
}
SCHEMAS = {"Allocation": _ALLOCATION}
