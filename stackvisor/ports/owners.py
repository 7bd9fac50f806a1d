"""Who holds a port: the processes behind the listening sockets, and their facts.

Here: `Owner` (what the conflict rules know about a holder), `describe_process`
(reading those facts for one pid), and `OwnerSearch`, which joins the socket tables
(`tables`) with the fd walk (`fdwalk`) and keeps the walk's socket sightings between
questions. The module-level `find_owners`, `find_owners_many` and `find_owner` serve
one-off callers with a fresh search each time (no memory kept between calls); a
long-lived caller (the supervisor) keeps one `OwnerSearch` instead.

What does not live here: deciding what a holder means (`conflicts`) and signalling
it (`resolve`). Everything here only reads.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psutil

from stackvisor.ports.fdwalk import SocketSightings, socket_holders
from stackvisor.ports.tables import Listener, listeners
from stackvisor.system import procfs


@dataclass(frozen=True)
class Owner:
    """A process holding a port (or standing in for one that cannot be seen).

    `readable=False` means the socket was found but not its process: another user's
    process we may not inspect, or an inode no visible process has open. Then only what
    the socket table says (port, address, uid) is filled in, never a guess.
    """

    port: int
    readable: bool
    pid: int | None = None
    name: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None
    uid: int | None = None
    euid: int | None = None
    create_time: float | None = None  # wall clock, for people
    started: float | None = None  # seconds since boot: identity beside the pid (`procfs.started`)
    pgid: int | None = None
    established: int = 0
    addresses: tuple[str, ...] = ()
    inodes: tuple[int, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cmdline"] = list(self.cmdline)
        data["addresses"] = list(self.addresses)
        data["inodes"] = list(self.inodes)
        return data


def user_name(uid: int | None) -> str | None:
    """The name of user `uid` (its number when it has none)."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def describe_process(pid: int, port: int = 0, established: int = 0) -> Owner | None:
    """The facts about one live process, or None when it is gone.

    A process we may only partly read (another user's, under a restrictive /proc)
    still yields what could be read, with `readable=False`.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            create_time = proc.create_time()
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None  # a zombie holds no sockets and can take no signal
            uids = proc.uids()
            name = proc.name()
            readable = True
            try:
                cmdline = tuple(proc.cmdline())
            except psutil.AccessDenied:
                cmdline, readable = (), False
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return Owner(port=port, readable=False, pid=pid, established=established)
    began = procfs.started(pid)
    if began is None:
        return None
    try:
        pgid: int | None = os.getpgid(pid)
    except ProcessLookupError:
        return None
    except OSError:
        pgid = None
    return Owner(
        port=port,
        readable=readable,
        pid=pid,
        name=name,
        cmdline=cmdline,
        user=user_name(uids.real),
        uid=uids.real,
        euid=uids.effective,
        create_time=create_time,
        started=began,
        pgid=pgid,
        established=established,
    )


class OwnerSearch:
    """Finds the processes listening on ports, remembering where sockets were seen.

    The memory (`sightings`) only makes the next search cheaper: every remembered
    location is checked against the kernel before it is used, so answers are as
    fresh as without it.
    """

    def __init__(self, sightings: SocketSightings | None = None) -> None:
        self.sightings = sightings if sightings is not None else SocketSightings()

    def forget(self) -> None:
        """Drop every remembered socket location, so the next search walks /proc afresh."""
        self.sightings.forget()

    def find_owners_many(self, ports: Iterable[int], prefer: Sequence[int] = ()) -> dict[int, list[Owner]]:
        """Owners of each of `ports` that has a listener (one table read, one /proc walk).

        `prefer` lists pids worth trying first (a service's previous children, a process
        group leader); it changes only the speed, never the answer.
        """
        found, established = listeners(list(ports))
        return self.owners_from(found, established, prefer)

    def find_owners(self, port: int, prefer: Sequence[int] = ()) -> list[Owner]:
        """The processes listening on `port`; empty when the port is free."""
        return self.find_owners_many([port], prefer).get(port, [])

    def find_owner(self, port: int, prefer: Sequence[int] = ()) -> Owner | None:
        """The (first) process listening on `port`, or None when it is free."""
        owners = self.find_owners(port, prefer)
        return owners[0] if owners else None

    def owners_from(
        self, found: list[Listener], established: dict[int, int], prefer: Sequence[int] = ()
    ) -> dict[int, list[Owner]]:
        """Group listeners (as `tables.listeners` lists them) by holding process, one
        Owner per (port, process)."""
        pid_of: dict[int, int] = {}
        missing = {s.inode: s.uid for s in found if s.pid is None and s.inode}
        if missing:
            pid_of = socket_holders(missing, prefer, self.sightings)
        by_port: dict[int, dict[int | tuple[str, int | None], list[Listener]]] = {}
        for listener in found:
            pid = listener.pid if listener.pid is not None else pid_of.get(listener.inode or -1)
            # Unseen holders are kept apart per uid: two unknown processes are not one.
            key = pid if pid is not None else ("unreadable", listener.uid)
            by_port.setdefault(listener.port, {}).setdefault(key, []).append(listener)
        result: dict[int, list[Owner]] = {}
        for port, groups in by_port.items():
            owners: list[Owner] = []
            count = established.get(port, 0)
            for key, socks in groups.items():
                addresses = tuple(dict.fromkeys(s.address for s in socks))
                inodes = tuple(s.inode for s in socks if s.inode)
                owner = describe_process(key, port, count) if isinstance(key, int) else None
                if owner is None or not owner.readable:
                    uid = socks[0].uid if owner is None or owner.uid is None else owner.uid
                    owner = Owner(
                        port=port,
                        readable=False,
                        pid=owner.pid if owner else None,
                        name=owner.name if owner else None,
                        uid=uid,
                        user=user_name(uid),
                        established=count,
                    )
                owners.append(replace(owner, addresses=addresses, inodes=inodes))
            result[port] = owners
        return result


def find_owners_many(ports: Iterable[int], prefer: Sequence[int] = ()) -> dict[int, list[Owner]]:
    """`OwnerSearch.find_owners_many` with a fresh search (nothing remembered)."""
    return OwnerSearch().find_owners_many(ports, prefer)


def find_owners(port: int, prefer: Sequence[int] = ()) -> list[Owner]:
    """`OwnerSearch.find_owners` with a fresh search (nothing remembered)."""
    return OwnerSearch().find_owners(port, prefer)


def find_owner(port: int, prefer: Sequence[int] = ()) -> Owner | None:
    """`OwnerSearch.find_owner` with a fresh search (nothing remembered)."""
    return OwnerSearch().find_owner(port, prefer)
