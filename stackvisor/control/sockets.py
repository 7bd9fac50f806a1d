"""The one-supervisor-per-stack lock, and binding and reaching unix sockets safely.

Unix socket paths are limited to 107 bytes; a stack deep in a temporary folder can
exceed that, so binding and connecting go through `/proc/self/fd/N/<name>` of an
open directory when the path is too long.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from stackvisor.errors import AlreadyRunning

_MAX_PATH = 100


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A path to `path` short enough for AF_UNIX, valid inside the `with`."""
    text = str(path)
    if len(text.encode()) <= _MAX_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket that is mode 0600 from the moment it exists.

    A folder we create for it is 0700; an existing one is left as its owner made it.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        with reachable(path) as where:
            sock.bind(where)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def connect_unix(path: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with reachable(path) as where:
            sock.connect(where)
    except BaseException:
        sock.close()
        raise
    return sock


class StackLock:
    """flock on `.stackvisor/lock`, holding the supervisor's pid; released when it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(self.holder()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def holder(self) -> int | None:
        """The pid of the supervisor holding the lock, or None when nobody does."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
