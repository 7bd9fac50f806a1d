"""Dotenv files: the stack's `.env` and each service's `env_file`s.

Lives here: the format Compose reads (compose-go's dotenv: `KEY=VALUE`, `export `,
comments, quotes, escapes, values that span lines; see `parse_env_text`), reading a
file into entries, and turning `.env` into the variables the stack file is interpolated
with. Not here: putting env files into a service's environment (`checks`, which knows
the stack and the start-time pass) and report lines (`report`); problems come back as
(line, column, message) for the caller to place under the file's name.
"""

from __future__ import annotations

import json
import re
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stackvisor.config.interpolate import InterpolationError, interpolate
from stackvisor.config.textfile import NUL, NotText, read_text

# (line, column, message), both 1-based, in the file that was read.
EnvProblem = tuple[int, int, str]


@dataclass(frozen=True)
class EnvEntry:
    """One `KEY=VALUE` line. `value` None: a bare `KEY`, taken from the environment."""

    key: str
    value: str | None
    literal: bool
    line: int


def parse_env_text(text: str) -> tuple[list[EnvEntry], list[EnvProblem]]:
    r"""Entries and (line, column, message) problems of a dotenv file, read as Compose
    reads it (compose-go's dotenv):

    - `KEY=VALUE`, `KEY: VALUE` (YAML style), `export KEY=VALUE` (any blank after
      `export`), blanks around the separator; a `KEY` alone takes its value from the
      environment. Keys are letters and digits of any script and `_ . - [ ]`.
    - An unquoted value runs to the end of the line, stops at ` #` (a comment) and
      loses its trailing blanks; `${VAR}` in it is expanded, backslashes are kept.
    - 'single quotes' are literal but for `\'`; "double quotes" expand `${VAR}` and the
      escapes `\a \b \f \n \r \t \v \\ \" \$` and `\0NNN` (octal), and keep others
      (`\c`, `\x07`) as written. Quoted values may span lines.
    - Blank lines and `#` comment lines are skipped; a UTF-8 BOM is ignored.
    What Compose refuses is refused: another character in a key, a key with a blank
    inside, a quote never closed.
    """
    scanner = _Scanner(text.removeprefix("\ufeff"))
    entries: list[EnvEntry] = []
    problems: list[EnvProblem] = []
    while scanner.statement():
        try:
            entry = scanner.entry()
        except _Refused as exc:
            problems.append((*scanner.place(exc.at), exc.message))
            scanner.skip_line()
            continue
        entries.append(entry)
    return entries, problems


_BLANK = " \t\v\f\r\x85\xa0"  # not the newline: it ends an unquoted value
_KEY_PUNCTUATION = "_.-[]"
_EXPORT = re.compile(r"export[ \t\v\f\r]+")
# Double quotes' escapes, as XSI echo has them; `\$` makes a literal dollar.
_ESCAPE = re.compile(r"\\(?:([abfnrtv\"\\$])|0([0-3][0-7]{2}))")
_ESCAPED = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class _Refused(Exception):
    def __init__(self, at: int, message: str) -> None:
        self.at = at
        self.message = message


