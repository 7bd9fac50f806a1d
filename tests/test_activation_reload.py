"""Edits of an on-demand or proxied service's listening (its `socket` mode, its name,
its port) by a hot reload: the stack stays up, whatever the edit and whoever holds the
new port, the service listens where the file says and the registry knows it; and its
dependents follow its runs, not its wakes. Real supervisors (`up -d`), real servers,
real connections."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import alive, cli, client, free_ports, wait_for, write_stack

# Serves on the socket it inherits (fd 3) or binds $PORT; answers each connection with
# its pid.
EITHER = """
import os, socket, threading
if os.environ.get("LISTEN_FDS"):
    s = socket.socket(fileno=3)
else:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(64)
def answer(c):
    c.sendall(str(os.getpid()).encode())
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,)).start()
"""

OTHER = "  other: {command: \"python3 -c 'import time; time.sleep(300)'\"}\n"


def stack_of(root: Path, port: int, mode: str, name: str = "api") -> Path:
    (root / "either.py").write_text(EITHER)
    return write_stack(
        root,
        f"services:\n  {name}:\n    command: python3 either.py\n    port: {port}\n"
        f"    socket: {mode}\n    start: on_demand\n" + OTHER,
    )


def ask(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        return int(conn.recv(32))


def services(root: Path) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in client(root).get("/v1/status")["services"]}


def test_a_reload_between_inherit_and_proxy_keeps_the_stack_and_serves_on_the_port(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    stack = stack_of(tmp_path, port, "proxy")
    assert detached(tmp_path).returncode == 0
    other = services(tmp_path)["other"]["pid"]
    first = ask(port)
    for mode in ("inherit", "proxy", "inherit"):
        stack_of(tmp_path, port, mode)
        wait_for(
            lambda old=first: services(tmp_path)["api"]["state"] == "idle" and not alive(old), timeout=15
        )
        first = ask(port)
        assert services(tmp_path)["api"]["pid"] == first
    assert services(tmp_path)["other"]["pid"] == other  # untouched, and the supervisor is up
    assert stack.exists()


def test_a_renamed_proxied_service_keeps_its_port_and_the_stack(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    stack_of(tmp_path, port, "proxy")
    assert detached(tmp_path).returncode == 0
    first = ask(port)
    stack_of(tmp_path, port, "proxy", name="web")
    wait_for(lambda: "api" not in services(tmp_path) and not alive(first), timeout=15)
    assert ask(port) == services(tmp_path)["web"]["pid"]
    assert services(tmp_path)["other"]["state"] == "running"


def test_an_idle_service_moved_by_a_reload_says_its_new_port(tmp_path: Path, detached: Any) -> None:
    old, new = free_ports(2)
    stack_of(tmp_path, old, "inherit")
    assert detached(tmp_path).returncode == 0
    assert services(tmp_path)["api"]["reason"] == f"waiting for a connection on port {old}"
    stack_of(tmp_path, new, "inherit")
    wait_for(lambda: services(tmp_path)["api"]["port"] == new, timeout=15)
    wait_for(lambda: services(tmp_path)["api"]["reason"] == f"waiting for a connection on port {new}")
    assert services(tmp_path)["api"]["state"] == "idle" and ask(new)


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
def test_a_port_somebody_else_listens_on_fails_the_service_not_the_stack(
    tmp_path: Path, detached: Any, mode: str
) -> None:
    """The edit moves an idle service to a port another process holds: it fails, says
    why, and starts there once the port is free and somebody asks."""
    port, taken = free_ports(2)
    stack_of(tmp_path, port, mode)
    assert detached(tmp_path).returncode == 0
    with socket.create_server(("127.0.0.1", taken)):
        stack_of(tmp_path, taken, mode)
        wait_for(lambda: services(tmp_path)["api"]["state"] == "failed", timeout=15)
        assert f"port {taken}" in services(tmp_path)["api"]["reason"]
        assert services(tmp_path)["other"]["state"] == "running"
    started = cli("start", "api", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: services(tmp_path)["api"]["state"] in ("idle", "running"), timeout=15)
    assert ask(taken) == services(tmp_path)["api"]["pid"]


def test_a_service_no_longer_proxied_listens_on_its_own_port(tmp_path: Path, detached: Any) -> None:
    """Its `PORT` was the internal one behind the proxy: it is its port again."""
    (port,) = free_ports(1)
    (tmp_path / "either.py").write_text(EITHER)
    plain = f"services:\n  api:\n    command: python3 either.py\n    port: {port}\n"
    stack = write_stack(tmp_path, plain + "    socket: proxy\n")
    assert detached(tmp_path).returncode == 0
    first = ask(port)
    stack.write_text(plain)
    wait_for(lambda: services(tmp_path)["api"]["pid"] not in (None, first), timeout=15)
    assert wait_for(lambda: answered(port)) == services(tmp_path)["api"]["pid"]
    assert services(tmp_path)["api"].get("internal_port") is None


def answered(port: int) -> int | None:
    """Who answers on `port`; None while nobody listens there."""
    try:
        return ask(port)
    except ConnectionRefusedError:
        return None


def test_a_moved_on_demand_service_holds_its_new_port_in_the_registry(tmp_path: Path, detached: Any) -> None:
    """Another stack must not be handed the port it waits on (nor keep away from the old)."""
    old, new = free_ports(2)
    stack_of(tmp_path, old, "proxy")
    assert detached(tmp_path).returncode == 0

    def allocated() -> set[int]:
        listed = json.loads(cli("ports", "list", "--json", cwd=tmp_path).stdout)
        return {r["port"] for r in listed if r["name"] == "api"}

    assert allocated() == {old}
    stack_of(tmp_path, new, "proxy")
    wait_for(lambda: services(tmp_path)["api"]["port"] == new, timeout=15)
    assert allocated() == {new}


def test_a_dependent_follows_the_runs_of_an_on_demand_service_not_its_wakes(
    tmp_path: Path, detached: Any
) -> None:
    """`restart: true`: woken by a connection, the dependency did not run again (an idle
    one meets `service_started` already); restarted, it did."""
    (port,) = free_ports(1)
    stack_of(tmp_path, port, "inherit")
    stack = tmp_path / "services.yaml"
    stack.write_text(
        stack.read_text()
        + "  user:\n    command: python3 -c 'import time; time.sleep(300)'\n"
        + "    depends_on: {api: {condition: service_started, restart: true}}\n"
    )
    assert detached(tmp_path).returncode == 0
    user = services(tmp_path)["user"]["pid"]
    woken = ask(port)
    wait_for(lambda: services(tmp_path)["api"]["state"] == "running")
    assert services(tmp_path)["user"]["pid"] == user
    assert services(tmp_path)["user"]["state"] == "running"
    assert cli("restart", "api", cwd=tmp_path).returncode == 0
    wait_for(lambda: services(tmp_path)["user"]["pid"] not in (None, user), timeout=15)
    assert not alive(woken)


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
@pytest.mark.parametrize("edit", ["rename", "copies"])
def test_a_connection_waiting_on_a_port_another_name_takes_over_is_served(
    tmp_path: Path, detached: Any, mode: str, edit: str
) -> None:
    """The edit removes the service that listens and adds one with the same port and
    mode (renamed; one service made a group of copies, whose first has the port): the
    listener goes over with the connections in its backlog, as across a restart."""
    (port,) = free_ports(1)
    (tmp_path / "either.py").write_text(EITHER)
    slow = f"    command: sh -c 'sleep 1; exec python3 either.py'\n    port: {port}\n"
    slow += f"    socket: {mode}\n    start: on_demand\n"
    stack = write_stack(tmp_path, "services:\n  api:\n" + slow)
    assert detached(tmp_path).returncode == 0
    with socket.create_connection(("127.0.0.1", port), timeout=15) as waiting:
        wait_for(lambda: services(tmp_path)["api"]["state"] in ("starting", "running"))
        heir = "web" if edit == "rename" else "api.0"
        stack.write_text(
            "services:\n  " + ("web:\n" if edit == "rename" else "api:\n    replicas: 2\n") + slow
        )
        answer = int(waiting.recv(32))
    assert answer == services(tmp_path)[heir]["pid"]


def test_a_proxied_service_out_of_the_profiles_started_by_hand_gets_its_proxy(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    (tmp_path / "either.py").write_text(EITHER)
    write_stack(
        tmp_path,
        f"services:\n  api:\n    command: python3 either.py\n    port: {port}\n"
        "    socket: proxy\n    profiles: [extra]\n" + OTHER,
    )
    assert detached(tmp_path).returncode == 0
    assert "api" not in services(tmp_path) or services(tmp_path)["api"]["pid"] is None
    started = cli("start", "api", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert wait_for(lambda: answered(port)) == services(tmp_path)["api"]["pid"]
    assert services(tmp_path)["api"]["internal_port"] not in (None, port)
