"""Children's output: drained from the pipe, written to `logs/<service>.log`, shown on the console.

`pump` reads a child's pipe on the event loop until EOF, so a child never blocks
on a full pipe and no line written before exit is lost. `ServiceLog` splits what
it reads into lines and hands them to the file (size rotation), the console
(`name | line`, a stable colour per service), the tail buffer (for `logs -n` and
failure reports) and any live followers (log health probes, `logs -f`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from io import FileIO
from pathlib import Path
from typing import BinaryIO

from stackvisor.errors import UnsafePath
from stackvisor.system.files import Folder, open_append

_COLOURS = [36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96, 31]
_CHUNK = 65536
_MAX_LINE = 65536
TAIL_LINES = 1000


def colour_enabled(stream: object) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class BackgroundWriter:
    """Writes to a stream from a thread, so a terminal nobody reads never stalls the loop.

    `less` paused, Ctrl-S, a slow CI log collector: the stream blocks, this
    queue fills, and further output is dropped here (and counted) instead of
    freezing health checks, the control socket and signal handling. The log
    files still get every line.
    """

    def __init__(self, stream: BinaryIO, max_chunks: int = 2048) -> None:
        self.stream: BinaryIO | None = stream
        self._queue: queue.Queue[bytes | None] = queue.Queue(max_chunks)
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if self.stream is None:
            return
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self._dropped += max(1, data.count(b"\n"))

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None or self.stream is None:
                return
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                data = (
                    f"[stackvisor] {dropped} lines not shown (console too slow; see logs/)\n".encode() + data
                )
            try:
                self.stream.write(data)
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                # A closed terminal must not take the stack down; the log files have it all.
                self.stream = None
                return

    def close(self, timeout: float = 2.0) -> None:
        """Let what is queued reach the terminal (the last words of a stop), briefly."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


