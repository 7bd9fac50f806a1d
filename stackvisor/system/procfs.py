"""Process facts, read from /proc (through psutil where it already does the reading;
imported on first use, so that a CLI asking whether its supervisor is stopped does not
pay for it).

The one place that answers: when did a process start, is a pid still the process we
saw (never a recycled pid), is it alive, who are its ancestors, its descendants and
the members of its process group, which processes carry a marker in their
environment, and what every process uses (`stat_table`). Every function here only reads.

What does not live here: sending signals (`signals`), forking and reaping children
(`runtime.process`), and sockets and their owners (`ports`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import psutil

PROC = "/proc"

# The environment variable every child of a supervisor carries, "<instance>/<service>/<n>":
# it survives setsid, double forks and reparenting, so it finds what left the group.
MARKER = "STACKVISOR_CHILD"

# When a process started, for telling it from a later process given the same pid, is
# counted from the boot: the clock ticks in /proc/<pid>/stat, which never change. A
# start time in wall-clock seconds (the boot time from /proc/stat plus those ticks, as
# psutil's create_time gives it) moves whenever the wall clock is stepped or slewed
# across a second: the kernel derives the boot time from the wall clock each time it
# is read. Two readings of one process, a minute apart, then disagree by a whole
# second, and a check of identity that compared them would take a live process for a
# gone one. So identity uses `started` (seconds since boot), with `boot_id` beside it
# wherever a record outlives the boot; wall-clock start times (`create_time`) are only
# shown to people.
#
# Two starts of one process are the same when they differ by at most this much: two
# reads give the very same number, and the starts of two processes, where they differ
# at all, differ by at least one tick (10 ms at Linux's USER_HZ of 100). Half a tick
# absorbs float rounding and nothing more: a wider value could only make a recycled pid
# look like the process we recorded.
START_TIME_TOLERANCE = 0.005


def pids() -> list[int]:
    """Every pid on the system now (the /proc directory walk)."""
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def _started(pid: int) -> tuple[str, float] | None:
    """(state letter, seconds since boot at its start) from /proc/<pid>/stat, without
    psutil's per-call cost: the port registry checks the holder of every live allocation
    this way. None when gone; PermissionError when we may not read it."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # After the command name (which may hold spaces and parentheses): state is field 0,
    # starttime field 19.
    rest = stat[stat.rfind(b")") + 2 :].split()
    return rest[0].decode("ascii", "replace"), int(rest[19]) / _TICKS


def started(pid: int) -> float | None:
    """When `pid` started, in seconds since boot (its identity beside the pid); None when
    it cannot be read or is gone."""
    try:
        found = _started(pid)
    except (OSError, IndexError, ValueError):
        return None
    return found[1] if found is not None else None


def uptime() -> float:
    """Seconds since boot now, on the clock `started` counts with (suspend included)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_boot_id: list[str] = []


def boot_id() -> str:
    """This boot's random id (it cannot change while we run): a start recorded under
    another boot belongs to a process that is gone, whatever its pid is now."""
    if not _boot_id:
        try:
            with open(f"{PROC}/sys/kernel/random/boot_id") as fh:
                _boot_id.append(fh.read().strip())
        except OSError:
            _boot_id.append("")
    return _boot_id[0]


def boot_time() -> float:
    """The boot's wall-clock time as the kernel derives it now (it moves with the clock)."""
    with open(f"{PROC}/stat", "rb") as fh:
        for line in fh:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return time.time() - uptime()


def create_time(pid: int) -> float | None:
    """When `pid` started in wall-clock seconds, for showing to people (never for
    identity: see `started`); None when it cannot be read or is gone."""
    begun = started(pid)
    return None if begun is None else begun + boot_time()


def same_start(found: float, recorded: float) -> bool:
    """Whether two starts (seconds since boot) are those of one process (see
    START_TIME_TOLERANCE)."""
    return abs(found - recorded) <= START_TIME_TOLERANCE


