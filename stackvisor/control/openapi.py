"""The OpenAPI 3.1 document of the control API, served at `/openapi.json`.

Kept beside the handlers by hand: the API is small, and the document is tested
against the live routes (every documented operation is called by the fuzz test).
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}

_SERVICE = {
    "type": "object",
    "required": ["name", "state", "pid", "port", "health", "restarts", "exit_code", "started_at", "depends_on"],
    "properties": {
        "name": {"type": "string"},
        "state": {
            "type": "string",
            "enum": [
                "pending", "starting", "running", "healthy", "unhealthy", "backoff",
                "stopping", "stopped", "exited", "completed", "failed",
            ],
        },
        "reason": {"type": "string"},
        "pid": {"type": ["integer", "null"]},
        "port": {"type": ["integer", "null"]},
        "health": {"type": ["string", "null"]},
        "restarts": {"type": "integer"},
        "exit_code": {"type": ["integer", "null"]},
        "started_at": {"type": ["number", "null"], "description": "unix time"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
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
        "reload": {"type": ["object", "null"]},
        "services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}},
    },
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
                "responses": {"200": _json({"$ref": "#/components/schemas/Status"})},
            }
        },
        "/v1/services/{name}": {
            "get": {
                "summary": "One service",
                "parameters": [_NAME],
                "responses": {"200": _json({"$ref": "#/components/schemas/Service"}), **_errors(404)},
            }
        },
        **{
            f"/v1/services/{{name}}/{action}": {
                "post": {
                    "summary": f"{action.capitalize()} one service",
                    "parameters": [_NAME],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Service"}),
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
                    {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 100000}},
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {
                    "200": {"description": "lines", "content": {"text/plain": {"schema": {"type": "string"}}}},
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
                "responses": {"200": _json({"$ref": "#/components/schemas/Status"}), **_errors(400, 404, 409)},
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
                    "200": {"description": "event stream", "content": {"text/event-stream": {}}},
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
    },
    "components": {"schemas": {"Error": _ERROR, "Service": _SERVICE, "Status": _STATUS}},
}
