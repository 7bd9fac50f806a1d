"""Finding and loading services.yaml into a validated `StackConfig`.

Lives here: locating the file, the report that collects problems and `ConfigError`,
interpolation of the document, turning pydantic's errors into lines people can act on,
putting each service's `env_file`s into its environment, and the checks that need the
whole stack (dependencies, cycles, ports, folders). Not here: reading YAML with the
position of every node (see `yamlpos`), the dotenv format and reading `.env` (see
`envfiles`), the shape of the file (`schema`), graph algorithms (`stackvisor.graph`),
comparing two stacks (`diff`).

Every problem becomes one line `FILE:LINE:COL: dotted.path: message`, and every problem
found is reported at once in a `ConfigError`; a bad file never produces a traceback.

What the runtime receives: strings under `command`, `env` and `healthcheck` are
templates for the start-time pass that expands the port variables, i.e. they still
hold `${PORT}`/`${DB_PORT}` and a literal dollar in them is written `$$`; the runtime
expands them with `interpolate(text, port_env(ports, own=name))`. Every other string
is final. `Service.env` is the effective environment: the `env_file`s, then `env` on
top.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
import typing
from collections import ChainMap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stackvisor.config.envfiles import EnvEntry, EnvProblem, read_dotenv, read_env_file
from stackvisor.config.interpolate import InterpolationError, interpolate, port_variables
from stackvisor.config.schema import Condition, Service, StackConfig
from stackvisor.config.yamlpos import Document, Loc, parse_yaml
from stackvisor.graph import find_cycle

CONFIG_NAMES = ("services.yaml", "services.yml", "stackvisor.yaml")

# Fields whose strings keep the port variables for the start-time pass (see DESIGN.md).
_DEFERRED = frozenset({"command", "env", "healthcheck"})

# Fields the loader fills in; written in the file they are unknown fields.
_HIDDEN = {StackConfig: {"path"}, Service: {"name"}}


class ConfigError(Exception):
    """Everything wrong with a stack file, one formatted line per problem."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def find_config(start: Path | None = None) -> Path:
    """The stack file in `start` (default: the current folder) or the nearest parent.

    Names are tried in the order of `CONFIG_NAMES`; a file given as `start` is
    returned as it is, so `-f path/to/stack.yaml` goes through the same call.
    """
    origin = (start or Path.cwd()).resolve()
    if origin.is_file():
        return origin
    for folder in (origin, *origin.parents):
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    raise ConfigError(f"no services.yaml found in {origin} or its parents")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> StackConfig:
    """Read, interpolate and validate a stack file; raise `ConfigError` listing every problem."""
    path = Path(path)
    report = _Report(_display(path))
    text = _read_text(path, report)
    report.raise_if_any()
    document = _parse_yaml(text, report)
    report.raise_if_any()
    assert document is not None

    absolute = path.resolve()
    root = absolute.parent
    if environ is None:
        environ = os.environ
    variables: Mapping[str, str] = ChainMap(dict(environ), _read_dotenv(root / ".env", environ, report))
    services_data = document.data.get("services")
    names = list(services_data) if isinstance(services_data, dict) else []
    kept = port_variables(names)

    data = _interpolate_tree(_without_extensions(document.data), (), variables, kept, report)
    data = _prepare(data, absolute, report)
    config = _validate(data, report)
    report.raise_if_any()
    assert config is not None

    config = _apply_env_files(config, root, variables, kept, report)
    _check_working_dirs(config, root, report)
    _check_stack(config, report)
    report.raise_if_any()
    return config


# --- reporting -------------------------------------------------------------------------


@dataclass
class _Report:
    """Problems collected so far; each knows where it is for sorting and printing."""

    file: str
    document: Document | None = None
    problems: list[tuple[tuple[int, str, int, int], str]] = field(default_factory=list)

    def add(
        self,
        path: Loc,
        message: str,
        *,
        at: Loc | None = None,
        key: bool = False,
        position: tuple[int, int] | None = None,
    ) -> None:
        """A problem with the field at `path`, located at `at` (default: `path`) in the file."""
        if position is None:
            position = self.document.locate(path if at is None else at, key=key) if self.document else (1, 1)
        line, column = position
        label = f"{_dotted(path)}: " if path else ""
        self.problems.append(((0, self.file, line, column), f"{self.file}:{line}:{column}: {label}{message}"))

    def add_at(self, line: int, column: int, message: str, *, file: str | None = None) -> None:
        """A problem at a known position, in this file or another one (`.env`, an env_file)."""
        name = file or self.file
        rank = 0 if name == self.file else 1
        self.problems.append(((rank, name, line, column), f"{name}:{line}:{column}: {message}"))

    def add_plain(self, message: str) -> None:
        self.problems.append(((0, self.file, 0, 0), f"{self.file}: {message}"))

    def raise_if_any(self) -> None:
        if self.problems:
            # Sorted by place so the output reads top to bottom like the file; the sort
            # is stable, so problems at the same place keep the order they were found.
            ordered = sorted(self.problems, key=lambda item: item[0])
            raise ConfigError([text for _, text in ordered])


