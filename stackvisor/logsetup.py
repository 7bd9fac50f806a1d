"""The supervisor's own log: structlog, readable on a terminal, JSON lines in a file.

Children's output is not here (see runtime/logs.py); this is what stackvisor itself
says: state changes, conflicts, reloads. Every event is written as one JSON line to
`logs/stackvisor.log` and rendered for people on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

from stackvisor.runtime.logs import BackgroundWriter, TextWriter, colour_enabled


class _JsonTee:
    """A processor that appends each event to a file as JSON before it is rendered."""

    def __init__(self, path: Path | None) -> None:
        self.fh: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if self.fh is not None:
            self.fh.write(json.dumps(event, default=str) + "\n")
        return event


def configure(log_file: Path | None, *, stream: TextIO | None = None, quiet: bool = False) -> None:
    """`stream` defaults to stderr, written from a thread (see `BackgroundWriter`)."""
    global _writer
    if stream is None:
        _writer = BackgroundWriter(sys.stderr.buffer)
        stream = TextWriter(_writer, sys.stderr.isatty())  # type: ignore[assignment]
    renderer: Any
    if quiet:
        renderer = _Drop()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=colour_enabled(stream), pad_event_to=0)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.processors.format_exc_info,
            _JsonTee(log_file),
            _strip_for_console,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


_writer: BackgroundWriter | None = None


def flush() -> None:
    """Before exit: let the last log lines reach the terminal."""
    if _writer is not None:
        _writer.close()


def _strip_for_console(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if method == "debug":
        raise structlog.DropEvent  # written to the JSON file above, kept off the terminal
    # The console line already says "api: healthy"; the raw fields are in the JSON file.
    for key in ("old", "new", "service"):
        event.pop(key, None)
    if not event.get("reason"):
        event.pop("reason", None)
    return event


class _Drop:
    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        raise structlog.DropEvent
