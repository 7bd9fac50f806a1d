"""Reading the small text files a stack is made of (stack files, included and extended
files, env files, files to import), whatever their path names: a named pipe is not
waited on, a device is not read, nothing larger than the limit is read in, and what is
not UTF-8 is refused — each with a message that says which.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

NUL = "a NUL character: no program can be given one (in its arguments or environment)"


class NotText(ValueError):
    """The file is there, but is not a text file we read (the message says why)."""


def read_text(path: Path | str, limit: int, kind: str) -> str:
    """The file's text. `kind` names what it should be, for the messages ("a stack
    file"). OSError when it cannot be opened (FileNotFoundError when missing)."""
    # O_NONBLOCK: opening a named pipe must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise NotText("is a folder, expected a file")
        if not stat.S_ISREG(mode):
            raise NotText(f"not a regular file (a pipe or a device); {kind} must be one")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise NotText(f"larger than {limit // (1024 * 1024)} MB; {kind} may not be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotText(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def real(path: Path | str) -> Path:
    """`path` made absolute with its links followed; a loop of links is left as it is
    (reading it then fails with a message, where `Path.resolve` would raise)."""
    return Path(os.path.realpath(path))
