"""Spawning, signalling and reaping one child process: the only place that starts
services (itself, or with cgroups through the helper of `system.cgspawn`).

A child runs in its own session (so its process group carries our signals and a
terminal's Ctrl-C reaches only the supervisor), dies with the supervisor
(`PR_SET_PDEATHSIG`), and carries a marker in its environment so that its
descendants can be found even after they left its process group. Exit is observed
through a pidfd on the event loop, not a watcher thread per child.

What does not live here: when to start or stop (service.py), output handling
(logs.py), which processes may be signalled at all (`system.signals.SignalGate`,
which every signal sent from here goes through), and process facts
(`system.procfs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from stackvisor.config.users import UserSpec
from stackvisor.system import cgroups, procfs
from stackvisor.system.cgspawn import CgroupSpawner, Unsupported
from stackvisor.system.prelude import lead, pdeathsig_launcher, prelude, resolve_program
from stackvisor.system.signals import SignalGate

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)
_KILL_WAIT = 5.0  # how long a SIGKILLed child may take to be reaped
REAP_DELAY = 0.01  # orphans that exit within this much of each other are reaped together


def become_subreaper() -> bool:
    """Orphaned grandchildren are reparented to us, so we can end them at stop."""
    try:
        return bool(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (AttributeError, OSError):
        return False


def die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect; then we are orphaned already.
    if os.getppid() != parent:
        os._exit(1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class Spawner:
    """Starts children and collects the exit of what is reparented to us.

    It remembers every child it started until that child's exit is collected, so
    `reap_orphans` never takes a service's exit status from its `Child`. Only a
    `subreaper` spawner reaps at all: the supervisor in its own process, which has
    made itself the subreaper of everything below it. Embedded in another program
    (tests, tools), the program's other children are its own business, and so are
    the children of any other spawner there.
    """

    def __init__(self, gate: SignalGate, *, subreaper: bool = False) -> None:
        self.gate = gate
        self.subreaper = subreaper
        self._unreaped: set[int] = set()
        self._reap_scheduled = False
        # Until `track` finds cgroups usable, children are found by their markers.
        self.tracking = cgroups.Tracking("marker", "cgroups not probed")
        self.births: CgroupSpawner | None = None  # with cgroups: children born in theirs
        self.killed: set[Path] = set()  # cgroups `cgroup.kill` was written to (see `cgroups.renew`)

    def track(self, stack: str) -> cgroups.Tracking:
        """Put the services of `stack` in cgroups from now on, where the kernel lets us,
        each born in its own where the kernel can (`cgspawn`)."""
        self.tracking = cgroups.probe(stack)
        if self.tracking.base is not None and self.births is None:
            self.births = CgroupSpawner.start()
            if self.births is not None:
                self._unreaped.add(self.births.helper.pid)
                self.births.abandoned = functools.partial(self.gate.send, sig=signal.SIGKILL, ours=True)
        return self.tracking

    def end_births(self) -> None:
        """No more children: the helper goes (children already born stay)."""
        if self.births is not None:
            self.births.close()
            self.births = None

    def release(self) -> None:
        """End whatever is left in the stack's cgroups and remove them (the stack is down)."""
        self.end_births()
        base = self.tracking.base
        if base is not None:
            for path in sorted(p for p in base.glob("*") if p.is_dir()):
                if not cgroups.empty(path):
                    cgroups.kill(path, self.gate)
                cgroups.remove(path)
            with contextlib.suppress(OSError):  # no service ever started: remove() did not
                base.rmdir()

    async def spawn(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        marker: str,
        listener: tuple[int, str] | None = None,
        user: UserSpec | None = None,
        service: str | None = None,
    ) -> Child:
        """Start `argv` in a new session with stdout and stderr on one pipe we drain.

        The child must die with us (PR_SET_PDEATHSIG). Setting that in a `preexec_fn`
        forces a full fork of the supervisor (about 5 ms, blocking the event loop);
        util-linux's `setpriv --pdeathsig` sets it in the child instead, and lets
        Python use vfork (0.2 ms). The preexec_fn stays as the fallback.

        `user`: the child runs as that user. A change of credentials clears
        PDEATHSIG, so it is set after the change: setpriv sets it last, and Popen
        runs the preexec_fn after its own `user`/`group` change.

        `service`: with cgroup tracking, the child joins that service's cgroup before it
        execs. `listener`: a listening socket and its name, handed over as fd 3 (the
        systemd protocol). A shell does both first: see `prelude`.
        """
        full_env = dict(env)
        full_env[procfs.MARKER] = marker
        launcher = pdeathsig_launcher()
        base = self.tracking.base
        cgroup = None
        if base is not None and service is not None and self.births is not None:
            cgroup = cgroups.service_dir(base, service)
            if cgroup in self.killed and cgroups.renew(cgroup):
                self.killed.discard(cgroup)
        if cgroup is not None and cgroup not in self.killed:
            assert self.births is not None
            path = resolve_program(argv[0], cwd, full_env.get("PATH", os.defpath))
            try:
                pid, read_fd = await self.births.spawn(path, argv, full_env, cgroup, cwd, listener, user)
                return self._child(pid, read_fd, marker, None, cgroup)
            except Unsupported as exc:  # this one (or every one from now on) the prelude's way
                if exc.lasting:
                    self.births = None
        # Without setpriv, Popen changes the user before the shell could join the cgroup
        # (root's): such a child is tracked by its marker.
        if base is not None and service is not None and (launcher or user is None):
            cgroup = cgroups.service_dir(base, service)
        shell = prelude(cgroup, listener[1] if listener else None)
        if launcher or shell:
            # Popen would have said "not found" or "permission denied" itself; through a
            # launcher the child would just exit 127. Find the program as exec would.
            argv = [resolve_program(argv[0], cwd, full_env.get("PATH", os.defpath)), *argv[1:]]
        as_user = (*launcher[:1], *_setpriv_user(user), *launcher[1:]) if launcher and user else ()
        if shell and as_user:
            # PDEATHSIG first (a supervisor killed now still takes the child along), the
            # cgroup joined as root, then the change of user (which sets it again).
            launcher = (*launcher, *shell, *as_user)
        elif shell:
            argv = lead(shell, argv)
        elif as_user:
            launcher = as_user
        stdin = listener[0] if listener else None
        popen, read_fd = _start(argv, launcher, full_env, cwd, stdin, None if launcher else user)
        return self._child(popen.pid, read_fd, marker, popen, cgroup)

    def _child(
        self, pid: int, read_fd: int, marker: str, popen: subprocess.Popen[bytes] | None, cgroup: Path | None
    ) -> Child:
        self._unreaped.add(pid)
        started = procfs.started(pid) or procfs.uptime()
        child = Child(pid, pid, started, marker, read_fd, popen, _spawner=self, cgroup=cgroup)
        watch_exit(child)
        return child

    def reap_soon(self) -> None:
        """SIGCHLD's handler: one `reap_orphans` for the exits of the next REAP_DELAY, not
        one each (each reads our list of children: 200 services stopping made that
        quadratic)."""
        if not self._reap_scheduled:
            self._reap_scheduled = True
            asyncio.get_running_loop().call_later(REAP_DELAY, self._reap_now)

    def _reap_now(self) -> None:
        self._reap_scheduled = False
        if self.births is not None and self.births.pending:  # a child whose pid is not ours yet
            self.reap_soon()
        else:
            self.reap_orphans()

    def reap_orphans(self, keep: Iterable[int] = ()) -> list[int]:
        """Collect exit statuses of reparented grandchildren (we are their subreaper).

        Only pids that are not our own tracked children are waited for, so the exit
        status of a service's main process is never stolen from its owner.
        """
        reaped: list[int] = []
        if not self.subreaper:
            return reaped
        spared = set(keep) | self._unreaped
        for pid in procfs.children(os.getpid()):
            if pid in spared or not procfs.zombie(pid):
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
                reaped.append(pid)
        return reaped

    def _reaped(self, pid: int) -> None:
        self._unreaped.discard(pid)


