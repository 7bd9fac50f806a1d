"""Replicas: a service with `replicas: N` runs as N copies, `api.0` ... `api.N-1` (pure).

Lives here: the copies made from a service as written (their names, ports and
dependencies), the way back (the services as written, from a stack of copies), a
stack with another count for one group (`scale`), and the names the group stands for.
Not here: what each copy's process is given at start time (`REPLICA`, `<NAME>_PORTS`:
`interpolate.port_env`), carrying a scale out (`runtime.scaling`).

A service with `replicas: 1` (the default) is not a group: it keeps its own name. A
group's copies share everything but their name, their port (`port` + i when the file
names one; each copy resolves its own conflicts) and `REPLICA`. A dependency on a group
is a dependency on every copy of it, with the same condition.

The copies hold `replicas: 1` and the group's dependencies on other groups spelled out,
so two stacks that differ only in a count compare equal copy by copy: a scale adds or
removes copies and touches no other (see `diff`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stackvisor.config.interpolate import ports_variable
from stackvisor.config.report import Report
from stackvisor.config.schema import Dependency, Service, StackConfig

# The one variable a copy is given beside the port variables: its index, from 0.
REPLICA = "REPLICA"


def copy_names(name: str, count: int) -> list[str]:
    """The services a group of `count` runs as: itself alone when 1."""
    return [name] if count == 1 else [f"{name}.{i}" for i in range(count)]


def replica_variables(names: Iterable[str], services: Any) -> set[str]:
    """The names the loader keeps for start time beside the port variables:
    `<NAME>_PORTS` for every service, and `REPLICA` when a service says `replicas`."""
    kept = {ports_variable(name) for name in names}
    if isinstance(services, dict) and any(isinstance(s, dict) and "replicas" in s for s in services.values()):
        kept.add(REPLICA)
    return kept


def group_of(config: StackConfig, name: str) -> str | None:
    """The group `name` is a copy of, or None."""
    base, dot, index = name.rpartition(".")
    return base if dot and index.isdigit() and base in config.groups else None


def groups(config: StackConfig) -> dict[str, list[str]]:
    """Each group and its copies, in order."""
    return {g: copy_names(g, svc.replicas) for g, svc in config.groups.items()}


def expand_names(config: StackConfig, names: Iterable[str]) -> list[str]:
    """`names` with each group replaced by its copies (a name kept once)."""
    out: list[str] = []
    for name in names:
        for one in copy_names(name, config.groups[name].replicas) if name in config.groups else [name]:
            if one not in out:
                out.append(one)
    return out


def expand(config: StackConfig, report: Report | None = None) -> StackConfig:
    """A loaded stack (every service as written) with its groups as copies; problems
    (a copy's name or fixed port taken, a port past 65535) go to `report`."""
    stack = _build(config, dict(config.services))
    if report is not None:
        for group, message in problems(config.services, stack):
            report.add(("services", group, "replicas"), message)
    return stack


def written(config: StackConfig) -> dict[str, Service]:
    """The services as written: each group once (where its first copy is, or at the
    end when it has none), dependencies on copies folded back to their group."""
    out: dict[str, Service] = {}
    for name, svc in config.services.items():
        group = group_of(config, name)
        if group is not None:
            out.setdefault(group, config.groups[group])
        else:
            out[name] = fold(config, svc)
    for group, svc in config.groups.items():
        out.setdefault(group, svc)
    return out


def fold(config: StackConfig, svc: Service) -> Service:
    """`svc` with its dependencies on copies folded back to their group."""
    depends: dict[str, Dependency] = {}
    for name, entry in svc.depends_on.items():
        depends.setdefault(group_of(config, name) or name, entry)
    return svc if depends == svc.depends_on else svc.model_copy(update={"depends_on": depends})


def with_replicas(config: StackConfig, name: str, count: int) -> StackConfig:
    """The stack with `count` copies of `name` (a group or a plain service); the other
    services and copies are the same objects' equals."""
    services = written(config)
    services[name] = services[name].model_copy(update={"replicas": count})
    return _build(config, services)


def _build(config: StackConfig, services: Mapping[str, Service]) -> StackConfig:
    counts = {name: svc.replicas for name, svc in services.items()}
    out: dict[str, Service] = {}
    for name, given in services.items():
        depends: dict[str, Dependency] = {}
        for dep, entry in given.depends_on.items():
            for one in copy_names(dep, counts[dep]) if dep in counts else [dep]:
                depends[one] = entry
        same = depends == given.depends_on
        svc = given if same else given.model_copy(update={"depends_on": depends})
        if svc.replicas == 1:
            out[name] = svc
            continue
        for index, copy in enumerate(copy_names(name, svc.replicas)):
            port = svc.port + index if isinstance(svc.port, int) else svc.port
            out[copy] = svc.model_copy(update={"name": copy, "port": port, "replicas": 1})
    kept = {name: services[name] for name in services if counts[name] != 1}
    return config.model_copy(update={"services": out, "groups": kept})


def problems(names: Iterable[str], stack: StackConfig) -> list[tuple[str, str]]:
    """(group, message) for each copy of `stack` whose name is one of the services
    `names` (as written), or whose fixed port another service has or is past 65535."""
    taken = set(names)
    out: list[tuple[str, str]] = []
    for group, svc in stack.groups.items():
        for copy in copy_names(group, svc.replicas):
            if copy in taken:
                out.append((group, f"{copy} is the name of a copy of {group}: rename that service"))
        if isinstance(svc.port, int) and svc.port + svc.replicas - 1 > 65535:
            out.append((group, f"{svc.replicas} copies from port {svc.port} go past 65535"))
    owners: dict[int, str] = {}
    for name, svc in stack.services.items():
        if not isinstance(svc.port, int) or svc.port > 65535:
            continue
        other = owners.get(svc.port)
        clash = group_of(stack, name) or (group_of(stack, other) if other else None)
        if other is not None and clash is not None:
            out.append((clash, f"port {svc.port} of {name} is already the port of {other}"))
        owners.setdefault(svc.port, name)
    return out
