"""`GET /v1/audit`: the security audit of this machine's listeners over the control API.

The same document as `stackvisor audit --json`, against the stack's current
configuration, with the supervisor and everything below it as the stack's own
processes. The scan reads /proc and blocks, so it runs in a thread. Here too: its
OpenAPI paths and schemas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from stackvisor.control.http import supervisor
from stackvisor.ports.audit import RULES
from stackvisor.ports.audit_scan import audit_document


async def audit(request: web.Request) -> web.Response:
    sup = supervisor(request)
    document = await asyncio.to_thread(audit_document, sup.config, sup.pid)
    return web.json_response(document)


_LISTENER_PROPERTIES: dict[str, Any] = {
    "protocol": {"type": "string", "enum": ["tcp", "udp"]},
    "address": {"type": "string"},
    "port": {"type": "integer"},
    "uid": {"type": ["integer", "null"]},
    "user": {"type": ["string", "null"]},
    "pid": {"type": ["integer", "null"], "description": "null: no visible process holds it"},
    "name": {"type": ["string", "null"]},
    "cmdline": {"type": "array", "items": {"type": "string"}},
    "exe": {"type": ["string", "null"], "description": "the program; null: it could not be read"},
    "exe_deleted": {"type": "boolean"},
    "exe_in_writable_folder": {"type": "boolean"},
}

_RULE = {"type": "string", "enum": [str(rule) for rule in RULES]}

_AUDIT_LISTENER = {
    "type": "object",
    "required": [*_LISTENER_PROPERTIES, "flags"],
    "properties": {
        **_LISTENER_PROPERTIES,
        "flags": {"type": "array", "items": _RULE, "description": "the rules it fired"},
    },
}

_AUDIT = {
    "type": "object",
    "required": [
        "stack",
        "file",
        "supervisor_pid",
        "score",
        "score_formula",
        "rules",
        "listeners",
        "findings",
    ],
    "properties": {
        "stack": {"type": "string"},
        "file": {"type": "string"},
        "supervisor_pid": {"type": ["integer", "null"]},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "score_formula": {"type": "string"},
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["rule", "weight", "description"],
                "properties": {
                    "rule": _RULE,
                    "weight": {"type": "integer"},
                    "description": {"type": "string"},
                },
            },
        },
        "listeners": {"type": "array", "items": {"$ref": "#/components/schemas/AuditListener"}},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["rule", "weight", "detail", "listener"],
                "properties": {
                    "rule": _RULE,
                    "weight": {"type": "integer"},
                    "detail": {"type": "string"},
                    "listener": {
                        "type": "object",
                        "required": list(_LISTENER_PROPERTIES),
                        "properties": _LISTENER_PROPERTIES,
                    },
                },
            },
        },
    },
}

PATHS: dict[str, Any] = {
    "/v1/audit": {
        "get": {
            "summary": "Every TCP and UDP listener on the machine with its owner, the risky ones "
            "flagged by rule, and a risk score from 0 to 10 (`stackvisor audit --json`)",
            "responses": {
                "200": {
                    "description": "ok",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Audit"}}},
                }
            },
        }
    }
}

SCHEMAS: dict[str, Any] = {"Audit": _AUDIT, "AuditListener": _AUDIT_LISTENER}
