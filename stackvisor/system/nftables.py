"""Connections to one local port sent to another by the kernel: nftables redirects, for
`socket: proxy` while its service serves (see `runtime.forwarding`).

One table per supervisor, `stackvisor-PID-XXXXXX`, made with the owner flag: nobody
else may change or delete it (`nft flush ruleset` leaves it), and the kernel deletes it
when the netlink socket that made it closes, that is when the supervisor's process
ends, however it ends (a SIGKILL leaves no rule behind). Its one chain sees locally made
IPv4 connections at the NAT stage of the output hook. Its first rule, made with it and
kept as long as it is, does nothing to a packet:

    ct state new

It is there because the kernel tracks connections only while some rule needs it: with
the redirects alone, tracking stopped whenever the last one went (a service restarting)
and started again when one came back. A connection the relay took in between was then
picked up half-way, and if an entry left by a redirected connection from the same
client port was still there, NAT sent the relay's bytes to the client from another
port, which the client drops: the connection hung with nothing behind it. Then comes
a rule per public port:

    ip daddr 127.0.0.1 tcp dport PUBLIC tcp flags syn / fin,syn,rst,ack redirect to :INTERNAL

Only new connections are redirected, by their first packet; one already open keeps its
way, even one the kernel picks up half-way. Setting or unsetting one port is one small
batch, which the kernel applies whole or not at all; the kernel echoes a rule it made
back with its handle, by which it is deleted.

The messages are netlink (nfnetlink) spoken directly, so no `nft` program is needed;
they are built by pure functions. Anything refused (no CAP_NET_ADMIN, no nf_tables in
the kernel, a table of that name already there) is `Unavailable`, with the reason.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import struct
from collections.abc import Iterator

_NETLINK_NETFILTER = 12
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_ECHO = 0x1, 0x4, 0x8
_NLM_F_EXCL, _NLM_F_CREATE, _NLM_F_APPEND = 0x200, 0x400, 0x800
_NLMSG_ERROR = 2
_NLA_F_NESTED = 0x8000
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id

_SUBSYS = 10  # NFNL_SUBSYS_NFTABLES
_BATCH_BEGIN, _BATCH_END = 16, 17
_NEWTABLE, _DELTABLE, _NEWCHAIN, _NEWRULE, _DELRULE = 0, 2, 3, 6, 8
_IPV4 = 2  # NFPROTO_IPV4
_TABLE_NAME, _TABLE_FLAGS, _TABLE_F_OWNER = 1, 2, 0x2
_CHAIN_TABLE, _CHAIN_NAME, _CHAIN_HOOK, _CHAIN_TYPE = 1, 3, 4, 7
_HOOK_NUM, _HOOK_PRIORITY = 1, 2
_LOCAL_OUT = 3  # NF_INET_LOCAL_OUT
_NAT_PRIORITY = -100  # NF_IP_PRI_NAT_DST: where `nft` puts a `type nat hook output` chain
_RULE_TABLE, _RULE_CHAIN, _RULE_HANDLE, _RULE_EXPRESSIONS = 1, 2, 3, 4
CHAIN = "redirects"
_LIST_ELEM, _EXPR_NAME, _EXPR_DATA, _DATA_VALUE = 1, 1, 2, 1
_REG = 1  # NFT_REG_1: every expression below loads into and compares from it
_DREG = _SREG = 1  # the register attribute of payload, meta, cmp and immediate
_PAYLOAD_BASE, _PAYLOAD_OFFSET, _PAYLOAD_LEN = 2, 3, 4
_NETWORK_HEADER, _TRANSPORT_HEADER = 1, 2
_CMP_OP, _CMP_DATA, _CMP_EQ = 2, 3, 0
_META_KEY, _META_L4PROTO = 2, 16
_IMMEDIATE_DATA = 2
_REDIR_REG_PROTO_MIN = 1
_CT_DREG, _CT_KEY, _CT_STATE, _CT_STATE_NEW = 1, 2, 0, 8
_BITWISE_SREG, _BITWISE_DREG, _BITWISE_LEN, _BITWISE_MASK, _BITWISE_XOR = 1, 2, 3, 4, 5
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

_LOOPBACK = socket.inet_aton("127.0.0.1")


class Unavailable(Exception):
    """The kernel will not redirect for us here; the message says why."""


# --- messages (pure) ---------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | _NLA_F_NESTED, b"".join(attrs))


def _u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!i" if value < 0 else "!I", value))


def _text(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def _message(kind: int, flags: int, seq: int, attrs: bytes = b"", *, family: int = _IPV4) -> bytes:
    """An nfnetlink message: the netlink header, then family, version 0, resource id."""
    res_id = _SUBSYS if kind in (_BATCH_BEGIN, _BATCH_END) else 0
    body = struct.pack("=BB", family, 0) + struct.pack("!H", res_id) + attrs
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(_LIST_ELEM, _text(_EXPR_NAME, name), nest(_EXPR_DATA, *attrs))


def _equals(value: bytes) -> bytes:
    return _expr("cmp", _u32(_SREG, _REG), _u32(_CMP_OP, _CMP_EQ), nest(_CMP_DATA, attr(_DATA_VALUE, value)))


def _load(base: int, offset: int, length: int) -> bytes:
    """`length` bytes of the packet's header at `base` into the register."""
    where = _u32(_PAYLOAD_BASE, base) + _u32(_PAYLOAD_OFFSET, offset) + _u32(_PAYLOAD_LEN, length)
    return _expr("payload", _u32(_DREG, _REG), where)


