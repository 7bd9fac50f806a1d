"""`GET /metrics` of a real running stack, read by Prometheus' own parser: the text format is
valid and the values are the stack's (health, states, restarts after a kill, resources,
report counters, the port registry)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import SLEEP, client, free_ports, running_stack, until, until_state, write_stack
from prometheus_client.parser import text_string_to_metric_families

from stackvisor.control.metrics import family, label, number
from stackvisor.paths import StackPaths

pytestmark = pytest.mark.timeout(60)

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """name -> {sorted labels -> value}, and each family's type."""
    samples: Samples = {}
    kinds: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        kinds[fam.name] = fam.type
        for s in fam.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples, kinds


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


async def scrape(root: Path) -> tuple[Samples, dict[str, str]]:
    text = await asyncio.to_thread(client(root).get, "/metrics")
    return parse(text)


def test_label_values_are_escaped_as_the_text_format_wants() -> None:
    nasty = 'C:\\stacks\\"web"\nnext'
    assert label(nasty) == 'C:\\\\stacks\\\\\\"web\\"\\nnext'
    lines = family("x_info", "gauge", "A test.", [({"path": nasty, "n": 1}, 1), ({}, 2.5)])
    (parsed,) = text_string_to_metric_families("\n".join(lines) + "\n")
    assert [(s.labels, s.value) for s in parsed.samples] == [({"path": nasty, "n": "1"}, 1.0), ({}, 2.5)]
    assert (number(3), number(0.125), number(float("inf"))) == ("3", "0.125", "+Inf")


async def test_metrics_of_a_running_stack_parse_and_follow_it(tmp_path: Path) -> None:
    web_port, sick_port = free_ports(2)
    (tmp_path / "sick").write_text("")
    path = write_stack(
        tmp_path,
        f"""
        services:
          web:
            command: python3 server.py
            port: {web_port}
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}", interval: 200ms}}
          sick:
            command: python3 server.py
            port: {sick_port}
            env: {{SICK: "{tmp_path / "sick"}"}}
            restart: "no"
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 100ms, retries: 1}}
          worker: {{command: "{SLEEP}", backoff: {{initial: 10ms}}}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "healthy")
        await until_state(sup, "sick", "unhealthy")
        await until_state(sup, "worker", "running")

        async with (
            aiohttp.UnixConnector(path=str(StackPaths.at(tmp_path).socket)) as unix,
            aiohttp.ClientSession(connector=unix) as session,
            session.get("http://stack/metrics") as answer,
        ):
            assert answer.status == 200
            assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            samples, kinds = parse(await answer.text())

        health = {
            (service, value): one(samples, "stackvisor_service_health", service=service, health=value)
            for service in ("web", "sick", "worker")
            for value in ("healthy", "unhealthy", "starting", "none")
        }
        assert {key for key, v in health.items() if v == 1} == {
            ("web", "healthy"),
            ("sick", "unhealthy"),
            ("worker", "none"),
        }
        assert sum(health.values()) == 3
        assert one(samples, "stackvisor_service_state", service="sick", state="unhealthy") == 1
        assert one(samples, "stackvisor_service_up", service="web") == 1
        assert one(samples, "stackvisor_service_memory_bytes", service="web") > 0
        assert one(samples, "stackvisor_service_processes", service="worker") >= 1
        assert one(samples, "stackvisor_service_cpu_seconds_total", service="web") >= 0
        assert one(samples, "stackvisor_service_restarts_total", service="worker") == 0
        assert one(samples, "stackvisor_reports_sent_total") == 0  # no settings.report
        assert one(samples, "stackvisor_reports_failed_total") == 0
        assert one(samples, "stackvisor_registry_allocations", owner="stack") == 2  # web's port, sick's
        assert one(samples, "stackvisor_registry_allocations", owner="all") >= 2
        assert one(samples, "stackvisor_registry_expired_allocations") >= 0
        assert one(samples, "process_resident_memory_bytes") > 0
        assert kinds["stackvisor_service_restarts"] == "counter"
        assert kinds["stackvisor_service_health"] == "gauge"

        worker: Any = sup.runners["worker"]
        os.kill(worker.status()["pid"], signal.SIGKILL)
        await until(sup, lambda: worker.status()["restarts"] == 1 and str(worker.state) == "running")
        samples, _ = await scrape(tmp_path)
        assert one(samples, "stackvisor_service_restarts_total", service="worker") == 1
        assert one(samples, "stackvisor_service_state", service="worker", state="running") == 1
        assert one(samples, "stackvisor_service_state", service="worker", state="backoff") == 0
