"""SIGKILL of the supervisor at any point of its start or of a reload: `down` leaves nothing.

Each round forks a real supervisor from a process that has imported stackvisor already
(so the round's time is the supervisor's own work, not Python's imports), kills it after
a delay that moves across its start (and, every third round, across a reload), then runs
`down` and looks for any process carrying that supervisor's marker. The delays are the
fault points being tested, not waits for something to happen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import child_env, client, wait_for

from stackvisor.config import load_config
from stackvisor.control import ops
from stackvisor.paths import StackPaths
from stackvisor.system import procfs

POINTS = 30
SERVICES = 8
# A forked supervisor spawns its services within about 0.1 s, and a reload (after its
# 0.1 s debounce) within 0.3 s: the fault points spread over those spans.
START_SPAN = 0.15
RELOAD_SPAN = 0.35
# A service whose shell stays (two background children and `wait`): what is left when
# the supervisor dies is a shell and its children, in a session of their own.
SERVICE = "    command: sh -c 'sleep 1000 & sleep 1000 & wait'\n"
# Imports stackvisor once, then forks a supervisor (as `stackvisor _supervise` runs it)
# for each stack file named on stdin, and prints the new pid.
ZYGOTE = textwrap.dedent(
    """
    import os, sys
    import stackvisor.app, stackvisor.cli.stack
    from stackvisor.cli import main
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os._exit(main(["_supervise", "-f", line.strip()]))
        print(pid, flush=True)
    """
)


def stack(generation: int) -> str:
    body = "".join(f"  s{i}:\n{SERVICE}    env: {{GEN: '{generation}'}}\n" for i in range(SERVICES))
    return f"settings: {{stop_timeout: 2s}}\nservices:\n{body}"


def survivors(supervisor_pid: int) -> list[str]:
    left = []
    for proc in procfs.marked(f"{supervisor_pid}-", prefix=True):
        try:
            left.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.Error:
            continue
    return left


@pytest.fixture
def zygote() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def fork(zygote: subprocess.Popen[str], path: Path) -> int:
    assert zygote.stdin is not None and zygote.stdout is not None
    zygote.stdin.write(f"{path}\n")
    zygote.stdin.flush()
    return int(zygote.stdout.readline())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_a_supervisor_killed_at_any_point_leaves_nothing_after_down(
    tmp_path: Path, zygote: subprocess.Popen[str]
) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(stack(0))
    config = load_config(path)
    failures = []
    for point in range(POINTS):
        during_reload = point % 3 == 2
        delay = (RELOAD_SPAN if during_reload else START_SPAN) * point / POINTS
        pid = fork(zygote, path)
        try:
            if during_reload:
                wait_for(lambda: gone(pid) or client(tmp_path, timeout=2).alive(), timeout=30)  # noqa: B023
                path.write_text(stack(point))  # every service changes: a reload restarts all
            time.sleep(delay)  # the fault point
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: gone(pid))  # noqa: B023
            ops.down(config, timeout=30)
            left = survivors(pid)
            if left:
                failures.append((point, round(delay, 3), during_reload, left))
        finally:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
            for proc in procfs.marked(f"{pid}-", prefix=True):
                proc.kill()
    assert failures == []


def test_a_child_started_just_before_the_kill_is_found_by_its_supervisors_marker(tmp_path: Path) -> None:
    """The instant between starting a child and recording it: what the supervisor wrote
    first (its own record) is enough for `down` to find the child and its children."""
    from stackvisor.runtime.state import StateDB

    path = tmp_path / "services.yaml"
    path.write_text(stack(0))
    config = load_config(path)
    paths = StackPaths.at(tmp_path)
    paths.state_dir.mkdir(mode=0o700)
    instance = "4242-deadbeef"
    db = StateDB.open(paths.state_db, 4242)
    db.instance_started(instance)  # all a supervisor killed in that instant has written
    db.close()
    env = dict(os.environ, STACKVISOR_CHILD=f"{instance}/s0/1")
    # As the service would be: a shell in a session of its own, not recorded anywhere.
    orphan = subprocess.Popen(["sh", "-c", "sleep 1000 & sleep 1000 & wait"], env=env, start_new_session=True)
    try:
        wait_for(lambda: len(procfs.marked(f"{instance}/", prefix=True)) >= 3)  # the shell's children
        result = ops.down(config, timeout=30)
        assert result.ended == ["ended 3 processes left by a killed supervisor"]
        assert procfs.marked(f"{instance}/", prefix=True) == []
    finally:
        for proc in procfs.marked(f"{instance}/", prefix=True):
            proc.kill()
        orphan.kill()
        orphan.wait()