def redirect(public: int, internal: int) -> bytes:
    """The expressions of `ip daddr 127.0.0.1 tcp dport PUBLIC tcp flags syn /
    fin,syn,rst,ack redirect to :INTERNAL`: only a connection's first packet. The
    kernel also shows NAT, as new, a connection it picks up half-way (one made while it
    tracked nothing): that one is not redirected, or its packets would reach a port
    that never heard of it."""
    to_port = nest(_IMMEDIATE_DATA, attr(_DATA_VALUE, struct.pack("!H", internal)))
    flags = bytes([_FIN | _SYN | _RST | _ACK])
    only = _u32(_BITWISE_SREG, _REG) + _u32(_BITWISE_DREG, _REG) + _u32(_BITWISE_LEN, 1)
    mask = nest(_BITWISE_MASK, attr(_DATA_VALUE, flags)) + nest(_BITWISE_XOR, attr(_DATA_VALUE, b"\0"))
    return b"".join(
        [
            _load(_NETWORK_HEADER, 16, 4),  # the destination address
            _equals(_LOOPBACK),
            _expr("meta", _u32(_DREG, _REG), _u32(_META_KEY, _META_L4PROTO)),
            _equals(bytes([socket.IPPROTO_TCP])),
            _load(_TRANSPORT_HEADER, 2, 2),  # the destination port
            _equals(struct.pack("!H", public)),
            _load(_TRANSPORT_HEADER, 13, 1),  # the flags
            _expr("bitwise", only, mask),
            _equals(bytes([_SYN])),
            _expr("immediate", _u32(_DREG, _REG), to_port),
            _expr("redir", _u32(_REDIR_REG_PROTO_MIN, _REG)),
        ]
    )


def tracking() -> bytes:
    """The expressions of `ct state new`, with no verdict: the rule that keeps the kernel
    tracking connections while the table is there (see above)."""
    state = _expr("ct", _u32(_CT_DREG, _REG), _u32(_CT_KEY, _CT_STATE))
    return state + _equals(struct.pack("=I", _CT_STATE_NEW))


