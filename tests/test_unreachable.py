"""A supervisor that cannot answer: stopped by SIGSTOP, or its socket deleted. The CLI says so
at once, and `down` still stops the stack gracefully."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackvisor.cli import main
from stackvisor.config import load_config
from stackvisor.config.schema import StackConfig
from stackvisor.control import ops
from stackvisor.paths import StackPaths
from stackvisor.runtime.state import StateDB

STACK = f"services:\n  a: {{command: {sys.executable} -c 'import time; time.sleep(300)'}}\n"


@pytest.fixture
def detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StackConfig, int]]:
    (tmp_path / "services.yaml").write_text(STACK)
    monkeypatch.chdir(tmp_path)
    config = load_config(tmp_path / "services.yaml")
    started = ops.detach(config, [])
    assert started.ok, started.message
    assert started.pid is not None
    try:
        yield config, started.pid
    finally:
        if ops.is_stopped(started.pid):
            os.kill(started.pid, signal.SIGCONT)
        ops.down(config, timeout=30)


def test_a_stopped_supervisor_is_named_not_waited_for(
    detached: tuple[StackConfig, int], capsys: pytest.CaptureFixture[str]
) -> None:
    _, pid = detached
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert main(["status"]) == 1
        assert time.monotonic() - began < 5
        err = capsys.readouterr().err
        assert f"the supervisor (pid {pid}, stopped: kill -CONT {pid} resumes it) will not answer" in err
    finally:
        os.kill(pid, signal.SIGCONT)
    assert main(["status"]) == 0


def test_down_stops_gracefully_when_the_socket_is_gone(
    detached: tuple[StackConfig, int], tmp_path: Path
) -> None:
    config, _ = detached
    StackPaths.at(tmp_path).socket.unlink()
    began = time.monotonic()
    result = ops.down(config, timeout=30)
    assert result.was_running and not result.killed
    assert time.monotonic() - began < 15  # not the whole timeout, then SIGKILL
    db = StateDB.open(StackPaths.at(tmp_path).state_db, os.getpid())
    try:
        stops = [e for e in db.events(kinds=("state",)) if e["data"]["new"] == "stopped"]
    finally:
        db.close()
    assert stops and stops[-1]["data"]["reason"].startswith("stopped (exit code")
