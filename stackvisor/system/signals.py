"""The one gate every signal goes through, with the rules of who may never get one.

pid 1, the supervisor and its ancestors (the shell or CI runner that started it)
are never signalled, whatever the caller says. A process the caller has not proved
to be ours is signalled only when it belongs to our user. A process group is
signalled only when we lead it (a child's group), never our own.

What does not live here: deciding that a process should end (the service, the port
rules in `ports.levels`, the orphan rules in `runtime.orphans`) and the facts the
rules read (`procfs`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

import psutil

from stackvisor.system import procfs


class SignalGate:
    """Sends signals, refusing those the rules forbid.

    It keeps the supervisor's ancestors, read once: they do not change while we
    run, and a signal path should not walk the process tree each time. After a
    fork the new process has other ancestors, so they are read again when
    `os.getpid()` is no longer the pid they were read for.
    """

    def __init__(self) -> None:
        self._read_for: int | None = None
        self._lineage: frozenset[int] = frozenset()

    def protected_pids(self) -> set[int]:
        """0 (our own process group to kill()), pid 1, the supervisor and its ancestors."""
        pid = os.getpid()
        if self._read_for != pid:
            self._lineage = procfs.ancestors(pid)
            self._read_for = pid
        return {0, 1, *self._lineage}

    def may_signal(self, pid: int, *, ours: bool = False) -> bool:
        """Whether `pid` may get a signal: ours to end, and nobody's we must spare.

        `ours` says the caller proved the process is one of ours (we spawned it, it
        carries our marker, or it is below a child we verified): then a descendant
        that switched to another user (su, gosu) can still be ended. pid 1, the
        supervisor and its ancestors are refused whatever the caller says.
        """
        if pid <= 1 or pid in self.protected_pids():
            return False
        if ours:
            return True
        try:
            uids = psutil.Process(pid).uids()
        except psutil.Error:
            return False
        return uids.real == os.getuid()

    def send(self, pid: int, sig: int, *, ours: bool = False) -> bool:
        """Signal one process if the rules allow it; True when the signal was delivered."""
        if not self.may_signal(pid, ours=ours):
            return False
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def send_group(self, pgid: int, sig: int) -> bool:
        """Signal a whole process group we lead; True when the signal was delivered.

        Callers signal a child's group only while its leader is unreaped, or a
        holder's group after checking every member, so the number still names the
        group they mean. Our own group would take the supervisor (and whoever shares
        it: the shell's job) along, so it is refused.
        """
        if pgid <= 1 or pgid in self.protected_pids() or os.getpgrp() == pgid:
            return False
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def kill_all(self, procs: Iterable[psutil.Process]) -> None:
        """SIGKILL each of our processes that is still the one we saw (never a recycled pid)."""
        for proc in procs:
            try:
                if proc.is_running():
                    self.send(proc.pid, signal.SIGKILL, ours=True)
            except psutil.Error:
                pass
