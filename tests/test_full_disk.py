"""A log file that cannot be written (a full disk) loses lines, never supervision or the tail."""

from __future__ import annotations

import time
from pathlib import Path

from stackvisor.runtime.logs import Console, RotatingFile, ServiceLog

FULL = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk


def test_the_tail_and_followers_are_fed_before_a_failing_file() -> None:
    errors: list[str] = []
    log = ServiceLog(
        "api", RotatingFile(FULL, 1 << 30, 0, on_error=errors.append), Console(None, colour=False)
    )
    seen: list[str] = []
    log.listeners.add(seen.append)
    log.feed(b"ready on 8000\nsecond\n")
    log.feed(b"third\n")
    assert log.last(3) == ["ready on 8000", "second", "third"]
    assert seen == ["ready on 8000", "second", "third"]
    # Reported once, not once per write: the next report comes a minute later.
    assert errors == [f"{FULL}: cannot write (No space left on device); 2 lines lost so far"]


def test_a_failing_file_is_reported_again_after_a_minute_with_the_count(tmp_path: Path) -> None:
    errors: list[str] = []
    file = RotatingFile(FULL, 1 << 30, 0, on_error=errors.append)
    file.write(b"a\n")
    assert file._reported_at is not None
    file._reported_at = time.monotonic() - RotatingFile.REPORT_EVERY  # a minute has passed
    file.write(b"b\nc\n")
    assert errors[-1] == f"{FULL}: cannot write (No space left on device); 3 lines lost so far"


def test_writing_again_after_a_failure_says_what_was_lost(tmp_path: Path) -> None:
    errors: list[str] = []
    file = RotatingFile(tmp_path / "api.log", 1 << 30, 0, on_error=errors.append)
    file.path = FULL
    file.write(b"lost\n")
    file.path = tmp_path / "api.log"  # the disk has room again
    file.write(b"kept\n")
    assert (tmp_path / "api.log").read_bytes() == b"kept\n"
    assert errors[-1] == f"{tmp_path / 'api.log'}: writing again; 1 lines were lost"
    file.close()
