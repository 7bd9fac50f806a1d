"""`schedule:`: a service that runs as a one-shot on a timetable rather than at `up`.

Lives here: the `Schedule` model (process-compose's field names) and the rules a
scheduled service follows in the file; what a cron expression means (five fields as
Debian's cron reads them, or a descriptor such as `@daily`), read and evaluated by
cronsim, which also follows Debian's cron across daylight saving changes; the time zone
a name stands for (the tz database, through zoneinfo; no name: the machine's own, as
cron's). Not here: when a service runs next and whether a tick is skipped
(`runtime.schedule`, pure), carrying that out (`runtime.scheduling`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from pydantic import Field, field_validator, model_validator

from stackvisor.config.fields import Duration, Model

# Vixie cron's shorthands (`@reboot` means nothing for a service: `run_on_start` says it).
DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FORMS = "five fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly"


class Schedule(Model):
    """When a service runs: `cron` (on the clocks of `timezone`) or every `interval`, and
    at `up` too with `run_on_start`."""

    cron: str | None = None
    interval: Duration | None = None
    # A name of the tz database; none: the machine's own time zone, as cron's.
    timezone: str | None = None
    run_on_start: bool = False
    # Runs of the service at once. A service runs one process at a time: a tick that
    # finds the last run still going is skipped (and recorded), so 1 is all there is.
    max_concurrent: int = Field(default=1, ge=1, le=100)  # runs going at once (see `overlap`)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float | None) -> float | None:
        if value is not None and value < 1:
            raise ValueError(f"expected at least 1s between runs (got {value:g}s)")
        return value

    @model_validator(mode="after")
    def _cron_or_interval(self) -> Schedule:
        if self.cron is not None and self.interval is not None:
            raise ValueError("cron and interval are two timetables: write one of them")
        if self.cron is None and self.interval is None:
            raise ValueError("expected cron or interval: when it runs")
        if self.timezone is not None and self.cron is None:
            raise ValueError("timezone is for cron: an interval does not follow the clocks")
        return self

    def describe(self) -> str:
        """`every 30m`, `cron 0 2 * * * (UTC)`: for people."""
        if self.interval is not None:
            return f"every {_seconds(self.interval)}"
        return f"cron {self.cron} ({self.timezone or 'local time'})"


def scheduled_service(value: Any) -> Any:
    """A service's fields as written, with what `schedule` implies: each run is a one-shot
    (`restart: no` unless the file asks for retries with `on-failure`). ValueError for
    what cannot go with a schedule."""
    if not isinstance(value, dict) or value.get("schedule") is None:
        return value
    if value.get("start") == "on_demand":
        raise ValueError("schedule and start: on_demand are two ways to start it: write one of them")
    for field in ("idle_stop", "lease"):
        if value.get(field) is not None:
            raise ValueError(f"{field} stops a service that runs on: a scheduled run ends by itself")
    policy = str(value.get("restart", "no")).partition(":")[0]
    if policy in ("always", "unless-stopped"):
        raise ValueError(f"restart: {policy} would never let a scheduled run end: use no or on-failure")
    return value if "restart" in value else {**value, "restart": "no"}


class _Scheduled(Protocol):
    @property
    def schedule(self) -> Schedule | None: ...

    @property
    def depends_on(self) -> Mapping[str, object]: ...


def nothing_waits_for_a_schedule(services: Mapping[str, _Scheduled]) -> None:
    """ValueError when a service depends on a scheduled one: it would wait for its next run."""
    for name, svc in services.items():
        for dep in svc.depends_on:
            if dep in services and services[dep].schedule is not None:
                raise ValueError(
                    f"{name} depends on {dep}, which runs on its schedule: nothing can wait for "
                    f"it (drop the dependency, or {dep}'s schedule)"
                )


def check_cron(expression: str) -> str:
    """`expression`, when it is one that matches some time; ValueError saying what is wrong."""
    fields = fields_of(expression)
    if len(fields.split()) != 5:
        raise ValueError(f"expected {_FORMS} (got {expression!r})")
    try:
        next(CronSim(fields, datetime.now(UTC).replace(tzinfo=None)))
    except CronSimError as exc:  # it names the field: "Bad day-of-month"
        raise ValueError(f"{str(exc).lower()} in {expression!r}: expected {_FORMS}") from None
    except StopIteration:
        raise ValueError(f"{expression!r} matches no time within 50 years") from None
    return expression


def fields_of(expression: str) -> str:
    """The five fields an expression stands for (`@daily` -> `0 0 * * *`)."""
    text = " ".join(expression.split())
    return DESCRIPTORS.get(text.lower(), text)


def next_time(expression: str, zone: tzinfo, after: float) -> float:
    """The first time later than `after` (unix time) that `expression` matches on the
    clocks of `zone`; infinity when none comes within 50 years."""
    # cronsim counts from whole seconds; a time it gives at or before `after` (an hour
    # that a fall back repeats) is passed over, so a run never comes twice.
    for moment in CronSim(fields_of(expression), datetime.fromtimestamp(after, zone)):
        if moment.timestamp() > after:
            return moment.timestamp()
    return math.inf


def zone(name: str | None) -> tzinfo:
    """The time zone `name` stands for (`UTC`, `Europe/Berlin`); None: the machine's own.
    ValueError for a name the tz database does not have."""
    if name is None:
        return local_zone()
    try:
        return ZoneInfo(name)
    except (LookupError, ValueError, OSError):
        if name.upper() in ("UTC", "Z"):  # also where the tz database is not installed
            return UTC
        raise ValueError(
            f"unknown time zone {name!r}: expected a name of the tz database like UTC or Europe/Berlin"
        ) from None


def local_zone() -> tzinfo:
    """The machine's time zone, as cron takes it: `$TZ`, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (LookupError, ValueError, OSError):
            pass  # a path or a POSIX rule: the file below is what the system goes by
    try:
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return UTC


def _seconds(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
