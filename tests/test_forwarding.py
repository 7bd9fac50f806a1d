"""`socket: proxy` carried by the kernel while the service serves: real nftables tables in
this machine's kernel, real supervisors and servers. Which way a connection came is told
by the server itself: by the kernel's redirect it sees the client's own port as its
peer, through the relay the supervisor's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from stackvisor.runtime.forwarding import Forwarding, listens, poll_after
from stackvisor.system import nftables
from tests.conftest import alive, client, free_ports, save, wait_for, write_stack


def _kernel_redirects() -> str:
    """Why this machine's kernel will not redirect for us ("" when it will)."""
    table = nftables.Redirects(f"stackvisor-probe-{os.getpid()}")
    try:
        table.apply({})
    except nftables.Unavailable as exc:
        return str(exc)
    finally:
        table.close()
    return ""


NOBODY_PYTHON = "/usr/bin/python3"  # one that user nobody can run
needs_nftables = pytest.mark.skipif(bool(_kernel_redirects()), reason=_kernel_redirects() or "available")


class Server:
    """Listens on a port of its own and answers each connection with its port and the
    peer's port, for as long as the test runs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"{self.port} {peer[1]}".encode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def answer(port: int) -> tuple[int, int, int]:
    """(who answered, the peer it saw, our own port) for a connection to `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        ours = conn.getsockname()[1]
        who, peer = conn.recv(64).split()
    return int(who), int(peer), ours


# --- the kernel's table ----------------------------------------------------------------


@needs_nftables
def test_a_redirect_sends_new_connections_to_the_other_port_until_it_is_taken_back(server: Server) -> None:
    public = socket.create_server(("127.0.0.1", 0))  # ours, as the proxy's listener is
    port = public.getsockname()[1]
    table = nftables.Redirects(f"stackvisor-test-{os.getpid()}")
    try:
        table.apply({port: server.port})
        who, peer, ours = answer(port)
        assert (who, peer) == (server.port, ours)  # the server itself, the client's own socket
        table.apply({})
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            conn, _ = public.accept()  # back at our listener
            conn.close()
    finally:
        table.close()
        public.close()


@needs_nftables
def test_the_table_goes_with_the_process_that_made_it_even_killed(tmp_path: Path, server: Server) -> None:
    (port,) = free_ports(1)
    holder = tmp_path / "holder.py"
    holder.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
            from stackvisor.system import nftables
            table = nftables.Redirects("stackvisor-killed-{os.getpid()}")
            table.apply({{{port}: {server.port}}})
            print("on", flush=True)
            time.sleep(300)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "on\n"
        assert answer(port)[0] == server.port
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        def refused() -> bool:  # nobody listens on the public port: no redirect is left
            try:
                answer(port)
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused)
    finally:
        proc.kill()
        proc.wait()


@needs_nftables
def test_a_table_of_the_same_name_is_never_taken_over(server: Server) -> None:
    name = f"stackvisor-planted-{os.getpid()}"
    planted, ours = nftables.Redirects(name), nftables.Redirects(name)
    (port,) = free_ports(1)
    try:
        planted.apply({port: server.port})
        with pytest.raises(nftables.Unavailable, match="already there"):
            ours.apply({})
        assert answer(port)[0] == server.port  # the planted rule is untouched
    finally:
        planted.close()
        ours.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_another_user_is_told_the_kernel_refused(open_tmp: Path) -> None:
    shutil.copy(nftables.__file__, open_tmp / "nft.py")  # it needs nothing but the standard library
    (open_tmp / "nft.py").chmod(0o644)
    probe = "import nft\ntry: nft.Redirects().apply({1: 2})\nexcept nft.Unavailable as e: print(e)"
    done = subprocess.run(["runuser", "-u", "nobody", "--", NOBODY_PYTHON, "-c", probe],
                          cwd=open_tmp, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.stdout == "the kernel refused nftables changes (it takes CAP_NET_ADMIN)\n", done.stderr


class Log:
    def __init__(self) -> None:
        self.said: list[str] = []

    def info(self, message: str, **fields: Any) -> None:
        self.said.append(f"{message}: {fields['reason']}")


@needs_nftables
def test_where_the_kernel_refuses_the_relay_carries_everything_said_once(server: Server) -> None:
    planted = nftables.Redirects(f"stackvisor-{os.getpid()}")  # the name ours would take
    (port,) = free_ports(1)
    try:
        planted.apply({})
        log = Log()
        forwarding = Forwarding(lambda: True, log)
        assert not forwarding.forward(port, server.port) and forwarding.via(port) == "relay"
        assert not forwarding.forward(port + 1, server.port)
        assert log.said == [
            f"proxied connections are relayed by the supervisor: an nftables table named"
            f" stackvisor-{os.getpid()} is already there"
        ]
    finally:
        planted.close()


@needs_nftables
def test_the_table_is_there_while_a_rule_is(server: Server) -> None:
    forwarding = Forwarding(lambda: True, Log())
    (first, second) = free_ports(2)
    try:
        assert forwarding.forward(first, server.port) and forwarding.forward(second, server.port)
        assert answer(first)[0] == answer(second)[0] == server.port
        forwarding.stop(first)
        assert forwarding.via(first) == "relay" and forwarding.via(second) == "kernel"
        with pytest.raises(ConnectionRefusedError):
            answer(first)
        assert answer(second)[0] == server.port
        forwarding.stop(second)
        # The last rule took the table along: the name is free again.
        again = nftables.Redirects(f"stackvisor-{os.getpid()}")
        again.apply({})
        again.close()
    finally:
        forwarding.stop(first)
        forwarding.stop(second)


def test_the_messages_frame_a_batch_the_kernel_answers_per_message() -> None:
    data, seqs = nftables.batch(100, "t", {8080: 8081, 8000: 8001}, create=True)
    # begin, table, chain, flush, two rules, end: each with its own number
    assert seqs == [101, 102, 103, 104, 105]
    assert nftables.batch(100, "t", {}, create=False)[1] == [101]  # the flush alone
    sizes, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], sys.byteorder)
        sizes.append(size)
        offset += size
    assert offset == len(data) and len(sizes) == 7
    assert data.count((8080).to_bytes(2, "big")) == 1 and data.count((8081).to_bytes(2, "big")) == 1
    error = (36).to_bytes(4, sys.byteorder) + (2).to_bytes(2, sys.byteorder) + b"\0\0"
    ack = error + (7).to_bytes(4, sys.byteorder) + b"\0" * 4 + (0).to_bytes(4, sys.byteorder, signed=True)
    refused = (
        error + (8).to_bytes(4, sys.byteorder) + b"\0" * 4 + (-1).to_bytes(4, sys.byteorder, signed=True)
    )
    assert list(nftables.replies(ack + b"\0" * 16 + refused + b"\0" * 16)) == [(7, 0), (8, 1)]


def test_a_listener_is_looked_for_often_at_first_then_less() -> None:
    assert poll_after(0.0) == 0.001 and poll_after(0.1) == 0.01 and poll_after(60) == 0.5


def test_only_a_socket_that_127_0_0_1_reaches_counts_as_listening() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        assert listens(sock.getsockname()[1])
    (port,) = free_ports(1)
    assert not listens(port)


# --- a stack ---------------------------------------------------------------------------

# Binds $PORT itself; answers each connection with its pid and the peer port it sees.
PEERS = """
import os, signal, socket, threading
if os.environ.get("DEAF"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(128)
def answer(c):
    c.sendall(f"{os.getpid()} {c.getpeername()[1]}".encode())
    c.recv(1)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,)).start()
"""


def peers_stack(root: Path, port: int, extra: str = "", settings: str = "") -> None:
    (root / "peers.py").write_text(PEERS)
    write_stack(
        root,
        f"""
        {settings}
        services:
          api:
            command: python3 peers.py
            port: {port}
            socket: proxy
            start: on_demand
            stop_timeout: 3s
            {extra}
        """,
    )


def status(root: Path) -> dict[str, Any]:
    return client(root).get("/v1/services/api")


@needs_nftables
def test_a_serving_proxied_service_is_reached_by_the_kernel_and_the_relay_takes_over_at_a_stop(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port, "environment: {DEAF: '1'}")
    assert detached(tmp_path).returncode == 0
    assert status(tmp_path)["forwarding"] == "relay"  # idle: the listener holds the port
    first, peer, ours = answer(port)
    assert peer != ours  # the waking connection is relayed
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    pid, peer, ours = answer(port)
    assert (pid, peer) == (first, ours)
    # It ignores SIGTERM: stopping lasts its stop_timeout. A connection made meanwhile
    # is not sent to the process that is going; it waits and the next start serves it.
    stopping = ThreadPoolExecutor(1).submit(client(tmp_path).post, "/v1/services/api/stop")
    wait_for(lambda: status(tmp_path)["state"] == "stopping")
    assert status(tmp_path)["forwarding"] == "relay"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        stopping.result(timeout=15)
        assert not alive(first)
        conn.sendall(b"go")  # the service is idle now and this connection starts it
        second, peer = (int(n) for n in conn.recv(64).split())
        assert second != first and peer != conn.getsockname()[1]


@needs_nftables
def test_a_connection_by_the_kernel_keeps_the_service_from_an_idle_stop(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port, "idle_stop: 1s")
    assert detached(tmp_path).returncode == 0
    pid = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert held.recv(64).split()[1] == str(held.getsockname()[1]).encode()  # the kernel's way
        # What is tested is that nothing happens for longer than idle_stop.
        threading.Event().wait(2.5)
        assert status(tmp_path)["state"] == "running"
    finally:
        held.close()
    wait_for(lambda: status(tmp_path)["state"] == "idle", timeout=10)
    assert not alive(pid)
    assert status(tmp_path)["forwarding"] == "relay"


def test_relay_forwarding_copies_every_connection(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port, settings="settings: {proxy_forwarding: relay}")
    assert detached(tmp_path).returncode == 0
    answer(port)
    for _ in range(3):
        _, peer, ours = answer(port)
        assert peer != ours
    assert status(tmp_path)["forwarding"] == "relay"


@needs_nftables
def test_proxy_forwarding_set_by_a_reload_applies_at_once(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    pid = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    stack = tmp_path / "services.yaml"
    save(stack, "settings: {proxy_forwarding: relay}\n" + stack.read_text())
    wait_for(lambda: status(tmp_path)["forwarding"] == "relay")
    who, peer, ours = answer(port)
    assert who == pid and peer != ours  # the same process, relayed
    save(stack, stack.read_text().replace("relay", "auto"))
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    who, peer, ours = answer(port)
    assert (who, peer) == (pid, ours)
