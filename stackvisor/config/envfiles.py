"""Dotenv files: the stack's `.env` and each service's `env_file`s.

Lives here: the format Compose reads (`KEY=VALUE`, `export `, comments, quotes, escapes,
values that span lines), reading a file into entries, and turning `.env` into the
variables the stack file is interpolated with. Not here: putting env files into a
service's environment (`checks`, which knows the stack and the start-time pass) and
report lines (`report`); problems come back as (line, column, message) for the caller to place
under the file's name.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stackvisor.config.interpolate import InterpolationError, interpolate

# (line, column, message), both 1-based, in the file that was read.
EnvProblem = tuple[int, int, str]

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class EnvEntry:
    """One `KEY=VALUE` line. `value` None: a bare `KEY`, taken from the environment."""

    key: str
    value: str | None
    literal: bool
    line: int


def parse_env_text(text: str) -> tuple[list[EnvEntry], list[tuple[int, str]]]:
    """Entries and (line, message) problems of a dotenv file.

    The format Compose reads: `KEY=VALUE`, `export KEY=VALUE`, `#` comments (also after
    an unquoted value, following a space), 'single quotes' taken literally, "double
    quotes" with backslash escapes, and quoted values that span lines.
    """
    entries: list[EnvEntry] = []
    problems: list[tuple[int, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        content = lines[index].strip()
        index += 1
        if not content or content.startswith("#"):
            continue
        if content.startswith("export "):
            content = content[len("export ") :].lstrip()
        key, equals, rest = content.partition("=")
        key = key.strip()
        if not _ENV_KEY.fullmatch(key):
            problems.append((number, f"expected KEY=VALUE (got {_excerpt(content)})"))
            continue
        if not equals:
            entries.append(EnvEntry(key, None, False, number))
            continue
        rest = rest.lstrip()
        if rest[:1] not in ("'", '"'):
            value = re.split(r"\s#", rest, maxsplit=1)[0].strip()
            entries.append(EnvEntry(key, value, False, number))
            continue
        quote, body = rest[0], rest[1:]
        end = _closing_quote(body, quote)
        while end < 0 and index < len(lines):
            body += "\n" + lines[index]
            index += 1
            end = _closing_quote(body, quote)
        if end < 0:
            problems.append((number, f"{key}: the {quote} quote is never closed"))
            continue
        after = body[end + 1 :].strip()
        if after and not after.startswith("#"):
            problems.append((number, f"{key}: unexpected text after the closing quote: {_excerpt(after)}"))
            continue
        value = body[:end]
        if quote == '"':
            value = _unescape(value)
        entries.append(EnvEntry(key, value, quote == "'", number))
    return entries, problems


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


def _closing_quote(body: str, quote: str) -> int:
    index = 0
    while index < len(body):
        if quote == '"' and body[index] == "\\":
            index += 2
            continue
        if body[index] == quote:
            return index
        index += 1
    return -1


# An env file holds a few variables; this bounds what a mistake (or /dev/zero) can cost.
MAX_ENV_FILE_BYTES = 1024 * 1024

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), value, flags=re.DOTALL)


def read_env_file(path: Path) -> tuple[list[EnvEntry], list[EnvProblem]]:
    """Entries of an env file, and the problems in it.

    Text that is not UTF-8 gives no entries and one problem, and so does anything
    that is not a regular file (a device, a pipe) or is larger than
    `MAX_ENV_FILE_BYTES`. A file that cannot be opened raises `OSError`
    (`FileNotFoundError` when missing): what to say then depends on who named it.
    """
    # O_NONBLOCK: opening a named pipe must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return [], [(1, 1, "not a regular file; an env file must be one")]
        data = fh.read(MAX_ENV_FILE_BYTES + 1)
    if len(data) > MAX_ENV_FILE_BYTES:
        return [], [(1, 1, f"larger than {MAX_ENV_FILE_BYTES // 1024 // 1024} MB; an env file may not be")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [(1, 1, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    entries, problems = parse_env_text(text)
    return entries, [(line, 1, message) for line, message in problems]


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
    values: dict[str, str] = {}
    for entry in entries:
        if entry.value is None:
            continue
        if entry.literal:
            values[entry.key] = entry.value
            continue
        try:
            # A value may use the environment and the lines above it, like a shell would.
            values[entry.key] = interpolate(entry.value, ChainMap(dict(environ), values))
        except InterpolationError as exc:
            problems.append((entry.line, 1, f"{entry.key}: {exc}"))
    return values, problems
