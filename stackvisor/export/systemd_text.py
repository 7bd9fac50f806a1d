"""The text of systemd's unit files, and how systemd reads an env file.

Lives here: unit names (a stack or service name made a valid, unambiguous part of one),
the quoting of an `Exec*=` argument and of an `Environment=` assignment (systemd.syntax(7)
"Quoting", systemd.service(5) "Command lines", systemd.exec(5) "Environment="), plain
values and paths (only specifiers to escape), durations, and what `EnvironmentFile=`
takes from a file (systemd.exec(5): shell-like quoting, no `${VAR}` expansion, names a
process can have), and the small programs an ExecStartPost= runs to wait for a health
check. Not here: what goes into which unit (`systemd`). Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stackvisor.export.base import ExportError

# Characters a unit name may hold as they are; anything else is written `\xNN` (each
# byte of its UTF-8), as systemd-escape does, so that two names never meet.
_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.-]")
UNIT_NAME_MAX = 255

# An argument written without quotes: nothing systemd or a reader could take otherwise.
_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}

# What a process's environment variable may be called (systemd drops other names).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# Waits until an http(s) URL answers 2xx/3xx or a tcp port accepts: argv is TIMEOUT
# EVERY LIMIT, then `http URL` or `tcp HOST PORT`.
PROBE = """\
import http.client, socket, sys, time, urllib.parse
timeout, every, limit = map(float, sys.argv[1:4])
kind, *where = sys.argv[4:]
def passes():
    try:
        if kind == "tcp":
            socket.create_connection((where[0], int(where[1])), timeout).close()
            return True
        url = urllib.parse.urlsplit(where[0])
        kind_of = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind_of(url.hostname, url.port, timeout=timeout)
        connection.request("GET", (url.path or "/") + ("?" + url.query if url.query else ""))
        return 200 <= connection.getresponse().status < 400
    except (OSError, ValueError, http.client.HTTPException):
        return False
deadline = time.monotonic() + limit
while not passes():
    if time.monotonic() > deadline:
        sys.exit(f"health check {kind} {' '.join(where)}: not passing after {limit:g}s")
    time.sleep(every)
"""

# The same for an `exec` check: argv is TIMEOUT EVERY LIMIT (whole seconds), then the command.
EXEC_PROBE_LOOP = (
    "t=$1 every=$2 limit=$3; shift 3; end=$(($(date +%s) + limit)); "
    'until timeout "$t" "$@" >/dev/null 2>&1; do '
    'if [ "$(date +%s)" -ge "$end" ]; then echo "health check: not passing after ${limit}s" >&2; exit 1; fi; '
    'sleep "$every"; done'
)


def unit_name(*parts: str, suffix: str) -> str:
    """`demo`, `api`, `.service` -> `demo-api.service`; `my stack` -> `my\\x20stack`."""
    escaped = "-".join(_name_part(part) for part in parts) + suffix
    if len(escaped) > UNIT_NAME_MAX:
        raise ExportError(
            f"the unit name {escaped[:40]}... is longer than systemd's {UNIT_NAME_MAX} characters:"
            " give the stack a shorter `name:`"
        )
    return escaped


def _name_part(text: str) -> str:
    out = []
    for index, char in enumerate(text):
        if _NAME_CHARS.fullmatch(char) and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(out)


def _c_escaped(text: str) -> str:
    out = []
    for char in text:
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def specifiers(text: str) -> str:
    """A value in which systemd expands `%` specifiers, kept as it is."""
    return text.replace("%", "%%")


def exec_word(text: str) -> str:
    """One argument of an `Exec*=` line: systemd unquotes it, expands its specifiers when
    loading and `$VAR` when starting; this writes it so that all three leave `text`."""
    text = specifiers(text).replace("$", "$$")
    if _BARE.fullmatch(text):
        return text
    return '"' + _c_escaped(text) + '"'


def exec_line(argv: list[str]) -> str:
    return " ".join(exec_word(word) for word in argv)


def environment(key: str, value: str) -> str:
    """An `Environment=` assignment: quoted, `$` literal there, specifiers escaped."""
    return '"' + _c_escaped(specifiers(f"{key}={value}")) + '"'


def plain(text: str) -> str:
    """A one-line value (`Description=`): specifiers escaped, control characters blanks."""
    return comment(specifiers(text))


def comment(text: str) -> str:
    """A line of a `#` comment: control characters blanks (nothing is expanded there)."""
    return "".join(" " if ord(char) < 32 or ord(char) == 127 else char for char in text)


def path(text: str) -> str:
    """A path setting (`WorkingDirectory=`, `EnvironmentFile=`): taken as written but for
    specifiers; a path with a control character cannot be written."""
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ExportError(f"the path {text!r} holds a control character: systemd cannot name it")
    return specifiers(text)


def duration(seconds: float) -> str:
    """systemd's time span: `5s`, `500ms`, `250us`."""
    micros = round(seconds * 1_000_000)
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1000 == 0:
        return f"{micros // 1000}ms"
    return f"{micros}us"


