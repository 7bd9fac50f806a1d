"""Every process of a service is ended, whatever it did to hide: cgroups where the kernel
lets us, markers and the subreaper otherwise; and what each service uses is reported.

Both tracking modes run the same stacks (STACKVISOR_TRACKING forces the fallback). A
process that double-forks, calls setsid and execs under `env -i` carries no marker: after
a SIGKILLed supervisor, only its cgroup still names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import psutil
import pytest
from conftest import alive, cli, client, read_pids, supervisor_pid, wait_for, write_program, write_stack

from stackvisor.paths import StackPaths
from stackvisor.runtime.resources import tree_usage
from stackvisor.system import cgroups, procfs

PY = sys.executable


def cgroups_usable() -> str:
    """ "" when this machine lets us use cgroups, else why not."""
    found = cgroups.probe(f"probe-{os.getpid()}")
    if found.base is not None:
        found.base.rmdir()
    return "" if found.kind == "cgroup" else found.reason


@pytest.fixture(params=["cgroup", "marker"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cgroup" and (why := cgroups_usable()):
        pytest.skip(f"cgroup tracking is not available here: {why}")
    monkeypatch.setenv("STACKVISOR_TRACKING", request.param)
    return str(request.param)


# The service's process stays; a grandchild leaves it all behind: a new session, no
# parent of ours (the middle process exits), and an empty environment (no marker).
ESCAPE = """
import os, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        os.execve("/bin/sleep", ["sleep", "300"], {})
    os._exit(0)
time.sleep(300)
"""

# 200 children, each in a session of its own, then "ready".
CROWD = """
import os, sys, time
pids = []
for _ in range(200):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(300)
        os._exit(0)
    pids.append(pid)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("\\n".join(map(str, pids)))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


@pytest.fixture
def escaped() -> Iterator[list[int]]:
    """Pids a test saw escape: killed after it whatever happened."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def resources(root: Path) -> dict[str, Any] | None:
    """The one service's figures now (up to half a second old)."""
    (service,) = client(root).get("/v1/status?resources=true")["services"]
    return service["resources"]


def stack_cgroups(root: Path) -> list[Path]:
    return cgroups.leftovers(StackPaths.at(root).cgroup_name)


def test_an_escaped_grandchild_is_ended_by_down(
    tmp_path: Path, mode: str, detached: Callable[..., CompletedProcess[str]], escaped: list[int]
) -> None:
    write_program(tmp_path, "escape.py", ESCAPE)
    write_stack(tmp_path, f"services:\n  app:\n    command: {PY} escape.py {tmp_path / 'hidden'}\n")
    assert detached(tmp_path).returncode == 0
    (hidden,) = escaped[:] = wait_for(lambda: read_pids(tmp_path / "hidden"))
    status = client(tmp_path).get("/v1/status")
    assert status["tracking"] == mode
    assert cli("down", cwd=tmp_path).returncode == 0
    wait_for(lambda: not alive(hidden), timeout=5)
    assert stack_cgroups(tmp_path) == []


@pytest.mark.parametrize("then", ["down", "down without its state folder", "up"])
def test_after_a_killed_supervisor_what_only_the_cgroup_names_is_ended(
    tmp_path: Path, then: str, detached: Callable[..., CompletedProcess[str]], escaped: list[int]
) -> None:
    if why := cgroups_usable():
        pytest.skip(f"cgroup tracking is not available here: {why}")
    write_program(tmp_path, "escape.py", ESCAPE)
    write_stack(tmp_path, f"services:\n  app:\n    command: {PY} escape.py {tmp_path / 'hidden'}\n")
    assert detached(tmp_path).returncode == 0
    (hidden,) = escaped[:] = wait_for(lambda: read_pids(tmp_path / "hidden"))
    (tmp_path / "hidden").unlink()
    supervisor = supervisor_pid(tmp_path)
    assert supervisor is not None
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: supervisor_pid(tmp_path) is None)
    assert alive(hidden)  # no marker, not ours by pid: only the cgroup knows it
    if then == "up":
        assert detached(tmp_path).returncode == 0
        log = (tmp_path / "logs" / "stackvisor.log").read_text()
        assert "of app left in its cgroup by a killed supervisor" in log
        escaped.append(wait_for(lambda: read_pids(tmp_path / "hidden"))[0])  # the new run's
    else:
        if then == "down without its state folder":
            shutil.rmtree(tmp_path / ".stackvisor")
        down = cli("down", cwd=tmp_path)
        assert down.returncode == 0
        assert "of app left in its cgroup by a killed supervisor" in down.stderr
        assert stack_cgroups(tmp_path) == []
    wait_for(lambda: not alive(hidden), timeout=5)


