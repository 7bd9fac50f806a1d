"""Spawning, signalling and reaping one child process: the only place that forks.

A child runs in its own session (so its process group carries our signals and a
terminal's Ctrl-C reaches only the supervisor), dies with the supervisor
(`PR_SET_PDEATHSIG`), and carries a marker in its environment so that its
descendants can be found even after they left its process group. Exit is observed
through a pidfd on the event loop, not a watcher thread per child.

What does not live here: when to start or stop (service.py), output handling
(logs.py), and which processes may be signalled at all (`may_signal` is the one
gate every signal goes through).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MARKER = "STACKVISOR_CHILD"

_libc = ctypes.CDLL(None, use_errno=True)
_KILL_WAIT = 5.0  # how long a SIGKILLed child may take to be reaped
# Pids we spawned and have not reaped yet: the orphan reaper must leave them alone.
_spawned: set[int] = set()


def become_subreaper() -> bool:
    """Orphaned grandchildren are reparented to us, so we can end them at stop."""
    try:
        return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (AttributeError, OSError):
        return False


def _child_setup(parent: int) -> None:  # runs in the child between fork and exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect; then we are orphaned already.
    if os.getppid() != parent:
        os._exit(1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _ancestors() -> set[int]:
    out = set()
    pid = os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = psutil.Process(pid).ppid()
        except psutil.Error:
            break
    return out


_SUPERVISOR_ANCESTORS: set[int] | None = None


def protected_pids() -> set[int]:
    """pid 1, the supervisor and its ancestors (shell, CI runner): never signalled."""
    global _SUPERVISOR_ANCESTORS
    if _SUPERVISOR_ANCESTORS is None or os.getpid() not in _SUPERVISOR_ANCESTORS:
        _SUPERVISOR_ANCESTORS = _ancestors()
    return _SUPERVISOR_ANCESTORS | {0, 1}


def may_signal(pid: int, *, ours: bool = False) -> bool:
    """The last gate before any signal: ours to end, and nobody's we must spare.

    `ours` says the caller proved the process is one of ours (we spawned it, it
    carries our marker, or it is below a child we verified): then a descendant
    that switched to another user (su, gosu) can still be ended. pid 1, the
    supervisor and its ancestors are refused whatever the caller says.
    """
    if pid <= 1 or pid in protected_pids():
        return False
    if ours:
        return True
    try:
        uids = psutil.Process(pid).uids()
    except psutil.Error:
        return False
    return uids.real == os.getuid()


def send(pid: int, sig: int, *, ours: bool = False) -> bool:
    if not may_signal(pid, ours=ours):
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _send_group(pgid: int, sig: int) -> bool:
    """Signal a process group we lead. Only `Child` calls it, while its leader is unreaped,
    so the group's number cannot have been handed to anyone else."""
    if pgid <= 1 or pgid in protected_pids() or os.getpgrp() == pgid:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_same_process(pid: int, started: float) -> bool:
    """True when `pid` is still the process that was started at `started` (not a recycled pid)."""
    found = create_time(pid)
    return found is not None and abs(found - started) < 0.05


def marked(marker: str, *, prefix: bool = False) -> list[psutil.Process]:
    """Live processes carrying `marker` in their environment (a service's descendants).

    With `prefix`, every marker that starts with it: all children of one supervisor.
    """
    out = []
    needle = f"{MARKER}={marker}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        entries = data.split(b"\0")
        if any(e.startswith(needle) for e in entries) if prefix else needle in entries:
            try:
                out.append(psutil.Process(int(entry.name)))
            except psutil.Error:
                pass
    return out


def reap_orphans(keep: Iterable[int] = ()) -> list[int]:
    """Collect exit statuses of reparented grandchildren (we are their subreaper).

    Only pids that are not our own tracked children are waited for, so the exit
    status of a service's main process is never stolen from its owner.
    """
    keep = set(keep) | _spawned
    reaped = []
    try:
        kids = psutil.Process().children()
    except psutil.Error:
        return reaped
    for kid in kids:
        if kid.pid in keep:
            continue
        try:
            if kid.status() != psutil.STATUS_ZOMBIE:
                continue
            os.waitpid(kid.pid, os.WNOHANG)
            reaped.append(kid.pid)
        except (psutil.Error, ChildProcessError, OSError):
            pass
    return reaped


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


