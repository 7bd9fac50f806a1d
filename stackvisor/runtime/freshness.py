"""Whether a service still runs against what it was started with, and the loop that
restarts it when not.

A service is started against two things that may change under it while it runs:
- a `depends_on` dependency with `restart: true` (Compose's meaning): when that
  dependency runs again (it crashed and came back, was stopped and started, was
  restarted by a reload), the dependent restarts once the condition holds again;
- the ports of other services that its file mentions (`${API_PORT}` in a command, an
  `env` value, a health check): when one of them moves (a reload changed it, a
  migration at start or restart), the service restarts; a one-shot that completed
  runs again (a config file rendered with the old port must be rendered anew).

Only the port variables that the service's own file names count: every child has all
of them in its environment, and restarting every service when any port moves is what
a reload must not do. A program that reads `API_PORT` from its environment without its
file naming it is not followed.

Pure but for `follow`, which waits on the event bus and asks the supervisor to restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stackvisor.config.interpolate import port_variable
from stackvisor.config.schema import Service
from stackvisor.errors import ActionConflict
from stackvisor.runtime.dependencies import DependencyFacts, condition_holds
from stackvisor.runtime.events import EventBus


def strings(value: Any) -> Iterable[str]:
    """Every string inside a plain value (dicts, lists, scalars)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def mentioned(service: Service, variables: Iterable[str]) -> frozenset[str]:
    """Which of `variables` (other services' port variables) the service's file names."""
    text = "\n".join(strings(service.model_dump(include={"command", "env", "healthcheck"})))
    return frozenset(v for v in variables if _names(text, v))


def _names(text: str, variable: str) -> bool:
    start = text.find(variable)
    while start >= 0:
        before = text[start - 1] if start else " "
        end = start + len(variable)
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        start = text.find(variable, end)
    return False


@dataclass(frozen=True)
class Basis:
    """What one run of a service was started against."""

    runs: Mapping[str, int] = field(default_factory=dict)  # restart: true dependencies' runs
    ports: Mapping[str, str] = field(default_factory=dict)  # mentioned port variables' values


def basis_of(
    service: Service, facts: Callable[[str], DependencyFacts | None], variables: Mapping[str, str]
) -> Basis:
    """What a run of `service` starts against, with `variables` its port variables."""
    runs = {}
    for name, dep in service.depends_on.items():
        found = facts(name)
        if dep.restart and found is not None:
            runs[name] = found.runs
    others = variables.keys() - {"PORT", port_variable(service.name)}
    return Basis(runs, {v: variables.get(v, "") for v in mentioned(service, others)})


def outdated(
    basis: Basis,
    service: Service,
    facts: Callable[[str], DependencyFacts | None],
    variables: Mapping[str, str],
) -> str:
    """Why a run no longer matches its basis ("" when it does): a `restart: true`
    dependency that ran again and holds its condition now, or a port that moved."""
    for name, seen in basis.runs.items():
        found = facts(name)
        dep = service.depends_on.get(name)
        if found is None or dep is None or found.runs <= seen:
            continue
        if condition_holds(found.state, dep.condition):
            return f"{name} ran again (restart: true)"
    for variable, seen_value in basis.ports.items():
        now = variables.get(variable, "")
        if now != seen_value:
            return f"{variable} is now {now or 'unset'} (was {seen_value or 'unset'})"
    return ""


class Follower(Protocol):
    name: str

    def outdated(self) -> str: ...


async def follow(
    runners: Callable[[], Sequence[Follower]],
    bus: EventBus,
    restart: Callable[[Sequence[str]], Awaitable[None]],
    logger: Any,
) -> None:
    """Until cancelled or the stack stops: restart every service that is outdated."""

    def due() -> dict[str, str]:
        return {r.name: why for r in runners() if (why := r.outdated())}

    while True:
        await bus.wait_until(lambda: bool(due()))
        reasons = due()
        for name, why in sorted(reasons.items()):
            logger.info(f"{name}: restarting, {why}")
        try:
            await restart(sorted(reasons))
        except ActionConflict:
            return  # the stack is stopping
