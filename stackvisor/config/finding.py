"""Finding the stack file: in the current folder or the nearest parent.

Light on purpose (no YAML, no pydantic): every command that talks to a running stack
starts here, and must start fast.
"""

from __future__ import annotations

from pathlib import Path

from stackvisor.errors import ConfigError

CONFIG_NAMES = ("services.yaml", "services.yml", "stackvisor.yaml")


def find_config(start: Path | None = None) -> Path:
    """The stack file in `start` (default: the current folder) or the nearest parent.

    Names are tried in the order of `CONFIG_NAMES`; a file given as `start` is
    returned as it is, so `-f path/to/stack.yaml` goes through the same call.
    """
    origin = (start or Path.cwd()).resolve()
    if origin.is_file():
        return origin
    for folder in (origin, *origin.parents):
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    raise ConfigError(f"no services.yaml found in {origin} or its parents")
