"""The supervisor's own log: structlog, readable on a terminal, JSON lines in a file.

Children's output is not here (see runtime/logs.py); this is what stackvisor itself
says: state changes, conflicts, reloads. Every event is written as one JSON line to
`logs/stackvisor.log` and rendered for people on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from stackvisor.runtime.logs import BackgroundWriter, TextWriter, colour_enabled
from stackvisor.system.files import open_append


class _JsonTee:
    """A processor that appends each event to a file as JSON before it is rendered."""

    def __init__(self, fh: TextIO | None) -> None:
        self.fh = fh

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self.fh is not None:
            # A full disk loses lines of this log, never the supervisor.
            with contextlib.suppress(OSError):
                self.fh.write(json.dumps(event, default=str) + "\n")
        return event


class LogSetup:
    """The configured log: `flush` before exit lets the last lines reach the terminal."""

    def __init__(self, writer: BackgroundWriter | None, tee: _JsonTee) -> None:
        self.writer = writer
        self.tee = tee

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tee.fh is not None:
            self.tee.fh.flush()


def configure(
    log_file: Path | None, *, stream: TextIO | None = None, quiet: bool = False, file_mode: int = 0o600
) -> LogSetup:
    """`stream` defaults to stderr, written from a thread (see `BackgroundWriter`)."""
    writer = None
    out: Any = stream
    if out is None:
        writer = BackgroundWriter(sys.stderr.buffer)
        out = TextWriter(writer, sys.stderr.isatty())
    renderer: Any = (
        _Drop() if quiet else structlog.dev.ConsoleRenderer(colors=colour_enabled(out), pad_event_to=0)
    )
    fh = None
    if log_file is not None:  # in a folder the caller made safe (see `system.files`)
        fd = open_append(log_file, file_mode)
        fh = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - the process's log
    tee = _JsonTee(fh)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.processors.format_exc_info,
            tee,
            _strip_for_console,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return LogSetup(writer, tee)


def _strip_for_console(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if method == "debug":
        raise structlog.DropEvent  # written to the JSON file above, kept off the terminal
    # The console line already says "api: healthy"; the raw fields are in the JSON file.
    for key in ("old", "new", "service"):
        event.pop(key, None)
    if not event.get("reason"):
        event.pop("reason", None)
    return event


class _Drop:
    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        raise structlog.DropEvent


class LoopErrors:
    """The event loop's own errors (an accept that fails when descriptors run out, a
    callback that raised) for the supervisor's log: each kind at most once a minute,
    then with how many came meanwhile, where asyncio would print every one with its
    traceback to a detached supervisor's output file, unbounded."""

    EVERY = 60.0
    KINDS = 100  # kinds remembered; past that, forgotten all at once

    def __init__(self, logger: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.clock = clock
        self.said: dict[str, tuple[float, int]] = {}  # kind: (when said, how many since)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unexpected error")
        exc = context.get("exception")
        kind = f"{message}|{type(exc).__name__}"
        now = self.clock()
        if kind in self.said and now - self.said[kind][0] < self.EVERY:
            when, count = self.said[kind]
            self.said[kind] = (when, count + 1)
            return
        count = self.said.get(kind, (0.0, 0))[1]
        if len(self.said) >= self.KINDS:
            self.said.clear()
        self.said[kind] = (now, 0)
        detail = f": {exc!r}{_where(exc)}" if exc is not None else ""
        since = f" ({count} more like it since)" if count else ""
        self.logger.error(f"event loop: {message}{detail}{since}")


def _where(exc: BaseException) -> str:
    """` at file:line` of the innermost frame that raised `exc` ("" when unknown)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
