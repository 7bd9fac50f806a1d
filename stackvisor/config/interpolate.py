"""`${VAR}` interpolation as the Compose Specification defines it, and the port variables.

Lives here: the expander for `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}` and `$$`, plus the
names and values of the port variables (`PORT`, `DB_PORT`, ...). Not here: where the
variables come from (`.env`, the process environment: see `envfiles` and `loader`) and
which fields are expanded when (`loader`).

Interpolation happens in two passes. Loading expands everything except the port
variables, which are known only once ports are resolved; the runtime expands those at
start time. The first pass is asked to `keep` the port variables, and its result is
then itself a template for the second pass: every literal `$` it produces (from `$$`,
or inside a variable's value) comes out as `$$`, so the second pass turns it back into
one `$` instead of reading it as a variable.

A `$` that starts neither `$$`, `${` nor a variable name (`$1`, `$?`, `$(`, a trailing
`$`) is kept as a literal dollar: shell commands are full of them, and asking people
to double each one buys nothing. A malformed `${...}` is an error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Longest operators first, so `:-` is not read as `:` followed by `-default`.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is missing, or a malformed `${...}`."""


def interpolate(text: str, variables: Mapping[str, str], *, keep: Collection[str] = ()) -> str:
    """Expand `text` with `variables`; names in `keep` stay exactly as written.

    Unset variables without a default become "" (as in Compose). With a non-empty
    `keep` the result is a template for a later pass (see the module docstring).
    """
    return _Expander(variables, frozenset(keep)).expand(text)


@functools.lru_cache(maxsize=4096)
def port_variable(service: str) -> str:
    """The variable that holds a service's port: `my-db` -> `MY_DB_PORT`."""
    return re.sub(r"[^A-Z0-9]", "_", service.upper()) + "_PORT"


def port_variables(service_names: Iterable[str]) -> set[str]:
    """`PORT` and `<NAME>_PORT` for every service: the names kept for start time."""
    return {"PORT"} | {port_variable(name) for name in service_names}


def ports_variable(group: str) -> str:
    """The variable with the ports of every copy of a group: `api` -> `API_PORTS`."""
    return port_variable(group) + "S"


def port_env(
    ports: Mapping[str, int | None],
    own: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """The port variables' values: `<NAME>_PORT` per service with a port, `PORT` for `own`.

    For each group of copies (`replicas`), `<GROUP>_PORTS`, the ports of its copies
    in order, comma-separated, and `<GROUP>_PORT`, the first of them; `REPLICA` when
    `own` is a copy (its index).
    """
    env = {port_variable(name): str(port) for name, port in ports.items() if port is not None}
    for group, copies in (groups or {}).items():
        found = [str(port) for copy in copies if (port := ports.get(copy)) is not None]
        env[ports_variable(group)] = ",".join(found)
        if found:
            env[port_variable(group)] = found[0]
        if own in copies:
            env["REPLICA"] = str(copies.index(own))
    if own is not None and ports.get(own) is not None:
        env["PORT"] = str(ports[own])
    return env


# Bounds on what a few lines can ask for: `${A:-${A:-...}}` nested a thousand deep, or
# variables that each repeat the one before twice (forty lines of those: terabytes).
MAX_NESTING = 50
MAX_VALUE = 1024 * 1024


class _Expander:
    def __init__(self, variables: Mapping[str, str], keep: frozenset[str]) -> None:
        self.variables = variables
        self.keep = keep
        self.template = bool(keep)
        self.depth = 0

    def expand(self, text: str) -> str:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise InterpolationError(
                    f"${{...}} nested too deeply (more than {MAX_NESTING} inside each other)"
                )
            return self._expand(text)
        finally:
            self.depth -= 1

    def literal(self, value: str) -> str:
        return value.replace("$", "$$") if self.template else value

    def _expand(self, text: str) -> str:
        out: list[str] = []
        size = 0  # of what is in `out`, checked as it grows (not once it is all there)
        i = 0
        while True:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                return "".join(out)
            out.append(text[i:j])
            following = text[j + 1 : j + 2]
            if following == "$":
                piece = self.literal("$")
                i = j + 2
            elif following == "{":
                end = _closing_brace(text, j + 2)
                if end < 0:
                    raise InterpolationError(f"unterminated ${{ in {text[j:]!r}: expected a closing }}")
                piece = self.braced(text[j + 2 : end])
                i = end + 1
            else:
                match = _NAME.match(text, j + 1)
                if match is None:
                    piece = self.literal("$")
                    i = j + 1
                else:
                    piece = self.substitute(match.group(), None, "")
                    i = match.end()
            size += len(out[-1]) + len(piece)
            out.append(piece)
            if size > MAX_VALUE:
                raise InterpolationError(f"a value longer than {MAX_VALUE // (1024 * 1024)} MB once expanded")

    def braced(self, body: str) -> str:
        match = _NAME.match(body)
        if match is None:
            raise InterpolationError(
                f"invalid variable name in ${{{body}}}: "
                "expected a letter or _ followed by letters, digits or _"
            )
        name, rest = match.group(), body[match.end() :]
        if not rest:
            return self.substitute(name, None, "", braced=True)
        for operator in _OPERATORS:
            if rest.startswith(operator):
                return self.substitute(name, operator, rest[len(operator) :], braced=True)
        raise InterpolationError(
            f"invalid interpolation ${{{body}}}: expected }} or one of :- - :? ? :+ + after {name}"
        )

    def substitute(self, name: str, operator: str | None, argument: str, *, braced: bool = False) -> str:
        if name in self.keep:
            if not braced:
                # Braced now, so text expanded right after it cannot extend the name.
                return "${" + name + "}"
            # The kept variable stays, but its default is expanded now: the later pass
            # only knows the port variables.
            tail = "" if operator is None else operator + self.expand(argument)
            return "${" + name + tail + "}"
        is_set = name in self.variables
        value = self.variables[name] if is_set else ""
        present = bool(value) if operator is not None and operator.startswith(":") else is_set
        if operator is None:
            return self.literal(value)
        if operator in (":-", "-"):
            return self.literal(value) if present else self.expand(argument)
        if operator in (":+", "+"):
            return self.expand(argument) if present else ""
        if not present:
            suffix = f": {self.expand(argument)}" if argument else ""
            raise InterpolationError(f"required variable {name} is missing a value{suffix}")
        return self.literal(value)


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` closing a `${` whose body begins at `start`, or -1.

    Braces nest (`${JSON:-{"json":1}}`, a `${` in a default, as in Compose), and `$$`
    is skipped so that an escaped dollar before a brace does not count.
    """
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1
