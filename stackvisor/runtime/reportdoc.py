"""The report a stack sends to its endpoint, built from plain data (pure).

Here: `build_report` (the stack's status document, who holds each of its ports, the
`fields` of `settings.report`, the audit when asked for) with its summary, the ports a
status names (`stack_ports`), and the delays between attempts (`backoff_delays`).
`docs/report.schema.json` describes the document; its `version` changes when a field
changes meaning or goes away. Not here: looking at ports and processes, the queue,
sending (`reports`).
"""

from __future__ import annotations

import datetime
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypedDict

from stackvisor.runtime.status import StackStatus

REPORT_VERSION = 1
# Triggers: every `interval`, after a change (`on_change`), by `stackvisor report --once`.
TRIGGERS = ("interval", "change", "once")


class Holder(TypedDict):
    """The process listening on a port, as far as it can be seen."""

    pid: int | None  # None: another user's socket we may not follow to its process
    name: str | None
    user: str | None
    pgid: int | None


class StackPort(NamedTuple):
    port: int
    service: str
    role: str  # "service": the port others use; "internal": where a proxied service listens


def stack_ports(status: StackStatus | None, configured: Mapping[str, int | None] = {}) -> list[StackPort]:
    """Every port of the stack: each service's (and a proxied service's internal one)
    from the running stack's status, else the ones the file names (`configured`)."""
    if status is None:
        return [StackPort(p, name, "service") for name, p in configured.items() if p is not None]
    out: list[StackPort] = []
    for service in status["services"]:
        if service["port"] is not None:
            out.append(StackPort(service["port"], service["name"], "service"))
        internal = service.get("internal_port")
        if internal is not None:
            out.append(StackPort(internal, service["name"], "internal"))
    return out


def backoff_delays(retries: int, initial: float = 0.5, ceiling: float = 30.0) -> list[float]:
    """The pauses before each retry: doubling from `initial`, never above `ceiling`."""
    return [min(ceiling, initial * 2**n) for n in range(retries)]


def _timestamp(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _services(status: StackStatus | None, configured: Mapping[str, int | None]) -> list[dict[str, Any]]:
    if status is None:
        return [
            {
                "name": name,
                "state": "not running",
                "selected": False,
                "pid": None,
                "port": port,
                "health": None,
                "restarts": 0,
                "exit_code": None,
                "started_at": None,
                "cpu_seconds": None,
                "memory_bytes": None,
                "processes": None,
            }
            for name, port in configured.items()
        ]
    out = []
    for s in status["services"]:
        used = s.get("resources")
        out.append(
            {
                "name": s["name"],
                "state": s["state"],
                "selected": s.get("selected", True),
                "pid": s["pid"],
                "port": s["port"],
                "health": s["health"],
                "restarts": s["restarts"],
                "exit_code": s["exit_code"],
                "started_at": s["started_at"],
                "cpu_seconds": used["cpu_seconds"] if used else None,
                "memory_bytes": used["memory_bytes"] if used else None,
                "processes": used["processes"] if used else None,
            }
        )
    return out


def _ours(holder: Holder | None, service_pid: int | None, supervisor_pid: int | None) -> bool:
    """Held by the service (its process, or its process group) or by its supervisor
    (a socket it holds for the service: `socket: inherit`, `proxy`, on demand)."""
    if holder is None or holder["pid"] is None:
        return False
    if supervisor_pid is not None and holder["pid"] == supervisor_pid:
        return True
    return service_pid is not None and service_pid in (holder["pid"], holder["pgid"])


def _ports(
    ports: Sequence[StackPort],
    holders: Mapping[int, Holder | None],
    pids: Mapping[str, int | None],
    supervisor_pid: int | None,
) -> list[dict[str, Any]]:
    out = []
    for port, service, role in ports:
        holder = holders.get(port)
        out.append(
            {
                "port": port,
                "service": service,
                "role": role,
                "status": "free" if holder is None else "occupied",
                "holder": None
                if holder is None
                else {"pid": holder["pid"], "name": holder["name"], "user": holder["user"]},
                "ours": _ours(holder, pids.get(service), supervisor_pid),
            }
        )
    return out


def build_report(
    name: str,
    status: StackStatus | None,
    holders: Mapping[int, Holder | None],
    *,
    fields: Mapping[str, Any],
    trigger: str,
    now: float,
    host: str,
    configured: Mapping[str, int | None] = {},
    audit: Mapping[str, Any] | None = None,
    audit_error: str | None = None,
    report_id: str | None = None,
) -> dict[str, Any]:
    """The report: `status` is the running stack's status document (with resources), or
    None when it does not run, and then `configured` (service -> the port its file names)
    stands in for it; `holders` says who listens on each port of the stack (None: nobody).
    With `audit` or `audit_error` (include_audit), the audit document or why it is missing."""
    services = _services(status, configured)
    pids = {s["name"]: s["pid"] for s in services}
    supervisor_pid = status["pid"] if status is not None else None
    ports = _ports(stack_ports(status, configured), holders, pids, supervisor_pid)
    occupied = sum(1 for p in ports if p["status"] == "occupied")
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "id": report_id or secrets.token_hex(16),
        "timestamp": _timestamp(now),
        "trigger": trigger,
        "stack": {
            "name": name,
            "host": host,
            "running": status is not None,
            "file": status["file"] if status is not None else None,
            "pid": supervisor_pid,
            "started_at": status["started_at"] if status is not None else None,
            "stopping": status["stopping"] if status is not None else False,
        },
        "fields": dict(fields),
        "services": services,
        "ports": ports,
        "summary": {
            "services": len(services),
            "by_state": dict(sorted(Counter(s["state"] for s in services).items())),
            "ports": {"total": len(ports), "occupied": occupied, "free": len(ports) - occupied},
        },
    }
    if audit is not None or audit_error is not None:
        report["audit"] = dict(audit) if audit is not None else None
        if audit_error is not None:
            report["audit_error"] = audit_error
    return report
