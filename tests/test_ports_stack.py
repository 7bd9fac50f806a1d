"""Port conflicts as a stack meets them: migration reaching dependents, pre-flight, history."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    alive,
    async_wait_for,
    children_rows,
    cli,
    exit_status,
    free_ports,
    running_stack,
    state_events,
    until_state,
    write_stack,
)

from stackvisor.config.schema import Strategy
from stackvisor.ports import is_free

pytestmark = pytest.mark.timeout(60)


def outsider(spawn, port: int):
    """A process of somebody else's holding `port`, in our own process group."""
    return spawn("127.0.0.1", port, own_group=False)


async def test_conservative_migrates_and_the_dependent_sees_the_new_port(tmp_path: Path, spawn) -> None:
    wanted, alternative, web_port = free_ports(3)
    outside = outsider(spawn, wanted)
    seen = tmp_path / "seen"
    path = write_stack(
        tmp_path,
        f"""
        settings: {{strategy: conservative}}
        services:
          api:
            command: python3 server.py
            port: {wanted}
            alternative_ports: [{alternative}]
            healthcheck: {{tcp: "${{PORT}}"}}
          web:
            command: sh -c 'echo "$API_PORT" > {seen}; exec python3 server.py'
            port: {web_port}
            depends_on: {{api: {{condition: service_healthy}}}}
            healthcheck: {{tcp: "${{PORT}}"}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "healthy")
        assert sup.runners["api"].port == alternative
        assert seen.read_text().strip() == str(alternative)
        assert alive(outside.pid)
        conflict = next(e for e in sup.bus.backlog if e.kind == "port_conflict")
        assert conflict.service == "api"
        assert (conflict.data["action"], conflict.data["new_port"]) == ("migrate", alternative)
        assert conflict.data["holder_pid"] == outside.pid
    recorded = [e for e in state_events(tmp_path) if e["kind"] == "port_conflict"]
    assert recorded and recorded[0]["outcome"] == "ok"


async def test_aggressive_ends_the_holder_and_takes_the_port(tmp_path: Path, spawn) -> None:
    (wanted,) = free_ports(1)
    outside = outsider(spawn, wanted)
    path = write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: python3 server.py
            port: {wanted}
            healthcheck: {{tcp: "${{PORT}}"}}
        """,
    )
    async with running_stack(path, strategy=Strategy.AGGRESSIVE) as sup:
        await until_state(sup, "api", "healthy")
        assert sup.runners["api"].port == wanted
        await exit_status(outside.proc)
        conflict = next(e for e in sup.bus.backlog if e.kind == "port_conflict")
        assert (conflict.data["action"], conflict.data["outcome"]) == ("terminate", "ok")


