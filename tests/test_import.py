"""`stackvisor import`: a Procfile or a process-compose file becomes a services.yaml that
validates and runs the same processes."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, free_ports, wait_for

from stackvisor.config import load_config
from stackvisor.config.importers import NotImportable, from_process_compose, from_procfile

RAILS_PROCFILE = """\
# A Rails app, as Heroku and foreman run it
web: bundle exec puma -C config/puma.rb -p $PORT
worker: bundle exec sidekiq -q default -q mailers
release: bin/rails db:migrate
webpack: bin/webpack-dev-server --port ${PORT:-3035}
"""


def loaded(tmp_path: Path, text: str) -> Any:
    (tmp_path / "services.yaml").write_text(text)
    return load_config(tmp_path / "services.yaml", environ={})


def test_a_rails_procfile_keeps_foremans_ports_and_its_dotenv(tmp_path: Path) -> None:
    config = loaded(tmp_path, from_procfile(RAILS_PROCFILE, dotenv=True))
    web, worker, release, webpack = (config.services[n] for n in ("web", "worker", "release", "webpack"))
    assert (web.port, webpack.port) == (5000, 5300)  # they listen on $PORT
    assert (worker.port, worker.env["PORT"], release.env["PORT"]) == (None, "5100", "5200")
    assert web.command == "bundle exec puma -C config/puma.rb -p $$PORT"  # the shell expands it, as foreman's
    assert [(f.path, f.required) for f in web.env_file] == [(".env", False)]
    assert list(config.services) == ["web", "worker", "release", "webpack"]


def test_a_procfile_line_that_is_not_a_process_is_refused() -> None:
    with pytest.raises(NotImportable, match="Procfile:2: expected `name: command`"):
        from_procfile("web: run\nthis is not a process\n", dotenv=False)
    with pytest.raises(NotImportable, match="no processes"):
        from_procfile("# nothing\n", dotenv=False)


PROCESS_COMPOSE = """\
version: "0.5"
log_location: /tmp/pc.log
environment:
  - "LOG_LEVEL=debug"
processes:
  db:
    command: "postgres -D data"
    ready_log_line: "ready to accept connections"
    shutdown:
      signal: 2
      timeout_seconds: 10
      command: "pg_ctl stop"
  migrate:
    command: "./migrate.sh"
    depends_on:
      db:
        condition: process_log_ready
  api:
    command: "python app.py --port $API_PORT"
    working_dir: "."
    environment:
      - "API_PORT=8080"
    depends_on:
      migrate:
        condition: process_completed_successfully
    readiness_probe:
      http_get: {host: 127.0.0.1, port: 8080, path: "/health"}
      initial_delay_seconds: 2
      period_seconds: 5
      timeout_seconds: 1
      failure_threshold: 3
    liveness_probe:
      exec: {command: "curl -f localhost:8080"}
    availability:
      restart: on_failure
      backoff_seconds: 2
      max_restarts: 5
    namespace: backend
  worker:
    command: "./work.sh --id $PC_REPLICA_NUM"
    replicas: 2
  legacy:
    command: "./daemon.sh"
    is_daemon: true
    disabled: true
    availability: {restart: exit_on_failure}
"""


def test_a_process_compose_file_in_its_documented_shapes(tmp_path: Path) -> None:
    text = from_process_compose(PROCESS_COMPOSE)
    config = loaded(tmp_path, text)
    db, migrate, api, legacy = (config.services[n] for n in ("db", "migrate", "api", "legacy"))
    assert db.healthcheck is not None and db.healthcheck.log == "ready to accept connections"
    assert (db.stop_signal, db.stop_timeout) == ("SIGINT", 10.0)
    assert migrate.depends_on["db"].condition == "service_healthy"  # process_log_ready
    assert api.depends_on["migrate"].condition == "service_completed_successfully"
    check = api.healthcheck
    assert check is not None and check.http == "http://127.0.0.1:8080/health"
    assert (check.interval, check.timeout, check.start_period, check.retries) == (5.0, 1.0, 2.0, 3)
    assert (api.restart, api.backoff.initial, api.max_restarts) == ("on-failure", 2.0, 5)
    assert api.env == {"LOG_LEVEL": "debug", "API_PORT": "8080"}
    assert legacy.disabled and legacy.restart == "no" and not api.disabled
    assert legacy.daemon is not None and legacy.daemon.pidfile is None  # is_daemon: true
    assert db.shutdown is not None and (db.shutdown.command, db.shutdown.timeout) == ("pg_ctl stop", 10.0)
    assert (api.namespace, db.namespace) == ("backend", None)
    assert config.groups["worker"].replicas == 2 and "worker.1" in config.services  # replicas
    # Nothing is dropped silently: each field without an equivalent is a comment.
    for kept in (
        "# log_location",
        "# liveness_probe",
        "# availability.restart: exit_on_failure",
        "# PC_REPLICA_NUM",
    ):
        assert kept in text


def test_what_is_not_a_process_compose_file_is_refused() -> None:
    with pytest.raises(NotImportable, match="expected a process-compose file"):
        from_process_compose("services:\n  web: {command: x}\n")
    with pytest.raises(NotImportable, match="not YAML"):
        from_process_compose("processes: [unclosed\n")


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_an_imported_procfile_runs_the_same_processes(tmp_path: Path, detached: Any) -> None:
    base = free_ports(1)[0]
    (tmp_path / "Procfile").write_text(
        "web: python3 -m http.server $PORT --bind 127.0.0.1\n"
        "clock: python3 -c 'import os, time; print(os.environ[\"PORT\"], flush=True); time.sleep(300)'\n"
    )
    wrote = cli("import", "Procfile", "-o", "services.yaml", "--port", str(base), cwd=tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    assert cli("import", "Procfile", "-o", "services.yaml", cwd=tmp_path).returncode == 1  # no overwrite
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    services = {s["name"]: s for s in json.loads(cli("status", "--json", cwd=tmp_path).stdout)["services"]}
    wait_for(lambda: accepts(services["web"]["port"]))  # no health check: running once started
    assert services["clock"]["state"] == "running"
    wait_for(lambda: f"clock | {base + 100}" in cli("logs", "clock", cwd=tmp_path).stdout)  # foreman's PORT


def test_an_imported_process_compose_file_runs_the_same_processes(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    (tmp_path / "process-compose.yaml").write_text(f"""\
processes:
  db:
    command: python3 -c 'import time; print("ready to accept connections", flush=True); time.sleep(300)'
    ready_log_line: ready to accept connections
  migrate:
    command: echo migrated
    depends_on: {{db: {{condition: process_log_ready}}}}
  api:
    command: python3 -m http.server {port} --bind 127.0.0.1
    depends_on: {{migrate: {{condition: process_completed_successfully}}}}
    readiness_probe:
      http_get: {{host: 127.0.0.1, port: {port}, path: /}}
      period_seconds: 1
""")
    assert cli("import", "process-compose.yaml", "-o", "services.yaml", cwd=tmp_path).returncode == 0
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    states = {
        s["name"]: s["state"] for s in json.loads(cli("status", "--json", cwd=tmp_path).stdout)["services"]
    }
    assert states == {"db": "healthy", "migrate": "completed", "api": "healthy"}
