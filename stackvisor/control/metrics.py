"""`GET /metrics`: the stack in Prometheus' text format.

Per service: up (a live process), healthy, restarts, one gauge per state, and what
it uses (memory, CPU seconds, processes: see `runtime.resources`); for the supervisor
itself: CPU seconds and resident memory.
"""

from __future__ import annotations

import psutil
from aiohttp import web

from stackvisor.control.http import supervisor
from stackvisor.runtime.states import ALIVE, State


def _metric(name: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


async def metrics(request: web.Request) -> web.Response:
    runners = list(supervisor(request).runners.values())
    alive = ALIVE | {State.STOPPING}
    out = _metric(
        "stackvisor_service_up",
        "gauge",
        "1 when the service has a live process.",
        [f'stackvisor_service_up{{service="{r.name}"}} {int(r.state in alive)}' for r in runners],
    )
    out += _metric(
        "stackvisor_service_healthy",
        "gauge",
        "1 when the last health check passed.",
        [
            f'stackvisor_service_healthy{{service="{r.name}"}} {int(r.state is State.HEALTHY)}'
            for r in runners
        ],
    )
    out += _metric(
        "stackvisor_service_restarts_total",
        "counter",
        "Restarts since the supervisor started.",
        [
            f'stackvisor_service_restarts_total{{service="{r.name}"}} {r.status()["restarts"]}'
            for r in runners
        ],
    )
    out += _metric(
        "stackvisor_service_state",
        "gauge",
        "1 for the state the service is in.",
        [
            f'stackvisor_service_state{{service="{r.name}",state="{s}"}} {int(r.state is s)}'
            for r in runners
            for s in State
        ],
    )
    used = {s["name"]: s.get("resources") for s in supervisor(request).status(resources=True)["services"]}
    for name, key, kind, help_text in (
        ("memory_bytes", "memory_bytes", "gauge", "Memory of the service's processes (its cgroup's)."),
        ("cpu_seconds_total", "cpu_seconds", "counter", "CPU time of the service's processes."),
        ("processes", "processes", "gauge", "How many processes the service has."),
    ):
        samples = [
            f'stackvisor_service_{name}{{service="{service}"}} {figures[key]}'  # type: ignore[literal-required]
            for service, figures in used.items()
            if figures is not None
        ]
        out += _metric(f"stackvisor_service_{name}", kind, help_text, samples)
    me = psutil.Process()
    cpu = me.cpu_times()
    out += _metric(
        "process_cpu_seconds_total",
        "counter",
        "The supervisor's CPU time.",
        [f"process_cpu_seconds_total {cpu.user + cpu.system:.3f}"],
    )
    out += _metric(
        "process_resident_memory_bytes",
        "gauge",
        "The supervisor's resident memory.",
        [f"process_resident_memory_bytes {me.memory_info().rss}"],
    )
    return web.Response(text="\n".join(out) + "\n", content_type="text/plain", charset="utf-8")
