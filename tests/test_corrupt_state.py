"""A state.db full of garbage is moved aside with a warning; history, up and down carry on."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import SLEEP, cli, supervisor_pid, write_stack

from stackvisor.config import load_config
from stackvisor.control import ops
from stackvisor.paths import StackPaths
from stackvisor.runtime.state import StateDB


def garbage(root: Path) -> Path:
    state = StackPaths.at(root).state_db
    state.parent.mkdir(mode=0o700, exist_ok=True)
    state.write_bytes(os.urandom(8192))
    return state


def test_the_database_is_moved_aside_and_a_fresh_one_made(tmp_path: Path) -> None:
    state = garbage(tmp_path)
    db = StateDB.open(state, os.getpid())
    try:
        assert db.moved_aside is not None and db.moved_aside.name.startswith("state.db.corrupt-")
        assert db.moved_aside.exists() and db.live_children() == []
        assert "could not be read: moved to state.db.corrupt-" in (db.recovery_note() or "")
    finally:
        db.close()
    again = StateDB.open(state, os.getpid())
    assert again.moved_aside is None
    again.close()


def test_history_up_and_down_work_over_a_corrupt_database(tmp_path: Path, detached) -> None:
    path = write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    garbage(tmp_path)
    history = cli("history", cwd=tmp_path)
    assert history.returncode == 0
    err = history.stderr
    assert "warning:" in err and "moved to state.db.corrupt-" in err and "Traceback" not in err
    garbage(tmp_path)
    up = detached(tmp_path, wait=False)
    assert up.returncode == 0, up.stderr
    result = ops.down(load_config(path), timeout=30)
    assert result.was_running and supervisor_pid(tmp_path) is None
    assert len(list((tmp_path / ".stackvisor").glob("state.db.corrupt-*"))) >= 1
