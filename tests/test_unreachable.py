"""A supervisor that cannot answer: stopped by SIGSTOP, or its socket deleted. The CLI says so
at once, and `down` still stops the stack gracefully."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import SLEEP, cli, supervisor_pid, wait_for, write_stack

from stackvisor.config import load_config
from stackvisor.control import ops
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
