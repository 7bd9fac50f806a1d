"""`stackvisor run` killed with SIGKILL leaves nothing: not the stack, not the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from stackvisor.config import load_config
from stackvisor.control import ops

REPO = Path(__file__).resolve().parent.parent


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_sigkilled_run_takes_its_command_and_the_stack_along(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(
        f"services:\n  a: {{command: {sys.executable} -c 'import time; time.sleep(300)'}}\n"
    )
    config = load_config(tmp_path / "services.yaml")
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    run = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "run", "--", "sleep", "300"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sleeper: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 30
        while sleeper is None:
            assert time.monotonic() < deadline, "the command never started"
            found = [p for p in psutil.Process(run.pid).children(recursive=True) if p.name() == "sleep"]
            sleeper = found[0] if found else None
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        deadline = time.monotonic() + 10
        while alive(sleeper):
            assert time.monotonic() < deadline, "the command outlived a SIGKILLed run"
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while ops.supervisor_pid(config) is not None:
            assert time.monotonic() < deadline, "the stack outlived a SIGKILLed run"
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if sleeper is not None and sleeper.is_running():
            sleeper.kill()
        ops.down(config, timeout=30)
