"""`rm -rf .stackvisor` under a running stack (what `git clean -fdx` does): the lock cannot be
lost, the files come back, and `down` still stops everything."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from stackvisor.config import load_config
from stackvisor.control import ops
from stackvisor.control.client import Client
from stackvisor.paths import StackPaths
from stackvisor.system import procfs

# A grandchild in a session of its own: it outlives the service's death with the
# supervisor, and only the records in state.db lead `down` to it.
STACK = "services:\n  a: {command: \"sh -c 'setsid sleep 300 & wait'\"}\n"


def test_deleting_the_state_folder_loses_neither_the_lock_nor_the_stack(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(STACK)
    config = load_config(tmp_path / "services.yaml")
    paths = StackPaths.at(tmp_path)
    first = ops.detach(config, [])
    assert first.ok and first.pid is not None
    try:
        shutil.rmtree(paths.state_dir)
        # Nobody can take the stack over meanwhile: the lock is not a file.
        assert ops.supervisor_pid(config) == first.pid
        second = ops.detach(config, [])
        assert not second.ok and second.pid == first.pid
        # The supervisor makes its files again, and answers.
        deadline = time.monotonic() + 10
        while not (paths.socket.exists() and paths.state_db.exists() and paths.lock.exists()):
            assert time.monotonic() < deadline, "the state folder was not made again"
            time.sleep(0.05)
        assert Client(paths.socket, timeout=5).get("/v1/status")["pid"] == first.pid
        # What the new state.db knows is enough to clean up after a SIGKILL.
        os.kill(first.pid, signal.SIGKILL)
        while ops.supervisor_pid(config) is not None:
            assert time.monotonic() < deadline + 10, "the killed supervisor kept its lock"
            time.sleep(0.02)
    finally:
        result = ops.down(config, timeout=30)
    assert result.ended and procfs.marked(f"{first.pid}-", prefix=True) == []


def test_a_deleted_logs_folder_is_made_again_and_written(tmp_path: Path) -> None:
    """`git clean -fdx` takes logs/ too: the supervisor makes it again, and the services'
    output goes on into it (the folder it held is gone with its files)."""
    chatty = "import time\\nwhile True: print('line', flush=True); time.sleep(0.02)"
    (tmp_path / "services.yaml").write_text(f'services:\n  chatty:\n    command: [python3, -c, "{chatty}"]\n')
    config = load_config(tmp_path / "services.yaml")
    paths = StackPaths.at(tmp_path)
    assert ops.detach(config, []).ok
    try:
        log = paths.service_log("chatty")
        deadline = time.monotonic() + 10
        while not (log.exists() and log.stat().st_size):
            assert time.monotonic() < deadline, "no log"
            time.sleep(0.02)
        shutil.rmtree(paths.logs)
        deadline = time.monotonic() + 10
        while not (log.exists() and "line" in log.read_text()):
            assert time.monotonic() < deadline, "the logs folder was not made again, or not written"
            time.sleep(0.05)
        assert paths.logs.stat().st_mode & 0o777 == 0o700
    finally:
        ops.down(config, timeout=30)


def test_the_stack_is_found_while_its_file_is_gone_or_not_a_file(tmp_path: Path) -> None:
    """An editor that saves by rename leaves a moment with no services.yaml; a mistake
    can leave a folder in its place: `status` and `down` from the stack's folder still
    find the running stack (its supervisor recorded which file it runs)."""
    import subprocess
    import sys

    path = tmp_path / "services.yaml"
    path.write_text(STACK)
    config = load_config(path)
    assert ops.detach(config, []).ok
    try:
        path.unlink()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "stackvisor", *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )

        status = cli("status")
        assert status.returncode == 0 and "a " in status.stdout, status.stderr
        path.mkdir()
        assert cli("status").returncode == 0
        down = cli("down")
        assert down.returncode == 0 and "stopped" in down.stderr, down.stderr
    finally:
        if path.is_dir():
            path.rmdir()
        path.write_text(STACK)
        ops.down(config, timeout=30)
