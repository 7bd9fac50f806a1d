"""The pure lifecycle step, the dependency gate and the supervisor's plans: no process, no clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackvisor.config import diff_configs, load_config
from stackvisor.config.diff import followers
from stackvisor.config.schema import Backoff, Condition, Dependency, RestartPolicy
from stackvisor.runtime import plans
from stackvisor.runtime.dependencies import DependencyFacts, condition_met, dependencies_verdict, outage
from stackvisor.runtime.lifecycle import (
    AwaitDependencies,
    BackoffOver,
    Crashed,
    DependenciesMet,
    DependencyBroken,
    Ending,
    Exited,
    HealthVerdict,
    Life,
    ListenFailed,
    Restart,
    Rules,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    StopRequested,
    Terminate,
    Terminating,
    may_have_lost_port,
    step,
)
from stackvisor.runtime.states import State

RULES = Rules(name="api", backoff=Backoff(initial=0.5, max=30.0), healthcheck=True, has_dependencies=True)


def states(result) -> list[str]:
    return [str(t.state) for t in result.transitions]


def run(events, rules: Rules = RULES, life: Life | None = None, now: float = 0.0):
    life = life or Life()
    seen: list[str] = []
    actions = ()
    for event in events:
        result = step(life, event, now, rules)
        life, actions = result.life, result.actions
        seen += states(result)
    return life, seen, actions


def test_transition_stopped_to_pending_waits_for_dependencies() -> None:
    result = step(Life(), Start(), 0.0, RULES)
    assert states(result) == ["pending"]
    assert result.transitions[0].reason == "waiting for dependencies"
    assert result.actions == (AwaitDependencies(),)


def test_transition_pending_to_starting_to_running_without_healthcheck() -> None:
    rules = Rules(name="web")
    life, seen, _ = run([Start(), DependenciesMet(), Spawned(8000)], rules, now=5.0)
    assert seen == ["pending", "starting", "running"]
    assert life.started_at == 5.0 and life.port == 8000


def test_transition_pending_to_failed_when_a_dependency_breaks() -> None:
    _, seen, _ = run([Start(), DependencyBroken("db failed")])
    assert seen == ["pending", "failed"]


def test_transition_pending_to_failed_when_the_spawn_fails() -> None:
    _, seen, _ = run([Start(), DependenciesMet(), SpawnFailed("no such program")])
    assert seen == ["pending", "failed"]


def test_transition_starting_to_healthy_and_back_to_unhealthy_then_stopping() -> None:
    life, seen, _ = run([Start(), DependenciesMet(), Spawned(1), HealthVerdict(True, "ok")])
    assert seen[-1] == "healthy"
    result = step(life, HealthVerdict(False, "503"), 0.0, RULES)
    # Unhealthy is a state people see; the runner then begins the termination.
    assert states(result) == ["unhealthy"]
    assert result.actions == (Terminate("unhealthy"),)
    assert states(step(result.life, Terminating("unhealthy"), 0.0, RULES)) == ["stopping"]


def test_unhealthy_with_restart_no_keeps_running_and_may_recover() -> None:
    rules = Rules(name="api", restart=RestartPolicy.NO, healthcheck=True)
    life, seen, actions = run([Start(), DependenciesMet(), Spawned(1), HealthVerdict(False, "down")], rules)
    assert seen[-1] == "unhealthy" and actions == ()
    assert states(step(life, HealthVerdict(True, "up"), 0.0, rules)) == ["healthy"]


def test_transition_running_to_backoff_with_a_doubling_delay_then_failed() -> None:
    rules = Rules(name="api", max_restarts=2, backoff=Backoff(initial=0.5, max=30.0))
    life, _, _ = run([Start(), DependenciesMet(), Spawned(None)], rules)
    delays = []
    for _ in range(2):
        result = step(life, Exited(1), 1.0, rules)
        assert states(result) == ["backoff"]
        (restart,) = result.actions
        assert isinstance(restart, Restart)
        delays.append(restart.delay)
        life = step(result.life, BackoffOver(), 1.0, rules).life
        life = step(life, Spawned(None), 1.0, rules).life
    assert delays == [0.5, 1.0]
    result = step(life, Exited(1), 1.0, rules)
    assert states(result) == ["failed"]
    assert result.transitions[0].reason == "exited with code 1; gave up after 2 restarts"
    assert result.life.restarts_total == 2


def test_backoff_over_asks_for_a_spawn() -> None:
    life = Life(State.BACKOFF)
    assert step(life, BackoffOver(), 0.0, RULES).actions == (Spawn(),)


def test_a_long_run_earns_a_fresh_restart_budget() -> None:
    rules = Rules(name="api", max_restarts=1, backoff=Backoff(reset_after=10.0))
    life = Life(State.RUNNING, restarts=1, started_at=0.0)
    assert states(step(life, Exited(1), 5.0, rules)) == ["failed"]
    assert states(step(life, Exited(1), 15.0, rules)) == ["backoff"]


def test_exit_zero_completes_a_one_shot() -> None:
    life = Life(State.RUNNING, started_at=0.0)
    assert states(step(life, Exited(0), 1.0, Rules(name="job"))) == ["completed"]
    assert states(step(life, Exited(3), 1.0, Rules(name="job", restart=RestartPolicy.NO))) == ["exited"]


def test_stop_while_alive_ends_the_process_and_lands_in_stopped() -> None:
    life = Life(State.HEALTHY, started_at=0.0)
    result = step(life, StopRequested(), 0.0, RULES)
    assert states(result) == ["stopping"] and result.actions == (Terminate("stop requested"),)
    after = step(result.life, Exited(-15), 0.0, RULES)
    assert states(after) == ["stopped"]
    assert after.transitions[0].reason == "stopped (exit code -15)"


def test_stop_while_ending_an_unhealthy_process_is_a_stop_not_a_restart() -> None:
    life = Life(State.STOPPING, ending=Ending.UNHEALTHY, started_at=0.0)
    during = step(life, StopRequested(), 0.0, RULES)
    assert during.transitions == () and during.life.ending is Ending.STOP
    assert states(step(during.life, Exited(-15), 0.0, RULES)) == ["stopped"]


@pytest.mark.parametrize(
    ("state", "reason"),
    [(State.PENDING, "stopped on request"), (State.BACKOFF, "stopped during backoff")],
)
def test_stop_while_waiting_is_stopped_at_once(state: State, reason: str) -> None:
    result = step(Life(state), StopRequested("stopped on request"), 0.0, RULES)
    assert states(result) == ["stopped"] and result.transitions[0].reason == reason
    assert result.actions == ()


def test_a_taken_port_is_resolved_once_more_without_counting_a_restart() -> None:
    life = Life(State.STARTING, started_at=0.0, port=8000)
    result = step(life, Exited(1, port_taken=True), 0.5, RULES)
    assert states(result) == ["backoff"]
    assert "port 8000 was taken before api could bind it" in result.transitions[0].reason
    assert result.actions == (Restart(0.0),) and result.life.restarts == 0
    again = step(step(result.life, BackoffOver(), 0.5, RULES).life, Spawned(8000), 0.5, RULES).life
    # The second time it is an ordinary failure.
    assert step(again, Exited(1, port_taken=True), 0.6, RULES).life.restarts == 1


def test_events_that_mean_nothing_in_a_state_change_nothing() -> None:
    for life, event in [
        (Life(State.HEALTHY), Start()),
        (Life(State.STOPPED), HealthVerdict(True, "")),
        (Life(State.STOPPED), Exited(0)),
        (Life(State.COMPLETED), StopRequested()),
        (Life(State.RUNNING), DependenciesMet()),
    ]:
        result = step(life, event, 0.0, RULES)
        assert result.life == life and result.transitions == () and result.actions == ()


def test_a_crash_of_the_runner_fails_the_service() -> None:
    assert states(step(Life(State.RUNNING), Crashed("bug"), 0.0, RULES)) == ["failed"]
    assert step(Life(State.FAILED), Crashed("bug"), 0.0, RULES).transitions == ()


def test_a_port_the_supervisor_cannot_listen_on_fails_a_waiting_service() -> None:
    """Idle or stopped, it passes through `pending` (it was to start), as a start that
    cannot bind does; nothing alive is failed so (the activation stops it first)."""
    assert states(step(Life(State.IDLE), ListenFailed("port 80 taken"), 0.0, RULES)) == ["pending", "failed"]
    assert states(step(Life(State.PENDING), ListenFailed("port 80 taken"), 0.0, RULES)) == ["failed"]
    assert step(Life(State.RUNNING), ListenFailed("port 80 taken"), 0.0, RULES).transitions == ()


def test_may_have_lost_port_only_for_an_early_failure() -> None:
    early = Life(State.STARTING, started_at=0.0, port=8000)
    assert may_have_lost_port(early, 1, ever_healthy=False, inherited=False, now=1.0)
    assert not may_have_lost_port(early, 0, ever_healthy=False, inherited=False, now=1.0)
    assert not may_have_lost_port(early, 1, ever_healthy=True, inherited=False, now=1.0)
    assert not may_have_lost_port(early, 1, ever_healthy=False, inherited=True, now=1.0)
    assert not may_have_lost_port(early, 1, ever_healthy=False, inherited=False, now=60.0)
    unknown_port = Life(State.STARTING, port=None)
    assert not may_have_lost_port(unknown_port, 1, ever_healthy=False, inherited=False, now=0.0)


# ----- dependency conditions ------------------------------------------------------------


def facts(
    state: State, spawned: bool = False, restart: RestartPolicy = RestartPolicy.ON_FAILURE
) -> DependencyFacts:
    return DependencyFacts(state, spawned, restart, reason="why")


@pytest.mark.parametrize(
    ("dependency", "condition", "expected"),
    [
        (facts(State.STARTING, spawned=True), Condition.STARTED, True),
        (facts(State.PENDING), Condition.STARTED, None),
        (facts(State.FAILED), Condition.STARTED, False),
        (facts(State.HEALTHY, True), Condition.HEALTHY, True),
        (facts(State.STARTING, True), Condition.HEALTHY, None),
        (facts(State.EXITED, True), Condition.HEALTHY, False),
        (facts(State.UNHEALTHY, True), Condition.HEALTHY, None),
        (facts(State.UNHEALTHY, True, RestartPolicy.NO), Condition.HEALTHY, False),
        (facts(State.COMPLETED, True), Condition.COMPLETED, True),
        (facts(State.RUNNING, True), Condition.COMPLETED, None),
        (facts(State.EXITED, True), Condition.COMPLETED, False),
    ],
)
def test_condition_met(dependency: DependencyFacts, condition: Condition, expected: bool | None) -> None:
    assert condition_met(dependency, condition) is expected


def test_all_dependencies_together() -> None:
    deps = {"db": Dependency(condition=Condition.HEALTHY), "cache": Dependency()}
    known = {"db": facts(State.HEALTHY, True), "cache": facts(State.PENDING)}
    assert dependencies_verdict(deps, known.get).ready is None
    known["cache"] = facts(State.RUNNING, True)
    assert dependencies_verdict(deps, known.get).ready is True
    known["db"] = facts(State.FAILED, True)
    verdict = dependencies_verdict(deps, known.get)
    assert verdict.ready is False
    assert verdict.reason == "dependency db cannot meet service_healthy: db is failed (why)"


def test_an_optional_dependency_does_not_hold_the_dependent_back() -> None:
    deps = {"db": Dependency(condition=Condition.HEALTHY, required=False)}
    assert dependencies_verdict(deps, {"db": facts(State.STARTING, True)}.get).ready is None
    broken = dependencies_verdict(deps, {"db": facts(State.FAILED, True)}.get)
    assert broken.ready is True and broken.skipped == ("db",)
    absent = dependencies_verdict(deps, {}.get)
    assert absent.ready is True and absent.skipped == ("db",)
    required = {"db": Dependency(condition=Condition.HEALTHY)}
    assert dependencies_verdict(required, {}.get).ready is False


# ----- plans ------------------------------------------------------------------------------


STACK = """
services:
  db: {command: x}
  api: {command: x, depends_on: {db: {condition: service_started, restart: true}}}
  web: {command: x, depends_on: {api: {condition: service_started, restart: true}}}
  worker: {command: x, depends_on: [db]}
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "services.yaml"
    path.write_text(text)
    return load_config(path)


