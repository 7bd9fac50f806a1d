"""The kernel's word when a listening TCP socket goes: sock_diag's destroy groups.

Every TCP socket of the network namespace that is destroyed is told to the members of
`SKNLGRP_INET_TCP_DESTROY` (and its IPv6 twin), a millisecond or two after a process that
held it is killed. A classic BPF filter on our socket lets through, in the kernel, only
the ones with no peer (a listener; a socket that never connected), so the connections
of a busy machine cost nothing here. Joining takes CAP_NET_ADMIN.

`closed_ports` (pure) reads the messages; `ListenerCloses` is the socket.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

_NETLINK_SOCK_DIAG = 4
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP = 270, 1
_TCP_DESTROY_GROUPS = (1, 3)  # SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY
_SO_ATTACH_FILTER = 26
_HEADER = struct.Struct("=IH")  # nlmsghdr's length and type
_PORTS = struct.Struct("!HH")  # inet_diag_msg.id: source port, destination port
_PORTS_AT = 16 + 4  # after the netlink header and family, state, timer, retransmits
_SOCK_DIAG_BY_FAMILY = 20

# ldh [22]; jeq #0, accept, drop: a message whose socket has no peer port, else nothing.
_FILTER = b"".join(
    struct.pack("=HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x28, 0, 0, _PORTS_AT + 2),  # BPF_LD | BPF_H | BPF_ABS: the destination port
        (0x15, 0, 1, 0),  # BPF_JMP | BPF_JEQ | BPF_K: 0?
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET: the whole message
        (0x06, 0, 0, 0),  # BPF_RET: none of it
    )
)


def closed_ports(data: bytes) -> set[int]:
    """The local ports of the peerless sockets that `data`'s messages say were destroyed."""
    found: set[int] = set()
    offset = 0
    while offset + _PORTS_AT + _PORTS.size <= len(data):
        size, kind = _HEADER.unpack_from(data, offset)
        if size < _PORTS_AT + _PORTS.size or offset + size > len(data):
            break
        local, peer = _PORTS.unpack_from(data, offset + _PORTS_AT)
        if kind == _SOCK_DIAG_BY_FAMILY and peer == 0:
            found.add(local)
        offset += (size + 3) & ~3
    return found


class ListenerCloses:
    """Raises OSError where the kernel does not let us listen (no CAP_NET_ADMIN)."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, _NETLINK_SOCK_DIAG
        )
        try:
            self._sock.bind((0, 0))
            program = ctypes.create_string_buffer(_FILTER, len(_FILTER))
            fprog = struct.pack("HL", len(_FILTER) // 8, ctypes.addressof(program))  # struct sock_fprog
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            for group in _TCP_DESTROY_GROUPS:
                self._sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
        except OSError:
            self._sock.close()
            raise

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
