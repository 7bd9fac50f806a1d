"""Watching files: the stack file and its env files (reload), and each service's `watch` globs.

Folders are watched, not files, so editors that save by writing a temporary file
and renaming it are seen. The folders of the stack file and its env files are
watched flat; only the fixed start of each `watch` glob (`api/` for
`api/**/*.py`) recursively, so a busy `logs/` or a large `node_modules/` beside
the stack costs nothing. Which changes matter is decided by the pure
`classify_changes`; the supervisor carries it out.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import watchfiles

from stackvisor.config.schema import StackConfig
from stackvisor.errors import ActionConflict
from stackvisor.runtime.events import EventBus, WatchFailed
from stackvisor.runtime.status import ReloadResult


class Signalled(Protocol):
    def send_signal(self, sig: int) -> int | None: ...


class WatchedStack(Protocol):
    """What file watching needs of the running stack."""

    config: StackConfig
    bus: EventBus
    logger: Any
    last_reload: ReloadResult | None

    @property
    def runners(self) -> Mapping[str, Signalled]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def stop_event(self) -> asyncio.Event: ...

    def is_running(self, name: str) -> bool: ...

    def has_completed(self, name: str) -> bool: ...

    async def reload(self, *, dry_run: bool = False, source: str = "request") -> ReloadResult: ...

    async def restart_services(self, names: Sequence[str]) -> None: ...


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


def _inside(path: Path, folder: Path) -> bool:
    """`logs_dir: ./logs` and `logs` are one folder: compare normalised paths."""
    return Path(os.path.normpath(path)).is_relative_to(os.path.normpath(folder))


def config_files(config: StackConfig) -> set[Path]:
    """The files whose edit means a reload: the stack file, `.env`, every `env_file`."""
    root = config.root
    files = {config.path, root / ".env"}
    for svc in config.services.values():
        files.update((root / f.path).resolve() for f in svc.env_file)
    return files


@dataclass(frozen=True)
class Changes:
    reload: bool
    services: frozenset[str]  # to restart (or run again)
    any: bool = False  # some relevant file changed (not a temporary one, not in logs)
    signals: Mapping[str, str] = field(default_factory=dict)  # service -> signal name to send


def classify_changes(config: StackConfig, paths: Iterable[Path], logs_dir: str) -> Changes:
    """Which of the changed paths ask for a reload, and which services they restart."""
    root = config.root
    reload_files = config_files(config)
    reload = False
    services: set[str] = set()
    signals: dict[str, str] = {}
    relevant = False
    for path in paths:
        if path in reload_files:
            reload = True
            continue
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        parts = rel.parts
        if not parts or ALWAYS_IGNORED.intersection(parts) or _inside(path, root / logs_dir):
            continue
        if _TEMPORARY.search(parts[-1]):
            continue
        relevant = True
        text = rel.as_posix()
        for name, svc in config.services.items():
            for entry in svc.watch:
                if not glob_regex(entry.path.removeprefix("./")).match(text):
                    continue
                if entry.signal is None:
                    services.add(name)
                else:
                    signals.setdefault(name, entry.signal)
    # A restart covers a signal for the same change.
    signals = {n: s for n, s in signals.items() if n not in services}
    return Changes(reload, frozenset(services), reload or relevant, signals)


def glob_base(root: Path, pattern: str) -> Path:
    """The folder a glob cannot reach outside of: its parts before the first wildcard."""
    fixed = []
    for part in Path(pattern.removeprefix("./")).parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return root.joinpath(*fixed)


@dataclass(frozen=True)
class WatchTargets:
    flat: frozenset[Path]
    recursive: frozenset[Path]


def watch_targets(config: StackConfig) -> WatchTargets:
    recursive = {glob_base(config.root, w.path) for svc in config.services.values() for w in svc.watch}
    # A folder inside another recursively watched one is already covered.
    recursive = {p for p in recursive if not any(o != p and o in p.parents for o in recursive)}
    flat = {f.parent for f in config_files(config)} - recursive
    flat = {p for p in flat if not any(o in p.parents for o in recursive)}
    return WatchTargets(frozenset(flat), frozenset(recursive))


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _wanted(change: watchfiles.Change, path: str) -> bool:
    return not ALWAYS_IGNORED.intersection(Path(path).parts)


async def watch_stack(sup: WatchedStack) -> None:
    """Until the stack stops: reload on edits of its files, restart on `watch` matches.

    The watched folders follow the configuration: after a reload that changes
    them, the watchers start again on the new set.
    """
    while not sup.stopping:
        targets = watch_targets(sup.config)
        restart = asyncio.Event()
        failed: list[str] = []
        try:
            async with asyncio.TaskGroup() as tg:
                batches: asyncio.Queue[set[tuple[watchfiles.Change, str]]] = asyncio.Queue()
                for paths, recursive in ((targets.flat, False), (targets.recursive, True)):
                    if paths:
                        tg.create_task(_watch(sup, paths, recursive, batches, restart))
                tg.create_task(_handle(sup, batches, targets, restart))
        except* Exception as group:  # noqa: BLE001 - file watching must never take the stack down
            failed += [f"{type(e).__name__}: {e}" for e in group.exceptions]
        if failed:
            # inotify limits, a vanished folder: reload-on-edit is lost, the stack is not.
            error = "; ".join(failed)
            sup.logger.error(f"watching files stopped: {error}")
            sup.bus.publish(WatchFailed(error))
            return


async def _watch(
    sup: WatchedStack,
    paths: frozenset[Path],
    recursive: bool,
    batches: asyncio.Queue[set[tuple[watchfiles.Change, str]]],
    restart: asyncio.Event,
) -> None:
    debounce_ms = max(10, int(sup.config.settings.reload_debounce * 1000))
    stop = _AnyEvent(sup.stop_event, restart)
    async for batch in watchfiles.awatch(
        *sorted({_existing(p) for p in paths}),
        watch_filter=_wanted,
        debounce=debounce_ms,
        # watchfiles takes the GIL once per step even when nothing changes: the step is
        # the price of idle CPU against the delay before an edit is noticed.
        step=max(debounce_ms, 100),
        recursive=recursive,
        stop_event=stop,
        ignore_permission_denied=True,
    ):
        await batches.put(batch)


async def _handle(
    sup: WatchedStack,
    batches: asyncio.Queue[set[tuple[watchfiles.Change, str]]],
    targets: WatchTargets,
    restart: asyncio.Event,
) -> None:
    stopped = asyncio.ensure_future(sup.stop_event.wait())
    # A reload from elsewhere (`stackvisor reload`, the API) may change what to watch.
    reloads = sup.bus.subscribe()
    try:
        while True:
            getter = asyncio.ensure_future(batches.get())
            reloaded = asyncio.ensure_future(reloads.get())
            await asyncio.wait({getter, stopped, reloaded}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if stopped.done() or _moved(sup, targets):
                    restart.set()
                    return
                continue
            reloaded.cancel()
            changes = classify_changes(
                sup.config, {Path(p) for _, p in getter.result()}, sup.config.settings.logs_dir
            )
            debounce = sup.config.settings.reload_debounce
            last = sup.last_reload
            # While the file on disk is refused, any change may be the fix (an env file
            # it names that did not exist yet): try again.
            if changes.reload or (last is not None and not last["ok"] and changes.any):
                try:
                    await sup.reload(source="watch")
                except ActionConflict:
                    return
            # Services whose watched files changed in the same batch (a `git pull`) restart
            # even when the reload changed what is watched; unless the reload restarted them.
            last = sup.last_reload
            restarted = set(last.get("restarted", [])) if changes.reload and last else set()
            # A running service restarts; a one-shot that completed runs again (migrations
            # when a migration file changes), and its `restart: true` dependents follow.
            watched = {
                n
                for n in changes.services
                if (sup.is_running(n) or sup.has_completed(n)) and n not in restarted
            }
            for name, sig in sorted(changes.signals.items()):
                runner = sup.runners.get(name)
                pid = runner.send_signal(signal.Signals[sig]) if runner is not None else None
                if pid is not None:
                    sup.logger.info(f"files changed: {sig} to {name} (pid {pid})")
            if watched:
                sup.logger.info(f"files changed: restarting {', '.join(sorted(watched))}")
                try:
                    await sup.restart_services(sorted(watched))
                except ActionConflict:
                    restart.set()
                    return
            if _moved(sup, targets) or sup.config.settings.reload_debounce != debounce:
                restart.set()
                return
    finally:
        stopped.cancel()
        reloads.close()


def _moved(sup: WatchedStack, targets: WatchTargets) -> bool:
    """Does the configuration now want other folders watched?"""
    return watch_targets(sup.config) != targets


class _AnyEvent:
    """What watchfiles polls to stop: set when any of the events is set."""

    def __init__(self, *events: asyncio.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)

    def set(self) -> None:
        # Called by watchfiles when its task is cancelled: stop only this watcher.
        self.events[-1].set()
