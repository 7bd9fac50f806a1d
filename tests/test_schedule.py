"""Scheduled services. When to tick and whether to skip are pure (`runtime.schedule`):
tables of cases on plain times, cron across daylight saving changes in named zones. The
task that carries them out is driven by a fake clock; then real stacks with a one-second
interval, real runs, their history, a skipped tick, a reload and a stop by hand."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psutil
import pytest

from stackvisor.config import ConfigError, load_config
from stackvisor.config.importers import from_process_compose
from stackvisor.config.schema import RestartPolicy, Service
from stackvisor.config.timetable import Schedule, next_time
from stackvisor.runtime.clock import FakeClock
from stackvisor.runtime.events import EventBus, StackChanged
from stackvisor.runtime.lifecycle import (
    DependenciesMet,
    Exited,
    Idle,
    Life,
    Rules,
    Spawned,
    Start,
    StopRequested,
    step,
)
from stackvisor.runtime.schedule import Moment, Timetable, at_tick, next_run, next_tick
from stackvisor.runtime.scheduling import Scheduler
from stackvisor.runtime.states import SETTLED, State
from tests.conftest import (
    cli,
    client,
    running_stack,
    save,
    state_events,
    until,
    until_state,
    wait_for,
    write_stack,
)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


# ----- intervals, on the monotonic clock ----------------------------------------------------


def every(seconds: float, *, run_on_start: bool = False, began: float = 1000.0) -> Timetable:
    return Timetable(Moment(began, 0.0), interval=seconds, run_on_start=run_on_start)


def at(clock: float, wall: float = 0.0) -> Moment:
    return Moment(clock, wall)


@pytest.mark.parametrize(
    ("run_on_start", "last", "now", "left"),
    [
        (False, None, 1000.0, 60.0),  # the first tick one interval after the start
        (False, None, 1059.5, 0.5),
        (False, None, 1061.0, 0.0),  # late: due at once
        (True, None, 1000.0, 0.0),  # run_on_start: at once
        (True, 1000.0, 1000.0, 60.0),  # ...then on the grid
        (False, 1060.0, 1060.0, 60.0),
        (False, 1060.4, 1060.4, 59.6),  # a late tick keeps the grid: 1120, not 1120.4
        (False, 1060.0, 1700.0, 0.0),  # ticks missed (the machine slept): one is due
        (False, 1700.0, 1700.0, 20.0),  # ...and only one: the next is the grid's next
    ],
)
def test_interval_ticks(run_on_start: bool, last: float | None, now: float, left: float) -> None:
    table = every(60, run_on_start=run_on_start)
    if last is not None:
        table = table.ticked(at(last))
    assert next_tick(table, at(now)) == pytest.approx(left)


@pytest.mark.parametrize("interval", [0.1, 0.3, 1.0, 1.7, 3.3, 86400 / 7])
def test_a_tick_on_the_grid_never_comes_twice(interval: float) -> None:
    """Rounding: after a tick taken exactly when it was due, the next is one interval on."""
    table = every(interval, began=1000.1)
    now = at(1000.1)
    for _ in range(200):
        now = at(now.clock + next_tick(table, now))
        table = table.ticked(now)
        assert next_tick(table, now) == pytest.approx(interval)


def test_an_interval_does_not_follow_the_wall_clock() -> None:
    table = every(60).ticked(Moment(1060.0, utc(2025, 1, 1)))
    stepped = Moment(1070.0, utc(2025, 1, 1) + 3600)  # NTP stepped the wall clock an hour on
    assert next_tick(table, stepped) == pytest.approx(50.0)
    assert next_run(table, stepped) == pytest.approx(stepped.wall + 50.0)


# ----- cron, on the clocks of a zone --------------------------------------------------------


def cron(expression: str, zone: Any, began: float, *, run_on_start: bool = False) -> Timetable:
    return Timetable(Moment(0.0, began), cron=expression, zone=zone, run_on_start=run_on_start)


def ticks(table: Timetable, count: int) -> list[str]:
    """The next `count` ticks, each taken when it was due."""
    out = []
    now = table.began
    for _ in range(count):
        due = now.wall + next_tick(table, now)
        now = Moment(now.clock + (due - now.wall), due)
        table = table.ticked(now)
        out.append(iso(due))
    return out


@pytest.mark.parametrize(
    ("expression", "zone", "began", "expected"),
    [
        ("0 2 * * *", UTC, utc(2025, 6, 1, 1, 59, 30), ["2025-06-01 02:00", "2025-06-02 02:00"]),
        ("@daily", UTC, utc(2025, 6, 1, 12), ["2025-06-02 00:00", "2025-06-03 00:00"]),
        # 02:00 in Berlin: midnight UTC in summer, 01:00 in winter.
        ("0 2 * * *", BERLIN, utc(2025, 6, 1, 12), ["2025-06-02 00:00", "2025-06-03 00:00"]),
        ("0 2 * * *", BERLIN, utc(2025, 1, 15, 12), ["2025-01-16 01:00", "2025-01-17 01:00"]),
        # New York springs forward on 9 March 2025, 02:00 EST -> 03:00 EDT. A job at 02:30
        # that day, a time that does not exist, runs at 03:00 (as Debian's cron does).
        ("30 2 * * *", NY, utc(2025, 3, 9, 5), ["2025-03-09 07:00", "2025-03-10 06:30"]),
        # Every 15 minutes goes on in real minutes: 01:45 EST, then 03:00 EDT.
        ("*/15 * * * *", NY, utc(2025, 3, 9, 6, 40), ["2025-03-09 06:45", "2025-03-09 07:00"]),
        # It falls back on 2 November 2025, 02:00 EDT -> 01:00 EST: 01:30 comes twice, the
        # job at 01:30 runs once (at the first), the next day at 01:30 EST.
        ("30 1 * * *", NY, utc(2025, 11, 2, 4), ["2025-11-02 05:30", "2025-11-03 06:30"]),
        # An hourly job runs in both 01:00 hours: they are two real hours.
        (
            "0 * * * *",
            NY,
            utc(2025, 11, 2, 4, 30),
            ["2025-11-02 05:00", "2025-11-02 06:00", "2025-11-02 07:00"],
        ),
    ],
)
def test_cron_ticks(expression: str, zone: Any, began: float, expected: list[str]) -> None:
    assert ticks(cron(expression, zone, began), len(expected)) == expected


def test_a_schedule_begun_inside_a_repeated_hour_does_not_run_what_already_ran() -> None:
    # 01:10 EST on 2 November: 01:30 EDT was an hour ago; the next 01:30 is tomorrow's.
    assert ticks(cron("30 1 * * *", NY, utc(2025, 11, 2, 6, 10)), 1) == ["2025-11-03 06:30"]


def test_cron_with_run_on_start_runs_at_once_then_on_the_clock() -> None:
    table = cron("0 2 * * *", UTC, utc(2025, 6, 1, 12), run_on_start=True)
    assert next_tick(table, table.began) == 0
    assert ticks(table, 2) == ["2025-06-01 12:00", "2025-06-02 02:00"]


def test_cron_is_read_on_the_wall_clock() -> None:
    table = cron("0 2 * * *", UTC, utc(2025, 6, 1, 1))
    # The monotonic clock says a minute passed; the wall clock was stepped past 02:00.
    assert next_tick(table, Moment(60.0, utc(2025, 6, 1, 2, 0, 5))) == 0
    assert next_run(table, Moment(0.0, utc(2025, 6, 1, 1, 30))) == utc(2025, 6, 1, 2)


def test_next_time_takes_a_descriptor_and_is_later_than_its_start() -> None:
    start = utc(2025, 6, 1, 2)  # exactly on a match: the next one, not this one
    assert next_time("0 2 * * *", UTC, start) == utc(2025, 6, 2, 2)
    assert next_time("@hourly", UTC, start) == utc(2025, 6, 1, 3)
    assert not math.isinf(next_time("0 0 29 2 *", UTC, start))


# ----- ticks and runs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("going", "limit", "runs"),
    [(0, 1, True), (1, 1, False), (1, 2, True), (2, 2, False)],
)
def test_a_tick_runs_unless_the_runs_going_reach_the_limit(going: int, limit: int, runs: bool) -> None:
    tick = at_tick(going, limit)
    assert tick.run is runs
    assert tick.reason == ("" if runs else f"the last run is still going (max_concurrent: {limit})")


# ----- the states between runs -------------------------------------------------------------

SCHEDULED = Rules(name="job", scheduled=True)


@pytest.mark.parametrize("before", [State.STOPPED, State.COMPLETED, State.EXITED, State.FAILED, State.IDLE])
def test_transition_to_scheduled_between_runs(before: State) -> None:
    result = step(Life(before), Idle("every 1m"), 0.0, SCHEDULED)
    assert [(str(t.state), t.reason) for t in result.transitions] == [("scheduled", "every 1m")]
    assert step(result.life, Idle("again"), 0.0, SCHEDULED).transitions == ()  # waiting already


def test_transition_scheduled_to_pending_to_completed_runs_it_as_a_one_shot() -> None:
    life, seen = Life(State.SCHEDULED), []
    for event in (Start(), DependenciesMet(), Spawned(None), Exited(0)):
        result = step(life, event, 0.0, Rules(name="job", scheduled=True, restart=RestartPolicy.NO))
        life, seen = result.life, seen + [str(t.state) for t in result.transitions]
    assert seen == ["pending", "starting", "running", "completed"]


def test_transition_scheduled_to_stopped_when_stopped_by_hand() -> None:
    result = step(Life(State.SCHEDULED), StopRequested("stopped on request"), 0.0, SCHEDULED)
    assert [str(t.state) for t in result.transitions] == ["stopped"]


def test_an_on_demand_service_still_waits_in_idle() -> None:
    result = step(Life(State.SCHEDULED), Idle("waiting for a connection"), 0.0, Rules(name="web"))
    assert [str(t.state) for t in result.transitions] == ["idle"]


# ----- the file -----------------------------------------------------------------------------


def errors(tmp_path: Path, service: str, extra: str = "") -> str:
    write_stack(tmp_path, f"services:\n  job:\n{service}\n{extra}", programs=False)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "services.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ('{cron: "61 * * * *"}', ":4:22: services.job.schedule.cron: bad minute in '61 * * * *'"),
        ('{cron: "0 2 * *"}', ":4:22: services.job.schedule.cron: expected five fields"),
        ('{cron: "0 0 31 2 *"}', "bad day-of-month"),
        ('{cron: "@reboot"}', "expected five fields"),
        (
            '{cron: "0 2 * * *", timezone: Mars/Olympus}',
            ":4:45: services.job.schedule.timezone: unknown time zone 'Mars/Olympus'",
        ),
        ("{interval: 30m, cron: '* * * * *'}", "cron and interval are two timetables"),
        ("{run_on_start: true}", "expected cron or interval"),
        ("{interval: 30m, timezone: UTC}", "timezone is for cron"),
        ("{interval: 500ms}", "expected at least 1s between runs"),
        ("{interval: 30m, max_concurrent: 0}", "max_concurrent: expected at least 1 (got 0)"),
    ],
)
def test_a_bad_schedule_is_an_error_at_its_place(tmp_path: Path, schedule: str, expected: str) -> None:
    assert expected in errors(tmp_path, f"    command: 'true'\n    schedule: {schedule}")


def test_what_cannot_go_with_a_schedule(tmp_path: Path) -> None:
    assert "restart: always would never let a scheduled run end" in errors(
        tmp_path, "    command: 'true'\n    restart: always\n    schedule: {interval: 1m}"
    )
    on_demand = "    command: 'true'\n    port: 8000\n    socket: inherit\n    start: on_demand"
    assert "two ways to start it" in errors(tmp_path, f"{on_demand}\n    schedule: {{interval: 1m}}")
    assert "lease stops a service that runs on" in errors(
        tmp_path, "    command: 'true'\n    lease: 30s\n    schedule: {interval: 1m}"
    )
    waits = "  web: {command: 'true', depends_on: [job]}"
    assert "web depends on job, which runs on its schedule" in errors(
        tmp_path, "    command: 'true'\n    schedule: {interval: 1m}", waits
    )


def test_a_scheduled_run_is_a_one_shot_unless_retries_are_asked_for(tmp_path: Path) -> None:
    write_stack(
        tmp_path,
        """
        services:
          once: {command: "true", schedule: {cron: "@daily", timezone: Europe/Berlin}}
          retried: {command: "true", restart: on-failure, schedule: {interval: 1h, run_on_start: true}}
        """,
        programs=False,
    )
    services = load_config(tmp_path / "services.yaml").services
    assert services["once"].restart == "no" and services["retried"].restart == "on-failure"
    assert services["once"].schedule == Schedule(cron="@daily", timezone="Europe/Berlin")
    assert services["retried"].schedule == Schedule(interval=3600, run_on_start=True)


def test_process_compose_schedules_are_imported() -> None:
    text = from_process_compose(
        textwrap.dedent(
            """
        processes:
          backup:
            command: ./backup.sh
            schedule: {cron: "0 2 * * *", timezone: Local, interval: 1h}
          cleanup:
            command: ./cleanup.sh
            availability: {restart: always}
            schedule: {interval: 30m, run_on_start: true, max_concurrent: 3}
        """
        )
    )
    assert 'schedule: {"cron": "0 2 * * *"}' in text  # Local is our default
    assert '# schedule.interval: "1h" (cron takes precedence)' in text
    assert 'schedule: {"interval": "30m", "run_on_start": true, "max_concurrent": 3}' in text
    assert 'restart: "on-failure"' in text


# ----- the task, on a fake clock ------------------------------------------------------------


class FakeRunner:
    """What a `Scheduler` asks of a `ServiceRunner`: its runs are started and ended by the test."""

    def __init__(self, bus: EventBus, schedule: dict[str, Any]) -> None:
        self.bus = bus
        self.name = "job"
        self.config = Service(name="job", command="true", schedule=schedule)
        self.state = State.STOPPED
        self.reason = ""
        self.running = False
        self.exit_code: int | None = None

    def moved(self, state: State, reason: str = "") -> None:
        self.state, self.reason = state, reason
        self.bus.publish(StackChanged(str(state)))  # any event wakes the scheduler's waits

    def go_idle(self, reason: str, *, hold: bool = True) -> None:
        if self.state in SETTLED and self.state is not State.SCHEDULED:
            self.moved(State.SCHEDULED, reason)

    def begin(self) -> None:
        self.running, self.exit_code = True, None
        self.moved(State.RUNNING)

    def end(self, code: int, state: State = State.COMPLETED) -> None:
        self.running, self.exit_code = False, code
        self.moved(state)

    def status(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code}


async def started_scheduler(
    schedule: dict[str, Any],
) -> tuple[Scheduler, FakeRunner, FakeClock, asyncio.Task[None]]:
    bus, clock = EventBus(), FakeClock()
    runner = FakeRunner(bus, schedule)

    async def start(name: str) -> None:
        runner.begin()

    scheduler = Scheduler(
        runner,  # type: ignore[arg-type]
        bus=bus,
        clock=clock,
        start=start,
        stopping=asyncio.Event(),
        wall=lambda: 1.75e9 + clock.now(),
    )
    task = asyncio.create_task(scheduler.run())
    await settled(lambda: clock.sleepers > 0)  # its ticks wait on the clock
    return scheduler, runner, clock, task


async def settled(predicate: Any = lambda: False) -> None:
    """Let every task run until `predicate()` holds, or until none has anything left to do."""
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0)


def kinds(bus: EventBus, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in bus.backlog if e.kind == kind]


async def test_the_task_ticks_on_its_clock_skips_a_busy_tick_and_records_each_run() -> None:
    scheduler, runner, clock, task = await started_scheduler({"interval": "60s"})
    bus = runner.bus
    try:
        assert runner.reason == "every 1m" and scheduler.next_run() == pytest.approx(1.75e9 + 1060)
        clock.advance(59)
        assert not runner.running
        clock.advance(1)  # the first tick starts a run
        assert await bus.wait_until(lambda: runner.running, 5)
        await settled()  # the run is seen begun
        clock.advance(60)  # ...still going at the next: skipped, and recorded
        assert await bus.wait_until(lambda: kinds(bus, "schedule_skipped"), 5)
        skipped = kinds(bus, "schedule_skipped")[0]
        assert skipped["running_for"] == pytest.approx(60) and skipped["next_run"] == pytest.approx(
            1.75e9 + 1180
        )
        clock.advance(5)
        runner.end(3, State.EXITED)
        assert await bus.wait_until(lambda: runner.state is State.SCHEDULED, 5)
        assert kinds(bus, "scheduled_run") == [
            {"exit_code": 3, "duration": 65.0, "result": "exited", "trigger": "schedule"}
        ]
        assert runner.reason == "last run: exit code 3 after 65.0s"
        clock.advance(55)  # the grid's next tick, 1180, is not moved by the late end
        assert await bus.wait_until(lambda: runner.running, 5)
    finally:
        task.cancel()


async def test_stopped_by_hand_it_waits_until_started_and_goes_on_from_there() -> None:
    scheduler, runner, clock, task = await started_scheduler({"interval": "60s", "run_on_start": True})
    bus = runner.bus
    try:
        assert await bus.wait_until(lambda: runner.running, 5)  # run_on_start
        runner.end(0, State.STOPPED)  # `stackvisor stop job`
        assert await bus.wait_until(lambda: kinds(bus, "scheduled_run"), 5)
        assert scheduler.paused and scheduler.next_run() is None
        clock.advance(600)  # ten ticks go by: none runs it
        await settled()
        assert not runner.running and not kinds(bus, "schedule_skipped")
        runner.begin()  # `stackvisor start job`: a run now, the schedule from now on
        assert await bus.wait_until(lambda: len(kinds(bus, "scheduled_run")) == 1 and not scheduler.paused, 5)
        runner.end(0)
        assert await bus.wait_until(lambda: len(kinds(bus, "scheduled_run")) == 2, 5)
        assert [r["trigger"] for r in kinds(bus, "scheduled_run")] == ["schedule", "request"]
        assert await bus.wait_until(lambda: runner.state is State.SCHEDULED, 5)
        assert scheduler.next_run() == pytest.approx(1.75e9 + 1660)
    finally:
        task.cancel()


# ----- real stacks --------------------------------------------------------------------------

EXIT_3 = "python3 -c 'import sys; sys.exit(3)'"
# Runs until the file `go` exists (then exits 0): longer than an interval, while the test likes.
UNTIL_GO = "python3 -c 'import os, time\nwhile not os.path.exists(\"go\"): time.sleep(0.01)'"


def history(root: Path, kind: str, service: str) -> list[dict[str, Any]]:
    rows = json.loads(cli("history", "--all", "--json", cwd=root).stdout)
    return [r for r in rows if r["kind"] == kind and r["service"] == service]


def test_runs_on_a_one_second_interval_with_exit_codes_in_history_and_skips_a_busy_tick(
    tmp_path: Path, detached: Any
) -> None:
    write_stack(
        tmp_path,
        f"""
        services:
          tick: {{command: {json.dumps(EXIT_3)}, schedule: {{interval: 1s, run_on_start: true}}}}
          slow: {{command: {json.dumps(UNTIL_GO)}, schedule: {{interval: 1s}}}}
          nightly: {{command: "true", schedule: {{cron: "0 2 * * *", timezone: UTC}}}}
        """,
    )
    result = detached(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr  # waiting for a tick is ready
    runs = wait_for(
        lambda: (
            len(history(tmp_path, "scheduled_run", "tick")) >= 2
            and history(tmp_path, "scheduled_run", "tick")
        )
    )
    assert all(r["data"]["exit_code"] == 3 and r["data"]["result"] == "exited" for r in runs)
    assert all(0 < r["data"]["duration"] < 1 for r in runs)
    assert runs[1]["ts"] - runs[0]["ts"] == pytest.approx(1.0, abs=0.5)
    # slow began a run at its first tick and still runs at the next: that tick is skipped.
    skipped = wait_for(lambda: history(tmp_path, "schedule_skipped", "slow"))
    assert "the last run is still going" in skipped[0]["data"]["reason"]
    (tmp_path / "go").touch()
    (slow,) = wait_for(lambda: history(tmp_path, "scheduled_run", "slow")[:1])
    assert slow["data"]["exit_code"] == 0 and slow["data"]["duration"] > 1
    services = {s["name"]: s for s in client(tmp_path).get("/v1/status")["services"]}
    tomorrow_two = (datetime.now(UTC).timestamp() // 86400) * 86400 + 7200
    tomorrow_two += 86400 if tomorrow_two <= datetime.now(UTC).timestamp() else 0
    assert services["nightly"]["state"] == "scheduled" and services["nightly"]["next_run"] == tomorrow_two
    assert services["nightly"]["pid"] is None and not state_events(tmp_path, "nightly")[1:]
    table = cli("status", cwd=tmp_path).stdout
    assert "cron 0 2 * * * (UTC), next run in" in table
    shown = cli("history", "--all", cwd=tmp_path).stdout
    assert "scheduled_run" in shown and "exit_code=3" in shown and "schedule_skipped" in shown


@pytest.mark.timeout(60)
async def test_an_edited_schedule_applies_alone_and_a_stop_by_hand_pauses_it(tmp_path: Path) -> None:
    text = """
        services:
          server: {command: "python3 -c 'import time; time.sleep(300)'"}
          job: {command: "true", schedule: {cron: "0 2 * * *"}}
        """
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until_state(sup, "server", "running")
        await until_state(sup, "job", "scheduled")
        server = sup.runners["server"].process.pid
        save(path, text.replace('{cron: "0 2 * * *"}', "{interval: 1s}"))
        assert (await sup.reload())["changed"] == ["job"]
        await until(sup, lambda: len(runs_of(sup)) >= 2)
        assert sup.runners["server"].process.pid == server  # nothing else restarted
        await sup.stop_service("job")  # stopped by hand: its ticks pause
        await until_state(sup, "job", "stopped")
        assert sup.schedules["job"].paused and job_status(sup)["next_run"] is None
        runs = len(runs_of(sup))
        await sup.start_service("job")  # a run now, and the schedule goes on
        await until(sup, lambda: len(runs_of(sup)) >= runs + 2)
        assert runs_of(sup)[runs]["trigger"] == "request" and runs_of(sup)[-1]["trigger"] == "schedule"
        assert job_status(sup)["next_run"] is not None


def runs_of(sup: Any) -> list[dict[str, Any]]:
    return [e.data for e in sup.bus.backlog if e.kind == "scheduled_run" and e.service == "job"]


def job_status(sup: Any) -> dict[str, Any]:
    return next(s for s in sup.status()["services"] if s["name"] == "job")


def runs_going(root: Path) -> list[int]:
    """The pids of the UNTIL_GO runs of the stack in `root` (by their folder)."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        info = proc.info
        if (
            info["cwd"] == str(root)
            and "exists" in " ".join(info["cmdline"] or [])
            and info["status"] != "zombie"
        ):
            found.append(proc.pid)
    return found