@dataclass
class Child:
    """One spawned child: its pid, group, start time and output pipe."""

    pid: int
    pgid: int
    started: float
    marker: str
    output_fd: int
    popen: subprocess.Popen[bytes]
    exit_code: int | None = None
    _exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.exit_code is not None
        return self.exit_code

    def _collect(self) -> bool:
        if self.exit_code is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.exit_code = -1
        else:
            if pid == 0:
                return False
            self.exit_code = _exit_code(status)
        self.popen.returncode = self.exit_code
        _spawned.discard(self.pid)
        self._exited.set()
        return True

    def signal(self, sig: int) -> None:
        """A signal to the whole group, while the leader still holds the group's number."""
        if self.exit_code is None:
            send(self.pid, sig, ours=True)
            _send_group(self.pgid, sig)

    def descendants(self) -> list[psutil.Process]:
        """Everything this child started, in its group or not, alive now."""
        found: dict[int, psutil.Process] = {}
        if self.exit_code is None:  # once reaped, the pid may be somebody else's
            try:
                for proc in psutil.Process(self.pid).children(recursive=True):
                    found[proc.pid] = proc
            except psutil.Error:
                pass
        for proc in marked(self.marker):
            found.setdefault(proc.pid, proc)
        found.pop(self.pid, None)
        found.pop(os.getpid(), None)
        return [p for p in found.values() if _running(p)]

    async def stop(self, sig: int, timeout: float) -> int:
        """The stop signal to the group and every descendant that left it; after
        `timeout`, SIGKILL to whatever of them is left. The grace period is for
        all of them, so `sh -c "app; cleanup"` lets `app` finish its own shutdown."""
        deadline = time.monotonic() + timeout
        family = self.descendants()
        self.signal(sig)
        for proc in family:
            send(proc.pid, sig, ours=True)
        while time.monotonic() < deadline:
            family = [p for p in family if _running(p)]
            if self.exit_code is not None and not family:
                break
            await asyncio.sleep(0.02)
        self.kill_now(family)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), _KILL_WAIT)
        except TimeoutError:  # stuck in the kernel (D state): do not hang the stack on it
            return self.exit_code if self.exit_code is not None else -int(signal.SIGKILL)

    async def cleanup(self, sig: int, timeout: float) -> None:
        """After the leader exited by itself: end what it left behind, gracefully first."""
        family = self.descendants()
        if not family:
            return
        for proc in family:
            send(proc.pid, sig, ours=True)
        deadline = time.monotonic() + timeout
        while family and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            family = [p for p in family if _running(p)]
        kill_all(family)

    def kill_now(self, known: Iterable[psutil.Process] = ()) -> None:
        family = list(known) + self.descendants()
        self.signal(signal.SIGKILL)
        kill_all(family)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL each of our processes that is still the one we saw (never a recycled pid)."""
    for proc in procs:
        try:
            if proc.is_running():
                send(proc.pid, signal.SIGKILL, ours=True)
        except psutil.Error:
            pass


async def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    marker: str,
    pass_fds: tuple[int, ...] = (),
) -> Child:
    """Start `argv` in a new session with stdout and stderr on one pipe we drain.

    The child must die with us (PR_SET_PDEATHSIG). Setting that in a `preexec_fn`
    forces a full fork of the supervisor (about 5 ms, blocking the event loop);
    util-linux's `setpriv --pdeathsig` sets it in the child instead, and lets
    Python use vfork (0.2 ms). The preexec_fn stays as the fallback.
    """
    full_env = dict(env)
    full_env[MARKER] = marker
    launcher = _pdeathsig_launcher()
    if launcher:
        # Popen would have said "not found" or "permission denied" itself; through the
        # launcher the child would just exit 127. Find the program as exec would.
        argv = [resolve_program(argv[0], cwd, full_env.get("PATH", os.defpath)), *argv[1:]]
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        popen = subprocess.Popen(
            [*launcher, *argv] if launcher else argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
            preexec_fn=None if launcher else functools.partial(_child_setup, os.getpid()),
            pass_fds=pass_fds,
            close_fds=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    _spawned.add(popen.pid)
    started = create_time(popen.pid) or time.time()
    child = Child(
        pid=popen.pid,
        pgid=popen.pid,
        started=started,
        marker=marker,
        output_fd=read_fd,
        popen=popen,
    )
    _watch_exit(child)
    return child


def resolve_program(name: str, cwd: str | None, path: str) -> str:
    """The file `execvp(name)` would run from `cwd`, or FileNotFoundError / PermissionError."""
    base = cwd or os.getcwd()
    if "/" in name:
        candidates = [os.path.join(base, name)]
    else:
        candidates = [os.path.join(base, entry or ".", name) for entry in path.split(os.pathsep)]
    denied = None
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return os.path.normpath(candidate)
            denied = candidate
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


@functools.cache
def _pdeathsig_launcher() -> tuple[str, ...]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        helptext = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in helptext else ()


def _watch_exit(child: Child) -> None:
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(child.pid)
    except (OSError, AttributeError):
        loop.create_task(_poll_exit(child))
        return

    def ready() -> None:
        if child._collect():
            loop.remove_reader(pidfd)
            os.close(pidfd)

    loop.add_reader(pidfd, ready)


async def _poll_exit(child: Child) -> None:
    # Fallback where pidfd is missing (kernels before 5.3).
    while not child._collect():
        await asyncio.sleep(0.05)


def describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({proc.name()})"
    except psutil.Error:
        return f"pid {pid}"
