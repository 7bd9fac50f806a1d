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

from tests.conftest import alive, cli, free_ports, state_events, wait_for, write_stack
from tests.test_activation_reload import EITHER, ask, services
from tests.test_replicas import consecutive_ports


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


def allocations(root: Path) -> dict[str, int]:
    """The registry's ports of the stack in `root`, by service."""
    listed = json.loads(cli("ports", "list", "--json", cwd=root).stdout)
    mine = str(root / "services.yaml")
    return {r["name"]: r["port"] for r in listed if r["owner"] == mine}


def test_copies_of_a_moved_on_demand_service_are_allocated_where_they_listen(
    tmp_path: Path, detached: Any
) -> None:
    """`scale` makes the service copy 0, which keeps the moved listener, and copy 1, whose
    own port (the next one) is that listener's: copy 1 moves on, and the registry names
    each copy at the port it listens on (another stack with `aggressive` must see them)."""
    port = consecutive_ports(4)
    spare = [port + 1, port + 2, port + 3]
    (tmp_path / "either.py").write_text(EITHER)
    write_stack(
        tmp_path,
        f"services:\n  api:\n    command: python3 either.py\n    port: {port}\n"
        f"    port_range: {port + 1}-{port + 3}\n    socket: inherit\n    start: on_demand\n",
    )
    with socket.create_server(("127.0.0.1", port)):
        assert detached(tmp_path).returncode == 0
        moved = services(tmp_path)["api"]["port"]
        assert moved in spare
        scaled = cli("scale", "api", "2", cwd=tmp_path)
        assert scaled.returncode == 0, scaled.stderr

        def settled() -> dict[str, int] | None:
            now = services(tmp_path)
            ports = {n: now[n]["port"] for n in ("api.0", "api.1") if n in now and now[n]["state"] == "idle"}
            return ports if len(ports) == 2 else None

        ports = wait_for(settled, timeout=15)
        assert ports["api.0"] == moved == port + 1 and ports["api.1"] == port + 2
        for name, at in ports.items():
            assert ask(at) == services(tmp_path)[name]["pid"]
        assert allocations(tmp_path) == ports


def test_an_edit_of_a_moved_proxied_service_leaves_its_port_and_its_dependent_alone(
    tmp_path: Path, detached: Any
) -> None:
    port, *spare = free_ports(3)
    stack_of(tmp_path, port, spare, "proxy")
    stack = tmp_path / "services.yaml"
    stack.write_text(stack.read_text().replace("    start: on_demand\n", ""))
    with socket.create_server(("127.0.0.1", port)):
        assert detached(tmp_path).returncode == 0
        before = services(tmp_path)
        assert before["api"]["port"] == spare[0]
        stack.write_text(
            stack.read_text().replace("socket: proxy\n", "socket: proxy\n    environment: {X: '1'}\n")
        )
        wait_for(lambda: services(tmp_path)["api"]["pid"] not in (None, before["api"]["pid"]), timeout=15)
        wait_for(lambda: services(tmp_path)["api"]["state"] == "running", timeout=15)
        after = services(tmp_path)
        assert after["api"]["port"] == spare[0]
        assert after["seen"]["pid"] == before["seen"]["pid"]  # API_PORT did not change
        assert allocations(tmp_path)["api"] == spare[0]
        ports_seen = [
            e["data"]["port"]
            for e in json.loads(cli("history", "--json", "--all", "--limit", "500", cwd=tmp_path).stdout)
            if e["kind"] == "port_allocated" and e["service"] == "api"
        ]
        assert ports_seen.count(port) <= 1, ports_seen  # the file's port, claimed once at up only


