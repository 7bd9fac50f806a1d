"""Reaping: only a subreaper spawner collects zombies, and never one of its own children."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from stackvisor.runtime.process import Spawner
from stackvisor.system.signals import SignalGate


def zombie_child(code: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return proc


def test_an_embedded_spawner_leaves_the_host_programs_children_alone() -> None:
    proc = zombie_child(7)
    try:
        assert Spawner(SignalGate()).reap_orphans() == []
        assert proc.wait(5) == 7  # the exit status is still the host program's to read
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_subreaper_spawner_reaps_orphans_but_not_its_own_children() -> None:
    spawner = Spawner(SignalGate(), subreaper=True)
    child = await spawner.spawn(
        [sys.executable, "-c", "import time; time.sleep(30)"], env={}, cwd=None, marker="test/own/1"
    )
    stray = zombie_child(3)
    try:
        assert spawner.reap_orphans() == [stray.pid]
        assert psutil.pid_exists(child.pid) and child.alive
    finally:
        child.kill_now()
        await child.wait()
        if stray.poll() is None:
            stray.kill()
