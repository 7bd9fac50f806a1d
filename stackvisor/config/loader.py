"""Finding and loading services.yaml into a validated `StackConfig`.

Lives here: locating the file, reading it, the order of the steps of loading (YAML,
`extends`, `.env`, interpolation of the document, validation, env files, `include`,
whole-stack checks), and
the parts of the document the loader owns (the `x-` extension fields it drops, the
service names and the file's path it fills in). Not here: reading YAML with the
position of every node (`yamlpos`), the dotenv format (`envfiles`), the shape of the
file (`schema`), pydantic's errors turned into messages (`explain`), env files merged
into services and the checks that need the whole stack (`checks`), collecting problems
(`report`), comparing two stacks (`diff`).

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

import os
from collections import ChainMap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stackvisor.config.checks import apply_env_files, check_stack, check_users, check_working_dirs
from stackvisor.config.compose import carry_over
from stackvisor.config.envfiles import read_dotenv
from stackvisor.config.explain import validate
from stackvisor.config.finding import CONFIG_NAMES, find_config
from stackvisor.config.include import extend, include, included_paths
from stackvisor.config.interpolate import InterpolationError, interpolate, port_variables
from stackvisor.config.replicas import expand, replica_variables
from stackvisor.config.report import Report, display
from stackvisor.config.schema import StackConfig
from stackvisor.config.textfile import NotText, read_text, real
from stackvisor.config.yamlpos import Document, Loc, parse_yaml
from stackvisor.errors import ConfigError

__all__ = ["CONFIG_NAMES", "ConfigError", "find_config", "load_config"]

# Fields whose strings keep the port variables for the start-time pass: ports are
# known only once conflicts are resolved at start time (a migrated port must reach the
# dependents), and only these fields are expanded again then.
_DEFERRED = frozenset({"command", "env", "environment", "healthcheck"})


def load_config(
    path: Path, environ: Mapping[str, str] | None = None, *, _including: tuple[Path, ...] = ()
) -> StackConfig:
    """Read, interpolate and validate a stack file (with the files it includes); raise
    `ConfigError` listing every problem."""
    path = Path(path)
    report = Report(display(path))
    text = _read_text(path, report)
    report.raise_if_any()
    document = _parse_yaml(text, report)
    report.raise_if_any()
    assert document is not None

    absolute = real(path)
    root = absolute.parent
    if environ is None:
        environ = os.environ
    variables: Mapping[str, str] = ChainMap(dict(environ), _read_dotenv(root / ".env", environ, report))
    services_data = document.data.get("services")
    names = list(services_data) if isinstance(services_data, dict) else []
    kept = port_variables(names) | replica_variables(names, services_data)

    written = extend(document.data, root, _read_document, report)
    data = _interpolate_tree(carry_over(written, variables, report), (), variables, kept, report)
    includes = data.pop("include", None)
    data = _prepare(data, absolute, report, included=includes is not None)
    config = validate(data, report)
    report.raise_if_any()
    assert config is not None

    config = apply_env_files(config, root, variables, kept, report)
    check_working_dirs(config, root, report)
    check_users(config, report)
    if includes is not None:
        chain = (*_including, absolute)

        def load_included(other: Path) -> StackConfig:
            if other in chain:
                raise ConfigError(f"{display(path)}: include goes round in a circle through {display(other)}")
            return load_config(other, environ, _including=chain)

        config = include(config, included_paths(includes, root, report), load_included, report)
    check_stack(config, report)
    report.raise_if_any()
    if not _including:  # once, over the whole stack: a group's copies (see `replicas`)
        config = expand(config, report)
        report.raise_if_any()
    return config


# A stack file is a few kilobytes; this bounds what a mistake (or /dev/zero) can cost.
MAX_FILE_BYTES = 10 * 1024 * 1024


def _read_text(path: Path, report: Report) -> str:
    try:
        return read_text(path, MAX_FILE_BYTES, "a stack file")
    except NotText as exc:
        report.add_plain(str(exc))
    except FileNotFoundError:
        report.add_plain("file not found")
    except OSError as exc:
        report.add_plain(f"cannot read: {exc.strerror or exc}")
    return ""


# --- YAML and env files ----------------------------------------------------------------


def _parse_yaml(text: str, report: Report) -> Document | None:
    """The document, its problems reported; one about the whole file has no field label."""
    document, problems = parse_yaml(text)
    report.document = document
    for problem in problems:
        report.add(problem.path, problem.message, position=(problem.line, problem.column))
    return document


def _read_document(path: Path) -> Document | None:
    """Another file's document (for `extends`), None when it cannot be read or parsed."""
    try:
        document, problems = parse_yaml(read_text(path, MAX_FILE_BYTES, "a stack file"))
    except (OSError, NotText):
        return None
    return None if problems else document


def _read_dotenv(path: Path, environ: Mapping[str, str], report: Report) -> dict[str, str]:
    values, problems = read_dotenv(path, environ)
    report.add_env_problems(path, problems)
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


def _interpolate_tree(
    value: Any, path: Loc, variables: Mapping[str, str], kept: set[str], report: Report
) -> Any:
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


# --- what the loader owns in the document ----------------------------------------------


def _prepare(data: dict[str, Any], path: Path, report: Report, *, included: bool = False) -> dict[str, Any]:
    """Fill in what the loader owns (names, path) and reject it when written in the file.
    A file that includes others may have no services of its own."""
    data = dict(data)
    for owned, why in (("path", "the file's own location is used"), ("groups", "see `replicas`")):
        if owned in data:
            report.add((owned,), f"unknown field ({why})", key=True)
            del data[owned]
    if not data.get("name"):
        data["name"] = path.parent.name
    data["path"] = path
    services = data.get("services")
    if included and not services:
        data["services"] = {}
    elif services is None or services == {}:
        report.add(
            ("services",), "no services defined; expected a mapping of service names to their settings"
        )
        data["services"] = {}
    elif isinstance(services, dict):
        prepared: dict[str, Any] = {}
        for name, service in services.items():
            if not isinstance(service, dict):
                prepared[name] = service
                continue
            if "name" in service:
                message = "unknown field (a service is named by its key)"
                report.add(("services", name, "name"), message, key=True)
            prepared[name] = {**service, "name": name}
        data["services"] = prepared
    return data