def making(seq: int, table: str) -> tuple[bytes, list[int]]:
    """One transaction: the table, its chain and the tracking rule."""
    ack = _NLM_F_REQUEST | _NLM_F_ACK
    hook = nest(_CHAIN_HOOK, _u32(_HOOK_NUM, _LOCAL_OUT), _u32(_HOOK_PRIORITY, _NAT_PRIORITY))
    table_attrs = _text(_TABLE_NAME, table) + _u32(_TABLE_FLAGS, _TABLE_F_OWNER)
    chain_attrs = _text(_CHAIN_TABLE, table) + _text(_CHAIN_NAME, CHAIN) + hook + _text(_CHAIN_TYPE, "nat")
    rule_attrs = _text(_RULE_TABLE, table) + _text(_RULE_CHAIN, CHAIN) + nest(_RULE_EXPRESSIONS, tracking())
    return _framed(
        seq,
        [
            (_NEWTABLE, ack | _NLM_F_CREATE | _NLM_F_EXCL, table_attrs),
            (_NEWCHAIN, ack | _NLM_F_CREATE, chain_attrs),
            (_NEWRULE, ack | _NLM_F_CREATE | _NLM_F_APPEND, rule_attrs),
        ],
    )


def setting(
    seq: int, table: str, public: int, internal: int, *, replacing: int | None = None
) -> tuple[bytes, list[int]]:
    """One transaction: the rule of handle `replacing` deleted, and the public port's rule
    added, echoed back with its handle. Its bytes, and the sequence numbers the kernel
    answers (the rule's is the last)."""
    ack = _NLM_F_REQUEST | _NLM_F_ACK
    names = _text(_RULE_TABLE, table) + _text(_RULE_CHAIN, CHAIN)
    parts: list[tuple[int, int, bytes]] = []
    if replacing is not None:
        parts.append((_DELRULE, ack, names + attr(_RULE_HANDLE, struct.pack("!Q", replacing))))
    expressions = nest(_RULE_EXPRESSIONS, redirect(public, internal))
    parts.append((_NEWRULE, ack | _NLM_F_ECHO | _NLM_F_CREATE | _NLM_F_APPEND, names + expressions))
    return _framed(seq, parts)


def unsetting(seq: int, table: str, handle: int) -> tuple[bytes, list[int]]:
    """One transaction: the rule of `handle` deleted."""
    names = _text(_RULE_TABLE, table) + _text(_RULE_CHAIN, CHAIN)
    return _framed(
        seq, [(_DELRULE, _NLM_F_REQUEST | _NLM_F_ACK, names + attr(_RULE_HANDLE, struct.pack("!Q", handle)))]
    )


def drop_table(seq: int, table: str) -> tuple[bytes, list[int]]:
    return _framed(seq, [(_DELTABLE, _NLM_F_REQUEST | _NLM_F_ACK, _text(_TABLE_NAME, table))])


def _framed(seq: int, parts: list[tuple[int, int, bytes]]) -> tuple[bytes, list[int]]:
    seqs = [seq + 1 + i for i in range(len(parts))]
    messages = [
        _message(_SUBSYS << 8 | kind, flags, s, attrs)
        for s, (kind, flags, attrs) in zip(seqs, parts, strict=True)
    ]
    begin = _message(_BATCH_BEGIN, _NLM_F_REQUEST, seq, family=socket.AF_UNSPEC)
    end = _message(_BATCH_END, _NLM_F_REQUEST, seq + len(parts) + 1, family=socket.AF_UNSPEC)
    return begin + b"".join(messages) + end, seqs


