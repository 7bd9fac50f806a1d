"""SIGKILL of the supervisor at any point of its start or of a reload: `down` leaves nothing.

Each round starts a real supervisor, kills it after a delay that moves across its
start (and, every third round, across a reload), then runs `down` and looks for any
process carrying that supervisor's marker. The delays are the fault points being
tested, not waits for something to happen.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import child_env, client, wait_for

from stackvisor.config import load_config
from stackvisor.control import ops
from stackvisor.paths import StackPaths
from stackvisor.system import procfs

POINTS = 30
SERVICES = 8
# A service whose shell stays (two background children and `wait`): what is left when
# the supervisor dies is a shell and its children, in a session of their own.
SERVICE = "    command: sh -c 'sleep 1000 & sleep 1000 & wait'\n"


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


def answering_or_gone(root: Path, supervisor: subprocess.Popen[bytes]) -> bool:
    return supervisor.poll() is not None or client(root, timeout=2).alive()


def test_a_supervisor_killed_at_any_point_leaves_nothing_after_down(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(stack(0))
    config = load_config(path)
    failures = []
    for point in range(POINTS):
        during_reload = point % 3 == 2
        delay = 0.02 + 0.5 * point / POINTS
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "stackvisor", "_supervise", "-f", str(path)],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            if during_reload:
                wait_for(functools.partial(answering_or_gone, tmp_path, supervisor), timeout=30)
                assert supervisor.poll() is None
                path.write_text(stack(point))  # every service changes: a reload restarts all
                delay /= 2
            time.sleep(delay)  # the fault point
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait(10)
            ops.down(config, timeout=30)
            left = survivors(supervisor.pid)
            if left:
                failures.append((point, round(delay, 3), during_reload, left))
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait()
            for proc in procfs.marked(f"{supervisor.pid}-", prefix=True):
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
