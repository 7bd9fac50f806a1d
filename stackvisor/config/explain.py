"""Pydantic's validation errors as lines people can act on.

Lives here: validating the prepared document against the schema, and translating each
of pydantic's errors into a dotted field path (as the reader wrote it: without the
union member names pydantic puts in its locations) and a message in the file's own
terms ("expected a port between 1 and 65535 (got 70000)", "unknown field (did you mean
"command"?)"), with one line for a value that fits no member of a union. Not here:
where the field is written (`yamlpos`, through `report`), the shape of the file
(`schema`), checks that need the whole stack (`checks`).
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from stackvisor.config.envfiles import looks_secret
from stackvisor.config.report import Report, suggest
from stackvisor.config.schema import Service, StackConfig
from stackvisor.config.yamlpos import Loc

# Fields the loader fills in (the stack's path, each service's name); written in the
# file they are unknown fields, so they are never offered as a "did you mean".
_HIDDEN = {StackConfig: {"path"}, Service: {"name"}}

# A service's fields as other tools name them: (whose, what to write here).
FOREIGN = {
    "entrypoint": ("Compose's entrypoint", "`command`"),
    "develop": ("Compose's develop.watch", "`watch` (restart, rerun or signal on a change)"),
    "availability": ("process-compose's availability", "`restart`, `max_restarts` and `backoff`"),
    "readiness_probe": ("process-compose's readiness_probe", "`healthcheck`"),
    "liveness_probe": ("process-compose's liveness_probe", "`healthcheck`"),
    "is_daemon": ("process-compose's is_daemon", "`daemon: true` (or `daemon: {pidfile: PATH}`)"),
    "autorestart": ("supervisord's autorestart", "`restart`"),
    "autostart": ("supervisord's autostart", "`disabled: true` (it starts when named)"),
    "startretries": ("supervisord's startretries", "`max_restarts`"),
    "startsecs": ("supervisord's startsecs", "`healthcheck` (or `backoff.reset_after`)"),
    "stopsignal": ("supervisord's stopsignal", "`stop_signal`"),
    "stopwaitsecs": ("supervisord's stopwaitsecs", "`stop_timeout`"),
    "directory": ("supervisord's directory", "`working_dir`"),
    "priority": ("supervisord's priority", "`depends_on`"),
}

# Pydantic error kinds that mean "this is the wrong kind of value" rather than "right
# kind, wrong value": only these are collapsed when every member of a union fails.
_TYPE_ERRORS = frozenset(
    {
        "string_type", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
        "bool_type", "bool_parsing", "list_type", "tuple_type", "set_type", "dict_type",
        "model_type", "model_attributes_type", "literal_error", "enum", "none_required",
    }
)  # fmt: skip


def validate(data: dict[str, Any], report: Report) -> StackConfig | None:
    """The stack, or None with every problem pydantic found added to `report`."""
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        for path, message, key in _explain(exc.errors(include_url=False)):
            report.add(path, message, key=key)
        return None


def _explain(errors: list[Any]) -> list[tuple[Loc, str, bool]]:
    """Pydantic's errors as (field path, human message, located at the key?) triples."""
    out: list[tuple[Loc, str, bool]] = []
    unions: dict[Loc, list[tuple[Loc, Any, Any]]] = {}
    hinted: set[Loc] = set()
    for error in errors:
        path, union_at, union_type = _clean_loc(error["loc"])
        if union_at is not None:
            unions.setdefault(path[:union_at], []).append((path, error, union_type))
            continue
        if error["type"] == "extra_forbidden":
            parent = _type_at(path[:-1])
            fields = set(parent.model_fields) - _HIDDEN.get(parent, set()) if _is_model(parent) else set()
            foreign = FOREIGN.get(str(path[-1])) if parent is Service else None
            hint = suggest(str(path[-1]), fields)
            if foreign:
                out.append((path, f"unknown field ({foreign[0]}; write {foreign[1]})", True))
                continue
            if hint:
                hinted.add(path[:-1] + (hint,))
            out.append((path, "unknown field" + (f' (did you mean "{hint}"?)' if hint else ""), True))
        elif error["type"] == "missing":
            out.append((path, "missing required field", False))
        else:
            out.append((path, _human(error, path), False))
    # A misspelt field also shows up as a missing one; the "did you mean" says it all.
    out = [item for item in out if not (item[1] == "missing required field" and item[0] in hinted)]
    for field_path, members in unions.items():
        deeper = [(path, error) for path, error, _ in members if len(path) > len(field_path)]
        if deeper:
            # The value had the shape of one member (a list, a mapping): say what is
            # wrong inside it rather than listing the other shapes.
            out.extend((path, _human(error, path), False) for path, error in deeper)
            continue
        specific = [(path, error) for path, error, _ in members if error["type"] not in _TYPE_ERRORS]
        if specific:
            out.extend((path, _human(error, path), False) for path, error in specific)
            continue
        _, error, union_type = members[0]
        expected = " or ".join(_describe_members(union_type))
        out.append((field_path, f"expected {expected} (got {_show(error['input'], field_path)})", False))
    return out


