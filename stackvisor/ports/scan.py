"""Who listens on which TCP port, and which process that is.

Here: reading the kernel's TCP socket tables (sock_diag netlink, else `/proc/net/tcp`
and `/proc/net/tcp6`, else psutil), finding the process behind a listening socket,
and reading the few process facts the conflict rules need (pid, name, command line,
user, start time, process group, established connections). Everything here only
reads; nothing is decided (that is `conflicts`) and nothing is signalled (that is
`resolve`).

Only LISTEN sockets count as holding a port: a client connection that happens to use a
local port does not.

Finding the owner of a socket means finding the process that has a file descriptor
pointing at its inode; the kernel has no reverse index, so this is a walk over
`/proc/<pid>/fd`. The walk is kept short: processes of the socket's uid are read first
(the socket table tells us the uid), callers can name likely pids to try before those,
the rest are ordered by expected gain per cost (`_visit_order`), each fd directory
is read through one directory descriptor, and the walk stops as soon as every wanted
inode has an owner. The sockets passed on the way are remembered
(`_SocketSightings`), but a remembered location is only a place to look first: it is
checked with one readlink before it is used, so an answer is never older than the call
that produced it.
"""

from __future__ import annotations

import bisect
import os
import pwd
import re
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psutil

PROC = "/proc"
_TABLES = (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6))
_HAVE_PROC_NET = all(os.path.exists(path) for path, _ in _TABLES)

_STATE_ESTABLISHED = b"01"

# Two start times closer than one clock tick are the same process: psutil derives them
# from the same tick count, so real differences are at least 10 ms.
START_TIME_TOLERANCE = 0.005


@dataclass(frozen=True)
class Listener:
    """One listening socket as the kernel lists it."""

    port: int
    address: str
    family: int  # 4 or 6
    uid: int | None
    inode: int | None
    pid: int | None = None  # known up front only on the psutil route


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
    create_time: float | None = None
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


# --- the socket tables -------------------------------------------------------------
#
# Three sources, tried in order; each returns the same thing: the LISTEN sockets (on
# the wanted ports) and the number of ESTABLISHED sockets per wanted local port.
#
# 1. sock_diag netlink: the kernel filters by TCP state, so listing listeners never
#    touches the established hash table. That table has one bucket per 64 KiB or so
#    of RAM (262,144 on a 24 GB machine) and /proc/net/tcp walks all of it on every
#    read() call, a few milliseconds each time even with no connection at all.
# 2. /proc/net/tcp and /proc/net/tcp6, where netlink is refused (some sandboxes).
# 3. psutil, where there is no /proc.

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQUEST = struct.Struct("=BBBxI")  # family, protocol, ext, states; the socket id follows
_INET_DIAG_REQ_BYTECODE = 1
_BC_OP = struct.Struct("=BBH")  # struct inet_diag_bc_op: code, yes, no
_BC_JMP, _BC_S_GE, _BC_S_LE = 1, 2, 3
_BC_MAX_RANGES = 1000  # keeps the filter well under the 64 KiB attribute limit
_TCP_ESTABLISHED = 1
_TCP_LISTEN = 10


def _read(path: str) -> bytes:
    # /proc files report size 0, so read until EOF; a large buffer keeps the number
    # of read() calls (each one costs a walk of the kernel's hash tables) low.
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def _port_filter(ranges: list[tuple[int, int]]) -> bytes:
    """inet_diag bytecode accepting a socket whose local port is in one of `ranges`.

    The kernel runs it op by op: a true test moves `yes` bytes on, a false one `no`
    bytes; the socket matches when the run ends exactly at the end. Each range is
    `S_GE lo; S_LE hi` (16 bytes) whose failure skips 4 bytes past the block; between
    blocks a JMP turns "this block matched" into a jump to the very end, and its 4
    bytes are what a failed block skips, landing on the next block. The kernel's
    check of the program only accepts jumps to places reachable by `yes` steps, which
    this layout respects (it is the one `ss` builds for `sport = a or sport = b`).
    """
    blocks = [
        _BC_OP.pack(_BC_S_GE, 8, 20) + _BC_OP.pack(0, 0, lo) + _BC_OP.pack(_BC_S_LE, 8, 12) + _BC_OP.pack(0, 0, hi)
        for lo, hi in ranges
    ]
    out = b""
    for block in reversed(blocks):
        out = block + (_BC_OP.pack(_BC_JMP, 4, len(out) + 4) + out if out else b"")
    return out


