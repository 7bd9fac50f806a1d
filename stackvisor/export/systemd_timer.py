"""A scheduled service as a systemd timer: a cron expression in systemd's calendar syntax
(`OnCalendar=`), an interval as monotonic timers (`OnActiveSec=`, `OnUnitActiveSec=`).

Cron's fields map one to one: `*`, numbers, lists (`1,15`), ranges (`1-5` -> `1..5`),
steps of everything (`*/15` -> `0/15`, from 1 for days and months), names of months and
weekdays, and the macros (`@daily` -> `daily`). Two cron meanings have no calendar
form and are not written (the service is then not started by anything, and a note
says so): a day of the month and a weekday both restricted (cron runs when either
matches, systemd when both do), and a step over a range (`1-30/5`). The schedule's
time zone is written after the calendar (`... Europe/Berlin`). Pure: text in, text out.
"""

from __future__ import annotations

from stackvisor.config.timetable import Schedule
from stackvisor.export.systemd_text import Unit, duration, plain

_MACROS = {
    "@yearly": "yearly",
    "@annually": "yearly",
    "@monthly": "monthly",
    "@weekly": "weekly",
    "@daily": "daily",
    "@midnight": "daily",
    "@hourly": "hourly",
}
_WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def _number(text: str, names: list[str] | None, first: int) -> int | None:
    if text.isdigit():
        return int(text)
    if names is not None and text.lower()[:3] in [n.lower() for n in names]:
        return [n.lower() for n in names].index(text.lower()[:3]) + first
    return None


def _field(text: str, *, start: int, names: list[str] | None = None, first: int = 0) -> str | None:
    """One cron field in calendar syntax (numbers; `weekday` names are done apart)."""
    out = []
    for item in text.split(","):
        if item == "*":
            out.append("*")
            continue
        if item.startswith("*/") and item[2:].isdigit():
            out.append(f"{start}/{int(item[2:])}")
            continue
        if "/" in item:
            return None  # a step over a range
        low, dash, high = item.partition("-")
        a, b = _number(low, names, first), _number(high, names, first) if dash else None
        if a is None or (dash and b is None):
            return None
        out.append(f"{a}..{b}" if dash else str(a))
    return ",".join(out)


def _weekdays(text: str) -> str | None:
    if text == "*":
        return ""
    out = []
    for item in text.split(","):
        low, dash, high = item.partition("-")
        a = _number(low, _WEEKDAYS[:7], 0)
        b = _number(high, _WEEKDAYS[:7], 0) if dash else None
        if a is None or a > 7 or (dash and (b is None or b > 7)) or "/" in item:
            return None
        out.append(f"{_WEEKDAYS[a]}..{_WEEKDAYS[b]}" if b is not None else _WEEKDAYS[a])
    return ",".join(out)


def calendar(cron: str, zone: str | None = None) -> str | None:
    """`OnCalendar=` for a cron expression, or None when systemd cannot say the same."""
    tail = f" {zone}" if zone else ""
    text = cron.strip()
    if text.lower() in _MACROS:
        return _MACROS[text.lower()] + tail
    fields = text.split()
    if len(fields) != 5:
        return None
    minute, hour, dom, month, dow = fields
    if dom != "*" and dow != "*":
        return None  # cron: either one; systemd: both
    parts = (
        _field(minute, start=0),
        _field(hour, start=0),
        _field(dom, start=1),
        _field(month, start=1, names=_MONTHS, first=1),
        _weekdays(dow),
    )
    if any(part is None for part in parts):
        return None
    m, h, d, mo, wd = parts
    return f"{wd + ' ' if wd else ''}*-{mo}-{d} {h}:{m}:00{tail}"


def has_timer(schedule: Schedule) -> bool:
    """Whether the schedule can be a timer (an interval always; a cron expression when it
    has a calendar form)."""
    return schedule.cron is None or calendar(schedule.cron, schedule.timezone) is not None


def timer(
    schedule: Schedule, service_unit: str, description: str, stack_unit: str
) -> tuple[Unit | None, list[str]]:
    """The timer unit of a scheduled service (None when it cannot have one), and notes
    on what did not carry over."""
    if schedule.cron is not None and not has_timer(schedule):
        return None, [f"schedule: cron {schedule.cron!r} has no systemd calendar form: no timer starts it"]
    notes = ["schedule: max_concurrent: systemd runs one at a time"] if schedule.max_concurrent > 1 else []
    clock = Unit([f"When {service_unit} runs: {schedule.describe()}."])
    clock.add("Unit", f"Description={plain(description + ' on its schedule')}", f"PartOf={stack_unit}")
    clock.add("Timer", f"Unit={service_unit}")
    if schedule.cron is not None:
        clock.add("Timer", f"OnCalendar={calendar(schedule.cron, schedule.timezone)}", "Persistent=true")
    else:
        every = duration(schedule.interval or 1.0)
        clock.add(
            "Timer", f"OnActiveSec={'0' if schedule.run_on_start else every}", f"OnUnitActiveSec={every}"
        )
    clock.add("Install", f"WantedBy={stack_unit}")
    return clock, notes
