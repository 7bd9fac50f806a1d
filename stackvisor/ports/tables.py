"""The kernel's TCP socket tables: who listens on which port (but not which process).

Here: the LISTEN sockets on some or all ports, with their address, uid and inode,
and the number of ESTABLISHED connections per local port, from the first source
that answers (sock_diag netlink, else `/proc/net/tcp` and `/proc/net/tcp6`, else
psutil); and the quick questions built on them (`is_free`, `free_ports`,
`listening_ports`). Only LISTEN sockets count as holding a port: a client
connection that happens to use a local port does not. UDP has no LISTEN state: its
listeners are the bound sockets with no peer (`udp_listeners`), asked for apart.

What does not live here: finding the process behind a socket (`owners`), deciding
anything (`conflicts`) or acting (`resolve`). Everything here only reads.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

_TABLES = (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6))
_HAVE_PROC_NET = all(os.path.exists(path) for path, _ in _TABLES)

_STATE_ESTABLISHED = b"01"
_STATE_CLOSE_WAIT = b"08"

_UDP_TABLES = (("/proc/net/udp", 4), ("/proc/net/udp6", 6))
_UDP_UNCONNECTED = b"07"  # TCP_CLOSE: bound, no peer (a connect()ed socket shows 01)


@dataclass(frozen=True)
class Listener:
    """One listening socket as the kernel lists it."""

    port: int
    address: str
    family: int  # 4 or 6
    uid: int | None
    inode: int | None
    pid: int | None = None  # known up front only on the psutil route


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
_TCP_CLOSE_WAIT = 8  # its client half-closed it; the server has yet to answer and close
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
        _BC_OP.pack(_BC_S_GE, 8, 20)
        + _BC_OP.pack(0, 0, lo)
        + _BC_OP.pack(_BC_S_LE, 8, 12)
        + _BC_OP.pack(0, 0, hi)
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
        states |= 1 << _TCP_ESTABLISHED | 1 << _TCP_CLOSE_WAIT
    found: list[Listener] = []
    counts: dict[int, int] = {}
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        for state, port, raw, uid, inode in _netlink_dump(family, states, wanted):
            # The kernel filter may be coarser than the set (or absent): check again.
            if wanted is not None and port not in wanted:
                continue
            if state in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
                counts[port] = counts.get(port, 0) + 1
            elif state == _TCP_LISTEN:
                found.append(Listener(port, socket.inet_ntop(family, raw), version, uid, inode))
    return found, counts


def _netlink_listening(wanted: set[int] | None) -> set[int]:
    ports: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        ports.update(
            port for _, port, _, _, _ in _netlink_dump(family, 1 << _TCP_LISTEN, wanted, detail=False)
        )
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
    states = b"0A|01|08" if established else b"0A"
    if wanted is not None and len(wanted) <= 8:
        # Naming the ports in the pattern lets the regex engine skip other lines fast.
        ports = b"|".join(b"%04X" % p for p in sorted(wanted))
    else:
        ports = b"[0-9A-F]{4}"
    line_re = re.compile(
        rb"\d: ([0-9A-F]+):(" + ports + rb") [0-9A-F]+:[0-9A-F]{4} (" + states + rb") [^\n]*"
    )
    for path, version in _TABLES:
        for match in line_re.finditer(_read(path)):
            port = int(match.group(2), 16)
            if wanted is not None and port not in wanted:
                continue
            if match.group(3) in (_STATE_ESTABLISHED, _STATE_CLOSE_WAIT):
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
        local = conn.laddr
        if not local:  # psutil leaves it empty for a socket with no local address
            continue
        port = local.port
        if wanted is not None and port not in wanted:
            continue
        if conn.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT) and established:
            counts[port] = counts.get(port, 0) + 1
        elif conn.status == psutil.CONN_LISTEN:
            version = 6 if conn.family == socket.AF_INET6 else 4
            found.append(Listener(port, local.ip, version, None, None, conn.pid))
    return found, counts


def listeners(
    ports: Iterable[int] | None = None, established: bool = True
) -> tuple[list[Listener], dict[int, int]]:
    """Listening sockets (on `ports`, or on all ports) and counts of open connections
    per port (ESTABLISHED, and CLOSE_WAIT: half-closed by the client, not yet answered).

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


def udp_listeners() -> list[Listener]:
    """Every bound UDP socket with no peer, on any port: what listens for datagrams.

    A socket that called connect() (a client talking to one server) is left out, as an
    ESTABLISHED TCP socket is. From `/proc/net/udp` and `/proc/net/udp6` (a table as
    small as the number of UDP sockets), else psutil.
    """
    found: list[Listener] = []
    tables = [(path, version) for path, version in _UDP_TABLES if os.path.exists(path)]
    if not tables:
        try:
            conns = psutil.net_connections("udp")
        except psutil.AccessDenied:
            return []
        for conn in conns:
            if conn.laddr and conn.laddr.port and not conn.raddr:
                version = 6 if conn.family == socket.AF_INET6 else 4
                found.append(Listener(conn.laddr.port, conn.laddr.ip, version, None, None, conn.pid))
        return found
    line_re = re.compile(
        rb"\d: ([0-9A-F]+):([0-9A-F]{4}) [0-9A-F]+:[0-9A-F]{4} " + _UDP_UNCONNECTED + rb" [^\n]*"
    )
    for path, version in tables:
        for match in line_re.finditer(_read(path)):
            port = int(match.group(2), 16)
            if port == 0:
                continue
            # The same fields as the TCP tables: sl, local, remote, st, ..., uid(7), inode(9).
            fields = match.group(0).split()
            address = _decode_address(match.group(1))
            found.append(Listener(port, address, version, int(fields[7]), int(fields[9]) or None))
    return found


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