def same_process(pid: int, began: float | None) -> bool:
    """True while `pid` is alive, not a zombie, and is still the process that started
    at `began` (seconds since boot, see `started`; None: only alive and not a zombie).

    A process we may not inspect counts as alive and the same: callers wait for a
    process to be gone, and "cannot tell" must not end the wait early. Where a
    positive proof of identity is needed (ending an orphan), compare `started`
    with `same_start` instead: an unreadable start time proves nothing.
    """
    try:
        found = _started(pid)
    except PermissionError:
        return True
    except (OSError, IndexError, ValueError):
        return False
    if found is None:
        return False
    state, start = found
    return state != "Z" and (began is None or same_start(start, began))


def running(proc: psutil.Process) -> bool:
    """Still the process psutil saw (not a recycled pid), and not a zombie."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ancestors(pid: int) -> frozenset[int]:
    """`pid` and all of its ancestors, up to pid 1 (psutil checks each parent started
    before its child, so a recycled parent pid ends the chain)."""
    import psutil

    out = {pid}
    with contextlib.suppress(psutil.Error):
        out.update(p.pid for p in psutil.Process(pid).parents())
    return frozenset(out)


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid` now (children, grandchildren, ...); empty when it is gone."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children, from /proc/<pid>/task/*/children (no walk of all of
    /proc); psutil's walk where the kernel does not offer that file."""
    found: list[int] = []
    try:
        for task in os.listdir(f"{PROC}/{pid}/task"):
            with open(f"{PROC}/{pid}/task/{task}/children", "rb") as fh:
                found.extend(int(word) for word in fh.read().split())
    except FileNotFoundError:
        if not os.path.exists(f"{PROC}/{pid}"):
            return []
        import psutil

        with contextlib.suppress(psutil.Error):
            return [proc.pid for proc in psutil.Process(pid).children()]
    except OSError:
        return []
    return found


def state(pid: int) -> str | None:
    """The state letter of `pid` in /proc/<pid>/stat (R, S, D, T, t, Z...), None when gone."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the state follows its last ")".
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode("ascii", "replace") or None


def zombie(pid: int) -> bool:
    """Is `pid` a zombie (exited, not yet reaped)? False when it is gone."""
    return state(pid) == "Z"


def stopped(pid: int) -> bool:
    """Is `pid` stopped (SIGSTOP, or a debugger's stop)? It then answers nothing until resumed."""
    return state(pid) in ("T", "t")


def group_members(pgid: int) -> list[int]:
    """The live, non-zombie pids of process group `pgid`."""
    import psutil

    if not os.path.isdir(PROC):
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                    members.append(proc.pid)
            except (OSError, psutil.Error):
                continue
        return members
    members = []
    for pid in pids():
        try:
            with open(f"{PROC}/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses: split after
        # its last ")". Then: state, ppid, pgrp.
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != b"Z":
            members.append(pid)
    return members


def marked(marker: str, *, prefix: bool = False) -> list[psutil.Process]:
    """Live processes carrying `MARKER=marker` in their environment (a service's descendants).

    With `prefix`, every marker that starts with `marker`: all children of one supervisor.
    /proc/<pid>/environ is the environment the program was started with, so a program
    that unsets the variable while it runs still carries it.
    """
    import psutil

    out = []
    needle = f"{MARKER}={marker}".encode()
    for pid in pids():
        try:
            with open(f"{PROC}/{pid}/environ", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        entries = data.split(b"\0")
        if any(e.startswith(needle) for e in entries) if prefix else needle in entries:
            with contextlib.suppress(psutil.Error):
                out.append(psutil.Process(pid))
    return out


class Stat(NamedTuple):
    """One process as /proc/<pid>/stat shows it: enough to add up a process tree."""

    ppid: int
    cpu_seconds: float  # user + system, its own and that of the children it reaped
    rss_bytes: int


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def stat_table() -> dict[int, Stat]:
    """Every live process now, from one pass over /proc (zombies left out)."""
    table = {}
    for pid in pids():
        try:
            with open(f"{PROC}/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # After the command name: state(0) ppid(1) ... utime(11) stime(12) cutime(13)
        # cstime(14) ... rss(21), in clock ticks and pages.
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) < 22 or rest[0] == b"Z":
            continue
        ticks = sum(int(rest[i]) for i in (11, 12, 13, 14))
        table[pid] = Stat(int(rest[1]), ticks / _TICKS, int(rest[21]) * _PAGE)
    return table