def _human(error: Any, path: Loc) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = f" (got {_show(error.get('input'), path)})"
    if kind in ("value_error", "assertion_error"):
        # The schema's own message, without pydantic's "Value error, " in front.
        return str(ctx["error"]) if "error" in ctx else str(error["msg"])
    if kind in ("enum", "literal_error"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        if len(choices) == 1:
            return f'expected "{choices[0]}"{got}'
        return f"expected one of {', '.join(choices)}{got}"
    field_name = next((p for p in reversed(path) if isinstance(p, str)), "")
    if kind in ("greater_than_equal", "less_than_equal") and "port" in field_name:
        return f"expected a port between 1 and 65535{got}"
    simple = {
        "int_type": "expected an integer",
        "int_parsing": "expected an integer",
        "int_from_float": "expected a whole number",
        "float_type": "expected a number",
        "float_parsing": "expected a number",
        "bool_type": "expected true or false",
        "bool_parsing": "expected true or false",
        "string_type": "expected a string",
        "list_type": "expected a list",
        "tuple_type": "expected a list",
        "set_type": "expected a list",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
    }
    if kind in simple:
        return simple[kind] + got
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"expected {words} {ctx.get(key)}{got}"
    message = str(error["msg"])
    return message[:1].lower() + message[1:] + got


# Walking the schema's types along an error's location: pydantic inserts the name of the
# union member that failed (`command.list[str].0`), which the reader never wrote.


def _strip(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if _is_union(tp):
            members = [m for m in typing.get_args(tp) if m is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _union_members(tp: Any) -> list[Any]:
    return [_strip(m) for m in typing.get_args(tp) if m is not type(None)]


def _clean_loc(loc: Iterable[Any]) -> tuple[Loc, int | None, Any]:
    """The location without union member names; where a union was crossed, and its type."""
    items = list(loc)
    tp: Any = StackConfig
    path: list[str | int] = []
    union_at: int | None = None
    union_type: Any = None
    index = 0
    while index < len(items):
        tp = _strip(tp)
        key = items[index]
        if _is_union(tp):
            union_at, union_type = len(path), tp
            following = items[index + 1] if index + 1 < len(items) else None
            tp = _member_for(tp, following)
            index += 1
            continue
        tp = _child_type(tp, key)
        path.append(key)
        index += 1
    return tuple(path), union_at, union_type


def _child_type(tp: Any, key: Any) -> Any:
    if _is_model(tp):
        info = tp.model_fields.get(key) if isinstance(key, str) else None
        return info.annotation if info else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (list, tuple, set) and args:
        return args[0]
    return None


def _member_for(tp: Any, following: Any) -> Any:
    for member in _union_members(tp):
        origin = typing.get_origin(member)
        if isinstance(following, int) and origin in (list, tuple):
            return member
        if isinstance(following, str) and (_is_model(member) or origin is dict):
            return member
    return None


def _type_at(path: Loc) -> Any:
    tp: Any = StackConfig
    for key in path:
        tp = _child_type(_strip(tp), key)
    return _strip(tp)


def _describe_members(tp: Any) -> list[str]:
    out = []
    for member in _union_members(tp):
        origin = typing.get_origin(member)
        if member is str:
            out.append("a string")
        elif member is int:
            out.append("an integer")
        elif member is float:
            out.append("a number")
        elif member is bool:
            out.append("true or false")
        elif origin is typing.Literal:
            out.extend(json.dumps(arg) for arg in typing.get_args(member))
        elif origin in (list, tuple):
            args = typing.get_args(member)
            out.append("a list of strings" if args and args[0] is str else "a list")
        elif _is_model(member) or origin is dict:
            out.append("a mapping")
        else:
            out.append(getattr(member, "__name__", str(member)))
    return out


def _show(value: Any, path: Loc = ()) -> str:
    """A value as it would be written in YAML, short enough for one line; `***` for the
    value of a variable whose name looks secret."""
    if any(isinstance(part, str) and looks_secret(part) for part in path):
        return "***"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
