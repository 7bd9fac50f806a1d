"""The OpenAPI 3.1 document of the control API, served at `/openapi.json`.

The paths are kept beside the handlers by hand: the API is small, and the document
is tested against the live routes (every documented operation is called by the
fuzz test). The service states and the event kinds with their payloads are
generated from `State` and `events.PAYLOADS`, so they cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from stackvisor.control import audit_api, registry_api, scaling_api
from stackvisor.runtime.events import PAYLOADS, EventKind
from stackvisor.runtime.states import State

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _schema_of(tp: Any) -> dict[str, Any]:
    """The JSON schema of a payload field's type (str, int, float, bool, None, tuples of str)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        members = [_schema_of(arg) for arg in typing.get_args(tp)]
        if all(set(m) == {"type"} for m in members):
            return {"type": [m["type"] for m in members]}
        return {"anyOf": members}
    if typing.get_origin(tp) is tuple:
        return {"type": "array", "items": _schema_of(typing.get_args(tp)[0])}
    return {"type": _JSON_TYPES[tp]}


def _event_schema() -> dict[str, Any]:
    variants = []
    for kind in EventKind:
        payload = PAYLOADS[kind]
        hints = typing.get_type_hints(payload)
        fields = dataclasses.fields(payload)
        variants.append(
            {
                "title": str(kind),
                "description": payload.description,
                "type": "object",
                "required": ["seq", "ts", "kind", "service", "data"],
                "properties": {
                    "seq": {"type": "integer"},
                    "ts": {"type": "number", "description": "unix time"},
                    "kind": {"const": str(kind)},
                    "service": {"type": ["string", "null"]},
                    "data": {
                        "type": "object",
                        "required": [f.name for f in fields if f.default is dataclasses.MISSING],
                        "properties": {f.name: _schema_of(hints[f.name]) for f in fields},
                    },
                },
            }
        )
    return {"oneOf": variants}


_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}

_SERVICE = {
    "type": "object",
    "required": [
        "name",
        "state",
        "pid",
        "port",
        "health",
        "restarts",
        "exit_code",
        "started_at",
        "depends_on",
    ],
    "properties": {
        "name": {"type": "string"},
        "state": {
            "type": "string",
            "enum": [str(state) for state in State],
        },
        "reason": {"type": "string"},
        "pid": {"type": ["integer", "null"]},
        "port": {"type": ["integer", "null"]},
        "health": {"type": ["string", "null"]},
        "restarts": {"type": "integer"},
        "exit_code": {"type": ["integer", "null"]},
        "started_at": {"type": ["number", "null"], "description": "unix time"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "selected": {"type": "boolean", "description": "part of what `up` runs"},
        "namespace": {"type": ["string", "null"]},
        "group": {"type": ["string", "null"], "description": "the service it is a copy of (`replicas`)"},
        "requested_port": {"type": ["integer", "null"], "description": "the port the file asks for"},
        "internal_port": {"type": ["integer", "null"], "description": "`socket: proxy`: where it listens"},
        "forwarding": {
            "type": "string",
            "enum": ["kernel", "relay"],
            "description": "`socket: proxy`: what carries new connections now",
        },
        "idle_stop_in": {"type": ["number", "null"], "description": "seconds until an idle stop"},
        "lease_left": {"type": ["number", "null"], "description": "seconds until its lease ends"},
        "next_run": {"type": ["number", "null"], "description": "`schedule`: unix time of the next run"},
        "overlapping": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "`schedule`: the pids of runs going beside its own (`max_concurrent`)",
        },
        "resources": {
            "type": ["object", "null"],
            "description": "what it uses now (null when it does not run)",
            "properties": {
                "memory_bytes": {"type": "integer"},
                "cpu_seconds": {"type": "number"},
                "processes": {"type": "integer"},
            },
        },
    },
}

_STATUS = {
    "type": "object",
    "required": ["name", "pid", "file", "started_at", "services"],
    "properties": {
        "name": {"type": "string"},
        "pid": {"type": "integer"},
        "file": {"type": "string"},
        "started_at": {"type": "number"},
        "tracking": {"type": "string", "enum": ["cgroup", "marker"]},
        "reload": {"type": ["object", "null"]},
        "services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}},
    },
}


