"""The kernel's connection tracking entries of a proxied public port, deleted once they
point at an internal port nobody serves any more (see `runtime.forwarding`).

A redirect is decided at a connection's first packet and kept in its tracking entry,
which outlives the connection: 10 s in CLOSE after a reset, 2 minutes in TIME_WAIT, and
days in ESTABLISHED when tracking stopped before the close was seen (a supervisor
killed, its table gone with it). A new connection from the same client port that finds
such an entry is not always tracked anew: its SYN, in CLOSE after the server's reset or
in ESTABLISHED, is let through on the old entry, to the old internal port, and every
reset that comes back keeps the entry 10 s more. It is refused while nothing listens
there, and served by whoever listens there now otherwise. So the entries of an instance
that is gone are deleted, as Docker and kube-proxy delete the entries of a mapping that
changed.

The messages are ctnetlink, built and read by pure functions; `forget` is the effect.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from stackvisor.system.nftables import attr, attribute, nest

_NETLINK_NETFILTER = 12
_SUBSYS = 1  # NFNL_SUBSYS_CTNETLINK
_NEW, _GET, _DELETE = 0, 1, 2  # IPCTNL_MSG_CT_*
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP = 0x1, 0x4, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
_TUPLE_ORIG, _TUPLE_REPLY, _ID = 1, 2, 12  # CTA_*
_TUPLE_IP, _TUPLE_PROTO = 1, 2  # CTA_TUPLE_*
_IP_SRC, _IP_DST = 1, 2  # CTA_IP_V4_*
_PROTO_NUM, _PROTO_SRC, _PROTO_DST = 1, 2, 3  # CTA_PROTO_*

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Entry:
    """One tracked IPv4 connection: its first packet's addresses and ports, where the
    answers come from (the internal port, when it was redirected), and its id."""

    protocol: int
    source: str
    destination: str
    source_port: int
    destination_port: int
    answered_from: int  # the reply's source port
    id: int


def _message(kind: int, flags: int, seq: int, attrs: bytes = b"") -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs  # nfgenmsg
    return _HEADER.pack(_HEADER.size + len(body), _SUBSYS << 8 | kind, flags, seq, 0) + body


def dumping(seq: int) -> bytes:
    """The request for every IPv4 entry."""
    return _message(_GET, _NLM_F_REQUEST | _NLM_F_DUMP, seq)


def deleting(seq: int, entry: Entry) -> bytes:
    """The request that deletes `entry`, and nothing else: by its first packet's tuple
    and its id (a new connection of the same tuple meanwhile has another)."""
    ip = nest(
        _TUPLE_IP,
        attr(_IP_SRC, socket.inet_aton(entry.source)),
        attr(_IP_DST, socket.inet_aton(entry.destination)),
    )
    ports = attr(_PROTO_SRC, struct.pack("!H", entry.source_port)) + attr(
        _PROTO_DST, struct.pack("!H", entry.destination_port)
    )
    proto = nest(_TUPLE_PROTO, attr(_PROTO_NUM, bytes([entry.protocol])), ports)
    return _message(
        _DELETE,
        _NLM_F_REQUEST | _NLM_F_ACK,
        seq,
        nest(_TUPLE_ORIG, ip, proto) + attr(_ID, struct.pack("!I", entry.id)),
    )


def _tuple(data: bytes) -> tuple[int, str, str, int, int] | None:
    ip, proto = attribute(data, _TUPLE_IP), attribute(data, _TUPLE_PROTO)
    if ip is None or proto is None:
        return None
    src, dst, num = attribute(ip, _IP_SRC), attribute(ip, _IP_DST), attribute(proto, _PROTO_NUM)
    sport, dport = attribute(proto, _PROTO_SRC), attribute(proto, _PROTO_DST)
    if src is None or dst is None or num is None or sport is None or dport is None:
        return None  # an ICMP entry has no ports
    return (
        num[0],
        socket.inet_ntoa(src[:4]),
        socket.inet_ntoa(dst[:4]),
        *struct.unpack("!HH", sport[:2] + dport[:2]),
    )


def replies(data: bytes) -> Iterator[Entry | int]:
    """What the kernel sent in `data`: each entry, then its last word as an int (0: the
    dump is done or the request was acknowledged; else the error number)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        size, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size or offset + size > len(data):
            return
        body = data[offset + _HEADER.size : offset + size]
        offset += (size + 3) & ~3
        if kind == _NLMSG_DONE:
            yield 0
        elif kind == _NLMSG_ERROR:
            yield -struct.unpack_from("=i", body)[0]
        elif kind == _SUBSYS << 8 | _NEW:
            attrs = body[4:]  # after nfgenmsg
            orig, reply, ident = (
                attribute(attrs, _TUPLE_ORIG),
                attribute(attrs, _TUPLE_REPLY),
                attribute(attrs, _ID),
            )
            first = _tuple(orig) if orig is not None else None
            answer = _tuple(reply) if reply is not None else None
            if first is not None and answer is not None and ident is not None:
                yield Entry(*first, answered_from=answer[3], id=struct.unpack("!I", ident[:4])[0])


def stale(entries: Iterator[Entry | int] | list[Entry], public: int, internal: int | None) -> list[Entry]:
    """The TCP entries of connections to 127.0.0.1:`public` that were redirected to
    `internal` (None: every one of them, redirected or not)."""
    return [
        e
        for e in entries
        if isinstance(e, Entry)
        and e.protocol == socket.IPPROTO_TCP
        and (e.destination, e.destination_port) == (LOOPBACK, public)
        and (internal is None or e.answered_from == internal)
    ]


# --- the kernel (effects) ------------------------------------------------------------


def entries() -> list[Entry]:
    """Every IPv4 entry the kernel tracks now. OSError when it will not tell (no
    CAP_NET_ADMIN, no connection tracking)."""
    with _opened() as sock:
        sock.send(dumping(1))
        found: list[Entry] = []
        while not _read(sock, found):
            pass
        return found


def forget(public: int, internal: int | None = None, *, still: Callable[[], bool] = lambda: True) -> int:
    """Delete the entries of `stale`, while `still()` holds; how many went. OSError as
    for `entries`."""
    doomed = stale(entries(), public, internal)
    if not doomed:
        return 0
    gone = 0
    with _opened() as sock:
        for seq, entry in enumerate(doomed, start=2):
            if not still():
                break
            sock.send(deleting(seq, entry))
            while not _read(sock, []):
                pass
            gone += 1
    return gone


def _opened() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    sock.settimeout(5.0)
    sock.bind((0, 0))
    return sock


def _read(sock: socket.socket, into: list[Entry]) -> bool:
    """One read of answers into `into`; True once the last word came."""
    for said in replies(sock.recv(1 << 20)):
        if isinstance(said, Entry):
            into.append(said)
        elif said in (0, errno.ENOENT):  # ENOENT: a deleted one went meanwhile
            return True
        else:
            raise OSError(said, f"connection tracking: {errno.errorcode.get(said, said)}")
    return False
