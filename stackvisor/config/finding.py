"""Finding the stack file: in the current folder or the nearest parent.

Light on purpose (no YAML, no pydantic): every command that talks to a running stack
starts here, and must start fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from stackvisor.errors import ConfigError

CONFIG_NAMES = ("services.yaml", "services.yml", "stackvisor.yaml")


def find_config(start: Path | None = None) -> Path:
    """The stack file in `start` (default: the current folder) or the nearest parent.

    Names are tried in the order of `CONFIG_NAMES`; a file given as `start` is
    returned as it is, so `-f path/to/stack.yaml` goes through the same call. A name
    that is there but is not a readable file (a folder, a pipe, a loop of links) is
    returned too, so that reading it says what is wrong; and in a folder where a stack
    ran, the file its supervisor recorded is found even while it is gone (an editor
    saving it by rename).
    """
    origin = Path(os.path.realpath(start or Path.cwd()))
    if origin.is_file():
        return origin
    for folder in (origin, *origin.parents):
        for name in CONFIG_NAMES:
            candidate = folder / name
            if os.path.lexists(candidate):
                return candidate
        if (recorded := _recorded_file(folder)) is not None:
            return recorded
    raise ConfigError(f"no services.yaml found in {origin} or its parents")


def _recorded_file(folder: Path) -> Path | None:
    """The stack file that `.stackvisor/stack.json` in `folder` names, when it is one of
    `folder`'s own (the record is trusted further only by `stackref`)."""
    try:
        with open(folder / ".stackvisor" / "stack.json", "rb") as fh:
            data = json.loads(fh.read(64 * 1024))
    except (OSError, ValueError):
        return None
    file = data.get("file") if isinstance(data, dict) else None
    if not isinstance(file, str) or Path(file).parent != folder or Path(file).name not in CONFIG_NAMES:
        return None
    return Path(file)
