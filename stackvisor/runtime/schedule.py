"""When a scheduled service runs next, and whether a tick runs it or is skipped (pure).

A `Timetable` is what is known of one service's schedule: the schedule as the file
says it, when it began (`up`, or the reload that gave it) and when it last ticked.
Times come in pairs (`Moment`): the runtime's monotonic clock, on which intervals are
counted (a step of the wall clock moves no interval), and unix time, against which cron
expressions are matched (02:00 is a time on the clocks of a zone). Interval ticks keep
to the grid of their beginning (`began + k * interval`), however late one was taken.
Ticks that were missed (the machine slept) count as one: the next tick is the first
one after the last, never a burst to catch up.

`runtime.scheduling` carries the decisions out; `config.timetable` reads expressions
and time zones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import tzinfo

from stackvisor.config.timetable import Schedule, next_time


@dataclass(frozen=True)
class Moment:
    clock: float  # the runtime's monotonic clock
    wall: float  # unix time


@dataclass(frozen=True)
class Timetable:
    began: Moment
    cron: str | None = None
    zone: tzinfo | None = None  # the clocks `cron` is read on
    interval: float | None = None
    run_on_start: bool = False
    last_tick: Moment | None = None

    @classmethod
    def of(cls, schedule: Schedule, zone: tzinfo | None, began: Moment) -> Timetable:
        return cls(began, schedule.cron, zone, schedule.interval, schedule.run_on_start)

    def ticked(self, at: Moment) -> Timetable:
        return replace(self, last_tick=at)


def next_tick(table: Timetable, now: Moment) -> float:
    """Seconds from `now` until the next tick: 0 when one is due (a late one too),
    infinity when none will come."""
    last = table.last_tick
    if last is None and table.run_on_start:
        return 0.0
    if table.interval is not None:
        since = table.began.clock if last is None else last.clock
        steps = math.floor((since - table.began.clock) / table.interval) + 1
        while table.began.clock + steps * table.interval <= since:  # rounding never repeats a tick
            steps += 1
        return max(0.0, table.began.clock + steps * table.interval - now.clock)
    assert table.cron is not None and table.zone is not None, "a schedule is a cron or an interval"
    since = table.began.wall if last is None else last.wall
    return max(0.0, next_time(table.cron, table.zone, since) - now.wall)


def next_run(table: Timetable, now: Moment) -> float | None:
    """Unix time of the next tick (`now` when one is due); None when none will come."""
    left = next_tick(table, now)
    return None if math.isinf(left) else now.wall + left


@dataclass(frozen=True)
class Tick:
    """What a tick does: start a run, or skip (and why)."""

    run: bool
    reason: str = ""


def at_tick(going: int, max_concurrent: int) -> Tick:
    """A tick with `going` runs of the service under way."""
    if going < max_concurrent:
        return Tick(True)
    return Tick(False, f"the last run is still going (max_concurrent: {max_concurrent})")
