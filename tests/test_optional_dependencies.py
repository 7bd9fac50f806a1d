"""Compose's `required: false`: an optional dependency that cannot start does not hold back its
dependent; a required one fails it. Real processes."""

from __future__ import annotations

from pathlib import Path

from conftest import SLEEP, running_stack, transitions, until, until_state, write_stack

STACK = """
services:
  db:
    command: python3 -c "raise SystemExit(3)"
    restart: "no"
  api:
    command: python3 -c "import time; print('api up', flush=True); time.sleep(300)"
    depends_on:
      db: {{condition: service_completed_successfully, required: {required}}}
"""


async def test_an_optional_dependency_that_fails_does_not_block(tmp_path: Path) -> None:
    path = write_stack(tmp_path, STACK.format(required="false"), programs=False)
    async with running_stack(path) as sup:
        await until_state(sup, "db", "exited")
        await until_state(sup, "api", "running")
        assert any("optional dependency db" in line for line in sup.runners["api"].log.last(10))


async def test_a_required_dependency_that_fails_fails_the_dependent(tmp_path: Path) -> None:
    path = write_stack(tmp_path, STACK.format(required="true"), programs=False)
    async with running_stack(path) as sup:
        await until_state(sup, "api", "failed")
        assert "dependency db cannot meet service_completed_successfully" in sup.runners["api"].reason


async def test_an_outage_of_a_dependency_does_not_fail_its_dependent(tmp_path: Path) -> None:
    """`stackvisor stop db`: the worker that crashes meanwhile waits for db instead of
    spending its restarts, and starts by itself when db is back."""
    path = write_stack(
        tmp_path,
        f"""
        services:
          db: {{command: "{SLEEP}"}}
          worker:
            command: sh -c 'sleep 0.3; exit 1'
            depends_on: [db]
            max_restarts: 1
            backoff: {{initial: 50ms}}
        """,
        programs=False,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "worker", "running")
        await sup.stop_service("db")
        await until_state(sup, "worker", "pending")
        assert sup.runners["worker"].reason == "waiting for db: service_started (db is stopped)"
        spawned = transitions(sup, "worker").count("starting")
        await sup.start_service("db")
        await until(sup, lambda: transitions(sup, "worker").count("starting") > spawned)
        assert "failed" not in transitions(sup, "worker")
