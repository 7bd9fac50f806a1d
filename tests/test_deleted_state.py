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
