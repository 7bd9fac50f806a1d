"""The port registry: a real sqlite file, real processes as holders, real listeners.
The decisions (`leases`) get their own fast tests at the end."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackvisor.errors import UnsafePath
from stackvisor.ports.leases import (
    DEFAULT_TYPES,
    Allocation,
    PortTaken,
    RegistryError,
    UnknownAllocation,
    choose_port,
    parse_range,
)
from stackvisor.ports.registry import Registry
from tests.conftest import free_port, wait_for


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry.open(tmp_path / "state" / "ports.db")
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_the_file_is_the_users_alone(tmp_path: Path, registry: Registry) -> None:
    registry.allocate("web", pid=os.getpid())
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.path.parent.stat().st_mode) == 0o700
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "elsewhere.db").write_text("")
    (planted / "ports.db").symlink_to(planted / "elsewhere.db")
    with pytest.raises(UnsafePath, match="symbolic link"):
        Registry.open(planted / "ports.db")


def test_ports_are_handed_out_once_from_the_types_range(registry: Registry) -> None:
    first, _ = registry.allocate("api", kind="rest-api", pid=os.getpid())
    second, _ = registry.allocate("api2", kind="rest-api", pid=os.getpid())
    low, high = DEFAULT_TYPES["rest-api"] or (0, 0)
    assert low <= first.port <= high and low <= second.port <= high and first.port != second.port
    anywhere, _ = registry.allocate("tmp", pid=os.getpid())
    assert anywhere.port not in (first.port, second.port)
    with pytest.raises(RegistryError, match="unknown service type 'nope'"):
        registry.allocate("x", kind="nope", pid=os.getpid())


def test_preferred_required_reserved_and_listened_ports(registry: Registry) -> None:
    wanted = free_port()
    got, _ = registry.allocate("web", preferred=wanted, pid=os.getpid())
    assert got.port == wanted
    # Taken by an allocation: another port unless required, which names the holder.
    other, _ = registry.allocate("web2", preferred=wanted, pid=os.getpid())
    assert other.port != wanted
    with pytest.raises(PortTaken, match=f"port {wanted} is allocated to script allocation 'web'") as err:
        registry.allocate("web3", preferred=wanted, required=True, pid=os.getpid())
    assert err.value.holder is not None and err.value.holder["id"] == got.id
    # Listened on by anybody: never handed out, whatever the registry says.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        assert registry.allocate("x", preferred=busy, pid=os.getpid())[0].port != busy
        with pytest.raises(PortTaken, match="listened on by another process"):
            registry.allocate("x", preferred=busy, required=True, pid=os.getpid())
    # Reserved per user: never handed out either.
    spare = free_port()
    registry.reserve([spare])
    with pytest.raises(PortTaken, match="reserved"):
        registry.allocate("x", preferred=spare, required=True, pid=os.getpid())
    registry.reserve([spare], keep=False)
    assert registry.allocate("x", preferred=spare, required=True, pid=os.getpid())[0].port == spare


def test_a_holder_that_died_is_swept(registry: Registry, holder: subprocess.Popen[bytes]) -> None:
    held, _ = registry.allocate("e2e", pid=holder.pid)
    assert registry.sweep() == []
    holder.kill()
    holder.wait()
    assert [a.id for a in registry.sweep()] == [held.id]
    assert registry.get(held.id).status == "expired"
    assert registry.lookup(held.port) == []
    # The port is free to hand out again.
    assert (
        registry.allocate("again", preferred=held.port, required=True, pid=os.getpid())[0].port == held.port
    )


def test_after_a_reboot_no_holder_is_taken_for_alive(tmp_path: Path, holder: subprocess.Popen[bytes]) -> None:
    """Allocations held by processes of another boot expire at the first open in this one,
    even where a process of this boot has the same pid and a start that reads the same:
    starts count from the boot. A lease (no holder) lives on by its heartbeats."""
    path = tmp_path / "ports.db"
    first = Registry.open(path)
    held, _ = first.allocate("api", pid=holder.pid)
    lease, _ = first.allocate("forward", ttl=3600)
    first.close()
    with sqlite3.connect(path) as db:  # as the file reads after a reboot
        db.execute("UPDATE boot SET id = 'an-earlier-boot'")
    db.close()
    again = Registry.open(path)
    try:
        assert again.get(held.id).status == "expired"
        assert [a.id for a in again.live()] == [lease.id]
        fresh, _ = again.allocate("api", preferred=held.port, required=True, pid=holder.pid)
        third = Registry.open(path)  # a second open in this boot keeps what the first allocated
        assert third.get(fresh.id).status == fresh.status
        third.close()
    finally:
        again.close()


def test_a_lease_lives_by_its_heartbeats(registry: Registry) -> None:
    lease, _ = registry.allocate("forward", ttl=0.5)
    assert lease.pid is None
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # renewed well within its ttl, it stays
        registry.heartbeat(lease.id)
        assert registry.sweep() == []
        time.sleep(0.1)
    wait_for(lambda: [a.id for a in registry.sweep()] == [lease.id], timeout=5)
    with pytest.raises(UnknownAllocation, match="expired"):
        registry.heartbeat(lease.id)
    with pytest.raises(RegistryError, match="needs a ttl"):
        registry.allocate("nobody")


def test_release_cleanup_lookup_and_stats(registry: Registry, holder: subprocess.Popen[bytes]) -> None:
    kept, _ = registry.allocate("db", kind="database", pid=os.getpid())
    gone, _ = registry.allocate("db", kind="database", pid=holder.pid)
    released, _ = registry.allocate("cache", kind="cache", pid=os.getpid())
    assert registry.release(released.id).port == released.port
    with pytest.raises(UnknownAllocation):
        registry.release(released.id)
    holder.kill()
    holder.wait()
    expired, forgotten = registry.cleanup()
    assert [a.id for a in expired] == [gone.id] and forgotten == 0
    assert [a.id for a in registry.lookup("db")] == [kept.id]
    assert [a.id for a in registry.lookup(str(kept.port))] == [kept.id]
    assert registry.lookup("¹") == []  # a digit to str.isdigit, a name here
    assert {a.id for a in registry.listing(everything=True)} == {kept.id, gone.id}
    stats = registry.stats()
    assert stats["by_status"] == {"reserved": 1, "expired": 1} and stats["by_type"] == {"database": 1}


RACER = """
import os, sys
from pathlib import Path
from stackvisor.ports.registry import Registry
reg = Registry.open(Path(sys.argv[1]))
types = {"bench": (20000, 21999)}
got = [reg.allocate(f"r{i}", kind="bench", pid=os.getppid(), types=types)[0].port for i in range(250)]
print(" ".join(map(str, got)))
"""


def test_four_processes_racing_get_a_thousand_distinct_ports(tmp_path: Path) -> None:
    path = tmp_path / "ports.db"
    Registry.open(path).close()
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in racers]
    finally:
        for proc in racers:
            proc.kill()
    assert all(proc.returncode == 0 for proc in racers)
    ports = [int(p) for out in outputs for p in out.split()]
    assert len(ports) == 1000 and len(set(ports)) == 1000


def test_a_corrupt_file_is_moved_aside_and_made_again(tmp_path: Path) -> None:
    path = tmp_path / "ports.db"
    path.write_bytes(b"this is not a database" * 100)
    path.chmod(0o600)
    reg = Registry.open(path)
    try:
        assert reg.note is not None and "moved to ports.db.corrupt-" in reg.note
        assert reg.allocate("web", pid=os.getpid())[0].port > 0
        assert list(tmp_path.glob("ports.db.corrupt-*"))
    finally:
        reg.close()


def test_a_stack_claims_its_ports_and_never_anothers(
    registry: Registry, holder: subprocess.Popen[bytes]
) -> None:
    port = free_port()
    me = os.getpid()
    a, replaced, _ = registry.claim("/a/services.yaml", "api", port, pid=me, pid_start=None)
    assert (
        replaced is None and registry.claim("/a/services.yaml", "api", port, pid=me, pid_start=None)[0] == a
    )
    with pytest.raises(PortTaken, match=r"/a/services\.yaml's api"):
        registry.claim("/b/services.yaml", "api", port, pid=me, pid_start=None)
    assert set(registry.others("/b/services.yaml")) == {port}
    # A move replaces the service's allocation; a dead stack's allocation gives way.
    moved = free_port()
    _, old, _ = registry.claim("/a/services.yaml", "api", moved, pid=me, pid_start=None)
    assert old is not None and old.port == port
    start = time.time()
    registry.claim("/c/services.yaml", "web", port, pid=holder.pid, pid_start=None)
    holder.kill()
    holder.wait()
    _, _, expired = registry.claim("/b/services.yaml", "api", port, pid=me, pid_start=start)
    assert [e.owner for e in expired] == ["/c/services.yaml"]
    assert [a.name for a in registry.release_owner("/a/services.yaml")] == ["api"]


# ----- the decisions ----------------------------------------------------------------------


def test_ranges_are_parsed_or_refused() -> None:
    assert parse_range("8080-8099") == (8080, 8099)
    assert parse_range([3000, 3000]) == (3000, 3000)
    assert parse_range("any") is None
    for bad in ("80-", "9000-8000", [0, 10], "a-b", [1, 2, 3], 8080):
        with pytest.raises(RegistryError, match="port range"):
            parse_range(bad)


def test_the_first_candidate_nobody_has_is_chosen() -> None:
    listened = {8081}.__contains__
    assert choose_port(range(8080, 8090), {8080}, listened) == 8082
    assert choose_port([8080, 8081], {8080}, listened) is None


def test_expiry_by_holder_or_lease() -> None:
    def alloc(pid: int | None, ttl: float | None, status: str = "reserved") -> Allocation:
        return Allocation("i", 1, "n", "custom", "script", pid, 1.0, "h", 0.0, 100.0, ttl, status)

    def alive(pid: int, started: float | None) -> bool:
        return pid == 7

    assert not alloc(7, None).expired(1e9, alive)
    assert alloc(8, None).expired(0.0, alive)
    assert not alloc(None, 10.0).expired(110.0, alive) and alloc(None, 10.0).expired(110.5, alive)
    assert alloc(7, None, "expired").expired(0.0, alive)


def test_a_lapsed_lease_is_expired_before_any_sweep(registry: Registry) -> None:
    """Its ttl passed: no heartbeat brings it back, and it is shown as expired, though
    nothing has swept the registry since."""
    lease, _ = registry.allocate("forward", ttl=0.2)
    wait_for(lambda: time.time() > lease.last_heartbeat + 0.2)
    with pytest.raises(UnknownAllocation, match="expired"):
        registry.heartbeat(lease.id)
    assert registry.lookup("forward") == []
    (shown,) = registry.as_dicts(registry.listing())
    assert shown["id"] == lease.id and shown["status"] == "expired"


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path: Path) -> None:
    path = tmp_path / "ports.db"
    for text in (b"first corrupt file" * 100, b"second corrupt file" * 100):
        path.write_bytes(text)
        path.chmod(0o600)
        Registry.open(path).close()
    kept = sorted(
        p.read_bytes()[:6]
        for p in tmp_path.glob("ports.db.corrupt-*")
        if not p.name.endswith(("-wal", "-shm"))
    )
    assert kept == [b"first ", b"second"]


def test_a_folder_the_environment_names_keeps_its_mode(tmp_path: Path) -> None:
    """STACKVISOR_REGISTRY=/tmp/ports.db must not make /tmp private: a shared (sticky)
    folder keeps its mode; one others may write into without the sticky bit is refused."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = {**os.environ, "STACKVISOR_REGISTRY": str(shared / "ports.db")}
    listed = subprocess.run(
        [sys.executable, "-m", "stackvisor", "ports", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    shared.chmod(0o777)
    refused = subprocess.run(
        [sys.executable, "-m", "stackvisor", "ports", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "may be written by others (mode 777)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777


def test_a_name_that_is_not_text_is_a_usage_error() -> None:
    """Bytes the locale cannot decode (`$'\\xff'` in a shell) in a name: exit 2 and why."""
    answer = subprocess.run(
        [sys.executable.encode(), b"-m", b"stackvisor", b"ports", b"allocate", b"\xff\xfe", b"--ttl", b"5s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 2 and "not valid UTF-8 text (bytes b'\\xff\\xfe')" in answer.stderr
    assert "supervisor" not in answer.stderr
