"""Scheduled services carried out: a task per service that ticks on its timetable,
starts a run or records the skip, and records how each run ended.

The supervisor runs one `Scheduler` per selected service with a `schedule`, beside the
services (as it runs `activation`'s). `up` does not start such a service: it waits in
`scheduled`, and each tick starts it as `start` would (a run waits for its
dependencies like any start). A tick that finds the last run still going is skipped
and published (`schedule_skipped`); each run that ends, by itself or stopped, is a
`scheduled_run` event with its exit code and duration. A run started by hand (`start`,
`restart`) is a run too. A scheduled service stopped by hand stays `stopped`, its ticks
paused, until it is started again; the schedule goes on from that start. `Scheduling`
is the supervisor's side: which services get one, also when a reload adds, changes or
removes them.

When the next tick comes and whether it runs are decided in `schedule` (pure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from stackvisor.config.timetable import Schedule, zone
from stackvisor.runtime import schedule
from stackvisor.runtime.clock import Clock
from stackvisor.runtime.events import EventBus, ScheduledRun, ScheduleSkipped
from stackvisor.runtime.overlap import Overlaps
from stackvisor.runtime.service import ServiceRunner
from stackvisor.runtime.states import State
from stackvisor.runtime.status import ServiceStatus

_NAP = 30.0  # the longest sleep between two looks at the clocks: cron follows the wall clock
_RECHECK = 1.0  # a run's end is looked for at least this often, also without an event


class Scheduler:
    def __init__(
        self,
        runner: ServiceRunner,
        *,
        bus: EventBus,
        clock: Clock,
        start: Callable[[str], Awaitable[None]],
        stopping: asyncio.Event,
        wall: Callable[[], float] = time.time,
        paused: bool = False,
    ) -> None:
        assert runner.config.schedule is not None
        self.runner = runner
        self.spec: Schedule = runner.config.schedule
        self.bus = bus
        self.clock = clock
        self.wall = wall
        self._start = start
        self._stopping = stopping
        self._paused_at_first = paused  # a reload found it stopped by hand: it stays so
        self.table: schedule.Timetable | None = None  # from `run` on
        self._run_began: float | None = None  # on the clock, while a run goes on
        self._ticked = False  # the run that begins next was started by a tick
        self.task: asyncio.Task[None] | None = None  # `run`, in the stack's task group
        self.overlaps = Overlaps(runner)  # runs beside the service's own (max_concurrent)

    def now(self) -> schedule.Moment:
        return schedule.Moment(self.clock.now(), self.wall())

    @property
    def paused(self) -> bool:
        """Stopped by hand: no tick until it is started (or `up` names it) again."""
        return self.runner.state is State.STOPPED and not self.runner.running

    def next_run(self) -> float | None:
        """Unix time of the next tick, for `status`; None while paused."""
        if self.table is None or self.paused:
            return None
        return schedule.next_run(self.table, self.now())

    def resume(self) -> None:
        """`up` names a scheduled service stopped by hand: it waits for its next tick again."""
        if self.paused:
            self.runner.go_idle(self.spec.describe())

    async def run(self) -> None:
        """Until the stack stops, or a reload ends this schedule (cancelled)."""
        spec = self.spec
        self.table = schedule.Timetable.of(spec, zone(spec.timezone) if spec.cron else None, self.now())
        if not self._paused_at_first and not self.runner.running:
            self.runner.go_idle(spec.describe())
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._follow_runs()), tg.create_task(self._ticks())]
                await self._stopping.wait()  # the stack stops: no tick may start a run now
                for task in tasks:
                    task.cancel()
        finally:  # the stack stops, or a reload ends this schedule: so do the runs beside
            await self.overlaps.stop()

    async def _ticks(self) -> None:
        assert self.table is not None
        while True:
            if self.paused:
                await self._until(lambda: not self.paused)
                self.table = self.table.ticked(self.now())  # the schedule goes on from here
                continue
            left = schedule.next_tick(self.table, self.now())
            if left > 0:
                await self.clock.sleep(min(left, _NAP))
                continue
            now = self.now()
            self.table = self.table.ticked(now)
            began = self._run_began
            running_for = None if began is None else round(now.clock - began, 3)
            tick = schedule.at_tick(int(self.runner.running) + len(self.overlaps), self.spec.max_concurrent)
            if tick.run and self.runner.running:  # max_concurrent allows one beside it
                await self.overlaps.start()
            elif tick.run:
                self._ticked = True
                await self._start(self.runner.name)
                self._ticked = self._ticked and self.runner.running
            else:
                skipped = ScheduleSkipped(tick.reason, running_for, self.next_run())
                self.bus.publish(skipped, self.runner.name)

    async def _follow_runs(self) -> None:
        runner = self.runner
        while True:
            await self._until(lambda: runner.running)
            began = self._run_began = self.clock.now()
            trigger, self._ticked = ("schedule" if self._ticked else "request"), False
            await self._until(lambda: not runner.running)
            self._run_began = None
            duration = round(self.clock.now() - began, 3)
            code, result = runner.status()["exit_code"], str(runner.state)
            self.bus.publish(ScheduledRun(code, duration, result, trigger), runner.name)
            if runner.state is not State.STOPPED:  # stopped by hand, it stays so
                ended = result if code is None else f"exit code {code}"
                runner.go_idle(f"last run: {ended} after {duration:.1f}s")

    async def _until(self, predicate: Callable[[], bool]) -> None:
        # The bus wakes us on every event; the look every second also sees a change that
        # came without one (a run's task ends just after its last event).
        while not await self.bus.wait_until(predicate, timeout=_RECHECK):
            pass


class Scheduling:
    """The supervisor's part (a mixin, as `Activating`): which services get a
    `Scheduler`, and the ones a reload adds, changes or removes."""

    runners: dict[str, ServiceRunner]
    schedules: dict[str, Scheduler]
    selection: set[str]
    bus: EventBus
    clock: Clock
    tg: asyncio.TaskGroup | None
    _actions: asyncio.Lock

    if TYPE_CHECKING:  # the supervisor's

        @property
        def stopping(self) -> bool: ...

        @property
        def stop_event(self) -> asyncio.Event: ...

    def started_by_up(self, name: str) -> bool:
        """Whether `up` starts it: neither a connection (`start: on_demand`) nor its schedule does."""
        config = self.runners[name].config
        return config.start != "on_demand" and config.schedule is None

    def start_schedules(self, tg: asyncio.TaskGroup) -> None:
        """At `up`: a schedule for every selected service that has one."""
        for name in sorted(self.selection):
            self.schedule_added(name, tg)

    def schedule_added(self, name: str, tg: asyncio.TaskGroup, *, paused: bool = False) -> bool:
        """A service a reload added or changed, or that `up` names: its schedule runs from
        now on (`paused`: not before it is started by hand). True when it has a schedule:
        then nothing else starts it."""
        runner = self.runners[name]
        if runner.config.schedule is None:
            return False
        if name in self.schedules:
            if not paused:
                self.schedules[name].resume()
            return True
        self.schedules[name] = scheduler = Scheduler(
            runner,
            bus=self.bus,
            clock=self.clock,
            start=self._run_scheduled,
            stopping=self.stop_event,
            paused=paused,
        )
        scheduler.task = tg.create_task(scheduler.run(), name=f"schedule:{name}")
        return True

    def unschedule(self, name: str) -> None:
        """A service a reload removed or changed: its schedule ends."""
        scheduler = self.schedules.pop(name, None)
        if scheduler is not None and scheduler.task is not None:
            scheduler.task.cancel()

    def schedule_status(self, name: str, entry: ServiceStatus) -> None:
        if name in self.schedules:
            entry["next_run"] = self.schedules[name].next_run()
            entry["overlapping"] = sorted(child.pid for child in self.schedules[name].overlaps.going.values())

    async def _run_scheduled(self, name: str) -> None:
        # As an action of the stack: never in the middle of a reload or a restart.
        async with self._actions:
            if not self.stopping and self.tg is not None and name in self.runners:
                self.runners[name].start(self.tg)
