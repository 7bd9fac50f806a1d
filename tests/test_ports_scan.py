"""The port scanner against real sockets: every address family and kind of address,
LISTEN only (`tables`), owners and their facts, and owners that cannot be read
(`owners`, `fdwalk`)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from conftest import Start, wait_for

from stackvisor.ports import fdwalk, tables
from stackvisor.ports.owners import OwnerSearch, find_owner, find_owners
from stackvisor.system import procfs


@pytest.mark.parametrize("host", ["::1", "::", "127.0.0.2", "0.0.0.0", "127.0.0.1"])
def test_listeners_on_every_kind_of_address_are_seen(spawn, host: str) -> None:
    holder = spawn(host)
    assert not tables.is_free(holder.port)
    assert holder.port in tables.listening_ports()
    owners = find_owners(holder.port)
    assert [o.pid for o in owners] == [holder.pid]
    assert owners[0].addresses == (host,)


def test_a_client_connection_is_not_a_listener(spawn) -> None:
    holder = spawn("127.0.0.1")
    with socket.create_connection(("127.0.0.1", holder.port)) as client:
        client_port = client.getsockname()[1]
        assert tables.is_free(client_port)
        assert find_owners(client_port) == []
        assert tables.free_ports([client_port, holder.port]) == [client_port]


def test_owner_facts(spawn) -> None:
    holder = spawn("127.0.0.1", 0, "--tag", "facts")
    clients = [socket.create_connection(("127.0.0.1", holder.port)) for _ in range(2)]
    try:
        # The kernel completes the handshake before accept(): both are ESTABLISHED.
        wait_for(lambda: find_owner(holder.port).established == 2)
        owner = find_owner(holder.port)
    finally:
        for client in clients:
            client.close()
    proc = psutil.Process(holder.pid)
    assert owner is not None and owner.readable
    assert owner.pid == holder.pid
    assert owner.name == proc.name()
    assert owner.cmdline[-2:] == ("--tag", "facts")
    assert (owner.uid, owner.user) == (os.getuid(), "root")
    assert owner.started == procfs.started(holder.pid)
    assert abs(owner.create_time - proc.create_time()) <= 1.0  # the wall clock may move between
    assert owner.pgid == holder.pid  # started in its own session
    assert json.loads(json.dumps(owner.as_dict()))["pid"] == holder.pid


def test_the_same_process_on_both_families_is_one_owner(spawn) -> None:
    four = spawn("127.0.0.1")
    with socket.socket(socket.AF_INET6) as other:
        other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        other.bind(("::1", four.port))
        other.listen()
        owners = find_owners(four.port)
        assert sorted(o.pid for o in owners) == sorted([four.pid, os.getpid()])
        mine = next(o for o in owners if o.pid == os.getpid())
        assert mine.addresses == ("::1",)


def test_another_users_process_is_seen_with_its_user(spawn) -> None:
    holder = spawn("127.0.0.1", user="nobody")
    owner = find_owner(holder.port)
    assert owner is not None
    assert (owner.pid, owner.user, owner.uid) == (holder.pid, "nobody", 65534)


def test_an_owner_that_cannot_be_read_is_reported_as_such(spawn) -> None:
    # Scan from a child that dropped to `nobody`: root's /proc/<pid>/fd is closed to it.
    holder = spawn("127.0.0.1")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what the scanner says, then leave at once
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            owner = find_owner(holder.port)
            os.write(write_end, json.dumps(owner.as_dict() if owner else None).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            ready, _, _ = select.select([pipe], [], [], 10.0)
            data = json.loads(pipe.read() or b"null") if ready else None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # only if it hung; it is ours and not reaped yet
        os.waitpid(pid, 0)
    assert data is not None
    assert data["readable"] is False
    assert (data["uid"], data["user"], data["pid"]) == (0, "root", None)


def test_a_socket_no_process_holds_is_unreadable() -> None:
    listener = tables.Listener(port=1, address="127.0.0.1", family=4, uid=0, inode=2**31 - 7)
    (owner,) = OwnerSearch().owners_from([listener], {1: 4})[1]
    assert (owner.readable, owner.pid, owner.user, owner.established) == (False, None, "root", 4)


def test_the_three_sources_agree(spawn) -> None:
    holders = [spawn("127.0.0.1"), spawn("::1"), spawn("0.0.0.0")]
    ports = {h.port for h in holders}
    with socket.create_connection(("127.0.0.1", holders[0].port)):
        results = [
            source(ports, True)
            for source in (tables._netlink_sockets, tables._proc_sockets, tables._psutil_sockets)
        ]
    shapes = [(sorted((s.port, s.address) for s in found), counts) for found, counts in results]
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0][1] == {holders[0].port: 1}
    netlink, proc = results[0][0], results[1][0]
    assert sorted((s.inode, s.uid) for s in netlink) == sorted((s.inode, s.uid) for s in proc)


def test_a_connection_its_client_half_closed_counts_until_the_server_ends_it(spawn) -> None:
    """The server has yet to answer it (CLOSE_WAIT): a request in progress, for an idle
    stop as for a strategy, in each of the three sources."""
    holder = spawn("127.0.0.1")
    sources = (tables._netlink_sockets, tables._proc_sockets, tables._psutil_sockets)
    with (
        socket.create_connection(("127.0.0.1", holder.port)),
        socket.create_connection(("127.0.0.1", holder.port)) as asked,
    ):
        asked.sendall(b"GET / HTTP/1.0\r\n\r\n")
        asked.shutdown(socket.SHUT_WR)
        for source in sources:
            wait_for(lambda source=source: source({holder.port}, True)[1] == {holder.port: 2})


def test_the_owner_carries_the_listeners_process_group(spawn) -> None:
    holder = spawn("127.0.0.1", shell_parent=True)
    leader = holder.proc.pid
    found = find_owners(holder.port, prefer=[leader])
    assert any(owner.pgid == leader for owner in found)
    assert not any(owner.pgid == os.getpgid(0) for owner in found)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: no listener yet
        assert find_owners(sock.getsockname()[1], prefer=[leader]) == []


def test_group_members_and_lineage(spawn) -> None:
    holder = spawn("127.0.0.1", shell_parent=True)
    assert sorted(procfs.group_members(holder.proc.pid)) == sorted([holder.proc.pid, holder.pid])
    assert {os.getpid(), os.getppid()} <= procfs.ancestors(os.getpid())
    started = procfs.started(holder.pid)
    assert started is not None and procfs.same_process(holder.pid, started)
    assert not procfs.same_process(holder.pid, started - 1.0)


def test_port_filter_in_the_kernel_matches_ranges_and_single_ports() -> None:
    socks = []
    try:
        for host, family in [("127.0.0.1", socket.AF_INET)] * 4 + [("::1", socket.AF_INET6)] * 2:
            sock = socket.socket(family)
            sock.bind((host, 0))
            sock.listen()
            socks.append(sock)
        ports = [s.getsockname()[1] for s in socks]
        probe = ports + [p + 1 for p in ports] + [p - 1 for p in ports]
        busy = set(ports) | (tables.listening_ports() & set(probe))
        assert tables.free_ports(probe) == [p for p in probe if p not in busy]
        for port in ports:
            assert not tables.is_free(port)
        # A contiguous range, and more ranges than the filter takes (checked in Python).
        assert set(ports) <= tables._netlink_listening(set(range(1024, 65536)))
        many = set(range(1025, 65536, 2)) | set(ports)
        assert set(ports) <= tables._netlink_listening(many)
    finally:
        for sock in socks:
            sock.close()


def test_port_ranges() -> None:
    assert tables._port_ranges([5, 3, 4, 9, 11, 10, 1]) == [(1, 1), (3, 5), (9, 11)]
    assert tables._port_ranges([]) == []


def test_visit_order_lists_every_process_once_preferred_first(spawn) -> None:
    holder = spawn("127.0.0.1")
    inode = tables.listeners([holder.port])[0][0].inode
    before = set(psutil.pids())
    order = fdwalk._visit_order({0}, [os.getpid()], [inode])
    stable = before & set(psutil.pids())  # other processes come and go meanwhile
    assert order[0] == os.getpid()
    assert len(order) == len(set(order))
    assert stable <= set(order)


MANY = r"""
import socket, sys, time
socks = []
for _ in range(40):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
time.sleep(60)
"""


def test_a_big_process_whose_newest_socket_follows_the_wanted_one_is_read_first(start: Start) -> None:
    proc = start([sys.executable, "-c", MANY], stdout=subprocess.PIPE)
    ports = [int(p) for p in proc.stdout.readline().split()]
    listener = tables.listeners([ports[3]])[0][0]
    order = fdwalk._visit_order({0}, [], [listener.inode])
    assert order[0] == proc.pid
    assert find_owner(ports[3]).pid == proc.pid


def test_a_remembered_socket_is_checked_before_it_is_believed(spawn) -> None:
    first = spawn("127.0.0.1")
    search = OwnerSearch()
    assert search.find_owner(first.port).pid == first.pid
    link = f"socket:[{search.find_owner(first.port).inodes[0]}]"
    assert link in search.sightings.seen
    # Point the memory at the wrong process: the check drops it and the walk answers.
    search.sightings.seen[link] = (os.getpid(), "0")
    assert search.find_owner(first.port).pid == first.pid
    assert search.sightings.seen[link][0] == first.pid
    search.forget()
    assert search.sightings.seen == {}


def test_one_off_lookups_remember_nothing(spawn) -> None:
    holder = spawn("127.0.0.1")
    first = OwnerSearch()
    assert first.find_owner(holder.port).pid == holder.pid
    assert first.sightings.seen  # the walk passed the socket
    assert OwnerSearch().sightings.seen == {}  # a new search starts with no memory
    assert find_owner(holder.port).pid == holder.pid