# A group of copies (`replicas: N`) by its name: what its actions answer too.
_GROUP = {
    "type": "object",
    "required": ["name", "state", "services"],
    "properties": {
        "name": {"type": "string"},
        "state": {"type": "string", "description": "each copy's state, as `api.0 healthy, api.1 starting`"},
        "services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}},
    },
}
_SERVICE_OR_GROUP = {
    "oneOf": [{"$ref": "#/components/schemas/Service"}, {"$ref": "#/components/schemas/Group"}]
}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "malformed input", 404: "unknown service", 409: "conflicts with the current state"}
    return {str(c): _json({"$ref": "#/components/schemas/Error"}, text[c]) for c in codes}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "stackvisor control API",
        "version": "1",
        "description": "Served on the stack's unix socket (.stackvisor/control.sock, mode 0600); "
        "on TCP only with `Authorization: Bearer <token>`.",
    },
    "paths": {
        "/v1/status": {
            "get": {
                "summary": "The stack and every service",
                "parameters": [
                    {
                        "name": "resources",
                        "in": "query",
                        "required": False,
                        "description": "true: each service's memory, CPU time and processes",
                        "schema": {"type": "boolean"},
                    }
                ],
                "responses": {"200": _json({"$ref": "#/components/schemas/Status"})},
            }
        },
        "/v1/services/{name}": {
            "get": {
                "summary": "One service, or a group's copies",
                "parameters": [_NAME],
                "responses": {"200": _json(_SERVICE_OR_GROUP), **_errors(404)},
            }
        },
        **{
            f"/v1/services/{{name}}/{action}": {
                "post": {
                    "summary": f"{action.capitalize()} one service, or every copy of a group",
                    "parameters": [_NAME],
                    "responses": {
                        "200": _json(_SERVICE_OR_GROUP),
                        **_errors(400, 404, 409),
                    },
                }
            }
            for action in ("start", "stop", "restart")
        },
        "/v1/services/{name}/logs": {
            "get": {
                "summary": "The service's last output lines; with follow=true, streamed",
                "parameters": [
                    _NAME,
                    {
                        "name": "tail",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 100000},
                    },
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": {
                        "description": "lines",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 404),
                },
            }
        },
        "/v1/restart": {
            "post": {
                "summary": "Restart the named services (all when none), with their restart: true dependents",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"services": {"type": "array", "items": {"type": "string"}}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Status"}),
                    **_errors(400, 404, 409),
                },
            }
        },
        "/v1/up": {
            "post": {
                "summary": "`up` against the running stack: apply the stack file, then start the named "
                "services (all when none, with the given profiles active) that are neither running "
                "nor on their way",
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "services": {"type": "array", "items": {"type": "string"}},
                                    "profiles": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "reload": {"type": "object"},
                                "started": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    ),
                    **_errors(400, 404, 409),
                },
            }
        },
        "/v1/stop": {
            "post": {
                "summary": "Stop the whole stack; the supervisor exits",
                "responses": {"202": _json({"type": "object"}, "stopping"), **_errors(400)},
            }
        },
        "/v1/reload": {
            "post": {
                "summary": "Re-read the stack file and apply what changed",
                "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "boolean"}}],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": {"dry_run": {"type": "boolean"}}}
                        }
                    },
                },
                "responses": {
                    "200": _json({"type": "object"}, "applied (or the diff, with dry_run)"),
                    "400": _json({"type": "object"}, "the new file is invalid; nothing changed"),
                },
            }
        },
        "/v1/services/{name}/heartbeat": {
            "post": {
                "summary": "Renew a service's own `lease`",
                "parameters": [_NAME],
                "responses": {"200": _json({"type": "object"}), **_errors(400, 404, 409)},
            }
        },
        "/v1/heartbeat": {
            "post": {
                "summary": "Renew the lease of a stack started with --lease",
                "responses": {"200": _json({"type": "object"}), **_errors(400)},
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Server-sent events for every state change; since=TS replays the history",
                "parameters": [{"name": "since", "in": "query", "schema": {"type": "number"}}],
                "responses": {
                    "200": {
                        "description": "event stream; each `data:` line is one Event",
                        "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}},
                    },
                    **_errors(400),
                },
            }
        },
        "/v1/ws": {
            "get": {
                "summary": "The same events over WebSocket: send subscribe, unsubscribe or ping",
                "responses": {"101": {"description": "switching protocols"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format",
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
        },
        **registry_api.PATHS,
        **audit_api.PATHS,
        **scaling_api.paths(_NAME, _json, _errors),
    },
    "components": {
        "schemas": {
            "Error": _ERROR,
            "Service": _SERVICE,
            "Group": _GROUP,
            "Status": _STATUS,
            "Event": _event_schema(),
            **registry_api.SCHEMAS,
            **audit_api.SCHEMAS,
        }
    },
}
