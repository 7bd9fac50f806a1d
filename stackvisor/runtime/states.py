"""The states a service can be in, and the one table of legal transitions.

Every change of state goes through `ServiceRunner._set_state`, which checks this
table, so "what can happen to a service" is answered here and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"
    COMPLETED = "completed"
    FAILED = "failed"
    IDLE = "idle"  # `start: on_demand`: its port listens, the next connection starts it
    SCHEDULED = "scheduled"  # `schedule:`: nothing runs; its next tick starts it


_ALIVE = {State.STARTING, State.RUNNING, State.HEALTHY, State.UNHEALTHY}
# PENDING after a run: a dependency is down, so the service waits for it, not a restart.
_ENDED_AFTER_RUN = {State.EXITED, State.COMPLETED, State.BACKOFF, State.FAILED, State.STOPPING, State.PENDING}
_RESTARTABLE = {State.PENDING, State.STARTING, State.STOPPED, State.IDLE, State.SCHEDULED}

ALLOWED: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.STARTING, State.FAILED, State.STOPPED}),
    State.STARTING: frozenset({State.RUNNING, State.HEALTHY, State.UNHEALTHY} | _ENDED_AFTER_RUN),
    State.RUNNING: frozenset(_ENDED_AFTER_RUN),
    State.HEALTHY: frozenset({State.UNHEALTHY} | _ENDED_AFTER_RUN),
    State.UNHEALTHY: frozenset({State.HEALTHY} | _ENDED_AFTER_RUN),
    # An unhealthy service is stopped before its restart is scheduled: STOPPING -> BACKOFF.
    State.STOPPING: frozenset({State.STOPPED, State.BACKOFF, State.FAILED, State.PENDING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED, State.FAILED, State.PENDING}),
    State.STOPPED: frozenset(_RESTARTABLE),
    State.EXITED: frozenset(_RESTARTABLE),
    State.COMPLETED: frozenset(_RESTARTABLE),
    State.FAILED: frozenset(_RESTARTABLE),
    # A reload may turn an on-demand service into a scheduled one, or back.
    State.IDLE: frozenset({State.PENDING, State.STOPPED, State.SCHEDULED}),
    State.SCHEDULED: frozenset({State.PENDING, State.STOPPED, State.IDLE}),
}

# A process of the service exists in these states.
ALIVE = frozenset(_ALIVE)
# Nothing more happens to a service in these states unless somebody asks.
SETTLED = frozenset({State.STOPPED, State.EXITED, State.COMPLETED, State.FAILED, State.IDLE, State.SCHEDULED})


class TransitionError(RuntimeError):
    pass


def check_transition(old: State, new: State) -> None:
    if new not in ALLOWED[old]:
        raise TransitionError(f"illegal transition {old} -> {new}")
