"""One service's lifecycle as a pure step: `step(life, event, now, rules) -> Step`.

In the spirit of supervisord's state module: `Life` is what is known about a
service (its state, its restart budget, why its process is being ended), an event
is what just happened (it was asked to start, its process exited, its health check
failed...), and the step says which states it passes through and what to do next
(spawn, terminate, wait before a restart). Every transition is checked against
`states.ALLOWED`. Nothing here spawns, signals, sleeps or reads a clock: the
`ServiceRunner` carries the actions out and feeds back what happened, with `now`
from its clock. Whether an early exit may mean somebody took the port is decided
here too; whether `depends_on` conditions hold is in `dependencies`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from stackvisor.config.schema import Backoff, RestartPolicy, Service
from stackvisor.runtime.policy import RestartTracker, Verdict
from stackvisor.runtime.states import ALIVE, ALLOWED, SETTLED, State, check_transition

# A process that exits this soon after its start, while somebody else now listens on
# its port, most likely lost the port between our check and its bind.
PORT_RACE_WINDOW = 10.0
# The shell's answer for a program it cannot run, when it comes at once: no restart
# can help, so the service fails without rounds of backoff.
PERMANENT_EXITS = {127: "command not found", 126: "command cannot be executed"}
PERMANENT_WINDOW = 2.0


@dataclass(frozen=True)
class Rules:
    """What the step needs of a service's configuration."""

    name: str
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    healthcheck: bool = False
    has_dependencies: bool = False
    scheduled: bool = False
    shell: bool = False  # its command runs through /bin/sh (a string): 127 and 126 are the shell's

    @classmethod
    def of(cls, service: Service) -> Rules:
        return cls(
            name=service.name,
            restart=service.restart,
            max_restarts=service.max_restarts,
            backoff=service.backoff,
            healthcheck=service.healthcheck is not None,
            has_dependencies=bool(service.depends_on),
            scheduled=service.schedule is not None,
            shell=isinstance(service.command, str),
        )

    @property
    def waits_in(self) -> State:
        """Where it waits to be started by something other than `up`."""
        return State.SCHEDULED if self.scheduled else State.IDLE


class Ending(StrEnum):
    """Why the current process is being terminated."""

    STOP = "stop"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Life:
    state: State = State.STOPPED
    restarts: int = 0  # restarts in a row: the budget `max_restarts` limits
    restarts_total: int = 0  # since the supervisor started, for people and metrics
    started_at: float | None = None  # monotonic start of the current process
    port: int | None = None  # the port the current process was given
    resolved_again: bool = False  # the one extra port resolution of this start is used
    ending: Ending | None = None


# ----- events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Asked to start (by `up`, a restart, a reload)."""


@dataclass(frozen=True)
class DependenciesMet:
    pass


@dataclass(frozen=True)
class DependencyBroken:
    reason: str


@dataclass(frozen=True)
class Spawned:
    port: int | None


@dataclass(frozen=True)
class SpawnFailed:
    reason: str


@dataclass(frozen=True)
class HealthVerdict:
    """The health check changed its verdict."""

    healthy: bool
    output: str
    waiting_for: str = ""  # a dependency that does not hold now: restarting cannot help


@dataclass(frozen=True)
class Terminating:
    """The runner begins a termination the step asked for."""

    reason: str


@dataclass(frozen=True)
class StopRequested:
    reason: str = "stopped"


@dataclass(frozen=True)
class Exited:
    """The process is gone (by itself, or after a termination). `port_taken`: somebody
    else listens on its port now (see `may_have_lost_port`)."""

    code: int | None
    port_taken: bool = False
    waiting_for: str = ""  # a dependency that does not hold now (see `outage`)


@dataclass(frozen=True)
class BackoffOver:
    pass


@dataclass(frozen=True)
class Idle:
    """The service waits for a connection on its port (`start: on_demand`: `idle`), or
    for the next tick of its schedule (`scheduled`)."""

    reason: str


@dataclass(frozen=True)
class ListenFailed:
    """The supervisor cannot listen on the port it holds for the service (`start:
    on_demand`, `socket: proxy`): somebody else has it. The service fails, as a start
    that cannot bind does, until somebody starts it again."""

    reason: str


@dataclass(frozen=True)
class Crashed:
    """The runner itself failed (a bug): the service fails rather than the stack."""

    reason: str


