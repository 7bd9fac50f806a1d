"""Started on demand, stopped when idle or without heartbeats: real supervisors (`up -d`),
real servers on inherited sockets, real connections. The stop decision (`due`) is pure."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from stackvisor.errors import ApiError
from stackvisor.runtime.activation import Watch, due
from stackvisor.runtime.proxy import Proxy, retry_after
from tests.conftest import alive, cli, client, free_ports, wait_for, write_stack

# Answers each connection with its pid, on the socket it inherits (fd 3).
INHERITING = """
import os, socket, threading
s = socket.socket(fileno=3)
def answer(c):
    c.sendall(str(os.getpid()).encode())
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,)).start()
"""


def ask(port: int) -> int:
    """The pid of whoever answers on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        return int(conn.recv(32))


def on_demand(root: Path, port: int, extra: str = "") -> None:
    (root / "inherit.py").write_text(INHERITING)
    write_stack(
        root,
        f"""
        services:
          api:
            command: python3 inherit.py
            port: {port}
            socket: inherit
            start: on_demand
            {extra}
        """,
    )


def service(root: Path) -> dict[str, Any]:
    return client(root).get("/v1/services/api")


def test_nothing_runs_until_the_first_connection_which_is_served(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    on_demand(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    idle = service(tmp_path)
    assert (idle["state"], idle["pid"]) == ("idle", None)
    assert "waiting for a connection" in idle["reason"]
    pid = ask(port)  # this very connection wakes it, and is answered
    assert alive(pid) and service(tmp_path)["pid"] == pid
    events = json.loads(cli("history", "--all", "--json", cwd=tmp_path).stdout)
    wait_for(
        lambda: any(
            e["kind"] == "activated"
            for e in json.loads(cli("history", "--all", "--json", cwd=tmp_path).stdout)
        )
    )
    assert all(e["kind"] != "idle_stop" for e in events)


def test_a_burst_of_first_connections_is_all_served(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    on_demand(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    with ThreadPoolExecutor(50) as pool:
        pids = list(pool.map(lambda _: ask(port), range(50)))
    assert len(pids) == 50 and len(set(pids)) == 1


def test_idle_stop_returns_it_to_idle_and_the_next_connection_starts_it(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    on_demand(tmp_path, port, "idle_stop: 1s")
    assert detached(tmp_path).returncode == 0
    first = ask(port)
    wait_for(lambda: service(tmp_path)["state"] == "idle", timeout=10)
    assert not alive(first)
    second = ask(port)
    assert second != first and alive(second)
    kinds = [e["kind"] for e in json.loads(cli("history", "--all", "--json", cwd=tmp_path).stdout)]
    assert kinds.count("activated") >= 1 and "idle_stop" in kinds


# Reads each request to its end, then answers it seconds later (a slow upload handler).
SLOW = """
import os, socket, threading, time
s = socket.socket(fileno=3)
def answer(c):
    while c.recv(65536):
        pass
    time.sleep(2.5)
    c.sendall(str(os.getpid()).encode())
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,)).start()
"""


def test_a_request_its_client_half_closed_keeps_the_service_from_an_idle_stop(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    on_demand(tmp_path, port, "idle_stop: 1s")
    (tmp_path / "inherit.py").write_text(SLOW)
    assert detached(tmp_path).returncode == 0
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(b"the whole request")
        conn.shutdown(socket.SHUT_WR)  # the server reads to the end, then answers
        pid = int(conn.recv(32))
    assert alive(pid)
    wait_for(lambda: service(tmp_path)["state"] == "idle", timeout=10)


def test_a_lease_without_heartbeats_stops_the_service(tmp_path: Path, detached: Any) -> None:
    write_stack(
        tmp_path,
        """
        services:
          held: {command: "python3 -c 'import time; time.sleep(300)'", lease: 1s}
          free: {command: "python3 -c 'import time; time.sleep(300)'"}
        """,
    )
    assert detached(tmp_path).returncode == 0
    api = client(tmp_path)
    assert api.get("/v1/services/held")["state"] == "running"

    def lease_left() -> float | None:
        return next(s["lease_left"] for s in api.get("/v1/status")["services"] if s["name"] == "held")

    # Renewed well within its lease, it stays.
    for _ in range(6):
        assert cli("heartbeat", "held", cwd=tmp_path).returncode == 0
        assert api.get("/v1/services/held")["state"] == "running"
        wait_for(lambda: (lease_left() or 0) < 0.8, timeout=5)
    shown = cli("status", cwd=tmp_path).stdout
    assert "lease ends in" in shown, shown
    wait_for(lambda: api.get("/v1/services/held")["state"] == "stopped", timeout=10)
    assert api.get("/v1/services/free")["state"] == "running"
    with pytest.raises(ApiError) as refused:
        api.post("/v1/services/free/heartbeat")
    assert refused.value.status == 409 and "has no lease" in str(refused.value)


def test_down_ends_the_listener_and_leaves_nothing(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    on_demand(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    pid = ask(port)
    assert cli("down", cwd=tmp_path).returncode == 0
    assert not alive(pid)
    with socket.socket() as again:  # nothing listens any more (a closed connection may linger)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_a_dependent_does_not_force_an_on_demand_service_up(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    on_demand(tmp_path, port)
    with (tmp_path / "services.yaml").open("a") as fh:
        fh.write("  web:\n    command: python3 -c 'import time; time.sleep(300)'\n    depends_on: [api]\n")
    assert detached(tmp_path).returncode == 0
    assert client(tmp_path).get("/v1/services/web")["state"] == "running"
    assert service(tmp_path)["state"] == "idle"


def test_when_a_service_must_stop() -> None:
    assert due(Watch(None, 0.0), 5.0, idle_stop=None, lease=None) == ""
    assert due(Watch(1.0, 0.0), 5.0, idle_stop=5.0, lease=None) == ""
    assert due(Watch(1.0, 0.0), 6.0, idle_stop=5.0, lease=None) == "no connection for 5s (idle_stop)"
    assert due(Watch(None, 0.0), 6.0, idle_stop=5.0, lease=None) == ""  # connections are open
    assert due(Watch(None, 2.0), 32.0, idle_stop=None, lease=30.0) == "no heartbeat for 30s (lease)"
    assert due(Watch(None, 2.0), 31.0, idle_stop=None, lease=30.0) == ""


# Binds $PORT itself (it cannot take a socket); answers its pid, or echoes what it gets
# after an "echo" line.
PROXIED = """
import os, socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(128)
def answer(c):
    first = c.recv(5)
    if first == b"echo\\n":
        while data := c.recv(1 << 16):
            c.sendall(data)
    else:
        c.sendall(str(os.getpid()).encode())
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,)).start()
"""


def proxied(root: Path, port: int, extra: str = "") -> None:
    (root / "proxied.py").write_text(PROXIED)
    write_stack(
        root,
        f"""
        services:
          api:
            command: python3 proxied.py
            port: {port}
            socket: proxy
            start: on_demand
            {extra}
          user:
            command: sh -c 'echo "api at $$API_PORT"; sleep 300'
            depends_on: [api]
        """,
    )


def ask_pid(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(b"pid?\n")
        return int(conn.recv(32))


def test_a_proxied_service_starts_at_the_first_connection_which_is_served(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    proxied(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    assert service(tmp_path)["state"] == "idle"
    pid = ask_pid(port)
    assert alive(pid)
    shown = next(s for s in client(tmp_path).get("/v1/status")["services"] if s["name"] == "api")
    assert shown["port"] == port and shown["internal_port"] not in (None, port)
    # The others reach it on the public port.
    wait_for(lambda: f"api at {port}" in cli("logs", "user", cwd=tmp_path).stdout)
    # Bytes flow both ways, whole, in order.
    payload = bytes(range(256)) * 40000  # 10 MB
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        conn.sendall(b"echo\n")
        sender = ThreadPoolExecutor(1).submit(lambda: (conn.sendall(payload), conn.shutdown(socket.SHUT_WR)))
        got = bytearray()
        while data := conn.recv(1 << 20):
            got += data
        sender.result()
    assert bytes(got) == payload


def test_a_burst_through_the_proxy_is_all_served_and_idle_stop_counts_its_connections(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    proxied(tmp_path, port, "idle_stop: 1s")
    assert detached(tmp_path).returncode == 0
    with ThreadPoolExecutor(50) as pool:
        pids = list(pool.map(lambda _: ask_pid(port), range(50)))
    assert len(pids) == 50 and len(set(pids)) == 1
    # An open connection keeps it up past its idle_stop; once closed, it goes idle.
    held = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        time.sleep(2.5)  # what is tested is that nothing happens for longer than idle_stop
        assert service(tmp_path)["state"] == "running"
    finally:
        held.close()
    wait_for(lambda: service(tmp_path)["state"] == "idle", timeout=10)
    assert not alive(pids[0])
    assert ask_pid(port) != pids[0]


@pytest.mark.parametrize("settings", ["{proxy_forwarding: relay}", "{}"])
def test_a_connection_to_a_proxied_service_stopped_for_good_is_closed_not_kept(
    tmp_path: Path, detached: Any, settings: str
) -> None:
    """Stopped by hand, or exited with `restart: "no"`, it starts again only when
    somebody asks: a connection is reset after a moment (a stop on its way to a start
    passes through `stopped`), as a port nobody listens on answers."""
    port, other = free_ports(2)
    (tmp_path / "proxied.py").write_text(PROXIED)
    write_stack(
        tmp_path,
        f"""
        settings: {settings}
        services:
          api: {{command: python3 proxied.py, port: {port}, socket: proxy}}
          once:
            command: python3 -c 'import time; time.sleep(0.3)'
            port: {other}
            socket: proxy
            restart: "no"
        """,
    )
    assert detached(tmp_path).returncode == 0
    pid = ask_pid(port)
    assert cli("stop", "api", cwd=tmp_path).returncode == 0
    assert not alive(pid)
    wait_for(lambda: service_named(tmp_path, "once")["state"] in ("exited", "completed"))
    for public in (port, other):
        with socket.create_connection(("127.0.0.1", public), timeout=15) as conn:
            began = time.monotonic()
            conn.settimeout(15)
            with pytest.raises(ConnectionResetError):  # as a port nobody listens on answers
                conn.recv(32)
            assert time.monotonic() - began < 5
    assert cli("start", "api", cwd=tmp_path).returncode == 0
    assert ask_pid(port) != pid


def service_named(root: Path, name: str) -> dict[str, Any]:
    return client(root).get(f"/v1/services/{name}")


def reload_in_an_on_demand_api(root: Path, detached: Any) -> tuple[Path, int]:
    """A stack of one service, then `api` (on demand) added by an edit of the file."""
    (port,) = free_ports(1)
    (root / "inherit.py").write_text(INHERITING)
    stack = write_stack(
        root, "services:\n  other: {command: \"python3 -c 'import time; time.sleep(300)'\"}\n"
    )
    assert detached(root).returncode == 0
    stack.write_text(
        stack.read_text()
        + f"  api:\n    command: python3 inherit.py\n    port: {port}\n"
        + "    socket: inherit\n    start: on_demand\n"
    )
    wait_for(lambda: "api" in {s["name"] for s in client(root).get("/v1/status")["services"]}, timeout=15)
    return stack, port


def test_an_on_demand_service_added_by_a_reload_waits_idle(tmp_path: Path, detached: Any) -> None:
    stack, port = reload_in_an_on_demand_api(tmp_path, detached)
    wait_for(lambda: service(tmp_path)["state"] == "idle", timeout=10)
    assert service(tmp_path)["pid"] is None
    pid = ask(port)
    assert alive(pid) and service(tmp_path)["pid"] == pid
    # Removed again: its listener goes with it.
    stack.write_text("services:\n  other: {command: \"python3 -c 'import time; time.sleep(300)'\"}\n")
    wait_for(
        lambda: "api" not in {s["name"] for s in client(tmp_path).get("/v1/status")["services"]}, timeout=15
    )
    wait_for(lambda: not alive(pid), timeout=10)
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_a_reload_that_makes_a_service_on_demand_leaves_it_idle_and_back(
    tmp_path: Path, detached: Any
) -> None:
    """`start: on_demand` added to a running service: it stops and waits idle for a
    connection, which starts it; taken away again, the service starts at once."""
    (port,) = free_ports(1)
    (tmp_path / "inherit.py").write_text(INHERITING)
    always = f"services:\n  api:\n    command: python3 inherit.py\n    port: {port}\n    socket: inherit\n"
    stack = write_stack(tmp_path, always)
    assert detached(tmp_path).returncode == 0
    first = ask(port)
    stack.write_text(always + "    start: on_demand\n")
    wait_for(lambda: service(tmp_path)["state"] == "idle", timeout=15)
    assert not alive(first) and service(tmp_path)["pid"] is None
    woken = ask(port)
    assert woken != first and service(tmp_path)["pid"] == woken
    stack.write_text(always)
    wait_for(
        lambda: service(tmp_path)["state"] == "running" and service(tmp_path)["pid"] != woken, timeout=15
    )
    again = service(tmp_path)["pid"]
    assert ask(port) == again and not alive(woken)


def test_down_ends_a_stack_whose_on_demand_service_came_by_a_reload(tmp_path: Path, detached: Any) -> None:
    _, port = reload_in_an_on_demand_api(tmp_path, detached)
    woken = ask(port)
    began = time.monotonic()
    done = cli("down", "--timeout", "20s", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 10  # its watcher ends with the stack, as the others do
    assert not alive(woken)


def test_the_proxy_polls_a_starting_service_at_a_tenth_of_the_wait() -> None:
    assert retry_after(0) == 0.001  # a fast start is not waited for in 5 ms steps
    assert retry_after(0.05) == pytest.approx(0.005)
    assert retry_after(0.2) == pytest.approx(0.02)
    assert retry_after(30) == 0.02  # a slow one is not hammered either
    waited, attempts = 0.0, 0
    while waited < 30:
        waited += retry_after(waited)
        attempts += 1
    assert attempts < 1600


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_reload_that_moves_or_removes_a_proxied_service_leaves_nothing_on_its_old_port(
    tmp_path: Path, detached: Any
) -> None:
    """Started at `up` (not by a reload): its watcher goes when an edit moves or removes it."""
    old, new = free_ports(2)
    proxied(tmp_path, old)
    assert detached(tmp_path).returncode == 0
    first = ask_pid(old)
    stack = tmp_path / "services.yaml"
    stack.write_text(stack.read_text().replace(f"port: {old}", f"port: {new}"))
    wait_for(lambda: service(tmp_path)["port"] == new, timeout=15)
    wait_for(lambda: refused(old))
    assert ask_pid(new) != first
    stack.write_text("services:\n  other: {command: \"python3 -c 'import time; time.sleep(300)'\"}\n")
    wait_for(lambda: refused(new), timeout=15)
    assert refused(old)


async def test_a_relayed_connection_follows_the_service_to_its_next_port() -> None:
    """A connection that came as the service died (its listener gone, the exit not yet
    known) waits for the next start, on its new internal port, not for the old one."""
    dead, served = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    where = {"port": dead.getsockname()[1]}
    dead.close()  # nothing listens there any more
    ready = asyncio.Event()
    asked = []

    async def up() -> int:
        asked.append(where["port"])
        if len(asked) > 1:  # the first time: the port it had when the connection came
            await ready.wait()
        return where["port"]

    proxy = Proxy(socket.create_server(("127.0.0.1", 0)), up=up, serves=lambda port: port == where["port"])
    proxy.start()
    loop = asyncio.get_running_loop()
    try:
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, proxy.sock.getsockname())
        await asyncio.sleep(0.05)  # it tries the old port meanwhile
        where["port"] = served.getsockname()[1]  # restarted there
        ready.set()
        served.setblocking(False)
        conn, _ = await asyncio.wait_for(loop.sock_accept(served), 5)
        await loop.sock_sendall(conn, b"new")
        assert await asyncio.wait_for(loop.sock_recv(client, 3), 5) == b"new"
        assert len(asked) == 2
        conn.close()
        client.close()
    finally:
        proxy.close()
        served.close()