class _Scanner:
    """Walks a dotenv text one statement at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def place(self, at: int) -> tuple[int, int]:
        """1-based line and column of offset `at`."""
        line = self.text.count("\n", 0, at) + 1
        return line, at - (self.text.rfind("\n", 0, at) + 1) + 1

    def statement(self) -> bool:
        """Move to the next statement past blanks, newlines and comments; False at the end."""
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "#":
                self.skip_line()
            elif char.isspace():
                self.pos += 1
            else:
                return True
        return False

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def entry(self) -> EnvEntry:
        text = self.text
        line = self.place(self.pos)[0]
        if exported := _EXPORT.match(text, self.pos):
            self.pos = exported.end()
        start = self.pos
        while self.pos < len(text) and text[self.pos] not in "=:\n":
            char = text[self.pos]
            if not (char.isalnum() or char in _KEY_PUNCTUATION or char in _BLANK):
                message = f"unexpected character {char!r} in a variable name (got {self._line(start)})"
                raise _Refused(self.pos, message)
            self.pos += 1
        key = text[start : self.pos].rstrip(_BLANK)
        if any(c in _BLANK for c in key):
            raise _Refused(start, f"expected KEY=VALUE (got {self._line(start)})")
        if self.pos >= len(text) or text[self.pos] == "\n":
            return EnvEntry(key, None, False, line)  # `KEY` alone: from the environment
        self.pos += 1  # the separator
        while self.pos < len(text) and text[self.pos] in _BLANK:
            self.pos += 1
        quote = text[self.pos] if self.pos < len(text) and text[self.pos] in "'\"" else ""
        if not quote:
            end = text.find("\n", self.pos)
            end = len(text) if end < 0 else end
            value = text[self.pos : end].split(" #", 1)[0].rstrip()
            self.pos = end
            return EnvEntry(key, value, False, line)
        return EnvEntry(key, self._quoted(quote, key), quote == "'", line)

    def _line(self, start: int) -> str:
        """The line from `start`, as a message may show it (see `_excerpt`)."""
        end = self.text.find("\n", start)
        return _excerpt(self.text[start : len(self.text) if end < 0 else end])

    def _quoted(self, quote: str, key: str) -> str:
        """The quoted value from its opening quote on; for double quotes, as a template
        for interpolation (escapes applied, a literal dollar written `$$`)."""
        text = self.text
        opened = self.pos
        out: list[str] = []
        index = opened + 1
        while index < len(text):
            char = text[index]
            if char == "\\" and index + 1 < len(text):
                following = text[index + 1]
                out.append(following if following == quote else char + following)
                index += 2
                continue
            if char == quote:
                self.pos = index + 1
                body = "".join(out)
                return body if quote == "'" else _ESCAPE.sub(_unescape, body)
            out.append(char)
            index += 1
        raise _Refused(opened, f"{key}: the {quote} quote is never closed")


def _unescape(match: re.Match[str]) -> str:
    letter, octal = match.group(1), match.group(2)
    if octal is not None:
        return chr(int(octal, 8))
    if letter == "$":
        return "$$"  # a literal dollar, for the interpolation that follows
    return _ESCAPED.get(letter, letter)


# Names whose values are secrets: never shown in messages, status or events.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _excerpt(text: str) -> str:
    """A line of an env file as a message may show it: its first few characters only.
    The line may be a secret (a private key pointed at by mistake)."""
    if len(text) <= 4:
        return json.dumps(text)
    return f"{json.dumps(text[:4] + '...')}, {len(text)} characters"


# An env file holds a few variables; this bounds what a mistake (or /dev/zero) can cost.
MAX_ENV_FILE_BYTES = 1024 * 1024


def read_env_file(path: Path) -> tuple[list[EnvEntry], list[EnvProblem]]:
    """Entries of an env file, and the problems in it.

    Text that is not UTF-8 gives no entries and one problem, and so does anything
    that is not a regular file (a device, a pipe) or is larger than
    `MAX_ENV_FILE_BYTES`. A file that cannot be opened raises `OSError`
    (`FileNotFoundError` when missing): what to say then depends on who named it.
    """
    try:
        text = read_text(path, MAX_ENV_FILE_BYTES, "an env file")
    except NotText as exc:
        return [], [(1, 1, str(exc))]
    if (at := text.find("\0")) >= 0:
        line = text.count("\n", 0, at) + 1
        return [], [(line, at - (text.rfind("\n", 0, at) + 1) + 1, NUL)]
    return parse_env_text(text)


def read_dotenv(path: Path, environ: Mapping[str, str]) -> tuple[dict[str, str], list[EnvProblem]]:
    """The stack's `.env`: variables for interpolation (the process environment wins).

    A missing `.env` is no problem; it gives no variables.
    """
    if not path.exists():
        return {}, []
    try:
        entries, problems = read_env_file(path)
    except OSError as exc:
        return {}, [(1, 1, f"cannot read: {exc.strerror or exc}")]
    values, more = resolve(entries, environ)
    return values, problems + more


def resolve(entries: list[EnvEntry], environ: Mapping[str, str]) -> tuple[dict[str, str], list[EnvProblem]]:
    """The values of a file's entries: `${VAR}` expanded from the environment first, then
    the lines above (as Compose does); a `KEY` alone takes the environment's value, and is
    left out when the environment has none."""
    values: dict[str, str] = {}
    problems: list[EnvProblem] = []
    for entry in entries:
        if entry.value is None:
            if entry.key in environ:
                values[entry.key] = environ[entry.key]
        elif entry.literal:
            values[entry.key] = entry.value
        else:
            try:
                values[entry.key] = interpolate(entry.value, ChainMap(dict(environ), values))
            except InterpolationError as exc:
                problems.append((entry.line, 1, f"{entry.key}: {exc}"))
    return values, problems