LifeEvent = (
    Start
    | DependenciesMet
    | DependencyBroken
    | Spawned
    | SpawnFailed
    | HealthVerdict
    | Terminating
    | StopRequested
    | Exited
    | BackoffOver
    | Idle
    | ListenFailed
    | Crashed
)


# ----- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AwaitDependencies:
    pass


@dataclass(frozen=True)
class Spawn:
    """Secure the port and start the process."""


@dataclass(frozen=True)
class Terminate:
    """Stop signal to the process group, SIGKILL after the grace period."""

    reason: str


@dataclass(frozen=True)
class Restart:
    """Wait `delay` (on the clock), then report `BackoffOver`. `attempt` 0 is the extra
    port resolution, which is not a restart and not announced as one."""

    delay: float
    attempt: int = 0
    reason: str = ""


Action = AwaitDependencies | Spawn | Terminate | Restart


@dataclass(frozen=True)
class Transition:
    state: State
    reason: str = ""
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    life: Life
    transitions: tuple[Transition, ...] = ()
    actions: tuple[Action, ...] = ()


# ----- the step --------------------------------------------------------------------------


def step(life: Life, event: LifeEvent, now: float, rules: Rules) -> Step:
    """What `event` does to a service in `life`: its new life, states, and actions.

    An event that means nothing in the current state (a health verdict while stopping,
    a start while running) changes nothing.
    """
    state = life.state
    match event:
        case Start() if state in SETTLED:
            waiting = "waiting for dependencies" if rules.has_dependencies else ""
            fresh = Life(State.PENDING, restarts_total=life.restarts_total)
            return _step(life, fresh, [Transition(State.PENDING, waiting)], [AwaitDependencies()])
        case DependenciesMet() if state is State.PENDING:
            return Step(life, (), (Spawn(),))
        case DependencyBroken(reason) if state is State.PENDING:
            return _step(life, replace(life, state=State.FAILED), [Transition(State.FAILED, reason)])
        case Spawned(port) if state in (State.PENDING, State.BACKOFF):
            moves = [Transition(State.STARTING, data={"port": port})]
            if not rules.healthcheck:
                moves.append(Transition(State.RUNNING))
            new = replace(life, state=moves[-1].state, started_at=now, port=port, ending=None)
            return _step(life, new, moves)
        case SpawnFailed(reason) if state in (State.PENDING, State.BACKOFF):
            return _step(life, replace(life, state=State.FAILED), [Transition(State.FAILED, reason)])
        case HealthVerdict(healthy, output, waiting_for) if state in (
            State.STARTING,
            State.HEALTHY,
            State.UNHEALTHY,
        ):
            return _health(life, healthy, output, rules, waiting_for)
        case Terminating(reason) if state in ALIVE:
            return _step(life, replace(life, state=State.STOPPING), [Transition(State.STOPPING, reason)])
        case StopRequested(reason):
            return _stop(life, reason)
        case Exited(code, port_taken, waiting_for) if state in ALIVE or state is State.STOPPING:
            return _exited(life, code, port_taken, now, rules, waiting_for)
        case BackoffOver() if state is State.BACKOFF:
            return Step(life, (), (Spawn(),))
        case Idle(reason) if state in SETTLED and state is not rules.waits_in:
            waiting = rules.waits_in
            return _step(life, replace(life, state=waiting), [Transition(waiting, reason)])
        case ListenFailed(reason) if state in SETTLED or state is State.PENDING:
            moves = [] if state is State.PENDING else [Transition(State.PENDING, "listening on its port")]
            moves.append(Transition(State.FAILED, reason))
            return _step(life, replace(life, state=State.FAILED, ending=None), moves)
        case Crashed(reason) if State.FAILED in ALLOWED[state]:
            return _step(
                life, replace(life, state=State.FAILED, ending=None), [Transition(State.FAILED, reason)]
            )
    return Step(life)


def _step(old: Life, new: Life, moves: list[Transition], actions: list[Action] | None = None) -> Step:
    state = old.state
    for move in moves:
        check_transition(state, move.state)
        state = move.state
    assert state is new.state
    return Step(new, tuple(moves), tuple(actions or ()))


