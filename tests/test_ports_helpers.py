"""Helpers for the ports tests: real processes holding real ports, always cleaned up.

`holders()` yields a factory that starts a tiny Python server which binds, listens,
prints `ready <port> <pid>` and waits; on the way out it kills every process (and
process group) it started, whether the test passed or not. Test modules wrap it in
their `spawn` fixture. No test in this module.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

# The words in this program must not look like a development server or a process
# pattern of the tests: the tests decide that through extra arguments.
SERVER = r"""
import os, signal, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
if os.environ.get("HOLDER_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print("ready", s.getsockname()[1], os.getpid(), flush=True)
while True:
    time.sleep(3600)
"""

SYSTEM_PYTHON = "/usr/bin/python3"  # readable by other users, unlike a venv under /root
_PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    # Holders that are grandchildren (behind a shell or runuser) would otherwise be
    # orphaned to a pid 1 that may never reap them; as subreaper we can.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap(pid: int, timeout: float = 3.0) -> None:
    def gone() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:  # not (yet) ours: done once it no longer exists
            return not os.path.exists(f"/proc/{pid}")

    wait_until(gone, timeout)


@dataclass
class Holder:
    proc: subprocess.Popen[str]
    port: int
    pid: int  # the process that holds the socket (may be a child of proc)
    own_group: bool

    def alive(self) -> bool:
        """True while the holding process exists and is not a zombie."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            return False
        return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def _read_ready(proc: subprocess.Popen[str], timeout: float) -> tuple[int, int]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("holder did not report ready")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"holder exited early: {proc.stderr.read() if proc.stderr else ''}")
            if line.startswith("ready"):
                _, port, pid = line.split()
                return int(port), int(pid)


def _quietly(send, target: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        send(target, sig)


class HolderFactory:
    def __init__(self) -> None:
        self.holders: list[Holder] = []

    def __call__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *extra: str,
        user: str | None = None,
        shell_parent: bool = False,
        own_group: bool = True,
        ignore_term: bool = False,
    ) -> Holder:
        python = SYSTEM_PYTHON if user else sys.executable
        argv = [python, "-c", SERVER, host, str(port), *extra]
        if shell_parent:
            # A shell that keeps running with the server as its child: one process
            # group of two processes.
            quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
            argv = ["/bin/sh", "-c", f"{quoted} & wait"]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        env = dict(os.environ)
        if ignore_term:
            env["HOLDER_IGNORE_TERM"] = "1"
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=own_group,
            env=env,
        )
        holder = Holder(proc, 0, proc.pid, own_group)
        self.holders.append(holder)
        holder.port, holder.pid = _read_ready(proc, 10.0)
        return holder

    def cleanup(self) -> None:
        for holder in self.holders:
            # The group takes the children along (a shell's server, runuser's python);
            # proc itself is not reaped yet, so its pid cannot have been reused.
            if holder.own_group:
                _quietly(os.killpg, holder.proc.pid, signal.SIGKILL)
            _quietly(os.kill, holder.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                holder.proc.wait(timeout=5)
            if holder.pid != holder.proc.pid:
                _reap(holder.pid)
            for stream in (holder.proc.stdout, holder.proc.stderr):
                if stream:
                    stream.close()


@contextlib.contextmanager
def holders() -> Iterator[HolderFactory]:
    factory = HolderFactory()
    _subreaper(True)
    try:
        yield factory
    finally:
        try:
            factory.cleanup()
        finally:
            _subreaper(False)
