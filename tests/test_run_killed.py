"""`stackvisor run` killed with SIGKILL leaves nothing: not the stack, not the command."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
from conftest import SLEEP, child_env, end_stack, kill_tree, supervisor_pid, wait_for, write_stack

from stackvisor.system import procfs


def test_a_sigkilled_run_takes_its_command_and_the_stack_along(tmp_path: Path) -> None:
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    run = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "run", "--", "sleep", "300"],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sleeper: psutil.Process | None = None
    try:

        def the_command() -> psutil.Process | None:
            found = [p for p in psutil.Process(run.pid).children(recursive=True) if p.name() == "sleep"]
            return found[0] if found else None

        sleeper = wait_for(the_command, timeout=30)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        wait_for(lambda: not procfs.running(sleeper), timeout=10)  # the command went along
        wait_for(lambda: supervisor_pid(tmp_path) is None, timeout=30)  # and so did the stack
    finally:
        kill_tree(run.pid)
        run.wait()
        if sleeper is not None:
            kill_tree(sleeper.pid)
        end_stack(tmp_path)


def test_a_sigkilled_run_takes_what_its_command_started_along(tmp_path: Path) -> None:
    """The command is a shell that starts a process in a session of its own and another
    in the background: PDEATHSIG reaches only the shell, so the stack's supervisor, which
    `run` asked to end with it, ends the rest (they carry `run`'s marker)."""
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    script = "setsid sleep 301 & sleep 302 & touch started; wait"
    run = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "run", "--", "sh", "-c", script],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    left: list[psutil.Process] = []
    try:
        wait_for((tmp_path / "started").exists, timeout=30)
        marker = f"run-{run.pid}"

        def sleepers() -> list[psutil.Process] | None:
            found = [p for p in procfs.marked(marker) if p.name() == "sleep"]
            return found if len(found) == 2 else None

        left = wait_for(sleepers)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        wait_for(lambda: not any(procfs.running(p) for p in left), timeout=15)
        wait_for(lambda: supervisor_pid(tmp_path) is None, timeout=30)
    finally:
        kill_tree(run.pid)
        run.wait()
        for proc in left:
            kill_tree(proc.pid)
        end_stack(tmp_path)
