"""`up` and `run` against a stack that already runs converge instead of refusing, as
`docker compose up -d` does: the file is applied, what is missing starts, and a stack
that `run` did not start is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import SLEEP, child_env, cli, client, free_ports, save, supervisor_pid, wait_for, write_stack

Detached = Callable[..., subprocess.CompletedProcess[str]]


def two_servers(api: int, web: int, *, api_env: str = "one", reload: bool = True) -> str:
    return f"""
settings: {{reload: {str(reload).lower()}}}
services:
  api:
    command: python3 server.py
    port: {api}
    env: {{VERSION: {api_env}}}
    healthcheck: {{tcp: "127.0.0.1:${{PORT}}"}}
  web:
    command: python3 server.py
    port: {web}
    healthcheck: {{tcp: "127.0.0.1:${{PORT}}"}}
  worker:
    command: {SLEEP}
"""


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`stackvisor run ARGS` as a real process (it handles signals, and takes the stack down)."""
    command = [sys.executable, "-m", "stackvisor", "run", *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, env=child_env(), timeout=60)


def services(root: Path) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in client(root).get("/v1/status")["services"]}


def test_up_d_against_a_running_stack_applies_the_file_and_starts_what_is_missing(
    tmp_path: Path, detached: Detached
) -> None:
    api, web = free_ports(2)
    path = write_stack(tmp_path, two_servers(api, web, reload=False))  # only `up` applies edits here
    assert detached(tmp_path, "api").returncode == 0
    supervisor = supervisor_pid(tmp_path)
    first_api = services(tmp_path)["api"]["pid"]

    save(path, two_servers(api, web, api_env="two", reload=False))
    up = cli("up", "-d", "--wait", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert f"already running (pid {supervisor}): file applied (changed: api)" in up.stderr
    assert "started web, worker" in up.stderr and "ready: api, web, worker" in up.stderr
    now = services(tmp_path)
    assert now["api"]["pid"] != first_api and {s["state"] for s in now.values()} == {"healthy", "running"}
    assert supervisor_pid(tmp_path) == supervisor

    assert cli("stop", "web", cwd=tmp_path).returncode == 0
    again = cli("up", "-d", "--wait", "web", cwd=tmp_path)
    assert again.returncode == 0 and "file applied (no changes), started web" in again.stderr
    assert services(tmp_path)["web"]["state"] == "healthy"
    nothing = cli("up", "-d", cwd=tmp_path)
    assert nothing.returncode == 0 and "nothing to start" in nothing.stderr


def test_a_service_started_by_hand_stays_selected_across_a_reload(tmp_path: Path, detached: Detached) -> None:
    api, web = free_ports(2)
    path = write_stack(tmp_path, two_servers(api, web, reload=False))
    assert detached(tmp_path, "api").returncode == 0
    assert cli("start", "worker", cwd=tmp_path).returncode == 0
    save(path, two_servers(api, web, api_env="two", reload=False))
    assert cli("reload", cwd=tmp_path).returncode == 0
    now = services(tmp_path)
    assert now["worker"]["selected"] and not now["web"]["selected"]


def test_the_api_names_an_unknown_service(tmp_path: Path, detached: Detached) -> None:
    from stackvisor.errors import ApiError

    api, web = free_ports(2)
    write_stack(tmp_path, two_servers(api, web))
    assert detached(tmp_path, "worker").returncode == 0
    try:
        client(tmp_path).post("/v1/up", {"services": ["nosuch"]})
    except ApiError as exc:
        assert (exc.status, exc.detail) == (404, "nosuch")
    else:
        raise AssertionError("POST /v1/up accepted a service that does not exist")


def test_run_against_a_running_stack_leaves_it_running(tmp_path: Path, detached: Detached) -> None:
    api, web = free_ports(2)
    write_stack(tmp_path, two_servers(api, web))
    assert detached(tmp_path, "api").returncode == 0
    supervisor = supervisor_pid(tmp_path)
    shown = run(tmp_path, "api", "--", "sh", "-c", 'echo "$API_PORT-$WEB_PORT"; exit 3')
    assert shown.returncode == 3, shown.stderr
    assert shown.stdout == f"{api}-\n"  # web does not run: its port is not exported
    assert supervisor_pid(tmp_path) == supervisor
    assert services(tmp_path)["api"]["state"] == "healthy"


def test_run_exports_only_the_ports_of_services_that_run(tmp_path: Path) -> None:
    api, web = free_ports(2)
    write_stack(tmp_path, two_servers(api, web))
    result = run(tmp_path, "api", "--", "sh", "-c", 'echo "$API_PORT-$WEB_PORT"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{api}-\n"
    assert supervisor_pid(tmp_path) is None  # this run started the stack: it took it down


def test_run_exports_the_port_of_an_on_demand_service_waiting_for_its_first_connection(
    tmp_path: Path,
) -> None:
    """Idle, it runs nothing yet, but its port listens: the command's first connection
    starts it."""
    api, web = free_ports(2)
    write_stack(
        tmp_path,
        two_servers(api, web).replace("    env: {VERSION: one}", "    socket: proxy\n    start: on_demand"),
    )
    result = run(tmp_path, "api", "--", "python3", "-c", CONNECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{api} answered\n"


CONNECT = """
import os, socket
port = int(os.environ["API_PORT"])
with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
    conn.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    assert conn.recv(64)
print(port, "answered")
"""


def test_plain_up_against_a_running_stack_attaches_and_ctrl_c_only_detaches(
    tmp_path: Path, detached: Detached
) -> None:
    api, web = free_ports(2)
    write_stack(tmp_path, two_servers(api, web))
    assert detached(tmp_path, "worker").returncode == 0
    supervisor = supervisor_pid(tmp_path)
    attached = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "up", "worker"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert attached.stderr is not None
        lines = [attached.stderr.readline(), attached.stderr.readline()]
        assert "already running" in lines[0] and "attached to its output" in lines[1]
        os.kill(attached.pid, signal.SIGINT)
        assert attached.wait(timeout=10) == 0
    finally:
        if attached.poll() is None:
            attached.kill()
            attached.wait()
    assert supervisor_pid(tmp_path) == supervisor
    assert wait_for(lambda: services(tmp_path)["worker"]["state"] == "running")
    assert json.loads(cli("status", "--json", cwd=tmp_path).stdout)["pid"] == supervisor
