"""A docker compose file's spellings read as Compose means them, beside stackvisor's own;
container fields and other tools' names get a word on what to write instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SLEEP, cli, running_stack, save, until, until_ready, watching, write_stack

from stackvisor.config import ConfigError, load_config
from stackvisor.config.schema import StackConfig


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> StackConfig:
    return load_config(write_stack(tmp_path, text, programs=False), environ=environ or {})


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [line.split(": ", 1)[1] for line in str(caught.value).splitlines()]


def test_environment_as_a_map_or_a_list_and_a_bare_key_from_the_environment(tmp_path: Path) -> None:
    environ = {"FROM_SHELL": "it $works"}
    config = load(
        tmp_path,
        """
        services:
          a: {command: x, environment: {MODE: dev, DEBUG: true, EMPTY: null}}
          b: {command: x, environment: [MODE=prod, FROM_SHELL, NOT_SET, "PRICE=$$5"]}
          c: {command: x, env: {MODE: prod, FROM_SHELL: "it $$works", PRICE: "$$5"}}
        """,
        environ=environ,
    )
    assert config.services["a"].env == {"MODE": "dev", "DEBUG": "true", "EMPTY": ""}
    # A bare key takes the environment's value as it is (no interpolation), or is left
    # out: `b` reads exactly as `c`, which writes it out.
    assert config.services["b"].env == config.services["c"].env
    assert set(config.services["b"].env) == {"MODE", "FROM_SHELL", "PRICE"}


def test_env_and_environment_together_is_an_error_naming_both(tmp_path: Path) -> None:
    said = errors(tmp_path, "services:\n  a: {command: x, env: {A: '1'}, environment: {B: '2'}}\n")
    assert said == ["services.a: env and environment are the same field: write one of them"]


@pytest.mark.parametrize(
    ("test", "probe"),
    [
        ('["CMD", "pg_isready", "-U", "app"]', ["pg_isready", "-U", "app"]),
        ('["CMD-SHELL", "curl -f http://127.0.0.1/ || exit 1"]', "curl -f http://127.0.0.1/ || exit 1"),
        ('"curl -f http://127.0.0.1/"', "curl -f http://127.0.0.1/"),
    ],
)
def test_healthcheck_test_in_composes_forms(tmp_path: Path, test: str, probe: Any) -> None:
    text = f"services:\n  a:\n    command: x\n    healthcheck: {{test: {test}, interval: 5s, retries: 2}}\n"
    check = load(tmp_path, text).services["a"].healthcheck
    assert check is not None and check.exec == probe and (check.interval, check.retries) == (5.0, 2)


@pytest.mark.parametrize("disabled", ['{test: ["NONE"]}', "{disable: true}"])
def test_a_disabled_healthcheck_is_none(tmp_path: Path, disabled: str) -> None:
    assert (
        load(tmp_path, f"services:\n  a: {{command: x, healthcheck: {disabled}}}\n").services["a"].healthcheck
        is None
    )


def test_a_test_that_is_no_command_is_refused(tmp_path: Path) -> None:
    said = errors(tmp_path, "services:\n  a: {command: x, healthcheck: {test: [CMD]}}\n")
    assert len(said) == 1
    assert said[0].startswith('services.a.healthcheck: test: expected ["CMD", "program", "arg", ...]')


def test_restart_on_failure_with_composes_count(tmp_path: Path) -> None:
    """Compose's `on-failure:N` is `on-failure` with `max_restarts: N`."""
    config = load(
        tmp_path,
        """
        services:
          a: {command: x, restart: "on-failure:3"}
          b: {command: x, restart: on-failure}
        """,
    )
    assert (str(config.services["a"].restart), config.services["a"].max_restarts) == ("on-failure", 3)
    assert config.services["b"].max_restarts == 5  # ours, unchanged
    assert errors(tmp_path, 'services:\n  a: {command: x, restart: "on-failure:3", max_restarts: 4}\n') == [
        "services.a: restart: on-failure:3 and max_restarts: 4 say two counts: write one of them"
    ]
    assert "expected one of" in errors(tmp_path, 'services:\n  a: {command: x, restart: "always:3"}\n')[0]


