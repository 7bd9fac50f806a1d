"""state.db is never written through a link, even one planted in a folder of ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stackvisor.errors import UnsafePath
from stackvisor.runtime.state import StateDB


@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_a_link_in_place_of_state_db_is_refused(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"someone's data")
    state = tmp_path / ".stackvisor" / "state.db"
    state.parent.mkdir(mode=0o700)
    Path(f"{state}{suffix}").symlink_to(target)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        StateDB.open(state, os.getpid())
    assert target.read_bytes() == b"someone's data"
