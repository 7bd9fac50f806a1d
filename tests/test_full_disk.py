"""A log file that cannot be written (a full disk) loses lines, never supervision or the tail.

The disk is real: a 64 KB tmpfs, filled up (the tests run as root, as CI does).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackvisor.runtime.logs import Console, RotatingFile, ServiceLog


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(disk)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as fh:
            while True:
                fh.write(b"x" * 4096)
                fh.flush()
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_the_tail_and_followers_are_fed_before_a_failing_file(full_disk: Path) -> None:
    errors: list[str] = []
    file = RotatingFile(full_disk / "api.log", 1 << 30, 0, on_error=errors.append)
    log = ServiceLog("api", file, Console(None, colour=False))
    seen: list[str] = []
    log.listeners.add(seen.append)
    log.feed(b"ready on 8000\nsecond\n")
    log.feed(b"third\n")
    assert log.last(3) == ["ready on 8000", "second", "third"]
    assert seen == ["ready on 8000", "second", "third"]
    # Reported once, not once per write: the next report comes a minute later.
    assert errors == [f"{full_disk / 'api.log'}: cannot write (No space left on device); 2 lines lost so far"]
    log.close()


def test_a_failing_file_is_reported_again_after_a_minute_with_the_count(full_disk: Path) -> None:
    errors: list[str] = []
    file = RotatingFile(full_disk / "api.log", 1 << 30, 0, on_error=errors.append)
    file.write(b"a\n")
    assert file._reported_at is not None
    file._reported_at = time.monotonic() - RotatingFile.REPORT_EVERY  # a minute has passed
    file.write(b"b\nc\n")
    assert (
        errors[-1] == f"{full_disk / 'api.log'}: cannot write (No space left on device); 3 lines lost so far"
    )
    file.close()


def test_writing_again_after_room_is_made_says_what_was_lost(full_disk: Path) -> None:
    errors: list[str] = []
    file = RotatingFile(full_disk / "api.log", 1 << 30, 0, on_error=errors.append)
    file.write(b"lost\n")
    (full_disk / "filler").unlink()  # the disk has room again
    file.write(b"kept\n")
    assert (full_disk / "api.log").read_bytes() == b"kept\n"
    assert errors[-1] == f"{full_disk / 'api.log'}: writing again; 1 lines were lost"
    file.close()