class TextWriter:
    """A text stream (for structlog) over a `BackgroundWriter`."""

    def __init__(self, writer: BackgroundWriter, isatty: bool) -> None:
        self.writer = writer
        self._isatty = isatty
        self._partial = ""

    def write(self, text: str) -> int:
        # print() writes the line and its newline apart: pass on whole lines only, so
        # they cannot interleave with the services' output on a shared terminal.
        text = self._partial + text
        cut = text.rfind("\n") + 1
        self._partial = text[cut:]
        if cut:
            self.writer.write(text[:cut].encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return self._isatty


class Console:
    """Where `name | line` goes: the supervisor's stdout, or nowhere when detached."""

    def __init__(self, stream: BinaryIO | None, *, colour: bool, width: int = 0) -> None:
        self.writer = BackgroundWriter(stream) if stream is not None else None
        self.stream = stream
        self.colour = colour
        self.width = width

    def prefix(self, name: str) -> bytes:
        label = name.ljust(self.width)
        if self.colour:
            code = _COLOURS[zlib.crc32(name.encode()) % len(_COLOURS)]
            return f"\x1b[{code}m{label} |\x1b[0m ".encode()
        return f"{label} | ".encode()

    def write(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RotatingFile:
    """Append-only file rotated by size: name.log, name.log.1, ... name.log.N.

    Creating one touches no disk: `open` (or the first write) creates the file.
    """

    # A failing disk is reported once, then at most once a minute with what was lost.
    REPORT_EVERY = 60.0

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        backups: int,
        on_error: Callable[[str], None] | None = None,
        mode: int = 0o600,
        folder: Folder | None = None,
    ) -> None:
        self.path = path  # in a folder the owner has made safe (see `system.files`)
        self.folder = folder or Folder(path.parent)  # written through its descriptor once held open
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_error = on_error
        self.mode = mode
        self._fh: FileIO | None = None
        self._size = 0
        self._lost_lines = 0
        self._reported_at: float | None = None

    def _open(self, *, truncate: bool = False) -> FileIO:
        fh = FileIO(open_append(self.path, self.mode, self.folder), "ab", closefd=True)
        if truncate:
            fh.truncate(0)
        self._size = fh.tell()
        return fh

    def open(self) -> None:
        if self._fh is None:
            self._fh = self._open()

    def write(self, data: bytes) -> None:
        """Append `data`; a failure (a full disk) loses these lines, never the service's
        supervision: the next write tries again."""
        try:
            if self._fh is None:
                self._fh = self._open()
            self._fh.write(data)
            self._size += len(data)
            if self._size >= self.max_bytes:
                self._rotate()
        except (OSError, UnsafePath) as exc:
            self._lost(data, exc)
            with contextlib.suppress(OSError):
                self.close()  # opened afresh by the next write
            return
        if self._lost_lines and self.on_error is not None:
            self.on_error(f"{self.path}: writing again; {self._lost_lines} lines were lost")
            self._lost_lines = 0
            self._reported_at = None

    def _lost(self, data: bytes, exc: OSError | UnsafePath) -> None:
        self._lost_lines += max(1, data.count(b"\n"))
        now = time.monotonic()
        if self._reported_at is None or now - self._reported_at >= self.REPORT_EVERY:
            self._reported_at = now
            if self.on_error is not None:
                why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
                self.on_error(f"{self.path}: cannot write ({why}); {self._lost_lines} lines lost so far")

    def _rotate(self) -> None:
        self.close()
        if self.backups > 0:
            name = self.path.name
            for i in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    self.folder.replace(f"{name}.{i}", f"{name}.{i + 1}")
            self.folder.replace(name, f"{name}.1")
            self._fh = self._open()
        else:
            self._fh = self._open(truncate=True)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def last_lines(self, n: int) -> list[str]:
        """The file's last `n` lines, from the rotated files too when the current one has
        fewer (reads whole files: run it in a thread). Fewer when the files kept fewer."""
        chunks: list[bytes] = []
        count = 0
        for name in [self.path.name, *(f"{self.path.name}.{i}" for i in range(1, self.backups + 1))]:
            try:
                data = self.folder.read(name)
            except FileNotFoundError:
                break
            chunks.append(data)
            count += data.count(b"\n")
            if count >= n:
                break
        text = b"".join(reversed(chunks)).decode("utf-8", "replace")
        return text.splitlines()[-n:] if n > 0 else []


LineListener = Callable[[str], None]


class ServiceLog:
    """One service's output: file, console, tail and followers."""

    def __init__(self, name: str, file: RotatingFile, console: Console) -> None:
        self.name = name
        self.file = file
        self.console = console
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.listeners: set[LineListener] = set()
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        complete, self._partial = data[:cut], data[cut:]
        if len(self._partial) > _MAX_LINE:
            complete, self._partial = complete + self._partial + b"\n", b""
        if complete:
            self._emit(complete)

    def flush(self) -> None:
        """The child's last words without a trailing newline are still a line."""
        if self._partial:
            data, self._partial = self._partial + b"\n", b""
            self._emit(data)

    def _emit(self, complete: bytes) -> None:
        # The tail, followers and log probes first: a file that cannot be written (a
        # full disk) must not keep a health check from seeing its line.
        raw_lines = complete.split(b"\n")[:-1]
        if self.console.stream is not None:
            prefix = self.console.prefix(self.name)
            self.console.write(b"".join(prefix + line + b"\n" for line in raw_lines))
        lines = [line.decode("utf-8", "replace") for line in raw_lines[-TAIL_LINES:]]
        self.tail.extend(lines)
        if self.listeners:
            every = (
                lines
                if len(raw_lines) <= TAIL_LINES
                else [line.decode("utf-8", "replace") for line in raw_lines]
            )
            for listener in list(self.listeners):
                for line in every:
                    listener(line)
        self.file.write(complete)

    def note(self, text: str) -> None:
        """A line of the supervisor's about this service (e.g. why it was stopped)."""
        self._emit(f"[stackvisor] {text}\n".encode())

    def last(self, n: int) -> list[str]:
        return list(self.tail)[-n:] if n > 0 else []

    def reaches(self, n: int) -> bool:
        """The tail in memory holds the last `n` lines (else `file.last_lines` has them)."""
        return n <= len(self.tail) or len(self.tail) < TAIL_LINES

    def open(self) -> None:
        self.file.open()

    def close(self) -> None:
        self.file.close()


async def pump(fd: int, on_data: Callable[[bytes], None]) -> None:
    """Drain `fd` into `on_data` until EOF; closes `fd`.

    At most one chunk per wakeup, so one chatty child cannot starve the loop.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            on_data(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def stdout_console(width: int, *, enabled: bool = True) -> Console:
    stream = sys.stdout.buffer if enabled else None
    return Console(stream, colour=enabled and colour_enabled(sys.stdout), width=width)
