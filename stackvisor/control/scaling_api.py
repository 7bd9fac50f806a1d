"""The API of replicated services: `POST /v1/services/{name}/scale`, and start, stop and
restart of a group (every copy of it), with their OpenAPI paths.

Only the translation between HTTP and the supervisor (`runtime.scaling`) lives here.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stackvisor.config.replicas import written
from stackvisor.config.schema import MAX_REPLICAS
from stackvisor.control.http import json_body, supervisor
from stackvisor.errors import ActionConflict, ApiError


async def scale(request: web.Request) -> web.Response:
    """`{"replicas": N}`: run N copies of the service (400 for a bad N, 404 for an
    unknown service, 409 while the stack cannot change)."""
    name = request.match_info["name"]
    body = await json_body(request)
    count = body.get("replicas")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_REPLICAS:
        raise ApiError(400, "malformed body", f"replicas: expected a number from 0 to {MAX_REPLICAS}")
    sup = supervisor(request)
    if name not in written(sup.config):
        raise ApiError(404, "unknown service", f"{name!r} is not a service of this stack")
    try:
        result = await sup.scale(name, count)
    except LookupError:
        raise ApiError(404, "unknown service", f"{name!r} is not a service of this stack") from None
    except ValueError as exc:
        raise ApiError(400, "cannot scale", str(exc)) from None
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(result)


async def group_action(request: web.Request) -> web.Response:
    """start, stop or restart every copy of a group; 409 when none of them can."""
    name, action = request.match_info["name"], request.match_info["action"]
    await json_body(request)
    sup = supervisor(request)
    copies = sup.members(name)
    try:
        if action == "restart":
            if not copies:
                raise ActionConflict(f"{name} has no copies (replicas: 0)")
            await sup.restart_services(copies)
        else:
            wanted = [c for c in copies if sup.is_running(c) == (action == "stop")]
            if not wanted:
                raise ActionConflict(f"no copy of {name} to {action}")
            for copy in wanted:
                await (sup.start_service(copy) if action == "start" else sup.stop_service(copy))
    except ActionConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return web.json_response(group_status(request))


def group_status(request: web.Request) -> dict[str, Any]:
    """A group by its name: its copies' status, and their states in one line."""
    sup = supervisor(request)
    name = request.match_info["name"]
    services = [sup.service_status(c) for c in sup.members(name) if c in sup.runners]
    state = ", ".join(f"{s['name']} {s['state']}" for s in services)
    return {"name": name, "state": state, "services": services}


def paths(name_parameter: dict[str, Any], json: Any, errors: Any) -> dict[str, Any]:
    """The OpenAPI paths of this module."""
    body = {
        "type": "object",
        "required": ["replicas"],
        "properties": {"replicas": {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS}},
    }
    result = {
        "type": "object",
        "properties": {
            "service": {"type": "string"},
            "replicas": {"type": "integer"},
            "added": {"type": "array", "items": {"type": "string"}},
            "removed": {"type": "array", "items": {"type": "string"}},
            "copies": {"type": "array", "items": {"type": "string"}},
        },
    }
    return {
        "/v1/services/{name}/scale": {
            "post": {
                "summary": "Run N copies of a service (`replicas`); no other copy is touched",
                "parameters": [name_parameter],
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {"200": json(result), **errors(400, 404, 409)},
            }
        }
    }