async def test_services_migrating_at_once_get_different_ports(tmp_path: Path, spawn) -> None:
    web_port, admin_port, first, second = free_ports(4)
    holders = [outsider(spawn, web_port), outsider(spawn, admin_port)]
    path = write_stack(
        tmp_path,
        f"""
        settings: {{strategy: conservative}}
        services:
          web:
            command: python3 server.py
            port: {web_port}
            alternative_ports: [{first}, {second}]
            healthcheck: {{tcp: "${{PORT}}"}}
          admin:
            command: python3 server.py
            port: {admin_port}
            alternative_ports: [{first}, {second}]
            healthcheck: {{tcp: "${{PORT}}"}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "healthy")
        await until_state(sup, "admin", "healthy")
        assert {sup.runners["web"].port, sup.runners["admin"].port} == {first, second}
        assert all(alive(h.pid) for h in holders)


def test_conservative_without_alternative_exits_1_before_starting_anything(tmp_path: Path, spawn) -> None:
    (wanted,) = free_ports(1)
    outside = outsider(spawn, wanted)
    write_stack(
        tmp_path,
        f"""
        settings: {{strategy: conservative}}
        services:
          api: {{command: python3 server.py, port: {wanted}}}
          other: {{command: "python3 -c 'import time; time.sleep(60)'"}}
        """,
    )
    for args in (["up"], ["up", "-d", "--wait"]):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        message = result.stderr
        assert f"port {wanted} is held by pid {outside.pid}" in message
        assert "python" in message and "user root" in message
        assert "alternative_ports" in message and "--strategy aggressive" in message
    assert children_rows(tmp_path) == []
    assert alive(outside.pid)


def test_ports_command_and_history(tmp_path: Path, spawn, detached) -> None:
    wanted, alternative = free_ports(2)
    outside = outsider(spawn, wanted)
    write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: python3 server.py
            port: {wanted}
            alternative_ports: [{alternative}]
            healthcheck: {{tcp: "${{PORT}}"}}
        """,
    )
    plan = cli("ports", "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    (api,) = json.loads(plan.stdout)
    assert (api["action"], api["level"], api["port"]) == ("migrate", "high", alternative)
    assert api["holders"][0]["pid"] == outside.pid
    table = cli("ports", "--strategy", "aggressive", cwd=tmp_path).stdout
    assert "terminate" in table and str(outside.pid) in table
    dry = cli("up", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and "migrate" in dry.stdout
    assert children_rows(tmp_path) == []
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    assert cli("down", cwd=tmp_path).returncode == 0
    history = cli("history", cwd=tmp_path)
    assert "migrate" in history.stdout and f"{wanted} -> {alternative}" in history.stdout
    rows = json.loads(cli("history", "--json", cwd=tmp_path).stdout)
    assert rows[0]["data"]["holder_pid"] == outside.pid
    assert alive(outside.pid)


async def test_a_listener_that_was_there_first_does_not_make_the_service_healthy(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    (tmp_path / "patient.py").write_text(
        "import os, socket, time\n"
        "while True:\n"
        "    try:\n"
        "        s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); break\n"
        "    except OSError:\n"
        "        s.close(); time.sleep(0.1)\n"
        "time.sleep(300)\n"
    )
    path = write_stack(
        tmp_path,
        f"""
        services:
          patient:
            command: python3 patient.py
            port: {port}
            healthcheck: {{tcp: "${{PORT}}", interval: 200ms}}
        """,
    )
    thief = socket.socket()
    try:
        async with running_stack(path) as sup:
            await until_state(sup, "patient", "starting")
            # Taken after the check, by a process older than the service (this test).
            thief.bind(("127.0.0.1", port))
            thief.listen()
            event = await async_wait_for(
                lambda: next((e for e in sup.bus.backlog if e.kind == "port_mismatch"), None)
            )
            assert f"port {port} is answered by pid" in event.data["message"]
            assert str(sup.runners["patient"].state) == "starting"
    finally:
        thief.close()


async def test_a_server_that_daemonised_is_still_the_service(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    path = write_stack(
        tmp_path,
        f"""
        services:
          daemon:
            command: >-
              python3 -c "import subprocess, sys, time;
              subprocess.Popen([sys.executable, 'server.py'], start_new_session=True); time.sleep(60)"
            port: {port}
            healthcheck: {{tcp: "${{PORT}}", interval: 200ms}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "daemon", "healthy")
        assert not [e for e in sup.bus.backlog if e.kind == "port_mismatch"]


async def test_a_port_taken_before_the_child_binds_is_resolved_once_more(tmp_path: Path) -> None:
    wanted, alternative = free_ports(2)
    go = tmp_path / "go"
    path = write_stack(
        tmp_path,
        f"""
        services:
          slow:
            command: sh -c 'while [ ! -e {go} ]; do sleep 0.02; done; exec python3 server.py'
            port: {wanted}
            alternative_ports: [{alternative}]
            healthcheck: {{tcp: "${{PORT}}"}}
        """,
    )
    thief = socket.socket()
    try:
        async with running_stack(path) as sup:
            await until_state(sup, "slow", "starting")
            thief.bind(("127.0.0.1", wanted))
            thief.listen()
            go.touch()
            await until_state(sup, "slow", "healthy")
            assert sup.runners["slow"].port == alternative
            assert sup.runners["slow"].status()["restarts"] == 0
            reasons = [e.data["reason"] for e in sup.bus.backlog if e.kind == "state"]
            assert any("resolving again" in r for r in reasons)
    finally:
        thief.close()


INHERITING = """
import os, socket
assert os.environ["LISTEN_PID"] == str(os.getpid()) and os.environ["LISTEN_FDS"] == "1"
s = socket.socket(fileno=3)
print("serving on the inherited socket", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(str(os.getpid()).encode())
    c.close()
"""


async def test_socket_inherit_hands_over_the_port_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    (tmp_path / "inherit.py").write_text(INHERITING)
    path = write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: python3 inherit.py
            port: {port}
            socket: inherit
            healthcheck: {{tcp: "${{PORT}}"}}
        """,
    )

    def answer() -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            return int(conn.recv(32))

    async with running_stack(path) as sup:
        await until_state(sup, "api", "healthy")
        first = sup.runners["api"].status()["pid"]
        assert await asyncio.to_thread(answer) == first
        await sup.restart_services(["api"])
        # Between the two processes nobody could take the port: the supervisor held it.
        thief = socket.socket()
        with pytest.raises(OSError):
            thief.bind(("127.0.0.1", port))
        thief.close()
        await until_state(sup, "api", "healthy")
        second = sup.runners["api"].status()["pid"]
        assert second != first
        assert await asyncio.to_thread(answer) == second
        assert not [e for e in sup.bus.backlog if e.kind == "port_conflict"]
    assert is_free(port)  # the stack is down: nobody listens there any more


# Answers with its VERSION and pid, on the socket it inherits or on $PORT. Told to stop,
# it stops accepting and leaves only when the test says so (a file `go`), so that a
# connection can arrive in between.
LETS_GO_LATE = """
import os, pathlib, signal, socket, time
if os.environ.get("LISTEN_FDS") == "1":
    s = socket.socket(fileno=3)
else:  # behind the proxy
    s = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
def leave(*_):
    pathlib.Path("stopping").touch()
    while not pathlib.Path("go").exists():
        time.sleep(0.01)
    os._exit(0)
signal.signal(signal.SIGTERM, leave)
while True:
    c, _ = s.accept()
    c.sendall(f"{os.environ['VERSION']} {os.getpid()}".encode())
    c.close()
"""


def late_leaver(root: Path, port: int, mode: str, start: str, version: int) -> str:
    """A stack of one `LETS_GO_LATE` service (reloaded by the test, not the watcher)."""
    (root / "inherit.py").write_text(LETS_GO_LATE)
    return (
        "settings: {reload: false}\n"
        f"services:\n  api:\n    command: python3 inherit.py\n    port: {port}\n    socket: {mode}\n"
        f"    start: {start}\n    stop_grace_period: 30s\n    environment: {{VERSION: '{version}'}}\n"
    )


async def served_across(root: Path, port: int, action: Awaitable[Any]) -> tuple[str, str]:
    """(version, pid) that answer a connection made while `action` stops the service:
    connected once the process was told to stop, before it lets go."""
    task = asyncio.ensure_future(action)
    try:
        await async_wait_for((root / "stopping").exists, timeout=15)
        conn = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", port), 15)
    finally:
        (root / "go").touch()
    with conn:
        await task
        version, pid = (await asyncio.to_thread(conn.recv, 64)).decode().split()
    return version, pid


def ask_version(port: int) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        version, pid = conn.recv(64).decode().split()
    return version, pid


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
async def test_a_connection_while_an_on_demand_service_stops_is_served_by_the_next_start(
    tmp_path: Path, mode: str
) -> None:
    (port,) = free_ports(1)
    path = write_stack(tmp_path, late_leaver(tmp_path, port, mode, "on_demand", 1))
    async with running_stack(path) as sup:
        await until_state(sup, "api", "idle")
        _, first = await asyncio.to_thread(ask_version, port)
        _, second = await served_across(tmp_path, port, sup.stop_service("api"))
        assert second != first and str(sup.runners["api"].status()["pid"]) == second
    assert is_free(port)


@pytest.mark.parametrize("mode", ["inherit", "proxy"])
@pytest.mark.parametrize("start", ["always", "on_demand"])
async def test_a_reload_that_keeps_the_port_keeps_the_socket(tmp_path: Path, start: str, mode: str) -> None:
    """An edit of a service whose port the supervisor holds (`socket: inherit` or
    `proxy`) and which keeps that port restarts it as a restart does: a connection that
    arrives while the old process stops waits (in the socket's backlog, or held by the
    proxy) and is served by the new process, not reset."""
    (port,) = free_ports(1)
    path = write_stack(tmp_path, late_leaver(tmp_path, port, mode, start, 1))
    async with running_stack(path) as sup:
        await until_state(sup, "api", "running", "idle")
        version, first = await asyncio.to_thread(ask_version, port)
        assert version == "1"
        path.write_text(late_leaver(tmp_path, port, mode, start, 2))
        reloading = asyncio.ensure_future(sup.reload())
        version, second = await served_across(tmp_path, port, reloading)
        assert reloading.result()["restarted"] == ["api"]
        assert (version, second != first) == ("2", True)
    assert is_free(port)
