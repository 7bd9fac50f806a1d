"""The supervisor's own log: structlog, readable on a terminal, JSON lines in a file.

Children's output is not here (see runtime/logs.py); this is what stackvisor itself
says: state changes, conflicts, reloads. Every event is written as one JSON line to
`logs/stackvisor.log` and rendered for people on stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import MutableMapping
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