def test_restart_targets_follow_restart_true_only_when_running(tmp_path: Path) -> None:
    config = load(tmp_path, STACK)
    assert followers(config, ["db"]) == {"db", "api", "web"}
    assert plans.restart_targets(config, ["db"], running={"db", "api", "worker"}) == {"db", "api"}
    assert plans.restart_targets(config, ["web"], running=set()) == {"web"}


def test_selection_is_the_named_services_and_what_they_need(tmp_path: Path) -> None:
    config = load(tmp_path, STACK)
    assert plans.selection(config, []) == {"db", "api", "web", "worker"}
    assert plans.selection(config, ["api"]) == {"db", "api"}
    assert plans.selection(config, ["gone"]) == set()


def test_plan_reload(tmp_path: Path) -> None:
    old = load(tmp_path, STACK)
    new = load(
        tmp_path,
        STACK.replace("db: {command: x}", "db: {command: y}").replace(
            "  worker: {command: x, depends_on: [db]}\n", ""
        )
        + "  extra: {command: x}\n",
    )
    diff = diff_configs(old, new)
    plan = plans.plan_reload(
        old, new, diff, requested=[], running={"db", "api", "worker"}, stopped_by_hand={"web"}
    )
    assert plan.restarts == ("api", "db", "web")
    assert plan.stop == ("worker", "api", "db")
    # web was stopped by hand: it stays stopped; the added service starts.
    assert plan.start == ("db", "api", "extra")
    assert plan.restarted == ["api", "db", "web"]
    only_api = plans.plan_reload(old, new, diff, requested=["api"], running=set(), stopped_by_hand=set())
    assert only_api.start == ("db", "api") and only_api.selection == frozenset({"db", "api"})