def test_a_tracking_mode_that_does_not_exist_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detached: Callable[..., CompletedProcess[str]]
) -> None:
    monkeypatch.setenv("STACKVISOR_TRACKING", "systemd")
    write_stack(tmp_path, f"services:\n  app:\n    command: {PY} -c 'print(1)'\n")
    up = detached(tmp_path)
    assert up.returncode == 1
    assert up.stderr.strip().endswith(
        "STACKVISOR_TRACKING must be one of auto, cgroup, marker (got 'systemd')"
    )
    assert supervisor_pid(tmp_path) is None


def test_a_service_that_forked_200_children_is_stopped_as_a_whole(
    tmp_path: Path, mode: str, detached: Callable[..., CompletedProcess[str]], escaped: list[int]
) -> None:
    write_program(tmp_path, "crowd.py", CROWD)
    write_stack(tmp_path, f"services:\n  crowd:\n    command: {PY} crowd.py {tmp_path / 'crowd'}\n")
    assert detached(tmp_path).returncode == 0
    escaped[:] = crowd = wait_for(lambda: read_pids(tmp_path / "crowd"))
    assert len(crowd) == 200
    used = wait_for(lambda: (r := resources(tmp_path)) and r["processes"] == 201 and r)
    assert used["memory_bytes"] > 0
    assert cli("stop", "crowd", cwd=tmp_path).returncode == 0
    wait_for(lambda: not any(alive(p) for p in crowd), timeout=10)


def test_status_and_metrics_say_what_each_service_uses(
    tmp_path: Path, mode: str, detached: Callable[..., CompletedProcess[str]]
) -> None:
    write_program(tmp_path, "idle.py", "import time\ntime.sleep(300)\n")
    write_stack(tmp_path, f"services:\n  app:\n    command: {PY} idle.py\n")
    assert detached(tmp_path).returncode == 0

    def shown() -> dict[str, Any]:
        return dict(json.loads(cli("status", "--json", cwd=tmp_path).stdout))

    assert shown()["tracking"] == mode

    # The first figures may be from before the exec: the shell that joins the cgroup.
    def python() -> bool:
        (app,) = shown()["services"]
        used = app["resources"] or {}
        return used.get("processes") == 1 and used.get("memory_bytes", 0) > 1 << 20  # an interpreter

    wait_for(python)
    plain = cli("status", cwd=tmp_path).stdout
    assert f"processes tracked by {mode}" in plain and "CPU" in plain and "MEM" in plain
    metrics = client(tmp_path).get("/metrics")
    assert 'stackvisor_service_memory_bytes{service="app"}' in metrics
    assert 'stackvisor_service_processes{service="app"} 1' in metrics


def test_a_tree_is_added_up_from_one_table() -> None:
    table = {
        10: procfs.Stat(1, 1.0, 100),
        11: procfs.Stat(10, 0.5, 50),
        12: procfs.Stat(11, 0.25, 25),
        20: procfs.Stat(1, 9.0, 900),  # not below 10
    }
    assert tree_usage(table, 10) == {"memory_bytes": 175, "cpu_seconds": 1.75, "processes": 3}
    assert tree_usage(table, 99) == {"memory_bytes": 0, "cpu_seconds": 0.0, "processes": 0}


def test_what_a_killed_supervisor_left_is_reported_once(
    tmp_path: Path, mode: str, detached: Callable[..., CompletedProcess[str]]
) -> None:
    """Two background jobs of a service whose supervisor was killed: each is ended once
    and said once (by its record, not again by its cgroup and by its supervisor's)."""
    write_stack(tmp_path, 'services:\n  app: {command: "sleep 300 & sleep 301 & touch started; wait"}\n')
    assert detached(tmp_path).returncode == 0
    wait_for((tmp_path / "started").exists)
    supervisor = supervisor_pid(tmp_path)
    assert supervisor is not None
    sleepers = [p for p in procfs.marked(f"{supervisor}-", prefix=True) if p.name() == "sleep"]
    assert len(sleepers) == 2
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: supervisor_pid(tmp_path) is None)
    try:
        down = cli("down", cwd=tmp_path)
        assert down.returncode == 0
        said = [line for line in down.stderr.splitlines() if "killed supervisor" in line]
        # The shell itself is named when it outlived the supervisor a moment (PDEATHSIG
        # is a signal, not an instant).
        (line,) = said
        assert re.fullmatch(
            r"ended (orphaned app \(pid \d+\) and 2 of its descendants|2 processes of app) "
            r"left by a killed supervisor",
            line,
        ), down.stderr
    finally:
        for proc in sleepers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
