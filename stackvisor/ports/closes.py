"""The kernel's word when a listening TCP socket goes: sock_diag's destroy groups.

Every TCP socket of the network namespace that is destroyed is told to the members of
`SKNLGRP_INET_TCP_DESTROY` (and its IPv6 twin), a millisecond or two after a process that
held it is killed. A classic BPF program on our socket lets through, in the kernel, only
the ones with no peer (a listener; a socket that never connected) on the ports we
watch, so the connections and sockets of a busy machine cost nothing here. A connection
its server ends with a reset (SO_LINGER 0) is told with its peer's port cleared, as a
listener's: its peer's address, which is kept, tells them apart.

`program` and `closed_ports` (pure) make the filter and read the messages;
`ListenerCloses` is the socket.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

_NETLINK_SOCK_DIAG = 4
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP = 270, 1
_TCP_DESTROY_GROUPS = (1, 3)  # SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY
_SO_ATTACH_FILTER, _SO_RCVBUFFORCE = 26, 33
_ROOM = 1 << 20
_HEADER = struct.Struct("=IH")  # nlmsghdr's length and type
_PORTS = struct.Struct("!HH")  # inet_diag_msg.id: source port, destination port
_PORTS_AT = 16 + 4  # after the netlink header and family, state, timer, retransmits
_PEER_AT = _PORTS_AT + 4 + 16  # the peer's address, after the ports and our own address
_SOCK_DIAG_BY_FAMILY = 20

_LDH, _LDW = 0x28, 0x20  # BPF_LD|BPF_H|BPF_ABS, BPF_LD|BPF_W|BPF_ABS
_JEQ, _RET = 0x15, 0x06  # BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
_ALL, _NONE = 0xFFFFFFFF, 0
_MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS


def program(ports: set[int]) -> bytes:
    """A classic BPF program that lets through a message about a socket with no peer
    (port and address) whose local port is one of `ports` (any bound one, when they are
    too many to list)."""
    # Peer port 0, then each word of the peer's address 0, else to the `_RET _NONE`.
    peerless = [(_LDH, 0, 0, _PORTS_AT + 2), (_JEQ, 0, 8, 0)]
    for word in range(4):
        last = word == 3
        peerless += [(_LDW, 0, 0, _PEER_AT + 4 * word), (_JEQ, int(last), 6 - 2 * word, 0)]
    head = [*peerless, (_RET, 0, 0, _NONE), (_LDH, 0, 0, _PORTS_AT)]
    fits = 2 * len(ports) + len(head) + 1 <= _MAX_INSTRUCTIONS
    # Each port: equal -> the next instruction (keep it), else skip it.
    body = [step for port in sorted(ports) if fits for step in ((_JEQ, 0, 1, port), (_RET, 0, 0, _ALL))]
    tail = [(_RET, 0, 0, _NONE)] if fits else [(_JEQ, 0, 1, 0), (_RET, 0, 0, _NONE), (_RET, 0, 0, _ALL)]
    return b"".join(struct.pack("=HBBI", *step) for step in head + body + tail)


def closed_ports(data: bytes) -> set[int]:
    """The local ports of the peerless sockets that `data`'s messages say were destroyed."""
    found: set[int] = set()
    offset = 0
    while offset + _PEER_AT + 16 <= len(data):
        size, kind = _HEADER.unpack_from(data, offset)
        if size < _PEER_AT + 16 or offset + size > len(data):
            break
        local, peer = _PORTS.unpack_from(data, offset + _PORTS_AT)
        address = data[offset + _PEER_AT : offset + _PEER_AT + 16]
        if kind == _SOCK_DIAG_BY_FAMILY and peer == 0 and address == bytes(16):
            found.add(local)
        offset += (size + 3) & ~3
    return found


class ListenerCloses:
    """Raises OSError where the kernel does not let us listen."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, _NETLINK_SOCK_DIAG
        )
        try:
            self._sock.bind((0, 0))
            try:  # room for a burst of closes while the event loop is busy
                self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _ROOM)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _ROOM)
            self.watch(set())
            for group in _TCP_DESTROY_GROUPS:
                self._sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
        except OSError:
            self._sock.close()
            raise

    def watch(self, ports: set[int]) -> None:
        """Be told of `ports` only (the kernel filters: others cost nothing here)."""
        code = program(ports)
        buffer = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))  # struct sock_fprog
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> set[int] | None:
        """Ports whose peerless sockets went since the last read; None when the kernel
        dropped messages (we read too slowly): any may have gone."""
        ports: set[int] = set()
        while True:
            try:
                ports |= closed_ports(self._sock.recv(65536))
            except BlockingIOError:
                return ports
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return None
                raise

    def close(self) -> None:
        self._sock.close()
