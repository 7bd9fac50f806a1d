"""`GET /metrics`: the stack in Prometheus' text format (version 0.0.4).

Per service: up (a live process), healthy, its health as one labelled series
(`healthy`, `unhealthy`, `starting`, `none`), restarts, one gauge per state, and what
it uses (memory, CPU seconds, processes: see `runtime.resources`). For the stack:
reports sent, failed and dropped (`runtime.reports`) and the port registry's
allocations (this stack's, everyone's, and the expired ones still listed). For the
supervisor itself: CPU seconds and resident memory. Everything is read from memory
or with one query of the registry: a scrape costs about what `status` does.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psutil
from aiohttp import web

from stackvisor.control.http import supervisor
from stackvisor.ports.leases import EXPIRED, RESERVED
from stackvisor.runtime.states import ALIVE, State

if TYPE_CHECKING:
    from stackvisor.runtime.supervisor import Supervisor

HEALTH_VALUES = ("healthy", "unhealthy", "starting", "none")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def label(value: object) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: dict[str, object]) -> str:
    return "{" + ",".join(f'{key}="{label(value)}"' for key, value in pairs.items()) + "}"


def number(value: float) -> str:
    """A sample's value: integers as they are, floats in full (`repr`), infinities as +Inf/-Inf."""
    if isinstance(value, int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, object], float]]
) -> list[str]:
    """One metric family: its HELP and TYPE lines, then a line per (labels, value)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(pairs) if pairs else ''} {number(value)}" for pairs, value in samples]
    return lines


def _services(sup: Supervisor) -> list[str]:
    runners = list(sup.runners.values())
    alive = ALIVE | {State.STOPPING}
    out = family(
        "stackvisor_service_up",
        "gauge",
        "1 when the service has a live process.",
        (({"service": r.name}, int(r.state in alive)) for r in runners),
    )
    out += family(
        "stackvisor_service_healthy",
        "gauge",
        "1 when the last health check passed.",
        (({"service": r.name}, int(r.state is State.HEALTHY)) for r in runners),
    )
    statuses = sup.status(resources=True)["services"]
    # The verdict of the checks on the live process; the last one of a process that
    # is gone says nothing now.
    health = {
        s["name"]: (s["health"] if s["health"] and sup.runners[s["name"]].state in alive else "none")
        for s in statuses
    }
    out += family(
        "stackvisor_service_health",
        "gauge",
        "1 for the service's health: healthy, unhealthy, starting, or none (no check, or no process).",
        (
            ({"service": name, "health": value}, int(current == value))
            for name, current in health.items()
            for value in HEALTH_VALUES
        ),
    )
    out += family(
        "stackvisor_service_restarts_total",
        "counter",
        "Restarts since the supervisor started.",
        (({"service": s["name"]}, s["restarts"]) for s in statuses),
    )
    out += family(
        "stackvisor_service_state",
        "gauge",
        "1 for the state the service is in.",
        (({"service": r.name, "state": str(s)}, int(r.state is s)) for r in runners for s in State),
    )
    for name, key, kind, help_text in (
        ("memory_bytes", "memory_bytes", "gauge", "Memory of the service's processes (its cgroup's)."),
        ("cpu_seconds_total", "cpu_seconds", "counter", "CPU time of the service's processes."),
        ("processes", "processes", "gauge", "How many processes the service has."),
    ):
        out += family(
            f"stackvisor_service_{name}",
            kind,
            help_text,
            (
                ({"service": s["name"]}, used[key])  # type: ignore[literal-required]
                for s in statuses
                if (used := s.get("resources")) is not None
            ),
        )
    return out


def _reports(sup: Supervisor) -> list[str]:
    reporter = sup.reporter
    out: list[str] = []
    for name, attribute, help_text in (
        ("sent", "sent", "Reports the endpoint took (a 2xx answer)."),
        ("failed", "failed", "Reports that could not be sent, their retries spent."),
        ("dropped", "dropped", "Reports dropped unsent from a full queue (the oldest go first)."),
    ):
        value = getattr(reporter, attribute) if reporter is not None else 0
        out += family(f"stackvisor_reports_{name}_total", "counter", help_text, [({}, value)])
    return out


def _registry(sup: Supervisor) -> list[str]:
    """The port registry's allocations, from one query (none when it cannot be used)."""
    registry = sup.ports.registry
    if registry is None:
        return []
    try:
        rows = registry.listing(everything=True)
    except sqlite3.Error:
        return []
    live = [a for a in rows if a.status == RESERVED]
    mine = sum(1 for a in live if a.owner == sup.ports.owner)
    expired = sum(1 for a in rows if a.status == EXPIRED)
    out = family(
        "stackvisor_registry_allocations",
        "gauge",
        "Live allocations of the user's port registry: this stack's, and every owner's.",
        [({"owner": "stack"}, mine), ({"owner": "all"}, len(live))],
    )
    out += family(
        "stackvisor_registry_expired_allocations",
        "gauge",
        "Allocations that expired (holder gone, or lease passed) and are still listed (a day).",
        [({}, expired)],
    )
    return out


async def metrics(request: web.Request) -> web.Response:
    sup = supervisor(request)
    out = _services(sup) + _reports(sup) + _registry(sup)
    me = psutil.Process()
    cpu = me.cpu_times()
    out += family(
        "process_cpu_seconds_total", "counter", "The supervisor's CPU time.", [({}, cpu.user + cpu.system)]
    )
    out += family(
        "process_resident_memory_bytes",
        "gauge",
        "The supervisor's resident memory.",
        [({}, me.memory_info().rss)],
    )
    return web.Response(body=("\n".join(out) + "\n").encode(), headers={"Content-Type": CONTENT_TYPE})
