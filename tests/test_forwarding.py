"""`socket: proxy` carried by the kernel while the service serves: real nftables tables in
this machine's kernel, real supervisors and servers. Which way a connection came is told
by the server itself: by the kernel's redirect it sees the client's own port as its
peer, through the relay the supervisor's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from stackvisor.ports import tables
from stackvisor.ports.closes import ListenerCloses, closed_ports
from stackvisor.ports.closes import program as closes_program
from stackvisor.runtime.forwarding import Forwarding, listens, poll_after
from stackvisor.system import conntrack, nftables
from tests.conftest import alive, cli, client, free_ports, save, supervisor_pid, wait_for, write_stack


def _kernel_redirects() -> str:
    """Why this machine's kernel will not redirect for us ("" when it will)."""
    table = nftables.Redirects()
    try:
        table.set(1, 2)
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


class Log:
    def __init__(self) -> None:
        self.said: list[str] = []

    def info(self, message: str, **fields: Any) -> None:
        self.said.append(f"{message}: {fields['reason']}")


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
        table.set(port, server.port)
        who, peer, ours = answer(port)
        assert (who, peer) == (server.port, ours)  # the server itself, the client's own socket
        table.unset(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            conn, _ = public.accept()  # back at our listener
            conn.close()
    finally:
        table.close()
        public.close()


@needs_nftables
def test_a_connection_open_before_the_table_is_made_keeps_its_way(server: Server) -> None:
    """Made while the kernel tracked nothing (a reload that turns the kernel's way on
    finds relayed connections open), it is picked up half-way once the table is made:
    as new to the kernel, but not a new connection, so it is not redirected."""
    relay = socket.create_server(("127.0.0.1", 0))  # ours, as the proxy's listener is
    port = relay.getsockname()[1]
    table = nftables.Redirects(f"stackvisor-test-{os.getpid()}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            held, _ = relay.accept()
            with held:
                table.set(port, server.port)
                conn.sendall(b"still the relay's")
                held.settimeout(5)
                assert held.recv(64) == b"still the relay's"
                held.sendall(b"and back")
                assert conn.recv(64) == b"and back"
    finally:
        table.close()
        relay.close()


class Resetting:
    """Answers a connection with its port, then resets it (SO_LINGER 0), as servers do
    that close with input unread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def answer(self) -> None:
        conn, _ = self.sock.accept()
        conn.sendall(str(self.port).encode())
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


@needs_nftables
def test_a_client_port_used_again_reaches_the_new_instance_once_the_old_ones_entries_go(
    server: Server,
) -> None:
    """An entry left by a connection its server reset keeps that connection's redirect:
    a SYN from the same client port finds it and goes to the old internal port, refused
    there (or served by whoever listens there now): without `forget` below, this
    machine's kernel refuses it. Deleting the entries of the instance that is gone sends
    it where the rule says."""
    relay = socket.create_server(("127.0.0.1", 0))
    port = relay.getsockname()[1]
    old = Resetting()
    table = nftables.Redirects(f"stackvisor-test-{os.getpid()}")
    first = socket.socket()
    again = socket.socket()
    try:
        table.set(port, old.port)
        first.bind(("127.0.0.1", 0))
        ours = first.getsockname()
        first.connect(("127.0.0.1", port))
        old.answer()
        assert first.recv(64) == str(old.port).encode()
        with contextlib.suppress(ConnectionResetError):
            first.recv(64)
        first.close()
        old.sock.close()  # the old instance is gone; the new one serves on another port
        table.set(port, server.port)
        assert conntrack.forget(port, old.port) == 1
        assert conntrack.forget(port, old.port) == 0
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(ours)
        again.settimeout(5)
        again.connect(("127.0.0.1", port))
        assert again.recv(64).split()[0] == str(server.port).encode()
    finally:
        table.close()
        relay.close()
        old.sock.close()
        first.close()
        again.close()


def _untracked_or_a_second(listener: socket.socket) -> None:
    """Until a new connection to `listener` is not tracked by the kernel, or a second."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        with socket.create_connection(listener.getsockname(), timeout=10) as probe:
            listener.accept()[0].close()
            table = Path("/proc/net/nf_conntrack")
            if not table.exists() or f"sport={probe.getsockname()[1]} " not in table.read_text():
                return


@needs_nftables
def test_a_connection_made_while_no_rule_is_there_keeps_its_way_when_one_comes(server: Server) -> None:
    """The kernel tracks connections only while a rule needs it. When tracking stopped
    with the last redirect, a connection the relay took meanwhile was picked up half-way
    once a rule came back; an entry left by a redirected connection of the same client
    port then made NAT send the relay's bytes from another port, which the client drops:
    it hung with nothing behind it. The client port here is the same both times."""
    relay = socket.create_server(("127.0.0.1", 0))  # ours, as the proxy's listener is
    port = relay.getsockname()[1]
    table = nftables.Redirects(f"stackvisor-test-{os.getpid()}")
    first = socket.socket()
    again = socket.socket()
    try:
        table.set(port, server.port)
        first.bind(("127.0.0.1", 0))
        ours = first.getsockname()
        first.connect(("127.0.0.1", port))  # redirected; the server closes first
        assert first.recv(64).split()[0] == str(server.port).encode()
        assert first.recv(64) == b""
        first.close()
        table.unset(port)
        _untracked_or_a_second(relay)  # the kernel stops tracking 50-130 ms after the last rule
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(ours)
        again.settimeout(5)
        again.connect(("127.0.0.1", port))
        held, _ = relay.accept()  # the relay's, as while a service restarts
        with held:
            table.set(port, server.port)  # the service is back
            held.sendall(b"relayed")
            assert again.recv(64) == b"relayed"
    finally:
        table.close()
        relay.close()
        first.close()
        again.close()


@needs_nftables
def test_the_table_goes_with_the_process_that_made_it_even_killed(tmp_path: Path, server: Server) -> None:
    (port,) = free_ports(1)
    holder = tmp_path / "holder.py"
    holder.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
            from stackvisor.system import conntrack, nftables
            table = nftables.Redirects()
            table.set({port}, {server.port})
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
        planted.set(port, server.port)
        with pytest.raises(nftables.Unavailable, match="already there"):
            ours.set(port, server.port + 1)
        assert answer(port)[0] == server.port  # the planted rule is untouched
    finally:
        planted.close()
        ours.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_another_user_is_told_the_kernel_refused(open_tmp: Path) -> None:
    shutil.copy(nftables.__file__, open_tmp / "nft.py")  # it needs nothing but the standard library
    (open_tmp / "nft.py").chmod(0o644)
    probe = "import nft\ntry: nft.Redirects().set(1, 2)\nexcept nft.Unavailable as e: print(e)"
    done = subprocess.run(["runuser", "-u", "nobody", "--", NOBODY_PYTHON, "-c", probe],
                          cwd=open_tmp, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.stdout == "the kernel refused nftables changes (it takes CAP_NET_ADMIN)\n", done.stderr


# Run as root without CAP_NET_ADMIN (a container's root, say): asks the kernel twice.
WITHOUT_NET_ADMIN = """
import asyncio, socket, sys
sys.path.insert(0, sys.argv[1])
from stackvisor.ports.closes import ListenerCloses, closed_ports
from stackvisor.ports.closes import program as closes_program
from stackvisor.runtime.forwarding import Forwarding
class Log:
    def info(self, message, **fields):
        print("logged:", fields["reason"])
async def main():
    forwarding = Forwarding(lambda: True, Log())
    with socket.create_server(("127.0.0.1", 0)) as server:
        internal = server.getsockname()[1]
        print(forwarding.forward(internal + 1, internal, lambda: None), forwarding.via(internal + 1))
        print(forwarding.forward(internal + 2, internal, lambda: None))
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_where_the_kernel_refuses_the_relay_carries_everything_said_once() -> None:
    drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"]
    repo = str(Path(__file__).parent.parent)
    done = subprocess.run([*drop, sys.executable, "-c", WITHOUT_NET_ADMIN, repo],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("logged: ") and "CAP_NET_ADMIN" in lines[0], lines
    assert lines[1:] == ["False relay", "False"]  # said once; not asked again


@needs_nftables
async def test_the_watch_is_there_while_a_rule_is_and_the_table_until_the_end(server: Server) -> None:
    forwarding = Forwarding(lambda: True, Log())
    (first, second) = free_ports(2)
    try:
        assert forwarding.forward(first, server.port, lambda: None)
        assert forwarding.forward(second, server.port, lambda: None)
        assert answer(first)[0] == answer(second)[0] == server.port
        forwarding.stop(first)
        assert forwarding.via(first) == "relay" and forwarding.via(second) == "kernel"
        with pytest.raises(ConnectionRefusedError):
            answer(first)
        assert answer(second)[0] == server.port
        forwarding.stop(second)
        # No rule, no watch; the table stays until the stack is down.
        assert forwarding._closes is None and forwarding._redirects is not None
        forwarding.close()
        assert forwarding._redirects is None
    finally:
        forwarding.stop(first)
        forwarding.stop(second)


@needs_nftables
async def test_a_redirect_goes_as_its_listener_goes_even_by_a_kill(tmp_path: Path) -> None:
    """A process killed from outside (or a reloader's server started anew): the redirect
    goes with its listener, before anyone is told the process exited."""
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import socket, time; s = socket.create_server(('127.0.0.1', 0));"
        " print(s.getsockname()[1], flush=True); time.sleep(300)",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    forwarding = Forwarding(lambda: True, Log())
    (public,) = free_ports(1)
    lost = asyncio.Event()
    try:
        assert listener.stdout is not None
        internal = int(await listener.stdout.readline())
        assert forwarding.forward(public, internal, lost.set)
        listener.kill()
        await asyncio.wait_for(lost.wait(), 10)
        assert forwarding.via(public) == "relay" and forwarding.rules == {}
        with pytest.raises(ConnectionRefusedError):  # nobody listens on the public port here
            answer(public)
        # One that is not listening by the time the redirect is on is not redirected to.
        assert not forwarding.forward(public, internal, lost.set)
    finally:
        with contextlib.suppress(ProcessLookupError):
            listener.kill()
        await listener.wait()
        forwarding.stop(public)


def test_the_messages_frame_a_batch_the_kernel_answers_per_message() -> None:
    made, seqs = nftables.making(100, "t")
    assert seqs == [101, 102, 103]  # table, chain, tracking rule
    assert made.count(b"ct\0") == 1 and made.count(b"redirects\0") == 2
    data, seqs = nftables.setting(100, "t", 8080, 8081, replacing=7)
    assert seqs == [101, 102]  # the old rule deleted, the new one made; begin and end around them
    assert nftables.setting(100, "t", 8080, 8081)[1] == [101]
    assert nftables.unsetting(100, "t", 7)[1] == [101]
    sizes, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], sys.byteorder)
        sizes.append(size)
        offset += size
    assert offset == len(data) and len(sizes) == 4
    assert data.count((8080).to_bytes(2, "big")) == 1 and data.count((8081).to_bytes(2, "big")) == 1
    assert data.count(b"redirects\0") == 2  # the chain of each rule

    def message(kind: int, seq: int, body: bytes) -> bytes:
        head = (16 + len(body)).to_bytes(4, sys.byteorder) + kind.to_bytes(2, sys.byteorder) + b"\0\0"
        return head + seq.to_bytes(4, sys.byteorder) + b"\0" * 4 + body

    def error(seq: int, code: int) -> bytes:
        return message(2, seq, code.to_bytes(4, sys.byteorder, signed=True) + b"\0" * 16)

    handle = (12).to_bytes(2, sys.byteorder) + (3).to_bytes(2, sys.byteorder) + (77).to_bytes(8, "big")
    echoed = message(10 << 8 | 6, 9, b"\2\0\0\0" + handle)
    answered = error(7, 0) + echoed + error(8, -1)
    assert list(nftables.replies(answered)) == [(7, 0, None), (9, 0, 77), (8, 1, None)]
    assert list(nftables.replies(answered[:-4])) == [(7, 0, None), (9, 0, 77)]  # a cut one is not read


def test_the_tracking_entries_are_read_and_deleted_by_their_tuple_and_id() -> None:
    redirected = conntrack.Entry(6, "127.0.0.1", "127.0.0.1", 40000, 8080, answered_from=41000, id=7)
    relayed = conntrack.Entry(6, "127.0.0.1", "127.0.0.1", 40001, 8080, answered_from=8080, id=8)
    elsewhere = conntrack.Entry(6, "127.0.0.1", "10.0.0.1", 40002, 8080, answered_from=41000, id=9)
    udp = conntrack.Entry(17, "127.0.0.1", "127.0.0.1", 40003, 8080, answered_from=41000, id=10)
    every = [redirected, relayed, elsewhere, udp]
    assert conntrack.stale(every, 8080, 41000) == [redirected]
    assert conntrack.stale(every, 8080, None) == [redirected, relayed]
    assert conntrack.stale(every, 8081, None) == []

    def as_told(entry: conntrack.Entry) -> bytes:
        """The kernel's message for `entry`: the tuples of delete requests, the reply's
        the other way round, from where it was answered."""
        request = conntrack.deleting(5, entry)
        orig = request[20:-8]  # after nlmsghdr and nfgenmsg, before the id
        back = conntrack.Entry(
            6, entry.destination, entry.source, entry.answered_from, entry.source_port, 0, 0
        )
        reply = bytearray(conntrack.deleting(5, back)[20:-8])
        reply[2:4] = (2 | 0x8000).to_bytes(2, sys.byteorder)  # CTA_TUPLE_REPLY
        body = b"\2\0\0\0" + orig + bytes(reply) + request[-8:]
        head = (16 + len(body)).to_bytes(4, sys.byteorder) + (1 << 8).to_bytes(2, sys.byteorder)
        return head + b"\2\0" + b"\0" * 8 + body

    done = (16).to_bytes(4, sys.byteorder) + (3).to_bytes(2, sys.byteorder) + b"\0" * 10
    assert list(conntrack.replies(as_told(redirected) + as_told(relayed) + done)) == [redirected, relayed, 0]
    assert list(conntrack.replies(as_told(redirected)[:-4])) == []  # a cut one is not read


def test_the_listener_filter_lists_the_ports_while_they_fit() -> None:
    assert len(nothing := closes_program(set())) == 13 * 8  # no port: nothing through
    assert len(closes_program({80, 443})) == (13 + 4) * 8
    assert len(closes_program(set(range(1, 3000)))) == 15 * 8  # too many: any bound port
    assert nothing != closes_program(set(range(1, 3000)))


async def test_a_connection_its_server_resets_is_not_its_listener_going() -> None:
    """A server's close with SO_LINGER 0 disconnects the socket first: the kernel tells
    of it with no peer port, as of a listener. Its peer's address is still there."""
    try:
        closes = ListenerCloses()
    except OSError as exc:
        pytest.skip(f"no sock_diag destroy groups here: {exc}")
    server, later = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    try:
        port, other = server.getsockname()[1], later.getsockname()[1]
        closes.watch({port, other})
        with socket.create_connection(server.getsockname()), socket.create_connection(server.getsockname()):
            accepted, _ = server.accept()
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()  # a reset
            later.close()  # told after the reset
            loop = asyncio.get_running_loop()
            told = asyncio.Event()
            loop.add_reader(closes.fileno(), told.set)
            try:
                await asyncio.wait_for(told.wait(), 10)
            finally:
                loop.remove_reader(closes.fileno())
            assert closes.read() == {other}  # not `port`: its listener listens on
            assert server.accept()
    finally:
        server.close()
        later.close()
        closes.close()


async def test_only_the_watched_ports_listeners_are_told_of() -> None:
    try:
        closes = ListenerCloses()
    except OSError as exc:
        pytest.skip(f"no sock_diag destroy groups here: {exc}")
    watched, other = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    port = watched.getsockname()[1]
    try:
        closes.watch({port})
        other.close()
        watched.close()
        loop = asyncio.get_running_loop()
        told = asyncio.Event()
        loop.add_reader(closes.fileno(), told.set)
        try:
            await asyncio.wait_for(told.wait(), 10)
        finally:
            loop.remove_reader(closes.fileno())
        assert closes.read() == {port}
    finally:
        watched.close()
        other.close()
        closes.close()


def test_a_destroyed_socket_without_a_peer_is_a_closed_listener() -> None:
    def message(local: int, peer: int, kind: int = 20, address: bytes = b"") -> bytes:
        ends = local.to_bytes(2, "big") + peer.to_bytes(2, "big") + b"\x7f\0\0\1" + b"\0" * 12
        body = bytes([2, 7, 0, 0]) + ends + address.ljust(16, b"\0") + b"\0" * 32
        return (
            (16 + len(body)).to_bytes(4, sys.byteorder) + kind.to_bytes(2, sys.byteorder) + b"\0" * 10 + body
        )

    data = message(8081, 0) + message(8081, 45000) + message(9000, 0, kind=3) + message(9001, 0)
    # A connection reset by SO_LINGER 0 loses its peer's port, not its peer's address.
    data += message(9002, 0, address=b"\x7f\0\0\1") + message(9003, 0, address=b"\0" * 15 + b"\1")
    assert closed_ports(data) == {8081, 9001}
    assert closed_ports(data[:30]) == set()  # a cut message is not read


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
    c.recv(1)  # the client's end (or a byte): a reset any sooner could beat its connect()
    if os.environ.get("RESET"):  # as a server that ends its connections with a reset
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\1\\0\\0\\0\\0\\0\\0\\0")
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,)).start()
"""


def peers_stack(
    root: Path, port: int, extra: str = "", settings: str = "settings: {proxy_forwarding: kernel}"
) -> None:
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


@needs_nftables
def test_a_client_port_used_again_after_a_restart_reaches_the_new_process(
    tmp_path: Path, detached: Any
) -> None:
    """The old process reset its connections: the kernel's entries of them, left with
    their redirect to its internal port, go with it, and a client that uses the same
    port again reaches the new process, not the old port (refused)."""
    (port,) = free_ports(1)
    peers_stack(tmp_path, port, "environment: {RESET: '1'}")
    assert detached(tmp_path).returncode == 0
    first = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    old = status(tmp_path)["internal_port"]
    with socket.socket() as conn:
        conn.bind(("127.0.0.1", 0))
        ours = conn.getsockname()
        conn.connect(("127.0.0.1", port))
        assert conn.recv(64).split() == [str(first).encode(), str(ours[1]).encode()]  # the kernel's way
    with _bound_again(ours) as again:  # before anybody's connection takes the port
        assert conntrack.stale(conntrack.entries(), port, old)
        assert cli("restart", "api", cwd=tmp_path).returncode == 0
        wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
        wait_for(lambda: not conntrack.stale(conntrack.entries(), port, old), timeout=5)  # theirs: 10 s
        again.connect(("127.0.0.1", port))
        assert int(again.recv(64).split()[0]) not in (first, 0)


def _bound_again(address: tuple[str, int]) -> socket.socket:
    """A socket bound to `address` again, once its last user lets it go (10 s at most)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(10)

    def bound() -> bool:
        try:
            sock.bind(address)
        except OSError:
            return False
        return True

    try:
        wait_for(bound, timeout=10)
    except BaseException:
        sock.close()
        raise
    return sock


@needs_nftables
def test_a_client_port_used_again_after_the_supervisor_was_killed_reaches_the_new_stack(
    tmp_path: Path, detached: Any
) -> None:
    """A SIGKILL takes the table, and with it the kernel's tracking, before the service
    dies: its connections' entries stay as they were, redirected to a port nobody
    serves. The next supervisor deletes them before its public port listens."""
    (port,) = free_ports(1)
    peers_stack(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    service = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    old = status(tmp_path)["internal_port"]
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 0))
        ours = held.getsockname()
        held.connect(("127.0.0.1", port))
        held.recv(64)  # the service holds it open
        os.kill(supervisor_pid(tmp_path), signal.SIGKILL)
        wait_for(lambda: not alive(service))  # PDEATHSIG
        # Its main thread is a zombie before the one holding the connection has ended:
        # closed any sooner, ours would close first and wait (TIME_WAIT, 60 s) on the port.
        wait_for(lambda: not tables.listeners([old])[1].get(old))
    finally:
        held.close()
    with _bound_again(ours) as again:  # before anybody's connection takes the port
        assert conntrack.stale(conntrack.entries(), port, old)
        assert detached(tmp_path).returncode == 0
        assert not conntrack.stale(conntrack.entries(), port, None)
        again.connect(("127.0.0.1", port))
        assert again.recv(64)


def test_the_relay_copies_every_connection_when_told_to(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port, settings="settings: {proxy_forwarding: relay}")
    assert detached(tmp_path).returncode == 0
    answer(port)
    for _ in range(3):
        _, peer, ours = answer(port)
        assert peer != ours
    assert status(tmp_path)["forwarding"] == "relay"


@needs_nftables
def test_the_kernel_carries_a_serving_services_connections_by_default(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port, settings="")
    assert detached(tmp_path).returncode == 0
    pid = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    who, peer, ours = answer(port)
    assert (who, peer) == (pid, ours)  # the service itself saw the client's own port


@needs_nftables
def test_proxy_forwarding_set_by_a_reload_applies_at_once(tmp_path: Path, detached: Any) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    pid = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    stack = tmp_path / "services.yaml"
    save(stack, stack.read_text().replace("kernel", "relay"))
    wait_for(lambda: status(tmp_path)["forwarding"] == "relay")
    who, peer, ours = answer(port)
    assert who == pid and peer != ours  # the same process, relayed
    save(stack, stack.read_text().replace("relay", "kernel"))
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    who, peer, ours = answer(port)
    assert (who, peer) == (pid, ours)


# A development server's reloader: it runs on while its server is started anew (SIGUSR1).
RELOADER = """
import signal, subprocess, sys, time
server = subprocess.Popen([sys.executable, "peers.py"])
def again(*_):
    global server
    server.kill()
    server.wait()
    time.sleep(2.0)
    server = subprocess.Popen([sys.executable, "peers.py"])
signal.signal(signal.SIGUSR1, again)
while True:
    signal.pause()
"""


@needs_nftables
def test_a_server_started_anew_under_a_running_service_is_waited_for_not_refused(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    peers_stack(tmp_path, port)
    (tmp_path / "reloader.py").write_text(RELOADER)
    stack = tmp_path / "services.yaml"
    stack.write_text(stack.read_text().replace("python3 peers.py", "python3 reloader.py"))
    assert detached(tmp_path).returncode == 0
    first = answer(port)[0]
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    os.kill(status(tmp_path)["pid"], signal.SIGUSR1)
    wait_for(lambda: status(tmp_path)["forwarding"] == "relay")  # its listener went
    assert status(tmp_path)["state"] == "running"
    who, peer, ours = answer(port)  # held by the relay until the new server listens
    assert who != first and peer != ours
    wait_for(lambda: status(tmp_path)["forwarding"] == "kernel")
    who, peer, ours = answer(port)
    assert who != first and peer == ours
