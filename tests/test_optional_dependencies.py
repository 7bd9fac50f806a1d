"""Compose's `required: false`: an optional dependency that cannot start does not hold back its
dependent; a required one fails it. Real processes."""

from __future__ import annotations

from pathlib import Path

from conftest import running_stack, until_state, write_stack

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
        assert any("optional dependency db" in line for line in sup.runners["api"].tail(10))


async def test_a_required_dependency_that_fails_fails_the_dependent(tmp_path: Path) -> None:
    path = write_stack(tmp_path, STACK.format(required="true"), programs=False)
    async with running_stack(path) as sup:
        await until_state(sup, "api", "failed")
        assert "dependency db cannot meet service_completed_successfully" in sup.runners["api"].reason
