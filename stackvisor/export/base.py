"""What every export format shares: the services chosen, their ports, the command and
environment as stackvisor would start them, and what an engine cannot express.

A stack file's `command` and `env` are templates after loading: every variable but the
port variables (`PORT`, `<NAME>_PORT`) is already expanded, and a literal `$` is still
written `$$`. `command` and `environment` expand the port variables with the ports
chosen here, as the supervisor does at start, and give the final text; each format
escapes it again in its own syntax (`$$` for Compose and systemd, `%%` for systemd's
specifiers, `$$(` for Kubernetes).

Ports: a service's `port` when it is a number; with `port: auto`, the first port of its
`port_range` (or of its type's range); otherwise none. An engine has no conflict
strategy: the port written is the port the file asks for, and a warning says so when the
file allows moving it (`alternative_ports`, `port_range`).

Pure: nothing here reads the disk or the network; the formats (`systemd`, `kubernetes`,
`compose`) turn a `Target` into files and warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stackvisor import graph
from stackvisor.config.interpolate import interpolate, port_env
from stackvisor.config.replicas import expand_names
from stackvisor.config.schema import Service, StackConfig

FORMATS = ("systemd", "kubernetes", "compose")


class ExportError(ValueError):
    """The stack cannot be exported as asked (a service without an image, an unknown
    service): said in words, exit 2."""


@dataclass
class Exported:
    """Files (path relative to the output folder -> text) and what did not carry over.
    Each warning is also written as a comment into the file it concerns."""

    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """What to export: the stack, the services (in start order: the named ones and what
    they depend on, or every one), their ports, and the options of the command line."""

    config: StackConfig
    services: tuple[str, ...]
    ports: dict[str, int | None]
    image: str | None = None  # --image: for every service without its own
    user_units: bool = False  # systemd --user
    # Per service, `x-kubernetes: {image: ...}` of the file (extension fields are not
    # part of the loaded configuration: the command line reads them from the file).
    images: dict[str, str] = field(default_factory=dict)

    def service(self, name: str) -> Service:
        return self.config.services[name]

    def image_of(self, name: str) -> str | None:
        return self.images.get(name) or self.image

    def require_images(self) -> None:
        """ExportError naming every service without an image (engines that run images)."""
        lacking = [name for name in self.services if self.image_of(name) is None]
        if lacking:
            raise ExportError(
                f"no image for {', '.join(lacking)}: give --image IMAGE for all, or"
                " `x-kubernetes: {image: ...}` on each service"
            )

    @property
    def name(self) -> str:
        return self.config.name or self.config.root.name or "stack"


def chosen_port(service: Service, types: dict[str, tuple[int, int] | None]) -> int | None:
    """The port an engine gets for `service` (see the module docstring)."""
    if isinstance(service.port, int):
        return service.port
    if service.port == "auto":
        span = service.port_range or (types.get(service.type) if service.type else None)
        return span[0] if span else None
    return None


def plan(
    config: StackConfig,
    names: Sequence[str] = (),
    *,
    image: str | None = None,
    user_units: bool = False,
    images: dict[str, str] | None = None,
) -> Target:
    """The export of `names` (and what they need; a group of copies is its copies), or
    of the whole stack."""
    names = expand_names(config, names)
    unknown = [n for n in names if n not in config.services]
    if unknown:
        known = ", ".join(sorted(config.services))
        raise ExportError(f"unknown service {', '.join(unknown)} (the stack has: {known})")
    wanted = graph.closure(config.graph(), names) if names else set(config.services)
    order = tuple(n for n in graph.start_order(config.graph()) if n in wanted)
    types = config.port_types()
    ports = {name: chosen_port(config.services[name], types) for name in order}
    return Target(config, order, ports, image, user_units, dict(images or {}))


def command(target: Target, name: str) -> str | list[str]:
    """The service's command with its port variables expanded: a string runs through
    `/bin/sh -c`, a list is exec'd."""
    variables = port_env(target.ports, own=name)
    value = target.service(name).command
    if isinstance(value, str):
        return interpolate(value, variables)
    return [interpolate(part, variables) for part in value]


def environment(target: Target, name: str) -> dict[str, str]:
    """The service's own environment (its `env_file`s, then `env`) with the port
    variables expanded, and the port variables themselves: `PORT` for its own port,
    `<NAME>_PORT` for every service with one."""
    variables = port_env(target.ports, own=name)
    env = {key: interpolate(value, variables) for key, value in target.service(name).env.items()}
    env.update(variables)
    return env


def port_text(text: str, target: Target, name: str) -> str:
    """A probe's address or command with the port variables expanded."""
    return interpolate(text, port_env(target.ports, own=name))


def not_carried(target: Target, name: str) -> list[str]:
    """What stackvisor does for this service that no engine here does (each format adds
    its own): said once per service, as `NAME: what`."""
    svc = target.service(name)
    lost = []
    if svc.alternative_ports or svc.port_range:
        lost.append("port conflicts are not resolved (alternative_ports, port_range): the port is fixed")
    if svc.conflict_strategy is not None:
        lost.append(f"conflict_strategy: {svc.conflict_strategy} has no equivalent")
    if svc.process_patterns:
        lost.append("process_patterns (stale copies to end on a conflict) have no equivalent")
    if svc.watch:
        lost.append("watch: a change of its files does not restart it")
    if svc.idle_stop is not None:
        lost.append("idle_stop: it is not stopped when idle")
    if svc.lease is not None:
        lost.append("lease: it does not stop without heartbeats")
    if svc.daemon is not None:
        lost.append("daemon: the program must stay in the foreground (systemd's Type=forking would carry it)")
    if svc.socket == "proxy":
        lost.append("socket: proxy: no forwarding by a supervisor; the service listens on its port itself")
    return [f"{name}: {what}" for what in lost]


STACK_WIDE = (
    "hot reload: an edit of the stack file is not applied by itself (export again and reload the engine)"
)