def _netlink_dump(
    family: int, states: int, ports: Iterable[int] | None = None, detail: bool = True
) -> list[tuple[int, int, bytes, int, int]]:
    """(state, port, raw address, uid, inode) of the TCP sockets of `family` in `states`.

    The kernel filters by state and, when `ports` is given, by local port, so only
    matching sockets cross into Python. Without `detail` only state and port are
    decoded (address, uid and inode are left empty), which is what a free-port check
    needs.
    """
    sport = 0
    attribute = b""
    if ports is not None:
        ranges = _port_ranges(ports)
        if not ranges:
            return []
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            sport = ranges[0][0]  # the request's own socket id filters a single port
        elif len(ranges) <= _BC_MAX_RANGES:
            code = _port_filter(ranges)
            attribute = struct.pack("=HH", 4 + len(code), _INET_DIAG_REQ_BYTECODE) + code
    request = (
        _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, states)
        + struct.pack("!HH", sport, 0)
        + bytes(44)  # source and destination address, interface, cookie: any
        + attribute
    )
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
    )
    addr_len = 4 if family == socket.AF_INET else 16
    unpack_head = struct.Struct("=IH").unpack_from
    unpack_port = struct.Struct("!H").unpack_from
    unpack_owner = struct.Struct("=II").unpack_from
    out: list[tuple[int, int, bytes, int, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
        sock.sendall(header + request)
        while True:
            buf = sock.recv(1 << 17)
            if not buf:
                return out
            offset, size = 0, len(buf)
            while offset + _NLMSG_HEADER.size <= size:
                length, kind = unpack_head(buf, offset)
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", buf, offset + _NLMSG_HEADER.size)
                    raise OSError(-errno, "sock_diag dump refused")
                # struct inet_diag_msg: family, state, timer, retrans, then the socket
                # id (sport, dport big-endian; src, dst 16 bytes each; ifindex; cookie),
                # then expires, rqueue, wqueue, uid, inode.
                body = offset + _NLMSG_HEADER.size
                port = unpack_port(buf, body + 4)[0]
                if detail:
                    uid, inode = unpack_owner(buf, body + 64)
                    out.append((buf[body + 1], port, buf[body + 8 : body + 8 + addr_len], uid, inode))
                else:
                    out.append((buf[body + 1], port, b"", 0, 0))
                offset += (length + 3) & ~3


def _netlink_sockets(wanted: set[int] | None, established: bool) -> tuple[list[Listener], dict[int, int]]:
    states = 1 << _TCP_LISTEN
    if established:
        states |= 1 << _TCP_ESTABLISHED
    found: list[Listener] = []
    counts: dict[int, int] = {}
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        for state, port, raw, uid, inode in _netlink_dump(family, states, wanted):
            # The kernel filter may be coarser than the set (or absent): check again.
            if wanted is not None and port not in wanted:
                continue
            if state == _TCP_ESTABLISHED:
                counts[port] = counts.get(port, 0) + 1
            elif state == _TCP_LISTEN:
                found.append(Listener(port, socket.inet_ntop(family, raw), version, uid, inode))
    return found, counts


def _netlink_listening(wanted: set[int] | None) -> set[int]:
    ports: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        ports.update(port for _, port, _, _, _ in _netlink_dump(family, 1 << _TCP_LISTEN, wanted, detail=False))
    return ports if wanted is None else ports & wanted


def _decode_address(hexaddr: bytes) -> str:
    raw = bytes.fromhex(hexaddr.decode())
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6 is printed as four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def _proc_sockets(wanted: set[int] | None, established: bool) -> tuple[list[Listener], dict[int, int]]:
    found: list[Listener] = []
    counts: dict[int, int] = {}
    states = b"0A|01" if established else b"0A"
    if wanted is not None and len(wanted) <= 8:
        # Naming the ports in the pattern lets the regex engine skip other lines fast.
        ports = b"|".join(b"%04X" % p for p in sorted(wanted))
    else:
        ports = b"[0-9A-F]{4}"
    line_re = re.compile(rb"\d: ([0-9A-F]+):(" + ports + rb") [0-9A-F]+:[0-9A-F]{4} (" + states + rb") [^\n]*")
    for path, version in _TABLES:
        for match in line_re.finditer(_read(path)):
            port = int(match.group(2), 16)
            if wanted is not None and port not in wanted:
                continue
            if match.group(3) == _STATE_ESTABLISHED:
                counts[port] = counts.get(port, 0) + 1
                continue
            # Fields: sl, local, remote, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode.
            fields = match.group(0).split()
            address = _decode_address(match.group(1))
            found.append(Listener(port, address, version, int(fields[7]), int(fields[9])))
    return found, counts


def _psutil_sockets(wanted: set[int] | None, established: bool) -> tuple[list[Listener], dict[int, int]]:
    found: list[Listener] = []
    counts: dict[int, int] = {}
    try:
        conns = psutil.net_connections("tcp")
    except psutil.AccessDenied:
        conns = []
    for conn in conns:
        port = conn.laddr.port
        if wanted is not None and port not in wanted:
            continue
        if conn.status == psutil.CONN_ESTABLISHED and established:
            counts[port] = counts.get(port, 0) + 1
        elif conn.status == psutil.CONN_LISTEN:
            version = 6 if conn.family == socket.AF_INET6 else 4
            found.append(Listener(port, conn.laddr.ip, version, None, None, conn.pid))
    return found, counts


def listeners(ports: Iterable[int] | None = None, established: bool = True) -> tuple[list[Listener], dict[int, int]]:
    """Listening sockets (on `ports`, or on all ports) and ESTABLISHED counts per port.

    The counts are per local port, so they are a server's accepted connections; they
    are left out (empty) with `established=False`, which is cheaper.
    """
    wanted = None if ports is None else set(ports)
    if wanted is not None and not wanted:
        return [], {}
    if _HAVE_PROC_NET:
        try:
            return _netlink_sockets(wanted, established)
        except OSError:
            return _proc_sockets(wanted, established)
    return _psutil_sockets(wanted, established)


def _listening(wanted: set[int] | None) -> set[int]:
    if _HAVE_PROC_NET:
        try:
            return _netlink_listening(wanted)
        except OSError:
            pass
    found, _ = (_proc_sockets if _HAVE_PROC_NET else _psutil_sockets)(wanted, False)
    return {listener.port for listener in found}


def listening_ports() -> set[int]:
    """Every TCP port with a listener on any address, IPv4 or IPv6."""
    return _listening(None)


def is_free(port: int) -> bool:
    """True when nobody listens on `port` (on any address, either family)."""
    return not _listening({port})


def free_ports(ports: Iterable[int]) -> list[int]:
    """The ports of `ports` nobody listens on, in the given order (one query)."""
    ports = list(ports)
    busy = _listening(set(ports))
    return [p for p in ports if p not in busy]


# --- from socket to process --------------------------------------------------------


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
        for name in os.listdir(proc_fd):
            if not name.isdigit() or int(name) in skip:
                continue
            try:
                # One stat gives both: the fd directory belongs to the process's
                # effective uid, and since Linux 6.2 its size is the number of open
                # fds (0 before, which leaves the age alone to decide).
                info = os.stat(f"{name}/fd", dir_fd=proc_fd)
            except OSError:
                continue
            (mine if info.st_uid in uids else others).append((int(name), info.st_size))
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


class _SocketSightings:
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
        try:
            if os.readlink(f"{PROC}/{pid}/fd/{fd}") == link:
                return pid
        except OSError:
            pass
        self.seen.pop(link, None)
        return None

    def record(self, found: dict[str, tuple[int, str]]) -> None:
        if len(self.seen) + len(found) > self.limit:
            self.seen.clear()
        self.seen.update(found)

    def forget(self) -> None:
        self.seen.clear()


_sightings = _SocketSightings()


def forget_sightings() -> None:
    """Drop every remembered socket location, so the next lookup walks /proc afresh."""
    _sightings.forget()


def _inode_owners(inodes: dict[int, int | None], prefer: Sequence[int]) -> dict[int, int]:
    """inode -> the first pid found holding it; inodes with no visible holder are absent."""
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, int] = {}
    for link in list(targets):
        pid = _sightings.confirm(link)
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
        _sightings.record(sockets)


def _user_name(uid: int | None) -> str | None:
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
        user=_user_name(uids.real),
        uid=uids.real,
        euid=uids.effective,
        create_time=create_time,
        pgid=pgid,
        established=established,
    )