def _setpriv_user(user: UserSpec) -> tuple[str, ...]:
    groups = "--init-groups" if user.name else "--clear-groups"
    return (f"--reuid={user.uid}", f"--regid={user.gid}", groups)


def _start(
    argv: list[str],
    launcher: tuple[str, ...],
    env: dict[str, str],
    cwd: str | None,
    stdin: int | None,
    user: UserSpec | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """The fork itself: (the Popen, the read end of the output pipe). With the launcher
    Python uses vfork, so this returns in well under a millisecond. `stdin`: the socket
    to hand over, else /dev/null."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    try:
        popen = subprocess.Popen(
            [*launcher, *argv] if launcher else argv,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=write_fd,
            stderr=write_fd,
            cwd=cwd,
            env=env,
            start_new_session=True,
            # Unsafe with threads in general; used only without setpriv, where nothing
            # else can set PDEATHSIG in the child.
            preexec_fn=None if launcher else functools.partial(die_with_parent, os.getpid()),  # noqa: PLW1509
            close_fds=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=list(user.groups) if user else None,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return popen, read_fd


@dataclass
class Child:
    """One spawned child: its pid, group, start time and output pipe."""

    pid: int
    pgid: int
    started: float  # seconds since boot (`procfs.started`): its identity beside the pid
    marker: str
    output_fd: int
    popen: subprocess.Popen[bytes] | None  # None: born in its cgroup (`cgspawn`)
    _spawner: Spawner = field(repr=False, compare=False)
    exit_code: int | None = None
    cgroup: Path | None = None  # every process it starts stays in there
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _poller: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)

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
        if self.popen is not None:
            self.popen.returncode = self.exit_code
        self._spawner._reaped(self.pid)
        self._exited.set()
        return True

    def signal(self, sig: int, *, group: bool = True) -> bool:
        """A signal to the process and (`group`) its whole group, while the leader still
        holds the group's number; whether the process got it."""
        if self.exit_code is not None:
            return False
        gate = self._spawner.gate
        sent = gate.send(self.pid, sig, ours=True)
        if group:
            gate.send_group(self.pgid, sig)
        return sent

    def descendants(self) -> list[psutil.Process]:
        """Everything this child started, in its group or not, alive now: its cgroup's
        members, or (without one) its process tree and whatever carries its marker.
        The cgroup is one small read; the tree and the markers walk all of /proc."""
        found: dict[int, psutil.Process] = {}
        if self.cgroup is not None:
            for pid in cgroups.pids(self.cgroup):
                with contextlib.suppress(psutil.Error):
                    found[pid] = psutil.Process(pid)
        else:
            if self.exit_code is None:  # once reaped, the pid may be somebody else's
                found.update((proc.pid, proc) for proc in procfs.descendants(self.pid))
            for proc in procfs.marked(self.marker):
                found.setdefault(proc.pid, proc)
        found.pop(self.pid, None)
        found.pop(os.getpid(), None)
        return [p for p in found.values() if procfs.running(p)]

    async def stop(self, sig: int, timeout: float) -> int:
        """The stop signal to the group and every descendant that left it; after
        `timeout`, SIGKILL to whatever of them is left. The grace period is for
        all of them, so `sh -c "app; cleanup"` lets `app` finish its own shutdown."""
        deadline = time.monotonic() + timeout
        family = self.descendants()
        self.signal(sig)
        for proc in family:
            self._spawner.gate.send(proc.pid, sig, ours=True)
        while time.monotonic() < deadline:
            family = [p for p in family if procfs.running(p)]
            if self.exit_code is not None and not family:
                break
            await asyncio.sleep(0.02)
        if not self._ended(family):
            self.kill_now(family)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), _KILL_WAIT)
        except TimeoutError:  # stuck in the kernel (D state): do not hang the stack on it
            return self.exit_code if self.exit_code is not None else -int(signal.SIGKILL)

    def _ended(self, family: list[psutil.Process]) -> bool:
        """Nothing left to kill: the leader reaped, `family` gone, its cgroup empty."""
        return (
            self.exit_code is not None and not family and (self.cgroup is None or cgroups.empty(self.cgroup))
        )

    async def cleanup(self, sig: int, timeout: float) -> None:
        """After the leader exited by itself: end what it left behind, gracefully first."""
        family = self.descendants()
        if not family:
            return
        gate = self._spawner.gate
        for proc in family:
            gate.send(proc.pid, sig, ours=True)
        deadline = time.monotonic() + timeout
        while family and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            family = [p for p in family if procfs.running(p)]
        gate.kill_all(family)

    def kill_now(self, known: Iterable[psutil.Process] = ()) -> None:
        family = list(known) + self.descendants()
        self.signal(signal.SIGKILL)
        self._spawner.gate.kill_all(family)
        if self.cgroup is not None:  # and what forked meanwhile
            self._spawner.killed.add(self.cgroup)
            cgroups.kill(self.cgroup, self._spawner.gate, timeout=0)


def watch_exit(child: Child) -> None:
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(child.pid)
    except (OSError, AttributeError):
        child._poller = loop.create_task(_poll_exit(child))
        return

    def ready() -> None:
        if child._collect():
            loop.remove_reader(pidfd)
            os.close(pidfd)

    loop.add_reader(pidfd, ready)


async def _poll_exit(child: Child) -> None:
    # Fallback where pidfd is missing (kernels before 5.3): nothing to wait on but waitpid.
    while not child._collect():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