def test_up_with_a_profile_against_a_running_stack_watches_what_it_adds(
    tmp_path: Path, detached: Any
) -> None:
    """`up --profile` adds a proxied service with its proxy (on the port it moves to) and
    an on-demand one idle, as `up` would have at the start."""
    held, od_port, *spare = free_ports(4)
    (tmp_path / "either.py").write_text(EITHER)
    write_stack(
        tmp_path,
        f"""
        services:
          base: {{command: "python3 -c 'import time; time.sleep(300)'"}}
          px:
            command: python3 either.py
            port: {held}
            alternative_ports: {spare}
            socket: proxy
            profiles: [extra]
          od:
            command: python3 either.py
            port: {od_port}
            socket: proxy
            start: on_demand
            profiles: [extra]
        """,
    )
    with socket.create_server(("127.0.0.1", held)):
        assert detached(tmp_path).returncode == 0
        again = cli("up", "-d", "--wait", "--profile", "extra", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        now = services(tmp_path)
        assert (now["od"]["state"], now["od"]["pid"]) == ("idle", None)
        assert now["px"]["port"] == spare[0]
        assert ask(spare[0]) == now["px"]["pid"]
        assert ask(od_port) == services(tmp_path)["od"]["pid"]


def test_an_on_demand_service_no_longer_proxied_gives_its_internal_port_back(
    tmp_path: Path, detached: Any
) -> None:
    """proxy -> inherit: the first connection starts it on the socket it is handed, and
    the internal port it had behind the proxy is no longer its, nor allocated."""
    (port,) = free_ports(1)
    (tmp_path / "either.py").write_text(EITHER)
    text = f"services:\n  api:\n    command: python3 either.py\n    port: {port}\n    start: on_demand\n"
    stack = write_stack(tmp_path, text + "    socket: proxy\n")
    assert detached(tmp_path).returncode == 0
    first = ask(port)
    assert "api.internal" in allocations(tmp_path)
    stack.write_text(text + "    socket: inherit\n")
    wait_for(lambda: services(tmp_path)["api"]["state"] == "idle" and not alive(first), timeout=15)
    assert ask(port) == services(tmp_path)["api"]["pid"]
    assert services(tmp_path)["api"].get("internal_port") is None
    assert allocations(tmp_path) == {"api": port}


def test_a_renamed_moved_service_started_at_once_keeps_the_listener_it_is_handed(
    tmp_path: Path, detached: Any
) -> None:
    """The rename hands the socket on the port it moved to over; the new service starts
    on it (no second conflict, no second listener)."""
    port, *spare = free_ports(3)
    stack_of(tmp_path, port, spare, "inherit")
    stack = tmp_path / "services.yaml"
    with socket.create_server(("127.0.0.1", port)):
        assert detached(tmp_path).returncode == 0
        assert services(tmp_path)["api"]["port"] == spare[0]
        stack.write_text(
            stack.read_text()
            .replace("  api:\n", "  web:\n")
            .replace("    start: on_demand\n", "")
            .replace("depends_on: [api]", "depends_on: [web]")
            .replace("API_PORT", "WEB_PORT")
        )
        wait_for(lambda: services(tmp_path).get("web", {}).get("state") == "running", timeout=15)
        assert services(tmp_path)["web"]["port"] == spare[0]
        assert ask(spare[0]) == services(tmp_path)["web"]["pid"]
        conflicts = json.loads(cli("history", "--json", cwd=tmp_path).stdout)
        assert [c["service"] for c in conflicts] == ["api"], conflicts
        held = allocations(tmp_path)
        assert held["web"] == spare[0] and "api" not in held, held


def test_a_proxied_service_whose_port_cannot_be_had_does_not_start_nor_its_dependents(
    tmp_path: Path, detached: Any
) -> None:
    """Added by `up --profile` to a running stack, with its port held and nowhere to go:
    it fails, without a process, and its dependent is never started against the holder."""
    held, dep_port = free_ports(2)
    (tmp_path / "either.py").write_text(EITHER)
    write_stack(
        tmp_path,
        f"""
        services:
          base: {{command: "python3 -c 'import time; time.sleep(300)'"}}
          px: {{command: python3 either.py, port: {held}, socket: proxy, profiles: [p]}}
          dep: {{command: python3 either.py, port: {dep_port}, depends_on: [px], profiles: [p]}}
        """,
    )
    with socket.create_server(("127.0.0.1", held)):
        assert detached(tmp_path).returncode == 0
        cli("up", "-d", "--wait", "--profile", "p", cwd=tmp_path)
        wait_for(lambda: services(tmp_path)["dep"]["state"] == "failed", timeout=15)
        now = services(tmp_path)
        assert now["px"]["state"] == "failed" and f"port {held}" in now["px"]["reason"], now["px"]
        started = [
            e for e in state_events(tmp_path) if e["service"] in ("px", "dep") and e.get("new") == "starting"
        ]
        assert started == [], started
        assert "px.internal" not in allocations(tmp_path)


def test_up_brings_back_an_on_demand_service_that_failed_on_its_port(tmp_path: Path, detached: Any) -> None:
    port, taken = free_ports(2)
    stack_of(tmp_path, port, [], "inherit")
    assert detached(tmp_path).returncode == 0
    with socket.create_server(("127.0.0.1", taken)):
        stack_of(tmp_path, taken, [], "inherit")
        wait_for(lambda: services(tmp_path)["api"]["state"] == "failed", timeout=15)
    again = cli("up", "-d", "--wait", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    wait_for(lambda: services(tmp_path)["api"]["state"] in ("idle", "running", "healthy"), timeout=15)
    assert ask(taken) == services(tmp_path)["api"]["pid"]