def test_a_reload_keeps_a_held_socket_only_for_the_same_port_and_a_new_start(tmp_path: Path) -> None:
    base = (
        "services:\n"
        "  web: {command: x, port: 8001, socket: inherit, env: {V: '1'}}\n"
        "  api: {command: x, port: 8002, socket: inherit, env: {V: '1'}, profiles: [full]}\n"
        "  moved: {command: x, port: 8003, socket: inherit, env: {V: '1'}}\n"
        "  proxied: {command: x, port: 8004, socket: proxy, env: {V: '1'}}\n"
    )
    old = load(tmp_path, base)
    edited = base.replace("'1'", "'2'").replace("8003", "8013")
    new = load(tmp_path, edited.replace("profiles: [full]", "profiles: [full], depends_on: [web]"))
    everything = {"web", "api", "moved", "proxied"}
    plan = plans.plan_reload(
        old,
        new,
        diff_configs(old, new),
        requested=[],
        running=everything,
        stopped_by_hand=set(),
        profiles=["full"],
    )
    assert set(plan.start) == everything
    assert plan.keep_sockets == {"web", "api", "proxied"}  # moved: another port
    # Out of the selection now (its profile is not active): it does not start again, the socket goes.
    dropped = plans.plan_reload(
        old, new, diff_configs(old, new), requested=[], running=everything, stopped_by_hand=set()
    )
    assert "api" in dropped.stop and "api" not in dropped.start
    assert dropped.keep_sockets == {"web", "proxied"}


