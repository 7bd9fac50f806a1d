"""Reaping: only a subreaper spawner collects zombies, and never one of its own children."""

from __future__ import annotations

import sys

import psutil
from conftest import Start, async_wait_for, wait_for, zombie

from stackvisor.runtime.process import Spawner
from stackvisor.system.signals import SignalGate


def test_an_embedded_spawner_leaves_the_host_programs_children_alone(start: Start) -> None:
    proc = start([sys.executable, "-c", "raise SystemExit(7)"])
    wait_for(lambda: zombie(proc.pid))
    assert Spawner(SignalGate()).reap_orphans() == []
    assert proc.wait(5) == 7  # the exit status is still the host program's to read


async def test_a_subreaper_spawner_reaps_orphans_but_not_its_own_children(start: Start) -> None:
    spawner = Spawner(SignalGate(), subreaper=True)
    child = await spawner.spawn(
        [sys.executable, "-c", "import time; time.sleep(30)"], env={}, cwd=None, marker="test/own/1"
    )
    try:
        stray = start([sys.executable, "-c", "raise SystemExit(3)"])
        await async_wait_for(lambda: zombie(stray.pid))
        assert spawner.reap_orphans() == [stray.pid]
        assert psutil.pid_exists(child.pid) and child.alive
    finally:
        child.kill_now()
        await child.wait()