def _display(path: Path) -> str:
    """The path relative to the current folder when it is inside it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _dotted(path: Loc) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    """A value as it would be written in YAML, short enough for one line."""
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


def _suggest(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _read_text(path: Path, report: _Report) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        report.add_plain("file not found")
    except IsADirectoryError:
        report.add_plain("is a folder, expected a file")
    except UnicodeDecodeError as exc:
        report.add_plain(f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        report.add_plain(f"cannot read: {exc.strerror or exc}")
    return ""


# --- YAML and env files ----------------------------------------------------------------


def _parse_yaml(text: str, report: _Report) -> Document | None:
    """The document, its problems reported; one about the whole file has no field label."""
    document, problems = parse_yaml(text)
    report.document = document
    for problem in problems:
        report.add(problem.path, problem.message, position=(problem.line, problem.column))
    return document


def _add_env_problems(report: _Report, path: Path, problems: Iterable[EnvProblem]) -> None:
    name = _display(path)
    for line, column, message in problems:
        report.add_at(line, column, message, file=name)


def _read_dotenv(path: Path, environ: Mapping[str, str], report: _Report) -> dict[str, str]:
    values, problems = read_dotenv(path, environ)
    _add_env_problems(report, path, problems)
    return values


# --- interpolation ---------------------------------------------------------------------


class _Watched(Mapping[str, str]):
    """A view of the variables that notes which of the `watched` names were looked up."""

    def __init__(self, base: Mapping[str, str], watched: set[str]) -> None:
        self.base = base
        self.watched = watched
        self.hits: list[str] = []

    def _note(self, name: object) -> None:
        if name in self.watched and name not in self.hits:
            self.hits.append(str(name))

    def __getitem__(self, name: str) -> str:
        self._note(name)
        return self.base[name]

    def __contains__(self, name: object) -> bool:
        self._note(name)
        return name in self.base

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


def _interpolate_tree(value: Any, path: Loc, variables: Mapping[str, str], kept: set[str], report: _Report) -> Any:
    """Every string value of the document, interpolated; keys are left as written."""
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, path + (k,), variables, kept, report) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_tree(v, path + (i,), variables, kept, report) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    deferred = len(path) >= 3 and path[0] == "services" and path[2] in _DEFERRED
    try:
        if deferred:
            return interpolate(value, variables, keep=kept)
        watched = _Watched(variables, kept)
        result = interpolate(value, watched)
    except InterpolationError as exc:
        report.add(path, str(exc))
        return value
    if watched.hits:
        # Ports are known only at start time, and only these fields are expanded then.
        report.add(
            path,
            f"${{{watched.hits[0]}}} is known only when the stack starts; "
            "port variables can be used in command, env and healthcheck",
        )
    return result


# --- validation ------------------------------------------------------------------------


def _without_extensions(data: dict[str, Any]) -> dict[str, Any]:
    """The document without Compose's `x-` extension fields, at the top and in services.

    They hold anchors to reuse (`x-defaults: &defaults`) and notes for other tools;
    by the time they are dropped, merge keys have already copied what they share.
    """
    out = {key: value for key, value in data.items() if not key.startswith("x-")}
    services = out.get("services")
    if isinstance(services, dict):
        out["services"] = {
            name: {k: v for k, v in service.items() if not k.startswith("x-")} if isinstance(service, dict) else service
            for name, service in services.items()
        }
    return out


def _prepare(data: dict[str, Any], path: Path, report: _Report) -> dict[str, Any]:
    """Fill in what the loader owns (names, path) and reject it when written in the file."""
    data = dict(data)
    if "path" in data:
        report.add(("path",), "unknown field (the file's own location is used)", key=True)
        del data["path"]
    if not data.get("name"):
        data["name"] = path.parent.name
    data["path"] = path
    services = data.get("services")
    if services is None or services == {}:
        report.add(("services",), "no services defined; expected a mapping of service names to their settings")
        data["services"] = {}
    elif isinstance(services, dict):
        prepared: dict[str, Any] = {}
        for name, service in services.items():
            if isinstance(service, dict):
                if "name" in service:
                    report.add(("services", name, "name"), "unknown field (a service is named by its key)", key=True)
                service = {**service, "name": name}
            prepared[name] = service
        data["services"] = prepared
    return data


# Pydantic error kinds that mean "this is the wrong kind of value" rather than "right
# kind, wrong value": only these are collapsed when every member of a union fails.
_TYPE_ERRORS = frozenset(
    {
        "string_type", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
        "bool_type", "bool_parsing", "list_type", "tuple_type", "set_type", "dict_type",
        "model_type", "model_attributes_type", "literal_error", "enum", "none_required",
    }
)  # fmt: skip


def _validate(data: dict[str, Any], report: _Report) -> StackConfig | None:
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
            hint = _suggest(str(path[-1]), fields)
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
        out.append((field_path, f"expected {expected} (got {_show(error['input'])})", False))
    return out


def _human(error: Any, path: Loc) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = f" (got {_show(error.get('input'))})"
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


# --- checks on the validated stack -----------------------------------------------------


def _apply_env_files(
    config: StackConfig, root: Path, variables: Mapping[str, str], kept: set[str], report: _Report
) -> StackConfig:
    """Each service's `env`, on top of its env files (later files win over earlier ones)."""
    services: dict[str, Service] = {}
    for name, service in config.services.items():
        if not service.env_file:
            services[name] = service
            continue
        merged: dict[str, str] = {}
        written = _raw(report, ("services", name, "env_file"))
        for index, relative in enumerate(service.env_file):
            where: Loc = ("services", name, "env_file") + ((index,) if isinstance(written, list) else ())
            file = root / relative
            try:
                entries, problems = read_env_file(file)
            except FileNotFoundError:
                report.add(where, f"env file not found: {relative}")
                continue
            except OSError as exc:
                report.add(where, f"cannot read env file {relative}: {exc.strerror or exc}")
                continue
            _add_env_problems(report, file, problems)
            for entry in entries:
                value = _env_file_value(entry, variables, kept, file, report)
                if value is not None:
                    merged[entry.key] = value
        merged.update(service.env)
        services[name] = service.model_copy(update={"env": merged})
    return config.model_copy(update={"services": services})