def _owners_from(
    found: list[Listener], established: dict[int, int], prefer: Sequence[int]
) -> dict[int, list[Owner]]:
    """Group listeners by holding process, one Owner per (port, process)."""
    pid_of: dict[int, int] = {}
    missing = {l.inode: l.uid for l in found if l.pid is None and l.inode}
    if missing:
        pid_of = _inode_owners(missing, prefer)
    by_port: dict[int, dict[Any, list[Listener]]] = {}
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
                    user=_user_name(uid),
                    established=count,
                )
            owners.append(replace(owner, addresses=addresses, inodes=inodes))
        result[port] = owners
    return result


def find_owners_many(ports: Iterable[int], prefer: Sequence[int] = ()) -> dict[int, list[Owner]]:
    """Owners of each of `ports` that has a listener (one table read, one /proc walk).

    `prefer` lists pids worth trying first (a service's previous children, a process
    group leader); it changes only the speed, never the answer.
    """
    found, established = listeners(list(ports))
    return _owners_from(found, established, prefer)


def find_owners(port: int, prefer: Sequence[int] = ()) -> list[Owner]:
    """The processes listening on `port`; empty when the port is free."""
    return find_owners_many([port], prefer).get(port, [])


def find_owner(port: int, prefer: Sequence[int] = ()) -> Owner | None:
    """The (first) process listening on `port`, or None when it is free."""
    owners = find_owners(port, prefer)
    return owners[0] if owners else None


# --- process relations ------------------------------------------------------------


def lineage(pid: int) -> frozenset[int]:
    """`pid` and all of its ancestors: processes that must never be signalled."""
    out = {pid}
    try:
        out.update(p.pid for p in psutil.Process(pid).parents())
    except psutil.Error:
        pass
    return frozenset(out)


def group_members(pgid: int) -> list[int]:
    """The live pids of process group `pgid` (read from /proc/<pid>/stat)."""
    members: list[int] = []
    if not os.path.isdir(PROC):
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == pgid:
                    members.append(proc.pid)
            except OSError:
                continue
        return members
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            with open(f"{PROC}/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses: split after
        # its last ")". Then: state, ppid, pgrp.
        rest = stat[stat.rfind(b")") + 2 :].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != b"Z":
            members.append(int(name))
    return members


def same_process(pid: int, create_time: float | None) -> bool:
    """True while `pid` is still the process that started at `create_time` (not a zombie)."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > START_TIME_TOLERANCE:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
