"""Whether a service's `depends_on` conditions hold: to start it, and while it runs.

Pure: facts about the dependencies in, verdicts out. The start gate waits until each
condition is met or can never be (then the dependent fails, unless the dependency is
optional); `outage` says whether a dependency is down right now, so that a dependent
that crashes meanwhile waits for it instead of spending its restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from stackvisor.config.schema import Condition, Dependency, RestartPolicy
from stackvisor.runtime.states import ALIVE, State


@dataclass(frozen=True)
class DependencyFacts:
    """What a dependent may know of one of its dependencies."""

    state: State
    spawned: bool  # a process was started since the last start request
    restart: RestartPolicy
    reason: str = ""
    runs: int = 0  # processes started so far, but out of `idle`: a new one means it ran again


def condition_met(facts: DependencyFacts, condition: Condition) -> bool | None:
    """Is a `depends_on` condition met (True), never to be met (False), or not yet (None)?"""
    state = facts.state
    if state is State.IDLE and condition is not Condition.COMPLETED:
        return True  # its port accepts now; the first connection starts it
    if condition is Condition.STARTED:
        if facts.spawned:
            return True
        return False if state is State.FAILED else None
    if condition is Condition.HEALTHY:
        if state is State.HEALTHY:
            return True
        if state in (State.FAILED, State.EXITED, State.COMPLETED):
            return False
        if state is State.UNHEALTHY and facts.restart is RestartPolicy.NO:
            return False
        return None
    if state is State.COMPLETED:
        return True
    return False if state in (State.FAILED, State.EXITED) else None


def outage(depends_on: Mapping[str, Dependency], facts: Callable[[str], DependencyFacts | None]) -> str:
    """The first required dependency whose condition does not hold right now, as
    `postgres: service_healthy`; "" when all hold. Unlike the start gate, `started` means
    alive now (or done: a completed one-shot), not "was started once"."""
    for name, dep in depends_on.items():
        found = facts(name)
        if found is None or not dep.required:
            continue
        if not condition_holds(found.state, dep.condition):
            return f"{name}: {dep.condition.value} ({name} is {found.state})"
    return ""


def condition_holds(state: State, condition: Condition) -> bool:
    """Does a dependency in `state` meet `condition` right now?"""
    if state is State.IDLE and condition is not Condition.COMPLETED:
        return True
    if condition is Condition.STARTED:
        return state in ALIVE or state in (State.COMPLETED, State.STOPPING)
    if condition is Condition.HEALTHY:
        return state is State.HEALTHY
    return state is State.COMPLETED


@dataclass(frozen=True)
class DependencyVerdict:
    ready: bool | None  # True: start; False: fail; None: keep waiting
    reason: str = ""
    skipped: tuple[str, ...] = ()  # optional dependencies (`required: false`) not waited for


def dependencies_verdict(
    depends_on: Mapping[str, Dependency], facts: Callable[[str], DependencyFacts | None]
) -> DependencyVerdict:
    """All of a service's `depends_on` together. `facts(name)` is None for a dependency
    that is not part of the running selection.

    As in Compose, `required: false` makes a dependency optional: one that is not
    selected or can never meet its condition does not hold the dependent back (it
    is still waited for while it may yet meet it).
    """
    waiting = False
    skipped: list[str] = []
    for name, dep in depends_on.items():
        found = facts(name)
        met = None if found is None else condition_met(found, dep.condition)
        if found is not None and met is None:
            waiting = True
        elif found is None or met is False:
            if not dep.required:
                skipped.append(name)
            elif found is None:
                return DependencyVerdict(False, f"dependency {name} is not part of the running stack")
            else:
                why = found.reason or str(found.state)
                wanted = dep.condition.value
                return DependencyVerdict(
                    False, f"dependency {name} cannot meet {wanted}: {name} is {found.state} ({why})"
                )
    if waiting:
        return DependencyVerdict(None)
    return DependencyVerdict(True, skipped=tuple(skipped))