def _env_file_value(
    entry: EnvEntry, variables: Mapping[str, str], kept: set[str], file: Path, report: _Report
) -> str | None:
    # `env` values are templates for the start-time pass (see the module docstring),
    # so what comes from an env file is made one too.
    if entry.value is None:
        inherited = variables.get(entry.key)
        return None if inherited is None else inherited.replace("$", "$$")
    if entry.literal:
        return entry.value.replace("$", "$$")
    try:
        return interpolate(entry.value, variables, keep=kept)
    except InterpolationError as exc:
        report.add_at(entry.line, 1, f"{entry.key}: {exc}", file=_display(file))
        return None


def _raw(report: _Report, path: Loc) -> Any:
    """The value written at `path` in the file, before validation reshaped it."""
    value = report.document.data if report.document else None
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            return None
    return value


def _check_working_dirs(config: StackConfig, root: Path, report: _Report) -> None:
    for name, service in config.services.items():
        if service.working_dir is None:
            continue
        folder = root / service.working_dir
        if not folder.exists():
            report.add(("services", name, "working_dir"), f"folder not found: {service.working_dir}")
        elif not folder.is_dir():
            report.add(("services", name, "working_dir"), f"not a folder: {service.working_dir}")


def _dependency_place(report: _Report, service: str, dependency: str) -> Loc:
    """Where `dependency` is written under `service.depends_on`: a key, or a list item."""
    written = _raw(report, ("services", service, "depends_on"))
    if isinstance(written, list) and dependency in written:
        return ("services", service, "depends_on", written.index(dependency))
    return ("services", service, "depends_on", dependency)


def _check_stack(config: StackConfig, report: _Report) -> None:
    """The rules that need every service: dependencies, cycles, fixed ports."""
    names = set(config.services)
    graph: dict[str, list[str]] = {}
    for name, service in config.services.items():
        graph[name] = []
        for dependency, entry in service.depends_on.items():
            path = ("services", name, "depends_on", dependency)
            at = _dependency_place(report, name, dependency)
            if dependency == name:
                report.add(path, "a service cannot depend on itself", at=at)
                continue
            if dependency not in names:
                hint = _suggest(dependency, names - {name})
                also = f'; did you mean "{hint}"?' if hint else ""
                report.add(path, f'unknown service "{dependency}" ({name} depends on it{also})', at=at)
                continue
            graph[name].append(dependency)
            target = config.services[dependency]
            if entry.condition is Condition.HEALTHY and target.healthcheck is None:
                report.add(
                    path + ("condition",),
                    f"service_healthy needs a healthcheck, and {dependency} has none "
                    f"(give {dependency} a healthcheck, or wait for service_started)",
                )
    # Report every loop: after reporting one, cut its first link and look again.
    for _ in range(sum(len(deps) for deps in graph.values())):
        loop = find_cycle(graph)
        if loop is None:
            break
        first, second = loop[0], loop[1]
        report.add(
            ("services", first, "depends_on", second),
            "dependency cycle: " + " -> ".join(loop),
            at=_dependency_place(report, first, second),
        )
        graph[first].remove(second)
    owners: dict[int, str] = {}
    for name, service in config.services.items():
        if isinstance(service.port, int):
            if service.port in owners:
                report.add(
                    ("services", name, "port"),
                    f"port {service.port} is already the port of {owners[service.port]}; "
                    "two services cannot listen on the same fixed port",
                )
            else:
                owners[service.port] = name
