"""Where a running stack is found from its file alone, fast: what `status`, `ps`,
`logs` and `down` need before they can ask the supervisor anything.

The supervisor records, in `.stackvisor/stack.json`, the file it runs, its name, the
socket it listens on, its logs folder and its services: written when it starts and after
every reload that applied. A command reads that record when it names the same file, so
it needs neither the YAML parser nor the schema, and it finds the supervisor also while
the file is mid-edit or broken (the supervisor keeps its last good configuration, and so
do we). Without a record it reads the YAML alone when that is enough, and the whole
loader otherwise.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from stackvisor.paths import StackPaths, stack_paths

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig

_MAX_RECORD = 4 * 1024 * 1024


class StackRef(NamedTuple):
    """Where a stack's supervisor is found: enough to talk to it even if its file is broken.

    `status`, `down`, `logs` must work while the file is mid-edit: the running
    supervisor keeps its last good configuration, and so must we.
    """

    path: Path
    name: str
    paths: StackPaths
    services: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        return self.path.parent

    @classmethod
    def of(cls, config: StackConfig) -> StackRef:
        return cls(config.path, config.name, stack_paths(config), tuple(config.services))

    @classmethod
    def locate(cls, path: Path) -> StackRef:
        path = Path(os.path.realpath(path))  # a loop of links stays: reading it says so
        quick = cls._recorded(path) or cls._read_quickly(path)
        if quick is not None:
            return quick
        from stackvisor.config.loader import load_config
        from stackvisor.errors import ConfigError

        try:
            return cls.of(load_config(path))
        except ConfigError:
            return cls(path, path.parent.name, StackPaths.at(path.parent))

    @classmethod
    def _recorded(cls, path: Path) -> StackRef | None:
        """What the supervisor of `path` last recorded (see `record`), when it is ours to
        trust: a regular file of our own user that nobody else may write."""
        try:
            fd = os.open(StackPaths.at(path.parent).record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
                return None
            raw = fh.read(_MAX_RECORD + 1)
        try:
            data = json.loads(raw) if len(raw) <= _MAX_RECORD else None
            if not isinstance(data, dict) or data.get("file") != str(path):
                return None
            services = data["services"]
            if not isinstance(services, list) or not all(isinstance(n, str) for n in services):
                return None
            paths = StackPaths(path.parent, Path(data["socket"]), Path(data["logs"]))
            return cls(path, str(data["name"]), paths, tuple(services))
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def _read_quickly(cls, path: Path) -> StackRef | None:
        """The same, from the YAML alone when that is enough: no schema to load, which
        is most of a command's time (`status`, `logs`, `down`). None when the file
        needs the full loader: it includes others, a value the paths depend on is
        interpolated, or it is not a plain mapping."""
        import yaml

        from stackvisor.config.textfile import NotText, read_text

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            data = yaml.load(read_text(path, 10 * 1024 * 1024, "a stack file"), Loader=loader)
        except (OSError, NotText, yaml.YAMLError):
            return None
        if not isinstance(data, dict) or "include" in data or not isinstance(data.get("services"), dict):
            return None
        settings = data.get("settings") or {}
        control = settings.get("control") or {} if isinstance(settings, dict) else None
        if not isinstance(settings, dict) or not isinstance(control, dict):
            return None
        name, socket, logs = data.get("name"), control.get("socket"), settings.get("logs_dir")
        chosen = [v for v in (name, socket, logs) if v is not None]
        if not all(isinstance(v, str) and "$" not in v for v in chosen):
            return None
        paths = StackPaths.at(path.parent, **{k: v for k, v in (("socket", socket), ("logs", logs)) if v})
        return cls(path, name or path.parent.name, paths, tuple(str(n) for n in data["services"]))


def record(config: StackConfig, paths: StackPaths) -> None:
    """Write what `StackRef.locate` reads for `config`, run with `paths` (0600, replaced
    at once: a reader sees the old record or the new one, never half of one)."""
    data = {
        "file": str(config.path),
        "name": config.name,
        "socket": str(paths.socket),
        "logs": str(paths.logs),
        "services": list(config.services),
    }
    target = paths.record
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
