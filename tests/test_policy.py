"""Restart and health decisions on a fake clock, and the state table."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackvisor.config.schema import Backoff, RestartPolicy
from stackvisor.runtime.policy import Health, HealthTracker, RestartTracker, Verdict, backoff_delay
from stackvisor.runtime.states import ALLOWED, State, TransitionError, check_transition

BACKOFF = Backoff(initial=0.5, max=30, reset_after=10)


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)],
)
def test_backoff_doubles_and_caps(attempt: int, delay: float) -> None:
    assert backoff_delay(attempt, BACKOFF) == delay


@pytest.mark.parametrize(
    ("policy", "code", "unhealthy", "verdict"),
    [
        (RestartPolicy.ON_FAILURE, 0, False, Verdict.COMPLETED),
        (RestartPolicy.ON_FAILURE, 1, False, Verdict.RESTART),
        (RestartPolicy.ON_FAILURE, -9, False, Verdict.RESTART),
        (RestartPolicy.ON_FAILURE, 0, True, Verdict.RESTART),
        (RestartPolicy.NO, 1, False, Verdict.EXITED),
        (RestartPolicy.NO, 0, False, Verdict.COMPLETED),
        (RestartPolicy.ALWAYS, 0, False, Verdict.RESTART),
        (RestartPolicy.UNLESS_STOPPED, 0, False, Verdict.RESTART),
    ],
)
def test_exit_verdicts(policy: RestartPolicy, code: int, unhealthy: bool, verdict: Verdict) -> None:
    tracker = RestartTracker()
    tracker.started(0.0)
    decision = tracker.decide(
        policy=policy, exit_code=code, unhealthy=unhealthy, max_restarts=5, backoff=BACKOFF, now=1.0
    )
    assert decision.verdict is verdict


def test_crash_loop_gives_up_after_max_restarts() -> None:
    tracker = RestartTracker()
    now, delays = 0.0, []
    for _ in range(4):
        tracker.started(now)
        now += 0.1  # crashes at once
        decision = tracker.decide(
            policy=RestartPolicy.ON_FAILURE,
            exit_code=1,
            unhealthy=False,
            max_restarts=3,
            backoff=BACKOFF,
            now=now,
        )
        if decision.verdict is Verdict.RESTART:
            delays.append(decision.delay)
            now += decision.delay
    assert delays == [0.5, 1.0, 2.0]
    assert decision.verdict is Verdict.FAILED
    assert "gave up after 3 restarts" in decision.reason


def test_staying_up_resets_the_restart_budget() -> None:
    tracker = RestartTracker()
    kw = {
        "policy": RestartPolicy.ON_FAILURE,
        "exit_code": 1,
        "unhealthy": False,
        "max_restarts": 2,
        "backoff": BACKOFF,
    }
    tracker.started(0.0)
    assert tracker.decide(now=1.0, **kw).delay == 0.5
    tracker.started(2.0)
    assert tracker.decide(now=3.0, **kw).delay == 1.0
    tracker.started(4.0)
    decision = tracker.decide(now=100.0, **kw)  # it stayed up for 96 s: a fresh budget
    assert decision.verdict is Verdict.RESTART and decision.delay == 0.0  # and no wait: no crash loop
    tracker.started(100.0)
    assert tracker.decide(now=101.0, **kw).delay == 1.0  # the loop again: the second restart's


def test_health_failures_inside_start_period_do_not_count() -> None:
    tracker = HealthTracker(retries=2, start_period=5.0, started_at=0.0)
    assert tracker.record(False, 1.0) is None
    assert tracker.record(False, 2.0) is None
    assert tracker.record(False, 3.0) is None
    assert tracker.record(False, 6.0) is None
    assert tracker.record(False, 7.0) is Health.UNHEALTHY


def test_health_success_in_start_period_counts_and_recovery_is_reported() -> None:
    tracker = HealthTracker(retries=3, start_period=5.0, started_at=0.0)
    assert tracker.record(True, 1.0) is Health.HEALTHY
    assert tracker.record(True, 2.0) is None
    assert [tracker.record(False, t) for t in (6.0, 7.0, 8.0)] == [None, None, Health.UNHEALTHY]
    assert tracker.record(False, 9.0) is None
    assert tracker.record(True, 10.0) is Health.HEALTHY


def test_a_failure_streak_is_broken_by_one_success() -> None:
    tracker = HealthTracker(retries=2, start_period=0.0, started_at=0.0)
    tracker.record(True, 0.0)
    assert tracker.record(False, 1.0) is None
    assert tracker.record(True, 2.0) is None
    assert tracker.record(False, 3.0) is None
    assert tracker.record(False, 4.0) is Health.UNHEALTHY


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.PENDING),
        (State.PENDING, State.STARTING),
        (State.STARTING, State.HEALTHY),
        (State.HEALTHY, State.UNHEALTHY),
        (State.UNHEALTHY, State.STOPPING),
        (State.STOPPING, State.BACKOFF),
        (State.BACKOFF, State.STARTING),
        (State.RUNNING, State.COMPLETED),
        (State.FAILED, State.PENDING),
    ],
)
def test_legal_transitions(old: State, new: State) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (State.STOPPED, State.HEALTHY),
        (State.PENDING, State.RUNNING),
        (State.COMPLETED, State.RUNNING),
        (State.STOPPING, State.RUNNING),
        (State.BACKOFF, State.HEALTHY),
    ],
)
def test_illegal_transitions(old: State, new: State) -> None:
    with pytest.raises(TransitionError):
        check_transition(old, new)


def test_every_state_has_a_way_out() -> None:
    assert set(ALLOWED) == set(State)
    assert all(ALLOWED[s] for s in State)


def test_fast_start_probing_counts_failures_once_per_interval() -> None:
    tracker = HealthTracker(retries=2, start_period=0.0, started_at=0.0, interval=1.0)
    # probed every 50 ms before the first success: only one failure per second counts
    assert [tracker.record(False, t / 20) for t in range(1, 20)] == [None] * 19
    assert tracker.record(False, 1.0) is None
    assert tracker.record(False, 1.5) is None
    assert tracker.record(False, 2.0) is Health.UNHEALTHY


def test_a_quick_success_after_fast_failures_is_healthy() -> None:
    tracker = HealthTracker(retries=1, start_period=0.0, started_at=0.0, interval=1.0)
    assert tracker.record(False, 0.05) is None
    assert tracker.record(True, 0.10) is Health.HEALTHY


def test_the_history_is_pruned_but_live_children_are_kept(tmp_path: Path) -> None:
    from stackvisor.runtime.events import Event
    from stackvisor.runtime.state import StateDB

    db = StateDB.open(tmp_path / "state.db", 1)
    live = db.child_started("api", 10, 10, 1.0, None, "m/api/1")
    for i in range(30):
        row = db.child_started("job", 100 + i, 100 + i, 2.0 + i, None, f"m/job/{i}")
        db.child_exited(row, 0)
    for i in range(50):
        db.record_event(Event(i, float(i), "state", "api", {"n": i}))
    db.prune(keep_events=10, keep_children=5)
    assert [e["data"]["n"] for e in db.events()] == list(range(40, 50))
    assert [r.id for r in db.live_children()] == [live]
    assert len(db.known_children()) == 1 + 5
    db.close()


@pytest.mark.parametrize("policy", [RestartPolicy.ALWAYS, RestartPolicy.UNLESS_STOPPED])
def test_always_never_gives_up_and_its_backoff_stays_capped(policy: RestartPolicy) -> None:
    tracker = RestartTracker()
    decisions = [
        tracker.decide(policy=policy, exit_code=1, unhealthy=False, max_restarts=3, backoff=BACKOFF, now=1.0)
        for _ in range(50)
    ]
    assert {d.verdict for d in decisions} == {Verdict.RESTART}
    assert decisions[-1].delay == BACKOFF.max


def test_on_failure_with_max_restarts_zero_never_gives_up() -> None:
    tracker = RestartTracker()
    decisions = [
        tracker.decide(
            policy=RestartPolicy.ON_FAILURE,
            exit_code=1,
            unhealthy=False,
            max_restarts=0,
            backoff=BACKOFF,
            now=1.0,
        )
        for _ in range(50)
    ]
    assert {d.verdict for d in decisions} == {Verdict.RESTART}
