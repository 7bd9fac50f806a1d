"""The signal gate against real processes: whom it refuses, whom it lets through.

Refusals that concern this very test process, its ancestors or its process group
are checked with signal 0, which delivers nothing: a gate that let one through
would report success without harming the test run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys

import psutil
import pytest
from conftest import Start, wait_for

from stackvisor.system import procfs
from stackvisor.system.signals import SignalGate

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
NOBODY = 65534


def gone(proc: psutil.Process) -> bool:
    return not procfs.running(proc)


def test_pid_1_the_supervisor_and_its_ancestors_are_refused() -> None:
    gate = SignalGate()
    lineage = procfs.ancestors(os.getpid())
    assert {0, 1, os.getpid(), os.getppid()} | lineage <= gate.protected_pids()
    for pid in {0, 1, os.getpid(), os.getppid()} | lineage:
        assert not gate.may_signal(pid)
        assert not gate.may_signal(pid, ours=True)  # whatever the caller claims
        assert not gate.send(pid, 0, ours=True)
    assert not gate.send(-os.getpgrp(), 0)  # kill() with a negative pid is a group


def test_another_users_process_is_refused_unless_proved_ours(start: Start) -> None:
    if shutil.which("runuser") is None or os.getuid() != 0:
        pytest.skip("needs root and runuser")
    runuser = start(["runuser", "-u", "nobody", "--", "sleep", "30"], own_group=True)

    def sleeper() -> psutil.Process | None:
        family = [runuser.pid, *(p.pid for p in procfs.descendants(runuser.pid))]
        for pid in family:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.uids().real == NOBODY and proc.name() == "sleep":
                    return proc
        return None

    wait_for(lambda: sleeper() is not None)
    target = sleeper()
    assert target is not None
    gate = SignalGate()
    assert not gate.may_signal(target.pid)
    assert not gate.send(target.pid, signal.SIGTERM)
    assert procfs.running(target)
    # A descendant of ours that switched user may be ended when the caller proved it ours.
    assert gate.may_signal(target.pid, ours=True)
    assert gate.send(target.pid, signal.SIGTERM, ours=True)
    wait_for(lambda: gone(target))


def test_our_own_child_may_be_signalled(start: Start) -> None:
    child = start(SLEEPER, own_group=True)
    gate = SignalGate()
    assert gate.may_signal(child.pid)
    assert gate.send(child.pid, signal.SIGTERM)
    assert child.wait(timeout=5) == -signal.SIGTERM


def test_send_group_signals_a_group_we_lead_but_never_our_own(start: Start) -> None:
    gate = SignalGate()
    assert not gate.send_group(os.getpgrp(), 0)
    assert not gate.send_group(1, 0)
    assert not gate.send_group(os.getppid(), 0)  # an ancestor's number, whoever leads it
    shell = start(["/bin/sh", "-c", "sleep 60 & wait"], own_group=True)
    wait_for(lambda: len(procfs.group_members(shell.pid)) == 2)
    (member,) = procfs.descendants(shell.pid)
    assert gate.send_group(shell.pid, signal.SIGTERM)
    assert shell.wait(timeout=5) is not None
    wait_for(lambda: gone(member))


def test_kill_all_kills_what_still_runs(start: Start) -> None:
    children = [start(SLEEPER, own_group=True), start(SLEEPER, own_group=True)]
    procs = [psutil.Process(c.pid) for c in children]
    children[0].kill()
    children[0].wait(timeout=5)  # reaped: its psutil handle no longer names a process
    SignalGate().kill_all(procs)
    assert children[1].wait(timeout=5) == -signal.SIGKILL


def test_the_ancestors_are_read_again_after_a_fork() -> None:
    gate = SignalGate()
    before = gate.protected_pids()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what the gate protects there, then leave at once
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(sorted(gate.protected_pids())).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            ready, _, _ = select.select([pipe], [], [], 10.0)
            seen = set(json.loads(pipe.read() or b"[]")) if ready else set()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # only if it hung; it is ours and not reaped yet
        os.waitpid(pid, 0)
    assert pid not in before
    assert {pid, os.getpid()} | before <= seen
