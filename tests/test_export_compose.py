"""`stackvisor export compose`: the mapping over plain data, every stack of the repository
validated by the Compose Specification's own JSON Schema, and read back by stackvisor's
loader into the same services, dependencies, health checks and restart policies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackvisor.config import load_config
from stackvisor.config.schema import StackConfig
from stackvisor.export import base, compose
from tests.conftest import REPO, cli, write_stack

STACKS = [REPO / "services.yaml", *sorted(REPO.glob("examples/*/services.yaml"))]
# The examples run postgres and redis as their own users: any user that exists will do here.
ENVIRON = {**os.environ, "PG_USER": "root", "REDIS_USER": "root"}


def schema_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def exported(
    config: StackConfig, names: tuple[str, ...] = (), image: str = "python:3.12-slim"
) -> dict[str, Any]:
    result = compose.export(base.plan(config, names, image=image))
    assert list(result.files) == ["compose.yaml"]
    return dict(yaml.safe_load(result.files["compose.yaml"]))


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_stack_of_the_repository_is_valid_compose(stack: Path) -> None:
    document = exported(load_config(stack, environ=ENVIRON))
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in schema_validator().iter_errors(document)
    ]
    assert problems == []


def comparable(config: StackConfig) -> dict[str, Any]:
    """What a round trip through Compose keeps: the services, their dependencies, their
    health checks' timing and their restart policies."""
    out = {}
    for name, svc in config.services.items():
        check = svc.healthcheck
        out[name] = {
            "depends_on": {d: (str(x.condition), x.restart, x.required) for d, x in svc.depends_on.items()},
            "healthcheck": None
            if check is None or check.log is not None
            else (check.interval, check.timeout, check.retries, check.start_period),
            # Compose counts restarts only with on-failure (`on-failure:N`).
            "restart": (str(svc.restart), svc.max_restarts if str(svc.restart) == "on-failure" else None),
            "stop": (svc.stop_signal, config.stop_timeout(svc)),
            "profiles": svc.profiles,
        }
    return out


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_compose_file_reads_back_as_the_same_stack(stack: Path, tmp_path: Path) -> None:
    original = load_config(stack, environ=ENVIRON)
    document = exported(original)
    for service in document["services"].values():  # what only a container has
        for field in ("image", "entrypoint", "ports"):
            service.pop(field, None)
    again = tmp_path / "services.yaml"
    again.write_text(yaml.safe_dump(document))
    (tmp_path / ".env").write_text("")
    reread = load_config(again, environ=ENVIRON)
    assert comparable(reread) == comparable(original)
    for name, svc in reread.services.items():  # the environment names the ports it had
        port = original.services[name].port
        if isinstance(port, int):
            assert svc.env["PORT"] == str(port)


def test_the_mapping(tmp_path: Path) -> None:
    stack = write_stack(
        tmp_path,
        """
        services:
          db:
            command: ["postgres", "-p", "${PORT}"]
            port: 5432
            user: "999:999"
            stop_signal: SIGINT
            stop_grace_period: 1m30s
            healthcheck: {tcp: "127.0.0.1:${PORT}", interval: 500ms, retries: 5, start_period: 10s}
            restart: always
            profiles: [data]
          api:
            command: "python -m api --port ${PORT} && echo 'costs $$5'"
            port: 8000
            alternative_ports: [8001]
            env: {DATABASE_URL: "postgres://127.0.0.1:${DB_PORT}/app", OTHER: "localhost:9999"}
            depends_on:
              db: {condition: service_healthy, restart: true}
            healthcheck: {http: "http://127.0.0.1:${PORT}/health"}
            working_dir: /tmp
            labels: {team: web}
          once:
            command: ./migrate
            restart: "no"
            working_dir: scripts
        """,
        programs=False,
    )
    (tmp_path / "scripts").mkdir()
    document = exported(load_config(stack, environ={}))
    db, api, once = (document["services"][n] for n in ("db", "api", "once"))
    assert db["command"] == ["postgres", "-p", "5432"] and db["entrypoint"] == []
    assert (db["user"], db["stop_signal"], db["stop_grace_period"], db["restart"]) == (
        "999:999",
        "SIGINT",
        "1m30s",
        "always",
    )
    assert db["ports"] == ["127.0.0.1:5432:5432"] and db["profiles"] == ["data"]
    assert (
        db["healthcheck"]["test"][0] == "CMD-SHELL" and "nc -z 127.0.0.1 5432" in db["healthcheck"]["test"][1]
    )
    assert (
        db["healthcheck"]["interval"],
        db["healthcheck"]["retries"],
        db["healthcheck"]["start_period"],
    ) == ("500ms", 5, "10s")
    # A string runs through the shell, as stackvisor runs it; `$` is Compose's `$$`.
    assert api["command"] == ["/bin/sh", "-c", "python -m api --port 8000 && echo 'costs $$5'"]
    assert api["environment"]["DATABASE_URL"] == "postgres://db:5432/app"  # a dependency: by its name
    assert api["environment"]["OTHER"] == "localhost:9999"  # no dependency of ours
    assert (api["environment"]["PORT"], api["environment"]["DB_PORT"]) == ("8000", "5432")
    assert api["depends_on"] == {"db": {"condition": "service_healthy", "restart": True, "required": True}}
    assert "http://127.0.0.1:8000/health" in api["healthcheck"]["test"][1]
    assert (api["working_dir"], api["labels"], api["restart"]) == (
        "/tmp",
        {"team": "web"},
        "on-failure:5",
    )
    assert once["restart"] == "no" and "working_dir" not in once
    result = compose.export(base.plan(load_config(stack, environ={}), image="x"))
    assert (
        "api: port conflicts are not resolved (alternative_ports, port_range): the port is fixed"
        in result.warnings
    )
    assert any(w.startswith("once: working_dir scripts") for w in result.warnings)
    assert all(f"#   {w}" in result.files["compose.yaml"] for w in result.warnings)


def test_an_image_is_needed_and_named_services_bring_their_dependencies(tmp_path: Path) -> None:
    stack = write_stack(
        tmp_path,
        """
        services:
          db: {command: x, x-kubernetes: {image: "postgres:16"}}
          api: {command: x, depends_on: [db]}
          other: {command: x}
        """,
        programs=False,
    )
    config = load_config(stack, environ={})
    with pytest.raises(base.ExportError, match="no image for api, other"):
        compose.export(base.plan(config, images={"db": "postgres:16"}))
    assert list(exported(config, ("api",), image="app:1")["services"]) == ["db", "api"]
    with pytest.raises(base.ExportError, match="unknown service nope"):
        base.plan(config, ("nope",))
    # Through the command line: x-kubernetes from the file, the rest from --image.
    done = cli("export", "compose", "--image", "app:1", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    assert {n: s["image"] for n, s in written["services"].items()} == {
        "db": "postgres:16",
        "api": "app:1",
        "other": "app:1",
    }
    refused = cli("export", "compose", cwd=tmp_path)
    assert refused.returncode == 2 and "no image for api, other" in refused.stderr
    assert cli("export", "nomad", cwd=tmp_path).returncode == 2


def test_a_schedule_is_said_not_silently_dropped(tmp_path: Path) -> None:
    stack = write_stack(
        tmp_path, "services:\n  backup: {command: /bin/true, schedule: {interval: 1h}}\n", programs=False
    )
    result = compose.export(base.plan(load_config(stack, environ={}), image="app:1"))
    assert any(w.startswith("backup: schedule:") for w in result.warnings)
