"""A supervisor that cannot answer: stopped by SIGSTOP, or its socket deleted. The CLI says so
at once, and `down` still stops the stack gracefully."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from conftest import SLEEP, alive, cli, client, supervisor_pid, wait_for, write_stack

from stackvisor.config import load_config
from stackvisor.control import ops
from stackvisor.control.sockets import StackLock
from stackvisor.paths import StackPaths
from stackvisor.runtime.state import StateDB


def test_a_stopped_supervisor_is_named_not_waited_for(tmp_path: Path, detached) -> None:
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    assert detached(tmp_path, wait=False).returncode == 0
    pid = supervisor_pid(tmp_path)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: ops.is_stopped(pid))  # the signal is delivered, not sent
        began = time.monotonic()
        status = cli("status", cwd=tmp_path)
        assert status.returncode == 1
        assert time.monotonic() - began < 5
        assert (
            f"the supervisor (pid {pid}, stopped: kill -CONT {pid} resumes it) will not answer"
            in status.stderr
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    assert cli("status", cwd=tmp_path).returncode == 0


def test_down_stops_gracefully_when_the_socket_is_gone(tmp_path: Path, detached) -> None:
    path = write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    assert detached(tmp_path, wait=False).returncode == 0
    StackPaths.at(tmp_path).socket.unlink()
    began = time.monotonic()
    result = ops.down(load_config(path), timeout=30)
    assert result.was_running and not result.killed
    assert time.monotonic() - began < 15  # not the whole timeout, then SIGKILL
    db = StateDB.open(StackPaths.at(tmp_path).state_db, os.getpid())
    try:
        stops = [e for e in db.events(kinds=("state",)) if e["data"]["new"] == "stopped"]
    finally:
        db.close()
    assert stops and stops[-1]["data"]["reason"].startswith("stopped (exit code")


def test_down_ends_a_stopped_supervisor_even_once_its_lock_is_too_busy_to_say_whose(
    tmp_path: Path, detached
) -> None:
    """A stuck supervisor drains its lock socket no more: once questions fill its backlog,
    asking the lock says "held" but not by whom. `down` still ends that supervisor (and,
    with it, its services), by the pid of the process the kernel shows bound to it."""
    path = write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    assert detached(tmp_path, wait=False).returncode == 0
    config = load_config(path)
    pid = supervisor_pid(tmp_path)
    wait_for(lambda: client(tmp_path).get("/v1/services/a")["pid"] is not None)
    service = client(tmp_path).get("/v1/services/a")["pid"]
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: ops.is_stopped(pid))
    held = []  # questions nobody answers, as many as its backlog takes
    try:
        lock = StackLock(StackPaths.at(tmp_path).lock)
        while _ask_nowait(lock.name, held):
            pass
        assert lock.holder() == pid  # the kernel says who is bound, not the full backlog
        result = ops.down(config, timeout=2)
        assert result.killed and result.pid == pid
        assert not alive(pid) and not alive(service)
    finally:
        for sock in held:
            sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ask_nowait(name: str, held: list[socket.socket]) -> bool:
    """Connect once more to the abstract `name`; False when its backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(name)
    except BlockingIOError:
        sock.close()
        return False
    held.append(sock)
    return True