def test_a_removed_service_hands_its_socket_to_the_added_one_on_its_port_and_mode(tmp_path: Path) -> None:
    old = load(
        tmp_path,
        "services:\n"
        "  api: {command: x, port: 8001, socket: inherit, start: on_demand}\n"
        "  pool: {command: x, port: 8101, socket: proxy, replicas: 2}\n"
        "  gone: {command: x, port: 8201, socket: inherit}\n"
        "  plain: {command: x, port: 8301}\n",
    )
    new = load(
        tmp_path,
        "services:\n"
        "  web: {command: x, port: 8001, socket: inherit, start: on_demand}\n"  # renamed
        "  pool: {command: x, port: 8101, socket: proxy}\n"  # two copies made one
        "  other: {command: x, port: 8201, socket: proxy}\n"  # another mode: a new socket
        "  plain2: {command: x, port: 8301}\n",  # no socket of ours to hand
    )
    plan = plans.plan_reload(
        old, new, diff_configs(old, new), requested=[], running={"pool.0", "pool.1"}, stopped_by_hand=set()
    )
    assert dict(plan.heirs) == {"api": "web", "pool.0": "pool"}
    assert {"api", "pool.0"} <= plan.keep_sockets and "gone" not in plan.keep_sockets
    only_pool = plans.plan_reload(
        old, new, diff_configs(old, new), requested=["pool"], running=set(), stopped_by_hand=set()
    )
    assert dict(only_pool.heirs) == {"pool.0": "pool"}  # web is not selected: nobody takes 8001


