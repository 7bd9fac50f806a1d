"""The steps after validation: env files into each service's environment, whole-stack checks.

Lives here: merging each service's `env_file`s under its `env` (their values made
templates for the start-time pass, like `env`'s own), and the rules that need more than
one field: dependencies on unknown services or on themselves, `service_healthy` on a
service without a healthcheck, dependency cycles (every one of them), two services on
one fixed port, and `working_dir` folders that do not exist. Not here: the dotenv format
(`envfiles`), graph algorithms (`stackvisor.graph`), the per-field rules (`schema`).
"""

from __future__ import annotations

import os
import re
import stat
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

from stackvisor.config.envfiles import EnvEntry, read_env_file
from stackvisor.config.interpolate import InterpolationError, interpolate
from stackvisor.config.report import Report, display, suggest
from stackvisor.config.schema import Condition, Service, StackConfig
from stackvisor.config.users import blocked_at, may_become, resolve_user
from stackvisor.config.yamlpos import Loc
from stackvisor.graph import find_cycle


def apply_env_files(
    config: StackConfig, root: Path, variables: Mapping[str, str], kept: set[str], report: Report
) -> StackConfig:
    """Each service's `env`, on top of its env files (later files win over earlier ones)."""
    services: dict[str, Service] = {}
    for name, service in config.services.items():
        if not service.env_file:
            services[name] = service
            continue
        merged: dict[str, str] = {}
        written = report.written(("services", name, "env_file"))
        for index, ref in enumerate(service.env_file):
            where: Loc = ("services", name, "env_file") + ((index,) if isinstance(written, list) else ())
            relative = ref.path
            file = root / relative
            try:
                entries, problems = read_env_file(file)
            except FileNotFoundError:
                if ref.required:  # an optional one is read once it is there (its folder is watched)
                    report.add(where, f"env file not found: {relative}")
                continue
            except OSError as exc:
                report.add(where, f"cannot read env file {relative}: {exc.strerror or exc}")
                continue
            report.add_env_problems(file, problems)
            above: dict[str, str] = {}  # the file's lines so far, as plain values
            seen = ChainMap(dict(variables), above)  # the environment first, then the lines above
            for entry in entries:
                value = _env_file_value(entry, seen, kept, file, report)
                if value is not None and entry.key:  # `="x"` Compose reads; no process can have it
                    merged[entry.key] = value
                    above[entry.key] = _plain(entry, seen)
        merged.update(service.env)
        services[name] = service.model_copy(update={"env": merged})
    return config.model_copy(update={"services": services})


def _env_file_value(
    entry: EnvEntry, variables: Mapping[str, str], kept: set[str], file: Path, report: Report
) -> str | None:
    # `env` values are templates for the start-time pass that expands the port
    # variables (a literal `$` is written `$$` there), so what comes from an env file
    # is made one too.
    if entry.value is None:
        inherited = variables.get(entry.key)
        return None if inherited is None else inherited.replace("$", "$$")
    if entry.literal:
        return entry.value.replace("$", "$$")
    try:
        return interpolate(entry.value, variables, keep=kept)
    except InterpolationError as exc:
        report.add_at(entry.line, 1, f"{entry.key}: {exc}", file=display(file))
        return None


def _plain(entry: EnvEntry, variables: Mapping[str, str]) -> str:
    """An env file line's value as a later line sees it (no template: one `$` is one)."""
    if entry.value is None:
        return variables.get(entry.key, "")
    if entry.literal:
        return entry.value
    try:
        return interpolate(entry.value, variables)
    except InterpolationError:
        return ""  # reported once already, by `_env_file_value`


def check_users(config: StackConfig, report: Report, euid: int | None = None) -> None:
    """Each `user` exists, and this supervisor may become it (only root changes user)."""
    euid = os.geteuid() if euid is None else euid
    for name, service in config.services.items():
        if service.user is None:
            continue
        try:
            user = resolve_user(service.user)
        except ValueError as exc:
            report.add(("services", name, "user"), str(exc))
            continue
        if not may_become(user, euid):
            report.add(
                ("services", name, "user"),
                f"only root can run a service as another user (stackvisor runs as uid {euid}, "
                f"{service.user} is uid {user.uid})",
            )


def check_working_dirs(config: StackConfig, root: Path, report: Report) -> None:
    """Each `working_dir` is an existing folder, relative to the stack file's, that the
    service's `user` (when it has one) may enter."""
    for name, service in config.services.items():
        if service.working_dir is None:
            continue
        folder = root / service.working_dir
        where = ("services", name, "working_dir")
        if not folder.exists():
            report.add(where, f"folder not found: {service.working_dir}")
        elif not folder.is_dir():
            report.add(where, f"not a folder: {service.working_dir}")
        elif service.user is not None:
            try:
                user = resolve_user(service.user)
            except ValueError:
                continue  # check_users says so
            if (blocked := blocked_at(folder, user)) is not None:
                mode = stat.filemode(blocked.stat().st_mode)
                message = f"user {service.user} cannot enter {blocked} ({mode}), on the way to {folder}"
                report.add(where, message)


def _dependency_place(report: Report, service: str, dependency: str) -> Loc:
    """Where `dependency` is written under `service.depends_on`: a key, or a list item."""
    written = report.written(("services", service, "depends_on"))
    if isinstance(written, list) and dependency in written:
        return ("services", service, "depends_on", written.index(dependency))
    return ("services", service, "depends_on", dependency)


# Compose's rule for service names. A name becomes a file name (its log) and part of
# environment variable names, so nothing else may pass: not `..`, not a slash.
SERVICE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_NAME = 100  # a file name has at most 255 bytes; its log's rotations add a few


def check_stack(config: StackConfig, report: Report) -> None:
    """The rules that need every service: names, dependencies, cycles, fixed ports."""
    for name in config.services:
        if not SERVICE_NAME.fullmatch(name):
            message = f"a service name must match {SERVICE_NAME.pattern} (got {name!r})"
            report.add(("services", name), message, key=True)
        elif len(name) > MAX_NAME:
            message = (
                f"a service name has at most {MAX_NAME} characters (it names its log file; got {len(name)})"
            )
            report.add(("services", name), message, key=True)
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
                hint = suggest(dependency, names - {name})
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
    types = config.port_types()
    for name, service in config.services.items():
        if service.type is not None and service.type not in types:
            known = ", ".join(sorted(types))
            report.add(("services", name, "type"), f"unknown service type {service.type!r} (known: {known})")
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