def environment_file(text: str) -> dict[str, str]:
    """The variables systemd's `EnvironmentFile=` sets from a file of `text`, as
    systemd.exec(5) describes the format: `KEY=VALUE` lines, `#` and `;` comments; an
    unquoted value keeps a backslash's next character and loses its trailing blanks;
    'single quotes' are verbatim; "double quotes" unescape \\" \\\\ \\` \\$ only; quoted
    parts and the text after them join; a backslash before a newline joins lines. No
    `${VAR}` expansion, no `export`. A name a process cannot have is dropped."""
    reader = _EnvFileReader()
    for char in text:
        reader.feed(char)
    reader.finish()
    return reader.found


_BLANKS = " \t\n\r"
_NEWLINES = "\n\r"


class _EnvFileReader:
    """One character at a time, in the states of the format: before a key, in the key,
    before a value, in an unquoted value (and after its backslash), in single or double
    quotes (and after a backslash there), in a comment (and after its backslash: in
    systemd 252 a comment goes on across an escaped newline)."""

    def __init__(self) -> None:
        self.found: dict[str, str] = {}
        self.state = "pre_key"
        self.key: list[str] = []
        self.value: list[str] = []
        self.blank_from: int | None = None  # where trailing blanks of an unquoted value start

    def feed(self, char: str) -> None:
        getattr(self, "_" + self.state)(char)

    def finish(self) -> None:
        if self.state not in ("pre_key", "key", "comment", "comment_escape"):
            self._push()

    def _push(self) -> None:
        key = "".join(self.key).rstrip(_BLANKS)
        if self.state == "value" and self.blank_from is not None:
            del self.value[self.blank_from :]
        if ENV_NAME.fullmatch(key):
            self.found[key] = "".join(self.value)
        self.state, self.key, self.value, self.blank_from = "pre_key", [], [], None

    def _pre_key(self, char: str) -> None:
        if char in "#;":
            self.state = "comment"
        elif char not in _BLANKS:
            self.state, self.key = "key", [char]

    def _key(self, char: str) -> None:
        if char in _NEWLINES:
            self.state, self.key = "pre_key", []
        elif char == "=":
            self.state = "pre_value"
        else:
            self.key.append(char)

    def _pre_value(self, char: str) -> None:
        if char in _NEWLINES:
            self._push()
        elif char == "'":
            self.state = "single"
        elif char == '"':
            self.state = "double"
        elif char == "\\":
            self.state = "escape"
        elif char not in _BLANKS:
            self.state = "value"
            self.value.append(char)

    def _value(self, char: str) -> None:
        if char in _NEWLINES:
            self._push()
        elif char == "\\":
            self.state, self.blank_from = "escape", None
        else:
            if char not in _BLANKS:
                self.blank_from = None
            elif self.blank_from is None:
                self.blank_from = len(self.value)
            self.value.append(char)

    def _escape(self, char: str) -> None:
        self.state = "value"
        if char not in _NEWLINES:
            self.value.append(char)

    def _single(self, char: str) -> None:
        if char == "'":
            self.state = "pre_value"
        else:
            self.value.append(char)

    def _double(self, char: str) -> None:
        if char == '"':
            self.state = "pre_value"
        elif char == "\\":
            self.state = "double_escape"
        else:
            self.value.append(char)

    def _double_escape(self, char: str) -> None:
        self.state = "double"
        if char in '"\\`$':
            self.value.append(char)
        elif char != "\n":
            self.value += ["\\", char]

    def _comment(self, char: str) -> None:
        if char == "\\":
            self.state = "comment_escape"
        elif char in _NEWLINES:
            self.state = "pre_key"

    def _comment_escape(self, char: str) -> None:
        self.state = "comment"


@dataclass
class Unit:
    """A unit file being written: its comment lines and its sections' `Key=value` lines."""

    header: list[str]
    sections: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, *lines: str) -> None:
        self.sections.setdefault(section, []).extend(lines)

    def text(self) -> str:
        out = [f"# {comment(line)}" for line in self.header]
        out += [f"# not carried over: {comment(note)}" for note in self.notes]
        for section, lines in self.sections.items():
            out += ["", f"[{section}]", *lines]
        return "\n".join(out) + "\n"