def test_stop_grace_period_labels_and_extensions_anywhere(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        x-note: for other tools
        services:
          a:
            command: x
            stop_grace_period: 1m30s
            labels: [com.example.team=web, tier=front]
            x-owner: someone
            healthcheck: {tcp: "127.0.0.1:1", x-why: checked}
          b:
            command: x
            labels: {com.example.team: db, replicas: 2}
        """,
    )
    assert config.services["a"].stop_timeout == 90.0
    assert config.services["a"].labels == {"com.example.team": "web", "tier": "front"}
    assert config.services["b"].labels == {"com.example.team": "db", "replicas": "2"}
    assert errors(tmp_path, "services:\n  a: {command: x, stop_timeout: 1s, stop_grace_period: 2s}\n") == [
        "services.a: stop_timeout and stop_grace_period are the same field: write one of them"
    ]


def test_merge_keys_and_aliases_with_errors_where_they_were_written(tmp_path: Path) -> None:
    text = """\
x-defaults: &defaults
  restart: sometimes
  environment: {LANG: C.UTF-8}
services:
  a:
    <<: *defaults
    command: x
"""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    said = "services.a.restart: expected one of no, on-failure, always, unless-stopped"
    assert str(caught.value).endswith(f'services.yaml:2:12: {said} (got "sometimes")')  # in the anchor
    fixed = load(tmp_path, text.replace("sometimes", "always"))
    assert fixed.services["a"].env == {"LANG": "C.UTF-8"} and fixed.services["a"].restart == "always"


@pytest.mark.parametrize(
    ("field", "said"),
    [
        (
            "image: postgres:16",
            "stackvisor runs processes, not containers: there is no image to run: write `command:`",
        ),
        ("build: .", "there is nothing to build"),
        (
            'ports: ["8080:80"]',
            "there is no port mapping: write `port:`, the port the process listens on (here: `port: 8080`)",
        ),
        ("volumes: [./data:/data]", "a process sees the machine's files"),
        ("container_name: db", "a service is named by its key"),
        ("init: true", "the supervisor reaps every process its services start: there is no init to add"),
        ("tty: true", "a service has no terminal: its output goes to logs/<service>.log"),
        ("hostname: db", "processes share the machine's name, network and resolver"),
        ("logging: {driver: json-file}", "output goes to logs/<service>.log"),
        ("cap_add: [NET_ADMIN]", "a process has its user's rights: write `user:`"),
        ("mem_limit: 512m", "stackvisor sets no resource limits"),
        ("availability: {restart: always}", "unknown field (process-compose's availability; write `restart`"),
        ("autorestart: true", "unknown field (supervisord's autorestart; write `restart`)"),
        ("entrypoint: [sh]", "unknown field (Compose's entrypoint; write `command`)"),
        ("develop: {watch: []}", "unknown field (Compose's develop.watch; write `watch`"),
    ],
)
def test_fields_of_containers_and_other_tools_say_what_to_write(
    tmp_path: Path, field: str, said: str
) -> None:
    (line,) = errors(tmp_path, f"services:\n  a:\n    command: x\n    {field}\n")
    assert said in line


async def test_an_optional_env_file_is_no_error_and_is_read_once_it_appears(tmp_path: Path) -> None:
    text = f"""
    services:
      app:
        command: {SLEEP}
        env_file: [.env.base, {{path: .env.local, required: false}}]
    """
    (tmp_path / ".env.base").write_text("MODE=base\n")
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until_ready(sup)
        assert sup.config.services["app"].env["MODE"] == "base"
        await watching(tmp_path)
        save(tmp_path / ".env.local", "MODE=local\n")
        await until(sup, lambda: sup.config.services["app"].env.get("MODE") == "local")
        await until_ready(sup)
    (tmp_path / ".env.base").unlink()
    with pytest.raises(ConfigError, match=r"env file not found: \.env\.base"):
        load_config(path)


def test_labels_are_shown_in_status_json(tmp_path: Path, detached: Any) -> None:
    write_stack(tmp_path, f"services:\n  app:\n    command: {SLEEP}\n    labels: {{team: web}}\n")
    assert detached(tmp_path).returncode == 0
    (app,) = json.loads(cli("status", "--json", cwd=tmp_path).stdout)["services"]
    assert app["labels"] == {"team": "web"}


PROFILED = f"""
services:
  api: {{command: "{SLEEP}"}}
  debugger: {{command: "{SLEEP}", profiles: [debug], depends_on: [api]}}
  tracer: {{command: "{SLEEP}", profiles: [debug, trace], depends_on: [helper]}}
  helper: {{command: "{SLEEP}", profiles: [never]}}
"""


def test_profiles_select_services_as_compose_does(tmp_path: Path) -> None:
    from stackvisor.runtime.plans import selection

    config = load(tmp_path, PROFILED)
    assert selection(config, []) == {"api"}
    assert selection(config, [], ["debug"]) == {"api", "debugger", "tracer", "helper"}  # what they need too
    assert selection(config, [], ["trace"]) == {"api", "tracer", "helper"}
    assert selection(config, ["debugger"]) == {"api", "debugger"}  # named: whatever its profiles


def test_profiles_from_the_command_line_the_environment_and_a_running_stack(
    tmp_path: Path, detached: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_stack(tmp_path, PROFILED)

    def selected() -> set[str]:
        return {
            s["name"]
            for s in json.loads(cli("status", "--json", cwd=tmp_path).stdout)["services"]
            if s["selected"]
        }

    assert detached(tmp_path).returncode == 0
    assert selected() == {"api"}
    up = cli("up", "-d", "--wait", "--profile", "trace", cwd=tmp_path)  # against the running stack
    assert up.returncode == 0 and "started helper, tracer" in up.stderr
    assert selected() == {"api", "tracer", "helper"}
    assert cli("down", cwd=tmp_path).returncode == 0
    monkeypatch.setenv("STACKVISOR_PROFILES", "debug")
    assert detached(tmp_path).returncode == 0
    assert selected() == {"api", "debugger", "tracer", "helper"}


def test_env_file_paths_are_interpolated(tmp_path: Path) -> None:
    (tmp_path / "staging.env").write_text("MODE=staging\n")
    text = "services:\n  a: {command: x, env_file: ['${STAGE:-dev}.env']}\n"
    assert load(tmp_path, text, environ={"STAGE": "staging"}).services["a"].env == {"MODE": "staging"}


@pytest.mark.parametrize(
    "written",
    ["deploy: {replicas: 3}", "scale: 3", "deploy: {replicas: 3}\n    scale: 3", "replicas: 3\n    scale: 3"],
)
def test_composes_deploy_replicas_and_scale_are_copies(tmp_path: Path, written: str) -> None:
    config = load(tmp_path, f"services:\n  web:\n    command: x\n    {written}\n")
    assert sorted(config.services) == ["web.0", "web.1", "web.2"]


def test_copies_said_twice_differently_and_the_rest_of_deploy_are_errors(tmp_path: Path) -> None:
    (line,) = errors(tmp_path, "services:\n  web:\n    command: x\n    deploy: {replicas: 2}\n    scale: 3\n")
    # The path, then what is wrong (`errors` leaves out the position: 4:24, on the `2`).
    assert (
        line == "services.web.deploy.replicas: deploy.replicas says 2 and scale says 3: write one `replicas`"
    )
    text = (
        "services:\n  web:\n    command: x\n    deploy: {replicas: 2, resources: {limits: {cpus: '0.5'}}}\n"
    )
    (line,) = errors(tmp_path, text)
    assert (
        "not containers: there is nothing to deploy" in line
        and "(`deploy.replicas` is read as `replicas`)" in line
    )
