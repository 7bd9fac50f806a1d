"""The port an on-demand service's listener takes at `up` goes through the same conflict
rules as any service's: somebody else listening there, or another stack's allocation,
moves it to its `alternative_ports` (conservative), and the others are told the port it
moved to. Real supervisors, real listeners, real connections."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import alive, cli, free_ports, wait_for, write_stack
from tests.test_activation_reload import EITHER, ask, services


def stack_of(root: Path, port: int, spare: list[int], mode: str) -> None:
    """`api` on demand on `port`, and `seen`, which writes where it was told api is."""
    (root / "either.py").write_text(EITHER)
    write_stack(
        root,
        f"services:\n"
        f"  api:\n    command: python3 either.py\n    port: {port}\n"
        f"    alternative_ports: {spare}\n    socket: {mode}\n    start: on_demand\n"
        "  seen:\n"
        "    command: python3 -c \"import os, time; open('seen', 'w').write(os.environ['API_PORT']);"
        ' time.sleep(300)"\n'
        "    depends_on: [api]\n",
    )


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
def test_an_on_demand_service_moves_off_a_port_somebody_else_listens_on(
    tmp_path: Path, detached: Any, mode: str
) -> None:
    port, *spare = free_ports(3)
    stack_of(tmp_path, port, spare, mode)
    with socket.create_server(("127.0.0.1", port)) as theirs:
        up = detached(tmp_path)
        assert up.returncode == 0, up.stderr
        api = services(tmp_path)["api"]
        assert (api["state"], api["port"], api["pid"]) == ("idle", spare[0], None)
        assert api["reason"] == f"waiting for a connection on port {spare[0]}"
        assert ask(spare[0]) == services(tmp_path)["api"]["pid"]
        wait_for(lambda: (tmp_path / "seen").exists() and (tmp_path / "seen").read_text() == str(spare[0]))
        # Theirs is untouched: still listening, and nothing of ours took a connection from it.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = theirs.accept()
            accepted.close()
    conflicts = json.loads(cli("history", "--json", cwd=tmp_path).stdout)
    assert any(c["service"] == "api" and f"port {port}" in c["data"]["message"] for c in conflicts), conflicts


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
def test_two_stacks_with_the_same_on_demand_port_run_side_by_side(
    tmp_path: Path, detached: Any, mode: str
) -> None:
    """The second stack's listener does not take the port the first one's allocation
    holds (and listens on): it moves, and both answer."""
    port, *spare = free_ports(3)
    (a := tmp_path / "a").mkdir()
    (b := tmp_path / "b").mkdir()
    stack_of(a, port, spare, mode)
    stack_of(b, port, spare, mode)
    assert detached(a).returncode == 0
    assert detached(b).returncode == 0
    assert services(a)["api"]["port"] == port
    moved = services(b)["api"]["port"]
    assert moved in spare
    assert ask(port) == services(a)["api"]["pid"]
    assert ask(moved) == services(b)["api"]["pid"]
    listed = json.loads(cli("ports", "list", "--json", cwd=a).stdout)
    assert {(r["owner"], r["port"]) for r in listed if r["name"] == "api"} == {
        (str(a / "services.yaml"), port),
        (str(b / "services.yaml"), moved),
    }


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
def test_an_edit_that_keeps_the_socket_keeps_the_port_it_moved_to(
    tmp_path: Path, detached: Any, mode: str
) -> None:
    """A reload that changes the service but not its port or socket mode keeps the
    listener: on the port it moved to at `up`, not the one the file names."""
    port, *spare = free_ports(3)
    stack_of(tmp_path, port, spare, mode)
    with socket.create_server(("127.0.0.1", port)):
        assert detached(tmp_path).returncode == 0
        first = ask(spare[0])
        stack = tmp_path / "services.yaml"
        stack.write_text(
            stack.read_text().replace("start: on_demand\n", "start: on_demand\n    environment: {X: '1'}\n")
        )
        wait_for(lambda: services(tmp_path)["api"]["state"] == "idle" and not alive(first), timeout=15)
        api = services(tmp_path)["api"]
        assert (api["state"], api["port"]) == ("idle", spare[0]), api
        assert ask(spare[0]) == services(tmp_path)["api"]["pid"]
        listed = json.loads(cli("ports", "list", "--json", cwd=tmp_path).stdout)
        assert {r["port"] for r in listed if r["name"] == "api"} == {spare[0]}


def test_a_proxied_service_started_at_up_moves_its_public_port_before_it_starts(
    tmp_path: Path, detached: Any
) -> None:
    """Not on demand: the public port is resolved before the service and its dependents
    start, so the dependent is told the port the proxy listens on."""
    port, *spare = free_ports(3)
    stack_of(tmp_path, port, spare, "proxy")
    stack = tmp_path / "services.yaml"
    stack.write_text(stack.read_text().replace("    start: on_demand\n", ""))
    with socket.create_server(("127.0.0.1", port)):
        up = detached(tmp_path)
        assert up.returncode == 0, up.stderr
        api = services(tmp_path)["api"]
        assert api["port"] == spare[0] and api["internal_port"] not in (None, port, *spare), api
        assert ask(spare[0]) == api["pid"]
        wait_for(lambda: (tmp_path / "seen").exists() and (tmp_path / "seen").read_text() == str(spare[0]))