def _health(life: Life, healthy: bool, output: str, rules: Rules, waiting_for: str = "") -> Step:
    new_state = State.HEALTHY if healthy else State.UNHEALTHY
    moves = [Transition(new_state, output)] if life.state is not new_state else []
    if healthy or rules.restart is RestartPolicy.NO or life.ending is not None or waiting_for:
        # `restart: no`: an unhealthy service keeps running, and may recover. So does one
        # whose dependency is down: a restart cannot bring the dependency back.
        return _step(life, replace(life, state=new_state), moves)
    # It stays `unhealthy` (visible) until the runner begins to end it (`Terminating`).
    new = replace(life, state=new_state, ending=Ending.UNHEALTHY)
    return _step(life, new, moves, [Terminate("unhealthy")])


def _stop(life: Life, reason: str) -> Step:
    state = life.state
    if state is State.BACKOFF:
        return _step(
            life, replace(life, state=State.STOPPED), [Transition(State.STOPPED, "stopped during backoff")]
        )
    if state in (State.PENDING, State.IDLE, State.SCHEDULED):
        return _step(life, replace(life, state=State.STOPPED), [Transition(State.STOPPED, reason)])
    if state in ALIVE:
        new = replace(life, state=State.STOPPING, ending=Ending.STOP)
        return _step(life, new, [Transition(State.STOPPING, "stop requested")], [Terminate("stop requested")])
    if state is State.STOPPING:
        # Already being ended (it was unhealthy): the end is now a stop, not a restart.
        return Step(replace(life, ending=Ending.STOP))
    return Step(life)


def _exited(
    life: Life, code: int | None, port_taken: bool, now: float, rules: Rules, waiting_for: str = ""
) -> Step:
    if life.ending is Ending.STOP:
        moves = [] if life.state is State.STOPPING else [Transition(State.STOPPING, "stop requested")]
        moves.append(Transition(State.STOPPED, f"stopped (exit code {code})"))
        return _step(life, replace(life, state=State.STOPPED, ending=None), moves)
    unhealthy = life.ending is Ending.UNHEALTHY
    if port_taken and not life.resolved_again and not unhealthy:
        reason = f"port {life.port} was taken before {rules.name} could bind it; resolving again"
        new = replace(life, state=State.BACKOFF, resolved_again=True, ending=None)
        return _step(life, new, [Transition(State.BACKOFF, reason, {"delay": 0.0})], [Restart(0.0)])
    early = life.started_at is not None and now - life.started_at < PERMANENT_WINDOW
    if code in PERMANENT_EXITS and early and rules.shell and not unhealthy:
        reason = f"{PERMANENT_EXITS[code]} (exit code {code}); not restarted, it cannot help"
        return _step(life, replace(life, state=State.FAILED, ending=None), [Transition(State.FAILED, reason)])
    tracker = RestartTracker(life.restarts, life.started_at)
    decision = tracker.decide(
        policy=rules.restart,
        exit_code=code,
        unhealthy=unhealthy,
        max_restarts=rules.max_restarts,
        backoff=rules.backoff,
        now=now,
    )
    if waiting_for and decision.verdict in (Verdict.RESTART, Verdict.FAILED):
        # A dependency is down: the crash is its, not ours. No budget is spent; the
        # service waits for the dependency and starts again when it holds.
        new = replace(life, state=State.PENDING, ending=None)
        return _step(
            life, new, [Transition(State.PENDING, f"waiting for {waiting_for}")], [AwaitDependencies()]
        )
    ended = replace(life, restarts=tracker.restarts, ending=None)
    if decision.verdict is Verdict.RESTART:
        reason = f"{decision.reason}; restart {tracker.restarts} in {decision.delay:g}s"
        new = replace(ended, state=State.BACKOFF, restarts_total=life.restarts_total + 1)
        action = Restart(decision.delay, tracker.restarts, decision.reason)
        return _step(life, new, [Transition(State.BACKOFF, reason, {"delay": decision.delay})], [action])
    final = {Verdict.COMPLETED: State.COMPLETED, Verdict.EXITED: State.EXITED, Verdict.FAILED: State.FAILED}
    target = final[decision.verdict]
    return _step(life, replace(ended, state=target), [Transition(target, decision.reason)])


# ----- decisions around the step ---------------------------------------------------------


def may_have_lost_port(
    life: Life, code: int | None, *, ever_healthy: bool, inherited: bool, now: float
) -> bool:
    """Is it worth looking whether somebody else took the port of a process that just
    ended? Only for an early failure of a process that never answered its health check
    and did not receive its socket from us."""
    if life.port is None or code == 0 or ever_healthy or inherited or life.ending is not None:
        return False
    if life.resolved_again:
        return False
    return life.started_at is None or now - life.started_at <= PORT_RACE_WINDOW
