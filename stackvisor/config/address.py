"""Parsing `host:port` text: the one place that knows the accepted forms.

Used by the schema (`settings.control.tcp`), the tcp health probe and the control
server. Only the syntax lives here; whether a host may be listened on (loopback or
`allow_remote`) is the schema's rule, and name resolution happens where the address
is used.
"""

from __future__ import annotations

import ipaddress

_FORMS = "host:port like 127.0.0.1:8000, [::1]:8000, localhost:8000 or a bare port like 8000"


def split_host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`127.0.0.1:8000`, `[::1]:8000`, `localhost:8000` or a bare `8000` -> (host, port).

    A bare port (or `:8000`) gets `default_host`. An IPv6 host comes back without its brackets, ready
    for `socket` and `asyncio`. Anything else raises ValueError naming the accepted forms.
    """
    address = text.strip()
    if _digits(address):
        return default_host, _port(address, text)
    host, sep, port = address.rpartition(":")
    if not sep:
        raise _bad(text)
    if not _digits(port):
        raise _bad(text, "the port is not a number")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text, "only an IPv6 address goes in brackets") from None
    elif not host:
        host = default_host  # `:8000`, as a shell or a URL would read it
    elif any(c.isspace() or c in "[]/" for c in host):
        raise _bad(text, f"{host!r} is not a host name or address")
    elif ":" in host:
        # `::1:8000`: unambiguous only when what precedes the last colon is an address.
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text, f"write an IPv6 address in brackets, [{host}]:{port}") from None
    return host, _port(port, text)


def _bad(text: str, why: str = "") -> ValueError:
    got = f"{text!r}: {why}" if why else repr(text)
    return ValueError(f"expected {_FORMS} (got {got})")


def _digits(text: str) -> bool:
    # str.isdigit alone accepts superscripts and other scripts' digits, which int() refuses.
    return text.isascii() and text.isdigit()


def _port(digits: str, text: str) -> int:
    number = int(digits)
    if not 1 <= number <= 65535:
        raise ValueError(f"port must be between 1 and 65535 (got {number} in {text!r})")
    return number
