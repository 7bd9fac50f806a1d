"""Watching files: the stack file and its env files (reload), and each service's `watch` globs.

One recursive watcher on the stack's folder (so editors that save by writing a
temporary file and renaming it are seen), debounced by watchfiles. Which changes
matter is decided by the pure `classify_changes`; the supervisor carries it out.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from stackvisor.config.schema import StackConfig

if TYPE_CHECKING:
    from stackvisor.runtime.supervisor import Supervisor

ALWAYS_IGNORED = frozenset({".git", "__pycache__", "node_modules", ".stackvisor", ".hypothesis"})
_TEMPORARY = re.compile(r"(~|\.sw[a-p]|\.tmp|\.swx|\.part|^\.#.*|^#.*#)$")


@lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob relative to the stack folder: `**` any depth, `*` and `?` within a name."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def config_files(config: StackConfig) -> set[Path]:
    """The files whose edit means a reload: the stack file, `.env`, every `env_file`."""
    root = config.root
    files = {config.path, root / ".env"}
    for svc in config.services.values():
        files.update((root / f).resolve() for f in svc.env_file)
    return files


@dataclass(frozen=True)
class Changes:
    reload: bool
    services: frozenset[str]


def classify_changes(config: StackConfig, paths: Iterable[Path], logs_dir: str) -> Changes:
    """Which of the changed paths ask for a reload, and which services they restart."""
    root = config.root
    reload_files = config_files(config)
    reload = False
    services: set[str] = set()
    for path in paths:
        if path in reload_files:
            reload = True
            continue
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        parts = rel.parts
        if not parts or ALWAYS_IGNORED.intersection(parts) or parts[0] == logs_dir.strip("/"):
            continue
        if _TEMPORARY.search(parts[-1]):
            continue
        text = rel.as_posix()
        for name, svc in config.services.items():
            if any(glob_regex(p.removeprefix("./")).match(text) for p in svc.watch):
                services.add(name)
    return Changes(reload, frozenset(services))


def _wanted(change: watchfiles.Change, path: str) -> bool:
    parts = Path(path).parts
    return not ALWAYS_IGNORED.intersection(parts)


async def watch_stack(sup: Supervisor) -> None:
    """Until cancelled: reload on edits of the stack's files, restart on `watch` matches."""
    debounce_ms = max(1, int(sup.config.settings.reload_debounce * 1000))
    async for batch in watchfiles.awatch(
        sup.config.root,
        watch_filter=_wanted,
        debounce=max(debounce_ms, 10),
        step=min(50, debounce_ms),
        recursive=True,
        ignore_permission_denied=True,
    ):
        # The path as watched (not resolved): symlinked folders are compared as given.
        changes = classify_changes(
            sup.config, {Path(p) for _, p in batch}, sup.config.settings.logs_dir
        )
        if changes.reload:
            await sup.reload(source="watch")
        watched = {n for n in changes.services if n in sup.runners and sup.runners[n].running}
        if watched:
            sup.logger.info(f"files changed: restarting {', '.join(sorted(watched))}")
            try:
                await sup.restart_services(sorted(watched))
            except sup.Conflict:
                return
        await asyncio.sleep(0)
