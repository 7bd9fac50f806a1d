"""A state.db full of garbage is moved aside with a warning; history, up and down carry on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stackvisor.cli import main
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


def test_history_up_and_down_work_over_a_corrupt_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(f"services:\n  a: {{command: {sys.executable} -c 'import time; time.sleep(300)'}}\n")
    monkeypatch.chdir(tmp_path)
    garbage(tmp_path)
    assert main(["history"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "moved to state.db.corrupt-" in err and "Traceback" not in err
    garbage(tmp_path)
    config = load_config(path)
    try:
        started = ops.detach(config, [])
        assert started.ok, started.message
    finally:
        result = ops.down(config, timeout=30)
    assert result.was_running and ops.supervisor_pid(config) is None
    assert len(list((tmp_path / ".stackvisor").glob("state.db.corrupt-*"))) >= 1