def test_max_concurrent_runs_beside_the_one_going_and_the_stop_ends_them(
    tmp_path: Path, detached: Any
) -> None:
    """Runs that last until `go` exists, a tick every second, two at once: the second tick
    starts a run beside the first, the third is skipped; `go` ends both, each a recorded
    run; `down` leaves nothing of them."""
    schedule = "{interval: 1s, run_on_start: true, max_concurrent: 2}"
    write_stack(tmp_path, f"services:\n  slow: {{command: {json.dumps(UNTIL_GO)}, schedule: {schedule}}}\n")
    assert detached(tmp_path).returncode == 0
    wait_for(lambda: len(runs_going(tmp_path)) == 2, timeout=10)
    skipped = wait_for(lambda: history(tmp_path, "schedule_skipped", "slow"), timeout=10)
    assert "max_concurrent: 2" in skipped[0]["data"]["reason"]
    assert len(runs_going(tmp_path)) == 2  # never a third
    # status shows both: the service's own run (pid) and the one beside it (overlapping)
    (slow,) = client(tmp_path).get("/v1/status")["services"]
    assert sorted([slow["pid"], *slow["overlapping"]]) == sorted(runs_going(tmp_path))
    assert "1 more run" in cli("status", cwd=tmp_path).stdout
    (tmp_path / "go").write_text("")
    runs = wait_for(
        lambda: (
            len(history(tmp_path, "scheduled_run", "slow")) >= 2
            and history(tmp_path, "scheduled_run", "slow")
        )
    )
    assert [r["data"]["exit_code"] for r in runs[:2]] == [0, 0]
    wait_for(lambda: client(tmp_path).get("/v1/services/slow")["overlapping"] == [])
    (tmp_path / "go").unlink()  # the next ticks start runs that last again
    wait_for(lambda: len(runs_going(tmp_path)) == 2, timeout=10)
    assert cli("down", cwd=tmp_path).returncode == 0
    assert runs_going(tmp_path) == []


def test_runs_beside_the_one_going_do_not_outlive_a_killed_supervisor(tmp_path: Path, detached: Any) -> None:
    schedule = "{interval: 1s, run_on_start: true, max_concurrent: 2}"
    write_stack(tmp_path, f"services:\n  slow: {{command: {json.dumps(UNTIL_GO)}, schedule: {schedule}}}\n")
    assert detached(tmp_path).returncode == 0
    wait_for(lambda: len(runs_going(tmp_path)) == 2, timeout=10)
    supervisor = client(tmp_path).get("/v1/status")["pid"]
    os.kill(supervisor, signal.SIGKILL)
    assert cli("down", cwd=tmp_path).returncode in (0, 3)  # ends what the killed one left
    wait_for(lambda: runs_going(tmp_path) == [], timeout=10)
