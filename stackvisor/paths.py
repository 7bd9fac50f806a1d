"""Where a stack keeps its files: one `StackPaths` value, built from the stack file.

`.stackvisor/` beside the stack file holds what belongs to the running supervisor
(the lock, state.db, the control socket, the TCP token); the logs folder holds the
services' output. Every module asks a `StackPaths` for these paths; none builds them
by hand. Pure: nothing here touches the disk.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig

STATE_DIR = ".stackvisor"
DEFAULT_SOCKET = f"{STATE_DIR}/control.sock"
DEFAULT_LOGS = "logs"


class StackPaths(NamedTuple):
    """The files of one stack. `socket` and `logs` follow the stack's settings."""

    root: Path
    socket: Path
    logs: Path

    @classmethod
    def at(cls, root: Path, *, socket: str = DEFAULT_SOCKET, logs: str = DEFAULT_LOGS) -> StackPaths:
        configured = Path(socket)
        return cls(
            root=root,
            socket=configured if configured.is_absolute() else root / configured,
            logs=root / logs,
        )

    @property
    def own_logs(self) -> bool:
        """The logs folder is the stack's own, inside its folder (given the logs' mode);
        one elsewhere (`logs_dir: /tmp`) keeps the mode it has."""
        logs = Path(os.path.normpath(self.logs))
        return logs != self.root and logs.is_relative_to(self.root)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def lock(self) -> Path:
        return self.state_dir / "lock"

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def record(self) -> Path:
        """Where the supervisor says which file it runs and where its socket is."""
        return self.state_dir / "stack.json"

    @property
    def token(self) -> Path:
        return self.state_dir / "token"

    @property
    def cgroup_name(self) -> str:
        """The stack's cgroup folder name: its folder's name (readable in `systemd-cgls`)
        and a hash of its path (unique: one stack per folder, as the lock)."""
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", self.root.name)[:40].lstrip(".") or "stack"
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return f"{readable}-{digest}"

    def service_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def supervisor_log(self) -> Path:
        """The supervisor's own log, as JSON lines."""
        return self.logs / "stackvisor.log"

    @property
    def detached_output(self) -> Path:
        """What a detached supervisor writes to stdout and stderr."""
        return self.logs / "stackvisor.out"


def stack_paths(config: StackConfig) -> StackPaths:
    """The paths of a loaded stack, after its `control.socket` and `logs_dir` settings."""
    settings = config.settings
    return StackPaths.at(config.root, socket=settings.control.socket, logs=settings.logs_dir)