def replies(data: bytes) -> Iterator[tuple[int, int, int | None]]:
    """What the kernel answered in `data`: (sequence number, error number, rule handle)
    for each acknowledgement (error 0: done) and each echoed rule (its handle)."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        size, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
        if size < _HEADER.size or offset + size > len(data):
            return
        body = offset + _HEADER.size
        if kind == _NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            yield seq, -code, None
        elif kind == _SUBSYS << 8 | _NEWRULE:
            handle = attribute(data[body + 4 : offset + size], _RULE_HANDLE)  # after nfgenmsg
            if handle is not None and len(handle) == 8:
                yield seq, 0, struct.unpack("!Q", handle)[0]
        offset += (size + 3) & ~3


def attribute(attrs: bytes, wanted: int) -> bytes | None:
    offset = 0
    while offset + 4 <= len(attrs):
        size, kind = struct.unpack_from("=HH", attrs, offset)
        if size < 4:
            return None
        if kind & ~_NLA_F_NESTED == wanted:
            return attrs[offset + 4 : offset + size]
        offset += (size + 3) & ~3
    return None


# --- the kernel (effects) ------------------------------------------------------------


class Redirects:
    """The supervisor's table, made at `open` or the first `set`; gone at `close` or at
    exit.

    It stays while the supervisor runs, rules or not: a NAT chain of the network
    namespace going and coming unhooks NAT under connections being made and open, and
    tracking has to go on (see above)."""

    def __init__(self, table: str | None = None) -> None:
        # The pid says whose; the rest keeps two supervisors of one network namespace
        # apart when they are in different pid namespaces (both pid 1, say).
        self.table = table or f"stackvisor-{os.getpid()}-{secrets.token_hex(3)}"
        self.handles: dict[int, int] = {}  # public port -> its rule's handle
        self._sock: socket.socket | None = None
        self._seq = 0

    def open(self) -> None:
        """Make the table, with its chain and tracking rule, unless it is made."""
        if self._sock is not None:
            return
        self._sock = _open()
        try:
            self._talk(*making(self._next(), self.table))
        except Unavailable:
            self.close()
            raise

    def set(self, public: int, internal: int) -> None:
        """New connections to 127.0.0.1:`public` go to `internal` from now on."""
        self.open()
        data, seqs = setting(self._next(), self.table, public, internal, replacing=self.handles.get(public))
        handle = self._talk(data, seqs)
        if handle is None:
            raise Unavailable("nftables did not say which rule it made")
        self.handles[public] = handle

    def unset(self, public: int) -> None:
        """New connections to `public` go where they are addressed again."""
        handle = self.handles.pop(public, None)
        if self._sock is not None and handle is not None:
            self._talk(*unsetting(self._next(), self.table, handle))

    def close(self) -> None:
        """Delete the table (the kernel would on its own once the socket is closed)."""
        sock, self._sock = self._sock, None
        self.handles.clear()
        if sock is None:
            return
        try:
            self._talk(*drop_table(self._next(), self.table), sock=sock)
        except Unavailable:
            pass  # never made, or gone: closing the socket is all that is left
        finally:
            sock.close()

    def _next(self) -> int:
        self._seq += 100  # past every number the previous batch used
        return self._seq

    def _talk(self, data: bytes, seqs: list[int], *, sock: socket.socket | None = None) -> int | None:
        """Send a batch and wait for every answer; the handle of a rule it made."""
        sock = sock or self._sock
        assert sock is not None
        waiting, handle = set(seqs), None
        try:
            sock.send(data)
            while waiting:
                for seq, code, made in replies(sock.recv(65536)):
                    if code and seq == seqs[0] - 1:  # the batch as a whole: not allowed
                        raise Unavailable(_explain(code))
                    if code and seq in waiting:
                        raise Unavailable(_explain(code, self.table))
                    if made is not None and seq == seqs[-1]:
                        handle = made
                    elif made is None:
                        waiting.discard(seq)
        except OSError as exc:
            raise Unavailable(f"netlink: {exc.strerror or exc}") from None
        return handle


def _open() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    except (OSError, AttributeError) as exc:
        raise Unavailable(f"no netfilter netlink here ({getattr(exc, 'strerror', None) or exc})") from None
    sock.settimeout(5.0)
    try:
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"netlink: {exc.strerror}") from None
    return sock


def _explain(code: int, table: str = "") -> str:
    """Why a batch (no `table`) or one of its messages was refused."""
    if table and code in (errno.EEXIST, errno.EPERM):  # EPERM: another socket's table
        return f"an nftables table named {table} is already there"
    if code == errno.EPERM:
        return "the kernel refused nftables changes (it takes CAP_NET_ADMIN)"
    return f"nftables: {os.strerror(code)}"
