"""Which process has a socket open: the walk over /proc/<pid>/fd, kept short.

The kernel has no reverse index from a socket to the processes holding it, so
finding a holder means reading processes' fd tables until a link names the
socket's inode. The walk is kept short: callers can name likely pids to try first,
then the processes of the socket's uid are read (the socket table tells us the
uid), the rest ordered by expected gain per cost (`_visit_order`); each fd directory
is read through one directory descriptor, and the walk stops as soon as every
wanted inode has a holder. The sockets passed on the way are remembered
(`SocketSightings`), but a remembered location is only a place to look first: it is
checked with one readlink before it is used, so an answer is never older than the
call that produced it.

What does not live here: the socket tables (`tables`) and the facts about a holder
(`owners`). The pid walk itself is `system.procfs.pids`.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Sequence

from stackvisor.system.procfs import PROC, pids

# The holder search reads processes in order of (chance of holding the socket) / (cost
# of reading it), which minimises the expected cost of a search for one target. The
# chance mixes two beliefs: with weight _RECENT_SHARE the holder is one of the newest
# processes (a dev server is usually younger than the rest of the machine), fading
# by _RECENT_DECAY per place in age; otherwise the socket is any fd on the machine,
# so a process's chance is its share of all open fds. Reading costs one readlink
# per fd plus about _LIST_COST readlinks for opening and listing the directory.
_RECENT_SHARE = 0.5
_RECENT_DECAY = 0.9
_LIST_COST = 4
_SAMPLE_MIN_FDS = 32  # below this, reading the whole process is about as cheap as a hint


def _visit_order(uids: set[int], prefer: Sequence[int], inodes: Iterable[int] = ()) -> list[int]:
    """Pids in the order their fds are worth reading to find a socket's holder:
    the pids the caller names, then processes of the socket's uid, then the rest,
    each group by expected gain per cost (see above), except that a big process
    whose newest fd is the first socket created after a wanted one goes first."""
    head = list(dict.fromkeys(p for p in prefer if p > 0))
    skip = set(head)
    mine: list[tuple[int, int]] = []
    others: list[tuple[int, int]] = []
    proc_fd = os.open(PROC, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for pid in pids():
            if pid in skip:
                continue
            try:
                # One stat gives both: the fd directory belongs to the process's
                # effective uid, and since Linux 6.2 its size is the number of open
                # fds (0 before, which leaves the age alone to decide).
                info = os.stat(f"{pid}/fd", dir_fd=proc_fd)
            except OSError:
                continue
            (mine if info.st_uid in uids else others).append((pid, info.st_size))
        hunches = _creator_hunches(proc_fd, mine + others, set(inodes))
    finally:
        os.close(proc_fd)
    order = head + [p for p in hunches if p not in skip]
    skip.update(hunches)
    for group in (mine, others):
        group.sort(reverse=True)  # newest first: pids grow with age (until they wrap)
        total = sum(n for _, n in group) or 1
        recent = _RECENT_SHARE * (1 - _RECENT_DECAY)
        scored = [
            ((recent * _RECENT_DECAY**rank + (1 - _RECENT_SHARE) * n / total) / (_LIST_COST + n), pid)
            for rank, (pid, n) in enumerate(group)
            if pid not in skip
        ]
        scored.sort(reverse=True)
        order.extend(pid for _, pid in scored)
    return order


def _creator_hunches(proc_fd: int, processes: list[tuple[int, int]], inodes: set[int]) -> list[int]:
    """Big processes likely to have created the wanted sockets, best first.

    Socket inode numbers come from one counter, so they follow creation order, and
    a server opens its listeners in a burst. For each process with many fds, one
    readlink of its highest fd (its newest, when the table has no holes) gives a
    recent socket of it; the process whose recent socket is the nearest one at or
    after a wanted inode most likely made that one too. Only an ordering hint: a
    wrong hunch costs one extra process read.
    """
    if not inodes:
        return []
    sampled: list[tuple[int, int]] = []
    for pid, count in processes:
        if count < _SAMPLE_MIN_FDS:
            continue
        try:
            link = os.readlink(f"{pid}/fd/{count - 1}", dir_fd=proc_fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            sampled.append((int(link[8:-1]), pid))
    sampled.sort()
    hunches: list[int] = []
    for inode in sorted(inodes):
        after = bisect.bisect_left(sampled, (inode, -1))
        if after < len(sampled) and sampled[after][1] not in hunches:
            hunches.append(sampled[after][1])
    return hunches


class SocketSightings:
    """Where each socket was last seen during a walk: "socket:[inode]" -> (pid, fd).

    A by-product of walking, kept so that the next question about any of those
    sockets costs one readlink instead of a walk. It is never believed: a sighting is
    used only after readlink of that very fd, answered by the kernel now, still names
    that very socket (then that process holds it now, whatever happened in between);
    a sighting that fails the check is dropped. It can be out of date; an answer
    given from it cannot.
    """

    def __init__(self, limit: int = 1 << 18) -> None:
        self.limit = limit
        self.seen: dict[str, tuple[int, str]] = {}

    def confirm(self, link: str) -> int | None:
        sighting = self.seen.get(link)
        if sighting is None:
            return None
        pid, fd = sighting
        with contextlib.suppress(OSError):
            if os.readlink(f"{PROC}/{pid}/fd/{fd}") == link:
                return pid
        self.seen.pop(link, None)
        return None

    def record(self, found: dict[str, tuple[int, str]]) -> None:
        if len(self.seen) + len(found) > self.limit:
            self.seen.clear()
        self.seen.update(found)

    def forget(self) -> None:
        self.seen.clear()


def socket_holders(
    inodes: dict[int, int | None], prefer: Sequence[int], sightings: SocketSightings
) -> dict[int, int]:
    """inode -> the first pid found holding it; inodes with no visible holder are absent.

    `inodes` maps each wanted socket inode to its uid (None when unknown); `prefer`
    lists pids to read first; `sightings` is asked first and told what the walk saw.
    """
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, int] = {}
    for link in list(targets):
        pid = sightings.confirm(link)
        if pid is not None:
            found[targets.pop(link)] = pid
    if not targets:
        return found
    uids = {uid for uid in inodes.values() if uid is not None}
    sockets: dict[str, tuple[int, str]] = {}
    try:
        for pid in _visit_order(uids, prefer, inodes):
            try:
                dirfd = os.open(f"{PROC}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue  # gone, or another user's process we may not inspect
            try:
                for name in os.listdir(dirfd):
                    try:
                        link = os.readlink(name, dir_fd=dirfd)
                    except OSError:
                        continue
                    if link.startswith("socket:"):
                        sockets[link] = (pid, name)
                        inode = targets.pop(link, None)
                        if inode is not None:
                            found[inode] = pid
                            if not targets:
                                return found
            except OSError:
                continue
            finally:
                os.close(dirfd)
        return found
    finally:
        sightings.record(sockets)
