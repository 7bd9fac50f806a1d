"""Process facts against real processes: start times, identity, liveness, ancestors,
descendants, process groups and environment markers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psutil
from conftest import Start, wait_for, zombie

from stackvisor.system import procfs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def no_such_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as fh:
        return int(fh.read()) + 1  # above the highest pid the kernel hands out


def test_pids_and_start_times(start: Start) -> None:
    child = start(SLEEPER)
    assert {os.getpid(), child.pid} <= set(procfs.pids())
    began = procfs.started(child.pid)
    assert began is not None and 0 <= procfs.uptime() - began < 60  # seconds since boot
    # For people, the wall-clock start: psutil's, give or take the second the clock may
    # have moved between the two reads of the boot time.
    shown = procfs.create_time(child.pid)
    assert shown is not None and abs(shown - psutil.Process(child.pid).create_time()) <= 1.0
    assert procfs.started(no_such_pid()) is None
    assert procfs.create_time(no_such_pid()) is None
    assert procfs.boot_id() == procfs.boot_id() != ""


def test_identity_does_not_move_with_the_wall_clock(start: Start, clock_step) -> None:
    """The boot time that wall-clock start times are built on is derived from the wall
    clock: after NTP steps it, psutil gives another create_time for the same process. A
    start recorded before must still name the same process, and no other."""
    child = start(SLEEPER)
    began = procfs.started(child.pid)
    shown = procfs.create_time(child.pid)
    assert began is not None and shown is not None
    clock_step(2.0)
    assert procfs.started(child.pid) == began
    assert procfs.same_process(child.pid, began)
    assert not procfs.same_process(child.pid, began - 0.5)
    moved = procfs.create_time(child.pid)
    assert moved is not None and abs(moved - shown - 2.0) < 0.01  # only what people see moves


def test_one_tolerance_for_start_times() -> None:
    started = 1_700_000_000.25
    assert procfs.same_start(started, started)
    assert procfs.same_start(started + 0.004, started)  # float rounding, not another process
    assert not procfs.same_start(started + 0.01, started)  # one clock tick apart: two processes


def test_same_process_is_alive_and_started_when_recorded(start: Start) -> None:
    sleeper = start(SLEEPER)
    began = procfs.started(sleeper.pid)
    assert began is not None
    assert procfs.same_process(sleeper.pid, began)
    assert procfs.same_process(sleeper.pid, None)  # no start time: alive is enough
    assert not procfs.same_process(sleeper.pid, began - 1.0)  # what a recycled pid looks like
    assert not procfs.same_process(no_such_pid(), None)
    quick = start([sys.executable, "-c", "pass"])
    wait_for(lambda: zombie(quick.pid))
    started = procfs.started(quick.pid)  # a zombie still has its start time
    assert started is not None
    assert not procfs.same_process(quick.pid, started)  # but it is gone for every purpose


def test_running_is_false_for_a_zombie_and_a_reaped_process(start: Start) -> None:
    child = start([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    proc = psutil.Process(child.pid)
    assert procfs.running(proc)
    assert child.stdin is not None
    child.stdin.close()  # it exits now, and stays a zombie until we wait for it
    wait_for(lambda: zombie(child.pid))
    assert not procfs.running(proc)
    child.wait(timeout=5)
    assert not procfs.running(proc)


def test_ancestors_and_descendants(start: Start) -> None:
    shell = start(["/bin/sh", "-c", "sleep 60 & wait"], own_group=True)
    wait_for(lambda: len(procfs.descendants(shell.pid)) == 1)
    (grandchild,) = procfs.descendants(shell.pid)
    assert {grandchild.pid, shell.pid, os.getpid(), os.getppid()} <= procfs.ancestors(grandchild.pid)
    assert {os.getpid(), os.getppid()} <= procfs.ancestors(os.getpid())
    assert grandchild.pid not in procfs.ancestors(os.getpid())
    assert procfs.ancestors(no_such_pid()) == {no_such_pid()}
    assert procfs.descendants(no_such_pid()) == []


def test_group_members_are_live_and_not_zombies(start: Start) -> None:
    shell = start(["/bin/sh", "-c", "sleep 60 & wait"], own_group=True)
    wait_for(lambda: len(procfs.group_members(shell.pid)) == 2)
    (sleeper,) = procfs.descendants(shell.pid)
    assert sorted(procfs.group_members(shell.pid)) == sorted([shell.pid, sleeper.pid])
    assert os.getpid() not in procfs.group_members(shell.pid)
    quick = start([sys.executable, "-c", "pass"], own_group=True)
    wait_for(lambda: zombie(quick.pid))
    assert procfs.group_members(quick.pid) == []  # its only member is a zombie


def test_marked_finds_exact_markers_and_prefixes(start: Start) -> None:
    stack = f"test-{uuid.uuid4().hex}"
    env = dict(os.environ)
    first = start(SLEEPER, env={**env, procfs.MARKER: f"{stack}/api/1"})
    tenth = start(SLEEPER, env={**env, procfs.MARKER: f"{stack}/api/10"})
    start(SLEEPER, env={**env, procfs.MARKER: f"other-{stack}/api/1"})
    assert [p.pid for p in procfs.marked(f"{stack}/api/1")] == [first.pid]
    assert [p.pid for p in procfs.marked(f"{stack}/api/")] == []  # exact unless prefix
    assert sorted(p.pid for p in procfs.marked(f"{stack}/", prefix=True)) == sorted([first.pid, tenth.pid])


def test_children_and_zombies_are_read_from_proc() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert child.pid in procfs.children(os.getpid())
        wait_for(lambda: procfs.zombie(child.pid))  # exited, not reaped yet
    finally:
        child.wait()
    assert not procfs.zombie(child.pid) and child.pid not in procfs.children(os.getpid())
    assert procfs.children(2**22 + 1) == []
