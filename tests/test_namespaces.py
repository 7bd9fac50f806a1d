"""`namespace` and `disabled`: which services `up` starts, and the commands that take
`--namespace`, against real stacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stackvisor.config import ConfigError, load_config
from stackvisor.runtime.plans import selection
from tests.conftest import SLEEP, cli, client, write_stack

STACK = f"""
services:
  db: {{command: "{SLEEP}", namespace: backend}}
  api: {{command: "{SLEEP}", namespace: backend, depends_on: [db]}}
  admin: {{command: "{SLEEP}", namespace: backend, disabled: true}}
  web: {{command: "{SLEEP}", namespace: frontend, depends_on: [api]}}
  tool: {{command: "{SLEEP}"}}
  legacy: {{command: "{SLEEP}", disabled: true, depends_on: [db]}}
"""


def test_a_disabled_service_starts_only_when_named_or_needed(tmp_path: Path) -> None:
    config = load_config(write_stack(tmp_path, STACK, programs=False), environ={})
    assert selection(config, []) == {"db", "api", "web", "tool"}
    assert selection(config, ["legacy"]) == {"legacy", "db"}
    assert config.services["api"].namespace == "backend" and config.services["tool"].namespace is None


@pytest.mark.parametrize("bad", ["''", "'two words'", "'-x'", "[a]"])
def test_a_namespace_is_a_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="namespace"):
        load_config(
            write_stack(tmp_path, f"services:\n  a: {{command: x, namespace: {bad}}}\n", programs=False)
        )


def states(root: Path) -> dict[str, Any]:
    return {
        s["name"]: (s["state"], s["selected"], s["namespace"])
        for s in client(root).get("/v1/status")["services"]
    }


def test_up_status_and_restart_by_namespace(tmp_path: Path, detached: Any) -> None:
    write_stack(tmp_path, STACK, programs=False)
    assert detached(tmp_path, "--namespace", "backend").returncode == 0
    now = states(tmp_path)
    assert {n for n, (state, selected, _) in now.items() if selected} == {"db", "api"}  # admin is disabled
    assert now["api"][2] == "backend" and now["tool"][2] is None
    shown = json.loads(cli("status", "--json", "--namespace", "frontend", cwd=tmp_path).stdout)
    assert [s["name"] for s in shown["services"]] == ["web"]
    table = cli("status", "--namespace", "backend", cwd=tmp_path).stdout
    assert "api" in table and "web" not in table and "tool" not in table
    before = {s["name"]: s["pid"] for s in client(tmp_path).get("/v1/status")["services"]}
    done = cli("restart", "--namespace", "backend", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = {s["name"]: s["pid"] for s in client(tmp_path).get("/v1/status")["services"]}
    assert after["api"] != before["api"] and after["db"] != before["db"]
    unknown = cli("status", "--namespace", "nowhere", cwd=tmp_path)
    assert (
        unknown.returncode == 2
        and "unknown namespace nowhere (the stack has: backend, frontend)" in unknown.stderr
    )
    assert cli("up", "-d", "--namespace", "nowhere", cwd=tmp_path).returncode == 2