@pytest.mark.parametrize(("code", "what"), [(127, "command not found"), (126, "command cannot be executed")])
def test_a_program_the_shell_cannot_run_fails_at_once(code: int, what: str) -> None:
    life = Life(State.RUNNING, started_at=0.0)
    result = step(life, Exited(code), 0.1, Rules(name="api", restart=RestartPolicy.ALWAYS, shell=True))
    assert states(result) == ["failed"] and result.actions == ()
    assert result.transitions[0].reason.startswith(f"{what} (exit code {code})")
    # Much later the same code is an ordinary failure: restarted.
    assert states(step(life, Exited(code), 60.0, Rules(name="api", shell=True))) == ["backoff"]
    # A program run without a shell (a list command) was found and ran: its 127 is its own.
    assert states(step(life, Exited(code), 0.1, Rules(name="api"))) == ["backoff"]


def test_a_crash_while_a_dependency_is_down_waits_for_it_and_spends_nothing() -> None:
    rules = Rules(name="worker", max_restarts=1, has_dependencies=True)
    life = Life(State.RUNNING, started_at=0.0, restarts=1)  # its budget is used up
    result = step(life, Exited(1, waiting_for="db: service_healthy (db is stopped)"), 1.0, rules)
    assert states(result) == ["pending"]
    assert result.transitions[0].reason == "waiting for db: service_healthy (db is stopped)"
    assert result.actions == (AwaitDependencies(),) and result.life.restarts == 1
    assert step(result.life, DependenciesMet(), 2.0, rules).actions == (Spawn(),)


def test_an_unhealthy_turn_while_a_dependency_is_down_is_not_restarted() -> None:
    life = Life(State.HEALTHY, started_at=0.0)
    result = step(life, HealthVerdict(False, "503", waiting_for="db: service_healthy"), 1.0, RULES)
    assert states(result) == ["unhealthy"] and result.actions == ()


def test_an_outage_is_a_required_dependency_that_does_not_hold_now() -> None:
    deps = {"db": Dependency(condition=Condition.HEALTHY), "cache": Dependency(required=False)}
    known = {"db": facts(State.HEALTHY, True), "cache": facts(State.STOPPED, True)}
    assert outage(deps, known.get) == ""  # an optional one being down is no outage
    known["db"] = facts(State.BACKOFF, True)
    assert outage(deps, known.get) == "db: service_healthy (db is backoff)"
    started = {"job": Dependency()}
    assert outage(started, {"job": facts(State.COMPLETED, True)}.get) == ""  # a one-shot that is done
    assert outage(started, {"job": facts(State.STOPPED, True)}.get) == "job: service_started (job is stopped)"
