"""Where reports go: an http(s) URL, and the one authentication header written as a string.

`auth` is written `Bearer TOKEN`, `Basic user:password` or `Header-Name: value`
(`X-API-Key: KEY`); `auth_header` turns it into the header sent, or says in words
what is wrong with it. Messages never repeat the value: it is a secret. Pure: the
schema validates with these, the reporter sends with them.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

# RFC 9110's token: what a header's name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FORMS = "expected `Bearer TOKEN`, `Basic user:password` or `Header-Name: value`"


def check_url(url: str) -> str:
    """`url` when it is an http or https URL with a host; ValueError saying why not."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("expected a URL without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise ValueError("expected a URL like https://reports.example.com/stackvisor") from None
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme}:" if parts.scheme else "none"
        raise ValueError(f"expected an http:// or https:// URL (the scheme is {shown})")
    if not parts.hostname:
        raise ValueError("expected a URL with a host, like https://reports.example.com/stackvisor")
    try:
        parts.port  # noqa: B018  (reading it checks it)
    except ValueError:
        raise ValueError("expected a port between 1 and 65535 in the URL") from None
    return url


def shown_url(url: str) -> str:
    """The URL for logs and events: without a user or password written into it."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def auth_header(text: str) -> tuple[str, str]:
    """The header that `auth` stands for: (name, value)."""
    text = text.strip()
    if not text:
        raise ValueError(f"auth is empty (is its variable set?): {_FORMS}")
    if any(ord(c) < 32 or ord(c) > 126 for c in text):
        raise ValueError("auth may hold only printable ASCII characters, on one line")
    scheme, _, rest = text.partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        if not rest or " " in rest:
            raise ValueError("expected `Bearer TOKEN`: one token after Bearer (is its variable set?)")
        return ("Authorization", f"Bearer {rest}")
    if scheme.lower() == "basic":
        user, colon, _ = rest.partition(":")
        if not colon or not user:
            raise ValueError("expected `Basic user:password` (is its variable set?)")
        return ("Authorization", "Basic " + base64.b64encode(rest.encode()).decode("ascii"))
    name, colon, value = text.partition(":")
    if colon and name.lower() in ("bearer", "basic"):
        raise ValueError(f"write `{name} ...` with a space after {name}, not a colon")
    if not colon or not _HEADER_NAME.fullmatch(name):
        raise ValueError(_FORMS)
    if not value.strip():
        raise ValueError(f"the {name} header has no value (is its variable set?)")
    return (name, value.strip())
